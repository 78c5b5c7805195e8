//! Kafka mode: runs a processor as an exactly-once Kafka→Kafka service.
//!
//! Guarantees. Input is consumed `read_committed` without auto-commit. Each batch (at most
//! `--batch-max-records` records or `--batch-max-wait-ms`; closed as soon as the fetched records
//! are taken, but no sooner than `--batch-linger-ms` after the previous transaction began) is
//! processed, then its outputs, dead letters, changed state
//! (to the stage's compacted changelog, same partition as the input) and the input offsets are
//! committed in one Kafka transaction by an idempotent transactional producer. A reader using
//! `read_committed` therefore sees every input's effects exactly once, and the state on the
//! changelog always matches the committed offsets.
//!
//! Pipelining. A transaction's commit (waiting for its deliveries, sending the offsets, ending
//! it) runs on a thread of its own while the loop collects and processes the next batch in
//! memory and encodes its changed state; that batch is written only after the commit returned,
//! in the next transaction, so one transaction is open at a time and the broker sees the same
//! sequence as without the overlap.
//! If the commit failed, the batch processed meanwhile is dropped with the state (restored from
//! the changelog) and fetched again. A revocation waits for the commit in flight, so offsets are
//! committed by the generation that fetched them, and state is never restored while a commit
//! is in flight.
//!
//! On failure. A transaction error that requires an abort aborts it, drops the in-memory state,
//! restores it from the changelog and rewinds the consumer to the committed offsets, so the batch
//! is redone from a consistent point. Retriable commit errors are retried with backoff; fatal
//! errors (fenced by a newer instance, broker refusing the transactional id) stop the service
//! with an error so the orchestrator restarts it. On rebalance, records fetched for the old
//! assignment are discarded before processing and state is rebuilt for the new assignment from
//! the changelog, so no output is written for partitions this instance no longer owns (the
//! broker also refuses offsets of a stale group generation, which aborts the transaction).
//! SIGTERM finishes the batch in hand, commits it, and leaves the group cleanly. A state snapshot
//! that cannot be serialized aborts the transaction (the changelog keeps the key's previous
//! state) and stops the service; a changelog record of another state format version stops the
//! restore rather than be misread. An output record larger than the producer may send
//! (`message.max.bytes` less framing) is replaced, before the transaction, by a TOO_LARGE dead
//! letter of the input that caused it, so the batch goes on instead of aborting forever.
//!
//! Side inputs. A stage may read more topics beside its input (the notifier reads the service
//! team's commands and the features): they must have the input's partition count (checked at
//! start-up, which fails naming the topic otherwise), the consumer uses range assignment so the
//! owner of input partition p owns partition p of each, and their offsets commit in the same
//! transaction as everything else, so a side input is exactly-once too.
//!
//! Timestamps. Every output record carries the Kafka timestamp of the input record that caused it,
//! so a result's timestamp is its instrument's send time, however many stages it passed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_model::{decode, encode, DeadLetter, DeadLetterReason, StateSnapshot};
use seqmon_processor::StageError;

use crate::config::{RunnerConfig, JAVA_COMPATIBLE_PARTITIONER};
use crate::driver::{Driver, OutputLimit, StateWrite};
use crate::envelope::{self, KeyRing};
use crate::error::RuntimeError;
use crate::events::{
    ConsumerError, ConsumerErrorLog, LogLimiter, RebalanceKind, Rebalanced, StateQuarantined,
    StateRestoreFailed, StateRestored, TransactionAborted, TransactionCommitted,
};
use crate::metrics::StageMetrics;
use crate::processor::{Emitted, Envelope};

/// Rebalance events seen by the consumer, handled by the loop between polls.
#[derive(Default)]
struct RebalanceLog {
    generation: AtomicU64,
    assigned: Mutex<Option<Vec<i32>>>,
    /// The commit in flight, which a revocation waits for.
    commit: CommitGate,
}

/// Whether a transaction's commit is in flight on its commit thread. A revocation waits until
/// it is not (`pre_rebalance`), so a batch's offsets are committed under the generation that
/// fetched it, before its partitions can move to another member, as when the commit ran on the
/// loop's own thread.
#[derive(Default)]
struct CommitGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl CommitGate {
    fn enter(&self) {
        *self.busy.lock().expect("lock") = true;
    }

    fn leave(&self) {
        *self.busy.lock().expect("lock") = false;
        self.idle.notify_all();
    }

    fn wait_idle(&self) {
        let mut busy = self.busy.lock().expect("lock");
        while *busy {
            busy = self.idle.wait(busy).expect("lock");
        }
    }
}

/// Marks the gate idle when the commit thread ends, however it ends.
struct LeaveOnDrop(Arc<RebalanceLog>);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        self.0.commit.leave();
    }
}

struct StageConsumerContext {
    log: Arc<RebalanceLog>,
    input_topic: String,
    /// Every input (side inputs too), for the lag of each.
    inputs: Vec<String>,
    /// Input partitions owned since the last assignment; `None` until the group is joined and
    /// after a revocation.
    owned: Mutex<Option<Vec<i32>>>,
    /// --ready-max-lag-records.
    ready_max_lag: i64,
    metrics: StageMetrics,
}

impl ClientContext for StageConsumerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        client_log("consumer", level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        client_error("consumer", &error, reason);
    }

    /// Every [`STATISTICS_INTERVAL_MS`], on the loop's thread (it polls): the lag of each owned
    /// input partition, and readiness from it.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let owned = self.owned.lock().expect("lock").clone();
        let Some(owned) = owned else {
            self.metrics.ready.set(0);
            return;
        };
        let mut total = 0i64;
        let mut known = true;
        for topic in &self.inputs {
            let partitions = statistics.topics.get(topic).map(|t| &t.partitions);
            for p in &owned {
                match partitions.and_then(|ps| ps.get(p)).and_then(partition_lag) {
                    Some(lag) => {
                        total += lag;
                        self.metrics
                            .consumer_lag
                            .with_label_values(&[topic.as_str(), &p.to_string()])
                            .set(lag);
                    }
                    None => {
                        known = false;
                        let _ = self
                            .metrics
                            .consumer_lag
                            .remove_label_values(&[topic.as_str(), &p.to_string()]);
                    }
                }
            }
        }
        let ready = known
            && self.metrics.restoring.get() == 0
            && self.metrics.restore_failing.get() == 0
            && total <= self.ready_max_lag;
        self.metrics.ready.set(i64::from(ready));
    }
}

/// How often librdkafka reports statistics (consumer lag, readiness).
const STATISTICS_INTERVAL_MS: u32 = 5_000;
/// Longest consumer poll while a commit is in flight (see `collect_batch`).
const PENDING_COMMIT_POLL: Duration = Duration::from_millis(5);

/// Records between what the stage has taken from a partition and its last stable offset (the
/// end a read_committed consumer can reach), or `None` before both are known.
fn partition_lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    // The application's position moves with the records it takes; transaction markers and
    // aborted records never reach it, so alone it would stay behind a transactional input's end
    // for good. With nothing fetched and waiting, librdkafka's fetch position (past markers and
    // aborted records) is where the application stands.
    let position = if p.fetchq_cnt == 0 {
        p.app_offset.max(p.next_offset)
    } else if p.app_offset >= 0 {
        p.app_offset
    } else {
        p.next_offset
    };
    (p.ls_offset >= 0 && position >= 0).then(|| (p.ls_offset - position).max(0))
}

impl StageConsumerContext {
    /// Emits the rebalance and hands the loop its new assignment (empty after a revocation).
    fn rebalanced(&self, kind: RebalanceKind, tpl: &TopicPartitionList, assigned: bool) {
        let parts = partitions_of(tpl, &self.input_topic);
        Rebalanced {
            kind,
            partitions: &parts,
            error: None,
        }
        .emit(&self.metrics);
        self.log.generation.fetch_add(1, Ordering::SeqCst);
        // Lag series of partitions no longer owned would linger at their last value.
        self.metrics.consumer_lag.reset();
        self.metrics.ready.set(0);
        *self.owned.lock().expect("lock") = assigned.then(|| parts.clone());
        *self.log.assigned.lock().expect("lock") = Some(if assigned { parts } else { Vec::new() });
    }
}

impl ConsumerContext for StageConsumerContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // The partitions stay ours until this returns: the transaction committing their
            // offsets finishes first (its outcome is taken by the loop after the poll).
            self.log.commit.wait_idle();
            self.rebalanced(RebalanceKind::Revoked, tpl, false);
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.rebalanced(RebalanceKind::Assigned, tpl, true),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => Rebalanced {
                kind: RebalanceKind::Failed,
                partitions: &[],
                error: Some(e),
            }
            .emit(&self.metrics),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// The client's own log lines and errors, one line per condition per interval (see
/// [`LogLimiter`]): librdkafka reports every failed reconnect, so a broker outage would
/// otherwise write a line per client and attempt.
fn client_log(client: &str, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    // Per client and facility: one client's failures do not hide another's (its TLS or SASL
    // reason, say).
    let Some(occurrences) = LogLimiter::global().admit(&format!("{client}/{fac}")) else {
        return;
    };
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(client, fac, occurrences, "librdkafka: {message}")
        }
        L::Warning => tracing::warn!(client, fac, occurrences, "librdkafka: {message}"),
        L::Notice | L::Info => tracing::info!(client, fac, occurrences, "librdkafka: {message}"),
        L::Debug => tracing::debug!(client, fac, occurrences, "librdkafka: {message}"),
    }
}

/// A client error, one line per error code per interval (see [`LogLimiter`]).
fn client_error(client: &str, error: &KafkaError, reason: &str) {
    let condition = format!("{client} error {:?}", error.rdkafka_error_code());
    if let Some(occurrences) = LogLimiter::global().admit(&condition) {
        tracing::warn!(client, error = %error, reason, occurrences, "kafka client error");
    }
}

/// Context of the stage's transactional producer: log lines and errors rate-limited.
pub struct QuietClientContext;

impl ClientContext for QuietClientContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        client_log("producer", level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        client_error("producer", &error, reason);
    }
}

impl rdkafka::producer::ProducerContext for QuietClientContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Context of the changelog restore consumer: reaching the end of a partition is how restore
/// knows it is done, not an error worth a log line.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        client_log("restore", level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            client_error("restore", &error, reason);
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// An input record copied out of the consumer.
struct Owned {
    /// Which input (index in `Topics::inputs`).
    input: usize,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    /// The broker's receive time, on a topic with LogAppendTime.
    arrival_time_ms: Option<i64>,
    /// The envelope header, when the record is sealed (see [`crate::envelope`]).
    sealed_with: Option<Vec<u8>>,
}

/// The value of the envelope header of a consumed record, if any.
fn envelope_header<M: Message>(m: &M) -> Option<Vec<u8>> {
    m.headers()?
        .iter()
        .find(|h| h.key == envelope::HEADER)
        .and_then(|h| h.value.map(<[u8]>::to_vec))
}

/// The value to produce to `role` and its headers: sealed when the topic is on the sensitive
/// side and the deployment has a key ring, else as it is.
pub fn outgoing<'v>(
    ring: Option<&KeyRing>,
    role: TopicRole,
    key: &[u8],
    value: &'v [u8],
) -> (std::borrow::Cow<'v, [u8]>, Option<OwnedHeaders>) {
    match ring {
        Some(ring) if role.spec().side == PrivacySide::Sensitive => {
            let (sealed, header) = ring.seal(role, key, value);
            let headers = OwnedHeaders::new().insert(Header {
                key: envelope::HEADER,
                value: Some(header.as_bytes()),
            });
            (std::borrow::Cow::Owned(sealed), Some(headers))
        }
        _ => (std::borrow::Cow::Borrowed(value), None),
    }
}

/// The topics a stage reads and writes, resolved once under the deployment prefix.
struct Topics {
    /// The main input topic.
    input: String,
    /// Every input topic with its role: the main one first, then the side inputs.
    inputs: Vec<(TopicRole, String)>,
    outputs: HashMap<TopicRole, String>,
    /// Outputs written in the Confluent framing: our schema version → registry id.
    confluent: HashMap<TopicRole, HashMap<u32, u32>>,
    changelog: Option<String>,
}

impl Topics {
    fn of(driver: &Driver, cfg: &RunnerConfig) -> Self {
        let p = driver.processor();
        Topics {
            input: cfg.kafka.topic(p.input_role()),
            inputs: std::iter::once(p.input_role())
                .chain(p.side_input_roles().iter().copied())
                .map(|r| (r, cfg.kafka.topic(r)))
                .collect(),
            outputs: p
                .output_roles()
                .iter()
                .copied()
                .chain(std::iter::once(p.dead_letter_role()))
                .map(|r| (r, cfg.kafka.topic(r)))
                .collect(),
            changelog: p.changelog_role().map(|r| cfg.kafka.topic(r)),
            confluent: HashMap::new(),
        }
    }

    /// The index in `inputs` of a topic this stage reads.
    fn input_index(&self, topic: &str) -> Option<usize> {
        self.inputs.iter().position(|(_, t)| t == topic)
    }

    fn output(&self, role: TopicRole) -> Result<&str, TxnFailure> {
        self.outputs.get(&role).map(String::as_str).ok_or_else(|| {
            TxnFailure::Fatal(RuntimeError::Internal(format!(
                "stage emitted to undeclared output {role}"
            )))
        })
    }
}

/// What one batch produced, before anything is sent.
struct BatchOutput {
    /// Output records with the Kafka timestamp of the input that caused each.
    records: Vec<(Emitted, Option<i64>)>,
    /// Keys whose state changed, with the input partition they belong to.
    changed: BTreeMap<String, i32>,
    /// Next offset to consume per input (index in `Topics::inputs`) and partition.
    next_offsets: BTreeMap<(usize, i32), i64>,
}

/// A transaction's figures for the events emitted when its outcome is known.
struct TxnStats {
    records: usize,
    started: Instant,
    input_timestamps_ms: Vec<i64>,
}

/// A transaction whose records are produced and whose commit (wait for the deliveries, send
/// the offsets, commit) runs on its own thread while the loop collects and processes the next
/// batch.
struct PendingCommit {
    commit: std::thread::JoinHandle<Result<Committed, TxnFailure>>,
    outputs: usize,
    stats: TxnStats,
}

/// When a commit returned, by the monotonic clock (transaction time) and the wall clock
/// (event-to-commit latency).
struct Committed {
    at: Instant,
    wall: std::time::SystemTime,
}

/// The outcome of the transaction in flight, as the loop takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Committed, or none was in flight: the next batch may be written.
    Clean,
    /// Aborted: state was restored and the input rewound, so a batch processed meanwhile is
    /// dropped and fetched again.
    Redone,
}

/// A running Kafka stage: the processor, its clients and its assignment.
struct StageLoop<'a> {
    driver: Driver,
    cfg: &'a RunnerConfig,
    topics: Topics,
    producer: Arc<ThreadedProducer<QuietClientContext>>,
    consumer: BaseConsumer<StageConsumerContext>,
    rebalances: Arc<RebalanceLog>,
    assigned: Vec<i32>,
    /// Snapshots refused at the last restore, written out by the next transaction.
    quarantined: Vec<Quarantined>,
    /// Transactions aborted since the last commit.
    consecutive_aborts: u32,
    /// Set while the assigned partitions' state could not be restored: when to try again.
    restore_retry: Option<RestoreRetry>,
    consumer_errors: ConsumerErrorLog,
    last_txn: Instant,
    /// The transaction committing on its thread, if any.
    pending: Option<PendingCommit>,
}

/// Runs `driver` until `shutdown` is set or a fatal error occurs.
pub fn run_kafka(
    driver: Driver,
    cfg: &RunnerConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let mut stage = StageLoop::start(driver, cfg, &shutdown)?;
    let mut batch: Vec<Owned> = Vec::with_capacity(cfg.batch_max_records);
    while !shutdown.load(Ordering::SeqCst) {
        stage.driver.metrics.beat();
        let step = stage.collect_batch(&mut batch, &shutdown).and_then(|()| {
            if batch.is_empty() {
                stage.settle().map(drop)
            } else {
                stage.process_and_produce(&batch)
            }
        });
        if let Err(e) = step {
            if stage.consumer.client().fatal_error().is_none() {
                return Err(e);
            }
            // The consumer is dead for good (a static member fenced after a broker restart,
            // a known librdkafka behaviour): start the clients afresh in this process, as a
            // restart would, keeping the processor and its metrics. The new producer fences
            // the old one's transaction; state is restored for the new assignment.
            tracing::warn!(error = %e, "consumer fenced: starting the stage's clients afresh");
            let mut driver = stage.into_driver();
            driver.processor_mut().clear_state();
            stage = StageLoop::start(driver, cfg, &shutdown)?;
            batch.clear();
        }
    }
    stage.settle()?;
    stage.leave_group();
    Ok(())
}

impl<'a> StageLoop<'a> {
    /// Creates the transactional producer (fencing any predecessor with the same transactional
    /// id) and the consumer, and subscribes to the input topic.
    fn start(
        driver: Driver,
        cfg: &'a RunnerConfig,
        shutdown: &AtomicBool,
    ) -> Result<Self, RuntimeError> {
        let stage = driver.processor().stage();
        let mut topics = Topics::of(&driver, cfg);
        topics.confluent = cfg
            .confluent_ids()?
            .into_iter()
            .filter(|(role, _)| topics.outputs.contains_key(role))
            .collect();
        for role in topics.confluent.keys() {
            tracing::info!(stage, topic = %topics.outputs[role], "writing the Confluent framing");
        }
        let group_id = cfg.group_id(stage);
        let metrics = driver.metrics.clone();
        let beat = move || metrics.beat();
        let transactional_id = cfg
            .transactional_id
            .clone()
            .unwrap_or_else(|| default_transactional_id(&cfg.kafka.topic_prefix, stage));
        let producer: Arc<ThreadedProducer<QuietClientContext>> = cfg
            .kafka
            .producer_config()
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                cfg.transaction_timeout_ms.to_string(),
            )
            // A batch's outputs are produced together and then waited for, so lingering only
            // adds latency; records still batch while a request is in flight.
            .set("linger.ms", "0")
            .set("queue.buffering.max.messages", "200000")
            .create_with_context(QuietClientContext)
            .map(Arc::new)
            .map_err(RuntimeError::kafka("create producer"))?;
        // Fences any earlier instance with this transactional id and aborts its open
        // transaction, so the changelog's last stable offset is final before we restore from it.
        let timeout = cfg.request_timeout();
        retry("init_transactions", shutdown, &beat, || {
            producer.init_transactions(timeout)
        })?;

        let rebalances = Arc::new(RebalanceLog::default());
        let mut consumer_config = cfg.kafka.client_config();
        if cfg.static_membership {
            // Stable per instance (the chart: prefix, stage, namespace, pod), like the
            // transactional id, so the two fence a predecessor together.
            consumer_config.set("group.instance.id", &transactional_id);
        }
        let consumer: BaseConsumer<StageConsumerContext> = consumer_config
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                cfg.heartbeat_interval_ms.to_string(),
            )
            .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
            // Range assignment gives partition p of every co-partitioned input to one member.
            .set("partition.assignment.strategy", "range")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
            .create_with_context(StageConsumerContext {
                log: rebalances.clone(),
                input_topic: topics.input.clone(),
                inputs: topics.inputs.iter().map(|(_, t)| t.clone()).collect(),
                owned: Mutex::new(None),
                ready_max_lag: cfg.ready_max_lag_records,
                metrics: driver.metrics.clone(),
            })
            .map_err(RuntimeError::kafka("create consumer"))?;
        let names: Vec<&str> = topics.inputs.iter().map(|(_, t)| t.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(RuntimeError::kafka("subscribe"))?;
        let mut driver = driver;
        // Partitions of a topic, from the brokers' metadata (0 for a topic they do not have).
        let partition_count = |name: &str, operation: &'static str| {
            let mut count = 0;
            retry(operation, shutdown, &beat, || {
                let md = consumer.fetch_metadata(Some(name), timeout)?;
                count = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == name && t.error().is_none())
                    .map(|t| t.partitions().len())
                    .sum();
                Ok(())
            })
            .map(|()| count)
        };
        let counts = names
            .iter()
            .map(|name| partition_count(name, "fetch input metadata"))
            .collect::<Result<Vec<_>, _>>()?;
        let input_partitions = counts[0];
        // Side inputs are co-partitioned with the input: partition p of each goes to the owner
        // of input partition p (the range assignor, set above, does so for equal counts).
        if let Some(i) = counts.iter().position(|c| *c != input_partitions) {
            return Err(RuntimeError::Config {
                setting: format!("topic {} (--topic-prefix)", names[i]),
                message: format!(
                    "has {} partitions but {} has {}: a stage's inputs must be co-partitioned \
                     (seqmon-admin create-topics --partitions N creates them alike)",
                    counts[i], names[0], input_partitions
                ),
            });
        }
        for role in driver.processor().partition_addressed_outputs() {
            let name = topics.output(*role).map_err(|_| RuntimeError::Config {
                setting: format!("output {role}"),
                message: "is addressed by partition but is not an output of the stage".into(),
            })?;
            let count = partition_count(name, "fetch output metadata")?;
            if count != input_partitions {
                return Err(RuntimeError::Config {
                    setting: format!("topic {name} (--topic-prefix)"),
                    message: format!(
                        "has {count} partitions but {} has {input_partitions}: the stage \
                         addresses each partition of {name} by key and needs them alike \
                         (seqmon-admin create-topics --partitions N creates them alike)",
                        names[0]
                    ),
                });
            }
            let partitioner = cfg
                .kafka
                .producer_config()
                .get("partitioner")
                .map(str::to_string);
            if partitioner.as_deref() != Some(JAVA_COMPATIBLE_PARTITIONER) {
                return Err(RuntimeError::Config {
                    setting: "--kafka-option partitioner / --properties-file".into(),
                    message: format!(
                        "is {partitioner:?}: this stage addresses partitions of {name} by \
                         murmur2 keys and needs the {JAVA_COMPATIBLE_PARTITIONER} partitioner"
                    ),
                });
            }
        }
        driver.set_input_limit(cfg.max_input_record_bytes);
        driver.set_output_limit(OutputLimit {
            max_record_bytes: record_limit(&cfg.kafka.producer_config()),
            sealing_overhead: cfg
                .kafka
                .key_ring
                .as_ref()
                .map_or(0, KeyRing::sealing_overhead),
        });
        driver.processor_mut().on_input_partitions(input_partitions);
        tracing::info!(stage, input_partitions, input_topic = %topics.input, %group_id, %transactional_id, "exactly-once loop started");
        Ok(StageLoop {
            driver,
            cfg,
            topics,
            producer,
            consumer,
            rebalances,
            assigned: Vec::new(),
            quarantined: Vec::new(),
            consecutive_aborts: 0,
            restore_retry: None,
            consumer_errors: ConsumerErrorLog::default(),
            last_txn: Instant::now(),
            pending: None,
        })
    }

    /// Restores state for the current assignment (see [`restore_or_wait`]). Never while a
    /// commit is in flight: the changelog would not hold its state yet.
    fn restore(&mut self) {
        debug_assert!(self.pending.is_none(), "restore with a commit in flight");
        restore_or_wait(
            &mut self.driver,
            &mut self.quarantined,
            &mut self.restore_retry,
            &Inputs {
                consumer: &self.consumer,
                topics: &self.topics,
                assigned: &self.assigned,
                cfg: self.cfg,
            },
        );
    }

    /// Fills `batch` with what is fetched for the current assignment: at most
    /// --batch-max-records, within --batch-max-wait-ms, closed as soon as the fetched records are
    /// taken but no sooner than --batch-linger-ms after the previous transaction began. A
    /// rebalance during collection discards what was collected before it and restores state for
    /// the new assignment.
    fn collect_batch(
        &mut self,
        batch: &mut Vec<Owned>,
        shutdown: &AtomicBool,
    ) -> Result<(), RuntimeError> {
        batch.clear();
        let max_wait = Duration::from_millis(self.cfg.batch_max_wait_ms);
        let linger = Duration::from_millis(self.cfg.batch_linger_ms);
        let started = Instant::now();
        while batch.len() < self.cfg.batch_max_records && started.elapsed() < max_wait {
            if self
                .restore_retry
                .as_ref()
                .is_some_and(|r| Instant::now() >= r.at)
            {
                self.restore();
            }
            let generation = self.rebalances.generation.load(Ordering::SeqCst);
            let remaining = max_wait.saturating_sub(started.elapsed());
            // Copied out at once: a rebalance below settles the commit in flight and restores
            // state, which the consumer's borrowed message would hold up.
            let mut timeout = if batch.is_empty() {
                remaining
            } else {
                remaining.min(linger.saturating_sub(self.last_txn.elapsed()))
            };
            if self.pending.is_some() {
                // In short waits while a commit is in flight, so its outcome is taken soon
                // after it returned even when no input comes (below).
                timeout = timeout.min(PENDING_COMMIT_POLL);
            }
            let polled = self.consumer.poll(timeout).map(|r| {
                r.map(|m| {
                    self.topics.input_index(m.topic()).map(|input| Owned {
                        input,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().unwrap_or_default().to_vec(),
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        arrival_time_ms: match m.timestamp() {
                            Timestamp::LogAppendTime(ms) => Some(ms),
                            _ => None,
                        },
                        sealed_with: envelope_header(&m),
                    })
                })
            });
            if self.rebalances.generation.load(Ordering::SeqCst) != generation {
                batch.clear();
                let new_assignment = self.rebalances.assigned.lock().expect("lock").take();
                if let Some(parts) = new_assignment {
                    self.assigned = parts;
                    // The commit in flight ended before the revocation (`pre_rebalance` waits
                    // for it); its outcome is taken before state is rebuilt from the changelog
                    // (an abort already rebuilt it, for the new assignment).
                    if self.settle()? == Settled::Clean {
                        self.restore();
                    }
                }
            }
            match polled {
                None => {
                    self.consumer_alive()?;
                    // A commit that returned is acted on now, not when the next batch is full:
                    // a failed one is aborted at once (its open transaction holds back
                    // read_committed readers) and a committed one counted.
                    if self
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.commit.is_finished())
                        && self.settle()? == Settled::Redone
                    {
                        // Input was rewound to the last commit: what was taken is fetched again.
                        batch.clear();
                    }
                    let spaced = self.last_txn.elapsed() >= linger;
                    if shutdown.load(Ordering::SeqCst) || (!batch.is_empty() && spaced) {
                        break;
                    }
                }
                Some(Ok(record)) => {
                    // Nothing is taken while state is missing (records fetched before the
                    // pause are fetched again after the rewind that ends it).
                    let restored = self.restore_retry.is_none();
                    if let Some(record) =
                        record.filter(|r| restored && self.assigned.contains(&r.partition))
                    {
                        batch.push(record);
                    }
                }
                Some(Err(e)) => {
                    self.consumer_alive()?;
                    ConsumerError { error: &e }
                        .emit(&self.driver.metrics, &mut self.consumer_errors);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(())
    }

    /// Processes a batch, takes the outcome of the transaction in flight, then (if it
    /// committed) writes the batch's records and state in a new transaction and starts its
    /// commit on a thread of its own. Processing overlaps the previous commit; writing never
    /// does (one transaction at a time).
    fn process_and_produce(&mut self, batch: &[Owned]) -> Result<(), RuntimeError> {
        tracing::debug!(records = batch.len(), "batch collected");
        // The batch's state records are encoded here too, while the previous commit is in
        // flight: only what follows the commit (writing, then the next commit) is serial.
        let processed = self.process(batch).map(|output| {
            let writes = self.snapshots(&output.changed);
            (output, writes)
        });
        if self.settle()? == Settled::Redone {
            // State and input went back to the last commit: this batch is fetched again.
            return Ok(());
        }
        self.driver
            .metrics
            .batch_records
            .observe(batch.len() as f64);
        let started = Instant::now();
        self.last_txn = started;
        let stats = TxnStats {
            records: batch.len(),
            started,
            input_timestamps_ms: batch.iter().filter_map(|r| r.timestamp_ms).collect(),
        };
        let written = processed.and_then(|(output, writes)| self.produce_batch(&output, writes));
        match written {
            Ok((outputs, offsets, group)) => {
                self.rebalances.commit.enter();
                let gate = LeaveOnDrop(Arc::clone(&self.rebalances));
                let producer = Arc::clone(&self.producer);
                let timeout = self.cfg.request_timeout();
                let spawned = std::thread::Builder::new()
                    .name("commit".into())
                    .spawn(move || {
                        let _gate = gate;
                        commit(&producer, &offsets, &group, timeout)
                    });
                match spawned {
                    Ok(commit) => {
                        self.pending = Some(PendingCommit {
                            commit,
                            outputs,
                            stats,
                        });
                        Ok(())
                    }
                    // The closure (and its gate) was dropped with the error.
                    Err(e) => self
                        .finish(
                            Err(TxnFailure::AbortThenStop(RuntimeError::Internal(format!(
                                "cannot start the commit thread: {e}"
                            )))),
                            stats,
                        )
                        .map(drop),
                }
            }
            Err(f) => self.finish(Err(f), stats).map(drop),
        }
    }

    /// Waits for the transaction in flight, if any, and acts on its outcome (see
    /// [`StageLoop::finish`]).
    fn settle(&mut self) -> Result<Settled, RuntimeError> {
        let Some(pending) = self.pending.take() else {
            return Ok(Settled::Clean);
        };
        let outcome = pending.commit.join().unwrap_or_else(|_| {
            Err(TxnFailure::AbortThenStop(RuntimeError::Internal(
                "the commit thread panicked".into(),
            )))
        });
        self.finish(outcome.map(|at| (pending.outputs, at)), pending.stats)
    }

    /// Acts on a transaction's outcome: on commit, emits it; on an abortable failure, aborts,
    /// restores state and rewinds the input so the batch is redone; otherwise stops.
    fn finish(
        &mut self,
        outcome: Result<(usize, Committed), TxnFailure>,
        stats: TxnStats,
    ) -> Result<Settled, RuntimeError> {
        match outcome {
            Ok((outputs, committed_at)) => {
                self.quarantined.clear();
                self.consecutive_aborts = 0;
                TransactionCommitted {
                    records: stats.records,
                    outputs,
                    elapsed: committed_at.at.saturating_duration_since(stats.started),
                    committed_at: committed_at.wall,
                    input_timestamps_ms: stats.input_timestamps_ms.into_iter(),
                }
                .emit(&self.driver.metrics);
                Ok(Settled::Clean)
            }
            Err(TxnFailure::Abortable(e)) => {
                TransactionAborted {
                    error: &e,
                    records: stats.records,
                }
                .emit(&self.driver.metrics);
                self.producer
                    .abort_transaction(self.cfg.request_timeout())
                    .map_err(RuntimeError::kafka("abort_transaction"))?;
                // Not ready while the batch is being redone; a redo that never commits is a
                // livelock, ended loudly.
                self.driver.metrics.ready.set(0);
                self.consecutive_aborts += 1;
                if self.consecutive_aborts >= self.cfg.max_consecutive_aborts {
                    return Err(RuntimeError::Internal(format!(
                        "{} transactions in a row aborted (--max-consecutive-aborts); the last: {e}",
                        self.consecutive_aborts
                    )));
                }
                self.restore();
                self.rewind()?;
                Ok(Settled::Redone)
            }
            Err(TxnFailure::Fatal(e)) => Err(e),
            Err(TxnFailure::AbortThenStop(e)) => {
                TransactionAborted {
                    error: &e,
                    records: stats.records,
                }
                .emit(&self.driver.metrics);
                if let Err(abort) = self.producer.abort_transaction(self.cfg.request_timeout()) {
                    tracing::error!(error = %abort, "abort_transaction failed while stopping");
                }
                Err(e)
            }
        }
    }

    /// Begins a transaction and writes a processed batch into it: dead letters and tombstones
    /// of quarantined state, the outputs, the changed state. Returns the number of records
    /// produced and what commits the transaction (the input offsets and the group's metadata).
    fn produce_batch(
        &mut self,
        output: &BatchOutput,
        writes: Result<Vec<StateWrite>, StageError>,
    ) -> Result<(usize, TopicPartitionList, ConsumerGroupMetadata), TxnFailure> {
        self.producer
            .begin_transaction()
            .map_err(|e| classify("begin_transaction", e))?;
        // Quarantined snapshots first: their dead letters, and tombstones that a new snapshot
        // of the same key in this batch (written after) supersedes.
        let (letters, tombstones) = self.quarantine_records()?;
        self.produce_outputs(&letters)?;
        self.produce_state(&tombstones)?;
        let produced = self.produce_outputs(&output.records)?;
        // A snapshot that fails aborts the transaction: nothing of the batch commits and the
        // changelog keeps the key's previous state. Retrying cannot help, so the stage stops.
        let writes = writes.map_err(|e| TxnFailure::AbortThenStop(e.into()))?;
        // A key's state over the record limit could never be written: every redo would abort
        // the same way, so stop at once and say so (state is bounded by design; see the stage).
        if let (Some(limit), Some(role)) = (
            self.driver.output_limit(),
            self.driver.processor().changelog_role(),
        ) {
            let overhead = if role.spec().side == PrivacySide::Sensitive {
                limit.sealing_overhead
            } else {
                0
            };
            if let Some(w) = writes.iter().find(|w| {
                w.snapshot.as_ref().map_or(0, Vec::len) + w.key.len() + overhead
                    > limit.max_record_bytes
            }) {
                return Err(TxnFailure::AbortThenStop(RuntimeError::Internal(format!(
                    "a state snapshot of partition {} is {} bytes, over the {} bytes a record may \
                     take: the stage's state for one key outgrew the record limit",
                    w.partition,
                    w.snapshot.as_ref().map_or(0, Vec::len),
                    limit.max_record_bytes
                ))));
            }
        }
        self.produce_state(&writes)?;
        let (offsets, group) = self.offsets(&output.next_offsets)?;
        Ok((
            letters.len() + tombstones.len() + produced + writes.len(),
            offsets,
            group,
        ))
    }

    /// The dead letters (reason UNDECODABLE, the refused state as the original bytes, the
    /// changelog record as the source) and changelog tombstones of the quarantined snapshots.
    #[allow(clippy::type_complexity)]
    fn quarantine_records(
        &self,
    ) -> Result<(Vec<(Emitted, Option<i64>)>, Vec<StateWrite>), TxnFailure> {
        let Some(changelog) = self.topics.changelog.as_deref() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let p = self.driver.processor();
        let mut letters = Vec::with_capacity(self.quarantined.len());
        let mut tombstones = Vec::with_capacity(self.quarantined.len());
        for q in &self.quarantined {
            // The state may be as large as a record can be: carried within the cap.
            let (original_bytes, detail) = crate::driver::carried_payload(
                &q.state,
                &format!(
                    "state snapshot does not restore ({}); the key started afresh",
                    q.error
                ),
                self.driver.dead_letter_payload_cap(),
            );
            let letter = DeadLetter {
                stage: p.stage().to_string(),
                reason: DeadLetterReason::UNDECODABLE,
                detail,
                source_topic: changelog.to_string(),
                source_partition: q.partition,
                source_offset: q.offset,
                source_key: Some(q.key.as_bytes().to_vec()),
                source_timestamp_ms: None,
                original_bytes,
            };
            let value = encode(&letter)
                .map_err(|e| TxnFailure::Fatal(RuntimeError::Internal(e.to_string())))?;
            letters.push((
                Emitted {
                    role: p.dead_letter_role(),
                    key: q.key.clone(),
                    value,
                },
                None,
            ));
            tombstones.push(StateWrite {
                key: q.key.clone(),
                partition: q.partition,
                snapshot: None,
            });
        }
        Ok((letters, tombstones))
    }

    /// Hands every record of the batch to the processor.
    fn process(&mut self, batch: &[Owned]) -> Result<BatchOutput, TxnFailure> {
        let mut out = BatchOutput {
            records: Vec::with_capacity(batch.len() * 2),
            changed: BTreeMap::new(),
            next_offsets: BTreeMap::new(),
        };
        let mut emitted: Vec<Emitted> = Vec::new();
        for m in batch {
            let (input_role, topic) = &self.topics.inputs[m.input];
            let input_role = *input_role;
            let ring = self
                .cfg
                .kafka
                .key_ring
                .as_ref()
                .filter(|_| input_role.spec().side == PrivacySide::Sensitive);
            // On the sensitive side the record is opened first; one that does not open is a
            // dead letter (its sealed bytes kept), never a crash.
            let opened = ring.map(|r| {
                r.open(
                    input_role,
                    m.key.as_deref().unwrap_or_default(),
                    m.sealed_with.as_deref(),
                    &m.value,
                )
            });
            let value: &[u8] = match &opened {
                Some(Ok(plain)) => plain,
                _ => &m.value,
            };
            let env = Envelope {
                key: m.key.as_deref(),
                value,
                topic,
                partition: m.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                arrival_time_ms: m.arrival_time_ms,
            };
            let changed = &mut out.changed;
            let handled = match &opened {
                Some(Err(e)) => self.driver.reject_unreadable(
                    &env,
                    DeadLetterReason::UNDECODABLE,
                    &e.to_string(),
                    &mut emitted,
                ),
                _ => self.driver.handle(&env, &mut emitted, |k| {
                    changed.insert(k, m.partition);
                }),
            };
            handled.map_err(|e| TxnFailure::Fatal(e.into()))?;
            // Each output carries the timestamp of the input that caused it (as Kafka Streams
            // does), so the time from an instrument's event to any result can be read off it.
            out.records
                .extend(emitted.drain(..).map(|e| (e, m.timestamp_ms)));
            out.next_offsets
                .insert((m.input, m.partition), m.offset + 1);
        }
        Ok(out)
    }

    fn produce_outputs(&self, records: &[(Emitted, Option<i64>)]) -> Result<usize, TxnFailure> {
        let ring = self.cfg.kafka.key_ring.as_ref();
        for (e, stamp) in records {
            let reframed;
            let plain = match self.topics.confluent.get(&e.role) {
                // Offered topics are never sealed (checked at start-up), so the framing is the
                // outermost layer.
                Some(ids) => {
                    reframed = seqmon_model::codec::to_confluent(&e.value, |entry| {
                        ids.get(&entry.version).copied()
                    })
                    .map_err(|err| {
                        TxnFailure::Fatal(RuntimeError::Internal(format!(
                            "cannot write {} in the Confluent framing: {err}",
                            e.role
                        )))
                    })?;
                    reframed.as_slice()
                }
                None => e.value.as_slice(),
            };
            let (value, headers) = outgoing(ring, e.role, e.key.as_bytes(), plain);
            let mut record = BaseRecord::to(self.topics.output(e.role)?)
                .key(e.key.as_bytes())
                .payload(value.as_ref());
            if let Some(h) = headers {
                record = record.headers(h);
            }
            if let Some(ms) = stamp {
                record = record.timestamp(*ms);
            }
            send(&self.producer, record).map_err(|e| classify("produce", e))?;
        }
        Ok(records.len())
    }

    /// The state to write for every changed key (see [`Driver::state_writes`]); none without
    /// a changelog.
    fn snapshots(
        &mut self,
        changed: &BTreeMap<String, i32>,
    ) -> Result<Vec<StateWrite>, StageError> {
        if self.topics.changelog.is_none() {
            return Ok(Vec::new());
        }
        self.driver.state_writes(changed)
    }

    fn produce_state(&self, writes: &[StateWrite]) -> Result<(), TxnFailure> {
        let Some(changelog) = self.topics.changelog.as_deref() else {
            return Ok(());
        };
        let role = self.driver.processor().changelog_role();
        let ring = self.cfg.kafka.key_ring.as_ref();
        for w in writes {
            // Same partition as the input, so the instance owning an input partition finds its
            // state on the changelog partition with the same number.
            let record = BaseRecord::<[u8], [u8]>::to(changelog)
                .key(w.key.as_bytes())
                .partition(w.partition);
            let sealed = match (&w.snapshot, role) {
                (Some(bytes), Some(role)) => Some(outgoing(ring, role, w.key.as_bytes(), bytes)),
                _ => None,
            };
            let record = match &sealed {
                Some((value, headers)) => {
                    let r = record.payload(value.as_ref());
                    match headers {
                        Some(h) => r.headers(h.clone()),
                        None => r,
                    }
                }
                None => record,
            };
            send(&self.producer, record).map_err(|e| classify("produce state", e))?;
        }
        Ok(())
    }

    /// The input offsets that the transaction commits, and the group metadata they commit under.
    fn offsets(
        &self,
        next_offsets: &BTreeMap<(usize, i32), i64>,
    ) -> Result<(TopicPartitionList, ConsumerGroupMetadata), TxnFailure> {
        let mut tpl = TopicPartitionList::new();
        for ((input, p), o) in next_offsets {
            tpl.add_partition_offset(&self.topics.inputs[*input].1, *p, Offset::Offset(*o))
                .map_err(|e| {
                    TxnFailure::Fatal(RuntimeError::Kafka {
                        operation: "offsets",
                        source: e,
                    })
                })?;
        }
        let group = self.consumer.group_metadata().ok_or_else(|| {
            TxnFailure::Fatal(RuntimeError::Internal(
                "consumer has no group metadata".into(),
            ))
        })?;
        Ok((tpl, group))
    }

    /// Seeks every assigned partition of every input back to its committed offset (or the
    /// beginning).
    fn rewind(&self) -> Result<(), RuntimeError> {
        Inputs {
            consumer: &self.consumer,
            topics: &self.topics,
            assigned: &self.assigned,
            cfg: self.cfg,
        }
        .rewind()
    }

    /// Err when the consumer hit a fatal error (a static member fenced by its own successor
    /// after a broker restart): it will never fetch again, and carrying on would be a silent
    /// stall; `run_kafka` starts the clients afresh.
    fn consumer_alive(&self) -> Result<(), RuntimeError> {
        match self.consumer.client().fatal_error() {
            None => Ok(()),
            Some((code, reason)) => Err(RuntimeError::Internal(format!(
                "the consumer hit a fatal error ({code:?}: {reason})"
            ))),
        }
    }

    /// The processor and its metrics, the clients dropped (after the commit in flight ends:
    /// its outcome no longer matters, the next producer fences this one).
    fn into_driver(mut self) -> Driver {
        if let Some(pending) = self.pending.take() {
            let _ = pending.commit.join();
        }
        self.driver
    }

    /// SIGTERM: the last batch is committed; leave the group so partitions move at once.
    fn leave_group(self) {
        tracing::info!(
            stage = self.driver.processor().stage(),
            "shutting down: last transaction committed, leaving the group"
        );
        self.consumer.unsubscribe();
    }
}

/// On the commit thread: waits for every delivery, adds the input offsets to the transaction
/// and commits it; returns when the commit did.
fn commit(
    producer: &ThreadedProducer<QuietClientContext>,
    offsets: &TopicPartitionList,
    group: &ConsumerGroupMetadata,
    timeout: Duration,
) -> Result<Committed, TxnFailure> {
    wait_delivered(producer, timeout).map_err(|e| classify("flush", e))?;
    producer
        .send_offsets_to_transaction(offsets, group, timeout)
        .map_err(|e| classify("send_offsets_to_transaction", e))?;
    let mut attempt = 0;
    loop {
        match producer.commit_transaction(timeout) {
            Ok(()) => {
                return Ok(Committed {
                    at: Instant::now(),
                    wall: std::time::SystemTime::now(),
                })
            }
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempt < 5 => {
                attempt += 1;
                if let Some(occurrences) = LogLimiter::global().admit("commit retry") {
                    tracing::warn!(error = %t, attempt, occurrences, "commit_transaction retriable error; retrying");
                }
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            Err(e) => return Err(classify("commit_transaction", e)),
        }
    }
}

/// `<prefix><service>-<host>`: HOSTNAME (a pod's name), else the kernel's host name. Two
/// instances must not share a transactional id, or they fence each other; the ACLs grant each
/// service the prefix `<prefix><service>-`.
pub fn default_transactional_id(prefix: &str, service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("{prefix}{service}-{host}")
}

/// The partitions of a topic, from the cluster's metadata. A topic created a moment ago may
/// not be in a broker's metadata yet (KRaft applies it asynchronously), so a missing topic is
/// asked for again until `timeout` has passed before it is an error.
pub fn topic_partitions(
    kafka: &crate::config::KafkaConnection,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, RuntimeError> {
    poll_metadata(kafka, Some(topic), timeout, |md| {
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            Err(format!(
                "topic {topic} does not exist or is not visible to this principal (seqmon-admin create-topics, seqmon-admin acls)"
            ))
        } else {
            Ok(partitions)
        }
    })
}

/// Waits until every one of `topics` is in the cluster's metadata with a leader for each of its
/// partitions: `create-topics` returns only when a service started next can use them. The
/// topics still missing or leaderless at `timeout` are the error.
pub fn wait_topics_ready(
    kafka: &crate::config::KafkaConnection,
    topics: &[String],
    timeout: Duration,
) -> Result<(), RuntimeError> {
    poll_metadata(kafka, None, timeout, |md| {
        let ready: HashSet<&str> = md
            .topics()
            .iter()
            .filter(|t| {
                t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
            .map(|t| t.name())
            .collect();
        let missing: Vec<&str> = topics
            .iter()
            .map(String::as_str)
            .filter(|t| !ready.contains(t))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "topics not ready (not in the metadata, or a partition without a leader) after {} ms: {}",
                timeout.as_millis(),
                missing.join(", ")
            ))
        }
    })
}

/// How often metadata that does not show what is waited for yet is asked for again.
const METADATA_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Fetches the cluster's metadata (of `topic`, or of every topic) until `ready` accepts it, at
/// most until `timeout`; then `ready`'s last refusal is the error.
fn poll_metadata<T>(
    kafka: &crate::config::KafkaConnection,
    topic: Option<&str>,
    timeout: Duration,
    ready: impl Fn(&rdkafka::metadata::Metadata) -> Result<T, String>,
) -> Result<T, RuntimeError> {
    let client: BaseConsumer = kafka
        .client_config()
        .create()
        .map_err(RuntimeError::kafka("create metadata client"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let md = client
            .fetch_metadata(topic, timeout)
            .map_err(RuntimeError::kafka("fetch metadata"))?;
        match ready(&md) {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() >= deadline => return Err(RuntimeError::Internal(why)),
            Err(_) => std::thread::sleep(METADATA_RETRY_INTERVAL),
        }
    }
}

/// A key whose snapshot the processor refused at restore: it starts afresh, and the next
/// transaction writes the snapshot to the dead-letter topic and a tombstone to the changelog.
struct Quarantined {
    key: String,
    partition: i32,
    offset: i64,
    state: Vec<u8>,
    error: String,
}

/// Rebuilds the processor's state from the changelog partitions matching the assignment.
/// A snapshot the processor cannot restore (a NaN stored as null by an older version, a
/// corrupted record) is quarantined, not fatal: one bad key must not crash-loop a stage that
/// holds the state of a third of the fleet. A snapshot in a format this version does not read
/// still stops the stage (a downgrade: quarantining would destroy good state).
fn restore_state(
    driver: &mut Driver,
    cfg: &RunnerConfig,
    changelog: Option<&str>,
    assigned: &[i32],
    probe: &BaseConsumer<StageConsumerContext>,
) -> Result<Vec<Quarantined>, RuntimeError> {
    driver.processor_mut().clear_state();
    let Some(changelog) = changelog else {
        return Ok(Vec::new());
    };
    if assigned.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    // No records on the assigned changelog partitions (a new deployment, no keys yet): one
    // offsets request on the stage's own client instead of a restore consumer that joins,
    // fetches and waits for the end of every partition.
    let timeout = cfg.request_timeout();
    let empty = assigned.iter().all(|p| {
        matches!(probe.fetch_watermarks(changelog, *p, timeout), Ok((low, high)) if high <= low)
    });
    if empty {
        StateRestored {
            changelog,
            partitions: assigned,
            keys: 0,
            elapsed: started.elapsed(),
        }
        .emit(&driver.metrics);
        return Ok(Vec::new());
    }
    let group_id = cfg.group_id(driver.processor().stage());
    let role = driver.processor().changelog_role();
    let ring = cfg
        .kafka
        .key_ring
        .as_ref()
        .zip(role)
        .filter(|(_, r)| r.spec().side == PrivacySide::Sensitive);
    driver.metrics.restoring.set(1);
    driver.metrics.ready.set(0);
    let metrics = driver.metrics.clone();
    let latest = read_changelog(
        &cfg.kafka,
        &format!("{group_id}-restore"),
        Duration::from_millis(cfg.restore_timeout_ms),
        changelog,
        assigned,
        ring,
        &|| metrics.beat(),
    );
    driver.metrics.restoring.set(0);
    let latest = latest?;
    let expected = driver.processor().state_format_version();
    // A state format this build does not read stops the whole restore before anything is
    // quarantined or restored (it is retried; nothing is counted twice).
    for (key, entry) in &latest {
        if let Some(snap) = &entry.snapshot {
            if !driver.processor().reads_state_format(snap.format_version) {
                return Err(StageError::StateFormat {
                    key: key.clone(),
                    found: snap.format_version,
                    expected,
                }
                .into());
            }
        }
    }
    // Most records not decoding is systemic (a build that cannot read its own state), not a
    // corrupt record: quarantining would tombstone the whole state, so the restore fails (and
    // is retried) instead.
    let undecodable = latest.values().filter(|e| e.undecodable.is_some()).count();
    if undecodable >= SYSTEMIC_UNDECODABLE_MIN && undecodable * 2 >= latest.len() {
        return Err(RuntimeError::Internal(format!(
            "{undecodable} of the {} latest records on {changelog} are not state snapshots: \
             not quarantined (systemic, not a corrupt record)",
            latest.len()
        )));
    }
    let mut restored = 0u64;
    let mut quarantined = Vec::new();
    for (key, entry) in &latest {
        let (snap, partition, offset) = match entry {
            ChangelogEntry {
                snapshot: Some(snap),
                partition,
                offset,
                ..
            } => (snap, *partition, *offset),
            ChangelogEntry {
                undecodable: Some((bytes, error)),
                partition,
                offset,
                ..
            } => {
                let error = format!("not a state snapshot: {error}");
                StateQuarantined {
                    changelog,
                    partition: *partition,
                    offset: *offset,
                    error: &error,
                }
                .emit(&driver.metrics);
                quarantined.push(Quarantined {
                    key: key.clone(),
                    partition: *partition,
                    offset: *offset,
                    state: bytes.clone(),
                    error,
                });
                continue;
            }
            _ => continue,
        };
        match driver.processor_mut().restore(key, &snap.state_json) {
            Ok(()) => restored += 1,
            Err(e) => {
                StateQuarantined {
                    changelog,
                    partition,
                    offset,
                    error: &e,
                }
                .emit(&driver.metrics);
                quarantined.push(Quarantined {
                    key: key.clone(),
                    partition,
                    offset,
                    state: snap.state_json.clone(),
                    error: e.to_string(),
                });
            }
        }
    }
    // A stage that writes several records per key assembles them now; a record it could not
    // use is quarantined like one that did not restore.
    for failure in driver.processor_mut().finish_restore() {
        let Some(ChangelogEntry {
            snapshot: Some(snap),
            partition,
            offset,
            ..
        }) = latest.get(&failure.changelog_key)
        else {
            return Err(RuntimeError::Internal(format!(
                "the stage could not assemble changelog key {} that it was never given: {}",
                failure.changelog_key, failure.error
            )));
        };
        restored = restored.saturating_sub(1);
        StateQuarantined {
            changelog,
            partition: *partition,
            offset: *offset,
            error: &failure.error,
        }
        .emit(&driver.metrics);
        quarantined.push(Quarantined {
            key: failure.changelog_key,
            partition: *partition,
            offset: *offset,
            state: snap.state_json.clone(),
            error: failure.error.to_string(),
        });
    }
    drop(latest);
    StateRestored {
        changelog,
        partitions: assigned,
        keys: restored,
        elapsed: started.elapsed(),
    }
    .emit(&driver.metrics);
    // Deterministic order for the records the next transaction writes.
    quarantined.sort_by_key(|q| (q.partition, q.offset));
    Ok(quarantined)
}

/// A key's latest changelog record: its snapshot (`None` for a tombstone, or a record that does
/// not decode) and where it is.
pub struct ChangelogEntry {
    pub snapshot: Option<StateSnapshot>,
    /// A record that is not a state snapshot (corrupt bytes, another schema): its bytes and why.
    pub undecodable: Option<(Vec<u8>, String)>,
    pub partition: i32,
    pub offset: i64,
}

/// The latest snapshot (or tombstone) of every key on the given changelog partitions, read
/// committed, opening envelopes with `ring` when the changelog is sealed. `limit` bounds the
/// whole read; a record that does not open or decode stops it (state is never half-read).
/// `progress` is called at least every 500 ms while reading (a liveness beat: a long restore is
/// work, not a hang).
pub fn read_changelog(
    kafka: &crate::config::KafkaConnection,
    restore_group_id: &str,
    limit: Duration,
    changelog: &str,
    partitions: &[i32],
    ring: Option<(&KeyRing, TopicRole)>,
    progress: &dyn Fn(),
) -> Result<HashMap<String, ChangelogEntry>, RuntimeError> {
    let started = Instant::now();
    let restorer: BaseConsumer<RestoreContext> = kafka
        .client_config()
        .set("group.id", restore_group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(RestoreContext)
        .map_err(RuntimeError::kafka("create restore consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)
            .map_err(RuntimeError::kafka("restore assignment"))?;
    }
    restorer
        .assign(&tpl)
        .map_err(RuntimeError::kafka("assign changelog"))?;
    let mut latest: HashMap<String, ChangelogEntry> = HashMap::new();
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < partitions.len() {
        progress();
        if started.elapsed() > limit {
            return Err(RuntimeError::Internal(format!(
                "restoring {changelog} did not reach the end within {} ms (--restore-timeout-ms)",
                limit.as_millis()
            )));
        }
        match restorer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let opened = match (ring, m.payload()) {
                    (Some((ring, role)), Some(bytes)) => Some(
                        ring.open(
                            role,
                            m.key().unwrap_or_default(),
                            envelope_header(&m).as_deref(),
                            bytes,
                        )
                        .map_err(|e| {
                            RuntimeError::Internal(format!(
                                "changelog {changelog} record at offset {} does not open: {e}",
                                m.offset()
                            ))
                        })?,
                    ),
                    _ => None,
                };
                let mut undecodable = None;
                let state = match opened.as_deref().or(m.payload()) {
                    None => None,
                    Some(bytes) => match decode::<StateSnapshot>(bytes) {
                        Ok(snapshot) => Some(snapshot),
                        // A schema this build does not know is a newer build's changelog: stop
                        // rather than misread (or quarantine) all of it. So is a sealed
                        // changelog read without its keys.
                        Err(e)
                            if e.reason() == DeadLetterReason::UNKNOWN_SCHEMA
                                || (ring.is_none() && envelope_header(&m).is_some()) =>
                        {
                            let hint = if ring.is_none() && envelope_header(&m).is_some() {
                                " (it is sealed: set --encryption-keys-dir and --encryption-active-key)"
                            } else {
                                ""
                            };
                            return Err(RuntimeError::Internal(format!(
                                "changelog {changelog} record at offset {} does not decode: {e}{hint}",
                                m.offset()
                            )));
                        }
                        // One corrupt record is one key's problem: quarantined by the restore.
                        Err(e) => {
                            undecodable = Some((bytes.to_vec(), e.to_string()));
                            None
                        }
                    },
                };
                latest.insert(
                    key,
                    ChangelogEntry {
                        snapshot: state,
                        undecodable,
                        partition: m.partition(),
                        offset: m.offset(),
                    },
                );
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => {
                return Err(RuntimeError::Kafka {
                    operation: "restore poll",
                    source: e,
                })
            }
        }
    }
    Ok(latest)
}

/// The stage's consumer with its topics and assignment: what rewinding and pausing need, apart
/// from the rest of the loop (a polled message may still borrow the consumer).
struct Inputs<'a> {
    consumer: &'a BaseConsumer<StageConsumerContext>,
    topics: &'a Topics,
    assigned: &'a [i32],
    cfg: &'a RunnerConfig,
}

impl Inputs<'_> {
    /// Seeks every assigned partition of every input back to its committed offset (or the
    /// beginning).
    fn rewind(&self) -> Result<(), RuntimeError> {
        let timeout = self.cfg.request_timeout();
        let committed = self
            .consumer
            .committed(timeout)
            .map_err(RuntimeError::kafka("committed offsets"))?;
        let each = self
            .topics
            .inputs
            .iter()
            .flat_map(|(_, t)| self.assigned.iter().map(move |p| (t.as_str(), p)));
        for (topic, p) in each {
            let committed_offset = committed
                .find_partition(topic, *p)
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)));
            // Nothing committed yet: start from the partition's first offset (auto.offset.reset
            // is earliest), resolved here so the seek is to a concrete offset.
            let offset = match committed_offset {
                Some(o) => o,
                None => {
                    let (low, _) = self
                        .consumer
                        .fetch_watermarks(topic, *p, timeout)
                        .map_err(RuntimeError::kafka("fetch watermarks"))?;
                    Offset::Offset(low)
                }
            };
            tracing::debug!(
                topic,
                partition = *p,
                ?offset,
                "rewinding to the committed offset"
            );
            self.consumer
                .seek(topic, *p, offset, timeout)
                .map_err(RuntimeError::kafka("seek"))?;
        }
        Ok(())
    }

    /// Pauses (or resumes) every input's assigned partitions.
    fn set_paused(&self, paused: bool) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for (_, topic) in &self.topics.inputs {
            for p in self.assigned {
                tpl.add_partition(topic, *p);
            }
        }
        if paused {
            self.consumer
                .pause(&tpl)
                .map_err(RuntimeError::kafka("pause partitions"))
        } else {
            self.consumer
                .resume(&tpl)
                .map_err(RuntimeError::kafka("resume partitions"))
        }
    }
}

/// Restores state for the current assignment. A restore that fails does not stop the stage:
/// the assigned input partitions are paused (their records wait on the broker), the failure is
/// reported (error line, `seqmon_state_restore_failing`, not ready) and the restore is tried
/// again after a backoff (5 s, doubling to 5 min). When it succeeds, the partitions resume from
/// their committed offsets.
fn restore_or_wait(
    driver: &mut Driver,
    quarantined: &mut Vec<Quarantined>,
    retry: &mut Option<RestoreRetry>,
    inputs: &Inputs<'_>,
) {
    match restore_state(
        driver,
        inputs.cfg,
        inputs.topics.changelog.as_deref(),
        inputs.assigned,
        inputs.consumer,
    ) {
        Ok(restored) => {
            *quarantined = restored;
            // Always resume: librdkafka keeps a partition's pause across a revoke and a later
            // assignment, so a partition paused under an earlier assignment may be back.
            let resumed = inputs.set_paused(false).and_then(|()| {
                if retry.is_some() {
                    // Records fetched while paused were not taken: fetch them again.
                    inputs.rewind()
                } else {
                    Ok(())
                }
            });
            match resumed {
                Ok(()) => {
                    if retry.take().is_some() {
                        driver.metrics.restore_failing.set(0);
                        tracing::info!(partitions = ?inputs.assigned, "state restored; input resumes");
                    }
                }
                Err(e) => fail(driver, quarantined, retry, inputs, &e),
            }
        }
        Err(e) => fail(driver, quarantined, retry, inputs, &e),
    }
}

/// A restore (or the resume after it) failed: pause, report, and schedule the next try. A
/// pause that fails too is logged and tried again with the restore: nothing is taken from the
/// partitions meanwhile (the loop skips their records), so correctness does not depend on it.
fn fail(
    driver: &mut Driver,
    quarantined: &mut Vec<Quarantined>,
    retry: &mut Option<RestoreRetry>,
    inputs: &Inputs<'_>,
    e: &RuntimeError,
) {
    let delay = retry.as_ref().map_or(RESTORE_RETRY_FIRST, |r| {
        (r.delay * 2).min(RESTORE_RETRY_MAX)
    });
    StateRestoreFailed {
        changelog: inputs.topics.changelog.as_deref().unwrap_or_default(),
        partitions: inputs.assigned,
        error: e,
        retry_in: delay,
    }
    .emit(&driver.metrics);
    quarantined.clear();
    driver.processor_mut().clear_state();
    if let Err(pause) = inputs.set_paused(true) {
        tracing::error!(error = %pause, "pausing the partitions failed; their records are skipped");
    }
    *retry = Some(RestoreRetry {
        at: Instant::now() + delay,
        delay,
    });
}

/// Undecodable changelog records from which on, when they are half of all or more, a restore
/// fails instead of quarantining them.
const SYSTEMIC_UNDECODABLE_MIN: usize = 10;

/// When a failed restore is first tried again, and the longest wait between tries.
const RESTORE_RETRY_FIRST: Duration = Duration::from_secs(5);
const RESTORE_RETRY_MAX: Duration = Duration::from_secs(300);

/// The next try of a failed restore.
struct RestoreRetry {
    at: Instant,
    delay: Duration,
}

/// Holds `driver` to the record limits a Kafka stage has with default settings (no sealing):
/// for in-process reference runs that must give what a stage gives.
pub fn default_record_limits(driver: &mut Driver) {
    driver.set_input_limit(crate::config::DEFAULT_MAX_INPUT_RECORD_BYTES);
    driver.set_output_limit(OutputLimit {
        max_record_bytes: LIBRDKAFKA_MESSAGE_MAX_BYTES - RECORD_FRAMING_MARGIN,
        sealing_overhead: 0,
    });
}

/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room left under `message.max.bytes` for what librdkafka adds to a record (batch and record
/// headers, our envelope header's framing).
const RECORD_FRAMING_MARGIN: usize = 1024;

/// The most key and value bytes a record of this producer may take. A topic configured below it
/// (`max.message.bytes`) still refuses such a record at delivery; that aborts the transaction,
/// and `--max-consecutive-aborts` stops the stage with the broker's reason.
fn record_limit(producer: &ClientConfig) -> usize {
    producer
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES)
        .saturating_sub(RECORD_FRAMING_MARGIN)
}

enum TxnFailure {
    /// Abort, restore and redo the batch.
    Abortable(RuntimeError),
    /// Stop the service.
    Fatal(RuntimeError),
    /// Abort the open transaction, then stop the service (retrying cannot help).
    AbortThenStop(RuntimeError),
}

fn classify(operation: &'static str, e: KafkaError) -> TxnFailure {
    let fatal = match &e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    };
    let err = RuntimeError::Kafka {
        operation,
        source: e,
    };
    if fatal {
        TxnFailure::Fatal(err)
    } else {
        TxnFailure::Abortable(err)
    }
}

/// Waits until every produced record is delivered (or failed), checking every millisecond.
///
/// Call it before `commit_transaction`, which flushes first: rust-rdkafka's flush on a
/// `ThreadedProducer` polls for events with a 100 ms timeout while the producer's own thread
/// takes those events, so each commit would wait 100 ms after its last delivery (measured:
/// 100 ms per transaction whatever its size). Once nothing is in flight its flush returns at once.
pub fn wait_delivered<C: rdkafka::producer::ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Sends a record, waiting while the local queue is full (bounded in-flight work).
pub fn send<'a, C: rdkafka::producer::ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C::DeliveryOpaque: Default,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A producer context for plain (non-transactional) producers outside the stages (collector,
/// simulator, admin): it keeps the first delivery error and the last client error, so a record
/// the broker refused (not authorized, too large) fails the run instead of being reported as
/// sent, and a connection that never comes up says why (TLS, authentication).
#[derive(Default)]
pub struct CheckedDelivery {
    first_failure: Mutex<Option<String>>,
    failures: AtomicU64,
    last_client_error: Mutex<Option<String>>,
}

impl CheckedDelivery {
    /// Records the broker refused or that could not be delivered, and the first reason.
    pub fn failures(&self) -> (u64, Option<String>) {
        (
            self.failures.load(Ordering::SeqCst),
            self.first_failure.lock().map(|f| f.clone()).unwrap_or(None),
        )
    }

    /// The last error the client reported (connection, TLS, authentication), if any.
    pub fn last_client_error(&self) -> Option<String> {
        self.last_client_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or(None)
    }

    /// Ok when every record produced so far was delivered; call after `flush`.
    pub fn check(&self, operation: &'static str) -> Result<(), RuntimeError> {
        match self.failures() {
            (0, _) => Ok(()),
            (n, first) => Err(RuntimeError::Internal(format!(
                "{operation}: {n} records were not delivered; first: {}",
                first.unwrap_or_default()
            ))),
        }
    }
}

impl ClientContext for CheckedDelivery {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        if let Ok(mut e) = self.last_client_error.lock() {
            *e = Some(format!("{error}: {reason}"));
        }
    }
}

impl rdkafka::producer::ProducerContext for CheckedDelivery {
    type DeliveryOpaque = ();
    fn delivery(
        &self,
        result: &rdkafka::message::DeliveryResult<'_>,
        _opaque: Self::DeliveryOpaque,
    ) {
        if let Err((e, _)) = result {
            self.failures.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = self.first_failure.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Connects once before any work: fetches the cluster's metadata within `timeout`, so a wrong
/// CA, an expired or untrusted certificate, bad SASL credentials or an unreachable broker stop
/// the program at start-up with the client's own reason, naming the settings to check.
pub fn preflight(
    kafka: &crate::config::KafkaConnection,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let protocol = kafka
        .client_config()
        .get("security.protocol")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if kafka.key_ring.is_none() && protocol != "plaintext" {
        // A secured cluster without encryption at rest is a deployment mistake, not a test.
        tracing::warn!(
            "no encryption key ring (--encryption-keys-dir): records on the sensitive topics are \
             stored in plaintext on the brokers' disks"
        );
    }
    let consumer: BaseConsumer<PreflightContext> = kafka
        .client_config()
        .create_with_context(PreflightContext::default())
        .map_err(RuntimeError::kafka("create preflight client"))?;
    match consumer.fetch_metadata(None, timeout) {
        Ok(_) => Ok(()),
        Err(e) => {
            // The client's error and log events are served by polling, not by the metadata call.
            for _ in 0..10 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
            let why = consumer.context().reason().unwrap_or_else(|| e.to_string());
            let config = kafka.client_config();
            Err(RuntimeError::Config {
                setting: "--bootstrap-servers / --security-protocol / TLS and SASL settings / --properties-file".into(),
                message: format!(
                    "cannot reach the cluster at {} within {} s: {why}",
                    config.get("bootstrap.servers").unwrap_or_default(),
                    timeout.as_secs()
                ),
            })
        }
    }
}

/// Keeps what the preflight client reported: the most telling reason is a TLS or SASL one
/// (certificate verify failed, alert certificate unknown, authentication failed), which the
/// client logs before it reports the generic transport failure.
#[derive(Default)]
struct PreflightContext {
    telling: Mutex<Option<String>>,
    last: Mutex<Option<String>>,
}

impl PreflightContext {
    fn note(&self, text: String) {
        let lower = text.to_ascii_lowercase();
        let telling = ["ssl", "sasl", "certificate", "authentic", "handshake"]
            .iter()
            .any(|w| lower.contains(w));
        let slot = if telling { &self.telling } else { &self.last };
        if let Ok(mut s) = slot.lock() {
            if s.is_none() || !telling {
                *s = Some(text);
            }
        }
    }

    fn reason(&self) -> Option<String> {
        let get = |m: &Mutex<Option<String>>| m.lock().map(|s| s.clone()).unwrap_or(None);
        get(&self.telling).or_else(|| get(&self.last))
    }
}

impl ClientContext for PreflightContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.note(format!("{fac}: {log_message}"));
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.note(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for PreflightContext {}

/// Retries an operation on retriable errors with backoff, until it succeeds, fails fatally, or
/// shutdown is asked for.
fn retry(
    operation: &'static str,
    shutdown: &AtomicBool,
    beat: &dyn Fn(),
    mut f: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), RuntimeError> {
    let mut delay = Duration::from_millis(200);
    loop {
        // Waiting on the brokers at start-up is work, not a hang: liveness must not restart it.
        beat();
        match f() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t))
                if t.is_retriable() && !shutdown.load(Ordering::SeqCst) =>
            {
                if let Some(occurrences) = LogLimiter::global().admit(operation) {
                    tracing::warn!(operation, error = %t, occurrences, retry_in_ms = delay.as_millis() as u64, "retriable error");
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(RuntimeError::Kafka {
                    operation,
                    source: e,
                })
            }
        }
    }
}
