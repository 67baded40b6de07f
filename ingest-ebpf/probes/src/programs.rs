//! The programs and maps. See the crate docs for the overall shape.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use imprint_ebpf_common::{
    AT_FDCWD, EVENTS_BYTES, Event, EventKind, FLAG_TRUNCATED, FNV_OFFSET, FNV_PRIME, PATH_LEN,
    SYSCALL_WORDS, fnv_u64,
};

// ---------------------------------------------------------------------------------------------
// Maps (names and shapes documented in imprint_ebpf_common::maps)

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static SYSCALLS: PerCpuHashMap<u64, [u64; SYSCALL_WORDS]> =
    PerCpuHashMap::with_max_entries(16384, 0);

#[map]
static WINDOW: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static SEEN: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(262_144, 0);

#[map]
static EXCLUDED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CGROUP_DROPS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Arguments stashed at syscall entry, keyed by pid_tgid: `[op, a0, a1, a2]`.
#[map]
static STASH: HashMap<u64, [u64; 4]> = HashMap::with_max_entries(16384, 0);

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

const OP_OPEN: u64 = 1;
const OP_SOCKET: u64 = 2;
const OP_BIND: u64 = 3;
const OP_LISTEN: u64 = 4;
const OP_ACCEPT: u64 = 5;
const OP_CONNECT: u64 = 6;
const OP_SEND: u64 = 7;
const OP_RECV: u64 = 8;

// Offsets in a syscall tracepoint record (tracefs `format`): args are 8 bytes each from 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG4: usize = 48;
const RET: usize = 16;

// ---------------------------------------------------------------------------------------------
// Helpers

#[inline(always)]
fn root_cgroup() -> u64 {
    unsafe { core::ptr::read_volatile(&ROOT_CGROUP) }
}

#[inline(always)]
fn generation() -> u64 {
    WINDOW.get(0).copied().unwrap_or(0)
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
// System calls: the per-cgroup bitmap

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if nr >= (SYSCALL_WORDS as u64) * 64 {
        return 0;
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if cgroup == root_cgroup() {
        return 0;
    }
    let key = (cgroup << 1) | (generation() & 1);
    let word = ((nr >> 6) as usize) & (SYSCALL_WORDS - 1);
    let bit = 1u64 << (nr & 63);
    match SYSCALLS.get_ptr_mut(&key) {
        Some(bits) => unsafe { (*bits)[word] |= bit },
        None => {
            let mut bits = [0u64; SYSCALL_WORDS];
            bits[word] = bit;
            let _ = SYSCALLS.insert(&key, &bits, 0);
        }
    }
    0
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
// Entry: stash the arguments

#[inline(always)]
fn stash(op: u64, a0: u64, a1: u64, a2: u64) {
    if recorded_cgroup().is_none() {
        return;
    }
    let _ = STASH.insert(&bpf_get_current_pid_tgid(), &[op, a0, a1, a2], 0);
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    stash(OP_OPEN, arg(&ctx, ARG0), arg(&ctx, ARG1), arg(&ctx, ARG2));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // `struct open_how` starts with `u64 flags`.
    let how = arg(&ctx, ARG2);
    let flags = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    stash(OP_OPEN, arg(&ctx, ARG0), arg(&ctx, ARG1), flags);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    stash(
        OP_OPEN,
        AT_FDCWD as i64 as u64,
        arg(&ctx, ARG0),
        arg(&ctx, ARG1),
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    stash(
        OP_OPEN,
        AT_FDCWD as i64 as u64,
        arg(&ctx, ARG0),
        O_CREAT | O_WRONLY | O_TRUNC,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    stash(OP_SOCKET, arg(&ctx, ARG0), arg(&ctx, ARG1), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    stash(OP_BIND, arg(&ctx, ARG0), arg(&ctx, ARG1), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    stash(OP_LISTEN, arg(&ctx, ARG0), 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    stash(OP_ACCEPT, arg(&ctx, ARG0), 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    stash(OP_ACCEPT, arg(&ctx, ARG0), 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    stash(OP_CONNECT, arg(&ctx, ARG0), arg(&ctx, ARG1), 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let addr = arg(&ctx, ARG4);
    if addr != 0 {
        stash(OP_SEND, arg(&ctx, ARG0), addr, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // `struct user_msghdr` starts with `void *msg_name`.
    let msg = arg(&ctx, ARG1);
    let name = unsafe { bpf_probe_read_user(msg as *const u64) }.unwrap_or(0);
    if name != 0 {
        stash(OP_SEND, arg(&ctx, ARG0), name, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvfrom")]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    stash(OP_RECV, arg(&ctx, ARG0), 0, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvmsg")]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    stash(OP_RECV, arg(&ctx, ARG0), 0, 0);
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
