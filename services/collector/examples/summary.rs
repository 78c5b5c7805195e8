//! Prints our summary of a run folder as JSON (compare with tools/interop_summary.py).
fn main() {
    for folder in std::env::args().skip(1) {
        match seqmon_collector::summary::summarize(std::path::Path::new(&folder)) {
            Ok(s) => println!("{}", serde_json::to_string(&s).unwrap_or_default()),
            Err(e) => println!("{{\"error\": {:?}}}", e),
        }
    }
}
