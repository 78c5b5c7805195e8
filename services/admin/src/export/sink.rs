//! The files of `seqmon-admin export`: a Hive-style dataset, one directory per UTC date
//! (`date=YYYY-MM-DD/`), holding `part-NNNNN.parquet` (Arrow -> Parquet, Snappy) or
//! `part-NNNNN.avro` (Avro object container files, codec null or deflate).
//!
//! Guarantees: a file appears under its final name only once it is complete (it is written as
//! `.part-NNNNN.<ext>.tmp` and renamed after its footer is written and synced; readers skip
//! dot files); files already in a date directory are never overwritten (numbering continues
//! after the highest part there); a file holds at most `max_rows_per_file` records.
//!
//! Failure: an I/O or encoder error is a [`SinkError`] naming the file; the export stops and
//! the partly written temporary files are removed, so a failed export leaves only complete
//! files behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
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
}

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
}

enum Encoder {
    Parquet {
        writer: Box<ArrowWriter<File>>,
        pending: Vec<Row>,
    },
    Avro(Box<apache_avro::Writer<'static, BufWriter<File>>>),
}

struct OpenFile {
    relative: String,
    tmp: PathBuf,
    target: PathBuf,
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
}

impl DatasetWriter {
    /// A writer into `settings.out` (created if missing) for records of `avro_schema`.
    pub fn new(
        settings: SinkSettings,
        mapping: Arc<RecordMapping>,
        avro_schema: &'static Schema,
    ) -> Result<Self, SinkError> {
        fs::create_dir_all(&settings.out).map_err(|e| io_error(&settings.out, e))?;
        Ok(DatasetWriter {
            settings,
            mapping,
            avro_schema,
            open: BTreeMap::new(),
            next_part: BTreeMap::new(),
            written: Vec::new(),
        })
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
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let part = match self.next_part.get(date) {
            Some(n) => *n,
            None => next_free_part(&dir)?,
        };
        self.next_part.insert(date.to_string(), part + 1);
        let ext = self.settings.format.extension();
        let name = format!("part-{part:05}.{ext}");
        let target = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
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
                let mut writer =
                    apache_avro::Writer::with_codec(self.avro_schema, BufWriter::new(file), codec);
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
            relative: format!("date={date}/{name}"),
            tmp,
            target,
            records: 0,
            encoder,
        })
    }

    fn close(&mut self, file: OpenFile) -> Result<(), SinkError> {
        let OpenFile {
            relative,
            tmp,
            target,
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
            fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
            Ok(bytes)
        })();
        match result {
            Ok(bytes) => {
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
