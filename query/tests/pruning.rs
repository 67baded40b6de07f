//! Partition pruning: a query restricted by image or time opens only the files of
//! the partitions it can match — proved by counting object store reads.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use imprint_query::Store;
use imprint_query::catalog::{Catalog, Commit, FileEntry};
use imprint_query::layout::{HOUR_MICROS, PartitionKey};
use imprint_query::schema::{FINGERPRINTS_SCHEMA, StoredTable, to_file_batch};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::ArrowWriter;

/// Records which objects were read.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    reads: Mutex<BTreeSet<String>>,
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl CountingStore {
    fn parquet_reads(&self) -> BTreeSet<String> {
        self.reads
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(".parquet"))
            .cloned()
            .collect()
    }
    fn reset(&self) {
        self.reads.lock().unwrap().clear();
    }
    fn note(&self, p: &Path) {
        self.reads.lock().unwrap().insert(p.to_string());
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        l: &Path,
        p: PutPayload,
        o: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
        self.note(l);
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.note(l);
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        l: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(l)
    }
    fn list(&self, p: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(p)
    }
    async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(p).await
    }
    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(f, t, o).await
    }
}

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn batch(image: &str, hour: i64, rows: usize) -> RecordBatch {
    let t: Vec<i64> = (0..rows as i64).map(|i| hour + i * 1_000_000).collect();
    let s = |v: &str| Arc::new(StringArray::from(vec![v; rows])) as ArrayRef;
    let ts =
        |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    RecordBatch::try_new(
        FINGERPRINTS_SCHEMA.clone(),
        vec![
            ts(t.clone()),
            ts(t.iter().map(|x| x + 30_000_000).collect()),
            s("node-1"),
            s("c1"),
            s(image),
            s("app:1"),
            s("syscall"),
            Arc::new(StringArray::from(
                (0..rows).map(|i| format!("call{i}")).collect::<Vec<_>>(),
            )),
            Arc::new(UInt64Array::from(vec![1u64; rows])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn files_outside_the_predicate_are_never_opened() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let h0 = 1_796_130_000_000_000 / HOUR_MICROS * HOUR_MICROS;
    let mut catalog = Catalog::load(local.clone()).await.unwrap();
    let mut paths = std::collections::BTreeMap::new();
    for (image, hour, rows) in [(A, h0, 10), (A, h0 + HOUR_MICROS, 20), (B, h0, 40)] {
        let key = PartitionKey::new(image, hour);
        let path = key.new_file_path(
            StoredTable::Fingerprints,
            &format!("{}-{hour}", &image[7..9]),
        );
        let mut buf = Vec::new();
        let file_batch =
            to_file_batch(StoredTable::Fingerprints, &batch(image, hour, rows)).unwrap();
        let mut w = ArrowWriter::try_new(&mut buf, file_batch.schema(), None).unwrap();
        w.write(&file_batch).unwrap();
        w.close().unwrap();
        let bytes = buf.len() as u64;
        local.put(&path, PutPayload::from(buf)).await.unwrap();
        let entry = FileEntry {
            path: path.to_string(),
            table: StoredTable::Fingerprints,
            image: image.into(),
            hour,
            min_time: hour,
            max_time: hour + (rows as i64 - 1) * 1_000_000,
            rows: rows as u64,
            bytes,
        };
        paths.insert((image, hour), path.to_string());
        catalog
            .commit(Commit {
                add: vec![entry],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let counting = Arc::new(CountingStore {
        inner: local,
        reads: Mutex::new(BTreeSet::new()),
    });
    let store = Store::open_object_store(counting.clone()).await.unwrap();
    let count = |batches: Vec<RecordBatch>| {
        let c =
            arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
        c.as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };

    // By image.
    counting.reset();
    let n = count(
        store
            .sql(&format!(
                "SELECT count(key) FROM fingerprints WHERE image = '{B}'"
            ))
            .await
            .unwrap(),
    );
    assert_eq!(n, 40);
    assert_eq!(
        counting.parquet_reads(),
        BTreeSet::from([paths[&(B, h0)].clone()])
    );

    // By image and time range.
    counting.reset();
    let q = format!(
        "SELECT count(key) FROM fingerprints WHERE image = '{A}' AND time >= to_timestamp_micros({})",
        h0 + HOUR_MICROS
    );
    assert_eq!(count(store.sql(&q).await.unwrap()), 20);
    assert_eq!(
        counting.parquet_reads(),
        BTreeSet::from([paths[&(A, h0 + HOUR_MICROS)].clone()])
    );

    // By time alone: both images' first hour.
    counting.reset();
    let q = format!(
        "SELECT count(key) FROM fingerprints WHERE time < to_timestamp_micros({})",
        h0 + HOUR_MICROS
    );
    assert_eq!(count(store.sql(&q).await.unwrap()), 50);
    assert_eq!(
        counting.parquet_reads(),
        BTreeSet::from([paths[&(A, h0)].clone(), paths[&(B, h0)].clone()])
    );

    // No restriction: everything.
    counting.reset();
    assert_eq!(
        count(
            store
                .sql("SELECT count(key) FROM fingerprints")
                .await
                .unwrap()
        ),
        70
    );
    assert_eq!(counting.parquet_reads().len(), 3);

    // window_end is computed from the stored window length, in any projection
    // order, and filters on it apply (above the scan).
    let q = "SELECT count(*) FROM fingerprints \
             WHERE window_end = time + INTERVAL '30 seconds' AND window_end > time";
    assert_eq!(count(store.sql(q).await.unwrap()), 70);
    let rows = store
        .sql(&format!(
            "SELECT key, window_end, image FROM fingerprints \
             WHERE window_end <= to_timestamp_micros({}) ORDER BY window_end",
            h0 + 31_000_000
        ))
        .await
        .unwrap();
    let got = arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    assert!(got.contains("call0") && got.contains("call1"), "{got}");
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 4, "{got}");
    assert_eq!(
        rows[0].schema().field(1).data_type(),
        FINGERPRINTS_SCHEMA.field(1).data_type()
    );
}
