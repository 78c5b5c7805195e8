//! Cohort analyzer: reads `cohort.signals`, writes `anomalies` (and `cohort.signals`, to pass a
//! deviation on to the next cohort of its route).
//!
//! Fleet attribution. The anomaly detector is partitioned by instrument, so no instance of it
//! sees several instruments that share a reagent kit lot, a flow-cell lot or a software version.
//! It re-keys what a cohort needs to know onto the repartition topic `cohort.signals`, keyed by
//! cohort (`kind:value`, see [`CohortKind::key`]), as a Kafka Streams repartition does; this
//! stage owns each cohort on one instance:
//! - `MEMBER`: an instrument is in the cohort (sent when it joins and hourly after): the cohort's
//!   size is the instruments heard from within `member_hours`.
//! - `DEVIATION`: an instrument's anomaly in a metric a cohort can cause (run quality: reagent kit
//!   lot, then flow-cell lot; operation-log errors: software version). Every cohort on its route
//!   counts it (ACTIVE deviates, CLEARED no longer); the first decides.
//!
//! Deciding. A deviation waits `hold_minutes` of event time in the deciding cohort. When
//! `min_instruments` members and at least `min_share` of the cohort deviate (ACTIVE) together, the
//! cohort opens one fleet anomaly (`cohort` set, `instrument_serial` the cohort key, rule
//! `cohort_deviation`) and folds its members' waiting and later present deviations into it (a
//! forecast alone keeps waiting): one fleet alert names the lot or version instead of one alert
//! per instrument. Otherwise, when the hold ends, the deviation goes to the next cohort of its
//! route, which holds it until its own watermark passes the same due time (it has counted the
//! deviation since it began), and from the last one to `anomalies` under the instrument's key,
//! unchanged: an instrument's own alert, after the hold. The fleet anomaly is re-sent when its
//! deviating members grew by a quarter, or changed an hour after the last report; it clears when
//! fewer than `min_instruments` deviate, and a folded deviation still standing then goes on as
//! its instrument's own. Once a deviation was passed on, its updates and its clearing follow the
//! same way at once; a deviation that clears while it waits never becomes an alert (it lasted
//! less than the hold). After the input ended (file and embedded runs), nothing waits.
//!
//! Event time: signals reach a cohort from every partition of the anomaly detector, each at its
//! own pace, and within a partition an instrument that was silent or catches up sends after
//! others' later windows, so the latest event time seen says nothing about what is still to
//! come. Every signal carries its source partition's low watermark (its slowest instrument's
//! latest window end); each input partition here keeps the latest per source (state key
//! `~watermark/<partition>`), and its watermark is the slowest source's, as in Flink (a source
//! not heard from yet stands at the lowest watermark seen). A source more than
//! `source_lag_minutes` of event time behind the fastest holds nothing back (its instruments are
//! all silent, or its stage is down), so a decision waits at most that long. Every detector
//! partition also broadcasts its low watermark every few minutes of event time to every
//! partition here (WATERMARK signals, cohort_signal v2), so a partition holding few cohorts
//! still hears from every source
//! and its holds end when the sources have passed them, not after the lag. Holds end on this
//! watermark, never on the wall clock. Hourly (in watermark time) every cohort of a partition is
//! looked at: members not heard from within `member_hours` stop counting, fleets whose members
//! left close, used-up cohorts are forgotten.
//!
//! Limits. Members' hourly signals and the detectors' watermark broadcasts keep the clock
//! moving; a partition that receives nothing keeps its deviations waiting until it does. The detector keeps its partitions' instrument
//! clocks in memory: after a detector restart, until every instrument has sent again, the low
//! watermark may run ahead, and so may a replay whose partitions drift further apart than the
//! lag: a decision may then come early, which can add an instrument's own alert beside a fleet
//! alert, never lose one. Outside those cases a replay of the same log decides the same way.
//!
//! Delivery: a pure processor; the runtime gives it exactly-once input and output. State: per
//! cohort its members, their deviations and decisions, and its fleet episode, persisted to
//! `cohort-analyzer.changelog` on the partition of the cohort's key. A signal that does not
//! decode, names no cohort kind (WATERMARK signals name none), is keyed by another cohort, comes
//! from a partition the input does not have, carries a time or a low watermark outside
//! 1970..2200, or carries an
//! anomaly that does not decode or belongs to another instrument is a dead letter with its
//! reason; it changes no state.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    decode, Anomaly, AnomalySeverity, AnomalyState, CohortEvidence, CohortKind, CohortSignal,
    CohortSignalKind, DeadLetterReason, InstrumentModel, Subsystem,
};
use seqmon_processor::{ConfigError, Emitter, Envelope, Processor, StageError, StateRecord};
use serde::{Deserialize, Serialize};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const WATERMARK_KEY_PREFIX: &str = "~watermark/";
/// Deviating members a fleet anomaly lists by serial (it counts them all).
const MAX_LISTED: usize = 100;
/// Updates of one waiting deviation kept (they are re-sent in order if it is passed on).
const MAX_WAITING_UPDATES: usize = 16;
/// Latest event time a signal may carry (2200-01-01): beyond it, holds would never end.
const MAX_EVENT_TIME_MS: i64 = 7_258_118_400_000;
/// The rule of a fleet anomaly.
pub const COHORT_RULE: &str = "cohort_deviation";

/// Cohort-analyzer settings.
#[derive(Debug, Clone, Args)]
pub struct CohortConfig {
    /// Minutes of event time a deviation waits in its cohort for others before it goes on as
    /// the instrument's own anomaly.
    #[arg(long, env = "COHORT_HOLD_MINUTES", default_value_t = 60)]
    pub hold_minutes: i64,
    /// Members that must deviate together for a fleet anomaly.
    #[arg(long, env = "COHORT_MIN_INSTRUMENTS", default_value_t = 3)]
    pub min_instruments: u32,
    /// Share of the cohort's members that must deviate together for a fleet anomaly (0..1].
    #[arg(long, env = "COHORT_MIN_SHARE", default_value_t = 0.5)]
    pub min_share: f64,
    /// Hours of event time after its last signal that an instrument leaves a cohort (a lot it
    /// no longer runs).
    #[arg(long, env = "COHORT_MEMBER_HOURS", default_value_t = 48)]
    pub member_hours: i64,
    /// Minutes of event time a detector partition may fall behind the fastest one and still hold
    /// decisions back (beyond it: its instruments are silent, or its stage is down).
    #[arg(long, env = "COHORT_SOURCE_LAG_MINUTES", default_value_t = 360)]
    pub source_lag_minutes: i64,
    /// Most a signal's event time may run ahead of its record's arrival (the raw record's broker
    /// receive time, carried by every stage), ms; a signal further ahead is a dead letter
    /// TIMESTAMP_FUTURE and moves no watermark.
    #[arg(long, env = "COHORT_MAX_EVENT_LEAD_MS", default_value_t = seqmon_processor::DEFAULT_MAX_EVENT_LEAD_MS)]
    pub max_event_lead_ms: i64,
}

impl Default for CohortConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl CohortConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |id: &str, message: &str| Err(ConfigError::of::<Self>(id, message));
        if !(0..=7 * 86_400_000).contains(&self.max_event_lead_ms) {
            return bad("max_event_lead_ms", "must be 0..=604800000 (7 days)");
        }
        if !(0..=7 * 24 * 60).contains(&self.hold_minutes) {
            return bad("hold_minutes", "must be 0 to 10080 minutes (a week)");
        }
        if self.min_instruments < 2 {
            return bad(
                "min_instruments",
                "must be at least 2 (one is an instrument's own fault)",
            );
        }
        if !(self.min_share > 0.0 && self.min_share <= 1.0) {
            return bad("min_share", "must be in (0, 1]");
        }
        if !(1..=90 * 24).contains(&self.member_hours) {
            return bad("member_hours", "must be 1 to 2160 hours");
        }
        if !(self.hold_minutes..=7 * 24 * 60).contains(&self.source_lag_minutes) {
            return bad(
                "source_lag_minutes",
                "must be at least hold_minutes and at most 10080 minutes (a week)",
            );
        }
        Ok(())
    }
}

/// What a cohort did with one member's deviation in one metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Decision {
    /// Went on along its route: its updates and clearing follow at once.
    Passed,
    /// Folded into the cohort's fleet anomaly. The latest record and the route it would have
    /// taken are kept, so it goes on as the instrument's own if the fleet closes while it stands.
    Folded { route: Vec<String>, last: Vec<u8> },
}

/// A deviation waiting for its hold to end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Waiting {
    due_ms: i64,
    /// Cohort keys still to decide after this one.
    route: Vec<String>,
    /// The anomaly records (single-object encoded), oldest first.
    records: Vec<Vec<u8>>,
    /// Whether one of them is ACTIVE (a forecast alone is not folded into a fleet anomaly).
    #[serde(default)]
    active: bool,
}

/// A standing deviation of a member, for the fleet anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deviation {
    subsystem: Subsystem,
    severity: AnomalySeverity,
    score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Member {
    model: InstrumentModel,
    last_seen_ms: i64,
    /// Standing deviations by metric (counted copies).
    deviating: BTreeMap<String, Deviation>,
    /// Decisions on deviations this cohort decides, by metric.
    decided: BTreeMap<String, Decision>,
    waiting: BTreeMap<String, Waiting>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FleetEpisode {
    anomaly_id: String,
    severity: AnomalySeverity,
    /// Deviating members last reported.
    reported: Vec<String>,
    /// Event time of the last report.
    #[serde(default)]
    reported_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cohort {
    kind: CohortKind,
    value: String,
    /// Input partition of the cohort's key (its changelog partition).
    partition: i32,
    members: BTreeMap<String, Member>,
    fleet: Option<FleetEpisode>,
}

/// Event-time progress of one input partition, per source (detector) partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Clock {
    /// Source partition → latest low watermark it sent.
    sources: BTreeMap<i32, i64>,
    /// The lowest watermark any source sent here: where a source not heard from yet stands.
    #[serde(default)]
    first_ms: Option<i64>,
    /// Watermark of the last sweep of the partition's cohorts (members leaving, fleets closing).
    #[serde(default)]
    swept_ms: Option<i64>,
}

impl Clock {
    /// Whether the clock moved.
    fn observe(&mut self, source: i32, event_ms: i64) -> bool {
        if source < 0 {
            return false;
        }
        if event_ms == i64::MIN {
            return false;
        }
        let first = Some(self.first_ms.map_or(event_ms, |f| f.min(event_ms)));
        let lowered = first != self.first_ms;
        self.first_ms = first;
        let c = self.sources.entry(source).or_insert(i64::MIN);
        let moved = event_ms > *c;
        *c = (*c).max(event_ms);
        moved || lowered
    }

    /// The slowest of `sources` source partitions (those not heard from yet stand at the first
    /// watermark seen; with `sources` 0, only those heard from count), leaving out any more than
    /// `lag_ms` behind the fastest.
    fn watermark(&self, sources: usize, lag_ms: i64) -> i64 {
        let fastest = self.sources.values().copied().max().unwrap_or(i64::MIN);
        let floor = fastest.saturating_sub(lag_ms);
        let unheard =
            (0..i32::try_from(sources).unwrap_or(i32::MAX)).any(|s| !self.sources.contains_key(&s));
        self.sources
            .values()
            .copied()
            .chain(self.first_ms.filter(|_| unheard))
            .filter(|t| *t >= floor)
            .min()
            .unwrap_or(i64::MIN)
    }
}

/// The cohort-analyzer processor.
#[derive(Debug, Default)]
pub struct CohortAnalyzer {
    cfg: CohortConfig,
    cohorts: BTreeMap<String, Cohort>,
    /// Per input partition, its clock.
    clocks: BTreeMap<i32, Clock>,
    /// Partitions of the input topic, hence of the detector's (co-partitioned); 0 until the
    /// runtime says.
    input_partitions: usize,
    /// Input ended (file and embedded runs): no more evidence can come, nothing waits.
    ended: bool,
    /// Index of waiting deviations: (partition, due, cohort key). Entries may be stale (the
    /// deviation cleared or was folded); the cohort's own state is the truth.
    due: BTreeSet<(i32, i64, String)>,
}

impl CohortAnalyzer {
    /// An analyzer with the given settings.
    pub fn new(cfg: CohortConfig) -> Self {
        CohortAnalyzer {
            cfg,
            ..Default::default()
        }
    }

    /// Sends one decided deviation on: to the next cohort of its route, or to `anomalies`.
    fn pass_on(
        out: &mut Emitter,
        route: &[String],
        record: &[u8],
        a: &Anomaly,
    ) -> Result<(), StageError> {
        match route.split_first() {
            Some((next, rest)) => match CohortKind::parse_key(next) {
                Some((kind, value)) => out.emit(
                    TopicRole::CohortSignals,
                    next,
                    &CohortSignal {
                        signal_id: format!(
                            "{next}:{}:{}:{}:{:?}",
                            a.instrument_serial, a.metric, a.window_end_ms, a.state
                        ),
                        kind,
                        value: value.to_string(),
                        instrument_serial: a.instrument_serial.clone(),
                        instrument_model: a.instrument_model,
                        event_time_ms: a.window_end_ms,
                        source_partition: -1,
                        source_watermark_ms: i64::MIN,
                        signal: CohortSignalKind::DEVIATION,
                        count: false,
                        decide: true,
                        route: rest.to_vec(),
                        anomaly: Some(record.to_vec()),
                    },
                ),
                // A hop no kind spells cannot decide anything: skip it.
                None => Self::pass_on(out, rest, record, a),
            },
            None => {
                out.emit_bytes(TopicRole::Anomalies, &a.instrument_serial, record);
                Ok(())
            }
        }
    }

    /// Passes on every record of a waiting deviation.
    fn release(out: &mut Emitter, w: &Waiting) -> Result<(), StageError> {
        for record in &w.records {
            let a: Anomaly = decode(record).map_err(|e| StageError::State {
                key: "waiting deviation".into(),
                message: e.to_string(),
            })?;
            Self::pass_on(out, &w.route, record, &a)?;
        }
        Ok(())
    }

    /// Moves partition `p`'s clock with a source's watermark and, hourly in watermark time,
    /// looks at every cohort of the partition but `own` (which the caller assesses itself):
    /// members leave, fleets whose members left close, used-up cohorts are forgotten. Returns
    /// the partition's watermark.
    fn advance_clock(
        &mut self,
        p: i32,
        source_partition: i32,
        source_watermark_ms: i64,
        own: Option<&str>,
        out: &mut Emitter,
    ) -> Result<i64, StageError> {
        let (watermark, sweep) = {
            let clock = self.clocks.entry(p).or_default();
            if clock.observe(source_partition, source_watermark_ms) {
                out.state_changed(&format!("{WATERMARK_KEY_PREFIX}{p}"));
            }
            let watermark = clock.watermark(
                self.input_partitions,
                self.cfg.source_lag_minutes * MINUTE_MS,
            );
            let sweep = watermark != i64::MIN
                && clock
                    .swept_ms
                    .is_none_or(|at| watermark >= at.saturating_add(HOUR_MS));
            if sweep {
                clock.swept_ms = Some(watermark);
                out.state_changed(&format!("{WATERMARK_KEY_PREFIX}{p}"));
            }
            (watermark, sweep)
        };
        if sweep {
            let keys: Vec<String> = self
                .cohorts
                .iter()
                .filter(|(k, c)| c.partition == p && Some(k.as_str()) != own)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.assess(&k, watermark, watermark, out)?;
            }
        }
        Ok(watermark)
    }

    /// A detector partition's progress alone (sent to every partition, so a partition holding
    /// few cohorts still hears from every source): moves the clock and ends the holds now due.
    fn on_watermark(
        &mut self,
        s: &CohortSignal,
        p: i32,
        out: &mut Emitter,
    ) -> Result<(), StageError> {
        let known_source = usize::try_from(s.source_partition)
            .is_ok_and(|x| self.input_partitions == 0 || x < self.input_partitions);
        if !known_source {
            out.reject(
                DeadLetterReason::OUT_OF_RANGE,
                format!(
                    "source_partition: {} of {} partitions (WATERMARK)",
                    s.source_partition, self.input_partitions
                ),
            );
            return Ok(());
        }
        if !(0..=MAX_EVENT_TIME_MS).contains(&s.source_watermark_ms) {
            out.reject(
                DeadLetterReason::OUT_OF_RANGE,
                "source_watermark_ms: outside 1970..2200 (WATERMARK)",
            );
            return Ok(());
        }
        let watermark =
            self.advance_clock(p, s.source_partition, s.source_watermark_ms, None, out)?;
        self.release_due(p, watermark, out)
    }

    /// Releases the deviations of partition `p` whose hold ended by `watermark`.
    fn release_due(&mut self, p: i32, watermark: i64, out: &mut Emitter) -> Result<(), StageError> {
        let ready: Vec<(i32, i64, String)> = self
            .due
            .range((p, i64::MIN, String::new())..)
            .take_while(|(q, due, _)| *q == p && *due <= watermark)
            .cloned()
            .collect();
        for entry in ready {
            self.due.remove(&entry);
            let Some(cohort) = self.cohorts.get_mut(&entry.2) else {
                continue;
            };
            for member in cohort.members.values_mut() {
                let done: Vec<String> = member
                    .waiting
                    .iter()
                    .filter(|(_, w)| w.due_ms <= watermark)
                    .map(|(m, _)| m.clone())
                    .collect();
                for metric in done {
                    if let Some(w) = member.waiting.remove(&metric) {
                        Self::release(out, &w)?;
                        member.decided.insert(metric, Decision::Passed);
                    }
                }
            }
            out.state_changed(&entry.2);
        }
        Ok(())
    }

    /// Opens, updates or clears the cohort's fleet anomaly after a change; drops members not
    /// heard from within `member_hours`; forgets an empty cohort.
    fn assess(
        &mut self,
        key: &str,
        now_ms: i64,
        watermark: i64,
        out: &mut Emitter,
    ) -> Result<(), StageError> {
        let cfg = &self.cfg;
        let Some(cohort) = self.cohorts.get_mut(key) else {
            return Ok(());
        };
        // A member not heard from within member_hours has left (a lot it no longer runs): its
        // deviations no longer count. Its decisions stay a while longer, so a late clearing of
        // an alert it passed on still follows it.
        let horizon = watermark.saturating_sub(cfg.member_hours * HOUR_MS);
        let forget = watermark.saturating_sub(7 * cfg.member_hours * HOUR_MS);
        cohort.members.retain(|_, m| {
            if m.last_seen_ms < horizon {
                m.deviating.clear();
            }
            m.last_seen_ms >= horizon
                || !m.waiting.is_empty()
                || (!m.decided.is_empty() && m.last_seen_ms >= forget)
        });
        let deviating: Vec<String> = cohort
            .members
            .iter()
            .filter(|(_, m)| !m.deviating.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        let qualifies = deviating.len() >= cfg.min_instruments as usize
            && deviating.len() as f64 >= cfg.min_share * cohort.members.len() as f64;
        let state = match &cohort.fleet {
            None if qualifies => Some(AnomalyState::ACTIVE),
            // Fewer than min_instruments left: no longer a fleet cause.
            Some(_) if deviating.len() < cfg.min_instruments as usize => {
                Some(AnomalyState::CLEARED)
            }
            // Re-sent when the deviating members grew by a quarter, or changed an hour after the
            // last report: a lot reaching more instruments is news, each single one is not.
            Some(f)
                if f.reported != deviating
                    && (deviating.len() >= f.reported.len() + f.reported.len().div_ceil(4)
                        || now_ms >= f.reported_ms.saturating_add(HOUR_MS)) =>
            {
                Some(AnomalyState::ACTIVE)
            }
            _ => None,
        };
        if let Some(state) = state {
            let record = fleet_anomaly(key, cohort, &deviating, state, now_ms);
            out.emit(TopicRole::Anomalies, key, &record)?;
            cohort.fleet = (state == AnomalyState::ACTIVE).then(|| FleetEpisode {
                anomaly_id: record.anomaly_id.clone(),
                severity: record.severity,
                reported: deviating.clone(),
                reported_ms: now_ms,
            });
            for member in cohort.members.values_mut() {
                if state == AnomalyState::ACTIVE {
                    // Every present deviation waiting here is the cohort's, not its
                    // instrument's (a forecast alone keeps waiting).
                    let present: Vec<String> = member
                        .waiting
                        .iter()
                        .filter(|(_, w)| w.active)
                        .map(|(m, _)| m.clone())
                        .collect();
                    for metric in present {
                        if let Some(w) = member.waiting.remove(&metric) {
                            let last = w.records.last().cloned().unwrap_or_default();
                            member.decided.insert(
                                metric,
                                Decision::Folded {
                                    route: w.route,
                                    last,
                                },
                            );
                        }
                    }
                } else {
                    // The fleet closed: a folded deviation that still stands goes on as the
                    // instrument's own; the others are over.
                    let folded: Vec<(String, Vec<String>, Vec<u8>)> = member
                        .decided
                        .iter()
                        .filter_map(|(m, d)| match d {
                            Decision::Folded { route, last } => {
                                Some((m.clone(), route.clone(), last.clone()))
                            }
                            Decision::Passed => None,
                        })
                        .collect();
                    for (metric, route, last) in folded {
                        if member.deviating.contains_key(&metric) && !last.is_empty() {
                            let a: Anomaly = decode(&last).map_err(|e| StageError::State {
                                key: key.to_string(),
                                message: format!("folded deviation: {e}"),
                            })?;
                            Self::pass_on(out, &route, &last, &a)?;
                            member.decided.insert(metric, Decision::Passed);
                        } else {
                            member.decided.remove(&metric);
                        }
                    }
                }
            }
        }
        if cohort.members.is_empty() && cohort.fleet.is_none() {
            self.cohorts.remove(key);
        }
        out.state_changed(key);
        Ok(())
    }
}

/// The fleet anomaly of a cohort.
fn fleet_anomaly(
    key: &str,
    cohort: &Cohort,
    deviating: &[String],
    state: AnomalyState,
    now_ms: i64,
) -> Anomaly {
    let devs: Vec<(&String, &Deviation, InstrumentModel)> = deviating
        .iter()
        .filter_map(|s| cohort.members.get(s).map(|m| (s, m)))
        .flat_map(|(_, m)| m.deviating.iter().map(move |(k, d)| (k, d, m.model)))
        .collect();
    // The metric most members deviate in names the fleet anomaly; the most common model of the
    // deviating members stands for the cohort's model.
    let mut by_metric: BTreeMap<&String, usize> = BTreeMap::new();
    let mut by_model: BTreeMap<InstrumentModel, usize> = BTreeMap::new();
    for (metric, _, model) in &devs {
        *by_metric.entry(metric).or_default() += 1;
        *by_model.entry(*model).or_default() += 1;
    }
    let metric = by_metric
        .iter()
        .max_by_key(|(m, n)| (**n, std::cmp::Reverse(**m)))
        .map(|(m, _)| (*m).clone());
    let model = by_model
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(m, _)| *m)
        .or_else(|| cohort.members.values().next().map(|m| m.model))
        .unwrap_or(InstrumentModel::UNKNOWN);
    let subsystem = devs
        .iter()
        .find(|(m, ..)| Some(*m) == metric.as_ref())
        .map(|(_, d, _)| d.subsystem)
        .unwrap_or(match cohort.kind {
            CohortKind::SOFTWARE_VERSION => Subsystem::SOFTWARE,
            _ => Subsystem::CHEMISTRY,
        });
    let severity = devs
        .iter()
        .map(|(_, d, _)| d.severity)
        .max()
        .unwrap_or(AnomalySeverity::LOW)
        .max(
            cohort
                .fleet
                .as_ref()
                .map_or(AnomalySeverity::LOW, |f| f.severity),
        )
        // Several instruments' runs at risk at once: at least HIGH.
        .max(AnomalySeverity::HIGH);
    let score = devs.iter().map(|(_, d, _)| d.score).fold(0.0, f64::max);
    let members = cohort.members.len();
    let share = if members == 0 {
        0.0
    } else {
        deviating.len() as f64 / members as f64
    };
    let anomaly_id = cohort
        .fleet
        .as_ref()
        .map_or_else(|| format!("{key}:{now_ms}"), |f| f.anomaly_id.clone());
    let lot = |k: CohortKind| (cohort.kind == k).then(|| cohort.value.clone());
    Anomaly {
        anomaly_id,
        instrument_serial: key.to_string(),
        instrument_model: model,
        subsystem,
        metric: metric.unwrap_or_else(|| "cohort".into()),
        state,
        score,
        severity: if state == AnomalyState::CLEARED {
            AnomalySeverity::LOW
        } else {
            severity
        },
        rule: if state == AnomalyState::CLEARED {
            "cleared".into()
        } else {
            COHORT_RULE.into()
        },
        window_start_ms: now_ms,
        window_end_ms: now_ms,
        observed_level: share,
        baseline_level: 0.0,
        baseline_stddev: 0.0,
        slope_per_hour: 0.0,
        fraction_out_of_spec: 0.0,
        spec_low: None,
        spec_high: None,
        software_version: lot(CohortKind::SOFTWARE_VERSION),
        reagent_kit_lot: lot(CohortKind::REAGENT_KIT_LOT),
        predicted_limit_ms: None,
        predicted_limit_earliest_ms: None,
        predicted_limit_latest_ms: None,
        flowcell_lot: lot(CohortKind::FLOWCELL_LOT),
        cohort: Some(CohortEvidence {
            kind: cohort.kind,
            value: cohort.value.clone(),
            members: i32::try_from(members).unwrap_or(i32::MAX),
            deviating: i32::try_from(deviating.len()).unwrap_or(i32::MAX),
            instruments: deviating.iter().take(MAX_LISTED).cloned().collect(),
        }),
        run_phase: None,
    }
}

impl Processor for CohortAnalyzer {
    fn stage(&self) -> &'static str {
        "cohort-analyzer"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::CohortSignals
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Anomalies, TopicRole::CohortSignals]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogCohortAnalyzer)
    }

    /// 2: format 1 of a cohort with a member of a model added in 2026-12, which a build before
    /// it cannot read (so its restore stops rather than quarantine the whole cohort).
    fn state_record_format(&self, record: &StateRecord) -> i32 {
        let added_model = self
            .cohorts
            .get(&record.key)
            .is_some_and(|c| c.members.values().any(|m| !m.model.in_first_symbols()));
        if added_model {
            2
        } else {
            self.state_format_version()
        }
    }

    fn reads_state_format(&self, version: i32) -> bool {
        matches!(version, 1 | 2)
    }

    fn on_input_partitions(&mut self, count: usize) {
        self.input_partitions = count;
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        let Some(s) = out.decode_or_reject::<CohortSignal>(input) else {
            return Ok(());
        };
        // Both times move clocks here: the signal's own and its source partition's watermark.
        let latest = s.event_time_ms.max(s.source_watermark_ms);
        if out.reject_if_ahead(input, latest, self.cfg.max_event_lead_ms) {
            return Ok(());
        }
        if s.signal == CohortSignalKind::WATERMARK {
            return self.on_watermark(&s, input.partition, out);
        }
        if s.kind == CohortKind::UNKNOWN {
            out.reject(
                DeadLetterReason::INCONSISTENT_PAYLOAD,
                "kind: UNKNOWN names no cohort",
            );
            return Ok(());
        }
        let anomaly = match (s.signal, s.anomaly.as_deref()) {
            (CohortSignalKind::MEMBER | CohortSignalKind::WATERMARK, _) => None,
            (CohortSignalKind::DEVIATION, None) => {
                out.reject(
                    DeadLetterReason::MISSING_FIELD,
                    "anomaly: DEVIATION without one",
                );
                return Ok(());
            }
            (CohortSignalKind::DEVIATION, Some(bytes)) => match decode::<Anomaly>(bytes) {
                Ok(a) if out.reject_non_finite(a.non_finite_measurement()) => {
                    return Ok(());
                }
                Ok(a) if a.instrument_serial == s.instrument_serial && a.cohort.is_none() => {
                    Some((a, bytes.to_vec()))
                }
                Ok(_) => {
                    out.reject(
                        DeadLetterReason::INCONSISTENT_PAYLOAD,
                        "anomaly: not the signal's instrument's own",
                    );
                    return Ok(());
                }
                Err(e) => {
                    out.reject(DeadLetterReason::UNDECODABLE, format!("anomaly: {e}"));
                    return Ok(());
                }
            },
        };
        let key = s.kind.key(&s.value);
        // A record on another cohort's key would put that cohort's state on this partition.
        if input.key.is_some_and(|k| k != key.as_bytes()) {
            out.reject(
                DeadLetterReason::INCONSISTENT_PAYLOAD,
                "key: not the signal's cohort (kind:value)",
            );
            return Ok(());
        }
        // Times that would stall or race the clock: a source partition the input does not
        // have, an event time or watermark outside any instrument's life.
        let known_source = self.input_partitions == 0
            || usize::try_from(s.source_partition).is_ok_and(|x| x < self.input_partitions);
        if !(s.source_partition == -1 || known_source) {
            out.reject(
                DeadLetterReason::OUT_OF_RANGE,
                format!(
                    "source_partition: {} of {} partitions",
                    s.source_partition, self.input_partitions
                ),
            );
            return Ok(());
        }
        let plausible = |t: i64| (0..=MAX_EVENT_TIME_MS).contains(&t);
        if !plausible(s.event_time_ms)
            || !(s.source_watermark_ms == i64::MIN || plausible(s.source_watermark_ms))
        {
            out.reject(
                DeadLetterReason::OUT_OF_RANGE,
                "event_time_ms / source_watermark_ms: outside 1970..2200",
            );
            return Ok(());
        }
        let p = input.partition;
        let watermark = self.advance_clock(
            p,
            s.source_partition,
            s.source_watermark_ms,
            Some(&key),
            out,
        )?;
        let hold = self.cfg.hold_minutes * MINUTE_MS;
        let cohort = self.cohorts.entry(key.clone()).or_insert_with(|| Cohort {
            kind: s.kind,
            value: s.value.clone(),
            partition: p,
            members: BTreeMap::new(),
            fleet: None,
        });
        cohort.partition = p;
        let fleet_open = cohort.fleet.is_some();
        let ended = self.ended;
        let member = cohort
            .members
            .entry(s.instrument_serial.clone())
            .or_insert_with(|| Member {
                model: s.instrument_model,
                last_seen_ms: s.event_time_ms,
                deviating: BTreeMap::new(),
                decided: BTreeMap::new(),
                waiting: BTreeMap::new(),
            });
        member.model = s.instrument_model;
        member.last_seen_ms = member.last_seen_ms.max(s.event_time_ms);
        if let Some((a, bytes)) = anomaly {
            if s.count {
                match a.state {
                    AnomalyState::ACTIVE => {
                        member.deviating.insert(
                            a.metric.clone(),
                            Deviation {
                                subsystem: a.subsystem,
                                severity: a.severity,
                                score: if a.score.is_finite() { a.score } else { 0.0 },
                            },
                        );
                    }
                    AnomalyState::CLEARED => {
                        member.deviating.remove(&a.metric);
                    }
                    AnomalyState::PREDICTED => {}
                }
            }
            if s.decide {
                let cleared = a.state == AnomalyState::CLEARED;
                let present = a.state == AnomalyState::ACTIVE;
                match member.decided.get_mut(&a.metric) {
                    Some(Decision::Folded { route, last }) => {
                        if cleared {
                            member.decided.remove(&a.metric);
                        } else {
                            *route = s.route.clone();
                            *last = bytes;
                        }
                    }
                    Some(Decision::Passed) => {
                        if cleared {
                            member.decided.remove(&a.metric);
                        }
                        Self::pass_on(out, &s.route, &bytes, &a)?;
                    }
                    None if cleared => {
                        // Cleared while waiting: it lasted less than the hold. Cleared with
                        // nothing known here (its opening came before this state): pass it on,
                        // a clearing of nothing is harmless downstream.
                        if member.waiting.remove(&a.metric).is_none() {
                            Self::pass_on(out, &s.route, &bytes, &a)?;
                        }
                    }
                    None if ended => {
                        // No more evidence can come: nothing waits.
                        member.decided.insert(a.metric.clone(), Decision::Passed);
                        Self::pass_on(out, &s.route, &bytes, &a)?;
                    }
                    None if fleet_open && present => {
                        member.decided.insert(
                            a.metric.clone(),
                            Decision::Folded {
                                route: s.route.clone(),
                                last: bytes,
                            },
                        );
                    }
                    None => {
                        let w = member
                            .waiting
                            .entry(a.metric.clone())
                            .or_insert_with(|| Waiting {
                                due_ms: s.event_time_ms.saturating_add(hold),
                                route: s.route.clone(),
                                records: Vec::new(),
                                active: false,
                            });
                        if w.records.len() >= MAX_WAITING_UPDATES {
                            // Keep the first (the opening) and the latest.
                            w.records.remove(1);
                        }
                        w.records.push(bytes);
                        w.active |= present;
                        self.due.insert((p, w.due_ms, key.clone()));
                    }
                }
            }
        }
        self.assess(&key, s.event_time_ms, watermark, out)?;
        self.release_due(p, watermark, out)?;
        Ok(())
    }

    /// End of a file or embedded input: every waiting deviation goes on (no more evidence can
    /// come).
    fn on_end_of_input(&mut self, out: &mut Emitter) -> Result<(), StageError> {
        self.ended = true;
        let keys: Vec<String> = self.cohorts.keys().cloned().collect();
        for key in keys {
            let Some(cohort) = self.cohorts.get_mut(&key) else {
                continue;
            };
            let mut changed = false;
            for member in cohort.members.values_mut() {
                for (metric, w) in std::mem::take(&mut member.waiting) {
                    Self::release(out, &w)?;
                    member.decided.insert(metric, Decision::Passed);
                    changed = true;
                }
            }
            if changed {
                out.state_changed(&key);
            }
        }
        self.due.clear();
        Ok(())
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        let fail = |e: serde_json::Error| StageError::Snapshot {
            key: key.into(),
            message: e.to_string(),
        };
        if let Some(p) = key.strip_prefix(WATERMARK_KEY_PREFIX) {
            let p: i32 = p.parse().map_err(|_| StageError::Snapshot {
                key: key.into(),
                message: "watermark key without a partition".into(),
            })?;
            return self
                .clocks
                .get(&p)
                .map(serde_json::to_vec)
                .transpose()
                .map_err(fail);
        }
        self.cohorts
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
        if let Some(p) = key.strip_prefix(WATERMARK_KEY_PREFIX) {
            let p: i32 = p
                .parse()
                .map_err(|_| fail("watermark key without a partition".into()))?;
            let w = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
            self.clocks.insert(p, w);
            return Ok(());
        }
        let c: Cohort = serde_json::from_slice(state).map_err(|e| fail(e.to_string()))?;
        for m in c.members.values() {
            for w in m.waiting.values() {
                self.due.insert((c.partition, w.due_ms, key.to_string()));
            }
        }
        self.cohorts.insert(key.to_string(), c);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.cohorts.clear();
        self.clocks.clear();
        self.due.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        self.cohorts
            .keys()
            .cloned()
            .chain(
                self.clocks
                    .keys()
                    .map(|p| format!("{WATERMARK_KEY_PREFIX}{p}")),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::encode;
    use seqmon_processor::transplant_state;
    use seqmon_processor::Emitted;

    const T0: i64 = 1_793_491_200_000;
    const LOT: &str = "SBS-20991";

    fn anomaly(serial: &str, state: AnomalyState, minute: i64) -> Anomaly {
        Anomaly {
            anomaly_id: format!("{serial}:pct_q30:{minute}"),
            instrument_serial: serial.into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            subsystem: Subsystem::CHEMISTRY,
            metric: "pct_q30".into(),
            state,
            score: 9.0,
            severity: AnomalySeverity::HIGH,
            rule: "baseline_shift".into(),
            window_start_ms: T0 + (minute - 5) * MINUTE_MS,
            window_end_ms: T0 + minute * MINUTE_MS,
            observed_level: 70.0,
            baseline_level: 85.0,
            baseline_stddev: 1.0,
            slope_per_hour: 0.0,
            fraction_out_of_spec: 0.0,
            spec_low: Some(75.0),
            spec_high: None,
            software_version: None,
            reagent_kit_lot: Some(LOT.into()),
            predicted_limit_ms: None,
            predicted_limit_earliest_ms: None,
            predicted_limit_latest_ms: None,
            flowcell_lot: Some("FC-30001".into()),
            cohort: None,
            run_phase: None,
        }
    }

    fn signal(serial: &str, minute: i64, a: Option<&Anomaly>, route: &[&str]) -> CohortSignal {
        CohortSignal {
            signal_id: format!("{serial}:{minute}"),
            kind: CohortKind::REAGENT_KIT_LOT,
            value: LOT.into(),
            instrument_serial: serial.into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            event_time_ms: T0 + minute * MINUTE_MS,
            source_partition: 0,
            source_watermark_ms: T0 + minute * MINUTE_MS,
            signal: if a.is_some() {
                CohortSignalKind::DEVIATION
            } else {
                CohortSignalKind::MEMBER
            },
            count: true,
            decide: true,
            route: route.iter().map(|s| s.to_string()).collect(),
            anomaly: a.map(|a| encode(a).unwrap()),
        }
    }

    fn feed_bytes(
        c: &mut CohortAnalyzer,
        bytes: &[u8],
    ) -> (Vec<Emitted>, Option<DeadLetterReason>) {
        // Keyed as the detector keys it (the record's own cohort).
        let key = decode::<CohortSignal>(bytes)
            .map(|s| s.kind.key(&s.value))
            .unwrap_or_default();
        let env = Envelope {
            key: Some(key.as_bytes()),
            value: bytes,
            topic: TopicRole::CohortSignals.spec().name,
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        c.process(&env, &mut out).unwrap();
        let (emitted, rejection, _) = out.take();
        (emitted, rejection.map(|r| r.reason))
    }

    fn feed(c: &mut CohortAnalyzer, s: &CohortSignal) -> Vec<Emitted> {
        let (out, rejected) = feed_bytes(c, &encode(s).unwrap());
        assert_eq!(rejected, None);
        out
    }

    fn anomalies(out: &[Emitted]) -> Vec<Anomaly> {
        out.iter()
            .filter(|e| e.role == TopicRole::Anomalies)
            .map(|e| decode(&e.value).unwrap())
            .collect()
    }

    #[test]
    fn a_cohort_with_a_member_of_a_model_added_in_2026_12_is_written_as_format_2() {
        let mut c = CohortAnalyzer::default();
        feed(&mut c, &signal("A0", 0, None, &[]));
        let key = CohortKind::REAGENT_KIT_LOT.key(LOT);
        let record = |c: &CohortAnalyzer| StateRecord {
            key: key.clone(),
            value: c.snapshot(&key).unwrap(),
        };
        assert_eq!(c.state_record_format(&record(&c)), 1);
        let mut s = signal("B0", 1, None, &[]);
        s.instrument_model = InstrumentModel::MINISEQ;
        feed(&mut c, &s);
        // A build before 2026-12 stops its restore at it instead of quarantining the cohort.
        assert_eq!(c.state_record_format(&record(&c)), 2);
        assert!(c.reads_state_format(2) && !c.reads_state_format(3));
        let mut d = CohortAnalyzer::default();
        seqmon_processor::transplant_state(&c, &mut d).unwrap();
        assert_eq!(d.snapshot(&key).unwrap(), c.snapshot(&key).unwrap());
    }

    /// Five members, of which `deviating` deviate at minute 10.
    fn cohort_with(c: &mut CohortAnalyzer, deviating: usize) -> Vec<Emitted> {
        let mut out = Vec::new();
        for i in 0..5 {
            out.extend(feed(c, &signal(&format!("A{i}"), 0, None, &[])));
        }
        for i in 0..deviating {
            let a = anomaly(&format!("A{i}"), AnomalyState::ACTIVE, 10);
            out.extend(feed(c, &signal(&format!("A{i}"), 10, Some(&a), &[])));
        }
        out
    }

    #[test]
    fn instruments_deviating_together_make_one_fleet_anomaly_and_no_instrument_ones() {
        let mut c = CohortAnalyzer::default();
        let out = cohort_with(&mut c, 3);
        let got = anomalies(&out);
        assert_eq!(got.len(), 1, "{got:?}");
        let fleet = &got[0];
        assert_eq!(fleet.state, AnomalyState::ACTIVE);
        assert_eq!(fleet.rule, COHORT_RULE);
        assert_eq!(fleet.instrument_serial, "reagent_kit_lot:SBS-20991");
        assert_eq!(fleet.reagent_kit_lot.as_deref(), Some(LOT));
        let ev = fleet.cohort.as_ref().unwrap();
        assert_eq!((ev.members, ev.deviating), (5, 3));
        assert_eq!(ev.instruments, ["A0", "A1", "A2"]);
        // The hold ends: nothing of the three goes out as an instrument's own anomaly.
        let later = feed(&mut c, &signal("A4", 200, None, &[]));
        assert!(anomalies(&later).is_empty());
        // A fourth deviates later: folded at once, and the fleet anomaly grows (4 >= 3 + 1).
        let a = anomaly("A3", AnomalyState::ACTIVE, 210);
        let grew = anomalies(&feed(&mut c, &signal("A3", 210, Some(&a), &[])));
        assert_eq!(grew.len(), 1);
        assert_eq!(grew[0].cohort.as_ref().unwrap().deviating, 4);
        assert_eq!(grew[0].anomaly_id, fleet.anomaly_id, "the same episode");
        // All clear: the fleet anomaly clears, and no instrument clearing goes out.
        let mut cleared = Vec::new();
        for i in 0..4 {
            let a = anomaly(&format!("A{i}"), AnomalyState::CLEARED, 300);
            cleared.extend(anomalies(&feed(
                &mut c,
                &signal(&format!("A{i}"), 300, Some(&a), &[]),
            )));
        }
        // Below three deviating members the fleet closes (once); the two still deviating then
        // go on as their instruments' own, and their clearings follow.
        let fleet_cleared = cleared
            .iter()
            .filter(|a| a.instrument_serial == fleet.instrument_serial)
            .filter(|a| a.state == AnomalyState::CLEARED)
            .count();
        assert_eq!(fleet_cleared, 1);
        let own: Vec<(&str, AnomalyState)> = cleared
            .iter()
            .filter(|a| a.cohort.is_none())
            .map(|a| (a.instrument_serial.as_str(), a.state))
            .collect();
        assert_eq!(
            own,
            [
                ("A2", AnomalyState::ACTIVE),
                ("A3", AnomalyState::ACTIVE),
                ("A2", AnomalyState::CLEARED),
                ("A3", AnomalyState::CLEARED)
            ]
        );
    }

    #[test]
    fn a_lone_deviation_goes_on_unchanged_after_the_hold_and_its_clearing_follows() {
        let mut c = CohortAnalyzer::default();
        let out = cohort_with(&mut c, 1);
        assert!(out.is_empty(), "held: {out:?}");
        // 59 minutes later it still waits; at 60 it goes to `anomalies` byte for byte.
        assert!(feed(&mut c, &signal("A4", 69, None, &[])).is_empty());
        let out = feed(&mut c, &signal("A4", 70, None, &[]));
        let sent = anomaly("A0", AnomalyState::ACTIVE, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].role, TopicRole::Anomalies);
        assert_eq!(out[0].key, "A0");
        assert_eq!(out[0].value, encode(&sent).unwrap());
        // Its clearing follows at once.
        let cl = anomaly("A0", AnomalyState::CLEARED, 90);
        let out = anomalies(&feed(&mut c, &signal("A0", 90, Some(&cl), &[])));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state, AnomalyState::CLEARED);
    }

    #[test]
    fn a_passed_deviation_asks_the_next_cohort_of_its_route() {
        let mut c = CohortAnalyzer::default();
        let next = CohortKind::FLOWCELL_LOT.key("FC-30001");
        let a = anomaly("A0", AnomalyState::ACTIVE, 10);
        feed(&mut c, &signal("A0", 10, Some(&a), &[&next]));
        let out = feed(&mut c, &signal("A1", 80, None, &[]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].role, TopicRole::CohortSignals);
        assert_eq!(out[0].key, next);
        let s: CohortSignal = decode(&out[0].value).unwrap();
        assert!(s.decide && !s.count && s.route.is_empty());
        assert_eq!(s.kind, CohortKind::FLOWCELL_LOT);
        assert_eq!(s.anomaly, Some(encode(&a).unwrap()));
    }

    /// A signal from detector partition `source`.
    fn feed_from(c: &mut CohortAnalyzer, mut s: CohortSignal, source: i32) -> Vec<Emitted> {
        s.source_partition = source;
        feed(c, &s)
    }

    #[test]
    fn holds_end_on_the_slowest_source_partition_unless_it_is_far_behind() {
        let mut c = CohortAnalyzer::default();
        // Source 1 has reached minute 5, source 0 races ahead to minute 300.
        feed_from(&mut c, signal("B0", 5, None, &[]), 1);
        let a = anomaly("A0", AnomalyState::ACTIVE, 10);
        assert!(feed_from(&mut c, signal("A0", 10, Some(&a), &[]), 0).is_empty());
        assert!(
            feed_from(&mut c, signal("A1", 300, None, &[]), 0).is_empty(),
            "source 1 may still send deviations of minute 10: the hold goes on"
        );
        // Source 1 catches up: released.
        let out = feed_from(&mut c, signal("B0", 75, None, &[]), 1);
        assert_eq!(anomalies(&out).len(), 1);

        // With three source partitions, one never heard from holds back too (where the
        // partition's first watermark stood), until the lag.
        let mut c = CohortAnalyzer::default();
        c.on_input_partitions(3);
        feed_from(&mut c, signal("B0", 5, None, &[]), 1);
        feed_from(&mut c, signal("A0", 10, Some(&a), &[]), 0);
        assert!(feed_from(&mut c, signal("B0", 300, None, &[]), 1).is_empty());
        assert!(feed_from(&mut c, signal("A1", 300, None, &[]), 0).is_empty());
        let out = feed_from(&mut c, signal("C0", 100, None, &[]), 2);
        assert_eq!(anomalies(&out).len(), 1);

        // A source more than six hours behind the fastest holds nothing back.
        let mut c = CohortAnalyzer::default();
        feed_from(&mut c, signal("B0", 5, None, &[]), 1);
        feed_from(&mut c, signal("A0", 10, Some(&a), &[]), 0);
        assert!(feed_from(&mut c, signal("A1", 365, None, &[]), 0).is_empty());
        let out = feed_from(&mut c, signal("A1", 366, None, &[]), 0);
        assert_eq!(anomalies(&out).len(), 1);
    }

    fn watermark(source: i32, minute: i64) -> CohortSignal {
        CohortSignal {
            signal_id: format!("~watermark/0:{source}:{minute}:WATERMARK"),
            kind: CohortKind::UNKNOWN,
            value: String::new(),
            instrument_serial: String::new(),
            instrument_model: InstrumentModel::UNKNOWN,
            event_time_ms: T0 + minute * MINUTE_MS,
            source_partition: source,
            source_watermark_ms: T0 + minute * MINUTE_MS,
            signal: CohortSignalKind::WATERMARK,
            count: false,
            decide: false,
            route: Vec::new(),
            anomaly: None,
        }
    }

    #[test]
    fn watermarks_from_sources_without_members_here_end_holds() {
        // A lone deviation on a partition where sources 1 and 2 have no member: only their
        // broadcast watermarks can tell it that nothing earlier will come from them.
        let mut c = CohortAnalyzer::default();
        c.on_input_partitions(3);
        let a = anomaly("A0", AnomalyState::ACTIVE, 10);
        feed_from(&mut c, signal("A0", 0, None, &[]), 0);
        assert!(feed_from(&mut c, signal("A0", 10, Some(&a), &[]), 0).is_empty());
        assert!(feed_from(&mut c, signal("A0", 120, None, &[]), 0).is_empty());
        assert!(
            feed(&mut c, &watermark(1, 120)).is_empty(),
            "source 2 unheard"
        );
        let out = feed(&mut c, &watermark(2, 90));
        assert_eq!(anomalies(&out).len(), 1, "every source past the hold's end");
        // They change no cohort and hold no state of their own beyond the clock.
        assert!(!c.cohorts.keys().any(|k| k.starts_with("~")));

        // A watermark from a partition the input does not have, or from no partition, is a
        // dead letter; a bad time too.
        for (source, minute) in [(3, 10), (-1, 10)] {
            let (_, rejected) = feed_bytes(&mut c, &encode(&watermark(source, minute)).unwrap());
            assert_eq!(rejected, Some(DeadLetterReason::OUT_OF_RANGE));
        }
        let mut late = watermark(1, 0);
        late.source_watermark_ms = -5;
        let (_, rejected) = feed_bytes(&mut c, &encode(&late).unwrap());
        assert_eq!(rejected, Some(DeadLetterReason::OUT_OF_RANGE));
    }

    #[test]
    fn a_deviation_that_clears_within_the_hold_never_becomes_an_alert() {
        let mut c = CohortAnalyzer::default();
        cohort_with(&mut c, 1);
        let cl = anomaly("A0", AnomalyState::CLEARED, 30);
        assert!(feed(&mut c, &signal("A0", 30, Some(&cl), &[])).is_empty());
        assert!(feed(&mut c, &signal("A4", 500, None, &[])).is_empty());
        let mut out = Emitter::default();
        c.on_end_of_input(&mut out).unwrap();
        assert!(out.take().0.is_empty());
    }

    #[test]
    fn a_small_share_of_a_large_cohort_is_no_fleet_cause() {
        let mut c = CohortAnalyzer::default();
        for i in 0..10 {
            feed(&mut c, &signal(&format!("A{i}"), 0, None, &[]));
        }
        for i in 0..3 {
            let a = anomaly(&format!("A{i}"), AnomalyState::ACTIVE, 10);
            feed(&mut c, &signal(&format!("A{i}"), 10, Some(&a), &[]));
        }
        let out = feed(&mut c, &signal("A9", 80, None, &[]));
        let got = anomalies(&out);
        assert_eq!(got.len(), 3, "three instruments' own anomalies");
        assert!(got.iter().all(|a| a.cohort.is_none()));
    }

    #[test]
    fn at_the_end_of_input_a_routed_deviation_still_reaches_anomalies() {
        let mut c = CohortAnalyzer::default();
        let next = CohortKind::FLOWCELL_LOT.key("FC-30001");
        let a = anomaly("A0", AnomalyState::ACTIVE, 10);
        feed(&mut c, &signal("A0", 10, Some(&a), &[&next]));
        let mut out = Emitter::default();
        c.on_end_of_input(&mut out).unwrap();
        let (emitted, ..) = out.take();
        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].role, TopicRole::CohortSignals);
        // The next cohort decides at once: nothing can wait after the input ended.
        let hop: CohortSignal = decode(&emitted[0].value).unwrap();
        let (out, rejected) = feed_bytes(&mut c, &encode(&hop).unwrap());
        assert_eq!(rejected, None);
        assert_eq!(anomalies(&out).len(), 1);
    }

    #[test]
    fn a_forecast_alone_is_not_folded_into_a_fleet_anomaly() {
        let mut c = CohortAnalyzer::default();
        for i in 0..5 {
            feed(&mut c, &signal(&format!("A{i}"), 0, None, &[]));
        }
        let mut p = anomaly("A4", AnomalyState::PREDICTED, 10);
        p.rule = "trend_to_limit".into();
        feed(&mut c, &signal("A4", 10, Some(&p), &[]));
        for i in 0..3 {
            let a = anomaly(&format!("A{i}"), AnomalyState::ACTIVE, 12);
            feed(&mut c, &signal(&format!("A{i}"), 12, Some(&a), &[]));
        }
        // The fleet opened; A4's forecast still waits and goes on as its own after the hold.
        let out = anomalies(&feed(&mut c, &signal("A0", 75, None, &[])));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            (out[0].instrument_serial.as_str(), out[0].state),
            ("A4", AnomalyState::PREDICTED)
        );
    }

    #[test]
    fn end_of_input_releases_what_waits() {
        let mut c = CohortAnalyzer::default();
        cohort_with(&mut c, 1);
        let mut out = Emitter::default();
        c.on_end_of_input(&mut out).unwrap();
        let (emitted, ..) = out.take();
        assert_eq!(anomalies(&emitted).len(), 1);
    }

    #[test]
    fn state_survives_a_restart_mid_hold_with_the_same_output() {
        let mut a = CohortAnalyzer::default();
        let mut b = CohortAnalyzer::default();
        cohort_with(&mut a, 2);
        cohort_with(&mut b, 2);
        let mut restarted = CohortAnalyzer::default();
        transplant_state(&b, &mut restarted).unwrap();
        let third = anomaly("A2", AnomalyState::ACTIVE, 20);
        let s = signal("A2", 20, Some(&third), &[]);
        assert_eq!(feed(&mut a, &s), feed(&mut restarted, &s));
        let later = signal("A4", 200, None, &[]);
        assert_eq!(feed(&mut a, &later), feed(&mut restarted, &later));
    }

    #[test]
    fn members_leave_after_member_hours_and_an_empty_cohort_is_forgotten() {
        let mut c = CohortAnalyzer::default();
        feed(&mut c, &signal("A0", 0, None, &[]));
        let key = CohortKind::REAGENT_KIT_LOT.key(LOT);
        assert!(c.snapshot(&key).unwrap().is_some());
        // Another cohort on the same partition moves the watermark 49 h on.
        let mut other = signal("B0", 49 * 60, None, &[]);
        other.value = "SBS-20992".into();
        feed(&mut c, &other);
        // The next signal of the first cohort finds A0 gone (only the newcomer counts).
        feed(&mut c, &signal("A1", 49 * 60, None, &[]));
        let c0: Cohort = serde_json::from_slice(&c.snapshot(&key).unwrap().unwrap()).unwrap();
        assert_eq!(c0.members.keys().collect::<Vec<_>>(), ["A1"]);
    }

    #[test]
    fn bad_signals_are_dead_letters_and_change_nothing() {
        let mut c = CohortAnalyzer::default();
        let (_, r) = feed_bytes(&mut c, b"not avro");
        assert!(r.is_some());
        let mut unknown = signal("A0", 0, None, &[]);
        unknown.kind = CohortKind::UNKNOWN;
        let (_, r) = feed_bytes(&mut c, &encode(&unknown).unwrap());
        assert_eq!(r, Some(DeadLetterReason::INCONSISTENT_PAYLOAD));
        let mut missing = signal("A0", 0, None, &[]);
        missing.signal = CohortSignalKind::DEVIATION;
        let (_, r) = feed_bytes(&mut c, &encode(&missing).unwrap());
        assert_eq!(r, Some(DeadLetterReason::MISSING_FIELD));
        let other = anomaly("B9", AnomalyState::ACTIVE, 10);
        let (_, r) = feed_bytes(
            &mut c,
            &encode(&signal("A0", 10, Some(&other), &[])).unwrap(),
        );
        assert_eq!(r, Some(DeadLetterReason::INCONSISTENT_PAYLOAD));
        let mut garbage = signal("A0", 10, None, &[]);
        garbage.signal = CohortSignalKind::DEVIATION;
        garbage.anomaly = Some(vec![0xC3, 0x01, 1, 2, 3]);
        let (_, r) = feed_bytes(&mut c, &encode(&garbage).unwrap());
        assert_eq!(r, Some(DeadLetterReason::UNDECODABLE));
        // Another cohort's key, a time or a watermark past 2200: refused.
        let wrong = encode(&signal("A0", 0, None, &[])).unwrap();
        let env = Envelope {
            key: Some(b"reagent_kit_lot:OTHER"),
            value: &wrong,
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            arrival_time_ms: None,
        };
        let mut out = Emitter::default();
        c.process(&env, &mut out).unwrap();
        assert_eq!(
            out.take().1.map(|r| r.reason),
            Some(DeadLetterReason::INCONSISTENT_PAYLOAD)
        );
        let mut far = signal("A0", 0, None, &[]);
        far.event_time_ms = i64::MAX;
        let (_, r) = feed_bytes(&mut c, &encode(&far).unwrap());
        assert_eq!(r, Some(DeadLetterReason::OUT_OF_RANGE));
        let mut ahead = signal("A0", 0, None, &[]);
        ahead.source_watermark_ms = i64::MAX;
        let (_, r) = feed_bytes(&mut c, &encode(&ahead).unwrap());
        assert_eq!(r, Some(DeadLetterReason::OUT_OF_RANGE));
        c.on_input_partitions(3);
        let mut stranger = signal("A0", 0, None, &[]);
        stranger.source_partition = 7;
        let (_, r) = feed_bytes(&mut c, &encode(&stranger).unwrap());
        assert_eq!(r, Some(DeadLetterReason::OUT_OF_RANGE));
        assert!(c.state_keys().is_empty(), "no state from bad input");
    }

    #[test]
    fn settings_are_checked_by_name() {
        assert!(CohortConfig::default().validate().is_ok());
        for (cfg, name) in [
            (
                CohortConfig {
                    min_instruments: 1,
                    ..Default::default()
                },
                "min_instruments",
            ),
            (
                CohortConfig {
                    min_share: 0.0,
                    ..Default::default()
                },
                "min_share",
            ),
            (
                CohortConfig {
                    min_share: f64::NAN,
                    ..Default::default()
                },
                "min_share",
            ),
            (
                CohortConfig {
                    hold_minutes: -1,
                    ..Default::default()
                },
                "hold_minutes",
            ),
            (
                CohortConfig {
                    member_hours: 0,
                    ..Default::default()
                },
                "member_hours",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(
                e.contains(&name.replace('_', "-")) || e.contains(name),
                "{e}"
            );
        }
    }
}
