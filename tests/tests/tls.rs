//! TLS on every listener, with a certificate authority the test generates: the
//! `imprint` CLI with `--ca-cert`, the gRPC clients (ingest, Flight SQL), HTTP
//! through curl, and Python ADBC over `grpc+tls://`. Clients that do not trust
//! the CA, or speak plain text, are refused.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::process::Command;

use imprint_e2e::{Imprintd, TestTls, bin, item_count, test_python};

fn imprint_cli(server: &Imprintd, args: &[&str]) -> std::process::Output {
    Command::new(bin("imprint"))
        .args(["--server", &server.grpc_url()])
        .args(["--data-dir", server.data_dir.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run imprint")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TestTls::generate(dir.path());
    let server = Imprintd::start_tls(&dir.path().join("data"), &tls, &[]);
    assert!(
        server.log_text().contains("tls=true"),
        "{}",
        server.log_text()
    );

    // Ingest over TLS (the channel uses the test CA).
    let mut fleet = imprint_bench::Fleet::new(imprint_bench::FleetSpec {
        images: 2,
        containers_per_image: 2,
        ..Default::default()
    });
    let batches = fleet.batches(0);
    let items = item_count(&batches);
    for b in batches {
        server.push(b).await.unwrap();
    }
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        items
    );

    // The CLI with --ca-cert: the default table output and a count it can check.
    let ca = tls.ca_cert.to_str().unwrap();
    let out = imprint_cli(
        &server,
        &[
            "--ca-cert",
            ca,
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM fingerprints",
        ],
    );
    assert!(out.status.success(), "CLI over TLS: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&items.to_string()),
        "{}",
        text(&out.stdout)
    );
    let out = imprint_cli(&server, &["--ca-cert", ca, "settings", "list"]);
    assert!(
        out.status.success(),
        "admin over TLS: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("profiling.enabled"));

    // An http:// address with --ca-cert still goes over TLS (no clear-text token).
    let out = Command::new(bin("imprint"))
        .args(["--server", &format!("http://{}", server.grpc_addr)])
        .args(["--data-dir", server.data_dir.to_str().unwrap()])
        .args(["--ca-cert", ca, "sql", "SELECT 1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Without the CA the server's certificate is not trusted.
    let out = imprint_cli(&server, &["sql", "SELECT 1"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    println!("CLI without --ca-cert: {err}");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "the error should say the certificate is not trusted: {err}"
    );

    // A missing CA file is named.
    let out = imprint_cli(
        &server,
        &["--ca-cert", "/nonexistent/ca.pem", "sql", "SELECT 1"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/ca.pem"),
        "{}",
        text(&out.stderr)
    );

    // Plain-text gRPC to a TLS listener fails (no silent downgrade).
    let plain = imprint_proto::client::connect(&format!("http://{}", server.grpc_addr), None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => {
            let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
            client.set_token(server.token.clone());
            client.execute("SELECT 1".into(), None).await.is_err()
        }
    };
    assert!(refused, "a plain-text client must not get an answer");

    // HTTP: curl trusts the CA → the health document; without it, refused.
    assert_eq!(server.healthz()["status"], "ok");
    let url = format!("{}/healthz", server.http_url());
    let untrusted = Command::new("curl").args(["-sf", &url]).status().unwrap();
    assert!(!untrusted.success(), "curl without the CA must fail");
    let plain_http = Command::new("curl")
        .args(["-sf", &format!("http://{}/healthz", server.http_addr)])
        .status()
        .unwrap();
    assert!(
        !plain_http.success(),
        "plain HTTP to the TLS port must fail"
    );
}

const ADBC_TLS_SCRIPT: &str = r#"
import sys
import adbc_driver_flightsql.dbapi as flight
ca = open(sys.argv[3]).read()
conn = flight.connect(sys.argv[1], db_kwargs={
    "adbc.flight.sql.authorization_header": "Bearer " + sys.argv[2],
    "adbc.flight.sql.client_option.tls_root_certs": ca,
})
cur = conn.cursor()
cur.execute("SELECT count(*) AS n FROM settings")
print(cur.fetch_arrow_table().to_pylist()[0]["n"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_adbc_connects_over_tls_with_the_test_ca() {
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tls = TestTls::generate(dir.path());
    let server = Imprintd::start_tls(&dir.path().join("data"), &tls, &[]);
    let settings = server.scalar_i64("SELECT count(*) FROM settings").await;
    let out = Command::new(python)
        .args(["-c", ADBC_TLS_SCRIPT])
        .arg(format!("grpc+tls://{}", server.grpc_addr))
        .arg(&server.token)
        .arg(&tls.ca_cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "ADBC over TLS: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), settings.to_string());
}

#[test]
fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TestTls::generate(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let other = TestTls::generate(&{
        let d = dir.path().join("other");
        std::fs::create_dir(&d).unwrap();
        d
    });
    let cases: [(&str, Vec<String>, &str); 4] = [
        (
            "missing certificate file",
            vec![
                "--tls-cert".into(),
                "/nonexistent/cert.pem".into(),
                "--tls-key".into(),
                tls.server_key.display().to_string(),
            ],
            "/nonexistent/cert.pem",
        ),
        (
            "not PEM",
            vec![
                "--tls-cert".into(),
                garbage.display().to_string(),
                "--tls-key".into(),
                tls.server_key.display().to_string(),
            ],
            "garbage.pem",
        ),
        (
            "key of another certificate",
            vec![
                "--tls-cert".into(),
                tls.server_cert.display().to_string(),
                "--tls-key".into(),
                other.server_key.display().to_string(),
            ],
            "do not fit together",
        ),
        (
            "certificate without key",
            vec!["--tls-cert".into(), tls.server_cert.display().to_string()],
            "--tls-key",
        ),
    ];
    for (what, args, expect) in cases {
        let out = Command::new(bin("imprintd"))
            .arg("serve")
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        println!("{what}: {}", err.trim());
        assert!(!out.status.success(), "{what}: the start must fail");
        assert!(err.contains(expect), "{what}: expected {expect:?} in {err}");
    }
}
