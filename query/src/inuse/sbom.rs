//! SBOM import: syft JSON, SPDX 2.3 JSON (per-package file lists through
//! `hasFiles` or `CONTAINS` relationships) and CycloneDX JSON (package lists).
//!
//! Paths in an SBOM are relative to what was scanned; `root` says where that was
//! inside the image (`/` for an image scan, e.g. `/opt/venv` for a scan of a
//! venv directory), so file paths become the absolute paths containers open.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::inventory::{Inventory, Package, normalise_path};

/// The formats `imprint import sbom` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SbomFormat {
    SyftJson,
    Spdx23Json,
    CycloneDxJson,
}

impl SbomFormat {
    pub fn name(self) -> &'static str {
        match self {
            SbomFormat::SyftJson => "syft-json",
            SbomFormat::Spdx23Json => "spdx-json",
            SbomFormat::CycloneDxJson => "cyclonedx-json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SbomError(pub String);

fn err(m: impl Into<String>) -> SbomError {
    SbomError(m.into())
}

fn str_at<'a>(v: &'a Value, field: &str, at: &str) -> Result<&'a str, SbomError> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{at}.{field}: missing or not a string")))
}

fn opt_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// `pkg:deb/debian/curl@7.88.1-10?arch=amd64` → `deb`.
fn kind_of_purl(purl: &str) -> &str {
    match purl.strip_prefix("pkg:").and_then(|r| r.split('/').next()) {
        Some("pypi") => "python",
        Some(t) => t,
        None => "",
    }
}

/// Reads an SBOM, recognising its format.
pub fn parse(bytes: &[u8], root: &str) -> Result<(SbomFormat, Inventory), SbomError> {
    let doc: Value = super::parse_json(bytes).map_err(err)?;
    if doc.get("artifacts").is_some() && doc.get("schema").is_some() {
        return Ok((SbomFormat::SyftJson, syft(&doc, root)?));
    }
    if doc
        .get("spdxVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("SPDX-2."))
    {
        return Ok((SbomFormat::Spdx23Json, spdx(&doc, root)?));
    }
    if doc.get("bomFormat").and_then(Value::as_str) == Some("CycloneDX") {
        return Ok((SbomFormat::CycloneDxJson, cyclonedx(&doc)?));
    }
    Err(err(
        "not an SBOM this server reads: expected syft JSON (`artifacts` and `schema`), \
         SPDX 2.x JSON (`spdxVersion`) or CycloneDX JSON (`bomFormat: CycloneDX`)",
    ))
}

fn syft(doc: &Value, root: &str) -> Result<Inventory, SbomError> {
    let artifacts = doc["artifacts"]
        .as_array()
        .ok_or_else(|| err("artifacts: not an array"))?;
    let mut packages = Vec::new();
    for (i, a) in artifacts.iter().enumerate() {
        let at = format!("artifacts[{i}]");
        let metadata = a.get("metadata").unwrap_or(&Value::Null);
        // Python file lists are relative to the site-packages directory.
        let base = match metadata.get("sitePackagesRootPath").and_then(Value::as_str) {
            Some(site) => normalise_path(root, site),
            None => normalise_path(root, ""),
        };
        let files = metadata
            .get("files")
            .and_then(Value::as_array)
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| f.get("path").and_then(Value::as_str))
                    .map(|p| normalise_path(&base, p))
                    .collect()
            })
            .unwrap_or_default();
        let purl = opt_str(a, "purl").to_string();
        packages.push(Package {
            name: str_at(a, "name", &at)?.to_string(),
            version: str_at(a, "version", &at)?.to_string(),
            kind: str_at(a, "type", &at)?.to_string(),
            source_package: opt_str(metadata, "source").to_string(),
            purl,
            files,
        });
    }
    Ok(Inventory {
        packages,
        symlinks: BTreeMap::new(),
    })
}

fn spdx(doc: &Value, root: &str) -> Result<Inventory, SbomError> {
    let files: HashMap<&str, &str> = doc
        .get("files")
        .and_then(Value::as_array)
        .map(|fs| {
            fs.iter()
                .filter_map(|f| Some((f.get("SPDXID")?.as_str()?, f.get("fileName")?.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut contains: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in doc
        .get("relationships")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (a, t, b) = (
            opt_str(r, "spdxElementId"),
            opt_str(r, "relationshipType"),
            opt_str(r, "relatedSpdxElement"),
        );
        match t {
            "CONTAINS" => contains.entry(a).or_default().push(b),
            "CONTAINED_BY" => contains.entry(b).or_default().push(a),
            _ => {}
        }
    }
    let list = doc["packages"]
        .as_array()
        .ok_or_else(|| err("packages: missing or not an array"))?;
    let mut packages = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("packages[{i}]");
        let id = str_at(p, "SPDXID", &at)?;
        let purl = p
            .get("externalRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| opt_str(r, "referenceType") == "purl")
            .map(|r| opt_str(r, "referenceLocator"))
            .unwrap_or("")
            .to_string();
        let mut file_ids: Vec<&str> = p
            .get("hasFiles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        file_ids.extend(contains.get(id).into_iter().flatten().copied());
        let mut paths: Vec<String> = file_ids
            .iter()
            .filter_map(|f| files.get(f))
            .map(|name| normalise_path(root, name))
            .collect();
        paths.sort();
        paths.dedup();
        packages.push(Package {
            name: str_at(p, "name", &at)?.to_string(),
            version: opt_str(p, "versionInfo").to_string(),
            kind: kind_of_purl(&purl).to_string(),
            source_package: String::new(),
            purl,
            files: paths,
        });
    }
    Ok(Inventory {
        packages,
        symlinks: BTreeMap::new(),
    })
}

fn cyclonedx(doc: &Value) -> Result<Inventory, SbomError> {
    fn walk(list: &Value, at: &str, out: &mut Vec<Package>) -> Result<(), SbomError> {
        for (i, c) in list.as_array().into_iter().flatten().enumerate() {
            let at = format!("{at}[{i}]");
            let purl = opt_str(c, "purl").to_string();
            if !purl.is_empty() {
                out.push(Package {
                    name: str_at(c, "name", &at)?.to_string(),
                    version: opt_str(c, "version").to_string(),
                    kind: kind_of_purl(&purl).to_string(),
                    purl,
                    ..Default::default()
                });
            }
            if let Some(sub) = c.get("components") {
                walk(sub, &format!("{at}.components"), out)?;
            }
        }
        Ok(())
    }
    let mut packages = Vec::new();
    walk(&doc["components"], "components", &mut packages)?;
    Ok(Inventory {
        packages,
        symlinks: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_file_lists_come_from_has_files_and_contains() {
        let doc = br#"{
          "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT",
          "packages": [
            {"SPDXID": "SPDXRef-Package-curl", "name": "curl", "versionInfo": "7.88.1-10+deb12u5",
             "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                               "referenceLocator": "pkg:deb/debian/curl@7.88.1-10+deb12u5?arch=amd64"}],
             "hasFiles": ["SPDXRef-File-1"]},
            {"SPDXID": "SPDXRef-Package-flask", "name": "flask", "versionInfo": "0.12",
             "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:pypi/flask@0.12"}]}
          ],
          "files": [
            {"SPDXID": "SPDXRef-File-1", "fileName": "./usr/bin/curl"},
            {"SPDXID": "SPDXRef-File-2", "fileName": "lib/python3.11/site-packages/flask/app.py"}
          ],
          "relationships": [
            {"spdxElementId": "SPDXRef-File-2", "relationshipType": "CONTAINED_BY",
             "relatedSpdxElement": "SPDXRef-Package-flask"}
          ]
        }"#;
        let (format, inv) = parse(doc, "/").unwrap();
        assert_eq!(format, SbomFormat::Spdx23Json);
        assert_eq!(inv.packages[0].kind, "deb");
        assert_eq!(inv.packages[0].files, vec!["/usr/bin/curl"]);
        assert_eq!(inv.packages[1].kind, "python");
        assert_eq!(
            inv.packages[1].files,
            vec!["/lib/python3.11/site-packages/flask/app.py"]
        );
    }

    #[test]
    fn cyclonedx_nested_components_and_errors_say_where() {
        let doc = br#"{"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [
            {"name": "app", "type": "application", "components": [
               {"name": "requests", "version": "2.19.0", "purl": "pkg:pypi/requests@2.19.0"}]}]}"#;
        let (_, inv) = parse(doc, "/").unwrap();
        assert_eq!(inv.packages.len(), 1);
        assert_eq!(inv.packages[0].name, "requests");
        let bad = br#"{"bomFormat": "CycloneDX", "components": [{"purl": "pkg:pypi/x@1"}]}"#;
        let e = parse(bad, "/").unwrap_err().to_string();
        assert_eq!(e, "components[0].name: missing or not a string");
        let e = parse(b"{\"hello\": 1}", "/").unwrap_err().to_string();
        assert!(e.contains("not an SBOM"), "{e}");
        let e = parse(b"{\n  oops", "/").unwrap_err().to_string();
        assert!(e.starts_with("not JSON") && e.contains("line 2"), "{e}");
    }
}
