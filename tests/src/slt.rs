//! sqllogictest over the real server: `.slt` files whose queries go through
//! Flight SQL, plus three directives that act through the real interfaces:
//!
//! ```text
//! statement ok
//! PUSH image=1 name=app:1 node=n1 container=c1 windows=0..10 items=process:/app,tcp_out:443 [dropped=3] [paused] [late]
//!
//! statement ok
//! SETTING profiling.learning_period 5m
//!
//! statement ok
//! RESTART
//!
//! statement ok
//! RESET image=1
//!
//! statement ok
//! PERIOD image=1 2m
//!
//! statement ok
//! CLI policy create drift --scope 'api:*'
//!
//! query T
//! CLI anomalies
//! ----
//! <each line of stdout>
//! ```
//!
//! `PUSH` sends one fingerprint per 30 s window `a..b` (exclusive end) over gRPC
//! ingest; window 0 starts at [`BASE_MICROS`] (2026-11-30T00:00:00Z), or with
//! `at=reset` at the first window boundary after the last `RESET` (which is now:
//! such windows are real-time, so queries must not print their timestamps).
//! `image=N` is the digest `imprint_bench::digest_of(N)`, which queries name as
//! `$imageN` (after `control substitution on`). `SETTING` uses the admin RPC;
//! `RESTART` stops the server gracefully and starts it again on the same data;
//! `RESET` is `imprint profile reset`, `PERIOD` sets an image's own learning
//! period (`default` removes it), both through the admin RPCs. `CLI …` runs the
//! real `imprint` binary with those arguments (split at spaces; `'…'` quotes)
//! and `$imageN` substituted; as a query its rows are the lines it printed, with
//! runs of spaces collapsed to one.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use async_trait::async_trait;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{ResetProfileRequest, SetLearningPeriodRequest, SetSettingRequest};
use imprint_proto::ingest_v1::{Completeness, Fingerprint, FingerprintBatch, Item, ItemKind};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::Imprintd;

/// Start of window 0: 2026-11-30T00:00:00Z.
pub const BASE_MICROS: i64 = 1_795_996_800_000_000;
const WINDOW_MICROS: i64 = 30_000_000;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(String);

/// One server per `.slt` file.
#[derive(Debug)]
pub struct ImprintSlt {
    server: Imprintd,
    _dir: tempfile::TempDir,
    seq: u64,
    /// Start of window 0 for `PUSH … at=reset`.
    reset_base: Option<i64>,
}

impl ImprintSlt {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Imprintd::start(&dir.path().join("data"), &[]);
        Self {
            server,
            _dir: dir,
            seq: 0,
            reset_base: None,
        }
    }

    async fn push(&mut self, spec: &str) -> Result<u64, SltError> {
        let fail = |m: String| SltError(format!("PUSH {spec}: {m}"));
        let mut fp = Fingerprint::default();
        let mut windows = (0i64, 1i64);
        let mut completeness = Completeness::default();
        let mut items = Vec::new();
        let mut base = BASE_MICROS;
        for word in spec.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            match k {
                "image" => {
                    fp.image = imprint_bench::digest_of(v.parse().map_err(|_| fail(word.into()))?)
                }
                "name" => fp.image_name = v.into(),
                "node" => fp.node = v.into(),
                "container" => fp.container_id = v.into(),
                "windows" => {
                    let (a, b) = v.split_once("..").ok_or_else(|| fail(word.into()))?;
                    windows = (
                        a.parse().map_err(|_| fail(word.into()))?,
                        b.parse().map_err(|_| fail(word.into()))?,
                    );
                }
                "items" => {
                    for item in v.split(',').filter(|i| !i.is_empty()) {
                        let (kind, key) = item.split_once(':').ok_or_else(|| fail(item.into()))?;
                        let kind = ItemKind::from_sql_name(kind)
                            .ok_or_else(|| fail(format!("unknown kind {kind}")))?;
                        items.push(Item {
                            kind: kind as i32,
                            key: key.into(),
                            count: 1,
                        });
                    }
                }
                "dropped" => {
                    completeness.dropped_events = v.parse().map_err(|_| fail(word.into()))?
                }
                "at" if v == "reset" => {
                    base = self
                        .reset_base
                        .ok_or_else(|| fail("at=reset before any RESET".into()))?
                }
                "paused" => completeness.capture_paused = true,
                "late" => completeness.started_after_container = true,
                _ => return Err(fail(format!("unknown word {word}"))),
            }
        }
        fp.items = items;
        fp.completeness = Some(completeness);
        let fingerprints: Vec<Fingerprint> = (windows.0..windows.1)
            .map(|w| Fingerprint {
                window_start_unix_micros: base + w * WINDOW_MICROS,
                window_end_unix_micros: base + (w + 1) * WINDOW_MICROS,
                ..fp.clone()
            })
            .collect();
        let n = fingerprints.len() as u64;
        self.seq += 1;
        self.server
            .push(FingerprintBatch {
                agent_id: "slt".into(),
                seq: self.seq,
                fingerprints,
            })
            .await
            .map_err(|s| fail(s.message().to_string()))?;
        Ok(n)
    }

    fn image_of(spec: &str) -> Result<String, SltError> {
        spec.strip_prefix("image=")
            .and_then(|n| n.parse().ok())
            .map(imprint_bench::digest_of)
            .ok_or_else(|| SltError(format!("{spec:?}: want image=N")))
    }

    async fn reset(&mut self, spec: &str) -> Result<(), SltError> {
        let r = AdminClient::new(self.server.authed().await)
            .reset_profile(ResetProfileRequest {
                image: Self::image_of(spec.trim())?,
            })
            .await
            .map_err(|s| SltError(format!("RESET {spec}: {}", s.message())))?
            .into_inner();
        // Window 0 of `at=reset`: the first window boundary at or after the reset.
        let at = r.reset_unix_micros;
        self.reset_base = Some(at + (WINDOW_MICROS - at.rem_euclid(WINDOW_MICROS)) % WINDOW_MICROS);
        Ok(())
    }

    async fn period(&mut self, spec: &str) -> Result<(), SltError> {
        let (image, period) = spec
            .trim()
            .split_once(' ')
            .ok_or_else(|| SltError(format!("PERIOD {spec}: want image=N DURATION|default")))?;
        let period = match period.trim() {
            "default" => String::new(),
            p => p.to_string(),
        };
        AdminClient::new(self.server.authed().await)
            .set_learning_period(SetLearningPeriodRequest {
                image: Self::image_of(image)?,
                learning_period: period,
            })
            .await
            .map_err(|s| SltError(format!("PERIOD {spec}: {}", s.message())))?;
        Ok(())
    }

    async fn set(&mut self, spec: &str) -> Result<(), SltError> {
        let (key, value) = spec
            .split_once(' ')
            .ok_or_else(|| SltError(format!("SETTING {spec}: want KEY VALUE")))?;
        AdminClient::new(self.server.authed().await)
            .set_setting(SetSettingRequest {
                key: key.into(),
                value: value.trim().into(),
            })
            .await
            .map_err(|s| SltError(s.message().to_string()))?;
        Ok(())
    }
}

/// Splits a command line at spaces; `'…'` quotes a word with spaces.
fn split_args(line: &str) -> Result<Vec<String>, SltError> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => word.push(c),
        }
    }
    if quoted {
        return Err(SltError(format!("CLI {line}: unclosed quote")));
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// Runs every `.slt` file of `dir` (sorted), each against its own server, and
/// fails naming the files that failed.
pub async fn run_dir(dir: &std::path::Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("slt directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async { Ok(ImprintSlt::start()) });
        for n in 1..10 {
            runner.set_var(format!("image{n}"), imprint_bench::digest_of(n));
        }
        match runner.run_file_async(file).await {
            Ok(()) => println!("ok   {}", file.display()),
            Err(e) => {
                println!("FAIL {}\n{e}", file.display());
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[async_trait]
impl AsyncDB for ImprintSlt {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let sql = sql.trim();
        if let Some(spec) = sql.strip_prefix("PUSH ") {
            return Ok(DBOutput::StatementComplete(self.push(spec).await?));
        }
        if let Some(spec) = sql.strip_prefix("SETTING ") {
            self.set(spec).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(spec) = sql.strip_prefix("RESET ") {
            self.reset(spec).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(spec) = sql.strip_prefix("PERIOD ") {
            self.period(spec).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(args) = sql.strip_prefix("CLI ") {
            let args = split_args(args)?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, stdout, stderr) = self.server.cli(&args);
            if !ok {
                return Err(SltError(format!("CLI {args:?} failed: {stderr}")));
            }
            let rows: Vec<Vec<String>> = stdout
                .lines()
                .map(|l| vec![l.split_whitespace().collect::<Vec<_>>().join(" ")])
                .collect();
            return Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Text],
                rows,
            });
        }
        if sql == "RESTART" {
            let status = self.server.terminate();
            if !status.success() {
                return Err(SltError(format!("graceful stop failed: {status}")));
            }
            self.server.restart();
            return Ok(DBOutput::StatementComplete(0));
        }
        let batches = self
            .server
            .try_sql(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        Ok(to_output(&batches))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "imprint"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn to_output(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let Some(first) = batches.first() else {
        return DBOutput::Rows {
            types: vec![],
            rows: vec![],
        };
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                DefaultColumnType::FloatingPoint
            }
            _ => DefaultColumnType::Text,
        })
        .collect();
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                    .expect("every type formats")
            })
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let v = c.value(r).to_string();
                        if v.is_empty() { "(empty)".into() } else { v }
                    })
                    .collect(),
            );
        }
    }
    DBOutput::Rows { types, rows }
}
