//! Shared data model of the sequencer-monitoring backbone.
//!
//! - [`records`]: Rust types for every Avro record in `schemas/`.
//! - [`schema_store`]: every released schema version, addressed by CRC-64-AVRO fingerprint.
//! - [`codec`]: Avro single-object encoding (`C3 01` + fingerprint + Avro binary) with
//!   writer→reader schema resolution.
//! - [`fast`]: a direct decoder for records of the newest schema versions (no generic value),
//!   checked against apache-avro and fastavro.
//! - [`json`]: the JSON-lines form used by file mode (Avro values ↔ JSON).
//! - [`ingest`]: the batch frame collectors POST to the ingest gateway.
//! - [`topics`]: the topic catalogue (typed roles, names, keys, schemas, retention).
//! - [`acl`]: one principal per stage and the ACLs derived from the catalogue.
//! - [`specs`]: plausible ranges (validation) and operating specs (features) per metric and model.
//!
//! Nothing here does I/O; every function is pure and unit-tested without a broker.

pub mod acl;
pub mod civil;
pub mod codec;
pub mod fast;
pub mod fast_write;
pub mod ingest;
pub mod json;
pub mod partitioning;
pub mod parts;
pub mod records;
pub mod schema_store;
pub mod specs;
pub mod topics;

pub use codec::{decode, decode_value, encode, CodecError};
pub use records::*;
pub use schema_store::{store, SchemaEntry, SchemaStore};
