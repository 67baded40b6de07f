//! The disk spool: every batch is written here before it is pushed, and removed when the server
//! has acknowledged it. So batches survive the server being away *and* the agent restarting, and
//! go out in order (file names are the zero-padded seq). Bounded: a batch that would take the
//! spool over its cap is not written, and its fingerprints are counted as lost.
//!
//! It also keeps the last seq the agent used (`last-seq`), so a restarted agent numbers above
//! everything it sent before even when its clock stepped back.

use std::io::Write;
use std::path::{Path, PathBuf};

use imprint_proto::ingest_v1::FingerprintBatch;
use prost::Message;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: u64,
    /// Seqs waiting, oldest first, with their file sizes.
    waiting: std::collections::VecDeque<(u64, u64)>,
    lock: PathBuf,
    /// The `last-seq` file's value (0 when there is none).
    saved_last_seq: u64,
}

/// Holds the highest seq the agent has used, in decimal.
const LAST_SEQ_FILE: &str = "last-seq";

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool {path} is in use by another agent (pid {pid}); give each agent its own --spool-dir"
    )]
    Locked { path: PathBuf, pid: u32 },
    #[error("spool full ({bytes} of {max} bytes): batch {seq} not kept")]
    Full { seq: u64, bytes: u64, max: u64 },
}

/// Takes `<dir>/lock` (holding this process's pid). A lock left by a process that is gone is
/// taken over; one held by a live process is an error: two agents on one spool would send each
/// other's batches.
fn lock(dir: &Path) -> Result<PathBuf, SpoolError> {
    let path = dir.join("lock");
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                let _ = write!(file, "{me}");
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder: Option<u32> = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
                match holder {
                    Some(pid) if pid != me && Path::new(&format!("/proc/{pid}")).exists() => {
                        return Err(SpoolError::Locked {
                            path: dir.to_path_buf(),
                            pid,
                        });
                    }
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Err(source) => return Err(SpoolError::Io { path, source }),
        }
    }
    Err(SpoolError::Io {
        path,
        source: std::io::Error::other("could not take the lock"),
    })
}

impl Spool {
    /// Opens (creating) the spool directory and finds the batches left by an earlier run.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = lock(dir)?;
        let mut waiting = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".batch"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                // Leftover temporary files of a crash mid-write are not batches.
                if name.to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let size = entry.metadata().map_err(io)?.len();
            bytes += size;
            waiting.push((seq, size));
        }
        waiting.sort_unstable();
        let saved_last_seq = std::fs::read_to_string(dir.join(LAST_SEQ_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Spool {
            saved_last_seq,
            dir: dir.to_path_buf(),
            max_bytes,
            bytes,
            waiting: waiting.into(),
            lock,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.batch"))
    }

    /// The highest seq used before: in the spool or in `last-seq` (a restarted agent
    /// continues above it).
    pub fn last_seq(&self) -> Option<u64> {
        let spooled = self.waiting.back().map(|(seq, _)| *seq);
        let saved = (self.saved_last_seq > 0).then_some(self.saved_last_seq);
        spooled.max(saved)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes a batch durably (temporary file, fsync, rename).
    pub fn push(&mut self, batch: &FingerprintBatch) -> Result<(), SpoolError> {
        let encoded = batch.encode_to_vec();
        let size = encoded.len() as u64;
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full {
                seq: batch.seq,
                bytes: self.bytes,
                max: self.max_bytes,
            });
        }
        let path = self.path(batch.seq);
        let tmp = path.with_extension("tmp");
        let io = |source| SpoolError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&encoded).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.save_last_seq(batch.seq)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        self.bytes += size;
        let at = self.waiting.partition_point(|&(s, _)| s < batch.seq);
        self.waiting.insert(at, (batch.seq, size));
        Ok(())
    }

    /// Records `seq` as the highest used (when it is), durably before the directory's fsync.
    fn save_last_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.saved_last_seq {
            return Ok(());
        }
        let path = self.dir.join(LAST_SEQ_FILE);
        let tmp = path.with_extension("tmp");
        let io = |source| SpoolError::Io {
            path: tmp.clone(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        write!(file, "{seq}").map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.saved_last_seq = seq;
        Ok(())
    }

    /// Gives the oldest batch the seq `new_seq` (above every seq used), so it goes out again
    /// after the others: for a batch the server says it had seen, which this agent never sent.
    pub fn renumber_front(&mut self, new_seq: u64) -> Result<(), SpoolError> {
        let Some(Ok(mut batch)) = self.front() else {
            return Ok(());
        };
        batch.seq = new_seq;
        // Written under the new name first: a crash between the two steps leaves the batch
        // twice (the server dedups the old number or refuses it), never zero times.
        let bytes = self.bytes;
        self.bytes = 0; // the batch is already counted; its copy must not hit the cap
        let pushed = self.push(&batch);
        self.bytes += bytes;
        pushed?;
        self.pop();
        Ok(())
    }

    /// The oldest batch waiting, read back from disk. A file that does not decode (corrupt) is
    /// moved aside as `<seq>.corrupt` and skipped, with an error returned for the log.
    pub fn front(&mut self) -> Option<Result<FingerprintBatch, SpoolError>> {
        let (seq, _) = *self.waiting.front()?;
        let path = self.path(seq);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => {
                self.pop();
                return Some(Err(SpoolError::Io { path, source }));
            }
        };
        match FingerprintBatch::decode(bytes.as_slice()) {
            Ok(batch) => Some(Ok(batch)),
            Err(e) => {
                let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                self.pop_entry();
                Some(Err(SpoolError::Io {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }))
            }
        }
    }

    /// Removes the oldest batch (acknowledged, or refused for good).
    pub fn pop(&mut self) {
        if let Some((seq, _)) = self.waiting.front() {
            let _ = std::fs::remove_file(self.path(*seq));
        }
        self.pop_entry();
    }

    fn pop_entry(&mut self) {
        if let Some((_, size)) = self.waiting.pop_front() {
            self.bytes = self.bytes.saturating_sub(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_proto::ingest_v1::Fingerprint;

    fn batch(seq: u64, fingerprints: usize) -> FingerprintBatch {
        FingerprintBatch {
            agent_id: "a".into(),
            seq,
            fingerprints: (0..fingerprints)
                .map(|i| Fingerprint {
                    container_id: format!("c{i}"),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn batches_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.push(&batch(20, 1)).expect("push");
        spool.push(&batch(10_000_000_000, 2)).expect("push");
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.last_seq(), Some(10_000_000_000));
        assert_eq!(spool.front().expect("one").expect("decodes").seq, 20);
        spool.pop();
        assert_eq!(
            spool
                .front()
                .expect("one")
                .expect("decodes")
                .fingerprints
                .len(),
            2
        );
        spool.pop();
        assert!(spool.front().is_none());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn a_spool_held_by_a_live_process_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // pid 1 is always alive.
        std::fs::write(dir.path().join("lock"), "1").expect("write");
        let error = Spool::open(dir.path(), 1 << 20).expect_err("locked");
        assert!(
            error
                .to_string()
                .contains("in use by another agent (pid 1)"),
            "{error}"
        );
        // A lock of a process that is gone is taken over.
        std::fs::write(dir.path().join("lock"), "4294967295").expect("write");
        let spool = Spool::open(dir.path(), 1 << 20).expect("stale lock taken over");
        drop(spool);
        assert!(!dir.path().join("lock").exists(), "released on drop");
    }

    #[test]
    fn the_cap_refuses_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 40).expect("open");
        spool.push(&batch(1, 1)).expect("fits");
        let error = spool.push(&batch(2, 20)).expect_err("over the cap");
        assert!(matches!(error, SpoolError::Full { seq: 2, .. }), "{error}");
        assert_eq!(spool.len(), 1);
    }

    #[test]
    fn a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(format!("{:020}.batch", 5)), b"\xff\xff\xff")
            .expect("write");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        assert!(spool.front().expect("one").is_err());
        assert!(spool.front().is_none());
        assert!(dir.path().join(format!("{:020}.corrupt", 5)).exists());
    }
}
