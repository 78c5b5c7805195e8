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
//!
//! Cohort signals: besides each instrument's MEMBER and DEVIATION signals (keyed by cohort),
//! each input partition sends its low watermark every `cohort_watermark_minutes` (5) of event
//! time, once it has seen an hour of it since its state was rebuilt, to every partition of
//! `cohort.signals` (WATERMARK, keyed `~watermark/<n>` so that Kafka's murmur2 partitioning puts
//! one in each; the topic is taken to have as many partitions as `features`). Roll the cohort
//! analyzer out first: one older than cohort_signal v2 dead-letters WATERMARK signals.

pub mod model;
pub mod score;

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use seqmon_model::partitioning;
use seqmon_model::specs::{self, nominal, MetricKind};
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    encode, Anomaly, AnomalySeverity, AnomalyState, CohortKind, CohortSignal, CohortSignalKind,
    Feature, InstrumentModel, RunPhase, Subsystem,
};
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
const COHORTS_KEY_PREFIX: &str = "~cohorts/";

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
const FLEET_KEY_PREFIX: &str = "~fleet/";

/// The anomaly-detector processor.
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    instruments: BTreeMap<String, BTreeMap<String, MetricState>>,
    /// Per input partition, per "model/metric".
    fleet: BTreeMap<i32, BTreeMap<String, FleetSpread>>,
    /// Per instrument, the cohorts it last signalled.
    memberships: BTreeMap<String, Memberships>,
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
    /// A detector with the given settings.
    pub fn new(cfg: AnomalyConfig) -> Self {
        AnomalyDetector {
            cfg,
            instruments: BTreeMap::new(),
            fleet: BTreeMap::new(),
            memberships: BTreeMap::new(),
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
        let series = RunPhase::series(&f.metric, phase);
        // (Cohort-caused metrics, run quality and error counts, have no phase: a cohort's
        // deviations are keyed by metric alone.)
        debug_assert!(phase.is_none() || cohort_kinds(kind, f.subsystem).is_empty());
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
        if let Some(serial) = key.strip_prefix(COHORTS_KEY_PREFIX) {
            return self
                .memberships
                .get(serial)
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
        if let Some(serial) = key.strip_prefix(COHORTS_KEY_PREFIX) {
            let s = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
            self.memberships.insert(serial.to_string(), s);
            return Ok(());
        }
        let s = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
        self.instruments.insert(key.to_string(), s);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.instruments.clear();
        self.fleet.clear();
        self.memberships.clear();
        self.progress.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.instruments
            .keys()
            .cloned()
            .chain(self.fleet.keys().map(|p| format!("{FLEET_KEY_PREFIX}{p}")))
            .chain(
                self.memberships
                    .keys()
                    .map(|k| format!("{COHORTS_KEY_PREFIX}{k}")),
            )
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
}
