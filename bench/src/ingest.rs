//! The ingest benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use imprint_bench::{Fleet, FleetSpec};
use imprint_proto::client::authed;
use imprint_proto::ingest_v1::FingerprintBatch;
use imprint_proto::ingest_v1::ingest_client::IngestClient;
use imprint_server::engine::buffer::Buffer;
use prost::Message;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Agent counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    agents: Vec<usize>,
    #[arg(long, default_value_t = 200)]
    images: usize,
    #[arg(long, default_value_t = 5)]
    containers_per_image: usize,
    /// 30 s windows per run.
    #[arg(long, default_value_t = 12)]
    windows: i64,
    /// Fingerprints per batch (an agent's batch covers many containers).
    #[arg(long, default_value_t = 64)]
    batch_fingerprints: usize,
    /// Directory with the imprintd binary [default: next to this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to put the benchmark's data [default: a temporary directory].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also load the same rows into DuckDB and PostgreSQL with this Python
    /// (needs pyarrow and duckdb; PostgreSQL's initdb/pg_ctl on the PATH).
    #[arg(long)]
    peers_python: Option<PathBuf>,
}

/// Re-batches the fleet's fingerprints of `windows` into batches of `n` from one agent.
pub(crate) fn agent_batches(
    fleet: &mut Fleet,
    windows: std::ops::Range<i64>,
    n: usize,
) -> Vec<FingerprintBatch> {
    let mut fps = Vec::new();
    for w in windows {
        for node in fleet.window(w) {
            fps.extend(node);
        }
    }
    fps.chunks(n)
        .map(|c| FingerprintBatch {
            agent_id: String::new(),
            seq: 0,
            fingerprints: c.to_vec(),
        })
        .collect()
}

pub(crate) fn items(batches: &[FingerprintBatch]) -> u64 {
    batches
        .iter()
        .flat_map(|b| &b.fingerprints)
        .map(|f| f.items.len() as u64)
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The engine's own ceiling: decode the encoded batches and append them to the
/// write buffer in process — no network, no WAL.
fn ceiling(encoded: &[Vec<u8>]) -> (f64, u64) {
    let mut buffer = Buffer::default();
    let start = Instant::now();
    let mut n = 0;
    for (i, bytes) in encoded.iter().enumerate() {
        let b = FingerprintBatch::decode(bytes.as_slice()).expect("decodes");
        n += buffer.apply(i as u64 + 1, &b, &|_| false);
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs, n)
}

/// `given`, else the directory of this benchmark's own binary (where cargo puts
/// `imprintd` too).
pub(crate) fn bin_dir_or_own(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::current_exe()
            .expect("exe")
            .parent()
            .expect("dir")
            .to_path_buf()
    })
}

pub(crate) struct Server {
    child: Child,
    pub grpc: String,
    /// The admin token the server wrote at first start.
    pub token: String,
}

impl Server {
    pub fn start(bin_dir: &Path, data: &Path) -> Self {
        Self::spawn(bin_dir, data, "warn", Stdio::null())
    }

    /// Started with info logging appended to `<data>.log`.
    pub fn start_logging(bin_dir: &Path, data: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .expect("open the server log");
        Self::spawn(bin_dir, data, "info", Stdio::from(log))
    }

    fn spawn(bin_dir: &Path, data: &Path, level: &str, stderr: Stdio) -> Self {
        let port = imprint_bench::free_loopback_port();
        let http = imprint_bench::free_loopback_port();
        let grpc = format!("127.0.0.1:{port}");
        let mut child = Command::new(bin_dir.join("imprintd"))
            .args(["serve", "--data-dir"])
            .arg(data)
            .args([
                "--grpc-addr",
                &grpc,
                "--http-addr",
                &format!("127.0.0.1:{http}"),
            ])
            .args(["--max-buffer-bytes", "4GiB"])
            // The fleets have fixed dates (2026-11-30): no window-age bound.
            .args(["--max-window-age", "36500d"])
            .env("IMPRINT_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start imprintd");
        while std::net::TcpStream::connect(&grpc).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("imprintd on {} exited at start ({status})", data.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The admin token appears once the server has committed it.
        let token_file = data.join("admin-token");
        while !token_file.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let token = std::fs::read_to_string(token_file)
            .unwrap_or_default()
            .trim()
            .to_string();
        Self {
            child,
            grpc: format!("http://{grpc}"),
            token,
        }
    }

    /// CPU seconds (user + system) the server has used so far: the whole process,
    /// and its WAL writer thread alone (where ingest is applied to the profiles
    /// and policies are evaluated). Linux `/proc`; clock ticks are 1/100 s there.
    pub fn cpu_seconds(&self) -> CpuSeconds {
        let pid = self.child.id();
        let ticks = |stat: &str| -> f64 {
            // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (n(11) + n(12)) / 100.0
        };
        let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| ticks(&s))
            .unwrap_or(0.0);
        let writer = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("imprint-wal-wri"))
            })
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .map(|s| ticks(&s))
            .sum();
        CpuSeconds { process, writer }
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// See [`Server::cpu_seconds`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSeconds {
    pub process: f64,
    pub writer: f64,
}

impl std::ops::Sub for CpuSeconds {
    type Output = CpuSeconds;
    fn sub(self, earlier: CpuSeconds) -> CpuSeconds {
        CpuSeconds {
            process: self.process - earlier.process,
            writer: self.writer - earlier.writer,
        }
    }
}

pub(crate) struct RunResult {
    agents: usize,
    pub items_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

pub(crate) async fn end_to_end(
    server: &str,
    token: &str,
    batches: &[FingerprintBatch],
    agents: usize,
    tag: &str,
) -> RunResult {
    let per_agent: Vec<Vec<FingerprintBatch>> = (0..agents)
        .map(|a| {
            batches
                .iter()
                .skip(a)
                .step_by(agents)
                .enumerate()
                .map(|(i, b)| FingerprintBatch {
                    agent_id: format!("bench-{tag}-{a}"),
                    seq: i as u64 + 1,
                    fingerprints: b.fingerprints.clone(),
                })
                .collect()
        })
        .collect();
    let total = items(batches);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mine in per_agent {
        let server = server.to_string();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(server)
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let mut client = IngestClient::new(authed(channel, &token).expect("token"))
                .max_encoding_message_size(64 << 20);
            let mut lat = Vec::with_capacity(mine.len());
            for b in mine {
                let t = Instant::now();
                client.push(b).await.expect("push");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("agent task"));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    RunResult {
        agents,
        items_per_sec: total as f64 / secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

pub(crate) fn dir_bytes(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p, ext);
            } else if p.extension().is_some_and(|x| x == ext) {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

pub async fn run(args: IngestArgs) -> Result<(), Box<dyn std::error::Error>> {
    let bin_dir = bin_dir_or_own(args.bin_dir.as_deref());
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let spec = FleetSpec {
        images: args.images,
        containers_per_image: args.containers_per_image,
        nodes: 16,
        start_micros: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as i64
            - (args.windows + 2) * 30_000_000,
        ..Default::default()
    };
    eprintln!(
        "generating {} images × {} containers × {} windows ...",
        spec.images, spec.containers_per_image, args.windows
    );
    let mut fleet = Fleet::new(spec);
    let batches = agent_batches(&mut fleet, 0..args.windows, args.batch_fingerprints);
    let total = items(&batches);
    let encoded: Vec<Vec<u8>> = batches.iter().map(|b| b.encode_to_vec()).collect();
    let mb: usize = encoded.iter().map(Vec::len).sum::<usize>() >> 20;
    eprintln!("{} batches, {total} items, {mb} MiB encoded", batches.len());

    // Interleave the ceiling with the end-to-end runs: the machines are noisy.
    let mut ceilings = Vec::new();
    let mut results = Vec::new();
    for &agents in &args.agents {
        ceilings.push(ceiling(&encoded).0);
        let data = work.join(format!("run-{agents}"));
        let _ = std::fs::remove_dir_all(&data);
        let server = Server::start(&bin_dir, &data);
        let r = end_to_end(
            &server.grpc,
            &server.token,
            &batches,
            agents,
            &agents.to_string(),
        )
        .await;
        eprintln!("{agents:>2} agents: {:.0} items/s", r.items_per_sec);
        server.stop();
        let parquet = dir_bytes(&data.join("fingerprints"), "parquet");
        results.push((r, parquet));
    }
    ceilings.push(ceiling(&encoded).0);
    ceilings.sort_by(f64::total_cmp);
    let ceiling_median = ceilings[ceilings.len() / 2];

    println!(
        "\n## Ingest: {total} items per run ({} batches of {} fingerprints)\n",
        batches.len(),
        args.batch_fingerprints
    );
    println!(
        "in-process ceiling (decode + append to buffer, no network, no WAL): {ceiling_median:.0} items/s (median of {})\n",
        ceilings.len()
    );
    println!(
        "| agents | items/s end to end | ratio to ceiling | ack p50 | ack p99 | Parquet bytes/item |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (r, parquet) in &results {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} ms | {:.1} ms | {:.3} |",
            r.agents,
            r.items_per_sec,
            r.items_per_sec / ceiling_median,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            *parquet as f64 / total as f64
        );
    }
    if let Some(python) = &args.peers_python {
        peers(python, &encoded, &work, total)?;
    }
    Ok(())
}

/// Writes the rows as an Arrow IPC file and runs bench/peers.py on it.
fn peers(
    python: &Path,
    encoded: &[Vec<u8>],
    work: &Path,
    total: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut buffer = Buffer::default();
    for (i, bytes) in encoded.iter().enumerate() {
        buffer.apply(
            i as u64 + 1,
            &FingerprintBatch::decode(bytes.as_slice())?,
            &|_| false,
        );
    }
    let table = imprint_query::schema::StoredTable::Fingerprints;
    let batches = buffer.view(table, &imprint_query::prune::PartitionFilter::all())?;
    let path = work.join("rows.arrow");
    let mut w =
        arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&path)?, &table.schema())?;
    for b in &batches {
        w.write(b)?;
    }
    w.finish()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.py");
    eprintln!("loading the same {total} rows into the peers ...");
    let out = Command::new(python)
        .arg(script)
        .arg("--arrow")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("peers.py failed with {}", out.status).into());
    }
    println!("\n## Peers, same rows, same run\n");
    println!("| peer | rows/s | bytes on disk per row |");
    println!("|---|---:|---:|");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let extra = v["bytes_per_row_with_btree"]
            .as_f64()
            .map(|b| format!(" ({b:.1} with btree on image, kind, key)"))
            .unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.2}{extra} |",
            v["peer"].as_str().unwrap_or("?"),
            v["rows_per_sec"].as_f64().unwrap_or(0.0),
            v["bytes_per_row"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
