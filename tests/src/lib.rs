//! Helpers for the real-broker integration tests in `tests/tests/`: the broker address, the
//! service binaries as OS processes, per-test topics, a `read_committed` reader, and metrics
//! scraped from each service's `/metrics` endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod gateway;
pub mod receiver;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

static BOOTSTRAP_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Points every helper of this test binary at another cluster (librdkafka's mock cluster in the
/// fault tests). Put such a test in a test file of its own: the setting is process-wide.
pub fn use_bootstrap(servers: String) {
    BOOTSTRAP_OVERRIDE
        .set(servers)
        .expect("set once per test binary");
}

/// The broker the tests use. `make test` starts one and sets this; run the tests through it.
pub fn bootstrap() -> String {
    if let Some(s) = BOOTSTRAP_OVERRIDE.get() {
        return s.clone();
    }
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS is not set: run the integration tests with `make test`, which starts a broker")
}

/// Path of a workspace binary built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    seqmon_testkit::workspace_bin(name)
}

/// The privacy enforcer as the services run it in tests: built-in templates and the test
/// pseudonym key the service gets from `seqmon_testkit::stage_args`, so in-process reference
/// runs give the same pseudonyms.
pub fn privacy_enforcer() -> seqmon_privacy_enforcer::PrivacyEnforcer {
    seqmon_privacy_enforcer::PrivacyEnforcer::new(
        seqmon_privacy_enforcer::PrivacyConfig::default(),
        seqmon_privacy::pseudonym::PseudonymKey::from_hex(seqmon_testkit::TEST_PSEUDONYM_KEY_HEX)
            .unwrap(),
        seqmon_privacy::template::TemplateCatalogue::builtin(),
    )
}

/// A topic prefix no other test or run uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "it-{test}-{}-{}.",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

/// Creates every catalogue topic under `prefix` with the admin command, twice: the second run
/// must change nothing and succeed (idempotent).
pub fn create_topics(prefix: &str, partitions: u32) {
    seqmon_testkit::create_topics(&bootstrap(), prefix, partitions);
    seqmon_testkit::create_topics(&bootstrap(), prefix, partitions);
}

pub use seqmon_testkit::{free_port, metric_sum, now_ms, scrape, wait_until};

/// A stage service running as an OS process.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub metrics_port: u16,
    args: Vec<String>,
    log: PathBuf,
}

impl Service {
    /// Starts `name kafka ...` with per-test topics, group and transactional id.
    pub fn start(name: &str, prefix: &str, extra: &[&str]) -> Service {
        let metrics_port = free_port();
        let mut args = seqmon_testkit::stage_args(name, &bootstrap(), prefix, metrics_port);
        if extra.contains(&"--transactional-id") {
            // The caller names the instance: drop the default id.
            let at = args.iter().position(|a| a == "--transactional-id").unwrap();
            args.drain(at..at + 2);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Service::launch(name, prefix, args, metrics_port)
    }

    /// Starts the binary `name` with exactly `args` (a service without the stage command
    /// line, such as the ingest gateway), which must serve /metrics on `metrics_port`.
    pub fn launch(name: &str, prefix: &str, args: Vec<String>, metrics_port: u16) -> Service {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/it-logs")
            .join(prefix.trim_end_matches('.'));
        std::fs::create_dir_all(&dir).unwrap();
        let instance = args
            .iter()
            .position(|a| a == "--transactional-id")
            .map(|i| args[i + 1].rsplit('-').next().unwrap_or("0").to_string())
            .unwrap_or_default();
        let log = dir.join(format!("{name}-{instance}.log"));
        let mut s = Service {
            name: name.into(),
            child: spawn(name, &args, &log),
            metrics_port,
            args,
            log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if scrape(self.metrics_port).is_some() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited at start ({status}); log: {}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not serve /metrics within 30 s", self.name);
    }

    /// kill -9, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the same service again with the same settings (same group and transactional id).
    pub fn restart(&mut self) {
        self.child = spawn(&self.name, &self.args, &self.log);
        self.wait_ready();
    }

    /// SIGTERM, and the exit status after a graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                panic!("{} did not stop within 60 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The service's counters from `/metrics` (name with labels → value).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        scrape(self.metrics_port).unwrap_or_default()
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, args: &[String], log: &PathBuf) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin(name))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("SEQMON_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// What `read` gives once it gives something, or its empty answer after `timeout`: for the
/// committed records a stage's counters already report (they move before the commit).
pub fn read_until_some<T>(timeout: Duration, mut read: impl FnMut() -> Vec<T>) -> Vec<T> {
    let mut got = Vec::new();
    wait_until(timeout, || {
        got = read();
        !got.is_empty()
    });
    got
}

/// Produces (key, value, timestamp) records and waits for delivery.
pub fn produce(
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>, Option<i64>)>,
) -> usize {
    seqmon_testkit::produce(&bootstrap(), topic, records)
}

/// A committed record as read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Committed {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    /// Record headers (the envelope header of sealed records).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads every committed record of `topic` (read_committed), from the beginning to the end.
pub fn read_committed(topic: &str) -> Vec<Committed> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    read_committed_with(config, topic)
}

/// [`read_committed`] with a client configuration of the caller's (another cluster, another
/// principal).
pub fn read_committed_with(mut config: ClientConfig, topic: &str) -> Vec<Committed> {
    let consumer: BaseConsumer = config
        .set("group.id", format!("reader-{}", unique_prefix("r")))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < partitions.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(Committed {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().unwrap_or_default().to_vec(),
                timestamp_ms: m.timestamp().to_millis(),
                headers: m
                    .headers()
                    .map(|hs| {
                        use rdkafka::message::Headers;
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    assert_eq!(
        eof.len(),
        partitions.len(),
        "did not reach the end of {topic} within 60 s"
    );
    out
}

/// Input records not yet committed by consumer group `group` on `topic` (0 when caught up);
/// `None` when the broker did not answer in time (e.g. while a killed producer's transaction is
/// still pending). Reads uncommitted offsets so it never waits for them to become stable.
pub fn group_lag(group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .ok()?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .ok()?;
    let mut lag = 0;
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
            .ok()?;
        let done = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Some(lag)
}

/// An output record as (topic name without prefix, key, value).
pub type Output = (String, String, Vec<u8>);

/// The uninterrupted run to compare with: `processor` in process over the committed records of
/// `topic`, with their real partitions, offsets and timestamps. Sorted.
pub fn reference_outputs(
    processor: Box<dyn seqmon_runtime::Processor>,
    topic: &str,
    input: &[Committed],
) -> Vec<Output> {
    let mut driver = seqmon_runtime::Driver::new(processor);
    seqmon_runtime::kafka::default_record_limits(&mut driver);
    let mut expected = Vec::new();
    for r in input {
        let env = seqmon_runtime::Envelope {
            key: Some(r.key.as_bytes()),
            value: &r.value,
            topic,
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            arrival_time_ms: None,
        };
        let mut out = Vec::new();
        driver.handle(&env, &mut out, |_| {}).unwrap();
        expected.extend(
            out.into_iter()
                .map(|e| (e.role.spec().name.to_string(), e.key, e.value)),
        );
    }
    expected.sort();
    expected
}

/// Every committed record of the topics `names` (without prefix) under `prefix`. Sorted.
pub fn committed_outputs(prefix: &str, names: &[&str]) -> Vec<Output> {
    let mut got = Vec::new();
    for name in names {
        got.extend(
            read_committed(&format!("{prefix}{name}"))
                .into_iter()
                .map(|r| (name.to_string(), r.key, r.value)),
        );
    }
    got.sort();
    got
}

/// Runs a future to completion on this thread (the admin client's futures need no runtime).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
