//! `imprintd serve` flags. Every flag is also an `IMPRINT_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectStoreKind {
    /// Files under --data-dir.
    Local,
    /// An S3 bucket (or any S3-compatible server, with --endpoint).
    S3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Data directory. With the local object store, the Parquet files and catalog
    /// live here (hive layout, readable by DuckDB/Spark/pandas); the WAL lives in
    /// its `wal/` subdirectory unless --wal-dir says otherwise.
    #[arg(long, env = "IMPRINT_DATA_DIR", default_value = "./imprint-data")]
    pub data_dir: PathBuf,

    /// Where Parquet files and the catalog are kept.
    #[arg(long, env = "IMPRINT_OBJECT_STORE", value_enum, default_value_t = ObjectStoreKind::Local)]
    pub object_store: ObjectStoreKind,

    /// S3 bucket (with --object-store s3). Credentials and region come from the
    /// usual AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION variables.
    #[arg(long, env = "IMPRINT_BUCKET")]
    pub bucket: Option<String>,

    /// Key prefix inside the bucket, so several stores can share one bucket.
    #[arg(long, env = "IMPRINT_PREFIX")]
    pub prefix: Option<String>,

    /// S3 endpoint URL for S3-compatible servers (MinIO, Ceph, moto, ...).
    /// http:// endpoints are allowed.
    #[arg(long, env = "IMPRINT_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Write-ahead log directory. Always a local disk: acks wait for its fsync.
    /// [default: <data-dir>/wal]
    #[arg(long, env = "IMPRINT_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// gRPC listen address: ingest and Arrow Flight SQL.
    #[arg(long, env = "IMPRINT_GRPC_ADDR", default_value = "127.0.0.1:7340")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address: /healthz.
    #[arg(long, env = "IMPRINT_HTTP_ADDR", default_value = "127.0.0.1:7341")]
    pub http_addr: SocketAddr,

    /// PEM certificate chain for TLS on every listener (gRPC, Flight SQL, HTTP).
    /// Needs --tls-key. Without both, the listeners speak plain text.
    #[arg(long, env = "IMPRINT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "IMPRINT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Memory bound of the write buffer. At the bound, ingest answers
    /// RESOURCE_EXHAUSTED and persistence is forced. Suffixes: KiB, MiB, GiB.
    #[arg(long, env = "IMPRINT_MAX_BUFFER_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_buffer_bytes: u64,

    /// A partition (image × hour) is written to Parquet when it holds this much.
    #[arg(long, env = "IMPRINT_PERSIST_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub persist_bytes: u64,

    /// ...or when its oldest buffered row is this old. Suffixes: ms, s, m, h, d.
    #[arg(long, env = "IMPRINT_PERSIST_AGE", default_value = "5m", value_parser = parse_duration)]
    pub persist_age: Duration,

    /// An image's profile summaries (one per hour partition and persist) are merged
    /// into one when it has this many, so start-up time and the catalog grow with
    /// the images, not with time.
    #[arg(long, env = "IMPRINT_SUMMARY_ROLLUP_PARTS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(2..))]
    pub summary_rollup_parts: u32,

    /// The WAL starts a new segment file at this size.
    #[arg(long, env = "IMPRINT_WAL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub wal_segment_bytes: u64,

    /// Memory one query may use (its own pool; queries never spill to disk). A
    /// query over it fails with RESOURCE_EXHAUSTED; the others go on.
    #[arg(long, env = "IMPRINT_QUERY_MEMORY_LIMIT", default_value = "2GiB", value_parser = parse_bytes)]
    pub query_memory_limit: u64,

    /// Longest a query may run (planning, waiting for a slot, and streaming its
    /// result). Over it, the query fails with DEADLINE_EXCEEDED.
    #[arg(long, env = "IMPRINT_QUERY_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub query_timeout: Duration,

    /// Queries running at once; more wait (within their timeout) for a slot.
    #[arg(long, env = "IMPRINT_MAX_CONCURRENT_QUERIES", default_value_t = 16)]
    pub max_concurrent_queries: usize,

    /// Arrow IPC bytes one query's result may stream. A larger result is cut off with
    /// RESOURCE_EXHAUSTED (add a LIMIT or a narrower WHERE).
    #[arg(long, env = "IMPRINT_MAX_RESULT_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub max_result_bytes: u64,

    /// Longest SQL text a query or prepared statement may have.
    #[arg(long, env = "IMPRINT_MAX_SQL_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_sql_bytes: u64,

    /// Prepared statements open at once, over all clients; creating one more fails with
    /// RESOURCE_EXHAUSTED until some are closed.
    #[arg(long, env = "IMPRINT_MAX_PREPARED_STATEMENTS", default_value_t = 4096)]
    pub max_prepared_statements: usize,

    /// Prepared statements one token (or, without auth, the whole server) may have open.
    #[arg(
        long,
        env = "IMPRINT_MAX_PREPARED_STATEMENTS_PER_TOKEN",
        default_value_t = 256
    )]
    pub max_prepared_statements_per_token: usize,

    /// Bytes of parameter data one DoPut may send to bind a prepared statement; the
    /// upload is stopped as soon as it goes over.
    #[arg(long, env = "IMPRINT_MAX_PARAMETER_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_parameter_bytes: u64,

    /// Windows that started longer ago than this are refused (an agent's clock far behind,
    /// or a replay of old data). Agents spool while the server is away; keep this above the
    /// longest outage whose data you want.
    #[arg(long, env = "IMPRINT_MAX_WINDOW_AGE", default_value = "7d", value_parser = parse_duration)]
    pub max_window_age: Duration,

    /// Agent ids the server has never seen that one token may bring in per hour (a stolen
    /// agent token cannot fill the server with agents).
    #[arg(
        long,
        env = "IMPRINT_MAX_NEW_AGENTS_PER_TOKEN_PER_HOUR",
        default_value_t = 1000
    )]
    pub max_new_agents_per_token_per_hour: usize,

    /// Deepest nesting of `[` in a query's SQL; deeper is INVALID_ARGUMENT before parsing (the
    /// SQL parser's time doubles with each level of `a.b[…`).
    #[arg(long, env = "IMPRINT_MAX_SQL_SUBSCRIPT_DEPTH", default_value_t = crate::query::DEFAULT_MAX_SUBSCRIPT_DEPTH)]
    pub max_sql_subscript_depth: usize,

    /// Most bytes one call of a function whose output size the query chooses (`repeat`,
    /// `lpad`, `rpad`) may produce: such a call allocates inside one
    /// step of the query, out of reach of the memory limit and the timeout.
    #[arg(long, env = "IMPRINT_MAX_FUNCTION_OUTPUT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub max_function_output_bytes: u64,

    /// Most distinct items one image profile holds; items first seen past it are counted
    /// (the profile's `incomplete_reasons` says `item_cap`) but not stored.
    #[arg(long, env = "IMPRINT_MAX_PROFILE_ITEMS", default_value_t = imprint_query::profile::DEFAULT_MAX_PROFILE_ITEMS)]
    pub max_profile_items: usize,

    /// Turn authentication off: every request is allowed. For local experiments
    /// only; a warning is logged at start.
    #[arg(long, env = "IMPRINT_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Log format. The level is set with IMPRINT_LOG (or RUST_LOG), e.g. "info" or
    /// "imprint_server=debug".
    #[arg(long, env = "IMPRINT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `1024`, `64KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected e.g. 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub use imprint_query::settings::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(
            parse_bytes("12XB")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
    }
}
