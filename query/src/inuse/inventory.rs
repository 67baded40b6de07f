//! An image's packages and their files: what the agent's runtime scanner found in
//! a running container, or what an imported SBOM says.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One installed package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// `deb`, `apk`, `python`, or what the SBOM says (`npm`, `java-archive`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub purl: String,
    /// Debian: the source package (advisories name source packages).
    pub source_package: String,
    /// Absolute paths inside the image.
    pub files: Vec<String>,
}

/// The packages of one image from one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    pub packages: Vec<Package>,
    /// Directory symlinks of the image (`/bin` → `/usr/bin`), so a path through
    /// either matches. Empty when the source does not record them.
    pub symlinks: BTreeMap<String, String>,
}

/// The symlinks of a merged-/usr image (Debian ≥ 12, Ubuntu ≥ 20.04, Fedora …),
/// assumed when an inventory records none: packages list `/bin/ls`, processes run
/// `/usr/bin/ls`.
pub const MERGED_USR: [(&str, &str); 6] = [
    ("/bin", "/usr/bin"),
    ("/sbin", "/usr/sbin"),
    ("/lib", "/usr/lib"),
    ("/lib32", "/usr/lib32"),
    ("/lib64", "/usr/lib64"),
    ("/libx32", "/usr/libx32"),
];

/// `path` made absolute, with `.`, `..` and repeated `/` resolved lexically,
/// under `prefix` (another absolute directory, or empty).
pub fn normalise_path(prefix: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in prefix.split('/').chain(path.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

impl Inventory {
    /// A path with every directory symlink resolved to its target (longest
    /// alias first), so both spellings of one file compare equal.
    pub fn canonical(&self, path: &str) -> String {
        let recorded: Vec<(&str, &str)> = self
            .symlinks
            .iter()
            .map(|(a, t)| (a.as_str(), t.as_str()))
            .collect();
        let aliases: &[(&str, &str)] = if recorded.is_empty() {
            &MERGED_USR
        } else {
            &recorded
        };
        let mut best: Option<(&str, &str)> = None;
        for &(alias, target) in aliases {
            let under = path == alias
                || (path.starts_with(alias) && path.as_bytes().get(alias.len()) == Some(&b'/'));
            if under && best.is_none_or(|(a, _)| alias.len() > a.len()) {
                best = Some((alias, target));
            }
        }
        match best {
            Some((alias, target)) => format!("{target}{}", &path[alias.len()..]),
            None => path.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_lexically_under_a_prefix() {
        assert_eq!(normalise_path("", "lib/./x/../y"), "/lib/y");
        assert_eq!(
            normalise_path(
                "/opt/venv/lib/python3.11/site-packages",
                "../../../bin/flask"
            ),
            "/opt/venv/bin/flask"
        );
        assert_eq!(normalise_path("/", "//usr//bin/"), "/usr/bin");
    }

    #[test]
    fn merged_usr_is_assumed_unless_symlinks_are_recorded() {
        let inv = Inventory::default();
        assert_eq!(inv.canonical("/bin/ls"), "/usr/bin/ls");
        assert_eq!(inv.canonical("/usr/bin/ls"), "/usr/bin/ls");
        assert_eq!(inv.canonical("/binary/x"), "/binary/x");
        let inv = Inventory {
            symlinks: BTreeMap::from([("/opt/app".into(), "/srv/app-1.2".into())]),
            ..Default::default()
        };
        assert_eq!(inv.canonical("/opt/app/run.py"), "/srv/app-1.2/run.py");
        assert_eq!(inv.canonical("/bin/ls"), "/bin/ls");
    }
}
