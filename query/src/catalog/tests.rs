use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::*;
use crate::schema::StoredTable;

fn file(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        table: StoredTable::Fingerprints,
        image: "sha256:x".into(),
        hour: 0,
        min_time: 1,
        max_time: 2,
        rows: 3,
        bytes: 4,
    }
}

#[tokio::test]
async fn commits_replay_to_the_same_state_across_checkpoints() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut cat = Catalog::load(store.clone()).await.unwrap();
    // Enough commits to cross a checkpoint, adding and removing files.
    for i in 0..(CHECKPOINT_EVERY + 5) {
        let mut c = Commit {
            add: vec![file(&format!("f{i}"))],
            ..Default::default()
        };
        if i % 3 == 0 {
            c.remove.push(format!("f{}", i / 2));
        }
        c.wal_watermarks.insert("p".into(), i);
        cat.commit(c).await.unwrap();
    }
    let reloaded = Catalog::load(store.clone()).await.unwrap();
    assert_eq!(reloaded.state(), cat.state());
    assert_eq!(reloaded.state().seq, CHECKPOINT_EVERY + 5);
    assert_eq!(reloaded.state().wal_watermarks["p"], CHECKPOINT_EVERY + 4);
}

#[tokio::test]
async fn only_the_newest_checkpoints_are_kept_and_the_state_still_loads() {
    use futures::TryStreamExt;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut cat = Catalog::load(store.clone()).await.unwrap();
    for i in 0..(CHECKPOINT_EVERY * 4 + 3) {
        cat.commit(Commit {
            add: vec![file(&format!("f{i}"))],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut kept: Vec<u64> = store
        .list(Some(&CATALOG_CHECKPOINT_DIR.into()))
        .map_ok(|m| catalog_seq_of(&m.location).unwrap())
        .try_collect()
        .await
        .unwrap();
    kept.sort_unstable();
    assert_eq!(kept, vec![CHECKPOINT_EVERY * 3, CHECKPOINT_EVERY * 4]);
    let reloaded = Catalog::load(store).await.unwrap();
    assert_eq!(reloaded.state(), cat.state());
}

#[tokio::test]
async fn a_second_writer_gets_a_conflict_not_a_silent_overwrite() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut a = Catalog::load(store.clone()).await.unwrap();
    let mut b = Catalog::load(store.clone()).await.unwrap();
    a.commit(Commit {
        add: vec![file("a")],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = b
        .commit(Commit {
            add: vec![file("b")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CatalogConflict { seq: 1 }), "{err}");
    let reloaded = Catalog::load(store).await.unwrap();
    assert!(reloaded.state().files.contains_key("a"));
    assert!(!reloaded.state().files.contains_key("b"));
}

#[tokio::test]
async fn a_corrupt_commit_names_the_object() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    store
        .put(&catalog_log_path(1), PutPayload::from_static(b"{not json"))
        .await
        .unwrap();
    let err = Catalog::load(store).await.unwrap_err().to_string();
    assert!(
        err.contains("catalog/log/00000000000000000001.json"),
        "{err}"
    );
}

#[tokio::test]
async fn a_gap_in_the_log_is_an_error() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let body = serde_json::to_vec(&Commit {
        seq: 2,
        ..Default::default()
    })
    .unwrap();
    store
        .put(&catalog_log_path(2), PutPayload::from(body))
        .await
        .unwrap();
    let err = Catalog::load(store).await.unwrap_err();
    assert!(
        matches!(err, Error::CatalogGap { after: 0, found: 2 }),
        "{err}"
    );
}

#[test]
fn forgetting_watermarks_keeps_newer_ones() {
    let mut s = CatalogState::default();
    let mut c = Commit::default();
    c.wal_watermarks.insert("old".into(), 5);
    c.wal_watermarks.insert("new".into(), 50);
    s.apply(&c);
    s.apply(&Commit {
        forget_watermarks_below: Some(10),
        ..Default::default()
    });
    assert!(!s.wal_watermarks.contains_key("old"));
    assert_eq!(s.wal_watermarks["new"], 50);
}
