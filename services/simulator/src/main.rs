//! `fleet-simulator`: simulates a fleet and writes its telemetry to Kafka (`--to kafka`) or as
//! JSON lines (`--to file`), plus the ground truth as JSON (`--ground-truth`).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use seqmon_model::topics::TopicRole;
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::kafka::CheckedDelivery;
use seqmon_runtime::processor::ConfigError;
use seqmon_runtime::RuntimeError;
use seqmon_simulator::{simulate, Fleet, FleetConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sink {
    /// Produce Avro single-object records to the raw topic.
    Kafka,
    /// Write JSON lines.
    File,
}

/// Simulate a fleet of sequencers with labelled faults and bad records.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Instruments in the fleet.
    #[arg(long, env = "SIM_INSTRUMENTS", default_value_t = 24)]
    instruments: usize,
    /// Hours of event time.
    #[arg(long, env = "SIM_DURATION_HOURS", default_value_t = 6.0)]
    duration_hours: f64,
    /// Seconds of event time between sensor samples.
    #[arg(long, env = "SIM_SAMPLE_INTERVAL_S", default_value_t = 30)]
    sample_interval_s: u32,
    /// Seed.
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    seed: u64,
    /// Event time of the first sample, ms since epoch (default: a fixed day, for reproducible
    /// output; pass a recent time when producing to a topic with time-based retention).
    #[arg(long, env = "SIM_START_TIME_MS")]
    start_time_ms: Option<i64>,
    /// Share of bad records (0..0.5).
    #[arg(long, env = "SIM_BAD_RECORD_SHARE", default_value_t = 0.01)]
    bad_record_share: f64,
    /// Leave out the fault scenarios.
    #[arg(long)]
    no_faults: bool,
    /// Leave out sensor glitches (drop-outs, stuck sensors, silent instruments).
    #[arg(long)]
    no_glitches: bool,
    /// Event time runs this many times faster than the wall clock (0: as fast as possible).
    #[arg(long, env = "SIM_SPEEDUP", default_value_t = 0.0)]
    speedup: f64,
    /// Replay live: event time starts now and follows the wall clock, each instrument's samples
    /// spread over the sample interval, each record produced at its event time with that time
    /// as its Kafka timestamp, generated tick by tick so fleet size is not bounded by memory.
    /// Kafka only; `--speedup` and `--start-time-ms` do not apply.
    #[arg(long)]
    live: bool,
    /// Where records go.
    #[arg(long, value_enum, default_value = "file")]
    to: Sink,
    /// File for JSON lines (`-` for stdout), with `--to file`.
    #[arg(long, default_value = "-")]
    output: String,
    /// File for the ground truth JSON.
    #[arg(long)]
    ground_truth: Option<String>,
    #[command(flatten)]
    kafka: KafkaConnection,
}

/// Produces one simulated record to `telemetry.raw`, sealed when the deployment has a key ring.
fn send_raw(
    producer: &ThreadedProducer<CheckedDelivery>,
    cli: &Cli,
    topic: &str,
    r: &seqmon_simulator::SimRecord,
    timestamp_ms: i64,
) -> Result<(), RuntimeError> {
    let (value, headers) = seqmon_runtime::kafka::outgoing(
        cli.kafka.key_ring.as_ref(),
        TopicRole::Raw,
        r.key.as_bytes(),
        &r.bytes,
    );
    let mut record = BaseRecord::to(topic)
        .key(r.key.as_bytes())
        .payload(value.as_ref())
        .timestamp(timestamp_ms);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    seqmon_runtime::kafka::send(producer, record).map_err(RuntimeError::kafka("produce"))
}

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    seqmon_runtime::service::exit_code(run(Cli::parse()))
}

fn run(mut cli: Cli) -> Result<(), RuntimeError> {
    let bad = |id: &str, message: &str| Err(ConfigError::of::<Cli>(id, message).into());
    if cli.instruments == 0 || cli.instruments > 1_000_000 {
        return bad("instruments", "must be 1..=1000000");
    }
    if !(cli.duration_hours > 0.0 && cli.duration_hours <= 24.0 * 365.0) {
        return bad("duration_hours", "must be > 0 and at most a year");
    }
    if !(0.0..=0.5).contains(&cli.bad_record_share) {
        return bad("bad_record_share", "must be 0..=0.5");
    }
    if cli.sample_interval_s == 0 {
        return bad("sample_interval_s", "must be positive");
    }
    if !(cli.speedup >= 0.0 && cli.speedup.is_finite()) {
        return bad("speedup", "must be >= 0");
    }
    if cli.to == Sink::Kafka {
        cli.kafka.validate()?;
        cli.kafka.load_files()?;
    }
    if cli.live {
        if cli.to != Sink::Kafka {
            return bad("live", "replays to Kafka only; add --to kafka");
        }
        if cli.speedup != 0.0 || cli.start_time_ms.is_some() || cli.ground_truth.is_some() {
            return bad(
                "live",
                "follows the wall clock; leave out --speedup, --start-time-ms and --ground-truth",
            );
        }
        return live(&cli);
    }
    let defaults = FleetConfig::default();
    let cfg = FleetConfig {
        instruments: cli.instruments,
        duration_hours: cli.duration_hours,
        sample_interval_s: cli.sample_interval_s,
        seed: cli.seed,
        start_time_ms: cli.start_time_ms.unwrap_or(defaults.start_time_ms),
        bad_record_share: cli.bad_record_share,
        faults: !cli.no_faults,
        sensor_glitches: !cli.no_glitches,
    };
    let sim = simulate(&cfg);
    if let Some(path) = &cli.ground_truth {
        let text = serde_json::to_string_pretty(&sim.ground_truth_json())
            .map_err(|e| RuntimeError::Internal(e.to_string()))?;
        std::fs::write(path, text).map_err(|source| RuntimeError::Io {
            context: format!("cannot write --ground-truth {path}"),
            source,
        })?;
    }
    let pace = |first: i64, t: i64, started: Instant| {
        if cli.speedup > 0.0 {
            let due = Duration::from_secs_f64(((t - first) as f64 / 1000.0 / cli.speedup).max(0.0));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    let started = Instant::now();
    let first = sim.records.first().map(|r| r.sent_time_ms).unwrap_or(0);
    match cli.to {
        Sink::File => {
            let mut out: Box<dyn Write> = if cli.output == "-" {
                Box::new(std::io::BufWriter::new(std::io::stdout()))
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&cli.output).map_err(|source| RuntimeError::Io {
                        context: format!("cannot create --output {}", cli.output),
                        source,
                    })?,
                ))
            };
            for r in &sim.records {
                pace(first, r.sent_time_ms, started);
                writeln!(out, "{}", r.json_line).map_err(|source| RuntimeError::Io {
                    context: "cannot write output".into(),
                    source,
                })?;
            }
            out.flush().map_err(|source| RuntimeError::Io {
                context: "cannot flush output".into(),
                source,
            })?;
        }
        Sink::Kafka => {
            let topic = cli.kafka.topic(TopicRole::Raw);
            seqmon_runtime::kafka::preflight(&cli.kafka, cli.kafka.connect_timeout())?;
            let producer: ThreadedProducer<CheckedDelivery> = cli
                .kafka
                .producer_config()
                .set("enable.idempotence", "true")
                .set("linger.ms", "10")
                .create_with_context(CheckedDelivery::default())
                .map_err(RuntimeError::kafka("create producer"))?;
            for r in &sim.records {
                pace(first, r.sent_time_ms, started);
                send_raw(&producer, &cli, &topic, r, r.sent_time_ms + 100)?;
            }
            producer
                .flush(Duration::from_secs(60))
                .map_err(RuntimeError::kafka("flush"))?;
            producer.context().check("produce")?;
            tracing::info!(%topic, records = sim.records.len(), elapsed_ms = started.elapsed().as_millis() as u64, "produced");
        }
    }
    tracing::info!(
        records = sim.records.len(),
        faults = sim.faults.len(),
        "simulation written"
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `--live`: produce each record when the wall clock reaches its event time.
fn live(cli: &Cli) -> Result<(), RuntimeError> {
    let start = (now_ms() / 1000 + 1) * 1000;
    let mut fleet = Fleet::new(&FleetConfig {
        instruments: cli.instruments,
        duration_hours: cli.duration_hours,
        sample_interval_s: cli.sample_interval_s,
        seed: cli.seed,
        start_time_ms: start,
        bad_record_share: cli.bad_record_share,
        faults: !cli.no_faults,
        sensor_glitches: !cli.no_glitches,
    })
    .without_json();
    let topic = cli.kafka.topic(TopicRole::Raw);
    seqmon_runtime::kafka::preflight(&cli.kafka, cli.kafka.connect_timeout())?;
    let producer: ThreadedProducer<CheckedDelivery> = cli
        .kafka
        .producer_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(CheckedDelivery::default())
        .map_err(RuntimeError::kafka("create producer"))?;
    let spread = i64::from(cli.sample_interval_s) * 1000;
    let (mut produced, mut max_behind_ms) = (0u64, 0i64);
    tracing::info!(%topic, instruments = cli.instruments, start_ms = start, "live replay started");
    while let Some(tick) = fleet.next_tick(spread) {
        for (due, r) in tick {
            let ahead = due - now_ms();
            if ahead > 0 {
                std::thread::sleep(Duration::from_millis(ahead as u64));
            }
            max_behind_ms = max_behind_ms.max(now_ms() - due);
            send_raw(&producer, cli, &topic, &r, due)?;
            produced += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(RuntimeError::kafka("flush"))?;
    producer.context().check("produce")?;
    tracing::info!(%topic, records = produced, max_behind_ms, "live replay finished");
    Ok(())
}
