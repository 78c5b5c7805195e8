//! The state contract on a real broker: a snapshot that cannot be serialized aborts the
//! transaction, so the changelog keeps the key's previous state and no output of the batch
//! commits; a changelog record of another state format version is refused, not misread (the
//! stage waits and retries rather than exit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use seqmon_integration_tests::{
    bootstrap, create_topics, produce, read_committed, unique_prefix, wait_until,
};
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, StateSnapshot};
use seqmon_runtime::config::RunnerConfig;
use seqmon_runtime::kafka::run_kafka;
use seqmon_runtime::processor::{Emitter, Envelope, Processor, StageError};
use seqmon_runtime::{key_str, Driver, RuntimeError};

/// Counts records per key and forwards them; its snapshot fails once a key's count reaches
/// `poison_at`.
struct Counter {
    counts: BTreeMap<String, u64>,
    poison_at: u64,
    format_version: i32,
}

impl Processor for Counter {
    fn stage(&self) -> &'static str {
        "counter"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Raw
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Validated]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogValidator)
    }
    fn state_format_version(&self) -> i32 {
        self.format_version
    }
    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let key = key_str(input).to_string();
        *self.counts.entry(key.clone()).or_default() += 1;
        out.emit_bytes(TopicRole::Validated, &key, input.value);
        out.state_changed(&key);
        Ok(())
    }
    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        match self.counts.get(key) {
            Some(n) if *n >= self.poison_at => Err(StageError::Snapshot {
                key: key.into(),
                message: format!("count {n} cannot be stored"),
            }),
            Some(n) => Ok(Some(n.to_string().into_bytes())),
            None => Ok(None),
        }
    }
    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let n = std::str::from_utf8(state).unwrap().parse().unwrap();
        self.counts.insert(key.into(), n);
        Ok(())
    }
    fn clear_state(&mut self) {
        self.counts.clear();
    }
    fn state_keys(&self) -> Vec<String> {
        self.counts.keys().cloned().collect()
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    runner: RunnerConfig,
}

fn runner(prefix: &str) -> RunnerConfig {
    Cli::parse_from([
        "counter",
        "--bootstrap-servers",
        &bootstrap(),
        "--topic-prefix",
        prefix,
        "--group-id",
        &format!("{prefix}counter"),
        "--transactional-id",
        &format!("{prefix}counter-0"),
        "--metrics-addr",
        "",
        "--batch-max-wait-ms",
        "50",
    ])
    .runner
}

fn start(
    prefix: &str,
    processor: Counter,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<(), RuntimeError>>,
) {
    let cfg = runner(prefix);
    cfg.validate().unwrap();
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    let handle =
        std::thread::spawn(move || run_kafka(Driver::new(Box::new(processor)), &cfg, flag));
    (shutdown, handle)
}

/// The latest committed state per key on the changelog: (format version, state text).
fn changelog(prefix: &str) -> BTreeMap<String, (i32, String)> {
    read_committed(&TopicRole::ChangelogValidator.topic(prefix))
        .into_iter()
        .map(|r| {
            let snap: StateSnapshot = decode(&r.value).unwrap();
            (
                r.key,
                (
                    snap.format_version,
                    String::from_utf8(snap.state_json).unwrap(),
                ),
            )
        })
        .collect()
}

fn record(key: &str) -> (String, Vec<u8>, Option<i64>) {
    (key.to_string(), b"payload".to_vec(), None)
}

#[test]
fn a_failing_snapshot_aborts_and_leaves_the_previous_state_on_the_changelog() {
    let prefix = unique_prefix("state-contract");
    create_topics(&prefix, 1);
    let raw = TopicRole::Raw.topic(&prefix);
    let (shutdown, handle) = start(
        &prefix,
        Counter {
            counts: BTreeMap::new(),
            poison_at: 3,
            format_version: 1,
        },
    );
    produce(&raw, [record("A00100"), record("A00100")]);
    assert!(
        wait_until(Duration::from_secs(60), || changelog(&prefix)
            .get("A00100")
            .is_some_and(|(_, s)| s == "2")),
        "two records committed with their state"
    );
    // The third record makes the snapshot fail: the stage stops with the stage error.
    produce(&raw, [record("A00100")]);
    let result = handle.join().unwrap();
    shutdown.store(true, Ordering::SeqCst);
    let err = result.expect_err("the stage stops on a snapshot it cannot write");
    assert!(
        matches!(err, RuntimeError::Stage(StageError::Snapshot { .. })),
        "{err}"
    );
    assert_eq!(
        changelog(&prefix).get("A00100"),
        Some(&(1, "2".to_string())),
        "the previous state is what the changelog holds"
    );
    assert_eq!(
        read_committed(&TopicRole::Validated.topic(&prefix)).len(),
        2,
        "nothing of the aborted batch committed"
    );

    // A build whose state layout is another version refuses the changelog instead of misreading
    // it: it reads nothing and takes no input, and waits (retrying) instead of exiting into a
    // crash loop, until it is stopped.
    let (shutdown, handle) = start(
        &prefix,
        Counter {
            counts: BTreeMap::new(),
            poison_at: u64::MAX,
            format_version: 2,
        },
    );
    produce(&raw, [record("A00100")]);
    std::thread::sleep(Duration::from_secs(8));
    assert!(!handle.is_finished(), "the stage exited");
    assert_eq!(
        read_committed(&TopicRole::Validated.topic(&prefix)).len(),
        2,
        "no input taken without its state"
    );
    assert_eq!(
        changelog(&prefix).get("A00100"),
        Some(&(1, "2".to_string())),
        "the changelog is left as it was"
    );
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().expect("a clean stop");
}
