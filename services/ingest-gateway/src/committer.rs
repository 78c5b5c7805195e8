//! The Kafka writer: one thread owning a transactional producer. Batches waiting together are
//! written in one transaction (group commit): every record, sealed for the sensitive topic, and
//! one receipt per batch on the gateway's changelog. The ledger is updated here, after the
//! outcome is known (never by the request, which may have gone away), and then the request is
//! answered.
//!
//! Failure: an abortable error aborts the transaction and answers every batch in it
//! [`Outcome::Unavailable`] (nothing was written; the client retries). A fatal error (fenced
//! by another instance, broker refusal of the transactional id) answers the same, marks the
//! writer dead and ends the thread; the service stops and the broker aborts what was open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use seqmon_model::topics::TopicRole;
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::envelope::KeyRing;
use seqmon_runtime::RuntimeError;
use tokio::sync::{mpsc, oneshot};

use crate::ledger::{hex, BatchKey, Ledger, Receipt};
use crate::metrics::{GatewayMetrics, TransactionEnded};

/// One record of a batch, owned.
#[derive(Debug, Clone)]
pub struct OwnedRecord {
    pub key: String,
    pub timestamp_ms: i64,
    pub value: Vec<u8>,
}

/// A batch to write.
#[derive(Debug)]
pub struct Job {
    pub key: BatchKey,
    pub receipt: Receipt,
    pub records: Vec<OwnedRecord>,
    pub reply: oneshot::Sender<Outcome>,
    /// The batch's share of --max-inflight-mib, given back when the job is dropped.
    pub _memory: tokio::sync::OwnedSemaphorePermit,
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written and committed.
    Committed,
    /// Not written: the transaction was aborted, or the writer is gone. Retry.
    Unavailable,
}

/// Where the writer writes, and with what.
pub struct Writer {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// The producer's configuration, to make a fresh one after an aborted transaction.
    config: rdkafka::ClientConfig,
    init_timeout: Duration,
    raw_topic: String,
    changelog_topic: String,
    ring: Option<KeyRing>,
    ledger: Arc<Mutex<Ledger>>,
    metrics: GatewayMetrics,
    max_batches: usize,
    alive: Arc<AtomicBool>,
}

const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Writer {
    /// Creates the transactional producer and initialises its transactions (fencing any
    /// earlier instance with the same id).
    pub fn new(
        kafka: &KafkaConnection,
        transactional_id: &str,
        ledger: Arc<Mutex<Ledger>>,
        metrics: GatewayMetrics,
        max_batches: usize,
    ) -> Result<Self, RuntimeError> {
        let mut config = kafka.producer_config();
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", "60000")
            .set("linger.ms", "5");
        let producer = fresh_producer(&config, kafka.connect_timeout())?;
        Ok(Self {
            producer,
            config,
            init_timeout: kafka.connect_timeout(),
            raw_topic: kafka.topic(TopicRole::Raw),
            changelog_topic: kafka.topic(TopicRole::ChangelogIngestGateway),
            ring: kafka.key_ring.clone(),
            ledger,
            metrics,
            max_batches,
            alive: Arc::new(AtomicBool::new(true)),
        })
    }

    /// True until a fatal error ends the writer.
    pub fn alive(&self) -> Arc<AtomicBool> {
        self.alive.clone()
    }

    /// Writes batches until every sender is gone or a fatal error.
    pub fn run(mut self, mut jobs: mpsc::Receiver<Job>) -> Result<(), RuntimeError> {
        self.metrics.writer_up.set(1);
        let result = loop {
            let Some(first) = jobs.blocking_recv() else {
                break Ok(());
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batches {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.write_isolated(batch) {
                break Err(e);
            }
        };
        self.alive.store(false, Ordering::SeqCst);
        self.metrics.writer_up.set(0);
        // Whatever is still queued was not written; its clients retry.
        jobs.close();
        while let Ok(j) = jobs.try_recv() {
            self.release(&j.key);
            let _ = j.reply.send(Outcome::Unavailable);
        }
        result
    }

    /// Writes batches in one transaction. If it is aborted, a fresh producer takes over (a
    /// record the broker refused can leave the idempotent producer's sequence broken for the
    /// next transaction) and each batch is retried alone, so one bad batch fails only itself,
    /// not the sites whose batches shared its transaction. Err only when the writer must stop.
    fn write_isolated(&mut self, batch: Vec<Job>) -> Result<(), RuntimeError> {
        let error = match self.write(&batch) {
            Ok(()) => {
                self.finish(batch, Outcome::Committed, None);
                return Ok(());
            }
            Err(Failure::Fatal(e)) => {
                self.finish(batch, Outcome::Unavailable, Some(&e.to_string()));
                return Err(e);
            }
            Err(Failure::Aborted(e)) => e,
        };
        if let Err(e) = self.reset() {
            self.finish(batch, Outcome::Unavailable, Some(&error.to_string()));
            return Err(e);
        }
        if batch.len() == 1 {
            self.finish(batch, Outcome::Unavailable, Some(&error.to_string()));
            return Ok(());
        }
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            let alone = vec![job];
            match self.write(&alone) {
                Ok(()) => self.finish(alone, Outcome::Committed, None),
                Err(failure) => {
                    let (Failure::Aborted(e) | Failure::Fatal(e)) = &failure;
                    let e = e.to_string();
                    self.finish(alone, Outcome::Unavailable, Some(&e));
                    let stop = match failure {
                        Failure::Fatal(e) => Some(e),
                        Failure::Aborted(_) => self.reset().err(),
                    };
                    if let Some(stop) = stop {
                        let rest: Vec<Job> = jobs.collect();
                        if !rest.is_empty() {
                            self.finish(rest, Outcome::Unavailable, Some("the writer stopped"));
                        }
                        return Err(stop);
                    }
                }
            }
        }
        Ok(())
    }

    /// Replaces the producer with a fresh one under the same transactional id.
    fn reset(&mut self) -> Result<(), RuntimeError> {
        self.producer = fresh_producer(&self.config, self.init_timeout)?;
        Ok(())
    }

    fn release(&self, key: &BatchKey) {
        if let Ok(mut l) = self.ledger.lock() {
            l.released(key);
        }
    }

    fn finish(&self, batch: Vec<Job>, outcome: Outcome, error: Option<&str>) {
        TransactionEnded {
            committed: outcome == Outcome::Committed,
            batches: batch.len(),
            error,
        }
        .emit(&self.metrics);
        if let Ok(mut l) = self.ledger.lock() {
            for j in &batch {
                match outcome {
                    Outcome::Committed => l.committed(j.key, j.receipt),
                    Outcome::Unavailable => l.released(&j.key),
                }
            }
            self.metrics.receipts.set(l.len() as i64);
            self.metrics.receipts_evicted.set(l.evicted() as i64);
        }
        for j in batch {
            // The request may have gone (client disconnected); the outcome stands regardless.
            let _ = j.reply.send(outcome);
        }
    }

    fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        ts: Option<i64>,
        role: TopicRole,
    ) -> Result<(), KafkaError> {
        let (value, headers) =
            seqmon_runtime::kafka::outgoing(self.ring.as_ref(), role, key, value);
        let mut rec = BaseRecord::to(topic).key(key).payload(value.as_ref());
        if let Some(ts) = ts {
            rec = rec.timestamp(ts);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        seqmon_runtime::kafka::send(&self.producer, rec)
    }

    fn write(&self, batch: &[Job]) -> Result<(), Failure> {
        let receipts = batch
            .iter()
            .map(|j| seqmon_model::encode(&j.receipt.to_snapshot(&j.key)).map(|b| (hex(&j.key), b)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Failure::Aborted(RuntimeError::Internal(format!(
                    "cannot encode a receipt: {e}"
                )))
            })?;
        self.producer
            .begin_transaction()
            .map_err(|e| Failure::of("begin transaction", e))?;
        let produced = (|| {
            for (job, (key, receipt)) in batch.iter().zip(&receipts) {
                for r in &job.records {
                    self.send(
                        &self.raw_topic,
                        r.key.as_bytes(),
                        &r.value,
                        Some(r.timestamp_ms),
                        TopicRole::Raw,
                    )?;
                }
                self.send(
                    &self.changelog_topic,
                    key.as_bytes(),
                    receipt,
                    None,
                    TopicRole::ChangelogIngestGateway,
                )?;
            }
            Ok(())
        })();
        match produced.and_then(|()| self.commit()) {
            Ok(()) => Ok(()),
            Err(e) => {
                let failure = Failure::of("write batch", e);
                if let Failure::Aborted(_) = failure {
                    // If the abort fails too, the outcome is unknown here: stop, and let the
                    // next start read the receipts back (read committed) before answering.
                    self.producer
                        .abort_transaction(COMMIT_TIMEOUT)
                        .map_err(|e| Failure::Fatal(RuntimeError::kafka("abort transaction")(e)))?;
                }
                Err(failure)
            }
        }
    }

    /// Commits, retrying a commit that failed retriably (timed out): retrying resolves it
    /// either way, where an abort could not.
    fn commit(&self) -> Result<(), KafkaError> {
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(COMMIT_TIMEOUT) {
                Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(error = %t, attempts, "commit failed retriably; retrying");
                }
                other => return other,
            }
        }
    }
}

/// A transactional producer with its transactions initialised (fencing an earlier one with the
/// same id, whose open transaction the broker aborts).
fn fresh_producer(
    config: &rdkafka::ClientConfig,
    timeout: Duration,
) -> Result<ThreadedProducer<DefaultProducerContext>, RuntimeError> {
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .create()
        .map_err(RuntimeError::kafka("create producer"))?;
    producer
        .init_transactions(timeout)
        .map_err(RuntimeError::kafka("init transactions"))?;
    Ok(producer)
}

enum Failure {
    /// Aborted: nothing of the transaction is visible.
    Aborted(RuntimeError),
    /// The producer cannot go on.
    Fatal(RuntimeError),
}

impl Failure {
    fn of(operation: &'static str, e: KafkaError) -> Self {
        let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
        let err = RuntimeError::Kafka {
            operation,
            source: e,
        };
        if fatal {
            Failure::Fatal(err)
        } else {
            Failure::Aborted(err)
        }
    }
}
