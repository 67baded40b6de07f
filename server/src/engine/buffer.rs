//! The write buffer: acknowledged rows not yet in Parquet, as Arrow, per
//! (image, hour) partition.
//!
//! Rows are appended to dictionary-encoded builders; every [`CHUNK_ROWS`] rows a
//! partition freezes its builders into an immutable `RecordBatch`, so a query's
//! snapshot copies only the small unfrozen tail. A partition being persisted moves
//! to `persisting`, where queries still see it until its file is committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder, Int32Array, RecordBatch,
    StringArray, StringDictionaryBuilder, TimestampMicrosecondBuilder, UInt32Builder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, ItemKind};
use imprint_query::layout::PartitionKey;
use imprint_query::policy::Anomaly;
use imprint_query::prune::PartitionFilter;
use imprint_query::schema::StoredTable;

/// Rows per frozen chunk.
pub const CHUNK_ROWS: usize = 32 * 1024;
/// Estimated bytes per row still in builders for the fixed-size columns and the dictionary
/// indices; the strings themselves are counted as they arrive ([`Dict::value_bytes`]).
const ACTIVE_ROW_BYTES: usize = 64;
/// Per distinct string in a dictionary builder, besides its bytes: its offset and its entry
/// in the builder's hash table.
const DICT_ENTRY_BYTES: usize = 32;

/// A string dictionary builder that counts the bytes of the distinct values it holds, so
/// the buffer's accounting follows the real key sizes (a container can choose 4 KiB paths).
struct Dict {
    inner: StringDictionaryBuilder<Int32Type>,
    distinct: usize,
    value_bytes: usize,
}

impl Dict {
    fn new() -> Self {
        Self {
            inner: StringDictionaryBuilder::new(),
            distinct: 0,
            value_bytes: 0,
        }
    }

    fn count_key(&mut self, key: i32, value: &str) {
        if key as usize == self.distinct {
            self.distinct += 1;
            self.value_bytes += value.len() + DICT_ENTRY_BYTES;
        }
    }

    fn append_value(&mut self, value: &str) {
        self.append_values(value, 1);
    }

    fn append_values(&mut self, value: &str, n: usize) {
        let key = self
            .inner
            .append_n(value, n)
            .expect("dictionary key overflow");
        self.count_key(key, value);
    }

    /// Bytes of the distinct values (with their per-entry overhead).
    fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    fn finish_cloned(&self) -> DictionaryArray<Int32Type> {
        self.inner.finish_cloned()
    }
}

/// The in-memory schema of a table: its SQL schema with strings dictionary-encoded.
pub fn buffer_schema(table: StoredTable) -> SchemaRef {
    static FP: LazyLock<SchemaRef> = LazyLock::new(|| dictionary_schema(StoredTable::Fingerprints));
    static WIN: LazyLock<SchemaRef> = LazyLock::new(|| dictionary_schema(StoredTable::Windows));
    static ANOM: LazyLock<SchemaRef> = LazyLock::new(|| dictionary_schema(StoredTable::Anomalies));
    match table {
        StoredTable::Fingerprints => FP.clone(),
        StoredTable::Windows => WIN.clone(),
        StoredTable::Anomalies => ANOM.clone(),
    }
}

fn dictionary_schema(table: StoredTable) -> SchemaRef {
    let fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => Field::new(
                f.name(),
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                f.is_nullable(),
            ),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Casts a buffer batch to the table's SQL schema (dictionary strings → Utf8).
pub fn to_table_schema(table: StoredTable, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    imprint_query::schema::conform(batch, &table.schema())
}

fn constant_dict(value: &str, rows: usize) -> ArrayRef {
    let keys = Int32Array::from(vec![0; rows]);
    let values = Arc::new(StringArray::from(vec![value]));
    Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values).expect("key 0 is in range"))
}

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

struct FingerprintRows {
    time: TimestampMicrosecondBuilder,
    window_end: TimestampMicrosecondBuilder,
    node: Dict,
    container_id: Dict,
    image_name: Dict,
    kind: Dict,
    key: Dict,
    count: UInt64Builder,
    rows: usize,
}

impl FingerprintRows {
    fn string_bytes(&self) -> usize {
        [
            &self.node,
            &self.container_id,
            &self.image_name,
            &self.kind,
            &self.key,
        ]
        .iter()
        .map(|d| d.value_bytes())
        .sum()
    }

    fn new() -> Self {
        Self {
            time: ts(),
            window_end: ts(),
            node: Dict::new(),
            container_id: Dict::new(),
            image_name: Dict::new(),
            kind: Dict::new(),
            key: Dict::new(),
            count: UInt64Builder::new(),
            rows: 0,
        }
    }

    fn push(&mut self, fp: &Fingerprint) {
        // Values constant over a fingerprint are appended once per fingerprint, not
        // once per item: one dictionary lookup instead of one per row.
        let n = fp.items.len();
        self.time.append_value_n(fp.window_start_unix_micros, n);
        self.window_end.append_value_n(fp.window_end_unix_micros, n);
        self.node.append_values(&fp.node, n);
        self.container_id.append_values(&fp.container_id, n);
        self.image_name.append_values(&fp.image_name, n);
        for item in &fp.items {
            let kind = ItemKind::try_from(item.kind).unwrap_or(ItemKind::Unspecified);
            self.kind.append_value(kind.sql_name());
            self.key.append_value(&item.key);
            self.count.append_value(item.count);
        }
        self.rows += fp.items.len();
    }

    /// A batch of the rows so far, leaving the builders as they are.
    fn snapshot(&self, image: &str) -> RecordBatch {
        let n = self.rows;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish_cloned()),
            Arc::new(self.window_end.finish_cloned()),
            Arc::new(self.node.finish_cloned()),
            Arc::new(self.container_id.finish_cloned()),
            constant_dict(image, n),
            Arc::new(self.image_name.finish_cloned()),
            Arc::new(self.kind.finish_cloned()),
            Arc::new(self.key.finish_cloned()),
            Arc::new(self.count.finish_cloned()),
        ];
        RecordBatch::try_new(buffer_schema(StoredTable::Fingerprints), columns)
            .expect("columns match the schema")
    }

    /// A batch of the rows so far; the builders start empty again.
    fn finish(&mut self, image: &str) -> RecordBatch {
        let batch = self.snapshot(image);
        *self = Self::new();
        batch
    }
}

struct WindowRows {
    time: TimestampMicrosecondBuilder,
    window_end: TimestampMicrosecondBuilder,
    node: Dict,
    container_id: Dict,
    image_name: Dict,
    items: UInt32Builder,
    dropped_events: UInt64Builder,
    capture_paused: BooleanBuilder,
    started_after_container: BooleanBuilder,
    rows: usize,
}

impl WindowRows {
    fn string_bytes(&self) -> usize {
        [&self.node, &self.container_id, &self.image_name]
            .iter()
            .map(|d| d.value_bytes())
            .sum()
    }

    fn new() -> Self {
        Self {
            time: ts(),
            window_end: ts(),
            node: Dict::new(),
            container_id: Dict::new(),
            image_name: Dict::new(),
            items: UInt32Builder::new(),
            dropped_events: UInt64Builder::new(),
            capture_paused: BooleanBuilder::new(),
            started_after_container: BooleanBuilder::new(),
            rows: 0,
        }
    }

    fn push(&mut self, fp: &Fingerprint) {
        let c = fp.completeness.unwrap_or_default();
        self.time.append_value(fp.window_start_unix_micros);
        self.window_end.append_value(fp.window_end_unix_micros);
        self.node.append_value(&fp.node);
        self.container_id.append_value(&fp.container_id);
        self.image_name.append_value(&fp.image_name);
        self.items
            .append_value(u32::try_from(fp.items.len()).unwrap_or(u32::MAX));
        self.dropped_events.append_value(c.dropped_events);
        self.capture_paused.append_value(c.capture_paused);
        self.started_after_container
            .append_value(c.started_after_container);
        self.rows += 1;
    }

    /// A batch of the rows so far, leaving the builders as they are.
    fn snapshot(&self, image: &str) -> RecordBatch {
        let n = self.rows;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish_cloned()),
            Arc::new(self.window_end.finish_cloned()),
            Arc::new(self.node.finish_cloned()),
            Arc::new(self.container_id.finish_cloned()),
            constant_dict(image, n),
            Arc::new(self.image_name.finish_cloned()),
            Arc::new(self.items.finish_cloned()),
            Arc::new(self.dropped_events.finish_cloned()),
            Arc::new(self.capture_paused.finish_cloned()),
            Arc::new(self.started_after_container.finish_cloned()),
        ];
        RecordBatch::try_new(buffer_schema(StoredTable::Windows), columns)
            .expect("columns match the schema")
    }

    /// A batch of the rows so far; the builders start empty again.
    fn finish(&mut self, image: &str) -> RecordBatch {
        let batch = self.snapshot(image);
        *self = Self::new();
        batch
    }
}

/// Anomalies found in the partition's fingerprints (few: plain builders).
struct AnomalyRows {
    time: TimestampMicrosecondBuilder,
    window_end: TimestampMicrosecondBuilder,
    node: Dict,
    container_id: Dict,
    image_name: Dict,
    kind: Dict,
    key: Dict,
    count: UInt64Builder,
    policy: Dict,
    severity: Dict,
    confidence: Dict,
    confidence_score: Float64Builder,
    rows: usize,
}

impl AnomalyRows {
    fn string_bytes(&self) -> usize {
        [
            &self.node,
            &self.container_id,
            &self.image_name,
            &self.kind,
            &self.key,
            &self.policy,
            &self.severity,
            &self.confidence,
        ]
        .iter()
        .map(|d| d.value_bytes())
        .sum()
    }

    fn new() -> Self {
        Self {
            time: ts(),
            window_end: ts(),
            node: Dict::new(),
            container_id: Dict::new(),
            image_name: Dict::new(),
            kind: Dict::new(),
            key: Dict::new(),
            count: UInt64Builder::new(),
            policy: Dict::new(),
            severity: Dict::new(),
            confidence: Dict::new(),
            confidence_score: Float64Builder::new(),
            rows: 0,
        }
    }

    fn push(&mut self, a: &Anomaly) {
        self.time.append_value(a.time);
        self.window_end.append_value(a.window_end);
        self.node.append_value(&a.node);
        self.container_id.append_value(&a.container_id);
        self.image_name.append_value(&a.image_name);
        self.kind.append_value(&a.kind);
        self.key.append_value(&a.key);
        self.count.append_value(a.count);
        self.policy.append_value(&a.policy);
        self.severity.append_value(a.severity.name());
        self.confidence.append_value(a.confidence.name());
        self.confidence_score.append_value(a.confidence_score);
        self.rows += 1;
    }

    fn snapshot(&self, image: &str) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish_cloned()),
            Arc::new(self.window_end.finish_cloned()),
            Arc::new(self.node.finish_cloned()),
            Arc::new(self.container_id.finish_cloned()),
            constant_dict(image, self.rows),
            Arc::new(self.image_name.finish_cloned()),
            Arc::new(self.kind.finish_cloned()),
            Arc::new(self.key.finish_cloned()),
            Arc::new(self.count.finish_cloned()),
            Arc::new(self.policy.finish_cloned()),
            Arc::new(self.severity.finish_cloned()),
            Arc::new(self.confidence.finish_cloned()),
            Arc::new(self.confidence_score.finish_cloned()),
        ];
        RecordBatch::try_new(buffer_schema(StoredTable::Anomalies), columns)
            .expect("columns match the schema")
    }

    fn finish(&mut self, image: &str) -> RecordBatch {
        let batch = self.snapshot(image);
        *self = Self::new();
        batch
    }
}

/// The rows of one partition, frozen: what a persist job writes.
#[derive(Debug, Clone, Default)]
pub struct FrozenRows {
    pub fingerprints: Vec<RecordBatch>,
    pub windows: Vec<RecordBatch>,
    pub anomalies: Vec<RecordBatch>,
    /// WAL seqs of the oldest and newest record with rows here.
    pub min_wal_seq: u64,
    pub max_wal_seq: u64,
    pub bytes: usize,
}

impl FrozenRows {
    fn of(&self, table: StoredTable) -> &[RecordBatch] {
        match table {
            StoredTable::Fingerprints => &self.fingerprints,
            StoredTable::Windows => &self.windows,
            StoredTable::Anomalies => &self.anomalies,
        }
    }
}

struct Partition {
    fingerprints: FingerprintRows,
    windows: WindowRows,
    anomalies: AnomalyRows,
    frozen: FrozenRows,
    created: Instant,
}

impl Partition {
    fn new(wal_seq: u64) -> Self {
        Self {
            fingerprints: FingerprintRows::new(),
            windows: WindowRows::new(),
            anomalies: AnomalyRows::new(),
            frozen: FrozenRows {
                min_wal_seq: wal_seq,
                max_wal_seq: wal_seq,
                ..Default::default()
            },
            created: Instant::now(),
        }
    }

    fn bytes(&self) -> usize {
        self.frozen.bytes
            + (self.fingerprints.rows + self.windows.rows + self.anomalies.rows) * ACTIVE_ROW_BYTES
            + self.fingerprints.string_bytes()
            + self.windows.string_bytes()
            + self.anomalies.string_bytes()
    }

    fn freeze(&mut self, image: &str) {
        if self.fingerprints.rows > 0 {
            let b = self.fingerprints.finish(image);
            self.frozen.bytes += b.get_array_memory_size();
            self.frozen.fingerprints.push(b);
        }
        if self.windows.rows > 0 {
            let b = self.windows.finish(image);
            self.frozen.bytes += b.get_array_memory_size();
            self.frozen.windows.push(b);
        }
        if self.anomalies.rows > 0 {
            let b = self.anomalies.finish(image);
            self.frozen.bytes += b.get_array_memory_size();
            self.frozen.anomalies.push(b);
        }
    }
}

/// A partition handed to the persister.
#[derive(Debug)]
pub struct PersistJob {
    pub id: u64,
    pub key: PartitionKey,
    pub rows: FrozenRows,
}

#[derive(Default)]
pub struct Buffer {
    active: HashMap<PartitionKey, Partition>,
    persisting: BTreeMap<u64, (PartitionKey, FrozenRows)>,
    next_job: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("active", &self.active.len())
            .field("persisting", &self.persisting.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Buffer {
    /// Appends the rows of one WAL record. Fingerprints whose partition `skip`
    /// says is already persisted (replay after a crash) are left out. Returns the
    /// number of items appended.
    pub fn apply(
        &mut self,
        wal_seq: u64,
        batch: &FingerprintBatch,
        skip: &dyn Fn(&PartitionKey) -> bool,
    ) -> u64 {
        let mut items = 0;
        for fp in &batch.fingerprints {
            let key = PartitionKey::new(fp.image.as_str(), fp.window_start_unix_micros);
            if skip(&key) {
                continue;
            }
            let image = key.image.clone();
            let p = self
                .active
                .entry(key)
                .or_insert_with(|| Partition::new(wal_seq));
            p.frozen.max_wal_seq = wal_seq;
            p.fingerprints.push(fp);
            p.windows.push(fp);
            items += fp.items.len() as u64;
            if p.fingerprints.rows >= CHUNK_ROWS || p.windows.rows >= CHUNK_ROWS {
                p.freeze(&image);
            }
        }
        items
    }

    /// Appends anomalies found in the fingerprints of WAL record `wal_seq`: each to
    /// the partition of its fingerprint, so it is persisted with it and, on replay,
    /// derived again exactly when its fingerprint is replayed.
    pub fn apply_anomalies(&mut self, wal_seq: u64, anomalies: &[Anomaly]) {
        for a in anomalies {
            let key = PartitionKey::new(a.image.as_str(), a.time);
            let image = key.image.clone();
            let p = self
                .active
                .entry(key)
                .or_insert_with(|| Partition::new(wal_seq));
            p.frozen.max_wal_seq = p.frozen.max_wal_seq.max(wal_seq);
            p.anomalies.push(a);
            if p.anomalies.rows >= CHUNK_ROWS {
                p.freeze(&image);
            }
        }
    }

    /// Bytes held, active and persisting.
    pub fn bytes(&self) -> usize {
        self.active.values().map(Partition::bytes).sum::<usize>()
            + self
                .persisting
                .values()
                .map(|(_, r)| r.bytes)
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.persisting.is_empty()
    }

    /// The rows of `table` in partitions `filter` allows, in the table's SQL schema.
    pub fn view(
        &self,
        table: StoredTable,
        filter: &PartitionFilter,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut out = Vec::new();
        let allowed = |k: &PartitionKey| filter.allows_partition(&k.image, k.hour);
        for (key, rows) in self.persisting.values() {
            if allowed(key) {
                for b in rows.of(table) {
                    out.push(to_table_schema(table, b)?);
                }
            }
        }
        for (key, p) in &self.active {
            if !allowed(key) {
                continue;
            }
            for b in p.frozen.of(table) {
                out.push(to_table_schema(table, b)?);
            }
            let tail = match table {
                StoredTable::Fingerprints if p.fingerprints.rows > 0 => {
                    Some(p.fingerprints.snapshot(&key.image))
                }
                StoredTable::Windows if p.windows.rows > 0 => Some(p.windows.snapshot(&key.image)),
                StoredTable::Anomalies if p.anomalies.rows > 0 => {
                    Some(p.anomalies.snapshot(&key.image))
                }
                _ => None,
            };
            if let Some(b) = tail {
                out.push(to_table_schema(table, &b)?);
            }
        }
        Ok(out)
    }

    /// Partitions due for persistence: old or large ones, under memory pressure
    /// the largest until half of `max_bytes` is free, or all when `all`.
    pub fn due(
        &self,
        max_age: std::time::Duration,
        max_partition_bytes: usize,
        max_bytes: usize,
        all: bool,
    ) -> Vec<PartitionKey> {
        let mut due: Vec<(usize, &PartitionKey)> = Vec::new();
        let mut rest: Vec<(usize, &PartitionKey)> = Vec::new();
        for (k, p) in &self.active {
            let b = p.bytes();
            if all || p.created.elapsed() >= max_age || b >= max_partition_bytes {
                due.push((b, k));
            } else {
                rest.push((b, k));
            }
        }
        let total = self.bytes();
        let mut after: usize = total - due.iter().map(|(b, _)| *b).sum::<usize>();
        if total >= max_bytes / 4 * 3 {
            rest.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
            for (b, k) in rest {
                if after <= max_bytes / 2 {
                    break;
                }
                after -= b;
                due.push((b, k));
            }
        }
        due.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Takes a partition out of the active set for persisting; it stays visible.
    pub fn begin_persist(&mut self, key: &PartitionKey) -> Option<PersistJob> {
        let mut p = self.active.remove(key)?;
        p.freeze(&key.image);
        let id = self.next_job;
        self.next_job += 1;
        self.persisting.insert(id, (key.clone(), p.frozen.clone()));
        Some(PersistJob {
            id,
            key: key.clone(),
            rows: p.frozen,
        })
    }

    /// Drops a persisted job's rows (their file is committed).
    pub fn finish_persist(&mut self, id: u64) {
        self.persisting.remove(&id);
    }

    /// Puts a job's rows back into the active set after a failed persist, ahead of
    /// any rows that arrived for the partition meanwhile.
    pub fn abort_persist(&mut self, id: u64) {
        let Some((key, rows)) = self.persisting.remove(&id) else {
            return;
        };
        let p = self
            .active
            .entry(key)
            .or_insert_with(|| Partition::new(rows.min_wal_seq));
        let newer = std::mem::take(&mut p.frozen);
        p.frozen = FrozenRows {
            fingerprints: rows
                .fingerprints
                .into_iter()
                .chain(newer.fingerprints)
                .collect(),
            windows: rows.windows.into_iter().chain(newer.windows).collect(),
            anomalies: rows.anomalies.into_iter().chain(newer.anomalies).collect(),
            min_wal_seq: rows.min_wal_seq.min(newer.min_wal_seq),
            max_wal_seq: rows.max_wal_seq.max(newer.max_wal_seq),
            bytes: rows.bytes + newer.bytes,
        };
    }

    /// The oldest WAL record that still has rows only here.
    pub fn min_wal_seq(&self) -> Option<u64> {
        self.active
            .values()
            .map(|p| p.frozen.min_wal_seq)
            .chain(self.persisting.values().map(|(_, r)| r.min_wal_seq))
            .min()
    }

    pub fn partitions(&self) -> usize {
        self.active.len() + self.persisting.len()
    }
}
