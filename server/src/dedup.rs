//! Exactly-once ingest: which `(agent_id, seq)` batches have been applied.
//!
//! Per agent, the applied seqs as sorted disjoint ranges (agents number batches
//! contiguously, so this is usually one range). When an agent leaves more than
//! [`MAX_RANGES`] gaps, the oldest gap is closed — its seqs count as applied — so
//! memory stays bounded whatever the agent sends. The state is saved in every
//! catalog commit and rebuilt from the WAL at start, so it survives restarts.

use std::collections::{BTreeMap, HashMap};

use imprint_query::catalog::SeqRanges;

/// Gaps remembered per agent before the oldest is given up.
pub const MAX_RANGES: usize = 1024;

#[derive(Debug, Default)]
pub struct AppliedSeqs {
    agents: HashMap<String, Vec<(u64, u64)>>,
}

impl AppliedSeqs {
    pub fn from_catalog(saved: &BTreeMap<String, SeqRanges>) -> Self {
        Self {
            agents: saved
                .iter()
                .map(|(a, r)| (a.clone(), r.0.clone()))
                .collect(),
        }
    }

    /// Whether the batch `(agent, seq)` was applied before.
    pub fn contains(&self, agent: &str, seq: u64) -> bool {
        let Some(ranges) = self.agents.get(agent) else {
            return false;
        };
        let i = ranges.partition_point(|&(_, hi)| hi < seq);
        ranges.get(i).is_some_and(|&(lo, _)| lo <= seq)
    }

    /// Records `(agent, seq)` as applied.
    pub fn insert(&mut self, agent: &str, seq: u64) {
        let ranges = match self.agents.get_mut(agent) {
            Some(r) => r,
            None => self.agents.entry(agent.to_string()).or_default(),
        };
        // Fast path: the next seq of the newest range.
        if let Some(last) = ranges.last_mut()
            && last.1.checked_add(1) == Some(seq)
        {
            last.1 = seq;
            return;
        }
        let i = ranges.partition_point(|&(_, hi)| hi.saturating_add(1) < seq);
        if let Some(r) = ranges.get_mut(i) {
            if r.0 <= seq && seq <= r.1 {
                return;
            }
            if r.0 == seq + 1 {
                r.0 = seq;
                Self::merge_at(ranges, i.saturating_sub(1));
                return;
            }
            if r.1 + 1 == seq {
                r.1 = seq;
                Self::merge_at(ranges, i);
                return;
            }
        }
        ranges.insert(i, (seq, seq));
        if ranges.len() > MAX_RANGES {
            // Close the oldest gap.
            let (_, hi) = ranges.remove(1);
            ranges[0].1 = hi;
        }
    }

    fn merge_at(ranges: &mut Vec<(u64, u64)>, i: usize) {
        if i + 1 < ranges.len() && ranges[i].1 + 1 >= ranges[i + 1].0 {
            ranges[i].1 = ranges[i].1.max(ranges[i + 1].1);
            ranges.remove(i + 1);
        }
    }

    /// The state to save in a catalog commit.
    pub fn snapshot(&self) -> BTreeMap<String, SeqRanges> {
        self.agents
            .iter()
            .map(|(a, r)| (a.clone(), SeqRanges(r.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_and_out_of_order_seqs() {
        let mut s = AppliedSeqs::default();
        for seq in [1, 2, 3, 5, 4, 10, 8, 9] {
            assert!(!s.contains("a", seq), "{seq}");
            s.insert("a", seq);
            assert!(s.contains("a", seq));
        }
        assert_eq!(s.snapshot()["a"].0, vec![(1, 5), (8, 10)]);
        assert!(!s.contains("a", 6));
        assert!(!s.contains("b", 1));
        let restored = AppliedSeqs::from_catalog(&s.snapshot());
        assert!(restored.contains("a", 9));
    }

    #[test]
    fn memory_is_bounded_when_an_agent_leaves_gaps() {
        let mut s = AppliedSeqs::default();
        for seq in (0..10_000u64).map(|i| i * 2) {
            s.insert("a", seq);
        }
        assert!(s.snapshot()["a"].0.len() <= MAX_RANGES);
        // The newest seqs are still told apart exactly.
        assert!(s.contains("a", 19_998));
        assert!(!s.contains("a", 19_997));
        // The oldest gaps were given up: counted as applied.
        assert!(s.contains("a", 1));
    }
}
