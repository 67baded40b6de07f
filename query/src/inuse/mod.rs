//! In Use: which of an image's packages its containers really ran or opened, and
//! so which of its vulnerabilities matter first.
//!
//! - [`inventory`]: packages and their files (agent scanner, SBOM import);
//! - [`sbom`]: syft JSON, SPDX 2.3 JSON, CycloneDX JSON;
//! - [`vulns`]: Grype and Trivy reports, OSV advisories matched here;
//! - [`version`]: dpkg and PEP 440 orderings;
//! - [`state`]: everything known per image, persisted by the server;
//! - [`tables`]: `packages`, `package_files`, `vulnerabilities`,
//!   `runtime_vulnerabilities`.
//!
//! A package is in use when a `process`, `file_read` or `file_write` item of the
//! image's profile is one of its files — compared after resolving directory
//! symlinks ([`inventory::Inventory::canonical`]). Rules and limits:
//! `docs/in-use.md`.

pub mod inventory;
pub mod sbom;
pub mod state;
pub mod tables;
pub mod version;
pub mod vulns;

use std::collections::HashMap;

use crate::profile::ImageProfile;
use inventory::Inventory;

/// Parses a JSON document, or says where it is not JSON.
fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("not JSON: {e} (line {}, column {})", e.line(), e.column()))
}

/// Evidence that a package ran or was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The package's file that was used first.
    pub evidence_path: String,
    pub first_used: i64,
    pub last_used: i64,
}

/// Item kinds that use a file.
const USE_KINDS: [&str; 3] = ["process", "file_read", "file_write"];

/// For each package of `inventory` (by index) that `profile` used, the evidence.
pub fn package_use(inventory: &Inventory, profile: &ImageProfile) -> HashMap<usize, Use> {
    let mut owner: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in inventory.packages.iter().enumerate() {
        for f in &p.files {
            owner.entry(inventory.canonical(f)).or_default().push(i);
        }
    }
    let mut used: HashMap<usize, Use> = HashMap::new();
    if owner.is_empty() {
        return used;
    }
    for kind in USE_KINDS {
        let Some(items) = profile.items.get(kind) else {
            continue;
        };
        for (path, stats) in items {
            let Some(packages) = owner.get(&inventory.canonical(path)) else {
                continue;
            };
            for &p in packages {
                let u = used.entry(p).or_insert_with(|| Use {
                    evidence_path: path.clone(),
                    first_used: stats.first_seen,
                    last_used: stats.last_seen,
                });
                if stats.first_seen < u.first_used {
                    u.first_used = stats.first_seen;
                    u.evidence_path.clone_from(path);
                }
                u.last_used = u.last_used.max(stats.last_seen);
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::inventory::Package;
    use super::*;
    use crate::profile::WindowFacts;

    #[test]
    fn a_package_is_in_use_when_one_of_its_files_ran_or_was_opened() {
        let inv = Inventory {
            packages: vec![
                Package {
                    name: "coreutils".into(),
                    files: vec!["/bin/ls".into(), "/bin/cat".into()],
                    ..Default::default()
                },
                Package {
                    name: "requests".into(),
                    files: vec![
                        "/opt/venv/lib/python3.11/site-packages/requests/__init__.py".into(),
                    ],
                    ..Default::default()
                },
                Package {
                    name: "urllib3".into(),
                    files: vec![
                        "/opt/venv/lib/python3.11/site-packages/urllib3/__init__.py".into(),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut profile = ImageProfile::default();
        for (w, items) in [
            (0, vec![("process", "/usr/bin/cat")]),
            (
                1,
                vec![
                    (
                        "file_read",
                        "/opt/venv/lib/python3.11/site-packages/requests/__init__.py",
                    ),
                    ("dir_read", "/opt/venv/lib/python3.11/site-packages/urllib3"),
                    ("process", "/usr/bin/ls"),
                ],
            ),
        ] {
            profile.apply(
                "app:1",
                "n1",
                "c1",
                (w * 30, (w + 1) * 30),
                WindowFacts::default(),
                items.into_iter().map(|(k, v)| (k, v, 1)),
            );
        }
        let used = package_use(&inv, &profile);
        // `/usr/bin/cat` is `/bin/cat` of coreutils (merged /usr); the earliest use
        // is the evidence.
        assert_eq!(
            used[&0],
            Use {
                evidence_path: "/usr/bin/cat".into(),
                first_used: 0,
                last_used: 60
            }
        );
        assert_eq!(used[&1].first_used, 30);
        // A directory listing is not a use of the package.
        assert!(!used.contains_key(&2));
    }
}
