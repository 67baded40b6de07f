//! `imprintd`: the Imprint server.

use clap::{Parser, Subcommand};
use imprint_server::config::ServeArgs;

/// Imprint: a time-series database of container image runtime profiles.
///
/// Agents push fingerprints over gRPC; they are made durable in a write-ahead log,
/// kept as Parquet on a local directory or S3, and queried with SQL over Arrow
/// Flight SQL (`imprint sql`, ADBC, JDBC).
#[derive(Debug, Parser)]
#[command(name = "imprintd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGTERM/SIGINT (then persist everything and exit).
    Serve(ServeArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            imprint_server::logging::init(args.log_format);
            match imprint_server::serve::serve(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("imprintd: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
