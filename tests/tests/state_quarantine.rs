//! A state snapshot the stage cannot restore (what a NaN stored as `null` once did: every
//! restart failed, for every instrument of the partition) is quarantined on a real broker: the
//! stage keeps running, the snapshot goes to the dead-letter topic with its provenance, a
//! tombstone replaces it on the changelog, and the next restart restores cleanly.
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
