//! Delivery on real parts: the alert dispatcher (an OS process) reads `alerts` from a real Kafka
//! broker and delivers to a real Prometheus Alertmanager (built from its source by
//! tools/alertmanager/alertmanager.sh, started on 127.0.0.1) and to HTTPS webhook receivers in
//! this test that verify signatures, fail on purpose, answer too late, answer slowly, refuse
//! everything, or are not there at all. Alertmanager is down for the first half and restarted
//! (losing its memory) at the end; the dispatcher is killed with SIGKILL in the middle.
//!
//! Asserts: Alertmanager ends with exactly the alerts that should fire, one per alert and label
//! set (none duplicated as separate alerts), resolved and snoozed ones gone, and is whole again
//! after its restart; every event reaches every subscribed endpoint (each idempotency key at
//! least once, every body signed), filters hold, an endpoint that refuses or is absent gets
//! every event as a dead letter with reason DELIVERY_FAILED; a slow endpoint does not hold back
//! Alertmanager. Prints the figures (events, attempts, retries, duplicates absorbed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use seqmon_integration_tests::receiver::{self, Behaviour};
use seqmon_integration_tests::*;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, encode, Alert, AlertAction, AlertState, AlertTransition, AnomalySeverity, DeadLetter,
    DeadLetterReason, InstrumentModel, Subsystem, TransitionCause,
};

const SECRET: &str = "test-only-signing-secret-0123456789abcdef";

fn alertmanager(action: &str, port: u16) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(root.join("tools/alertmanager/alertmanager.sh"))
        .args([action, "--port", &port.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "alertmanager.sh {action} failed");
}

/// Active alerts in Alertmanager: (alertname, alert_id, severity) → count.
fn am_alerts(port: u16) -> Option<BTreeMap<(String, String, String), usize>> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true"
    );
    let body = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?
        .text()
        .ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    let mut out = BTreeMap::new();
    for a in list {
        let l = &a["labels"];
        for key in [
            "instrument",
            "model",
            "site",
            "subsystem",
            "part",
            "severity",
        ] {
            assert!(l[key].is_string(), "label {key} missing: {a}");
        }
        let k = (
            l["alertname"].as_str()?.to_string(),
            l["alert_id"].as_str()?.to_string(),
            l["severity"].as_str()?.to_string(),
        );
        *out.entry(k).or_default() += 1;
    }
    Some(out)
}

fn alert(
    serial: &str,
    seq: i32,
    state: AlertState,
    transition: AlertTransition,
    severity: AnomalySeverity,
) -> Alert {
    Alert {
        alert_id: format!("{serial}:fluidics:1000"),
        instrument_serial: serial.into(),
        instrument_model: InstrumentModel::NEXTSEQ_2000,
        subsystem: Subsystem::FLUIDICS,
        action: match transition {
            AlertTransition::OPENED => AlertAction::OPEN,
            AlertTransition::RESOLVED => AlertAction::RESOLVE,
            _ => AlertAction::UPDATE,
        },
        severity,
        metric: "fluidics_pressure_kpa".into(),
        score: 7.0,
        title: format!("{serial} fluidics: pressure {}", transition.as_str()),
        suspected_part: "pump seal or fluidics fitting (leak)".into(),
        opened_at_ms: now_ms() - 60_000,
        event_time_ms: now_ms(),
        anomaly_count: seq,
        cohort: None,
        state,
        transition,
        cause: TransitionCause::ANOMALY,
        sequence: seq,
        command_id: None,
        actor: None,
        comment: None,
        assignee: None,
        acknowledged_by: None,
        snoozed_until_ms: None,
        resolution: None,
        escalation_level: 0,
        reopen_count: 0,
        evidence: None,
    }
}

#[test]
fn alertmanager_and_webhooks_get_every_event_through_outages() {
    let prefix = unique_prefix("deliver");
    create_topics(&prefix, 3);
    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&dir).unwrap();
    let (tls, ca) = receiver::make_tls(&dir);
    let flaky = receiver::start(
        tls.clone(),
        SECRET,
        Behaviour {
            fail_first: 3,
            late_request: Some(2),
            late_by: Duration::from_millis(2500),
            ..Default::default()
        },
    );
    let emea = receiver::start(tls.clone(), SECRET, Behaviour::default());
    let slow = receiver::start(
        tls.clone(),
        SECRET,
        Behaviour {
            delay: Duration::from_millis(2000),
            ..Default::default()
        },
    );
    let broken = receiver::start(
        tls.clone(),
        SECRET,
        Behaviour {
            refuse_all: true,
            ..Default::default()
        },
    );
    let absent = format!("https://127.0.0.1:{}/hook", free_port());
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let hook = |name: &str, url: &str, timeout_ms: u64, extra: &str| {
        format!(
            r#"{{"name":"{name}","url":"{url}","secret_file":"{}","ca_file":"{}","timeout_ms":{timeout_ms}{extra}}}"#,
            secret_file.display(),
            ca.display()
        )
    };
    let hooks = format!(
        r#"{{"webhooks":[{},{},{},{},{}]}}"#,
        hook("flaky", &flaky.url, 1000, ""),
        hook(
            "emea",
            &emea.url,
            1000,
            r#","filter":{"sites":["emea-1"],"min_severity":"HIGH"}"#
        ),
        hook("slow", &slow.url, 5000, ""),
        hook("broken", &broken.url, 1000, ""),
        hook("absent", &absent, 1000, r#","max_attempts":2"#),
    );
    let hooks_file = dir.join("webhooks.json");
    std::fs::write(&hooks_file, hooks).unwrap();
    let serials: Vec<String> = (1..=8).map(|i| format!("I0{i}")).collect();
    let inventory: BTreeMap<&str, &str> = serials
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), if i < 4 { "emea-1" } else { "us-2" }))
        .collect();
    let inventory_file = dir.join("inventory.json");
    std::fs::write(&inventory_file, serde_json::to_string(&inventory).unwrap()).unwrap();

    // Alertmanager built and started once, then stopped: it is down when the alerts come.
    let am_port = free_port();
    alertmanager("start", am_port);
    alertmanager("stop", am_port);

    let metrics_port = free_port();
    let args: Vec<String> = [
        "--bootstrap-servers",
        &bootstrap(),
        "--topic-prefix",
        &prefix,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--alertmanager-url",
        &format!("http://127.0.0.1:{am_port}"),
        "--webhooks-file",
        hooks_file.to_str().unwrap(),
        "--inventory-file",
        inventory_file.to_str().unwrap(),
        "--console-url",
        "https://console.example",
        "--resend-interval-s",
        "30",
        "--backoff-base-ms",
        "100",
        "--backoff-cap-ms",
        "1000",
        "--breaker-cooldown-s",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut dispatcher = Service::launch("alert-dispatcher", &prefix, args, metrics_port);
    // Wait until it owns its partitions (the metric says so) before the alerts come.
    let assigned = |d: &Service| d.metrics().get("seqmon_assigned_partitions").copied();
    assert!(
        wait_until(Duration::from_secs(60), || assigned(&dispatcher)
            == Some(3.0)),
        "the dispatcher joins its group; log:\n{}",
        dispatcher.log_text()
    );
    let topic = TopicRole::Alerts.topic(&prefix);
    let send = |alerts: Vec<Alert>| {
        produce(
            &topic,
            alerts.into_iter().map(|a| {
                (
                    a.instrument_serial.clone(),
                    encode(&a).unwrap(),
                    Some(now_ms()),
                )
            }),
        )
    };

    // Phase 1, Alertmanager down: every instrument opens (MEDIUM).
    let mut events = 0;
    events += send(
        serials
            .iter()
            .map(|s| {
                alert(
                    s,
                    1,
                    AlertState::OPEN,
                    AlertTransition::OPENED,
                    AnomalySeverity::MEDIUM,
                )
            })
            .collect(),
    );
    let keys = |r: &receiver::Receiver| r.seen.lock().unwrap().keys.len();
    assert!(
        wait_until(Duration::from_secs(60), || keys(&flaky) == 8),
        "webhooks flow while Alertmanager is down; log:\n{}",
        dispatcher.log_text()
    );
    // The dispatcher dies; its successor redelivers what it had not finished.
    dispatcher.kill9();
    dispatcher.restart();
    assert!(wait_until(Duration::from_secs(60), || assigned(
        &dispatcher
    ) == Some(3.0)));
    let am_retried = |d: &Service| {
        d.metrics()
            .get("seqmon_deliveries_total{outcome=\"retried\",receiver=\"alertmanager-0\"}")
            .copied()
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || am_retried(&dispatcher) >= 1.0),
        "the successor tries Alertmanager (still down) and retries; log:\n{}",
        dispatcher.log_text()
    );
    alertmanager("start", am_port);
    let firing = |am: &BTreeMap<(String, String, String), usize>| am.len();
    assert!(
        wait_until(Duration::from_secs(60), || am_alerts(am_port)
            .is_some_and(|a| firing(&a) == 8)),
        "Alertmanager back: the eight open alerts; got {:?}; log:\n{}",
        am_alerts(am_port),
        dispatcher.log_text()
    );

    // Phase 2: four worsen, two resolve, one is snoozed, one acknowledged; one escalates.
    let mut phase2 = Vec::new();
    for s in &serials[..4] {
        phase2.push(alert(
            s,
            2,
            AlertState::OPEN,
            AlertTransition::WORSENED,
            AnomalySeverity::HIGH,
        ));
    }
    for s in &serials[4..6] {
        phase2.push(alert(
            s,
            2,
            AlertState::RESOLVED,
            AlertTransition::RESOLVED,
            AnomalySeverity::MEDIUM,
        ));
    }
    phase2.push(alert(
        &serials[6],
        2,
        AlertState::SNOOZED,
        AlertTransition::SNOOZED,
        AnomalySeverity::MEDIUM,
    ));
    phase2.push(alert(
        &serials[7],
        2,
        AlertState::ACKNOWLEDGED,
        AlertTransition::ACKNOWLEDGED,
        AnomalySeverity::MEDIUM,
    ));
    let mut escalated = alert(
        &serials[2],
        3,
        AlertState::OPEN,
        AlertTransition::ESCALATED,
        AnomalySeverity::HIGH,
    );
    escalated.escalation_level = 1;
    phase2.push(escalated);
    events += send(phase2);
    let sent_at = Instant::now();

    let id = |s: &str| format!("{s}:fluidics:1000");
    let mut want: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for s in &serials[..4] {
        want.insert(("SeqmonInstrumentAlert".into(), id(s), "high".into()), 1);
    }
    want.insert(
        (
            "SeqmonInstrumentAlert".into(),
            id(&serials[7]),
            "medium".into(),
        ),
        1,
    );
    want.insert(
        (
            "SeqmonAlertEscalated".into(),
            id(&serials[2]),
            "high".into(),
        ),
        1,
    );
    // Within 20 s, while an unposted resolution would still fire for 120 s (endsAt is four
    // 30 s intervals ahead): the resolutions were posted.
    assert!(
        wait_until(Duration::from_secs(20), || am_alerts(am_port).as_ref()
            == Some(&want)),
        "Alertmanager holds exactly what fires: {:?}",
        am_alerts(am_port)
    );
    let am_in = sent_at.elapsed();
    let slow_then = keys(&slow);
    assert!(
        slow_then < events,
        "the slow endpoint was still behind ({slow_then} of {events})"
    );

    // Every subscribed endpoint gets every event; filters hold; the refusing and the absent
    // endpoints' events are dead letters.
    assert!(
        wait_until(Duration::from_secs(120), || keys(&flaky) == events
            && keys(&slow) == events
            && keys(&emea) == 5),
        "flaky {} slow {} ({:?}) emea {} of {events}; log:\n{}",
        keys(&flaky),
        keys(&slow),
        slow.seen.lock().unwrap().keys,
        keys(&emea),
        dispatcher.log_text()
    );
    let dead_letters = || -> BTreeMap<String, BTreeSet<String>> {
        let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in read_committed(&TopicRole::DeadLetters.topic(&prefix)) {
            let d: DeadLetter = decode(&r.value).unwrap();
            assert_eq!(d.reason, DeadLetterReason::DELIVERY_FAILED);
            assert_eq!(d.stage, "alert-dispatcher");
            let receiver = d.detail.split(':').next().unwrap().to_string();
            let event = d.detail.rsplit("event ").next().unwrap().to_string();
            by.entry(receiver).or_default().insert(event);
        }
        by
    };
    assert!(
        wait_until(Duration::from_secs(120), || {
            let d = dead_letters();
            d.get("webhook broken").map(BTreeSet::len) == Some(events)
                && d.get("webhook absent").map(BTreeSet::len) == Some(events)
        }),
        "dead letters: {:?}",
        dead_letters()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    for r in [&flaky, &emea, &slow] {
        let s = r.seen.lock().unwrap();
        assert_eq!(s.bad_signatures, 0, "every body signed");
    }
    let emea_events: BTreeSet<String> = emea
        .seen
        .lock()
        .unwrap()
        .bodies
        .iter()
        .map(|b| {
            b["alert"]["instrument_serial"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        emea_events,
        serials[..4].iter().cloned().collect(),
        "only emea-1, only HIGH"
    );

    // Alertmanager restarts and forgets everything: the re-post makes it whole again.
    alertmanager("stop", am_port);
    alertmanager("start", am_port);
    assert!(
        wait_until(Duration::from_secs(60), || am_alerts(am_port).as_ref()
            == Some(&want)),
        "Alertmanager whole again after its restart: {:?}",
        am_alerts(am_port)
    );

    // Every record's deliveries done: the group's offsets reach the end of the topic.
    assert!(
        wait_until(Duration::from_secs(30), || group_lag(
            &format!("{prefix}alert-dispatcher"),
            &topic
        ) == Some(0)),
        "committed to the end: lag {:?}",
        group_lag(&format!("{prefix}alert-dispatcher"), &topic)
    );
    let m = dispatcher.metrics();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let retried_am =
        get("seqmon_deliveries_total{outcome=\"retried\",receiver=\"alertmanager-0\"}");
    let delivered_am =
        get("seqmon_deliveries_total{outcome=\"delivered\",receiver=\"alertmanager-0\"}");
    // The 503s came before the kill (these counters are the restarted process's); the receiver
    // saw them, and every event after them.
    assert_eq!(flaky.seen.lock().unwrap().statuses.get(&503), Some(&3));
    let f = flaky.seen.lock().unwrap();
    let absorbed: usize = f.keys.values().map(|n| n - 1).sum();
    eprintln!(
        "delivery: {events} events; flaky: {} requests ({:?}), {} unique events, {absorbed} repeated keys absorbed by the idempotency key (the late answer, the redelivery after the kill); Alertmanager: {delivered_am} alert records taken, {} retried posts, all {} firing alerts in place {:.1} s after phase 2 while the slow endpoint had {slow_then} of {events}; dead letters: broken {events}, absent {events}",
        f.statuses.values().sum::<usize>(),
        f.statuses,
        f.keys.len(),
        retried_am,
        want.len(),
        am_in.as_secs_f64()
    );
    drop(f);
    assert!(dispatcher.terminate().success());
    alertmanager("stop", am_port);
}
