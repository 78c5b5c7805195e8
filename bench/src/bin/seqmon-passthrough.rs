//! `seqmon-passthrough kafka --hop N ...`: one hop of the pipeline's chain with no processing,
//! for `make bench`'s capacity ratio (the fleet five such hops hold against the fleet the five
//! services hold, on the same broker). It runs on the services' own runtime (same client
//! settings, batching, exactly-once transactions, timestamps carried from input to output,
//! metrics), with a processor that forwards each record's bytes unchanged, so what it measures
//! is the broker and the runtime's Kafka work alone: the limit the services' processing is
//! compared with. Not a service of the product: only the bench starts it.
use std::process::ExitCode;

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_runtime::processor::{Emitter, Envelope, Processor, StageError};
use seqmon_runtime::{key_str, RuntimeError};

/// The chain's hops, in the services' order: input, output, stage name.
const HOPS: [(TopicRole, &[TopicRole], &str); 5] = [
    (TopicRole::Raw, &[TopicRole::Validated], "passthrough-1"),
    (
        TopicRole::Validated,
        &[TopicRole::Sanitized],
        "passthrough-2",
    ),
    (
        TopicRole::Sanitized,
        &[TopicRole::Features],
        "passthrough-3",
    ),
    (
        TopicRole::Features,
        &[TopicRole::Anomalies],
        "passthrough-4",
    ),
    (TopicRole::Anomalies, &[TopicRole::Alerts], "passthrough-5"),
];

/// Passthrough settings.
#[derive(Debug, Clone, Args)]
struct PassthroughConfig {
    /// Which hop: 1 reads telemetry.raw and writes telemetry.validated, 2 validated to
    /// sanitized, 3 sanitized to features, 4 features to anomalies, 5 anomalies to alerts.
    #[arg(long, env = "PASSTHROUGH_HOP")]
    hop: usize,
}

/// Forwards every record unchanged to the next topic of the chain.
struct Passthrough {
    hop: usize,
}

impl Processor for Passthrough {
    fn stage(&self) -> &'static str {
        HOPS[self.hop].2
    }
    fn input_role(&self) -> TopicRole {
        HOPS[self.hop].0
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        HOPS[self.hop].1
    }
    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        out.emit_bytes(HOPS[self.hop].1[0], key_str(input), input.value);
        Ok(())
    }
}

fn main() -> ExitCode {
    seqmon_runtime::service::service_main(|cfg: &PassthroughConfig| {
        if !(1..=HOPS.len()).contains(&cfg.hop) {
            return Err(RuntimeError::Config {
                setting: "--hop".into(),
                message: format!("must be 1..={}", HOPS.len()),
            });
        }
        Ok(Passthrough { hop: cfg.hop - 1 })
    })
}
