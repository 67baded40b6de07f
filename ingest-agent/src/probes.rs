//! Loading the eBPF object, attaching and detaching its programs in groups, and the typed maps
//! the capture loop reads.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use imprint_ebpf_common::{GLOBAL_ROOT_CGROUP, SYSCALL_WORDS, maps};

/// The compiled programs, built by build.rs for the BPF target.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imprint-probes"));

/// Programs attached and detached together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `raw_syscalls/sys_enter`: the per-cgroup syscall bitmap. High volume.
    Syscalls,
    /// Open calls (enter + exit). High volume.
    Files,
    /// Socket calls (enter + exit). High volume on busy servers.
    Network,
    /// `sched_process_exec`. Low volume: never paused by the guard.
    Exec,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Syscalls, Group::Files, Group::Network, Group::Exec];
    /// What the resource guard detaches when the agent is over its limits.
    pub const HIGH_VOLUME: [Group; 3] = [Group::Syscalls, Group::Files, Group::Network];

    pub fn name(self) -> &'static str {
        match self {
            Group::Syscalls => "syscalls",
            Group::Files => "files",
            Group::Network => "network",
            Group::Exec => "exec",
        }
    }

    /// (program name, tracepoint category) of the group's classic tracepoints; the program
    /// name is the tracepoint name.
    fn tracepoints(self) -> &'static [(&'static str, &'static str)] {
        const FILES: &[(&str, &str)] = &[
            ("sys_enter_openat", "syscalls"),
            ("sys_exit_openat", "syscalls"),
            ("sys_enter_openat2", "syscalls"),
            ("sys_exit_openat2", "syscalls"),
            ("sys_enter_open", "syscalls"),
            ("sys_exit_open", "syscalls"),
            ("sys_enter_creat", "syscalls"),
            ("sys_exit_creat", "syscalls"),
        ];
        const NETWORK: &[(&str, &str)] = &[
            ("sys_enter_socket", "syscalls"),
            ("sys_exit_socket", "syscalls"),
            ("sys_enter_bind", "syscalls"),
            ("sys_exit_bind", "syscalls"),
            ("sys_enter_listen", "syscalls"),
            ("sys_exit_listen", "syscalls"),
            ("sys_enter_accept", "syscalls"),
            ("sys_exit_accept", "syscalls"),
            ("sys_enter_accept4", "syscalls"),
            ("sys_exit_accept4", "syscalls"),
            ("sys_enter_connect", "syscalls"),
            ("sys_exit_connect", "syscalls"),
            ("sys_enter_sendto", "syscalls"),
            ("sys_exit_sendto", "syscalls"),
            ("sys_enter_sendmsg", "syscalls"),
            ("sys_exit_sendmsg", "syscalls"),
            ("sys_enter_recvfrom", "syscalls"),
            ("sys_exit_recvfrom", "syscalls"),
            ("sys_enter_recvmsg", "syscalls"),
            ("sys_exit_recvmsg", "syscalls"),
        ];
        match self {
            Group::Syscalls => &[],
            Group::Files => FILES,
            Group::Network => NETWORK,
            Group::Exec => &[("sched_process_exec", "sched")],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused to load the eBPF object: {0}\n(the agent needs root, or CAP_BPF + CAP_PERFMON, and a kernel with BTF and ring buffers, 5.8 or later)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {program} ({what}): {source}")]
    Program {
        program: &'static str,
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
}

enum Link {
    Raw(&'static str, RawTracePointLinkId),
    Tp(&'static str, TracePointLinkId),
}

/// The maps the agent reads or writes.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub syscalls: PerCpuHashMap<MapData, u64, [u64; SYSCALL_WORDS]>,
    pub window: Array<MapData, u64>,
    pub seen: HashMap<MapData, u64, [u64; 2]>,
    pub excluded: HashMap<MapData, u64, u8>,
    pub drops: PerCpuArray<MapData, u64>,
    pub cgroup_drops: HashMap<MapData, u64, u64>,
}

/// The loaded programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
    links: StdHashMap<Group, Vec<Link>>,
    pub maps: Maps,
}

impl Probes {
    /// Loads every program (the verifier runs here) without attaching any.
    pub fn load(root_cgroup: u64) -> Result<Probes, ProbeError> {
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_ROOT_CGROUP, &root_cgroup, true)
            .load(OBJECT)
            .map_err(ProbeError::Load)?;
        for group in Group::ALL {
            if group == Group::Syscalls {
                let program: &mut RawTracePoint = program_mut(&mut ebpf, "sys_enter")?;
                program.load().map_err(|source| ProbeError::Program {
                    program: "sys_enter",
                    what: "verifier",
                    source,
                })?;
            }
            for (name, _) in group.tracepoints() {
                let program: &mut TracePoint = program_mut(&mut ebpf, name)?;
                program.load().map_err(|source| ProbeError::Program {
                    program: name,
                    what: "verifier",
                    source,
                })?;
            }
        }
        let maps = Maps {
            events: take_map(&mut ebpf, maps::EVENTS)?,
            syscalls: take_map(&mut ebpf, maps::SYSCALLS)?,
            window: take_map(&mut ebpf, maps::WINDOW)?,
            seen: take_map(&mut ebpf, maps::SEEN)?,
            excluded: take_map(&mut ebpf, maps::EXCLUDED)?,
            drops: take_map(&mut ebpf, maps::DROPS)?,
            cgroup_drops: take_map(&mut ebpf, maps::CGROUP_DROPS)?,
        };
        Ok(Probes {
            ebpf,
            links: StdHashMap::new(),
            maps,
        })
    }

    pub fn is_attached(&self, group: Group) -> bool {
        self.links.contains_key(&group)
    }

    /// Attaches a group's programs (no-op when attached).
    pub fn attach(&mut self, group: Group) -> Result<(), ProbeError> {
        if self.is_attached(group) {
            return Ok(());
        }
        ensure_tracefs();
        let mut links = Vec::new();
        if group == Group::Syscalls {
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, "sys_enter")?;
            let id = program
                .attach("sys_enter")
                .map_err(|source| ProbeError::Program {
                    program: "sys_enter",
                    what: "attach to raw tracepoint sys_enter",
                    source,
                })?;
            links.push(Link::Raw("sys_enter", id));
        }
        for (name, category) in group.tracepoints() {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            let id = program
                .attach(category, name)
                .map_err(|source| ProbeError::Program {
                    program: name,
                    what: "attach to tracepoint",
                    source,
                })?;
            links.push(Link::Tp(name, id));
        }
        self.links.insert(group, links);
        Ok(())
    }

    /// Detaches a group's programs (no-op when detached).
    pub fn detach(&mut self, group: Group) -> Result<(), ProbeError> {
        let Some(links) = self.links.remove(&group) else {
            return Ok(());
        };
        for link in links {
            match link {
                Link::Raw(name, id) => {
                    let program: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
                    program.detach(id).map_err(|source| ProbeError::Program {
                        program: name,
                        what: "detach",
                        source,
                    })?;
                }
                Link::Tp(name, id) => {
                    let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
                    program.detach(id).map_err(|source| ProbeError::Program {
                        program: name,
                        what: "detach",
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing("a program it should have"))?;
    program.try_into().map_err(|source| ProbeError::Program {
        program: name,
        what: "type",
        source,
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Tracepoints attach through tracefs, which is not always mounted.
fn ensure_tracefs() {
    let events = std::path::Path::new("/sys/kernel/tracing/events");
    if events.exists() || std::path::Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::warn!("tracefs is not mounted at /sys/kernel/tracing and mounting it failed");
    }
}
