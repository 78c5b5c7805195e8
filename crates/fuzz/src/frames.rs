//! Framings around the records: the ingest gateway's batch frame and file mode's JSON lines.
//!
//! Guarantees checked on every input, besides "no panic":
//! - ingest frame: a body that decodes re-frames (`ingest::begin` + `push`) to the same bytes,
//!   every record holds a key within the limits and a `telemetry` header, and with the widest
//!   limits nothing is allocated beyond what the body can hold (the count is checked first);
//! - JSON lines: lines are split as file mode splits them (`file::read_line`, bounded); a line
//!   that converts to a record of some schema gives single-object bytes that both apache-avro
//!   and the direct decoder read back, and whose JSON form (`avro_to_json`) converts again to
//!   the same value.

use std::io::BufReader;

use apache_avro::types::Value;
use seqmon_model::codec::decode_value;
use seqmon_model::ingest::{self, FrameLimits, MAX_KEY_BYTES};
use seqmon_model::json::avro_to_json;
use seqmon_model::{
    decode, Alert, AlertCommand, Anomaly, AvroRecord, CohortSignal, DeadLetter, Feature,
    MaintenanceEntry, PrivacyAudit, SanitizedTelemetry, StateSnapshot, Telemetry,
};
use seqmon_runtime::file::{json_line_to_avro, read_line, Line};

/// The gateway's limits as deployed (defaults), and the widest a configuration allows.
const LIMITS: [FrameLimits; 2] = [
    FrameLimits {
        max_records: 500,
        max_value_bytes: 1_000_000,
        latest_timestamp_ms: 1_800_000_000_000,
    },
    FrameLimits {
        max_records: u32::MAX,
        max_value_bytes: u32::MAX,
        latest_timestamp_ms: i64::MAX,
    },
];

/// `ingest::decode`, the gateway's framing check.
pub fn ingest_frame(data: &[u8]) {
    for limits in LIMITS {
        let Ok(records) = ingest::decode(data, limits) else {
            continue;
        };
        assert!(!records.is_empty() && records.len() as u64 <= u64::from(limits.max_records));
        let mut again = ingest::begin(records.len() as u32);
        for r in &records {
            assert!(!r.key.is_empty() && r.key.len() <= MAX_KEY_BYTES);
            assert!((0..=limits.latest_timestamp_ms).contains(&r.timestamp_ms));
            ingest::push(&mut again, r.key, r.timestamp_ms, r.value);
            // What the validator then does with each value.
            let _ = decode::<Telemetry>(r.value);
        }
        assert_eq!(again, data, "a decoded frame does not re-frame to itself");
    }
}

/// Record types file mode reads (every stage's input schema is one of them).
const SCHEMAS: &[&str] = &[
    "telemetry",
    "sanitized_telemetry",
    "feature",
    "anomaly",
    "alert",
    "alert_command",
    "cohort_signal",
    "maintenance_entry",
    "dead_letter",
    "privacy_audit",
    "state_snapshot",
];

/// Longest line, as `--max-line-bytes` would bound it (small, so the fuzzer reaches the limit).
const MAX_LINE: usize = 4096;

/// File mode's JSON lines: each line against every record schema.
pub fn jsonl(data: &[u8]) {
    let mut input = BufReader::with_capacity(64, data);
    let mut lines = 0usize;
    while let Ok(Some(line)) = read_line(&mut input, MAX_LINE) {
        lines += 1;
        assert!(lines <= data.len(), "more lines than bytes");
        let raw = match line {
            Line::Whole(raw) => {
                assert!(raw.len() <= MAX_LINE);
                raw
            }
            Line::TooLong(head, len) => {
                assert!(len > MAX_LINE && head.len() <= 4096 && head.len() <= len);
                continue;
            }
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        for schema in SCHEMAS {
            let Ok(converted) = json_line_to_avro(text, schema) else {
                continue;
            };
            let value = read_back(schema, &converted.bytes);
            let json = avro_to_json(&value).to_string();
            let again = match json_line_to_avro(&json, schema) {
                Ok(c) => c,
                Err(e) => panic!("the JSON form {json} of a {schema} line does not convert: {e:?}"),
            };
            assert_eq!(
                read_back(schema, &again.bytes),
                value,
                "{schema}: JSON → Avro → JSON → Avro changed the value"
            );
            assert_eq!(again.key, converted.key);
        }
    }
}

/// Decodes bytes file mode wrote, with apache-avro and with the direct decoder.
fn read_back(schema: &str, bytes: &[u8]) -> Value {
    let value = match decode_value(bytes, static_name(schema)) {
        Ok((_, v)) => v,
        Err(e) => panic!("{schema}: bytes written from JSON do not decode: {e}"),
    };
    let direct = match schema {
        "telemetry" => typed::<Telemetry>(bytes),
        "sanitized_telemetry" => typed::<SanitizedTelemetry>(bytes),
        "feature" => typed::<Feature>(bytes),
        "anomaly" => typed::<Anomaly>(bytes),
        "alert" => typed::<Alert>(bytes),
        "alert_command" => typed::<AlertCommand>(bytes),
        "cohort_signal" => typed::<CohortSignal>(bytes),
        "maintenance_entry" => typed::<MaintenanceEntry>(bytes),
        "dead_letter" => typed::<DeadLetter>(bytes),
        "privacy_audit" => typed::<PrivacyAudit>(bytes),
        "state_snapshot" => typed::<StateSnapshot>(bytes),
        other => panic!("no Rust type for {other}"),
    };
    if let Err(e) = direct {
        panic!("{schema}: the direct decoder refuses bytes apache-avro wrote: {e}");
    }
    value
}

fn typed<T: AvroRecord>(bytes: &[u8]) -> Result<(), seqmon_model::CodecError> {
    decode::<T>(bytes).map(|_| ())
}

fn static_name(schema: &str) -> &'static str {
    SCHEMAS
        .iter()
        .find(|s| **s == schema)
        .copied()
        .unwrap_or("telemetry")
}
