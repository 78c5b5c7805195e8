//! Poison that once livelocked a stage, on a real broker: a raw record just under the size
//! limit (999,950 bytes) is refused, and its dead letter (the record plus an envelope) used to
//! exceed the producer's 1,000,000-byte limit: the transaction aborted and was redone forever,
//! with `/healthz` 200 (with the prefix limit raised, this test sees the abort). Now the dead
//! letter carries a bounded prefix with the full length and hash, and the stage goes on to the
//! records behind it without an abort.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use seqmon_integration_tests::*;
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, DeadLetter, DeadLetterReason};
use seqmon_runtime::driver::MAX_DEAD_LETTER_PAYLOAD;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_testkit::wait_until;

#[test]
fn a_record_near_the_size_limit_is_dead_lettered_and_the_stage_goes_on() {
    let prefix = unique_prefix("poison-size");
    create_topics(&prefix, 1);
    let raw = TopicRole::Raw.topic(&prefix);
    let ts = now_ms();
    // Just under librdkafka's default message.max.bytes (1,000,000) with its key and overhead.
    let huge: Vec<u8> = (0..999_950u32).map(|i| (i % 251) as u8).collect();
    let sim = simulate(&FleetConfig {
        instruments: 2,
        duration_hours: 0.5,
        seed: 9,
        start_time_ms: (ts - 3_600_000) / 60_000 * 60_000,
        bad_record_share: 0.0,
        ..Default::default()
    });
    let mut records = vec![("A00001".to_string(), huge.clone(), Some(ts))];
    records.extend(
        sim.records
            .iter()
            .map(|r| (r.key.clone(), r.bytes.clone(), Some(ts))),
    );
    let n = produce(&raw, records) as f64;

    let validator = Service::start("validator", &prefix, &[]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            validator.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "the validator did not get past the large record; log:\n{}",
        validator.log_text()
    );
    let m = validator.metrics();
    assert_eq!(
        m.get("seqmon_transactions_total{outcome=\"aborted\"}"),
        Some(&0.0)
    );
    // Counted when processed, readable once committed.
    let read = || -> Vec<DeadLetter> {
        read_committed(&TopicRole::DeadLettersSensitive.topic(&prefix))
            .iter()
            .chain(read_committed(&TopicRole::DeadLetters.topic(&prefix)).iter())
            .filter_map(|r| decode::<DeadLetter>(&r.value).ok())
            .filter(|d| d.source_offset == 0 && d.source_topic == raw)
            .collect()
    };
    let letters = read_until_some(Duration::from_secs(30), read);
    assert_eq!(letters.len(), 1, "one dead letter for the large record");
    let d = &letters[0];
    assert_eq!(d.reason, DeadLetterReason::TOO_LARGE);
    assert_eq!(d.original_bytes, huge[..MAX_DEAD_LETTER_PAYLOAD]);
    assert!(
        d.detail.contains("of 999950 bytes, sha256 "),
        "{}",
        d.detail
    );
}
