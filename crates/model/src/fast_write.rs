//! Direct Rust → Avro binary encoding, with the [`Plan`] the direct decoder compiles.
//!
//! apache-avro's schema-aware serializer looks every field up by name in a map and clones the
//! enclosing namespace for each one: for the feature extractor's state and features, encoding
//! was a quarter of the stage's time in a profile. Here a record's fields are written in the
//! order the plan lists them, checked against the names serde gives, and nothing is allocated
//! but the output.
//!
//! Guarantee: what this writes is byte for byte what apache-avro writes for the same value and
//! schema (debug builds check every encode against it; see `codec::encode_with`). It covers the
//! shapes our records use: records whose Rust fields follow the schema's order, `[null, T]`
//! unions as `Option`, enums as unit variants named as the schema's symbol at serde's index,
//! arrays and maps of known length, `bytes` and `fixed` through `serialize_bytes`; schemas with
//! references to named types get no direct writer (apache-avro's writer cannot follow them
//! either). Anything else is [`Unsupported`] and the caller encodes with apache-avro instead,
//! so a shape this does not know costs time, never a different encoding, and never a record
//! written that apache-avro would refuse.

use serde::ser::{self, Impossible, Serialize};

use crate::fast::Plan;

/// A value this encoder does not write (the caller falls back to apache-avro), or a serde error
/// from the value itself.
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Unsupported(msg.to_string())
    }
}

fn unsupported<T>(what: &str, plan: &Plan) -> Result<T, Unsupported> {
    Err(Unsupported(format!("{what} for {}", plan_kind(plan))))
}

fn plan_kind(plan: &Plan) -> &'static str {
    match plan {
        Plan::Null => "null",
        Plan::Boolean => "boolean",
        Plan::Int => "int",
        Plan::Long => "long",
        Plan::Float => "float",
        Plan::Double => "double",
        Plan::Bytes => "bytes",
        Plan::String => "string",
        Plan::Fixed(_) => "fixed",
        Plan::Enum(_) => "enum",
        Plan::Array(_) => "array",
        Plan::Map(_) => "map",
        Plan::Union(_) => "union",
        Plan::Record(..) => "record",
    }
}

/// Appends the Avro binary encoding of `value` under `plan` to `out`. On an error `out` may
/// hold part of the value: the caller truncates it.
pub fn to_writer<T: Serialize + ?Sized>(
    plan: &Plan,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    value.serialize(Encoder { plan, out })
}

/// Avro `int` and `long`: zig-zag, then 7 bits a byte, least significant first.
pub fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Items per array or map block: apache-avro starts a new block after 1,024 + 1 items, and
/// its blocks are what this writes.
const BLOCK_ITEMS: usize = 1025;

/// Counts a collection's items into blocks as apache-avro does: `[count, items...]` per block.
struct Blocks {
    /// Items not yet written.
    left: usize,
    /// Items the current block still takes.
    in_block: usize,
}

impl Blocks {
    fn new(len: usize) -> Self {
        Blocks {
            left: len,
            in_block: 0,
        }
    }

    /// Before an item: starts a block if the current one is full.
    fn item(&mut self, out: &mut Vec<u8>) -> Result<(), Unsupported> {
        if self.left == 0 {
            return Err(Unsupported("more items than announced".into()));
        }
        if self.in_block == 0 {
            self.in_block = self.left.min(BLOCK_ITEMS);
            long(out, self.in_block as i64);
        }
        self.left -= 1;
        self.in_block -= 1;
        Ok(())
    }

    /// After the last item: the end marker.
    fn end(self, out: &mut Vec<u8>) -> Result<(), Unsupported> {
        if self.left != 0 {
            return Err(Unsupported("fewer items than announced".into()));
        }
        out.push(0);
        Ok(())
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// The index apache-avro writes for a unit variant, which is serde's variant index, never the
/// name's: written only when the schema's symbol at that index is the variant's name (so a Rust
/// enum out of step with its schema is apache-avro's to write or refuse, as before).
fn symbol_index(symbols: &[String], variant_index: usize, variant: &str) -> Option<usize> {
    symbols
        .get(variant_index)
        .is_some_and(|s| s == variant)
        .then_some(variant_index)
}

struct Encoder<'p, 'o> {
    plan: &'p Plan,
    out: &'o mut Vec<u8>,
}

impl<'p, 'o> Encoder<'p, 'o> {
    /// An i8, i16, i32, u8 or u16: every one fits an `int`, and apache-avro writes any of them
    /// to an `int` or a `long`.
    fn int(self, v: i32) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Int | Plan::Long => {
                long(self.out, v.into());
                Ok(())
            }
            p => unsupported("an integer", p),
        }
    }
}

impl<'p, 'o> ser::Serializer for Encoder<'p, 'o> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Items<'p, 'o>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Entries<'p, 'o>;
    type SerializeStruct = Fields<'p, 'o>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    /// As apache-avro: types with a compact form (a UUID's 16 bytes) give that, not their text.
    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            p => unsupported("a boolean", p),
        }
    }

    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.int(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Long => {
                long(self.out, v);
                Ok(())
            }
            p => unsupported("an i64", p),
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.int(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.int(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Long => {
                long(self.out, v.into());
                Ok(())
            }
            p => unsupported("a u32", p),
        }
    }
    fn serialize_u64(self, _v: u64) -> Result<(), Unsupported> {
        unsupported("a u64", self.plan)
    }

    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Float => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            p => unsupported("an f32", p),
        }
    }
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Double => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            p => unsupported("an f64", p),
        }
    }

    fn serialize_char(self, _v: char) -> Result<(), Unsupported> {
        unsupported("a char", self.plan)
    }

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        match self.plan {
            Plan::String => {
                bytes(self.out, v.as_bytes());
                Ok(())
            }
            // apache-avro refuses a string for an enum; so does this.
            p => unsupported("a string", p),
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Bytes => bytes(self.out, v),
            Plan::Fixed(n) if *n == v.len() => self.out.extend_from_slice(v),
            p => return unsupported("bytes", p),
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Union(variants) => match variants.iter().position(|v| *v == Plan::Null) {
                Some(i) => {
                    long(self.out, i as i64);
                    Ok(())
                }
                None => unsupported("None", self.plan),
            },
            p => unsupported("None", p),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        let Plan::Union(variants) = self.plan else {
            return unsupported("Some", self.plan);
        };
        // `[null, T]` (either order): the branch that is not null. Any other union would need
        // the value's type to pick a branch: apache-avro's job.
        let (i, branch) = match variants.as_slice() {
            [Plan::Null, b] if *b != Plan::Null => (1, b),
            [a, Plan::Null] if *a != Plan::Null => (0, a),
            _ => return unsupported("Some of a union other than [null, T]", self.plan),
        };
        long(self.out, i);
        value.serialize(Encoder {
            plan: branch,
            out: self.out,
        })
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Null => Ok(()),
            p => unsupported("a unit", p),
        }
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        match self.plan {
            Plan::Enum(symbols) => match symbol_index(symbols, variant_index as usize, variant) {
                Some(i) => {
                    long(self.out, i as i64);
                    Ok(())
                }
                None => unsupported("a variant that is no symbol", self.plan),
            },
            p => unsupported("a unit variant", p),
        }
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Unsupported> {
        unsupported("a newtype variant", self.plan)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'p, 'o>, Unsupported> {
        match (self.plan, len) {
            (Plan::Array(items), Some(len)) => Ok(Items {
                plan: items,
                out: self.out,
                blocks: Blocks::new(len),
            }),
            (p, _) => unsupported("a sequence", p),
        }
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("a tuple", self.plan)
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("a tuple struct", self.plan)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("a tuple variant", self.plan)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Entries<'p, 'o>, Unsupported> {
        match (self.plan, len) {
            (Plan::Map(values), Some(len)) => Ok(Entries {
                plan: values,
                out: self.out,
                blocks: Blocks::new(len),
            }),
            (p, _) => unsupported("a map", p),
        }
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Fields<'p, 'o>, Unsupported> {
        match self.plan {
            // A plan with reader defaults is a resolution, never a writer's schema.
            Plan::Record(fields, defaults) if defaults.is_empty() => Ok(Fields {
                fields,
                next: 0,
                out: self.out,
            }),
            p => unsupported("a struct", p),
        }
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("a struct variant", self.plan)
    }
}

/// An array's items, in blocks, then the end marker.
struct Items<'p, 'o> {
    plan: &'p Plan,
    out: &'o mut Vec<u8>,
    blocks: Blocks,
}

impl ser::SerializeSeq for Items<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.blocks.item(self.out)?;
        value.serialize(Encoder {
            plan: self.plan,
            out: self.out,
        })
    }

    fn end(self) -> Result<(), Unsupported> {
        self.blocks.end(self.out)
    }
}

/// A map's entries, in blocks, then the end marker.
struct Entries<'p, 'o> {
    plan: &'p Plan,
    out: &'o mut Vec<u8>,
    blocks: Blocks,
}

impl ser::SerializeMap for Entries<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.blocks.item(self.out)?;
        key.serialize(Encoder {
            plan: &Plan::String,
            out: self.out,
        })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        value.serialize(Encoder {
            plan: self.plan,
            out: self.out,
        })
    }

    fn end(self) -> Result<(), Unsupported> {
        self.blocks.end(self.out)
    }
}

/// A record's fields, in the schema's order.
struct Fields<'p, 'o> {
    fields: &'p [(String, Plan)],
    next: usize,
    out: &'o mut Vec<u8>,
}

impl ser::SerializeStruct for Fields<'_, '_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        match self.fields.get(self.next) {
            Some((name, plan)) if name == key => {
                self.next += 1;
                value.serialize(Encoder {
                    plan,
                    out: self.out,
                })
            }
            _ => Err(Unsupported(format!(
                "field {key} is not the schema's next field"
            ))),
        }
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported(format!("field {key} skipped")))
    }

    fn end(self) -> Result<(), Unsupported> {
        if self.next != self.fields.len() {
            return Err(Unsupported("the schema has fields the value lacks".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema::Schema;

    fn plan(fields: &str) -> Plan {
        let schema = Schema::parse_str(&format!(
            r#"{{"type":"record","name":"r","namespace":"n","fields":[{fields}]}}"#
        ))
        .expect("parses");
        Plan::compile(&schema).expect("compiles")
    }

    #[test]
    fn shapes_it_does_not_know_are_refused_for_apache_avro_to_write() {
        #[derive(serde::Serialize)]
        struct Swapped {
            b: i64,
            a: i64,
        }
        let p = plan(r#"{"name":"a","type":"long"},{"name":"b","type":"long"}"#);
        let mut out = Vec::new();
        assert!(to_writer(&p, &Swapped { b: 1, a: 2 }, &mut out).is_err());

        #[derive(serde::Serialize)]
        struct Short {
            a: i64,
        }
        assert!(to_writer(&p, &Short { a: 1 }, &mut Vec::new()).is_err());

        #[derive(serde::Serialize)]
        struct Wide {
            a: Option<i64>,
        }
        let several = plan(r#"{"name":"a","type":["null","long","string"]}"#);
        assert!(to_writer(&several, &Wide { a: Some(1) }, &mut Vec::new()).is_err());
        // None is unambiguous even there.
        let mut out = Vec::new();
        to_writer(&several, &Wide { a: None }, &mut out).expect("null branch");
        assert_eq!(out, [0]);

        #[derive(serde::Serialize)]
        struct Big {
            a: u64,
        }
        let long = plan(r#"{"name":"a","type":"long"}"#);
        assert!(to_writer(&long, &Big { a: 1 }, &mut Vec::new()).is_err());
        #[derive(serde::Serialize)]
        struct Narrow {
            a: i64,
        }
        let int = plan(r#"{"name":"a","type":"int"}"#);
        assert!(to_writer(&int, &Narrow { a: 1 }, &mut Vec::new()).is_err());

        // apache-avro writes serde's variant index: a Rust enum out of step with the symbols
        // (reordered, or a symbol the version lacks) is left to it; so is a string for an enum.
        #[derive(serde::Serialize)]
        enum Letter {
            B,
            A,
        }
        #[derive(serde::Serialize)]
        struct Lettered {
            e: Letter,
        }
        #[derive(serde::Serialize)]
        struct Named {
            e: &'static str,
        }
        let symbols = plan(r#"{"name":"e","type":{"type":"enum","name":"L","symbols":["B","X"]}}"#);
        let mut out = Vec::new();
        to_writer(&symbols, &Lettered { e: Letter::B }, &mut out).expect("in step");
        assert_eq!(out, [0]);
        assert!(to_writer(&symbols, &Lettered { e: Letter::A }, &mut Vec::new()).is_err());
        assert!(to_writer(&symbols, &Named { e: "B" }, &mut Vec::new()).is_err());
    }

    #[test]
    fn varints_are_avros_zig_zag() {
        for (v, bytes) in [
            (0i64, &[0u8][..]),
            (-1, &[1]),
            (1, &[2]),
            (-64, &[127]),
            (64, &[128, 1]),
            (i64::MAX, &[254, 255, 255, 255, 255, 255, 255, 255, 255, 1]),
            (i64::MIN, &[255, 255, 255, 255, 255, 255, 255, 255, 255, 1]),
        ] {
            let mut out = Vec::new();
            long(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
    }
}
