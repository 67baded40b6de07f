//! Every validation rule refuses the whole batch with INVALID_ARGUMENT, a message
//! naming the field and the fingerprint's index, and stores nothing of it — except an
//! over-long item key, which is dropped and counted (the last test).

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use imprint_e2e::Imprintd;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};
use tonic::Code;

use imprint_e2e::now_micros;

fn fingerprint(n: usize) -> Fingerprint {
    let end = now_micros() - 1_000_000;
    Fingerprint {
        node: "node-1".into(),
        container_id: format!("container-{n}"),
        image: imprint_bench::digest_of(n as u64),
        image_name: "app:1".into(),
        window_start_unix_micros: end - 30_000_000,
        window_end_unix_micros: end,
        items: vec![
            Item {
                kind: ItemKind::Process as i32,
                key: "/usr/bin/app".into(),
                count: 1,
            },
            Item {
                kind: ItemKind::TcpOut as i32,
                key: "443".into(),
                count: 2,
            },
        ],
        completeness: None,
    }
}

/// A batch whose first fingerprint is fine and whose second is broken by `f`.
fn broken(seq: u64, f: impl FnOnce(&mut Fingerprint)) -> FingerprintBatch {
    let mut bad = fingerprint(1);
    f(&mut bad);
    FingerprintBatch {
        agent_id: "agent".into(),
        seq,
        fingerprints: vec![fingerprint(0), bad],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_rule_refuses_the_whole_batch_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let now = now_micros();
    let cases: Vec<(&str, FingerprintBatch, &str)> = vec![
        (
            "bad digest",
            broken(1, |f| f.image = "sha256:1234".into()),
            "fingerprints[1].image:",
        ),
        (
            "tag instead of digest",
            broken(2, |f| f.image = "nginx:latest".into()),
            "fingerprints[1].image:",
        ),
        (
            "uppercase hex",
            broken(3, |f| {
                f.image = f.image.to_uppercase().replace("SHA256", "sha256")
            }),
            "fingerprints[1].image:",
        ),
        (
            "unknown kind",
            broken(4, |f| f.items[1].kind = 42),
            "fingerprints[1].items[1].kind: unknown item kind 42",
        ),
        (
            "unspecified kind",
            broken(5, |f| f.items[0].kind = 0),
            "fingerprints[1].items[0].kind",
        ),
        (
            "empty key",
            broken(6, |f| f.items[0].key.clear()),
            "fingerprints[1].items[0].key: is empty",
        ),
        (
            "port out of range",
            broken(8, |f| f.items[1].key = "65536".into()),
            "fingerprints[1].items[1].key: port \"65536\"",
        ),
        (
            "port not a number",
            broken(9, |f| f.items[1].key = "https".into()),
            "fingerprints[1].items[1].key: port",
        ),
        (
            "end before start",
            broken(10, |f| {
                f.window_end_unix_micros = f.window_start_unix_micros
            }),
            "fingerprints[1].window_end_unix_micros: window end",
        ),
        (
            "window over 1 h",
            broken(11, |f| {
                f.window_start_unix_micros = f.window_end_unix_micros - 3_600_000_001
            }),
            "fingerprints[1].window_end_unix_micros: window of 3600 s",
        ),
        (
            "future window",
            broken(12, |f| {
                f.window_start_unix_micros = now + 600_000_000;
                f.window_end_unix_micros = now + 630_000_000;
            }),
            "fingerprints[1].window_end_unix_micros: window ends",
        ),
        (
            "empty node",
            broken(13, |f| f.node.clear()),
            "fingerprints[1].node: is empty",
        ),
        (
            "empty container id",
            broken(14, |f| f.container_id.clear()),
            "fingerprints[1].container_id: is empty",
        ),
        (
            "duplicate item",
            broken(15, |f| {
                let i = f.items[0].clone();
                f.items.push(i)
            }),
            "fingerprints[1].items[2].key",
        ),
        (
            "no fingerprints",
            FingerprintBatch {
                agent_id: "agent".into(),
                seq: 16,
                fingerprints: vec![],
            },
            "fingerprints: a batch needs",
        ),
        (
            "no agent id",
            FingerprintBatch {
                agent_id: String::new(),
                seq: 17,
                fingerprints: vec![fingerprint(0)],
            },
            "agent_id: is empty",
        ),
    ];
    for (what, batch, want) in cases {
        let err = server.push(batch).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().starts_with(want),
            "{what}: message {:?} should start with {want:?}",
            err.message()
        );
    }
    // Over 16 MiB: many distinct 4 KiB keys.
    let mut huge = fingerprint(0);
    huge.items = (0..4200)
        .map(|i| Item {
            kind: ItemKind::FileRead as i32,
            key: format!("/{i:04}/{}", "x".repeat(4000)),
            count: 1,
        })
        .collect();
    let err = server
        .push(FingerprintBatch {
            agent_id: "agent".into(),
            seq: 18,
            fingerprints: vec![huge],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("batch: "), "{}", err.message());
    assert!(err.message().contains("16 MiB"), "{}", err.message());

    // Nothing of any refused batch was stored, not even its valid fingerprint.
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        0
    );
    assert_eq!(server.scalar_i64("SELECT count(*) FROM windows").await, 0);

    // A refused seq is not burnt: the corrected batch with the same seq is applied.
    let fixed = FingerprintBatch {
        agent_id: "agent".into(),
        seq: 1,
        fingerprints: vec![fingerprint(0), fingerprint(1)],
    };
    let ack = server.push(fixed).await.unwrap();
    assert!(!ack.duplicate);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        4
    );
}

/// One item key over the limit (a container chose an absurd path) does not refuse the node's
/// batch: that item is dropped and counted in the window's `dropped_events`, everything else
/// is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_over_long_key_is_dropped_and_counted_not_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let mut hostile = fingerprint(1);
    hostile.items.push(Item {
        kind: ItemKind::FileRead as i32,
        key: format!("/{}", "a".repeat(5000)),
        count: 1,
    });
    let batch = FingerprintBatch {
        agent_id: "agent".into(),
        seq: 1,
        fingerprints: vec![fingerprint(0), hostile],
    };
    server.push(batch).await.unwrap();
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        4,
        "both fingerprints' other items are stored"
    );
    assert_eq!(
        server
            .scalar_i64("SELECT CAST(sum(dropped_events) AS BIGINT) FROM windows WHERE container_id = 'container-1'")
            .await,
        1
    );
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM fingerprints WHERE length(key) > 4096")
            .await,
        0
    );
}

/// A container that touches endless distinct paths cannot grow its image's profile past
/// --max-profile-items: the items past it are counted, the profile says `item_cap`, and the
/// raw fingerprints still hold everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_profile_holds_at_most_max_profile_items_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &["--max-profile-items", "5"]);
    let mut fp = fingerprint(0);
    fp.items = (0..10)
        .map(|i| Item {
            kind: ItemKind::FileRead as i32,
            key: format!("/random/{i}"),
            count: 1,
        })
        .collect();
    let batch = FingerprintBatch {
        agent_id: "agent".into(),
        seq: 1,
        fingerprints: vec![fp],
    };
    server.push(batch).await.unwrap();
    assert_eq!(server.scalar_i64("SELECT count(*) FROM profiles").await, 5);
    let rows = imprint_e2e::rows_as_text(
        &server
            .sql("SELECT completeness, incomplete_reasons FROM profile_status")
            .await,
    );
    assert_eq!(rows, vec!["partial|item_cap".to_string()]);
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        10
    );
}
