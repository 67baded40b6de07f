//! Real advisories as OSV: safety-db's `insecure_full.json` (PyPI advisories with
//! pip version specifiers, from PyPI) converted to OSV JSON documents — the format
//! `imprint import osv` reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// `insecure_full.json` of the safety-db installed in `python`'s environment.
/// (`import safety_db` itself fails outside its source tree, so only locate it.)
pub fn safety_db_file(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; print(u.find_spec('safety_db').submodule_search_locations[0])",
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "safety-db is not installed in {} (./test.sh installs it): {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("insecure_full.json")
}

/// One pip specifier set (`>=1.0,<1.2`) as an OSV range's events, or the exact
/// versions it names (`==1.1`).
fn events(spec: &str) -> (Vec<Value>, Vec<String>) {
    let (mut events, mut exact) = (Vec::new(), Vec::new());
    let mut lower = false;
    for c in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if let Some(v) = c.strip_prefix(">=").or_else(|| c.strip_prefix('>')) {
            // `>X` cannot be said in OSV; `introduced X` also counts X itself.
            events.push(json!({"introduced": v.trim()}));
            lower = true;
        } else if let Some(v) = c.strip_prefix("<=") {
            events.push(json!({"last_affected": v.trim()}));
        } else if let Some(v) = c.strip_prefix('<') {
            events.push(json!({"fixed": v.trim()}));
        } else if let Some(v) = c.strip_prefix("==") {
            exact.push(v.trim().to_string());
        }
    }
    if !lower && !events.is_empty() {
        events.insert(0, json!({"introduced": "0"}));
    }
    (events, exact)
}

/// Writes one OSV document per safety-db advisory of `packages` into `dir`;
/// returns how many.
pub fn write_osv(safety_db: &Path, packages: &[&str], dir: &Path) -> usize {
    let db: Value = serde_json::from_slice(&std::fs::read(safety_db).expect("read safety-db"))
        .expect("safety-db is JSON");
    std::fs::create_dir_all(dir).expect("create the OSV directory");
    let mut n = 0;
    for &package in packages {
        for adv in db[package].as_array().into_iter().flatten() {
            let id = adv["id"].as_str().unwrap_or_default();
            let aliases: Vec<&str> = adv["cve"]
                .as_str()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|c| c.starts_with("CVE-"))
                .collect();
            let mut ranges = Vec::new();
            let mut versions = Vec::new();
            for spec in adv["specs"].as_array().into_iter().flatten() {
                let (ev, exact) = events(spec.as_str().unwrap_or(""));
                if !ev.is_empty() {
                    ranges.push(json!({"type": "ECOSYSTEM", "events": ev}));
                }
                versions.extend(exact);
            }
            let doc = json!({
                "schema_version": "1.6.0",
                "id": id,
                "modified": "2021-07-01T00:00:00Z",
                "aliases": aliases,
                "summary": adv["advisory"].as_str().unwrap_or("").chars().take(200).collect::<String>(),
                "affected": [{
                    "package": {"ecosystem": "PyPI", "name": package},
                    "ranges": ranges,
                    "versions": versions,
                }],
            });
            std::fs::write(
                dir.join(format!("{package}-{id}.json")),
                serde_json::to_vec_pretty(&doc).expect("JSON serialises"),
            )
            .expect("write an OSV document");
            n += 1;
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pip_specifiers_become_osv_events() {
        assert_eq!(
            events("<2.20.0"),
            (
                vec![json!({"introduced": "0"}), json!({"fixed": "2.20.0"})],
                vec![]
            )
        );
        assert_eq!(
            events(">=1.0, <=1.4"),
            (
                vec![
                    json!({"introduced": "1.0"}),
                    json!({"last_affected": "1.4"})
                ],
                vec![]
            )
        );
        assert_eq!(events("==0.9"), (vec![], vec!["0.9".to_string()]));
    }
}
