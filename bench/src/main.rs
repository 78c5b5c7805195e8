//! `seqmon-bench` (run by `make bench`): throughput of the codec, of each stage's processor, and
//! of each stage as an exactly-once Kafka service, every service figure as a ratio to a raw
//! rdkafka transactional consume→produce passthrough measured in the same run on the same broker,
//! records, partitions and batch size. Prints one table and writes the figures as JSON.
//!
//! Figures are medians of repeated rounds; the machine is shared and noisy, so compare ratios
//! rather than absolute rates between runs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

mod e2e;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seqmon_model::codec::{decode_value, decode_via_value, encode_with};
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, encode, store, Alert, Anomaly, DeadLetter, Feature, MaintenanceEntry, PrivacyAudit,
    SanitizedTelemetry, Telemetry,
};
use seqmon_runtime::{Driver, Emitted, Emitter, Envelope, Processor};
use seqmon_simulator::{simulate, FleetConfig};
use serde::Serialize;

/// The validator's de-duplication state at its default horizon, held in memory.
#[derive(Debug, Serialize)]
struct DedupMemory {
    instruments: usize,
    sample_interval_s: u32,
    /// Event time fed, s (longer than the horizon, so expiry runs as in production).
    event_time_s: f64,
    horizon_ms: i64,
    ids_held: usize,
    /// Growth of the bench process's resident memory while the validator filled its state.
    resident_bytes: usize,
    bytes_per_id: f64,
    bytes_per_instrument: f64,
}

/// Feeds a fleet sampling every second for longer than the validator's default horizon through
/// a default validator and measures how much the process's resident memory grew (the records
/// are in memory before; what the validator emits is dropped as it goes).
fn dedup_memory() -> DedupMemory {
    let instruments = 60;
    let hours = 1.25;
    let sim = simulate(&FleetConfig {
        instruments,
        duration_hours: hours,
        sample_interval_s: 1,
        bad_record_share: 0.0,
        faults: false,
        ..Default::default()
    });
    let before = resident_bytes();
    let mut validator = seqmon_validator::Validator::default();
    let mut out = Emitter::default();
    for (i, r) in sim.records.iter().enumerate() {
        let env = Envelope {
            key: Some(r.key.as_bytes()),
            value: &r.bytes,
            topic: "bench",
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        validator.process(&env, &mut out).expect("validates");
        black_box(out.take());
    }
    let heap = resident_bytes().saturating_sub(before);
    let ids = validator.state_keys().len();
    let horizon_ms = seqmon_validator::ValidatorConfig::default().dedup_horizon_ms;
    drop(validator);
    DedupMemory {
        instruments,
        sample_interval_s: 1,
        event_time_s: hours * 3600.0,
        horizon_ms,
        ids_held: ids,
        resident_bytes: heap,
        bytes_per_id: heap as f64 / ids.max(1) as f64,
        bytes_per_instrument: heap as f64 / instruments as f64,
    }
}

/// Resident memory of this process (VmRSS), bytes.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Keyed encoded records.
type Keyed = Vec<(String, Vec<u8>)>;
/// A processor factory.
type Make = fn() -> Box<dyn Processor>;

/// Kafka measurements need at least this many input records to mean anything.
const MIN_KAFKA_RECORDS: usize = 1000;
/// The notifier's input in the Kafka section: as long as the other stages' (see `kafka_rows`).
const NOTIFIER_KAFKA_RECORDS: usize = 100_000;
/// In-process processor measurements repeat their input up to at least this many records.
const MIN_PROCESSOR_RECORDS: usize = 20_000;

/// Records per batch when the processor section adds the state records a transaction writes:
/// about what a stage's transaction holds end to end at 8,000 instruments.
const STATE_BATCH_RECORDS: usize = 100;

/// Measure the backbone.
#[derive(Debug, Parser)]
struct Cli {
    /// Kafka bootstrap servers (the broker `make bench` starts, or an existing cluster).
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    bootstrap_servers: String,
    /// Instruments in the simulated fleet used as input.
    #[arg(long, default_value_t = 40)]
    instruments: usize,
    /// Hours of event time simulated.
    #[arg(long, default_value_t = 4.0)]
    duration_hours: f64,
    /// Rounds of each in-process measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Rounds of each Kafka stage measurement: each round runs the raw passthrough and then the
    /// stage on a fresh copy of the input (own topics, group and changelog); the stage's ratio is
    /// the median of the rounds' ratios, so a broker that slows down between two measurements
    /// moves one round, not the figure.
    #[arg(long, default_value_t = 3)]
    kafka_rounds: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Records per transaction, for the passthrough and the services alike.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Skip the Kafka measurements (stage throughput and end to end).
    #[arg(long)]
    no_kafka: bool,
    /// Measure only these stages in the processor and Kafka sections (comma-separated service
    /// names, e.g. `feature-extractor`; empty: all five), to compare two builds of one stage.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(STAGES))]
    stages: Vec<String>,
    /// Run only the end-to-end measurement.
    #[arg(long)]
    only_e2e: bool,
    /// Fleet sizes replayed live at 1 Hz end to end (comma-separated; 0: none).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,25000")]
    e2e_instruments: Vec<usize>,
    /// The capacity ratio: after the services' search, the same search for a chain of five
    /// passthrough hops (`seqmon-passthrough`) from these fleet sizes; the ratio of the largest
    /// fleets holding the p99 target is reported. Empty: not measured.
    #[arg(long, value_delimiter = ',', default_value = "3000,12000")]
    e2e_passthrough_instruments: Vec<usize>,
    /// Scale-out: the services with each of these instance counts per stage, at
    /// `--e2e-scale-instruments`; throughput, p99 and resources per count. Empty: not measured.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    e2e_instances: Vec<usize>,
    /// Fleet size of the scale-out runs.
    #[arg(long, default_value_t = 1000)]
    e2e_scale_instruments: usize,
    /// After the listed sizes, this many bisection steps for the largest fleet holding the
    /// feature latency p99 at or under --e2e-p99-target-ms.
    #[arg(long, default_value_t = 3)]
    e2e_search_steps: usize,
    /// The p99 target, ms.
    #[arg(long, default_value_t = 100.0)]
    e2e_p99_target_ms: f64,
    /// Seconds of live replay per fleet size.
    #[arg(long, default_value_t = 90)]
    e2e_duration_s: u64,
    /// Seconds at the start of each replay not counted (group joins, first windows).
    #[arg(long, default_value_t = 30)]
    e2e_warmup_s: u64,
    /// Least time between two transactions of a service, ms, end to end (--batch-linger-ms).
    #[arg(long, default_value_t = 0)]
    e2e_batch_linger_ms: u64,
    /// Most records per transaction, end to end (the services' default).
    #[arg(long, default_value_t = 5000)]
    e2e_batch: usize,
    /// Most time a service waits to fill a transaction, ms, end to end.
    #[arg(long, default_value_t = 100)]
    e2e_batch_wait_ms: u64,
    /// Feature window, ms of event time, end to end (shorter than the 5 min default, so
    /// windows close within a run).
    #[arg(long, default_value_t = 60_000)]
    e2e_window_ms: i64,
    /// Feature window alignment end to end: `instrument` (staggered) or `epoch` (the whole
    /// fleet's windows close in the same second).
    #[arg(long, default_value = "instrument")]
    e2e_window_alignment: String,
    /// Allowed lateness of the feature window, ms, end to end.
    #[arg(long, default_value_t = 1_000)]
    e2e_lateness_ms: i64,
    /// Also measure latency to the committed validated and sanitized records (per hop). The
    /// probe then reads the whole record stream twice more, which loads this machine too.
    #[arg(long)]
    e2e_probe_hops: bool,
    /// Fleet size of the soak run that checks memory stays flat over time (0: none).
    #[arg(long, default_value_t = 2000)]
    e2e_soak_instruments: usize,
    /// Seconds of the soak run.
    #[arg(long, default_value_t = 300)]
    e2e_soak_s: u64,
    /// The validator's de-duplication horizon in the soak run, ms: short, so its state reaches
    /// steady size within the run (memory per id is reported, to scale to the 1 h default).
    #[arg(long, default_value_t = 60_000)]
    e2e_soak_dedup_horizon_ms: i64,
    /// Process id of the broker, to sample its CPU and memory (make bench passes it).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Where to write the JSON figures.
    #[arg(long, default_value = "out/bench/latest.json")]
    json: String,
}

/// The five services, as `--stages` names them.
const STAGES: [&str; 5] = [
    "validator",
    "privacy-enforcer",
    "feature-extractor",
    "anomaly-detector",
    "notifier",
];

impl Cli {
    /// Whether `stage` is measured in this run (`--stages`).
    fn measures(&self, stage: &str) -> bool {
        self.stages.is_empty() || self.stages.iter().any(|s| s == stage)
    }
}

#[derive(Debug, Serialize)]
struct Row {
    section: &'static str,
    name: String,
    records: usize,
    records_per_s: f64,
    /// Ratio to the section's baseline (passthrough for Kafka stages), when there is one; for
    /// a Kafka stage, the median of its rounds' ratios.
    ratio: Option<f64>,
    /// A Kafka stage's ratio in each round (passthrough and stage on the same fresh input).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    round_ratios: Vec<f64>,
}

/// What a stateful stage wrote to its changelog over a Kafka run, and what restoring it costs.
#[derive(Debug, Serialize)]
struct StateRow {
    stage: String,
    /// Input records of the run.
    input_records: usize,
    /// Instruments in the fleet the records came from.
    instruments: usize,
    /// Changelog records and bytes (key + value) written over the run, tombstones included.
    changelog_records: u64,
    changelog_bytes: u64,
    /// Bytes the compacted changelog keeps (latest record per key), per 1,000 instruments.
    kept_bytes_per_1000: f64,
    /// A fresh instance's restore: seconds (its own histogram) and keys, per 1,000 instruments.
    restore_s_per_1000: f64,
    restored_keys: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median records/s of `f` over `rounds`, `f` handling `n` records per call.
fn rate(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Every record each stage produces on a simulated fleet, by output role, and the raw input.
fn realistic_records(cli: &Cli) -> (Keyed, BTreeMap<TopicRole, Keyed>) {
    let sim = simulate(&FleetConfig {
        instruments: cli.instruments,
        duration_hours: cli.duration_hours,
        bad_record_share: 0.0,
        ..Default::default()
    });
    let raw: Vec<(String, Vec<u8>)> = sim
        .records
        .iter()
        .map(|r| (r.key.clone(), r.bytes.clone()))
        .collect();
    let mut by_role: BTreeMap<TopicRole, Keyed> = BTreeMap::new();
    let mut chain = seqmon_pipeline::default_chain().expect("chain");
    let mut tap = |_: &str, e: &Emitted| {
        by_role
            .entry(e.role)
            .or_default()
            .push((e.key.clone(), e.value.clone()))
    };
    for (k, v) in &raw {
        chain.push(k, v, &mut tap).expect("pipeline runs");
    }
    chain.finish(&mut tap).expect("pipeline finishes");
    (raw, by_role)
}

fn codec_rows(
    cli: &Cli,
    raw: &[(String, Vec<u8>)],
    by_role: &BTreeMap<TopicRole, Vec<(String, Vec<u8>)>>,
    rows: &mut Vec<Row>,
) {
    fn one<T: seqmon_model::AvroRecord>(
        cli: &Cli,
        name: &str,
        bytes: &[Vec<u8>],
        rows: &mut Vec<Row>,
    ) {
        if bytes.is_empty() {
            return;
        }
        let records: Vec<T> = bytes
            .iter()
            .map(|b| decode::<T>(b).expect("decodes"))
            .collect();
        let n = records.len();
        let enc = rate(cli.rounds, n, || {
            records.iter().for_each(|r| {
                black_box(encode(r).expect("encodes"));
            })
        });
        let dec = rate(cli.rounds, n, || {
            bytes.iter().for_each(|b| {
                black_box(decode::<T>(b).expect("decodes"));
            })
        });
        rows.push(Row {
            section: "codec",
            name: format!("{name} encode"),
            records: n,
            records_per_s: enc,
            ratio: None,
            round_ratios: Vec::new(),
        });
        let via_value = rate(cli.rounds, n, || {
            bytes.iter().for_each(|b| {
                black_box(decode_via_value::<T>(b).expect("decodes"));
            })
        });
        rows.push(Row {
            section: "codec",
            name: format!("{name} decode, apache-avro Value"),
            records: n,
            records_per_s: via_value,
            ratio: None,
            round_ratios: Vec::new(),
        });
        rows.push(Row {
            section: "codec",
            name: format!("{name} decode"),
            records: n,
            records_per_s: dec,
            ratio: Some(dec / via_value),
            round_ratios: Vec::new(),
        });
    }
    let get = |role: TopicRole| {
        by_role
            .get(&role)
            .map(|v| v.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let raw_bytes: Vec<Vec<u8>> = raw.iter().map(|(_, b)| b.clone()).collect();
    one::<Telemetry>(cli, "telemetry", &raw_bytes, rows);
    one::<SanitizedTelemetry>(cli, "sanitized_telemetry", &get(TopicRole::Sanitized), rows);
    one::<Feature>(cli, "feature", &get(TopicRole::Features), rows);
    one::<Anomaly>(cli, "anomaly", &get(TopicRole::Anomalies), rows);
    one::<Alert>(cli, "alert", &get(TopicRole::Alerts), rows);
    one::<MaintenanceEntry>(cli, "maintenance_entry", &get(TopicRole::Maintenance), rows);
    one::<PrivacyAudit>(cli, "privacy_audit", &get(TopicRole::PrivacyAudit), rows);
    let dead: Vec<DeadLetter> = raw
        .iter()
        .take(2000)
        .map(|(k, v)| DeadLetter {
            stage: "validator".into(),
            reason: seqmon_model::DeadLetterReason::OUT_OF_RANGE,
            detail: "sensors.laser_power_mw outside plausible range".into(),
            source_topic: "telemetry.raw".into(),
            source_partition: 1,
            source_offset: 42,
            source_key: Some(k.as_bytes().to_vec()),
            source_timestamp_ms: Some(1),
            original_bytes: v.clone(),
        })
        .collect();
    let dead_bytes: Vec<Vec<u8>> = dead.iter().map(|d| encode(d).expect("encodes")).collect();
    one::<DeadLetter>(cli, "dead_letter", &dead_bytes, rows);
    // Resolving decode: telemetry written with v1 (old firmware), read as the newest version.
    let v1 = store().version("telemetry", 1).expect("v1");
    let old: Vec<Vec<u8>> = raw_bytes
        .iter()
        .take(20_000)
        .filter_map(|b| {
            let mut json = serde_json::to_value(decode::<Telemetry>(b).ok()?).ok()?;
            json.as_object_mut()?.remove("attributes");
            if let Some(p) = json
                .get_mut("run_performance")
                .and_then(|p| p.as_object_mut())
            {
                for k in ["pct_aligned", "signal_to_noise", "yield_gbp"] {
                    p.remove(k);
                }
            }
            let value = seqmon_model::json::json_to_avro(&v1.schema, &json).ok()?;
            seqmon_model::codec::encode_value(v1, value).ok()
        })
        .collect();
    let n = old.len();
    let r = rate(cli.rounds, n, || {
        old.iter().for_each(|b| {
            black_box(decode::<Telemetry>(b).expect("resolves"));
        })
    });
    rows.push(Row {
        section: "codec",
        name: "telemetry v1->v3 resolving decode".into(),
        records: n,
        records_per_s: r,
        ratio: None,
        round_ratios: Vec::new(),
    });
    let _ = (decode_value, encode_with::<Telemetry>);
}

fn processor_rows(
    cli: &Cli,
    raw: &[(String, Vec<u8>)],
    by_role: &BTreeMap<TopicRole, Vec<(String, Vec<u8>)>>,
    rows: &mut Vec<Row>,
) {
    let stages: Vec<(&str, Make, Keyed)> = vec![
        (
            "validator",
            || Box::new(seqmon_validator::Validator::default()),
            raw.to_vec(),
        ),
        (
            "privacy-enforcer",
            || Box::new(seqmon_privacy_enforcer::PrivacyEnforcer::default()),
            by_role
                .get(&TopicRole::Validated)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "feature-extractor",
            || Box::new(seqmon_feature_extractor::FeatureExtractor::default()),
            by_role
                .get(&TopicRole::Sanitized)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "anomaly-detector",
            || Box::new(seqmon_anomaly_detector::AnomalyDetector::default()),
            by_role
                .get(&TopicRole::Features)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "notifier",
            || Box::new(seqmon_notifier::Notifier::default()),
            by_role
                .get(&TopicRole::Anomalies)
                .cloned()
                .unwrap_or_default(),
        ),
    ];
    for (name, make, input) in stages {
        if input.is_empty() || !cli.measures(name) {
            continue;
        }
        // Repeat small inputs (anomalies are rare) so the timing is not dominated by noise.
        let copies = MIN_PROCESSOR_RECORDS.div_ceil(input.len()).max(1);
        let input: Keyed = std::iter::repeat_n(input, copies).flatten().collect();
        let n = input.len();
        // Alone, then (stateful stages) with what the Kafka runtime adds per transaction: the
        // changelog records of every key the batch changed, encoded as it encodes them.
        let stateful = make().changelog_role().is_some();
        for with_state in [false, true].into_iter().filter(|s| !s || stateful) {
            let r = rate(cli.rounds, n, || {
                let mut d = Driver::new(make());
                let mut out = Vec::new();
                let mut changed = BTreeMap::new();
                for (i, (k, v)) in input.iter().enumerate() {
                    let env = Envelope {
                        key: Some(k.as_bytes()),
                        value: v,
                        topic: "bench",
                        partition: 0,
                        offset: i as i64,
                        timestamp_ms: None,
                        arrival_time_ms: None,
                    };
                    d.handle(&env, &mut out, |key| {
                        if with_state {
                            changed.insert(key, 0);
                        }
                    })
                    .expect("processes");
                    out.clear();
                    if with_state && ((i + 1) % STATE_BATCH_RECORDS == 0 || i + 1 == n) {
                        black_box(d.state_writes(&changed).expect("state records"));
                        changed.clear();
                    }
                }
            });
            rows.push(Row {
                section: "processor",
                name: if with_state {
                    format!("{name}, state every {STATE_BATCH_RECORDS} records")
                } else {
                    name.to_string()
                },
                records: n,
                records_per_s: r,
                ratio: None,
                round_ratios: Vec::new(),
            });
        }
    }
}

fn client(cli: &Cli) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cli.bootstrap_servers);
    c
}

fn produce(cli: &Cli, topic: &str, records: &[(String, Vec<u8>)]) {
    seqmon_testkit::produce(
        &cli.bootstrap_servers,
        topic,
        records.iter().map(|(k, v)| (k.clone(), v.clone(), None)),
    );
}

/// Raw rdkafka exactly-once passthrough: consume read_committed, produce unchanged, commit offsets
/// in the same transaction, `batch` records per transaction, until `n` records are done.
fn passthrough(cli: &Cli, input: &str, output: &str, group: &str, n: usize) -> Timed {
    let consumer: BaseConsumer = client(cli)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // The runtime's client settings (seqmon_runtime::kafka), so only processing differs.
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let producer: ThreadedProducer<DefaultProducerContext> = client(cli)
        .set("transactional.id", format!("{group}-tx"))
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut taken = 0;
    let mut transactions = 0u64;
    let mut started: Option<Instant> = None;
    // As the runtime does: a batch's commit runs on a thread of its own while the next batch is
    // collected, and the next transaction begins once it returned.
    std::thread::scope(|scope| {
        let mut pending: Option<std::thread::ScopedJoinHandle<'_, ()>> = None;
        let settle = |pending: &mut Option<std::thread::ScopedJoinHandle<'_, ()>>| {
            if let Some(commit) = pending.take() {
                commit.join().expect("commit thread");
            }
        };
        while taken < n {
            let mut batch = Vec::with_capacity(cli.batch);
            let t = Instant::now();
            // The runtime's batching rule with its defaults: wait up to 100 ms for a first
            // record, then take what has been fetched, up to `batch` records.
            while batch.len() < cli.batch && t.elapsed() < Duration::from_millis(100) {
                let timeout = if batch.is_empty() {
                    Duration::from_millis(100).saturating_sub(t.elapsed())
                } else {
                    Duration::ZERO
                };
                match consumer.poll(timeout) {
                    Some(Ok(m)) => batch.push((
                        m.partition(),
                        m.offset(),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                    )),
                    _ if !batch.is_empty() => break,
                    _ => {}
                }
            }
            if batch.is_empty() {
                settle(&mut pending);
                continue;
            }
            started.get_or_insert_with(Instant::now);
            settle(&mut pending);
            producer.begin_transaction().expect("begin");
            let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
            for (p, o, k, v) in &batch {
                let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
                if let Some(k) = k {
                    r = r.key(k.as_slice());
                }
                if let Some(v) = v {
                    r = r.payload(v.as_slice());
                }
                seqmon_runtime::kafka::send(&producer, r).expect("produce");
                offsets.insert(*p, o + 1);
            }
            taken += batch.len();
            transactions += 1;
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets {
                tpl.add_partition_offset(input, p, Offset::Offset(o))
                    .expect("offset");
            }
            let group = consumer.group_metadata().expect("group");
            let producer = &producer;
            // Wait for the deliveries, then send the offsets, then commit (see
            // seqmon_runtime::kafka::wait_delivered).
            pending = Some(scope.spawn(move || {
                seqmon_runtime::kafka::wait_delivered(producer, Duration::from_secs(30))
                    .expect("delivered");
                producer
                    .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30))
                    .expect("offsets");
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit");
            }));
        }
        settle(&mut pending);
    });
    Timed {
        records_per_s: n as f64 / started.expect("consumed").elapsed().as_secs_f64(),
        transactions: transactions as f64,
    }
}

/// One timed run over a topic's records: its rate and the transactions it took.
struct Timed {
    records_per_s: f64,
    transactions: f64,
}

/// One stage as a separate process over `n` records already on its input topic: records/s from
/// its first input record taken to its n-th committed, read from its own /metrics (start-up
/// and group join excluded, as for the passthrough).
fn service(cli: &Cli, stage: &str, prefix: &str, n: usize) -> Timed {
    let batch = cli.batch.to_string();
    let mut extra = vec!["--batch-max-records", batch.as_str()];
    if stage == "validator" {
        extra.extend(["--max-age-ms", "9000000000000"]);
    }
    let (child, port) = spawn_stage(cli, stage, prefix, &extra);
    let mut started: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut rate = f64::NAN;
    let mut transactions = f64::NAN;
    while Instant::now() < deadline {
        let scraped = seqmon_testkit::scrape(port).unwrap_or_default();
        if scraped
            .get("seqmon_input_records_total")
            .is_some_and(|taken| *taken > 0.0)
        {
            started.get_or_insert_with(Instant::now);
        }
        // Every input record has a timestamp: the latency histogram counts them as they commit.
        let committed = scraped
            .get("seqmon_event_to_commit_seconds_count")
            .copied()
            .unwrap_or(0.0);
        if committed >= n as f64 {
            rate = n as f64
                / started
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(f64::NAN);
            transactions = scraped
                .get("seqmon_transactions_total{outcome=\"committed\"}")
                .copied()
                .unwrap_or(f64::NAN);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(child);
    Timed {
        records_per_s: rate,
        transactions,
    }
}

/// One stage as a separate process on the bench's topics, with its metrics port.
fn spawn_stage(cli: &Cli, stage: &str, prefix: &str, extra: &[&str]) -> (Child, u16) {
    let port = seqmon_testkit::free_port();
    let child = Command::new(seqmon_testkit::workspace_bin(stage))
        .args(seqmon_testkit::stage_args(
            stage,
            &cli.bootstrap_servers,
            prefix,
            port,
        ))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("service starts");
    (child, port)
}

/// Stops a stage as an orchestrator would (SIGTERM: it finishes its batch) and waits for it.
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// The fleet's anomalies played `target / len` times over, each repetition shifted past the end
/// of the previous one, with anomaly ids of its own.
fn repeated_history(anomalies: &[(String, Vec<u8>)], target: usize) -> Keyed {
    let decoded: Vec<(String, Anomaly)> = anomalies
        .iter()
        .map(|(k, v)| (k.clone(), decode::<Anomaly>(v).expect("an anomaly")))
        .collect();
    let first = decoded
        .iter()
        .map(|(_, a)| a.window_start_ms)
        .min()
        .unwrap_or(0);
    let last = decoded
        .iter()
        .map(|(_, a)| a.window_end_ms)
        .max()
        .unwrap_or(0);
    let span = last - first + 86_400_000;
    let mut out = Vec::with_capacity(target);
    for rep in 0.. {
        for (key, a) in &decoded {
            if out.len() >= target {
                return out;
            }
            let shift = rep * span;
            let mut a = a.clone();
            a.anomaly_id = format!("{}#{rep}", a.anomaly_id);
            a.window_start_ms += shift;
            a.window_end_ms += shift;
            for t in [
                &mut a.predicted_limit_ms,
                &mut a.predicted_limit_earliest_ms,
                &mut a.predicted_limit_latest_ms,
            ]
            .into_iter()
            .flatten()
            {
                *t += shift;
            }
            out.push((key.clone(), encode(&a).expect("encodes")));
        }
    }
    out
}

/// The changelog of a stage that keeps state.
fn stateful(stage: &str) -> Option<TopicRole> {
    match stage {
        "validator" => Some(TopicRole::ChangelogValidator),
        "feature-extractor" => Some(TopicRole::ChangelogFeatureExtractor),
        "anomaly-detector" => Some(TopicRole::ChangelogAnomalyDetector),
        "notifier" => Some(TopicRole::ChangelogNotifier),
        _ => None,
    }
}

/// Reads a stage's changelog after its run (every record: what it wrote; the latest per key:
/// what compaction keeps), then starts a fresh instance of the stage on it and reads how long
/// its restore took from its own metrics.
fn state_row(cli: &Cli, stage: &str, prefix: &str, changelog: TopicRole, n: usize) -> StateRow {
    let sizes = e2e::changelog_sizes(
        &cli.bootstrap_servers,
        cli.partitions,
        &changelog.topic(prefix),
    );
    // A fresh instance in the same group: it restores the whole changelog, then finds nothing
    // left to read.
    let (child, port) = spawn_stage(cli, stage, prefix, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut restore_s = f64::NAN;
    let mut restored_keys = f64::NAN;
    while Instant::now() < deadline {
        let m = seqmon_testkit::scrape(port).unwrap_or_default();
        if m.get("seqmon_restore_duration_seconds_count").copied() >= Some(1.0) {
            restore_s = m
                .get("seqmon_restore_duration_seconds_sum")
                .copied()
                .unwrap_or(f64::NAN);
            restored_keys = m
                .get("seqmon_restored_state_keys_total")
                .copied()
                .unwrap_or(f64::NAN);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    let per_1000 = 1000.0 / cli.instruments.max(1) as f64;
    StateRow {
        stage: stage.to_string(),
        input_records: n,
        instruments: cli.instruments,
        changelog_records: sizes.records,
        changelog_bytes: sizes.bytes,
        kept_bytes_per_1000: sizes.kept as f64 * per_1000,
        restore_s_per_1000: restore_s * per_1000,
        restored_keys,
    }
}

fn kafka_rows(
    cli: &Cli,
    raw: &[(String, Vec<u8>)],
    by_role: &BTreeMap<TopicRole, Vec<(String, Vec<u8>)>>,
    rows: &mut Vec<Row>,
    state: &mut Vec<StateRow>,
) {
    let prefix = format!("bench-{}.", std::process::id());
    let inputs: Vec<(&str, TopicRole, Keyed)> = vec![
        ("validator", TopicRole::Raw, raw.to_vec()),
        (
            "privacy-enforcer",
            TopicRole::Validated,
            by_role
                .get(&TopicRole::Validated)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "feature-extractor",
            TopicRole::Sanitized,
            by_role
                .get(&TopicRole::Sanitized)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "anomaly-detector",
            TopicRole::Features,
            by_role
                .get(&TopicRole::Features)
                .cloned()
                .unwrap_or_default(),
        ),
        (
            "notifier",
            TopicRole::Anomalies,
            by_role
                .get(&TopicRole::Anomalies)
                .cloned()
                .unwrap_or_default(),
        ),
    ];
    for (stage, role, mut records) in inputs {
        if !cli.measures(stage) {
            continue;
        }
        // Anomalies are rare in a healthy fleet: the notifier's input is the fleet's anomaly
        // history played again and again, each time later (after the last one ended) and with
        // its own anomaly ids, until it is as long as the other stages' inputs: the alerts open,
        // escalate and resolve as they did, once per repetition.
        let mut label = stage.to_string();
        if stage == "notifier" && !records.is_empty() && records.len() < NOTIFIER_KAFKA_RECORDS {
            let original = records.len();
            records = repeated_history(&records, NOTIFIER_KAFKA_RECORDS);
            label = format!("notifier ({original} anomalies, repeated)");
        }
        let n = records.len();
        if n < MIN_KAFKA_RECORDS {
            eprintln!("kafka {stage}: only {n} input records in this fleet; not measured (raise --instruments or --duration-hours)");
            continue;
        }
        let (mut bases, mut services, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..cli.kafka_rounds.max(1) {
            // Every round on topics of its own, so no stage restores or de-duplicates against
            // an earlier round's state, and no side input holds another stage's records (the
            // notifier's side input is the detector's input topic).
            let prefix = format!("{prefix}r{round}-{stage}.");
            e2e::create_topics(&cli.bootstrap_servers, &prefix, cli.partitions);
            let input = role.topic(&prefix);
            produce(cli, &input, &records);
            // The limit on the same input: raw passthrough to a scratch topic (the dead-letter
            // topic of the analysis side, unused otherwise in this run), timed like the services.
            let base = passthrough(
                cli,
                &input,
                &TopicRole::DeadLetters.topic(&prefix),
                &format!("{prefix}passthrough-{stage}"),
                n,
            );
            let svc = service(cli, stage, &prefix, n);
            if round == 0 {
                if let Some(changelog) = stateful(stage) {
                    state.push(state_row(cli, stage, &prefix, changelog, n));
                }
            }
            eprintln!(
                "kafka {stage} round {round}: passthrough {:.0}/s in {:.0} transactions, stage {:.0}/s in {:.0}, ratio {:.2}",
                base.records_per_s,
                base.transactions,
                svc.records_per_s,
                svc.transactions,
                svc.records_per_s / base.records_per_s
            );
            let (base, svc) = (base.records_per_s, svc.records_per_s);
            bases.push(base);
            services.push(svc);
            ratios.push(svc / base);
        }
        rows.push(Row {
            section: "kafka",
            name: format!("passthrough on {role}"),
            records: n,
            records_per_s: median(bases),
            ratio: None,
            round_ratios: Vec::new(),
        });
        rows.push(Row {
            section: "kafka",
            name: label,
            records: n,
            records_per_s: median(services),
            ratio: Some(median(ratios.clone())),
            round_ratios: ratios,
        });
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let t = Instant::now();
    let (raw, by_role) = if cli.only_e2e {
        (Vec::new(), BTreeMap::new())
    } else {
        realistic_records(&cli)
    };
    eprintln!(
        "simulated {} raw records ({} instruments, {} h) in {:.1} s",
        raw.len(),
        cli.instruments,
        cli.duration_hours,
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut state = Vec::new();
    let mut dedup = None;
    if !cli.only_e2e {
        codec_rows(&cli, &raw, &by_role, &mut rows);
        processor_rows(&cli, &raw, &by_role, &mut rows);
        dedup = Some(dedup_memory());
        if !cli.no_kafka {
            kafka_rows(&cli, &raw, &by_role, &mut rows, &mut state);
        }
    }
    let e2e_runs = if cli.no_kafka {
        Vec::new()
    } else {
        end_to_end(&cli)
    };
    let soak_run = if cli.no_kafka { None } else { soak(&cli) };
    println!(
        "{:<10} {:<38} {:>9} {:>14} {:>8}",
        "section", "measure", "records", "records/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<10} {:<38} {:>9} {:>14.0} {:>8}",
            r.section,
            r.name,
            r.records,
            r.records_per_s,
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default()
        );
    }
    if let Some(d) = &dedup {
        println!();
        println!(
            "validator de-duplication state: {} instruments at 1 sample/s for {:.0} s, horizon {} ms: {} ids held, resident memory +{} bytes = {:.1} B per id, {:.0} B per instrument",
            d.instruments, d.event_time_s, d.horizon_ms, d.ids_held, d.resident_bytes, d.bytes_per_id, d.bytes_per_instrument
        );
    }
    if !state.is_empty() {
        println!();
        println!(
            "state over the kafka runs: changelog written, kept after compaction, and a fresh instance's restore"
        );
        println!(
            "  {:<18} {:>9} {:>10} {:>12} {:>10} {:>16} {:>16} {:>9}",
            "stage",
            "inputs",
            "records",
            "bytes",
            "B/input",
            "kept B/1000 inst",
            "restore s/1000",
            "keys"
        );
        for r in &state {
            println!(
                "  {:<18} {:>9} {:>10} {:>12} {:>10.0} {:>16.0} {:>16.3} {:>9.0}",
                r.stage,
                r.input_records,
                r.changelog_records,
                r.changelog_bytes,
                r.changelog_bytes as f64 / r.input_records.max(1) as f64,
                r.kept_bytes_per_1000,
                r.restore_s_per_1000,
                r.restored_keys
            );
        }
    }
    print_e2e(&e2e_runs, cli.e2e_p99_target_ms);
    let by_target = capacity(&cli, &e2e_runs);
    if by_target.iter().any(|c| {
        c.services_largest_instruments.is_some() || c.passthrough_largest_instruments.is_some()
    }) {
        println!();
        for c in &by_target {
            println!(
                "capacity at feature p99 <= {} ms: services {:?} instruments, passthrough chain {:?}; ratio {}",
                c.p99_target_ms,
                c.services_largest_instruments,
                c.passthrough_largest_instruments,
                c.ratio.map_or("-".to_string(), |r| format!("{r:.2}"))
            );
        }
    }
    // The target's figures at the top, as before; every target's under `by_target`.
    let at_target = &by_target[0];
    let capacity = serde_json::json!({
        "services_largest_instruments": at_target.services_largest_instruments,
        "passthrough_largest_instruments": at_target.passthrough_largest_instruments,
        "ratio": at_target.ratio,
        "by_target": by_target,
    });
    if let Some(r) = &soak_run {
        println!();
        println!(
            "soak: {} instruments for {} s (validator horizon {} ms): resident memory after the warm-up, at the end, slope",
            r.instruments, cli.e2e_soak_s, cli.e2e_soak_dedup_horizon_ms
        );
        for u in &r.usage {
            println!(
                "  {:<18} {:>8.1} MiB {:>8.1} MiB {:>+7.2} MiB/min",
                u.process, u.rss_mib_after_warmup, u.rss_mib_end, u.rss_mib_per_min
            );
        }
    }
    let machine = serde_json::json!({ "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) });
    let doc = serde_json::json!({ "machine": machine, "instruments": cli.instruments, "duration_hours": cli.duration_hours, "rounds": cli.rounds, "partitions": cli.partitions, "batch": cli.batch, "rows": rows, "state": state, "dedup_memory": dedup, "capacity": capacity, "e2e": { "duration_s": cli.e2e_duration_s, "batch": cli.e2e_batch, "warmup_s": cli.e2e_warmup_s, "batch_wait_ms": cli.e2e_batch_wait_ms, "batch_linger_ms": cli.e2e_batch_linger_ms, "window_ms": cli.e2e_window_ms, "window_alignment": cli.e2e_window_alignment, "lateness_ms": cli.e2e_lateness_ms, "p99_target_ms": cli.e2e_p99_target_ms, "runs": e2e_runs, "soak": soak_run, "soak_dedup_horizon_ms": cli.e2e_soak_dedup_horizon_ms } });
    if let Some(dir) = std::path::Path::new(&cli.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &cli.json,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => {
            eprintln!("figures written to {}", cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", cli.json);
            ExitCode::FAILURE
        }
    }
}

/// The end-to-end runs: the listed fleet sizes, then bisection for the largest fleet whose
/// feature latency p99 holds the target.
fn end_to_end(cli: &Cli) -> Vec<e2e::E2eRun> {
    let settings = e2e::E2eSettings {
        bootstrap_servers: cli.bootstrap_servers.clone(),
        partitions: cli.partitions,
        batch: cli.e2e_batch,
        batch_wait_ms: cli.e2e_batch_wait_ms,
        batch_linger_ms: cli.e2e_batch_linger_ms,
        duration_s: cli.e2e_duration_s,
        warmup_s: cli.e2e_warmup_s,
        window_ms: cli.e2e_window_ms,
        lateness_ms: cli.e2e_lateness_ms,
        window_alignment: cli.e2e_window_alignment.clone(),
        probe_hops: cli.e2e_probe_hops,
        dedup_horizon_ms: None,
        broker_pid: cli.broker_pid,
        chain: e2e::Chain::Services,
        instances: 1,
    };
    let sizes: Vec<usize> = cli
        .e2e_instruments
        .iter()
        .copied()
        .filter(|n| *n > 0)
        .collect();
    let first = sizes
        .first()
        .or(cli.e2e_passthrough_instruments.iter().find(|n| **n > 0))
        .copied()
        .filter(|n| *n > 0)
        .or((cli.e2e_instances.iter().any(|k| *k > 0)).then_some(cli.e2e_scale_instruments));
    let Some(first) = first else {
        return Vec::new();
    };
    // A short run first, not reported: a freshly started broker's JVM is still compiling its
    // hot paths and burns up to a core more for the first minute or so.
    eprintln!("end to end: warm-up run, not reported");
    let _ = e2e::run(
        &e2e::E2eSettings {
            duration_s: 45,
            warmup_s: 0,
            ..settings.clone()
        },
        first,
    );
    let mut runs = search(cli, &settings, &sizes);
    let passthrough: Vec<usize> = cli
        .e2e_passthrough_instruments
        .iter()
        .copied()
        .filter(|n| *n > 0)
        .collect();
    runs.extend(search(
        cli,
        &e2e::E2eSettings {
            chain: e2e::Chain::Passthrough,
            ..settings.clone()
        },
        &passthrough,
    ));
    for k in cli.e2e_instances.iter().copied().filter(|k| *k > 0) {
        eprintln!(
            "end to end: {} instruments, {k} instance(s) per stage",
            cli.e2e_scale_instruments
        );
        let r = e2e::run(
            &e2e::E2eSettings {
                instances: k,
                ..settings.clone()
            },
            cli.e2e_scale_instruments,
        );
        runs.push(r);
    }
    runs
}

/// Whether a run kept up with feature p99 at most `target_ms`.
fn holds_within(r: &e2e::E2eRun, target_ms: f64) -> bool {
    r.drained && r.features.as_ref().is_some_and(|l| l.p99_ms <= target_ms)
}

/// The largest fleet of one chain that held `target_ms`, among its runs of one instance, with
/// every smaller fleet run holding too: a fleet held only beyond one that failed is the noise of
/// this machine, not capacity.
fn largest_held(runs: &[e2e::E2eRun], chain: e2e::Chain, target_ms: f64) -> Option<usize> {
    let mut sizes: Vec<(usize, bool)> = runs
        .iter()
        .filter(|r| r.chain == chain && r.instances == 1)
        .map(|r| (r.instruments, holds_within(r, target_ms)))
        .collect();
    sizes.sort_unstable();
    sizes
        .iter()
        .take_while(|(_, held)| *held)
        .map(|(n, _)| *n)
        .last()
}

/// The largest fleets of both chains holding one p99 target, and their ratio.
#[derive(Debug, Serialize)]
struct Capacity {
    p99_target_ms: f64,
    services_largest_instruments: Option<usize>,
    passthrough_largest_instruments: Option<usize>,
    ratio: Option<f64>,
}

/// The capacity ratio at the target and at looser ones, from the same runs: where the target
/// sits in this machine's run-to-run noise, the looser lines show whether the ratio holds.
fn capacity(cli: &Cli, runs: &[e2e::E2eRun]) -> Vec<Capacity> {
    [1.0, 2.0, 5.0]
        .iter()
        .map(|factor| {
            let target = cli.e2e_p99_target_ms * factor;
            let services = largest_held(runs, e2e::Chain::Services, target);
            let passthrough = largest_held(runs, e2e::Chain::Passthrough, target);
            Capacity {
                p99_target_ms: target,
                services_largest_instruments: services,
                passthrough_largest_instruments: passthrough,
                ratio: services.zip(passthrough).map(|(s, p)| s as f64 / p as f64),
            }
        })
        .collect()
}

/// Runs the given fleet sizes, then bisects for the largest fleet holding the p99 target.
fn search(cli: &Cli, settings: &e2e::E2eSettings, sizes: &[usize]) -> Vec<e2e::E2eRun> {
    let holds = |r: &e2e::E2eRun| holds_within(r, cli.e2e_p99_target_ms);
    let mut runs: Vec<e2e::E2eRun> = Vec::new();
    let one = |n: usize, runs: &mut Vec<e2e::E2eRun>| {
        eprintln!(
            "end to end ({:?}): {n} instruments at 1 Hz for {} s",
            settings.chain, cli.e2e_duration_s
        );
        let r = e2e::run(settings, n);
        eprintln!(
            "  features p99 {:?} ms, drained {}",
            r.features.as_ref().map(|l| l.p99_ms),
            r.drained
        );
        runs.push(r);
    };
    for n in sizes {
        one(*n, &mut runs);
    }
    for _ in 0..cli.e2e_search_steps {
        let best_ok = runs
            .iter()
            .filter(|r| holds(r))
            .map(|r| r.instruments)
            .max();
        let worst_fail = runs
            .iter()
            .filter(|r| !holds(r) && best_ok.is_none_or(|b| r.instruments > b))
            .map(|r| r.instruments)
            .min();
        let next = match (best_ok, worst_fail) {
            // Geometric midpoint, rounded to 50: fleet sizes span orders of magnitude.
            (Some(lo), Some(hi)) if hi > lo + lo / 10 => {
                (((lo as f64 * hi as f64).sqrt() / 50.0).round() as usize * 50)
                    .clamp(lo + 1, hi - 1)
            }
            (None, Some(hi)) if hi > 100 => hi / 4,
            // Every size held: double until one does not.
            (Some(lo), None) => lo * 2,
            _ => break,
        };
        one(next, &mut runs);
    }
    runs.sort_by_key(|r| r.instruments);
    runs
}

/// A longer run at a fixed fleet, for memory over time.
fn soak(cli: &Cli) -> Option<e2e::E2eRun> {
    if cli.e2e_soak_instruments == 0 {
        return None;
    }
    let settings = e2e::E2eSettings {
        bootstrap_servers: cli.bootstrap_servers.clone(),
        partitions: cli.partitions,
        batch: cli.e2e_batch,
        batch_wait_ms: cli.e2e_batch_wait_ms,
        batch_linger_ms: cli.e2e_batch_linger_ms,
        duration_s: cli.e2e_soak_s,
        warmup_s: cli
            .e2e_warmup_s
            .max(cli.e2e_soak_dedup_horizon_ms as u64 / 1000 + 60),
        window_ms: cli.e2e_window_ms,
        lateness_ms: cli.e2e_lateness_ms,
        window_alignment: cli.e2e_window_alignment.clone(),
        probe_hops: false,
        dedup_horizon_ms: Some(cli.e2e_soak_dedup_horizon_ms),
        broker_pid: cli.broker_pid,
        chain: e2e::Chain::Services,
        instances: 1,
    };
    eprintln!(
        "soak: {} instruments at 1 Hz for {} s",
        cli.e2e_soak_instruments, cli.e2e_soak_s
    );
    Some(e2e::run(&settings, cli.e2e_soak_instruments))
}

fn ms(l: &Option<e2e::Latency>) -> String {
    l.as_ref()
        .map(|l| format!("{:.0}/{:.0}/{:.0}", l.p50_ms, l.p99_ms, l.p999_ms))
        .unwrap_or_else(|| "-".into())
}

fn print_e2e(runs: &[e2e::E2eRun], target: f64) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<12} {:>4} {:>11} {:>9} {:>9} {:>18} {:>18} {:>14} {:>7}",
        "chain",
        "inst",
        "instruments",
        "raw/s",
        "features",
        "feature p50/99/99.9",
        "anomaly p50/99/99.9",
        "alerts",
        "drained"
    );
    for r in runs {
        println!(
            "{:<12} {:>4} {:>11} {:>9.0} {:>9} {:>18} {:>18} {:>14} {:>7}",
            format!("{:?}", r.chain),
            r.instances,
            r.instruments,
            r.raw_records_per_s,
            r.features.as_ref().map(|l| l.results).unwrap_or(0),
            ms(&r.features),
            ms(&r.anomalies),
            ms(&r.alerts),
            r.drained
        );
    }
    if runs.iter().any(|r| r.validated.is_some()) {
        println!();
        println!(
            "{:>11} {:>20} {:>20}",
            "instruments", "validated p50/99/99.9", "sanitized p50/99/99.9"
        );
    }
    for r in runs.iter().filter(|r| r.validated.is_some()) {
        println!(
            "{:>11} {:>20} {:>20}",
            r.instruments,
            ms(&r.validated),
            ms(&r.sanitized)
        );
    }
    println!();
    println!(
        "{:>11} {:<18} {:>9} {:>12} {:>12}",
        "instruments", "process", "cpu cores", "rss MiB", "rss end MiB"
    );
    for r in runs {
        for u in &r.usage {
            println!(
                "{:>11} {:<18} {:>9.2} {:>12.1} {:>12.1}",
                r.instruments, u.process, u.cpu_cores, u.rss_mib_after_warmup, u.rss_mib_end
            );
        }
        for (stage, (n, records, ms)) in &r.transactions {
            println!(
                "{:>11} {:<18} {:>9.0} transactions, {:>7.1} records and {:>6.1} ms each",
                r.instruments, stage, n, records, ms
            );
        }
        for (stage, b) in &r.state_bytes_per_1000 {
            println!(
                "{:>11} state of {:<18} {:>10.0} bytes per 1,000 instruments",
                r.instruments, stage, b
            );
        }
    }
    // Memory per 1,000 instruments: least-squares slope of each process's resident memory at
    // the end of its run over the fleet sizes measured.
    if runs.len() >= 2 {
        println!();
        println!("resident memory per 1,000 instruments (slope over the fleet sizes measured):");
        let mut by_process: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for r in runs {
            for u in &r.usage {
                by_process
                    .entry(u.process.as_str())
                    .or_default()
                    .push((r.instruments as f64 / 1000.0, u.rss_mib_end));
            }
        }
        for (p, points) in &by_process {
            println!("  {:<18} {:>8.2} MiB", p, e2e::slope(points));
        }
    }
    let best = runs
        .iter()
        .filter(|r| holds_within(r, target))
        .map(|r| r.instruments)
        .max();
    match best {
        Some(n) => {
            println!("largest fleet measured with feature p99 <= {target} ms: {n} instruments")
        }
        None => println!("no measured fleet held feature p99 <= {target} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chain: e2e::Chain, instruments: usize, p99_ms: f64) -> e2e::E2eRun {
        e2e::E2eRun {
            chain,
            instances: 1,
            instruments,
            raw_records: 0.0,
            raw_records_per_s: 0.0,
            validated: None,
            sanitized: None,
            features: Some(e2e::Latency {
                results: 1000,
                p50_ms: p99_ms / 2.0,
                p99_ms,
                p999_ms: p99_ms,
                max_ms: p99_ms,
            }),
            anomalies: None,
            alerts: None,
            usage: Vec::new(),
            state_bytes_per_1000: BTreeMap::new(),
            transactions: BTreeMap::new(),
            drained: true,
        }
    }

    #[test]
    fn a_fleet_held_only_beyond_one_that_failed_is_not_capacity() {
        use e2e::Chain::{Passthrough, Services};
        let runs = vec![
            run(Services, 250, 80.0),
            run(Services, 500, 130.0),
            run(Services, 1000, 95.0),
            run(Services, 4000, 300.0),
            run(Passthrough, 250, 90.0),
            run(Passthrough, 1000, 150.0),
            run(Passthrough, 4000, 180.0),
        ];
        assert_eq!(largest_held(&runs, Services, 100.0), Some(250));
        assert_eq!(largest_held(&runs, Services, 200.0), Some(1000));
        assert_eq!(largest_held(&runs, Services, 500.0), Some(4000));
        assert_eq!(largest_held(&runs, Passthrough, 100.0), Some(250));
        assert_eq!(largest_held(&runs, Passthrough, 200.0), Some(4000));
        assert_eq!(largest_held(&runs, Passthrough, 50.0), None);
        // A fleet that fell behind holds no target, however low its latency.
        let mut behind = run(Services, 8000, 60.0);
        behind.drained = false;
        let runs = vec![run(Services, 250, 80.0), behind];
        assert_eq!(largest_held(&runs, Services, 500.0), Some(250));
    }
}
