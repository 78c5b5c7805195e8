//! Instrument-side collector: reads an Illumina run folder and emits raw telemetry of the four
//! allowed categories, by allowlist, only for runs whose instrument opted in.

pub mod collect;
pub mod consent;
pub mod interop;
pub mod runfolder;
pub mod summary;
pub mod watch;
