//! `seqmon-admin backfill --file F...`: loads recorded telemetry into `telemetry.raw`, as the
//! collector and the ingest gateway would have sent it.
//!
//! Input: JSON lines in the file-mode dialect (`crates/model/src/json.rs`, what the collector's
//! file sink and file mode write; docs/file-json.md), or Avro: a file of concatenated
//! single-object records (`C3 01` + fingerprint + body, any version of `telemetry` in the
//! schema store) or an object container file (`Obj\x01`, resolved into the newest `telemetry`).
//! The format is chosen from the file's first bytes unless `--format` says.
//!
//! Output: every good record goes to `telemetry.raw` (under `--topic-prefix`) keyed by its
//! instrument serial, stamped with its `sent_time_ms` (a topic created with
//! `--raw-timestamps producer` keeps it; one stamped by the broker puts the arrival time), sealed
//! with the active key when `--encryption-keys-dir` is set (as `crates/runtime/src/envelope.rs`
//! seals for the collector and the gateway), by an idempotent producer acknowledged by every
//! in-sync replica: a retry never writes a record twice within one run. Running the same file
//! twice writes it twice; the validator's message-id de-duplication drops the second copy
//! within its horizon.
//!
//! Bad input is never dropped silently: a line that is not JSON, does not fit the schema, has no
//! instrument serial or is longer than `--max-line-bytes` is reported on stderr with its line
//! number (an Avro record with its index and byte offset) and counted; blank lines are counted
//! apart. A record the broker refuses fails the run. Values are never printed.
//!
//! Exit codes: 0 every record loaded; 3 loaded, but some lines were bad (reported); 1 an error
//! (a file unreadable, Kafka unreachable, a record not delivered); 2 a bad argument (named).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use seqmon_model::codec::{encode_value, writer_schema};
use seqmon_model::topics::TopicRole;
use seqmon_model::{decode, store, Telemetry};
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::file::{json_line_to_avro, read_line, Line};
use seqmon_runtime::kafka::CheckedDelivery;

/// `seqmon-admin backfill ...`.
#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    kafka: Box<KafkaConnection>,
    /// Files to load, in order (repeat the flag for several).
    #[arg(long = "file", required = true)]
    files: Vec<PathBuf>,
    /// What the files hold; `auto` looks at their first bytes.
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// Longest JSON line, bytes: a longer one is reported as bad and reading goes on.
    #[arg(long, default_value_t = 1_048_576)]
    max_line_bytes: usize,
    /// Read and check every file, report, produce nothing.
    #[arg(long)]
    dry_run: bool,
    /// Bad lines printed on stderr (every one is counted whatever this is).
    #[arg(long, default_value_t = 100)]
    max_reported: u64,
}

/// Format of a backfill file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// From the first bytes: `Obj\x01` a container, `C3 01` single-object records, else JSON.
    Auto,
    /// JSON lines, the file-mode dialect.
    JsonLines,
    /// Concatenated single-object Avro records.
    AvroSingleObject,
    /// An Avro object container file.
    AvroContainer,
}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Kafka(String),
}

/// A record ready for `telemetry.raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Instrument serial: the Kafka key.
    pub key: String,
    /// `sent_time_ms`: the Kafka timestamp.
    pub timestamp_ms: i64,
    /// Single-object Avro bytes, before sealing.
    pub value: Vec<u8>,
}

/// A line or record that was not loaded, and why (field names, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    /// `line 12`, or `record 3 (byte 120)`.
    pub location: String,
    pub reason: String,
}

/// Counts of one file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileCounts {
    /// Lines (JSON) or records (Avro) read.
    pub read: u64,
    pub good: u64,
    pub bad: u64,
    pub blank: u64,
}

/// The format of `path`, from its first bytes.
fn sniff(path: &Path) -> Result<InputFormat, BackfillError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path).map_err(|source| read_error(path, source))?;
    let n = f
        .read(&mut head)
        .map_err(|source| read_error(path, source))?;
    Ok(if n >= 4 && &head == b"Obj\x01" {
        InputFormat::AvroContainer
    } else if n >= 2 && head[..2] == [0xc3, 0x01] {
        InputFormat::AvroSingleObject
    } else {
        InputFormat::JsonLines
    })
}

fn read_error(path: &Path, source: std::io::Error) -> BackfillError {
    BackfillError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Checks single-object telemetry bytes and makes the record to load.
fn loaded(value: Vec<u8>) -> Result<Loaded, String> {
    let t: Telemetry = decode(&value).map_err(|e| e.to_string())?;
    if t.instrument_serial.is_empty() {
        return Err("instrument_serial is empty: the record would have no key".into());
    }
    Ok(Loaded {
        key: t.instrument_serial,
        timestamp_ms: t.sent_time_ms,
        value,
    })
}

/// Reads one file, handing each good record to `on_good` and each bad one to `on_bad`, in file
/// order.
pub fn read_file(
    path: &Path,
    format: InputFormat,
    max_line_bytes: usize,
    on_good: &mut dyn FnMut(Loaded) -> Result<(), BackfillError>,
    on_bad: &mut dyn FnMut(Bad),
) -> Result<FileCounts, BackfillError> {
    let format = match format {
        InputFormat::Auto => sniff(path)?,
        f => f,
    };
    let file = File::open(path).map_err(|source| read_error(path, source))?;
    let mut counts = FileCounts::default();
    let mut bad = |counts: &mut FileCounts, location: String, reason: String| {
        counts.bad += 1;
        on_bad(Bad { location, reason });
    };
    match format {
        InputFormat::JsonLines | InputFormat::Auto => {
            let mut input = BufReader::new(file);
            let mut number = 0u64;
            while let Some(line) =
                read_line(&mut input, max_line_bytes).map_err(|source| read_error(path, source))?
            {
                number += 1;
                counts.read += 1;
                let text = match line {
                    Line::TooLong(_, len) => {
                        bad(
                            &mut counts,
                            format!("line {number}"),
                            format!("{len} bytes, over --max-line-bytes {max_line_bytes}"),
                        );
                        continue;
                    }
                    Line::Whole(bytes) => bytes,
                };
                let Ok(text) = std::str::from_utf8(&text) else {
                    bad(&mut counts, format!("line {number}"), "not UTF-8".into());
                    continue;
                };
                if text.trim().is_empty() {
                    counts.blank += 1;
                    continue;
                }
                match json_line_to_avro(text, "telemetry")
                    .map_err(|(_, e)| e)
                    .and_then(|c| loaded(c.bytes))
                {
                    Ok(l) => {
                        counts.good += 1;
                        on_good(l)?;
                    }
                    Err(e) => bad(&mut counts, format!("line {number}"), e),
                }
            }
        }
        InputFormat::AvroSingleObject => {
            let mut bytes = Vec::new();
            BufReader::new(file)
                .read_to_end(&mut bytes)
                .map_err(|source| read_error(path, source))?;
            let mut at = 0usize;
            let mut index = 0u64;
            while at < bytes.len() {
                index += 1;
                counts.read += 1;
                let location = format!("record {index} (byte {at})");
                // Where the record ends is known only once its body decodes with its writer
                // schema; a record that does not leaves the rest of the file unsplittable.
                let length = writer_schema(&bytes[at..])
                    .map_err(|e| e.to_string())
                    .and_then(|(entry, body)| {
                        let mut cursor = std::io::Cursor::new(body);
                        apache_avro::from_avro_datum(&entry.schema, &mut cursor, None)
                            .map_err(|e| format!("{} v{}: {e}", entry.name, entry.version))?;
                        Ok((
                            entry,
                            bytes[at..].len() - body.len() + cursor.position() as usize,
                        ))
                    });
                match length {
                    Ok((entry, len)) => {
                        let record = bytes[at..at + len].to_vec();
                        at += len;
                        if entry.name != "telemetry" {
                            bad(
                                &mut counts,
                                location,
                                format!("a {} record, not telemetry", entry.name),
                            );
                            continue;
                        }
                        match loaded(record) {
                            Ok(l) => {
                                counts.good += 1;
                                on_good(l)?;
                            }
                            Err(e) => bad(&mut counts, location, e),
                        }
                    }
                    Err(e) => {
                        bad(
                            &mut counts,
                            location,
                            format!(
                                "{e}; the remaining {} bytes cannot be split into records and are not loaded",
                                bytes.len() - at
                            ),
                        );
                        break;
                    }
                }
            }
        }
        InputFormat::AvroContainer => {
            let latest = store().latest("telemetry");
            let reader = apache_avro::Reader::with_schema(&latest.schema, BufReader::new(file))
                .map_err(|e| {
                    read_error(
                        path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
            for (i, value) in reader.enumerate() {
                counts.read += 1;
                let location = format!("record {}", i + 1);
                let result = value
                    .map_err(|e| e.to_string())
                    .and_then(|v| encode_value(latest, v).map_err(|e| e.to_string()))
                    .and_then(loaded);
                match result {
                    Ok(l) => {
                        counts.good += 1;
                        on_good(l)?;
                    }
                    Err(e) => {
                        // A block that does not decode leaves the reader without a position.
                        bad(
                            &mut counts,
                            location,
                            format!("{e}; the rest of the file is not read"),
                        );
                        break;
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// Runs `seqmon-admin backfill`.
pub fn run(args: BackfillArgs) -> ExitCode {
    let BackfillArgs {
        mut kafka,
        files,
        format,
        max_line_bytes,
        dry_run,
        max_reported,
    } = args;
    if let Err(e) = kafka.validate().and_then(|()| kafka.load_files()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if max_line_bytes == 0 {
        eprintln!("error: invalid configuration: --max-line-bytes: must be positive");
        return ExitCode::from(2);
    }
    for f in &files {
        if !f.is_file() {
            eprintln!(
                "error: invalid configuration: --file: {} is not a readable file",
                f.display()
            );
            return ExitCode::from(2);
        }
    }
    let topic = kafka.topic(TopicRole::Raw);
    let producer: Option<ThreadedProducer<CheckedDelivery>> = if dry_run {
        None
    } else {
        if let Err(e) = seqmon_runtime::kafka::preflight(&kafka, kafka.connect_timeout()) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        match kafka
            .producer_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(CheckedDelivery::default())
        {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: cannot create a Kafka producer: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let ring = kafka.key_ring.clone();
    let mut total = FileCounts::default();
    let mut reported = 0u64;
    for path in &files {
        let name = path.display().to_string();
        let mut on_good = |l: Loaded| -> Result<(), BackfillError> {
            let Some(producer) = &producer else {
                return Ok(());
            };
            let (value, headers) = seqmon_runtime::kafka::outgoing(
                ring.as_ref(),
                TopicRole::Raw,
                l.key.as_bytes(),
                &l.value,
            );
            let mut record = BaseRecord::to(&topic)
                .key(l.key.as_bytes())
                .payload(value.as_ref())
                .timestamp(l.timestamp_ms);
            if let Some(h) = headers {
                record = record.headers(h);
            }
            seqmon_runtime::kafka::send(producer, record)
                .map_err(|e| BackfillError::Kafka(format!("cannot produce to {topic}: {e}")))
        };
        let mut on_bad = |b: Bad| {
            reported += 1;
            if reported <= max_reported {
                eprintln!("{name}: {}: {}", b.location, b.reason);
            }
        };
        match read_file(path, format, max_line_bytes, &mut on_good, &mut on_bad) {
            Ok(c) => {
                total.read += c.read;
                total.good += c.good;
                total.bad += c.bad;
                total.blank += c.blank;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if reported > max_reported {
        eprintln!(
            "... {} more bad lines not shown (--max-reported)",
            reported - max_reported
        );
    }
    if let Some(producer) = &producer {
        if let Err(e) = producer.flush(Duration::from_secs(120)) {
            eprintln!("error: records not acknowledged by {topic}: {e}");
            return ExitCode::FAILURE;
        }
        if let Err(e) = producer.context().check("backfill") {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let verb = if dry_run {
        "would be produced"
    } else {
        "produced"
    };
    eprintln!(
        "backfill: {} file(s), {} lines/records read, {} {verb} to {topic}, {} bad, {} blank lines skipped",
        files.len(),
        total.read,
        total.good,
        total.bad,
        total.blank
    );
    if total.bad > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{encode, InstrumentModel, TelemetryKind};

    fn telemetry(serial: &str, id: &str) -> Telemetry {
        Telemetry {
            message_id: id.into(),
            instrument_serial: serial.into(),
            instrument_model: InstrumentModel::NOVASEQ_6000,
            event_time_ms: 1_700_000_000_000,
            sent_time_ms: 1_700_000_000_500,
            kind: TelemetryKind::SENSOR_READINGS,
            run_id: None,
            sensors: None,
            log_event: None,
            run_performance: None,
            instrument_configuration: None,
            run_configuration: None,
            attributes: Default::default(),
        }
    }

    fn read_all(path: &Path, format: InputFormat) -> (FileCounts, Vec<Loaded>, Vec<Bad>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let counts = read_file(
            path,
            format,
            4096,
            &mut |l| {
                good.push(l);
                Ok(())
            },
            &mut |b| bad.push(b),
        )
        .unwrap();
        (counts, good, bad)
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("backfill-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn json_lines_with_bad_lines_are_counted_with_their_numbers() {
        let a = serde_json::to_string(&telemetry("A1", "m1")).unwrap();
        let b = serde_json::to_string(&telemetry("B2", "m2")).unwrap();
        let no_serial = serde_json::to_string(&telemetry("", "m3")).unwrap();
        let text = format!(
            "{a}\nnot json\n\n{{\"message_id\": \"x\"}}\n{b}\n{no_serial}\n{}\n",
            "x".repeat(5000)
        );
        let p = temp("lines.jsonl", text.as_bytes());
        let (counts, good, bad) = read_all(&p, InputFormat::Auto);
        assert_eq!(
            counts,
            FileCounts {
                read: 7,
                good: 2,
                bad: 4,
                blank: 1
            }
        );
        assert_eq!(
            bad.iter().map(|b| b.location.as_str()).collect::<Vec<_>>(),
            ["line 2", "line 4", "line 6", "line 7"]
        );
        assert!(bad[1].reason.contains("instrument_serial"), "{:?}", bad[1]);
        assert_eq!(
            good.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            ["A1", "B2"]
        );
        assert_eq!(good[0].timestamp_ms, 1_700_000_000_500);
        let back: Telemetry = decode(&good[1].value).unwrap();
        assert_eq!(back, telemetry("B2", "m2"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn single_object_records_split_and_a_foreign_record_is_reported() {
        let mut bytes = encode(&telemetry("A1", "m1")).unwrap();
        let other = encode(&seqmon_model::DeadLetter {
            stage: "validator".into(),
            reason: seqmon_model::DeadLetterReason::MISSING_FIELD,
            detail: String::new(),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
            source_key: None,
            source_timestamp_ms: None,
            original_bytes: vec![],
        })
        .unwrap();
        bytes.extend_from_slice(&other);
        bytes.extend_from_slice(&encode(&telemetry("B2", "m2")).unwrap());
        bytes.extend_from_slice(&[0xc3, 0x01, 0, 0]);
        let p = temp("records.avro", &bytes);
        let (counts, good, bad) = read_all(&p, InputFormat::Auto);
        assert_eq!((counts.read, counts.good, counts.bad), (4, 2, 2));
        assert_eq!(good[1].key, "B2");
        assert!(bad[0].reason.contains("dead_letter"), "{:?}", bad[0]);
        assert!(
            bad[1].location.starts_with("record 4 (byte "),
            "{:?}",
            bad[1]
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_container_file_loads() {
        let schema = &store().latest("telemetry").schema;
        let mut writer = apache_avro::Writer::new(schema, Vec::new());
        for (s, id) in [("A1", "m1"), ("B2", "m2")] {
            let v = apache_avro::to_value(telemetry(s, id)).unwrap();
            writer.append(v.resolve(schema).unwrap()).unwrap();
        }
        let p = temp("container.avro", &writer.into_inner().unwrap());
        let (counts, good, bad) = read_all(&p, InputFormat::Auto);
        assert_eq!((counts.good, counts.bad), (2, 0), "{bad:?}");
        let back: Telemetry = decode(&good[0].value).unwrap();
        assert_eq!(back, telemetry("A1", "m1"));
        std::fs::remove_file(p).unwrap();
    }
}
