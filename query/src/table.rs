//! The table provider behind every stored table: rows still in the server's write
//! buffer, unioned with the table's live Parquet files, both pruned by partition
//! before anything is read.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use crate::catalog::FileEntry;
pub use crate::file_scan::STORE_URL;
use crate::file_scan::parquet_scan;
use crate::prune::PartitionFilter;
use crate::schema::StoredTable;

/// What one scan of a table sees. Both halves must come from one consistent moment:
/// rows move from the buffer to a file in one step that a view never straddles.
#[derive(Debug, Default)]
pub struct TableView {
    /// Rows in memory, already restricted to partitions the filter allows.
    pub batches: Vec<RecordBatch>,
    /// Live files, already restricted to partitions the filter allows.
    pub files: Vec<FileEntry>,
}

/// Gives a consistent [`TableView`] of a table: the server's write buffer plus
/// catalog, or, embedded, the catalog alone.
pub trait ViewSource: Send + Sync + Debug {
    fn view(&self, table: StoredTable, filter: &PartitionFilter) -> DfResult<TableView>;

    /// Stored settings (key → value), for the `settings` table.
    fn settings(&self) -> std::collections::BTreeMap<String, String>;

    /// Stored policies, for the `policies` table.
    fn policies(&self) -> Vec<crate::policy::Policy>;
}

/// The `settings` table: each known setting with its current value.
#[derive(Debug)]
pub struct SettingsTable {
    source: Arc<dyn ViewSource>,
}

impl SettingsTable {
    pub fn new(source: Arc<dyn ViewSource>) -> Self {
        Self { source }
    }
}

#[async_trait]
impl TableProvider for SettingsTable {
    fn schema(&self) -> SchemaRef {
        crate::settings::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = crate::settings::batch(&self.source.settings());
        let mem = MemorySourceConfig::try_new(&[vec![batch]], self.schema(), projection.cloned())?
            .with_limit(limit);
        Ok(DataSourceExec::from_data_source(mem))
    }
}

#[derive(Debug)]
pub struct ImprintTable {
    table: StoredTable,
    source: Arc<dyn ViewSource>,
}

impl ImprintTable {
    pub fn new(table: StoredTable, source: Arc<dyn ViewSource>) -> Self {
        Self { table, source }
    }
}

/// The files a scan with `filter` may need, out of `files`.
pub fn prune_files<'a>(
    files: impl IntoIterator<Item = &'a FileEntry>,
    filter: &PartitionFilter,
) -> Vec<FileEntry> {
    files
        .into_iter()
        .filter(|f| filter.allows_image(&f.image) && filter.allows_times(f.min_time, f.max_time))
        .cloned()
        .collect()
}

#[async_trait]
impl TableProvider for ImprintTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: used to skip partitions, files and row groups; DataFusion still
        // applies every filter to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.table.schema();
        let filter = PartitionFilter::from_exprs(filters);
        // The view is already pruned by partition (see `TableView`).
        let view = self.source.view(self.table, &filter)?;
        let files = view.files;
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !view.batches.is_empty() {
            let mem =
                MemorySourceConfig::try_new(&[view.batches], schema.clone(), projection.cloned())?
                    .with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(mem));
        }

        if !files.is_empty() {
            inputs.push(parquet_scan(
                state, self.table, &files, projection, filters, limit,
            )?);
        }

        match inputs.len() {
            0 => {
                let projected = match projection {
                    Some(p) => Arc::new(schema.project(p)?),
                    None => schema,
                };
                Ok(Arc::new(EmptyExec::new(projected)))
            }
            _ => UnionExec::try_new(inputs),
        }
    }
}

/// Builds a view's one batch for the partitions (images) a query's filters allow.
pub type BuildBatch = dyn Fn(&PartitionFilter) -> DfResult<RecordBatch> + Send + Sync;

/// A view computed in memory per query (profiles, In Use): the filters pick what
/// to build (`image = …` builds one image); every filter still applies to the rows.
pub struct BuiltTable {
    schema: SchemaRef,
    build: Box<BuildBatch>,
}

impl BuiltTable {
    pub fn new(schema: SchemaRef, build: Box<BuildBatch>) -> Self {
        Self { schema, build }
    }
}

impl Debug for BuiltTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for BuiltTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = (self.build)(&PartitionFilter::from_exprs(filters))?;
        let mem = MemorySourceConfig::try_new(&[vec![batch]], self.schema(), projection.cloned())?
            .with_limit(limit);
        Ok(DataSourceExec::from_data_source(mem))
    }
}
