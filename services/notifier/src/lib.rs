//! Notifier: reads `anomalies`, writes `alerts` and `maintenance.schedule`.
//!
//! Alerts are deduplicated per (instrument, subsystem): the first ACTIVE or PREDICTED anomaly of a
//! subsystem opens an alert and schedules maintenance; further anomalies of the same subsystem
//! update it only when its severity rises; when every metric of the subsystem has CLEARED, the
//! alert is resolved. The suspected part comes from the metric and the direction of the departure
//! (a leak lowers pressure, a clog raises it; see [`seqmon_model::parts::Part`]).
//!
//! Maintenance: one entry per instrument and part (`entry_id` = serial and part), re-sent under
//! the same id when its priority rises or its due date moves earlier, never re-issued under a new
//! id. For a forecast (PREDICTED) the due date is the earliest predicted crossing minus
//! `margin_hours` (at most half the time left, never before the anomaly, never after the
//! crossing) and the priority follows the time left (`priority_hours`). For a present anomaly the
//! due date follows its severity's priority (`due_hours`); with a forecast standing too, the more
//! urgent of the two.
//!
//! Delivery: a pure processor; the runtime gives it exactly-once input and output. State: open
//! alerts per instrument, persisted to `notifier.changelog`. An anomaly that does not decode is a
//! dead letter.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use seqmon_model::parts::Part;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    Alert, AlertAction, Anomaly, AnomalySeverity, AnomalyState, MaintenanceEntry,
    MaintenancePriority, RunPhase, Subsystem,
};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};
use serde::{Deserialize, Serialize};

const HOUR_MS: i64 = 3_600_000;

/// Notifier settings.
#[derive(Debug, Clone, Args)]
pub struct NotifierConfig {
    /// Hours until due for P1 (before the next run), P2 and P3 work on a present anomaly.
    #[arg(long, env = "NOTIFIER_DUE_HOURS", value_delimiter = ',', default_values_t = [24, 48, 336])]
    pub due_hours: Vec<i64>,
    /// Hours of time left to a predicted crossing at or below which a forecast's entry is P1,
    /// then P2; beyond the second, P3.
    #[arg(long, env = "NOTIFIER_PRIORITY_HOURS", value_delimiter = ',', default_values_t = [48, 168])]
    pub priority_hours: Vec<i64>,
    /// Hours before the earliest predicted crossing that a forecast's maintenance falls due (at
    /// most half the time left).
    #[arg(long, env = "NOTIFIER_MARGIN_HOURS", default_value_t = 24)]
    pub margin_hours: i64,
}

impl Default for NotifierConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl NotifierConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let increasing = |v: &[i64], n: usize| {
            v.len() == n && v.iter().all(|h| *h > 0) && v.windows(2).all(|w| w[0] <= w[1])
        };
        if !increasing(&self.due_hours, 3) {
            return Err(ConfigError::of::<Self>(
                "due_hours",
                "must be three positive, non-decreasing hours for P1,P2,P3",
            ));
        }
        if !increasing(&self.priority_hours, 2) {
            return Err(ConfigError::of::<Self>(
                "priority_hours",
                "must be two positive, non-decreasing hours for P1,P2",
            ));
        }
        if self.margin_hours < 0 {
            return Err(ConfigError::of::<Self>(
                "margin_hours",
                "must be 0 or more hours",
            ));
        }
        Ok(())
    }
}

/// An open alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenAlert {
    alert_id: String,
    opened_at_ms: i64,
    severity: AnomalySeverity,
    score: f64,
    anomaly_count: i32,
    active_metrics: BTreeSet<String>,
    suspected_part: String,
    priority: MaintenancePriority,
    /// Due date of the entry last sent, so an update only goes out when it moves earlier.
    #[serde(default)]
    due_by_ms: Option<i64>,
}

/// The notifier processor.
#[derive(Debug, Default)]
pub struct Notifier {
    cfg: NotifierConfig,
    open: BTreeMap<String, BTreeMap<Subsystem, OpenAlert>>,
}

/// The part most likely at fault, as the alert names it.
pub fn suspected_part(a: &Anomaly) -> String {
    if let Some(c) = &a.cohort {
        return format!("{} {}", c.kind.label(), c.value);
    }
    let rising = a.observed_level > a.baseline_level;
    if let Some(part) = Part::for_metric(&a.metric, rising) {
        return part.label().into();
    }
    match a.metric.as_str() {
        "error_events_per_window" => match &a.software_version {
            Some(v) => format!("{} {v}", Part::ControlSoftware.label()),
            None => Part::ControlSoftware.label().into(),
        },
        _ if a.subsystem == Subsystem::CHEMISTRY => match &a.reagent_kit_lot {
            Some(lot) => format!("{} {lot}", Part::ReagentLot.label()),
            None => "reagent kit or flow cell".into(),
        },
        _ => format!("{} subsystem", a.subsystem.label()),
    }
}

/// The series an anomaly is about: its metric, in its run phase (a metric has a baseline per
/// phase, so an idle-phase clearing does not clear the sequencing one).
fn series(a: &Anomaly) -> String {
    match RunPhase::own_baseline(a.run_phase) {
        Some(p) => format!("{} ({})", a.metric, p.as_str()),
        None => a.metric.clone(),
    }
}

fn priority(severity: AnomalySeverity) -> MaintenancePriority {
    match severity {
        AnomalySeverity::CRITICAL => MaintenancePriority::P1,
        AnomalySeverity::HIGH => MaintenancePriority::P2,
        _ => MaintenancePriority::P3,
    }
}

impl Notifier {
    /// A notifier with the given settings.
    pub fn new(cfg: NotifierConfig) -> Self {
        Notifier {
            cfg,
            open: BTreeMap::new(),
        }
    }

    /// Priority and due date the anomaly asks for. A forecast (carried by a PREDICTED record,
    /// and by an ACTIVE one while a forecast stands) sets both from the time left to its earliest
    /// crossing; a present anomaly sets them from its severity; with both, the more urgent wins.
    /// A window's own slope is not used: five minutes of noise are no forecast.
    fn plan(&self, a: &Anomaly) -> (MaintenancePriority, i64) {
        let now = a.window_end_ms;
        let forecast = a.predicted_limit_earliest_ms.map(|earliest| {
            let left = (earliest - now).max(0);
            let p = if left <= self.cfg.priority_hours[0] * HOUR_MS {
                MaintenancePriority::P1
            } else if left <= self.cfg.priority_hours[1] * HOUR_MS {
                MaintenancePriority::P2
            } else {
                MaintenancePriority::P3
            };
            let margin = (self.cfg.margin_hours * HOUR_MS).min(left / 2);
            (p, (earliest - margin).max(now))
        });
        let present = (a.state == AnomalyState::ACTIVE).then(|| {
            let p = priority(a.severity);
            let idx = match p {
                MaintenancePriority::P1 => 0,
                MaintenancePriority::P2 => 1,
                MaintenancePriority::P3 => 2,
            };
            (p, now + self.cfg.due_hours[idx] * HOUR_MS)
        });
        match (forecast, present) {
            (Some((pf, df)), Some((pp, dp))) => (pf.min(pp), df.min(dp)),
            (Some(f), None) => f,
            (None, Some(p)) => p,
            // A CLEARED record asks for nothing; not reached.
            (None, None) => (
                MaintenancePriority::P3,
                now + self.cfg.due_hours[2] * HOUR_MS,
            ),
        }
    }

    fn maintenance(a: &Anomaly, alert: &OpenAlert, due_by_ms: i64) -> MaintenanceEntry {
        let reason = match (a.state, a.predicted_limit_ms) {
            (AnomalyState::PREDICTED, Some(crossing)) => format!(
                "{} {} at {:.3} forecast to leave spec in {} (earliest in {}; {}, t {:.1})",
                a.subsystem.label(),
                a.metric,
                a.observed_level,
                hours_from(a.window_end_ms, crossing),
                hours_from(
                    a.window_end_ms,
                    a.predicted_limit_earliest_ms.unwrap_or(crossing)
                ),
                a.rule,
                a.score
            ),
            _ => format!(
                "{} {} at {:.3} against baseline {:.3} ({}, score {:.1})",
                a.subsystem.label(),
                series(a),
                a.observed_level,
                a.baseline_level,
                a.rule,
                a.score
            ),
        };
        MaintenanceEntry {
            entry_id: format!("{}:{}", a.instrument_serial, alert.suspected_part),
            alert_id: alert.alert_id.clone(),
            instrument_serial: a.instrument_serial.clone(),
            instrument_model: a.instrument_model,
            subsystem: a.subsystem,
            suspected_part: alert.suspected_part.clone(),
            priority: alert.priority,
            due_by_ms,
            reason,
            created_at_ms: a.window_end_ms,
            predicted_limit_ms: a.predicted_limit_ms,
        }
    }

    fn alert(a: &Anomaly, open: &OpenAlert, action: AlertAction) -> Alert {
        let verb = match (action, a.state, a.predicted_limit_ms) {
            (AlertAction::RESOLVE, ..) => "resolved".to_string(),
            (_, AnomalyState::PREDICTED, Some(crossing)) => format!(
                "forecast to leave spec in {}",
                hours_from(a.window_end_ms, crossing)
            ),
            (AlertAction::OPEN, ..) => "opened".to_string(),
            (AlertAction::UPDATE, ..) if a.cohort.is_some() => "updated".to_string(),
            (AlertAction::UPDATE, ..) => "worsened".to_string(),
        };
        let title = match &a.cohort {
            Some(c) => format!(
                "Fleet {} {}: {} of {} instruments deviate together ({}); {verb}",
                c.kind.label(),
                c.value,
                c.deviating,
                c.members,
                a.metric
            ),
            None => format!(
                "{:?} {} {}: {} {verb}; suspected {}",
                a.instrument_model,
                a.instrument_serial,
                a.subsystem.label(),
                series(a),
                open.suspected_part
            ),
        };
        Alert {
            alert_id: open.alert_id.clone(),
            instrument_serial: a.instrument_serial.clone(),
            instrument_model: a.instrument_model,
            subsystem: a.subsystem,
            action,
            severity: open.severity,
            metric: a.metric.clone(),
            score: open.score,
            title,
            suspected_part: open.suspected_part.clone(),
            opened_at_ms: open.opened_at_ms,
            event_time_ms: a.window_end_ms,
            anomaly_count: open.anomaly_count,
            cohort: a.cohort.clone(),
        }
    }
}

/// `36 h` or `5.2 d` from `now` to `then`.
fn hours_from(now: i64, then: i64) -> String {
    let h = (then - now) as f64 / HOUR_MS as f64;
    if h.abs() < 0.5 {
        "under an hour".to_string()
    } else if h.abs() >= 72.0 {
        format!("{:.1} d", h / 24.0)
    } else {
        format!("{h:.0} h")
    }
}

impl Processor for Notifier {
    fn stage(&self) -> &'static str {
        "notifier"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Anomalies
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Alerts, TopicRole::Maintenance]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogNotifier)
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(a) = out.decode_or_reject::<Anomaly>(input) else {
            return Ok(());
        };
        let serial = a.instrument_serial.clone();
        // A fleet anomaly (the cohort analyzer's) names a lot or version: one alert for the
        // cohort, no maintenance visit (the remedy is a lot recall or a software rollback).
        let fleet = a.cohort.is_some();
        let existing = self
            .open
            .get(&serial)
            .and_then(|m| m.get(&a.subsystem))
            .cloned();
        match (a.state, existing) {
            (AnomalyState::ACTIVE | AnomalyState::PREDICTED, None) => {
                let (priority, due) = self.plan(&a);
                let alert = OpenAlert {
                    alert_id: format!("{serial}:{}:{}", a.subsystem.label(), a.window_end_ms),
                    opened_at_ms: a.window_end_ms,
                    severity: a.severity,
                    score: a.score,
                    anomaly_count: 1,
                    active_metrics: [series(&a)].into(),
                    suspected_part: suspected_part(&a),
                    priority,
                    due_by_ms: Some(due),
                };
                out.emit(
                    TopicRole::Alerts,
                    &serial,
                    &Self::alert(&a, &alert, AlertAction::OPEN),
                )?;
                if !fleet {
                    out.emit(
                        TopicRole::Maintenance,
                        &serial,
                        &Self::maintenance(&a, &alert, due),
                    )?;
                }
                self.open
                    .entry(serial.clone())
                    .or_default()
                    .insert(a.subsystem, alert);
            }
            (AnomalyState::ACTIVE | AnomalyState::PREDICTED, Some(mut alert)) => {
                alert.anomaly_count += 1;
                alert.active_metrics.insert(series(&a));
                alert.score = alert.score.max(a.score);
                // A fleet anomaly is re-sent only when its members change: each is news.
                if a.severity > alert.severity || fleet {
                    alert.severity = alert.severity.max(a.severity);
                    out.emit(
                        TopicRole::Alerts,
                        &serial,
                        &Self::alert(&a, &alert, AlertAction::UPDATE),
                    )?;
                }
                // The same entry again when the work became more urgent, never a second one.
                let (p, due) = self.plan(&a);
                let earlier = alert.due_by_ms.is_none_or(|was| due < was - HOUR_MS);
                if !fleet && (p < alert.priority || earlier) {
                    alert.priority = alert.priority.min(p);
                    let due = alert.due_by_ms.map_or(due, |was| was.min(due));
                    alert.due_by_ms = Some(due);
                    out.emit(
                        TopicRole::Maintenance,
                        &serial,
                        &Self::maintenance(&a, &alert, due),
                    )?;
                }
                self.open
                    .entry(serial.clone())
                    .or_default()
                    .insert(a.subsystem, alert);
            }
            (AnomalyState::CLEARED, Some(mut alert)) => {
                alert.active_metrics.remove(&series(&a));
                if fleet {
                    // The cohort cleared as a whole, whichever metric named it.
                    alert.active_metrics.clear();
                }
                if alert.active_metrics.is_empty() {
                    out.emit(
                        TopicRole::Alerts,
                        &serial,
                        &Self::alert(&a, &alert, AlertAction::RESOLVE),
                    )?;
                    if let Some(m) = self.open.get_mut(&serial) {
                        m.remove(&a.subsystem);
                        if m.is_empty() {
                            self.open.remove(&serial);
                        }
                    }
                } else {
                    self.open
                        .entry(serial.clone())
                        .or_default()
                        .insert(a.subsystem, alert);
                }
            }
            // A clearing for an alert this notifier never opened (e.g. its opening fell before a
            // replay's start) has nothing to resolve.
            (AnomalyState::CLEARED, None) => {}
        }
        out.state_changed(&serial);
        Ok(())
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        let Some(m) = self.open.get(key) else {
            return Ok(None);
        };
        let list: Vec<(&Subsystem, &OpenAlert)> = m.iter().collect();
        serde_json::to_vec(&list)
            .map(Some)
            .map_err(|e| StageError::Snapshot {
                key: key.into(),
                message: e.to_string(),
            })
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let list: Vec<(Subsystem, OpenAlert)> =
            serde_json::from_slice(state).map_err(|e| StageError::State {
                key: key.into(),
                message: e.to_string(),
            })?;
        self.open
            .insert(key.to_string(), list.into_iter().collect());
        Ok(())
    }

    fn clear_state(&mut self) {
        self.open.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{decode, encode, InstrumentModel};

    fn anomaly(
        metric: &str,
        state: AnomalyState,
        severity: AnomalySeverity,
        t: i64,
        observed: f64,
    ) -> Vec<u8> {
        encode(&Anomaly {
            anomaly_id: format!("x{t}"),
            instrument_serial: "VH00042".into(),
            instrument_model: InstrumentModel::NEXTSEQ_2000,
            subsystem: Subsystem::FLUIDICS,
            metric: metric.into(),
            state,
            score: 6.0,
            severity,
            rule: "baseline_shift".into(),
            window_start_ms: t - 300_000,
            window_end_ms: t,
            observed_level: observed,
            baseline_level: 100.0,
            baseline_stddev: 2.0,
            slope_per_hour: -20.0,
            fraction_out_of_spec: 0.0,
            spec_low: Some(70.0),
            spec_high: Some(140.0),
            software_version: None,
            reagent_kit_lot: None,
            predicted_limit_ms: None,
            predicted_limit_earliest_ms: None,
            predicted_limit_latest_ms: None,
            flowcell_lot: None,
            cohort: None,
            run_phase: None,
        })
        .unwrap()
    }

    fn predicted(t: i64, earliest_h: i64, severity: AnomalySeverity) -> Vec<u8> {
        let mut a: Anomaly = decode(&anomaly(
            "fluidics_pressure_kpa",
            AnomalyState::PREDICTED,
            severity,
            t,
            120.0,
        ))
        .unwrap();
        a.rule = "trend_to_limit".into();
        a.predicted_limit_earliest_ms = Some(t + earliest_h * HOUR_MS);
        a.predicted_limit_ms = Some(t + earliest_h * 2 * HOUR_MS);
        encode(&a).unwrap()
    }

    #[test]
    fn a_phase_series_clearing_leaves_the_sequencing_one_open() {
        use seqmon_model::RunPhase;
        let mut n = Notifier::default();
        let in_phase = |state, t, phase| {
            let mut a: Anomaly = decode(&anomaly(
                "fluidics_pressure_kpa",
                state,
                AnomalySeverity::HIGH,
                t,
                90.0,
            ))
            .unwrap();
            a.run_phase = phase;
            encode(&a).unwrap()
        };
        let (a, _) = feed(&mut n, &in_phase(AnomalyState::ACTIVE, 10, None));
        assert_eq!(a[0].action, AlertAction::OPEN);
        let (a, _) = feed(
            &mut n,
            &in_phase(AnomalyState::ACTIVE, 20, Some(RunPhase::IDLE)),
        );
        assert!(a.is_empty(), "the same alert");
        let (a, _) = feed(
            &mut n,
            &in_phase(AnomalyState::CLEARED, 30, Some(RunPhase::IDLE)),
        );
        assert!(a.is_empty(), "the sequencing series still stands: {a:?}");
        let (a, _) = feed(&mut n, &in_phase(AnomalyState::CLEARED, 40, None));
        assert_eq!(a[0].action, AlertAction::RESOLVE);
    }

    #[test]
    fn a_fleet_anomaly_is_one_alert_naming_the_lot_with_no_visit() {
        use seqmon_model::{CohortEvidence, CohortKind};
        let mut n = Notifier::default();
        let fleet = |state: AnomalyState, deviating: i32, t: i64| {
            let mut a: Anomaly =
                decode(&anomaly("pct_q30", state, AnomalySeverity::HIGH, t, 70.0)).unwrap();
            a.instrument_serial = CohortKind::REAGENT_KIT_LOT.key("SBS-20991");
            a.subsystem = Subsystem::CHEMISTRY;
            a.cohort = Some(CohortEvidence {
                kind: CohortKind::REAGENT_KIT_LOT,
                value: "SBS-20991".into(),
                members: 6,
                deviating,
                instruments: (0..deviating).map(|i| format!("A0010{i}")).collect(),
            });
            encode(&a).unwrap()
        };
        let (a, m) = feed(&mut n, &fleet(AnomalyState::ACTIVE, 3, 1000));
        assert_eq!((a.len(), a[0].action), (1, AlertAction::OPEN));
        assert!(m.is_empty(), "a lot is recalled, not visited");
        assert_eq!(a[0].suspected_part, "reagent kit lot SBS-20991");
        assert!(Part::ReagentLot.named_by(&a[0].suspected_part));
        assert!(a[0].title.contains("3 of 6 instruments"), "{}", a[0].title);
        assert!(a[0].covers("A00102") && !a[0].covers("A00105"));
        // More members: the same alert, updated with the new list.
        let (a2, m2) = feed(&mut n, &fleet(AnomalyState::ACTIVE, 5, 2000));
        assert_eq!((a2.len(), a2[0].action), (1, AlertAction::UPDATE));
        assert_eq!(a2[0].alert_id, a[0].alert_id);
        assert!(m2.is_empty() && a2[0].covers("A00104"));
        // The cohort clears as a whole, whichever metric named it.
        let mut cleared: Anomaly = decode(&fleet(AnomalyState::CLEARED, 0, 3000)).unwrap();
        cleared.metric = "cohort".into();
        let (a3, _) = feed(&mut n, &encode(&cleared).unwrap());
        assert_eq!((a3.len(), a3[0].action), (1, AlertAction::RESOLVE));
        assert!(n.state_keys().is_empty());
    }

    #[test]
    fn a_forecast_schedules_before_the_crossing_and_updates_one_entry() {
        let mut n = Notifier::default();
        let t0 = 100 * HOUR_MS;
        let (a, m) = feed(&mut n, &predicted(t0, 200, AnomalySeverity::LOW));
        assert_eq!((a.len(), a[0].action), (1, AlertAction::OPEN));
        assert!(
            a[0].title.contains("forecast to leave spec"),
            "{}",
            a[0].title
        );
        assert_eq!(a[0].suspected_part, "fluidics line or valve (clog)");
        assert_eq!(m.len(), 1);
        // 200 h left: P3, due 24 h before the earliest crossing.
        assert_eq!(m[0].priority, MaintenancePriority::P3);
        assert_eq!(m[0].due_by_ms, t0 + 176 * HOUR_MS);
        assert_eq!(m[0].predicted_limit_ms, Some(t0 + 400 * HOUR_MS));
        // Closer: the same entry, earlier and more urgent.
        let t1 = t0 + 10 * HOUR_MS;
        let (_, m2) = feed(&mut n, &predicted(t1, 30, AnomalySeverity::MEDIUM));
        assert_eq!(m2.len(), 1);
        assert_eq!(m2[0].entry_id, m[0].entry_id);
        assert_eq!(m2[0].priority, MaintenancePriority::P1);
        // 30 h left: the margin is capped at half the time left, never after the crossing.
        assert_eq!(m2[0].due_by_ms, t1 + 15 * HOUR_MS);
        // A present anomaly while the forecast stands: the more urgent of the two, no new entry id.
        let mut active: Anomaly =
            decode(&predicted(t1 + 2 * HOUR_MS, 20, AnomalySeverity::HIGH)).unwrap();
        active.state = AnomalyState::ACTIVE;
        active.severity = AnomalySeverity::CRITICAL;
        let (_, m4) = feed(&mut n, &encode(&active).unwrap());
        assert_eq!(m4.len(), 1);
        assert_eq!(m4[0].entry_id, m[0].entry_id);
        assert!(m4[0].due_by_ms <= t1 + 2 * HOUR_MS + 20 * HOUR_MS, "{m4:?}");
        // The same forecast again: nothing new.
        let (a3, m3) = feed(
            &mut n,
            &predicted(t1 + HOUR_MS, 29, AnomalySeverity::MEDIUM),
        );
        assert!(a3.is_empty() && m3.is_empty(), "{a3:?} {m3:?}");
    }

    fn feed(n: &mut Notifier, bytes: &[u8]) -> (Vec<Alert>, Vec<MaintenanceEntry>) {
        let env = Envelope {
            key: Some(b"VH00042"),
            value: bytes,
            topic: TopicRole::Anomalies.spec().name,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        };
        let mut out = Emitter::default();
        n.process(&env, &mut out).unwrap();
        let recs = out.take().0;
        (
            recs.iter()
                .filter(|e| e.role == TopicRole::Alerts)
                .map(|e| decode(&e.value).unwrap())
                .collect(),
            recs.iter()
                .filter(|e| e.role == TopicRole::Maintenance)
                .map(|e| decode(&e.value).unwrap())
                .collect(),
        )
    }

    #[test]
    fn open_update_dedupe_and_resolve() {
        let mut n = Notifier::default();
        let (a, m) = feed(
            &mut n,
            &anomaly(
                "fluidics_pressure_kpa",
                AnomalyState::ACTIVE,
                AnomalySeverity::MEDIUM,
                3_600_000,
                80.0,
            ),
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].action, AlertAction::OPEN);
        assert_eq!(a[0].suspected_part, "pump seal or fluidics fitting (leak)");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].priority, MaintenancePriority::P3);
        // P3, due by the P3 horizon: a window's own slope (here steep) is not a forecast.
        assert_eq!(m[0].due_by_ms, 3_600_000 + 336 * HOUR_MS);
        // Same severity on another metric of the subsystem: folded in silently.
        assert_eq!(
            feed(
                &mut n,
                &anomaly(
                    "flow_rate_ul_min",
                    AnomalyState::ACTIVE,
                    AnomalySeverity::MEDIUM,
                    3_900_000,
                    200.0
                )
            )
            .0
            .len(),
            0
        );
        let (a, m) = feed(
            &mut n,
            &anomaly(
                "fluidics_pressure_kpa",
                AnomalyState::ACTIVE,
                AnomalySeverity::CRITICAL,
                4_200_000,
                60.0,
            ),
        );
        assert_eq!(
            (a.len(), a[0].action, m.len(), m[0].priority),
            (1, AlertAction::UPDATE, 1, MaintenancePriority::P1)
        );
        assert_eq!(
            feed(
                &mut n,
                &anomaly(
                    "fluidics_pressure_kpa",
                    AnomalyState::CLEARED,
                    AnomalySeverity::LOW,
                    5_000_000,
                    100.0
                )
            )
            .0
            .len(),
            0,
            "flow rate still active"
        );
        let (a, _) = feed(
            &mut n,
            &anomaly(
                "flow_rate_ul_min",
                AnomalyState::CLEARED,
                AnomalySeverity::LOW,
                5_300_000,
                250.0,
            ),
        );
        assert_eq!(a[0].action, AlertAction::RESOLVE);
        assert_eq!(a[0].anomaly_count, 3);
        assert!(n.open.is_empty());
    }
}
