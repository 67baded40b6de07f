//! The `imprint` command line: talks to a running `imprintd`.

pub mod output;

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

use output::OutputFormat;

/// The Imprint command line.
#[derive(Debug, Parser)]
#[command(name = "imprint", version)]
pub struct Cli {
    /// The server's gRPC address.
    #[arg(
        long,
        global = true,
        env = "IMPRINT_SERVER",
        default_value = "http://127.0.0.1:7340"
    )]
    pub server: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a SQL query and print the result.
    ///
    /// Example: imprint sql "SELECT kind, count(*) FROM fingerprints GROUP BY kind"
    Sql {
        /// The query (DataFusion SQL). Tables: fingerprints, windows.
        query: String,
        /// Output format; `arrow` writes an Arrow IPC stream to stdout.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot connect to {server}: {source} (is imprintd running? set --server or IMPRINT_SERVER)"
    )]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Server(String),
    #[error("writing the output: {0}")]
    Output(#[from] arrow::error::ArrowError),
}

fn flight_error(e: arrow_flight::error::FlightError) -> CliError {
    // The client wraps the server's status; show the message the server gave.
    CliError::Server(e.to_string())
}

pub async fn connect(server: &str) -> Result<Channel, CliError> {
    let endpoint =
        Endpoint::from_shared(server.to_string()).map_err(|source| CliError::Connect {
            server: server.to_string(),
            source,
        })?;
    endpoint
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            server: server.to_string(),
            source,
        })
}

/// Runs `query` over Flight SQL and collects every batch.
pub async fn run_sql(channel: Channel, query: &str) -> Result<Vec<RecordBatch>, CliError> {
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client
        .execute(query.to_string(), None)
        .await
        .map_err(flight_error)?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let stream = client.do_get(ticket).await.map_err(flight_error)?;
        let mut part: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| CliError::Server(e.to_string()))?;
        batches.append(&mut part);
    }
    Ok(batches)
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Sql { query, format } => {
            let channel = connect(&cli.server).await?;
            let batches = run_sql(channel, &query).await?;
            output::write(&batches, format, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}
