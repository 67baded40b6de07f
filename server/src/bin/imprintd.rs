//! `imprintd`: the Imprint server.

use clap::{Parser, Subcommand};
use imprint_server::config::ServeArgs;

// mimalloc rather than glibc's malloc, which keeps a fragmented arena per thread: pushing 1 GiB
// of 4 KiB keys through a 64 MiB write buffer (tests/tests/memory.rs) peaked at 501 MiB RSS
// with glibc and 380 MiB with mimalloc, which also gave memory back (234 MiB at the end).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
