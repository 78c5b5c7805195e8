//! `seqmon-pipeline`: the six stages in one process, fed by the fleet simulator (default) or a
//! telemetry JSON-lines file, printing alerts and maintenance entries as they come and ending
//! with one JSON summary line. What `make run` runs. On the simulated fleet a simulated service
//! team answers the alerts (acknowledges, assigns, snoozes, resolves; see
//! `seqmon_pipeline::service_team`), so the whole alert lifecycle shows.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use seqmon_model::topics::TopicRole;
use seqmon_pipeline::service_team::ServiceTeam;
use seqmon_pipeline::{default_chain, historic_chain, iso_time, summarize, Collected};
use seqmon_runtime::file::json_line_to_avro;
use seqmon_runtime::RuntimeError;
use seqmon_simulator::{simulate, FleetConfig};

/// One input record: key, Avro bytes and, when known, its send time.
type Input = (String, Vec<u8>, Option<i64>);

/// Run the whole pipeline in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Instruments in the simulated fleet.
    #[arg(long, default_value_t = 24)]
    instruments: usize,
    /// Hours of event time to simulate (forecasts need a day of history, so two days show them).
    #[arg(long, default_value_t = 48.0)]
    duration_hours: f64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of bad records (0..1).
    #[arg(long, default_value_t = 0.01)]
    bad_record_share: f64,
    /// Seconds of event time between sensor samples.
    #[arg(long, default_value_t = 60)]
    sample_interval_s: u32,
    /// A fault-free control fleet: every alert is a false one.
    #[arg(long)]
    no_faults: bool,
    /// Read telemetry JSON lines from this file instead of simulating.
    #[arg(long, conflicts_with = "run_folder")]
    input: Option<String>,
    /// Collect this Illumina run folder (repeatable) instead of simulating. Historic runs are
    /// accepted whatever their age.
    #[arg(long = "run-folder")]
    run_folder: Vec<std::path::PathBuf>,
    /// Print only the summary line.
    #[arg(long)]
    quiet: bool,
    /// No simulated service team: alerts are left unanswered (then they escalate).
    #[arg(long)]
    no_service_team: bool,
    /// Deliver the alerts to this Alertmanager as well (repeatable), as the alert dispatcher
    /// does, e.g. one started with tools/alertmanager/alertmanager.sh start.
    #[arg(long = "alertmanager-url")]
    alertmanager_urls: Vec<String>,
    /// Deliver the alerts to these webhooks as well (docs/alerting.md has the file's format).
    #[arg(long)]
    webhooks_file: Option<std::path::PathBuf>,
    /// Instrument serial → site, for the site label and webhook filters.
    #[arg(long)]
    inventory_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), RuntimeError> {
    if !(0.0..=0.5).contains(&cli.bad_record_share)
        || cli.instruments == 0
        || cli.duration_hours <= 0.0
    {
        return Err(RuntimeError::Config {
            setting: "--instruments / --duration-hours / --bad-record-share".into(),
            message: "need instruments >= 1, hours > 0 and a bad share in 0..=0.5".into(),
        });
    }
    let historic = !cli.run_folder.is_empty();
    // Each record with its send time when known (the simulated fleet), which paces the
    // service team's commands.
    let (records, faults): (Vec<Input>, Vec<_>) = match &cli.input {
        None if historic => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let mut out = Vec::new();
            for folder in &cli.run_folder {
                let c = seqmon_collector::collect::collect_run(folder, None, now)
                    .map_err(|e| RuntimeError::Internal(e.to_string()))?;
                for e in &c.file_errors {
                    tracing::warn!(error = %e, "metric file skipped");
                }
                tracing::info!(folder = %folder.display(), consent = ?c.consent, records = c.records.len(), "run folder collected");
                for r in c.records {
                    out.push((
                        r.instrument_serial.clone(),
                        seqmon_model::encode(&r)
                            .map_err(|e| RuntimeError::Internal(e.to_string()))?,
                        None,
                    ));
                }
            }
            (out, Vec::new())
        }
        None => {
            let sim = simulate(&FleetConfig {
                instruments: cli.instruments,
                duration_hours: cli.duration_hours,
                seed: cli.seed,
                bad_record_share: cli.bad_record_share,
                sample_interval_s: cli.sample_interval_s.max(1),
                faults: !cli.no_faults,
                ..Default::default()
            });
            (
                sim.records
                    .into_iter()
                    .map(|r| (r.key, r.bytes, Some(r.sent_time_ms)))
                    .collect(),
                sim.faults,
            )
        }
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|source| RuntimeError::Io {
                context: format!("cannot open --input {path}"),
                source,
            })?;
            let mut out = Vec::new();
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|source| RuntimeError::Io {
                    context: format!("cannot read {path}"),
                    source,
                })?;
                // Lines that do not convert go in as their raw bytes: the validator dead-letters them.
                out.push(match json_line_to_avro(&line, "telemetry") {
                    Ok(c) => (c.key.unwrap_or_default(), c.bytes, None),
                    Err(_) => (String::new(), line.into_bytes(), None),
                });
            }
            (out, Vec::new())
        }
    };
    let started = std::time::Instant::now();
    let mut chain = if historic || cli.input.is_some() {
        historic_chain()?
    } else {
        default_chain()?
    };
    let mut tap = Tap {
        collected: Collected::default(),
        out: std::io::stdout().lock(),
        quiet: cli.quiet,
        failure: None,
    };
    let mut team = (!cli.no_service_team && cli.input.is_none() && !historic)
        .then(|| ServiceTeam::new(&faults));
    // Delivery in process, to the receivers given (none: nothing is delivered).
    let mut delivery = if cli.alertmanager_urls.is_empty() && cli.webhooks_file.is_none() {
        None
    } else {
        let mut args: Vec<String> = vec!["seqmon-pipeline".into()];
        for u in &cli.alertmanager_urls {
            args.extend(["--alertmanager-url".into(), u.clone()]);
        }
        for (flag, path) in [
            ("--webhooks-file", &cli.webhooks_file),
            ("--inventory-file", &cli.inventory_file),
        ] {
            if let Some(p) = path {
                args.extend([flag.into(), p.display().to_string()]);
            }
        }
        let cfg =
            <seqmon_dispatcher::config::DispatcherConfig as clap::Parser>::try_parse_from(args)
                .map_err(|e| RuntimeError::Config {
                    setting: "--alertmanager-url / --webhooks-file".into(),
                    message: e.to_string(),
                })?;
        Some(seqmon_dispatcher::service::LocalDelivery::start(&cfg)?)
    };
    let mut delivered_upto = 0;
    let mut alerts_seen = 0;
    for (key, bytes, sent) in &records {
        // The team's commands due by this record's time go in first, as they would arrive on
        // the commands topic.
        if let (Some(team), Some(now)) = (team.as_mut(), sent) {
            for cmd in team.due(*now) {
                tap.line(format!(
                    "{} COMMAND {:<12} {} by {} on {}{}",
                    iso_time(cmd.issued_at_ms),
                    format!("{:?}", cmd.action),
                    cmd.resolution
                        .map(|r| r.as_str().to_ascii_lowercase())
                        .or(cmd.assignee.clone())
                        .unwrap_or_default(),
                    cmd.issued_by,
                    cmd.alert_id,
                    cmd.comment
                        .as_ref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ));
                let bytes = seqmon_model::encode(&cmd)
                    .map_err(|e| RuntimeError::Internal(e.to_string()))?;
                tap.collected.commands += 1;
                chain.push_to(
                    TopicRole::AlertCommands,
                    &cmd.instrument_serial,
                    &bytes,
                    &mut |topic, e| tap.take(topic, e),
                )?;
            }
        }
        chain.push(key, bytes, &mut |topic, e| tap.take(topic, e))?;
        if let Some(team) = team.as_mut() {
            for a in &tap.collected.alerts[alerts_seen..] {
                team.observe(a);
            }
            alerts_seen = tap.collected.alerts.len();
        }
        if let Some(d) = delivery.as_mut() {
            for a in &tap.collected.alerts[delivered_upto..] {
                d.submit(a);
            }
            delivered_upto = tap.collected.alerts.len();
        }
    }
    chain.finish(&mut |topic, e| tap.take(topic, e))?;
    if let Some(mut d) = delivery {
        for a in &tap.collected.alerts[delivered_upto..] {
            d.submit(a);
        }
        tap.collected.delivered = d.finish(std::time::Duration::from_secs(60));
    }
    if let Some(e) = tap.failure.take() {
        return Err(e);
    }
    let collected = tap.collected;
    let mut out = tap.out;
    let summary = summarize(records.len() as u64, &collected, &faults);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        events = records.len(),
        "pipeline finished"
    );
    let _ = writeln!(out, "{}", serde_json::json!({ "summary": summary }));
    Ok(())
}

/// Where the chain's outputs go: decoded into the summary, printed as they come.
struct Tap<W: Write> {
    collected: Collected,
    out: W,
    quiet: bool,
    failure: Option<RuntimeError>,
}

impl<W: Write> Tap<W> {
    fn take(&mut self, topic: &str, e: &seqmon_runtime::Emitted) {
        match self.collected.take(topic, e) {
            Ok(Some(line)) => self.line(line),
            Ok(None) => {}
            Err(err) => self.failure = Some(err),
        }
    }

    fn line(&mut self, line: String) {
        if !self.quiet {
            let _ = writeln!(self.out, "{line}");
        }
    }
}
