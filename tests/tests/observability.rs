//! What an operator's Kubernetes and Prometheus see of a stage, on a real broker: `/readyz`
//! refuses traffic until the stage has joined, restored and caught up, then admits it; the
//! consumer lag per partition, the event-to-commit latency and the build info are exported; the
//! whole exposition passes Prometheus' own linter (promlint, via tools/promcheck). And the
//! partitioning contract: a stage's output lands in the partition Kafka's Java producer would
//! choose for the same key (its `BuiltInPartitioner`, run from the broker's kafka-clients jar).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use seqmon_integration_tests::*;
use seqmon_model::partitioning::partition_for_key;
use seqmon_model::topics::TopicRole;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_testkit::{http_get, wait_until};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Raw telemetry of a small simulated fleet, keyed by instrument serial.
fn raw_records(instruments: usize) -> Vec<(String, Vec<u8>, Option<i64>)> {
    let start = (now_ms() - 2 * 3_600_000) / 60_000 * 60_000;
    let sim = simulate(&FleetConfig {
        instruments,
        duration_hours: 2.0,
        seed: 11,
        start_time_ms: start,
        ..Default::default()
    });
    let ts = now_ms();
    sim.records
        .into_iter()
        .map(|r| (r.key, r.bytes, Some(ts)))
        .collect()
}

/// tools/promcheck's binary ($PROMCHECK from make test, else built now).
fn promcheck() -> PathBuf {
    if let Ok(p) = std::env::var("PROMCHECK") {
        return p.into();
    }
    let out = Command::new(root().join("tools/promcheck/promcheck.sh"))
        .arg("path")
        .output()
        .expect("tools/promcheck/promcheck.sh runs");
    assert!(out.status.success(), "promcheck.sh path failed");
    let path = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(path.lines().last().expect("a path").trim())
}

/// Runs `program args` with `input` on stdin: (success, stdout + stderr).
fn run_with_stdin(program: &Path, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether a scrape shows lag 0 on each of `partitions` partitions of `topic`.
fn caught_up(m: &std::collections::BTreeMap<String, f64>, topic: &str, partitions: i32) -> bool {
    (0..partitions).all(|p| {
        m.get(&format!(
            "seqmon_consumer_lag_records{{partition=\"{p}\",topic=\"{topic}\"}}"
        )) == Some(&0.0)
    })
}

#[test]
fn readiness_follows_join_restore_and_lag_and_the_metrics_lint_clean() {
    let prefix = unique_prefix("observability");
    create_topics(&prefix, 3);
    let records = raw_records(6);
    let n = produce(&TopicRole::Raw.topic(&prefix), records) as f64;

    let validator = Service::start("validator", &prefix, &[]);
    let port = validator.metrics_port;
    // The port answers before the group is joined: not ready, but alive.
    let (first, why) = http_get(port, "/readyz").expect("/readyz answers");
    assert_eq!(first, 503, "ready before joining its group: {why}");
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    assert!(
        wait_until(Duration::from_secs(90), || {
            http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
                && validator.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "validator never became ready having read all {n} records; log:\n{}",
        validator.log_text()
    );
    // Lag is per owned partition; caught up, each is 0 (statistics come every 5 s).
    let raw = TopicRole::Raw.topic(&prefix);
    assert!(
        wait_until(Duration::from_secs(20), || {
            caught_up(&validator.metrics(), &raw, 3)
        }),
        "no zero lag for every partition: {:?}",
        validator
            .metrics()
            .iter()
            .filter(|(k, _)| k.contains("lag"))
            .collect::<Vec<_>>()
    );
    let m = validator.metrics();
    assert_eq!(m.get("seqmon_ready"), Some(&1.0));
    assert_eq!(m.get("seqmon_restoring"), Some(&0.0));
    assert_eq!(m.get("seqmon_assigned_partitions"), Some(&3.0));
    // Every consumed record's latency was observed once its transaction committed.
    assert_eq!(m.get("seqmon_event_to_commit_seconds_count"), Some(&n));
    assert!(m
        .keys()
        .any(|k| k.starts_with("seqmon_build_info{version=")));
    assert!(m.contains_key("process_resident_memory_bytes"));

    let (status, exposition) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.contains("stage=\"validator\""),
            "no stage label: {line}"
        );
    }
    let (clean, problems) = run_with_stdin(&promcheck(), &["metrics"], &exposition);
    assert!(clean, "promlint found problems:\n{problems}");

    // A transactional input (the validator's output, with commit markers between batches):
    // caught up, its reader's lag is 0 too, not the markers' count.
    let enforcer = Service::start("privacy-enforcer", &prefix, &[]);
    let validated = TopicRole::Validated.topic(&prefix);
    assert!(
        wait_until(Duration::from_secs(90), || {
            let m = enforcer.metrics();
            m.get("seqmon_ready") == Some(&1.0) && caught_up(&m, &validated, 3)
        }),
        "the privacy enforcer's lag on {validated} never reached 0: {:?}",
        enforcer
            .metrics()
            .iter()
            .filter(|(k, _)| k.contains("lag") || k.contains("ready"))
            .collect::<Vec<_>>()
    );
}

/// The partition Kafka's Java producer picks for each key, from its own code: kafka-clients as
/// `make test` fetched it for the broker (tools/kafka/broker.sh fetch).
fn java_partitions(keys: &[String], partitions: usize) -> Vec<usize> {
    let status = Command::new(root().join("tools/kafka/broker.sh"))
        .arg("fetch")
        .status()
        .expect("broker.sh runs");
    assert!(status.success(), "tools/kafka/broker.sh fetch failed");
    let cache = std::env::var("KAFKA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".cache/kafka"));
    // The broker's libs: kafka-clients and what it needs (slf4j).
    let libs = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|v| Some(v.ok()?.path().join("libs")))
        .find(|libs| {
            std::fs::read_dir(libs).is_ok_and(|mut files| {
                files.any(|f| {
                    f.ok()
                        .and_then(|f| f.file_name().into_string().ok())
                        .is_some_and(|n| n.starts_with("kafka-clients-") && n.ends_with(".jar"))
                })
            })
        })
        .expect("kafka-clients jar in the Kafka cache");
    let classpath = format!("{}/*", libs.display());
    let source = root().join("tests/java/JavaPartition.java");
    let (ok, out) = run_with_stdin(
        Path::new("java"),
        &[
            "-cp",
            &classpath,
            source.to_str().unwrap(),
            &partitions.to_string(),
        ],
        &keys.join("\n"),
    );
    assert!(ok, "JavaPartition failed: {out}");
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

#[test]
fn a_stage_partitions_its_output_as_kafkas_java_producer_does() {
    const PARTITIONS: usize = 12;
    let prefix = unique_prefix("java-partitioner");
    create_topics(&prefix, PARTITIONS as u32);
    let records = raw_records(40);
    let n = produce(&TopicRole::Raw.topic(&prefix), records) as f64;
    let validator = Service::start("validator", &prefix, &[]);
    assert!(
        wait_until(Duration::from_secs(90), || {
            validator.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "validator did not read all {n} records"
    );
    // The counters move as records are processed, before their transaction commits: wait
    // until every validated record counted is readable.
    let produced = |v: &Service| {
        v.metrics()
            .get("seqmon_output_records_total{output=\"validated\"}")
            .copied()
    };
    let mut validated = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            validated = read_committed(&TopicRole::Validated.topic(&prefix));
            produced(&validator) == Some(validated.len() as f64)
        }),
        "committed {} of {:?} validated records",
        validated.len(),
        produced(&validator)
    );
    assert!(!validated.is_empty());
    let mut keys: Vec<String> = validated.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert!(
        keys.len() >= 30,
        "too few instruments to tell: {}",
        keys.len()
    );

    let java = java_partitions(&keys, PARTITIONS);
    // Our own murmur2 (which the detector's watermark broadcast relies on) agrees too.
    for (key, java_partition) in keys.iter().zip(&java) {
        let ours = partition_for_key(key.as_bytes(), PARTITIONS as u32) as usize;
        assert_eq!(
            ours, *java_partition,
            "murmur2 of {key} differs from Java's"
        );
    }
    let expected: std::collections::BTreeMap<&str, i32> = keys
        .iter()
        .map(String::as_str)
        .zip(java.iter().map(|p| *p as i32))
        .collect();
    for r in &validated {
        assert_eq!(
            r.partition,
            expected[r.key.as_str()],
            "{} went to partition {}, Java's producer would pick {}",
            r.key,
            r.partition,
            expected[r.key.as_str()]
        );
    }
    // The keys spread: a partitioner that put everything in one partition would pass the
    // per-key check only if Java did the same.
    let used: std::collections::BTreeSet<i32> = validated.iter().map(|r| r.partition).collect();
    assert!(used.len() > PARTITIONS / 2, "keys landed in {used:?}");
}
