//! Cross-check of the collector's run and lane figures against Illumina's own reader, the
//! `interop` package from PyPI (installed by `make test` into .cache/interop-venv), on every run
//! folder in shared/data/illumina-runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use seqmon_collector::summary::summarize;

/// Largest relative difference accepted (InterOp stores floats; we sum in f64).
const TOLERANCE: f64 = 1e-5;

fn close(ours: Option<f64>, theirs: &serde_json::Value) -> Option<f64> {
    match (ours, theirs.as_f64()) {
        (None, None) => Some(0.0),
        (Some(a), Some(b)) => {
            let rel = (a - b).abs() / b.abs().max(1e-12);
            (rel <= TOLERANCE).then_some(rel)
        }
        _ => None,
    }
}

#[test]
fn run_and_lane_figures_match_illuminas_interop() {
    let python = std::env::var("INTEROP_PYTHON").expect(
        "INTEROP_PYTHON is not set: run with `make test`, which installs interop from PyPI",
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let folders: Vec<PathBuf> = seqmon_collector::sample_run_folders();
    let mut largest: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut compared = 0;
    for folder in &folders {
        let out = Command::new(&python)
            .arg(root.join("tools/interop_summary.py"))
            .arg(folder)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(err) = theirs.get("error") {
            // interop refuses the deliberately inconsistent folder; so does the collector.
            let c = seqmon_collector::collect::collect_run(folder, None, 0).unwrap();
            assert!(
                c.file_errors
                    .iter()
                    .any(|e| e.to_string().contains("lane 2 outside")),
                "interop: {err}; ours: {:?}",
                c.file_errors
            );
            continue;
        }
        let ours = summarize(folder).unwrap();
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        for (metric, a, b) in [
            ("yield_gbp", ours.yield_gbp, &theirs["yield_gbp"]),
            ("pct_q30", ours.pct_q30, &theirs["pct_q30"]),
            (
                "error_rate_pct",
                ours.error_rate_pct,
                &theirs["error_rate_pct"],
            ),
            (
                "first_cycle_intensity",
                ours.first_cycle_intensity,
                &theirs["first_cycle_intensity"],
            ),
        ] {
            let rel =
                close(a, b).unwrap_or_else(|| panic!("{name} {metric}: ours {a:?}, interop {b}"));
            let e = largest.entry(metric).or_default();
            *e = e.max(rel);
            compared += 1;
        }
        let lanes = theirs["lanes"].as_array().unwrap();
        assert_eq!(lanes.len(), ours.lanes.len(), "{name}: lane count");
        for (l, t) in ours.lanes.iter().zip(lanes) {
            for (metric, a, b) in [
                ("density_per_mm2", l.density_per_mm2, &t["density_per_mm2"]),
                ("pct_pf", l.pct_pf, &t["pct_pf"]),
            ] {
                let rel = close(Some(a), b).unwrap_or_else(|| {
                    panic!("{name} lane {} {metric}: ours {a}, interop {b}", l.lane)
                });
                let e = largest.entry(metric).or_default();
                *e = e.max(rel);
                compared += 1;
            }
        }
    }
    assert!(compared >= 25, "compared {compared} figures");
    eprintln!("interop cross-check: {compared} figures over {} folders; largest relative difference per metric: {largest:?}", folders.len());
}
