//! The stage contract: one pure, synchronous [`Processor`] per service, separate from all I/O.
//!
//! The runtime hands a processor one input record at a time, in partition order. The processor
//! decodes it, updates its own state, and puts outputs, rejections and state changes into the
//! [`Emitter`]. It never blocks, never reads a clock and never does I/O, so the same code runs in
//! the Kafka, file and embedded runtimes and a replay gives the same output.
//!
//! This crate depends on the model only: a stage that depends on it and not on the runtime shows
//! in its dependency list that its logic does no I/O.
//!
//! State contract. A stateful processor names its changelog role, serializes one key's state on
//! request ([`Processor::snapshot`], a `Result`: a failure aborts the transaction, so the
//! changelog keeps the previous state) and restores it ([`Processor::restore`]); the runtime
//! refuses a snapshot written in another [`Processor::state_format_version`] rather than misread it.
//! A stage whose state changes a little per record may write it as several changelog records per
//! key ([`Processor::state_records`]: a base and deltas, each under its own changelog key); the
//! runtime hands every record back to [`Processor::restore`] and then calls
//! [`Processor::finish_restore`] once, which assembles them.

pub mod config;

use std::collections::BTreeSet;

use seqmon_model::codec::{encode, CodecError};
use seqmon_model::topics::TopicRole;
use seqmon_model::{AvroRecord, DeadLetterReason};

pub use config::ConfigError;

/// Default of every stage's `max_event_lead_ms`: the validator lets an event time run up to 5
/// minutes ahead of its arrival (clock jitter), so 10 minutes leaves a margin and still stops a
/// glitch an hour ahead.
pub const DEFAULT_MAX_EVENT_LEAD_MS: i64 = 600_000;

/// One input record with its provenance.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Kafka key (instrument serial), if any.
    pub key: Option<&'a [u8]>,
    /// Record value as read: single-object-encoded Avro.
    pub value: &'a [u8],
    /// Source topic (or input file name in file mode).
    pub topic: &'a str,
    /// Source partition (0 in file mode).
    pub partition: i32,
    /// Source offset (line number in file mode).
    pub offset: i64,
    /// Kafka record timestamp, when there is one.
    pub timestamp_ms: Option<i64>,
    /// When the broker received the record, if the topic stamps it (LogAppendTime): a clock the
    /// sender cannot set, unlike a producer's timestamp (CreateTime) or the times in the record.
    pub arrival_time_ms: Option<i64>,
}

/// Internal error of a stage: a bug or an impossible state, never bad input. The runtime fails
/// loudly on it rather than dead-lettering, because retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An output did not encode with its own schema.
    #[error("stage output does not encode: {0}")]
    Encode(#[from] CodecError),
    /// Stored state did not parse on restore.
    #[error("state for key {key} does not restore: {message}")]
    State { key: String, message: String },
    /// State could not be serialized; the transaction is aborted so the changelog keeps the
    /// previous state of the key.
    #[error("state for key {key} does not serialize: {message}")]
    Snapshot { key: String, message: String },
    /// A snapshot was written in a state layout this build does not read.
    #[error("state for key {key} has format version {found}; this build reads {expected}")]
    StateFormat {
        key: String,
        found: i32,
        expected: i32,
    },
}

/// A record a stage produced, routed by output role (see [`seqmon_model::topics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// Output role; the runtime maps it to a topic.
    pub role: TopicRole,
    /// Kafka key.
    pub key: String,
    /// Encoded value.
    pub value: Vec<u8>,
}

/// Why a stage refused its input record.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Reason code from the fixed list.
    pub reason: DeadLetterReason,
    /// Which field or check failed; never a privacy-sensitive value.
    pub detail: String,
}

/// Collects what one `process` call produced.
#[derive(Debug, Default)]
pub struct Emitter {
    records: Vec<Emitted>,
    rejection: Option<Rejection>,
    changed_state: BTreeSet<String>,
}

impl Emitter {
    /// Encodes and emits a record to an output role.
    pub fn emit<T: AvroRecord>(
        &mut self,
        role: TopicRole,
        key: &str,
        record: &T,
    ) -> Result<(), StageError> {
        let value = encode(record)?;
        self.records.push(Emitted {
            role,
            key: key.to_string(),
            value,
        });
        Ok(())
    }

    /// Emits bytes unchanged (the validator forwards what the instrument sent).
    pub fn emit_bytes(&mut self, role: TopicRole, key: &str, value: &[u8]) {
        self.records.push(Emitted {
            role,
            key: key.to_string(),
            value: value.to_vec(),
        });
    }

    /// Refuses the current input: the runtime writes it to the dead-letter topic with its
    /// provenance, in the same transaction as everything else. Only the first rejection counts.
    pub fn reject(&mut self, reason: DeadLetterReason, detail: impl Into<String>) {
        if self.rejection.is_none() {
            self.rejection = Some(Rejection {
                reason,
                detail: detail.into(),
            });
        }
    }

    /// Marks the state of `key` as changed, so the runtime persists it with this batch.
    pub fn state_changed(&mut self, key: &str) {
        if !self.changed_state.contains(key) {
            self.changed_state.insert(key.to_string());
        }
    }

    /// Decodes the input as `T`, or refuses it with the decode error's reason and returns `None`.
    pub fn decode_or_reject<T: AvroRecord>(&mut self, input: &Envelope<'_>) -> Option<T> {
        match seqmon_model::decode::<T>(input.value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.reject(e.reason(), e.to_string());
                None
            }
        }
    }

    /// Refuses the input (OUT_OF_RANGE) when `field`, a measurement of it, is not a finite
    /// number (see the records' `non_finite_measurement`). Returns whether it was refused.
    pub fn reject_non_finite(&mut self, field: Option<String>) -> bool {
        let Some(field) = field else {
            return false;
        };
        self.reject(
            DeadLetterReason::OUT_OF_RANGE,
            format!("{field} is not a finite number"),
        );
        true
    }

    /// Refuses the input (TIMESTAMP_FUTURE) when its event time is more than `max_lead_ms`
    /// ahead of the time it arrived: the broker's receive time where the topic records it,
    /// else its Kafka timestamp (on our topics, the raw record's arrival, carried by every
    /// stage). Nothing sent arrives before it happened, so such a record is a glitch or a
    /// forgery; taken, it would move the instrument's watermark ahead and turn its real data
    /// into late events. Returns whether the input was refused (never without a timestamp).
    pub fn reject_if_ahead(
        &mut self,
        input: &Envelope<'_>,
        event_time_ms: i64,
        max_lead_ms: i64,
    ) -> bool {
        let Some(arrival) = input.arrival_time_ms.or(input.timestamp_ms) else {
            return false;
        };
        let lead = event_time_ms.saturating_sub(arrival);
        if lead <= max_lead_ms {
            return false;
        }
        self.reject(
            DeadLetterReason::TIMESTAMP_FUTURE,
            format!(
                "event time is {lead} ms ahead of the record's arrival; at most {max_lead_ms} ms"
            ),
        );
        true
    }

    /// Whether the current input was refused.
    pub fn is_rejected(&self) -> bool {
        self.rejection.is_some()
    }

    /// Takes everything collected, leaving the emitter empty for the next record.
    pub fn take(&mut self) -> (Vec<Emitted>, Option<Rejection>, BTreeSet<String>) {
        (
            std::mem::take(&mut self.records),
            self.rejection.take(),
            std::mem::take(&mut self.changed_state),
        )
    }
}

/// One record for a stage's changelog: its changelog key (the state key, or a sub-key of it that
/// the stage chose) and value, `None` for a tombstone. It goes to the partition of the input
/// record that changed the state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    /// Changelog key.
    pub key: String,
    /// Serialized state, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// A changelog key whose state could not be assembled at [`Processor::finish_restore`]: the
/// stage holds no state for the key it belongs to, and the runtime quarantines the record.
#[derive(Debug)]
pub struct RestoreFailure {
    /// The changelog key of the record to quarantine.
    pub changelog_key: String,
    /// Why.
    pub error: StageError,
}

/// A stage's logic. Required: [`Processor::process`]; every other hook has an empty default.
pub trait Processor: Send {
    /// Stage name: `validator`, `privacy-enforcer`, ... Used for metrics, dead letters, changelogs.
    fn stage(&self) -> &'static str;

    /// Topic role it reads (see [`seqmon_model::topics::CATALOGUE`]).
    fn input_role(&self) -> TopicRole;

    /// Topic roles it also reads, co-partitioned with the input role (same partition count,
    /// same key): the instance owning input partition p reads partition p of each, so a key's
    /// records from every input meet its state in one instance. None by default.
    fn side_input_roles(&self) -> &'static [TopicRole] {
        &[]
    }

    /// Output roles whose partitions it addresses by key (a broadcast choosing one key per
    /// partition with `seqmon_model::partitioning`), taking their partition count to be the
    /// input's: the Kafka runtime refuses to start when one differs or when the producer's
    /// partitioner is not Kafka's murmur2. None by default.
    fn partition_addressed_outputs(&self) -> &'static [TopicRole] {
        &[]
    }

    /// Topic roles it writes, main output first.
    fn output_roles(&self) -> &'static [TopicRole];

    /// Topic role of its dead letters.
    fn dead_letter_role(&self) -> TopicRole {
        TopicRole::DeadLetters
    }

    /// Whether outputs to `role` are kept when the same input is rejected. By default a rejected
    /// input forwards nothing; a stage keeps outputs that describe the rejection itself (the
    /// privacy enforcer's audit of why it refused a record).
    fn survives_rejection(&self, _role: TopicRole) -> bool {
        false
    }

    /// Handles one input record.
    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError>;

    /// How many partitions the input topic has: the Kafka runtime says so once, before the
    /// first record (file and embedded runs never do: they have one). A stage that merges
    /// several upstream partitions' clocks needs it to know whom it has not heard from yet.
    fn on_input_partitions(&mut self, _count: usize) {}

    /// Input ended (file mode, embedded mode): flush what waits for more input, such as open
    /// windows. Never called in Kafka mode, where input does not end.
    fn on_end_of_input(&mut self, _out: &mut Emitter) -> Result<(), StageError> {
        Ok(())
    }

    /// Topic role of the compacted changelog holding this stage's state; `None` if stateless.
    fn changelog_role(&self) -> Option<TopicRole> {
        None
    }

    /// Layout version of the bytes [`Processor::snapshot`] writes. Bump it when the layout
    /// changes; the runtime refuses to restore a snapshot of another version.
    fn state_format_version(&self) -> i32 {
        1
    }

    /// The layout version one record of [`Processor::state_records`] is written with: by default
    /// [`Processor::state_format_version`]. A stage returns a later version for a record an
    /// older build must not read (state naming a value that build's types lack), and accepts it
    /// in [`Processor::reads_state_format`]: after a rollback the older build then stops its
    /// restore, instead of quarantining the record as corrupt and losing the state.
    fn state_record_format(&self, _record: &StateRecord) -> i32 {
        self.state_format_version()
    }

    /// Whether [`Processor::restore`] reads snapshots of this layout version: by default only
    /// the version it writes. A stage that migrates an older layout says so here; the runtime
    /// refuses to restore any other.
    fn reads_state_format(&self, version: i32) -> bool {
        version == self.state_format_version()
    }

    /// Serialized state of one key, `Ok(None)` when the key has no state (a tombstone). An error
    /// aborts the transaction: the key's previous state stays on the changelog.
    fn snapshot(&self, _key: &str) -> Result<Option<Vec<u8>>, StageError> {
        Ok(None)
    }

    /// The changelog records to write for a key whose state changed in this batch. By default
    /// one record under the key itself holding [`Processor::snapshot`]; a stage may instead write
    /// what changed (deltas) under sub-keys of its own. Called once per changed key per
    /// transaction, right after the batch is processed and possibly before the previous
    /// transaction's outcome is known; when either transaction aborts, the runtime clears and
    /// restores state, so whatever the stage noted as written is rebuilt from what the
    /// changelog really holds.
    fn state_records(&mut self, key: &str) -> Result<Vec<StateRecord>, StageError> {
        Ok(vec![StateRecord {
            key: key.to_string(),
            value: self.snapshot(key)?,
        }])
    }

    /// Restores from one changelog record (any key [`Processor::state_records`] wrote, in no
    /// particular order). On an error it must hold no state for the key (decode first, then
    /// insert): the Kafka runtime then quarantines the record (a dead letter and a changelog
    /// tombstone) and the key starts afresh.
    fn restore(&mut self, _key: &str, _state: &[u8]) -> Result<(), StageError> {
        Ok(())
    }

    /// Called once after every changelog record was handed to [`Processor::restore`]: a stage
    /// that writes several records per key assembles them here. The keys it could not assemble
    /// hold no state afterwards and are returned, to be quarantined.
    fn finish_restore(&mut self) -> Vec<RestoreFailure> {
        Vec::new()
    }

    /// Drops all state (partitions revoked, or a transaction aborted and state is rebuilt).
    fn clear_state(&mut self) {}

    /// Every key that currently has state (for tests and snapshots of the whole processor).
    fn state_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The key of an envelope as text, or empty.
pub fn key_str<'a>(input: &Envelope<'a>) -> &'a str {
    input
        .key
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("")
}

/// Moves all of `from`'s state into `to` through snapshots, as a crash and restore would.
pub fn transplant_state(from: &dyn Processor, to: &mut dyn Processor) -> Result<usize, StageError> {
    to.clear_state();
    let keys = from.state_keys();
    for key in &keys {
        if let Some(state) = from.snapshot(key)? {
            to.restore(key, &state)?;
        }
    }
    if let Some(failure) = to.finish_restore().into_iter().next() {
        return Err(failure.error);
    }
    Ok(keys.len())
}
