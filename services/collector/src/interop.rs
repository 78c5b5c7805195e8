//! Readers of Illumina InterOp binary metric files, for the format versions found in real run
//! folders: Tile v2, Q v4, Error v3, Extraction v2, CorrectedInt v2, Image v1, EmpiricalPhasing v1,
//! Index v1 and Control v1. Every failure is a typed [`InteropError`] naming the file; a file
//! whose last record is half-written (the instrument is still writing it) yields the complete
//! records and reports how many bytes were left over.
//!
//! Privacy: IndexMetricsOut.bin holds sample and project names. Its reader keeps only the lane,
//! tile, read and cluster count of each record; the names are skipped byte-wise and never held
//! in a string.

use std::path::{Path, PathBuf};

/// Why an InterOp file could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InteropError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {message}")]
    Io { file: PathBuf, message: String },
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

/// Records read from a file, and the bytes of a half-written last record left for later.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub records: Vec<T>,
    pub trailing_bytes: usize,
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

fn read(file: &Path) -> Result<Vec<u8>, InteropError> {
    std::fs::read(file).map_err(|e| InteropError::Io {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
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
    Ok(Parsed {
        records,
        trailing_bytes: body.len() % size as usize,
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
    let b = read(file)?;
    fixed(file, &b, &[(2, 10)], "2", |r, _| TileMetric {
        lane: r.u16(),
        tile: r.u16(),
        code: r.u16(),
        value: r.f32(),
    })
}

/// QMetricsOut.bin, v4.
pub fn q_metrics(file: &Path) -> Result<Parsed<QMetric>, InteropError> {
    let b = read(file)?;
    fixed(file, &b, &[(4, 206)], "4", |r, _| {
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
    let b = read(file)?;
    fixed(file, &b, &[(3, 30)], "3", |r, _| ErrorMetric {
        lane: r.u16(),
        tile: r.u16(),
        cycle: r.u16(),
        error_rate: r.f32(),
    })
}

/// ExtractionMetricsOut.bin, v2.
pub fn extraction_metrics(file: &Path) -> Result<Parsed<ExtractionMetric>, InteropError> {
    let b = read(file)?;
    fixed(file, &b, &[(2, 38)], "2", |r, _| {
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
    let b = read(file)?;
    fixed(file, &b, &[(2, 48)], "2", |r, _| {
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
    let b = read(file)?;
    fixed(file, &b, &[(1, 12)], "1", |r, _| ImageMetric {
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
    let b = read(file)?;
    fixed(file, &b, &[(1, 14)], "1", |r, _| EmpiricalPhasingMetric {
        lane: r.u16(),
        tile: r.u16(),
        cycle: r.u16(),
        phasing: r.f32(),
        prephasing: r.f32(),
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
            return Ok(Parsed {
                records,
                trailing_bytes: bytes.len() - start,
            });
        }
        records.push((head[0], head[1], head[2], count));
    }
    Ok(Parsed {
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
    let b = read(file)?;
    let p = variable(
        file,
        &b,
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
    })
}

/// ControlMetricsOut.bin, v1: (lane, tile, read, clusters) per control.
pub fn control_metrics(file: &Path) -> Result<Parsed<ControlCount>, InteropError> {
    let b = read(file)?;
    let p = variable(file, &b, &[Field::Text, Field::Text, Field::Count])?;
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
        // Same for a variable-length file cut inside a name.
        let full = std::fs::read(runs().join("miseq-2013-04-high-pf/InterOp/IndexMetricsOut.bin"))
            .unwrap();
        let cut = dir.join("IndexMetricsOut.bin");
        std::fs::write(&cut, &full[..full.len() - 7]).unwrap();
        let p = index_metrics(&cut).unwrap();
        assert!(p.trailing_bytes > 0 && !p.records.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
