//! Internal events an operator cares about, as Vector's `internal_events`: one small type per
//! event whose `emit()` writes the log line and updates the counter together, so a log line never
//! exists without its metric nor a metric without its line. Labels are small fixed sets (reason
//! codes, outcomes); no event carries a record's value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use seqmon_model::DeadLetterReason;

use crate::metrics::StageMetrics;

/// An input record went to the dead-letter topic.
pub struct RecordDeadLettered<'a> {
    pub stage: &'static str,
    pub reason: DeadLetterReason,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl RecordDeadLettered<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics
            .dead_letter_records
            .with_label_values(&[self.reason.code()])
            .inc();
        // Provenance only: the detail may quote the input, so it goes to the dead letter (on its
        // side of the boundary), never to the log.
        tracing::debug!(
            stage = self.stage,
            reason = self.reason.code(),
            topic = self.source_topic,
            partition = self.source_partition,
            offset = self.source_offset,
            "dead letter"
        );
    }
}

/// A transaction committed.
pub struct TransactionCommitted<T> {
    pub records: usize,
    pub outputs: usize,
    /// From the transaction's begin to its commit's return.
    pub elapsed: Duration,
    /// When the commit returned (the event is emitted later, once the loop takes the outcome).
    pub committed_at: std::time::SystemTime,
    /// Kafka timestamps of the inputs it consumed, for the event-to-commit latency.
    pub input_timestamps_ms: T,
}

impl<T: Iterator<Item = i64>> TransactionCommitted<T> {
    pub fn emit(self, metrics: &StageMetrics) {
        let committed_ms = self
            .committed_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for ts in self.input_timestamps_ms {
            // A producer's clock ahead of ours would give a negative latency: count it as none.
            let seconds = (committed_ms - ts).max(0) as f64 / 1e3;
            metrics.event_to_commit_seconds.observe(seconds);
        }
        metrics
            .transactions
            .with_label_values(&[TransactionOutcome::Committed.label()])
            .inc();
        metrics
            .transaction_seconds
            .observe(self.elapsed.as_secs_f64());
        tracing::debug!(
            records = self.records,
            outputs = self.outputs,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "transaction committed"
        );
    }
}

/// A transaction was aborted; the batch is redone from the committed offsets and restored state.
pub struct TransactionAborted<'a> {
    pub error: &'a dyn std::fmt::Display,
    pub records: usize,
}

impl TransactionAborted<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics
            .transactions
            .with_label_values(&[TransactionOutcome::Aborted.label()])
            .inc();
        if let Some(occurrences) = LogLimiter::global().admit("transaction aborted") {
            tracing::warn!(
                error = %self.error,
                records = self.records,
                occurrences,
                "transaction aborted; restoring state and rewinding to committed offsets"
            );
        }
    }
}

/// Outcome label of the transactions counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionOutcome {
    Committed,
    Aborted,
}

impl TransactionOutcome {
    pub const ALL: [TransactionOutcome; 2] =
        [TransactionOutcome::Committed, TransactionOutcome::Aborted];
    pub fn label(self) -> &'static str {
        match self {
            TransactionOutcome::Committed => "committed",
            TransactionOutcome::Aborted => "aborted",
        }
    }
}

/// Kind label of the rebalances counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    Assigned,
    Revoked,
    Failed,
}

impl RebalanceKind {
    pub const ALL: [RebalanceKind; 3] = [
        RebalanceKind::Assigned,
        RebalanceKind::Revoked,
        RebalanceKind::Failed,
    ];
    pub fn label(self) -> &'static str {
        match self {
            RebalanceKind::Assigned => "assigned",
            RebalanceKind::Revoked => "revoked",
            RebalanceKind::Failed => "failed",
        }
    }
}

/// The group coordinator assigned or revoked input partitions, or the rebalance failed.
pub struct Rebalanced<'a> {
    pub kind: RebalanceKind,
    pub partitions: &'a [i32],
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl Rebalanced<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics
            .rebalances
            .with_label_values(&[self.kind.label()])
            .inc();
        match (self.kind, self.error) {
            (RebalanceKind::Assigned, _) => {
                metrics
                    .assigned_partitions
                    .set(self.partitions.len() as i64);
                tracing::info!(partitions = ?self.partitions, "partitions assigned");
            }
            (RebalanceKind::Revoked, _) => {
                metrics.assigned_partitions.set(0);
                tracing::info!(partitions = ?self.partitions, "partitions revoked");
            }
            (RebalanceKind::Failed, error) => {
                tracing::warn!(error = error.map(|e| e.to_string()), "rebalance error")
            }
        }
    }
}

/// State was rebuilt from the changelog for the assigned partitions.
pub struct StateRestored<'a> {
    pub changelog: &'a str,
    pub partitions: &'a [i32],
    pub keys: u64,
    pub elapsed: Duration,
}

impl StateRestored<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics.restored_state_keys.inc_by(self.keys);
        metrics.restore_seconds.observe(self.elapsed.as_secs_f64());
        tracing::info!(
            changelog = self.changelog,
            partitions = ?self.partitions,
            keys = self.keys,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "state restored"
        );
    }
}

/// A state snapshot the processor could not restore was set aside: the key starts afresh, the
/// next transaction writes the snapshot to the dead-letter topic and tombstones it.
pub struct StateQuarantined<'a> {
    pub changelog: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub error: &'a dyn std::fmt::Display,
}

impl StateQuarantined<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics.state_quarantined.inc();
        // Where, not whose: the key and the state go to the dead letter, not to the log.
        tracing::error!(
            changelog = self.changelog,
            partition = self.partition,
            offset = self.offset,
            error = %self.error,
            "state snapshot does not restore: quarantined, the key starts afresh"
        );
    }
}

/// The state of the assigned partitions could not be restored (a changelog record that does
/// not open or decode, a state format this build does not read, the restore timing out): their
/// input waits and the restore is retried with backoff, so the stage stays up, says why, and
/// its alert fires, instead of exiting into a crash loop. Logged once per attempt (attempts
/// are at least seconds apart).
pub struct StateRestoreFailed<'a> {
    pub changelog: &'a str,
    pub partitions: &'a [i32],
    pub error: &'a dyn std::fmt::Display,
    pub retry_in: Duration,
}

impl StateRestoreFailed<'_> {
    pub fn emit(&self, metrics: &StageMetrics) {
        metrics.restore_failing.set(1);
        metrics.ready.set(0);
        tracing::error!(
            changelog = self.changelog,
            partitions = ?self.partitions,
            error = %self.error,
            retry_in_s = self.retry_in.as_secs(),
            "state restore failed: the partitions' input waits until it succeeds"
        );
    }
}

/// The consumer reported an error (broker down, fetch failed). Logged at most once per
/// [`ConsumerErrorLog::INTERVAL`] with the count of errors since the last line, so an outage
/// writes a bounded number of lines; every error is counted.
pub struct ConsumerError<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl ConsumerError<'_> {
    pub fn emit(&self, metrics: &StageMetrics, log: &mut ConsumerErrorLog) {
        metrics.consumer_errors.inc();
        log.suppressed += 1;
        let due = log
            .last_line
            .is_none_or(|t| t.elapsed() >= ConsumerErrorLog::INTERVAL);
        if due {
            tracing::warn!(
                error = %self.error,
                errors_since_last_line = log.suppressed,
                "consumer error; continuing"
            );
            log.suppressed = 0;
            log.last_line = Some(Instant::now());
        }
    }
}

/// One log line per condition per [`LogLimiter::INTERVAL`], carrying how many occurrences it
/// stands for: under a broker outage a stage logs each condition (connection refused, request
/// timed out, transaction aborted, a retried operation) once per interval, not once per
/// reconnect attempt, retry or abort. Counters are never limited, only lines.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Per condition: when its last line went out, and occurrences since.
    conditions: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// Least time between two lines of one condition.
    pub const INTERVAL: Duration = Duration::from_secs(10);
    /// Most conditions tracked; beyond, unknown conditions share one slot (bounded memory even
    /// if a client invents a new message every time).
    const MAX_CONDITIONS: usize = 128;

    /// The process-wide limiter.
    pub fn global() -> &'static LogLimiter {
        static GLOBAL: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(LogLimiter::default)
    }

    /// Counts one occurrence of `condition`; `Some(n)` when a line is due now, standing for `n`
    /// occurrences (this one included), `None` when it stays quiet.
    pub fn admit(&self, condition: &str) -> Option<u64> {
        self.admit_at(condition, Instant::now())
    }

    fn admit_at(&self, condition: &str, now: Instant) -> Option<u64> {
        let Ok(mut conditions) = self.conditions.lock() else {
            return Some(1);
        };
        let key = if conditions.len() >= Self::MAX_CONDITIONS && !conditions.contains_key(condition)
        {
            "(other conditions)"
        } else {
            condition
        };
        match conditions.get_mut(key) {
            None => {
                conditions.insert(key.to_string(), (now, 0));
                Some(1)
            }
            Some((last, pending)) => {
                *pending += 1;
                if now.duration_since(*last) >= Self::INTERVAL {
                    let n = *pending;
                    *last = now;
                    *pending = 0;
                    Some(n)
                } else {
                    None
                }
            }
        }
    }
}

/// Rate limit of [`ConsumerError`] log lines.
#[derive(Debug, Default)]
pub struct ConsumerErrorLog {
    last_line: Option<Instant>,
    suppressed: u64,
}

impl ConsumerErrorLog {
    /// Least time between two consumer-error lines.
    pub const INTERVAL: Duration = Duration::from_secs(10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_logs_once_per_interval_with_its_count() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("FAIL", t0), Some(1));
        assert_eq!(
            limiter.admit_at("REQTMOUT", t0),
            Some(1),
            "conditions are apart"
        );
        let mut lines = 0;
        // 75 s of an outage, a reconnect attempt every 100 ms.
        for i in 1..=750u64 {
            if limiter
                .admit_at("FAIL", t0 + Duration::from_millis(100 * i))
                .is_some()
            {
                lines += 1;
            }
        }
        assert_eq!(lines, 7, "one line per 10 s");
        assert_eq!(
            limiter.admit_at("FAIL", t0 + Duration::from_secs(90)),
            Some(51),
            "the next line counts what it stands for"
        );
        // Unbounded conditions share one slot past the cap.
        for i in 0..1000 {
            limiter.admit_at(&format!("message {i}"), t0);
        }
        assert!(limiter.conditions.lock().unwrap().len() <= LogLimiter::MAX_CONDITIONS + 1);
    }

    #[test]
    fn consumer_errors_are_all_counted_and_logged_at_a_bounded_rate() {
        let metrics = StageMetrics::new("test-stage");
        let mut log = ConsumerErrorLog::default();
        for _ in 0..1000 {
            ConsumerError {
                error: &"broker down",
            }
            .emit(&metrics, &mut log);
        }
        assert_eq!(metrics.consumer_errors.get(), 1000);
        // One line went out at the first error; the other 999 wait for the next interval.
        assert_eq!(log.suppressed, 999);
    }

    #[test]
    fn events_update_their_counters() {
        let m = StageMetrics::new("test-stage");
        RecordDeadLettered {
            stage: "test-stage",
            reason: DeadLetterReason::OUT_OF_RANGE,
            source_topic: "t",
            source_partition: 0,
            source_offset: 1,
        }
        .emit(&m);
        TransactionAborted {
            error: &"x",
            records: 3,
        }
        .emit(&m);
        Rebalanced {
            kind: RebalanceKind::Assigned,
            partitions: &[0, 1],
            error: None,
        }
        .emit(&m);
        StateRestored {
            changelog: "c",
            partitions: &[0, 1],
            keys: 7,
            elapsed: Duration::from_millis(3),
        }
        .emit(&m);
        assert_eq!(
            m.dead_letter_records
                .with_label_values(&["OUT_OF_RANGE"])
                .get(),
            1
        );
        assert_eq!(m.transactions.with_label_values(&["aborted"]).get(), 1);
        assert_eq!(m.rebalances.with_label_values(&["assigned"]).get(), 1);
        assert_eq!(m.assigned_partitions.get(), 2);
        assert_eq!(m.restored_state_keys.get(), 7);
    }
}
