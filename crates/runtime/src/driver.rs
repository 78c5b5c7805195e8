//! The part every runtime shares: hand a record to the processor, count it, and turn a
//! rejection into a dead letter with the record's provenance and original bytes.

use seqmon_model::{encode, DeadLetter, DeadLetterReason};

use seqmon_processor::{Emitted, Emitter, Envelope, Processor, StageError};

use crate::events::RecordDeadLettered;
use crate::metrics::StageMetrics;

/// A processor with its metrics.
pub struct Driver {
    processor: Box<dyn Processor>,
    emitter: Emitter,
    /// The stage's metrics.
    pub metrics: StageMetrics,
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
        }
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
        self.processor.process(input, &mut self.emitter)?;
        let (records, rejection, keys) = self.emitter.take();
        keys.into_iter().for_each(&mut changed);
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
        let (original_bytes, detail) = carried_payload(input.value, detail);
        let record = DeadLetter {
            stage: stage.to_string(),
            reason,
            detail,
            source_topic: input.topic.to_string(),
            source_partition: input.partition,
            source_offset: input.offset,
            source_key: input.key.map(<[u8]>::to_vec),
            source_timestamp_ms: input.timestamp_ms,
            original_bytes,
        };
        let key = input
            .key
            .map(|k| String::from_utf8_lossy(k).into_owned())
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
/// itself could not be written and the batch would be redone forever.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 512 * 1024;

/// The payload a dead letter carries, and its detail: whole when it fits; else its first
/// [`MAX_DEAD_LETTER_PAYLOAD`] bytes, with the full length and SHA-256 in the detail.
fn carried_payload(value: &[u8], detail: &str) -> (Vec<u8>, String) {
    if value.len() <= MAX_DEAD_LETTER_PAYLOAD {
        return (value.to_vec(), detail.to_string());
    }
    use sha2::{Digest, Sha256};
    let digest: String = Sha256::digest(value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The detail is bounded too (a processor may quote the input in it).
    let detail: String = detail.chars().take(4096).collect();
    (
        value[..MAX_DEAD_LETTER_PAYLOAD].to_vec(),
        format!(
            "{detail} [payload truncated to {MAX_DEAD_LETTER_PAYLOAD} of {} bytes, sha256 {digest}]",
            value.len()
        ),
    )
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn a_large_payload_is_truncated_with_its_length_and_hash() {
        let small = vec![7u8; 10];
        assert_eq!(
            carried_payload(&small, "d"),
            (small.clone(), "d".to_string())
        );
        let big = vec![1u8; MAX_DEAD_LETTER_PAYLOAD + 5];
        let (carried, detail) = carried_payload(&big, &"x".repeat(10_000));
        assert_eq!(carried.len(), MAX_DEAD_LETTER_PAYLOAD);
        assert!(
            detail.contains(&format!("of {} bytes", big.len())),
            "{detail}"
        );
        assert!(detail.contains("sha256 "));
        assert!(detail.len() < 4096 + 200);
    }
}
