//! Per-category confidence: how far to trust that a profile's category is
//! complete. Deterministic, from two facts (see `docs/profiles.md` for worked
//! examples):
//!
//! - **stability**: the share of observed time since the category last gained a
//!   new item — `(observed − observed before the newest item's first window) /
//!   observed`; 1 for a category that never gained anything after the first
//!   window (or has no items at all);
//! - **agreement**: the share of the category's items that at least two
//!   containers saw; 0 while only one container has been watched (one container
//!   cannot corroborate itself), 1 for an empty category watched in two or more.
//!
//! Both are over the category's **baseline** items: once the profile is done
//! learning, items first seen afterwards are deviations (what policies alert on),
//! not growth of the baseline, so they do not lower its confidence — one anomaly
//! cannot blind a category to the next.
//!
//! `score = stability × (0.7 + 0.3 × agreement)`. The level is `high` from 0.8,
//! `medium` from 0.5, else `low` — and always `low` while observation is too
//! short: fewer than [`MIN_WINDOWS`] fingerprints or less than a tenth of the
//! learning period observed. So one container alone reaches at most `medium`.

use super::{Category, ImageProfile};

/// Fewer fingerprints than this is too little to trust anything.
pub const MIN_WINDOWS: u64 = 10;
/// Below this share of the learning period observed, confidence is `low`.
const MIN_SHARE_OF_PERIOD: f64 = 0.1;
const HIGH: f64 = 0.8;
const MEDIUM: f64 = 0.5;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceLevel {
    Low,
    Medium,
    High,
}

impl ConfidenceLevel {
    pub fn name(self) -> &'static str {
        match self {
            ConfidenceLevel::Low => "low",
            ConfidenceLevel::Medium => "medium",
            ConfidenceLevel::High => "high",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Low, Self::Medium, Self::High]
            .into_iter()
            .find(|l| l.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    pub level: ConfidenceLevel,
    /// 0–1, rounded to three decimals.
    pub score: f64,
    pub stability: f64,
    pub agreement: f64,
}

pub fn confidence(
    profile: &ImageProfile,
    category: Category,
    learning_period_micros: i64,
) -> Confidence {
    let observed = profile.observed.total();
    let learned_at = profile.learned_at(learning_period_micros);
    // Only the category's own kinds are visited, not every item of the profile.
    let items = || {
        category
            .kinds()
            .iter()
            .filter_map(|kind| profile.items.get(*kind))
            .flat_map(|keys| keys.values())
            .filter(move |s| ImageProfile::in_baseline(s.first_seen, learned_at))
    };
    let newest = items().map(|s| s.first_seen).max();
    let stability = match (newest, observed) {
        (_, 0) => 0.0,
        (None, _) => 1.0,
        (Some(t), _) => (observed - profile.observed.before(t)) as f64 / observed as f64,
    };
    let (total, agreed) = items().fold((0u64, 0u64), |(n, a), s| {
        (n + 1, a + u64::from(s.containers.len() >= 2))
    });
    let agreement = if profile.containers.len() < 2 {
        0.0
    } else if total == 0 {
        1.0
    } else {
        agreed as f64 / total as f64
    };
    let score = round3(stability * (0.7 + 0.3 * agreement));
    let too_little = profile.windows < MIN_WINDOWS
        || (observed as f64) < MIN_SHARE_OF_PERIOD * learning_period_micros as f64;
    let level = if too_little || score < MEDIUM {
        ConfidenceLevel::Low
    } else if score < HIGH {
        ConfidenceLevel::Medium
    } else {
        ConfidenceLevel::High
    };
    Confidence {
        level,
        score,
        stability: round3(stability),
        agreement: round3(agreement),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::WindowFacts;
    use super::*;

    const S: i64 = 1_000_000;
    const HOUR: i64 = 3600 * S;

    fn push(p: &mut ImageProfile, container: &str, w: i64, items: &[(&str, &str)]) {
        p.apply(
            "app:1",
            "n1",
            container,
            (w * 30 * S, (w + 1) * 30 * S),
            WindowFacts::default(),
            items.iter().map(|(k, v)| (*k, *v, 1)),
        );
    }

    #[test]
    fn too_little_observation_is_low_whatever_the_score() {
        let mut p = ImageProfile::default();
        for w in 0..9 {
            push(&mut p, "c1", w, &[("process", "/app")]);
            push(&mut p, "c2", w, &[("process", "/app")]);
        }
        // 270 s observed: a tenth of a 45 min period, enough.
        let c = confidence(&p, Category::Processes, 45 * 60 * S);
        assert_eq!((c.score, c.level), (1.0, ConfidenceLevel::High));
        // 270 s observed is less than a tenth of a 1 h period.
        let c = confidence(&p, Category::Processes, HOUR);
        assert_eq!((c.score, c.level), (1.0, ConfidenceLevel::Low));
    }

    #[test]
    fn stable_and_agreed_is_high_one_container_at_most_medium() {
        let mut p = ImageProfile::default();
        for w in 0..20 {
            push(&mut p, "c1", w, &[("process", "/app"), ("tcp_out", "443")]);
        }
        let c = confidence(&p, Category::Processes, HOUR);
        assert_eq!((c.stability, c.agreement, c.score), (1.0, 0.0, 0.7));
        assert_eq!(c.level, ConfidenceLevel::Medium);
        for w in 0..20 {
            push(&mut p, "c2", w, &[("process", "/app")]);
        }
        let c = confidence(&p, Category::Processes, HOUR);
        assert_eq!((c.score, c.level), (1.0, ConfidenceLevel::High));
        // tcp_out 443 only in c1: agreement 0 in network.
        let n = confidence(&p, Category::Network, HOUR);
        assert_eq!((n.agreement, n.score), (0.0, 0.7));
        // Nothing in syscalls, watched in two containers: stable and agreed.
        let s = confidence(&p, Category::Syscalls, HOUR);
        assert_eq!(s.score, 1.0);
    }

    #[test]
    fn new_items_keep_confidence_down_and_it_rises_as_behaviour_settles() {
        let mut p = ImageProfile::default();
        let key: Vec<String> = (0..40).map(|i| format!("/data/{i}")).collect();
        for w in 0..40 {
            // A new file every window.
            for c in ["c1", "c2"] {
                push(&mut p, c, w, &[("file_read", &key[w as usize])]);
            }
        }
        let churning = confidence(&p, Category::Files, HOUR);
        // Stable only for the last window out of 40.
        assert_eq!(churning.stability, 0.025);
        assert_eq!(churning.level, ConfidenceLevel::Low);
        for w in 40..200 {
            for c in ["c1", "c2"] {
                push(&mut p, c, w, &[("file_read", "/data/0")]);
            }
        }
        let settled = confidence(&p, Category::Files, HOUR);
        assert_eq!(settled.stability, 0.805); // 161 of 200 windows since the last new file
        assert_eq!(settled.level, ConfidenceLevel::High);
        assert!(settled.score > churning.score);
    }

    #[test]
    fn items_new_after_learning_do_not_lower_the_baseline_confidence() {
        let mut p = ImageProfile::default();
        for w in 0..130 {
            for c in ["c1", "c2"] {
                push(&mut p, c, w, &[("process", "/app")]);
            }
        }
        // Done learning at 1 h (window 120); a new process in window 125.
        push(&mut p, "c1", 125, &[("process", "/usr/bin/nc")]);
        let c = confidence(&p, Category::Processes, HOUR);
        assert_eq!(
            (c.stability, c.agreement, c.level),
            (1.0, 1.0, ConfidenceLevel::High)
        );
        // The same item while still learning (period 2 h) is profile growth.
        let learning = confidence(&p, Category::Processes, 2 * HOUR);
        assert!(learning.stability < 0.05, "{learning:?}");
    }
}
