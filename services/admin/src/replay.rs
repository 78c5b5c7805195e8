//! `seqmon-admin replay`: reprocesses a range of a source topic through one stage, or a stage and
//! everything after it, into topics of their own (`replay.<name>.<catalogue name>`), leaving the
//! production topics, consumer groups and transactional ids alone.
//!
//! Design. The stages' processors are pure and synchronous (`crates/processor`), so the replay
//! runs them in this process, as the embedded pipeline and the chaos suite's oracle do, rather
//! than copying the range into `replay.<name>.<source>` and running the stage services on it.
//! Running the services would make the outputs depend on how their consumers, batches and
//! transactions happened to interleave, so two runs of the same range would differ; in process,
//! the order is ours to fix:
//! 1. the range is read `read_committed` (the shared reader, `source.rs`: throw-away group,
//!    `assign`, nothing committed) and held in memory (so a replay is of days, not months);
//!    with `--time-basis event`, records outside the event-time range, or whose event time
//!    cannot be read (they do not decode), are left out and counted;
//! 2. partitions are merged in one fixed order: repeatedly the partition whose next record has
//!    the smallest Kafka timestamp (ties: lower partition), each partition in offset order;
//! 3. each record is handed to every selected stage that reads the source topic, and each
//!    output at once (depth-first) to every later selected stage that reads its role (the stage
//!    itself for a repartition topic), as `crates/runtime/src/embedded.rs` routes, but with
//!    Kafka's provenance: the partition an output lands in (murmur2 of its key, as every
//!    producer of ours partitions), the offset it will get in its replay topic, and the Kafka
//!    timestamp of the source record that caused it (what production stamps); the topic a
//!    stage is told it reads is the production name of the role (what dead letters and audit
//!    records quote), so a replay's records do not depend on its prefix;
//! 4. everything is produced by one transactional producer (`transactional.id` = the prefix
//!    without its final dot, `replay.<name>`), one transaction per `--batch-records` source
//!    records, to the partition computed in 3, sealed like production where the topic is
//!    sensitive and a key ring is configured.
//!
//! Deterministic means: the same range, settings and build give the same records (key, value,
//! partition, offset, timestamp) on every output topic, twice over; the replay topics must be
//! empty at the start (offsets then start at 0; offsets of later records count the commit
//! markers of earlier transactions) and are refused otherwise. Sealed values (telemetry.validated,
//! deadletter.sensitive with `--encryption-keys-dir`) carry a random nonce, so there the opened
//! plaintext is identical, not the envelope. It does not mean "what production wrote": the
//! stages start with empty state (no baselines, windows or open alerts from before the range:
//! begin the range earlier to warm them up), only the source topic is read (side inputs are
//! not: the notifier replayed alone sees no features, so replay it from the detector with
//! `--downstream`), the service team's commands are not replayed, open
//! windows at the end of the range are not flushed (as in production, unless `--flush-at-end`),
//! and the stages whose outputs depend on the interleaving of their inputs across partitions and
//! topics (the notifier with anomalies and features, the cohort analyzer with its watermarks) see
//! the fixed order above, not the order production's consumers happened to see.
//!
//! Each stage's processor is built from its service's own environment variables (`VALIDATOR_*`,
//! `PRIVACY_*`, `FEATURES_*`, ...; defaults otherwise), so exporting a changed setting replays
//! the change; the privacy enforcer needs its pseudonym key (`PRIVACY_PSEUDONYM_KEY_FILE`).
//!
//! Replay topics are created with unlimited retention (`--retention-hours` to bound it): their
//! records carry the source's old timestamps, which production's retention would delete at
//! once. Delete them when done. After the last transaction, one record on
//! `replay.<name>.manifest` (range, settings, counts) marks the replay complete; `alert diff`
//! warns about a `replay.` prefix without it (a killed replay).
//!
//! A sealed source needs the key ring: a sealed record read without one, or a first sealed
//! record that does not open with it, refuses the replay (exit 2, `--encryption-keys-dir`).
//! A later record that does not open is counted apart (never as outside an event-time range;
//! on the Kafka basis the validator dead-letters it UNDECODABLE) and the exit code is 3.
//!
//! Refusals (exit 2, naming the setting), all before anything is written: a prefix that does
//! not start with `replay.` or end with `.` (or holds `..`), a topic name it would make that is
//! a production topic, is not a legal topic name or collides with an existing one ('.' and '_'),
//! replay topics that already hold records, a stage setting that does not validate, a range
//! whose end is not after its start, a `--partition` the source does not have.
//! Failures (exit 1): the source cannot be read, Kafka refuses the transactional id or a
//! transaction; an open transaction is aborted, so the replay topics hold whole batches only.
//!
//! Progress: on a terminal, stderr shows records/s and the ETA; otherwise only the final
//! summary is printed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Command as ClapCommand, FromArgMatches, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use seqmon_model::partitioning::partition_for_key;
use seqmon_model::topics::{topic_config, PrivacySide, TopicRole, CATALOGUE};
use seqmon_model::{decode, DeadLetterReason};
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::{Driver, Envelope, Processor, StageError};

use crate::progress::Progress;
use crate::source::{self, RawRecord, TopicRange};

/// A stage of the chain, in chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Stage {
    Validator,
    PrivacyEnforcer,
    FeatureExtractor,
    AnomalyDetector,
    CohortAnalyzer,
    Notifier,
    /// The whole chain, from telemetry.raw.
    All,
}

impl Stage {
    /// The six stages in chain order.
    pub const CHAIN: [Stage; 6] = [
        Stage::Validator,
        Stage::PrivacyEnforcer,
        Stage::FeatureExtractor,
        Stage::AnomalyDetector,
        Stage::CohortAnalyzer,
        Stage::Notifier,
    ];
}

/// Which records of the source are replayed, on what clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimeBasis {
    /// `--from-time`/`--until-time` select by Kafka timestamp (offsets looked up by time).
    Kafka,
    /// They select by the record's own event time (window end for features and anomalies): the
    /// range is read by offset (all that is retained unless bounded) and filtered.
    Event,
}

/// `seqmon-admin replay ...`.
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    kafka: Box<KafkaConnection>,
    /// Prefix of every output topic: `replay.<name>.` (the transactional id is `replay.<name>`).
    #[arg(long)]
    into: String,
    /// The stage to replay (`all`: the whole chain from telemetry.raw).
    #[arg(long, value_enum)]
    stage: Stage,
    /// Also run every stage after `--stage`, fed by its outputs (e.g. `--stage anomaly-detector
    /// --downstream` replays features through the detector, the cohort analyzer and the notifier).
    #[arg(long)]
    downstream: bool,
    /// Only these partitions of the source (repeatable); all by default.
    #[arg(long = "partition")]
    partitions: Vec<i32>,
    /// First offset (on every partition read).
    #[arg(long, conflicts_with = "from_time")]
    from_offset: Option<i64>,
    /// Offset to stop before (exclusive, on every partition read).
    #[arg(long, conflicts_with = "until_time")]
    until_offset: Option<i64>,
    /// Start time: `2026-11-01T00:00:00Z`, `2026-11-01` (UTC midnight), ms since the epoch, or a
    /// time ago (`-2d`).
    #[arg(long, allow_hyphen_values = true)]
    from_time: Option<String>,
    /// End time (exclusive), same forms; by default the end of the topic when the replay begins.
    #[arg(long, allow_hyphen_values = true)]
    until_time: Option<String>,
    /// Whether the times are Kafka timestamps or the records' event times.
    #[arg(long, value_enum, default_value = "kafka")]
    time_basis: TimeBasis,
    /// Source records per transaction (their outputs go in the same one).
    #[arg(long, default_value_t = 1000)]
    batch_records: usize,
    /// At the end of the range, flush what the stages hold back (open windows), as file mode
    /// does; production never does, so by default neither does a replay.
    #[arg(long)]
    flush_at_end: bool,
    /// Replication factor of the replay topics (-1: the broker's default).
    #[arg(long, env = "SEQMON_REPLICATION_FACTOR", default_value_t = -1, allow_hyphen_values = true)]
    replication_factor: i32,
    /// Retention of the replay topics, hours; unlimited by default. Their records carry the
    /// source's (old) timestamps, so production's retention would delete them at once: delete
    /// the topics when done instead.
    #[arg(long)]
    retention_hours: Option<u64>,
}

/// Why a replay did not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A setting is wrong; nothing was written.
    #[error("invalid configuration: {setting}: {message}")]
    Config { setting: String, message: String },
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("{0}")]
    Kafka(String),
    /// A stage failed on a record (a bug, never bad input: bad input is a dead letter).
    #[error("stage {stage}: {source}")]
    Stage {
        stage: &'static str,
        source: StageError,
    },
}

fn config(setting: &str, message: impl Into<String>) -> ReplayError {
    ReplayError::Config {
        setting: setting.into(),
        message: message.into(),
    }
}

/// Checks `--into`: `replay.<name>.`, legal topic names, none a production topic. Returns the
/// output topic name of every catalogue role.
pub fn check_prefix(into: &str, kafka: &KafkaConnection) -> Result<(), ReplayError> {
    let Some(name) = into
        .strip_prefix("replay.")
        .and_then(|n| n.strip_suffix('.'))
    else {
        return Err(config(
            "--into",
            format!("{into:?} must be replay.<name>. (start with \"replay.\", end with \".\")"),
        ));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(config(
            "--into",
            format!("the name in {into:?} must be letters, digits, '.', '_' or '-'"),
        ));
    }
    // `replay.x..` would share `replay.x.`'s transactional id, `replay.x`.
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(config(
            "--into",
            format!("the name in {into:?} must not start or end with '.' nor hold \"..\""),
        ));
    }
    let production: Vec<String> = TopicRole::ALL.iter().map(|r| kafka.topic(*r)).collect();
    for spec in CATALOGUE {
        let topic = spec.role.topic(into);
        if topic.len() > 249 {
            return Err(config(
                "--into",
                format!("{topic} is longer than Kafka's 249 characters"),
            ));
        }
        if production.contains(&topic) {
            return Err(config(
                "--into",
                format!(
                    "{topic} is a production topic (--topic-prefix {:?}): a replay never writes there",
                    kafka.topic_prefix
                ),
            ));
        }
    }
    Ok(())
}

/// The transactional id of a replay: its prefix without the final dot (`replay.x.` ->
/// `replay.x`); [`check_prefix`] has refused names ending in `.`, so no two prefixes share one.
pub fn transactional_id(into: &str) -> String {
    into.strip_suffix('.').unwrap_or(into).to_string()
}

/// The settings `A` of a stage service from its environment variables, else their defaults.
fn settings_from_env<A: Args + FromArgMatches>(stage: &'static str) -> Result<A, ReplayError> {
    let cmd = A::augment_args(ClapCommand::new(stage).no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(|e| config(&format!("{stage} settings (environment)"), e.to_string()))?;
    A::from_arg_matches(&matches)
        .map_err(|e| config(&format!("{stage} settings (environment)"), e.to_string()))
}

fn checked(e: seqmon_runtime::processor::ConfigError) -> ReplayError {
    ReplayError::Config {
        setting: e.setting,
        message: e.message,
    }
}

/// The privacy enforcer as its service builds it (`seqmon_services::build_privacy_enforcer`:
/// pseudonym key, never the public demo key, and the operator's templates), from `PRIVACY_*`.
fn privacy_enforcer() -> Result<Box<dyn Processor>, ReplayError> {
    use seqmon_privacy_enforcer::PrivacyConfig;
    use seqmon_runtime::processor::config::setting_name;
    let cfg: PrivacyConfig = settings_from_env("privacy-enforcer")?;
    if cfg.pseudonym_key.is_none() && cfg.pseudonym_key_file.is_none() {
        return Err(config(
            &setting_name::<PrivacyConfig>("pseudonym_key_file"),
            "is required to replay through the privacy enforcer (the deployment's key, so pseudonyms match production)",
        ));
    }
    match seqmon_services::build_privacy_enforcer(&cfg) {
        Ok(p) => Ok(Box::new(p)),
        Err(seqmon_runtime::RuntimeError::Config { setting, message }) => {
            Err(ReplayError::Config { setting, message })
        }
        Err(e) => Err(config(
            "privacy-enforcer settings (environment)",
            e.to_string(),
        )),
    }
}

/// A stage's processor, configured as its service is (environment, then defaults).
pub fn processor(stage: Stage) -> Result<Box<dyn Processor>, ReplayError> {
    Ok(match stage {
        Stage::Validator => {
            let cfg: seqmon_validator::ValidatorConfig = settings_from_env("validator")?;
            cfg.validate().map_err(checked)?;
            Box::new(seqmon_validator::Validator::new(cfg))
        }
        Stage::PrivacyEnforcer => privacy_enforcer()?,
        Stage::FeatureExtractor => {
            let cfg: seqmon_feature_extractor::FeatureConfig =
                settings_from_env("feature-extractor")?;
            cfg.validate().map_err(checked)?;
            Box::new(seqmon_feature_extractor::FeatureExtractor::new(cfg))
        }
        Stage::AnomalyDetector => {
            let cfg: seqmon_anomaly_detector::AnomalyConfig =
                settings_from_env("anomaly-detector")?;
            cfg.validate().map_err(checked)?;
            Box::new(seqmon_anomaly_detector::AnomalyDetector::new(cfg))
        }
        Stage::CohortAnalyzer => {
            let cfg: seqmon_cohort_analyzer::CohortConfig = settings_from_env("cohort-analyzer")?;
            cfg.validate().map_err(checked)?;
            Box::new(seqmon_cohort_analyzer::CohortAnalyzer::new(cfg))
        }
        Stage::Notifier => {
            let cfg: seqmon_notifier::NotifierConfig = settings_from_env("notifier")?;
            cfg.validate().map_err(checked)?;
            Box::new(seqmon_notifier::Notifier::new(cfg))
        }
        Stage::All => return Err(config("--stage", "all is a chain, not one stage")),
    })
}

/// The stages `--stage` and `--downstream` select, in chain order.
pub fn selected(stage: Stage, downstream: bool) -> Vec<Stage> {
    match stage {
        Stage::All => Stage::CHAIN.to_vec(),
        s if downstream => Stage::CHAIN.into_iter().filter(|c| *c >= s).collect(),
        s => vec![s],
    }
}

/// One record to produce: where, and what (before sealing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub role: TopicRole,
    pub partition: i32,
    pub key: String,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

/// A source record, opened.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value as stored (sealed on a sensitive topic).
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    pub log_append_time: bool,
    /// The envelope header, when sealed.
    pub sealed_with: Option<Vec<u8>>,
}

impl From<RawRecord> for SourceRecord {
    fn from(r: RawRecord) -> Self {
        let sealed_with = r
            .header(seqmon_runtime::envelope::HEADER)
            .map(<[u8]>::to_vec);
        SourceRecord {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            value: r.value.unwrap_or_default(),
            timestamp_ms: r.timestamp_ms,
            log_append_time: r.log_append_time,
            sealed_with,
        }
    }
}

/// The selected stages run in process over records in a fixed order, with Kafka's provenance.
/// No I/O: [`Replayer::push`] returns what to produce.
pub struct Replayer {
    stages: Vec<Driver>,
    source_role: TopicRole,
    source_topic: String,
    /// The production prefix: records are named by their production topic in the provenance
    /// stages write (dead letters, audit), so two replays, and a replay and production, compare
    /// byte for byte.
    prefix: String,
    partitions: u32,
    /// Next offset of every replay topic partition: records produced, plus commit markers.
    next_offset: HashMap<(TopicRole, i32), i64>,
    /// Partitions written since the last commit.
    touched: std::collections::BTreeSet<(TopicRole, i32)>,
    ring: Option<seqmon_runtime::envelope::KeyRing>,
    /// Timestamp of the last source record pushed.
    last_timestamp_ms: Option<i64>,
    /// Sealed source records that did not open.
    pub unopenable: u64,
}

impl Replayer {
    /// `stages` in chain order; `partitions` of the source (and of every replay topic);
    /// `prefix` the production prefix.
    pub fn new(
        stages: Vec<Box<dyn Processor>>,
        source_role: TopicRole,
        source_topic: String,
        prefix: String,
        partitions: u32,
        ring: Option<seqmon_runtime::envelope::KeyRing>,
    ) -> Self {
        let stages = stages
            .into_iter()
            .map(|p| {
                let mut d = Driver::new(p);
                // The limits a Kafka stage has, so a record too large for Kafka is the same
                // dead letter it would be in production.
                seqmon_runtime::kafka::default_record_limits(&mut d);
                d.processor_mut().on_input_partitions(partitions as usize);
                d
            })
            .collect();
        Replayer {
            stages,
            source_role,
            source_topic,
            prefix,
            partitions,
            next_offset: HashMap::new(),
            touched: Default::default(),
            ring,
            last_timestamp_ms: None,
            unopenable: 0,
        }
    }

    /// Hands one source record to every stage reading the source; appends what to produce.
    pub fn push(&mut self, r: &SourceRecord, out: &mut Vec<Output>) -> Result<(), ReplayError> {
        self.last_timestamp_ms = r.timestamp_ms.or(self.last_timestamp_ms);
        let opened = match &self.ring {
            Some(ring) if self.source_role.spec().side == PrivacySide::Sensitive => {
                Some(ring.open(
                    self.source_role,
                    r.key.as_deref().unwrap_or_default(),
                    r.sealed_with.as_deref(),
                    &r.value,
                ))
            }
            _ => None,
        };
        if matches!(opened, Some(Err(_))) {
            self.unopenable += 1;
        }
        let value: &[u8] = match &opened {
            Some(Ok(plain)) => plain,
            _ => &r.value,
        };
        let topic = self.source_topic.clone();
        let env = Envelope {
            key: r.key.as_deref(),
            value,
            topic: &topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            arrival_time_ms: r.timestamp_ms.filter(|_| r.log_append_time),
        };
        let readers: Vec<usize> = (0..self.stages.len())
            .filter(|i| reads(&self.stages[*i], self.source_role))
            .collect();
        for index in readers {
            let mut emitted = Vec::new();
            let stage = self.stages[index].processor().stage();
            let handled = match &opened {
                Some(Err(e)) => self.stages[index].reject_unreadable(
                    &env,
                    DeadLetterReason::UNDECODABLE,
                    &e.to_string(),
                    &mut emitted,
                ),
                _ => self.stages[index].handle(&env, &mut emitted, |_| {}),
            };
            handled.map_err(|source| ReplayError::Stage { stage, source })?;
            self.route(index, emitted, r.timestamp_ms, out)?;
        }
        Ok(())
    }

    /// Input ended: flushes each stage in order, feeding what it releases downstream. What it
    /// releases is stamped with the last source record's timestamp (never the clock, so a
    /// flushed replay stays deterministic).
    pub fn finish(&mut self, out: &mut Vec<Output>) -> Result<(), ReplayError> {
        for index in 0..self.stages.len() {
            let stage = self.stages[index].processor().stage();
            let mut emitted = Vec::new();
            self.stages[index]
                .finish(&mut emitted)
                .map_err(|source| ReplayError::Stage { stage, source })?;
            self.route(index, emitted, self.last_timestamp_ms, out)?;
        }
        Ok(())
    }

    /// The transaction holding everything since the last call committed: one marker on every
    /// partition it wrote to takes an offset.
    pub fn committed(&mut self) {
        for (role, p) in std::mem::take(&mut self.touched) {
            *self.next_offset.entry((role, p)).or_insert(0) += 1;
        }
    }

    fn route(
        &mut self,
        index: usize,
        emitted: Vec<seqmon_runtime::Emitted>,
        timestamp_ms: Option<i64>,
        out: &mut Vec<Output>,
    ) -> Result<(), ReplayError> {
        for e in emitted {
            let partition = partition_for_key(e.key.as_bytes(), self.partitions) as i32;
            let offset = {
                let next = self.next_offset.entry((e.role, partition)).or_insert(0);
                *next += 1;
                *next - 1
            };
            self.touched.insert((e.role, partition));
            out.push(Output {
                role: e.role,
                partition,
                key: e.key.clone(),
                value: e.value.clone(),
                timestamp_ms,
            });
            // Later stages, or this one (a repartition topic); never an earlier one.
            for next in index..self.stages.len() {
                if !reads(&self.stages[next], e.role) {
                    continue;
                }
                let topic = e.role.topic(&self.prefix);
                let env = Envelope {
                    key: Some(e.key.as_bytes()),
                    value: &e.value,
                    topic: &topic,
                    partition,
                    offset,
                    timestamp_ms,
                    arrival_time_ms: None,
                };
                let stage = self.stages[next].processor().stage();
                let mut more = Vec::new();
                self.stages[next]
                    .handle(&env, &mut more, |_| {})
                    .map_err(|source| ReplayError::Stage { stage, source })?;
                self.route(next, more, timestamp_ms, out)?;
            }
        }
        Ok(())
    }
}

/// Whether a stage reads `role`, as its input or a side input.
fn reads(stage: &Driver, role: TopicRole) -> bool {
    let p = stage.processor();
    p.input_role() == role || p.side_input_roles().contains(&role)
}

/// Every role the stages write (outputs and dead letters).
fn output_roles(stages: &[Stage]) -> Result<Vec<TopicRole>, ReplayError> {
    let mut roles = Vec::new();
    for s in stages {
        let p = processor_shape(*s);
        for r in p
            .output_roles()
            .iter()
            .copied()
            .chain(std::iter::once(p.dead_letter_role()))
        {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
    }
    Ok(roles)
}

/// A stage's processor with default settings: its roles only (no key needed).
fn processor_shape(stage: Stage) -> Box<dyn Processor> {
    match stage {
        Stage::Validator | Stage::All => Box::new(seqmon_validator::Validator::default()),
        Stage::PrivacyEnforcer => Box::new(seqmon_privacy_enforcer::PrivacyEnforcer::default()),
        Stage::FeatureExtractor => Box::new(seqmon_feature_extractor::FeatureExtractor::default()),
        Stage::AnomalyDetector => Box::new(seqmon_anomaly_detector::AnomalyDetector::default()),
        Stage::CohortAnalyzer => Box::new(seqmon_cohort_analyzer::CohortAnalyzer::default()),
        Stage::Notifier => Box::new(seqmon_notifier::Notifier::default()),
    }
}

/// The event time of a record of `role` (window end for features and anomalies), if it decodes.
pub fn event_time(role: TopicRole, value: &[u8]) -> Option<i64> {
    match role {
        TopicRole::Raw | TopicRole::Validated => decode::<seqmon_model::Telemetry>(value)
            .ok()
            .map(|t| t.event_time_ms),
        TopicRole::Sanitized => decode::<seqmon_model::SanitizedTelemetry>(value)
            .ok()
            .map(|t| t.event_time_ms),
        TopicRole::Features => decode::<seqmon_model::Feature>(value)
            .ok()
            .map(|f| f.window_end_ms),
        TopicRole::Anomalies => decode::<seqmon_model::Anomaly>(value)
            .ok()
            .map(|a| a.window_end_ms),
        TopicRole::CohortSignals => decode::<seqmon_model::CohortSignal>(value)
            .ok()
            .map(|c| c.event_time_ms),
        _ => None,
    }
}

/// Partitions merged in the replay's fixed order (see the module header).
pub fn merge_in_order(
    mut by_partition: BTreeMap<i32, VecDeque<SourceRecord>>,
) -> Vec<SourceRecord> {
    let total = by_partition.values().map(VecDeque::len).sum();
    let mut merged = Vec::with_capacity(total);
    loop {
        let next = by_partition
            .iter()
            .filter_map(|(p, q)| q.front().map(|r| (r.timestamp_ms.unwrap_or(i64::MIN), *p)))
            .min();
        let Some((_, p)) = next else { break };
        if let Some(r) = by_partition.get_mut(&p).and_then(VecDeque::pop_front) {
            merged.push(r);
        }
    }
    merged
}

/// A time argument, in the forms every data-engineering command takes (`source.rs`).
fn parse_time(setting: &str, s: &str) -> Result<i64, ReplayError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    source::parse_time_arg(s, now).map_err(|e| config(setting, e))
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub source_records: u64,
    pub skipped_by_event_time: u64,
    /// Sealed records that did not open with the key ring (after the first, which must): not
    /// placed in an event-time range; on the Kafka basis, dead-lettered UNDECODABLE.
    pub unopenable: u64,
    pub transactions: u64,
    pub written: BTreeMap<String, u64>,
}

/// Runs `seqmon-admin replay`.
pub async fn run(args: ReplayArgs) -> ExitCode {
    match replay(args).await {
        Ok(summary) => {
            let written: Vec<String> = summary
                .written
                .iter()
                .map(|(t, n)| format!("{t}={n}"))
                .collect();
            eprintln!(
                "replay: {} source records ({} outside the event-time range, {} sealed records that did not open), {} transactions; written: {}",
                summary.source_records,
                summary.skipped_by_event_time,
                summary.unopenable,
                summary.transactions,
                if written.is_empty() {
                    "nothing".to_string()
                } else {
                    written.join(" ")
                }
            );
            if summary.unopenable > 0 {
                eprintln!(
                    "error: {} sealed source record(s) did not open with the key ring (--encryption-keys-dir): the replay is incomplete",
                    summary.unopenable
                );
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e @ ReplayError::Config { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn replay(args: ReplayArgs) -> Result<ReplaySummary, ReplayError> {
    let ReplayArgs {
        mut kafka,
        into,
        stage,
        downstream,
        partitions,
        from_offset,
        until_offset,
        from_time,
        until_time,
        time_basis,
        batch_records,
        flush_at_end,
        replication_factor,
        retention_hours,
    } = args;
    kafka
        .validate()
        .and_then(|()| kafka.load_files())
        .map_err(checked)?;
    check_prefix(&into, &kafka)?;
    if batch_records == 0 {
        return Err(config("--batch-records", "must be positive"));
    }
    if replication_factor != -1 && !(1..=10).contains(&replication_factor) {
        return Err(config(
            "--replication-factor / SEQMON_REPLICATION_FACTOR",
            "must be -1 (the broker's default) or 1..=10",
        ));
    }
    let retention_ms = match retention_hours {
        None => -1,
        Some(0) => return Err(config("--retention-hours", "must be positive")),
        Some(h) => i64::try_from(h)
            .ok()
            .and_then(|h| h.checked_mul(3_600_000))
            .ok_or_else(|| config("--retention-hours", "too large"))?,
    };
    if let (Some(f), Some(u)) = (from_offset, until_offset) {
        if f >= u {
            return Err(config(
                "--until-offset",
                format!("{u} is not after --from-offset {f}"),
            ));
        }
    }
    let from_time = from_time
        .map(|t| parse_time("--from-time", &t))
        .transpose()?;
    let until_time = until_time
        .map(|t| parse_time("--until-time", &t))
        .transpose()?;
    if let (Some(f), Some(u)) = (from_time, until_time) {
        if f >= u {
            return Err(config(
                "--until-time",
                "is not after --from-time (the end is exclusive)",
            ));
        }
    }
    let chain = selected(stage, downstream);
    let processors: Vec<Box<dyn Processor>> = chain
        .iter()
        .map(|s| processor(*s))
        .collect::<Result<_, _>>()?;
    let source_role = processors[0].input_role();
    if time_basis == TimeBasis::Event && (from_time.is_some() || until_time.is_some()) {
        // Checked up front: a role without an event time cannot be selected by one.
        if !matches!(
            source_role,
            TopicRole::Raw
                | TopicRole::Validated
                | TopicRole::Sanitized
                | TopicRole::Features
                | TopicRole::Anomalies
                | TopicRole::CohortSignals
        ) {
            return Err(config(
                "--time-basis",
                format!("{source_role} records have no event time"),
            ));
        }
    }
    seqmon_runtime::kafka::preflight(&kafka, kafka.connect_timeout()).map_err(|e| {
        config(
            "--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS",
            e.to_string(),
        )
    })?;
    let source_topic = kafka.topic(source_role);
    let source_partitions =
        seqmon_runtime::kafka::topic_partitions(&kafka, &source_topic, kafka.connect_timeout())
            .map_err(|e| ReplayError::Kafka(e.to_string()))?;
    let partition_count = source_partitions.len() as u32;
    let mut seen_partitions = std::collections::BTreeSet::new();
    for p in &partitions {
        if *p < 0 || *p as u32 >= partition_count {
            return Err(config(
                "--partition",
                format!("{source_topic} has no partition {p} (it has {partition_count})"),
            ));
        }
        if !seen_partitions.insert(*p) {
            return Err(config("--partition", format!("{p} is given twice")));
        }
    }
    let roles = output_roles(&chain)?;

    // Read the range.
    let event = time_basis == TimeBasis::Event;
    let range = TopicRange {
        topic: source_topic.clone(),
        partitions: (!partitions.is_empty()).then(|| partitions.clone()),
        from: match (from_offset, from_time) {
            (Some(o), _) => source::From::Offset(o),
            (None, Some(t)) if !event => source::From::Timestamp(t),
            _ => source::From::Beginning,
        },
        until: match (until_offset, until_time) {
            (Some(o), _) => source::Until::Offset(o),
            (None, Some(t)) if !event => source::Until::Timestamp(t),
            _ => source::Until::EndAtStart,
        },
        read_uncommitted: false,
        idle_timeout: Duration::from_secs(30),
    };
    let mut summary = ReplaySummary::default();
    let mut by_partition: BTreeMap<i32, VecDeque<SourceRecord>> = BTreeMap::new();
    let mut progress = Progress::new("reading");
    let ring = kafka.key_ring.clone();
    let sensitive = source_role.spec().side == PrivacySide::Sensitive;
    let mut first_sealed_checked = false;
    let mut refusal: Option<ReplayError> = None;
    source::read_range(&kafka, &range, |r| {
        let record = SourceRecord::from(r);
        // The first sealed record must open: without the key ring (or with the wrong one) every
        // record would be dead-lettered, or fall outside an event-time range.
        let opened = match (&ring, &record.sealed_with) {
            (_, None) => None,
            (None, Some(_)) => {
                refusal = Some(config(
                    "--encryption-keys-dir",
                    format!(
                        "{source_topic} holds sealed records: give the key ring that opens them"
                    ),
                ));
                return ControlFlow::Break(());
            }
            (Some(ring), Some(with)) => {
                let result = ring.open(
                    source_role,
                    record.key.as_deref().unwrap_or_default(),
                    Some(with),
                    &record.value,
                );
                if result.is_err() && !first_sealed_checked {
                    refusal = Some(config(
                        "--encryption-keys-dir",
                        format!(
                            "the first sealed record of {source_topic} (partition {}, offset {}) does not open with the key ring given",
                            record.partition, record.offset
                        ),
                    ));
                    return ControlFlow::Break(());
                }
                first_sealed_checked = true;
                Some(result)
            }
        };
        if event {
            let value = match &opened {
                Some(Ok(plain)) if sensitive => &plain[..],
                Some(Err(_)) if sensitive => {
                    // Its event time is unknown: a failure, not "outside the range".
                    summary.unopenable += 1;
                    return ControlFlow::Continue(());
                }
                _ => &record.value[..],
            };
            let inside = event_time(source_role, value).is_some_and(|t| {
                from_time.is_none_or(|f| t >= f) && until_time.is_none_or(|u| t < u)
            });
            if !inside {
                summary.skipped_by_event_time += 1;
                return ControlFlow::Continue(());
            }
        }
        by_partition
            .entry(record.partition)
            .or_default()
            .push_back(record);
        summary.source_records += 1;
        progress.tick(summary.source_records, None);
        ControlFlow::Continue(())
    })?;
    progress.done();
    if let Some(e) = refusal {
        return Err(e);
    }
    let records = merge_in_order(by_partition);

    // The replay topics: created with the source's partition count, and empty.
    let retention = ("retention.ms", retention_ms.to_string());
    let mut specs: Vec<(String, Vec<(&'static str, String)>)> = roles
        .iter()
        .map(|r| {
            let mut cfg: Vec<(&'static str, String)> = topic_config(r.spec())
                .into_iter()
                .filter(|(k, _)| *k != "retention.ms")
                .collect();
            cfg.push(retention.clone());
            (r.topic(&into), cfg)
        })
        .collect();
    specs.push((manifest_topic(&into), vec![retention.clone()]));
    prepare_topics(&kafka, &specs, partition_count, replication_factor).await?;

    // Process and produce.
    let transactional_id = transactional_id(&into);
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .producer_config()
        .set("transactional.id", &transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|e| ReplayError::Kafka(format!("cannot create the producer: {e}")))?;
    let timeout = kafka.connect_timeout().max(Duration::from_secs(30));
    producer.init_transactions(timeout).map_err(|e| {
        ReplayError::Kafka(format!(
            "the transactional id {transactional_id} was refused: {e}"
        ))
    })?;
    let mut replayer = Replayer::new(
        processors,
        source_role,
        source_topic,
        kafka.topic_prefix.clone(),
        partition_count,
        ring.clone(),
    );
    let topics: HashMap<TopicRole, String> = roles.iter().map(|r| (*r, r.topic(&into))).collect();
    let mut progress = Progress::new("replaying");
    let total = records.len() as u64;
    let mut out = Vec::new();
    let mut done = 0u64;
    let chunks: Vec<&[SourceRecord]> = records.chunks(batch_records).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        for r in *chunk {
            replayer.push(r, &mut out)?;
        }
        if flush_at_end && i == last {
            replayer.finish(&mut out)?;
        }
        done += chunk.len() as u64;
        transact(
            &producer,
            &topics,
            ring.as_ref(),
            &out,
            timeout,
            &mut summary,
        )?;
        replayer.committed();
        out.clear();
        progress.tick(done, Some(total));
    }
    if chunks.is_empty() && flush_at_end {
        replayer.finish(&mut out)?;
        transact(
            &producer,
            &topics,
            ring.as_ref(),
            &out,
            timeout,
            &mut summary,
        )?;
    }
    progress.done();
    summary.unopenable += replayer.unopenable;

    // The completion marker, last: `alert diff` warns about a replay without one (killed).
    let manifest = serde_json::json!({
        "completed_at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "tool_version": env!("CARGO_PKG_VERSION"),
        "into": into,
        "stage": format!("{stage:?}"),
        "downstream": downstream,
        "source_topic": range.topic,
        "partitions": partitions,
        "from_offset": from_offset,
        "until_offset": until_offset,
        "from_time_ms": from_time,
        "until_time_ms": until_time,
        "time_basis": format!("{time_basis:?}"),
        "batch_records": batch_records,
        "flush_at_end": flush_at_end,
        "source_records": summary.source_records,
        "skipped_by_event_time": summary.skipped_by_event_time,
        "unopenable": summary.unopenable,
        "transactions": summary.transactions,
        "written": summary.written,
    })
    .to_string();
    let manifest_name = manifest_topic(&into);
    producer
        .begin_transaction()
        .map_err(|e| ReplayError::Kafka(format!("begin transaction: {e}")))?;
    let written = seqmon_runtime::kafka::send(
        &producer,
        BaseRecord::to(&manifest_name)
            .key(transactional_id.as_bytes())
            .payload(manifest.as_bytes())
            .partition(0),
    )
    .and_then(|()| seqmon_runtime::kafka::wait_delivered(&producer, timeout))
    .and_then(|()| producer.commit_transaction(timeout));
    if let Err(e) = written {
        let _ = producer.abort_transaction(timeout);
        return Err(ReplayError::Kafka(format!(
            "the completion marker on {manifest_name}: {e} (the replay's records are written; alert diff will call it incomplete)"
        )));
    }
    Ok(summary)
}

/// Produces `out` in one transaction; aborts it on any failure.
fn transact(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topics: &HashMap<TopicRole, String>,
    ring: Option<&seqmon_runtime::envelope::KeyRing>,
    out: &[Output],
    timeout: Duration,
    summary: &mut ReplaySummary,
) -> Result<(), ReplayError> {
    if out.is_empty() {
        return Ok(());
    }
    let fail = |what: &str, e: rdkafka::error::KafkaError| {
        let _ = producer.abort_transaction(timeout);
        ReplayError::Kafka(format!("{what}: {e} (the open transaction was aborted)"))
    };
    producer
        .begin_transaction()
        .map_err(|e| ReplayError::Kafka(format!("begin transaction: {e}")))?;
    for o in out {
        let Some(topic) = topics.get(&o.role) else {
            let _ = producer.abort_transaction(timeout);
            return Err(ReplayError::Kafka(format!(
                "a stage wrote to {}, which it does not declare (the open transaction was aborted)",
                o.role
            )));
        };
        let (value, headers) =
            seqmon_runtime::kafka::outgoing(ring, o.role, o.key.as_bytes(), &o.value);
        let mut record = BaseRecord::to(topic)
            .key(o.key.as_bytes())
            .payload(value.as_ref())
            .partition(o.partition);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(ts) = o.timestamp_ms {
            record = record.timestamp(ts);
        }
        seqmon_runtime::kafka::send(producer, record).map_err(|e| fail("produce", e))?;
        *summary.written.entry(topic.clone()).or_default() += 1;
    }
    seqmon_runtime::kafka::wait_delivered(producer, timeout).map_err(|e| fail("deliver", e))?;
    producer
        .commit_transaction(timeout)
        .map_err(|e| fail("commit", e))?;
    summary.transactions += 1;
    Ok(())
}

/// Whether Kafka sees two topic names as colliding ('.' and '_' are the same in metric names).
pub fn colliding(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'.', b'_') | (b'_', b'.')))
}

/// The completion marker's topic: one record, written after the last transaction.
pub fn manifest_topic(into: &str) -> String {
    format!("{into}manifest")
}

/// Creates the replay topics (the source's partition count) and checks they are empty.
async fn prepare_topics(
    kafka: &KafkaConnection,
    specs: &[(String, Vec<(&'static str, String)>)],
    partitions: u32,
    replication_factor: i32,
) -> Result<(), ReplayError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config()
        .create()
        .map_err(|e| ReplayError::Kafka(format!("cannot create an admin client: {e}")))?;
    let names: Vec<String> = specs.iter().map(|(n, _)| n.clone()).collect();
    let timeout = kafka.connect_timeout().max(Duration::from_secs(10));
    let consumer: BaseConsumer = kafka
        .client_config()
        .create()
        .map_err(|e| ReplayError::Kafka(format!("cannot create a consumer: {e}")))?;
    // Kafka refuses a topic whose name differs from an existing one only by '.' versus '_'.
    let existing = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| ReplayError::Kafka(format!("listing the topics: {e}")))?;
    for name in &names {
        if let Some(other) = existing
            .topics()
            .iter()
            .map(|t| t.name())
            .find(|t| *t != name && colliding(t, name))
        {
            return Err(config(
                "--into",
                format!("{name} collides with the existing topic {other} (Kafka treats '.' and '_' alike): choose another name"),
            ));
        }
    }
    let new_topics: Vec<NewTopic> = specs
        .iter()
        .map(|(name, cfg)| {
            let mut t = NewTopic::new(
                name,
                partitions as i32,
                TopicReplication::Fixed(replication_factor),
            );
            for (k, v) in cfg {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &opts)
        .await
        .map_err(|e| ReplayError::Kafka(format!("creating the replay topics: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, RDKafkaErrorCode::InvalidTopic)) => {
                return Err(config(
                    "--into",
                    format!("Kafka refuses {name} as a topic name (or it collides with another)"),
                ))
            }
            Err((name, code)) => {
                return Err(ReplayError::Kafka(format!("cannot create {name}: {code}")))
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in &names {
        // A topic just created may take a moment to show all its partitions.
        let count = loop {
            let md = consumer
                .fetch_metadata(Some(name), timeout)
                .map_err(|e| ReplayError::Kafka(format!("metadata of {name}: {e}")))?;
            let count = md
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len())
                .sum::<usize>();
            if count == partitions as usize || Instant::now() > deadline {
                break count;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if count != partitions as usize {
            return Err(config(
                "--into",
                format!(
                    "{name} has {count} partitions, the source {partitions}: choose a new name"
                ),
            ));
        }
        for p in 0..partitions as i32 {
            // A partition just created has no leader for a moment: asked again until the
            // deadline.
            let high = loop {
                match consumer.fetch_watermarks(name, p, timeout) {
                    Ok((_, high)) => break high,
                    Err(e) if Instant::now() > deadline => {
                        return Err(ReplayError::Kafka(format!("offsets of {name}: {e}")))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            if high > 0 {
                return Err(config(
                    "--into",
                    format!("{name} already holds records: a replay writes to empty topics only (choose a new name, or delete replay topics first)"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(prefix: &str) -> KafkaConnection {
        use clap::Parser;
        #[derive(Parser)]
        struct K {
            #[command(flatten)]
            k: KafkaConnection,
        }
        let mut k = K::parse_from(["k"]).k;
        k.topic_prefix = prefix.into();
        k
    }

    #[test]
    fn a_prefix_must_be_a_replay_prefix_apart_from_production() {
        let k = kafka("");
        assert!(check_prefix("replay.x.", &k).is_ok());
        for bad in [
            "x.",
            "replay.",
            "replay.x",
            "replay..",
            "replay.x..",
            "replay.x..y.",
            "replay.a b.",
            "prod.replay.x.",
        ] {
            let e = check_prefix(bad, &k).unwrap_err().to_string();
            assert!(e.contains("--into"), "{bad}: {e}");
        }
        // A deployment whose own prefix is replay.x. cannot be replayed into replay.x.
        let e = check_prefix("replay.x.", &kafka("replay.x."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("production topic"), "{e}");
    }

    #[test]
    fn transactional_ids_and_colliding_names() {
        assert_eq!(transactional_id("replay.x."), "replay.x");
        assert!(colliding("replay.x.x.alerts", "replay.x_x.alerts"));
        assert!(!colliding("replay.x.alerts", "replay.y.alerts"));
        assert!(!colliding("replay.x.alerts", "replay.x.alerts2"));
        assert_eq!(manifest_topic("replay.x."), "replay.x.manifest");
    }

    #[test]
    fn the_merge_order_is_fixed_by_timestamp_then_partition() {
        let rec = |p: i32, o: i64, t: i64| SourceRecord {
            partition: p,
            offset: o,
            key: None,
            value: vec![],
            timestamp_ms: Some(t),
            log_append_time: false,
            sealed_with: None,
        };
        let mut m = BTreeMap::new();
        m.insert(
            0,
            VecDeque::from([rec(0, 0, 5), rec(0, 1, 1), rec(0, 2, 9)]),
        );
        m.insert(1, VecDeque::from([rec(1, 0, 5), rec(1, 1, 6)]));
        let order: Vec<(i32, i64)> = merge_in_order(m)
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        // Partition order is kept (0@1 after 0@0 though earlier in time); ties go to partition 0.
        assert_eq!(order, [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]);
    }

    #[test]
    fn stages_are_selected_in_chain_order() {
        assert_eq!(selected(Stage::All, false).len(), 6);
        assert_eq!(
            selected(Stage::AnomalyDetector, true),
            [
                Stage::AnomalyDetector,
                Stage::CohortAnalyzer,
                Stage::Notifier
            ]
        );
        assert_eq!(selected(Stage::Validator, false), [Stage::Validator]);
    }
}
