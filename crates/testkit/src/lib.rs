//! Helpers shared by the real-broker integration tests (`tests/`) and the benchmarks (`bench/`):
//! where the workspace binaries are, per-run topics, free ports, a stage started as an OS
//! process, its `/metrics` scraped, and records produced. Test code: it panics on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

/// Path of a workspace binary: beside the running executable (a benchmark binary) or one folder
/// up (a test binary lives in `target/<profile>/deps`). `CARGO_TARGET_DIR` is honoured because
/// both are found from the running executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable folder");
    let candidates = [dir.join(name), dir.join("..").join(name)];
    for c in &candidates {
        if c.exists() {
            return c.clone();
        }
    }
    panic!(
        "{name} is missing beside {}: build with `cargo build --workspace --bins` (make test does)",
        dir.display()
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Creates every catalogue topic under `prefix` with `seqmon-admin create-topics`, with
/// `telemetry.raw` stamped by the producer: tests and benchmarks replay simulated histories,
/// whose records must keep the times they were sent at.
pub fn create_topics(bootstrap: &str, prefix: &str, partitions: u32) {
    create_topics_with(bootstrap, prefix, partitions, "producer");
}

/// [`create_topics`] with `--raw-timestamps raw_timestamps` (`broker` as a live fleet's).
pub fn create_topics_with(bootstrap: &str, prefix: &str, partitions: u32, raw_timestamps: &str) {
    let status = Command::new(workspace_bin("seqmon-admin"))
        .args([
            "create-topics",
            "--bootstrap-servers",
            bootstrap,
            "--topic-prefix",
            prefix,
            "--partitions",
            &partitions.to_string(),
            "--raw-timestamps",
            raw_timestamps,
        ])
        .stderr(Stdio::null())
        .status()
        .expect("seqmon-admin runs");
    assert!(status.success(), "create-topics failed");
}

/// The pseudonym key the privacy enforcer gets in tests and benchmarks (public, test only).
pub const TEST_PSEUDONYM_KEY_HEX: &str =
    "7465737420706b6579206f6e6c793a206e6f7420666f722070726f64756374696f6e";

/// The command line every stage service gets in tests and benchmarks: Kafka mode, per-run
/// topics, group and transactional id, and its metrics on `metrics_port` (and the test
/// pseudonym key for the privacy enforcer, which refuses to start without one).
pub fn stage_args(stage: &str, bootstrap: &str, prefix: &str, metrics_port: u16) -> Vec<String> {
    let mut args = vec![
        "kafka".into(),
        "--bootstrap-servers".into(),
        bootstrap.into(),
        "--topic-prefix".into(),
        prefix.into(),
        "--group-id".into(),
        format!("{prefix}{stage}"),
        "--transactional-id".into(),
        format!("{prefix}{stage}-0"),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    if stage == "privacy-enforcer" {
        args.extend(["--pseudonym-key".into(), TEST_PSEUDONYM_KEY_HEX.into()]);
    }
    args
}

/// Every sample of a service's `/metrics`, by series (`name{labels}`); `None` while it does not
/// answer.
pub fn scrape(port: u16) -> Option<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let body = body.split("\r\n\r\n").nth(1)?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((without_stage_label(k), v.parse().ok()?))
            })
            .collect(),
    )
}

/// A series name without its `stage` label (one scrape is one component, so it says nothing):
/// `seqmon_x_total{outcome="a",stage="s"}` → `seqmon_x_total{outcome="a"}`,
/// `seqmon_y{stage="s"}` → `seqmon_y`.
fn without_stage_label(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_string();
    };
    let kept: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty() && !l.starts_with("stage="))
        .collect();
    if kept.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", kept.join(","))
    }
}

/// GET `path` from a service's metrics port: (status code, body), `None` while it does not
/// answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Sum of every series of a metric family in a scrape (e.g. all dead-letter reasons).
pub fn metric_sum(m: &BTreeMap<String, f64>, family: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == family || k.starts_with(&format!("{family}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// One unlabelled counter or gauge of a service, `None` while it does not answer.
pub fn scrape_counter(port: u16, name: &str) -> Option<f64> {
    scrape(port)?.get(name).copied()
}

/// Produces (key, value, timestamp) records with an idempotent producer and waits for delivery.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>, Option<i64>)>,
) -> usize {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // As every seqmon producer: Kafka's Java partitioner, so co-partitioned inputs align.
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    let mut n = 0;
    for (key, value, ts) in records {
        let mut rec = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(value.as_slice());
        if let Some(ts) = ts {
            rec = rec.timestamp(ts);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    n
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}
