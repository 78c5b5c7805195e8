//! Who may touch which topic: one Kafka principal per stage, and the ACLs that follow from the
//! topic catalogue, so the broker enforces the privacy boundary as well as the code does.
//!
//! [`STAGE_TOPICS`] says which roles each stage reads and writes (checked against every
//! processor's own declaration by a test in `services/bins`); [`acls`] derives the bindings:
//! - a stage reads its input topic and its changelog (restore), writes its outputs, its
//!   dead-letter topic and its changelog, and uses only consumer groups and transactional ids
//!   that start with `<prefix><stage>`;
//! - only the collector (instruments, and the simulator standing in for them) and the ingest
//!   gateway (which takes collectors' batches over HTTPS) write `telemetry.raw`;
//! - no analysis principal gets any access to a sensitive topic (a test checks it).
//!
//! Pure data: `seqmon-admin acls` prints or applies it, the secure test broker applies it.

use crate::topics::{PrivacySide, TopicRole};

/// A Kafka principal of the deployment (`User:<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// Writes raw telemetry: the collector beside each instrument (and the fleet simulator).
    Collector,
    Validator,
    PrivacyEnforcer,
    FeatureExtractor,
    AnomalyDetector,
    Notifier,
    /// Re-keyed by cohort: names a lot or software version shared by deviating instruments.
    CohortAnalyzer,
    /// Takes collectors' batches over HTTPS and writes them to raw telemetry, exactly once
    /// (its changelog holds the receipts of the batches it wrote).
    IngestGateway,
    /// Service engineers' console (`seqmon-admin alert ...`): writes commands on alerts.
    ServiceConsole,
    /// Delivers alert transitions to Alertmanager and webhooks; dead-letters what it gives up.
    AlertDispatcher,
}

impl Principal {
    /// Every principal.
    pub const ALL: [Principal; 10] = [
        Principal::Collector,
        Principal::Validator,
        Principal::PrivacyEnforcer,
        Principal::FeatureExtractor,
        Principal::AnomalyDetector,
        Principal::Notifier,
        Principal::CohortAnalyzer,
        Principal::IngestGateway,
        Principal::ServiceConsole,
        Principal::AlertDispatcher,
    ];

    /// The user name (`User:<name>`), also the stage name of the stage principals.
    pub fn name(self) -> &'static str {
        match self {
            Principal::Collector => "collector",
            Principal::Validator => "validator",
            Principal::PrivacyEnforcer => "privacy-enforcer",
            Principal::FeatureExtractor => "feature-extractor",
            Principal::AnomalyDetector => "anomaly-detector",
            Principal::Notifier => "notifier",
            Principal::CohortAnalyzer => "cohort-analyzer",
            Principal::IngestGateway => "ingest-gateway",
            Principal::ServiceConsole => "service-console",
            Principal::AlertDispatcher => "alert-dispatcher",
        }
    }

    /// The topic roles this principal reads and writes.
    pub fn topics(self) -> StageTopics {
        match self {
            Principal::Collector => StageTopics {
                reads: &[],
                writes: &[TopicRole::Raw],
                consumes: false,
            },
            Principal::ServiceConsole => StageTopics {
                // Reads alerts to show them and the analysis dead letters to see a command
                // refused; writes commands. No group (it assigns partitions, commits nothing),
                // no transactions.
                reads: &[TopicRole::Alerts, TopicRole::DeadLetters],
                writes: &[TopicRole::AlertCommands],
                consumes: false,
            },
            Principal::AlertDispatcher => StageTopics {
                reads: &[TopicRole::Alerts],
                writes: &[TopicRole::DeadLetters],
                // Its group `<prefix>alert-dispatcher` (no transactions: at least once, with
                // idempotency keys).
                consumes: true,
            },
            Principal::IngestGateway => StageTopics {
                reads: &[TopicRole::ChangelogIngestGateway],
                writes: &[TopicRole::Raw, TopicRole::ChangelogIngestGateway],
                // A restore group of its own and transactional ids `<prefix>ingest-gateway-*`.
                consumes: true,
            },
            other => STAGE_TOPICS
                .iter()
                .find(|(p, _)| *p == other)
                .map(|(_, t)| *t)
                .unwrap_or(StageTopics {
                    reads: &[],
                    writes: &[],
                    consumes: false,
                }),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Principal::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?} is not a principal"))
    }
}

/// The roles one stage reads (input, its changelog) and writes (outputs, dead letters,
/// changelog), and whether it consumes in a group with transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTopics {
    pub reads: &'static [TopicRole],
    pub writes: &'static [TopicRole],
    /// A consumer group and transactional producer of its own.
    pub consumes: bool,
}

/// What each stage reads and writes. Must equal the processors' own declarations (input role,
/// output roles, dead-letter role, changelog role): `services/bins` tests it.
pub const STAGE_TOPICS: &[(Principal, StageTopics)] = &[
    (
        Principal::Validator,
        StageTopics {
            reads: &[TopicRole::Raw, TopicRole::ChangelogValidator],
            writes: &[
                TopicRole::Validated,
                TopicRole::DeadLettersSensitive,
                TopicRole::ChangelogValidator,
            ],
            consumes: true,
        },
    ),
    (
        Principal::PrivacyEnforcer,
        StageTopics {
            reads: &[TopicRole::Validated],
            writes: &[
                TopicRole::Sanitized,
                TopicRole::PrivacyAudit,
                TopicRole::DeadLettersSensitive,
            ],
            consumes: true,
        },
    ),
    (
        Principal::FeatureExtractor,
        StageTopics {
            reads: &[TopicRole::Sanitized, TopicRole::ChangelogFeatureExtractor],
            writes: &[
                TopicRole::Features,
                TopicRole::DeadLetters,
                TopicRole::ChangelogFeatureExtractor,
            ],
            consumes: true,
        },
    ),
    (
        Principal::AnomalyDetector,
        StageTopics {
            reads: &[TopicRole::Features, TopicRole::ChangelogAnomalyDetector],
            writes: &[
                TopicRole::Anomalies,
                TopicRole::CohortSignals,
                TopicRole::DeadLetters,
                TopicRole::ChangelogAnomalyDetector,
            ],
            consumes: true,
        },
    ),
    (
        Principal::Notifier,
        StageTopics {
            reads: &[
                TopicRole::Anomalies,
                TopicRole::AlertCommands,
                TopicRole::Features,
                TopicRole::ChangelogNotifier,
            ],
            writes: &[
                TopicRole::Alerts,
                TopicRole::Maintenance,
                TopicRole::DeadLetters,
                TopicRole::ChangelogNotifier,
            ],
            consumes: true,
        },
    ),
    (
        Principal::CohortAnalyzer,
        StageTopics {
            reads: &[TopicRole::CohortSignals, TopicRole::ChangelogCohortAnalyzer],
            writes: &[
                TopicRole::Anomalies,
                TopicRole::CohortSignals,
                TopicRole::DeadLetters,
                TopicRole::ChangelogCohortAnalyzer,
            ],
            consumes: true,
        },
    ),
];

/// What an ACL applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// One topic (literal name, with the deployment prefix).
    Topic(String),
    /// One consumer group (literal id).
    Group(String),
    /// Consumer groups whose id starts with this.
    GroupPrefix(String),
    /// Transactional ids that start with this.
    TransactionalIdPrefix(String),
    /// The cluster (idempotent producing).
    Cluster,
}

/// An operation an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Write,
    Describe,
    IdempotentWrite,
}

impl Operation {
    /// Kafka's spelling (`kafka-acls --operation`).
    pub fn kafka_name(self) -> &'static str {
        match self {
            Operation::Read => "Read",
            Operation::Write => "Write",
            Operation::Describe => "Describe",
            Operation::IdempotentWrite => "IdempotentWrite",
        }
    }
}

/// One ALLOW binding. There are no DENY bindings: the broker runs with
/// `allow.everyone.if.no.acl.found=false`, so whatever is not listed is refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    pub principal: Principal,
    pub resource: Resource,
    pub operation: Operation,
}

impl Acl {
    /// The arguments of Kafka's ACL command (`kafka-acls.sh` / `AclCommand`) that add it.
    pub fn kafka_acls_args(&self) -> Vec<String> {
        let mut a = vec![
            "--add".to_string(),
            "--allow-principal".to_string(),
            format!("User:{}", self.principal.name()),
            "--operation".to_string(),
            self.operation.kafka_name().to_string(),
        ];
        match &self.resource {
            Resource::Topic(t) => a.extend(["--topic".into(), t.clone()]),
            Resource::Group(g) => a.extend(["--group".into(), g.clone()]),
            Resource::GroupPrefix(g) => a.extend([
                "--group".into(),
                g.clone(),
                "--resource-pattern-type".into(),
                "prefixed".into(),
            ]),
            Resource::TransactionalIdPrefix(t) => a.extend([
                "--transactional-id".into(),
                t.clone(),
                "--resource-pattern-type".into(),
                "prefixed".into(),
            ]),
            Resource::Cluster => a.push("--cluster".into()),
        }
        a
    }
}

/// The ACLs as few invocations of Kafka's ACL command as possible: one per principal, kind of
/// resource and set of operations, each listing every resource that shares them (the command
/// adds every principal × operation × resource combination of one invocation).
pub fn kafka_acls_batches(all: &[Acl]) -> Vec<Vec<String>> {
    use std::collections::BTreeMap;
    // (principal, resource) -> operations
    let mut ops: BTreeMap<(Principal, Resource), Vec<Operation>> = BTreeMap::new();
    for a in all {
        ops.entry((a.principal, a.resource.clone()))
            .or_default()
            .push(a.operation);
    }
    // (principal, kind, operations) -> resources
    let mut groups: BTreeMap<(Principal, u8, Vec<Operation>), Vec<Resource>> = BTreeMap::new();
    for ((p, r), mut o) in ops {
        o.sort();
        let kind = match r {
            Resource::Topic(_) => 0,
            Resource::Group(_) => 1,
            Resource::GroupPrefix(_) => 2,
            Resource::TransactionalIdPrefix(_) => 3,
            Resource::Cluster => 4,
        };
        groups.entry((p, kind, o)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((p, _, o), resources)| {
            let mut a = vec![
                "--add".to_string(),
                "--allow-principal".to_string(),
                format!("User:{}", p.name()),
            ];
            for op in o {
                a.extend(["--operation".to_string(), op.kafka_name().to_string()]);
            }
            let mut prefixed = false;
            for r in resources {
                match r {
                    Resource::Topic(t) => a.extend(["--topic".into(), t]),
                    Resource::Group(g) => a.extend(["--group".into(), g]),
                    Resource::GroupPrefix(g) => {
                        prefixed = true;
                        a.extend(["--group".into(), g]);
                    }
                    Resource::TransactionalIdPrefix(t) => {
                        prefixed = true;
                        a.extend(["--transactional-id".into(), t]);
                    }
                    Resource::Cluster => a.push("--cluster".into()),
                }
            }
            if prefixed {
                a.extend(["--resource-pattern-type".into(), "prefixed".into()]);
            }
            a
        })
        .collect()
}

/// The ACLs per principal in the shape of Strimzi's `KafkaUser` `spec.authorization.acls`
/// (`resource.type/name/patternType`, `operations`), as JSON, for the Helm chart
/// (`helm/seqmon/files/acls.json`, which a test keeps equal to this). Names carry no deployment
/// prefix: the chart prepends `kafka.topicPrefix`.
pub fn strimzi_acls_json() -> String {
    let mut out = String::from("{\n");
    let all = acls("");
    for (i, p) in Principal::ALL.iter().enumerate() {
        // (resource, operations) in a stable order.
        let mut by_resource: Vec<(Resource, Vec<Operation>)> = Vec::new();
        for a in all.iter().filter(|a| a.principal == *p) {
            match by_resource.iter_mut().find(|(r, _)| *r == a.resource) {
                Some((_, ops)) => ops.push(a.operation),
                None => by_resource.push((a.resource.clone(), vec![a.operation])),
            }
        }
        out.push_str(&format!("  \"{}\": [\n", p.name()));
        for (j, (r, ops)) in by_resource.iter().enumerate() {
            let (kind, name, pattern) = match r {
                Resource::Topic(t) => ("topic", t.as_str(), "literal"),
                Resource::Group(g) => ("group", g.as_str(), "literal"),
                Resource::GroupPrefix(g) => ("group", g.as_str(), "prefix"),
                Resource::TransactionalIdPrefix(t) => ("transactionalId", t.as_str(), "prefix"),
                Resource::Cluster => ("cluster", "", "literal"),
            };
            let ops: Vec<String> = ops
                .iter()
                .map(|o| format!("\"{}\"", o.kafka_name()))
                .collect();
            out.push_str(&format!(
                "    {{\"type\": \"{kind}\", \"name\": \"{name}\", \"patternType\": \"{pattern}\", \"operations\": [{}]}}{}\n",
                ops.join(", "),
                if j + 1 < by_resource.len() { "," } else { "" }
            ));
        }
        out.push_str(&format!(
            "  ]{}\n",
            if i + 1 < Principal::ALL.len() {
                ","
            } else {
                ""
            }
        ));
    }
    out.push_str("}\n");
    out
}

/// Every ACL of a deployment whose topics, groups and transactional ids carry `prefix`.
pub fn acls(prefix: &str) -> Vec<Acl> {
    let mut out = Vec::new();
    for p in Principal::ALL {
        let t = p.topics();
        let mut add = |resource: Resource, operation| {
            out.push(Acl {
                principal: p,
                resource,
                operation,
            })
        };
        for r in t.reads {
            add(Resource::Topic(r.topic(prefix)), Operation::Read);
            add(Resource::Topic(r.topic(prefix)), Operation::Describe);
        }
        for r in t.writes {
            add(Resource::Topic(r.topic(prefix)), Operation::Write);
            add(Resource::Topic(r.topic(prefix)), Operation::Describe);
        }
        add(Resource::Cluster, Operation::IdempotentWrite);
        if t.consumes {
            // Groups <prefix><stage> and <prefix><stage>-restore, by literal id; transactional
            // ids <prefix><stage>-<instance>, a prefix ending in '-' so a stage named like
            // another's start (validator, validator2) gets none of its ids.
            let own = format!("{prefix}{}", p.name());
            for group in [own.clone(), format!("{own}-restore")] {
                add(Resource::Group(group.clone()), Operation::Read);
                add(Resource::Group(group), Operation::Describe);
            }
            add(
                Resource::TransactionalIdPrefix(format!("{own}-")),
                Operation::Write,
            );
            add(
                Resource::TransactionalIdPrefix(format!("{own}-")),
                Operation::Describe,
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether a principal may touch data on the sensitive side of the boundary.
pub fn reads_sensitive(p: Principal) -> bool {
    p.topics()
        .reads
        .iter()
        .any(|r| r.spec().side == PrivacySide::Sensitive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_principals_get_nothing_on_the_sensitive_side() {
        let all = acls("p.");
        for p in [
            Principal::FeatureExtractor,
            Principal::AnomalyDetector,
            Principal::Notifier,
        ] {
            assert!(!reads_sensitive(p));
            for role in TopicRole::ALL
                .into_iter()
                .filter(|r| r.spec().side == PrivacySide::Sensitive)
            {
                let topic = Resource::Topic(role.topic("p."));
                assert!(
                    !all.iter().any(|a| a.principal == p && a.resource == topic),
                    "{p:?} has an ACL on {role}"
                );
            }
        }
    }

    #[test]
    fn only_the_edge_writes_raw_and_only_the_first_two_stages_read_telemetry_there() {
        let all = acls("");
        let raw = Resource::Topic(TopicRole::Raw.topic(""));
        let writers: Vec<Principal> = all
            .iter()
            .filter(|a| a.resource == raw && a.operation == Operation::Write)
            .map(|a| a.principal)
            .collect();
        assert_eq!(writers, [Principal::Collector, Principal::IngestGateway]);
        let sensitive_readers: Vec<Principal> = Principal::ALL
            .into_iter()
            .filter(|p| reads_sensitive(*p))
            .collect();
        assert_eq!(
            sensitive_readers,
            [
                Principal::Validator,
                Principal::PrivacyEnforcer,
                Principal::IngestGateway
            ]
        );
        // The gateway reads back its own receipts only, never telemetry.
        assert_eq!(
            Principal::IngestGateway.topics().reads,
            [TopicRole::ChangelogIngestGateway]
        );
    }

    #[test]
    fn batches_cover_every_acl_in_fewer_commands() {
        let all = acls("");
        let batches = kafka_acls_batches(&all);
        assert!(batches.len() < all.len() / 2, "{} batches", batches.len());
        // Every (principal, operation, resource) of a batch is an ACL, and every ACL is in one.
        let mut covered = 0;
        for b in &batches {
            let principal = &b[2];
            let ops = b
                .iter()
                .zip(b.iter().skip(1))
                .filter(|(k, _)| *k == "--operation")
                .count();
            let resources = b
                .iter()
                .filter(|w| {
                    ["--topic", "--group", "--transactional-id", "--cluster"].contains(&w.as_str())
                })
                .count();
            assert!(principal.starts_with("User:"));
            covered += ops * resources;
        }
        assert_eq!(covered, all.len());
    }

    #[test]
    fn the_helm_charts_acls_are_the_catalogues() {
        let committed = include_str!("../../../helm/seqmon/files/acls.json");
        let json: serde_json::Value = serde_json::from_str(committed).expect("valid JSON");
        assert_eq!(
            committed,
            strimzi_acls_json(),
            "helm/seqmon/files/acls.json is stale: regenerate it with `seqmon-admin acls --format strimzi-json > helm/seqmon/files/acls.json`"
        );
        assert_eq!(json.as_object().unwrap().len(), Principal::ALL.len());
    }

    #[test]
    fn groups_and_transactional_ids_are_each_stages_own() {
        let all = acls("prod.");
        for a in &all {
            let own = format!("prod.{}", a.principal.name());
            match &a.resource {
                Resource::Group(g) => {
                    assert!(g == &own || g == &format!("{own}-restore"), "{g}")
                }
                Resource::TransactionalIdPrefix(t) => assert_eq!(t, &format!("{own}-")),
                Resource::GroupPrefix(g) => panic!("no group prefix ACL: {g}"),
                Resource::Topic(_) | Resource::Cluster => {}
            }
        }
        let args = all
            .iter()
            .find(|a| matches!(a.resource, Resource::TransactionalIdPrefix(_)))
            .unwrap()
            .kafka_acls_args();
        assert!(args.contains(&"prefixed".to_string()), "{args:?}");
    }
}
