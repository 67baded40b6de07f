//! Reading a container's filesystem from the host without letting the container choose what
//! is read.
//!
//! The agent runs as root next to hostile containers. A plain open of
//! `/proc/<pid>/root/usr/lib/…/RECORD` resolves an absolute symlink inside the container
//! against the *host's* root (a `RECORD` linked to `/etc/shadow` would read the host's), a
//! character device like `/dev/zero` never ends, and a FIFO blocks the reader. So every path is
//! resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` under a descriptor of the
//! container's root: absolute symlinks and `..` stay inside it, `/proc/…` magic links are
//! refused. Files are opened non-blocking, must be regular files, are read up to a size cap,
//! and a whole scan has a byte and time budget ([`Budget`]).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Limits of one scan: `--scan-max-file-bytes`, `--scan-max-bytes`, `--scan-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Largest file read; a larger one is skipped (and counted).
    pub max_file_bytes: u64,
    /// Bytes read in all; past it the scan stops reading.
    pub max_total_bytes: u64,
    /// Longest a scan may take; past it the scan stops reading.
    pub timeout: Duration,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_total_bytes: 512 << 20,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What a scan may still spend, and what it refused.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Files that were not regular files (devices, FIFOs, sockets, directories).
    pub not_regular: usize,
    /// Files over the size cap.
    pub too_large: usize,
    /// Paths refused by the kernel's resolution (magic links, escapes it blocks).
    pub unsafe_paths: usize,
    /// Whether the byte or time budget ran out.
    pub budget_exhausted: bool,
}

#[derive(Debug)]
struct Budget {
    bytes_left: u64,
    deadline: Instant,
    /// Once used up, it stays used up.
    exhausted: bool,
}

/// A container's root directory, opened once; every read resolves inside it.
#[derive(Debug)]
pub struct ContainerRoot {
    root: OwnedFd,
    limits: ScanLimits,
    budget: Mutex<Budget>,
    refusals: Mutex<Refusals>,
}

/// Why a read gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the scan's byte or time budget is used up")]
    BudgetExhausted,
}

/// A directory entry: its name and whether it is a directory (not following symlinks).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

impl ContainerRoot {
    /// Opens `root` (e.g. `/proc/<pid>/root`: the host opens that magic link on purpose; what
    /// lies below it is resolved inside it).
    pub fn open(root: &Path, limits: ScanLimits) -> std::io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root: fd,
            limits,
            budget: Mutex::new(Budget {
                bytes_left: limits.max_total_bytes,
                deadline: Instant::now() + limits.timeout,
                exhausted: false,
            }),
            refusals: Mutex::default(),
        })
    }

    /// What was refused so far.
    pub fn refusals(&self) -> Refusals {
        let r = self.refusals.lock();
        Refusals {
            not_regular: r.not_regular,
            too_large: r.too_large,
            unsafe_paths: r.unsafe_paths,
            budget_exhausted: r.budget_exhausted,
        }
    }

    /// `path` as the container sees it, relative to the root descriptor.
    fn relative(path: &str) -> &str {
        let p = path.trim_start_matches('/');
        if p.is_empty() { "." } else { p }
    }

    fn open_at(&self, path: &str, flags: OFlags) -> Result<OwnedFd, ReadError> {
        self.spend(0)?;
        // openat2 refuses (EINVAL) any flag O_PATH does not allow, O_NOCTTY among them.
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC
        } else {
            OFlags::CLOEXEC | OFlags::NOCTTY
        };
        rustix::fs::openat2(
            &self.root,
            Self::relative(path),
            flags | extra,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::LOOP {
                self.refusals.lock().unsafe_paths += 1;
            }
            ReadError::Io(e.into())
        })
    }

    /// Takes `bytes` from the budget, or says it is used up.
    fn spend(&self, bytes: u64) -> Result<(), ReadError> {
        let mut b = self.budget.lock();
        if b.exhausted || Instant::now() > b.deadline || b.bytes_left < bytes {
            b.exhausted = true;
            self.refusals.lock().budget_exhausted = true;
            return Err(ReadError::BudgetExhausted);
        }
        b.bytes_left -= bytes;
        Ok(())
    }

    /// The whole of the regular file at `path` (inside the container), within the caps.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let stat = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            self.refusals.lock().not_regular += 1;
            return Err(ReadError::NotRegular);
        }
        let cap = self.limits.max_file_bytes;
        if stat.st_size as u64 > cap {
            self.refusals.lock().too_large += 1;
            return Err(ReadError::TooLarge(cap));
        }
        // The file may grow while read: read at most one byte past the cap to notice.
        let mut data = Vec::with_capacity(stat.st_size as usize);
        std::fs::File::from(fd)
            .take(cap + 1)
            .read_to_end(&mut data)?;
        if data.len() as u64 > cap {
            self.refusals.lock().too_large += 1;
            return Err(ReadError::TooLarge(cap));
        }
        self.spend(data.len() as u64)?;
        Ok(data)
    }

    /// [`Self::read`] as text (invalid UTF-8 replaced).
    pub fn read_to_string(&self, path: &str) -> Result<String, ReadError> {
        self.read(path)
            .map(|d| String::from_utf8_lossy(&d).into_owned())
    }

    /// The entries of the directory at `path`, sorted by name.
    pub fn read_dir(&self, path: &str) -> Result<Vec<Entry>, ReadError> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut entries = Vec::new();
        for e in rustix::fs::Dir::new(fd).map_err(std::io::Error::from)? {
            let e = e.map_err(std::io::Error::from)?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            entries.push(Entry {
                name: name.to_string_lossy().into_owned(),
                is_dir: e.file_type() == FileType::Directory,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Whether `path` is a directory (symlinks followed, inside the container).
    pub fn is_dir(&self, path: &str) -> bool {
        self.open_at(path, OFlags::PATH | OFlags::DIRECTORY).is_ok()
    }

    /// The target of the symlink at `path` (a name in the root directory, e.g. `bin`).
    pub fn read_link(&self, name: &str) -> Option<PathBuf> {
        let name = Self::relative(name);
        if name.contains('/') {
            return None; // only top-level links are read, with no resolution at all
        }
        rustix::fs::readlinkat(&self.root, name, Vec::new())
            .ok()
            .map(|t| PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn absolute_symlinks_and_dotdot_resolve_inside_the_root() {
        let outside = root_with(&[("secret", "host secret\n")]);
        let root = root_with(&[("etc/secret", "container's own\n")]);
        let host_secret = outside.path().join("secret");
        // An absolute link to a host path, and one climbing out with `..`.
        std::os::unix::fs::symlink(&host_secret, root.path().join("abs")).unwrap();
        let climb = format!("../../../../../../..{}", host_secret.display());
        std::os::unix::fs::symlink(&climb, root.path().join("climb")).unwrap();
        std::os::unix::fs::symlink("/etc/secret", root.path().join("inside")).unwrap();
        let r = ContainerRoot::open(root.path(), ScanLimits::default()).unwrap();
        for link in ["abs", "climb"] {
            match r.read_to_string(link) {
                Ok(text) => assert!(!text.contains("host secret"), "{link} read the host file"),
                Err(e) => assert!(matches!(e, ReadError::Io(_)), "{link}: {e}"),
            }
        }
        assert_eq!(r.read_to_string("inside").unwrap(), "container's own\n");
        assert_eq!(
            r.read_to_string("/etc/secret").unwrap(),
            "container's own\n"
        );
        // `..` at the root stays at the root.
        assert_eq!(
            r.read_to_string("../../../../etc/secret").unwrap(),
            "container's own\n"
        );
    }

    #[test]
    fn devices_fifos_and_large_files_are_not_read() {
        let root = root_with(&[("big", &"x".repeat(5000)), ("small", "ok")]);
        std::os::unix::fs::symlink("/dev/zero", root.path().join("zero")).unwrap();
        let fifo = root.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let limits = ScanLimits {
            max_file_bytes: 4096,
            ..ScanLimits::default()
        };
        let r = ContainerRoot::open(root.path(), limits).unwrap();
        // `/dev/zero` inside the root does not exist (the link resolves inside it).
        assert!(r.read("zero").is_err());
        assert!(matches!(r.read("fifo"), Err(ReadError::NotRegular)));
        assert!(matches!(r.read("big"), Err(ReadError::TooLarge(4096))));
        assert_eq!(r.read("small").unwrap(), b"ok");
        let refused = r.refusals();
        assert_eq!((refused.not_regular, refused.too_large), (1, 1));
    }

    #[test]
    fn the_byte_budget_stops_a_scan() {
        let root = root_with(&[("a", &"a".repeat(600)), ("b", &"b".repeat(600))]);
        let limits = ScanLimits {
            max_total_bytes: 1000,
            ..ScanLimits::default()
        };
        let r = ContainerRoot::open(root.path(), limits).unwrap();
        assert!(r.read("a").is_ok());
        assert!(matches!(r.read("b"), Err(ReadError::BudgetExhausted)));
        assert!(r.refusals().budget_exhausted);
        assert!(r.read("a").is_err(), "nothing more is read once it ran out");
    }

    #[test]
    fn directories_list_without_following_links() {
        let root = root_with(&[("d/x", ""), ("d/sub/y", "")]);
        std::os::unix::fs::symlink("/", root.path().join("d/up")).unwrap();
        let r = ContainerRoot::open(root.path(), ScanLimits::default()).unwrap();
        let names: Vec<(String, bool)> = r
            .read_dir("/d")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_dir))
            .collect();
        assert_eq!(
            names,
            [
                ("sub".to_string(), true),
                ("up".to_string(), false),
                ("x".to_string(), false)
            ]
        );
        assert!(r.is_dir("d/up"), "`/` inside the root is a directory");
        assert_eq!(r.read_link("d"), None);
    }
}
