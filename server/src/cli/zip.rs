//! Just enough of ZIP to read OSV archives (`all.zip` of an ecosystem from
//! osv.dev): the central directory, stored and deflated members. ZIP64 and
//! encrypted members are refused with a clear error.
//!
//! An archive is input from anywhere, so it is bounded: each member inflates to at most
//! [`MAX_MEMBER_BYTES`] and all of them to [`MAX_TOTAL_BYTES`] (a zip bomb stops there, with
//! its name), symlink members and names that climb out (`..`, absolute) are refused. Nothing
//! is written to disk: names are only labels.

use std::io::Read;

/// Largest inflated member (an OSV advisory is a few KiB).
pub const MAX_MEMBER_BYTES: usize = 16 << 20;
/// Largest inflated total (osv.dev's biggest ecosystem archive inflates to a few hundred MiB).
pub const MAX_TOTAL_BYTES: usize = 2 << 30;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every member whose name ends with `suffix`, as (name, contents).
pub fn members(archive: &[u8], suffix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    members_within(archive, suffix, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES)
}

fn members_within(
    archive: &[u8],
    suffix: &str,
    max_member: usize,
    max_total: usize,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut total = 0usize;
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    // The end-of-central-directory record is within the last 64 KiB + 22 bytes.
    let from = archive.len().saturating_sub(22 + 65_535);
    let eocd = (from..archive.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(archive, i) == Some(EOCD))
        .ok_or("not a ZIP archive (no end of central directory)")?;
    let entries = u16_at(archive, eocd + 10).ok_or("truncated ZIP")? as usize;
    let mut at = u32_at(archive, eocd + 16).ok_or("truncated ZIP")? as usize;
    if entries == 0xffff || at == 0xffff_ffff_usize {
        return Err("ZIP64 archives are not supported: unzip it and import the directory".into());
    }
    let mut out = Vec::new();
    for n in 0..entries {
        let bad = || format!("ZIP central directory entry {n} is damaged");
        if u32_at(archive, at) != Some(CENTRAL) {
            return Err(bad());
        }
        let flags = u16_at(archive, at + 8).ok_or_else(bad)?;
        let method = u16_at(archive, at + 10).ok_or_else(bad)?;
        let compressed = u32_at(archive, at + 20).ok_or_else(bad)? as usize;
        let size = u32_at(archive, at + 24).ok_or_else(bad)? as usize;
        let name_len = u16_at(archive, at + 28).ok_or_else(bad)? as usize;
        let extra_len = u16_at(archive, at + 30).ok_or_else(bad)? as usize;
        let comment_len = u16_at(archive, at + 32).ok_or_else(bad)? as usize;
        let unix_mode = u32_at(archive, at + 38).ok_or_else(bad)? >> 16;
        let local = u32_at(archive, at + 42).ok_or_else(bad)? as usize;
        let name =
            String::from_utf8_lossy(archive.get(at + 46..at + 46 + name_len).ok_or_else(bad)?)
                .into_owned();
        at += 46 + name_len + extra_len + comment_len;
        if !name.ends_with(suffix) {
            continue;
        }
        if unix_mode & 0o170_000 == 0o120_000 {
            return Err(format!("{name}: a symlink member; not imported"));
        }
        if name.starts_with('/') || name.split(['/', '\\']).any(|part| part == "..") {
            return Err(format!(
                "{name}: a member name that climbs out of the archive"
            ));
        }
        if size > max_member {
            return Err(format!(
                "{name}: says it inflates to {size} bytes, over the limit of {max_member}"
            ));
        }
        if flags & 1 != 0 {
            return Err(format!("{name}: encrypted ZIP members are not supported"));
        }
        if u32_at(archive, local) != Some(LOCAL) {
            return Err(format!("{name}: local header missing"));
        }
        let data_at = local
            + 30
            + u16_at(archive, local + 26).ok_or_else(bad)? as usize
            + u16_at(archive, local + 28).ok_or_else(bad)? as usize;
        let data = archive
            .get(data_at..data_at + compressed)
            .ok_or_else(|| format!("{name}: truncated"))?;
        let contents = match method {
            0 => data.to_vec(),
            8 => {
                // The declared size can lie: read at most one byte past the limit.
                let mut buf = Vec::with_capacity(size.min(max_member));
                flate2::read::DeflateDecoder::new(data)
                    .take(max_member as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("{name}: {e}"))?;
                if buf.len() > max_member {
                    return Err(format!(
                        "{name}: inflates past the limit of {max_member} bytes (a zip bomb?)"
                    ));
                }
                buf
            }
            m => return Err(format!("{name}: compression method {m} is not supported")),
        };
        total += contents.len();
        if total > max_total {
            return Err(format!(
                "the archive inflates past the limit of {max_total} bytes at {name} (a zip bomb?)"
            ));
        }
        out.push((name, contents));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-member archive written by Python's zipfile (one stored, one deflated).
    const ARCHIVE: &[u8] = include_bytes!("testdata/osv.zip");

    #[test]
    fn stored_and_deflated_members_are_read() {
        let m = members(ARCHIVE, ".json").unwrap();
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["a/PYSEC-1.json", "b/PYSEC-2.json"]);
        assert!(String::from_utf8_lossy(&m[1].1).contains("\"PYSEC-2\""));
        assert!(members(b"not a zip at all, not even close..", ".json").is_err());
    }

    /// One member per entry, written like Python's zipfile: (name, unix mode, deflated data).
    fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, mode, contents) in entries {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(contents).unwrap();
            let data = enc.finish().unwrap();
            let local = out.len() as u32;
            let header = |sig: u32, central: bool| {
                let mut h = sig.to_le_bytes().to_vec();
                if central {
                    h.extend(20u16.to_le_bytes()); // made by
                }
                h.extend(20u16.to_le_bytes()); // needed
                h.extend(0u16.to_le_bytes()); // flags
                h.extend(8u16.to_le_bytes()); // deflate
                h.extend([0u8; 8]); // time, date, crc
                h.extend((data.len() as u32).to_le_bytes());
                h.extend((contents.len() as u32).to_le_bytes());
                h.extend((name.len() as u16).to_le_bytes());
                h.extend(0u16.to_le_bytes()); // extra
                if central {
                    h.extend([0u8; 6]); // comment, disk, internal attributes
                    h.extend((mode << 16).to_le_bytes());
                    h.extend(local.to_le_bytes());
                }
                h.extend(name.as_bytes());
                h
            };
            central.extend(header(0x0201_4b50, true));
            out.extend(header(0x0403_4b50, false));
            out.extend(&data);
        }
        let at = out.len() as u32;
        let n = entries.len() as u16;
        out.extend(&central);
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0u8; 4]);
        out.extend(n.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend(at.to_le_bytes());
        out.extend([0u8; 2]);
        out
    }

    #[test]
    fn bombs_symlinks_and_climbing_names_are_refused() {
        let ok = archive(&[("a/X-1.json", 0o100_644, b"{}")]);
        assert_eq!(members(&ok, ".json").unwrap().len(), 1);
        // 64 MiB of zeros deflate to about 64 KiB; it says it is small.
        let zeros = vec![0u8; 64 << 20];
        let mut bomb = archive(&[("bomb.json", 0o100_644, &zeros)]);
        let e = members(&bomb, ".json").unwrap_err();
        assert!(e.contains("over the limit"), "{e}");
        // Lying about its size does not help: inflating stops at the limit.
        let size_at = bomb.len() - 22 - (46 + "bomb.json".len()) + 24;
        bomb[size_at..size_at + 4].copy_from_slice(&2u32.to_le_bytes());
        let e = members(&bomb, ".json").unwrap_err();
        assert!(e.contains("zip bomb"), "{e}");
        // Many members under the member limit, over the total.
        let each = vec![b' '; 1000];
        let many = archive(&[("1.json", 0o100_644, &each), ("2.json", 0o100_644, &each)]);
        let e = members_within(&many, ".json", 1500, 1500).unwrap_err();
        assert!(e.contains("the archive inflates past"), "{e}");
        let link = archive(&[("l.json", 0o120_777, b"/etc/shadow")]);
        assert!(members(&link, ".json").unwrap_err().contains("symlink"));
        let climb = archive(&[("../../x.json", 0o100_644, b"{}")]);
        assert!(members(&climb, ".json").unwrap_err().contains("climbs out"));
    }
}
