//! `seqmon-evaluate`: the detection sweep of `make evaluate`. Simulates fleets over seeds, fleet
//! sizes, durations and bad-record shares, each once with faults and once as a fault-free
//! control fleet, runs every fleet through the six stages in one process (the same processors
//! the services run), scores it against the ground truth and writes the aggregate as JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use clap::Parser;
use seqmon_pipeline::evaluate::{run_fleet, RunResult};
use seqmon_simulator::{FaultClass, FleetConfig, Scenario};
use serde_json::json;

/// Run the detection sweep and write its figures.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Seeds per configuration (seeds 1..=N).
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Seeds for the durations longer than two days, when fewer (they cost 15 times as much).
    #[arg(long)]
    long_seeds: Option<u64>,
    /// Fleet sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [24, 200])]
    fleets: Vec<usize>,
    /// Durations, hours.
    #[arg(long, value_delimiter = ',', default_values_t = [48.0, 720.0])]
    hours: Vec<f64>,
    /// Sensor sample interval per duration, seconds (one value per `--hours`).
    #[arg(long, value_delimiter = ',', default_values_t = [60, 120])]
    sample_intervals_s: Vec<u32>,
    /// Bad-record shares.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.10])]
    bad_shares: Vec<f64>,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the JSON goes.
    #[arg(long, default_value = "out/evaluate/simulation.json")]
    out: std::path::PathBuf,
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Linear interpolation between closest ranks.
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

fn round(x: Option<f64>) -> serde_json::Value {
    x.map_or(serde_json::Value::Null, |v| {
        json!((v * 1000.0).round() / 1000.0)
    })
}

/// A scenario as the JSON names it (`laser_decay`).
fn scenario_name(scenario: Scenario) -> String {
    serde_json::to_value(scenario)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `n / of` rounded to four places; null when `of` is 0.
fn share(n: usize, of: usize) -> serde_json::Value {
    if of == 0 {
        serde_json::Value::Null
    } else {
        json!((n as f64 / of as f64 * 10_000.0).round() / 10_000.0)
    }
}

/// Per-scenario figures over a set of runs.
fn per_fault(runs: &[&RunResult]) -> serde_json::Value {
    let mut by: BTreeMap<Scenario, Vec<&seqmon_pipeline::evaluate::FaultOutcome>> = BTreeMap::new();
    for r in runs {
        for f in &r.faults {
            by.entry(f.scenario).or_default().push(f);
        }
    }
    let mut out = serde_json::Map::new();
    for (scenario, fs) in by {
        let detected: Vec<_> = fs.iter().filter(|f| f.detected).collect();
        let mut spec: Vec<f64> = detected
            .iter()
            .filter_map(|f| f.lead_before_spec_h)
            .collect();
        spec.sort_by(f64::total_cmp);
        let mut fail: Vec<f64> = detected
            .iter()
            .filter_map(|f| f.lead_before_failure_h)
            .collect();
        fail.sort_by(f64::total_cmp);
        out.insert(
            scenario_name(scenario),
            json!({
                "class": fs[0].class,
                "injected": fs.len(),
                "detected": detected.len(),
                "recall": share(detected.len(), fs.len()),
                "lead_before_spec_h_median": round(percentile(&spec, 0.5)),
                "lead_before_spec_h_p10": round(percentile(&spec, 0.1)),
                "lead_before_failure_h_median": round(percentile(&fail, 0.5)),
                "detected_before_spec": share(spec.iter().filter(|h| **h > 0.0).count(), spec.len()),
                "first_alert_from_forecast": share(detected.iter().filter(|f| f.predicted).count(), detected.len()),
                "part_right": share(detected.iter().filter(|f| f.part_right).count(), detected.len()),
                "maintenance_due_before_spec": share(
                    detected.iter().filter(|f| f.due_before_spec == Some(true)).count(),
                    detected.iter().filter(|f| f.due_before_spec.is_some()).count(),
                ),
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// Per fleet cause (bad lot, software regression): alerts it took and victims a fleet alert
/// listed.
fn fleet_attribution(runs: &[&RunResult]) -> serde_json::Value {
    let mut by: BTreeMap<Scenario, Vec<&seqmon_pipeline::evaluate::FleetCauseOutcome>> =
        BTreeMap::new();
    for r in runs {
        for c in &r.fleet_causes {
            by.entry(c.scenario).or_default().push(c);
        }
    }
    let mut out = serde_json::Map::new();
    for (scenario, cs) in by {
        let mut alerts: Vec<f64> = cs.iter().map(|c| c.alerts as f64).collect();
        alerts.sort_by(f64::total_cmp);
        let victims: usize = cs.iter().map(|c| c.victims).sum();
        let covered: usize = cs.iter().map(|c| c.covered_by_fleet_alert).sum();
        out.insert(
            scenario_name(scenario),
            json!({
                "causes": cs.len(),
                "victims_per_cause_median": round(percentile(
                    &{
                        let mut v: Vec<f64> = cs.iter().map(|c| c.victims as f64).collect();
                        v.sort_by(f64::total_cmp);
                        v
                    },
                    0.5
                )),
                "alerts_per_cause_median": round(percentile(&alerts, 0.5)),
                "alerts_per_cause_max": alerts.last().copied(),
                "causes_named_by_one_alert": cs.iter().filter(|c| c.alerts == 1).count(),
                "victims_listed_by_a_fleet_alert": share(covered, victims),
            }),
        );
    }
    serde_json::Value::Object(out)
}

fn false_alert_rate(runs: &[&RunResult]) -> serde_json::Value {
    let alerts: u64 = runs.iter().map(|r| r.false_alerts).sum();
    let hours: f64 = runs.iter().map(|r| r.clean_instrument_hours).sum();
    let months = hours / 720.0;
    let mut metrics: BTreeMap<&str, u64> = BTreeMap::new();
    for r in runs {
        for (m, n) in &r.false_alert_metrics {
            *metrics.entry(m).or_default() += n;
        }
    }
    json!({
        "false_alerts": alerts,
        "instrument_months": (months * 100.0).round() / 100.0,
        "per_instrument_month": if months > 0.0 { json!((alerts as f64 / months * 10_000.0).round() / 10_000.0) } else { serde_json::Value::Null },
        "by_metric": metrics,
    })
}

fn main() -> ExitCode {
    seqmon_runtime::service::init_logging();
    let cli = Cli::parse();
    if cli.sample_intervals_s.len() != cli.hours.len() || cli.seeds == 0 {
        eprintln!("error: --sample-intervals-s needs one value per --hours, and --seeds >= 1");
        return ExitCode::from(2);
    }
    let mut configs = Vec::new();
    for seed in 1..=cli.seeds {
        for (&hours, &interval) in cli.hours.iter().zip(&cli.sample_intervals_s) {
            if hours > 48.0 && cli.long_seeds.is_some_and(|n| seed > n) {
                continue;
            }
            for &instruments in &cli.fleets {
                for &bad in &cli.bad_shares {
                    for faults in [true, false] {
                        configs.push(FleetConfig {
                            instruments,
                            duration_hours: hours,
                            sample_interval_s: interval,
                            seed,
                            bad_record_share: bad,
                            faults,
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    // Largest first, so the last runs to finish are short ones.
    configs.sort_by(|a, b| {
        let cost =
            |c: &FleetConfig| c.instruments as f64 * c.duration_hours / c.sample_interval_s as f64;
        cost(b).total_cmp(&cost(a))
    });
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = std::time::Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<RunResult>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(cfg) = configs.get(i) else { break };
                match run_fleet(cfg) {
                    Ok(r) => {
                        eprintln!(
                            "[{:>4}/{}] {:>5.0} s  fleet {:>3} × {:>4} h  seed {:>2}  bad {:.2}  {}: {} events, {} faults, {} false alerts",
                            i + 1,
                            configs.len(),
                            started.elapsed().as_secs_f64(),
                            cfg.instruments,
                            cfg.duration_hours,
                            cfg.seed,
                            cfg.bad_record_share,
                            if cfg.faults { "faulty " } else { "control" },
                            r.events,
                            r.faults.len(),
                            r.false_alerts
                        );
                        results.lock().expect("results").push(r);
                    }
                    Err(e) => {
                        *failed.lock().expect("failed") = Some(format!("{cfg:?}: {e}"));
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("failed") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let results = results.into_inner().expect("results");
    let all: Vec<&RunResult> = results.iter().collect();
    let faulty: Vec<&RunResult> = all.iter().copied().filter(|r| !r.control).collect();
    let control: Vec<&RunResult> = all.iter().copied().filter(|r| r.control).collect();
    let mut by_duration = serde_json::Map::new();
    for &h in &cli.hours {
        let runs: Vec<&RunResult> = faulty.iter().copied().filter(|r| r.hours == h).collect();
        let ctrl: Vec<&RunResult> = control.iter().copied().filter(|r| r.hours == h).collect();
        by_duration.insert(
            format!("{h}h"),
            json!({ "per_fault": per_fault(&runs), "control": false_alert_rate(&ctrl) }),
        );
    }
    let control_rate = false_alert_rate(&control);
    let slow: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| s.class() == FaultClass::Slow)
        .collect();
    let doc = json!({
        "sweep": {
            "seeds": cli.seeds,
            "long_seeds": cli.long_seeds.unwrap_or(cli.seeds),
            "fleets": cli.fleets,
            "hours": cli.hours,
            "sample_intervals_s": cli.sample_intervals_s,
            "bad_shares": cli.bad_shares,
            "runs": results.len(),
            "events": results.iter().map(|r| r.events).sum::<u64>(),
            "elapsed_s": started.elapsed().as_secs(),
        },
        "false_alerts_per_instrument_month": control_rate["per_instrument_month"],
        "control": control_rate,
        "clean_instruments_of_faulty_fleets": false_alert_rate(&faulty),
        "slow_degradations": slow,
        "per_fault": per_fault(&faulty),
        "fleet_attribution": fleet_attribution(&faulty),
        "by_duration": by_duration,
    });
    if let Some(dir) = cli.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &cli.out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => {
            eprintln!("wrote {}", cli.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", cli.out.display());
            ExitCode::FAILURE
        }
    }
}
