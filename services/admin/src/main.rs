//! Administration: `seqmon-admin create-topics` creates every catalogue topic, idempotently;
//! `seqmon-admin topics` prints the catalogue; `seqmon-admin acls` prints the ACLs that follow
//! from it (one principal per stage) or applies them with Kafka's own ACL command;
//! `seqmon-admin alert` lists alerts and acknowledges, snoozes, resolves or assigns them, and
//! diffs the alerts of two topic prefixes; `seqmon-admin tail` prints any topic as JSON lines;
//! `seqmon-admin replay` reprocesses a range of a topic into `replay.<name>.` topics;
//! `seqmon-admin backfill` loads recorded telemetry; `seqmon-admin export` writes a range of a
//! topic as Parquet or Avro files (export/); `seqmon-admin schemas` publishes the catalogue's
//! schemas to a schema registry and lists them.

mod alert;
mod backfill;
mod decode;
mod diff;
mod export;
mod progress;
mod replay;
mod schemas;
mod source;
mod tail;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use seqmon_model::topics::{topic_config_with, Cleanup, RawTimestamps, CATALOGUE};
use seqmon_runtime::config::KafkaConnection;

#[derive(Parser)]
#[command(version, about = "Administration of the sequencer-monitoring topics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--raw-timestamps`, mapped onto [`RawTimestamps`].
#[derive(Clone, Copy, clap::ValueEnum)]
enum RawTimestampsArg {
    Broker,
    Producer,
}

impl From<RawTimestampsArg> for RawTimestamps {
    fn from(a: RawTimestampsArg) -> Self {
        match a {
            RawTimestampsArg::Broker => RawTimestamps::Broker,
            RawTimestampsArg::Producer => RawTimestamps::Producer,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create every topic of the catalogue; topics that exist are left as they are.
    CreateTopics {
        #[command(flatten)]
        kafka: Box<KafkaConnection>,
        /// Partitions of every topic (the same for all, so co-partitioning holds).
        #[arg(long, env = "SEQMON_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, env = "SEQMON_REPLICATION_FACTOR", default_value_t = 1)]
        replication_factor: i32,
        /// Who stamps records on telemetry.raw: `broker` (LogAppendTime: the validator judges
        /// instrument clocks against the broker's) or `producer` (CreateTime: for simulations
        /// and backfills of recorded telemetry, which keep the times they were sent at).
        #[arg(
            long,
            env = "SEQMON_RAW_TIMESTAMPS",
            value_enum,
            default_value = "broker"
        )]
        raw_timestamps: RawTimestampsArg,
    },
    /// Print the topic catalogue.
    Topics,
    /// A topic as JSON lines: every record opened, decoded by its schema fingerprint and
    /// printed with its partition, offset, timestamp and key (read_committed; commits nothing).
    Tail(tail::TailArgs),
    /// A range of a topic as Parquet or Avro files in date directories, for pandas, DuckDB
    /// or Spark (docs/export.md).
    Export(export::ExportArgs),
    /// The service team's console: list alerts; acknowledge, snooze, resolve or assign one.
    Alert(alert::AlertArgs),
    /// Reprocess a range of a topic through a stage (or the chain) into `replay.<name>.` topics,
    /// deterministically, leaving production topics and groups alone.
    Replay(Box<replay::ReplayArgs>),
    /// Load recorded telemetry (JSON lines or Avro files) into telemetry.raw.
    Backfill(backfill::BackfillArgs),
    /// The catalogue's schemas in a schema registry (Confluent-compatible API): publish, list.
    Schemas(schemas::SchemasArgs),
    /// The ACLs of a deployment, derived from the topic catalogue: one principal per stage,
    /// each reading and writing only its own topics, groups and transactional ids.
    Acls {
        /// Prefix of every topic name, group and transactional id.
        #[arg(long, env = "SEQMON_TOPIC_PREFIX", default_value = "")]
        topic_prefix: String,
        /// How to print them: a table, or one argument line of Kafka's ACL command per ACL.
        #[arg(long, value_enum, default_value = "table")]
        format: AclFormat,
        /// Apply them: run Kafka's ACL command (`COMMAND ARGS... --add ...`, a few ACLs per run), e.g.
        /// `--apply "kafka-acls.sh --bootstrap-server host:9093 --command-config admin.properties"`.
        #[arg(long)]
        apply: Option<String>,
    },
}

/// Output format of `seqmon-admin acls`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AclFormat {
    /// Principal, resource, operation.
    Table,
    /// The arguments of `kafka-acls.sh` that add each ACL, one ACL a line.
    KafkaAcls,
    /// Per principal, Strimzi `KafkaUser` ACL entries as JSON without prefix (the Helm chart's
    /// `files/acls.json`).
    StrimziJson,
}

fn acls_command(topic_prefix: &str, format: AclFormat, apply: Option<&str>) -> ExitCode {
    use seqmon_model::acl::{acls, kafka_acls_batches, Resource};
    let all = acls(topic_prefix);
    if let Some(command) = apply {
        let mut words = command.split_whitespace();
        let Some(program) = words.next() else {
            eprintln!("error: invalid configuration: --apply: empty command");
            return ExitCode::from(2);
        };
        let base: Vec<&str> = words.collect();
        for batch in kafka_acls_batches(&all) {
            let status = std::process::Command::new(program)
                .args(&base)
                .args(&batch)
                .stdout(std::process::Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    eprintln!(
                        "error: {program} exited with {s} adding {}",
                        batch.join(" ")
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("error: cannot run {program}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        eprintln!("{} ACLs applied", all.len());
        return ExitCode::SUCCESS;
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let AclFormat::StrimziJson = format {
        let _ = out.write_all(seqmon_model::acl::strimzi_acls_json().as_bytes());
        return ExitCode::SUCCESS;
    }
    for acl in &all {
        // A closed pipe (`| head`) ends the listing quietly.
        let written = match format {
            AclFormat::KafkaAcls => writeln!(out, "{}", acl.kafka_acls_args().join(" ")),
            AclFormat::StrimziJson => Ok(()),
            AclFormat::Table => {
                let resource = match &acl.resource {
                    Resource::Topic(t) => format!("topic {t}"),
                    Resource::Group(g) => format!("group {g}"),
                    Resource::GroupPrefix(g) => format!("group {g}*"),
                    Resource::TransactionalIdPrefix(t) => format!("transactional-id {t}*"),
                    Resource::Cluster => "cluster".to_string(),
                };
                writeln!(
                    out,
                    "{:<18} {:<16} {}",
                    acl.principal.name(),
                    acl.operation.kafka_name(),
                    resource
                )
            }
        };
        if written.is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    match Cli::parse().command {
        Command::Alert(args) => alert::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Export(args) => export::run(args),
        Command::Replay(args) => replay::run(*args).await,
        Command::Backfill(args) => backfill::run(args),
        Command::Schemas(args) => schemas::run(args).await,
        Command::Acls {
            topic_prefix,
            format,
            apply,
        } => acls_command(&topic_prefix, format, apply.as_deref()),
        Command::Topics => {
            for t in CATALOGUE {
                let cleanup = match t.cleanup {
                    Cleanup::DeleteAfterHours(h) => format!("delete after {h} h"),
                    Cleanup::Compact => "compact".to_string(),
                    Cleanup::CompactDeleteAfterHours(h) => format!("compact, delete after {h} h"),
                };
                println!(
                    "{:<28} {:<20} {:<10?} {:<22} key: {} — {}",
                    t.name, t.schema, t.side, cleanup, t.key, t.doc
                );
            }
            ExitCode::SUCCESS
        }
        Command::CreateTopics {
            mut kafka,
            partitions,
            replication_factor,
            raw_timestamps,
        } => {
            if let Err(e) = kafka.validate().and_then(|()| kafka.load_files()) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            if let Err(e) = seqmon_runtime::kafka::preflight(&kafka, kafka.connect_timeout()) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            if !(1..=1000).contains(&partitions) || !(1..=10).contains(&replication_factor) {
                eprintln!("error: invalid configuration: --partitions must be 1..=1000 and --replication-factor 1..=10");
                return ExitCode::from(2);
            }
            let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: cannot create Kafka admin client: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let names: Vec<String> = CATALOGUE.iter().map(|t| kafka.topic(t.role)).collect();
            let configs: Vec<Vec<(&str, String)>> = CATALOGUE
                .iter()
                .map(|t| topic_config_with(t, raw_timestamps.into()))
                .collect();
            let new_topics: Vec<NewTopic> = CATALOGUE
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let mut t = NewTopic::new(
                        &names[i],
                        partitions,
                        TopicReplication::Fixed(replication_factor),
                    );
                    for (k, v) in &configs[i] {
                        t = t.set(k, v);
                    }
                    t
                })
                .collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            match admin.create_topics(&new_topics, &opts).await {
                Ok(results) => {
                    let mut failed = false;
                    for r in results {
                        match r {
                            Ok(name) => tracing::info!(topic = %name, partitions, "created"),
                            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                                tracing::info!(topic = %name, "exists")
                            }
                            Err((name, code)) => {
                                tracing::error!(topic = %name, error = %code, "cannot create topic");
                                failed = true;
                            }
                        }
                    }
                    if failed {
                        return ExitCode::FAILURE;
                    }
                    // Created is not yet usable: a service started right after this command
                    // must find every topic and a leader for every partition.
                    match seqmon_runtime::kafka::wait_topics_ready(
                        &kafka,
                        &names,
                        Duration::from_secs(30),
                    ) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: creating topics failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ago_are_values_not_flags() {
        // `--from-time -7d` as the docs write it, without `=`.
        for args in [
            &[
                "seqmon-admin",
                "tail",
                "features",
                "--from-time",
                "-7d",
                "--until-time",
                "-1h",
            ][..],
            &[
                "seqmon-admin",
                "export",
                "features",
                "--out",
                "d",
                "--format",
                "parquet",
                "--from-time",
                "-7d",
                "--until-time",
                "-1d",
            ],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
