//! Notifier: reads `anomalies`, the service team's `alerts.commands` and `features`; writes the
//! alert lifecycle to `alerts` and the maintenance plan to `maintenance.schedule`.
//!
//! Alerts. One alert per instrument and subsystem (a fleet alert per cohort). A forecast opens
//! it `PREDICTED`, a present anomaly `OPEN`; a rise in severity is `WORSENED`; commands move it to
//! `ACKNOWLEDGED`, `SNOOZED` (until a time, or until it worsens) and `RESOLVED` with a
//! resolution, or assign it. When every series behind it has cleared it resolves itself
//! (`CLEARED`), but only after the series stayed clear for `resolve_hold_minutes` and the alert
//! stood for `min_open_minutes` (flap suppression: a recurrence within the hold is silent). A
//! recurrence within `reopen_window_hours` of any resolution re-opens the same alert id; later it
//! is a new alert. An alert left unacknowledged escalates after a delay per severity, up to
//! `max_escalations` times. Every transition is one record on `alerts` with its cause (anomaly,
//! forecast, command, timer) and a sequence number per alert, and carries the evidence (metric,
//! rule, recent values against baseline and spec, the forecast crossing and its interval).
//!
//! Commands. Keyed like the alert, on a topic co-partitioned with `anomalies`, so the instance
//! holding an alert reads its commands; applied exactly once with the rest of the input. A
//! command for an alert this instance does not hold (`UNKNOWN_ALERT`), one its alert's state does
//! not allow or issued before the alert last re-opened (`STALE_TRANSITION`), a repeated command id
//! (`DUPLICATE_MESSAGE`) or a malformed one (`INVALID_COMMAND`) is a dead letter; the alert is
//! untouched.
//!
//! Maintenance. One entry per instrument and part (`entry_id` = serial and part), with a revision
//! that rises on every change: created by the first anomaly naming the part, updated when the
//! work becomes more urgent (priority, due date an hour earlier or more) or its visit changes,
//! `CLOSED` when the alert is resolved as repaired or part replaced, `CANCELLED` when it is
//! resolved as a false alarm or not reproducible, or when it cleared on its own and did not
//! recur within the re-open window; re-opened under the same id if the fault recurs. For
//! `repair_settle_hours` after a repair, an anomaly that moved the metric away from its spec
//! limits (the repaired part reading better than the baseline learned while it wore) or a LOW
//! one (the step of the repair itself) is the repair showing, not a recurrence. For a forecast the due date
//! is the earliest predicted crossing minus `margin_hours` (at most half the time left, never
//! after the crossing) and the priority follows the time left; for a present anomaly both follow
//! its severity; with both, the more urgent. Visits: the open entries of an instrument are grouped
//! from the one due first; an entry joins a visit that starts at most `group_visit_hours` before
//! it falls due. A visit starts in an idle window learned from the instrument's run phases (see
//! [`runs`]): never in the middle of a run. A fleet alert asks for no visit (a lot is recalled, a
//! version rolled back).
//!
//! Time. Event time: each input partition's clock is the latest window end seen on it
//! (anomalies and features; features arrive every few minutes from every running instrument, so
//! the clock moves even when nothing is anomalous). Timers (end of a snooze, escalation, the
//! resolve hold, a visit that passed, forgetting a resolved alert) fire when their partition's
//! clock passes them, before the record that moved it is handled. Commands carry the wall time
//! they were issued at and do not move the clock.
//!
//! Delivery: a pure processor; the runtime gives it exactly-once input and output. State: per
//! instrument (or cohort) key its alerts, maintenance entries and run history, on
//! `notifier.changelog` (layout 2; layout 1, open alerts only, is still read). Run history is
//! persisted when a stretch begins or an hour is folded in, so a restore re-learns at most the
//! windows since. A record that does not decode, or an anomaly with a value that is not finite,
//! is a dead letter.

pub mod runs;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use clap::Args;
use seqmon_model::codec::writer_schema;
use seqmon_model::parts::Part;
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    Alert, AlertAction, AlertCommand, AlertCommandAction, AlertState, AlertTransition, Anomaly,
    AnomalySeverity, AnomalyState, CohortEvidence, DeadLetterReason, Evidence, Feature,
    InstrumentModel, MaintenanceEntry, MaintenancePriority, MaintenanceStatus, Resolution,
    RunPhase, SeriesPoint, Subsystem, TransitionCause, Visit, VisitBasis,
};
use seqmon_processor::{
    key_str, ConfigError, Emitter, Envelope, Processor, StageError, StateRecord,
};
use serde::{Deserialize, Serialize};

use crate::runs::{RunHistory, Slot};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// Window levels kept as an alert's recent evidence.
const RECENT_POINTS: usize = 12;
/// Command ids remembered per alert, to refuse a repeated one.
const REMEMBERED_COMMANDS: usize = 32;
/// Longest comment, assignee or actor a command may carry.
const MAX_COMMENT_CHARS: usize = 1000;
const MAX_HANDLE_CHARS: usize = 128;
/// A visit that passed without the work being closed is re-planned at most this often.
const REPLAN_MS: i64 = 12 * HOUR_MS;

/// Notifier settings.
#[derive(Debug, Clone, Args)]
pub struct NotifierConfig {
    /// Hours until due for P1 (before the next run), P2 and P3 work on a present anomaly.
    #[arg(long, env = "NOTIFIER_DUE_HOURS", value_delimiter = ',', default_values_t = [24, 48, 336])]
    pub due_hours: Vec<i64>,
    /// Hours of time left to a predicted crossing at or below which a forecast's entry is P1,
    /// then P2; beyond the second, P3.
    #[arg(long, env = "NOTIFIER_PRIORITY_HOURS", value_delimiter = ',', default_values_t = [48, 168])]
    pub priority_hours: Vec<i64>,
    /// Hours before the earliest predicted crossing that a forecast's maintenance falls due (at
    /// most half the time left).
    #[arg(long, env = "NOTIFIER_MARGIN_HOURS", default_value_t = 24)]
    pub margin_hours: i64,
    /// Minutes every series of an alert must stay clear before it resolves itself (a recurrence
    /// within them is silent: flap suppression).
    #[arg(long, env = "NOTIFIER_RESOLVE_HOLD_MINUTES", default_value_t = 120)]
    pub resolve_hold_minutes: i64,
    /// Minutes an alert stands at least before it resolves itself.
    #[arg(long, env = "NOTIFIER_MIN_OPEN_MINUTES", default_value_t = 30)]
    pub min_open_minutes: i64,
    /// Hours after a resolution within which a recurrence re-opens the same alert.
    #[arg(long, env = "NOTIFIER_REOPEN_WINDOW_HOURS", default_value_t = 24)]
    pub reopen_window_hours: i64,
    /// Hours after a repair (resolved as repaired or part replaced) during which an anomaly
    /// that moved the metric away from its spec limits, or a LOW one (the repair showing while
    /// the detector's baseline re-learns), does not re-open the alert.
    #[arg(long, env = "NOTIFIER_REPAIR_SETTLE_HOURS", default_value_t = 24)]
    pub repair_settle_hours: i64,
    /// Minutes an open alert may stay unacknowledged before it escalates, for LOW, MEDIUM, HIGH
    /// and CRITICAL severity (0: never); each further escalation after as long again.
    #[arg(long, env = "NOTIFIER_ESCALATE_AFTER_MINUTES", value_delimiter = ',', default_values_t = [0, 1440, 240, 60])]
    pub escalate_after_minutes: Vec<i64>,
    /// Most escalations of one alert.
    #[arg(long, env = "NOTIFIER_MAX_ESCALATIONS", default_value_t = 3)]
    pub max_escalations: i32,
    /// Longest snooze a command may ask for, in hours.
    #[arg(long, env = "NOTIFIER_MAX_SNOOZE_HOURS", default_value_t = 720)]
    pub max_snooze_hours: i64,
    /// Hours a service visit is planned to take.
    #[arg(long, env = "NOTIFIER_VISIT_HOURS", default_value_t = 2)]
    pub visit_hours: i64,
    /// Hours before its due date that an entry may be served by an earlier visit of the same
    /// instrument (parts grouped into one visit).
    #[arg(long, env = "NOTIFIER_GROUP_VISIT_HOURS", default_value_t = 168)]
    pub group_visit_hours: i64,
    /// Hours a closed or cancelled maintenance entry is kept (then forgotten; a recurrence makes
    /// it anew, with a higher revision).
    #[arg(long, env = "NOTIFIER_CLOSED_RETENTION_HOURS", default_value_t = 720)]
    pub closed_retention_hours: i64,
    /// Percent of weeks an hour of the week must have been idle to be a habitual idle window.
    #[arg(long, env = "NOTIFIER_HABITUAL_IDLE_PERCENT", default_value_t = 80)]
    pub habitual_idle_percent: u8,
    /// Most an anomaly's or feature's window end may run ahead of its record's arrival (the raw
    /// record's broker receive time, carried by every stage), ms; a record further ahead is a
    /// dead letter TIMESTAMP_FUTURE and moves no clock.
    #[arg(long, env = "NOTIFIER_MAX_EVENT_LEAD_MS", default_value_t = seqmon_processor::DEFAULT_MAX_EVENT_LEAD_MS)]
    pub max_event_lead_ms: i64,
}

impl Default for NotifierConfig {
    /// The defaults stated in the clap attributes above (the environment is not read).
    fn default() -> Self {
        seqmon_processor::config::defaults()
    }
}

impl NotifierConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0..=7 * 86_400_000).contains(&self.max_event_lead_ms) {
            return Err(ConfigError::of::<Self>(
                "max_event_lead_ms",
                "must be 0..=604800000 (7 days)",
            ));
        }
        let increasing = |v: &[i64], n: usize| {
            v.len() == n && v.iter().all(|h| *h > 0) && v.windows(2).all(|w| w[0] <= w[1])
        };
        let fail = |id: &str, msg: &str| Err(ConfigError::of::<Self>(id, msg));
        if !increasing(&self.due_hours, 3) {
            return fail(
                "due_hours",
                "must be three positive, non-decreasing hours for P1,P2,P3",
            );
        }
        if !increasing(&self.priority_hours, 2) {
            return fail(
                "priority_hours",
                "must be two positive, non-decreasing hours for P1,P2",
            );
        }
        for (id, v) in [
            ("margin_hours", self.margin_hours),
            ("resolve_hold_minutes", self.resolve_hold_minutes),
            ("min_open_minutes", self.min_open_minutes),
            ("reopen_window_hours", self.reopen_window_hours),
            ("repair_settle_hours", self.repair_settle_hours),
            ("group_visit_hours", self.group_visit_hours),
            ("closed_retention_hours", self.closed_retention_hours),
        ] {
            if !(0..=24 * 365).contains(&v) {
                return fail(id, "must be 0 or more (and at most a year)");
            }
        }
        if self.escalate_after_minutes.len() != 4
            || self.escalate_after_minutes.iter().any(|m| *m < 0)
        {
            return fail(
                "escalate_after_minutes",
                "must be four minutes (0 or more) for LOW,MEDIUM,HIGH,CRITICAL",
            );
        }
        if !(0..=20).contains(&self.max_escalations) {
            return fail("max_escalations", "must be 0 to 20");
        }
        if !(1..=24 * 365).contains(&self.max_snooze_hours) {
            return fail("max_snooze_hours", "must be 1 to 8760 hours");
        }
        if !(1..=72).contains(&self.visit_hours) {
            return fail("visit_hours", "must be 1 to 72 hours");
        }
        if !(1..=100).contains(&self.habitual_idle_percent) {
            return fail("habitual_idle_percent", "must be 1 to 100");
        }
        Ok(())
    }

    fn escalate_after_ms(&self, severity: AnomalySeverity) -> i64 {
        let i = match severity {
            AnomalySeverity::LOW => 0,
            AnomalySeverity::MEDIUM => 1,
            AnomalySeverity::HIGH => 2,
            AnomalySeverity::CRITICAL => 3,
        };
        self.escalate_after_minutes[i] * MINUTE_MS
    }
}

/// One alert, as the notifier keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AlertRec {
    alert_id: String,
    model: InstrumentModel,
    state: AlertState,
    opened_at_ms: i64,
    /// When it last (re-)opened: commands issued before are stale.
    reopened_at_ms: i64,
    severity: AnomalySeverity,
    score: f64,
    anomaly_count: i32,
    /// Series (metric in its phase) with an anomaly standing.
    active: BTreeSet<String>,
    /// Only forecasts so far since it (re-)opened.
    predicted_only: bool,
    suspected_part: String,
    metric: String,
    sequence: i32,
    assignee: Option<String>,
    acknowledged_by: Option<String>,
    snoozed_until_ms: Option<i64>,
    /// The state a snooze returns to.
    before_snooze: Option<AlertState>,
    resolution: Option<Resolution>,
    resolved_at_ms: Option<i64>,
    escalation_level: i32,
    /// Since when it waits for an acknowledgement.
    unacked_since_ms: i64,
    /// When it escalates next while it waits (from when it began waiting or last escalated,
    /// by its severity's delay).
    #[serde(default)]
    next_escalation_ms: Option<i64>,
    reopen_count: i32,
    /// Sequence number of the record that last re-opened it (0: never re-opened).
    #[serde(default)]
    reopened_sequence: i32,
    /// Every series cleared at this time; it resolves once the hold has passed.
    clearing_since_ms: Option<i64>,
    evidence: Evidence,
    cohort: Option<CohortEvidence>,
    commands: VecDeque<String>,
}

impl AlertRec {
    fn resolved(&self) -> bool {
        self.state == AlertState::RESOLVED
    }

    /// When it resolves itself, if every series has cleared.
    fn resolve_at(&self, cfg: &NotifierConfig) -> Option<i64> {
        self.clearing_since_ms.map(|since| {
            (since + cfg.resolve_hold_minutes * MINUTE_MS)
                .max(self.reopened_at_ms + cfg.min_open_minutes * MINUTE_MS)
        })
    }

    fn waiting(&self) -> bool {
        matches!(self.state, AlertState::OPEN | AlertState::PREDICTED)
    }

    /// When it escalates next, if it waits for an acknowledgement.
    fn escalate_at(&self, cfg: &NotifierConfig) -> Option<i64> {
        self.next_escalation_ms
            .filter(|_| self.waiting() && self.escalation_level < cfg.max_escalations)
    }

    /// It begins (again) to wait for an acknowledgement at `now`.
    fn wait_from(&mut self, now: i64, cfg: &NotifierConfig) {
        self.unacked_since_ms = now;
        self.escalation_level = 0;
        self.schedule_escalation(now, cfg);
    }

    /// The next escalation, one severity's delay after `now` (none when its delay is 0).
    fn schedule_escalation(&mut self, now: i64, cfg: &NotifierConfig) {
        let after = cfg.escalate_after_ms(self.severity);
        self.next_escalation_ms = (after > 0).then(|| now + after);
    }

    /// Its next timer.
    fn next_timer(&self, cfg: &NotifierConfig) -> Option<i64> {
        if self.resolved() {
            return self
                .resolved_at_ms
                .map(|t| t + cfg.reopen_window_hours * HOUR_MS);
        }
        [
            self.resolve_at(cfg),
            self.escalate_at(cfg),
            self.snoozed_until_ms
                .filter(|_| self.state == AlertState::SNOOZED),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// One maintenance entry, as the notifier keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EntryRec {
    entry_id: String,
    alert_id: String,
    subsystem: Subsystem,
    model: InstrumentModel,
    status: MaintenanceStatus,
    priority: MaintenancePriority,
    due_by_ms: i64,
    created_at_ms: i64,
    revision: i32,
    reason: String,
    resolution: Option<Resolution>,
    visit: Option<Visit>,
    /// When its visit was last planned.
    planned_at_ms: i64,
    evidence: Evidence,
    /// When it was closed or cancelled (it is forgotten `closed_retention_hours` later).
    #[serde(default)]
    closed_at_ms: Option<i64>,
}

impl EntryRec {
    fn next_timer(&self, cfg: &NotifierConfig) -> Option<i64> {
        match self.status {
            MaintenanceStatus::OPEN => {
                let v = self.visit.as_ref()?;
                Some(v.end_ms.max(self.planned_at_ms + REPLAN_MS))
            }
            _ => self
                .closed_at_ms
                .map(|t| t + cfg.closed_retention_hours * HOUR_MS),
        }
    }
}

/// Everything the notifier keeps for one key (an instrument, or a cohort).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    /// Input partition the key's records arrive on (timers fire on its clock).
    partition: i32,
    alerts: BTreeMap<Subsystem, AlertRec>,
    /// Maintenance entries by part.
    entries: BTreeMap<String, EntryRec>,
    runs: RunHistory,
    /// Revisions handed out to its entries: each new revision of any entry takes the next, so
    /// an entry forgotten after it closed and created again later still rises.
    #[serde(default)]
    revisions: i32,
}

impl Book {
    fn new(partition: i32) -> Self {
        Book {
            partition,
            alerts: BTreeMap::new(),
            entries: BTreeMap::new(),
            runs: RunHistory::default(),
            revisions: 0,
        }
    }

    fn next_timer(&self, cfg: &NotifierConfig) -> Option<i64> {
        let alerts = self.alerts.values().filter_map(|a| a.next_timer(cfg));
        let entries = self.entries.values().filter_map(|e| e.next_timer(cfg));
        alerts.chain(entries).min()
    }

    /// Nothing worth keeping: no alert, no entry, no run history, and no revision handed out
    /// (the counter must survive its entries, so a later entry's revisions still rise).
    fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.entries.is_empty()
            && self.runs.last_seen_ms().is_none()
            && self.revisions == 0
    }
}

/// Layout 1 of the state: open alerts only.
#[derive(Debug, Clone, Deserialize)]
struct LegacyOpenAlert {
    alert_id: String,
    opened_at_ms: i64,
    severity: AnomalySeverity,
    score: f64,
    anomaly_count: i32,
    active_metrics: BTreeSet<String>,
    suspected_part: String,
    #[serde(default = "legacy_priority")]
    priority: MaintenancePriority,
    #[serde(default)]
    due_by_ms: Option<i64>,
}

fn legacy_priority() -> MaintenancePriority {
    MaintenancePriority::P3
}

/// What a transition record says beyond the alert's own fields.
struct Step<'c> {
    transition: AlertTransition,
    action: AlertAction,
    cause: TransitionCause,
    at_ms: i64,
    command: Option<&'c AlertCommand>,
}

/// A refused command: reason and detail.
type Refusal = (DeadLetterReason, String);

/// The notifier processor.
#[derive(Debug, Default)]
pub struct Notifier {
    cfg: NotifierConfig,
    books: BTreeMap<String, Book>,
    /// Event-time clock per input partition: the latest window end seen.
    clocks: BTreeMap<i32, i64>,
    /// Pending timers per partition: (due, key), and each key's entry in it.
    timers: BTreeMap<i32, BTreeSet<(i64, String)>>,
    timer_of: BTreeMap<String, (i32, i64)>,
}

/// The part most likely at fault, as the alert names it.
pub fn suspected_part(a: &Anomaly) -> String {
    if let Some(c) = &a.cohort {
        return format!("{} {}", c.kind.label(), c.value);
    }
    let rising = a.observed_level > a.baseline_level;
    if let Some(part) = Part::for_metric(&a.metric, rising) {
        return part.label().into();
    }
    match a.metric.as_str() {
        "error_events_per_window" => match &a.software_version {
            Some(v) => format!("{} {v}", Part::ControlSoftware.label()),
            None => Part::ControlSoftware.label().into(),
        },
        _ if a.subsystem == Subsystem::CHEMISTRY => match &a.reagent_kit_lot {
            Some(lot) => format!("{} {lot}", Part::ReagentLot.label()),
            None => "reagent kit or flow cell".into(),
        },
        _ => format!("{} subsystem", a.subsystem.label()),
    }
}

/// The series an anomaly is about: its metric, in its run phase (a metric has a baseline per
/// phase, so an idle-phase clearing does not clear the sequencing one).
fn series(a: &Anomaly) -> String {
    match RunPhase::own_baseline(a.run_phase) {
        Some(p) => format!("{} ({})", a.metric, p.as_str()),
        None => a.metric.clone(),
    }
}

fn evidence(a: &Anomaly) -> Evidence {
    Evidence {
        metric: a.metric.clone(),
        series: RunPhase::series(&a.metric, a.run_phase),
        rule: a.rule.clone(),
        anomaly_id: a.anomaly_id.clone(),
        observed: a.observed_level,
        baseline: a.baseline_level,
        baseline_stddev: a.baseline_stddev,
        slope_per_hour: a.slope_per_hour,
        score: a.score,
        spec_low: a.spec_low,
        spec_high: a.spec_high,
        recent: vec![SeriesPoint {
            window_end_ms: a.window_end_ms,
            level: a.observed_level,
        }],
        predicted_limit_ms: a.predicted_limit_ms,
        predicted_limit_earliest_ms: a.predicted_limit_earliest_ms,
        predicted_limit_latest_ms: a.predicted_limit_latest_ms,
    }
}

/// Newer evidence from `a`, keeping the recent levels when it is about the same series.
fn refresh(was: &Evidence, a: &Anomaly) -> Evidence {
    let mut e = evidence(a);
    if was.series == e.series {
        let mut recent = was.recent.clone();
        push_point(&mut recent, a.window_end_ms, a.observed_level);
        e.recent = recent;
        if e.predicted_limit_ms.is_none() && a.state == AnomalyState::ACTIVE {
            // A present anomaly says nothing of the forecast: the last one stands.
            e.predicted_limit_ms = was.predicted_limit_ms;
            e.predicted_limit_earliest_ms = was.predicted_limit_earliest_ms;
            e.predicted_limit_latest_ms = was.predicted_limit_latest_ms;
        }
    }
    e
}

fn push_point(recent: &mut Vec<SeriesPoint>, window_end_ms: i64, level: f64) {
    if !level.is_finite() || recent.iter().any(|p| p.window_end_ms == window_end_ms) {
        return;
    }
    recent.push(SeriesPoint {
        window_end_ms,
        level,
    });
    recent.sort_by_key(|p| p.window_end_ms);
    if recent.len() > RECENT_POINTS {
        let extra = recent.len() - RECENT_POINTS;
        recent.drain(..extra);
    }
}

fn priority(severity: AnomalySeverity) -> MaintenancePriority {
    match severity {
        AnomalySeverity::CRITICAL => MaintenancePriority::P1,
        AnomalySeverity::HIGH => MaintenancePriority::P2,
        _ => MaintenancePriority::P3,
    }
}

/// `36 h` or `5.2 d` from `now` to `then`.
fn hours_from(now: i64, then: i64) -> String {
    let h = (then - now) as f64 / HOUR_MS as f64;
    if h.abs() < 0.5 {
        "under an hour".to_string()
    } else if h.abs() >= 72.0 {
        format!("{:.1} d", h / 24.0)
    } else {
        format!("{h:.0} h")
    }
}

/// Whether the anomaly moved its metric away from the nearer spec limit (an improvement, such as
/// a repaired part reading better than the baseline learned while it wore).
fn improvement(a: &Anomaly) -> bool {
    let distance = |v: f64| {
        let low = a.spec_low.map(|l| v - l);
        let high = a.spec_high.map(|h| h - v);
        match (low, high) {
            (Some(l), Some(h)) => Some(l.min(h)),
            (l, h) => l.or(h),
        }
    };
    match (distance(a.observed_level), distance(a.baseline_level)) {
        (Some(now), Some(before)) => now > before,
        _ => false,
    }
}

impl Notifier {
    /// A notifier with the given settings.
    pub fn new(cfg: NotifierConfig) -> Self {
        Notifier {
            cfg,
            ..Default::default()
        }
    }

    /// Priority and due date the anomaly asks for. A forecast (carried by a PREDICTED record,
    /// and by an ACTIVE one while a forecast stands) sets both from the time left to its earliest
    /// crossing; a present anomaly sets them from its severity; with both, the more urgent wins.
    /// A window's own slope is not used: five minutes of noise are no forecast.
    fn plan(&self, a: &Anomaly) -> (MaintenancePriority, i64) {
        let now = a.window_end_ms;
        let forecast = a.predicted_limit_earliest_ms.map(|earliest| {
            let left = (earliest - now).max(0);
            let p = if left <= self.cfg.priority_hours[0] * HOUR_MS {
                MaintenancePriority::P1
            } else if left <= self.cfg.priority_hours[1] * HOUR_MS {
                MaintenancePriority::P2
            } else {
                MaintenancePriority::P3
            };
            let margin = (self.cfg.margin_hours * HOUR_MS).min(left / 2);
            (p, (earliest - margin).max(now))
        });
        let present = (a.state == AnomalyState::ACTIVE).then(|| {
            let p = priority(a.severity);
            let idx = match p {
                MaintenancePriority::P1 => 0,
                MaintenancePriority::P2 => 1,
                MaintenancePriority::P3 => 2,
            };
            (p, now + self.cfg.due_hours[idx] * HOUR_MS)
        });
        match (forecast, present) {
            (Some((pf, df)), Some((pp, dp))) => (pf.min(pp), df.min(dp)),
            (Some(f), None) => f,
            (None, Some(p)) => p,
            // A CLEARED record asks for nothing; not reached.
            (None, None) => (
                MaintenancePriority::P3,
                now + self.cfg.due_hours[2] * HOUR_MS,
            ),
        }
    }

    fn reason(a: &Anomaly) -> String {
        match (a.state, a.predicted_limit_ms) {
            (AnomalyState::PREDICTED, Some(crossing)) => format!(
                "{} {} at {:.3} forecast to leave spec in {} (earliest in {}; {}, t {:.1})",
                a.subsystem.label(),
                a.metric,
                a.observed_level,
                hours_from(a.window_end_ms, crossing),
                hours_from(
                    a.window_end_ms,
                    a.predicted_limit_earliest_ms.unwrap_or(crossing)
                ),
                a.rule,
                a.score
            ),
            _ => format!(
                "{} {} at {:.3} against baseline {:.3} ({}, score {:.1})",
                a.subsystem.label(),
                series(a),
                a.observed_level,
                a.baseline_level,
                a.rule,
                a.score
            ),
        }
    }

    /// The record of one transition of `rec`, its sequence number taken.
    fn transition(serial: &str, subsystem: Subsystem, rec: &mut AlertRec, step: Step<'_>) -> Alert {
        rec.sequence += 1;
        let verb = match step.transition {
            AlertTransition::PREDICTED => match rec.evidence.predicted_limit_ms {
                Some(crossing) => format!(
                    "forecast to leave spec in {}",
                    hours_from(step.at_ms, crossing)
                ),
                None => "forecast to leave spec".into(),
            },
            AlertTransition::OPENED => "opened".into(),
            AlertTransition::WORSENED => format!("worsened to {:?}", rec.severity),
            AlertTransition::UPDATED => "updated".into(),
            AlertTransition::ACKNOWLEDGED => format!(
                "acknowledged by {}",
                rec.acknowledged_by.as_deref().unwrap_or("?")
            ),
            AlertTransition::SNOOZED => format!(
                "snoozed for {}",
                hours_from(step.at_ms, rec.snoozed_until_ms.unwrap_or(step.at_ms))
            ),
            AlertTransition::UNSNOOZED => "snooze ended".into(),
            AlertTransition::ASSIGNED => {
                format!(
                    "assigned to {}",
                    rec.assignee.as_deref().unwrap_or("nobody")
                )
            }
            AlertTransition::ESCALATED => format!(
                "unacknowledged for {}: escalated (level {})",
                hours_from(rec.unacked_since_ms, step.at_ms),
                rec.escalation_level
            ),
            AlertTransition::RESOLVED => format!(
                "resolved ({})",
                rec.resolution
                    .unwrap_or(Resolution::CLEARED)
                    .as_str()
                    .to_ascii_lowercase()
                    .replace('_', " ")
            ),
            AlertTransition::REOPENED => format!("re-opened (recurrence {})", rec.reopen_count),
        };
        let title = match &rec.cohort {
            Some(c) => format!(
                "Fleet {} {}: {} of {} instruments deviate together ({}); {verb}",
                c.kind.label(),
                c.value,
                c.deviating,
                c.members,
                rec.metric
            ),
            None => format!(
                "{:?} {} {}: {} {verb}; suspected {}",
                rec.model,
                serial,
                subsystem.label(),
                rec.evidence.series,
                rec.suspected_part
            ),
        };
        Alert {
            alert_id: rec.alert_id.clone(),
            instrument_serial: serial.to_string(),
            instrument_model: rec.model,
            subsystem,
            action: step.action,
            severity: rec.severity,
            metric: rec.metric.clone(),
            score: rec.score,
            title,
            suspected_part: rec.suspected_part.clone(),
            opened_at_ms: rec.opened_at_ms,
            event_time_ms: step.at_ms,
            anomaly_count: rec.anomaly_count,
            cohort: rec.cohort.clone(),
            state: rec.state,
            transition: step.transition,
            cause: step.cause,
            sequence: rec.sequence,
            command_id: step.command.map(|c| c.command_id.clone()),
            actor: step.command.map(|c| c.issued_by.clone()),
            comment: step.command.and_then(|c| c.comment.clone()),
            assignee: rec.assignee.clone(),
            acknowledged_by: rec.acknowledged_by.clone(),
            snoozed_until_ms: rec.snoozed_until_ms,
            resolution: rec.resolution,
            escalation_level: rec.escalation_level,
            reopen_count: rec.reopen_count,
            evidence: Some(rec.evidence.clone()),
        }
    }

    /// Writes a transition with no command behind it (a timer's, or an anomaly's the timer
    /// carried out), at `at_ms`.
    #[allow(clippy::too_many_arguments)]
    fn emit_timed(
        out: &mut Emitter,
        key: &str,
        subsystem: Subsystem,
        rec: &mut AlertRec,
        transition: AlertTransition,
        action: AlertAction,
        cause: TransitionCause,
        at_ms: i64,
    ) -> Result<(), StageError> {
        let step = Step {
            transition,
            action,
            cause,
            at_ms,
            command: None,
        };
        out.emit(
            TopicRole::Alerts,
            key,
            &Self::transition(key, subsystem, rec, step),
        )
    }

    fn entry_record(serial: &str, part: &str, e: &EntryRec, at_ms: i64) -> MaintenanceEntry {
        MaintenanceEntry {
            entry_id: e.entry_id.clone(),
            alert_id: e.alert_id.clone(),
            instrument_serial: serial.to_string(),
            instrument_model: e.model,
            subsystem: e.subsystem,
            suspected_part: part.to_string(),
            priority: e.priority,
            due_by_ms: e.due_by_ms,
            reason: e.reason.clone(),
            created_at_ms: e.created_at_ms,
            predicted_limit_ms: e.evidence.predicted_limit_ms,
            status: e.status,
            revision: e.revision,
            updated_at_ms: at_ms,
            resolution: e.resolution,
            visit: e.visit.clone(),
            predicted_limit_earliest_ms: e.evidence.predicted_limit_earliest_ms,
            predicted_limit_latest_ms: e.evidence.predicted_limit_latest_ms,
            evidence: Some(e.evidence.clone()),
        }
    }

    // ---- time ------------------------------------------------------------------------------

    /// Moves `partition`'s clock to `t` (never back) and fires the timers it passed, each at
    /// the clock (so a transition never predates the records before it). The clock is state
    /// too (key `~clock/<partition>`), written once per minute of event time it moves.
    fn advance(&mut self, partition: i32, t: i64, out: &mut Emitter) -> Result<(), StageError> {
        let clock = self.clocks.entry(partition).or_insert(i64::MIN);
        if t <= *clock {
            return Ok(());
        }
        if *clock == i64::MIN || t.div_euclid(MINUTE_MS) != clock.div_euclid(MINUTE_MS) {
            out.state_changed(&clock_key(partition));
        }
        *clock = t;
        loop {
            let due = self
                .timers
                .get(&partition)
                .and_then(|set| set.iter().next().cloned())
                .filter(|(at, _)| *at <= t);
            let Some((_, key)) = due else { break };
            self.unschedule(&key);
            self.fire(&key, t, out)?;
            self.reschedule(&key);
        }
        Ok(())
    }

    /// `partition`'s clock, if it has one.
    fn clock(&self, partition: i32) -> Option<i64> {
        self.clocks
            .get(&partition)
            .copied()
            .filter(|t| *t != i64::MIN)
    }

    fn unschedule(&mut self, key: &str) {
        if let Some((p, at)) = self.timer_of.remove(key) {
            if let Some(set) = self.timers.get_mut(&p) {
                set.remove(&(at, key.to_string()));
            }
        }
    }

    /// Files `key`'s next timer (after any change to its book).
    fn reschedule(&mut self, key: &str) {
        self.unschedule(key);
        let Some(book) = self.books.get(key) else {
            return;
        };
        if let Some(at) = book.next_timer(&self.cfg) {
            self.timers
                .entry(book.partition)
                .or_default()
                .insert((at, key.to_string()));
            self.timer_of.insert(key.to_string(), (book.partition, at));
        }
    }

    /// Fires whatever of `key`'s book is due at `now`.
    fn fire(&mut self, key: &str, now: i64, out: &mut Emitter) -> Result<(), StageError> {
        let Some(mut book) = self.books.remove(key) else {
            return Ok(());
        };
        let cfg = self.cfg.clone();
        let mut resolved = Vec::new();
        let mut forget = Vec::new();
        for (subsystem, rec) in book.alerts.iter_mut() {
            if rec.resolved() {
                if rec
                    .resolved_at_ms
                    .is_some_and(|t| t + cfg.reopen_window_hours * HOUR_MS <= now)
                {
                    // No recurrence: work still open for an alert that cleared on its own is
                    // cancelled now (kept until here, so a flapping fault keeps its entry).
                    forget.push(*subsystem);
                    resolved.push((
                        rec.alert_id.clone(),
                        rec.resolution.unwrap_or(Resolution::CLEARED),
                    ));
                }
                continue;
            }
            if rec.state == AlertState::SNOOZED && rec.snoozed_until_ms.is_some_and(|t| t <= now) {
                rec.state = rec.before_snooze.take().unwrap_or(AlertState::OPEN);
                rec.snoozed_until_ms = None;
                if rec.waiting() {
                    rec.wait_from(now, &cfg);
                }
                Self::emit_timed(
                    out,
                    key,
                    *subsystem,
                    rec,
                    AlertTransition::UNSNOOZED,
                    AlertAction::UPDATE,
                    TransitionCause::TIMER,
                    now,
                )?;
            }
            if rec.resolve_at(&cfg).is_some_and(|t| t <= now) {
                rec.state = AlertState::RESOLVED;
                rec.resolution = Some(Resolution::CLEARED);
                rec.resolved_at_ms = Some(now);
                rec.clearing_since_ms = None;
                rec.snoozed_until_ms = None;
                Self::emit_timed(
                    out,
                    key,
                    *subsystem,
                    rec,
                    AlertTransition::RESOLVED,
                    AlertAction::RESOLVE,
                    TransitionCause::ANOMALY,
                    now,
                )?;
                continue;
            }
            // One escalation per firing; the next one a full delay later.
            if rec.escalate_at(&cfg).is_some_and(|t| t <= now) {
                rec.escalation_level += 1;
                rec.schedule_escalation(now, &cfg);
                Self::emit_timed(
                    out,
                    key,
                    *subsystem,
                    rec,
                    AlertTransition::ESCALATED,
                    AlertAction::UPDATE,
                    TransitionCause::TIMER,
                    now,
                )?;
            }
        }
        for s in forget {
            book.alerts.remove(&s);
        }
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for (alert_id, resolution) in resolved {
            changed.extend(close_entries(&mut book, &alert_id, resolution, now));
        }
        // Closed work long past is forgotten.
        book.entries.retain(|_, e| {
            e.status == MaintenanceStatus::OPEN
                || e.closed_at_ms
                    .is_none_or(|t| t + cfg.closed_retention_hours * HOUR_MS > now)
        });
        // A visit that passed without the work being closed is planned again.
        let passed: Vec<String> = book
            .entries
            .iter()
            .filter(|(_, e)| {
                e.status == MaintenanceStatus::OPEN && e.next_timer(&cfg).is_some_and(|t| t <= now)
            })
            .map(|(p, _)| p.clone())
            .collect();
        for part in &passed {
            if let Some(e) = book.entries.get_mut(part) {
                e.visit = None;
            }
        }
        changed.extend(self.plan_visits(key, &mut book, now));
        emit_entries(out, key, &mut book, &changed, now)?;
        out.state_changed(key);
        if !book.is_empty() {
            self.books.insert(key.to_string(), book);
        }
        Ok(())
    }

    // ---- maintenance -----------------------------------------------------------------------

    /// Groups `book`'s open entries into visits; returns the parts whose visit changed. A visit
    /// that still serves the same entries and still starts in time is kept as it is.
    fn plan_visits(&self, key: &str, book: &mut Book, now: i64) -> BTreeSet<String> {
        let mut open: Vec<(i64, String)> = book
            .entries
            .iter()
            .filter(|(_, e)| e.status == MaintenanceStatus::OPEN)
            .map(|(p, e)| (e.due_by_ms, p.clone()))
            .collect();
        open.sort();
        let visit_ms = self.cfg.visit_hours * HOUR_MS;
        let group_ms = self.cfg.group_visit_hours * HOUR_MS;
        let mut changed = BTreeSet::new();
        let mut i = 0;
        while i < open.len() {
            let (anchor_due, anchor) = open[i].clone();
            // The anchor's visit stands while it is still ahead and still ends by the due date.
            // (or, planned when the work was due already, while it is still ahead).
            let planned_late = anchor_due - visit_ms <= book.entries[&anchor].planned_at_ms;
            let kept = book.entries[&anchor].visit.clone().filter(|v| {
                v.visit_id == format!("{key}:visit:{anchor}")
                    && v.end_ms > now
                    && (v.end_ms <= anchor_due || planned_late)
            });
            let (start, basis) = match &kept {
                Some(v) => (v.start_ms, v.basis),
                None => {
                    let slot =
                        book.runs
                            .slot(now, anchor_due, visit_ms, self.cfg.habitual_idle_percent);
                    let basis = match slot {
                        Slot::HabitualIdle(_) => VisitBasis::HABITUAL_IDLE,
                        Slot::BetweenRuns(_) => VisitBasis::BETWEEN_RUNS,
                        Slot::IdleNow(_) => VisitBasis::IDLE_NOW,
                        Slot::NoHistory(_) => VisitBasis::NO_RUN_HISTORY,
                    };
                    (slot.start(), basis)
                }
            };
            let mut members = vec![anchor.clone()];
            let mut j = i + 1;
            while j < open.len() && open[j].0 <= start + group_ms {
                members.push(open[j].1.clone());
                j += 1;
            }
            let mut parts = members.clone();
            parts.sort();
            let mut entry_ids: Vec<String> = members
                .iter()
                .map(|p| book.entries[p].entry_id.clone())
                .collect();
            entry_ids.sort();
            let visit = Visit {
                visit_id: format!("{key}:visit:{anchor}"),
                start_ms: start,
                end_ms: start + visit_ms,
                basis,
                parts,
                entry_ids,
            };
            for part in &members {
                let e = book.entries.get_mut(part).expect("member");
                if e.visit.as_ref() != Some(&visit) {
                    e.visit = Some(visit.clone());
                    e.planned_at_ms = now;
                    changed.insert(part.clone());
                }
            }
            i = j;
        }
        changed
    }

    /// Creates, re-opens or updates the entry for the part `a` names; returns the parts whose
    /// entry changed.
    fn note_work(&self, book: &mut Book, a: &Anomaly, alert: &AlertRec) -> BTreeSet<String> {
        let (p, due) = self.plan(a);
        let part = alert.suspected_part.clone();
        let entry_id = format!("{}:{part}", a.instrument_serial);
        let mut changed = BTreeSet::new();
        match book.entries.get_mut(&part) {
            None => {
                book.entries.insert(
                    part.clone(),
                    EntryRec {
                        entry_id,
                        alert_id: alert.alert_id.clone(),
                        subsystem: a.subsystem,
                        model: a.instrument_model,
                        status: MaintenanceStatus::OPEN,
                        priority: p,
                        due_by_ms: due,
                        created_at_ms: a.window_end_ms,
                        revision: 0,
                        reason: Self::reason(a),
                        resolution: None,
                        visit: None,
                        planned_at_ms: a.window_end_ms,
                        evidence: alert.evidence.clone(),
                        closed_at_ms: None,
                    },
                );
                changed.insert(part);
            }
            Some(e) if e.status != MaintenanceStatus::OPEN => {
                e.status = MaintenanceStatus::OPEN;
                e.resolution = None;
                e.closed_at_ms = None;
                e.alert_id = alert.alert_id.clone();
                e.priority = p;
                e.due_by_ms = due;
                e.reason = Self::reason(a);
                e.evidence = alert.evidence.clone();
                e.visit = None;
                changed.insert(part);
            }
            Some(e) => {
                e.evidence = alert.evidence.clone();
                // The same entry again when the work became more urgent, never a second one.
                if p < e.priority || due < e.due_by_ms - HOUR_MS {
                    e.priority = e.priority.min(p);
                    e.due_by_ms = e.due_by_ms.min(due);
                    e.reason = Self::reason(a);
                    e.alert_id = alert.alert_id.clone();
                    changed.insert(part);
                }
            }
        }
        changed
    }

    // ---- anomalies -------------------------------------------------------------------------

    fn on_anomaly(
        &mut self,
        a: Anomaly,
        partition: i32,
        out: &mut Emitter,
    ) -> Result<(), StageError> {
        let key = a.instrument_serial.clone();
        let now = a.window_end_ms;
        let mut book = self
            .books
            .remove(&key)
            .unwrap_or_else(|| Book::new(partition));
        book.partition = partition;
        // A fleet anomaly (the cohort analyzer's) names a lot or version: one alert for the
        // cohort, no maintenance visit (the remedy is a lot recall or a software rollback).
        let fleet = a.cohort.is_some();
        let cause = if a.state == AnomalyState::PREDICTED {
            TransitionCause::FORECAST
        } else {
            TransitionCause::ANOMALY
        };
        let reopen_ms = self.cfg.reopen_window_hours * HOUR_MS;
        let mut work = BTreeSet::new();
        let existing = book.alerts.get(&a.subsystem).cloned();
        match (a.state, existing) {
            (AnomalyState::CLEARED, Some(mut rec)) if !rec.resolved() => {
                rec.active.remove(&series(&a));
                if fleet {
                    // The cohort cleared as a whole, whichever metric named it.
                    rec.active.clear();
                }
                if rec.active.is_empty() && rec.clearing_since_ms.is_none() {
                    rec.clearing_since_ms = Some(now);
                }
                book.alerts.insert(a.subsystem, rec);
                // A hold of zero resolves at once.
                self.books.insert(key.clone(), book);
                self.reschedule(&key);
                if self.timer_of.get(&key).is_some_and(|(_, at)| *at <= now) {
                    self.unschedule(&key);
                    self.fire(&key, now, out)?;
                    self.reschedule(&key);
                }
                out.state_changed(&key);
                return Ok(());
            }
            // A clearing for an alert already resolved, or never opened here (its opening fell
            // before a replay's start): nothing to do.
            (AnomalyState::CLEARED, _) => {}
            (_, existing) => {
                let recent_resolution = existing
                    .as_ref()
                    .filter(|r| r.resolved())
                    .filter(|r| r.resolved_at_ms.is_some_and(|t| now < t + reopen_ms));
                let settling = recent_resolution.is_some_and(|r| {
                    r.resolution.is_some_and(Resolution::fixed)
                        && r.resolved_at_ms
                            .is_some_and(|t| now < t + self.cfg.repair_settle_hours * HOUR_MS)
                });
                if settling && (improvement(&a) || a.severity == AnomalySeverity::LOW) {
                    // The repair showing, not a recurrence: nothing to tell anyone.
                    self.books.insert(key.clone(), book);
                    self.reschedule(&key);
                    return Ok(());
                }
                let predicted = a.state == AnomalyState::PREDICTED;
                match existing {
                    Some(mut rec) if !rec.resolved() => {
                        rec.anomaly_count += 1;
                        rec.active.insert(series(&a));
                        rec.score = rec.score.max(a.score);
                        rec.metric = a.metric.clone();
                        rec.evidence = refresh(&rec.evidence, &a);
                        // A recurrence within the resolve hold: silent (flap suppressed).
                        rec.clearing_since_ms = None;
                        if fleet {
                            rec.cohort = a.cohort.clone();
                        }
                        let rises = a.severity > rec.severity;
                        rec.severity = rec.severity.max(a.severity);
                        if rises && rec.state == AlertState::SNOOZED {
                            // Worse than when it was snoozed: the snooze ends.
                            rec.state = rec.before_snooze.take().unwrap_or(AlertState::OPEN);
                            rec.snoozed_until_ms = None;
                            if rec.waiting() {
                                rec.wait_from(now, &self.cfg);
                            }
                        } else if rises && rec.waiting() {
                            // Worse: the next escalation no later than the new severity's delay.
                            let was = rec.next_escalation_ms;
                            rec.schedule_escalation(now, &self.cfg);
                            rec.next_escalation_ms = match (was, rec.next_escalation_ms) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => b.or(a),
                            };
                        }
                        let opens = rec.predicted_only && !predicted;
                        if !predicted {
                            rec.predicted_only = false;
                        }
                        if opens {
                            // A forecast come true: what stood as PREDICTED is OPEN now,
                            // also where a snooze will return to.
                            if rec.state == AlertState::PREDICTED {
                                rec.state = AlertState::OPEN;
                            }
                            if rec.before_snooze == Some(AlertState::PREDICTED) {
                                rec.before_snooze = Some(AlertState::OPEN);
                            }
                        }
                        let transition = if opens {
                            Some(AlertTransition::OPENED)
                        } else if rises {
                            Some(AlertTransition::WORSENED)
                        } else if fleet {
                            // A fleet alert is re-sent when its members change: each is news.
                            Some(AlertTransition::UPDATED)
                        } else {
                            None
                        };
                        if let Some(transition) = transition {
                            let step = Step {
                                transition,
                                action: AlertAction::UPDATE,
                                cause,
                                at_ms: now,
                                command: None,
                            };
                            out.emit(
                                TopicRole::Alerts,
                                &key,
                                &Self::transition(&key, a.subsystem, &mut rec, step),
                            )?;
                        }
                        if !fleet {
                            work = self.note_work(&mut book, &a, &rec);
                        }
                        book.alerts.insert(a.subsystem, rec);
                    }
                    _ => {
                        let state = if predicted {
                            AlertState::PREDICTED
                        } else {
                            AlertState::OPEN
                        };
                        let (mut rec, transition) = match recent_resolution {
                            Some(was) => {
                                let mut rec = was.clone();
                                rec.reopen_count += 1;
                                rec.resolution = None;
                                rec.resolved_at_ms = None;
                                rec.acknowledged_by = None;
                                rec.snoozed_until_ms = None;
                                rec.before_snooze = None;
                                rec.escalation_level = 0;
                                rec.severity = a.severity;
                                rec.score = a.score;
                                rec.anomaly_count += 1;
                                (rec, AlertTransition::REOPENED)
                            }
                            None => (
                                AlertRec {
                                    alert_id: format!(
                                        "{key}:{}:{}",
                                        a.subsystem.label(),
                                        a.window_end_ms
                                    ),
                                    model: a.instrument_model,
                                    state,
                                    opened_at_ms: now,
                                    reopened_at_ms: now,
                                    severity: a.severity,
                                    score: a.score,
                                    anomaly_count: 1,
                                    active: BTreeSet::new(),
                                    predicted_only: predicted,
                                    suspected_part: suspected_part(&a),
                                    metric: a.metric.clone(),
                                    sequence: 0,
                                    assignee: None,
                                    acknowledged_by: None,
                                    snoozed_until_ms: None,
                                    before_snooze: None,
                                    resolution: None,
                                    resolved_at_ms: None,
                                    escalation_level: 0,
                                    unacked_since_ms: now,
                                    next_escalation_ms: None,
                                    reopen_count: 0,
                                    reopened_sequence: 0,
                                    clearing_since_ms: None,
                                    evidence: evidence(&a),
                                    cohort: a.cohort.clone(),
                                    commands: VecDeque::new(),
                                },
                                if predicted {
                                    AlertTransition::PREDICTED
                                } else {
                                    AlertTransition::OPENED
                                },
                            ),
                        };
                        rec.state = state;
                        rec.reopened_at_ms = now;
                        rec.wait_from(now, &self.cfg);
                        rec.predicted_only = predicted;
                        rec.active = [series(&a)].into();
                        rec.metric = a.metric.clone();
                        rec.clearing_since_ms = None;
                        rec.cohort = a.cohort.clone();
                        if transition == AlertTransition::REOPENED {
                            rec.evidence = evidence(&a);
                        }
                        let step = Step {
                            transition,
                            action: AlertAction::OPEN,
                            cause,
                            at_ms: now,
                            command: None,
                        };
                        out.emit(
                            TopicRole::Alerts,
                            &key,
                            &Self::transition(&key, a.subsystem, &mut rec, step),
                        )?;
                        if transition == AlertTransition::REOPENED {
                            rec.reopened_sequence = rec.sequence;
                        }
                        if !fleet {
                            work = self.note_work(&mut book, &a, &rec);
                        }
                        book.alerts.insert(a.subsystem, rec);
                    }
                }
            }
        }
        if !work.is_empty() {
            work.extend(self.plan_visits(&key, &mut book, now));
        }
        emit_entries(out, &key, &mut book, &work, now)?;
        out.state_changed(&key);
        self.books.insert(key.clone(), book);
        self.reschedule(&key);
        Ok(())
    }

    // ---- features --------------------------------------------------------------------------

    fn on_feature(&mut self, f: &Feature, partition: i32, out: &mut Emitter) {
        let key = f.instrument_serial.as_str();
        let book = self
            .books
            .entry(key.to_string())
            .or_insert_with(|| Book::new(partition));
        let moved = book.partition != partition;
        book.partition = partition;
        // Only a sensor's window says which phase the instrument is in.
        let sensor = seqmon_model::specs::metric(&f.metric).is_some_and(|m| {
            matches!(
                m.kind,
                seqmon_model::specs::MetricKind::Sensor
                    | seqmon_model::specs::MetricKind::Environment
            )
        });
        let mut changed = book.runs.observe(f.window_end_ms, f.run_phase, sensor) || moved;
        // Recent levels of the series an alert stands on.
        let s = RunPhase::series(&f.metric, f.run_phase);
        for rec in book.alerts.values_mut() {
            if !rec.resolved() && rec.evidence.series == s {
                let before = rec.evidence.recent.len();
                let last = rec.evidence.recent.last().map(|p| p.window_end_ms);
                push_point(&mut rec.evidence.recent, f.window_end_ms, f.level);
                changed |= rec.evidence.recent.len() != before
                    || rec.evidence.recent.last().map(|p| p.window_end_ms) != last;
            }
        }
        if changed {
            out.state_changed(key);
        }
        if moved {
            // Its timers now run on this partition's clock.
            let key = key.to_string();
            self.reschedule(&key);
        }
    }

    // ---- commands --------------------------------------------------------------------------

    /// Checks a command against the alert it names, as it arrived (key, partition, record
    /// timestamp); nothing changes.
    fn check(&self, c: &AlertCommand, input: &Envelope<'_>) -> Result<(), Refusal> {
        let invalid = |m: String| Err((DeadLetterReason::INVALID_COMMAND, m));
        // Handles are single-line text; a comment may have line breaks and tabs, nothing else
        // that could steer a terminal.
        let plain = |v: &str| !v.chars().any(char::is_control);
        let handle =
            |v: &str| !v.trim().is_empty() && v.chars().count() <= MAX_HANDLE_CHARS && plain(v);
        if !handle(&c.command_id) {
            return invalid("command_id must be 1 to 128 characters, no control characters".into());
        }
        if !handle(&c.issued_by) {
            return invalid("issued_by must be 1 to 128 characters, no control characters".into());
        }
        if let Some(t) = &c.comment {
            if t.chars().count() > MAX_COMMENT_CHARS {
                return invalid(format!(
                    "comment longer than {MAX_COMMENT_CHARS} characters"
                ));
            }
            if t.chars()
                .any(|ch| ch.is_control() && ch != '\n' && ch != '\t')
            {
                return invalid("comment has control characters".into());
            }
        }
        if seqmon_model::alert_key(&c.alert_id) != Some(c.instrument_serial.as_str()) {
            return invalid(format!(
                "alert {} is not keyed by {}",
                c.alert_id, c.instrument_serial
            ));
        }
        let key = key_str(input);
        if key != c.instrument_serial {
            return invalid(format!(
                "the record is keyed {key:?} but names {}: commands are keyed like their alert",
                c.instrument_serial
            ));
        }
        // Within an hour of the record's own timestamp: a console with a wrong clock, or a
        // forged time, does not snooze for years or plan visits in the future.
        if let Some(ts) = input.timestamp_ms {
            if (c.issued_at_ms - ts).abs() > HOUR_MS {
                return invalid(format!(
                    "issued_at_ms {} is more than an hour from the record's timestamp {ts}",
                    c.issued_at_ms
                ));
            }
        }
        match c.action {
            AlertCommandAction::UNKNOWN => {
                return invalid("unknown action (a newer console?)".into())
            }
            AlertCommandAction::SNOOZE => {
                let Some(until) = c.snooze_until_ms else {
                    return invalid("SNOOZE needs snooze_until_ms".into());
                };
                let longest = c
                    .issued_at_ms
                    .saturating_add(self.cfg.max_snooze_hours * HOUR_MS);
                if until <= c.issued_at_ms || until > longest {
                    return invalid(format!(
                        "snooze must end after it is issued and within {} h",
                        self.cfg.max_snooze_hours
                    ));
                }
            }
            AlertCommandAction::RESOLVE => match c.resolution {
                None => return invalid("RESOLVE needs a resolution".into()),
                Some(Resolution::CLEARED) => {
                    return invalid("CLEARED is the notifier's own resolution".into())
                }
                Some(_) => {}
            },
            AlertCommandAction::ASSIGN => {
                if !c.assignee.as_deref().is_some_and(handle) {
                    return invalid(
                        "ASSIGN needs an assignee of 1 to 128 characters, no control characters"
                            .into(),
                    );
                }
            }
            AlertCommandAction::ACKNOWLEDGE => {}
        }
        let book = self.books.get(&c.instrument_serial);
        let rec = book.and_then(|b| b.alerts.values().find(|r| r.alert_id == c.alert_id));
        let (Some(book), Some(rec)) = (book, rec) else {
            return Err((
                DeadLetterReason::UNKNOWN_ALERT,
                format!(
                    "no alert {} (never opened, or resolved long ago)",
                    c.alert_id
                ),
            ));
        };
        if book.partition >= 0 && book.partition != input.partition {
            return invalid(format!(
                "arrived on partition {} but the alert's records are on partition {}: produce \
                 commands with the partitioner that keys the anomalies",
                input.partition, book.partition
            ));
        }
        if rec.commands.contains(&c.command_id) {
            return Err((
                DeadLetterReason::DUPLICATE_MESSAGE,
                format!("command {} was applied already", c.command_id),
            ));
        }
        let stale = |m: String| Err((DeadLetterReason::STALE_TRANSITION, m));
        match c.alert_sequence {
            Some(seen) if seen > rec.sequence || seen < 1 => {
                return invalid(format!(
                    "answers record #{seen}; alert {} is at #{}",
                    c.alert_id, rec.sequence
                ))
            }
            Some(seen) if seen < rec.reopened_sequence => {
                return stale(format!(
                    "answers record #{seen}; alert {} re-opened at #{} (recurrence {})",
                    c.alert_id, rec.reopened_sequence, rec.reopen_count
                ))
            }
            Some(_) => {}
            // Without the record it answers, by time: issued before the re-opening (with five
            // minutes for clocks that differ).
            None if rec.reopen_count > 0 && c.issued_at_ms + 5 * MINUTE_MS < rec.reopened_at_ms => {
                return stale(format!(
                    "issued before alert {} re-opened (recurrence {})",
                    c.alert_id, rec.reopen_count
                ))
            }
            None => {}
        }
        // The part was replaced after all: a repair may still be recorded on an alert that
        // cleared on its own, while it is remembered.
        let repair_after_clearing = rec.resolution == Some(Resolution::CLEARED)
            && c.action == AlertCommandAction::RESOLVE
            && c.resolution.is_some_and(Resolution::fixed);
        let allowed = repair_after_clearing
            || !matches!(
                (c.action, rec.state),
                (_, AlertState::RESOLVED)
                    | (AlertCommandAction::ACKNOWLEDGE, AlertState::ACKNOWLEDGED)
            );
        if !allowed {
            return stale(format!(
                "{:?} does not apply to an alert {}",
                c.action,
                rec.state.as_str()
            ));
        }
        Ok(())
    }

    /// Applies a command [`Notifier::check`] accepted.
    fn apply(&mut self, c: &AlertCommand, out: &mut Emitter) -> Result<(), StageError> {
        let key = c.instrument_serial.clone();
        let Some(mut book) = self.books.remove(&key) else {
            return Ok(());
        };
        let clock = self.clock(book.partition);
        let Some((subsystem, rec)) = book
            .alerts
            .iter_mut()
            .find(|(_, r)| r.alert_id == c.alert_id)
        else {
            self.books.insert(key, book);
            return Ok(());
        };
        let subsystem = *subsystem;
        // The record says when the person acted; planning and timers go by the event clock
        // (the command's time only when the partition has none yet).
        let at = c.issued_at_ms;
        let now = clock.unwrap_or(at);
        let (transition, action) = match c.action {
            AlertCommandAction::ACKNOWLEDGE => {
                rec.state = AlertState::ACKNOWLEDGED;
                rec.acknowledged_by = Some(c.issued_by.clone());
                rec.snoozed_until_ms = None;
                rec.before_snooze = None;
                rec.next_escalation_ms = None;
                (AlertTransition::ACKNOWLEDGED, AlertAction::UPDATE)
            }
            AlertCommandAction::SNOOZE => {
                if rec.state != AlertState::SNOOZED {
                    rec.before_snooze = Some(rec.state);
                }
                rec.state = AlertState::SNOOZED;
                rec.snoozed_until_ms = c.snooze_until_ms;
                (AlertTransition::SNOOZED, AlertAction::UPDATE)
            }
            AlertCommandAction::ASSIGN => {
                rec.assignee = c.assignee.clone();
                (AlertTransition::ASSIGNED, AlertAction::UPDATE)
            }
            AlertCommandAction::RESOLVE | AlertCommandAction::UNKNOWN => {
                rec.state = AlertState::RESOLVED;
                rec.resolution = c.resolution;
                // The re-open and repair-settle windows run from now.
                rec.resolved_at_ms = Some(now);
                rec.active.clear();
                rec.clearing_since_ms = None;
                rec.snoozed_until_ms = None;
                rec.before_snooze = None;
                rec.next_escalation_ms = None;
                (AlertTransition::RESOLVED, AlertAction::RESOLVE)
            }
        };
        rec.commands.push_back(c.command_id.clone());
        if rec.commands.len() > REMEMBERED_COMMANDS {
            rec.commands.pop_front();
        }
        let step = Step {
            transition,
            action,
            cause: TransitionCause::COMMAND,
            at_ms: at,
            command: Some(c),
        };
        let record = Self::transition(&key, subsystem, rec, step);
        out.emit(TopicRole::Alerts, &key, &record)?;
        let mut changed = BTreeSet::new();
        if transition == AlertTransition::RESOLVED {
            let resolution = c.resolution.unwrap_or(Resolution::CLEARED);
            let alert_id = c.alert_id.clone();
            changed = close_entries(&mut book, &alert_id, resolution, now);
            changed.extend(self.plan_visits(&key, &mut book, now));
        }
        emit_entries(out, &key, &mut book, &changed, now)?;
        out.state_changed(&key);
        self.books.insert(key.clone(), book);
        self.reschedule(&key);
        Ok(())
    }
}

/// The state key of a partition's clock.
fn clock_key(partition: i32) -> String {
    format!("{CLOCK_PREFIX}{partition}")
}

/// State keys that are partitions' clocks, not instruments.
const CLOCK_PREFIX: &str = "~clock/";

/// Closes (the work was done) or cancels the open entries of an alert; returns their parts.
fn close_entries(
    book: &mut Book,
    alert_id: &str,
    resolution: Resolution,
    now: i64,
) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    for (part, e) in book.entries.iter_mut() {
        if e.alert_id == alert_id && e.status == MaintenanceStatus::OPEN {
            e.status = if resolution.fixed() {
                MaintenanceStatus::CLOSED
            } else {
                MaintenanceStatus::CANCELLED
            };
            e.resolution = Some(resolution);
            e.visit = None;
            e.closed_at_ms = Some(now);
            changed.insert(part.clone());
        }
    }
    changed
}

/// Writes a new revision of each changed entry.
fn emit_entries(
    out: &mut Emitter,
    key: &str,
    book: &mut Book,
    parts: &BTreeSet<String>,
    at_ms: i64,
) -> Result<(), StageError> {
    for part in parts {
        if let Some(e) = book.entries.get_mut(part) {
            book.revisions = book.revisions.max(e.revision) + 1;
            e.revision = book.revisions;
            out.emit(
                TopicRole::Maintenance,
                key,
                &Notifier::entry_record(key, part, e, at_ms),
            )?;
        }
    }
    Ok(())
}

impl Processor for Notifier {
    fn stage(&self) -> &'static str {
        "notifier"
    }
    fn input_role(&self) -> TopicRole {
        TopicRole::Anomalies
    }
    fn side_input_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::AlertCommands, TopicRole::Features]
    }
    fn output_roles(&self) -> &'static [TopicRole] {
        &[TopicRole::Alerts, TopicRole::Maintenance]
    }
    fn changelog_role(&self) -> Option<TopicRole> {
        Some(TopicRole::ChangelogNotifier)
    }

    fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
        // Three inputs; each record says by its schema fingerprint which it is.
        let schema = match writer_schema(input.value) {
            Ok((entry, _)) => entry.name,
            Err(e) => {
                out.reject(e.reason(), e.to_string());
                return Ok(());
            }
        };
        match schema {
            "anomaly" => {
                let Some(a) = out.decode_or_reject::<Anomaly>(input) else {
                    return Ok(());
                };
                if out.reject_non_finite(a.non_finite_measurement()) {
                    return Ok(());
                }
                if out.reject_if_ahead(input, a.window_end_ms, self.cfg.max_event_lead_ms) {
                    return Ok(());
                }
                self.advance(input.partition, a.window_end_ms, out)?;
                self.on_anomaly(a, input.partition, out)
            }
            "feature" => {
                let Some(f) = out.decode_or_reject::<Feature>(input) else {
                    return Ok(());
                };
                if out.reject_non_finite(f.non_finite_measurement())
                    || out.reject_if_ahead(input, f.window_end_ms, self.cfg.max_event_lead_ms)
                {
                    return Ok(());
                }
                self.advance(input.partition, f.window_end_ms, out)?;
                self.on_feature(&f, input.partition, out);
                Ok(())
            }
            "alert_command" => {
                let Some(c) = out.decode_or_reject::<AlertCommand>(input) else {
                    return Ok(());
                };
                match self.check(&c, input) {
                    Ok(()) => self.apply(&c, out),
                    Err((reason, detail)) => {
                        out.reject(reason, detail);
                        Ok(())
                    }
                }
            }
            other => {
                out.reject(
                    DeadLetterReason::WRONG_SCHEMA,
                    format!("{other} is none of the notifier's inputs (anomaly, alert_command, feature)"),
                );
                Ok(())
            }
        }
    }

    fn state_format_version(&self) -> i32 {
        2
    }

    /// 3: format 2 naming an instrument model added in 2026-12, which a build before it
    /// cannot read (so its restore stops rather than quarantine the book).
    fn state_record_format(&self, record: &StateRecord) -> i32 {
        let added_model = self.books.get(&record.key).is_some_and(|b| {
            b.alerts.values().any(|a| !a.model.in_first_symbols())
                || b.entries.values().any(|e| !e.model.in_first_symbols())
        });
        if added_model {
            3
        } else {
            self.state_format_version()
        }
    }

    fn reads_state_format(&self, version: i32) -> bool {
        matches!(version, 1..=3)
    }

    fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StageError> {
        let fail = |e: serde_json::Error| StageError::Snapshot {
            key: key.into(),
            message: e.to_string(),
        };
        if let Some(p) = key.strip_prefix(CLOCK_PREFIX) {
            let clock = p.parse().ok().and_then(|p: i32| self.clock(p));
            return clock
                .map(|t| serde_json::to_vec(&t).map_err(fail))
                .transpose();
        }
        let Some(book) = self.books.get(key) else {
            return Ok(None);
        };
        serde_json::to_vec(book).map(Some).map_err(fail)
    }

    fn restore(&mut self, key: &str, state: &[u8]) -> Result<(), StageError> {
        let fail = |e: serde_json::Error| StageError::State {
            key: key.into(),
            message: e.to_string(),
        };
        if let Some(p) = key.strip_prefix(CLOCK_PREFIX) {
            let p: i32 = p.parse().map_err(|_| StageError::State {
                key: key.into(),
                message: "not a partition's clock".into(),
            })?;
            let t: i64 = serde_json::from_slice(state).map_err(fail)?;
            let clock = self.clocks.entry(p).or_insert(i64::MIN);
            *clock = (*clock).max(t);
            return Ok(());
        }
        let book = if state.first() == Some(&b'[') {
            let list: Vec<(Subsystem, LegacyOpenAlert)> =
                serde_json::from_slice(state).map_err(fail)?;
            self.legacy_book(key, list)
        } else {
            serde_json::from_slice(state).map_err(fail)?
        };
        self.books.insert(key.to_string(), book);
        self.reschedule(key);
        Ok(())
    }

    fn clear_state(&mut self) {
        self.books.clear();
        self.clocks.clear();
        self.timers.clear();
        self.timer_of.clear();
    }

    fn state_keys(&self) -> Vec<String> {
        let clocks = self
            .clocks
            .iter()
            .filter(|(_, t)| **t != i64::MIN)
            .map(|(p, _)| clock_key(*p));
        self.books.keys().cloned().chain(clocks).collect()
    }
}

impl Notifier {
    /// A book from layout 1 (the open alerts of the notifier before the lifecycle): each alert
    /// OPEN, never escalated (nobody was asked to acknowledge it), with its maintenance entry
    /// rebuilt from the priority and due date it had. The partition is unknown (-1) until the
    /// key's next record, so no timer fires on another partition's clock.
    fn legacy_book(&self, key: &str, list: Vec<(Subsystem, LegacyOpenAlert)>) -> Book {
        let mut book = Book::new(-1);
        for (subsystem, old) in list {
            let metric = old
                .active_metrics
                .iter()
                .next()
                .cloned()
                .unwrap_or_default();
            let evidence = Evidence {
                metric: metric.clone(),
                series: metric.clone(),
                rule: String::new(),
                anomaly_id: String::new(),
                observed: 0.0,
                baseline: 0.0,
                baseline_stddev: 0.0,
                slope_per_hour: 0.0,
                score: old.score,
                spec_low: None,
                spec_high: None,
                recent: Vec::new(),
                predicted_limit_ms: None,
                predicted_limit_earliest_ms: None,
                predicted_limit_latest_ms: None,
            };
            let due = old
                .due_by_ms
                .unwrap_or(old.opened_at_ms + self.cfg.due_hours[2] * HOUR_MS);
            book.entries.insert(
                old.suspected_part.clone(),
                EntryRec {
                    entry_id: format!("{key}:{}", old.suspected_part),
                    alert_id: old.alert_id.clone(),
                    subsystem,
                    model: InstrumentModel::UNKNOWN,
                    status: MaintenanceStatus::OPEN,
                    priority: old.priority,
                    due_by_ms: due,
                    created_at_ms: old.opened_at_ms,
                    // Layout 1 sent each entry once or twice under this id: start above that.
                    revision: 2,
                    reason: "carried over from the notifier before alert lifecycles".into(),
                    resolution: None,
                    visit: None,
                    planned_at_ms: old.opened_at_ms,
                    evidence: evidence.clone(),
                    closed_at_ms: None,
                },
            );
            book.revisions = 2;
            book.alerts.insert(
                subsystem,
                AlertRec {
                    alert_id: old.alert_id,
                    model: InstrumentModel::UNKNOWN,
                    state: AlertState::OPEN,
                    opened_at_ms: old.opened_at_ms,
                    reopened_at_ms: old.opened_at_ms,
                    severity: old.severity,
                    score: old.score,
                    anomaly_count: old.anomaly_count,
                    active: old.active_metrics,
                    predicted_only: false,
                    suspected_part: old.suspected_part,
                    metric,
                    sequence: 1,
                    assignee: None,
                    acknowledged_by: None,
                    snoozed_until_ms: None,
                    before_snooze: None,
                    resolution: None,
                    resolved_at_ms: None,
                    escalation_level: 0,
                    unacked_since_ms: old.opened_at_ms,
                    next_escalation_ms: None,
                    reopen_count: 0,
                    reopened_sequence: 0,
                    clearing_since_ms: None,
                    evidence,
                    cohort: None,
                    commands: VecDeque::new(),
                },
            );
        }
        book
    }
}

#[cfg(test)]
mod tests;
