//! End to end on a real Apache Kafka broker: the stage services as separate OS processes, the
//! fleet simulator (another process) producing a simulated fleet with known faults and bad
//! records. Asserts every injected fault yields its alert exactly once (an instrument's own, or
//! the one fleet alert of a cohort that lists it: the software regression hits three
//! instruments, re-keyed through `cohort.signals`), every bad record lands in the dead-letter
//! topic with its reason, nothing personal reaches the sanitized topic, and counts balance on
//! every stage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use seqmon_model::topics::TopicRole;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use seqmon_integration_tests::*;
use seqmon_model::{decode, Alert, AlertAction, DeadLetter, MaintenanceEntry, PrivacyAudit};

const STAGES: [&str; 6] = [
    "validator",
    "privacy-enforcer",
    "feature-extractor",
    "anomaly-detector",
    "cohort-analyzer",
    "notifier",
];

#[test]
fn the_services_over_kafka_detect_every_fault_and_dead_letter_every_bad_record() {
    let prefix = unique_prefix("e2e");
    create_topics(&prefix, 3);
    let mut services: Vec<Service> = STAGES
        .iter()
        .map(|s| Service::start(s, &prefix, &["--batch-max-records", "500"]))
        .collect();

    // The simulator: 16 instruments, 4 hours of event time ending now, 2% bad records.
    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&dir).unwrap();
    let truth_path = dir.join("ground-truth.json");
    let start = (now_ms() - 4 * 3_600_000) / 60_000 * 60_000;
    let status = Command::new(bin("fleet-simulator"))
        .args([
            "--to",
            "kafka",
            "--instruments",
            "16",
            "--duration-hours",
            "4",
            "--seed",
            "11",
            "--bad-record-share",
            "0.02",
        ])
        .args([
            "--start-time-ms",
            &start.to_string(),
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
        ])
        .arg("--ground-truth")
        .arg(&truth_path)
        .status()
        .unwrap();
    assert!(status.success());
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&truth_path).unwrap()).unwrap();
    let events = truth["events"].as_u64().unwrap() as f64;
    let faults = truth["faults"].as_array().unwrap().clone();
    assert!(
        events > 2000.0 && faults.len() >= 9,
        "a few thousand events with faults"
    );

    // Wait until the validator has taken every event and the whole pipeline is quiet.
    let done = wait_until(Duration::from_secs(240), || {
        services[0]
            .metrics()
            .get("seqmon_input_records_total")
            .copied()
            == Some(events)
    });
    assert!(
        done,
        "validator consumed {:?} of {events}; log:\n{}",
        services[0].metrics().get("seqmon_input_records_total"),
        services[0].log_text()
    );
    // Quiet: every stage's record counters unchanged for 3 s and every input partition's lag 0
    // (process figures and gauges move on their own; a loaded machine can pause a stage for
    // longer than a blink).
    let mut last = Vec::new();
    let mut stable = 0;
    wait_until(Duration::from_secs(120), || {
        let scrapes: Vec<BTreeMap<String, f64>> = services.iter().map(|s| s.metrics()).collect();
        let caught_up = scrapes.iter().all(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("seqmon_consumer_lag_records"))
                .all(|(_, v)| *v == 0.0)
        });
        let now: Vec<Vec<(String, f64)>> = scrapes
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .filter(|(k, _)| k.starts_with("seqmon_") && k.contains("_records_total"))
                    .collect()
            })
            .collect();
        stable = if caught_up && now == last {
            stable + 1
        } else {
            0
        };
        last = now;
        stable >= 30
    });
    let m: Vec<BTreeMap<String, f64>> = services.iter().map(|s| s.metrics()).collect();

    // Counts balance on every stage: in = accepted + dead letters, and each stage took exactly
    // what the one before it produced.
    for (i, stage) in STAGES.iter().enumerate() {
        let input = m[i]["seqmon_input_records_total"];
        let accepted = m[i]["seqmon_accepted_records_total"];
        let dead = metric_sum(&m[i], "seqmon_dead_letter_records_total");
        assert_eq!(
            input,
            accepted + dead,
            "{stage}: in = accepted + dead letters"
        );
        assert_eq!(
            metric_sum(&m[i], "seqmon_transactions_total{outcome=\"aborted\"}"),
            0.0,
            "{stage} aborted a transaction"
        );
    }
    let out = |i: usize, role: TopicRole| {
        m[i].get(&format!("seqmon_output_records_total{{output=\"{role}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(m[0]["seqmon_input_records_total"], events);
    assert_eq!(
        m[1]["seqmon_input_records_total"],
        out(0, TopicRole::Validated)
    );
    assert_eq!(
        m[2]["seqmon_input_records_total"],
        out(1, TopicRole::Sanitized)
    );
    assert_eq!(
        m[3]["seqmon_input_records_total"],
        out(2, TopicRole::Features)
    );
    // The cohort analyzer reads what the detector re-keyed and what it passed on itself; the
    // notifier reads both stages' anomalies and every feature (its clock and run history).
    assert_eq!(
        m[4]["seqmon_input_records_total"],
        out(3, TopicRole::CohortSignals) + out(4, TopicRole::CohortSignals)
    );
    assert!(out(3, TopicRole::CohortSignals) > 0.0);
    assert_eq!(
        m[5]["seqmon_input_records_total"],
        out(3, TopicRole::Anomalies) + out(4, TopicRole::Anomalies) + out(2, TopicRole::Features)
    );

    // The committed topics agree with the counters.
    let topic = |role: TopicRole| role.topic(&prefix);
    assert_eq!(
        read_committed(&topic(TopicRole::Validated)).len() as f64,
        out(0, TopicRole::Validated)
    );
    let sanitized = read_committed(&topic(TopicRole::Sanitized));
    assert_eq!(sanitized.len() as f64, out(1, TopicRole::Sanitized));

    // Every injected fault: its alert, exactly once, after the fault began; no other alerts.
    let alerts: Vec<Alert> = read_committed(&topic(TopicRole::Alerts))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect();
    let opens: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.action == AlertAction::OPEN)
        .collect();
    let mut fault_keys = BTreeSet::new();
    let mut fleet_alerts = BTreeSet::new();
    for f in &faults {
        let serial = f["instrument_serial"].as_str().unwrap();
        let subsystem = f["subsystem"].as_str().unwrap();
        let start = f["start_ms"].as_i64().unwrap();
        // Distinct alerts about the fault: its instrument's own in its subsystem, or a fleet
        // alert listing the instrument (when it opened or in an update).
        let hits: BTreeMap<&str, i64> = alerts
            .iter()
            .filter(|a| match &a.cohort {
                Some(_) => a.covers(serial),
                None => {
                    a.action == AlertAction::OPEN
                        && a.instrument_serial == serial
                        && format!("{:?}", a.subsystem) == subsystem
                }
            })
            .map(|a| (a.alert_id.as_str(), a.event_time_ms))
            .collect();
        assert_eq!(hits.len(), 1, "fault {f} got alerts {hits:?}");
        assert!(
            hits.values().all(|t| *t >= start),
            "alert before the fault began: {f}"
        );
        fault_keys.insert((serial.to_string(), subsystem.to_string()));
        fleet_alerts.extend(
            alerts
                .iter()
                .filter(|a| a.cohort.is_some() && a.covers(serial))
                .map(|a| a.alert_id.clone()),
        );
    }
    assert_eq!(
        fleet_alerts.len(),
        1,
        "the software regression's cohort is named by one fleet alert"
    );
    let false_alerts: Vec<_> = opens
        .iter()
        .filter(|a| match &a.cohort {
            Some(_) => !fleet_alerts.contains(&a.alert_id),
            None => {
                !fault_keys.contains(&(a.instrument_serial.clone(), format!("{:?}", a.subsystem)))
            }
        })
        .collect();
    assert!(
        false_alerts.is_empty(),
        "alerts without a fault: {false_alerts:?}"
    );
    let maintenance: Vec<MaintenanceEntry> = read_committed(&topic(TopicRole::Maintenance))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect();
    assert!(maintenance.len() >= faults.len());

    // Every bad record is a dead letter with its stage and reason, with provenance.
    let dead: Vec<DeadLetter> = read_committed(&topic(TopicRole::DeadLettersSensitive))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect();
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for d in &dead {
        *got.entry((d.stage.clone(), d.reason.code().to_string()))
            .or_default() += 1;
        assert!(
            d.source_topic.starts_with(&prefix)
                && d.source_offset >= 0
                && !d.original_bytes.is_empty()
        );
    }
    let expected: BTreeMap<(String, String), u64> = truth["expected_dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (
                    e["stage"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap().to_string(),
                ),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        read_committed(&topic(TopicRole::DeadLetters)).is_empty(),
        "no dead letters after the privacy boundary"
    );

    // Nothing personal reaches the sanitized topic; every removal was audited without its value.
    let pii: Vec<String> = truth["pii_strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(!pii.is_empty());
    for r in &sanitized {
        let text = String::from_utf8_lossy(&r.value);
        for secret in &pii {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} reached the sanitized topic"
            );
        }
    }
    let audits = read_committed(&topic(TopicRole::PrivacyAudit));
    let expected_audits = truth["expected_privacy_removals"].as_u64().unwrap()
        + expected
            .get(&(
                "privacy-enforcer".to_string(),
                "PRIVACY_VIOLATION".to_string(),
            ))
            .copied()
            .unwrap_or(0);
    assert_eq!(audits.len() as u64, expected_audits);
    for r in &audits {
        let _: PrivacyAudit = decode(&r.value).unwrap();
        let text = String::from_utf8_lossy(&r.value);
        assert!(
            pii.iter().all(|s| !text.contains(s.as_str())),
            "an audit record carries a removed value"
        );
    }

    // Graceful shutdown on SIGTERM.
    for s in services.iter_mut().rev() {
        let status = s.terminate();
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            s.name,
            s.log_text()
        );
    }
    eprintln!(
        "e2e: {events} events, {} faults, {} alerts, {} dead letters, {} audits",
        faults.len(),
        alerts.len(),
        dead.len(),
        audits.len()
    );
}
