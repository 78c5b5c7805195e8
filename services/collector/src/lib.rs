//! Instrument-side collector: reads an Illumina run folder and emits raw telemetry of the four
//! allowed categories, by allowlist, only for runs whose instrument opted in.

pub mod collect;
pub mod consent;
pub mod files;
pub mod interop;
pub mod runfolder;
pub mod spool;
pub mod summary;
pub mod upload;
pub mod watch;

/// The real run folders the tests use: `SEQMON_RUN_FOLDERS` if set, else
/// `shared/data/illumina-runs` beside the repository (where CI and the developers have it).
/// Panics with the path it looked at when the folder is missing.
pub fn sample_runs_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("SEQMON_RUN_FOLDERS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/illumina-runs")
        });
    assert!(
        dir.join("README.md").exists() || dir.is_dir(),
        "sample run folders not found at {} (set SEQMON_RUN_FOLDERS)",
        dir.display()
    );
    dir
}

/// The run folders (each with a RunInfo.xml) in [`sample_runs_dir`], sorted.
pub fn sample_run_folders() -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(sample_runs_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("RunInfo.xml").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Real run folders (each with a RunInfo.xml; some with RunInfo and RunParameters only)
/// fetched from public repositories into `.cache/run-folders` of the checkout
/// (`SEQMON_CACHED_RUN_FOLDERS` if set): newer instruments than shared/data has (NovaSeq 6000 on
/// RTA 3, ...), never committed; see the README.md there for their sources and licences. Empty
/// when absent: CI, which has only shared/data/illumina-runs, skips them.
pub fn cached_run_folders() -> Vec<std::path::PathBuf> {
    let dir = std::env::var_os("SEQMON_CACHED_RUN_FOLDERS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/run-folders")
        });
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("RunInfo.xml").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
