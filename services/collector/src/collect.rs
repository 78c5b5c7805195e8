//! A run folder → raw telemetry records of the four allowed categories: instrument configuration,
//! run configuration, run performance per lane and cycle, and instrument performance (focus) per
//! cycle. Only a run whose instrument opted in is collected. Unreadable metric files are reported
//! as typed errors and the rest of the run is still collected; files used but not whole (a
//! partial last record, a header only, cycles or tiles missing against the run) are reported as
//! typed warnings naming the file, so partial figures are never silent. A per-cycle metric file
//! the run lacks at run level is read from its copies in the per-cycle folders
//! (`InterOp/C<cycle>.1/`, RTA 3), each holding its own cycle only; [`Collected::files`] says
//! of every file whether it was read, skipped on purpose (why) or refused (why).

use std::collections::BTreeMap;
use std::path::Path;

use seqmon_model::{
    InstrumentConfiguration, InstrumentModel, RunConfiguration, RunPerformance, SensorReadings,
    Telemetry, TelemetryKind, NOT_REPORTED,
};

use crate::consent::{decide, Consent, ConsentOverride};
use crate::files::Limits;
use crate::interop::{self, InteropError, InteropWarning};
use crate::runfolder::{
    iso_date_days, run_info_with, run_parameters_with, RunFolderError, RunInfo, RunParameters,
};

/// Version of this collector, sent as an attribute.
pub const COLLECTOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What collecting one run folder gave.
#[derive(Debug)]
pub struct Collected {
    /// The consent decision.
    pub consent: Consent,
    /// Records to send, in event-time order (empty when not opted in).
    pub records: Vec<Telemetry>,
    /// When each record may be sent by a live watcher, aligned with `records`.
    pub release: Vec<Release>,
    /// Highest cycle complete (all tiles, all lanes) in every per-cycle metric file present.
    pub frontier: u16,
    /// Metric files that could not be used, with why.
    pub file_errors: Vec<InteropError>,
    /// Metric files that were used but not whole: what was skipped or is missing.
    pub warnings: Vec<InteropWarning>,
    /// Every file in InterOp/ (and its per-cycle folders), sorted: read, skipped on purpose
    /// (why), or refused (why).
    pub files: Vec<FileStatus>,
}

/// What became of one file of the run's InterOp folder.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStatus {
    pub file: std::path::PathBuf,
    pub outcome: FileOutcome,
}

/// Read, skipped on purpose, or refused.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    /// Read whole or in part (its warnings say what was missing).
    Read,
    /// Not read, on purpose: why.
    Skipped(&'static str),
    /// Could not be used: why (the typed error's text).
    Refused(String),
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            FileOutcome::Read => write!(f, "{}: read", self.file.display()),
            FileOutcome::Skipped(why) => write!(f, "{}: skipped: {why}", self.file.display()),
            FileOutcome::Refused(why) => write!(f, "{}: refused: {why}", self.file.display()),
        }
    }
}

/// The InterOp files this collector reads (each with the versions its reader names).
pub const READ_FILES: &[&str] = &[
    "TileMetricsOut.bin",
    "QMetricsOut.bin",
    "ErrorMetricsOut.bin",
    "ExtractionMetricsOut.bin",
    "EmpiricalPhasingMetricsOut.bin",
    "CorrectedIntMetricsOut.bin",
    "ImageMetricsOut.bin",
    "IndexMetricsOut.bin",
    "ControlMetricsOut.bin",
    "ExtendedTileMetricsOut.bin",
];

/// InterOp files left unread on purpose, and why (also in the README).
pub const SKIPPED_FILES: &[(&str, &str)] = &[
    (
        "QMetricsByLaneOut.bin",
        "lane totals of the Q-score histograms in QMetricsOut.bin, which is read",
    ),
    (
        "QMetrics2030Out.bin",
        "counts of Q>=20 and Q>=30 already in the histograms of QMetricsOut.bin, which is read",
    ),
    (
        "PFGridMetricsOut.bin",
        "sub-tile grid of passing-filter clusters, image-analysis detail (tile figures come from TileMetricsOut.bin)",
    ),
    (
        "FWHMGridMetricsOut.bin",
        "sub-tile grid of focus, image-analysis detail (tile focus comes from ExtractionMetricsOut.bin)",
    ),
    (
        "OpticalModelMetricsOut.bin",
        "optical-model parameters of the instrument's image analysis, not documented by Illumina's interop library",
    ),
    (
        "RegistrationMetricsOut.bin",
        "image registration offsets, image-analysis detail not read by Illumina's interop library",
    ),
    (
        "BasecallingMetricsOut.bin",
        "base-caller internals, not read by Illumina's interop library",
    ),
    (
        "EventMetricsOut.bin",
        "instrument software timing events, not read by Illumina's interop library",
    ),
    (
        "QGridMetricsOut.bin",
        "sub-tile grid of quality, image-analysis detail",
    ),
    (
        "SummaryRunMetricsOut.bin",
        "NovaSeq X run totals the tile and cycle files already give",
    ),
    (
        "ClusterStatsMetricsOut.bin",
        "NovaSeq X cluster statistics per tile, not read by Illumina's interop library (cluster figures come from TileMetricsOut.bin)",
    ),
    (
        "DiversityMetricsOut.bin",
        "NovaSeq X library-diversity estimate: a property of the sample library, not of the instrument, and not read by Illumina's interop library",
    ),
    (
        "ImageQualityMetricsOut.bin",
        "NovaSeq X image-quality internals, not read by Illumina's interop library (focus and intensity come from ExtractionMetricsOut.bin)",
    ),
    (
        "RunInfoMetricsOut.bin",
        "NovaSeq X run set-up record, not read by Illumina's interop library (the run's configuration comes from RunInfo.xml and RunParameters.xml)",
    ),
    (
        "BandEdgeXGridMetricsOut.bin",
        "sub-tile grid of band edges, image-analysis detail not read by Illumina's interop library",
    ),
    (
        "BandEdgeYGridMetricsOut.bin",
        "sub-tile grid of band edges, image-analysis detail not read by Illumina's interop library",
    ),
    (
        "DynamicPhasingMetricsOut.bin",
        "phasing slopes and offsets per tile and read that Illumina's interop library computes from EmpiricalPhasingMetricsOut.bin, which is read (instruments do not write it)",
    ),
];

/// Why a per-cycle folder's copy (`InterOp/C<cycle>.1/`) of a file read is not read: the
/// run-level file is, or (tile metrics without one) the latest copy.
pub const CYCLE_FOLDER_SKIP: &str =
    "per-cycle copy; the run-level file (tile metrics without one: the latest copy) is read";

/// When a record describes something final, so a live watcher may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// At once (configuration).
    Now,
    /// Once the run's metrics have gone past this cycle.
    AfterCycle(u16),
    /// When the run has finished (lane estimates that change until then).
    AtRunEnd,
}

/// The sequencer model from RunParameters' `InstrumentType` (NextSeq, NovaSeq X), else from
/// the control software's name. NovaSeq X is never a NovaSeq 6000 (its software is
/// "NovaSeqXSeries Control Software", or "control-software" in its first releases).
pub fn model_of(application: Option<&str>, instrument_type: Option<&str>) -> InstrumentModel {
    let t = instrument_type
        .unwrap_or("")
        .to_ascii_lowercase()
        .replace(' ', "");
    let a = application.unwrap_or("").to_ascii_lowercase();
    if crate::runfolder::is_novaseq_x(application, instrument_type) {
        InstrumentModel::NOVASEQ_X
    } else if t == "nextseq1000" || t == "nextseq2000" {
        InstrumentModel::NEXTSEQ_2000
    } else if t.starts_with("nextseq500") || t.starts_with("nextseq550") {
        InstrumentModel::NEXTSEQ_550
    } else if a.contains("miniseq") {
        InstrumentModel::MINISEQ
    } else if a.contains("miseq") {
        InstrumentModel::MISEQ
    } else if a.contains("nextseq 1000") || a.contains("nextseq 2000") || a.contains("nextseq1k2k")
    {
        InstrumentModel::NEXTSEQ_2000
    } else if a.contains("nextseq") {
        // "NextSeq Control Software": the NextSeq 500 and 550 (the 1000/2000 name themselves).
        InstrumentModel::NEXTSEQ_550
    } else if a.contains("novaseq") {
        InstrumentModel::NOVASEQ_6000
    } else if a.contains("hiseq") {
        InstrumentModel::HISEQ
    } else if a.contains("iseq") {
        InstrumentModel::ISEQ_100
    } else {
        InstrumentModel::UNKNOWN
    }
}

/// A stable message id from the run and the record's identity (FNV-1a, UUID-shaped), so a
/// collector that sends a cycle twice sends the same id and the validator drops the copy.
pub fn message_id(parts: &[&str]) -> String {
    let mut h: [u64; 2] = [0xcbf2_9ce4_8422_2325, 0x8422_2325_cbf2_9ce4];
    for (i, p) in parts.iter().enumerate() {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            for (k, x) in h.iter_mut().enumerate() {
                *x ^= u64::from(b) ^ (i as u64 + k as u64);
                *x = x.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let (a, b) = (h[0], h[1]);
    format!(
        "{:08x}-{:04x}-5{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

#[derive(Default)]
struct CycleAgg {
    time_ms: i64,
    fwhm_sum: f64,
    fwhm_n: u32,
    intensity: [f64; 4],
    intensity_n: u32,
    error_sum: f64,
    error_n: u32,
    snr_sum: f64,
    snr_n: u32,
    q30: u64,
    qtotal: u64,
    qsum: u64,
}

/// Errors and warnings of the metric files of one run.
#[derive(Default)]
struct Report {
    errors: Vec<InteropError>,
    warnings: Vec<InteropWarning>,
}

/// Reads a metric file and checks it against the run; the file is dropped on any error, and
/// its warnings are kept once it is used.
fn checked<T>(
    file: &Path,
    info: &RunInfo,
    parsed: Result<interop::Parsed<T>, InteropError>,
    key: impl Fn(&T) -> (u16, u16),
    report: &mut Report,
) -> Vec<T> {
    let total: u32 = info.reads.iter().map(|r| r.cycles).sum();
    let errors = &mut report.errors;
    match parsed {
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
        Ok(p) => {
            for (i, r) in p.records.iter().enumerate() {
                let (lane, cycle) = key(r);
                let bad = if lane == 0 || u32::from(lane) > info.lane_count {
                    Some(format!(
                        "lane {lane} outside the run's {} lane(s)",
                        info.lane_count
                    ))
                } else if cycle != u16::MAX && (cycle == 0 || u32::from(cycle) > total) {
                    Some(format!("cycle {cycle} outside the run's {total} cycles"))
                } else {
                    None
                };
                if let Some(detail) = bad {
                    errors.push(InteropError::Inconsistent {
                        file: file.to_path_buf(),
                        offset: i,
                        detail,
                    });
                    return Vec::new();
                }
            }
            report.warnings.extend(p.warnings);
            p.records
        }
    }
}

/// Collects one run folder with the default size caps. `now_ms` is the send time stamped on
/// the records.
pub fn collect_run(
    folder: &Path,
    operator: Option<ConsentOverride>,
    now_ms: i64,
) -> Result<Collected, RunFolderError> {
    collect_run_with(folder, operator, now_ms, &Limits::default())
}

/// Which cycles a per-cycle metric file holds in a finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleSpan {
    /// Every cycle of every read (Q, extraction, corrected intensity, image).
    AllCycles,
    /// The cycles of the non-index reads but the last of each (error metrics: PhiX alignment;
    /// nextseq-2016-04 has 1-80 of read 1's 1-81).
    AlignedCycles,
    /// As `AlignedCycles`, without the first cycle of each read either (empirical phasing;
    /// nextseq-2016-04 has 2-80).
    PhasingCycles,
}

/// The cycles `span` expects of the run.
fn expected_cycles(info: &RunInfo, span: CycleSpan) -> Vec<u16> {
    let mut out = Vec::new();
    let mut first = 1u32;
    for r in &info.reads {
        let last = first + r.cycles.saturating_sub(1);
        let range = match span {
            CycleSpan::AllCycles => first..=last,
            _ if r.indexed => first..=first.saturating_sub(1),
            CycleSpan::AlignedCycles => first..=last.saturating_sub(1),
            CycleSpan::PhasingCycles => first + 1..=last.saturating_sub(1),
        };
        out.extend(range.filter_map(|c| u16::try_from(c).ok()));
        first += r.cycles;
    }
    out
}

/// The (lane, tile, cycle) keys of one per-cycle metric file that was used.
pub struct CycleKeys<'a> {
    pub file: &'a Path,
    pub span: CycleSpan,
    pub keys: Vec<(u16, u16, u16)>,
}

/// What whole records are missing from the files used, against the run: each per-cycle file
/// must hold every tile seen in any file of the run at every cycle its kind expects; tile metrics must hold every tile with
/// every code any tile has. A file cut at a record boundary, which no byte count can tell, is
/// found here. Empty files are left to their [`InteropWarning::HeaderOnly`].
pub fn coverage_warnings(
    info: &RunInfo,
    per_cycle: &[CycleKeys<'_>],
    tiles: Option<(&Path, &[interop::TileMetric])>,
) -> Vec<InteropWarning> {
    use std::collections::BTreeSet;
    let mut all_tiles: BTreeSet<(u16, u16)> = BTreeSet::new();
    for f in per_cycle {
        all_tiles.extend(f.keys.iter().map(|(l, t, _)| (*l, *t)));
    }
    if let Some((_, t)) = tiles {
        all_tiles.extend(t.iter().map(|r| (r.lane, r.tile)));
    }
    let mut out = Vec::new();
    for f in per_cycle.iter().filter(|f| !f.keys.is_empty()) {
        let mut at: BTreeMap<u16, BTreeSet<(u16, u16)>> = BTreeMap::new();
        for (l, t, c) in &f.keys {
            at.entry(*c).or_default().insert((*l, *t));
        }
        let (mut missing, mut partial, mut first_gap) = (0, 0, None);
        let mut short_tiles: BTreeSet<(u16, u16)> = BTreeSet::new();
        for c in expected_cycles(info, f.span) {
            match at.get(&c) {
                None => missing += 1,
                Some(have) if have.len() < all_tiles.len() => {
                    partial += 1;
                    short_tiles.extend(all_tiles.difference(have).copied());
                }
                Some(_) => continue,
            }
            first_gap = first_gap.or(Some(c));
        }
        let file_tiles: BTreeSet<(u16, u16)> = at.values().flatten().copied().collect();
        let tiles_missing = short_tiles.len().max(all_tiles.len() - file_tiles.len());
        if missing + partial + tiles_missing > 0 {
            out.push(InteropWarning::Incomplete {
                file: f.file.to_path_buf(),
                cycles_missing: missing,
                cycles_partial: partial,
                tiles_missing,
                first_gap,
            });
        }
    }
    if let Some((file, t)) = tiles.filter(|(_, t)| !t.is_empty()) {
        let mut codes: BTreeMap<(u16, u16), BTreeSet<u16>> = BTreeMap::new();
        for r in t {
            codes.entry((r.lane, r.tile)).or_default().insert(r.code);
        }
        // Every code any tile has, and the codes a whole file always has: density and
        // cluster counts (100-103); phasing and prephasing (200 + 2(r-1), 201 + 2(r-1)) of
        // every non-index read r once any read has them; % aligned (300 + r-1) of every
        // non-index read once any read has it. MiSeq writes the file code by code, so a cut
        // at a record boundary drops whole codes from every tile alike.
        let mut all_codes: BTreeSet<u16> = codes.values().flatten().copied().collect();
        let has = |range: std::ops::Range<u16>| all_codes.iter().any(|c| range.contains(c));
        let (phasing, aligned) = (has(200..300), has(300..400));
        let mut required: Vec<u16> = vec![100, 101, 102, 103];
        for r in info.reads.iter().filter(|r| !r.indexed) {
            let i = u16::try_from(r.number.saturating_sub(1)).unwrap_or(u16::MAX / 4);
            if phasing {
                required.extend([200 + 2 * i, 201 + 2 * i]);
            }
            if aligned {
                required.push(300 + i);
            }
        }
        all_codes.extend(required);
        let tiles_missing = all_tiles
            .iter()
            .filter(|k| codes.get(k).is_none_or(|c| c.len() < all_codes.len()))
            .count();
        if tiles_missing > 0 {
            out.push(InteropWarning::Incomplete {
                file: file.to_path_buf(),
                cycles_missing: 0,
                cycles_partial: 0,
                tiles_missing,
                first_gap: None,
            });
        }
    }
    out
}

/// Collects one run folder, reading no file over its cap in `limits`.
pub fn collect_run_with(
    folder: &Path,
    operator: Option<ConsentOverride>,
    now_ms: i64,
    limits: &Limits,
) -> Result<Collected, RunFolderError> {
    let info = run_info_with(folder, limits)?;
    let params = run_parameters_with(folder, limits)?;
    let consent = decide(&params.consent_settings, operator);
    if !consent.allows_sending() {
        return Ok(Collected {
            consent,
            records: Vec::new(),
            release: Vec::new(),
            frontier: 0,
            file_errors: Vec::new(),
            warnings: Vec::new(),
            files: Vec::new(),
        });
    }
    let cap = limits.interop_max_bytes;
    let mut report = Report::default();
    let dir = folder.join("InterOp");
    let f = |name: &str| dir.join(name);
    // Present at all (a dangling link or a FIFO is present, and refused by the reader).
    let exists = |name: &str| dir.join(name).symlink_metadata().is_ok();
    // Files read from the per-cycle folders (InterOp/C<cycle>.1/) for want of run-level ones.
    let mut merged: Vec<std::path::PathBuf> = Vec::new();
    // Tile metrics are a snapshot of the whole run: the run-level file, else the latest copy
    // in a cycle folder.
    let tiles_file = if exists("TileMetricsOut.bin") {
        Some(f("TileMetricsOut.bin"))
    } else {
        cycle_files(&dir, "TileMetricsOut.bin").pop().map(|(_, p)| {
            merged.push(p.clone());
            p
        })
    };
    let tiles = tiles_file
        .as_ref()
        .map(|file| {
            checked(
                file,
                &info,
                interop::tile_metrics_capped(file, cap),
                |t| (t.lane, u16::MAX),
                &mut report,
            )
        })
        .unwrap_or_default();
    let tiles_file = tiles_file.unwrap_or_else(|| f("TileMetricsOut.bin"));
    // How warnings name each per-cycle metric (one look at the per-cycle folders per file).
    let label = |name: &str| metric_label(&dir, name);
    let (q_file, err_file, ext_file, ph_file, ci_file, im_file) = (
        label("QMetricsOut.bin"),
        label("ErrorMetricsOut.bin"),
        label("ExtractionMetricsOut.bin"),
        label("EmpiricalPhasingMetricsOut.bin"),
        label("CorrectedIntMetricsOut.bin"),
        label("ImageMetricsOut.bin"),
    );
    let q = per_cycle_metric(
        &dir,
        "QMetricsOut.bin",
        cap,
        interop::q_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&q_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    let err = per_cycle_metric(
        &dir,
        "ErrorMetricsOut.bin",
        cap,
        interop::error_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&err_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    let ext = per_cycle_metric(
        &dir,
        "ExtractionMetricsOut.bin",
        cap,
        interop::extraction_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&ext_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    // Read and checked for consistency; nothing from them is sent yet.
    let phasing = per_cycle_metric(
        &dir,
        "EmpiricalPhasingMetricsOut.bin",
        cap,
        interop::empirical_phasing_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&ph_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    let corrected = per_cycle_metric(
        &dir,
        "CorrectedIntMetricsOut.bin",
        cap,
        interop::corrected_intensity_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&ci_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    let image = per_cycle_metric(
        &dir,
        "ImageMetricsOut.bin",
        cap,
        interop::image_metrics_capped,
        |r| r.cycle,
        &mut merged,
    )
    .map(|p| checked(&im_file, &info, p, |r| (r.lane, r.cycle), &mut report))
    .unwrap_or_default();
    if exists("IndexMetricsOut.bin") {
        checked(
            &f("IndexMetricsOut.bin"),
            &info,
            interop::index_metrics_capped(&f("IndexMetricsOut.bin"), cap),
            |r| (r.lane, u16::MAX),
            &mut report,
        );
    }
    if exists("ControlMetricsOut.bin") {
        checked(
            &f("ControlMetricsOut.bin"),
            &info,
            interop::control_metrics_capped(&f("ControlMetricsOut.bin"), cap),
            |r| (r.lane, u16::MAX),
            &mut report,
        );
    }
    // Read and checked for consistency; occupancy has no field in the records yet.
    if exists("ExtendedTileMetricsOut.bin") {
        checked(
            &f("ExtendedTileMetricsOut.bin"),
            &info,
            interop::extended_tile_metrics_capped(&f("ExtendedTileMetricsOut.bin"), cap),
            |r| (r.lane, u16::MAX),
            &mut report,
        );
    }
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut names: Vec<(String, bool)> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let dir = e.file_type().is_ok_and(|t| t.is_dir());
                (e.file_name().to_string_lossy().into_owned(), dir)
            })
            .filter(|(n, dir)| n.ends_with(".bin") || (*dir && is_cycle_folder(n)))
            .collect();
        names.sort();
        for (n, is_dir) in names {
            let file = dir.join(&n);
            let outcome = if is_dir {
                let mut inner: Vec<String> = std::fs::read_dir(&file)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".bin"))
                            .collect()
                    })
                    .unwrap_or_default();
                inner.sort();
                for i in inner {
                    let path = file.join(&i);
                    let outcome = if let Some(e) = report.errors.iter().find(|e| e.file() == path) {
                        FileOutcome::Refused(e.to_string())
                    } else if merged.contains(&path) {
                        FileOutcome::Read
                    } else if let Some((_, why)) = SKIPPED_FILES.iter().find(|(s, _)| *s == i) {
                        FileOutcome::Skipped(why)
                    } else if READ_FILES.contains(&i.as_str()) {
                        FileOutcome::Skipped(CYCLE_FOLDER_SKIP)
                    } else {
                        let e = InteropError::UnsupportedFile { file: path.clone() };
                        let why = e.to_string();
                        report.errors.push(e);
                        FileOutcome::Refused(why)
                    };
                    files.push(FileStatus {
                        file: path,
                        outcome,
                    });
                }
                continue;
            } else if let Some(e) = report.errors.iter().find(|e| e.file() == file) {
                FileOutcome::Refused(e.to_string())
            } else if READ_FILES.contains(&n.as_str()) {
                FileOutcome::Read
            } else if let Some((_, why)) = SKIPPED_FILES.iter().find(|(s, _)| *s == n) {
                FileOutcome::Skipped(why)
            } else {
                let e = InteropError::UnsupportedFile { file: file.clone() };
                let why = e.to_string();
                report.errors.push(e);
                FileOutcome::Refused(why)
            };
            files.push(FileStatus { file, outcome });
        }
    }
    let keys = |v: &mut dyn Iterator<Item = (u16, u16, u16)>| v.collect::<Vec<_>>();
    let per_cycle = [
        CycleKeys {
            file: &q_file,
            span: CycleSpan::AllCycles,
            keys: keys(&mut q.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
        CycleKeys {
            file: &err_file,
            span: CycleSpan::AlignedCycles,
            keys: keys(&mut err.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
        CycleKeys {
            file: &ext_file,
            span: CycleSpan::AllCycles,
            keys: keys(&mut ext.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
        CycleKeys {
            file: &ph_file,
            span: CycleSpan::PhasingCycles,
            keys: keys(&mut phasing.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
        CycleKeys {
            file: &ci_file,
            span: CycleSpan::AllCycles,
            keys: keys(&mut corrected.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
        CycleKeys {
            file: &im_file,
            span: CycleSpan::AllCycles,
            keys: keys(&mut image.iter().map(|r| (r.lane, r.tile, r.cycle))),
        },
    ];
    report.warnings.extend(coverage_warnings(
        &info,
        &per_cycle,
        Some((tiles_file.as_path(), tiles.as_slice())),
    ));
    // A cycle is complete in a file once every tile of every lane has a record for it and for
    // all earlier cycles (files are written in blocks of cycles per tile, not cycle by cycle).
    let keys = |v: Vec<(u16, u16, u16)>| complete_through(&info, v);
    let frontiers = [
        (!ext.is_empty()).then(|| keys(ext.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
        (!q.is_empty()).then(|| keys(q.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
        (!err.is_empty()).then(|| keys(err.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
    ];
    let frontier = frontiers.iter().flatten().min().copied().unwrap_or(0);
    let (records, release) = build_records(
        &info, &params, &consent, &tiles, &q, &err, &ext, &corrected, now_ms,
    )
    .into_iter()
    .unzip();
    Ok(Collected {
        consent,
        records,
        release,
        frontier,
        file_errors: report.errors,
        warnings: report.warnings,
        files,
    })
}

/// `C<cycle>.1`, the per-cycle folders RTA 3 writes in InterOp/.
fn is_cycle_folder(name: &str) -> bool {
    cycle_of_folder(name).is_some()
}

/// The cycle of a `C<cycle>.1` folder name.
fn cycle_of_folder(name: &str) -> Option<u16> {
    name.strip_prefix('C')?
        .strip_suffix(".1")
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// The copies of `name` in the per-cycle folders of `dir`, by cycle.
pub(crate) fn cycle_files(dir: &Path, name: &str) -> Vec<(u16, std::path::PathBuf)> {
    let mut v: Vec<(u16, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let cycle = cycle_of_folder(&e.file_name().to_string_lossy())?;
                    let file = e.path().join(name);
                    file.symlink_metadata().is_ok().then_some((cycle, file))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// How warnings name a per-cycle metric: `InterOp/<name>` when the run has the run-level file,
/// `InterOp/C*.1/<name>` when it was read from the per-cycle folders.
pub(crate) fn metric_label(dir: &Path, name: &str) -> std::path::PathBuf {
    let top = dir.join(name);
    if top.symlink_metadata().is_err() && !cycle_files(dir, name).is_empty() {
        dir.join("C*.1").join(name)
    } else {
        top
    }
}

/// A per-cycle metric file: `InterOp/<name>` when the run has it (the run-level file), else
/// its copies in the per-cycle folders `InterOp/C<cycle>.1/` merged, as RTA 3 writes them
/// while the run goes on. A per-cycle copy holding a record of another cycle makes the whole
/// file inconsistent; an unreadable copy refuses it (a typed error naming that copy). Copies
/// used are added to `merged`. `None` when the run has neither.
pub(crate) fn per_cycle_metric<T>(
    dir: &Path,
    name: &str,
    cap: u64,
    read: impl Fn(&Path, u64) -> Result<interop::Parsed<T>, InteropError>,
    cycle: impl Fn(&T) -> u16,
    merged: &mut Vec<std::path::PathBuf>,
) -> Option<Result<interop::Parsed<T>, InteropError>> {
    let top = dir.join(name);
    if top.symlink_metadata().is_ok() {
        return Some(read(&top, cap));
    }
    let mut all: Option<interop::Parsed<T>> = None;
    for (c, file) in cycle_files(dir, name) {
        merged.push(file.clone());
        let p = match read(&file, cap) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if let Some((i, r)) = p.records.iter().enumerate().find(|(_, r)| cycle(r) != c) {
            return Some(Err(InteropError::Inconsistent {
                detail: format!("a record of cycle {} in the folder of cycle {c}", cycle(r)),
                file,
                offset: i,
            }));
        }
        match &mut all {
            None => all = Some(p),
            Some(a) => {
                a.records.extend(p.records);
                a.warnings.extend(p.warnings);
                a.trailing_bytes += p.trailing_bytes;
                a.file_records += p.file_records;
            }
        }
    }
    all.map(Ok)
}

/// The highest cycle through which every lane has all its tiles in `keys` (lane, tile, cycle);
/// 0 when the run's tile count is unknown.
fn complete_through(info: &RunInfo, keys: Vec<(u16, u16, u16)>) -> u16 {
    let Some(expected) = info.tiles_per_lane else {
        return 0;
    };
    let mut tiles: BTreeMap<(u16, u16), std::collections::BTreeSet<u16>> = BTreeMap::new();
    for (lane, tile, cycle) in keys {
        tiles.entry((lane, cycle)).or_default().insert(tile);
    }
    let total: u32 = info.reads.iter().map(|r| r.cycles).sum();
    let mut through = u16::MAX;
    for lane in 1..=info.lane_count as u16 {
        let mut c = 0u16;
        while u32::from(c) < total
            && tiles
                .get(&(lane, c + 1))
                .is_some_and(|t| t.len() as u32 >= expected)
        {
            c += 1;
        }
        through = through.min(c);
    }
    if through == u16::MAX {
        0
    } else {
        through
    }
}

#[allow(clippy::too_many_arguments)]
fn build_records(
    info: &RunInfo,
    params: &RunParameters,
    consent: &Consent,
    tiles: &[interop::TileMetric],
    q: &[interop::QMetric],
    err: &[interop::ErrorMetric],
    ext: &[interop::ExtractionMetric],
    corrected: &[interop::CorrectedIntMetric],
    now_ms: i64,
) -> Vec<(Telemetry, Release)> {
    let model = model_of(
        params.application_name.as_deref(),
        params.instrument_type.as_deref(),
    );
    let serial = info.instrument.clone();
    let total_cycles: u32 = info.reads.iter().map(|r| r.cycles).sum();
    // A four-channel run's records store the bases in the order its RunInfo names them.
    let bases = info.base_channels();
    // Run start: the first extraction, else the run date at midnight UTC.
    let date_ms = run_start_day(info)
        .map(|d| d as i64 * 86_400_000)
        .unwrap_or(0);
    let start_ms = ext
        .iter()
        .map(|e| e.time_ms)
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(date_ms);
    let mut attributes = BTreeMap::new();
    if let Some(a) = &params.application_name {
        attributes.insert("application_name".to_string(), a.clone());
    }
    attributes.insert(
        "collector_version".to_string(),
        COLLECTOR_VERSION.to_string(),
    );
    let base = |kind: TelemetryKind, t: i64, id: &[&str]| Telemetry {
        message_id: message_id(id),
        instrument_serial: serial.clone(),
        instrument_model: model,
        event_time_ms: t,
        sent_time_ms: now_ms.max(t),
        kind,
        run_id: Some(info.run_id.clone()),
        sensors: None,
        log_event: None,
        run_performance: None,
        instrument_configuration: None,
        run_configuration: None,
        attributes: attributes.clone(),
    };
    let mut out = Vec::new();
    let mut c = base(
        TelemetryKind::INSTRUMENT_CONFIGURATION,
        start_ms,
        &[&info.run_id, "instrument-configuration"],
    );
    // On what basis consent was taken, on the configuration record only.
    if let Some(basis) = consent.basis() {
        c.attributes
            .insert("consent_basis".to_string(), basis.label().to_string());
    }
    c.instrument_configuration = Some(InstrumentConfiguration {
        control_software_version: params
            .application_version
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
        rta_version: params
            .rta_version
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
        firmware_version: params
            .firmware_version
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
    });
    out.push((c, Release::Now));
    let (mut non_index, mut index) = (
        info.reads.iter().filter(|r| !r.indexed),
        info.reads.iter().filter(|r| r.indexed),
    );
    let cycles = |r: Option<&crate::runfolder::ReadInfo>| r.map_or(0, |r| r.cycles as i32);
    let mut rc = base(
        TelemetryKind::RUN_CONFIGURATION,
        start_ms,
        &[&info.run_id, "run-configuration"],
    );
    rc.run_configuration = Some(RunConfiguration {
        read1_cycles: cycles(non_index.next()),
        index1_cycles: cycles(index.next()),
        index2_cycles: cycles(index.next()),
        read2_cycles: cycles(non_index.next()),
        chemistry: params
            .chemistry
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
        flowcell_serial: info.flowcell.clone(),
        flowcell_lot: params
            .flowcell_lot
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
        reagent_kit_lot: params
            .reagent_kit
            .clone()
            .unwrap_or_else(|| NOT_REPORTED.into()),
        reagent_kit_expiry_date: params
            .reagent_kit_expiry
            .as_deref()
            .and_then(iso_date_days)
            .unwrap_or(0),
        buffer_lot: params.buffer.clone().unwrap_or_else(|| NOT_REPORTED.into()),
        buffer_expiry_date: params
            .buffer_expiry
            .as_deref()
            .and_then(iso_date_days)
            .unwrap_or(0),
    });
    out.push((rc, Release::Now));

    // Lane-level tile statistics: mean over tiles.
    let mut lane_tile: BTreeMap<(u16, u16), (f64, u32)> = BTreeMap::new();
    for t in tiles {
        let e = lane_tile.entry((t.lane, t.code)).or_default();
        e.0 += f64::from(t.value);
        e.1 += 1;
    }
    let lane_mean =
        |lane: u16, code: u16| lane_tile.get(&(lane, code)).map(|(s, n)| s / f64::from(*n));
    let read_of_cycle = |cycle: u32| {
        let mut acc = 0;
        for r in &info.reads {
            acc += r.cycles;
            if cycle <= acc {
                return r.number;
            }
        }
        info.reads.last().map_or(1, |r| r.number)
    };
    let mut per: BTreeMap<(u16, u16), CycleAgg> = BTreeMap::new();
    for e in ext {
        let a = per.entry((e.lane, e.cycle)).or_default();
        a.time_ms = a.time_ms.max(e.time_ms);
        for (i, v) in e.fwhm.iter().enumerate() {
            if *v > 0.0 {
                a.fwhm_sum += f64::from(*v);
                a.fwhm_n += 1;
            }
            a.intensity[i] += f64::from(e.intensity[i]);
        }
        a.intensity_n += 1;
    }
    for c in corrected
        .iter()
        .filter(|c| c.signal_to_noise.is_finite() && c.signal_to_noise > 0.0)
    {
        let a = per.entry((c.lane, c.cycle)).or_default();
        a.snr_sum += f64::from(c.signal_to_noise);
        a.snr_n += 1;
    }
    for e in err {
        let a = per.entry((e.lane, e.cycle)).or_default();
        a.error_sum += f64::from(e.error_rate);
        a.error_n += 1;
    }
    for r in q {
        let a = per.entry((r.lane, r.cycle)).or_default();
        for (i, n) in r.histogram.iter().enumerate() {
            let n = u64::from(*n);
            a.qtotal += n;
            a.qsum += n * (i as u64 + 1);
            if i + 1 >= 30 {
                a.q30 += n;
            }
        }
    }
    let lane_pf = crate::summary::lane_figures(tiles);
    let mut cumulative: BTreeMap<u16, (u64, u64, u64)> = BTreeMap::new();
    // (lane, read) -> (last cycle, its time), for the lane estimates at the end.
    let mut read_last: BTreeMap<(u16, u32), (u16, i64)> = BTreeMap::new();
    let mut focus: BTreeMap<u16, (i64, f64, u32)> = BTreeMap::new();
    for ((lane, cycle), a) in &per {
        let t = if a.time_ms > 0 {
            a.time_ms
        } else {
            start_ms + i64::from(*cycle) * 300_000
        };
        let cum = cumulative.entry(*lane).or_default();
        cum.0 += a.q30;
        cum.1 += a.qtotal;
        cum.2 += a.qsum;
        let read = read_of_cycle(u32::from(*cycle));
        let four_channel = a.intensity.iter().all(|v| *v > 0.0);
        let intensity = |base: usize| {
            let i = bases[base];
            (four_channel && a.intensity_n > 0).then(|| a.intensity[i] / f64::from(a.intensity_n))
        };
        let mut r = base(
            TelemetryKind::RUN_PERFORMANCE,
            t,
            &[
                &info.run_id,
                "run-performance",
                &lane.to_string(),
                &cycle.to_string(),
            ],
        );
        r.run_performance = Some(RunPerformance {
            lane: i32::from(*lane),
            read_number: read as i32,
            cycle: i32::from(*cycle),
            total_cycles: total_cycles as i32,
            cluster_density_k_per_mm2: None,
            pct_pf: None,
            pct_q30: (cum.1 > 0).then(|| cum.0 as f64 / cum.1 as f64 * 100.0),
            mean_qscore: (cum.1 > 0).then(|| cum.2 as f64 / cum.1 as f64),
            error_rate_pct: (a.error_n > 0).then(|| a.error_sum / f64::from(a.error_n)),
            phasing_pct: None,
            prephasing_pct: None,
            intensity_a: intensity(0),
            intensity_c: intensity(1),
            intensity_g: intensity(2),
            intensity_t: intensity(3),
            signal_to_noise: (a.snr_n > 0).then(|| a.snr_sum / f64::from(a.snr_n)),
            yield_gbp: (cum.1 > 0).then(|| cum.1 as f64 / 1e9),
            pct_aligned: None,
        });
        out.push((r, Release::AfterCycle(*cycle)));
        let last = read_last.entry((*lane, read)).or_default();
        *last = (*last).max((*cycle, t));
        if a.fwhm_n > 0 {
            let fc = focus.entry(*cycle).or_default();
            fc.0 = fc.0.max(t);
            fc.1 += a.fwhm_sum;
            fc.2 += a.fwhm_n;
        }
    }
    for (cycle, (t, sum, n)) in focus {
        let mut s = base(
            TelemetryKind::SENSOR_READINGS,
            t,
            &[&info.run_id, "focus", &cycle.to_string()],
        );
        s.sensors = Some(SensorReadings {
            focus_fwhm_px: Some(sum / f64::from(n)),
            ..Default::default()
        });
        out.push((s, Release::AfterCycle(cycle)));
    }
    // Lane estimates (density, %PF, phasing per read) change as the run goes on: one record per
    // lane and read, released when the run has finished. Tile-level phasing is a fraction; 0
    // means not estimated (index reads). EmpiricalPhasingMetricsOut holds per-cycle weights in
    // other units and is only checked, not sent.
    for ((lane, read), (cycle, t)) in &read_last {
        let base_code = 200 + 2 * (*read as u16 - 1);
        let estimated = |v: Option<f64>| v.filter(|v| *v > 0.0).map(|v| v * 100.0);
        let figures = lane_pf.get(lane);
        let mut r = base(
            TelemetryKind::RUN_PERFORMANCE,
            *t,
            &[
                &info.run_id,
                "lane-estimates",
                &lane.to_string(),
                &read.to_string(),
            ],
        );
        r.run_performance = Some(RunPerformance {
            lane: i32::from(*lane),
            read_number: *read as i32,
            cycle: i32::from(*cycle),
            total_cycles: total_cycles as i32,
            cluster_density_k_per_mm2: figures.map(|l| l.density_per_mm2 / 1000.0),
            pct_pf: figures.map(|l| l.pct_pf),
            phasing_pct: estimated(lane_mean(*lane, base_code)),
            prephasing_pct: estimated(lane_mean(*lane, base_code + 1)),
            pct_aligned: lane_mean(*lane, 300 + (*read as u16 - 1)).filter(|v| *v > 0.0),
            ..Default::default()
        });
        out.push((r, Release::AtRunEnd));
    }
    out.sort_by_key(|t| t.0.event_time_ms);
    out
}

/// The run's start day: from the run id's date prefix (`YYMMDD_…`, NovaSeq X `YYYYMMDD_…`),
/// which every instrument writes the same way, else from RunInfo's Date.
pub fn run_start_day(info: &RunInfo) -> Option<i32> {
    let prefix = info.run_id.split('_').next().unwrap_or("");
    let from_id = match prefix.len() {
        6 | 8 if prefix.bytes().all(|b| b.is_ascii_digit()) => {
            let (y, rest) = prefix.split_at(prefix.len() - 4);
            let year = if y.len() == 2 {
                format!("20{y}")
            } else {
                y.to_string()
            };
            iso_date_days(&format!("{year}-{}-{}", &rest[..2], &rest[2..]))
        }
        _ => None,
    };
    from_id.or_else(|| parse_run_date(&info.date))
}

/// `YYMMDD` (older RunInfo), a RunInfo v5 date as the instrument's locale wrote it
/// (`9/12/2023 3:43:46 PM` month first, `17/01/2020 12:52:58` day first; read month first
/// unless the first number cannot be a month) or an ISO date (RunInfo v6) → days since the
/// epoch.
pub fn parse_run_date(s: &str) -> Option<i32> {
    if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
        return iso_date_days(&format!("20{}-{}-{}", &s[..2], &s[2..4], &s[4..6]));
    }
    let mut parts = s.split(' ').next()?.split('/');
    if let (Some(a), Some(b), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let two = |v: &str| (v.len() <= 2 && !v.is_empty()).then(|| format!("{v:0>2}"));
        let (a, b) = (two(a)?, two(b)?);
        let (m, d) = if a.parse::<u8>().ok()? > 12 {
            (b, a)
        } else {
            (a, b)
        };
        return iso_date_days(&format!("{m}/{d}/{y}"));
    }
    iso_date_days(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_comes_from_the_instrument_type_and_novaseq_x_is_never_a_novaseq_6000() {
        use InstrumentModel as M;
        for (app, kind, model) in [
            (
                Some("NovaSeqXSeries Control Software"),
                Some("NovaSeqXPlus"),
                M::NOVASEQ_X,
            ),
            (Some("NovaSeqXSeries Control Software"), None, M::NOVASEQ_X),
            (Some("control-software"), Some("NovaSeqXPlus"), M::NOVASEQ_X),
            (Some("control-software"), Some("NovaSeqX"), M::NOVASEQ_X),
            (Some("NovaSeq Control Software"), None, M::NOVASEQ_6000),
            (
                Some("NextSeq 1000/2000 Control Software"),
                Some("NextSeq 2000"),
                M::NEXTSEQ_2000,
            ),
            (None, Some("NextSeq 1000"), M::NEXTSEQ_2000),
            (None, Some("NextSeq 550"), M::NEXTSEQ_550),
            (None, Some("NextSeq 550Dx"), M::NEXTSEQ_550),
            (Some("NextSeq Control Software"), None, M::NEXTSEQ_550),
            (Some("MiSeq Control Software"), None, M::MISEQ),
            (Some("MiniSeq Control Software"), None, M::MINISEQ),
            (Some("HiSeq Control Software"), None, M::HISEQ),
            (Some("HiSeq X Control Software"), None, M::HISEQ),
            (Some("iSeq Control Software"), None, M::ISEQ_100),
            (Some("control-software"), None, M::UNKNOWN),
            (None, None, M::UNKNOWN),
        ] {
            assert_eq!(model_of(app, kind), model, "{app:?} {kind:?}");
        }
    }

    #[test]
    fn run_dates_of_every_runinfo_version() {
        // 2023-09-12 is day 19612.
        for s in [
            "230912",
            "9/12/2023 3:43:46 PM",
            "09/12/2023 15:43:46",
            "2023-09-12T19:55:57Z",
        ] {
            assert_eq!(parse_run_date(s), Some(19612), "{s}");
        }
        for s in [
            "",
            "13/40/2023 1:00:00 PM",
            "9/12/23",
            "1/2/3/2023",
            "123/1/2023",
        ] {
            assert_eq!(parse_run_date(s), None, "{s}");
        }
        assert_eq!(parse_run_date("12/09/2023 15:43:46"), Some(19_700)); // month first
        assert_eq!(parse_run_date("17/01/2020 12:52:58"), Some(18_278)); // day first
        let info = |id: &str, date: &str| RunInfo {
            run_id: id.into(),
            instrument: "X".into(),
            flowcell: "F".into(),
            date: date.into(),
            reads: Vec::new(),
            lane_count: 1,
            tiles_per_lane: None,
            image_channels: Vec::new(),
        };
        // The run id wins over an ambiguous locale date.
        assert_eq!(
            run_start_day(&info("230912_A00187_1009_AHK33MDRX3", "12/9/2023")),
            Some(19_612)
        );
        assert_eq!(
            run_start_day(&info("20230912_LH00188_0028_B22F52TLT3", "")),
            Some(19_612)
        );
        assert_eq!(
            run_start_day(&info("run-x", "2023-09-12T19:55:57Z")),
            Some(19_612)
        );
    }
}
