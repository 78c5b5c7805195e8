//! Detection scoring against the simulator's ground truth: per fault, whether and when it was
//! first alerted, how long before its spec crossing and before a run would fail, and whether the
//! first alert named the right part; per fleet, the alerts with no fault behind them. What
//! `make evaluate` aggregates over its sweep.

use std::collections::{BTreeMap, BTreeSet};

use seqmon_model::{Alert, AlertAction, MaintenanceEntry, Subsystem};
use seqmon_simulator::{FaultClass, FaultTruth, Fleet, FleetConfig, Scenario};
use serde::Serialize;

use crate::{default_chain, Collected};
use seqmon_runtime::RuntimeError;

const HOUR_MS: f64 = 3_600_000.0;

/// How one injected fault was detected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultOutcome {
    /// Which scenario.
    pub scenario: Scenario,
    /// How it develops.
    pub class: FaultClass,
    /// An alert on its instrument and subsystem opened between its start (or the simulation's
    /// start, for a fault already under way) and its repair.
    pub detected: bool,
    /// Hours from the first alert to the spec crossing (negative: the alert came after it).
    pub lead_before_spec_h: Option<f64>,
    /// Hours from the first alert to when a run would fail.
    pub lead_before_failure_h: Option<f64>,
    /// The first alert named the fault's part.
    pub part_right: bool,
    /// The first alert came from a forecast (its first maintenance entry carries a predicted
    /// crossing).
    pub predicted: bool,
    /// The maintenance entry standing at the spec crossing (the alert's last one issued by then)
    /// fell due at or before it; false when the alert came after the crossing.
    pub due_before_spec: Option<bool>,
}

/// Scores one run: the outcome of every fault and the alerts with no fault behind them.
pub fn outcomes(
    faults: &[FaultTruth],
    alerts: &[Alert],
    maintenance: &[MaintenanceEntry],
    sim_start_ms: i64,
) -> (Vec<FaultOutcome>, Vec<Alert>) {
    let opens: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.action == AlertAction::OPEN)
        .collect();
    // A fleet alert reaches an instrument when it opens or when an update lists it.
    let reaches: Vec<&Alert> = alerts
        .iter()
        .filter(|a| {
            a.action == AlertAction::OPEN || (a.cohort.is_some() && a.action == AlertAction::UPDATE)
        })
        .collect();
    let outcomes = faults
        .iter()
        .map(|f| {
            let from = f.start_ms.max(sim_start_ms);
            let until = f.repaired_ms.unwrap_or(i64::MAX);
            let first = reaches.iter().find(|a| {
                a.covers(&f.instrument_serial)
                    && (a.subsystem == f.subsystem || a.cohort.is_some())
                    && a.event_time_ms >= from
                    && a.event_time_ms < until
            });
            let hours = |to: i64, at: i64| (to - at) as f64 / HOUR_MS;
            FaultOutcome {
                scenario: f.scenario,
                class: f.class,
                detected: first.is_some(),
                lead_before_spec_h: first
                    .zip(f.spec_exit_ms)
                    .map(|(a, exit)| hours(exit, a.event_time_ms)),
                lead_before_failure_h: first.map(|a| hours(f.failure_ms, a.event_time_ms)),
                part_right: first.is_some_and(|a| f.part.named_by(&a.suspected_part)),
                predicted: first.is_some_and(|a| {
                    maintenance
                        .iter()
                        .find(|m| m.alert_id == a.alert_id)
                        .is_some_and(|m| m.predicted_limit_ms.is_some())
                }),
                due_before_spec: first.zip(f.spec_exit_ms).map(|(a, exit)| {
                    maintenance
                        .iter()
                        .rfind(|m| m.alert_id == a.alert_id && m.created_at_ms <= exit)
                        .is_some_and(|m| m.due_by_ms <= exit)
                }),
            }
        })
        .collect();
    let faulty: BTreeSet<(&str, Subsystem)> = faults
        .iter()
        .map(|f| (f.instrument_serial.as_str(), f.subsystem))
        .collect();
    // A fleet alert is false when none of the instruments it lists has a fault.
    let false_alerts = opens
        .into_iter()
        .filter(|a| match &a.cohort {
            Some(c) => !c
                .instruments
                .iter()
                .any(|s| faults.iter().any(|f| &f.instrument_serial == s)),
            None => !faulty.contains(&(a.instrument_serial.as_str(), a.subsystem)),
        })
        .cloned()
        .collect();
    (outcomes, false_alerts)
}

/// How one fleet cause (a bad lot, a software regression) reached the service team.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetCauseOutcome {
    /// Which scenario.
    pub scenario: Scenario,
    /// Instruments it hit.
    pub victims: usize,
    /// Alerts opened about them while it lasted: fleet alerts listing any of them plus their
    /// own alerts in its subsystem. One is the goal: the cause, named once.
    pub alerts: usize,
    /// Victims a fleet alert listed.
    pub covered_by_fleet_alert: usize,
}

/// Per fleet scenario in a run, the alerts it caused.
pub fn fleet_causes(faults: &[FaultTruth], alerts: &[Alert]) -> Vec<FleetCauseOutcome> {
    let mut by_scenario: BTreeMap<Scenario, Vec<&FaultTruth>> = BTreeMap::new();
    for f in faults.iter().filter(|f| f.class == FaultClass::Fleet) {
        by_scenario.entry(f.scenario).or_default().push(f);
    }
    by_scenario
        .into_iter()
        .map(|(scenario, victims)| {
            let from = victims.iter().map(|f| f.start_ms).min().unwrap_or(0);
            let hit = |a: &Alert| {
                victims.iter().any(|f| {
                    a.covers(&f.instrument_serial)
                        && (a.cohort.is_some() || a.subsystem == f.subsystem)
                })
            };
            let opened = alerts
                .iter()
                .filter(|a| a.action == AlertAction::OPEN && a.event_time_ms >= from && hit(a))
                .count();
            let covered_by_fleet_alert = victims
                .iter()
                .filter(|f| {
                    alerts
                        .iter()
                        .any(|a| a.cohort.is_some() && a.covers(&f.instrument_serial))
                })
                .count();
            FleetCauseOutcome {
                scenario,
                victims: victims.len(),
                alerts: opened,
                covered_by_fleet_alert,
            }
        })
        .collect()
}

/// One simulated fleet run through the six stages.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Instruments in the fleet.
    pub instruments: usize,
    /// Hours simulated.
    pub hours: f64,
    /// Seed.
    pub seed: u64,
    /// Share of bad records.
    pub bad_share: f64,
    /// Whether this was a fault-free control fleet.
    pub control: bool,
    /// Records that entered the chain.
    pub events: u64,
    /// Outcome of every injected fault.
    pub faults: Vec<FaultOutcome>,
    /// Alerts on an instrument and subsystem with no fault.
    pub false_alerts: u64,
    /// Of those, per subsystem and first metric, for the report.
    pub false_alert_metrics: BTreeMap<String, u64>,
    /// Instrument-hours the false alerts are counted over (fault-free instruments only for a
    /// faulty fleet).
    pub clean_instrument_hours: f64,
    /// Per fleet cause, how many alerts it took.
    pub fleet_causes: Vec<FleetCauseOutcome>,
}

/// Simulates one fleet and runs it through the six stages in one process, tick by tick, so a
/// month of a large fleet never sits in memory.
pub fn run_fleet(cfg: &FleetConfig) -> Result<RunResult, RuntimeError> {
    let mut fleet = Fleet::new(cfg).without_json();
    let truth: Vec<FaultTruth> = fleet.faults().to_vec();
    let mut chain = default_chain()?;
    let mut collected = Collected::default();
    let mut failure = None;
    let mut sink = |topic: &str, e: &seqmon_runtime::Emitted| {
        if let Err(err) = collected.take(topic, e) {
            failure = Some(err);
        }
    };
    let mut events = 0u64;
    while let Some(tick) = fleet.next_tick(0) {
        for (_, r) in tick {
            events += 1;
            chain.push(&r.key, &r.bytes, &mut sink)?;
        }
    }
    chain.finish(&mut sink)?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (faults, false_alerts) = outcomes(
        &truth,
        &collected.alerts,
        &collected.maintenance,
        cfg.start_time_ms,
    );
    let mut false_alert_metrics = BTreeMap::new();
    for a in &false_alerts {
        *false_alert_metrics
            .entry(format!("{}/{}", a.subsystem.label(), a.metric))
            .or_default() += 1;
    }
    let faulty: BTreeSet<&str> = truth.iter().map(|f| f.instrument_serial.as_str()).collect();
    let clean = cfg.instruments.saturating_sub(faulty.len());
    Ok(RunResult {
        instruments: cfg.instruments,
        hours: cfg.duration_hours,
        seed: cfg.seed,
        bad_share: cfg.bad_record_share,
        control: !cfg.faults,
        events,
        faults,
        false_alerts: false_alerts.len() as u64,
        false_alert_metrics,
        clean_instrument_hours: clean as f64 * cfg.duration_hours,
        fleet_causes: fleet_causes(&truth, &collected.alerts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_fleet_detects_its_faults_with_the_right_parts() {
        let r = run_fleet(&FleetConfig {
            instruments: 24,
            duration_hours: 48.0,
            sample_interval_s: 60,
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        // Eleven own faults, two bad-lot and three software-rollout instruments.
        assert_eq!(r.faults.len(), 16);
        let missed: Vec<_> = r.faults.iter().filter(|f| !f.detected).collect();
        assert!(missed.is_empty(), "missed {missed:?}");
        let wrong: Vec<_> = r.faults.iter().filter(|f| !f.part_right).collect();
        assert!(wrong.is_empty(), "wrong part {wrong:?}");
        // The rollout (three instruments) is named once, by a fleet alert listing them all.
        let rollout = r
            .fleet_causes
            .iter()
            .find(|c| c.scenario == Scenario::SoftwareRegression)
            .expect("a rollout");
        assert_eq!((rollout.victims, rollout.alerts), (3, 1));
        assert_eq!(rollout.covered_by_fleet_alert, 3);
        assert_eq!(r.false_alerts, 0);
    }
}
