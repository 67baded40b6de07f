//! Image profiles: every container of one image digest, on every node, merged
//! into one profile; its learning state, completeness and per-category
//! confidence. Pure logic over [`ImageProfile`], which the server keeps current as
//! fingerprints arrive; the rules are documented with worked examples in
//! `docs/profiles.md`.

mod confidence;
mod observed;
pub mod rebuild;
pub mod summary;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

pub use confidence::{Confidence, ConfidenceLevel, MIN_WINDOWS, confidence};
pub use observed::ObservedTime;

/// The four categories a profile is judged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Network,
    Processes,
    Files,
    Syscalls,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Network,
        Category::Processes,
        Category::Files,
        Category::Syscalls,
    ];

    /// The category of an item kind (`None` for an unknown kind).
    pub fn of_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "tcp_in" | "tcp_out" | "udp_in" | "udp_out" => Category::Network,
            "process" => Category::Processes,
            "file_read" | "file_write" | "dir_read" | "dir_write" => Category::Files,
            "syscall" => Category::Syscalls,
            _ => return None,
        })
    }

    /// The item kinds of the category (the inverse of [`of_kind`](Self::of_kind)).
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            Category::Network => &["tcp_in", "tcp_out", "udp_in", "udp_out"],
            Category::Processes => &["process"],
            Category::Files => &["file_read", "file_write", "dir_read", "dir_write"],
            Category::Syscalls => &["syscall"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Category::Network => "network",
            Category::Processes => "processes",
            Category::Files => "files",
            Category::Syscalls => "syscalls",
        }
    }
}

/// One item (kind, key) of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStats {
    /// Start of the first window that had it (µs).
    pub first_seen: i64,
    /// End of the last window that had it (µs).
    pub last_seen: i64,
    /// Fingerprints (container × window) that had it.
    pub windows: u64,
    /// Sum of its counts.
    pub count: u64,
    /// Which containers had it (ids into [`ImageProfile`]'s container list).
    pub containers: BTreeSet<u32>,
}

/// The completeness facts of one fingerprint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowFacts {
    pub dropped_events: u64,
    pub capture_paused: bool,
    pub started_after_container: bool,
}

/// Most distinct items one image profile holds (`--max-profile-items`); an item first seen
/// past it is counted in [`Completeness::items_capped`], not stored, so one container that
/// opens millions of random paths cannot grow the server's memory without end. Process-wide:
/// the server sets it once at start.
pub static MAX_PROFILE_ITEMS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_PROFILE_ITEMS);
pub const DEFAULT_MAX_PROFILE_ITEMS: usize = 200_000;

/// Why a profile is partial: how many fingerprints had each problem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Completeness {
    pub windows_with_dropped_events: u64,
    pub windows_capture_paused: u64,
    pub windows_started_after_container: u64,
    /// Item observations not stored because the profile held `MAX_PROFILE_ITEMS` items.
    pub items_capped: u64,
}

impl Completeness {
    pub fn is_complete(&self) -> bool {
        self.reasons().is_empty()
    }

    /// `dropped_events`, `capture_paused`, `started_after_container`, as applies.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.windows_with_dropped_events > 0 {
            r.push("dropped_events");
        }
        if self.windows_capture_paused > 0 {
            r.push("capture_paused");
        }
        if self.windows_started_after_container > 0 {
            r.push("started_after_container");
        }
        if self.items_capped > 0 {
            r.push("item_cap");
        }
        r
    }
}

/// Everything known about one image's behaviour since its profile (re)started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProfile {
    pub image_name: String,
    pub observed: ObservedTime,
    /// Fingerprints seen.
    pub windows: u64,
    /// Container ids, indexed by the ids in [`ItemStats::containers`].
    pub containers: Vec<String>,
    /// The node of each container (same index as `containers`).
    pub container_nodes: Vec<String>,
    #[serde(skip)]
    container_ids: HashMap<String, u32>,
    pub nodes: BTreeSet<String>,
    /// Items by kind, then key (nested so lookups by `&str` need no allocation).
    pub items: BTreeMap<String, BTreeMap<String, ItemStats>>,
    pub completeness: Completeness,
}

impl ImageProfile {
    fn container_id(&mut self, container: &str) -> u32 {
        if self.container_ids.len() != self.containers.len() {
            // Rebuilt after deserialising.
            self.container_ids = self
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i as u32))
                .collect();
        }
        if let Some(&id) = self.container_ids.get(container) {
            return id;
        }
        let id = self.containers.len() as u32;
        self.containers.push(container.to_string());
        self.container_nodes.push(String::new());
        self.container_ids.insert(container.to_string(), id);
        id
    }

    /// Adds one fingerprint: a window of one container and its items.
    pub fn apply<'a>(
        &mut self,
        image_name: &str,
        node: &str,
        container: &str,
        window: (i64, i64),
        facts: WindowFacts,
        items: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) {
        self.apply_watching(image_name, node, container, window, facts, |_| None, items);
    }

    /// [`apply`](Self::apply), returning the positions (in `items`) of the items
    /// first seen at or after `since` — which is asked once the window is added,
    /// so it can depend on the profile including it (e.g. its `learned_at`). This
    /// is how policies find items outside the baseline without a second lookup.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_watching<'a>(
        &mut self,
        image_name: &str,
        node: &str,
        container: &str,
        window: (i64, i64),
        facts: WindowFacts,
        since: impl FnOnce(&ImageProfile) -> Option<i64>,
        items: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) -> Vec<usize> {
        self.add_window(image_name, node, container, window, facts);
        let since = since(self).unwrap_or(i64::MAX);
        let mut outside = Vec::new();
        for (i, (kind, key, count)) in items.into_iter().enumerate() {
            if self.add_item(kind, key, container, window, 1, count) >= since {
                outside.push(i);
            }
        }
        outside
    }

    /// Adds the window of one fingerprint (a row of the `windows` table).
    pub fn add_window(
        &mut self,
        image_name: &str,
        node: &str,
        container: &str,
        (start, end): (i64, i64),
        facts: WindowFacts,
    ) {
        if self.image_name != image_name && self.observed.last().is_none_or(|l| end >= l) {
            // The latest name seen is the label (a retag keeps the profile).
            self.image_name = image_name.to_string();
        }
        self.observed.insert(start, end);
        self.windows += 1;
        if !self.nodes.contains(node) {
            self.nodes.insert(node.to_string());
        }
        let c = self.container_id(container) as usize;
        if self.container_nodes[c] != node {
            self.container_nodes[c] = node.to_string();
        }
        if facts.dropped_events > 0 {
            self.completeness.windows_with_dropped_events += 1;
        }
        if facts.capture_paused {
            self.completeness.windows_capture_paused += 1;
        }
        if facts.started_after_container {
            self.completeness.windows_started_after_container += 1;
        }
    }

    /// Adds an item seen by `container` in `windows` fingerprints spanning
    /// `(first_seen, last_seen)` with a total `count`: one fingerprint's item, or
    /// a summary of many. Returns the item's `first_seen`.
    ///
    /// A new item past [`MAX_PROFILE_ITEMS`] is counted, not stored; its `first_seen` is
    /// still returned, so policies see it as new.
    pub fn add_item(
        &mut self,
        kind: &str,
        key: &str,
        container: &str,
        window: (i64, i64),
        windows: u64,
        count: u64,
    ) -> i64 {
        let cap = MAX_PROFILE_ITEMS.load(Ordering::Relaxed);
        self.add_item_within(cap, kind, key, container, window, windows, count)
    }

    /// Distinct items held, over all kinds.
    pub fn item_count(&self) -> usize {
        self.items.values().map(BTreeMap::len).sum()
    }

    #[allow(clippy::too_many_arguments)]
    fn add_item_within(
        &mut self,
        cap: usize,
        kind: &str,
        key: &str,
        container: &str,
        (first_seen, last_seen): (i64, i64),
        windows: u64,
        count: u64,
    ) -> i64 {
        let known = self.items.get(kind).is_some_and(|k| k.contains_key(key));
        if !known && self.item_count() >= cap {
            self.completeness.items_capped += windows;
            return first_seen;
        }
        let c = self.container_id(container);
        if !self.items.contains_key(kind) {
            self.items.insert(kind.to_string(), BTreeMap::new());
        }
        let of_kind = self.items.get_mut(kind).expect("inserted above");
        let stats = match of_kind.get_mut(key) {
            Some(s) => s,
            None => of_kind.entry(key.to_string()).or_insert_with(|| ItemStats {
                first_seen,
                last_seen,
                ..Default::default()
            }),
        };
        stats.first_seen = stats.first_seen.min(first_seen);
        stats.last_seen = stats.last_seen.max(last_seen);
        stats.windows += windows;
        stats.count += count;
        stats.containers.insert(c);
        stats.first_seen
    }

    /// Adds everything in `other` (e.g. the summary of another partition). Every
    /// aggregate merges exactly: the result is the profile of both sets of rows.
    pub fn merge(&mut self, other: &ImageProfile) {
        let later = other.observed.last() >= self.observed.last();
        if !other.image_name.is_empty() && (self.image_name.is_empty() || later) {
            self.image_name.clone_from(&other.image_name);
        }
        for &(s, e) in other.observed.intervals() {
            self.observed.insert(s, e);
        }
        self.windows += other.windows;
        self.nodes.extend(other.nodes.iter().cloned());
        let ids: Vec<u32> = other
            .containers
            .iter()
            .zip(&other.container_nodes)
            .map(|(c, node)| {
                let id = self.container_id(c);
                if !node.is_empty() && (later || self.container_nodes[id as usize].is_empty()) {
                    self.container_nodes[id as usize].clone_from(node);
                }
                id
            })
            .collect();
        let cap = MAX_PROFILE_ITEMS.load(Ordering::Relaxed);
        let mut held = self.item_count();
        let mut capped = 0;
        for (kind, keys) in &other.items {
            let of_kind = self.items.entry(kind.clone()).or_default();
            for (key, o) in keys {
                if !of_kind.contains_key(key) {
                    if held >= cap {
                        capped += o.windows;
                        continue;
                    }
                    held += 1;
                }
                let s = of_kind.entry(key.clone()).or_insert_with(|| ItemStats {
                    first_seen: o.first_seen,
                    last_seen: o.last_seen,
                    ..Default::default()
                });
                s.first_seen = s.first_seen.min(o.first_seen);
                s.last_seen = s.last_seen.max(o.last_seen);
                s.windows += o.windows;
                s.count += o.count;
                s.containers
                    .extend(o.containers.iter().map(|&c| ids[c as usize]));
            }
        }
        let (c, o) = (&mut self.completeness, &other.completeness);
        c.windows_with_dropped_events += o.windows_with_dropped_events;
        c.windows_capture_paused += o.windows_capture_paused;
        c.windows_started_after_container += o.windows_started_after_container;
        c.items_capped += o.items_capped + capped;
    }

    /// Every item as (kind, key, stats).
    pub fn iter_items(&self) -> impl Iterator<Item = (&str, &str, &ItemStats)> {
        self.items.iter().flat_map(|(kind, keys)| {
            keys.iter()
                .map(move |(k, s)| (kind.as_str(), k.as_str(), s))
        })
    }

    /// Distinct nodes of the containers that saw an item.
    pub fn item_nodes(&self, stats: &ItemStats) -> usize {
        let nodes: BTreeSet<&str> = stats
            .containers
            .iter()
            .filter_map(|&c| self.container_nodes.get(c as usize))
            .map(String::as_str)
            .collect();
        nodes.len()
    }

    pub fn item(&self, kind: &str, key: &str) -> Option<&ItemStats> {
        self.items.get(kind)?.get(key)
    }

    /// When the profile was done learning for a learning period (µs), if it is:
    /// the moment its observed time reached the period.
    pub fn learned_at(&self, learning_period_micros: i64) -> Option<i64> {
        self.observed.moment_reaching(learning_period_micros.max(0))
    }

    /// The learning state for a learning period (µs).
    pub fn status(&self, learning_period_micros: i64) -> ProfileStatus {
        let learned_at = self.learned_at(learning_period_micros);
        let observed = self.observed.total();
        let confidence = Category::ALL.map(|c| (c, confidence(self, c, learning_period_micros)));
        ProfileStatus {
            image_name: self.image_name.clone(),
            done_learning: learned_at.is_some(),
            first_seen: self.observed.first(),
            last_seen: self.observed.last(),
            learned_at,
            observed_seconds: observed as f64 / 1e6,
            containers: self.containers.len() as u64,
            nodes: self.nodes.len() as u64,
            completeness: self.completeness,
            confidence,
        }
    }

    /// Whether an item first seen at `first_seen` is part of the learned baseline:
    /// everything is while learning; afterwards only what was seen before `learned_at`.
    pub fn in_baseline(first_seen: i64, learned_at: Option<i64>) -> bool {
        learned_at.is_none_or(|at| first_seen < at)
    }
}

/// What `profile_status` shows for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileStatus {
    pub image_name: String,
    pub done_learning: bool,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub learned_at: Option<i64>,
    pub observed_seconds: f64,
    pub containers: u64,
    pub nodes: u64,
    pub completeness: Completeness,
    pub confidence: [(Category, Confidence); 4],
}

impl ProfileStatus {
    pub fn state(&self) -> &'static str {
        if self.done_learning {
            "done_learning"
        } else {
            "learning"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn window(p: &mut ImageProfile, container: &str, node: &str, w: i64, items: &[(&str, &str)]) {
        p.apply(
            "app:1",
            node,
            container,
            (w * 30 * S, (w + 1) * 30 * S),
            WindowFacts::default(),
            items.iter().map(|(k, v)| (*k, *v, 1)),
        );
    }

    #[test]
    fn parallel_containers_do_not_add_observed_time_and_gaps_do_not_count() {
        let mut p = ImageProfile::default();
        for w in 0..4 {
            window(&mut p, "c1", "n1", w, &[("process", "/app")]);
            window(&mut p, "c2", "n2", w, &[("process", "/app")]);
        }
        window(&mut p, "c1", "n1", 10, &[("process", "/app")]);
        let s = p.status(3600 * S);
        assert_eq!(s.observed_seconds, 150.0);
        assert_eq!((s.containers, s.nodes), (2, 2));
        assert!(!s.done_learning);
        let item = p.item("process", "/app").unwrap();
        assert_eq!((item.windows, item.containers.len()), (9, 2));
    }

    #[test]
    fn done_learning_exactly_when_observed_time_reaches_the_period() {
        let mut p = ImageProfile::default();
        for w in 0..3 {
            window(&mut p, "c1", "n1", w, &[("process", "/app")]);
        }
        assert!(!p.status(91 * S).done_learning);
        let s = p.status(90 * S);
        assert!(s.done_learning);
        assert_eq!(s.learned_at, Some(90 * S));
        // With a gap, the moment moves past it.
        window(&mut p, "c1", "n1", 5, &[("process", "/new")]);
        let s = p.status(100 * S);
        assert_eq!(s.learned_at, Some(150 * S + 10 * S));
        let new = p.item("process", "/new").unwrap();
        assert!(ImageProfile::in_baseline(new.first_seen, s.learned_at));
        assert!(!ImageProfile::in_baseline(
            new.first_seen,
            p.status(90 * S).learned_at
        ));
    }

    #[test]
    fn completeness_names_its_reasons() {
        let mut p = ImageProfile::default();
        window(&mut p, "c1", "n1", 0, &[]);
        assert!(p.completeness.is_complete());
        p.apply(
            "app:1",
            "n1",
            "c1",
            (30 * S, 60 * S),
            WindowFacts {
                dropped_events: 3,
                capture_paused: false,
                started_after_container: true,
            },
            [],
        );
        assert_eq!(
            p.completeness.reasons(),
            vec!["dropped_events", "started_after_container"]
        );
    }

    /// Past the item cap a new item is counted, not stored; known items keep counting; the
    /// profile says `item_cap`; merging two profiles keeps the cap.
    #[test]
    fn the_item_cap_bounds_a_profile_and_says_so() {
        let mut p = ImageProfile::default();
        window(&mut p, "c1", "n1", 0, &[]);
        for i in 0..5 {
            p.add_item_within(3, "file_read", &format!("/f{i}"), "c1", (0, S), 1, 1);
        }
        assert_eq!(p.item_count(), 3);
        assert_eq!(p.completeness.items_capped, 2);
        p.add_item_within(3, "file_read", "/f0", "c1", (0, S), 1, 1);
        assert_eq!(p.items["file_read"]["/f0"].windows, 2);
        assert_eq!(p.completeness.reasons(), vec!["item_cap"]);
        let mut merged = ImageProfile::default();
        merged.merge(&p);
        assert_eq!(merged.completeness.items_capped, 2);
    }

    #[test]
    fn category_kinds_are_the_inverse_of_of_kind() {
        for c in Category::ALL {
            for kind in c.kinds() {
                assert_eq!(Category::of_kind(kind), Some(c));
            }
        }
        let all: usize = Category::ALL.iter().map(|c| c.kinds().len()).sum();
        assert_eq!(all, imprint_proto::ingest_v1::ItemKind::ALL.len());
    }

    #[test]
    fn the_latest_image_name_is_the_label() {
        let mut p = ImageProfile::default();
        window(&mut p, "c1", "n1", 1, &[]);
        p.apply(
            "app:2",
            "n1",
            "c2",
            (60 * S, 90 * S),
            WindowFacts::default(),
            [],
        );
        p.apply("app:0", "n1", "c3", (0, 30 * S), WindowFacts::default(), []);
        assert_eq!(p.image_name, "app:2");
    }
}
