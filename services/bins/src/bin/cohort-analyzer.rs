//! `cohort-analyzer kafka ...` or `cohort-analyzer file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_cohort_analyzer::{CohortAnalyzer, CohortConfig};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &CohortConfig| {
        cfg.validate()?;
        Ok(CohortAnalyzer::new(cfg.clone()))
    })
}
