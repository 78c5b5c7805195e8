//! Run- and lane-level summary figures computed from the InterOp files, defined as Illumina's
//! `interop` summary defines them, so the two can be cross-checked: the last cycle of each read
//! is not usable; yield is the base calls of usable cycles; %>=Q30 is over usable cycles; the
//! error rate is the mean over tiles of each tile's mean error over the usable cycles of the
//! non-index reads; density and %PF are means over tiles; first-cycle intensity is, for each read,
//! the mean over tiles of one channel at the read's first cycle (the channel interop reports:
//! [`crate::runfolder::RunInfo::intensity_channel`]), averaged over the reads.

use std::collections::BTreeMap;
use std::path::Path;

use crate::collect::{
    coverage_warnings, cycle_files, metric_label, per_cycle_metric, CycleKeys, CycleSpan,
};
use crate::files::Limits;
use crate::interop;
use crate::runfolder::{run_info, RunInfo};

/// Lane figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LaneSummary {
    pub lane: u16,
    /// Clusters per mm², mean over tiles.
    pub density_per_mm2: f64,
    /// Percent of clusters passing filter, mean over tiles.
    pub pct_pf: f64,
    /// Percent of clusters in occupied wells (patterned flow cells), mean over tiles of each
    /// tile's occupied clusters over its clusters; `None` without ExtendedTileMetricsOut.bin.
    pub pct_occupied: Option<f64>,
}

/// Run figures; `None` where the run lacks the metric file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub yield_gbp: Option<f64>,
    pub pct_q30: Option<f64>,
    pub error_rate_pct: Option<f64>,
    pub first_cycle_intensity: Option<f64>,
    pub lanes: Vec<LaneSummary>,
    /// Files used but not whole (partial last record, header only, cycles or tiles missing),
    /// each naming the file: the figures above are partial when this is not empty.
    pub warnings: Vec<String>,
}

fn usable_cycles(info: &RunInfo, index_reads: bool) -> Vec<u16> {
    let mut out = Vec::new();
    let mut first = 1u32;
    for r in &info.reads {
        if index_reads || !r.indexed {
            out.extend((first..first + r.cycles.saturating_sub(1)).map(|c| c as u16));
        }
        first += r.cycles;
    }
    out
}

/// Summarises a run folder.
pub fn summarize(folder: &Path) -> Result<RunSummary, String> {
    let info = run_info(folder).map_err(|e| e.to_string())?;
    let dir = folder.join("InterOp");
    let usable: std::collections::HashSet<u16> = usable_cycles(&info, true).into_iter().collect();
    let usable_non_index: std::collections::HashSet<u16> =
        usable_cycles(&info, false).into_iter().collect();
    let mut warnings = Vec::new();
    let mut per_cycle = Vec::new();
    let (q_file, err_file, ext_file) = (
        metric_label(&dir, "QMetricsOut.bin"),
        metric_label(&dir, "ErrorMetricsOut.bin"),
        metric_label(&dir, "ExtractionMetricsOut.bin"),
    );
    // Each file as the collector reads it: the run-level file, else the per-cycle copies.
    let cap = Limits::default().interop_max_bytes;
    let mut merged = Vec::new();
    let (mut yield_bases, mut q30) = (None, None);
    if let Some(q) = per_cycle_metric(
        &dir,
        "QMetricsOut.bin",
        cap,
        interop::q_metrics_capped,
        |r| r.cycle,
        &mut merged,
    ) {
        let q = q.map_err(|e| e.to_string())?;
        warnings.extend(q.warnings.iter().map(|w| w.to_string()));
        per_cycle.push(CycleKeys {
            file: &q_file,
            span: CycleSpan::AllCycles,
            keys: q
                .records
                .iter()
                .map(|r| (r.lane, r.tile, r.cycle))
                .collect(),
        });
        let (mut all, mut hi) = (0u64, 0u64);
        for r in q.records.iter().filter(|r| usable.contains(&r.cycle)) {
            for (i, n) in r.histogram.iter().enumerate() {
                all += u64::from(*n);
                if i + 1 >= 30 {
                    hi += u64::from(*n);
                }
            }
        }
        yield_bases = Some(all as f64 / 1e9);
        q30 = (all > 0).then(|| hi as f64 / all as f64 * 100.0);
    }
    let mut error = None;
    if let Some(e) = per_cycle_metric(
        &dir,
        "ErrorMetricsOut.bin",
        cap,
        interop::error_metrics_capped,
        |r| r.cycle,
        &mut merged,
    ) {
        let e = e.map_err(|e| e.to_string())?;
        warnings.extend(e.warnings.iter().map(|w| w.to_string()));
        per_cycle.push(CycleKeys {
            file: &err_file,
            span: CycleSpan::AlignedCycles,
            keys: e
                .records
                .iter()
                .map(|r| (r.lane, r.tile, r.cycle))
                .collect(),
        });
        let mut per_tile: BTreeMap<(u16, u16), (f64, u32)> = BTreeMap::new();
        for r in e
            .records
            .iter()
            .filter(|r| usable_non_index.contains(&r.cycle))
        {
            let t = per_tile.entry((r.lane, r.tile)).or_default();
            t.0 += f64::from(r.error_rate);
            t.1 += 1;
        }
        if !per_tile.is_empty() {
            error = Some(
                per_tile
                    .values()
                    .map(|(s, n)| s / f64::from(*n))
                    .sum::<f64>()
                    / per_tile.len() as f64,
            );
        }
    }
    let mut intensity = None;
    if let Some(x) = per_cycle_metric(
        &dir,
        "ExtractionMetricsOut.bin",
        cap,
        interop::extraction_metrics_capped,
        |r| r.cycle,
        &mut merged,
    ) {
        let x = x.map_err(|e| e.to_string())?;
        warnings.extend(x.warnings.iter().map(|w| w.to_string()));
        per_cycle.push(CycleKeys {
            file: &ext_file,
            span: CycleSpan::AllCycles,
            keys: x
                .records
                .iter()
                .map(|r| (r.lane, r.tile, r.cycle))
                .collect(),
        });
        let channel = info.intensity_channel();
        let mut first = 1u32;
        let mut per_read = Vec::new();
        for r in &info.reads {
            let c1: Vec<f64> = x
                .records
                .iter()
                .filter(|e| u32::from(e.cycle) == first)
                .filter_map(|e| e.intensity.get(channel).copied().map(f64::from))
                .collect();
            if !c1.is_empty() {
                per_read.push(c1.iter().sum::<f64>() / c1.len() as f64);
            }
            first += r.cycles;
        }
        intensity =
            (!per_read.is_empty()).then(|| per_read.iter().sum::<f64>() / per_read.len() as f64);
    }
    // Tile metrics are a snapshot of the whole run: the run-level file, else the latest
    // per-cycle copy. A run that wrote none (an iSeq 100 run folder may hold index metrics
    // only) has no lane figures; its other figures are still summarized.
    let tiles_file = match dir.join("TileMetricsOut.bin") {
        top if top.exists() => top,
        top => cycle_files(&dir, "TileMetricsOut.bin")
            .pop()
            .map_or(top, |(_, latest)| latest),
    };
    let tiles = if tiles_file.exists() {
        interop::tile_metrics(&tiles_file).map_err(|e| e.to_string())?
    } else {
        warnings.push(format!("{}: absent: no lane figures", tiles_file.display()));
        interop::Parsed {
            records: Vec::new(),
            trailing_bytes: 0,
            warnings: Vec::new(),
            header_bytes: 0,
            record_size: 0,
            file_records: 0,
        }
    };
    let ext_tiles_file = dir.join("ExtendedTileMetricsOut.bin");
    let occupancy = if ext_tiles_file.exists() {
        let x = interop::extended_tile_metrics(&ext_tiles_file).map_err(|e| e.to_string())?;
        warnings.extend(x.warnings.iter().map(|w| w.to_string()));
        lane_occupancy(&tiles.records, &x.records)
    } else {
        BTreeMap::new()
    };
    warnings.extend(tiles.warnings.iter().map(|w| w.to_string()));
    warnings.extend(
        coverage_warnings(
            &info,
            &per_cycle,
            (!tiles.records.is_empty()).then_some((tiles_file.as_path(), tiles.records.as_slice())),
        )
        .iter()
        .map(|w| w.to_string()),
    );
    Ok(RunSummary {
        warnings,
        yield_gbp: yield_bases,
        pct_q30: q30,
        error_rate_pct: error,
        first_cycle_intensity: intensity,
        lanes: lane_figures(&tiles.records)
            .into_values()
            .map(|mut l| {
                l.pct_occupied = occupancy.get(&l.lane).copied();
                l
            })
            .collect(),
    })
}

/// % occupied per lane: the mean over tiles of a tile's occupied clusters over its clusters
/// (tile code 102), as Illumina's interop summary computes it; tiles without both are left out.
pub fn lane_occupancy(
    tiles: &[interop::TileMetric],
    extended: &[interop::ExtendedTileMetric],
) -> BTreeMap<u16, f64> {
    let clusters: BTreeMap<(u16, u16), f64> = tiles
        .iter()
        .filter(|t| t.code == 102)
        .map(|t| ((t.lane, t.tile), f64::from(t.value)))
        .collect();
    let mut lanes: BTreeMap<u16, (f64, u32)> = BTreeMap::new();
    for x in extended.iter().filter(|x| x.occupied.is_finite()) {
        if let Some(n) = clusters.get(&(x.lane, x.tile)).filter(|n| **n > 0.0) {
            let l = lanes.entry(x.lane).or_default();
            l.0 += f64::from(x.occupied) / n * 100.0;
            l.1 += 1;
        }
    }
    lanes
        .into_iter()
        .map(|(lane, (sum, n))| (lane, sum / f64::from(n)))
        .collect()
}

/// Density and %PF per lane from tile metrics: means over tiles (a tile's %PF is its PF
/// clusters over its clusters).
pub fn lane_figures(tiles: &[interop::TileMetric]) -> BTreeMap<u16, LaneSummary> {
    let mut by_tile: BTreeMap<(u16, u16), BTreeMap<u16, f64>> = BTreeMap::new();
    for t in tiles {
        by_tile
            .entry((t.lane, t.tile))
            .or_default()
            .insert(t.code, f64::from(t.value));
    }
    let mut lanes: BTreeMap<u16, (f64, u32, f64, u32)> = BTreeMap::new();
    for ((lane, _), codes) in &by_tile {
        let l = lanes.entry(*lane).or_default();
        if let Some(d) = codes.get(&100) {
            l.0 += d;
            l.1 += 1;
        }
        if let (Some(pf), Some(all)) = (codes.get(&103), codes.get(&102)) {
            if *all > 0.0 {
                l.2 += pf / all * 100.0;
                l.3 += 1;
            }
        }
    }
    lanes
        .into_iter()
        .map(|(lane, (d, nd, pf, npf))| {
            (
                lane,
                LaneSummary {
                    lane,
                    density_per_mm2: d / f64::from(nd.max(1)),
                    pct_pf: pf / f64::from(npf.max(1)),
                    pct_occupied: None,
                },
            )
        })
        .collect()
}
