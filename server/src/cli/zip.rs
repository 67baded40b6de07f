//! Just enough of ZIP to read OSV archives (`all.zip` of an ecosystem from
//! osv.dev): the central directory, stored and deflated members. ZIP64 and
//! encrypted members are refused with a clear error.

use std::io::Read;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every member whose name ends with `suffix`, as (name, contents).
pub fn members(archive: &[u8], suffix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
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
        let local = u32_at(archive, at + 42).ok_or_else(bad)? as usize;
        let name =
            String::from_utf8_lossy(archive.get(at + 46..at + 46 + name_len).ok_or_else(bad)?)
                .into_owned();
        at += 46 + name_len + extra_len + comment_len;
        if !name.ends_with(suffix) {
            continue;
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
                let mut buf = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(data)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("{name}: {e}"))?;
                buf
            }
            m => return Err(format!("{name}: compression method {m} is not supported")),
        };
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
}
