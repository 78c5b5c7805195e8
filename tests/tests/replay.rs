//! `seqmon-admin replay`, `backfill` and `alert diff` on a real broker.
//!
//! Replay: a simulated fleet (sealed at rest) goes onto a per-test `telemetry.raw`, the
//! production validator service consumes it (so a production group with committed offsets
//! exists), then the whole chain is replayed twice into two `replay.<name>.` prefixes. Every
//! output topic partition must hold the same records in both (key, offset, timestamp, and the
//! value byte for byte; on the sealed topics, whose envelopes carry random nonces, the opened
//! plaintext), the replay's validator output must be the production validator's (as multisets),
//! and no production topic's end offsets nor the production group's committed offsets may move.
//! Backfill: a JSON-lines file with bad lines loads its good records, sealed, and reports the
//! bad ones by line number. Diff: two crafted `alerts` topics differ by one added, one removed and
//! one changed alert, and the two replays by none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seqmon_integration_tests::gateway::{sample, write_key};
use seqmon_integration_tests::*;
use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_model::{
    decode, encode, Alert, AlertAction, AlertState, AlertTransition, AnomalySeverity,
    InstrumentModel, Subsystem, Telemetry, TransitionCause,
};
use seqmon_runtime::envelope::{KeyRing, HEADER};

fn admin(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin("seqmon-admin"));
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Low and high watermarks of every partition of `topic`.
fn end_offsets(topic: &str) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    (0..n)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
        })
        .collect()
}

/// A topic's configuration value, described by the broker (the admin future driven by parking
/// this thread: the client's background thread wakes it).
fn topic_setting(topic: &str, name: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let spec = [ResourceSpecifier::Topic(topic)];
    let opts = AdminOptions::new();
    let mut future = std::pin::pin!(admin.describe_configs(&spec, &opts));
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let result = loop {
        if let Poll::Ready(r) = future.as_mut().poll(&mut cx) {
            break r;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    };
    let resource = result.unwrap().into_iter().next()?.ok()?;
    resource.get(name).and_then(|e| e.value.clone())
}

/// The committed offsets of `group` on `topic`'s partitions.
fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect()
}

/// A topic's records as compared: (partition, offset, key, timestamp, value), the value opened
/// when the topic is sealed.
type Seen = Vec<(i32, i64, String, Option<i64>, Vec<u8>)>;

fn seen(topic: &str, role: TopicRole, ring: &KeyRing) -> Seen {
    let mut out: Seen = read_committed(topic)
        .into_iter()
        .map(|r| {
            let value = if role.spec().side == PrivacySide::Sensitive {
                let header = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == HEADER)
                    .map(|(_, v)| v.as_slice());
                assert!(
                    header.is_some(),
                    "{topic}: a sensitive record is not sealed"
                );
                ring.open(role, r.key.as_bytes(), header, &r.value)
                    .unwrap_or_else(|e| panic!("{topic}: does not open: {e}"))
            } else {
                r.value
            };
            (r.partition, r.offset, r.key, r.timestamp_ms, value)
        })
        .collect();
    out.sort();
    out
}

const REPLAY_ROLES: [TopicRole; 11] = [
    TopicRole::Validated,
    TopicRole::DeadLettersSensitive,
    TopicRole::Sanitized,
    TopicRole::PrivacyAudit,
    TopicRole::Features,
    TopicRole::DeadLetters,
    TopicRole::Anomalies,
    TopicRole::CohortSignals,
    TopicRole::Alerts,
    TopicRole::Maintenance,
    TopicRole::ChangelogValidator,
];

#[test]
fn a_replay_is_deterministic_and_leaves_production_alone() {
    let prefix = unique_prefix("replay");
    create_topics(&prefix, 3);
    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    let keys = dir.join("keys");
    write_key(&keys, "k1", 7);
    let ring = KeyRing::from_dir(&keys, "k1").unwrap();
    let keys_dir = keys.to_str().unwrap();
    let sealing = [
        "--encryption-keys-dir",
        keys_dir,
        "--encryption-active-key",
        "k1",
    ];

    // Production: a simulated fleet, sealed, and the validator service over it.
    let start = (now_ms() - 4 * 3_600_000) / 60_000 * 60_000;
    let status = Command::new(bin("fleet-simulator"))
        .args([
            "--to",
            "kafka",
            "--instruments",
            "12",
            "--duration-hours",
            "4",
        ])
        .args(["--seed", "5", "--bad-record-share", "0.03"])
        .args(["--start-time-ms", &start.to_string()])
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
        ])
        .args(sealing)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let raw = TopicRole::Raw.topic(&prefix);
    let raw_records: i64 = end_offsets(&raw).iter().map(|(l, h)| h - l).sum();
    assert!(raw_records > 1000, "{raw_records} raw records");
    let mut validator = Service::start("validator", &prefix, &sealing);
    let group = format!("{prefix}validator");
    let caught_up = wait_until(Duration::from_secs(120), || {
        let c = committed(&group, &raw, 3);
        let ends = end_offsets(&raw);
        c.iter().zip(&ends).all(|(o, (_, h))| match o {
            Offset::Offset(x) => x == h,
            _ => *h == 0,
        })
    });
    assert!(
        caught_up,
        "the production validator did not catch up: committed {:?}, ends {:?}, input {:?}",
        committed(&group, &raw, 3),
        end_offsets(&raw),
        validator.metrics().get("seqmon_input_records_total")
    );
    assert!(validator.terminate().success());

    let production_before: BTreeMap<String, Vec<(i64, i64)>> = TopicRole::ALL
        .iter()
        .map(|r| (r.topic(&prefix), end_offsets(&r.topic(&prefix))))
        .collect();
    let group_before = committed(&group, &raw, 3);

    // Two replays of the same range into two prefixes.
    let name = prefix.trim_end_matches('.').trim_start_matches("it-");
    let into = [format!("replay.{name}-a."), format!("replay.{name}-b.")];
    for into in &into {
        let started = std::time::Instant::now();
        let out = admin(
            &[
                "replay",
                "--bootstrap-servers",
                &bootstrap(),
                "--topic-prefix",
                &prefix,
                "--encryption-keys-dir",
                keys_dir,
                "--encryption-active-key",
                "k1",
                "--into",
                into,
                "--stage",
                "all",
                "--batch-records",
                "300",
            ],
            &[(
                "PRIVACY_PSEUDONYM_KEY",
                seqmon_testkit::TEST_PSEUDONYM_KEY_HEX,
            )],
        );
        assert!(out.status.success(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Not a terminal: no progress line, only the summary.
        assert!(
            !stderr.contains("records/s") && !stderr.contains('\r'),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("replay: {raw_records} source records")),
            "{stderr}"
        );
        eprintln!(
            "replay into {into}: {:.1} s; {}",
            started.elapsed().as_secs_f64(),
            stderr.trim()
        );
    }

    // Byte-identical (plaintext-identical where sealed), topic partition by topic partition.
    let mut compared = BTreeMap::new();
    for role in REPLAY_ROLES {
        let (a, b) = (role.topic(&into[0]), role.topic(&into[1]));
        if role == TopicRole::ChangelogValidator {
            // The replay keeps state in process: it writes no changelog.
            assert!(
                end_offsets(&TopicRole::ChangelogValidator.topic(&prefix))
                    .iter()
                    .any(|(_, h)| *h > 0),
                "the production validator wrote its changelog"
            );
            continue;
        }
        let (x, y) = (seen(&a, role, &ring), seen(&b, role, &ring));
        assert_eq!(
            x.len(),
            y.len(),
            "{role}: {} vs {} records",
            x.len(),
            y.len()
        );
        for (r, s) in x.iter().zip(&y) {
            assert_eq!(r, s, "{role}: the two replays differ");
        }
        compared.insert(role.as_str(), x.len());
    }
    eprintln!("records per replay topic: {compared:?}");
    for role in ["validated", "sanitized", "features", "anomalies", "alerts"] {
        assert!(
            compared[role] > 0,
            "the replay wrote no {role}: {compared:?}"
        );
    }
    assert!(
        compared["dead_letters_sensitive"] > 0,
        "bad records were dead-lettered"
    );

    // The offsets the stages were told are those the records got: every audit record points at
    // a validated record of its instrument and event time in the replay topic (commit markers
    // counted: 28 transactions shift later offsets by up to 28).
    let validated: BTreeMap<(i32, i64), (String, i64)> = seen(
        &TopicRole::Validated.topic(&into[0]),
        TopicRole::Validated,
        &ring,
    )
    .into_iter()
    .map(|r| {
        let t: Telemetry = decode(&r.4).unwrap();
        ((r.0, r.1), (r.2, t.event_time_ms))
    })
    .collect();
    let audits = seen(
        &TopicRole::PrivacyAudit.topic(&into[0]),
        TopicRole::PrivacyAudit,
        &ring,
    );
    assert!(!audits.is_empty());
    for r in &audits {
        let a: seqmon_model::PrivacyAudit = decode(&r.4).unwrap();
        assert_eq!(a.source_topic, TopicRole::Validated.topic(&prefix));
        assert_eq!(
            validated.get(&(a.source_partition, a.source_offset)),
            Some(&(a.instrument_serial.clone(), a.event_time_ms)),
            "audit of {} points at {}@{}",
            a.instrument_serial,
            a.source_partition,
            a.source_offset
        );
    }

    // The replay's validator gave what production's did (key and plaintext, as multisets).
    for role in [TopicRole::Validated, TopicRole::DeadLettersSensitive] {
        let strip = |s: Seen| {
            let mut v: Vec<(String, Vec<u8>)> = s.into_iter().map(|r| (r.2, r.4)).collect();
            v.sort();
            v
        };
        let production = strip(seen(&role.topic(&prefix), role, &ring));
        let replayed = strip(seen(&role.topic(&into[0]), role, &ring));
        assert_eq!(production.len(), replayed.len(), "{role}");
        assert!(
            production == replayed,
            "{role}: replay and production differ"
        );
    }

    // Production untouched: end offsets of every topic, and the group's committed offsets.
    let production_after: BTreeMap<String, Vec<(i64, i64)>> = TopicRole::ALL
        .iter()
        .map(|r| (r.topic(&prefix), end_offsets(&r.topic(&prefix))))
        .collect();
    assert_eq!(production_before, production_after);
    assert_eq!(group_before, committed(&group, &raw, 3));

    // The alerts of the two replays do not differ.
    let out = admin(
        &[
            "alert",
            "--bootstrap-servers",
            &bootstrap(),
            "diff",
            "--before",
            &into[0],
            "--after",
            &into[1],
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 added, 0 removed, 0 changed"),
        "{}",
        text(&out)
    );

    // One stage and those after it, over the later half of the features by event time, with
    // replay a standing in for production.
    let features = seen(
        &TopicRole::Features.topic(&into[0]),
        TopicRole::Features,
        &ring,
    );
    let ends: Vec<i64> = features
        .iter()
        .map(|r| decode::<seqmon_model::Feature>(&r.4).unwrap().window_end_ms)
        .collect();
    let middle = (ends.iter().min().unwrap() + ends.iter().max().unwrap()) / 2;
    let later = ends.iter().filter(|t| **t >= middle).count();
    let detector_into = format!("replay.{name}-c.");
    let out = admin(
        &[
            "replay",
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &into[0],
            "--into",
            &detector_into,
            "--stage",
            "anomaly-detector",
            "--downstream",
            "--time-basis",
            "event",
            "--from-time",
            &middle.to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "replay: {later} source records ({} outside the event-time range, 0 sealed records that did not open)",
            features.len() - later
        )),
        "{}",
        text(&out)
    );
    // Only the detector, the cohort analyzer and the notifier wrote.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("telemetry."),
        "{}",
        text(&out)
    );
    let cohort = seen(
        &TopicRole::CohortSignals.topic(&detector_into),
        TopicRole::CohortSignals,
        &ring,
    );
    assert!(!cohort.is_empty(), "the detector ran");

    // Replay topics keep their records (unlimited retention: they carry old timestamps), and
    // each complete replay left its completion marker (one record and its commit marker).
    for into in &into {
        assert_eq!(
            topic_setting(&TopicRole::Features.topic(into), "retention.ms").as_deref(),
            Some("-1")
        );
        assert_eq!(end_offsets(&format!("{into}manifest"))[0].1, 2);
    }

    // A replay into topics that hold records is refused, naming the setting.
    let again = admin(
        &[
            "replay",
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
            "--into",
            &into[0],
            "--stage",
            "anomaly-detector",
        ],
        &[],
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--into"),
        "{}",
        text(&again)
    );

    // A sealed source without the key ring, or with one that does not open it, is refused
    // before anything is created (rather than every record dropped or dead-lettered).
    let wrong = dir.join("wrong-keys");
    write_key(&wrong, "k1", 8);
    for (case, extra) in [
        ("no keys", vec![]),
        (
            "wrong keys",
            vec![
                "--encryption-keys-dir",
                wrong.to_str().unwrap(),
                "--encryption-active-key",
                "k1",
            ],
        ),
    ] {
        let unsealed_into = format!("replay.{name}-{}.", case.replace(' ', "-"));
        for basis in ["kafka", "event"] {
            let base = [
                "replay",
                "--bootstrap-servers",
                &bootstrap(),
                "--topic-prefix",
                &prefix,
                "--into",
                &unsealed_into,
                "--stage",
                "validator",
                "--time-basis",
                basis,
                "--from-time",
                "-30d",
            ];
            let out = admin(&[&base[..], &extra[..]].concat(), &[]);
            assert_eq!(out.status.code(), Some(2), "{case} {basis}: {}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("--encryption-keys-dir"),
                "{case}: {}",
                text(&out)
            );
        }
        assert!(
            end_offsets(&TopicRole::Validated.topic(&unsealed_into))
                .iter()
                .all(|(_, h)| *h == 0),
            "{case}: a refused replay wrote"
        );
    }

    // Both replays completed: diff compares them without a warning, and finds nothing. A
    // replay prefix without its completion marker (killed) is compared with a warning, and
    // --exit-code says there are differences.
    let same = admin(
        &[
            "alert",
            "--bootstrap-servers",
            &bootstrap(),
            "diff",
            "--before",
            &into[0],
            "--after",
            &into[1],
            "--exit-code",
        ],
        &[],
    );
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(
        !String::from_utf8_lossy(&same.stderr).contains("completion marker"),
        "{}",
        text(&same)
    );
    let killed = format!("replay.{name}-killed.");
    create_topics(&killed, 1);
    let partial = admin(
        &[
            "alert",
            "--bootstrap-servers",
            &bootstrap(),
            "diff",
            "--before",
            &into[0],
            "--after",
            &killed,
            "--exit-code",
        ],
        &[],
    );
    assert_eq!(partial.status.code(), Some(1), "{}", text(&partial));
    let said = String::from_utf8_lossy(&partial.stderr);
    assert!(
        said.contains(&format!("{killed}manifest holds no completion marker"))
            && !said.contains(&format!("{}manifest", into[0])),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_prefix_that_is_not_a_replay_prefix_or_is_production_is_refused() {
    for (production, into, says) in [
        ("", "staging.", "replay.<name>."),
        ("", "replay.x", "replay.<name>."),
        ("replay.x.", "replay.x.", "production topic"),
    ] {
        let out = admin(
            &[
                "replay",
                "--bootstrap-servers",
                &bootstrap(),
                "--topic-prefix",
                production,
                "--into",
                into,
                "--stage",
                "validator",
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--into") && stderr.contains(says),
            "{stderr}"
        );
    }
}

#[test]
fn backfill_loads_good_lines_sealed_and_reports_bad_ones_by_line() {
    let prefix = unique_prefix("backfill");
    create_topics(&prefix, 2);
    let dir = std::env::temp_dir().join(prefix.trim_end_matches('.'));
    let keys = dir.join("keys");
    write_key(&keys, "k1", 9);
    let ring = KeyRing::from_dir(&keys, "k1").unwrap();
    let records: Vec<Telemetry> = (0..5)
        .map(|i| {
            let mut t = sample();
            t.message_id = format!("backfill-{i}");
            t.instrument_serial = format!("BF{i:03}");
            // Recent: telemetry.raw (producer-stamped here) keeps 3 days.
            t.sent_time_ms = now_ms() - 3_600_000 + i * 1000;
            t
        })
        .collect();
    let line = |t: &Telemetry| serde_json::to_string(t).unwrap();
    let file = [
        line(&records[0]),
        "{not json".to_string(),
        line(&records[1]),
        r#"{"message_id": "m", "instrument_serial": "X1"}"#.to_string(),
        String::new(),
        line(&records[2]).replace("\"kind\":\"", "\"kind\":\"NO_SUCH_"),
        line(&records[2]),
        line(&records[3]),
        line(&records[4]),
    ]
    .join("\n");
    let path = dir.join("recorded.jsonl");
    std::fs::write(&path, file + "\n").unwrap();
    let out = admin(
        &[
            "backfill",
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
            "--encryption-keys-dir",
            keys.to_str().unwrap(),
            "--encryption-active-key",
            "k1",
            "--file",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in ["line 2:", "line 4:", "line 6:"] {
        assert!(stderr.contains(l), "{l}: {stderr}");
    }
    assert!(
        stderr.contains("9 lines/records read, 5 produced") && stderr.contains("3 bad, 1 blank"),
        "{stderr}"
    );
    // Values are never printed.
    assert!(!stderr.contains("BF00"), "{stderr}");

    let raw = TopicRole::Raw.topic(&prefix);
    let got = read_until_some(Duration::from_secs(30), || {
        let r = seen(&raw, TopicRole::Raw, &ring);
        if r.len() >= 5 {
            r
        } else {
            Vec::new()
        }
    });
    assert_eq!(got.len(), 5);
    let mut loaded: Vec<(String, Option<i64>, Telemetry)> = got
        .into_iter()
        .map(|(_, _, k, ts, v)| (k, ts, decode::<Telemetry>(&v).unwrap()))
        .collect();
    loaded.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (key, ts, t)) in loaded.iter().enumerate() {
        assert_eq!(key, &records[i].instrument_serial);
        assert_eq!(*ts, Some(records[i].sent_time_ms));
        assert_eq!(encode(t).unwrap(), encode(&records[i]).unwrap());
    }

    // A recording older than the retention would be deleted within minutes: refused, nothing
    // produced; without a key ring the plaintext would land on a sealed topic: refused.
    let mut old = records[0].clone();
    old.message_id = "backfill-old".into();
    old.sent_time_ms = now_ms() - 5 * 24 * 3_600_000;
    let old_path = dir.join("old.jsonl");
    std::fs::write(&old_path, line(&old) + "\n").unwrap();
    let base = [
        "backfill",
        "--bootstrap-servers",
        &bootstrap(),
        "--topic-prefix",
        &prefix,
        "--file",
        old_path.to_str().unwrap(),
    ];
    let keyed = [
        "--encryption-keys-dir",
        keys.to_str().unwrap(),
        "--encryption-active-key",
        "k1",
    ];
    let refused = admin(&[&base[..], &keyed[..]].concat(), &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("1 record(s)")
            && said.contains("retention.ms")
            && said.contains("--accept-old-records"),
        "{said}"
    );
    let unsealed = admin(&base, &[]);
    assert_eq!(unsealed.status.code(), Some(2), "{}", text(&unsealed));
    assert!(
        String::from_utf8_lossy(&unsealed.stderr).contains("--encryption-keys-dir"),
        "{}",
        text(&unsealed)
    );
    let after: i64 = end_offsets(&raw).iter().map(|(_, high)| high).sum();
    assert_eq!(after, 5, "a refused backfill produced");
    let _ = std::fs::remove_dir_all(&dir);
}

fn alert(instrument: &str, subsystem: Subsystem, opened: i64, severity: AnomalySeverity) -> Alert {
    Alert {
        alert_id: format!("{instrument}:{}:{opened}", subsystem.label()),
        instrument_serial: instrument.into(),
        instrument_model: InstrumentModel::NOVASEQ_6000,
        subsystem,
        action: AlertAction::OPEN,
        severity,
        metric: "flow_rate_ul_min".into(),
        score: 7.5,
        title: format!("{instrument} drifts"),
        suspected_part: "pump".into(),
        opened_at_ms: opened,
        event_time_ms: opened,
        anomaly_count: 1,
        cohort: None,
        state: AlertState::OPEN,
        transition: AlertTransition::OPENED,
        cause: TransitionCause::ANOMALY,
        sequence: 1,
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
fn alert_diff_lists_an_added_a_removed_and_a_changed_alert() {
    let base = unique_prefix("diff");
    let name = base.trim_end_matches('.').trim_start_matches("it-");
    let (before, after) = (format!("replay.{name}-x."), format!("replay.{name}-y."));
    create_topics(&before, 1);
    create_topics(&after, 1);
    let t = 1_780_000_000_000;
    let same = alert("SAME1", Subsystem::FLUIDICS, t, AnomalySeverity::HIGH);
    let gone = alert("GONE1", Subsystem::OPTICAL, t, AnomalySeverity::HIGH);
    let new = alert(
        "NEW01",
        Subsystem::THERMAL,
        t + 60_000,
        AnomalySeverity::MEDIUM,
    );
    let worse = alert("WORSE", Subsystem::FLUIDICS, t, AnomalySeverity::MEDIUM);
    let mut worse_after = worse.clone();
    worse_after.sequence = 2;
    worse_after.severity = AnomalySeverity::CRITICAL;
    worse_after.transition = AlertTransition::WORSENED;
    worse_after.action = AlertAction::UPDATE;
    let put = |prefix: &str, alerts: &[&Alert]| {
        produce(
            &TopicRole::Alerts.topic(prefix),
            alerts
                .iter()
                .map(|a| (a.instrument_serial.clone(), encode(*a).unwrap(), None)),
        )
    };
    put(&before, &[&same, &gone, &worse]);
    put(&after, &[&same, &worse, &worse_after, &new]);
    let out = admin(
        &[
            "alert",
            "--bootstrap-servers",
            &bootstrap(),
            "diff",
            "--before",
            &before,
            "--after",
            &after,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text(&out));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("- GONE1 OPTICAL flow_rate_ul_min opened 2026-")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("+ NEW01 THERMAL")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("~ WORSE FLUIDICS")
            && l.contains("severity: MEDIUM -> CRITICAL")
            && l.contains("transitions: OPENED -> OPENED,WORSENED")),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 added, 1 removed, 1 changed, 1 unchanged"),
        "{}",
        text(&out)
    );
}
