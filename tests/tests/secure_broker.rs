//! The broker enforces the privacy boundary: on the secure local broker (`tools/kafka/broker.sh
//! start --secure`: SASL_SSL with one SCRAM user per stage, mutual TLS, the StandardAuthorizer with
//! nothing allowed that no ACL allows, the ACLs of `seqmon-admin acls`):
//! - every analysis principal is refused, producing and consuming, on every sensitive topic;
//! - a stage cannot use another stage's consumer group or transactional id;
//! - the stages run end to end, each with its own principal; mutual TLS works as well as SCRAM;
//! - a wrong CA or an expired client certificate stops a program at start-up with the reason.
//!
//! The tests find the broker's client properties files in KAFKA_SECURE_DIR (`make test` sets it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seqmon_integration_tests::{bin, unique_prefix, wait_until, Service};
use seqmon_model::acl::Principal;
use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_runtime::kafka::CheckedDelivery;

fn secure_dir() -> Option<PathBuf> {
    std::env::var_os("KAFKA_SECURE_DIR").map(PathBuf::from)
}

/// Skips (with a line saying so) when no secure broker was started for this run.
macro_rules! secure_or_skip {
    () => {
        match secure_dir() {
            Some(d) => d,
            None => {
                eprintln!(
                    "skipped: KAFKA_SECURE_DIR is not set (make test starts the secure broker)"
                );
                return;
            }
        }
    };
}

/// A librdkafka configuration from one of the broker's properties files.
fn client(dir: &std::path::Path, file: &str) -> ClientConfig {
    let text = std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{file} in {}: {e}", dir.display()));
    let mut c = ClientConfig::new();
    for line in text.lines().map(str::trim) {
        if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            c.set(k.trim(), v.trim());
        }
    }
    c
}

/// Creates the catalogue's topics under `prefix` on the secure broker and applies their ACLs.
fn secure_topics(prefix: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(root.join("tools/kafka/broker.sh"))
        .args(["secure-topics", prefix])
        .status()
        .unwrap();
    assert!(status.success(), "secure-topics {prefix} failed");
}

/// Whether producing one record to `topic` as `file`'s principal is refused by the broker.
fn produce_refused(dir: &std::path::Path, file: &str, topic: &str) -> Option<String> {
    let producer: ThreadedProducer<CheckedDelivery> = client(dir, file)
        .set("message.timeout.ms", "15000")
        .create_with_context(CheckedDelivery::default())
        .unwrap();
    seqmon_runtime::kafka::send(
        &producer,
        BaseRecord::to(topic)
            .key(b"A00100".as_slice())
            .payload(b"x".as_slice()),
    )
    .unwrap();
    let _ = producer.flush(Duration::from_secs(20));
    producer.context().failures().1
}

/// What reading `topic` as `principal` gives: the error of its metadata (the broker answers
/// a principal without DESCRIBE with TOPIC_AUTHORIZATION_FAILED) or of a fetch from the
/// beginning of partition 0, if any.
fn consume_error(
    dir: &std::path::Path,
    principal: Principal,
    prefix: &str,
    topic: &str,
) -> Option<KafkaError> {
    // Its own group, which its ACLs allow: a refusal can only be the topic's.
    let consumer: BaseConsumer = client(dir, &format!("{}.properties", principal.name()))
        .set("group.id", format!("{prefix}{}", principal.name()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .unwrap();
    if let Some(err) = md.topics().first().and_then(|t| t.error()) {
        return Some(KafkaError::MetadataFetch(err.into()));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(500)) {
            return Some(e);
        }
    }
    None
}

fn is_authorization(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("authoriz")
}

#[test]
fn analysis_principals_are_refused_on_every_sensitive_topic() {
    let dir = secure_or_skip!();
    let prefix = unique_prefix("acl");
    secure_topics(&prefix);
    let sensitive: Vec<TopicRole> = TopicRole::ALL
        .into_iter()
        .filter(|r| r.spec().side == PrivacySide::Sensitive)
        .collect();
    assert_eq!(sensitive.len(), 5);
    let mut denials = 0;
    for p in [
        Principal::FeatureExtractor,
        Principal::AnomalyDetector,
        Principal::CohortAnalyzer,
        Principal::Notifier,
    ] {
        let file = format!("{}.properties", p.name());
        for role in &sensitive {
            let topic = role.topic(&prefix);
            let produced = produce_refused(&dir, &file, &topic);
            assert!(
                produced.as_deref().is_some_and(is_authorization),
                "{} could produce to {topic}: {produced:?}",
                p.name()
            );
            let consumed = consume_error(&dir, p, &prefix, &topic);
            assert!(
                consumed.as_ref().is_some_and(|e| matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::TopicAuthorizationFailed)
                )),
                "{} could consume {topic}: {consumed:?}",
                p.name()
            );
            denials += 2;
        }
    }
    // The gateway writes raw telemetry but reads none: only its own receipts.
    for role in [
        TopicRole::Raw,
        TopicRole::Validated,
        TopicRole::DeadLettersSensitive,
    ] {
        let topic = role.topic(&prefix);
        let consumed = consume_error(&dir, Principal::IngestGateway, &prefix, &topic);
        assert!(
            consumed.as_ref().is_some_and(|e| matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::TopicAuthorizationFailed)
            )),
            "the gateway could consume {topic}: {consumed:?}"
        );
        denials += 1;
    }
    // Controls: the collector writes raw, the validator reads it.
    assert_eq!(
        produce_refused(&dir, "collector.properties", &TopicRole::Raw.topic(&prefix)),
        None
    );
    let validator_read = consume_error(
        &dir,
        Principal::Validator,
        &prefix,
        &TopicRole::Raw.topic(&prefix),
    );
    assert!(
        !validator_read
            .as_ref()
            .is_some_and(|e| is_authorization(&e.to_string())),
        "{validator_read:?}"
    );
    eprintln!("secure broker: {denials} denials of analysis principals on sensitive topics");
}

#[test]
fn a_stage_cannot_use_another_stages_group_or_transactional_id() {
    let dir = secure_or_skip!();
    let prefix = unique_prefix("own");
    secure_topics(&prefix);
    // The feature extractor posing as the validator's transactional id.
    let producer: ThreadedProducer<CheckedDelivery> = client(&dir, "feature-extractor.properties")
        .set("transactional.id", format!("{prefix}validator-0"))
        .create_with_context(CheckedDelivery::default())
        .unwrap();
    let err = producer
        .init_transactions(Duration::from_secs(20))
        .expect_err("another stage's transactional id is refused");
    assert!(is_authorization(&err.to_string()), "{err}");
    // Its own transactional id works.
    let own: ThreadedProducer<CheckedDelivery> = client(&dir, "feature-extractor.properties")
        .set("transactional.id", format!("{prefix}feature-extractor-0"))
        .create_with_context(CheckedDelivery::default())
        .unwrap();
    own.init_transactions(Duration::from_secs(20)).unwrap();
    // The feature extractor in the validator's consumer group, on its own input topic.
    let consumer: BaseConsumer = client(&dir, "feature-extractor.properties")
        .set("group.id", format!("{prefix}validator"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[&TopicRole::Sanitized.topic(&prefix)])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = None;
    while Instant::now() < deadline && refused.is_none() {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(500)) {
            refused = Some(e);
        }
    }
    let refused = refused.expect("another stage's group is refused");
    assert!(
        matches!(
            refused.rdkafka_error_code(),
            Some(RDKafkaErrorCode::GroupAuthorizationFailed)
        ) || is_authorization(&refused.to_string()),
        "{refused}"
    );
}

/// Committed records of `topic` read as admin.
fn count_committed(dir: &std::path::Path, topic: &str) -> usize {
    seqmon_integration_tests::read_committed_with(client(dir, "admin.properties"), topic).len()
}

#[test]
fn the_stages_run_end_to_end_each_with_its_own_principal() {
    let dir = secure_or_skip!();
    let prefix = unique_prefix("sec-e2e");
    secure_topics(&prefix);
    let mut services: Vec<Service> = [
        "validator",
        "privacy-enforcer",
        "feature-extractor",
        "anomaly-detector",
        "cohort-analyzer",
        "notifier",
    ]
    .iter()
    .map(|stage| {
        let props = dir.join(format!("{stage}.properties"));
        Service::start(
            stage,
            &prefix,
            &["--properties-file", props.to_str().unwrap()],
        )
    })
    .collect();
    // The collector principal sends a small fleet over SASL_SSL.
    let status = Command::new(bin("fleet-simulator"))
        .args([
            "--to",
            "kafka",
            "--topic-prefix",
            &prefix,
            "--properties-file",
            dir.join("collector.properties").to_str().unwrap(),
            "--instruments",
            "3",
            "--duration-hours",
            "1",
            "--bad-record-share",
            "0",
            "--start-time-ms",
            &(seqmon_testkit::now_ms() - 2 * 3_600_000).to_string(),
        ])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the collector principal could not produce"
    );
    let features = TopicRole::Features.topic(&prefix);
    let arrived = wait_until(Duration::from_secs(120), || {
        count_committed(&dir, &features) > 0
    });
    let logs: String = services.iter().map(|s| s.log_text()).collect();
    assert!(arrived, "no features over SASL_SSL; logs:\n{logs}");
    assert!(
        !logs.to_ascii_lowercase().contains("authoriz"),
        "a stage met an authorization error with its own principal:\n{logs}"
    );
    assert!(count_committed(&dir, &TopicRole::Sanitized.topic(&prefix)) > 0);
    for s in &mut services {
        assert!(s.terminate().success(), "{} did not stop cleanly", s.name);
    }
}

#[test]
fn mutual_tls_works_as_well_as_scram() {
    let dir = secure_or_skip!();
    let prefix = unique_prefix("mtls");
    secure_topics(&prefix);
    let raw = TopicRole::Raw.topic(&prefix);
    assert_eq!(
        produce_refused(&dir, "collector-mtls.properties", &raw),
        None
    );
    let refused = produce_refused(&dir, "notifier-mtls.properties", &raw);
    assert!(
        refused.as_deref().is_some_and(is_authorization),
        "{refused:?}"
    );
}

#[test]
fn a_wrong_ca_or_an_expired_certificate_stops_at_start_up_with_the_reason() {
    let dir = secure_or_skip!();
    for (file, program, args) in [
        ("collector-wrong-ca.properties", "validator", vec!["kafka"]),
        (
            "collector-expired-mtls.properties",
            "fleet-simulator",
            vec![
                "--to",
                "kafka",
                "--instruments",
                "1",
                "--duration-hours",
                "0.01",
            ],
        ),
        (
            "collector-untrusted-mtls.properties",
            "seqmon-admin",
            vec!["create-topics"],
        ),
    ] {
        let started = Instant::now();
        let out = Command::new(bin(program))
            .args(&args)
            .args([
                "--properties-file",
                dir.join(file).to_str().unwrap(),
                "--connect-timeout-ms",
                "8000",
            ])
            .env("SEQMON_METRICS_ADDR", "")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{program} with {file}: {stderr}"
        );
        assert!(
            stderr.contains("cannot reach the cluster")
                && (stderr.to_ascii_lowercase().contains("ssl")
                    || stderr.to_ascii_lowercase().contains("certificate")
                    || stderr.to_ascii_lowercase().contains("handshake")),
            "{program} with {file} does not say why: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}

#[test]
fn the_ingest_gateway_writes_raw_telemetry_with_its_own_principal() {
    use seqmon_integration_tests::gateway::{frame, post, reason, start_gateway, write_key, Pki};
    let dir = secure_or_skip!();
    let prefix = unique_prefix("sec-gw");
    secure_topics(&prefix);
    let work = std::env::temp_dir().join(format!("seqmon-sec-gw-{}", std::process::id()));
    let pki = Pki::make(&work.join("pki"));
    let keys = work.join("keys");
    write_key(&keys, "k1", 0x41);
    let props = dir.join("ingest-gateway.properties");
    let mut gw = start_gateway(
        &prefix,
        &pki,
        &keys,
        &["--properties-file", props.to_str().unwrap()],
        &[],
    );
    let site = pki.client(Some("site-a"));
    let batch = frame("sec-gw", 3);
    let answer = post(&site, gw.port, Some("sec-1"), batch.clone()).unwrap();
    assert_eq!(
        reason(&answer),
        (200, "accepted".into()),
        "{}",
        gw.service.log_text()
    );
    // Its receipts are read back at start-up with its own restore group.
    gw.service.kill9();
    gw.service.restart();
    let again = post(&site, gw.port, Some("sec-1"), batch).unwrap();
    assert_eq!(reason(&again), (200, "duplicate".into()));
    assert_eq!(count_committed(&dir, &TopicRole::Raw.topic(&prefix)), 3);
    let log = gw.service.log_text().to_ascii_lowercase();
    assert!(!log.contains("authoriz"), "{log}");
    assert!(gw.service.terminate().success());
    let _ = std::fs::remove_dir_all(&work);
}
