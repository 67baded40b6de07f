//! Profile policies end to end against a real `imprintd`: the sqllogictest
//! scenarios of `tests/slt/policies/`, and live delivery — the WatchAnomalies
//! stream and a webhook receiver on loopback.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use imprint_e2e::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_slt_files() {
    imprint_e2e::slt::run_dir(&workspace_root().join("tests/slt/policies")).await;
}

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imprint_e2e::Imprintd;
use imprint_proto::alerts_v1::WatchAnomaliesRequest;
use imprint_proto::alerts_v1::alerts_client::AlertsClient;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};

const S: i64 = 1_000_000;

/// A webhook receiver on loopback: a real HTTP/1.1 server that answers the
/// first `fail_first` requests with 500 and then 200, keeping every body it
/// accepted.
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<serde_json::Value>>>,
    requests: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (acc, req) = (accepted.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (acc, req) = (acc.clone(), req.clone());
                std::thread::spawn(move || serve_connection(conn, fail_first, &acc, &req));
            }
        });
        Self {
            url,
            accepted,
            requests,
        }
    }

    fn anomalies(&self) -> Vec<serde_json::Value> {
        let bodies = self.accepted.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b["anomalies"].as_array().unwrap().clone())
            .collect()
    }
}

fn serve_connection(
    conn: std::net::TcpStream,
    fail_first: usize,
    accepted: &Mutex<Vec<serde_json::Value>>,
    requests: &Mutex<usize>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        // One request: headers, then Content-Length bytes of body.
        let mut length = 0usize;
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        assert!(first.starts_with("POST /hook HTTP/1.1"), "{first}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        let n = {
            let mut r = requests.lock().unwrap();
            *r += 1;
            *r
        };
        let status = if n <= fail_first {
            "500 Internal Server Error"
        } else {
            accepted
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            "200 OK"
        };
        write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
    }
}

fn fingerprint(container: &str, w: i64, items: &[(ItemKind, &str)]) -> Fingerprint {
    // Window 0 is 50 minutes ago, on a window boundary; fixed for the whole test.
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        (now / (30 * S) - 100) * 30 * S
    });
    Fingerprint {
        image: imprint_bench::digest_of(7),
        image_name: "shop/api:2".into(),
        node: format!("node-{container}"),
        container_id: container.into(),
        window_start_unix_micros: base + w * 30 * S,
        window_end_unix_micros: base + (w + 1) * 30 * S,
        items: items
            .iter()
            .map(|(k, key)| Item {
                kind: *k as i32,
                key: key.to_string(),
                count: 2,
            })
            .collect(),
        ..Default::default()
    }
}

const STEADY: &[(ItemKind, &str)] = &[
    (ItemKind::Process, "/srv/api"),
    (ItemKind::FileRead, "/srv/config.yaml"),
    (ItemKind::TcpIn, "8443"),
    (ItemKind::Syscall, "read"),
];

const NEW: &[(ItemKind, &str)] = &[
    (ItemKind::Process, "/usr/bin/curl"),
    (ItemKind::FileRead, "/root/.ssh/id_rsa"),
    (ItemKind::TcpOut, "6667"),
];

/// Pushes windows `a..b` for each container, one batch per window and container.
async fn push(
    server: &Imprintd,
    seq: &mut u64,
    a: i64,
    b: i64,
    containers: &[&str],
    extra: &[(ItemKind, &str)],
) {
    for w in a..b {
        for c in containers {
            let mut items = STEADY.to_vec();
            if *c == "c1" {
                items.extend_from_slice(extra);
            }
            *seq += 1;
            server
                .push(FingerprintBatch {
                    agent_id: "policy-test".into(),
                    seq: *seq,
                    fingerprints: vec![fingerprint(c, w, &items)],
                })
                .await
                .unwrap();
        }
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The stream, the CLI's `--follow` and a webhook get the anomalies live, the
/// webhook after a failed first delivery (retried with backoff, the failure
/// counted); after kill -9 the table holds each exactly once (re-derived from the
/// WAL, not duplicated) and the throttle still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_reach_the_stream_the_cli_and_a_webhook_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Imprintd::start(&dir.path().join("data"), &[]);
    let receiver = Receiver::start(1);
    for args in [
        vec!["settings", "set", "profiling.learning_period", "10m"],
        vec![
            "settings",
            "set",
            "alerts.webhook_url",
            receiver.url.as_str(),
        ],
        vec![
            "policy",
            "create",
            "shop-drift",
            "--scope",
            "shop/*",
            "--min-confidence",
            "high",
            "--severity",
            "critical",
        ],
    ] {
        let (ok, out, err) = server.cli(&args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    // A stream and the CLI follow from before anything happens.
    let mut stream = AlertsClient::new(server.authed().await)
        .watch_anomalies(WatchAnomaliesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut follow = std::process::Command::new(imprint_e2e::bin("imprint"))
        .args(["--server", &server.grpc_url(), "anomalies", "--follow"])
        .env("IMPRINT_TOKEN", &server.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let follow_out = follow.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(follow_out).lines() {
            let Ok(line) = line else { return };
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Its header line means it has subscribed and read the (empty) table.
    let header = line_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(header.starts_with("time"), "{header}");

    let mut seq = 0;
    // Learning: two containers, 10 minutes, the new things nowhere.
    push(&server, &mut seq, 0, 20, &["c1", "c2"], &[]).await;
    assert_eq!(
        imprint_e2e::scalar_i64(&server.sql("SELECT count(*) FROM anomalies").await),
        0,
        "nothing while learning"
    );
    // Done learning; c1 does three new things in windows 20..25.
    push(&server, &mut seq, 20, 25, &["c1", "c2"], NEW).await;

    // The stream delivers them live, each once (the rest are throttled).
    let mut streamed = Vec::new();
    while streamed.len() < 3 {
        let a = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("an anomaly within 20 s")
            .unwrap()
            .unwrap();
        streamed.push(a);
    }
    let mut keys: Vec<(String, String)> = streamed
        .iter()
        .map(|a| (a.kind.clone(), a.key.clone()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("file_read".into(), "/root/.ssh/id_rsa".into()),
            ("process".into(), "/usr/bin/curl".into()),
            ("tcp_out".into(), "6667".into()),
        ]
    );
    for a in &streamed {
        assert_eq!(
            (a.policy.as_str(), a.severity.as_str()),
            ("shop-drift", "critical")
        );
        assert_eq!(
            (a.container_id.as_str(), a.node.as_str()),
            ("c1", "node-c1")
        );
        assert_eq!(
            (a.image_name.as_str(), a.confidence.as_str()),
            ("shop/api:2", "high")
        );
        assert_eq!((a.count, a.missed), (2, 0));
    }
    // Nothing more: a further push of the same behaviour within 5 min is throttled.
    push(&server, &mut seq, 25, 26, &["c1"], NEW).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .is_err(),
        "throttled anomalies must not be streamed"
    );

    // The CLI printed the same three.
    let mut printed = Vec::new();
    while printed.len() < 3 {
        let line = line_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if !line.starts_with('(') {
            printed.push(line);
        }
    }
    for key in ["/usr/bin/curl", "/root/.ssh/id_rsa", "6667"] {
        assert!(
            printed
                .iter()
                .any(|l| l.ends_with(key) && l.contains("shop-drift")),
            "{key} not in {printed:?}"
        );
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // The webhook: the first POST got a 500, the retry (1 s later) delivered.
    let hooked = wait_for(
        &format!(
            "webhook deliveries (requests {}, bodies {:?}); server log:\n{}",
            *receiver.requests.lock().unwrap(),
            receiver.accepted.lock().unwrap(),
            server.log_text()
        ),
        Duration::from_secs(30),
        || {
            let a = receiver.anomalies();
            (a.len() >= 3).then_some(a)
        },
    );
    assert_eq!(hooked.len(), 3, "{hooked:?}");
    let mut ids: Vec<&str> = hooked.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut streamed_ids: Vec<&str> = streamed.iter().map(|a| a.id.as_str()).collect();
    streamed_ids.sort();
    assert_eq!(ids, streamed_ids);
    assert!(hooked.iter().all(|a| a["severity"] == "critical"
        && a["image"] == imprint_bench::digest_of(7).as_str()
        && a["time"].as_str().unwrap().ends_with('Z')));
    assert!(*receiver.requests.lock().unwrap() >= 2);
    let health = server.healthz();
    assert_eq!(health["alerts"]["anomalies_found"], 3, "{health}");
    assert_eq!(health["alerts"]["webhook_delivered"], 3, "{health}");
    assert!(
        health["alerts"]["webhook_failures"].as_u64().unwrap() >= 1,
        "{health}"
    );

    // kill -9: the anomalies were in the buffer only; replay finds them again, once.
    server.kill9();
    server.restart_on_same_ports();
    let rows = imprint_e2e::rows_as_text(
        &server
            .sql("SELECT kind, key, policy, severity, confidence, CAST(count AS BIGINT) FROM anomalies ORDER BY kind")
            .await,
    );
    assert_eq!(
        rows,
        vec![
            "file_read|/root/.ssh/id_rsa|shop-drift|critical|high|2",
            "process|/usr/bin/curl|shop-drift|critical|high|2",
            "tcp_out|6667|shop-drift|critical|high|2",
        ]
    );
    // The throttle came back with them: window 26 is within 5 min of window 20.
    push(&server, &mut seq, 26, 27, &["c1"], NEW).await;
    assert_eq!(
        imprint_e2e::scalar_i64(&server.sql("SELECT count(*) FROM anomalies").await),
        3
    );
}
