//! `seqmon-admin export TOPIC --out DIR --format parquet|avro`: a range of one topic as files
//! analysts open in pandas, DuckDB or Spark: Parquet with typed columns (the Arrow mapping of
//! [`arrow_map`]) or Avro object container files, in Hive-style date directories
//! (`date=YYYY-MM-DD/part-NNNNN.parquet`, [`sink`]).
//!
//! Every record is opened if sealed, decoded by the fingerprint in its header and resolved to
//! the NEWEST version of its record type, so all files of a topic have the same columns. Its
//! date directory is the UTC date of its event time ([`event_time_field`]), or of its Kafka
//! timestamp for record types without one. The read is `read_committed` and bounded: it stops
//! at the end offsets seen when it began (or at `--until-time`), so it always finishes.
//!
//! Sensitive topics (telemetry.raw, telemetry.validated, deadletter.sensitive and the sealed
//! changelogs) are refused unless the key ring (`--encryption-keys-dir`,
//! `--encryption-active-key`) is given, and the export fails if the ring opens none of their
//! records; their files are plaintext, so they are created 0600 in directories created 0700.
//!
//! A directory holds one dataset: parts of another format or record type there are refused
//! (exit 2). Parts already there are kept and counted in the summary; the new ones are added
//! beside them, so exporting the same range twice holds its rows twice.
//!
//! Failure: a record that cannot be exported (a tombstone, undecodable bytes, an unknown
//! schema, another record type, an envelope that does not open) is skipped and counted by
//! reason, never silently dropped; the summary (stdout) lists every file with its records and
//! bytes, then the skips. A file error stops the export and removes the incomplete files.
//! Exit codes: 0 exported, 1 Kafka unreachable, a topic missing or a file error, 2 a bad
//! argument or setting (named), an `--out` holding another dataset, or a sealed topic the given
//! keys do not open. A closed stdout (`| head`) ends the summary quietly.

pub mod arrow_map;
pub mod sink;

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use clap::Args;
use seqmon_model::schema_store::store;
use seqmon_model::topics::{PrivacySide, TopicRole};
use seqmon_runtime::config::KafkaConnection;
use seqmon_runtime::envelope::KeyRing;

use crate::decode::{self, Resolve};
use crate::source::{self, From, RawRecord, TopicRange, Until};
use arrow_map::{MapError, RecordMapping, Row};
use sink::{AvroCodec, DatasetWriter, Existing, FileSummary, Format, SinkError, SinkSettings};

/// `seqmon-admin export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    kafka: Box<KafkaConnection>,
    /// The topic: a catalogue name (`telemetry.sanitized`, `features`, …; the --topic-prefix is
    /// added) or a full topic name.
    topic: String,
    /// Output directory (created if missing); files already there are never overwritten. It
    /// must not hold parts of another format or record type; new parts are added beside the
    /// ones there (the same range exported twice is there twice).
    #[arg(long)]
    out: PathBuf,
    /// File format.
    #[arg(long, value_enum)]
    format: Format,
    /// Block codec of Avro files.
    #[arg(long, value_enum, default_value = "deflate")]
    avro_codec: AvroCodec,
    /// Start at this offset on every partition read (default: the oldest retained record).
    #[arg(long, conflicts_with = "from_time")]
    from_offset: Option<i64>,
    /// Start at the first record whose Kafka timestamp is at or after this time:
    /// `YYYY-MM-DDTHH:MM[:SS]Z`, `YYYY-MM-DD`, ms since the epoch, or `-7d` / `-12h` ago.
    #[arg(long, allow_hyphen_values = true)]
    from_time: Option<String>,
    /// Stop before the first record whose Kafka timestamp is at or after this time (same
    /// forms); at the latest at the end offsets seen when the export began.
    #[arg(long, allow_hyphen_values = true)]
    until_time: Option<String>,
    /// Only these partitions (repeat the option for several).
    #[arg(long = "partition", short = 'p')]
    partitions: Vec<i32>,
    /// Only records with this Kafka key: the instrument serial on per-instrument topics.
    /// Repeat for several.
    #[arg(long = "instrument", alias = "key")]
    instruments: Vec<String>,
    /// Most records in one file; a date with more gets several part files.
    #[arg(long, default_value_t = 1_000_000)]
    max_records_per_file: u64,
}

/// The top-level field whose time a record's date directory is taken from, per record type;
/// `None`: the Kafka timestamp (the type has no time of its own that says when it happened).
pub const EVENT_TIME_FIELDS: &[(&str, Option<&str>)] = &[
    // When the instrument measured it.
    ("telemetry", Some("event_time_ms")),
    ("sanitized_telemetry", Some("event_time_ms")),
    // The end of the window the statistics describe (what the detector judges them by).
    ("feature", Some("window_end_ms")),
    ("anomaly", Some("window_end_ms")),
    // The event time of the transition.
    ("alert", Some("event_time_ms")),
    ("alert_command", Some("issued_at_ms")),
    ("cohort_signal", Some("event_time_ms")),
    // This revision of the entry.
    ("maintenance_entry", Some("updated_at_ms")),
    ("privacy_audit", Some("event_time_ms")),
    // When the stage wrote it: the Kafka timestamp.
    ("dead_letter", None),
    ("state_snapshot", None),
    ("feature_extractor_state", None),
    ("anomaly_detector_state", None),
];

/// The event-time field of a record type (see [`EVENT_TIME_FIELDS`]); record types not in
/// the table use the Kafka timestamp.
pub fn event_time_field(record_type: &str) -> Option<&'static str> {
    EVENT_TIME_FIELDS
        .iter()
        .find(|(t, _)| *t == record_type)
        .and_then(|(_, f)| *f)
}

/// First and last ms of the years 0001..=9999, the dates a directory name can hold.
const MIN_DATE_MS: i64 = -62_135_596_800_000;
const MAX_DATE_MS: i64 = 253_402_300_799_999;

/// `YYYY-MM-DD` (UTC) of ms since the epoch, for years 1..=9999.
pub fn utc_date(ms: i64) -> Option<String> {
    (MIN_DATE_MS..=MAX_DATE_MS)
        .contains(&ms)
        .then(|| seqmon_model::civil::iso_time(ms)[..10].to_string())
}

/// Why a record was not written (the summary counts each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// A decode failure, by [`DecodeError::kind`] (tombstone, undecodable, unknown_schema,
    /// envelope_does_not_open, …).
    Decode(&'static str),
    /// A record of another record type than the topic's.
    OtherRecordType,
    /// Decoded, but not a value of the newest schema (cannot happen for a decoded record;
    /// guarded so a bad one is skipped alone).
    DoesNotMatchSchema,
    /// Neither an event time nor a Kafka timestamp, or one outside years 1..=9999.
    NoDate,
}

impl Skip {
    fn name(self) -> &'static str {
        match self {
            Skip::Decode(kind) => kind,
            Skip::OtherRecordType => "other_record_type",
            Skip::DoesNotMatchSchema => "does_not_match_schema",
            Skip::NoDate => "no_date",
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Sink(#[from] SinkError),
    #[error("record type {record_type}: {source}")]
    Mapping {
        record_type: String,
        source: MapError,
    },
}

/// The records of one topic into one dataset: decoding, filtering, date partitioning. Kept
/// apart from the Kafka read so it can be tested on records made in memory.
pub struct Exporter {
    role: Option<TopicRole>,
    keys: Option<KeyRing>,
    settings: SinkSettings,
    /// The topic's record type, once known (from the catalogue, or the first record).
    target: Option<Target>,
    pub written: u64,
    pub opened: u64,
    pub skipped: BTreeMap<Skip, u64>,
}

struct Target {
    record_type: &'static str,
    event_field: Option<&'static str>,
    mapping: Arc<RecordMapping>,
    writer: DatasetWriter,
}

impl Exporter {
    /// An exporter for a topic of `role` (if it is in the catalogue) into `settings.out`.
    pub fn new(
        role: Option<TopicRole>,
        keys: Option<KeyRing>,
        settings: SinkSettings,
    ) -> Result<Self, ExportError> {
        let mut exporter = Exporter {
            role,
            keys,
            settings,
            target: None,
            written: 0,
            opened: 0,
            skipped: BTreeMap::new(),
        };
        if let Some(role) = role {
            exporter.target = Some(exporter.target_for(role.spec().schema)?);
        }
        Ok(exporter)
    }

    fn target_for(&self, record_type: &str) -> Result<Target, ExportError> {
        let latest = store().latest(record_type);
        let mapping = Arc::new(RecordMapping::new(&latest.schema).map_err(|source| {
            ExportError::Mapping {
                record_type: latest.name.to_string(),
                source,
            }
        })?);
        let mut settings = self.settings.clone();
        settings.record_type = latest.name.to_string();
        settings
            .metadata
            .push(("seqmon.record_type".into(), latest.name.into()));
        settings
            .metadata
            .push(("seqmon.schema_version".into(), latest.version.to_string()));
        let writer = DatasetWriter::new(settings, mapping.clone(), &latest.schema)?;
        Ok(Target {
            record_type: latest.name,
            event_field: event_time_field(latest.name),
            mapping,
            writer,
        })
    }

    fn skip(&mut self, why: Skip) {
        *self.skipped.entry(why).or_default() += 1;
    }

    /// Exports one record, or counts why not. Errors only when a file cannot be written.
    pub fn accept(&mut self, record: RawRecord) -> Result<(), ExportError> {
        let sealed = record.header(seqmon_runtime::envelope::HEADER).is_some();
        let decoded = match decode::decode(&record, self.role, self.keys.as_ref(), Resolve::Latest)
        {
            Ok(d) => d,
            Err(e) => {
                self.skip(Skip::Decode(e.kind()));
                return Ok(());
            }
        };
        if sealed {
            self.opened += 1;
        }
        if self.target.is_none() {
            self.target = Some(self.target_for(decoded.schema.name)?);
        }
        let target = self.target.as_mut().expect("set above");
        if decoded.schema.name != target.record_type {
            self.skip(Skip::OtherRecordType);
            return Ok(());
        }
        if target.mapping.check(&decoded.value).is_err() {
            self.skip(Skip::DoesNotMatchSchema);
            return Ok(());
        }
        let time = match target.event_field {
            Some(field) => event_time(&decoded.value, field),
            None => record.timestamp_ms,
        };
        let Some(date) = time.and_then(utc_date) else {
            self.skip(Skip::NoDate);
            return Ok(());
        };
        target.writer.write(
            &date,
            Row {
                value: decoded.value,
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
            },
        )?;
        self.written += 1;
        Ok(())
    }

    /// The parts the directory held before (none until the record type is known).
    pub fn existing(&self) -> Existing {
        self.target
            .as_ref()
            .map(|t| t.writer.existing())
            .unwrap_or_default()
    }

    /// Closes the files: what was written, in path order.
    pub fn finish(self) -> Result<Vec<FileSummary>, ExportError> {
        match self.target {
            Some(t) => Ok(t.writer.finish()?),
            None => Ok(Vec::new()),
        }
    }

    /// Records skipped because their envelope did not open (or no key ring was given).
    pub fn unopened(&self) -> u64 {
        self.skipped
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k,
                    Skip::Decode(
                        "envelope_does_not_open" | "sealed_no_keys" | "sealed_unknown_topic"
                    )
                )
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// A top-level timestamp field of a record (null or absent: none).
fn event_time(value: &Value, field: &str) -> Option<i64> {
    let Value::Record(fields) = value else {
        return None;
    };
    let (_, v) = fields.iter().find(|(n, _)| n == field)?;
    let v = match v {
        Value::Union(_, inner) => inner.as_ref(),
        v => v,
    };
    match v {
        Value::TimestampMillis(t) | Value::LocalTimestampMillis(t) | Value::Long(t) => Some(*t),
        _ => None,
    }
}

/// Runs `export`.
pub fn run(mut args: ExportArgs) -> ExitCode {
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
    if args.max_records_per_file == 0 {
        eprintln!("error: invalid argument: --max-records-per-file must be 1 or more");
        return ExitCode::from(2);
    }
    let topic = source::resolve_topic(&args.kafka, &args.topic);
    let role = source::role_of(&topic, &args.kafka.topic_prefix);
    let keys = args.kafka.key_ring.clone();
    let sealed_topic = role.is_some_and(|r| r.spec().side == PrivacySide::Sensitive);
    if sealed_topic && keys.is_none() {
        eprintln!(
            "error: invalid argument: {topic} is on the sensitive side and its records are sealed: \
             give the key ring (--encryption-keys-dir and --encryption-active-key) to export it"
        );
        return ExitCode::from(2);
    }
    let from = match (args.from_offset, from_time) {
        (Some(o), _) => From::Offset(o),
        (None, Some(t)) => From::Timestamp(t),
        (None, None) => From::Beginning,
    };
    let until = match until_time {
        Some(t) => Until::Timestamp(t),
        None => Until::EndAtStart,
    };
    let range = TopicRange {
        topic: topic.clone(),
        partitions: (!args.partitions.is_empty()).then(|| args.partitions.clone()),
        from,
        until,
        read_uncommitted: false,
        idle_timeout: Duration::from_secs(60),
    };
    let settings = SinkSettings {
        out: args.out.clone(),
        format: args.format,
        avro_codec: args.avro_codec,
        max_rows_per_file: args.max_records_per_file,
        batch_rows: 8192,
        metadata: vec![("seqmon.topic".into(), topic.clone())],
        record_type: String::new(),
        private: sealed_topic,
    };
    let mut exporter = match Exporter::new(role, keys, settings) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let mut failure: Option<ExportError> = None;
    let mut filtered = 0u64;
    let read = source::read_range(&args.kafka, &range, |record| {
        if !args.instruments.is_empty()
            && !record
                .key
                .as_deref()
                .is_some_and(|k| args.instruments.iter().any(|i| i.as_bytes() == k))
        {
            filtered += 1;
            return ControlFlow::Continue(());
        }
        match exporter.accept(record) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    let read = match (read, failure) {
        (_, Some(e)) => return fail(e),
        (Err(e), None) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        (Ok(read), None) => read,
    };
    if sealed_topic && exporter.opened == 0 && exporter.unopened() > 0 {
        eprintln!(
            "error: the key ring opens none of the {} sealed records of {topic}: wrong --encryption-keys-dir?",
            exporter.unopened()
        );
        return ExitCode::from(2);
    }
    let (written, skipped, existing) = (
        exporter.written,
        exporter.skipped.clone(),
        exporter.existing(),
    );
    let files = match exporter.finish() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let summary = Summary {
        topic: &topic,
        out: &args.out,
        read: &read,
        files: &files,
        written,
        filtered,
        skipped: &skipped,
        existing,
    };
    match print_summary(&mut std::io::stdout().lock(), &summary) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader stopped reading (`| head`): the export is done, nothing to report.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the summary: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a failed export: exit 2 for an `--out` holding another dataset, else 1.
fn fail(e: ExportError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ExportError::Sink(SinkError::Conflict { .. }) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// What [`print_summary`] reports.
pub struct Summary<'a> {
    pub topic: &'a str,
    pub out: &'a std::path::Path,
    pub read: &'a source::ReadSummary,
    pub files: &'a [FileSummary],
    pub written: u64,
    pub filtered: u64,
    pub skipped: &'a BTreeMap<Skip, u64>,
    pub existing: Existing,
}

/// Writes the summary; stops at the first write error (a closed pipe among them).
pub fn print_summary(w: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    let bytes: u64 = s.files.iter().map(|f| f.bytes).sum();
    writeln!(
        w,
        "{}: {} records read, {} written to {} file(s) ({bytes} bytes) in {}",
        s.topic,
        s.read.records,
        s.written,
        s.files.len(),
        s.out.display()
    )?;
    if s.existing.parts > 0 {
        writeln!(
            w,
            "  already there: {} part(s), {} records (kept; the new parts were added beside them)",
            s.existing.parts, s.existing.records
        )?;
    }
    for (partition, (first, next)) in &s.read.per_partition {
        writeln!(w, "  partition {partition}: offsets {first}..{next}")?;
    }
    for f in s.files {
        writeln!(
            w,
            "  {:<48} {:>10} records {:>12} bytes",
            f.path, f.records, f.bytes
        )?;
    }
    if s.filtered > 0 {
        writeln!(w, "  filtered out (--instrument): {}", s.filtered)?;
    }
    // Names merged: several decode kinds can share a name.
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for (why, n) in s.skipped {
        *by_name.entry(why.name()).or_default() += n;
    }
    let total: u64 = by_name.values().sum();
    writeln!(w, "  skipped: {total}")?;
    for (name, n) in by_name {
        writeln!(w, "    {name}: {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
