//! The collector's on-disk queue of batches for the ingest gateway, so nothing collected is lost
//! while the site is offline, the gateway is down or a proxy misbehaves.
//!
//! Each batch is one file `<sequence>.batch` (a batch frame, [`seqmon_model::ingest`]), written
//! to a temporary name, synced and renamed, so a crash leaves whole batches only. Its
//! idempotency key is `<spool id>-<sequence>`: the spool id is random, made once per spool
//! folder, so keys never repeat for a site and a retried batch always carries the same key.
//!
//! Bounded: when the batches exceed the size limit, the oldest are deleted and their records
//! counted in `dropped-records` (a file, since the collector opens no port) and logged. A batch
//! the gateway refuses for good (a malformed frame: a collector bug) is moved to `rejected/`
//! (the newest 100 are kept) and logged, never retried forever and never dropped silently.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Batches kept in `rejected/` for inspection.
const REJECTED_KEPT: usize = 100;

/// One spooled batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub sequence: u64,
    pub path: PathBuf,
    pub idempotency_key: String,
}

/// The spool folder.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    id: String,
    max_bytes: u64,
    next: u64,
    /// Bytes of the batches waiting, kept as batches come and go (one directory scan at open).
    bytes: u64,
}

fn batch_name(seq: u64) -> String {
    format!("{seq:020}.batch")
}

fn sequence_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".batch")?.parse().ok()
}

/// Records in a batch file (its header's count), 0 when unreadable.
fn records_in(path: &Path) -> u64 {
    use std::io::Read;
    let mut header = [0u8; 8];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map(|()| {
            u64::from(u32::from_be_bytes([
                header[4], header[5], header[6], header[7],
            ]))
        })
        .unwrap_or(0)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

impl Spool {
    /// Opens (creating) the spool folder.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir.join("rejected"))?;
        let id_file = dir.join("spool-id");
        let id = match fs::read_to_string(&id_file) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let mut raw = [0u8; 12];
                getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
                let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                write_synced(&id_file, id.as_bytes())?;
                id
            }
        };
        let mut spool = Self {
            dir: dir.to_path_buf(),
            id,
            max_bytes,
            next: 0,
            bytes: 0,
        };
        spool.bytes = spool.scan_bytes()?;
        spool.next = spool
            .batches()?
            .last()
            .map(|b| b.sequence.saturating_add(1))
            .unwrap_or(0);
        // A sequence once used is never reused, even after its file was sent and deleted:
        // the high-water mark is kept beside the batches.
        if let Ok(mark) = fs::read_to_string(dir.join("next-sequence")) {
            spool.next = spool.next.max(mark.trim().parse().unwrap_or(0));
        }
        Ok(spool)
    }

    /// The batches waiting, oldest first.
    pub fn batches(&self) -> std::io::Result<Vec<Spooled>> {
        let mut v: Vec<Spooled> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                sequence_of(&path).map(|sequence| Spooled {
                    sequence,
                    idempotency_key: format!("{}-{sequence}", self.id),
                    path,
                })
            })
            .collect();
        v.sort_by_key(|b| b.sequence);
        Ok(v)
    }

    /// Bytes of the batches waiting, by one directory scan.
    fn scan_bytes(&self) -> std::io::Result<u64> {
        Ok(self
            .batches()?
            .iter()
            .filter_map(|b| fs::metadata(&b.path).ok())
            .map(|m| m.len())
            .sum())
    }

    /// Adds a batch (durably), then drops the oldest while over the size limit. Returns the
    /// records dropped.
    pub fn push(&mut self, frame: &[u8]) -> std::io::Result<u64> {
        let seq = self.next;
        if seq == u64::MAX {
            return Err(std::io::Error::other(format!(
                "{}: batch sequence exhausted (a file was renamed by hand?)",
                self.dir.display()
            )));
        }
        self.next += 1;
        write_synced(
            &self.dir.join("next-sequence"),
            self.next.to_string().as_bytes(),
        )?;
        write_synced(&self.dir.join(batch_name(seq)), frame)?;
        self.bytes += frame.len() as u64;
        let mut dropped = 0;
        if self.bytes > self.max_bytes {
            // The newest batch is kept even if it alone exceeds the limit.
            let mut waiting = self.batches()?;
            waiting.pop();
            for oldest in waiting {
                if self.bytes <= self.max_bytes {
                    break;
                }
                let len = fs::metadata(&oldest.path).map(|m| m.len()).unwrap_or(0);
                let records = records_in(&oldest.path);
                fs::remove_file(&oldest.path)?;
                self.bytes = self.bytes.saturating_sub(len);
                dropped += records;
            }
        }
        if dropped > 0 {
            let total_dropped = self.dropped_records() + dropped;
            write_synced(
                &self.dir.join("dropped-records"),
                total_dropped.to_string().as_bytes(),
            )?;
            tracing::warn!(
                dropped_records = dropped,
                dropped_records_total = total_dropped,
                spool = %self.dir.display(),
                "spool full (--spool-max-mib): oldest batches dropped"
            );
        }
        Ok(dropped)
    }

    /// Records dropped because the spool was full, since it was created.
    pub fn dropped_records(&self) -> u64 {
        fs::read_to_string(self.dir.join("dropped-records"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The batch was delivered.
    pub fn delivered(&mut self, b: &Spooled) -> std::io::Result<()> {
        let len = fs::metadata(&b.path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&b.path)?;
        self.bytes = self.bytes.saturating_sub(len);
        Ok(())
    }

    /// The gateway refused the batch for good: keep it for inspection, stop sending it.
    pub fn reject(&mut self, b: &Spooled) -> std::io::Result<()> {
        let len = fs::metadata(&b.path).map(|m| m.len()).unwrap_or(0);
        let rejected = self.dir.join("rejected");
        fs::rename(&b.path, rejected.join(batch_name(b.sequence)))?;
        self.bytes = self.bytes.saturating_sub(len);
        let mut kept: Vec<PathBuf> = fs::read_dir(&rejected)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| sequence_of(p).is_some())
            .collect();
        kept.sort();
        while kept.len() > REJECTED_KEPT {
            fs::remove_file(kept.remove(0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(records: u32, pad: usize) -> Vec<u8> {
        let mut f = b"SQB1".to_vec();
        f.extend_from_slice(&records.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, pad));
        f
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("seqmon-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn batches_survive_a_restart_in_order_with_stable_keys() {
        let dir = tempdir("restart");
        let mut s = Spool::open(&dir, 1 << 20).expect("opens");
        s.push(&frame(3, 10)).expect("push");
        s.push(&frame(4, 10)).expect("push");
        let before = s.batches().expect("lists");
        drop(s);
        let mut s = Spool::open(&dir, 1 << 20).expect("reopens");
        let after = s.batches().expect("lists");
        assert_eq!(before, after);
        assert_eq!(after.len(), 2);
        assert!(after[0].idempotency_key.ends_with("-0"));
        // Sequences are never reused, even after every batch was delivered.
        for b in &after {
            s.delivered(b).expect("delete");
        }
        drop(s);
        let mut s = Spool::open(&dir, 1 << 20).expect("reopens");
        s.push(&frame(1, 1)).expect("push");
        assert_eq!(s.batches().expect("lists")[0].sequence, 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_spool_drops_the_oldest_and_counts_their_records() {
        let dir = tempdir("full");
        let mut s = Spool::open(&dir, 250).expect("opens");
        assert_eq!(s.push(&frame(5, 100)).expect("push"), 0);
        assert_eq!(s.push(&frame(6, 100)).expect("push"), 0);
        assert_eq!(s.push(&frame(7, 100)).expect("push"), 5);
        assert_eq!(s.dropped_records(), 5);
        let left: Vec<u64> = s
            .batches()
            .expect("lists")
            .iter()
            .map(|b| b.sequence)
            .collect();
        assert_eq!(left, [1, 2]);
        // One batch larger than the whole limit is still kept.
        let mut s = Spool::open(&tempdir("huge"), 10).expect("opens");
        s.push(&frame(1, 100)).expect("push");
        assert_eq!(s.batches().expect("lists").len(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rejected_batch_is_kept_aside() {
        let dir = tempdir("reject");
        let mut s = Spool::open(&dir, 1 << 20).expect("opens");
        s.push(&frame(2, 1)).expect("push");
        let b = s.batches().expect("lists").remove(0);
        s.reject(&b).expect("reject");
        assert!(s.batches().expect("lists").is_empty());
        assert!(dir.join("rejected").join(batch_name(0)).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
