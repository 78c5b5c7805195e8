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
}
