//! The topic catalogue: every topic of the backbone, its key, schema, partitions and retention.
//!
//! One place in code, used by the admin command that creates topics, by the services' default
//! configuration and by the tests. Every topic is keyed by instrument serial; the topics of one
//! path share a partition count so the instance owning partition p upstream owns the same
//! instruments downstream.

/// Which side of the privacy boundary a topic is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivacySide {
    /// May hold data as instruments sent it: short retention, tight ACLs, never read by analysis.
    Sensitive,
    /// Sanitized or derived data only.
    Analysis,
}

/// How old records leave a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Deleted after this many hours.
    DeleteAfterHours(u32),
    /// Log-compacted: the latest record per key is kept (state changelogs).
    Compact,
    /// Compacted, and segments older than this many hours are deleted as well: for changelogs
    /// with one key per short-lived entry (message ids), which are never tombstoned one by one.
    CompactDeleteAfterHours(u32),
}

/// What a topic is for: every topic of the catalogue has exactly one role, and code names topics
/// only by role. The deployment's topic name comes from [`TopicRole::spec`] and a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicRole {
    /// Telemetry as instruments and collectors send it.
    Raw,
    /// Telemetry the validator accepted, bytes unchanged.
    Validated,
    /// Telemetry past the privacy boundary.
    Sanitized,
    /// Window statistics.
    Features,
    /// Baseline departures and their clearing.
    Anomalies,
    /// Alert lifecycle.
    Alerts,
    /// Maintenance schedule entries.
    Maintenance,
    /// Privacy-boundary removals (rule and field, never the value).
    PrivacyAudit,
    /// Dead letters of the sensitive-side stages (they carry raw bytes).
    DeadLettersSensitive,
    /// Dead letters of the analysis-side stages.
    DeadLetters,
    /// Validator state.
    ChangelogValidator,
    /// Feature-extractor state.
    ChangelogFeatureExtractor,
    /// Anomaly-detector state.
    ChangelogAnomalyDetector,
    /// Notifier state.
    ChangelogNotifier,
    /// Ingest-gateway receipts: which batches (client, idempotency key) are already in
    /// `telemetry.raw`.
    ChangelogIngestGateway,
    /// Repartition topic keyed by cohort (lot or software version): membership and deviations
    /// of instruments, from the anomaly detector to the cohort analyzer.
    CohortSignals,
    /// Cohort-analyzer state.
    ChangelogCohortAnalyzer,
    /// Service engineers' commands on alerts (acknowledge, snooze, resolve, assign).
    AlertCommands,
}

impl TopicRole {
    /// Every role, in catalogue order.
    pub const ALL: [TopicRole; 18] = [
        TopicRole::Raw,
        TopicRole::Validated,
        TopicRole::Sanitized,
        TopicRole::Features,
        TopicRole::Anomalies,
        TopicRole::Alerts,
        TopicRole::Maintenance,
        TopicRole::PrivacyAudit,
        TopicRole::DeadLettersSensitive,
        TopicRole::DeadLetters,
        TopicRole::ChangelogValidator,
        TopicRole::ChangelogFeatureExtractor,
        TopicRole::ChangelogAnomalyDetector,
        TopicRole::ChangelogNotifier,
        TopicRole::ChangelogIngestGateway,
        TopicRole::CohortSignals,
        TopicRole::ChangelogCohortAnalyzer,
        TopicRole::AlertCommands,
    ];

    /// The role's name in configuration, metrics labels and `seqmon-admin topics`: the only
    /// place a role is spelled as a string.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicRole::Raw => "raw",
            TopicRole::Validated => "validated",
            TopicRole::Sanitized => "sanitized",
            TopicRole::Features => "features",
            TopicRole::Anomalies => "anomalies",
            TopicRole::Alerts => "alerts",
            TopicRole::Maintenance => "maintenance",
            TopicRole::PrivacyAudit => "privacy_audit",
            TopicRole::DeadLettersSensitive => "dead_letters_sensitive",
            TopicRole::DeadLetters => "dead_letters",
            TopicRole::ChangelogValidator => "changelog_validator",
            TopicRole::ChangelogFeatureExtractor => "changelog_feature_extractor",
            TopicRole::ChangelogAnomalyDetector => "changelog_anomaly_detector",
            TopicRole::ChangelogNotifier => "changelog_notifier",
            TopicRole::ChangelogIngestGateway => "changelog_ingest_gateway",
            TopicRole::CohortSignals => "cohort_signals",
            TopicRole::ChangelogCohortAnalyzer => "changelog_cohort_analyzer",
            TopicRole::AlertCommands => "alert_commands",
        }
    }

    /// The catalogue entry of this role.
    pub fn spec(self) -> &'static TopicSpec {
        // CATALOGUE is in ALL's order (checked by a test), so this index never misses.
        &CATALOGUE[self as usize]
    }

    /// Full topic name under a deployment prefix (`""` for none, or e.g. `"staging."`).
    pub fn topic(self, prefix: &str) -> String {
        format!("{prefix}{}", self.spec().name)
    }
}

impl std::fmt::Display for TopicRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TopicRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a topic role"))
    }
}

/// One topic of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// What the topic is for.
    pub role: TopicRole,
    /// Topic name without the deployment prefix.
    pub name: &'static str,
    /// Record type in the schema store.
    pub schema: &'static str,
    /// What the Kafka key is.
    pub key: &'static str,
    /// Privacy side.
    pub side: PrivacySide,
    /// Retention or compaction.
    pub cleanup: Cleanup,
    /// What it is for.
    pub doc: &'static str,
}

const DAY: u32 = 24;

/// Hours the validator changelog keeps its per-message-id records: one more than the longest
/// de-duplication horizon the validator accepts.
pub const VALIDATOR_CHANGELOG_HOURS: u32 = 25;

/// Hours the ingest gateway's changelog keeps a receipt: one more than the longest
/// idempotency window the gateway accepts.
pub const INGEST_RECEIPT_HOURS: u32 = 25;

/// Every topic. Partition counts are set at creation (`seqmon-admin create-topics --partitions`),
/// the same for all, so co-partitioning holds.
pub const CATALOGUE: &[TopicSpec] = &[
    TopicSpec { role: TopicRole::Raw, name: "telemetry.raw", schema: "telemetry", key: "instrument serial", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(3 * DAY), doc: "Telemetry as instruments and collectors send it." },
    TopicSpec { role: TopicRole::Validated, name: "telemetry.validated", schema: "telemetry", key: "instrument serial", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(3 * DAY), doc: "Telemetry that passed the validator, bytes unchanged." },
    TopicSpec { role: TopicRole::Sanitized, name: "telemetry.sanitized", schema: "sanitized_telemetry", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Telemetry past the privacy boundary: the only telemetry analysis reads." },
    TopicSpec { role: TopicRole::Features, name: "features", schema: "feature", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Per-window statistics per instrument, subsystem and metric." },
    TopicSpec { role: TopicRole::Anomalies, name: "anomalies", schema: "anomaly", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(90 * DAY), doc: "Departures from each instrument's baseline, and their clearing." },
    TopicSpec { role: TopicRole::Alerts, name: "alerts", schema: "alert", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "Alert lifecycle for service teams: every transition (predicted, opened, acknowledged, snoozed, escalated, resolved, re-opened) with its cause." },
    TopicSpec { role: TopicRole::Maintenance, name: "maintenance.schedule", schema: "maintenance_entry", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "Maintenance and part-replacement schedule entries." },
    TopicSpec { role: TopicRole::PrivacyAudit, name: "privacy.audit", schema: "privacy_audit", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "One record per removal at the privacy boundary: rule and field, never the value." },
    TopicSpec { role: TopicRole::DeadLettersSensitive, name: "deadletter.sensitive", schema: "dead_letter", key: "instrument serial (or the source key)", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(7 * DAY), doc: "Dead letters of the validator and privacy enforcer; they carry raw bytes, so they stay on the sensitive side." },
    TopicSpec { role: TopicRole::DeadLetters, name: "deadletter.analysis", schema: "dead_letter", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Dead letters of the stages after the privacy boundary." },
    TopicSpec { role: TopicRole::ChangelogValidator, name: "validator.changelog", schema: "state_snapshot", key: "instrument serial and message id", side: PrivacySide::Sensitive, cleanup: Cleanup::CompactDeleteAfterHours(VALIDATOR_CHANGELOG_HOURS), doc: "Validator state: one record per recent message id." },
    TopicSpec { role: TopicRole::ChangelogFeatureExtractor, name: "feature-extractor.changelog", schema: "state_snapshot", key: "instrument serial (a base), or serial, U+001F, d<slot> (a delta)", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Feature-extractor open windows per instrument: a base and the inputs folded in since (deltas)." },
    TopicSpec { role: TopicRole::ChangelogAnomalyDetector, name: "anomaly-detector.changelog", schema: "state_snapshot", key: "serial U+001F 's' series; ~fleet/<partition> U+001F model/metric; ~cohorts/<serial>", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Anomaly-detector baselines: one record per series of an instrument, per fleet spread of a partition, per instrument's cohort memberships." },
    TopicSpec { role: TopicRole::ChangelogNotifier, name: "notifier.changelog", schema: "state_snapshot", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Notifier alerts, maintenance entries and run history per instrument." },
    TopicSpec { role: TopicRole::ChangelogIngestGateway, name: "ingest-gateway.changelog", schema: "state_snapshot", key: "SHA-256 of client identity and idempotency key", side: PrivacySide::Sensitive, cleanup: Cleanup::CompactDeleteAfterHours(INGEST_RECEIPT_HOURS), doc: "Ingest-gateway receipts: the batches already written to telemetry.raw, so a retried POST is not counted twice." },
    TopicSpec { role: TopicRole::CohortSignals, name: "cohort.signals", schema: "cohort_signal", key: "cohort (kind:value)", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(7 * DAY), doc: "Repartition topic: instruments' membership of lot and software cohorts and their deviations, keyed by cohort so one cohort-analyzer instance sees a whole cohort; and each detector partition's hourly watermark, sent to every partition (keys ~watermark/<n>)." },
    TopicSpec { role: TopicRole::ChangelogCohortAnalyzer, name: "cohort-analyzer.changelog", schema: "state_snapshot", key: "cohort (kind:value)", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Cohort-analyzer members, deviations and fleet anomalies per cohort." },
    TopicSpec { role: TopicRole::AlertCommands, name: "alerts.commands", schema: "alert_command", key: "the alert's instrument serial (a fleet alert's cohort key)", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "Service engineers' commands on alerts (acknowledge, snooze, resolve, assign): who, when, what. Co-partitioned with anomalies, so the notifier instance holding an alert reads its commands." },
];

/// Who sets the Kafka timestamp of records on `telemetry.raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RawTimestamps {
    /// The broker, on arrival (`LogAppendTime`): the validator judges an instrument's clock
    /// against a clock the instrument cannot set. For live fleets.
    #[default]
    Broker,
    /// The producer (`CreateTime`): the validator can only compare the sender's clock with
    /// itself. For simulations and backfills of recorded telemetry, whose records must keep the
    /// times they were sent at.
    Producer,
}

/// Kafka topic configuration entries for a topic (`telemetry.raw` stamped by the broker).
pub fn topic_config(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    topic_config_with(spec, RawTimestamps::Broker)
}

/// Kafka topic configuration entries for a topic, `telemetry.raw` stamped as `raw` says.
pub fn topic_config_with(spec: &TopicSpec, raw: RawTimestamps) -> Vec<(&'static str, String)> {
    let mut config = cleanup_config(spec);
    if spec.role == TopicRole::Raw && raw == RawTimestamps::Broker {
        config.push(("message.timestamp.type", "LogAppendTime".into()));
    }
    config
}

fn cleanup_config(spec: &TopicSpec) -> Vec<(&'static str, String)> {
    match spec.cleanup {
        Cleanup::DeleteAfterHours(h) => vec![
            ("cleanup.policy", "delete".into()),
            ("retention.ms", (h as u64 * 3_600_000).to_string()),
        ],
        Cleanup::Compact => vec![
            ("cleanup.policy", "compact".into()),
            ("min.compaction.lag.ms", "60000".into()),
        ],
        Cleanup::CompactDeleteAfterHours(h) => vec![
            ("cleanup.policy", "compact,delete".into()),
            ("min.compaction.lag.ms", "60000".into()),
            ("retention.ms", (h as u64 * 3_600_000).to_string()),
            // Segments roll hourly so expired ones can be deleted soon after the retention.
            ("segment.ms", "3600000".into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "topic names are unique");
        for t in CATALOGUE {
            assert!(
                crate::schema_store::store()
                    .entries()
                    .iter()
                    .any(|e| e.name == t.schema),
                "{} has a schema",
                t.name
            );
        }
        for (i, role) in TopicRole::ALL.into_iter().enumerate() {
            assert_eq!(CATALOGUE[i].role, role, "catalogue is in role order");
            assert_eq!(role.spec().role, role);
            assert_eq!(role.as_str().parse::<TopicRole>(), Ok(role));
        }
        assert_eq!(CATALOGUE.len(), TopicRole::ALL.len());
        assert!("nonsense".parse::<TopicRole>().is_err());
        assert_eq!(TopicRole::Raw.topic("t1."), "t1.telemetry.raw");
        assert_eq!(
            topic_config(TopicRole::ChangelogNotifier.spec())[0].1,
            "compact"
        );
        // Only sanitized data and what follows it may be read by analysis.
        assert_eq!(TopicRole::Sanitized.spec().side, PrivacySide::Analysis);
        assert_eq!(TopicRole::Validated.spec().side, PrivacySide::Sensitive);
    }
}
