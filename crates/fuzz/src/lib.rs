//! Fuzz targets for every decoder and parser that reads bytes from outside: Avro single-object
//! records, the ingest batch frame, file mode's JSON lines, the collector's InterOp readers and
//! RunInfo.xml / RunParameters.xml, and the privacy crate's grammars and message templates.
//!
//! Each target is `fn(&[u8])` and must return normally on every input: a panic is a bug, either
//! in the code under test or a broken property. Besides "no panic", each target asserts cheap
//! properties of what it decoded (two decoders agree, decode → encode → decode is a fixed point,
//! a parsed file accounts for all its bytes, a matched message renders back to itself). The same
//! functions are driven by the stable mutation fuzzer (`seqmon-fuzz run`, in `make test`) and by
//! the libFuzzer targets in `fuzz/` (`make fuzz`, nightly).

pub mod avro;
pub mod collector;
pub mod frames;
pub mod mutate;
pub mod privacy;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (the names of the `fuzz/fuzz_targets/*.rs` files and of the corpus
/// folders `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("avro", avro::single_object),
    ("avro_body", avro::body),
    ("ingest_frame", frames::ingest_frame),
    ("jsonl", frames::jsonl),
    ("interop", collector::interop),
    ("runinfo", collector::runinfo),
    ("runparameters", collector::runparameters),
    ("templates", privacy::templates),
    ("log_message", privacy::log_message),
    ("grammar", privacy::grammar),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
