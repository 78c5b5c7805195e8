//! Hostile run folders: a FIFO named RunInfo.xml, links to devices, oversized files, and
//! RunParameters.xml files whose consent elements repeat or use the cloud modes of newer
//! instruments. Each is refused or decided at once, with a typed error naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use seqmon_collector::collect::{collect_run, collect_run_with, Collected};
use seqmon_collector::consent::ConsentBasis;
use seqmon_collector::files::{FileError, FileKind, Limits};
use seqmon_collector::interop::InteropError;
use seqmon_collector::runfolder::RunFolderError;
use seqmon_model::TelemetryKind;

const NOW: i64 = 1_796_000_000_000;

fn runs() -> PathBuf {
    seqmon_collector::sample_runs_dir()
}

/// A writable copy of a real run folder.
fn copy_run(name: &str, tag: &str) -> PathBuf {
    let src = runs().join(name);
    let dst = std::env::temp_dir().join(format!("bad-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(dst.join("InterOp")).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
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

/// Runs `collect_run` on another thread and fails the test if it has not returned within
/// `secs` seconds (a hang is the failure this file guards against).
fn collect_within(folder: &Path, secs: u64) -> Result<Collected, RunFolderError> {
    let (tx, rx) = mpsc::channel();
    let f = folder.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(collect_run(&f, None, NOW));
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("collecting {} hung", folder.display()))
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_named_runinfo_xml_is_refused_at_once() {
    let folder = copy_run("miseq-2014-02-single-read", "fifo");
    std::fs::remove_file(folder.join("RunInfo.xml")).unwrap();
    mkfifo(&folder.join("RunInfo.xml"));
    let started = std::time::Instant::now();
    let e = collect_within(&folder, 5).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            &e,
            RunFolderError::Refused(FileError::NotRegular {
                kind: FileKind::Fifo,
                file
            }) if file.ends_with("RunInfo.xml")
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("RunInfo.xml") && e.to_string().contains("FIFO"));
    // The same for RunParameters.xml and for an InterOp file (which is skipped, not fatal).
    std::fs::remove_file(folder.join("RunInfo.xml")).unwrap();
    std::fs::copy(
        runs().join("miseq-2014-02-single-read/RunInfo.xml"),
        folder.join("RunInfo.xml"),
    )
    .unwrap();
    std::fs::remove_file(folder.join("InterOp/QMetricsOut.bin")).unwrap();
    mkfifo(&folder.join("InterOp/QMetricsOut.bin"));
    let c = collect_within(&folder, 5).unwrap();
    assert!(
        c.file_errors.iter().any(|e| matches!(
            e,
            InteropError::Refused(FileError::NotRegular { kind: FileKind::Fifo, file })
                if file.ends_with("QMetricsOut.bin")
        )),
        "{:?}",
        c.file_errors
    );
    std::fs::remove_file(folder.join("runParameters.xml")).unwrap();
    mkfifo(&folder.join("runParameters.xml"));
    let e = collect_within(&folder, 5).unwrap_err();
    assert!(e.to_string().contains("runParameters.xml"), "{e}");
    std::fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn a_link_to_dev_zero_is_refused_and_a_link_to_a_regular_file_is_read() {
    let folder = copy_run("miseq-2014-02-single-read", "zero");
    std::fs::remove_file(folder.join("RunInfo.xml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("RunInfo.xml")).unwrap();
    let e = collect_within(&folder, 5).unwrap_err();
    assert!(
        matches!(
            &e,
            RunFolderError::Refused(FileError::NotRegular {
                kind: FileKind::CharDevice,
                ..
            })
        ),
        "{e:?}"
    );
    // An InterOp file linked to /dev/zero: skipped with a typed error, never read.
    std::fs::remove_file(folder.join("RunInfo.xml")).unwrap();
    std::os::unix::fs::symlink(
        runs().join("miseq-2014-02-single-read/RunInfo.xml"),
        folder.join("RunInfo.xml"),
    )
    .unwrap();
    std::fs::remove_file(folder.join("InterOp/ExtractionMetricsOut.bin")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("InterOp/ExtractionMetricsOut.bin"))
        .unwrap();
    let c = collect_within(&folder, 5).unwrap();
    assert!(
        c.file_errors.iter().any(|e| matches!(
            e,
            InteropError::Refused(FileError::NotRegular { file, .. })
                if file.ends_with("ExtractionMetricsOut.bin")
        )),
        "{:?}",
        c.file_errors
    );
    assert!(!c.records.is_empty(), "the rest of the run is collected");
    // A directory where a file should be.
    std::fs::remove_file(folder.join("InterOp/ExtractionMetricsOut.bin")).unwrap();
    std::fs::create_dir(folder.join("InterOp/ExtractionMetricsOut.bin")).unwrap();
    let c = collect_within(&folder, 5).unwrap();
    assert!(c.file_errors.iter().any(|e| matches!(
        e,
        InteropError::Refused(FileError::NotRegular {
            kind: FileKind::Directory,
            ..
        })
    )));
    std::fs::remove_dir_all(&folder).unwrap();
}

#[test]
fn an_oversized_file_is_refused_naming_the_file_and_the_cap() {
    let folder = copy_run("miseq-2014-02-single-read", "big");
    let limits = Limits {
        xml_max_bytes: 4096,
        interop_max_bytes: 100_000,
        ..Limits::default()
    };
    // RunInfo.xml is 562 bytes, runParameters.xml 3.2 KB: both fit.
    let c = collect_run_with(&folder, None, NOW, &limits).unwrap();
    let over: Vec<&InteropError> = c
        .file_errors
        .iter()
        .filter(|e| matches!(e, InteropError::Refused(FileError::TooLarge { .. })))
        .collect();
    // QMetricsOut.bin (323,010 bytes) and ControlMetricsOut.bin (105,729) are over 100,000.
    assert_eq!(over.len(), 2, "{:?}", c.file_errors);
    for e in &over {
        let text = e.to_string();
        assert!(
            text.contains(".bin") && text.contains("cap of 100000 bytes"),
            "{text}"
        );
    }
    // A RunInfo.xml grown past the XML cap: the run is refused, the message says why.
    let mut big = std::fs::read_to_string(folder.join("RunInfo.xml")).unwrap();
    big.push_str(&"<!-- padding -->".repeat(400));
    std::fs::write(folder.join("RunInfo.xml"), big).unwrap();
    let e = collect_run_with(&folder, None, NOW, &limits).unwrap_err();
    assert!(
        matches!(
            e,
            RunFolderError::Refused(FileError::TooLarge { cap: 4096, .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("RunInfo.xml") && e.to_string().contains("cap of 4096"));
    std::fs::remove_dir_all(&folder).unwrap();
}

/// A copy of the MiSeq run whose `<SendInstrumentHealthToILMN>true</…>` is replaced by `xml`.
fn with_consent_xml(tag: &str, xml: &str) -> PathBuf {
    let folder = copy_run("miseq-2014-02-single-read", tag);
    let p = folder.join("runParameters.xml");
    let text = std::fs::read_to_string(&p).unwrap();
    let replaced = text.replace(
        "<SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN>",
        xml,
    );
    assert_ne!(replaced, text);
    std::fs::write(&p, replaced).unwrap();
    folder
}

#[test]
fn consent_from_real_files_any_no_wins_and_the_basis_is_sent() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "dup-true-false",
            "<SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN><SendInstrumentHealthToILMN>false</SendInstrumentHealthToILMN>",
            None,
        ),
        (
            "dup-false-true",
            "<SendInstrumentHealthToILMN>false</SendInstrumentHealthToILMN><SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN>",
            None,
        ),
        (
            "nested-no",
            "<SendInstrumentHealthToILMN>true</SendInstrumentHealthToILMN><BaseSpaceSettings><SendInstrumentHealthToILMN>false</SendInstrumentHealthToILMN></BaseSpaceSettings>",
            None,
        ),
        (
            "novaseqx",
            "<CloudUploadMode>InstrumentPerformance</CloudUploadMode>",
            Some("CLOUD_PERFORMANCE_DATA_ONLY"),
        ),
        (
            "nextseq2k",
            "<BsshMode>PerformanceDataOnly</BsshMode>",
            Some("CLOUD_PERFORMANCE_DATA_ONLY"),
        ),
        (
            "nextseq550",
            "<RunMode>PerformanceDataOnly</RunMode>",
            Some("CLOUD_PERFORMANCE_DATA_ONLY"),
        ),
        (
            "iseq",
            "<BaseSpaceParameters><Mode>UserAndIlluminaHealth</Mode></BaseSpaceParameters>",
            Some("CLOUD_RUN_MONITORING"),
        ),
        (
            "novaseq6000",
            "<SendIlluminaHealthData>true</SendIlluminaHealthData>",
            Some("INSTRUMENT_HEALTH_SETTING"),
        ),
        (
            "hiseq-runmode",
            "<Setup><RunMode>RapidRun</RunMode></Setup>",
            None,
        ),
        ("mode-elsewhere", "<Other><Mode>UserAndIlluminaHealth</Mode></Other>", None),
    ];
    for (tag, xml, expected) in cases {
        let folder = with_consent_xml(tag, xml);
        let c = collect_run(&folder, None, NOW).unwrap();
        assert_eq!(
            c.consent.basis().map(ConsentBasis::label),
            *expected,
            "{tag}: {:?}",
            c.consent
        );
        let config: Vec<_> = c
            .records
            .iter()
            .filter(|r| r.kind == TelemetryKind::INSTRUMENT_CONFIGURATION)
            .collect();
        match expected {
            None => assert!(c.records.is_empty(), "{tag}: nothing is sent"),
            Some(label) => {
                assert_eq!(config.len(), 1);
                assert_eq!(
                    config[0]
                        .attributes
                        .get("consent_basis")
                        .map(String::as_str),
                    Some(*label),
                    "{tag}"
                );
            }
        }
        // Only the configuration record says it.
        assert!(c
            .records
            .iter()
            .filter(|r| r.kind != TelemetryKind::INSTRUMENT_CONFIGURATION)
            .all(|r| !r.attributes.contains_key("consent_basis")));
        std::fs::remove_dir_all(&folder).unwrap();
    }
    // The real runs say so too.
    for (run, label) in [
        ("miseq-2013-04-high-pf", "INSTRUMENT_HEALTH_SETTING"),
        ("nextseq-2016-04", "CLOUD_PERFORMANCE_DATA_ONLY"),
    ] {
        let c = collect_run(&runs().join(run), None, NOW).unwrap();
        let config = c
            .records
            .iter()
            .find(|r| r.kind == TelemetryKind::INSTRUMENT_CONFIGURATION)
            .unwrap();
        assert_eq!(config.attributes["consent_basis"], label, "{run}");
    }
    let forced = collect_run(
        &runs().join("miseq-2013-04-high-pf"),
        Some(seqmon_collector::consent::ConsentOverride::OptedIn),
        NOW,
    )
    .unwrap();
    assert!(forced.records.iter().any(
        |r| r.attributes.get("consent_basis").map(String::as_str) == Some("OPERATOR_OVERRIDE")
    ));
}
