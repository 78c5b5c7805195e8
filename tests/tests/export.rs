//! `seqmon-admin export` on a real broker, read back by independent readers: a simulated fleet
//! (old-firmware v1 telemetry and bad records among it) goes through the validator and the
//! privacy enforcer in process; its sealed raw telemetry and its sanitized telemetry are put on
//! their topics; both are exported to Parquet and to Avro container files. pyarrow reads the
//! Parquet files (each alone, and the whole directory as a Hive-partitioned dataset), fastavro
//! the Avro files; a Python script compares every row field by field (nested records, lists,
//! maps, nulls, enums, timestamps, dates) with what this test decoded itself from the topic,
//! checks every column's Arrow type against the Avro schema file, and every row's date
//! directory against its event time. Sealed telemetry is refused without the key ring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use seqmon_integration_tests::*;
use seqmon_model::codec;
use seqmon_model::topics::TopicRole;
use seqmon_runtime::embedded::Chain;
use seqmon_runtime::envelope::KeyRing;
use seqmon_runtime::Driver;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_validator::Validator;
use serde_json::{json, Value as Json};

/// Runs `seqmon-admin export`; (exit code, stdout, stderr).
fn export(prefix: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("seqmon-admin"))
        .arg("export")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            prefix,
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// What the test expects in a dataset: the committed records it decoded itself.
struct Expected {
    rows: Vec<Json>,
    skipped: usize,
}

/// Decodes every committed record of `topic` (opening sealed ones with `ring`) into the newest
/// version of `record_type`, as the export must.
fn expected(
    topic: &str,
    record_type: &'static str,
    role: TopicRole,
    ring: Option<&KeyRing>,
) -> Expected {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for r in read_committed(topic) {
        let header = r
            .headers
            .iter()
            .find(|(k, _)| k == seqmon_runtime::envelope::HEADER)
            .map(|(_, v)| v.as_slice());
        let plain = match (header, ring) {
            (Some(h), Some(ring)) => ring
                .open(role, r.key.as_bytes(), Some(h), &r.value)
                .unwrap(),
            (Some(_), None) => panic!("sealed without a ring"),
            (None, _) => r.value.clone(),
        };
        match codec::decode_value(&plain, record_type) {
            Ok((_, value)) => rows.push(json!({
                "partition": r.partition,
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                // The file-mode JSON form: unions unwrapped, enums as symbols, bytes as hex,
                // timestamps as ms and dates as days since the epoch.
                "value": seqmon_model::json::avro_to_json(&value),
            })),
            Err(_) => skipped += 1,
        }
    }
    Expected { rows, skipped }
}

/// The Python side: reads a dataset with pyarrow (Parquet) or fastavro (Avro) and compares it
/// with the expected rows. Prints a JSON report.
const CHECK: &str = r#"
import datetime, glob, json, os, sys
import fastavro
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

schema_path, expected_path, root, fmt, event_field = sys.argv[1:6]
schema = json.load(open(schema_path))
expected = [json.loads(l) for l in open(expected_path)]
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

names = {}
def register(s, ns=None):
    if isinstance(s, list):
        for b in s: register(b, ns)
    elif isinstance(s, dict):
        t = s.get("type")
        if t in ("record", "enum", "fixed"):
            ns = s.get("namespace", ns)
            names[s["name"]] = s
            names[(ns + "." if ns else "") + s["name"]] = s
        if t == "record":
            for f in s["fields"]: register(f["type"], ns)
        elif t == "array": register(s["items"], ns)
        elif t == "map": register(s["values"], ns)
register(schema)

def resolve(s):
    return names.get(s, s) if isinstance(s, str) else s

def kind(s):
    s = resolve(s)
    if isinstance(s, str): return s, None
    if isinstance(s, list): return "union", None
    t = s["type"]
    if isinstance(t, (dict, list)): return kind(t)
    return t, s.get("logicalType")

def canon(s, v):
    s = resolve(s)
    if isinstance(s, list):
        if v is None: return None
        (branch,) = [b for b in s if b != "null"]
        return canon(branch, v)
    if isinstance(s, dict) and isinstance(s["type"], (dict, list)): return canon(s["type"], v)
    t, lt = kind(s)
    if v is None: raise ValueError("null in a non-null field")
    if lt == "timestamp-millis":
        return (v - EPOCH) // datetime.timedelta(milliseconds=1) if isinstance(v, datetime.datetime) else v
    if lt == "date":
        return (v - datetime.date(1970, 1, 1)).days if isinstance(v, datetime.date) else v
    if t == "record": return {f["name"]: canon(f["type"], v[f["name"]]) for f in s["fields"]}
    if t == "array": return [canon(s["items"], x) for x in v]
    if t == "map": return {k: canon(s["values"], x) for k, x in (v.items() if isinstance(v, dict) else v)}
    if t in ("bytes", "fixed"): return bytes(v).hex()
    if t == "enum":
        if v not in s["symbols"]: raise ValueError(f"{v!r} is not a symbol")
        return v
    return v

type_errors = []
def check_type(s, f_type, nullable, path, nested=False):
    s = resolve(s)
    # The fields of a nested record are nullable in Arrow (their record can be null).
    union_null = (isinstance(s, list) and "null" in s) or nested
    if isinstance(s, list):
        (s,) = [b for b in s if b != "null"]
        s = resolve(s)
    if nullable != union_null:
        type_errors.append(f"{path}: nullable {nullable}, Avro union with null {union_null}")
    t, lt = kind(s)
    T = pa.types
    ok = {
        "timestamp-millis": lambda: T.is_timestamp(f_type) and f_type.unit == "ms" and f_type.tz == "UTC",
        "date": lambda: T.is_date32(f_type),
    }.get(lt) or {
        "string": lambda: T.is_string(f_type), "bytes": lambda: T.is_binary(f_type),
        "int": lambda: T.is_int32(f_type), "long": lambda: T.is_int64(f_type),
        "double": lambda: T.is_float64(f_type), "float": lambda: T.is_float32(f_type),
        "boolean": lambda: T.is_boolean(f_type),
        "enum": lambda: T.is_dictionary(f_type) and T.is_string(f_type.value_type)
            and f_type.index_type == pa.int32(),
        "record": lambda: T.is_struct(f_type),
        "array": lambda: T.is_list(f_type),
        "map": lambda: T.is_map(f_type) and T.is_string(f_type.key_type),
    }[t]
    if not ok():
        type_errors.append(f"{path}: Avro {t}/{lt} as Arrow {f_type}")
        return
    if t == "record":
        got = [f_type.field(i).name for i in range(f_type.num_fields)]
        want = [f["name"] for f in s["fields"]]
        if got != want: type_errors.append(f"{path}: fields {got} != {want}")
        for f in s["fields"]:
            c = f_type.field(f["name"])
            check_type(f["type"], c.type, c.nullable, f"{path}.{f['name']}", nested=True)
    elif t == "array":
        check_type(s["items"], f_type.value_type, f_type.value_field.nullable, f"{path}[]")
    elif t == "map":
        check_type(s["values"], f_type.item_type, f_type.item_field.nullable, f"{path}{{}}")

def utc_date(ms):
    return (EPOCH + datetime.timedelta(milliseconds=ms)).date().isoformat()

def date_of(row):
    ms = row["value"][event_field] if event_field != "-" else row["timestamp_ms"]
    return utc_date(ms)

report = {"files": 0, "rows": 0, "mismatches": [], "dates": [], "type_errors": type_errors,
          "columns": [], "null_cells": 0}
dirs = sorted(d for d in os.listdir(root) if not d.startswith((".", "_")))
report["dates"] = dirs
leftovers = [p for p in glob.glob(os.path.join(root, "**", ".*"), recursive=True)]
report["leftovers"] = leftovers

if fmt == "parquet":
    by_position = {(r["partition"], r["offset"]): r for r in expected}
    seen = set()
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(root, d, "part-*.parquet"))):
            report["files"] += 1
            table = pq.read_table(path)
            # As analysts open it: every array valid, and into pandas.
            table.validate(full=True)
            table.to_pandas()
            if report["files"] == 1:
                report["columns"] = table.column_names
                for f in schema["fields"]:
                    c = table.schema.field(f["name"])
                    check_type(f["type"], c.type, c.nullable, f["name"])
                for name, t in [("_kafka_partition", pa.int32()), ("_kafka_offset", pa.int64()),
                                ("_kafka_timestamp", pa.timestamp("ms", tz="UTC"))]:
                    if table.schema.field(name).type != t:
                        type_errors.append(f"{name}: {table.schema.field(name).type}")
            report["null_cells"] += sum(table.column(i).null_count for i in range(table.num_columns))
            for row in table.to_pylist():
                report["rows"] += 1
                key = (row["_kafka_partition"], row["_kafka_offset"])
                want = by_position.get(key)
                if want is None or key in seen:
                    report["mismatches"].append(f"{path}: unexpected or repeated row {key}")
                    continue
                seen.add(key)
                try:
                    got = {f["name"]: canon(f["type"], row[f["name"]]) for f in schema["fields"]}
                except Exception as e:
                    report["mismatches"].append(f"{path} {key}: {e}")
                    continue
                ts = row["_kafka_timestamp"]
                got_ts = None if ts is None else (ts - EPOCH) // datetime.timedelta(milliseconds=1)
                if got != want["value"]:
                    diff = [k for k in got if got[k] != want["value"].get(k)]
                    report["mismatches"].append(f"{path} {key}: fields differ: {diff}")
                elif got_ts != want["timestamp_ms"]:
                    report["mismatches"].append(f"{path} {key}: kafka timestamp {got_ts}")
                elif d != "date=" + date_of(want):
                    report["mismatches"].append(f"{path} {key}: in {d}, event date {date_of(want)}")
    missing = len(by_position) - len(seen)
    if missing: report["mismatches"].append(f"{missing} expected rows missing")
    # The directory as one Hive-partitioned dataset, as Spark or DuckDB see it.
    whole = pq.read_table(root, partitioning="hive")
    whole.validate(full=True)
    report["dataset_rows"] = whole.num_rows
    report["dataset_dates"] = sorted(set(str(v) for v in whole.column("date").to_pylist()))
    report["pandas_rows"] = len(pd.read_parquet(root))
    # The date as a date (docs/export.md), not the dictionary<string> pyarrow infers.
    typed = pq.read_table(root, partitioning=ds.partitioning(
        pa.schema([("date", pa.date32())]), flavor="hive"))
    report["typed_date"] = str(typed.schema.field("date").type)
else:
    by_date = {}
    for r in expected:
        by_date.setdefault("date=" + date_of(r), []).append(json.dumps(r["value"], sort_keys=True))
    for d in dirs:
        got = []
        for path in sorted(glob.glob(os.path.join(root, d, "part-*.avro"))):
            report["files"] += 1
            with open(path, "rb") as f:
                reader = fastavro.reader(f)
                if reader.writer_schema.get("name", "").split(".")[-1] != schema["name"].split(".")[-1]:
                    type_errors.append(f"{path}: writer schema {reader.writer_schema.get('name')}")
                report["codec"] = reader.codec
                for rec in reader:
                    report["rows"] += 1
                    try:
                        got.append(json.dumps({f["name"]: canon(f["type"], rec[f["name"]])
                                               for f in schema["fields"]}, sort_keys=True))
                    except Exception as e:
                        report["mismatches"].append(f"{path}: {e}")
        want = by_date.pop(d, [])
        if sorted(got) != sorted(want):
            report["mismatches"].append(f"{d}: {len(got)} records, {len(want)} expected, "
                                        f"{len(set(got) ^ set(want))} differ")
    for d, rows in by_date.items():
        report["mismatches"].append(f"{d}: {len(rows)} expected records in no file")
print(json.dumps(report))
"#;

fn check(
    python: &str,
    work: &Path,
    record_type: &str,
    expected: &Expected,
    root: &Path,
    format: &str,
    event_field: &str,
) -> Json {
    let schema = seqmon_model::schema_store::store().latest(record_type);
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(format!("schemas/{record_type}/v{}.avsc", schema.version));
    let expected_path = work.join(format!("expected-{record_type}.jsonl"));
    let mut lines = String::new();
    for row in &expected.rows {
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    std::fs::write(&expected_path, lines).unwrap();
    let script = work.join("check.py");
    std::fs::write(&script, CHECK).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .arg(&schema_path)
        .arg(&expected_path)
        .arg(root)
        .arg(format)
        .arg(event_field)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "{format} of {record_type}: {} rows in {} files over {}, {} null cells, Arrow columns {}",
        report["rows"], report["files"], report["dates"], report["null_cells"], report["columns"]
    );
    assert_eq!(
        report["mismatches"],
        json!([]),
        "{format} of {record_type}: {report}"
    );
    assert_eq!(report["type_errors"], json!([]), "{report}");
    assert_eq!(
        report["leftovers"],
        json!([]),
        "no temporary file is left: {report}"
    );
    assert_eq!(report["rows"], json!(expected.rows.len()), "{report}");
    if format == "parquet" {
        assert_eq!(
            report["pandas_rows"],
            json!(expected.rows.len()),
            "{report}"
        );
        assert_eq!(report["typed_date"], json!("date32[day]"), "{report}");
    }
    report
}

/// The total bytes the summary's first line reports.
fn summary_bytes(stdout: &str) -> u64 {
    let first = stdout.lines().next().unwrap();
    let at = first.find(" bytes)").unwrap();
    let start = first[..at].rfind('(').unwrap() + 1;
    first[start..at].parse().unwrap()
}

/// The `date=…` directories the summary lists, and the sum of its per-file records.
fn summary_files(stdout: &str) -> (Vec<String>, u64) {
    let mut dates = Vec::new();
    let mut records = 0;
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [path, n, "records", _, "bytes"] = words.as_slice() {
            records += n.parse::<u64>().unwrap();
            let date = path.split('/').next().unwrap().to_string();
            if !dates.contains(&date) {
                dates.push(date);
            }
        }
    }
    (dates, records)
}

fn sealed_producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

#[test]
fn export_writes_parquet_and_avro_that_pyarrow_and_fastavro_read_back_field_for_field() {
    let python = std::env::var("INTEROP_PYTHON").expect(
        "INTEROP_PYTHON is not set: run with `make test`, which installs pyarrow and fastavro",
    );
    let prefix = unique_prefix("export");
    create_topics(&prefix, 3);
    let work: PathBuf = std::env::temp_dir().join(format!("{prefix}work"));
    std::fs::create_dir_all(&work).unwrap();

    // Ten hours of a small fleet ending about a day ago, across a UTC midnight.
    let day = 86_400_000;
    let start = (now_ms() - 2 * day) / day * day + 20 * 3_600_000;
    let sim = simulate(&FleetConfig {
        instruments: 5,
        duration_hours: 10.0,
        sample_interval_s: 300,
        seed: 15,
        start_time_ms: start,
        bad_record_share: 0.03,
        ..Default::default()
    });

    // Raw telemetry, sealed as the ingest side seals it, stamped with the sender's clock.
    let keys_dir = work.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(keys_dir.join("k1.key"), "cd".repeat(32)).unwrap();
    let ring = KeyRing::from_dir(&keys_dir, "k1").unwrap();
    let raw_topic = TopicRole::Raw.topic(&prefix);
    let producer = sealed_producer();
    for r in &sim.records {
        let (sealed, header) = ring.seal(TopicRole::Raw, r.key.as_bytes(), &r.bytes);
        producer
            .send(
                BaseRecord::to(&raw_topic)
                    .key(&r.key)
                    .payload(&sealed)
                    .timestamp(r.sent_time_ms)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: seqmon_runtime::envelope::HEADER,
                            value: Some(header.as_bytes()),
                        },
                    )),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // Sanitized telemetry, from the validator and the privacy enforcer run in process.
    let mut chain = Chain::new(vec![
        Driver::new(Box::new(Validator::default())),
        Driver::new(Box::new(privacy_enforcer())),
    ])
    .unwrap();
    let mut sanitized = Vec::new();
    for r in &sim.records {
        chain
            .push(&r.key, &r.bytes, &mut |_, e| {
                if e.role == TopicRole::Sanitized {
                    sanitized.push((e.key.clone(), e.value.clone(), None));
                }
            })
            .unwrap();
    }
    let sanitized_topic = TopicRole::Sanitized.topic(&prefix);
    produce(
        &sanitized_topic,
        sanitized
            .into_iter()
            .map(|(k, v, t): (String, Vec<u8>, Option<i64>)| (k, v, t)),
    );

    let raw_expected = expected(&raw_topic, "telemetry", TopicRole::Raw, Some(&ring));
    let san_expected = expected(
        &sanitized_topic,
        "sanitized_telemetry",
        TopicRole::Sanitized,
        None,
    );
    assert_eq!(
        raw_expected.rows.len() + raw_expected.skipped,
        sim.records.len()
    );
    assert!(
        raw_expected.skipped > 0,
        "the fleet sends some records that do not decode"
    );
    assert!(san_expected.rows.len() > 500, "{}", san_expected.rows.len());
    assert_eq!(san_expected.skipped, 0);

    // Sanitized telemetry, both formats.
    let mut sizes = Vec::new();
    for (format, extra) in [
        ("parquet", None),
        ("avro", Some("deflate")),
        ("avro", Some("null")),
    ] {
        let out = work.join(format!("sanitized-{format}-{}", extra.unwrap_or("")));
        let mut args = vec![
            "telemetry.sanitized",
            "--out",
            out.to_str().unwrap(),
            "--format",
            format,
        ];
        if let Some(codec) = extra {
            args.extend(["--avro-codec", codec]);
        }
        let (code, stdout, stderr) = export(&prefix, &args);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!(
                "{} records read, {} written",
                san_expected.rows.len(),
                san_expected.rows.len()
            )),
            "{stdout}"
        );
        assert!(stdout.contains("  skipped: 0"), "{stdout}");
        let (dates, records) = summary_files(&stdout);
        assert_eq!(records as usize, san_expected.rows.len(), "{stdout}");
        sizes.push((
            format!("{format}{}", extra.unwrap_or("")),
            summary_bytes(&stdout),
        ));
        let report = check(
            &python,
            &work,
            "sanitized_telemetry",
            &san_expected,
            &out,
            format,
            "event_time_ms",
        );
        assert_eq!(report["dates"], json!(dates), "{report}");
        assert!(
            dates.len() >= 2,
            "the fleet spans a UTC midnight: {dates:?}"
        );
        if format == "parquet" {
            assert_eq!(report["dataset_rows"], json!(san_expected.rows.len()));
            let hive: Vec<String> = dates
                .iter()
                .map(|d| d["date=".len()..].to_string())
                .collect();
            assert_eq!(report["dataset_dates"], json!(hive));
            assert!(
                report["null_cells"].as_u64().unwrap() > 0,
                "nullable fields hold nulls"
            );
        } else {
            assert_eq!(report["codec"], json!(extra.unwrap()));
        }
    }
    eprintln!(
        "{} sanitized records, bytes per format: {sizes:?}",
        san_expected.rows.len()
    );
    let (parquet, deflate) = (sizes[0].1, sizes[1].1);
    assert!(
        deflate < 2 * parquet,
        "Avro blocks of 1 MiB deflate about as well as Parquet: {sizes:?}"
    );

    // The same range again: appended beside the parts there, and the summary says so.
    let san_parquet = work.join("sanitized-parquet-");
    let (code, stdout, stderr) = export(
        &prefix,
        &[
            "telemetry.sanitized",
            "--out",
            san_parquet.to_str().unwrap(),
            "--format",
            "parquet",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (dates, _) = summary_files(&stdout);
    assert!(
        stdout.contains(&format!(
            "  already there: {} part(s), {} records",
            dates.len(),
            san_expected.rows.len()
        )),
        "{stdout}"
    );
    // Another format into it: refused, naming --out; nothing written.
    let before = std::fs::read_dir(san_parquet.join(&dates[0]))
        .unwrap()
        .count();
    let (code, stdout, stderr) = export(
        &prefix,
        &[
            "telemetry.sanitized",
            "--out",
            san_parquet.to_str().unwrap(),
            "--format",
            "avro",
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("--out") && stderr.contains("parquet"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(san_parquet.join(&dates[0]))
            .unwrap()
            .count(),
        before
    );

    // A temporary file a killed export left does not stop the next one.
    let leftover = work.join("leftover");
    std::fs::create_dir_all(leftover.join(&dates[0])).unwrap();
    std::fs::write(
        leftover.join(&dates[0]).join(".part-00000.parquet.tmp"),
        b"partial",
    )
    .unwrap();
    let (code, stdout, stderr) = export(
        &prefix,
        &[
            "telemetry.sanitized",
            "--out",
            leftover.to_str().unwrap(),
            "--format",
            "parquet",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(leftover.join(&dates[0]).join("part-00000.parquet").exists());

    // A reader that stops early (`| head`): no panic, exit 0.
    let mut child = Command::new(bin("seqmon-admin"))
        .args([
            "export",
            "--bootstrap-servers",
            &bootstrap(),
            "--topic-prefix",
            &prefix,
            "telemetry.sanitized",
            "--out",
            work.join("piped").to_str().unwrap(),
            "--format",
            "avro",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Sealed raw telemetry: refused without the key ring; exported with it, the records that
    // do not decode skipped and counted.
    let raw_out = work.join("raw-parquet");
    let (code, stdout, stderr) = export(
        &prefix,
        &[
            "telemetry.raw",
            "--out",
            raw_out.to_str().unwrap(),
            "--format",
            "parquet",
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("sealed"), "{stderr}");
    assert!(!raw_out.exists(), "nothing written when refused");
    let keys = keys_dir.to_str().unwrap();
    let with_keys = [
        "--encryption-keys-dir",
        keys,
        "--encryption-active-key",
        "k1",
    ];
    let mut args = vec![
        "telemetry.raw",
        "--out",
        raw_out.to_str().unwrap(),
        "--format",
        "parquet",
    ];
    args.extend(with_keys);
    let (code, stdout, stderr) = export(&prefix, &args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("  skipped: {}", raw_expected.skipped)),
        "{stdout}"
    );
    let (raw_dates, records) = summary_files(&stdout);
    assert_eq!(records as usize, raw_expected.rows.len());
    // Plaintext of sealed records: readable by its owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&raw_out), 0o700);
        assert_eq!(mode(&raw_out.join(&raw_dates[0])), 0o700);
        assert_eq!(
            mode(&raw_out.join(&raw_dates[0]).join("part-00000.parquet")),
            0o600
        );
    }
    check(
        &python,
        &work,
        "telemetry",
        &raw_expected,
        &raw_out,
        "parquet",
        "event_time_ms",
    );

    // A wrong key ring opens nothing: refused, not an empty export.
    let wrong_dir = work.join("wrong-keys");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    std::fs::write(wrong_dir.join("k1.key"), "ef".repeat(32)).unwrap();
    let wrong_out = work.join("raw-wrong");
    let (code, _, stderr) = export(
        &prefix,
        &[
            "telemetry.raw",
            "--out",
            wrong_out.to_str().unwrap(),
            "--format",
            "avro",
            "--encryption-keys-dir",
            wrong_dir.to_str().unwrap(),
            "--encryption-active-key",
            "k1",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("opens none"), "{stderr}");

    // Filters: one instrument, one partition, a Kafka-time window; files split at a size.
    let serial = sim.records[0].key.clone();
    let one = work.join("one-instrument");
    let (code, stdout, stderr) = export(
        &prefix,
        &[
            "telemetry.sanitized",
            "--out",
            one.to_str().unwrap(),
            "--format",
            "parquet",
            "--instrument",
            &serial,
            "--max-records-per-file",
            "10",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let mine: Vec<Json> = san_expected
        .rows
        .iter()
        .filter(|r| r["value"]["instrument_serial"] == json!(serial))
        .cloned()
        .collect();
    assert!(!mine.is_empty());
    let (_, records) = summary_files(&stdout);
    assert_eq!(records as usize, mine.len(), "{stdout}");
    let per_file: Vec<u64> = stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 5 && w[2] == "records").then(|| w[1].parse().unwrap())
        })
        .collect();
    assert!(per_file.iter().all(|n| *n <= 10) && per_file.len() >= mine.len() / 10);
    check(
        &python,
        &work,
        "sanitized_telemetry",
        &Expected {
            rows: mine,
            skipped: 0,
        },
        &one,
        "parquet",
        "event_time_ms",
    );

    let mut partitions: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &raw_expected.rows {
        *partitions
            .entry(r["partition"].as_i64().unwrap())
            .or_default() += 1;
    }
    let (&p, &n) = partitions.iter().next().unwrap();
    let part_out = work.join("one-partition");
    let mut args = vec![
        "telemetry.raw",
        "--out",
        part_out.to_str().unwrap(),
        "--format",
        "avro",
        "--partition",
    ];
    let p_text = p.to_string();
    args.push(&p_text);
    args.extend(with_keys);
    // Raw records carry the sender's clock: a window on it keeps the first hours.
    let cut = start + 4 * 3_600_000;
    let cut_text = cut.to_string();
    args.extend(["--until-time", &cut_text]);
    let (code, stdout, stderr) = export(&prefix, &args);
    assert_eq!(code, 0, "{stderr}");
    let committed = read_committed(&raw_topic);
    let window: Vec<Json> = raw_expected
        .rows
        .iter()
        .filter(|r| r["partition"].as_i64() == Some(p) && r["timestamp_ms"].as_i64().unwrap() < cut)
        .cloned()
        .collect();
    assert!(
        !window.is_empty() && window.len() < n,
        "{} of {n}",
        window.len()
    );
    let skipped_in_window = committed
        .iter()
        .filter(|c| i64::from(c.partition) == p && c.timestamp_ms.unwrap() < cut)
        .count()
        - window.len();
    assert!(
        stdout.contains(&format!("  skipped: {skipped_in_window}")),
        "{stdout}"
    );
    check(
        &python,
        &work,
        "telemetry",
        &Expected {
            rows: window,
            skipped: skipped_in_window,
        },
        &part_out,
        "avro",
        "event_time_ms",
    );
    let _ = std::fs::remove_dir_all(&work);
}
