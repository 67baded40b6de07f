//! Loopback ports for the servers that benchmarks and tests start.
//!
//! `bind(":0")` hands out a port from the kernel's ephemeral range and frees it again when
//! the probe closes; by the time the server binds it, any outgoing connection on the machine
//! (tests run in parallel, each making many) may have taken it as its local port. Ports are
//! therefore picked *below* the ephemeral range, where the kernel never assigns on its own, and
//! checked free by binding; two processes picking the same one is left to the caller's retry.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port considered: above the well-known and most registered services.
const LOWEST: u16 = 10_000;

/// A loopback port that is free now and outside the kernel's ephemeral range.
pub fn free_loopback_port() -> u16 {
    let highest = ephemeral_range_start().saturating_sub(1).max(LOWEST + 1000);
    let span = u32::from(highest - LOWEST);
    let mut seed = seed();
    for _ in 0..1000 {
        seed = xorshift(seed);
        let port = LOWEST + (seed % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // A machine whose low ports are all taken: fall back to the kernel's choice.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether a server's output says its port was taken between the pick and its bind.
pub fn port_was_taken(server_output: &str) -> bool {
    server_output.contains("Address already in use")
}

/// The first port of `/proc/sys/net/ipv4/ip_local_port_range` (Linux's default 32768).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Different in every process and every call: the pid, the clock and a counter.
fn seed() -> u32 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(2_654_435_761) ^ nanos ^ calls.wrapping_mul(40_503)) | 1
}

fn xorshift(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let start = ephemeral_range_start();
        for _ in 0..20 {
            let port = free_loopback_port();
            assert!(port >= LOWEST);
            if start > LOWEST + 1000 {
                assert!(
                    port < start,
                    "{port} is in the ephemeral range from {start}"
                );
            }
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
