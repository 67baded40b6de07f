//! What the agent reads from `/proc` about a process while handling its event: the directory a
//! relative path is relative to, and what a socket that existed before the agent started is.
//! All lookups are best effort: the process may have exited already.

use std::path::PathBuf;

use imprint_ebpf_common::AT_FDCWD;

/// The `/proc` root (a test may point it elsewhere).
#[derive(Clone, Debug)]
pub struct Proc {
    root: PathBuf,
}

/// Protocol of a socket found in `/proc/<pid>/net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A socket found in `/proc/<pid>/net/{tcp,tcp6,udp,udp6}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub protocol: Protocol,
    pub local_port: u16,
    /// True for a TCP socket in the LISTEN state.
    pub listening: bool,
}

impl Default for Proc {
    fn default() -> Self {
        Proc {
            root: PathBuf::from("/proc"),
        }
    }
}

impl Proc {
    /// The directory a path passed with `dirfd` is relative to, as the process sees it.
    pub fn base_dir(&self, pid: u32, dirfd: i32) -> Option<String> {
        let link = if dirfd == AT_FDCWD {
            self.root.join(pid.to_string()).join("cwd")
        } else {
            self.root
                .join(pid.to_string())
                .join("fd")
                .join(dirfd.to_string())
        };
        let target = std::fs::read_link(link).ok()?;
        let target = target.to_str()?;
        // A deleted directory reads as "/old/path (deleted)": still the best name there is.
        Some(target.trim_end_matches(" (deleted)").to_string())
    }

    /// What socket `fd` of `pid` is, from the process's own network namespace view.
    pub fn socket(&self, pid: u32, fd: i32) -> Option<SocketInfo> {
        let process = self.root.join(pid.to_string());
        let target = std::fs::read_link(process.join("fd").join(fd.to_string())).ok()?;
        let inode: u64 = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        for (file, protocol) in [
            ("tcp", Protocol::Tcp),
            ("tcp6", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("udp6", Protocol::Udp),
        ] {
            let Ok(table) = std::fs::read_to_string(process.join("net").join(file)) else {
                continue;
            };
            if let Some(found) = find_in_table(&table, inode, protocol) {
                return Some(found);
            }
        }
        None
    }

    /// Start of the dynamic (ephemeral) port range; ports from it are not server ports.
    pub fn ephemeral_port_start(&self) -> u16 {
        std::fs::read_to_string(self.root.join("sys/net/ipv4/ip_local_port_range"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768)
    }
}

/// True when this process's effective user is root (the `Uid:` line of /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Finds the socket with `inode` in a `/proc/net/{tcp,udp}[6]` table.
fn find_in_table(table: &str, inode: u64, protocol: Protocol) -> Option<SocketInfo> {
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[9].parse::<u64>().ok() != Some(inode) {
            continue;
        }
        let port_hex = fields[1].rsplit(':').next()?;
        let local_port = u16::from_str_radix(port_hex, 16).ok()?;
        let listening = protocol == Protocol::Tcp && fields[3] == "0A";
        return Some(SocketInfo {
            protocol,
            local_port,
            listening,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n";

    #[test]
    fn finds_a_listening_tcp_socket_by_inode() {
        let found = find_in_table(TCP, 31337, Protocol::Tcp).expect("found");
        assert_eq!(found.local_port, 8080);
        assert!(found.listening);
        assert_eq!(find_in_table(TCP, 1, Protocol::Tcp), None);
    }

    #[test]
    fn resolves_this_process_working_directory_and_a_real_socket() {
        let proc = Proc::default();
        let pid = std::process::id();
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(proc.base_dir(pid, AT_FDCWD).as_deref(), cwd.to_str());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        use std::os::fd::AsRawFd;
        let info = proc
            .socket(pid, listener.as_raw_fd())
            .expect("socket found");
        assert_eq!(info.protocol, Protocol::Tcp);
        assert_eq!(info.local_port, port);
        assert!(info.listening);
    }
}
