//! Tokens: what refusals say, tokens and settings across restarts, auth off, the first admin
//! token's file. The full route × credential matrix is in access_matrix.rs.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::time::Duration;

use imprint_e2e::Imprintd;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::*;
use imprint_proto::client::authed;
use imprint_proto::ingest_v1::agent_config_client::AgentConfigClient;
use imprint_proto::ingest_v1::ingest_client::IngestClient;
use imprint_proto::ingest_v1::{FingerprintBatch, WatchAgentConfigRequest};
use tonic::Code;

/// Each refusal says which problem it is.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let channel = server.channel().await;
    let mut admin_client = AdminClient::new(authed(channel.clone(), &server.token).unwrap());
    let mut create = async |scopes: &[&str], expires: u64| {
        let req = CreateTokenRequest {
            name: format!("{scopes:?}"),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in_seconds: expires,
            agent_ids: vec![],
        };
        admin_client.create_token(req).await.unwrap().into_inner()
    };
    let read = create(&["read"], 0).await.secret;
    let revoked = create(&["read"], 0).await;
    let expired = create(&["read"], 1).await.secret;
    AdminClient::new(authed(channel.clone(), &server.token).unwrap())
        .revoke_token(RevokeTokenRequest {
            id: revoked.token.unwrap().id,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let err = IngestClient::new(authed(channel.clone(), &read).unwrap())
        .push(FingerprintBatch::default())
        .await
        .unwrap_err();
    assert!(
        err.message().contains("has scopes [read]") && err.message().contains("\"agent\""),
        "{}",
        err.message()
    );
    let err = AdminClient::new(authed(channel.clone(), &revoked.secret).unwrap())
        .get_settings(GetSettingsRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("was revoked"), "{}", err.message());
    let err = AdminClient::new(authed(channel.clone(), &expired).unwrap())
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

/// A stream opened with a token ends, with UNAUTHENTICATED, once the token is revoked: a
/// stolen token's watch does not outlive the revocation.
#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_end_when_their_token_is_revoked() {
    use imprint_proto::alerts_v1::WatchAnomaliesRequest;
    use imprint_proto::alerts_v1::alerts_client::AlertsClient;
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let channel = server.channel().await;
    let mut admin = AdminClient::new(authed(channel.clone(), &server.token).unwrap());
    let mut create = async |scope: &str| {
        admin
            .create_token(CreateTokenRequest {
                name: format!("{scope} watcher"),
                scopes: vec![scope.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let agent = create("agent").await;
    let read = create("read").await;
    let mut config = AgentConfigClient::new(authed(channel.clone(), &agent.secret).unwrap())
        .watch(WatchAgentConfigRequest {
            agent_id: "node-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    config.message().await.unwrap().unwrap();
    let mut anomalies = AlertsClient::new(authed(channel.clone(), &read.secret).unwrap())
        .watch_anomalies(WatchAnomaliesRequest::default())
        .await
        .unwrap()
        .into_inner();
    for t in [&agent, &read] {
        AdminClient::new(authed(channel.clone(), &server.token).unwrap())
            .revoke_token(RevokeTokenRequest {
                id: t.token.as_ref().unwrap().id.clone(),
            })
            .await
            .unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), config.message())
        .await
        .expect("the config stream ends")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("was revoked"),
        "{}",
        ended.message()
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), anomalies.message())
        .await
        .expect("the anomaly stream ends")
        .unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
}

/// The webhook URL often carries a secret: only admin tokens see it (GetSettings), the
/// `settings` table masks it for everyone, and it is never logged.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_url_is_an_admin_only_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let channel = server.channel().await;
    let mut admin = AdminClient::new(authed(channel.clone(), &server.token).unwrap());
    let url = "http://127.0.0.1:9/hooks/T0K3N-s3cret?key=s3cret";
    admin
        .set_setting(SetSettingRequest {
            key: "alerts.webhook_url".into(),
            value: url.into(),
        })
        .await
        .unwrap();
    let read = admin
        .create_token(CreateTokenRequest {
            name: "reader".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let value_for = async |token: &str| {
        AdminClient::new(authed(channel.clone(), token).unwrap())
            .get_settings(GetSettingsRequest {})
            .await
            .unwrap()
            .into_inner()
            .settings
            .into_iter()
            .find(|s| s.key == "alerts.webhook_url")
            .unwrap()
            .value
    };
    assert_eq!(value_for(&server.token).await, url);
    let hidden = value_for(&read).await;
    assert!(
        !hidden.contains("s3cret") && hidden.contains("admin"),
        "{hidden}"
    );
    // Masked even for the admin token: SQL is open to every read token.
    let rows = imprint_e2e::rows_as_text(
        &server
            .sql("SELECT value FROM settings WHERE key = 'alerts.webhook_url'")
            .await,
    );
    assert!(!rows.iter().any(|r| r.contains("s3cret")), "{rows:?}");
    assert!(
        !server.log_text().contains("s3cret"),
        "the webhook URL was logged"
    );
}
