//! Readers of Illumina InterOp binary metric files: Tile v2 and v3, Q v4 to v7, Error v3,
//! Extraction v2 and v3, CorrectedInt v2 and v4, Image v1 and v3, EmpiricalPhasing v1 and v2,
//! Index v1 and v2, Control v1 and ExtendedTile v1 to v3. Each layout is described at its reader, with where in
//! Illumina's interop library (github.com/Illumina/interop) it was learnt. Every failure (no
//! header, unknown version, a record size the layout contradicts, a record that cannot be, such
//! as an unknown record kind or a tile number beyond 16 bits) is a typed [`InteropError`]
//! naming the file, and the file is not used. Files are read through [`crate::files::read_bounded`]: regular files only,
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
    /// Bytes of the header (version, record size and what the version adds).
    pub header_bytes: usize,
    /// Bytes of one record (0 for the variable-length formats).
    pub record_size: usize,
    /// Whole records in the file; differs from `records.len()` where one file record gives
    /// several values (TileMetricsOut v3) or none (its empty records).
    pub file_records: usize,
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
    fn u8(&mut self) -> u8 {
        let v = self.0[self.1];
        self.1 += 1;
        v
    }
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
    let (version, size) = header(file, bytes, 2)?;
    let expected = supported
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, s)| *s)
        .ok_or(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: supported_text,
        })?;
    check_size(file, version, size, usize::from(expected))?;
    records(file, bytes, 2, usize::from(size), |r, out| {
        out.push(parse(r, version));
        Ok(())
    })
}

/// One version of fixed-size records after the 2-byte header whose records can be refused.
fn fixed_fallible<T>(
    file: &Path,
    bytes: &[u8],
    version: u8,
    size: usize,
    parse: impl Fn(&mut Rec<'_>) -> Result<T, String>,
) -> Result<Parsed<T>, InteropError> {
    let (_, found) = header(file, bytes, 2)?;
    check_size(file, version, found, size)?;
    records(file, bytes, 2, size, |r, out| {
        out.push(parse(r)?);
        Ok(())
    })
}

/// The version and record size bytes, once the file holds at least `len` header bytes.
fn header(file: &Path, bytes: &[u8], len: usize) -> Result<(u8, u8), InteropError> {
    if bytes.len() < len.max(2) {
        return Err(InteropError::NoHeader {
            file: file.to_path_buf(),
        });
    }
    Ok((bytes[0], bytes[1]))
}

/// A record size in the header that disagrees with the layout is refused.
fn check_size(file: &Path, version: u8, found: u8, expected: usize) -> Result<(), InteropError> {
    if usize::from(found) != expected || expected == 0 {
        return Err(InteropError::RecordSize {
            file: file.to_path_buf(),
            version,
            found,
            expected: u8::try_from(expected).unwrap_or(u8::MAX),
        });
    }
    Ok(())
}

/// Whole records of `size` (> 0) bytes after `start` header bytes; a record `parse` rejects
/// makes the file [`InteropError::Inconsistent`] at that record's byte offset. `parse` reads
/// exactly `size` bytes (the layouts guarantee it; sizes are checked against them first).
fn records<T>(
    file: &Path,
    bytes: &[u8],
    start: usize,
    size: usize,
    mut parse: impl FnMut(&mut Rec<'_>, &mut Vec<T>) -> Result<(), String>,
) -> Result<Parsed<T>, InteropError> {
    let body = &bytes[start..];
    let n = body.len() / size;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = Rec(&body[i * size..(i + 1) * size], 0);
        parse(&mut r, &mut out).map_err(|detail| InteropError::Inconsistent {
            file: file.to_path_buf(),
            offset: start + i * size,
            detail,
        })?;
    }
    let trailing_bytes = body.len() % size;
    Ok(Parsed {
        warnings: short_file_warnings(file, n, trailing_bytes, body.len()),
        records: out,
        trailing_bytes,
        header_bytes: start,
        record_size: size,
        file_records: n,
    })
}

/// A 32-bit tile number (the newer layouts) as the 16 bits every tile number of a real flow
/// cell fits in (NovaSeq X: at most 5 digits).
fn tile16(tile: u32) -> Result<u16, String> {
    u16::try_from(tile).map_err(|_| format!("tile number {tile} out of range"))
}

/// .NET DateTime.ToBinary ticks (100 ns since 0001-01-01, kind in the top two bits) → Unix ms.
fn dotnet_ticks_to_unix_ms(raw: u64) -> i64 {
    const TICKS_AT_UNIX_EPOCH: i64 = 621_355_968_000_000_000;
    let ticks = (raw & 0x3FFF_FFFF_FFFF_FFFF) as i64;
    (ticks - TICKS_AT_UNIX_EPOCH) / 10_000
}

/// TileMetricsOut.bin, v2 (MiSeq, HiSeq, NextSeq 500: RTA 1 and 2) and v3 (RTA 3: NovaSeq,
/// NextSeq 1000/2000, iSeq, NovaSeq X). v3 values are given as the v2 codes the rest of the
/// collector knows: 102/103 clusters and PF clusters, 100/101 their densities, 300 + r - 1 the
/// % aligned of read r.
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
    let (version, size) = header(file, bytes, 2)?;
    match version {
        // v2 (Illumina interop, src/interop/model/metrics/tile_metric.cpp, generic_layout
        // <tile_metric, 2>): header version u8, record size u8 (10); record lane u16, tile u16,
        // code u16, value f32. Codes: 100 density, 101 PF density, 102 clusters, 103 PF
        // clusters, 200 + 2(r-1) / 201 + 2(r-1) phasing / prephasing of read r, 300 + r - 1
        // % aligned of read r.
        2 => fixed(file, bytes, &[(2, 10)], "2, 3", |r, _| TileMetric {
            lane: r.u16(),
            tile: r.u16(),
            code: r.u16(),
            value: r.f32(),
        }),
        // v3 (same file, generic_layout<tile_metric, 3>): header version u8, record size u8
        // (15), tile area in mm² f32; record lane u16, tile u32, kind u8, then by kind: 't'
        // clusters f32, PF clusters f32 (densities are these over the area); 'r' read u32,
        // % aligned f32; 0 an empty record whose 8 bytes are all zero. Any other kind is
        // refused, as Illumina's reader does.
        3 => {
            let header_len = 6;
            check_size(file, version, size, 15)?;
            if bytes.len() < header_len {
                return Err(InteropError::NoHeader {
                    file: file.to_path_buf(),
                });
            }
            let area = f32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
            records(file, bytes, header_len, 15, |r, out| {
                let lane = r.u16();
                let tile = tile16(r.u32())?;
                let mut push = |code: u16, value: f32| {
                    out.push(TileMetric {
                        lane,
                        tile,
                        code,
                        value,
                    })
                };
                match r.u8() {
                    b't' => {
                        let (clusters, pf) = (r.f32(), r.f32());
                        push(102, clusters);
                        push(103, pf);
                        // Illumina's reader leaves densities unknown without an area.
                        if area.is_finite() && area > 0.0 {
                            push(100, clusters / area);
                            push(101, pf / area);
                        }
                    }
                    b'r' => {
                        let read = r.u32();
                        let aligned = r.f32();
                        match u16::try_from(read) {
                            Ok(read @ 1..=99) => push(300 + read - 1, aligned),
                            _ => return Err(format!("read number {read} out of range")),
                        }
                    }
                    0 => {
                        if (r.u32(), r.u32()) != (0, 0) {
                            return Err("empty record with non-zero bytes".into());
                        }
                    }
                    kind => return Err(format!("unknown record kind {kind}")),
                }
                Ok(())
            })
        }
        _ => Err(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: "2, 3",
        }),
    }
}

/// QMetricsOut.bin, v4 to v7 (v4 MiSeq/HiSeq; v5, v6 RTA 2 with or without Q-score bins; v7
/// RTA 3). Binned histograms are given as the 50-bin histogram with each bin's count at its
/// representative Q score, which is how Illumina's reader counts %>=Q30 (a bin counts when its
/// value is >= 30).
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
    // Layouts from Illumina interop, src/interop/model/metrics/q_metric.cpp, generic_layout
    // <q_metric, 4..7>. Header: version u8, record size u8, then from v5: has-bins u8 and, when
    // set, bin count u8 (> 0) and the bins: v5, v6 all lower bounds, then all upper bounds, then
    // all values (u8 each); v7 (lower, upper, value) per bin. Record: lane u16, tile u16 (v7:
    // u32), cycle u16, then counts u32: v4, v5 50 (v5 binned: bin i's count at index value-1);
    // v6 50, or one per bin; v7 one per bin.
    let (version, size) = header(file, bytes, 2)?;
    if !(4..=7).contains(&version) {
        return Err(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: "4, 5, 6, 7",
        });
    }
    let mut at = 2;
    let mut bins: Vec<u8> = Vec::new();
    if version >= 5 {
        let no_header = || InteropError::NoHeader {
            file: file.to_path_buf(),
        };
        let has_bins = *bytes.get(at).ok_or_else(no_header)?;
        at += 1;
        if has_bins != 0 {
            let n = usize::from(*bytes.get(at).ok_or_else(no_header)?);
            at += 1;
            if n == 0 {
                return Err(InteropError::Inconsistent {
                    file: file.to_path_buf(),
                    offset: at - 1,
                    detail: "Q-score bins announced, zero bins given".into(),
                });
            }
            let table = bytes.get(at..at + 3 * n).ok_or_else(no_header)?;
            bins = if version == 7 {
                table.chunks(3).map(|b| b[2]).collect()
            } else {
                table[2 * n..].to_vec()
            };
            if let Some(bad) = bins.iter().find(|v| !(1..=50).contains(*v)) {
                return Err(InteropError::Inconsistent {
                    file: file.to_path_buf(),
                    offset: at,
                    detail: format!("Q-score bin value {bad} outside 1..50"),
                });
            }
            at += 3 * n;
        }
    }
    let id_bytes = if version == 7 { 8 } else { 6 };
    let counts = match version {
        4 | 5 => 50,
        6 if bins.is_empty() => 50,
        _ => bins.len(),
    };
    check_size(file, version, size, id_bytes + 4 * counts)?;
    records(file, bytes, at, usize::from(size), |r, out| {
        let lane = r.u16();
        let tile = if version == 7 {
            tile16(r.u32())?
        } else {
            r.u16()
        };
        let cycle = r.u16();
        let mut raw = [0u32; 50];
        for h in raw.iter_mut().take(counts) {
            *h = r.u32();
        }
        let histogram = if bins.is_empty() {
            raw
        } else {
            let mut h = [0u32; 50];
            for (i, v) in bins.iter().enumerate() {
                let v = usize::from(*v - 1);
                // v5 stores the full histogram; the bins pick their values' counts from it.
                h[v] = h[v].saturating_add(if version == 5 { raw[v] } else { raw[i] });
            }
            h
        };
        out.push(QMetric {
            lane,
            tile,
            cycle,
            histogram,
        });
        Ok(())
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

/// ExtractionMetricsOut.bin, v2 (RTA 1, 2) and v3 (RTA 3). v3 holds one to four channels (two
/// on the two-channel instruments) and no time; missing channels and the time are 0.
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
    let (version, size) = header(file, bytes, 2)?;
    match version {
        // v2 (Illumina interop, src/interop/model/metrics/extraction_metric.cpp, generic_layout
        // <extraction_metric, 2>): header version u8, record size u8 (38); record lane u16,
        // tile u16, cycle u16, FWHM f32 × 4, max intensity u16 × 4, time u64 (.NET ticks).
        2 => fixed(file, bytes, &[(2, 38)], "2, 3", |r, _| {
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
        }),
        // v3 (generic_layout<extraction_metric, 3>): header version u8, record size u8,
        // channel count u8 (> 0); record lane u16, tile u32, cycle u16, FWHM f32 × channels,
        // max intensity u16 × channels.
        3 => {
            let channels = *bytes.get(2).ok_or(InteropError::NoHeader {
                file: file.to_path_buf(),
            })?;
            if !(1..=4).contains(&channels) {
                return Err(InteropError::Inconsistent {
                    file: file.to_path_buf(),
                    offset: 2,
                    detail: format!("{channels} channels (1 to 4 known)"),
                });
            }
            let n = usize::from(channels);
            check_size(file, version, size, 8 + 6 * n)?;
            records(file, bytes, 3, usize::from(size), |r, out| {
                let lane = r.u16();
                let tile = tile16(r.u32())?;
                let cycle = r.u16();
                let (mut fwhm, mut intensity) = ([0f32; 4], [0u16; 4]);
                for f in fwhm.iter_mut().take(n) {
                    *f = r.f32();
                }
                for i in intensity.iter_mut().take(n) {
                    *i = r.u16();
                }
                out.push(ExtractionMetric {
                    lane,
                    tile,
                    cycle,
                    fwhm,
                    intensity,
                    time_ms: 0,
                });
                Ok(())
            })
        }
        _ => Err(InteropError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported: "2, 3",
        }),
    }
}

/// CorrectedIntMetricsOut.bin, v2 (RTA 1, 2) and v4 (RTA 3: base calls only).
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
    let (version, _) = header(file, bytes, 2)?;
    if version == 4 {
        // v4 (Illumina interop, src/interop/model/metrics/corrected_intensity_metric.cpp,
        // generic_layout<corrected_intensity_metric, 4>): header version u8, record size u8
        // (28); record lane u16, tile u32, cycle u16, base calls u32 × 5 (no call, A, C, G, T).
        // No intensities and no signal to noise: those are 0 here.
        return fixed_fallible(file, bytes, 4, 28, |r| {
            let (lane, tile, cycle) = (r.u16(), tile16(r.u32())?, r.u16());
            let mut base_calls = [0f32; 5];
            for b in base_calls.iter_mut() {
                *b = r.u32() as f32;
            }
            Ok(CorrectedIntMetric {
                lane,
                tile,
                cycle,
                average_intensity: 0,
                corrected: [0; 4],
                called: [0; 4],
                base_calls,
                signal_to_noise: 0.0,
            })
        });
    }
    // v2 (same file, generic_layout<corrected_intensity_metric, 2>): header version u8, record
    // size u8 (48); record lane u16, tile u16, cycle u16, average intensity u16, corrected
    // intensity u16 × 4, called intensity u16 × 4, base calls f32 × 5, signal to noise f32.
    fixed(file, bytes, &[(2, 48)], "2, 4", |r, _| {
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

/// ImageMetricsOut.bin, v1 and v3 (RTA 3, per-channel contrast).
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
    let (version, size) = header(file, bytes, 2)?;
    if version == 3 {
        // v3 (Illumina interop, src/interop/model/metrics/image_metric.cpp, generic_layout
        // <image_metric, 3>): header version u8, record size u8, channel count u8 (> 0);
        // record lane u16, tile u32, cycle u16, min contrast u16 × channels, max contrast u16
        // × channels. Given as one value per channel, as v1 writes them.
        let channels = *bytes.get(2).ok_or(InteropError::NoHeader {
            file: file.to_path_buf(),
        })?;
        if channels == 0 || channels > 4 {
            return Err(InteropError::Inconsistent {
                file: file.to_path_buf(),
                offset: 2,
                detail: format!("{channels} channels (1 to 4 known)"),
            });
        }
        let n = usize::from(channels);
        check_size(file, version, size, 8 + 4 * n)?;
        return records(file, bytes, 3, usize::from(size), |r, out| {
            let (lane, tile, cycle) = (r.u16(), tile16(r.u32())?, r.u16());
            let min: Vec<u16> = (0..n).map(|_| r.u16()).collect();
            let max: Vec<u16> = (0..n).map(|_| r.u16()).collect();
            for (channel, (lo, hi)) in min.into_iter().zip(max).enumerate() {
                out.push(ImageMetric {
                    lane,
                    tile,
                    cycle,
                    channel: channel as u16,
                    min_contrast: lo,
                    max_contrast: hi,
                });
            }
            Ok(())
        });
    }
    // v1 (generic_layout<image_metric, 1>): header version u8, record size u8 (12); record
    // lane u16, tile u16, cycle u16, channel u16, min contrast u16, max contrast u16.
    fixed(file, bytes, &[(1, 12)], "1, 3", |r, _| ImageMetric {
        lane: r.u16(),
        tile: r.u16(),
        cycle: r.u16(),
        channel: r.u16(),
        min_contrast: r.u16(),
        max_contrast: r.u16(),
    })
}

/// EmpiricalPhasingMetricsOut.bin, v1 (RTA 2) and v2 (RTA 3).
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
    // Illumina interop, src/interop/model/metrics/phasing_metric.cpp, generic_layout
    // <phasing_metric, 1 and 2>: header version u8, record size u8 (v1 14, v2 16); record lane
    // u16, tile u16 (v2: u32), cycle u16, phasing weight f32, prephasing weight f32.
    let (version, size) = header(file, bytes, 2)?;
    let expected = match version {
        1 => 14,
        2 => 16,
        _ => {
            return Err(InteropError::UnsupportedVersion {
                file: file.to_path_buf(),
                version,
                supported: "1, 2",
            })
        }
    };
    check_size(file, version, size, expected)?;
    records(file, bytes, 2, expected, |r, out| {
        let lane = r.u16();
        let tile = if version == 2 {
            tile16(r.u32())?
        } else {
            r.u16()
        };
        out.push(EmpiricalPhasingMetric {
            lane,
            tile,
            cycle: r.u16(),
            phasing: r.f32(),
            prephasing: r.f32(),
        });
        Ok(())
    })
}

/// Occupancy of a tile on a patterned flow cell (ExtendedTileMetricsOut v1 to v3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtendedTileMetric {
    pub lane: u16,
    pub tile: u16,
    /// Clusters in occupied wells.
    pub occupied: f32,
    /// Upper-left corner of the tile in the flow cell's image coordinates (v3).
    pub upper_left: Option<(f32, f32)>,
}

/// ExtendedTileMetricsOut.bin, v1 to v3 (NovaSeq 6000, NovaSeq X, HiSeq X/4000).
pub fn extended_tile_metrics(file: &Path) -> Result<Parsed<ExtendedTileMetric>, InteropError> {
    extended_tile_metrics_capped(file, default_cap())
}

/// As [`extended_tile_metrics`], refusing a file over `cap` bytes.
pub fn extended_tile_metrics_capped(
    file: &Path,
    cap: u64,
) -> Result<Parsed<ExtendedTileMetric>, InteropError> {
    extended_tile_metrics_from_bytes(file, &read(file, cap)?)
}

/// As [`extended_tile_metrics`], over the bytes of a file already read; `file` names it in
/// errors and warnings.
pub fn extended_tile_metrics_from_bytes(
    file: &Path,
    bytes: &[u8],
) -> Result<Parsed<ExtendedTileMetric>, InteropError> {
    // Illumina interop, src/interop/model/metrics/extended_tile_metric.cpp, generic_layout
    // <extended_tile_metric, 1..3>: header version u8, record size u8. Record v1 (10): lane
    // u16, tile u16, code u16 (0: occupied clusters; others refused), value f32 (NaN read as
    // 0); v2 (10): lane u16, tile u32, occupied clusters f32; v3 (18): as v2, then the tile's
    // upper-left x f32, y f32.
    let (version, size) = header(file, bytes, 2)?;
    let expected = match version {
        1 | 2 => 10,
        3 => 18,
        _ => {
            return Err(InteropError::UnsupportedVersion {
                file: file.to_path_buf(),
                version,
                supported: "1, 2, 3",
            })
        }
    };
    check_size(file, version, size, expected)?;
    records(file, bytes, 2, expected, |r, out| {
        let lane = r.u16();
        let (tile, occupied) = if version == 1 {
            let tile = r.u16();
            let code = r.u16();
            if code != 0 {
                return Err(format!("unknown extended tile code {code}"));
            }
            let v = r.f32();
            (tile, if v.is_nan() { 0.0 } else { v })
        } else {
            (tile16(r.u32())?, r.f32())
        };
        let upper_left = (version == 3).then(|| (r.f32(), r.f32()));
        out.push(ExtendedTileMetric {
            lane,
            tile,
            occupied,
            upper_left,
        });
        Ok(())
    })
}

/// Variable-length records after a 1-byte version header: each starts with lane, tile, read
/// (u16) and continues with length-prefixed strings and a count, in `layout` order.
fn variable(
    file: &Path,
    bytes: &[u8],
    layout: &[Field],
    supported: &'static str,
) -> Result<Parsed<(u16, u16, u16, u32)>, InteropError> {
    if bytes.is_empty() {
        return Err(InteropError::NoHeader {
            file: file.to_path_buf(),
        });
    }
    // Version 2 (IndexMetricsOut only) widens the tile to 32 bits and the count to 64.
    let wide = match bytes[0] {
        1 => false,
        2 if supported.contains('2') => true,
        version => {
            return Err(InteropError::UnsupportedVersion {
                file: file.to_path_buf(),
                version,
                supported,
            })
        }
    };
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
            for (i, h) in head.iter_mut().enumerate() {
                let width = if wide && i == 1 { 4 } else { 2 };
                let Some(p) = need(width, &mut at) else {
                    complete = false;
                    break 'record;
                };
                let mut v = [0u8; 4];
                v[..width].copy_from_slice(&bytes[p..p + width]);
                *h = u16::try_from(u32::from_le_bytes(v)).map_err(|_| {
                    InteropError::Inconsistent {
                        file: file.to_path_buf(),
                        offset: start,
                        detail: "tile number beyond 16 bits".into(),
                    }
                })?;
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
                        let width = if wide { 8 } else { 4 };
                        let Some(p) = need(width, &mut at) else {
                            complete = false;
                            break 'record;
                        };
                        let mut v = [0u8; 8];
                        v[..width].copy_from_slice(&bytes[p..p + width]);
                        count = u32::try_from(u64::from_le_bytes(v)).map_err(|_| {
                            InteropError::Inconsistent {
                                file: file.to_path_buf(),
                                offset: start,
                                detail: "cluster count beyond 32 bits".into(),
                            }
                        })?;
                    }
                }
            }
        }
        if !complete {
            let trailing_bytes = bytes.len() - start;
            return Ok(Parsed {
                warnings: short_file_warnings(file, records.len(), trailing_bytes, bytes.len() - 1),
                file_records: records.len(),
                records,
                trailing_bytes,
                header_bytes: 1,
                record_size: 0,
            });
        }
        records.push((head[0], head[1], head[2], count));
    }
    Ok(Parsed {
        warnings: short_file_warnings(file, records.len(), 0, bytes.len() - 1),
        file_records: records.len(),
        records,
        trailing_bytes: 0,
        header_bytes: 1,
        record_size: 0,
    })
}

enum Field {
    Text,
    Count,
}

/// IndexMetricsOut.bin, v1 and v2 (bcl-convert, RTA 3): (lane, tile, read, clusters) per index;
/// names are not kept.
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
    // Illumina interop, src/interop/model/metrics/index_metric.cpp, generic_layout
    // <index_metric, 1 and 2>: header version u8 only; records of variable length: lane u16,
    // tile u16 (v2: u32), read u16, index name (u16 length + bytes), clusters u32 (v2: u64),
    // sample name, project name (each u16 length + bytes).
    let p = variable(
        file,
        bytes,
        &[Field::Text, Field::Count, Field::Text, Field::Text],
        "1, 2",
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
        header_bytes: p.header_bytes,
        record_size: p.record_size,
        file_records: p.file_records,
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
    // Illumina's interop does not read this file; the layout is the v1 files of real MiSeq
    // runs: header version u8; records lane u16, tile u16, read u16, control name, index name
    // (u16 length + bytes each), clusters u32.
    let p = variable(file, bytes, &[Field::Text, Field::Text, Field::Count], "1")?;
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
        header_bytes: p.header_bytes,
        record_size: p.record_size,
        file_records: p.file_records,
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

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn newer_layouts_read_and_malformed_ones_are_typed_errors() {
        let f = Path::new("InterOp/X.bin");
        // Tile v3: area 2.0 mm²; a tile record, a read record, an empty record.
        let tile = le(&[
            &[3, 15],
            &2.0f32.to_le_bytes(),
            &[1, 0],
            &2101u32.to_le_bytes(),
            b"t",
            &100.0f32.to_le_bytes(),
            &80.0f32.to_le_bytes(),
            &[1, 0],
            &2101u32.to_le_bytes(),
            b"r",
            &1u32.to_le_bytes(),
            &97.5f32.to_le_bytes(),
            &[0; 15],
        ]);
        let p = tile_metrics_from_bytes(f, &tile).unwrap();
        assert_eq!((p.file_records, p.header_bytes, p.record_size), (3, 6, 15));
        let codes: Vec<(u16, f32)> = p.records.iter().map(|t| (t.code, t.value)).collect();
        assert_eq!(
            codes,
            [
                (102, 100.0),
                (103, 80.0),
                (100, 50.0),
                (101, 40.0),
                (300, 97.5)
            ]
        );
        let mut bad = tile.clone();
        bad[12] = b'x';
        assert!(matches!(
            tile_metrics_from_bytes(f, &bad),
            Err(InteropError::Inconsistent { offset: 6, .. })
        ));
        let mut big = tile.clone();
        big[8..12].copy_from_slice(&70_000u32.to_le_bytes());
        assert!(matches!(
            tile_metrics_from_bytes(f, &big),
            Err(InteropError::Inconsistent { detail, .. }) if detail.contains("tile number 70000")
        ));
        assert!(matches!(
            tile_metrics_from_bytes(f, &[3, 15, 0]),
            Err(InteropError::NoHeader { .. })
        ));
        assert!(matches!(
            tile_metrics_from_bytes(f, &[3, 10, 0, 0, 0, 0]),
            Err(InteropError::RecordSize { expected: 15, .. })
        ));
        // Q v7 with three bins (values 14, 21, 38): counts land at their values.
        let q7 = le(&[
            &[7, 20, 1, 3],
            &[2, 19, 14, 20, 24, 21, 25, 40, 38],
            &[1, 0],
            &1101u32.to_le_bytes(),
            &[5, 0],
            &10u32.to_le_bytes(),
            &20u32.to_le_bytes(),
            &70u32.to_le_bytes(),
        ]);
        let q = q_metrics_from_bytes(f, &q7).unwrap();
        let h = &q.records[0].histogram;
        assert_eq!((q.records[0].tile, q.records[0].cycle), (1101, 5));
        assert_eq!(
            (h[13], h[20], h[37], h.iter().sum::<u32>()),
            (10, 20, 70, 100)
        );
        // Q v6 binned: lowers, then uppers, then values.
        let q6 = le(&[
            &[6, 14, 1, 2],
            &[2, 30, 29, 40, 20, 35],
            &[1, 0, 1, 0, 1, 0],
            &3u32.to_le_bytes(),
            &4u32.to_le_bytes(),
        ]);
        let h = q_metrics_from_bytes(f, &q6).unwrap().records[0].histogram;
        assert_eq!((h[19], h[34]), (3, 4));
        // Q v6 unbinned is v4's record.
        let mut q6u = vec![6, 206, 0];
        q6u.extend([1, 0, 1, 0, 1, 0]);
        q6u.extend((1..=50u32).flat_map(|i| i.to_le_bytes()));
        assert_eq!(
            q_metrics_from_bytes(f, &q6u).unwrap().records[0].histogram[49],
            50
        );
        // Q bins: a value beyond Q50, zero bins, a table cut short, a size that disagrees.
        let mut b = q7.clone();
        b[6] = 60;
        assert!(matches!(
            q_metrics_from_bytes(f, &b),
            Err(InteropError::Inconsistent { .. })
        ));
        assert!(matches!(
            q_metrics_from_bytes(f, &[7, 8, 1, 0]),
            Err(InteropError::Inconsistent { .. })
        ));
        assert!(matches!(
            q_metrics_from_bytes(f, &q7[..7]),
            Err(InteropError::NoHeader { .. })
        ));
        let mut b = q7.clone();
        b[1] = 24;
        assert!(matches!(
            q_metrics_from_bytes(f, &b),
            Err(InteropError::RecordSize {
                found: 24,
                expected: 20,
                ..
            })
        ));
        assert!(matches!(
            q_metrics_from_bytes(f, &[8, 20]),
            Err(InteropError::UnsupportedVersion { version: 8, .. })
        ));
        // Extraction v3, two channels.
        let x3 = le(&[
            &[3, 20, 2],
            &[2, 0],
            &2201u32.to_le_bytes(),
            &[7, 0],
            &2.5f32.to_le_bytes(),
            &3.0f32.to_le_bytes(),
            &[0x10, 0x27, 0x20, 0x4e],
        ]);
        let x = extraction_metrics_from_bytes(f, &x3).unwrap().records[0];
        assert_eq!((x.lane, x.tile, x.cycle), (2, 2201, 7));
        assert_eq!(
            (x.fwhm, x.intensity),
            ([2.5, 3.0, 0.0, 0.0], [10_000, 20_000, 0, 0])
        );
        assert!(matches!(
            extraction_metrics_from_bytes(f, &[3, 8, 0]),
            Err(InteropError::Inconsistent { .. })
        ));
        assert!(matches!(
            extraction_metrics_from_bytes(f, &[3, 38, 4]),
            Err(InteropError::RecordSize { expected: 32, .. })
        ));
        // Empirical phasing v2 and extended tile v1..v3.
        let ph = le(&[
            &[2, 16, 1, 0],
            &1101u32.to_le_bytes(),
            &[3, 0],
            &0.1f32.to_le_bytes(),
            &0.2f32.to_le_bytes(),
        ]);
        let r = empirical_phasing_metrics_from_bytes(f, &ph)
            .unwrap()
            .records[0];
        assert_eq!((r.tile, r.cycle, r.phasing), (1101, 3, 0.1));
        let e1 = le(&[&[1, 10, 1, 0, 5, 0, 0, 0], &f32::NAN.to_le_bytes()]);
        assert_eq!(
            extended_tile_metrics_from_bytes(f, &e1).unwrap().records[0].occupied,
            0.0
        );
        let mut e1bad = e1.clone();
        e1bad[6] = 1;
        assert!(matches!(
            extended_tile_metrics_from_bytes(f, &e1bad),
            Err(InteropError::Inconsistent { .. })
        ));
        let e3 = le(&[
            &[3, 18, 1, 0],
            &1101u32.to_le_bytes(),
            &9.0f32.to_le_bytes(),
            &1.0f32.to_le_bytes(),
            &2.0f32.to_le_bytes(),
            &[1, 0],
        ]);
        let p = extended_tile_metrics_from_bytes(f, &e3).unwrap();
        assert_eq!(p.records[0].upper_left, Some((1.0, 2.0)));
        assert_eq!(p.trailing_bytes, 2);
        assert!(matches!(
            extended_tile_metrics_from_bytes(f, &[4, 18]),
            Err(InteropError::UnsupportedVersion { version: 4, .. })
        ));
        // CorrectedInt v4: base calls only.
        let ci = le(&[
            &[4, 28, 1, 0],
            &1101u32.to_le_bytes(),
            &[2, 0],
            &[5u32, 10, 20, 30, 40].map(u32::to_le_bytes).concat(),
        ]);
        let c = corrected_intensity_metrics_from_bytes(f, &ci)
            .unwrap()
            .records[0];
        assert_eq!(
            (c.tile, c.base_calls),
            (1101, [5.0, 10.0, 20.0, 30.0, 40.0])
        );
        assert!(matches!(
            corrected_intensity_metrics_from_bytes(f, &[4, 48]),
            Err(InteropError::RecordSize { expected: 28, .. })
        ));
        // Image v3, two channels: one value per channel.
        let im = le(&[
            &[3, 16, 2, 1, 0],
            &1101u32.to_le_bytes(),
            &[9, 0, 1, 0, 2, 0, 3, 0, 4, 0],
        ]);
        let v = image_metrics_from_bytes(f, &im).unwrap().records;
        assert_eq!(
            v.iter()
                .map(|i| (i.channel, i.min_contrast, i.max_contrast))
                .collect::<Vec<_>>(),
            [(0, 1, 3), (1, 2, 4)]
        );
        assert!(matches!(
            image_metrics_from_bytes(f, &[3, 8, 0]),
            Err(InteropError::Inconsistent { .. })
        ));
        // Index v2: 32-bit tile, 64-bit count, names skipped.
        let ix = le(&[
            &[2, 1, 0],
            &1101u32.to_le_bytes(),
            &[1, 0, 2, 0],
            b"AC",
            &7u64.to_le_bytes(),
            &[1, 0],
            b"s",
            &[0, 0],
        ]);
        let p = index_metrics_from_bytes(f, &ix).unwrap();
        assert_eq!((p.records[0].tile, p.records[0].clusters), (1101, 7));
        let mut big = ix.clone();
        big[3..7].copy_from_slice(&70_000u32.to_le_bytes());
        assert!(matches!(
            index_metrics_from_bytes(f, &big),
            Err(InteropError::Inconsistent { .. })
        ));
        assert!(matches!(
            control_metrics_from_bytes(f, &[2]),
            Err(InteropError::UnsupportedVersion { version: 2, .. })
        ));
    }
}
