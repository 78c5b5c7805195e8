//! The batch frame a collector POSTs to the ingest gateway: raw telemetry records as the
//! collector would have produced them to `telemetry.raw` (key, timestamp, Avro single-object
//! value), in one length-delimited body.
//!
//! ```text
//! "SQB1"                       4 bytes, magic and version
//! count                        u32 big-endian, 1..=max_records
//! count × {
//!   key_len   u16 BE, 1..=MAX_KEY_BYTES      key   (UTF-8, the instrument serial)
//!   timestamp i64 BE, ms since the epoch     (the record's Kafka timestamp)
//!   value_len u32 BE, 10..=max_value_bytes   value (Avro single-object, schema `telemetry`)
//! }
//! ```
//!
//! Decoding is the gateway's framing check: every length is checked against the bytes that are
//! left before anything is allocated, so a hostile count or length costs nothing; each value
//! must carry the single-object header of a known `telemetry` schema version. The body of the
//! record is the validator's business, not the gateway's. Every failure is a typed
//! [`FrameError`]; nothing panics.

use crate::codec::{writer_schema, CodecError, HEADER_LEN};

/// Magic and version of the frame.
pub const MAGIC: [u8; 4] = *b"SQB1";
/// Media type of the body.
pub const CONTENT_TYPE: &str = "application/vnd.seqmon.telemetry-batch.v1";
/// Longest key (an instrument serial) accepted.
pub const MAX_KEY_BYTES: usize = 128;
/// Schema every value must be written with.
pub const VALUE_SCHEMA: &str = "telemetry";

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord<'a> {
    /// Kafka key: the instrument serial.
    pub key: &'a str,
    /// Kafka timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Avro single-object value.
    pub value: &'a [u8],
}

/// Bounds the decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most records in one batch.
    pub max_records: u32,
    /// Largest value of one record, bytes.
    pub max_value_bytes: u32,
    /// Latest record timestamp accepted (the receiver's clock plus a skew allowance): the
    /// broker refuses records far in the future, which would fail a whole transaction.
    pub latest_timestamp_ms: i64,
}

/// Why a body is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body does not start with `SQB1`.
    #[error("body does not start with the batch marker SQB1")]
    BadMagic,
    /// A batch holds no record.
    #[error("batch holds no record")]
    Empty,
    /// More records than allowed.
    #[error("batch holds {count} records, more than the {max} allowed")]
    TooManyRecords { count: u32, max: u32 },
    /// A length runs past the end of the body.
    #[error("record {index}: truncated (a length runs past the end of the body)")]
    Truncated { index: u32 },
    /// A key is empty, too long, not UTF-8 or holds control characters.
    #[error(
        "record {index}: key must be 1..={MAX_KEY_BYTES} bytes of UTF-8 without control characters"
    )]
    BadKey { index: u32 },
    /// A timestamp is negative or later than allowed.
    #[error("record {index}: timestamp {timestamp_ms} is negative or too far in the future")]
    BadTimestamp { index: u32, timestamp_ms: i64 },
    /// A value is larger than allowed.
    #[error("record {index}: value of {len} bytes, more than the {max} allowed")]
    ValueTooLarge { index: u32, len: u32, max: u32 },
    /// A value is not an Avro single-object `telemetry` record.
    #[error("record {index}: {reason}")]
    BadValue { index: u32, reason: String },
    /// Bytes after the last record.
    #[error("{0} bytes after the last record")]
    Trailing(usize),
}

/// Appends one record to a frame body started by [`begin`].
pub fn push(out: &mut Vec<u8>, key: &str, timestamp_ms: i64, value: &[u8]) {
    // Keys are instrument serials and values single records: both far below the limits, which
    // the gateway checks again anyway.
    let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&key.as_bytes()[..key_len as usize]);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    let value_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&value_len.to_be_bytes());
    out.extend_from_slice(&value[..value_len as usize]);
}

/// A frame body for `count` records, to be followed by `count` calls of [`push`].
pub fn begin(count: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + count as usize * 256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&count.to_be_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }
}

/// Checks a body and returns its records, borrowing from it.
pub fn decode(body: &[u8], limits: FrameLimits) -> Result<Vec<BatchRecord<'_>>, FrameError> {
    let mut r = Reader { bytes: body, at: 0 };
    if r.array::<4>() != Some(MAGIC) {
        return Err(FrameError::BadMagic);
    }
    let count = r
        .array::<4>()
        .map(u32::from_be_bytes)
        .ok_or(FrameError::Truncated { index: 0 })?;
    if count == 0 {
        return Err(FrameError::Empty);
    }
    if count > limits.max_records {
        return Err(FrameError::TooManyRecords {
            count,
            max: limits.max_records,
        });
    }
    // Each record takes at least 2 + 1 + 8 + 4 + HEADER_LEN bytes, so a count the body cannot
    // hold fails here, before the vector is sized by it.
    let min_record = 2 + 1 + 8 + 4 + HEADER_LEN;
    if (count as usize).saturating_mul(min_record) > body.len() - r.at {
        return Err(FrameError::Truncated { index: 0 });
    }
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        let truncated = FrameError::Truncated { index };
        let key_len = r
            .array::<2>()
            .map(u16::from_be_bytes)
            .ok_or(truncated.clone())? as usize;
        let key = r.take(key_len).ok_or(truncated.clone())?;
        let key = std::str::from_utf8(key)
            .ok()
            .filter(|k| {
                !k.is_empty() && k.len() <= MAX_KEY_BYTES && !k.chars().any(char::is_control)
            })
            .ok_or(FrameError::BadKey { index })?;
        let timestamp_ms = r
            .array::<8>()
            .map(i64::from_be_bytes)
            .ok_or(truncated.clone())?;
        if !(0..=limits.latest_timestamp_ms).contains(&timestamp_ms) {
            return Err(FrameError::BadTimestamp {
                index,
                timestamp_ms,
            });
        }
        let len = r
            .array::<4>()
            .map(u32::from_be_bytes)
            .ok_or(truncated.clone())?;
        if len > limits.max_value_bytes {
            return Err(FrameError::ValueTooLarge {
                index,
                len,
                max: limits.max_value_bytes,
            });
        }
        let value = r.take(len as usize).ok_or(truncated)?;
        match writer_schema(value) {
            Ok((entry, _)) if entry.name == VALUE_SCHEMA => {}
            Ok((entry, _)) => {
                return Err(FrameError::BadValue {
                    index,
                    reason: CodecError::WrongSchema {
                        expected: VALUE_SCHEMA,
                        found: format!("{} v{}", entry.name, entry.version),
                    }
                    .to_string(),
                })
            }
            Err(e) => {
                return Err(FrameError::BadValue {
                    index,
                    reason: e.to_string(),
                })
            }
        }
        out.push(BatchRecord {
            key,
            timestamp_ms,
            value,
        });
    }
    match body.len() - r.at {
        0 => Ok(out),
        n => Err(FrameError::Trailing(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_records: 100,
        max_value_bytes: 4096,
        latest_timestamp_ms: 1_800_000_000_000,
    };

    fn telemetry(serial: &str) -> Vec<u8> {
        let mut t = crate::codec::tests::sample_telemetry();
        t.instrument_serial = serial.into();
        crate::encode(&t).expect("encodes")
    }

    fn batch(n: u32) -> Vec<u8> {
        let mut b = begin(n);
        for i in 0..n {
            push(
                &mut b,
                &format!("M{i:05}"),
                1_700_000_000_000 + i as i64,
                &telemetry(&format!("M{i:05}")),
            );
        }
        b
    }

    #[test]
    fn round_trips() {
        let b = batch(3);
        let records = decode(&b, LIMITS).expect("decodes");
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].key, "M00002");
        assert_eq!(records[2].timestamp_ms, 1_700_000_000_002);
        assert_eq!(records[2].value, telemetry("M00002").as_slice());
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let b = batch(3);
        for cut in 0..b.len() {
            let e = decode(&b[..cut], LIMITS).expect_err("a prefix is not a batch");
            assert!(
                matches!(
                    e,
                    FrameError::BadMagic
                        | FrameError::Truncated { .. }
                        | FrameError::BadValue { .. }
                ),
                "cut at {cut}: {e:?}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long, LIMITS), Err(FrameError::Trailing(1)));
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused_before_allocation() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(
                &b,
                FrameLimits {
                    max_records: u32::MAX,
                    ..LIMITS
                }
            ),
            Err(FrameError::Truncated { index: 0 })
        ));
        assert!(matches!(
            decode(&b, LIMITS),
            Err(FrameError::TooManyRecords { .. })
        ));
        assert_eq!(decode(&begin(0), LIMITS), Err(FrameError::Empty));
        let mut big = begin(1);
        push(&mut big, "M1", 0, &vec![0u8; 5000]);
        assert!(matches!(
            decode(&big, LIMITS),
            Err(FrameError::ValueTooLarge {
                index: 0,
                len: 5000,
                ..
            })
        ));
    }

    #[test]
    fn values_must_be_telemetry_and_keys_utf8() {
        let mut b = begin(1);
        push(&mut b, "M1", 0, b"not avro at all");
        assert!(matches!(
            decode(&b, LIMITS),
            Err(FrameError::BadValue { index: 0, .. })
        ));
        let alert = crate::encode(&crate::records::StateSnapshot {
            stage: "x".into(),
            key: "k".into(),
            format_version: 1,
            state_json: vec![],
        })
        .expect("encodes");
        let mut b = begin(1);
        push(&mut b, "M1", 0, &alert);
        let e = decode(&b, LIMITS).expect_err("wrong schema");
        assert!(e.to_string().contains("expected telemetry"), "{e}");
        let mut b = begin(1);
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&[0xff, 0xfe]);
        b.extend_from_slice(&0i64.to_be_bytes());
        let v = telemetry("M1");
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(&v);
        assert_eq!(decode(&b, LIMITS), Err(FrameError::BadKey { index: 0 }));
        let mut b = begin(1);
        push(&mut b, "M1\n\x1b[31m", 0, &telemetry("M1"));
        assert_eq!(decode(&b, LIMITS), Err(FrameError::BadKey { index: 0 }));
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        for ts in [-1, i64::MIN, 1_800_000_000_001, i64::MAX] {
            let mut b = begin(1);
            push(&mut b, "M1", ts, &telemetry("M1"));
            assert_eq!(
                decode(&b, LIMITS),
                Err(FrameError::BadTimestamp {
                    index: 0,
                    timestamp_ms: ts
                })
            );
        }
    }
}
