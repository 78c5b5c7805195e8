//! The alert lifecycle on a real broker: the notifier service reads anomalies, features and the
//! service team's commands (three co-partitioned topics); `seqmon-admin alert` writes commands
//! and waits for the notifier's answer. Asserts every command is applied exactly once (also
//! across a kill -9 of the notifier), every transition is one record with contiguous sequence
//! numbers, bad commands become dead letters with their reason, the maintenance entry closes on a
//! repair, and a notifier whose inputs are not co-partitioned refuses to start naming the topic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use seqmon_integration_tests::*;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, encode, Alert, AlertState, AlertTransition, Anomaly, AnomalySeverity, AnomalyState,
    DeadLetter, DeadLetterReason, Feature, InstrumentModel, MaintenanceEntry, MaintenanceStatus,
    RunPhase, Subsystem,
};

const MINUTE: i64 = 60_000;

fn anomaly(serial: &str, t: i64, severity: AnomalySeverity) -> Anomaly {
    Anomaly {
        anomaly_id: format!("{serial}-{t}"),
        instrument_serial: serial.into(),
        instrument_model: InstrumentModel::NOVASEQ_6000,
        subsystem: Subsystem::FLUIDICS,
        metric: "fluidics_pressure_kpa".into(),
        state: AnomalyState::ACTIVE,
        score: 7.0,
        severity,
        rule: "baseline_shift".into(),
        window_start_ms: t - 5 * MINUTE,
        window_end_ms: t,
        observed_level: 78.0,
        baseline_level: 100.0,
        baseline_stddev: 2.0,
        slope_per_hour: -3.0,
        fraction_out_of_spec: 0.0,
        spec_low: Some(70.0),
        spec_high: Some(140.0),
        software_version: None,
        reagent_kit_lot: None,
        predicted_limit_ms: None,
        predicted_limit_earliest_ms: None,
        predicted_limit_latest_ms: None,
        flowcell_lot: None,
        cohort: None,
        run_phase: None,
    }
}

fn feature(serial: &str, t: i64, phase: RunPhase) -> Feature {
    Feature {
        feature_id: format!("{serial}-f{t}"),
        instrument_serial: serial.into(),
        instrument_model: InstrumentModel::NOVASEQ_6000,
        subsystem: Subsystem::FLUIDICS,
        metric: "fluidics_pressure_kpa".into(),
        window_start_ms: t - 5 * MINUTE,
        window_end_ms: t,
        sample_count: 5,
        level: 79.0,
        slope_per_hour: 0.0,
        variability: 1.0,
        min: 78.0,
        max: 80.0,
        fraction_out_of_spec: 0.0,
        spec_low: Some(70.0),
        spec_high: Some(140.0),
        run_id: None,
        software_version: None,
        reagent_kit_lot: None,
        flowcell_lot: None,
        run_phase: Some(phase),
    }
}

/// `seqmon-admin alert ARGS` against the test's topics: (exit code, stdout).
fn console(prefix: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("seqmon-admin"))
        .arg("alert")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            prefix,
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn alerts(prefix: &str) -> Vec<Alert> {
    read_committed(&TopicRole::Alerts.topic(prefix))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect()
}

#[test]
fn commands_are_applied_once_and_bad_ones_are_dead_letters() {
    let prefix = unique_prefix("alerts");
    create_topics(&prefix, 3);
    let mut notifier = Service::start("notifier", &prefix, &["--batch-max-records", "20"]);
    let t0 = (now_ms() - 3_600_000) / MINUTE * MINUTE;
    let serials = ["A00901", "A00902", "A00903"];
    // Features for an hour (runs and idle), then a leak on every instrument.
    let mut records = Vec::new();
    for s in serials {
        for i in 0..12 {
            let t = t0 + i * 5 * MINUTE;
            let phase = if i % 4 == 3 {
                RunPhase::IDLE
            } else {
                RunPhase::SEQUENCING
            };
            records.push((
                s.to_string(),
                encode(&feature(s, t, phase)).unwrap(),
                Some(t),
            ));
        }
    }
    produce(&TopicRole::Features.topic(&prefix), records);
    let t1 = t0 + 61 * MINUTE;
    produce(
        &TopicRole::Anomalies.topic(&prefix),
        serials.map(|s| {
            (
                s.to_string(),
                encode(&anomaly(s, t1, AnomalySeverity::HIGH)).unwrap(),
                Some(t1),
            )
        }),
    );
    assert!(
        wait_until(Duration::from_secs(60), || alerts(&prefix).len() == 3),
        "three alerts open; log:\n{}",
        notifier.log_text()
    );
    let opened: BTreeMap<String, Alert> = alerts(&prefix)
        .into_iter()
        .map(|a| (a.instrument_serial.clone(), a))
        .collect();
    let id = |s: &str| opened[s].alert_id.clone();

    // The console lists them.
    let (code, out) = console(&prefix, &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(serials.iter().all(|s| out.contains(s)), "{out}");

    // Acknowledge, assign, snooze: each applied, the console shows the notifier's answer.
    let (code, out) = console(
        &prefix,
        &["ack", &id("A00901"), "--by", "fse-1", "--comment", "on it"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied: ACKNOWLEDGED #2"), "{out}");
    let (code, out) = console(
        &prefix,
        &["assign", &id("A00902"), "--by", "lead-2", "--to", "fse-2"],
    );
    assert!(code == 0 && out.contains("applied: OPEN #2"), "{out}");
    let (code, out) = console(
        &prefix,
        &["snooze", &id("A00903"), "--by", "fse-3", "--until", "+2h"],
    );
    assert!(code == 0 && out.contains("applied: SNOOZED #2"), "{out}");

    // The notifier dies mid-way; commands sent meanwhile wait on the topic and apply once.
    notifier.kill9();
    let (code, out) = console(
        &prefix,
        &[
            "resolve",
            &id("A00901"),
            "--by",
            "fse-1",
            "--resolution",
            "repaired",
            "--wait-secs",
            "0",
        ],
    );
    assert_eq!(code, 0, "{out}");
    notifier.restart();
    assert!(
        wait_until(Duration::from_secs(60), || alerts(&prefix)
            .iter()
            .any(|a| a.transition == AlertTransition::RESOLVED)),
        "the resolve is applied after the restart; log:\n{}",
        notifier.log_text()
    );

    // Refused: a stale transition, an unknown alert, an invalid command, undecodable bytes.
    let (code, out) = console(&prefix, &["ack", &id("A00901"), "--by", "fse-1"]);
    assert!(
        code == 4 && out.contains("refused: STALE_TRANSITION"),
        "{out}"
    );
    let (code, out) = console(&prefix, &["ack", "A00901:optical:1", "--by", "fse-1"]);
    assert!(code == 4 && out.contains("refused: UNKNOWN_ALERT"), "{out}");
    let (code, out) = console(
        &prefix,
        &[
            "snooze",
            &id("A00902"),
            "--by",
            "fse-2",
            "--until",
            "+9999h",
        ],
    );
    assert!(
        code == 4 && out.contains("refused: INVALID_COMMAND"),
        "{out}"
    );
    let (code, out) = console(
        &prefix,
        &["snooze", &id("A00902"), "--by", "fse-2", "--until", "soon"],
    );
    assert_eq!(
        code, 2,
        "a bad --until is refused before anything is sent: {out}"
    );
    produce(
        &TopicRole::AlertCommands.topic(&prefix),
        [("A00902".to_string(), b"not a command".to_vec(), None)],
    );

    // Every transition once, sequences contiguous per alert.
    let all = alerts(&prefix);
    let mut by_alert: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for a in &all {
        by_alert.entry(&a.alert_id).or_default().push(a.sequence);
    }
    for (alert, mut seqs) in by_alert {
        seqs.sort();
        let want: Vec<i32> = (1..=seqs.len() as i32).collect();
        assert_eq!(seqs, want, "{alert}: every transition once");
    }
    let resolved = all
        .iter()
        .find(|a| a.transition == AlertTransition::RESOLVED)
        .unwrap();
    assert_eq!(
        (resolved.state, resolved.actor.as_deref()),
        (AlertState::RESOLVED, Some("fse-1"))
    );
    let acked = all
        .iter()
        .find(|a| a.transition == AlertTransition::ACKNOWLEDGED)
        .unwrap();
    assert_eq!(acked.comment.as_deref(), Some("on it"));
    assert!(acked
        .evidence
        .as_ref()
        .is_some_and(|e| !e.recent.is_empty()));

    // The repaired instrument's entry is closed; the others stand, each with a visit.
    let entries: Vec<MaintenanceEntry> = read_committed(&TopicRole::Maintenance.topic(&prefix))
        .iter()
        .map(|r| decode(&r.value).unwrap())
        .collect();
    let mut latest: BTreeMap<&str, &MaintenanceEntry> = BTreeMap::new();
    for e in &entries {
        latest.insert(&e.entry_id, e);
    }
    assert_eq!(latest.len(), 3, "one entry per instrument and part");
    for e in latest.values() {
        if e.instrument_serial == "A00901" {
            assert_eq!(e.status, MaintenanceStatus::CLOSED, "{e:?}");
        } else {
            assert_eq!(e.status, MaintenanceStatus::OPEN);
            assert!(e.visit.is_some());
        }
    }

    // Dead letters with their reasons.
    assert!(wait_until(Duration::from_secs(30), || {
        read_committed(&TopicRole::DeadLetters.topic(&prefix)).len() == 4
    }));
    let mut reasons: Vec<DeadLetterReason> = read_committed(&TopicRole::DeadLetters.topic(&prefix))
        .iter()
        .map(|r| decode::<DeadLetter>(&r.value).unwrap().reason)
        .collect();
    reasons.sort();
    let mut want = vec![
        DeadLetterReason::UNDECODABLE,
        DeadLetterReason::UNKNOWN_ALERT,
        DeadLetterReason::STALE_TRANSITION,
        DeadLetterReason::INVALID_COMMAND,
    ];
    want.sort();
    assert_eq!(reasons, want);
    assert!(notifier.terminate().success());
}

#[test]
fn inputs_that_are_not_co_partitioned_fail_at_start_naming_the_topic() {
    let prefix = unique_prefix("copart");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let commands = TopicRole::AlertCommands.topic(&prefix);
    block_on(admin.create_topics(
        &[NewTopic::new(&commands, 2, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    create_topics(&prefix, 3);
    let port = free_port();
    let args = seqmon_testkit::stage_args("notifier", &bootstrap(), &prefix, port);
    let out = Command::new(bin("notifier")).args(&args).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("alerts.commands") && text.contains("co-partitioned"),
        "{text}"
    );
}
