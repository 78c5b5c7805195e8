//! Administration: `seqmon-admin create-topics` creates every catalogue topic, idempotently;
//! `seqmon-admin topics` prints the catalogue.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use seqmon_model::topics::{topic_config, Cleanup, CATALOGUE};
use seqmon_runtime::config::KafkaConnection;

#[derive(Parser)]
#[command(version, about = "Administration of the sequencer-monitoring topics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Print the topic catalogue.
    Topics,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    match Cli::parse().command {
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
            kafka,
            partitions,
            replication_factor,
        } => {
            if let Err(e) = kafka.validate() {
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
            let configs: Vec<Vec<(&str, String)>> = CATALOGUE.iter().map(topic_config).collect();
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
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
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
