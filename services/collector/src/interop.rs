//! Readers of Illumina InterOp binary metric files, for the format versions found in real run
//! folders: Tile v2, Q v4, Error v3, Extraction v2, CorrectedInt v2, Image v1, EmpiricalPhasing v1,
//! Index v1 and Control v1. Every failure is a typed [`InteropError`] naming the file, and the
//! file is not used. Files are read through [`crate::files::read_bounded`]: regular files only,
//! up to a size cap.
//!
//! A short file is used, never silently: a file whose last record is half-written (the
//! instrument is still writing it, or the copy was cut) yields its whole records and a typed
//! [`InteropWarning::PartialRecord`] naming the file and the bytes skipped; a file with a header
//! and no record yields [`InteropWarning::HeaderOnly`]. Whole records are used (rather than the
//! file refused) because a run in progress always looks like this, and the live watcher sends a
//! cycle only once every file holds it for every tile. What is missing at whole-record
//! boundaries (cycles or tiles absent) is found against the run by
//! [`crate::collect::coverage_warnings`].
//!
//! Privacy: IndexMetricsOut.bin holds sample and project names. Its reader keeps only the lane,
//! tile, read and cluster count of each record; the names are skipped byte-wise and never held
//! in a string.

use std::path::{Path, PathBuf};

use crate::files::{read_bounded, FileError, Limits};

/// Why an InterOp file could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InteropError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {message}")]
    Io { file: PathBuf, message: String },
    /// Not a regular file, or over the size cap: refused without reading it whole.
    #[error(transparent)]
    Refused(FileError),
    /// The file is shorter than its header.
    #[error("{file}: shorter than the InterOp header")]
    NoHeader { file: PathBuf },
    /// A format version this reader does not know.
    #[error("{file}: unsupported format version {version} (supported: {supported})")]
    UnsupportedVersion {
        file: PathBuf,
        version: u8,
        supported: &'static str,
    },
    /// The header's record size disagrees with the version's layout.
    #[error("{file}: record size {found} does not match version {version} (expected {expected})")]
    RecordSize {
        file: PathBuf,
        version: u8,
        found: u8,
        expected: u8,
    },
    /// A variable-length record runs past the end of the file before the last one.
    #[error("{file}: truncated record at byte {offset}")]
    Truncated { file: PathBuf, offset: usize },
    /// A record contradicts the run (a lane the flow cell does not have, cycle 0, ...).
    #[error("{file}: inconsistent record at byte {offset}: {detail}")]
    Inconsistent {
        file: PathBuf,
        offset: usize,
        detail: String,
    },
    /// A metric file this collector does not read.
    #[error("{file}: metric file not supported by this collector")]
    UnsupportedFile { file: PathBuf },
}

impl InteropError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            InteropError::Io { file, .. }
            | InteropError::NoHeader { file }
            | InteropError::UnsupportedVersion { file, .. }
            | InteropError::RecordSize { file, .. }
            | InteropError::Truncated { file, .. }
            | InteropError::Inconsistent { file, .. }
            | InteropError::UnsupportedFile { file } => file,
            InteropError::Refused(
                FileError::Io { file, .. }
                | FileError::NotRegular { file, .. }
                | FileError::TooLarge { file, .. },
            ) => file,
        }
    }
}

/// A file that was used, but not whole: what was skipped or is missing. The figures built from
/// it are partial, and this says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InteropWarning {
    /// The bytes after the last whole record (a half-written or cut record) were skipped.
    #[error(
        "{file}: {bytes} trailing bytes of a partial record skipped ({records} whole records used)"
    )]
    PartialRecord {
        file: PathBuf,
        bytes: usize,
        records: usize,
    },
    /// A header and no record.
    #[error("{file}: header only, no records")]
    HeaderOnly { file: PathBuf },
    /// Whole records are missing against the run: cycles with no record, cycles lacking some
    /// tiles, tiles with no record (or, in tile metrics, lacking some codes).
    #[error(
        "{file}: incomplete: {cycles_missing} expected cycle(s) have no record, {cycles_partial} cycle(s) lack tiles, {tiles_missing} tile(s) missing or short{}",
        .first_gap.map(|c| format!(" (first gap at cycle {c})")).unwrap_or_default()
    )]
    Incomplete {
        file: PathBuf,
        cycles_missing: usize,
        cycles_partial: usize,
        tiles_missing: usize,
        first_gap: Option<u16>,
    },
}

impl InteropWarning {
    /// The file the warning is about.
    pub fn file(&self) -> &Path {
        match self {
            InteropWarning::PartialRecord { file, .. }
            | InteropWarning::HeaderOnly { file }
            | InteropWarning::Incomplete { file, .. } => file,
        }
    }
}

/// Records read from a file, the bytes of a half-written last record left for later, and the
/// warnings that say what was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub records: Vec<T>,
    pub trailing_bytes: usize,
    pub warnings: Vec<InteropWarning>,
}

/// The warnings of a file of `records` whole records, `trailing` bytes after them and a body
/// (after the header) of `body` bytes.
fn short_file_warnings(
    file: &Path,
    records: usize,
    trailing: usize,
    body: usize,
) -> Vec<InteropWarning> {
    if body == 0 {
        vec![InteropWarning::HeaderOnly {
            file: file.to_path_buf(),
        }]
    } else if trailing > 0 {
        vec![InteropWarning::PartialRecord {
            file: file.to_path_buf(),
            bytes: trailing,
            records,
        }]
    } else {
        Vec::new()
    }
}

/// Tile metric (TileMetricsOut v2): one code/value pair of a tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileMetric {
    pub lane: u16,
    pub tile: u16,
    pub code: u16,
    pub value: f32,
}

/// Q-score histogram of a tile at a cycle (QMetricsOut v4): counts of Q1..Q50.
#[derive(Debug, Clone, PartialEq)]
pub struct QMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub histogram: [u32; 50],
}

/// Error rate against PhiX of a tile at a cycle (ErrorMetricsOut v3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub error_rate: f32,
}

/// Focus and intensity of a tile at a cycle (ExtractionMetricsOut v2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractionMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub fwhm: [f32; 4],
    pub intensity: [u16; 4],
    /// Extraction time, ms since the Unix epoch (from the .NET DateTime ticks).
    pub time_ms: i64,
}

/// Corrected intensities of a tile at a cycle (CorrectedIntMetricsOut v2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectedIntMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub average_intensity: u16,
    pub corrected: [u16; 4],
    pub called: [u16; 4],
    pub base_calls: [f32; 5],
    pub signal_to_noise: f32,
}

/// Image contrast of a tile, cycle and channel (ImageMetricsOut v1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub channel: u16,
    pub min_contrast: u16,
    pub max_contrast: u16,
}

/// Empirical phasing of a tile at a cycle (EmpiricalPhasingMetricsOut v1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmpiricalPhasingMetric {
    pub lane: u16,
    pub tile: u16,
    pub cycle: u16,
    pub phasing: f32,
    pub prephasing: f32,
}

/// Clusters of one index on a tile (IndexMetricsOut v1), without its sample or project name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexCount {
    pub lane: u16,
    pub tile: u16,
    pub read: u16,
    pub clusters: u32,
}

/// Clusters of one control on a tile (ControlMetricsOut v1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlCount {
    pub lane: u16,
    pub tile: u16,
    pub read: u16,
    pub clusters: u32,
}

/// Little-endian reader over one record.
struct Rec<'a>(&'a [u8], usize);

impl Rec<'_> {
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.0[self.1], self.0[self.1 + 1]]);
        self.1 += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.0[self.1..self.1 + 4].try_into().expect("4 bytes"));
        self.1 += 4;
        v
    }
    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.0[self.1..self.1 + 8].try_into().expect("8 bytes"));
        self.1 += 8;
        v
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
}

fn read(file: &Path, cap: u64) -> Result<Vec<u8>, InteropError> {
    read_bounded(file, cap).map_err(|e| match e {
        FileError::Io { file, message } => InteropError::Io { file, message },
        refused => InteropError::Refused(refused),
    })
}

fn default_cap() -> u64 {
    Limits::default().interop_max_bytes
}

/// Reads fixed-size records after the 2-byte header (version, record size).
fn fixed<T>(
    file: &Path,
    bytes: &[u8],
    supported: &[(u8, u8)],
    supported_text: &'static str,
    parse: impl Fn(&mut Rec<'_>, u8) -> T,
) -> Result<Parsed<T>, InteropError> {
    if bytes.len() < 2 {
        return Err(InteropError::NoHeader {
            file: file.to_path_buf(),
        });
    }
    let (version, size) = (bytes[0], bytes[1]);
    let expected = supported
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, s)| *s)
        .ok_or(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: supported_text,
        })?;
    if size != expected {
        return Err(InteropError::RecordSize {
            file: file.to_path_buf(),
            version,
            found: size,
            expected,
        });
    }
    let body = &bytes[2..];
    let n = body.len() / size as usize;
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = Rec(&body[i * size as usize..(i + 1) * size as usize], 0);
        records.push(parse(&mut r, version));
    }
    let trailing_bytes = body.len() % size as usize;
    Ok(Parsed {
        warnings: short_file_warnings(file, records.len(), trailing_bytes, body.len()),
        records,
        trailing_bytes,
    })
}

/// .NET DateTime.ToBinary ticks (100 ns since 0001-01-01, kind in the top two bits) → Unix ms.
fn dotnet_ticks_to_unix_ms(raw: u64) -> i64 {
    const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;
    let ticks = (raw & 0x3FFF_FFFF_FFFF_FFFF) as i64;
    (ticks - TICKS_AT_UNIX_EPOCH) / 10_000
}

/// TileMetricsOut.bin, v2.
pub fn tile_metrics(file: &Path) -> Result<Parsed<TileMetric>, InteropError> {
    tile_metrics_capped(file, default_cap())
}

/// As [`tile_metrics`], refusing a file over `cap` bytes.
pub fn tile_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<TileMetric>, InteropError> {
    tile_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`tile_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn tile_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<TileMetric>, InteropError> {
    fixed(file, bytes, &[(2, 10)], "2", |r, _| TileMetric {
        lane: r.u16(),
        tile: r.u16(),
        code: r.u16(),
        value: r.f32(),
    })
}

/// QMetricsOut.bin, v4.
pub fn q_metrics(file: &Path) -> Result<Parsed<QMetric>, InteropError> {
    q_metrics_capped(file, default_cap())
}

/// As [`q_metrics`], refusing a file over `cap` bytes.
pub fn q_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<QMetric>, InteropError> {
    q_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`q_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn q_metrics_from_bytes(file: &Path, bytes: &[u8]) -> Result<Parsed<QMetric>, InteropError> {
    fixed(file, bytes, &[(4, 206)], "4", |r, _| {
        let (lane, tile, cycle) = (r.u16(), r.u16(), r.u16());
        let mut histogram = [0u32; 50];
        for h in histogram.iter_mut() {
            *h = r.u32();
        }
        QMetric {
            lane,
            tile,
            cycle,
            histogram,
        }
    })
}

/// ErrorMetricsOut.bin, v3.
pub fn error_metrics(file: &Path) -> Result<Parsed<ErrorMetric>, InteropError> {
    error_metrics_capped(file, default_cap())
}

/// As [`error_metrics`], refusing a file over `cap` bytes.
pub fn error_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<ErrorMetric>, InteropError> {
    error_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`error_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn error_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<ErrorMetric>, InteropError> {
    fixed(file, bytes, &[(3, 30)], "3", |r, _| ErrorMetric {
        lane: r.u16(),
        tile: r.u16(),
        cycle: r.u16(),
        error_rate: r.f32(),
    })
}

/// ExtractionMetricsOut.bin, v2.
pub fn extraction_metrics(file: &Path) -> Result<Parsed<ExtractionMetric>, InteropError> {
    extraction_metrics_capped(file, default_cap())
}

/// As [`extraction_metrics`], refusing a file over `cap` bytes.
pub fn extraction_metrics_capped(
    file: &Path,
    cap: u64,
) -> Result<Parsed<ExtractionMetric>, InteropError> {
    extraction_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`extraction_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn extraction_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<ExtractionMetric>, InteropError> {
    fixed(file, bytes, &[(2, 38)], "2", |r, _| {
        let (lane, tile, cycle) = (r.u16(), r.u16(), r.u16());
        let fwhm = [r.f32(), r.f32(), r.f32(), r.f32()];
        let intensity = [r.u16(), r.u16(), r.u16(), r.u16()];
        ExtractionMetric {
            lane,
            tile,
            cycle,
            fwhm,
            intensity,
            time_ms: dotnet_ticks_to_unix_ms(r.u64()),
        }
    })
}

/// CorrectedIntMetricsOut.bin, v2.
pub fn corrected_intensity_metrics(
    file: &Path,
) -> Result<Parsed<CorrectedIntMetric>, InteropError> {
    corrected_intensity_metrics_capped(file, default_cap())
}

/// As [`corrected_intensity_metrics`], refusing a file over `cap` bytes.
pub fn corrected_intensity_metrics_capped(
    file: &Path,
    cap: u64,
) -> Result<Parsed<CorrectedIntMetric>, InteropError> {
    corrected_intensity_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`corrected_intensity_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn corrected_intensity_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<CorrectedIntMetric>, InteropError> {
    fixed(file, bytes, &[(2, 48)], "2", |r, _| {
        let (lane, tile, cycle) = (r.u16(), r.u16(), r.u16());
        let average_intensity = r.u16();
        let corrected = [r.u16(), r.u16(), r.u16(), r.u16()];
        let called = [r.u16(), r.u16(), r.u16(), r.u16()];
        let base_calls = [r.f32(), r.f32(), r.f32(), r.f32(), r.f32()];
        CorrectedIntMetric {
            lane,
            tile,
            cycle,
            average_intensity,
            corrected,
            called,
            base_calls,
            signal_to_noise: r.f32(),
        }
    })
}

/// ImageMetricsOut.bin, v1.
pub fn image_metrics(file: &Path) -> Result<Parsed<ImageMetric>, InteropError> {
    image_metrics_capped(file, default_cap())
}

/// As [`image_metrics`], refusing a file over `cap` bytes.
pub fn image_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<ImageMetric>, InteropError> {
    image_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`image_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn image_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<ImageMetric>, InteropError> {
    fixed(file, bytes, &[(1, 12)], "1", |r, _| ImageMetric {
        lane: r.u16(),
        tile: r.u16(),
        cycle: r.u16(),
        channel: r.u16(),
        min_contrast: r.u16(),
        max_contrast: r.u16(),
    })
}

/// EmpiricalPhasingMetricsOut.bin, v1.
pub fn empirical_phasing_metrics(
    file: &Path,
) -> Result<Parsed<EmpiricalPhasingMetric>, InteropError> {
    empirical_phasing_metrics_capped(file, default_cap())
}

/// As [`empirical_phasing_metrics`], refusing a file over `cap` bytes.
pub fn empirical_phasing_metrics_capped(
    file: &Path,
    cap: u64,
) -> Result<Parsed<EmpiricalPhasingMetric>, InteropError> {
    empirical_phasing_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`empirical_phasing_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn empirical_phasing_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<EmpiricalPhasingMetric>, InteropError> {
    fixed(file, bytes, &[(1, 14)], "1", |r, _| {
        EmpiricalPhasingMetric {
            lane: r.u16(),
            tile: r.u16(),
            cycle: r.u16(),
            phasing: r.f32(),
            prephasing: r.f32(),
        }
    })
}

/// Variable-length records after a 1-byte version header: each starts with lane, tile, read
/// (u16) and continues with length-prefixed strings and a count, in `layout` order.
fn variable(
    file: &Path,
    bytes: &[u8],
    layout: &[Field],
) -> Result<Parsed<(u16, u16, u16, u32)>, InteropError> {
    if bytes.is_empty() {
        return Err(InteropError::NoHeader {
            file: file.to_path_buf(),
        });
    }
    if bytes[0] != 1 {
        return Err(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version: bytes[0],
            supported: "1",
        });
    }
    let mut records = Vec::new();
    let mut at = 1;
    while at < bytes.len() {
        let start = at;
        let need = |n: usize, at: &mut usize| -> Option<usize> {
            let here = *at;
            (here + n <= bytes.len()).then(|| {
                *at += n;
                here
            })
        };
        let mut complete = true;
        let mut head = [0u16; 3];
        let mut count = 0u32;
        'record: {
            for h in head.iter_mut() {
                let Some(p) = need(2, &mut at) else {
                    complete = false;
                    break 'record;
                };
                *h = u16::from_le_bytes([bytes[p], bytes[p + 1]]);
            }
            for f in layout {
                match f {
                    Field::Text => {
                        let Some(p) = need(2, &mut at) else {
                            complete = false;
                            break 'record;
                        };
                        let len = u16::from_le_bytes([bytes[p], bytes[p + 1]]) as usize;
                        // Skipped byte-wise: names never become strings here.
                        if need(len, &mut at).is_none() {
                            complete = false;
                            break 'record;
                        }
                    }
                    Field::Count => {
                        let Some(p) = need(4, &mut at) else {
                            complete = false;
                            break 'record;
                        };
                        count = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
                    }
                }
            }
        }
        if !complete {
            let trailing_bytes = bytes.len() - start;
            return Ok(Parsed {
                warnings: short_file_warnings(file, records.len(), trailing_bytes, bytes.len() - 1),
                records,
                trailing_bytes,
            });
        }
        records.push((head[0], head[1], head[2], count));
    }
    Ok(Parsed {
        warnings: short_file_warnings(file, records.len(), 0, bytes.len() - 1),
        records,
        trailing_bytes: 0,
    })
}

enum Field {
    Text,
    Count,
}

/// IndexMetricsOut.bin, v1: (lane, tile, read, clusters) per index; names are not kept.
pub fn index_metrics(file: &Path) -> Result<Parsed<IndexCount>, InteropError> {
    index_metrics_capped(file, default_cap())
}

/// As [`index_metrics`], refusing a file over `cap` bytes.
pub fn index_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<IndexCount>, InteropError> {
    index_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`index_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn index_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<IndexCount>, InteropError> {
    let p = variable(
        file,
        bytes,
        &[Field::Text, Field::Count, Field::Text, Field::Text],
    )?;
    Ok(Parsed {
        records: p
            .records
            .into_iter()
            .map(|(lane, tile, read, clusters)| IndexCount {
                lane,
                tile,
                read,
                clusters,
            })
            .collect(),
        trailing_bytes: p.trailing_bytes,
        warnings: p.warnings,
    })
}

/// ControlMetricsOut.bin, v1: (lane, tile, read, clusters) per control.
pub fn control_metrics(file: &Path) -> Result<Parsed<ControlCount>, InteropError> {
    control_metrics_capped(file, default_cap())
}

/// As [`control_metrics`], refusing a file over `cap` bytes.
pub fn control_metrics_capped(file: &Path, cap: u64) -> Result<Parsed<ControlCount>, InteropError> {
    control_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`control_metrics`], over the bytes of a file already read; `file` names it in errors and
/// warnings.
pub fn control_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<ControlCount>, InteropError> {
    let p = variable(file, bytes, &[Field::Text, Field::Text, Field::Count])?;
    Ok(Parsed {
        records: p
            .records
            .into_iter()
            .map(|(lane, tile, read, clusters)| ControlCount {
                lane,
                tile,
                read,
                clusters,
            })
            .collect(),
        trailing_bytes: p.trailing_bytes,
        warnings: p.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs() -> PathBuf {
        crate::sample_runs_dir()
    }

    #[test]
    fn reads_every_file_of_a_miseq_run() {
        let d = runs().join("miseq-2013-04-high-pf/InterOp");
        let tiles = tile_metrics(&d.join("TileMetricsOut.bin")).unwrap();
        assert_eq!(tiles.trailing_bytes, 0);
        assert!(tiles
            .records
            .iter()
            .any(|t| t.code == 100 && t.value > 100.0));
        let q = q_metrics(&d.join("QMetricsOut.bin")).unwrap();
        assert_eq!(q.records.len(), (1_776_546 - 2) / 206);
        assert!(q
            .records
            .iter()
            .all(|r| r.lane == 1 && r.cycle >= 1 && r.cycle <= 308));
        let ex = extraction_metrics(&d.join("ExtractionMetricsOut.bin")).unwrap();
        // 2013-04-12 .. 2013-04-14, from the .NET ticks.
        assert!(
            ex.records
                .iter()
                .all(|e| (1_365_700_000_000..1_366_100_000_000).contains(&e.time_ms)),
            "{:?}",
            ex.records[0].time_ms
        );
        assert!(
            corrected_intensity_metrics(&d.join("CorrectedIntMetricsOut.bin"))
                .unwrap()
                .records
                .len()
                > 1000
        );
        let idx = index_metrics(&d.join("IndexMetricsOut.bin")).unwrap();
        assert_eq!(idx.trailing_bytes, 0);
        assert!(idx.records.iter().map(|r| r.clusters as u64).sum::<u64>() > 100_000);
        assert_eq!(
            control_metrics(&d.join("ControlMetricsOut.bin"))
                .unwrap()
                .trailing_bytes,
            0
        );
    }

    #[test]
    fn reads_the_newer_nextseq_files() {
        let d = runs().join("nextseq-2016-04/InterOp");
        assert!(error_metrics(&d.join("ErrorMetricsOut.bin"))
            .unwrap()
            .records
            .iter()
            .any(|e| e.error_rate > 0.0));
        assert!(
            empirical_phasing_metrics(&d.join("EmpiricalPhasingMetricsOut.bin"))
                .unwrap()
                .records
                .len()
                > 1000
        );
        let tiles = tile_metrics(&d.join("TileMetricsOut.bin")).unwrap();
        let lanes: std::collections::BTreeSet<u16> = tiles.records.iter().map(|t| t.lane).collect();
        assert_eq!(lanes.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(
            image_metrics(&runs().join("miseq-2013-04-inconsistent/InterOp/ImageMetricsOut.bin"))
                .unwrap()
                .records
                .len()
                > 1000
        );
    }

    #[test]
    fn bad_files_give_typed_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("interop-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("TileMetricsOut.bin");
        std::fs::write(&f, [9u8, 10, 0, 0]).unwrap();
        let e = tile_metrics(&f).unwrap_err();
        assert!(matches!(
            e,
            InteropError::UnsupportedVersion { version: 9, .. }
        ));
        assert!(e.to_string().contains("TileMetricsOut.bin"));
        std::fs::write(&f, [2u8, 12]).unwrap();
        assert!(matches!(
            tile_metrics(&f).unwrap_err(),
            InteropError::RecordSize { found: 12, .. }
        ));
        std::fs::write(&f, [2u8]).unwrap();
        assert!(matches!(
            tile_metrics(&f).unwrap_err(),
            InteropError::NoHeader { .. }
        ));
        assert!(matches!(
            tile_metrics(&dir.join("absent.bin")).unwrap_err(),
            InteropError::Io { .. }
        ));
        // A half-written last record: complete records are read, the rest is reported.
        let mut b = vec![2u8, 10];
        b.extend([1, 0, 1, 0, 100, 0, 0, 0, 128, 63]);
        b.extend([1, 0, 1, 0]);
        std::fs::write(&f, &b).unwrap();
        let p = tile_metrics(&f).unwrap();
        assert_eq!((p.records.len(), p.trailing_bytes), (1, 4));
        assert_eq!(p.records[0].value, 1.0);
        assert_eq!(
            p.warnings,
            [InteropWarning::PartialRecord {
                file: f.clone(),
                bytes: 4,
                records: 1
            }]
        );
        assert!(p.warnings[0]
            .to_string()
            .ends_with("TileMetricsOut.bin: 4 trailing bytes of a partial record skipped (1 whole records used)"));
        // A header and nothing else.
        std::fs::write(&f, [2u8, 10]).unwrap();
        let p = tile_metrics(&f).unwrap();
        assert!(p.records.is_empty());
        assert_eq!(p.warnings, [InteropWarning::HeaderOnly { file: f.clone() }]);
        assert!(p.warnings[0]
            .to_string()
            .contains("header only, no records"));
        // Over the cap: refused before reading.
        assert!(matches!(
            tile_metrics_capped(&f, 1).unwrap_err(),
            InteropError::Refused(FileError::TooLarge { cap: 1, .. })
        ));
        // Same for a variable-length file cut inside a name.
        let full = std::fs::read(runs().join("miseq-2013-04-high-pf/InterOp/IndexMetricsOut.bin"))
            .unwrap();
        let cut = dir.join("IndexMetricsOut.bin");
        std::fs::write(&cut, &full[..full.len() - 7]).unwrap();
        let p = index_metrics(&cut).unwrap();
        assert!(p.trailing_bytes > 0 && !p.records.is_empty());
        assert!(matches!(
            p.warnings.as_slice(),
            [InteropWarning::PartialRecord { bytes, .. }] if *bytes == p.trailing_bytes
        ));
        std::fs::write(&cut, [1u8]).unwrap();
        assert!(matches!(
            index_metrics(&cut).unwrap().warnings.as_slice(),
            [InteropWarning::HeaderOnly { .. }]
        ));
        std::fs::write(&cut, [7u8]).unwrap();
        assert!(matches!(
            index_metrics(&cut).unwrap_err(),
            InteropError::UnsupportedVersion { version: 7, .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
