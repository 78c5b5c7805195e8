//! The six stages chained in one process on a simulated fleet, scored against ground truth.
//! No broker: this checks the stage logic end to end; tests/ checks it over real Kafka.

use seqmon_model::topics::TopicRole;
use std::collections::{BTreeMap, BTreeSet};

use seqmon_model::{decode, AlertAction, DeadLetter, SanitizedTelemetry};
use seqmon_pipeline::{default_chain, score, Collected};
use seqmon_simulator::{simulate, FleetConfig};

#[test]
fn every_fault_alerts_once_bad_records_dead_letter_and_no_pii_crosses() {
    let sim = simulate(&FleetConfig {
        instruments: 16,
        duration_hours: 4.0,
        seed: 11,
        bad_record_share: 0.02,
        ..Default::default()
    });
    let mut chain = default_chain().unwrap();
    let mut collected = Collected::default();
    let mut sanitized_bytes: Vec<Vec<u8>> = Vec::new();
    let mut dead: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut sink = |topic: &str, e: &seqmon_runtime::Emitted| {
        if e.role == TopicRole::Sanitized {
            sanitized_bytes.push(e.value.clone());
        }
        if matches!(
            e.role,
            TopicRole::DeadLetters | TopicRole::DeadLettersSensitive
        ) {
            let d: DeadLetter = decode(&e.value).unwrap();
            *dead
                .entry((d.stage.clone(), d.reason.code().to_string()))
                .or_default() += 1;
        }
        collected.take(topic, e).unwrap();
    };
    for r in &sim.records {
        chain.push(&r.key, &r.bytes, &mut sink).unwrap();
    }
    chain.finish(&mut sink).unwrap();

    // Every injected fault got its alert, exactly once, and nothing else alerted.
    let (detected, false_alerts) = score(&sim.faults, &collected.alerts);
    assert_eq!(
        detected as usize,
        sim.faults.len(),
        "faults: {:#?}",
        sim.faults
    );
    assert_eq!(false_alerts, 0);
    // Exactly one alert each: the instrument's own, or the fleet alert listing it.
    for f in &sim.faults {
        let about: BTreeSet<&str> = collected
            .alerts
            .iter()
            .filter(|a| match &a.cohort {
                Some(_) => a.covers(&f.instrument_serial),
                None => {
                    a.action == AlertAction::OPEN
                        && a.instrument_serial == f.instrument_serial
                        && a.subsystem == f.subsystem
                }
            })
            .map(|a| a.alert_id.as_str())
            .collect();
        assert_eq!(about.len(), 1, "{f:?}");
    }
    // Every bad record is a dead letter with the expected stage and reason, and no more.
    let expected: BTreeMap<(String, String), usize> = sim
        .expected_dead_letters()
        .into_iter()
        .map(|((s, r), n)| ((s.to_string(), r.code().to_string()), n))
        .collect();
    assert_eq!(dead, expected);
    assert_eq!(
        collected.privacy_removals as usize,
        sim.expected_privacy_removals()
            + expected
                .get(&("privacy-enforcer".into(), "PRIVACY_VIOLATION".into()))
                .copied()
                .unwrap_or(0)
    );
    // Nothing personal reaches the sanitized topic, in any field.
    assert!(!sim.pii_strings.is_empty());
    for bytes in &sanitized_bytes {
        let text = String::from_utf8_lossy(bytes);
        for secret in &sim.pii_strings {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} crossed the boundary"
            );
        }
        let s: SanitizedTelemetry = decode(bytes).unwrap();
        assert!(s.attributes.keys().all(|k| k == "application_version"));
    }
    // Counts balance on the validator: in = forwarded + dead letters.
    let v = &chain.stages()[0].metrics;
    let v_dead: u64 = seqmon_model::DeadLetterReason::ALL
        .iter()
        .map(|r| v.dead_letter_records.with_label_values(&[r.code()]).get())
        .sum();
    assert_eq!(
        v.input_records.get(),
        v.output_records
            .with_label_values(&[TopicRole::Validated.as_str()])
            .get()
            + v_dead
    );
    assert_eq!(v.input_records.get() as usize, sim.records.len());
}
