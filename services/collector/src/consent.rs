//! Consent as the instrument's own settings state it. A run is collected only when its control
//! software opted in to sending performance data; a missing or unknown setting counts as not
//! opted in unless the operator overrides it explicitly.

use clap::ValueEnum;

/// What the operator says, overriding the instrument's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsentOverride {
    /// Treat every run as opted in (the operator holds consent outside the instrument).
    OptedIn,
    /// Treat every run as not opted in.
    OptedOut,
}

/// The decision for one run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    OptedIn(String),
    NotOptedIn(String),
}

impl Consent {
    /// Whether anything may be sent.
    pub fn allows_sending(&self) -> bool {
        matches!(self, Consent::OptedIn(_))
    }
}

fn yes(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// Decides consent from the (element, value) settings of RunParameters.xml.
pub fn decide(settings: &[(String, String)], operator: Option<ConsentOverride>) -> Consent {
    match operator {
        Some(ConsentOverride::OptedIn) => return Consent::OptedIn("operator override".into()),
        Some(ConsentOverride::OptedOut) => return Consent::NotOptedIn("operator override".into()),
        None => {}
    }
    let mut opted_in = None;
    for (name, value) in settings {
        let verdict = match name.as_str() {
            "SendInstrumentHealthToILMN"
            | "SendIlluminaHealthData"
            | "SendInstrumentHealthData" => yes(value),
            // BaseSpace / cloud modes: any mode that sends instrument health data opts in.
            "BaseSpaceRunMode" | "CloudUploadMode" => {
                match value.trim().to_ascii_lowercase().as_str() {
                    "illuminahealthonly"
                    | "runmonitoringonly"
                    | "runmonitoringandstorage"
                    | "instrumenthealthonly"
                    | "healthonly"
                    | "monitoringandstorage"
                    | "monitoring" => Some(true),
                    "off" | "none" | "manual" | "disabled" | "localonly" | "standalone" => {
                        Some(false)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match verdict {
            // An explicit "no" anywhere wins.
            Some(false) => return Consent::NotOptedIn(format!("{name} is {value}")),
            Some(true) => opted_in = Some(format!("{name} is {value}")),
            None => {}
        }
    }
    match opted_in {
        Some(reason) => Consent::OptedIn(reason),
        None if settings.is_empty() => {
            Consent::NotOptedIn("no performance-data setting in RunParameters".into())
        }
        None => Consent::NotOptedIn("performance-data setting has an unknown value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn settings_decide_and_the_operator_overrides() {
        assert!(decide(&s(&[("SendInstrumentHealthToILMN", "true")]), None).allows_sending());
        assert!(decide(&s(&[("BaseSpaceRunMode", "IlluminaHealthOnly")]), None).allows_sending());
        assert!(!decide(&s(&[("SendInstrumentHealthToILMN", "false")]), None).allows_sending());
        assert!(!decide(
            &s(&[
                ("BaseSpaceRunMode", "IlluminaHealthOnly"),
                ("SendIlluminaHealthData", "false")
            ]),
            None
        )
        .allows_sending());
        assert!(
            !decide(&[], None).allows_sending(),
            "missing counts as not opted in"
        );
        assert!(
            !decide(&s(&[("CloudUploadMode", "Sometimes")]), None).allows_sending(),
            "unknown counts as not opted in"
        );
        assert!(decide(&[], Some(ConsentOverride::OptedIn)).allows_sending());
        assert!(!decide(
            &s(&[("SendInstrumentHealthToILMN", "true")]),
            Some(ConsentOverride::OptedOut)
        )
        .allows_sending());
    }
}
