//! Scanning a table's Parquet files, whose columns differ from the table's in one
//! place: files store `window_micros` where the table has `window_end`
//! (see [`crate::schema::WINDOW_MICROS`]). The scan reads the file columns a query
//! needs and, when `window_end` is among them, computes it as
//! `time + window_micros` in a projection above the Parquet reader.

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::DataSourceExec;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::catalog::FileEntry;
use crate::schema::{StoredTable, WINDOW_END_INDEX, WINDOW_MICROS};

/// The URL under which the store's object store is registered in the session.
pub const STORE_URL: &str = "imprint://store/";

/// A scan of `files` of `table` producing the table's `projection` (all columns
/// when `None`). `filters` prune row groups and pages; every filter is still
/// applied above the scan (pushdown is inexact).
pub fn parquet_scan(
    state: &dyn Session,
    table: StoredTable,
    files: &[FileEntry],
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let table_schema = table.schema();
    let file_schema = table.file_schema();
    let wanted: Vec<usize> = match projection {
        Some(p) => p.clone(),
        None => (0..table_schema.fields().len()).collect(),
    };
    // File columns to read; `window_end` needs `time` and `window_micros`.
    let mut read: Vec<usize> = wanted
        .iter()
        .flat_map(|&i| match i {
            WINDOW_END_INDEX => vec![0, WINDOW_END_INDEX],
            i => vec![i],
        })
        .collect();
    read.sort_unstable();
    read.dedup();

    let mut source = ParquetSource::new(file_schema.clone());
    // A filter on `window_end` has no file column to test against.
    let window_end = table_schema.field(WINDOW_END_INDEX).name();
    let pushable: Vec<Expr> = filters
        .iter()
        .filter(|f| !f.column_refs().iter().any(|c| &c.name == window_end))
        .cloned()
        .collect();
    if let Some(predicate) = conjunction(pushable) {
        let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
        source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
    }
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(STORE_URL)?, Arc::new(source))
        .with_file_groups(file_groups(files, state.config().target_partitions()))
        .with_projection_indices(Some(read.clone()))?
        .with_limit(limit)
        .build();
    let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
    if read == wanted && !wanted.contains(&WINDOW_END_INDEX) {
        return Ok(scan); // the table's columns as they are in the file
    }

    let at = |file_index: usize| {
        read.iter()
            .position(|&r| r == file_index)
            .expect("every needed column is read")
    };
    let exprs = wanted.iter().map(|&i| {
        let name = table_schema.field(i).name();
        let expr: Arc<dyn PhysicalExpr> = if i == WINDOW_END_INDEX {
            let length = CastExpr::new(
                Arc::new(Column::new(WINDOW_MICROS, at(WINDOW_END_INDEX))),
                DataType::Duration(TimeUnit::Microsecond),
                None,
            );
            Arc::new(BinaryExpr::new(
                Arc::new(Column::new(file_schema.field(0).name(), at(0))),
                Operator::Plus,
                Arc::new(length),
            ))
        } else {
            Arc::new(Column::new(name, at(i)))
        };
        ProjectionExpr::new(expr, name.clone())
    });
    Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
}

/// Spreads files over `n` groups of about equal bytes, so a scan uses every core.
fn file_groups(files: &[FileEntry], n: usize) -> Vec<FileGroup> {
    let n = n.max(1).min(files.len());
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.bytes));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); n];
    for f in sorted {
        let g = groups.iter_mut().min_by_key(|(b, _)| *b).expect("n >= 1");
        g.0 += f.bytes;
        g.1.push(PartitionedFile::new(f.path.clone(), f.bytes));
    }
    groups
        .into_iter()
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}
