//! Observed time: the union of the windows in which any container of an image was
//! seen. Gaps do not count and parallel containers do not add up.

use serde::{Deserialize, Serialize};

/// Disjoint, sorted half-open intervals `[start, end)` in microseconds; touching
/// or overlapping windows are merged, so steady observation is one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTime {
    intervals: Vec<(i64, i64)>,
}

impl ObservedTime {
    pub fn insert(&mut self, start: i64, end: i64) {
        if end <= start {
            return;
        }
        // Fast path: windows mostly arrive in time order, extending the last interval.
        if let Some(last) = self.intervals.last_mut() {
            if start >= last.0 && start <= last.1 {
                last.1 = last.1.max(end);
                return;
            }
            if start > last.1 {
                self.intervals.push((start, end));
                return;
            }
        }
        // General case: merge every interval that touches [start, end).
        let first = self.intervals.partition_point(|&(_, e)| e < start);
        let last = self.intervals.partition_point(|&(s, _)| s <= end);
        let (mut s, mut e) = (start, end);
        for &(a, b) in &self.intervals[first..last] {
            s = s.min(a);
            e = e.max(b);
        }
        self.intervals.splice(first..last, [(s, e)]);
    }

    /// Total observed microseconds.
    pub fn total(&self) -> i64 {
        self.intervals.iter().map(|(s, e)| e - s).sum()
    }

    /// Observed microseconds before `t`.
    pub fn before(&self, t: i64) -> i64 {
        self.intervals
            .iter()
            .take_while(|(s, _)| *s < t)
            .map(|&(s, e)| e.min(t) - s)
            .sum()
    }

    /// The moment at which observed time reached `length` microseconds, if it has.
    pub fn moment_reaching(&self, length: i64) -> Option<i64> {
        let mut left = length;
        for &(s, e) in &self.intervals {
            if e - s >= left {
                return Some(s + left);
            }
            left -= e - s;
        }
        None
    }

    pub fn first(&self) -> Option<i64> {
        self.intervals.first().map(|(s, _)| *s)
    }

    pub fn last(&self) -> Option<i64> {
        self.intervals.last().map(|(_, e)| *e)
    }

    pub fn intervals(&self) -> &[(i64, i64)] {
        &self.intervals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlaps_and_keeps_gaps() {
        let mut o = ObservedTime::default();
        o.insert(0, 30);
        o.insert(30, 60); // touching: one interval
        o.insert(10, 40); // a parallel container: adds nothing
        o.insert(100, 130); // a gap
        o.insert(70, 80); // out of order, in the gap
        assert_eq!(o.intervals(), &[(0, 60), (70, 80), (100, 130)]);
        assert_eq!(o.total(), 100);
        o.insert(55, 105); // bridges all three
        assert_eq!(o.intervals(), &[(0, 130)]);
        assert_eq!(o.total(), 130);
    }

    #[test]
    fn before_and_moment_reaching_skip_gaps() {
        let mut o = ObservedTime::default();
        o.insert(0, 30);
        o.insert(100, 160);
        assert_eq!(o.before(20), 20);
        assert_eq!(o.before(50), 30);
        assert_eq!(o.before(130), 60);
        assert_eq!(o.moment_reaching(30), Some(30));
        assert_eq!(o.moment_reaching(31), Some(101));
        assert_eq!(o.moment_reaching(90), Some(160));
        assert_eq!(o.moment_reaching(91), None);
    }
}
