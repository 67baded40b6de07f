//! `imprint`: the Imprint command line.

use clap::Parser;
use imprint_server::cli::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imprint: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
