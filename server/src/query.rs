//! Running one SQL query under the server's limits: its own memory pool
//! (`--query-memory-limit`), a deadline (`--query-timeout`), and a cap on how many
//! run at once (`--max-concurrent-queries`). A query over a limit fails alone with
//! RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED; the others keep running.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::status::query_status;

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub max_concurrent: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            timeout: Duration::from_secs(300),
            max_concurrent: 16,
        }
    }
}

/// A running query's result: batches until done, an error, or the deadline.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, Status>> + Send>>;

pub struct QueryRunner {
    base: SessionContext,
    limits: QueryLimits,
    slots: Arc<Semaphore>,
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
            limits,
            slots,
        }
    }

    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// A session like the base one but with this query's own memory pool.
    fn session(&self) -> Result<SessionContext, Status> {
        let base = self.base.state();
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env())
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)))
            .build_arc()
            .map_err(query_status)?;
        let state = SessionStateBuilder::new_from_existing(base)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Waits for a slot (until the deadline) and plans `sql` (its `?` placeholders numbered,
    /// [`crate::placeholders`]); `bind` may bind parameters to the plan.
    pub async fn plan(
        &self,
        sql: &str,
        bind: impl FnOnce(DataFrame) -> Result<DataFrame, Status>,
    ) -> Result<Planned, Status> {
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
        let ctx = self.session()?;
        let df = tokio::time::timeout_at(deadline, ctx.sql(&sql))
            .await
            .map_err(|_| self.deadline_status())?
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
