//! The catalog: which Parquet files are live, and the facts the server needs to
//! recover exactly (WAL watermarks, agent batch seqs).
//!
//! It is an append-only log in the object store. Commit `N` is the object
//! `catalog/log/<N>.json`, written with a create-if-absent put, so two writers can
//! never both think they wrote commit `N`. Every [`CHECKPOINT_EVERY`] commits the
//! whole state is also written to `catalog/checkpoints/<N>.json`, so opening a store
//! reads one checkpoint and the few commits after it. The state is a pure function
//! of the log: [`CatalogState::apply`] is the only way it changes.

mod state;

pub use state::{
    CatalogState, Commit, FileEntry, InventoryRef, SeqRanges, SummaryEntry, TokenRecord,
};

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::layout::{
    CATALOG_CHECKPOINT_DIR, CATALOG_LOG_DIR, catalog_checkpoint_path, catalog_log_path,
    catalog_seq_of,
};

/// A checkpoint is written after every this many commits.
pub const CHECKPOINT_EVERY: u64 = 64;
/// Checkpoints kept; older ones are deleted when a new one is written.
pub const CHECKPOINTS_KEPT: usize = 2;

/// The catalog of one store, loaded in memory.
#[derive(Debug)]
pub struct Catalog {
    store: Arc<dyn ObjectStore>,
    state: CatalogState,
}

impl Catalog {
    /// Reads the newest checkpoint and every commit after it.
    pub async fn load(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let mut checkpoints: Vec<u64> = store
            .list(Some(&CATALOG_CHECKPOINT_DIR.into()))
            .map_ok(|m| catalog_seq_of(&m.location))
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        checkpoints.sort_unstable();
        let mut state = match checkpoints.last() {
            Some(&seq) => {
                let path = catalog_checkpoint_path(seq);
                let bytes = store.get(&path).await?.bytes().await?;
                serde_json::from_slice::<CatalogState>(&bytes).map_err(|source| {
                    Error::CatalogDecode {
                        path: path.to_string(),
                        source,
                    }
                })?
            }
            None => CatalogState::default(),
        };
        let from = state.seq;
        let mut log: Vec<u64> = store
            .list_with_offset(Some(&CATALOG_LOG_DIR.into()), &catalog_log_path(from))
            .map_ok(|m| catalog_seq_of(&m.location))
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .filter(|&s| s > from)
            .collect();
        log.sort_unstable();
        for seq in log {
            if seq != state.seq + 1 {
                return Err(Error::CatalogGap {
                    after: state.seq,
                    found: seq,
                });
            }
            let path = catalog_log_path(seq);
            let bytes = store.get(&path).await?.bytes().await?;
            let commit: Commit =
                serde_json::from_slice(&bytes).map_err(|source| Error::CatalogDecode {
                    path: path.to_string(),
                    source,
                })?;
            state.apply(&commit);
        }
        debug!(seq = state.seq, files = state.files.len(), "catalog loaded");
        Ok(Self { store, state })
    }

    pub fn state(&self) -> &CatalogState {
        &self.state
    }

    /// Writes `commit` as the next log object and applies it. Fails with
    /// [`Error::CatalogConflict`] when that commit number already exists.
    pub async fn commit(&mut self, mut commit: Commit) -> Result<u64> {
        let seq = self.state.seq + 1;
        commit.seq = seq;
        let body = serde_json::to_vec(&commit).expect("a commit always serialises");
        let put = self
            .store
            .put_opts(
                &catalog_log_path(seq),
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(Error::CatalogConflict { seq });
            }
            Err(e) => return Err(e.into()),
        }
        self.state.apply(&commit);
        if seq.is_multiple_of(CHECKPOINT_EVERY) {
            self.write_checkpoint().await;
        }
        Ok(seq)
    }

    /// Writes the current state as a checkpoint. A failure only costs a longer load
    /// later, so it is logged, not returned.
    async fn write_checkpoint(&self) {
        let body = serde_json::to_vec(&self.state).expect("state always serialises");
        let put = self
            .store
            .put_opts(
                &catalog_checkpoint_path(self.state.seq),
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await;
        match put {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
                info!(seq = self.state.seq, "catalog checkpoint written");
                self.prune_checkpoints().await;
            }
            Err(e) => warn!(seq = self.state.seq, error = %e, "catalog checkpoint failed"),
        }
    }

    /// Deletes every checkpoint but the newest [`CHECKPOINTS_KEPT`]: a load reads
    /// only the newest, and each holds the whole state (megabytes on a big store),
    /// so keeping them all would grow the catalog quadratically. The log objects
    /// stay (the history of commits; loads skip them by listing from an offset).
    async fn prune_checkpoints(&self) {
        let listed: std::result::Result<Vec<_>, _> = self
            .store
            .list(Some(&CATALOG_CHECKPOINT_DIR.into()))
            .try_collect()
            .await;
        let mut old: Vec<(u64, object_store::path::Path)> = match listed {
            Ok(metas) => metas
                .into_iter()
                .filter_map(|m| catalog_seq_of(&m.location).map(|s| (s, m.location)))
                .collect(),
            Err(e) => {
                warn!(error = %e, "listing catalog checkpoints failed; old ones stay");
                return;
            }
        };
        old.sort_unstable_by_key(|(s, _)| std::cmp::Reverse(*s));
        for (seq, path) in old.into_iter().skip(CHECKPOINTS_KEPT) {
            if let Err(e) = self.store.delete(&path).await {
                warn!(seq, error = %e, "deleting an old catalog checkpoint failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
