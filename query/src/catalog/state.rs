//! The catalog's state and the commits that change it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::layout::PartitionKey;
use crate::policy::Policy;
use crate::schema::StoredTable;

/// One live Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Object path relative to the store root.
    pub path: String,
    pub table: StoredTable,
    /// Image digest of every row in the file.
    pub image: String,
    /// Start of the file's hour, microseconds since the epoch.
    pub hour: i64,
    /// Smallest and largest `time` in the file, microseconds since the epoch.
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    /// Size of the object in bytes.
    pub bytes: u64,
}

impl FileEntry {
    pub fn partition(&self) -> PartitionKey {
        PartitionKey {
            image: self.image.clone(),
            hour: self.hour,
        }
    }
}

/// A profile summary: one image's profile over the rows of the files persisted
/// together in one commit (`files`). The server starts from these instead of the
/// raw rows, and they stay when retention removes the raw files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryEntry {
    /// Object path relative to the store root.
    pub path: String,
    pub image: String,
    /// Start of the partition's hour, microseconds since the epoch.
    pub hour: i64,
    /// Start of the first and end of the last window summarised.
    pub first_window: i64,
    pub last_window: i64,
    /// The raw files (fingerprints, windows) it summarises.
    pub files: Vec<String>,
    pub bytes: u64,
}

/// The batch seqs one agent has applied: sorted, disjoint, inclusive ranges (an agent numbers
/// its batches contiguously within a run, so there is about one range per agent restart), and
/// the floor below which the server no longer knows (the oldest ranges were let go to keep
/// the list bounded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SeqRangesWire")]
pub struct SeqRanges {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub floor: u64,
    pub ranges: Vec<(u64, u64)>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What catalogs have held: the bare list of ranges (before floors), or the struct.
#[derive(Deserialize)]
#[serde(untagged)]
enum SeqRangesWire {
    Ranges(Vec<(u64, u64)>),
    WithFloor {
        #[serde(default)]
        floor: u64,
        ranges: Vec<(u64, u64)>,
    },
}

impl From<SeqRangesWire> for SeqRanges {
    fn from(w: SeqRangesWire) -> Self {
        match w {
            SeqRangesWire::Ranges(ranges) => SeqRanges { floor: 0, ranges },
            SeqRangesWire::WithFloor { floor, ranges } => SeqRanges { floor, ranges },
        }
    }
}

/// An access token as stored: only the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    pub created_micros: i64,
    pub expires_micros: Option<i64>,
    pub revoked: bool,
    /// When not empty, the only agent ids this token may push batches and inventories for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<String>,
}

/// One catalog commit: the log object `catalog/log/<seq>.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub seq: u64,
    /// When it was written, microseconds since the epoch (informational).
    pub time_micros: i64,
    /// Files that became live.
    #[serde(default)]
    pub add: Vec<FileEntry>,
    /// Paths of files that stopped being live (compaction, retention).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Per partition (`PartitionKey::id`), the highest WAL record whose rows of that
    /// partition are all in live files. Replay skips those rows.
    #[serde(default)]
    pub wal_watermarks: BTreeMap<String, u64>,
    /// Watermarks below this WAL seq are dropped: those records are no longer in any
    /// WAL, so nothing will replay them.
    #[serde(default)]
    pub forget_watermarks_below: Option<u64>,
    /// When present, replaces the agent → applied batch seqs map.
    #[serde(default)]
    pub agent_seqs: Option<BTreeMap<String, SeqRanges>>,
    /// Tokens created or changed (by id).
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
    /// Settings changed (key → value).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Profile summaries that became live (with the files they summarise).
    #[serde(default)]
    pub add_summaries: Vec<SummaryEntry>,
    /// Paths of profile summaries no longer live (rolled up into one of
    /// `add_summaries`). Applied before `add_summaries`.
    #[serde(default)]
    pub remove_summaries: Vec<String>,
    /// Profile resets: image → the moment its profile starts again (µs).
    #[serde(default)]
    pub profile_resets: BTreeMap<String, i64>,
    /// Per-image learning periods: image → duration text, `None` removes the
    /// override (the global setting applies again).
    #[serde(default)]
    pub learning_periods: BTreeMap<String, Option<String>>,
    /// In Use parts (inventories, scanner reports) that replace their slot.
    #[serde(default)]
    pub set_inventory: Vec<InventoryRef>,
    /// OSV advisory objects added.
    #[serde(default)]
    pub add_advisories: Vec<String>,
    /// Policies created or replaced (by name).
    #[serde(default)]
    pub put_policies: Vec<Policy>,
    /// Names of policies deleted.
    #[serde(default)]
    pub delete_policies: Vec<String>,
}

/// An In Use part of an image: the object at `path` fills `slot`
/// (`packages:sbom`, `report:grype-json`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRef {
    pub image: String,
    pub slot: String,
    pub path: String,
}

/// Everything the catalog knows, as of commit `seq`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    /// The last commit applied; 0 for an empty store.
    pub seq: u64,
    /// Live files by path.
    pub files: BTreeMap<String, FileEntry>,
    pub wal_watermarks: BTreeMap<String, u64>,
    pub agent_seqs: BTreeMap<String, SeqRanges>,
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Live profile summaries by path.
    #[serde(default)]
    pub summaries: BTreeMap<String, SummaryEntry>,
    #[serde(default)]
    pub profile_resets: BTreeMap<String, i64>,
    #[serde(default)]
    pub learning_periods: BTreeMap<String, String>,
    /// In Use parts: image → slot → object path.
    #[serde(default)]
    pub inventory: BTreeMap<String, BTreeMap<String, String>>,
    /// OSV advisory objects, in import order.
    #[serde(default)]
    pub advisories: Vec<String>,
    /// Profile policies by name.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
}

impl CatalogState {
    /// Applies one commit. Deterministic: the state is a function of the log.
    pub fn apply(&mut self, commit: &Commit) {
        self.seq = commit.seq;
        for path in &commit.remove {
            self.files.remove(path);
        }
        for f in &commit.add {
            self.files.insert(f.path.clone(), f.clone());
        }
        for (p, &w) in &commit.wal_watermarks {
            let e = self.wal_watermarks.entry(p.clone()).or_insert(0);
            *e = (*e).max(w);
        }
        if let Some(below) = commit.forget_watermarks_below {
            self.wal_watermarks.retain(|_, w| *w >= below);
        }
        if let Some(seqs) = &commit.agent_seqs {
            self.agent_seqs = seqs.clone();
        }
        for t in &commit.tokens {
            self.tokens.insert(t.id.clone(), t.clone());
        }
        for (k, v) in &commit.settings {
            self.settings.insert(k.clone(), v.clone());
        }
        for path in &commit.remove_summaries {
            self.summaries.remove(path);
        }
        for s in &commit.add_summaries {
            self.summaries.insert(s.path.clone(), s.clone());
        }
        for (image, &at) in &commit.profile_resets {
            self.profile_resets.insert(image.clone(), at);
        }
        for r in &commit.set_inventory {
            self.inventory
                .entry(r.image.clone())
                .or_default()
                .insert(r.slot.clone(), r.path.clone());
        }
        self.advisories
            .extend(commit.add_advisories.iter().cloned());
        for p in &commit.put_policies {
            self.policies.insert(p.name.clone(), p.clone());
        }
        for name in &commit.delete_policies {
            self.policies.remove(name);
        }
        for (image, period) in &commit.learning_periods {
            match period {
                Some(p) => self.learning_periods.insert(image.clone(), p.clone()),
                None => self.learning_periods.remove(image),
            };
        }
    }

    /// The live files of one table.
    pub fn files_of(&self, table: StoredTable) -> impl Iterator<Item = &FileEntry> {
        self.files.values().filter(move |f| f.table == table)
    }

    /// When `image`'s profile last started again (`i64::MIN` if never reset).
    pub fn profile_reset(&self, image: &str) -> i64 {
        self.profile_resets.get(image).copied().unwrap_or(i64::MIN)
    }

    /// The WAL watermark of one partition (0 when none).
    pub fn watermark(&self, partition: &PartitionKey) -> u64 {
        self.wal_watermarks
            .get(&partition.id())
            .copied()
            .unwrap_or(0)
    }
}
