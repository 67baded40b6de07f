//! Scanner reports in their published formats (fixtures shaped exactly as Grype
//! 0.79 `-o json` and Trivy `image -f json` with SchemaVersion 2 write them): every
//! field Imprint reads is checked, and a report missing or renaming one is refused
//! with an error that names it.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use imprint_query::inuse::vulns::{ReportFormat, parse_report};

const GRYPE: &str = include_str!("fixtures/grype-requests.json");
const TRIVY: &str = include_str!("fixtures/trivy-image.json");

#[test]
fn grype_matches_become_vulnerabilities_with_the_cve_first() {
    let (format, v) = parse_report(GRYPE.as_bytes()).unwrap();
    assert_eq!(format, ReportFormat::Grype);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].vuln_id, "CVE-2018-18074");
    assert_eq!(v[0].aliases, "GHSA-x84v-xcm2-53pg,CVE-2018-18074");
    assert_eq!(
        (
            v[0].package.as_str(),
            v[0].version.as_str(),
            v[0].severity.as_str()
        ),
        ("requests", "2.19.0", "high")
    );
    assert_eq!(v[0].fixed_version, "2.20.0");
    assert_eq!(v[1].severity, "critical");
    assert_eq!(v[1].version, "7.88.1-10+deb12u3");
}

#[test]
fn trivy_results_become_vulnerabilities_and_targets_without_findings_are_skipped() {
    let (format, v) = parse_report(TRIVY.as_bytes()).unwrap();
    assert_eq!(format, ReportFormat::Trivy);
    let got: Vec<(&str, &str, &str, &str)> = v
        .iter()
        .map(|v| {
            (
                v.vuln_id.as_str(),
                v.package.as_str(),
                v.severity.as_str(),
                v.fixed_version.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("CVE-2023-38545", "curl", "critical", "7.88.1-10+deb12u4"),
            ("CVE-2011-3374", "apt", "low", ""),
            ("CVE-2018-18074", "requests", "medium", "2.20.0"),
        ]
    );
}

/// `doc` with the field at `path` (object keys and array indexes, the last one a
/// key) renamed.
fn renamed(doc: &str, path: &[&str]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(doc).unwrap();
    let (last, parents) = path.split_last().unwrap();
    let mut at = &mut v;
    for p in parents {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*p],
        };
    }
    let obj = at.as_object_mut().unwrap();
    let value = obj
        .remove(*last)
        .unwrap_or_else(|| panic!("no {path:?} in the fixture"));
    obj.insert(format!("{last}_renamed"), value);
    v.to_string()
}

#[test]
fn a_missing_or_renamed_field_is_refused_by_name() {
    let mut cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            GRYPE,
            vec!["matches", "0", "artifact"],
            "matches[0].artifact".into(),
        ),
        (
            GRYPE,
            vec!["matches", "0", "vulnerability", "severity"],
            "matches[0].vulnerability.severity".into(),
        ),
        (
            GRYPE,
            vec!["matches", "1", "artifact", "version"],
            "matches[1].artifact.version".into(),
        ),
        (
            GRYPE,
            vec!["matches", "0", "vulnerability", "id"],
            "matches[0].vulnerability.id".into(),
        ),
    ];
    for f in ["VulnerabilityID", "PkgName", "InstalledVersion", "Severity"] {
        cases.push((
            TRIVY,
            vec!["Results", "0", "Vulnerabilities", "0", f],
            format!("Results[0].Vulnerabilities[0].{f}"),
        ));
    }
    for (doc, path, field) in cases {
        let e = parse_report(renamed(doc, &path).as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{field}: missing"), "renaming {path:?}");
    }
    let e = parse_report(br#"{"hello": []}"#).unwrap_err().to_string();
    assert!(e.contains("not a scanner report"), "{e}");
}
