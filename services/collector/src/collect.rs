//! A run folder → raw telemetry records of the four allowed categories: instrument configuration,
//! run configuration, run performance per lane and cycle, and instrument performance (focus) per
//! cycle. Only a run whose instrument opted in is collected. Unreadable metric files are reported
//! as typed errors and the rest of the run is still collected.

use std::collections::BTreeMap;
use std::path::Path;

use seqmon_model::{
    InstrumentConfiguration, InstrumentModel, RunConfiguration, RunPerformance, SensorReadings,
    Telemetry, TelemetryKind,
};

use crate::consent::{decide, Consent, ConsentOverride};
use crate::interop::{self, InteropError};
use crate::runfolder::{
    iso_date_days, run_info, run_parameters, RunFolderError, RunInfo, RunParameters,
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
}

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

/// The sequencer model from the control software's name.
pub fn model_of(application: Option<&str>) -> InstrumentModel {
    let a = application.unwrap_or("").to_ascii_lowercase();
    if a.contains("miseq") {
        InstrumentModel::MISEQ
    } else if a.contains("nextseq 1000") || a.contains("nextseq 2000") || a.contains("nextseq1k2k")
    {
        InstrumentModel::NEXTSEQ_2000
    } else if a.contains("novaseq") {
        InstrumentModel::NOVASEQ_6000
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

/// Reads a metric file and checks it against the run; the file is dropped on any error.
fn checked<T>(
    file: &Path,
    info: &RunInfo,
    parsed: Result<interop::Parsed<T>, InteropError>,
    key: impl Fn(&T) -> (u16, u16),
    errors: &mut Vec<InteropError>,
) -> Vec<T> {
    let total: u32 = info.reads.iter().map(|r| r.cycles).sum();
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
            p.records
        }
    }
}

/// Collects one run folder. `now_ms` is the send time stamped on the records.
pub fn collect_run(
    folder: &Path,
    operator: Option<ConsentOverride>,
    now_ms: i64,
) -> Result<Collected, RunFolderError> {
    let info = run_info(folder)?;
    let params = run_parameters(folder)?;
    let consent = decide(&params.consent_settings, operator);
    if !consent.allows_sending() {
        return Ok(Collected {
            consent,
            records: Vec::new(),
            release: Vec::new(),
            frontier: 0,
            file_errors: Vec::new(),
        });
    }
    let mut errors = Vec::new();
    let dir = folder.join("InterOp");
    let f = |name: &str| dir.join(name);
    let exists = |name: &str| dir.join(name).exists();
    let no_cycle = |_: &interop::TileMetric| u16::MAX;
    let tiles = if exists("TileMetricsOut.bin") {
        checked(
            &f("TileMetricsOut.bin"),
            &info,
            interop::tile_metrics(&f("TileMetricsOut.bin")),
            |t| (t.lane, no_cycle(t)),
            &mut errors,
        )
    } else {
        Vec::new()
    };
    let q = if exists("QMetricsOut.bin") {
        checked(
            &f("QMetricsOut.bin"),
            &info,
            interop::q_metrics(&f("QMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        )
    } else {
        Vec::new()
    };
    let err = if exists("ErrorMetricsOut.bin") {
        checked(
            &f("ErrorMetricsOut.bin"),
            &info,
            interop::error_metrics(&f("ErrorMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        )
    } else {
        Vec::new()
    };
    let ext = if exists("ExtractionMetricsOut.bin") {
        checked(
            &f("ExtractionMetricsOut.bin"),
            &info,
            interop::extraction_metrics(&f("ExtractionMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        )
    } else {
        Vec::new()
    };
    // Read and checked for consistency; nothing from them is sent yet.
    if exists("EmpiricalPhasingMetricsOut.bin") {
        checked(
            &f("EmpiricalPhasingMetricsOut.bin"),
            &info,
            interop::empirical_phasing_metrics(&f("EmpiricalPhasingMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        );
    }
    let corrected = if exists("CorrectedIntMetricsOut.bin") {
        checked(
            &f("CorrectedIntMetricsOut.bin"),
            &info,
            interop::corrected_intensity_metrics(&f("CorrectedIntMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        )
    } else {
        Vec::new()
    };
    if exists("ImageMetricsOut.bin") {
        checked(
            &f("ImageMetricsOut.bin"),
            &info,
            interop::image_metrics(&f("ImageMetricsOut.bin")),
            |r| (r.lane, r.cycle),
            &mut errors,
        );
    }
    if exists("IndexMetricsOut.bin") {
        checked(
            &f("IndexMetricsOut.bin"),
            &info,
            interop::index_metrics(&f("IndexMetricsOut.bin")),
            |r| (r.lane, u16::MAX),
            &mut errors,
        );
    }
    if exists("ControlMetricsOut.bin") {
        checked(
            &f("ControlMetricsOut.bin"),
            &info,
            interop::control_metrics(&f("ControlMetricsOut.bin")),
            |r| (r.lane, u16::MAX),
            &mut errors,
        );
    }
    const KNOWN: &[&str] = &[
        "TileMetricsOut.bin",
        "QMetricsOut.bin",
        "ErrorMetricsOut.bin",
        "ExtractionMetricsOut.bin",
        "EmpiricalPhasingMetricsOut.bin",
        "CorrectedIntMetricsOut.bin",
        "ImageMetricsOut.bin",
        "IndexMetricsOut.bin",
        "ControlMetricsOut.bin",
    ];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".bin"))
            .collect();
        names.sort();
        for n in names.into_iter().filter(|n| !KNOWN.contains(&n.as_str())) {
            errors.push(InteropError::UnsupportedFile { file: dir.join(n) });
        }
    }
    // A cycle is complete in a file once every tile of every lane has a record for it and for
    // all earlier cycles (files are written in blocks of cycles per tile, not cycle by cycle).
    let keys = |v: Vec<(u16, u16, u16)>| complete_through(&info, v);
    let frontiers = [
        (!ext.is_empty()).then(|| keys(ext.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
        (!q.is_empty()).then(|| keys(q.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
        (!err.is_empty()).then(|| keys(err.iter().map(|r| (r.lane, r.tile, r.cycle)).collect())),
    ];
    let frontier = frontiers.iter().flatten().min().copied().unwrap_or(0);
    let (records, release) =
        build_records(&info, &params, &tiles, &q, &err, &ext, &corrected, now_ms)
            .into_iter()
            .unzip();
    Ok(Collected {
        consent,
        records,
        release,
        frontier,
        file_errors: errors,
    })
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
    tiles: &[interop::TileMetric],
    q: &[interop::QMetric],
    err: &[interop::ErrorMetric],
    ext: &[interop::ExtractionMetric],
    corrected: &[interop::CorrectedIntMetric],
    now_ms: i64,
) -> Vec<(Telemetry, Release)> {
    let model = model_of(params.application_name.as_deref());
    let serial = info.instrument.clone();
    let total_cycles: u32 = info.reads.iter().map(|r| r.cycles).sum();
    // Run start: the first extraction, else the run date at midnight UTC.
    let date_ms = parse_run_date(&info.date)
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
    c.instrument_configuration = Some(InstrumentConfiguration {
        control_software_version: params
            .application_version
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        rta_version: params
            .rta_version
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        firmware_version: params
            .firmware_version
            .clone()
            .unwrap_or_else(|| "unknown".into()),
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
        chemistry: params.chemistry.clone().unwrap_or_else(|| "unknown".into()),
        flowcell_serial: info.flowcell.clone(),
        flowcell_lot: params
            .flowcell_lot
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        reagent_kit_lot: params
            .reagent_kit
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        reagent_kit_expiry_date: params
            .reagent_kit_expiry
            .as_deref()
            .and_then(iso_date_days)
            .unwrap_or(0),
        buffer_lot: params.buffer.clone().unwrap_or_else(|| "unknown".into()),
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
        let intensity = |i: usize| {
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

/// `YYMMDD` (older RunInfo) or an ISO date → days since the epoch.
fn parse_run_date(s: &str) -> Option<i32> {
    if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
        return iso_date_days(&format!("20{}-{}-{}", &s[..2], &s[2..4], &s[4..6]));
    }
    iso_date_days(s)
}
