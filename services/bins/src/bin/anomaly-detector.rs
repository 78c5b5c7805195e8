//! `anomaly-detector kafka ...` or `anomaly-detector file ...`: see the library docs.
//! `anomaly-detector score [settings] < series.csv`: backtest on a CSV `timestamp,value` series
//! (see `seqmon_anomaly_detector::score`).
use std::process::ExitCode;

use clap::Parser;
use seqmon_anomaly_detector::{AnomalyConfig, AnomalyDetector};

/// Score a CSV series `timestamp,value` from stdin; writes `timestamp,value,anomaly_score`.
#[derive(Debug, Parser)]
#[command(name = "anomaly-detector score", version)]
struct ScoreCli {
    #[command(flatten)]
    stage: AnomalyConfig,
}

fn score(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = ScoreCli::parse_from(args);
    if let Err(e) = cli.stage.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match seqmon_anomaly_detector::score::run(
        stdin.lock(),
        std::io::BufWriter::new(stdout.lock()),
        &cli.stage,
    ) {
        Ok(s) => {
            eprintln!(
                "scored {} rows ({} gaps, {} at or above 0.5)",
                s.rows, s.gaps, s.alerts
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    let first = std::env::args().nth(1);
    if matches!(first.as_deref(), Some("-h" | "--help" | "help")) {
        // The runtime's help lists `kafka` and `file`; the third mode is this binary's own.
        println!(
            "Also: anomaly-detector score [SETTINGS] < series.csv   backtest the detector on a CSV \
             `timestamp,value` series (anomaly-detector score --help)\n"
        );
    }
    if first.as_deref() == Some("score") {
        let program = args.next().unwrap_or_default();
        args.next();
        return score(std::iter::once(format!("{program} score")).chain(args));
    }
    seqmon_runtime::service::service_main(|cfg: &AnomalyConfig| {
        cfg.validate()?;
        Ok(AnomalyDetector::new(cfg.clone()))
    })
}
