//! The files of `seqmon-admin export`: a Hive-style dataset, one directory per UTC date
//! (`date=YYYY-MM-DD/`), holding `part-NNNNN.parquet` (Arrow -> Parquet, Snappy) or
//! `part-NNNNN.avro` (Avro object container files, codec null or deflate).
//!
//! Guarantees: a file appears under its final name only once it is complete (it is written as
//! `.seqmon-export-<pid>-<n>.<ext>.tmp`, a name no other process uses, and hard-linked to its
//! part name after its footer is written and synced; readers skip dot files); files already in
//! a date directory are never overwritten, not even by a concurrent export into the same
//! directory (the link refuses an existing name and the next part number is tried); a file
//! holds at most `max_rows_per_file` records. A dataset holds one record type in one format:
//! `_seqmon_export.json` at its top (readers skip `_` files) names them, and a directory
//! holding another record type or format is refused ([`SinkError::Conflict`]). Exports of
//! sensitive topics (`private`) create directories 0700 and files 0600.
//!
//! Failure: an I/O or encoder error is a [`SinkError`] naming the file; the export stops and
//! the partly written temporary files are removed, so a failed export leaves only complete
//! files behind (a killed one may leave a `.seqmon-export-*.tmp`, which later exports ignore).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use apache_avro::schema::Schema;
use apache_avro::{Codec, DeflateSettings};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::arrow_map::{MapError, RecordMapping, Row};

/// Why files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: Parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: Avro: {message}")]
    Avro { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Map { path: PathBuf, source: MapError },
    /// The output directory holds another dataset (a bad `--out`, exit code 2).
    #[error("--out {path}: {message}")]
    Conflict { path: PathBuf, message: String },
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache Parquet, typed columns, Snappy-compressed.
    Parquet,
    /// Avro object container files: the records in the newest schema of their type.
    Avro,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Avro => "avro",
        }
    }

    fn other(self) -> Format {
        match self {
            Format::Parquet => Format::Avro,
            Format::Avro => Format::Parquet,
        }
    }
}

/// The file at the top of a dataset naming its record type and format.
pub const MANIFEST: &str = "_seqmon_export.json";

/// Records per Avro block: blocks are cut at this many encoded bytes. The library's default
/// (16 000 bytes, about 38 telemetry records) made deflate compress each block alone and files
/// about 17 times the size of Parquet; 1 MiB blocks compress like a whole file, and a reader
/// still needs only one block in memory.
pub const AVRO_BLOCK_BYTES: usize = 1 << 20;

/// Makes temporary names unique within this process (the pid makes them unique across).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The block codec of Avro files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AvroCodec {
    Null,
    Deflate,
}

/// What was written to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Path relative to the output directory (`date=2026-11-30/part-00000.parquet`).
    pub path: String,
    pub records: u64,
    pub bytes: u64,
}

/// The parts a dataset held before this export added its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Existing {
    pub parts: u64,
    pub records: u64,
}

/// Settings of a dataset.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub out: PathBuf,
    pub format: Format,
    pub avro_codec: AvroCodec,
    /// Most records in one file; the next record of its date starts a new file.
    pub max_rows_per_file: u64,
    /// Records converted to Arrow at a time (Parquet).
    pub batch_rows: usize,
    /// Key-value metadata written into every file (topic, record type, schema version).
    pub metadata: Vec<(String, String)>,
    /// The record type (the manifest's; a dataset holds one).
    pub record_type: String,
    /// Plaintext of a sensitive topic: directories 0700, files 0600.
    pub private: bool,
}

enum Encoder {
    Parquet {
        writer: Box<ArrowWriter<File>>,
        pending: Vec<Row>,
    },
    Avro(Box<apache_avro::Writer<'static, BufWriter<File>>>),
}

struct OpenFile {
    date: String,
    tmp: PathBuf,
    records: u64,
    encoder: Encoder,
}

/// Writes records into date directories.
pub struct DatasetWriter {
    settings: SinkSettings,
    mapping: Arc<RecordMapping>,
    avro_schema: &'static Schema,
    open: BTreeMap<String, OpenFile>,
    /// Next part number per date directory.
    next_part: BTreeMap<String, u32>,
    written: Vec<FileSummary>,
    existing: Existing,
}

impl DatasetWriter {
    /// A writer into `settings.out` (created if missing) for records of `avro_schema`.
    pub fn new(
        settings: SinkSettings,
        mapping: Arc<RecordMapping>,
        avro_schema: &'static Schema,
    ) -> Result<Self, SinkError> {
        create_dir(&settings.out, settings.private)?;
        let existing = check_dataset(&settings)?;
        Ok(DatasetWriter {
            settings,
            mapping,
            avro_schema,
            open: BTreeMap::new(),
            next_part: BTreeMap::new(),
            written: Vec::new(),
            existing,
        })
    }

    /// The parts that were in the directory before this export.
    pub fn existing(&self) -> Existing {
        self.existing
    }

    /// Adds a record (already checked against the schema) to the file of its date.
    pub fn write(&mut self, date: &str, row: Row) -> Result<(), SinkError> {
        if self
            .open
            .get(date)
            .is_some_and(|f| f.records >= self.settings.max_rows_per_file)
        {
            let full = self.open.remove(date).expect("checked above");
            self.close(full)?;
        }
        if !self.open.contains_key(date) {
            let file = self.start(date)?;
            self.open.insert(date.to_string(), file);
        }
        let batch_rows = self.settings.batch_rows;
        let file = self.open.get_mut(date).expect("inserted above");
        file.records += 1;
        match &mut file.encoder {
            Encoder::Parquet { writer, pending } => {
                pending.push(row);
                if pending.len() >= batch_rows {
                    flush_parquet(&self.mapping, writer, pending, &file.tmp)?;
                }
            }
            Encoder::Avro(writer) => {
                writer
                    .append_value_ref(&row.value)
                    .map_err(|e| SinkError::Avro {
                        path: file.tmp.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok(())
    }

    /// Closes every file; returns what was written, in path order.
    pub fn finish(mut self) -> Result<Vec<FileSummary>, SinkError> {
        let open = std::mem::take(&mut self.open);
        for (_, file) in open {
            self.close(file)?;
        }
        let mut written = std::mem::take(&mut self.written);
        written.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(written)
    }

    fn start(&mut self, date: &str) -> Result<OpenFile, SinkError> {
        let dir = self.settings.out.join(format!("date={date}"));
        create_dir(&dir, self.settings.private)?;
        let ext = self.settings.format.extension();
        let tmp = dir.join(format!(
            ".seqmon-export-{}-{}.{ext}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = create_file(&tmp, self.settings.private)?;
        let encoder = match self.settings.format {
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    // Whichever comes first: a row group is held in memory until it is full.
                    .set_max_row_group_row_count(Some(128 * 1024))
                    .set_max_row_group_bytes(Some(32 * 1024 * 1024))
                    .set_key_value_metadata(Some(
                        self.settings
                            .metadata
                            .iter()
                            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                            .collect(),
                    ))
                    .build();
                let writer = ArrowWriter::try_new(file, self.mapping.arrow_schema(), Some(props))
                    .map_err(|e| SinkError::Parquet {
                    path: tmp.clone(),
                    message: e.to_string(),
                })?;
                Encoder::Parquet {
                    writer: Box::new(writer),
                    pending: Vec::with_capacity(self.settings.batch_rows),
                }
            }
            Format::Avro => {
                let codec = match self.settings.avro_codec {
                    AvroCodec::Null => Codec::Null,
                    AvroCodec::Deflate => Codec::Deflate(DeflateSettings::default()),
                };
                let mut writer = apache_avro::Writer::builder()
                    .schema(self.avro_schema)
                    .writer(BufWriter::new(file))
                    .codec(codec)
                    .block_size(AVRO_BLOCK_BYTES)
                    .build();
                for (k, v) in &self.settings.metadata {
                    writer
                        .add_user_metadata(k.clone(), v.as_bytes())
                        .map_err(|e| SinkError::Avro {
                            path: tmp.clone(),
                            message: e.to_string(),
                        })?;
                }
                Encoder::Avro(Box::new(writer))
            }
        };
        Ok(OpenFile {
            date: date.to_string(),
            tmp,
            records: 0,
            encoder,
        })
    }

    fn close(&mut self, file: OpenFile) -> Result<(), SinkError> {
        let OpenFile {
            date,
            tmp,
            records,
            encoder,
        } = file;
        let result = (|| {
            let written = match encoder {
                Encoder::Parquet {
                    mut writer,
                    mut pending,
                } => {
                    flush_parquet(&self.mapping, &mut writer, &mut pending, &tmp)?;
                    writer.into_inner().map_err(|e| SinkError::Parquet {
                        path: tmp.clone(),
                        message: e.to_string(),
                    })?
                }
                Encoder::Avro(writer) => {
                    let buffered = writer.into_inner().map_err(|e| SinkError::Avro {
                        path: tmp.clone(),
                        message: e.to_string(),
                    })?;
                    buffered
                        .into_inner()
                        .map_err(|e| io_error(&tmp, e.error()))?
                }
            };
            written.sync_all().map_err(|e| io_error(&tmp, e))?;
            let bytes = written.metadata().map_err(|e| io_error(&tmp, e))?.len();
            let dir = self.settings.out.join(format!("date={date}"));
            let mut part = match self.next_part.get(&date) {
                Some(n) => *n,
                None => next_free_part(&dir)?,
            };
            let ext = self.settings.format.extension();
            // A link never replaces an existing name: a part another export (or a file this
            // one could not see) took makes it try the next number.
            let name = loop {
                let name = format!("part-{part:05}.{ext}");
                match fs::hard_link(&tmp, dir.join(&name)) {
                    Ok(()) => break name,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => part += 1,
                    Err(e) => return Err(io_error(&dir.join(&name), e)),
                }
            };
            self.next_part.insert(date.clone(), part + 1);
            fs::remove_file(&tmp).map_err(|e| io_error(&tmp, e))?;
            Ok((format!("date={date}/{name}"), bytes))
        })();
        match result {
            Ok((relative, bytes)) => {
                self.written.push(FileSummary {
                    path: relative,
                    records,
                    bytes,
                });
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

impl Drop for DatasetWriter {
    /// Files still open when the writer is dropped (an error stopped the export) are
    /// incomplete: remove them.
    fn drop(&mut self) {
        for file in self.open.values() {
            let _ = fs::remove_file(&file.tmp);
        }
    }
}

fn flush_parquet(
    mapping: &RecordMapping,
    writer: &mut ArrowWriter<File>,
    pending: &mut Vec<Row>,
    path: &Path,
) -> Result<(), SinkError> {
    if pending.is_empty() {
        return Ok(());
    }
    let batch = mapping.to_batch(pending).map_err(|source| SinkError::Map {
        path: path.to_path_buf(),
        source,
    })?;
    pending.clear();
    writer.write(&batch).map_err(|e| SinkError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // The writer closes a row group at 128 Ki rows or 32 MiB by itself: that bounds memory,
    // and flushing per batch would make tiny row groups.
    Ok(())
}

fn create_dir(dir: &Path, private: bool) -> Result<(), SinkError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    if private {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_error(dir, e))
}

/// A new file (never an existing one): 0600 if `private`, else as the umask says.
fn create_file(path: &Path, private: bool) -> Result<File, SinkError> {
    let mut options = File::options();
    options.write(true).create_new(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| io_error(path, e))
}

fn manifest_text(record_type: &str, format: Format) -> String {
    serde_json::json!({
        "record_type": record_type,
        "format": format.extension(),
    })
    .to_string()
}

/// Refuses a directory holding another record type or format, writes the manifest if there is
/// none, and counts the parts already there.
fn check_dataset(settings: &SinkSettings) -> Result<Existing, SinkError> {
    let out = &settings.out;
    let conflict = |message: String| SinkError::Conflict {
        path: out.clone(),
        message,
    };
    let manifest = out.join(MANIFEST);
    match fs::read_to_string(&manifest) {
        Ok(text) => {
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| conflict(format!("{MANIFEST} is not readable JSON: {e}")))?;
            let (record_type, format) = (
                json["record_type"].as_str().unwrap_or("?"),
                json["format"].as_str().unwrap_or("?"),
            );
            if record_type != settings.record_type || format != settings.format.extension() {
                return Err(conflict(format!(
                    "holds {record_type} records as {format}, not {} as {}: export into another directory",
                    settings.record_type,
                    settings.format.extension()
                )));
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&manifest, e)),
    }
    let mut existing = Existing::default();
    let (ext, other) = (
        settings.format.extension(),
        settings.format.other().extension(),
    );
    for entry in fs::read_dir(out).map_err(|e| io_error(out, e))? {
        let entry = entry.map_err(|e| io_error(out, e))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with("date=")) || !entry.path().is_dir() {
            continue;
        }
        for file in fs::read_dir(entry.path()).map_err(|e| io_error(&entry.path(), e))? {
            let file = file.map_err(|e| io_error(&entry.path(), e))?;
            let name = file.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("part-")) else {
                continue;
            };
            if name.ends_with(&format!(".{other}")) {
                return Err(conflict(format!(
                    "holds {other} parts ({}/{name}): export {ext} into another directory",
                    entry.file_name().to_string_lossy()
                )));
            }
            if name.ends_with(&format!(".{ext}")) {
                existing.parts += 1;
                existing.records += count_records(&file.path(), settings.format)?;
            }
        }
    }
    if !manifest.exists() {
        write_manifest(settings, &manifest)?;
    }
    Ok(existing)
}

/// Writes the manifest without replacing one a concurrent export wrote meanwhile.
fn write_manifest(settings: &SinkSettings, manifest: &Path) -> Result<(), SinkError> {
    let tmp = settings.out.join(format!(
        ".seqmon-export-{}-{}.json.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let text = manifest_text(&settings.record_type, settings.format);
    let result = (|| {
        let mut file = create_file(&tmp, settings.private)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| io_error(&tmp, e))?;
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        match fs::hard_link(&tmp, manifest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let theirs = fs::read_to_string(manifest).map_err(|e| io_error(manifest, e))?;
                if theirs == text {
                    Ok(())
                } else {
                    Err(SinkError::Conflict {
                        path: settings.out.clone(),
                        message: format!("another export wrote {MANIFEST} meanwhile: {theirs}"),
                    })
                }
            }
            Err(e) => Err(io_error(manifest, e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Records in a complete part: the Parquet footer's row count, or the Avro block counts.
fn count_records(path: &Path, format: Format) -> Result<u64, SinkError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    match format {
        Format::Parquet => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let reader = SerializedFileReader::new(file).map_err(|e| SinkError::Parquet {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
        }
        Format::Avro => avro_blocks(BufReader::new(file))
            .map(|(_, records)| records)
            .map_err(|e| SinkError::Avro {
                path: path.to_path_buf(),
                message: format!("not a readable object container file: {e}"),
            }),
    }
}

/// (blocks, records) of an Avro object container file, from its block headers (nothing decoded).
pub(crate) fn avro_blocks(mut r: BufReader<File>) -> std::io::Result<(u64, u64)> {
    fn long(r: &mut impl Read) -> std::io::Result<Option<i64>> {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let mut byte = [0u8; 1];
            if r.read(&mut byte)? == 0 {
                return if shift == 0 {
                    Ok(None)
                } else {
                    Err(ErrorKind::UnexpectedEof.into())
                };
            }
            if shift > 63 {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "varint too long",
                ));
            }
            value |= u64::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                return Ok(Some((value >> 1) as i64 ^ -((value & 1) as i64)));
            }
        }
    }
    fn need(v: Option<i64>) -> std::io::Result<i64> {
        v.ok_or_else(|| ErrorKind::UnexpectedEof.into())
    }
    fn skip(r: &mut BufReader<File>, n: i64) -> std::io::Result<()> {
        if n < 0 {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "negative size"));
        }
        r.seek_relative(n)
    }
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"Obj\x01" {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "no Avro magic"));
    }
    // The header's metadata map (blocks of key/value byte strings), then the sync marker.
    loop {
        let mut count = need(long(&mut r)?)?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = -count;
            need(long(&mut r)?)?;
        }
        for _ in 0..count * 2 {
            let n = need(long(&mut r)?)?;
            skip(&mut r, n)?;
        }
    }
    skip(&mut r, 16)?;
    let (mut blocks, mut records) = (0u64, 0u64);
    while let Some(count) = long(&mut r)? {
        let size = need(long(&mut r)?)?;
        skip(&mut r, size + 16)?;
        blocks += 1;
        records += count.max(0) as u64;
    }
    Ok((blocks, records))
}

/// One more than the highest `part-NNNNN.*` in `dir` (0 if none).
fn next_free_part(dir: &Path) -> Result<u32, SinkError> {
    let mut next = 0;
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix("part-")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = number {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}
