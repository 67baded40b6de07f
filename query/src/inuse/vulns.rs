//! Vulnerabilities of an image: imported scanner reports (Grype JSON, Trivy JSON),
//! or OSV advisories that Imprint matches against the image's packages itself —
//! PyPI versions by PEP 440, Debian versions by dpkg's ordering.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inventory::Package;
use super::version::Scheme;

/// One vulnerability of one installed package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vulnerability {
    /// A CVE id when one is known (the advisory's own id otherwise).
    pub vuln_id: String,
    /// The advisory's id and aliases, comma-separated (`PYSEC-2018-23,CVE-2018-18074`).
    pub aliases: String,
    pub package: String,
    pub version: String,
    /// `critical`, `high`, `medium`, `low`, `negligible` or `unknown`.
    pub severity: String,
    pub fixed_version: String,
    pub summary: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

fn err(m: impl Into<String>) -> ReportError {
    ReportError(m.into())
}

/// The formats `imprint import vulns` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Grype,
    Trivy,
}

impl ReportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Grype => "grype-json",
            ReportFormat::Trivy => "trivy-json",
        }
    }
}

/// Severity as one vocabulary (scanners and advisories spell it differently).
pub fn normalise_severity(s: &str) -> String {
    match s.trim().to_ascii_lowercase().as_str() {
        "critical" => "critical",
        "high" | "important" => "high",
        "medium" | "moderate" => "medium",
        "low" => "low",
        "negligible" | "minimal" => "negligible",
        _ => "unknown",
    }
    .to_string()
}

/// Rank for sorting: critical first.
pub fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 0,
        "high" => 1,
        "medium" => 2,
        "low" => 3,
        "negligible" => 4,
        _ => 5,
    }
}

fn field<'a>(v: &'a Value, name: &str, at: &str) -> Result<&'a Value, ReportError> {
    v.get(name)
        .ok_or_else(|| err(format!("{at}.{name}: missing")))
}

fn text<'a>(v: &'a Value, name: &str, at: &str) -> Result<&'a str, ReportError> {
    field(v, name, at)?
        .as_str()
        .ok_or_else(|| err(format!("{at}.{name}: not a string")))
}

fn cve_first(ids: &[&str]) -> String {
    ids.iter()
        .find(|i| i.starts_with("CVE-"))
        .or(ids.first())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Reads a Grype or Trivy JSON report, recognising which.
pub fn parse_report(bytes: &[u8]) -> Result<(ReportFormat, Vec<Vulnerability>), ReportError> {
    let doc: Value = super::parse_json(bytes).map_err(err)?;
    if doc.get("matches").is_some() {
        return Ok((ReportFormat::Grype, grype(&doc)?));
    }
    if doc.get("SchemaVersion").is_some() || doc.get("Results").is_some() {
        return Ok((ReportFormat::Trivy, trivy(&doc)?));
    }
    Err(err(
        "not a scanner report this server reads: expected Grype JSON (`matches`) or \
         Trivy JSON (`SchemaVersion`, `Results`)",
    ))
}

fn grype(doc: &Value) -> Result<Vec<Vulnerability>, ReportError> {
    let matches = doc["matches"]
        .as_array()
        .ok_or_else(|| err("matches: not an array"))?;
    let mut out = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        let at = format!("matches[{i}]");
        let v = field(m, "vulnerability", &at)?;
        let a = field(m, "artifact", &at)?;
        let vat = format!("{at}.vulnerability");
        let id = text(v, "id", &vat)?;
        let mut ids = vec![id];
        for r in m
            .get("relatedVulnerabilities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.get("id").and_then(Value::as_str) {
                ids.push(r);
            }
        }
        let fixed = v
            .get("fix")
            .and_then(|f| f.get("versions"))
            .and_then(Value::as_array)
            .and_then(|vs| vs.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push(Vulnerability {
            vuln_id: cve_first(&ids),
            aliases: ids.join(","),
            package: text(a, "name", &format!("{at}.artifact"))?.to_string(),
            version: text(a, "version", &format!("{at}.artifact"))?.to_string(),
            severity: normalise_severity(text(v, "severity", &vat)?),
            fixed_version: fixed.to_string(),
            summary: v
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    Ok(out)
}

fn trivy(doc: &Value) -> Result<Vec<Vulnerability>, ReportError> {
    let results = field(doc, "Results", "trivy")?
        .as_array()
        .ok_or_else(|| err("Results: not an array"))?;
    let mut out = Vec::new();
    for (i, r) in results.iter().enumerate() {
        // A target without findings has no `Vulnerabilities` at all.
        let Some(list) = r.get("Vulnerabilities") else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| err(format!("Results[{i}].Vulnerabilities: not an array")))?;
        for (j, v) in list.iter().enumerate() {
            let at = format!("Results[{i}].Vulnerabilities[{j}]");
            let id = text(v, "VulnerabilityID", &at)?;
            out.push(Vulnerability {
                vuln_id: id.to_string(),
                aliases: id.to_string(),
                package: text(v, "PkgName", &at)?.to_string(),
                version: text(v, "InstalledVersion", &at)?.to_string(),
                severity: normalise_severity(text(v, "Severity", &at)?),
                fixed_version: v
                    .get("FixedVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                summary: v
                    .get("Title")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            });
        }
    }
    Ok(out)
}

/// One OSV advisory, as much of it as matching needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: String,
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affected {
    /// `PyPI`, `Debian`, `Debian:12`, …
    pub ecosystem: String,
    pub name: String,
    /// ECOSYSTEM ranges: events in order.
    pub ranges: Vec<Vec<Event>>,
    /// Versions listed explicitly.
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

/// Reads one OSV JSON document (`file` names it in errors).
pub fn parse_osv(bytes: &[u8], file: &str) -> Result<Advisory, ReportError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| err(format!("{file}: not JSON: {e}")))?;
    let at = &format!("{file}: advisory");
    let id = text(&doc, "id", at)?.to_string();
    let aliases = doc
        .get("aliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let severity = doc
        .get("database_specific")
        .and_then(|d| d.get("severity"))
        .and_then(Value::as_str)
        .map_or_else(|| "unknown".to_string(), normalise_severity);
    let mut affected = Vec::new();
    for (i, a) in doc
        .get("affected")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let aat = format!("{at}.affected[{i}]");
        let package = field(a, "package", &aat)?;
        let mut ranges = Vec::new();
        for r in a
            .get("ranges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // GIT and SEMVER ranges are not versions of installed packages here.
            if r.get("type").and_then(Value::as_str) != Some("ECOSYSTEM") {
                continue;
            }
            let mut events = Vec::new();
            for e in r
                .get("events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let get = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
                if let Some(v) = get("introduced") {
                    events.push(Event::Introduced(v));
                } else if let Some(v) = get("fixed") {
                    events.push(Event::Fixed(v));
                } else if let Some(v) = get("last_affected") {
                    events.push(Event::LastAffected(v));
                }
            }
            ranges.push(events);
        }
        affected.push(Affected {
            ecosystem: text(package, "ecosystem", &format!("{aat}.package"))?.to_string(),
            name: text(package, "name", &format!("{aat}.package"))?.to_string(),
            ranges,
            versions: a
                .get("versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(Advisory {
        id,
        aliases,
        summary: doc
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        severity,
        affected,
    })
}

/// PEP 503 name normalisation: `Flask_SQLAlchemy` → `flask-sqlalchemy`.
fn pypi_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `version` is in the affected ranges (OSV's evaluation: events sorted by
/// version; the last event at or below the version decides).
fn in_ranges(scheme: Scheme, version: &str, affected: &Affected) -> bool {
    if affected.versions.iter().any(|v| v == version) {
        return true;
    }
    let cmp = |a: &str, b: &str| -> Option<Ordering> {
        if a == "0" {
            return Some(if b == "0" {
                Ordering::Equal
            } else {
                Ordering::Less
            });
        }
        scheme.compare(a, b)
    };
    affected.ranges.iter().any(|events| {
        let mut state = false;
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by(|a, b| {
            let (Event::Introduced(x) | Event::Fixed(x) | Event::LastAffected(x)) = a;
            let (Event::Introduced(y) | Event::Fixed(y) | Event::LastAffected(y)) = b;
            cmp(x, y).unwrap_or(Ordering::Equal)
        });
        for e in sorted {
            match e {
                Event::Introduced(x) if cmp(x, version).is_some_and(Ordering::is_le) => {
                    state = true
                }
                Event::Fixed(x) if cmp(x, version).is_some_and(Ordering::is_le) => state = false,
                Event::LastAffected(x) if cmp(x, version).is_some_and(Ordering::is_lt) => {
                    state = false
                }
                _ => {}
            }
        }
        state
    })
}

/// The key advisories are indexed by: PyPI names normalised (PEP 503), others as is.
fn match_key(ecosystem_family: &str, name: &str) -> String {
    if ecosystem_family == "PyPI" {
        format!("PyPI/{}", pypi_name(name))
    } else {
        format!("{ecosystem_family}/{name}")
    }
}

fn family(ecosystem: &str) -> &str {
    match ecosystem.split(':').next().unwrap_or("") {
        "Ubuntu" => "Debian",
        f => f,
    }
}

/// The vulnerabilities `advisories` give `packages`.
pub fn match_advisories<'a>(
    packages: &[Package],
    advisories: impl IntoIterator<Item = &'a Advisory>,
) -> Vec<Vulnerability> {
    let mut index: HashMap<String, Vec<(&Advisory, &Affected)>> = HashMap::new();
    for adv in advisories {
        for a in &adv.affected {
            index
                .entry(match_key(family(&a.ecosystem), &a.name))
                .or_default()
                .push((adv, a));
        }
    }
    let mut out = Vec::new();
    for p in packages {
        let (scheme, fam) = match p.kind.as_str() {
            "python" => (Scheme::Pep440, "PyPI"),
            "deb" => (Scheme::Dpkg, "Debian"),
            _ => continue,
        };
        let mut names = vec![p.name.as_str()];
        if !p.source_package.is_empty() && p.source_package != p.name {
            names.push(&p.source_package);
        }
        let mut seen: Vec<&str> = Vec::new();
        for name in names {
            for (adv, a) in index.get(&match_key(fam, name)).into_iter().flatten() {
                if seen.contains(&adv.id.as_str()) || !in_ranges(scheme, &p.version, a) {
                    continue;
                }
                seen.push(&adv.id);
                let fixed = a
                    .ranges
                    .iter()
                    .flatten()
                    .find_map(|e| match e {
                        Event::Fixed(v) => Some(v.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let mut ids: Vec<&str> = vec![adv.id.as_str()];
                ids.extend(adv.aliases.iter().map(String::as_str));
                out.push(Vulnerability {
                    vuln_id: cve_first(&ids),
                    aliases: ids.join(","),
                    package: p.name.clone(),
                    version: p.version.clone(),
                    severity: adv.severity.clone(),
                    fixed_version: fixed,
                    summary: adv.summary.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, kind: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn osv_ranges_match_by_the_ecosystems_ordering() {
        let adv = parse_osv(
            br#"{"id": "PYSEC-2018-23", "aliases": ["CVE-2018-18074"], "summary": "auth leak",
                 "database_specific": {"severity": "MODERATE"},
                 "affected": [{"package": {"ecosystem": "PyPI", "name": "Requests"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.20.0"}]}]}]}"#,
            "a.json",
        )
        .unwrap();
        let deb = parse_osv(
            br#"{"id": "DSA-0001", "aliases": [],
                 "affected": [{"package": {"ecosystem": "Debian:12", "name": "curl"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "7.80.0"}, {"fixed": "7.88.1-10+deb12u5"}]}]},
                   {"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1.0"}, {"last_affected": "1.4"}]}]}]}"#,
            "b.json",
        )
        .unwrap();
        let packages = [
            pkg("requests", "2.19.0", "python"),
            pkg("requests", "2.20.0", "python"),
            pkg("curl", "7.88.1-10+deb12u4", "deb"),
            pkg("curl", "7.88.1-10+deb12u12", "deb"),
            pkg("x", "1.4", "python"),
            pkg("x", "1.4.1", "python"),
            // Same name, other ecosystem: not matched.
            pkg("curl", "7.0", "apk"),
        ];
        let found = match_advisories(&packages, &[adv, deb]);
        let got: Vec<(&str, &str, &str, &str)> = found
            .iter()
            .map(|v| {
                (
                    v.vuln_id.as_str(),
                    v.package.as_str(),
                    v.version.as_str(),
                    v.severity.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("CVE-2018-18074", "requests", "2.19.0", "medium"),
                ("DSA-0001", "curl", "7.88.1-10+deb12u4", "unknown"),
                ("DSA-0001", "x", "1.4", "unknown"),
            ]
        );
        assert_eq!(found[0].fixed_version, "2.20.0");
        assert_eq!(found[0].aliases, "PYSEC-2018-23,CVE-2018-18074");
    }

    #[test]
    fn osv_errors_name_the_file_and_field() {
        let e = parse_osv(br#"{"affected": []}"#, "x/y.json")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "x/y.json: advisory.id: missing");
    }
}
