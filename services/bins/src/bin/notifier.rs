//! `notifier kafka ...` or `notifier file ...`: see the library docs.
use std::process::ExitCode;

use seqmon_notifier::{Notifier, NotifierConfig};

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &NotifierConfig| {
        cfg.validate()?;
        Ok(Notifier::new(cfg.clone()))
    })
}
