//! Fault tier: broker errors injected with librdkafka's mock cluster. A produce request inside a
//! transaction fails with a non-retriable error, so the transaction must be aborted; the stage
//! restores its state from the changelog, rewinds to the committed offsets, redoes the batch and
//! carries on: no input is lost and the service does not crash.
//!
//! The mock cluster neither hides aborted records from read_committed readers nor applies
//! transactional offset commits to the group, so this test uses a stateless stage (restored state
//! would include the aborted batch's changelog records on the mock) and checks survival and no
//! loss: every expected output is present and nothing unexpected is. Exactness under real
//! transactions, state included, is shown by `exactly_once.rs` against the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use seqmon_integration_tests::*;
use seqmon_model::topics::CATALOGUE;
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::Driver;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_validator::Validator;

#[test]
fn an_aborted_transaction_is_redone_from_committed_offsets_without_loss() {
    let mock = MockCluster::new(1).unwrap();
    use_bootstrap(mock.bootstrap_servers());
    let prefix = unique_prefix("fault");
    for t in CATALOGUE {
        mock.create_topic(&format!("{prefix}{}", t.name), 3, 1)
            .unwrap();
    }
    let start = (now_ms() - 2 * 3_600_000) / 60_000 * 60_000;
    let sim = simulate(&FleetConfig {
        instruments: 6,
        duration_hours: 2.0,
        seed: 3,
        start_time_ms: start,
        bad_record_share: 0.05,
        ..Default::default()
    });
    // The privacy enforcer's input: what the validator forwards.
    let mut upstream = Chain::new(vec![Driver::new(Box::new(Validator::default()))]).unwrap();
    let mut validated = Vec::new();
    for r in &sim.records {
        upstream
            .push(&r.key, &r.bytes, &mut |_, e| {
                if e.role == seqmon_model::topics::TopicRole::Validated {
                    validated.push((e.key.clone(), e.value.clone(), None));
                }
            })
            .unwrap();
    }
    let raw = seqmon_model::topics::TopicRole::Validated.topic(&prefix);
    let produced = produce(&raw, validated);
    let committed_input = read_committed(&raw);
    assert_eq!(committed_input.len(), produced);
    let expected = reference_outputs(
        Box::new(seqmon_integration_tests::privacy_enforcer()),
        &raw,
        &committed_input,
    );

    // The next produce requests fail with a non-retriable error: the transaction holding them
    // can only be aborted.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    let stage = Service::start("privacy-enforcer", &prefix, &["--batch-max-records", "50"]);
    let inputs = committed_input.len() as f64;
    let mut last = 0.0;
    let mut stable = 0;
    let drained = wait_until(Duration::from_secs(120), || {
        let m = stage.metrics();
        let input = metric_sum(&m, "seqmon_input_records_total");
        stable = if input == last && input >= inputs {
            stable + 1
        } else {
            0
        };
        last = input;
        stable >= 4
    });
    assert!(
        drained,
        "privacy-enforcer did not work through its input ({last} of {inputs}); log:\n{}",
        stage.log_text()
    );
    let m = stage.metrics();
    let aborted = metric_sum(&m, "seqmon_transactions_total{outcome=\"aborted\"}");
    let committed = metric_sum(&m, "seqmon_transactions_total{outcome=\"committed\"}");
    assert!(
        aborted >= 1.0,
        "the injected error aborted a transaction; log:\n{}",
        stage.log_text()
    );
    assert!(committed >= 1.0);
    assert!(
        last > inputs,
        "the aborted batch was processed again ({last} records for {inputs} inputs)"
    );
    assert!(stage
        .log_text()
        .contains("transaction aborted; restoring state and rewinding"));
    let mut got = committed_outputs(
        &prefix,
        &[
            "telemetry.sanitized",
            "privacy.audit",
            "deadletter.sensitive",
        ],
    );
    got.dedup();
    let mut want = expected.clone();
    want.dedup();
    let lost = want
        .iter()
        .filter(|e| got.binary_search(e).is_err())
        .count();
    assert_eq!(lost, 0, "outputs lost after the abort");
    assert_eq!(got, want, "unexpected outputs after the abort");
    let mut stage = stage;
    assert!(stage.terminate().success(), "still alive and stops cleanly");
    eprintln!("fault: {aborted} aborted and {committed} committed transactions; {last} records processed for {inputs} inputs; no output lost");
}
