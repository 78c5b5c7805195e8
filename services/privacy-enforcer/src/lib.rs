//! Privacy enforcer: the privacy boundary. Reads `telemetry.validated`, writes
//! `telemetry.sanitized` and one `privacy.audit` record per removal (rule and field, never the
//! value). No service after it reads anything but the sanitized topic.
//!
//! By construction, by allowlist:
//! - every non-null field of the decoded record must be on [`policy::FIELD_ALLOWLIST`], else it
//!   is removed (this covers fields a newer schema version adds: they are refused until the
//!   policy allows them);
//! - attribute keys must be on [`policy::ATTRIBUTE_ALLOWLIST`], and their values clean
//!   identifiers;
//! - free text (the operation-log message) must consist of the technical vocabulary, numbers,
//!   units and event codes, else it is emptied;
//! - identifier fields (serial, run id, lots, versions, codes) must have an identifier's shape and
//!   trip no detector; a required identifier that fails rejects the whole record (dead letter
//!   `PRIVACY_VIOLATION` on the sensitive dead-letter topic, plus an audit record).
//!
//! Stateless: a restart needs no state. Exactly-once comes from the runtime's transactions.

pub mod policy;

use apache_avro::types::Value;
use clap::Args;
use seqmon_model::codec::decode_value;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    DeadLetterReason, PrivacyAction, PrivacyAudit, PrivacyRule, SanitizedTelemetry, Telemetry,
};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};

use crate::policy::{
    check_identifier, check_text, ATTRIBUTE_ALLOWLIST, FIELD_ALLOWLIST, POLICY_VERSION,
};

/// Privacy-enforcer settings.
#[derive(Debug, Clone, Default, Args)]
pub struct PrivacyConfig {
    /// Extra attribute keys to allow beyond the built-in allowlist (comma-separated). Each is
    /// reviewed like a schema change: add only instrument or run data.
    #[arg(long, env = "PRIVACY_EXTRA_ATTRIBUTE_KEYS", value_delimiter = ',')]
    pub extra_attribute_keys: Vec<String>,
}

impl PrivacyConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for k in &self.extra_attribute_keys {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ConfigError::of::<Self>(
                    "extra_attribute_keys",
                    format!("{k:?} must be lower_snake_case"),
                ));
            }
        }
        Ok(())
    }
}

/// The privacy-enforcer processor.
#[derive(Debug, Default)]
pub struct PrivacyEnforcer {
    cfg: PrivacyConfig,
}

impl PrivacyEnforcer {
    /// An enforcer with the given settings.
    pub fn new(cfg: PrivacyConfig) -> Self {
        PrivacyEnforcer { cfg }
    }

    fn attribute_allowed(&self, key: &str) -> bool {
        ATTRIBUTE_ALLOWLIST.contains(&key) || self.cfg.extra_attribute_keys.iter().any(|k| k == key)
    }
}

/// Non-null field paths of a record value (maps contribute their own path, not their keys).
fn non_null_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Record(fields) = value {
        for (name, v) in fields {
            let v = match v {
                Value::Union(_, inner) => inner.as_ref(),
                other => other,
            };
            if matches!(v, Value::Null) {
                continue;
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            non_null_paths(v, &path, out);
            out.push(path);
        }
    }
}

/// The non-null field paths of the record as decoded (resolved to the newest telemetry version)
/// and the typed record; rejects the input when it does not decode. Records written with the
/// newest version are walked and decoded directly ([`seqmon_model::fast`]); older ones go
/// through apache-avro's resolving decode into a generic value. Both give the same paths for
/// the same record (tests/tests/avro_fast_decode.rs checks it on a whole simulated fleet).
pub fn field_paths_and_record(
    input: &Envelope<'_>,
    out: &mut Emitter,
) -> Option<(Vec<String>, Telemetry)> {
    let latest = seqmon_model::store().latest("telemetry");
    if let Ok((writer, body)) = seqmon_model::codec::writer_schema(input.value) {
        if writer.name == latest.name && writer.version == latest.version {
            if let Some(plan) = &writer.plan {
                let paths = match seqmon_model::fast::non_null_paths(plan, body) {
                    Ok(p) => p,
                    Err(e) => {
                        out.reject(
                            DeadLetterReason::UNDECODABLE,
                            format!("telemetry v{} does not decode: {e}", writer.version),
                        );
                        return None;
                    }
                };
                let t = out.decode_or_reject::<Telemetry>(input)?;
                return Some((paths, t));
            }
        }
    }
    let (_, value) = match decode_value(input.value, "telemetry") {
        Ok(v) => v,
        Err(e) => {
            out.reject(e.reason(), e.to_string());
            return None;
        }
    };
    let mut paths = Vec::new();
    non_null_paths(&value, "", &mut paths);
    match apache_avro::from_value(&value) {
        Ok(t) => Some((paths, t)),
        Err(e) => {
            out.reject(
                DeadLetterReason::UNDECODABLE,
                format!("telemetry does not map to the current record type: {e}"),
            );
            None
        }
    }
}

/// The non-null field paths of a decoded generic value (see [`field_paths_and_record`]).
pub fn value_field_paths(value: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    non_null_paths(value, "", &mut paths);
    paths
}

/// Names a map key in an audit record only when the key itself is a harmless identifier.
fn audit_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain && policy::detect(key).is_none() {
        format!("attributes.{key}")
    } else {
        "attributes.<unnamed key>".to_string()
    }
}

impl Processor for PrivacyEnforcer {
    fn stage(&self) -> &'static str {
        "privacy-enforcer"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Validated
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Sanitized, TopicRole::PrivacyAudit]
    }
    fn dead_letter_role(&self) -> TopicRole {
        TopicRole::DeadLettersSensitive
    }
    /// A refused record keeps its audit records: they say why it was refused.
    fn survives_rejection(&self, role: TopicRole) -> bool {
        role == TopicRole::PrivacyAudit
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some((paths, t)) = field_paths_and_record(input, out) else {
            return Ok(());
        };
        let mut removed: Vec<(String, PrivacyRule)> = Vec::new();
        for p in paths
            .iter()
            .filter(|p| !FIELD_ALLOWLIST.contains(&p.as_str()))
        {
            removed.push((p.clone(), PrivacyRule::FIELD_NOT_ALLOWLISTED));
        }
        let audit = |field: &str, rule: PrivacyRule, action: PrivacyAction| PrivacyAudit {
            message_id: t.message_id.clone(),
            instrument_serial: t.instrument_serial.clone(),
            event_time_ms: t.event_time_ms,
            field: field.to_string(),
            rule,
            action,
            source_topic: input.topic.to_string(),
            source_partition: input.partition,
            source_offset: input.offset,
        };
        // The message id and serial key every audit record, so they are checked first: when
        // they are not clean identifiers the audit names no message at all.
        let mut identifiers: Vec<(&str, &str)> = vec![
            ("message_id", &t.message_id),
            ("instrument_serial", &t.instrument_serial),
        ];
        if let Some(r) = &t.run_id {
            identifiers.push(("run_id", r));
        }
        if let Some(c) = &t.instrument_configuration {
            identifiers.extend([
                (
                    "instrument_configuration.control_software_version",
                    c.control_software_version.as_str(),
                ),
                ("instrument_configuration.rta_version", &c.rta_version),
                (
                    "instrument_configuration.firmware_version",
                    &c.firmware_version,
                ),
            ]);
        }
        if let Some(c) = &t.run_configuration {
            identifiers.extend([
                (
                    "run_configuration.flowcell_serial",
                    c.flowcell_serial.as_str(),
                ),
                ("run_configuration.flowcell_lot", &c.flowcell_lot),
                ("run_configuration.reagent_kit_lot", &c.reagent_kit_lot),
                ("run_configuration.buffer_lot", &c.buffer_lot),
            ]);
        }
        if let Some(l) = &t.log_event {
            identifiers.push(("log_event.code", &l.code));
        }
        for (field, v) in &identifiers {
            if let Err(rule) = check_identifier(v) {
                let mut a = audit(field, rule, PrivacyAction::RECORD_REJECTED);
                if matches!(*field, "message_id" | "instrument_serial") {
                    a.message_id = String::new();
                    a.instrument_serial = String::new();
                }
                out.emit(TopicRole::PrivacyAudit, &a.instrument_serial.clone(), &a)?;
                out.reject(
                    DeadLetterReason::PRIVACY_VIOLATION,
                    format!("{field} refused by rule {rule:?}"),
                );
                return Ok(());
            }
        }
        let mut log_event = t.log_event.clone();
        if let Some(l) = log_event.as_mut() {
            if let Err(rule) = check_text(&l.message) {
                l.message.clear();
                removed.push(("log_event.message".into(), rule));
            }
        }
        let mut run_configuration = t.run_configuration.clone();
        if let Some(c) = run_configuration.as_mut() {
            if let Err(rule) = check_text(&c.chemistry) {
                c.chemistry.clear();
                removed.push(("run_configuration.chemistry".into(), rule));
            }
        }
        let mut attributes = t.attributes.clone();
        attributes.retain(|k, v| {
            if !self.attribute_allowed(k) {
                removed.push((audit_key(k), PrivacyRule::FIELD_NOT_ALLOWLISTED));
                false
            } else if let (Err(rule), Err(_)) = (check_identifier(v), check_text(v)) {
                // An allowlisted value may be an identifier or technical text
                // ("MiSeq Control Software"); anything else is removed.
                removed.push((audit_key(k), rule));
                false
            } else {
                true
            }
        });
        for (field, rule) in &removed {
            out.emit(
                TopicRole::PrivacyAudit,
                &t.instrument_serial,
                &audit(field, *rule, PrivacyAction::FIELD_REMOVED),
            )?;
        }
        let sanitized = SanitizedTelemetry {
            message_id: t.message_id.clone(),
            instrument_serial: t.instrument_serial.clone(),
            instrument_model: t.instrument_model,
            event_time_ms: t.event_time_ms,
            sent_time_ms: t.sent_time_ms,
            kind: t.kind,
            privacy_policy_version: POLICY_VERSION,
            run_id: t.run_id.clone(),
            sensors: t.sensors.clone(),
            log_event,
            run_performance: t.run_performance.clone(),
            instrument_configuration: t.instrument_configuration.clone(),
            run_configuration,
            attributes,
        };
        out.emit(TopicRole::Sanitized, &t.instrument_serial, &sanitized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{
        decode, encode, InstrumentModel, OperationLogEvent, Severity, Subsystem, TelemetryKind,
    };

    fn log_record(message: &str) -> Telemetry {
        Telemetry {
            message_id: "id-1".into(),
            instrument_serial: "A00123".into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            event_time_ms: 1,
            sent_time_ms: 2,
            kind: TelemetryKind::OPERATION_LOG,
            run_id: Some("261129_A00123_0042_BHXYZ".into()),
            sensors: None,
            log_event: Some(OperationLogEvent {
                code: "E-FLU-301".into(),
                severity: Severity::ERROR,
                subsystem: Subsystem::FLUIDICS,
                message: message.into(),
            }),
            run_performance: None,
            instrument_configuration: None,
            run_configuration: None,
            attributes: [
                ("application_version".to_string(), "1.7.5".to_string()),
                ("operator_email".to_string(), "jane@lab.org".to_string()),
            ]
            .into(),
        }
    }

    fn run(
        t: &Telemetry,
    ) -> (
        Vec<seqmon_processor::Emitted>,
        Option<seqmon_processor::Rejection>,
    ) {
        let bytes = encode(t).unwrap();
        let env = Envelope {
            key: Some(b"A00123"),
            value: &bytes,
            topic: "telemetry.validated",
            partition: 1,
            offset: 9,
            timestamp_ms: None,
        };
        let mut out = Emitter::default();
        PrivacyEnforcer::default().process(&env, &mut out).unwrap();
        let (records, rejection, _) = out.take();
        (records, rejection)
    }

    #[test]
    fn removes_personal_text_and_unlisted_attributes_and_audits_without_values() {
        let (out, rej) = run(&log_record(
            "Run started by Dr. Alice Keller, alice.keller@clinic.example",
        ));
        assert!(rej.is_none());
        let sanitized: SanitizedTelemetry = decode(
            &out.iter()
                .find(|e| e.role == TopicRole::Sanitized)
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(sanitized.log_event.unwrap().message, "");
        assert_eq!(
            sanitized.attributes.keys().collect::<Vec<_>>(),
            ["application_version"]
        );
        let audits: Vec<PrivacyAudit> = out
            .iter()
            .filter(|e| e.role == TopicRole::PrivacyAudit)
            .map(|e| decode(&e.value).unwrap())
            .collect();
        let fields: Vec<(&str, PrivacyRule)> =
            audits.iter().map(|a| (a.field.as_str(), a.rule)).collect();
        assert!(
            fields.contains(&("log_event.message", PrivacyRule::EMAIL_ADDRESS)),
            "{fields:?}"
        );
        assert!(
            fields.contains(&(
                "attributes.operator_email",
                PrivacyRule::FIELD_NOT_ALLOWLISTED
            )),
            "{fields:?}"
        );
        for e in &out {
            let text = String::from_utf8_lossy(&e.value);
            assert!(
                !text.contains("alice")
                    && !text.contains("Keller")
                    && !text.contains("jane@lab.org"),
                "{}",
                e.role
            );
        }
    }

    #[test]
    fn clean_text_crosses_unchanged() {
        let (out, _) = run(&log_record("Fluidics pressure high at inlet: 181 kPa"));
        let sanitized: SanitizedTelemetry = decode(&out[out.len() - 1].value).unwrap();
        assert_eq!(
            sanitized.log_event.unwrap().message,
            "Fluidics pressure high at inlet: 181 kPa"
        );
    }

    #[test]
    fn a_personal_identifier_rejects_the_record() {
        let mut t = log_record("Run started");
        t.run_id = Some("run of john.doe@hospital.example".into());
        let (out, rej) = run(&t);
        let rej = rej.expect("rejected");
        assert_eq!(rej.reason, DeadLetterReason::PRIVACY_VIOLATION);
        assert!(!rej.detail.contains("john"));
        assert!(out.iter().all(|e| e.role == TopicRole::PrivacyAudit));
        let a: PrivacyAudit = decode(&out[0].value).unwrap();
        assert_eq!(
            (a.field.as_str(), a.rule, a.action),
            (
                "run_id",
                PrivacyRule::EMAIL_ADDRESS,
                PrivacyAction::RECORD_REJECTED
            )
        );
    }

    #[test]
    fn fields_outside_the_allowlist_are_found_in_any_record() {
        let v = Value::Record(vec![
            ("message_id".into(), Value::String("x".into())),
            (
                "operator".into(),
                Value::Union(1, Box::new(Value::String("n".into()))),
            ),
            ("note".into(), Value::Union(0, Box::new(Value::Null))),
        ]);
        let mut paths = Vec::new();
        non_null_paths(&v, "", &mut paths);
        let refused: Vec<_> = paths
            .iter()
            .filter(|p| !FIELD_ALLOWLIST.contains(&p.as_str()))
            .collect();
        assert_eq!(refused, ["operator"]);
    }
}
