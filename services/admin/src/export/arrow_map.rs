//! The Avro -> Arrow mapping of `seqmon-admin export`, driven by the record type's schema alone
//! (no per-type code): every record type and version in the store maps, and a type added later
//! maps without a change here as long as it uses the types below.
//!
//! | Avro                                   | Arrow                                           |
//! |----------------------------------------|-------------------------------------------------|
//! | boolean, int, long, float, double      | Boolean, Int32, Int64, Float32, Float64         |
//! | string, uuid                           | Utf8                                            |
//! | bytes / fixed(n)                       | Binary / FixedSizeBinary(n)                     |
//! | enum                                   | Dictionary(Int32, Utf8) over all its symbols, in schema order |
//! | int date                               | Date32                                          |
//! | int time-millis / long time-micros     | Time32(ms) / Time64(us)                         |
//! | long timestamp-millis/-micros/-nanos   | Timestamp(ms/us/ns, "UTC")                      |
//! | long local-timestamp-*                 | Timestamp(unit, no time zone)                   |
//! | ["null", T]                            | T, nullable                                     |
//! | array<T> / map<T> / record             | List<T> / Map<Utf8, T> (keys sorted) / Struct   |
//!
//! A top-level field that is not a union is non-nullable in Arrow; the fields of nested records
//! are all nullable in Arrow (a null parent makes its children null), while the check of
//! values keeps Avro's nullability. Unions of two or more non-null
//! branches, decimals and durations are refused with [`MapError::Unsupported`] (no record type
//! in the store has them; Parquet has no union type).
//!
//! Failure: a schema that does not map is a [`MapError`] before anything is read; a value that
//! does not follow the schema is refused by [`RecordMapping::check`] (the caller skips and
//! counts it) so a batch of checked values always converts.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, DictionaryArray, FixedSizeBinaryArray,
    Float32Array, Float64Array, Int32Array, Int64Array, ListArray, MapArray, NullArray,
    RecordBatch, StringArray, StructArray, Time32MillisecondArray, Time64MicrosecondArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, SchemaRef, TimeUnit};

/// Why a schema or a batch of values does not map.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The schema uses an Avro type this mapping does not cover.
    #[error("{path}: Avro {avro} has no Arrow mapping (unions of several non-null types, decimals and durations are not exported)")]
    Unsupported { path: String, avro: String },
    /// A named type is used before it is defined.
    #[error("{path}: named type {name} is not defined in the schema")]
    UnknownName { path: String, name: String },
    /// A value does not follow the schema.
    #[error("{path}: value does not follow the schema (expected {expected})")]
    Mismatch {
        path: String,
        expected: &'static str,
    },
    /// The Kafka metadata columns clash with a field of the record.
    #[error("the record has a field named {0}, which export reserves for Kafka metadata")]
    ReservedName(String),
    /// Arrow refused the arrays (a bug here, not bad input: checked values always convert).
    #[error("building Arrow arrays: {0}")]
    Arrow(#[from] ArrowError),
}

/// Timestamps that carry an instant are in UTC, as Avro's timestamp-* logical types define.
const UTC: &str = "UTC";

/// Columns added after the record's own, so a row can be traced to its Kafka record.
pub const KAFKA_PARTITION: &str = "_kafka_partition";
/// The record's offset in its partition.
pub const KAFKA_OFFSET: &str = "_kafka_offset";
/// The record's Kafka timestamp (ms, UTC; null if the record has none).
pub const KAFKA_TIMESTAMP: &str = "_kafka_timestamp";

/// Primitive column kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prim {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Date,
    TimeMillis,
    TimeMicros,
    Timestamp(TimeUnit, bool),
}

/// One node of the mapped schema: the Arrow type and how to fill it from Avro values.
#[derive(Debug, Clone)]
enum Node {
    Prim(Prim),
    Fixed(i32),
    Enum(Arc<StringArray>),
    List(FieldRef, Box<Node>),
    /// Entries field (a struct of key and value), value node.
    Map(FieldRef, Box<Node>),
    /// Field names in schema order, their nodes, the Arrow fields, and whether each field is
    /// nullable in Avro (what [`conforms`] checks; the Arrow field of a nested record is
    /// nullable even where Avro's is not, see [`map_schema`]).
    Struct(Vec<String>, Vec<Node>, Fields, Vec<bool>),
}

impl Node {
    fn data_type(&self) -> DataType {
        match self {
            Node::Prim(p) => match p {
                Prim::Null => DataType::Null,
                Prim::Boolean => DataType::Boolean,
                Prim::Int => DataType::Int32,
                Prim::Long => DataType::Int64,
                Prim::Float => DataType::Float32,
                Prim::Double => DataType::Float64,
                Prim::Bytes => DataType::Binary,
                Prim::String => DataType::Utf8,
                Prim::Date => DataType::Date32,
                Prim::TimeMillis => DataType::Time32(TimeUnit::Millisecond),
                Prim::TimeMicros => DataType::Time64(TimeUnit::Microsecond),
                Prim::Timestamp(unit, utc) => {
                    DataType::Timestamp(*unit, utc.then(|| Arc::from(UTC)))
                }
            },
            Node::Fixed(n) => DataType::FixedSizeBinary(*n),
            Node::Enum(_) => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            Node::List(item, _) => DataType::List(item.clone()),
            Node::Map(entries, _) => DataType::Map(entries.clone(), false),
            Node::Struct(_, _, fields, _) => DataType::Struct(fields.clone()),
        }
    }
}

/// The Arrow form of one record type: its schema (record fields, then the Kafka metadata
/// columns) and the converter of its values.
#[derive(Debug, Clone)]
pub struct RecordMapping {
    root: Node,
    arrow: SchemaRef,
}

/// A record to convert, with where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub value: Value,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

impl RecordMapping {
    /// Maps a record schema. Errors name the field path that does not map.
    pub fn new(schema: &Schema) -> Result<Self, MapError> {
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| MapError::UnknownName {
            path: String::new(),
            name: e.to_string(),
        })?;
        let names: HashMap<Name, &Schema> = resolved
            .get_names()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let (root, nullable) = map_schema(schema, &names, "")?;
        let Node::Struct(_, _, fields, _) = &root else {
            return Err(MapError::Unsupported {
                path: "(top level)".into(),
                avro: "a non-record top-level type".into(),
            });
        };
        debug_assert!(!nullable);
        let mut columns: Vec<FieldRef> = fields.iter().cloned().collect();
        for reserved in [KAFKA_PARTITION, KAFKA_OFFSET, KAFKA_TIMESTAMP] {
            if columns.iter().any(|f| f.name() == reserved) {
                return Err(MapError::ReservedName(reserved.into()));
            }
        }
        columns.push(Arc::new(Field::new(
            KAFKA_PARTITION,
            DataType::Int32,
            false,
        )));
        columns.push(Arc::new(Field::new(KAFKA_OFFSET, DataType::Int64, false)));
        columns.push(Arc::new(Field::new(
            KAFKA_TIMESTAMP,
            DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from(UTC))),
            true,
        )));
        Ok(RecordMapping {
            root,
            arrow: Arc::new(arrow_schema::Schema::new(columns)),
        })
    }

    /// The Arrow schema of the batches (record fields, then `_kafka_*`).
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Whether `value` follows the schema (the guard before a value joins a batch, so that a
    /// bad record is skipped alone instead of failing its batch).
    /// It accepts exactly what [`RecordMapping::to_batch`] converts.
    pub fn check(&self, value: &Value) -> Result<(), MapError> {
        conforms(&self.root, false, value, "")
    }

    /// Converts checked rows into one record batch.
    pub fn to_batch(&self, rows: &[Row]) -> Result<RecordBatch, MapError> {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| Some(&r.value)).collect();
        let Node::Struct(names, nodes, _, _) = &self.root else {
            unreachable!("RecordMapping::new only accepts records")
        };
        let mut columns = struct_children(names, nodes, &values, "")?;
        columns.push(Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.offset),
        )));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter(rows.iter().map(|r| r.timestamp_ms))
                .with_timezone(UTC),
        ));
        Ok(RecordBatch::try_new(self.arrow.clone(), columns)?)
    }
}

fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn unsupported(path: &str, avro: &str) -> MapError {
    MapError::Unsupported {
        path: if path.is_empty() {
            "(top level)".into()
        } else {
            path.into()
        },
        avro: avro.into(),
    }
}

/// Maps a schema to a node and whether it is nullable (a union with null).
fn map_schema(
    schema: &Schema,
    names: &HashMap<Name, &Schema>,
    path: &str,
) -> Result<(Node, bool), MapError> {
    let prim = |p| Ok((Node::Prim(p), false));
    match schema {
        Schema::Null => Ok((Node::Prim(Prim::Null), true)),
        Schema::Boolean => prim(Prim::Boolean),
        Schema::Int => prim(Prim::Int),
        Schema::Long => prim(Prim::Long),
        Schema::Float => prim(Prim::Float),
        Schema::Double => prim(Prim::Double),
        Schema::Bytes => prim(Prim::Bytes),
        Schema::String | Schema::Uuid => prim(Prim::String),
        Schema::Date => prim(Prim::Date),
        Schema::TimeMillis => prim(Prim::TimeMillis),
        Schema::TimeMicros => prim(Prim::TimeMicros),
        Schema::TimestampMillis => prim(Prim::Timestamp(TimeUnit::Millisecond, true)),
        Schema::TimestampMicros => prim(Prim::Timestamp(TimeUnit::Microsecond, true)),
        Schema::TimestampNanos => prim(Prim::Timestamp(TimeUnit::Nanosecond, true)),
        Schema::LocalTimestampMillis => prim(Prim::Timestamp(TimeUnit::Millisecond, false)),
        Schema::LocalTimestampMicros => prim(Prim::Timestamp(TimeUnit::Microsecond, false)),
        Schema::LocalTimestampNanos => prim(Prim::Timestamp(TimeUnit::Nanosecond, false)),
        Schema::Fixed(f) => {
            let size = i32::try_from(f.size).map_err(|_| unsupported(path, "fixed this large"))?;
            Ok((Node::Fixed(size), false))
        }
        Schema::Enum(e) => Ok((
            Node::Enum(Arc::new(StringArray::from_iter_values(e.symbols.iter()))),
            false,
        )),
        Schema::Array(a) => {
            let (item, nullable) = map_schema(&a.items, names, &child_path(path, "item"))?;
            let field = Arc::new(Field::new("item", item.data_type(), nullable));
            Ok((Node::List(field, Box::new(item)), false))
        }
        Schema::Map(m) => {
            let (value, nullable) = map_schema(&m.types, names, &child_path(path, "value"))?;
            let entries = Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", value.data_type(), nullable),
            ]);
            let field = Arc::new(Field::new("entries", DataType::Struct(entries), false));
            Ok((Node::Map(field, Box::new(value)), false))
        }
        Schema::Record(r) => {
            let mut field_names = Vec::with_capacity(r.fields.len());
            let mut nodes = Vec::with_capacity(r.fields.len());
            let mut fields = Vec::with_capacity(r.fields.len());
            let mut avro_nullable = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let (node, nullable) = map_schema(&f.schema, names, &child_path(path, &f.name))?;
                // The fields of a nested record are nullable in Arrow whatever Avro says: where
                // the record itself is null its children hold nulls too, and a child declared
                // non-nullable makes readers take those slots as values (pyarrow reads an
                // all-null dictionary child as "Index 0 out of bounds").
                let arrow_nullable = nullable || !path.is_empty();
                fields.push(Field::new(&f.name, node.data_type(), arrow_nullable));
                avro_nullable.push(nullable);
                field_names.push(f.name.clone());
                nodes.push(node);
            }
            Ok((
                Node::Struct(field_names, nodes, Fields::from(fields), avro_nullable),
                false,
            ))
        }
        Schema::Union(u) => {
            let non_null: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|s| !matches!(s, Schema::Null))
                .collect();
            let has_null = non_null.len() < u.variants().len();
            match non_null.as_slice() {
                [] => Ok((Node::Prim(Prim::Null), true)),
                [only] => {
                    let (node, nullable) = map_schema(only, names, path)?;
                    Ok((node, nullable || has_null))
                }
                _ => Err(unsupported(path, "union of several non-null types")),
            }
        }
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .or_else(|| {
                    // A reference written without its namespace inside the same namespace.
                    names
                        .iter()
                        .find(|(n, _)| n.name == name.name)
                        .map(|(_, s)| s)
                })
                .ok_or_else(|| MapError::UnknownName {
                    path: path.into(),
                    name: name.fullname(None),
                })?;
            map_schema(target, names, path)
        }
        Schema::Decimal(_) | Schema::BigDecimal => Err(unsupported(path, "decimal")),
        Schema::Duration => Err(unsupported(path, "duration")),
    }
}

/// A value with its union wrapper removed; `None` for null.
fn unwrap(value: &Value) -> Option<&Value> {
    match value {
        Value::Null => None,
        Value::Union(_, inner) => unwrap(inner),
        v => Some(v),
    }
}

fn mismatch(path: &str, expected: &'static str) -> MapError {
    MapError::Mismatch {
        path: if path.is_empty() {
            "(record)".into()
        } else {
            path.into()
        },
        expected,
    }
}

/// The dictionary key of an enum value: its index when the symbol there is its own, else
/// where its symbol is (the key follows the symbol, whatever index a resolver left).
fn symbol_index(symbols: &StringArray, value: &Value) -> Option<i32> {
    let (index, symbol) = match value {
        Value::Enum(i, s) => (Some(*i as usize), s.as_str()),
        Value::String(s) => (None, s.as_str()),
        _ => return None,
    };
    match index {
        Some(i) if i < symbols.len() && symbols.value(i) == symbol => Some(i as i32),
        _ => symbols
            .iter()
            .position(|x| x == Some(symbol))
            .map(|i| i as i32),
    }
}

/// Whether `value` (a field of nullability `nullable`) converts into a column of `node`: the
/// same cases as [`build`], without building anything.
fn conforms(node: &Node, nullable: bool, value: &Value, path: &str) -> Result<(), MapError> {
    let Some(value) = unwrap(value) else {
        return if nullable {
            Ok(())
        } else {
            Err(mismatch(path, "a value (the field is not nullable)"))
        };
    };
    let ok = match (node, value) {
        (Node::Prim(p), v) => match (p, v) {
            (Prim::Null, _) => false,
            (Prim::Boolean, Value::Boolean(_))
            | (Prim::Int, Value::Int(_))
            | (Prim::Long, Value::Long(_) | Value::Int(_))
            | (Prim::Float, Value::Float(_))
            | (Prim::Double, Value::Double(_) | Value::Float(_))
            | (Prim::Bytes, Value::Bytes(_) | Value::Fixed(_, _))
            | (Prim::String, Value::String(_) | Value::Uuid(_) | Value::Enum(_, _))
            | (Prim::Date, Value::Date(_) | Value::Int(_))
            | (Prim::TimeMillis, Value::TimeMillis(_) | Value::Int(_))
            | (Prim::TimeMicros, Value::TimeMicros(_) | Value::Long(_)) => true,
            (Prim::Timestamp(unit, _), v) => matches!(
                (unit, v),
                (_, Value::Long(_))
                    | (
                        TimeUnit::Millisecond,
                        Value::TimestampMillis(_) | Value::LocalTimestampMillis(_)
                    )
                    | (
                        TimeUnit::Microsecond,
                        Value::TimestampMicros(_) | Value::LocalTimestampMicros(_)
                    )
                    | (
                        TimeUnit::Nanosecond | TimeUnit::Second,
                        Value::TimestampNanos(_) | Value::LocalTimestampNanos(_)
                    )
            ),
            _ => false,
        },
        (Node::Fixed(size), Value::Fixed(_, b)) => b.len() == *size as usize,
        (Node::Enum(symbols), v) => symbol_index(symbols, v).is_some(),
        (Node::List(field, item), Value::Array(items)) => {
            let path = child_path(path, "item");
            for v in items {
                conforms(item, field.is_nullable(), v, &path)?;
            }
            true
        }
        (Node::Map(entries, value_node), Value::Map(m)) => {
            let DataType::Struct(entry_fields) = entries.data_type() else {
                unreachable!("map entries are a struct")
            };
            let nullable = entry_fields[1].is_nullable();
            let path = child_path(path, "value");
            for v in m.values() {
                conforms(value_node, nullable, v, &path)?;
            }
            true
        }
        (Node::Struct(names, nodes, _, avro_nullable), Value::Record(values)) => {
            for (i, name) in names.iter().enumerate() {
                let path = child_path(path, name);
                let field = match values.get(i) {
                    Some((n, v)) if n == name => Some(v),
                    _ => values.iter().find(|(n, _)| n == name).map(|(_, v)| v),
                };
                let field = field.ok_or_else(|| mismatch(&path, "a field"))?;
                conforms(&nodes[i], avro_nullable[i], field, &path)?;
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(mismatch(path, "a value of the schema's type"))
    }
}

/// The children of a struct column, from record values (`None`: the struct is null, and so
/// is every child, masked by the struct's own null).
fn struct_children(
    names: &[String],
    nodes: &[Node],
    values: &[Option<&Value>],
    path: &str,
) -> Result<Vec<ArrayRef>, MapError> {
    let mut per_field: Vec<Vec<Option<&Value>>> = (0..names.len())
        .map(|_| Vec::with_capacity(values.len()))
        .collect();
    for value in values {
        match value {
            None => per_field.iter_mut().for_each(|c| c.push(None)),
            Some(Value::Record(fields)) => {
                for (i, name) in names.iter().enumerate() {
                    // Decoded records list their fields in schema order; look up by name
                    // only when they do not.
                    let field = match fields.get(i) {
                        Some((n, v)) if n == name => Some(v),
                        _ => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
                    };
                    let field =
                        field.ok_or_else(|| mismatch(&child_path(path, name), "a field"))?;
                    per_field[i].push(unwrap(field));
                }
            }
            Some(_) => return Err(mismatch(path, "a record")),
        }
    }
    names
        .iter()
        .zip(nodes)
        .zip(&per_field)
        .map(|((name, node), values)| build(node, values, &child_path(path, name)))
        .collect()
}

fn nulls_of(values: &[Option<&Value>]) -> Option<NullBuffer> {
    values
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(values.iter().map(Option::is_some)))
}

/// One column from its values (`None`: null).
fn build(node: &Node, values: &[Option<&Value>], path: &str) -> Result<ArrayRef, MapError> {
    macro_rules! column {
        ($array:ty, $expected:literal, $($pattern:pat => $out:expr),+) => {{
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                out.push(match v {
                    None => None,
                    $(Some($pattern) => Some($out),)+
                    Some(_) => return Err(mismatch(path, $expected)),
                });
            }
            <$array>::from(out)
        }};
    }
    let array: ArrayRef = match node {
        Node::Prim(p) => match p {
            Prim::Null => Arc::new(NullArray::new(values.len())),
            Prim::Boolean => Arc::new(column!(BooleanArray, "a boolean", Value::Boolean(b) => *b)),
            Prim::Int => Arc::new(column!(Int32Array, "an int", Value::Int(i) => *i)),
            Prim::Long => Arc::new(column!(Int64Array, "a long",
                Value::Long(i) => *i, Value::Int(i) => i64::from(*i))),
            Prim::Float => Arc::new(column!(Float32Array, "a float", Value::Float(f) => *f)),
            Prim::Double => Arc::new(column!(Float64Array, "a double",
                Value::Double(f) => *f, Value::Float(f) => f64::from(*f))),
            Prim::Bytes => {
                let out = column!(Vec<Option<&[u8]>>, "bytes",
                    Value::Bytes(b) => b.as_slice(), Value::Fixed(_, b) => b.as_slice());
                Arc::new(BinaryArray::from(out))
            }
            Prim::String => {
                let out: Vec<Option<String>> = column!(Vec<Option<String>>, "a string",
                    Value::String(s) => s.clone(), Value::Uuid(u) => u.to_string(),
                    Value::Enum(_, s) => s.clone());
                Arc::new(StringArray::from(out))
            }
            Prim::Date => Arc::new(column!(Date32Array, "a date",
                Value::Date(d) => *d, Value::Int(d) => *d)),
            Prim::TimeMillis => Arc::new(column!(Time32MillisecondArray, "a time-millis",
                Value::TimeMillis(t) => *t, Value::Int(t) => *t)),
            Prim::TimeMicros => Arc::new(column!(Time64MicrosecondArray, "a time-micros",
                Value::TimeMicros(t) => *t, Value::Long(t) => *t)),
            Prim::Timestamp(unit, utc) => {
                let tz = utc.then_some(UTC);
                match unit {
                    TimeUnit::Millisecond => Arc::new(
                        column!(TimestampMillisecondArray, "a timestamp-millis",
                            Value::TimestampMillis(t) => *t,
                            Value::LocalTimestampMillis(t) => *t,
                            Value::Long(t) => *t)
                        .with_timezone_opt(tz),
                    ),
                    TimeUnit::Microsecond => Arc::new(
                        column!(TimestampMicrosecondArray, "a timestamp-micros",
                            Value::TimestampMicros(t) => *t,
                            Value::LocalTimestampMicros(t) => *t,
                            Value::Long(t) => *t)
                        .with_timezone_opt(tz),
                    ),
                    TimeUnit::Nanosecond | TimeUnit::Second => Arc::new(
                        column!(TimestampNanosecondArray, "a timestamp-nanos",
                            Value::TimestampNanos(t) => *t,
                            Value::LocalTimestampNanos(t) => *t,
                            Value::Long(t) => *t)
                        .with_timezone_opt(tz),
                    ),
                }
            }
        },
        Node::Fixed(size) => {
            let out = column!(Vec<Option<&[u8]>>, "fixed", Value::Fixed(_, b) => b.as_slice());
            Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                out.into_iter(),
                *size,
            )?)
        }
        Node::Enum(symbols) => {
            let mut keys = Vec::with_capacity(values.len());
            for v in values {
                keys.push(match v {
                    None => None,
                    Some(v) => Some(
                        symbol_index(symbols, v)
                            .ok_or_else(|| mismatch(path, "a symbol of the enum"))?,
                    ),
                });
            }
            Arc::new(DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                symbols.clone(),
            )?)
        }
        Node::List(field, item) => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::Array(a)) => {
                        lengths.push(a.len());
                        items.extend(a.iter().map(unwrap));
                    }
                    Some(_) => return Err(mismatch(path, "an array")),
                }
            }
            let child = build(item, &items, &child_path(path, "item"))?;
            Arc::new(ListArray::try_new(
                field.clone(),
                OffsetBuffer::from_lengths(lengths),
                child,
                nulls_of(values),
            )?)
        }
        Node::Map(entries, value_node) => {
            let mut lengths = Vec::with_capacity(values.len());
            let mut keys: Vec<&str> = Vec::new();
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in values {
                match v {
                    None => lengths.push(0),
                    Some(Value::Map(m)) => {
                        lengths.push(m.len());
                        // Sorted, so the same map always writes the same bytes.
                        let mut sorted: Vec<_> = m.iter().collect();
                        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                        for (k, v) in sorted {
                            keys.push(k);
                            items.push(unwrap(v));
                        }
                    }
                    Some(_) => return Err(mismatch(path, "a map")),
                }
            }
            let DataType::Struct(entry_fields) = entries.data_type() else {
                unreachable!("map entries are a struct")
            };
            let value_array = build(value_node, &items, &child_path(path, "value"))?;
            let entry_array = StructArray::try_new(
                entry_fields.clone(),
                vec![Arc::new(StringArray::from(keys)), value_array],
                None,
            )?;
            Arc::new(MapArray::try_new(
                entries.clone(),
                OffsetBuffer::from_lengths(lengths),
                entry_array,
                nulls_of(values),
                false,
            )?)
        }
        Node::Struct(names, nodes, fields, _) => {
            let children = struct_children(names, nodes, values, path)?;
            Arc::new(StructArray::try_new_with_length(
                fields.clone(),
                children,
                nulls_of(values),
                values.len(),
            )?)
        }
    };
    Ok(array)
}
