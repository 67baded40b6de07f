//! An ack means the data survives kill -9; restarts neither lose nor duplicate rows.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use std::time::Duration;

use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::{Imprintd, item_count};

async fn assert_exactly(server: &Imprintd, items: i64, what: &str) {
    let total = server.scalar_i64("SELECT count(*) FROM fingerprints").await;
    let distinct = server
        .scalar_i64("SELECT count(*) FROM (SELECT DISTINCT container_id, time, kind, key FROM fingerprints)")
        .await;
    assert_eq!(
        total,
        items,
        "{what}: rows after restart; log:\n{}",
        server.log_text()
    );
    assert_eq!(distinct, total, "{what}: duplicated rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_acks_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Persist often, so each cycle has rows in Parquet, in flight and only in the WAL.
    let mut server = Imprintd::start(
        &dir.path().join("data"),
        &["--persist-age", "200ms", "--wal-segment-bytes", "256KiB"],
    );
    let mut fleet = Fleet::new(FleetSpec {
        images: 4,
        containers_per_image: 2,
        nodes: 2,
        ..Default::default()
    });
    let mut acked = Vec::new();
    let mut w = 0;
    for cycle in 0..6 {
        for step in 0..8 {
            for b in fleet.batches(w) {
                let ack = server.push(b.clone()).await.unwrap();
                assert!(!ack.duplicate);
                acked.push(b);
            }
            w += 1;
            // Sometimes give the persister time to run between pushes.
            if (cycle + step) % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        // kill -9 immediately after the last ack.
        server.kill9();
        server.restart();
        assert_exactly(&server, item_count(&acked), &format!("cycle {cycle}")).await;
        // A batch re-sent after the restart is recognised as applied.
        let last = acked.last().unwrap().clone();
        assert!(
            server.push(last).await.unwrap().duplicate,
            "cycle {cycle}: re-sent batch applied twice"
        );
    }
    let health = server.healthz();
    assert!(
        health["engine"]["files"].as_u64().unwrap() > 0,
        "no persistence happened: {health}"
    );
    assert!(
        server.log_text().contains("WAL replayed"),
        "no cycle exercised replay"
    );
}

/// Crashes the server at each step of persisting a partition — file written but not
/// committed; committed but the buffer and WAL not yet updated; WAL not yet
/// truncated — and checks that the restart has every row exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_persistence_loses_and_duplicates_nothing() {
    for point in ["after_file_put", "after_commit", "before_wal_drop"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args = ["--persist-age", "500ms"];
        let mut server =
            Imprintd::start_with_env(&data, &args, &[("IMPRINT_TEST_CRASH_AT", point)]);
        let mut fleet = Fleet::new(FleetSpec {
            images: 2,
            containers_per_image: 2,
            nodes: 1,
            ..Default::default()
        });
        let mut acked = Vec::new();
        for w in 0..3 {
            for b in fleet.batches(w) {
                server.push(b.clone()).await.unwrap();
                acked.push(b);
            }
        }
        // The persister runs within a second and aborts at the crash point.
        let status = server.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{point}: expected an abort");
        assert!(
            server.log_text().contains("IMPRINT_TEST_CRASH_AT"),
            "{point}: {}",
            server.log_text()
        );
        if point == "after_file_put" {
            let on_disk = imprint_e2e::files_under(&data.join("fingerprints"), "");
            assert!(
                on_disk > 0,
                "{point}: the file should have been written before the crash"
            );
        }
        server.restart_with_env(&[]);
        assert_exactly(&server, item_count(&acked), point).await;
        for b in &acked {
            assert!(
                server.push(b.clone()).await.unwrap().duplicate,
                "{point}: batch {} applied twice",
                b.seq
            );
        }
        // And once persisted again, still exactly once.
        assert!(server.terminate().success());
        server.restart_with_env(&[]);
        assert_exactly(&server, item_count(&acked), point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restarts_keep_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Imprintd::start(&dir.path().join("data"), &[]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 3,
        containers_per_image: 2,
        nodes: 2,
        ..Default::default()
    });
    let mut acked = Vec::new();
    for w in 0..5 {
        for b in fleet.batches(w) {
            server.push(b.clone()).await.unwrap();
            acked.push(b);
        }
    }
    let query = "SELECT container_id, time, kind, key, count FROM fingerprints ORDER BY 1, 2, 3, 4";
    let before = imprint_e2e::rows_as_text(&server.sql(query).await);
    for _ in 0..2 {
        assert!(server.terminate().success());
        server.restart();
        assert_eq!(imprint_e2e::rows_as_text(&server.sql(query).await), before);
    }
    assert_eq!(before.len() as i64, item_count(&acked));
    // With the WAL empty, exactly-once comes from the catalog alone.
    for b in &acked {
        assert!(
            server.push(b.clone()).await.unwrap().duplicate,
            "batch {} applied twice after restart",
            b.seq
        );
    }
    // After a graceful stop everything is in Parquet: no WAL to replay.
    assert!(
        !server.log_text().contains("WAL replayed"),
        "{}",
        server.log_text()
    );
}

#[test]
fn corruption_before_the_tail_stops_the_start_and_names_file_and_offset() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Imprintd::start(&data, &["--persist-age", "1h"]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 1,
        containers_per_image: 1,
        nodes: 1,
        ..Default::default()
    });
    rt.block_on(async {
        for w in 0..3 {
            for b in fleet.batches(w) {
                server.push(b).await.unwrap();
            }
        }
    });
    server.kill9();
    // Flip a byte inside the first record of the oldest segment.
    let mut segs: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let seg = segs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 100)
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x5a;
    std::fs::write(&seg, bytes).unwrap();

    let (status, err) = imprint_e2e::serve_expecting_failure(&data);
    assert!(!status.success());
    assert!(err.contains(&seg.display().to_string()), "{err}");
    assert!(err.contains("byte offset 8"), "{err}");
}
