//! Profiles computed from what is stored: what the server does at start, so profile
//! state is always derived from stored data, never a flag a crash could leave
//! stuck.
//!
//! [`from_store`] merges the per-partition summaries (see [`super::summary`]) in
//! hour order; only live raw files that no readable summary covers (written before
//! summaries existed, or whose summary is unreadable) are aggregated from their
//! rows. Rows still in the WAL are added by the server as it replays them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::UInt64Type;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use tracing::warn;

use super::{ImageProfile, WindowFacts, summary};
use crate::Result;
use crate::catalog::{CatalogState, FileEntry, SummaryEntry};
use crate::store::{CommittedFiles, default_session_config, new_session};

/// What [`from_store`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    pub summaries: usize,
    /// Summaries left out because their image was reset after them.
    pub summaries_before_reset: usize,
    /// Raw files aggregated row by row (no readable summary covers them).
    pub raw_files: usize,
}

/// Every image's profile over the live files of `state`.
pub async fn from_store(
    store: Arc<dyn ObjectStore>,
    state: &CatalogState,
) -> Result<(HashMap<String, ImageProfile>, RebuildStats)> {
    let mut stats = RebuildStats::default();
    let mut entries: Vec<&SummaryEntry> = state.summaries.values().collect();
    entries.sort_by(|a, b| summary::merge_order(a).cmp(&summary::merge_order(b)));
    let fetched: Vec<(&SummaryEntry, Result<summary::SummaryFile>)> =
        futures::stream::iter(entries.into_iter().map(|e| {
            let store = store.clone();
            async move { (e, summary::read(store.as_ref(), &e.path).await) }
        }))
        .buffered(16)
        .collect()
        .await;
    let mut profiles: HashMap<String, ImageProfile> = HashMap::new();
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for (entry, file) in fetched {
        match file {
            Ok(file) => {
                covered.extend(entry.files.iter().map(String::as_str));
                if entry.first_window < state.profile_reset(&entry.image) {
                    // Summaries never straddle a reset: the reset moment is after
                    // every window stored before it, and later ones are summarised
                    // from the reset on.
                    stats.summaries_before_reset += 1;
                    // The reset profile exists, empty, under the image's name.
                    let p = profiles.entry(entry.image.clone()).or_default();
                    if p.windows == 0 {
                        p.image_name.clone_from(&file.profile.image_name);
                    }
                    continue;
                }
                profiles
                    .entry(entry.image.clone())
                    .or_default()
                    .merge(&file.profile);
                stats.summaries += 1;
            }
            Err(e) => warn!(
                summary = %entry.path, error = %e,
                "profile summary unreadable; aggregating its raw files instead"
            ),
        }
    }
    let raw: Vec<FileEntry> = state
        .files
        .values()
        .filter(|f| {
            crate::schema::StoredTable::PROFILE_INPUTS.contains(&f.table)
                && !covered.contains(f.path.as_str())
        })
        .cloned()
        .collect();
    if !raw.is_empty() {
        stats.raw_files = raw.len();
        let images: BTreeSet<&str> = raw.iter().map(|f| f.image.as_str()).collect();
        let reset: Vec<(&str, i64)> = images
            .iter()
            .map(|i| (*i, state.profile_reset(i)))
            .filter(|(_, at)| *at != i64::MIN)
            .collect();
        // A view of just those files.
        let files_only = CatalogState {
            files: raw.iter().map(|f| (f.path.clone(), f.clone())).collect(),
            ..Default::default()
        };
        let session = new_session(
            store,
            Arc::new(CommittedFiles(Arc::new(files_only))),
            default_session_config(),
            RuntimeEnvBuilder::new(),
        )?;
        // Images never reset in one pass; each reset image from its reset on.
        let never_reset = reset
            .iter()
            .map(|(i, _)| format!("image <> '{i}'"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut passes = vec![if never_reset.is_empty() {
            String::new()
        } else {
            format!("WHERE {never_reset}")
        }];
        passes.extend(
            reset.iter().map(|(i, at)| {
                format!("WHERE image = '{i}' AND time >= to_timestamp_micros({at})")
            }),
        );
        for filter in passes {
            for (image, p) in from_tables(&session, &filter).await? {
                profiles.entry(image).or_default().merge(&p);
            }
        }
    }
    Ok((profiles, stats))
}

/// Every image's profile from the rows of the `windows` and `fingerprints` tables
/// of `ctx` that `filter` (a `WHERE` clause, or empty) selects.
pub async fn from_tables(
    ctx: &SessionContext,
    filter: &str,
) -> Result<HashMap<String, ImageProfile>> {
    let windows_sql = format!(
        "SELECT image, image_name, node, container_id, time, window_end, dropped_events, \
         capture_paused, started_after_container FROM windows {filter}"
    );
    let items_sql = format!(
        "SELECT image, kind, key, container_id, min(time), max(window_end), \
         CAST(count(*) AS BIGINT UNSIGNED), CAST(sum(count) AS BIGINT UNSIGNED) \
         FROM fingerprints {filter} GROUP BY image, kind, key, container_id"
    );
    let mut profiles: HashMap<String, ImageProfile> = HashMap::new();
    let mut windows = ctx.sql(&windows_sql).await?.execute_stream().await?;
    while let Some(b) = windows.try_next().await? {
        let c = Columns(&b);
        let (image, name, node, container) = (c.str(0), c.str(1), c.str(2), c.str(3));
        let (start, end) = (c.ts(4), c.ts(5));
        let dropped = c.0.column(6).as_primitive::<UInt64Type>();
        let (paused, started_after) = (c.bool(7), c.bool(8));
        for r in 0..b.num_rows() {
            profiles
                .entry(image.value(r).to_string())
                .or_default()
                .add_window(
                    name.value(r),
                    node.value(r),
                    container.value(r),
                    (start.value(r), end.value(r)),
                    WindowFacts {
                        dropped_events: dropped.value(r),
                        capture_paused: paused.value(r),
                        started_after_container: started_after.value(r),
                    },
                );
        }
    }
    let mut items = ctx.sql(&items_sql).await?.execute_stream().await?;
    while let Some(b) = items.try_next().await? {
        let c = Columns(&b);
        let (image, kind, key, container) = (c.str(0), c.str(1), c.str(2), c.str(3));
        let (first, last) = (c.ts(4), c.ts(5));
        let windows = c.0.column(6).as_primitive::<UInt64Type>();
        let counts = c.0.column(7).as_primitive::<UInt64Type>();
        for r in 0..b.num_rows() {
            if let Some(p) = profiles.get_mut(image.value(r)) {
                p.add_item(
                    kind.value(r),
                    key.value(r),
                    container.value(r),
                    (first.value(r), last.value(r)),
                    windows.value(r),
                    counts.value(r),
                );
            }
        }
    }
    Ok(profiles)
}

struct Columns<'a>(&'a RecordBatch);

impl Columns<'_> {
    fn str(&self, i: usize) -> &StringArray {
        self.0.column(i).as_string::<i32>()
    }
    fn ts(&self, i: usize) -> &TimestampMicrosecondArray {
        self.0.column(i).as_primitive()
    }
    fn bool(&self, i: usize) -> &BooleanArray {
        self.0.column(i).as_boolean()
    }
}
