//! Version ordering of the two ecosystems Imprint matches advisories in itself:
//! Debian (dpkg's algorithm, Debian Policy §5.6.12) and Python (PEP 440).

use std::cmp::Ordering;

/// Which ordering a package's versions follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Dpkg,
    Pep440,
}

impl Scheme {
    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Scheme::Dpkg => Some(dpkg_compare(a, b)),
            Scheme::Pep440 => Some(Pep440::parse(a)?.cmp(&Pep440::parse(b)?)),
        }
    }
}

/// dpkg's comparison of `[epoch:]upstream[-revision]`.
pub fn dpkg_compare(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let v = v.trim();
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
                (e.parse().unwrap_or(0), r)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u.to_string(), r.to_string()),
            None => (epoch, rest.to_string(), String::new()),
        }
    };
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| verrevcmp(ra.as_bytes(), rb.as_bytes()))
}

/// Character weight: `~` before everything (even the end), letters before other
/// characters.
fn order(c: Option<&u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
        Some(c) => i32::from(*c) + 256,
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(a.get(i)), order(b.get(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A PEP 440 version, normalised; `Ord` is PEP 440's ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pep440 {
    epoch: u64,
    /// Release numbers without trailing zeros (1.0 == 1.0.0).
    release: Vec<u64>,
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<LocalPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LocalPart {
    // Alphanumeric segments sort before numeric ones.
    Text(String),
    Number(u64),
}

/// What PEP 440 orders by: epoch, release, pre, post, dev, local.
type SortKey<'a> = (
    u64,
    &'a [u64],
    Bound<(u8, u64)>,
    Bound<u64>,
    Bound<u64>,
    &'a [LocalPart],
);

/// Sort position of the pre/post/dev parts: absent parts sort at one end.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bound<T> {
    Lowest,
    Value(T),
    Highest,
}

impl Pep440 {
    /// Parses a version as pip does (case-insensitive, `-`/`_`/`.` separators,
    /// alternative spellings such as `alpha`, `preview`, `rev`, a leading `v`).
    pub fn parse(text: &str) -> Option<Self> {
        let s = text.trim().to_ascii_lowercase();
        let s = s.strip_prefix('v').unwrap_or(&s);
        let (s, local) = match s.split_once('+') {
            Some((v, l)) => (v, Some(l)),
            None => (s, None),
        };
        let (epoch, s) = match s.split_once('!') {
            Some((e, r)) => (e.parse().ok()?, r),
            None => (0, s),
        };
        let mut rest = s;
        let mut release = Vec::new();
        loop {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            release.push(rest[..digits].parse().ok()?);
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        while release.len() > 1 && release.last() == Some(&0) {
            release.pop();
        }
        let (mut pre, mut post, mut dev) = (None, None, None);
        while !rest.is_empty() {
            rest = rest.trim_start_matches(['.', '-', '_']);
            let word = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (tag, after) = rest.split_at(word);
            let after = after.trim_start_matches(['.', '-', '_']);
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = if digits == 0 {
                0
            } else {
                after[..digits].parse().ok()?
            };
            rest = &after[digits..];
            match tag {
                "a" | "alpha" => pre = Some((0, n)),
                "b" | "beta" => pre = Some((1, n)),
                "c" | "rc" | "pre" | "preview" => pre = Some((2, n)),
                "post" | "rev" | "r" => post = Some(n),
                "dev" => dev = Some(n),
                // `1.0-1`: an implicit post-release.
                "" if digits > 0 => post = Some(n),
                _ => return None,
            }
        }
        let local = local
            .map(|l| {
                l.split(['.', '-', '_'])
                    .map(|p| match p.parse() {
                        Ok(n) => LocalPart::Number(n),
                        Err(_) => LocalPart::Text(p.to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    fn key(&self) -> SortKey<'_> {
        let pre = match (self.pre, self.post, self.dev) {
            // 1.0.dev1 sorts before 1.0a1.
            (None, None, Some(_)) => Bound::Lowest,
            (None, _, _) => Bound::Highest,
            (Some(p), _, _) => Bound::Value(p),
        };
        let post = self.post.map_or(Bound::Lowest, Bound::Value);
        let dev = self.dev.map_or(Bound::Highest, Bound::Value);
        (self.epoch, &self.release, pre, post, dev, &self.local)
    }
}

impl PartialOrd for Pep440 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pep440 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_orders_as_dpkg_does() {
        // Each pair checked with `dpkg --compare-versions`.
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1:0.9", "2.0", Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ("1.2.3a", "1.2.3", Greater),
            ("1.2.3+b1", "1.2.3", Greater),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", Less),
            ("1.0-1", "1.0", Greater),
            ("0", "0~", Greater),
            ("1.10", "1.9", Greater),
            ("3.0.11-1~deb12u2", "3.0.11-1", Less),
        ] {
            assert_eq!(dpkg_compare(a, b), o, "{a} vs {b}");
            assert_eq!(dpkg_compare(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn pep440_orders_as_pip_does() {
        let v = |s: &str| Pep440::parse(s).unwrap_or_else(|| panic!("{s} parses"));
        let ordered = [
            "1.0.dev1",
            "1.0a1",
            "1.0a2.dev1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+local.1",
            "1.0.post1.dev1",
            "1.0.post1",
            "1.1",
            "2.19.0",
            "2.20.0",
            "1!0.1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(v(w[0]).cmp(&v(w[1])), Less, "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0.0"), v("1"));
        assert_eq!(v("1.0-1"), v("1.0.post1"));
        assert_eq!(v("1.0ALPHA2"), v("1.0a2"));
        assert_eq!(v("v2.0"), v("2.0"));
        assert_eq!(v("1.0-rc.3"), v("1.0rc3"));
        assert!(Pep440::parse("banana").is_none());
        assert!(Pep440::parse("1.0.x").is_none());
    }
}
