//! Metric definitions: subsystem, plausible range (what the validator accepts as physically
//! possible) and operating spec per model (what the feature extractor counts as out of spec).

use crate::records::{InstrumentModel, Subsystem};

/// One metric that features are computed for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    /// Metric name, with its unit.
    pub name: &'static str,
    /// Subsystem it belongs to.
    pub subsystem: Subsystem,
    /// Physically plausible range; outside it a reading is a broken sensor or a bad record.
    pub plausible: (f64, f64),
    /// What kind of quantity it is, which decides how it is judged.
    pub kind: MetricKind,
}

/// What kind of quantity a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A continuous sensor reading of a part: level, spread and trend all say something.
    Sensor,
    /// A run-quality figure: moves with each run's library and reagents, so its spread is
    /// run-to-run chance, not the state of a part.
    RunQuality,
    /// A count of events per window: its noise is at least Poisson.
    Count,
    /// The site's condition rather than the instrument's (room temperature): judged against its
    /// spec and trend only, never a baseline, since a site's daily cycle or a new air conditioner
    /// is not a failing part.
    Environment,
}

/// Sensor metrics, as in [`crate::records::SensorReadings`], plus derived ones. The order is
/// the feature extractor's order within a window: within a subsystem, the metric that tells most
/// about the part comes first (pressure before flow rate).
pub const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "laser_power_mw",
        subsystem: Subsystem::OPTICAL,
        plausible: (0.0, 5000.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "focus_fwhm_px",
        subsystem: Subsystem::OPTICAL,
        plausible: (0.0, 50.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "focus_z_offset_um",
        subsystem: Subsystem::OPTICAL,
        plausible: (-1000.0, 1000.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "stage_position_error_um",
        subsystem: Subsystem::MECHANICAL,
        plausible: (0.0, 5000.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "stage_motor_current_a",
        subsystem: Subsystem::MECHANICAL,
        plausible: (0.0, 30.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "flowcell_temp_c",
        subsystem: Subsystem::THERMAL,
        plausible: (-20.0, 130.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "flowcell_temp_setpoint_c",
        subsystem: Subsystem::THERMAL,
        plausible: (0.0, 100.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "flowcell_temp_deviation_c",
        subsystem: Subsystem::THERMAL,
        plausible: (-150.0, 150.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "chiller_temp_c",
        subsystem: Subsystem::THERMAL,
        plausible: (-30.0, 60.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "ambient_temp_c",
        subsystem: Subsystem::THERMAL,
        plausible: (-20.0, 70.0),
        kind: MetricKind::Environment,
    },
    MetricSpec {
        name: "fluidics_pressure_kpa",
        subsystem: Subsystem::FLUIDICS,
        plausible: (-101.0, 2000.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "flow_rate_ul_min",
        subsystem: Subsystem::FLUIDICS,
        plausible: (0.0, 20000.0),
        kind: MetricKind::Sensor,
    },
    MetricSpec {
        name: "cluster_density_k_per_mm2",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 20000.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "pct_pf",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "pct_q30",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "mean_qscore",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 60.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "error_rate_pct",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "phasing_pct",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "prephasing_pct",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "intensity_a",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 1.0e6),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "intensity_c",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 1.0e6),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "intensity_g",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 1.0e6),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "intensity_t",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 1.0e6),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "pct_aligned",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "signal_to_noise",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 10_000.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "yield_gbp",
        subsystem: Subsystem::CHEMISTRY,
        plausible: (0.0, 100_000.0),
        kind: MetricKind::RunQuality,
    },
    MetricSpec {
        name: "error_events_per_window",
        subsystem: Subsystem::SOFTWARE,
        plausible: (0.0, 1.0e6),
        kind: MetricKind::Count,
    },
];

/// The definition of a metric, if it is one of ours.
pub fn metric(name: &str) -> Option<&'static MetricSpec> {
    METRICS.iter().find(|m| m.name == name)
}

/// Nominal operating level of a metric on a model (what a healthy instrument shows): the fleet
/// prior an instrument's baseline starts from. Room temperature has none: it is the site's, not
/// the instrument's, and sites differ by several degrees.
pub fn nominal(model: InstrumentModel, metric: &str) -> Option<f64> {
    use InstrumentModel::*;
    Some(match (metric, model) {
        ("laser_power_mw", NOVASEQ_6000) => 500.0,
        ("laser_power_mw", NEXTSEQ_2000) => 350.0,
        ("laser_power_mw", MISEQ) => 150.0,
        // The models added in 2026-12 keep UNKNOWN's prior (what they were sent as before)
        // until figures of their own are sourced.
        ("laser_power_mw", ISEQ_100 | UNKNOWN | NOVASEQ_X | NEXTSEQ_550 | MINISEQ | HISEQ) => 100.0,
        ("focus_fwhm_px", _) => 2.4,
        ("focus_z_offset_um", _) => 0.0,
        ("stage_position_error_um", _) => 0.8,
        ("stage_motor_current_a", _) => 1.2,
        ("flowcell_temp_deviation_c", _) => 0.0,
        ("chiller_temp_c", _) => 4.0,
        ("fluidics_pressure_kpa", _) => 100.0,
        ("flow_rate_ul_min", NOVASEQ_6000) => 400.0,
        ("flow_rate_ul_min", _) => 250.0,
        ("cluster_density_k_per_mm2", NOVASEQ_6000) => 2600.0,
        ("cluster_density_k_per_mm2", NEXTSEQ_2000) => 2100.0,
        ("cluster_density_k_per_mm2", _) => 1000.0,
        ("pct_pf", _) => 85.0,
        ("pct_q30", _) => 90.0,
        ("mean_qscore", _) => 35.0,
        ("error_rate_pct", _) => 0.4,
        ("phasing_pct", _) => 0.15,
        ("prephasing_pct", _) => 0.10,
        ("error_events_per_window", _) => 0.2,
        _ => return None,
    })
}

/// Operating spec limits (low, high) of a metric on a model; `None` on a side without a limit.
pub fn operating_spec(model: InstrumentModel, metric: &str) -> (Option<f64>, Option<f64>) {
    let nom = nominal(model, metric);
    match metric {
        "laser_power_mw" => (nom.map(|n| n * 0.85), nom.map(|n| n * 1.15)),
        "focus_fwhm_px" => (None, Some(3.5)),
        "focus_z_offset_um" => (Some(-3.0), Some(3.0)),
        "stage_position_error_um" => (None, Some(3.0)),
        "stage_motor_current_a" => (None, Some(2.0)),
        "flowcell_temp_deviation_c" => (Some(-1.5), Some(1.5)),
        "chiller_temp_c" => (Some(2.0), Some(8.0)),
        // The site requirement instruments are installed under.
        "ambient_temp_c" => (Some(15.0), Some(30.0)),
        "fluidics_pressure_kpa" => (Some(70.0), Some(140.0)),
        "flow_rate_ul_min" => (nom.map(|n| n * 0.8), nom.map(|n| n * 1.2)),
        "pct_pf" => (Some(60.0), None),
        "pct_q30" => (Some(80.0), None),
        "error_rate_pct" => (None, Some(1.5)),
        "phasing_pct" => (None, Some(0.4)),
        "prephasing_pct" => (None, Some(0.3)),
        "error_events_per_window" => (None, Some(3.0)),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_levels_are_plausible_and_in_spec() {
        for model in InstrumentModel::ALL
            .into_iter()
            .filter(|m| *m != InstrumentModel::UNKNOWN)
        {
            for m in METRICS {
                if let Some(n) = nominal(model, m.name) {
                    assert!(
                        n >= m.plausible.0 && n <= m.plausible.1,
                        "{} on {model:?}",
                        m.name
                    );
                    let (lo, hi) = operating_spec(model, m.name);
                    assert!(
                        lo.is_none_or(|l| n >= l) && hi.is_none_or(|h| n <= h),
                        "{} nominal in spec",
                        m.name
                    );
                }
            }
        }
    }
}
