//! `seqmon-admin alert`: the service team's console. `list` shows where each alert stands (the
//! latest record per alert on `alerts`, read `read_committed`); `ack`, `snooze`, `resolve` and
//! `assign` write one command to `alerts.commands`, keyed like the alert so it reaches the
//! notifier instance holding it, then wait (up to `--wait-secs`) for the notifier's answer: the
//! transition on `alerts` that names the command, or the dead letter that refused it.
//!
//! Delivery: the command is produced by an idempotent producer and acknowledged by every in-sync
//! replica; the notifier applies it exactly once. A command whose answer does not come within the
//! wait is not lost: it stays on the topic and is applied when the notifier reaches it.
//!
//! Exit codes: 0 applied (or sent, with `--wait-secs 0`), 1 an error (Kafka unreachable, a
//! topic missing), 2 a bad argument (named), 3 no answer within the wait, 4 refused by the
//! notifier (the dead letter's reason is printed).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use seqmon_model::topics::TopicRole;
use seqmon_model::{
    alert_key, decode, encode, Alert, AlertCommand, AlertCommandAction, AlertState, DeadLetter,
    Resolution,
};
use seqmon_runtime::config::KafkaConnection;

/// `seqmon-admin alert ...`.
#[derive(Args)]
pub struct AlertArgs {
    #[command(flatten)]
    kafka: Box<KafkaConnection>,
    #[command(subcommand)]
    command: AlertCommandCli,
}

/// Who issues a command and how long to wait for its answer.
#[derive(Args, Clone)]
struct Issuer {
    /// The alert id (as `alert list` shows it).
    alert_id: String,
    /// Who you are: your handle in the service team's directory.
    #[arg(long = "by", env = "SEQMON_OPERATOR")]
    by: String,
    /// A comment for the team (at most 1000 characters).
    #[arg(long)]
    comment: Option<String>,
    /// Seconds to wait for the notifier's answer (0: do not wait).
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// The alert record you act on (its `#sequence`, as `alert list`, webhooks and Alertmanager
    /// show it): if the alert has re-opened since, the command is refused as stale instead of
    /// acting on the new episode.
    #[arg(long)]
    seen_sequence: Option<i32>,
}

#[derive(Subcommand)]
enum AlertCommandCli {
    /// Alerts and where they stand (latest record of each on `alerts`).
    List {
        /// Only alerts in this state (predicted, open, acknowledged, snoozed, resolved); by
        /// default every state but resolved.
        #[arg(long)]
        state: Option<String>,
        /// Only this instrument's alerts (fleet alerts listing it included).
        #[arg(long)]
        instrument: Option<String>,
    },
    /// Alerts added, removed or changed between two topic prefixes (e.g. production and a
    /// replay after a detector change), matched by instrument, subsystem, metric and opening
    /// window.
    Diff(crate::diff::DiffArgs),
    /// Acknowledge: someone is on it (escalation stops).
    Ack(Issuer),
    /// Snooze until a time: `--until 2026-12-01T08:00:00Z` or `--until +12h` (m, h, d).
    Snooze {
        #[command(flatten)]
        issuer: Issuer,
        #[arg(long)]
        until: String,
    },
    /// Resolve with a resolution: repaired, part_replaced, false_alarm, not_reproducible.
    Resolve {
        #[command(flatten)]
        issuer: Issuer,
        #[arg(long)]
        resolution: Resolution,
    },
    /// Assign to someone (a handle).
    Assign {
        #[command(flatten)]
        issuer: Issuer,
        #[arg(long = "to")]
        to: String,
    },
}

use crate::source::now_ms;

/// `+90m`, `+12h`, `+2d`, or `YYYY-MM-DDTHH:MM[:SS]Z`, as ms since the epoch.
fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    if let Some(rel) = text.strip_prefix('+') {
        let unit = match rel.chars().last() {
            Some('m') => 60_000,
            Some('h') => 3_600_000,
            Some('d') => 86_400_000,
            _ => return Err(format!("{text:?}: expected +<number><m|h|d>")),
        };
        let n: i64 = rel[..rel.len() - 1]
            .parse()
            .map_err(|_| format!("{text:?}: expected +<number><m|h|d>"))?;
        return n
            .checked_mul(unit)
            .and_then(|d| now.checked_add(d))
            .filter(|_| n > 0)
            .ok_or_else(|| format!("{text:?}: out of range"));
    }
    crate::source::parse_utc(text)
        .ok_or_else(|| format!("{text:?}: expected YYYY-MM-DDTHH:MM[:SS]Z or +<n><m|h|d>"))
}

/// A random (version 4) UUID.
fn uuid_v4() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness for a command id: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Runs `seqmon-admin alert ...`.
pub fn run(args: AlertArgs) -> ExitCode {
    let AlertArgs { mut kafka, command } = args;
    if let Err(e) = kafka.validate().and_then(|()| kafka.load_files()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = seqmon_runtime::kafka::preflight(&kafka, kafka.connect_timeout()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let now = now_ms();
    let plain = |v: &str| !v.chars().any(char::is_control);
    let (issuer, action) = match command {
        AlertCommandCli::List { state, instrument } => {
            return list(&kafka, state.as_deref(), instrument.as_deref())
        }
        AlertCommandCli::Diff(args) => return crate::diff::run(&kafka, &args),
        AlertCommandCli::Ack(i) => (i, Action::Ack),
        AlertCommandCli::Snooze { issuer, until } => match parse_time(&until, now) {
            Ok(t) => (issuer, Action::Snooze(t)),
            Err(e) => {
                eprintln!("error: invalid configuration: --until: {e}");
                return ExitCode::from(2);
            }
        },
        AlertCommandCli::Resolve { issuer, resolution } => (issuer, Action::Resolve(resolution)),
        AlertCommandCli::Assign { issuer, to } => {
            if !plain(&to) {
                eprintln!("error: invalid configuration: --to: control characters");
                return ExitCode::from(2);
            }
            (issuer, Action::Assign(to))
        }
    };
    if !plain(&issuer.by) {
        eprintln!("error: invalid configuration: --by / SEQMON_OPERATOR: control characters");
        return ExitCode::from(2);
    }
    if issuer.comment.as_deref().is_some_and(|c| {
        c.chars()
            .any(|ch| ch.is_control() && ch != '\n' && ch != '\t')
    }) {
        eprintln!("error: invalid configuration: --comment: control characters");
        return ExitCode::from(2);
    }
    match send(&kafka, &issuer, action, now) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Action {
    Ack,
    Snooze(i64),
    Resolve(Resolution),
    Assign(String),
}

/// The command for `action`, as the console writes it.
fn command(issuer: &Issuer, action: Action, now: i64, id: String) -> Result<AlertCommand, String> {
    let key = alert_key(&issuer.alert_id).ok_or_else(|| {
        format!(
            "{:?} is not an alert id (<instrument>:<subsystem>:<opened ms>)",
            issuer.alert_id
        )
    })?;
    let mut c = AlertCommand {
        command_id: id,
        alert_id: issuer.alert_id.clone(),
        instrument_serial: key.to_string(),
        action: AlertCommandAction::ACKNOWLEDGE,
        issued_by: issuer.by.clone(),
        issued_at_ms: now,
        snooze_until_ms: None,
        resolution: None,
        assignee: None,
        comment: issuer.comment.clone(),
        alert_sequence: issuer.seen_sequence,
    };
    match action {
        Action::Ack => {}
        Action::Snooze(t) => {
            c.action = AlertCommandAction::SNOOZE;
            c.snooze_until_ms = Some(t);
        }
        Action::Resolve(r) => {
            c.action = AlertCommandAction::RESOLVE;
            c.resolution = Some(r);
        }
        Action::Assign(to) => {
            c.action = AlertCommandAction::ASSIGN;
            c.assignee = Some(to);
        }
    }
    Ok(c)
}

/// Every partition of `topics` positioned at its end, so only what comes after is read.
fn at_the_end(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<TopicPartitionList, String> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), timeout)
            .map_err(|e| format!("metadata of {t}: {e}"))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(t, p.id(), timeout)
                    .map_err(|e| format!("offsets of {t}: {e}"))?;
                tpl.add_partition_offset(t, p.id(), Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(tpl)
}

fn send(
    kafka: &KafkaConnection,
    issuer: &Issuer,
    action: Action,
    now: i64,
) -> Result<ExitCode, String> {
    let cmd = command(issuer, action, now, uuid_v4()?)?;
    let timeout = kafka.connect_timeout();
    let commands = kafka.topic(TopicRole::AlertCommands);
    let alerts = kafka.topic(TopicRole::Alerts);
    let dead = kafka.topic(TopicRole::DeadLetters);
    // Read positions before the command goes out, so its answer cannot be missed.
    let watcher: Option<BaseConsumer> = if issuer.wait_secs > 0 {
        let c: BaseConsumer = kafka
            .client_config()
            .set("group.id", "seqmon-admin-alert")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| format!("cannot create consumer: {e}"))?;
        let tpl = at_the_end(&c, &[alerts.clone(), dead.clone()], timeout)?;
        c.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        Some(c)
    } else {
        None
    };
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .producer_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|e| format!("cannot create producer: {e}"))?;
    let bytes = encode(&cmd).map_err(|e| e.to_string())?;
    producer
        .send(
            BaseRecord::to(&commands)
                .key(cmd.instrument_serial.as_bytes())
                .payload(&bytes)
                .timestamp(now),
        )
        .map_err(|(e, _)| format!("cannot send the command: {e}"))?;
    producer
        .flush(timeout)
        .map_err(|e| format!("the command was not acknowledged by {commands}: {e}"))?;
    println!(
        "sent {:?} {} on {} (command {})",
        cmd.action,
        match (&cmd.resolution, &cmd.assignee, cmd.snooze_until_ms) {
            (Some(r), ..) => r.as_str().to_ascii_lowercase(),
            (_, Some(a), _) => a.clone(),
            (.., Some(t)) => seqmon_model::civil::iso_time(t),
            _ => String::new(),
        },
        cmd.alert_id,
        cmd.command_id
    );
    let Some(watcher) = watcher else {
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs(issuer.wait_secs);
    let mut reported = false;
    while Instant::now() < deadline {
        let m = match watcher.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                if !reported {
                    eprintln!(
                        "warning: reading the answer: {e} (is Read on {alerts} and {dead} granted?)"
                    );
                    reported = true;
                }
                continue;
            }
        };
        let payload = m.payload().unwrap_or_default();
        if m.topic() == alerts {
            if let Ok(a) = decode::<Alert>(payload) {
                if a.command_id.as_deref() == Some(cmd.command_id.as_str()) {
                    println!("applied: {} #{} {}", a.state.as_str(), a.sequence, a.title);
                    return Ok(ExitCode::SUCCESS);
                }
            }
        } else if let Ok(d) = decode::<DeadLetter>(payload) {
            if d.original_bytes == bytes {
                println!("refused: {} — {}", d.reason.code(), d.detail);
                return Ok(ExitCode::from(4));
            }
        }
    }
    eprintln!(
        "no answer within {} s: the command is on {commands} and will be applied when the notifier reaches it",
        issuer.wait_secs
    );
    Ok(ExitCode::from(3))
}

fn list(kafka: &KafkaConnection, state: Option<&str>, instrument: Option<&str>) -> ExitCode {
    let wanted: Option<AlertState> = match state {
        None => None,
        Some(s) => match AlertState::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(s))
        {
            Some(x) => Some(x),
            None => {
                eprintln!("error: invalid configuration: --state: {s:?} is none of predicted, open, acknowledged, snoozed, resolved");
                return ExitCode::from(2);
            }
        },
    };
    let alerts = kafka.topic(TopicRole::Alerts);
    let latest = match read_latest(kafka, &alerts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0;
    // Text from the topic is printed without control characters (no terminal escapes).
    let clean = |t: &str| t.chars().filter(|c| !c.is_control()).collect::<String>();
    for a in latest.values() {
        let state_ok = match wanted {
            Some(w) => a.state == w,
            None => a.state != AlertState::RESOLVED,
        };
        if !state_ok || instrument.is_some_and(|i| !a.covers(i)) {
            continue;
        }
        shown += 1;
        println!(
            "{:<44} #{:<4} {:<12} {:<8} {:<10} {}",
            clean(&a.alert_id),
            a.sequence,
            a.state.as_str(),
            format!("{:?}", a.severity),
            clean(a.assignee.as_deref().unwrap_or("-")),
            clean(&a.title)
        );
    }
    eprintln!("{shown} alert(s)");
    ExitCode::SUCCESS
}

/// The latest record of every alert on the topic, read to its end.
fn read_latest(kafka: &KafkaConnection, topic: &str) -> Result<BTreeMap<String, Alert>, String> {
    let timeout = kafka.connect_timeout();
    let c: BaseConsumer = kafka
        .client_config()
        .set("group.id", "seqmon-admin-alert")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("cannot create consumer: {e}"))?;
    let end = at_the_end(&c, &[topic.to_string()], timeout)?;
    let mut start = TopicPartitionList::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    for e in end.elements() {
        if let Offset::Offset(high) = e.offset() {
            let (low, _) = c
                .fetch_watermarks(topic, e.partition(), timeout)
                .map_err(|e| e.to_string())?;
            if high > low {
                remaining.insert(e.partition(), high);
            }
            start
                .add_partition_offset(topic, e.partition(), Offset::Offset(low))
                .map_err(|e| e.to_string())?;
        }
    }
    c.assign(&start).map_err(|e| format!("assign: {e}"))?;
    let mut latest: BTreeMap<String, Alert> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() && Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if let Ok(a) = decode::<Alert>(m.payload().unwrap_or_default()) {
                    let newer = latest
                        .get(&a.alert_id)
                        .is_none_or(|b| a.sequence >= b.sequence);
                    if newer {
                        latest.insert(a.alert_id.clone(), a);
                    }
                }
                // Transaction markers take offsets too: done once the next offset reaches the end.
                if remaining
                    .get(&m.partition())
                    .is_some_and(|h| m.offset() + 1 >= *h)
                {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {
                // Nothing more to read: the rest of a partition was transaction markers.
                for (p, high) in remaining.clone() {
                    if let Ok(pos) = c.position() {
                        if let Some(Offset::Offset(o)) =
                            pos.find_partition(topic, p).map(|e| e.offset())
                        {
                            if o >= high {
                                remaining.remove(&p);
                            }
                        }
                    }
                }
            }
        }
    }
    if !remaining.is_empty() {
        return Err(format!(
            "read only part of {topic} within 60 s ({} partition(s) not to their end): not showing a partial list",
            remaining.len()
        ));
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("+90m", 0), Ok(90 * 60_000));
        assert_eq!(parse_time("+2d", 5), Ok(5 + 2 * 86_400_000));
        assert_eq!(parse_time("2026-11-01T00:00:00Z", 0), Ok(1_793_491_200_000));
        assert_eq!(parse_time("2026-11-01T01:30Z", 0), Ok(1_793_496_600_000));
        for bad in [
            "+5y",
            "tomorrow",
            "2026-13-01T00:00Z",
            "2026-11-01 00:00Z",
            "+h",
            "+5é",
            "+99999999999999999d",
            "+0h",
            "+-3h",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_are_keyed_like_their_alert() {
        let issuer = Issuer {
            alert_id: "reagent_kit_lot:SBS-1:chemistry:42".into(),
            by: "fse-1".into(),
            comment: None,
            wait_secs: 0,
            seen_sequence: Some(3),
        };
        let c = command(
            &issuer,
            Action::Resolve(Resolution::FALSE_ALARM),
            7,
            "id".into(),
        )
        .unwrap();
        assert_eq!(c.instrument_serial, "reagent_kit_lot:SBS-1");
        assert_eq!(c.action, AlertCommandAction::RESOLVE);
        assert_eq!(c.alert_sequence, Some(3));
        let bad = Issuer {
            alert_id: "nonsense".into(),
            ..issuer
        };
        assert!(command(&bad, Action::Ack, 7, "id".into()).is_err());
        let id = uuid_v4().unwrap();
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
    }
}
