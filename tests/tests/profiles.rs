//! Profile behaviour as sqllogictest files (`tests/slt/profiles/*.slt`), each run
//! against its own real `imprintd`, scenarios pushed through gRPC ingest.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use imprint_e2e::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_slt_files() {
    imprint_e2e::slt::run_dir(&workspace_root().join("tests/slt/profiles")).await;
}

/// Both profile tables as sorted text lines.
async fn profile_tables(server: &imprint_e2e::Imprintd) -> Vec<String> {
    let mut rows = imprint_e2e::rows_as_text(&server.sql("SELECT * FROM profile_status").await);
    rows.extend(imprint_e2e::rows_as_text(
        &server.sql("SELECT * FROM profiles").await,
    ));
    rows.sort();
    rows
}

/// The live profiles (kept current at ingest) equal the ones rebuilt at start from
/// summaries + WAL after kill -9, and the ones aggregated from the raw Parquet rows
/// when the summaries are gone (a store written before summaries existed, or a
/// summary object lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_rebuilt_from_summaries_wal_or_raw_rows_equal_the_live_ones() {
    use imprint_bench::{Fleet, FleetSpec};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = imprint_e2e::Imprintd::start(&data, &["--persist-age", "300ms"]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 3,
        containers_per_image: 3,
        nodes: 2,
        ..Default::default()
    });
    for w in 0..40 {
        for b in fleet.batches(w) {
            server.push(b).await.unwrap();
        }
        if w % 10 == 0 {
            // Let some partitions persist (with their summaries) mid-way.
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        }
    }
    let live = profile_tables(&server).await;
    assert!(live.len() > 3, "expected profiles, got {live:?}");

    server.kill9();
    server.restart();
    assert_eq!(profile_tables(&server).await, live, "after kill -9");
    let log = server.log_text();
    assert!(
        log.contains("profiles computed from stored data"),
        "no rebuild line in the log:\n{log}"
    );

    // Roll the summaries up (from two per image here; 24 by default): the server
    // restarted from the merged summaries has the same profiles, from fewer objects.
    assert!(server.terminate().success());
    let before = imprint_e2e::files_under(&data.join("profiles"), ".json.zst");
    server.restart_with_env(&[("IMPRINT_SUMMARY_ROLLUP_PARTS", "2")]);
    // In the background, soon after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !server
        .log_text()
        .contains("profile summaries rolled up into one")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no rollup in the log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(profile_tables(&server).await, live, "after rolling up");
    server.kill9();
    server.restart();
    let after = imprint_e2e::files_under(&data.join("profiles"), ".json.zst");
    assert!(
        (3..before).contains(&after),
        "{before} summaries before the rollup, {after} after (3 images)"
    );
    assert_eq!(
        profile_tables(&server).await,
        live,
        "started from the rolled-up summaries"
    );

    // A graceful stop persists everything; an embedded reader of the store sees the
    // same profiles (from the summaries).
    assert!(server.terminate().success());
    let store = imprint_query::Store::open(data.to_str().unwrap())
        .await
        .unwrap();
    let mut embedded =
        imprint_e2e::rows_as_text(&store.sql("SELECT * FROM profile_status").await.unwrap());
    embedded.extend(imprint_e2e::rows_as_text(
        &store.sql("SELECT * FROM profiles").await.unwrap(),
    ));
    embedded.sort();
    assert_eq!(embedded, live, "embedded Store");

    // Then lose every summary.
    let summaries = data.join("profiles");
    assert!(
        summaries.is_dir(),
        "no summaries under {}",
        summaries.display()
    );
    std::fs::remove_dir_all(&summaries).unwrap();
    server.restart();
    assert_eq!(profile_tables(&server).await, live, "from raw rows");
    assert!(
        server
            .log_text()
            .contains("aggregating its raw files instead"),
        "the lost summaries were not reported:\n{}",
        server.log_text()
    );
}
