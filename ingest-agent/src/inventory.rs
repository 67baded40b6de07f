//! The runtime scanner: a container's packages and their files, read from its
//! filesystem as the host sees it (`/proc/<pid>/root`), once per image digest.
//!
//! - dpkg: `var/lib/dpkg/status` (installed packages, their source package) and
//!   `var/lib/dpkg/info/<name>[:<arch>].list` (their files);
//! - apk: `lib/apk/db/installed` (`P:` name, `V:` version, `F:` directory,
//!   `R:` file);
//! - Python: every `*.dist-info/RECORD` under `site-packages`/`dist-packages` of
//!   the usual prefixes (`/usr/lib`, `/usr/local/lib`, `/opt/*`, venvs one level
//!   down), paths relative to that directory;
//! - top-level directory symlinks (`/bin` → `/usr/bin` on merged-/usr images).
//!
//! Bounded: at most [`MAX_PACKAGES`] packages and [`MAX_FILES`] files in all;
//! what does not fit is left out and counted. Every read goes through
//! [`ContainerRoot`]: resolved inside the container, regular files only, size- and
//! time-capped.

use std::collections::BTreeMap;

use imprint_proto::ingest_v1::{InventoryReport, Package};

use crate::paths;
use crate::rootfs::ContainerRoot;

pub const MAX_PACKAGES: usize = 20_000;
pub const MAX_FILES: usize = 1_000_000;

/// What a scan found, and what it had to leave out.
#[derive(Debug, Default)]
pub struct Scan {
    pub packages: Vec<Package>,
    pub symlinks: BTreeMap<String, String>,
    pub left_out: usize,
    files: usize,
}

impl Scan {
    fn push(&mut self, mut p: Package) {
        if self.packages.len() >= MAX_PACKAGES || self.files >= MAX_FILES {
            self.left_out += 1;
            return;
        }
        p.files.truncate(MAX_FILES - self.files);
        self.files += p.files.len();
        self.packages.push(p);
    }

    pub fn into_report(self, agent_id: &str, image: &str, image_name: &str) -> InventoryReport {
        InventoryReport {
            agent_id: agent_id.to_string(),
            image: image.to_string(),
            image_name: image_name.to_string(),
            packages: self.packages,
            symlinks: self.symlinks.into_iter().collect(),
        }
    }
}

/// Scans the container filesystem `root` ([`ContainerRoot`]: nothing it reads can leave it).
pub fn scan(root: &ContainerRoot) -> Scan {
    let mut s = Scan::default();
    dpkg(root, &mut s);
    apk(root, &mut s);
    python(root, &mut s);
    for dir in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if let Some(target) = root.read_link(dir) {
            let t = target.to_string_lossy();
            let abs = if t.starts_with('/') {
                t.to_string()
            } else {
                format!("/{t}")
            };
            s.symlinks.insert(format!("/{dir}"), abs);
        }
    }
    s
}

fn dpkg(root: &ContainerRoot, s: &mut Scan) {
    let Ok(status) = root.read_to_string("/var/lib/dpkg/status") else {
        return;
    };
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let name = field("Package");
        if name.is_empty() || !field("Status").ends_with(" installed") || name.contains('/') {
            continue;
        }
        let arch = field("Architecture");
        // `Source: glibc (2.36-9)` names the source package (and its version).
        let source = field("Source")
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let info = "/var/lib/dpkg/info";
        let list = root
            .read_to_string(&format!("{info}/{name}:{arch}.list"))
            .or_else(|_| root.read_to_string(&format!("{info}/{name}.list")))
            .unwrap_or_default();
        let files = list
            .lines()
            .filter(|l| l.starts_with('/') && *l != "/." && !root.is_dir(l))
            .map(str::to_string)
            .collect();
        let version = field("Version");
        s.push(Package {
            purl: format!("pkg:deb/{name}@{version}?arch={arch}"),
            name,
            version,
            r#type: "deb".into(),
            source_package: source,
            files,
        });
    }
}

fn apk(root: &ContainerRoot, s: &mut Scan) {
    let Ok(db) = root.read_to_string("/lib/apk/db/installed") else {
        return;
    };
    for stanza in db.split("\n\n") {
        let (mut name, mut version, mut dir) = (String::new(), String::new(), String::new());
        let mut files = Vec::new();
        for line in stanza.lines() {
            match line.split_once(':') {
                Some(("P", v)) => name = v.to_string(),
                Some(("V", v)) => version = v.to_string(),
                Some(("F", v)) => dir = v.to_string(),
                Some(("R", v)) => files.push(format!("/{dir}/{v}")),
                _ => {}
            }
        }
        if !name.is_empty() {
            s.push(Package {
                purl: format!("pkg:apk/{name}@{version}"),
                name,
                version,
                r#type: "apk".into(),
                source_package: String::new(),
                files,
            });
        }
    }
}

/// `site-packages` and `dist-packages` directories under the usual prefixes, as the
/// container sees them.
fn python_dirs(root: &ContainerRoot) -> Vec<String> {
    let mut prefixes = vec!["/usr/lib".to_string(), "/usr/local/lib".to_string()];
    for top in ["/opt", "/srv", "/app", "/venv", "/usr/local"] {
        for e in root.read_dir(top).unwrap_or_default() {
            prefixes.push(format!("{top}/{}/lib", e.name));
        }
    }
    prefixes.push("/venv/lib".into());
    let mut dirs = Vec::new();
    for p in prefixes {
        for e in root.read_dir(&p).unwrap_or_default() {
            if !e.name.starts_with("python") {
                continue;
            }
            for sub in ["site-packages", "dist-packages"] {
                let d = format!("{p}/{}/{sub}", e.name);
                if root.is_dir(&d) {
                    dirs.push(d);
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

fn python(root: &ContainerRoot, s: &mut Scan) {
    for dir in python_dirs(root) {
        let infos = root.read_dir(&dir).unwrap_or_default();
        for info in infos.iter().filter(|e| e.name.ends_with(".dist-info")) {
            let info = format!("{dir}/{}", info.name);
            let Ok(metadata) = root.read_to_string(&format!("{info}/METADATA")) else {
                continue;
            };
            let header = |k: &str| {
                metadata
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let (name, version) = (header("Name"), header("Version"));
            if name.is_empty() {
                continue;
            }
            let record = root
                .read_to_string(&format!("{info}/RECORD"))
                .unwrap_or_default();
            let files = record
                .lines()
                .filter_map(|l| l.split(',').next())
                .filter(|p| !p.is_empty())
                .map(|p| paths::absolute(&dir, p))
                .collect();
            s.push(Package {
                purl: format!("pkg:pypi/{}@{version}", name.to_ascii_lowercase()),
                name,
                version,
                r#type: "python".into(),
                source_package: String::new(),
                files,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn dpkg_apk_python_and_symlinks_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "var/lib/dpkg/status",
            "Package: sed\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.9-1\n\n\
             Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u4\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n",
        );
        write(
            root,
            "var/lib/dpkg/info/sed.list",
            "/.\n/bin\n/bin/sed\n/usr/share/doc/sed/copyright\n",
        );
        write(
            root,
            "var/lib/dpkg/info/libc6:amd64.list",
            "/lib/x86_64-linux-gnu/libc.so.6\n",
        );
        std::fs::create_dir_all(root.join("bin")).unwrap();
        write(
            root,
            "lib/apk/db/installed",
            "P:musl\nV:1.2.4-r2\nF:lib\nR:ld-musl-x86_64.so.1\n\n",
        );
        write(
            root,
            "opt/venv/lib/python3.11/site-packages/requests-2.19.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.0\n\nbody\n",
        );
        write(
            root,
            "opt/venv/lib/python3.11/site-packages/requests-2.19.0.dist-info/RECORD",
            "requests/__init__.py,sha256=x,100\n../../../bin/req,sha256=y,5\n",
        );
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();

        let s = scan(&ContainerRoot::open(root, Default::default()).unwrap());
        let by: BTreeMap<&str, &Package> =
            s.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(by.len(), 4, "{:?}", s.packages);
        // Directories (`/bin`, `/.`) are not files of the package.
        assert_eq!(
            by["sed"].files,
            vec!["/bin/sed", "/usr/share/doc/sed/copyright"]
        );
        assert_eq!(by["libc6"].source_package, "glibc");
        assert_eq!(by["libc6"].files, vec!["/lib/x86_64-linux-gnu/libc.so.6"]);
        assert_eq!(by["musl"].files, vec!["/lib/ld-musl-x86_64.so.1"]);
        assert_eq!(
            by["requests"].files,
            vec![
                "/opt/venv/lib/python3.11/site-packages/requests/__init__.py",
                "/opt/venv/bin/req"
            ]
        );
        assert_eq!(by["requests"].r#type, "python");
        assert_eq!(s.symlinks["/sbin"], "/usr/sbin");
    }
}
