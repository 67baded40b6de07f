//! Who may write which agent's data, and how far back: tokens bound to agent ids, the cap on
//! new agent ids per token, the window-age bound, and sequence numbers that a stepped-back
//! clock or a shared agent id cannot turn into silently dropped batches — against a real
//! imprintd, with the agent's real shipper for the renumbering.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use std::sync::Arc;
use std::sync::atomic::Ordering;

use imprint_agent::metrics::Metrics;
use imprint_agent::shipper::{Shipper, ShipperConfig};
use imprint_agent::spool::Spool;
use imprint_e2e::Imprintd;
use imprint_proto::admin_v1::CreateTokenRequest;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::client::{AuthedChannel, authed};
use imprint_proto::ingest_v1::ingest_client::IngestClient;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};
use tonic::Code;

use imprint_e2e::now_micros;

fn fingerprint(container: &str, window_end: i64) -> Fingerprint {
    Fingerprint {
        node: "node-1".into(),
        container_id: container.into(),
        image: imprint_bench::digest_of(1),
        image_name: "app:1".into(),
        window_start_unix_micros: window_end - 30_000_000,
        window_end_unix_micros: window_end,
        items: vec![Item {
            kind: ItemKind::Process as i32,
            key: "/usr/bin/app".into(),
            count: 1,
        }],
        completeness: None,
    }
}

fn batch(agent: &str, seq: u64, container: &str) -> FingerprintBatch {
    FingerprintBatch {
        agent_id: agent.into(),
        seq,
        fingerprints: vec![fingerprint(container, now_micros() - 1_000_000)],
    }
}

async fn create_token(server: &Imprintd, scopes: &[&str], agent_ids: &[&str]) -> String {
    AdminClient::new(server.authed().await)
        .create_token(CreateTokenRequest {
            name: "identity-test".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in_seconds: 0,
            agent_ids: agent_ids.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

async fn ingest_as(server: &Imprintd, secret: &str) -> IngestClient<AuthedChannel> {
    IngestClient::new(authed(server.channel().await, secret).unwrap())
}

/// A token bound to agent ids writes only those agents' batches (and inventories): one node's
/// stolen token cannot write another node's sequence numbers.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_bound_to_an_agent_id_cannot_push_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let bound = create_token(&server, &["agent"], &["node-1"]).await;
    let mut client = ingest_as(&server, &bound).await;
    client.push(batch("node-1", 1, "c1")).await.unwrap();
    let refused = client.push(batch("node-2", 1, "c2")).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("may only push for agent ids [node-1]")
            && refused.message().contains("\"node-2\""),
        "{}",
        refused.message()
    );
    let inventory = imprint_proto::ingest_v1::InventoryReport {
        agent_id: "node-2".into(),
        image: imprint_bench::digest_of(1),
        ..Default::default()
    };
    let refused = client.report_inventory(inventory).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM windows WHERE container_id = 'c2'")
            .await,
        0
    );
    // Binding only makes sense for agent tokens; a bad id is refused with its index.
    let mut admin = AdminClient::new(server.authed().await);
    let e = admin
        .create_token(CreateTokenRequest {
            name: "x".into(),
            scopes: vec!["read".into()],
            agent_ids: vec!["node-1".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("only a token with the agent scope"),
        "{e:?}"
    );
    let e = admin
        .create_token(CreateTokenRequest {
            name: "x".into(),
            scopes: vec!["agent".into()],
            agent_ids: vec!["ok".into(), "has space".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("agent_ids[1]: must be printable ASCII"),
        "{e:?}"
    );
    // The CLI shows the binding.
    let (ok, out, _) = server.cli(&["token", "list"]);
    assert!(ok, "{out}");
}

/// A token brings in at most --max-new-agents-per-token-per-hour agent ids the server has not
/// seen; agents it knows keep pushing, and another token has its own count.
#[tokio::test(flavor = "multi_thread")]
async fn new_agent_ids_per_token_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(
        &dir.path().join("data"),
        &["--max-new-agents-per-token-per-hour", "3"],
    );
    let token = create_token(&server, &["agent"], &[]).await;
    let mut client = ingest_as(&server, &token).await;
    for n in 0..3 {
        client
            .push(batch(&format!("node-{n}"), 1, "c"))
            .await
            .unwrap();
    }
    let refused = client.push(batch("node-3", 1, "c")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("--max-new-agents-per-token-per-hour"),
        "{}",
        refused.message()
    );
    // Known agents go on.
    client.push(batch("node-0", 2, "c")).await.unwrap();
    // Another token counts its own.
    let other = create_token(&server, &["agent"], &[]).await;
    ingest_as(&server, &other)
        .await
        .push(batch("node-3", 1, "c"))
        .await
        .unwrap();
    // Three first pushes, node-0's second, node-3 through the other token.
    assert_eq!(server.scalar_i64("SELECT count(*) FROM windows").await, 5);
}

/// A window that started longer ago than --max-window-age is refused with the field named;
/// recent ones in the same server are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn windows_older_than_the_max_window_age_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &["--max-window-age", "1h"]);
    let mut old = batch("node-1", 1, "c1");
    old.fingerprints[0] = fingerprint("c1", now_micros() - 2 * 3_600_000_000);
    let refused = server.push(old).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("fingerprints[0].window_start_unix_micros: window started 2 h ago")
            && refused.message().contains("--max-window-age (1 h)"),
        "{}",
        refused.message()
    );
    server.push(batch("node-1", 1, "c1")).await.unwrap();
}

/// The server keeps a bounded list of seq ranges per agent. A seq below what it still tells
/// apart is refused with FAILED_PRECONDITION (never acked as a duplicate), counted in
/// /healthz, and the floor survives a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_seq_below_the_floor_is_refused_not_dropped_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Imprintd::start(&dir.path().join("data"), &[]);
    // Every other seq: one range per batch, so the list fills (256) and the floor rises.
    for i in 1..=300u64 {
        server.push(batch("a", 1000 + 2 * i, "c")).await.unwrap();
    }
    let behind = server.push(batch("a", 1000, "late")).await.unwrap_err();
    assert_eq!(behind.code(), Code::FailedPrecondition, "{behind:?}");
    assert!(
        behind.message().contains("clock stepped back"),
        "{}",
        behind.message()
    );
    let last = behind
        .metadata()
        .get(imprint_proto::AGENT_LAST_SEQ_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(last.as_deref(), Some("1600"));
    assert_eq!(server.healthz()["engine"]["seq_behind_refused"], 1);
    // A recent gap is still exact: applied, not refused.
    let ack = server.push(batch("a", 1599, "gap")).await.unwrap();
    assert!(!ack.duplicate);
    assert_eq!(ack.agent_last_seq, 1600);
    // The floor survives a restart (a graceful stop commits it with the catalog).
    assert!(server.terminate().success());
    server.restart();
    let behind = server.push(batch("a", 1000, "late")).await.unwrap_err();
    assert_eq!(behind.code(), Code::FailedPrecondition, "{behind:?}");
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM windows WHERE container_id = 'late'")
            .await,
        0
    );
}

/// Runs the agent's real shipper for one fingerprint of `container`, as `agent_id` whose spool
/// says its last seq was `last_seq`, until it has shipped; returns how many batches it
/// renumbered.
async fn ship_one(
    server: &Imprintd,
    dir: &std::path::Path,
    token: String,
    agent_id: &str,
    last_seq: u64,
    container: &str,
) -> u64 {
    let spool_dir = dir.join(format!("spool-{agent_id}"));
    std::fs::create_dir_all(&spool_dir).unwrap();
    std::fs::write(spool_dir.join("last-seq"), last_seq.to_string()).unwrap();
    let spool = Spool::open(&spool_dir, 64 << 20).unwrap();
    let metrics = Arc::new(Metrics::default());
    let config = ShipperConfig {
        server: server.grpc_url(),
        ca_cert: None,
        token,
        agent_id: agent_id.into(),
    };
    let shipper = Shipper::new(config, spool, metrics.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(vec![fingerprint(container, now_micros() - 1_000_000)])
        .unwrap();
    drop(tx);
    tokio::time::timeout(std::time::Duration::from_secs(60), shipper.run(rx))
        .await
        .expect("the shipper finishes");
    metrics.batches_renumbered.load(Ordering::Relaxed)
}

/// The agent's side: a new batch that collides with seqs the server has (another agent with
/// this id, or a clock stepped back with the spool lost) is renumbered above the server's
/// last seq and stored — counted, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_renumbers_a_colliding_batch_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    // "Another run" of node-1 used seqs far ahead of this clock.
    let ahead = now_micros() as u64 + 1_000_000_000_000;
    for seq in ahead + 1..=ahead + 3 {
        server.push(batch("node-1", seq, "before")).await.unwrap();
    }
    // This run's spool says its last seq was `ahead`: its first new batch is `ahead + 1`,
    // which the server has already.
    let token = create_token(&server, &["agent"], &[]).await;
    let renumbered = ship_one(&server, dir.path(), token, "node-1", ahead, "after").await;
    assert_eq!(renumbered, 1);
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM windows WHERE container_id = 'after'")
            .await,
        1,
        "the renumbered batch is stored"
    );
    // Behind the floor: the agent renumbers too.
    for i in 1..=300u64 {
        server
            .push(batch("node-2", ahead + 10 + 2 * i, "before"))
            .await
            .unwrap();
    }
    let token = create_token(&server, &["agent"], &[]).await;
    let renumbered = ship_one(&server, dir.path(), token, "node-2", ahead, "after-2").await;
    assert_eq!(renumbered, 1);
    assert_eq!(server.healthz()["engine"]["seq_behind_refused"], 1);
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM windows WHERE container_id = 'after-2'")
            .await,
        1
    );
}
