//! Prometheus Alertmanager (v2 API, `POST /api/v2/alerts`): what it should hold, kept in step.
//!
//! Alertmanager identifies an alert by its label set and forgets alerts whose `endsAt` passed
//! (and all of them when it restarts), so delivery is reconciliation, not a queue of events:
//! this module keeps the label set each alert should fire under; every change marks the alert
//! dirty; the dispatcher posts every dirty alert's current form (firing, or resolved with
//! `endsAt` now) until Alertmanager accepts it, and re-posts every firing alert each resend
//! interval with `endsAt` four intervals ahead (as Prometheus does), so an Alertmanager that
//! restarted or missed a post is whole again within one interval and an alert we stopped
//! sending expires by itself. A retried post is the same alert, never a second one.
//!
//! Mapping. Labels: `alertname` (`SeqmonInstrumentAlert`, `SeqmonFleetAlert`), `instrument`,
//! `model`, `site`, `subsystem`, `part`, `severity` (lower case), `alert_id`. Annotations:
//! `summary` (the title), `description` (the evidence in words), the evidence fields one by
//! one (`metric`, `rule`, `observed`, `baseline`, `spec_low`, `spec_high`, `predicted_crossing`,
//! `predicted_earliest`, `predicted_latest`), `state`, `assignee`, `acknowledged_by`,
//! `escalation_level`, `sequence`, and `link` when a console URL is set. PREDICTED, OPEN and
//! ACKNOWLEDGED fire; SNOOZED and RESOLVED do not (a snoozed alert fires again when its snooze
//! ends or it worsens). A change of label set (severity rose) resolves the old set and fires the
//! new one. An alert escalated and still unacknowledged also fires `SeqmonAlertEscalated` (same
//! labels, alertname aside) for paging routes; acknowledging, snoozing or resolving ends it.

use std::collections::BTreeMap;

use seqmon_model::civil::iso_time;
use seqmon_model::{Alert, AlertState};
use serde::Serialize;

/// One alert as Alertmanager's API takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(skip_serializing_if = "Option::is_none", rename = "generatorURL")]
    pub generator_url: Option<String>,
}

/// What one alert id should look like in Alertmanager.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    /// Label set → whether it fires (false: send once as resolved, then drop).
    sets: Vec<(BTreeMap<String, String>, bool)>,
    annotations: BTreeMap<String, String>,
    starts_at_ms: i64,
    generator_url: Option<String>,
    /// Highest sequence applied (older records are ignored).
    sequence: i32,
    /// Rises with every change: a post clears the alert only if nothing changed meanwhile.
    version: u64,
}

/// Alertmanager's desired content and what still has to be posted.
#[derive(Debug, Default)]
pub struct AmState {
    alerts: BTreeMap<String, Desired>,
    /// Alert ids whose current form is not yet accepted.
    dirty: BTreeMap<String, ()>,
    console_url: Option<String>,
    /// Source of versions.
    changes: u64,
}

fn lower(s: impl std::fmt::Debug) -> String {
    format!("{s:?}").to_ascii_lowercase()
}

/// A level for people: three decimals at most, no trailing zeros.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" {
        "0".into()
    } else {
        t.to_string()
    }
}

impl AmState {
    /// `console_url`: base of the link annotation (`<console_url>/alerts/<alert_id>`).
    pub fn new(console_url: Option<String>) -> Self {
        AmState {
            console_url: console_url.map(|u| u.trim_end_matches('/').to_string()),
            ..Default::default()
        }
    }

    fn labels(a: &Alert, site: &str, alertname: &str) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("alertname".into(), alertname.to_string());
        l.insert("instrument".into(), a.instrument_serial.clone());
        l.insert("model".into(), lower(a.instrument_model));
        l.insert("site".into(), site.to_string());
        l.insert("subsystem".into(), a.subsystem.label().to_string());
        l.insert("part".into(), a.suspected_part.clone());
        l.insert("severity".into(), lower(a.severity));
        l.insert("alert_id".into(), a.alert_id.clone());
        // Alertmanager drops labels with empty values; keep the set stable.
        l.retain(|_, v| !v.is_empty());
        l
    }

    fn annotations(&self, a: &Alert) -> BTreeMap<String, String> {
        let mut n = BTreeMap::new();
        n.insert("summary".into(), a.title.clone());
        n.insert("state".into(), a.state.as_str().to_string());
        n.insert("sequence".into(), a.sequence.to_string());
        n.insert("escalation_level".into(), a.escalation_level.to_string());
        if let Some(v) = &a.assignee {
            n.insert("assignee".into(), v.clone());
        }
        if let Some(v) = &a.acknowledged_by {
            n.insert("acknowledged_by".into(), v.clone());
        }
        if let Some(e) = &a.evidence {
            n.insert("metric".into(), e.series.clone());
            n.insert("rule".into(), e.rule.clone());
            n.insert("observed".into(), number(e.observed));
            n.insert("baseline".into(), number(e.baseline));
            let spec = |v: Option<f64>| v.map(number).unwrap_or_default();
            n.insert("spec_low".into(), spec(e.spec_low));
            n.insert("spec_high".into(), spec(e.spec_high));
            let at = |v: Option<i64>| v.map(iso_time).unwrap_or_default();
            n.insert("predicted_crossing".into(), at(e.predicted_limit_ms));
            n.insert(
                "predicted_earliest".into(),
                at(e.predicted_limit_earliest_ms),
            );
            n.insert("predicted_latest".into(), at(e.predicted_limit_latest_ms));
            let recent: Vec<String> = e.recent.iter().map(|p| number(p.level)).collect();
            let mut d = format!(
                "{} at {} against baseline {} (sd {}); rule {}",
                e.series,
                number(e.observed),
                number(e.baseline),
                number(e.baseline_stddev),
                e.rule
            );
            if e.spec_low.is_some() || e.spec_high.is_some() {
                d.push_str(&format!(
                    "; spec {}..{}",
                    e.spec_low.map(number).unwrap_or_else(|| "-".into()),
                    e.spec_high.map(number).unwrap_or_else(|| "-".into())
                ));
            }
            if let Some(t) = e.predicted_limit_ms {
                d.push_str(&format!(
                    "; forecast to leave spec at {} (between {} and {})",
                    iso_time(t),
                    e.predicted_limit_earliest_ms
                        .map(iso_time)
                        .unwrap_or_else(|| "?".into()),
                    e.predicted_limit_latest_ms
                        .map(iso_time)
                        .unwrap_or_else(|| "?".into())
                ));
            }
            if !recent.is_empty() {
                d.push_str(&format!("; recent windows {}", recent.join(", ")));
            }
            n.insert("description".into(), d);
        }
        if let Some(c) = &a.cohort {
            n.insert("cohort".into(), format!("{} {}", c.kind.label(), c.value));
            n.insert("instruments".into(), c.instruments.join(","));
        }
        if let Some(base) = &self.console_url {
            n.insert("link".into(), format!("{base}/alerts/{}", a.alert_id));
        }
        n.retain(|_, v| !v.is_empty());
        n
    }

    /// Applies one alert record (instrument site from the inventory); whether it changed what
    /// Alertmanager should hold. Records older than what was applied for the alert (a
    /// redelivery) change nothing.
    pub fn apply(&mut self, a: &Alert, site: &str) -> bool {
        let fires = matches!(
            a.state,
            AlertState::PREDICTED | AlertState::OPEN | AlertState::ACKNOWLEDGED
        );
        let escalated =
            a.escalation_level > 0 && matches!(a.state, AlertState::PREDICTED | AlertState::OPEN);
        let name = if a.cohort.is_some() {
            "SeqmonFleetAlert"
        } else {
            "SeqmonInstrumentAlert"
        };
        let main = Self::labels(a, site, name);
        let esc = Self::labels(a, site, "SeqmonAlertEscalated");
        let annotations = self.annotations(a);
        let generator_url = self
            .console_url
            .as_ref()
            .map(|b| format!("{b}/alerts/{}", a.alert_id));
        let was = self.alerts.get(&a.alert_id);
        if was.is_some_and(|d| d.sequence >= a.sequence) {
            return false;
        }
        // Everything that fired before and does not now is sent once as resolved; so is a
        // resolution not posted yet (it stays until a post carries it).
        let mut sets: Vec<(BTreeMap<String, String>, bool)> = Vec::new();
        let mut want = vec![(main, fires), (esc, escalated)];
        if let Some(d) = was {
            for (labels, _) in &d.sets {
                if !want.iter().any(|(l, f)| l == labels && *f) {
                    sets.push((labels.clone(), false));
                }
            }
        }
        // A set that never fired need not be resolved.
        want.retain(|(l, f)| *f || was.is_some_and(|d| d.sets.iter().any(|(x, _)| x == l)));
        for w in want {
            if !sets.iter().any(|(l, _)| *l == w.0) {
                sets.push(w);
            }
        }
        let starts_at_ms = match (was, a.transition) {
            (Some(d), t) if t != seqmon_model::AlertTransition::REOPENED => d.starts_at_ms,
            _ => a.event_time_ms,
        };
        let changed = was.is_none_or(|d| d.sets != sets || d.annotations != annotations);
        self.changes += 1;
        self.alerts.insert(
            a.alert_id.clone(),
            Desired {
                sets,
                annotations,
                starts_at_ms,
                generator_url,
                sequence: a.sequence,
                version: self.changes,
            },
        );
        if changed {
            self.dirty.insert(a.alert_id.clone(), ());
        }
        changed
    }

    fn render(d: &Desired, now_ms: i64, ttl_ms: i64) -> Vec<AmAlert> {
        d.sets
            .iter()
            .map(|(labels, firing)| {
                // startsAt must precede endsAt: a resolution "now" for an alert that (by an
                // instrument's clock) started later still ends after it started.
                let starts = d.starts_at_ms.min(now_ms);
                AmAlert {
                    labels: labels.clone(),
                    annotations: d.annotations.clone(),
                    starts_at: iso_millis(starts),
                    ends_at: iso_millis(if *firing {
                        now_ms + ttl_ms
                    } else {
                        now_ms.max(starts + 1)
                    }),
                    generator_url: d.generator_url.clone(),
                }
            })
            .collect()
    }

    /// Dirty alerts' current forms, to post now (about `max` alerts), with the id and version
    /// of each, to mark clean once posted. An alert with nothing to send is in the list with
    /// no form (posting it is a no-op that cleans it).
    pub fn pending(
        &self,
        now_ms: i64,
        ttl_ms: i64,
        max: usize,
    ) -> (Vec<(String, u64)>, Vec<AmAlert>) {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for id in self.dirty.keys() {
            if out.len() >= max.max(1) {
                break;
            }
            match self.alerts.get(id) {
                Some(d) => {
                    out.extend(Self::render(d, now_ms, ttl_ms));
                    ids.push((id.clone(), d.version));
                }
                None => ids.push((id.clone(), 0)),
            }
        }
        (ids, out)
    }

    /// The posted forms were accepted: an alert that did not change since `pending` is clean,
    /// and its sets sent as resolved are dropped; one that changed stays dirty.
    pub fn posted(&mut self, ids: &[(String, u64)]) {
        for (id, version) in ids {
            match self.alerts.get_mut(id) {
                Some(d) if d.version == *version => {
                    self.dirty.remove(id);
                    d.sets.retain(|(_, firing)| *firing);
                    if d.sets.is_empty() {
                        // Keep the sequence so a late redelivery is still recognised as old.
                        d.annotations.clear();
                    }
                }
                Some(_) => {}
                None => {
                    self.dirty.remove(id);
                }
            }
        }
    }

    /// Drops everything (partitions revoked; the state is rebuilt for the new assignment).
    pub fn clear(&mut self) {
        self.alerts.clear();
        self.dirty.clear();
    }

    /// After a restore from the topic: alerts with nothing firing were settled before (their
    /// resolution was posted), so they are clean; the firing ones stay dirty, to be posted now.
    pub fn settle_restored(&mut self) {
        for (id, d) in self.alerts.iter_mut() {
            d.sets.retain(|(_, firing)| *firing);
            if d.sets.is_empty() {
                self.dirty.remove(id);
            }
        }
    }

    /// Every firing alert, for the periodic re-post.
    pub fn firing(&self, now_ms: i64, ttl_ms: i64) -> Vec<AmAlert> {
        self.alerts
            .iter()
            .filter(|(_, d)| d.sets.iter().any(|(_, f)| *f))
            .flat_map(|(_, d)| {
                Self::render(d, now_ms, ttl_ms)
                    .into_iter()
                    .filter(|a| a.ends_at > iso_millis(now_ms))
            })
            .collect()
    }

    /// Alerts not yet accepted by Alertmanager.
    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Alerts firing now.
    pub fn firing_count(&self) -> usize {
        self.alerts
            .values()
            .filter(|d| d.sets.iter().any(|(_, f)| *f))
            .count()
    }

    /// Forgets the alerts resolved longest ago (nothing firing, clean) beyond `keep` of them,
    /// so memory stays bounded (a forgotten alert's late redelivery would be posted once more as
    /// resolved: harmless).
    pub fn prune(&mut self, keep: usize) {
        let mut idle: Vec<(u64, String)> = self
            .alerts
            .iter()
            .filter(|(id, d)| d.sets.is_empty() && !self.dirty.contains_key(*id))
            .map(|(id, d)| (d.version, id.clone()))
            .collect();
        if idle.len() > keep {
            idle.sort();
            for (_, id) in &idle[..idle.len() - keep] {
                self.alerts.remove(id);
            }
        }
    }
}

/// `2026-11-01T12:05:00.123Z`.
pub fn iso_millis(ms: i64) -> String {
    let base = iso_time(ms);
    format!("{}.{:03}Z", base.trim_end_matches('Z'), ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{AlertTransition, AnomalySeverity};

    fn alert(seq: i32, state: AlertState, severity: AnomalySeverity, escalation: i32) -> Alert {
        let mut a = crate::webhook::tests::alert();
        a.sequence = seq;
        a.state = state;
        a.severity = severity;
        a.escalation_level = escalation;
        a.event_time_ms = 1_000 + i64::from(seq);
        a
    }

    fn names(v: &[AmAlert]) -> Vec<(String, String, bool)> {
        v.iter()
            .map(|a| {
                (
                    a.labels["alertname"].clone(),
                    a.labels["severity"].clone(),
                    a.ends_at > iso_millis(5_000),
                )
            })
            .collect()
    }

    #[test]
    fn reconciles_firing_resolved_relabelled_and_escalated() {
        let mut s = AmState::new(Some("https://console.example/".into()));
        s.apply(
            &alert(1, AlertState::OPEN, AnomalySeverity::MEDIUM, 0),
            "emea-1",
        );
        let (ids, posts) = s.pending(5_000, 240_000, 100);
        assert_eq!(
            names(&posts),
            vec![("SeqmonInstrumentAlert".into(), "medium".into(), true)]
        );
        let p = &posts[0];
        assert_eq!(p.labels["site"], "emea-1");
        assert_eq!(p.labels["subsystem"], "fluidics");
        assert_eq!(p.labels["part"], "fluidics pump");
        assert_eq!(
            p.annotations["link"],
            "https://console.example/alerts/A00123:fluidics:1000"
        );
        assert_eq!(p.starts_at, "1970-01-01T00:00:01.001Z");
        s.posted(&ids);
        assert_eq!(s.dirty_count(), 0);
        // Worse: the old label set resolves, the new one fires; escalated too.
        s.apply(
            &alert(2, AlertState::OPEN, AnomalySeverity::HIGH, 1),
            "emea-1",
        );
        let (ids, posts) = s.pending(5_000, 240_000, 100);
        let mut got = names(&posts);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("SeqmonAlertEscalated".into(), "high".into(), true),
                ("SeqmonInstrumentAlert".into(), "high".into(), true),
                ("SeqmonInstrumentAlert".into(), "medium".into(), false),
            ]
        );
        assert!(posts
            .iter()
            .all(|p| p.starts_at == "1970-01-01T00:00:01.001Z"));
        // Not accepted yet: the same forms again next time (a retry is the same alert).
        assert_eq!(s.pending(5_000, 240_000, 100).1.len(), 3);
        s.posted(&ids);
        assert_eq!(s.firing(5_000, 240_000).len(), 2);
        // A redelivered older record changes nothing.
        assert!(!s.apply(
            &alert(1, AlertState::OPEN, AnomalySeverity::MEDIUM, 0),
            "emea-1",
        ));
        assert_eq!(s.dirty_count(), 0);
        // Acknowledged: still fires, the escalation ends.
        s.apply(
            &alert(3, AlertState::ACKNOWLEDGED, AnomalySeverity::HIGH, 1),
            "emea-1",
        );
        let (ids, posts) = s.pending(5_000, 240_000, 100);
        let mut got = names(&posts);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("SeqmonAlertEscalated".into(), "high".into(), false),
                ("SeqmonInstrumentAlert".into(), "high".into(), true),
            ]
        );
        assert_eq!(posts[0].annotations["state"], "ACKNOWLEDGED");
        s.posted(&ids);
        // Resolved: sent once as resolved, then nothing fires.
        let mut r = alert(4, AlertState::RESOLVED, AnomalySeverity::HIGH, 0);
        r.transition = AlertTransition::RESOLVED;
        s.apply(&r, "emea-1");
        let (ids, posts) = s.pending(5_000, 240_000, 100);
        assert_eq!(
            names(&posts),
            vec![("SeqmonInstrumentAlert".into(), "high".into(), false)]
        );
        s.posted(&ids);
        assert!(s.firing(5_000, 240_000).is_empty());
        assert_eq!(s.firing_count(), 0);
        s.prune(0);
        assert!(s.alerts.is_empty());
    }

    #[test]
    fn a_change_during_a_post_and_an_unsent_resolution_are_not_lost() {
        let mut s = AmState::new(None);
        s.apply(&alert(1, AlertState::OPEN, AnomalySeverity::MEDIUM, 0), "x");
        let (ids, _) = s.pending(5_000, 1_000, 10);
        s.posted(&ids);
        // Worse (the medium set must be resolved): a post starts...
        s.apply(&alert(2, AlertState::OPEN, AnomalySeverity::HIGH, 0), "x");
        let (ids, posts) = s.pending(5_000, 1_000, 10);
        assert_eq!(posts.len(), 2);
        // ...and while it is in flight the alert escalates: its success must not clean it.
        s.apply(&alert(3, AlertState::OPEN, AnomalySeverity::HIGH, 1), "x");
        s.posted(&ids);
        assert_eq!(s.dirty_count(), 1);
        let (ids, posts) = s.pending(5_000, 1_000, 10);
        let mut got = names(&posts);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("SeqmonAlertEscalated".into(), "high".into(), true),
                ("SeqmonInstrumentAlert".into(), "high".into(), true),
                ("SeqmonInstrumentAlert".into(), "medium".into(), false),
            ],
            "the medium resolution is still carried"
        );
        s.posted(&ids);
        // An assignment changes only the annotations: still a change to post.
        let mut assigned = alert(4, AlertState::OPEN, AnomalySeverity::HIGH, 1);
        assigned.assignee = Some("fse-1".into());
        assert!(s.apply(&assigned, "x"));
    }

    #[test]
    fn a_snoozed_alert_stops_firing_and_a_reopened_one_starts_anew() {
        let mut s = AmState::new(None);
        s.apply(&alert(1, AlertState::OPEN, AnomalySeverity::LOW, 0), "x");
        let (ids, _) = s.pending(5_000, 1_000, 10);
        s.posted(&ids);
        s.apply(&alert(2, AlertState::SNOOZED, AnomalySeverity::LOW, 0), "x");
        let (ids, posts) = s.pending(5_000, 1_000, 10);
        assert_eq!(posts.len(), 1);
        assert_eq!(posts[0].ends_at, iso_millis(5_000), "resolved now");
        s.posted(&ids);
        let mut reopened = alert(3, AlertState::OPEN, AnomalySeverity::LOW, 0);
        reopened.transition = AlertTransition::REOPENED;
        reopened.event_time_ms = 4_000;
        s.apply(&reopened, "x");
        let (_, posts) = s.pending(5_000, 1_000, 10);
        assert_eq!(posts[0].starts_at, iso_millis(4_000));
        let json = serde_json::to_value(&posts[0]).unwrap();
        assert!(json.get("startsAt").is_some() && json.get("endsAt").is_some());
        assert!(json.get("generatorURL").is_none());
    }
}
