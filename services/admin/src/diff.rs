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
//! guessed at. `--from-time`/`--until-time` keep only alerts opened (`opened_at_ms`) in that
//! range on both sides, so a one-day replay compares with that day of production's year.
//!
//! A `replay.` prefix whose `replay.<name>.manifest` holds no completion marker (the replay was
//! killed, or is still running) is compared, with a warning on stderr: its alerts may be partial.
//!
//! Exit codes: 0 compared (with `--exit-code`: and no differences), 1 differences with
//! `--exit-code` (as `git diff`), or a topic could not be read, 2 a bad argument (a prefix
//! other than `""` that does not end with `.`, a range whose end is not after its start).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::process::ExitCode;

use seqmon_model::civil::iso_time;
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, Alert};
use seqmon_runtime::config::KafkaConnection;

use crate::source::{self, TopicRange};

/// `seqmon-admin alert diff ...`.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// Prefix of the run before the change (`""` for unprefixed production topics).
    #[arg(long)]
    pub before: String,
    /// Prefix of the run after it, e.g. `replay.detector-v2.`.
    #[arg(long)]
    pub after: String,
    /// Only alerts opened at or after this time (`opened_at_ms`): `2026-11-01`, ms, `-1d`.
    #[arg(long, allow_hyphen_values = true)]
    pub from_time: Option<String>,
    /// Only alerts opened before this time.
    #[arg(long, allow_hyphen_values = true)]
    pub until_time: Option<String>,
    /// Exit 1 when there are differences (as `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
}

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

/// Whether a replay prefix has its completion marker (a record on `<prefix>manifest`).
fn completed(kafka: &KafkaConnection, prefix: &str) -> bool {
    let range = TopicRange {
        topic: crate::replay::manifest_topic(prefix),
        partitions: None,
        from: source::From::Beginning,
        until: source::Until::EndAtStart,
        read_uncommitted: false,
        idle_timeout: std::time::Duration::from_secs(30),
    };
    let mut found = false;
    let read = source::read_range(kafka, &range, |r| {
        found |= r.value.is_some();
        ControlFlow::Break(())
    });
    read.is_ok() && found
}

/// Runs `seqmon-admin alert diff`.
pub fn run(kafka: &KafkaConnection, args: &DiffArgs) -> ExitCode {
    let (before, after) = (args.before.as_str(), args.after.as_str());
    if before == after {
        eprintln!(
            "error: invalid configuration: --after: the same prefix as --before ({before:?})"
        );
        return ExitCode::from(2);
    }
    for (flag, prefix) in [("--before", before), ("--after", after)] {
        if !prefix.is_empty() && !prefix.ends_with('.') {
            eprintln!("error: invalid configuration: {flag}: {prefix:?} is a prefix and must end with '.' (e.g. {prefix}.)");
            return ExitCode::from(2);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut bounds = [None, None];
    for (i, (flag, value)) in [
        ("--from-time", &args.from_time),
        ("--until-time", &args.until_time),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(v) = value {
            match source::parse_time_arg(v, now) {
                Ok(t) => bounds[i] = Some(t),
                Err(e) => {
                    eprintln!("error: invalid configuration: {flag}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let [from, until] = bounds;
    if let (Some(f), Some(u)) = (from, until) {
        if f >= u {
            eprintln!("error: invalid configuration: --until-time: is not after --from-time");
            return ExitCode::from(2);
        }
    }
    for prefix in [before, after] {
        if prefix.starts_with("replay.") && !completed(kafka, prefix) {
            eprintln!(
                "warning: {} holds no completion marker: the replay {prefix} was killed or is still running, its alerts may be partial",
                crate::replay::manifest_topic(prefix)
            );
        }
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
                let mut h = histories(alerts);
                h.retain(|k, _| {
                    from.is_none_or(|f| k.opened_at_ms >= f)
                        && until.is_none_or(|u| k.opened_at_ms < u)
                });
                runs.push(h);
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
    if args.exit_code && !differences.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
