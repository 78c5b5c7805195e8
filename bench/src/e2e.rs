//! End to end: the five services as separate processes and the fleet simulator replaying N
//! instruments live at 1 Hz (`fleet-simulator --live`), on one broker. Latency is read off each
//! committed result: every stage stamps its outputs with the Kafka timestamp of the input that
//! caused them, and the simulator stamps each record with its event time, so a read_committed
//! probe computes `time the result became readable − the instrument's event time`.
//!
//! Alongside: CPU (share of one core) and resident memory of each service, the simulator and the
//! broker, sampled every second from /proc; and the bytes of state each stage holds at the end,
//! read from its changelog (latest record per key), per 1,000 instruments.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seqmon_model::topics::TopicRole;
use serde::Serialize;

/// The six services, upstream first.
pub const STAGES: [&str; 6] = [
    "validator",
    "privacy-enforcer",
    "feature-extractor",
    "anomaly-detector",
    "cohort-analyzer",
    "notifier",
];

/// What processes the fleet's records go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Chain {
    /// The six services.
    Services,
    /// Five hops of `seqmon-passthrough` (raw → validated → sanitized → features → anomalies →
    /// alerts), forwarding every record unchanged: the limit of the broker and the runtime.
    Passthrough,
}

impl Chain {
    /// (process label, executable, its stage name for group and transactional ids, extra args).
    fn processes(self) -> Vec<(String, &'static str, String, Vec<String>)> {
        match self {
            Chain::Services => STAGES
                .iter()
                .map(|s| (s.to_string(), *s, s.to_string(), Vec::new()))
                .collect(),
            Chain::Passthrough => (1..=5)
                .map(|hop| {
                    (
                        format!("passthrough-{hop}"),
                        "seqmon-passthrough",
                        format!("passthrough-{hop}"),
                        vec!["--hop".to_string(), hop.to_string()],
                    )
                })
                .collect(),
        }
    }
}

/// Settings of one end-to-end run.
#[derive(Debug, Clone)]
pub struct E2eSettings {
    pub bootstrap_servers: String,
    pub partitions: i32,
    pub batch: usize,
    pub batch_wait_ms: u64,
    pub batch_linger_ms: u64,
    /// Seconds of live replay; results whose event is in the first `warmup_s` are not counted.
    pub duration_s: u64,
    pub warmup_s: u64,
    /// Feature window and allowed lateness for the run (short, so windows close during it).
    pub window_ms: i64,
    pub lateness_ms: i64,
    pub window_alignment: String,
    /// Also probe the validated and sanitized topics (per-hop latency, at the cost of load).
    pub probe_hops: bool,
    /// The validator's de-duplication horizon for the run, when not its default (1 h).
    pub dedup_horizon_ms: Option<i64>,
    pub broker_pid: Option<u32>,
    /// Services, or the passthrough chain.
    pub chain: Chain,
    /// Instances of each stage (same group, own transactional ids).
    pub instances: usize,
}

/// Latency percentiles of one result type, ms.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub results: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Resources of one process over the measured part of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub process: String,
    /// Mean CPU over the measured part, as a share of one core (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident memory after the warm-up and at the end, MiB.
    pub rss_mib_after_warmup: f64,
    pub rss_mib_end: f64,
    pub rss_mib_max: f64,
    /// Least-squares slope of resident memory over the measured part, MiB per minute.
    pub rss_mib_per_min: f64,
    /// Resident memory every ~10 s over the whole run: (seconds since start, MiB).
    pub rss_series: Vec<(f64, f64)>,
}

/// One end-to-end run.
#[derive(Debug, Clone, Serialize)]
pub struct E2eRun {
    pub chain: Chain,
    pub instances: usize,
    pub instruments: usize,
    pub raw_records: f64,
    pub raw_records_per_s: f64,
    /// Per hop: to the committed validated and sanitized records.
    pub validated: Option<Latency>,
    pub sanitized: Option<Latency>,
    pub features: Option<Latency>,
    pub anomalies: Option<Latency>,
    pub alerts: Option<Latency>,
    pub usage: Vec<Usage>,
    /// Changelog bytes (key + value of the latest record per key) per 1,000 instruments.
    pub state_bytes_per_1000: BTreeMap<String, f64>,
    /// Per stage over the whole run: transactions, mean records per transaction and mean time
    /// from beginning a transaction to its commit, ms.
    pub transactions: BTreeMap<String, (f64, f64, f64)>,
    /// Whether the services kept up: every stage's input caught up within the drain time.
    pub drained: bool,
}

fn percentile(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64
}

fn latency(mut v: Vec<i64>) -> Option<Latency> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(Latency {
        results: v.len(),
        p50_ms: percentile(&v, 0.5),
        p99_ms: percentile(&v, 0.99),
        p999_ms: percentile(&v, 0.999),
        max_ms: *v.last().unwrap_or(&0) as f64,
    })
}

use seqmon_testkit::{free_port, now_ms, workspace_bin as sibling};

fn client(s: &E2eSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.bootstrap_servers);
    c
}

/// Creates the catalogue's topics under `prefix` with `seqmon-admin`.
pub fn create_topics(bootstrap_servers: &str, prefix: &str, partitions: i32) {
    seqmon_testkit::create_topics(bootstrap_servers, prefix, partitions.max(1) as u32);
}

/// CPU ticks (user + system) and resident KiB of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss_kib))
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Default)]
struct Samples {
    /// (seconds since start, ticks, rss KiB) per process.
    by_process: BTreeMap<String, Vec<(f64, u64, u64)>>,
}

fn usage(samples: &Samples, from_s: f64, ticks_per_s: f64) -> Vec<Usage> {
    samples
        .by_process
        .iter()
        .filter_map(|(name, v)| {
            let measured: Vec<_> = v.iter().filter(|(t, _, _)| *t >= from_s).collect();
            let (first, last) = (measured.first()?, measured.last()?);
            let secs = last.0 - first.0;
            Some(Usage {
                process: name.clone(),
                cpu_cores: if secs > 0.0 {
                    (last.1 - first.1) as f64 / ticks_per_s / secs
                } else {
                    f64::NAN
                },
                rss_mib_after_warmup: first.2 as f64 / 1024.0,
                rss_mib_end: last.2 as f64 / 1024.0,
                rss_mib_max: measured.iter().map(|s| s.2).max().unwrap_or(0) as f64 / 1024.0,
                rss_mib_per_min: slope(
                    &measured
                        .iter()
                        .map(|(t, _, rss)| (*t / 60.0, *rss as f64 / 1024.0))
                        .collect::<Vec<_>>(),
                ),
                rss_series: v
                    .iter()
                    .step_by(10)
                    .map(|(t, _, rss)| {
                        (
                            (t * 10.0).round() / 10.0,
                            (*rss as f64 / 102.4).round() / 10.0,
                        )
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den > 0.0 {
        num / den
    } else {
        f64::NAN
    }
}

/// Starts instance `instance` of one process of the chain.
fn start_service(
    s: &E2eSettings,
    (exe, stage, extra): (&str, &str, &[String]),
    instance: usize,
    prefix: &str,
) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(sibling(exe));
    let mut args = seqmon_testkit::stage_args(stage, &s.bootstrap_servers, prefix, port);
    // Each instance its own transactional id (the group is shared).
    if let Some(i) = args.iter().position(|a| a == "--transactional-id") {
        args[i + 1] = format!("{prefix}{stage}-{instance}");
    }
    cmd.args(args);
    cmd.args(extra);
    cmd.args([
        "--batch-max-records",
        &s.batch.to_string(),
        "--batch-max-wait-ms",
        &s.batch_wait_ms.to_string(),
        "--batch-linger-ms",
        &s.batch_linger_ms.to_string(),
    ]);
    if stage == "validator" {
        if let Some(h) = s.dedup_horizon_ms {
            cmd.env("VALIDATOR_DEDUP_HORIZON_MS", h.to_string());
        }
    }
    if stage == "feature-extractor" {
        cmd.env("FEATURES_WINDOW_MS", s.window_ms.to_string())
            .env("FEATURES_ALLOWED_LATENESS_MS", s.lateness_ms.to_string())
            .env("FEATURES_WINDOW_ALIGNMENT", &s.window_alignment);
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("service starts");
    (child, port)
}

/// What a changelog holds, read from its start to its end (read_committed).
pub struct ChangelogSizes {
    /// Records (tombstones included) and their bytes (key + value): what was written.
    pub records: u64,
    pub bytes: u64,
    /// Bytes (key + value) of the latest record of every live key: what compaction keeps.
    pub kept: u64,
}

/// Reads a changelog from its start to its end (read_committed): what was written, and what
/// compaction keeps.
pub fn changelog_sizes(bootstrap_servers: &str, partitions: i32, topic: &str) -> ChangelogSizes {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", "seqmon-bench-state")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut latest: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut eof = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while eof.len() < partitions as usize && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default().to_vec();
                let size = key.len() + m.payload().map_or(0, <[u8]>::len);
                records += 1;
                bytes += size as u64;
                match m.payload() {
                    Some(_) => latest.insert(key, size),
                    None => latest.remove(&key),
                };
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    ChangelogSizes {
        records,
        bytes,
        kept: latest.values().sum::<usize>() as u64,
    }
}

fn scrape(port: u16, name: &str) -> Option<f64> {
    seqmon_testkit::scrape_counter(port, name)
}

/// Runs one fleet size end to end.
pub fn run(s: &E2eSettings, instruments: usize) -> E2eRun {
    // Unique per run: a run must never meet the topics, offsets or state of an earlier one.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let prefix = format!(
        "bench-e2e-{}-{}-{instruments}.",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::SeqCst)
    );
    create_topics(&s.bootstrap_servers, &prefix, s.partitions);

    let processes = s.chain.processes();
    let first_stage = processes[0].0.clone();
    let mut services: Vec<(String, Child, u16)> = Vec::new();
    for (label, exe, stage, extra) in &processes {
        for instance in 0..s.instances.max(1) {
            let (c, p) = start_service(s, (exe, stage, extra), instance, &prefix);
            let name = if s.instances > 1 {
                format!("{label}-{instance}")
            } else {
                label.clone()
            };
            services.push((name, c, p));
        }
    }
    // Every service has joined its group and holds partitions before the fleet starts.
    let ready_by = Instant::now() + Duration::from_secs(90);
    for (_, _, port) in &services {
        while scrape(*port, "seqmon_assigned_partitions").unwrap_or(0.0) < 1.0
            && Instant::now() < ready_by
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Probe: read_committed on the result topics, latency per result.
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Arc::new(Mutex::new(i64::MAX));
    let probe = {
        let (s, prefix, stop, measure_from) = (
            s.clone(),
            prefix.clone(),
            stop.clone(),
            measure_from.clone(),
        );
        std::thread::spawn(move || {
            let c: BaseConsumer = client(&s)
                .set("group.id", format!("{prefix}probe"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "5")
                .create()
                .expect("probe consumer");
            let mut tpl = TopicPartitionList::new();
            // Per-hop probes read the full record stream twice more: extra load, so optional.
            let roles: &[TopicRole] = if s.chain == Chain::Passthrough {
                // Every record reaches every hop: the third hop's output stands for features.
                &[TopicRole::Features]
            } else if s.probe_hops {
                &[
                    TopicRole::Validated,
                    TopicRole::Sanitized,
                    TopicRole::Features,
                    TopicRole::Anomalies,
                    TopicRole::Alerts,
                ]
            } else {
                &[TopicRole::Features, TopicRole::Anomalies, TopicRole::Alerts]
            };
            for role in roles {
                for p in 0..s.partitions {
                    tpl.add_partition_offset(&role.topic(&prefix), p, Offset::Beginning)
                        .expect("partition");
                }
            }
            c.assign(&tpl).expect("assign");
            let names: HashMap<String, TopicRole> =
                roles.iter().map(|r| (r.topic(&prefix), *r)).collect();
            let mut lat: BTreeMap<TopicRole, Vec<i64>> = BTreeMap::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    let seen = now_ms();
                    let Some(ts) = m.timestamp().to_millis() else {
                        continue;
                    };
                    if ts >= *measure_from.lock().expect("lock") {
                        if let Some(role) = names.get(m.topic()) {
                            lat.entry(*role).or_default().push(seen - ts);
                        }
                    }
                }
            }
            lat
        })
    };

    let started = Instant::now();
    let mut sim = Command::new(sibling("fleet-simulator"))
        .args([
            "--to",
            "kafka",
            "--live",
            "--instruments",
            &instruments.to_string(),
            "--duration-hours",
            &format!("{}", s.duration_s as f64 / 3600.0),
            "--sample-interval-s",
            "1",
            "--bootstrap-servers",
            &s.bootstrap_servers,
            "--topic-prefix",
            &prefix,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("simulator starts");
    *measure_from.lock().expect("lock") = now_ms() + (s.warmup_s as i64 + 1) * 1000;

    let ticks_per_s = clock_ticks_per_s();
    let mut pids: Vec<(String, u32)> = services
        .iter()
        .map(|(name, c, _)| (name.clone(), c.id()))
        .collect();
    pids.push(("fleet-simulator".into(), sim.id()));
    if let Some(b) = s.broker_pid {
        pids.push(("kafka-broker".into(), b));
    }
    let mut samples = Samples::default();
    let sample = |samples: &mut Samples| {
        let t = started.elapsed().as_secs_f64();
        for (name, pid) in &pids {
            if let Some((ticks, rss)) = proc_sample(*pid) {
                samples
                    .by_process
                    .entry(name.clone())
                    .or_default()
                    .push((t, ticks, rss));
            }
        }
    };
    loop {
        sample(&mut samples);
        if let Ok(Some(_)) = sim.try_wait() {
            break;
        }
        if started.elapsed() > Duration::from_secs(s.duration_s + 120) {
            let _ = sim.kill();
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let sim_end_s = started.elapsed().as_secs_f64();
    // Drain: each stage's input count stops moving and the validator has seen every raw record.
    let raw_produced = count_records(s, &TopicRole::Raw.topic(&prefix));
    let drain_by = Instant::now() + Duration::from_secs(60);
    let mut drained = false;
    let mut seen = 0.0;
    while Instant::now() < drain_by {
        // Over every instance of the first stage.
        let now: Option<f64> = services
            .iter()
            .filter(|(name, _, _)| name.starts_with(first_stage.as_str()))
            .map(|(_, _, port)| scrape(*port, "seqmon_input_records_total"))
            .sum();
        seen = now.unwrap_or(seen);
        if seen >= raw_produced as f64 {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if !drained {
        eprintln!(
            "  not drained: the validator took {seen} of {raw_produced} raw records within 60 s of the fleet's end"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let lat = probe.join().expect("probe");

    let mut state = BTreeMap::new();
    for (stage, role) in [
        ("validator", TopicRole::ChangelogValidator),
        ("feature-extractor", TopicRole::ChangelogFeatureExtractor),
        ("anomaly-detector", TopicRole::ChangelogAnomalyDetector),
        ("cohort-analyzer", TopicRole::ChangelogCohortAnalyzer),
        ("notifier", TopicRole::ChangelogNotifier),
    ] {
        let bytes = changelog_sizes(&s.bootstrap_servers, s.partitions, &role.topic(&prefix)).kept;
        state.insert(
            stage.to_string(),
            bytes as f64 * 1000.0 / instruments as f64,
        );
    }
    let mut transactions = BTreeMap::new();
    for (stage, _, port) in &services {
        let m = |name: &str| scrape(*port, &format!("seqmon_{name}")).unwrap_or(f64::NAN);
        let count = m("batch_records_count");
        transactions.insert(
            stage.to_string(),
            (
                count,
                m("batch_records_sum") / count,
                m("transaction_duration_seconds_sum") * 1000.0 / count,
            ),
        );
    }
    for (_, child, _) in services.iter_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for (_, child, _) in services.iter_mut() {
        let _ = child.wait();
    }
    let measured_from_s = (s.warmup_s as f64).min(sim_end_s);
    let mut lat = lat;
    E2eRun {
        chain: s.chain,
        instances: s.instances.max(1),
        instruments,
        raw_records: raw_produced as f64,
        raw_records_per_s: raw_produced as f64 / s.duration_s.max(1) as f64,
        validated: latency(lat.remove(&TopicRole::Validated).unwrap_or_default()),
        sanitized: latency(lat.remove(&TopicRole::Sanitized).unwrap_or_default()),
        features: latency(lat.remove(&TopicRole::Features).unwrap_or_default()),
        anomalies: latency(lat.remove(&TopicRole::Anomalies).unwrap_or_default()),
        alerts: latency(lat.remove(&TopicRole::Alerts).unwrap_or_default()),
        usage: usage(&samples, measured_from_s, ticks_per_s),
        state_bytes_per_1000: state,
        transactions,
        drained,
    }
}

/// Records on a topic (sum of high − low watermarks over its partitions).
fn count_records(s: &E2eSettings, topic: &str) -> u64 {
    let c: BaseConsumer = client(s)
        .set("group.id", "seqmon-bench-count")
        .create()
        .expect("consumer");
    (0..s.partitions)
        .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).ok())
        .map(|(lo, hi)| (hi - lo).max(0) as u64)
        .sum()
}
