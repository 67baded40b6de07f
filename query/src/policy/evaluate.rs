//! Policy evaluation at ingest: the baseline index and the throttle.
//!
//! The baseline index is the live profile itself: its items, keyed by (kind,
//! key), hold `first_seen`, and an image's baseline is what was first seen before
//! it was done learning. The writer adds each fingerprint to its profile with
//! [`ImageProfile::apply_watching`], which already looks every item up and so
//! reports the ones outside the baseline at no extra cost — no second index to
//! keep in step, no SQL per batch. What this module caches per image is which
//! enabled policies cover it and its learning period (recomputed when policies,
//! settings, learning periods or resets change, or the image is renamed), and
//! per category its confidence (recomputed at most once per new fingerprint of
//! the image, only when a candidate anomaly needs it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use futures::TryStreamExt;
use object_store::ObjectStore;

use imprint_proto::ingest_v1::{Fingerprint, ItemKind};

use super::{Anomaly, Policy};
use crate::catalog::CatalogState;
use crate::profile::tables::image_learning_period_micros;
use crate::profile::{Category, Confidence, ImageProfile, confidence};
use crate::schema::StoredTable;
use crate::settings::LEARNING_PERIOD;
use crate::store::{CommittedFiles, default_session_config, new_session};

/// What the per-image cache depends on, to see when it must be rebuilt.
#[derive(Debug, Default, PartialEq)]
struct Basis {
    policies: BTreeMap<String, Policy>,
    learning_period: Option<String>,
    learning_periods: BTreeMap<String, String>,
    resets: BTreeMap<String, i64>,
}

impl Basis {
    fn of(state: &CatalogState) -> Self {
        Self {
            policies: state.policies.clone(),
            learning_period: state.settings.get(LEARNING_PERIOD).cloned(),
            learning_periods: state.learning_periods.clone(),
            resets: state.profile_resets.clone(),
        }
    }

    fn matches(&self, state: &CatalogState) -> bool {
        self.policies == state.policies
            && self.learning_period.as_ref() == state.settings.get(LEARNING_PERIOD)
            && self.learning_periods == state.learning_periods
            && self.resets == state.profile_resets
    }
}

/// One image as the evaluator sees it.
#[derive(Debug)]
struct Watched {
    image_name: String,
    /// Indices into [`Evaluator::policies`] of the enabled policies covering it.
    policies: Vec<usize>,
    learning_period: i64,
    /// Confidence per category, as of the profile with this many windows.
    confidence: Option<(u64, [Option<Confidence>; 4])>,
}

/// Evaluates fingerprints against policies; lives with the profiles, under the
/// same lock, and is fed in WAL order (also on replay, so the anomalies of rows
/// not yet persisted are derived again, exactly as before a crash).
#[derive(Debug, Default)]
pub struct Evaluator {
    basis: Basis,
    seen_seq: Option<u64>,
    /// The enabled policies.
    policies: Vec<Policy>,
    images: HashMap<String, Watched>,
    /// `container \0 kind \0 key` → per policy, the window start of its last
    /// anomaly (keyed by item first, so one key is built per item, not per policy).
    throttle: HashMap<String, Vec<(Arc<str>, i64)>>,
    /// The names of `policies`, shared with the throttle entries.
    names: Vec<Arc<str>>,
    prune_at: usize,
    newest: i64,
}

fn category_index(c: Category) -> usize {
    Category::ALL.iter().position(|&x| x == c).expect("in ALL")
}

impl Evaluator {
    /// Follows the catalog: rebuilds the cache when what it depends on changed.
    fn refresh(&mut self, state: &CatalogState) {
        if self.seen_seq == Some(state.seq) {
            return;
        }
        self.seen_seq = Some(state.seq);
        if self.policies.is_empty() && state.policies.is_empty() {
            return;
        }
        if self.basis.matches(state) {
            return;
        }
        self.basis = Basis::of(state);
        self.policies = state
            .policies
            .values()
            .filter(|p| p.enabled)
            .cloned()
            .collect();
        self.names = self
            .policies
            .iter()
            .map(|p| Arc::from(p.name.as_str()))
            .collect();
        self.images.clear();
    }

    /// The learning period of `image` (µs) if an enabled policy covers it, else
    /// `None`: then nothing about it needs watching.
    pub fn watch(&mut self, state: &CatalogState, image: &str, image_name: &str) -> Option<i64> {
        self.refresh(state);
        if self.policies.is_empty() {
            return None;
        }
        let stale = self
            .images
            .get(image)
            .is_none_or(|w| w.image_name != image_name);
        if stale {
            let policies = (0..self.policies.len())
                .filter(|&i| self.policies[i].covers(image, image_name))
                .collect();
            self.images.insert(
                image.to_string(),
                Watched {
                    image_name: image_name.to_string(),
                    policies,
                    learning_period: image_learning_period_micros(state, image),
                    confidence: None,
                },
            );
        }
        let w = &self.images[image];
        (!w.policies.is_empty()).then_some(w.learning_period)
    }

    /// The anomalies of `fp`, whose items at positions `outside` are outside the
    /// baseline of `profile` (which already includes `fp`). Call after
    /// [`watch`](Self::watch) said the image is watched.
    pub fn evaluate(
        &mut self,
        fp: &Fingerprint,
        profile: &ImageProfile,
        outside: &[usize],
    ) -> Vec<Anomaly> {
        let mut found = Vec::new();
        let Some(watched) = self.images.get_mut(&fp.image) else {
            return found;
        };
        let t = fp.window_start_unix_micros;
        self.newest = self.newest.max(t);
        for &i in outside {
            let Some(item) = fp.items.get(i) else {
                continue;
            };
            let kind = ItemKind::try_from(item.kind)
                .unwrap_or(ItemKind::Unspecified)
                .sql_name();
            let Some(category) = Category::of_kind(kind) else {
                continue;
            };
            let item_key = format!("{}\0{kind}\0{}", fp.container_id, item.key);
            // Taken out for the policies' loop, put back after: one lookup per item.
            let mut per_policy = self.throttle.remove(&item_key).unwrap_or_default();
            for k in 0..watched.policies.len() {
                let pi = watched.policies[k];
                let policy = &self.policies[pi];
                if !policy.watches(category) {
                    continue;
                }
                let throttle = policy.throttle_seconds as i64 * 1_000_000;
                let last = per_policy
                    .iter()
                    .find(|(name, _)| **name == *policy.name)
                    .map(|&(_, t)| t);
                if last.is_some_and(|last| (t - last).abs() < throttle) {
                    continue;
                }
                let conf = category_confidence(watched, profile, category);
                if conf.level < policy.min_confidence {
                    continue;
                }
                match per_policy
                    .iter_mut()
                    .find(|(name, _)| **name == *policy.name)
                {
                    Some(entry) => entry.1 = t,
                    None => per_policy.push((self.names[pi].clone(), t)),
                }
                found.push(Anomaly {
                    time: t,
                    window_end: fp.window_end_unix_micros,
                    node: fp.node.clone(),
                    container_id: fp.container_id.clone(),
                    image: fp.image.clone(),
                    image_name: fp.image_name.clone(),
                    kind: kind.to_string(),
                    key: item.key.clone(),
                    count: item.count,
                    policy: policy.name.clone(),
                    severity: policy.severity,
                    confidence: conf.level,
                    confidence_score: conf.score,
                });
            }
            if !per_policy.is_empty() {
                self.throttle.insert(item_key, per_policy);
            }
        }
        self.prune_throttle();
        found
    }

    /// Remembers an anomaly already stored (at start), so the throttle holds
    /// across restarts.
    pub fn seed_throttle(&mut self, policy: &str, container: &str, kind: &str, key: &str, t: i64) {
        let per_policy = self
            .throttle
            .entry(format!("{container}\0{kind}\0{key}"))
            .or_default();
        match per_policy.iter_mut().find(|(name, _)| &**name == policy) {
            Some(entry) => entry.1 = entry.1.max(t),
            None => per_policy.push((Arc::from(policy), t)),
        }
        self.newest = self.newest.max(t);
    }

    /// Throttle entries older than the longest throttle are of no use: dropped
    /// whenever the map has doubled since the last pass.
    fn prune_throttle(&mut self) {
        if self.throttle.len() <= self.prune_at {
            return;
        }
        let horizon = self.newest - super::MAX_THROTTLE_SECONDS as i64 * 1_000_000;
        self.throttle.retain(|_, per_policy| {
            per_policy.retain(|&(_, t)| t >= horizon);
            !per_policy.is_empty()
        });
        self.prune_at = (self.throttle.len() * 2).max(4096);
    }

    /// Entries in the throttle (for tests and stats).
    pub fn throttled_items(&self) -> usize {
        self.throttle.values().map(Vec::len).sum()
    }
}

/// Seeds `evaluator`'s throttle with the anomalies stored in the live files of
/// `state` (only the last day of them: no throttle is longer). Returns how many
/// (policy, container, item) entries it holds.
pub async fn seed_throttle(
    store: Arc<dyn ObjectStore>,
    state: &CatalogState,
    evaluator: &mut Evaluator,
) -> crate::Result<usize> {
    let Some(newest) = state
        .files_of(StoredTable::Anomalies)
        .map(|f| f.max_time)
        .max()
    else {
        return Ok(0);
    };
    let since = newest - super::MAX_THROTTLE_SECONDS as i64 * 1_000_000;
    let session = new_session(
        store,
        Arc::new(CommittedFiles(Arc::new(state.clone()))),
        default_session_config(),
        RuntimeEnvBuilder::new(),
    )?;
    let sql = format!(
        "SELECT policy, container_id, kind, key, CAST(max(time) AS BIGINT) FROM anomalies \
         WHERE time >= to_timestamp_micros({since}) GROUP BY policy, container_id, kind, key"
    );
    let mut rows = session.sql(&sql).await?.execute_stream().await?;
    while let Some(b) = rows.try_next().await? {
        let text = |i: usize| b.column(i).as_string::<i32>();
        let (policy, container, kind, key) = (text(0), text(1), text(2), text(3));
        let times = b.column(4).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            evaluator.seed_throttle(
                policy.value(r),
                container.value(r),
                kind.value(r),
                key.value(r),
                times.value(r),
            );
        }
    }
    Ok(evaluator.throttled_items())
}

fn category_confidence(w: &mut Watched, profile: &ImageProfile, c: Category) -> Confidence {
    if w.confidence
        .as_ref()
        .is_none_or(|(n, _)| *n != profile.windows)
    {
        w.confidence = Some((profile.windows, [None; 4]));
    }
    let (_, cached) = w.confidence.as_mut().expect("set above");
    *cached[category_index(c)].get_or_insert_with(|| confidence(profile, c, w.learning_period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DEFAULT_THROTTLE_SECONDS, Severity};
    use crate::profile::{ConfidenceLevel, WindowFacts};
    use imprint_proto::ingest_v1::Item;

    const S: i64 = 1_000_000;
    const IMAGE: &str = "sha256:aaaa";

    fn state(policies: &[Policy]) -> CatalogState {
        let mut s = CatalogState {
            seq: 1,
            ..Default::default()
        };
        s.settings.insert(LEARNING_PERIOD.into(), "10m".into());
        for p in policies {
            s.policies.insert(p.name.clone(), p.clone());
        }
        s
    }

    fn policy(name: &str, categories: &[Category], min: ConfidenceLevel) -> Policy {
        Policy {
            name: name.into(),
            scope: "api:*".into(),
            categories: categories.to_vec(),
            min_confidence: min,
            severity: Severity::High,
            enabled: true,
            throttle_seconds: DEFAULT_THROTTLE_SECONDS,
            created_micros: 0,
        }
    }

    fn fp(container: &str, w: i64, items: &[(ItemKind, &str)]) -> Fingerprint {
        Fingerprint {
            image: IMAGE.into(),
            image_name: "api:1".into(),
            node: "n1".into(),
            container_id: container.into(),
            window_start_unix_micros: w * 30 * S,
            window_end_unix_micros: (w + 1) * 30 * S,
            items: items
                .iter()
                .map(|(k, key)| Item {
                    kind: *k as i32,
                    key: key.to_string(),
                    count: 1,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// What the server's writer does with one fingerprint.
    fn ingest(
        e: &mut Evaluator,
        s: &CatalogState,
        p: &mut ImageProfile,
        fp: &Fingerprint,
    ) -> Vec<Anomaly> {
        let period = e.watch(s, &fp.image, &fp.image_name);
        let outside = p.apply_watching(
            &fp.image_name,
            &fp.node,
            &fp.container_id,
            (fp.window_start_unix_micros, fp.window_end_unix_micros),
            WindowFacts::default(),
            |p| period.and_then(|l| p.learned_at(l)),
            fp.items.iter().map(|i| {
                let kind = ItemKind::try_from(i.kind).unwrap().sql_name();
                (kind, i.key.as_str(), i.count)
            }),
        );
        if outside.is_empty() {
            return vec![];
        }
        e.evaluate(fp, p, &outside)
    }

    const STEADY: &[(ItemKind, &str)] = &[
        (ItemKind::Process, "/app"),
        (ItemKind::FileRead, "/etc/app.conf"),
        (ItemKind::TcpIn, "8080"),
    ];

    #[test]
    fn deviations_after_learning_only_once_within_the_throttle() {
        let s = state(&[policy("all", &Category::ALL, ConfidenceLevel::Medium)]);
        let mut e = Evaluator::default();
        let mut p = ImageProfile::default();
        let mut found = Vec::new();
        // Learning (10 min = windows 0..20), with a new process in window 5.
        for w in 0..20 {
            for c in ["c1", "c2"] {
                found.extend(ingest(&mut e, &s, &mut p, &fp(c, w, STEADY)));
            }
        }
        found.extend(ingest(
            &mut e,
            &s,
            &mut p,
            &fp("c1", 5, &[(ItemKind::Process, "/early")]),
        ));
        assert!(found.is_empty(), "nothing while learning: {found:?}");
        // Done learning. A new process, file and port, each in windows 20..35.
        let odd = [
            (ItemKind::Process, "/usr/bin/nc"),
            (ItemKind::FileRead, "/etc/shadow"),
            (ItemKind::TcpOut, "4444"),
        ];
        let mut all = STEADY.to_vec();
        all.extend(odd);
        for w in 20..35 {
            found.extend(ingest(&mut e, &s, &mut p, &fp("c1", w, &all)));
            found.extend(ingest(&mut e, &s, &mut p, &fp("c2", w, STEADY)));
        }
        let got: Vec<(i64, &str, &str)> = found
            .iter()
            .map(|a| (a.time / (30 * S), a.kind.as_str(), a.key.as_str()))
            .collect();
        // Throttle 5 min = 10 windows: again at window 30.
        assert_eq!(
            got,
            vec![
                (20, "process", "/usr/bin/nc"),
                (20, "file_read", "/etc/shadow"),
                (20, "tcp_out", "4444"),
                (30, "process", "/usr/bin/nc"),
                (30, "file_read", "/etc/shadow"),
                (30, "tcp_out", "4444"),
            ]
        );
        assert!(found.iter().all(|a| a.policy == "all"
            && a.severity == Severity::High
            && a.container_id == "c1"
            && a.confidence >= ConfidenceLevel::Medium));
    }

    #[test]
    fn categories_below_the_minimum_confidence_stay_quiet() {
        // Only c1: one container reaches at most `medium`.
        let s = state(&[
            policy("high", &Category::ALL, ConfidenceLevel::High),
            policy("net", &[Category::Network], ConfidenceLevel::Medium),
        ]);
        let mut e = Evaluator::default();
        let mut p = ImageProfile::default();
        for w in 0..20 {
            assert!(ingest(&mut e, &s, &mut p, &fp("c1", w, STEADY)).is_empty());
        }
        let found = ingest(
            &mut e,
            &s,
            &mut p,
            &fp(
                "c1",
                20,
                &[(ItemKind::Process, "/bin/sh"), (ItemKind::TcpOut, "53")],
            ),
        );
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|a| (a.policy.as_str(), a.key.as_str()))
            .collect();
        assert_eq!(got, vec![("net", "53")]);
        assert_eq!(found[0].confidence, ConfidenceLevel::Medium);
    }

    #[test]
    fn out_of_scope_disabled_and_seeded_throttle() {
        let mut other = policy("other", &Category::ALL, ConfidenceLevel::Low);
        other.scope = "web:*".into();
        let mut off = policy("off", &Category::ALL, ConfidenceLevel::Low);
        off.enabled = false;
        let on = policy("on", &Category::ALL, ConfidenceLevel::Low);
        let s = state(&[other, off, on]);
        let mut e = Evaluator::default();
        e.seed_throttle("on", "c1", "process", "/seeded", 19 * 30 * S);
        let mut p = ImageProfile::default();
        for w in 0..20 {
            ingest(&mut e, &s, &mut p, &fp("c1", w, STEADY));
        }
        let found = ingest(
            &mut e,
            &s,
            &mut p,
            &fp(
                "c1",
                20,
                &[(ItemKind::Process, "/seeded"), (ItemKind::Process, "/new")],
            ),
        );
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|a| (a.policy.as_str(), a.key.as_str()))
            .collect();
        assert_eq!(got, vec![("on", "/new")]);
    }
}
