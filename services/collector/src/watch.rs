//! Live operation: watches a folder of runs while instruments write them. Each poll collects
//! every run folder, keeps the records not yet sent whose cycle is complete, and hands them out;
//! once they are delivered, [`Watcher::mark_sent`] records their message ids in a state file per
//! run (written atomically), so a restart neither re-sends nor skips.
//!
//! A cycle is sent once every per-cycle metric file (extraction, Q, error) holds it for every tile, or
//! the run is finished (RTAComplete.txt, CopyComplete.txt or RunCompletionStatus.xml); lane
//! estimates (density, %PF, phasing), which change until the end, are sent when it finishes. A half-written last
//! record in an InterOp file is left for the next poll. Should the process die between delivery
//! and the state write, the same records are sent again with the same message ids, and the
//! validator drops the duplicates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use seqmon_model::Telemetry;
use serde::{Deserialize, Serialize};

use crate::collect::{collect_run_with, Release};
use crate::consent::ConsentOverride;
use crate::files::{read_bounded, Limits};

/// Files whose presence marks a finished run.
pub const COMPLETION_MARKERS: &[&str] = &[
    "RTAComplete.txt",
    "CopyComplete.txt",
    "RunCompletionStatus.xml",
];

/// Watches a folder of run folders.
#[derive(Debug, Clone)]
pub struct Watcher {
    runs_dir: PathBuf,
    state_dir: PathBuf,
    operator: Option<ConsentOverride>,
    limits: Limits,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RunState {
    sent: BTreeSet<String>,
}

/// New records of one run.
#[derive(Debug)]
pub struct Pending {
    pub run_id: String,
    pub records: Vec<Telemetry>,
}

fn state_name(run_id: &str) -> String {
    let safe: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

impl Watcher {
    /// A watcher of `runs_dir` keeping its position in `state_dir` (created if needed).
    pub fn new(
        runs_dir: &Path,
        state_dir: &Path,
        operator: Option<ConsentOverride>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        Ok(Watcher {
            runs_dir: runs_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            operator,
            limits: Limits::default(),
        })
    }

    /// The same watcher, reading no file over its cap in `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn load(&self, run_id: &str) -> RunState {
        read_bounded(
            &self.state_dir.join(state_name(run_id)),
            self.limits.state_max_bytes,
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
    }

    /// Records not sent yet, of complete cycles, per run, in event-time order.
    pub fn pending(&self, now_ms: i64) -> std::io::Result<Vec<Pending>> {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&self.runs_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("RunInfo.xml").exists())
            .collect();
        folders.sort();
        let mut out = Vec::new();
        for folder in folders {
            let collected = match collect_run_with(&folder, self.operator, now_ms, &self.limits) {
                Ok(c) => c,
                Err(e) => {
                    // A run folder the instrument is still creating; try again next poll.
                    tracing::debug!(folder = %folder.display(), error = %e, "run folder not readable yet");
                    continue;
                }
            };
            for e in &collected.file_errors {
                tracing::debug!(error = %e, "metric file skipped this poll");
            }
            // A run in progress is short by design; its cycles are held back until complete.
            for w in &collected.warnings {
                tracing::debug!(warning = %w, "metric file not whole this poll");
            }
            let Some(run_id) = collected.records.first().and_then(|r| r.run_id.clone()) else {
                continue;
            };
            let finished = COMPLETION_MARKERS.iter().any(|m| folder.join(m).exists());
            let frontier = collected.frontier;
            let state = self.load(&run_id);
            let ready = |release: &Release| match release {
                Release::Now => true,
                Release::AfterCycle(c) => finished || *c <= frontier,
                Release::AtRunEnd => finished,
            };
            let records: Vec<Telemetry> = collected
                .records
                .into_iter()
                .zip(collected.release)
                .filter(|(r, release)| !state.sent.contains(&r.message_id) && ready(release))
                .map(|(r, _)| r)
                .collect();
            if !records.is_empty() {
                out.push(Pending { run_id, records });
            }
        }
        Ok(out)
    }

    /// Records that `records` of `run_id` were delivered.
    pub fn mark_sent(&self, run_id: &str, records: &[Telemetry]) -> std::io::Result<()> {
        let mut state = self.load(run_id);
        state
            .sent
            .extend(records.iter().map(|r| r.message_id.clone()));
        let path = self.state_dir.join(state_name(run_id));
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&state).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn runs() -> PathBuf {
        crate::sample_runs_dir()
    }

    /// Writes the first `share` of each InterOp file of `src` into `dst` (as a run in progress
    /// would have it, usually ending in a half-written record).
    fn grow(src: &Path, dst: &Path, share: f64) {
        std::fs::create_dir_all(dst.join("InterOp")).unwrap();
        for f in ["RunInfo.xml", "runParameters.xml"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        for e in std::fs::read_dir(src.join("InterOp")).unwrap() {
            let e = e.unwrap();
            let full = std::fs::read(e.path()).unwrap();
            let n = ((full.len() as f64 * share) as usize)
                .max(2)
                .min(full.len());
            std::fs::write(dst.join("InterOp").join(e.file_name()), &full[..n]).unwrap();
        }
    }

    #[test]
    fn a_growing_run_is_sent_cycle_by_cycle_once_across_restarts() {
        let base = std::env::temp_dir().join(format!("watch-{}", std::process::id()));
        let (runs_dir, state_dir) = (base.join("runs"), base.join("state"));
        let src = runs().join("miseq-2014-02-single-read");
        let run = runs_dir.join("run");
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        let mut values: BTreeMap<String, Telemetry> = BTreeMap::new();
        let mut send = |w: &Watcher| {
            let mut n = 0;
            for p in w.pending(0).unwrap() {
                for r in &p.records {
                    *sent.entry(r.message_id.clone()).or_default() += 1;
                    values.insert(r.message_id.clone(), r.clone());
                }
                n += p.records.len();
                w.mark_sent(&p.run_id, &p.records).unwrap();
            }
            n
        };
        let mut polls = Vec::new();
        for share in [0.2, 0.45, 0.7] {
            grow(&src, &run, share);
            // A new watcher each time: a restart between polls.
            polls.push(send(&Watcher::new(&runs_dir, &state_dir, None).unwrap()));
        }
        let w = Watcher::new(&runs_dir, &state_dir, None).unwrap();
        polls.push(send(&w));
        assert_eq!(
            polls[3], 0,
            "nothing new without new data: nothing re-sent after a restart"
        );
        grow(&src, &run, 1.0);
        polls.push(send(&w));
        std::fs::write(run.join("RTAComplete.txt"), "done").unwrap();
        polls.push(send(&w));
        assert!(
            polls[0] > 0 && polls[1] > 0 && polls[2] > 0 && polls[4] > 0 && polls[5] > 0,
            "{polls:?}"
        );
        assert!(
            sent.values().all(|n| *n == 1),
            "every record sent exactly once"
        );
        let full = crate::collect::collect_run(&src, None, 0).unwrap();
        let all: BTreeSet<&String> = full.records.iter().map(|r| &r.message_id).collect();
        let got: BTreeSet<&String> = sent.keys().collect();
        assert_eq!(
            got, all,
            "nothing skipped: the growing run gave exactly the finished run's records"
        );
        // And their values are the finished run's: no partial cycle was sent.
        for r in &full.records {
            assert_eq!(
                &values[&r.message_id], r,
                "record sent before its cycle was complete"
            );
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The records of a per-cycle metric file of `src`, by cycle, each with the file's header:
    /// what RTA 3 writes in `InterOp/C<cycle>.1/`. For the layouts with a 16-bit tile (the
    /// sample MiSeq run's), where the cycle follows lane and tile.
    fn split_by_cycle(file: &Path) -> BTreeMap<u16, Vec<u8>> {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let (header, size) = match name {
            "QMetricsOut.bin" => {
                let p = crate::interop::q_metrics(file).unwrap();
                (p.header_bytes, p.record_size)
            }
            "ExtractionMetricsOut.bin" => {
                let p = crate::interop::extraction_metrics(file).unwrap();
                (p.header_bytes, p.record_size)
            }
            "CorrectedIntMetricsOut.bin" => {
                let p = crate::interop::corrected_intensity_metrics(file).unwrap();
                (p.header_bytes, p.record_size)
            }
            other => panic!("{other}"),
        };
        let mut out: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        for rec in bytes[header..].chunks_exact(size) {
            let cycle = u16::from_le_bytes([rec[4], rec[5]]);
            out.entry(cycle)
                .or_insert_with(|| bytes[..header].to_vec())
                .extend_from_slice(rec);
        }
        out
    }

    #[test]
    fn a_run_written_in_per_cycle_folders_is_sent_cycle_by_cycle_once_across_restarts() {
        let base = std::env::temp_dir().join(format!("watch-cycles-{}", std::process::id()));
        let (runs_dir, state_dir) = (base.join("runs"), base.join("state"));
        let src = runs().join("miseq-2014-02-single-read");
        let run = runs_dir.join("run");
        std::fs::create_dir_all(run.join("InterOp")).unwrap();
        for f in ["RunInfo.xml", "runParameters.xml"] {
            std::fs::copy(src.join(f), run.join(f)).unwrap();
        }
        // Tile metrics stay run-level (a snapshot); the per-cycle files go to C<cycle>.1.
        for f in [
            "TileMetricsOut.bin",
            "IndexMetricsOut.bin",
            "ControlMetricsOut.bin",
        ] {
            std::fs::copy(src.join("InterOp").join(f), run.join("InterOp").join(f)).unwrap();
        }
        let per_cycle: Vec<(&str, BTreeMap<u16, Vec<u8>>)> = [
            "QMetricsOut.bin",
            "ExtractionMetricsOut.bin",
            "CorrectedIntMetricsOut.bin",
        ]
        .into_iter()
        .map(|n| (n, split_by_cycle(&src.join("InterOp").join(n))))
        .collect();
        let last = *per_cycle[0].1.keys().last().unwrap();
        // Writes cycles 1..=through, and a half-written copy of the next cycle's Q file.
        let write_through = |through: u16| {
            for (name, cycles) in &per_cycle {
                for (c, bytes) in cycles.range(..=through) {
                    let d = run.join(format!("InterOp/C{c}.1"));
                    std::fs::create_dir_all(&d).unwrap();
                    std::fs::write(d.join(name), bytes).unwrap();
                }
            }
            if let Some(next) = per_cycle[0].1.get(&(through + 1)) {
                let d = run.join(format!("InterOp/C{}.1", through + 1));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("QMetricsOut.bin"), &next[..next.len() / 2]).unwrap();
            }
        };
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        let mut values: BTreeMap<String, Telemetry> = BTreeMap::new();
        let mut polls = Vec::new();
        for through in [3, 17, 30, last] {
            write_through(through);
            // A new watcher each poll: a restart in between.
            let w = Watcher::new(&runs_dir, &state_dir, None).unwrap();
            let mut n = 0;
            for p in w.pending(0).unwrap() {
                for r in &p.records {
                    *sent.entry(r.message_id.clone()).or_default() += 1;
                    values.insert(r.message_id.clone(), r.clone());
                    let cycle = r.run_performance.as_ref().map_or(0, |p| p.cycle);
                    if r.kind == seqmon_model::TelemetryKind::RUN_PERFORMANCE
                        && r.run_performance
                            .as_ref()
                            .unwrap()
                            .cluster_density_k_per_mm2
                            .is_none()
                    {
                        assert!(
                            cycle <= i32::from(through),
                            "cycle {cycle} sent at {through}"
                        );
                    }
                }
                n += p.records.len();
                w.mark_sent(&p.run_id, &p.records).unwrap();
            }
            polls.push(n);
        }
        std::fs::write(run.join("RTAComplete.txt"), "done").unwrap();
        let w = Watcher::new(&runs_dir, &state_dir, None).unwrap();
        for p in w.pending(0).unwrap() {
            for r in &p.records {
                *sent.entry(r.message_id.clone()).or_default() += 1;
                values.insert(r.message_id.clone(), r.clone());
            }
            polls.push(p.records.len());
            w.mark_sent(&p.run_id, &p.records).unwrap();
        }
        assert!(polls.iter().all(|n| *n > 0), "{polls:?}");
        assert!(
            sent.values().all(|n| *n == 1),
            "every record sent exactly once"
        );
        let full = crate::collect::collect_run(&src, None, 0).unwrap();
        let all: BTreeSet<&String> = full.records.iter().map(|r| &r.message_id).collect();
        assert_eq!(sent.keys().collect::<BTreeSet<_>>(), all, "nothing skipped");
        for r in &full.records {
            assert_eq!(
                &values[&r.message_id], r,
                "sent before its cycle was complete"
            );
        }
        // The summary says the per-cycle copies were read.
        let c = crate::collect::collect_run(&run, None, 0).unwrap();
        assert!(c.file_errors.is_empty(), "{:?}", c.file_errors);
        let read = c
            .files
            .iter()
            .filter(|f| f.outcome == crate::collect::FileOutcome::Read)
            .count();
        assert_eq!(read, 3 + 3 * usize::from(last), "{:?}", c.files);
        // A per-cycle copy holding another cycle's records refuses that file, naming the copy.
        let wrong = run.join("InterOp/C1.1/QMetricsOut.bin");
        std::fs::write(&wrong, &per_cycle[0].1[&2]).unwrap();
        let c = crate::collect::collect_run(&run, None, 0).unwrap();
        assert!(matches!(
            c.file_errors.as_slice(),
            [crate::interop::InteropError::Inconsistent { file, detail, .. }]
                if *file == wrong && detail.contains("cycle 2 in the folder of cycle 1")
        ));
        assert!(c.files.iter().any(
            |f| f.file == wrong && matches!(f.outcome, crate::collect::FileOutcome::Refused(_))
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
