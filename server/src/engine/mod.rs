//! The storage engine: WAL → write buffer → Parquet → catalog.
//!
//! Ingest path. A validated batch goes to the single writer thread, which takes
//! every batch waiting (group commit), drops the ones already applied (by
//! `(agent_id, seq)`), appends the rest to the WAL with one fsync, records them as
//! applied and appends their rows to the write buffer — then acks. Order matters:
//! a batch is marked applied only once it is durable, and before its rows can be
//! persisted, so every catalog commit's saved seqs cover every persisted row.
//!
//! Persist path. A partition due (by age, size, memory pressure or shutdown) is
//! taken out of the active buffer (still visible to queries), encoded as Parquet,
//! written to the object store, and committed to the catalog together with its WAL
//! watermark and the applied seqs. Then, in one step under the buffer lock, the
//! query view switches from the buffered rows to the file. Finally WAL segments no
//! buffered row needs are deleted. A crash between any two steps loses nothing
//! (the WAL still has it) and duplicates nothing (replay skips rows at or below
//! their partition's committed watermark; an uncommitted file is never visible).

pub mod buffer;
pub mod parquet;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, ItemKind, PushAck};
use imprint_query::catalog::{
    Catalog, CatalogState, Commit, FileEntry, InventoryRef, SummaryEntry,
};
use imprint_query::inuse::state::{InUseState, Part, encode_advisories, encode_part};
use imprint_query::inuse::tables::{self as inuse_tables, InUseSource, Snapshot};
use imprint_query::inuse::vulns::Advisory;
use imprint_query::layout::PartitionKey;
use imprint_query::policy::evaluate::{self, Evaluator};
use imprint_query::policy::{Anomaly, Policy};
use imprint_query::profile::tables::{self as profile_tables, ProfileSource, select_profiles};
use imprint_query::profile::{ImageProfile, WindowFacts, rebuild, summary};
use imprint_query::prune::PartitionFilter;
use imprint_query::schema::StoredTable;
use imprint_query::settings::{self, FINGERPRINT_RETENTION};
use imprint_query::store::{default_session_config, new_session};
use imprint_query::table::{TableView, ViewSource, prune_files};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::alerts::AlertStats;
use crate::dedup::{AppliedSeqs, Seen};
use crate::validate::{Invalid, drop_oversized_keys, validate_batch};
use crate::wal::{Wal, WalError};
use buffer::{Buffer, PersistJob};

/// Engine settings (the server's flags fill them in).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub wal_dir: PathBuf,
    pub wal_segment_bytes: u64,
    /// Ingest answers RESOURCE_EXHAUSTED at this many buffered bytes.
    pub max_buffer_bytes: usize,
    /// A partition is persisted at this size...
    pub persist_partition_bytes: usize,
    /// ...or this long after its first row.
    pub persist_age: Duration,
    /// How often the persister looks for due partitions.
    pub persist_check_interval: Duration,
    /// An image's profile summaries are merged into one when it has this many.
    pub summary_rollup_parts: usize,
    /// A window that started longer ago than this is refused (`--max-window-age`).
    pub max_window_age: Duration,
}

impl EngineConfig {
    pub fn new(wal_dir: PathBuf) -> Self {
        Self {
            wal_dir,
            wal_segment_bytes: 64 << 20,
            max_buffer_bytes: 1 << 30,
            persist_partition_bytes: 64 << 20,
            persist_age: Duration::from_secs(300),
            persist_check_interval: Duration::from_secs(1),
            summary_rollup_parts: 24,
            max_window_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Store(#[from] imprint_query::Error),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("WAL record {seq} does not decode as a batch: {source}")]
    WalDecode {
        seq: u64,
        source: prost::DecodeError,
    },
    #[error("encoding Parquet: {0}")]
    Encode(#[from] parquet::EncodeError),
    #[error("DataFusion: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
}

/// Why a push was not applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(Invalid),
    #[error(
        "write buffer is full ({used} of {max} bytes): persisting to make room; \
         retry the same batch (same seq) shortly"
    )]
    BufferFull { used: usize, max: usize },
    #[error("the WAL failed and ingest is stopped until the server restarts: {0}")]
    WalFailed(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(
        "batch seq {seq} of agent {agent:?} is below the oldest seq the server still tells \
         apart ({floor}; last applied {last}): the agent's clock stepped back, or two agents \
         share this id. Renumber the batch above {last} and send it again"
    )]
    SeqBehind {
        agent: String,
        seq: u64,
        floor: u64,
        last: u64,
    },
}

struct WriteRequest {
    batch: FingerprintBatch,
    encoded: Vec<u8>,
    reply: oneshot::Sender<Result<PushAck, IngestError>>,
}

/// What queries see: the buffer and the catalog, switched together.
#[derive(Debug)]
struct Live {
    buffer: Buffer,
    catalog: Arc<CatalogState>,
    /// Every image's profile over everything acked (files and buffer), kept
    /// current by the writer in the same step as the buffer.
    profiles: HashMap<String, ImageProfile>,
    /// Image → when its profile last started again: the catalog's resets, plus
    /// one being committed (see [`Engine::reset_profile`]).
    resets: HashMap<String, i64>,
    /// Inventories, scanner reports and advisories (replaced whole on import).
    inuse: Arc<InUseState>,
    /// Policy evaluation, fed every fingerprint in the same step as `profiles`.
    evaluator: Evaluator,
}

impl Live {
    fn reset_of(&self, image: &str) -> i64 {
        self.resets.get(image).copied().unwrap_or(i64::MIN)
    }
}

#[derive(Debug)]
struct LiveView(Arc<RwLock<Live>>);

impl ViewSource for LiveView {
    fn view(
        &self,
        table: StoredTable,
        filter: &PartitionFilter,
    ) -> datafusion::error::Result<TableView> {
        let live = self.0.read();
        let batches = live.buffer.view(table, filter)?;
        Ok(TableView {
            batches,
            files: prune_files(live.catalog.files_of(table), filter),
        })
    }

    fn settings(&self) -> BTreeMap<String, String> {
        self.0.read().catalog.settings.clone()
    }

    fn policies(&self) -> Vec<Policy> {
        self.0.read().catalog.policies.values().cloned().collect()
    }
}

impl ProfileSource for LiveView {
    fn profiles(&self, filter: &PartitionFilter) -> Vec<(String, i64, ImageProfile)> {
        let live = self.0.read();
        select_profiles(&live.catalog, &live.profiles, filter)
    }
}

impl InUseSource for LiveView {
    fn snapshot(&self, filter: &PartitionFilter) -> Snapshot {
        let live = self.0.read();
        inuse_tables::snapshot(&live.inuse, &live.profiles, &live.catalog.settings, filter)
    }
}

/// Adds one fingerprint to its image's profile, unless its window started before
/// the image's profile was last reset (`reset_at`), and returns the anomalies the
/// enabled policies find in it (items outside a done-learning baseline).
fn observe(
    profiles: &mut HashMap<String, ImageProfile>,
    evaluator: &mut Evaluator,
    catalog: &CatalogState,
    reset_at: i64,
    fp: &Fingerprint,
) -> Vec<Anomaly> {
    if fp.window_start_unix_micros < reset_at {
        return Vec::new();
    }
    let watched = evaluator.watch(catalog, &fp.image, &fp.image_name);
    let profile = match profiles.get_mut(&fp.image) {
        Some(p) => p,
        None => profiles.entry(fp.image.clone()).or_default(),
    };
    let c = fp.completeness.unwrap_or_default();
    let outside = profile.apply_watching(
        &fp.image_name,
        &fp.node,
        &fp.container_id,
        (fp.window_start_unix_micros, fp.window_end_unix_micros),
        WindowFacts {
            dropped_events: c.dropped_events,
            capture_paused: c.capture_paused,
            started_after_container: c.started_after_container,
        },
        |p| watched.and_then(|period| p.learned_at(period)),
        fp.items.iter().map(|i| {
            let kind = ItemKind::try_from(i.kind).unwrap_or(ItemKind::Unspecified);
            (kind.sql_name(), i.key.as_str(), i.count)
        }),
    );
    if outside.is_empty() {
        return Vec::new();
    }
    evaluator.evaluate(fp, profile, &outside)
}

/// What `imprint profile reset` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileReset {
    /// The profile counts windows that start at or after this moment (µs).
    pub reset_at: i64,
}

/// Anomalies a live receiver (stream, webhook) may fall behind by before it
/// misses some (it is told how many).
const ANOMALY_CHANNEL: usize = 16 * 1024;

/// How often the persister applies `storage.fingerprint_retention` (also at start
/// and when the setting changes).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Shared between the engine and its writer thread.
struct Shared {
    wal: Mutex<Wal>,
    applied: Mutex<AppliedSeqs>,
    live: Arc<RwLock<Live>>,
    buffer_bytes: AtomicUsize,
    wal_failed: AtomicBool,
    persist_wanted: Notify,
    max_buffer_bytes: usize,
    /// Every anomaly found at ingest, as it is found.
    anomalies: tokio::sync::broadcast::Sender<Arc<Anomaly>>,
    alert_stats: Arc<AlertStats>,
    /// Batches refused as [`IngestError::SeqBehind`] since start.
    seq_behind: AtomicU64,
}

pub struct Engine {
    object_store: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
    catalog: tokio::sync::Mutex<Catalog>,
    writer: mpsc::Sender<WriteRequest>,
    persist_lock: tokio::sync::Mutex<()>,
    /// Serialises In Use imports (copy-on-write of the shared state).
    inuse_lock: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
    session: SessionContext,
    config: EngineConfig,
    /// The catalog seq of the last metadata change (tokens, settings).
    meta_changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Figures for `/healthz` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStats {
    pub buffer_bytes: usize,
    pub buffer_partitions: usize,
    pub files: usize,
    pub catalog_seq: u64,
    pub wal_segments: usize,
    pub wal_failed: bool,
    /// Batches refused since start because their seq was below the agent's floor.
    pub seq_behind_refused: u64,
}

impl Engine {
    /// Opens the store's catalog, replays the WAL into the buffer, and starts the
    /// writer thread.
    pub async fn open(
        object_store: Arc<dyn ObjectStore>,
        config: EngineConfig,
    ) -> Result<Arc<Self>, EngineError> {
        let catalog = Catalog::load(object_store.clone()).await?;
        let (wal, records) = Wal::open(&config.wal_dir, config.wal_segment_bytes)?;
        let state = catalog.state();
        // Profiles are derived from what is stored: the summaries (and any raw file
        // no summary covers), then the rows replayed from the WAL.
        let started = std::time::Instant::now();
        let (mut profiles, rebuilt) = rebuild::from_store(object_store.clone(), state).await?;
        let inuse = InUseState::load(object_store.clone(), state).await?;
        // The throttle remembers the anomalies already stored; the ones of rows
        // still in the WAL are found again as those rows are replayed.
        let mut evaluator = Evaluator::default();
        let seeded = evaluate::seed_throttle(object_store.clone(), state, &mut evaluator).await?;
        let mut replayed_anomalies = 0usize;
        let mut applied = AppliedSeqs::from_catalog(&state.agent_seqs);
        let mut buffer = Buffer::default();
        let (mut replayed_items, skipped) = (0u64, std::cell::Cell::new(0usize));
        for r in &records {
            let batch = FingerprintBatch::decode(r.payload.as_slice())
                .map_err(|source| EngineError::WalDecode { seq: r.seq, source })?;
            applied.insert(&batch.agent_id, batch.seq);
            let persisted = |k: &PartitionKey| state.watermark(k) >= r.seq;
            replayed_items += buffer.apply(r.seq, &batch, &|k| {
                let done = persisted(k);
                if done {
                    skipped.set(skipped.get() + 1);
                }
                done
            });
            for fp in &batch.fingerprints {
                let key = PartitionKey::new(fp.image.as_str(), fp.window_start_unix_micros);
                if !persisted(&key) {
                    let reset_at = state.profile_reset(&fp.image);
                    let found = observe(&mut profiles, &mut evaluator, state, reset_at, fp);
                    replayed_anomalies += found.len();
                    buffer.apply_anomalies(r.seq, &found);
                }
            }
        }
        info!(
            images = profiles.len(),
            summaries = rebuilt.summaries,
            summaries_before_reset = rebuilt.summaries_before_reset,
            raw_files = rebuilt.raw_files,
            throttled_items = seeded,
            ms = started.elapsed().as_millis() as u64,
            "profiles computed from stored data"
        );
        if !records.is_empty() {
            info!(
                records = records.len(),
                items = replayed_items,
                fingerprints_already_persisted = skipped.get(),
                anomalies = replayed_anomalies,
                "WAL replayed"
            );
        }
        let live = Arc::new(RwLock::new(Live {
            buffer,
            catalog: Arc::new(state.clone()),
            profiles,
            resets: state
                .profile_resets
                .iter()
                .map(|(i, at)| (i.clone(), *at))
                .collect(),
            inuse: Arc::new(inuse),
            evaluator,
        }));
        let session = new_session(
            object_store.clone(),
            Arc::new(LiveView(live.clone())),
            default_session_config(),
            // Queries never spill to local disk: a query over its memory limit fails
            // (RESOURCE_EXHAUSTED) instead of filling the server's disk.
            RuntimeEnvBuilder::new().with_disk_manager_builder(
                datafusion::execution::disk_manager::DiskManagerBuilder::default()
                    .with_mode(datafusion::execution::disk_manager::DiskManagerMode::Disabled),
            ),
        )?;
        profile_tables::register(&session, Arc::new(LiveView(live.clone())))?;
        inuse_tables::register(&session, Arc::new(LiveView(live.clone())))?;
        let buffer_bytes = live.read().buffer.bytes();
        let shared = Arc::new(Shared {
            wal: Mutex::new(wal),
            applied: Mutex::new(applied),
            live,
            buffer_bytes: AtomicUsize::new(buffer_bytes),
            wal_failed: AtomicBool::new(false),
            persist_wanted: Notify::new(),
            max_buffer_bytes: config.max_buffer_bytes,
            anomalies: tokio::sync::broadcast::Sender::new(ANOMALY_CHANNEL),
            alert_stats: Arc::default(),
            seq_behind: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("imprint-wal-writer".into())
            .spawn(move || run_writer(rx, &writer_shared))
            .map_err(|e| WalError::Io {
                path: config.wal_dir.clone(),
                source: e,
            })?;
        let engine = Arc::new(Self {
            object_store,
            shared,
            catalog: tokio::sync::Mutex::new(catalog),
            writer: tx,
            persist_lock: tokio::sync::Mutex::new(()),
            inuse_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            session,
            config,
            meta_changed: tokio::sync::watch::Sender::new(0),
        });
        engine.apply_retention().await?;
        Ok(engine)
    }

    /// The SQL session over buffer and files (read your writes).
    pub fn session(&self) -> &SessionContext {
        &self.session
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.object_store
    }

    /// Validates, logs durably and applies one batch; resolves when it is acked.
    pub async fn push(&self, batch: FingerprintBatch) -> Result<PushAck, IngestError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(IngestError::ShuttingDown);
        }
        if self.shared.wal_failed.load(Ordering::Relaxed) {
            return Err(IngestError::WalFailed("see the server log".into()));
        }
        let mut batch = batch;
        let dropped = drop_oversized_keys(&mut batch);
        if dropped > 0 {
            tracing::warn!(
                agent = %batch.agent_id,
                seq = batch.seq,
                dropped,
                "items with keys over the length limit dropped (counted in dropped_events)"
            );
        }
        let encoded = batch.encode_to_vec();
        let now = now_micros();
        let oldest = now.saturating_sub(
            i64::try_from(self.config.max_window_age.as_micros()).unwrap_or(i64::MAX),
        );
        validate_batch(&batch, encoded.len(), now, oldest).map_err(IngestError::Invalid)?;
        let used = self.shared.buffer_bytes.load(Ordering::Relaxed);
        if used >= self.config.max_buffer_bytes {
            self.shared.persist_wanted.notify_one();
            return Err(IngestError::BufferFull {
                used,
                max: self.config.max_buffer_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteRequest {
                batch,
                encoded,
                reply,
            })
            .await
            .map_err(|_| IngestError::WalFailed("the WAL writer has stopped".into()))?;
        rx.await
            .map_err(|_| IngestError::WalFailed("the WAL writer has stopped".into()))?
    }

    /// The committed catalog as queries see it now.
    pub fn catalog_state(&self) -> Arc<CatalogState> {
        self.shared.live.read().catalog.clone()
    }

    /// Commits a metadata change (tokens, settings) and makes it visible.
    pub async fn commit_meta(&self, commit: Commit) -> Result<Arc<CatalogState>, EngineError> {
        let mut catalog = self.catalog.lock().await;
        self.commit_locked(&mut catalog, commit).await
    }

    async fn commit_locked(
        &self,
        catalog: &mut Catalog,
        mut commit: Commit,
    ) -> Result<Arc<CatalogState>, EngineError> {
        commit.time_micros = now_micros();
        let seq = catalog.commit(commit).await?;
        let state = Arc::new(catalog.state().clone());
        self.shared.live.write().catalog = state.clone();
        self.meta_changed.send_replace(seq);
        Ok(state)
    }

    /// Fires after every metadata commit.
    pub fn watch_meta(&self) -> tokio::sync::watch::Receiver<u64> {
        self.meta_changed.subscribe()
    }

    /// Counters of anomalies found and delivered.
    pub fn alert_stats(&self) -> &Arc<AlertStats> {
        &self.shared.alert_stats
    }

    /// Every anomaly found from now on, as it is found (already in the
    /// `anomalies` table when it arrives).
    pub fn subscribe_anomalies(&self) -> tokio::sync::broadcast::Receiver<Arc<Anomaly>> {
        self.shared.anomalies.subscribe()
    }

    /// Stores a policy; `replace` allows overwriting one of the same name. The
    /// policy applies to fingerprints ingested after the commit.
    pub async fn put_policy(&self, policy: Policy, replace: bool) -> Result<(), EngineError> {
        // Under the catalog lock, so two creates of one name cannot both succeed.
        let mut catalog = self.catalog.lock().await;
        if !replace && catalog.state().policies.contains_key(&policy.name) {
            return Err(EngineError::Exists(format!(
                "policy {} exists (use --replace to change it)",
                policy.name
            )));
        }
        self.commit_locked(
            &mut catalog,
            Commit {
                put_policies: vec![policy],
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    /// Deletes a policy (its anomalies stay in the `anomalies` table).
    pub async fn delete_policy(&self, name: &str) -> Result<(), EngineError> {
        let mut catalog = self.catalog.lock().await;
        if !catalog.state().policies.contains_key(name) {
            return Err(EngineError::NotFound(format!(
                "no policy named {name} (see `imprint policy list`)"
            )));
        }
        self.commit_locked(
            &mut catalog,
            Commit {
                delete_policies: vec![name.to_string()],
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    /// Starts `image`'s profile again: from now on (or from the end of the last
    /// window it has, if that is later) it counts only windows that start at or
    /// after that moment, and learns anew. The raw history stays queryable.
    ///
    /// Exact under concurrent ingest and persistence: the persist lock keeps every
    /// summary on one side of the reset, and the reset is visible to the writer
    /// (which fills the new profile) before the commit, undone if it fails.
    pub async fn reset_profile(&self, image: &str) -> Result<ProfileReset, EngineError> {
        let _no_persist = self.persist_lock.lock().await;
        let (reset_at, previous) = {
            let mut live = self.shared.live.write();
            let Some((last, name)) = live
                .profiles
                .get(image)
                .map(|p| (p.observed.last(), p.image_name.clone()))
            else {
                return Err(EngineError::NotFound(format!(
                    "no profile for image {image}: nothing has been seen from it \
                     (see `imprint profile list`)"
                )));
            };
            let reset_at = now_micros().max(last.unwrap_or(i64::MIN));
            let old_reset = live.resets.insert(image.to_string(), reset_at);
            // The new profile keeps the image's name until a window brings one.
            let mut fresh = ImageProfile::default();
            fresh.image_name = name;
            let old_profile = live.profiles.insert(image.to_string(), fresh);
            (reset_at, (old_reset, old_profile))
        };
        let committed = self
            .commit_meta(Commit {
                profile_resets: BTreeMap::from([(image.to_string(), reset_at)]),
                ..Default::default()
            })
            .await;
        if let Err(e) = committed {
            let mut live = self.shared.live.write();
            let (old_reset, old_profile) = previous;
            match old_reset {
                Some(at) => live.resets.insert(image.to_string(), at),
                None => live.resets.remove(image),
            };
            if let Some(p) = old_profile {
                live.profiles.insert(image.to_string(), p);
            }
            return Err(e);
        }
        info!(image, reset_at, "profile reset");
        Ok(ProfileReset { reset_at })
    }

    /// The In Use data of the images `filter` allows, with their live profiles.
    pub fn inuse_snapshot(&self, filter: &PartitionFilter) -> Snapshot {
        LiveView(self.shared.live.clone()).snapshot(filter)
    }

    /// Stores an In Use part of `image` (an inventory or a scanner report),
    /// replacing the part in the same slot.
    pub async fn import_part(&self, image: &str, part: Part) -> Result<(), EngineError> {
        let bytes = encode_part(image, &part)?;
        let slot = part.slot();
        let path = object_store::path::Path::from(format!(
            "inventory/image={}/{}-{}.json.zst",
            imprint_query::layout::path_safe_digest(image),
            slot.replace(':', "-"),
            uuid::Uuid::new_v4()
        ));
        self.object_store
            .put(&path, PutPayload::from(bytes))
            .await?;
        // One import at a time, so no update of the shared state is lost.
        let _one = self.inuse_lock.lock().await;
        self.commit_meta(Commit {
            set_inventory: vec![InventoryRef {
                image: image.to_string(),
                slot,
                path: path.to_string(),
            }],
            ..Default::default()
        })
        .await?;
        let mut live = self.shared.live.write();
        let mut next = (*live.inuse).clone();
        next.insert_part(image, part);
        live.inuse = Arc::new(next);
        Ok(())
    }

    /// Stores OSV advisories (matched against every image's packages).
    pub async fn import_advisories(&self, advisories: Vec<Advisory>) -> Result<(), EngineError> {
        let bytes = encode_advisories(&advisories)?;
        let path =
            object_store::path::Path::from(format!("advisories/{}.json.zst", uuid::Uuid::new_v4()));
        self.object_store
            .put(&path, PutPayload::from(bytes))
            .await?;
        let _one = self.inuse_lock.lock().await;
        self.commit_meta(Commit {
            add_advisories: vec![path.to_string()],
            ..Default::default()
        })
        .await?;
        let mut live = self.shared.live.write();
        let mut next = (*live.inuse).clone();
        next.insert_advisories(advisories);
        live.inuse = Arc::new(next);
        Ok(())
    }

    /// Sets (or with `None` removes) `image`'s own learning period.
    pub async fn set_learning_period(
        &self,
        image: &str,
        period: Option<String>,
    ) -> Result<(), EngineError> {
        self.commit_meta(Commit {
            learning_periods: BTreeMap::from([(image.to_string(), period)]),
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Deletes the raw files (fingerprints, windows) whose rows all started before
    /// `storage.fingerprint_retention` ago. Profiles stay: only files a profile
    /// summary covers are deleted. Returns the number of files removed.
    pub async fn apply_retention(&self) -> Result<usize, EngineError> {
        let state = self.catalog_state();
        let retention = settings::duration_value(&state.settings, FINGERPRINT_RETENTION);
        if retention.is_zero() {
            return Ok(0);
        }
        let _no_persist = self.persist_lock.lock().await;
        let state = self.catalog_state();
        let cutoff = now_micros().saturating_sub(retention.as_micros() as i64);
        let covered: HashSet<&str> = state
            .summaries
            .values()
            .flat_map(|s| s.files.iter().map(String::as_str))
            .collect();
        let expired: Vec<String> = state
            .files
            .values()
            .filter(|f| f.max_time < cutoff && covered.contains(f.path.as_str()))
            .map(|f| f.path.clone())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.commit_meta(Commit {
            remove: expired.clone(),
            ..Default::default()
        })
        .await?;
        // Deleted after the commit: a crash in between leaves unreferenced objects,
        // never a catalog entry without its file.
        for path in &expired {
            if let Err(e) = self.object_store.delete(&path.as_str().into()).await {
                warn!(path, error = %e, "deleting an expired file failed; it is no longer referenced");
            }
        }
        info!(files = expired.len(), retention = ?retention, "expired raw fingerprint files removed");
        Ok(expired.len())
    }

    /// Merges each image's profile summaries into one once it has
    /// `summary_rollup_parts` of them (see [`summary::plan_rollups`]), so start-up
    /// and the catalog grow with the images, not with time. The merged summaries
    /// are written, then committed together (one catalog commit per pass, not per
    /// image), then their parts are deleted: a crash in between leaves
    /// unreferenced objects, never a profile short of a part. A part that cannot
    /// be read keeps its group as it is (start-up then reads its raw files).
    /// Returns the number of summaries merged away.
    pub async fn roll_up_summaries(&self) -> Result<usize, EngineError> {
        let _no_persist = self.persist_lock.lock().await;
        let state = self.catalog_state();
        let mut commit = Commit::default();
        let mut rolled = Vec::new();
        for rollup in summary::plan_rollups(&state, self.config.summary_rollup_parts) {
            let profile = match self.merged_summaries(&rollup.parts).await {
                Ok(profile) => profile,
                Err((path, e)) => {
                    warn!(summary = %path, error = %e, "profile summary unreadable; its image's summaries are not rolled up");
                    continue;
                }
            };
            let hour = rollup.hour();
            let image = rollup.image.clone();
            let bytes =
                tokio::task::spawn_blocking(move || summary::encode(&image, hour, &profile))
                    .await??;
            let key = PartitionKey {
                image: rollup.image.clone(),
                hour,
            };
            let path = key.new_summary_path(&uuid::Uuid::new_v4().to_string());
            let entry = rollup.entry(&state, path.to_string(), bytes.len() as u64);
            self.object_store
                .put(&path, PutPayload::from(bytes))
                .await?;
            rolled.push((rollup.image.clone(), rollup.parts.len()));
            commit.add_summaries.push(entry);
            commit
                .remove_summaries
                .extend(rollup.parts.iter().map(|p| p.path.clone()));
        }
        if commit.add_summaries.is_empty() {
            return Ok(0);
        }
        let parts = commit.remove_summaries.clone();
        self.commit_meta(commit).await?;
        for (image, n) in rolled {
            info!(image, summaries = n, "profile summaries rolled up into one");
        }
        for part in &parts {
            if let Err(e) = self.object_store.delete(&part.as_str().into()).await {
                warn!(path = %part, error = %e, "deleting a rolled-up summary failed; it is no longer referenced");
            }
        }
        Ok(parts.len())
    }

    /// The merge of the summaries `parts`, or the first that cannot be read.
    async fn merged_summaries(
        &self,
        parts: &[&SummaryEntry],
    ) -> Result<ImageProfile, (String, imprint_query::Error)> {
        let mut profile = ImageProfile::default();
        for part in parts {
            let file = summary::read(self.object_store.as_ref(), &part.path)
                .await
                .map_err(|e| (part.path.clone(), e))?;
            profile.merge(&file.profile);
        }
        Ok(profile)
    }

    /// Whether a batch of `agent_id` was ever applied (the agent is known).
    pub fn knows_agent(&self, agent_id: &str) -> bool {
        self.shared.applied.lock().knows(agent_id)
    }

    pub fn stats(&self) -> EngineStats {
        let live = self.shared.live.read();
        EngineStats {
            buffer_bytes: live.buffer.bytes(),
            buffer_partitions: live.buffer.partitions(),
            files: live.catalog.files.len(),
            catalog_seq: live.catalog.seq,
            wal_segments: self.shared.wal.lock().segment_count(),
            wal_failed: self.shared.wal_failed.load(Ordering::Relaxed),
            seq_behind_refused: self.shared.seq_behind.load(Ordering::Relaxed),
        }
    }

    /// Persists every due partition (all of them when `all`), then drops the WAL
    /// segments nothing needs any more. Returns the number of partitions persisted.
    pub async fn persist(&self, all: bool) -> Result<usize, EngineError> {
        let _one_at_a_time = self.persist_lock.lock().await;
        let due = self.shared.live.read().buffer.due(
            self.config.persist_age,
            self.config.persist_partition_bytes,
            self.config.max_buffer_bytes,
            all,
        );
        let mut done = 0;
        for key in due {
            let job = self.shared.live.write().buffer.begin_persist(&key);
            let Some(job) = job else { continue };
            let id = job.id;
            match self.persist_job(job).await {
                Ok(()) => done += 1,
                Err(e) => {
                    self.shared.live.write().buffer.abort_persist(id);
                    return Err(e);
                }
            }
        }
        self.drop_wal_segments()?;
        Ok(done)
    }

    async fn persist_job(&self, job: PersistJob) -> Result<(), EngineError> {
        let rows = job.rows.clone();
        // Stable while this job runs: resets take the persist lock too.
        let since = self.shared.live.read().reset_of(&job.key.image);
        let (image, hour) = (job.key.image.clone(), job.key.hour);
        let (encoded, profile_summary) = tokio::task::spawn_blocking(move || {
            let fp = parquet::encode(StoredTable::Fingerprints, &rows.fingerprints)?;
            let win = parquet::encode(StoredTable::Windows, &rows.windows)?;
            let anomalies = parquet::encode(StoredTable::Anomalies, &rows.anomalies)?;
            let profile = summary::from_rows(&rows.windows, &rows.fingerprints, since)?;
            let bytes = summary::encode(&image, hour, &profile)?;
            let window_span = (
                profile.observed.first().unwrap_or(i64::MIN),
                profile.observed.last().unwrap_or(i64::MIN),
            );
            Ok::<_, EngineError>((
                [
                    (StoredTable::Fingerprints, fp),
                    (StoredTable::Windows, win),
                    (StoredTable::Anomalies, anomalies),
                ],
                (bytes, window_span),
            ))
        })
        .await??;
        let mut add = Vec::new();
        for (table, file) in encoded {
            let Some(file) = file else { continue };
            let path = job
                .key
                .new_file_path(table, &uuid::Uuid::new_v4().to_string());
            let bytes = file.bytes.len() as u64;
            self.object_store
                .put(&path, PutPayload::from(file.bytes))
                .await?;
            crash_point("after_file_put");
            add.push(FileEntry {
                path: path.to_string(),
                table,
                image: job.key.image.clone(),
                hour: job.key.hour,
                min_time: file.min_time,
                max_time: file.max_time,
                rows: file.rows,
                bytes,
            });
        }
        let (summary_bytes, (first_window, last_window)) = profile_summary;
        let summary_path = job.key.new_summary_path(&uuid::Uuid::new_v4().to_string());
        let summary_entry = SummaryEntry {
            path: summary_path.to_string(),
            image: job.key.image.clone(),
            hour: job.key.hour,
            first_window,
            last_window,
            // Only the profile's inputs: raw retention removes what a summary
            // covers, and anomalies are kept.
            files: add
                .iter()
                .filter(|f| StoredTable::PROFILE_INPUTS.contains(&f.table))
                .map(|f| f.path.clone())
                .collect(),
            bytes: summary_bytes.len() as u64,
        };
        self.object_store
            .put(&summary_path, PutPayload::from(summary_bytes))
            .await?;
        let oldest_in_wal = self.shared.wal.lock().oldest_seq();
        let mut catalog = self.catalog.lock().await;
        let commit = Commit {
            time_micros: now_micros(),
            add: add.clone(),
            add_summaries: vec![summary_entry],
            wal_watermarks: BTreeMap::from([(job.key.id(), job.rows.max_wal_seq)]),
            forget_watermarks_below: Some(oldest_in_wal),
            agent_seqs: Some(self.shared.applied.lock().snapshot()),
            ..Default::default()
        };
        let seq = catalog.commit(commit).await?;
        crash_point("after_commit");
        let state = Arc::new(catalog.state().clone());
        {
            let mut live = self.shared.live.write();
            live.catalog = state;
            live.buffer.finish_persist(job.id);
            self.shared
                .buffer_bytes
                .store(live.buffer.bytes(), Ordering::Relaxed);
        }
        debug!(partition = %job.key.id(), commit = seq, files = add.len(), rows = add.iter().map(|f| f.rows).sum::<u64>(), "partition persisted");
        Ok(())
    }

    /// Deletes WAL segments whose records are all persisted. Holds the WAL lock
    /// while reading the buffer, so no record can be in the WAL but not yet in the
    /// buffer meanwhile (the writer holds the same lock across both).
    fn drop_wal_segments(&self) -> Result<(), EngineError> {
        let mut wal = self.shared.wal.lock();
        let oldest_needed = self.shared.live.read().buffer.min_wal_seq();
        let oldest_needed = match oldest_needed {
            Some(s) => s,
            None => {
                wal.rotate()?;
                wal.next_seq()
            }
        };
        crash_point("before_wal_drop");
        let dropped = wal.drop_segments_before(oldest_needed)?;
        if dropped > 0 {
            debug!(dropped, "WAL segments dropped");
        }
        Ok(())
    }

    /// Runs the persister until `shutdown` fires.
    pub async fn run_persister(self: Arc<Self>, shutdown: Arc<Notify>) {
        let mut last_retention = std::time::Instant::now();
        // Rolled up in the background soon after start (not before serving: a store
        // with many summaries would start that much later), then with retention.
        let mut rollup_due = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.persist_check_interval) => {}
                _ = self.shared.persist_wanted.notified() => {}
                _ = shutdown.notified() => return,
            }
            if let Err(e) = self.persist(false).await {
                error!(error = %e, "persisting failed; the rows stay in the buffer and WAL, retrying");
            }
            if last_retention.elapsed() >= RETENTION_INTERVAL {
                last_retention = std::time::Instant::now();
                if let Err(e) = self.apply_retention().await {
                    error!(error = %e, "applying retention failed; retrying later");
                }
                rollup_due = true;
            }
            if rollup_due {
                rollup_due = false;
                if let Err(e) = self.roll_up_summaries().await {
                    error!(error = %e, "rolling up profile summaries failed; retrying later");
                }
            }
        }
    }

    /// Stops ingest and persists everything: after this the WAL is empty.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.shutting_down.store(true, Ordering::Relaxed);
        let n = self.persist(true).await?;
        info!(partitions = n, "persisted everything for shutdown");
        Ok(())
    }
}

/// The writer thread: group commit of everything waiting.
fn run_writer(mut rx: mpsc::Receiver<WriteRequest>, shared: &Shared) {
    const MAX_GROUP: usize = 1024;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if shared.wal_failed.load(Ordering::Relaxed) {
            for r in group {
                let _ = r
                    .reply
                    .send(Err(IngestError::WalFailed("see the server log".into())));
            }
            continue;
        }
        // Duplicates: applied before, or twice in this group.
        let mut fresh = Vec::with_capacity(group.len());
        {
            let applied = shared.applied.lock();
            let mut in_group = HashSet::new();
            for r in group {
                let (agent, seq) = (&r.batch.agent_id, r.batch.seq);
                let seen = applied.seen(agent, seq);
                if let Seen::Behind { floor } = seen {
                    shared.seq_behind.fetch_add(1, Ordering::Relaxed);
                    let last = applied.last(agent);
                    warn!(%agent, seq, floor, last, "batch seq below the agent's floor refused: clock step back or shared agent id");
                    let error = IngestError::SeqBehind {
                        agent: agent.clone(),
                        seq,
                        floor,
                        last,
                    };
                    let _ = r.reply.send(Err(error));
                } else if seen == Seen::Duplicate || !in_group.insert((agent.clone(), seq)) {
                    let ack = PushAck {
                        seq,
                        duplicate: true,
                        items_accepted: 0,
                        agent_last_seq: applied.last(agent).max(seq),
                    };
                    let _ = r.reply.send(Ok(ack));
                } else {
                    fresh.push(r);
                }
            }
        }
        if fresh.is_empty() {
            continue;
        }
        let mut wal = shared.wal.lock();
        let payloads: Vec<&[u8]> = fresh.iter().map(|r| r.encoded.as_slice()).collect();
        let first_seq = match wal.append(&payloads) {
            Ok(s) => s,
            Err(e) => {
                // After a failed fsync the file's state is unknown: stop ingest
                // rather than ack anything that might not be durable.
                error!(error = %e, "WAL append failed; refusing all ingest until restart");
                shared.wal_failed.store(true, Ordering::Relaxed);
                for r in fresh {
                    let _ = r.reply.send(Err(IngestError::WalFailed(e.to_string())));
                }
                continue;
            }
        };
        let agent_lasts: Vec<u64> = {
            let mut applied = shared.applied.lock();
            for r in &fresh {
                applied.insert(&r.batch.agent_id, r.batch.seq);
            }
            fresh
                .iter()
                .map(|r| applied.last(&r.batch.agent_id))
                .collect()
        };
        let mut items = Vec::with_capacity(fresh.len());
        let mut anomalies = Vec::new();
        let bytes = {
            let mut guard = shared.live.write();
            let live = &mut *guard;
            for (i, r) in fresh.iter().enumerate() {
                let seq = first_seq + i as u64;
                items.push(live.buffer.apply(seq, &r.batch, &|_| false));
                let first = anomalies.len();
                for fp in &r.batch.fingerprints {
                    let reset_at = live.resets.get(&fp.image).copied().unwrap_or(i64::MIN);
                    anomalies.extend(observe(
                        &mut live.profiles,
                        &mut live.evaluator,
                        &live.catalog,
                        reset_at,
                        fp,
                    ));
                }
                live.buffer.apply_anomalies(seq, &anomalies[first..]);
            }
            live.buffer.bytes()
        };
        drop(wal);
        // Live delivery (streams, webhook) never waits: a broadcast drops what
        // a lagging receiver has not taken, and counts it there.
        if !anomalies.is_empty() {
            shared
                .alert_stats
                .found
                .fetch_add(anomalies.len() as u64, Ordering::Relaxed);
            for a in anomalies {
                let _ = shared.anomalies.send(Arc::new(a));
            }
        }
        shared.buffer_bytes.store(bytes, Ordering::Relaxed);
        if bytes >= shared.max_buffer_bytes / 4 * 3 {
            shared.persist_wanted.notify_one();
        }
        for ((r, n), agent_last_seq) in fresh.into_iter().zip(items).zip(agent_lasts) {
            let _ = r.reply.send(Ok(PushAck {
                seq: r.batch.seq,
                duplicate: false,
                items_accepted: n,
                agent_last_seq,
            }));
        }
    }
    debug!("WAL writer stopped");
}

/// Test hook: `IMPRINT_TEST_CRASH_AT=<point>` aborts the process at that step of
/// persistence, so tests can prove a crash there loses and duplicates nothing.
/// Points: `after_file_put`, `after_commit`, `before_wal_drop`. Only with the `test-hooks`
/// feature (test builds); a release binary ignores the variable.
#[cfg(not(feature = "test-hooks"))]
fn crash_point(_point: &str) {}

#[cfg(feature = "test-hooks")]
fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("IMPRINT_TEST_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        error!(point, "IMPRINT_TEST_CRASH_AT: aborting the process");
        std::process::abort();
    }
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
