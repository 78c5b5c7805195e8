//! The shared runtime: runs any [`Processor`] as an exactly-once Kafka service ([`kafka`]), over
//! JSON-lines files ([`file`]), or chained with other stages in one process ([`embedded`]).
//! All I/O lives here; stage crates hold pure logic only, against the contract in
//! [`seqmon_processor`] (re-exported here for the runtimes' callers).

/// Every binary that links the runtime (the services, the admin tool, the passthrough and the
/// benchmark) allocates with mimalloc: see the runtime's Cargo.toml for why and the figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod config;
pub mod config_file;
pub mod driver;
pub mod embedded;
pub mod envelope;
pub mod error;
pub mod events;
pub mod file;
pub mod kafka;
pub mod metrics;
pub mod schema_registry;
pub mod service;

pub use driver::Driver;
pub use error::{ErrorClass, RuntimeError};
pub use seqmon_processor as processor;
pub use seqmon_processor::{key_str, Emitted, Emitter, Envelope, Processor, StageError};
