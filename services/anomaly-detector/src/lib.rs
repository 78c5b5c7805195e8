//! Anomaly detector: reads `features`, writes `anomalies`. Each metric of each instrument is one
//! series with its own state ([`model::SeriesState`]): a baseline that starts from the fleet prior
//! and learns the instrument, a CUSUM, a spread baseline and a trend-to-limit forecast.
//!
//! States, per (instrument, metric) episode: `PREDICTED` when the trend is forecast to leave the
//! operating spec within `horizon_hours` (re-sent when the earliest crossing moves at least a
//! fifth closer, also during an ACTIVE episode, so maintenance gets the date); `ACTIVE` when a rule
//! for a present anomaly fires (`out_of_spec`: half the window out of spec; `baseline_shift`:
//! `z_threshold` baseline deviations in the bad direction; `cusum_shift`; `variance_rise`;
//! `swing_near_limit`), re-sent only when the severity rises; `CLEARED` after `clear_windows`
//! calm windows in a row (deviation within the CUSUM slack, spread below half its threshold, no
//! forecast standing: hysteresis, so a swinging loop does not flap). A PREDICTED record carries
//! the forecast crossing and its interval; its severity follows the time left (HIGH within a
//! day, MEDIUM within three, LOW otherwise).
//!
//! `anomaly-detector score` runs the same series code over a CSV `timestamp,value` on stdin
//! (see [`score`]).
//!
//! Delivery: a pure processor; the runtime gives it exactly-once input and output. State:
//! series per instrument, persisted to `anomaly-detector.changelog` with every batch and restored
//! before the first record after a restart or rebalance, so output does not depend on restarts.
//! A feature that does not decode is a dead letter (the runtime's `decode_or_reject`).

pub mod model;
pub mod score;

use std::collections::BTreeMap;

use clap::Args;
use seqmon_model::specs::{self, nominal, MetricKind};
use seqmon_model::topics::TopicRole;
use seqmon_model::{Anomaly, AnomalySeverity, AnomalyState, Feature};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};
use serde::{Deserialize, Serialize};

use crate::model::{Observation, Prediction, SeriesState, Verdict};

const HOUR_MS: i64 = 3_600_000;

/// Anomaly-detector settings.
#[derive(Debug, Clone, Args)]
pub struct AnomalyConfig {
    /// Windows learnt plainly (equal weights) before the baseline switches to `ewma_alpha`; a
    /// metric without a fleet prior is scored only after them.
    #[arg(long, env = "ANOMALY_WARMUP_WINDOWS", default_value_t = 36)]
    pub warmup_windows: u32,
    /// Deviation, in baseline standard deviations, that makes a window anomalous.
    #[arg(long, env = "ANOMALY_Z_THRESHOLD", default_value_t = 5.0)]
    pub z_threshold: f64,
    /// Normal windows in a row that clear an episode.
    #[arg(long, env = "ANOMALY_CLEAR_WINDOWS", default_value_t = 3)]
    pub clear_windows: u32,
    /// Weight of a new window in the baseline after warm-up (0..1); small, so the baseline
    /// follows an instrument over days, not a fault over hours.
    #[arg(long, env = "ANOMALY_EWMA_ALPHA", default_value_t = 0.003)]
    pub ewma_alpha: f64,
    /// CUSUM slack, in baseline deviations per window.
    #[arg(long, env = "ANOMALY_CUSUM_SLACK", default_value_t = 1.5)]
    pub cusum_slack: f64,
    /// CUSUM alarm threshold.
    #[arg(long, env = "ANOMALY_CUSUM_THRESHOLD", default_value_t = 15.0)]
    pub cusum_threshold: f64,
    /// A window's spread this many times its baseline spread is a `variance_rise`.
    #[arg(long, env = "ANOMALY_SPREAD_FACTOR", default_value_t = 4.0)]
    pub spread_factor: f64,
    /// A window's spread this many times the fleet's typical spread for the model and metric
    /// is a `variance_rise` too (an instrument that arrives already unstable).
    #[arg(long, env = "ANOMALY_FLEET_SPREAD_FACTOR", default_value_t = 6.0)]
    pub fleet_spread_factor: f64,
    /// A window whose swing (√2 times its standard deviation, a sine's peak) takes this share of
    /// the room between its level and the nearest spec limit is a `swing_near_limit`.
    #[arg(long, env = "ANOMALY_HEADROOM_SHARE", default_value_t = 0.5)]
    pub headroom_share: f64,
    /// Half-life of the trend line's memory, hours of event time.
    #[arg(long, env = "ANOMALY_TREND_HALF_LIFE_HOURS", default_value_t = 24.0)]
    pub trend_half_life_hours: f64,
    /// Hourly points a trend line needs before it may forecast: a full day, so a daily cycle
    /// cannot pass for a trend.
    #[arg(long, env = "ANOMALY_TREND_MIN_HOURS", default_value_t = 24)]
    pub trend_min_hours: u32,
    /// Slope over its standard error needed for a forecast.
    #[arg(long, env = "ANOMALY_TREND_Z", default_value_t = 5.0)]
    pub trend_z: f64,
    /// Width of the crossing interval, in slope standard errors each side.
    #[arg(long, env = "ANOMALY_INTERVAL_Z", default_value_t = 2.0)]
    pub interval_z: f64,
    /// A forecast stands when the interval's earliest crossing is within this many hours.
    #[arg(long, env = "ANOMALY_HORIZON_HOURS", default_value_t = 168.0)]
    pub horizon_hours: f64,
    /// Hours in a row without a forecast that withdraw a standing one.
    #[arg(long, env = "ANOMALY_PREDICTION_CLEAR_HOURS", default_value_t = 6)]
    pub prediction_clear_hours: u32,
}

impl Default for AnomalyConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl AnomalyConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |id: &str, message: &str| Err(ConfigError::of::<Self>(id, message));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.warmup_windows < 2 {
            return bad("warmup_windows", "must be at least 2");
        }
        if !positive(self.z_threshold) {
            return bad("z_threshold", "must be a positive number");
        }
        if self.clear_windows == 0 {
            return bad("clear_windows", "must be at least 1");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha < 1.0) {
            return bad("ewma_alpha", "must be between 0 and 1");
        }
        if !(self.cusum_slack.is_finite() && self.cusum_slack >= 0.0) {
            return bad("cusum_slack", "must be a number >= 0");
        }
        if !positive(self.cusum_threshold) {
            return bad("cusum_threshold", "must be a positive number");
        }
        if !(self.spread_factor.is_finite() && self.spread_factor > 1.0) {
            return bad("spread_factor", "must be a number > 1");
        }
        if !(self.fleet_spread_factor.is_finite() && self.fleet_spread_factor > 1.0) {
            return bad("fleet_spread_factor", "must be a number > 1");
        }
        if !(self.headroom_share > 0.0 && self.headroom_share <= 1.0) {
            return bad("headroom_share", "must be in (0, 1]");
        }
        if !positive(self.trend_half_life_hours) {
            return bad("trend_half_life_hours", "must be a positive number");
        }
        if self.trend_min_hours < 3 {
            return bad("trend_min_hours", "must be at least 3");
        }
        if !positive(self.trend_z) {
            return bad("trend_z", "must be a positive number");
        }
        if !(self.interval_z.is_finite() && self.interval_z >= 0.0) {
            return bad("interval_z", "must be a number >= 0");
        }
        if !positive(self.horizon_hours) {
            return bad("horizon_hours", "must be a positive number");
        }
        if self.prediction_clear_hours == 0 {
            return bad("prediction_clear_hours", "must be at least 1");
        }
        Ok(())
    }
}

/// A series and its open episode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MetricState {
    /// Defaulted when restoring a state written before the series model existed: the baseline
    /// then starts again from the fleet prior.
    #[serde(default)]
    series: SeriesState,
    episode: Option<Episode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Episode {
    severity: AnomalySeverity,
    /// Whether only a forecast stands (no present-anomaly rule has fired).
    #[serde(default)]
    predicted_only: bool,
    /// Earliest crossing last sent, for a PREDICTED episode.
    #[serde(default)]
    earliest_ms: Option<i64>,
    normal_in_a_row: u32,
}

/// The typical window spread of one metric on one model, learnt from the normal windows of the
/// instruments on one input partition (its state key is `~fleet/<partition>`, so it lives on the
/// changelog partition of the instruments it was learnt from and moves with them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FleetSpread {
    /// Mean of the log spread (a geometric mean: one wild instrument moves it little).
    log_mean: f64,
    windows: u64,
    /// Series that finished their warm-up into it.
    contributors: u32,
}

/// Series that must have contributed before the fleet's spread is used.
const FLEET_MIN_CONTRIBUTORS: u32 = 3;
const FLEET_KEY_PREFIX: &str = "~fleet/";

/// The anomaly-detector processor.
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    instruments: BTreeMap<String, BTreeMap<String, MetricState>>,
    /// Per input partition, per "model/metric".
    fleet: BTreeMap<i32, BTreeMap<String, FleetSpread>>,
}

/// Severity of a present anomaly.
fn active_severity(v: &Verdict, f: &Feature, cfg: &AnomalyConfig) -> AnomalySeverity {
    // A window already touching its limit, or with less than a quarter of its baseline's room to
    // the limit left, is urgent however small its deviation looks.
    let base = v.baseline.0;
    let little_room = |limit: Option<f64>| {
        limit.is_some_and(|l| {
            let room = (base - l).abs();
            room > 0.0 && (f.level - l) * (base - l).signum() < 0.25 * room
        })
    };
    let near_limit = little_room(f.spec_low) || little_room(f.spec_high);
    if f.fraction_out_of_spec >= 0.8 || v.z >= 4.0 * cfg.z_threshold {
        AnomalySeverity::CRITICAL
    } else if v.out_of_spec
        || f.fraction_out_of_spec > 0.0
        || near_limit
        || v.z >= 2.0 * cfg.z_threshold
    {
        AnomalySeverity::HIGH
    } else if v.z >= 1.5 * cfg.z_threshold {
        AnomalySeverity::MEDIUM
    } else {
        AnomalySeverity::LOW
    }
}

/// Severity of a forecast, from the time left to its earliest crossing.
fn predicted_severity(p: &Prediction, now_ms: i64) -> AnomalySeverity {
    let hours_left = (p.earliest_ms - now_ms) as f64 / HOUR_MS as f64;
    if hours_left <= 24.0 {
        AnomalySeverity::HIGH
    } else if hours_left <= 72.0 {
        AnomalySeverity::MEDIUM
    } else {
        AnomalySeverity::LOW
    }
}

impl AnomalyDetector {
    /// A detector with the given settings.
    pub fn new(cfg: AnomalyConfig) -> Self {
        AnomalyDetector {
            cfg,
            instruments: BTreeMap::new(),
            fleet: BTreeMap::new(),
        }
    }
}

impl Processor for AnomalyDetector {
    fn stage(&self) -> &'static str {
        "anomaly-detector"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Features
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Anomalies]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogAnomalyDetector)
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(f) = out.decode_or_reject::<Feature>(input) else {
            return Ok(());
        };
        let cfg = &self.cfg;
        let kind = specs::metric(&f.metric).map(|m| m.kind);
        let continuous =
            kind == Some(MetricKind::Sensor) && (f.spec_low.is_some() || f.spec_high.is_some());
        // Only continuous readings have a fleet spread worth keeping.
        let mut fleet = continuous.then(|| {
            self.fleet
                .entry(input.partition)
                .or_default()
                .entry(format!("{:?}/{}", f.instrument_model, f.metric))
                .or_default()
        });
        let m = self
            .instruments
            .entry(f.instrument_serial.clone())
            .or_default()
            .entry(f.metric.clone())
            .or_default();
        let v = m.series.observe(
            &Observation {
                end_ms: f.window_end_ms,
                level: f.level,
                variability: f.variability,
                fraction_out_of_spec: f.fraction_out_of_spec,
                spec: (f.spec_low, f.spec_high),
                prior: nominal(f.instrument_model, &f.metric),
                continuous,
                samples: u32::try_from(f.sample_count).unwrap_or(0),
                fleet_spread: fleet
                    .as_ref()
                    .filter(|fl| fl.contributors >= FLEET_MIN_CONTRIBUTORS)
                    .map(|fl| fl.log_mean.exp()),
                count: kind == Some(MetricKind::Count),
                baseline_rules: kind != Some(MetricKind::Environment),
            },
            cfg,
            m.episode.as_ref().is_some_and(|e| !e.predicted_only),
        );
        if let Some(fleet) = fleet.as_mut().filter(|_| v.learned && f.variability > 0.0) {
            if m.series.learnt_windows() == cfg.warmup_windows + 1 {
                fleet.contributors += 1;
            }
            fleet.windows += 1;
            let a = (1.0 / fleet.windows as f64).max(0.002);
            fleet.log_mean += a * (f.variability.ln() - fleet.log_mean);
            out.state_changed(&format!("{FLEET_KEY_PREFIX}{}", input.partition));
        }
        let record = |state: AnomalyState,
                      rule: &str,
                      score: f64,
                      severity: AnomalySeverity,
                      p: Option<&Prediction>| Anomaly {
            anomaly_id: format!("{}:{}:{}", f.instrument_serial, f.metric, f.window_start_ms),
            instrument_serial: f.instrument_serial.clone(),
            instrument_model: f.instrument_model,
            subsystem: f.subsystem,
            metric: f.metric.clone(),
            state,
            score,
            severity,
            rule: rule.to_string(),
            window_start_ms: f.window_start_ms,
            window_end_ms: f.window_end_ms,
            observed_level: f.level,
            baseline_level: v.baseline.0,
            baseline_stddev: v.baseline.1,
            slope_per_hour: f.slope_per_hour,
            fraction_out_of_spec: f.fraction_out_of_spec,
            spec_low: f.spec_low,
            spec_high: f.spec_high,
            software_version: f.software_version.clone(),
            reagent_kit_lot: f.reagent_kit_lot.clone(),
            predicted_limit_ms: p.map(|p| p.crossing_ms),
            predicted_limit_earliest_ms: p.map(|p| p.earliest_ms),
            predicted_limit_latest_ms: p.and_then(|p| p.latest_ms),
        };
        if v.anomalous() {
            let severity = active_severity(&v, &f, cfg);
            let score =
                v.z.max(v.cusum / cfg.cusum_threshold * cfg.z_threshold)
                    .max(if v.out_of_spec || v.spread || v.swing {
                        cfg.z_threshold
                    } else {
                        0.0
                    });
            let rises = m
                .episode
                .as_ref()
                .is_none_or(|e| e.predicted_only || severity > e.severity);
            if rises {
                out.emit(
                    TopicRole::Anomalies,
                    &f.instrument_serial,
                    &record(
                        AnomalyState::ACTIVE,
                        v.rule(),
                        score,
                        severity,
                        v.prediction.as_ref(),
                    ),
                )?;
            }
            let e = m.episode.get_or_insert(Episode {
                severity,
                predicted_only: false,
                earliest_ms: None,
                normal_in_a_row: 0,
            });
            e.severity = e.severity.max(severity);
            e.predicted_only = false;
            e.normal_in_a_row = 0;
        }
        // A forecast goes out when it is new to the episode or its earliest crossing came at
        // least a fifth closer, also during an ACTIVE episode, so the maintenance entry gets the
        // predicted date either way.
        if let Some(p) = v.prediction {
            let severity = predicted_severity(&p, f.window_end_ms);
            let send = match &m.episode {
                None => true,
                Some(e) => {
                    let closer = e.earliest_ms.is_none_or(|was| {
                        let left_was = (was - f.window_end_ms).max(0);
                        p.earliest_ms < was - left_was / 5
                    });
                    closer || (e.predicted_only && severity > e.severity)
                }
            };
            if send {
                out.emit(
                    TopicRole::Anomalies,
                    &f.instrument_serial,
                    &record(
                        AnomalyState::PREDICTED,
                        "trend_to_limit",
                        p.t_stat,
                        severity,
                        Some(&p),
                    ),
                )?;
            }
            let e = m.episode.get_or_insert(Episode {
                severity,
                predicted_only: true,
                earliest_ms: None,
                normal_in_a_row: 0,
            });
            if send {
                e.earliest_ms = Some(p.earliest_ms);
                e.severity = e.severity.max(severity);
            }
            e.normal_in_a_row = 0;
        } else if !v.anomalous() {
            if let Some(e) = m.episode.as_mut() {
                if v.calm(cfg) {
                    e.normal_in_a_row += 1;
                } else {
                    e.normal_in_a_row = 0;
                }
                if e.normal_in_a_row >= cfg.clear_windows {
                    m.episode = None;
                    m.series.reset_change();
                    out.emit(
                        TopicRole::Anomalies,
                        &f.instrument_serial,
                        &record(
                            AnomalyState::CLEARED,
                            "cleared",
                            0.0,
                            AnomalySeverity::LOW,
                            None,
                        ),
                    )?;
                }
            }
        }
        out.state_changed(&f.instrument_serial);
        Ok(())
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        let fail = |e: serde_json::Error| StageError::Snapshot {
            key: key.into(),
            message: e.to_string(),
        };
        if let Some(p) = key.strip_prefix(FLEET_KEY_PREFIX) {
            let p: i32 = p.parse().map_err(|_| StageError::Snapshot {
                key: key.into(),
                message: "fleet key without a partition".into(),
            })?;
            return self
                .fleet
                .get(&p)
                .map(serde_json::to_vec)
                .transpose()
                .map_err(fail);
        }
        self.instruments
            .get(key)
            .map(serde_json::to_vec)
            .transpose()
            .map_err(fail)
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let fail = |message: String| StageError::State {
            key: key.into(),
            message,
        };
        if let Some(p) = key.strip_prefix(FLEET_KEY_PREFIX) {
            let p: i32 = p
                .parse()
                .map_err(|_| fail("fleet key without a partition".into()))?;
            let s = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
            self.fleet.insert(p, s);
            return Ok(());
        }
        let s = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
        self.instruments.insert(key.to_string(), s);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.instruments.clear();
        self.fleet.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.instruments
            .keys()
            .cloned()
            .chain(self.fleet.keys().map(|p| format!("{FLEET_KEY_PREFIX}{p}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{decode, encode, InstrumentModel, Subsystem};
    use seqmon_processor::transplant_state;

    fn feature(i: i64, level: f64, out_of_spec: f64) -> Vec<u8> {
        encode(&Feature {
            feature_id: format!("f{i}"),
            instrument_serial: "A00001".into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            subsystem: Subsystem::OPTICAL,
            metric: "laser_power_mw".into(),
            window_start_ms: i * 300_000,
            window_end_ms: (i + 1) * 300_000,
            sample_count: 10,
            level,
            slope_per_hour: 0.0,
            variability: 1.0,
            min: level,
            max: level,
            fraction_out_of_spec: out_of_spec,
            spec_low: Some(425.0),
            spec_high: Some(575.0),
            run_id: None,
            software_version: None,
            reagent_kit_lot: None,
        })
        .unwrap()
    }

    fn feed(d: &mut AnomalyDetector, bytes: &[u8]) -> Vec<Anomaly> {
        let env = Envelope {
            key: Some(b"A00001"),
            value: bytes,
            topic: TopicRole::Features.spec().name,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        };
        let mut out = Emitter::default();
        d.process(&env, &mut out).unwrap();
        out.take()
            .0
            .iter()
            .map(|e| decode(&e.value).unwrap())
            .collect()
    }

    #[test]
    fn noise_is_quiet_a_shift_opens_once_and_recovery_clears() {
        let mut d = AnomalyDetector::default();
        let mut all = Vec::new();
        for i in 0..20 {
            all.extend(feed(&mut d, &feature(i, 500.0 + (i % 3) as f64, 0.0)));
        }
        assert!(all.is_empty(), "noise: {all:?}");
        for i in 20..25 {
            all.extend(feed(&mut d, &feature(i, 440.0, 0.0)));
        }
        assert_eq!(all.len(), 1, "one ACTIVE for the episode: {all:?}");
        assert_eq!(
            (all[0].state, all[0].rule.as_str()),
            (AnomalyState::ACTIVE, "baseline_shift")
        );
        let worse = feed(&mut d, &feature(25, 400.0, 1.0));
        assert_eq!(worse.len(), 1, "severity rose");
        assert_eq!(worse[0].severity, AnomalySeverity::CRITICAL);
        let mut cleared = Vec::new();
        for i in 26..30 {
            cleared.extend(feed(&mut d, &feature(i, 500.0, 0.0)));
        }
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].state, AnomalyState::CLEARED);
    }

    #[test]
    fn improvement_on_a_one_sided_metric_is_not_an_anomaly() {
        let one_sided = |i: i64, level: f64| {
            let mut f: Feature = decode(&feature(i, level, 0.0)).unwrap();
            f.metric = "focus_fwhm_px".into();
            f.variability = 0.03;
            f.spec_low = None;
            f.spec_high = Some(3.5);
            encode(&f).unwrap()
        };
        // The same shift of 0.6 px from the same baseline: down (sharper) is quiet, up alerts.
        let run = |shifted: f64| {
            let mut d = AnomalyDetector::default();
            let mut out = Vec::new();
            for i in 0..10 {
                out.extend(feed(&mut d, &one_sided(i, 2.5)));
            }
            for i in 10..13 {
                out.extend(feed(&mut d, &one_sided(i, shifted)));
            }
            out
        };
        assert!(run(1.9).is_empty(), "sharper focus is not a fault");
        assert_eq!(run(3.1).len(), 1, "worse focus is");
    }

    #[test]
    fn a_slow_decay_is_predicted_before_it_leaves_spec_and_the_forecast_is_updated_not_repeated() {
        // Laser power falling 0.3 mW an hour from 500 mW: the 425 mW limit is 250 hours away.
        let mut d = AnomalyDetector::default();
        let mut out = Vec::new();
        for i in 0..(12 * 240) {
            let h = i as f64 / 12.0;
            let wobble = ((i * 7919) % 11) as f64 / 11.0 - 0.5;
            out.extend(feed(&mut d, &feature(i, 500.0 - 0.3 * h + wobble, 0.0)));
        }
        // The drift itself shows first (a CUSUM shift: the baseline did not follow it), then the
        // forecast with its crossing.
        assert!(out[0].window_end_ms < 100 * HOUR_MS, "{:?}", out[0]);
        let first = out
            .iter()
            .find(|a| a.state == AnomalyState::PREDICTED)
            .expect("a forecast");
        assert_eq!(first.rule, "trend_to_limit");
        let crossing_ms = 250 * HOUR_MS;
        let (earliest, central) = (
            first.predicted_limit_earliest_ms.unwrap(),
            first.predicted_limit_ms.unwrap(),
        );
        assert!(earliest <= central, "{first:?}");
        assert!(
            first.window_end_ms < crossing_ms - 48 * HOUR_MS,
            "forecast only at {} h",
            first.window_end_ms / HOUR_MS
        );
        // The central estimate is within a day of the true crossing.
        assert!((central - crossing_ms).abs() < 24 * HOUR_MS, "{first:?}");
        // Later forecasts only when the crossing comes materially closer: a handful, not one an hour.
        let predicted = out
            .iter()
            .filter(|a| a.state == AnomalyState::PREDICTED)
            .count();
        assert!(predicted < 12, "{predicted} PREDICTED records");
        assert!(
            out.iter().all(|a| a.state != AnomalyState::CLEARED),
            "the forecast never lapsed"
        );
    }

    #[test]
    fn restart_from_snapshot_gives_the_same_output() {
        let inputs: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                feature(
                    i,
                    if i > 25 {
                        430.0
                    } else {
                        500.0 + (i % 4) as f64
                    },
                    0.0,
                )
            })
            .collect();
        let mut straight = AnomalyDetector::default();
        let expected: Vec<Anomaly> = inputs.iter().flat_map(|b| feed(&mut straight, b)).collect();
        let mut first = AnomalyDetector::default();
        let mut got: Vec<Anomaly> = inputs[..22]
            .iter()
            .flat_map(|b| feed(&mut first, b))
            .collect();
        let mut second = AnomalyDetector::default();
        transplant_state(&first, &mut second).unwrap();
        got.extend(inputs[22..].iter().flat_map(|b| feed(&mut second, b)));
        assert_eq!(expected.len(), 1);
        assert_eq!(got, expected);
    }
}
