//! Running one SQL query under the server's limits: its own memory pool
//! (`--query-memory-limit`), a deadline (`--query-timeout`), and a cap on how many
//! run at once (`--max-concurrent-queries`). A query over a limit fails alone with
//! RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; the others keep running.
//!
//! Every query is read-only, whatever the token's scope: DDL (`CREATE EXTERNAL TABLE`,
//! `CREATE`/`DROP TABLE`/`VIEW`), DML (`INSERT`, `COPY … TO`) and statements (`SET`,
//! `PREPARE`, transactions) are refused with PERMISSION_DENIED before anything runs. Each query
//! also plans against a catalog of its own (the server's tables, copied), so even a statement
//! that got through could not change what anyone else sees.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use futures::{Stream, StreamExt};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::status::query_status;

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub max_concurrent: usize,
    /// Arrow IPC bytes one result may stream (`--max-result-bytes`).
    pub max_result_bytes: u64,
    /// Longest SQL text (`--max-sql-bytes`).
    pub max_sql_bytes: usize,
    /// Deepest nesting of `[` (`--max-sql-subscript-depth`).
    pub max_subscript_depth: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(300),
            max_concurrent: 16,
            max_result_bytes: 1 << 30,
            max_sql_bytes: 1 << 20,
            max_subscript_depth: DEFAULT_MAX_SUBSCRIPT_DEPTH,
        }
    }
}

pub const DEFAULT_MAX_SUBSCRIPT_DEPTH: usize = 8;

/// Refuses SQL whose `[` nest deeper than `max` (closed or not), before the parser sees it.
/// DataFusion's SQL parser backtracks on compound access with subscripts: `SELECT a.b[a.b[…`
/// takes about twice as long per level (20 levels: 1.5 s, 30: some 20 min) inside one poll,
/// where the query timeout cannot stop it. Found by the `sql` fuzz target.
pub fn check_subscript_depth(sql: &str, max: usize) -> Result<(), Status> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.contains('[') {
        return Ok(());
    }
    // Text the tokenizer refuses, the parser refuses too, at once.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let (mut depth, mut deepest) = (0usize, 0usize);
    for token in &tokens {
        match token {
            Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > max {
        return Err(Status::invalid_argument(format!(
            "the SQL nests `[` {deepest} deep, more than the limit of {max} (--max-sql-subscript-depth)"
        )));
    }
    Ok(())
}

/// A running query's result: batches until done, an error, or the deadline.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, Status>> + Send>>;

pub struct QueryRunner {
    base: SessionContext,
    /// The base session's tables, read once: each query gets fresh catalogs holding them.
    tables: OnceCell<Vec<CatalogTable>>,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
}

/// One table of the base session and where it sits.
struct CatalogTable {
    catalog: String,
    schema: String,
    name: String,
    provider: Arc<dyn TableProvider>,
}

/// A planned query holding its concurrency slot and deadline.
pub struct Planned {
    pub df: DataFrame,
    deadline: Instant,
    limits: QueryLimits,
    permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for QueryRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRunner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl QueryRunner {
    pub fn new(base: SessionContext, limits: QueryLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Self {
            base,
            tables: OnceCell::new(),
            limits,
            slots,
        }
    }

    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// A session like the base one but with this query's own memory pool and its own
    /// catalogs (copies of the base's, holding the same tables).
    async fn session(&self) -> Result<SessionContext, Status> {
        let base = self.base.state();
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env())
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)))
            .build_arc()
            .map_err(query_status)?;
        let catalogs = self.catalogs().await?;
        let state = SessionStateBuilder::new_from_existing(base)
            .with_runtime_env(runtime)
            .with_catalog_list(catalogs)
            .with_table_factories(Default::default())
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// The base session's tables, read on first use.
    async fn tables(&self) -> Result<&[CatalogTable], DataFusionError> {
        self.tables
            .get_or_try_init(|| base_tables(&self.base))
            .await
            .map(Vec::as_slice)
    }

    /// Fresh catalogs with the base session's tables in them.
    async fn catalogs(&self) -> Result<Arc<dyn CatalogProviderList>, Status> {
        let tables = self.tables().await.map_err(query_status)?;
        let list = MemoryCatalogProviderList::new();
        for t in tables {
            let catalog = match list.catalog(&t.catalog) {
                Some(c) => c,
                None => {
                    let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                    list.register_catalog(t.catalog.clone(), c.clone());
                    c
                }
            };
            let schema = match catalog.schema(&t.schema) {
                Some(s) => s,
                None => {
                    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                    catalog
                        .register_schema(&t.schema, s.clone())
                        .map_err(query_status)?;
                    s
                }
            };
            schema
                .register_table(t.name.clone(), t.provider.clone())
                .map_err(query_status)?;
        }
        Ok(Arc::new(list))
    }

    /// The names of the tables a query can read, sorted.
    async fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self.tables().await {
            Ok(tables) => tables.iter().map(|t| t.name.clone()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Waits for a slot (until the deadline) and plans `sql` (its `?` placeholders numbered,
    /// [`crate::placeholders`]); `bind` may bind parameters to the plan.
    pub async fn plan(
        &self,
        sql: &str,
        bind: impl FnOnce(DataFrame) -> Result<DataFrame, Status>,
    ) -> Result<Planned, Status> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(Status::invalid_argument(format!(
                "the SQL text is {} bytes, more than the limit of {} (--max-sql-bytes)",
                sql.len(),
                self.limits.max_sql_bytes
            )));
        }
        check_subscript_depth(sql, self.limits.max_subscript_depth)?;
        let deadline = Instant::now() + self.limits.timeout;
        let permit = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} queries are running (--max-concurrent-queries) and none finished within the query timeout",
                    self.limits.max_concurrent
                ))
            })?
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        let sql =
            crate::placeholders::number_question_marks(sql).map_err(Status::invalid_argument)?;
        let ctx = self.session().await?;
        // Planning does not run anything (unlike `SessionContext::sql`, which would run DDL
        // right away); the plan is checked before it becomes a DataFrame.
        let plan = match tokio::time::timeout_at(deadline, ctx.state().create_logical_plan(&sql))
            .await
            .map_err(|_| self.deadline_status())?
        {
            Ok(plan) => plan,
            Err(e) => return Err(self.planning_error(e).await),
        };
        read_only().verify_plan(&plan).map_err(refused)?;
        let df = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| self.error_status(e))?;
        let df = bind(df)?;
        Ok(Planned {
            df,
            deadline,
            limits: self.limits,
            permit,
        })
    }

    fn deadline_status(&self) -> Status {
        deadline_status(self.limits)
    }

    fn error_status(&self, e: DataFusionError) -> Status {
        error_status(self.limits, e)
    }

    /// A planning error; one about an unknown table also names the tables there are.
    async fn planning_error(&self, e: DataFusionError) -> Status {
        let status = self.error_status(e);
        if status.code() == tonic::Code::InvalidArgument
            && status.message().contains("not found")
            && status.message().contains("table '")
        {
            let names = self.table_names().await.join(", ");
            return Status::invalid_argument(format!(
                "{}; the tables are: {names}",
                status.message()
            ));
        }
        status
    }
}

/// What a query may be: it reads, nothing else.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// The status for a statement [`read_only`] refuses; DataFusion's message names its kind
/// ("DDL not supported: CreateExternalTable").
fn refused(e: DataFusionError) -> Status {
    let why = match e.find_root() {
        DataFusionError::Plan(m) => m.clone(),
        _ => e.to_string(),
    };
    Status::permission_denied(format!(
        "only read-only queries (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) run on this server, for every token: {why}"
    ))
}

/// Every table of `base`'s catalogs.
async fn base_tables(base: &SessionContext) -> Result<Vec<CatalogTable>, DataFusionError> {
    let mut tables = Vec::new();
    for catalog_name in base.catalog_names() {
        let Some(catalog) = base.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for name in schema.table_names() {
                if let Some(provider) = schema.table(&name).await? {
                    tables.push(CatalogTable {
                        catalog: catalog_name.clone(),
                        schema: schema_name.clone(),
                        name,
                        provider,
                    });
                }
            }
        }
    }
    Ok(tables)
}

fn deadline_status(limits: QueryLimits) -> Status {
    Status::deadline_exceeded(format!(
        "the query ran longer than the limit of {:?} (--query-timeout) and was stopped",
        limits.timeout
    ))
}

fn error_status(limits: QueryLimits, e: DataFusionError) -> Status {
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return Status::resource_exhausted(format!(
            "the query needs more memory than the limit of {} bytes (--query-memory-limit): {e}",
            limits.memory_bytes
        ));
    }
    query_status(e)
}

impl Planned {
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// Runs the query; the stream ends with DEADLINE_EXCEEDED at the deadline.
    pub async fn execute(self) -> Result<BatchStream, Status> {
        let Planned {
            df,
            deadline,
            limits,
            permit,
        } = self;
        let stream = tokio::time::timeout_at(deadline, df.execute_stream())
            .await
            .map_err(|_| deadline_status(limits))?
            .map_err(|e| error_status(limits, e))?;
        let state = (stream, Some(permit));
        let out = futures::stream::unfold(state, move |(mut stream, permit)| async move {
            // The permit lives as long as the stream: dropped at the end or on error.
            let permit = permit?;
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(b)) => Some((Ok(b), (stream, Some(permit)))),
                    Some(Err(e)) => Some((Err(error_status(limits, e)), (stream, None))),
                    None => None,
                },
                _ = tokio::time::sleep_until(deadline) => Some((Err(deadline_status(limits)), (stream, None))),
            }
        });
        Ok(Box::pin(out))
    }
}
