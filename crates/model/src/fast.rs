//! Direct Avro binary → Rust decoding, for records written with the newest schema version.
//!
//! apache-avro decodes into its generic `Value` tree and then deserializes the tree into the
//! Rust type: two passes and an allocation per field. Here each schema is compiled once into a
//! [`Plan`] (names resolved, logical types reduced to their encodings) and a serde deserializer
//! walks the bytes with it, borrowing strings where the type allows. The bytes are standard Avro
//! binary (the format is not ours to change): tests show that for every record type the result
//! equals apache-avro's, that re-encoding gives the same bytes, and that fastavro (an independent
//! implementation, from PyPI) reads the same bytes to the same values.
//!
//! Records written with an older version are read straight into the newest shape when that needs
//! no value converted (added fields take the reader's default, dropped fields are skipped:
//! [`Plan::resolving`]); anything else goes through apache-avro's resolving decode.
//! Malformed input is a typed error, never a panic: every read is bounds-checked and block counts
//! are checked against the bytes left before anything is allocated. It is stricter than
//! apache-avro 0.21 in one place: apache-avro reads a string, boolean or union index cut off by
//! the end of the input as null and accepts the record; this decoder refuses a truncated record
//! (its dead-letter reason stays UNDECODABLE).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use apache_avro::schema::{Name, Schema};

/// A schema compiled for decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(Vec<String>),
    Array(Box<Plan>),
    Map(Box<Plan>),
    Union(Vec<Plan>),
    /// The writer's fields in order, then the reader's fields the writer lacks, with the
    /// reader schema's default for each.
    Record(Vec<(String, Plan)>, Vec<(String, serde_json::Value)>),
}

impl Plan {
    /// Compiles `schema`; `None` for what this decoder leaves to apache-avro (decimals,
    /// durations, recursive types).
    pub fn compile(schema: &Schema) -> Option<Plan> {
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema).ok()?;
        compile(schema, resolved.get_names(), None, 0)
    }
}

impl Plan {
    /// Compiles the resolution of data written with `writer` into `reader`'s shape, for the
    /// cases that need no conversion of values: fields added in the reader (taking its default),
    /// fields dropped (skipped), enums whose writer symbols the reader has, the same unions.
    /// `None` for anything else (type promotions, reshaped unions), left to apache-avro.
    pub fn resolving(writer: &Schema, reader: &Schema) -> Option<Plan> {
        let w = apache_avro::schema::ResolvedSchema::try_from(writer).ok()?;
        let r = apache_avro::schema::ResolvedSchema::try_from(reader).ok()?;
        let sides = Sides {
            writer: w.get_names(),
            reader: r.get_names(),
        };
        resolve(&sides, writer, reader, None, None, 0)
    }
}

struct Sides<'a, 's> {
    writer: &'a apache_avro::schema::NamesRef<'s>,
    reader: &'a apache_avro::schema::NamesRef<'s>,
}

fn lookup<'s>(
    names: &apache_avro::schema::NamesRef<'s>,
    schema: &'s Schema,
    namespace: Option<&str>,
) -> Option<(&'s Schema, Option<String>)> {
    match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(&namespace.map(str::to_string));
            let target = names.get(&full).or_else(|| names.get(name))?;
            Some((*target, full.namespace.clone()))
        }
        other => Some((other, namespace.map(str::to_string))),
    }
}

fn resolve<'s>(
    sides: &Sides<'_, 's>,
    writer: &'s Schema,
    reader: &'s Schema,
    w_ns: Option<&str>,
    r_ns: Option<&str>,
    depth: usize,
) -> Option<Plan> {
    if depth > 32 {
        return None;
    }
    let (writer, w_ns) = lookup(sides.writer, writer, w_ns)?;
    let (reader, r_ns) = lookup(sides.reader, reader, r_ns)?;
    let (w_ns, r_ns) = (w_ns.as_deref(), r_ns.as_deref());
    match (writer, reader) {
        (Schema::Record(w), Schema::Record(r)) => {
            let w_ns = w.name.namespace.as_deref().or(w_ns);
            let r_ns = r.name.namespace.as_deref().or(r_ns);
            let mut fields = Vec::new();
            for wf in &w.fields {
                let plan = match r.fields.iter().find(|rf| rf.name == wf.name) {
                    Some(rf) => resolve(sides, &wf.schema, &rf.schema, w_ns, r_ns, depth + 1)?,
                    None => compile(&wf.schema, sides.writer, w_ns, depth + 1)?,
                };
                fields.push((wf.name.clone(), plan));
            }
            let mut defaults = Vec::new();
            for rf in &r.fields {
                if !w.fields.iter().any(|wf| wf.name == rf.name) {
                    defaults.push((rf.name.clone(), rf.default.clone()?));
                }
            }
            Some(Plan::Record(fields, defaults))
        }
        (Schema::Union(w), Schema::Union(r)) if w.variants().len() == r.variants().len() => {
            Some(Plan::Union(
                w.variants()
                    .iter()
                    .zip(r.variants())
                    .map(|(a, b)| resolve(sides, a, b, w_ns, r_ns, depth + 1))
                    .collect::<Option<Vec<_>>>()?,
            ))
        }
        (Schema::Enum(w), Schema::Enum(r)) => w
            .symbols
            .iter()
            .all(|s| r.symbols.contains(s))
            .then(|| Plan::Enum(w.symbols.clone())),
        (Schema::Array(w), Schema::Array(r)) => Some(Plan::Array(Box::new(resolve(
            sides,
            &w.items,
            &r.items,
            w_ns,
            r_ns,
            depth + 1,
        )?))),
        (Schema::Map(w), Schema::Map(r)) => Some(Plan::Map(Box::new(resolve(
            sides,
            &w.types,
            &r.types,
            w_ns,
            r_ns,
            depth + 1,
        )?))),
        (w, r) => {
            let a = compile(w, sides.writer, w_ns, depth + 1)?;
            let b = compile(r, sides.reader, r_ns, depth + 1)?;
            // Same primitive (or fixed of the same size) on both sides: no conversion.
            let leaf = !matches!(
                a,
                Plan::Record(..) | Plan::Union(_) | Plan::Enum(_) | Plan::Array(_) | Plan::Map(_)
            );
            (leaf && a == b).then_some(a)
        }
    }
}

fn compile(
    schema: &Schema,
    names: &apache_avro::schema::NamesRef<'_>,
    namespace: Option<&str>,
    depth: usize,
) -> Option<Plan> {
    if depth > 32 {
        return None;
    }
    let next = |s: &Schema, ns: Option<&str>| compile(s, names, ns, depth + 1);
    Some(match schema {
        Schema::Null => Plan::Null,
        Schema::Boolean => Plan::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Plan::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Plan::Long,
        Schema::Float => Plan::Float,
        Schema::Double => Plan::Double,
        Schema::Bytes => Plan::Bytes,
        Schema::String | Schema::Uuid => Plan::String,
        Schema::Fixed(f) => Plan::Fixed(f.size),
        Schema::Enum(e) => Plan::Enum(e.symbols.clone()),
        Schema::Array(a) => Plan::Array(Box::new(next(&a.items, namespace)?)),
        Schema::Map(m) => Plan::Map(Box::new(next(&m.types, namespace)?)),
        Schema::Union(u) => Plan::Union(
            u.variants()
                .iter()
                .map(|v| next(v, namespace))
                .collect::<Option<Vec<_>>>()?,
        ),
        Schema::Record(r) => {
            let ns = r.name.namespace.as_deref().or(namespace);
            Plan::Record(
                r.fields
                    .iter()
                    .map(|f| Some((f.name.clone(), next(&f.schema, ns)?)))
                    .collect::<Option<Vec<_>>>()?,
                Vec::new(),
            )
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(&namespace.map(str::to_string));
            let target = names
                .get(&full)
                .or_else(|| names.get(name))
                .or_else(|| names.get(&Name::new(&name.name).ok()?))?;
            next(target, full.namespace.as_deref())?
        }
        _ => return None,
    })
}

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FastError(pub String);

impl de::Error for FastError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        FastError(msg.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, FastError> {
    Err(FastError(msg.into()))
}

/// Decodes one datum of `plan` from the start of `input` into `T`; returns the bytes left.
pub fn from_slice<'b, T: serde::Deserialize<'b>>(
    plan: &Plan,
    input: &'b [u8],
) -> Result<(T, usize), FastError> {
    let mut de = Decoder { plan, input };
    let value = T::deserialize(&mut de)?;
    Ok((value, de.input.len()))
}

struct Decoder<'p, 'b> {
    plan: &'p Plan,
    input: &'b [u8],
}

impl<'p, 'b> Decoder<'p, 'b> {
    fn with<'q>(&mut self, plan: &'q Plan) -> Decoder<'q, 'b> {
        Decoder {
            plan,
            input: self.input,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8], FastError> {
        if n > self.input.len() {
            return fail(format!(
                "needs {n} bytes, {} left (truncated)",
                self.input.len()
            ));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn long(&mut self) -> Result<i64, FastError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let b = *self
                .input
                .first()
                .ok_or_else(|| FastError("varint truncated".into()))?;
            self.input = &self.input[1..];
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        fail("varint longer than 10 bytes")
    }

    fn int(&mut self) -> Result<i32, FastError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| FastError(format!("int {v} out of range")))
    }

    fn len(&mut self) -> Result<usize, FastError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| FastError(format!("negative length {n}")))?;
        if n > self.input.len() {
            return fail(format!(
                "length {n} exceeds the {} bytes left",
                self.input.len()
            ));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'b str, FastError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| FastError(format!("string: {e}")))
    }

    /// The next block's item count (0 ends the array or map). A negative count is followed by
    /// the block's byte size, which we read past.
    fn block(&mut self) -> Result<usize, FastError> {
        let n = self.long()?;
        let n = if n < 0 {
            self.long()?;
            n.checked_neg()
                .ok_or_else(|| FastError("block count overflows".into()))?
        } else {
            n
        };
        // Every item takes at least... nothing (null items), so only bound by a sane maximum.
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.input.len().max(1) * 8 + 1024)
            .ok_or_else(|| FastError(format!("block of {n} items is implausible")))
    }

    fn symbol(&mut self, symbols: &'p [String]) -> Result<&'p str, FastError> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| symbols.get(i))
            .map(String::as_str)
            .ok_or_else(|| FastError(format!("enum index {i} out of range")))
    }

    fn union_branch(&mut self, variants: &'p [Plan]) -> Result<&'p Plan, FastError> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| variants.get(i))
            .ok_or_else(|| FastError(format!("union branch {i} out of range")))
    }
}

macro_rules! via_any {
    ($($name:ident)*) => {
        $(fn $name<V: Visitor<'b>>(self, visitor: V) -> Result<V::Value, FastError> {
            self.deserialize_any(visitor)
        })*
    };
}

impl<'p, 'b> de::Deserializer<'b> for &mut Decoder<'p, 'b> {
    type Error = FastError;

    fn deserialize_any<V: Visitor<'b>>(self, visitor: V) -> Result<V::Value, FastError> {
        match self.plan {
            Plan::Null => visitor.visit_unit(),
            Plan::Boolean => match self.take(1)?[0] {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                b => fail(format!("boolean byte {b}")),
            },
            Plan::Int => visitor.visit_i32(self.int()?),
            Plan::Long => visitor.visit_i64(self.long()?),
            Plan::Float => {
                let b = self.take(4)?;
                visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Plan::Double => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                visitor.visit_f64(f64::from_le_bytes(a))
            }
            Plan::Bytes => {
                let n = self.len()?;
                visitor.visit_borrowed_bytes(self.take(n)?)
            }
            Plan::Fixed(n) => visitor.visit_borrowed_bytes(self.take(*n)?),
            Plan::String => visitor.visit_borrowed_str(self.str()?),
            Plan::Enum(symbols) => visitor.visit_str(self.symbol(symbols)?),
            Plan::Union(variants) => {
                let branch = self.union_branch(variants)?;
                let mut inner = self.with(branch);
                let v = (&mut inner).deserialize_any(visitor)?;
                self.input = inner.input;
                Ok(v)
            }
            Plan::Array(items) => {
                let mut access = Blocks {
                    de: self.with(items),
                    keys: false,
                    left: 0,
                    done: false,
                };
                let v = visitor.visit_seq(&mut access)?;
                access.finish()?;
                self.input = access.de.input;
                Ok(v)
            }
            Plan::Map(values) => {
                let mut access = Blocks {
                    de: self.with(values),
                    keys: true,
                    left: 0,
                    done: false,
                };
                let v = visitor.visit_map(&mut access)?;
                access.finish()?;
                self.input = access.de.input;
                Ok(v)
            }
            Plan::Record(fields, defaults) => {
                let mut access = Fields {
                    fields,
                    defaults,
                    next: 0,
                    input: self.input,
                };
                let v = visitor.visit_map(&mut access)?;
                if access.next != fields.len() + defaults.len() {
                    return fail("record fields were not all read");
                }
                self.input = access.input;
                Ok(v)
            }
        }
    }

    fn deserialize_option<V: Visitor<'b>>(self, visitor: V) -> Result<V::Value, FastError> {
        match self.plan {
            Plan::Union(variants) => {
                let branch = self.union_branch(variants)?;
                if *branch == Plan::Null {
                    return visitor.visit_none();
                }
                let mut inner = self.with(branch);
                let v = visitor.visit_some(&mut inner)?;
                self.input = inner.input;
                Ok(v)
            }
            Plan::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'b>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FastError> {
        match self.plan {
            Plan::Enum(symbols) => visitor.visit_enum(self.symbol(symbols)?.into_deserializer()),
            Plan::String => visitor.visit_enum(self.str()?.into_deserializer()),
            _ => fail("an enum needs an Avro enum or string"),
        }
    }

    fn deserialize_seq<V: Visitor<'b>>(self, visitor: V) -> Result<V::Value, FastError> {
        match self.plan {
            // Vec<u8> fields: the bytes as a sequence, as apache-avro's serde does.
            Plan::Bytes => {
                let n = self.len()?;
                let b = self.take(n)?;
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            Plan::Fixed(n) => {
                let b = self.take(*n)?;
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'b>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FastError> {
        visitor.visit_newtype_struct(self)
    }

    via_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_map deserialize_identifier
        deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'b>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FastError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'b>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, FastError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'b>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, FastError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'b>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FastError> {
        self.deserialize_any(visitor)
    }
}

/// A record's fields, in schema order, then the reader's defaults.
struct Fields<'p, 'b> {
    fields: &'p [(String, Plan)],
    defaults: &'p [(String, serde_json::Value)],
    next: usize,
    input: &'b [u8],
}

impl<'p, 'b> de::MapAccess<'b> for Fields<'p, 'b> {
    type Error = FastError;

    fn next_key_seed<K: DeserializeSeed<'b>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FastError> {
        let name = match self.fields.get(self.next) {
            Some((name, _)) => name,
            None => match self.defaults.get(self.next - self.fields.len()) {
                Some((name, _)) => name,
                None => return Ok(None),
            },
        };
        seed.deserialize(name.as_str().into_deserializer())
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'b>>(&mut self, seed: V) -> Result<V::Value, FastError> {
        if self.next >= self.fields.len() {
            let (_, default) = self
                .defaults
                .get(self.next - self.fields.len())
                .ok_or_else(|| FastError("value without a field".into()))?;
            self.next += 1;
            return seed
                .deserialize(default.clone())
                .map_err(|e| FastError(format!("default value: {e}")));
        }
        let (_, plan) = self
            .fields
            .get(self.next)
            .ok_or_else(|| FastError("value without a field".into()))?;
        self.next += 1;
        let mut de = Decoder {
            plan,
            input: self.input,
        };
        let v = seed.deserialize(&mut de)?;
        self.input = de.input;
        Ok(v)
    }
}

/// Items of an array, or entries of a map, in blocks.
struct Blocks<'p, 'b> {
    de: Decoder<'p, 'b>,
    keys: bool,
    left: usize,
    done: bool,
}

impl<'p, 'b> Blocks<'p, 'b> {
    /// Moves to the next item; false at the end.
    fn advance(&mut self) -> Result<bool, FastError> {
        if self.done {
            return Ok(false);
        }
        if self.left == 0 {
            self.left = self.de.block()?;
            if self.left == 0 {
                self.done = true;
                return Ok(false);
            }
        }
        self.left -= 1;
        Ok(true)
    }

    /// The visitor may stop early (it never does for Vec and maps); the rest must still be read.
    fn finish(&mut self) -> Result<(), FastError> {
        if self.done && self.left == 0 {
            Ok(())
        } else {
            fail("array or map not read to its end")
        }
    }
}

impl<'p, 'b> de::SeqAccess<'b> for Blocks<'p, 'b> {
    type Error = FastError;

    fn next_element_seed<T: DeserializeSeed<'b>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FastError> {
        if !self.advance()? {
            return Ok(None);
        }
        seed.deserialize(&mut self.de).map(Some)
    }
}

impl<'p, 'b> de::MapAccess<'b> for Blocks<'p, 'b> {
    type Error = FastError;

    fn next_key_seed<K: DeserializeSeed<'b>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FastError> {
        debug_assert!(self.keys);
        if !self.advance()? {
            return Ok(None);
        }
        let key = self.de.str()?;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'b>>(&mut self, seed: V) -> Result<V::Value, FastError> {
        seed.deserialize(&mut self.de)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"r","namespace":"n","fields":[{fields}]}}"#
        ))
        .expect("parses")
    }

    #[test]
    fn resolution_covers_added_and_dropped_fields_and_leaves_conversions_to_apache_avro() {
        let w = schema(r#"{"name":"a","type":"int"},{"name":"gone","type":"string"}"#);
        let added = schema(
            r#"{"name":"a","type":"int"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        let plan = Plan::resolving(&w, &added).expect("added field with a default");
        assert_eq!(
            plan,
            Plan::Record(
                vec![("a".into(), Plan::Int), ("gone".into(), Plan::String)],
                vec![("b".into(), serde_json::Value::Null)]
            )
        );
        // A promotion (int read as long) or an added field without default: apache-avro's job.
        assert!(Plan::resolving(&w, &schema(r#"{"name":"a","type":"long"}"#)).is_none());
        assert!(Plan::resolving(
            &w,
            &schema(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#)
        )
        .is_none());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let plan = Plan::compile(&schema(
            r#"{"name":"s","type":"string"},{"name":"m","type":{"type":"map","values":"long"}}"#,
        ))
        .expect("compiles");
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Rec {
            s: String,
            m: std::collections::BTreeMap<String, i64>,
        }
        for bad in [
            &[][..],
            &[0x02][..], // string of 1 byte, none left
            &[0x01][..], // negative length
            &[
                0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ][..], // varint too long
            &[0x00, 0xfe, 0xff, 0xff, 0xff, 0x0f][..], // a huge map block
            &[0x02, 0xc3][..], // invalid UTF-8
        ] {
            assert!(from_slice::<Rec>(&plan, bad).is_err(), "{bad:?}");
        }
        let (ok, left) =
            from_slice::<Rec>(&plan, &[0x02, b'x', 0x02, 0x02, b'k', 0x04, 0x00]).expect("decodes");
        assert_eq!((ok.s.as_str(), ok.m["k"], left), ("x", 2, 0));
    }
}
