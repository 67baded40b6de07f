//! The access matrix: every gRPC method and HTTP route × {no token, each scope,
//! revoked, expired, garbage} → allowed or refused, asserted one by one and printed.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, HandshakeRequest};
use base64::Engine as _;
use imprint_e2e::Imprintd;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::*;
use imprint_proto::client::authed;
use imprint_proto::ingest_v1::agent_config_client::AgentConfigClient;
use imprint_proto::ingest_v1::ingest_client::IngestClient;
use imprint_proto::ingest_v1::{FingerprintBatch, WatchAgentConfigRequest};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Allowed,
    Unauthenticated,
    Denied,
}

fn outcome(r: Result<(), tonic::Status>) -> Outcome {
    match r {
        Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
        Err(s) if s.code() == Code::PermissionDenied => Outcome::Denied,
        // Any other answer (OK, INVALID_ARGUMENT, NOT_FOUND …) got past auth.
        _ => Outcome::Allowed,
    }
}

const ROUTES: &[(&str, Option<&str>)] = &[
    ("Ingest/Push", Some("agent")),
    ("AgentConfig/Watch", Some("agent")),
    ("FlightSql/GetFlightInfo", Some("read")),
    ("FlightSql/DoGet", Some("read")),
    ("FlightSql/Handshake (Basic)", Some("read")),
    ("Admin/CreateToken", Some("admin")),
    ("Admin/ListTokens", Some("admin")),
    ("Admin/RevokeToken", Some("admin")),
    ("Admin/SetSetting", Some("admin")),
    ("Admin/GetSettings", Some("read")),
    ("HTTP GET /healthz", None),
];

async fn call(route: &str, channel: Channel, token: &str, http_addr: &str) -> Outcome {
    let ch = || authed(channel.clone(), token).unwrap();
    let r: Result<(), tonic::Status> = match route {
        "Ingest/Push" => IngestClient::new(ch())
            .push(FingerprintBatch {
                agent_id: "x".into(),
                seq: 1,
                fingerprints: vec![],
            })
            .await
            .map(|_| ()),
        "AgentConfig/Watch" => AgentConfigClient::new(ch())
            .watch(WatchAgentConfigRequest {
                agent_id: "x".into(),
            })
            .await
            .map(|_| ()),
        "FlightSql/GetFlightInfo" => {
            let cmd = CommandStatementQuery {
                query: "SELECT 1".into(),
                transaction_id: None,
            };
            FlightServiceClient::new(ch())
                .get_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
                .await
                .map(|_| ())
        }
        "FlightSql/DoGet" => {
            let ticket = arrow_flight::sql::TicketStatementQuery {
                statement_handle: "SELECT 1".into(),
            };
            FlightServiceClient::new(ch())
                .do_get(arrow_flight::Ticket::new(ticket.as_any().encode_to_vec()))
                .await
                .map(|_| ())
        }
        "FlightSql/Handshake (Basic)" => {
            let mut req =
                tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
            if !token.is_empty() {
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("user:{token}"));
                req.metadata_mut()
                    .insert("authorization", format!("Basic {basic}").parse().unwrap());
            }
            FlightServiceClient::new(channel.clone())
                .handshake(req)
                .await
                .map(|_| ())
        }
        "Admin/CreateToken" => AdminClient::new(ch())
            .create_token(CreateTokenRequest {
                name: "matrix".into(),
                scopes: vec!["read".into()],
                expires_in_seconds: 0,
            })
            .await
            .map(|_| ()),
        "Admin/ListTokens" => AdminClient::new(ch())
            .list_tokens(ListTokensRequest {})
            .await
            .map(|_| ()),
        "Admin/RevokeToken" => AdminClient::new(ch())
            .revoke_token(RevokeTokenRequest {
                id: "tok_none".into(),
            })
            .await
            .map(|_| ()),
        "Admin/SetSetting" => AdminClient::new(ch())
            .set_setting(SetSettingRequest {
                key: "profiling.enabled".into(),
                value: "true".into(),
            })
            .await
            .map(|_| ()),
        "Admin/GetSettings" => AdminClient::new(ch())
            .get_settings(GetSettingsRequest {})
            .await
            .map(|_| ()),
        "HTTP GET /healthz" => {
            let mut cmd = std::process::Command::new("curl");
            cmd.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{http_addr}/healthz"),
            ]);
            if !token.is_empty() {
                cmd.args(["-H", &format!("authorization: Bearer {token}")]);
            }
            let code = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
            return match code.as_str() {
                "401" => Outcome::Unauthenticated,
                "403" => Outcome::Denied,
                _ => Outcome::Allowed,
            };
        }
        other => panic!("unknown route {other}"),
    };
    outcome(r)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let admin = server.token.clone();
    assert!(
        admin.starts_with("imp_"),
        "no admin token was written at first start"
    );
    let channel = server.channel().await;
    let mut admin_client = AdminClient::new(authed(channel.clone(), &admin).unwrap());
    let create = |scopes: &[&str], expires: u64| {
        let req = CreateTokenRequest {
            name: format!("{scopes:?}"),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in_seconds: expires,
        };
        let mut c = admin_client.clone();
        async move { c.create_token(req).await.unwrap().into_inner() }
    };
    let agent = create(&["agent"], 0).await.secret;
    let read = create(&["read"], 0).await.secret;
    let export = create(&["export"], 0).await.secret;
    let revoked = create(&["read"], 0).await;
    let expired = create(&["read"], 1).await.secret;
    admin_client
        .revoke_token(RevokeTokenRequest {
            id: revoked.token.unwrap().id,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let credentials: Vec<(&str, String)> = vec![
        ("none", String::new()),
        ("admin", admin.clone()),
        ("agent", agent),
        ("read", read),
        ("export", export),
        ("revoked", revoked.secret),
        ("expired", expired),
        ("garbage", "imp_0000garbage".into()),
    ];

    let mut table = format!("{:<30}", "route \\ token");
    for (c, _) in &credentials {
        table.push_str(&format!("{c:>9}"));
    }
    table.push('\n');
    let mut failures = Vec::new();
    for (route, needs) in ROUTES {
        table.push_str(&format!("{route:<30}"));
        for (cred, token) in &credentials {
            let got = call(route, channel.clone(), token, &server.http_addr).await;
            let want = match (needs, *cred) {
                (None, _) => Outcome::Allowed,
                (Some(_), "none" | "revoked" | "expired" | "garbage") => Outcome::Unauthenticated,
                (Some(_), "admin") => Outcome::Allowed,
                (Some(scope), c) if c == *scope => Outcome::Allowed,
                (Some(_), _) => Outcome::Denied,
            };
            let mark = match got {
                Outcome::Allowed => "allow",
                Outcome::Unauthenticated => "401",
                Outcome::Denied => "403",
            };
            table.push_str(&format!("{mark:>9}"));
            if got != want {
                failures.push(format!("{route} with {cred}: got {got:?}, want {want:?}"));
            }
        }
        table.push('\n');
    }
    println!("\naccess matrix (allow / 401 UNAUTHENTICATED / 403 PERMISSION_DENIED):\n{table}");
    assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));

    // The messages say which problem it is.
    let err = IngestClient::new(authed(channel.clone(), &credentials[3].1).unwrap())
        .push(FingerprintBatch::default())
        .await
        .unwrap_err();
    assert!(
        err.message().contains("has scopes [read]") && err.message().contains("\"agent\""),
        "{}",
        err.message()
    );
    let err = AdminClient::new(authed(channel.clone(), &credentials[5].1).unwrap())
        .get_settings(GetSettingsRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("was revoked"), "{}", err.message());
    let err = AdminClient::new(authed(channel.clone(), &credentials[6].1).unwrap())
        .get_settings(GetSettingsRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("expired at"), "{}", err.message());
    let err = AdminClient::new(channel.clone())
        .get_settings(GetSettingsRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("no token"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_settings_survive_restarts_and_reach_agents() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Imprintd::start(&dir.path().join("data"), &[]);
    let token_file = dir.path().join("data/admin-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(
        !server.log_text().contains(&server.token),
        "the token must never be logged"
    );

    // An agent watching its config gets the current settings at once...
    let admin = server.token.clone();
    let mut watcher = AgentConfigClient::new(authed(server.channel().await, &admin).unwrap())
        .watch(WatchAgentConfigRequest {
            agent_id: "node-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watcher.message().await.unwrap().unwrap();
    assert!(first.profiling_enabled && !first.runtime_scanner_enabled);

    // ...and a change within seconds.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(imprint_e2e::bin("imprint"))
            .args([
                "--server",
                &format!("http://{}", server.grpc_addr),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "imprint {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        cli(&["settings", "set", "profiling.enabled", "off"]).trim(),
        "profiling.enabled = false"
    );
    let changed = tokio::time::timeout(Duration::from_secs(5), watcher.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!changed.profiling_enabled);
    assert!(changed.version > first.version);

    // A token made with the CLI (which found the admin token file by itself).
    let secret = cli(&[
        "token",
        "create",
        "--scope",
        "read",
        "--name",
        "grafana",
        "--expires",
        "30d",
    ])
    .trim()
    .to_string();
    assert!(secret.starts_with("imp_"));
    assert!(cli(&["token", "list"]).contains("grafana"));

    // Restart: settings, tokens, the admin token all still work; no new admin token.
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(server.token, admin);
    let rows = imprint_e2e::rows_as_text(
        &server
            .sql("SELECT key, value FROM settings ORDER BY key")
            .await,
    );
    assert!(
        rows.contains(&"profiling.enabled|false".to_string()),
        "{rows:?}"
    );
    assert!(
        rows.contains(&"profiling.learning_period|24h".to_string()),
        "{rows:?}"
    );
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(server.channel().await);
    client.set_token(secret);
    assert!(client.execute("SELECT 1".into(), None).await.is_ok());
    // Bad values are refused with the reason.
    let err = AdminClient::new(authed(server.channel().await, &admin).unwrap())
        .set_setting(SetSettingRequest {
            key: "profiling.enabled".into(),
            value: "maybe".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("true or false"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_no_auth_lets_everything_in_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &["--insecure-no-auth"]);
    assert!(server.token.is_empty(), "no admin token file without auth");
    assert!(server.log_text().contains("authentication is OFF"));
    let r = AdminClient::new(server.channel().await)
        .get_settings(GetSettingsRequest {})
        .await;
    assert!(r.is_ok(), "{r:?}");
}

/// The first admin token is never written through a symlink planted at `<data-dir>/admin-token`
/// (nor over any existing file): the server refuses to start, says why, and the link's target
/// is untouched.
#[test]
fn the_admin_token_file_is_not_written_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let target = dir.path().join("where-the-attacker-reads");
    std::os::unix::fs::symlink(&target, data.join("admin-token")).unwrap();
    let (status, stderr) = imprint_e2e::serve_expecting_failure(&data);
    assert!(!status.success(), "the server started: {stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(
        !target.exists(),
        "the token was written through the symlink"
    );
}
