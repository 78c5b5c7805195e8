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

/// One topic of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Logical name, used in configuration (`raw`, `validated`, ...).
    pub role: &'static str,
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

/// Every topic. Partition counts are set at creation (`seqmon-admin create-topics --partitions`),
/// the same for all, so co-partitioning holds.
pub const CATALOGUE: &[TopicSpec] = &[
    TopicSpec { role: "raw", name: "telemetry.raw", schema: "telemetry", key: "instrument serial", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(3 * DAY), doc: "Telemetry as instruments and collectors send it." },
    TopicSpec { role: "validated", name: "telemetry.validated", schema: "telemetry", key: "instrument serial", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(3 * DAY), doc: "Telemetry that passed the validator, bytes unchanged." },
    TopicSpec { role: "sanitized", name: "telemetry.sanitized", schema: "sanitized_telemetry", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Telemetry past the privacy boundary: the only telemetry analysis reads." },
    TopicSpec { role: "features", name: "features", schema: "feature", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Per-window statistics per instrument, subsystem and metric." },
    TopicSpec { role: "anomalies", name: "anomalies", schema: "anomaly", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(90 * DAY), doc: "Departures from each instrument's baseline, and their clearing." },
    TopicSpec { role: "alerts", name: "alerts", schema: "alert", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "Alert lifecycle (open, update, resolve) for service teams." },
    TopicSpec { role: "maintenance", name: "maintenance.schedule", schema: "maintenance_entry", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "Maintenance and part-replacement schedule entries." },
    TopicSpec { role: "privacy_audit", name: "privacy.audit", schema: "privacy_audit", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(365 * DAY), doc: "One record per removal at the privacy boundary: rule and field, never the value." },
    TopicSpec { role: "dead_letters_sensitive", name: "deadletter.sensitive", schema: "dead_letter", key: "instrument serial (or the source key)", side: PrivacySide::Sensitive, cleanup: Cleanup::DeleteAfterHours(7 * DAY), doc: "Dead letters of the validator and privacy enforcer; they carry raw bytes, so they stay on the sensitive side." },
    TopicSpec { role: "dead_letters", name: "deadletter.analysis", schema: "dead_letter", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::DeleteAfterHours(30 * DAY), doc: "Dead letters of the stages after the privacy boundary." },
    TopicSpec { role: "changelog_validator", name: "validator.changelog", schema: "state_snapshot", key: "instrument serial and message id", side: PrivacySide::Sensitive, cleanup: Cleanup::CompactDeleteAfterHours(VALIDATOR_CHANGELOG_HOURS), doc: "Validator state: one record per recent message id." },
    TopicSpec { role: "changelog_feature_extractor", name: "feature-extractor.changelog", schema: "state_snapshot", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Feature-extractor open windows per instrument." },
    TopicSpec { role: "changelog_anomaly_detector", name: "anomaly-detector.changelog", schema: "state_snapshot", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Anomaly-detector baselines per instrument." },
    TopicSpec { role: "changelog_notifier", name: "notifier.changelog", schema: "state_snapshot", key: "instrument serial", side: PrivacySide::Analysis, cleanup: Cleanup::Compact, doc: "Notifier open alerts per instrument." },
];

/// The catalogue entry with logical role `role`. Panics on an unknown role: roles are constants.
pub fn spec(role: &str) -> &'static TopicSpec {
    CATALOGUE
        .iter()
        .find(|t| t.role == role)
        .unwrap_or_else(|| panic!("no topic with role {role}"))
}

/// Full topic name of `role` under a deployment prefix (`""` for none, or e.g. `"staging."`).
pub fn topic_name(prefix: &str, role: &str) -> String {
    format!("{prefix}{}", spec(role).name)
}

/// Kafka topic configuration entries for a topic.
pub fn topic_config(spec: &TopicSpec) -> Vec<(&'static str, String)> {
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
        assert_eq!(topic_name("t1.", "raw"), "t1.telemetry.raw");
        assert_eq!(topic_config(spec("changelog_notifier"))[0].1, "compact");
        // Only sanitized data and what follows it may be read by analysis.
        assert_eq!(spec("sanitized").side, PrivacySide::Analysis);
        assert_eq!(spec("validated").side, PrivacySide::Sensitive);
    }
}
