//! Attribution: cgroup id → cgroup path → container id → image.
//!
//! The capture loop asks [`Attributor::lookup`] for every cgroup it has events of; the answer is
//! cached. An unknown cgroup is `Pending` while a resolver thread works it out (the runtime API
//! may take a moment, and may not know a container that is still being created), so the capture
//! loop never blocks; its events are kept until the answer comes.

pub mod cgroups;
pub mod container_id;
pub mod containerd;
pub mod runtime_api;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use cgroups::CgroupIndex;

/// A container the agent attributes events to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub image: String,
    pub image_name: String,
    /// The cgroup existed when the agent started: its start-up was not seen.
    pub started_before_agent: bool,
    /// How it was resolved, for logs: "podman", "static", ….
    pub source: &'static str,
}

/// What a cgroup is.
#[derive(Clone, Debug)]
pub enum Attribution {
    Container(Arc<Container>),
    /// A host cgroup, or one that never resolved: its events are not recorded.
    NotContainer,
    /// Not known yet.
    Pending,
}

/// A `--cgroup-image PATH=DIGEST[,NAME]` mapping for cgroups no runtime manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticMapping {
    /// Path under the cgroup v2 mount, starting with `/`.
    pub path: String,
    pub image: String,
    pub image_name: String,
}

impl std::str::FromStr for StaticMapping {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (path, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected PATH=DIGEST[,NAME]"))?;
        let (image, image_name) = rest.split_once(',').unwrap_or((rest, ""));
        imprint_proto::digest::check_digest(image).map_err(|e| format!("{text:?}: {e}"))?;
        let path = format!("/{}", path.trim_matches('/'));
        Ok(StaticMapping {
            path,
            image: image.to_string(),
            image_name: image_name.to_string(),
        })
    }
}

/// How long an unresolved cgroup is retried before its events are given up (and counted).
pub const RESOLVE_DEADLINE: Duration = Duration::from_secs(120);

pub struct Attributor {
    cache: Arc<Mutex<HashMap<u64, Attribution>>>,
    requested: HashSet<u64>,
    requests: Sender<u64>,
}

struct Resolver {
    index: CgroupIndex,
    mappings: Vec<StaticMapping>,
    sockets: Vec<PathBuf>,
    /// containerd's own API, one client per socket (connected when first needed).
    containerd: Vec<containerd::Containerd>,
    preexisting: HashSet<u64>,
    cache: Arc<Mutex<HashMap<u64, Attribution>>>,
    /// Told of every container resolved (for the runtime scanner).
    resolved: Option<std::sync::mpsc::Sender<Resolved>>,
}

/// Where the agent asks runtimes about containers.
#[derive(Clone, Debug, Default)]
pub struct RuntimeSockets {
    /// Docker-compatible REST API sockets (Docker, `podman system service`), in order.
    pub docker_api: Vec<PathBuf>,
    /// containerd gRPC sockets, in order.
    pub containerd: Vec<PathBuf>,
}

/// A container just resolved: where its cgroup is, and its image.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The cgroup's directory (under the cgroup v2 mount).
    pub cgroup_dir: PathBuf,
    pub container: Arc<Container>,
}

impl Attributor {
    /// Starts the resolver thread. `preexisting` cgroups get `started_before_agent`.
    /// `resolved`, when given, hears of every container resolved.
    pub fn start(
        index: CgroupIndex,
        mappings: Vec<StaticMapping>,
        sockets: RuntimeSockets,
        resolved: Option<std::sync::mpsc::Sender<Resolved>>,
    ) -> Attributor {
        let containerd = sockets
            .containerd
            .iter()
            .filter_map(|socket| match containerd::Containerd::new(socket) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(socket = %socket.display(), %error, "no containerd client");
                    None
                }
            })
            .collect();
        let cache = Arc::new(Mutex::new(HashMap::new()));
        let (requests, receiver) = channel();
        let resolver = Resolver {
            preexisting: index.ids().collect(),
            index,
            mappings,
            sockets: sockets.docker_api,
            containerd,
            cache: cache.clone(),
            resolved,
        };
        std::thread::Builder::new()
            .name("attribution".into())
            .spawn(move || resolver.run(receiver))
            .expect("spawn attribution thread");
        Attributor {
            cache,
            requested: HashSet::new(),
            requests,
        }
    }

    pub fn lookup(&mut self, cgroup: u64) -> Attribution {
        if let Some(found) = self.cache.lock().get(&cgroup) {
            return found.clone();
        }
        if self.requested.insert(cgroup) {
            let _ = self.requests.send(cgroup);
        }
        Attribution::Pending
    }
}

impl Resolver {
    fn run(mut self, requests: Receiver<u64>) {
        // (cgroup, first asked, next try)
        let mut retry: VecDeque<(u64, Instant, Instant)> = VecDeque::new();
        loop {
            let wait = retry
                .front()
                .map(|(_, _, next)| next.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match requests.recv_timeout(wait) {
                Ok(cgroup) => {
                    if !self.try_resolve(cgroup) {
                        retry.push_back((
                            cgroup,
                            Instant::now(),
                            Instant::now() + Duration::from_millis(200),
                        ));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let mut again = VecDeque::new();
            while let Some((cgroup, first, next)) = retry.pop_front() {
                if next > now {
                    again.push_back((cgroup, first, next));
                    continue;
                }
                if self.try_resolve(cgroup) {
                    continue;
                }
                if now.duration_since(first) > RESOLVE_DEADLINE {
                    tracing::warn!(
                        cgroup,
                        "cgroup did not resolve to a container within {RESOLVE_DEADLINE:?}; its events are dropped"
                    );
                    self.cache.lock().insert(cgroup, Attribution::NotContainer);
                } else {
                    let backoff = (now.duration_since(first) / 2)
                        .clamp(Duration::from_millis(200), Duration::from_secs(10));
                    again.push_back((cgroup, first, now + backoff));
                }
            }
            retry = again;
        }
    }

    /// Resolves `cgroup` into the cache; false when it should be tried again later.
    fn found(&mut self, cgroup: u64, path: &str, container: Container) {
        let container = Arc::new(container);
        self.cache
            .lock()
            .insert(cgroup, Attribution::Container(container.clone()));
        if let Some(tx) = &self.resolved {
            let _ = tx.send(Resolved {
                cgroup_dir: self.index.dir_of(path),
                container,
            });
        }
    }

    fn try_resolve(&mut self, cgroup: u64) -> bool {
        let Some(path) = self.index.path(cgroup) else {
            // Gone already, or created between the scan and now: try again (a vanished cgroup
            // ends at the deadline).
            return false;
        };
        let started_before_agent = self.preexisting.contains(&cgroup);
        if let Some(mapping) = self
            .mappings
            .iter()
            .find(|m| path == m.path || path.starts_with(&format!("{}/", m.path)))
        {
            let container = Container {
                id: mapping.path.trim_start_matches('/').to_string(),
                image: mapping.image.clone(),
                image_name: mapping.image_name.clone(),
                started_before_agent,
                source: "static",
            };
            tracing::info!(cgroup, path, image = %container.image, "cgroup mapped statically");
            self.found(cgroup, &path, container);
            return true;
        }
        let parsed = container_id::parse(&path);
        if let Some((runtime, id)) = &parsed {
            for socket in &self.sockets {
                if !socket.exists() {
                    continue;
                }
                match runtime_api::inspect(socket, id) {
                    Ok(found) => {
                        self.resolved_as(cgroup, &path, id, found, runtime.name());
                        return true;
                    }
                    Err(error) => tracing::debug!(%error, "runtime API lookup failed"),
                }
            }
        }
        match self.ask_containerd(&path, parsed.as_ref().map(|(_, id)| id.as_str())) {
            ContainerdAnswer::Found(id, found) => {
                self.resolved_as(cgroup, &path, &id, found, "containerd");
                true
            }
            // Neither a container id in the path nor a containerd namespace: a host cgroup.
            ContainerdAnswer::NotAsked if parsed.is_none() => {
                self.cache.lock().insert(cgroup, Attribution::NotContainer);
                true
            }
            // A container no runtime knows yet (still being created), or a runtime that is away.
            ContainerdAnswer::NotAsked
            | ContainerdAnswer::NotFound
            | ContainerdAnswer::Unreachable => false,
        }
    }

    fn resolved_as(
        &mut self,
        cgroup: u64,
        path: &str,
        id: &str,
        found: runtime_api::ContainerImage,
        source: &'static str,
    ) {
        let container = Container {
            id: id.to_string(),
            image: found.image,
            image_name: found.image_name,
            started_before_agent: self.preexisting.contains(&cgroup),
            source,
        };
        tracing::info!(cgroup, path, container = %id, image = %container.image, name = %container.image_name, source, "container resolved");
        self.found(cgroup, path, container);
    }

    /// Asks each containerd socket about the containers `path` can name there.
    fn ask_containerd(&self, path: &str, cri_id: Option<&str>) -> ContainerdAnswer {
        let mut answer = ContainerdAnswer::NotAsked;
        if cri_id.is_none() && !containerd::may_name_a_container(path) {
            return answer;
        }
        for client in &self.containerd {
            if !client.socket().exists() {
                continue;
            }
            let namespaces = match client.namespaces() {
                Ok(namespaces) => namespaces,
                Err(error) => {
                    tracing::debug!(%error, "containerd unreachable");
                    answer = ContainerdAnswer::Unreachable;
                    continue;
                }
            };
            let candidates = containerd::candidates(path, &namespaces, cri_id);
            tracing::debug!(path, ?namespaces, ?candidates, "asking containerd");
            for (namespace, id) in candidates {
                match client.inspect(&namespace, &id) {
                    Ok(found) => return ContainerdAnswer::Found(id, found),
                    Err(runtime_api::ApiError::NotFound { .. }) => {
                        tracing::debug!(namespace, id, "containerd has no such container (yet)");
                        if matches!(answer, ContainerdAnswer::NotAsked) {
                            answer = ContainerdAnswer::NotFound;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "containerd lookup failed");
                        answer = ContainerdAnswer::Unreachable;
                    }
                }
            }
        }
        answer
    }
}

/// What containerd said of a cgroup.
enum ContainerdAnswer {
    Found(String, runtime_api::ContainerImage),
    /// The path names nothing containerd could have (or no containerd runs).
    NotAsked,
    /// The path is in a containerd namespace (or has a CRI id), but no such container yet.
    NotFound,
    /// A containerd could not be asked, or failed: try again later.
    Unreachable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_mappings_parse_and_explain_mistakes() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let mapping: StaticMapping = format!("imprint/w1={digest},localhost/w:1")
            .parse()
            .expect("valid");
        assert_eq!(mapping.path, "/imprint/w1");
        assert_eq!(mapping.image, digest);
        assert_eq!(mapping.image_name, "localhost/w:1");
        let error = "imprint/w1=sha256:xyz"
            .parse::<StaticMapping>()
            .expect_err("bad digest");
        assert!(error.contains("64 lowercase hex"), "{error}");
        let error = "imprint/w1"
            .parse::<StaticMapping>()
            .expect_err("no digest");
        assert!(error.contains("PATH=DIGEST"), "{error}");
    }
}
