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
//! series per instrument, persisted to `anomaly-detector.changelog` with every batch (one Avro
//! record per changed series, fleet spread or membership set: see [`state`]) and restored
//! before the first record after a restart or rebalance, so output does not depend on restarts.
//! A changelog record that does not restore is quarantined by the runtime (that piece starts
//! afresh); one of a state format this build does not read stops the stage.
//! A feature that does not decode is a dead letter (the runtime's `decode_or_reject`).
//!
//! Cohort signals: besides each instrument's MEMBER and DEVIATION signals (keyed by cohort),
//! each input partition sends its low watermark every `cohort_watermark_minutes` (5) of event
//! time, once it has seen an hour of it since its state was rebuilt, to every partition of
//! `cohort.signals` (WATERMARK, keyed `~watermark/<n>` so that Kafka's murmur2 partitioning puts
//! one in each; the topic is taken to have as many partitions as `features`). Roll the cohort
//! analyzer out first: one older than cohort_signal v2 dead-letters WATERMARK signals.

pub mod model;
pub mod score;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use seqmon_model::partitioning;
use seqmon_model::specs::{self, nominal, MetricKind};
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    encode, Anomaly, AnomalyDetectorState, AnomalySeverity, AnomalyState, CohortKind,
    CohortMembership, CohortSignal, CohortSignalKind, DeadLetterReason, DetectorEpisode,
    DetectorFleetSpread, DetectorSeries, Feature, InstrumentModel, RunPhase, Subsystem,
};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError};
use serde::{Deserialize, Serialize};

use crate::model::{Observation, Prediction, SeriesState, Verdict};
use crate::state::{StateKey, COHORTS_KEY_PREFIX};

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
    /// Minutes of event time between an instrument's membership signals to each of its cohorts
    /// (lots, software version) on `cohort.signals`; a new lot or version is signalled at once.
    #[arg(long, env = "ANOMALY_COHORT_HEARTBEAT_MINUTES", default_value_t = 60)]
    pub cohort_heartbeat_minutes: i64,
    /// Minutes of event time between a partition's watermark broadcasts to every partition of
    /// `cohort.signals`: how stale a cohort-analyzer partition without members from this one
    /// may see its progress, so how late a held deviation can go on (the feature window: the
    /// watermark moves no faster).
    #[arg(long, env = "ANOMALY_COHORT_WATERMARK_MINUTES", default_value_t = 5)]
    pub cohort_watermark_minutes: i64,
    /// Minutes of event time an instrument may fall behind the fastest of its partition and still
    /// hold back the low watermark cohort signals carry (beyond it, it is silent).
    #[arg(long, env = "ANOMALY_COHORT_LAG_MINUTES", default_value_t = 360)]
    pub cohort_lag_minutes: i64,
    /// Most a feature's window end may run ahead of its record's arrival (the raw record's
    /// broker receive time, carried by every stage), ms; a feature further ahead is a dead
    /// letter TIMESTAMP_FUTURE and moves no baseline or watermark.
    #[arg(long, env = "ANOMALY_MAX_EVENT_LEAD_MS", default_value_t = seqmon_processor::DEFAULT_MAX_EVENT_LEAD_MS)]
    pub max_event_lead_ms: i64,
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
        if !(0..=7 * 86_400_000).contains(&self.max_event_lead_ms) {
            return bad("max_event_lead_ms", "must be 0..=604800000 (7 days)");
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
        if !(1..=24 * 60).contains(&self.cohort_heartbeat_minutes) {
            return bad("cohort_heartbeat_minutes", "must be 1 to 1440 minutes");
        }
        if !(1..=24 * 60).contains(&self.cohort_watermark_minutes) {
            return bad("cohort_watermark_minutes", "must be 1 to 1440 minutes");
        }
        if !(1..=7 * 24 * 60).contains(&self.cohort_lag_minutes) {
            return bad("cohort_lag_minutes", "must be 1 to 10080 minutes (a week)");
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
    /// Cohort keys the episode's records go to (the first decides), fixed when it opens so its
    /// clearing reaches the cohorts its opening reached even after a new lot; empty: straight to
    /// `anomalies`.
    #[serde(default)]
    cohorts: Vec<String>,
}

/// The cohorts an instrument last told it belongs to: kind → (value, event time of the last
/// membership signal). State key `~cohorts/<serial>`, on the instrument's partition.
type Memberships = BTreeMap<CohortKind, (String, i64)>;

/// The latest window end of each instrument of one input partition, for the partition's low
/// watermark on cohort signals: features of an instrument that was silent or is catching up
/// come after other instruments' later ones, so the latest event time seen is no bound. Kept
/// in memory: after a restart it refills as instruments send (until a slow instrument is seen
/// again the low watermark may run ahead of it; the cohort analyzer then decides early, which
/// can add an instrument's own alert beside a fleet alert, never lose one).
#[derive(Debug, Default)]
struct Progress {
    latest: BTreeMap<String, i64>,
    order: BTreeSet<(i64, String)>,
    /// The first window end seen since the state was (re)built: until the partition's event
    /// time has moved on from it, its slower instruments may not have been seen yet.
    first_ms: Option<i64>,
    /// The watermark period (watermark ÷ heartbeat) last broadcast to every partition of
    /// `cohort.signals`.
    broadcast_period: Option<i64>,
}

impl Progress {
    fn observe(&mut self, serial: &str, t: i64) {
        self.first_ms.get_or_insert(t);
        match self.latest.get(serial) {
            Some(&old) if old >= t => return,
            Some(&old) => {
                self.order.remove(&(old, serial.to_string()));
            }
            None => {}
        }
        self.latest.insert(serial.to_string(), t);
        self.order.insert((t, serial.to_string()));
    }

    /// The slowest instrument's latest window end, leaving out those more than `lag_ms` behind
    /// the fastest.
    fn low_watermark(&self, lag_ms: i64) -> i64 {
        let Some((fastest, _)) = self.order.iter().next_back() else {
            return i64::MIN;
        };
        let floor = fastest.saturating_sub(lag_ms);
        self.order
            .range((floor, String::new())..)
            .next()
            .map_or(i64::MIN, |(t, _)| *t)
    }
}

/// The cohorts whose members share a cause of this metric's departures, in deciding order: a
/// run-quality figure is the reagent lot's or the flow cell's, an error rate the software's.
fn cohort_kinds(kind: Option<MetricKind>, subsystem: Subsystem) -> &'static [CohortKind] {
    match kind {
        Some(MetricKind::RunQuality) => &[CohortKind::REAGENT_KIT_LOT, CohortKind::FLOWCELL_LOT],
        Some(MetricKind::Count) if subsystem == Subsystem::SOFTWARE => {
            &[CohortKind::SOFTWARE_VERSION]
        }
        _ => &[],
    }
}

/// The value of a cohort kind in a feature's context.
fn cohort_value(f: &Feature, kind: CohortKind) -> Option<&str> {
    match kind {
        CohortKind::REAGENT_KIT_LOT => f.reagent_kit_lot.as_deref(),
        CohortKind::FLOWCELL_LOT => f.flowcell_lot.as_deref(),
        CohortKind::SOFTWARE_VERSION => f.software_version.as_deref(),
        CohortKind::UNKNOWN => None,
    }
    .filter(|v| !v.is_empty())
}

/// Sends an instrument's anomaly: straight to `anomalies`, or, for a metric a cohort may cause,
/// to each of its cohorts on `cohort.signals` (all count it, the first decides; see the cohort
/// analyzer).
fn send_anomaly(
    out: &mut Emitter,
    (partition, low_watermark): (i32, i64),
    cohorts: &[String],
    a: &Anomaly,
) -> Result<(), StageError> {
    let Some((first, rest)) = cohorts.split_first() else {
        return out.emit(TopicRole::Anomalies, &a.instrument_serial, a);
    };
    let bytes = encode(a)?;
    for (i, key) in std::iter::once(first).chain(rest).enumerate() {
        let Some((kind, value)) = CohortKind::parse_key(key) else {
            continue;
        };
        out.emit(
            TopicRole::CohortSignals,
            key,
            &CohortSignal {
                signal_id: format!(
                    "{key}:{}:{}:{}:{:?}",
                    a.instrument_serial, a.metric, a.window_end_ms, a.state
                ),
                kind,
                value: value.to_string(),
                instrument_serial: a.instrument_serial.clone(),
                instrument_model: a.instrument_model,
                event_time_ms: a.window_end_ms,
                source_partition: partition,
                source_watermark_ms: low_watermark,
                signal: CohortSignalKind::DEVIATION,
                count: true,
                decide: i == 0,
                route: if i == 0 { rest.to_vec() } else { Vec::new() },
                anomaly: Some(bytes.clone()),
            },
        )?;
    }
    Ok(())
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

/// The anomaly-detector processor.
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    instruments: BTreeMap<String, BTreeMap<String, MetricState>>,
    /// Per input partition, per "model/metric".
    fleet: BTreeMap<i32, BTreeMap<String, FleetSpread>>,
    /// Per instrument, the cohorts it last signalled.
    memberships: BTreeMap<String, Memberships>,
    /// Instruments and partitions restored from state format 1 records: their next change
    /// rewrites them as format 2 pieces and deletes the format 1 record (see [`state`]).
    legacy_instruments: BTreeSet<String>,
    legacy_fleet: BTreeSet<i32>,
    /// Per input partition, its instruments' progress (not persisted; see [`Progress`]).
    progress: BTreeMap<i32, Progress>,
    /// Partitions of `cohort.signals`, taken to be those of the input (`seqmon-admin
    /// create-topics` makes them alike); 0 outside Kafka (one partition: no broadcast needed).
    signal_partitions: u32,
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
    /// Restores a state format 1 record (JSON). Pieces already restored from format 2 records
    /// win (they are newer: format 1 records are deleted when their pieces are first written).
    fn restore_json(&mut self, key: StateKey<'_>, state: &[u8]) -> Result<(), String> {
        match key {
            StateKey::LegacyInstrument { serial } => {
                let all: BTreeMap<String, MetricState> =
                    serde_json::from_slice(state).map_err(|e| e.to_string())?;
                let held = self.instruments.entry(serial.to_string()).or_default();
                for (series, m) in all {
                    held.entry(series).or_insert(m);
                }
                self.legacy_instruments.insert(serial.to_string());
            }
            StateKey::LegacyFleet { partition } => {
                let all: BTreeMap<String, FleetSpread> =
                    serde_json::from_slice(state).map_err(|e| e.to_string())?;
                let held = self.fleet.entry(partition).or_default();
                for (entry, f) in all {
                    held.entry(entry).or_insert(f);
                }
                self.legacy_fleet.insert(partition);
            }
            StateKey::Cohorts { serial } => {
                let m: Memberships = serde_json::from_slice(state).map_err(|e| e.to_string())?;
                self.memberships.insert(serial.to_string(), m);
            }
            StateKey::Series { .. } | StateKey::Fleet { .. } => {
                return Err("a JSON state under a format 2 key".into())
            }
        }
        Ok(())
    }

    /// After a change to an instrument (and to its partition's fleet spreads): if either was
    /// restored from a format 1 record, every piece of it is written under its own key and the
    /// format 1 record deleted, in this same transaction.
    fn migrate_legacy(&mut self, serial: &str, fleet_partition: Option<i32>, out: &mut Emitter) {
        if self.legacy_instruments.remove(serial) {
            for series in self
                .instruments
                .get(serial)
                .into_iter()
                .flat_map(|m| m.keys())
            {
                out.state_changed(&StateKey::Series { serial, series }.render());
            }
            out.state_changed(&StateKey::LegacyInstrument { serial }.render());
        }
        let Some(partition) = fleet_partition.filter(|p| self.legacy_fleet.remove(p)) else {
            return;
        };
        for entry in self
            .fleet
            .get(&partition)
            .into_iter()
            .flat_map(|f| f.keys())
        {
            out.state_changed(&StateKey::Fleet { partition, entry }.render());
        }
        out.state_changed(&StateKey::LegacyFleet { partition }.render());
    }

    /// A detector with the given settings.
    pub fn new(cfg: AnomalyConfig) -> Self {
        AnomalyDetector {
            cfg,
            instruments: BTreeMap::new(),
            fleet: BTreeMap::new(),
            memberships: BTreeMap::new(),
            legacy_instruments: BTreeSet::new(),
            legacy_fleet: BTreeSet::new(),
            progress: BTreeMap::new(),
            signal_partitions: 0,
        }
    }

    /// Every `cohort_watermark_minutes` of event time, a partition's low watermark goes to every partition of
    /// `cohort.signals` (a WATERMARK signal keyed `~watermark/<n>`, the key chosen to land in
    /// that partition under the producers' murmur2 partitioning): a cohort-analyzer partition
    /// holding few cohorts may get no member of some detector partition, and would otherwise
    /// wait up to its source lag (hours) before ending any hold.
    fn broadcast_watermark(
        &mut self,
        source: (i32, i64),
        out: &mut Emitter,
    ) -> Result<(), StageError> {
        let (partition, watermark) = source;
        let partitions = self.signal_partitions;
        if partitions < 2 || watermark == i64::MIN {
            return Ok(());
        }
        let settle = self.cfg.cohort_heartbeat_minutes * 60_000;
        let every = self.cfg.cohort_watermark_minutes * 60_000;
        let progress = self.progress.entry(partition).or_default();
        // After a restart or rebalance the partition's instruments are learnt again: a
        // watermark from the first few would run ahead of slower ones, and a broadcast spreads
        // it to every partition. Wait one heartbeat of event time (every instrument still
        // sending has sent by then); MEMBER signals carry the watermark meanwhile, as before.
        let fastest = progress.order.iter().next_back().map(|(t, _)| *t);
        let settled = progress
            .first_ms
            .zip(fastest)
            .is_some_and(|(first, fastest)| fastest >= first.saturating_add(settle));
        // Once per period of the watermark, so the broadcasts fall at the same watermarks
        // whenever the detector started.
        let period = watermark.div_euclid(every);
        if !settled || progress.broadcast_period.is_some_and(|p| period <= p) {
            return Ok(());
        }
        progress.broadcast_period = Some(period);
        for target in 0..partitions {
            let key = partitioning::key_for_partition(WATERMARK_KEY_PREFIX, target, partitions);
            out.emit(
                TopicRole::CohortSignals,
                &key,
                &CohortSignal {
                    signal_id: format!("{key}:{partition}:{watermark}:WATERMARK"),
                    kind: CohortKind::UNKNOWN,
                    value: String::new(),
                    instrument_serial: String::new(),
                    instrument_model: InstrumentModel::UNKNOWN,
                    event_time_ms: watermark,
                    source_partition: partition,
                    source_watermark_ms: watermark,
                    signal: CohortSignalKind::WATERMARK,
                    count: false,
                    decide: false,
                    route: Vec::new(),
                    anomaly: None,
                },
            )?;
        }
        Ok(())
    }
}

/// Key prefix of WATERMARK signals on `cohort.signals`.
const WATERMARK_KEY_PREFIX: &str = "~watermark/";

impl Processor for AnomalyDetector {
    fn stage(&self) -> &'static str {
        "anomaly-detector"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Features
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Anomalies, TopicRole::CohortSignals]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogAnomalyDetector)
    }

    fn on_input_partitions(&mut self, count: usize) {
        self.signal_partitions = u32::try_from(count).unwrap_or(u32::MAX);
    }

    /// The watermark broadcast reaches each partition of `cohort.signals` by its key.
    fn partition_addressed_outputs(&self) -> &'static [TopicRole] {
        &[TopicRole::CohortSignals]
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(f) = out.decode_or_reject::<Feature>(input) else {
            return Ok(());
        };
        if out.reject_non_finite(f.non_finite_measurement())
            || out.reject_if_ahead(input, f.window_end_ms, self.cfg.max_event_lead_ms)
        {
            return Ok(());
        }
        // State is keyed by serial and series: one that cannot name its key is refused before
        // it touches any state (only a record written to `features` by other means has one).
        let series = RunPhase::series(&f.metric, RunPhase::own_baseline(f.run_phase));
        let Some(series_key) = state::series_key(&f.instrument_serial, &series) else {
            out.reject(
                DeadLetterReason::INCONSISTENT_PAYLOAD,
                "the instrument serial cannot name a state key (it reads as a fleet or membership key, or holds U+001F)",
            );
            return Ok(());
        };
        let cfg = &self.cfg;
        let source = {
            let progress = self.progress.entry(input.partition).or_default();
            progress.observe(&f.instrument_serial, f.window_end_ms);
            (
                input.partition,
                progress.low_watermark(cfg.cohort_lag_minutes * 60_000),
            )
        };
        self.broadcast_watermark(source, out)?;
        let cfg = &self.cfg;
        // Membership of the instrument's cohorts: at once for a new lot or version, hourly after.
        let memberships = self
            .memberships
            .entry(f.instrument_serial.clone())
            .or_default();
        for kind in [
            CohortKind::REAGENT_KIT_LOT,
            CohortKind::FLOWCELL_LOT,
            CohortKind::SOFTWARE_VERSION,
        ] {
            let Some(value) = cohort_value(&f, kind) else {
                continue;
            };
            let due = memberships.get(&kind).is_none_or(|(was, at)| {
                was != value
                    || f.window_end_ms >= at.saturating_add(cfg.cohort_heartbeat_minutes * 60_000)
            });
            if !due {
                continue;
            }
            let key = kind.key(value);
            out.emit(
                TopicRole::CohortSignals,
                &key,
                &CohortSignal {
                    signal_id: format!("{key}:{}:{}:MEMBER", f.instrument_serial, f.window_end_ms),
                    kind,
                    value: value.to_string(),
                    instrument_serial: f.instrument_serial.clone(),
                    instrument_model: f.instrument_model,
                    event_time_ms: f.window_end_ms,
                    source_partition: input.partition,
                    source_watermark_ms: source.1,
                    signal: CohortSignalKind::MEMBER,
                    count: false,
                    decide: false,
                    route: Vec::new(),
                    anomaly: None,
                },
            )?;
            memberships.insert(kind, (value.to_string(), f.window_end_ms));
            out.state_changed(&format!("{COHORTS_KEY_PREFIX}{}", f.instrument_serial));
        }
        let kind = specs::metric(&f.metric).map(|m| m.kind);
        // A baseline per run phase: the sequencing one (and instruments that do not say) under
        // the metric's name with the fleet prior and spec; idle, priming and wash under their
        // own, learnt from the instrument alone.
        let phase = RunPhase::own_baseline(f.run_phase);
        // (Cohort-caused metrics, run quality and error counts, have no phase: a cohort's
        // deviations are keyed by metric alone.)
        debug_assert!(phase.is_none() || cohort_kinds(kind, f.subsystem).is_empty());
        let continuous =
            kind == Some(MetricKind::Sensor) && (f.spec_low.is_some() || f.spec_high.is_some());
        // Only continuous readings have a fleet spread worth keeping (its name is built only
        // for them: this runs for every feature).
        let fleet_entry = continuous.then(|| format!("{:?}/{}", f.instrument_model, f.metric));
        let mut fleet = fleet_entry.as_ref().map(|entry| {
            self.fleet
                .entry(input.partition)
                .or_default()
                .entry(entry.clone())
                .or_default()
        });
        let mut fleet_changed = false;
        let m = self
            .instruments
            .entry(f.instrument_serial.clone())
            .or_default()
            .entry(series.clone())
            .or_default();
        // An episode keeps the cohorts it opened with.
        let route: Vec<String> = match &m.episode {
            Some(e) => e.cohorts.clone(),
            None => cohort_kinds(kind, f.subsystem)
                .iter()
                .filter_map(|k| cohort_value(&f, *k).map(|v| k.key(v)))
                .collect(),
        };
        let v = m.series.observe(
            &Observation {
                end_ms: f.window_end_ms,
                level: f.level,
                variability: f.variability,
                fraction_out_of_spec: f.fraction_out_of_spec,
                spec: (f.spec_low, f.spec_high),
                prior: phase
                    .is_none()
                    .then(|| nominal(f.instrument_model, &f.metric))
                    .flatten(),
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
        let learned_spread = v.learned && f.variability > 0.0;
        if let (Some(fleet), Some(entry), true) = (fleet.as_mut(), &fleet_entry, learned_spread) {
            if m.series.learnt_windows() == cfg.warmup_windows + 1 {
                fleet.contributors += 1;
            }
            fleet.windows += 1;
            let a = (1.0 / fleet.windows as f64).max(0.002);
            fleet.log_mean += a * (f.variability.ln() - fleet.log_mean);
            out.state_changed(
                &StateKey::Fleet {
                    partition: input.partition,
                    entry,
                }
                .render(),
            );
            fleet_changed = true;
        }
        let record = |state: AnomalyState,
                      rule: &str,
                      score: f64,
                      severity: AnomalySeverity,
                      p: Option<&Prediction>| Anomaly {
            anomaly_id: format!("{}:{series}:{}", f.instrument_serial, f.window_start_ms),
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
            flowcell_lot: f.flowcell_lot.clone(),
            cohort: None,
            run_phase: phase,
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
                send_anomaly(
                    out,
                    source,
                    &route,
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
                cohorts: route.clone(),
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
                send_anomaly(
                    out,
                    source,
                    &route,
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
                cohorts: route.clone(),
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
                    send_anomaly(
                        out,
                        source,
                        &route,
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
        out.state_changed(&series_key);
        self.migrate_legacy(
            &f.instrument_serial,
            fleet_changed.then_some(input.partition),
            out,
        );
        Ok(())
    }

    fn state_format_version(&self) -> i32 {
        2
    }

    fn reads_state_format(&self, version: i32) -> bool {
        // 1: JSON, every series of an instrument in one record; 2: Avro pieces (see `state`).
        matches!(version, 1 | 2)
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        let record = match StateKey::parse(key) {
            Some(StateKey::Series { serial, series }) => self
                .instruments
                .get(serial)
                .and_then(|m| m.get(series))
                .map(|m| AnomalyDetectorState {
                    series: Some(m.to_stored()),
                    fleet: None,
                    cohorts: None,
                }),
            Some(StateKey::Fleet { partition, entry }) => self
                .fleet
                .get(&partition)
                .and_then(|f| f.get(entry))
                .map(|f| AnomalyDetectorState {
                    series: None,
                    fleet: Some(DetectorFleetSpread {
                        log_mean: f.log_mean,
                        windows: i64::try_from(f.windows).unwrap_or(i64::MAX),
                        contributors: i64::from(f.contributors),
                    }),
                    cohorts: None,
                }),
            Some(StateKey::Cohorts { serial }) => {
                self.memberships.get(serial).map(|m| AnomalyDetectorState {
                    series: None,
                    fleet: None,
                    cohorts: Some(
                        m.iter()
                            .map(|(kind, (value, at_ms))| CohortMembership {
                                kind: *kind,
                                value: value.clone(),
                                at_ms: *at_ms,
                            })
                            .collect(),
                    ),
                })
            }
            // Format 1 keys are only ever deleted (their pieces have keys of their own).
            Some(StateKey::LegacyInstrument { .. } | StateKey::LegacyFleet { .. }) => None,
            None => {
                return Err(StageError::Snapshot {
                    key: key.into(),
                    message: "not a key this stage writes".into(),
                })
            }
        };
        record
            .map(|r| seqmon_model::encode(&r))
            .transpose()
            .map_err(|e| StageError::Snapshot {
                key: key.into(),
                message: e.to_string(),
            })
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let fail = |message: String| StageError::State {
            key: key.into(),
            message,
        };
        let parsed =
            StateKey::parse(key).ok_or_else(|| fail("not a key this stage writes".into()))?;
        // State format 1 wrote JSON (never starting like the Avro single-object marker C3 01).
        if state.first() == Some(&b'{') {
            return self.restore_json(parsed, state).map_err(fail);
        }
        let record: AnomalyDetectorState =
            seqmon_model::decode(state).map_err(|e| fail(e.to_string()))?;
        match (parsed, record.series, record.fleet, record.cohorts) {
            (StateKey::Series { serial, series }, Some(stored), None, None) => {
                let m = MetricState::from_stored(&stored).map_err(fail)?;
                self.instruments
                    .entry(serial.to_string())
                    .or_default()
                    .insert(series.to_string(), m);
            }
            (StateKey::Fleet { partition, entry }, None, Some(f), None) => {
                let spread = FleetSpread {
                    log_mean: f.log_mean,
                    windows: u64::try_from(f.windows)
                        .map_err(|_| fail(format!("fleet windows {}", f.windows)))?,
                    contributors: u32::try_from(f.contributors)
                        .map_err(|_| fail(format!("fleet contributors {}", f.contributors)))?,
                };
                self.fleet
                    .entry(partition)
                    .or_default()
                    .insert(entry.to_string(), spread);
            }
            (StateKey::Cohorts { serial }, None, None, Some(list)) => {
                let m: Memberships = list
                    .into_iter()
                    .map(|c| (c.kind, (c.value, c.at_ms)))
                    .collect();
                self.memberships.insert(serial.to_string(), m);
            }
            _ => {
                return Err(fail(
                    "the record's piece is not the one its key names".into(),
                ))
            }
        }
        Ok(())
    }

    fn clear_state(&mut self) {
        self.instruments.clear();
        self.fleet.clear();
        self.memberships.clear();
        self.legacy_instruments.clear();
        self.legacy_fleet.clear();
        self.progress.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        let series = self.instruments.iter().flat_map(|(serial, m)| {
            m.keys()
                .map(move |series| StateKey::Series { serial, series }.render())
        });
        let fleet = self.fleet.iter().flat_map(|(partition, f)| {
            f.keys().map(move |entry| {
                StateKey::Fleet {
                    partition: *partition,
                    entry,
                }
                .render()
            })
        });
        let cohorts = self
            .memberships
            .keys()
            .map(|serial| StateKey::Cohorts { serial }.render());
        series.chain(fleet).chain(cohorts).collect()
    }
}

impl MetricState {
    fn to_stored(&self) -> DetectorSeries {
        let mut s = self.series.to_stored();
        s.episode = self.episode.as_ref().map(|e| DetectorEpisode {
            severity: e.severity,
            predicted_only: e.predicted_only,
            earliest_ms: e.earliest_ms,
            normal_in_a_row: i64::from(e.normal_in_a_row),
            cohorts: e.cohorts.clone(),
        });
        s
    }

    fn from_stored(s: &DetectorSeries) -> Result<Self, String> {
        Ok(MetricState {
            series: SeriesState::from_stored(s)?,
            episode: s
                .episode
                .as_ref()
                .map(|e| -> Result<Episode, String> {
                    Ok(Episode {
                        severity: e.severity,
                        predicted_only: e.predicted_only,
                        earliest_ms: e.earliest_ms,
                        normal_in_a_row: u32::try_from(e.normal_in_a_row)
                            .map_err(|_| format!("normal_in_a_row {}", e.normal_in_a_row))?,
                        cohorts: e.cohorts.clone(),
                    })
                })
                .transpose()?,
        })
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
            flowcell_lot: None,
            run_phase: None,
        })
        .unwrap()
    }

    fn feed(d: &mut AnomalyDetector, bytes: &[u8]) -> Vec<Anomaly> {
        feed_all(d, bytes)
            .iter()
            .map(|e| decode(&e.value).unwrap())
            .collect()
    }

    fn run_quality(i: i64, level: f64, lot: &str) -> Vec<u8> {
        let mut f: Feature = decode(&feature(i, level, 0.0)).unwrap();
        f.subsystem = Subsystem::CHEMISTRY;
        f.metric = "pct_q30".into();
        f.spec_low = Some(75.0);
        f.spec_high = None;
        f.variability = 0.5;
        f.reagent_kit_lot = Some(lot.into());
        f.flowcell_lot = Some("FC-30001".into());
        f.software_version = Some("1.7.5".into());
        encode(&f).unwrap()
    }

    fn feed_all(d: &mut AnomalyDetector, bytes: &[u8]) -> Vec<seqmon_processor::Emitted> {
        let env = Envelope {
            key: Some(b"A00001"),
            value: bytes,
            topic: TopicRole::Features.spec().name,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        d.process(&env, &mut out).unwrap();
        out.take().0
    }

    #[test]
    fn each_partition_broadcasts_its_watermark_to_every_signal_partition() {
        let watermarks = |out: &[seqmon_processor::Emitted]| -> Vec<(String, CohortSignal)> {
            out.iter()
                .filter(|e| e.role == TopicRole::CohortSignals)
                .map(|e| (e.key.clone(), decode::<CohortSignal>(&e.value).unwrap()))
                .filter(|(_, s)| s.signal == CohortSignalKind::WATERMARK)
                .collect()
        };
        // Outside Kafka (one partition) there is nothing to broadcast.
        let mut d = AnomalyDetector::default();
        assert!(watermarks(&feed_all(&mut d, &feature(0, 500.0, 0.0))).is_empty());

        let mut d = AnomalyDetector::default();
        d.on_input_partitions(3);
        let mut sent = Vec::new();
        for i in 0..25 {
            sent.push(watermarks(&feed_all(&mut d, &feature(i, 500.0, 0.0))));
        }
        // Not before an hour of event time has passed since the first window (5 min): from the
        // window ending at 65 min, then once per 5 minutes of the watermark (every window here).
        let at: Vec<usize> = (0..25).filter(|i| !sent[*i].is_empty()).collect();
        assert_eq!(at, (12..25).collect::<Vec<_>>());
        for batch in sent.iter().filter(|b| !b.is_empty()) {
            let mut reached: Vec<u32> = batch
                .iter()
                .map(|(k, _)| partitioning::partition_for_key(k.as_bytes(), 3))
                .collect();
            reached.sort();
            assert_eq!(reached, [0, 1, 2], "{batch:?}");
            for (_, s) in batch {
                assert_eq!(s.source_partition, 0);
                assert_eq!(s.source_watermark_ms, s.event_time_ms);
                assert_eq!(s.kind, CohortKind::UNKNOWN);
                assert!(s.instrument_serial.is_empty() && s.anomaly.is_none());
            }
        }
        assert_eq!(sent[12][0].1.source_watermark_ms, 13 * 300_000);

        // A restart (state rebuilt, progress forgotten) waits an hour of event time again, and
        // then broadcasts on the same 5-minute grid of the watermark.
        d.clear_state();
        let after: Vec<i64> = (25..50)
            .filter(|i| !watermarks(&feed_all(&mut d, &feature(*i, 500.0, 0.0))).is_empty())
            .collect();
        assert_eq!(
            after,
            (37..50).collect::<Vec<_>>(),
            "first window 130 min: settled at 190"
        );
    }

    #[test]
    fn a_run_quality_departure_goes_to_its_cohorts_and_its_clearing_follows_it() {
        let mut d = AnomalyDetector::default();
        let lot = CohortKind::REAGENT_KIT_LOT.key("SBS-1");
        let fc = CohortKind::FLOWCELL_LOT.key("FC-30001");
        // Membership: each cohort once at the start, then hourly (12 five-minute windows).
        let mut members = Vec::new();
        for i in 0..24 {
            for e in feed_all(
                &mut d,
                &run_quality(i, 90.0 + (i % 2) as f64 * 0.2, "SBS-1"),
            ) {
                assert_eq!(e.role, TopicRole::CohortSignals, "quiet: no anomalies");
                let s: CohortSignal = decode(&e.value).unwrap();
                assert_eq!(s.signal, CohortSignalKind::MEMBER);
                members.push((e.key, s.event_time_ms));
            }
        }
        assert_eq!(
            members.len(),
            6,
            "three cohorts at the start and an hour later"
        );
        // A collapse: no anomaly record of its own, a deviation for each lot cohort instead.
        let out = feed_all(&mut d, &run_quality(24, 60.0, "SBS-1"));
        assert!(
            out.iter().all(|e| e.role == TopicRole::CohortSignals),
            "{out:?}"
        );
        let devs: Vec<(String, CohortSignal)> = out
            .iter()
            .map(|e| (e.key.clone(), decode::<CohortSignal>(&e.value).unwrap()))
            .filter(|(_, s)| s.signal == CohortSignalKind::DEVIATION)
            .collect();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].0, lot);
        assert!(devs[0].1.decide && devs[0].1.count && devs[0].1.route == [fc.clone()]);
        assert_eq!(devs[1].0, fc);
        assert!(!devs[1].1.decide && devs[1].1.count && devs[1].1.route.is_empty());
        let a: Anomaly = decode(devs[0].1.anomaly.as_ref().unwrap()).unwrap();
        assert_eq!(
            (a.state, a.metric.as_str()),
            (AnomalyState::ACTIVE, "pct_q30")
        );
        // A new lot, then recovery: the clearing goes to the cohorts the episode opened in.
        let mut cleared_to = Vec::new();
        for i in 25..60 {
            for e in feed_all(
                &mut d,
                &run_quality(i, 90.0 + (i % 2) as f64 * 0.2, "SBS-2"),
            ) {
                let s: CohortSignal = decode(&e.value).unwrap();
                if s.signal == CohortSignalKind::DEVIATION {
                    let a: Anomaly = decode(s.anomaly.as_ref().unwrap()).unwrap();
                    assert_eq!(a.state, AnomalyState::CLEARED);
                    cleared_to.push(e.key);
                }
            }
        }
        assert_eq!(cleared_to, [lot, fc]);
    }

    /// A laser feature of the idle phase: no spec, its own spread.
    fn idle(i: i64, level: f64) -> Vec<u8> {
        let mut f: Feature = decode(&feature(i, level, 0.0)).unwrap();
        f.run_phase = Some(RunPhase::IDLE);
        f.spec_low = None;
        f.spec_high = None;
        f.variability = 0.05;
        encode(&f).unwrap()
    }

    #[test]
    fn each_run_phase_has_its_own_baseline() {
        let mut d = AnomalyDetector::default();
        let mut got = Vec::new();
        // Sequencing at 500 mW with its spec, idle standby at 25 mW without one, interleaved.
        for i in 0..200 {
            got.extend(feed(&mut d, &feature(i, 500.0 + (i % 3) as f64, 0.0)));
            got.extend(feed(&mut d, &idle(i, 25.0 + (i % 3) as f64 * 0.05)));
        }
        assert!(got.is_empty(), "{got:?}");
        // A standby laser that drops is the idle series' anomaly, named by its phase.
        let out = feed(&mut d, &idle(200, 15.0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].run_phase, Some(RunPhase::IDLE));
        assert_eq!(out[0].metric, "laser_power_mw");
        assert!(d.instruments["A00001"].contains_key("laser_power_mw@idle"));
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

    /// A fleet of `n` instruments, 4 metrics each (laser with a slow decay on the first, %Q30
    /// with lots for the cohorts, FWHM, chiller temperature), `windows` windows long.
    fn mixed_fleet(n: usize, windows: i64) -> Vec<(String, i32, Vec<u8>)> {
        let mut inputs = Vec::new();
        for i in 0..windows {
            for k in 0..n {
                let serial = format!("A{k:05}");
                let partition = (k % 3) as i32;
                for (metric, subsystem, level, spec) in [
                    (
                        "laser_power_mw",
                        Subsystem::OPTICAL,
                        500.0 - if k == 0 { i as f64 * 0.4 } else { 0.0 },
                        (Some(425.0), Some(575.0)),
                    ),
                    (
                        "pct_q30",
                        Subsystem::CHEMISTRY,
                        90.0 + (i % 3) as f64,
                        (Some(75.0), None),
                    ),
                    (
                        "focus_fwhm_px",
                        Subsystem::OPTICAL,
                        2.6 + (i % 5) as f64 * 0.01,
                        (None, Some(3.5)),
                    ),
                    (
                        "chiller_temp_c",
                        Subsystem::THERMAL,
                        4.0 + (i % 7) as f64 * 0.05,
                        (Some(2.0), Some(6.0)),
                    ),
                ] {
                    let mut f: Feature = decode(&feature(i, level, 0.0)).unwrap();
                    f.instrument_serial = serial.clone();
                    f.metric = metric.into();
                    f.subsystem = subsystem;
                    (f.spec_low, f.spec_high) = spec;
                    f.variability = 0.5 + (i % 4) as f64 * 0.1;
                    if metric == "pct_q30" {
                        f.reagent_kit_lot = Some(format!("RK-{}", 1000 + k % 2));
                        f.flowcell_lot = Some("FC-30001".into());
                        f.software_version = Some("1.7.5".into());
                    }
                    inputs.push((serial.clone(), partition, encode(&f).unwrap()));
                }
            }
        }
        inputs
    }

    fn process_at(
        d: &mut AnomalyDetector,
        (serial, partition, bytes): &(String, i32, Vec<u8>),
    ) -> (Vec<seqmon_processor::Emitted>, BTreeSet<String>) {
        let env = Envelope {
            key: Some(serial.as_bytes()),
            value: bytes,
            topic: TopicRole::Features.spec().name,
            partition: *partition,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        d.process(&env, &mut out).unwrap();
        let (emitted, _, changed) = out.take();
        (emitted, changed)
    }

    /// Output with the cohort signals' low watermark left out: it comes from in-memory progress
    /// that a restart refills (see [`Progress`]), not from the changelog.
    fn normalized(out: &[seqmon_processor::Emitted]) -> Vec<(TopicRole, String, Vec<u8>)> {
        out.iter()
            .map(|e| {
                let value = if e.role == TopicRole::CohortSignals {
                    let mut s: CohortSignal = decode(&e.value).unwrap();
                    s.source_watermark_ms = 0;
                    encode(&s).unwrap()
                } else {
                    e.value.clone()
                };
                (e.role, e.key.clone(), value)
            })
            .collect()
    }

    fn assert_same(got: &[seqmon_processor::Emitted], expected: &[seqmon_processor::Emitted]) {
        let (got, expected) = (normalized(got), normalized(expected));
        assert_eq!(got.len(), expected.len(), "output count");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
            panic!(
                "output {i} differs: {:?} {} vs {:?} {}",
                got[i].0, got[i].1, expected[i].0, expected[i].1
            );
        }
    }

    /// A changelog as compaction keeps it: the latest value of each key.
    type Changelog = BTreeMap<String, Vec<u8>>;

    /// Writes what the runtime writes after a batch; returns the bytes written.
    fn commit(d: &mut AnomalyDetector, changed: &BTreeSet<String>, log: &mut Changelog) -> usize {
        let mut bytes = 0;
        for key in changed {
            for r in d.state_records(key).unwrap() {
                bytes += r.key.len() + r.value.as_ref().map_or(0, Vec::len);
                match r.value {
                    Some(v) => log.insert(r.key, v),
                    None => log.remove(&r.key),
                };
            }
        }
        bytes
    }

    fn restored(log: &Changelog) -> AnomalyDetector {
        let mut d = AnomalyDetector::default();
        for (key, value) in log {
            d.restore(key, value).unwrap();
        }
        assert!(d.finish_restore().is_empty());
        d
    }

    /// One detector over all the inputs, uninterrupted: its state and output.
    fn straight_run(
        inputs: &[(String, i32, Vec<u8>)],
    ) -> (AnomalyDetector, Vec<seqmon_processor::Emitted>) {
        let mut d = AnomalyDetector::default();
        let out = inputs
            .iter()
            .flat_map(|x| process_at(&mut d, x).0)
            .collect();
        (d, out)
    }

    /// Every piece of state of a detector restored from `log` is on it, and nothing else.
    fn assert_log_holds_exactly_the_state(log: &Changelog) {
        let mut keys = restored(log).state_keys();
        keys.sort();
        assert_eq!(keys, log.keys().cloned().collect::<Vec<_>>());
    }

    #[test]
    fn the_changelog_holds_one_record_per_changed_piece_and_restores_to_the_same_output() {
        let inputs = mixed_fleet(6, 60);
        let (_, expected) = straight_run(&inputs);
        assert!(
            expected.iter().any(|e| e.role == TopicRole::Anomalies),
            "the fleet must give anomalies for the test to mean something"
        );

        let mut d = AnomalyDetector::default();
        let mut log = Changelog::new();
        let (mut got, mut written, mut format1, mut restores) = (Vec::new(), 0, 0, 0);
        for (n, batch) in inputs.chunks(7).enumerate() {
            let mut changed = BTreeSet::new();
            for x in batch {
                let (emitted, keys) = process_at(&mut d, x);
                got.extend(emitted);
                changed.extend(keys);
            }
            written += commit(&mut d, &changed, &mut log);
            // What state format 1 wrote for the same batch: every changed instrument whole, and
            // every changed partition's spreads whole, as JSON.
            let serials: BTreeSet<&str> = changed
                .iter()
                .filter_map(|k| match StateKey::parse(k) {
                    Some(StateKey::Series { serial, .. }) => Some(serial),
                    _ => None,
                })
                .collect();
            let partitions: BTreeSet<i32> = changed
                .iter()
                .filter_map(|k| match StateKey::parse(k) {
                    Some(StateKey::Fleet { partition, .. }) => Some(partition),
                    _ => None,
                })
                .collect();
            format1 += serials
                .iter()
                .map(|s| s.len() + serde_json::to_vec(&d.instruments[*s]).unwrap().len())
                .sum::<usize>()
                + partitions
                    .iter()
                    .map(|p| 8 + serde_json::to_vec(&d.fleet[p]).unwrap().len())
                    .sum::<usize>();
            // A crash after every fifth commit: a fresh instance from the changelog.
            if n % 5 == 4 {
                d = restored(&log);
                restores += 1;
            }
        }
        assert_same(&got, &expected);
        assert!(restores > 10);
        let per_input = |b: usize| b as f64 / inputs.len() as f64;
        eprintln!(
            "{} inputs: {:.0} B written per input (format 1: {:.0} B), {} keys kept",
            inputs.len(),
            per_input(written),
            per_input(format1),
            log.len()
        );
        assert!(
            written * 3 < format1,
            "{} B per input is not well under format 1's {} B",
            per_input(written),
            per_input(format1)
        );
        // Every piece of state is on the changelog, and nothing else.
        assert_log_holds_exactly_the_state(&log);
    }

    #[test]
    fn a_format_1_state_restores_and_its_next_change_rewrites_it_as_pieces() {
        let inputs = mixed_fleet(3, 40);
        let (straight, expected) = straight_run(&inputs);
        let half = inputs.len() / 2;
        let mut first = AnomalyDetector::default();
        let mut got: Vec<_> = inputs[..half]
            .iter()
            .flat_map(|x| process_at(&mut first, x).0)
            .collect();
        // The changelog as state format 1 wrote it.
        let mut log = Changelog::new();
        for (serial, m) in &first.instruments {
            log.insert(serial.clone(), serde_json::to_vec(m).unwrap());
        }
        for (p, f) in &first.fleet {
            log.insert(format!("~fleet/{p}"), serde_json::to_vec(f).unwrap());
        }
        for (serial, m) in &first.memberships {
            log.insert(format!("~cohorts/{serial}"), serde_json::to_vec(m).unwrap());
        }
        let mut second = restored(&log);
        for x in &inputs[half..] {
            let (emitted, changed) = process_at(&mut second, x);
            got.extend(emitted);
            commit(&mut second, &changed, &mut log);
        }
        assert_same(&got, &expected);
        // Every format 1 record was replaced by its pieces (the fleet's partitions learnt again).
        let legacy: Vec<&String> = log
            .keys()
            .filter(|k| {
                matches!(
                    StateKey::parse(k),
                    Some(StateKey::LegacyInstrument { .. } | StateKey::LegacyFleet { .. })
                )
            })
            .collect();
        assert!(legacy.is_empty(), "{legacy:?}");
        // The memberships were signalled again within the hour, so they are Avro too.
        let json: Vec<&String> = log
            .iter()
            .filter(|(_, v)| v.first() == Some(&b'{'))
            .map(|(k, _)| k)
            .collect();
        assert!(json.is_empty(), "{json:?}");
        assert_log_holds_exactly_the_state(&log);
        // And the restored pieces give what the straight run holds.
        let again = restored(&log);
        assert_eq!(again.instruments, straight.instruments);
        assert_eq!(again.fleet, straight.fleet);
    }

    #[test]
    fn a_record_whose_piece_is_not_its_keys_is_refused_and_leaves_no_state() {
        let mut d = AnomalyDetector::default();
        for x in &mixed_fleet(1, 3) {
            process_at(&mut d, x);
        }
        let series_key = d.state_keys().into_iter().next().unwrap();
        let value = d.snapshot(&series_key).unwrap().unwrap();
        let mut fresh = AnomalyDetector::default();
        let fleet_key = StateKey::Fleet {
            partition: 0,
            entry: "NOVASEQ_6000/laser_power_mw",
        }
        .render();
        assert!(fresh.restore(&fleet_key, &value).is_err());
        assert!(fresh.restore("", &value).is_err());
        assert!(fresh
            .restore(&series_key, &value[..value.len() / 2])
            .is_err());
        assert!(fresh.state_keys().is_empty());
        fresh.restore(&series_key, &value).unwrap();
        assert_eq!(fresh.state_keys(), vec![series_key]);
    }

    #[test]
    fn a_serial_that_would_read_back_as_another_piece_is_refused_before_any_state() {
        for serial in ["~fleet/1", "~cohorts/A00001", "A00001\u{1f}sx", "~fleet/x"] {
            let mut f: Feature = decode(&feature(0, 500.0, 0.0)).unwrap();
            f.instrument_serial = serial.into();
            let bytes = encode(&f).unwrap();
            let mut d = AnomalyDetector::default();
            let env = Envelope {
                key: Some(serial.as_bytes()),
                value: &bytes,
                topic: TopicRole::Features.spec().name,
                partition: 1,
                offset: 0,
                timestamp_ms: None,
                arrival_time_ms: None,
            };
            let mut out = Emitter::default();
            d.process(&env, &mut out).unwrap();
            let (emitted, rejection, changed) = out.take();
            let rejection = rejection.unwrap_or_else(|| panic!("{serial:?} accepted"));
            assert_eq!(rejection.reason, DeadLetterReason::INCONSISTENT_PAYLOAD);
            assert!(emitted.is_empty() && changed.is_empty(), "{serial:?}");
            assert!(d.state_keys().is_empty(), "{serial:?}");
        }
    }
}
