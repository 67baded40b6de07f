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
use imprint_ebpf_common::{
    CAPTURE_FILES, CAPTURE_NETWORK, CAPTURE_SYSCALLS, GLOBAL_ROOT_CGROUP, GLOBAL_SYSCALL_SLOT_MASK,
    SYSCALL_WORDS, SyscallSlot, maps,
};

/// The compiled programs, built by build.rs for the BPF target (empty when it could not:
/// [`NOT_BUILT`]).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imprint-probes"));

/// Why this agent was built without its eBPF programs, if it was (build.rs found no
/// bpf-linker); such an agent cannot capture anything and refuses to start.
pub const NOT_BUILT: Option<&str> = option_env!("IMPRINT_EBPF_NOT_BUILT");

/// The embedded object, or why there is none.
fn object() -> Result<&'static [u8], ProbeError> {
    match NOT_BUILT {
        Some(reason) => Err(ProbeError::NotBuilt(reason)),
        None => Ok(OBJECT),
    }
}

/// Programs attached and detached together. The three high-volume groups share the raw
/// `sys_enter` program (each has a `CAPTURE` bit switching its part of it); it is attached
/// while any of them is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// The per-cgroup syscall bitmap (in `sys_enter`). High volume.
    Syscalls,
    /// Open calls (entry in `sys_enter`, `sys_exit_*`). High volume.
    Files,
    /// Socket calls (entry in `sys_enter`, `sys_exit_*`). High volume on busy servers.
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

    /// The group's bit in `CAPTURE` when it runs part of `sys_enter`.
    fn capture_bit(self) -> Option<u32> {
        match self {
            Group::Syscalls => Some(CAPTURE_SYSCALLS),
            Group::Files => Some(CAPTURE_FILES),
            Group::Network => Some(CAPTURE_NETWORK),
            Group::Exec => None,
        }
    }

    /// (program name, tracepoint category) of the group's classic tracepoints; the program
    /// name is the tracepoint name.
    fn tracepoints(self) -> &'static [(&'static str, &'static str)] {
        const FILES: &[(&str, &str)] = &[
            ("sys_exit_openat", "syscalls"),
            ("sys_exit_openat2", "syscalls"),
            ("sys_exit_open", "syscalls"),
            ("sys_exit_creat", "syscalls"),
        ];
        const NETWORK: &[(&str, &str)] = &[
            ("sys_exit_socket", "syscalls"),
            ("sys_exit_bind", "syscalls"),
            ("sys_exit_listen", "syscalls"),
            ("sys_exit_accept", "syscalls"),
            ("sys_exit_accept4", "syscalls"),
            ("sys_exit_connect", "syscalls"),
            ("sys_exit_sendto", "syscalls"),
            ("sys_exit_sendmsg", "syscalls"),
            ("sys_exit_recvfrom", "syscalls"),
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
        "this imprint-agent was built without its eBPF programs: {0}; build it again after installing the toolchain"
    )]
    NotBuilt(&'static str),
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

/// The raw tracepoint the high-volume groups share.
const SYS_ENTER: &str = "sys_enter";

/// The maps the agent reads or writes.
pub struct Maps {
    pub events: RingBuf<MapData>,
    pub syscall_cache: PerCpuArray<MapData, SyscallSlot>,
    pub syscalls: PerCpuHashMap<MapData, u64, [u64; SYSCALL_WORDS]>,
    pub window: Array<MapData, u64>,
    pub seen: HashMap<MapData, u64, [u64; 2]>,
    pub excluded: HashMap<MapData, u64, u8>,
    pub drops: PerCpuArray<MapData, u64>,
    pub cgroup_drops: HashMap<MapData, u64, u64>,
    /// Which parts of `sys_enter` run; written only here, on attach and detach.
    capture: Array<MapData, u32>,
}

/// The loaded programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
    /// The classic tracepoints attached, per attached group (empty for `Syscalls`).
    links: StdHashMap<Group, Vec<(&'static str, TracePointLinkId)>>,
    /// `sys_enter`, while any high-volume group is attached.
    sys_enter: Option<RawTracePointLinkId>,
    pub maps: Maps,
}

impl Probes {
    /// Loads every program (the verifier runs here) without attaching any.
    /// `syscall_cache_slots`: a power of two up to [`imprint_ebpf_common::SYSCALL_SLOTS`].
    pub fn load(root_cgroup: u64, syscall_cache_slots: u32) -> Result<Probes, ProbeError> {
        let slot_mask = syscall_cache_slots - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_ROOT_CGROUP, &root_cgroup, true)
            .override_global(GLOBAL_SYSCALL_SLOT_MASK, &slot_mask, true)
            .load(object()?)
            .map_err(ProbeError::Load)?;
        let program: &mut RawTracePoint = program_mut(&mut ebpf, SYS_ENTER)?;
        program.load().map_err(failed(SYS_ENTER, "verifier"))?;
        for group in Group::ALL {
            for (name, _) in group.tracepoints() {
                let program: &mut TracePoint = program_mut(&mut ebpf, name)?;
                program.load().map_err(failed(name, "verifier"))?;
            }
        }
        let maps = Maps {
            events: take_map(&mut ebpf, maps::EVENTS)?,
            syscall_cache: take_map(&mut ebpf, maps::SYSCALL_CACHE)?,
            syscalls: take_map(&mut ebpf, maps::SYSCALLS)?,
            window: take_map(&mut ebpf, maps::WINDOW)?,
            seen: take_map(&mut ebpf, maps::SEEN)?,
            excluded: take_map(&mut ebpf, maps::EXCLUDED)?,
            drops: take_map(&mut ebpf, maps::DROPS)?,
            cgroup_drops: take_map(&mut ebpf, maps::CGROUP_DROPS)?,
            capture: take_map(&mut ebpf, maps::CAPTURE)?,
        };
        Ok(Probes {
            ebpf,
            links: StdHashMap::new(),
            sys_enter: None,
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
        // Exits first, then the entry side, so no entry is stashed without its exit to act.
        let mut links = Vec::new();
        for (name, category) in group.tracepoints() {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            match program.attach(category, name) {
                Ok(id) => links.push((*name, id)),
                Err(source) => {
                    self.detach_tracepoints(links)?;
                    return Err(failed(name, "attach to tracepoint")(source));
                }
            }
        }
        self.links.insert(group, links);
        if let Some(bit) = group.capture_bit()
            && let Err(error) = self.attach_entry(bit)
        {
            // Not half attached: the exits go again.
            let _ = self.detach(group);
            return Err(error);
        }
        Ok(())
    }

    /// Switches on a group's part of `sys_enter`, attaching the program if no group had.
    fn attach_entry(&mut self, bit: u32) -> Result<(), ProbeError> {
        self.set_capture(bit, true)?;
        if self.sys_enter.is_none() {
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, SYS_ENTER)?;
            let id = program
                .attach(SYS_ENTER)
                .map_err(failed(SYS_ENTER, "attach to raw tracepoint sys_enter"))?;
            self.sys_enter = Some(id);
        }
        Ok(())
    }

    /// Detaches a group's programs (no-op when detached).
    pub fn detach(&mut self, group: Group) -> Result<(), ProbeError> {
        let Some(links) = self.links.remove(&group) else {
            return Ok(());
        };
        // Every step runs even when one fails: the group is then detached as far as it can be.
        let entry = match group.capture_bit() {
            Some(bit) => self.detach_entry(bit),
            None => Ok(()),
        };
        let exits = self.detach_tracepoints(links);
        entry.and(exits)
    }

    /// Switches off a group's part of `sys_enter`, detaching the program once no group uses it.
    fn detach_entry(&mut self, bit: u32) -> Result<(), ProbeError> {
        let switched = self.set_capture(bit, false);
        let still_used = Group::HIGH_VOLUME.iter().any(|g| self.is_attached(*g));
        if let (false, Some(id)) = (still_used, self.sys_enter.take()) {
            let program: &mut RawTracePoint = program_mut(&mut self.ebpf, SYS_ENTER)?;
            program.detach(id).map_err(failed(SYS_ENTER, "detach"))?;
        }
        switched
    }

    fn detach_tracepoints(
        &mut self,
        links: Vec<(&'static str, TracePointLinkId)>,
    ) -> Result<(), ProbeError> {
        for (name, id) in links {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            program.detach(id).map_err(failed(name, "detach"))?;
        }
        Ok(())
    }

    fn set_capture(&mut self, bit: u32, on: bool) -> Result<(), ProbeError> {
        let map_error = |source| ProbeError::Map {
            name: maps::CAPTURE,
            source,
        };
        let current = self.maps.capture.get(&0, 0).map_err(map_error)?;
        let next = if on { current | bit } else { current & !bit };
        self.maps.capture.set(0, next, 0).map_err(map_error)
    }
}

/// The empty program on `sys_enter`, attached while this lives: the agent benchmark's measure
/// of what hooking every syscall costs by itself. Not used by the agent.
pub struct EmptySysEnter {
    _ebpf: Ebpf,
}

impl EmptySysEnter {
    pub fn attach() -> Result<EmptySysEnter, ProbeError> {
        const NAME: &str = "empty_sys_enter";
        let mut ebpf = EbpfLoader::new()
            .load(object()?)
            .map_err(ProbeError::Load)?;
        let program: &mut RawTracePoint = program_mut(&mut ebpf, NAME)?;
        program.load().map_err(failed(NAME, "verifier"))?;
        // The link belongs to the program: dropping `ebpf` detaches it.
        program
            .attach(SYS_ENTER)
            .map_err(failed(NAME, "attach to raw tracepoint sys_enter"))?;
        Ok(EmptySysEnter { _ebpf: ebpf })
    }
}

/// What to make of a program's `what` step failing.
fn failed(
    program: &'static str,
    what: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    move |source| ProbeError::Program {
        program,
        what,
        source,
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing("a program it should have"))?;
    program.try_into().map_err(failed(name, "type"))
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
