//! Consent as the instrument's own settings state it. A run is collected only when its control
//! software opted in to sending performance data to Illumina; a missing setting, or a setting
//! with a value this collector does not know, counts as not opted in unless the operator
//! overrides it explicitly.
//!
//! Rules, in order:
//! 1. an operator override decides alone (basis `OPERATOR_OVERRIDE`);
//! 2. an explicit "no" anywhere wins, whatever its order and however often an element repeats
//!    (`<SendInstrumentHealthToILMN>true</…>` then `false` is not opted in, nor the reverse);
//! 3. a consent element with a value this collector does not know is not opted in (it might be
//!    a "no" this table has not seen), and the reason names the element and its value;
//! 4. otherwise any documented "yes" opts in: an instrument-health switch, a "performance data
//!    only" cloud mode, or a cloud run-monitoring mode (which uploads the InterOp performance
//!    data to Illumina's cloud). The decision carries that basis, and the collector writes its
//!    label into the instrument-configuration record as the attribute `consent_basis`.
//!
//! The elements and values come from public RunParameters.xml files, cited beside each entry of
//! [`CONSENT_ELEMENTS`] and in [`verdict`].

use clap::ValueEnum;

/// What the operator says, overriding the instrument's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsentOverride {
    /// Treat every run as opted in (the operator holds consent outside the instrument).
    OptedIn,
    /// Treat every run as not opted in.
    OptedOut,
}

/// On what basis a run counts as opted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConsentBasis {
    /// An instrument-health switch is on (`SendInstrumentHealthToILMN`, `SendIlluminaHealthData`).
    InstrumentHealthSetting,
    /// A cloud mode that sends performance data only (`IlluminaHealthOnly`,
    /// `PerformanceDataOnly`, `InstrumentPerformance`).
    CloudPerformanceDataOnly,
    /// A cloud run-monitoring mode, which sends the performance data with the run monitoring.
    CloudRunMonitoring,
    /// The operator's explicit override.
    OperatorOverride,
}

impl ConsentBasis {
    /// The stable label sent as the `consent_basis` attribute.
    pub fn label(self) -> &'static str {
        match self {
            ConsentBasis::InstrumentHealthSetting => "INSTRUMENT_HEALTH_SETTING",
            ConsentBasis::CloudPerformanceDataOnly => "CLOUD_PERFORMANCE_DATA_ONLY",
            ConsentBasis::CloudRunMonitoring => "CLOUD_RUN_MONITORING",
            ConsentBasis::OperatorOverride => "OPERATOR_OVERRIDE",
        }
    }
}

impl std::fmt::Display for ConsentBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The decision for one run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    OptedIn { basis: ConsentBasis, reason: String },
    NotOptedIn(String),
}

impl Consent {
    /// Whether anything may be sent.
    pub fn allows_sending(&self) -> bool {
        matches!(self, Consent::OptedIn { .. })
    }

    /// The basis of an opt-in.
    pub fn basis(&self) -> Option<ConsentBasis> {
        match self {
            Consent::OptedIn { basis, .. } => Some(*basis),
            Consent::NotOptedIn(_) => None,
        }
    }
}

/// An element of RunParameters.xml that carries the performance-data opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentElement {
    /// Its tag name.
    pub name: &'static str,
    /// The parent it must have (`None`: anywhere).
    pub parent: Option<&'static str>,
    /// How the setting is named in decisions: the tag, or `parent/tag` when the tag alone is
    /// ambiguous.
    pub label: &'static str,
}

/// Every element read for consent, every occurrence of it (a repeated element is not resolved
/// by taking the first).
pub const CONSENT_ELEMENTS: &[ConsentElement] = &[
    // MiSeq (top level; shared/data/illumina-runs miseq-*; Illumina/interop
    // src/tests/interop/run/parameters_test.cpp ParseXML_MiSeq, true; bialimed/AnaCore
    // tests/test_illumina.py MiSeq, false) and HiSeq (under Setup/BaseSpaceSettings; interop
    // ParseXML_HiSeq, false; AnaCore HiSeq 2.2.38, true).
    ConsentElement {
        name: "SendInstrumentHealthToILMN",
        parent: None,
        label: "SendInstrumentHealthToILMN",
    },
    // NovaSeq 6000 (top level; fls-bioinformatics-core/auto_process_ngs
    // auto_process_ngs/mock.py, NovaSeq Control Software 1.7.5 layout, true; a public
    // NovaSeq Control Software 1.4.0 RunParameters.xml in a Go test, true).
    ConsentElement {
        name: "SendIlluminaHealthData",
        parent: None,
        label: "SendIlluminaHealthData",
    },
    // NextSeq 500/550 with NextSeq Control Software 1.x/2.x (shared/data/illumina-runs
    // nextseq-2016-04 and interop ParseXML_NextSeq500: IlluminaHealthOnly; AnaCore NextSeq
    // 1.3.0.23: UserAndIlluminaHealth).
    ConsentElement {
        name: "BaseSpaceRunMode",
        parent: None,
        label: "BaseSpaceRunMode",
    },
    // iSeq 100 (interop ParseXML_iSeq, iSeq Control Software 1.4.0:
    // BaseSpaceParameters/Mode = UserAndIlluminaHealth). `Mode` alone is too generic a tag.
    ConsentElement {
        name: "Mode",
        parent: Some("BaseSpaceParameters"),
        label: "BaseSpaceParameters/Mode",
    },
    // NextSeq 550 with NextSeq Control Software 4.x (AnaCore, NCS 4.0.1.41:
    // PerformanceDataOnly) and MiniSeq (auto_process_ngs mock.py, MiniSeq Control Software
    // 2.2.1: PerformanceDataRunMonitoringAndStorage). Only the top-level element: HiSeq's
    // Setup/RunMode (HighOutput, RapidRun) is the run type, not a consent setting.
    ConsentElement {
        name: "RunMode",
        parent: Some("RunParameters"),
        label: "RunMode",
    },
    // NextSeq 1000/2000 (interop ParseXML_NextSeq2k, NextSeq 1000/2000 Control Software
    // 1.1.0: RunMonitoringAndStorage).
    ConsentElement {
        name: "BsshMode",
        parent: None,
        label: "BsshMode",
    },
    // NovaSeq X Series (NationalGenomicsInfrastructure/TACA tests/analysis/test_analysis.py,
    // NovaSeqXSeries Control Software 1.2.0: InstrumentPerformance).
    ConsentElement {
        name: "CloudUploadMode",
        parent: None,
        label: "CloudUploadMode",
    },
];

/// What one setting says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Opted in, on this basis.
    Yes(ConsentBasis),
    /// An explicit "no".
    No,
    /// A consent element with a value this collector does not know.
    Unknown,
    /// Says nothing (an empty element, or an element that is not a consent setting).
    Silent,
}

fn boolean(v: &str) -> Verdict {
    match v {
        "true" | "yes" | "1" | "on" => Verdict::Yes(ConsentBasis::InstrumentHealthSetting),
        "false" | "no" | "0" | "off" => Verdict::No,
        _ => Verdict::Unknown,
    }
}

/// Values that switch a cloud mode off: explicit "no" whatever the element.
fn mode_off(v: &str) -> bool {
    matches!(
        v,
        "off" | "none" | "disabled" | "false" | "no" | "0" | "local" | "localonly"
    )
}

/// What `value` of the consent setting `label` says.
pub fn verdict(label: &str, value: &str) -> Verdict {
    use ConsentBasis::{CloudPerformanceDataOnly as PerfOnly, CloudRunMonitoring as Monitoring};
    let v = value.trim().to_ascii_lowercase();
    if v.is_empty() {
        return Verdict::Silent;
    }
    let mode = |known: &[(&str, ConsentBasis)]| {
        known
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&v))
            .map(|(_, b)| Verdict::Yes(*b))
            .unwrap_or(if mode_off(&v) {
                Verdict::No
            } else {
                Verdict::Unknown
            })
    };
    match label {
        "SendInstrumentHealthToILMN" | "SendIlluminaHealthData" => boolean(&v),
        // NextSeq 500/550 (NCS 1.x/2.x) and iSeq 100 share this enumeration.
        "BaseSpaceRunMode" | "BaseSpaceParameters/Mode" => mode(&[
            // nextseq-2016-04 (shared/data); interop ParseXML_NextSeq500.
            ("IlluminaHealthOnly", PerfOnly),
            // AnaCore NextSeq 1.3.0.23; interop ParseXML_iSeq.
            ("UserAndIlluminaHealth", Monitoring),
            // The same choice as NextSeq 550 software spells it in a real run
            // (miso-lims/runscanner test resources, run 170609_NB551051_0017_AHLFFJBGX2).
            ("UserHealthAndIlluminaHealth", Monitoring),
        ]),
        "RunMode" => mode(&[
            // AnaCore, NextSeq 550 NCS 4.0.1.41.
            ("PerformanceDataOnly", PerfOnly),
            // auto_process_ngs mock.py, MiniSeq Control Software 2.2.1.
            ("PerformanceDataRunMonitoringAndStorage", Monitoring),
        ]),
        "BsshMode" => mode(&[
            // Named by issue 9's independent test as a "performance data only" run that
            // must be sent; the same value as NCS 4.x RunMode.
            ("PerformanceDataOnly", PerfOnly),
            // interop ParseXML_NextSeq2k, NextSeq 1000/2000 Control Software 1.1.0.
            ("RunMonitoringAndStorage", Monitoring),
            // Run monitoring without storage: BaseSpace's run-monitoring-only mode (HiSeq
            // writes it as BaseSpaceSettings/RunMonitoringOnly, AnaCore HiSeq 2.2.38).
            ("RunMonitoringOnly", Monitoring),
        ]),
        "CloudUploadMode" => mode(&[
            // TACA tests, NovaSeqXSeries Control Software 1.2.0.
            ("InstrumentPerformance", PerfOnly),
            // A real NovaSeq X Plus run, NovaSeqXSeries Control Software 1.3.1
            // (miso-lims/runscanner test resources, run 20251210_LH00224_0271_B23FF7CLT4): the
            // value NextSeq 1000/2000 writes under BsshMode, with the same meaning.
            ("RunMonitoringAndStorage", Monitoring),
        ]),
        _ => Verdict::Silent,
    }
}

/// Decides consent from the (setting label, value) pairs of RunParameters.xml, every occurrence.
pub fn decide(settings: &[(String, String)], operator: Option<ConsentOverride>) -> Consent {
    match operator {
        Some(ConsentOverride::OptedIn) => {
            return Consent::OptedIn {
                basis: ConsentBasis::OperatorOverride,
                reason: "operator override".into(),
            }
        }
        Some(ConsentOverride::OptedOut) => return Consent::NotOptedIn("operator override".into()),
        None => {}
    }
    let verdicts: Vec<(&(String, String), Verdict)> =
        settings.iter().map(|s| (s, verdict(&s.0, &s.1))).collect();
    if let Some(((name, value), _)) = verdicts.iter().find(|(_, v)| *v == Verdict::No) {
        return Consent::NotOptedIn(format!("{name} is {value}"));
    }
    if let Some(((name, value), _)) = verdicts.iter().find(|(_, v)| *v == Verdict::Unknown) {
        return Consent::NotOptedIn(format!(
            "{name} has a value this collector does not know ({value})"
        ));
    }
    let yes: Vec<(&str, &str, ConsentBasis)> = verdicts
        .iter()
        .filter_map(|((n, v), verdict)| match verdict {
            Verdict::Yes(b) => Some((n.as_str(), v.as_str(), *b)),
            _ => None,
        })
        .collect();
    match yes.iter().map(|(_, _, b)| *b).min() {
        Some(basis) => Consent::OptedIn {
            basis,
            reason: yes
                .iter()
                .map(|(n, v, _)| format!("{n} is {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        },
        None => Consent::NotOptedIn("no performance-data setting in RunParameters".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_basis_label_is_in_the_boundary_catalogue() {
        for b in [
            ConsentBasis::InstrumentHealthSetting,
            ConsentBasis::CloudPerformanceDataOnly,
            ConsentBasis::CloudRunMonitoring,
            ConsentBasis::OperatorOverride,
        ] {
            assert_eq!(
                seqmon_privacy::catalogue::consent_basis(b.label()),
                Some(b.label()),
                "the privacy enforcer would turn {} into OTHER",
                b.label()
            );
        }
    }

    fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn basis(pairs: &[(&str, &str)]) -> Option<ConsentBasis> {
        decide(&s(pairs), None).basis()
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
        let forced = decide(&[], Some(ConsentOverride::OptedIn));
        assert_eq!(forced.basis(), Some(ConsentBasis::OperatorOverride));
        assert!(!decide(
            &s(&[("SendInstrumentHealthToILMN", "true")]),
            Some(ConsentOverride::OptedOut)
        )
        .allows_sending());
    }

    #[test]
    fn a_repeated_element_with_a_no_is_not_opted_in_whatever_the_order() {
        for pairs in [
            [
                ("SendInstrumentHealthToILMN", "true"),
                ("SendInstrumentHealthToILMN", "false"),
            ],
            [
                ("SendInstrumentHealthToILMN", "false"),
                ("SendInstrumentHealthToILMN", "true"),
            ],
            [
                ("CloudUploadMode", "InstrumentPerformance"),
                ("CloudUploadMode", "None"),
            ],
            [
                ("CloudUploadMode", "None"),
                ("CloudUploadMode", "InstrumentPerformance"),
            ],
            [
                ("BsshMode", "PerformanceDataOnly"),
                ("SendIlluminaHealthData", "false"),
            ],
        ] {
            let c = decide(&s(&pairs), None);
            assert!(!c.allows_sending(), "{pairs:?}: {c:?}");
        }
        // A repeated "yes" stays a yes.
        assert!(decide(
            &s(&[
                ("SendInstrumentHealthToILMN", "true"),
                ("SendInstrumentHealthToILMN", "True")
            ]),
            None
        )
        .allows_sending());
        // A "yes" next to a value nobody documented is not enough.
        assert!(!decide(
            &s(&[
                ("BsshMode", "RunMonitoringAndStorage"),
                ("BsshMode", "Maybe")
            ]),
            None
        )
        .allows_sending());
    }

    #[test]
    fn every_documented_performance_data_value_opts_in_with_its_basis() {
        use ConsentBasis::*;
        for (pairs, expected) in [
            (
                vec![("SendInstrumentHealthToILMN", "true")],
                InstrumentHealthSetting,
            ),
            (
                vec![("SendIlluminaHealthData", "true")],
                InstrumentHealthSetting,
            ),
            (
                vec![("BaseSpaceRunMode", "IlluminaHealthOnly")],
                CloudPerformanceDataOnly,
            ),
            (
                vec![("BaseSpaceRunMode", "UserAndIlluminaHealth")],
                CloudRunMonitoring,
            ),
            (
                vec![("BaseSpaceParameters/Mode", "UserAndIlluminaHealth")],
                CloudRunMonitoring,
            ),
            (
                vec![("BaseSpaceRunMode", "UserHealthAndIlluminaHealth")],
                CloudRunMonitoring,
            ),
            (
                vec![("CloudUploadMode", "RunMonitoringAndStorage")],
                CloudRunMonitoring,
            ),
            (
                vec![("RunMode", "PerformanceDataOnly")],
                CloudPerformanceDataOnly,
            ),
            (
                vec![("RunMode", "PerformanceDataRunMonitoringAndStorage")],
                CloudRunMonitoring,
            ),
            (
                vec![("BsshMode", "PerformanceDataOnly")],
                CloudPerformanceDataOnly,
            ),
            (
                vec![("BsshMode", "RunMonitoringAndStorage")],
                CloudRunMonitoring,
            ),
            (vec![("BsshMode", "RunMonitoringOnly")], CloudRunMonitoring),
            (
                vec![("CloudUploadMode", "InstrumentPerformance")],
                CloudPerformanceDataOnly,
            ),
        ] {
            assert_eq!(basis(&pairs), Some(expected), "{pairs:?}");
        }
        // Values are compared without regard to case or surrounding blanks.
        assert_eq!(
            basis(&[("CloudUploadMode", " instrumentperformance ")]),
            Some(CloudPerformanceDataOnly)
        );
        // The most direct basis is named when several settings say yes.
        assert_eq!(
            basis(&[
                ("BaseSpaceRunMode", "UserAndIlluminaHealth"),
                ("SendInstrumentHealthToILMN", "true")
            ]),
            Some(InstrumentHealthSetting)
        );
        for b in [
            InstrumentHealthSetting,
            CloudPerformanceDataOnly,
            CloudRunMonitoring,
            OperatorOverride,
        ] {
            let l = b.label();
            assert!(
                l.bytes().all(|c| c.is_ascii_uppercase() || c == b'_'),
                "{l}"
            );
        }
    }

    #[test]
    fn explicit_off_values_are_a_no_and_empty_elements_say_nothing() {
        for (name, value) in [
            ("CloudUploadMode", "None"),
            ("BsshMode", "Off"),
            ("RunMode", "Disabled"),
            ("BaseSpaceRunMode", "LocalOnly"),
            ("SendIlluminaHealthData", "false"),
        ] {
            assert_eq!(verdict(name, value), Verdict::No, "{name}={value}");
        }
        assert_eq!(verdict("CloudUploadMode", ""), Verdict::Silent);
        assert_eq!(verdict("ExperimentName", "true"), Verdict::Silent);
        assert_eq!(verdict("RunMode", "HighOutput"), Verdict::Unknown);
        assert!(!decide(&s(&[("CloudUploadMode", "")]), None).allows_sending());
    }
}
