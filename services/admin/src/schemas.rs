//! `seqmon-admin schemas`: the catalogue's schemas in a schema registry with the
//! Confluent-compatible REST API, for the Kafka ecosystem (Kafka Connect, ksqlDB, kcat -s avro).
//!
//! `publish` registers every schema version of every offered topic (analysis side, no state
//! changelogs) under `<prefix><topic>-value`, oldest first, with compatibility BACKWARD per
//! subject; it is idempotent (a version already there is looked up and reported as `exists`).
//! `list` prints, per offered subject, its compatibility and every registry version with the
//! schema version of ours it is (or `not ours`).
//!
//! Exit codes: 0 done; 1 the registry could not be reached or refused a request (the message
//! names the request; nothing may have been registered, or part: running it again finishes);
//! 2 bad configuration (the message names the setting).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use seqmon_model::schema_store::RegistryIds;
use seqmon_model::topics::TopicRole;
use seqmon_runtime::config::Secret;
use seqmon_runtime::schema_registry::{self, RegistryClient, RegistryError};

/// `seqmon-admin schemas ...`.
#[derive(Args)]
pub struct SchemasArgs {
    #[command(subcommand)]
    command: SchemasCommand,
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Register every schema version of the offered topics (idempotent); prints subject,
    /// registry version, id, schema version and whether it was new.
    Publish(RegistryArgs),
    /// Print the offered subjects as the registry holds them.
    List(RegistryArgs),
}

/// Where the registry is.
#[derive(Args)]
struct RegistryArgs {
    /// Schema registry with the Confluent-compatible REST API, `http://host:port[/path]`
    /// (Apicurio: `.../apis/ccompat/v7`).
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_URL")]
    registry_url: String,
    /// Prefix of every topic name (subjects are `<prefix><topic>-value`).
    #[arg(long, env = "SEQMON_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// User name for HTTP basic authentication.
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Password for HTTP basic authentication.
    #[arg(long, env = "SEQMON_SCHEMA_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<Secret>,
    /// Timeout of each request, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

impl RegistryArgs {
    fn client(&self) -> Result<RegistryClient, String> {
        if self
            .topic_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err("--topic-prefix: may hold only letters, digits, '.', '_' and '-'".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("--username: a password is set without a user name".into());
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err("--timeout-ms: must be 100..=600000".into());
        }
        let empty = Secret::default();
        let user = self
            .username
            .as_deref()
            .map(|u| (u, self.password.as_ref().unwrap_or(&empty)));
        RegistryClient::new(
            &self.registry_url,
            user,
            Duration::from_millis(self.timeout_ms),
        )
        .map_err(|e| format!("--registry-url: {e}"))
    }
}

/// Runs `seqmon-admin schemas`.
pub async fn run(args: SchemasArgs) -> ExitCode {
    let (registry, publish) = match &args.command {
        SchemasCommand::Publish(r) => (r, true),
        SchemasCommand::List(r) => (r, false),
    };
    let client = match registry.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = if publish {
        publish_command(&client, &registry.topic_prefix).await
    } else {
        list_command(&client, &registry.topic_prefix).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: schema registry {}: {e}", client.url());
            ExitCode::FAILURE
        }
    }
}

async fn publish_command(client: &RegistryClient, prefix: &str) -> Result<(), RegistryError> {
    let subjects = schema_registry::publish(client, prefix).await?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) only ends the listing: everything is registered already.
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>8}  {:<24} status",
        "subject", "version", "id", "schema"
    );
    let (mut new, mut existing) = (0, 0);
    for s in &subjects {
        if let Err(why) = &s.compatibility {
            eprintln!(
                "warning: {}: the registry refused compatibility {}: {why}",
                s.subject,
                schema_registry::COMPATIBILITY
            );
        }
        for v in &s.versions {
            let _ = writeln!(
                out,
                "{:<34} {:>8} {:>8}  {:<24} {}",
                v.subject,
                v.registry_version,
                v.id,
                format!("{} v{}", v.schema_name, v.schema_version),
                if v.new { "registered" } else { "exists" }
            );
            if v.new {
                new += 1;
            } else {
                existing += 1;
            }
        }
    }
    eprintln!(
        "{} subjects: {new} versions registered, {existing} already there",
        subjects.len()
    );
    Ok(())
}

async fn list_command(client: &RegistryClient, prefix: &str) -> Result<(), RegistryError> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    if writeln!(
        out,
        "{:<34} {:>8} {:>8}  {:<24} compatibility",
        "subject", "version", "id", "schema"
    )
    .is_err()
    {
        return Ok(());
    }
    for role in TopicRole::ALL
        .into_iter()
        .filter(|r| schema_registry::offered(*r))
    {
        let subject = schema_registry::subject(prefix, role);
        let Some(versions) = client.versions(&subject).await? else {
            if writeln!(
                out,
                "{subject:<34} {:>8} {:>8}  {:<24} -",
                "-", "-", "(no subject)"
            )
            .is_err()
            {
                return Ok(());
            }
            continue;
        };
        let compatibility = client
            .compatibility(&subject)
            .await?
            .unwrap_or_else(|| "(registry default)".into());
        for v in versions {
            let r = client.version(&subject, v).await?;
            // A fresh map per schema: one id's answer cannot conflict with another's here.
            let ours = RegistryIds::default()
                .add(r.id, &r.schema)
                .map(|e| format!("{} v{}", e.name, e.version))
                .unwrap_or_else(|_| "not ours".into());
            if writeln!(
                out,
                "{subject:<34} {:>8} {:>8}  {ours:<24} {compatibility}",
                r.version, r.id
            )
            .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}
