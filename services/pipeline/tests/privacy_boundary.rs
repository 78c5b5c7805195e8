//! The privacy promise, end to end through the six stages (embedded mode, same processors as
//! the Kafka services):
//! - personal, health and genomic data injected into every string field of valid telemetry
//!   (every record kind; as is, upper/lower case, glued to the real value with `_ - . : /`)
//!   reaches no analysis-side topic: sanitized telemetry, privacy audit, features, anomalies,
//!   alerts, maintenance, analysis dead letters;
//! - every value of the real run folders crosses: no real identifier is pseudonymized, no real
//!   name becomes OTHER, no real log line is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_model::{decode, encode, PrivacyAudit, Telemetry, TelemetryKind};
use seqmon_pipeline::historic_chain;
use seqmon_privacy::adversarial::{injections, leaks, HARMLESS_WORDS, PII};
use seqmon_runtime::Emitted;
use seqmon_simulator::{simulate, FleetConfig};

type Setter = fn(&mut Telemetry, String);

/// Every string field of the telemetry record, with the kind of record that carries it.
fn string_fields() -> Vec<(&'static str, TelemetryKind, Setter)> {
    use TelemetryKind as K;
    vec![
        ("message_id", K::SENSOR_READINGS, |t, v| t.message_id = v),
        ("instrument_serial", K::SENSOR_READINGS, |t, v| {
            t.instrument_serial = v
        }),
        ("run_id", K::RUN_PERFORMANCE, |t, v| t.run_id = Some(v)),
        ("log_event.code", K::OPERATION_LOG, |t, v| {
            t.log_event.as_mut().unwrap().code = v
        }),
        ("log_event.message", K::OPERATION_LOG, |t, v| {
            t.log_event.as_mut().unwrap().message = v
        }),
        (
            "control_software_version",
            K::INSTRUMENT_CONFIGURATION,
            |t, v| {
                t.instrument_configuration
                    .as_mut()
                    .unwrap()
                    .control_software_version = v
            },
        ),
        ("rta_version", K::INSTRUMENT_CONFIGURATION, |t, v| {
            t.instrument_configuration.as_mut().unwrap().rta_version = v
        }),
        ("firmware_version", K::INSTRUMENT_CONFIGURATION, |t, v| {
            t.instrument_configuration
                .as_mut()
                .unwrap()
                .firmware_version = v
        }),
        ("chemistry", K::RUN_CONFIGURATION, |t, v| {
            t.run_configuration.as_mut().unwrap().chemistry = v
        }),
        ("flowcell_serial", K::RUN_CONFIGURATION, |t, v| {
            t.run_configuration.as_mut().unwrap().flowcell_serial = v
        }),
        ("flowcell_lot", K::RUN_CONFIGURATION, |t, v| {
            t.run_configuration.as_mut().unwrap().flowcell_lot = v
        }),
        ("reagent_kit_lot", K::RUN_CONFIGURATION, |t, v| {
            t.run_configuration.as_mut().unwrap().reagent_kit_lot = v
        }),
        ("buffer_lot", K::RUN_CONFIGURATION, |t, v| {
            t.run_configuration.as_mut().unwrap().buffer_lot = v
        }),
        (
            "attributes.application_version",
            K::SENSOR_READINGS,
            |t, v| {
                t.attributes.insert("application_version".into(), v);
            },
        ),
        (
            "attributes.application_name",
            K::INSTRUMENT_CONFIGURATION,
            |t, v| {
                t.attributes.insert("application_name".into(), v);
            },
        ),
        (
            "attributes.site_region",
            K::INSTRUMENT_CONFIGURATION,
            |t, v| {
                t.attributes.insert("site_region".into(), v);
            },
        ),
        (
            "attributes.consent_basis",
            K::INSTRUMENT_CONFIGURATION,
            |t, v| {
                t.attributes.insert("consent_basis".into(), v);
            },
        ),
        ("attributes key", K::SENSOR_READINGS, |t, v| {
            t.attributes.insert(v, "1.0".into());
        }),
    ]
}

/// A UUID-shaped message id from a counter, in the letters a-f only (no digit run of the corpus
/// can appear in it), so injected records are never duplicates.
fn fresh_id(n: usize) -> String {
    let tail: String = (0..12)
        .rev()
        .map(|i| (b'a' + ((n / 6usize.pow(i)) % 6) as u8) as char)
        .collect();
    format!("aaaaaaaa-aaaa-4aaa-8aaa-{tail}")
}

#[test]
fn injected_personal_data_reaches_no_analysis_topic() {
    let sim = simulate(&FleetConfig {
        instruments: 4,
        duration_hours: 2.0,
        seed: 5,
        bad_record_share: 0.0,
        ..Default::default()
    });
    // One valid record of each kind, as the simulator wrote it.
    let mut templates: BTreeMap<String, Telemetry> = BTreeMap::new();
    for r in &sim.records {
        if let Ok(t) = seqmon_model::decode::<Telemetry>(&r.bytes) {
            templates.entry(format!("{:?}", t.kind)).or_insert(t);
        }
    }
    let mut chain = historic_chain().unwrap();
    let mut leaked: Vec<String> = Vec::new();
    let mut injected = 0usize;
    let mut analysis_records = 0usize;
    let mut n = 0usize;
    for (field, kind, set) in string_fields() {
        let base = templates
            .get(&format!("{kind:?}"))
            .unwrap_or_else(|| panic!("the simulator wrote no {kind:?} record"))
            .clone();
        let real = {
            let probe = base.clone();
            match field {
                "message_id" => probe.message_id,
                "instrument_serial" => probe.instrument_serial,
                "run_id" => probe.run_id.unwrap_or_default(),
                "log_event.code" => probe.log_event.unwrap().code,
                "log_event.message" => probe.log_event.unwrap().message,
                "chemistry" => probe.run_configuration.unwrap().chemistry,
                "flowcell_serial" => probe.run_configuration.unwrap().flowcell_serial,
                f if f.ends_with("_lot") => probe.run_configuration.unwrap().reagent_kit_lot,
                _ => "1.7.5".to_string(),
            }
        };
        for pii in PII {
            for value in injections(&real, pii) {
                n += 1;
                let mut t = base.clone();
                t.message_id = fresh_id(n);
                set(&mut t, value.clone());
                let key = t.instrument_serial.clone();
                let bytes = encode(&t).unwrap();
                injected += 1;
                let mut sink = |_: &str, e: &Emitted| {
                    if e.role.spec().side != PrivacySide::Analysis {
                        return;
                    }
                    analysis_records += 1;
                    if leaks(&e.value, pii, HARMLESS_WORDS)
                        || leaks(e.key.as_bytes(), pii, HARMLESS_WORDS)
                    {
                        leaked.push(format!("{field} = {value:?} reached {}", e.role));
                    }
                };
                chain.push(&key, &bytes, &mut sink).unwrap();
            }
        }
    }
    // Windows still open: features, anomalies and alerts they release are checked too.
    let mut sink = |_: &str, e: &Emitted| {
        if e.role.spec().side == PrivacySide::Analysis {
            for pii in PII {
                if leaks(&e.value, pii, HARMLESS_WORDS)
                    || leaks(e.key.as_bytes(), pii, HARMLESS_WORDS)
                {
                    leaked.push(format!("{pii:?} reached {} at end of input", e.role));
                }
            }
        }
    };
    chain.finish(&mut sink).unwrap();
    eprintln!(
        "privacy boundary: {injected} injections into {} string fields ({} corpus entries), \
         {analysis_records} analysis-side records checked, {} leaks",
        string_fields().len(),
        PII.len(),
        leaked.len()
    );
    assert!(injected > 35_000);
    assert!(
        leaked.is_empty(),
        "{} leaks, e.g. {:#?}",
        leaked.len(),
        &leaked[..leaked.len().min(10)]
    );
}

#[test]
fn real_run_folder_values_cross_without_false_removals() {
    let folders = seqmon_collector::sample_run_folders();
    assert!(!folders.is_empty());
    let mut chain = historic_chain().unwrap();
    let mut actions: BTreeMap<(String, String), i32> = BTreeMap::new();
    let mut records = 0usize;
    let mut sanitized = 0usize;
    let mut dead = 0usize;
    for folder in &folders {
        let collected = seqmon_collector::collect::collect_run(
            folder,
            Some(seqmon_collector::consent::ConsentOverride::OptedIn),
            1_796_000_000_000,
        )
        .unwrap();
        for t in &collected.records {
            records += 1;
            let bytes = encode(t).unwrap();
            chain
                .push(&t.instrument_serial, &bytes, &mut |_, e| match e.role {
                    TopicRole::PrivacyAudit => {
                        let a: PrivacyAudit = decode(&e.value).unwrap();
                        *actions
                            .entry((a.field.clone(), format!("{:?}", a.action)))
                            .or_default() += a.count;
                    }
                    TopicRole::Sanitized => sanitized += 1,
                    TopicRole::DeadLetters | TopicRole::DeadLettersSensitive => dead += 1,
                    _ => {}
                })
                .unwrap();
        }
    }
    eprintln!(
        "real run folders: {} folders, {records} records, {sanitized} sanitized, {dead} dead \
         letters, boundary actions {actions:?}",
        folders.len()
    );
    assert!(records > 0);
    assert_eq!(dead, 0, "every real record is valid");
    assert_eq!(sanitized, records);
    // Any action on a real value is a false removal: pseudonymized, replaced or dropped.
    let false_removals: Vec<_> = actions.iter().collect();
    assert!(
        false_removals.is_empty(),
        "real values were pseudonymized, replaced or removed: {false_removals:?}"
    );
}
