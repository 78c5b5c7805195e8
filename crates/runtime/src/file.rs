//! File mode: the same processor over JSON lines, for replays and backtests without a cluster.
//!
//! Input: one JSON object a line with the input schema's field names (stdin or a file). The main
//! output (first output role) goes to `--output` (stdout by default); every other output, dead
//! letters included, goes to `<side-output-dir>/<topic>.jsonl`. A line that is not JSON is a
//! dead letter `UNDECODABLE` (so is one that is not UTF-8); one that does not fit the schema is
//! `WRONG_SCHEMA`; one longer than `--max-line-bytes` is `TOO_LARGE` (its first 4 KiB kept); the
//! offset of a dead letter is the 1-based line number. Guarantee: every input line is either accepted or
//! dead-lettered; nothing is dropped. A write failure stops the run with an error. An output on
//! the stage's own input role (a repartition topic it re-keys onto, as the cohort analyzer does)
//! is written and also handed back to the stage at once, as the topic would in Kafka mode (its
//! dead letters have offset -1).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use seqmon_model::codec::{decode_value, encode_value_for_readers};
use seqmon_model::json::{avro_to_json, json_to_avro};
use seqmon_model::topics::TopicRole;
use seqmon_model::{store, DeadLetterReason};

use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::processor::{Emitted, Envelope};

/// File-mode settings.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// Input file of JSON lines, or `-` for stdin.
    #[arg(long, default_value = "-")]
    pub input: String,
    /// File for the main output, or `-` for stdout.
    #[arg(long, default_value = "-")]
    pub output: String,
    /// Folder for the other outputs (dead letters, audit, ...), one `<topic>.jsonl` each.
    #[arg(long, default_value = "out")]
    pub side_output_dir: PathBuf,
    /// Longest input line, bytes: a longer line is a dead letter TOO_LARGE (its first bytes
    /// kept) and reading goes on at the next line.
    #[arg(long, default_value_t = 1_048_576)]
    pub max_line_bytes: usize,
}

/// Bytes of an over-long line kept in its dead letter.
const KEPT_OF_LONG_LINE: usize = 4096;

/// One line of input, read with a bound on its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line (without its newline).
    Whole(Vec<u8>),
    /// A line longer than the bound: its first bytes and its length.
    TooLong(Vec<u8>, usize),
}

/// Reads the next line, keeping at most `max` bytes of it; `None` at the end of the input.
/// Public for the fuzz targets (`crates/fuzz`), which split input exactly as file mode does.
pub fn read_line(input: &mut dyn BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = (max + 1).saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        total += chunk.len();
        let consumed = done.unwrap_or(chunk.len());
        input.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if kept.last() == Some(&b'\r') && total <= max {
        kept.pop();
    }
    if total > max {
        kept.truncate(KEPT_OF_LONG_LINE);
        Ok(Some(Line::TooLong(kept, total)))
    } else {
        Ok(Some(Line::Whole(kept)))
    }
}

/// Counts of a file-mode run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Lines read.
    pub lines: u64,
    /// Records written, by topic.
    pub written: HashMap<String, u64>,
}

/// A JSON line converted for a processor: its key (the instrument serial, if it has one) and its
/// single-object Avro bytes.
pub struct ConvertedLine {
    pub key: Option<String>,
    pub bytes: Vec<u8>,
}

/// Encodes one JSON line as the single-object Avro bytes of `schema_name`, parsing it once.
pub fn json_line_to_avro(
    line: &str,
    schema_name: &str,
) -> Result<ConvertedLine, (DeadLetterReason, String)> {
    let json: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| (DeadLetterReason::UNDECODABLE, format!("not JSON: {e}")))?;
    let key = json
        .get("instrument_serial")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let entry = store().latest(schema_name);
    let value =
        json_to_avro(&entry.schema, &json).map_err(|e| (DeadLetterReason::WRONG_SCHEMA, e))?;
    let bytes = encode_value_for_readers(schema_name, value)
        .map_err(|e| (DeadLetterReason::WRONG_SCHEMA, e.to_string()))?;
    Ok(ConvertedLine { key, bytes })
}

/// Decodes an output record to its JSON line, using the catalogue's schema for its role.
pub fn avro_to_json_line(role: TopicRole, value: &[u8]) -> Result<String, RuntimeError> {
    let schema = role.spec().schema;
    let (_, v) = decode_value(value, schema).map_err(|e| {
        RuntimeError::Internal(format!("output of role {role} does not decode: {e}"))
    })?;
    Ok(avro_to_json(&v).to_string())
}

/// Runs `driver` over a JSON-lines input.
pub fn run_file(driver: &mut Driver, args: &FileArgs) -> Result<FileSummary, RuntimeError> {
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    let input: Box<dyn BufRead> = if args.input == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(
            File::open(&args.input).map_err(io(format!("cannot open --input {}", args.input)))?,
        ))
    };
    let source_name = if args.input == "-" {
        "stdin".to_string()
    } else {
        args.input.clone()
    };
    let roles = driver.processor().output_roles();
    let input_schema = driver.processor().input_role().spec().schema;
    let mut writers = Writers::new(roles[0], &args.output, &args.side_output_dir);
    let mut summary = FileSummary::default();
    let mut out = Vec::new();
    let mut input = input;
    let mut number = 0i64;
    while let Some(line) = read_line(&mut *input, args.max_line_bytes)
        .map_err(io(format!("cannot read {source_name}")))?
    {
        number += 1;
        let offset = number;
        // A line that cannot be a record is a dead letter with its bytes; reading goes on.
        let unreadable =
            |raw: &[u8], reason: DeadLetterReason, detail: String| (raw.to_vec(), reason, detail);
        let parsed = match &line {
            Line::TooLong(head, len) => Err(unreadable(
                head,
                DeadLetterReason::TOO_LARGE,
                format!(
                    "line of {len} bytes; at most {} (--max-line-bytes); first {} bytes kept",
                    args.max_line_bytes,
                    head.len()
                ),
            )),
            Line::Whole(raw) => match std::str::from_utf8(raw) {
                Err(e) => Err(unreadable(
                    raw,
                    DeadLetterReason::UNDECODABLE,
                    format!("line is not UTF-8: {e}"),
                )),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => json_line_to_avro(text, input_schema)
                    .map_err(|(reason, detail)| unreadable(raw, reason, detail)),
            },
        };
        summary.lines += 1;
        match parsed {
            Ok(converted) => {
                let env = Envelope {
                    key: converted.key.as_deref().map(str::as_bytes),
                    value: &converted.bytes,
                    topic: &source_name,
                    partition: 0,
                    offset,
                    timestamp_ms: None,
                    arrival_time_ms: None,
                };
                driver.handle(&env, &mut out, |_| {})?;
                feed_back(driver, &mut out, &source_name)?;
            }
            Err((raw, reason, detail)) => {
                let env = Envelope {
                    key: None,
                    value: &raw,
                    topic: &source_name,
                    partition: 0,
                    offset,
                    timestamp_ms: None,
                    arrival_time_ms: None,
                };
                driver.reject_unreadable(&env, reason, &detail, &mut out)?;
            }
        }
        writers.write_all(&mut out, &mut summary)?;
    }
    driver.finish(&mut out)?;
    feed_back(driver, &mut out, &source_name)?;
    writers.write_all(&mut out, &mut summary)?;
    writers.flush()?;
    Ok(summary)
}

/// Hands the outputs on the stage's own input role back to it, depth-first, until none is left.
fn feed_back(
    driver: &mut Driver,
    out: &mut Vec<Emitted>,
    source: &str,
) -> Result<(), RuntimeError> {
    let role = driver.processor().input_role();
    let mut i = 0;
    while i < out.len() {
        if out[i].role == role {
            let e = out[i].clone();
            let env = Envelope {
                key: Some(e.key.as_bytes()),
                value: &e.value,
                topic: source,
                partition: 0,
                offset: -1,
                timestamp_ms: None,
                arrival_time_ms: None,
            };
            let mut more = Vec::new();
            driver.handle(&env, &mut more, |_| {})?;
            out.extend(more);
        }
        i += 1;
    }
    Ok(())
}

struct Writers {
    main_role: TopicRole,
    main_path: String,
    side_dir: PathBuf,
    open: HashMap<TopicRole, Box<dyn Write>>,
}

impl Writers {
    fn new(main_role: TopicRole, main_path: &str, side_dir: &Path) -> Self {
        Writers {
            main_role,
            main_path: main_path.to_string(),
            side_dir: side_dir.to_path_buf(),
            open: HashMap::new(),
        }
    }

    fn writer(&mut self, role: TopicRole) -> Result<&mut Box<dyn Write>, RuntimeError> {
        if !self.open.contains_key(&role) {
            let w: Box<dyn Write> = if role == self.main_role && self.main_path == "-" {
                Box::new(BufWriter::new(std::io::stdout()))
            } else {
                let path = if role == self.main_role {
                    PathBuf::from(&self.main_path)
                } else {
                    self.side_dir.join(format!("{}.jsonl", role.spec().name))
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                        context: format!("cannot create {}", dir.display()),
                        source,
                    })?;
                }
                Box::new(BufWriter::new(File::create(&path).map_err(|source| {
                    RuntimeError::Io {
                        context: format!("cannot create {}", path.display()),
                        source,
                    }
                })?))
            };
            self.open.insert(role, w);
        }
        Ok(self.open.get_mut(&role).expect("inserted above"))
    }

    fn write_all(
        &mut self,
        out: &mut Vec<Emitted>,
        summary: &mut FileSummary,
    ) -> Result<(), RuntimeError> {
        for e in out.drain(..) {
            let line = avro_to_json_line(e.role, &e.value)?;
            let w = self.writer(e.role)?;
            writeln!(w, "{line}").map_err(|source| RuntimeError::Io {
                context: format!("cannot write output {}", e.role),
                source,
            })?;
            *summary
                .written
                .entry(e.role.spec().name.to_string())
                .or_default() += 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RuntimeError> {
        for w in self.open.values_mut() {
            w.flush().map_err(|source| RuntimeError::Io {
                context: "cannot flush output".into(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqmon_model::{decode, DeadLetter, Telemetry};
    use seqmon_processor::{Emitter, Processor, StageError};

    /// Forwards telemetry with a serial; refuses the rest.
    struct Forward;
    impl Processor for Forward {
        fn stage(&self) -> &'static str {
            "forward"
        }
        fn input_role(&self) -> TopicRole {
            TopicRole::Raw
        }
        fn output_roles(&self) -> &'static [TopicRole] {
            &[TopicRole::Validated]
        }
        fn dead_letter_role(&self) -> TopicRole {
            TopicRole::DeadLettersSensitive
        }
        fn process(&mut self, input: &Envelope<'_>, out: &mut Emitter) -> Result<(), StageError> {
            match decode::<Telemetry>(input.value) {
                Ok(t) if !t.instrument_serial.is_empty() => {
                    out.emit_bytes(TopicRole::Validated, &t.instrument_serial, input.value)
                }
                Ok(_) => out.reject(
                    DeadLetterReason::MISSING_FIELD,
                    "instrument_serial is empty",
                ),
                Err(e) => out.reject(e.reason(), e.to_string()),
            }
            Ok(())
        }
    }

    #[test]
    fn every_line_is_forwarded_or_dead_lettered_with_its_line_number() {
        let dir = std::env::temp_dir().join(format!("seqmon-file-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = r#"{"message_id":"m1","instrument_serial":"M00301","instrument_model":"MISEQ","event_time_ms":1,"sent_time_ms":2,"kind":"SENSOR_READINGS","run_id":null,"sensors":{"laser_power_mw":150.0},"log_event":null,"run_performance":null,"instrument_configuration":null,"run_configuration":null}"#;
        let no_serial = good.replace("M00301", "");
        let long = format!("{{\"x\": \"{}\"}}", "y".repeat(5000));
        let mut input =
            format!("{good}\nnot json at all\n\n{{\"alert_id\": \"x\"}}\n{no_serial}\n{long}\n")
                .into_bytes();
        // A line that is not UTF-8, then a good line again: reading goes on after both.
        input.extend_from_slice(b"{\"message_id\": \"\xff\xfe\"}\n");
        input.extend_from_slice(good.as_bytes());
        std::fs::write(dir.join("in.jsonl"), input).unwrap();
        let args = FileArgs {
            input: dir.join("in.jsonl").display().to_string(),
            output: dir.join("main.jsonl").display().to_string(),
            side_output_dir: dir.join("side"),
            max_line_bytes: 4096,
        };
        let mut driver = Driver::new(Box::new(Forward));
        let summary = run_file(&mut driver, &args).unwrap();
        assert_eq!(summary.lines, 7, "the blank line is not a record");
        let main = std::fs::read_to_string(dir.join("main.jsonl")).unwrap();
        let forwarded: Vec<serde_json::Value> = main
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(forwarded.len(), 2);
        assert_eq!(forwarded[0]["instrument_serial"], "M00301");
        assert_eq!(
            forwarded[0]["attributes"],
            serde_json::json!({}),
            "v2 default filled in"
        );
        let dead: Vec<DeadLetter> =
            std::fs::read_to_string(dir.join("side/deadletter.sensitive.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let avro = json_to_avro(&store().latest("dead_letter").schema, &v).unwrap();
                    apache_avro::from_value(&avro).unwrap()
                })
                .collect();
        let got: Vec<(i64, DeadLetterReason)> =
            dead.iter().map(|d| (d.source_offset, d.reason)).collect();
        assert_eq!(
            got,
            [
                (2, DeadLetterReason::UNDECODABLE),
                (4, DeadLetterReason::WRONG_SCHEMA),
                (5, DeadLetterReason::MISSING_FIELD),
                (6, DeadLetterReason::TOO_LARGE),
                (7, DeadLetterReason::UNDECODABLE),
            ]
        );
        assert_eq!(dead[3].original_bytes.len(), KEPT_OF_LONG_LINE);
        assert_eq!(dead[0].original_bytes, b"not json at all");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
