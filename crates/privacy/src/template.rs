//! Operation-log messages cross the privacy boundary only as a **template id plus typed
//! parameters**; their text never does.
//!
//! # Why templates, not a filter
//! A filter that looks for personal data in free text has to guess what a name, a sample id or a
//! date looks like, and guesses both ways wrong: it removed 69 of 100 benign instrument messages
//! ("RTA 2.4.11", "Chiller fault code E1042 on pump 2") while names glued to real words went
//! through. Here nothing is guessed. A message crosses only if it is, token for token, an
//! instance of a template from a closed catalogue; what crosses is the template's id and the
//! values of its slots, each parsed against a narrow type. Everything else — every literal word,
//! every space — comes from the template text, never from the input, so [`TemplateCatalogue::render`]
//! rebuilds the message from the catalogue and the typed values alone.
//!
//! An unknown message ([`TemplateCatalogue::match_message`] returns `None`) keeps its code,
//! severity and subsystem; the caller drops its text and counts it per code in the audit, which
//! is how the catalogue learns what to grow.
//!
//! # Slot types: no slot can hold an identifier
//! | slot | accepts | why nothing personal fits |
//! |---|---|---|
//! | `{n:int A..=B}` | decimal integer in the closed range, no sign `+`, no leading zero | at most 6 digits (ranges are capped at ±999 999): no phone number, MRN, national id or 8-digit date |
//! | `{lane}` `{tile}` `{cycle}` `{read}` `{surface}` `{swath}` | `int` with the range of that name (1..=8, 1..=99999, 0..=2000, 1..=4, 1..=2, 1..=10) | as above |
//! | `{x:number A..=B unit}` | decimal, at most 6 digits of which at most 3 decimals, in the range; the unit is a fixed literal from the closed [`Unit`] catalogue (the range may be left out when a unit is given: the unit's plausible range applies) | as above |
//! | `{code}` | an event code: `[EWIF]` + 3–4 digits (`E1042`) or `[EWIF]-` + 2–4 capitals + `-` + 3 digits (`E-FLU-301`, `I-RUN-010`) | sample ids (`NA12878`, `S07-1184`), MRNs (`MRN-00482913`) do not parse |
//! | `{version}` | optional `v`/`V`, 2–4 dot-separated numeric components (1 with the `v`), component widths ≤ 2, 2, 3, 5 digits, no leading zeros | refuses date-shaped triples (`12.03.1984`, `1984.03.12`), phone numbers (`555.867.5309`) and IPv4 addresses with a 3-digit first octet |
//! | `{part}` | a part name from the closed [`PARTS`] catalogue | closed list |
//!
//! There is no free-text slot, and a template needs at least one literal word.
//!
//! # Matching: one hash lookup, then a typed parse
//! A message is split into at most 64 tokens without allocating: whitespace separates chunks;
//! opening `( [ { " '` and closing `) ] } , ; : . ! ? " '` are peeled off as punctuation; `/`
//! and `=` split a chunk; a number glued to a unit (`45%`) splits into number and unit. Each
//! token is a *numeric* (`-?v?digits(.digits)*`), an event *code*, or a *literal*, and remembers
//! whether whitespace preceded it. The *shape key* is a 64-bit FNV-1a hash over (glue, class,
//! lower-cased literal text) per token — numbers and codes contribute only their class — looked
//! up in a `HashMap`. Each candidate shape is then verified token for token (literal words
//! case-insensitively, units exactly) and its slots parsed against their types. Templates with a
//! `{part}` slot are expanded at load time into one shape per catalogue part. Two templates
//! whose shapes could match the same message are refused at load time, so a message matches at
//! most one template. Only a successful match allocates (the parameter vector).
//!
//! Canonical form: the rendered text equals the input with runs of whitespace collapsed to one
//! space and literal words in the template's capitalisation (matching ignores ASCII case of
//! literal words; a `{part}` slot that opens the message is rendered capitalised).
//!
//! # Operator catalogues (JSON lines, no rebuild)
//! One template per line; blank lines and lines starting with `#` are ignored:
//! ```text
//! # id: UPPER_SNAKE, unique. pattern: literal text with {slots}. subsystem (optional): other,
//! # optical, mechanical, thermal, fluidics, chemistry or software. example (optional, strongly
//! # recommended): a message the template must match and render back exactly. source: free note.
//! {"id":"CHILLER_FAULT_CODE_ON_PUMP","pattern":"Chiller fault code {code} on pump {pump:int 1..=16}","subsystem":"thermal","example":"Chiller fault code E1042 on pump 2","source":"site log"}
//! ```
//! [`TemplateCatalogue::parse`] checks every line (JSON, id, subsystem, slot syntax, types,
//! ranges, units, duplicate ids and slot names, at least one literal word, no two slots glued,
//! that the template matches a synthetic instance of itself and its example) and names the line
//! and the problem; [`TemplateCatalogue::extend`] adds such a catalogue to the built-in one,
//! refusing duplicate ids and ambiguous shapes.
//!
//! The built-in catalogue lives in `crates/privacy/templates/builtin.jsonl` (same format), with
//! the source of every template on its line.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use serde::Deserialize;
use thiserror::Error;

/// Messages longer than this never match (no template is nearly as long).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Tokens per message (and per template) at most.
const MAX_TOKENS: usize = 64;
/// Longest accepted catalogue line.
const MAX_LINE_BYTES: usize = 4096;
/// Slots per template at most.
const MAX_SLOTS: usize = 8;
/// Digits a number slot may hold (integer and decimal part together).
const MAX_DIGITS: usize = 6;
/// Decimals a number slot may hold.
const MAX_DECIMALS: usize = 3;
/// Largest magnitude a slot range may reach: 6 digits, so no identifier fits.
const MAX_ABS: i64 = 999_999;

/// Subsystem hints a template may carry (the model's `Subsystem` labels).
pub const SUBSYSTEMS: &[&str] = &[
    "other",
    "optical",
    "mechanical",
    "thermal",
    "fluidics",
    "chemistry",
    "software",
];

/// The closed catalogue of instrument part names a `{part}` slot accepts.
///
/// The first entries are the exact names the notifier suspects
/// (`services/notifier/src/lib.rs`, `suspected_part`); the rest are the parts the simulator's
/// sensors observe (`services/simulator/src/lib.rs`: laser, focus, stage, flow-cell heater,
/// chiller, fluidics) and the consumables and modules named in Illumina's system guides
/// (flow cell, reagent and buffer cartridges, sipper, waste bottle, RFID reader, …).
pub const PARTS: &[&str] = &[
    "excitation laser module",
    "Z-stage / autofocus assembly",
    "XY stage motor and encoder",
    "flow-cell heater (thermal station)",
    "reagent chiller (Peltier and fan)",
    "fluidics line or valve (clog)",
    "pump seal or fluidics fitting (leak)",
    "fluidics pump",
    "enclosure ventilation",
    "laser",
    "emission filter",
    "objective lens",
    "camera",
    "autofocus module",
    "Z-stage",
    "XY stage",
    "stage motor",
    "stage encoder",
    "flow cell heater",
    "thermal station",
    "reagent chiller",
    "Peltier module",
    "chiller fan",
    "syringe pump",
    "pinch valve",
    "rotary valve",
    "selector valve",
    "sipper",
    "waste bottle",
    "buffer cartridge",
    "reagent cartridge",
    "cluster cartridge",
    "SBS cartridge",
    "flow cell",
    "flow cell clamp",
    "vacuum pump",
    "pressure sensor",
    "bubble sensor",
    "flow sensor",
    "door sensor",
    "RFID reader",
    "barcode scanner",
    "instrument computer",
    "power supply",
    "cooling fan",
    "air filter",
    "touch screen",
    "data drive",
];

/// Units a number slot may carry: a closed catalogue. Each spelling is its own variant so that
/// rendering reproduces the input exactly (`C` and `°C`, `uL/min` and `µL/min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Unit {
    MilliWatt,
    Watt,
    Celsius,
    DegreeCelsius,
    KiloPascal,
    Pascal,
    Psi,
    MicroLitrePerMinuteAscii,
    MicroLitrePerMinute,
    MicroLitreAscii,
    MicroLitre,
    MilliLitre,
    MicrometreAscii,
    Micrometre,
    Nanometre,
    Millimetre,
    Pixel,
    Ampere,
    MilliAmpere,
    Volt,
    MilliVolt,
    Millisecond,
    Second,
    Minute,
    Hour,
    Percent,
    KiloClustersPerMm2,
    Rpm,
    Hertz,
    Megabyte,
    Gigabyte,
    Terabyte,
    Picomolar,
    Nanomolar,
}

/// (unit, spelling, plausible minimum, plausible maximum)
const UNITS: &[(Unit, &str, f64, f64)] = &[
    (Unit::MilliWatt, "mW", 0.0, 10_000.0),
    (Unit::Watt, "W", 0.0, 5_000.0),
    (Unit::Celsius, "C", -50.0, 150.0),
    (Unit::DegreeCelsius, "°C", -50.0, 150.0),
    (Unit::KiloPascal, "kPa", -200.0, 2_000.0),
    (Unit::Pascal, "Pa", -200_000.0, 999_999.0),
    (Unit::Psi, "psi", -30.0, 300.0),
    (Unit::MicroLitrePerMinuteAscii, "uL/min", 0.0, 100_000.0),
    (Unit::MicroLitrePerMinute, "µL/min", 0.0, 100_000.0),
    (Unit::MicroLitreAscii, "uL", 0.0, 100_000.0),
    (Unit::MicroLitre, "µL", 0.0, 100_000.0),
    (Unit::MilliLitre, "mL", 0.0, 100_000.0),
    (Unit::MicrometreAscii, "um", -10_000.0, 10_000.0),
    (Unit::Micrometre, "µm", -10_000.0, 10_000.0),
    (Unit::Nanometre, "nm", 0.0, 10_000.0),
    (Unit::Millimetre, "mm", -1_000.0, 1_000.0),
    (Unit::Pixel, "px", 0.0, 10_000.0),
    (Unit::Ampere, "A", 0.0, 100.0),
    (Unit::MilliAmpere, "mA", 0.0, 100_000.0),
    (Unit::Volt, "V", -1_000.0, 1_000.0),
    (Unit::MilliVolt, "mV", -100_000.0, 100_000.0),
    (Unit::Millisecond, "ms", 0.0, 999_999.0),
    (Unit::Second, "s", 0.0, 604_800.0),
    (Unit::Minute, "min", 0.0, 100_000.0),
    (Unit::Hour, "h", 0.0, 10_000.0),
    (Unit::Percent, "%", -100.0, 100.0),
    (Unit::KiloClustersPerMm2, "k/mm2", 0.0, 100_000.0),
    (Unit::Rpm, "rpm", 0.0, 100_000.0),
    (Unit::Hertz, "Hz", 0.0, 100_000.0),
    (Unit::Megabyte, "MB", 0.0, 999_999.0),
    (Unit::Gigabyte, "GB", 0.0, 999_999.0),
    (Unit::Terabyte, "TB", 0.0, 10_000.0),
    (Unit::Picomolar, "pM", 0.0, 100_000.0),
    (Unit::Nanomolar, "nM", 0.0, 100_000.0),
];

impl Unit {
    /// The unit's spelling, exactly as rendered.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::MilliWatt => "mW",
            Unit::Watt => "W",
            Unit::Celsius => "C",
            Unit::DegreeCelsius => "°C",
            Unit::KiloPascal => "kPa",
            Unit::Pascal => "Pa",
            Unit::Psi => "psi",
            Unit::MicroLitrePerMinuteAscii => "uL/min",
            Unit::MicroLitrePerMinute => "µL/min",
            Unit::MicroLitreAscii => "uL",
            Unit::MicroLitre => "µL",
            Unit::MilliLitre => "mL",
            Unit::MicrometreAscii => "um",
            Unit::Micrometre => "µm",
            Unit::Nanometre => "nm",
            Unit::Millimetre => "mm",
            Unit::Pixel => "px",
            Unit::Ampere => "A",
            Unit::MilliAmpere => "mA",
            Unit::Volt => "V",
            Unit::MilliVolt => "mV",
            Unit::Millisecond => "ms",
            Unit::Second => "s",
            Unit::Minute => "min",
            Unit::Hour => "h",
            Unit::Percent => "%",
            Unit::KiloClustersPerMm2 => "k/mm2",
            Unit::Rpm => "rpm",
            Unit::Hertz => "Hz",
            Unit::Megabyte => "MB",
            Unit::Gigabyte => "GB",
            Unit::Terabyte => "TB",
            Unit::Picomolar => "pM",
            Unit::Nanomolar => "nM",
        }
    }

    /// The unit spelled exactly `s`, if it is in the catalogue.
    pub fn from_symbol(s: &str) -> Option<Unit> {
        // Every spelling is 1 to 7 bytes long: most tokens are refused on their length alone.
        if s.is_empty() || s.len() > 7 {
            return None;
        }
        Some(match s {
            "mW" => Unit::MilliWatt,
            "W" => Unit::Watt,
            "C" => Unit::Celsius,
            "°C" => Unit::DegreeCelsius,
            "kPa" => Unit::KiloPascal,
            "Pa" => Unit::Pascal,
            "psi" => Unit::Psi,
            "uL/min" => Unit::MicroLitrePerMinuteAscii,
            "µL/min" => Unit::MicroLitrePerMinute,
            "uL" => Unit::MicroLitreAscii,
            "µL" => Unit::MicroLitre,
            "mL" => Unit::MilliLitre,
            "um" => Unit::MicrometreAscii,
            "µm" => Unit::Micrometre,
            "nm" => Unit::Nanometre,
            "mm" => Unit::Millimetre,
            "px" => Unit::Pixel,
            "A" => Unit::Ampere,
            "mA" => Unit::MilliAmpere,
            "V" => Unit::Volt,
            "mV" => Unit::MilliVolt,
            "ms" => Unit::Millisecond,
            "s" => Unit::Second,
            "min" => Unit::Minute,
            "h" => Unit::Hour,
            "%" => Unit::Percent,
            "k/mm2" => Unit::KiloClustersPerMm2,
            "rpm" => Unit::Rpm,
            "Hz" => Unit::Hertz,
            "MB" => Unit::Megabyte,
            "GB" => Unit::Gigabyte,
            "TB" => Unit::Terabyte,
            "pM" => Unit::Picomolar,
            "nM" => Unit::Nanomolar,
            _ => return None,
        })
    }

    fn default_range(self) -> (f64, f64) {
        UNITS
            .iter()
            .find(|(u, ..)| *u == self)
            .map_or((0.0, 0.0), |(_, _, lo, hi)| (*lo, *hi))
    }

    /// `%` is written against its number (`45.2%`); every other unit after a space.
    fn glued(self) -> bool {
        self == Unit::Percent
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// Integer slot types known by name, with their ranges.
const INT_ALIASES: &[(&str, i64, i64)] = &[
    ("lane", 1, 8),
    ("tile", 1, 99_999),
    ("cycle", 0, 2_000),
    ("read", 1, 4),
    ("surface", 1, 2),
    ("swath", 1, 10),
];

/// The type of a template slot.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotType {
    /// A decimal integer within `min..=max`.
    Int {
        /// Smallest value accepted.
        min: i64,
        /// Largest value accepted.
        max: i64,
    },
    /// A decimal number within `min..=max`, followed by `unit` if any.
    Number {
        /// Smallest value accepted.
        min: f64,
        /// Largest value accepted.
        max: f64,
        /// The unit written after the number.
        unit: Option<Unit>,
    },
    /// An event or error code (see the module documentation for the grammar).
    Code,
    /// A software, firmware or chemistry version (see the module documentation).
    Version,
    /// A part name from [`PARTS`].
    Part,
}

/// A named, typed slot of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// The slot's name, unique within its template (`[a-z][a-z0-9_]*`).
    pub name: String,
    /// What the slot accepts.
    pub ty: SlotType,
}

/// A typed parameter value. The `String` variants only ever hold text that passed the slot's
/// grammar ([`TemplateCatalogue::render`] checks again before writing anything).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// An `int` slot's value.
    Int(i64),
    /// A `number` slot's value; `decimals` is how many were written, so rendering is exact.
    Number {
        /// The value.
        value: f64,
        /// Decimals written (0–3).
        decimals: u8,
        /// The slot's unit.
        unit: Option<Unit>,
    },
    /// A `code` slot's value.
    Code(String),
    /// A `version` slot's value.
    Version(String),
    /// A `part` slot's value: an entry of [`PARTS`].
    Part(&'static str),
}

/// One parameter of a matched message.
#[derive(Debug, Clone, PartialEq)]
pub struct Param<'c> {
    /// The slot's name in the template.
    pub name: &'c str,
    /// The typed value.
    pub value: ParamValue,
}

/// A message recognised as an instance of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched<'c> {
    /// The template's id.
    pub template_id: &'c str,
    /// One parameter per slot, in the template's slot order.
    pub params: Vec<Param<'c>>,
}

/// What is wrong with a template or a catalogue line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// The line is not a JSON object with the expected fields.
    #[error("not a template object: {0}")]
    Json(String),
    /// The line is longer than the limit.
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// The id is not UPPER_SNAKE (`[A-Z][A-Z0-9_]{{1,63}}`).
    #[error("id `{0}` is not UPPER_SNAKE ([A-Z][A-Z0-9_]{{1,63}})")]
    BadId(String),
    /// The id is already in the catalogue.
    #[error("duplicate template id `{0}`")]
    DuplicateId(String),
    /// The subsystem is not one of [`SUBSYSTEMS`].
    #[error("unknown subsystem `{0}` (one of other, optical, mechanical, thermal, fluidics, chemistry, software)")]
    BadSubsystem(String),
    /// The pattern is empty.
    #[error("empty pattern")]
    EmptyPattern,
    /// A `{` without `}` or a `}` without `{`.
    #[error("unbalanced brace in pattern")]
    UnbalancedBrace,
    /// The slot text is not `{name:type args}`.
    #[error("bad slot `{{{0}}}`: write {{name:type args}}")]
    BadSlot(String),
    /// The slot's name is not `[a-z][a-z0-9_]{{0,31}}`.
    #[error("bad slot name `{0}` ([a-z][a-z0-9_]{{0,31}})")]
    BadSlotName(String),
    /// Two slots share a name.
    #[error("slot name `{0}` used twice")]
    DuplicateSlotName(String),
    /// The slot type is unknown (there is no free-text type).
    #[error("unknown slot type `{0}` (int, number, code, version, part, lane, tile, cycle, read, surface, swath; there is no free-text slot)")]
    UnknownSlotType(String),
    /// The range is malformed, reversed or wider than 6 digits.
    #[error("bad range `{0}`: write A..=B with A <= B and both within ±999999")]
    BadRange(String),
    /// An `int` slot without a range, or a `number` slot with neither range nor unit.
    #[error("slot `{0}` needs a range (A..=B){1}")]
    MissingRange(String, &'static str),
    /// The unit is not in the catalogue.
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    /// An argument a slot type does not take.
    #[error("slot `{0}` does not take the argument `{1}`")]
    UnexpectedArgument(String, String),
    /// More than one `{part}` slot, or too many slots.
    #[error("too many slots (at most {MAX_SLOTS}, at most one part slot)")]
    TooManySlots,
    /// Two slots with nothing between them.
    #[error("two slots glued together: put a space or punctuation between them")]
    AdjacentSlots,
    /// A slot written against a letter or digit (`tile{n}`).
    #[error("slot `{0}` is glued to a word: put a space between them")]
    SlotGluedToWord(String),
    /// The template has no literal word of at least two letters.
    #[error("the pattern has no literal word")]
    NoLiteralWord,
    /// More tokens than a message may have.
    #[error("pattern longer than {MAX_TOKENS} tokens")]
    TooLong,
    /// The template does not match a message built from itself (a lexing trap in the pattern).
    #[error("the pattern cannot match its own instance `{0}`")]
    SelfCheck(String),
    /// The example does not match the template.
    #[error("the example does not match the pattern")]
    ExampleDoesNotMatch,
    /// The example is not in canonical form or does not render back to itself.
    #[error("the example does not render back to itself (got `{0}`)")]
    ExampleDoesNotRoundTrip(String),
    /// Another template matches the same messages.
    #[error("ambiguous: matches the same messages as template `{0}`")]
    Ambiguous(String),
}

/// A problem with a catalogue, naming the line (1-based; 0 when not read from text) and the
/// template id when known.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct TemplateError {
    /// 1-based line in the catalogue text; 0 when the template did not come from text.
    pub line: usize,
    /// The template's id, when it could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}", self.line)?;
        } else {
            f.write_str("template")?;
        }
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// One template of the catalogue.
#[derive(Debug, Clone)]
pub struct Template {
    id: String,
    subsystem: Option<&'static str>,
    pattern: String,
    example: Option<String>,
    source: Option<String>,
    slots: Vec<Slot>,
    elems: Vec<Elem>,
}

impl Template {
    /// The stable id (`UPPER_SNAKE`).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The subsystem hint, one of [`SUBSYSTEMS`].
    pub fn subsystem(&self) -> Option<&'static str> {
        self.subsystem
    }
    /// The pattern text.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    /// The example message, if the catalogue gave one (it matches and round-trips).
    pub fn example(&self) -> Option<&str> {
        self.example.as_deref()
    }
    /// Where the template comes from.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    /// The slots, in order of appearance.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

/// The message-template catalogue.
#[derive(Debug, Clone, Default)]
pub struct TemplateCatalogue {
    templates: Vec<Template>,
    by_id: HashMap<String, usize>,
    shapes: Vec<Shape>,
    /// Shape hash → shapes; the key is already a hash, so it is used as is.
    index: HashMap<u64, Vec<usize>, BuildHasherDefault<IdHasher>>,
}

/// Passes a `u64` key through: the index keys are FNV hashes of catalogue shapes already.
#[derive(Debug, Clone, Copy, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const BUILTIN: &str = include_str!("../templates/builtin.jsonl");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: String,
    pattern: String,
    #[serde(default)]
    subsystem: Option<String>,
    #[serde(default)]
    example: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl TemplateCatalogue {
    /// An empty catalogue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in catalogue (`crates/privacy/templates/builtin.jsonl`).
    pub fn builtin() -> Self {
        static CELL: OnceLock<TemplateCatalogue> = OnceLock::new();
        CELL.get_or_init(|| {
            // The text is part of the build and a unit test parses it: it cannot fail at run time.
            TemplateCatalogue::parse(BUILTIN).unwrap_or_else(|e| panic!("built-in templates: {e}"))
        })
        .clone()
    }

    /// Parses a catalogue in the JSON-lines format described in the module documentation.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut cat = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let at = |id: Option<String>, problem| TemplateError { line, id, problem };
            if l.len() > MAX_LINE_BYTES {
                return Err(at(None, Problem::LineTooLong));
            }
            let spec: Spec =
                serde_json::from_str(l).map_err(|e| at(None, Problem::Json(e.to_string())))?;
            let id = spec.id.clone();
            let t = Template::from_spec(spec).map_err(|p| at(Some(id.clone()), p))?;
            cat.add(t).map_err(|p| at(Some(id), p))?;
        }
        Ok(cat)
    }

    /// Adds every template of `other`; all or nothing.
    pub fn extend(&mut self, other: TemplateCatalogue) -> Result<(), TemplateError> {
        let mut next = self.clone();
        for t in other.templates {
            let id = t.id.clone();
            next.add(t).map_err(|problem| TemplateError {
                line: 0,
                id: Some(id),
                problem,
            })?;
        }
        *self = next;
        Ok(())
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether the catalogue has no template.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The templates, in catalogue order.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.templates.iter()
    }

    /// The template with this id.
    pub fn get(&self, id: &str) -> Option<&Template> {
        self.by_id.get(id).map(|&i| &self.templates[i])
    }

    /// The template this message is an instance of, with its typed parameters; `None` for an
    /// unknown message (whose text must then not cross).
    pub fn match_message(&self, message: &str) -> Option<Matched<'_>> {
        if message.len() > MAX_MESSAGE_BYTES {
            return None;
        }
        let mut toks = Toks::new(message);
        if !lex(message, false, &mut toks) || toks.len == 0 {
            return None;
        }
        let candidates = self.index.get(&toks.hash.0)?;
        candidates
            .iter()
            .find_map(|&s| self.verify(&self.shapes[s], &toks))
    }

    /// Rebuilds the message from the template text and the typed values only. `None` if the
    /// template id is not in this catalogue or a parameter does not fit its slot.
    pub fn render(&self, matched: &Matched<'_>) -> Option<String> {
        let t = self.get(matched.template_id)?;
        if matched.params.len() != t.slots.len() {
            return None;
        }
        let fits = t
            .slots
            .iter()
            .zip(&matched.params)
            .all(|(s, p)| s.name == p.name && value_fits(&s.ty, &p.value));
        fits.then(|| render_values(t, matched.params.iter().map(|p| &p.value)))
    }

    fn verify<'c>(&'c self, shape: &Shape, toks: &Toks<'_>) -> Option<Matched<'c>> {
        if shape.elems.len() != toks.len {
            return None;
        }
        let t = &self.templates[shape.template];
        let mut params = Vec::with_capacity(t.slots.len());
        let push_part = |params: &mut Vec<Param<'c>>| {
            if let Some((slot, part)) = shape.part {
                if params.len() == slot {
                    params.push(Param {
                        name: t.slots[slot].name.as_str(),
                        value: ParamValue::Part(PARTS[part]),
                    });
                }
            }
        };
        for (e, tok) in shape.elems.iter().zip(toks.iter()) {
            if e.glued != tok.glued {
                return None;
            }
            match &e.kind {
                ElemKind::Lit { text, class } => {
                    let same = match class {
                        Class::Lit => text.eq_ignore_ascii_case(tok.text),
                        _ => text == tok.text,
                    };
                    if tok.class != *class || !same {
                        return None;
                    }
                }
                ElemKind::Unit(u) => {
                    if tok.class != Class::Lit || tok.text != u.symbol() {
                        return None;
                    }
                }
                ElemKind::Slot(i, _) => {
                    push_part(&mut params);
                    let value = parse_value(&t.slots[*i].ty, &tok)?;
                    params.push(Param {
                        name: t.slots[*i].name.as_str(),
                        value,
                    });
                }
            }
        }
        push_part(&mut params);
        Some(Matched {
            template_id: t.id.as_str(),
            params,
        })
    }

    /// Adds one template: checks it against itself, then against the catalogue.
    fn add(&mut self, t: Template) -> Result<(), Problem> {
        if self.by_id.contains_key(&t.id) {
            return Err(Problem::DuplicateId(t.id));
        }
        self_check(&t)?;
        let ti = self.templates.len();
        let shapes = expand(&t, ti)?;
        for s in &shapes {
            if let Some(others) = self.index.get(&s.hash) {
                if let Some(&o) = others.iter().find(|&&o| same_shape(&self.shapes[o], s)) {
                    let other = &self.templates[self.shapes[o].template].id;
                    return Err(Problem::Ambiguous(other.clone()));
                }
            }
        }
        for s in shapes {
            self.index
                .entry(s.hash)
                .or_default()
                .push(self.shapes.len());
            self.shapes.push(s);
        }
        self.by_id.insert(t.id.clone(), ti);
        self.templates.push(t);
        Ok(())
    }
}

/// Text with runs of whitespace collapsed to one space and trimmed: the form a matched message
/// is rendered back to (up to the capitalisation of literal words).
pub fn canonical(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for w in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Template construction

#[derive(Debug, Clone, PartialEq)]
struct Elem {
    glued: bool,
    kind: ElemKind,
}

#[derive(Debug, Clone, PartialEq)]
enum ElemKind {
    /// Literal text; `class` is what the lexer makes of it (a literal may be a number such as
    /// the `2000` of "NextSeq 2000", matched exactly).
    Lit {
        text: String,
        class: Class,
    },
    Unit(Unit),
    /// A slot (index into the template's slots) and the class of token it accepts.
    Slot(usize, Class),
}

#[derive(Debug, Clone)]
struct Shape {
    template: usize,
    elems: Vec<Elem>,
    /// (slot index, part index) of the expanded part slot.
    part: Option<(usize, usize)>,
    hash: u64,
}

impl Template {
    fn from_spec(spec: Spec) -> Result<Template, Problem> {
        if !valid_id(&spec.id) {
            return Err(Problem::BadId(spec.id));
        }
        let subsystem = match spec.subsystem {
            None => None,
            Some(s) => Some(
                *SUBSYSTEMS
                    .iter()
                    .find(|k| **k == s)
                    .ok_or(Problem::BadSubsystem(s))?,
            ),
        };
        let pattern = canonical(&spec.pattern);
        let (slots, elems) = parse_pattern(&pattern)?;
        Ok(Template {
            id: spec.id,
            subsystem,
            pattern,
            example: spec.example,
            source: spec.source,
            slots,
            elems,
        })
    }
}

fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    (2..=64).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

fn parse_pattern(p: &str) -> Result<(Vec<Slot>, Vec<Elem>), Problem> {
    if p.is_empty() {
        return Err(Problem::EmptyPattern);
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut elems: Vec<Elem> = Vec::new();
    let mut rest = p;
    let mut prev_slot = false;
    loop {
        let open = rest.find('{');
        let lit_end = open.unwrap_or(rest.len());
        let literal = &rest[..lit_end];
        if literal.contains('}') {
            return Err(Problem::UnbalancedBrace);
        }
        if !literal.is_empty() {
            let starts_ws = literal.starts_with(char::is_whitespace);
            if prev_slot && !starts_ws && literal.starts_with(|c: char| c.is_alphanumeric()) {
                return Err(Problem::SlotGluedToWord(slot_name_of(&slots)));
            }
            let mut toks = Toks::new(literal);
            if !lex(literal, !elems.is_empty() && !starts_ws, &mut toks) {
                return Err(Problem::TooLong);
            }
            for t in toks.iter() {
                elems.push(Elem {
                    glued: t.glued,
                    kind: ElemKind::Lit {
                        text: t.text.to_string(),
                        class: t.class,
                    },
                });
            }
        }
        let Some(open) = open else { break };
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or(Problem::UnbalancedBrace)?;
        let inner = &after[..close];
        if inner.contains('{') {
            return Err(Problem::UnbalancedBrace);
        }
        let glued = !elems.is_empty() && !literal.ends_with(char::is_whitespace);
        if glued && literal.is_empty() {
            return Err(Problem::AdjacentSlots);
        }
        let slot = parse_slot(inner)?;
        if glued && literal.ends_with(|c: char| c.is_alphanumeric()) {
            return Err(Problem::SlotGluedToWord(slot.name));
        }
        if slots.iter().any(|s| s.name == slot.name) {
            return Err(Problem::DuplicateSlotName(slot.name));
        }
        let unit = match slot.ty {
            SlotType::Number { unit, .. } => unit,
            _ => None,
        };
        let class = slot_class(&slot.ty);
        slots.push(slot);
        elems.push(Elem {
            glued,
            kind: ElemKind::Slot(slots.len() - 1, class),
        });
        if let Some(u) = unit {
            elems.push(Elem {
                glued: u.glued(),
                kind: ElemKind::Unit(u),
            });
        }
        prev_slot = true;
        rest = &after[close + 1..];
    }
    let parts = slots.iter().filter(|s| s.ty == SlotType::Part).count();
    if slots.len() > MAX_SLOTS || parts > 1 {
        return Err(Problem::TooManySlots);
    }
    let has_word = elems.iter().any(|e| match &e.kind {
        ElemKind::Lit { text, class } => {
            *class == Class::Lit && text.chars().filter(char::is_ascii_alphabetic).count() >= 2
        }
        _ => false,
    });
    if !has_word {
        return Err(Problem::NoLiteralWord);
    }
    if elems.len() > MAX_TOKENS {
        return Err(Problem::TooLong);
    }
    Ok((slots, elems))
}

fn slot_name_of(slots: &[Slot]) -> String {
    slots.last().map(|s| s.name.clone()).unwrap_or_default()
}

fn parse_slot(inner: &str) -> Result<Slot, Problem> {
    let inner = inner.trim();
    let (name, spec) = match inner.split_once(':') {
        Some((n, s)) => (n.trim(), s.trim()),
        None => (inner, inner),
    };
    let nb = name.as_bytes();
    let name_ok = (1..=32).contains(&nb.len())
        && nb[0].is_ascii_lowercase()
        && nb
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    if !name_ok {
        return Err(if inner.is_empty() {
            Problem::BadSlot(inner.to_string())
        } else {
            Problem::BadSlotName(name.to_string())
        });
    }
    let mut words = spec.split_whitespace();
    let ty = words.next().ok_or(Problem::BadSlot(inner.to_string()))?;
    let args: Vec<&str> = words.collect();
    let no_args = |ty: SlotType| match args.first() {
        Some(a) => Err(Problem::UnexpectedArgument(name.to_string(), a.to_string())),
        None => Ok(ty),
    };
    let ty = match ty {
        "code" => no_args(SlotType::Code)?,
        "version" => no_args(SlotType::Version)?,
        "part" => no_args(SlotType::Part)?,
        "int" => {
            let [range] = args[..] else {
                return Err(match args.get(1) {
                    Some(a) => Problem::UnexpectedArgument(name.to_string(), a.to_string()),
                    None => Problem::MissingRange(name.to_string(), ""),
                });
            };
            // Integral bounds within ±999 999: the conversions are exact.
            let (min, max) = parse_range(range, |s| s.parse::<i64>().ok().map(|v| v as f64))?;
            SlotType::Int {
                min: min as i64,
                max: max as i64,
            }
        }
        "number" => {
            let mut range = None;
            let mut unit = None;
            for a in &args {
                if a.contains("..") {
                    if range.is_some() {
                        return Err(Problem::UnexpectedArgument(name.to_string(), a.to_string()));
                    }
                    range = Some(parse_range(a, |s| {
                        s.parse::<f64>().ok().filter(|v| v.is_finite())
                    })?);
                } else if let Some(u) = Unit::from_symbol(a) {
                    if unit.is_some() {
                        return Err(Problem::UnexpectedArgument(name.to_string(), a.to_string()));
                    }
                    unit = Some(u);
                } else {
                    return Err(Problem::UnknownUnit(a.to_string()));
                }
            }
            let (min, max) = match (range, unit) {
                (Some(r), _) => r,
                (None, Some(u)) => u.default_range(),
                (None, None) => {
                    return Err(Problem::MissingRange(name.to_string(), " or a unit"));
                }
            };
            SlotType::Number { min, max, unit }
        }
        other => match INT_ALIASES.iter().find(|(n, ..)| *n == other) {
            Some((_, min, max)) => no_args(SlotType::Int {
                min: *min,
                max: *max,
            })?,
            None => return Err(Problem::UnknownSlotType(other.to_string())),
        },
    };
    Ok(Slot {
        name: name.to_string(),
        ty,
    })
}

fn parse_range(text: &str, num: impl Fn(&str) -> Option<f64>) -> Result<(f64, f64), Problem> {
    let bad = || Problem::BadRange(text.to_string());
    let (a, b) = text.split_once("..=").ok_or_else(bad)?;
    let (a, b) = (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?);
    let lim = MAX_ABS as f64;
    let within = |v: f64| (-lim..=lim).contains(&v);
    if a > b || !within(a) || !within(b) {
        return Err(bad());
    }
    Ok((a, b))
}

/// Expands a template into its shapes: one, or one per part.
fn expand(t: &Template, ti: usize) -> Result<Vec<Shape>, Problem> {
    let part_slot = t.slots.iter().position(|s| s.ty == SlotType::Part);
    let Some(ps) = part_slot else {
        return Ok(vec![shape_of(ti, t.elems.clone(), None)]);
    };
    let mut shapes = Vec::with_capacity(PARTS.len());
    for (pi, name) in PARTS.iter().enumerate() {
        let mut elems = Vec::with_capacity(t.elems.len() + 6);
        for e in &t.elems {
            if matches!(e.kind, ElemKind::Slot(i, _) if i == ps) {
                let mut toks = Toks::new(name);
                if !lex(name, e.glued, &mut toks) {
                    return Err(Problem::TooLong);
                }
                elems.extend(toks.iter().map(|t| Elem {
                    glued: t.glued,
                    kind: ElemKind::Lit {
                        text: t.text.to_string(),
                        class: t.class,
                    },
                }));
            } else {
                elems.push(e.clone());
            }
        }
        if elems.len() > MAX_TOKENS {
            return Err(Problem::TooLong);
        }
        shapes.push(shape_of(ti, elems, Some((ps, pi))));
    }
    Ok(shapes)
}

fn shape_of(template: usize, elems: Vec<Elem>, part: Option<(usize, usize)>) -> Shape {
    let mut h = Fnv::new();
    for e in &elems {
        match &e.kind {
            ElemKind::Lit { text, class } => h.token(e.glued, *class, text),
            ElemKind::Unit(u) => h.token(e.glued, Class::Lit, u.symbol()),
            ElemKind::Slot(_, class) => h.token(e.glued, *class, ""),
        }
    }
    Shape {
        template,
        elems,
        part,
        hash: h.0,
    }
}

/// Whether two shapes could match the same message.
fn same_shape(a: &Shape, b: &Shape) -> bool {
    a.elems.len() == b.elems.len()
        && a.elems.iter().zip(&b.elems).all(|(x, y)| {
            x.glued == y.glued
                && match (elem_class(x), elem_class(y)) {
                    (ElemClass::Word(p), ElemClass::Word(q)) => p.eq_ignore_ascii_case(q),
                    (p, q) => p == q,
                }
        })
}

#[derive(PartialEq)]
enum ElemClass<'a> {
    Word(&'a str),
    /// A numeric or code token: a literal and a slot of the class may both match it.
    Class(Class),
}

fn elem_class(e: &Elem) -> ElemClass<'_> {
    match &e.kind {
        ElemKind::Lit {
            text,
            class: Class::Lit,
        } => ElemClass::Word(text),
        ElemKind::Lit { class, .. } => ElemClass::Class(*class),
        ElemKind::Unit(u) => ElemClass::Word(u.symbol()),
        ElemKind::Slot(_, class) => ElemClass::Class(*class),
    }
}

/// Builds a message from the template and values (shared by `render` and the self-check).
fn render_values<'v>(t: &Template, values: impl Iterator<Item = &'v ParamValue>) -> String {
    let values: Vec<&ParamValue> = values.collect();
    let mut out = String::with_capacity(t.pattern.len() + 16);
    for (i, e) in t.elems.iter().enumerate() {
        if i > 0 && !e.glued {
            out.push(' ');
        }
        match &e.kind {
            ElemKind::Lit { text, .. } => out.push_str(text),
            ElemKind::Unit(u) => out.push_str(u.symbol()),
            ElemKind::Slot(s, _) => match values.get(*s) {
                Some(ParamValue::Int(v)) => {
                    let _ = write!(out, "{v}");
                }
                Some(ParamValue::Number {
                    value, decimals, ..
                }) => {
                    let _ = write!(out, "{:.*}", usize::from(*decimals), value);
                }
                Some(ParamValue::Code(c)) => out.push_str(c),
                Some(ParamValue::Version(v)) => out.push_str(v),
                Some(ParamValue::Part(p)) => {
                    let mut chars = p.chars();
                    if i == 0 {
                        if let Some(c) = chars.next() {
                            out.extend(c.to_uppercase());
                        }
                    }
                    out.push_str(chars.as_str());
                }
                None => {}
            },
        }
    }
    out
}

/// A synthetic instance of the template must match it and render back; so must its example.
fn self_check(t: &Template) -> Result<(), Problem> {
    let mut solo = TemplateCatalogue::default();
    let ti = 0;
    let shapes = expand(t, ti)?;
    solo.templates.push(t.clone());
    solo.by_id.insert(t.id.clone(), ti);
    for s in shapes {
        solo.index
            .entry(s.hash)
            .or_default()
            .push(solo.shapes.len());
        solo.shapes.push(s);
    }
    let samples: Vec<ParamValue> = t
        .slots
        .iter()
        .map(|s| match s.ty {
            SlotType::Int { min, .. } => ParamValue::Int(min),
            SlotType::Number { min, max, unit } => {
                // The smallest whole value in range, else the smallest with 3 decimals.
                let (value, decimals) = if min.ceil() <= max {
                    (min.ceil(), 0)
                } else {
                    ((min * 1000.0).ceil() / 1000.0, 3)
                };
                ParamValue::Number {
                    value,
                    decimals,
                    unit,
                }
            }
            SlotType::Code => ParamValue::Code("E100".into()),
            SlotType::Version => ParamValue::Version("1.0.0".into()),
            SlotType::Part => ParamValue::Part(PARTS[0]),
        })
        .collect();
    let sample = render_values(t, samples.iter());
    let ok = solo
        .match_message(&sample)
        .and_then(|m| solo.render(&m))
        .is_some_and(|r| r == sample);
    if !ok {
        return Err(Problem::SelfCheck(sample));
    }
    if let Some(ex) = &t.example {
        let m = solo.match_message(ex).ok_or(Problem::ExampleDoesNotMatch)?;
        let r = solo.render(&m).unwrap_or_default();
        if &r != ex {
            return Err(Problem::ExampleDoesNotRoundTrip(r));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Values

fn parse_value(ty: &SlotType, tok: &Tok<'_>) -> Option<ParamValue> {
    match ty {
        SlotType::Int { min, max } => {
            (tok.class == Class::Numeric).then_some(())?;
            let v = parse_int(tok.text)?;
            (min..=max).contains(&&v).then_some(ParamValue::Int(v))
        }
        SlotType::Number { min, max, unit } => {
            (tok.class == Class::Numeric).then_some(())?;
            let (value, decimals) = parse_number(tok.text)?;
            (*min..=*max)
                .contains(&value)
                .then_some(ParamValue::Number {
                    value,
                    decimals,
                    unit: *unit,
                })
        }
        SlotType::Code => (tok.class == Class::Code).then(|| ParamValue::Code(tok.text.into())),
        SlotType::Version => (tok.class == Class::Numeric && is_version(tok.text))
            .then(|| ParamValue::Version(tok.text.into())),
        SlotType::Part => None,
    }
}

fn value_fits(ty: &SlotType, v: &ParamValue) -> bool {
    match (ty, v) {
        (SlotType::Int { min, max }, ParamValue::Int(x)) => (min..=max).contains(&x),
        (
            SlotType::Number { min, max, unit },
            ParamValue::Number {
                value,
                decimals,
                unit: u,
            },
        ) => {
            let text = format!("{:.*}", usize::from(*decimals), value);
            unit == u
                && usize::from(*decimals) <= MAX_DECIMALS
                && parse_number(&text).is_some_and(|(p, _)| (*min..=*max).contains(&p))
        }
        (SlotType::Code, ParamValue::Code(c)) => is_code(c),
        (SlotType::Version, ParamValue::Version(s)) => is_numeric(s) && is_version(s),
        (SlotType::Part, ParamValue::Part(p)) => PARTS.contains(p),
        _ => false,
    }
}

/// `-?[0-9]{1,6}`, no leading zero, no `-0` (it would render as `0`).
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let ok = (1..=MAX_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'))
        && s != "-0";
    ok.then(|| s.parse().ok()).flatten()
}

/// `-?int(.frac)?` with at most 6 digits, at most 3 decimals, no leading zero.
fn parse_number(s: &str) -> Option<(f64, u8)> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(body.contains('.') && frac.is_empty())
        && !(int.len() > 1 && int.starts_with('0'))
        && frac.len() <= MAX_DECIMALS
        && int.len() + frac.len() <= MAX_DIGITS;
    if !ok {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    Some((v, frac.len() as u8))
}

/// `[vV]?` + 2–4 dotted components (1–4 after a `v`), widths ≤ 2, 2, 3, 5, no leading zeros.
fn is_version(s: &str) -> bool {
    // The identifier grammar (no dates, phone numbers or national ids in dotted form), or a
    // short kit version `v3` / `V2`.
    crate::grammar::version(s)
        || s.strip_prefix(['v', 'V']).is_some_and(|d| {
            crate::grammar::version(d)
                || ((1..=2).contains(&d.len())
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && !(d.len() > 1 && d.starts_with('0')))
        })
}

/// `[EWIF][0-9]{3,4}` (a bare instrument fault code, `E1042`) or an event code of the closed
/// grammar ([`crate::grammar::event_code`]: severity, subsystem mnemonic, 3 digits).
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    if matches!(b[0], b'E' | b'W' | b'I' | b'F')
        && (4..=5).contains(&b.len())
        && b[1..].iter().all(u8::is_ascii_digit)
    {
        return true;
    }
    crate::grammar::event_code(s)
}

/// `-?[vV]?[0-9]+(\.[0-9]+)*`: numbers and versions (the slot decides which).
fn is_numeric(s: &str) -> bool {
    let b = s.as_bytes();
    // One leading `-` (a negative number) or `v`/`V` (a version).
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'v' | b'V')));
    // Components of digits separated by single dots, neither first nor last.
    let mut digits = 0usize;
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' => digits += 1,
            b'.' if digits > 0 => digits = 0,
            _ => return false,
        }
        i += 1;
    }
    digits > 0
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Class {
    #[default]
    Lit,
    Numeric,
    Code,
}

/// A token: a slice of the lexed text, its class, and whether it is glued to the previous one.
#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    class: Class,
    glued: bool,
}

/// A token as stored: byte offsets into the source (6 bytes instead of 24, so the fixed buffer
/// is cheap to set up on every message).
#[derive(Debug, Clone, Copy, Default)]
struct Packed {
    start: u16,
    end: u16,
    class: Class,
    glued: bool,
}

/// The tokens of one text, in a fixed buffer: lexing never allocates.
struct Toks<'a> {
    src: &'a str,
    buf: [Packed; MAX_TOKENS],
    len: usize,
    /// The shape hash of the tokens so far (see [`Fnv::token`]).
    hash: Fnv,
}

impl<'a> Toks<'a> {
    fn new(src: &'a str) -> Self {
        Toks {
            src,
            buf: [Packed::default(); MAX_TOKENS],
            len: 0,
            hash: Fnv::new(),
        }
    }
    fn iter(&self) -> impl Iterator<Item = Tok<'a>> + '_ {
        self.buf[..self.len].iter().map(|p| Tok {
            text: self
                .src
                .get(usize::from(p.start)..usize::from(p.end))
                .unwrap_or(""),
            class: p.class,
            glued: p.glued,
        })
    }
    /// Pushes a token (a slice of `src`); the next one in the same chunk is glued to it.
    fn push(&mut self, text: &'a str, class: Class, glued: &mut bool) -> bool {
        // Offsets from addresses: `text` is always a sub-slice of `src`.
        let start = (text.as_ptr() as usize).wrapping_sub(self.src.as_ptr() as usize);
        let end = start + text.len();
        if self.len == MAX_TOKENS || end > self.src.len() {
            return false;
        }
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            return false;
        };
        self.buf[self.len] = Packed {
            start,
            end,
            class,
            glued: *glued,
        };
        self.hash.token(*glued, class, text);
        self.len += 1;
        *glued = true;
        true
    }
}

fn is_lead(c: char) -> bool {
    matches!(c, '(' | '[' | '{' | '"' | '\'')
}

fn is_trail(c: char) -> bool {
    matches!(
        c,
        ')' | ']' | '}' | ',' | ';' | ':' | '.' | '!' | '?' | '"' | '\''
    )
}

/// Splits `s` into tokens; `first_glued` says whether the first token is glued to what precedes
/// `s`. False when there are more than [`MAX_TOKENS`] tokens.
fn lex<'a>(s: &'a str, first_glued: bool, out: &mut Toks<'a>) -> bool {
    debug_assert!(std::ptr::eq(s, out.src));
    let mut glued = first_glued;
    // Chunks between whitespace (the same whitespace as `str::split_whitespace`), scanned byte
    // by byte with a fast path for ASCII.
    let b = s.as_bytes();
    let mut i = 0;
    let mut start: Option<usize> = None;
    while i < b.len() {
        let (ws, width) = if b[i] < 0x80 {
            (
                matches!(b[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
                1,
            )
        } else {
            match s.get(i..).and_then(|r| r.chars().next()) {
                Some(c) => (c.is_whitespace(), c.len_utf8()),
                None => return false,
            }
        };
        match (ws, start) {
            (true, Some(st)) => {
                if !lex_chunk(&s[st..i], &mut glued, out) {
                    return false;
                }
                glued = false;
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
        i += width;
    }
    match start {
        Some(st) => lex_chunk(&s[st..], &mut glued, out),
        None => true,
    }
}

fn lex_chunk<'a>(chunk: &'a str, glued: &mut bool, out: &mut Toks<'a>) -> bool {
    let mut core = chunk;
    while let Some(c) = core.chars().next().filter(|c| is_lead(*c)) {
        let (p, rest) = core.split_at(c.len_utf8());
        if !out.push(p, Class::Lit, glued) {
            return false;
        }
        core = rest;
    }
    let mut end = core.len();
    while let Some(c) = core[..end].chars().next_back().filter(|c| is_trail(*c)) {
        end -= c.len_utf8();
    }
    let (mid, trail) = core.split_at(end);
    if !lex_core(mid, glued, out) {
        return false;
    }
    let mut t = trail;
    while let Some(c) = t.chars().next() {
        let (p, rest) = t.split_at(c.len_utf8());
        if !out.push(p, Class::Lit, glued) {
            return false;
        }
        t = rest;
    }
    true
}

fn lex_core<'a>(core: &'a str, glued: &mut bool, out: &mut Toks<'a>) -> bool {
    if core.is_empty() {
        return true;
    }
    if Unit::from_symbol(core).is_some() {
        return out.push(core, Class::Lit, glued);
    }
    if let Some(n) = numeric_unit_split(core) {
        return out.push(&core[..n], Class::Numeric, glued)
            && out.push(&core[n..], Class::Lit, glued);
    }
    let mut start = 0;
    for (i, c) in core.char_indices() {
        if c == '/' || c == '=' {
            if i > start && !classify(&core[start..i], glued, out) {
                return false;
            }
            if !out.push(&core[i..i + 1], Class::Lit, glued) {
                return false;
            }
            start = i + 1;
        }
    }
    start == core.len() || classify(&core[start..], glued, out)
}

fn classify<'a>(piece: &'a str, glued: &mut bool, out: &mut Toks<'a>) -> bool {
    if is_numeric(piece) {
        out.push(piece, Class::Numeric, glued)
    } else if is_code(piece) {
        out.push(piece, Class::Code, glued)
    } else if let Some(n) = numeric_unit_split(piece) {
        out.push(&piece[..n], Class::Numeric, glued) && out.push(&piece[n..], Class::Lit, glued)
    } else {
        out.push(piece, Class::Lit, glued)
    }
}

/// Where a number glued to a catalogue unit (`45%`, `60C`) splits.
fn numeric_unit_split(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    (i < b.len() && is_numeric(&s[..i]) && Unit::from_symbol(&s[i..]).is_some()).then_some(i)
}

// ---------------------------------------------------------------------------------------------
// Shape hashing (FNV-1a, 64 bit)

#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn token(&mut self, glued: bool, class: Class, text: &str) {
        self.byte(u8::from(glued));
        self.byte(class as u8 + 1);
        if class == Class::Lit {
            for b in text.bytes() {
                self.byte(b.to_ascii_lowercase());
            }
        }
        // 0xFF never occurs in UTF-8: an unambiguous separator.
        self.byte(0xFF);
    }
}

fn slot_class(ty: &SlotType) -> Class {
    match ty {
        SlotType::Code => Class::Code,
        _ => Class::Numeric,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> TemplateCatalogue {
        TemplateCatalogue::builtin()
    }

    fn roundtrip(c: &TemplateCatalogue, m: &str) -> Option<(String, String)> {
        let matched = c.match_message(m)?;
        let rendered = c.render(&matched).expect("a match renders");
        Some((matched.template_id.to_string(), rendered))
    }

    /// Text of a parameter value, as it would be written anywhere downstream.
    fn param_text(v: &ParamValue) -> String {
        match v {
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Number {
                value, decimals, ..
            } => format!("{:.*}", usize::from(*decimals), value),
            ParamValue::Code(s) | ParamValue::Version(s) => s.clone(),
            ParamValue::Part(p) => p.to_string(),
        }
    }

    #[test]
    fn builtin_catalogue_parses_and_is_broad() {
        let c = cat();
        assert!(c.len() >= 80, "{} templates", c.len());
        for t in c.templates() {
            assert!(t.example().is_some(), "{} has no example", t.id());
            assert!(t.source().is_some_and(|s| !s.is_empty()), "{}", t.id());
        }
    }

    #[test]
    fn every_builtin_template_round_trips_its_example() {
        let c = cat();
        for t in c.templates() {
            let ex = t.example().expect("example");
            let (id, rendered) = roundtrip(&c, ex).unwrap_or_else(|| panic!("{ex} unmatched"));
            assert_eq!(id, t.id(), "{ex}");
            assert_eq!(rendered, ex);
            assert_eq!(canonical(ex), ex);
        }
    }

    #[test]
    fn benign_messages_match() {
        let c = cat();
        let mut benign: Vec<String> = [
            // issue 9
            "RTA 2.4.11",
            "Chiller fault code E1042 on pump 2",
            "Run completed successfully",
            "HD 3.4.0.38",
            "TruSeq SBS v3",
            // privacy-enforcer technical_messages_cross
            "Laser power below threshold: 412.5 mW (nominal 500 mW)",
            "Flow cell temperature deviation 2.1 C from setpoint 60.0 C",
            "Cycle 57/318 completed",
            "E-FLU-301 pressure high at inlet: 181 kPa",
            "Run started",
            "Autofocus retry on lane 2 tile 1104",
            "SBS v1.5 300 cycles",
            "MiSeq Control Software",
            "Flow Cell Temperature",
            // variations
            "Laser power below threshold: 0.5 mW (nominal 500.25 mW)",
            "Chiller fault code W-THM-102 on pump 16",
            "Flow cell temperature deviation -1.5 C from setpoint 65 C",
            "Fluidics pump replaced",
            "Z-stage / autofocus assembly replaced",
            "Leak detected at pump seal or fluidics fitting (leak)",
            "Suspected part: flow-cell heater (thermal station)",
            "Reagent chiller (Peltier and fan) fault detected",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every message the simulator emits.
        benign.extend((1..=322).map(|c| format!("Cycle {c}/322 completed")));
        benign.extend(
            (1101..1161).map(|t| format!("Image registration failed on tile {t} retrying")),
        );
        for m in &benign {
            let (_, rendered) = roundtrip(&c, m).unwrap_or_else(|| panic!("`{m}` unmatched"));
            assert_eq!(&rendered, m);
        }
    }

    #[test]
    fn params_are_typed() {
        let c = cat();
        let m = c
            .match_message("Laser power below threshold: 412.5 mW (nominal 500 mW)")
            .expect("match");
        assert_eq!(m.template_id, "LASER_POWER_BELOW_THRESHOLD");
        assert_eq!(
            m.params,
            vec![
                Param {
                    name: "power",
                    value: ParamValue::Number {
                        value: 412.5,
                        decimals: 1,
                        unit: Some(Unit::MilliWatt)
                    }
                },
                Param {
                    name: "nominal",
                    value: ParamValue::Number {
                        value: 500.0,
                        decimals: 0,
                        unit: Some(Unit::MilliWatt)
                    }
                },
            ]
        );
        let m = c
            .match_message("Chiller fault code E1042 on pump 2")
            .expect("match");
        assert_eq!(m.params[0].value, ParamValue::Code("E1042".into()));
        assert_eq!(m.params[1].value, ParamValue::Int(2));
        let m = c.match_message("RTA 2.4.11").expect("match");
        assert_eq!(m.params[0].value, ParamValue::Version("2.4.11".into()));
        let m = c
            .match_message("Excitation laser module service due in 14 days")
            .expect("match");
        assert_eq!(m.template_id, "PART_SERVICE_DUE");
        assert_eq!(m.params[0].name, "part");
        assert_eq!(
            m.params[0].value,
            ParamValue::Part("excitation laser module")
        );
        assert_eq!(m.params[1].value, ParamValue::Int(14));
    }

    #[test]
    fn whitespace_and_case_are_canonicalised() {
        let c = cat();
        let (_, r) = roundtrip(&c, "  Cycle 57/322   completed ").expect("match");
        assert_eq!(r, "Cycle 57/322 completed");
        let (_, r) = roundtrip(&c, "RUN COMPLETED SUCCESSFULLY").expect("match");
        assert_eq!(r, "Run completed successfully");
        // Units are case-sensitive: MW is not mW.
        assert!(c
            .match_message("Laser power below threshold: 412.5 MW (nominal 500 mW)")
            .is_none());
        // Spacing is part of the shape.
        assert!(c.match_message("Cycle 57 / 322 completed").is_none());
    }

    #[test]
    fn out_of_range_and_malformed_values_never_match() {
        let c = cat();
        for m in [
            "Autofocus retry on lane 9 tile 1104",
            "Autofocus retry on lane 0 tile 1104",
            "Autofocus retry on lane 2 tile 100000",
            "Autofocus retry on lane 02 tile 1104",
            "Autofocus retry on lane +2 tile 1104",
            "Cycle 2001/322 completed",
            "Cycle 57/0 completed",
            "Chiller fault code E1042 on pump 17",
            "Chiller fault code E10420 on pump 2",
            "Chiller fault code NA12878 on pump 2",
            "Chiller fault code S07-1184 on pump 2",
            "Chiller fault code MRN-00482913 on pump 2",
            "Laser power below threshold: 20000 mW (nominal 500 mW)",
            "Laser power below threshold: 412.5555 mW (nominal 500 mW)",
            "Laser power below threshold: 5558675309 mW (nominal 500 mW)",
            "Laser power below threshold: 007 mW (nominal 500 mW)",
            "Flow cell temperature deviation 2.1 C from setpoint 1984 C",
            "RTA 12.03.1984",
            "RTA 1984.03.12",
            "RTA 03.12.84",
            "RTA 555.867.5309",
            "RTA 192.168.1.20",
            "RTA 2.4.11.19840312",
            "RTA 2",
            "Reagent kit expires in 19840312 days",
        ] {
            assert!(c.match_message(m).is_none(), "`{m}` matched");
        }
    }

    const PII: &[&str] = &[
        "John Smith",
        "Operator John Smith",
        "Dr. Maria Lindqvist",
        "jane.doe@example-hospital.org",
        "maria.lindqvist@st-olaf-hospital.example",
        "+44 20 7946 0958",
        "555-867-5309",
        "5558675309",
        "(555) 867-5309",
        "123-45-6789",
        "1984-03-12",
        "12.03.1984",
        "03/12/1984",
        "19840312",
        "DOB 1984-03-12",
        "MRN-00482913",
        "MRN12345678",
        "patient_7",
        "NA12878",
        "HG00096",
        "Sample_1",
        "S07-1184",
        "ACGTTGCAGGTCAACGTAGGCTAGCT",
        "acgttgcaggtcaacgtagg",
        "AUGGCUAGCUAGGCUA",
        "C:\\Users\\jdoe\\runs",
        "\\\\lab-nas\\share\\patients",
        "/home/jdoe/runs/oncology",
        "~/patients/smith",
        "Oncology panel for tumour board",
    ];

    #[test]
    fn personal_data_in_messages_never_matches() {
        let c = cat();
        for m in [
            "Operator John Smith restarted run",
            "Run started by Dr. Maria Lindqvist",
            "Run started by jane.doe@example-hospital.org",
            "Run started by maria.lindqvist@st-olaf-hospital.example",
            "Loaded patient MRN-00482913 for oncology panel",
            "Read check failed at ACGTTGCAGGTCAACGTAGGCTAGCT",
            "Library S07-1184 loaded",
            "Library S12-0456 loaded",
            "Call +44 20 7946 0958 on error",
            "DOB 1984-03-12",
            "Oncology panel for tumour board",
            "Run started_John_Smith",
            "Run started:jane.doe@example.org",
            "Run completed successfully /home/jdoe/runs",
            "RTA 2.4.11_NA12878",
            "RTA 2.4.11-Sample_1",
            "RTA NA12878",
            "Cycle 57/322 completed/NA12878",
            "Cycle 57/322 completed.patient_7",
            "Chiller fault code E1042 on pump 2:MRN12345678",
            "Sample_1 replaced",
            "John Smith replaced",
            "Smith fault detected",
        ] {
            assert!(c.match_message(m).is_none(), "`{m}` matched");
        }
    }

    /// xorshift64*: deterministic, no crate needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pieces of a PII string that must never come out: the whole string and its longer words.
    fn secrets(pii: &str) -> Vec<String> {
        let mut s = vec![pii.to_lowercase()];
        s.extend(
            pii.split_whitespace()
                .filter(|w| w.len() >= 5)
                .map(str::to_lowercase),
        );
        s
    }

    #[test]
    fn property_injected_pii_never_crosses() {
        let c = cat();
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let glue = ["_", "-", ".", ":", "/"];
        let examples: Vec<String> = c
            .templates()
            .filter_map(|t| t.example().map(str::to_string))
            .collect();
        let mut matched_after_injection = 0usize;
        let mut cases = 0usize;
        for ex in &examples {
            for _ in 0..60 {
                let base = PII[rng.below(PII.len())];
                let pii = match rng.below(3) {
                    0 => base.to_string(),
                    1 => base.to_uppercase(),
                    _ => base.to_lowercase(),
                };
                let mut words: Vec<String> = ex.split(' ').map(str::to_string).collect();
                let pos = rng.below(words.len());
                let g = glue[rng.below(glue.len())];
                match rng.below(5) {
                    0 => words.insert(rng.below(words.len() + 1), pii.clone()),
                    1 => words[pos] = format!("{}{g}{pii}", words[pos]),
                    2 => words[pos] = format!("{pii}{g}{}", words[pos]),
                    3 => words[pos] = pii.clone(),
                    _ => words[pos] = format!("{pii}{g}"),
                }
                let msg = words.join(" ");
                cases += 1;
                let Some(m) = c.match_message(&msg) else {
                    continue;
                };
                matched_after_injection += 1;
                let rendered = c.render(&m).expect("renders").to_lowercase();
                for s in secrets(&pii) {
                    assert!(!rendered.contains(&s), "`{msg}` rendered `{rendered}`");
                    for p in &m.params {
                        let t = param_text(&p.value).to_lowercase();
                        assert!(!t.contains(&s), "`{msg}` param {} = `{t}`", p.name);
                    }
                }
            }
        }
        assert!(cases > 5_000);
        // Injection changes the shape in (nearly) every case.
        assert!(
            matched_after_injection * 100 < cases,
            "{matched_after_injection} of {cases}"
        );
    }

    #[test]
    fn render_refuses_values_that_do_not_fit() {
        let c = cat();
        let mut m = c.match_message("RTA 2.4.11").expect("match");
        m.params[0].value = ParamValue::Version("Jane Doe".into());
        assert_eq!(c.render(&m), None);
        m.params[0].value = ParamValue::Code("E1042".into());
        assert_eq!(c.render(&m), None);
        let mut m = c
            .match_message("Chiller fault code E1042 on pump 2")
            .expect("match");
        m.params[0].value = ParamValue::Code("NA12878".into());
        assert_eq!(c.render(&m), None);
        let mut m = c.match_message("Fluidics pump replaced").expect("match");
        m.params[0].value = ParamValue::Part("John Smith");
        assert_eq!(c.render(&m), None);
        let m = Matched {
            template_id: "NO_SUCH_TEMPLATE",
            params: vec![],
        };
        assert_eq!(c.render(&m), None);
    }

    #[test]
    fn operators_extend_the_catalogue_without_a_rebuild() {
        let text = r#"
# site-specific messages
{"id":"UPS_ON_BATTERY","pattern":"UPS on battery for {duration:number min}","subsystem":"other","example":"UPS on battery for 2.5 min","source":"site"}

{"id":"CHILLER_SETPOINT","pattern":"Chiller setpoint {setpoint:number 0..=20 °C}","example":"Chiller setpoint 4 °C"}
{"id":"PUMP_PRIMED","pattern":"Pump {pump:int 1..=4} primed on {part}"}
{"id":"FOCUS_QUALITY","pattern":"Focus quality {q:number 0.5..=0.9}","example":"Focus quality 0.75"}
"#;
        let extra = TemplateCatalogue::parse(text).expect("valid");
        assert_eq!(extra.len(), 4);
        let mut c = cat();
        let before = c.len();
        c.extend(extra).expect("extends");
        assert_eq!(c.len(), before + 4);
        assert!(c.match_message("Focus quality 0.95").is_none());
        let (id, r) = roundtrip(&c, "UPS on battery for 2.5 min").expect("match");
        assert_eq!(
            (id.as_str(), r.as_str()),
            ("UPS_ON_BATTERY", "UPS on battery for 2.5 min")
        );
        let (id, _) = roundtrip(&c, "Pump 3 primed on syringe pump").expect("match");
        assert_eq!(id, "PUMP_PRIMED");
        assert!(c.match_message("Chiller setpoint 25 °C").is_none());
        // Extending again with the same ids fails as a whole and names the id.
        let again = TemplateCatalogue::parse(text).expect("valid");
        let err = c.extend(again).expect_err("duplicate");
        assert_eq!(err.problem, Problem::DuplicateId("UPS_ON_BATTERY".into()));
        assert_eq!(c.len(), before + 4);
    }

    #[test]
    fn catalogue_errors_name_the_line_and_the_problem() {
        let line = |pattern: &str| format!(r#"{{"id":"X_Y","pattern":"{pattern}"}}"#);
        let cases: Vec<(String, Problem)> = vec![
            ("not json".into(), Problem::Json(String::new())),
            (
                r#"{"id":"X_Y","pattern":"Run x","colour":"red"}"#.into(),
                Problem::Json(String::new()),
            ),
            (
                r#"{"id":"lower_case","pattern":"Run x"}"#.into(),
                Problem::BadId("lower_case".into()),
            ),
            (
                r#"{"id":"X_Y","pattern":"Run x","subsystem":"kitchen"}"#.into(),
                Problem::BadSubsystem("kitchen".into()),
            ),
            (
                line("Operator {name:text} logged in"),
                Problem::UnknownSlotType("text".into()),
            ),
            (
                line("Operator {name} logged in"),
                Problem::UnknownSlotType("name".into()),
            ),
            (
                line("Pump {n:int} stalled"),
                Problem::MissingRange("n".into(), ""),
            ),
            (
                line("Pump {n:int 5..=1} stalled"),
                Problem::BadRange("5..=1".into()),
            ),
            (
                line("Patient {mrn:int 0..=99999999} seen"),
                Problem::BadRange("0..=99999999".into()),
            ),
            (
                line("Power {p:number} low"),
                Problem::MissingRange("p".into(), " or a unit"),
            ),
            (
                line("Power {p:number furlong} low"),
                Problem::UnknownUnit("furlong".into()),
            ),
            (line("{lane} {tile}"), Problem::NoLiteralWord),
            (
                line("Lane {a:lane} and {a:lane}"),
                Problem::DuplicateSlotName("a".into()),
            ),
            (line("Cycle {a:cycle}{b:cycle}"), Problem::AdjacentSlots),
            (
                line("tile{t:tile} bad"),
                Problem::SlotGluedToWord("t".into()),
            ),
            (line("Run {x:lane"), Problem::UnbalancedBrace),
            (
                line("{part} and {part2:part} swapped"),
                Problem::TooManySlots,
            ),
            (
                r#"{"id":"X_Y","pattern":"Run started","example":"Run started by John"}"#.into(),
                Problem::ExampleDoesNotMatch,
            ),
            (
                r#"{"id":"X_Y","pattern":"Run started"}"#.into(),
                Problem::Ambiguous("RUN_STARTED".into()),
            ),
            (
                r#"{"id":"RUN_STARTED","pattern":"Run began"}"#.into(),
                Problem::DuplicateId("RUN_STARTED".into()),
            ),
        ];
        for (l, want) in cases {
            let text = format!("# header\n\n{l}\n");
            let err = TemplateCatalogue::parse(&text)
                .and_then(|extra| {
                    let mut c = cat();
                    c.extend(extra).map(|_| c)
                })
                .expect_err(&l);
            match (&err.problem, &want) {
                (Problem::Json(_), Problem::Json(_)) => assert_eq!(err.line, 3),
                _ => assert_eq!(err.problem, want, "{l}"),
            }
            if !matches!(
                want,
                Problem::Ambiguous(_) | Problem::DuplicateId(_) | Problem::Json(_)
            ) {
                assert_eq!(err.line, 3, "{l}");
                assert!(err.to_string().starts_with("line 3 ("), "{err}");
            }
        }
    }

    #[test]
    fn lexer_is_bounded_and_tolerant() {
        let c = cat();
        let long = "Run ".repeat(300);
        assert!(c.match_message(&long).is_none());
        assert!(c.match_message(&"x".repeat(5000)).is_none());
        for m in [
            "", " ", "\u{0}", "(((", "/", "%", "-", "µL/min", "v", ".5", "5.", "--5",
        ] {
            assert!(c.match_message(m).is_none(), "{m:?}");
        }
    }

    /// Found by fuzzing (crates/fuzz, target log_message): `-0` in an int slot matched as 0 and
    /// rendered as `0`, so the rendering was not the message it came from.
    #[test]
    fn a_negative_zero_int_does_not_match() {
        let c = cat();
        assert_eq!(
            roundtrip(&c, "Q30 91.4% at cycle 0").map(|r| r.1),
            Some("Q30 91.4% at cycle 0".to_string())
        );
        assert_eq!(roundtrip(&c, "Q30 91.4% at cycle -0"), None);
        assert_eq!(parse_int("-0"), None);
        assert_eq!(parse_int("-7"), Some(-7));
        // A number keeps its sign: -0 renders as -0.
        assert_eq!(
            parse_number("-0").map(|(v, d)| format!("{v:.*}", usize::from(d))),
            Some("-0".into())
        );
    }

    #[test]
    fn grammars() {
        for ok in [
            "E1042",
            "E100",
            "W2001",
            "I-RUN-010",
            "E-FLU-301",
            "E-SW-104",
        ] {
            assert!(is_code(ok), "{ok}");
        }
        // Outside the closed list of severities and subsystem mnemonics: health words, genes,
        // first names (found crossing by a red-team review).
        for bad in [
            "F-SW-104",
            "E-OPTX-900",
            "E-HIV-123",
            "I-BRCA-001",
            "E-KRAS-123",
            "E-ANN-042",
            "F-DOE-123",
        ] {
            assert!(!is_code(bad), "{bad}");
        }
        for bad in [
            "NA12878",
            "E12",
            "E12345",
            "S07-1184",
            "MRN-00482913",
            "E-F-301",
            "e1042",
            "E-FLU-3011",
            "E-FLUID-301",
        ] {
            assert!(!is_code(bad), "{bad}");
        }
        for ok in [
            "2.4.11",
            "3.4.0.38",
            "v3",
            "v1.5",
            "1.18.54",
            "2.20.0.422",
            "V2.6",
        ] {
            assert!(is_version(ok), "{ok}");
        }
        for bad in [
            "12.03.1984",
            "1984.03.12",
            "03.12.84",
            "555.867.5309",
            "19.84.3.12",
            "55.58.675.309",
            "5.55.867.5309",
            "44.20.794.60958",
            "1.23.456.78901",
            "2",
            "1.2.3.4.5",
            "2.4.011",
            "v",
            "1..2",
            "192.168.1.1",
        ] {
            assert!(!is_version(bad), "{bad}");
        }
        assert_eq!(parse_number("412.5"), Some((412.5, 1)));
        assert_eq!(parse_number("-0.125"), Some((-0.125, 3)));
        assert_eq!(parse_number("1234567"), None);
        assert_eq!(parse_number("1.2345"), None);
        assert_eq!(parse_number("01.5"), None);
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("-12"), Some(-12));
        assert_eq!(parse_int("007"), None);
        assert_eq!(parse_int("1234567"), None);
    }

    #[test]
    fn part_catalogue_lexes_to_words_only() {
        for p in PARTS {
            let mut toks = Toks::new(p);
            assert!(lex(p, false, &mut toks), "{p}");
            assert!(toks.iter().all(|t| t.class == Class::Lit), "{p}");
        }
    }
}
