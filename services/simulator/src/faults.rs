//! Fault physics: what each scenario does to an instrument's sensors over time, deterministically
//! (noise is added by the generator), so the ground truth — when the metric leaves its spec, when
//! a run would fail — is computed from the same functions that shape the readings.
//!
//! Time scales follow how parts wear: a laser loses power over weeks, a chiller's or heater's
//! control loop grows unstable over days (it oscillates with a growing amplitude long before its
//! mean moves), a pump wears and a line clogs over days to weeks. Abrupt faults fail at once, a
//! leak after hours of small pressure dips. An intermittent laser fault comes back more and more
//! often. A part repaired after failure resets its degradation.

use seqmon_model::parts::Part;
use seqmon_model::specs::{nominal, operating_spec};
use seqmon_model::{InstrumentModel, Subsystem};
use serde::Serialize;

use crate::rng::Rng;

pub(crate) const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

/// A labelled fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Optical: excitation laser output decays over weeks.
    LaserDecay,
    /// Optical: focus quality drifts over days.
    FocusDrift,
    /// Thermal: the flow-cell heater's control loop oscillates more and more over days.
    HeaterInstability,
    /// Thermal: the reagent chiller's control loop oscillates more and more, then loses hold.
    ChillerInstability,
    /// Fluidics: the pump wears; flow falls over days to weeks.
    PumpWear,
    /// Fluidics: a line clogs; pressure rises over days.
    Clog,
    /// Mechanical: the XY stage wears; following error rises over days.
    StageWear,
    /// Fluidics: a seal gives way (after hours of small pressure dips).
    Leak,
    /// Mechanical: the stage fails at once, with no precursor.
    StageCrash,
    /// Optical: the laser drops out for minutes, more and more often.
    IntermittentLaser,
    /// Chemistry: a bad reagent kit lot, on several instruments at once.
    BadReagentLot,
    /// Software: a control software update that raises error events.
    SoftwareRegression,
}

/// How a fault develops, which decides what detecting it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// Degrades over days to weeks: should be predicted well before it leaves spec.
    Slow,
    /// Fails at once (possibly after a precursor).
    Abrupt,
    /// Comes and goes.
    Intermittent,
    /// A cause shared by several instruments (a lot, a software version).
    Fleet,
}

impl Scenario {
    /// Every scenario, in the order small fleets receive them.
    pub const ALL: [Scenario; 12] = [
        Scenario::LaserDecay,
        Scenario::Leak,
        Scenario::HeaterInstability,
        Scenario::BadReagentLot,
        Scenario::StageCrash,
        Scenario::FocusDrift,
        Scenario::Clog,
        Scenario::ChillerInstability,
        Scenario::SoftwareRegression,
        Scenario::PumpWear,
        Scenario::StageWear,
        Scenario::IntermittentLaser,
    ];

    /// The subsystem an alert must name for the fault to count as detected.
    pub fn subsystem(self) -> Subsystem {
        match self {
            Scenario::LaserDecay | Scenario::FocusDrift | Scenario::IntermittentLaser => {
                Subsystem::OPTICAL
            }
            Scenario::HeaterInstability | Scenario::ChillerInstability => Subsystem::THERMAL,
            Scenario::Leak | Scenario::Clog | Scenario::PumpWear => Subsystem::FLUIDICS,
            Scenario::StageWear | Scenario::StageCrash => Subsystem::MECHANICAL,
            Scenario::BadReagentLot => Subsystem::CHEMISTRY,
            Scenario::SoftwareRegression => Subsystem::SOFTWARE,
        }
    }

    /// The part (or fleet cause) the first alert should name.
    pub fn part(self) -> Part {
        match self {
            Scenario::LaserDecay | Scenario::IntermittentLaser => Part::ExcitationLaser,
            Scenario::FocusDrift => Part::Autofocus,
            Scenario::HeaterInstability => Part::FlowcellHeater,
            Scenario::ChillerInstability => Part::ReagentChiller,
            Scenario::PumpWear => Part::FluidicsPump,
            Scenario::Clog => Part::FluidicsClog,
            Scenario::Leak => Part::FluidicsLeak,
            Scenario::StageWear | Scenario::StageCrash => Part::XyStage,
            Scenario::BadReagentLot => Part::ReagentLot,
            Scenario::SoftwareRegression => Part::ControlSoftware,
        }
    }

    /// How it develops.
    pub fn class(self) -> FaultClass {
        match self {
            Scenario::LaserDecay
            | Scenario::FocusDrift
            | Scenario::HeaterInstability
            | Scenario::ChillerInstability
            | Scenario::PumpWear
            | Scenario::Clog
            | Scenario::StageWear => FaultClass::Slow,
            Scenario::Leak | Scenario::StageCrash => FaultClass::Abrupt,
            Scenario::IntermittentLaser => FaultClass::Intermittent,
            Scenario::BadReagentLot | Scenario::SoftwareRegression => FaultClass::Fleet,
        }
    }

    /// Hours from the start of a slow degradation to its spec limit (range drawn from); for a
    /// leak, hours of precursor; for an intermittent fault, hours until it fails outright.
    fn hours(self) -> (f64, f64) {
        match self {
            Scenario::LaserDecay => (240.0, 600.0),
            Scenario::FocusDrift => (72.0, 192.0),
            Scenario::HeaterInstability => (48.0, 120.0),
            Scenario::ChillerInstability => (48.0, 144.0),
            Scenario::PumpWear => (120.0, 360.0),
            Scenario::Clog => (72.0, 192.0),
            Scenario::StageWear => (96.0, 288.0),
            Scenario::Leak => (6.0, 24.0),
            Scenario::IntermittentLaser => (36.0, 60.0),
            Scenario::StageCrash | Scenario::BadReagentLot | Scenario::SoftwareRegression => {
                (0.0, 0.0)
            }
        }
    }
}

/// Degradation 25% past the point where it left spec: a run started then fails.
const FAIL_PROGRESS: f64 = 1.25;

/// One injected fault and its schedule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fault {
    pub scenario: Scenario,
    /// When the degradation (or precursor) began.
    pub start_ms: i64,
    /// Slow: time from start to progress 1 (the spec limit). Others: 0.
    pub span_ms: i64,
    /// Abrupt and intermittent: when it fails outright.
    pub fail_ms: i64,
    /// When the part was repaired (the fault's effects end), if within the simulation.
    pub repaired_ms: Option<i64>,
    /// Intermittent drop-outs or leak precursor dips: (start, end) ms.
    pub episodes: Vec<(i64, i64)>,
    /// Oscillation period of an unstable control loop, ms.
    pub period_ms: i64,
}

/// What a fault does to the noise-free readings at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Effect {
    pub laser_mul: f64,
    pub fwhm_add: f64,
    pub z_add: f64,
    pub pos_add: f64,
    pub current_add: f64,
    pub chiller_add: f64,
    pub chiller_amp: f64,
    pub heater_amp: f64,
    pub pressure_add: f64,
    pub flow_mul: f64,
}

impl Default for Effect {
    fn default() -> Self {
        Effect {
            laser_mul: 1.0,
            fwhm_add: 0.0,
            z_add: 0.0,
            pos_add: 0.0,
            current_add: 0.0,
            chiller_add: 0.0,
            chiller_amp: 0.0,
            heater_amp: 0.0,
            pressure_add: 0.0,
            flow_mul: 1.0,
        }
    }
}

/// Noise-free level of a metric on one instrument (nominal, its own offset, ambient coupling).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Base {
    pub model: InstrumentModel,
    /// Relative offsets of scale metrics and absolute ones of the rest, by metric.
    pub offsets: std::collections::BTreeMap<&'static str, f64>,
    /// Ambient level and daily swing of this site, °C.
    pub ambient_mean: f64,
    pub ambient_swing: f64,
    /// Phase of the daily cycle, hours.
    pub ambient_phase_h: f64,
}

/// Metrics whose instrument offset is relative (scale); the rest are absolute offsets.
const RELATIVE: [&str; 4] = [
    "laser_power_mw",
    "flow_rate_ul_min",
    "fluidics_pressure_kpa",
    "cluster_density_k_per_mm2",
];

impl Base {
    /// A new instrument's variation around its model's nominal.
    pub fn draw(model: InstrumentModel, rng: &mut Rng) -> Base {
        let mut offsets = std::collections::BTreeMap::new();
        for m in RELATIVE {
            offsets.insert(m, rng.range(-0.03, 0.03));
        }
        offsets.insert("focus_fwhm_px", rng.range(-0.15, 0.15));
        offsets.insert("stage_position_error_um", rng.range(-0.1, 0.1));
        offsets.insert("stage_motor_current_a", rng.range(-0.08, 0.08));
        offsets.insert("chiller_temp_c", rng.range(-0.3, 0.3));
        Base {
            model,
            offsets,
            ambient_mean: rng.range(20.5, 24.5),
            ambient_swing: rng.range(0.3, 1.5),
            ambient_phase_h: rng.range(0.0, 24.0),
        }
    }

    /// Ambient temperature at `t`: the site's level, a daily cycle and a slow monthly swing.
    pub fn ambient(&self, t: i64) -> f64 {
        let h = t as f64 / HOUR as f64;
        let tau = std::f64::consts::TAU;
        self.ambient_mean
            + self.ambient_swing * (tau * (h - self.ambient_phase_h) / 24.0).sin()
            + 0.8 * (tau * h / (24.0 * 30.0)).sin()
    }

    /// Noise-free level of `metric` at `t` on a healthy instrument.
    pub fn level(&self, metric: &'static str, t: i64) -> f64 {
        let nom = nominal(self.model, metric).unwrap_or(0.0);
        let off = self.offsets.get(metric).copied().unwrap_or(0.0);
        let v = if RELATIVE.contains(&metric) {
            nom * (1.0 + off)
        } else {
            nom + off
        };
        let warm = self.ambient(t) - 22.0;
        match metric {
            // A warmer room costs a little laser power and a little chiller headroom.
            "laser_power_mw" => v * (1.0 - 0.001 * warm),
            "chiller_temp_c" => v + 0.04 * warm,
            "ambient_temp_c" => self.ambient(t),
            _ => v,
        }
    }
}

impl Fault {
    /// Draws a fault of `scenario` whose defining moment (the spec crossing of a slow fault, the
    /// failure of an abrupt one, the first drop-out of an intermittent one, the onset of a fleet
    /// cause) falls at `moment_ms`.
    pub fn draw(scenario: Scenario, moment_ms: i64, end_ms: i64, rng: &mut Rng) -> Fault {
        let (lo, hi) = scenario.hours();
        let hours = rng.range(lo, hi);
        let span_ms = (hours * HOUR as f64) as i64;
        // A chiller holding the reagent cartridges has a large thermal mass and swings slowly;
        // the flow-cell heater's loop is quicker.
        let period_ms = match scenario {
            Scenario::ChillerInstability => (rng.range(10.0, 30.0) * MINUTE as f64) as i64,
            _ => (rng.range(5.0, 15.0) * MINUTE as f64) as i64,
        };
        let repair_delay = (rng.range(12.0, 36.0) * HOUR as f64) as i64;
        let mut f = Fault {
            scenario,
            start_ms: moment_ms,
            span_ms: 0,
            fail_ms: moment_ms,
            repaired_ms: None,
            episodes: Vec::new(),
            period_ms,
        };
        match scenario.class() {
            FaultClass::Slow => {
                f.span_ms = span_ms;
                f.start_ms = moment_ms - span_ms;
                f.fail_ms = f.start_ms + (span_ms as f64 * FAIL_PROGRESS) as i64;
            }
            FaultClass::Abrupt if scenario == Scenario::Leak => {
                f.start_ms = moment_ms - span_ms;
                // Dips of ten minutes roughly every one to two hours before the seal gives way.
                let mut t = f.start_ms + (rng.range(0.0, 1.0) * HOUR as f64) as i64;
                while t < moment_ms {
                    f.episodes.push((t, t + 10 * MINUTE));
                    t += (rng.range(1.0, 2.0) * HOUR as f64) as i64;
                }
            }
            FaultClass::Intermittent => {
                f.fail_ms = moment_ms + span_ms;
                // Drop-outs of 10-20 min, every 8 h at first, every hour by the failure.
                let mut t = moment_ms;
                while t < end_ms.max(f.fail_ms) + 24 * HOUR {
                    let len = (rng.range(10.0, 20.0) * MINUTE as f64) as i64;
                    f.episodes.push((t, t + len));
                    let progress = ((t - moment_ms) as f64 / span_ms as f64).clamp(0.0, 1.0);
                    let gap_h = 8.0 - 7.0 * progress;
                    t += (gap_h * rng.range(0.8, 1.2) * HOUR as f64) as i64;
                }
            }
            FaultClass::Abrupt | FaultClass::Fleet => {}
        }
        if scenario.class() != FaultClass::Fleet && f.fail_ms + repair_delay < end_ms {
            f.repaired_ms = Some(f.fail_ms + repair_delay);
        }
        f
    }

    fn in_episode(&self, t: i64) -> bool {
        self.episodes.iter().any(|(a, b)| t >= *a && t < *b)
    }

    /// The fault's effect at `t` (none before it starts or after its repair).
    pub fn effect(&self, base: &Base, t: i64) -> Effect {
        let mut e = Effect::default();
        if t < self.start_ms || self.repaired_ms.is_some_and(|r| t >= r) {
            return e;
        }
        let spec = |m: &str| operating_spec(base.model, m);
        let p = if self.span_ms > 0 {
            (t - self.start_ms) as f64 / self.span_ms as f64
        } else {
            0.0
        };
        match self.scenario {
            Scenario::LaserDecay => {
                // Reaches the lower limit at p = 1.
                let level = base.level("laser_power_mw", self.start_ms);
                let limit = spec("laser_power_mw").0.unwrap_or(level * 0.85);
                e.laser_mul = 1.0 - (1.0 - limit / level) * p.powf(1.3);
            }
            Scenario::FocusDrift => {
                let level = base.level("focus_fwhm_px", t);
                let limit = spec("focus_fwhm_px").1.unwrap_or(3.5);
                e.fwhm_add = (limit - level) * p.powf(1.3);
                e.z_add = 1.5 * p;
            }
            Scenario::HeaterInstability => {
                let limit = spec("flowcell_temp_deviation_c").1.unwrap_or(1.5);
                e.heater_amp = 0.05 + (limit - 0.05) * p.powf(1.5);
            }
            Scenario::ChillerInstability => {
                let level = base.level("chiller_temp_c", self.start_ms);
                let limit = spec("chiller_temp_c").0.unwrap_or(2.0);
                e.chiller_amp = 0.05 + (level - limit - 0.05) * p.powf(1.5);
                // Past its limit the loop loses hold and the reagents warm.
                e.chiller_add = 3.0 * (p - 1.0).max(0.0);
            }
            Scenario::PumpWear => {
                let level = base.level("flow_rate_ul_min", t);
                let limit = spec("flow_rate_ul_min").0.unwrap_or(level * 0.8);
                e.flow_mul = 1.0 - (1.0 - limit / level) * p.powf(1.2);
                e.pressure_add = -3.0 * p;
            }
            Scenario::Clog => {
                let level = base.level("fluidics_pressure_kpa", t);
                let limit = spec("fluidics_pressure_kpa").1.unwrap_or(140.0);
                e.pressure_add = (limit - level) * p.powf(1.5);
                e.flow_mul = 1.0 - 0.04 * p;
            }
            Scenario::StageWear => {
                let level = base.level("stage_position_error_um", t);
                let limit = spec("stage_position_error_um").1.unwrap_or(3.0);
                e.pos_add = (limit - level) * p.powf(1.4);
                e.current_add = 0.3 * p;
            }
            Scenario::Leak => {
                if t >= self.fail_ms {
                    e.pressure_add = -38.0;
                    e.flow_mul = 0.7;
                } else if self.in_episode(t) {
                    e.pressure_add = -12.0;
                }
            }
            Scenario::StageCrash => {
                e.pos_add = 3.5;
                e.current_add = 0.6;
            }
            Scenario::IntermittentLaser => {
                if self.in_episode(t) {
                    e.laser_mul = 0.7;
                }
            }
            Scenario::BadReagentLot | Scenario::SoftwareRegression => {}
        }
        e
    }

    /// Whether the fault's defining metric is outside its spec at `t` (noise-free, an
    /// oscillation counted at its peaks).
    pub fn out_of_spec(&self, base: &Base, t: i64) -> bool {
        let e = self.effect(base, t);
        let spec = |m: &str| operating_spec(base.model, m);
        let below = |m: &str, v: f64| spec(m).0.is_some_and(|lo| v < lo);
        let above = |m: &str, v: f64| spec(m).1.is_some_and(|hi| v > hi);
        match self.scenario {
            Scenario::LaserDecay | Scenario::IntermittentLaser => below(
                "laser_power_mw",
                base.level("laser_power_mw", t) * e.laser_mul,
            ),
            Scenario::FocusDrift => {
                above("focus_fwhm_px", base.level("focus_fwhm_px", t) + e.fwhm_add)
            }
            Scenario::HeaterInstability => above("flowcell_temp_deviation_c", e.heater_amp),
            Scenario::ChillerInstability => {
                let mean = base.level("chiller_temp_c", t) + e.chiller_add;
                below("chiller_temp_c", mean - e.chiller_amp)
                    || above("chiller_temp_c", mean + e.chiller_amp)
            }
            Scenario::PumpWear => below(
                "flow_rate_ul_min",
                base.level("flow_rate_ul_min", t) * e.flow_mul,
            ),
            Scenario::Clog | Scenario::Leak => {
                let v = base.level("fluidics_pressure_kpa", t) + e.pressure_add;
                below("fluidics_pressure_kpa", v) || above("fluidics_pressure_kpa", v)
            }
            Scenario::StageWear | Scenario::StageCrash => above(
                "stage_position_error_um",
                base.level("stage_position_error_um", t) + e.pos_add,
            ),
            Scenario::BadReagentLot | Scenario::SoftwareRegression => t >= self.start_ms,
        }
    }

    /// The first moment (one-minute resolution) the defining metric is out of spec, searched
    /// from the start to two spans past the failure.
    pub fn spec_exit(&self, base: &Base) -> Option<i64> {
        let until = self.fail_ms.max(self.start_ms + 2 * self.span_ms) + 48 * HOUR;
        let until = self.repaired_ms.map_or(until, |r| until.min(r));
        let mut t = self.start_ms;
        while t <= until {
            if self.out_of_spec(base, t) {
                return Some(t);
            }
            t += MINUTE;
        }
        None
    }
}
