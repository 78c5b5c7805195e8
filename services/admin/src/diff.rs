//! `seqmon-admin alert diff --before PREFIX_A --after PREFIX_B`: which alerts a change added,
//! removed or changed, comparing the `alerts` topics of two prefixes (production, `""` or
//! `prod.`, against a replay, `replay.<name>.`; or two replays).
//!
//! Matching: an alert is its instrument (or fleet cohort key), subsystem, metric and opening
//! window (`opened_at_ms`, the event time of the window that opened it), taken from its first
//! record (lowest sequence); so the same detection in both runs matches whatever its generated
//! id. Changed: matched, but its latest record differs in state, severity, suspected part,
//! escalation level, re-open count or resolution, or the transitions it went through differ.
//!
//! Both topics are read whole, `read_committed`, with the shared reader (nothing committed, no
//! group joined). A record that does not decode as an alert is counted and reported, never
//! guessed at. Exit codes: 0 compared (differences or not: read them from the output), 1 a
//! topic could not be read, 2 a bad argument.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::process::ExitCode;

use seqmon_model::civil::iso_time;
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, Alert};
use seqmon_runtime::config::KafkaConnection;

use crate::source::{self, TopicRange};

/// What identifies an alert across two runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertKey {
    pub instrument: String,
    pub subsystem: String,
    pub metric: String,
    pub opened_at_ms: i64,
}

impl std::fmt::Display for AlertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} opened {}",
            clean(&self.instrument),
            self.subsystem,
            clean(&self.metric),
            iso_time(self.opened_at_ms)
        )
    }
}

/// Text from a topic without control characters (no terminal escapes).
fn clean(t: &str) -> String {
    t.chars().filter(|c| !c.is_control()).collect()
}

/// One alert's history in one run: its latest record and its transitions in order.
#[derive(Debug, Clone)]
pub struct History {
    pub latest: Alert,
    pub transitions: Vec<String>,
}

/// A difference between the runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    Added(AlertKey, String),
    Removed(AlertKey, String),
    /// The key and what changed, `field: before -> after` each.
    Changed(AlertKey, Vec<String>),
}

/// Every alert of a run, by key, from its records in any order.
pub fn histories(records: Vec<Alert>) -> BTreeMap<AlertKey, History> {
    let mut by_id: BTreeMap<String, Vec<Alert>> = BTreeMap::new();
    for a in records {
        by_id.entry(a.alert_id.clone()).or_default().push(a);
    }
    let mut out = BTreeMap::new();
    for (_, mut records) in by_id {
        records.sort_by_key(|a| a.sequence);
        let (Some(first), Some(latest)) = (records.first(), records.last()) else {
            continue;
        };
        let key = AlertKey {
            instrument: first.instrument_serial.clone(),
            subsystem: format!("{:?}", first.subsystem),
            metric: first.metric.clone(),
            opened_at_ms: first.opened_at_ms,
        };
        out.insert(
            key,
            History {
                latest: latest.clone(),
                transitions: records
                    .iter()
                    .map(|a| a.transition.as_str().to_string())
                    .collect(),
            },
        );
    }
    out
}

fn headline(h: &History) -> String {
    format!(
        "{} {:?} {}",
        h.latest.state.as_str(),
        h.latest.severity,
        clean(&h.latest.title)
    )
}

/// The differences from `before` to `after`, in key order.
pub fn compare(
    before: &BTreeMap<AlertKey, History>,
    after: &BTreeMap<AlertKey, History>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (k, b) in before {
        let Some(a) = after.get(k) else {
            out.push(Difference::Removed(k.clone(), headline(b)));
            continue;
        };
        let mut changed = Vec::new();
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                changed.push(format!("{name}: {} -> {}", clean(&x), clean(&y)));
            }
        };
        let (x, y) = (&b.latest, &a.latest);
        field("state", x.state.as_str().into(), y.state.as_str().into());
        field(
            "severity",
            format!("{:?}", x.severity),
            format!("{:?}", y.severity),
        );
        field(
            "suspected_part",
            x.suspected_part.clone(),
            y.suspected_part.clone(),
        );
        field(
            "escalation_level",
            x.escalation_level.to_string(),
            y.escalation_level.to_string(),
        );
        field(
            "reopen_count",
            x.reopen_count.to_string(),
            y.reopen_count.to_string(),
        );
        field(
            "resolution",
            format!("{:?}", x.resolution),
            format!("{:?}", y.resolution),
        );
        field(
            "transitions",
            b.transitions.join(","),
            a.transitions.join(","),
        );
        if !changed.is_empty() {
            out.push(Difference::Changed(k.clone(), changed));
        }
    }
    for (k, a) in after {
        if !before.contains_key(k) {
            out.push(Difference::Added(k.clone(), headline(a)));
        }
    }
    out.sort_by(|x, y| key_of(x).cmp(key_of(y)));
    out
}

fn key_of(d: &Difference) -> &AlertKey {
    match d {
        Difference::Added(k, _) | Difference::Removed(k, _) | Difference::Changed(k, _) => k,
    }
}

/// Every alert record on `<prefix>alerts`, and how many records did not decode.
fn read_alerts(kafka: &KafkaConnection, prefix: &str) -> Result<(Vec<Alert>, u64), String> {
    let topic = TopicRole::Alerts.topic(prefix);
    let mut alerts = Vec::new();
    let mut undecodable = 0u64;
    let range = TopicRange {
        topic: topic.clone(),
        partitions: None,
        from: source::From::Beginning,
        until: source::Until::EndAtStart,
        read_uncommitted: false,
        idle_timeout: std::time::Duration::from_secs(30),
    };
    source::read_range(kafka, &range, |r| {
        match r.value.as_deref().map(decode::<Alert>) {
            Some(Ok(a)) => alerts.push(a),
            _ => undecodable += 1,
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    Ok((alerts, undecodable))
}

/// Runs `seqmon-admin alert diff`.
pub fn run(kafka: &KafkaConnection, before: &str, after: &str) -> ExitCode {
    if before == after {
        eprintln!(
            "error: invalid configuration: --after: the same prefix as --before ({before:?})"
        );
        return ExitCode::from(2);
    }
    let mut runs = Vec::new();
    for prefix in [before, after] {
        match read_alerts(kafka, prefix) {
            Ok((alerts, undecodable)) => {
                if undecodable > 0 {
                    eprintln!(
                        "warning: {undecodable} record(s) on {} are not alerts and were not compared",
                        TopicRole::Alerts.topic(prefix)
                    );
                }
                runs.push(histories(alerts));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let differences = compare(&runs[0], &runs[1]);
    let (mut added, mut removed, mut changed) = (0, 0, 0);
    for d in &differences {
        match d {
            Difference::Added(k, h) => {
                added += 1;
                println!("+ {k}  {h}");
            }
            Difference::Removed(k, h) => {
                removed += 1;
                println!("- {k}  {h}");
            }
            Difference::Changed(k, what) => {
                changed += 1;
                println!("~ {k}  {}", what.join("; "));
            }
        }
    }
    let unchanged = runs[0].len() - removed - changed;
    eprintln!(
        "alert diff: {added} added, {removed} removed, {changed} changed, {unchanged} unchanged ({} alerts before on {}, {} after on {})",
        runs[0].len(),
        TopicRole::Alerts.topic(before),
        runs[1].len(),
        TopicRole::Alerts.topic(after)
    );
    ExitCode::SUCCESS
}
