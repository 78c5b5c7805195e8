//! `collector`: reads Illumina run folders and sends their telemetry, outbound only: to the raw
//! topic over Kafka (TLS and client certificates through the usual KAFKA_* settings) or as JSON
//! lines. It opens no listening socket.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use seqmon_collector::collect::collect_run_with;
use seqmon_collector::consent::ConsentOverride;
use seqmon_collector::files::{Limits, MIB};
use seqmon_collector::spool::Spool;
use seqmon_collector::upload::{Drained, GatewayClient, Uploader};
use seqmon_collector::watch::Watcher;
use seqmon_model::encode;
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::RuntimeError;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sink {
    /// Produce to the raw telemetry topic.
    Kafka,
    /// Write JSON lines.
    File,
    /// POST batches to the ingest gateway at this URL (through HTTPS_PROXY if set).
    Https(String),
}

/// `kafka`, `file` or `https://host[:port][/path]` (path `/v1/telemetry` when none is given).
/// Plain `http://` is refused: telemetry never leaves the site unencrypted.
fn parse_sink(s: &str) -> Result<Sink, String> {
    match s {
        "kafka" => Ok(Sink::Kafka),
        "file" => Ok(Sink::File),
        url if url.starts_with("https://") => {
            let rest = &url["https://".len()..];
            if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
                return Err(format!("{url:?} names no host"));
            }
            // No path, or just "/", means the gateway's write path.
            Ok(Sink::Https(match rest.split_once('/') {
                Some((_, path)) if !path.is_empty() => url.to_string(),
                _ => format!("https://{}/v1/telemetry", rest.trim_end_matches('/')),
            }))
        }
        url if url.starts_with("http://") => Err(
            "plain http:// is refused: use the gateway's https:// address (a proxy goes in HTTPS_PROXY)".into(),
        ),
        other => Err(format!("{other:?}: expected kafka, file or an https:// URL")),
    }
}

/// Collect instrument and run telemetry from Illumina run folders.
///
/// Settings come from flags, then environment variables, then `<VAR>_FILE` files (a secret's
/// value read from a file), then the --config TOML file (keys: the flags' long names with `_`).
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the settings (flags, environment, *_FILE secrets, --config file) and the files and
    /// folders they name, without reading runs or sending anything. Exit 0 with a summary, or 2
    /// naming the first bad setting.
    Validate(Box<Settings>),
}

/// What the collector reads and where it sends it.
#[derive(Debug, Args)]
struct Settings {
    /// TOML file of settings (keys: the long flag names with `_` for `-`; `<key>_file` reads a
    /// value from a file). Flags and environment variables override it.
    #[arg(long, env = "COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Run folder(s) to collect once, as finished runs (instead of --watch, even when a
    /// settings file names one).
    #[arg(long = "run-folder")]
    run_folders: Vec<PathBuf>,
    /// Watch this folder of runs while instruments write them: send each completed cycle once.
    #[arg(long, env = "COLLECTOR_WATCH")]
    watch: Option<PathBuf>,
    /// Where the watcher keeps its position (what it has sent), one file per run; absolute, so
    /// a restart from another working directory neither re-sends nor skips.
    #[arg(
        long,
        env = "COLLECTOR_STATE_DIR",
        default_value = "/var/lib/seqmon-collector/state"
    )]
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
    /// Where records go: `file`, `kafka`, or the ingest gateway's `https://` URL.
    #[arg(long, env = "COLLECTOR_TO", default_value = "file", value_parser = parse_sink)]
    to: Sink,
    /// CA certificate (PEM) of the ingest gateway's server certificate, with `--to https://`;
    /// no public root is trusted.
    #[arg(long, env = "COLLECTOR_GATEWAY_CA")]
    gateway_ca: Option<PathBuf>,
    /// This site's client certificate (PEM), with `--to https://`.
    #[arg(long, env = "COLLECTOR_CLIENT_CERT")]
    client_cert: Option<PathBuf>,
    /// This site's client private key (PEM), with `--to https://`.
    #[arg(long, env = "COLLECTOR_CLIENT_KEY")]
    client_key: Option<PathBuf>,
    /// Where batches wait for the gateway (kept across restarts), with `--to https://`.
    #[arg(
        long,
        env = "COLLECTOR_SPOOL_DIR",
        default_value = "/var/lib/seqmon-collector/spool"
    )]
    spool_dir: PathBuf,
    /// Most MiB of batches kept while the gateway is unreachable; beyond it the oldest are
    /// dropped and counted (spool `dropped-records`).
    #[arg(long, env = "COLLECTOR_SPOOL_MAX_MIB", default_value_t = 512)]
    spool_max_mib: u64,
    /// Most records per batch sent to the gateway.
    #[arg(long, env = "COLLECTOR_BATCH_RECORDS", default_value_t = 500)]
    batch_records: usize,
    /// Most KiB per batch sent to the gateway: below the gateway's --max-body-bytes (8 MiB by
    /// default), which refuses larger bodies for good.
    #[arg(long, env = "COLLECTOR_BATCH_MAX_KIB", default_value_t = 4096)]
    batch_max_kib: u64,
    /// Seconds one HTTPS request may take.
    #[arg(long, env = "COLLECTOR_REQUEST_TIMEOUT_S", default_value_t = 60)]
    request_timeout_s: u64,
    /// Without --watch (or with --once): seconds to keep retrying before exiting with the
    /// batches still spooled (they go out on the next run).
    #[arg(long, env = "COLLECTOR_SEND_TIMEOUT_S", default_value_t = 600)]
    send_timeout_s: u64,
    /// JSON-lines file (`-` for stdout), with `--to file`.
    #[arg(long, default_value = "-")]
    output: String,
    #[command(flatten)]
    kafka: KafkaConnection,
}

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    seqmon_runtime::service::exit_code(parse().and_then(|cli| match cli.command {
        Some(Command::Validate(settings)) => validate(*settings),
        None => run(cli.settings),
    }))
}

/// The command line over the environment, `*_FILE` secrets and the --config file.
fn parse() -> Result<Cli, RuntimeError> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config =
        config_path(&args).or_else(|| std::env::var_os("COLLECTOR_CONFIG").map(PathBuf::from));
    // The subcommand's settings read the same variables as the top level's.
    let applied = seqmon_runtime::config_file::apply(&Cli::command(), config.as_deref())?;
    if let Some(config) = &config {
        tracing::info!(config = %config.display(), settings = ?applied, "settings file read");
    }
    // Built again: clap takes the environment's values when a command is built.
    let matches = Cli::command().get_matches_from(args);
    Cli::from_arg_matches(&matches).map_err(|e| e.exit())
}

/// The value of `--config` (or `--config=`) on the command line, before clap parses it.
fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        // Another argument that is not UTF-8 (a run folder's name) says nothing about --config.
        let Some(a) = a.to_str() else { continue };
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
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
    /// Batches spooled on disk and sent to the ingest gateway; most records and bytes per
    /// batch.
    Https(Spool, Uploader, usize, usize),
}

impl Out {
    fn open(cli: &Settings) -> Result<Out, RuntimeError> {
        Ok(match &cli.to {
            Sink::Https(url) => {
                let uploader = uploader(cli, url)?;
                let spool = Spool::open(&cli.spool_dir, cli.spool_max_mib.saturating_mul(MIB))
                    .map_err(|source| RuntimeError::Io {
                        context: format!("cannot use --spool-dir {}", cli.spool_dir.display()),
                        source,
                    })?;
                Out::Https(
                    spool,
                    uploader,
                    cli.batch_records,
                    usize::try_from(cli.batch_max_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
                )
            }
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
                    .producer_config()
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

    /// Sends and waits until every record is delivered (flushed or acknowledged); with the
    /// gateway, until every record is spooled on disk (delivery is [`Out::deliver`]'s).
    fn send(&mut self, records: &[seqmon_model::Telemetry]) -> Result<(), RuntimeError> {
        match self {
            Out::Https(spool, _, most_records, most_bytes) => {
                let mut spool_frame = |values: &[(&str, i64, Vec<u8>)]| {
                    let mut frame = seqmon_model::ingest::begin(values.len() as u32);
                    for (key, ts, value) in values {
                        seqmon_model::ingest::push(&mut frame, key, *ts, value);
                    }
                    spool
                        .push(&frame)
                        .map(|_| ())
                        .map_err(|source| RuntimeError::Io {
                            context: "cannot write to the spool".into(),
                            source,
                        })
                };
                // Greedy batches: at most --batch-records records and --batch-max-kib bytes
                // (a single larger record still goes alone).
                let mut pending: Vec<(&str, i64, Vec<u8>)> = Vec::new();
                let mut bytes = 0usize;
                for r in records {
                    let value = encode(r).map_err(|e| RuntimeError::Internal(e.to_string()))?;
                    let size = value.len() + r.instrument_serial.len() + 14;
                    if !pending.is_empty()
                        && (pending.len() >= *most_records || bytes + size > *most_bytes)
                    {
                        spool_frame(&pending)?;
                        pending.clear();
                        bytes = 0;
                    }
                    bytes += size;
                    // The record's Kafka timestamp is when it leaves, never later than now: a
                    // run folder dated ahead of this clock must not make the broker refuse it.
                    pending.push((&r.instrument_serial, r.sent_time_ms.min(now_ms()), value));
                }
                if !pending.is_empty() {
                    spool_frame(&pending)?;
                }
                Ok(())
            }
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

impl Out {
    /// Sends what is spooled until it is all delivered or `until` passes (HTTPS only; the other
    /// sinks deliver in [`Out::send`]). Returns the batches still waiting.
    fn deliver(&mut self, until: Instant, stop: &AtomicBool) -> Result<usize, RuntimeError> {
        let Out::Https(spool, uploader, _, _) = self else {
            return Ok(0);
        };
        let drained = uploader
            .drain(spool, until, stop)
            .map_err(|source| RuntimeError::Io {
                context: "cannot read the spool".into(),
                source,
            })?;
        Ok(match drained {
            Drained::Empty => 0,
            Drained::Waiting(n) => n,
        })
    }
}

/// One-shot runs: keeps delivering the spool for up to --send-timeout-s; what is still waiting
/// then stays spooled for the next run, and the run fails saying so.
fn finish_delivery(out: &mut Out, cli: &Settings, stop: &AtomicBool) -> Result<(), RuntimeError> {
    let until = Instant::now() + Duration::from_secs(cli.send_timeout_s);
    match out.deliver(until, stop)? {
        0 => Ok(()),
        waiting => Err(RuntimeError::Internal(format!(
            "{waiting} batch(es) not delivered within --send-timeout-s {}; they stay in --spool-dir {} and go out on the next run",
            cli.send_timeout_s,
            cli.spool_dir.display()
        ))),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The HTTPS client for the ingest gateway at `url`: reads and checks the CA, certificate and
/// key files; connects to nothing.
fn uploader(cli: &Settings, url: &str) -> Result<Uploader, RuntimeError> {
    let need = |v: &Option<PathBuf>, setting: &str| {
        v.clone().ok_or_else(|| RuntimeError::Config {
            setting: setting.into(),
            message: "required with --to https://".into(),
        })
    };
    let client = GatewayClient {
        url: url.to_string(),
        ca: need(&cli.gateway_ca, "--gateway-ca / COLLECTOR_GATEWAY_CA")?,
        cert: need(&cli.client_cert, "--client-cert / COLLECTOR_CLIENT_CERT")?,
        key: need(&cli.client_key, "--client-key / COLLECTOR_CLIENT_KEY")?,
        timeout: Duration::from_secs(cli.request_timeout_s),
    };
    Uploader::new(&client).map_err(|e| RuntimeError::Config {
        setting: e.setting.into(),
        message: e.message,
    })
}

/// `collector validate`: every check of a start, without reading a run, creating a directory
/// or connecting anywhere; prints what it would do.
fn validate(mut cli: Settings) -> Result<(), RuntimeError> {
    checked(&mut cli)?;
    let bad = |setting: &str, message: String| RuntimeError::Config {
        setting: setting.into(),
        message,
    };
    let readable_dir = |dir: &Path, setting: &str| {
        std::fs::read_dir(dir)
            .map(|_| ())
            .map_err(|e| bad(setting, format!("{}: {e}", dir.display())))
    };
    // A directory the collector will create and write: absolute, and either a directory already
    // or below one.
    let writable_dir = |dir: &Path, setting: &str| {
        if !dir.is_absolute() {
            return Err(bad(
                setting,
                format!("{} is not an absolute path", dir.display()),
            ));
        }
        match dir.ancestors().find(|a| a.exists()) {
            Some(a) if a.is_dir() => Ok(()),
            Some(a) => Err(bad(setting, format!("{} is not a directory", a.display()))),
            None => Err(bad(setting, format!("no part of {} exists", dir.display()))),
        }
    };
    let mut plan = Vec::new();
    if let Some(dir) = &cli.watch {
        readable_dir(dir, "--watch / COLLECTOR_WATCH")?;
        writable_dir(&cli.state_dir, "--state-dir / COLLECTOR_STATE_DIR")?;
        plan.push(format!(
            "watch {} every {} s, position in {}",
            dir.display(),
            cli.poll_interval_s,
            cli.state_dir.display()
        ));
    }
    for folder in &cli.run_folders {
        readable_dir(folder, "--run-folder")?;
        plan.push(format!("collect {}", folder.display()));
    }
    match &cli.to {
        Sink::Https(url) => {
            uploader(&cli, url)?;
            writable_dir(&cli.spool_dir, "--spool-dir / COLLECTOR_SPOOL_DIR")?;
            plan.push(format!(
                "send to {url} (client certificate {}), spooled in {} up to {} MiB",
                cli.client_cert
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display(),
                cli.spool_dir.display(),
                cli.spool_max_mib
            ));
        }
        Sink::Kafka => plan.push(format!(
            "produce to {} at {} ({:?})",
            cli.kafka.topic(seqmon_model::topics::TopicRole::Raw),
            cli.kafka.bootstrap_servers,
            cli.kafka.security_protocol
        )),
        Sink::File => plan.push(format!("write JSON lines to {}", cli.output)),
    }
    if let Some(c) = cli.consent_override {
        plan.push(format!("consent override: {c:?}"));
    }
    println!("configuration valid");
    for line in plan {
        println!("  {line}");
    }
    Ok(())
}

/// Checks the settings that need no I/O beyond reading the files they name (Kafka properties
/// files), and gives the reading limits.
fn checked(cli: &mut Settings) -> Result<Limits, RuntimeError> {
    // Checked here, not by clap: --watch may come from the environment or the settings file.
    if cli.run_folders.is_empty() && cli.watch.is_none() {
        return Err(RuntimeError::Config {
            setting: "--run-folder / --watch (COLLECTOR_WATCH)".into(),
            message: "one is required: run folders to collect once, or a folder to watch".into(),
        });
    }
    if !cli.run_folders.is_empty() {
        cli.watch = None;
    }
    if cli.poll_interval_s == 0 {
        return Err(RuntimeError::Config {
            setting: "--poll-interval-s / COLLECTOR_POLL_INTERVAL_S".into(),
            message: "must be positive".into(),
        });
    }
    if matches!(cli.to, Sink::Https(_)) {
        for (value, setting) in [
            (
                cli.spool_max_mib,
                "--spool-max-mib / COLLECTOR_SPOOL_MAX_MIB",
            ),
            (
                cli.batch_records as u64,
                "--batch-records / COLLECTOR_BATCH_RECORDS",
            ),
            (
                cli.batch_max_kib,
                "--batch-max-kib / COLLECTOR_BATCH_MAX_KIB",
            ),
            (
                cli.request_timeout_s,
                "--request-timeout-s / COLLECTOR_REQUEST_TIMEOUT_S",
            ),
            (
                cli.send_timeout_s,
                "--send-timeout-s / COLLECTOR_SEND_TIMEOUT_S",
            ),
        ] {
            if value == 0 {
                return Err(RuntimeError::Config {
                    setting: setting.into(),
                    message: "must be positive".into(),
                });
            }
        }
    }
    if cli.max_xml_mib == 0 || cli.max_interop_mib == 0 {
        return Err(RuntimeError::Config {
            setting: "--max-xml-mib / --max-interop-mib".into(),
            message: "must be positive".into(),
        });
    }
    if cli.to == Sink::Kafka {
        cli.kafka.validate()?;
        cli.kafka.load_files()?;
    }
    Ok(Limits {
        xml_max_bytes: cli.max_xml_mib.saturating_mul(MIB),
        interop_max_bytes: cli.max_interop_mib.saturating_mul(MIB),
        ..Limits::default()
    })
}

fn run(mut cli: Settings) -> Result<(), RuntimeError> {
    let limits = checked(&mut cli)?;
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
                return finish_delivery(&mut out, &cli, &stop);
            }
            // Spooled batches go out (with backoff while offline) until the next poll.
            let next_poll = Instant::now() + Duration::from_secs(cli.poll_interval_s);
            out.deliver(next_poll, &stop)?;
            while Instant::now() < next_poll {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!(
                        "stopping: everything sent or spooled is recorded in the state directory"
                    );
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
                // Per file: read, skipped on purpose (why) or refused (why).
                for f in &c.files {
                    match f.outcome {
                        seqmon_collector::collect::FileOutcome::Refused(_) => {
                            tracing::warn!("{f}")
                        }
                        _ => tracing::info!("{f}"),
                    }
                }
                for e in c
                    .file_errors
                    .iter()
                    .filter(|e| !c.files.iter().any(|f| f.file == e.file()))
                {
                    tracing::warn!(error = %e, "metric file refused");
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
        "{}",
        if matches!(cli.to, Sink::Https(_)) {
            "spooled for the gateway"
        } else {
            "sent"
        }
    );
    if matches!(cli.to, Sink::Https(_)) {
        let stop = seqmon_runtime::service::shutdown_flag()?;
        finish_delivery(&mut out, &cli, &stop)?;
    }
    if unreadable > 0 {
        // What could be read was sent; a folder that could not be read is still a failure.
        return Err(RuntimeError::Internal(format!(
            "{unreadable} run folder(s) could not be read"
        )));
    }
    Ok(())
}
