//! Imprint's kernel-side programs. Tracepoints only (this kernel refuses fentry/kprobes/LSM).
//!
//! - `sys_enter` (raw tracepoint): sets the syscall's bit in a per-cgroup bitmap (no event),
//!   and stashes the arguments of the open, socket and network calls per thread.
//! - `sched_process_exec`: the executed file.
//! - `sys_exit_*` of the stashed calls: acted on at exit, where the return value says whether
//!   the call succeeded and user memory (the path) is faulted in.
//!
//! Every event is deduplicated per window: a hash of (cgroup, kind, key) is looked up in `SEEN`;
//! when it was already sent in the current window generation only its hit counter grows.
//! Layouts and map names live in `imprint-ebpf-common`; see ingest-ebpf/README.md.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

/// Host builds (`cargo build --workspace`) compile this stub; the real object is built for
/// `bpfel-unknown-none` by the agent's build.rs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
