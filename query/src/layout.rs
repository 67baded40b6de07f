//! Where things live in the object store.
//!
//! ```text
//! <root>/fingerprints/image=sha256_<hex>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet
//! <root>/windows/image=sha256_<hex>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet
//! <root>/profiles/image=sha256_<hex>/date=YYYY-MM-DD/hour=HH/<uuid>.json.zst
//! <root>/catalog/log/<seq, 20 digits>.json
//! <root>/catalog/checkpoints/<seq, 20 digits>.json
//! ```
//!
//! The digest's `:` is written as `_` so the paths are safe on every filesystem and
//! tool (a `:` is a drive separator on Windows and needs escaping in many URLs).

use chrono::{DateTime, Utc};
use object_store::path::Path;

use crate::schema::StoredTable;

/// Microseconds in one hour: the width of a partition.
pub const HOUR_MICROS: i64 = 3_600_000_000;

/// Start of the hour that contains `micros` (floor, also for times before 1970).
pub fn hour_start(micros: i64) -> i64 {
    micros.div_euclid(HOUR_MICROS) * HOUR_MICROS
}

/// A digest as written in a path: `sha256:ab…` → `sha256_ab…`.
pub fn path_safe_digest(digest: &str) -> String {
    digest.replacen(':', "_", 1)
}

/// The inverse of [`path_safe_digest`].
pub fn digest_from_path(segment: &str) -> String {
    segment.replacen('_', ":", 1)
}

/// One partition of a stored table: one image, one hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub image: String,
    /// Start of the hour, microseconds since the epoch.
    pub hour: i64,
}

impl PartitionKey {
    pub fn new(image: impl Into<String>, time_micros: i64) -> Self {
        Self {
            image: image.into(),
            hour: hour_start(time_micros),
        }
    }

    /// Stable text form, used as a key in the catalog: `sha256:…@<hour micros>`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.image, self.hour)
    }

    /// The hive-style directory of this partition for `table`.
    pub fn dir(&self, table: StoredTable) -> String {
        self.dir_under(table.name())
    }

    fn dir_under(&self, top: &str) -> String {
        let t = DateTime::<Utc>::from_timestamp_micros(self.hour).unwrap_or_default();
        format!(
            "{top}/image={}/date={}/hour={}",
            path_safe_digest(&self.image),
            t.format("%Y-%m-%d"),
            t.format("%H")
        )
    }

    /// A new, unique path for a profile summary of this partition.
    pub fn new_summary_path(&self, file_id: &str) -> Path {
        Path::from(format!(
            "{}/{file_id}.json.zst",
            self.dir_under(PROFILES_DIR)
        ))
    }

    /// A new, unique file path in this partition.
    pub fn new_file_path(&self, table: StoredTable, file_id: &str) -> Path {
        Path::from(format!("{}/{}.parquet", self.dir(table), file_id))
    }
}

/// Top folder of the profile summaries.
pub const PROFILES_DIR: &str = "profiles";
pub const CATALOG_LOG_DIR: &str = "catalog/log";
pub const CATALOG_CHECKPOINT_DIR: &str = "catalog/checkpoints";

pub fn catalog_log_path(seq: u64) -> Path {
    Path::from(format!("{CATALOG_LOG_DIR}/{seq:020}.json"))
}

pub fn catalog_checkpoint_path(seq: u64) -> Path {
    Path::from(format!("{CATALOG_CHECKPOINT_DIR}/{seq:020}.json"))
}

/// The sequence number in a catalog object's file name, if it is one of ours.
pub fn catalog_seq_of(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_is_hive_style_and_path_safe() {
        // 2026-12-01T13:45:00Z
        let t = 1_796_132_700_000_000;
        let p = PartitionKey::new(format!("sha256:{}", "a".repeat(64)), t);
        assert_eq!(p.hour, 1_796_130_000_000_000);
        assert_eq!(
            p.dir(StoredTable::Fingerprints),
            format!(
                "fingerprints/image=sha256_{}/date=2026-12-01/hour=13",
                "a".repeat(64)
            )
        );
        assert_eq!(digest_from_path(&path_safe_digest(&p.image)), p.image);
    }

    #[test]
    fn hour_start_floors_negative_times() {
        assert_eq!(hour_start(-1), -HOUR_MICROS);
        assert_eq!(hour_start(0), 0);
        assert_eq!(catalog_seq_of(&catalog_log_path(42)), Some(42));
    }
}
