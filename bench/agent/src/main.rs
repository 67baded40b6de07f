//! `imprint-bench-agent`: the agent benchmark of bench/README.md (needs root).
//!
//! - default: overhead on a syscall loop and a realistic workload, bare vs attached, and the
//!   agent's own CPU and RSS watching busy containers;
//! - `syscall-loop N` (hidden): the loop itself, run in a cgroup by the benchmark.

mod overhead;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "imprint-bench-agent",
    version,
    about = "The agent overhead benchmark (needs root)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    args: overhead::AgentArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make N getppid() calls in 10 chunks and print the nanoseconds per call of the fastest.
    #[command(hide = true)]
    SyscallLoop { calls: u64 },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::SyscallLoop { calls }) => overhead::syscall_loop(calls),
        None => overhead::run(cli.args)?,
    }
    Ok(())
}
