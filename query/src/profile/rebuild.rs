//! Profiles computed from the stored tables: what the server does at start (over
//! its files and the replayed write buffer) so profile state is always derived
//! from stored data, never a flag a crash could leave stuck.
//!
//! Cost: one pass over `windows` and one aggregate over `fingerprints`. Per-
//! partition profile summaries (so the start reads summaries, not every row) are
//! the next step; see `docs/profiles.md`.

use std::collections::HashMap;

use arrow::array::{AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::UInt64Type;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::{ImageProfile, WindowFacts};
use crate::Result;

const WINDOWS_SQL: &str = "SELECT image, image_name, node, container_id, time, window_end, \
    dropped_events, capture_paused, started_after_container FROM windows";
const ITEMS_SQL: &str = "SELECT image, kind, key, container_id, min(time), max(window_end), \
    CAST(count(*) AS BIGINT UNSIGNED), CAST(sum(count) AS BIGINT UNSIGNED) \
    FROM fingerprints GROUP BY image, kind, key, container_id";

/// Every image's profile from the `windows` and `fingerprints` tables of `ctx`.
pub async fn from_tables(ctx: &SessionContext) -> Result<HashMap<String, ImageProfile>> {
    let mut profiles: HashMap<String, ImageProfile> = HashMap::new();
    let mut windows = ctx.sql(WINDOWS_SQL).await?.execute_stream().await?;
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
    let mut items = ctx.sql(ITEMS_SQL).await?.execute_stream().await?;
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
