//! The agent's counters and their Prometheus text exposition on `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

/// Counters shared by the capture loop, the shipper and the guard.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_seen: AtomicU64,
    pub events_dropped_kernel: AtomicU64,
    pub events_dropped_agent: AtomicU64,
    pub windows_unattributed: AtomicU64,
    /// Syscall bitmaps found spilled from the kernel's per-CPU cache (cgroups sharing a slot).
    pub syscall_bitmaps_spilled: AtomicU64,
    pub fingerprints_built: AtomicU64,
    pub fingerprints_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub batches_renumbered: AtomicU64,
    pub push_failures: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
    pub spool_lost_fingerprints: AtomicU64,
    pub guard_trips: AtomicU64,
    /// 1 while the guard has the high-volume hooks paused.
    pub guard_paused: AtomicU64,
    /// 1 while capture is on (profiling enabled and programs attached).
    pub capturing: AtomicU64,
    /// The agent's own CPU use over the last second, in hundredths of a percent of one core.
    pub cpu_centipercent: AtomicU64,
    pub rss_bytes: AtomicU64,
    pub containers: AtomicI64,
    pub inventories_sent: AtomicU64,
    pub inventory_failures: AtomicU64,
    /// Container files the runtime scanner would not read (devices, FIFOs, too large,
    /// unsafe paths).
    pub inventory_refused_files: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "imprint_agent_events_seen_total",
            "counter",
            "Events read from the kernel ring buffer.",
            g(&self.events_seen).to_string(),
        );
        metric(
            "imprint_agent_events_dropped_kernel_total",
            "counter",
            "Events the kernel could not put in the ring buffer (full).",
            g(&self.events_dropped_kernel).to_string(),
        );
        metric(
            "imprint_agent_events_dropped_agent_total",
            "counter",
            "Events the agent could not use (path unreadable, item cap reached, unattributed).",
            g(&self.events_dropped_agent).to_string(),
        );
        metric(
            "imprint_agent_windows_unattributed_total",
            "counter",
            "Container windows dropped because the cgroup never resolved to a container.",
            g(&self.windows_unattributed).to_string(),
        );
        metric(
            "imprint_agent_syscall_bitmaps_spilled_total",
            "counter",
            "Per-cgroup syscall bitmaps read from the kernel's spill map: cgroups that shared a per-CPU cache slot (a few per window is normal; many mean more busy cgroups per CPU than slots).",
            g(&self.syscall_bitmaps_spilled).to_string(),
        );
        metric(
            "imprint_agent_fingerprints_built_total",
            "counter",
            "Fingerprints built.",
            g(&self.fingerprints_built).to_string(),
        );
        metric(
            "imprint_agent_fingerprints_sent_total",
            "counter",
            "Fingerprints acknowledged by the server.",
            g(&self.fingerprints_sent).to_string(),
        );
        metric(
            "imprint_agent_batches_sent_total",
            "counter",
            "Batches acknowledged by the server.",
            g(&self.batches_sent).to_string(),
        );
        metric(
            "imprint_agent_batches_duplicate_total",
            "counter",
            "Batches the server had applied already (a retry after a lost ack).",
            g(&self.batches_duplicate).to_string(),
        );
        metric(
            "imprint_agent_batches_renumbered_total",
            "counter",
            "New batches whose seq the server had seen already or no longer tells apart (the \
             clock stepped back with the spool lost, or another agent has this id): renumbered \
             above the server's last seq and sent again.",
            g(&self.batches_renumbered).to_string(),
        );
        metric(
            "imprint_agent_push_failures_total",
            "counter",
            "Push attempts that failed (server away, overloaded, refused).",
            g(&self.push_failures).to_string(),
        );
        metric(
            "imprint_agent_spool_bytes",
            "gauge",
            "Bytes of batches waiting in the disk spool.",
            g(&self.spool_bytes).to_string(),
        );
        metric(
            "imprint_agent_spool_batches",
            "gauge",
            "Batches waiting in the disk spool.",
            g(&self.spool_batches).to_string(),
        );
        metric(
            "imprint_agent_spool_lost_fingerprints_total",
            "counter",
            "Fingerprints dropped because the spool was full.",
            g(&self.spool_lost_fingerprints).to_string(),
        );
        metric(
            "imprint_agent_inventories_sent_total",
            "counter",
            "Image inventories (runtime scanner) acknowledged by the server.",
            g(&self.inventories_sent).to_string(),
        );
        metric(
            "imprint_agent_inventory_failures_total",
            "counter",
            "Image inventories that could not be sent (retried).",
            g(&self.inventory_failures).to_string(),
        );
        metric(
            "imprint_agent_inventory_refused_files_total",
            "counter",
            "Container files the runtime scanner refused to read: not regular files, over --scan-max-file-bytes, or paths the kernel refused to resolve inside the container.",
            g(&self.inventory_refused_files).to_string(),
        );
        metric(
            "imprint_agent_guard_trips_total",
            "counter",
            "Times the resource guard paused capture.",
            g(&self.guard_trips).to_string(),
        );
        metric(
            "imprint_agent_guard_paused",
            "gauge",
            "1 while the resource guard has the high-volume hooks paused.",
            g(&self.guard_paused).to_string(),
        );
        metric(
            "imprint_agent_capturing",
            "gauge",
            "1 while capture is on (profiling.enabled and programs attached).",
            g(&self.capturing).to_string(),
        );
        metric(
            "imprint_agent_cpu_percent",
            "gauge",
            "The agent's CPU use over the last second, percent of one core.",
            format!("{:.2}", g(&self.cpu_centipercent) as f64 / 100.0),
        );
        metric(
            "imprint_agent_rss_bytes",
            "gauge",
            "The agent's resident memory.",
            g(&self.rss_bytes).to_string(),
        );
        metric(
            "imprint_agent_containers",
            "gauge",
            "Containers with activity in the last window.",
            self.containers.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}

/// Serves `/metrics` (and `/healthz`) on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
