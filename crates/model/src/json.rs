//! The file-mode form of a record: one JSON object a line, with the schema's field names.
//!
//! Optional fields are JSON `null` or the bare value (no Avro-JSON union wrapper), enums are
//! their symbol, timestamps are integers, `bytes` are lowercase hex strings. Conversion is driven
//! by the schema, so it works for every record type and version in the store.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use serde_json::{Map, Number, Value as Json};

/// Converts a JSON object to the Avro value of `schema`. The error names the offending field.
pub fn json_to_avro(schema: &Schema, json: &Json) -> Result<Value, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let names: HashMap<Name, &Schema> = resolved
        .get_names()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    convert(schema, json, &names, "")
}

fn convert(
    schema: &Schema,
    json: &Json,
    names: &HashMap<Name, &Schema>,
    path: &str,
) -> Result<Value, String> {
    let here = || {
        if path.is_empty() {
            "record".to_string()
        } else {
            path.to_string()
        }
    };
    let mismatch = |want: &str| format!("field {} must be {want}", here());
    Ok(match schema {
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .ok_or_else(|| format!("unresolved schema reference {name}"))?;
            return convert(target, json, names, path);
        }
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => return Err(mismatch("null")),
        },
        Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(|| mismatch("a boolean"))?),
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let i = json
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| mismatch("a 32-bit integer"))?;
            match schema {
                Schema::Date => Value::Date(i),
                Schema::TimeMillis => Value::TimeMillis(i),
                _ => Value::Int(i),
            }
        }
        Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimeMicros => {
            let l = json.as_i64().ok_or_else(|| mismatch("an integer"))?;
            match schema {
                Schema::TimestampMillis => Value::TimestampMillis(l),
                Schema::TimestampMicros => Value::TimestampMicros(l),
                Schema::TimeMicros => Value::TimeMicros(l),
                _ => Value::Long(l),
            }
        }
        Schema::Float => Value::Float(number(json).ok_or_else(|| mismatch("a number"))? as f32),
        Schema::Double => Value::Double(number(json).ok_or_else(|| mismatch("a number"))?),
        Schema::String => Value::String(
            json.as_str()
                .ok_or_else(|| mismatch("a string"))?
                .to_string(),
        ),
        Schema::Bytes => Value::Bytes(
            from_hex(json.as_str().ok_or_else(|| mismatch("a hex string"))?)
                .ok_or_else(|| mismatch("a hex string"))?,
        ),
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| mismatch("an enum symbol"))?;
            let idx = e.symbols.iter().position(|x| x == s).ok_or_else(|| {
                format!(
                    "field {} has a symbol that {} does not list",
                    here(),
                    e.name
                )
            })?;
            Value::Enum(idx as u32, s.to_string())
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| mismatch("an array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(convert(&a.items, item, names, &format!("{}[{i}]", here()))?);
            }
            Value::Array(out)
        }
        Schema::Map(m) => {
            let obj = json.as_object().ok_or_else(|| mismatch("an object"))?;
            let mut out = HashMap::with_capacity(obj.len());
            for (k, v) in obj {
                out.insert(
                    k.clone(),
                    // Map keys are data: the path names the map, not the key.
                    convert(&m.types, v, names, &format!("{}[key]", here()))?,
                );
            }
            Value::Map(out)
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                let idx = variants
                    .iter()
                    .position(|v| matches!(v, Schema::Null))
                    .ok_or_else(|| format!("field {} is required", here()))?;
                Value::Union(idx as u32, Box::new(Value::Null))
            } else {
                let mut last = String::new();
                let mut found = None;
                for (idx, v) in variants
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !matches!(v, Schema::Null))
                {
                    match convert(v, json, names, path) {
                        Ok(val) => {
                            found = Some(Value::Union(idx as u32, Box::new(val)));
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
        }
        Schema::Record(r) => {
            let obj = json.as_object().ok_or_else(|| mismatch("an object"))?;
            for key in obj.keys() {
                if !r.fields.iter().any(|f| &f.name == key) {
                    // Only a name-shaped key is printed: a key is input, and messages must never
                    // carry values (or terminal escapes) from it.
                    let shown = if is_avro_name(key) {
                        key.as_str()
                    } else {
                        "(a key that is not an Avro name)"
                    };
                    let p = if path.is_empty() {
                        shown.to_string()
                    } else {
                        format!("{path}.{shown}")
                    };
                    return Err(format!("field {p} is not in schema {}", r.name));
                }
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let p = if path.is_empty() {
                    f.name.clone()
                } else {
                    format!("{path}.{}", f.name)
                };
                let value = match obj.get(&f.name) {
                    Some(v) => convert(&f.schema, v, names, &p)?,
                    None => match &f.default {
                        Some(d) => convert(&f.schema, d, names, &p)?,
                        None => return Err(format!("field {p} is missing")),
                    },
                };
                fields.push((f.name.clone(), value));
            }
            Value::Record(fields)
        }
        other => {
            return Err(format!(
                "field {} has unsupported schema type {other:?}",
                here()
            ))
        }
    })
}

/// Converts a decoded Avro value to its JSON-lines form.
pub fn avro_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimeMicros(l) => Json::from(*l),
        Value::Float(f) => float_to_json(f64::from(*f)),
        Value::Double(d) => float_to_json(*d),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(to_hex(b)),
        Value::Union(_, v) => avro_to_json(v),
        Value::Array(items) => Json::Array(items.iter().map(avro_to_json).collect()),
        Value::Map(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), avro_to_json(&m[k])))
                    .collect(),
            )
        }
        Value::Record(fields) => {
            let mut obj = Map::with_capacity(fields.len());
            for (k, v) in fields {
                obj.insert(k.clone(), avro_to_json(v));
            }
            Json::Object(obj)
        }
        other => Json::String(format!("{other:?}")),
    }
}

/// Whether `s` is an Avro name (`[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters here).
fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A float as JSON: a number, or for the values JSON has no number for, the strings `"NaN"`,
/// `"Infinity"` and `"-Infinity"` (as Jackson and most JSON libraries write them), so they are
/// neither lost nor confused with `null`.
pub fn float_to_json(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

/// A JSON number, or one of the strings [`float_to_json`] writes for non-finite values.
fn number(json: &Json) -> Option<f64> {
    match json {
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        other => other.as_f64(),
    }
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses lowercase or uppercase hex; `None` when malformed.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_value, encode};
    use crate::records::*;
    use crate::schema_store::store;

    #[test]
    fn non_finite_floats_survive_as_strings_both_ways() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"d","type":"double"},
                {"name":"o","type":["null","double"]},{"name":"f","type":"float"}]}"#,
        )
        .unwrap();
        for (d, text) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            let value = Value::Record(vec![
                ("d".into(), Value::Double(d)),
                ("o".into(), Value::Union(1, Box::new(Value::Double(d)))),
                ("f".into(), Value::Float(d as f32)),
            ]);
            let json = avro_to_json(&value);
            assert_eq!(json, serde_json::json!({"d": text, "o": text, "f": text}));
            let back = json_to_avro(&schema, &json).unwrap();
            let Value::Record(fields) = back else {
                panic!()
            };
            let Value::Double(x) = fields[0].1 else {
                panic!()
            };
            assert_eq!(x.to_string(), d.to_string());
        }
        assert_eq!(avro_to_json(&Value::Double(1.5)), serde_json::json!(1.5));
        let enum_schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
                {"name":"m","type":{"type":"map","values":"long"}}]}"#,
        )
        .unwrap();
        for (bad, secret) in [
            (
                serde_json::json!({"e": "SECRET_SYMBOL", "m": {}}),
                "SECRET_SYMBOL",
            ),
            (
                serde_json::json!({"e": "A", "m": {"SECRET_KEY": "x"}}),
                "SECRET_KEY",
            ),
            (
                serde_json::json!({"e": "A", "m": {}, "\u{1b}[31mx": 1}),
                "\u{1b}",
            ),
        ] {
            let e = json_to_avro(&enum_schema, &bad).unwrap_err();
            assert!(!e.contains(secret) && !e.contains('\u{1b}'), "{e}");
        }
        assert!(
            json_to_avro(&schema, &serde_json::json!({"d": "nan", "o": null, "f": 1})).is_err()
        );
    }

    #[test]
    fn json_and_avro_agree_both_ways() {
        let dl = DeadLetter {
            stage: "validator".into(),
            reason: DeadLetterReason::MISSING_FIELD,
            detail: "instrument_serial".into(),
            source_topic: "telemetry.raw".into(),
            source_partition: 0,
            source_offset: 1,
            source_key: None,
            source_timestamp_ms: None,
            original_bytes: vec![0xc3, 0x01, 0xff],
        };
        let (_, value) =
            decode_value(&encode(&dl).expect("encode"), "dead_letter").expect("decode");
        let json = avro_to_json(&value);
        assert_eq!(json["original_bytes"], "c301ff");
        assert_eq!(json["reason"], "MISSING_FIELD");
        let back = json_to_avro(&store().latest("dead_letter").schema, &json).expect("back");
        let again: DeadLetter = apache_avro::from_value(&back).expect("typed");
        assert_eq!(again, dl);
    }

    #[test]
    fn errors_name_the_field() {
        let schema = &store().latest("telemetry").schema;
        let err = json_to_avro(schema, &serde_json::json!({"message_id": "x"})).unwrap_err();
        assert!(err.contains("instrument_serial"), "{err}");
        let err = json_to_avro(schema, &serde_json::json!({"nope": 1})).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        assert_eq!(from_hex("zz"), None);
    }
}
