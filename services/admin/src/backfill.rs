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
//! twice writes it twice; the validator's message-id de-duplication drops the second copy only
//! within its horizon (an hour): a file loaded again later is processed again, so load each file
//! once.
//!
//! Nothing is produced until every file has been read once (pass 1): bad lines are reported
//! first, and records the target topic would lose are counted from its `message.timestamp.type`
//! and `retention.ms` (described at start): on a producer-stamped topic (CreateTime) a
//! `sent_time_ms` older than the retention is deleted within minutes; on a broker-stamped one
//! (LogAppendTime) an event time older than the validator's maximum age (VALIDATOR_MAX_AGE_MS)
//! is dead-lettered TIMESTAMP_STALE. Either refuses the run (exit 2) unless
//! `--accept-old-records`. Without `--encryption-keys-dir` the run is refused (telemetry.raw
//! holds sealed records) unless `--unsealed`. A `sent_time_ms` not in (0, now + 1 day] is a bad
//! line. A delivery failure names the last line known delivered (checked every 10,000 records).
//! A UTF-8 byte-order mark before line 1 is skipped; a gzip file is refused, named as such.
//!
//! Bad input is never dropped silently: a line that is not JSON, does not fit the schema, has no
//! instrument serial or is longer than `--max-line-bytes` is reported on stderr with its line
//! number (an Avro record with its index and byte offset) and counted; blank lines are counted
//! apart. A record the broker refuses fails the run. Values are never printed.
//!
//! Exit codes: 0 every record loaded; 3 loaded, but some lines were bad (reported); 1 an error
//! (a file unreadable, Kafka unreachable, a record not delivered); 2 a bad argument (named), or
//! records the topic would lose (above).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use seqmon_model::codec::{encode_value_for_readers, writer_schema};
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
    /// Files to load, in order (repeat the flag for several). Load each file once: a file
    /// loaded twice is loaded twice, and the validator drops repeated message ids only within
    /// its one-hour horizon.
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
    /// Load plaintext into telemetry.raw without `--encryption-keys-dir`: only for a deployment
    /// that does not seal its sensitive topics (local tests).
    #[arg(long)]
    unsealed: bool,
    /// Load records that will be lost anyway, knowingly: older than the topic's `retention.ms`
    /// (a producer-stamped topic deletes them within minutes) or, on a broker-stamped topic,
    /// older than the validator's maximum age (dead-lettered TIMESTAMP_STALE).
    #[arg(long)]
    accept_old_records: bool,
    /// The validator's maximum event age (its VALIDATOR_MAX_AGE_MS), for the check above.
    #[arg(long, env = "VALIDATOR_MAX_AGE_MS", default_value_t = 7 * 24 * 3_600_000)]
    validator_max_age_ms: i64,
}

/// Records delivered between two flushes: a delivery failure names the last line known
/// delivered, at most this many records back.
const CHECKPOINT_RECORDS: u64 = 10_000;

/// How `telemetry.raw` stamps and keeps records (its topic configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTopic {
    /// `message.timestamp.type` is `LogAppendTime`: the broker stamps the arrival time.
    pub broker_stamped: bool,
    /// `retention.ms`; `None` when unlimited (-1).
    pub retention_ms: Option<i64>,
}

/// Records that would be lost once loaded, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Doomed {
    /// Stamped with a `sent_time_ms` older than the retention (less an hour for the load).
    pub expiring: u64,
    /// Event time older than the validator's maximum age at arrival (broker-stamped topic).
    pub stale: u64,
}

impl Doomed {
    /// Counts `l` if it would be lost in `target` at `now_ms`.
    pub fn count(&mut self, l: &Loaded, target: TargetTopic, max_age_ms: i64, now_ms: i64) {
        if target.broker_stamped {
            if l.event_time_ms < now_ms - max_age_ms {
                self.stale += 1;
            }
        } else if let Some(retention) = target.retention_ms {
            // An hour's margin: a load takes time and segments are deleted when they expire.
            if l.timestamp_ms < now_ms - retention + 3_600_000 {
                self.expiring += 1;
            }
        }
    }
}

/// `message.timestamp.type` and `retention.ms` of `topic`.
fn describe_target(kafka: &KafkaConnection, topic: &str) -> Result<TargetTopic, String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config()
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let opts = AdminOptions::new().request_timeout(Some(kafka.connect_timeout()));
    let spec = [ResourceSpecifier::Topic(topic)];
    // Called from the tool's async main: the admin future is driven on a thread of its own.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|rt| {
                        rt.block_on(admin.describe_configs(&spec, &opts))
                            .map_err(|e| e.to_string())
                    })
            })
            .join()
            .unwrap_or_else(|_| Err("the describe thread failed".into()))
    })?;
    let resource = result
        .into_iter()
        .next()
        .ok_or("no answer")?
        .map_err(|code| format!("{topic}: {code}"))?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    let retention_ms = match value("retention.ms") {
        Some(v) => {
            let ms: i64 = v
                .parse()
                .map_err(|_| format!("{topic}: retention.ms {v:?} is not a number"))?;
            (ms >= 0).then_some(ms)
        }
        None => return Err(format!("{topic}: retention.ms not described")),
    };
    Ok(TargetTopic {
        broker_stamped: value("message.timestamp.type").as_deref() == Some("LogAppendTime"),
        retention_ms,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    #[error("{path} is gzip-compressed: decompress it first (gunzip -k {path})")]
    Gzip { path: String },
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
    /// `event_time_ms`: what the validator's maximum age is checked against.
    pub event_time_ms: i64,
    /// `line 12` or `record 3`: where it is in its file (for a delivery failure).
    pub location: String,
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
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        return Err(BackfillError::Gzip {
            path: path.display().to_string(),
        });
    }
    Ok(if n >= 4 && &head == b"Obj\x01" {
        InputFormat::AvroContainer
    } else if n >= 2 && head[..2] == [0xc3, 0x01] {
        InputFormat::AvroSingleObject
    } else {
        InputFormat::JsonLines
    })
}

/// Fills `buf` as far as the input goes; the bytes read (fewer only at the end).
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A reader keeping every byte read through it: apache-avro reads a datum exactly (no
/// read-ahead), so what it kept is the record's body.
struct Recording<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn read_error(path: &Path, source: std::io::Error) -> BackfillError {
    BackfillError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Latest `sent_time_ms` accepted: a day past the clock (a later one is a bad line, as are 0 and
/// negative ones, which Kafka would stamp with the clock or refuse).
pub const MAX_SENT_AHEAD_MS: i64 = 24 * 3_600_000;

/// Checks single-object telemetry bytes and makes the record to load.
fn loaded(value: Vec<u8>, location: &str, now_ms: i64) -> Result<Loaded, String> {
    let t: Telemetry = decode(&value).map_err(|e| e.to_string())?;
    if t.instrument_serial.is_empty() {
        return Err("instrument_serial is empty: the record would have no key".into());
    }
    if t.sent_time_ms <= 0 || t.sent_time_ms > now_ms.saturating_add(MAX_SENT_AHEAD_MS) {
        return Err(
            "sent_time_ms is not a time between the epoch and a day from now: it cannot be the record's Kafka timestamp"
                .into(),
        );
    }
    Ok(Loaded {
        key: t.instrument_serial,
        timestamp_ms: t.sent_time_ms,
        event_time_ms: t.event_time_ms,
        value,
        location: location.to_string(),
    })
}

/// Reads one file, handing each good record to `on_good` and each bad one to `on_bad`, in file
/// order.
pub fn read_file(
    path: &Path,
    format: InputFormat,
    max_line_bytes: usize,
    now_ms: i64,
    on_good: &mut dyn FnMut(Loaded) -> Result<(), BackfillError>,
    on_bad: &mut dyn FnMut(Bad),
) -> Result<FileCounts, BackfillError> {
    // Sniffed whatever the format, so a gzip file is named as such, not "line 1: not UTF-8".
    let sniffed = sniff(path)?;
    let format = match format {
        InputFormat::Auto => sniffed,
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
                // A byte-order mark (editors on Windows write one) is not part of line 1.
                let text = match text.strip_prefix(b"\xef\xbb\xbf") {
                    Some(rest) if number == 1 => rest,
                    _ => &text[..],
                };
                let Ok(text) = std::str::from_utf8(text) else {
                    bad(&mut counts, format!("line {number}"), "not UTF-8".into());
                    continue;
                };
                if text.trim().is_empty() {
                    counts.blank += 1;
                    continue;
                }
                match json_line_to_avro(text, "telemetry")
                    .map_err(|(_, e)| e)
                    .and_then(|c| loaded(c.bytes, &format!("line {number}"), now_ms))
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
            // Streamed: one record in memory at a time, however large the file.
            let file_len = file.metadata().map_or(0, |m| m.len());
            let mut input = BufReader::new(file);
            let mut at = 0u64;
            let mut index = 0u64;
            loop {
                let mut header = [0u8; 10];
                let got = read_up_to(&mut input, &mut header)
                    .map_err(|source| read_error(path, source))?;
                if got == 0 {
                    break;
                }
                index += 1;
                counts.read += 1;
                let location = format!("record {index} (byte {at})");
                // Where the record ends is known only once its body decodes with its writer
                // schema; a record that does not leaves the rest of the file unsplittable.
                let length = writer_schema(&header[..got])
                    .map_err(|e| e.to_string())
                    .and_then(|(entry, _)| {
                        let mut body = Recording {
                            inner: &mut input,
                            seen: header.to_vec(),
                        };
                        apache_avro::from_avro_datum(&entry.schema, &mut body, None)
                            .map_err(|e| format!("{} v{}: {e}", entry.name, entry.version))?;
                        Ok((entry, body.seen))
                    });
                match length {
                    Ok((entry, record)) => {
                        at += record.len() as u64;
                        if entry.name != "telemetry" {
                            bad(
                                &mut counts,
                                location,
                                format!("a {} record, not telemetry", entry.name),
                            );
                            continue;
                        }
                        match loaded(record, &location, now_ms) {
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
                                file_len.saturating_sub(at)
                            ),
                        );
                        break;
                    }
                }
            }
        }
        InputFormat::AvroContainer => {
            let latest = store().latest("telemetry");
            let mut input = BufReader::new(file);
            let bad_file = |m: String| {
                read_error(
                    path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, m),
                )
            };
            let header = container::header(&mut input).map_err(bad_file)?;
            let mut index = 0u64;
            'blocks: while let Some(block) =
                container::next_block(&mut input, &header).map_err(bad_file)?
            {
                let mut cursor = std::io::Cursor::new(&block.data[..]);
                for _ in 0..block.count {
                    index += 1;
                    counts.read += 1;
                    let location = format!("record {index}");
                    let result = apache_avro::from_avro_datum(
                        &header.schema,
                        &mut cursor,
                        Some(&latest.schema),
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        encode_value_for_readers("telemetry", v).map_err(|e| e.to_string())
                    })
                    .and_then(|v| loaded(v, &location, now_ms));
                    match result {
                        Ok(l) => {
                            counts.good += 1;
                            on_good(l)?;
                        }
                        Err(e) => {
                            // A record that does not decode leaves the block without a position.
                            bad(
                                &mut counts,
                                location,
                                format!("{e}; the rest of the file is not read"),
                            );
                            break 'blocks;
                        }
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// Avro object container files read block by block here, not by apache-avro's `Reader`: its
/// allocation limit is process-wide, set to 2 MiB per value by the schema store
/// (`MAX_DECODE_ALLOCATION`) and applied to whole blocks, which Spark writes far larger. A block
/// may be up to [`container::MAX_BLOCK_BYTES`]; each record in it still decodes under the
/// store's per-value limit. Codecs: `null`, `deflate` (what `seqmon-admin export` writes) and
/// `snappy` (Spark's default); others are refused
/// by name.
pub mod container {
    use std::io::Read;

    /// Largest block accepted, compressed or not: a larger one is refused, naming this limit.
    pub const MAX_BLOCK_BYTES: usize = 64 * 1024 * 1024;
    /// Largest header metadata accepted (the writer schema is in it).
    const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;

    /// How a container's blocks are compressed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BlockCodec {
        Null,
        Deflate,
        Snappy,
    }

    /// A container's writer schema, codec and sync marker.
    pub struct Header {
        pub schema: apache_avro::Schema,
        pub codec: BlockCodec,
        pub sync: [u8; 16],
    }

    /// One block: its record count and its data, decompressed.
    pub struct Block {
        pub count: u64,
        pub data: Vec<u8>,
    }

    fn long(input: &mut impl Read) -> Result<Option<i64>, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            match input.read(&mut b) {
                Ok(0) if shift == 0 => return Ok(None),
                Ok(0) => return Err("the file ends inside a number".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            value |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(Some((value >> 1) as i64 ^ -((value & 1) as i64)));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn bytes(input: &mut impl Read, len: i64, limit: usize, what: &str) -> Result<Vec<u8>, String> {
        let len = usize::try_from(len).map_err(|_| format!("{what}: negative length"))?;
        if len > limit {
            return Err(format!(
                "{what} of {len} bytes is over the limit of {limit} bytes ({} MiB)",
                limit >> 20
            ));
        }
        let mut out = vec![0u8; len];
        input
            .read_exact(&mut out)
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(out)
    }

    /// Reads `Obj\x01`, the metadata map and the sync marker.
    pub fn header(input: &mut impl Read) -> Result<Header, String> {
        let mut magic = [0u8; 4];
        input.read_exact(&mut magic).map_err(|e| e.to_string())?;
        if &magic != b"Obj\x01" {
            return Err("not an Avro object container file".into());
        }
        let (mut schema, mut codec) = (None, None);
        let mut total = 0usize;
        loop {
            let mut count = long(input)?.ok_or("the file ends in its header")?;
            if count == 0 {
                break;
            }
            if count < 0 {
                count = -count;
                long(input)?; // the block's size in bytes: not needed
            }
            for _ in 0..count {
                let n = long(input)?.ok_or("the file ends in its header")?;
                let key = bytes(input, n, MAX_METADATA_BYTES, "a metadata key")?;
                let n = long(input)?.ok_or("the file ends in its header")?;
                let value = bytes(input, n, MAX_METADATA_BYTES, "a metadata value")?;
                total += key.len() + value.len();
                if total > MAX_METADATA_BYTES {
                    return Err("the header's metadata is over 16 MiB".into());
                }
                match &key[..] {
                    b"avro.schema" => schema = Some(value),
                    b"avro.codec" => codec = Some(value),
                    _ => {}
                }
            }
        }
        let mut sync = [0u8; 16];
        input.read_exact(&mut sync).map_err(|e| e.to_string())?;
        let schema = schema.ok_or("the header has no avro.schema")?;
        let schema = std::str::from_utf8(&schema)
            .map_err(|e| e.to_string())
            .and_then(|t| apache_avro::Schema::parse_str(t).map_err(|e| e.to_string()))
            .map_err(|e| format!("the writer schema does not parse: {e}"))?;
        let codec = match codec.as_deref() {
            None | Some(b"null") => BlockCodec::Null,
            Some(b"snappy") => BlockCodec::Snappy,
            Some(b"deflate") => BlockCodec::Deflate,
            Some(other) => {
                return Err(format!(
                    "codec {:?} is not supported (null, deflate and snappy are): re-write the file with one of them",
                    String::from_utf8_lossy(other)
                ))
            }
        };
        Ok(Header {
            schema,
            codec,
            sync,
        })
    }

    /// The next block, or `None` at the end of the file.
    pub fn next_block(input: &mut impl Read, header: &Header) -> Result<Option<Block>, String> {
        let Some(count) = long(input)? else {
            return Ok(None);
        };
        let count = u64::try_from(count).map_err(|_| "a block with a negative record count")?;
        let size = long(input)?.ok_or("the file ends in a block header")?;
        let raw = bytes(input, size, MAX_BLOCK_BYTES, "a container block")?;
        let mut sync = [0u8; 16];
        input
            .read_exact(&mut sync)
            .map_err(|e| format!("after a block: {e}"))?;
        if sync != header.sync {
            return Err("a block is not followed by the file's sync marker (corrupt file)".into());
        }
        let data = if header.codec == BlockCodec::Deflate {
            // Raw deflate (RFC 1951), as Avro writes it; bounded like every block.
            miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, MAX_BLOCK_BYTES).map_err(
                |e| match e.status {
                    miniz_oxide::inflate::TINFLStatus::HasMoreOutput => format!(
                        "a container block over the limit of {MAX_BLOCK_BYTES} bytes (64 MiB) uncompressed"
                    ),
                    _ => format!("deflate: the block does not inflate ({:?})", e.status),
                },
            )?
        } else if header.codec == BlockCodec::Snappy {
            let (body, crc) = raw
                .split_at_checked(raw.len().saturating_sub(4))
                .filter(|(_, c)| c.len() == 4)
                .ok_or("a snappy block shorter than its checksum")?;
            let len = snap::raw::decompress_len(body).map_err(|e| format!("snappy: {e}"))?;
            if len > MAX_BLOCK_BYTES {
                return Err(format!(
                    "a container block of {len} bytes uncompressed is over the limit of {MAX_BLOCK_BYTES} bytes (64 MiB)"
                ));
            }
            let data = snap::raw::Decoder::new()
                .decompress_vec(body)
                .map_err(|e| format!("snappy: {e}"))?;
            if crc32(&data).to_be_bytes() != crc {
                return Err("a snappy block's checksum does not match (corrupt file)".into());
            }
            data
        } else {
            raw
        };
        Ok(Some(Block { count, data }))
    }

    /// CRC-32 (IEEE), as Avro's snappy codec appends it.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xedb8_8320 & (!(crc & 1)).wrapping_add(1));
            }
        }
        !crc
    }

    #[cfg(test)]
    pub(crate) mod tests {
        pub(crate) fn crc(data: &[u8]) -> u32 {
            super::crc32(data)
        }

        #[test]
        fn crc32_is_ieee() {
            assert_eq!(super::crc32(b"123456789"), 0xcbf4_3926);
        }
    }
}

/// Runs `seqmon-admin backfill`.
///
/// Two passes: the first reads every file, reports bad lines and counts what the target topic
/// would lose, before anything is produced; the second produces.
pub fn run(args: BackfillArgs) -> ExitCode {
    let BackfillArgs {
        mut kafka,
        files,
        format,
        max_line_bytes,
        dry_run,
        max_reported,
        unsealed,
        accept_old_records,
        validator_max_age_ms,
    } = args;
    if let Err(e) = kafka.validate().and_then(|()| kafka.load_files()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if max_line_bytes == 0 {
        eprintln!("error: invalid configuration: --max-line-bytes: must be positive");
        return ExitCode::from(2);
    }
    if validator_max_age_ms <= 0 {
        eprintln!("error: invalid configuration: --validator-max-age-ms / VALIDATOR_MAX_AGE_MS: must be positive");
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
    if !dry_run && kafka.key_ring.is_none() && !unsealed {
        eprintln!(
            "error: invalid configuration: --encryption-keys-dir: telemetry.raw holds sealed records; \
             give the key ring (and --encryption-active-key), or --unsealed if this deployment does not seal"
        );
        return ExitCode::from(2);
    }
    let topic = kafka.topic(TopicRole::Raw);
    let now_ms = now();
    let target = if dry_run {
        None
    } else {
        if let Err(e) = seqmon_runtime::kafka::preflight(&kafka, kafka.connect_timeout()) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        match describe_target(&kafka, &topic) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: cannot read the configuration of {topic}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };

    // Pass 1: check.
    let mut total = FileCounts::default();
    let mut reported = 0u64;
    let mut doomed = Doomed::default();
    for path in &files {
        let name = path.display().to_string();
        let mut on_good = |l: Loaded| -> Result<(), BackfillError> {
            if let Some(t) = target {
                doomed.count(&l, t, validator_max_age_ms, now_ms);
            }
            Ok(())
        };
        let mut on_bad = |b: Bad| {
            reported += 1;
            if reported <= max_reported {
                eprintln!("{name}: {}: {}", b.location, b.reason);
            }
        };
        match read_file(
            path,
            format,
            max_line_bytes,
            now_ms,
            &mut on_good,
            &mut on_bad,
        ) {
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
    if let Some(t) = target {
        let mut lost = Vec::new();
        if doomed.expiring > 0 {
            lost.push(format!(
                "{} record(s) have a sent_time_ms older than {topic}'s retention.ms ({} h, less an hour): the topic keeps producer timestamps (CreateTime), so retention deletes them within minutes",
                doomed.expiring,
                t.retention_ms.unwrap_or_default() / 3_600_000
            ));
        }
        if doomed.stale > 0 {
            lost.push(format!(
                "{} record(s) have an event_time_ms older than the validator's maximum age (VALIDATOR_MAX_AGE_MS, {} h): {topic} is stamped by the broker (LogAppendTime), so the validator dead-letters them as TIMESTAMP_STALE",
                doomed.stale,
                validator_max_age_ms / 3_600_000
            ));
        }
        if !lost.is_empty() {
            if accept_old_records {
                for l in &lost {
                    eprintln!("warning: {l} (loaded anyway: --accept-old-records)");
                }
            } else {
                for l in &lost {
                    eprintln!("error: {l}");
                }
                eprintln!(
                    "error: invalid configuration: --accept-old-records: not given, nothing produced; \
                     backfill historic data into a dedicated prefix with unlimited retention and replay it (docs/data-engineering.md)"
                );
                return ExitCode::from(2);
            }
        }
    }

    // Pass 2: produce.
    if !dry_run {
        let producer: ThreadedProducer<CheckedDelivery> = match kafka
            .producer_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(CheckedDelivery::default())
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: cannot create a Kafka producer: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = produce_files(
            &producer,
            &kafka,
            &topic,
            &files,
            format,
            max_line_bytes,
            now_ms,
        ) {
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

/// Pass 2: produces every good record; flushes every [`CHECKPOINT_RECORDS`] so a failure can
/// name the last line known delivered.
fn produce_files(
    producer: &ThreadedProducer<CheckedDelivery>,
    kafka: &KafkaConnection,
    topic: &str,
    files: &[PathBuf],
    format: InputFormat,
    max_line_bytes: usize,
    now_ms: i64,
) -> Result<(), String> {
    let ring = kafka.key_ring.clone();
    let mut delivered: Option<String> = None;
    let mut pending: Option<String> = None;
    let mut since_checkpoint = 0u64;
    let known = |d: &Option<String>| match d {
        Some(at) => format!("every record up to {at} was delivered"),
        None => "no record is known delivered".to_string(),
    };
    let checkpoint = |pending: &Option<String>, delivered: &mut Option<String>| {
        let flushed = producer
            .flush(Duration::from_secs(120))
            .map_err(|e| format!("records not acknowledged by {topic}: {e}"))
            .and_then(|()| {
                producer
                    .context()
                    .check("backfill")
                    .map_err(|e| e.to_string())
            });
        match flushed {
            Ok(()) => {
                delivered.clone_from(pending);
                Ok(())
            }
            Err(e) => Err(format!("{e}; {}", known(delivered))),
        }
    };
    for path in files {
        let name = path.display().to_string();
        let mut on_good = |l: Loaded| -> Result<(), BackfillError> {
            let (value, headers) = seqmon_runtime::kafka::outgoing(
                ring.as_ref(),
                TopicRole::Raw,
                l.key.as_bytes(),
                &l.value,
            );
            let mut record = BaseRecord::to(topic)
                .key(l.key.as_bytes())
                .payload(value.as_ref())
                .timestamp(l.timestamp_ms);
            if let Some(h) = headers {
                record = record.headers(h);
            }
            seqmon_runtime::kafka::send(producer, record).map_err(|e| {
                BackfillError::Kafka(format!(
                    "cannot produce {name} {} to {topic}: {e}; {}",
                    l.location,
                    known(&delivered)
                ))
            })?;
            pending = Some(format!("{name} {}", l.location));
            since_checkpoint += 1;
            if since_checkpoint >= CHECKPOINT_RECORDS {
                since_checkpoint = 0;
                checkpoint(&pending, &mut delivered).map_err(BackfillError::Kafka)?;
            }
            Ok(())
        };
        read_file(
            path,
            format,
            max_line_bytes,
            now_ms,
            &mut on_good,
            &mut |_| {},
        )
        .map_err(|e| e.to_string())?;
    }
    checkpoint(&pending, &mut delivered)
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
            now(),
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
    fn a_bad_sent_time_a_bom_and_gzip_are_named() {
        let good = serde_json::to_string(&telemetry("A1", "m1")).unwrap();
        let mut far = telemetry("B2", "m2");
        far.sent_time_ms = i64::MAX;
        let mut zero = telemetry("C3", "m3");
        zero.sent_time_ms = 0;
        let text = format!(
            "\u{feff}{good}\n{}\n{}\n{good}\n",
            serde_json::to_string(&far).unwrap(),
            serde_json::to_string(&zero).unwrap()
        );
        let p = temp("bom.jsonl", text.as_bytes());
        let (counts, good, bad) = read_all(&p, InputFormat::JsonLines);
        assert_eq!((counts.read, counts.good, counts.bad), (4, 2, 2), "{bad:?}");
        assert_eq!(good[0].location, "line 1");
        assert_eq!(
            bad.iter().map(|b| b.location.as_str()).collect::<Vec<_>>(),
            ["line 2", "line 3"]
        );
        assert!(bad[0].reason.contains("sent_time_ms"), "{bad:?}");
        std::fs::remove_file(p).unwrap();

        let p = temp("lines.jsonl.gz", &[0x1f, 0x8b, 8, 0, 0, 0]);
        let e = read_file(
            &p,
            InputFormat::Auto,
            4096,
            now(),
            &mut |_| Ok(()),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gzip-compressed: decompress it first"), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn records_a_topic_would_lose_are_counted_by_its_stamping() {
        let now = 1_800_000_000_000;
        let day = 24 * 3_600_000;
        let rec = |sent: i64, event: i64| Loaded {
            key: "A1".into(),
            timestamp_ms: sent,
            event_time_ms: event,
            value: vec![],
            location: "line 1".into(),
        };
        let producer = TargetTopic {
            broker_stamped: false,
            retention_ms: Some(3 * day),
        };
        let broker = TargetTopic {
            broker_stamped: true,
            retention_ms: Some(3 * day),
        };
        let unlimited = TargetTopic {
            broker_stamped: false,
            retention_ms: None,
        };
        let mut d = Doomed::default();
        for r in [
            rec(now - 4 * day, now - 4 * day),
            rec(now - day, now - 8 * day),
        ] {
            d.count(&r, producer, 7 * day, now);
            d.count(&r, broker, 7 * day, now);
            d.count(&r, unlimited, 7 * day, now);
        }
        // Producer-stamped: the 4-day-old one expires; broker-stamped: the 8-day-old event is
        // stale; unlimited retention loses nothing.
        assert_eq!(
            d,
            Doomed {
                expiring: 1,
                stale: 1
            }
        );
    }

    /// A container file with one block of `records`, written here (apache-avro's writer has no
    /// snappy without its feature).
    fn container_file(records: &[Telemetry], codec: &str) -> Vec<u8> {
        fn long(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let b = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        let schema = &store().latest("telemetry").schema;
        let mut data = Vec::new();
        for t in records {
            let v = apache_avro::to_value(t).unwrap().resolve(schema).unwrap();
            data.extend(apache_avro::to_avro_datum(schema, v).unwrap());
        }
        if codec == "deflate" {
            data = miniz_oxide::deflate::compress_to_vec(&data, 6);
        }
        if codec == "snappy" {
            let mut c = snap::raw::Encoder::new().compress_vec(&data).unwrap();
            c.extend(container::tests::crc(&data).to_be_bytes());
            data = c;
        }
        let mut out = b"Obj\x01".to_vec();
        long(&mut out, 2);
        for (k, v) in [
            ("avro.schema", schema.canonical_form()),
            ("avro.codec", codec.to_string()),
        ] {
            long(&mut out, k.len() as i64);
            out.extend(k.as_bytes());
            long(&mut out, v.len() as i64);
            out.extend(v.as_bytes());
        }
        long(&mut out, 0);
        let sync = [7u8; 16];
        out.extend(sync);
        long(&mut out, records.len() as i64);
        long(&mut out, data.len() as i64);
        out.extend(data);
        out.extend(sync);
        out
    }

    #[test]
    fn large_and_snappy_container_blocks_load_and_other_codecs_are_named() {
        let many: Vec<Telemetry> = (0..20_000)
            .map(|i| {
                let mut t = telemetry(&format!("S{i:05}"), &format!("message-id-{i:08}"));
                t.attributes.insert("note".into(), "x".repeat(200));
                t
            })
            .collect();
        for codec in ["null", "snappy", "deflate"] {
            let bytes = container_file(&many, codec);
            let p = temp(&format!("big-{codec}.avro"), &bytes);
            let (counts, good, bad) = read_all(&p, InputFormat::Auto);
            assert_eq!((counts.good, counts.bad), (20_000, 0), "{codec}: {bad:?}");
            assert_eq!(good[19_999].key, "S19999");
            std::fs::remove_file(p).unwrap();
        }
        // The uncompressed block is over apache-avro's 2 MiB limit the schema store sets.
        assert!(container_file(&many, "null").len() > 2 * 1024 * 1024);
        let p = temp("zstd.avro", &container_file(&many[..1], "zstandard"));
        let e = read_file(
            &p,
            InputFormat::Auto,
            4096,
            now(),
            &mut |_| Ok(()),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("codec \"zstandard\" is not supported"), "{e}");
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
