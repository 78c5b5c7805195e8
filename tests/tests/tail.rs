//! `seqmon-admin tail` on a real broker: committed records only (an aborted transaction never
//! shows), every filter and start position, sealed records opened with the key ring (and named,
//! not printed, without it), an undecodable record reported and counted, `--follow` picking up
//! records written after it started. The Avro JSON lines are read back by fastavro's Avro JSON
//! reader (an independent implementation of the specification) with the schema file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use seqmon_integration_tests::*;
use seqmon_model::records::{DeadLetter, DeadLetterReason};
use seqmon_model::topics::TopicRole;
use seqmon_runtime::envelope::KeyRing;
use serde_json::Value as Json;

fn dead_letter(offset: i64, key: Option<&[u8]>) -> DeadLetter {
    DeadLetter {
        stage: "validator".into(),
        reason: DeadLetterReason::OUT_OF_RANGE,
        detail: format!("record {offset}"),
        source_topic: "telemetry.raw".into(),
        source_partition: 1,
        source_offset: offset,
        source_key: key.map(<[u8]>::to_vec),
        source_timestamp_ms: (offset % 2 == 0).then_some(1_700_000_000_000 + offset),
        original_bytes: vec![0, 1, 2, 0xff, offset as u8],
    }
}

fn tail(prefix: &str, args: &[&str]) -> (Vec<Json>, String) {
    let out = Command::new(bin("seqmon-admin"))
        .arg("tail")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            prefix,
        ])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "tail {args:?} failed: {stderr}");
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

fn transactional_producer(id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", id)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    p
}

#[test]
fn tail_shows_committed_records_of_any_topic_decoded_filtered_and_opened() {
    let prefix = unique_prefix("tail");
    create_topics(&prefix, 3);
    let topic = format!("{prefix}deadletter.analysis");
    // A day ago, whole minutes (the broker refuses timestamps far ahead of its clock).
    let base = (now_ms() - 86_400_000) / 60_000 * 60_000;

    // 12 committed records over 4 keys, then 5 in an aborted transaction, then garbage.
    let p = transactional_producer(&format!("{prefix}tail-test"));
    p.begin_transaction().unwrap();
    for i in 0..12i64 {
        let key = format!("A{:05}", i % 4);
        let bytes = seqmon_model::codec::encode(&dead_letter(i, Some(b"k"))).unwrap();
        p.send(
            BaseRecord::to(&topic)
                .key(key.as_bytes())
                .payload(&bytes)
                .timestamp(base + i * 60_000),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    for i in 100..105i64 {
        let bytes = seqmon_model::codec::encode(&dead_letter(i, None)).unwrap();
        p.send(BaseRecord::to(&topic).key("A00000").payload(&bytes))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    produce(
        &topic,
        vec![(
            "A00009".to_string(),
            b"not avro at all".to_vec(),
            Some(base + 20 * 60_000),
        )],
    );

    // Everything committed, in the writer's schema, Avro JSON.
    let (lines, summary) = tail(&prefix, &["deadletter.analysis"]);
    assert_eq!(lines.len(), 13, "12 records and the garbage: {summary}");
    assert!(
        summary.contains("13 record(s) printed, 0 filtered out, 1 not decoded (undecodable 1)"),
        "{summary}"
    );
    let good: Vec<&Json> = lines.iter().filter(|l| l.get("value").is_some()).collect();
    assert_eq!(good.len(), 12);
    let mut offsets: Vec<i64> = good
        .iter()
        .map(|l| l["value"]["source_offset"].as_i64().unwrap())
        .collect();
    offsets.sort();
    assert_eq!(
        offsets,
        (0..12).collect::<Vec<_>>(),
        "no aborted record shows"
    );
    for l in &good {
        assert_eq!(l["schema"], "dead_letter");
        assert_eq!(l["topic"], topic);
        assert_eq!(l["timestamp_type"], "create");
        let o = l["value"]["source_offset"].as_i64().unwrap();
        assert_eq!(l["key"], format!("A{:05}", o % 4));
        assert_eq!(l["timestamp_ms"], base + o * 60_000);
        assert_eq!(l["value"]["reason"], "OUT_OF_RANGE");
        // Avro JSON: a union's branch is named; bytes are code points.
        assert_eq!(l["value"]["source_key"], serde_json::json!({"bytes": "k"}));
        if o % 2 == 0 {
            assert_eq!(
                l["value"]["source_timestamp_ms"]["long"],
                1_700_000_000_000 + o
            );
        } else {
            assert_eq!(l["value"]["source_timestamp_ms"], Json::Null);
        }
    }
    let bad = lines.iter().find(|l| l.get("error").is_some()).unwrap();
    assert_eq!(bad["error"], "undecodable");
    assert_eq!(bad["key"], "A00009");
    assert!(
        !bad.to_string().contains("not avro"),
        "the bytes are never printed"
    );

    // Filters: one instrument; a time window; one partition; the last record per partition.
    let (one, _) = tail(&prefix, &["deadletter.analysis", "--instrument", "A00002"]);
    assert_eq!(one.len(), 3);
    assert!(one.iter().all(|l| l["key"] == "A00002"));
    let (window, _) = tail(
        &prefix,
        &[
            "deadletter.analysis",
            "--from-time",
            &(base + 3 * 60_000).to_string(),
            "--until-time",
            &(base + 7 * 60_000).to_string(),
        ],
    );
    let mut w: Vec<i64> = window
        .iter()
        .map(|l| l["value"]["source_offset"].as_i64().unwrap())
        .collect();
    w.sort();
    assert_eq!(w, vec![3, 4, 5, 6]);
    let partition = good[0]["partition"].as_i64().unwrap();
    let (part, _) = tail(
        &prefix,
        &["deadletter.analysis", "--partition", &partition.to_string()],
    );
    assert!(!part.is_empty() && part.iter().all(|l| l["partition"] == partition));
    let (last, _) = tail(&prefix, &["deadletter.analysis", "--last", "1"]);
    let partitions_with_data: std::collections::BTreeSet<i64> = lines
        .iter()
        .map(|l| l["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(last.len(), partitions_with_data.len(), "one per partition");
    let (two, _) = tail(&prefix, &["deadletter.analysis", "--max", "2"]);
    assert_eq!(two.len(), 2);

    // The file-mode dialect and the bare values.
    let (file, _) = tail(
        &prefix,
        &[
            "deadletter.analysis",
            "--format",
            "file-json",
            "--values-only",
            "--instrument",
            "A00000",
        ],
    );
    assert_eq!(file.len(), 3);
    for v in &file {
        assert_eq!(v["source_key"], "6b", "bytes as hex, no union wrapper");
        assert!(v.get("topic").is_none());
    }

    // An independent Avro JSON decoder reads every value line with the schema file.
    if let Ok(python) = std::env::var("INTEROP_PYTHON") {
        let (values, _) = tail(
            &prefix,
            &[
                "deadletter.analysis",
                "--values-only",
                "--instrument",
                "A00001",
            ],
        );
        let version = seqmon_model::schema_store::store()
            .latest("dead_letter")
            .version;
        let schema = format!(
            "{}/../schemas/dead_letter/v{version}.avsc",
            env!("CARGO_MANIFEST_DIR")
        );
        let script = r#"
import sys, io, json, fastavro
schema = fastavro.parse_schema(json.load(open(sys.argv[1])))
records = list(fastavro.json_reader(io.StringIO(sys.stdin.read()), schema))
print(json.dumps([[r["source_offset"], r["source_key"].hex(), r["original_bytes"].hex(), r["source_timestamp_ms"]] for r in records]))
"#;
        let mut child = Command::new(python)
            .args(["-c", script, &schema])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input: String = values.iter().map(|v| format!("{v}\n")).collect();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let read: Vec<(i64, String, String, Option<i64>)> =
            serde_json::from_slice(&out.stdout).unwrap();
        let mut read = read;
        read.sort();
        assert_eq!(read.len(), 3);
        for (o, key, bytes, ts) in read {
            assert_eq!(key, "6b");
            assert_eq!(bytes, format!("000102ff{:02x}", o as u8));
            assert_eq!(ts, (o % 2 == 0).then_some(1_700_000_000_000 + o));
        }
    } else {
        eprintln!(
            "INTEROP_PYTHON not set: the fastavro cross-check is skipped (make test sets it)"
        );
    }

    // Sealed records: opened with the key ring, named (never printed) without it.
    let keys_dir = std::env::temp_dir().join(format!("{}keys", prefix));
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(keys_dir.join("k1.key"), "ab".repeat(32)).unwrap();
    let ring = KeyRing::from_dir(&keys_dir, "k1").unwrap();
    let sensitive = format!("{prefix}deadletter.sensitive");
    let plain = seqmon_model::codec::encode(&dead_letter(7, None)).unwrap();
    let (sealed, header) = ring.seal(TopicRole::DeadLettersSensitive, b"A00042", &plain);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(&sensitive)
                .key("A00042")
                .payload(&sealed)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: seqmon_runtime::envelope::HEADER,
                        value: Some(header.as_bytes()),
                    }),
                ),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let (opened, _) = tail(
        &prefix,
        &[
            "deadletter.sensitive",
            "--encryption-keys-dir",
            keys_dir.to_str().unwrap(),
            "--encryption-active-key",
            "k1",
        ],
    );
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["value"]["source_offset"], 7);
    let (closed, summary) = tail(&prefix, &["deadletter.sensitive"]);
    assert_eq!(closed[0]["error"], "sealed_no_keys", "{summary}");
    assert!(closed[0].get("value").is_none());

    // --follow from the end sees only what is written after it started.
    let mut follower = Command::new(bin("seqmon-admin"))
        .arg("tail")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
        ])
        .args([
            "deadletter.analysis",
            "--from-end",
            "--follow",
            "--max",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // And one that starts with the last record of each partition, then follows all of them.
    let with_data = partitions_with_data.len();
    let mut last_follower = Command::new(bin("seqmon-admin"))
        .arg("tail")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
        ])
        .args(["deadletter.analysis", "--last", "1", "--follow", "--max"])
        .arg((with_data + 2).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let fresh: Vec<(String, Vec<u8>, Option<i64>)> = (200..202)
        .map(|i| {
            (
                "A00003".to_string(),
                seqmon_model::codec::encode(&dead_letter(i, None)).unwrap(),
                None,
            )
        })
        .collect();
    produce(&topic, fresh);
    let done = wait_until(Duration::from_secs(30), || {
        follower.try_wait().unwrap().is_some()
    });
    if !done {
        let _ = follower.kill();
        panic!("tail --follow --max 2 did not end after two new records");
    }
    let out = follower.wait_with_output().unwrap();
    let followed: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut got: Vec<i64> = followed
        .iter()
        .map(|l| l["value"]["source_offset"].as_i64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![200, 201]);
    let done = wait_until(Duration::from_secs(30), || {
        last_follower.try_wait().unwrap().is_some()
    });
    if !done {
        let _ = last_follower.kill();
        panic!("tail --last 1 --follow did not see the last records and the two new ones");
    }
    let out = last_follower.wait_with_output().unwrap();
    let lines: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), with_data + 2);
    let fresh_seen = lines
        .iter()
        .filter(|l| {
            l["value"]["source_offset"]
                .as_i64()
                .is_some_and(|o| o >= 200)
        })
        .count();
    assert_eq!(
        fresh_seen, 2,
        "the last of each partition, then the new ones"
    );

    // Bad arguments are named.
    let bad = Command::new(bin("seqmon-admin"))
        .args([
            "tail",
            "--bootstrap-servers",
            &bootstrap(),
            "features",
            "--from-time",
            "yesterday",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from-time"));
    let zero = Command::new(bin("seqmon-admin"))
        .args([
            "tail",
            "--bootstrap-servers",
            &bootstrap(),
            "features",
            "--max",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(zero.status.code(), Some(2), "--max 0 is refused");
    // A time ago, written as the docs write it (no `=`): the whole day of records.
    let (ago, _) = tail(
        &prefix,
        &[
            "deadletter.analysis",
            "--from-time",
            "-2d",
            "--instrument",
            "A00001",
        ],
    );
    assert_eq!(ago.len(), 3);
    let missing = Command::new(bin("seqmon-admin"))
        .args([
            "tail",
            "--bootstrap-servers",
            &bootstrap(),
            &format!("{prefix}no-such-topic"),
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}
