//! Anomaly detector: reads `features`, writes `anomalies`. Each instrument has its own baseline
//! per metric (exponentially weighted mean and variance of window levels, learnt over a warm-up
//! of windows), so a laser that is weak but stable on one instrument is not an anomaly while a
//! drop on another is.
//!
//! Rules, per feature window: `baseline_shift` when the level departs from the baseline by at
//! least `z_threshold` baseline deviations (the deviation has a floor proportional to the spec
//! width, so a very quiet sensor does not alert on noise); `out_of_spec` when at least half the
//! window's samples are outside the operating spec. An anomalous window does not update the
//! baseline. An (instrument, metric) episode emits one `ACTIVE` record when it starts and another
//! only when its severity rises; it emits `CLEARED` after `clear_windows` normal windows in a row.
//!
//! State: baselines and open episodes per instrument, persisted to `anomaly-detector.changelog`.

use std::collections::BTreeMap;

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_model::{Anomaly, AnomalySeverity, AnomalyState, Feature};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};
use serde::{Deserialize, Serialize};

/// Anomaly-detector settings.
#[derive(Debug, Clone, Args)]
pub struct AnomalyConfig {
    /// Windows used to learn a baseline before the baseline rule may fire.
    #[arg(long, env = "ANOMALY_WARMUP_WINDOWS", default_value_t = 6)]
    pub warmup_windows: u32,
    /// Deviation, in baseline standard deviations, that makes a window anomalous.
    #[arg(long, env = "ANOMALY_Z_THRESHOLD", default_value_t = 5.0)]
    pub z_threshold: f64,
    /// Normal windows in a row that clear an episode.
    #[arg(long, env = "ANOMALY_CLEAR_WINDOWS", default_value_t = 3)]
    pub clear_windows: u32,
    /// Weight of a new window in the baseline after warm-up (0..1).
    #[arg(long, env = "ANOMALY_EWMA_ALPHA", default_value_t = 0.05)]
    pub ewma_alpha: f64,
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
        if self.warmup_windows < 2 {
            return bad("warmup_windows", "must be at least 2");
        }
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return bad("z_threshold", "must be a positive number");
        }
        if self.clear_windows == 0 {
            return bad("clear_windows", "must be at least 1");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha < 1.0) {
            return bad("ewma_alpha", "must be between 0 and 1");
        }
        Ok(())
    }
}

/// Baseline and episode of one metric of one instrument.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MetricState {
    windows: u32,
    mean: f64,
    var: f64,
    episode: Option<Episode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Episode {
    severity: AnomalySeverity,
    normal_in_a_row: u32,
}

/// The anomaly-detector processor.
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    instruments: BTreeMap<String, BTreeMap<String, MetricState>>,
}

/// Smallest baseline deviation used for scoring: a share of the spec width or of the level.
fn deviation_floor(f: &Feature, mean: f64) -> f64 {
    let floor = match (f.spec_low, f.spec_high) {
        (Some(lo), Some(hi)) => (hi - lo) * 0.05,
        (Some(l), None) | (None, Some(l)) => (l - mean).abs() * 0.1,
        (None, None) => mean.abs() * 0.02,
    };
    floor.max(mean.abs() * 0.005).max(1e-6)
}

impl AnomalyDetector {
    /// A detector with the given settings.
    pub fn new(cfg: AnomalyConfig) -> Self {
        AnomalyDetector {
            cfg,
            instruments: BTreeMap::new(),
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
        let m = self
            .instruments
            .entry(f.instrument_serial.clone())
            .or_default()
            .entry(f.metric.clone())
            .or_default();
        let warmed = m.windows >= cfg.warmup_windows;
        let std = m.var.sqrt().max(deviation_floor(&f, m.mean));
        // A metric with a limit on one side only gets worse in one direction: lower FWHM or
        // error rate, higher %Q30, is an improvement, not a fault.
        let deviation = match (f.spec_low, f.spec_high) {
            (None, Some(_)) => (f.level - m.mean).max(0.0),
            (Some(_), None) => (m.mean - f.level).max(0.0),
            _ => (f.level - m.mean).abs(),
        };
        let z = if warmed { deviation / std } else { 0.0 };
        let out_of_spec = f.fraction_out_of_spec >= 0.5;
        let shifted = z >= cfg.z_threshold;
        let anomalous = out_of_spec || shifted;
        let severity = if f.fraction_out_of_spec >= 0.8 || z >= 4.0 * cfg.z_threshold {
            AnomalySeverity::CRITICAL
        } else if out_of_spec || z >= 2.0 * cfg.z_threshold {
            AnomalySeverity::HIGH
        } else if z >= 1.5 * cfg.z_threshold {
            AnomalySeverity::MEDIUM
        } else {
            AnomalySeverity::LOW
        };
        let record = |state: AnomalyState,
                      rule: &str,
                      score: f64,
                      severity: AnomalySeverity,
                      m: &MetricState| Anomaly {
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
            baseline_level: m.mean,
            baseline_stddev: m.var.sqrt(),
            slope_per_hour: f.slope_per_hour,
            fraction_out_of_spec: f.fraction_out_of_spec,
            spec_low: f.spec_low,
            spec_high: f.spec_high,
            software_version: f.software_version.clone(),
            reagent_kit_lot: f.reagent_kit_lot.clone(),
        };
        if anomalous {
            let rule = if shifted {
                "baseline_shift"
            } else {
                "out_of_spec"
            };
            let score = z.max(if out_of_spec { cfg.z_threshold } else { 0.0 });
            let rises = m.episode.as_ref().is_none_or(|e| severity > e.severity);
            if rises {
                out.emit(
                    TopicRole::Anomalies,
                    &f.instrument_serial,
                    &record(AnomalyState::ACTIVE, rule, score, severity, m),
                )?;
                m.episode = Some(Episode {
                    severity,
                    normal_in_a_row: 0,
                });
            } else if let Some(e) = m.episode.as_mut() {
                e.normal_in_a_row = 0;
            }
        } else {
            // Learn: plain mean and variance during warm-up, then exponentially weighted.
            m.windows += 1;
            let alpha = if m.windows <= cfg.warmup_windows {
                1.0 / m.windows as f64
            } else {
                cfg.ewma_alpha
            };
            let delta = f.level - m.mean;
            m.mean += alpha * delta;
            m.var = (1.0 - alpha) * (m.var + alpha * delta * delta);
            if let Some(e) = m.episode.as_mut() {
                e.normal_in_a_row += 1;
                if e.normal_in_a_row >= cfg.clear_windows {
                    m.episode = None;
                    out.emit(
                        TopicRole::Anomalies,
                        &f.instrument_serial,
                        &record(
                            AnomalyState::CLEARED,
                            "cleared",
                            0.0,
                            AnomalySeverity::LOW,
                            m,
                        ),
                    )?;
                }
            }
        }
        out.state_changed(&f.instrument_serial);
        Ok(())
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        self.instruments
            .get(key)
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| StageError::Snapshot {
                key: key.into(),
                message: e.to_string(),
            })
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let s = serde_json::from_slice(state).map_err(|e| StageError::State {
            key: key.into(),
            message: e.to_string(),
        })?;
        self.instruments.insert(key.to_string(), s);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.instruments.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.instruments.keys().cloned().collect()
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
            f.spec_low = None;
            f.spec_high = Some(3.5);
            encode(&f).unwrap()
        };
        // The same shift of 0.4 px from the same baseline: down (sharper) is quiet, up alerts.
        let run = |shifted: f64| {
            let mut d = AnomalyDetector::default();
            let mut out = Vec::new();
            for i in 0..10 {
                out.extend(feed(&mut d, &one_sided(i, 3.0)));
            }
            for i in 10..13 {
                out.extend(feed(&mut d, &one_sided(i, shifted)));
            }
            out
        };
        assert!(run(2.6).is_empty(), "sharper focus is not a fault");
        assert_eq!(run(3.4).len(), 1, "worse focus is");
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
