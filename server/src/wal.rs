//! The write-ahead log: acknowledged batches survive `kill -9` and power loss.
//!
//! A directory of segment files `<first seq, 20 digits>.wal`. Each starts with an
//! 8-byte magic, then records:
//!
//! ```text
//! | payload len: u32 LE | crc32: u32 LE (of seq + payload) | seq: u64 LE | payload |
//! ```
//!
//! Records get consecutive sequence numbers. [`Wal::append`] writes a whole group
//! of records with one `write` and one `fdatasync` (group commit): the caller acks
//! the group's batches only after it returns. Written with `std::fs`, since the
//! object store's local backend does not fsync.
//!
//! At open, every segment is read back. An invalid record that ends the last
//! segment is a torn write from a crash — it was never acknowledged — and is cut
//! off with a warning. An invalid record anywhere else is corruption of
//! acknowledged data: opening fails with the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracing::{info, warn};

const MAGIC: &[u8; 8] = b"IMPWAL1\n";
const HEADER: usize = 16;
/// Largest payload a record may hold (a batch is at most 16 MiB, plus slack).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum WalError {
    #[error("WAL I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "WAL segment {path} is corrupt at byte offset {offset}: {problem}. The records \
         before it are intact; data from this point on cannot be recovered. Move the file \
         out of the WAL directory to start without it."
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record read back at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// First seq of each closed segment, oldest first.
    closed: Vec<u64>,
    current: File,
    current_first: u64,
    current_len: u64,
    next_seq: u64,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` and returns every intact record, oldest
    /// first. Appends then go to a fresh segment.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Vec<Record>), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            firsts.push(first);
        }
        firsts.sort_unstable();

        let mut records = Vec::new();
        let mut next_seq = 1;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let is_last = i + 1 == firsts.len();
            let read = read_segment(&path, is_last)?;
            if let Some(cut) = read.torn_at {
                warn!(path = %path.display(), offset = cut, "WAL: cutting off a torn record at the tail (a write interrupted by a crash, never acknowledged)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(cut).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            for r in read.records {
                if r.seq < next_seq {
                    return Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        problem: format!(
                            "record seq {} after seq {}: segments overlap",
                            r.seq,
                            next_seq - 1
                        ),
                    });
                }
                next_seq = r.seq + 1;
                records.push(r);
            }
            next_seq = next_seq.max(first);
        }
        // Empty segments are dropped rather than kept as closed.
        let mut closed = Vec::new();
        for &first in &firsts {
            let path = segment_path(dir, first);
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if len <= MAGIC.len() as u64 {
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else {
                closed.push(first);
            }
        }
        let (current, current_len) = create_segment(dir, next_seq)?;
        if !records.is_empty() {
            info!(
                records = records.len(),
                segments = closed.len(),
                "WAL opened for replay"
            );
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segment_bytes,
                closed,
                current,
                current_first: next_seq,
                current_len,
                next_seq,
            },
            records,
        ))
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a group of payloads durably: one write, one fdatasync. Returns the
    /// seq of the first; the others follow consecutively.
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<u64, WalError> {
        if self.current_len >= self.segment_bytes {
            self.rotate()?;
        }
        let first = self.next_seq;
        let total: usize = payloads.iter().map(|p| HEADER + p.len()).sum();
        let mut buf = Vec::with_capacity(total);
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut buf, first + i as u64, p);
        }
        let path = segment_path(&self.dir, self.current_first);
        self.current.write_all(&buf).map_err(io_err(&path))?;
        self.current.sync_data().map_err(io_err(&path))?;
        self.current_len += buf.len() as u64;
        self.next_seq += payloads.len() as u64;
        Ok(first)
    }

    /// Closes the current segment and starts a new one (if the current one holds
    /// anything).
    pub fn rotate(&mut self) -> Result<(), WalError> {
        if self.current_len <= MAGIC.len() as u64 {
            return Ok(());
        }
        self.closed.push(self.current_first);
        let (file, len) = create_segment(&self.dir, self.next_seq)?;
        self.current = file;
        self.current_first = self.next_seq;
        self.current_len = len;
        Ok(())
    }

    /// Deletes closed segments all of whose records are below `oldest_needed`.
    /// Returns how many were deleted.
    pub fn drop_segments_before(&mut self, oldest_needed: u64) -> Result<usize, WalError> {
        let mut dropped = 0;
        while !self.closed.is_empty() {
            let end = self.closed.get(1).copied().unwrap_or(self.current_first);
            // Records of closed[0] are [closed[0], end).
            if end > oldest_needed {
                break;
            }
            let path = segment_path(&self.dir, self.closed[0]);
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.closed.remove(0);
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The seq of the oldest record still on disk (or the next one, when none is).
    pub fn oldest_seq(&self) -> u64 {
        self.closed.first().copied().unwrap_or(self.current_first)
    }

    /// The number of segment files on disk, including the current one.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

fn create_segment(dir: &Path, first: u64) -> Result<(File, u64), WalError> {
    let path = segment_path(dir, first);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(MAGIC).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    // Make the new file's directory entry durable too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok((f, MAGIC.len() as u64))
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

struct SegmentRead {
    records: Vec<Record>,
    /// Where a torn tail starts, when there is one to cut off.
    torn_at: Option<u64>,
}

fn read_segment(path: &Path, is_last: bool) -> Result<SegmentRead, WalError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let corrupt = |offset: usize, problem: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        problem,
    };
    if data.len() < MAGIC.len() {
        // A segment created by a crash before its magic was written.
        return if is_last {
            Ok(SegmentRead {
                records: vec![],
                torn_at: Some(0),
            })
        } else {
            Err(corrupt(0, "shorter than the segment header".into()))
        };
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not an Imprint WAL segment (bad magic)".into()));
    }
    let mut records = Vec::new();
    let mut off = MAGIC.len();
    while off < data.len() {
        match decode_record(&data[off..]) {
            Ok((seq, payload, used)) => {
                records.push(Record {
                    seq,
                    payload: payload.to_vec(),
                });
                off += used;
            }
            Err(problem) => {
                // Torn: the bad record reaches the end of the file, or only zeros
                // follow it (a file extended by the crash but never written).
                let rest = &data[off..];
                let reaches_end =
                    problem.truncated || rest.iter().skip(problem.record_len).all(|&b| b == 0);
                if is_last && reaches_end {
                    return Ok(SegmentRead {
                        records,
                        torn_at: Some(off as u64),
                    });
                }
                return Err(corrupt(off, problem.what));
            }
        }
    }
    Ok(SegmentRead {
        records,
        torn_at: None,
    })
}

struct BadRecord {
    what: String,
    /// The record runs past the end of the file.
    truncated: bool,
    /// Its length as its header claims (0 when unknown).
    record_len: usize,
}

fn decode_record(buf: &[u8]) -> Result<(u64, &[u8], usize), BadRecord> {
    if buf.len() < HEADER {
        return Err(BadRecord {
            what: "incomplete record header".into(),
            truncated: true,
            record_len: 0,
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(BadRecord {
            what: format!("record length {len} is impossible"),
            truncated: false,
            record_len: 0,
        });
    }
    if buf.len() < HEADER + len {
        return Err(BadRecord {
            what: "record runs past the end of the file".into(),
            truncated: true,
            record_len: HEADER + len,
        });
    }
    let payload = &buf[HEADER..HEADER + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    if h.finalize() != crc {
        return Err(BadRecord {
            what: format!("checksum mismatch in record seq {seq}"),
            truncated: false,
            record_len: HEADER + len,
        });
    }
    Ok((seq, payload, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Wal, Vec<Record>) {
        Wal::open(dir, 1 << 20).unwrap()
    }

    #[test]
    fn records_come_back_in_order_across_reopen_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, r) = open(d.path());
        assert!(r.is_empty());
        assert_eq!(w.append(&[b"a", b"bb"]).unwrap(), 1);
        w.rotate().unwrap();
        assert_eq!(w.append(&[b"ccc"]).unwrap(), 3);
        drop(w);
        let (w, r) = open(d.path());
        assert_eq!(
            r.iter()
                .map(|r| (r.seq, r.payload.clone()))
                .collect::<Vec<_>>(),
            vec![
                (1, b"a".to_vec()),
                (2, b"bb".to_vec()),
                (3, b"ccc".to_vec())
            ]
        );
        assert_eq!(w.next_seq(), 4);
    }

    #[test]
    fn dropping_segments_keeps_what_is_needed() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path());
        w.append(&[b"1", b"2"]).unwrap();
        w.rotate().unwrap();
        w.append(&[b"3"]).unwrap();
        w.rotate().unwrap();
        assert_eq!(w.drop_segments_before(3).unwrap(), 1);
        drop(w);
        let (_, r) = open(d.path());
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }

    fn last_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path());
        w.append(&[b"kept"]).unwrap();
        w.append(&[b"torn-record"]).unwrap();
        drop(w);
        let seg = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut w, r) = open(d.path());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].payload, b"kept");
        // The seq of the lost record is used again: it was never acknowledged.
        assert_eq!(w.append(&[b"next"]).unwrap(), 2);
    }

    #[test]
    fn a_zero_filled_tail_is_torn_not_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path());
        w.append(&[b"kept"]).unwrap();
        drop(w);
        let seg = last_segment(d.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        let (_, r) = open(d.path());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn corruption_before_the_tail_names_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path());
        w.append(&[b"first", b"second"]).unwrap();
        drop(w);
        let seg = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        let mut data = fs::read(&seg).unwrap();
        // Flip a byte in the first record's payload.
        data[8 + HEADER] ^= 0xff;
        fs::write(&seg, &data).unwrap();
        let err = Wal::open(d.path(), 1 << 20).unwrap_err().to_string();
        assert!(err.contains(&seg.display().to_string()), "{err}");
        assert!(err.contains("byte offset 8"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
