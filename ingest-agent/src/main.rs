//! `imprint-agent`: the command line and the wiring of the agent's parts (in the library).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use imprint_agent::attribution::{Attributor, RuntimeSockets, StaticMapping, cgroups};
use imprint_agent::capture::{Capture, CaptureConfig, Control};
use imprint_agent::metrics::{self, Metrics};
use imprint_agent::shipper::{Shipper, ShipperConfig};
use imprint_agent::{guard, probes, procfs, scanner, settings_watch, spool};
use imprint_proto::duration::parse_duration;

/// Imprint's node agent: records what every container on this node does with eBPF (processes,
/// files, directories, ports, system calls) and ships it to imprintd as fingerprints.
///
/// Runs as root. Containers are found from their cgroups (podman, Docker, containerd, CRI-O
/// layouts) and their images from the runtime's Docker-compatible API; plain cgroups can be
/// mapped to an image with --cgroup-image.
#[derive(Debug, Parser)]
#[command(name = "imprint-agent", version)]
struct Args {
    /// imprintd's gRPC address (http:// or https://).
    #[arg(long, env = "IMPRINT_SERVER", default_value = "http://127.0.0.1:7340")]
    server: String,
    /// File holding a token with the `agent` scope (not needed when the server runs without auth).
    #[arg(long, env = "IMPRINT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate to verify the server's TLS certificate with.
    #[arg(long, env = "IMPRINT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// This node's name in fingerprints (default: the host name).
    #[arg(long, env = "IMPRINT_NODE")]
    node: Option<String>,
    /// Length of a fingerprint window.
    #[arg(long, env = "IMPRINT_WINDOW", default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// Where batches wait until the server has acknowledged them (and the agent id is kept).
    #[arg(
        long,
        env = "IMPRINT_SPOOL_DIR",
        default_value = "/var/lib/imprint-agent/spool"
    )]
    spool_dir: PathBuf,
    /// Cap of the spool; fingerprints beyond it are lost, counted and reported.
    #[arg(long, env = "IMPRINT_SPOOL_MAX_MIB", default_value_t = 256)]
    spool_max_mib: u64,
    /// The guard pauses the high-volume hooks when the agent uses more CPU (percent of one core).
    #[arg(long, env = "IMPRINT_MAX_CPU_PERCENT", default_value_t = 5.0)]
    max_cpu_percent: f64,
    /// The guard pauses the high-volume hooks when the agent's resident memory is larger.
    #[arg(long, env = "IMPRINT_MAX_RSS_MIB", default_value_t = 256)]
    max_rss_mib: u64,
    /// How long the guard pauses the hooks the first time; doubles on repeated trips.
    #[arg(long, env = "IMPRINT_GUARD_COOLDOWN", default_value = "10s", value_parser = parse_duration)]
    guard_cooldown: Duration,
    /// Distinct items per container per window; more are counted as dropped.
    #[arg(long, env = "IMPRINT_MAX_ITEMS_PER_WINDOW", default_value_t = 10_000)]
    max_items_per_window: usize,
    /// Address of the /metrics endpoint.
    #[arg(
        long,
        env = "IMPRINT_AGENT_METRICS_ADDR",
        default_value = "127.0.0.1:7350"
    )]
    metrics_addr: SocketAddr,
    /// Map a plain cgroup (path under the cgroup v2 mount) and its children to an image:
    /// PATH=sha256:<64 hex>[,NAME]. Repeatable.
    #[arg(long = "cgroup-image", value_name = "PATH=DIGEST[,NAME]")]
    cgroup_images: Vec<StaticMapping>,
    /// Docker-compatible runtime API sockets to ask for container images, in order.
    #[arg(
        long = "runtime-socket",
        default_values = ["/run/podman/podman.sock", "/var/run/docker.sock"]
    )]
    runtime_sockets: Vec<PathBuf>,
    /// containerd API sockets (gRPC), asked for containers the Docker-compatible APIs do not
    /// know: `ctr`/nerdctl containers (cgroup `/<namespace>/<id>`) and Kubernetes' (CRI).
    #[arg(
        long = "containerd-socket",
        default_values = ["/run/containerd/containerd.sock"]
    )]
    containerd_sockets: Vec<PathBuf>,
    /// Slots per CPU of the kernel's syscall-bitmap cache (a power of two, 1 to 1024). Fewer
    /// only make cgroups share slots more; a test sets 1 to make every cgroup spill.
    #[arg(long, default_value_t = imprint_ebpf_common::SYSCALL_SLOTS, hide = true, value_parser = parse_slots)]
    syscall_cache_slots: u32,
    /// Capture while the server has not said otherwise (`profiling.enabled` then rules).
    #[arg(long, env = "IMPRINT_PROFILING", default_value_t = true, action = clap::ArgAction::Set)]
    profiling: bool,
    /// Largest container file the runtime scanner reads (package databases, RECORD files).
    #[arg(long, env = "IMPRINT_SCAN_MAX_FILE_BYTES", default_value_t = 64 << 20)]
    scan_max_file_bytes: u64,
    /// Bytes the runtime scanner reads from one container in all.
    #[arg(long, env = "IMPRINT_SCAN_MAX_BYTES", default_value_t = 512 << 20)]
    scan_max_bytes: u64,
    /// Longest one container's scan may take.
    #[arg(long, env = "IMPRINT_SCAN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    scan_timeout: Duration,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "IMPRINT_LOG", default_value = "info")]
    log: String,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(args) {
        eprintln!("imprint-agent: {error}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    if !procfs::is_root() {
        return Err(
            "must run as root: loading eBPF programs needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
                .into(),
        );
    }
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let node = match args.node.clone() {
        Some(node) => node,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| format!("no --node given and the host name is unreadable: {e}"))?,
    };
    if node.is_empty() || node.len() > 253 {
        return Err(format!("--node must be 1 to 253 bytes, got {node:?}"));
    }
    if args.window < Duration::from_millis(100) || args.window > Duration::from_secs(3600) {
        return Err(format!(
            "--window must be between 100ms and 1h, got {:?}",
            args.window
        ));
    }
    let mount = cgroups::find_mount().ok_or("no cgroup v2 mount found in /proc/self/mountinfo (the agent needs cgroup v2, unified or hybrid)")?;
    let index = cgroups::CgroupIndex::new(mount.clone());
    let root_cgroup = index.root_id();
    for mapping in &args.cgroup_images {
        if index.id_of(&mapping.path).is_none() {
            tracing::warn!(path = %mapping.path, "--cgroup-image path does not exist (yet) under {}", mount.display());
        }
    }
    let own_cgroup = own_cgroup_path().and_then(|path| index.id_of(&path));

    let spool =
        spool::Spool::open(&args.spool_dir, args.spool_max_mib << 20).map_err(|e| e.to_string())?;
    let agent_id = agent_id(&args.spool_dir, &node)?;
    let metrics = Arc::new(Metrics::default());

    let probes =
        probes::Probes::load(root_cgroup, args.syscall_cache_slots).map_err(|e| e.to_string())?;
    let (resolved_tx, resolved_rx) = std::sync::mpsc::channel();
    let attributor = Attributor::start(
        index,
        args.cgroup_images.clone(),
        RuntimeSockets {
            docker_api: args.runtime_sockets.clone(),
            containerd: args.containerd_sockets.clone(),
        },
        Some(resolved_tx),
    );
    let (fingerprints_tx, fingerprints_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut capture = Capture::new(
        probes,
        attributor,
        CaptureConfig {
            node: node.clone(),
            window: args.window,
            max_items: args.max_items_per_window,
            proc: procfs::Proc::default(),
        },
        metrics.clone(),
        fingerprints_tx,
        args.profiling,
    );
    if let Some(own) = own_cgroup.filter(|id| *id != root_cgroup) {
        capture.exclude(own);
    }
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let capture_thread = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture.run(control_rx))
        .map_err(|e| format!("cannot start the capture thread: {e}"))?;
    tracing::info!(
        %node, agent_id, server = %args.server, window = ?args.window, cgroup_mount = %mount.display(),
        spooled = spool.len(), "imprint-agent capturing"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let shipper_config = ShipperConfig {
        server: args.server.clone(),
        ca_cert: args.ca_cert.clone(),
        token,
        agent_id,
    };
    runtime.block_on(async move {
        let listener_metrics = metrics.clone();
        let metrics_addr = args.metrics_addr;
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(metrics_addr, listener_metrics).await {
                tracing::error!(%error, %metrics_addr, "cannot serve /metrics");
            }
        });
        let scanner_on = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(settings_watch::run(
            shipper_config.clone(),
            control_tx.clone(),
            args.profiling,
            scanner_on.clone(),
        ));
        let (scanner_config, scanner_metrics) = (shipper_config.clone(), metrics.clone());
        let scan_limits = imprint_agent::rootfs::ScanLimits {
            max_file_bytes: args.scan_max_file_bytes,
            max_total_bytes: args.scan_max_bytes,
            timeout: args.scan_timeout,
        };
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("scanner".into())
            .spawn(move || {
                scanner::run(
                    scanner_config,
                    scan_limits,
                    resolved_rx,
                    scanner_on,
                    scanner_metrics,
                    handle,
                )
            })
            .expect("spawn the scanner thread");
        tokio::spawn(guard::run(
            guard::Limits {
                max_cpu_percent: args.max_cpu_percent,
                max_rss_bytes: args.max_rss_mib << 20,
                cooldown: args.guard_cooldown,
            },
            control_tx.clone(),
            metrics.clone(),
        ));
        let shipper =
            tokio::spawn(Shipper::new(shipper_config, spool, metrics).run(fingerprints_rx));
        wait_for_signal().await;
        tracing::info!("stopping: closing the current window and sending what is left");
        let _ = control_tx.send(Control::Stop);
        let _ = tokio::task::spawn_blocking(move || capture_thread.join()).await;
        // The shipper ends when the capture loop's sender is gone; bound the final push.
        let _ = tokio::time::timeout(Duration::from_secs(10), shipper).await;
    });
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The agent's own cgroup v2 path (`0::/path` in /proc/self/cgroup).
fn own_cgroup_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// `<node>/<install id>`, the id kept in the spool directory so a restarted agent (replaying
/// its spool) is the same agent to the server's exactly-once bookkeeping.
fn agent_id(spool_dir: &std::path::Path, node: &str) -> Result<String, String> {
    let file = spool_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let install: u64 = rand::random();
    let id = format!("{node}/{install:016x}");
    std::fs::write(&file, &id).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(id)
}

fn parse_slots(text: &str) -> Result<u32, String> {
    let slots: u32 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if !slots.is_power_of_two() || slots > imprint_ebpf_common::SYSCALL_SLOTS {
        return Err(format!(
            "{slots} is not a power of two from 1 to {}",
            imprint_ebpf_common::SYSCALL_SLOTS
        ));
    }
    Ok(slots)
}
