//! How the feature extractor's state reaches its changelog: a base and deltas, in Avro.
//!
//! An instrument's open windows change with every sample (16 sums move at once), so writing its
//! whole state after every transaction (as the JSON snapshots of state format 1 did, ~4 kB per
//! input record) cost more bytes than the telemetry itself. Here what changed is written
//! instead: a **delta** holds the input records folded in since the last write, as read
//! (changelog key `<serial>\u{1f}d<slot>`), and every [`MAX_DELTAS`] deltas, or when the deltas
//! outgrow [`DELTA_BYTES_PER_BASE_BYTE`] times the base, a **base** holds the whole state (key
//! `<serial>`). Both are records of `schemas/feature_extractor_state/v1.avsc` inside the usual
//! `StateSnapshot` envelope (state format 2). A restore decodes the base and runs its deltas'
//! inputs through the extractor again in order, discarding what they emit: the extractor is a
//! pure function of its input (event time, never the clock), so the state is the same bits.
//!
//! Guarantees: the changelog's compacted view always holds, per instrument, one base and the
//! slots 1..=n of the deltas written after it (a delta is written only after its base, in the
//! same or a later transaction; each slot key's latest record is the newest delta of that slot);
//! slots above n are an older base's, recognised by their `base_offset` and ignored. A base's
//! identity is the input offset of the last record it folds in, so a new base never takes an old
//! one's. Failure: a base or delta that does not decode, or deltas with a gap, leave the
//! instrument without state (it starts afresh) and the base is quarantined by the runtime.
//! State format 1 (JSON, one record per instrument) still restores, as a base without deltas.

use std::collections::BTreeMap;

use seqmon_model::FoldedInput;
use seqmon_processor::Envelope;

/// Deltas an instrument may have after its base before the next write is a base: bounds the
/// records a restore reads and replays per instrument (at one input per delta, 16 inputs).
pub(crate) const MAX_DELTAS: u32 = 16;
/// Delta bytes, relative to the base's size, after which the next write is a base: with large
/// transactions (many inputs per delta) this bounds what a restore reads to 5 bases' worth.
pub(crate) const DELTA_BYTES_PER_BASE_BYTE: usize = 4;
/// Separates the serial from the delta slot in a changelog key (a serial never holds it).
const DELTA_KEY_SEPARATOR: char = '\u{1f}';

/// What an input adds to a delta besides its value (offset, timestamps), roughly.
const INPUT_OVERHEAD: usize = 16;

/// An input's size on the changelog, roughly (the value dominates).
fn weight(input: &FoldedInput) -> usize {
    input.value.len() + INPUT_OVERHEAD
}

/// What the changelog holds for one instrument, as far as this instance wrote or restored it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Journal {
    /// Identity of the base on the changelog; `None` when there is none this build wrote (a new
    /// instrument, or state restored from format 1), so the next write is a base.
    pub base_offset: Option<i64>,
    /// Its encoded size.
    pub base_bytes: usize,
    /// Deltas written after it, and their bytes.
    pub deltas: u32,
    pub delta_bytes: usize,
    /// Inputs folded in since the last write (none kept once there were too many for a delta).
    pub pending: Vec<FoldedInput>,
    /// Offset of the last input folded in since the last write: `None` when nothing changed.
    pub last_input_offset: Option<i64>,
    /// More inputs came than a delta holds ([`MAX_PENDING_INPUTS`]), or no changelog takes them
    /// (file and embedded runs): they were not kept, so the next write is a base.
    pub overflowed: bool,
}

/// Most inputs one instrument's delta holds (a transaction rarely brings more of one
/// instrument): beyond, the next write is a base instead, so memory stays bounded where no
/// changelog drains the journal (file mode, embedded runs, replays): ~5 kB per instrument.
pub(crate) const MAX_PENDING_INPUTS: usize = 16;
/// Most bytes of inputs one delta holds: a delta stays far below the broker's record limit
/// (1 MiB by default) even when its inputs are large log records; beyond, the next write is a base.
pub(crate) const MAX_PENDING_BYTES: usize = 256 * 1024;

impl Journal {
    /// Notes an input folded into the state; its bytes are copied only while a delta can hold
    /// them.
    pub fn fold(&mut self, input: &Envelope<'_>) {
        self.last_input_offset = Some(input.offset);
        if self.overflowed {
            return;
        }
        let bytes: usize =
            self.pending.iter().map(weight).sum::<usize>() + input.value.len() + INPUT_OVERHEAD;
        if self.pending.len() >= MAX_PENDING_INPUTS || bytes > MAX_PENDING_BYTES {
            self.pending = Vec::new();
            self.overflowed = true;
        } else {
            self.pending.push(FoldedInput {
                offset: input.offset,
                timestamp_ms: input.timestamp_ms,
                arrival_time_ms: input.arrival_time_ms,
                value: input.value.to_vec(),
            });
        }
    }

    /// Whether the pending inputs go out as a base rather than as one more delta.
    pub fn next_is_base(&self) -> bool {
        let pending: usize = self.pending.iter().map(weight).sum();
        self.base_offset.is_none()
            || self.overflowed
            || self.deltas >= MAX_DELTAS
            || self.delta_bytes + pending > self.base_bytes * DELTA_BYTES_PER_BASE_BYTE
    }
}

/// A changelog key of the feature extractor: an instrument's base or one of its delta slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChangelogKey<'a> {
    Base(&'a str),
    Delta(&'a str, u32),
}

impl<'a> ChangelogKey<'a> {
    /// Reads a changelog key; `None` for one this build never writes.
    pub fn parse(key: &'a str) -> Option<Self> {
        match key.split_once(DELTA_KEY_SEPARATOR) {
            None => Some(ChangelogKey::Base(key)),
            Some((serial, slot)) => {
                let slot: u32 = slot.strip_prefix('d')?.parse().ok()?;
                (1..=MAX_DELTAS)
                    .contains(&slot)
                    .then_some(ChangelogKey::Delta(serial, slot))
            }
        }
    }

    /// The changelog key of a delta slot.
    pub fn delta(serial: &str, slot: u32) -> String {
        format!("{serial}{DELTA_KEY_SEPARATOR}d{slot}")
    }
}

/// The deltas a restore collected for one instrument (its base is restored at once).
#[derive(Debug, Default)]
pub(crate) struct Restoring {
    /// Deltas by slot.
    pub deltas: BTreeMap<u32, RestoredDelta>,
}

/// One delta as a restore read it.
#[derive(Debug)]
pub(crate) struct RestoredDelta {
    /// The base it follows.
    pub base_offset: i64,
    pub inputs: Vec<FoldedInput>,
    /// Its encoded size.
    pub bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_keeps_at_most_a_delta_s_worth_of_inputs() {
        let large = vec![0; 100_000];
        let small = vec![0; 10];
        fn input(offset: i64, value: &[u8]) -> Envelope<'_> {
            Envelope {
                key: None,
                value,
                topic: "",
                partition: 0,
                offset,
                timestamp_ms: None,
                arrival_time_ms: None,
            }
        }
        let mut j = Journal {
            base_offset: Some(0),
            base_bytes: 1 << 30,
            ..Journal::default()
        };
        j.fold(&input(1, &large));
        j.fold(&input(2, &large));
        assert!(!j.overflowed && !j.next_is_base());
        // A third large log record would take the delta past its byte bound.
        j.fold(&input(3, &large));
        assert!(j.overflowed && j.pending.is_empty() && j.next_is_base());
        assert_eq!(j.last_input_offset, Some(3));
        let mut j = Journal {
            base_offset: Some(0),
            base_bytes: 1 << 30,
            ..Journal::default()
        };
        for i in 0..=MAX_PENDING_INPUTS as i64 {
            j.fold(&input(i, &small));
        }
        assert!(j.overflowed && j.next_is_base());
    }

    #[test]
    fn changelog_keys_read_back() {
        assert_eq!(
            ChangelogKey::parse("A00001"),
            Some(ChangelogKey::Base("A00001"))
        );
        let d = ChangelogKey::delta("A00001", 7);
        assert_eq!(
            ChangelogKey::parse(&d),
            Some(ChangelogKey::Delta("A00001", 7))
        );
        for bad in [
            "A\u{1f}x1",
            "A\u{1f}d0",
            "A\u{1f}d17",
            "A\u{1f}d-1",
            "A\u{1f}",
        ] {
            assert_eq!(ChangelogKey::parse(bad), None, "{bad:?}");
        }
    }
}
