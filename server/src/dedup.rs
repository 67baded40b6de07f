//! Exactly-once ingest: which `(agent_id, seq)` batches have been applied.
//!
//! Per agent, the applied seqs as sorted disjoint ranges. An agent numbers its batches
//! contiguously within a run, starting above everything it used before (its spool keeps the
//! last seq; without one it starts at its clock in microseconds), so there is about one range
//! per agent run, and the ranges merge as batches arrive.
//!
//! The list is bounded: past [`MAX_RANGES`] the oldest range is let go and the agent's
//! *floor* rises above it. A seq below the floor is not silently taken for a duplicate — it
//! is [`Seen::Behind`]: refused, counted and logged, because it means the agent's clock
//! stepped back (with its spool lost) or two agents share an id. The agent then renumbers the
//! batch above the server's last seq and sends it again, so nothing is lost. The state is
//! saved in every catalog commit and rebuilt from the WAL at start, so it survives restarts;
//! its size grows with agents, never with batches or time.

use std::collections::{BTreeMap, HashMap};

use imprint_query::catalog::SeqRanges;

/// Ranges remembered per agent before the oldest is let go (the floor rises).
pub const MAX_RANGES: usize = 256;

/// What the server knows of one `(agent, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not applied: apply it.
    Fresh,
    /// Applied before: acknowledge, do nothing.
    Duplicate,
    /// Below the agent's floor: the server cannot tell; refuse so the agent renumbers.
    Behind { floor: u64 },
}

#[derive(Debug, Default, Clone)]
struct AgentSeqs {
    floor: u64,
    ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct AppliedSeqs {
    agents: HashMap<String, AgentSeqs>,
}

impl AppliedSeqs {
    pub fn from_catalog(saved: &BTreeMap<String, SeqRanges>) -> Self {
        Self {
            agents: saved
                .iter()
                .map(|(a, r)| {
                    let seqs = AgentSeqs {
                        floor: r.floor,
                        ranges: r.ranges.clone(),
                    };
                    (a.clone(), seqs)
                })
                .collect(),
        }
    }

    /// Whether `agent` has ever had a batch applied.
    pub fn knows(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    /// The highest seq applied for `agent` (0 when none).
    pub fn last(&self, agent: &str) -> u64 {
        self.agents
            .get(agent)
            .and_then(|s| s.ranges.last())
            .map_or(0, |&(_, hi)| hi)
    }

    /// What is known of the batch `(agent, seq)`.
    pub fn seen(&self, agent: &str, seq: u64) -> Seen {
        let Some(seqs) = self.agents.get(agent) else {
            return Seen::Fresh;
        };
        let ranges = &seqs.ranges;
        let i = ranges.partition_point(|&(_, hi)| hi < seq);
        if ranges.get(i).is_some_and(|&(lo, _)| lo <= seq) {
            Seen::Duplicate
        } else if seq < seqs.floor {
            Seen::Behind { floor: seqs.floor }
        } else {
            Seen::Fresh
        }
    }

    /// Records `(agent, seq)` as applied.
    pub fn insert(&mut self, agent: &str, seq: u64) {
        let seqs = match self.agents.get_mut(agent) {
            Some(r) => r,
            None => self.agents.entry(agent.to_string()).or_default(),
        };
        let ranges = &mut seqs.ranges;
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
            let (_, hi) = ranges.remove(0);
            seqs.floor = seqs.floor.max(hi + 1);
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
            .map(|(a, s)| {
                let saved = SeqRanges {
                    floor: s.floor,
                    ranges: s.ranges.clone(),
                };
                (a.clone(), saved)
            })
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
            assert_eq!(s.seen("a", seq), Seen::Fresh, "{seq}");
            s.insert("a", seq);
            assert_eq!(s.seen("a", seq), Seen::Duplicate);
        }
        assert_eq!(s.snapshot()["a"].ranges, vec![(1, 5), (8, 10)]);
        assert_eq!(s.seen("a", 6), Seen::Fresh);
        assert_eq!(s.seen("b", 1), Seen::Fresh);
        assert_eq!(s.last("a"), 10);
        let restored = AppliedSeqs::from_catalog(&s.snapshot());
        assert_eq!(restored.seen("a", 9), Seen::Duplicate);
    }

    /// An agent that leaves a gap after every batch: the list stays bounded, the newest seqs
    /// are still told apart exactly, and the old ones are not taken for duplicates.
    #[test]
    fn memory_is_bounded_and_old_seqs_are_behind_not_duplicates() {
        let mut s = AppliedSeqs::default();
        for seq in (1..=10_000u64).map(|i| i * 2) {
            s.insert("a", seq);
        }
        let saved = &s.snapshot()["a"];
        assert!(saved.ranges.len() <= MAX_RANGES);
        assert_eq!(s.seen("a", 20_000), Seen::Duplicate);
        assert_eq!(s.seen("a", 19_999), Seen::Fresh);
        let floor = saved.floor;
        assert!(floor > 0);
        // A real batch numbered below the floor (clock stepped back) is refused, never dropped.
        assert_eq!(s.seen("a", 3), Seen::Behind { floor });
        assert_eq!(s.seen("a", 2), Seen::Behind { floor });
        // The floor survives a restart.
        let restored = AppliedSeqs::from_catalog(&s.snapshot());
        assert_eq!(restored.seen("a", 3), Seen::Behind { floor });
    }

    /// Contiguous runs (how the agent numbers) merge into one range per run.
    #[test]
    fn one_range_per_agent_run() {
        let mut s = AppliedSeqs::default();
        for run in 0..10u64 {
            let start = 1_000_000 * (run + 1);
            for seq in start..start + 500 {
                s.insert("a", seq);
            }
        }
        assert_eq!(s.snapshot()["a"].ranges.len(), 10);
    }

    #[test]
    fn catalogs_before_floors_still_load() {
        let old: SeqRanges = serde_json::from_str("[[1,5],[8,10]]").expect("old format");
        assert_eq!(old.floor, 0);
        assert_eq!(old.ranges, vec![(1, 5), (8, 10)]);
        let new = serde_json::to_string(&SeqRanges {
            floor: 7,
            ranges: vec![(8, 9)],
        })
        .expect("json");
        let back: SeqRanges = serde_json::from_str(&new).expect("new format");
        assert_eq!(back.floor, 7);
    }
}
