//! `privacy-enforcer kafka ...` or `privacy-enforcer file ...`: see the library docs.
//!
//! The binary reads what the stage's pure logic may not: the pseudonym key file and the
//! operator's template catalogue. Either failing stops the service at start-up, naming the
//! setting.
use std::process::ExitCode;

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(seqmon_services::build_privacy_enforcer)
}
