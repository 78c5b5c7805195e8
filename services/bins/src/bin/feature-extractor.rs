//! `feature-extractor kafka ...` or `feature-extractor file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_feature_extractor::{FeatureConfig, FeatureExtractor};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &FeatureConfig| {
        cfg.validate()?;
        Ok(FeatureExtractor::new(cfg.clone()))
    })
}
