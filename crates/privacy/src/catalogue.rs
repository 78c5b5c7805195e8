//! Closed catalogues of names that may cross the privacy boundary. Each function answers the
//! canonical spelling of a known name, matching case-insensitively and ignoring leading,
//! trailing and repeated whitespace; an unknown name is `None` (the enforcer turns it into the
//! symbol `OTHER` and counts it).
//!
//! Sources (see [`crate::grammar`] for the full citations): **[runs]** the real run folders in
//! `/work/shared/data/illumina-runs/`; **[interop]** `Illumina/interop`
//! `src/tests/interop/run/parameters_test.cpp`; **[fcinfo]** a public Go test holding a real
//! NovaSeq 6000 RunParameters.xml (library id 38961769888); **[taca]** `SciLifeLab/TACA`
//! `tests/analysis/test_analysis.py` (NovaSeq X Plus RunParameters.xml); **[viral-ngs]**
//! `broadinstitute/viral-ngs` `src/viral_ngs/core/illumina_utils.py`; **[parser]** a public
//! Python RunParameters parser (library id 4118985111) that checks NovaSeq X `Application`
//! for `control-software`; **[issue]** issue 9 of this project (real chemistry names reported by
//! the independent test); **[sim]** `services/simulator/src/lib.rs`; **[product]** Illumina
//! product / reagent kit names as sold, not yet seen in a real RunParameters.xml;
//! **[policy]** `services/privacy-enforcer/src/policy.rs` `ATTRIBUTE_ALLOWLIST`;
//! **[consent]** `services/collector/src/consent.rs` and `runfolder.rs` `CONSENT_ELEMENTS`;
//! **[runscanner]** `miso-lims/runscanner` `scanner/src/test/resources/illumina/` (real NovaSeq X
//! Plus and NextSeq 2000 run folders).

/// Whether `input` equals `canonical`, ignoring ASCII case and collapsing whitespace.
fn same(input: &str, canonical: &str) -> bool {
    let mut a = input.split_whitespace();
    let mut b = canonical.split_whitespace();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => {}
            _ => return false,
        }
    }
}

fn lookup(list: &[&'static str], input: &str) -> Option<&'static str> {
    if input.len() > 96 {
        return None;
    }
    list.iter().copied().find(|c| same(input, c))
}

/// Chemistry, recipe, workflow and reagent-kit names (`run_configuration.chemistry`; the
/// collector reads RunParameters `Chemistry`).
///
/// | entry | where it appears | source |
/// |---|---|---|
/// | `Default` | MiSeq `Chemistry` | [runs], [interop] |
/// | `Amplicon` | MiSeq `Chemistry` | [issue] |
/// | `NextSeq High` | NextSeq 500/550 `Chemistry` | [runs], [interop] |
/// | `NextSeq Mid` | NextSeq 500/550 `Chemistry` (mid-output kit) | [viral-ngs] (AFXX = "Mid-Output NextSeq") |
/// | `TruSeq SBS v3` | HiSeq chemistry | [issue] |
/// | `NovaSeqXp`, `NovaSeqStandard` | NovaSeq 6000 `WorkflowType` | [fcinfo] (`NovaSeqXp`); the standard workflow's spelling by analogy |
/// | `NovaSeq Standard`, `NovaSeq Xp` | NovaSeq 6000 workflow names | [product] |
/// | `SP`, `S1`, `S2`, `S4` | NovaSeq 6000 `FlowCellMode` | [fcinfo] (`S4`), [product] |
/// | `10B Sequencing` | NovaSeq X `RecipeName` | [taca], [runscanner] |
/// | `25B Sequencing` | NovaSeq X `RecipeName` | [runscanner] |
/// | `1.5B Sequencing` | NovaSeq X `RecipeName` (1.5B kit) | by analogy with the two above |
/// | `10B`, `10B 300c` | NovaSeq X consumable names | [taca] |
/// | `1.5B`, `25B` | NovaSeq X flow-cell kits | [product] |
/// | `P1`, `P2`, `P3`, `P4` | NextSeq 1000/2000 reagent kits (the collector takes it from `CartridgeMode`) | [product], [runscanner] (`P4`) |
/// | `iSeq 100 i1 Reagent v2` | iSeq 100 reagent kit | [product] |
/// | `MiniSeq High Output`, `MiniSeq Mid Output` | MiniSeq kits | [product] |
/// | `SBS v1.5 300 cycles` | simulator | [sim] |
pub fn chemistry(s: &str) -> Option<&'static str> {
    const LIST: &[&str] = &[
        "Default",
        "Amplicon",
        "NextSeq High",
        "NextSeq Mid",
        "TruSeq SBS v3",
        "NovaSeqXp",
        "NovaSeqStandard",
        "NovaSeq Standard",
        "NovaSeq Xp",
        "SP",
        "S1",
        "S2",
        "S4",
        "10B Sequencing",
        "25B Sequencing",
        "1.5B Sequencing",
        "10B",
        "10B 300c",
        "1.5B",
        "25B",
        "P1",
        "P2",
        "P3",
        "P4",
        "iSeq 100 i1 Reagent v2",
        "MiniSeq High Output",
        "MiniSeq Mid Output",
        "SBS v1.5 300 cycles",
    ];
    lookup(LIST, s)
}

/// Control-software application names (attribute `application_name`; RunParameters
/// `ApplicationName` or `Application`).
///
/// | entry | instrument | source |
/// |---|---|---|
/// | `MiSeq Control Software` | MiSeq | [runs], [interop] |
/// | `NextSeq Control Software` | NextSeq 500/550 | [runs], [interop] |
/// | `HiSeq Control Software` | HiSeq | [interop] |
/// | `iSeq Control Software` | iSeq 100 | [interop] |
/// | `NextSeq 1000/2000 Control Software` | NextSeq 1000/2000 | [interop] |
/// | `NovaSeq Control Software` | NovaSeq 6000 | [fcinfo] |
/// | `NovaSeqXSeries Control Software` | NovaSeq X | [taca] |
/// | `control-software` | NovaSeq X (older software) | [parser] |
/// | `MiniSeq Control Software` | MiniSeq | [product] |
pub fn application_name(s: &str) -> Option<&'static str> {
    const LIST: &[&str] = &[
        "MiSeq Control Software",
        "NextSeq Control Software",
        "HiSeq Control Software",
        "iSeq Control Software",
        "NextSeq 1000/2000 Control Software",
        "NovaSeq Control Software",
        "NovaSeqXSeries Control Software",
        "control-software",
        "MiniSeq Control Software",
    ];
    lookup(LIST, s)
}

/// Attribute keys allowed to cross ([policy] `ATTRIBUTE_ALLOWLIST`, plus `consent_basis`, which
/// says on what basis consent was taken). Any other key is dropped and counted, never named.
pub fn attribute_key(s: &str) -> Option<&'static str> {
    const LIST: &[&str] = &[
        "application_name",
        "application_version",
        "fpga_version",
        "recipe_version",
        "chemistry_version",
        "site_region",
        "collector_version",
        "consent_basis",
    ];
    // Keys are identifiers: exact, no whitespace folding beyond case.
    if s.len() > 32 {
        return None;
    }
    LIST.iter().copied().find(|k| k.eq_ignore_ascii_case(s))
}

/// How performance-data consent was taken (attribute `consent_basis`): the labels of the
/// collector's `ConsentBasis` (services/collector/src/consent.rs, where each setting and value
/// is listed with its source; a collector test checks every label is in this list).
///
/// | symbol | settings |
/// |---|---|
/// | `INSTRUMENT_HEALTH_SETTING` | `SendInstrumentHealthToILMN` (MiSeq, HiSeq) / `SendIlluminaHealthData` (NovaSeq 6000) = true |
/// | `CLOUD_PERFORMANCE_DATA_ONLY` | `BaseSpaceRunMode` = `IlluminaHealthOnly`, `RunMode` / `BsshMode` = `PerformanceDataOnly`, `CloudUploadMode` = `InstrumentPerformance` |
/// | `CLOUD_RUN_MONITORING` | run monitoring (with or without storage) in any of the cloud mode settings |
/// | `OPERATOR_OVERRIDE` | the operator opted in on the collector's command line |
pub fn consent_basis(s: &str) -> Option<&'static str> {
    const LIST: &[&str] = &[
        "INSTRUMENT_HEALTH_SETTING",
        "CLOUD_PERFORMANCE_DATA_ONLY",
        "CLOUD_RUN_MONITORING",
        "OPERATOR_OVERRIDE",
    ];
    lookup(LIST, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_names_match_with_canonical_spelling() {
        let real = [
            ("Default", "runs miseq runParameters.xml"),
            ("NextSeq High", "runs nextseq RunParameters.xml"),
            ("Amplicon", "issue 9"),
            ("TruSeq SBS v3", "issue 9"),
            ("NovaSeqXp", "fcinfo WorkflowType"),
            ("S4", "fcinfo FlowCellMode"),
            ("10B Sequencing", "taca RecipeName"),
            ("10B 300c", "taca ConsumableInfo Name"),
            ("SBS v1.5 300 cycles", "sim"),
        ];
        for (s, src) in real {
            assert_eq!(chemistry(s), Some(s), "{s} ({src})");
        }
        assert_eq!(chemistry("  nextseq   HIGH "), Some("NextSeq High"));
        assert_eq!(chemistry("truseq sbs V3"), Some("TruSeq SBS v3"));
        for s in [
            "MiSeq Control Software",
            "NextSeq Control Software",
            "HiSeq Control Software",
            "iSeq Control Software",
            "NextSeq 1000/2000 Control Software",
            "NovaSeq Control Software",
            "NovaSeqXSeries Control Software",
            "control-software",
        ] {
            assert_eq!(application_name(s), Some(s));
        }
        assert_eq!(
            application_name("miseq  control\tsoftware"),
            Some("MiSeq Control Software")
        );
    }

    #[test]
    fn attribute_keys_and_consent() {
        for k in [
            "application_name",
            "application_version",
            "fpga_version",
            "recipe_version",
            "chemistry_version",
            "site_region",
            "collector_version",
            "consent_basis",
        ] {
            assert_eq!(attribute_key(k), Some(k));
        }
        assert_eq!(attribute_key("Site_Region"), Some("site_region"));
        for k in [
            "operator_email",
            "experiment_name",
            "site region",
            "sample_id",
            "",
        ] {
            assert_eq!(attribute_key(k), None, "{k}");
        }
        assert_eq!(
            consent_basis("cloud_performance_data_only"),
            Some("CLOUD_PERFORMANCE_DATA_ONLY")
        );
        assert_eq!(consent_basis("yes"), None);
    }

    #[test]
    fn pii_and_glued_names_are_unknown() {
        let names = ["Default", "NextSeq High", "MiSeq Control Software", "10B"];
        let pii = [
            "Smith",
            "jane.doe",
            "Sample_1",
            "NA12878",
            "MRN12345678",
            "patient_7",
            "1984-03-12",
            "555-867-5309",
            "rajesh pool 2",
            "C:\\Users\\jane",
        ];
        let all: [fn(&str) -> Option<&'static str>; 4] =
            [chemistry, application_name, attribute_key, consent_basis];
        for p in pii {
            assert!(all.iter().all(|f| f(p).is_none()), "{p}");
            for n in names {
                for sep in ["_", "-", ".", ":", "/", " "] {
                    for g in [format!("{n}{sep}{p}"), format!("{p}{sep}{n}")] {
                        assert!(all.iter().all(|f| f(&g).is_none()), "{g}");
                    }
                }
            }
        }
    }
}
