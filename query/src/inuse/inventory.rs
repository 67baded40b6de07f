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
    /// A path with its longest directory-symlink prefix resolved to the target, so both
    /// spellings of one file compare equal. Looks up each ancestor of the path (longest
    /// first): a path's depth of map lookups, whatever the number of symlinks.
    pub fn canonical(&self, path: &str) -> String {
        let target_of = |alias: &str| -> Option<&str> {
            if self.symlinks.is_empty() {
                MERGED_USR
                    .iter()
                    .find(|(a, _)| *a == alias)
                    .map(|(_, t)| *t)
            } else {
                self.symlinks.get(alias).map(String::as_str)
            }
        };
        let mut end = path.len();
        while end > 1 {
            let alias = &path[..end];
            if let Some(target) = target_of(alias) {
                return format!("{target}{}", &path[end..]);
            }
            match alias.rfind('/') {
                Some(i) => end = i,
                None => break,
            }
        }
        path.to_string()
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
        // The longest alias wins; a sibling that only shares a prefix does not match.
        let inv = Inventory {
            symlinks: BTreeMap::from([
                ("/opt".into(), "/o".into()),
                ("/opt/app".into(), "/srv".into()),
            ]),
            ..Default::default()
        };
        assert_eq!(inv.canonical("/opt/app/x"), "/srv/x");
        assert_eq!(inv.canonical("/opt/apple"), "/o/apple");
        assert_eq!(inv.canonical("/opt"), "/o");
    }
}
