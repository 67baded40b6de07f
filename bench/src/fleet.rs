//! A synthetic fleet: images, their containers on nodes, and the fingerprints they
//! emit window by window — shaped like the steady state of real workloads (see
//! ../shared/notes/peer-baselines.md): each image has a profile of a few hundred
//! items; each container re-emits most of it every window; new items are rare.

use imprint_proto::ingest_v1::{Completeness, Fingerprint, FingerprintBatch, Item, ItemKind};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::vocab::{DIRS, FILES, PORTS, PROCESSES, SYSCALLS};

#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub images: usize,
    pub containers_per_image: usize,
    pub nodes: usize,
    pub window_secs: i64,
    /// Start of window 0, microseconds since the epoch.
    pub start_micros: i64,
    /// Share of an image's items a container emits in a window.
    pub repeat_share: f64,
    /// Chance per container and window of an item never seen before.
    pub new_item_chance: f64,
    pub seed: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            images: 10,
            containers_per_image: 3,
            nodes: 2,
            window_secs: 30,
            start_micros: 1_795_996_800_000_000, // 2026-11-30T00:00:00Z
            repeat_share: 0.9,
            new_item_chance: 0.02,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone)]
struct Container {
    id: String,
    node: usize,
    image: usize,
}

#[derive(Debug, Clone)]
struct Image {
    digest: String,
    name: String,
    items: Vec<(ItemKind, String)>,
}

#[derive(Debug)]
pub struct Fleet {
    spec: FleetSpec,
    images: Vec<Image>,
    containers: Vec<Container>,
    rng: StdRng,
    seqs: Vec<u64>,
}

/// A digest made from a number, for tests and benchmarks.
pub fn digest_of(n: u64) -> String {
    let mut hex = String::with_capacity(64);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while hex.len() < 64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 29;
        hex.push_str(&format!("{x:016x}"));
    }
    format!("sha256:{}", &hex[..64])
}

fn image_profile(rng: &mut StdRng) -> Vec<(ItemKind, String)> {
    let mut items = Vec::new();
    let mut take = |kind, pool: Vec<String>, n: usize, rng: &mut StdRng| {
        for k in pool.choose_multiple(rng, n) {
            items.push((kind, k.clone()));
        }
    };
    let paths: Vec<String> = DIRS
        .iter()
        .flat_map(|d| FILES.iter().map(move |f| format!("{d}/{f}")))
        .collect();
    let n_sys = rng.random_range(40..80);
    take(
        ItemKind::Syscall,
        SYSCALLS.iter().map(|s| s.to_string()).collect(),
        n_sys,
        rng,
    );
    let n_proc = rng.random_range(5..35);
    take(
        ItemKind::Process,
        PROCESSES.iter().map(|s| s.to_string()).collect(),
        n_proc,
        rng,
    );
    let n_read = rng.random_range(80..360);
    take(ItemKind::FileRead, paths.clone(), n_read, rng);
    let n_dir = rng.random_range(10..48);
    take(
        ItemKind::DirRead,
        DIRS.iter().map(|s| s.to_string()).collect(),
        n_dir,
        rng,
    );
    let n_write = rng.random_range(2..20);
    take(ItemKind::FileWrite, paths, n_write, rng);
    let n_dirw = rng.random_range(1..5);
    take(
        ItemKind::DirWrite,
        DIRS.iter().map(|s| s.to_string()).collect(),
        n_dirw,
        rng,
    );
    let ports: Vec<String> = PORTS.iter().map(|p| p.to_string()).collect();
    let n_in = rng.random_range(1..3);
    take(ItemKind::TcpIn, ports.clone(), n_in, rng);
    let n_out = rng.random_range(1..5);
    take(ItemKind::TcpOut, ports.clone(), n_out, rng);
    let n_udp = rng.random_range(0..2);
    take(ItemKind::UdpOut, ports, n_udp, rng);
    // A kind may draw a key twice from vocabularies with repeats: keep each once.
    let mut seen = std::collections::HashSet::new();
    items.retain(|(k, key)| seen.insert((*k, key.clone())));
    items
}

impl Fleet {
    pub fn new(spec: FleetSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let images: Vec<Image> = (0..spec.images)
            .map(|i| Image {
                digest: digest_of(spec.seed.wrapping_mul(1_000_003) + i as u64),
                name: format!("registry.example/team{}/svc{}:1.{}", i % 7, i, i % 5),
                items: image_profile(&mut rng),
            })
            .collect();
        let mut containers = Vec::new();
        for (i, _) in images.iter().enumerate() {
            for c in 0..spec.containers_per_image {
                let n = containers.len();
                containers.push(Container {
                    id: format!(
                        "{:064x}",
                        (i as u128) << 64 | c as u128 | 0xc0de_u128 << 100
                    ),
                    node: n % spec.nodes.max(1),
                    image: i,
                });
            }
        }
        let seqs = vec![0; spec.nodes.max(1)];
        Self {
            spec,
            images,
            containers,
            rng,
            seqs,
        }
    }

    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    pub fn node_name(n: usize) -> String {
        format!("node-{n:03}")
    }

    pub fn image_digest(&self, i: usize) -> &str {
        &self.images[i].digest
    }

    /// The fingerprints of every container for window `w`, grouped by node.
    pub fn window(&mut self, w: i64) -> Vec<Vec<Fingerprint>> {
        let start = self.spec.start_micros + w * self.spec.window_secs * 1_000_000;
        let end = start + self.spec.window_secs * 1_000_000;
        let mut per_node: Vec<Vec<Fingerprint>> = vec![Vec::new(); self.spec.nodes.max(1)];
        for c in &self.containers {
            let image = &self.images[c.image];
            let mut items = Vec::with_capacity(image.items.len());
            for (k, key) in &image.items {
                if self.rng.random_bool(self.spec.repeat_share) {
                    items.push(Item {
                        kind: *k as i32,
                        key: key.clone(),
                        count: self.rng.random_range(1..20),
                    });
                }
            }
            if self.rng.random_bool(self.spec.new_item_chance) {
                let fresh = format!("/tmp/new-{}-{}", c.image, self.rng.random::<u32>());
                items.push(Item {
                    kind: ItemKind::FileWrite as i32,
                    key: fresh,
                    count: 1,
                });
            }
            items.shuffle(&mut self.rng);
            per_node[c.node].push(Fingerprint {
                node: Self::node_name(c.node),
                container_id: c.id.clone(),
                image: image.digest.clone(),
                image_name: image.name.clone(),
                window_start_unix_micros: start,
                window_end_unix_micros: end,
                items,
                completeness: Some(Completeness::default()),
            });
        }
        per_node
    }

    /// One batch per node for window `w`, from agent `node-NNN`, seqs counting up.
    pub fn batches(&mut self, w: i64) -> Vec<FingerprintBatch> {
        let windows = self.window(w);
        windows
            .into_iter()
            .enumerate()
            .filter(|(_, fps)| !fps.is_empty())
            .map(|(n, fingerprints)| {
                self.seqs[n] += 1;
                FingerprintBatch {
                    agent_id: Self::node_name(n),
                    seq: self.seqs[n],
                    fingerprints,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_fleet() {
        let spec = FleetSpec {
            images: 3,
            ..Default::default()
        };
        let a = Fleet::new(spec.clone()).batches(0);
        let b = Fleet::new(spec).batches(0);
        assert_eq!(a, b);
        let items: usize = a
            .iter()
            .flat_map(|b| &b.fingerprints)
            .map(|f| f.items.len())
            .sum();
        assert!(items > 3 * 3 * 100, "{items}");
    }

    #[test]
    fn digests_are_valid() {
        for n in 0..100 {
            let d = digest_of(n);
            assert_eq!(d.len(), 71);
            assert!(
                d[7..]
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }
}
