//! The SQL surface of the stored tables: their Arrow schemas.
//!
//! Strings are plain `Utf8` on the SQL surface so every client (ADBC, JDBC, DuckDB
//! over the Parquet files) sees ordinary text; the write buffer dictionary-encodes
//! internally and Parquet dictionary-encodes on disk.

use std::sync::{Arc, LazyLock};

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

/// The time type of every timestamp column: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The stored tables. Each one is partitioned by (image, hour) the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredTable {
    /// One row per item per fingerprint: the raw time series.
    Fingerprints,
    /// One row per fingerprint (container × window), with its completeness facts.
    Windows,
}

impl StoredTable {
    pub const ALL: [StoredTable; 2] = [StoredTable::Fingerprints, StoredTable::Windows];

    /// The SQL table name, which is also the top folder of its files.
    pub fn name(self) -> &'static str {
        match self {
            StoredTable::Fingerprints => "fingerprints",
            StoredTable::Windows => "windows",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            StoredTable::Fingerprints => FINGERPRINTS_SCHEMA.clone(),
            StoredTable::Windows => WINDOWS_SCHEMA.clone(),
        }
    }
}

/// `fingerprints(time, window_end, node, container_id, image, image_name, kind, key, count)`.
pub static FINGERPRINTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("window_end", timestamp_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("container_id", DataType::Utf8, false),
        Field::new("image", DataType::Utf8, false),
        Field::new("image_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ]))
});

/// `windows(time, window_end, node, container_id, image, image_name, items,
/// dropped_events, capture_paused, started_after_container)`.
pub static WINDOWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("window_end", timestamp_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("container_id", DataType::Utf8, false),
        Field::new("image", DataType::Utf8, false),
        Field::new("image_name", DataType::Utf8, false),
        Field::new("items", DataType::UInt32, false),
        Field::new("dropped_events", DataType::UInt64, false),
        Field::new("capture_paused", DataType::Boolean, false),
        Field::new("started_after_container", DataType::Boolean, false),
    ]))
});

/// `batch` with `schema`: columns cast where their types differ (e.g. dictionary
/// strings → Utf8), nullability as `schema` says (an error if a non-nullable
/// column holds nulls).
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}
