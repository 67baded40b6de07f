//! Layouts shared by Imprint's eBPF programs (kernel side, `imprint-ebpf`) and the agent
//! (user side, `imprint-agent`): the event the programs put in the ring buffer, the map names
//! and their key/value shapes, and the constants both sides must agree on.
//!
//! The kernel side writes [`Event`] as a `#[repr(C)]` struct; the user side decodes it from the
//! ring buffer's bytes with [`Event::decode`] (plain little-endian field reads at the offsets the
//! compiler gave the struct), so no `unsafe` cast is needed in the agent.
#![cfg_attr(not(test), no_std)]

/// Bytes of a path the kernel copies per event (including the terminating NUL). Longer paths
/// arrive cut and flagged with [`FLAG_TRUNCATED`].
pub const PATH_LEN: usize = 512;

/// Words of the per-cgroup system call bitmap: 8 × 64 = 512 bits, above every x86_64 number.
pub const SYSCALL_WORDS: usize = 8;

/// `WINDOW` index of the current window generation.
pub const WINDOW_GENERATION: u32 = 0;
/// `WINDOW` index of the generation below which the cache slots have been collected.
pub const WINDOW_COLLECTED: u32 = 1;

/// Slots per CPU of the syscall bitmap cache in front of `SYSCALLS` (a power of two).
pub const SYSCALL_SLOTS: u32 = 1024;

/// A `SYSCALL_CACHE` slot: `[cgroup id, window generation, bitmap words…]`.
pub type SyscallSlot = [u64; 2 + SYSCALL_WORDS];

/// Ring buffer for events (bytes; a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 23;

/// Map names, as the agent looks them up.
pub mod maps {
    /// `RingBuf` of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<SyscallSlot>` of [`crate::SYSCALL_SLOTS`]: the bitmap of the cgroup last
    /// seen at its slot (see [`crate::GLOBAL_SYSCALL_SLOT_MASK`]) on that CPU, in the window it names. A
    /// cgroup taking a slot another holds spills the other's bits into `SYSCALLS`.
    pub const SYSCALL_CACHE: &str = "SYSCALL_CACHE";
    /// `PerCpuHashMap<u64, [u64; SYSCALL_WORDS]>`: key `(cgroup_id << 1) | (generation & 1)`:
    /// the bits spilled from `SYSCALL_CACHE`.
    pub const SYSCALLS: &str = "SYSCALLS";
    /// `Array<u64>` with two entries: at [`crate::WINDOW_GENERATION`] the window generation the
    /// agent advances each window; at [`crate::WINDOW_COLLECTED`] the generation below which
    /// it has read the `SYSCALL_CACHE` slots.
    pub const WINDOW: &str = "WINDOW";
    /// `LruHashMap<u64, [u64; 2]>`: item hash → `[generation, hits in that generation]`.
    pub const SEEN: &str = "SEEN";
    /// `HashMap<u64, u8>`: cgroup ids whose events are not recorded (host cgroups).
    pub const EXCLUDED: &str = "EXCLUDED";
    /// `PerCpuArray<u64>` with one entry: failed ring buffer writes on that CPU.
    pub const DROPS: &str = "DROPS";
    /// `LruHashMap<u64, u64>`: cgroup id → failed ring buffer writes for it.
    pub const CGROUP_DROPS: &str = "CGROUP_DROPS";
    /// `Array<u32>` with one entry: which parts of the shared `sys_enter` program run
    /// ([`crate::CAPTURE_SYSCALLS`], [`crate::CAPTURE_FILES`], [`crate::CAPTURE_NETWORK`]).
    pub const CAPTURE: &str = "CAPTURE";
}

/// `CAPTURE` bit: record the per-cgroup syscall bitmap.
pub const CAPTURE_SYSCALLS: u32 = 1 << 0;
/// `CAPTURE` bit: stash the arguments of the open calls at entry.
pub const CAPTURE_FILES: u32 = 1 << 1;
/// `CAPTURE` bit: stash the arguments of the socket calls at entry.
pub const CAPTURE_NETWORK: u32 = 1 << 2;

/// Global set at load time: the cgroup id of the cgroup v2 root (the host), never recorded.
pub const GLOBAL_ROOT_CGROUP: &str = "ROOT_CGROUP";

/// Global set at load time (`u32`): slots used per CPU in `SYSCALL_CACHE`, minus one; a
/// cgroup's slot is its id's low bits (ids are inode numbers, given out in sequence).
pub const GLOBAL_SYSCALL_SLOT_MASK: &str = "SYSCALL_SLOT_MASK";

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A successful `execve`/`execveat`: `path` is the file executed (as passed, may be relative).
    Exec = 1,
    /// A successful open: `path` as passed, `fd` the directory fd it is relative to
    /// (`AT_FDCWD` = -100 for the working directory), `flags` the open flags.
    Open = 2,
    /// A TCP port listened or accepted on (`port`).
    TcpIn = 3,
    /// A UDP port explicitly bound (`port`).
    UdpIn = 4,
    /// A TCP connection made to remote `port`.
    TcpOut = 5,
    /// A UDP datagram sent to (or a UDP socket connected to) remote `port`.
    UdpOut = 6,
    /// A socket the kernel side has not seen created (it existed before the agent started) was
    /// listened/accepted/received on (`fd`) or connected/sent to remote `port` (`port` != 0):
    /// the agent finds its protocol and local port in `/proc/<pid>/net`.
    SocketUnknown = 7,
}

impl EventKind {
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Exec,
            2 => Self::Open,
            3 => Self::TcpIn,
            4 => Self::UdpIn,
            5 => Self::TcpOut,
            6 => Self::UdpOut,
            7 => Self::SocketUnknown,
            _ => return None,
        })
    }
}

/// `flags` bit of an [`Event`] whose path did not fit in [`PATH_LEN`].
pub const FLAG_TRUNCATED: u32 = 1 << 31;

/// `AT_FDCWD`: a path relative to the working directory.
pub const AT_FDCWD: i32 = -100;

/// One event from the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// Dedup hash of (cgroup, kind, key): the agent reads the hit count under it from `SEEN`.
    pub hash: u64,
    pub cgroup: u64,
    /// `bpf_get_current_pid_tgid()`: thread group id (the process id) in the high 32 bits.
    pub pid_tgid: u64,
    pub kind: u32,
    pub flags: u32,
    pub fd: i32,
    pub port: u32,
    /// Bytes of `path` used, without the NUL.
    pub path_len: u32,
    pub pad: u32,
    pub path: [u8; PATH_LEN],
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();

    pub const fn zeroed() -> Self {
        Event {
            hash: 0,
            cgroup: 0,
            pid_tgid: 0,
            kind: 0,
            flags: 0,
            fd: 0,
            port: 0,
            path_len: 0,
            pad: 0,
            path: [0; PATH_LEN],
        }
    }

    /// The process id (thread group id) that caused the event.
    pub fn pid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }

    /// The path bytes (without the NUL).
    pub fn path_bytes(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_LEN)]
    }

    /// Decodes an event from ring buffer bytes; `None` when the record is too short.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        use core::mem::offset_of;
        if bytes.len() < Self::SIZE {
            return None;
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let mut path = [0u8; PATH_LEN];
        let at = offset_of!(Event, path);
        path.copy_from_slice(&bytes[at..at + PATH_LEN]);
        Some(Event {
            hash: u64_at(offset_of!(Event, hash)),
            cgroup: u64_at(offset_of!(Event, cgroup)),
            pid_tgid: u64_at(offset_of!(Event, pid_tgid)),
            kind: u32_at(offset_of!(Event, kind)),
            flags: u32_at(offset_of!(Event, flags)),
            fd: u32_at(offset_of!(Event, fd)) as i32,
            port: u32_at(offset_of!(Event, port)),
            path_len: u32_at(offset_of!(Event, path_len)),
            pad: 0,
            path,
        })
    }
}

/// FNV-1a, 64 bit: the dedup hash both sides can compute.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
pub fn fnv_u64(mut hash: u64, value: u64) -> u64 {
    let mut i = 0;
    while i < 8 {
        hash ^= (value >> (i * 8)) & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_every_field_at_its_offset() {
        let mut event = Event::zeroed();
        event.hash = 0x1122_3344_5566_7788;
        event.cgroup = 4242;
        event.pid_tgid = (77u64 << 32) | 78;
        event.kind = EventKind::Open as u32;
        event.flags = 0o101;
        event.fd = AT_FDCWD;
        event.port = 8080;
        event.path_len = 4;
        event.path[..4].copy_from_slice(b"/etc");
        // The bytes the kernel would write: the struct's memory, field by field.
        let mut bytes = [0u8; Event::SIZE];
        use core::mem::offset_of;
        bytes[offset_of!(Event, hash)..][..8].copy_from_slice(&event.hash.to_le_bytes());
        bytes[offset_of!(Event, cgroup)..][..8].copy_from_slice(&event.cgroup.to_le_bytes());
        bytes[offset_of!(Event, pid_tgid)..][..8].copy_from_slice(&event.pid_tgid.to_le_bytes());
        bytes[offset_of!(Event, kind)..][..4].copy_from_slice(&event.kind.to_le_bytes());
        bytes[offset_of!(Event, flags)..][..4].copy_from_slice(&event.flags.to_le_bytes());
        bytes[offset_of!(Event, fd)..][..4].copy_from_slice(&event.fd.to_le_bytes());
        bytes[offset_of!(Event, port)..][..4].copy_from_slice(&event.port.to_le_bytes());
        bytes[offset_of!(Event, path_len)..][..4].copy_from_slice(&event.path_len.to_le_bytes());
        bytes[offset_of!(Event, path)..][..4].copy_from_slice(b"/etc");
        let decoded = Event::decode(&bytes).expect("long enough");
        assert_eq!(decoded.hash, event.hash);
        assert_eq!(decoded.cgroup, 4242);
        assert_eq!(decoded.pid(), 77);
        assert_eq!(EventKind::from_u32(decoded.kind), Some(EventKind::Open));
        assert_eq!(decoded.flags, 0o101);
        assert_eq!(decoded.fd, AT_FDCWD);
        assert_eq!(decoded.port, 8080);
        assert_eq!(decoded.path_bytes(), b"/etc");
        assert!(Event::decode(&bytes[..Event::SIZE - 1]).is_none());
    }
}
