//! The mapping for every record type and version in the store: values made from each
//! version's schema, encoded, decoded into the newest version as the export does, converted to
//! Arrow, checked cell by cell against the Avro values; then through the Parquet and Avro
//! writers and back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use seqmon_model::codec;
use seqmon_model::schema_store::store;
use seqmon_model::topics::TopicRole;
use seqmon_runtime::envelope::KeyRing;

use crate::source::RawRecord;

use super::arrow_map::{RecordMapping, Row, KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP};
use super::sink::{AvroCodec, DatasetWriter, Format, SinkSettings};
use super::*;

/// A value of `schema` that varies with `row`: every union is null on some rows and set on
/// others, arrays and maps have 0, 1 or 2 entries, enums cycle through their symbols.
fn sample(schema: &Schema, names: &HashMap<Name, &Schema>, row: usize) -> Value {
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(row.is_multiple_of(2)),
        Schema::Int => Value::Int(row as i32 * 7 - 3),
        Schema::Long => Value::Long(row as i64 * 1_000_003 - 11),
        Schema::Float => Value::Float(row as f32 * 0.5 + 0.25),
        Schema::Double => Value::Double(row as f64 * 1.5 - 0.125),
        Schema::Bytes => Value::Bytes(vec![row as u8; row % 3]),
        Schema::String => Value::String(if row % 4 == 3 {
            format!("é✓ {row}")
        } else {
            format!("s{row}")
        }),
        Schema::Date => Value::Date(20_000 + row as i32),
        // Seven hours apart, so rows fall on several dates.
        Schema::TimestampMillis => {
            Value::TimestampMillis(1_790_000_000_000 + row as i64 * 25_200_000)
        }
        Schema::Enum(e) => {
            let i = row % e.symbols.len();
            Value::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Array(a) => Value::Array(
            (0..row % 3)
                .map(|i| sample(&a.items, names, row + i + 1))
                .collect(),
        ),
        Schema::Map(m) => Value::Map(
            (0..row % 3)
                .map(|i| (format!("k{}", 2 - i), sample(&m.types, names, row + i)))
                .collect(),
        ),
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name.clone(), sample(&f.schema, names, row + i)))
                .collect(),
        ),
        Schema::Union(u) => {
            let variants = u.variants();
            let null = variants.iter().position(|s| matches!(s, Schema::Null));
            match null {
                Some(n) if row % 3 == 1 => Value::Union(n as u32, Box::new(Value::Null)),
                _ => {
                    let (i, s) = variants
                        .iter()
                        .enumerate()
                        .find(|(_, s)| !matches!(s, Schema::Null))
                        .expect("a union with a non-null branch");
                    Value::Union(i as u32, Box::new(sample(s, names, row)))
                }
            }
        }
        Schema::Ref { name } => sample(names[name], names, row),
        other => panic!("no sample for {other:?}"),
    }
}

fn names_of(schema: &Schema) -> HashMap<Name, &Schema> {
    ResolvedSchema::try_from(schema)
        .expect("schema resolves")
        .get_names()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn unwrap(v: &Value) -> Option<&Value> {
    match v {
        Value::Null => None,
        Value::Union(_, inner) => unwrap(inner),
        v => Some(v),
    }
}

/// Asserts that cell `i` of `array` holds `value` (`None`: null).
fn assert_cell(array: &ArrayRef, i: usize, value: Option<&Value>, path: &str) {
    let Some(value) = value else {
        assert!(array.is_null(i), "{path}[{i}] should be null");
        return;
    };
    assert!(array.is_valid(i), "{path}[{i}] should be {value:?}");
    match (array.data_type(), value) {
        (DataType::Boolean, Value::Boolean(b)) => assert_eq!(array.as_boolean().value(i), *b),
        (DataType::Int32, Value::Int(n)) => {
            assert_eq!(array.as_primitive::<Int32Type>().value(i), *n, "{path}")
        }
        (DataType::Int64, Value::Long(n)) => {
            assert_eq!(array.as_primitive::<Int64Type>().value(i), *n, "{path}")
        }
        (DataType::Float32, Value::Float(f)) => {
            assert_eq!(array.as_primitive::<Float32Type>().value(i), *f, "{path}")
        }
        (DataType::Float64, Value::Double(f)) => {
            assert_eq!(array.as_primitive::<Float64Type>().value(i), *f, "{path}")
        }
        (DataType::Utf8, Value::String(s)) => assert_eq!(array.as_string::<i32>().value(i), s),
        (DataType::Binary, Value::Bytes(b)) => assert_eq!(array.as_binary::<i32>().value(i), b),
        (DataType::Date32, Value::Date(d)) => {
            assert_eq!(array.as_primitive::<Date32Type>().value(i), *d, "{path}")
        }
        (DataType::Timestamp(TimeUnit::Millisecond, Some(tz)), Value::TimestampMillis(t)) => {
            assert_eq!(tz.as_ref(), "UTC");
            assert_eq!(
                array.as_primitive::<TimestampMillisecondType>().value(i),
                *t,
                "{path}"
            )
        }
        (DataType::Dictionary(_, _), Value::Enum(_, symbol)) => {
            let dict = array.as_dictionary::<Int32Type>();
            let key = dict.keys().value(i) as usize;
            assert_eq!(
                dict.values().as_string::<i32>().value(key),
                symbol,
                "{path}"
            );
        }
        (DataType::List(_), Value::Array(items)) => {
            let list = array.as_list::<i32>();
            let child = list.value(i);
            assert_eq!(child.len(), items.len(), "{path} length");
            for (j, item) in items.iter().enumerate() {
                assert_cell(&child, j, unwrap(item), &format!("{path}[]"));
            }
        }
        (DataType::Map(_, _), Value::Map(entries)) => {
            let map = array.as_map();
            let entry = map.value(i);
            assert_eq!(entry.len(), entries.len(), "{path} entries");
            let keys = entry.column(0).as_string::<i32>();
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (j, (k, v)) in sorted.into_iter().enumerate() {
                assert_eq!(keys.value(j), k, "{path} key order");
                assert_cell(entry.column(1), j, unwrap(v), &format!("{path}{{{k}}}"));
            }
        }
        (DataType::Struct(fields), Value::Record(values)) => {
            let s = array.as_struct();
            assert_eq!(fields.len(), values.len(), "{path} fields");
            for (j, (name, v)) in values.iter().enumerate() {
                assert_eq!(fields[j].name(), name);
                assert_cell(s.column(j), i, unwrap(v), &format!("{path}.{name}"));
            }
        }
        (t, v) => panic!("{path}: Arrow {t} holds {v:?}"),
    }
}

/// Asserts that `batch` holds `rows` (record fields, then the Kafka columns).
fn assert_batch(batch: &RecordBatch, rows: &[Row]) {
    assert_eq!(batch.num_rows(), rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Value::Record(fields) = &row.value else {
            panic!("a record")
        };
        for (j, (name, v)) in fields.iter().enumerate() {
            assert_eq!(batch.schema().field(j).name(), name);
            assert_cell(batch.column(j), i, unwrap(v), name);
        }
        let kafka = batch.num_columns() - 3;
        assert_cell(
            batch.column(kafka),
            i,
            Some(&Value::Int(row.partition)),
            KAFKA_PARTITION,
        );
        assert_cell(
            batch.column(kafka + 1),
            i,
            Some(&Value::Long(row.offset)),
            KAFKA_OFFSET,
        );
        assert_cell(
            batch.column(kafka + 2),
            i,
            row.timestamp_ms.map(Value::TimestampMillis).as_ref(),
            KAFKA_TIMESTAMP,
        );
    }
}

/// For every version of every record type: sample values, encoded, decoded into the newest
/// version as the export reads them.
fn decoded_samples(rows_per_version: usize) -> Vec<(&'static str, Vec<Row>)> {
    let mut by_type: Vec<(&'static str, Vec<Row>)> = Vec::new();
    for entry in store().entries() {
        let names = names_of(&entry.schema);
        let rows = (0..rows_per_version).map(|row| {
            let value = sample(&entry.schema, &names, row);
            let bytes = codec::encode_value(entry, value)
                .unwrap_or_else(|e| panic!("{} v{}: {e}", entry.name, entry.version));
            let (_, decoded) = codec::decode_value(&bytes, entry.name)
                .unwrap_or_else(|e| panic!("{} v{}: {e}", entry.name, entry.version));
            Row {
                value: decoded,
                partition: row as i32 % 3,
                offset: row as i64,
                timestamp_ms: (row % 5 != 4).then_some(1_790_000_000_000 + row as i64),
            }
        });
        match by_type.iter_mut().find(|(n, _)| *n == entry.name) {
            Some((_, v)) => v.extend(rows),
            None => by_type.push((entry.name, rows.collect())),
        }
    }
    by_type
}

#[test]
fn every_record_type_and_version_maps_cell_for_cell() {
    let samples = decoded_samples(12);
    let types: Vec<&str> = samples.iter().map(|(n, _)| *n).collect();
    assert_eq!(types.len(), 13, "every record type of the store: {types:?}");
    for (name, rows) in &samples {
        let mapping = RecordMapping::new(&store().latest(name).schema)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for row in rows {
            mapping
                .check(&row.value)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let batch = mapping
            .to_batch(rows)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_batch(&batch, rows);
    }
}

#[test]
fn arrow_types_follow_the_avro_types() {
    let field = |record: &str, path: &[&str]| {
        let schema = RecordMapping::new(&store().latest(record).schema)
            .unwrap()
            .arrow_schema();
        let mut f = schema.field_with_name(path[0]).unwrap().clone();
        for p in &path[1..] {
            f = match f.data_type() {
                DataType::Struct(fields) => fields
                    .iter()
                    .find(|x| x.name() == p)
                    .unwrap()
                    .as_ref()
                    .clone(),
                DataType::List(item) => match item.data_type() {
                    DataType::Struct(fields) => fields
                        .iter()
                        .find(|x| x.name() == p)
                        .unwrap()
                        .as_ref()
                        .clone(),
                    _ => panic!("{p}"),
                },
                _ => panic!("{p}"),
            };
        }
        (f.data_type().clone(), f.is_nullable())
    };
    let utc_ms = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    assert_eq!(
        field("telemetry", &["event_time_ms"]),
        (utc_ms.clone(), false)
    );
    assert_eq!(
        field("telemetry", &["instrument_model"]),
        (dict.clone(), false)
    );
    assert_eq!(field("telemetry", &["run_id"]), (DataType::Utf8, true));
    assert!(matches!(
        field("telemetry", &["sensors"]),
        (DataType::Struct(_), true)
    ));
    assert_eq!(
        field("telemetry", &["sensors", "laser_power_mw"]),
        (DataType::Float64, true)
    );
    assert_eq!(
        field("telemetry", &["sensors", "run_phase"]),
        (dict.clone(), true)
    );
    // Nested fields are nullable in Arrow even where Avro's are not (their record can be null).
    assert_eq!(
        field(
            "telemetry",
            &["run_configuration", "reagent_kit_expiry_date"]
        ),
        (DataType::Date32, true)
    );
    assert!(matches!(
        field("telemetry", &["attributes"]).0,
        DataType::Map(_, false)
    ));
    assert!(matches!(
        field("sanitized_telemetry", &["log_event", "parameters"]).0,
        DataType::List(_)
    ));
    assert_eq!(
        field(
            "sanitized_telemetry",
            &["log_event", "parameters", "number"]
        ),
        (DataType::Float64, true)
    );
    assert_eq!(
        field("anomaly", &["predicted_limit_ms"]),
        (utc_ms.clone(), true)
    );
    assert_eq!(
        field("cohort_signal", &["anomaly"]),
        (DataType::Binary, true)
    );
    assert_eq!(
        field("cohort_signal", &["count"]),
        (DataType::Boolean, false)
    );
    assert_eq!(
        field("dead_letter", &["source_offset"]),
        (DataType::Int64, false)
    );
    assert_eq!(
        field("feature", &["sample_count"]),
        (DataType::Int32, false)
    );
    assert_eq!(field("feature", &[KAFKA_TIMESTAMP]), (utc_ms, true));
}

#[test]
fn schemas_that_do_not_map_are_refused_with_the_field_path() {
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[
            {"name":"inner","type":{"type":"record","name":"I","fields":[
                {"name":"choice","type":["null","int","string"]}]}}]}"#,
    )
    .unwrap();
    let e = RecordMapping::new(&schema).unwrap_err();
    assert!(e.to_string().starts_with("inner.choice: "), "{e}");
    let clash = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"_kafka_offset","type":"long"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        RecordMapping::new(&clash),
        Err(MapError::ReservedName(_))
    ));
}

#[test]
fn a_value_of_another_shape_is_refused_not_converted() {
    let mapping = RecordMapping::new(&store().latest("feature").schema).unwrap();
    let other = decoded_samples(1)
        .into_iter()
        .find(|(n, _)| *n == "alert")
        .unwrap()
        .1
        .remove(0);
    assert!(mapping.check(&other.value).is_err());
    assert!(mapping.check(&Value::Null).is_err());
    let feature = decoded_samples(1)
        .into_iter()
        .find(|(n, _)| *n == "feature")
        .unwrap()
        .1
        .remove(0)
        .value;
    mapping.check(&feature).unwrap();
    let with = |field: &str, v: Value| {
        let Value::Record(mut fields) = feature.clone() else {
            panic!("a record")
        };
        fields.iter_mut().find(|(n, _)| n == field).unwrap().1 = v;
        mapping
            .check(&Value::Record(fields))
            .unwrap_err()
            .to_string()
    };
    assert!(with("metric", Value::Null).starts_with("metric: "));
    assert!(
        with("instrument_model", Value::Enum(999, "X".into())).starts_with("instrument_model: ")
    );
    assert!(with("level", Value::String("1.5".into())).starts_with("level: "));
    // A nullable field takes null.
    let Value::Record(mut fields) = feature.clone() else {
        panic!("a record")
    };
    fields.iter_mut().find(|(n, _)| n == "spec_low").unwrap().1 =
        Value::Union(0, Box::new(Value::Null));
    mapping.check(&Value::Record(fields)).unwrap();
}

#[test]
fn every_record_type_has_its_event_time_field_documented() {
    let mut types: Vec<&str> = store().entries().iter().map(|e| e.name).collect();
    types.dedup();
    for t in types {
        let (_, field) = EVENT_TIME_FIELDS
            .iter()
            .find(|(n, _)| *n == t)
            .unwrap_or_else(|| panic!("{t} is not in EVENT_TIME_FIELDS"));
        let Some(field) = field else { continue };
        let Schema::Record(r) = &store().latest(t).schema else {
            panic!("{t} is a record")
        };
        let f = r
            .fields
            .iter()
            .find(|f| f.name == *field)
            .unwrap_or_else(|| panic!("{t} has no field {field}"));
        assert_eq!(f.schema, Schema::TimestampMillis, "{t}.{field}");
    }
}

#[test]
fn dates_are_utc_and_bounded() {
    assert_eq!(utc_date(0).as_deref(), Some("1970-01-01"));
    assert_eq!(utc_date(1_793_491_199_999).as_deref(), Some("2026-10-31"));
    assert_eq!(utc_date(1_793_491_200_000).as_deref(), Some("2026-11-01"));
    assert_eq!(utc_date(-1).as_deref(), Some("1969-12-31"));
    assert_eq!(utc_date(MAX_DATE_MS).as_deref(), Some("9999-12-31"));
    assert_eq!(utc_date(MIN_DATE_MS).as_deref(), Some("0001-01-01"));
    assert_eq!(utc_date(MAX_DATE_MS + 1), None);
    assert_eq!(utc_date(i64::MIN), None);
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "seqmon-export-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(out: &Path, format: Format, max_rows_per_file: u64) -> SinkSettings {
    SinkSettings {
        out: out.to_path_buf(),
        format,
        avro_codec: AvroCodec::Deflate,
        max_rows_per_file,
        batch_rows: 5,
        metadata: vec![("seqmon.topic".into(), "test".into())],
        record_type: "test".into(),
        private: false,
    }
}

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

#[test]
fn parquet_and_avro_files_read_back_the_same_values() {
    for (name, rows) in decoded_samples(9) {
        let latest = store().latest(name);
        let mapping = Arc::new(RecordMapping::new(&latest.schema).unwrap());
        for format in [Format::Parquet, Format::Avro] {
            let dir = TempDir::new(name);
            // 4 rows a file: 9 rows per version make several files.
            let mut writer =
                DatasetWriter::new(settings(&dir.0, format, 4), mapping.clone(), &latest.schema)
                    .unwrap();
            for row in &rows {
                writer.write("2026-11-30", row.clone()).unwrap();
            }
            let files = writer.finish().unwrap();
            let expected_files = rows.len().div_ceil(4);
            assert_eq!(files.len(), expected_files, "{name}");
            assert_eq!(
                files.iter().map(|f| f.records).sum::<u64>(),
                rows.len() as u64
            );
            let mut offset = 0;
            for (n, f) in files.iter().enumerate() {
                let ext = if format == Format::Parquet {
                    "parquet"
                } else {
                    "avro"
                };
                assert_eq!(f.path, format!("date=2026-11-30/part-{n:05}.{ext}"));
                let path = dir.0.join(&f.path);
                assert_eq!(std::fs::metadata(&path).unwrap().len(), f.bytes);
                let expected = &rows[offset..offset + f.records as usize];
                offset += f.records as usize;
                match format {
                    Format::Parquet => {
                        let batches = read_parquet(&path);
                        let mut at = 0;
                        for b in &batches {
                            assert_eq!(b.schema(), mapping.arrow_schema(), "{name}");
                            assert_batch(b, &expected[at..at + b.num_rows()]);
                            at += b.num_rows();
                        }
                        assert_eq!(at, expected.len());
                    }
                    Format::Avro => {
                        let reader =
                            apache_avro::Reader::new(std::fs::File::open(&path).unwrap()).unwrap();
                        assert_eq!(
                            reader
                                .user_metadata()
                                .get("seqmon.topic")
                                .map(Vec::as_slice),
                            Some(&b"test"[..])
                        );
                        let values: Vec<Value> = reader.map(|v| v.unwrap()).collect();
                        let want: Vec<Value> = expected.iter().map(|r| r.value.clone()).collect();
                        assert_eq!(values, want, "{name}");
                    }
                }
            }
            // Nothing left behind but the parts.
            let listed: Vec<String> = std::fs::read_dir(dir.0.join("date=2026-11-30"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(listed.len(), expected_files, "{listed:?}");
        }
    }
}

#[test]
fn a_second_export_into_the_same_directory_adds_parts_and_overwrites_none() {
    let (name, rows) = decoded_samples(2).remove(0);
    let latest = store().latest(name);
    let mapping = Arc::new(RecordMapping::new(&latest.schema).unwrap());
    let dir = TempDir::new("again");
    for (run, row) in rows.iter().take(2).enumerate() {
        let mut writer = DatasetWriter::new(
            settings(&dir.0, Format::Parquet, 100),
            mapping.clone(),
            &latest.schema,
        )
        .unwrap();
        writer.write("2026-11-30", row.clone()).unwrap();
        let files = writer.finish().unwrap();
        assert_eq!(
            files[0].path,
            format!("date=2026-11-30/part-{run:05}.parquet")
        );
    }
}

fn raw(offset: i64, timestamp_ms: Option<i64>, value: Option<Vec<u8>>) -> RawRecord {
    RawRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp_ms,
        log_append_time: false,
        key: Some(b"NV0001".to_vec()),
        value,
        headers: Vec::new(),
    }
}

fn encoded(name: &str, rows: usize) -> Vec<(Vec<u8>, Value)> {
    let (_, samples) = decoded_samples(rows)
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    let latest = store().latest(name);
    samples
        .into_iter()
        .take(rows)
        .map(|r| {
            (
                codec::encode_value(latest, r.value.clone()).unwrap(),
                r.value,
            )
        })
        .collect()
}

/// The files of a dataset: (relative path, records), and every record read back.
fn dataset(dir: &Path) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for date in std::fs::read_dir(dir).unwrap() {
        let date = date.unwrap();
        if date.file_name() == sink::MANIFEST {
            continue;
        }
        for file in std::fs::read_dir(date.path()).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            let rows = read_parquet(&file.path())
                .iter()
                .map(|b| b.num_rows())
                .sum();
            out.push((
                format!("{}/{name}", date.file_name().into_string().unwrap()),
                rows,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn records_go_to_the_date_of_their_event_time_and_every_skip_is_counted() {
    let dir = TempDir::new("exporter");
    let mut exporter = Exporter::new(
        Some(TopicRole::Features),
        None,
        settings(&dir.0, Format::Parquet, 100),
    )
    .unwrap();
    let features = encoded("feature", 8);
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (bytes, value)) in features.iter().enumerate() {
        // The Kafka timestamp is days away: the event time decides.
        exporter
            .accept(raw(i as i64, Some(0), Some(bytes.clone())))
            .unwrap();
        let date = utc_date(event_time(value, "window_end_ms").unwrap()).unwrap();
        *want
            .entry(format!("date={date}/part-00000.parquet"))
            .or_default() += 1;
    }
    exporter.accept(raw(100, Some(0), None)).unwrap();
    exporter
        .accept(raw(101, Some(0), Some(b"\xC3\x01 not ours".to_vec())))
        .unwrap();
    let (alert, _) = encoded("alert", 1).remove(0);
    exporter.accept(raw(102, Some(0), Some(alert))).unwrap();
    assert_eq!(exporter.written, features.len() as u64);
    let skipped: Vec<(&str, u64)> = exporter
        .skipped
        .iter()
        .map(|(k, n)| (k.name(), *n))
        .collect();
    assert_eq!(
        skipped,
        [
            ("tombstone", 1),
            ("unknown_schema", 1),
            ("other_record_type", 1)
        ]
    );
    let files = exporter.finish().unwrap();
    assert_eq!(
        files
            .iter()
            .map(|f| (f.path.clone(), f.records as usize))
            .collect::<Vec<_>>(),
        want.clone().into_iter().collect::<Vec<_>>()
    );
    assert!(want.len() >= 2, "the samples span several dates: {want:?}");
    assert_eq!(dataset(&dir.0), want.into_iter().collect::<Vec<_>>());
}

#[test]
fn sealed_records_open_with_the_ring_and_types_without_event_time_use_the_kafka_time() {
    let ring = KeyRing::new([("k1".to_string(), [7u8; 32])], "k1").unwrap();
    let other = KeyRing::new([("k1".to_string(), [8u8; 32])], "k1").unwrap();
    let dir = TempDir::new("sealed");
    let mut exporter = Exporter::new(
        Some(TopicRole::DeadLettersSensitive),
        Some(ring.clone()),
        settings(&dir.0, Format::Parquet, 100),
    )
    .unwrap();
    let letters = encoded("dead_letter", 4);
    let day = 86_400_000;
    for (i, (bytes, _)) in letters.iter().enumerate() {
        let ring = if i == 3 { &other } else { &ring };
        let (sealed, header) = ring.seal(TopicRole::DeadLettersSensitive, b"NV0001", bytes);
        let mut record = raw(
            i as i64,
            Some(1_790_000_000_000 + i as i64 * day),
            Some(sealed),
        );
        record.headers = vec![(
            seqmon_runtime::envelope::HEADER.to_string(),
            Some(header.into_bytes()),
        )];
        exporter.accept(record).unwrap();
    }
    // Unsealed on a sealed topic (a record of before encryption at rest) still exports; one
    // without any time has no date.
    exporter
        .accept(raw(10, Some(1_790_000_000_000), Some(letters[0].0.clone())))
        .unwrap();
    exporter
        .accept(raw(11, None, Some(letters[1].0.clone())))
        .unwrap();
    assert_eq!((exporter.written, exporter.opened), (4, 3));
    assert_eq!(exporter.unopened(), 1);
    assert_eq!(exporter.skipped.get(&Skip::NoDate), Some(&1));
    let files = exporter.finish().unwrap();
    let paths: Vec<(&str, u64)> = files.iter().map(|f| (f.path.as_str(), f.records)).collect();
    assert_eq!(
        paths,
        [
            ("date=2026-09-21/part-00000.parquet", 2),
            ("date=2026-09-22/part-00000.parquet", 1),
            ("date=2026-09-23/part-00000.parquet", 1),
        ]
    );
}

/// Alerts whose optional `cohort` (a record holding an enum) is null in every row: the nested
/// fields must be nullable in Arrow, or readers take the masked dictionary slots as values
/// (pyarrow: "Index 0 out of bounds").
#[test]
fn a_null_nested_record_holding_an_enum_writes_valid_parquet() {
    let (name, mut rows) = decoded_samples(6)
        .into_iter()
        .find(|(n, _)| *n == "alert")
        .unwrap();
    for row in &mut rows {
        let Value::Record(fields) = &mut row.value else {
            panic!("a record")
        };
        let (_, cohort) = fields.iter_mut().find(|(n, _)| n == "cohort").unwrap();
        *cohort = Value::Union(0, Box::new(Value::Null));
    }
    let latest = store().latest(name);
    let mapping = Arc::new(RecordMapping::new(&latest.schema).unwrap());
    let DataType::Struct(cohort) = mapping
        .arrow_schema()
        .field_with_name("cohort")
        .unwrap()
        .data_type()
        .clone()
    else {
        panic!("cohort is a struct")
    };
    for f in cohort.iter() {
        assert!(f.is_nullable(), "cohort.{} is not nullable", f.name());
    }
    let dir = TempDir::new("nullcohort");
    let mut writer = DatasetWriter::new(
        settings(&dir.0, Format::Parquet, 100),
        mapping.clone(),
        &latest.schema,
    )
    .unwrap();
    for row in &rows {
        mapping.check(&row.value).unwrap();
        writer.write("2026-11-30", row.clone()).unwrap();
    }
    let files = writer.finish().unwrap();
    let batches = read_parquet(&dir.0.join(&files[0].path));
    for b in &batches {
        for c in b.columns() {
            c.to_data().validate_full().unwrap();
        }
        assert_eq!(
            b.column_by_name("cohort").unwrap().null_count(),
            b.num_rows()
        );
    }
    // The Avro check still refuses a null where Avro has none.
    let mut bad = rows[0].value.clone();
    let Value::Record(fields) = &mut bad else {
        unreachable!()
    };
    let (_, id) = fields.iter_mut().find(|(n, _)| n == "alert_id").unwrap();
    *id = Value::Null;
    assert!(mapping.check(&bad).is_err());
}

fn one_row(name: &str) -> (Arc<RecordMapping>, &'static Schema, Row) {
    let (_, rows) = decoded_samples(1)
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    let latest = store().latest(name);
    let mapping = Arc::new(RecordMapping::new(&latest.schema).unwrap());
    (mapping, &latest.schema, rows[0].clone())
}

fn part_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_leftover_temporary_file_and_a_concurrent_export_overwrite_nothing() {
    let (mapping, schema, row) = one_row("feature");
    let dir = TempDir::new("leftover");
    let date_dir = dir.0.join("date=2026-11-30");
    std::fs::create_dir_all(&date_dir).unwrap();
    // What a killed export of an earlier version leaves.
    std::fs::write(date_dir.join(".part-00000.parquet.tmp"), b"partial").unwrap();
    std::fs::write(date_dir.join(".part-00001.parquet.tmp"), b"partial").unwrap();
    // Two exports into one directory, both open at once.
    let mut a = DatasetWriter::new(
        settings(&dir.0, Format::Parquet, 100),
        mapping.clone(),
        schema,
    )
    .unwrap();
    let mut b = DatasetWriter::new(
        settings(&dir.0, Format::Parquet, 100),
        mapping.clone(),
        schema,
    )
    .unwrap();
    a.write("2026-11-30", row.clone()).unwrap();
    b.write("2026-11-30", row.clone()).unwrap();
    b.write("2026-11-30", row.clone()).unwrap();
    let files_a = a.finish().unwrap();
    let files_b = b.finish().unwrap();
    assert_eq!(files_a[0].path, "date=2026-11-30/part-00000.parquet");
    assert_eq!(files_b[0].path, "date=2026-11-30/part-00001.parquet");
    let rows = |p: &str| -> usize {
        read_parquet(&dir.0.join(p))
            .iter()
            .map(|b| b.num_rows())
            .sum()
    };
    assert_eq!((rows(&files_a[0].path), rows(&files_b[0].path)), (1, 2));
    assert_eq!(
        part_names(&date_dir),
        [
            ".part-00000.parquet.tmp",
            ".part-00001.parquet.tmp",
            "part-00000.parquet",
            "part-00001.parquet"
        ]
    );
}

#[test]
fn a_directory_of_another_format_or_record_type_is_refused_and_existing_parts_are_counted() {
    let (mapping, schema, row) = one_row("feature");
    let dir = TempDir::new("mixed");
    let mut first = DatasetWriter::new(
        settings(&dir.0, Format::Parquet, 100),
        mapping.clone(),
        schema,
    )
    .unwrap();
    assert_eq!(first.existing(), sink::Existing::default());
    first.write("2026-11-30", row.clone()).unwrap();
    first.write("2026-12-01", row.clone()).unwrap();
    first.write("2026-12-01", row.clone()).unwrap();
    first.finish().unwrap();
    let manifest = std::fs::read_to_string(dir.0.join(sink::MANIFEST)).unwrap();
    assert_eq!(manifest, r#"{"format":"parquet","record_type":"test"}"#);

    let refused =
        |settings: SinkSettings| match DatasetWriter::new(settings, mapping.clone(), schema) {
            Err(e @ SinkError::Conflict { .. }) => e.to_string(),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("accepted"),
        };
    let avro = refused(settings(&dir.0, Format::Avro, 100));
    assert!(
        avro.starts_with("--out ") && avro.contains("parquet"),
        "{avro}"
    );
    let mut other_type = settings(&dir.0, Format::Parquet, 100);
    other_type.record_type = "alert".into();
    assert!(refused(other_type).contains("holds test records as parquet"));

    // A directory of before the manifest: its parts tell the format.
    std::fs::remove_file(dir.0.join(sink::MANIFEST)).unwrap();
    assert!(refused(settings(&dir.0, Format::Avro, 100)).contains("holds parquet parts"));

    // Same type and format: accepted, the parts there counted.
    let again =
        DatasetWriter::new(settings(&dir.0, Format::Parquet, 100), mapping, schema).unwrap();
    assert_eq!(
        again.existing(),
        sink::Existing {
            parts: 2,
            records: 3
        }
    );
}

#[test]
fn avro_parts_are_counted_and_written_in_blocks_of_a_mebibyte() {
    let (name, rows) = decoded_samples(400)
        .into_iter()
        .find(|(n, _)| *n == "telemetry")
        .unwrap();
    let latest = store().latest(name);
    let mapping = Arc::new(RecordMapping::new(&latest.schema).unwrap());
    let dir = TempDir::new("blocks");
    let mut writer = DatasetWriter::new(
        settings(&dir.0, Format::Avro, 1_000_000),
        mapping.clone(),
        &latest.schema,
    )
    .unwrap();
    for row in &rows {
        writer.write("2026-11-30", row.clone()).unwrap();
    }
    let files = writer.finish().unwrap();
    let path = dir.0.join(&files[0].path);
    let (blocks, records) =
        sink::avro_blocks(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
    assert_eq!(records, rows.len() as u64);
    // The library's default (16 000 bytes) cut these into about one block per 38 records.
    assert_eq!(
        blocks,
        1,
        "{} records, {} bytes",
        rows.len(),
        files[0].bytes
    );
    let again =
        DatasetWriter::new(settings(&dir.0, Format::Avro, 100), mapping, &latest.schema).unwrap();
    assert_eq!(again.existing().records, rows.len() as u64);
}

#[test]
fn exports_of_sensitive_topics_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (mapping, schema, row) = one_row("telemetry");
    let dir = TempDir::new("private");
    let out = dir.0.join("raw");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut private = settings(&out, Format::Parquet, 100);
    private.private = true;
    let mut writer = DatasetWriter::new(private, mapping.clone(), schema).unwrap();
    writer.write("2026-11-30", row.clone()).unwrap();
    let files = writer.finish().unwrap();
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("date=2026-11-30")), 0o700);
    assert_eq!(mode(&out.join(&files[0].path)), 0o600);
    assert_eq!(mode(&out.join(sink::MANIFEST)), 0o600);
    // Everything else as the umask says (not narrowed).
    let public = dir.0.join("sanitized");
    let mut writer =
        DatasetWriter::new(settings(&public, Format::Parquet, 100), mapping, schema).unwrap();
    writer.write("2026-11-30", row).unwrap();
    let files = writer.finish().unwrap();
    assert_ne!(mode(&public.join(&files[0].path)) & 0o044, 0);
}

/// A writer whose reader has gone (`| head`).
struct ClosedPipe;

impl std::io::Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_summary_stops_at_a_closed_pipe_without_panicking() {
    let read = crate::source::ReadSummary {
        records: 3,
        per_partition: BTreeMap::from([(0, (0, 3))]),
        stopped_early: false,
    };
    let files = [FileSummary {
        path: "date=2026-11-30/part-00000.parquet".into(),
        records: 3,
        bytes: 100,
    }];
    let skipped = BTreeMap::new();
    let summary = Summary {
        topic: "t",
        out: Path::new("/tmp/x"),
        read: &read,
        files: &files,
        written: 3,
        filtered: 0,
        skipped: &skipped,
        existing: sink::Existing {
            parts: 2,
            records: 7,
        },
    };
    let err = print_summary(&mut ClosedPipe, &summary).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    let mut text = Vec::new();
    print_summary(&mut text, &summary).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("already there: 2 part(s), 7 records"),
        "{text}"
    );
}
