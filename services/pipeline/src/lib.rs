//! The whole pipeline in one process, same processor code as the six services, fed by the
//! simulator or a telemetry JSON-lines file: what `make run` runs. Also scores detection against
//! the simulator's ground truth.

use std::collections::BTreeMap;

use seqmon_anomaly_detector::AnomalyDetector;
use seqmon_cohort_analyzer::CohortAnalyzer;
use seqmon_feature_extractor::FeatureExtractor;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, Alert, AlertAction, AlertTransition, Anomaly, AnomalyState, MaintenanceEntry,
    MaintenanceStatus, PrivacyAction,
};
use seqmon_notifier::Notifier;
use seqmon_privacy_enforcer::PrivacyEnforcer;
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::{Driver, Emitted, RuntimeError};
use seqmon_simulator::FaultTruth;
use seqmon_validator::Validator;

pub mod evaluate;
pub mod service_team;
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
    /// Commands sent to the notifier (by the simulated service team).
    pub commands: u64,
    /// What the in-process delivery did (set by the caller at the end).
    pub delivered: seqmon_dispatcher::service::LocalCounts,
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
                    "{} ALERT {:<12} {:<8} #{} {}",
                    iso_time(a.event_time_ms),
                    a.transition.as_str(),
                    format!("{:?}", a.severity),
                    a.sequence,
                    a.title
                );
                self.alerts.push(a);
                Some(line)
            }
            TopicRole::Maintenance => {
                let m: MaintenanceEntry = decode(&e.value).map_err(bad)?;
                let visit = match &m.visit {
                    Some(v) => format!(
                        "; visit {} ({:?}, {} part{})",
                        iso_time(v.start_ms),
                        v.basis,
                        v.parts.len(),
                        if v.parts.len() == 1 { "" } else { "s" }
                    ),
                    None => String::new(),
                };
                let line = format!(
                    "{} MAINTENANCE {:?} r{} {:?} {} {}: due {}{visit} ({})",
                    iso_time(m.updated_at_ms),
                    m.status,
                    m.revision,
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
            | TopicRole::ChangelogCohortAnalyzer
            | TopicRole::AlertCommands => None,
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
    /// Alerts opened or re-opened (each is a notification).
    pub alerts: u64,
    /// Alert transitions by kind (acknowledged, resolved, reopened, escalated, ...).
    pub transitions: BTreeMap<String, u64>,
    /// Commands the (simulated) service team sent.
    pub commands: u64,
    /// Maintenance entry records (revisions included).
    pub maintenance: u64,
    /// Distinct maintenance entries (instrument and part), and those closed as repaired.
    pub maintenance_entries: u64,
    pub maintenance_closed: u64,
    /// Distinct proposed visits, and entries that shared one with another part.
    pub visits: u64,
    pub grouped_entries: u64,
    /// What was delivered to the receivers given with --alertmanager-url / --webhooks-file (as
    /// the alert dispatcher delivers; all zero without receivers).
    pub delivered: seqmon_dispatcher::service::LocalCounts,
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
    let mut transitions: BTreeMap<String, u64> = AlertTransition::ALL
        .iter()
        .map(|t| (t.as_str().to_ascii_lowercase(), 0))
        .collect();
    for a in &collected.alerts {
        *transitions
            .entry(a.transition.as_str().to_ascii_lowercase())
            .or_default() += 1;
    }
    // The latest revision of each entry says where it stands.
    let mut latest: BTreeMap<&str, &MaintenanceEntry> = BTreeMap::new();
    for m in &collected.maintenance {
        let slot = latest.entry(m.entry_id.as_str()).or_insert(m);
        if m.revision >= slot.revision {
            *slot = m;
        }
    }
    let visits: std::collections::BTreeSet<&str> = collected
        .maintenance
        .iter()
        .filter_map(|m| m.visit.as_ref().map(|v| v.visit_id.as_str()))
        .collect();
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
        transitions,
        commands: collected.commands,
        maintenance: collected.maintenance.len() as u64,
        maintenance_entries: latest.len() as u64,
        maintenance_closed: latest
            .values()
            .filter(|m| m.status == MaintenanceStatus::CLOSED)
            .count() as u64,
        visits: visits.len() as u64,
        delivered: collected.delivered,
        grouped_entries: collected
            .maintenance
            .iter()
            .filter(|m| m.visit.as_ref().is_some_and(|v| v.parts.len() > 1))
            .map(|m| m.entry_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64,
        faults_injected: faults.len() as u64,
        faults_detected,
        false_alerts,
    }
}

pub use seqmon_model::civil::iso_time;
