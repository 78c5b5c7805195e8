//! A simulated service team for `make run`: it reads the alerts as they come and answers them
//! with commands, as a team using `seqmon-admin alert` would, so a run shows the whole
//! lifecycle. Deterministic (no randomness, event time only).
//!
//! What it does: acknowledges an alert 20 minutes after it opens (or re-opens) and assigns it
//! to an engineer 5 minutes later; snoozes a low-severity forecast for 12 hours instead. When the
//! simulator's ground truth has the fault behind an alert repaired, it resolves the alert as
//! repaired then (part replaced when a forecast named the part); an alert with no fault behind
//! it is resolved as a false alarm after 4 hours; fleet alerts are acknowledged only. Commands
//! for an alert already resolved are not sent, nor those planned for an episode that re-opened;
//! each names the alert record it answers (`alert_sequence`).

use std::collections::{BTreeMap, BTreeSet};

use seqmon_model::{
    Alert, AlertAction, AlertCommand, AlertCommandAction, AlertState, AnomalySeverity, Resolution,
};
use seqmon_simulator::FaultTruth;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// The simulated team.
#[derive(Debug, Default)]
pub struct ServiceTeam {
    faults: Vec<FaultTruth>,
    /// Commands waiting for their time: (issue time, sequence) → command.
    pending: BTreeMap<(i64, u64), AlertCommand>,
    next: u64,
    /// Alerts resolved (by anyone): their pending commands are dropped.
    resolved: BTreeSet<String>,
}

impl ServiceTeam {
    /// A team that knows the simulation's ground truth (when each fault was repaired).
    pub fn new(faults: &[FaultTruth]) -> Self {
        ServiceTeam {
            faults: faults.to_vec(),
            ..Default::default()
        }
    }

    fn schedule(
        &mut self,
        at: i64,
        alert: &Alert,
        action: AlertCommandAction,
    ) -> &mut AlertCommand {
        self.next += 1;
        let cmd = AlertCommand {
            command_id: format!("sim-{:06}", self.next),
            alert_id: alert.alert_id.clone(),
            instrument_serial: alert.instrument_serial.clone(),
            action,
            issued_by: engineer(&alert.instrument_serial),
            issued_at_ms: at,
            snooze_until_ms: None,
            resolution: None,
            assignee: None,
            comment: None,
            alert_sequence: Some(alert.sequence),
        };
        self.pending.entry((at, self.next)).or_insert(cmd)
    }

    /// Takes one alert record the notifier wrote.
    pub fn observe(&mut self, a: &Alert) {
        if a.state == AlertState::RESOLVED {
            self.resolved.insert(a.alert_id.clone());
            return;
        }
        if a.action != AlertAction::OPEN {
            return;
        }
        self.resolved.remove(&a.alert_id);
        // A re-opening is a new episode: what was planned for the last one is dropped.
        self.pending.retain(|_, c| c.alert_id != a.alert_id);
        let t = a.event_time_ms;
        if a.state == AlertState::PREDICTED && a.severity == AnomalySeverity::LOW {
            let snooze = self.schedule(t + 20 * MINUTE_MS, a, AlertCommandAction::SNOOZE);
            snooze.snooze_until_ms = Some(t + 20 * MINUTE_MS + 12 * HOUR_MS);
            snooze.comment = Some("slow drift: look again after the weekend runs".into());
        } else {
            self.schedule(t + 20 * MINUTE_MS, a, AlertCommandAction::ACKNOWLEDGE);
        }
        if a.cohort.is_some() {
            return;
        }
        let who = engineer(&a.instrument_serial);
        self.schedule(t + 25 * MINUTE_MS, a, AlertCommandAction::ASSIGN)
            .assignee = Some(who);
        let fault = self
            .faults
            .iter()
            .find(|f| {
                f.instrument_serial == a.instrument_serial
                    && f.subsystem == a.subsystem
                    && f.start_ms <= t + 24 * HOUR_MS
                    && f.repaired_ms.is_none_or(|r| r >= t)
            })
            .cloned();
        match fault {
            Some(f) => {
                if let Some(repaired) = f.repaired_ms {
                    let resolution = if a.state == AlertState::PREDICTED {
                        Resolution::PART_REPLACED
                    } else {
                        Resolution::REPAIRED
                    };
                    let r = self.schedule(
                        repaired.max(t + 30 * MINUTE_MS),
                        a,
                        AlertCommandAction::RESOLVE,
                    );
                    r.resolution = Some(resolution);
                    r.comment = Some(format!("{} done on site", f.part.label()));
                }
            }
            None => {
                let r = self.schedule(t + 4 * HOUR_MS, a, AlertCommandAction::RESOLVE);
                r.resolution = Some(Resolution::FALSE_ALARM);
                r.comment = Some("checked on site: within spec".into());
            }
        }
    }

    /// The commands due by `now`, in order, leaving out those for alerts resolved meanwhile.
    pub fn due(&mut self, now: i64) -> Vec<AlertCommand> {
        let later = self.pending.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.pending, later);
        due.into_values()
            .filter(|c| !self.resolved.contains(&c.alert_id))
            .collect()
    }
}

/// The engineer covering an instrument (a handle, never a name).
fn engineer(serial: &str) -> String {
    let n = serial
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("fse-{:02}", n % 7 + 1)
}
