//! `collector`: reads Illumina run folders and sends their telemetry, outbound only: to the raw
//! topic over Kafka (TLS and client certificates through the usual KAFKA_* settings) or as JSON
//! lines. It opens no listening socket.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use seqmon_collector::collect::collect_run_with;
use seqmon_collector::consent::ConsentOverride;
use seqmon_collector::files::{Limits, MIB};
use seqmon_collector::watch::Watcher;
use seqmon_model::encode;
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::RuntimeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sink {
    /// Produce to the raw telemetry topic.
    Kafka,
    /// Write JSON lines.
    File,
}

/// Collect instrument and run telemetry from Illumina run folders.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run folder(s) to collect once, as finished runs.
    #[arg(
        long = "run-folder",
        required_unless_present = "watch",
        conflicts_with = "watch"
    )]
    run_folders: Vec<PathBuf>,
    /// Watch this folder of runs while instruments write them: send each completed cycle once.
    #[arg(long, env = "COLLECTOR_WATCH")]
    watch: Option<PathBuf>,
    /// Where the watcher keeps its position (what it has sent), one file per run.
    #[arg(long, env = "COLLECTOR_STATE_DIR", default_value = "collector-state")]
    state_dir: PathBuf,
    /// Seconds between polls of the watched folder.
    #[arg(long, env = "COLLECTOR_POLL_INTERVAL_S", default_value_t = 30)]
    poll_interval_s: u64,
    /// Poll the watched folder once and exit.
    #[arg(long)]
    once: bool,
    /// Operator override of the instruments' performance-data consent setting.
    #[arg(long, env = "COLLECTOR_CONSENT_OVERRIDE", value_enum)]
    consent_override: Option<ConsentOverride>,
    /// Largest RunInfo.xml / RunParameters.xml read, in MiB; a larger file is refused.
    #[arg(long, env = "COLLECTOR_MAX_XML_MIB", default_value_t = Limits::default().xml_max_bytes / MIB)]
    max_xml_mib: u64,
    /// Largest InterOp file read, in MiB; a larger file is refused (reported, not read).
    #[arg(long, env = "COLLECTOR_MAX_INTEROP_MIB", default_value_t = Limits::default().interop_max_bytes / MIB)]
    max_interop_mib: u64,
    /// Where records go.
    #[arg(long, value_enum, default_value = "file")]
    to: Sink,
    /// JSON-lines file (`-` for stdout), with `--to file`.
    #[arg(long, default_value = "-")]
    output: String,
    #[command(flatten)]
    kafka: KafkaConnection,
}

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    seqmon_runtime::service::exit_code(run(Cli::parse()))
}

/// Where records go: a JSON-lines writer or a Kafka producer.
enum Out {
    File(Box<dyn Write>),
    /// Producer, `telemetry.raw`'s name, and the key ring that seals records (encryption at
    /// rest), if the deployment has one.
    Kafka(
        ThreadedProducer<seqmon_runtime::kafka::CheckedDelivery>,
        String,
        Option<seqmon_runtime::envelope::KeyRing>,
    ),
}

impl Out {
    fn open(cli: &Cli) -> Result<Out, RuntimeError> {
        Ok(match cli.to {
            Sink::File if cli.output == "-" => {
                Out::File(Box::new(std::io::BufWriter::new(std::io::stdout())))
            }
            Sink::File => Out::File(Box::new(std::io::BufWriter::new(
                std::fs::File::create(&cli.output).map_err(|source| RuntimeError::Io {
                    context: format!("cannot create --output {}", cli.output),
                    source,
                })?,
            ))),
            Sink::Kafka => {
                seqmon_runtime::kafka::preflight(&cli.kafka, cli.kafka.connect_timeout())?;
                let producer = cli
                    .kafka
                    .client_config()
                    .set("enable.idempotence", "true")
                    .create_with_context(seqmon_runtime::kafka::CheckedDelivery::default())
                    .map_err(RuntimeError::kafka("create producer"))?;
                Out::Kafka(
                    producer,
                    cli.kafka.topic(seqmon_model::topics::TopicRole::Raw),
                    cli.kafka.key_ring.clone(),
                )
            }
        })
    }

    /// Sends and waits until every record is delivered (flushed or acknowledged).
    fn send(&mut self, records: &[seqmon_model::Telemetry]) -> Result<(), RuntimeError> {
        match self {
            Out::File(out) => {
                for r in records {
                    let line = serde_json::to_string(r)
                        .map_err(|e| RuntimeError::Internal(e.to_string()))?;
                    writeln!(out, "{line}").map_err(|source| RuntimeError::Io {
                        context: "cannot write output".into(),
                        source,
                    })?;
                }
                out.flush().map_err(|source| RuntimeError::Io {
                    context: "cannot flush output".into(),
                    source,
                })
            }
            Out::Kafka(producer, topic, ring) => {
                for r in records {
                    let bytes = encode(r).map_err(|e| RuntimeError::Internal(e.to_string()))?;
                    let key = r.instrument_serial.as_bytes();
                    let (value, headers) = seqmon_runtime::kafka::outgoing(
                        ring.as_ref(),
                        seqmon_model::topics::TopicRole::Raw,
                        key,
                        &bytes,
                    );
                    let mut rec = BaseRecord::to(topic.as_str())
                        .key(key)
                        .payload(value.as_ref())
                        .timestamp(r.sent_time_ms);
                    if let Some(h) = headers {
                        rec = rec.headers(h);
                    }
                    seqmon_runtime::kafka::send(producer, rec)
                        .map_err(RuntimeError::kafka("produce"))?;
                }
                producer
                    .flush(Duration::from_secs(60))
                    .map_err(RuntimeError::kafka("flush"))?;
                // A record the broker refused (not authorized, too large) fails the run.
                producer.context().check("produce")
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run(mut cli: Cli) -> Result<(), RuntimeError> {
    if cli.to == Sink::Kafka {
        cli.kafka.validate()?;
        cli.kafka.load_files()?;
    }
    if cli.poll_interval_s == 0 {
        return Err(RuntimeError::Config {
            setting: "--poll-interval-s / COLLECTOR_POLL_INTERVAL_S".into(),
            message: "must be positive".into(),
        });
    }
    if cli.max_xml_mib == 0 || cli.max_interop_mib == 0 {
        return Err(RuntimeError::Config {
            setting: "--max-xml-mib / --max-interop-mib".into(),
            message: "must be positive".into(),
        });
    }
    let limits = Limits {
        xml_max_bytes: cli.max_xml_mib.saturating_mul(MIB),
        interop_max_bytes: cli.max_interop_mib.saturating_mul(MIB),
        ..Limits::default()
    };
    let mut out = Out::open(&cli)?;
    if let Some(dir) = &cli.watch {
        let watcher = Watcher::new(dir, &cli.state_dir, cli.consent_override)
            .map_err(|source| RuntimeError::Io {
                context: format!("cannot use --state-dir {}", cli.state_dir.display()),
                source,
            })?
            .with_limits(limits);
        let stop = seqmon_runtime::service::shutdown_flag()?;
        loop {
            let pending = watcher
                .pending(now_ms())
                .map_err(|source| RuntimeError::Io {
                    context: format!("cannot read --watch {}", dir.display()),
                    source,
                })?;
            for p in pending {
                out.send(&p.records)?;
                watcher
                    .mark_sent(&p.run_id, &p.records)
                    .map_err(|source| RuntimeError::Io {
                        context: "cannot write the collector state".into(),
                        source,
                    })?;
                tracing::info!(run_id = %p.run_id, records = p.records.len(), "sent new cycles");
            }
            if cli.once {
                return Ok(());
            }
            for _ in 0..cli.poll_interval_s * 10 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("stopping: everything sent is recorded in the state directory");
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let now = now_ms();
    let mut records = Vec::new();
    let mut unreadable = 0;
    let (mut files_skipped, mut files_partial) = (0, 0);
    for folder in &cli.run_folders {
        match collect_run_with(folder, cli.consent_override, now, &limits) {
            Ok(c) => {
                for e in &c.file_errors {
                    tracing::warn!(error = %e, "metric file skipped");
                }
                // Used, but not whole: the figures built from these files are partial.
                for w in &c.warnings {
                    tracing::warn!(warning = %w, "metric file partial");
                }
                files_skipped += c.file_errors.len();
                files_partial += c.warnings.len();
                let basis = c.consent.basis().map(|b| b.label()).unwrap_or("NONE");
                tracing::info!(folder = %folder.display(), consent = ?c.consent, consent_basis = basis, records = c.records.len(), skipped = c.file_errors.len(), partial = c.warnings.len(), "run folder collected");
                records.extend(c.records);
            }
            Err(e) => {
                tracing::error!(error = %e, "run folder skipped");
                unreadable += 1;
            }
        }
    }
    out.send(&records)?;
    tracing::info!(
        records = records.len(),
        metric_files_skipped = files_skipped,
        metric_file_warnings = files_partial,
        "sent"
    );
    if unreadable > 0 {
        // What could be read was sent; a folder that could not be read is still a failure.
        return Err(RuntimeError::Internal(format!(
            "{unreadable} run folder(s) could not be read"
        )));
    }
    Ok(())
}
