//! Reading a range of a topic, the way every data-engineering command (`tail`, `export`,
//! `replay`) does: chosen partitions, from the beginning, the end, an offset or a time, until
//! the end offsets seen when the read began, a time, an offset, or for ever (`--follow`).
//!
//! Guarantees: `read_committed` unless asked otherwise, so aborted transactions never show;
//! records of one partition arrive in offset order; a bounded read ends exactly at its bound,
//! transaction markers included (a partition whose last offsets are markers still ends), and
//! reports per partition the first and next offset it read. Nothing is committed: the reader
//! uses a throw-away group id and `assign`, so it never joins or moves a production group.
//!
//! Failure: a topic that does not exist, a partition it does not have, or a broker that cannot
//! be reached within the connection timeout is a [`SourceError`] naming it; a bounded read
//! that makes no progress for `idle_timeout` stops with [`SourceError::Stalled`] rather than
//! hang (a partition whose last transaction is still open cannot be read past under
//! `read_committed`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use seqmon_model::topics::{TopicRole, CATALOGUE};
use seqmon_runtime::config::KafkaConnection;

/// Why a range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The Kafka client could not be created (a bad setting).
    #[error("cannot create a Kafka consumer: {0}")]
    Client(String),
    /// The topic is not on the cluster.
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    /// A partition asked for is not one of the topic's.
    #[error("topic {topic} has no partition {partition} (it has {count})")]
    NoSuchPartition {
        topic: String,
        partition: i32,
        count: usize,
    },
    /// The cluster did not answer (metadata, offsets, or a fetch).
    #[error("reading {topic}: {message}")]
    Kafka { topic: String, message: String },
    /// A bounded read made no progress for the idle timeout.
    #[error("reading {topic}: no progress for {secs} s with {partitions} partition(s) short of their end (an open transaction?)")]
    Stalled {
        topic: String,
        secs: u64,
        partitions: usize,
    },
}

/// Where a read starts on each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The oldest retained offset.
    Beginning,
    /// The end: only records written after the read began (with [`Until::Follow`]).
    End,
    /// This offset on every partition read (clamped to what is retained).
    Offset(i64),
    /// The first record whose Kafka timestamp is at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// Where a read stops on each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The end offsets (last stable offsets under read_committed) seen when the read began.
    EndAtStart,
    /// Before the first record whose Kafka timestamp is at or after this time; at the latest
    /// at the end offsets seen when the read began.
    Timestamp(i64),
    /// Before this offset (exclusive); at the latest at the end seen when the read began.
    Offset(i64),
    /// Never: wait for new records until the callback breaks or the process is stopped.
    Follow,
}

/// A range of one topic.
#[derive(Debug, Clone)]
pub struct TopicRange {
    /// The topic's full name (prefix included).
    pub topic: String,
    /// Partitions to read; `None` for all of them.
    pub partitions: Option<Vec<i32>>,
    pub from: From,
    pub until: Until,
    /// Read records of open and aborted transactions too (debugging a stuck producer).
    pub read_uncommitted: bool,
    /// How long a bounded read may go without a record or a position change before it
    /// stops with [`SourceError::Stalled`].
    pub idle_timeout: Duration,
}

/// One record as it is on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Whether the timestamp is the broker's (LogAppendTime) rather than the producer's.
    pub log_append_time: bool,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawRecord {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// What a read covered, per partition: the first offset delivered and the next offset after
/// the last one delivered.
#[derive(Debug, Default, Clone)]
pub struct ReadSummary {
    pub records: u64,
    pub per_partition: BTreeMap<i32, (i64, i64)>,
    /// Whether the callback stopped the read before its bound.
    pub stopped_early: bool,
}

/// The catalogue role of a topic name under `prefix`, if it is one of ours.
pub fn role_of(topic: &str, prefix: &str) -> Option<TopicRole> {
    let name = topic.strip_prefix(prefix)?;
    CATALOGUE.iter().find(|t| t.name == name).map(|t| t.role)
}

/// A topic given on the command line: a catalogue name (`features`) gets the connection's
/// prefix, anything else is taken as the full name.
pub fn resolve_topic(kafka: &KafkaConnection, given: &str) -> String {
    match CATALOGUE.iter().find(|t| t.name == given) {
        Some(t) => kafka.topic(t.role),
        None => given.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM[:SS]Z` or `YYYY-MM-DD` (midnight), UTC, as ms since the epoch.
pub fn parse_utc(text: &str) -> Option<i64> {
    let (date, clock) = match text.strip_suffix('Z') {
        Some(t) => t.split_once('T')?,
        None if !text.contains('T') => (text, "00:00"),
        None => return None,
    };
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let c: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || !(2..=3).contains(&c.len()) {
        return None;
    }
    let (y, mo, day) = (d[0], d[1], d[2]);
    let (h, mi, s) = (c[0], c[1], c.get(2).copied().unwrap_or(0));
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=month_days).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..60).contains(&s)
    {
        return None;
    }
    let days = seqmon_model::civil::days_from_civil(y, mo, day);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `--from-time` and `--until-time` of a command, parsed against one `now`; the error names
/// the option.
pub fn time_bounds(
    from: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), String> {
    let now = now_ms();
    let parse = |name: &str, v: Option<&str>| {
        v.map(|t| parse_time_arg(t, now).map_err(|e| format!("--{name}: {e}")))
            .transpose()
    };
    Ok((parse("from-time", from)?, parse("until-time", until)?))
}

/// A time on the command line: `YYYY-MM-DDTHH:MM[:SS]Z`, `YYYY-MM-DD` (UTC midnight), ms since
/// the epoch (13 digits or more), or a time ago: `-90m`, `-12h`, `-7d`.
pub fn parse_time_arg(text: &str, now_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!("{text:?}: expected YYYY-MM-DDTHH:MM[:SS]Z, YYYY-MM-DD, ms since the epoch or -<n><m|h|d>")
    };
    if let Some(ago) = text.strip_prefix('-') {
        let unit = match ago.chars().last() {
            Some('m') => 60_000,
            Some('h') => 3_600_000,
            Some('d') => 86_400_000,
            _ => return Err(bad()),
        };
        let n: i64 = ago[..ago.len() - 1].parse().map_err(|_| bad())?;
        return n
            .checked_mul(unit)
            .and_then(|d| now_ms.checked_sub(d))
            .filter(|_| n > 0)
            .ok_or_else(bad);
    }
    if text.len() >= 13 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    parse_utc(text).ok_or_else(bad)
}

/// Errors after which reading cannot go on: the topic or partition is gone, or access is
/// refused. Everything else (a broker restart, a leader move) librdkafka retries.
fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::OffsetOutOfRange
                | C::Fatal
        )
    )
}

/// The first and end offsets of `partitions` of `topic` (all of them when `None`). The end is
/// the last stable offset under read_committed (what a committed reader can reach), else the
/// high watermark.
pub fn end_offsets(
    kafka: &KafkaConnection,
    topic: &str,
    partitions: Option<&[i32]>,
    read_uncommitted: bool,
) -> Result<BTreeMap<i32, (i64, i64)>, SourceError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set(
            "isolation.level",
            if read_uncommitted {
                "read_uncommitted"
            } else {
                "read_committed"
            },
        )
        .create()
        .map_err(|e| SourceError::Client(e.to_string()))?;
    partition_offsets(&consumer, kafka, topic, partitions)
}

fn partition_offsets(
    consumer: &BaseConsumer,
    kafka: &KafkaConnection,
    topic: &str,
    partitions: Option<&[i32]>,
) -> Result<BTreeMap<i32, (i64, i64)>, SourceError> {
    let kafka_err = |e: rdkafka::error::KafkaError| SourceError::Kafka {
        topic: topic.to_string(),
        message: e.to_string(),
    };
    let timeout = kafka.connect_timeout();
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_err)?;
    let all: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if all.is_empty() {
        return Err(SourceError::NoSuchTopic(topic.to_string()));
    }
    let chosen = partitions.map_or_else(|| all.clone(), <[i32]>::to_vec);
    let mut out = BTreeMap::new();
    for p in chosen {
        if !all.contains(&p) {
            return Err(SourceError::NoSuchPartition {
                topic: topic.to_string(),
                partition: p,
                count: all.len(),
            });
        }
        out.insert(
            p,
            consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(kafka_err)?,
        );
    }
    Ok(out)
}

/// Reads `range`, handing every record to `on_record` in offset order per partition
/// (partitions interleave as the broker delivers them). `on_record` may stop the read.
pub fn read_range(
    kafka: &KafkaConnection,
    range: &TopicRange,
    on_record: impl FnMut(RawRecord) -> ControlFlow<()>,
) -> Result<ReadSummary, SourceError> {
    read_ranges(kafka, std::slice::from_ref(range), on_record)
}

/// Reads several ranges of one topic, over disjoint partitions, with one consumer and at once
/// (`tail --last 5 --follow`: each partition from its own offset, all followed together).
pub fn read_ranges(
    kafka: &KafkaConnection,
    ranges: &[TopicRange],
    mut on_record: impl FnMut(RawRecord) -> ControlFlow<()>,
) -> Result<ReadSummary, SourceError> {
    let Some(first) = ranges.first() else {
        return Ok(ReadSummary::default());
    };
    let topic = first.topic.as_str();
    if ranges
        .iter()
        .any(|r| r.topic != first.topic || r.read_uncommitted != first.read_uncommitted)
    {
        return Err(SourceError::Client(
            "ranges read together must share their topic and isolation".into(),
        ));
    }
    let kafka_err = |e: rdkafka::error::KafkaError| SourceError::Kafka {
        topic: topic.to_string(),
        message: e.to_string(),
    };
    let timeout = kafka.connect_timeout();
    let isolation = if first.read_uncommitted {
        "read_uncommitted"
    } else {
        "read_committed"
    };
    let consumer: BaseConsumer = kafka
        .client_config()
        .set(
            "group.id",
            format!("seqmon-admin-read-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", isolation)
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| SourceError::Client(e.to_string()))?;

    // Start offset, end offset and end time per partition.
    let mut start = TopicPartitionList::new();
    let mut bound: BTreeMap<i32, i64> = BTreeMap::new();
    let mut until_time: BTreeMap<i32, i64> = BTreeMap::new();
    let follow = ranges.iter().any(|r| r.until == Until::Follow);
    let idle_timeout = ranges
        .iter()
        .map(|r| r.idle_timeout)
        .min()
        .unwrap_or_default();
    for range in ranges {
        let watermarks = partition_offsets(&consumer, kafka, topic, range.partitions.as_deref())?;
        let mut by_time = TopicPartitionList::new();
        for (&p, &(low, high)) in &watermarks {
            let offset = match range.from {
                From::Beginning => low,
                From::End => high,
                From::Offset(o) => o.clamp(low, high),
                From::Timestamp(t) => {
                    by_time
                        .add_partition_offset(topic, p, Offset::Offset(t))
                        .map_err(kafka_err)?;
                    low
                }
            };
            start
                .add_partition_offset(topic, p, Offset::Offset(offset))
                .map_err(kafka_err)?;
            let end = match range.until {
                Until::Follow => i64::MAX,
                Until::Offset(o) => o.min(high),
                Until::EndAtStart | Until::Timestamp(_) => high,
            };
            bound.insert(p, end);
            if let Until::Timestamp(t) = range.until {
                until_time.insert(p, t);
            }
        }
        if by_time.count() > 0 {
            // The broker's time index: the earliest offset at or after the time, or the end.
            let found = consumer
                .offsets_for_times(by_time, timeout)
                .map_err(kafka_err)?;
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => watermarks.get(&e.partition()).map_or(0, |w| w.1),
                };
                start
                    .set_partition_offset(topic, e.partition(), Offset::Offset(offset))
                    .map_err(kafka_err)?;
            }
        }
    }

    // A partition is done when its position reaches its bound; with read_committed the
    // position may step over transaction markers without delivering anything.
    let mut summary = ReadSummary::default();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for e in start.elements() {
        if let Offset::Offset(o) = e.offset() {
            let end = bound[&e.partition()];
            if o < end {
                open.insert(e.partition(), end);
            }
        }
    }
    if open.is_empty() && !follow {
        return Ok(summary);
    }
    consumer.assign(&start).map_err(kafka_err)?;
    // Per open partition, when it last moved (a record, or its position over markers). A
    // finished partition is paused, so it neither streams on to its end nor hides a stall.
    let mut moved: BTreeMap<i32, (Instant, i64)> =
        open.keys().map(|&p| (p, (Instant::now(), -1))).collect();
    let finish = |p: i32, open: &mut BTreeMap<i32, i64>| {
        if open.remove(&p).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, p);
            let _ = consumer.pause(&tpl);
        }
    };
    let mut last_check = Instant::now();
    let mut warned_at: Option<Instant> = None;
    loop {
        if !follow && open.is_empty() {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&end) = open.get(&p) else { continue };
                moved.insert(p, (Instant::now(), m.offset()));
                if m.offset() >= end {
                    finish(p, &mut open);
                    continue;
                }
                let (timestamp_ms, log_append_time) = match m.timestamp() {
                    Timestamp::NotAvailable => (None, false),
                    Timestamp::CreateTime(t) => (Some(t), false),
                    Timestamp::LogAppendTime(t) => (Some(t), true),
                };
                if let (Some(t), Some(ts)) = (until_time.get(&p), timestamp_ms) {
                    if ts >= *t {
                        finish(p, &mut open);
                        continue;
                    }
                }
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                let record = RawRecord {
                    topic: topic.to_string(),
                    partition: p,
                    offset: m.offset(),
                    timestamp_ms,
                    log_append_time,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                };
                summary.records += 1;
                let entry = summary
                    .per_partition
                    .entry(p)
                    .or_insert((m.offset(), m.offset() + 1));
                entry.1 = m.offset() + 1;
                if m.offset() + 1 >= end {
                    finish(p, &mut open);
                }
                if on_record(record).is_break() {
                    summary.stopped_early = true;
                    break;
                }
            }
            Some(Err(e)) => {
                if is_fatal(&e) {
                    return Err(kafka_err(e));
                }
                // A broker restart or a leader move: librdkafka retries by itself; a bounded
                // read that stops moving ends as Stalled below. One line per 10 s at most.
                if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    eprintln!("warning: reading {topic}: {e} (retrying)");
                    warned_at = Some(Instant::now());
                }
            }
            None => {}
        }
        if follow || last_check.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_check = Instant::now();
        // Positions past the last markers end their partitions; a position that moved is
        // progress.
        if let Ok(position) = consumer.position() {
            for e in position.elements() {
                let p = e.partition();
                if let (Offset::Offset(o), Some(&end)) = (e.offset(), open.get(&p)) {
                    if o >= end {
                        finish(p, &mut open);
                    } else if moved.get(&p).is_some_and(|(_, seen)| *seen < o) {
                        moved.insert(p, (Instant::now(), o));
                    }
                }
            }
        }
        let stalled = open
            .keys()
            .filter(|p| {
                moved
                    .get(p)
                    .is_some_and(|(t, _)| t.elapsed() >= idle_timeout)
            })
            .count();
        if stalled > 0 {
            return Err(SourceError::Stalled {
                topic: topic.to_string(),
                secs: idle_timeout.as_secs(),
                partitions: stalled,
            });
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_resolve_to_roles_under_a_prefix() {
        assert_eq!(
            role_of("replay.x.features", "replay.x."),
            Some(TopicRole::Features)
        );
        assert_eq!(role_of("features", ""), Some(TopicRole::Features));
        assert_eq!(role_of("prod.features", ""), None);
        assert_eq!(role_of("other", ""), None);
    }

    #[test]
    fn times_parse_in_every_form_and_bad_ones_are_named() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_time_arg("2026-11-30T00:00Z", now),
            Ok(1_795_996_800_000)
        );
        assert_eq!(parse_time_arg("2026-11-30", now), Ok(1_795_996_800_000));
        assert_eq!(
            parse_time_arg("2026-11-30T01:02:03Z", now),
            Ok(1_796_000_523_000)
        );
        assert_eq!(parse_time_arg("1795996800000", now), Ok(1_795_996_800_000));
        assert_eq!(parse_time_arg("-2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time_arg("-1d", now), Ok(now - 86_400_000));
        assert!(parse_time_arg("2028-02-29", now).is_ok(), "a leap day");
        for bad in [
            "",
            "-0h",
            "-h",
            "-5x",
            "2026-13-01",
            "2026-11-30T25:00Z",
            "yesterday",
            "12345",
            "2026-11-30T01:00",
        ] {
            let e = parse_time_arg(bad, now).unwrap_err();
            assert!(e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn headers_are_found_by_name() {
        let r = RawRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            log_append_time: false,
            key: None,
            value: None,
            headers: vec![
                ("a".into(), None),
                ("seqmon-enc".into(), Some(b"v1:k".to_vec())),
            ],
        };
        assert_eq!(r.header("seqmon-enc"), Some(&b"v1:k"[..]));
        assert_eq!(r.header("a"), None);
        assert_eq!(r.header("b"), None);
    }
}
