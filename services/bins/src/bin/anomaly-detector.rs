//! `anomaly-detector kafka ...` or `anomaly-detector file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_anomaly_detector::{AnomalyConfig, AnomalyDetector};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &AnomalyConfig| {
        cfg.validate()?;
        Ok(AnomalyDetector::new(cfg.clone()))
    })
}
