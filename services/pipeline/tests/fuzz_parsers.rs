//! Mutation fuzzing of every parser at the edge and the boundary, trimmed for `make test`
//! (SEQMON_FUZZ_ROUNDS scales it): Avro single-object records through the validator and the
//! privacy enforcer, JSON lines through file mode, RunInfo/RunParameters XML and every InterOp
//! file of the real run folders through the collector's readers. Each input must end as an
//! output or a dead letter (in = accepted + dead letters), and no input may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use seqmon_pipeline::historic_chain;
use seqmon_runtime::file::{run_file, FileArgs};
use seqmon_runtime::Driver;
use seqmon_simulator::{simulate, FleetConfig};
use seqmon_validator::Validator;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`: bit flips, a cut, an inserted or overwritten run of bytes, a
/// duplicated slice, or interesting values (0, 0xff, 0x80, huge varints) written somewhere.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = v.len().max(1);
        match rng.below(7) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => v.truncate(rng.below(len)),
            2 => {
                let i = rng.below(len);
                let n = 1 + rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i.min(v.len())..i.min(v.len()), junk);
            }
            3 => {
                let i = rng.below(len);
                for b in v.iter_mut().skip(i).take(1 + rng.below(8)) {
                    *b = rng.next() as u8;
                }
            }
            4 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(v.len());
                let slice = v.get(a.min(v.len())..b).unwrap_or_default().to_vec();
                let at = rng.below(len).min(v.len());
                v.splice(at..at, slice);
            }
            5 => {
                let i = rng.below(len);
                let values: [&[u8]; 4] = [&[0], &[0xff; 9], &[0x80; 10], &[0xfe, 0xff, 0xff, 0x7f]];
                let pick = values[rng.below(values.len())];
                for (k, b) in pick.iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => v.extend((0..rng.below(32)).map(|_| rng.next() as u8)),
        }
    }
    v
}

fn rounds(default: usize) -> usize {
    let scale: usize = std::env::var("SEQMON_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    default * scale.max(1)
}

fn fleet() -> seqmon_simulator::Simulation {
    simulate(&FleetConfig {
        instruments: 4,
        duration_hours: 1.0,
        seed: 9,
        bad_record_share: 0.05,
        ..Default::default()
    })
}

#[test]
fn mutated_avro_records_end_as_outputs_or_dead_letters() {
    let sim = fleet();
    let seeds: Vec<&[u8]> = sim.records.iter().map(|r| r.bytes.as_slice()).collect();
    let mut rng = Rng(0x5eed_a5a5);
    let mut chain = historic_chain().unwrap();
    let n = rounds(30_000);
    for i in 0..n {
        let input = mutate(&mut rng, seeds[i % seeds.len()]);
        chain.push("A00100", &input, &mut |_, _| {}).unwrap();
    }
    chain.finish(&mut |_, _| {}).unwrap();
    for stage in chain.stages() {
        let m = &stage.metrics;
        let dead: u64 = seqmon_model::DeadLetterReason::ALL
            .iter()
            .map(|r| m.dead_letter_records.with_label_values(&[r.code()]).get())
            .sum();
        assert_eq!(
            m.input_records.get(),
            m.accepted_records.get() + dead,
            "{}: in = accepted + dead letters",
            stage.processor().stage()
        );
    }
    assert_eq!(chain.stages()[0].metrics.input_records.get(), n as u64);
    eprintln!("fuzz: {n} mutated Avro records through the six stages");
}

#[test]
fn mutated_json_lines_are_each_accepted_or_dead_lettered() {
    let sim = fleet();
    let seeds: Vec<&str> = sim
        .records
        .iter()
        .map(|r| r.json_line.as_str())
        .filter(|l| !l.is_empty())
        .collect();
    let mut rng = Rng(0x1234_5678);
    let dir = std::env::temp_dir().join(format!("seqmon-fuzz-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = rounds(20_000);
    let mut input = Vec::new();
    let mut lines = 0u64;
    for i in 0..n {
        let mut line = mutate(&mut rng, seeds[i % seeds.len()].as_bytes());
        line.retain(|b| *b != b'\n' && *b != b'\r');
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        input.extend_from_slice(&line);
        input.push(b'\n');
    }
    std::fs::write(dir.join("in.jsonl"), &input).unwrap();
    let args = FileArgs {
        input: dir.join("in.jsonl").display().to_string(),
        output: dir.join("out.jsonl").display().to_string(),
        side_output_dir: dir.join("side"),
        max_line_bytes: 65_536,
    };
    let mut driver = Driver::new(Box::new(Validator::default()));
    let summary = run_file(&mut driver, &args).unwrap();
    assert_eq!(summary.lines, lines);
    let forwarded = summary
        .written
        .get("telemetry.validated")
        .copied()
        .unwrap_or(0);
    let dead = summary
        .written
        .get("deadletter.sensitive")
        .copied()
        .unwrap_or(0);
    assert_eq!(forwarded + dead, lines, "{:?}", summary.written);
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("fuzz: {lines} mutated JSON lines through file mode");
}

fn real_runs() -> Vec<PathBuf> {
    seqmon_collector::sample_run_folders()
}

fn parameters_file(folder: &Path) -> PathBuf {
    ["RunParameters.xml", "runParameters.xml"]
        .iter()
        .map(|n| folder.join(n))
        .find(|p| p.exists())
        .unwrap()
}

#[test]
fn mutated_run_info_and_run_parameters_never_panic() {
    let mut rng = Rng(0xabcd_ef01);
    let dir = std::env::temp_dir().join(format!("seqmon-fuzz-xml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = real_runs();
    let n = rounds(1_500);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..n {
        let run = &runs[i % runs.len()];
        let info = std::fs::read(run.join("RunInfo.xml")).unwrap();
        let params = std::fs::read(parameters_file(run)).unwrap();
        std::fs::write(dir.join("RunInfo.xml"), mutate(&mut rng, &info)).unwrap();
        std::fs::write(dir.join("RunParameters.xml"), mutate(&mut rng, &params)).unwrap();
        match seqmon_collector::runfolder::run_info(&dir) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        match seqmon_collector::runfolder::run_parameters(&dir) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "fuzz: {} mutated XML files: {ok} read, {refused} refused",
        2 * n
    );
    assert_eq!(ok + refused, 2 * n);
}

#[test]
fn mutated_interop_files_never_panic() {
    use seqmon_collector::interop as io;
    let mut rng = Rng(0x0bad_cafe);
    let dir = std::env::temp_dir().join(format!("seqmon-fuzz-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for run in real_runs() {
        if let Ok(rd) = std::fs::read_dir(run.join("InterOp")) {
            files.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    files.sort();
    let n = rounds(3_000);
    let (mut ok, mut refused) = (0usize, 0usize);
    for i in 0..n {
        let src = &files[i % files.len()];
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(src).unwrap();
        let path = dir.join(&name);
        std::fs::write(&path, mutate(&mut rng, &bytes)).unwrap();
        let result = match name.as_str() {
            "TileMetricsOut.bin" => io::tile_metrics(&path).map(|_| ()),
            "QMetricsOut.bin" => io::q_metrics(&path).map(|_| ()),
            "ErrorMetricsOut.bin" => io::error_metrics(&path).map(|_| ()),
            "ExtractionMetricsOut.bin" => io::extraction_metrics(&path).map(|_| ()),
            "CorrectedIntMetricsOut.bin" => io::corrected_intensity_metrics(&path).map(|_| ()),
            "ImageMetricsOut.bin" => io::image_metrics(&path).map(|_| ()),
            "EmpiricalPhasingMetricsOut.bin" => io::empirical_phasing_metrics(&path).map(|_| ()),
            "IndexMetricsOut.bin" => io::index_metrics(&path).map(|_| ()),
            "ControlMetricsOut.bin" => io::control_metrics(&path).map(|_| ()),
            _ => continue,
        };
        match result {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!(
        "fuzz: {} mutated InterOp files: {ok} read, {refused} refused",
        ok + refused
    );
    assert!(ok + refused > n / 2);
}
