//! `privacy-enforcer kafka ...` or `privacy-enforcer file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_privacy_enforcer::{PrivacyConfig, PrivacyEnforcer};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &PrivacyConfig| {
        cfg.validate()?;
        Ok(PrivacyEnforcer::new(cfg.clone()))
    })
}
