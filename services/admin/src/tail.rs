//! `seqmon-admin tail TOPIC`: any of our topics as JSON lines, as `kcat` shows a topic, but
//! for our encoding: each record opened if sealed, decoded by the fingerprint in its header,
//! printed in the Avro JSON encoding (or our file-mode dialect) with where it came from.
//!
//! From the beginning, an offset, a time, the last N records per partition or the end; until
//! the end seen at the start, a time, or for ever (`--follow`); filtered by partition, record
//! key (the instrument serial on every per-instrument topic) and time. `read_committed` by
//! default, so aborted transactions never show. Reads with `assign` and commits nothing: it
//! never joins or moves a production consumer group.
//!
//! Failure: a record that does not decode is printed as a line with `"error"` (its kind and
//! reason, never its bytes) and counted; the summary on stderr gives the counts. Exit codes: 0
//! read to the bound (or stopped by `--max`), 1 Kafka unreachable or a topic missing, 2 a bad
//! argument (named).

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use seqmon_runtime::config::KafkaConnection;
use serde_json::{json, Map, Value as Json};

use crate::decode::{self, JsonForm, Resolve};
use crate::source::{self, From, RawRecord, TopicRange, Until};

/// `seqmon-admin tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    kafka: Box<KafkaConnection>,
    /// The topic: a catalogue name (`features`, `alerts`, …; the --topic-prefix is added) or a
    /// full topic name.
    topic: String,
    /// Start at this offset on every partition read.
    #[arg(long, conflicts_with_all = ["from_time", "from_end", "last"])]
    from_offset: Option<i64>,
    /// Start at the first record at or after this time: `YYYY-MM-DDTHH:MM[:SS]Z`,
    /// `YYYY-MM-DD`, ms since the epoch, or `-2h` / `-7d` ago (Kafka timestamps).
    #[arg(long, conflicts_with_all = ["from_end", "last"], allow_hyphen_values = true)]
    from_time: Option<String>,
    /// Start at the end: with --follow, only records written from now on.
    #[arg(long, conflicts_with = "last")]
    from_end: bool,
    /// Start N records before the end of each partition.
    #[arg(long)]
    last: Option<u32>,
    /// Stop before the first record at or after this time (same forms as --from-time).
    #[arg(long, conflicts_with = "follow", allow_hyphen_values = true)]
    until_time: Option<String>,
    /// Stop before this offset on every partition read (exclusive).
    #[arg(long, conflicts_with_all = ["follow", "until_time"])]
    until_offset: Option<i64>,
    /// Keep reading: wait for new records until interrupted (or --max).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only these partitions (repeat the option for several).
    #[arg(long = "partition", short = 'p')]
    partitions: Vec<i32>,
    /// Only records with this key: the instrument serial on per-instrument topics, the cohort
    /// (`model:NOVASEQ_6000`) on cohort.signals. Repeat for several. Only the partitions the
    /// keys hash to are read (the producers' partitioner), unless --partition says otherwise.
    #[arg(long = "instrument", alias = "key")]
    instruments: Vec<String>,
    /// How values are printed.
    #[arg(long, value_enum, default_value = "avro-json")]
    format: JsonForm,
    /// Decode into the newest version of the record type instead of the version that wrote
    /// it (every line then has the same fields).
    #[arg(long)]
    latest_schema: bool,
    /// Print only the values, without topic, partition, offset, timestamp, key and schema.
    #[arg(long)]
    values_only: bool,
    /// Stop after printing this many records (1 or more).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max: Option<u64>,
    /// Also show records of open and aborted transactions.
    #[arg(long)]
    read_uncommitted: bool,
}

/// Runs `tail`.
pub fn run(mut args: TailArgs) -> ExitCode {
    if let Err(e) = args.kafka.validate().and_then(|()| args.kafka.load_files()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let (from_time, until_time) =
        match source::time_bounds(args.from_time.as_deref(), args.until_time.as_deref()) {
            Ok(bounds) => bounds,
            Err(e) => {
                eprintln!("error: invalid argument: {e}");
                return ExitCode::from(2);
            }
        };
    if args.from_offset.is_some_and(|o| o < 0) {
        eprintln!("error: invalid argument: --from-offset must be 0 or more");
        return ExitCode::from(2);
    }
    let topic = source::resolve_topic(&args.kafka, &args.topic);
    let role = source::role_of(&topic, &args.kafka.topic_prefix);
    let keys = args.kafka.key_ring.clone();
    let from = match (args.from_offset, from_time, args.from_end) {
        (Some(o), _, _) => From::Offset(o),
        (_, Some(t), _) => From::Timestamp(t),
        (_, _, true) => From::End,
        _ => From::Beginning,
    };
    let until = match (args.follow, until_time, args.until_offset) {
        (true, _, _) => Until::Follow,
        (false, Some(t), _) => Until::Timestamp(t),
        (false, None, Some(o)) => Until::Offset(o),
        (false, None, None) => Until::EndAtStart,
    };
    let partitions = if !args.partitions.is_empty() {
        Some(args.partitions.clone())
    } else if !args.instruments.is_empty() {
        // Every producer partitions by murmur2 of the key, as Kafka's Java client does, so
        // a key's records are all in one partition.
        match source::end_offsets(&args.kafka, &topic, None, args.read_uncommitted) {
            Ok(all) => {
                let count = all.len() as u32;
                let mut chosen: Vec<i32> = args
                    .instruments
                    .iter()
                    .map(|k| {
                        seqmon_model::partitioning::partition_for_key(k.as_bytes(), count) as i32
                    })
                    .collect();
                chosen.sort_unstable();
                chosen.dedup();
                Some(chosen)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    // --last N: N before each partition's end, which needs the ends first.
    let ranges: Vec<TopicRange> = match args.last {
        None => vec![TopicRange {
            topic: topic.clone(),
            partitions,
            from,
            until,
            read_uncommitted: args.read_uncommitted,
            idle_timeout: Duration::from_secs(30),
        }],
        Some(n) => match last_offsets(
            &args.kafka,
            &topic,
            partitions.as_deref(),
            n,
            args.read_uncommitted,
        ) {
            Ok(starts) => starts
                .into_iter()
                .map(|(p, start)| TopicRange {
                    topic: topic.clone(),
                    partitions: Some(vec![p]),
                    from: From::Offset(start),
                    until,
                    read_uncommitted: args.read_uncommitted,
                    idle_timeout: Duration::from_secs(30),
                })
                .collect(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };

    let resolve = if args.latest_schema {
        Resolve::Latest
    } else {
        Resolve::Writer
    };
    let mut printed: u64 = 0;
    let mut filtered: u64 = 0;
    let mut failed: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    let mut closed = false;
    {
        let read = source::read_ranges(&args.kafka, &ranges, |record| {
            if !args.instruments.is_empty()
                && !record
                    .key
                    .as_deref()
                    .is_some_and(|k| args.instruments.iter().any(|i| i.as_bytes() == k))
            {
                filtered += 1;
                return ControlFlow::Continue(());
            }
            let line = match decode::decode(&record, role, keys.as_ref(), resolve) {
                Ok(d) => {
                    let value = decode::to_json(&d, args.format);
                    if args.values_only {
                        value
                    } else {
                        let mut line = metadata(&record);
                        line.insert("schema".into(), json!(d.writer.name));
                        line.insert("version".into(), json!(d.writer.version));
                        line.insert("value".into(), value);
                        Json::Object(line)
                    }
                }
                Err(e) => {
                    *failed.entry(e.kind()).or_default() += 1;
                    let mut line = metadata(&record);
                    line.insert("error".into(), json!(e.kind()));
                    line.insert("reason".into(), json!(e.to_string()));
                    Json::Object(line)
                }
            };
            // A closed pipe (`| head`) ends the listing quietly.
            if writeln!(out, "{line}").is_err() {
                closed = true;
                return ControlFlow::Break(());
            }
            printed += 1;
            if args.max.is_some_and(|m| printed >= m) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        match read {
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = out.flush();
    if !closed {
        let failures: Vec<String> = failed.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "{topic}: {printed} record(s) printed, {filtered} filtered out, {} not decoded{}",
            failed.values().sum::<u64>(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join(", "))
            }
        );
    }
    ExitCode::SUCCESS
}

/// Per partition, the offset of its N-th last record as this reader sees it. Offsets are not
/// records (transaction markers and aborted records take offsets too), so the window before
/// the end widens until it holds N records or reaches the start of the partition.
fn last_offsets(
    kafka: &KafkaConnection,
    topic: &str,
    partitions: Option<&[i32]>,
    n: u32,
    read_uncommitted: bool,
) -> Result<BTreeMap<i32, i64>, source::SourceError> {
    let mut starts = BTreeMap::new();
    for (p, (low, high)) in source::end_offsets(kafka, topic, partitions, read_uncommitted)? {
        if n == 0 {
            starts.insert(p, high);
            continue;
        }
        let mut window = i64::from(n).max(1);
        loop {
            let from = (high - window).max(low);
            let mut seen: Vec<i64> = Vec::new();
            source::read_range(
                kafka,
                &TopicRange {
                    topic: topic.to_string(),
                    partitions: Some(vec![p]),
                    from: From::Offset(from),
                    until: Until::Offset(high),
                    read_uncommitted,
                    idle_timeout: Duration::from_secs(30),
                },
                |r| {
                    seen.push(r.offset);
                    ControlFlow::Continue(())
                },
            )?;
            if seen.len() >= n as usize || from == low {
                let start = seen.len().checked_sub(n as usize).map_or(from, |i| seen[i]);
                starts.insert(p, start);
                break;
            }
            window = window.saturating_mul(4);
        }
    }
    Ok(starts)
}

/// Where a record came from, for its line.
fn metadata(record: &RawRecord) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("topic".into(), json!(record.topic));
    m.insert("partition".into(), json!(record.partition));
    m.insert("offset".into(), json!(record.offset));
    m.insert("timestamp_ms".into(), json!(record.timestamp_ms));
    m.insert(
        "timestamp_type".into(),
        json!(if record.timestamp_ms.is_none() {
            "none"
        } else if record.log_append_time {
            "log_append"
        } else {
            "create"
        }),
    );
    m.insert(
        "key".into(),
        match &record.key {
            None => Json::Null,
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => json!(s),
                Err(_) => json!({ "hex": seqmon_model::json::to_hex(k) }),
            },
        },
    );
    m
}
