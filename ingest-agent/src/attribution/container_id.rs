//! Container ids from cgroup paths, for the layouts the common runtimes use:
//!
//! | runtime | cgroup path (cgroupfs / systemd driver) |
//! |---|---|
//! | podman / libpod | `/libpod_parent/libpod-<id>`, `/machine.slice/libpod-<id>.scope` |
//! | Docker | `/docker/<id>`, `/system.slice/docker-<id>.scope` |
//! | containerd (CRI) | `/kubepods/…/<id>`, `/kubepods.slice/…/cri-containerd-<id>.scope` |
//! | containerd (nerdctl) | `/<namespace>/<id>` (see `containerd.rs`), `/system.slice/nerdctl-<id>.scope` |
//! | CRI-O | `/kubepods/…/crio-<id>`, `…/crio-<id>.scope` |
//!
//! `<id>` is 64 lowercase hex characters. conmon's own cgroups (`libpod-conmon-…`,
//! `crio-conmon-…`) are not containers. The component nearest the root that names a container
//! wins: the runtime made that one, while a container with a writable cgroupfs (systemd inside,
//! `--privileged`, a delegated subtree) can make sub-cgroups of its own with any name — such as
//! `libpod-<another container's id>` — and they still belong to it.

use imprint_proto::digest::is_lower_hex64;

/// Which runtime a cgroup path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Podman,
    Docker,
    Containerd,
    CriO,
    /// A 64-hex component without a known prefix (Docker or containerd with the cgroupfs driver).
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Unknown => "unknown",
        }
    }
}

/// The container a cgroup path belongs to: (runtime, 64-hex id).
pub fn parse(path: &str) -> Option<(Runtime, String)> {
    for component in path.split('/') {
        if let Some(found) = parse_component(component) {
            return Some(found);
        }
    }
    None
}

fn parse_component(component: &str) -> Option<(Runtime, String)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("conmon") {
        return None;
    }
    const PREFIXES: [(&str, Runtime); 5] = [
        ("libpod-", Runtime::Podman),
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return is_lower_hex64(id).then(|| (runtime, id.to_string()));
        }
    }
    is_lower_hex64(name).then(|| (Runtime::Unknown, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c0d2a9b8e7f6a5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";

    #[test]
    fn every_runtime_layout() {
        let cases = [
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
            ),
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Unknown),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
            ),
            (
                format!("/system.slice/nerdctl-{ID}.scope"),
                Runtime::Containerd,
            ),
            (
                format!("/kubepods/besteffort/pod1/crio-{ID}"),
                Runtime::CriO,
            ),
        ];
        for (path, runtime) in cases {
            assert_eq!(parse(&path), Some((runtime, ID.to_string())), "{path}");
        }
    }

    #[test]
    fn a_sub_cgroup_named_like_another_container_still_belongs_to_its_own() {
        let other = "0".repeat(64);
        for path in [
            format!("/machine.slice/libpod-{ID}.scope/libpod-{other}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container/docker-{other}.scope"),
            format!("/system.slice/docker-{ID}.scope/{other}"),
            format!("/kubepods/besteffort/pod1/crio-{ID}/crio-{other}"),
        ] {
            assert_eq!(
                parse(&path).map(|(_, id)| id),
                Some(ID.to_string()),
                "{path}"
            );
        }
    }

    #[test]
    fn conmon_and_host_cgroups_are_not_containers() {
        assert_eq!(parse(&format!("/libpod_parent/libpod-conmon-{ID}")), None);
        assert_eq!(parse("/system.slice/sshd.service"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/libpod_parent/libpod-notanid"), None);
    }
}
