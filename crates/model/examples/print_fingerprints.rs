//! Prints `name version fingerprint-hex` for every schema: the lines of `schemas/RELEASED`.
fn main() {
    for e in seqmon_model::store().entries() {
        println!(
            "{} {} {}",
            e.name,
            e.version,
            seqmon_model::json::to_hex(&e.fingerprint)
        );
    }
}
