//! What In Use knows: per image, its inventories and imported scanner reports;
//! globally, the imported OSV advisories. The server keeps it in memory and
//! persists each part as an object (`inventory/…`, `advisories/…`) referenced
//! from the catalog; [`InUseState::load`] reads it back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::inventory::Inventory;
use super::vulns::{Advisory, Vulnerability, match_advisories, severity_rank};
use super::{Use, package_use};
use crate::catalog::CatalogState;
use crate::profile::ImageProfile;
use crate::{Error, Result};

/// One persisted part of an image's In Use data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// Packages from a source (`agent`, `sbom`), in a format (`dpkg`, `syft-json`, …).
    Inventory {
        source: String,
        format: String,
        inventory: Inventory,
    },
    /// A scanner report (`grype-json`, `trivy-json`).
    Report {
        format: String,
        vulnerabilities: Vec<Vulnerability>,
    },
}

impl Part {
    /// The slot this part fills: a new part replaces the one in the same slot.
    pub fn slot(&self) -> String {
        match self {
            Part::Inventory { source, .. } => format!("packages:{source}"),
            Part::Report { format, .. } => format!("report:{format}"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PartFile {
    version: u32,
    image: String,
    part: Part,
}

#[derive(Debug, Serialize, Deserialize)]
struct AdvisoryFile {
    version: u32,
    advisories: Vec<Advisory>,
}

const VERSION: u32 = 1;

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(v).map_err(|e| Error::Summary(e.to_string()))?;
    zstd::bulk::compress(&json, 3).map_err(|e| Error::Summary(e.to_string()))
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8], path: &str) -> Result<T> {
    let json = zstd::bulk::decompress(bytes, 1 << 30)
        .map_err(|e| Error::Summary(format!("{path}: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| Error::Summary(format!("{path}: {e}")))
}

pub fn encode_part(image: &str, part: &Part) -> Result<Vec<u8>> {
    encode(&PartFile {
        version: VERSION,
        image: image.to_string(),
        part: part.clone(),
    })
}

pub fn encode_advisories(advisories: &[Advisory]) -> Result<Vec<u8>> {
    encode(&AdvisoryFile {
        version: VERSION,
        advisories: advisories.to_vec(),
    })
}

/// The In Use data of one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInUse {
    /// By slot.
    pub parts: BTreeMap<String, Part>,
}

impl ImageInUse {
    pub fn inventories(&self) -> impl Iterator<Item = (&str, &str, &Inventory)> {
        self.parts.values().filter_map(|p| match p {
            Part::Inventory {
                source,
                format,
                inventory,
            } => Some((source.as_str(), format.as_str(), inventory)),
            Part::Report { .. } => None,
        })
    }
}

/// Everything In Use knows.
#[derive(Debug, Clone, Default)]
pub struct InUseState {
    pub images: BTreeMap<String, ImageInUse>,
    /// By advisory id (a later import of the same id replaces it).
    pub advisories: BTreeMap<String, Advisory>,
}

/// One row of `runtime_vulnerabilities` (before the image columns).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeVulnerability {
    pub vulnerability: Vulnerability,
    /// `grype-json`, `trivy-json` or `osv`.
    pub source: String,
    /// `None` when not computed (eve off) or when no inventory lists the
    /// package's files, so use cannot be known.
    pub in_use: Option<bool>,
    pub used: Option<Use>,
}

impl InUseState {
    /// Reads every part and advisory file the catalog references.
    pub async fn load(store: Arc<dyn ObjectStore>, catalog: &CatalogState) -> Result<Self> {
        let mut state = InUseState::default();
        let paths: Vec<String> = catalog
            .inventory
            .values()
            .flat_map(|slots| slots.values().cloned())
            .collect();
        let fetch = |path: String| {
            let store = store.clone();
            async move {
                let bytes = store.get(&path.as_str().into()).await?.bytes().await?;
                Ok::<_, Error>((path, bytes))
            }
        };
        let parts: Vec<(String, bytes::Bytes)> =
            futures::stream::iter(paths.into_iter().map(fetch))
                .buffered(16)
                .try_collect()
                .await?;
        for (path, bytes) in parts {
            let f: PartFile = decode(&bytes, &path)?;
            state.insert_part(&f.image, f.part);
        }
        let advisory_files: Vec<(String, bytes::Bytes)> =
            futures::stream::iter(catalog.advisories.iter().cloned().map(fetch))
                .buffered(16)
                .try_collect()
                .await?;
        for (path, bytes) in advisory_files {
            let f: AdvisoryFile = decode(&bytes, &path)?;
            state.insert_advisories(f.advisories);
        }
        Ok(state)
    }

    pub fn insert_part(&mut self, image: &str, part: Part) {
        self.images
            .entry(image.to_string())
            .or_default()
            .parts
            .insert(part.slot(), part);
    }

    pub fn insert_advisories(&mut self, advisories: Vec<Advisory>) {
        for a in advisories {
            self.advisories.insert(a.id.clone(), a);
        }
    }

    /// `image`'s vulnerabilities with their source: the reports' findings, then
    /// the advisories' matches over every inventory, one row per (id, package,
    /// version).
    pub fn vulnerabilities(&self, image: &str) -> Vec<(String, Vulnerability)> {
        let Some(img) = self.images.get(image) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Vulnerability)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut push = |source: &str, v: Vulnerability| {
            if seen.insert((v.vuln_id.clone(), v.package.clone(), v.version.clone())) {
                out.push((source.to_string(), v));
            }
        };
        for part in img.parts.values() {
            if let Part::Report {
                format,
                vulnerabilities,
            } = part
            {
                for v in vulnerabilities {
                    push(format, v.clone());
                }
            }
        }
        if !self.advisories.is_empty() {
            for (_, _, inv) in img.inventories() {
                for v in match_advisories(&inv.packages, self.advisories.values()) {
                    push("osv", v);
                }
            }
        }
        out
    }

    /// `runtime_vulnerabilities` of `image`: its vulnerabilities with whether a
    /// container used the package (`profile`), sorted in use first, then by
    /// severity. `compute_use` false (the `runtime_scanner.eve_enabled` switch is
    /// off) leaves `in_use` null.
    pub fn runtime(
        &self,
        image: &str,
        profile: Option<&ImageProfile>,
        compute_use: bool,
    ) -> Vec<RuntimeVulnerability> {
        let vulns = self.vulnerabilities(image);
        // (package, version) → whether some inventory lists its files, and its use.
        let mut known: HashMap<(String, String), Option<Use>> = HashMap::new();
        if let Some(img) = self.images.get(image) {
            let empty = ImageProfile::default();
            let profile = profile.unwrap_or(&empty);
            for (_, _, inv) in img.inventories() {
                let used = package_use(inv, profile);
                for (i, p) in inv.packages.iter().enumerate() {
                    if p.files.is_empty() {
                        continue;
                    }
                    let e = known
                        .entry((p.name.clone(), p.version.clone()))
                        .or_default();
                    if let Some(u) = used.get(&i)
                        && e.as_ref().is_none_or(|old| u.first_used < old.first_used)
                    {
                        *e = Some(u.clone());
                    }
                }
            }
        }
        let mut rows: Vec<RuntimeVulnerability> = vulns
            .into_iter()
            .map(|(source, v)| {
                let k = known.get(&(v.package.clone(), v.version.clone()));
                let (in_use, used) = match (compute_use, k) {
                    (true, Some(u)) => (Some(u.is_some()), u.clone()),
                    _ => (None, None),
                };
                RuntimeVulnerability {
                    vulnerability: v,
                    source,
                    in_use,
                    used,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                a.in_use != Some(true),
                severity_rank(&a.vulnerability.severity),
                &a.vulnerability.package,
                &a.vulnerability.vuln_id,
            )
                .cmp(&(
                    b.in_use != Some(true),
                    severity_rank(&b.vulnerability.severity),
                    &b.vulnerability.package,
                    &b.vulnerability.vuln_id,
                ))
        });
        rows
    }
}
