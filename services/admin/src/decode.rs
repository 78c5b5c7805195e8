//! Turning any record of any of our topics back into a value: open its envelope if it is
//! sealed (the key ring of `--encryption-keys-dir`, the topic's role as the additional data),
//! find the writer's schema by the fingerprint in its header, decode it as written or resolved
//! to the newest version of its record type, and print it as JSON: the Avro JSON encoding
//! (unions wrapped in their branch's type name, bytes as code points U+0000..U+00FF, as every
//! Avro library reads it) or our file-mode dialect (docs/file-json.md).
//!
//! Failure: every way a record can fail to decode is a [`DecodeError`] with the reason; the
//! callers count it and go on, never stop on it. Nothing here logs a value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::OnceLock;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use seqmon_model::codec::{self, CodecError};
use seqmon_model::schema_store::{store, SchemaEntry};
use seqmon_model::topics::TopicRole;
use seqmon_runtime::envelope::{self, KeyRing, OpenError};
use serde_json::{Map, Value as Json};

use crate::source::RawRecord;

/// Why a record could not be turned into a value.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No value: a tombstone (compacted topics delete keys with them).
    #[error("tombstone (no value)")]
    Tombstone,
    /// The record is sealed and no key ring was given.
    #[error("sealed: give --encryption-keys-dir to open it")]
    NoKeys,
    /// The record is sealed on a topic that is not in the catalogue under the prefix, so the
    /// role its envelope is bound to is unknown.
    #[error(
        "sealed, on a topic that is not in the catalogue under this prefix (check --topic-prefix)"
    )]
    UnknownRole,
    /// The envelope did not open.
    #[error("cannot open: {0}")]
    Open(#[from] OpenError),
    /// The bytes are not a record of ours.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

impl DecodeError {
    /// A short fixed name, for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Tombstone => "tombstone",
            DecodeError::NoKeys => "sealed_no_keys",
            DecodeError::UnknownRole => "sealed_unknown_topic",
            DecodeError::Open(_) => "envelope_does_not_open",
            DecodeError::Codec(CodecError::UnknownSchema(_)) => "unknown_schema",
            DecodeError::Codec(_) => "undecodable",
        }
    }
}

/// Which schema a record is decoded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The writer's own version: what is on the topic, field for field.
    Writer,
    /// The newest version of the record type (missing fields filled with their defaults), so
    /// every record of a topic has the same shape: what exports want.
    Latest,
}

/// A decoded record.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The schema version that wrote it.
    pub writer: &'static SchemaEntry,
    /// The schema `value` follows (the writer's, or the newest of its type).
    pub schema: &'static SchemaEntry,
    pub value: Value,
}

/// The record's value, opened if it is sealed. `role` is the topic's catalogue role (the
/// envelope is bound to it); unsealed records pass through whatever the role.
pub fn open<'a>(
    record: &'a RawRecord,
    role: Option<TopicRole>,
    keys: Option<&KeyRing>,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let value = record.value.as_deref().ok_or(DecodeError::Tombstone)?;
    let Some(header) = record.header(envelope::HEADER) else {
        return Ok(Cow::Borrowed(value));
    };
    let keys = keys.ok_or(DecodeError::NoKeys)?;
    let role = role.ok_or(DecodeError::UnknownRole)?;
    let key = record.key.as_deref().unwrap_or_default();
    Ok(Cow::Owned(keys.open(role, key, Some(header), value)?))
}

/// Opens and decodes a record.
pub fn decode(
    record: &RawRecord,
    role: Option<TopicRole>,
    keys: Option<&KeyRing>,
    resolve: Resolve,
) -> Result<Decoded, DecodeError> {
    let bytes = open(record, role, keys)?;
    decode_bytes(&bytes, resolve)
}

/// Decodes the bytes of a single-object-encoded record of any type in the store.
pub fn decode_bytes(bytes: &[u8], resolve: Resolve) -> Result<Decoded, DecodeError> {
    let (writer, body) = codec::writer_schema(bytes)?;
    match resolve {
        Resolve::Latest => {
            let (writer, value) = codec::decode_value(bytes, writer.name)?;
            Ok(Decoded {
                writer,
                schema: store().latest(writer.name),
                value,
            })
        }
        Resolve::Writer => {
            let mut cursor = Cursor::new(body);
            let value =
                apache_avro::from_avro_datum(&writer.schema, &mut cursor, None).map_err(|e| {
                    CodecError::Body {
                        schema: format!("{} v{}", writer.name, writer.version),
                        message: e.to_string(),
                    }
                })?;
            let left = body.len() - cursor.position() as usize;
            if left != 0 {
                return Err(CodecError::Trailing(left).into());
            }
            Ok(Decoded {
                writer,
                schema: writer,
                value,
            })
        }
    }
}

/// How a value is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonForm {
    /// The Avro JSON encoding of the Avro specification.
    AvroJson,
    /// Our file-mode dialect (docs/file-json.md): unions bare, bytes as hex.
    FileJson,
}

/// The value as JSON in `form`.
pub fn to_json(decoded: &Decoded, form: JsonForm) -> Json {
    match form {
        JsonForm::FileJson => seqmon_model::json::avro_to_json(&decoded.value),
        JsonForm::AvroJson => encode(
            &decoded.schema.schema,
            &decoded.value,
            store_names(decoded.schema),
        ),
    }
}

/// The named types of a schema, by name (to follow references).
fn named_types(schema: &Schema) -> HashMap<Name, &Schema> {
    ResolvedSchema::try_from(schema)
        .map(|r| r.get_names().iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// [`named_types`] of a schema of the store, worked out once per schema rather than per record.
fn store_names(entry: &'static SchemaEntry) -> &'static HashMap<Name, &'static Schema> {
    type ByFingerprint = HashMap<[u8; 8], HashMap<Name, &'static Schema>>;
    static NAMES: OnceLock<ByFingerprint> = OnceLock::new();
    static EMPTY: OnceLock<HashMap<Name, &'static Schema>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            store()
                .entries()
                .iter()
                .map(|e| (e.fingerprint, named_types(&e.schema)))
                .collect()
        })
        .get(&entry.fingerprint)
        .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
}

/// The Avro JSON encoding of `value`, which follows `schema`.
#[cfg(test)]
pub fn avro_json(schema: &Schema, value: &Value) -> Json {
    encode(schema, value, &named_types(schema))
}

fn encode(schema: &Schema, value: &Value, names: &HashMap<Name, &Schema>) -> Json {
    let schema = match schema {
        Schema::Ref { name } => match names.get(name) {
            Some(s) => *s,
            None => return seqmon_model::json::avro_to_json(value),
        },
        s => s,
    };
    match (schema, value) {
        (Schema::Union(u), Value::Union(i, inner)) => {
            let Some(branch) = u.variants().get(*i as usize) else {
                return seqmon_model::json::avro_to_json(value);
            };
            if matches!(**inner, Value::Null) {
                return Json::Null;
            }
            let mut obj = Map::with_capacity(1);
            obj.insert(branch_name(branch), encode(branch, inner, names));
            Json::Object(obj)
        }
        (Schema::Record(r), Value::Record(fields)) => {
            let mut obj = Map::with_capacity(fields.len());
            for (name, v) in fields {
                let json = match r.lookup.get(name).and_then(|i| r.fields.get(*i)) {
                    Some(f) => encode(&f.schema, v, names),
                    None => seqmon_model::json::avro_to_json(v),
                };
                obj.insert(name.clone(), json);
            }
            Json::Object(obj)
        }
        (Schema::Array(a), Value::Array(items)) => Json::Array(
            items
                .iter()
                .map(|item| encode(&a.items, item, names))
                .collect(),
        ),
        (Schema::Map(m), Value::Map(entries)) => {
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), encode(&m.types, &entries[k], names)))
                    .collect(),
            )
        }
        (_, Value::Bytes(b)) | (_, Value::Fixed(_, b)) => {
            // The specification's JSON form of bytes: one code point per byte.
            Json::String(b.iter().map(|&b| char::from(b)).collect())
        }
        _ => seqmon_model::json::avro_to_json(value),
    }
}

/// The name a union branch is wrapped in: the full name of a named type, else the type.
fn branch_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        Schema::Ref { name } => name.fullname(None),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int | Schema::Date | Schema::TimeMillis => "int".into(),
        Schema::Long
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimeMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String | Schema::Uuid => "string".into(),
        Schema::Null => "null".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter() -> seqmon_model::records::DeadLetter {
        seqmon_model::records::DeadLetter {
            stage: "validator".into(),
            reason: seqmon_model::records::DeadLetterReason::UNDECODABLE,
            detail: "x".into(),
            source_topic: "telemetry.raw".into(),
            source_partition: 2,
            source_offset: 41,
            source_key: None,
            source_timestamp_ms: Some(1_700_000_000_000),
            original_bytes: vec![0xc3, 0x01, 0xff],
        }
    }

    #[test]
    fn a_record_decodes_as_written_and_as_the_newest_version_in_both_json_forms() {
        let bytes = codec::encode(&dead_letter()).unwrap();
        for resolve in [Resolve::Writer, Resolve::Latest] {
            let d = decode_bytes(&bytes, resolve).unwrap();
            assert_eq!(d.writer.name, "dead_letter");
            let file = to_json(&d, JsonForm::FileJson);
            assert_eq!(file["source_offset"], 41);
            assert_eq!(file["source_key"], Json::Null);
            assert_eq!(file["original_bytes"], "c301ff");
            assert_eq!(file["reason"], "UNDECODABLE");
            let avro = to_json(&d, JsonForm::AvroJson);
            assert_eq!(
                avro["source_timestamp_ms"],
                serde_json::json!({"long": 1_700_000_000_000i64})
            );
            assert_eq!(avro["original_bytes"], "\u{c3}\u{1}\u{ff}");
            assert_eq!(avro["source_key"], Json::Null);
        }
        assert!(matches!(
            decode_bytes(&bytes[..bytes.len() - 1], Resolve::Writer),
            Err(DecodeError::Codec(_))
        ));
        let mut unknown = bytes.clone();
        unknown[2] ^= 0xff;
        let e = decode_bytes(&unknown, Resolve::Latest).unwrap_err();
        assert_eq!(e.kind(), "unknown_schema");
    }

    #[test]
    fn unions_are_wrapped_and_bytes_are_code_points() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"n","fields":[
                {"name":"a","type":["null","string"]},
                {"name":"b","type":["null","long"]},
                {"name":"c","type":"bytes"},
                {"name":"d","type":["null",{"type":"enum","name":"E","symbols":["X","Y"]}]},
                {"name":"e","type":{"type":"map","values":["null","double"]}}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            (
                "a".into(),
                Value::Union(1, Box::new(Value::String("s".into()))),
            ),
            ("b".into(), Value::Union(0, Box::new(Value::Null))),
            ("c".into(), Value::Bytes(vec![0, 0x41, 0xff])),
            (
                "d".into(),
                Value::Union(1, Box::new(Value::Enum(1, "Y".into()))),
            ),
            (
                "e".into(),
                Value::Map(
                    [(
                        "k".to_string(),
                        Value::Union(1, Box::new(Value::Double(1.5))),
                    )]
                    .into_iter()
                    .collect(),
                ),
            ),
        ]);
        let json = avro_json(&schema, &value);
        assert_eq!(
            json,
            serde_json::json!({"a": {"string": "s"}, "b": null, "c": "\u{0}A\u{ff}",
                "d": {"n.E": "Y"}, "e": {"k": {"double": 1.5}}})
        );
    }

    #[test]
    fn non_finite_values_are_named_not_nulled() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"d","type":"double"},
                {"name":"o","type":["null","double"]}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            ("d".into(), Value::Double(f64::NAN)),
            (
                "o".into(),
                Value::Union(1, Box::new(Value::Double(f64::NEG_INFINITY))),
            ),
        ]);
        assert_eq!(
            avro_json(&schema, &value),
            serde_json::json!({"d": "NaN", "o": {"double": "-Infinity"}})
        );
    }

    #[test]
    fn sealed_records_need_keys_and_a_role() {
        let r = RawRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            log_append_time: false,
            key: Some(b"k".to_vec()),
            value: Some(vec![0; 40]),
            headers: vec![(envelope::HEADER.into(), Some(b"v1:a".to_vec()))],
        };
        assert!(matches!(open(&r, None, None), Err(DecodeError::NoKeys)));
        let ring = KeyRing::new([("a".to_string(), [7u8; 32])], "a").unwrap();
        assert!(matches!(
            open(&r, None, Some(&ring)),
            Err(DecodeError::UnknownRole)
        ));
        assert!(matches!(
            open(&r, Some(TopicRole::Raw), Some(&ring)),
            Err(DecodeError::Open(OpenError::Corrupt))
        ));
        let tomb = RawRecord { value: None, ..r };
        assert!(matches!(
            open(&tomb, None, None),
            Err(DecodeError::Tombstone)
        ));
    }
}
