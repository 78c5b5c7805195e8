//! The whole pipeline in one process, same processor code as the six services, fed by the
//! simulator or a telemetry JSON-lines file: what `make run` runs. Also scores detection against
//! the simulator's ground truth.

use std::collections::BTreeMap;

use seqmon_anomaly_detector::AnomalyDetector;
use seqmon_cohort_analyzer::CohortAnalyzer;
use seqmon_feature_extractor::FeatureExtractor;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, Alert, AlertAction, Anomaly, AnomalyState, MaintenanceEntry, PrivacyAction,
};
use seqmon_notifier::Notifier;
use seqmon_privacy_enforcer::PrivacyEnforcer;
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::{Driver, Emitted, RuntimeError};
use seqmon_simulator::FaultTruth;
use seqmon_validator::Validator;

pub mod evaluate;
use serde::Serialize;

/// The six stages with default settings, chained.
pub fn default_chain() -> Result<Chain, RuntimeError> {
    Chain::new(vec![
        Driver::new(Box::new(Validator::default())),
        Driver::new(Box::new(PrivacyEnforcer::default())),
        Driver::new(Box::new(FeatureExtractor::default())),
        Driver::new(Box::new(AnomalyDetector::default())),
        Driver::new(Box::new(CohortAnalyzer::default())),
        Driver::new(Box::new(Notifier::default())),
    ])
}

/// The stages for replaying recorded or historic telemetry: the validator accepts events of
/// any age (their timestamps are checked for the future and for clock skew only).
pub fn historic_chain() -> Result<Chain, RuntimeError> {
    let validator = seqmon_validator::ValidatorConfig {
        max_age_ms: i64::MAX / 4,
        ..Default::default()
    };
    Chain::new(vec![
        Driver::new(Box::new(Validator::new(validator))),
        Driver::new(Box::new(PrivacyEnforcer::default())),
        Driver::new(Box::new(FeatureExtractor::default())),
        Driver::new(Box::new(AnomalyDetector::default())),
        Driver::new(Box::new(CohortAnalyzer::default())),
        Driver::new(Box::new(Notifier::default())),
    ])
}

/// Everything that left the chain, decoded.
#[derive(Debug, Default)]
pub struct Collected {
    /// Alerts in order.
    pub alerts: Vec<Alert>,
    /// Maintenance entries in order.
    pub maintenance: Vec<MaintenanceEntry>,
    /// Dead letters by reason code.
    pub dead_letters: BTreeMap<String, u64>,
    /// Privacy audit records.
    pub privacy_removals: u64,
    /// Values the privacy boundary acted on, by action (pseudonymized, replaced with OTHER,
    /// removed, record rejected), summed over the audit records' counts.
    pub privacy_actions: BTreeMap<String, u64>,
    /// ACTIVE anomaly records.
    pub anomalies_active: u64,
    /// Records the validator forwarded.
    pub validated: u64,
}

impl Collected {
    /// Takes one record that left the chain. Returns it decoded when it is an alert or a
    /// maintenance entry, for printing.
    pub fn take(&mut self, topic: &str, e: &Emitted) -> Result<Option<String>, RuntimeError> {
        let bad = |err: seqmon_model::CodecError| {
            RuntimeError::Internal(format!("{topic} output does not decode: {err}"))
        };
        Ok(match e.role {
            TopicRole::Alerts => {
                let a: Alert = decode(&e.value).map_err(bad)?;
                let line = format!(
                    "{} ALERT {:<7} {:<8} {}",
                    iso_time(a.event_time_ms),
                    format!("{:?}", a.action),
                    format!("{:?}", a.severity),
                    a.title
                );
                self.alerts.push(a);
                Some(line)
            }
            TopicRole::Maintenance => {
                let m: MaintenanceEntry = decode(&e.value).map_err(bad)?;
                let line = format!(
                    "{} MAINTENANCE {:?} {} {}: due {} ({})",
                    iso_time(m.created_at_ms),
                    m.priority,
                    m.instrument_serial,
                    m.suspected_part,
                    iso_time(m.due_by_ms),
                    m.reason
                );
                self.maintenance.push(m);
                Some(line)
            }
            TopicRole::DeadLetters | TopicRole::DeadLettersSensitive => {
                let d: seqmon_model::DeadLetter = decode(&e.value).map_err(bad)?;
                *self
                    .dead_letters
                    .entry(d.reason.code().to_string())
                    .or_default() += 1;
                None
            }
            TopicRole::PrivacyAudit => {
                let a: seqmon_model::PrivacyAudit = decode(&e.value).map_err(bad)?;
                self.privacy_removals += 1;
                let action = match a.action {
                    PrivacyAction::PSEUDONYMIZED => "pseudonymized",
                    PrivacyAction::REPLACED_WITH_OTHER => "replaced_with_other",
                    PrivacyAction::FIELD_REMOVED => "removed",
                    PrivacyAction::RECORD_REJECTED => "rejected",
                };
                *self.privacy_actions.entry(action.to_string()).or_default() +=
                    u64::try_from(a.count).unwrap_or(0);
                None
            }
            TopicRole::Anomalies => {
                let a: Anomaly = decode(&e.value).map_err(bad)?;
                self.anomalies_active += u64::from(a.state == AnomalyState::ACTIVE);
                None
            }
            TopicRole::Validated => {
                self.validated += 1;
                None
            }
            // Handed on inside the chain, or never emitted by a stage (changelogs are the Kafka
            // runtime's; raw is the chain's input).
            TopicRole::Raw
            | TopicRole::Sanitized
            | TopicRole::Features
            | TopicRole::ChangelogValidator
            | TopicRole::ChangelogFeatureExtractor
            | TopicRole::ChangelogAnomalyDetector
            | TopicRole::ChangelogNotifier
            | TopicRole::ChangelogIngestGateway
            | TopicRole::CohortSignals
            | TopicRole::ChangelogCohortAnalyzer => None,
        })
    }
}

/// The summary line of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub events: u64,
    pub validated: u64,
    pub dead_letters: BTreeMap<String, u64>,
    /// Audit records written at the privacy boundary.
    pub privacy_removals: u64,
    /// Values the boundary pseudonymized, replaced with OTHER or removed, and records it refused.
    pub privacy: BTreeMap<String, u64>,
    pub anomalies: u64,
    pub alerts: u64,
    pub maintenance: u64,
    pub faults_injected: u64,
    pub faults_detected: u64,
    /// Alerts opened on an instrument and subsystem with no injected fault.
    pub false_alerts: u64,
}

/// Faults detected: an alert opened on the fault's instrument and subsystem at or after its start,
/// or a fleet alert listing the instrument (opened or updated); false alerts: opened with no
/// fault behind them (see [`evaluate::outcomes`]).
pub fn score(faults: &[FaultTruth], alerts: &[Alert]) -> (u64, u64) {
    let (outcomes, false_alerts) = evaluate::outcomes(faults, alerts, &[], i64::MIN);
    let detected = outcomes.iter().filter(|o| o.detected).count() as u64;
    (detected, false_alerts.len() as u64)
}

/// The summary of a run.
pub fn summarize(events: u64, collected: &Collected, faults: &[FaultTruth]) -> Summary {
    let (faults_detected, false_alerts) = score(faults, &collected.alerts);
    Summary {
        events,
        validated: collected.validated,
        dead_letters: collected.dead_letters.clone(),
        privacy_removals: collected.privacy_removals,
        privacy: [
            "pseudonymized",
            "replaced_with_other",
            "removed",
            "rejected",
        ]
        .into_iter()
        .map(|a| {
            let n = collected.privacy_actions.get(a).copied().unwrap_or(0);
            (a.to_string(), n)
        })
        .collect(),
        anomalies: collected.anomalies_active,
        alerts: collected
            .alerts
            .iter()
            .filter(|a| a.action == AlertAction::OPEN)
            .count() as u64,
        maintenance: collected.maintenance.len() as u64,
        faults_injected: faults.len() as u64,
        faults_detected,
        false_alerts,
    }
}

/// `2026-11-01T12:05:00Z` for ms since the epoch (UTC, proleptic Gregorian).
pub fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::iso_time;

    #[test]
    fn formats_utc_times() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_793_491_200_000), "2026-11-01T00:00:00Z");
        assert_eq!(
            iso_time(951_782_400_000 + 86_399_999),
            "2000-02-29T23:59:59Z"
        );
    }
}
