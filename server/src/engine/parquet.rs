//! Encoding a partition's rows as a Parquet file.
//!
//! Rows are sorted so that repeated values sit together: fingerprints by
//! (kind, key, container_id, time), windows by (container_id, time). Timestamps are
//! delta-encoded, strings dictionary-encoded, everything ZSTD-compressed, with
//! page-level statistics for pruning. Steady-state fingerprints then cost about one
//! byte per item (see bench/README.md).

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use arrow::error::ArrowError;
use imprint_query::schema::{StoredTable, to_file_batch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::buffer::to_table_schema;

/// A partition's rows of one table, encoded.
#[derive(Debug)]
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Parquet(#[from] ParquetError),
}

fn sort_columns(table: StoredTable) -> &'static [&'static str] {
    match table {
        StoredTable::Fingerprints => &["kind", "key", "container_id", "time"],
        StoredTable::Windows => &["container_id", "time"],
        StoredTable::Anomalies => &["time", "container_id"],
    }
}

pub fn writer_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1024 * 1024))
        .set_dictionary_enabled(true);
    // `window_micros` keeps the dictionary: one value, one run.
    b = b
        .set_column_dictionary_enabled(ColumnPath::from("time"), false)
        .set_column_encoding(ColumnPath::from("time"), Encoding::DELTA_BINARY_PACKED);
    b.build()
}

/// Sorts and encodes buffer batches of `table`. `None` when there are no rows.
pub fn encode(
    table: StoredTable,
    batches: &[RecordBatch],
) -> Result<Option<EncodedFile>, EncodeError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(None);
    }
    let schema = table.schema();
    let converted = batches
        .iter()
        .map(|b| to_table_schema(table, b))
        .collect::<Result<Vec<_>, _>>()?;
    let all = concat_batches(&schema, &converted)?;
    let sort: Vec<SortColumn> = sort_columns(table)
        .iter()
        .map(|c| SortColumn {
            values: all.column_by_name(c).expect("sort column exists").clone(),
            options: Some(SortOptions::default()),
        })
        .collect();
    let indices = lexsort_to_indices(&sort, None)?;
    let sorted = take_record_batch(&all, &indices)?;

    let times = sorted
        .column_by_name("time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("time is a microsecond timestamp");
    let (min_time, max_time) = (
        arrow::compute::min(times).unwrap_or_default(),
        arrow::compute::max(times).unwrap_or_default(),
    );

    let mut bytes = Vec::with_capacity(rows * 2);
    let file_batch = to_file_batch(table, &sorted)?;
    let mut w = ArrowWriter::try_new(&mut bytes, table.file_schema(), Some(writer_properties()))?;
    w.write(&file_batch)?;
    w.close()?;
    Ok(Some(EncodedFile {
        bytes,
        rows: sorted.num_rows() as u64,
        min_time,
        max_time,
    }))
}
