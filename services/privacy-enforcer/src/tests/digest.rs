//! The enforcer's outputs for a fixed, large and varied corpus, pinned by a SHA-256 digest.
//!
//! Written before the enforcer was optimised, with the digest of the code as it was then: every
//! optimisation must keep every output byte-identical (sanitized records, audit records, their
//! keys and order, and the dead letters' reasons and details). If this test fails after a
//! change meant to be behaviour-neutral, the change is wrong; if the behaviour is meant to change
//! (a new grammar, template or policy version), print the new digest and say why in the commit.
//! The corpus is built from the simulator, the validator and the adversarial corpora, so a change
//! there changes the digest too.

use sha2::{Digest, Sha256};

use seqmon_privacy::adversarial;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_validator::Validator;

use super::*;

/// SHA-256 of every output of [`corpus`], in order (see [`Outputs::add`]).
/// Changed once since: 745c1c1 (the simulator's undecodable garbage never begins with 00 or C3)
/// changed the corpus, not the enforcer; with that line undone the old digest still holds.
const EXPECTED_DIGEST: &str = "86324866b68fcb7615827725e3bd24178d1b1d31bf1708d0de89b7018041c7a7";

/// One input record for the enforcer: key, Avro bytes, arrival time.
type Input = (String, Vec<u8>, Option<i64>);

/// Running digest and counts of the outputs.
#[derive(Default)]
struct Outputs {
    hash: Sha256,
    inputs: usize,
    sanitized: usize,
    audits: usize,
    rejections: usize,
}

impl Outputs {
    /// Feeds one record's outputs: length-prefixed fields, so no two output sequences collide.
    fn add(&mut self, records: &[Emitted], rejection: Option<&Rejection>) {
        let mut field = |b: &[u8]| {
            self.hash.update((b.len() as u64).to_le_bytes());
            self.hash.update(b);
        };
        field(b"input");
        for e in records {
            field(e.role.as_str().as_bytes());
            field(e.key.as_bytes());
            field(&e.value);
        }
        if let Some(r) = rejection {
            field(b"rejected");
            field(format!("{:?}", r.reason).as_bytes());
            field(r.detail.as_bytes());
        }
        self.inputs += 1;
        for e in records {
            match e.role {
                TopicRole::Sanitized => self.sanitized += 1,
                TopicRole::PrivacyAudit => self.audits += 1,
                _ => {}
            }
        }
        self.rejections += usize::from(rejection.is_some());
    }
}

fn feed(enforcer: &mut PrivacyEnforcer, inputs: &[Input], outputs: &mut Outputs) {
    for (i, (key, value, arrival)) in inputs.iter().enumerate() {
        let env = Envelope {
            key: Some(key.as_bytes()),
            value,
            topic: "telemetry.validated",
            partition: (i % 6) as i32,
            offset: i as i64,
            timestamp_ms: None,
            arrival_time_ms: *arrival,
        };
        let mut out = Emitter::default();
        enforcer.process(&env, &mut out).expect("processes");
        let (records, rejection, _) = out.take();
        outputs.add(&records, rejection.as_ref());
    }
}

/// A simulated fleet (200 instruments, fixed seed, with bad records, faults and glitches), the
/// raw records as they are and as the validator lets them through. Arrival times vary so that
/// some records are ahead of their arrival.
fn fleet() -> (Vec<Input>, Vec<String>) {
    let start = 1_793_491_200_000;
    let sim = simulate(&FleetConfig {
        instruments: 200,
        duration_hours: 0.75,
        seed: 20_261_130,
        start_time_ms: start,
        bad_record_share: 0.03,
        ..Default::default()
    });
    let mut validator = Validator::default();
    let mut inputs = Vec::new();
    for (i, r) in sim.records.iter().enumerate() {
        let arrival = match i % 3 {
            0 => None,
            1 => Some(r.sent_time_ms + 50),
            _ => Some(start + 20 * 60_000),
        };
        inputs.push((r.key.clone(), r.bytes.clone(), arrival));
        let env = Envelope {
            key: Some(r.key.as_bytes()),
            value: &r.bytes,
            topic: "telemetry.raw",
            partition: 0,
            offset: i as i64,
            timestamp_ms: Some(r.sent_time_ms),
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        validator.process(&env, &mut out).expect("validates");
        let (records, _, _) = out.take();
        for e in records {
            if e.role == TopicRole::Validated {
                inputs.push((e.key, e.value, Some(r.sent_time_ms + 20)));
            }
        }
    }
    (inputs, sim.pii_strings)
}

/// Personal data put into every string field of every record kind, the ways the adversarial
/// corpus injects it, plus log messages of every built-in template in many variants and
/// attribute maps of many sizes.
fn adversarial(sim_pii: &[String]) -> Vec<Input> {
    let records = full_records();
    let mut pii: Vec<String> = adversarial::PII.iter().map(|s| s.to_string()).collect();
    pii.extend(sim_pii.iter().take(40).cloned());
    pii.extend(["", " ", "NOT_REPORTED", "ps-0123456789abcdef0123"].map(String::from));
    let mut out = Vec::new();
    let mut push =
        |t: &Telemetry| out.push((t.instrument_serial.clone(), encode(t).unwrap(), None));
    for (field, index, set) in string_fields() {
        let real = match field {
            "run_id" => "200619_A00123_0042_AH5NTFDSXX",
            "instrument_serial" => "A00123",
            "log_event.code" => "E-FLU-301",
            "log_event.message" => "Run started",
            "chemistry" => "SBS v1.5 300 cycles",
            "flowcell_serial" => "H5NTFDSXX",
            f if f.ends_with("lot") => "20264129",
            "attribute value site_region" => "DE-BY",
            _ => "1.7.5",
        };
        for p in &pii {
            for value in adversarial::injections(real, p) {
                let mut t = records[index].clone();
                set(&mut t, value);
                push(&t);
            }
        }
    }
    // Every built-in template's example, in variants that match and variants that must not.
    let catalogue = TemplateCatalogue::builtin();
    let mut log = records[1].clone();
    for template in catalogue.templates() {
        let Some(example) = template.example() else {
            continue;
        };
        let mut variants = vec![
            example.to_string(),
            example.to_uppercase(),
            example.to_lowercase(),
            format!("  {}\t", example.replace(' ', "   ")),
            format!("{example}."),
            format!("{example} Smith"),
            format!("Dr. Keller: {example}"),
        ];
        // Numbers changed: in and out of their slots' ranges.
        for (from, to) in [("1", "7"), ("2", "9999999"), ("0", "-0"), (".", ".123456")] {
            variants.push(example.replacen(from, to, 1));
        }
        for message in variants {
            log.log_event.as_mut().unwrap().message = message;
            push(&log);
        }
    }
    for code in [
        "I-RUN-001",
        "E1042",
        "e-flu-301",
        "X-ABC-123",
        "",
        "NOT_REPORTED",
    ] {
        for message in [
            "Run started",
            "Lab door 3 opened with badge reader 12",
            "Lab door 3 opened with badge reader 120",
            "",
        ] {
            let l = log.log_event.as_mut().unwrap();
            l.code = code.to_string();
            l.message = message.to_string();
            push(&log);
        }
    }
    // Attribute maps of many sizes, catalogued and not, colliding by case.
    let keys = [
        "application_name",
        "Application_Name",
        "application_version",
        "fpga_version",
        "recipe_version",
        "chemistry_version",
        "site_region",
        "SITE_REGION",
        "collector_version",
        "consent_basis",
        "operator_note",
        "patient_name",
    ];
    let values = [
        "NovaSeq Control Software",
        "1.7.5",
        "SBS v1.5 300 cycles",
        "DE-BY",
        "gb",
        "cloud_performance_data_only",
        "Jane Doe",
        "",
        "NOT_REPORTED",
    ];
    let mut attrs = records[2].clone();
    for n in 0..200usize {
        attrs.attributes.clear();
        for j in 0..(n % 13) {
            let k = keys[(n * 7 + j * 5) % keys.len()];
            let v = values[(n * 3 + j) % values.len()];
            attrs.attributes.insert(k.to_string(), v.to_string());
        }
        for j in 0..(n / 40) * 20 {
            attrs
                .attributes
                .insert(format!("extra_{n}_{j}"), "x".into());
        }
        push(&attrs);
    }
    out
}

/// The whole corpus: the fleet, then the adversarial inputs.
fn corpus() -> (Vec<Input>, Vec<Input>) {
    let (fleet, pii) = fleet();
    let adversarial = adversarial(&pii);
    (fleet, adversarial)
}

#[test]
fn outputs_match_the_digest_recorded_before_optimisation() {
    let (fleet, adversarial) = corpus();
    let mut outputs = Outputs::default();
    // The default enforcer, then one with an operator key, a low attribute limit and an
    // operator template (a second configuration exercises the other branches).
    feed(&mut PrivacyEnforcer::default(), &fleet, &mut outputs);
    feed(&mut PrivacyEnforcer::default(), &adversarial, &mut outputs);
    let mut templates = TemplateCatalogue::builtin();
    templates
        .extend(
            TemplateCatalogue::parse(
                r#"{"id":"SITE_DOOR_OPENED_BY_BADGE","pattern":"Lab door {door:int 1..=9} opened with badge reader {reader:int 1..=99}","example":"Lab door 3 opened with badge reader 12"}"#,
            )
            .unwrap(),
        )
        .unwrap();
    let cfg = PrivacyConfig {
        extra_attribute_keys: vec!["operator_note".into(), "patient_name".into()],
        max_attributes: 6,
        ..PrivacyConfig::default()
    };
    let key = PseudonymKey::from_bytes(&[0x5a; 40]).unwrap();
    let mut configured = PrivacyEnforcer::new(cfg, key, templates);
    feed(&mut configured, &fleet[..fleet.len() / 4], &mut outputs);
    feed(&mut configured, &adversarial, &mut outputs);
    let digest: String = outputs
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    eprintln!(
        "{} inputs ({} fleet, {} adversarial): {} sanitized, {} audit records, {} rejected; digest {digest}",
        outputs.inputs,
        fleet.len(),
        adversarial.len(),
        outputs.sanitized,
        outputs.audits,
        outputs.rejections
    );
    assert!(fleet.len() > 20_000 && adversarial.len() > 20_000);
    assert!(outputs.sanitized > 50_000 && outputs.audits > 20_000 && outputs.rejections > 100);
    assert_eq!(digest, EXPECTED_DIGEST, "the enforcer's outputs changed");
}
