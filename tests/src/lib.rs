//! Helpers for the end-to-end tests: start the real `imprintd` binary, talk to it
//! with the real gRPC and Flight SQL clients, and find the Python tools (DuckDB,
//! moto) in the venv the test command builds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use imprint_proto::client::{AuthedChannel, authed};
use imprint_proto::ingest_v1::ingest_client::IngestClient;
use imprint_proto::ingest_v1::{FingerprintBatch, PushAck};
use tonic::transport::Channel;

/// The workspace root.
/// The wall clock in microseconds since the epoch (what window times are in).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as i64
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

pub use binaries::bin;

pub use imprint_bench::free_loopback_port as free_port;

/// Files under `dir` (recursively) whose name ends with `suffix` (`""`: all); 0 when `dir`
/// does not exist.
pub fn files_under(dir: &Path, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path, suffix)
            } else {
                usize::from(path.to_string_lossy().ends_with(suffix))
            }
        })
        .sum()
}

/// How often a server start is tried when its port was taken.
const PORT_ATTEMPTS: usize = 5;

/// A running `imprintd serve`.
#[derive(Debug)]
pub struct Imprintd {
    child: Option<Child>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// The admin token the server wrote at first start (empty without auth).
    pub token: String,
    /// The CA that signed the server's certificate, when it serves TLS.
    pub ca_cert: Option<PathBuf>,
}

impl Imprintd {
    /// Starts the server on `data_dir` with extra flags, on free ports, and waits
    /// until it accepts connections.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Self {
            child: None,
            grpc_addr: String::new(),
            http_addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            args,
            token: String::new(),
            ca_cert: None,
        };
        s.spawn(env);
        s
    }

    /// Starts the server with TLS on every listener, certificate from `tls`.
    pub fn start_tls(data_dir: &Path, tls: &TestTls, extra: &[&str]) -> Self {
        let mut args = vec![
            "--tls-cert".to_string(),
            tls.server_cert.display().to_string(),
            "--tls-key".to_string(),
            tls.server_key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut s = Self::start(data_dir, &args);
        s.ca_cert = Some(tls.ca_cert.clone());
        s
    }

    /// `http://` or, with TLS, `https://` + the gRPC address.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.ca_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// `http(s)://` + the HTTP address.
    pub fn http_url(&self) -> String {
        let scheme = if self.ca_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Starts on fresh ports, picking others when one was taken between the pick and the
    /// server's bind (tests run in parallel).
    fn spawn(&mut self, env: &[(&str, &str)]) {
        self.start_retrying(env, true);
    }

    /// Starts on the ports it had; a port taken meanwhile is waited for a little.
    fn spawn_on_ports(&mut self, env: &[(&str, &str)]) {
        self.start_retrying(env, false);
    }

    /// Up to [`PORT_ATTEMPTS`] starts while the server finds a port taken: on new ports
    /// (`fresh_ports`) or, after a pause, on the same ones.
    fn start_retrying(&mut self, env: &[(&str, &str)], fresh_ports: bool) {
        for _ in 0..PORT_ATTEMPTS {
            if fresh_ports {
                self.grpc_addr = format!("127.0.0.1:{}", free_port());
                self.http_addr = format!("127.0.0.1:{}", free_port());
            }
            match self.try_spawn_on_ports(env) {
                Err(log) if imprint_bench::ports::port_was_taken(&log) => {
                    if !fresh_ports {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                Err(log) => panic!("imprintd exited at start; log:\n{log}"),
                Ok(()) => return,
            }
        }
        panic!(
            "imprintd found {} or {} taken, {PORT_ATTEMPTS} times in a row",
            self.grpc_addr, self.http_addr
        );
    }

    /// Spawns and waits until both listeners accept; `Err` with what this start logged when
    /// the process exited first.
    fn try_spawn_on_ports(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        let logged_before = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("imprintd"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--grpc-addr",
                &self.grpc_addr,
                "--http-addr",
                &self.http_addr,
            ])
            .args(&self.args)
            .env("IMPRINT_LOG", "info,imprint_server=debug")
            // The tests replay fixed dates (2026-11-30, see slt.rs): no window-age bound
            // unless a test sets one (the env var yields to a --max-window-age flag).
            .env("IMPRINT_MAX_WINDOW_AGE", "36500d")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn imprintd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(&self.http_addr).is_ok()
                && std::net::TcpStream::connect(&self.grpc_addr).is_ok()
            {
                self.token = std::fs::read_to_string(self.data_dir.join("admin-token"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log_text();
                let this_start = log.get(logged_before..).unwrap_or(&log);
                return Err(format!("({status})\n{this_start}"));
            }
            assert!(
                Instant::now() < deadline,
                "imprintd did not start in 60 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `imprint` CLI against this server with its admin token; returns
    /// (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(bin("imprint"));
        cmd.args(["--server", &self.grpc_url()])
            .env("IMPRINT_TOKEN", &self.token)
            .args(args);
        if let Some(ca) = &self.ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        let out = cmd.output().expect("run imprint");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM and wait: a graceful stop persists everything.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        self.wait_exit(Duration::from_secs(120))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "imprintd did not exit in {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again with the same data and flags (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn(&[]);
    }

    /// Starts again with the same data, flags and ports (clients that know the address, like
    /// an agent, find it again).
    pub fn restart_on_same_ports(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn_on_ports(&[]);
    }

    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn(env);
    }

    /// A channel the way the CLI and agent make one (TLS with the test CA when set).
    pub async fn channel(&self) -> Channel {
        imprint_proto::client::connect(&self.grpc_url(), self.ca_cert.as_deref())
            .await
            .expect("connect")
    }

    /// A channel that sends the admin token.
    pub async fn authed(&self) -> AuthedChannel {
        authed(self.channel().await, &self.token).expect("token header")
    }

    pub async fn ingest(&self) -> IngestClient<AuthedChannel> {
        IngestClient::new(self.authed().await).max_encoding_message_size(64 << 20)
    }

    /// A Flight SQL client with the admin token.
    pub async fn flight(&self) -> FlightSqlServiceClient<Channel> {
        let mut client = FlightSqlServiceClient::new(self.channel().await);
        if !self.token.is_empty() {
            client.set_token(self.token.clone());
        }
        client
    }

    pub async fn push(&self, batch: FingerprintBatch) -> Result<PushAck, tonic::Status> {
        self.ingest()
            .await
            .push(batch)
            .await
            .map(|r| r.into_inner())
    }

    /// Runs SQL over Flight SQL.
    pub async fn sql(&self, query: &str) -> Vec<RecordBatch> {
        self.try_sql(query)
            .await
            .unwrap_or_else(|e| panic!("query {query:?} failed: {e}"))
    }

    pub async fn try_sql(
        &self,
        query: &str,
    ) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
        let mut client = self.flight().await;
        let info = client.execute(query.to_string(), None).await?;
        let mut out = Vec::new();
        for ep in info.endpoint {
            let stream = client.do_get(ep.ticket.expect("ticket")).await?;
            let mut b: Vec<RecordBatch> = stream
                .try_collect()
                .await
                .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
            out.append(&mut b);
        }
        Ok(out)
    }

    /// The single integer a `SELECT count(*)`-like query returns.
    pub async fn scalar_i64(&self, query: &str) -> i64 {
        scalar_i64(&self.sql(query).await)
    }

    /// `GET path` on the HTTP listener with an optional bearer token: the status
    /// and the body as JSON (`Null` when it is not JSON).
    pub fn http_get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("{}{path}", self.http_url()),
        ]);
        if let Some(t) = token {
            curl.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        if let Some(ca) = &self.ca_cert {
            curl.arg("--cacert").arg(ca);
        }
        let out = curl.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn healthz(&self) -> serde_json::Value {
        let mut curl = Command::new("curl");
        curl.args(["-sf", &format!("{}/healthz", self.http_url())]);
        if let Some(ca) = &self.ca_cert {
            curl.arg("--cacert").arg(ca);
        }
        let out = curl.output().expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Imprintd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A throw-away certificate authority and a server certificate it signed, for
/// `localhost` and `127.0.0.1`, written as PEM files into a directory.
#[derive(Debug)]
pub struct TestTls {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Imprint test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "imprintd");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let tls = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        };
        std::fs::write(&tls.ca_cert, ca_cert.pem()).expect("write CA");
        std::fs::write(&tls.server_cert, server_cert.pem()).expect("write cert");
        std::fs::write(&tls.server_key, server_key.serialize_pem()).expect("write key");
        tls
    }
}

/// The single integer of a one-row, one-column result (any integer type).
pub fn scalar_i64(batches: &[RecordBatch]) -> i64 {
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).expect("integer");
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("int64")
        .value(0)
}

/// Every row of a result as text lines (`a|b|c`), sorted: for exact comparisons.
pub fn rows_as_text(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                    .expect("formatter")
            })
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                cols.iter()
                    .map(|c| c.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    rows.sort();
    rows
}

/// The Python of the test venv (with duckdb, moto, boto3), if it exists. Under
/// CI a missing venv is a failure; elsewhere the caller skips loudly.
pub fn test_python() -> Option<PathBuf> {
    let p = std::env::var("IMPRINT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok() {
        panic!(
            "the test venv is missing at {}: the test command (./test.sh) must create it",
            p.display()
        );
    }
    skip::skipped(&format!(
        "no test venv at {} (./test.sh creates it; needs PyPI)",
        p.display()
    ));
    None
}

/// Runs the Python `script` with `args` and parses what it printed as JSON; panics with its
/// stderr when it fails.
pub fn run_python_json(python: &Path, script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "Python script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Runs `imprintd serve` on `data_dir` (ephemeral ports) for a start that is expected to fail:
/// its exit status and stderr.
pub fn serve_expecting_failure(data_dir: &Path) -> (ExitStatus, String) {
    let out = Command::new(bin("imprintd"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .expect("run imprintd");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Total items in batches.
pub fn item_count(batches: &[FingerprintBatch]) -> i64 {
    batches
        .iter()
        .flat_map(|b| &b.fingerprints)
        .map(|f| f.items.len() as i64)
        .sum()
}

/// Sum of item counts in batches.
pub fn count_sum(batches: &[FingerprintBatch]) -> i64 {
    batches
        .iter()
        .flat_map(|b| &b.fingerprints)
        .flat_map(|f| &f.items)
        .map(|i| i.count as i64)
        .sum()
}

/// A real S3-compatible server (moto, from the test venv) on a loopback port.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub const ACCESS_KEY: &'static str = "imprint-test";
    pub const SECRET_KEY: &'static str = "imprint-test-secret";
    pub const REGION: &'static str = "us-east-1";

    /// Starts moto_server and creates `bucket`. `None` (after a loud message) when
    /// the venv is missing outside CI.
    pub fn start(bucket: &str) -> Option<Self> {
        let python = test_python()?;
        let moto = python.with_file_name("moto_server");
        assert!(
            moto.exists(),
            "{} is missing: the test venv needs moto[server]",
            moto.display()
        );
        let port = free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='{}', \
             aws_secret_access_key='{}', region_name='{}').create_bucket(Bucket='{bucket}')",
            Self::ACCESS_KEY,
            Self::SECRET_KEY,
            Self::REGION
        );
        let out = Command::new(&python)
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "creating the bucket failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { child, endpoint })
    }

    /// The environment an S3 client needs for this server.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY),
            ("AWS_REGION", Self::REGION),
        ]
    }

    /// An object store on `bucket`/`prefix` of this server, for embedded readers.
    pub fn object_store(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> std::sync::Arc<dyn object_store::ObjectStore> {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_access_key_id(Self::ACCESS_KEY)
            .with_secret_access_key(Self::SECRET_KEY)
            .with_region(Self::REGION)
            .build()
            .expect("s3 store");
        std::sync::Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub mod agent;
pub mod binaries;
pub mod osv;
pub mod skip;
pub mod slt;
