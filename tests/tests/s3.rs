//! The same end-to-end guarantees on a real S3-compatible server (moto on loopback),
//! and an embedded reader on the bucket seeing what the server committed.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::{Imprintd, Moto, item_count, rows_as_text};

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_survives_restarts_and_kill_9_and_is_readable_embedded() {
    let Some(moto) = Moto::start("imprint-test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--object-store",
        "s3",
        "--bucket",
        "imprint-test",
        "--prefix",
        "team-a/store",
        "--endpoint",
        &moto.endpoint,
        "--persist-age",
        "300ms",
    ];
    let env = moto.env();
    let mut server = Imprintd::start_with_env(&dir.path().join("node"), &args, &env);
    let mut fleet = Fleet::new(FleetSpec {
        images: 3,
        containers_per_image: 2,
        nodes: 2,
        ..Default::default()
    });
    let mut acked = Vec::new();
    for w in 0..12 {
        for b in fleet.batches(w) {
            server.push(b.clone()).await.unwrap();
            acked.push(b);
        }
        if w == 5 {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        }
    }
    let items = item_count(&acked);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        items
    );

    // kill -9 after acks, then restart on the same bucket: same rows, once.
    server.kill9();
    server.restart_with_env(&env);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        items,
        "{}",
        server.log_text()
    );
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM (SELECT DISTINCT container_id, time, kind, key FROM fingerprints)").await,
        items
    );
    let query = "SELECT image, kind, key, count(*) AS n, sum(count) AS c FROM fingerprints GROUP BY 1, 2, 3";
    let via_server = rows_as_text(&server.sql(query).await);

    // A graceful stop commits everything to the bucket.
    assert!(server.terminate().success(), "{}", server.log_text());

    // An embedded reader — no server — on the bucket sees all of it.
    let store =
        imprint_query::Store::open_object_store(moto.object_store("imprint-test", "team-a/store"))
            .await
            .unwrap();
    assert!(!store.catalog().files.is_empty());
    let embedded = rows_as_text(&store.sql(query).await.unwrap());
    assert_eq!(embedded, via_server);
    assert!(
        store
            .catalog()
            .files
            .values()
            .all(|f| f.path.starts_with("fingerprints/image=sha256_")
                || f.path.starts_with("windows/image=sha256_"))
    );
}
