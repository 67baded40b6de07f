//! The programs and maps. See the crate docs for the overall shape.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use imprint_ebpf_common::{
    AT_FDCWD, CAPTURE_FILES, CAPTURE_NETWORK, CAPTURE_SYSCALLS, EVENTS_BYTES, Event, EventKind,
    FLAG_TRUNCATED, FNV_OFFSET, FNV_PRIME, PATH_LEN, SYSCALL_SLOTS, SYSCALL_WORDS, SyscallSlot,
    WINDOW_COLLECTED, WINDOW_GENERATION, fnv_u64,
};

// ---------------------------------------------------------------------------------------------
// Maps (names and shapes documented in imprint_ebpf_common::maps)

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static SYSCALL_CACHE: PerCpuArray<SyscallSlot> = PerCpuArray::with_max_entries(SYSCALL_SLOTS, 0);

#[map]
static SYSCALLS: PerCpuHashMap<u64, [u64; SYSCALL_WORDS]> =
    PerCpuHashMap::with_max_entries(16384, 0);

#[map]
static WINDOW: Array<u64> = Array::with_max_entries(2, 0);

#[map]
static SEEN: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(262_144, 0);

#[map]
static EXCLUDED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CGROUP_DROPS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Arguments stashed at syscall entry, keyed by pid_tgid: `[op, a0, a1, a2]`. LRU, so the
/// stash of a thread whose exit never ran (its exit programs detached meanwhile) ages out.
#[map]
static STASH: LruHashMap<u64, [u64; 4]> = LruHashMap::with_max_entries(16384, 0);

/// Which parts of `sys_enter` run (`CAPTURE_*` bits), set by the agent per program group.
#[map]
static CAPTURE: Array<u32> = Array::with_max_entries(1, 0);

/// Sockets seen created: `(tgid << 32) | fd` → `(family << 16) | type`.
#[map]
static SOCKETS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// TCP sockets seen bound: `(tgid << 32) | fd` → local port.
#[map]
static BOUND: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU scratch for building an event (too large for the 512-byte BPF stack).
#[map]
static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Set by the agent at load: the cgroup v2 root's id (the host), never recorded.
#[unsafe(no_mangle)]
static ROOT_CGROUP: u64 = 1;

/// Set by the agent at load: `SYSCALL_CACHE` slots used per CPU, minus one.
#[unsafe(no_mangle)]
static SYSCALL_SLOT_MASK: u32 = SYSCALL_SLOTS - 1;

// ---------------------------------------------------------------------------------------------
// Constants of the x86_64 ABI

const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const EINPROGRESS: i64 = 115;
const O_WRONLY: u64 = 0o1;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_DIRECTORY: u64 = 0o200000;
/// The open flags that make a different item: access mode, create, truncate, directory.
const OPEN_CLASS_FLAGS: u64 = 0o3 | O_CREAT | O_TRUNC | O_DIRECTORY;

// System call numbers (x86_64) of the calls stashed at entry.
const NR_OPEN: u64 = 2;
const NR_SOCKET: u64 = 41;
const NR_CONNECT: u64 = 42;
const NR_ACCEPT: u64 = 43;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;
const NR_BIND: u64 = 49;
const NR_LISTEN: u64 = 50;
const NR_CREAT: u64 = 85;
const NR_OPENAT: u64 = 257;
const NR_ACCEPT4: u64 = 288;
const NR_OPENAT2: u64 = 437;

/// Offset of `r10` in x86_64's `struct pt_regs`; r9, r8, ax, cx, dx, si, di follow it.
const REGS_R10: u64 = 56;

const OP_OPEN: u64 = 1;
const OP_SOCKET: u64 = 2;
const OP_BIND: u64 = 3;
const OP_LISTEN: u64 = 4;
const OP_ACCEPT: u64 = 5;
const OP_CONNECT: u64 = 6;
const OP_SEND: u64 = 7;
const OP_RECV: u64 = 8;

/// Offset of `ret` in a `syscalls/sys_exit_*` record (tracefs `format`).
const RET: usize = 16;

// ---------------------------------------------------------------------------------------------
// Helpers

#[inline(always)]
fn root_cgroup() -> u64 {
    unsafe { core::ptr::read_volatile(&ROOT_CGROUP) }
}

#[inline(always)]
fn slot_mask() -> u32 {
    unsafe { core::ptr::read_volatile(&SYSCALL_SLOT_MASK) }
}

#[inline(always)]
fn generation() -> u64 {
    WINDOW.get(WINDOW_GENERATION).copied().unwrap_or(0)
}

/// The generations below this one have had their `SYSCALL_CACHE` slots read by the agent.
#[inline(always)]
fn collected() -> u64 {
    WINDOW.get(WINDOW_COLLECTED).copied().unwrap_or(0)
}

/// The current cgroup when its events are recorded.
#[inline(always)]
fn recorded_cgroup() -> Option<u64> {
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == root_cgroup() || unsafe { EXCLUDED.get(&cgroup) }.is_some() {
        return None;
    }
    Some(cgroup)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

#[inline(always)]
fn count_drop(cgroup: u64) {
    if let Some(total) = DROPS.get_ptr_mut(0) {
        unsafe { *total += 1 };
    }
    match CGROUP_DROPS.get_ptr_mut(&cgroup) {
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = CGROUP_DROPS.insert(&cgroup, &1, 0);
        }
    }
}

/// Sends the scratch event unless its hash was already sent in this window generation, in
/// which case only the hit count grows. A full ring buffer is counted, and the item is not
/// marked seen, so its next occurrence tries again.
#[inline(always)]
fn send(event: &mut Event, hash: u64) {
    let generation = generation();
    if let Some(seen) = SEEN.get_ptr_mut(&hash) {
        unsafe {
            if (*seen)[0] == generation {
                // Not atomic (the BPF target has no atomic RMW in core): two CPUs hitting
                // one item at once may lose an increment, so counts are lower bounds.
                (*seen)[1] += 1;
                return;
            }
        }
    }
    event.hash = hash;
    if EVENTS.output::<Event>(&*event, 0).is_err() {
        count_drop(event.cgroup);
        return;
    }
    let _ = SEEN.insert(&hash, &[generation, 1], 0);
}

#[inline(always)]
fn scratch() -> Option<&'static mut Event> {
    SCRATCH.get_ptr_mut(0).map(|event| unsafe { &mut *event })
}

#[inline(always)]
fn start_event(kind: EventKind, cgroup: u64) -> Option<&'static mut Event> {
    let event = scratch()?;
    event.cgroup = cgroup;
    event.pid_tgid = bpf_get_current_pid_tgid();
    event.kind = kind as u32;
    event.flags = 0;
    event.fd = 0;
    event.port = 0;
    event.path_len = 0;
    Some(event)
}

#[inline(always)]
fn base_hash(cgroup: u64, kind: EventKind) -> u64 {
    fnv_u64(fnv_u64(FNV_OFFSET, cgroup), kind as u64)
}

#[inline(always)]
fn hash_path(mut hash: u64, event: &Event) -> u64 {
    let len = event.path_len as usize;
    let mut i = 0;
    while i < PATH_LEN {
        if i >= len {
            break;
        }
        hash ^= event.path[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// Records the path length and truncation after a string read of `read` bytes (without NUL).
#[inline(always)]
fn set_path_len(event: &mut Event, read: usize) {
    let len = if read > PATH_LEN - 1 {
        PATH_LEN - 1
    } else {
        read
    };
    event.path_len = len as u32;
    if len >= PATH_LEN - 1 {
        event.flags |= FLAG_TRUNCATED;
    }
}

/// Reads `(family, port)` of a user `struct sockaddr` (IPv4 or IPv6; the port sits at byte 2 of
/// both, in network order). `None` for other families.
#[inline(always)]
fn read_sockaddr(addr: u64) -> Option<u32> {
    if addr == 0 {
        return None;
    }
    let head: [u8; 4] = unsafe { bpf_probe_read_user(addr as *const [u8; 4]) }.ok()?;
    let family = u16::from_ne_bytes([head[0], head[1]]) as u64;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(u16::from_be_bytes([head[2], head[3]]) as u32)
}

#[inline(always)]
fn socket_key(fd: u64) -> u64 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff)
}

// ---------------------------------------------------------------------------------------------
// System call entry: the per-cgroup bitmap, and the arguments of the calls acted on at exit
//
// One raw tracepoint does both: the classic `syscalls/sys_enter_*` tracepoints would
// register the kernel's perf dispatch on *every* syscall entry (measured 2.7–3.2 % of a getppid
// loop), and a second program on every entry would cost another program run.

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == root_cgroup() {
        return 0;
    }
    let capture = CAPTURE.get(0).copied().unwrap_or(0);
    if capture & CAPTURE_SYSCALLS != 0 {
        record_syscall(cgroup, nr);
    }
    let wanted = match nr {
        NR_OPEN | NR_OPENAT | NR_OPENAT2 | NR_CREAT => capture & CAPTURE_FILES,
        NR_SOCKET..=NR_RECVMSG | NR_BIND | NR_LISTEN | NR_ACCEPT4 => capture & CAPTURE_NETWORK,
        _ => 0,
    };
    if wanted != 0 && unsafe { EXCLUDED.get(&cgroup) }.is_none() {
        stash_arguments(&ctx, nr);
    }
    0
}

/// Does nothing: attached alone by the agent benchmark, it measures what hooking every syscall
/// costs by itself (the floor `sys_enter` is compared with). The agent never attaches it.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn empty_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Sets `nr`'s bit for `cgroup` in this window. The hot path is the cgroup's slot in the
/// per-CPU cache (an array lookup the verifier inlines, where a hash lookup was 9 % of a
/// getppid loop); a slot held by another cgroup is spilled into `SYSCALLS` first.
#[inline(always)]
fn record_syscall(cgroup: u64, nr: u64) {
    if nr >= (SYSCALL_WORDS as u64) * 64 {
        return;
    }
    let word = ((nr >> 6) as usize) & (SYSCALL_WORDS - 1);
    let bit = 1u64 << (nr & 63);
    let generation = generation();
    let Some(slot) = SYSCALL_CACHE.get_ptr_mut((cgroup as u32) & slot_mask()) else {
        return;
    };
    // Per-CPU, and programs do not nest on a CPU: nothing else writes this slot meanwhile.
    let slot = unsafe { &mut *slot };
    if slot[0] == cgroup && slot[1] == generation {
        slot[2 + word] |= bit;
        return;
    }
    // Bits of this window, or of the last one before the agent collected its slots, would be
    // lost without a spill; later, the agent has them (a spill would repeat them two windows on).
    let unread = slot[1] == generation || (slot[1] + 1 == generation && collected() <= slot[1]);
    if slot[0] != 0 && unread {
        spill(slot);
    }
    *slot = [0; 2 + SYSCALL_WORDS];
    slot[0] = cgroup;
    slot[1] = generation;
    slot[2 + word] = bit;
}

/// ORs a cache slot's bits into `SYSCALLS` under its cgroup and window parity.
#[inline(always)]
fn spill(slot: &SyscallSlot) {
    let key = (slot[0] << 1) | (slot[1] & 1);
    let or_slot_into = |bits: &mut [u64; SYSCALL_WORDS]| {
        let mut i = 0;
        while i < SYSCALL_WORDS {
            bits[i] |= slot[2 + i];
            i += 1;
        }
    };
    match SYSCALLS.get_ptr_mut(&key) {
        Some(bits) => or_slot_into(unsafe { &mut *bits }),
        None => {
            let mut bits = [0u64; SYSCALL_WORDS];
            or_slot_into(&mut bits);
            let _ = SYSCALLS.insert(&key, &bits, 0);
        }
    }
}

/// Stashes what the exit side needs of call `nr`, its arguments read from the caller's
/// registers (`struct pt_regs`, the raw tracepoint's first argument).
#[inline(always)]
fn stash_arguments(ctx: &RawTracePointContext, nr: u64) {
    let regs: u64 = ctx.arg(0);
    let Ok(r) = (unsafe { bpf_probe_read_kernel((regs + REGS_R10) as *const [u64; 8]) }) else {
        return;
    };
    // x86_64 argument registers, in the order of `r`: r10 r9 r8 ax cx dx si di.
    let (a0, a1, a2, a4) = (r[7], r[6], r[5], r[2]);
    let at_fdcwd = AT_FDCWD as i64 as u64;
    match nr {
        NR_OPENAT => stash(OP_OPEN, a0, a1, a2),
        // `struct open_how` starts with `u64 flags`.
        NR_OPENAT2 => {
            let flags = unsafe { bpf_probe_read_user(a2 as *const u64) }.unwrap_or(0);
            stash(OP_OPEN, a0, a1, flags)
        }
        NR_OPEN => stash(OP_OPEN, at_fdcwd, a0, a1),
        NR_CREAT => stash(OP_OPEN, at_fdcwd, a0, O_CREAT | O_WRONLY | O_TRUNC),
        NR_SOCKET => stash(OP_SOCKET, a0, a1, 0),
        NR_BIND => stash(OP_BIND, a0, a1, 0),
        NR_LISTEN => stash(OP_LISTEN, a0, 0, 0),
        NR_ACCEPT | NR_ACCEPT4 => stash(OP_ACCEPT, a0, 0, 0),
        NR_CONNECT => stash(OP_CONNECT, a0, a1, 0),
        // Only datagrams with an explicit destination say where they go.
        NR_SENDTO if a4 != 0 => stash(OP_SEND, a0, a4, 0),
        NR_SENDMSG => {
            // `struct user_msghdr` starts with `void *msg_name`.
            let name = unsafe { bpf_probe_read_user(a1 as *const u64) }.unwrap_or(0);
            if name != 0 {
                stash(OP_SEND, a0, name, 0)
            }
        }
        NR_RECVFROM | NR_RECVMSG => stash(OP_RECV, a0, 0, 0),
        _ => {}
    }
}

#[inline(always)]
fn stash(op: u64, a0: u64, a1: u64, a2: u64) {
    let _ = STASH.insert(&bpf_get_current_pid_tgid(), &[op, a0, a1, a2], 0);
}

// ---------------------------------------------------------------------------------------------
// Processes

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(cgroup) = recorded_cgroup() else {
        return 0;
    };
    let Some(event) = start_event(EventKind::Exec, cgroup) else {
        return 0;
    };
    // `__data_loc char[] filename` at offset 8: the low 16 bits are the string's offset.
    let loc: u32 = unsafe { ctx.read_at::<u32>(8) }.unwrap_or(0);
    let at = (loc & 0xffff) as usize;
    let src = unsafe { (ctx.as_ptr() as *const u8).add(at) };
    let read = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.path) } {
        Ok(bytes) => bytes.len(),
        Err(_) => return 0,
    };
    set_path_len(event, read);
    let mut hash = base_hash(cgroup, EventKind::Exec);
    if event.path[0] != b'/' {
        hash = fnv_u64(hash, event.pid_tgid >> 32);
    }
    let hash = hash_path(hash, event);
    send(event, hash);
    0
}

// ---------------------------------------------------------------------------------------------
// Exit: act on what was stashed

/// One exit program per traced call, all sharing [`on_exit`].
macro_rules! exit_program {
    ($($name:ident),* $(,)?) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit(&ctx);
            0
        }
    )*};
}

exit_program!(
    sys_exit_openat,
    sys_exit_openat2,
    sys_exit_open,
    sys_exit_creat,
    sys_exit_socket,
    sys_exit_bind,
    sys_exit_listen,
    sys_exit_accept,
    sys_exit_accept4,
    sys_exit_connect,
    sys_exit_sendto,
    sys_exit_sendmsg,
    sys_exit_recvfrom,
    sys_exit_recvmsg,
);

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(stashed) = (unsafe { STASH.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = STASH.remove(&pid_tgid);
    let ret = arg(ctx, RET) as i64;
    let [op, a0, a1, a2] = stashed;
    let Some(cgroup) = recorded_cgroup() else {
        return;
    };
    match op {
        OP_OPEN if ret >= 0 => on_open(cgroup, a0, a1, a2),
        OP_SOCKET if ret >= 0 => {
            if a0 == AF_INET || a0 == AF_INET6 {
                let value = ((a0 as u32) << 16) | ((a1 as u32) & 0xf);
                let _ = SOCKETS.insert(&socket_key(ret as u64), &value, 0);
            }
        }
        OP_BIND if ret == 0 => {
            let Some(port) = read_sockaddr(a1) else {
                return;
            };
            match socket_type(a0) {
                Some(SOCK_DGRAM) => send_port(EventKind::UdpIn, cgroup, port),
                Some(SOCK_STREAM) => {
                    let _ = BOUND.insert(&socket_key(a0), &port, 0);
                }
                Some(_) => {}
                None => send_unknown_socket(cgroup, a0, port),
            }
        }
        OP_LISTEN | OP_ACCEPT if ret >= 0 => match unsafe { BOUND.get(&socket_key(a0)) } {
            Some(port) => send_port(EventKind::TcpIn, cgroup, *port),
            None => {
                if socket_type(a0).is_none() {
                    send_unknown_socket(cgroup, a0, 0);
                }
            }
        },
        OP_CONNECT if ret == 0 || ret == -EINPROGRESS => {
            let Some(port) = read_sockaddr(a1) else {
                return;
            };
            match socket_type(a0) {
                Some(SOCK_STREAM) => send_port(EventKind::TcpOut, cgroup, port),
                Some(SOCK_DGRAM) => send_port(EventKind::UdpOut, cgroup, port),
                Some(_) => {}
                None => send_unknown_socket(cgroup, a0, port),
            }
        }
        OP_SEND if ret >= 0 => {
            let Some(port) = read_sockaddr(a1) else {
                return;
            };
            match socket_type(a0) {
                Some(SOCK_DGRAM) => send_port(EventKind::UdpOut, cgroup, port),
                Some(_) => {}
                None => send_unknown_socket(cgroup, a0, port),
            }
        }
        // A socket created before the agent started: the agent finds out what it is.
        OP_RECV if ret >= 0 => {
            if socket_type(a0).is_none() {
                send_unknown_socket(cgroup, a0, 0);
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn socket_type(fd: u64) -> Option<u32> {
    unsafe { SOCKETS.get(&socket_key(fd)) }.map(|value| value & 0xf)
}

#[inline(always)]
fn send_port(kind: EventKind, cgroup: u64, port: u32) {
    let Some(event) = start_event(kind, cgroup) else {
        return;
    };
    event.port = port;
    let hash = fnv_u64(base_hash(cgroup, kind), port as u64);
    send(event, hash);
}

#[inline(always)]
fn send_unknown_socket(cgroup: u64, fd: u64, port: u32) {
    let Some(event) = start_event(EventKind::SocketUnknown, cgroup) else {
        return;
    };
    event.fd = fd as i32;
    event.port = port;
    let hash = fnv_u64(base_hash(cgroup, EventKind::SocketUnknown), socket_key(fd));
    let hash = fnv_u64(hash, port as u64);
    send(event, hash);
}

#[inline(always)]
fn on_open(cgroup: u64, dirfd: u64, path: u64, flags: u64) {
    let Some(event) = start_event(EventKind::Open, cgroup) else {
        return;
    };
    let read = match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut event.path) } {
        Ok(bytes) => bytes.len(),
        Err(_) => {
            count_drop(cgroup);
            return;
        }
    };
    set_path_len(event, read);
    event.fd = dirfd as i32;
    event.flags |= (flags as u32) & !FLAG_TRUNCATED;
    // The same path read and written are two items; a relative path means something else in
    // another process or directory.
    let mut hash = fnv_u64(base_hash(cgroup, EventKind::Open), flags & OPEN_CLASS_FLAGS);
    if event.path[0] != b'/' {
        hash = fnv_u64(fnv_u64(hash, pid_of(event)), dirfd);
    }
    let hash = hash_path(hash, event);
    send(event, hash);
}

#[inline(always)]
fn pid_of(event: &Event) -> u64 {
    event.pid_tgid >> 32
}
