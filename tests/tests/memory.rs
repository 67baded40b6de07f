//! The write buffer's accounting follows the real key bytes: a fleet of containers whose
//! every item key is 4 KiB (the longest accepted) cannot take the server's memory past
//! --max-buffer-bytes plus a stated overhead. Under the old accounting (64 B per row whatever
//! its key) a 64 MiB buffer would have held about 4 GiB of such keys.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use imprint_e2e::Imprintd;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};
use tonic::Code;

const MIB: u64 = 1 << 20;
/// The configured buffer limit.
const MAX_BUFFER: u64 = 64 * MIB;
/// Key bytes pushed in all: sixteen times the limit.
const PUSHED: u64 = 16 * MAX_BUFFER;
/// What the server may use besides its idle footprint and the buffer: one partition being
/// encoded to Parquet while its rows are still buffered (pages, dictionary, the profile summary:
/// about three times the partition), batches in flight (decoded, re-encoded for the WAL), and
/// pages the allocator keeps. Measured: 307 MiB over idle (mimalloc) for a 64 MiB buffer; the
/// old accounting (64 B a row) would have let the buffer alone hold the whole gigabyte.
const OVERHEAD_OVER_IDLE: u64 = 4 * MAX_BUFFER + 64 * MIB;

use imprint_e2e::now_micros;

/// The process's peak and current resident set, in bytes (`VmHWM`, `VmRSS`).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn rss_stays_under_the_buffer_limit_with_4_kib_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(
        &dir.path().join("data"),
        // Profiles hold every distinct key too (outside the buffer): a small item cap keeps
        // them out of this measurement.
        &[
            "--max-buffer-bytes",
            "64MiB",
            "--persist-bytes",
            "16MiB",
            "--max-profile-items",
            "1000",
        ],
    );
    // The idle footprint, after one small query has set up the query engine.
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        0
    );
    let (_, idle) = rss(server.pid());
    let bound = idle + MAX_BUFFER + OVERHEAD_OVER_IDLE;

    let items_per_batch = 1000u64; // 4 MiB a batch
    let batches = PUSHED / (items_per_batch * 4096);
    let mut busy = 0u32;
    for b in 0..batches {
        let end = now_micros() - 1_000_000;
        let items = (0..items_per_batch)
            .map(|i| {
                let mut key = format!("/data/{b}/{i}/");
                key.extend(std::iter::repeat_n('k', 4096 - key.len()));
                Item {
                    kind: ItemKind::FileRead as i32,
                    key,
                    count: 1,
                }
            })
            .collect();
        let batch = FingerprintBatch {
            agent_id: "node-1".into(),
            seq: b + 1,
            fingerprints: vec![Fingerprint {
                node: "node-1".into(),
                container_id: format!("c{}", b % 4),
                image: imprint_bench::digest_of(b % 4),
                image_name: "app:1".into(),
                window_start_unix_micros: end - 30_000_000,
                window_end_unix_micros: end,
                items,
                completeness: None,
            }],
        };
        // A full buffer answers RESOURCE_EXHAUSTED while it persists: retry the same batch.
        loop {
            match server.push(batch.clone()).await {
                Ok(_) => break,
                Err(s) if s.code() == Code::ResourceExhausted => {
                    busy += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(s) => panic!("push {b}: {s:?}"),
            }
        }
        if b % 32 == 0 {
            let (peak, now) = rss(server.pid());
            let engine = &server.healthz()["engine"];
            println!(
                "batch {b}: rss {} MiB (peak {}), engine {engine}",
                now / MIB,
                peak / MIB
            );
        }
    }
    let (peak, _) = rss(server.pid());
    let mib = |b: u64| b / MIB;
    println!(
        "pushed {} MiB of 4 KiB keys: peak RSS {} MiB (idle {} MiB, bound {} MiB), {busy} busy answers",
        mib(PUSHED),
        mib(peak),
        mib(idle),
        mib(bound)
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB is over idle {} MiB + buffer {} MiB + overhead {} MiB",
        mib(peak),
        mib(idle),
        mib(MAX_BUFFER),
        mib(OVERHEAD_OVER_IDLE)
    );
    // Nothing was lost on the way.
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        (batches * items_per_batch) as i64
    );
}
