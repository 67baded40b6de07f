//! The SQL surface of the stored tables: their Arrow schemas.
//!
//! Strings are plain `Utf8` on the SQL surface so every client (ADBC, JDBC, DuckDB
//! over the Parquet files) sees ordinary text; the write buffer dictionary-encodes
//! internally and Parquet dictionary-encodes on disk.

use std::sync::{Arc, LazyLock};

use arrow::array::{Int64Array, RecordBatch, RecordBatchOptions, TimestampMicrosecondArray};
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
    /// One row per anomaly a policy found (stored with the fingerprint's partition).
    Anomalies,
}

impl StoredTable {
    pub const ALL: [StoredTable; 3] = [
        StoredTable::Fingerprints,
        StoredTable::Windows,
        StoredTable::Anomalies,
    ];

    /// The tables profiles are computed from (summaries cover their files; raw
    /// retention removes them).
    pub const PROFILE_INPUTS: [StoredTable; 2] = [StoredTable::Fingerprints, StoredTable::Windows];

    /// The SQL table name, which is also the top folder of its files.
    pub fn name(self) -> &'static str {
        match self {
            StoredTable::Fingerprints => "fingerprints",
            StoredTable::Windows => "windows",
            StoredTable::Anomalies => "anomalies",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            StoredTable::Fingerprints => FINGERPRINTS_SCHEMA.clone(),
            StoredTable::Windows => WINDOWS_SCHEMA.clone(),
            StoredTable::Anomalies => ANOMALIES_SCHEMA.clone(),
        }
    }

    /// The schema of this table's Parquet files: the SQL schema with `window_end`
    /// replaced by `window_micros` (see [`WINDOW_MICROS`]).
    pub fn file_schema(self) -> SchemaRef {
        match self {
            StoredTable::Fingerprints => FINGERPRINTS_FILE_SCHEMA.clone(),
            StoredTable::Windows => WINDOWS_FILE_SCHEMA.clone(),
            StoredTable::Anomalies => ANOMALIES_FILE_SCHEMA.clone(),
        }
    }
}

/// Position of `window_end` in every table, and of `window_micros` in every file.
pub const WINDOW_END_INDEX: usize = 1;

/// The stored column that replaces `window_end` in Parquet files: the window's
/// length in microseconds. Agents use one window length, so the column is a single
/// run (almost free), where `window_end` as a timestamp cost as much as `time`
/// (about 0.3 byte per item). Readers compute `window_end = time + window_micros`.
pub const WINDOW_MICROS: &str = "window_micros";

fn file_schema_of(table: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    debug_assert_eq!(fields[WINDOW_END_INDEX].name(), "window_end");
    fields[WINDOW_END_INDEX] = Field::new(WINDOW_MICROS, DataType::Int64, false);
    Arc::new(Schema::new(fields))
}

static FINGERPRINTS_FILE_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| file_schema_of(&FINGERPRINTS_SCHEMA));
static WINDOWS_FILE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| file_schema_of(&WINDOWS_SCHEMA));
static ANOMALIES_FILE_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| file_schema_of(&ANOMALIES_SCHEMA));

/// A batch of `table`'s SQL schema as the rows of its Parquet file.
pub fn to_file_batch(table: StoredTable, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let start = timestamps(batch, 0)?;
    let end = timestamps(batch, WINDOW_END_INDEX)?;
    let micros: Int64Array = start
        .iter()
        .zip(end.iter())
        .map(|(s, e)| Some(e.unwrap_or_default() - s.unwrap_or_default()))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[WINDOW_END_INDEX] = Arc::new(micros);
    RecordBatch::try_new(table.file_schema(), columns)
}

fn timestamps(batch: &RecordBatch, i: usize) -> Result<&TimestampMicrosecondArray, ArrowError> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "column {} is not a microsecond timestamp",
                batch.schema().field(i).name()
            ))
        })
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

/// `anomalies(time, window_end, node, container_id, image, image_name, kind, key,
/// count, policy, severity, confidence, confidence_score)`: `time`/`window_end`
/// are the window of the fingerprint that had the item.
pub static ANOMALIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
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
        Field::new("policy", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("confidence", DataType::Utf8, false),
        Field::new("confidence_score", DataType::Float64, false),
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
