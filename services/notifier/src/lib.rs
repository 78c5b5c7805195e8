//! Notifier: reads `anomalies`, writes `alerts` and `maintenance.schedule`.
//!
//! Alerts are deduplicated per (instrument, subsystem): the first ACTIVE anomaly of a subsystem
//! opens an alert and schedules maintenance; further anomalies of the same subsystem update it
//! only when its severity rises (and raise the maintenance priority when that changes); when every
//! metric of the subsystem has CLEARED, the alert is resolved. The suspected part comes from the
//! metric and the direction of the departure (a leak lowers pressure, a clog raises it); the due
//! date from the priority, brought forward when the trend will cross the spec limit sooner.
//!
//! State: open alerts per instrument, persisted to `notifier.changelog`.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    Alert, AlertAction, Anomaly, AnomalySeverity, AnomalyState, MaintenanceEntry,
    MaintenancePriority, Subsystem,
};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};
use serde::{Deserialize, Serialize};

const HOUR_MS: i64 = 3_600_000;

/// Notifier settings.
#[derive(Debug, Clone, Args)]
pub struct NotifierConfig {
    /// Hours until due for P1 (before the next run), P2 and P3 work.
    #[arg(long, env = "NOTIFIER_DUE_HOURS", value_delimiter = ',', default_values_t = [24, 48, 336])]
    pub due_hours: Vec<i64>,
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
        let ok = self.due_hours.len() == 3
            && self.due_hours.iter().all(|h| *h > 0)
            && self.due_hours.windows(2).all(|w| w[0] <= w[1]);
        if ok {
            Ok(())
        } else {
            Err(ConfigError::of::<Self>(
                "due_hours",
                "must be three positive, non-decreasing hours for P1,P2,P3",
            ))
        }
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
}

/// The notifier processor.
#[derive(Debug, Default)]
pub struct Notifier {
    cfg: NotifierConfig,
    open: BTreeMap<String, BTreeMap<Subsystem, OpenAlert>>,
}

/// The part most likely at fault.
pub fn suspected_part(a: &Anomaly) -> String {
    let rising = a.observed_level > a.baseline_level;
    match a.metric.as_str() {
        "laser_power_mw" => "excitation laser module".into(),
        "focus_fwhm_px" | "focus_z_offset_um" => "Z-stage / autofocus assembly".into(),
        "stage_position_error_um" | "stage_motor_current_a" => "XY stage motor and encoder".into(),
        "flowcell_temp_deviation_c" | "flowcell_temp_c" => {
            "flow-cell heater (thermal station)".into()
        }
        "chiller_temp_c" => "reagent chiller (Peltier and fan)".into(),
        "fluidics_pressure_kpa" if rising => "fluidics line or valve (clog)".into(),
        "fluidics_pressure_kpa" => "pump seal or fluidics fitting (leak)".into(),
        "flow_rate_ul_min" => "fluidics pump".into(),
        "ambient_temp_c" => "enclosure ventilation".into(),
        "error_events_per_window" => match &a.software_version {
            Some(v) => format!("control software {v}"),
            None => "control software".into(),
        },
        _ if a.subsystem == Subsystem::CHEMISTRY => match &a.reagent_kit_lot {
            Some(lot) => format!("reagent kit lot {lot}"),
            None => "reagent kit or flow cell".into(),
        },
        _ => format!("{} subsystem", a.subsystem.label()),
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

    fn maintenance(&self, a: &Anomaly, alert: &OpenAlert) -> MaintenanceEntry {
        let idx = match alert.priority {
            MaintenancePriority::P1 => 0,
            MaintenancePriority::P2 => 1,
            MaintenancePriority::P3 => 2,
        };
        let mut due = a.window_end_ms + self.cfg.due_hours[idx] * HOUR_MS;
        // Bring the date forward when the trend crosses a spec limit sooner (half the time left).
        let limit = if a.slope_per_hour < 0.0 {
            a.spec_low
        } else {
            a.spec_high
        };
        if let Some(limit) = limit.filter(|_| a.slope_per_hour.abs() > 1e-9) {
            let hours_left = (limit - a.observed_level) / a.slope_per_hour;
            if hours_left > 0.0 {
                due = due.min(a.window_end_ms + (hours_left * 0.5 * HOUR_MS as f64) as i64);
            }
        }
        MaintenanceEntry {
            entry_id: format!("{}:{:?}", alert.alert_id, alert.priority),
            alert_id: alert.alert_id.clone(),
            instrument_serial: a.instrument_serial.clone(),
            instrument_model: a.instrument_model,
            subsystem: a.subsystem,
            suspected_part: alert.suspected_part.clone(),
            priority: alert.priority,
            due_by_ms: due,
            reason: format!(
                "{} {} at {:.3} against baseline {:.3} ({}, score {:.1})",
                a.subsystem.label(),
                a.metric,
                a.observed_level,
                a.baseline_level,
                a.rule,
                a.score
            ),
            created_at_ms: a.window_end_ms,
        }
    }

    fn alert(a: &Anomaly, open: &OpenAlert, action: AlertAction) -> Alert {
        let verb = match action {
            AlertAction::OPEN => "opened",
            AlertAction::UPDATE => "worsened",
            AlertAction::RESOLVE => "resolved",
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
            title: format!(
                "{:?} {} {}: {} {verb}; suspected {}",
                a.instrument_model,
                a.instrument_serial,
                a.subsystem.label(),
                a.metric,
                open.suspected_part
            ),
            suspected_part: open.suspected_part.clone(),
            opened_at_ms: open.opened_at_ms,
            event_time_ms: a.window_end_ms,
            anomaly_count: open.anomaly_count,
        }
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
        let existing = self
            .open
            .get(&serial)
            .and_then(|m| m.get(&a.subsystem))
            .cloned();
        match (a.state, existing) {
            (AnomalyState::ACTIVE, None) => {
                let alert = OpenAlert {
                    alert_id: format!("{serial}:{}:{}", a.subsystem.label(), a.window_end_ms),
                    opened_at_ms: a.window_end_ms,
                    severity: a.severity,
                    score: a.score,
                    anomaly_count: 1,
                    active_metrics: [a.metric.clone()].into(),
                    suspected_part: suspected_part(&a),
                    priority: priority(a.severity),
                };
                out.emit(
                    TopicRole::Alerts,
                    &serial,
                    &Self::alert(&a, &alert, AlertAction::OPEN),
                )?;
                out.emit(
                    TopicRole::Maintenance,
                    &serial,
                    &self.maintenance(&a, &alert),
                )?;
                self.open
                    .entry(serial.clone())
                    .or_default()
                    .insert(a.subsystem, alert);
            }
            (AnomalyState::ACTIVE, Some(mut alert)) => {
                alert.anomaly_count += 1;
                alert.active_metrics.insert(a.metric.clone());
                alert.score = alert.score.max(a.score);
                if a.severity > alert.severity {
                    alert.severity = a.severity;
                    out.emit(
                        TopicRole::Alerts,
                        &serial,
                        &Self::alert(&a, &alert, AlertAction::UPDATE),
                    )?;
                    let p = priority(a.severity);
                    if p < alert.priority {
                        alert.priority = p;
                        out.emit(
                            TopicRole::Maintenance,
                            &serial,
                            &self.maintenance(&a, &alert),
                        )?;
                    }
                }
                self.open
                    .entry(serial.clone())
                    .or_default()
                    .insert(a.subsystem, alert);
            }
            (AnomalyState::CLEARED, Some(mut alert)) => {
                alert.active_metrics.remove(&a.metric);
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
        })
        .unwrap()
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
        // Trend reaches 70 kPa in 0.5 h: due within 15 minutes, well before the P3 horizon.
        assert!(m[0].due_by_ms <= 3_600_000 + 15 * 60_000);
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
