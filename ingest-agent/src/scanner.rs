//! Runs the runtime scanner ([`crate::inventory`]) while the server's
//! `runtime_scanner.eve_enabled` is on: for each image digest, once, it reads a
//! running container of that image through `/proc/<pid>/root` and sends the
//! inventory (`Ingest.ReportInventory`). A digest whose containers have all exited
//! before a scan waits for the next container of it; a failed send is retried.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use imprint_proto::client::{authed, connect};
use imprint_proto::ingest_v1::ingest_client::IngestClient;

use crate::attribution::Resolved;
use crate::inventory;
use crate::metrics::Metrics;
use crate::rootfs::{ContainerRoot, ScanLimits};
use crate::shipper::ShipperConfig;

/// How often pending digests are tried again.
const RETRY: Duration = Duration::from_secs(2);

/// A process of the cgroup at `dir`, if any is left.
fn a_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()?
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

/// The scanner loop, on a thread of its own; `handle` runs the gRPC sends.
pub fn run(
    config: ShipperConfig,
    scan_limits: ScanLimits,
    resolved: Receiver<Resolved>,
    enabled: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    handle: tokio::runtime::Handle,
) {
    let mut pending: HashMap<String, Resolved> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        match resolved.recv_timeout(RETRY) {
            Ok(r) => {
                if !done.contains(&r.container.image) {
                    // The newest container of a digest is the likeliest to be running.
                    pending.insert(r.container.image.clone(), r);
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !enabled.load(Ordering::Relaxed) || pending.is_empty() {
            continue;
        }
        let images: Vec<String> = pending.keys().cloned().collect();
        for image in images {
            let r = &pending[&image];
            let Some(pid) = a_pid(&r.cgroup_dir) else {
                continue;
            };
            let root = match ContainerRoot::open(
                Path::new(&format!("/proc/{pid}/root")),
                scan_limits,
            ) {
                Ok(root) => root,
                Err(error) => {
                    tracing::debug!(%image, pid, %error, "cannot open the container's root; trying later");
                    continue;
                }
            };
            let scan = inventory::scan(&root);
            let refused = root.refusals();
            if refused.not_regular + refused.too_large + refused.unsafe_paths > 0
                || refused.budget_exhausted
            {
                tracing::warn!(
                    %image,
                    not_regular = refused.not_regular,
                    too_large = refused.too_large,
                    unsafe_paths = refused.unsafe_paths,
                    budget_exhausted = refused.budget_exhausted,
                    "the runtime scanner refused some of the container's files"
                );
                Metrics::add(
                    &metrics.inventory_refused_files,
                    (refused.not_regular + refused.too_large + refused.unsafe_paths) as u64,
                );
            }
            let files: usize = scan.packages.iter().map(|p| p.files.len()).sum();
            let packages = scan.packages.len();
            if scan.left_out > 0 {
                tracing::warn!(%image, left_out = scan.left_out, "inventory larger than the limits; some packages left out");
            }
            let report = scan.into_report(&config.agent_id, &image, &r.container.image_name);
            let sent = handle.block_on(async {
                let channel = connect(&config.server, config.ca_cert.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut client =
                    IngestClient::new(authed(channel, &config.token).map_err(|e| e.to_string())?)
                        .max_encoding_message_size(64 << 20);
                client
                    .report_inventory(report)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            });
            match sent {
                Ok(_) => {
                    tracing::info!(%image, pid, packages, files, "runtime inventory sent");
                    Metrics::add(&metrics.inventories_sent, 1);
                    pending.remove(&image);
                    done.insert(image);
                }
                Err(error) => {
                    tracing::warn!(%image, %error, "sending the runtime inventory failed; retrying");
                    Metrics::add(&metrics.inventory_failures, 1);
                }
            }
        }
    }
}
