//! The `imprint` CLI shows hostile strings without obeying them: a file path a container chose
//! with a terminal escape sequence or a direction override in it is printed escaped in tables,
//! CSV and the profile view, and kept byte for byte in JSON.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use imprint_e2e::Imprintd;
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};

const HOSTILE: &str = "/tmp/\u{1b}[2J\u{1b}]0;owned\u{7}x\u{202e}fdp.exe";

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_stored_strings_are_escaped_in_cli_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let digest = imprint_bench::digest_of(3);
    server
        .push(FingerprintBatch {
            agent_id: "a".into(),
            seq: 1,
            fingerprints: vec![Fingerprint {
                node: "n1".into(),
                container_id: "c1".into(),
                image: digest.clone(),
                image_name: "app:1".into(),
                window_start_unix_micros: end - 30_000_000,
                window_end_unix_micros: end,
                items: vec![Item {
                    kind: ItemKind::FileRead as i32,
                    key: HOSTILE.into(),
                    count: 1,
                }],
                completeness: None,
            }],
        })
        .await
        .unwrap();
    let escaped = "/tmp/\\x1b[2J\\x1b]0;owned\\x07x\\u{202e}fdp.exe";
    for args in [
        vec!["sql", "SELECT key FROM fingerprints"],
        vec!["sql", "SELECT key FROM fingerprints", "--format", "csv"],
        vec!["profile", digest.as_str()],
    ] {
        let (ok, out, err) = server.cli(&args);
        assert!(ok, "imprint {args:?}: {err}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202e}') && !out.contains('\u{7}'),
            "imprint {args:?} printed a raw control character: {out:?}"
        );
        assert!(out.contains(escaped), "imprint {args:?}: {out}");
    }
    // JSON escapes by itself and keeps the value exact.
    let (ok, out, err) = server.cli(&["sql", "SELECT key FROM fingerprints", "--format", "json"]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["key"], HOSTILE);
}
