//! `imprint-bench`: load generator and benchmarks.
//!
//! - `load`: push a synthetic fleet to a running server (demos, manual tests).
//! - `ingest`: the ingest benchmark of bench/README.md — end-to-end items/s and ack
//!   latency with 1, 4 and 16 concurrent agents against the real `imprintd` (WAL
//!   fsync'd), the in-process ceiling on the same batches, and bytes on disk per item.
//!
//! The agent benchmark is its own package (`bench/agent`, binary `imprint-bench-agent`), so
//! this one needs neither the agent nor the eBPF toolchain.

mod ingest;
mod policies;
mod profiles;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "imprint-bench",
    version,
    about = "Imprint load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Push a synthetic fleet's fingerprints to a running imprintd.
    Load {
        /// The server's gRPC address.
        #[arg(long, env = "IMPRINT_SERVER", default_value = "http://127.0.0.1:7340")]
        server: String,
        #[arg(long, default_value_t = 20)]
        images: usize,
        #[arg(long, default_value_t = 3)]
        containers_per_image: usize,
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Number of 30 s windows to push, ending now.
        #[arg(long, default_value_t = 20)]
        windows: i64,
        /// Token with the `agent` scope. Default: <data-dir>/admin-token.
        #[arg(long, env = "IMPRINT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The server's data directory (to find its admin token).
        #[arg(long, env = "IMPRINT_DATA_DIR", default_value = "./imprint-data")]
        data_dir: std::path::PathBuf,
    },
    /// Run the ingest benchmark and print its figures.
    Ingest(ingest::IngestArgs),
    /// Run the profile-query benchmark (with DuckDB and PostgreSQL peers) and print its figures.
    Profiles(profiles::ProfilesArgs),
    /// Run the policy benchmark: ingest with 100 policies over 1,000 learned images vs none.
    Policies(policies::PoliciesArgs),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Load {
            server,
            images,
            containers_per_image,
            nodes,
            windows,
            token,
            data_dir,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_micros() as i64;
            let spec = imprint_bench::FleetSpec {
                images,
                containers_per_image,
                nodes,
                start_micros: now - windows * 30_000_000,
                ..Default::default()
            };
            let mut fleet = imprint_bench::Fleet::new(spec);
            let token = token.unwrap_or_else(|| {
                std::fs::read_to_string(data_dir.join("admin-token"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            });
            let channel = tonic::transport::Channel::from_shared(server.clone())?
                .connect()
                .await?;
            let mut client = imprint_proto::ingest_v1::ingest_client::IngestClient::new(
                imprint_proto::client::authed(channel, &token)?,
            );
            let (mut items, mut batches) = (0u64, 0u64);
            for w in 0..windows {
                for b in fleet.batches(w) {
                    items += client.push(b).await?.into_inner().items_accepted;
                    batches += 1;
                }
                eprint!(
                    "\rpushed window {}/{windows}: {batches} batches, {items} items",
                    w + 1
                );
            }
            eprintln!();
            println!("pushed {items} items in {batches} batches to {server}");
        }
        Command::Ingest(args) => ingest::run(args).await?,
        Command::Profiles(args) => profiles::run(args).await?,
        Command::Policies(args) => policies::run(args).await?,
    }
    Ok(())
}
