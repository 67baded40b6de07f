//! Profile policies: once an image is done learning, an item outside its baseline,
//! in a category whose confidence is at or above a policy's minimum, is an
//! anomaly. [`Policy`] is what an admin stores; [`evaluate::Evaluator`] checks
//! every fingerprint as it is ingested against the live profiles (no SQL per
//! batch); [`tables`] serves `policies`. Rules and examples: `docs/policies.md`.

pub mod evaluate;
pub mod tables;

use serde::{Deserialize, Serialize};

use crate::profile::{Category, ConfidenceLevel};

/// How serious an anomaly of a policy is (informational: it is copied to every
/// anomaly, for routing alerts).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The default throttle: one anomaly per policy × container × item per 5 minutes.
pub const DEFAULT_THROTTLE_SECONDS: u64 = 300;
/// The longest throttle accepted (a day).
pub const MAX_THROTTLE_SECONDS: u64 = 86_400;

/// One stored policy (the catalog keeps them by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Unique; 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Which images: a digest (`sha256:…`, exactly that image) or a glob over
    /// image names (`*` any run of characters, `?` one; `*` alone is every image).
    pub scope: String,
    /// The categories it alerts in (at least one).
    pub categories: Vec<Category>,
    /// A category's confidence must be at least this for its deviations to count.
    pub min_confidence: ConfidenceLevel,
    pub severity: Severity,
    pub enabled: bool,
    /// At most one anomaly per container × item in this many seconds (of window time).
    pub throttle_seconds: u64,
    pub created_micros: i64,
}

impl Policy {
    /// Checks every field; the error names the field and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "name {n:?}: 1 to 64 characters of letters, digits, '.', '_' or '-'"
            ));
        }
        let s = &self.scope;
        if s.is_empty() || s.len() > 512 || s.chars().any(char::is_control) {
            return Err(format!(
                "scope {s:?}: a digest (sha256:<64 hex>) or an image-name glob such as \
                 'registry.example/api:*' (1 to 512 printable characters)"
            ));
        }
        if s.starts_with("sha256:") && !imprint_proto::digest::is_lower_hex64(&s[7..]) {
            return Err(format!(
                "scope {s:?}: a digest scope is sha256: and 64 lowercase hex digits"
            ));
        }
        if self.categories.is_empty() {
            return Err("categories: at least one of network, processes, files, syscalls".into());
        }
        if self.throttle_seconds == 0 || self.throttle_seconds > MAX_THROTTLE_SECONDS {
            return Err(format!(
                "throttle {} s: between 1 s and {} s (a day)",
                self.throttle_seconds, MAX_THROTTLE_SECONDS
            ));
        }
        Ok(())
    }

    /// Whether the policy covers an image (its digest and current name).
    pub fn covers(&self, image: &str, image_name: &str) -> bool {
        if self.scope.starts_with("sha256:") {
            self.scope == image
        } else {
            glob_matches(&self.scope, image_name)
        }
    }

    pub fn watches(&self, category: Category) -> bool {
        self.categories.contains(&category)
    }
}

/// `*` matches any run of characters (also none), `?` exactly one; all else is
/// literal. Iterative with one backtrack point: linear for practical patterns.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// One anomaly: an item of a fingerprint outside its done-learning image's
/// baseline, in a category a policy watches with enough confidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Start and end of the fingerprint's window (µs).
    pub time: i64,
    pub window_end: i64,
    pub node: String,
    pub container_id: String,
    pub image: String,
    pub image_name: String,
    pub kind: String,
    pub key: String,
    /// How often the item happened in the window.
    pub count: u64,
    pub policy: String,
    pub severity: Severity,
    /// The category's confidence when the anomaly was found.
    pub confidence: ConfidenceLevel,
    pub confidence_score: f64,
}

impl Anomaly {
    /// A stable id (hex of a SHA-256 over what identifies it), so a receiver can
    /// drop a delivery it already has (webhooks are at least once).
    pub fn id(&self) -> String {
        use std::fmt::Write;
        let text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}",
            self.policy, self.image, self.container_id, self.kind, self.key, self.time
        );
        // FNV-1a twice with different bases: 128 bits, no crypto crate needed here.
        let mut out = String::with_capacity(32);
        for basis in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142] {
            let mut h = basis;
            for b in text.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            let _ = write!(out, "{h:016x}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            name: "p".into(),
            scope: "*".into(),
            categories: vec![Category::Processes],
            min_confidence: ConfidenceLevel::Medium,
            severity: Severity::High,
            enabled: true,
            throttle_seconds: DEFAULT_THROTTLE_SECONDS,
            created_micros: 0,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*", "registry.example/api:1"));
        assert!(glob_matches(
            "registry.example/api:*",
            "registry.example/api:1"
        ));
        assert!(!glob_matches(
            "registry.example/api:*",
            "registry.example/web:1"
        ));
        assert!(glob_matches("*/api:?", "r/api:1"));
        assert!(!glob_matches("*/api:?", "r/api:12"));
        assert!(glob_matches("a*b*c", "aXXbYYbc"));
        assert!(!glob_matches("a*b*c", "aXXbYYbd"));
        assert!(glob_matches("api", "api"));
        assert!(!glob_matches("api", "api2"));
    }

    #[test]
    fn scope_by_digest_or_name() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut p = policy();
        p.scope = digest.clone();
        assert!(p.covers(&digest, "whatever"));
        assert!(!p.covers(&format!("sha256:{}", "b".repeat(64)), "whatever"));
        p.scope = "web:*".into();
        assert!(p.covers(&digest, "web:2"));
        assert!(!p.covers(&digest, "api:2"));
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(policy().validate(), Ok(()));
        let bad = |f: fn(&mut Policy), field: &str| {
            let mut p = policy();
            f(&mut p);
            let e = p.validate().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        };
        bad(|p| p.name = "has space".into(), "name");
        bad(|p| p.name = String::new(), "name");
        bad(|p| p.scope = String::new(), "scope");
        bad(|p| p.scope = "sha256:xyz".into(), "scope");
        bad(|p| p.categories.clear(), "categories");
        bad(|p| p.throttle_seconds = 0, "throttle");
    }

    #[test]
    fn anomaly_ids_are_stable_and_distinct() {
        let a = Anomaly {
            time: 1,
            window_end: 2,
            node: "n".into(),
            container_id: "c".into(),
            image: "i".into(),
            image_name: "x".into(),
            kind: "process".into(),
            key: "/bin/sh".into(),
            count: 1,
            policy: "p".into(),
            severity: Severity::High,
            confidence: ConfidenceLevel::High,
            confidence_score: 1.0,
        };
        let mut b = a.clone();
        b.time = 3;
        assert_eq!(a.id(), a.clone().id());
        assert_eq!(a.id().len(), 32);
        assert_ne!(a.id(), b.id());
    }
}
