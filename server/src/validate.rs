//! Validation of incoming batches. A batch is refused whole on the first problem,
//! with a message that names the field path, e.g.
//! `fingerprints[3].items[7].key: port "70000" is not a number from 0 to 65535`.
//! The one exception is an item key over [`MAX_KEY_BYTES`]: containers choose their paths,
//! so such an item is dropped and counted ([`drop_oversized_keys`]) and the batch goes on.

use std::collections::HashSet;

use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, ItemKind};

/// Largest encoded batch accepted.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Largest item key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest window.
pub const MAX_WINDOW_MICROS: i64 = 3_600_000_000;
/// How far in the future a window may end (clock skew between nodes).
pub const MAX_FUTURE_MICROS: i64 = 300_000_000;

const MAX_AGENT_ID: usize = 256;
const MAX_NODE: usize = 253;
const MAX_CONTAINER_ID: usize = 256;
const MAX_IMAGE_NAME: usize = 1024;

/// A validation failure: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Checks a batch whose encoded size is `encoded_len`, against the clock `now_micros`;
/// windows starting before `oldest_start_micros` are refused (`--max-window-age`).
pub fn validate_batch(
    b: &FingerprintBatch,
    encoded_len: usize,
    now_micros: i64,
    oldest_start_micros: i64,
) -> Result<(), Invalid> {
    if encoded_len > MAX_BATCH_BYTES {
        return Err(invalid(
            "batch",
            format!(
                "{encoded_len} bytes is over the limit of {MAX_BATCH_BYTES} bytes (16 MiB): send smaller batches"
            ),
        ));
    }
    check_agent_id(&b.agent_id).map_err(|p| invalid("agent_id", p))?;
    if b.fingerprints.is_empty() {
        return Err(invalid(
            "fingerprints",
            "a batch needs at least one fingerprint",
        ));
    }
    let mut seen = HashSet::new();
    for (i, fp) in b.fingerprints.iter().enumerate() {
        validate_fingerprint(fp, i, (oldest_start_micros, now_micros), &mut seen)?;
    }
    Ok(())
}

/// An agent id: 1 to 256 bytes of printable ASCII without spaces.
pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > MAX_AGENT_ID {
        return Err(format!(
            "{} bytes is over the limit of {MAX_AGENT_ID} bytes",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    if !id.bytes().all(|c| c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn validate_fingerprint<'a>(
    fp: &'a Fingerprint,
    i: usize,
    (oldest_start_micros, now_micros): (i64, i64),
    seen: &mut HashSet<(i32, &'a str)>,
) -> Result<(), Invalid> {
    let at = |field: &str| format!("fingerprints[{i}].{field}");
    check_text(&at("node"), &fp.node, MAX_NODE, true)?;
    check_text(
        &at("container_id"),
        &fp.container_id,
        MAX_CONTAINER_ID,
        true,
    )?;
    check_text(&at("image_name"), &fp.image_name, MAX_IMAGE_NAME, false)?;
    imprint_proto::digest::check_digest(&fp.image).map_err(|p| invalid(at("image"), p))?;

    let (start, end) = (fp.window_start_unix_micros, fp.window_end_unix_micros);
    if end <= start {
        return Err(invalid(
            at("window_end_unix_micros"),
            format!("window end {end} is not after its start {start}"),
        ));
    }
    if end - start > MAX_WINDOW_MICROS {
        return Err(invalid(
            at("window_end_unix_micros"),
            format!(
                "window of {} s is longer than the limit of 1 h",
                (end - start) / 1_000_000
            ),
        ));
    }
    if end > now_micros.saturating_add(MAX_FUTURE_MICROS) {
        return Err(invalid(
            at("window_end_unix_micros"),
            format!(
                "window ends {} s in the future; at most 5 min is allowed (check the node's clock)",
                (end - now_micros) / 1_000_000
            ),
        ));
    }

    if start < oldest_start_micros {
        return Err(invalid(
            at("window_start_unix_micros"),
            format!(
                "window started {} h ago; windows older than the server's --max-window-age ({} h) are refused (check the node's clock)",
                now_micros.saturating_sub(start) / 3_600_000_000,
                now_micros.saturating_sub(oldest_start_micros) / 3_600_000_000
            ),
        ));
    }

    seen.clear();
    for (j, item) in fp.items.iter().enumerate() {
        let at = |field: &str| format!("fingerprints[{i}].items[{j}].{field}");
        let kind = match ItemKind::try_from(item.kind) {
            Ok(ItemKind::Unspecified) | Err(_) => {
                return Err(invalid(
                    at("kind"),
                    format!(
                        "unknown item kind {} (valid: 1 to {})",
                        item.kind,
                        ItemKind::ALL.len()
                    ),
                ));
            }
            Ok(k) => k,
        };
        let key = item.key.as_str();
        if key.is_empty() {
            return Err(invalid(at("key"), "is empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            // drop_oversized_keys runs first; reaching this is a bug in the caller.
            return Err(invalid(
                at("key"),
                format!(
                    "{} bytes is over the limit of {MAX_KEY_BYTES} bytes",
                    key.len()
                ),
            ));
        }
        if key.contains('\0') {
            return Err(invalid(at("key"), "contains a NUL byte"));
        }
        if kind.is_port() && !is_port(key) {
            return Err(invalid(
                at("key"),
                format!("port {key:?} is not a number from 0 to 65535 (decimal, no leading zeros)"),
            ));
        }
        if !seen.insert((item.kind, key)) {
            return Err(invalid(
                at("key"),
                format!(
                    "{} {key:?} appears twice in one fingerprint",
                    kind.sql_name()
                ),
            ));
        }
    }
    Ok(())
}

/// Removes the items whose key is longer than [`MAX_KEY_BYTES`] and counts each in its
/// fingerprint's `completeness.dropped_events`; returns how many it removed.
///
/// A container chooses its file paths, so one absurd path must not make the server refuse
/// the node's whole batch (every other container's window with it): the item is dropped and
/// the window says it is incomplete.
pub fn drop_oversized_keys(b: &mut FingerprintBatch) -> usize {
    let mut dropped = 0;
    for fp in &mut b.fingerprints {
        let before = fp.items.len();
        fp.items.retain(|i| i.key.len() <= MAX_KEY_BYTES);
        let n = before - fp.items.len();
        if n > 0 {
            let c = fp.completeness.get_or_insert_with(Default::default);
            c.dropped_events = c.dropped_events.saturating_add(n as u64);
            dropped += n;
        }
    }
    dropped
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Invalid> {
    if required && value.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes is over the limit of {max} bytes", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn is_port(key: &str) -> bool {
    key.len() <= 5
        && key.bytes().all(|c| c.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'))
        && key.parse::<u32>().is_ok_and(|p| p <= 65535)
}

#[cfg(test)]
mod tests {
    use imprint_proto::ingest_v1::Item;

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;
    /// A week before NOW, the default --max-window-age.
    const OLDEST: i64 = NOW - 7 * 24 * 3_600_000_000;

    fn good() -> FingerprintBatch {
        FingerprintBatch {
            agent_id: "node-1".into(),
            seq: 1,
            fingerprints: vec![Fingerprint {
                node: "node-1".into(),
                container_id: "c1".into(),
                image: format!("sha256:{}", "ab".repeat(32)),
                image_name: "nginx:1".into(),
                window_start_unix_micros: NOW - 30_000_000,
                window_end_unix_micros: NOW,
                items: vec![
                    Item {
                        kind: ItemKind::Process as i32,
                        key: "/usr/sbin/nginx".into(),
                        count: 1,
                    },
                    Item {
                        kind: ItemKind::TcpIn as i32,
                        key: "8080".into(),
                        count: 3,
                    },
                ],
                completeness: None,
            }],
        }
    }

    fn err(f: impl FnOnce(&mut FingerprintBatch)) -> String {
        let mut b = good();
        f(&mut b);
        validate_batch(&b, 100, NOW, OLDEST)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_batch_passes() {
        validate_batch(&good(), 100, NOW, OLDEST).unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        assert!(
            err(|b| b.fingerprints[0].image = "sha256:xyz".into())
                .starts_with("fingerprints[0].image:")
        );
        assert!(err(|b| b.fingerprints[0].image = "latest".into()).contains("not an image digest"));
        assert!(
            err(|b| b.fingerprints[0].items[1].kind = 99)
                .starts_with("fingerprints[0].items[1].kind: unknown item kind 99")
        );
        assert!(err(|b| b.fingerprints[0].items[0].kind = 0).contains("unknown item kind 0"));
        assert!(
            err(|b| b.fingerprints[0].items[0].key = String::new())
                .starts_with("fingerprints[0].items[0].key: is empty")
        );
        let mut long = good();
        long.fingerprints[0].items[0].key = "x".repeat(4097);
        assert_eq!(drop_oversized_keys(&mut long), 1);
        assert_eq!(long.fingerprints[0].items.len(), 1);
        assert_eq!(
            long.fingerprints[0]
                .completeness
                .as_ref()
                .map(|c| c.dropped_events),
            Some(1)
        );
        assert!(validate_batch(&long, 0, NOW, OLDEST).is_ok());
        for bad in ["65536", "-1", "08", "http", ""] {
            let e = err(|b| b.fingerprints[0].items[1].key = bad.into());
            assert!(e.starts_with("fingerprints[0].items[1].key:"), "{bad}: {e}");
        }
        assert!(
            err(|b| b.fingerprints[0].window_end_unix_micros = NOW - 30_000_000)
                .contains("is not after its start")
        );
        assert!(
            err(|b| b.fingerprints[0].window_start_unix_micros = NOW - 3_600_000_001)
                .contains("longer than the limit of 1 h")
        );
        assert!(
            err(|b| {
                b.fingerprints[0].window_start_unix_micros = NOW + 301_000_000;
                b.fingerprints[0].window_end_unix_micros = NOW + 302_000_000;
            })
            .contains("in the future")
        );
        let e = err(|b| {
            b.fingerprints[0].window_start_unix_micros = OLDEST - 1;
            b.fingerprints[0].window_end_unix_micros = OLDEST + 30_000_000;
        });
        assert!(
            e.starts_with("fingerprints[0].window_start_unix_micros: window started 168 h ago")
                && e.contains("--max-window-age (168 h)"),
            "{e}"
        );
        assert!(err(|b| b.fingerprints.clear()).starts_with("fingerprints: "));
        assert!(err(|b| b.agent_id = String::new()).starts_with("agent_id: is empty"));
        assert!(
            err(|b| b.fingerprints[0].node = String::new()).starts_with("fingerprints[0].node")
        );
        assert!(
            err(|b| {
                let dup = b.fingerprints[0].items[0].clone();
                b.fingerprints[0].items.push(dup);
            })
            .contains("appears twice")
        );
        let mut b = good();
        assert!(
            validate_batch(&b, MAX_BATCH_BYTES + 1, NOW, OLDEST)
                .unwrap_err()
                .to_string()
                .starts_with("batch:")
        );
        b.fingerprints[0].items[1].key = "65535".into();
        validate_batch(&b, 100, NOW, OLDEST).unwrap();
        b.fingerprints[0].items[1].key = "0".into();
        validate_batch(&b, 100, NOW, OLDEST).unwrap();
    }
}
