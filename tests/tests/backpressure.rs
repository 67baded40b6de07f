//! At the buffer bound ingest answers RESOURCE_EXHAUSTED and forces persistence;
//! agents that retry get everything stored, nothing lost.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use std::time::Duration;

use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::{Imprintd, item_count};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_pushes_back_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // A tiny bound (each batch is larger than it) and no age-based persistence.
    let server = Imprintd::start(
        &dir.path().join("data"),
        &["--max-buffer-bytes", "64KiB", "--persist-age", "1h"],
    );
    let mut fleet = Fleet::new(FleetSpec {
        images: 4,
        containers_per_image: 2,
        nodes: 4,
        ..Default::default()
    });
    let batches: Vec<_> = (0..10).flat_map(|w| fleet.batches(w)).collect();
    let mut tasks = Vec::new();
    let mut by_agent: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for b in &batches {
        by_agent
            .entry(b.agent_id.clone())
            .or_default()
            .push(b.clone());
    }
    for (_, mine) in by_agent {
        let mut client = server.ingest().await;
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for b in mine {
                loop {
                    match client.push(b.clone()).await {
                        Ok(_) => break,
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            assert!(
                                s.message().contains("write buffer is full"),
                                "{}",
                                s.message()
                            );
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(s) => panic!("unexpected {s:?}"),
                    }
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert!(refused > 0, "the buffer bound was never hit");
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        item_count(&batches)
    );
    assert!(server.healthz()["engine"]["files"].as_u64().unwrap() > 0);
}
