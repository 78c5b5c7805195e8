//! The collector on the real run folders in `shared/data/illumina-runs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use seqmon_collector::collect::collect_run;
use seqmon_collector::consent::ConsentOverride;
use seqmon_collector::interop::InteropError;
use seqmon_model::{encode, TelemetryKind};

const NOW: i64 = 1_796_000_000_000;

fn runs() -> PathBuf {
    seqmon_collector::sample_runs_dir()
}

fn folders() -> Vec<PathBuf> {
    let v = seqmon_collector::sample_run_folders();
    assert_eq!(v.len(), 5);
    v
}

/// Values of elements that identify people, places or samples, read here (test code only) so the
/// test can look for them in the collector's output.
fn forbidden_strings(folder: &Path) -> Vec<String> {
    let params = ["RunParameters.xml", "runParameters.xml"]
        .iter()
        .map(|n| folder.join(n))
        .find(|p| p.exists())
        .unwrap();
    let text = std::fs::read_to_string(params).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let reagent_kit = doc
        .descendants()
        .find(|n| n.has_tag_name("ReagentKitBarcode"))
        .and_then(|n| n.text())
        .unwrap_or("")
        .to_string();
    let mut out = Vec::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        let name = n.tag_name().name();
        let sensitive = matches!(
            name,
            "ExperimentName"
                | "Username"
                | "CloudUsername"
                | "ComputerName"
                | "LibraryID"
                | "SampleSheetName"
        ) || name.ends_with("Folder")
            || name.ends_with("FolderRoot")
            || name.ends_with("Path");
        if let (true, Some(v)) = (sensitive, n.text().map(str::trim)) {
            // On MiSeq the sample-sheet name defaults to the reagent kit barcode, a consumable id
            // that is run data; any other sample-sheet name must not leave.
            if v.len() >= 3 && !(name == "SampleSheetName" && v == reagent_kit) {
                out.push(v.to_string());
            }
        }
    }
    // Sample and project names from IndexMetricsOut.bin (v1: lane, tile, read, index name,
    // count, sample name, project name).
    let idx = std::fs::read(folder.join("InterOp/IndexMetricsOut.bin")).unwrap();
    let mut at = 1;
    let take = |at: &mut usize| {
        let len = u16::from_le_bytes([idx[*at], idx[*at + 1]]) as usize;
        let s = String::from_utf8_lossy(&idx[*at + 2..*at + 2 + len]).into_owned();
        *at += 2 + len;
        s
    };
    while at + 6 < idx.len() {
        at += 6;
        let _index = take(&mut at);
        at += 4;
        let sample = take(&mut at);
        let project = take(&mut at);
        out.extend([sample, project].into_iter().filter(|s| s.len() >= 3));
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn nothing_personal_leaves_from_any_real_folder() {
    let mut checked = 0;
    for folder in folders() {
        let forbidden = forbidden_strings(&folder);
        assert!(
            forbidden.len() >= 3,
            "{}: the test finds what it must look for: {forbidden:?}",
            folder.display()
        );
        let c = collect_run(&folder, None, NOW).unwrap();
        assert!(c.consent.allows_sending(), "{}", folder.display());
        assert!(
            c.records.len() > 50,
            "{}: {} records",
            folder.display(),
            c.records.len()
        );
        let mut bytes = Vec::new();
        for r in &c.records {
            bytes.extend(encode(r).unwrap());
            bytes.extend(serde_json::to_vec(r).unwrap());
        }
        let text = String::from_utf8_lossy(&bytes);
        for s in &forbidden {
            assert!(
                !text.contains(s.as_str()),
                "{}: {s:?} left the collector",
                folder.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
}

#[test]
fn every_run_gives_configuration_and_per_cycle_performance() {
    for folder in folders() {
        let c = collect_run(&folder, None, NOW).unwrap();
        let kinds = |k| c.records.iter().filter(|r| r.kind == k).count();
        assert_eq!(kinds(TelemetryKind::INSTRUMENT_CONFIGURATION), 1);
        assert_eq!(kinds(TelemetryKind::RUN_CONFIGURATION), 1);
        assert!(
            kinds(TelemetryKind::RUN_PERFORMANCE) >= 50,
            "{}",
            folder.display()
        );
        assert!(
            kinds(TelemetryKind::SENSOR_READINGS) >= 25,
            "{}",
            folder.display()
        );
        let ids: std::collections::BTreeSet<&str> =
            c.records.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids.len(), c.records.len(), "message ids are unique");
        assert!(c
            .records
            .windows(2)
            .all(|w| w[0].event_time_ms <= w[1].event_time_ms));
        eprintln!(
            "{}: {} records, {} file errors",
            folder.file_name().unwrap().to_string_lossy(),
            c.records.len(),
            c.file_errors.len()
        );
    }
}

#[test]
fn the_inconsistent_folder_fails_clearly_and_the_rest_is_collected() {
    let c = collect_run(&runs().join("miseq-2013-04-inconsistent"), None, NOW).unwrap();
    let inconsistent: Vec<&InteropError> = c
        .file_errors
        .iter()
        .filter(|e| matches!(e, InteropError::Inconsistent { .. }))
        .collect();
    assert!(!inconsistent.is_empty(), "{:?}", c.file_errors);
    assert!(
        inconsistent.iter().all(|e| e.to_string().contains(".bin")),
        "errors name the file"
    );
    assert!(c
        .records
        .iter()
        .any(|r| r.kind == TelemetryKind::RUN_PERFORMANCE));
    let nextseq = collect_run(&runs().join("nextseq-2016-04"), None, NOW).unwrap();
    // A file left unread on purpose is not an error; the summary says why.
    assert!(nextseq.file_errors.is_empty(), "{:?}", nextseq.file_errors);
    assert!(nextseq.files.iter().any(|f| f.file.ends_with("PFGridMetricsOut.bin")
        && matches!(f.outcome, seqmon_collector::collect::FileOutcome::Skipped(why) if why.contains("sub-tile grid"))));
    assert!(nextseq
        .files
        .iter()
        .filter(|f| !f.file.ends_with("PFGridMetricsOut.bin"))
        .all(|f| f.outcome == seqmon_collector::collect::FileOutcome::Read));
}

/// A copy of a real folder with its consent setting replaced (or removed when `value` is None).
fn with_consent(name: &str, value: Option<&str>) -> PathBuf {
    let src = runs().join(name);
    let dst = std::env::temp_dir().join(format!(
        "consent-{name}-{}-{}",
        value.unwrap_or("none"),
        std::process::id()
    ));
    std::fs::create_dir_all(dst.join("InterOp")).unwrap();
    for e in std::fs::read_dir(src.join("InterOp")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("InterOp").join(e.file_name())).unwrap();
    }
    std::fs::copy(src.join("RunInfo.xml"), dst.join("RunInfo.xml")).unwrap();
    let params = std::fs::read_to_string(src.join("runParameters.xml")).unwrap();
    let replaced = match value {
        Some(v) => params.replace(
            "<SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN>",
            &format!("<SendInstrumentHealthToILMN>{v}</SendInstrumentHealthToILMN>"),
        ),
        None => params.replace(
            "<SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN>",
            "",
        ),
    };
    assert_ne!(replaced, params);
    std::fs::write(dst.join("runParameters.xml"), replaced).unwrap();
    dst
}

#[test]
fn a_run_that_did_not_opt_in_sends_nothing_at_all_unless_the_operator_overrides() {
    for value in [Some("false"), None, Some("maybe")] {
        let folder = with_consent("miseq-2014-02-single-read", value);
        let c = collect_run(&folder, None, NOW).unwrap();
        assert!(!c.consent.allows_sending(), "{value:?}");
        assert!(
            c.records.is_empty(),
            "{value:?}: not even the configuration is sent"
        );
        let forced = collect_run(&folder, Some(ConsentOverride::OptedIn), NOW).unwrap();
        assert!(!forced.records.is_empty(), "explicit operator override");
        std::fs::remove_dir_all(&folder).unwrap();
    }
    let opted_in = collect_run(
        &runs().join("miseq-2014-02-single-read"),
        Some(ConsentOverride::OptedOut),
        NOW,
    )
    .unwrap();
    assert!(opted_in.records.is_empty());
}
