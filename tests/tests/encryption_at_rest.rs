//! Encryption at rest on a real broker: with a key ring, the collector side seals raw records,
//! the validator opens them and seals everything it writes on the sensitive side, the privacy
//! enforcer opens what it reads. The broker's own log segment files of the sensitive topics hold
//! no plaintext of any record; the analysis side (not sealed) still shows readable values, so the
//! scan does see plaintext where there is some. A record sealed under a key the ring does not
//! hold is a dead letter, and processing goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use seqmon_integration_tests::{
    bootstrap, create_topics, read_committed, unique_prefix, wait_until, Service,
};
use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_model::{decode, DeadLetter, DeadLetterReason, Telemetry};
use seqmon_runtime::envelope::{KeyRing, HEADER};
use seqmon_simulator::{simulate, FleetConfig};

/// The local broker's data folder: SEQMON_BROKER_DATA_DIR, or the one `make test` starts.
fn broker_data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SEQMON_BROKER_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let port = std::env::var("KAFKA_PORT").unwrap_or_else(|_| "19092".into());
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../.cache/kafka/run-{port}/data"))
        });
    dir.is_dir().then_some(dir)
}

/// Every byte the broker holds on disk for `topic` (all partitions, all segment files).
fn segment_bytes(data: &Path, topic: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data).unwrap().filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_partition = name
            .strip_prefix(topic)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !is_partition {
            continue;
        }
        for f in std::fs::read_dir(entry.path())
            .unwrap()
            .filter_map(|e| e.ok())
        {
            if f.path().extension().is_some_and(|x| x == "log") {
                out.extend(std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn write_key(dir: &Path, id: &str, byte: u8) {
    std::fs::write(
        dir.join(format!("{id}.key")),
        format!("{byte:02x}").repeat(32),
    )
    .unwrap();
}

#[test]
fn sensitive_topics_hold_no_plaintext_on_the_broker_disk() {
    let Some(data) = broker_data_dir() else {
        eprintln!(
            "skipped: the broker's data folder is not on this machine (set SEQMON_BROKER_DATA_DIR)"
        );
        return;
    };
    let prefix = unique_prefix("enc");
    create_topics(&prefix, 2);
    let keys = std::env::temp_dir().join(format!("seqmon-enc-keys-{}", std::process::id()));
    std::fs::create_dir_all(&keys).unwrap();
    write_key(&keys, "k1", 0x11);
    let ring = KeyRing::from_dir(&keys, "k1").unwrap();
    let stranger = KeyRing::new([("k9".to_string(), [0x99u8; 32])], "k9").unwrap();

    // Valid telemetry of a small fleet, sealed by the producer; one more record sealed under a
    // key the deployment does not hold.
    let sim = simulate(&FleetConfig {
        instruments: 3,
        duration_hours: 0.5,
        seed: 21,
        bad_record_share: 0.0,
        start_time_ms: seqmon_testkit::now_ms() - 3_600_000,
        ..Default::default()
    });
    let raw = TopicRole::Raw.topic(&prefix);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut markers: Vec<String> = Vec::new();
    let records: Vec<_> = sim.records.iter().take(400).collect();
    for (i, r) in records.iter().enumerate() {
        let t: Telemetry = decode(&r.bytes).unwrap();
        markers.push(t.message_id.clone());
        let sealer = if i == 7 { &stranger } else { &ring };
        let (sealed, header) = sealer.seal(TopicRole::Raw, r.key.as_bytes(), &r.bytes);
        let headers = OwnedHeaders::new().insert(Header {
            key: HEADER,
            value: Some(header.as_bytes()),
        });
        seqmon_runtime::kafka::send(
            &producer,
            BaseRecord::to(&raw)
                .key(r.key.as_bytes())
                .payload(sealed.as_slice())
                .headers(headers)
                .timestamp(r.sent_time_ms),
        )
        .unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let enc = [
        "--encryption-keys-dir",
        keys.to_str().unwrap(),
        "--encryption-active-key",
        "k1",
    ];
    let mut validator = Service::start("validator", &prefix, &enc);
    let mut enforcer = Service::start("privacy-enforcer", &prefix, &enc);
    let sanitized_topic = TopicRole::Sanitized.topic(&prefix);
    let expected = records.len() - 1;
    assert!(
        wait_until(Duration::from_secs(120), || read_committed(
            &sanitized_topic
        )
        .len()
            >= expected),
        "sanitized records did not arrive; validator metrics {:?}; log:\n{}\nenforcer log:\n{}",
        validator
            .metrics()
            .into_iter()
            .filter(|(k, v)| k.contains("records") && *v > 0.0)
            .collect::<Vec<_>>(),
        validator.log_text(),
        enforcer.log_text()
    );
    validator.terminate();
    enforcer.terminate();

    // Exactly the stranger's record is a dead letter, sealed on its way out, and says why.
    let dead = read_committed(&TopicRole::DeadLettersSensitive.topic(&prefix));
    assert_eq!(dead.len(), 1);
    let header = dead[0]
        .headers
        .iter()
        .find(|(k, _)| k == HEADER)
        .map(|(_, v)| v.as_slice());
    let opened = ring
        .open(
            TopicRole::DeadLettersSensitive,
            dead[0].key.as_bytes(),
            header,
            &dead[0].value,
        )
        .expect("the dead letter is sealed under the active key");
    let d: DeadLetter = decode(&opened).unwrap();
    assert_eq!(d.reason, DeadLetterReason::UNDECODABLE);
    assert!(d.detail.contains("k9"), "{}", d.detail);

    // The broker's segment files: no message id of any record on a sensitive topic.
    let mut sensitive_bytes = 0usize;
    for role in TopicRole::ALL
        .into_iter()
        .filter(|r| r.spec().side == PrivacySide::Sensitive)
    {
        let bytes = segment_bytes(&data, &role.topic(&prefix));
        sensitive_bytes += bytes.len();
        for m in &markers {
            // The id as sent, without its dashes, and upper case: in values and record keys.
            let dashless: String = m.chars().filter(|c| *c != '-').collect();
            for form in [m.clone(), dashless.clone(), dashless.to_uppercase()] {
                assert!(
                    !contains(&bytes, form.as_bytes()),
                    "{form} is readable in {role}'s segment files"
                );
            }
        }
    }
    assert!(
        sensitive_bytes > 10_000,
        "the scan read the sensitive topics"
    );
    // Control: the analysis side is not sealed, and its run ids are readable on disk.
    let sanitized_disk = segment_bytes(&data, &sanitized_topic);
    let run_id_head = records
        .iter()
        .filter_map(|r| decode::<Telemetry>(&r.bytes).ok()?.run_id)
        .map(|id| id.split('_').take(3).collect::<Vec<_>>().join("_"))
        .next()
        .expect("a record with a run id");
    assert!(
        contains(&sanitized_disk, run_id_head.as_bytes()),
        "the scan finds plaintext where there is some"
    );
    std::fs::remove_dir_all(&keys).unwrap();
}
