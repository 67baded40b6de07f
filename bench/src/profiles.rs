//! The profile-query benchmark (issue 5): how long one image's `profile_status`
//! row and its `profiles` rows take as history grows, against DuckDB over the same
//! Parquet files and PostgreSQL with a btree on (image, kind, key), same run.
//!
//! A fleet of `--images` images is pushed through gRPC ingest until the store
//! holds each size of `--sizes` (fingerprint items). At each size the server is
//! stopped (persisting everything, with profile summaries) and started again — the
//! start-up time from summaries is reported — then every query runs warm over
//! `--sample` images, then `profile_peers.py` runs the peers' equivalents on the
//! files just written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use imprint_bench::{Fleet, FleetSpec};
use imprint_proto::client::authed;
use imprint_proto::ingest_v1::ingest_client::IngestClient;

use crate::ingest::{Server, bin_dir_or_own, dir_bytes};

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Store sizes to measure at, in fingerprint items (rows), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000000,100000000")]
    sizes: Vec<u64>,
    #[arg(long, default_value_t = 1000)]
    images: usize,
    #[arg(long, default_value_t = 3)]
    containers_per_image: usize,
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Images queried at each size (each query runs `--runs` times warm).
    #[arg(long, default_value_t = 20)]
    sample: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Directory with the imprintd binary [default: next to this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to put the benchmark's data [default: a temporary directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run the peers with this Python (pyarrow, duckdb; PostgreSQL's initdb).
    #[arg(long)]
    peers_python: Option<PathBuf>,
    /// Load PostgreSQL only up to this many rows (its table and btree take about
    /// 360 bytes per row on disk).
    #[arg(long, default_value_t = 20_000_000)]
    pg_max_rows: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Median latency (ms) of `query` for each sampled image, end to end over Flight
/// SQL (GetFlightInfo + DoGet), after one unmeasured run.
async fn imprint_latency(
    server: &Server,
    images: &[String],
    runs: usize,
    query: &str,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())?
        .connect()
        .await?;
    let mut times = Vec::new();
    let mut rows = 0;
    for image in images {
        let sql = query.replace("{image}", image);
        let first = imprint_server::cli::run_sql(channel.clone(), &server.token, &sql).await?;
        rows += first.iter().map(|b| b.num_rows()).sum::<usize>();
        for _ in 0..runs {
            let t = Instant::now();
            imprint_server::cli::run_sql(channel.clone(), &server.token, &sql).await?;
            times.push(t.elapsed());
        }
    }
    Ok((
        median(times).as_secs_f64() * 1e3,
        rows / images.len().max(1),
    ))
}

/// Pushes windows from `*next` on until `target` items are stored.
async fn push_until(
    server: &Server,
    fleet: &mut Fleet,
    next: &mut i64,
    stored: &mut u64,
    target: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())?
        .connect()
        .await?;
    let client =
        IngestClient::new(authed(channel, &server.token)?).max_encoding_message_size(64 << 20);
    let start = Instant::now();
    let at_start = *stored;
    while *stored < target {
        let batches = fleet.batches(*next);
        *next += 1;
        let pushed: Vec<u64> = futures::stream::iter(batches.into_iter().map(|b| {
            let mut c = client.clone();
            async move {
                loop {
                    match c.push(b.clone()).await {
                        Ok(a) => return Ok(a.into_inner().items_accepted),
                        // The buffer is full while the server persists: retry the same
                        // batch, as an agent does.
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(s) => return Err(s),
                    }
                }
            }
        }))
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
        *stored += pushed.iter().sum::<u64>();
        eprint!("\r  {} / {target} items, window {}", *stored, *next);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "\r  {} items stored ({:.0} items/s this step)          ",
        *stored,
        (*stored - at_start) as f64 / secs
    );
    Ok(())
}

/// The start-up line of the server's log: how it computed the profiles.
fn startup_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains("profiles computed from stored data"))
        .map(str::to_string)
        .unwrap_or_default()
}

struct SizeResult {
    items: u64,
    status_ms: f64,
    profiles_ms: f64,
    profile_rows: usize,
    startup: String,
    parquet_bytes: u64,
    summary_bytes: u64,
    peers: Vec<serde_json::Value>,
}

pub async fn run(args: ProfilesArgs) -> Result<(), Box<dyn std::error::Error>> {
    let bin_dir = bin_dir_or_own(args.bin_dir.as_deref());
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let data = work.join("profiles-store");
    let _ = std::fs::remove_dir_all(&data);
    // Windows end at most now; enough of them in the past for the largest size
    // (≈ 0.9 × items per image per container per window).
    let per_window = (args.images * args.containers_per_image) as u64 * 330;
    let windows_needed = args.sizes.iter().max().copied().unwrap_or(0) / per_window.max(1) + 4;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let mut fleet = Fleet::new(FleetSpec {
        images: args.images,
        containers_per_image: args.containers_per_image,
        nodes: args.nodes,
        start_micros: now - (windows_needed as i64 + 2) * 30_000_000,
        ..Default::default()
    });
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let (mut next, mut stored) = (0i64, 0u64);
    let mut results = Vec::new();
    let mut server = Server::start_logging(&bin_dir, &data);
    for &size in &sizes {
        eprintln!("pushing up to {size} items ...");
        push_until(&server, &mut fleet, &mut next, &mut stored, size).await?;
        // A graceful stop persists everything; the start reads the summaries.
        server.stop();
        server = Server::start_logging(&bin_dir, &data);
        let startup = startup_line(&data.with_extension("log"));
        let sample: Vec<String> = (0..args.sample)
            .map(|i| {
                fleet
                    .image_digest(i * args.images / args.sample.max(1))
                    .to_string()
            })
            .collect();
        eprintln!("querying {} images × {} runs ...", sample.len(), args.runs);
        let status_sql = "SELECT * FROM profile_status WHERE image = '{image}'";
        let profiles_sql = "SELECT * FROM profiles WHERE image = '{image}'";
        let (status_ms, _) = imprint_latency(&server, &sample, args.runs, status_sql).await?;
        let (profiles_ms, profile_rows) =
            imprint_latency(&server, &sample, args.runs, profiles_sql).await?;
        if profile_rows == 0 {
            return Err("the sampled images have no profile rows: the benchmark is broken".into());
        }
        let mut peers = Vec::new();
        if let Some(python) = &args.peers_python {
            peers = run_peers(
                python,
                &data,
                &sample,
                args.runs,
                stored <= args.pg_max_rows,
            )?;
        }
        results.push(SizeResult {
            items: stored,
            status_ms,
            profiles_ms,
            profile_rows,
            startup,
            parquet_bytes: dir_bytes(&data.join("fingerprints"), "parquet")
                + dir_bytes(&data.join("windows"), "parquet"),
            summary_bytes: dir_bytes(&data.join("profiles"), "zst"),
            peers,
        });
    }
    server.stop();
    print_results(&args, &results);
    Ok(())
}

fn run_peers(
    python: &Path,
    data: &Path,
    sample: &[String],
    runs: usize,
    with_pg: bool,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("profile_peers.py");
    eprintln!("running the peers on the same Parquet files ...");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--root")
        .arg(data)
        .arg("--images")
        .arg(sample.join(","))
        .arg("--runs")
        .arg(runs.to_string());
    if !with_pg {
        cmd.arg("--no-postgres");
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("profile_peers.py failed with {}", out.status).into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(Into::into))
        .collect()
}

fn print_results(args: &ProfilesArgs, results: &[SizeResult]) {
    println!(
        "\n## Profile queries: {} images × {} containers, median of {} images × {} warm runs\n",
        args.images, args.containers_per_image, args.sample, args.runs
    );
    println!(
        "| items stored | Imprint profile_status | Imprint profiles (rows) | Parquet bytes | summary bytes |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.2} ms | {:.2} ms ({}) | {} | {} |",
            r.items, r.status_ms, r.profiles_ms, r.profile_rows, r.parquet_bytes, r.summary_bytes
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last())
        && results.len() > 1
    {
        println!(
            "\nImprint, {} → {} items: profile_status ×{:.2}, profiles ×{:.2} (target < 1.5)",
            first.items,
            last.items,
            last.status_ms / first.status_ms,
            last.profiles_ms / first.profiles_ms
        );
    }
    println!("\nStart-up after each size (from the server log):\n");
    for r in results {
        println!("- {} items: `{}`", r.items, r.startup.trim());
    }
    if results.iter().any(|r| !r.peers.is_empty()) {
        println!("\n### Peers, same files, same run (ratio = peer / Imprint)\n");
        println!("| items stored | peer | status | ratio | profiles | ratio |");
        println!("|---:|---|---:|---:|---:|---:|");
        for r in results {
            for p in &r.peers {
                if let Some(skip) = p["skipped"].as_str() {
                    println!(
                        "| {} | {} | skipped: {skip} | | | |",
                        r.items,
                        p["peer"].as_str().unwrap_or("?")
                    );
                    continue;
                }
                let (s, pr) = (
                    p["status_ms"].as_f64().unwrap_or(0.0),
                    p["profiles_ms"].as_f64().unwrap_or(0.0),
                );
                println!(
                    "| {} | {} | {s:.2} ms | {:.2}× | {pr:.2} ms | {:.2}× |",
                    r.items,
                    p["peer"].as_str().unwrap_or("?"),
                    s / r.status_ms,
                    pr / r.profiles_ms
                );
            }
        }
    }
}
