//! Every InterOp file of every real run folder, corrupted systematically: zero length, header
//! only, a header shorter than declared, a flipped version byte, truncated at many offsets
//! (inside a record, at record boundaries, at the boundary between two cycles or two tiles, one
//! byte short) and garbage appended (shorter than a record, one record, several). Each
//! corruption must either give exactly the original figures or add a warning or an error that
//! names the corrupted file: no silent change.
//!
//! Run with `--nocapture` to see the counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use seqmon_collector::collect::{collect_run, Collected};

const NOW: i64 = 1_796_000_000_000;
const VARIABLE: &[&str] = &["IndexMetricsOut.bin", "ControlMetricsOut.bin"];

fn runs() -> Vec<PathBuf> {
    seqmon_collector::sample_run_folders()
}

fn copy_run(src: &Path) -> PathBuf {
    let dst = std::env::temp_dir().join(format!(
        "corrupt-{}-{}",
        src.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(dst.join("InterOp")).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(src.join("InterOp")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("InterOp").join(e.file_name())).unwrap();
    }
    dst
}

/// Deterministic garbage.
fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        })
        .collect()
}

/// The record index where a prefix holds only whole cycles (every cycle it touches has all its
/// records), nearest the middle; for tile metrics, where the tile changes after the middle.
fn clean_boundary(name: &str, bytes: &[u8]) -> Option<usize> {
    if VARIABLE.contains(&name) || bytes.len() < 2 || bytes[1] < 6 {
        return None;
    }
    let size = bytes[1] as usize;
    let n = (bytes.len() - 2) / size;
    let key = |i: usize| {
        let at = 2 + i * size;
        let u = |o: usize| u16::from_le_bytes([bytes[at + o], bytes[at + o + 1]]);
        (u(0), u(2), u(4))
    };
    if name == "TileMetricsOut.bin" {
        return (n / 2..n).find(|&i| i > 0 && (key(i).0, key(i).1) != (key(i - 1).0, key(i - 1).1));
    }
    let mut total: BTreeMap<u16, usize> = BTreeMap::new();
    for i in 0..n {
        *total.entry(key(i).2).or_default() += 1;
    }
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    let mut open = 0usize;
    let mut best: Option<usize> = None;
    for i in 0..n {
        let c = key(i).2;
        let s = seen.entry(c).or_default();
        if *s == 0 {
            open += 1;
        }
        *s += 1;
        if *s == total[&c] {
            open -= 1;
        }
        let k = i + 1;
        if open == 0 && k < n && best.is_none_or(|b| k.abs_diff(n / 2) < b.abs_diff(n / 2)) {
            best = Some(k);
        }
    }
    best.map(|k| 2 + k * size)
}

fn corruptions(name: &str, b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let variable = VARIABLE.contains(&name);
    let header = if variable { 1 } else { 2 };
    out.push(("zero-length".into(), Vec::new()));
    out.push(("header only".into(), b[..header.min(b.len())].to_vec()));
    if header > 1 {
        out.push(("header shorter than declared".into(), b[..1].to_vec()));
    }
    let mut flipped = b.to_vec();
    flipped[0] ^= 0xff;
    out.push(("version byte flipped".into(), flipped));
    let mut flipped = b.to_vec();
    flipped[0] ^= 0x01;
    out.push(("version byte bit 0 flipped".into(), flipped));
    let mut cuts: BTreeSet<usize> = BTreeSet::new();
    let size = if variable { 0 } else { b[1] as usize };
    if let Some(n) = (b.len() - 2).checked_div(size) {
        for k in [1, n / 7, n / 3, n / 2, 2 * n / 3, n - 1] {
            cuts.insert(2 + k * size); // at a record boundary
            cuts.insert(2 + k * size + size / 2); // inside a record
        }
        cuts.insert(2 + size - 1);
        if let Some(c) = clean_boundary(name, b) {
            cuts.insert(c);
        }
    } else {
        for f in [0.05, 0.2, 1.0 / 3.0, 0.5, 0.75, 0.9] {
            cuts.insert(1 + ((b.len() - 1) as f64 * f) as usize);
        }
        cuts.insert(b.len() - 7);
    }
    cuts.insert(b.len() - 1);
    for c in cuts.into_iter().filter(|c| *c > header && *c < b.len()) {
        out.push((
            format!("truncated at byte {c} of {}", b.len()),
            b[..c].to_vec(),
        ));
    }
    let record = size.max(7);
    for (i, n) in [1, record - 1, record, 3 * record, 1000]
        .into_iter()
        .enumerate()
    {
        let mut g = b.to_vec();
        g.extend(garbage(n, i as u64 + b.len() as u64));
        out.push((format!("{n} bytes of garbage appended"), g));
    }
    out
}

/// Every message about the run's metric files.
fn messages(c: &Collected) -> BTreeSet<String> {
    c.file_errors
        .iter()
        .map(|e| e.to_string())
        .chain(c.warnings.iter().map(|w| w.to_string()))
        .collect()
}

#[derive(Default, Debug)]
struct Counts {
    tried: usize,
    same: usize,
    warned: usize,
    silent: Vec<String>,
}

fn corrupt_run(src: &Path) -> Counts {
    let dir = copy_run(src);
    let base = collect_run(&dir, None, NOW).unwrap();
    let base_messages = messages(&base);
    let mut counts = Counts::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("InterOp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let original = std::fs::read(&file).unwrap();
        for (what, bytes) in corruptions(&name, &original) {
            std::fs::write(&file, &bytes).unwrap();
            let c = collect_run(&dir, None, NOW).unwrap();
            counts.tried += 1;
            if c.records == base.records {
                counts.same += 1;
            } else if messages(&c)
                .difference(&base_messages)
                .any(|m| m.contains(&name))
            {
                counts.warned += 1;
            } else {
                counts.silent.push(format!(
                    "{}/{name}: {what}: figures changed without a new warning naming the file",
                    src.file_name().unwrap().to_string_lossy()
                ));
            }
        }
        std::fs::write(&file, &original).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    counts
}

#[test]
fn no_corruption_of_a_real_interop_file_changes_the_figures_silently() {
    let runs = runs();
    assert_eq!(runs.len(), 5);
    let results: Vec<(String, Counts)> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|r| {
                s.spawn(move || {
                    (
                        r.file_name().unwrap().to_string_lossy().into_owned(),
                        corrupt_run(r),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Counts::default();
    for (run, c) in &results {
        eprintln!(
            "{run}: {} corruptions, {} same figures, {} warned or refused, {} silent",
            c.tried,
            c.same,
            c.warned,
            c.silent.len()
        );
        total.tried += c.tried;
        total.same += c.same;
        total.warned += c.warned;
        total.silent.extend(c.silent.iter().cloned());
    }
    eprintln!(
        "total: {} corruptions, {} same figures, {} warned or refused, {} silent",
        total.tried,
        total.same,
        total.warned,
        total.silent.len()
    );
    assert!(total.tried >= 400, "{}", total.tried);
    assert!(total.warned > total.tried / 2, "{total:?}");
    assert!(total.silent.is_empty(), "{:#?}", total.silent);
}

/// The originals themselves: whole files, nothing skipped, nothing missing (the inconsistent
/// folder aside, whose lane-2 files are refused as errors, not warnings).
#[test]
fn the_real_runs_have_no_warnings() {
    for run in runs() {
        let c = collect_run(&run, None, NOW).unwrap();
        assert!(c.warnings.is_empty(), "{}: {:?}", run.display(), c.warnings);
    }
}
