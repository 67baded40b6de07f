//! Push fingerprints to the real imprintd and read exactly them back over Flight SQL.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::{Imprintd, count_sum, item_count, rows_as_text};
use imprint_proto::ingest_v1::{Completeness, Fingerprint, FingerprintBatch, Item, ItemKind};

use imprint_e2e::now_micros;

#[tokio::test(flavor = "multi_thread")]
async fn pushed_rows_come_back_exactly_and_are_visible_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);

    let digest = imprint_bench::digest_of(7);
    let start = now_micros() - 60_000_000;
    let batch = FingerprintBatch {
        agent_id: "agent-a".into(),
        seq: 1,
        fingerprints: vec![Fingerprint {
            node: "node-1".into(),
            container_id: "c0ffee".into(),
            image: digest.clone(),
            image_name: "nginx:1.27".into(),
            window_start_unix_micros: start,
            window_end_unix_micros: start + 30_000_000,
            items: vec![
                Item {
                    kind: ItemKind::Process as i32,
                    key: "/usr/sbin/nginx".into(),
                    count: 1,
                },
                Item {
                    kind: ItemKind::FileRead as i32,
                    key: "/etc/nginx/nginx.conf".into(),
                    count: 2,
                },
                Item {
                    kind: ItemKind::TcpIn as i32,
                    key: "8080".into(),
                    count: 7,
                },
                Item {
                    kind: ItemKind::Syscall as i32,
                    key: "openat".into(),
                    count: 40,
                },
            ],
            completeness: Some(Completeness {
                dropped_events: 3,
                capture_paused: false,
                started_after_container: true,
            }),
        }],
    };
    let ack = server.push(batch.clone()).await.unwrap();
    assert_eq!((ack.seq, ack.duplicate, ack.items_accepted), (1, false, 4));

    // Read your writes: the very next query sees the acked rows.
    let rows = rows_as_text(
        &server
            .sql(
                "SELECT node, container_id, image, image_name, kind, key, count, \
                  CAST(window_end AS BIGINT) - CAST(time AS BIGINT) FROM fingerprints",
            )
            .await,
    );
    let expect = |k: &str, key: &str, n: u64| {
        format!("node-1|c0ffee|{digest}|nginx:1.27|{k}|{key}|{n}|30000000")
    };
    let mut want = vec![
        expect("process", "/usr/sbin/nginx", 1),
        expect("file_read", "/etc/nginx/nginx.conf", 2),
        expect("tcp_in", "8080", 7),
        expect("syscall", "openat", 40),
    ];
    want.sort();
    assert_eq!(rows, want);

    let windows = rows_as_text(&server.sql("SELECT container_id, items, dropped_events, capture_paused, started_after_container FROM windows").await);
    assert_eq!(windows, vec!["c0ffee|4|3|false|true"]);

    // The same (agent_id, seq) again: acknowledged as a duplicate, not applied.
    let ack = server.push(batch.clone()).await.unwrap();
    assert!(ack.duplicate);
    assert_eq!(ack.items_accepted, 0);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        4
    );

    // The same data from another agent is another batch.
    let mut other = batch;
    other.agent_id = "agent-b".into();
    assert!(!server.push(other).await.unwrap().duplicate);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_is_stored_whole_through_persistence() {
    let dir = tempfile::tempdir().unwrap();
    // Persist aggressively so rows move from the buffer to Parquet during the test.
    let mut server = Imprintd::start(&dir.path().join("data"), &["--persist-age", "300ms"]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 6,
        containers_per_image: 3,
        nodes: 3,
        ..Default::default()
    });
    let mut sent = Vec::new();
    for w in 0..20 {
        for b in fleet.batches(w) {
            server.push(b.clone()).await.unwrap();
            sent.push(b);
        }
        if w % 5 == 4 {
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        }
    }
    let (items, sum) = (item_count(&sent), count_sum(&sent));
    check_fleet(&server, items, sum).await;
    let health = server.healthz();
    assert!(
        health["engine"]["files"].as_u64().unwrap() > 0,
        "nothing was persisted: {health}"
    );

    // One image's rows, by a query that prunes to it.
    let digest = fleet.image_digest(2).to_string();
    let one: i64 = sent
        .iter()
        .flat_map(|b| &b.fingerprints)
        .filter(|f| f.image == digest)
        .map(|f| f.items.len() as i64)
        .sum();
    assert_eq!(
        server
            .scalar_i64(&format!(
                "SELECT count(*) FROM fingerprints WHERE image = '{digest}'"
            ))
            .await,
        one
    );

    // A graceful stop persists everything and empties the WAL; the restart reads it all back.
    assert!(server.terminate().success(), "{}", server.log_text());
    server.restart();
    check_fleet(&server, items, sum).await;
    let health = server.healthz();
    assert_eq!(health["engine"]["buffer_partitions"], 0, "{health}");
}

async fn check_fleet(server: &Imprintd, items: i64, sum: i64) {
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        items
    );
    assert_eq!(
        server
            .scalar_i64("SELECT sum(count) FROM fingerprints")
            .await,
        sum
    );
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM windows").await,
        6 * 3 * 20
    );
    assert_eq!(
        server
            .scalar_i64("SELECT count(DISTINCT image) FROM fingerprints")
            .await,
        6
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_tables_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 1,
        containers_per_image: 1,
        nodes: 1,
        ..Default::default()
    });
    for b in fleet.batches(0) {
        server.push(b).await.unwrap();
    }
    let run = |args: &[&str]| server.cli(args);
    let (ok, out, err) = run(&[
        "sql",
        "SELECT kind, count(*) AS n FROM fingerprints WHERE kind = 'syscall' GROUP BY kind",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("| kind") && out.contains("syscall"), "{out}");
    let (ok, out, _) = run(&["sql", "--format", "csv", "SELECT 1 AS one, 'x' AS s"]);
    assert!(ok);
    assert_eq!(out, "one,s\n1,x\n");
    let (ok, out, _) = run(&["sql", "--format", "json", "SELECT 1 AS one"]);
    assert!(ok);
    assert_eq!(out.trim(), r#"{"one":1}"#);
    // A SQL error is reported with DataFusion's message, and an exit code.
    let (ok, _, err) = run(&["sql", "SELECT nope FROM fingerprints"]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
    let (ok, _, err) = run(&["sql", "SELECT * FROM no_such_table"]);
    assert!(!ok);
    assert!(err.contains("no_such_table"), "{err}");
}
