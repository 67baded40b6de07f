//! `imprint import sbom|vulns|osv` and `imprint vulns IMAGE [--in-use]`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use imprint_proto::admin_v1::admin_client::AdminClient;
use imprint_proto::admin_v1::{
    ImportAdvisoriesRequest, ImportResponse, ImportSbomRequest, ImportVulnsRequest, OsvDocument,
};
use imprint_proto::client::AuthedChannel;
use tonic::transport::Channel;

use super::profile::{Rows, quote, resolve};
use super::{CliError, run_sql_for_display, status_error};

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// An image's SBOM: syft JSON (with file lists: what In Use needs), SPDX 2.3
    /// JSON, or CycloneDX JSON (package lists). Replaces the image's last SBOM.
    ///
    /// Example: syft scan IMAGE -o syft-json > sbom.json && imprint import sbom --image sha256:… sbom.json
    Sbom {
        /// Image digest (sha256:…) or a name with a profile.
        #[arg(long)]
        image: String,
        /// Where the scanned directory is inside the image (for a scan of a
        /// directory, e.g. a venv at /opt/venv).
        #[arg(long, default_value = "/")]
        root: String,
        file: PathBuf,
    },
    /// A scanner report for an image: Grype JSON (`grype -o json`) or Trivy JSON
    /// (`trivy image -f json`). Replaces the image's last report of that format.
    Vulns {
        #[arg(long)]
        image: String,
        file: PathBuf,
    },
    /// OSV advisories: a JSON file, a directory of them (searched recursively), or
    /// a ZIP archive of them (osv.dev's `all.zip` of an ecosystem). Imprint matches
    /// them against every image's packages (PyPI, Debian).
    Osv { path: PathBuf },
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Server(format!("reading {}: {e}", path.display())))
}

/// The `.json` files under `path`. Symlinks inside the tree are not followed (a link loop
/// or a link out of the tree is skipped, with a warning); the top path itself may be one.
fn osv_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| CliError::Server(format!("reading {}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let is_link = std::fs::symlink_metadata(&e).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                eprintln!("warning: {}: a symlink; not followed", e.display());
                continue;
            }
            if e.is_dir() || e.extension().is_some_and(|x| x == "json") {
                osv_files(&e, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn report(r: &ImportResponse, what: &str) {
    match r.format.as_str() {
        "osv" => println!("imported {} OSV advisories", r.advisories),
        f if r.vulnerabilities > 0 || what == "vulns" => {
            println!("imported {f} report: {} vulnerabilities", r.vulnerabilities)
        }
        f => println!(
            "imported {f} SBOM: {} packages, {} files",
            r.packages, r.files
        ),
    }
}

pub async fn import(
    channel: Channel,
    token: &str,
    mut client: AdminClient<AuthedChannel>,
    command: ImportCommand,
) -> Result<(), CliError> {
    match command {
        ImportCommand::Sbom { image, root, file } => {
            let image = resolve(&channel, token, &image).await?;
            let r = client
                .import_sbom(ImportSbomRequest {
                    image,
                    document: read(&file)?,
                    root,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            report(&r, "sbom");
        }
        ImportCommand::Vulns { image, file } => {
            let image = resolve(&channel, token, &image).await?;
            let r = client
                .import_vulns(ImportVulnsRequest {
                    image,
                    report: read(&file)?,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            report(&r, "vulns");
        }
        ImportCommand::Osv { path } => {
            let documents = if path.extension().is_some_and(|x| x == "zip") {
                super::zip::members(&read(&path)?, ".json")
                    .map_err(|e| CliError::Server(format!("{}: {e}", path.display())))?
                    .into_iter()
                    .map(|(name, json)| OsvDocument {
                        name: format!("{}:{name}", path.display()),
                        json,
                    })
                    .collect()
            } else {
                let mut files = Vec::new();
                osv_files(&path, &mut files)?;
                files
                    .iter()
                    .map(|f| {
                        Ok(OsvDocument {
                            name: f.display().to_string(),
                            json: read(f)?,
                        })
                    })
                    .collect::<Result<Vec<_>, CliError>>()?
            };
            if documents.is_empty() {
                return Err(CliError::Server(format!(
                    "no .json OSV documents in {}",
                    path.display()
                )));
            }
            eprintln!("sending {} OSV documents ...", documents.len());
            let r = client
                .import_advisories(ImportAdvisoriesRequest { documents })
                .await
                .map_err(status_error)?
                .into_inner();
            report(&r, "osv");
        }
    }
    Ok(())
}

/// `imprint vulns IMAGE [--in-use]`: in use first, then by severity.
pub async fn vulns(
    channel: Channel,
    token: &str,
    image: &str,
    in_use_only: bool,
) -> Result<(), CliError> {
    let digest = resolve(&channel, token, image).await?;
    let only = if in_use_only { " AND in_use" } else { "" };
    let rows = Rows(
        run_sql_for_display(
            channel,
            token,
            &format!(
                "SELECT vuln_id, package, version, severity, fixed_version, in_use, evidence_path \
                 FROM runtime_vulnerabilities WHERE image = {}{only} \
                 ORDER BY CASE WHEN in_use THEN 0 ELSE 1 END, \
                 CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 \
                 WHEN 'low' THEN 3 WHEN 'negligible' THEN 4 ELSE 5 END, package, vuln_id",
                quote(&digest)
            ),
        )
        .await?,
    );
    println!(
        "{:<7} {:<10} {:<20} {:<24} {:<20} {:<14} evidence",
        "in use", "severity", "vulnerability", "package", "version", "fixed in"
    );
    let mut unknown = false;
    for r in rows.iter() {
        let in_use = match r.get("in_use").as_str() {
            "true" => "yes",
            "false" => "no",
            _ => {
                unknown = true;
                "?"
            }
        };
        println!(
            "{:<7} {:<10} {:<20} {:<24} {:<20} {:<14} {}",
            in_use,
            r.get("severity"),
            r.get("vuln_id"),
            r.get("package"),
            r.get("version"),
            r.get("fixed_version"),
            r.get("evidence_path"),
        );
    }
    if rows.len() == 0 {
        eprintln!(
            "no vulnerabilities for {digest}{}: import a scanner report (imprint import vulns) \
             or advisories (imprint import osv) and an SBOM",
            if in_use_only { " in use" } else { "" }
        );
    }
    if unknown {
        eprintln!(
            "?: not known — runtime_scanner.eve_enabled is off, or no inventory lists the \
             package's files (see docs/in-use.md)"
        );
    }
    Ok(())
}
