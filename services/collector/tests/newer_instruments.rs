//! The collector on real run folders of the newer instruments (NovaSeq 6000 on RTA 3, ...),
//! fetched from public repositories into `.cache/run-folders` (see the README.md there). They
//! are not part of the project: CI, which has only ../shared/data/illumina-runs, skips these
//! tests (they pass, saying so, when the folder is absent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use seqmon_collector::collect::{
    collect_run, FileOutcome, CYCLE_FOLDER_SKIP, READ_FILES, SKIPPED_FILES,
};
use seqmon_collector::consent::ConsentOverride;
use seqmon_collector::interop::{self, InteropError};
use seqmon_collector::summary::summarize;
use seqmon_model::TelemetryKind;

const NOW: i64 = 1_796_000_000_000;

fn folders() -> Vec<PathBuf> {
    let v = seqmon_collector::cached_run_folders();
    if v.is_empty() {
        eprintln!("no .cache/run-folders: the newer-instrument real folders are skipped (CI)");
    }
    v
}

/// Every .bin under InterOp/, the per-cycle folders included.
fn bins(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Some cached folders hold RunInfo and RunParameters only.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(bins(&p));
        } else if p.extension().is_some_and(|x| x == "bin") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// (records, trailing bytes) of a file the collector reads, by its reader.
fn read_any(file: &Path) -> Result<(usize, usize, usize), InteropError> {
    let name = file.file_name().unwrap().to_str().unwrap();
    let n = |p: interop::Parsed<_>| (p.file_records, p.records.len(), p.trailing_bytes);
    fn n3<T>(p: interop::Parsed<T>) -> (usize, usize, usize) {
        (p.file_records, p.records.len(), p.trailing_bytes)
    }
    Ok(match name {
        "TileMetricsOut.bin" => n(interop::tile_metrics(file)?),
        "QMetricsOut.bin" => n3(interop::q_metrics(file)?),
        "ErrorMetricsOut.bin" => n3(interop::error_metrics(file)?),
        "ExtractionMetricsOut.bin" => n3(interop::extraction_metrics(file)?),
        "EmpiricalPhasingMetricsOut.bin" => n3(interop::empirical_phasing_metrics(file)?),
        "CorrectedIntMetricsOut.bin" => n3(interop::corrected_intensity_metrics(file)?),
        "ImageMetricsOut.bin" => n3(interop::image_metrics(file)?),
        "IndexMetricsOut.bin" => n3(interop::index_metrics(file)?),
        "ControlMetricsOut.bin" => n3(interop::control_metrics(file)?),
        "ExtendedTileMetricsOut.bin" => n3(interop::extended_tile_metrics(file)?),
        other => panic!("{other}: no reader"),
    })
}

#[test]
fn every_file_of_the_newer_real_folders_is_read_or_skipped_on_purpose() {
    let mut read = 0;
    for folder in folders() {
        for file in bins(&folder.join("InterOp")) {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            let version = std::fs::read(&file).unwrap()[0];
            if READ_FILES.contains(&name.as_str()) {
                let (records, values, trailing) =
                    read_any(&file).unwrap_or_else(|e| panic!("{name} v{version} refused: {e}"));
                assert!(records > 0 && values > 0, "{}", file.display());
                assert_eq!(trailing, 0, "{}", file.display());
                read += 1;
            } else {
                assert!(
                    SKIPPED_FILES.iter().any(|(s, _)| *s == name),
                    "{}: neither read nor skipped on purpose",
                    file.display()
                );
            }
        }
    }
    eprintln!("{read} real metric files of the newer instruments read whole");
}

/// Values of RunParameters.xml elements that name people, places or hosts (read here, in test
/// code only, to look for them in the output).
fn forbidden_strings(folder: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(folder.join("RunParameters.xml")) else {
        return Vec::new();
    };
    let mut names = index_names(folder);
    let doc = roxmltree::Document::parse(&text).unwrap();
    names.extend(
        doc.descendants()
            .filter(|n| n.is_element())
            .filter(|n| {
                let name = n.tag_name().name();
                matches!(
                    name,
                    "ExperimentName" | "Username" | "ComputerName" | "LibraryTubeSerialBarcode"
                ) || name.ends_with("Folder")
                    || name.ends_with("Path")
            })
            .filter_map(|n| n.text().map(str::trim).map(str::to_string))
            .filter(|v| v.len() >= 3)
            // NovaSeq X names the experiment after the flow cell by default: the flow cell serial
            // is run data (RunInfo's Flowcell), sent as such.
            .filter(|v| !run_info_text(folder).contains(&format!("<Flowcell>{v}</Flowcell>"))),
    );
    names
}

/// Sample and project names in IndexMetricsOut.bin v2 (lane u16, tile u32, read u16, index
/// name, clusters u64, sample name, project name; names as u16 length + bytes).
fn index_names(folder: &Path) -> Vec<String> {
    let Ok(b) = std::fs::read(folder.join("InterOp/IndexMetricsOut.bin")) else {
        return Vec::new();
    };
    if b.first() != Some(&2) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = 1;
    let take = |at: &mut usize| {
        let len = usize::from(u16::from_le_bytes([b[*at], b[*at + 1]]));
        let s = String::from_utf8_lossy(&b[*at + 2..*at + 2 + len]).into_owned();
        *at += 2 + len;
        s
    };
    while at + 8 < b.len() {
        at += 8;
        let _index = take(&mut at);
        at += 8;
        out.push(take(&mut at));
        out.push(take(&mut at));
    }
    out.retain(|s| s.len() >= 3);
    out.sort();
    out.dedup();
    out
}

fn run_info_text(folder: &Path) -> String {
    std::fs::read_to_string(folder.join("RunInfo.xml")).unwrap_or_default()
}

#[test]
fn run_configuration_of_the_newer_real_folders_meets_the_privacy_grammars_and_nothing_personal_leaves(
) {
    let mut rejected = Vec::new();
    for folder in folders() {
        let forbidden = forbidden_strings(&folder);
        if forbidden.is_empty() {
            continue;
        }
        let c = collect_run(&folder, Some(ConsentOverride::OptedIn), NOW).unwrap();
        // The model is a closed enum, never text from the folder (a computer named "NEXTSEQ"
        // would otherwise be found in NEXTSEQ_550).
        let text: String = c
            .records
            .iter()
            .map(|r| {
                let mut json = serde_json::to_value(r).unwrap();
                json.as_object_mut().unwrap().remove("instrument_model");
                json.to_string()
            })
            .collect();
        for s in &forbidden {
            assert!(
                !text.contains(s.as_str()),
                "{}: {s:?} left",
                folder.display()
            );
        }
        let rc = c
            .records
            .iter()
            .find_map(|r| r.run_configuration.as_ref())
            .unwrap();
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        // NextSeq 1000/2000 and iSeq 100 have no buffer of their own (the cartridge holds it).
        let has_buffer = !(name.starts_with("nextseq2000") || name.starts_with("iseq"));
        for (field, lot) in [
            ("flowcell_lot", &rc.flowcell_lot),
            ("reagent_kit_lot", &rc.reagent_kit_lot),
            ("buffer_lot", &rc.buffer_lot),
        ] {
            if field == "buffer_lot" && !has_buffer {
                assert_eq!(lot, "unknown", "{name}: {field}");
                continue;
            }
            assert_ne!(lot, "unknown", "{name}: {field}");
            if !seqmon_privacy::grammar::lot_number(lot) {
                rejected.push(format!("{name} {field} {lot}"));
            }
        }
        // Expiry dates read as days since 1970 (2010 or later), not left at 0.
        assert!(
            rc.reagent_kit_expiry_date > 14_610 && (rc.buffer_expiry_date > 14_610 || !has_buffer),
            "{name}: {rc:?}"
        );
        // The chemistry (kit) is read for every family whose RunParameters names it, and it is
        // a name the privacy catalogue knows (iSeq 100's RunParameters names none).
        if name.starts_with("iseq") {
            assert_eq!(rc.chemistry, "unknown", "{name}");
        } else {
            assert!(
                seqmon_privacy::catalogue::chemistry(&rc.chemistry).is_some(),
                "{name}: chemistry {:?}",
                rc.chemistry
            );
        }
        // Every family is its own model, never another one.
        use seqmon_model::InstrumentModel as M;
        let model = c.records[0].instrument_model;
        let expected = match name.split('-').next().unwrap() {
            "novaseqx" => M::NOVASEQ_X,
            "nextseq500" => M::NEXTSEQ_550,
            "miseq" => M::MISEQ,
            "nextseq2000" => M::NEXTSEQ_2000,
            "iseq" => M::ISEQ_100,
            "novaseq6000" | "novaseq" => M::NOVASEQ_6000,
            other => panic!("{other}: a family this test does not know"),
        };
        assert_eq!(model, expected, "{name}");
        // These runs opted in by their own settings (SendIlluminaHealthData, CloudUploadMode).
        let own = collect_run(&folder, None, NOW).unwrap();
        eprintln!(
            "{name}: consent {:?}; {} forbidden strings absent; {rc:?}",
            own.consent,
            forbidden.len()
        );
    }
    // Real lots the privacy crate's lot grammar refuses on purpose; they cross as keyed
    // pseudonyms (equal lots still group): a MiSeq reagent kit lot that reads as a date
    // (2077-03-31), and NovaSeq X buffer lots that are date-shaped (YYMMDD and two digits:
    // 24011201, 25070901), the shape of a date of birth. (The NovaSeq 6000 buffer lots starting
    // 50 these folders showed are in the grammar.) This list changes only when the grammar or
    // the data does.
    if !rejected.is_empty() {
        let allowed = [
            "miseq-checkqc-L6NVV reagent_kit_lot 20770331",
            "novaseqx-runscanner-22CC55LT4 buffer_lot 24011201",
            "novaseqx-runscanner-23FF7CLT4 buffer_lot 25070901",
        ];
        assert!(
            rejected.iter().all(|r| allowed.contains(&r.as_str())),
            "{rejected:?}"
        );
    }
}

#[test]
fn a_novaseq_6000_rta3_run_gives_lane_figures_and_says_what_became_of_each_file() {
    for folder in folders() {
        // Picard's copy of its NovaSeq run has a cut-down RunInfo.xml (no run id): a typed
        // error, not a panic.
        let c = match collect_run(&folder, Some(ConsentOverride::OptedIn), NOW) {
            Ok(c) => c,
            Err(e) => {
                assert!(e.to_string().contains("RunInfo.xml"), "{e}");
                eprintln!("{}: {e}", folder.display());
                continue;
            }
        };
        assert!(
            c.file_errors.is_empty(),
            "{}: {:?}",
            folder.display(),
            c.file_errors
        );
        for f in &c.files {
            eprintln!("{f}");
            let in_cycle_folder = f
                .file
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with('C'));
            match &f.outcome {
                FileOutcome::Read => {}
                FileOutcome::Skipped(why) => assert!(
                    in_cycle_folder && *why == CYCLE_FOLDER_SKIP
                        || SKIPPED_FILES.iter().any(|(_, w)| w == why)
                ),
                FileOutcome::Refused(why) => panic!("{}: {why}", f.file.display()),
            }
        }
        let lane_estimates: Vec<_> = c
            .records
            .iter()
            .filter_map(|r| r.run_performance.as_ref())
            .filter(|p| p.cluster_density_k_per_mm2.is_some())
            .collect();
        assert!(
            c.records
                .iter()
                .any(|r| r.kind == TelemetryKind::RUN_CONFIGURATION),
            "{}",
            folder.display()
        );
        // The run date (RunInfo v5's month-first date, v6's ISO date) dates the configuration.
        assert!(
            c.records
                .iter()
                .all(|r| r.event_time_ms > 1_262_304_000_000),
            "{}",
            folder.display()
        );
        if !folder.join("InterOp/TileMetricsOut.bin").exists() {
            continue;
        }
        // With TileMetricsOut only, the lane estimates need the run's cycles from other files;
        // the summary has the lane figures whatever else the run holds.
        let s = summarize(&folder).unwrap();
        assert!(!s.lanes.is_empty(), "{}", folder.display());
        assert!(s
            .lanes
            .iter()
            .all(|l| l.density_per_mm2 > 0.0 && l.pct_pf > 0.0));
        eprintln!(
            "{}: {} records, {} lane estimates, lanes {:?}",
            folder.display(),
            c.records.len(),
            lane_estimates.len(),
            s.lanes
        );
    }
}

/// Illumina's own reader: INTEROP_PYTHON, else the checkout's .cache/interop-venv.
fn interop_python() -> Option<PathBuf> {
    std::env::var_os("INTEROP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/interop-venv/bin/python");
            p.exists().then_some(p)
        })
}

#[test]
fn lane_figures_of_the_newer_real_folders_match_illuminas_interop() {
    let folders = folders();
    if folders.is_empty() {
        return;
    }
    let Some(python) = interop_python() else {
        eprintln!("no interop venv: the cross-check is skipped (make test installs it)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/interop_summary.py");
    let mut compared = 0;
    let mut largest: std::collections::BTreeMap<&str, f64> = Default::default();
    for folder in folders.iter().filter(|f| f.join("InterOp").is_dir()) {
        let theirs = python_json(&python, &script, &[folder.as_os_str()]);
        if let Some(err) = theirs.get("error") {
            // interop refuses Picard's cut-down folder (no channel names, no RunParameters).
            eprintln!("{}: interop: {err}", folder.display());
            continue;
        }
        let ours = summarize(folder).unwrap();
        // Run figures: yield and %>=Q30 from QMetricsOut (v7 binned on RTA 3), error rate,
        // first-cycle intensity from ExtractionMetricsOut (v3 on RTA 3).
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
            let rel = match (a, b.as_f64()) {
                (None, None) => continue,
                (Some(a), Some(b)) => (a - b).abs() / b.abs().max(1e-12),
                _ => panic!("{} {metric}: ours {a:?}, interop {b}", folder.display()),
            };
            assert!(
                rel <= 1e-5,
                "{} {metric}: ours {a:?}, interop {b}",
                folder.display()
            );
            let e = largest.entry(metric).or_default();
            *e = e.max(rel);
            compared += 1;
        }
        // interop lists every lane of the flow cell, with no figures (null) where the run has
        // no tile metrics (a NovaSeq X folder holding one cycle's extraction and image files).
        let lanes: Vec<&serde_json::Value> = theirs["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| !l["density_per_mm2"].is_null())
            .collect();
        assert_eq!(lanes.len(), ours.lanes.len(), "{}", folder.display());
        for (l, t) in ours.lanes.iter().zip(lanes) {
            for (metric, a, b) in [
                (
                    "density_per_mm2",
                    Some(l.density_per_mm2),
                    &t["density_per_mm2"],
                ),
                ("pct_pf", Some(l.pct_pf), &t["pct_pf"]),
                ("pct_occupied", l.pct_occupied, &t["pct_occupied"]),
            ] {
                let rel = match (a, b.as_f64()) {
                    (None, None) => continue,
                    (Some(a), Some(b)) => (a - b).abs() / b.abs().max(1e-12),
                    _ => panic!(
                        "{} lane {} {metric}: ours {a:?}, interop {b}",
                        folder.display(),
                        l.lane
                    ),
                };
                assert!(
                    rel <= 1e-5,
                    "{} lane {} {metric}: ours {a:?}, interop {b}",
                    folder.display(),
                    l.lane
                );
                let e = largest.entry(metric).or_default();
                *e = e.max(rel);
                compared += 1;
            }
        }
    }
    eprintln!("newer-instrument cross-check: {compared} run and lane figures; largest relative difference: {largest:?}");
}

/// Relative difference, NaN (ours) matching null (theirs).
fn rel(ours: f32, theirs: &serde_json::Value) -> f64 {
    match theirs.as_f64() {
        None => {
            assert!(ours.is_nan(), "ours {ours}, interop null");
            0.0
        }
        Some(b) => (f64::from(ours) - b).abs() / b.abs().max(1e-12),
    }
}

#[test]
fn every_tile_and_extended_tile_record_matches_illuminas_interop() {
    let folders = folders();
    let Some(python) = interop_python().filter(|_| !folders.is_empty()) else {
        return;
    };
    let theirs = |file: &Path, kind: &str| interop_records(&python, file, kind);
    let (mut files, mut values, mut largest) = (0, 0, 0f64);
    for folder in &folders {
        for file in bins(&folder.join("InterOp")) {
            let name = file.file_name().unwrap().to_str().unwrap();
            // v2 (codes) is cross-checked through the summaries; v3 record by record.
            let version = std::fs::read(&file).unwrap()[0];
            if name == "TileMetricsOut.bin" && version == 3 {
                let ours = interop::tile_metrics(&file).unwrap().records;
                let mut by_tile: std::collections::BTreeMap<(u16, u16), Vec<(u16, f32)>> =
                    Default::default();
                for t in &ours {
                    by_tile
                        .entry((t.lane, t.tile))
                        .or_default()
                        .push((t.code, t.value));
                }
                let t = theirs(&file, "tile");
                let records = t["records"].as_array().unwrap();
                assert_eq!(records.len(), by_tile.len(), "{}: tiles", file.display());
                for r in records {
                    let key = (
                        r["lane"].as_u64().unwrap() as u16,
                        r["tile"].as_u64().unwrap() as u16,
                    );
                    let codes = &by_tile[&key];
                    let code = |c: u16| codes.iter().find(|(k, _)| *k == c).map(|(_, v)| *v);
                    let mut pairs = vec![
                        (code(102), &r["clusters"]),
                        (code(103), &r["clusters_pf"]),
                        (code(100), &r["density"]),
                        (code(101), &r["density_pf"]),
                    ];
                    for a in r["aligned"].as_array().unwrap() {
                        let read = a[0].as_u64().unwrap() as u16;
                        pairs.push((code(300 + read - 1), &a[1]));
                    }
                    assert_eq!(
                        codes.len(),
                        pairs.len(),
                        "{} {key:?}: values",
                        file.display()
                    );
                    for (o, b) in pairs {
                        let d = rel(o.unwrap(), b);
                        assert!(
                            d <= 1e-5,
                            "{} {key:?}: ours {o:?}, interop {b}",
                            file.display()
                        );
                        largest = largest.max(d);
                        values += 1;
                    }
                }
                files += 1;
            } else if name == "ExtendedTileMetricsOut.bin" {
                let ours = interop::extended_tile_metrics(&file).unwrap().records;
                let t = theirs(&file, "extended_tile");
                let records = t["records"].as_array().unwrap();
                assert_eq!(records.len(), ours.len(), "{}", file.display());
                for (o, r) in ours.iter().zip(records) {
                    assert_eq!(
                        (u64::from(o.lane), u64::from(o.tile)),
                        (r["lane"].as_u64().unwrap(), r["tile"].as_u64().unwrap())
                    );
                    let (x, y) = o.upper_left.unwrap();
                    for (a, b) in [
                        (o.occupied, &r["occupied"]),
                        (x, &r["upper_left"][0]),
                        (y, &r["upper_left"][1]),
                    ] {
                        let d = rel(a, b);
                        assert!(d <= 1e-5, "{}: ours {a}, interop {b}", file.display());
                        largest = largest.max(d);
                        values += 1;
                    }
                }
                files += 1;
            }
        }
    }
    eprintln!(
        "record-level cross-check: {files} files, {values} values, largest relative difference {largest:e}"
    );
}

/// Illumina's records of one file, as `tests/interop_records.py` prints them.
fn interop_records(python: &Path, file: &Path, kind: &str) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop_records.py");
    python_json(python, &script, &[file.as_os_str(), kind.as_ref()])
}

/// What a Python script of ours prints as JSON; the test fails with its stderr if it fails.
fn python_json(python: &Path, script: &Path, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

type Key = (u64, u64, u64);

/// Records of ours by (lane, tile, cycle).
fn by_cycle<T>(
    records: Vec<T>,
    key: impl Fn(&T) -> (u16, u16, u16),
) -> std::collections::BTreeMap<Key, T> {
    records
        .into_iter()
        .map(|r| {
            let (lane, tile, cycle) = key(&r);
            ((lane.into(), tile.into(), cycle.into()), r)
        })
        .collect()
}

fn key_of(r: &serde_json::Value, third: &str) -> Key {
    (
        r["lane"].as_u64().unwrap(),
        r["tile"].as_u64().unwrap(),
        r[third].as_u64().unwrap(),
    )
}

/// The per-cycle readers (and index counts), record by record against Illumina's interop on
/// every real file of the newer folders: extraction intensity and focus per channel, Q-score
/// counts per bin, base calls per base (CorrectedInt v4), contrast per channel (Image v3) and
/// clusters per tile and read (Index). Values equal within 1e-5 relative; the same records.
#[test]
fn every_per_cycle_and_index_record_matches_illuminas_interop() {
    let folders = folders();
    let Some(python) = interop_python().filter(|_| !folders.is_empty()) else {
        return;
    };
    let mut per_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    let mut largest = 0f64;
    let mut check = |what: &str, file: &Path, ours: f64, theirs: &serde_json::Value| {
        let b = theirs.as_f64().unwrap_or(f64::NAN);
        // interop's NaN prints as null.
        let d = if ours == b || (ours.is_nan() && b.is_nan()) {
            0.0
        } else {
            (ours - b).abs() / b.abs().max(1e-12)
        };
        assert!(
            d <= 1e-5,
            "{} {what}: ours {ours}, interop {theirs}",
            file.display()
        );
        largest = largest.max(d);
    };
    for folder in &folders {
        for file in bins(&folder.join("InterOp")) {
            let name = file.file_name().unwrap().to_str().unwrap();
            let version = std::fs::read(&file).unwrap()[0];
            let kind = match name {
                "ExtractionMetricsOut.bin" => "extraction",
                "QMetricsOut.bin" => "q",
                "CorrectedIntMetricsOut.bin" if version == 4 => "corrected",
                "ImageMetricsOut.bin" => "image",
                "IndexMetricsOut.bin" => "index",
                _ => continue,
            };
            let t = interop_records(&python, &file, kind);
            let records = t["records"].as_array().unwrap();
            let mut values = 0;
            match kind {
                "extraction" => {
                    let ours = by_cycle(interop::extraction_metrics(&file).unwrap().records, |r| {
                        (r.lane, r.tile, r.cycle)
                    });
                    assert_eq!(ours.len(), records.len(), "{}", file.display());
                    for r in records {
                        let o = &ours[&key_of(r, "cycle")];
                        for (c, v) in r["intensity"].as_array().unwrap().iter().enumerate() {
                            check("intensity", &file, f64::from(o.intensity[c]), v);
                            check("focus", &file, f64::from(o.fwhm[c]), &r["focus"][c]);
                            values += 2;
                        }
                    }
                }
                "q" => {
                    let ours = by_cycle(interop::q_metrics(&file).unwrap().records, |r| {
                        (r.lane, r.tile, r.cycle)
                    });
                    assert_eq!(ours.len(), records.len(), "{}", file.display());
                    for r in records {
                        let o = &ours[&key_of(r, "cycle")];
                        let hist = r["hist"].as_array().unwrap();
                        for pair in hist {
                            let q = pair[0].as_u64().unwrap() as usize;
                            check("count", &file, f64::from(o.histogram[q - 1]), &pair[1]);
                            values += 1;
                        }
                        // Nothing of ours outside interop's bins.
                        let total: u64 = o.histogram.iter().map(|n| u64::from(*n)).sum();
                        let theirs: u64 = hist.iter().map(|p| p[1].as_u64().unwrap()).sum();
                        assert_eq!(total, theirs, "{}", file.display());
                    }
                }
                "corrected" => {
                    let ours = by_cycle(
                        interop::corrected_intensity_metrics(&file).unwrap().records,
                        |r| (r.lane, r.tile, r.cycle),
                    );
                    assert_eq!(ours.len(), records.len(), "{}", file.display());
                    for r in records {
                        let o = &ours[&key_of(r, "cycle")];
                        for (i, v) in r["calls"].as_array().unwrap().iter().enumerate() {
                            check("base calls", &file, f64::from(o.base_calls[i]), v);
                            values += 1;
                        }
                    }
                }
                "image" => {
                    let ours: std::collections::BTreeMap<
                        (u64, u64, u64, usize),
                        interop::ImageMetric,
                    > = interop::image_metrics(&file)
                        .unwrap()
                        .records
                        .into_iter()
                        .map(|r| {
                            (
                                (
                                    r.lane.into(),
                                    r.tile.into(),
                                    r.cycle.into(),
                                    r.channel.into(),
                                ),
                                r,
                            )
                        })
                        .collect();
                    let mut seen = 0;
                    for r in records {
                        let (l, t, c) = key_of(r, "cycle");
                        for (ch, v) in r["min"].as_array().unwrap().iter().enumerate() {
                            let o = &ours[&(l, t, c, ch)];
                            check("min contrast", &file, f64::from(o.min_contrast), v);
                            check(
                                "max contrast",
                                &file,
                                f64::from(o.max_contrast),
                                &r["max"][ch],
                            );
                            values += 2;
                            seen += 1;
                        }
                    }
                    assert_eq!(ours.len(), seen, "{}", file.display());
                }
                _ => {
                    let mut ours: std::collections::BTreeMap<Key, u64> = Default::default();
                    for r in interop::index_metrics(&file).unwrap().records {
                        *ours
                            .entry((r.lane.into(), r.tile.into(), r.read.into()))
                            .or_default() += u64::from(r.clusters);
                    }
                    for r in records {
                        let o = ours.remove(&key_of(r, "read")).unwrap_or(0);
                        check("clusters", &file, o as f64, &r["clusters"]);
                        values += 1;
                    }
                    assert!(
                        ours.values().all(|n| *n == 0),
                        "{}: counts interop does not have",
                        file.display()
                    );
                }
            }
            let e = per_kind.entry(kind).or_default();
            e.0 += 1;
            e.1 += values;
        }
    }
    eprintln!(
        "record-level cross-check of the per-cycle and index readers (files, values): {per_kind:?}; largest relative difference {largest:e}"
    );
}
