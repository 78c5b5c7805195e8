//! Avro single-object decoding of every record type in the catalogue.
//!
//! Guarantees checked on every input, besides "no panic":
//! - the direct decoder (`codec::decode`, `fast::from_slice` behind it) and apache-avro's generic
//!   decode (`codec::decode_via_value`, which also exercises `decode_value` and `writer_schema`)
//!   agree: both the same value, or both an error. The one documented exception: apache-avro
//!   0.21 reads a string, boolean or union index cut off by the end of the input as null, where
//!   the direct decoder refuses the truncated record (see `crates/model/src/fast.rs`);
//! - a decoded record re-encodes, and the re-encoded bytes decode to the same record (compared
//!   by their encoding, so a NaN reading equals itself);
//! - every failure is a typed `CodecError` whose dead-letter reason is a decoding one.

use std::fmt::Debug;

use seqmon_model::codec::{
    decode, decode_via_value, header, writer_schema, CodecError, HEADER_LEN,
};
use seqmon_model::{
    encode, store, Alert, AlertCommand, Anomaly, AnomalyDetectorState, AvroRecord, CohortSignal,
    DeadLetter, DeadLetterReason, Feature, FeatureExtractorState, MaintenanceEntry, PrivacyAudit,
    SanitizedTelemetry, StateSnapshot, Telemetry,
};

/// Raw bytes as a reader takes them: single-object (`C3 01`, fingerprint, body) or the
/// Confluent framing (`00`, schema id, body).
pub fn single_object(data: &[u8]) {
    match writer_schema(data) {
        Ok((writer, _)) => by_name(writer.name, data),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    CodecError::TooShort(_)
                        | CodecError::BadMagic
                        | CodecError::UnknownSchema(_)
                        // A Confluent-framed header (00 + id) whose id no registry gave us.
                        | CodecError::UnknownSchemaId { .. }
                ),
                "a header error is not a header error: {e:?}"
            );
            // Every typed decoder refuses the same bytes.
            assert!(decode::<Telemetry>(data).is_err());
        }
    }
}

/// A schema version chosen by the first byte (all versions of all record types, so old
/// versions get as much attention as new ones), then the Avro body.
pub fn body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let entries = store().entries();
    let entry = &entries[usize::from(pick) % entries.len()];
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&header(entry));
    bytes.extend_from_slice(body);
    by_name(entry.name, &bytes);
}

fn by_name(name: &str, bytes: &[u8]) {
    match name {
        "telemetry" => both::<Telemetry>(bytes),
        "sanitized_telemetry" => both::<SanitizedTelemetry>(bytes),
        "feature" => both::<Feature>(bytes),
        "anomaly" => both::<Anomaly>(bytes),
        "alert" => both::<Alert>(bytes),
        "alert_command" => both::<AlertCommand>(bytes),
        "cohort_signal" => both::<CohortSignal>(bytes),
        "maintenance_entry" => both::<MaintenanceEntry>(bytes),
        "dead_letter" => both::<DeadLetter>(bytes),
        "privacy_audit" => both::<PrivacyAudit>(bytes),
        "state_snapshot" => both::<StateSnapshot>(bytes),
        "feature_extractor_state" => both::<FeatureExtractorState>(bytes),
        "anomaly_detector_state" => both::<AnomalyDetectorState>(bytes),
        other => panic!("schema {other} has no Rust type in the fuzz target: add it"),
    }
}

/// What apache-avro accepts and the direct decoder refuses, by design (see the module header).
fn lenient(e: &CodecError) -> bool {
    let s = e.to_string();
    s.contains("truncated") || s.contains("bytes left")
}

fn both<T: AvroRecord + Debug>(bytes: &[u8]) {
    let fast = decode::<T>(bytes);
    let reference = decode_via_value::<T>(bytes);
    match (&fast, &reference) {
        (Ok(a), Ok(b)) => {
            let (ea, eb) = (encode(a), encode(b));
            match (&ea, &eb) {
                (Ok(x), Ok(y)) => assert_eq!(x, y, "decoders disagree: {a:?} vs {b:?}"),
                _ => panic!("a decoded record does not re-encode: {ea:?} / {eb:?} of {a:?}"),
            }
        }
        (Err(a), Err(_)) => assert_decoding_reason(a),
        (Err(a), Ok(_)) if lenient(a) => {}
        (a, b) => panic!(
            "one decoder accepts what the other refuses: direct {:?}, apache-avro {:?}",
            a.as_ref().map(|_| ()),
            b.as_ref().map(|_| ())
        ),
    }
    if let Ok(a) = fast {
        let again = match encode(&a) {
            Ok(b) => b,
            Err(e) => panic!("decoded {a:?} does not re-encode: {e}"),
        };
        match decode::<T>(&again) {
            Ok(b) => assert_eq!(
                encode(&b).ok().as_ref(),
                Some(&again),
                "decode(encode(x)) differs from x: {a:?} vs {b:?}"
            ),
            Err(e) => panic!("re-encoded {a:?} does not decode: {e}"),
        }
    }
}

fn assert_decoding_reason(e: &CodecError) {
    let r = e.reason();
    assert!(
        r == DeadLetterReason::UNDECODABLE
            || r == DeadLetterReason::UNKNOWN_SCHEMA
            || r == DeadLetterReason::WRONG_SCHEMA,
        "a decoding failure maps to {r:?}: {e}"
    );
}
