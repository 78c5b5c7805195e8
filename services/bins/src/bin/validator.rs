//! `validator kafka ...` or `validator file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_validator::{Validator, ValidatorConfig};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &ValidatorConfig| {
        cfg.validate()?;
        Ok(Validator::new(cfg.clone()))
    })
}
