//! Run history of one instrument, learned from its features' run phases: when it runs and when
//! it stands idle, so a maintenance visit is proposed in an idle window, never in the middle of
//! a run.
//!
//! Two things are learned. The run cycle: how long a run lasts (priming to wash) and how long
//! the instrument then stands idle, each a moving average over completed stretches, from which
//! the ends of the coming runs are projected. And a weekly profile: per hour of the week (UTC),
//! the share of windows the instrument was idle, a moving average over weeks; an hour idle in
//! most weeks (a night, a weekend) is a habitual idle window. A window is idle only when its
//! phase says IDLE; priming, sequencing, wash and phases newer than this build are busy. Only
//! sensor features say which phase a window is in, and a sensor feature without a phase is
//! sequencing (the feature extractor leaves the phase out for sequencing, the spec's own) once
//! the instrument has sent any phase; instruments that never send one teach nothing, and their
//! visits say so. A window's phase is settled when the next window begins (busy when any of its
//! features says so), and a silence of more than half an hour breaks the stretch (an instrument
//! switched off is not a long run).

use seqmon_model::RunPhase;
use serde::{Deserialize, Serialize};

const HOUR_MS: i64 = 3_600_000;
const WEEK_HOURS: usize = 168;
/// An hour bucket never seen.
const UNSEEN: u8 = u8::MAX;
/// Weight of the newest stretch or week in the moving averages.
const ALPHA: f64 = 0.3;
/// A gap between windows longer than this breaks the current stretch.
const GAP_MS: i64 = 30 * 60_000;

/// Where a visit may start, and why there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An hour of the week the instrument is usually idle.
    HabitualIdle(i64),
    /// The projected end of a run (or now, when idle now and the due date is close).
    BetweenRuns(i64),
    /// Idle now.
    IdleNow(i64),
    /// Nothing learned: the latest start that still meets the due date.
    NoHistory(i64),
}

impl Slot {
    /// The proposed start.
    pub fn start(self) -> i64 {
        match self {
            Slot::HabitualIdle(t)
            | Slot::BetweenRuns(t)
            | Slot::IdleNow(t)
            | Slot::NoHistory(t) => t,
        }
    }
}

/// What one instrument's windows taught about its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHistory {
    /// Whether the instrument has ever sent a phase (then a phaseless sensor window is
    /// sequencing).
    phased: bool,
    /// The window being gathered (its end), and whether a feature of it said busy.
    cur_end_ms: i64,
    cur_busy: bool,
    /// End of the latest window settled, and whether it was busy.
    last_window_end_ms: i64,
    last_busy: bool,
    /// Start of the current stretch (busy or idle).
    stretch_start_ms: i64,
    /// Moving averages of completed runs' and idle stretches' lengths (ms); 0 until one.
    run_len_ms: f64,
    idle_len_ms: f64,
    runs_seen: u32,
    /// Per hour of the week (0 = Monday 00:00 UTC): percent of windows idle, or `UNSEEN`.
    hour_idle_pct: Vec<u8>,
    /// The hour being counted (hours since the epoch), its windows and its idle windows.
    acc_hour: i64,
    acc_windows: u32,
    acc_idle: u32,
}

impl Default for RunHistory {
    fn default() -> Self {
        RunHistory {
            phased: false,
            cur_end_ms: i64::MIN,
            cur_busy: false,
            last_window_end_ms: i64::MIN,
            last_busy: false,
            stretch_start_ms: 0,
            run_len_ms: 0.0,
            idle_len_ms: 0.0,
            runs_seen: 0,
            hour_idle_pct: vec![UNSEEN; WEEK_HOURS],
            acc_hour: i64::MIN,
            acc_windows: 0,
            acc_idle: 0,
        }
    }
}

/// Hour of the week (0 = Monday 00:00 UTC) of an hour since the epoch (a Thursday).
fn hour_of_week(hour: i64) -> usize {
    (hour + 72).rem_euclid(WEEK_HOURS as i64) as usize
}

impl RunHistory {
    /// Takes one feature's window: its end, its phase and whether it is a sensor's (only those
    /// say which phase the instrument is in). Returns whether something worth persisting
    /// changed: a stretch began or an hour was folded into the profile (windows within an hour
    /// or a stretch are re-learned after a restore).
    pub fn observe(&mut self, window_end_ms: i64, phase: Option<RunPhase>, sensor: bool) -> bool {
        let busy = match phase {
            Some(p) if sensor => {
                self.phased = true;
                p != RunPhase::IDLE
            }
            None if sensor && self.phased => true,
            _ => return false,
        };
        if window_end_ms == self.cur_end_ms {
            self.cur_busy |= busy;
            return false;
        }
        if window_end_ms < self.cur_end_ms {
            return false;
        }
        let changed = if self.cur_end_ms == i64::MIN {
            // The first phase seen: persist that the instrument sends phases.
            true
        } else {
            self.settle(self.cur_end_ms, self.cur_busy)
        };
        self.cur_end_ms = window_end_ms;
        self.cur_busy = busy;
        changed
    }

    /// Takes a window whose phase is settled.
    fn settle(&mut self, window_end_ms: i64, busy: bool) -> bool {
        let mut changed = false;
        let hour = window_end_ms.div_euclid(HOUR_MS);
        if hour != self.acc_hour {
            changed |= self.fold_hour();
            self.acc_hour = hour;
        }
        self.acc_windows += 1;
        self.acc_idle += u32::from(!busy);
        let first = self.last_window_end_ms == i64::MIN;
        let gap = !first && window_end_ms - self.last_window_end_ms > GAP_MS;
        if first || gap {
            // A stretch seen from its middle: its length is unknown.
            self.stretch_start_ms = 0;
            changed = true;
        } else if busy != self.last_busy {
            let len = (self.last_window_end_ms - self.stretch_start_ms) as f64;
            // Only a stretch seen from its start counts.
            if self.stretch_start_ms > 0 && len > 0.0 {
                let avg = if self.last_busy {
                    self.runs_seen += 1;
                    &mut self.run_len_ms
                } else {
                    &mut self.idle_len_ms
                };
                *avg = if *avg == 0.0 {
                    len
                } else {
                    *avg + ALPHA * (len - *avg)
                };
            }
            self.stretch_start_ms = self.last_window_end_ms;
            changed = true;
        }
        self.last_window_end_ms = window_end_ms;
        self.last_busy = busy;
        changed
    }

    /// Folds the hour being counted into the weekly profile.
    fn fold_hour(&mut self) -> bool {
        if self.acc_windows == 0 || self.acc_hour == i64::MIN {
            return false;
        }
        let pct = (100 * self.acc_idle / self.acc_windows) as f64;
        let slot = &mut self.hour_idle_pct[hour_of_week(self.acc_hour)];
        *slot = if *slot == UNSEEN {
            pct.round() as u8
        } else {
            (f64::from(*slot) + ALPHA * (pct - f64::from(*slot))).round() as u8
        };
        self.acc_windows = 0;
        self.acc_idle = 0;
        true
    }

    /// Whether every hour of the week has been seen at least once.
    fn week_learned(&self) -> bool {
        self.hour_idle_pct.iter().all(|p| *p != UNSEEN)
    }

    /// The visit slot for work of `visit_ms` due by `due_ms`, as of `now_ms`: the latest
    /// habitual idle window that still meets the due date; else, with a learned run cycle, the
    /// latest projected run end that does (the first run end when none does: never mid-run);
    /// idle now and no cycle learned: now; nothing learned: the latest start that meets the due
    /// date. Phase information older than two hours counts as none.
    pub fn slot(&self, now_ms: i64, due_ms: i64, visit_ms: i64, idle_pct: u8) -> Slot {
        let latest = (due_ms - visit_ms).max(now_ms);
        if self.week_learned() {
            let need = ((visit_ms + HOUR_MS - 1) / HOUR_MS).max(1) as usize;
            let first = (now_ms + HOUR_MS - 1).div_euclid(HOUR_MS);
            let last = latest.div_euclid(HOUR_MS);
            let idle = |h: i64| self.hour_idle_pct[hour_of_week(h)] >= idle_pct;
            let mut h = last;
            while h >= first {
                if (0..need as i64).all(|k| idle(h + k)) {
                    return Slot::HabitualIdle(h * HOUR_MS);
                }
                h -= 1;
            }
        }
        let fresh =
            self.last_window_end_ms != i64::MIN && now_ms - self.last_window_end_ms <= 2 * HOUR_MS;
        if !fresh {
            return Slot::NoHistory(latest);
        }
        if self.runs_seen >= 1 && self.run_len_ms > 0.0 && self.idle_len_ms > 0.0 {
            let run = self.run_len_ms as i64;
            let cycle = run + self.idle_len_ms as i64;
            let base = if self.stretch_start_ms > 0 {
                self.stretch_start_ms
            } else {
                self.last_window_end_ms
            };
            let mut end = if self.last_busy {
                base + run
            } else {
                base + self.idle_len_ms as i64 + run
            };
            if !self.last_busy && latest <= now_ms {
                // Idle now and the work is due: now, before the next run starts.
                return Slot::IdleNow(now_ms);
            }
            if self.last_busy && end < self.last_window_end_ms {
                // A run past its usual length ends soon: half an hour on.
                end = now_ms + HOUR_MS / 2;
            }
            while end < now_ms {
                end += cycle;
            }
            let first_end = end;
            let mut best = None;
            while end <= latest {
                best = Some(end);
                end += cycle;
            }
            return Slot::BetweenRuns(best.unwrap_or(first_end));
        }
        if !self.last_busy {
            return Slot::IdleNow(now_ms);
        }
        Slot::NoHistory(latest)
    }

    /// End of the latest window seen (`None` before the first).
    pub fn last_seen_ms(&self) -> Option<i64> {
        (self.last_window_end_ms != i64::MIN).then_some(self.last_window_end_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// Feeds 5-minute windows from `from` to `to`, phase by `phase_at`.
    fn feed(h: &mut RunHistory, from: i64, to: i64, phase_at: impl Fn(i64) -> RunPhase) {
        let mut t = from;
        while t <= to {
            h.observe(t, Some(phase_at(t)), true);
            t += 5 * MIN;
        }
    }

    /// 2 h runs with 30 min idle between them.
    fn cycle(t: i64) -> RunPhase {
        if t.rem_euclid(150 * MIN) < 120 * MIN {
            RunPhase::SEQUENCING
        } else {
            RunPhase::IDLE
        }
    }

    #[test]
    fn learns_the_run_cycle_and_never_proposes_mid_run() {
        let mut h = RunHistory::default();
        let t0 = 1_000 * HOUR_MS;
        feed(&mut h, t0, t0 + 20 * HOUR_MS, cycle);
        assert!(
            (h.run_len_ms - (120 * MIN) as f64).abs() <= (5 * MIN) as f64,
            "{h:?}"
        );
        assert!(
            (h.idle_len_ms - (30 * MIN) as f64).abs() <= (5 * MIN) as f64,
            "{h:?}"
        );
        let now = t0 + 20 * HOUR_MS;
        // Due in two days: the latest run end that still leaves two hours, in an idle stretch.
        let slot = h.slot(now, now + 48 * HOUR_MS, 2 * HOUR_MS, 80);
        let Slot::BetweenRuns(start) = slot else {
            panic!("{slot:?}")
        };
        assert!(start <= now + 46 * HOUR_MS && start > now + 40 * HOUR_MS);
        assert_eq!(
            cycle(start + 5 * MIN),
            RunPhase::IDLE,
            "starts as a run ends"
        );
        // Due before the current run ends: still at its end, not in the middle of it.
        let mid_run = t0 + 20 * HOUR_MS + 10 * MIN;
        feed(&mut h, now + 5 * MIN, mid_run, cycle);
        assert_eq!(cycle(mid_run), RunPhase::SEQUENCING);
        let slot = h.slot(mid_run, mid_run + 30 * MIN, 2 * HOUR_MS, 80);
        assert!(matches!(slot, Slot::BetweenRuns(_)), "{slot:?}");
        assert_eq!(cycle(slot.start() + 5 * MIN), RunPhase::IDLE);
    }

    #[test]
    fn a_week_of_idle_nights_gives_habitual_windows() {
        let mut h = RunHistory::default();
        // Busy 08:00-20:00 UTC, idle otherwise, for eight days.
        let t0 = 10_000 * 24 * HOUR_MS;
        let office = |t: i64| {
            let hour = t.div_euclid(HOUR_MS).rem_euclid(24);
            if (8..20).contains(&hour) {
                RunPhase::SEQUENCING
            } else {
                RunPhase::IDLE
            }
        };
        feed(&mut h, t0, t0 + 8 * 24 * HOUR_MS, office);
        let now = t0 + 8 * 24 * HOUR_MS + 9 * HOUR_MS;
        let slot = h.slot(now, now + 72 * HOUR_MS, 2 * HOUR_MS, 80);
        let Slot::HabitualIdle(start) = slot else {
            panic!("{slot:?}")
        };
        assert_eq!(office(start), RunPhase::IDLE);
        assert_eq!(office(start + HOUR_MS), RunPhase::IDLE);
        assert!(start + 2 * HOUR_MS <= now + 72 * HOUR_MS);
    }

    #[test]
    fn phaseless_sequencing_split_windows_and_gaps_are_read_as_sent() {
        let mut h = RunHistory::default();
        let t0 = 1_000 * HOUR_MS;
        let mut t = t0;
        while t < t0 + 20 * HOUR_MS {
            match cycle(t) {
                // Sequencing has no phase on its features; a run metric says nothing.
                RunPhase::SEQUENCING => {
                    h.observe(t, None, true);
                    h.observe(t, None, false);
                }
                p => {
                    h.observe(t, Some(p), true);
                    // The window where the next run starts: its idle part first.
                    if cycle(t + 5 * MIN) == RunPhase::SEQUENCING {
                        h.observe(t, None, true);
                    }
                }
            }
            t += 5 * MIN;
        }
        assert!(
            (h.run_len_ms - (125 * MIN) as f64).abs() <= (5 * MIN) as f64,
            "{h:?}"
        );
        assert!(
            (h.idle_len_ms - (25 * MIN) as f64).abs() <= (5 * MIN) as f64,
            "{h:?}"
        );
        // Switched off for three hours mid-run: no run of five hours is learned.
        let runs = h.runs_seen;
        let before = h.run_len_ms;
        h.observe(t + 3 * HOUR_MS, None, true);
        h.observe(t + 3 * HOUR_MS + 5 * MIN, Some(RunPhase::IDLE), true);
        h.observe(t + 3 * HOUR_MS + 10 * MIN, Some(RunPhase::IDLE), true);
        assert_eq!((h.runs_seen, h.run_len_ms), (runs, before));
    }

    #[test]
    fn no_phase_teaches_nothing() {
        let mut h = RunHistory::default();
        assert!(!h.observe(5 * MIN, None, true));
        assert!(
            !h.observe(5 * MIN, Some(RunPhase::IDLE), false),
            "only sensors say"
        );
        assert_eq!(
            h.slot(HOUR_MS, 10 * HOUR_MS, 2 * HOUR_MS, 80),
            Slot::NoHistory(8 * HOUR_MS)
        );
    }
}
