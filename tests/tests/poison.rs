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
    // A prefix of the record, at most half the producer's record limit.
    assert!(d.original_bytes.len() <= MAX_DEAD_LETTER_PAYLOAD.min(500_000));
    assert!(huge.starts_with(&d.original_bytes));
    assert!(
        d.detail.contains("of 999950 bytes, sha256 "),
        "{}",
        d.detail
    );
}

/// A record the validator accepts whose forwarded copy is over the producer's record limit
/// (here `message.max.bytes` 300,000, with the validator's own cap raised to 1 MB) used to fail
/// at produce time: abort, redo, abort. Now the output is replaced by a TOO_LARGE dead letter
/// of the input, carrying at most half the limit, and the records behind it go through.
#[test]
fn an_output_over_the_producer_limit_is_dead_lettered_and_the_stage_goes_on() {
    let prefix = unique_prefix("poison-output");
    create_topics(&prefix, 1);
    let raw = TopicRole::Raw.topic(&prefix);
    let ts = now_ms();
    let sim = simulate(&FleetConfig {
        instruments: 2,
        duration_hours: 0.5,
        seed: 11,
        start_time_ms: (ts - 3_600_000) / 60_000 * 60_000,
        bad_record_share: 0.0,
        ..Default::default()
    });
    let first = &sim.records[0];
    let mut big: seqmon_model::Telemetry = decode(&first.bytes).unwrap();
    for i in 0..4 {
        big.attributes
            .insert(format!("pad{i}"), "a".repeat(100_000));
    }
    let big_bytes = seqmon_model::encode(&big).unwrap();
    assert!(big_bytes.len() > 400_000);
    // Kafka timestamps as the sender's clock gave them (the validator's skew check).
    let mut records = vec![(
        first.key.clone(),
        big_bytes.clone(),
        Some(first.sent_time_ms),
    )];
    records.extend(
        sim.records[1..]
            .iter()
            .map(|r| (r.key.clone(), r.bytes.clone(), Some(r.sent_time_ms))),
    );
    let n = produce(&raw, records) as f64;

    let validator = Service::start(
        "validator",
        &prefix,
        &[
            "--kafka-option",
            "message.max.bytes=300000",
            "--max-record-bytes",
            "1000000",
            "--max-input-record-bytes",
            "1000000",
            "--max-string-bytes",
            "200000",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            validator.metrics().get("seqmon_input_records_total") == Some(&n)
        }),
        "the validator did not get past the record with the large output; log:\n{}",
        validator.log_text()
    );
    assert_eq!(
        validator
            .metrics()
            .get("seqmon_transactions_total{outcome=\"aborted\"}"),
        Some(&0.0)
    );
    let read = || -> Vec<DeadLetter> {
        read_committed(&TopicRole::DeadLettersSensitive.topic(&prefix))
            .iter()
            .filter_map(|r| decode::<DeadLetter>(&r.value).ok())
            .collect()
    };
    let letters = read_until_some(Duration::from_secs(30), read);
    let reasons: Vec<_> = letters
        .iter()
        .map(|d| (d.reason, d.source_offset))
        .collect();
    assert_eq!(reasons, [(DeadLetterReason::TOO_LARGE, 0)]);
    let d = &letters[0];
    assert_eq!(d.source_topic, raw);
    // At most half the 300,000-byte limit, so the dead letter itself can be produced.
    assert!(
        d.original_bytes.len() <= 150_000,
        "{}",
        d.original_bytes.len()
    );
    assert!(big_bytes.starts_with(&d.original_bytes));
    assert!(
        d.detail.contains("validated output") && d.detail.contains("sha256 "),
        "{}",
        d.detail
    );
    // Everything behind it was forwarded.
    let forwarded = read_until_some(Duration::from_secs(30), || {
        let v = read_committed(&TopicRole::Validated.topic(&prefix));
        if v.len() + 1 == sim.records.len() {
            v
        } else {
            Vec::new()
        }
    });
    assert_eq!(forwarded.len() + 1, sim.records.len());
}

/// A clock glitch on a live fleet: `telemetry.raw` stamped by the broker (LogAppendTime), an
/// instrument whose clock jumped an hour, then five years, ahead (event time, send time and its
/// producer's timestamp all from that clock). Judged against the broker's receive time, both
/// are CLOCK_SKEW dead letters, and the instrument's on-time records behind them go through.
#[test]
fn a_clock_glitch_is_refused_against_the_brokers_receive_time() {
    let prefix = unique_prefix("poison-clock");
    seqmon_testkit::create_topics_with(&bootstrap(), &prefix, 1, "broker");
    let raw = TopicRole::Raw.topic(&prefix);
    let now = now_ms();
    let sim = simulate(&FleetConfig {
        instruments: 1,
        duration_hours: 20.0 / 60.0,
        seed: 13,
        start_time_ms: now - 20 * 60_000,
        bad_record_share: 0.0,
        ..Default::default()
    });
    let shift = |r: &seqmon_simulator::SimRecord, ahead: i64, id: &str| {
        let mut t: seqmon_model::Telemetry = decode(&r.bytes).unwrap();
        t.message_id = id.to_string();
        t.event_time_ms += ahead;
        t.sent_time_ms += ahead;
        (
            r.key.clone(),
            seqmon_model::encode(&t).unwrap(),
            Some(r.sent_time_ms + ahead),
        )
    };
    // On time: the last minutes, sent now (the broker stamps them now).
    let recent: Vec<_> = sim
        .records
        .iter()
        .filter(|r| r.sent_time_ms > now - 5 * 60_000)
        .collect();
    assert!(recent.len() > 3);
    let mut records = vec![
        shift(recent[0], 3_600_000, "glitch-hour"),
        shift(recent[0], 5 * 365 * 86_400_000, "glitch-years"),
    ];
    records.extend(
        recent
            .iter()
            .map(|r| (r.key.clone(), r.bytes.clone(), Some(r.sent_time_ms))),
    );
    produce(&raw, records);
    let stamped = read_committed(&raw);
    assert!(
        stamped
            .iter()
            .all(|r| r.timestamp_ms.is_some_and(|t| (t - now).abs() < 600_000)),
        "the broker stamped every record on arrival"
    );

    let _validator = Service::start("validator", &prefix, &[]);
    let letters = read_until_some(Duration::from_secs(60), || {
        read_committed(&TopicRole::DeadLettersSensitive.topic(&prefix))
            .iter()
            .filter_map(|r| decode::<DeadLetter>(&r.value).ok())
            .collect::<Vec<_>>()
    });
    let mut refused: Vec<_> = letters
        .iter()
        .map(|d| (d.source_offset, d.reason))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (0, DeadLetterReason::CLOCK_SKEW),
            (1, DeadLetterReason::CLOCK_SKEW)
        ]
    );
    let forwarded = read_until_some(Duration::from_secs(30), || {
        let v = read_committed(&TopicRole::Validated.topic(&prefix));
        if v.len() == recent.len() {
            v
        } else {
            Vec::new()
        }
    });
    assert_eq!(forwarded.len(), recent.len());
}
