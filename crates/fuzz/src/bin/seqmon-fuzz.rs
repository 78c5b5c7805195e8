//! `seqmon-fuzz`: the stable driver of the fuzz targets (`make test` runs it briefly; `make fuzz`
//! falls back to it when no nightly toolchain is there for libFuzzer).
//!
//! `run` replays each target's corpus (`fuzz/corpus/<target>/`), then feeds it seeded mutations
//! (`seqmon_fuzz::mutate`: a mutation fuzzer, not coverage-guided). Every input runs under
//! `catch_unwind`; a panicking input is saved to `<out>/crashes/<target>-<hash>` with its message
//! and counted. A watchdog thread bounds memory and time: if the resident set passes
//! `--rss-limit-mb`, or one input runs longer than `--timeout-s`, the input is saved
//! (`oom-…`, `timeout-…`) and the process exits non-zero. Per target it reports inputs, seconds,
//! inputs/s and peak RSS (VmHWM from /proc/self/status, reset between targets), and writes them
//! as JSON with `--json`. Exit status: 0 when no input failed. `replay` runs given files against
//! a target (a saved crash, or a libFuzzer artefact) and prints what happened.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a command-line driver: an I/O failure or a poisoned lock ends the run, loudly"
)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use seqmon_fuzz::mutate::{parse_dict, Mutator};
use seqmon_fuzz::{target, Target, TARGETS};

#[derive(Parser)]
#[command(
    name = "seqmon-fuzz",
    about = "Fuzz the decoders and parsers (stable driver)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay the corpus, then run seeded mutations, per target.
    Run(RunArgs),
    /// Run files against one target and say whether each returns or panics.
    Replay {
        /// Target name.
        target: String,
        /// Input files.
        files: Vec<PathBuf>,
    },
    /// The target names, one a line.
    List,
}

#[derive(Parser)]
struct RunArgs {
    /// Targets to run (repeatable); all when none is given.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Mutated inputs per target (after the corpus replay).
    #[arg(long, default_value_t = 20_000)]
    inputs: u64,
    /// Stop a target's mutations after this many seconds (make test's short run), inputs or
    /// not; the report gives the inputs actually run.
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Seed of the mutations; the same seed gives the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Corpus root: one folder per target.
    #[arg(long, default_value = "fuzz/corpus")]
    corpus: PathBuf,
    /// Dictionaries: `<target>.dict` in libFuzzer's format.
    #[arg(long, default_value = "fuzz/dicts")]
    dicts: PathBuf,
    /// Longest mutated input, bytes (corpus entries are replayed whole).
    #[arg(long, default_value_t = 65_536)]
    max_len: usize,
    /// Where crashing inputs are saved (`<out>/crashes/`).
    #[arg(long, default_value = "out/fuzz")]
    out: PathBuf,
    /// Resident-set limit, MiB: past it the current input is saved and the run fails.
    #[arg(long, default_value_t = 2048)]
    rss_limit_mb: u64,
    /// Longest one input may run, seconds.
    #[arg(long, default_value_t = 20)]
    timeout_s: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the watchdog sees of the input being run.
struct Current {
    target: Mutex<&'static str>,
    input: Mutex<Vec<u8>>,
    seq: AtomicU64,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::List => {
            for (name, _) in TARGETS {
                println!("{name}");
            }
            0
        }
        Command::Replay {
            target: name,
            files,
        } => replay(&name, &files),
        Command::Run(args) => run(&args),
    };
    std::process::exit(code);
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Panics are expected and counted here: keep their message instead of printing it.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into()),
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg}{at}"));
    }));
}

/// Runs one input; the panic message if it panicked.
fn exec(t: Target, data: &[u8]) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| t(data))) {
        Ok(()) => None,
        Err(_) => Some(LAST_PANIC.with(|p| p.borrow().clone())),
    }
}

fn replay(name: &str, files: &[PathBuf]) -> i32 {
    let Some(t) = target(name) else {
        eprintln!("no target {name}; `seqmon-fuzz list` names them");
        return 2;
    };
    quiet_panics();
    let mut failed = 0;
    for f in files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        match exec(t, &data) {
            None => println!("{}: ok ({} bytes)", f.display(), data.len()),
            Some(msg) => {
                failed += 1;
                println!("{}: PANIC: {msg}", f.display());
            }
        }
    }
    i32::from(failed > 0)
}

/// A `/proc/self/status` field in KiB (0 where there is none).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current resident set (Linux: `5` to clear_refs), so each target's peak
/// is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn save(out: &Path, kind: &str, target: &str, data: &[u8], why: &str) -> PathBuf {
    let dir = out.join("crashes");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{kind}-{target}-{:016x}", fnv(data)));
    std::fs::write(&path, data).unwrap();
    std::fs::write(path.with_extension("txt"), format!("{target}: {why}\n")).unwrap();
    path
}

fn watchdog(current: Arc<Current>, out: PathBuf, rss_limit_mb: u64, timeout: Duration) {
    std::thread::spawn(move || {
        let mut seen = (u64::MAX, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let seq = current.seq.load(Ordering::Relaxed);
            if seq != seen.0 {
                seen = (seq, Instant::now());
            }
            let rss_mb = status_kib("VmRSS:") / 1024;
            let why = if rss_mb > rss_limit_mb {
                Some((
                    "oom",
                    format!("resident set {rss_mb} MiB > {rss_limit_mb} MiB"),
                ))
            } else if seen.1.elapsed() > timeout {
                Some((
                    "timeout",
                    format!("one input ran over {} s", timeout.as_secs()),
                ))
            } else {
                None
            };
            if let Some((kind, why)) = why {
                let name = *current.target.lock().unwrap();
                let data = current.input.lock().unwrap().clone();
                let path = save(&out, kind, name, &data, &why);
                eprintln!("FAIL {name}: {why}; input saved to {}", path.display());
                std::process::exit(3);
            }
        }
    });
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

struct Outcome {
    name: &'static str,
    corpus: usize,
    executions: u64,
    seconds: f64,
    panics: u64,
    peak_rss_mb: u64,
}

fn run(args: &RunArgs) -> i32 {
    let chosen: Vec<(&'static str, Target)> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &args.targets {
            match TARGETS.iter().find(|(n, _)| n == name) {
                Some(t) => v.push(*t),
                None => {
                    eprintln!("no target {name}; `seqmon-fuzz list` names them");
                    return 2;
                }
            }
        }
        v
    };
    quiet_panics();
    let current = Arc::new(Current {
        target: Mutex::new(""),
        input: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
    });
    watchdog(
        current.clone(),
        args.out.clone(),
        args.rss_limit_mb,
        Duration::from_secs(args.timeout_s),
    );
    let mut outcomes = Vec::new();
    for (i, (name, t)) in chosen.into_iter().enumerate() {
        *current.target.lock().unwrap() = name;
        let corpus = load_corpus(&args.corpus.join(name));
        let dict = std::fs::read_to_string(args.dicts.join(format!("{name}.dict")))
            .map(|d| parse_dict(&d))
            .unwrap_or_default();
        reset_peak_rss();
        let started = Instant::now();
        let mut panics = 0u64;
        let mut executions = 0u64;
        let mut one = |data: &[u8]| {
            {
                let mut cur = current.input.lock().unwrap();
                cur.clear();
                cur.extend_from_slice(data);
            }
            current.seq.fetch_add(1, Ordering::Relaxed);
            executions += 1;
            if let Some(msg) = exec(t, data) {
                panics += 1;
                if panics <= 5 {
                    let path = save(&args.out, "crash", name, data, &msg);
                    eprintln!("PANIC {name}: {msg}\n  input saved to {}", path.display());
                }
            }
        };
        for entry in &corpus {
            one(entry);
        }
        // Each target gets its own stream, so adding a target does not change the others'.
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let mut mutator = Mutator::new(&corpus, &dict, args.max_len, seed);
        let mut buf = Vec::new();
        let budget = args.max_seconds.map(Duration::from_secs_f64);
        for n in 0..args.inputs {
            // The clock is read every 256 inputs only.
            if n % 256 == 0 && budget.is_some_and(|b| started.elapsed() > b) {
                break;
            }
            mutator.next_into(&mut buf);
            one(&buf);
        }
        let seconds = started.elapsed().as_secs_f64();
        let o = Outcome {
            name,
            corpus: corpus.len(),
            executions,
            seconds,
            panics,
            peak_rss_mb: status_kib("VmHWM:") / 1024,
        };
        println!(
            "{:<14} corpus {:>5}  inputs {:>10}  {:>7.1} s  {:>9.0} inputs/s  peak RSS {:>5} MiB  panics {}",
            o.name,
            o.corpus,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(1e-9),
            o.peak_rss_mb,
            o.panics
        );
        outcomes.push(o);
    }
    let total: u64 = outcomes.iter().map(|o| o.executions).sum();
    let panics: u64 = outcomes.iter().map(|o| o.panics).sum();
    let seconds: f64 = outcomes.iter().map(|o| o.seconds).sum();
    println!("total: {total} inputs in {seconds:.1} s, {panics} panics");
    if let Some(path) = &args.json {
        let targets: serde_json::Map<String, serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                (
                    o.name.to_string(),
                    serde_json::json!({
                        "executions": o.executions,
                        "seconds": (o.seconds * 10.0).round() / 10.0,
                        "panics": o.panics,
                        "peak_rss_mb": o.peak_rss_mb,
                        "corpus": o.corpus,
                    }),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "engine": "seqmon-fuzz mutation driver (stable; not coverage-guided)",
            "seed": args.seed,
            "total_executions": total,
            "total_seconds": (seconds * 10.0).round() / 10.0,
            "panics": panics,
            "targets": targets,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    }
    i32::from(panics > 0)
}
