//! cgroup v2: where it is mounted, and which directory a cgroup id names (the id
//! `bpf_get_current_cgroup_id()` returns is the inode number of the cgroup's directory).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (the first `cgroup2` mount: `/sys/fs/cgroup`
/// on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn find_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options ... - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() == Some("cgroup2") {
            return left.split_whitespace().nth(4).map(PathBuf::from);
        }
    }
    None
}

/// Maps cgroup ids to their paths (relative to the mount, starting with `/`), rescanning the tree
/// when an id is not known yet.
#[derive(Debug)]
pub struct CgroupIndex {
    mount: PathBuf,
    paths: HashMap<u64, String>,
}

impl CgroupIndex {
    pub fn new(mount: PathBuf) -> CgroupIndex {
        let mut index = CgroupIndex {
            mount,
            paths: HashMap::new(),
        };
        index.rescan();
        index
    }

    /// The id of the root cgroup (the host's).
    pub fn root_id(&self) -> u64 {
        std::fs::metadata(&self.mount).map(|m| m.ino()).unwrap_or(1)
    }

    /// Every id known now (at start: the cgroups that already existed).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.paths.keys().copied()
    }

    /// The path of `id`, rescanning once when it is not known.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        self.rescan();
        self.paths.get(&id).cloned()
    }

    /// The directory of a path relative to the mount (`/a/b`).
    pub fn dir_of(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }

    /// The id of a path relative to the mount (`/a/b`).
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let full = self.mount.join(path.trim_start_matches('/'));
        std::fs::metadata(full).ok().map(|m| m.ino())
    }

    pub fn rescan(&mut self) {
        self.paths.clear();
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let relative = dir
                .strip_prefix(&self.mount)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_else(|_| "/".into());
            self.paths.insert(meta.ino(), relative);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
}
