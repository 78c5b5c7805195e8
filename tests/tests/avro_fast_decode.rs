//! The direct Avro decoder (`seqmon_model::fast`, behind `seqmon_model::decode`) against two
//! other implementations, on every record type the pipeline writes, from a simulated fleet run
//! through all five stages:
//! - apache-avro's decode through its generic `Value` (resolving older versions to the newest):
//!   the same values, and re-encoding them gives back the same bytes; under random corruption
//!   both accept and refuse the same inputs;
//! - fastavro (PyPI, installed by `make test`): it finds the fingerprint in the header, reads the
//!   same bytes to the same values, and its own encoder writes the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use seqmon_model::codec::{decode_via_value, writer_schema, HEADER_LEN};
use seqmon_model::partitioning::partition_for_key;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, encode, store, Alert, Anomaly, AnomalyDetectorState, AvroRecord, CohortSignal,
    DeadLetter, Feature, FeatureExtractorState, InstrumentModel, MaintenanceEntry, PrivacyAudit,
    SanitizedTelemetry, StateSnapshot, Telemetry,
};
use seqmon_runtime::{Emitter, Envelope, Processor};
use seqmon_simulator::{simulate, FleetConfig};

/// Marks a truncated record apache-avro accepts and the direct decoder refuses.
const LENIENT: &str = "truncated; apache-avro reads the missing tail as null";

/// Every record the embedded pipeline reads or writes for a small fleet with bad records.
fn realistic_records() -> Vec<Vec<u8>> {
    let sim = simulate(&FleetConfig {
        instruments: 24,
        duration_hours: 6.0,
        ..Default::default()
    });
    // Every third instrument as one of the models telemetry v5 added (the simulator has the
    // first four), so the newest version of every record type carrying the model is among the
    // records too.
    let added = [
        InstrumentModel::NOVASEQ_X,
        InstrumentModel::NEXTSEQ_550,
        InstrumentModel::MINISEQ,
        InstrumentModel::HISEQ,
    ];
    let serials: std::collections::BTreeSet<&str> =
        sim.records.iter().map(|r| r.key.as_str()).collect();
    let raw: Vec<(String, Vec<u8>)> = sim
        .records
        .iter()
        .map(|r| {
            let rank = serials.iter().position(|s| *s == r.key).unwrap_or(0);
            let recast = (rank % 3 == 0)
                .then(|| decode::<Telemetry>(&r.bytes).ok())
                .flatten()
                .map(|mut t| {
                    t.instrument_model = added[(rank / 3) % added.len()];
                    encode(&t).unwrap()
                });
            (r.key.clone(), recast.unwrap_or_else(|| r.bytes.clone()))
        })
        .collect();
    let mut all: Vec<Vec<u8>> = raw.iter().map(|(_, v)| v.clone()).collect();
    let mut chain = seqmon_pipeline::default_chain().unwrap();
    let mut outputs: Vec<Vec<u8>> = Vec::new();
    let mut features: Vec<(String, Vec<u8>)> = Vec::new();
    let mut sanitized: Vec<(String, Vec<u8>)> = Vec::new();
    let mut tap = |_: &str, e: &seqmon_runtime::Emitted| {
        if e.role == TopicRole::Features {
            features.push((e.key.clone(), e.value.clone()));
        }
        if e.role == TopicRole::Sanitized {
            sanitized.push((e.key.clone(), e.value.clone()));
        }
        outputs.push(e.value.clone())
    };
    for (key, value) in &raw {
        chain.push(key, value, &mut tap).unwrap();
    }
    chain.finish(&mut tap).unwrap();
    all.extend(outputs);
    // On Kafka (several partitions) the detector also broadcasts watermarks (cohort_signal v2).
    let mut detector = seqmon_anomaly_detector::AnomalyDetector::default();
    detector.on_input_partitions(3);
    for (key, value) in &features {
        let mut out = Emitter::default();
        let env = Envelope {
            key: Some(key.as_bytes()),
            value,
            topic: TopicRole::Features.spec().name,
            partition: partition_for_key(key.as_bytes(), 3) as i32,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        detector.process(&env, &mut out).unwrap();
        all.extend(out.take().0.into_iter().map(|e| e.value));
    }
    // The detector's changelog records: every series, fleet spread and membership it holds.
    for key in detector.state_keys() {
        all.extend(detector.snapshot(&key).unwrap());
    }
    // The feature extractor's changelog records (bases and deltas), written after every
    // 5 records as the Kafka runtime would after a transaction.
    let mut extractor = seqmon_feature_extractor::FeatureExtractor::default();
    for (n, chunk) in sanitized.chunks(5).enumerate() {
        let mut changed = std::collections::BTreeSet::new();
        for (i, (key, value)) in chunk.iter().enumerate() {
            let mut out = Emitter::default();
            let env = Envelope {
                key: Some(key.as_bytes()),
                value,
                topic: TopicRole::Sanitized.spec().name,
                partition: 0,
                offset: (n * 5 + i) as i64,
                timestamp_ms: None,
                arrival_time_ms: None,
            };
            extractor.process(&env, &mut out).unwrap();
            changed.extend(out.take().2);
        }
        for key in changed {
            for record in extractor.state_records(&key).unwrap() {
                all.extend(record.value);
            }
        }
    }
    // State snapshots are what the changelogs carry.
    all.push(
        encode(&StateSnapshot {
            stage: "feature-extractor".into(),
            key: "A00123".into(),
            format_version: 1,
            state_json: br#"{"windows":[]}"#.to_vec(),
        })
        .unwrap(),
    );
    all
}

/// Decodes with both decoders; they must agree. Returns the value as JSON when both decode.
fn both<T: AvroRecord + std::fmt::Debug>(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let fast = decode::<T>(bytes);
    let reference = decode_via_value::<T>(bytes);
    match (fast, reference) {
        (Ok(a), Ok(b)) => {
            // Compared by their encoding, so a NaN reading equals itself.
            assert_eq!(
                encode(&a).unwrap(),
                encode(&b).unwrap(),
                "decoders disagree on {}: {a:?} vs {b:?}",
                hex(bytes)
            );
            Ok(serde_json::to_value(&a).unwrap())
        }
        (Err(a), Err(_)) => Err(a.to_string()),
        // apache-avro 0.21 reads a string, boolean or union index cut off by the end of the
        // record as null and carries on; the direct decoder refuses the truncated record.
        (Err(a), Ok(_))
            if a.to_string().contains("bytes left") || a.to_string().contains("truncated") =>
        {
            Err(format!("{LENIENT}: {a}"))
        }
        (a, b) => panic!(
            "one decoder accepts what the other refuses: direct {:?}, apache-avro {:?}, bytes {}",
            a.map(|_| ()),
            b.map(|_| ()),
            hex(bytes)
        ),
    }
}

fn check(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let (writer, _) = writer_schema(bytes).map_err(|e| e.to_string())?;
    match writer.name {
        "telemetry" => both::<Telemetry>(bytes),
        "sanitized_telemetry" => both::<SanitizedTelemetry>(bytes),
        "feature" => both::<Feature>(bytes),
        "anomaly" => both::<Anomaly>(bytes),
        "alert" => both::<Alert>(bytes),
        "maintenance_entry" => both::<MaintenanceEntry>(bytes),
        "dead_letter" => both::<DeadLetter>(bytes),
        "privacy_audit" => both::<PrivacyAudit>(bytes),
        "state_snapshot" => both::<StateSnapshot>(bytes),
        "feature_extractor_state" => both::<FeatureExtractorState>(bytes),
        "anomaly_detector_state" => both::<AnomalyDetectorState>(bytes),
        "cohort_signal" => both::<CohortSignal>(bytes),
        other => panic!("no Rust type for schema {other}"),
    }
}

fn reencode(bytes: &[u8]) -> Vec<u8> {
    let (writer, _) = writer_schema(bytes).unwrap();
    macro_rules! again {
        ($t:ty) => {
            encode(&decode::<$t>(bytes).unwrap()).unwrap()
        };
    }
    match writer.name {
        "telemetry" => again!(Telemetry),
        "sanitized_telemetry" => again!(SanitizedTelemetry),
        "feature" => again!(Feature),
        "anomaly" => again!(Anomaly),
        "alert" => again!(Alert),
        "maintenance_entry" => again!(MaintenanceEntry),
        "dead_letter" => again!(DeadLetter),
        "privacy_audit" => again!(PrivacyAudit),
        "state_snapshot" => again!(StateSnapshot),
        "feature_extractor_state" => again!(FeatureExtractorState),
        "anomaly_detector_state" => again!(AnomalyDetectorState),
        "cohort_signal" => again!(CohortSignal),
        other => panic!("no Rust type for schema {other}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn is_latest(bytes: &[u8]) -> bool {
    writer_schema(bytes).is_ok_and(|(w, _)| store().latest(w.name).version == w.version)
}

#[test]
fn direct_decoder_equals_apache_avro_and_reencodes_to_the_same_bytes() {
    let records = realistic_records();
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut direct = 0;
    for bytes in &records {
        // The simulator's undecodable records have no usable header; nothing to compare.
        let Ok((writer, _)) = writer_schema(bytes) else {
            continue;
        };
        *per_type
            .entry(format!("{} v{}", writer.name, writer.version))
            .or_default() += 1;
        // Bad records the simulator injects on purpose may not decode; both must then refuse.
        if check(bytes).is_ok() {
            if is_latest(bytes) {
                // Our writer may pick the version before the newest (a record every reader of
                // that version can read, `AvroRecord::write_version`): the same body.
                let again = reencode(bytes);
                assert_eq!(
                    again[HEADER_LEN..],
                    bytes[HEADER_LEN..],
                    "re-encoding changed the bytes"
                );
                let (rewriter, _) = writer_schema(&again).unwrap();
                assert_eq!(rewriter.name, writer.name);
            }
            if writer.to_latest.is_some() {
                direct += 1;
            }
        }
    }
    eprintln!(
        "checked {} records, {direct} on the direct path: {per_type:?}",
        records.len()
    );
    for name in [
        "telemetry",
        "sanitized_telemetry",
        "feature",
        "anomaly",
        "alert",
        "maintenance_entry",
        "dead_letter",
        "privacy_audit",
        "state_snapshot",
        "cohort_signal",
        "feature_extractor_state",
        "anomaly_detector_state",
    ] {
        let latest = store().latest(name).version;
        assert!(
            per_type
                .get(&format!("{name} v{latest}"))
                .copied()
                .unwrap_or(0)
                > 0,
            "no {name} v{latest} record among the realistic records"
        );
    }
    assert!(
        direct > 10_000,
        "only {direct} records took the direct path"
    );
}

#[test]
fn both_decoders_refuse_the_same_corrupted_records() {
    let records = realistic_records();
    // A fixed-seed generator: the same corruptions every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused, mut lenient) = (0, 0, 0);
    for bytes in records
        .iter()
        .step_by(7)
        .filter(|b| writer_schema(b).is_ok())
    {
        for _ in 0..8 {
            let mut b = bytes.clone();
            match next() % 3 {
                // Flip a bit of the body (the header is checked before either decoder runs).
                0 | 1 => {
                    let i = 10 + (next() as usize) % (b.len() - 10).max(1);
                    if i < b.len() {
                        b[i] ^= 1 << (next() % 8);
                    }
                }
                _ => b.truncate(10 + (next() as usize) % (b.len() - 10).max(1)),
            }
            match check(&b) {
                Ok(_) => accepted += 1,
                Err(e) if e.starts_with(LENIENT) => lenient += 1,
                Err(_) => refused += 1,
            }
        }
    }
    eprintln!(
        "corrupted records: {accepted} still decode (same value both ways), {refused} refused by \
         both, {lenient} truncated ones refused by the direct decoder only"
    );
    assert!(refused > 1000 && accepted > 100);
}

#[test]
fn fastavro_reads_the_same_values_from_the_same_bytes() {
    let python = std::env::var("INTEROP_PYTHON").expect(
        "INTEROP_PYTHON is not set: run with `make test`, which installs fastavro from PyPI",
    );
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let records: Vec<Vec<u8>> = realistic_records()
        .into_iter()
        .filter(|b| check(b).is_ok())
        .collect();
    let mut child = Command::new(python)
        .arg(root.join("tools/fastavro_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = records
        .iter()
        .map(|b| {
            let (w, _) = writer_schema(b).unwrap();
            let path = root.join(format!("schemas/{}/v{}.avsc", w.name, w.version));
            serde_json::json!({ "schema": path, "hex": hex(b) }).to_string()
        })
        .collect();
    let writer = std::thread::spawn(move || {
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "fastavro_check.py failed");
    let answers: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), records.len());
    let mut compared = 0;
    for (bytes, theirs) in records.iter().zip(&answers) {
        assert!(
            theirs.get("error").is_none(),
            "fastavro refused {}: {theirs}",
            hex(bytes)
        );
        // Older versions decode to our newest type; fastavro reads them as written.
        if is_latest(bytes) {
            assert_eq!(
                &check(bytes).unwrap(),
                theirs,
                "values differ for {}",
                hex(bytes)
            );
            compared += 1;
        }
    }
    eprintln!(
        "fastavro read {} records (fingerprint, value, re-encoded bytes); {compared} values compared",
        records.len()
    );
    assert!(compared > 10_000);
}
