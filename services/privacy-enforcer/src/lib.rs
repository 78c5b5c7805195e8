//! Privacy enforcer: the privacy boundary. Reads `telemetry.validated`, writes
//! `telemetry.sanitized` and `privacy.audit` (rule, schema field path and count, never a value).
//! No service after it reads anything but the sanitized topic.
//!
//! Parse, don't filter: the sanitized record is built field by field from typed values, so
//! nothing crosses that was not parsed. The table of fields and grammars is
//! `docs/privacy-grammars.md`; in short:
//! - identifiers (message id, serial, run id, flow cell, lots, versions) cross when they parse
//!   against a grammar as narrow as the real values ([`seqmon_privacy::grammar`]), else as a
//!   keyed pseudonym (HMAC-SHA256 under a key that analysis never holds), so equal values stay
//!   equal (cohorts still work) and nothing of the value is readable;
//! - names of things (chemistry, application, region, consent basis, event codes) come from
//!   closed catalogues; an unknown value becomes the symbol `OTHER`;
//! - operation-log text crosses only as a template of the message-template catalogue (built in,
//!   plus the operator's file) with typed parameters; the text is rendered from the template,
//!   never copied; an unknown message keeps code, severity and subsystem and loses its text;
//! - attributes cross only under keys of the closed attribute catalogue, each value typed by its
//!   key; unknown keys are dropped and counted, never named;
//! - every field of the telemetry record is handled explicitly (an exhaustive destructuring: a
//!   new schema field does not compile until it is given a treatment).
//!
//! Each input record gives at most one audit record per (field, rule, action), with a count.
//! A record with more attributes than `--max-attributes` is refused whole (dead letter
//! `TOO_LARGE` on the sensitive dead-letter topic, plus its audit record).
//!
//! Stateless: a restart needs no state. Exactly-once comes from the runtime's transactions.
//!
//! Speed without a second policy: telemetry is read and sanitized records are written by direct
//! Avro code (`decode.rs`, `encode.rs`) that is used only while it agrees byte for byte with the
//! generic codec (checked at start-up; anything it does not read goes to the generic decoder),
//! and what each run id became is kept in a bounded cache of a pure function's results. A test
//! pins a SHA-256 digest of every output for a large fixed corpus (`tests/digest.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    DeadLetterReason, InstrumentConfiguration, LogParameter, PrivacyAction, PrivacyAudit,
    PrivacyRule, RunConfiguration, SanitizedLogEvent, SanitizedTelemetry, Telemetry, NOT_REPORTED,
    OTHER,
};
use seqmon_privacy::pseudonym::{Domain, PseudonymKey};
use seqmon_privacy::template::{ParamValue, TemplateCatalogue};
use seqmon_privacy::{catalogue, grammar};
use seqmon_processor::config::Secret;
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};

use crate::decode::TelemetryReader;
use crate::encode::SanitizedWriter;

mod decode;
mod encode;

/// Version of the privacy policy, stamped on every sanitized record: 3 is grammars, catalogues,
/// templates and keyed pseudonyms (1 and 2 were allowlist filters).
pub const POLICY_VERSION: i32 = 3;

/// The pseudonym key of `make run`, tests and benchmarks: public, so never for production. The
/// service refuses to start without a key of its own (`--pseudonym-key-file`).
pub const DEMO_PSEUDONYM_KEY_HEX: &str =
    "6465 6d6f 2d6b 6579 2d6e 6f74 2d73 6563 7265 742d 6d61 6b65 2d72 756e 2d74 6573";

/// Privacy-enforcer settings.
#[derive(Debug, Clone, Args)]
pub struct PrivacyConfig {
    /// Key of the keyed pseudonyms (HMAC-SHA256) as hex, at least 32 bytes. Only the privacy
    /// enforcer holds it; analysis never does. Prefer --pseudonym-key-file.
    #[arg(long, env = "PRIVACY_PSEUDONYM_KEY", hide_env_values = true)]
    pub pseudonym_key: Option<Secret>,
    /// File holding the pseudonym key as hex (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "PRIVACY_PSEUDONYM_KEY_FILE")]
    pub pseudonym_key_file: Option<PathBuf>,
    /// Operator's message templates, JSON lines (see docs/privacy-grammars.md), added to the
    /// built-in catalogue without a rebuild.
    #[arg(long, env = "PRIVACY_LOG_TEMPLATES_FILE")]
    pub log_templates_file: Option<PathBuf>,
    /// Extra attribute keys to let cross beyond the built-in catalogue (comma-separated,
    /// lower_snake_case). Their values cross only as keyed pseudonyms.
    #[arg(long, env = "PRIVACY_EXTRA_ATTRIBUTE_KEYS", value_delimiter = ',')]
    pub extra_attribute_keys: Vec<String>,
    /// Most attributes one record may carry; a record with more is refused whole.
    #[arg(long, env = "PRIVACY_MAX_ATTRIBUTES", default_value_t = 64)]
    pub max_attributes: usize,
    /// Most an event time may run ahead of its record's arrival (the broker receive time the
    /// validator carried over), ms; a record further ahead is a dead letter TIMESTAMP_FUTURE.
    #[arg(long, env = "PRIVACY_MAX_EVENT_LEAD_MS", default_value_t = seqmon_processor::DEFAULT_MAX_EVENT_LEAD_MS)]
    pub max_event_lead_ms: i64,
}

impl Default for PrivacyConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl PrivacyConfig {
    /// Checks the settings (pure: the key file is read by the binary, after this).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0..=7 * 86_400_000).contains(&self.max_event_lead_ms) {
            return Err(ConfigError::of::<Self>(
                "max_event_lead_ms",
                "must be 0..=604800000 (7 days)",
            ));
        }
        for k in &self.extra_attribute_keys {
            let snake = !k.is_empty()
                && k.len() <= 32
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !snake {
                return Err(ConfigError::of::<Self>(
                    "extra_attribute_keys",
                    format!("{k:?} must be lower_snake_case, at most 32 characters"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.max_attributes) {
            return Err(ConfigError::of::<Self>(
                "max_attributes",
                "must be 1..=10000",
            ));
        }
        match (&self.pseudonym_key, &self.pseudonym_key_file) {
            (Some(_), Some(_)) => Err(ConfigError::of::<Self>(
                "pseudonym_key",
                "give the key or a key file, not both",
            )),
            (None, None) => Err(ConfigError::of::<Self>(
                "pseudonym_key_file",
                "the privacy enforcer needs a pseudonym key (hex, at least 32 bytes) that analysis never holds",
            )),
            (Some(k), None) if is_demo_key(k.expose()) => Err(ConfigError::of::<Self>(
                "pseudonym_key",
                "is the public demo key; generate one (e.g. openssl rand -hex 32)",
            )),
            (Some(k), None) => PseudonymKey::from_hex(k.expose())
                .map(|_| ())
                .map_err(|e| ConfigError::of::<Self>("pseudonym_key", e.to_string())),
            (None, Some(_)) => Ok(()),
        }
    }
}

/// The privacy-enforcer processor.
pub struct PrivacyEnforcer {
    cfg: PrivacyConfig,
    key: PseudonymKey,
    templates: TemplateCatalogue,
    /// The direct reader of telemetry, when it agrees with the generic decoder.
    reader: Option<&'static TelemetryReader>,
    /// The direct writer of sanitized records, when it agrees with the generic encoder.
    writer: Option<&'static SanitizedWriter>,
    /// Run ids seen lately and what they became.
    run_ids: RunIdCache,
    /// The sanitized record being encoded (reused, so encoding does not allocate).
    encoded: Vec<u8>,
}

impl Default for PrivacyEnforcer {
    /// Default settings, the built-in templates and the public demo key (tests, `make run`).
    fn default() -> Self {
        PrivacyEnforcer::new(
            PrivacyConfig::default(),
            demo_key(),
            TemplateCatalogue::builtin(),
        )
    }
}

/// Whether `hex` is the public demo key (whitespace and case ignored): the service refuses it.
pub fn is_demo_key(hex: &str) -> bool {
    let a: String = hex
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let b: String = DEMO_PSEUDONYM_KEY_HEX.split_whitespace().collect();
    a == b
}

/// The public demo key (see [`DEMO_PSEUDONYM_KEY_HEX`]).
pub fn demo_key() -> PseudonymKey {
    let hex: String = DEMO_PSEUDONYM_KEY_HEX.split_whitespace().collect();
    PseudonymKey::from_hex(&hex).expect("the demo key is valid hex of 32 bytes")
}

/// Sanitized run ids by input run id, with whether the run id was pseudonymized as a whole (an
/// audited grammar mismatch). Every record of a run carries its id and a run lasts days, so this
/// saves a keyed hash and an allocation per record. A pure function's results, so a restart or
/// a clear changes no output; bounded: cleared when full. It lives in the enforcer's memory only
/// (like the record being processed) and is never written, logged or printed.
#[derive(Default)]
struct RunIdCache {
    entries: HashMap<String, (String, bool)>,
}

/// Run ids kept at most (a few MB at most; a fleet has one run per instrument at a time).
const RUN_ID_CACHE_ENTRIES: usize = 16_384;

impl RunIdCache {
    fn get(&self, run_id: &str) -> Option<&(String, bool)> {
        self.entries.get(run_id)
    }

    fn insert(&mut self, run_id: String, result: (String, bool)) {
        if self.entries.len() >= RUN_ID_CACHE_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(run_id, result);
    }
}

/// What the enforcer did to one field: rule and action, counted per input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Removal {
    field: &'static str,
    rule: PrivacyRule,
    action: PrivacyAction,
}

/// The audit of one input record: each (field, rule, action) once, with a count.
#[derive(Debug, Default)]
struct AuditLog {
    entries: Vec<(Removal, i32)>,
    /// The parsed event code of an unknown message (kept apart: it is an owned string).
    unknown_message_code: Option<String>,
}

impl AuditLog {
    fn note(&mut self, field: &'static str, rule: PrivacyRule, action: PrivacyAction, n: i32) {
        let r = Removal {
            field,
            rule,
            action,
        };
        match self.entries.iter_mut().find(|(e, _)| *e == r) {
            Some((_, count)) => *count = count.saturating_add(n),
            None => self.entries.push((r, n)),
        }
    }
}

impl PrivacyEnforcer {
    /// An enforcer with its settings, pseudonym key and template catalogue.
    pub fn new(cfg: PrivacyConfig, key: PseudonymKey, templates: TemplateCatalogue) -> Self {
        static READER: OnceLock<Option<TelemetryReader>> = OnceLock::new();
        static WRITER: OnceLock<Option<SanitizedWriter>> = OnceLock::new();
        PrivacyEnforcer {
            cfg,
            key,
            templates,
            reader: READER
                .get_or_init(TelemetryReader::for_latest_schema)
                .as_ref(),
            writer: WRITER
                .get_or_init(SanitizedWriter::for_latest_schema)
                .as_ref(),
            encoded: Vec::with_capacity(512),
            run_ids: RunIdCache::default(),
        }
    }

    /// `value` as parsed by `parses`, or its keyed pseudonym (audited). Empty and
    /// [`NOT_REPORTED`] stay as they are.
    fn identifier(
        &self,
        field: &'static str,
        value: String,
        parses: fn(&str) -> bool,
        domain: Domain,
        audit: &mut AuditLog,
    ) -> String {
        if value.is_empty() || value == NOT_REPORTED || parses(&value) {
            value
        } else {
            audit.note(
                field,
                PrivacyRule::GRAMMAR_MISMATCH,
                PrivacyAction::PSEUDONYMIZED,
                1,
            );
            self.key.pseudonym(domain, &value)
        }
    }

    /// The catalogue's spelling of `value`, or `OTHER` (audited). Empty and [`NOT_REPORTED`]
    /// stay as they are.
    fn catalogued(
        field: &'static str,
        value: &str,
        lookup: fn(&str) -> Option<&'static str>,
        audit: &mut AuditLog,
    ) -> String {
        if value.is_empty() || value == NOT_REPORTED {
            return value.to_string();
        }
        match lookup(value) {
            Some(canonical) => canonical.to_string(),
            None => {
                audit.note(
                    field,
                    PrivacyRule::NOT_IN_CATALOGUE,
                    PrivacyAction::REPLACED_WITH_OTHER,
                    1,
                );
                OTHER.to_string()
            }
        }
    }

    /// A flow cell's pseudonym (empty and NOT_REPORTED stay), the same in `flowcell_serial` and
    /// in the run id.
    fn flowcell(&self, id: &str) -> String {
        if id.is_empty() || id == NOT_REPORTED {
            id.to_string()
        } else {
            self.key.pseudonym(Domain::FlowcellId, id)
        }
    }

    /// A run id that parses crosses with its flow-cell part pseudonymized; one that does not is
    /// a pseudonym as a whole (audited). Every record of a run carries its id, so the result is
    /// kept ([`RunIdCache`]): the same input gives the same output and the same audit.
    fn run_id(&mut self, run_id: String, audit: &mut AuditLog) -> String {
        if let Some((sanitized, pseudonymized)) = self.run_ids.get(&run_id) {
            if *pseudonymized {
                Self::note_run_id_pseudonymized(audit);
            }
            return sanitized.clone();
        }
        let (sanitized, pseudonymized) = match grammar::run_id_parts(&run_id) {
            Some((head, flowcell)) => (format!("{head}{}", self.flowcell(flowcell)), false),
            None if run_id.is_empty() || run_id == NOT_REPORTED => (run_id.clone(), false),
            None => (self.key.pseudonym(Domain::RunId, &run_id), true),
        };
        if pseudonymized {
            Self::note_run_id_pseudonymized(audit);
        }
        self.run_ids
            .insert(run_id, (sanitized.clone(), pseudonymized));
        sanitized
    }

    fn note_run_id_pseudonymized(audit: &mut AuditLog) {
        audit.note(
            "run_id",
            PrivacyRule::GRAMMAR_MISMATCH,
            PrivacyAction::PSEUDONYMIZED,
            1,
        );
    }

    fn log_event(
        &self,
        l: seqmon_model::OperationLogEvent,
        audit: &mut AuditLog,
    ) -> SanitizedLogEvent {
        let code = if grammar::event_code(&l.code) {
            l.code
        } else {
            audit.note(
                "log_event.code",
                PrivacyRule::GRAMMAR_MISMATCH,
                PrivacyAction::REPLACED_WITH_OTHER,
                1,
            );
            OTHER.to_string()
        };
        let matched = self
            .templates
            .match_message(&l.message)
            .and_then(|m| self.templates.render(&m).map(|text| (m, text)));
        let (message, template_id, parameters) = match matched {
            Some((m, text)) => (
                text,
                m.template_id.to_string(),
                m.params
                    .iter()
                    .map(|p| log_parameter(p.name, &p.value))
                    .collect(),
            ),
            None => {
                if !l.message.is_empty() {
                    audit.note(
                        "log_event.message",
                        PrivacyRule::UNKNOWN_TEMPLATE,
                        PrivacyAction::FIELD_REMOVED,
                        1,
                    );
                    audit.unknown_message_code = Some(code.clone());
                }
                (String::new(), OTHER.to_string(), Vec::new())
            }
        };
        SanitizedLogEvent {
            code,
            severity: l.severity,
            subsystem: l.subsystem,
            message,
            template_id,
            parameters,
        }
    }

    fn attributes(
        &self,
        attributes: BTreeMap<String, String>,
        audit: &mut AuditLog,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut unknown = 0i32;
        for (k, v) in attributes {
            // A key that differs from another only by case is dropped and counted too.
            let catalogued = catalogue::attribute_key(&k).filter(|key| !out.contains_key(*key));
            let Some(key) = catalogued else {
                if let Some(extra) = self.cfg.extra_attribute_keys.iter().find(|e| **e == k) {
                    let value = self.key.pseudonym(Domain::Other, &v);
                    audit.note(
                        "attributes.<operator key>",
                        PrivacyRule::GRAMMAR_MISMATCH,
                        PrivacyAction::PSEUDONYMIZED,
                        1,
                    );
                    out.insert(extra.clone(), value);
                } else {
                    unknown = unknown.saturating_add(1);
                }
                continue;
            };
            let value = match key {
                "application_name" => Self::catalogued(
                    ATTR_APPLICATION_NAME,
                    &v,
                    catalogue::application_name,
                    audit,
                ),
                // ISO 3166-1 countries are a closed list: the grammar is the catalogue; a
                // subdivision (1-3 free characters) is not narrow enough and is dropped.
                "site_region" if grammar::region(&v) => v.chars().take(2).collect(),
                "site_region" => Self::catalogued(ATTR_SITE_REGION, &v, |_| None, audit),
                "consent_basis" => {
                    Self::catalogued(ATTR_CONSENT_BASIS, &v, catalogue::consent_basis, audit)
                }
                "chemistry_version" if catalogue::chemistry(&v).is_some() => {
                    Self::catalogued(ATTR_CHEMISTRY_VERSION, &v, catalogue::chemistry, audit)
                }
                _ => self.identifier(
                    attribute_field(key),
                    v,
                    grammar::version,
                    Domain::Version,
                    audit,
                ),
            };
            // The input's own key when it is spelled as the catalogue's (no allocation).
            let key = if k == key { k } else { key.to_string() };
            out.insert(key, value);
        }
        if unknown > 0 {
            audit.note(
                "attributes.<unknown key>",
                PrivacyRule::UNKNOWN_ATTRIBUTE_KEY,
                PrivacyAction::FIELD_REMOVED,
                unknown,
            );
        }
        out
    }

    fn instrument_configuration(
        &self,
        c: InstrumentConfiguration,
        audit: &mut AuditLog,
    ) -> InstrumentConfiguration {
        let v = |field, value: String, audit: &mut AuditLog| {
            self.identifier(field, value, grammar::version, Domain::Version, audit)
        };
        InstrumentConfiguration {
            control_software_version: v(
                "instrument_configuration.control_software_version",
                c.control_software_version,
                audit,
            ),
            rta_version: v("instrument_configuration.rta_version", c.rta_version, audit),
            firmware_version: v(
                "instrument_configuration.firmware_version",
                c.firmware_version,
                audit,
            ),
        }
    }

    fn run_configuration(&self, c: RunConfiguration, audit: &mut AuditLog) -> RunConfiguration {
        let lot = |field, value: String, audit: &mut AuditLog| {
            self.identifier(field, value, grammar::lot_number, Domain::Lot, audit)
        };
        RunConfiguration {
            read1_cycles: c.read1_cycles,
            index1_cycles: c.index1_cycles,
            index2_cycles: c.index2_cycles,
            read2_cycles: c.read2_cycles,
            chemistry: Self::catalogued(
                "run_configuration.chemistry",
                &c.chemistry,
                catalogue::chemistry,
                audit,
            ),
            // Always a pseudonym: a flow-cell id's free characters can spell a name.
            flowcell_serial: self.flowcell(&c.flowcell_serial),
            flowcell_lot: lot("run_configuration.flowcell_lot", c.flowcell_lot, audit),
            reagent_kit_lot: lot(
                "run_configuration.reagent_kit_lot",
                c.reagent_kit_lot,
                audit,
            ),
            reagent_kit_expiry_date: c.reagent_kit_expiry_date,
            buffer_lot: lot("run_configuration.buffer_lot", c.buffer_lot, audit),
            buffer_expiry_date: c.buffer_expiry_date,
        }
    }
}

const ATTR_APPLICATION_NAME: &str = "attributes.application_name";
const ATTR_SITE_REGION: &str = "attributes.site_region";
const ATTR_CONSENT_BASIS: &str = "attributes.consent_basis";
const ATTR_CHEMISTRY_VERSION: &str = "attributes.chemistry_version";

/// The audit field path of a catalogued attribute key (a schema path, never input text).
fn attribute_field(key: &'static str) -> &'static str {
    match key {
        "application_name" => ATTR_APPLICATION_NAME,
        "application_version" => "attributes.application_version",
        "fpga_version" => "attributes.fpga_version",
        "recipe_version" => "attributes.recipe_version",
        "chemistry_version" => ATTR_CHEMISTRY_VERSION,
        "site_region" => ATTR_SITE_REGION,
        "collector_version" => "attributes.collector_version",
        "consent_basis" => ATTR_CONSENT_BASIS,
        _ => "attributes.<catalogued key>",
    }
}

fn log_parameter(name: &str, value: &ParamValue) -> LogParameter {
    let (number, unit, symbol) = match value {
        ParamValue::Int(i) => (Some(*i as f64), None, None),
        ParamValue::Number { value, unit, .. } => {
            (Some(*value), unit.map(|u| u.symbol().to_string()), None)
        }
        ParamValue::Code(s) | ParamValue::Version(s) => (None, None, Some(s.clone())),
        ParamValue::Part(p) => (None, None, Some((*p).to_string())),
    };
    LogParameter {
        name: name.to_string(),
        number,
        unit,
        symbol,
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
    /// A refused record keeps its audit record: it says why it was refused.
    fn survives_rejection(&self, role: TopicRole) -> bool {
        role == TopicRole::PrivacyAudit
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        // The direct reader, else the generic decoder (which also says why bytes are bad).
        let direct = self.reader.and_then(|r| r.read(input.value));
        let Some(t) = direct.or_else(|| out.decode_or_reject::<Telemetry>(input)) else {
            return Ok(());
        };
        // The validator refuses these; a record that reached this topic otherwise is still bad.
        if out.reject_non_finite(t.non_finite_measurement())
            || out.reject_if_ahead(input, t.event_time_ms, self.cfg.max_event_lead_ms)
        {
            return Ok(());
        }
        // Every field, by name: a field added to the schema does not compile until it is given
        // a treatment here.
        let Telemetry {
            message_id,
            instrument_serial,
            instrument_model,
            event_time_ms,
            sent_time_ms,
            kind,
            run_id,
            sensors,
            log_event,
            run_performance,
            instrument_configuration,
            run_configuration,
            attributes,
        } = t;
        let mut audit = AuditLog::default();
        // Always a pseudonym: a UUID has 122 free bits, and analysis needs equality only.
        let message_id = self.key.pseudonym(Domain::MessageId, &message_id);
        let serial = self.identifier(
            "instrument_serial",
            instrument_serial,
            |s| grammar::instrument_serial(s).is_some(),
            Domain::InstrumentSerial,
            &mut audit,
        );
        let audit_record = |removal: &Removal, count: i32, code: Option<String>| PrivacyAudit {
            message_id: message_id.clone(),
            instrument_serial: serial.clone(),
            event_time_ms,
            field: removal.field.to_string(),
            rule: removal.rule,
            action: removal.action,
            count,
            event_code: code,
            source_topic: input.topic.to_string(),
            source_partition: input.partition,
            source_offset: input.offset,
        };
        if attributes.len() > self.cfg.max_attributes {
            let removal = Removal {
                field: "attributes",
                rule: PrivacyRule::SIZE_LIMIT,
                action: PrivacyAction::RECORD_REJECTED,
            };
            let n = i32::try_from(attributes.len()).unwrap_or(i32::MAX);
            out.emit(
                TopicRole::PrivacyAudit,
                &serial,
                &audit_record(&removal, n, None),
            )?;
            out.reject(
                DeadLetterReason::TOO_LARGE,
                format!(
                    "{} attributes; at most {} (--max-attributes)",
                    attributes.len(),
                    self.cfg.max_attributes
                ),
            );
            return Ok(());
        }
        let run_id = run_id.map(|r| self.run_id(r, &mut audit));
        let log_event = log_event.map(|l| self.log_event(l, &mut audit));
        let instrument_configuration =
            instrument_configuration.map(|c| self.instrument_configuration(c, &mut audit));
        let run_configuration = run_configuration.map(|c| self.run_configuration(c, &mut audit));
        let attributes = self.attributes(attributes, &mut audit);
        for (removal, count) in &audit.entries {
            let code = (removal.rule == PrivacyRule::UNKNOWN_TEMPLATE)
                .then(|| audit.unknown_message_code.clone())
                .flatten();
            out.emit(
                TopicRole::PrivacyAudit,
                &serial,
                &audit_record(removal, *count, code),
            )?;
        }
        let sanitized = SanitizedTelemetry {
            message_id,
            instrument_serial: serial,
            instrument_model,
            event_time_ms,
            sent_time_ms,
            kind,
            privacy_policy_version: POLICY_VERSION,
            run_id,
            // Numbers and enums: typed by the schema already.
            sensors,
            log_event,
            run_performance,
            instrument_configuration,
            run_configuration,
            attributes,
        };
        match self.writer {
            Some(writer) => {
                writer.write(&sanitized, &mut self.encoded);
                out.emit_bytes(
                    TopicRole::Sanitized,
                    &sanitized.instrument_serial,
                    &self.encoded,
                );
                Ok(())
            }
            None => out.emit(
                TopicRole::Sanitized,
                &sanitized.instrument_serial,
                &sanitized,
            ),
        }
    }
}

#[cfg(test)]
mod tests;
