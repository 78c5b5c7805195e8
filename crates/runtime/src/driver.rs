//! The part every runtime shares: hand a record to the processor, count it, and turn a
//! rejection into a dead letter with the record's provenance and original bytes.

use std::collections::BTreeMap;

use seqmon_model::{encode, DeadLetter, DeadLetterReason, StateSnapshot};

use seqmon_processor::{Emitted, Emitter, Envelope, Processor, StageError};

use crate::events::RecordDeadLettered;
use crate::metrics::StageMetrics;

/// One key's state as it goes to the changelog, on the partition of the input it belongs to.
pub struct StateWrite {
    /// The changelog key (the processor's state record key).
    pub key: String,
    /// The input partition the key belongs to: the changelog partition it is written to.
    pub partition: i32,
    /// An encoded [`StateSnapshot`], or `None` for a tombstone.
    pub snapshot: Option<Vec<u8>>,
}

/// A processor with its metrics.
pub struct Driver {
    processor: Box<dyn Processor>,
    emitter: Emitter,
    /// The stage's metrics.
    pub metrics: StageMetrics,
    output_limit: Option<OutputLimit>,
    input_limit: Option<usize>,
}

/// The largest record the runtime can produce. An output over it could never be written: the
/// transaction would abort and the batch be redone forever, so the output is replaced by a
/// TOO_LARGE dead letter of the input that caused it, and the batch goes on.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimit {
    /// Most bytes of key and value (as produced: sealed where sealed) per record.
    pub max_record_bytes: usize,
    /// Bytes sealing adds to a value on the sensitive side (0 when nothing is sealed).
    pub sealing_overhead: usize,
}

impl OutputLimit {
    /// Bytes `e` takes as produced.
    fn produced_bytes(&self, e: &Emitted) -> usize {
        let sealed = e.role.spec().side == seqmon_model::topics::PrivacySide::Sensitive;
        e.key.len() + e.value.len() + if sealed { self.sealing_overhead } else { 0 }
    }
}

impl Driver {
    /// Wraps a processor.
    pub fn new(processor: Box<dyn Processor>) -> Self {
        let metrics = StageMetrics::new(processor.stage());
        for role in processor
            .output_roles()
            .iter()
            .chain(std::iter::once(&processor.dead_letter_role()))
        {
            metrics.output_records.with_label_values(&[role.as_str()]);
        }
        Driver {
            processor,
            emitter: Emitter::default(),
            metrics,
            output_limit: None,
            input_limit: None,
        }
    }

    /// Inputs larger than `max_bytes` become dead letters TOO_LARGE before the processor sees
    /// them (Kafka runtimes: a record no stage writes cannot grow state or outputs).
    pub fn set_input_limit(&mut self, max_bytes: usize) {
        self.input_limit = Some(max_bytes);
    }

    /// Outputs larger than `limit` become dead letters (Kafka runtimes; in-process runs have no
    /// record limit).
    pub fn set_output_limit(&mut self, limit: OutputLimit) {
        self.output_limit = Some(limit);
    }

    /// The processor.
    pub fn processor(&self) -> &dyn Processor {
        self.processor.as_ref()
    }

    /// The processor, mutably (restore, clear).
    pub fn processor_mut(&mut self) -> &mut dyn Processor {
        self.processor.as_mut()
    }

    /// Processes one record. Outputs (dead letter included) are appended to `out`; keys whose
    /// state changed are passed to `changed`.
    pub fn handle(
        &mut self,
        input: &Envelope<'_>,
        out: &mut Vec<Emitted>,
        mut changed: impl FnMut(String),
    ) -> Result<(), StageError> {
        self.metrics.input_records.inc();
        if let Some(max) = self.input_limit.filter(|max| input.value.len() > *max) {
            let detail = format!(
                "{} bytes; a stage takes at most {max} (--max-input-record-bytes)",
                input.value.len()
            );
            out.push(self.dead_letter(input, DeadLetterReason::TOO_LARGE, &detail)?);
            return Ok(());
        }
        self.processor.process(input, &mut self.emitter)?;
        let (mut records, rejection, keys) = self.emitter.take();
        keys.into_iter().for_each(&mut changed);
        if let Some(limit) = self.output_limit {
            self.replace_oversized(input, &mut records, limit)?;
        }
        match rejection {
            Some(r) => {
                // A rejected input forwards nothing but the outputs its stage keeps on a
                // rejection (those describing the rejection itself).
                for e in records
                    .into_iter()
                    .filter(|e| self.processor.survives_rejection(e.role))
                {
                    self.count_output(&e);
                    out.push(e);
                }
                out.push(self.dead_letter(input, r.reason, &r.detail)?);
            }
            None => {
                self.metrics.accepted_records.inc();
                for e in records {
                    self.count_output(&e);
                    out.push(e);
                }
            }
        }
        Ok(())
    }

    /// Dead-letters an input the runtime itself could not hand over (file mode: a line that is
    /// not JSON or does not fit the schema).
    pub fn reject_unreadable(
        &mut self,
        input: &Envelope<'_>,
        reason: DeadLetterReason,
        detail: &str,
        out: &mut Vec<Emitted>,
    ) -> Result<(), StageError> {
        self.metrics.input_records.inc();
        out.push(self.dead_letter(input, reason, detail)?);
        Ok(())
    }

    /// The changelog records for every key whose state changed (`changed`: key → input
    /// partition): each of the processor's state records wrapped in a [`StateSnapshot`] that
    /// names the stage and the record's format. Call it only for records that will be
    /// written (or dropped with the state they describe, as an aborted transaction does): a
    /// processor may note what it wrote (the feature extractor's journal of deltas).
    pub fn state_writes(
        &mut self,
        changed: &BTreeMap<String, i32>,
    ) -> Result<Vec<StateWrite>, StageError> {
        let p = &mut self.processor;
        let mut writes = Vec::with_capacity(changed.len());
        for (key, partition) in changed {
            for record in p.state_records(key)? {
                let format_version = p.state_record_format(&record);
                let snapshot = match record.value {
                    None => None,
                    Some(state) => Some(encode(&StateSnapshot {
                        stage: p.stage().to_string(),
                        key: record.key.clone(),
                        format_version,
                        state_json: state,
                    })?),
                };
                writes.push(StateWrite {
                    key: record.key,
                    partition: *partition,
                    snapshot,
                });
            }
        }
        Ok(writes)
    }

    /// Input ended: flush what the processor holds back.
    pub fn finish(&mut self, out: &mut Vec<Emitted>) -> Result<(), StageError> {
        self.processor.on_end_of_input(&mut self.emitter)?;
        let (records, _, _) = self.emitter.take();
        for e in records {
            self.count_output(&e);
            out.push(e);
        }
        Ok(())
    }

    /// Replaces every output over `limit` (dead letters aside: they are bounded by
    /// construction) with a TOO_LARGE dead letter of `input`.
    fn replace_oversized(
        &self,
        input: &Envelope<'_>,
        records: &mut [Emitted],
        limit: OutputLimit,
    ) -> Result<(), StageError> {
        let dead_letters = self.processor.dead_letter_role();
        for e in records.iter_mut() {
            let bytes = limit.produced_bytes(e);
            if e.role == dead_letters || bytes <= limit.max_record_bytes {
                continue;
            }
            let detail = format!(
                "the {} output of this record would be {bytes} bytes, over the {} bytes a \
                 record may take",
                e.role, limit.max_record_bytes
            );
            *e = self.dead_letter(input, DeadLetterReason::TOO_LARGE, &detail)?;
        }
        Ok(())
    }

    /// The record limit outputs are held to, if any.
    pub fn output_limit(&self) -> Option<OutputLimit> {
        self.output_limit
    }

    /// Most bytes of a record a dead letter carries: half the record limit at most, so the dead
    /// letter itself can always be produced.
    pub fn dead_letter_payload_cap(&self) -> usize {
        self.output_limit.map_or(MAX_DEAD_LETTER_PAYLOAD, |l| {
            MAX_DEAD_LETTER_PAYLOAD.min(l.max_record_bytes / 2)
        })
    }

    fn count_output(&self, e: &Emitted) {
        self.metrics
            .output_records
            .with_label_values(&[e.role.as_str()])
            .inc();
    }

    fn dead_letter(
        &self,
        input: &Envelope<'_>,
        reason: DeadLetterReason,
        detail: &str,
    ) -> Result<Emitted, StageError> {
        let stage = self.processor.stage();
        RecordDeadLettered {
            stage,
            reason,
            source_topic: input.topic,
            source_partition: input.partition,
            source_offset: input.offset,
        }
        .emit(&self.metrics);
        let (original_bytes, detail) =
            carried_payload(input.value, detail, self.dead_letter_payload_cap());
        // The key goes out twice (record key and source_key): bounded like the rest.
        let source_key = input
            .key
            .map(|k| k[..k.len().min(MAX_DEAD_LETTER_KEY)].to_vec());
        let record = DeadLetter {
            stage: stage.to_string(),
            reason,
            detail,
            source_topic: input.topic.to_string(),
            source_partition: input.partition,
            source_offset: input.offset,
            source_key: source_key.clone(),
            source_timestamp_ms: input.timestamp_ms,
            original_bytes,
        };
        let key = source_key
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .unwrap_or_default();
        Ok(Emitted {
            role: self.processor.dead_letter_role(),
            key,
            value: encode(&record)?,
        })
    }
}

/// Most bytes of the original record a dead letter carries: with its envelope it must stay well
/// inside the producer's message size (librdkafka's 1,000,000 by default), or the dead letter
/// itself could not be written and the batch would be redone forever. A producer with a smaller
/// limit carries at most half its limit.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 512 * 1024;

/// Most bytes of the source key a dead letter carries (as its key and as `source_key`).
pub const MAX_DEAD_LETTER_KEY: usize = 1024;

/// Most bytes of a dead letter's detail (a processor may quote the input in it).
const MAX_DEAD_LETTER_DETAIL: usize = 4096;

/// The first `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The payload a dead letter carries, and its detail (at most [`MAX_DEAD_LETTER_DETAIL`]
/// bytes): whole when it fits in `cap` bytes; else its first `cap` bytes, with the full length
/// and SHA-256 in the detail.
pub(crate) fn carried_payload(value: &[u8], detail: &str, cap: usize) -> (Vec<u8>, String) {
    let detail = bounded(detail, MAX_DEAD_LETTER_DETAIL);
    if value.len() <= cap {
        return (value.to_vec(), detail.to_string());
    }
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        value[..cap].to_vec(),
        format!(
            "{detail} [payload truncated to {cap} of {} bytes, sha256 {digest}]",
            value.len()
        ),
    )
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use seqmon_model::topics::TopicRole;
    use seqmon_model::{decode, DeadLetter};

    /// Emits, to `telemetry.validated`, the input repeated `factor` times.
    struct Amplify {
        factor: usize,
    }
    impl Processor for Amplify {
        fn stage(&self) -> &'static str {
            "amplify"
        }
        fn input_role(&self) -> TopicRole {
            TopicRole::Raw
        }
        fn output_roles(&self) -> &'static [TopicRole] {
            &[TopicRole::Validated]
        }
        fn dead_letter_role(&self) -> TopicRole {
            TopicRole::DeadLettersSensitive
        }
        fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
            out.emit_bytes(TopicRole::Validated, "k", &input.value.repeat(self.factor));
            Ok(())
        }
    }

    fn envelope(value: &[u8]) -> Envelope<'_> {
        Envelope {
            key: Some(b"k"),
            value,
            topic: "telemetry.raw",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(7),
            arrival_time_ms: None,
        }
    }

    #[test]
    fn an_output_over_the_record_limit_becomes_a_dead_letter_of_its_input() {
        let mut driver = Driver::new(Box::new(Amplify { factor: 3 }));
        driver.set_output_limit(OutputLimit {
            max_record_bytes: 1000,
            sealing_overhead: 100,
        });
        let mut out = Vec::new();
        // 3 x 299 + key 1 + sealing 100 = 998: fits.
        driver
            .handle(&envelope(&[5u8; 299]), &mut out, |_| {})
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].role, TopicRole::Validated);
        // 3 x 301 + 1 + 100 = 1004: the output is replaced by a dead letter of the input.
        out.clear();
        let input = [6u8; 301];
        driver.handle(&envelope(&input), &mut out, |_| {}).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].role, TopicRole::DeadLettersSensitive);
        let letter: DeadLetter = decode(&out[0].value).unwrap();
        assert_eq!(letter.reason, DeadLetterReason::TOO_LARGE);
        assert_eq!(letter.original_bytes, input.to_vec());
        assert_eq!((letter.source_partition, letter.source_offset), (2, 41));
        assert!(letter.detail.contains("1004 bytes"), "{}", letter.detail);
        // An input over the input limit is refused before the processor sees it.
        let mut limited = Driver::new(Box::new(Amplify { factor: 1 }));
        limited.set_input_limit(300);
        out.clear();
        limited.handle(&envelope(&input), &mut out, |_| {}).unwrap();
        let letter: DeadLetter = decode(&out[0].value).unwrap();
        assert_eq!((out.len(), letter.reason), (1, DeadLetterReason::TOO_LARGE));
        // Without a limit (in-process runs) nothing is replaced.
        let mut unlimited = Driver::new(Box::new(Amplify { factor: 3 }));
        out.clear();
        unlimited
            .handle(&envelope(&input), &mut out, |_| {})
            .unwrap();
        assert_eq!(out[0].role, TopicRole::Validated);
    }

    #[test]
    fn a_large_payload_is_truncated_with_its_length_and_hash() {
        let small = vec![7u8; 10];
        assert_eq!(
            carried_payload(&small, "d", MAX_DEAD_LETTER_PAYLOAD),
            (small.clone(), "d".to_string())
        );
        let big = vec![1u8; MAX_DEAD_LETTER_PAYLOAD + 5];
        let (carried, detail) = carried_payload(&big, &"x".repeat(10_000), MAX_DEAD_LETTER_PAYLOAD);
        assert_eq!(carried.len(), MAX_DEAD_LETTER_PAYLOAD);
        assert!(
            detail.contains(&format!("of {} bytes", big.len())),
            "{detail}"
        );
        assert!(detail.contains("sha256 "));
        assert!(detail.len() < 4096 + 200);
    }
}
