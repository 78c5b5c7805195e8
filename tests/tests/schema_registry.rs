//! Schema-registry interop on a real Apache Kafka broker: the Confluent framing (magic byte 0,
//! 4-byte big-endian schema id, Avro body) written by a stage and read by the next, with both
//! framings mixed on one topic, and checked by an independent decoder.
//!
//! THE REGISTRY HERE IS A STUB of a third-party API: tools/schema-registry/stub_registry.py, an
//! in-memory imitation of the Confluent Schema Registry REST API (no compatibility checking, no
//! persistence). No real registry can be started on the test machines (docs/schema-registry.md,
//! "Testing"). What is real: the broker, the stage binaries, `seqmon-admin schemas publish`, and
//! the independent decoder (tools/schema-registry/confluent_read.py: fastavro on the body after
//! the 5-byte header, with the schema fetched from the registry by id, and confluent-kafka's own
//! AvroDeserializer, which must agree) and writer (confluent-kafka's AvroSerializer).
//!
//! Flow: publish the catalogue's schemas (twice: the second run registers nothing); sanitized
//! telemetry from the simulator through the validator and privacy enforcer in process, produced
//! with every other record in the Confluent framing by confluent-kafka's own AvroSerializer
//! (tools/schema-registry/confluent_write.py; its bytes must equal our writer's), and one with
//! an id the registry never gave; the feature extractor (writing `features` in the Confluent framing) and the anomaly
//! detector as OS processes. Their committed outputs must equal those of the stages in process
//! over the same committed inputs (bodies compared, framing aside), and the independent decoder's
//! field values must equal ours for every feature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seqmon_anomaly_detector::{AnomalyConfig, AnomalyDetector};
use seqmon_feature_extractor::FeatureExtractor;
use seqmon_integration_tests::*;
use seqmon_model::codec::{to_confluent, writer_schema, CONFLUENT_MAGIC, MAGIC};
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, store, DeadLetter, DeadLetterReason, Feature, SanitizedTelemetry};
use seqmon_runtime::config::Secret;
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::schema_registry::{self, RegistryClient};
use seqmon_runtime::Driver;
use seqmon_simulator::{simulate, Expect, FleetConfig};

const PARTITIONS: u32 = 2;
const USER: &str = "it-registry-user";
const PASSWORD: &str = "it-registry-secret";

/// The stub registry process (see the header: a stub of a third-party API).
struct StubRegistry {
    child: Child,
    url: String,
}

impl StubRegistry {
    fn start(python: &str) -> StubRegistry {
        let script = root().join("tools/schema-registry/stub_registry.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", "0", "--base-path", "/apis/ccompat/v7"])
            .args(["--basic-auth", &format!("{USER}:{PASSWORD}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("stub registry did not start: {line:?}"));
        StubRegistry {
            child,
            url: format!("http://127.0.0.1:{port}/apis/ccompat/v7"),
        }
    }
}

impl Drop for StubRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn registry_args(url: &str) -> Vec<String> {
    [
        "--schema-registry-url",
        url,
        "--schema-registry-username",
        USER,
        "--schema-registry-password",
        PASSWORD,
    ]
    .map(String::from)
    .to_vec()
}

/// `seqmon-admin schemas publish`: (subject, registry version, id, schema, status) per line.
fn publish(url: &str, prefix: &str) -> Vec<Vec<String>> {
    let out = Command::new(bin("seqmon-admin"))
        .args([
            "schemas",
            "publish",
            "--registry-url",
            url,
            "--topic-prefix",
            prefix,
        ])
        .args(["--username", USER, "--password", PASSWORD])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// (topic, key, record type, version, Avro body): a record with its framing taken off.
type Unframed = (String, String, &'static str, u32, Vec<u8>);

fn unframe(outputs: Vec<Output>) -> Vec<Unframed> {
    let mut v: Vec<Unframed> = outputs
        .into_iter()
        .map(|(topic, key, value)| {
            let (writer, body) =
                writer_schema(&value).unwrap_or_else(|e| panic!("{topic} record of {key}: {e}"));
            (topic, key, writer.name, writer.version, body.to_vec())
        })
        .collect();
    v.sort();
    v
}

/// Waits until every service has no consumer lag and its record counters have not moved for 3 s
/// (the group's committed offsets would count the transaction markers on a stage's output).
fn wait_quiet(services: &[&Service]) {
    let mut stable = 0;
    let mut last = Vec::new();
    let quiet = wait_until(Duration::from_secs(180), || {
        let scrapes: Vec<BTreeMap<String, f64>> = services.iter().map(|s| s.metrics()).collect();
        let caught_up = scrapes.iter().all(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("seqmon_consumer_lag_records"))
                .all(|(_, v)| *v == 0.0)
        });
        let now: Vec<Vec<(String, f64)>> = scrapes
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .filter(|(k, _)| k.starts_with("seqmon_") && k.contains("_records_total"))
                    .collect()
            })
            .collect();
        stable = if caught_up && now == last {
            stable + 1
        } else {
            0
        };
        last = now;
        stable >= 30
    });
    assert!(quiet, "stages did not catch up: {last:?}");
}

#[test]
fn confluent_framing_is_written_read_mixed_and_agrees_with_an_independent_decoder() {
    let python = std::env::var("INTEROP_PYTHON")
        .expect("INTEROP_PYTHON is not set: run with `make test`, which installs the interop venv");
    let t0 = Instant::now();
    let registry = StubRegistry::start(&python);
    let prefix = unique_prefix("sr");
    create_topics(&prefix, PARTITIONS);

    // Publish: every version of every offered topic, oldest first; again: nothing new.
    let first = publish(&registry.url, &prefix);
    let offered_versions: usize = TopicRole::ALL
        .into_iter()
        .filter(|r| schema_registry::offered(*r))
        .map(|r| {
            seqmon_model::store()
                .entries()
                .iter()
                .filter(|e| e.name == r.spec().schema)
                .count()
        })
        .sum();
    assert_eq!(first.len(), offered_versions, "{first:?}");
    assert!(first.iter().all(|l| l[5] == "registered"), "{first:?}");
    assert!(first
        .iter()
        .any(|l| l[0] == format!("{prefix}features-value") && l[3] == "feature"));
    assert!(!first.iter().any(|l| l[0].contains("telemetry.raw")
        || l[0].contains("telemetry.validated")
        || l[0].contains("changelog")));
    let again = publish(&registry.url, &prefix);
    assert!(again.iter().all(|l| l[5] == "exists"), "{again:?}");
    let ids = |lines: &[Vec<String>]| -> Vec<(String, String)> {
        lines.iter().map(|l| (l[0].clone(), l[2].clone())).collect()
    };
    assert_eq!(ids(&first), ids(&again), "ids are stable");

    // This process reads the Confluent framing too (for the reference runs below).
    let password = Secret::new(PASSWORD.into());
    let client = RegistryClient::new(
        &registry.url,
        Some((USER, &password)),
        Duration::from_secs(10),
    )
    .unwrap();
    let loaded = client.run(schema_registry::load(&client, &prefix)).unwrap();
    assert_eq!(loaded.ids.len(), offered_versions);
    seqmon_model::schema_store::install_registry_ids(loaded.ids.clone()).unwrap();
    let sanitized_ids = schema_registry::writer_ids(&loaded, TopicRole::Sanitized).unwrap();

    // Sanitized telemetry: a small simulated fleet through the validator and privacy enforcer.
    let sim = simulate(&FleetConfig {
        instruments: 4,
        duration_hours: 2.0,
        sample_interval_s: 60,
        seed: 15,
        bad_record_share: 0.0,
        sensor_glitches: false,
        ..FleetConfig::default()
    });
    let mut chain = Chain::new(vec![
        Driver::new(Box::new(seqmon_validator::Validator::default())),
        Driver::new(Box::new(privacy_enforcer())),
    ])
    .unwrap();
    let mut sanitized: Vec<(String, Vec<u8>, Option<i64>)> = Vec::new();
    for r in sim.records.iter().filter(|r| r.expect == Expect::Valid) {
        chain
            .push(&r.key, &r.bytes, &mut |_, e| {
                if e.role == TopicRole::Sanitized {
                    sanitized.push((e.key.clone(), e.value.clone(), Some(r.sent_time_ms)));
                }
            })
            .unwrap();
    }
    assert!(
        sanitized.len() > 500,
        "{} sanitized records",
        sanitized.len()
    );
    // Every other record written by confluent-kafka's AvroSerializer (Confluent's own writer,
    // which looks the id up in the registry), the rest passed through as they are, by one
    // producer so the topic keeps their order; and one record with an id the registry never
    // gave: a dead letter UNKNOWN_SCHEMA, not a crash.
    let mut unknown = vec![CONFLUENT_MAGIC, 0x7f, 0xff, 0xff, 0xff];
    unknown.extend_from_slice(&[0u8; 8]);
    let unknown_at = 10;
    let mut lines = String::new();
    for (i, (key, value, ts)) in sanitized.iter().enumerate() {
        if i == unknown_at {
            let line =
                serde_json::json!({"key": key, "timestamp_ms": ts, "raw_hex": hex(&unknown)});
            lines.push_str(&format!("{line}\n"));
        }
        let line = if i % 2 == 1 {
            let record: SanitizedTelemetry = decode(value).unwrap();
            serde_json::json!({"key": key, "timestamp_ms": ts, "record": record})
        } else {
            serde_json::json!({"key": key, "timestamp_ms": ts, "raw_hex": hex(value)})
        };
        lines.push_str(&format!("{line}\n"));
    }
    let sanitized_topic = TopicRole::Sanitized.topic(&prefix);
    // Through a file, not a pipe: the writer prints while it reads, and a full stdout pipe
    // nobody reads yet would stall both.
    let records_file = std::env::temp_dir().join(format!("{}records.jsonl", prefix));
    std::fs::write(&records_file, &lines).unwrap();
    let written = Command::new(&python)
        .arg(root().join("tools/schema-registry/confluent_write.py"))
        .args([
            "--bootstrap",
            &bootstrap(),
            "--topic",
            &sanitized_topic,
            "--subject",
        ])
        .arg(schema_registry::subject(&prefix, TopicRole::Sanitized))
        .args([
            "--registry-url",
            &registry.url,
            "--user",
            USER,
            "--password",
            PASSWORD,
        ])
        .stdin(std::fs::File::open(&records_file).unwrap())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&records_file);
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    // Confluent's serializer wrote, byte for byte, what our writer writes in that framing, but
    // for the id: it writes with the newest version, ours with the version before for the
    // models that version has (so readers not yet upgraded read them); the bodies are the same.
    let newest_id = sanitized_ids[&store().latest("sanitized_telemetry").version];
    let written: Vec<String> = String::from_utf8(written.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(written.len(), sanitized.len() + 1);
    let mut by_confluent = 0;
    for (i, (_, value, _)) in sanitized.iter().enumerate() {
        let produced = &written[if i >= unknown_at { i + 1 } else { i }];
        if i % 2 == 1 {
            let ours = to_confluent(value, |e| sanitized_ids.get(&e.version).copied()).unwrap();
            let mut expected = vec![CONFLUENT_MAGIC];
            expected.extend(newest_id.to_be_bytes());
            expected.extend(&ours[5..]);
            assert_eq!(produced, &hex(&expected), "record {i}");
            by_confluent += 1;
        }
    }

    // The feature extractor writes `features` in the Confluent framing; the anomaly detector
    // reads them. Both read with the registry.
    let mut fe_args = registry_args(&registry.url);
    fe_args.extend(["--confluent-framing-topics".into(), "features".into()]);
    let fe_args: Vec<&str> = fe_args.iter().map(String::as_str).collect();
    let ad_args = registry_args(&registry.url);
    let ad_args: Vec<&str> = ad_args.iter().map(String::as_str).collect();
    let fe = Service::start("feature-extractor", &prefix, &fe_args);
    let ad = Service::start("anomaly-detector", &prefix, &ad_args);
    wait_quiet(&[&fe, &ad]);
    assert!(fe.log_text().contains("writing the Confluent framing"));

    // The input really held both framings.
    let input = read_committed(&sanitized_topic);
    let confluent_in = input
        .iter()
        .filter(|r| r.value[0] == CONFLUENT_MAGIC)
        .count();
    let single_in = input.iter().filter(|r| r.value[..2] == MAGIC).count();
    assert_eq!(confluent_in + single_in, input.len());
    // The record with the id the registry never gave is on the input (a dead letter missing
    // below then says the stage lost it, not the writer).
    assert_eq!(
        input.iter().filter(|r| r.value == unknown).count(),
        1,
        "the record with an unknown id on {sanitized_topic}"
    );
    assert!(
        confluent_in > 250 && single_in > 250,
        "{confluent_in} / {single_in}"
    );

    // Every feature is in the Confluent framing, with an id of the features subject.
    let features = read_committed(&TopicRole::Features.topic(&prefix));
    let feature_ids: Vec<u32> = loaded.subjects[&TopicRole::Features]
        .values()
        .copied()
        .collect();
    assert!(features.len() > 50, "{} features", features.len());
    for f in &features {
        assert_eq!(f.value[0], CONFLUENT_MAGIC);
        let id = u32::from_be_bytes(f.value[1..5].try_into().unwrap());
        assert!(feature_ids.contains(&id), "id {id}");
    }

    // Outputs equal the stages' in process over the same committed inputs.
    let fe_reference = reference_outputs(
        Box::new(FeatureExtractor::default()),
        &sanitized_topic,
        &input,
    );
    // The detector sends its watermarks to every partition of cohort.signals: it must know how
    // many there are, as the stage does from the broker.
    let mut detector: Box<dyn seqmon_runtime::Processor> =
        Box::new(AnomalyDetector::new(AnomalyConfig::default()));
    detector.on_input_partitions(PARTITIONS as usize);
    let ad_reference = reference_outputs(detector, &TopicRole::Features.topic(&prefix), &features);
    let mut expected = fe_reference;
    expected.extend(ad_reference);
    let expected = unframe(expected);
    let got = unframe(committed_outputs(
        &prefix,
        &[
            TopicRole::Features.spec().name,
            TopicRole::Anomalies.spec().name,
            TopicRole::CohortSignals.spec().name,
            TopicRole::DeadLetters.spec().name,
        ],
    ));
    let count = |v: &[Unframed], topic: &str| v.iter().filter(|r| r.0 == topic).count();
    let per_topic: BTreeMap<&str, usize> = ["features", "anomalies", "cohort.signals"]
        .into_iter()
        .map(|t| (t, count(&got, t)))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "got {per_topic:?}, expected features {}, anomalies {}, cohort.signals {}",
        count(&expected, "features"),
        count(&expected, "anomalies"),
        count(&expected, "cohort.signals")
    );
    assert!(got == expected, "outputs differ from the stages in process");
    assert!(per_topic["cohort.signals"] > 0, "{per_topic:?}");
    // The one unknown id is the only dead letter.
    let dead: Vec<DeadLetter> = read_committed(&TopicRole::DeadLetters.topic(&prefix))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect();
    assert_eq!(
        dead.len(),
        1,
        "dead letters {dead:?}; outputs {per_topic:?}, of which dead letters {}",
        count(&got, TopicRole::DeadLetters.spec().name)
    );
    assert_eq!(dead[0].reason, DeadLetterReason::UNKNOWN_SCHEMA);
    assert_eq!(dead[0].stage, "feature-extractor");

    // The independent decoder agrees, field by field.
    let out = Command::new(&python)
        .arg(root().join("tools/schema-registry/confluent_read.py"))
        .args(["--bootstrap", &bootstrap(), "--topic"])
        .arg(TopicRole::Features.topic(&prefix))
        .args(["--registry-url", &registry.url, "--user", USER])
        .args(["--password", PASSWORD, "--count"])
        .arg(features.len().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<(i32, i64), serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let at = (
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
            );
            (at, v["record"].clone())
        })
        .collect();
    assert_eq!(theirs.len(), features.len());
    let mut fields = 0;
    for f in &features {
        let ours = serde_json::to_value(decode::<Feature>(&f.value).unwrap()).unwrap();
        let theirs = &theirs[&(f.partition, f.offset)];
        assert_eq!(&ours, theirs, "feature {}/{}", f.partition, f.offset);
        fields += ours.as_object().unwrap().len();
    }
    eprintln!(
        "schema registry interop: {} input records ({confluent_in} Confluent-framed, \
         {by_confluent} of them by confluent-kafka's AvroSerializer byte for byte as ours; \
         {single_in} single-object), outputs {per_topic:?} equal to the in-process run, \
         {} features ({fields} field values) equal to fastavro's and confluent-kafka's decode, \
         in {:.1} s",
        input.len(),
        features.len(),
        t0.elapsed().as_secs_f64()
    );
    drop((fe, ad));
}

#[test]
fn a_stage_refuses_the_confluent_framing_it_cannot_write() {
    let python = std::env::var("INTEROP_PYTHON")
        .expect("INTEROP_PYTHON is not set: run with `make test`, which installs the interop venv");
    let registry = StubRegistry::start(&python);
    let prefix = unique_prefix("sr-refuse");
    let run = |extra: &[&str]| {
        let args = seqmon_testkit::stage_args("feature-extractor", &bootstrap(), &prefix, 0);
        let out = Command::new(bin("feature-extractor"))
            .args(&args)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A sealed topic: refused before any I/O.
    let (code, err) = run(&[
        "--schema-registry-url",
        &registry.url,
        "--confluent-framing-topics",
        "features,validated",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--confluent-framing-topics") && err.contains("sealed"),
        "{err}"
    );
    // No registry.
    let (code, err) = run(&["--confluent-framing-topics", "features"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--schema-registry-url"), "{err}");
    // Wrong credentials: the registry refuses the start-up load, named.
    let (code, err) = run(&[
        "--schema-registry-url",
        &registry.url,
        "--schema-registry-username",
        USER,
        "--schema-registry-password",
        "not-the-pw-7f3a",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--schema-registry-url") && err.contains("401"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pw-7f3a"),
        "the password is never printed: {err}"
    );
    // Nothing published under this prefix: the versions are named as missing.
    let mut args = registry_args(&registry.url);
    args.extend(["--confluent-framing-topics".into(), "features".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = run(&args);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--confluent-framing-topics") && err.contains("feature v1"),
        "{err}"
    );
}
