//! libFuzzer target `avro_body`: see `seqmon_fuzz::TARGETS` (crates/fuzz) for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(t) = seqmon_fuzz::target("avro_body") {
        t(data);
    }
});
