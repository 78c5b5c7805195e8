//! A state snapshot the stage cannot restore (what a NaN stored as `null` once did: every
//! restart failed, for every instrument of the partition) is quarantined on a real broker: the
//! stage keeps running, the snapshot goes to the dead-letter topic with its provenance, a
//! tombstone replaces it on the changelog, and the next restart restores cleanly. A changelog
//! that cannot be read at all (a record that is not a snapshot) does not crash-loop the stage
//! either: it stays up, not ready, reports `seqmon_state_restore_failing`, leaves its input on
//! the broker and retries; once an operator supersedes the bad record, it resumes without loss.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use seqmon_feature_extractor::FeatureExtractor;
use seqmon_integration_tests::*;
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, encode, DeadLetter, DeadLetterReason, StateSnapshot};
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::{Driver, Processor};
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_testkit::wait_until;
use seqmon_validator::Validator;

/// Sanitized telemetry of a small fleet: the feature extractor's input.
fn sanitized() -> Vec<(String, Vec<u8>, Option<i64>)> {
    let start = (now_ms() - 3_600_000) / 60_000 * 60_000;
    let sim = simulate(&FleetConfig {
        instruments: 4,
        duration_hours: 1.0,
        seed: 3,
        start_time_ms: start,
        ..Default::default()
    });
    let mut chain = Chain::new(vec![
        Driver::new(Box::new(Validator::default())),
        Driver::new(Box::new(privacy_enforcer())),
    ])
    .unwrap();
    let mut out = Vec::new();
    let ts = now_ms();
    for r in &sim.records {
        chain
            .push(&r.key, &r.bytes, &mut |_, e| {
                if e.role == TopicRole::Sanitized {
                    out.push((e.key.clone(), e.value.clone(), Some(ts)));
                }
            })
            .unwrap();
    }
    out
}

#[test]
fn a_snapshot_that_does_not_restore_is_quarantined_not_a_crash_loop() {
    let prefix = unique_prefix("quarantine");
    create_topics(&prefix, 3);
    let changelog = TopicRole::ChangelogFeatureExtractor.topic(&prefix);
    let bad_state = br#"{"windows": {"level": null}, "truncated"#.to_vec();
    let snapshot = encode(&StateSnapshot {
        stage: "feature-extractor".into(),
        key: "A00077".into(),
        format_version: FeatureExtractor::default().state_format_version(),
        state_json: bad_state.clone(),
    })
    .unwrap();
    produce(&changelog, [("A00077".to_string(), snapshot, None)]);

    let mut stage = Service::start("feature-extractor", &prefix, &[]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            stage.metrics().get("seqmon_state_quarantined_total") == Some(&1.0)
        }),
        "no quarantine; log:\n{}",
        stage.log_text()
    );
    assert!(
        stage.child.try_wait().unwrap().is_none(),
        "the stage exited"
    );
    assert!(stage.log_text().contains("quarantined"));

    // The next transaction writes the dead letter and the tombstone.
    let inputs = sanitized();
    let n = produce(&TopicRole::Sanitized.topic(&prefix), inputs) as f64;
    assert!(
        wait_until(Duration::from_secs(60), || {
            stage.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "the stage did not process its input"
    );
    // Counted when processed, readable once committed.
    let read = || -> Vec<DeadLetter> {
        read_committed(&TopicRole::DeadLetters.topic(&prefix))
            .iter()
            .map(|r| decode(&r.value).unwrap())
            .filter(|d: &DeadLetter| d.source_topic == changelog)
            .collect()
    };
    let letters = read_until_some(Duration::from_secs(30), read);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::UNDECODABLE);
    assert_eq!(letters[0].original_bytes, bad_state);
    assert_eq!(letters[0].source_key.as_deref(), Some(&b"A00077"[..]));
    assert!(letters[0].detail.contains("started afresh"));
    let last = read_committed(&changelog)
        .into_iter()
        .rfind(|r| r.key == "A00077")
        .unwrap();
    assert!(last.value.is_empty(), "no tombstone after the bad snapshot");

    // A restart finds nothing to quarantine and writes no second dead letter.
    stage.kill9();
    stage.restart();
    assert!(wait_until(Duration::from_secs(60), || {
        stage.metrics().get("seqmon_assigned_partitions") == Some(&3.0)
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stage.metrics().get("seqmon_state_quarantined_total"),
        Some(&0.0)
    );
}

#[test]
fn a_changelog_that_cannot_be_read_holds_the_input_and_is_retried_not_a_crash_loop() {
    let prefix = unique_prefix("restore-fail");
    create_topics(&prefix, 1);
    let changelog = TopicRole::ChangelogFeatureExtractor.topic(&prefix);
    // Corrupt bytes are one key's problem (quarantined); a snapshot in a state format this
    // build does not read (a rollback) stops the whole partition's restore.
    produce(
        &changelog,
        [("A00066".to_string(), b"garbage".to_vec(), None)],
    );
    let newer = encode(&StateSnapshot {
        stage: "feature-extractor".into(),
        key: "A00077".into(),
        // The first format after this build's own that it does not read.
        format_version: {
            let fe = FeatureExtractor::default();
            (fe.state_format_version()..)
                .find(|v| !fe.reads_state_format(*v))
                .unwrap()
        },
        state_json: b"{}".to_vec(),
    })
    .unwrap();
    produce(&changelog, [("A00077".to_string(), newer, None)]);
    let inputs = sanitized();
    let n = produce(&TopicRole::Sanitized.topic(&prefix), inputs) as f64;

    let mut stage = Service::start("feature-extractor", &prefix, &[]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            stage.metrics().get("seqmon_state_restore_failing") == Some(&1.0)
        }),
        "no restore failure reported; log:\n{}",
        stage.log_text()
    );
    // Up, not ready, and the input waits: nothing is processed on missing state.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        stage.child.try_wait().unwrap().is_none(),
        "the stage exited"
    );
    let m = stage.metrics();
    assert_eq!(m.get("seqmon_ready"), Some(&0.0));
    assert_eq!(m.get("seqmon_input_records_total"), Some(&0.0));
    let (status, body) =
        seqmon_testkit::http_get(stage.metrics_port, "/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state restore failing"), "{body}");
    assert!(stage.log_text().contains("state restore failed"));

    // The operator supersedes the record (here with an empty value, which is no snapshot
    // either) or rolls forward; the next try restores, the input flows, and both records that
    // are not snapshots are quarantined.
    produce(&changelog, [("A00077".to_string(), Vec::new(), None)]);
    assert!(
        wait_until(Duration::from_secs(120), || {
            stage.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "the stage did not resume; log:\n{}",
        stage.log_text()
    );
    assert_eq!(
        stage.metrics().get("seqmon_state_restore_failing"),
        Some(&0.0)
    );
    assert!(
        stage.child.try_wait().unwrap().is_none(),
        "the stage exited"
    );
    let features = read_until_some(Duration::from_secs(30), || {
        read_committed(&TopicRole::Features.topic(&prefix))
    });
    assert!(!features.is_empty());
    assert_eq!(
        stage.metrics().get("seqmon_state_quarantined_total"),
        Some(&2.0)
    );
}
