//! Unit tests of the privacy enforcer: typed values cross, everything else is pseudonymized,
//! replaced by OTHER or dropped, and the audit never names a value or an input key.

use std::collections::BTreeMap;

use seqmon_model::{
    decode, encode, InstrumentConfiguration, InstrumentModel, OperationLogEvent, RunConfiguration,
    SensorReadings, Severity, Subsystem, TelemetryKind,
};
use seqmon_privacy::adversarial::{injections, leaks, HARMLESS_WORDS, PII};
use seqmon_processor::{Emitted, Rejection};

use super::*;

fn base(kind: TelemetryKind) -> Telemetry {
    Telemetry {
        message_id: "3f2b8c1e-9a4d-4e21-8b7f-0c5d2e6a9f13".into(),
        instrument_serial: "A00123".into(),
        instrument_model: InstrumentModel::NOVASEQ_6000,
        event_time_ms: 1_700_000_000_000,
        sent_time_ms: 1_700_000_000_100,
        kind,
        run_id: Some("200619_A00123_0042_AH5NTFDSXX".into()),
        sensors: None,
        log_event: None,
        run_performance: None,
        instrument_configuration: None,
        run_configuration: None,
        attributes: BTreeMap::new(),
    }
}

/// One record of every kind, every string field set to a real value.
fn full_records() -> Vec<Telemetry> {
    let mut sensors = base(TelemetryKind::SENSOR_READINGS);
    sensors.sensors = Some(SensorReadings {
        laser_power_mw: Some(480.0),
        ..Default::default()
    });
    let mut log = base(TelemetryKind::OPERATION_LOG);
    log.log_event = Some(OperationLogEvent {
        code: "E-FLU-301".into(),
        severity: Severity::ERROR,
        subsystem: Subsystem::FLUIDICS,
        message: "Run started".into(),
    });
    let mut config = base(TelemetryKind::INSTRUMENT_CONFIGURATION);
    config.instrument_configuration = Some(InstrumentConfiguration {
        control_software_version: "1.7.5".into(),
        rta_version: "v3.4.4".into(),
        firmware_version: "2.13.0".into(),
    });
    config.attributes = [
        ("application_name", "NovaSeq Control Software"),
        ("application_version", "1.7.5"),
        ("fpga_version", "9.5.12"),
        ("recipe_version", "1.4.0"),
        ("chemistry_version", "1.4.0"),
        ("site_region", "DE-BY"),
        ("collector_version", "0.1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut run = base(TelemetryKind::RUN_CONFIGURATION);
    run.run_configuration = Some(RunConfiguration {
        read1_cycles: 151,
        index1_cycles: 10,
        index2_cycles: 10,
        read2_cycles: 151,
        chemistry: "SBS v1.5 300 cycles".into(),
        flowcell_serial: "H5NTFDSXX".into(),
        flowcell_lot: "20264129".into(),
        reagent_kit_lot: "20249426".into(),
        reagent_kit_expiry_date: 20_000,
        buffer_lot: "20243203".into(),
        buffer_expiry_date: 20_000,
    });
    vec![sensors, log, config, run]
}

fn run_with(enforcer: &mut PrivacyEnforcer, t: &Telemetry) -> (Vec<Emitted>, Option<Rejection>) {
    let bytes = encode(t).unwrap();
    let env = Envelope {
        key: Some(b"A00123"),
        value: &bytes,
        topic: "telemetry.validated",
        partition: 1,
        offset: 9,
        timestamp_ms: None,
        arrival_time_ms: None,
    };
    let mut out = Emitter::default();
    enforcer.process(&env, &mut out).unwrap();
    let (records, rejection, _) = out.take();
    (records, rejection)
}

fn run(t: &Telemetry) -> (Vec<Emitted>, Option<Rejection>) {
    run_with(&mut PrivacyEnforcer::default(), t)
}

fn sanitized(out: &[Emitted]) -> SanitizedTelemetry {
    decode(
        &out.iter()
            .find(|e| e.role == TopicRole::Sanitized)
            .expect("a sanitized record")
            .value,
    )
    .unwrap()
}

fn audits(out: &[Emitted]) -> Vec<PrivacyAudit> {
    out.iter()
        .filter(|e| e.role == TopicRole::PrivacyAudit)
        .map(|e| decode(&e.value).unwrap())
        .collect()
}

#[test]
fn real_values_cross_unchanged_and_unaudited() {
    for t in full_records() {
        let (out, rejection) = run(&t);
        assert!(rejection.is_none());
        assert!(audits(&out).is_empty(), "{:?}: {:?}", t.kind, audits(&out));
        let s = sanitized(&out);
        let key = demo_key();
        // By design: the message id and the flow cell cross as pseudonyms, the run id with its
        // flow-cell part pseudonymized, the region as its country.
        assert_eq!(
            s.message_id,
            key.pseudonym(Domain::MessageId, &t.message_id)
        );
        assert_eq!(s.instrument_serial, t.instrument_serial);
        let flowcell = key.pseudonym(Domain::FlowcellId, "H5NTFDSXX");
        assert_eq!(
            s.run_id.as_deref(),
            Some(format!("200619_A00123_0042_A{flowcell}").as_str())
        );
        assert_eq!(s.instrument_configuration, t.instrument_configuration);
        let mut attributes = t.attributes.clone();
        if let Some(r) = attributes.get_mut("site_region") {
            *r = "DE".into();
        }
        assert_eq!(s.attributes, attributes);
        assert_eq!(s.privacy_policy_version, POLICY_VERSION);
        if let Some(c) = &t.run_configuration {
            let mut c = c.clone();
            c.flowcell_serial = flowcell.clone();
            assert_eq!(s.run_configuration.as_ref(), Some(&c));
        }
        if let Some(l) = &t.log_event {
            let sl = s.log_event.unwrap();
            assert_eq!(
                (sl.code.as_str(), sl.message.as_str()),
                (l.code.as_str(), l.message.as_str())
            );
            assert_eq!(sl.template_id, "RUN_STARTED");
        }
    }
}

#[test]
fn log_text_crosses_as_a_template_with_typed_parameters() {
    let mut t = full_records().remove(1);
    t.log_event.as_mut().unwrap().message =
        "Laser power below threshold: 412.5 mW (nominal 500 mW)".into();
    let s = sanitized(&run(&t).0);
    let l = s.log_event.unwrap();
    assert_ne!(l.template_id, OTHER);
    assert_eq!(
        l.message,
        "Laser power below threshold: 412.5 mW (nominal 500 mW)"
    );
    let numbers: Vec<(Option<f64>, Option<&str>)> = l
        .parameters
        .iter()
        .map(|p| (p.number, p.unit.as_deref()))
        .collect();
    assert_eq!(
        numbers,
        [(Some(412.5), Some("mW")), (Some(500.0), Some("mW"))]
    );
}

#[test]
fn an_unknown_message_keeps_code_severity_and_subsystem_and_loses_its_text() {
    let mut t = full_records().remove(1);
    t.log_event.as_mut().unwrap().message = "Run started by Dr. Alice Keller".into();
    let (out, _) = run(&t);
    let l = sanitized(&out).log_event.unwrap();
    assert_eq!(
        (l.code.as_str(), l.severity, l.subsystem),
        ("E-FLU-301", Severity::ERROR, Subsystem::FLUIDICS)
    );
    assert_eq!((l.message.as_str(), l.template_id.as_str()), ("", OTHER));
    assert!(l.parameters.is_empty());
    let a = audits(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].field.as_str(), a[0].rule, a[0].count),
        ("log_event.message", PrivacyRule::UNKNOWN_TEMPLATE, 1)
    );
    assert_eq!(
        a[0].event_code.as_deref(),
        Some("E-FLU-301"),
        "counted per code"
    );
}

#[test]
fn identifiers_that_do_not_parse_become_stable_keyed_pseudonyms() {
    let mut t = full_records().remove(3);
    t.run_configuration.as_mut().unwrap().reagent_kit_lot = "Keller lot".into();
    let (out1, _) = run(&t);
    let (out2, _) = run(&t);
    let lot1 = sanitized(&out1).run_configuration.unwrap().reagent_kit_lot;
    let lot2 = sanitized(&out2).run_configuration.unwrap().reagent_kit_lot;
    assert!(seqmon_privacy::pseudonym::is_pseudonym(&lot1), "{lot1}");
    assert_eq!(lot1, lot2, "equal values stay equal: cohorts still work");
    let other_key = PseudonymKey::from_bytes(&[7u8; 32]).unwrap();
    let mut e = PrivacyEnforcer::new(
        PrivacyConfig::default(),
        other_key,
        TemplateCatalogue::builtin(),
    );
    let lot3 = sanitized(&run_with(&mut e, &t).0)
        .run_configuration
        .unwrap()
        .reagent_kit_lot;
    assert_ne!(lot1, lot3, "the pseudonym depends on the key");
    let a = audits(&out1);
    assert_eq!(
        (a[0].field.as_str(), a[0].rule, a[0].action),
        (
            "run_configuration.reagent_kit_lot",
            PrivacyRule::GRAMMAR_MISMATCH,
            PrivacyAction::PSEUDONYMIZED
        )
    );
}

#[test]
fn unknown_names_become_other_and_unknown_keys_are_dropped_and_counted_once() {
    let mut t = full_records().remove(2);
    t.attributes
        .insert("application_name".into(), "Keller's LIMS".into());
    for i in 0..40 {
        t.attributes
            .insert(format!("patient_{i}_jane.doe@clinic.org"), "x".into());
    }
    let (out, rejection) = run(&t);
    assert!(rejection.is_none());
    let s = sanitized(&out);
    assert_eq!(s.attributes["application_name"], OTHER);
    assert!(s.attributes.keys().all(|k| !k.contains("patient")));
    let a = audits(&out);
    let unknown: Vec<&PrivacyAudit> = a
        .iter()
        .filter(|a| a.rule == PrivacyRule::UNKNOWN_ATTRIBUTE_KEY)
        .collect();
    assert_eq!(unknown.len(), 1, "one audit record, not one per key");
    assert_eq!(unknown[0].count, 40);
    assert_eq!(unknown[0].field, "attributes.<unknown key>");
}

#[test]
fn too_many_attributes_refuse_the_record_with_one_audit_record() {
    let mut t = full_records().remove(2);
    for i in 0..300 {
        t.attributes.insert(format!("k{i}"), "v".into());
    }
    let (out, rejection) = run(&t);
    assert_eq!(rejection.unwrap().reason, DeadLetterReason::TOO_LARGE);
    let a = audits(&out);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].rule, a[0].count), (PrivacyRule::SIZE_LIMIT, 307));
    assert!(out.iter().all(|e| e.role == TopicRole::PrivacyAudit));
}

/// Every string field of every record kind, with a setter that puts a value there.
type Setter = fn(&mut Telemetry, String);

fn string_fields() -> Vec<(&'static str, usize, Setter)> {
    // (field, index of the record in full_records() that carries it, setter)
    vec![
        ("message_id", 0, |t, v| t.message_id = v),
        ("instrument_serial", 0, |t, v| t.instrument_serial = v),
        ("run_id", 0, |t, v| t.run_id = Some(v)),
        ("log_event.code", 1, |t, v| {
            t.log_event.as_mut().unwrap().code = v
        }),
        ("log_event.message", 1, |t, v| {
            t.log_event.as_mut().unwrap().message = v
        }),
        ("control_software_version", 2, |t, v| {
            t.instrument_configuration
                .as_mut()
                .unwrap()
                .control_software_version = v
        }),
        ("rta_version", 2, |t, v| {
            t.instrument_configuration.as_mut().unwrap().rta_version = v
        }),
        ("firmware_version", 2, |t, v| {
            t.instrument_configuration
                .as_mut()
                .unwrap()
                .firmware_version = v
        }),
        ("attribute value application_name", 2, |t, v| {
            t.attributes.insert("application_name".into(), v);
        }),
        ("attribute value application_version", 2, |t, v| {
            t.attributes.insert("application_version".into(), v);
        }),
        ("attribute value site_region", 2, |t, v| {
            t.attributes.insert("site_region".into(), v);
        }),
        ("attribute value chemistry_version", 2, |t, v| {
            t.attributes.insert("chemistry_version".into(), v);
        }),
        ("attribute value consent_basis", 2, |t, v| {
            t.attributes.insert("consent_basis".into(), v);
        }),
        ("attribute key", 2, |t, v| {
            t.attributes.insert(v, "1.0".into());
        }),
        ("chemistry", 3, |t, v| {
            t.run_configuration.as_mut().unwrap().chemistry = v
        }),
        ("flowcell_serial", 3, |t, v| {
            t.run_configuration.as_mut().unwrap().flowcell_serial = v
        }),
        ("flowcell_lot", 3, |t, v| {
            t.run_configuration.as_mut().unwrap().flowcell_lot = v
        }),
        ("reagent_kit_lot", 3, |t, v| {
            t.run_configuration.as_mut().unwrap().reagent_kit_lot = v
        }),
        ("buffer_lot", 3, |t, v| {
            t.run_configuration.as_mut().unwrap().buffer_lot = v
        }),
    ]
}

#[test]
fn personal_data_in_any_string_field_never_crosses() {
    let records = full_records();
    let mut injected = 0usize;
    let mut leaked = Vec::new();
    let mut enforcer = PrivacyEnforcer::default();
    for (field, index, set) in string_fields() {
        // The field's real value, to glue personal data to.
        let real = {
            match field {
                "run_id" => "200619_A00123_0042_AH5NTFDSXX",
                "instrument_serial" => "A00123",
                "message_id" => "3f2b8c1e-9a4d-4e21-8b7f-0c5d2e6a9f13",
                "log_event.code" => "E-FLU-301",
                "log_event.message" => "Run started",
                "chemistry" => "SBS v1.5 300 cycles",
                "flowcell_serial" => "H5NTFDSXX",
                f if f.ends_with("lot") => "20264129",
                "attribute value site_region" => "DE-BY",
                "attribute value application_name" => "NovaSeq Control Software",
                "attribute key" => "application_version",
                _ => "1.7.5",
            }
        };
        // What the record gives without injection: a part of the corpus that is there already
        // (the run number 0042 in a real run id) is not a leak.
        let (baseline, _) = run_with(&mut enforcer, &records[index]);
        let baseline = String::from_utf8_lossy(
            &baseline
                .iter()
                .flat_map(|e| e.value.clone())
                .collect::<Vec<u8>>(),
        )
        .to_lowercase();
        for pii in PII {
            let lower = pii.to_lowercase();
            let mut allowed: Vec<&str> = HARMLESS_WORDS.to_vec();
            allowed.extend(
                lower
                    .split(|c: char| c.is_whitespace() || "_-.:/\\()@,+'".contains(c))
                    .filter(|part| part.len() >= 4 && baseline.contains(part)),
            );
            for value in injections(real, pii) {
                let mut t = records[index].clone();
                set(&mut t, value.clone());
                let (out, _) = run_with(&mut enforcer, &t);
                injected += 1;
                for e in &out {
                    // Analysis-side outputs only: dead letters stay on the sensitive side.
                    if matches!(e.role, TopicRole::Sanitized | TopicRole::PrivacyAudit)
                        && (leaks(&e.value, pii, &allowed)
                            || leaks(e.key.as_bytes(), pii, &allowed))
                    {
                        leaked.push(format!("{field}: {value:?} -> {}", e.role));
                    }
                }
            }
        }
    }
    eprintln!(
        "{injected} injections into {} string fields, {} leaked",
        string_fields().len(),
        leaked.len()
    );
    assert!(injected > 20_000, "{injected} injections");
    assert!(
        leaked.is_empty(),
        "{} of {injected} injections leaked, e.g. {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(10)]
    );
}

#[test]
fn red_team_inputs_cross_as_nothing_readable() {
    let records = full_records();
    let mut t = records[3].clone();
    t.run_id = Some("840312_M00612_0070_000000000-SMITH".into());
    let c = t.run_configuration.as_mut().unwrap();
    c.flowcell_serial = "000000000-SMITH".into();
    c.flowcell_lot = "12345678-Z".into();
    c.reagent_kit_lot = "55586753".into();
    c.buffer_lot = "19842503".into();
    let (out, _) = run(&t);
    let s = sanitized(&out);
    for e in &out {
        let text = String::from_utf8_lossy(&e.value);
        for secret in ["SMITH", "840312", "12345678", "55586753", "19842503"] {
            assert!(!text.contains(secret), "{secret} crossed in {}", e.role);
        }
    }
    assert!(seqmon_privacy::pseudonym::is_pseudonym(
        &s.run_configuration.unwrap().flowcell_serial
    ));
    let mut t = records[2].clone();
    t.attributes.insert("site_region".into(), "GB-ANN".into());
    t.attributes.insert("Site_Region".into(), "US-JD".into());
    t.instrument_configuration.as_mut().unwrap().rta_version = "02.079.46.0958".into();
    let (out, _) = run(&t);
    let s = sanitized(&out);
    // The first of the two in key order wins; the other is dropped and counted.
    assert_eq!(
        s.attributes.get("site_region").map(String::as_str),
        Some("US")
    );
    assert!(!s.attributes.contains_key("Site_Region"));
    assert!(seqmon_privacy::pseudonym::is_pseudonym(
        &s.instrument_configuration.unwrap().rta_version
    ));
    let a = audits(&out);
    assert!(
        a.iter()
            .any(|a| a.rule == PrivacyRule::UNKNOWN_ATTRIBUTE_KEY && a.count == 1),
        "the case-colliding key is dropped and counted: {a:?}"
    );
}

#[test]
fn settings_need_a_key_and_name_it() {
    let cfg = PrivacyConfig::default();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("PRIVACY_PSEUDONYM_KEY_FILE"), "{err}");
    let cfg = PrivacyConfig {
        pseudonym_key: Some("abcd".parse().unwrap()),
        ..PrivacyConfig::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("PRIVACY_PSEUDONYM_KEY"), "{err}");
    assert!(!err.contains("abcd"), "the key is never printed: {err}");
    let cfg = PrivacyConfig {
        pseudonym_key: Some(DEMO_PSEUDONYM_KEY_HEX.parse().unwrap()),
        ..PrivacyConfig::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("demo key"), "{err}");
    let cfg = PrivacyConfig {
        pseudonym_key: Some("00".repeat(32).parse().unwrap()),
        ..PrivacyConfig::default()
    };
    cfg.validate().unwrap();
    assert!(!format!("{cfg:?}").contains(&"00".repeat(32)));
}

mod digest;

/// The direct writer of sanitized records is on with the current schema (a new schema version
/// turns it off: then update `encode.rs`), and it writes the generic encoder's bytes for every
/// probe and every record kind.
#[test]
fn the_direct_writer_is_in_use_and_writes_the_generic_encoders_bytes() {
    let writer = encode::SanitizedWriter::for_latest_schema()
        .expect("the direct writer agrees with the newest sanitized_telemetry schema");
    assert!(PrivacyEnforcer::default().writer.is_some());
    let mut buf = Vec::new();
    let probes = encode::probes();
    assert!(probes.len() > 10);
    for p in &probes {
        writer.write(p, &mut buf);
        assert_eq!(buf, encode(p).unwrap());
    }
    for t in full_records() {
        let (out, _) = run(&t);
        let s = sanitized(&out);
        writer.write(&s, &mut buf);
        assert_eq!(buf, encode(&s).unwrap(), "{:?}", t.kind);
    }
}

/// The direct reader of telemetry is on with the current schema (a new schema version turns it
/// off: then update `decode.rs`). It reads what the generic decoder reads, and of bytes mutated
/// every way (bits flipped, bytes changed, cut, inserted, removed), it never accepts what the
/// generic decoder refuses nor reads anything differently.
#[test]
fn the_direct_reader_is_in_use_and_never_disagrees_with_the_generic_decoder() {
    let reader = decode::TelemetryReader::for_latest_schema()
        .expect("the direct reader agrees with the newest telemetry schema");
    assert_eq!(
        reader.versions(),
        5,
        "every telemetry version is read directly"
    );
    assert!(PrivacyEnforcer::default().reader.is_some());
    let mut seeds: Vec<Vec<u8>> = decode::probes()
        .iter()
        .filter(|p| p.attributes.len() < 100)
        .flat_map(|p| {
            // Versions before 5 cannot hold the models 5 added.
            (1..=5)
                .filter(|v| *v == 5 || p.instrument_model.in_first_symbols())
                .map(|v| decode::encode_as(p, v).unwrap())
        })
        .collect();
    seeds.extend(full_records().iter().map(|t| encode(t).unwrap()));
    let mut t = full_records().remove(2);
    t.attributes.insert("Müller".into(), "µ".into());
    seeds.push(encode(&t).unwrap());
    let same = |direct: &Telemetry, generic: &Telemetry| {
        encode(direct).unwrap() == encode(generic).unwrap()
    };
    let (mut read, mut refused) = (0usize, 0usize);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for seed in &seeds {
        let direct = reader
            .read(seed)
            .expect("reads what the current schema wrote");
        assert!(same(&direct, &decode::<Telemetry>(seed).unwrap()));
        for _ in 0..3000 {
            let mut b = seed.clone();
            for _ in 0..1 + next(3) {
                let i = 10 + next(b.len() - 10);
                match next(6) {
                    0 => b[i] ^= 1 << next(8),
                    1 => b[i] = next(256) as u8,
                    2 => b.truncate(i),
                    3 => b.insert(i, next(256) as u8),
                    4 if b.len() > 11 => {
                        b.remove(i);
                    }
                    _ => b[i] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff][next(6)],
                }
                if b.len() <= 11 {
                    break;
                }
            }
            match (reader.read(&b), decode::<Telemetry>(&b)) {
                (Some(direct), Ok(generic)) => {
                    assert!(same(&direct, &generic), "{b:02x?}");
                    read += 1;
                }
                (Some(_), Err(e)) => {
                    panic!("the direct reader accepts what the generic refuses ({e}): {b:02x?}")
                }
                (None, _) => refused += 1,
            }
        }
    }
    eprintln!("{read} mutated records read alike, {refused} left to the generic decoder");
    assert!(read > 1000 && refused > 1000);
}

/// The run-id cache changes no output: a run id gives the same sanitized record and the same
/// audit record on a miss, on a hit and after the cache was cleared for being full.
#[test]
fn run_ids_give_the_same_output_from_the_cache_and_after_it_is_cleared() {
    let mut enforcer = PrivacyEnforcer::default();
    let mut parsing = full_records().remove(0);
    parsing.run_id = Some("200619_A00123_0042_AH5NTFDSXX".into());
    let mut pseudonymized = parsing.clone();
    pseudonymized.run_id = Some("123_A00100_0001_FC12345".into());
    let first: Vec<_> = [&parsing, &pseudonymized]
        .map(|t| run_with(&mut enforcer, t).0)
        .into();
    assert_eq!(
        audits(&first[1]).len(),
        1,
        "a run id that does not parse is audited"
    );
    let hit: Vec<_> = [&parsing, &pseudonymized]
        .map(|t| run_with(&mut enforcer, t).0)
        .into();
    let mut other = parsing.clone();
    for i in 0..RUN_ID_CACHE_ENTRIES + 10 {
        other.run_id = Some(format!("{i}_A00100_0001_FC12345"));
        run_with(&mut enforcer, &other);
    }
    assert!(enforcer.run_ids.entries.len() <= RUN_ID_CACHE_ENTRIES);
    let after: Vec<_> = [&parsing, &pseudonymized]
        .map(|t| run_with(&mut enforcer, t).0)
        .into();
    let fresh: Vec<_> = [&parsing, &pseudonymized].map(|t| run(t).0).into();
    for outputs in [&hit, &after, &first] {
        for (a, b) in outputs.iter().zip(&fresh) {
            let bytes = |o: &Vec<Emitted>| -> Vec<(TopicRole, String, Vec<u8>)> {
                o.iter()
                    .map(|e| (e.role, e.key.clone(), e.value.clone()))
                    .collect()
            };
            assert_eq!(bytes(a), bytes(b));
        }
    }
}
