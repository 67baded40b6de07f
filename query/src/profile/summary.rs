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

use super::{ImageProfile, WindowFacts};
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

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
