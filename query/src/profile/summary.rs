//! Per-partition profile summaries: one image's profile over the rows of one
//! persisted partition, written next to its Parquet files in the same catalog
//! commit (`profiles/image=…/date=…/hour=…/<uuid>.json.zst`).
//!
//! The server starts by merging summaries instead of re-reading every raw row, so
//! start-up costs in proportion to profiles × partitions, not to fingerprints; and
//! retention may delete the raw files without erasing any profile. A summary is
//! an [`ImageProfile`] — every aggregate in it (first/last seen, windows, counts,
//! container sets, observed intervals, completeness) merges exactly, so merging
//! the summaries of all partitions gives the profile the live server kept.
//!
//! Format: zstd-compressed JSON of [`SummaryFile`], versioned.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{ImageProfile, WindowFacts};
use crate::catalog::{CatalogState, SummaryEntry};
use crate::schema::{StoredTable, conform};
use crate::{Error, Result};

/// Bumped when the format changes incompatibly; older summaries are then
/// recomputed from their raw files.
pub const SUMMARY_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct SummaryFile {
    pub version: u32,
    pub image: String,
    /// Start of the partition's hour (µs).
    pub hour: i64,
    pub profile: ImageProfile,
}

pub fn encode(image: &str, hour: i64, profile: &ImageProfile) -> Result<Vec<u8>> {
    let file = SummaryFile {
        version: SUMMARY_VERSION,
        image: image.to_string(),
        hour,
        profile: profile.clone(),
    };
    let json = serde_json::to_vec(&file).map_err(|e| Error::Summary(e.to_string()))?;
    zstd::bulk::compress(&json, 3).map_err(|e| Error::Summary(format!("compressing: {e}")))
}

/// Reads and decodes the summary object at `path`.
pub async fn read(store: &dyn object_store::ObjectStore, path: &str) -> Result<SummaryFile> {
    use object_store::ObjectStoreExt;
    let bytes = store.get(&path.into()).await?.bytes().await?;
    decode(&bytes)
}

pub fn decode(bytes: &[u8]) -> Result<SummaryFile> {
    // A summary decompresses to well under 1 GiB (it is bounded by the items of
    // one partition); the cap only guards against a corrupt length.
    let json = zstd::bulk::decompress(bytes, 1 << 30)
        .map_err(|e| Error::Summary(format!("decompressing: {e}")))?;
    let file: SummaryFile =
        serde_json::from_slice(&json).map_err(|e| Error::Summary(e.to_string()))?;
    if file.version != SUMMARY_VERSION {
        return Err(Error::Summary(format!(
            "summary version {} (this server reads {SUMMARY_VERSION})",
            file.version
        )));
    }
    Ok(file)
}

/// The profile of a partition's rows (`windows` and `fingerprints` batches, SQL
/// or buffer schema), counting only windows that start at or after `since` (the
/// image's last profile reset).
pub fn from_rows(
    windows: &[RecordBatch],
    fingerprints: &[RecordBatch],
    since: i64,
) -> Result<ImageProfile> {
    let mut profile = ImageProfile::default();
    let mut before_reset_end = i64::MIN;
    for b in windows {
        let b = conform(b, &StoredTable::Windows.schema())?;
        let col = |name: &str| b.column_by_name(name).expect("windows schema");
        let start = col("time").as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let end = col("window_end").as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let (name, node, container) = (
            col("image_name").as_string::<i32>(),
            col("node").as_string::<i32>(),
            col("container_id").as_string::<i32>(),
        );
        let dropped = col("dropped_events").as_primitive::<UInt64Type>();
        let paused = col("capture_paused").as_boolean();
        let late = col("started_after_container").as_boolean();
        for r in 0..b.num_rows() {
            if start.value(r) < since {
                // Not part of the profile, but its name labels the reset profile
                // until a window after the reset brings one.
                if profile.windows == 0 && end.value(r) >= before_reset_end {
                    before_reset_end = end.value(r);
                    profile.image_name = name.value(r).to_string();
                }
                continue;
            }
            profile.add_window(
                name.value(r),
                node.value(r),
                container.value(r),
                (start.value(r), end.value(r)),
                WindowFacts {
                    dropped_events: dropped.value(r),
                    capture_paused: paused.value(r),
                    started_after_container: late.value(r),
                },
            );
        }
    }
    for b in fingerprints {
        let b = conform(b, &StoredTable::Fingerprints.schema())?;
        let col = |name: &str| b.column_by_name(name).expect("fingerprints schema");
        let start = col("time").as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let end = col("window_end").as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let (container, kind, key) = (
            col("container_id").as_string::<i32>(),
            col("kind").as_string::<i32>(),
            col("key").as_string::<i32>(),
        );
        let count = col("count").as_primitive::<UInt64Type>();
        for r in 0..b.num_rows() {
            if start.value(r) < since || count.is_null(r) {
                continue;
            }
            profile.add_item(
                kind.value(r),
                key.value(r),
                container.value(r),
                (start.value(r), end.value(r)),
                1,
                count.value(r),
            );
        }
    }
    Ok(profile)
}

/// Summaries to merge into one: every persist writes a summary per partition, so
/// an image gathers one per hour and persist; merging them (exactly, as start-up
/// would) keeps start-up time and the catalog in proportion to images, not time.
#[derive(Debug, PartialEq)]
pub struct Rollup<'a> {
    pub image: String,
    /// In the order start-up merges them (hour, first window, path).
    pub parts: Vec<&'a SummaryEntry>,
}

impl Rollup<'_> {
    /// The entry of the merged summary stored at `path` (`bytes` long): it covers
    /// what its parts covered, less the raw files retention has deleted since.
    pub fn entry(&self, state: &CatalogState, path: String, bytes: u64) -> SummaryEntry {
        let mut files: Vec<String> = self
            .parts
            .iter()
            .flat_map(|p| p.files.iter())
            .filter(|f| state.files.contains_key(*f))
            .cloned()
            .collect();
        files.sort();
        files.dedup();
        SummaryEntry {
            path,
            image: self.image.clone(),
            hour: self.hour(),
            first_window: self
                .parts
                .iter()
                .map(|p| p.first_window)
                .min()
                .unwrap_or(i64::MIN),
            last_window: self
                .parts
                .iter()
                .map(|p| p.last_window)
                .max()
                .unwrap_or(i64::MIN),
            files,
            bytes,
        }
    }

    /// The partition the merged summary is filed under: its parts' latest hour.
    pub fn hour(&self) -> i64 {
        self.parts.iter().map(|p| p.hour).max().unwrap_or(0)
    }
}

/// The order summaries are merged in, at start-up and in a rollup: by hour, then
/// first window, then path (for a total order).
pub fn merge_order(s: &SummaryEntry) -> (i64, i64, &str) {
    (s.hour, s.first_window, &s.path)
}

/// The rollups due in `state`: per image, the summaries from its last reset on,
/// and apart from them those before it (start-up skips those, but their file
/// lists still tell retention which raw files a summary covers), each group when
/// it has at least `min_parts` summaries.
pub fn plan_rollups(state: &CatalogState, min_parts: usize) -> Vec<Rollup<'_>> {
    let mut groups: BTreeMap<(&str, bool), Vec<&SummaryEntry>> = BTreeMap::new();
    for s in state.summaries.values() {
        let before_reset = s.first_window < state.profile_reset(&s.image);
        groups
            .entry((s.image.as_str(), before_reset))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .filter(|(_, parts)| parts.len() >= min_parts.max(2))
        .map(|((image, _), mut parts)| {
            parts.sort_by(|a, b| merge_order(a).cmp(&merge_order(b)));
            Rollup {
                image: image.to_string(),
                parts,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn entry(image: &str, hour: i64, first: i64, files: &[&str]) -> SummaryEntry {
        SummaryEntry {
            path: format!("profiles/{image}/{hour}-{first}.json.zst"),
            image: image.into(),
            hour,
            first_window: first,
            last_window: first + 30 * S,
            files: files.iter().map(|f| f.to_string()).collect(),
            bytes: 10,
        }
    }

    #[test]
    fn rollups_group_by_image_and_reset_and_keep_live_files() {
        let mut state = CatalogState::default();
        let h = 3600 * S;
        for (image, hour, first, files) in [
            ("a", 0, 0, vec!["f1", "w1"]),
            ("a", h, h, vec!["f2", "w2"]),
            ("a", 2 * h, 2 * h, vec!["f3"]),
            ("b", 0, 10, vec!["f4"]),
            ("c", 0, 0, vec!["f5"]),
            ("c", h, h, vec!["f6"]),
            ("c", 5 * h, 5 * h, vec!["f7"]),
            ("c", 6 * h, 6 * h, vec!["f8"]),
        ] {
            let e = entry(image, hour, first, &files);
            state.summaries.insert(e.path.clone(), e);
        }
        // c was reset at 4 h: two summaries before, two after.
        state.profile_resets.insert("c".into(), 4 * h);
        // Retention deleted f1 (and w1 was never a live file here).
        for f in ["f2", "w2", "f3", "f5", "f6", "f7", "f8"] {
            state.files.insert(f.into(), live_file(f));
        }
        let plans = plan_rollups(&state, 2);
        let got: Vec<(&str, Vec<i64>)> = plans
            .iter()
            .map(|r| {
                (
                    r.image.as_str(),
                    r.parts.iter().map(|p| p.hour / h).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("a", vec![0, 1, 2]), ("c", vec![5, 6]), ("c", vec![0, 1])],
            "b has one summary; c's two eras apart"
        );
        let a = plans[0].entry(&state, "profiles/a/rollup.json.zst".into(), 99);
        assert_eq!(a.files, vec!["f2", "f3", "w2"]);
        assert_eq!(
            (a.hour, a.first_window, a.last_window),
            (2 * h, 0, 2 * h + 30 * S)
        );
        // The era before c's reset stays before it; the one after stays after.
        let after = plans[1].entry(&state, "x".into(), 1);
        let before = plans[2].entry(&state, "y".into(), 1);
        assert!(after.first_window >= state.profile_reset("c"));
        assert!(before.first_window < state.profile_reset("c"));
        assert!(plan_rollups(&state, 3).iter().all(|r| r.image == "a"));
    }

    fn live_file(path: &str) -> crate::catalog::FileEntry {
        crate::catalog::FileEntry {
            path: path.into(),
            table: StoredTable::Fingerprints,
            image: String::new(),
            hour: 0,
            min_time: 0,
            max_time: 0,
            rows: 1,
            bytes: 1,
        }
    }

    fn window(p: &mut ImageProfile, c: &str, node: &str, w: i64, items: &[&str]) {
        p.apply(
            "app:1",
            node,
            c,
            (w * 30 * S, (w + 1) * 30 * S),
            WindowFacts {
                dropped_events: u64::from(w == 3),
                ..Default::default()
            },
            items.iter().map(|k| ("process", *k, 2)),
        );
    }

    #[test]
    fn merged_summaries_equal_the_profile_of_all_rows() {
        let (mut whole, mut a, mut b) = Default::default();
        let all = |p: &mut ImageProfile, w: i64| {
            window(p, "c1", "n1", w, &["/app", "/sh"]);
            window(p, "c2", "n2", w, &["/app"]);
            if w > 5 {
                window(p, "c3", "n1", w, &["/app", &format!("/t{}", w % 3)]);
            }
        };
        for w in 0..10 {
            all(&mut whole, w);
            // Partitions need not be contiguous: interleave them.
            all(if w % 2 == 0 { &mut a } else { &mut b }, w);
        }
        let mut merged = ImageProfile::default();
        for part in [&a, &b] {
            let bytes = encode("sha256:x", 0, part).unwrap();
            merged.merge(&decode(&bytes).unwrap().profile);
        }
        assert_eq!(merged.status(120 * S), whole.status(120 * S));
        let items = |p: &ImageProfile| -> Vec<(String, String, ItemView)> {
            p.iter_items()
                .map(|(k, v, s)| (k.into(), v.into(), ItemView::of(p, s)))
                .collect()
        };
        assert_eq!(items(&merged), items(&whole));
        assert_eq!(merged.windows, 2 * 10 + 4);
    }

    /// An item as the tables show it (container ids differ between profiles).
    #[derive(Debug, PartialEq)]
    struct ItemView(i64, i64, u64, u64, Vec<String>, usize);

    impl ItemView {
        fn of(p: &ImageProfile, s: &super::super::ItemStats) -> Self {
            let mut c: Vec<String> = s
                .containers
                .iter()
                .map(|&i| p.containers[i as usize].clone())
                .collect();
            c.sort();
            ItemView(
                s.first_seen,
                s.last_seen,
                s.windows,
                s.count,
                c,
                p.item_nodes(s),
            )
        }
    }

    #[test]
    fn a_corrupt_or_foreign_summary_is_an_error() {
        assert!(decode(b"not zstd").is_err());
        let json = br#"{"version":99,"image":"x","hour":0,"profile":{}}"#;
        let bytes = zstd::bulk::compress(json, 3).unwrap();
        let e = decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("summary version 99"), "{e}");
    }
}
