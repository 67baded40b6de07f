//! The fuzz targets: each turns one input into a run of a real parser or entry point, checks
//! an oracle where one exists, and names the outcome (its class grows the corpus).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};
use imprint_query::inuse::{sbom, vulns};
use imprint_server::engine::{Engine, EngineConfig};
use imprint_server::query::{QueryLimits, QueryRunner};
use imprint_server::validate::{MAX_KEY_BYTES, drop_oversized_keys, validate_batch};
use imprint_server::wal::Wal;
use prost::Message;

/// One target. `run` returns the outcome's class, or `Err` when an oracle was violated (a
/// finding, like a panic).
pub trait Target {
    fn name(&self) -> &'static str;
    fn seeds(&self) -> Vec<Vec<u8>>;
    fn dictionary(&self) -> &'static [&'static str] {
        &[]
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String>;
}

/// Every target, by name.
pub fn all() -> Vec<Box<dyn Target>> {
    vec![
        Box::new(Batch),
        Box::new(WalReader::new()),
        Box::new(SbomImport),
        Box::new(ScannerReport),
        Box::new(Osv),
        Box::new(Zip),
        Box::new(Sql::new()),
    ]
}

/// An error's class: its text with digits and quoted parts taken out, cut short, so that
/// "packages[3].name" and "packages[9].name" are one class.
fn class(prefix: &str, text: &str) -> String {
    let mut out = String::from(prefix);
    out.push(':');
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
            continue;
        }
        if quoted || c.is_ascii_digit() {
            continue;
        }
        out.push(c);
        if out.len() > 60 {
            break;
        }
    }
    out
}

const NOW: i64 = 1_800_000_000_000_000;

fn sample_batch(items: usize) -> FingerprintBatch {
    sample_batch_at(NOW, items)
}

fn sample_batch_at(now: i64, items: usize) -> FingerprintBatch {
    FingerprintBatch {
        agent_id: "node-1".into(),
        seq: 7,
        fingerprints: vec![Fingerprint {
            node: "node-1".into(),
            container_id: "c1".into(),
            image: format!("sha256:{}", "ab".repeat(32)),
            image_name: "app:1".into(),
            window_start_unix_micros: now - 30_000_000,
            window_end_unix_micros: now,
            items: (0..items)
                .map(|i| Item {
                    kind: ItemKind::ALL[i % ItemKind::ALL.len()] as i32,
                    key: if i % 10 >= 5 && i % 10 <= 8 {
                        format!("{}", 1000 + i)
                    } else {
                        format!("/usr/lib/file-{i}")
                    },
                    count: i as u64 + 1,
                })
                .collect(),
            completeness: None,
        }],
    }
}

/// The ingest batch decoder and validator (what every Push goes through).
struct Batch;

impl Target for Batch {
    fn name(&self) -> &'static str {
        "batch"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            sample_batch(3).encode_to_vec(),
            sample_batch(40).encode_to_vec(),
        ]
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let Ok(mut batch) = FingerprintBatch::decode(input) else {
            return Ok("decode-error".into());
        };
        drop_oversized_keys(&mut batch);
        match validate_batch(&batch, input.len(), NOW, NOW - 7 * 86_400_000_000) {
            Err(e) => Ok(class("invalid", &e.field)),
            Ok(()) => {
                // Oracle: a batch that passes has only keys within the limit and known kinds.
                for fp in &batch.fingerprints {
                    for item in &fp.items {
                        if item.key.len() > MAX_KEY_BYTES || ItemKind::try_from(item.kind).is_err()
                        {
                            return Err(format!(
                                "accepted a bad item: kind {} key of {} bytes",
                                item.kind,
                                item.key.len()
                            ));
                        }
                    }
                }
                Ok("valid".into())
            }
        }
    }
}

/// The WAL reader on torn and flipped segments. Oracle: every record it returns is one that
/// was written (a damaged record is never handed out as data).
struct WalReader {
    dir: tempfile::TempDir,
    segment_name: PathBuf,
    written: Vec<Vec<u8>>,
    segment: Vec<u8>,
    runs: u64,
}

impl WalReader {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = dir.path().join("setup");
        let written: Vec<Vec<u8>> = (0..20u8)
            .map(|i| sample_batch(usize::from(i) + 1).encode_to_vec())
            .collect();
        {
            let (mut wal, _) = Wal::open(&setup, 1 << 30).expect("open a WAL");
            for chunk in written.chunks(3) {
                let payloads: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                wal.append(&payloads).expect("append");
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&setup)
            .expect("read the WAL dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .collect();
        files.sort();
        let path = files.pop().expect("one segment with records");
        let segment = std::fs::read(&path).expect("read the segment");
        Self {
            segment_name: PathBuf::from(path.file_name().expect("a name")),
            dir,
            written,
            segment,
            runs: 0,
        }
    }
}

impl Target for WalReader {
    fn name(&self) -> &'static str {
        "wal"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![self.segment.clone()]
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        self.runs += 1;
        let dir = self.dir.path().join(format!("run-{}", self.runs));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(&self.segment_name), input).map_err(|e| e.to_string())?;
        let result = Wal::open(&dir, 1 << 30);
        let outcome = match result {
            Err(e) => Ok(class("error", &e.to_string())),
            Ok((_, records)) => {
                if let Some(r) = records.iter().find(|r| !self.written.contains(&r.payload)) {
                    Err(format!(
                        "record {} came back damaged ({} bytes)",
                        r.seq,
                        r.payload.len()
                    ))
                } else {
                    Ok(format!("records:{}", records.len().min(20)))
                }
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        outcome
    }
}

const JSON_TOKENS: &[&str] = &[
    "\"artifacts\"",
    "\"schema\"",
    "\"spdxVersion\"",
    "\"SPDX-2.3\"",
    "\"bomFormat\"",
    "\"CycloneDX\"",
    "\"components\"",
    "\"packages\"",
    "\"files\"",
    "\"hasFiles\"",
    "\"relationships\"",
    "\"CONTAINS\"",
    "\"path\"",
    "\"fileName\"",
    "\"purl\"",
    "\"metadata\"",
    "\"sitePackagesRootPath\"",
    "\"../../..\"",
    "\"/\"",
    "null",
    "[]",
    "{}",
    "1e999",
    "-0",
    "\"\\u0000\"",
    "[[[[[[[[",
    "\"matches\"",
    "\"vulnerability\"",
    "\"artifact\"",
    "\"Results\"",
    "\"Vulnerabilities\"",
    "\"affected\"",
    "\"ranges\"",
    "\"events\"",
    "\"introduced\"",
    "\"fixed\"",
    "\"versions\"",
    "\"ecosystem\"",
];

/// SBOM import (syft JSON, SPDX 2.3, CycloneDX).
struct SbomImport;

impl Target for SbomImport {
    fn name(&self) -> &'static str {
        "sbom"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            br#"{"schema":{"version":"16"},"artifacts":[{"name":"requests","version":"2.19.0","type":"python","purl":"pkg:pypi/requests@2.19.0","metadata":{"sitePackagesRootPath":"/usr/lib/python3/site-packages","files":[{"path":"requests/__init__.py"},{"path":"../../../bin/x"}]}}]}"#.to_vec(),
            br#"{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","packages":[{"SPDXID":"SPDXRef-p1","name":"sed","versionInfo":"4.9-1","externalRefs":[{"referenceType":"purl","referenceLocator":"pkg:deb/debian/sed@4.9-1"}],"hasFiles":["SPDXRef-f1"]}],"files":[{"SPDXID":"SPDXRef-f1","fileName":"/bin/sed"}],"relationships":[{"spdxElementId":"SPDXRef-p1","relationshipType":"CONTAINS","relatedSpdxElement":"SPDXRef-f1"}]}"#.to_vec(),
            br#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"type":"library","name":"flask","version":"2.0.0","purl":"pkg:pypi/flask@2.0.0","components":[{"type":"file","name":"/app/flask/app.py"}]}]}"#.to_vec(),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        JSON_TOKENS
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        match sbom::parse(input, "/") {
            Err(e) => Ok(class("error", &e.to_string())),
            Ok((format, inventory)) => {
                // Oracle: every file path is absolute after normalisation.
                if let Some(f) = inventory
                    .packages
                    .iter()
                    .flat_map(|p| &p.files)
                    .find(|f| !f.starts_with('/'))
                {
                    return Err(format!("a relative file path came out: {f:?}"));
                }
                Ok(format!("ok:{format:?}:{}", inventory.packages.len().min(5)))
            }
        }
    }
}

/// Grype and Trivy report import.
struct ScannerReport;

impl Target for ScannerReport {
    fn name(&self) -> &'static str {
        "report"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            include_bytes!("../../query/tests/fixtures/grype-requests.json").to_vec(),
            include_bytes!("../../query/tests/fixtures/trivy-image.json").to_vec(),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        JSON_TOKENS
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        Ok(match vulns::parse_report(input) {
            Err(e) => class("error", &e.to_string()),
            Ok((format, v)) => format!("ok:{format:?}:{}", v.len().min(5)),
        })
    }
}

/// OSV advisory documents.
struct Osv;

impl Target for Osv {
    fn name(&self) -> &'static str {
        "osv"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![br#"{"schema_version":"1.6.0","id":"PYSEC-2018-28","modified":"2021-07-01T00:00:00Z","aliases":["CVE-2018-18074"],"summary":"x","affected":[{"package":{"ecosystem":"PyPI","name":"requests"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.20.0"}]}],"versions":["2.19.0","2.19.1"]}]}"#.to_vec()]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        JSON_TOKENS
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        Ok(match vulns::parse_osv(input, "fuzz.json") {
            Err(e) => class("error", &e.to_string()),
            Ok(_) => "ok".into(),
        })
    }
}

/// The ZIP reader of `imprint import osv all.zip`. Oracle: nothing inflates past the limit.
struct Zip;

impl Target for Zip {
    fn name(&self) -> &'static str {
        "zip"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![include_bytes!("../../server/src/cli/testdata/osv.zip").to_vec()]
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        use imprint_server::cli::zip;
        match zip::members(input, ".json") {
            // Errors start with the member's name, which mutations change at will.
            Err(e) => Ok(class("error", e.rsplit(": ").next().unwrap_or(&e))),
            Ok(members) => {
                if let Some((name, _)) = members
                    .iter()
                    .find(|(_, c)| c.len() > zip::MAX_MEMBER_BYTES)
                {
                    return Err(format!("{name} inflated past the limit"));
                }
                Ok(format!("members:{}", members.len().min(5)))
            }
        }
    }
}

/// The SQL entry point: plan (read-only check) and run against a real engine holding a few
/// rows. Oracle: a statement that changes anything (DDL, DML, SET …) is never planned.
struct Sql {
    runtime: tokio::runtime::Runtime,
    runner: QueryRunner,
    _engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

const WRITE_KEYWORDS: &[&str] = &[
    "CREATE",
    "DROP",
    "INSERT",
    "COPY",
    "SET",
    "DELETE",
    "UPDATE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "ALTER",
    "TRUNCATE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "START",
    "RESET",
];

impl Sql {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = runtime.block_on(async {
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
                .expect("local store");
            let engine = Engine::open(Arc::new(store), EngineConfig::new(dir.path().join("wal")))
                .await
                .expect("open an engine");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_micros() as i64;
            engine
                .push(sample_batch_at(now - 60_000_000, 30))
                .await
                .expect("push");
            engine
        });
        let limits = QueryLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(2),
            max_concurrent: 1,
            max_result_bytes: 16 << 20,
            max_sql_bytes: 64 << 10,
            max_subscript_depth: imprint_server::query::DEFAULT_MAX_SUBSCRIPT_DEPTH,
        };
        let runner = QueryRunner::new(engine.session().clone(), limits);
        Self {
            runtime,
            runner,
            _engine: engine,
            _dir: dir,
        }
    }
}

impl Target for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            "SELECT kind, count(*) FROM fingerprints GROUP BY kind ORDER BY 2 DESC",
            "SELECT * FROM windows WHERE container_id = 'c1' LIMIT 5",
            "SELECT p.kind, p.key FROM profiles p JOIN profile_status s ON p.image = s.image",
            "SELECT key, value FROM settings",
            "WITH t AS (SELECT key FROM fingerprints) SELECT count(DISTINCT key) FROM t",
            "SELECT * FROM information_schema.tables",
            "CREATE EXTERNAL TABLE t (a VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x' STORED AS CSV",
            "SET datafusion.execution.batch_size = 1",
            "SELECT * FROM fingerprints WHERE key = ? AND count > ?",
            "EXPLAIN SELECT regexp_replace(key, '(a+)+$', 'x') FROM fingerprints",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            " SELECT ",
            " FROM ",
            " WHERE ",
            " JOIN ",
            " UNION ALL ",
            " GROUP BY ",
            " ORDER BY ",
            " LIMIT 1",
            "(",
            ")",
            "'",
            ",",
            ";",
            " * ",
            "CREATE ",
            "DROP TABLE ",
            "COPY ",
            "SET ",
            "INSERT INTO ",
            " VALUES (1)",
            "EXPLAIN ",
            "information_schema.",
            "unnest(",
            "range(1000000000)",
            "generate_series(1, 100000000)",
            "array_agg(",
            "string_agg(",
            "repeat('x', 1000000000)",
            "CAST(",
            " AS ",
            "NULL",
            "fingerprints",
            "windows",
            "profiles",
            "anomalies",
            "packages",
            "vulnerabilities",
            "settings",
            "$1",
            "?",
        ]
    }
    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let Ok(sql) = std::str::from_utf8(input) else {
            return Ok("not-utf8".into());
        };
        let first_word = sql
            .trim_start()
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let runner = &self.runner;
        self.runtime.block_on(async {
            let planned = match runner.plan(sql, Ok).await {
                Err(status) => return Ok(class(&format!("{:?}", status.code()), status.message())),
                Ok(p) => p,
            };
            if WRITE_KEYWORDS.contains(&first_word.as_str()) {
                return Err(format!("a {first_word} statement was planned: {sql:?}"));
            }
            let mut stream = match planned.execute().await {
                Err(status) => {
                    return Ok(class(
                        &format!("exec-{:?}", status.code()),
                        status.message(),
                    ));
                }
                Ok(s) => s,
            };
            let mut rows = 0;
            while let Some(next) = stream.next().await {
                match next {
                    Ok(batch) => rows += batch.num_rows(),
                    Err(status) => {
                        return Ok(class(
                            &format!("stream-{:?}", status.code()),
                            status.message(),
                        ));
                    }
                }
            }
            Ok(format!("rows:{}", rows.min(10)))
        })
    }
}
