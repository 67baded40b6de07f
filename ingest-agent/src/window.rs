//! Per-cgroup aggregation of one window: the distinct items seen, with the kernel dedup hash
//! their counts are read under, the per-window cap, and the completeness facts. Pure data: the
//! capture loop feeds it, closes it, and turns it into fingerprints.

use std::collections::HashMap;

use imprint_proto::ingest_v1::{Completeness, Fingerprint, Item, ItemKind};

use crate::attribution::Container;

/// Items of one cgroup in one window.
#[derive(Debug, Default)]
pub struct CgroupWindow {
    items: HashMap<(ItemKind, String), u64>,
    /// Kernel dedup hashes and the items each one produced (an open gives the file and its
    /// directory): at close every item gets the hits counted under its hash.
    hashes: Vec<(u64, Vec<(ItemKind, String)>)>,
    /// Events lost for this cgroup: ring buffer full, path unreadable, cap reached.
    pub dropped: u64,
}

impl CgroupWindow {
    /// Records the items one kernel event produced; `hash` is 0 when the count is simply 1.
    /// Items beyond `cap` distinct ones are counted as dropped.
    pub fn add(&mut self, hash: u64, items: Vec<(ItemKind, String)>, cap: usize) {
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            if !self.items.contains_key(&item) && self.items.len() >= cap {
                self.dropped += 1;
                continue;
            }
            self.items.entry(item.clone()).or_insert(0);
            kept.push(item);
        }
        if !kept.is_empty() {
            self.hashes.push((hash, kept));
        }
    }

    /// Applies the hit counts: `hits(hash)` is how often the kernel saw the event under `hash`
    /// this window (at least once, since it was sent).
    pub fn count(&mut self, mut hits: impl FnMut(u64) -> u64) {
        for (hash, items) in std::mem::take(&mut self.hashes) {
            let n = if hash == 0 { 1 } else { hits(hash).max(1) };
            for item in items {
                if let Some(count) = self.items.get_mut(&item) {
                    *count += n;
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped == 0
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The fingerprint of this window for `container`. Items are sorted (kind, key) so the same
    /// behaviour always encodes the same way.
    pub fn into_fingerprint(
        self,
        node: &str,
        container: &Container,
        window: (i64, i64),
        capture_paused: bool,
        extra_dropped: u64,
    ) -> Fingerprint {
        let mut items: Vec<Item> = self
            .items
            .into_iter()
            .map(|((kind, key), count)| Item {
                kind: kind as i32,
                key,
                count,
            })
            .collect();
        items.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        Fingerprint {
            node: node.to_string(),
            container_id: container.id.clone(),
            image: container.image.clone(),
            image_name: container.image_name.clone(),
            window_start_unix_micros: window.0,
            window_end_unix_micros: window.1,
            items,
            completeness: Some(Completeness {
                dropped_events: self.dropped + extra_dropped,
                capture_paused,
                started_after_container: container.started_before_agent,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            id: "c1".into(),
            image: format!("sha256:{}", "a".repeat(64)),
            image_name: "web:1".into(),
            started_before_agent: true,
            source: "static",
        }
    }

    #[test]
    fn counts_come_from_the_kernel_hits_and_items_are_sorted() {
        let mut window = CgroupWindow::default();
        window.add(
            7,
            vec![
                (ItemKind::FileRead, "/etc/hosts".into()),
                (ItemKind::DirRead, "/etc".into()),
            ],
            100,
        );
        window.add(
            8,
            vec![
                (ItemKind::FileRead, "/etc/passwd".into()),
                (ItemKind::DirRead, "/etc".into()),
            ],
            100,
        );
        window.add(0, vec![(ItemKind::Syscall, "read".into())], 100);
        window.count(|hash| if hash == 7 { 5 } else { 2 });
        let fp = window.into_fingerprint("n1", &container(), (10, 20), false, 3);
        let got: Vec<(i32, &str, u64)> = fp
            .items
            .iter()
            .map(|i| (i.kind, i.key.as_str(), i.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (ItemKind::FileRead as i32, "/etc/hosts", 5),
                (ItemKind::FileRead as i32, "/etc/passwd", 2),
                (ItemKind::DirRead as i32, "/etc", 7),
                (ItemKind::Syscall as i32, "read", 1),
            ]
        );
        let completeness = fp.completeness.expect("set");
        assert_eq!(completeness.dropped_events, 3);
        assert!(completeness.started_after_container);
        assert_eq!(
            (fp.window_start_unix_micros, fp.window_end_unix_micros),
            (10, 20)
        );
    }

    #[test]
    fn the_cap_counts_what_it_refuses() {
        let mut window = CgroupWindow::default();
        for i in 0..5 {
            window.add(0, vec![(ItemKind::FileRead, format!("/f{i}"))], 3);
        }
        // An item already in the window is still counted.
        window.add(0, vec![(ItemKind::FileRead, "/f0".into())], 3);
        window.count(|_| 1);
        assert_eq!(window.len(), 3);
        assert_eq!(window.dropped, 2);
        let fp = window.into_fingerprint("n1", &container(), (0, 1), false, 0);
        assert_eq!(
            fp.items.iter().find(|i| i.key == "/f0").map(|i| i.count),
            Some(2)
        );
    }
}
