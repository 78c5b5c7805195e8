//! Which input offsets may be committed: a record's offset is done when every delivery it asked
//! for is done (delivered, or dead-lettered), and a partition commits up to its first record
//! not done. So a restart redelivers exactly what was not finished, never skips it.

use std::collections::BTreeMap;

/// Offsets in flight per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: BTreeMap<i32, Part>,
}

#[derive(Debug, Default)]
struct Part {
    /// Offset → deliveries still open.
    pending: BTreeMap<i64, u32>,
    /// One past the highest offset seen.
    next: i64,
    /// Last offset committed (what `committable` returned and the caller committed).
    committed: i64,
}

impl OffsetTracker {
    /// A record at `offset` asked for `deliveries` deliveries (0: done at once).
    pub fn track(&mut self, partition: i32, offset: i64, deliveries: u32) {
        let p = self.parts.entry(partition).or_default();
        p.next = p.next.max(offset + 1);
        if deliveries > 0 {
            *p.pending.entry(offset).or_default() += deliveries;
        }
    }

    /// Consumption of `partition` starts at `offset`, committed already.
    pub fn start_at(&mut self, partition: i32, offset: i64) {
        let p = self.parts.entry(partition).or_default();
        p.next = p.next.max(offset);
        p.committed = p.committed.max(offset);
    }

    /// One delivery of the record at `offset` is done.
    pub fn done(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            if let Some(n) = p.pending.get_mut(&offset) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    p.pending.remove(&offset);
                }
            }
        }
    }

    /// Deliveries still open.
    pub fn in_flight(&self) -> u64 {
        self.parts
            .values()
            .flat_map(|p| p.pending.values())
            .map(|n| u64::from(*n))
            .sum()
    }

    /// Per partition, the offset to commit (the next to read after a restart) when it moved
    /// since the last call.
    pub fn committable(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (partition, p) in self.parts.iter_mut() {
            let upto = p.pending.keys().next().copied().unwrap_or(p.next);
            if upto > p.committed {
                p.committed = upto;
                out.push((*partition, upto));
            }
        }
        out
    }

    /// Partitions revoked: forget them (their deliveries may still finish; nothing commits).
    pub fn forget(&mut self) {
        self.parts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_up_to_the_first_unfinished_record() {
        let mut t = OffsetTracker::default();
        t.track(0, 10, 2);
        t.track(0, 11, 0);
        t.track(0, 12, 1);
        t.track(1, 5, 1);
        assert_eq!(t.committable(), vec![(0, 10), (1, 5)]);
        assert_eq!(t.in_flight(), 4);
        t.done(0, 12);
        assert_eq!(t.committable(), vec![], "10 is still open");
        t.done(0, 10);
        t.done(0, 10);
        t.done(1, 5);
        assert_eq!(t.committable(), vec![(0, 13), (1, 6)]);
        assert_eq!(t.committable(), vec![]);
        assert_eq!(t.in_flight(), 0);
        t.start_at(2, 40);
        assert_eq!(t.committable(), vec![], "committed already");
        t.track(2, 40, 0);
        assert_eq!(t.committable(), vec![(2, 41)]);
        // A stray completion (after a rebalance) changes nothing.
        t.done(0, 3);
        t.forget();
        assert_eq!(t.committable(), vec![]);
    }
}
