//! Avro single-object encoding: `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the
//! writer schema, then the Avro binary body. Any consumer, in any language, can tell from the
//! header which schema wrote a record; we resolve that writer schema to our newest version of the
//! same record type.
//!
//! Readers also accept the Confluent framing the Kafka ecosystem (Kafka Connect, ksqlDB, kcat)
//! expects: magic byte `00`, the 4-byte big-endian schema-registry id, then the same Avro binary
//! body. The id is resolved through the [`RegistryIds`] installed at start-up; the first byte
//! tells the framings apart (`C3` or `00`), so the single-object path costs one byte compare
//! more than before. Writers produce the single-object encoding; [`to_confluent`] reframes a
//! record for a topic configured for the Confluent framing.
//!
//! Decoding never panics: every failure is a typed [`CodecError`] that maps onto a dead-letter
//! reason. An id no installed registry map knows is `UNKNOWN_SCHEMA`, like an unknown
//! fingerprint.

use std::io::Cursor;

use apache_avro::types::Value;
use apache_avro::{from_avro_datum, from_value, write_avro_datum_ref};

use crate::records::{AvroRecord, DeadLetterReason};
use crate::schema_store::{registry_ids, store, RegistryIds, SchemaEntry};

/// The two marker bytes of the single-object encoding.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Header length: marker and fingerprint.
pub const HEADER_LEN: usize = 10;
/// The first byte of the Confluent framing.
pub const CONFLUENT_MAGIC: u8 = 0;
/// Confluent header length: magic byte and 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// Why bytes could not be turned into a record, or a record into bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a header.
    #[error("record is {0} bytes, shorter than its header (10 bytes single-object, 5 Confluent)")]
    TooShort(usize),
    /// The first two bytes are not `C3 01`.
    #[error("record does not start with the Avro single-object marker C3 01")]
    BadMagic,
    /// The fingerprint names no schema we know.
    #[error("writer schema fingerprint {0} is not in the schema store")]
    UnknownSchema(String),
    /// A Confluent-framed record whose schema id is not among the registry ids loaded at
    /// start-up (or no schema registry is configured).
    #[error("schema registry id {id} is unknown ({})", if *.registry_loaded { "not among the ids loaded from --schema-registry-url at start-up" } else { "no --schema-registry-url is configured" })]
    UnknownSchemaId { id: u32, registry_loaded: bool },
    /// A known schema, but of another record type than the topic carries.
    #[error("record was written with schema {found}, expected {expected}")]
    WrongSchema {
        expected: &'static str,
        found: String,
    },
    /// The Avro body does not decode with the writer schema, or does not resolve.
    #[error("Avro body does not decode with writer schema {schema}: {message}")]
    Body { schema: String, message: String },
    /// Bytes left over after the record.
    #[error("{0} bytes left after the record")]
    Trailing(usize),
    /// A value does not fit the schema when encoding. An internal error: our own types and
    /// schemas disagree.
    #[error("cannot encode {schema}: {message}")]
    Encode {
        schema: &'static str,
        message: String,
    },
}

impl CodecError {
    /// The dead-letter reason for a record that failed to decode.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            CodecError::TooShort(_)
            | CodecError::BadMagic
            | CodecError::Body { .. }
            | CodecError::Trailing(_) => DeadLetterReason::UNDECODABLE,
            CodecError::UnknownSchema(_) | CodecError::UnknownSchemaId { .. } => {
                DeadLetterReason::UNKNOWN_SCHEMA
            }
            CodecError::WrongSchema { .. } => DeadLetterReason::WRONG_SCHEMA,
            CodecError::Encode { .. } => DeadLetterReason::UNKNOWN,
        }
    }
}

/// The header for a schema version.
pub fn header(entry: &SchemaEntry) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC);
    h[2..].copy_from_slice(&entry.fingerprint);
    h
}

/// Encodes `record` with the newest version of its schema.
pub fn encode<T: AvroRecord>(record: &T) -> Result<Vec<u8>, CodecError> {
    let entry = record
        .write_version()
        .and_then(|v| store().version(T::SCHEMA_NAME, v))
        .unwrap_or_else(|| store().latest(T::SCHEMA_NAME));
    encode_with(entry, record)
}

/// Encodes `record` with a given schema version (the simulator writes old versions this way):
/// with the direct writer ([`crate::fast_write`]) where it knows the record's shape, with
/// apache-avro otherwise; the bytes are the same either way.
pub fn encode_with<T: serde::Serialize>(
    entry: &SchemaEntry,
    record: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&header(entry));
    if let Some(plan) = entry.plan.as_ref().filter(|_| entry.writes_directly) {
        match crate::fast_write::to_writer(plan, record, &mut out) {
            Ok(()) => {
                // Every encode of a debug build (every test) checks the direct encoder against
                // apache-avro, byte for byte.
                #[cfg(debug_assertions)]
                {
                    let mut reference = header(entry).to_vec();
                    write_avro_datum_ref(&entry.schema, record, &mut reference).unwrap_or_else(
                        |e| {
                            panic!(
                                "{}: apache-avro refuses what fast_write wrote: {e}",
                                entry.name
                            )
                        },
                    );
                    if out != reference {
                        let at = out
                            .iter()
                            .zip(&reference)
                            .take_while(|(a, b)| a == b)
                            .count();
                        panic!(
                            "{}: fast_write differs from apache-avro at byte {at} of {} / {}: {:?} against {:?}",
                            entry.name,
                            out.len(),
                            reference.len(),
                            &out[at.saturating_sub(8)..(at + 8).min(out.len())],
                            &reference[at.saturating_sub(8)..(at + 8).min(reference.len())],
                        );
                    }
                }
                return Ok(out);
            }
            // A shape the direct writer does not know: apache-avro writes it (slower, same bytes).
            Err(_) => out.truncate(HEADER_LEN),
        }
    }
    write_avro_datum_ref(&entry.schema, record, &mut out).map_err(|e| CodecError::Encode {
        schema: entry.name,
        message: e.to_string(),
    })?;
    Ok(out)
}

/// Encodes a generic Avro value (file mode builds these from JSON) with a schema version.
pub fn encode_value(entry: &SchemaEntry, value: Value) -> Result<Vec<u8>, CodecError> {
    let body =
        apache_avro::to_avro_datum(&entry.schema, value).map_err(|e| CodecError::Encode {
            schema: entry.name,
            message: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header(entry));
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes a generic value in the newest version's shape with the version before the newest
/// when that version writes the same body (a record its readers, still running during a rolling
/// upgrade, read unchanged: the rule [`AvroRecord::write_version`] follows for typed records),
/// else with the newest.
pub fn encode_value_for_readers(name: &str, value: Value) -> Result<Vec<u8>, CodecError> {
    let newest = store().latest(name);
    let written = encode_value(newest, value.clone())?;
    let previous = newest
        .version
        .checked_sub(1)
        .and_then(|v| store().version(name, v));
    // Same body, and the previous version reads it back: apache-avro writes an enum's index
    // without checking it against the schema's symbols, so equal bytes alone do not say a
    // reader of that version can read them.
    let readable = |p: &SchemaEntry, older: &[u8]| {
        from_avro_datum(&p.schema, &mut Cursor::new(&older[HEADER_LEN..]), None).is_ok()
    };
    Ok(match previous.map(|p| (p, encode_value(p, value))) {
        Some((p, Ok(older)))
            if older[HEADER_LEN..] == written[HEADER_LEN..] && readable(p, &older) =>
        {
            older
        }
        _ => written,
    })
}

/// Splits the header off and finds the writer schema: the single-object header (fingerprint)
/// or the Confluent one (registry id, resolved through the ids installed at start-up).
#[inline]
pub fn writer_schema(bytes: &[u8]) -> Result<(&'static SchemaEntry, &[u8]), CodecError> {
    // One byte tells the framings apart: `C3` (single object) or `00` (Confluent). The
    // installed ids are only looked at for the latter, so the single-object path is as before.
    if bytes.first() == Some(&CONFLUENT_MAGIC) {
        return confluent_writer_schema(bytes, registry_ids());
    }
    single_object_writer_schema(bytes)
}

/// [`writer_schema`] with the registry ids given rather than the installed ones.
pub fn writer_schema_in<'b>(
    bytes: &'b [u8],
    ids: Option<&RegistryIds>,
) -> Result<(&'static SchemaEntry, &'b [u8]), CodecError> {
    if bytes.first() == Some(&CONFLUENT_MAGIC) {
        return confluent_writer_schema(bytes, ids);
    }
    single_object_writer_schema(bytes)
}

#[inline]
fn single_object_writer_schema(bytes: &[u8]) -> Result<(&'static SchemaEntry, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    if bytes[..2] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let entry = store()
        .by_fingerprint(&fp)
        .ok_or_else(|| CodecError::UnknownSchema(format!("{:016x}", u64::from_le_bytes(fp))))?;
    Ok((entry, &bytes[HEADER_LEN..]))
}

fn confluent_writer_schema<'b>(
    bytes: &'b [u8],
    ids: Option<&RegistryIds>,
) -> Result<(&'static SchemaEntry, &'b [u8]), CodecError> {
    if bytes.len() < CONFLUENT_HEADER_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let entry = ids
        .and_then(|ids| ids.get(id))
        .ok_or(CodecError::UnknownSchemaId {
            id,
            registry_loaded: ids.is_some(),
        })?;
    Ok((entry, &bytes[CONFLUENT_HEADER_LEN..]))
}

/// The Confluent header for a schema-registry id.
pub fn confluent_header(id: u32) -> [u8; CONFLUENT_HEADER_LEN] {
    let mut h = [CONFLUENT_MAGIC; CONFLUENT_HEADER_LEN];
    h[1..].copy_from_slice(&id.to_be_bytes());
    h
}

/// Reframes a single-object record (as [`encode`] writes it) in the Confluent framing, with the
/// registry id `id_of` gives its writer schema. The Avro body is copied unchanged. `None` from
/// `id_of` (the version is not registered) is [`CodecError::Encode`].
pub fn to_confluent(
    single_object: &[u8],
    id_of: impl FnOnce(&'static SchemaEntry) -> Option<u32>,
) -> Result<Vec<u8>, CodecError> {
    let (entry, body) = writer_schema_in(single_object, None)?;
    let id = id_of(entry).ok_or_else(|| CodecError::Encode {
        schema: entry.name,
        message: format!("version {} has no schema registry id", entry.version),
    })?;
    let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
    out.extend_from_slice(&confluent_header(id));
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes bytes into the generic Avro value of the newest version of `expected`, resolving
/// from whichever version wrote them. Returns the writer's entry too.
pub fn decode_value(
    bytes: &[u8],
    expected: &'static str,
) -> Result<(&'static SchemaEntry, Value), CodecError> {
    let (writer, body) = writer_schema(bytes)?;
    if writer.name != expected {
        return Err(CodecError::WrongSchema {
            expected,
            found: format!("{} v{}", writer.name, writer.version),
        });
    }
    let reader = store().latest(expected);
    let reader_schema = (reader.version != writer.version).then_some(&reader.schema);
    let mut cursor = Cursor::new(body);
    let value = from_avro_datum(&writer.schema, &mut cursor, reader_schema).map_err(|e| {
        CodecError::Body {
            schema: format!("{} v{}", writer.name, writer.version),
            message: e.to_string(),
        }
    })?;
    let left = body.len() - cursor.position() as usize;
    if left != 0 {
        return Err(CodecError::Trailing(left));
    }
    Ok((writer, value))
}

/// Decodes bytes into `T`, resolving from the writer's schema version to the newest one.
///
/// Records take the direct decoder of [`crate::fast`] when their version reads into the newest
/// without converting values (every version we have); otherwise apache-avro's resolving decode.
pub fn decode<T: AvroRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    let (writer, body) = writer_schema(bytes)?;
    if writer.name == T::SCHEMA_NAME {
        if let Some(plan) = &writer.to_latest {
            let (value, left) =
                crate::fast::from_slice::<T>(plan, body).map_err(|e| CodecError::Body {
                    schema: format!("{} v{}", writer.name, writer.version),
                    message: e.0,
                })?;
            if left != 0 {
                return Err(CodecError::Trailing(left));
            }
            return Ok(value);
        }
    }
    decode_via_value(bytes)
}

/// Decodes bytes into `T` through apache-avro's generic `Value` (resolving if needed): the
/// reference the direct decoder is tested and benchmarked against.
pub fn decode_via_value<T: AvroRecord>(bytes: &[u8]) -> Result<T, CodecError> {
    let (writer, value) = decode_value(bytes, T::SCHEMA_NAME)?;
    from_value::<T>(&value).map_err(|e| CodecError::Body {
        schema: format!("{} v{}", writer.name, writer.version),
        message: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::records::*;
    use crate::schema_store::SCHEMA_FILES;

    pub(crate) fn sample_telemetry() -> Telemetry {
        Telemetry {
            message_id: "6f1c0d3e-0000-4000-8000-000000000001".into(),
            instrument_serial: "A00123".into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            event_time_ms: 1_767_225_600_000,
            sent_time_ms: 1_767_225_600_500,
            kind: TelemetryKind::SENSOR_READINGS,
            run_id: Some("261129_A00123_0042_BHXYZ".into()),
            sensors: Some(SensorReadings {
                laser_power_mw: Some(498.5),
                flowcell_temp_c: Some(60.1),
                run_phase: Some(RunPhase::PRIMING),
                ..Default::default()
            }),
            log_event: None,
            run_performance: None,
            instrument_configuration: None,
            run_configuration: None,
            attributes: [("application_version".to_string(), "1.7.5".to_string())].into(),
        }
    }

    /// The direct writer takes the record (no fallback) and writes apache-avro's bytes.
    fn direct<T: AvroRecord>(record: &T) {
        let entry = store().latest(T::SCHEMA_NAME);
        let plan = entry.plan.as_ref().expect("the schema compiles");
        assert!(entry.writes_directly, "{}", T::SCHEMA_NAME);
        let mut fast = Vec::new();
        crate::fast_write::to_writer(plan, record, &mut fast)
            .unwrap_or_else(|e| panic!("{}: the direct writer refuses it: {e}", T::SCHEMA_NAME));
        let mut reference = Vec::new();
        write_avro_datum_ref(&entry.schema, record, &mut reference).expect("apache-avro writes it");
        assert_eq!(fast, reference, "{}", T::SCHEMA_NAME);
    }

    #[test]
    fn the_direct_writer_takes_every_shape_and_writes_apache_avros_bytes() {
        direct(&sample_telemetry());
        // Maps and arrays past apache-avro's block of 1,025 items: the same blocks.
        for n in [0, 1, 1024, 1025, 1026, 2051] {
            let t = Telemetry {
                attributes: (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
                ..sample_telemetry()
            };
            direct(&t);
            let state = FeatureExtractorState {
                base_offset: 7,
                base: None,
                delta: Some(DeltaInputs {
                    slot: 1,
                    inputs: (0..n)
                        .map(|i| FoldedInput {
                            offset: i as i64,
                            timestamp_ms: (i % 2 == 0).then_some(-(i as i64)),
                            arrival_time_ms: None,
                            value: vec![i as u8; i % 5],
                        })
                        .collect(),
                }),
            };
            direct(&state);
        }
        direct(&StateSnapshot {
            stage: "feature-extractor".into(),
            key: "A00123".into(),
            format_version: 2,
            state_json: vec![0xC3, 0x01, 0, 255],
        });
        for kind in [TelemetryKind::SENSOR_READINGS, TelemetryKind::OPERATION_LOG] {
            direct(&Telemetry {
                kind,
                instrument_model: InstrumentModel::NOVASEQ_X,
                event_time_ms: i64::MIN,
                sent_time_ms: i64::MAX,
                ..sample_telemetry()
            });
        }
    }

    #[test]
    fn round_trips_every_record_type() {
        let t = Telemetry {
            instrument_model: InstrumentModel::NOVASEQ_X,
            ..sample_telemetry()
        };
        let bytes = encode(&t).expect("encode");
        assert_eq!(&bytes[..2], &MAGIC);
        assert_eq!(&bytes[2..10], &store().latest("telemetry").fingerprint);
        assert_eq!(decode::<Telemetry>(&bytes).expect("decode"), t);

        let dl = DeadLetter {
            stage: "validator".into(),
            reason: DeadLetterReason::OUT_OF_RANGE,
            detail: "sensors.laser_power_mw".into(),
            source_topic: "telemetry.raw".into(),
            source_partition: 2,
            source_offset: 77,
            source_key: Some(b"A00123".to_vec()),
            source_timestamp_ms: Some(5),
            original_bytes: vec![0, 1, 2, 255],
        };
        assert_eq!(
            decode::<DeadLetter>(&encode(&dl).expect("encode")).expect("decode"),
            dl
        );
        let alert = Alert {
            alert_id: "a".into(),
            instrument_serial: "A00123".into(),
            instrument_model: InstrumentModel::MISEQ,
            subsystem: Subsystem::THERMAL,
            action: AlertAction::UPDATE,
            severity: AnomalySeverity::HIGH,
            metric: "flowcell_temp_c".into(),
            score: 7.5,
            title: "t".into(),
            suspected_part: "p".into(),
            opened_at_ms: 1,
            event_time_ms: 2,
            anomaly_count: 3,
            cohort: Some(CohortEvidence {
                kind: CohortKind::REAGENT_KIT_LOT,
                value: "SBS-20991".into(),
                members: 4,
                deviating: 3,
                instruments: vec!["A1".into(), "A2".into(), "A3".into()],
            }),
            state: AlertState::SNOOZED,
            transition: AlertTransition::SNOOZED,
            cause: TransitionCause::COMMAND,
            sequence: 4,
            command_id: Some("c1".into()),
            actor: Some("fse-17".into()),
            comment: Some("waiting for parts".into()),
            assignee: Some("fse-17".into()),
            acknowledged_by: Some("fse-17".into()),
            snoozed_until_ms: Some(99),
            resolution: None,
            escalation_level: 1,
            reopen_count: 0,
            evidence: Some(Evidence {
                metric: "flowcell_temp_c".into(),
                series: "flowcell_temp_c".into(),
                rule: "cusum_drift".into(),
                anomaly_id: "x".into(),
                observed: 61.2,
                baseline: 60.0,
                baseline_stddev: 0.1,
                slope_per_hour: 0.01,
                score: 7.5,
                spec_low: Some(59.0),
                spec_high: None,
                recent: vec![SeriesPoint {
                    window_end_ms: 5,
                    level: 61.0,
                }],
                predicted_limit_ms: Some(10),
                predicted_limit_earliest_ms: Some(8),
                predicted_limit_latest_ms: None,
            }),
        };
        let command = AlertCommand {
            command_id: "c1".into(),
            alert_id: "A00123:thermal:1".into(),
            instrument_serial: "A00123".into(),
            action: AlertCommandAction::RESOLVE,
            issued_by: "fse-17".into(),
            issued_at_ms: 7,
            snooze_until_ms: None,
            resolution: Some(Resolution::PART_REPLACED),
            assignee: None,
            comment: None,
            alert_sequence: None,
        };
        assert_eq!(
            decode::<AlertCommand>(&encode(&command).expect("encode")).expect("decode"),
            command
        );
        assert_eq!(alert_key(&command.alert_id), Some("A00123"));
        assert_eq!(
            alert_key("reagent_kit_lot:SBS-1:chemistry:42"),
            Some("reagent_kit_lot:SBS-1")
        );
        assert_eq!(alert_key("nonsense"), None);
        assert_eq!(
            decode::<Alert>(&encode(&alert).expect("encode")).expect("decode"),
            alert
        );
        let signal = CohortSignal {
            signal_id: "s".into(),
            kind: CohortKind::FLOWCELL_LOT,
            value: "FC-30001".into(),
            instrument_serial: "A1".into(),
            instrument_model: InstrumentModel::MISEQ,
            event_time_ms: 9,
            source_partition: 2,
            source_watermark_ms: 8,
            signal: CohortSignalKind::DEVIATION,
            count: true,
            decide: false,
            route: vec![CohortKind::SOFTWARE_VERSION.key("1.2")],
            anomaly: Some(vec![0xC3, 0x01, 7]),
        };
        assert_eq!(
            decode::<CohortSignal>(&encode(&signal).expect("encode")).expect("decode"),
            signal
        );
        // Written as version 1 while v1 readers may run; only a watermark needs version 2.
        let version = |s: &CohortSignal| {
            writer_schema(&encode(s).expect("encode"))
                .expect("header")
                .0
                .version
        };
        assert_eq!(version(&signal), 1);
        let watermark = CohortSignal {
            signal: CohortSignalKind::WATERMARK,
            ..signal.clone()
        };
        assert_eq!(version(&watermark), 2);
        assert_eq!(
            decode::<CohortSignal>(&encode(&watermark).expect("encode")).expect("decode"),
            watermark
        );
        assert_eq!(
            CohortKind::parse_key(&signal.route[0]),
            Some((CohortKind::SOFTWARE_VERSION, "1.2"))
        );
        assert_eq!(CohortKind::parse_key("unknown:x"), None);
        assert_eq!(CohortKind::parse_key("no-colon"), None);
    }

    #[test]
    fn a_record_of_a_model_added_in_2026_12_needs_the_new_version_and_no_other_does() {
        let version = |bytes: &[u8]| writer_schema(bytes).expect("header").0.version;
        let all = InstrumentModel::ALL;
        for model in all {
            let t = Telemetry {
                instrument_model: model,
                ..sample_telemetry()
            };
            let bytes = encode(&t).expect("encode");
            let expected = if model.in_first_symbols() { 4 } else { 5 };
            assert_eq!(version(&bytes), expected, "{model:?}");
            assert_eq!(decode::<Telemetry>(&bytes).expect("decode"), t);
            // A generic value (file mode, backfill) is written the same way.
            let json = serde_json::to_value(&t).expect("json");
            let value = crate::json::json_to_avro(&store().latest("telemetry").schema, &json)
                .expect("fits the newest");
            let generic = encode_value_for_readers("telemetry", value).expect("encode");
            assert_eq!(generic, bytes, "{model:?}");
            // The previous version's schema reads the other models' records unchanged: what a
            // reader not yet upgraded does.
            let previous = store().version("telemetry", 4).expect("v4");
            let body = &bytes[HEADER_LEN..];
            let read = from_avro_datum(&previous.schema, &mut Cursor::new(body), None);
            assert_eq!(read.is_ok(), model.in_first_symbols(), "{model:?}");

            let state = FeatureExtractorState {
                base_offset: 0,
                base: Some(FeatureExtractorBase {
                    instrument_model: Some(model),
                    software_version: None,
                    reagent_kit_lot: None,
                    flowcell_lot: None,
                    run_id: None,
                    max_event_time_ms: 1,
                    closed_until_ms: 0,
                    active_since_ms: None,
                    windows: Vec::new(),
                    repeats: Vec::new(),
                    repeat_phases: Vec::new(),
                }),
                delta: None,
            };
            let bytes = encode(&state).expect("encode");
            let expected = if model.in_first_symbols() { 1 } else { 2 };
            assert_eq!(version(&bytes), expected, "{model:?}");
            assert_eq!(
                decode::<FeatureExtractorState>(&bytes).expect("decode"),
                state
            );
        }
        // Every schema carrying the model lists the same symbols as the Rust type, in order.
        for (name, version) in [
            ("telemetry", 5),
            ("sanitized_telemetry", 5),
            ("feature", 4),
            ("anomaly", 5),
            ("alert", 4),
            ("maintenance_entry", 4),
            ("cohort_signal", 3),
            ("feature_extractor_state", 2),
        ] {
            let text = SCHEMA_FILES
                .iter()
                .find(|f| f.0 == name && f.1 == version)
                .map(|f| f.2)
                .expect("schema file");
            let symbols: Vec<String> = all.iter().map(|m| format!("\"{m:?}\"")).collect();
            assert!(
                text.replace([' ', '\n'], "")
                    .contains(&format!("\"symbols\":[{}]", symbols.join(","))),
                "{name} v{version}"
            );
            assert_eq!(store().latest(name).version, version, "{name}");
        }
    }

    #[test]
    fn reads_a_v1_record_with_the_v2_schema() {
        let v1 = store().version("telemetry", 1).expect("v1");
        let mut t = sample_telemetry();
        t.attributes.clear();
        // v1 has no `attributes` field: serialize the v1 shape.
        let mut json = serde_json::to_value(&t).expect("json");
        json.as_object_mut().expect("object").remove("attributes");
        // Nor a run phase (v4).
        json["sensors"]
            .as_object_mut()
            .expect("sensors")
            .remove("run_phase");
        t.sensors.as_mut().expect("sensors").run_phase = None;
        let value = crate::json::json_to_avro(&v1.schema, &json).expect("fits v1");
        let mut bytes = header(v1).to_vec();
        bytes.extend(apache_avro::to_avro_datum(&v1.schema, value).expect("encode v1"));
        assert_eq!(&bytes[2..10], &v1.fingerprint);
        let read: Telemetry = decode(&bytes).expect("v1 resolves to v2");
        assert_eq!(read, t, "attributes defaults to empty");
    }

    /// Found by fuzzing (crates/fuzz, target avro): a record whose map block claims 134 million
    /// entries made apache-avro's decode (`decode_value`, `decode_via_value`) reserve the map
    /// first: 260 MB resident for a 375-byte record, and an abort near 512 million entries.
    #[test]
    fn a_hostile_block_count_is_refused_before_allocation() {
        let entry = store().latest("telemetry");
        let mut t = sample_telemetry();
        t.attributes.clear();
        let good = encode(&t).expect("encode");
        // The attributes map is the last field: its empty block (a single 0) ends the record.
        assert_eq!(good.last(), Some(&0));
        for count in [536_870_000i64, 134_217_728, 3_000_000] {
            let mut bad = good[..good.len() - 1].to_vec();
            let mut z = ((count << 1) ^ (count >> 63)) as u64;
            while z >= 0x80 {
                bad.push((z as u8) | 0x80);
                z >>= 7;
            }
            bad.push(z as u8);
            bad.extend_from_slice(&[0x02, b'k', 0x02, b'v']);
            let e = decode_value(&bad, entry.name).expect_err("refused");
            assert!(e.to_string().contains("allocate"), "{e}");
            assert!(decode_via_value::<Telemetry>(&bad).is_err());
            assert!(decode::<Telemetry>(&bad).is_err());
        }
    }

    /// Registry ids 1000 + i for store entry i, built from the schema texts as a registry would
    /// hold them (so the match is by fingerprint, not by index).
    fn sample_registry_ids() -> RegistryIds {
        let mut ids = RegistryIds::default();
        for (i, (_, _, text)) in crate::schema_store::SCHEMA_FILES.iter().enumerate() {
            ids.add(1000 + i as u32, text).expect("our own schema");
        }
        ids
    }

    #[test]
    fn confluent_framing_reads_like_the_single_object_encoding() {
        let ids = sample_registry_ids();
        // A model only the newest version has: written with it.
        let t = Telemetry {
            instrument_model: InstrumentModel::HISEQ,
            ..sample_telemetry()
        };
        let single = encode(&t).expect("encode");
        let latest = store().latest("telemetry");
        let index = store()
            .entries()
            .iter()
            .position(|e| std::ptr::eq(e, latest))
            .expect("in store") as u32;
        let framed = to_confluent(&single, |e| {
            assert!(std::ptr::eq(e, latest));
            Some(1000 + index)
        })
        .expect("reframe");
        assert_eq!(framed[0], CONFLUENT_MAGIC);
        assert_eq!(&framed[1..5], &(1000 + index).to_be_bytes());
        assert_eq!(&framed[5..], &single[HEADER_LEN..], "the body is unchanged");
        let (writer, body) = writer_schema_in(&framed, Some(&ids)).expect("known id");
        assert!(std::ptr::eq(writer, latest));
        assert_eq!(body, &single[HEADER_LEN..]);
        // Through the process-wide ids (what every stage's decode uses).
        crate::schema_store::install_registry_ids(ids.clone()).expect("first install");
        crate::schema_store::install_registry_ids(ids).expect("same map again is a no-op");
        assert_eq!(decode::<Telemetry>(&framed).expect("decode"), t);
        assert_eq!(decode_via_value::<Telemetry>(&framed).expect("decode"), t);
        // An old version keeps its own id, and resolves to the newest on reading.
        let v1 = store().version("telemetry", 1).expect("v1");
        let v1_index = store()
            .entries()
            .iter()
            .position(|e| std::ptr::eq(e, v1))
            .expect("in store") as u32;
        let mut old = confluent_header(1000 + v1_index).to_vec();
        let mut json = serde_json::to_value(sample_telemetry()).expect("json");
        json.as_object_mut().expect("object").remove("attributes");
        json["sensors"]
            .as_object_mut()
            .expect("sensors")
            .remove("run_phase");
        let value = crate::json::json_to_avro(&v1.schema, &json).expect("fits v1");
        old.extend(apache_avro::to_avro_datum(&v1.schema, value).expect("encode v1"));
        let read: Telemetry = decode(&old).expect("v1 resolves");
        assert_eq!(read.instrument_serial, t.instrument_serial);
        assert!(read.attributes.is_empty());
    }

    #[test]
    fn confluent_framing_errors_are_typed() {
        let ids = sample_registry_ids();
        let unknown = [0u8, 0, 0, 0, 7, 2, 4];
        let e = writer_schema_in(&unknown, Some(&ids)).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::UnknownSchemaId {
                    id: 7,
                    registry_loaded: true
                }
            ),
            "{e}"
        );
        assert_eq!(e.reason(), DeadLetterReason::UNKNOWN_SCHEMA);
        let e = writer_schema_in(&unknown, None).unwrap_err();
        assert!(e.to_string().contains("no --schema-registry-url"), "{e}");
        assert_eq!(e.reason(), DeadLetterReason::UNKNOWN_SCHEMA);
        // Shorter than a Confluent header: too short, never an out-of-bounds read.
        for short in [&[0u8][..], &[0, 0, 0, 1]] {
            assert!(matches!(
                writer_schema_in(short, Some(&ids)).unwrap_err(),
                CodecError::TooShort(_)
            ));
        }
        // A known id of another record type is WRONG_SCHEMA, as with a fingerprint.
        let alert = store().latest("alert");
        let alert_index = store()
            .entries()
            .iter()
            .position(|e| std::ptr::eq(e, alert))
            .expect("in store") as u32;
        let mut wrong = confluent_header(1000 + alert_index).to_vec();
        wrong.extend([0u8; 3]);
        let (writer, _) = writer_schema_in(&wrong, Some(&ids)).expect("known id");
        assert_eq!(writer.name, "alert");
        // A version without an id cannot be written in the Confluent framing.
        let single = encode(&sample_telemetry()).expect("encode");
        assert!(matches!(
            to_confluent(&single, |_| None).unwrap_err(),
            CodecError::Encode { .. }
        ));
        // Registry schemas that are not ours, or answer inconsistently, are refused.
        let mut ids = RegistryIds::default();
        assert!(matches!(
            ids.add(1, r#"{"type":"record","name":"x","fields":[]}"#),
            Err(crate::schema_store::RegistryIdError::NotOurs { id: 1, .. })
        ));
        assert!(matches!(
            ids.add(2, "not json"),
            Err(crate::schema_store::RegistryIdError::Unparsable { id: 2, .. })
        ));
        ids.add(3, crate::schema_store::SCHEMA_FILES[0].2)
            .expect("ours");
        assert!(matches!(
            ids.add(3, crate::schema_store::SCHEMA_FILES[1].2),
            Err(crate::schema_store::RegistryIdError::Conflict { id: 3, .. })
        ));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn bad_bytes_give_typed_errors() {
        assert_eq!(
            decode::<Telemetry>(b"short").unwrap_err().reason(),
            DeadLetterReason::UNDECODABLE
        );
        assert!(matches!(
            decode::<Telemetry>(b"not avro at all!").unwrap_err(),
            CodecError::BadMagic
        ));
        let mut unknown = vec![0xC3, 0x01];
        unknown.extend([9u8; 8]);
        unknown.extend([0u8; 4]);
        assert_eq!(
            decode::<Telemetry>(&unknown).unwrap_err().reason(),
            DeadLetterReason::UNKNOWN_SCHEMA
        );
        let alert_bytes = {
            let mut b = header(store().latest("alert")).to_vec();
            b.extend([0u8; 3]);
            b
        };
        assert_eq!(
            decode::<Telemetry>(&alert_bytes).unwrap_err().reason(),
            DeadLetterReason::WRONG_SCHEMA
        );
        let mut truncated = encode(&sample_telemetry()).expect("encode");
        truncated.truncate(truncated.len() - 5);
        assert_eq!(
            decode::<Telemetry>(&truncated).unwrap_err().reason(),
            DeadLetterReason::UNDECODABLE
        );
        let mut trailing = encode(&sample_telemetry()).expect("encode");
        trailing.extend([1, 2, 3]);
        assert!(matches!(
            decode::<Telemetry>(&trailing).unwrap_err(),
            CodecError::Trailing(3)
        ));
    }
}
