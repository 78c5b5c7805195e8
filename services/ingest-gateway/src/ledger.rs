//! Which batches are already in `telemetry.raw` (receipts) and which are being committed
//! (in flight), keyed by the SHA-256 of client identity and idempotency key. Pure: the caller
//! passes the clock; the committer persists receipts in the changelog and this module encodes
//! and decodes them.
//!
//! A receipt is kept for the idempotency window, then expires; memory is bounded by
//! `max_receipts` (the oldest go first, counted, so an operator sees that the window is
//! shorter than configured).

use std::collections::{HashMap, HashSet, VecDeque};

use seqmon_model::StateSnapshot;
use sha2::{Digest, Sha256};

/// The changelog's state format version of a receipt.
pub const RECEIPT_FORMAT_VERSION: i32 = 1;

/// Key of a batch: SHA-256 of client identity and idempotency key (neither readable on the
/// changelog).
pub type BatchKey = [u8; 32];

/// The key of a batch.
pub fn batch_key(client: &str, idempotency_key: &str) -> BatchKey {
    let mut h = Sha256::new();
    h.update(client.as_bytes());
    h.update([0u8]);
    h.update(idempotency_key.as_bytes());
    h.finalize().into()
}

/// The SHA-256 of a request body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What was committed for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// SHA-256 of the body: the same key with another body is a client bug, not a retry.
    pub digest: [u8; 32],
    /// Records written.
    pub records: u32,
    /// When it was committed, ms since the epoch.
    pub committed_ms: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ReceiptJson {
    digest: String,
    records: u32,
    committed_ms: i64,
}

impl Receipt {
    /// The changelog record of this receipt (key: hex of the batch key).
    pub fn to_snapshot(&self, key: &BatchKey) -> StateSnapshot {
        let json = ReceiptJson {
            digest: hex(&self.digest),
            records: self.records,
            committed_ms: self.committed_ms,
        };
        StateSnapshot {
            stage: "ingest-gateway".into(),
            key: hex(key),
            format_version: RECEIPT_FORMAT_VERSION,
            state_json: serde_json::to_vec(&json).unwrap_or_default(),
        }
    }

    /// A receipt read back from the changelog.
    pub fn from_snapshot(key: &str, s: &StateSnapshot) -> Result<(BatchKey, Receipt), String> {
        if s.format_version != RECEIPT_FORMAT_VERSION {
            return Err(format!(
                "receipt format version {} (this build reads {RECEIPT_FORMAT_VERSION})",
                s.format_version
            ));
        }
        let k = unhex32(key).ok_or("receipt key is not 64 hex digits")?;
        let j: ReceiptJson = serde_json::from_slice(&s.state_json).map_err(|e| e.to_string())?;
        let digest = unhex32(&j.digest).ok_or("receipt digest is not 64 hex digits")?;
        Ok((
            k,
            Receipt {
                digest,
                records: j.records,
                committed_ms: j.committed_ms,
            },
        ))
    }
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Not seen: it is now in flight; write it.
    New,
    /// Already committed with the same body: answer as before, write nothing.
    Duplicate(Receipt),
    /// Already committed with another body under the same key.
    KeyReused,
    /// The same key is being committed right now.
    InFlight,
}

/// Receipts and batches in flight.
#[derive(Debug)]
pub struct Ledger {
    window_ms: i64,
    max_receipts: usize,
    receipts: HashMap<BatchKey, Receipt>,
    /// Insertion order, for expiry and the memory bound.
    order: VecDeque<(i64, BatchKey)>,
    in_flight: HashSet<BatchKey>,
    evicted: u64,
}

impl Ledger {
    /// A ledger keeping receipts for `window_ms`, at most `max_receipts` of them.
    pub fn new(window_ms: i64, max_receipts: usize) -> Self {
        Self {
            window_ms,
            max_receipts,
            receipts: HashMap::new(),
            order: VecDeque::new(),
            in_flight: HashSet::new(),
            evicted: 0,
        }
    }

    /// Decides about a batch and, when it is new, marks it in flight.
    pub fn admit(&mut self, key: BatchKey, digest: [u8; 32], now_ms: i64) -> Admission {
        self.expire(now_ms);
        if let Some(r) = self.receipts.get(&key) {
            return if r.digest == digest {
                Admission::Duplicate(*r)
            } else {
                Admission::KeyReused
            };
        }
        if !self.in_flight.insert(key) {
            return Admission::InFlight;
        }
        Admission::New
    }

    /// The batch was committed: keep its receipt.
    pub fn committed(&mut self, key: BatchKey, receipt: Receipt) {
        self.in_flight.remove(&key);
        self.insert(key, receipt);
    }

    /// The batch was not written (aborted): a retry may write it.
    pub fn released(&mut self, key: &BatchKey) {
        self.in_flight.remove(key);
    }

    /// A receipt read back from the changelog at start-up (expired ones are skipped).
    pub fn restore(&mut self, key: BatchKey, receipt: Receipt, now_ms: i64) {
        if receipt.committed_ms + self.window_ms > now_ms {
            self.insert(key, receipt);
        }
    }

    fn insert(&mut self, key: BatchKey, receipt: Receipt) {
        if self.receipts.insert(key, receipt).is_none() {
            self.order.push_back((receipt.committed_ms, key));
        }
        while self.receipts.len() > self.max_receipts {
            match self.order.pop_front() {
                Some((_, k)) => {
                    if self.receipts.remove(&k).is_some() {
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some((at, k)) = self.order.front().copied() {
            if at + self.window_ms > now_ms {
                break;
            }
            self.order.pop_front();
            self.receipts.remove(&k);
        }
    }

    /// Receipts held.
    pub fn len(&self) -> usize {
        self.receipts.len()
    }

    /// Whether no receipt is held.
    pub fn is_empty(&self) -> bool {
        self.receipts.is_empty()
    }

    /// Receipts dropped before their window ended because of `max_receipts`.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(d: u8, at: i64) -> Receipt {
        Receipt {
            digest: [d; 32],
            records: 3,
            committed_ms: at,
        }
    }

    #[test]
    fn a_batch_is_written_once_and_a_reused_key_is_refused() {
        let mut l = Ledger::new(1_000, 10);
        let k = batch_key("site-a", "b-1");
        assert_eq!(l.admit(k, [1; 32], 0), Admission::New);
        assert_eq!(l.admit(k, [1; 32], 1), Admission::InFlight);
        l.committed(k, receipt(1, 2));
        assert_eq!(l.admit(k, [1; 32], 3), Admission::Duplicate(receipt(1, 2)));
        assert_eq!(l.admit(k, [2; 32], 3), Admission::KeyReused);
        // The same idempotency key from another site is another batch.
        assert_eq!(
            l.admit(batch_key("site-b", "b-1"), [1; 32], 3),
            Admission::New
        );
        // After the window the key is free again.
        assert_eq!(l.admit(k, [2; 32], 1_002), Admission::New);
    }

    #[test]
    fn an_aborted_batch_may_be_retried() {
        let mut l = Ledger::new(1_000, 10);
        let k = batch_key("site-a", "b-1");
        assert_eq!(l.admit(k, [1; 32], 0), Admission::New);
        l.released(&k);
        assert_eq!(l.admit(k, [1; 32], 0), Admission::New);
    }

    #[test]
    fn memory_is_bounded_and_evictions_are_counted() {
        let mut l = Ledger::new(1_000_000, 2);
        for i in 0..5u8 {
            l.committed(batch_key("s", &i.to_string()), receipt(i, i64::from(i)));
        }
        assert_eq!(l.len(), 2);
        assert_eq!(l.evicted(), 3);
        assert_eq!(
            l.admit(batch_key("s", "4"), [4; 32], 5),
            Admission::Duplicate(receipt(4, 4))
        );
    }

    #[test]
    fn receipts_round_trip_through_the_changelog_form() {
        let k = batch_key("site-a", "b-1");
        let r = receipt(7, 42);
        let snap = r.to_snapshot(&k);
        assert!(!String::from_utf8_lossy(&snap.state_json).contains("site-a"));
        assert_eq!(Receipt::from_snapshot(&snap.key, &snap), Ok((k, r)));
        let mut old = snap.clone();
        old.format_version = 99;
        assert!(Receipt::from_snapshot(&old.key, &old).is_err());
        assert!(Receipt::from_snapshot("zz", &snap).is_err());
        let mut l = Ledger::new(100, 10);
        l.restore(k, r, 200);
        assert!(l.is_empty(), "an expired receipt is not restored");
        l.restore(k, r, 100);
        assert_eq!(l.len(), 1);
    }
}
