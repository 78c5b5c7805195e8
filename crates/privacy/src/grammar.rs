//! Grammars for the identifiers that may cross the privacy boundary, each as narrow as the real
//! values. Hand-written parsers over bytes: no allocation, no regex, a few dozen byte compares per
//! value, so the enforcer stays well under a microsecond per record.
//!
//! Every grammar is documented as field → grammar → real examples → where the examples come from.
//! Sources cited below:
//!
//! - **[runs]** `/work/shared/data/illumina-runs/` (real run folders, from the public repository
//!   `nthmost/illuminate`, folder `sampledata/`): MiSeq M00612, M00630, M00169 (2013–2014) and
//!   NextSeq 500 NS500318 (2016).
//! - **[interop]** `Illumina/interop`, `src/tests/interop/run/parameters_test.cpp` and
//!   `info_test.cpp` (Illumina's own test data: MiSeq, HiSeq, NextSeq 500, iSeq 100,
//!   NextSeq 1000/2000 RunParameters.xml).
//! - **[viral-ngs]** `broadinstitute/viral-ngs`, `tests/input/TestRunInfo/RunInfo-*.xml` (real
//!   RunInfo.xml of MiSeq, NextSeq 550, NextSeq 1000/2000, NovaSeq 6000, NovaSeq X Plus) and
//!   `src/viral_ngs/core/illumina_utils.py` (`flowcell_to_machine_model_and_chemistry`, a table of
//!   flow-cell id suffixes per instrument and chemistry).
//! - **[taca]** `SciLifeLab/TACA`, test `tests/analysis/test_analysis.py` (a NovaSeq X Plus
//!   RunParameters.xml and RunInfo.xml, run `20240202_LH00217_0044_A2255J2LT3`).
//! - **[fcinfo]** a public Go test file (package `fcinfo`, function `TestParseRunParamsXml`,
//!   library id 38961769888) holding a real NovaSeq 6000 RunParameters.xml (A00494, 2018).
//! - **[ngl]** a public Java LIMS importer (library ids 33342426049, 28178426833) quoting the
//!   `RfidsInfo` block of a NovaSeq 6000 RunParameters.xml in a comment.
//! - **[osu]** <https://cqls.oregonstate.edu/core/sequencing/illumina-nextseq-2000/illumina-hts-output-synopsis>
//!   (run folder `170726_J00107_0144_AHK2KVBBXX` of a HiSeq 3000).
//! - **[sheets]** public sample-sheet / run-folder paths in code (library ids 2700317769,
//!   6059414844, 6490584, 36291354399, 28188322614): MiniSeq MN00302, NextSeq 550 NB551068,
//!   NB502004, NB501093, NB501961.
//! - **[sim]** this workspace's simulator, `services/simulator/src/lib.rs` (synthetic forms).
//! - **[issue]** issue 9 of this project, which quotes real HiSeq X/4000 configuration records.
//!
//! Every grammar refuses dates, phone numbers, national ids, e-mail addresses, names, sample and
//! patient ids, DNA, paths and free text, also when glued to a real value with `_ - . : /`.
//! Case matters as in the real data.

/// Instrument model family, as told by the serial number's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SerialFamily {
    /// MiSeq and MiSeqDx: `M` + 5 digits.
    MiSeq,
    /// MiniSeq: `MN` + 5 digits.
    MiniSeq,
    /// NextSeq 500/550: `NS` or `NB` + 6 digits.
    NextSeq500,
    /// NextSeq 1000/2000: `VH` + 5 digits.
    NextSeq2000,
    /// NovaSeq 6000: `A` + 5 digits.
    NovaSeq6000,
    /// NovaSeq X / X Plus: `LH` + 5 digits.
    NovaSeqX,
    /// iSeq 100: `FS` + 8 digits.
    ISeq100,
    /// HiSeq 2500/1500: `D` + 5 digits.
    HiSeq2500,
    /// HiSeq 2000/2500 (older numbering, `SN` + digits): a label only; such serials are not
    /// accepted by [`instrument_serial`] and cross as pseudonyms.
    HiSeq2000,
    /// HiSeq 3000: `J` + 5 digits.
    HiSeq3000,
    /// HiSeq 4000: `K` + 5 digits.
    HiSeq4000,
    /// HiSeq X: `E` + 5 digits.
    HiSeqX,
}

impl SerialFamily {
    /// Stable upper-case label, safe for metrics and downstream labels.
    pub fn label(self) -> &'static str {
        match self {
            SerialFamily::MiSeq => "MISEQ",
            SerialFamily::MiniSeq => "MINISEQ",
            SerialFamily::NextSeq500 => "NEXTSEQ_500",
            SerialFamily::NextSeq2000 => "NEXTSEQ_2000",
            SerialFamily::NovaSeq6000 => "NOVASEQ_6000",
            SerialFamily::NovaSeqX => "NOVASEQ_X",
            SerialFamily::ISeq100 => "ISEQ_100",
            SerialFamily::HiSeq2500 => "HISEQ_2500",
            SerialFamily::HiSeq2000 => "HISEQ_2000",
            SerialFamily::HiSeq3000 => "HISEQ_3000",
            SerialFamily::HiSeq4000 => "HISEQ_4000",
            SerialFamily::HiSeqX => "HISEQ_X",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small byte helpers.

fn digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

fn upper_alnum(b: &[u8]) -> bool {
    b.iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn num(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |n, c| {
        n.saturating_mul(10)
            .saturating_add(u32::from(c.wrapping_sub(b'0')))
    })
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// Whether `y-m-d` is a real calendar date.
fn valid_date(y: u32, m: u32, d: u32) -> bool {
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => return false,
    };
    d >= 1 && d <= days
}

/// Whether 8 digits read as a date in 1900–2099 in any common order (YYYYMMDD, YYYYDDMM,
/// DDMMYYYY, MMDDYYYY). Such a value never parses as a lot.
fn eight_digit_date(b: &[u8]) -> bool {
    if b.len() != 8 || !digits(b) {
        return false;
    }
    let year_ok = |y: u32| (1900..=2099).contains(&y);
    let (y, m, d) = (num(&b[..4]), num(&b[4..6]), num(&b[6..]));
    // YYYYDDMM is rare outside dates of birth, so only birth years count there.
    if year_ok(y) && valid_date(y, m, d) || (1900..=2029).contains(&y) && valid_date(y, d, m) {
        return true;
    }
    let (a, c, y) = (num(&b[..2]), num(&b[2..4]), num(&b[4..]));
    year_ok(y) && (valid_date(y, c, a) || valid_date(y, a, c))
}

// ---------------------------------------------------------------------------------------------
// Instrument serial.

/// `instrument_serial`: the instrument serial number, per model family.
///
/// | family | grammar | real examples | source |
/// |---|---|---|---|
/// | MiSeq / MiSeqDx | `M` + 5 digits | M00612, M00630, M00169, M00903, M04004 | [runs], [interop], [viral-ngs] |
/// | MiniSeq | `MN` + 5 digits | MN00302 | [sheets] |
/// | NextSeq 500/550 | `NS` or `NB` + `5` + `0`/`5` + 4 digits | NS500318, NS500128, NS500179, NB552060, NB551068, NB502004, NB501093, NB501961 | [runs], [interop], [viral-ngs], [sheets] |
/// | NextSeq 1000/2000 | `VH` + 5 digits | VH00120, VH00257, VH01619 | [interop], [fcinfo], [viral-ngs] |
/// | NovaSeq 6000 | `A` + 5 digits | A00494, A00198 | [fcinfo], [viral-ngs] |
/// | NovaSeq X | `LH` + 5 digits | LH00217, LH00118 | [taca], [viral-ngs] |
/// | iSeq 100 | `FS1` + 7 digits, not a date | FS10000106 | [interop] |
/// | HiSeq 3000 | `J` + 5 digits | J00107 | [osu] |
/// | HiSeq 2500/1500 | `D` + 5 digits | — (not verified against a real file) | family convention |
/// | HiSeq 2000 | not accepted: `SN` + 3–7 digits is a phone number's or record number's shape, and no real one was found | — |
/// | HiSeq 4000 | `K` + 5 digits | — (not verified) | family convention |
/// | HiSeq X | `E` + 5 digits | — (not verified) | family convention |
///
/// The simulator's serials (`A00100`, `VH00200`, `M00300`, `FS10000400`, [sim]) fall in these
/// families. MiSeq i100 serials are not accepted: no real one was found to verify a grammar; such
/// a serial becomes a keyed pseudonym.
pub fn instrument_serial(s: &str) -> Option<SerialFamily> {
    let b = s.as_bytes();
    let tail = |prefix: usize, n: usize| b.len() == prefix + n && digits(&b[prefix..]);
    match b {
        [b'M', b'N', ..] if tail(2, 5) => Some(SerialFamily::MiniSeq),
        [b'M', ..] if tail(1, 5) => Some(SerialFamily::MiSeq),
        // NS/NB + 5 + 0 or 5 + 4 digits: the 500/501/502/550/551/552 series seen.
        [b'N', b'S' | b'B', b'5', b'0' | b'5', ..] if tail(2, 6) => Some(SerialFamily::NextSeq500),
        [b'V', b'H', ..] if tail(2, 5) => Some(SerialFamily::NextSeq2000),
        [b'A', ..] if tail(1, 5) => Some(SerialFamily::NovaSeq6000),
        [b'L', b'H', ..] if tail(2, 5) => Some(SerialFamily::NovaSeqX),
        // FS1 + 7 digits, never an 8-digit date.
        [b'F', b'S', b'1', ..] if tail(2, 8) && !eight_digit_date(&b[2..]) => {
            Some(SerialFamily::ISeq100)
        }
        [b'D', ..] if tail(1, 5) => Some(SerialFamily::HiSeq2500),
        [b'J', ..] if tail(1, 5) => Some(SerialFamily::HiSeq3000),
        [b'K', ..] if tail(1, 5) => Some(SerialFamily::HiSeq4000),
        [b'E', ..] if tail(1, 5) => Some(SerialFamily::HiSeqX),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Flow cell.

/// Two-letter flow-cell type codes of the nine-character `[A-Z][A-Z0-9]{4}` + code + `X?` ids,
/// from [viral-ngs] `flowcell_to_machine_model_and_chemistry` and the real ids listed at
/// [`flowcell_id`].
const FLOWCELL_CODES: &[&[u8; 2]] = &[
    b"AB", // HiSeq 2000 v2
    b"AC", // HiSeq 2000 v3
    b"AD", // HiSeq 2500 rapid v1 (real: HVFF2ADXX)
    b"AM", // HiSeq 2500 rapid v2 beta
    b"AN", // HiSeq 2500 high output v4
    b"BC", // HiSeq 2500 rapid v2
    b"AF", // NextSeq 500/550 mid output (real: HMTLKAFX2, H3YNFAFX3, HVHNNAFXX)
    b"AG", // NextSeq 500 high output v1 (real: H0MNBAGXX)
    b"BG", // NextSeq 500/550 high output v2/v2.5 (real: HW37NBGXX, HL2TVBGX3)
    b"BB", // HiSeq 3000/4000 (real: HK2KVBBXX)
    b"AL", // HiSeq X v1
    b"CC", // HiSeq X v2/v2.5
    b"DR", // NovaSeq 6000 SP/S1
    b"DM", // NovaSeq 6000 S2 (real: HCYTJDMXX)
    b"DS", // NovaSeq 6000 S4 (real: H5NTFDSXX)
];

/// `run_configuration.flowcell_serial` and the flow cell of a run id.
///
/// | family | grammar | real examples | source |
/// |---|---|---|---|
/// | MiSeq (standard, nano `D…`, micro `G…`) | `000000000-` + `[A-Z][A-Z0-9]{4}` | 000000000-A3GJA, 000000000-A3GJ4, 000000000-A2D9U, 000000000-A7M8N, 000000000-A12V4, 000000000-AEF96, 000000000-JFMNK | [runs], [interop], [viral-ngs], [sheets] |
/// | MiniSeq | `000H` + `[A-Z0-9]{5}` | 000H2VKFF | [sheets] |
/// | HiSeq, NextSeq 500/550, NovaSeq 6000 | `[A-Z][A-Z0-9]{4}` + type code (AB AC AD AM AN BC AF AG BG BB AL CC DR DM DS) + `X` + `[XY2-9]` | HW37NBGXX, HW3YTBGXX, H0MNBAGXX, HMTLKAFX2, HL2TVBGX3, H3YNFAFX3, HKVHYAFX3, HVHNNAFXX, HVFF2ADXX, HK2KVBBXX, HCYTJDMXX, H5NTFDSXX | [runs], [interop], [viral-ngs], [sheets], [osu], [fcinfo] |
/// | NextSeq 1000/2000 | `AA` + `[A-Z0-9]{5}` + `M5` | AAACWM2M5, AAAG7F3M5, AAG27M7M5 | [interop], [fcinfo], [viral-ngs] |
/// | NovaSeq X | `22` + `[A-Z0-9]{5}` + `LT3` or `LT4` | 2255J2LT3, 22J5GLLT4 | [taca], [viral-ngs] |
/// | iSeq 100 | `BP` + `[A-Z0-9]{6}` + `-` + 4 digits | BPA73105-2609 | [interop] |
/// | simulator form | `HFC` + 6 digits | HFC123456 | [sim] |
pub fn flowcell_id(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        15 => b.starts_with(b"000000000-") && b[10].is_ascii_uppercase() && upper_alnum(&b[11..]),
        13 => b.starts_with(b"BP") && upper_alnum(&b[2..8]) && b[8] == b'-' && digits(&b[9..]),
        9 => {
            if b.starts_with(b"HFC") && digits(&b[3..]) {
                return true;
            }
            if !upper_alnum(b) {
                return false;
            }
            if b.starts_with(b"000H") {
                return true;
            }
            if b.starts_with(b"AA") && b.ends_with(b"M5") {
                return true;
            }
            if b.starts_with(b"22") && (b.ends_with(b"LT3") || b.ends_with(b"LT4")) {
                return true;
            }
            b[0].is_ascii_uppercase()
                && FLOWCELL_CODES.iter().any(|c| b[5..7] == c[..])
                && b[7] == b'X'
                && matches!(b[8], b'X' | b'Y' | b'2'..=b'9')
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Run id.

/// `run_id`: `<date>_<serial>_<run number>_<flow cell>`, the run folder name.
///
/// - date: `YYMMDD` (year 20YY) or `YYYYMMDD`, a valid calendar date in 2010–2039;
/// - serial: [`instrument_serial`];
/// - run number: 1–5 digits, zero-padded or not;
/// - flow cell: [`flowcell_id`], optionally prefixed by the side/position `A` or `B`.
///
/// Real examples: 130412_M00612_0070_000000000-A3GJA, 130412_M00630_0059_000000000-A3GJ4,
/// 130417_M00169_0050_000000000-A2D9U, 140211_M00612_0148_000000000-A7M8N,
/// 160404_NS500318_0141_AHW37NBGXX ([runs]); 120705_M00903_0009_A000000000-A12V4,
/// 160630_NS500179_0099_AHW3YTBGXX, 20200624_FS10000106_66_BPA73105-2609,
/// 200602_VH00120_33_AAACWM2M5 ([interop]); 180716_A00494_0021_BH5NTFDSXX,
/// 200810_VH00257_1_AAAG7F3M5 ([fcinfo]); 20240202_LH00217_0044_A2255J2LT3 ([taca]);
/// 240927_VH01619_75_AAG27M7M5, 210221_NB552060_0109_AHMTLKAFX2, 150821_M04004_0006_000000000-AEF96
/// ([viral-ngs]); 170726_J00107_0144_AHK2KVBBXX ([osu]); 190715_MN00302_0284_A000H2VKFF,
/// 210917_NB551068_0409_AH3YNFAFX3 ([sheets]).
///
/// Not accepted (become keyed pseudonyms): sites that rename the serial part to a nickname
/// (`150821_SL-HDF_0700_AHVFF2ADXX` in [viral-ngs]), and the simulator's day-number form
/// (`123_A00100_0001_FC12345`, [sim]), whose first part is not a date.
pub fn run_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 48 {
        return false;
    }
    let mut parts = b.splitn(4, |c| *c == b'_');
    let (Some(date), Some(serial), Some(number), Some(flowcell)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let date_ok = match date.len() {
        // Runs are dated 2010–2039 (real ones 2012–2024): a date of birth rarely is, and
        // `YYMMDD` of 1984 must not read as 2084.
        6 => {
            digits(date)
                && (10..=39).contains(&num(&date[..2]))
                && valid_date(2000 + num(&date[..2]), num(&date[2..4]), num(&date[4..]))
        }
        8 => {
            digits(date)
                && (2010..=2039).contains(&num(&date[..4]))
                && valid_date(num(&date[..4]), num(&date[4..6]), num(&date[6..]))
        }
        _ => false,
    };
    if !date_ok || !(1..=5).contains(&number.len()) || !digits(number) {
        return false;
    }
    let (Ok(serial), Ok(flowcell)) = (std::str::from_utf8(serial), std::str::from_utf8(flowcell))
    else {
        return false;
    };
    if instrument_serial(serial).is_none() {
        return false;
    }
    flowcell_id(flowcell)
        || (matches!(flowcell.as_bytes().first(), Some(b'A' | b'B'))
            && flowcell.get(1..).is_some_and(flowcell_id))
}

/// A run id split where its flow cell begins: `(date_serial_number_ + side letter, flow cell)`,
/// for a run id that parses. The flow-cell part is what the boundary replaces by the flow cell's
/// pseudonym: no grammar can be narrow enough for its free characters.
pub fn run_id_parts(s: &str) -> Option<(&str, &str)> {
    if !run_id(s) {
        return None;
    }
    let at = s.match_indices('_').nth(2)?.0 + 1;
    let (head, flowcell) = s.split_at(at);
    if flowcell_id(flowcell) {
        Some((head, flowcell))
    } else {
        // A side letter A or B before the flow cell.
        Some(s.split_at(at + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// Lots.

/// Consumable serial-number prefixes seen in the lot fields' fallbacks (ReagentKitBarcode,
/// PR2BottleBarcode, ReagentKitSerial, PR2BottleSerial, RFID SerialNumber).
const CONSUMABLE_PREFIXES: &[&[u8; 2]] = &[b"MS", b"NS", b"NV", b"FY", b"EC", b"LC"];

fn consumable_suffix(b: &[u8]) -> bool {
    matches!(b, b"00PR2" | b"BUFFR" | b"REAGT" | b"RGSBS" | b"RGCPE" | b"LIB")
        // MiSeq reagent kits: cycles + V + kit version (300V2, 050V2, 150V3, 600V3).
        || (b.len() == 5 && digits(&b[..3]) && b[3] == b'V' && b[4].is_ascii_digit())
        // NovaSeq X LC1/LC3, iSeq FC6, NextSeq 2000 EC05.
        || (b.len() == 3 && (b.starts_with(b"LC") || b.starts_with(b"FC")) && b[2].is_ascii_digit())
        || (b.len() == 4 && b.starts_with(b"EC") && digits(&b[2..]))
}

/// `run_configuration.flowcell_lot`, `reagent_kit_lot`, `buffer_lot`: lot numbers, part
/// numbers and consumable serials as the collector reads them from RunParameters.xml.
///
/// | form | grammar | real examples | source |
/// |---|---|---|---|
/// | lot / part number | 8 digits starting 15, 18, 20, 23 or 50 that are not a date (YYYYMMDD, YYYYDDMM, DDMMYYYY, MMDDYYYY in 1900–2099) | 50000090, 50000574 (NovaSeq 6000 and v1.5 BufferLotNumber, [checkqc], [cg]), 20411871, 20405542 (iSeq), 20452046 (NextSeq 2000 cartridge), 20209948, 20200578, 20207676, 20264129, 20249426, 20263483, 20243203 (NovaSeq 6000), 20742703, 20799103, 18026054, 23090501 (NovaSeq X), 15028382, 15023445, 15033572, 15033571, 15041807 (MiSeq part numbers), 15065973, 15057941, 15057934 (NextSeq part numbers) | [interop], [ngl], [fcinfo], [taca], [runs] |
/// | lot with revision | 8 digits (not a date) + `-` + one upper-case letter | 20444017-D (NextSeq 2000 FlowCellLotNumber) | [interop] |
/// | consumable serial | `MS`/`NS`/`NV`/`FY`/`EC`/`LC` + 7 digits starting 0, 2 or 4 + `-` + suffix (`00PR2`, `NNNV<d>`, `BUFFR`, `REAGT`, `RGSBS`, `RGCPE`, `LIB`, `LC<d>`, `FC<d>`, `EC<dd>`) | MS2131346-00PR2, MS2012501-300V2, MS2013376-050V2, MS2106444-00PR2, NS2276310-BUFFR, NS2263047-REAGT, NV2061137-RGSBS, NV2049937-RGCPE, NV2065139-BUFFR, NV0017846-LIB, FY0027716-FC6, EC0003549-EC05, LC2019066-LC1, LC4064650-LC3 | [runs], [interop], [ngl], [fcinfo], [taca] |
/// | simulator form | `SBS-`/`FC-`/`BUF-` + 5 digits; `SBS-` + 5 digits + `-BAD` | SBS-20123, FC-30123, BUF-40123, SBS-20991-BAD | [sim] |
///
/// A real lot that happens to read as a date (NovaSeq 6000 ClusterLotNumber `20191106`, [ngl])
/// is refused on purpose and crosses as a keyed pseudonym. Ten-digit library-tube lots
/// (`1000001046`, `1712180001`) are not accepted: ten digits are a phone number's shape, and the
/// collector never reads library-tube lots. Residual risk: an 8-digit national phone number
/// has a lot's shape.
pub fn lot_number(s: &str) -> bool {
    let b = s.as_bytes();
    // Illumina lot and part numbers seen start 15, 18, 20, 23 or 50; a date, a record number or a
    // national id of 8 digits mostly does not.
    let lot8 = |x: &[u8]| {
        x.len() == 8
            && digits(x)
            && matches!(&x[..2], b"15" | b"18" | b"20" | b"23" | b"50")
            && !eight_digit_date(x)
    };
    match b.len() {
        8 if b.starts_with(b"FC-") => digits(&b[3..]),
        8 => lot8(b),
        10 if b[8] == b'-' => lot8(&b[..8]) && b[9].is_ascii_uppercase(),
        9 if b.starts_with(b"BUF-") || b.starts_with(b"SBS-") => digits(&b[4..]),
        13 if b.starts_with(b"SBS-") && b.ends_with(b"-BAD") => digits(&b[4..9]),
        13..=15 => {
            CONSUMABLE_PREFIXES.iter().any(|p| b[..2] == p[..])
                && digits(&b[2..9])
                && matches!(b[2], b'0' | b'2' | b'4')
                && b[9] == b'-'
                && consumable_suffix(&b[10..])
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Versions.

/// Closed list of prefixes seen before a version number in real RunParameters.
const VERSION_PREFIXES: &[&str] = &[
    "HD ",   // HiSeq X / 4000 HCS ApplicationVersion, e.g. "HD 3.4.0.38" [issue]
    "v",     // NovaSeq 6000 RtaVersion, e.g. "v3.3.3" [fcinfo], "v3.4.4" [ngl]
    "P2BL_", // iSeq 100 RecipeVersion "P2BL_6.1.4" [interop]
    "10B-",  // NovaSeq X RecipeVersion "10B-01.02.02" [taca]
    "25B-",  // NovaSeq X 25B kit (same family as 10B; not seen in a real file)
    "1.5B-", // NovaSeq X 1.5B kit (same family as 10B; not seen in a real file)
    "cim@",  // NextSeq 2000 CimVersion "cim@1.1.3" [interop]
    "chm@",  // NextSeq 2000 ChmVersion "chm@1.1.3" [interop]
    "imb@",  // NextSeq 2000 ImbVersion "imb@1.1.3" [interop]
];

/// Whether three two-digit components read as a date (d.m.y, m.d.y or y.m.d).
fn date_triple(c: &[&[u8]]) -> bool {
    if c.len() != 3 || c.iter().any(|x| x.len() != 2) {
        return false;
    }
    let (a, b, d) = (num(c[0]), num(c[1]), num(c[2]));
    valid_date(2000 + d, b, a) || valid_date(2000 + d, a, b) || valid_date(2000 + a, b, d)
}

/// The dotted numeric core of a version: 2–4 components, major 1–2 digits, inner components
/// 1–3 digits, last component 1–4 digits for two components, 1–3 for three, 1–5 (a build
/// number) for four; never two neighbouring components of 3+ digits (a phone number's
/// `555.867.5309`), never a 4-digit year as the second of two components, never three
/// neighbouring two-digit components that read as a date (unless `allow_padded_triple`, for a
/// closed prefix such as `10B-`).
fn dotted(b: &[u8], allow_padded_triple: bool) -> bool {
    let mut comps: [&[u8]; 4] = [&[]; 4];
    let mut n = 0;
    for part in b.split(|c| *c == b'.') {
        if n == 4 || !digits(part) {
            return false;
        }
        comps[n] = part;
        n += 1;
    }
    if n < 2 {
        return false;
    }
    let comps = &comps[..n];
    let last_max = match n {
        2 => 4,
        3 => 3,
        _ => 5,
    };
    if comps[0].len() > 2
        || comps[1..n - 1].iter().any(|c| c.len() > 3)
        || comps[n - 1].len() > last_max
        || comps.windows(2).any(|w| w[0].len() >= 3 && w[1].len() >= 3)
    {
        return false;
    }
    if n == 2 && comps[1].len() == 4 && (1900..=2099).contains(&num(comps[1])) {
        return false;
    }
    // At most 8 digits in all (real builds: 1.1.0.27334): a phone number or national id has more.
    if comps.iter().map(|c| c.len()).sum::<usize>() > 8 {
        return false;
    }
    if allow_padded_triple {
        // `10B-01.02.02`: exactly 0d.dd.dd.
        return n == 3
            && comps[0].len() == 2
            && comps[0][0] == b'0'
            && comps[1..].iter().all(|c| c.len() == 2);
    }
    // No leading zero on a multi-digit part (1.984.03.12). An unpadded d.m.yy date (12.3.84)
    // has exactly the shape of real versions (MiSeq RTA 1.18.54, 2.4.11) and stays a residual
    // risk, documented in docs/privacy-grammars.md.
    if comps.iter().any(|c| c.len() > 1 && c[0] == b'0') {
        return false;
    }
    // A year split in two (19.84.3.12).
    if n == 4 && comps[0].len() == 2 && comps[1].len() == 2 {
        let y = num(comps[0]) * 100 + num(comps[1]);
        let (a, b) = (num(comps[2]), num(comps[3]));
        if (1900..=2039).contains(&y) && (valid_date(y, a, b) || valid_date(y, b, a)) {
            return false;
        }
    }
    !comps.windows(3).any(date_triple)
}

/// `instrument_configuration.control_software_version`, `rta_version`, `firmware_version` and
/// the version attributes (`application_version`, `fpga_version`, `recipe_version`,
/// `chemistry_version`, `collector_version`).
///
/// Grammar: optional prefix from a closed list (`HD `, `v`, `P2BL_`, `10B-`, `25B-`, `1.5B-`,
/// `cim@`, `chm@`, `imb@`), then 2–4 dot-separated numbers (major 1–2 digits, inner 1–3, last
/// 1–3 for a triple, 1–4 for a pair, 1–5 for a build number; no two neighbouring parts of 3+
/// digits), then optionally `-r` + 1–2
/// digits (the simulator's patched release, `1.7.5-r1`); or an FPGA register `0x` + 8 lower-case
/// hex digits. Date-shaped triples (`12.03.84`) and anything with a 4-digit year or a
/// 3-digit first part (`1984.03.12`, `12.03.1984`, `555.867.5309`, IP addresses) are refused.
///
/// Real examples: 2.0.5, 2.3.0.3, 2.0.2.1, 2.0.2.2, 9.5.12, 1.16.18, 1.18.42, 2.4.11 ([runs]);
/// 90.0.1.44, 9.5.10, 0.0.287.2, 10.32.11, 2.0.33, 1.4.9, 1.2.1.7, 2.1.3, 1.4.0.500, 1.4.0.1589,
/// 1.3.0, 2.12.5.0, P2BL_6.1.4, 1.1.0.27334, 1.6, 3.6.14, cim@1.1.3, chm@1.1.3, imb@1.1.3,
/// 0x3200000a, 0x1300000a, 2.0.8.695, 3.5.8 ([interop]); v3.3.3, 1.4.0, 1.4.2.927 ([fcinfo]);
/// v3.4.4, 1.7.5 ([ngl]); 1.2.0.28691, 10B-01.02.02, 1.0 ([taca]); HD 3.4.0.38 ([issue]);
/// 1.7.5-r1, 1.5.0, 4.0.0, 2.2.0, 2.13.0 ([sim]).
pub fn version(s: &str) -> bool {
    if s.len() > 32 {
        return false;
    }
    if let Some(hex) = s.strip_prefix("0x") {
        // An FPGA register has hex letters (0x3200000a); eight decimal digits are a date's or a
        // phone number's shape.
        return hex.len() == 8
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            && hex.bytes().any(|c| (b'a'..=b'f').contains(&c));
    }
    let (body, padded) = match VERSION_PREFIXES.iter().find(|p| s.starts_with(*p)) {
        Some(p) => (&s[p.len()..], p.ends_with("B-")),
        None => (s, false),
    };
    let body = body.as_bytes();
    let core = match body.iter().rposition(|c| *c == b'-') {
        Some(i) => {
            let suffix = &body[i + 1..];
            if !(suffix.len() >= 2
                && suffix.len() <= 3
                && suffix[0] == b'r'
                && digits(&suffix[1..]))
            {
                return false;
            }
            &body[..i]
        }
        None => body,
    };
    dotted(core, padded)
}

// ---------------------------------------------------------------------------------------------
// Message id.

/// `message_id`: a UUID, `8-4-4-4-12` hexadecimal digits, all lower-case or all upper-case.
///
/// Examples: the simulator's version-4-shaped ids and the collector's name-based ids
/// (`services/simulator/src/rng.rs` `uuid`, `services/collector/src/collect.rs` `message_id`),
/// e.g. `3f2b8c1e-9a4d-4e21-8b7f-0c5d2e6a9f13`.
pub fn message_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    let (mut lower, mut upper) = (false, false);
    for (i, c) in b.iter().enumerate() {
        match i {
            8 | 13 | 18 | 23 => {
                if *c != b'-' {
                    return false;
                }
            }
            _ => match c {
                b'0'..=b'9' => {}
                b'a'..=b'f' => lower = true,
                b'A'..=b'F' => upper = true,
                _ => return false,
            },
        }
    }
    !(lower && upper)
}

// ---------------------------------------------------------------------------------------------
// Event codes.

/// Subsystem mnemonics of operation-log event codes (closed list; the model's subsystems plus
/// run lifecycle, system and firmware).
const EVENT_SUBSYSTEMS: &[&[u8]] = &[
    b"RUN", b"SW", b"FLU", b"OPT", b"MEC", b"THM", b"CHM", b"SYS", b"FW",
];

/// `log_event.code`: severity letter (`D`ebug, `I`nfo, `W`arning, `E`rror, `C`ritical) + `-` +
/// subsystem mnemonic (RUN, SW, FLU, OPT, MEC, THM, CHM, SYS, FW) + `-` + 3 digits.
///
/// Examples: I-RUN-001, I-RUN-002, I-RUN-010, E-SW-104 ([sim], `services/simulator/src/lib.rs`),
/// E-FLU-301 (`services/privacy-enforcer/src/lib.rs` test). Bare codes such as `E1042` are not
/// accepted: no real Illumina operation-log code of that shape was found, and a letter plus
/// digits is a sample id's shape (`NA12878`). A closed list of mnemonics refuses `NA-12878`.
pub fn event_code(s: &str) -> bool {
    let b = s.as_bytes();
    if !(8..=9).contains(&b.len()) || !matches!(b[0], b'D' | b'I' | b'W' | b'E' | b'C') {
        return false;
    }
    if b[1] != b'-' || b[b.len() - 4] != b'-' || !digits(&b[b.len() - 3..]) {
        return false;
    }
    let mnemonic = &b[2..b.len() - 4];
    EVENT_SUBSYSTEMS.contains(&mnemonic)
}

// ---------------------------------------------------------------------------------------------
// Region.

/// ISO 3166-1 alpha-2: the 249 officially assigned codes, concatenated (2 bytes each, sorted).
const ISO_3166_1: &[u8] = b"ADAEAFAGAIALAMAOAQARASATAUAWAXAZ\
BABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZ\
CACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZ\
DEDJDKDMDODZ\
ECEEEGEHERESET\
FIFJFKFMFOFR\
GAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGY\
HKHMHNHRHTHU\
IDIEILIMINIOIQIRISIT\
JEJMJOJP\
KEKGKHKIKMKNKPKRKWKYKZ\
LALBLCLILKLRLSLTLULVLY\
MAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZ\
NANCNENFNGNINLNONPNRNUNZ\
OM\
PAPEPFPGPHPKPLPMPNPRPSPTPWPY\
QA\
RERORSRURW\
SASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZ\
TCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZ\
UAUGUMUSUYUZ\
VAVCVEVGVIVNVU\
WFWS\
YEYT\
ZAZMZW";

fn iso_country(c: &[u8]) -> bool {
    let [a, b] = c else {
        return false;
    };
    let key = [*a, *b];
    let (mut lo, mut hi) = (0, ISO_3166_1.len() / 2);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match [ISO_3166_1[2 * mid], ISO_3166_1[2 * mid + 1]].cmp(&key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// `attributes.site_region`: an ISO 3166-1 alpha-2 country code (closed list of the 249
/// assigned codes, upper case), optionally `-` + an ISO 3166-2 subdivision code of 1–3
/// upper-case letters or digits. Examples: `GB`, `US-CA`, `DE-BY`, `FR-75`, `CH-ZH`.
/// Source: ISO 3166-1 (assigned codes as published by the ISO 3166 Maintenance Agency).
pub fn region(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        2 => iso_country(b),
        4..=6 => b[2] == b'-' && iso_country(&b[..2]) && upper_alnum(&b[3..]),
        _ => false,
    }
}

/// Number of assigned ISO 3166-1 alpha-2 codes in [`region`]'s list.
pub fn iso_country_count() -> usize {
    ISO_3166_1.len() / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grammar, by name.
    type Grammar = fn(&str) -> bool;

    /// Every grammar, by name (as a list).
    pub(crate) const GRAMMARS: &[(&str, Grammar)] = &[
        ("instrument_serial", |s| instrument_serial(s).is_some()),
        ("run_id", run_id),
        ("flowcell_id", flowcell_id),
        ("lot_number", lot_number),
        ("version", version),
        ("message_id", message_id),
        ("event_code", event_code),
        ("region", region),
    ];

    /// Real values per grammar, with their source.
    const SERIALS: &[(&str, SerialFamily, &str)] = &[
        ("M00612", SerialFamily::MiSeq, "runs miseq-2013-04-high-pf"),
        (
            "M00630",
            SerialFamily::MiSeq,
            "runs miseq-2013-04-inconsistent",
        ),
        (
            "M00169",
            SerialFamily::MiSeq,
            "runs miseq-2013-04-two-index",
        ),
        ("M00903", SerialFamily::MiSeq, "interop parameters_test.cpp"),
        ("M04004", SerialFamily::MiSeq, "viral-ngs RunInfo-miseq.xml"),
        ("MN00302", SerialFamily::MiniSeq, "sheets 2700317769"),
        ("NS500318", SerialFamily::NextSeq500, "runs nextseq-2016-04"),
        (
            "NS500128",
            SerialFamily::NextSeq500,
            "interop parameters_test.cpp",
        ),
        (
            "NS500179",
            SerialFamily::NextSeq500,
            "interop info_test.cpp",
        ),
        (
            "NB552060",
            SerialFamily::NextSeq500,
            "viral-ngs RunInfo-nextseq550.xml",
        ),
        ("NB551068", SerialFamily::NextSeq500, "sheets 6059414844"),
        ("NB502004", SerialFamily::NextSeq500, "sheets 6490584"),
        ("NB501093", SerialFamily::NextSeq500, "sheets 36291354399"),
        ("NB501961", SerialFamily::NextSeq500, "sheets 28188322614"),
        (
            "VH00120",
            SerialFamily::NextSeq2000,
            "interop parameters_test.cpp",
        ),
        ("VH00257", SerialFamily::NextSeq2000, "fcinfo"),
        (
            "VH01619",
            SerialFamily::NextSeq2000,
            "viral-ngs RunInfo-nextseq-1000-2000-p1.xml",
        ),
        ("A00494", SerialFamily::NovaSeq6000, "fcinfo"),
        (
            "A00198",
            SerialFamily::NovaSeq6000,
            "viral-ngs RunInfo-novaseq.xml",
        ),
        ("LH00217", SerialFamily::NovaSeqX, "taca test_analysis.py"),
        (
            "LH00118",
            SerialFamily::NovaSeqX,
            "viral-ngs RunInfo-novaseq-x-plus.xml",
        ),
        (
            "FS10000106",
            SerialFamily::ISeq100,
            "interop parameters_test.cpp",
        ),
        ("J00107", SerialFamily::HiSeq3000, "osu run folder"),
        ("A00100", SerialFamily::NovaSeq6000, "sim serial_for"),
        ("VH00200", SerialFamily::NextSeq2000, "sim serial_for"),
        ("M00300", SerialFamily::MiSeq, "sim serial_for"),
        ("FS10000400", SerialFamily::ISeq100, "sim serial_for"),
    ];

    const RUN_IDS: &[(&str, &str)] = &[
        ("130412_M00612_0070_000000000-A3GJA", "runs"),
        ("130412_M00630_0059_000000000-A3GJ4", "runs"),
        ("130417_M00169_0050_000000000-A2D9U", "runs"),
        ("140211_M00612_0148_000000000-A7M8N", "runs"),
        ("160404_NS500318_0141_AHW37NBGXX", "runs"),
        ("120705_M00903_0009_A000000000-A12V4", "interop"),
        ("160630_NS500179_0099_AHW3YTBGXX", "interop"),
        ("20200624_FS10000106_66_BPA73105-2609", "interop"),
        ("200602_VH00120_33_AAACWM2M5", "interop"),
        ("180716_A00494_0021_BH5NTFDSXX", "fcinfo"),
        ("200810_VH00257_1_AAAG7F3M5", "fcinfo"),
        ("20240202_LH00217_0044_A2255J2LT3", "taca"),
        ("240927_VH01619_75_AAG27M7M5", "viral-ngs"),
        ("210221_NB552060_0109_AHMTLKAFX2", "viral-ngs"),
        ("150821_M04004_0006_000000000-AEF96", "viral-ngs"),
        ("170726_J00107_0144_AHK2KVBBXX", "osu"),
        ("190715_MN00302_0284_A000H2VKFF", "sheets"),
        ("210917_NB551068_0409_AH3YNFAFX3", "sheets"),
        ("220426_NB502004_0185_AHKVHYAFX3", "sheets"),
        ("171130_NB501093_0223_AHVHNNAFXX", "sheets"),
        ("171018_NB501961_0022_AHL2TVBGX3", "sheets"),
    ];

    const FLOWCELLS: &[(&str, &str)] = &[
        ("000000000-A3GJA", "runs"),
        ("000000000-A3GJ4", "runs"),
        ("000000000-A2D9U", "runs"),
        ("000000000-A7M8N", "runs"),
        ("000000000-A12V4", "interop"),
        ("000000000-AEF96", "viral-ngs"),
        ("000000000-JFMNK", "sheets 6059414844"),
        ("000H2VKFF", "sheets"),
        ("HW37NBGXX", "runs"),
        ("HW3YTBGXX", "interop"),
        ("H0MNBAGXX", "interop"),
        ("HMTLKAFX2", "viral-ngs"),
        ("HL2TVBGX3", "sheets"),
        ("H3YNFAFX3", "sheets"),
        ("HKVHYAFX3", "sheets"),
        ("HVHNNAFXX", "sheets"),
        ("HVFF2ADXX", "viral-ngs"),
        ("HK2KVBBXX", "osu"),
        ("HCYTJDMXX", "viral-ngs"),
        ("H5NTFDSXX", "fcinfo"),
        ("AAACWM2M5", "interop"),
        ("AAAG7F3M5", "fcinfo"),
        ("AAG27M7M5", "viral-ngs"),
        ("2255J2LT3", "taca"),
        ("22J5GLLT4", "viral-ngs"),
        ("BPA73105-2609", "interop"),
        ("HFC123456", "sim"),
    ];

    const LOTS: &[(&str, &str)] = &[
        ("50000090", "checkqc NovaSeq 6000 BufferLotNumber"),
        ("50000574", "cg NovaSeq 6000 v1.5 BufferLotNumber"),
        ("20411871", "interop iSeq FlowcellEEPROMTag"),
        ("20405542", "interop iSeq ReagentKitRFIDTag"),
        ("20452046", "interop NextSeq 2000 CartridgeLotNumber"),
        ("20444017-D", "interop NextSeq 2000 FlowCellLotNumber"),
        ("20209948", "ngl NovaSeq FlowCellLotNumber"),
        ("20200578", "ngl NovaSeq SbsLotNumber"),
        ("20207676", "ngl NovaSeq BufferLotNumber"),
        ("20264129", "fcinfo FlowCellLotNumber"),
        ("20249426", "fcinfo SbsLotNumber"),
        ("20263483", "fcinfo ClusterLotNumber"),
        ("20243203", "fcinfo BufferLotNumber"),
        ("20742703", "taca NovaSeq X FlowCell"),
        ("20799103", "taca NovaSeq X Reagent"),
        ("18026054", "taca NovaSeq X Lyo"),
        ("23090501", "taca NovaSeq X Buffer"),
        ("15028382", "runs MiSeq FlowcellRFIDTag PartNumber"),
        ("15023445", "runs MiSeq PR2 PartNumber"),
        ("15033572", "runs MiSeq ReagentKit PartNumber"),
        ("15033571", "runs MiSeq ReagentKit PartNumber"),
        ("15041807", "runs MiSeq PR2 PartNumber"),
        ("15065973", "runs NextSeq FlowCell PartNumber"),
        ("15057941", "runs NextSeq PR2 PartNumber"),
        ("15057934", "runs NextSeq ReagentKit PartNumber"),
        ("MS2131346-00PR2", "runs PR2BottleBarcode"),
        ("MS2131409-00PR2", "runs PR2BottleBarcode"),
        ("MS2160221-00PR2", "runs PR2BottleBarcode"),
        ("MS2244134-00PR2", "runs PR2BottleBarcode"),
        ("MS2012501-300V2", "runs ReagentKitBarcode"),
        ("MS2012432-300V2", "runs ReagentKitBarcode"),
        ("MS2014027-300V2", "runs ReagentKitBarcode"),
        ("MS2013376-050V2", "runs ReagentKitBarcode"),
        ("MS2106444-00PR2", "interop"),
        ("NS2276310-BUFFR", "runs PR2BottleSerial"),
        ("NS2263047-REAGT", "runs ReagentKitSerial"),
        ("NV2061137-RGSBS", "ngl"),
        ("NV2049937-RGCPE", "ngl"),
        ("NV2065139-BUFFR", "ngl"),
        ("NV0017846-LIB", "ngl"),
        ("NV2123706-RGSBS", "fcinfo"),
        ("NV2151437-RGCPE", "fcinfo"),
        ("NV2115958-BUFFR", "fcinfo"),
        ("FY0027716-FC6", "interop iSeq"),
        ("EC0003549-EC05", "interop NextSeq 2000"),
        ("LC2019066-LC1", "taca"),
        ("LC4064650-LC3", "taca"),
        ("SBS-20123", "sim"),
        ("FC-30123", "sim"),
        ("BUF-40123", "sim"),
        ("SBS-20991-BAD", "sim BAD_LOT"),
    ];

    const VERSIONS: &[(&str, &str)] = &[
        ("2.0.5", "runs ApplicationVersion"),
        ("2.3.0.3", "runs ApplicationVersion"),
        ("2.0.2.1", "runs NextSeq ApplicationVersion"),
        ("2.0.2.2", "runs SystemSuiteVersion"),
        ("9.5.12", "runs FPGAVersion"),
        ("1.16.18", "runs RTAVersion"),
        ("1.18.42", "runs RTAVersion"),
        ("2.4.11", "runs NextSeq RTAVersion"),
        ("90.0.1.44", "interop MCSVersion"),
        ("9.5.10", "interop FPGAVersion"),
        ("0.0.287.2", "interop HiSeq ApplicationVersion"),
        ("10.32.11", "interop HiSeq FPGAVersion"),
        ("3.0.0", "interop CPLDVersion"),
        ("2.0.33", "interop HiSeq RTAVersion"),
        ("1.4.9", "interop RecipeFragmentVersion"),
        ("1.2.1.7", "interop NextSeq ApplicationVersion"),
        ("2.1.3", "interop NextSeq RTAVersion"),
        ("1.4.0.500", "interop iSeq ApplicationVersion"),
        ("1.4.0.1589", "interop iSeq ClientVersion"),
        ("1.3.0", "interop iSeq FirmwareVersion"),
        ("2.12.5.0", "interop iSeq RtaVersion"),
        ("P2BL_6.1.4", "interop iSeq RecipeVersion"),
        ("0x1300000a", "interop iSeq SibFpgaVersion"),
        ("1.1.0.27334", "interop NextSeq 2000 ApplicationVersion"),
        ("1.6", "interop NextSeq 2000 RecipeVersion"),
        ("3.6.14", "interop NextSeq 2000 RtaVersion"),
        ("cim@1.1.3", "interop CimVersion"),
        ("chm@1.1.3", "interop ChmVersion"),
        ("imb@1.1.3", "interop ImbVersion"),
        ("0x3200000a", "interop CibFpgaVersion"),
        ("2.0.8.695", "interop CopyServiceVersion"),
        ("3.5.8", "interop SecondaryAnalysisPlatformVersion"),
        ("v3.3.3", "fcinfo RtaVersion"),
        ("1.4.0", "fcinfo ApplicationVersion / RecipeVersion"),
        ("1.4.2.927", "fcinfo UcsVersion"),
        (
            "v3.4.4",
            "ngl-like NovaSeq RtaVersion (library id 48154160420)",
        ),
        (
            "1.7.5",
            "NovaSeq RecipeVersion (library id 48154160420); sim",
        ),
        ("1.2.0.28691", "taca SystemSuiteVersion"),
        ("10B-01.02.02", "taca RecipeVersion"),
        ("1.0", "taca ConsumableInfo Version"),
        ("HD 3.4.0.38", "issue 9 (HiSeq X/4000)"),
        ("1.7.5-r1", "sim software regression"),
        ("1.5.0", "sim"),
        ("4.0.0", "sim"),
        ("2.2.0", "sim"),
        ("2.13.0", "sim firmware"),
        ("3.4.4", "sim rta"),
        ("0.1.0", "collector_version (CARGO_PKG_VERSION)"),
    ];

    const EVENT_CODES: &[(&str, &str)] = &[
        ("I-RUN-001", "sim"),
        ("I-RUN-002", "sim"),
        ("I-RUN-010", "sim"),
        ("E-SW-104", "sim"),
        ("E-FLU-301", "privacy-enforcer test"),
    ];

    const MESSAGE_IDS: &[(&str, &str)] = &[
        ("3f2b8c1e-9a4d-4e21-8b7f-0c5d2e6a9f13", "sim shape (v4)"),
        (
            "0a1b2c3d-4e5f-5a6b-8c7d-8e9f0a1b2c3d",
            "collector shape (v5)",
        ),
        ("3F2B8C1E-9A4D-4E21-8B7F-0C5D2E6A9F13", "upper case"),
    ];

    const REGIONS: &[&str] = &[
        "GB", "US", "US-CA", "DE-BY", "FR-75", "CH-ZH", "NA", "SE-AB",
    ];

    /// Personal, health and genomic data that must never parse.
    pub(crate) const PII: &[&str] = &[
        "1984-03-12",
        "12/03/1984",
        "19840312",
        "12031984",
        "03121984",
        "12.03.1984",
        "1984.03.12",
        "12.03.84",
        "555-867-5309",
        "+44 20 7946 0958",
        "5558675309",
        "555.867.5309",
        "(555) 867-5309",
        "123-45-6789",
        "123456789",
        "jane.doe@clinic.org",
        "jane.doe_at_clinic.org",
        "Smith",
        "SMITH",
        "jane.doe",
        "Jane Doe",
        "Sample_1",
        "NA12878",
        "NA-12878",
        "S12-0456",
        "MRN12345678",
        "patient_7",
        "ACGTACGTACGTAC",
        "ACGUACGUACGU",
        "C:\\Users\\jane",
        "\\\\server\\share",
        "/home/jane",
        "tumour_exome_batch3",
        "rajesh pool 2",
        "RU1521:::/locus/data/run_data//1337/1521",
        "192.168.1.10",
        "DOB 1984-03-12",
        "",
        " ",
    ];

    const SEPARATORS: &[char] = &['_', '-', '.', ':', '/'];

    fn all_real() -> Vec<&'static str> {
        let mut v: Vec<&str> = SERIALS.iter().map(|x| x.0).collect();
        v.extend(RUN_IDS.iter().map(|x| x.0));
        v.extend(FLOWCELLS.iter().map(|x| x.0));
        v.extend(LOTS.iter().map(|x| x.0));
        v.extend(VERSIONS.iter().map(|x| x.0));
        v.extend(EVENT_CODES.iter().map(|x| x.0));
        v.extend(MESSAGE_IDS.iter().map(|x| x.0));
        v.extend(REGIONS.iter().copied());
        v
    }

    fn parsing(s: &str) -> Vec<&'static str> {
        GRAMMARS
            .iter()
            .filter(|(_, g)| g(s))
            .map(|(n, _)| *n)
            .collect()
    }

    #[test]
    fn real_values_parse() {
        for (s, fam, src) in SERIALS {
            assert_eq!(instrument_serial(s), Some(*fam), "{s} ({src})");
        }
        for (s, src) in RUN_IDS {
            assert!(run_id(s), "run id {s} ({src})");
        }
        for (s, src) in FLOWCELLS {
            assert!(flowcell_id(s), "flow cell {s} ({src})");
        }
        for (s, src) in LOTS {
            assert!(lot_number(s), "lot {s} ({src})");
        }
        for (s, src) in VERSIONS {
            assert!(version(s), "version {s} ({src})");
        }
        for (s, src) in EVENT_CODES {
            assert!(event_code(s), "event code {s} ({src})");
        }
        for (s, src) in MESSAGE_IDS {
            assert!(message_id(s), "message id {s} ({src})");
        }
        for s in REGIONS {
            assert!(region(s), "region {s}");
        }
    }

    #[test]
    fn iso_list_is_complete_and_sorted() {
        assert_eq!(iso_country_count(), 249);
        let codes: Vec<&[u8]> = ISO_3166_1.chunks_exact(2).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        assert!(!region("XX") && !region("UK") && !region("EU") && !region("gb"));
    }

    #[test]
    fn pii_parses_as_nothing() {
        for p in PII {
            for v in [p.to_string(), p.to_uppercase(), p.to_lowercase()] {
                assert!(parsing(&v).is_empty(), "{v:?} parsed as {:?}", parsing(&v));
            }
        }
    }

    #[test]
    fn real_values_glued_to_pii_parse_as_nothing() {
        let mut checked = 0usize;
        for real in all_real() {
            for p in PII.iter().filter(|p| !p.trim().is_empty()) {
                for sep in SEPARATORS {
                    for glued in [format!("{real}{sep}{p}"), format!("{p}{sep}{real}")] {
                        for v in [glued.clone(), glued.to_uppercase(), glued.to_lowercase()] {
                            assert!(parsing(&v).is_empty(), "{v:?} parsed as {:?}", parsing(&v));
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// Inputs an independent red-team review found crossing an earlier version of these
    /// grammars readable; each must now parse as nothing.
    #[test]
    fn red_team_bypasses_parse_as_nothing() {
        let cases: &[&str] = &[
            // run ids with a date of birth (1984 read as 2084, a child's 2005)
            "840312_M00612_0070_000000000-SMITH",
            "050312_M00612_0070_000000000-A3GJA",
            "20050312_FS10000106_12345_BPA73105-2609",
            // serials holding dates, phone and record numbers
            "FS19840312",
            "FS55586753",
            "SN8675309",
            "SN1234567",
            "NB840312",
            "NS120384",
            // lots holding record numbers, phone numbers, YYYYDDMM / YYMMDD dates, national ids
            "12345678",
            "55586753",
            "30123456",
            "19842503",
            "19842503-A",
            "84031219",
            "12345678-Z",
            "MS8675309-00PR2",
            "NV1234567-LIB",
            // versions holding dates, phone numbers, national ids
            "1.984.03.12",
            "v1.984.03.12",
            "HD 1.984.03.12",
            "1.984.03.12-r42",
            "10B-12.03.84",
            "19.84.3.12",
            "25B-12.03.84",
            "10B-19.84.03.12",
            "02.079.46.0958",
            "55.586.75.309",
            "5.558.67.5309",
            "44.207.94.60958",
            "49.301.23.45678",
            "1.23.45.6789",
            "12.345.67.89",
            "75.612.34.56789",
            "0x19840312",
            "0x55586753",
        ];
        for c in cases {
            assert!(parsing(c).is_empty(), "{c:?} parsed as {:?}", parsing(c));
        }
    }

    #[test]
    fn run_id_parts_split_off_the_flow_cell() {
        assert_eq!(
            run_id_parts("160404_NS500318_0141_AHW37NBGXX"),
            Some(("160404_NS500318_0141_A", "HW37NBGXX"))
        );
        assert_eq!(
            run_id_parts("130412_M00612_0070_000000000-A3GJA"),
            Some(("130412_M00612_0070_", "000000000-A3GJA"))
        );
        assert_eq!(run_id_parts("not a run"), None);
    }

    #[test]
    fn case_matters() {
        assert!(instrument_serial("m00612").is_none());
        assert!(!flowcell_id("hw37nbgxx"));
        assert!(!run_id("160404_ns500318_0141_ahw37nbgxx"));
        assert!(!event_code("i-run-001"));
        assert!(!message_id("3f2b8c1e-9A4D-4e21-8b7f-0c5d2e6a9f13"));
    }

    #[test]
    fn dates_never_parse_as_lots_or_versions() {
        for d in [
            "19840312", "20191106", "12031984", "03121984", "20240229", "01012000",
        ] {
            assert!(!lot_number(d), "{d}");
        }
        assert!(
            lot_number("20230229"),
            "not a date: 2023 is not a leap year"
        );
        for d in [
            "12.03.84",
            "84.03.12",
            "03.12.84",
            "1984.03.12",
            "12.03.1984",
            "3.1984",
            "12.03.84.1",
            "1.12.03.84",
            "0.555.867.5309",
            "1.0.555.867.5309",
            "192.168.1.10",
        ] {
            assert!(!version(d), "{d}");
        }
    }

    #[test]
    fn run_id_parts_are_checked() {
        assert!(!run_id("130231_M00612_0070_000000000-A3GJA"), "Feb 31");
        assert!(!run_id("19840312_M00612_0070_000000000-A3GJA"), "year 1984");
        assert!(
            !run_id("130412_X00612_0070_000000000-A3GJA"),
            "unknown serial"
        );
        assert!(
            !run_id("130412_M00612_123456_000000000-A3GJA"),
            "run number too long"
        );
        assert!(
            !run_id("130412_M00612_0070_CHW37NBGXX"),
            "side must be A or B"
        );
        assert!(
            !run_id("150821_SL-HDF_0700_AHVFF2ADXX"),
            "nickname instead of serial"
        );
        assert!(
            !run_id("123_A00100_0001_FC12345"),
            "simulator day-number form"
        );
    }

    #[test]
    fn serial_families_have_labels() {
        let fams = [
            SerialFamily::MiSeq,
            SerialFamily::MiniSeq,
            SerialFamily::NextSeq500,
            SerialFamily::NextSeq2000,
            SerialFamily::NovaSeq6000,
            SerialFamily::NovaSeqX,
            SerialFamily::ISeq100,
            SerialFamily::HiSeq2500,
            SerialFamily::HiSeq2000,
            SerialFamily::HiSeq3000,
            SerialFamily::HiSeq4000,
            SerialFamily::HiSeqX,
        ];
        let mut labels: Vec<&str> = fams.iter().map(|f| f.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), fams.len());
        assert_eq!(instrument_serial("D00123"), Some(SerialFamily::HiSeq2500));
        assert_eq!(
            instrument_serial("SN7001403"),
            None,
            "SN + digits is a record number's shape: a pseudonym"
        );
        assert_eq!(instrument_serial("K00150"), Some(SerialFamily::HiSeq4000));
        assert_eq!(instrument_serial("E00489"), Some(SerialFamily::HiSeqX));
    }
}
