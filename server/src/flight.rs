//! Arrow Flight SQL: statements over the engine's SQL session.
//!
//! `GetFlightInfo(CommandStatementQuery)` plans the query (so SQL errors come back
//! at once, as `INVALID_ARGUMENT` with DataFusion's message) and returns one
//! endpoint whose ticket carries the statement; `DoGet` runs it and streams the
//! batches.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::status::query_status;

#[derive(Debug, Clone)]
pub struct FlightSql {
    engine: Arc<Engine>,
}

impl FlightSql {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let df = self
            .engine
            .session()
            .sql(&query.query)
            .await
            .map_err(query_status)?;
        let schema = df.schema().as_arrow().clone();
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the statement ticket is not UTF-8"))?;
        let df = self
            .engine
            .session()
            .sql(&sql)
            .await
            .map_err(query_status)?;
        let schema = df.schema().as_arrow().clone();
        let stream = df.execute_stream().await.map_err(query_status)?;
        let batches = stream.map_err(|e| FlightError::from_external_error(Box::new(e)));
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(Arc::new(schema))
            .build(batches)
            .map_err(Status::from);
        let out: DoGetStream = Box::pin(flight);
        Ok(Response::new(out))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
