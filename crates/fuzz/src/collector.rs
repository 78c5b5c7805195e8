//! The collector's readers of a run folder, over bytes: the ten InterOp binary formats,
//! RunInfo.xml and RunParameters.xml, and what consumes their output at once (lane figures,
//! coverage against the run, the consent decision, dates).
//!
//! Guarantees checked on every input, besides "no panic":
//! - InterOp: a file that reads accounts for all its bytes (whole records × record size +
//!   trailing bytes = body), and its warnings say so (partial record, header only);
//! - RunInfo.xml: a run that reads has at least one read, sorted by number;
//! - RunParameters.xml: consent is decided on whatever settings it holds.

use std::path::Path;

use seqmon_collector::collect::{coverage_warnings, model_of, CycleKeys, CycleSpan};
use seqmon_collector::consent::decide;
use seqmon_collector::interop::{self, InteropWarning, Parsed};
use seqmon_collector::runfolder::{
    iso_date_days, run_info_from_str, run_parameters_from_str, ReadInfo, RunInfo,
};
use seqmon_collector::summary::lane_figures;

/// Every InterOp reader on the same bytes (each checks the header for itself).
pub fn interop(data: &[u8]) {
    let file = Path::new("InterOp/fuzz.bin");
    // The fixed-size formats (each version's header and record size come with the result):
    // header + whole records × record size + trailing bytes must be the whole file.
    let fixed = [
        interop::tile_metrics_from_bytes(file, data).map(counts),
        interop::q_metrics_from_bytes(file, data).map(counts),
        interop::error_metrics_from_bytes(file, data).map(counts),
        interop::extraction_metrics_from_bytes(file, data).map(counts),
        interop::corrected_intensity_metrics_from_bytes(file, data).map(counts),
        interop::image_metrics_from_bytes(file, data).map(counts),
        interop::empirical_phasing_metrics_from_bytes(file, data).map(counts),
        interop::extended_tile_metrics_from_bytes(file, data).map(counts),
    ];
    for (records, trailing, warnings, header, size) in fixed.into_iter().flatten() {
        let body = data.len() - header;
        assert!(size > 0);
        assert_eq!(records * size + trailing, body, "bytes unaccounted for");
        assert!(trailing < size);
        check_warnings(records, trailing, body, &warnings);
    }
    let variable = [
        interop::index_metrics_from_bytes(file, data).map(counts),
        interop::control_metrics_from_bytes(file, data).map(counts),
    ];
    for (records, trailing, warnings, _, _) in variable.into_iter().flatten() {
        assert!(trailing < data.len());
        check_warnings(records, trailing, data.len() - 1, &warnings);
    }
    // What the collector computes from the records at once.
    let run = sample_run();
    if let Ok(tiles) = interop::tile_metrics_from_bytes(file, data) {
        let lanes = lane_figures(&tiles.records);
        assert!(lanes
            .keys()
            .all(|l| tiles.records.iter().any(|t| t.lane == *l)));
        let _ = coverage_warnings(&run, &[], Some((file, tiles.records.as_slice())));
    }
    if let Ok(q) = interop::q_metrics_from_bytes(file, data) {
        let keys = q
            .records
            .iter()
            .map(|r| (r.lane, r.tile, r.cycle))
            .collect();
        let _ = coverage_warnings(
            &run,
            &[CycleKeys {
                file,
                span: CycleSpan::AllCycles,
                keys,
            }],
            None,
        );
    }
}

/// (whole records in the file, trailing bytes, warnings, header bytes, record size).
fn counts<T>(p: Parsed<T>) -> (usize, usize, Vec<InteropWarning>, usize, usize) {
    (
        p.file_records,
        p.trailing_bytes,
        p.warnings,
        p.header_bytes,
        p.record_size,
    )
}

fn check_warnings(records: usize, trailing: usize, body: usize, warnings: &[InteropWarning]) {
    let expected = if body == 0 {
        1
    } else {
        usize::from(trailing > 0)
    };
    assert_eq!(warnings.len(), expected, "{warnings:?}");
    for w in warnings {
        match w {
            InteropWarning::HeaderOnly { .. } => assert_eq!(body, 0),
            InteropWarning::PartialRecord {
                bytes, records: r, ..
            } => assert_eq!((*bytes, *r), (trailing, records)),
            InteropWarning::Incomplete { .. } => panic!("a reader judged coverage: {w:?}"),
        }
    }
}

/// A MiSeq run of the sample data: one lane, reads of 151, 6 (index) and 151 cycles.
fn sample_run() -> RunInfo {
    RunInfo {
        run_id: "130412_M00612_0023_000000000-A3E6R".into(),
        instrument: "M00612".into(),
        flowcell: "000000000-A3E6R".into(),
        date: "130412".into(),
        reads: vec![
            ReadInfo {
                number: 1,
                cycles: 151,
                indexed: false,
            },
            ReadInfo {
                number: 2,
                cycles: 6,
                indexed: true,
            },
            ReadInfo {
                number: 3,
                cycles: 151,
                indexed: false,
            },
        ],
        lane_count: 1,
        tiles_per_lane: Some(28),
        image_channels: Vec::new(),
    }
}

/// RunInfo.xml (UTF-8 text, as the collector reads it), then coverage against the run it
/// describes.
pub fn runinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = run_info_from_str(Path::new("RunInfo.xml"), text) else {
        return;
    };
    assert!(!info.reads.is_empty());
    assert!(info.reads.windows(2).all(|w| w[0].number <= w[1].number));
    let channel = info.intensity_channel();
    assert!(channel == 0 || channel < info.image_channels.len());
    let file = Path::new("InterOp/QMetricsOut.bin");
    let keys = vec![(1, 1, 1), (1, 1, 2), (1, 2, 1)];
    let per_cycle: Vec<CycleKeys<'_>> = [
        CycleSpan::AllCycles,
        CycleSpan::AlignedCycles,
        CycleSpan::PhasingCycles,
    ]
    .into_iter()
    .map(|span| CycleKeys {
        file,
        span,
        keys: keys.clone(),
    })
    .collect();
    let _ = coverage_warnings(&info, &per_cycle, None);
}

/// RunParameters.xml, then the consent decision, the model and the expiry dates.
pub fn runparameters(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = run_parameters_from_str(Path::new("RunParameters.xml"), text) else {
        return;
    };
    let consent = decide(&p.consent_settings, None);
    if p.consent_settings.is_empty() {
        assert!(!consent.allows_sending(), "consent without a setting");
    }
    let _ = model_of(p.application_name.as_deref(), p.instrument_type.as_deref());
    for d in [&p.reagent_kit_expiry, &p.flowcell_expiry, &p.buffer_expiry]
        .into_iter()
        .flatten()
    {
        let _ = iso_date_days(d);
    }
}
