//! Arrow Flight SQL over the engine's SQL session — enough for Python ADBC, the
//! Rust arrow-flight client, JDBC and DBeaver.
//!
//! - Statements: `GetFlightInfo(CommandStatementQuery)` plans the query (SQL
//!   errors come back at once as `INVALID_ARGUMENT` with DataFusion's message) and
//!   returns one endpoint whose ticket carries the statement; `DoGet` runs it.
//! - Prepared statements: `CreatePreparedStatement` plans the SQL and returns the
//!   result and parameter schemas; `DoPut` binds one row of parameters (`$1`,
//!   `$2`, …); `GetFlightInfo`/`DoGet` run it; `ClosePreparedStatement` forgets it.
//! - Metadata: `GetSqlInfo`, `GetCatalogs`, `GetDbSchemas`, `GetTables` (with
//!   `include_schema`), `GetTableTypes`, `GetXdbcTypeInfo`.
//!
//! The schema a `FlightInfo` advertises is exactly the schema `DoGet` streams,
//! nullability included: every batch is conformed to it before it is sent.

mod metadata;
pub mod prepared;

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::datasource::TableType;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller, Scope};
use crate::engine::Engine;
use crate::query::{Planned, QueryLimits, QueryRunner};
use crate::status::auth_status;
use crate::status::query_status;
use base64::Engine as _;
use metadata::{SQL_INFO, XDBC_TYPES};
use prepared::{Owner, PreparedLimits, PreparedStatements};

#[derive(Debug, Clone)]
pub struct FlightSql {
    engine: Arc<Engine>,
    auth: Auth,
    queries: Arc<QueryRunner>,
    prepared: Arc<PreparedStatements>,
}

impl FlightSql {
    pub fn new(
        engine: Arc<Engine>,
        limits: QueryLimits,
        prepared: PreparedLimits,
        auth: Auth,
    ) -> Self {
        let queries = Arc::new(QueryRunner::new(engine.session().clone(), limits));
        Self {
            engine,
            auth,
            queries,
            prepared: Arc::new(PreparedStatements::new(prepared)),
        }
    }

    /// Plans `sql` with `params` bound, under the query limits.
    async fn plan(&self, sql: &str, params: Option<Vec<ScalarValue>>) -> Result<Planned, Status> {
        self.queries.plan(sql, |df| bind(df, params)).await
    }

    /// The prepared statement `handle` of `owner`; another token's statement is not found.
    fn prepared(&self, owner: &Owner, handle: &[u8]) -> Result<prepared::Prepared, Status> {
        let handle = std::str::from_utf8(handle)
            .map_err(|_| Status::invalid_argument("prepared statement handle is not UTF-8"))?;
        self.prepared.get(owner, handle).ok_or_else(|| {
            Status::not_found(format!(
                "no prepared statement {handle:?} of this token: it was closed, the server restarted, or another token made it"
            ))
        })
    }
}

/// Binds parameter values to a planned query. Clients bind what their language
/// has (Python ints are int64): each value is cast to the type DataFusion inferred
/// for its placeholder.
fn bind(df: DataFrame, params: Option<Vec<ScalarValue>>) -> Result<DataFrame, Status> {
    let Some(params) = params else { return Ok(df) };
    let types = df
        .logical_plan()
        .get_parameter_types()
        .map_err(query_status)?;
    let params = params
        .into_iter()
        .enumerate()
        .map(|(i, v)| match types.get(&format!("${}", i + 1)) {
            Some(Some(t)) if v.data_type() != *t => v.cast_to(t).map_err(|e| {
                Status::invalid_argument(format!(
                    "parameter ${}: cannot use {v:?} as {t}: {e}",
                    i + 1
                ))
            }),
            _ => Ok(v),
        })
        .collect::<Result<Vec<_>, _>>()?;
    df.with_param_values(params).map_err(query_status)
}

type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// The schema a query's result has (and is streamed with).
fn result_schema(df: &DataFrame) -> SchemaRef {
    Arc::new(df.schema().as_arrow().clone())
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true))
}

async fn stream_result(planned: Planned) -> Result<Response<DoGetStream>, Status> {
    let schema = result_schema(&planned.df);
    let max_bytes = planned.limits().max_result_bytes;
    let batches = planned.execute().await?;
    let target = schema.clone();
    let batches = batches
        .map_err(|s| FlightError::Tonic(Box::new(s)))
        .and_then(move |b| {
            futures::future::ready(
                imprint_query::schema::conform(&b, &target).map_err(FlightError::Arrow),
            )
        });
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from);
    Ok(Response::new(Box::pin(limit_bytes(encoded, max_bytes))))
}

/// The bytes one Flight message carries, as the result and parameter limits count them.
fn flight_data_bytes(d: &arrow_flight::FlightData) -> usize {
    d.data_header.len() + d.data_body.len() + d.app_metadata.len()
}

/// Ends `data` with RESOURCE_EXHAUSTED once it has sent more than `max_bytes`
/// (`--max-result-bytes`).
fn limit_bytes(
    data: impl Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static,
    max_bytes: u64,
) -> impl Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static {
    data.scan(0u64, move |sent, item| {
        if *sent > max_bytes {
            return futures::future::ready(None); // the error below was the last item
        }
        let item = item.and_then(|d| {
            *sent += flight_data_bytes(&d) as u64;
            if *sent > max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "the result is larger than the limit of {max_bytes} bytes (--max-result-bytes); add a LIMIT or a narrower WHERE"
                )));
            }
            Ok(d)
        });
        futures::future::ready(Some(item))
    })
}

/// The `FlightInfo` of a metadata command: its result schema and one endpoint
/// whose ticket is the command itself.
fn command_info(
    schema: &Schema,
    command: &impl ProstMessageExt,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    Ok(Response::new(flight_info(
        schema,
        command.as_any().encode_to_vec(),
        request.into_inner(),
    )?))
}

fn one_batch<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(format!("building metadata: {e}")))?;
    let out: DoGetStream = Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream::once(async { Ok(batch) }))
            .map_err(Status::from),
    );
    Ok(Response::new(out))
}

fn schema_ipc(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: ArrowError| Status::internal(format!("encoding a schema: {e}")))?;
    Ok(bytes)
}

/// `$1`, `$2`, … with the types DataFusion inferred (Utf8 when it could not).
fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, Status> {
    let types = plan.get_parameter_types().map_err(query_status)?;
    let mut params: Vec<(usize, Field)> = types
        .into_iter()
        .map(|(name, t)| {
            let n = name.trim_start_matches('$').parse().unwrap_or(usize::MAX);
            (
                n,
                Field::new(name, t.unwrap_or(arrow::datatypes::DataType::Utf8), true),
            )
        })
        .collect();
    params.sort_by_key(|(n, _)| *n);
    Ok(Schema::new(
        params.into_iter().map(|(_, f)| f).collect::<Vec<_>>(),
    ))
}

fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    /// Basic auth (any user name, a token as the password) → the same token as a
    /// bearer token, in the `authorization` response header and as the payload.
    /// Clients such as ADBC and JDBC send user/password this way.
    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let token = match header.as_deref() {
            Some(h) if h.starts_with("Basic ") => {
                // Padded or not: clients differ.
                let encoded = h.trim_start_matches("Basic ").trim();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(encoded.trim_end_matches('='))
                    })
                    .map_err(|_| Status::unauthenticated("the Basic credentials are not base64"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| Status::unauthenticated("the Basic credentials are not UTF-8"))?;
                let (_, password) = text.split_once(':').unwrap_or(("", &text));
                password.to_string()
            }
            Some(h) if h.starts_with("Bearer ") => {
                h.trim_start_matches("Bearer ").trim().to_string()
            }
            _ if !self.auth.enabled() => String::new(),
            _ => {
                return Err(Status::unauthenticated(
                    "handshake needs Basic credentials (password = an Imprint token) or a Bearer token",
                ));
            }
        };
        if self.auth.enabled() {
            self.auth
                .check_secret(&token, Scope::Read)
                .map_err(auth_status)?;
        }
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let out: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(stream::once(async { Ok(reply) }));
        let mut response = Response::new(out);
        if !token.is_empty() {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                Status::unauthenticated("the token has characters a header cannot carry")
            })?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self.plan(&query.query, None).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let info = flight_info(
            &result_schema(&df.df),
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the statement ticket is not UTF-8"))?;
        stream_result(self.plan(&sql, None).await?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let planned = self.plan(&query.query, None).await?;
        let parameter_schema = parameter_schema(planned.df.logical_plan())?;
        let dataset_schema = result_schema(&planned.df);
        let handle = self
            .prepared
            .insert(Caller::of(&request).token_id, query.query)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_ipc(&dataset_schema)?,
            parameter_schema: schema_ipc(&parameter_schema)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        self.prepared
            .remove(&Caller::of(&request).token_id, &handle);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let owner = Caller::of(&request).token_id;
        self.prepared(&owner, &query.prepared_statement_handle)?;
        // Counted as it arrives: an upload over the limit stops before it is all in memory.
        let max_bytes = self.prepared.limits().parameter_bytes;
        let mut received = 0usize;
        let data = request.into_inner().map(move |d| {
            let d = d?;
            received += flight_data_bytes(&d);
            if received > max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "the bound parameters are larger than {max_bytes} bytes (--max-parameter-bytes)"
                )));
            }
            Ok(d)
        });
        let data = data.map_err(|s| FlightError::Tonic(Box::new(s)));
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                e => Status::invalid_argument(format!("reading the bound parameters: {e}")),
            })?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let params = match batches.iter().find(|b| b.num_rows() > 0) {
            None => Vec::new(),
            Some(_) if rows > 1 => {
                return Err(Status::invalid_argument(format!(
                    "{rows} rows of parameters were bound; a query takes one row (run it once per row)"
                )));
            }
            Some(b) => b
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_status)?,
        };
        self.prepared.bind(&owner, &handle, params);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let p = self.prepared(
            &Caller::of(&request).token_id,
            &cmd.prepared_statement_handle,
        )?;
        let df = self.plan(&p.sql, p.params).await?;
        let info = flight_info(
            &result_schema(&df.df),
            cmd.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let p = self.prepared(
            &Caller::of(&request).token_id,
            &cmd.prepared_statement_handle,
        )?;
        stream_result(self.plan(&p.sql, p.params).await?).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.clone().into_builder(&SQL_INFO).schema(),
            &query,
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(&SQL_INFO);
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder(&XDBC_TYPES).schema(), &query, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(&XDBC_TYPES);
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        for c in self.engine.session().catalog_names() {
            b.append(c);
        }
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        let ctx = self.engine.session();
        for c in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&c) else {
                continue;
            };
            for s in catalog.schema_names() {
                b.append(&c, s);
            }
        }
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        let ctx = self.engine.session();
        for c in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&c) else {
                continue;
            };
            for s in catalog.schema_names() {
                let Some(schema) = catalog.schema(&s) else {
                    continue;
                };
                for t in schema.table_names() {
                    let Some(table) = schema.table(&t).await.map_err(query_status)? else {
                        continue;
                    };
                    b.append(
                        &c,
                        &s,
                        &t,
                        table_type_name(table.table_type()),
                        table.schema().as_ref(),
                    )
                    .map_err(|e| Status::internal(format!("listing tables: {e}")))?;
                }
            }
        }
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        for t in ["TABLE", "VIEW", "LOCAL TEMPORARY"] {
            b.append(t);
        }
        one_batch(b.schema(), b.build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
