//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/` from real data:
//! records of every type from a simulated fleet run through the whole pipeline (Avro, frames,
//! JSON lines), the sample run folders' InterOp files (cut to their first records: the corpus
//! stays small) and XML files, the built-in template catalogue and its examples, and the real
//! identifiers the grammars cite. Deterministic: the same tree gives the same files.
//!
//! `cargo run -p seqmon-fuzz --example seed_corpus [-- <corpus dir>]`; `SEQMON_RUN_FOLDERS`
//! points at the run folders as for the collector's tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a one-off generator"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use seqmon_model::codec::writer_schema;
use seqmon_model::json::avro_to_json;
use seqmon_model::{encode, ingest, store, AlertCommand, AlertCommandAction, Resolution};
use seqmon_privacy::template::TemplateCatalogue;
use seqmon_simulator::{simulate, FleetConfig};

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), data).unwrap();
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    avro_and_frames(&dir);
    run_folders(&dir);
    privacy(&dir);
    eprintln!("seed corpus written to {}", dir.display());
}

/// Up to this many records per schema version.
const PER_VERSION: usize = 6;

fn avro_and_frames(dir: &Path) {
    let sim = simulate(&FleetConfig {
        instruments: 6,
        duration_hours: 3.0,
        ..Default::default()
    });
    let mut all: Vec<Vec<u8>> = sim.records.iter().map(|r| r.bytes.clone()).collect();
    let mut chain = seqmon_pipeline::default_chain().unwrap();
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut tap = |_: &str, e: &seqmon_runtime::Emitted| outputs.push(e.value.clone());
    for r in &sim.records {
        chain.push(&r.key, &r.bytes, &mut tap).unwrap();
    }
    chain.finish(&mut tap).unwrap();
    all.extend(outputs);
    all.push(
        encode(&AlertCommand {
            command_id: "c1".into(),
            alert_id: "A00123:thermal:1".into(),
            instrument_serial: "A00123".into(),
            action: AlertCommandAction::RESOLVE,
            issued_by: "fse-17".into(),
            issued_at_ms: 7,
            snooze_until_ms: None,
            resolution: Some(Resolution::PART_REPLACED),
            assignee: None,
            comment: Some("replaced".into()),
            alert_sequence: Some(3),
        })
        .unwrap(),
    );
    // A few of each schema version, preferring variety in length.
    let mut by_version: BTreeMap<(&str, u32), Vec<Vec<u8>>> = BTreeMap::new();
    for bytes in all {
        let Ok((entry, _)) = writer_schema(&bytes) else {
            continue;
        };
        let v = by_version.entry((entry.name, entry.version)).or_default();
        if v.len() < PER_VERSION * 20 && !v.contains(&bytes) {
            v.push(bytes);
        }
    }
    let entries = store().entries();
    let mut telemetry = Vec::new();
    for ((name, version), mut records) in by_version {
        records.sort_by_key(|r| r.len());
        let step = (records.len() / PER_VERSION).max(1);
        let picked: Vec<&Vec<u8>> = records.iter().step_by(step).take(PER_VERSION).collect();
        let index = entries
            .iter()
            .position(|e| e.name == name && e.version == version)
            .unwrap();
        for (i, r) in picked.iter().enumerate() {
            write(dir, "avro", &format!("{name}-v{version}-{i}"), r);
            let mut body = vec![index as u8];
            body.extend_from_slice(&r[10..]);
            write(dir, "avro_body", &format!("{name}-v{version}-{i}"), &body);
            let (_, value) = seqmon_model::codec::decode_value(r, name).unwrap();
            write(
                dir,
                "jsonl",
                &format!("{name}-v{version}-{i}.jsonl"),
                format!("{}\n", avro_to_json(&value)).as_bytes(),
            );
            if name == "telemetry" {
                telemetry.push((*r).clone());
            }
        }
    }
    // The simulator's own JSON lines, bad ones included, a few to a file.
    for (i, chunk) in sim.records.chunks(4).step_by(97).take(8).enumerate() {
        let text: String = chunk.iter().map(|r| format!("{}\n", r.json_line)).collect();
        write(dir, "jsonl", &format!("sim-{i}.jsonl"), text.as_bytes());
    }
    write(
        dir,
        "jsonl",
        "mixed.jsonl",
        b"not json\n\n{}\r\n{\"a\":1}\n\xff\xfe\n",
    );
    for n in [1usize, 2, 3] {
        let mut frame = ingest::begin(n as u32);
        for (i, t) in telemetry.iter().cycle().take(n).enumerate() {
            ingest::push(
                &mut frame,
                &format!("M{i:05}"),
                1_700_000_000_000 + i as i64,
                t,
            );
        }
        write(dir, "ingest_frame", &format!("batch-{n}"), &frame);
    }
}

/// InterOp kinds the collector reads, with their fixed record size (None: variable length).
const INTEROP: &[(&str, Option<usize>)] = &[
    ("TileMetricsOut.bin", Some(10)),
    ("QMetricsOut.bin", Some(206)),
    ("ErrorMetricsOut.bin", Some(30)),
    ("ExtractionMetricsOut.bin", Some(38)),
    ("CorrectedIntMetricsOut.bin", Some(48)),
    ("ImageMetricsOut.bin", Some(12)),
    ("EmpiricalPhasingMetricsOut.bin", Some(14)),
    ("IndexMetricsOut.bin", None),
    ("ControlMetricsOut.bin", None),
];

/// Bytes of an InterOp file kept in the corpus, at most.
const INTEROP_KEEP: usize = 3000;

fn run_folders(dir: &Path) {
    for folder in seqmon_collector::sample_run_folders() {
        let run = folder.file_name().unwrap().to_string_lossy().into_owned();
        write(
            dir,
            "runinfo",
            &run,
            &std::fs::read(folder.join("RunInfo.xml")).unwrap(),
        );
        for p in ["RunParameters.xml", "runParameters.xml"] {
            if let Ok(b) = std::fs::read(folder.join(p)) {
                write(dir, "runparameters", &run, &b);
            }
        }
        for (file, size) in INTEROP {
            let Ok(b) = std::fs::read(folder.join("InterOp").join(file)) else {
                continue;
            };
            let keep = match size {
                // Header and whole records.
                Some(s) => 2 + ((INTEROP_KEEP - 2) / s) * s,
                None => INTEROP_KEEP,
            };
            let stem = file.trim_end_matches(".bin");
            write(
                dir,
                "interop",
                &format!("{run}-{stem}"),
                &b[..b.len().min(keep)],
            );
        }
    }
}

fn privacy(dir: &Path) {
    let text = include_str!("../../privacy/templates/builtin.jsonl");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    for (i, chunk) in lines.chunks(12).enumerate() {
        write(
            dir,
            "templates",
            &format!("builtin-{i}.jsonl"),
            chunk.join("\n").as_bytes(),
        );
    }
    write(
        dir,
        "templates",
        "operator.jsonl",
        br#"# an operator catalogue
{"id":"CHILLER_FAULT_CODE_ON_PUMP","pattern":"Chiller fault code {code} on pump {pump:int 1..=16}","subsystem":"thermal","example":"Chiller fault code E1042 on pump 2","source":"site log"}
{"id":"LASER_POWER_AT","pattern":"Laser power {p:number 0..=999 mW} at {v:version}","example":"Laser power 12.5 mW at 1.2.3"}
"#,
    );
    let cat = TemplateCatalogue::builtin();
    for (i, t) in cat.templates().enumerate() {
        if let Some(example) = t.example() {
            write(
                dir,
                "log_message",
                &format!("{i:03}-{}", t.id()),
                example.as_bytes(),
            );
        }
    }
    let strings = [
        "M00612",
        "NS500318",
        "VH00120",
        "A00494",
        "LH00217",
        "FS10000106",
        "MN00302",
        "NB551068",
        "000000000-A3GJA",
        "AHW37NBGXX",
        "BH5NTFDSXX",
        "130412_M00612_0070_000000000-A3GJA",
        "160404_NS500318_0141_AHW37NBGXX",
        "20240202_LH00217_0044_A2255J2LT3",
        "20200624_FS10000106_66_BPA73105-2609",
        "MS2012501-300V2",
        "NS2263047-REAGT",
        "RGT30481295",
        "2.0.5",
        "v1.7.5",
        "9.5.12",
        "E1042",
        "E-FLU-301",
        "I-RUN-010",
        "6f1c0d3e-0000-4000-8000-000000000001",
        "DE",
        "US-CA",
        "NextSeq High",
        "MiSeq Control Software",
        "application_version",
        "CLOUD_RUN_MONITORING",
        "ps-0123456789abcdef0123",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    ];
    for (i, s) in strings.iter().enumerate() {
        write(dir, "grammar", &format!("{i:02}"), s.as_bytes());
    }
}
