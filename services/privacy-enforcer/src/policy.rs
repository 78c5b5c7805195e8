//! The privacy policy: what may cross the boundary. Everything here is an allowlist; the
//! detectors only choose which rule an audit record names when something is refused.

use std::sync::OnceLock;

use regex::Regex;
use seqmon_model::PrivacyRule;

/// Version of this policy, stamped on every sanitized record.
pub const POLICY_VERSION: i32 = 1;

/// Field paths of the telemetry record that may cross, with `*` for "any key" of a map.
/// A non-null field whose path is not here is removed and audited.
pub const FIELD_ALLOWLIST: &[&str] = &[
    "message_id",
    "instrument_serial",
    "instrument_model",
    "event_time_ms",
    "sent_time_ms",
    "kind",
    "run_id",
    "sensors",
    "sensors.laser_power_mw",
    "sensors.focus_fwhm_px",
    "sensors.focus_z_offset_um",
    "sensors.stage_position_error_um",
    "sensors.stage_motor_current_a",
    "sensors.flowcell_temp_c",
    "sensors.flowcell_temp_setpoint_c",
    "sensors.chiller_temp_c",
    "sensors.ambient_temp_c",
    "sensors.fluidics_pressure_kpa",
    "sensors.flow_rate_ul_min",
    "log_event",
    "log_event.code",
    "log_event.severity",
    "log_event.subsystem",
    "log_event.message",
    "run_performance",
    "run_performance.lane",
    "run_performance.read_number",
    "run_performance.cycle",
    "run_performance.total_cycles",
    "run_performance.cluster_density_k_per_mm2",
    "run_performance.pct_pf",
    "run_performance.pct_q30",
    "run_performance.mean_qscore",
    "run_performance.error_rate_pct",
    "run_performance.phasing_pct",
    "run_performance.prephasing_pct",
    "run_performance.intensity_a",
    "run_performance.intensity_c",
    "run_performance.intensity_g",
    "run_performance.intensity_t",
    "run_performance.pct_aligned",
    "run_performance.signal_to_noise",
    "run_performance.yield_gbp",
    "instrument_configuration",
    "instrument_configuration.control_software_version",
    "instrument_configuration.rta_version",
    "instrument_configuration.firmware_version",
    "run_configuration",
    "run_configuration.read1_cycles",
    "run_configuration.index1_cycles",
    "run_configuration.index2_cycles",
    "run_configuration.read2_cycles",
    "run_configuration.chemistry",
    "run_configuration.flowcell_serial",
    "run_configuration.flowcell_lot",
    "run_configuration.reagent_kit_lot",
    "run_configuration.reagent_kit_expiry_date",
    "run_configuration.buffer_lot",
    "run_configuration.buffer_expiry_date",
    "attributes",
];

/// Attribute keys that may cross (their values must also be clean identifiers).
pub const ATTRIBUTE_ALLOWLIST: &[&str] = &[
    "application_name",
    "application_version",
    "fpga_version",
    "recipe_version",
    "chemistry_version",
    "site_region",
    "collector_version",
];

/// Words that may appear in operation-log text: the control software's technical vocabulary.
/// Numbers, units and event codes are allowed by shape; any other word removes the message.
pub const VOCABULARY: &[&str] = &[
    "a",
    "above",
    "aborted",
    "after",
    "air",
    "alignment",
    "ambient",
    "and",
    "at",
    "autofocus",
    "below",
    "bubble",
    "buffer",
    "by",
    "cartridge",
    "cell",
    "channel",
    "check",
    "chemistry",
    "chiller",
    "cleavage",
    "closed",
    "cluster",
    "clog",
    "completed",
    "current",
    "cycle",
    "density",
    "detected",
    "deviation",
    "door",
    "drift",
    "drop",
    "error",
    "exceeds",
    "expired",
    "expiring",
    "failed",
    "firmware",
    "fluidics",
    "optics",
    "optical",
    "thermal",
    "mechanical",
    "subsystem",
    "flow",
    "flowcell",
    "focus",
    "following",
    "for",
    "from",
    "fwhm",
    "heater",
    "high",
    "image",
    "imaging",
    "in",
    "incorporation",
    "initialized",
    "inlet",
    "instrument",
    "intensity",
    "is",
    "lane",
    "laser",
    "leak",
    "limit",
    "line",
    "lot",
    "low",
    "module",
    "motor",
    "nominal",
    "not",
    "of",
    "on",
    "opened",
    "out",
    "outlet",
    "passed",
    "paused",
    "position",
    "power",
    "pressure",
    "prime",
    "priming",
    "pump",
    "q30",
    "range",
    "rate",
    "read",
    "reagent",
    "reagents",
    "registration",
    "restart",
    "restarted",
    "resumed",
    "retry",
    "retrying",
    "rfid",
    "run",
    "scan",
    "scanning",
    "self",
    "sensor",
    "setpoint",
    "software",
    "spec",
    "stage",
    "started",
    "step",
    "succeeded",
    "suspected",
    "temperature",
    "test",
    "the",
    "threshold",
    "tile",
    "timeout",
    "to",
    "update",
    "updated",
    "valve",
    "version",
    "warning",
    "wash",
    "washing",
    "with",
    "within",
    "cycles",
    "control",
    "miseq",
    "nextseq",
    "novaseq",
    "iseq",
    "hiseq",
    "default",
    "mid",
    "kit",
    "paired",
    "end",
    "single",
    "standard",
    "output",
    "z",
    "x",
    "y",
    "sbs",
    "pf",
    "phasing",
    "prephasing",
    "quality",
    "score",
    "idle",
    "ready",
    "complete",
];

/// Units that may follow or be attached to numbers.
const UNITS: &[&str] = &[
    "mw", "c", "kpa", "ul/min", "um", "px", "a", "ms", "s", "min", "h", "%", "k/mm2",
];

struct Detectors {
    email: Regex,
    sequence: Regex,
    patient: Regex,
    sample: Regex,
    phone: Regex,
    dob: Regex,
    person: Regex,
    identifier: Regex,
    event_code: Regex,
    number: Regex,
    version: Regex,
}

fn detectors() -> &'static Detectors {
    static D: OnceLock<Detectors> = OnceLock::new();
    D.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("policy regex compiles");
        Detectors {
            email: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*"),
            sequence: re(r"(?i)[ACGTUN]{12,}"),
            patient: re(r"(?i)\b(patient|pt|mrn|subject|case)\b|\b(?i:mrn|pt)[-_#:]?\d{3,}"),
            sample: re(r"(?i)\b(sample|specimen|library|lib|donor)s?\b|\b[Ss]\d{2,}[-_]\d+\b"),
            phone: re(r"\+?\d[\d ()-]{8,}\d"),
            dob: re(r"(?i)\b(dob|date of birth|born|birthday)\b|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b"),
            person: re(r"\b(Dr|Mr|Mrs|Ms|Prof)\.?\s+[A-Z][a-z]+|\b[A-Z][a-z]+\s+[A-Z][a-z]{2,}\b"),
            identifier: re(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"),
            event_code: re(r"^[A-Z]{1,3}-[A-Z]{2,4}-\d{2,4}$"),
            number: re(r"^[-+]?\d+(\.\d+)?$"),
            version: re(r"^[vV]\d+(\.\d+)*$"),
        }
    })
}

/// The most specific rule that explains why free `text` may not cross, if a detector recognises
/// it.
pub fn detect(text: &str) -> Option<PrivacyRule> {
    let d = detectors();
    if let Some(rule) = detect_in_identifier(text) {
        return Some(rule);
    }
    if d.dob.is_match(text) {
        Some(PrivacyRule::DATE_OF_BIRTH)
    } else if d.phone.is_match(text) {
        Some(PrivacyRule::PHONE_NUMBER)
    } else if d.person.is_match(text) {
        Some(PrivacyRule::PERSON_NAME)
    } else {
        None
    }
}

/// Detectors that make sense inside an identifier. Digit runs with dashes (UUIDs, run ids) look
/// like phone numbers and dates, so those two detectors apply to free text only; identifiers are
/// held to an identifier's shape instead.
fn detect_in_identifier(text: &str) -> Option<PrivacyRule> {
    let d = detectors();
    if d.email.is_match(text) {
        Some(PrivacyRule::EMAIL_ADDRESS)
    } else if d.sequence.is_match(text) {
        Some(PrivacyRule::SEQUENCE_DATA)
    } else if d.patient.is_match(text) {
        Some(PrivacyRule::PATIENT_IDENTIFIER)
    } else if d.sample.is_match(text) {
        Some(PrivacyRule::SAMPLE_IDENTIFIER)
    } else {
        None
    }
}

/// An identifier field (serial, run id, lot, version) may cross when it has the shape of an
/// identifier and no detector fires. `Err` is the rule that refuses it.
pub fn check_identifier(value: &str) -> Result<(), PrivacyRule> {
    if let Some(rule) = detect_in_identifier(value) {
        return Err(rule);
    }
    if detectors().identifier.is_match(value) {
        Ok(())
    } else {
        Err(PrivacyRule::IDENTIFIER_FORMAT)
    }
}

/// Free text may cross when every token is vocabulary, a number, a number with a unit, a unit or
/// an event code. `Err` is the rule that refuses it.
pub fn check_text(text: &str) -> Result<(), PrivacyRule> {
    let d = detectors();
    // Detectors whose matches could pass the vocabulary (digits) run first. A person name never
    // passes the vocabulary, so text made only of vocabulary passes even in Title Case.
    if let Some(rule) = detect_in_identifier(text) {
        return Err(rule);
    }
    if d.dob.is_match(text) {
        return Err(PrivacyRule::DATE_OF_BIRTH);
    }
    if d.phone.is_match(text) {
        return Err(PrivacyRule::PHONE_NUMBER);
    }
    for raw in text.split_whitespace() {
        let token = raw
            .trim_matches(|c: char| ",;:()[]'\"!?".contains(c))
            .trim_end_matches('.');
        if token.is_empty() || d.event_code.is_match(token) {
            continue;
        }
        let lower = token.to_ascii_lowercase();
        let unitless = UNITS
            .iter()
            .filter_map(|u| lower.strip_suffix(u))
            .find(|n| d.number.is_match(n));
        let ok = VOCABULARY.contains(&lower.as_str())
            || UNITS.contains(&lower.as_str())
            || d.number.is_match(&lower)
            || unitless.is_some()
            || is_ratio(&lower)
            || d.version.is_match(token);
        if !ok {
            return Err(if d.person.is_match(text) {
                PrivacyRule::PERSON_NAME
            } else {
                PrivacyRule::TEXT_NOT_ALLOWLISTED
            });
        }
    }
    Ok(())
}

/// `12/300`-style progress counters.
fn is_ratio(token: &str) -> bool {
    token.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technical_messages_cross() {
        for m in [
            "Laser power below threshold: 412.5 mW (nominal 500 mW)",
            "Flow cell temperature deviation 2.1 C from setpoint 60.0 C",
            "Cycle 57/318 completed",
            "E-FLU-301 pressure high at inlet: 181 kPa",
            "Run started",
            "Autofocus retry on lane 2 tile 1104",
            "SBS v1.5 300 cycles",
            "MiSeq Control Software",
            "Flow Cell Temperature",
        ] {
            assert_eq!(check_text(m), Ok(()), "{m}");
        }
    }

    #[test]
    fn personal_genomic_and_health_text_is_refused_with_its_rule() {
        let cases = [
            (
                "Run started by jane.doe@example-hospital.org",
                PrivacyRule::EMAIL_ADDRESS,
            ),
            (
                "Read check ACGTTGCAGGTCAACGTAGG failed",
                PrivacyRule::SEQUENCE_DATA,
            ),
            ("Loaded patient MRN-448812", PrivacyRule::PATIENT_IDENTIFIER),
            ("Library S12-0456 loaded", PrivacyRule::SAMPLE_IDENTIFIER),
            (
                "Operator John Smith restarted run",
                PrivacyRule::PERSON_NAME,
            ),
            ("Call +44 20 7946 0958 on error", PrivacyRule::PHONE_NUMBER),
            ("DOB 1984-03-12", PrivacyRule::DATE_OF_BIRTH),
            (
                "Oncology panel for tumour board",
                PrivacyRule::TEXT_NOT_ALLOWLISTED,
            ),
        ];
        for (text, rule) in cases {
            assert_eq!(check_text(text), Err(rule), "{text}");
        }
    }

    #[test]
    fn identifiers_need_a_clean_identifier_shape() {
        assert_eq!(
            check_identifier("261129_M01234_0042_000000000-ABCDE"),
            Ok(())
        );
        assert_eq!(check_identifier("20345678"), Ok(()));
        assert_eq!(check_identifier("1.7.5"), Ok(()));
        assert_eq!(
            check_identifier("6f1c0d3e-1234-4567-8901-234567890123"),
            Ok(()),
            "UUIDs are not phone numbers"
        );
        assert_eq!(
            check_identifier("run by a.b@c.org"),
            Err(PrivacyRule::EMAIL_ADDRESS)
        );
        assert_eq!(
            check_identifier("has spaces inside"),
            Err(PrivacyRule::IDENTIFIER_FORMAT)
        );
    }
}
