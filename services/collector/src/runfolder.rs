//! RunInfo.xml and RunParameters.xml (MiSeq `runParameters.xml`, NextSeq/NovaSeq
//! `RunParameters.xml`), read by allowlist: only the elements named in this file are ever looked
//! at. Experiment names, user names, computer names, folder paths, sample sheets and library ids
//! are never read, so they cannot leave.

use std::path::{Path, PathBuf};

use crate::consent::CONSENT_ELEMENTS;
use crate::files::{read_text_bounded, FileError, Limits};

/// Why a run folder could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunFolderError {
    #[error("{file}: cannot read: {message}")]
    Io { file: PathBuf, message: String },
    /// Not a regular file, or over the size cap: refused without reading it whole.
    #[error(transparent)]
    Refused(FileError),
    #[error("{file}: not well-formed XML: {message}")]
    Xml { file: PathBuf, message: String },
    #[error("{file}: required element {element} is missing")]
    Missing {
        file: PathBuf,
        element: &'static str,
    },
    #[error("{file}: element {element} has an invalid value")]
    Invalid {
        file: PathBuf,
        element: &'static str,
    },
}

/// Most cycles a run may have in all its reads: InterOp files number cycles with 16 bits.
pub const MAX_CYCLES: u16 = u16::MAX;

/// One read of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadInfo {
    pub number: u32,
    pub cycles: u32,
    pub indexed: bool,
}

/// What RunInfo.xml says.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: String,
    pub instrument: String,
    pub flowcell: String,
    /// Run date as YYMMDD or an ISO date, as written.
    pub date: String,
    pub reads: Vec<ReadInfo>,
    pub lane_count: u32,
    /// Tiles imaged per lane (surfaces × swaths × tiles × sections), when the layout says.
    pub tiles_per_lane: Option<u32>,
    /// `ImageChannels/Name`, in the order the InterOp files store the channels (RunInfo v4 and
    /// later; empty for older runs).
    pub image_channels: Vec<String>,
}

impl RunInfo {
    /// The channel first-cycle intensity is reported for, as Illumina's interop chooses it
    /// (`logic/utils/channel.h`, `expected2actual_map(...)[0]` in its summary): the channel
    /// first in the expected order, which is the names sorted, except that red comes before
    /// green; index 0 for runs that do not name their channels (their expected order is their
    /// stored one: A,C,G,T or red,green).
    pub fn intensity_channel(&self) -> usize {
        let names: Vec<String> = self
            .image_channels
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let mut expected = names.clone();
        expected.sort();
        if expected == ["green", "red"] {
            expected.swap(0, 1);
        }
        expected
            .first()
            .and_then(|first| names.iter().position(|n| n == first))
            .unwrap_or(0)
    }

    /// Where the A, C, G and T channels are stored in a four-channel run's records: as its
    /// `ImageChannels` name them when they are those four in some order, else in that order.
    pub fn base_channels(&self) -> [usize; 4] {
        let names: Vec<String> = self
            .image_channels
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let mut at = [0, 1, 2, 3];
        for (slot, base) in ["a", "c", "g", "t"].iter().enumerate() {
            match names.iter().position(|n| n == base) {
                Some(i) if names.len() == 4 => at[slot] = i,
                _ => return [0, 1, 2, 3],
            }
        }
        at
    }
}

/// The allowlisted parts of RunParameters.xml.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunParameters {
    /// `InstrumentType` (NextSeq 1000/2000, NovaSeq X), a model name.
    pub instrument_type: Option<String>,
    pub application_name: Option<String>,
    pub application_version: Option<String>,
    pub rta_version: Option<String>,
    pub firmware_version: Option<String>,
    pub chemistry: Option<String>,
    pub reagent_kit: Option<String>,
    pub reagent_kit_expiry: Option<String>,
    pub flowcell_lot: Option<String>,
    pub flowcell_expiry: Option<String>,
    pub buffer: Option<String>,
    pub buffer_expiry: Option<String>,
    /// Performance-data consent settings, as (setting label, value), every occurrence in
    /// document order (see [`crate::consent::CONSENT_ELEMENTS`]).
    pub consent_settings: Vec<(String, String)>,
}

fn load(file: &Path, limits: &Limits) -> Result<String, RunFolderError> {
    read_text_bounded(file, limits.xml_max_bytes).map_err(|e| match e {
        FileError::Io { file, message } => RunFolderError::Io { file, message },
        refused => RunFolderError::Refused(refused),
    })
}

fn parse<'a>(file: &Path, text: &'a str) -> Result<roxmltree::Document<'a>, RunFolderError> {
    roxmltree::Document::parse(text).map_err(|e| RunFolderError::Xml {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

/// Text of the first element named `name` whose parent is named `parent` (any parent if `None`).
fn text(doc: &roxmltree::Document<'_>, parent: Option<&str>, name: &str) -> Option<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name(name))
        .find(|n| {
            parent.is_none_or(|p| {
                n.parent_element()
                    .is_some_and(|pe| pe.tag_name().name().eq_ignore_ascii_case(p))
            })
        })
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Reads `<folder>/RunInfo.xml` with the default size caps.
pub fn run_info(folder: &Path) -> Result<RunInfo, RunFolderError> {
    run_info_with(folder, &Limits::default())
}

/// Reads `<folder>/RunInfo.xml`.
pub fn run_info_with(folder: &Path, limits: &Limits) -> Result<RunInfo, RunFolderError> {
    let file = folder.join("RunInfo.xml");
    let body = load(&file, limits)?;
    run_info_from_str(&file, &body)
}

/// Parses the text of a RunInfo.xml already read; `file` names it in errors.
pub fn run_info_from_str(file: &Path, body: &str) -> Result<RunInfo, RunFolderError> {
    let file = file.to_path_buf();
    let doc = parse(&file, body)?;
    let run = doc
        .descendants()
        .find(|n| n.has_tag_name("Run"))
        .ok_or(RunFolderError::Missing {
            file: file.clone(),
            element: "Run",
        })?;
    let run_id = run
        .attribute("Id")
        .ok_or(RunFolderError::Missing {
            file: file.clone(),
            element: "Run/@Id",
        })?
        .to_string();
    let instrument = text(&doc, Some("Run"), "Instrument").ok_or(RunFolderError::Missing {
        file: file.clone(),
        element: "Instrument",
    })?;
    let flowcell = text(&doc, Some("Run"), "Flowcell").ok_or(RunFolderError::Missing {
        file: file.clone(),
        element: "Flowcell",
    })?;
    let date = text(&doc, Some("Run"), "Date").unwrap_or_default();
    let mut reads = Vec::new();
    for r in doc.descendants().filter(|n| {
        n.has_tag_name("Read") && n.parent_element().is_some_and(|p| p.has_tag_name("Reads"))
    }) {
        let num = |a: &str| r.attribute(a).and_then(|v| v.parse::<u32>().ok());
        let (Some(number), Some(cycles)) = (num("Number"), num("NumCycles")) else {
            return Err(RunFolderError::Invalid {
                file,
                element: "Reads/Read",
            });
        };
        reads.push(ReadInfo {
            number,
            cycles,
            indexed: r.attribute("IsIndexedRead") == Some("Y"),
        });
    }
    if reads.is_empty() {
        return Err(RunFolderError::Missing {
            file,
            element: "Reads/Read",
        });
    }
    // InterOp numbers cycles with 16 bits, so no run has more (real ones have a few hundred);
    // more would overflow, or loop for minutes, in everything that walks the run's cycles.
    if reads.iter().map(|r| u64::from(r.cycles)).sum::<u64>() > u64::from(MAX_CYCLES) {
        return Err(RunFolderError::Invalid {
            file,
            element: "Reads/Read",
        });
    }
    reads.sort_by_key(|r| r.number);
    let layout = doc.descendants().find(|n| n.has_tag_name("FlowcellLayout"));
    let attr = |name: &str| {
        layout
            .and_then(|n| n.attribute(name))
            .and_then(|v| v.parse::<u32>().ok())
    };
    let tiles_per_lane = match (attr("SurfaceCount"), attr("SwathCount"), attr("TileCount")) {
        (Some(a), Some(b), Some(c)) => Some(
            a.checked_mul(b)
                .and_then(|t| t.checked_mul(c))
                .and_then(|t| t.checked_mul(attr("SectionPerLane").unwrap_or(1)))
                .ok_or(RunFolderError::Invalid {
                    file: file.clone(),
                    element: "FlowcellLayout",
                })?,
        ),
        _ => None,
    };
    let lane_count = doc
        .descendants()
        .find(|n| n.has_tag_name("FlowcellLayout"))
        .and_then(|n| n.attribute("LaneCount"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let image_channels = doc
        .descendants()
        .filter(|n| {
            n.has_tag_name("Name")
                && n.parent_element()
                    .is_some_and(|p| p.has_tag_name("ImageChannels"))
        })
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    Ok(RunInfo {
        run_id,
        instrument,
        flowcell,
        date,
        reads,
        lane_count,
        tiles_per_lane,
        image_channels,
    })
}

/// Reads `<folder>/RunParameters.xml` or `<folder>/runParameters.xml` with the default caps.
pub fn run_parameters(folder: &Path) -> Result<RunParameters, RunFolderError> {
    run_parameters_with(folder, &Limits::default())
}

/// Whether RunParameters describe a NovaSeq X: its `InstrumentType` (NovaSeqXPlus, "NovaSeq X
/// Plus", any spacing) or its control software ("NovaSeqXSeries Control Software"; the first
/// releases' "control-software" says nothing without the type).
pub fn is_novaseq_x(application: Option<&str>, instrument_type: Option<&str>) -> bool {
    let squeezed = |s: Option<&str>| s.unwrap_or("").to_ascii_lowercase().replace(' ', "");
    squeezed(instrument_type).starts_with("novaseqx") || squeezed(application).contains("novaseqx")
}

/// Reads `<folder>/RunParameters.xml` or `<folder>/runParameters.xml`.
pub fn run_parameters_with(
    folder: &Path,
    limits: &Limits,
) -> Result<RunParameters, RunFolderError> {
    let file = ["RunParameters.xml", "runParameters.xml"]
        .iter()
        .map(|n| folder.join(n))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| folder.join("RunParameters.xml"));
    let body = load(&file, limits)?;
    run_parameters_from_str(&file, &body)
}

/// Parses the text of a RunParameters.xml already read; `file` names it in errors.
pub fn run_parameters_from_str(file: &Path, body: &str) -> Result<RunParameters, RunFolderError> {
    let doc = parse(file, body)?;
    let any = |names: &[(Option<&str>, &str)]| names.iter().find_map(|(p, n)| text(&doc, *p, n));
    // Every occurrence of every consent element, in document order: a repeated element is
    // decided on all its values, never on the first alone.
    let consent_settings = doc
        .descendants()
        .filter(|n| n.is_element())
        .filter_map(|n| {
            let e = CONSENT_ELEMENTS.iter().find(|e| {
                n.tag_name().name() == e.name
                    && e.parent.is_none_or(|p| {
                        n.parent_element()
                            .is_some_and(|pe| pe.tag_name().name() == p)
                    })
            })?;
            Some((
                e.label.to_string(),
                n.text().map(str::trim).unwrap_or("").to_string(),
            ))
        })
        .collect();
    // NovaSeq X and NextSeq 1000/2000 list their consumables: ConsumableInfo/ConsumableInfo
    // with Type (FlowCell, Reagent, Buffer, SampleTube, Lyo, ...) and LotNumber, ExpirationDate
    // among others; only these two fields of these three types are read.
    let consumable = |kind: &str, field: &str| {
        doc.descendants()
            .filter(|n| {
                n.has_tag_name("ConsumableInfo")
                    && n.parent_element()
                        .is_some_and(|p| p.has_tag_name("ConsumableInfo"))
            })
            .find(|n| {
                n.children()
                    .any(|c| c.has_tag_name("Type") && c.text().map(str::trim) == Some(kind))
            })
            .and_then(|n| n.children().find(|c| c.has_tag_name(field)))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let or_consumable =
        |v: Option<String>, kind: &str, field: &str| v.or_else(|| consumable(kind, field));
    let is_novaseq_x = is_novaseq_x(
        any(&[(None, "Application"), (None, "ApplicationName")]).as_deref(),
        text(&doc, None, "InstrumentType").as_deref(),
    );
    Ok(RunParameters {
        instrument_type: any(&[(None, "InstrumentType")]),
        application_name: any(&[
            (Some("Setup"), "ApplicationName"),
            (None, "ApplicationName"),
            // NovaSeq 6000: "NovaSeq Control Software".
            (None, "Application"),
        ]),
        application_version: any(&[
            (Some("Setup"), "ApplicationVersion"),
            (None, "ApplicationVersion"),
            (None, "MCSVersion"),
        ]),
        rta_version: any(&[(None, "RTAVersion"), (None, "RtaVersion")]),
        firmware_version: any(&[
            (None, "FPGAVersion"),
            (None, "SystemSuiteVersion"),
            (None, "FirmwareVersion"),
        ]),
        chemistry: any(&[(None, "Chemistry")])
            // NovaSeq X: the recipe names the flow-cell kit ("10B Sequencing").
            .or_else(|| {
                is_novaseq_x
                    .then(|| text(&doc, None, "RecipeName"))
                    .flatten()
            })
            // NovaSeq 6000: the flow-cell mode is the kit (SP, S1, S2, S4).
            .or_else(|| text(&doc, Some("RfidsInfo"), "FlowCellMode"))
            // NextSeq 1000/2000: the reagent cartridge names its kit (P1 to P4, XLEAP-SBS too).
            .or_else(|| {
                text(&doc, None, "CartridgeMode").and_then(|m| {
                    m.split_whitespace()
                        .map(str::to_ascii_uppercase)
                        .find(|w| matches!(w.as_str(), "P1" | "P2" | "P3" | "P4"))
                })
            }),
        reagent_kit: or_consumable(
            any(&[
                (Some("ReagentKitRFIDTag"), "LotNumber"),
                (Some("ReagentKitRfidTag"), "LotNumber"),
                (None, "ReagentKitBarcode"),
                (None, "ReagentKitSerial"),
                (Some("ReagentKitRFIDTag"), "SerialNumber"),
                (Some("ReagentKitRfidTag"), "SerialNumber"),
                // NovaSeq 6000 (RfidsInfo): the SBS cartridge is the reagent kit.
                (Some("RfidsInfo"), "SbsLotNumber"),
                // NextSeq 1000/2000: the reagent cartridge.
                (None, "CartridgeLotNumber"),
            ]),
            "Reagent",
            "LotNumber",
        ),
        reagent_kit_expiry: or_consumable(
            any(&[
                (Some("ReagentKitRFIDTag"), "ExpirationDate"),
                (Some("ReagentKitRfidTag"), "ExpirationDate"),
                (Some("RfidsInfo"), "SbsExpirationdate"),
                (None, "CartridgeExpirationDate"),
            ]),
            "Reagent",
            "ExpirationDate",
        ),
        flowcell_lot: or_consumable(
            any(&[
                (Some("FlowcellRFIDTag"), "LotNumber"),
                (Some("FlowCellRfidTag"), "LotNumber"),
                (Some("FlowcellRFIDTag"), "PartNumber"),
                (Some("FlowCellRfidTag"), "PartNumber"),
                (Some("RfidsInfo"), "FlowCellLotNumber"),
                // iSeq 100.
                (Some("FlowcellEEPROMTag"), "LotNumber"),
                // NextSeq 1000/2000 (flat, under the root).
                (Some("RunParameters"), "FlowCellLotNumber"),
            ]),
            "FlowCell",
            "LotNumber",
        ),
        flowcell_expiry: or_consumable(
            any(&[
                (Some("FlowcellRFIDTag"), "ExpirationDate"),
                (Some("FlowCellRfidTag"), "ExpirationDate"),
                (Some("RfidsInfo"), "FlowCellExpirationdate"),
                (Some("FlowcellEEPROMTag"), "ExpirationDate"),
                (Some("RunParameters"), "FlowCellExpirationDate"),
            ]),
            "FlowCell",
            "ExpirationDate",
        ),
        buffer: or_consumable(
            any(&[
                (Some("PR2BottleRFIDTag"), "LotNumber"),
                (Some("PR2BottleRfidTag"), "LotNumber"),
                (None, "PR2BottleBarcode"),
                (None, "PR2BottleSerial"),
                (Some("PR2BottleRFIDTag"), "SerialNumber"),
                (Some("PR2BottleRfidTag"), "SerialNumber"),
                (Some("RfidsInfo"), "BufferLotNumber"),
            ]),
            "Buffer",
            "LotNumber",
        ),
        buffer_expiry: or_consumable(
            any(&[
                (Some("PR2BottleRFIDTag"), "ExpirationDate"),
                (Some("PR2BottleRfidTag"), "ExpirationDate"),
                (Some("RfidsInfo"), "BufferExpirationdate"),
            ]),
            "Buffer",
            "ExpirationDate",
        ),
        consent_settings,
    })
}

/// Days since 1970-01-01 of an ISO date (`2013-12-14T00:00:00` or `2013-12-14`), or of the
/// US date NovaSeq 6000 writes in RfidsInfo (`10/22/2020 00:00:00`, month first); `None` for
/// the .NET "no date" value `0001-01-01` or anything unparseable.
pub fn iso_date_days(s: &str) -> Option<i32> {
    let d = s.get(..10)?;
    let (y, m, day): (i64, i64, i64) = if d.as_bytes().get(2) == Some(&b'/') {
        (
            d.get(6..10)?.parse().ok()?,
            d.get(..2)?.parse().ok()?,
            d.get(3..5)?.parse().ok()?,
        )
    } else {
        (
            d.get(..4)?.parse().ok()?,
            d.get(5..7)?.parse().ok()?,
            d.get(8..10)?.parse().ok()?,
        )
    };
    if y < 1900 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    i32::try_from(seqmon_model::civil::days_from_civil(y, m, day)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs() -> PathBuf {
        crate::sample_runs_dir()
    }

    #[test]
    fn reads_miseq_and_nextseq_variants() {
        let m = run_info(&runs().join("miseq-2013-04-high-pf")).unwrap();
        assert_eq!(
            (m.instrument.as_str(), m.lane_count, m.reads.len()),
            ("M00612", 1, 3)
        );
        assert_eq!(m.reads.iter().map(|r| r.cycles).sum::<u32>(), 308);
        let p = run_parameters(&runs().join("miseq-2013-04-high-pf")).unwrap();
        assert_eq!(p.application_version.as_deref(), Some("2.0.5"));
        assert_eq!(p.firmware_version.as_deref(), Some("9.5.12"));
        assert_eq!(p.reagent_kit.as_deref(), Some("MS2012501-300V2"));
        assert_eq!(
            p.consent_settings,
            [("SendInstrumentHealthToILMN".to_string(), "true".to_string())]
        );
        let n = run_info(&runs().join("nextseq-2016-04")).unwrap();
        assert_eq!(
            (n.instrument.as_str(), n.lane_count, n.tiles_per_lane),
            ("NS500318", 4, Some(216))
        );
        assert_eq!(m.tiles_per_lane, Some(28));
        let p = run_parameters(&runs().join("nextseq-2016-04")).unwrap();
        assert_eq!(
            p.application_name.as_deref(),
            Some("NextSeq Control Software")
        );
        assert_eq!(p.reagent_kit.as_deref(), Some("NS2263047-REAGT"));
        assert_eq!(
            p.consent_settings,
            [(
                "BaseSpaceRunMode".to_string(),
                "IlluminaHealthOnly".to_string()
            )]
        );
        assert_eq!(
            run_parameters(&runs().join("miseq-2014-02-single-read"))
                .unwrap()
                .consent_settings
                .len(),
            1
        );
    }

    /// Reproduced with the runinfo fuzz target (crates/fuzz): a layout whose tile count
    /// overflows u32 panicked (debug) or wrapped (release); a read of 4294967295 cycles made
    /// everything that walks the cycles loop for minutes, then overflow. Both are now an
    /// invalid RunInfo.xml.
    #[test]
    fn absurd_layouts_and_cycle_counts_are_invalid_not_a_panic() {
        let run = |reads: &str, layout: &str| {
            run_info_from_str(
                Path::new("RunInfo.xml"),
                &format!(
                    r#"<RunInfo><Run Id="r"><Flowcell>F</Flowcell><Instrument>M1</Instrument>
                    <Reads>{reads}</Reads><FlowcellLayout LaneCount="1" {layout}/></Run></RunInfo>"#
                ),
            )
        };
        let read = |n: u32, cycles: u32| format!(r#"<Read Number="{n}" NumCycles="{cycles}"/>"#);
        let big = r#"SurfaceCount="65536" SwathCount="65536" TileCount="1""#;
        assert_eq!(
            run(&read(1, 151), big).unwrap_err(),
            RunFolderError::Invalid {
                file: "RunInfo.xml".into(),
                element: "FlowcellLayout"
            }
        );
        let ok = r#"SurfaceCount="2" SwathCount="3" TileCount="12" SectionPerLane="3""#;
        assert_eq!(run(&read(1, 151), ok).unwrap().tiles_per_lane, Some(216));
        for reads in [
            read(1, u32::MAX),
            read(1, 65535) + &read(2, 1),
            read(1, u32::MAX) + &read(2, u32::MAX),
        ] {
            assert_eq!(
                run(&reads, ok).unwrap_err(),
                RunFolderError::Invalid {
                    file: "RunInfo.xml".into(),
                    element: "Reads/Read"
                },
                "{reads}"
            );
        }
        let most = run(&(read(1, 65000) + &read(2, 535)), ok).unwrap();
        let keys = vec![(1, 1, 1)];
        let per_cycle = [crate::collect::CycleKeys {
            file: Path::new("InterOp/QMetricsOut.bin"),
            span: crate::collect::CycleSpan::AllCycles,
            keys,
        }];
        assert_eq!(
            crate::collect::coverage_warnings(&most, &per_cycle, None).len(),
            1,
            "65535 cycles are walked, not overflowed"
        );
    }

    #[test]
    fn dates_and_errors() {
        assert_eq!(iso_date_days("1970-01-02T00:00:00"), Some(1));
        assert_eq!(iso_date_days("2013-12-14T00:00:00"), Some(16053));
        assert_eq!(iso_date_days("0001-01-01T00:00:00"), None);
        assert_eq!(iso_date_days("12/14/2013 00:00:00"), Some(16053));
        assert_eq!(iso_date_days("14/12/2013 00:00:00"), None);
        assert_eq!(iso_date_days("1/2/2013"), None);
        let e = run_info(Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("RunInfo.xml"));
    }

    #[test]
    fn the_intensity_channel_is_the_one_interop_reports() {
        let info = |names: &[&str]| {
            let xml = format!(
                "<RunInfo><Run Id=\"200101_X_1_F\"><Instrument>X</Instrument><Flowcell>F</Flowcell>\
                 <Reads><Read Number=\"1\" NumCycles=\"10\" IsIndexedRead=\"N\"/></Reads>\
                 <ImageChannels>{}</ImageChannels></Run></RunInfo>",
                names
                    .iter()
                    .map(|n| format!("<Name>{n}</Name>"))
                    .collect::<String>()
            );
            run_info_from_str(Path::new("RunInfo.xml"), &xml).unwrap()
        };
        // NextSeq 1000/2000 names green then blue; interop reports blue (checked on a real run).
        assert_eq!(info(&["green", "blue"]).intensity_channel(), 1);
        // Red before green, whatever the stored order.
        assert_eq!(info(&["Red", "Green"]).intensity_channel(), 0);
        assert_eq!(info(&["green", "red"]).intensity_channel(), 1);
        assert_eq!(info(&["T", "G", "C", "A"]).intensity_channel(), 3);
        // Runs that do not name their channels keep the stored order.
        assert_eq!(info(&[]).intensity_channel(), 0);
        // Four-channel runs: each base where its name says, else the stored A, C, G, T order.
        assert_eq!(info(&["T", "G", "C", "A"]).base_channels(), [3, 2, 1, 0]);
        assert_eq!(info(&["A", "C", "G", "T"]).base_channels(), [0, 1, 2, 3]);
        assert_eq!(info(&[]).base_channels(), [0, 1, 2, 3]);
        assert_eq!(info(&["red", "green"]).base_channels(), [0, 1, 2, 3]);
    }

    #[test]
    fn consumables_and_kits_of_the_newer_instruments_are_read() {
        let p = |xml: &str| run_parameters_from_str(Path::new("RunParameters.xml"), xml).unwrap();
        // NextSeq 1000/2000: flat elements under the root, the kit in CartridgeMode.
        let n2k = p(
            "<RunParameters><InstrumentType>NextSeq 2000</InstrumentType>\
             <FlowCellLotNumber>20815851</FlowCellLotNumber>\
             <FlowCellExpirationDate>2025-02-06</FlowCellExpirationDate>\
             <CartridgeLotNumber>20828764</CartridgeLotNumber>\
             <CartridgeExpirationDate>2025-01-01</CartridgeExpirationDate>\
             <CartridgeMode>NextSeq 2000 P4 Reagent Cartridge (338 Cycles)</CartridgeMode>\
             <RecipeName>XO-XLEAP-Seq</RecipeName></RunParameters>",
        );
        assert_eq!(n2k.instrument_type.as_deref(), Some("NextSeq 2000"));
        assert_eq!(n2k.flowcell_lot.as_deref(), Some("20815851"));
        assert_eq!(n2k.reagent_kit.as_deref(), Some("20828764"));
        assert_eq!(n2k.reagent_kit_expiry.as_deref(), Some("2025-01-01"));
        assert_eq!(n2k.chemistry.as_deref(), Some("P4"));
        // iSeq 100: the flow cell's EEPROM tag; no chemistry named.
        let iseq = p(
            "<RunParameters><FlowcellEEPROMTag><SerialNumber>BPG80712-1010</SerialNumber>\
             <LotNumber>20382760</LotNumber><ExpirationDate>2020-07-14T00:00:00</ExpirationDate>\
             </FlowcellEEPROMTag><RecipeName>2Read1Index</RecipeName></RunParameters>",
        );
        assert_eq!(iseq.flowcell_lot.as_deref(), Some("20382760"));
        assert_eq!(iseq.chemistry, None);
        // NovaSeq X: the recipe names the kit; NovaSeq 6000: the flow-cell mode.
        let nx = p(
            "<RunParameters><InstrumentType>NovaSeqXPlus</InstrumentType>\
             <RecipeName>25B Sequencing</RecipeName></RunParameters>",
        );
        assert_eq!(nx.chemistry.as_deref(), Some("25B Sequencing"));
        for head in [
            "<InstrumentType>NovaSeq X Plus</InstrumentType>",
            "<Application>NovaSeqXSeries Control Software</Application>",
        ] {
            let nx = p(&format!(
                "<RunParameters>{head}<RecipeName>10B Sequencing</RecipeName></RunParameters>"
            ));
            assert_eq!(nx.chemistry.as_deref(), Some("10B Sequencing"), "{head}");
        }
        // The kit token in any case.
        let n1k = p(
            "<RunParameters><CartridgeMode>NextSeq 1000 p2 Reagent Cartridge</CartridgeMode>\
             </RunParameters>",
        );
        assert_eq!(n1k.chemistry.as_deref(), Some("P2"));
        let n6 = p(
            "<RunParameters><RfidsInfo><FlowCellMode>S1</FlowCellMode></RfidsInfo>\
             <RecipeName>x</RecipeName></RunParameters>",
        );
        assert_eq!(n6.chemistry.as_deref(), Some("S1"));
    }
}
