//! The capture loop (its own thread): drains the kernel's ring buffer, turns events into items
//! per cgroup, and at each window boundary reads the kernel's counters and syscall bitmaps,
//! advances the window generation and hands finished fingerprints to the shipper.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use imprint_ebpf_common::{
    Event, EventKind, FLAG_TRUNCATED, SYSCALL_SLOTS, SYSCALL_WORDS, WINDOW_COLLECTED,
    WINDOW_GENERATION,
};
use imprint_proto::ingest_v1::{Fingerprint, ItemKind};
use tokio::sync::mpsc::UnboundedSender;

use crate::attribution::{Attribution, Attributor, RESOLVE_DEADLINE};
use crate::metrics::Metrics;
use crate::paths;
use crate::probes::{Group, Probes};
use crate::procfs::{Proc, Protocol};
use crate::syscalls;
use crate::window::CgroupWindow;

/// What other parts of the agent tell the capture loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The server's `profiling.enabled` (or the local default): capture at all.
    Profiling(bool),
    /// The resource guard: pause (true) or resume (false) the high-volume hooks.
    GuardPause(bool),
    /// Close the current window, ship it, and end.
    Stop,
}

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub node: String,
    pub window: Duration,
    /// Distinct items per container per window; more are counted as dropped.
    pub max_items: usize,
    pub proc: Proc,
}

const O_ACCMODE: u32 = 0o3;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_DIRECTORY: u32 = 0o200000;

/// A closed window whose cgroup has not resolved yet.
struct Pending {
    cgroup: u64,
    window: (i64, i64),
    data: CgroupWindow,
    paused: bool,
    since: Instant,
}

pub struct Capture {
    probes: Probes,
    attributor: Attributor,
    config: CaptureConfig,
    metrics: Arc<Metrics>,
    out: UnboundedSender<Vec<Fingerprint>>,
    generation: u64,
    windows: HashMap<u64, CgroupWindow>,
    pending: Vec<Pending>,
    profiling: bool,
    guard_paused: bool,
    /// The guard paused capture at some point of the current window.
    paused_in_window: bool,
    ephemeral_start: u16,
}

impl Capture {
    pub fn new(
        probes: Probes,
        attributor: Attributor,
        config: CaptureConfig,
        metrics: Arc<Metrics>,
        out: UnboundedSender<Vec<Fingerprint>>,
        profiling: bool,
    ) -> Capture {
        let ephemeral_start = config.proc.ephemeral_port_start();
        Capture {
            probes,
            attributor,
            config,
            metrics,
            out,
            generation: 0,
            windows: HashMap::new(),
            pending: Vec::new(),
            profiling,
            guard_paused: false,
            paused_in_window: false,
            ephemeral_start,
        }
    }

    /// Keeps a cgroup's events out in the kernel (the agent's own cgroup, known host cgroups).
    pub fn exclude(&mut self, cgroup: u64) {
        let _ = self.probes.maps.excluded.insert(cgroup, 1, 0);
    }

    /// Runs until `Control::Stop`.
    pub fn run(mut self, control: Receiver<Control>) {
        let _ = self
            .probes
            .maps
            .window
            .set(WINDOW_GENERATION, self.generation, 0);
        self.apply_attachment();
        let window_micros = self.config.window.as_micros() as i64;
        let mut start = now_micros();
        // Windows end on multiples of the window length, so all containers share boundaries.
        let mut end = (start / window_micros + 1) * window_micros;
        loop {
            let mut stop = false;
            while let Ok(message) = control.try_recv() {
                match message {
                    Control::Profiling(on) => self.profiling = on,
                    Control::GuardPause(paused) => {
                        self.guard_paused = paused;
                        if paused {
                            self.paused_in_window = true;
                        }
                    }
                    Control::Stop => stop = true,
                }
                self.apply_attachment();
            }
            let drained = self.drain();
            let now = now_micros();
            if stop {
                self.close((start, now.max(start + 1)));
                return;
            }
            if now >= end {
                self.close((start, end));
                start = end;
                end += window_micros;
                if now >= end {
                    // The loop was stalled past a whole window: realign.
                    start = now;
                    end = (now / window_micros + 1) * window_micros;
                }
            }
            if drained == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn apply_attachment(&mut self) {
        for group in Group::ALL {
            let want =
                self.profiling && !(self.guard_paused && Group::HIGH_VOLUME.contains(&group));
            let result = if want {
                self.probes.attach(group)
            } else {
                self.probes.detach(group)
            };
            if let Err(error) = result {
                tracing::error!(group = group.name(), %error, "changing eBPF attachment failed");
            }
        }
        let capturing = Group::ALL.iter().any(|g| self.probes.is_attached(*g));
        self.metrics
            .capturing
            .store(capturing as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads every event waiting in the ring buffer; returns how many.
    fn drain(&mut self) -> usize {
        let mut events = Vec::new();
        while let Some(item) = self.probes.maps.events.next() {
            if let Some(event) = Event::decode(&item) {
                events.push(event);
            }
        }
        Metrics::add(&self.metrics.events_seen, events.len() as u64);
        let n = events.len();
        for event in events {
            self.handle(&event);
        }
        n
    }

    fn handle(&mut self, event: &Event) {
        if !self.windows.contains_key(&event.cgroup) {
            // Start resolving at once: a short-lived container's cgroup and runtime record may
            // be gone by the end of the window.
            let _ = self.attributor.lookup(event.cgroup);
        }
        let items = match self.items_of(event) {
            Some(items) => items,
            None => {
                self.windows.entry(event.cgroup).or_default().dropped += 1;
                Metrics::add(&self.metrics.events_dropped_agent, 1);
                return;
            }
        };
        let cap = self.config.max_items;
        let window = self.windows.entry(event.cgroup).or_default();
        let before = window.dropped;
        window.add(event.hash, items, cap);
        Metrics::add(&self.metrics.events_dropped_agent, window.dropped - before);
    }

    /// The items an event stands for; `None` when it cannot be used (counted as dropped).
    fn items_of(&self, event: &Event) -> Option<Vec<(ItemKind, String)>> {
        let kind = EventKind::from_u32(event.kind)?;
        let port = |kind: ItemKind| (event.port != 0).then(|| vec![(kind, event.port.to_string())]);
        match kind {
            EventKind::Exec | EventKind::Open => {
                if event.flags & FLAG_TRUNCATED != 0 {
                    return None;
                }
                let raw = std::str::from_utf8(event.path_bytes()).ok()?;
                let base = if raw.starts_with('/') {
                    String::from("/")
                } else {
                    let dirfd = if kind == EventKind::Exec {
                        imprint_ebpf_common::AT_FDCWD
                    } else {
                        event.fd
                    };
                    self.config.proc.base_dir(event.pid(), dirfd)?
                };
                let path = paths::normalise(&base, raw);
                let parent = paths::parent(&path).to_string();
                Some(if kind == EventKind::Exec {
                    vec![
                        (ItemKind::Process, path.clone()),
                        (ItemKind::FileRead, path),
                        (ItemKind::DirRead, parent),
                    ]
                } else if event.flags & O_DIRECTORY != 0 {
                    vec![(ItemKind::DirRead, path)]
                } else if event.flags & O_ACCMODE != 0 || event.flags & (O_CREAT | O_TRUNC) != 0 {
                    vec![(ItemKind::FileWrite, path), (ItemKind::DirWrite, parent)]
                } else {
                    vec![(ItemKind::FileRead, path), (ItemKind::DirRead, parent)]
                })
            }
            EventKind::TcpIn => Some(port(ItemKind::TcpIn).unwrap_or_default()),
            EventKind::UdpIn => Some(port(ItemKind::UdpIn).unwrap_or_default()),
            EventKind::TcpOut => Some(port(ItemKind::TcpOut).unwrap_or_default()),
            EventKind::UdpOut => Some(port(ItemKind::UdpOut).unwrap_or_default()),
            EventKind::SocketUnknown => {
                let socket = self.config.proc.socket(event.pid(), event.fd)?;
                Some(match (socket.protocol, event.port) {
                    (Protocol::Tcp, 0) if socket.listening => {
                        vec![(ItemKind::TcpIn, socket.local_port.to_string())]
                    }
                    (Protocol::Udp, 0)
                        if socket.local_port != 0 && socket.local_port < self.ephemeral_start =>
                    {
                        vec![(ItemKind::UdpIn, socket.local_port.to_string())]
                    }
                    (_, 0) => vec![],
                    (Protocol::Tcp, remote) => vec![(ItemKind::TcpOut, remote.to_string())],
                    (Protocol::Udp, remote) => vec![(ItemKind::UdpOut, remote.to_string())],
                })
            }
        }
    }

    /// Closes window `bounds`: counts, syscalls and drops from the kernel, then fingerprints.
    fn close(&mut self, bounds: (i64, i64)) {
        // Events written before the boundary may still be in the ring buffer.
        self.drain();
        let generation = self.generation;
        for window in self.windows.values_mut() {
            let seen = &self.probes.maps.seen;
            window.count(|hash| match seen.get(&hash, 0) {
                Ok([g, hits]) if g == generation => hits,
                _ => 1,
            });
        }
        // From here the kernel counts into the next generation (and the other bitmap parity).
        self.generation += 1;
        let _ = self
            .probes
            .maps
            .window
            .set(WINDOW_GENERATION, self.generation, 0);
        self.read_syscalls(generation);
        self.read_kernel_drops();

        let paused = self.paused_in_window || self.guard_paused;
        self.paused_in_window = false;
        let mut ready = Vec::new();
        let windows = std::mem::take(&mut self.windows);
        self.metrics
            .containers
            .store(windows.len() as i64, std::sync::atomic::Ordering::Relaxed);
        let mut pending: Vec<Pending> = std::mem::take(&mut self.pending);
        pending.extend(
            windows
                .into_iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|(cgroup, data)| Pending {
                    cgroup,
                    window: bounds,
                    data,
                    paused,
                    since: Instant::now(),
                }),
        );
        for window in pending {
            match self.attributor.lookup(window.cgroup) {
                Attribution::Container(container) => {
                    let fingerprint = window.data.into_fingerprint(
                        &self.config.node,
                        &container,
                        window.window,
                        window.paused,
                        0,
                    );
                    ready.push(fingerprint);
                }
                Attribution::NotContainer => self.exclude(window.cgroup),
                Attribution::Pending
                    if window.since.elapsed() > RESOLVE_DEADLINE + self.config.window =>
                {
                    Metrics::add(&self.metrics.windows_unattributed, 1);
                }
                Attribution::Pending => self.pending.push(window),
            }
        }
        if !ready.is_empty() {
            Metrics::add(&self.metrics.fingerprints_built, ready.len() as u64);
            let _ = self.out.send(ready);
        }
    }

    /// Moves the syscall bitmaps of window `generation` into the windows: the per-CPU cache
    /// slots that name it, then what was spilled into `SYSCALLS` under its parity (cleared).
    fn read_syscalls(&mut self, generation: u64) {
        let mut per_cgroup: HashMap<u64, [u64; SYSCALL_WORDS]> = HashMap::new();
        let mut or_into = |cgroup: u64, words: &[u64]| {
            let bits = per_cgroup.entry(cgroup).or_insert([0; SYSCALL_WORDS]);
            for (word, value) in bits.iter_mut().zip(words) {
                *word |= value;
            }
        };
        for index in 0..SYSCALL_SLOTS {
            let Ok(per_cpu) = self.probes.maps.syscall_cache.get(&index, 0) else {
                continue;
            };
            for slot in per_cpu.iter() {
                if slot[0] != 0 && slot[1] == generation {
                    or_into(slot[0], &slot[2..]);
                }
            }
        }
        // From here the kernel no longer spills this window's slots (it would repeat them).
        let _ = self
            .probes
            .maps
            .window
            .set(WINDOW_COLLECTED, generation + 1, 0);
        let parity = generation & 1;
        let keys: Vec<u64> = self
            .probes
            .maps
            .syscalls
            .keys()
            .flatten()
            .filter(|key| key & 1 == parity)
            .collect();
        Metrics::add(&self.metrics.syscall_bitmaps_spilled, keys.len() as u64);
        for key in keys {
            let Ok(per_cpu) = self.probes.maps.syscalls.get(&key, 0) else {
                continue;
            };
            for words in per_cpu.iter() {
                or_into(key >> 1, words);
            }
            let _ = self.probes.maps.syscalls.remove(&key);
        }
        for (cgroup, bits) in per_cgroup {
            let mut items = Vec::new();
            for (word, value) in bits.iter().enumerate() {
                for bit in 0..64 {
                    if value & (1 << bit) != 0 {
                        let nr = word * 64 + bit;
                        let name = syscalls::name(nr)
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("syscall_{nr}"));
                        items.push((ItemKind::Syscall, name));
                    }
                }
            }
            let cap = self.config.max_items;
            self.windows.entry(cgroup).or_default().add(0, items, cap);
        }
    }

    /// Per-cgroup losses go into that cgroup's window (and are cleared); the per-CPU totals,
    /// which also count cgroups the agent does not record, become the metric.
    fn read_kernel_drops(&mut self) {
        let keys: Vec<u64> = self.probes.maps.cgroup_drops.keys().flatten().collect();
        for cgroup in keys {
            if let Ok(n) = self.probes.maps.cgroup_drops.get(&cgroup, 0) {
                self.windows.entry(cgroup).or_default().dropped += n;
            }
            let _ = self.probes.maps.cgroup_drops.remove(&cgroup);
        }
        if let Ok(per_cpu) = self.probes.maps.drops.get(&0, 0) {
            let total: u64 = per_cpu.iter().sum();
            self.metrics
                .events_dropped_kernel
                .store(total, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
