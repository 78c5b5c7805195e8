//! Feature extractor: reads `telemetry.sanitized`, writes `features`: per instrument, subsystem
//! and metric, tumbling event-time windows → level (mean), slope (least squares, per hour),
//! variability (standard deviation), min, max and fraction of samples out of the model's
//! operating spec. Operation-log errors become `error_events_per_window` (SOFTWARE).
//!
//! Windows close on event time, never on the wall clock: each instrument's watermark is the
//! latest event time it sent minus the allowed lateness, and a window closes when the watermark
//! passes its end. A record for an already closed window is a dead letter `LATE_EVENT`, never
//! silently dropped. Because the watermark is per instrument and each instrument's records stay
//! in one partition in order, output does not depend on batching or on how partitions interleave,
//! so a replay, or a restart from the changelog, gives the same features.
//!
//! A sensor whose reading repeats bit for bit three times in a row is stuck: its readings are left
//! out until it moves again (a real continuous sensor's noise never repeats exactly); so is one
//! whose reading repeats across a change of run phase (the quantity it measures changed).
//!
//! State: per instrument, the open windows, each sensor's last reading, and the context (model,
//! software version, reagent lot, run), persisted to `feature-extractor.changelog` in the same
//! transaction as the features, as a base and deltas (see [`state`]).

mod state;

use std::borrow::Cow;
use std::collections::BTreeMap;

use clap::Args;
use seqmon_model::specs::operating_spec;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    specs, DeadLetterReason, DeltaInputs, Feature, FeatureExtractorBase, FeatureExtractorState,
    InstrumentModel, RunPhase, SanitizedTelemetry, SensorPhase, SensorRepeat, Severity,
    TelemetryKind, WindowSums,
};
use seqmon_processor::{
    ConfigError, Emitter, Envelope, Processor, RestoreFailure, StageError, StateRecord,
};
use serde::{Deserialize, Serialize};
use state::{ChangelogKey, Journal, RestoredDelta, Restoring};

/// Run-performance metrics turned into features.
const RUN_METRICS: &[&str] = &[
    "pct_q30",
    "error_rate_pct",
    "pct_pf",
    "phasing_pct",
    "prephasing_pct",
];
/// Unchanged repeats after which a sensor reading counts as stuck (three identical values).
const STUCK_REPEATS: u32 = 2;
/// A window the instrument began sending in is emitted only when that was within the first
/// 1/PARTIAL_WINDOW_DIVISOR of it.
const PARTIAL_WINDOW_DIVISOR: i64 = 10;
/// The derived software metric.
const ERROR_EVENTS: &str = "error_events_per_window";

/// A series' name: a metric of the catalogue (borrowed, so the per-sample lookups allocate
/// nothing) or `metric@phase` (owned). Orders and compares as the string it holds.
type Series = Cow<'static, str>;
/// Samples a phase's part of a window needs to go out: fewer are too few to judge the phase by
/// (a part split off by a phase change is kept with fewer only when it is the window's largest).
const MIN_PHASE_SAMPLES: u32 = 3;

/// The metric and run phase of a window key ([`RunPhase::series`]).
fn split_series(series: &str) -> (String, Option<RunPhase>) {
    let (metric, phase) = RunPhase::parse_series(series);
    (metric.to_string(), phase)
}

/// Feature-extractor settings.
#[derive(Debug, Clone, Args)]
pub struct FeatureConfig {
    /// Window length, ms of event time.
    #[arg(long, env = "FEATURES_WINDOW_MS", default_value_t = 300_000)]
    pub window_ms: i64,
    /// How late a record may arrive after its window ended, ms of event time.
    #[arg(long, env = "FEATURES_ALLOWED_LATENESS_MS", default_value_t = 60_000)]
    pub allowed_lateness_ms: i64,
    /// Where window boundaries fall: `instrument` shifts each instrument's windows by a fixed
    /// offset (a hash of its serial) so features flow evenly; `epoch` puts every instrument's
    /// boundaries at multiples of the window length, so the whole fleet's windows close in the
    /// same second (a burst of instruments × metrics features). Either way the window an
    /// instrument starts sending in is not emitted unless it started in its first tenth.
    #[arg(
        long,
        env = "FEATURES_WINDOW_ALIGNMENT",
        value_enum,
        default_value = "instrument"
    )]
    pub window_alignment: WindowAlignment,
    /// Most an event time may run ahead of its record's arrival (broker receive time carried
    /// from telemetry.raw), ms; a record further ahead is a dead letter TIMESTAMP_FUTURE and
    /// does not move the instrument's watermark.
    #[arg(long, env = "FEATURES_MAX_EVENT_LEAD_MS", default_value_t = seqmon_processor::DEFAULT_MAX_EVENT_LEAD_MS)]
    pub max_event_lead_ms: i64,
}

/// Where window boundaries fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowAlignment {
    /// Staggered per instrument by a stable hash of the serial.
    Instrument,
    /// At multiples of the window length since the Unix epoch, for every instrument.
    Epoch,
}

/// FNV-1a, 64 bits: stable across releases and platforms, unlike the standard library's hasher,
/// because window boundaries must not move when the service is upgraded.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Default for FeatureConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl FeatureConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1_000..=86_400_000).contains(&self.window_ms) {
            return Err(ConfigError::of::<Self>(
                "window_ms",
                "must be 1000..=86400000",
            ));
        }
        if !(0..=7 * 86_400_000).contains(&self.max_event_lead_ms) {
            return Err(ConfigError::of::<Self>(
                "max_event_lead_ms",
                "must be 0..=604800000 (7 days)",
            ));
        }
        if self.allowed_lateness_ms < 0 || self.allowed_lateness_ms > self.window_ms * 10 {
            return Err(ConfigError::of::<Self>(
                "allowed_lateness_ms",
                "must be 0..=10 windows",
            ));
        }
        Ok(())
    }
}

/// Running sums of one metric in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Acc {
    n: u32,
    sum: f64,
    sum_sq: f64,
    /// Sums over (time in hours since window start, value) for the slope.
    sum_t: f64,
    sum_tt: f64,
    sum_tv: f64,
    min: f64,
    max: f64,
    out_of_spec: u32,
}

impl Acc {
    fn add(&mut self, hours: f64, v: f64, spec: (Option<f64>, Option<f64>)) {
        if self.n == 0 {
            self.min = v;
            self.max = v;
        }
        self.n += 1;
        self.sum += v;
        self.sum_sq += v * v;
        self.sum_t += hours;
        self.sum_tt += hours * hours;
        self.sum_tv += hours * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if spec.0.is_some_and(|lo| v < lo) || spec.1.is_some_and(|hi| v > hi) {
            self.out_of_spec += 1;
        }
    }
}

/// What one instrument's state holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct InstrumentState {
    model: Option<InstrumentModel>,
    software_version: Option<String>,
    reagent_kit_lot: Option<String>,
    flowcell_lot: Option<String>,
    run_id: Option<String>,
    max_event_time_ms: i64,
    /// Windows ending at or before this are closed.
    closed_until_ms: i64,
    /// Event time of the first record after the instrument began sending, or after a silence
    /// of a window or more; `None` in state restored from builds that did not keep it.
    active_since_ms: Option<i64>,
    /// (window start, metric) → sums.
    windows: BTreeMap<(i64, Series), Acc>,
    /// Per sensor: the last reading and how many times in a row it came back unchanged.
    repeats: BTreeMap<Series, (f64, u32)>,
    /// Per sensor: the run phase its last new reading came in.
    repeat_phases: BTreeMap<Series, Option<RunPhase>>,
}

impl Acc {
    fn stored(&self, start_ms: i64, series: &str) -> WindowSums {
        WindowSums {
            start_ms,
            series: series.to_string(),
            n: self.n as i32,
            sum: self.sum,
            sum_sq: self.sum_sq,
            sum_t: self.sum_t,
            sum_tt: self.sum_tt,
            sum_tv: self.sum_tv,
            min: self.min,
            max: self.max,
            out_of_spec: self.out_of_spec as i32,
        }
    }

    fn from_stored(w: &WindowSums) -> Self {
        Acc {
            n: w.n.max(0) as u32,
            sum: w.sum,
            sum_sq: w.sum_sq,
            sum_t: w.sum_t,
            sum_tt: w.sum_tt,
            sum_tv: w.sum_tv,
            min: w.min,
            max: w.max,
            out_of_spec: w.out_of_spec.max(0) as u32,
        }
    }
}

impl InstrumentState {
    fn stored(&self) -> FeatureExtractorBase {
        FeatureExtractorBase {
            instrument_model: self.model,
            software_version: self.software_version.clone(),
            reagent_kit_lot: self.reagent_kit_lot.clone(),
            flowcell_lot: self.flowcell_lot.clone(),
            run_id: self.run_id.clone(),
            max_event_time_ms: self.max_event_time_ms,
            closed_until_ms: self.closed_until_ms,
            active_since_ms: self.active_since_ms,
            windows: self
                .windows
                .iter()
                .map(|((start, series), acc)| acc.stored(*start, series))
                .collect(),
            repeats: self
                .repeats
                .iter()
                .map(|(sensor, (last, repeats))| SensorRepeat {
                    sensor: sensor.to_string(),
                    last: *last,
                    repeats: (*repeats).min(i32::MAX as u32) as i32,
                })
                .collect(),
            repeat_phases: self
                .repeat_phases
                .iter()
                .map(|(sensor, phase)| SensorPhase {
                    sensor: sensor.to_string(),
                    phase: *phase,
                })
                .collect(),
        }
    }

    fn from_stored(b: FeatureExtractorBase) -> Self {
        InstrumentState {
            model: b.instrument_model,
            software_version: b.software_version,
            reagent_kit_lot: b.reagent_kit_lot,
            flowcell_lot: b.flowcell_lot,
            run_id: b.run_id,
            max_event_time_ms: b.max_event_time_ms,
            closed_until_ms: b.closed_until_ms,
            active_since_ms: b.active_since_ms,
            windows: b
                .windows
                .into_iter()
                .map(|w| {
                    let acc = Acc::from_stored(&w);
                    ((w.start_ms, Cow::Owned(w.series)), acc)
                })
                .collect(),
            repeats: b
                .repeats
                .into_iter()
                .map(|r| (Cow::Owned(r.sensor), (r.last, r.repeats.max(0) as u32)))
                .collect(),
            repeat_phases: b
                .repeat_phases
                .into_iter()
                .map(|p| (Cow::Owned(p.sensor), p.phase))
                .collect(),
        }
    }
}

/// One instrument's state as stored on the changelog by state format 1 (JSON), still read. Fields are
/// named; serde also reads the positional array that earlier builds wrote in the same order, so
/// the layout version did not change. Windows are a list because JSON object keys must be
/// strings.
#[derive(Debug, Serialize, Deserialize)]
struct StoredState<S> {
    model: Option<InstrumentModel>,
    software_version: Option<S>,
    reagent_kit_lot: Option<S>,
    run_id: Option<S>,
    max_event_time_ms: i64,
    closed_until_ms: i64,
    windows: Vec<((i64, String), Acc)>,
    /// Added later: absent in states written before stuck-sensor detection.
    #[serde(default)]
    repeats: Vec<(String, (f64, u32))>,
    /// Added later: absent in states written before cohorts.
    #[serde(default)]
    flowcell_lot: Option<S>,
    /// Added later: absent in states written before run phases.
    #[serde(default)]
    repeat_phases: Vec<(String, Option<RunPhase>)>,
}

/// The feature-extractor processor.
#[derive(Debug, Default)]
pub struct FeatureExtractor {
    cfg: FeatureConfig,
    instruments: BTreeMap<String, InstrumentState>,
    /// Per instrument, what its changelog holds and the inputs not yet written.
    journals: BTreeMap<String, Journal>,
    /// Deltas read by a restore in progress, applied by `finish_restore`.
    restoring: BTreeMap<String, Restoring>,
    /// Set while a restore runs deltas' inputs again: they are not journaled a second time.
    replaying: bool,
}

impl FeatureExtractor {
    /// An extractor with the given settings.
    pub fn new(cfg: FeatureConfig) -> Self {
        FeatureExtractor {
            cfg,
            ..Default::default()
        }
    }

    /// The base record of one instrument: its whole state, identified by `base_offset`.
    fn encode_base(&self, key: &str, base_offset: i64) -> Result<Option<Vec<u8>>, StageError> {
        let Some(st) = self.instruments.get(key) else {
            return Ok(None);
        };
        let record = FeatureExtractorState {
            base_offset,
            base: Some(st.stored()),
            delta: None,
        };
        seqmon_model::encode(&record)
            .map(Some)
            .map_err(|e| StageError::Snapshot {
                key: key.into(),
                message: e.to_string(),
            })
    }

    /// Restores a state written by state format 1 (JSON): a base with no identity on the
    /// changelog, so the next write is a base.
    fn restore_json(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let stored: StoredState<String> =
            serde_json::from_slice(state).map_err(|e| StageError::State {
                key: key.into(),
                message: e.to_string(),
            })?;
        self.instruments.insert(
            key.to_string(),
            InstrumentState {
                model: stored.model,
                software_version: stored.software_version,
                reagent_kit_lot: stored.reagent_kit_lot,
                flowcell_lot: stored.flowcell_lot,
                run_id: stored.run_id,
                max_event_time_ms: stored.max_event_time_ms,
                closed_until_ms: stored.closed_until_ms,
                active_since_ms: None,
                windows: stored
                    .windows
                    .into_iter()
                    .map(|((start, series), acc)| ((start, Cow::Owned(series)), acc))
                    .collect(),
                repeats: stored
                    .repeats
                    .into_iter()
                    .map(|(sensor, r)| (Cow::Owned(sensor), r))
                    .collect(),
                repeat_phases: stored
                    .repeat_phases
                    .into_iter()
                    .map(|(sensor, p)| (Cow::Owned(sensor), p))
                    .collect(),
            },
        );
        self.journals.insert(key.to_string(), Journal::default());
        Ok(())
    }

    /// Runs an instrument's deltas (already checked: its base's, slots 1..=n) through the
    /// extractor again; what they emit was committed long ago and is dropped.
    fn replay_deltas(
        &mut self,
        serial: &str,
        deltas: Vec<RestoredDelta>,
    ) -> Result<(), StageError> {
        let mut scratch = Emitter::default();
        self.replaying = true;
        let mut result = Ok(());
        'replay: for delta in &deltas {
            for input in &delta.inputs {
                let envelope = Envelope {
                    key: Some(serial.as_bytes()),
                    value: &input.value,
                    topic: "",
                    partition: 0,
                    offset: input.offset,
                    timestamp_ms: input.timestamp_ms,
                    arrival_time_ms: input.arrival_time_ms,
                };
                // A replayed input refused now (settings changed since) folds nothing in.
                if let Err(e) = self.process(&envelope, &mut scratch) {
                    result = Err(e);
                    break 'replay;
                }
                scratch.take();
            }
        }
        self.replaying = false;
        result?;
        if let Some(j) = self.journals.get_mut(serial) {
            j.deltas = deltas.len() as u32;
            j.delta_bytes = deltas.iter().map(|d| d.bytes).sum();
        }
        Ok(())
    }

    /// Start of the window holding `t` for this instrument.
    fn window_start(&self, serial: &str, t: i64) -> i64 {
        let window = self.cfg.window_ms;
        let offset = match self.cfg.window_alignment {
            WindowAlignment::Epoch => 0,
            WindowAlignment::Instrument => (fnv1a64(serial) % window as u64) as i64,
        };
        t - (t - offset).rem_euclid(window)
    }

    fn close_windows(
        &mut self,
        serial: &str,
        until_ms: i64,
        out: &mut Emitter,
    ) -> Result<(), StageError> {
        let window = self.cfg.window_ms;
        let boundary = self.window_start(serial, until_ms);
        let Some(st) = self.instruments.get_mut(serial) else {
            return Ok(());
        };
        let mut closing: Vec<(i64, Series)> = st
            .windows
            .keys()
            .filter(|(start, _)| start + window <= until_ms)
            .cloned()
            .collect();
        // A window's features go out in catalogue order, where each subsystem's most telling
        // metric comes first (pressure before flow: its direction tells a leak from a clog), so
        // the first anomaly of a subsystem, which names the part, is the telling one.
        let rank = |series: &str| {
            let (metric, phase) = split_series(series);
            (
                phase.is_some(),
                specs::METRICS
                    .iter()
                    .position(|m| m.name == metric)
                    .unwrap_or(usize::MAX),
            )
        };
        // Each series' rank once (a comparator computing it scanned the catalogue by name twice
        // per comparison: a third of the extractor's time in a profile).
        closing.sort_by_cached_key(|(start, series)| (*start, rank(series), series.clone()));
        // A phase's window goes out only with MIN_PHASE_SAMPLES samples (an idle spell caught
        // by one or two samples is too little to judge the idle series by); the sequencing part
        // of a window split by a phase change goes out with fewer only when it is the window's
        // largest part (at slow sampling every boundary window is split 1 + 2).
        let mut parts: BTreeMap<(i64, String), (u32, u32)> = BTreeMap::new();
        for (start, series) in &closing {
            let n = st.windows.get(&(*start, series.clone())).map_or(0, |a| a.n);
            let e = parts.entry((*start, split_series(series).0)).or_default();
            e.0 += 1;
            e.1 = e.1.max(n);
        }
        for key in closing {
            let acc = st.windows.remove(&key).expect("key listed above");
            let (start, series) = key;
            let (metric, phase) = split_series(&series);
            let (count, largest) = parts
                .get(&(start, metric.clone()))
                .copied()
                .unwrap_or((1, 0));
            let too_few =
                acc.n < MIN_PHASE_SAMPLES && (phase.is_some() || (count > 1 && acc.n < largest));
            // The window the instrument started (or came back from a silence) in, when it
            // started more than a tenth of a window in: a partial window, whose level and
            // spread would bias the baseline the detector learns first (with staggered windows
            // almost every instrument's first window is one).
            let partial = st.active_since_ms.is_some_and(|since| {
                (start..start + window).contains(&since)
                    && since - start > window / PARTIAL_WINDOW_DIVISOR
            });
            if too_few || partial {
                continue;
            }
            let model = st.model.unwrap_or(InstrumentModel::UNKNOWN);
            let (spec_low, spec_high) = match phase {
                None => operating_spec(model, &metric),
                Some(_) => (None, None),
            };
            let n = acc.n as f64;
            let mean = acc.sum / n;
            let variance = if acc.n > 1 {
                ((acc.sum_sq - n * mean * mean) / (n - 1.0)).max(0.0)
            } else {
                0.0
            };
            let denom = n * acc.sum_tt - acc.sum_t * acc.sum_t;
            let slope = if acc.n > 2 && denom.abs() > 1e-12 {
                (n * acc.sum_tv - acc.sum_t * acc.sum) / denom
            } else {
                0.0
            };
            let subsystem = specs::metric(&metric)
                .map(|m| m.subsystem)
                .unwrap_or(seqmon_model::Subsystem::OTHER);
            let feature = Feature {
                feature_id: format!("{serial}:{series}:{start}"),
                instrument_serial: serial.to_string(),
                instrument_model: model,
                subsystem,
                metric: metric.clone(),
                window_start_ms: start,
                window_end_ms: start + window,
                sample_count: acc.n as i32,
                level: mean,
                slope_per_hour: slope,
                variability: variance.sqrt(),
                min: acc.min,
                max: acc.max,
                fraction_out_of_spec: acc.out_of_spec as f64 / n,
                spec_low,
                spec_high,
                run_id: st.run_id.clone(),
                software_version: st.software_version.clone(),
                reagent_kit_lot: st.reagent_kit_lot.clone(),
                flowcell_lot: st.flowcell_lot.clone(),
                run_phase: phase,
            };
            out.emit(TopicRole::Features, serial, &feature)?;
            st.closed_until_ms = st.closed_until_ms.max(start + window);
        }
        st.closed_until_ms = st.closed_until_ms.max(boundary);
        Ok(())
    }
}

impl Processor for FeatureExtractor {
    fn stage(&self) -> &'static str {
        "feature-extractor"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Sanitized
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Features]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogFeatureExtractor)
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(t) = out.decode_or_reject::<SanitizedTelemetry>(input) else {
            return Ok(());
        };
        if out.reject_non_finite(t.non_finite_measurement())
            || out.reject_if_ahead(input, t.event_time_ms, self.cfg.max_event_lead_ms)
        {
            return Ok(());
        }
        let serial = t.instrument_serial.clone();
        let start = self.window_start(&serial, t.event_time_ms);
        let new_instrument = !self.instruments.contains_key(&serial);
        if new_instrument {
            self.instruments
                .insert(serial.clone(), InstrumentState::default());
        }
        let st = self
            .instruments
            .get_mut(&serial)
            .expect("inserted above when new");
        if t.event_time_ms < st.closed_until_ms {
            out.reject(
                DeadLetterReason::LATE_EVENT,
                format!(
                    "event time is {} ms before the instrument's last closed window end",
                    st.closed_until_ms - t.event_time_ms
                ),
            );
            return Ok(());
        }
        // A new instrument, or one back after a silence of a window or more.
        if new_instrument || t.event_time_ms - st.max_event_time_ms > self.cfg.window_ms {
            st.active_since_ms = Some(t.event_time_ms);
        }
        st.model = Some(t.instrument_model);
        let hours = (t.event_time_ms - start) as f64 / 3_600_000.0;
        let model = t.instrument_model;
        let add = |st: &mut InstrumentState, metric: &'static str, v: f64| {
            st.windows
                .entry((start, Cow::Borrowed(metric)))
                .or_default()
                .add(hours, v, operating_spec(model, metric));
        };
        // A sensor's samples outside sequencing go to a window of their own phase (key
        // `metric@phase`), with no operating spec: the laser idles, the pumps prime and wash.
        let phase = t
            .sensors
            .as_ref()
            .and_then(|s| RunPhase::own_baseline(s.run_phase));
        let add_sensor = |st: &mut InstrumentState, metric: &'static str, v: f64| match phase {
            None => add(st, metric, v),
            Some(p) => st
                .windows
                .entry((start, Cow::Owned(RunPhase::series(metric, Some(p)))))
                .or_default()
                .add(hours, v, (None, None)),
        };
        match t.kind {
            TelemetryKind::SENSOR_READINGS => {
                if let Some(s) = &t.sensors {
                    // A reading that comes back bit for bit the same STUCK_REPEATS times in a row
                    // is a stuck sensor, not a measurement: it is left out, so a frozen value
                    // neither hides a fault nor fakes one (a stuck temperature against a changing
                    // setpoint would look like a failing heater).
                    let sample_phase = RunPhase::own_baseline(s.run_phase);
                    let live = |st: &mut InstrumentState, name: &'static str, v: f64| {
                        let r = st.repeats.entry(Cow::Borrowed(name)).or_insert((v, 0));
                        let was = st
                            .repeat_phases
                            .entry(Cow::Borrowed(name))
                            .or_insert(sample_phase);
                        if r.0.to_bits() == v.to_bits() {
                            r.1 = r.1.saturating_add(1);
                            // The same bits after the run phase changed: frozen, whatever the
                            // count (a priming pressure replayed while sequencing fakes a clog).
                            if *was != sample_phase {
                                r.1 = r.1.max(STUCK_REPEATS);
                            }
                        } else {
                            *r = (v, 0);
                            *was = sample_phase;
                        }
                        r.1 < STUCK_REPEATS
                    };
                    for (name, v) in s.fields() {
                        let Some(v) = v else { continue };
                        if name == "flowcell_temp_setpoint_c" {
                            continue;
                        }
                        let fresh = live(st, name, v);
                        if fresh && name != "flowcell_temp_c" {
                            add_sensor(st, name, v);
                        }
                    }
                    if let (Some(temp), Some(set)) = (s.flowcell_temp_c, s.flowcell_temp_setpoint_c)
                    {
                        let stuck = st
                            .repeats
                            .get("flowcell_temp_c")
                            .is_some_and(|r| r.1 >= STUCK_REPEATS);
                        if !stuck {
                            add_sensor(st, "flowcell_temp_deviation_c", temp - set);
                        }
                    }
                }
                // Every window with data gets an error count, zero included, so the baseline of
                // the software metric sees quiet windows too.
                st.windows
                    .entry((start, Cow::Borrowed(ERROR_EVENTS)))
                    .or_insert_with(|| Acc {
                        n: 1,
                        ..Default::default()
                    });
            }
            TelemetryKind::RUN_PERFORMANCE => {
                if let Some(p) = &t.run_performance {
                    for (name, v) in p.metrics() {
                        if let (Some(v), true) = (v, RUN_METRICS.contains(&name)) {
                            add(st, name, v);
                        }
                    }
                }
            }
            TelemetryKind::OPERATION_LOG => {
                if let Some(l) = &t.log_event {
                    let acc = st
                        .windows
                        .entry((start, Cow::Borrowed(ERROR_EVENTS)))
                        .or_insert_with(|| Acc {
                            n: 1,
                            ..Default::default()
                        });
                    if l.severity >= Severity::ERROR {
                        acc.sum += 1.0;
                        acc.sum_sq = acc.sum * acc.sum;
                        acc.max = acc.sum;
                        let hi = operating_spec(model, ERROR_EVENTS)
                            .1
                            .unwrap_or(f64::INFINITY);
                        acc.out_of_spec = u32::from(acc.sum > hi);
                    }
                }
            }
            TelemetryKind::INSTRUMENT_CONFIGURATION => {
                st.software_version = t
                    .instrument_configuration
                    .as_ref()
                    .map(|c| c.control_software_version.clone());
            }
            TelemetryKind::RUN_CONFIGURATION => {
                st.reagent_kit_lot = t
                    .run_configuration
                    .as_ref()
                    .map(|c| c.reagent_kit_lot.clone());
                st.flowcell_lot = t.run_configuration.as_ref().map(|c| c.flowcell_lot.clone());
                st.run_id = t.run_id.clone();
            }
        }
        st.max_event_time_ms = st.max_event_time_ms.max(t.event_time_ms);
        let watermark = st.max_event_time_ms - self.cfg.allowed_lateness_ms;
        let closed_before = st.closed_until_ms;
        if self.window_start(&serial, watermark) > closed_before {
            self.close_windows(&serial, watermark, out)?;
        }
        if !self.replaying {
            match self.journals.get_mut(&serial) {
                Some(journal) => journal.fold(input),
                None => {
                    let mut journal = Journal::default();
                    journal.fold(input);
                    self.journals.insert(serial.clone(), journal);
                }
            }
            out.state_changed(&serial);
        }
        Ok(())
    }

    fn on_end_of_input(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        let serials: Vec<String> = self.instruments.keys().cloned().collect();
        for s in serials {
            self.close_windows(&s, i64::MAX - self.cfg.window_ms, out)?;
        }
        Ok(())
    }

    fn state_format_version(&self) -> i32 {
        2
    }

    /// 3: format 2 of an instrument whose model was added in 2026-12 (its base is
    /// `feature_extractor_state` v2, which a build before it cannot read: its restore stops
    /// rather than quarantine the instrument's records).
    fn state_record_format(&self, record: &StateRecord) -> i32 {
        let serial = match ChangelogKey::parse(&record.key) {
            Some(ChangelogKey::Base(serial) | ChangelogKey::Delta(serial, _)) => serial,
            None => record.key.as_str(),
        };
        let added_model = self
            .instruments
            .get(serial)
            .and_then(|st| st.model)
            .is_some_and(|m| !m.in_first_symbols());
        if added_model {
            3
        } else {
            self.state_format_version()
        }
    }

    fn reads_state_format(&self, version: i32) -> bool {
        // 1: one JSON record per instrument; 2: Avro bases and deltas; 3: 2 naming a model
        // added in 2026-12.
        matches!(version, 1..=3)
    }

    /// The whole state of one instrument as a base record (what a restore of it needs alone).
    /// It already holds what the deltas on the changelog hold, so it never takes the changelog
    /// base's identity (-1: no delta belongs to it).
    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        self.encode_base(key, -1)
    }

    fn state_records(&mut self, key: &str) -> Result<Vec<StateRecord>, StageError> {
        if !self.instruments.contains_key(key) {
            self.journals.remove(key);
            return Ok(vec![StateRecord {
                key: key.to_string(),
                value: None,
            }]);
        }
        let journal = self.journals.entry(key.to_string()).or_default();
        let Some(last) = journal.last_input_offset else {
            // Nothing folded in since the last write: the changelog is current.
            return Ok(Vec::new());
        };
        if journal.next_is_base() {
            journal.pending.clear();
            let value = self.encode_base(key, last)?;
            let journal = self.journals.entry(key.to_string()).or_default();
            *journal = Journal {
                base_offset: Some(last),
                base_bytes: value.as_ref().map_or(0, Vec::len),
                ..Journal::default()
            };
            return Ok(vec![StateRecord {
                key: key.to_string(),
                value,
            }]);
        }
        let base_offset = journal.base_offset.unwrap_or(-1);
        let slot = journal.deltas + 1;
        let record = FeatureExtractorState {
            base_offset,
            base: None,
            delta: Some(DeltaInputs {
                slot: slot as i32,
                inputs: std::mem::take(&mut journal.pending),
            }),
        };
        let value = seqmon_model::encode(&record).map_err(|e| StageError::Snapshot {
            key: key.into(),
            message: e.to_string(),
        })?;
        journal.deltas = slot;
        journal.delta_bytes += value.len();
        journal.last_input_offset = None;
        Ok(vec![StateRecord {
            key: ChangelogKey::delta(key, slot),
            value: Some(value),
        }])
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let refused = |message: String| StageError::State {
            key: key.into(),
            message,
        };
        let changelog_key = ChangelogKey::parse(key)
            .ok_or_else(|| refused("not a key this stage writes".into()))?;
        // State format 1 wrote JSON (never starting like the Avro single-object marker C3 01).
        if matches!(state.first(), Some(b'{' | b'[')) {
            let ChangelogKey::Base(serial) = changelog_key else {
                return Err(refused("a JSON state under a delta key".into()));
            };
            return self.restore_json(serial, state);
        }
        let record: FeatureExtractorState =
            seqmon_model::decode(state).map_err(|e| refused(e.to_string()))?;
        match (changelog_key, record.base, record.delta) {
            (ChangelogKey::Base(serial), Some(base), None) => {
                self.instruments
                    .insert(serial.to_string(), InstrumentState::from_stored(base));
                self.journals.insert(
                    serial.to_string(),
                    Journal {
                        // A snapshot taken outside the changelog (-1) has no deltas after it.
                        base_offset: (record.base_offset >= 0).then_some(record.base_offset),
                        base_bytes: state.len(),
                        ..Journal::default()
                    },
                );
                Ok(())
            }
            (ChangelogKey::Delta(serial, slot), None, Some(delta)) => {
                if delta.slot != slot as i32 {
                    return Err(refused(format!(
                        "delta slot {} under the key of slot {slot}",
                        delta.slot
                    )));
                }
                self.restoring
                    .entry(serial.to_string())
                    .or_default()
                    .deltas
                    .insert(
                        slot,
                        RestoredDelta {
                            base_offset: record.base_offset,
                            inputs: delta.inputs,
                            bytes: state.len(),
                        },
                    );
                Ok(())
            }
            _ => Err(refused(
                "neither a base under an instrument's key nor a delta under a slot's".into(),
            )),
        }
    }

    fn finish_restore(&mut self) -> Vec<RestoreFailure> {
        let mut failures = Vec::new();
        for (serial, restoring) in std::mem::take(&mut self.restoring) {
            // Deltas of an instrument with no base (its base was quarantined or deleted) or of
            // an older base are stale: a delta is only ever written after its base.
            let Some(base_offset) = self.journals.get(&serial).and_then(|j| j.base_offset) else {
                continue;
            };
            let current: Vec<(u32, RestoredDelta)> = restoring
                .deltas
                .into_iter()
                .filter(|(_, d)| d.base_offset == base_offset)
                .collect();
            let contiguous = current
                .iter()
                .enumerate()
                .all(|(i, (slot, _))| *slot as usize == i + 1);
            let outcome = if contiguous {
                self.replay_deltas(&serial, current.into_iter().map(|(_, d)| d).collect())
            } else {
                Err(StageError::State {
                    key: serial.clone(),
                    message: format!(
                        "the deltas after base {base_offset} have a gap (slots {:?})",
                        current.iter().map(|(s, _)| *s).collect::<Vec<_>>()
                    ),
                })
            };
            if let Err(error) = outcome {
                self.instruments.remove(&serial);
                self.journals.remove(&serial);
                failures.push(RestoreFailure {
                    changelog_key: serial,
                    error,
                });
            }
        }
        failures
    }

    fn clear_state(&mut self) {
        self.instruments.clear();
        self.journals.clear();
        self.restoring.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.instruments.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{decode, encode, RunPhase, SensorReadings, Subsystem};
    use seqmon_processor::transplant_state;
    use seqmon_processor::Emitted;
    use state::ChangelogKey;

    fn reading(t: i64, laser: f64) -> Vec<u8> {
        encode(&SanitizedTelemetry {
            message_id: format!("m{t}"),
            instrument_serial: "A00001".into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            event_time_ms: t,
            sent_time_ms: t,
            kind: TelemetryKind::SENSOR_READINGS,
            privacy_policy_version: 1,
            run_id: None,
            sensors: Some(SensorReadings {
                laser_power_mw: Some(laser),
                flowcell_temp_c: Some(61.0),
                flowcell_temp_setpoint_c: Some(60.0),
                ..Default::default()
            }),
            log_event: None,
            run_performance: None,
            instrument_configuration: None,
            run_configuration: None,
            attributes: Default::default(),
        })
        .unwrap()
    }

    fn feed(p: &mut FeatureExtractor, bytes: &[u8]) -> (Vec<Emitted>, Option<DeadLetterReason>) {
        let env = Envelope {
            key: Some(b"A00001"),
            value: bytes,
            topic: "telemetry.sanitized",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        p.process(&env, &mut out).unwrap();
        let (r, rej, _) = out.take();
        (r, rej.map(|r| r.reason))
    }

    #[test]
    fn a_measurement_that_is_not_finite_is_refused_and_reaches_no_state() {
        let mut p = FeatureExtractor::default();
        let t0 = 1_800_000_000_000;
        assert_eq!(feed(&mut p, &reading(t0, 150.0)).1, None);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                feed(&mut p, &reading(t0 + 1_000, bad)).1,
                Some(DeadLetterReason::OUT_OF_RANGE)
            );
        }
        // The state still round-trips (a NaN used to be stored as null and stop every restore).
        let snap = p.snapshot("A00001").unwrap().unwrap();
        let mut fresh = FeatureExtractor::default();
        fresh.restore("A00001", &snap).unwrap();
    }

    #[test]
    fn a_record_far_ahead_of_its_arrival_is_refused_and_moves_no_watermark() {
        let mut p = FeatureExtractor::default();
        let feed_at = |p: &mut FeatureExtractor, bytes: &[u8], arrival: i64| {
            let env = Envelope {
                key: Some(b"A00001"),
                value: bytes,
                topic: "telemetry.sanitized",
                partition: 0,
                offset: 0,
                timestamp_ms: Some(arrival),
                arrival_time_ms: None,
            };
            let mut out = Emitter::default();
            p.process(&env, &mut out).unwrap();
            out.take().1.map(|r| r.reason)
        };
        let t0 = 1_800_000_000_000;
        assert_eq!(feed_at(&mut p, &reading(t0, 150.0), t0 + 500), None);
        // An hour, then five years ahead of when it arrived: a clock glitch.
        for ahead in [3_600_000, 5 * 365 * 86_400_000] {
            assert_eq!(
                feed_at(&mut p, &reading(t0 + ahead, 150.0), t0 + 1_000),
                Some(DeadLetterReason::TIMESTAMP_FUTURE)
            );
        }
        // The instrument's real data goes on: not late, the watermark did not move.
        for i in 1..30 {
            let t = t0 + i * 60_000;
            assert_eq!(
                feed_at(&mut p, &reading(t, 150.0), t + 500),
                None,
                "minute {i}"
            );
        }
        // After a real gap (a day without data, arriving a day later) nothing is refused.
        let t = t0 + 86_400_000;
        assert_eq!(feed_at(&mut p, &reading(t, 150.0), t + 500), None);
    }

    fn features(out: &[Emitted]) -> Vec<Feature> {
        out.iter().map(|e| decode(&e.value).unwrap()).collect()
    }

    fn phased(t: i64, laser: f64, phase: RunPhase) -> Vec<u8> {
        let mut r: SanitizedTelemetry = decode(&reading(t, laser)).unwrap();
        r.sensors.as_mut().unwrap().run_phase = Some(phase);
        encode(&r).unwrap()
    }

    #[test]
    fn each_run_phase_has_its_own_windows_and_only_sequencing_its_spec() {
        let mut p = epoch();
        // Window 0: 3 samples idle (laser standby, far below spec), then 7 sequencing.
        // Window 1: 9 sequencing, 1 wash (too few to judge: dropped).
        let mut out = Vec::new();
        for i in 0..20 {
            // (Values vary: a value repeated bit for bit is a stuck sensor.)
            let x = i as f64 * 0.1;
            let (laser, phase) = match i {
                0..=2 => (25.0 + x, RunPhase::IDLE),
                19 => (25.0 + x, RunPhase::WASH),
                _ => (500.0 + x, RunPhase::SEQUENCING),
            };
            out.extend(feed(&mut p, &phased(i * 30_000, laser, phase)).0);
        }
        out.extend(feed(&mut p, &phased(660_000, 26.0, RunPhase::IDLE)).0);
        let lasers: Vec<Feature> = features(&out)
            .into_iter()
            .filter(|f| f.metric == "laser_power_mw")
            .collect();
        let summary: Vec<(i64, Option<RunPhase>, i32, bool)> = lasers
            .iter()
            .map(|f| {
                (
                    f.window_start_ms,
                    f.run_phase,
                    f.sample_count,
                    f.spec_low.is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, None, 7, true),
                (0, Some(RunPhase::IDLE), 3, false),
                (300_000, None, 9, true),
            ]
        );
        assert!(lasers.iter().all(|f| f.fraction_out_of_spec == 0.0));
    }

    #[test]
    fn at_slow_sampling_a_split_window_keeps_its_larger_sequencing_part() {
        let mut p = epoch();
        let mut out = Vec::new();
        // 120 s sampling: one idle sample, then two sequencing ones, in one window.
        out.extend(feed(&mut p, &phased(0, 25.0, RunPhase::IDLE)).0);
        out.extend(feed(&mut p, &phased(120_000, 500.1, RunPhase::SEQUENCING)).0);
        out.extend(feed(&mut p, &phased(240_000, 500.2, RunPhase::SEQUENCING)).0);
        // A phase newer than this build is its own series, not sequencing's.
        out.extend(feed(&mut p, &phased(420_000, 30.0, RunPhase::UNKNOWN)).0);
        let lasers: Vec<(i64, Option<RunPhase>, i32)> = features(&out)
            .into_iter()
            .filter(|f| f.metric == "laser_power_mw")
            .map(|f| (f.window_start_ms, f.run_phase, f.sample_count))
            .collect();
        assert_eq!(lasers, [(0, None, 2)]);
        assert!(p.instruments["A00001"]
            .windows
            .contains_key(&(300_000, Cow::Borrowed("laser_power_mw@unknown"))));
    }

    #[test]
    fn a_reading_repeated_across_a_phase_change_is_a_frozen_sensor() {
        let mut p = epoch();
        let mut out = Vec::new();
        // Priming at 180 (fresh values), then the sensor freezes at its last priming value.
        for i in 0..5 {
            out.extend(
                feed(
                    &mut p,
                    &phased(i * 30_000, 180.0 + i as f64, RunPhase::PRIMING),
                )
                .0,
            );
        }
        for i in 5..10 {
            out.extend(feed(&mut p, &phased(i * 30_000, 184.0, RunPhase::SEQUENCING)).0);
        }
        out.extend(feed(&mut p, &phased(400_000, 500.5, RunPhase::SEQUENCING)).0);
        let lasers: Vec<Feature> = features(&out)
            .into_iter()
            .filter(|f| f.metric == "laser_power_mw")
            .collect();
        assert_eq!(
            lasers.len(),
            1,
            "no sequencing window from a frozen value: {lasers:?}"
        );
        assert_eq!(lasers[0].run_phase, Some(RunPhase::PRIMING));
    }

    #[test]
    fn computes_level_slope_variability_and_out_of_spec() {
        let mut p = epoch();
        // 10 samples, 30 s apart, laser falling 1 mW per sample = 120 mW/h; last two below spec.
        let mut all = Vec::new();
        for i in 0..10 {
            let laser = if i >= 8 { 400.0 } else { 500.0 - i as f64 };
            all.extend(feed(&mut p, &reading(i * 30_000, laser)).0);
        }
        assert!(all.is_empty(), "window still open");
        let (out, _) = feed(&mut p, &reading(300_000 + 60_000, 500.0));
        let fs = features(&out);
        let laser = fs.iter().find(|f| f.metric == "laser_power_mw").unwrap();
        assert_eq!(laser.sample_count, 10);
        assert!((laser.fraction_out_of_spec - 0.2).abs() < 1e-9);
        assert!(laser.slope_per_hour < -100.0, "{}", laser.slope_per_hour);
        assert!(laser.variability > 0.0);
        let dev = fs
            .iter()
            .find(|f| f.metric == "flowcell_temp_deviation_c")
            .unwrap();
        assert!((dev.level - 1.0).abs() < 1e-9);
        assert_eq!(dev.subsystem, Subsystem::THERMAL);
        assert!(fs
            .iter()
            .any(|f| f.metric == ERROR_EVENTS && f.level == 0.0));
    }

    fn epoch() -> FeatureExtractor {
        FeatureExtractor::new(FeatureConfig {
            window_alignment: WindowAlignment::Epoch,
            ..Default::default()
        })
    }

    #[test]
    fn the_window_an_instrument_starts_or_resumes_in_goes_out_only_when_nearly_whole() {
        let laser_windows = |p: &mut FeatureExtractor, times: &[i64]| -> Vec<(i64, i32)> {
            let out: Vec<Emitted> = times
                .iter()
                .flat_map(|t| feed(p, &reading(*t, 500.0 + (*t / 1_000 % 7) as f64)).0)
                .collect();
            features(&out)
                .into_iter()
                .filter(|f| f.metric == "laser_power_mw")
                .map(|f| (f.window_start_ms, f.sample_count))
                .collect()
        };
        let t0 = 1_800_000_000_000; // a multiple of the 5-minute window
        let every_10s = |from: i64, to: i64| (from..to).step_by(10_000).collect::<Vec<_>>();
        // Starts 2 minutes into a window: that window is partial and stays out; the next ones
        // are whole.
        let mut p = epoch();
        let got = laser_windows(&mut p, &every_10s(t0 + 120_000, t0 + 1_000_000));
        assert_eq!(got, [(t0 + 300_000, 30), (t0 + 600_000, 30)]);
        // Starts 20 s in (within the first tenth): kept, with the samples it has.
        let mut p = epoch();
        let got = laser_windows(&mut p, &every_10s(t0 + 20_000, t0 + 700_000));
        assert_eq!(got, [(t0, 28), (t0 + 300_000, 30)]);
        // Back after a silence of more than a window, 3 minutes into a window: that window
        // stays out; the one before the silence went out.
        let mut p = epoch();
        let mut times = every_10s(t0, t0 + 300_000);
        times.extend(every_10s(t0 + 1_080_000, t0 + 1_600_000));
        let got = laser_windows(&mut p, &times);
        assert_eq!(got, [(t0, 30), (t0 + 1_200_000, 30)]);
        // Staggered windows (the default): an instrument's first window is almost never whole,
        // and never goes out partial.
        let mut p = FeatureExtractor::default();
        let got = laser_windows(&mut p, &every_10s(t0, t0 + 1_200_000));
        assert!(got.len() >= 2, "{got:?}");
        assert!(got.iter().all(|(_, n)| *n == 30), "{got:?}");
    }

    #[test]
    fn staggered_windows_have_a_fixed_offset_per_instrument() {
        let p = FeatureExtractor::new(FeatureConfig {
            window_alignment: WindowAlignment::Instrument,
            ..Default::default()
        });
        let w = p.cfg.window_ms;
        let offsets: std::collections::BTreeSet<i64> = (0..200)
            .map(|i| format!("A{i:05}"))
            .map(|serial| {
                let start = p.window_start(&serial, 1_793_491_234_567);
                assert!(start <= 1_793_491_234_567 && 1_793_491_234_567 < start + w);
                // The same boundaries at any time: a whole number of windows apart.
                assert_eq!((p.window_start(&serial, 1_700_000_000_000) - start) % w, 0);
                start.rem_euclid(w)
            })
            .collect();
        // 200 instruments spread over the window, not all on one boundary.
        assert!(offsets.len() > 190, "{}", offsets.len());
        // Pinned: boundaries must not move between releases.
        assert_eq!(p.window_start("A00123", 0), -fnv_offset("A00123", w));
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }

    fn fnv_offset(serial: &str, w: i64) -> i64 {
        w - (fnv1a64(serial) % w as u64) as i64
    }

    #[test]
    fn late_records_are_dead_letters() {
        let mut p = epoch();
        feed(&mut p, &reading(0, 500.0));
        feed(&mut p, &reading(400_000, 500.0));
        assert_eq!(
            feed(&mut p, &reading(10_000, 500.0)).1,
            Some(DeadLetterReason::LATE_EVENT)
        );
    }

    /// One instrument's state as state format 1 wrote it (JSON, named fields).
    fn json_v1(st: &InstrumentState) -> Vec<u8> {
        serde_json::to_vec(&StoredState {
            model: st.model,
            software_version: st.software_version.as_deref(),
            reagent_kit_lot: st.reagent_kit_lot.as_deref(),
            run_id: st.run_id.as_deref(),
            max_event_time_ms: st.max_event_time_ms,
            closed_until_ms: st.closed_until_ms,
            windows: st
                .windows
                .iter()
                .map(|((start, series), v)| ((*start, series.to_string()), v.clone()))
                .collect(),
            repeats: st
                .repeats
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            flowcell_lot: st.flowcell_lot.as_deref(),
            repeat_phases: st
                .repeat_phases
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn an_instrument_of_a_model_added_in_2026_12_writes_format_3_records() {
        let mut p = FeatureExtractor::default();
        feed(&mut p, &reading(1_000, 100.0));
        let base = |p: &mut FeatureExtractor| {
            let records = p.state_records("A00001").unwrap();
            records
                .iter()
                .map(|r| p.state_record_format(r))
                .collect::<Vec<_>>()
        };
        assert_eq!(base(&mut p), vec![2]);
        let mut t = decode::<SanitizedTelemetry>(&reading(2_000, 100.0)).unwrap();
        t.instrument_model = InstrumentModel::HISEQ;
        feed(&mut p, &encode(&t).unwrap());
        // Its base and deltas: a build before 2026-12 stops its restore at them instead of
        // quarantining the instrument (it cannot read feature_extractor_state v2).
        for n in 3..6 {
            t.event_time_ms = n * 1_000;
            t.message_id = format!("h{n}");
            feed(&mut p, &encode(&t).unwrap());
            assert_eq!(base(&mut p), vec![3]);
        }
        assert!(p.reads_state_format(3) && !p.reads_state_format(4));
        let mut q = FeatureExtractor::default();
        transplant_state(&p, &mut q).unwrap();
        assert_eq!(q.snapshot("A00001").unwrap(), p.snapshot("A00001").unwrap());
    }

    #[test]
    fn snapshots_restore_floats_bit_for_bit() {
        let mut p = FeatureExtractor::default();
        // Values whose shortest decimal form does not parse back exactly without
        // serde_json's float_roundtrip: the restored sums must be the same bits.
        for (i, v) in [
            0.1 + 0.2,
            1.0 / 3.0,
            2.0f64.sqrt() * 1e-7,
            123_456.789_012_345_6,
        ]
        .iter()
        .enumerate()
        {
            feed(&mut p, &reading(i as i64 * 1_000, *v));
        }
        let mut q = FeatureExtractor::default();
        transplant_state(&p, &mut q).unwrap();
        // State format 1 (JSON, named fields) restores to the same bits.
        let key = p.state_keys()[0].clone();
        let v1 = json_v1(&p.instruments[&key]);
        let mut from_json = FeatureExtractor::default();
        from_json.restore(&key, &v1).unwrap();
        assert!(from_json.finish_restore().is_empty());
        // Format 1 did not keep when the instrument became active.
        let mut without_since = p.instruments.clone();
        without_since
            .values_mut()
            .for_each(|st| st.active_since_ms = None);
        assert_eq!(from_json.instruments, without_since);
        // So does the positional layout that earlier builds of format 1 wrote.
        let named: serde_json::Value = serde_json::from_slice(&v1).unwrap();
        let positional = serde_json::Value::Array(
            [
                "model",
                "software_version",
                "reagent_kit_lot",
                "run_id",
                "max_event_time_ms",
                "closed_until_ms",
                "windows",
            ]
            .iter()
            .map(|f| named[*f].clone())
            .collect(),
        );
        let mut r = FeatureExtractor::default();
        r.restore(&key, &serde_json::to_vec(&positional).unwrap())
            .unwrap();
        // That layout predates the stuck-sensor counts, which start again empty.
        let mut without_repeats = p.instruments.clone();
        without_repeats.values_mut().for_each(|st| {
            st.repeats.clear();
            st.repeat_phases.clear();
            st.active_since_ms = None;
        });
        assert_eq!(r.instruments, without_repeats);
        assert_eq!(p.instruments, q.instruments);
    }

    /// A compacted changelog as the broker would keep it: the latest record per key.
    #[derive(Default)]
    struct Changelog {
        latest: BTreeMap<String, Vec<u8>>,
        bytes_written: usize,
        records_written: usize,
    }

    impl Changelog {
        fn write(&mut self, records: Vec<StateRecord>) {
            for r in records {
                self.records_written += 1;
                self.bytes_written += r.key.len() + r.value.as_ref().map_or(0, Vec::len);
                match r.value {
                    Some(v) => self.latest.insert(r.key, v),
                    None => self.latest.remove(&r.key),
                };
            }
        }

        /// A fresh extractor restored from it, records handed over in reverse key order.
        fn restore(&self, cfg: &FeatureConfig) -> (FeatureExtractor, Vec<RestoreFailure>) {
            let mut p = FeatureExtractor::new(cfg.clone());
            for (k, v) in self.latest.iter().rev() {
                p.restore(k, v).unwrap();
            }
            let failures = p.finish_restore();
            (p, failures)
        }
    }

    fn sample(serial: &str, t: i64, value: f64, phase: Option<RunPhase>) -> Vec<u8> {
        let mut r: SanitizedTelemetry = decode(&reading(t, value)).unwrap();
        r.instrument_serial = serial.to_string();
        let s = r.sensors.as_mut().unwrap();
        s.run_phase = phase;
        // Every sensor a real instrument reports, each moving.
        let wobble = |k: i64| (t / 1_000 % k) as f64 * 0.37;
        s.focus_fwhm_px = Some(2.1 + wobble(3) * 0.01);
        s.focus_z_offset_um = Some(0.4 + wobble(5) * 0.01);
        s.stage_position_error_um = Some(0.2 + wobble(7) * 0.01);
        s.stage_motor_current_a = Some(1.2 + wobble(11) * 0.01);
        s.flowcell_temp_c = Some(60.0 + wobble(5) * 0.01);
        s.chiller_temp_c = Some(4.0 + wobble(13) * 0.01);
        s.ambient_temp_c = Some(22.0 + wobble(17) * 0.01);
        s.fluidics_pressure_kpa = Some(200.0 + wobble(19));
        s.flow_rate_ul_min = Some(150.0 + wobble(23));
        encode(&r).unwrap()
    }

    /// Runs inputs in batches as the Kafka runtime does: process every record, then write the
    /// changed keys' state records; returns what the batch emitted.
    fn batch(
        p: &mut FeatureExtractor,
        inputs: &[(String, Vec<u8>, i64)],
        log: &mut Changelog,
        json_bytes: &mut usize,
    ) -> Vec<Emitted> {
        let mut emitted = Vec::new();
        let mut changed = std::collections::BTreeSet::new();
        for (serial, value, offset) in inputs {
            let env = Envelope {
                key: Some(serial.as_bytes()),
                value,
                topic: "telemetry.sanitized",
                partition: 0,
                offset: *offset,
                timestamp_ms: None,
                arrival_time_ms: None,
            };
            let mut out = Emitter::default();
            p.process(&env, &mut out).unwrap();
            let (records, _, keys) = out.take();
            emitted.extend(records);
            changed.extend(keys);
        }
        for key in changed {
            *json_bytes += key.len() + json_v1(&p.instruments[&key]).len();
            let records = p.state_records(&key).unwrap();
            log.write(records);
        }
        emitted
    }

    #[test]
    fn bases_and_deltas_restore_to_the_same_state_and_output_at_any_point() {
        let cfg = FeatureConfig {
            window_ms: 60_000,
            allowed_lateness_ms: 2_000,
            window_alignment: WindowAlignment::Instrument,
            ..Default::default()
        };
        let serials = ["A00001", "B00002", "C00003"];
        let t0 = 1_800_000_000_000;
        let inputs: Vec<(String, Vec<u8>, i64)> = (0..900i64)
            .map(|i| {
                let serial = serials[(i % 3) as usize];
                let t = t0 + (i / 3) * 1_000;
                let phase = (i % 97 < 9).then_some(RunPhase::WASH);
                let value = 500.0 - (i % 11) as f64 * 0.5;
                (serial.to_string(), sample(serial, t, value, phase), i)
            })
            .collect();
        let mut straight = FeatureExtractor::new(cfg.clone());
        let mut unused = (Changelog::default(), 0);
        let expected: Vec<Emitted> = inputs
            .chunks(4)
            .flat_map(|c| batch(&mut straight, c, &mut unused.0, &mut unused.1))
            .collect();
        assert!(expected.len() > 100, "{} features", expected.len());

        // The same inputs in batches of 1, 2, 3, 7, 1, ... with a crash and a restore from the
        // changelog every 50-odd records.
        let mut log = Changelog::default();
        let mut json_bytes = 0;
        let mut p = FeatureExtractor::new(cfg.clone());
        let mut got = Vec::new();
        let (mut at, mut n, mut restores) = (0, 0, 0);
        let sizes = [1, 2, 3, 7, 1, 1, 5];
        while at < inputs.len() {
            let size = sizes[n % sizes.len()].min(inputs.len() - at);
            got.extend(batch(
                &mut p,
                &inputs[at..at + size],
                &mut log,
                &mut json_bytes,
            ));
            at += size;
            n += 1;
            if n % 23 == 0 {
                let (restored, failures) = log.restore(&cfg);
                assert!(failures.is_empty(), "{failures:?}");
                assert_eq!(restored.instruments, p.instruments, "after {at} records");
                p = restored;
                restores += 1;
            }
        }
        assert!(restores > 10);
        assert_eq!(got, expected);
        assert_eq!(p.instruments, straight.instruments);
        // What format 1 wrote (each changed instrument's JSON after every batch) against what
        // is written now, and what a restore reads.
        let stored: usize = log.latest.iter().map(|(k, v)| k.len() + v.len()).sum();
        eprintln!(
            "{} inputs: written {} B in {} records ({} B per input), format 1 would write {} B \
             ({} B per input); changelog holds {} B",
            inputs.len(),
            log.bytes_written,
            log.records_written,
            log.bytes_written / inputs.len(),
            json_bytes,
            json_bytes / inputs.len(),
            stored
        );
        assert!(log.bytes_written * 3 < json_bytes);
        // Never more than a base and MAX_DELTAS deltas per instrument.
        assert!(log.latest.len() <= serials.len() * (1 + state::MAX_DELTAS as usize));
    }

    #[test]
    fn without_a_changelog_the_journal_stays_bounded_and_the_next_write_is_a_base() {
        let cfg = FeatureConfig::default();
        let t0 = 1_800_000_000_000;
        let mut p = FeatureExtractor::new(cfg.clone());
        let mut unused = 0;
        let mut log = Changelog::default();
        batch(
            &mut p,
            &[("A00001".into(), sample("A00001", t0, 1.0, None), 0)],
            &mut log,
            &mut unused,
        );
        // A file or embedded run never asks for state records: 1,000 more inputs.
        for i in 1..1_000i64 {
            let value = sample("A00001", t0 + i * 1_000, 1.0 + i as f64, None);
            let env = Envelope {
                key: Some(b"A00001"),
                value: &value,
                topic: "telemetry.sanitized",
                partition: 0,
                offset: i,
                timestamp_ms: None,
                arrival_time_ms: None,
            };
            p.process(&env, &mut Emitter::default()).unwrap();
        }
        assert!(p.journals["A00001"].pending.len() <= state::MAX_PENDING_INPUTS);
        let records = p.state_records("A00001").unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].key, "A00001", "a base, not a delta");
        log.write(records);
        let (restored, failures) = log.restore(&cfg);
        assert!(failures.is_empty());
        assert_eq!(restored.instruments, p.instruments);
        // Nothing new since: nothing to write.
        assert!(p.state_records("A00001").unwrap().is_empty());
    }

    #[test]
    fn deltas_with_a_gap_or_of_an_older_base_never_fold_in() {
        let cfg = FeatureConfig::default();
        let t0 = 1_800_000_000_000;
        let mut log = Changelog::default();
        let mut p = FeatureExtractor::new(cfg.clone());
        let mut unused = 0;
        for i in 0..5i64 {
            let input = (
                "A00001".to_string(),
                sample("A00001", t0 + i * 1_000, 1.0, None),
                i,
            );
            batch(&mut p, &[input], &mut log, &mut unused);
        }
        // A base and deltas 1..=4.
        assert_eq!(log.latest.len(), 5);
        let (restored, failures) = log.restore(&cfg);
        assert!(failures.is_empty());
        assert_eq!(restored.instruments, p.instruments);

        // A lost delta (slot 2) is a gap: the instrument holds no state and its base is named.
        let mut gap = Changelog {
            latest: log.latest.clone(),
            ..Default::default()
        };
        gap.latest.remove(&ChangelogKey::delta("A00001", 2));
        let (restored, failures) = gap.restore(&cfg);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].changelog_key, "A00001");
        assert!(restored.instruments.is_empty());

        // Deltas of an older base (a base written since, here one taken outside the changelog)
        // are ignored rather than folded in twice.
        let mut stale = Changelog {
            latest: log.latest.clone(),
            ..Default::default()
        };
        stale
            .latest
            .insert("A00001".into(), p.snapshot("A00001").unwrap().unwrap());
        let (restored, failures) = stale.restore(&cfg);
        assert!(failures.is_empty());
        assert_eq!(restored.instruments, p.instruments);

        // A delta under another slot's key, or bytes that are not a state, are refused.
        let mut q = FeatureExtractor::new(cfg);
        let d1 = log.latest[&ChangelogKey::delta("A00001", 1)].clone();
        assert!(q.restore(&ChangelogKey::delta("A00001", 3), &d1).is_err());
        assert!(q.restore("A00001", b"\xc3\x01garbage").is_err());
        assert!(q.restore("A00001\u{1f}zz", &d1).is_err());
        assert!(q.instruments.is_empty());
    }

    #[test]
    fn restart_from_snapshot_gives_the_same_output() {
        let inputs: Vec<Vec<u8>> = (0..100)
            .map(|i| reading(i * 30_000, 500.0 - (i % 7) as f64))
            .collect();
        // Staggered windows, so restarts are checked with per-instrument boundaries too.
        let staggered = || {
            FeatureExtractor::new(FeatureConfig {
                window_alignment: WindowAlignment::Instrument,
                ..Default::default()
            })
        };
        let mut straight = staggered();
        let expected: Vec<Emitted> = inputs
            .iter()
            .flat_map(|b| feed(&mut straight, b).0)
            .collect();
        let mut first = staggered();
        let mut got: Vec<Emitted> = inputs[..37]
            .iter()
            .flat_map(|b| feed(&mut first, b).0)
            .collect();
        let mut second = staggered();
        transplant_state(&first, &mut second).unwrap();
        got.extend(inputs[37..].iter().flat_map(|b| feed(&mut second, b).0));
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
    }
}
