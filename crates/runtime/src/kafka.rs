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
//! On failure. A transaction error that requires an abort aborts it, drops the in-memory state,
//! restores it from the changelog and rewinds the consumer to the committed offsets, so the batch
//! is redone from a consistent point. Retriable commit errors are retried with backoff; fatal
//! errors (fenced by a newer instance, broker refusing the transactional id) stop the service
//! with an error so the orchestrator restarts it. On rebalance, records fetched for the old
//! assignment are discarded before processing and state is rebuilt for the new assignment from
//! the changelog, so no output is written for partitions this instance no longer owns (the
//! broker also refuses offsets of a stale group generation, which aborts the transaction).
//! SIGTERM finishes the batch in hand, commits it, and leaves the group cleanly.
//!
//! Timestamps. Every output record carries the Kafka timestamp of the input record that caused it,
//! so a result's timestamp is its instrument's send time, however many stages it passed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use seqmon_model::{decode, encode, StateSnapshot};

use crate::config::RunnerConfig;
use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::processor::{Emitted, Envelope};

/// Layout version of the state inside a [`StateSnapshot`]; processors own the JSON inside.
const STATE_FORMAT_VERSION: i32 = 1;

/// Rebalance events seen by the consumer, handled by the loop between polls.
#[derive(Default)]
struct RebalanceLog {
    generation: AtomicU64,
    assigned: Mutex<Option<Vec<i32>>>,
}

struct StageConsumerContext {
    log: Arc<RebalanceLog>,
    input_topic: String,
}

impl ClientContext for StageConsumerContext {}

impl ConsumerContext for StageConsumerContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.log.generation.fetch_add(1, Ordering::SeqCst);
            *self.log.assigned.lock().expect("lock") = Some(Vec::new());
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl
                    .elements_for_topic(&self.input_topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
                self.log.generation.fetch_add(1, Ordering::SeqCst);
                *self.log.assigned.lock().expect("lock") = Some(parts);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Context of the changelog restore consumer: reaching the end of a partition is how restore
/// knows it is done, not an error worth a log line.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "changelog restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// An input record copied out of the consumer.
struct Owned {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
}

/// Runs `driver` until `shutdown` is set or a fatal error occurs.
pub fn run_kafka(
    mut driver: Driver,
    cfg: &RunnerConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let stage = driver.processor().stage();
    let input_topic = cfg.kafka.topic(driver.processor().input_role());
    let group_id = cfg.group_id.clone().unwrap_or_else(|| stage.to_string());
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let transactional_id = cfg
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("{stage}-{host}"));
    let changelog_topic = driver
        .processor()
        .changelog_role()
        .map(|r| cfg.kafka.topic(r));
    let topics: HashMap<&'static str, String> = driver
        .processor()
        .output_roles()
        .iter()
        .chain(std::iter::once(&driver.processor().dead_letter_role()))
        .map(|r| (*r, cfg.kafka.topic(r)))
        .collect();
    let timeout = Duration::from_millis(cfg.transaction_timeout_ms.min(30_000));

    let producer: ThreadedProducer<DefaultProducerContext> = cfg
        .kafka
        .client_config()
        .set("transactional.id", &transactional_id)
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            cfg.transaction_timeout_ms.to_string(),
        )
        // A batch's outputs are produced together and then waited for, so lingering only adds
        // latency; records still batch while a request is in flight.
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(RuntimeError::kafka("create producer"))?;
    // Fences any earlier instance with this transactional id and aborts its open transaction, so
    // the changelog's last stable offset is final before we restore from it.
    retry("init_transactions", &shutdown, || {
        producer.init_transactions(timeout)
    })?;

    let log = Arc::new(RebalanceLog::default());
    let consumer: BaseConsumer<StageConsumerContext> = cfg
        .kafka
        .client_config()
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create_with_context(StageConsumerContext {
            log: log.clone(),
            input_topic: input_topic.clone(),
        })
        .map_err(RuntimeError::kafka("create consumer"))?;
    consumer
        .subscribe(&[&input_topic])
        .map_err(RuntimeError::kafka("subscribe"))?;
    tracing::info!(stage, %input_topic, %group_id, %transactional_id, "exactly-once loop started");

    let mut assigned: Vec<i32> = Vec::new();
    let mut batch: Vec<Owned> = Vec::with_capacity(cfg.batch_max_records);
    let max_wait = Duration::from_millis(cfg.batch_max_wait_ms);
    let linger = Duration::from_millis(cfg.batch_linger_ms);
    let mut last_txn = Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        driver.metrics.beat();
        // Collect a batch. A rebalance during collection invalidates what was collected before it.
        batch.clear();
        let started = Instant::now();
        while batch.len() < cfg.batch_max_records && started.elapsed() < max_wait {
            let generation = log.generation.load(Ordering::SeqCst);
            let remaining = max_wait.saturating_sub(started.elapsed());
            let polled = consumer.poll(if batch.is_empty() {
                remaining
            } else {
                remaining.min(linger.saturating_sub(last_txn.elapsed()))
            });
            if log.generation.load(Ordering::SeqCst) != generation {
                batch.clear();
                if let Some(parts) = log.assigned.lock().expect("lock").take() {
                    assigned = parts;
                    driver
                        .metrics
                        .assigned_partitions
                        .set(assigned.len() as i64);
                    restore_state(&mut driver, cfg, changelog_topic.as_deref(), &assigned)?;
                }
            }
            match polled {
                None => {
                    let spaced = last_txn.elapsed() >= linger;
                    if shutdown.load(Ordering::SeqCst) || (!batch.is_empty() && spaced) {
                        break;
                    }
                }
                Some(Ok(m)) => {
                    if m.topic() == input_topic && assigned.contains(&m.partition()) {
                        batch.push(Owned {
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().unwrap_or_default().to_vec(),
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                        });
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; continuing");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        tracing::debug!(records = batch.len(), "batch collected");
        driver.metrics.batch_records.observe(batch.len() as f64);
        let txn_started = Instant::now();
        last_txn = txn_started;
        match process_and_commit(
            &mut driver,
            &producer,
            &consumer,
            &batch,
            &input_topic,
            &topics,
            changelog_topic.as_deref(),
            timeout,
        ) {
            Ok(()) => {
                driver
                    .metrics
                    .transaction_seconds
                    .observe(txn_started.elapsed().as_secs_f64());
                driver
                    .metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
            }
            Err(TxnFailure::Abortable(e)) => {
                driver
                    .metrics
                    .transactions
                    .with_label_values(&["aborted"])
                    .inc();
                tracing::warn!(error = %e, records = batch.len(), "transaction aborted; restoring state and rewinding to committed offsets");
                if let Err(abort) = producer.abort_transaction(timeout) {
                    return Err(RuntimeError::Kafka {
                        operation: "abort_transaction",
                        source: abort,
                    });
                }
                restore_state(&mut driver, cfg, changelog_topic.as_deref(), &assigned)?;
                rewind(&consumer, &input_topic, &assigned)?;
            }
            Err(TxnFailure::Fatal(e)) => return Err(e),
        }
    }
    tracing::info!(
        stage,
        "shutting down: last transaction committed, leaving the group"
    );
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

enum TxnFailure {
    /// Abort, restore and redo the batch.
    Abortable(RuntimeError),
    /// Stop the service.
    Fatal(RuntimeError),
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

#[allow(clippy::too_many_arguments)]
fn process_and_commit(
    driver: &mut Driver,
    producer: &ThreadedProducer<DefaultProducerContext>,
    consumer: &BaseConsumer<StageConsumerContext>,
    batch: &[Owned],
    input_topic: &str,
    topics: &HashMap<&'static str, String>,
    changelog_topic: Option<&str>,
    timeout: Duration,
) -> Result<(), TxnFailure> {
    let mut outputs: Vec<Emitted> = Vec::with_capacity(batch.len() * 2);
    let mut changed: BTreeMap<String, i32> = BTreeMap::new();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    // Each output carries the timestamp of the input that caused it (as Kafka Streams does), so
    // the time from an instrument's event to any committed result can be read off the result.
    let mut stamps: Vec<Option<i64>> = Vec::with_capacity(batch.len() * 2);
    for m in batch {
        let env = Envelope {
            key: m.key.as_deref(),
            value: &m.value,
            topic: input_topic,
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
        };
        driver
            .handle(&env, &mut outputs, |k| {
                changed.insert(k, m.partition);
            })
            .map_err(|e| TxnFailure::Fatal(e.into()))?;
        stamps.resize(outputs.len(), m.timestamp_ms);
        next_offsets.insert(m.partition, m.offset + 1);
    }
    producer
        .begin_transaction()
        .map_err(|e| classify("begin_transaction", e))?;
    for (e, stamp) in outputs.iter().zip(&stamps) {
        let topic = topics.get(e.role).ok_or_else(|| {
            TxnFailure::Fatal(RuntimeError::Internal(format!(
                "stage emitted to undeclared output {}",
                e.role
            )))
        })?;
        let mut record = BaseRecord::to(topic)
            .key(e.key.as_bytes())
            .payload(e.value.as_slice());
        if let Some(ms) = stamp {
            record = record.timestamp(*ms);
        }
        send(producer, record).map_err(|e| classify("produce", e))?;
    }
    if let Some(changelog) = changelog_topic {
        let stage = driver.processor().stage();
        for (key, partition) in &changed {
            match driver.processor().snapshot(key) {
                Some(state) => {
                    let snap = StateSnapshot {
                        stage: stage.to_string(),
                        key: key.clone(),
                        format_version: STATE_FORMAT_VERSION,
                        state_json: state,
                    };
                    let bytes = encode(&snap)
                        .map_err(|e| TxnFailure::Fatal(RuntimeError::Internal(e.to_string())))?;
                    send(
                        producer,
                        BaseRecord::to(changelog)
                            .key(key.as_bytes())
                            .payload(bytes.as_slice())
                            .partition(*partition),
                    )
                    .map_err(|e| classify("produce state", e))?;
                }
                None => {
                    send(
                        producer,
                        BaseRecord::<[u8], [u8]>::to(changelog)
                            .key(key.as_bytes())
                            .partition(*partition),
                    )
                    .map_err(|e| classify("produce tombstone", e))?;
                }
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next_offsets {
        tpl.add_partition_offset(input_topic, *p, Offset::Offset(*o))
            .map_err(|e| {
                TxnFailure::Fatal(RuntimeError::Kafka {
                    operation: "offsets",
                    source: e,
                })
            })?;
    }
    let group = consumer.group_metadata().ok_or_else(|| {
        TxnFailure::Fatal(RuntimeError::Internal(
            "consumer has no group metadata".into(),
        ))
    })?;
    let produced_at = Instant::now();
    wait_delivered(producer, timeout).map_err(|e| classify("flush", e))?;
    let delivered_at = Instant::now();
    producer
        .send_offsets_to_transaction(&tpl, &group, timeout)
        .map_err(|e| classify("send_offsets_to_transaction", e))?;
    let offsets_at = Instant::now();
    let mut attempt = 0;
    loop {
        match producer.commit_transaction(timeout) {
            Ok(()) => {
                tracing::debug!(
                    records = batch.len(),
                    outputs = outputs.len(),
                    deliver_ms = (delivered_at - produced_at).as_secs_f64() * 1e3,
                    offsets_ms = (offsets_at - delivered_at).as_secs_f64() * 1e3,
                    commit_ms = offsets_at.elapsed().as_secs_f64() * 1e3,
                    "transaction committed"
                );
                return Ok(());
            }
            Err(KafkaError::Transaction(t)) if t.is_retriable() && attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %t, attempt, "commit_transaction retriable error; retrying");
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            Err(e) => return Err(classify("commit_transaction", e)),
        }
    }
}

/// Waits until every produced record is delivered (or failed), checking every millisecond.
///
/// Call it before `commit_transaction`, which flushes first: rust-rdkafka's flush on a
/// `ThreadedProducer` polls for events with a 100 ms timeout while the producer's own thread
/// takes those events, so each commit would wait 100 ms after its last delivery (measured:
/// 100 ms per transaction whatever its size). Once nothing is in flight its flush returns at once.
pub fn wait_delivered(
    producer: &ThreadedProducer<DefaultProducerContext>,
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
pub fn send<'a>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'a, [u8], [u8]>,
) -> Result<(), KafkaError> {
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

/// Seeks every assigned partition back to its committed offset (or the beginning).
fn rewind(
    consumer: &BaseConsumer<StageConsumerContext>,
    topic: &str,
    assigned: &[i32],
) -> Result<(), RuntimeError> {
    let committed = consumer
        .committed(Duration::from_secs(30))
        .map_err(RuntimeError::kafka("committed offsets"))?;
    tracing::debug!(?committed, "committed offsets fetched");
    for p in assigned {
        let committed_offset = committed
            .find_partition(topic, *p)
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(_)));
        // Nothing committed yet: start from the partition's first offset (auto.offset.reset is
        // earliest), resolved here so the seek is to a concrete offset.
        let offset = match committed_offset {
            Some(o) => o,
            None => {
                let (low, _) = consumer
                    .fetch_watermarks(topic, *p, Duration::from_secs(30))
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
        consumer
            .seek(topic, *p, offset, Duration::from_secs(30))
            .map_err(RuntimeError::kafka("seek"))?;
    }
    Ok(())
}

/// Rebuilds the processor's state from the changelog partitions matching `assigned`.
fn restore_state(
    driver: &mut Driver,
    cfg: &RunnerConfig,
    changelog: Option<&str>,
    assigned: &[i32],
) -> Result<(), RuntimeError> {
    driver.processor_mut().clear_state();
    let Some(changelog) = changelog else {
        return Ok(());
    };
    if assigned.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let restorer: BaseConsumer<RestoreContext> = cfg
        .kafka
        .client_config()
        .set(
            "group.id",
            format!("{}-restore", driver.processor().stage()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(RestoreContext)
        .map_err(RuntimeError::kafka("create restore consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for p in assigned {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)
            .map_err(RuntimeError::kafka("restore assignment"))?;
    }
    restorer
        .assign(&tpl)
        .map_err(RuntimeError::kafka("assign changelog"))?;
    let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < assigned.len() {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(RuntimeError::Internal(format!(
                "restoring {changelog} did not reach the end within 120 s"
            )));
        }
        match restorer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let state = match m.payload() {
                    None => None,
                    Some(bytes) => {
                        let snap: StateSnapshot = decode(bytes).map_err(|e| {
                            RuntimeError::Internal(format!(
                                "changelog {changelog} record at offset {} does not decode: {e}",
                                m.offset()
                            ))
                        })?;
                        Some(snap.state_json)
                    }
                };
                latest.insert(key, state);
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
    let mut restored = 0u64;
    for (key, state) in latest {
        if let Some(state) = state {
            driver.processor_mut().restore(&key, &state)?;
            restored += 1;
        }
    }
    driver.metrics.restored_state_keys.inc_by(restored);
    tracing::info!(%changelog, partitions = ?assigned, keys = restored, elapsed_ms = started.elapsed().as_millis() as u64, "state restored");
    Ok(())
}

/// Retries an operation on retriable errors with backoff, until it succeeds, fails fatally, or
/// shutdown is asked for.
fn retry(
    operation: &'static str,
    shutdown: &AtomicBool,
    mut f: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), RuntimeError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match f() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t))
                if t.is_retriable() && !shutdown.load(Ordering::SeqCst) =>
            {
                tracing::warn!(operation, error = %t, retry_in_ms = delay.as_millis() as u64, "retriable error");
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
