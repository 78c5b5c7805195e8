//! `collector`: reads Illumina run folders and sends their telemetry, outbound only: to the raw
//! topic over Kafka (TLS and client certificates through the usual KAFKA_* settings) or as JSON
//! lines. It opens no listening socket.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use seqmon_collector::collect::collect_run;
use seqmon_collector::consent::ConsentOverride;
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
    /// Run folder(s) to collect.
    #[arg(long = "run-folder", required = true)]
    run_folders: Vec<PathBuf>,
    /// Operator override of the instruments' performance-data consent setting.
    #[arg(long, env = "COLLECTOR_CONSENT_OVERRIDE", value_enum)]
    consent_override: Option<ConsentOverride>,
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RuntimeError::Config { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), RuntimeError> {
    if cli.to == Sink::Kafka {
        cli.kafka.validate()?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut records = Vec::new();
    for folder in &cli.run_folders {
        match collect_run(folder, cli.consent_override, now) {
            Ok(c) => {
                for e in &c.file_errors {
                    tracing::warn!(error = %e, "metric file skipped");
                }
                tracing::info!(folder = %folder.display(), consent = ?c.consent, records = c.records.len(), "run folder collected");
                records.extend(c.records);
            }
            Err(e) => tracing::error!(error = %e, "run folder skipped"),
        }
    }
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
            for r in &records {
                let line =
                    serde_json::to_string(r).map_err(|e| RuntimeError::Internal(e.to_string()))?;
                writeln!(out, "{line}").map_err(|source| RuntimeError::Io {
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
            let topic = cli.kafka.topic("raw");
            let producer: ThreadedProducer<DefaultProducerContext> = cli
                .kafka
                .client_config()
                .set("enable.idempotence", "true")
                .create()
                .map_err(RuntimeError::kafka("create producer"))?;
            for r in &records {
                let bytes = encode(r).map_err(|e| RuntimeError::Internal(e.to_string()))?;
                let mut rec = BaseRecord::to(&topic)
                    .key(r.instrument_serial.as_bytes())
                    .payload(bytes.as_slice())
                    .timestamp(r.sent_time_ms);
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                            back,
                        )) => {
                            rec = back;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err((e, _)) => {
                            return Err(RuntimeError::Kafka {
                                operation: "produce",
                                source: e,
                            })
                        }
                    }
                }
            }
            producer
                .flush(Duration::from_secs(60))
                .map_err(RuntimeError::kafka("flush"))?;
        }
    }
    tracing::info!(records = records.len(), "sent");
    Ok(())
}
