//! Helpers for the agent tests: whether eBPF tests can run here, a running `imprint-agent`,
//! cgroups of the test's own, the podman test image, and strace as an oracle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imprint_proto::admin_v1::{CreateTokenRequest, admin_client::AdminClient};

use crate::{Imprintd, bin, free_port, workspace_root};

/// Why the eBPF tests cannot run on this machine, if they cannot. With
/// `IMPRINT_REQUIRE_EBPF=1` (the test command sets it when run as root, as CI does) a reason
/// is a test failure instead of a skip.
pub fn ebpf_unavailable() -> Option<String> {
    let reason = if !imprint_agent::procfs::is_root() {
        Some("not running as root (loading eBPF programs needs root)".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".to_string())
    } else if imprint_agent::attribution::cgroups::find_mount().is_none() {
        Some("no cgroup v2 mount".to_string())
    } else {
        imprint_agent::probes::NOT_BUILT
            .map(|why| format!("the agent was built without its eBPF programs: {why}"))
    };
    if let Some(reason) = &reason
        && std::env::var("IMPRINT_REQUIRE_EBPF").as_deref() == Ok("1")
    {
        panic!("eBPF tests must run here (IMPRINT_REQUIRE_EBPF=1) but cannot: {reason}");
    }
    reason
}

/// Records the skip ([`crate::skip`]); use as
/// `let Some(()) = require_ebpf("what the test is") else { return };`.
pub fn require_ebpf(test: &str) -> Option<()> {
    match ebpf_unavailable() {
        Some(reason) => {
            crate::skip::skipped(&format!("{test}: {reason}"));
            None
        }
        None => Some(()),
    }
}

/// A cgroup v2 directory of the test's own (removed on drop).
#[derive(Debug)]
pub struct TestCgroup {
    /// Path under the mount, e.g. `/imprint-test-1234-a`.
    pub path: String,
    dir: PathBuf,
}

impl TestCgroup {
    pub fn create(name: &str) -> TestCgroup {
        let mount = imprint_agent::attribution::cgroups::find_mount().expect("cgroup v2 mount");
        let path = format!("/imprint-test-{}-{name}", std::process::id());
        let dir = mount.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        TestCgroup { path, dir }
    }

    /// `sh -c script` that moves itself into this cgroup before anything else.
    fn command(&self, script: &str) -> Command {
        let procs = self.dir.join("cgroup.procs");
        let full = format!(
            "echo $$ > {} && exec /bin/sh -c '{}'",
            procs.display(),
            script.replace('\'', r"'\''")
        );
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(full);
        command
    }

    /// Runs `script` inside this cgroup and waits for it.
    pub fn run(&self, script: &str) -> Output {
        self.command(script).output().expect("run in cgroup")
    }

    /// Starts `script` inside this cgroup without waiting.
    pub fn spawn(&self, script: &str) -> Child {
        self.command(script).spawn().expect("start in cgroup")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes still inside keep it busy; they are the test's own and have ended by now.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A fresh image digest for a test's static mapping.
pub fn test_digest(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("{seed}-{}", std::process::id()).as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Creates a token with the `agent` scope on `server` and writes it to `dir/agent-token`.
pub async fn agent_token_file(server: &Imprintd, dir: &Path) -> PathBuf {
    let path = dir.join("agent-token");
    if server.token.is_empty() {
        std::fs::write(&path, "").expect("write token");
        return path;
    }
    let mut admin = AdminClient::new(server.authed().await);
    let created = admin
        .create_token(CreateTokenRequest {
            name: "agent-test".into(),
            scopes: vec!["agent".into()],
            expires_in_seconds: 0,
            agent_ids: vec![],
        })
        .await
        .expect("create agent token")
        .into_inner();
    std::fs::write(&path, created.secret).expect("write token");
    path
}

/// A running `imprint-agent`.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    pub metrics_addr: String,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Agent {
    /// Starts the agent against `server` with its spool under `dir`, and waits until it serves
    /// /metrics (its programs are attached by then).
    pub fn start(
        server_url: &str,
        token_file: &Path,
        dir: &Path,
        node: &str,
        extra: &[&str],
    ) -> Agent {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--server".into(),
            server_url.into(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--node".into(),
            node.into(),
            "--spool-dir".into(),
            dir.join(format!("spool-{node}")).display().to_string(),
            "--metrics-addr".into(),
            metrics_addr.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // A test asks only the runtimes it started: never a containerd the machine may run.
        if !extra.contains(&"--containerd-socket") {
            args.extend(["--containerd-socket".into(), "/nonexistent".into()]);
        }
        let mut agent = Agent {
            child: None,
            metrics_addr,
            log: dir.join(format!("agent-{node}.log")),
            args,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(bin("imprint-agent"))
            .args(&self.args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start imprint-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_metrics().is_none() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "imprint-agent exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "imprint-agent did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_metrics(&self) -> Option<HashMap<String, f64>> {
        let output = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                &format!("http://{}/metrics", self.metrics_addr),
            ])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.split_once(' ')?;
                    Some((name.to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// One metric (without the `imprint_agent_` prefix).
    pub fn metric(&self, name: &str) -> f64 {
        let metrics = self.try_metrics().expect("agent /metrics");
        *metrics
            .get(&format!("imprint_agent_{name}"))
            .unwrap_or_else(|| panic!("no metric imprint_agent_{name}"))
    }

    /// Waits until `check(metric)` holds.
    pub fn wait_metric(&self, name: &str, timeout: Duration, check: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name);
            if check(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name} stayed at {value} for {timeout:?}; agent log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM and wait: the agent closes its window and sends what it has.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "imprint-agent did not stop within 30 s:\n{}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `podman` with the tests' containers.conf.
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env(
        "CONTAINERS_CONF",
        workspace_root().join("tests/containers/containers.conf"),
    );
    command
}

/// Builds (once per machine) the workload image and returns its image id (`sha256:…`).
pub fn workload_image() -> String {
    let script = workspace_root().join("tests/containers/build-image.sh");
    let output = Command::new(&script).output().expect("build-image.sh");
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let id = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .expect("image id")
        .trim()
        .to_string();
    format!("sha256:{id}")
}

/// `podman system service` on a socket of the test's own (the Docker-compatible API).
#[derive(Debug)]
pub struct PodmanService {
    child: Child,
    pub socket: PathBuf,
}

impl PodmanService {
    pub fn start(dir: &Path) -> PodmanService {
        let socket = dir.join("podman.sock");
        let child = podman()
            .args([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", socket.display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman service socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        PodmanService { child, socket }
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A containerd of the test's own (its root, state and socket in a temporary directory, the
/// CRI plugin off), driven with `ctr`. Debian's `containerd` package; runc runs the containers.
#[derive(Debug)]
pub struct ContainerdService {
    child: Child,
    pub socket: PathBuf,
}

impl ContainerdService {
    pub fn start(dir: &Path) -> ContainerdService {
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n",
                root = dir.join("containerd-root").display(),
                state = dir.join("containerd-state").display(),
                socket = socket.display(),
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd (is the containerd package installed?)");
        let mut service = ContainerdService { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !service.ctr("imprint", &["version"]).status.success() {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "containerd exited with {status}: {}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        service
    }

    /// `ctr --address <socket> --namespace <namespace> <args>`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Like [`ctr`](Self::ctr), failing the test with ctr's stderr unless it succeeds.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let output = self.ctr(namespace, args);
        assert!(
            output.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for ContainerdService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What strace saw a command do (`strace -f`): syscall names, executed files, and files
/// opened successfully (path as passed, with the open flags' access mode).
#[derive(Debug, Default)]
pub struct StraceOracle {
    pub syscalls: std::collections::BTreeSet<String>,
    pub execs: std::collections::BTreeSet<String>,
    pub opens: std::collections::BTreeSet<String>,
}

impl StraceOracle {
    /// Parses `strace -f -qq -o FILE` output. With `-f`, a call another process interrupts is
    /// split into `name(args <unfinished ...>` and `<... name resumed>rest) = ret` lines of the
    /// same pid: they are joined before reading.
    pub fn parse(text: &str) -> StraceOracle {
        let mut oracle = StraceOracle::default();
        let mut unfinished: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            let (pid, call) = line.split_once(' ').unwrap_or(("", line));
            let call = call.trim_start();
            if call.starts_with("+++") || call.starts_with("---") {
                continue;
            }
            let joined;
            let call = if let Some(head) = call.strip_suffix(" <unfinished ...>") {
                unfinished.insert(pid.to_string(), head.to_string());
                continue;
            } else if let Some(rest) = call.strip_prefix("<... ") {
                let Some((_, tail)) = rest.split_once(" resumed>") else {
                    continue;
                };
                let Some(head) = unfinished.remove(pid) else {
                    continue;
                };
                joined = format!("{head}{tail}");
                joined.as_str()
            } else {
                call
            };
            let Some(paren) = call.find('(') else {
                continue;
            };
            let name = &call[..paren];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            oracle.syscalls.insert(name.to_string());
            let failed = call
                .rsplit_once(" = ")
                .is_none_or(|(_, ret)| ret.starts_with('-') || ret.starts_with('?'));
            if failed {
                continue;
            }
            let first_string = call[paren..].split('"').nth(1).map(str::to_string);
            match name {
                "execve" | "execveat" => {
                    if let Some(path) = first_string {
                        oracle.execs.insert(path);
                    }
                }
                "open" | "openat" | "openat2" | "creat" => {
                    if let Some(path) = first_string {
                        oracle.opens.insert(path);
                    }
                }
                _ => {}
            }
        }
        oracle
    }
}

/// Recall of `expected` in `found`, and what is missing.
pub fn recall<'a>(
    expected: impl IntoIterator<Item = &'a String>,
    found: &std::collections::BTreeSet<String>,
) -> (f64, Vec<String>) {
    let expected: Vec<&String> = expected.into_iter().collect();
    if expected.is_empty() {
        return (1.0, vec![]);
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !found.contains(**e))
        .map(|e| e.to_string())
        .collect();
    (1.0 - missing.len() as f64 / expected.len() as f64, missing)
}

#[cfg(test)]
mod tests {
    #[test]
    fn strace_lines_joined_across_interruptions() {
        let text = "10 execve(\"/bin/sh\", [\"sh\"], 0x7ffd /* 5 vars */) = 0\n\
                    11 openat(AT_FDCWD, \"/etc/passwd\", O_RDONLY <unfinished ...>\n\
                    10 read(3, \"x\", 1) = 1\n\
                    11 <... openat resumed>) = 3\n\
                    12 openat(AT_FDCWD, \"/nope\", O_RDONLY) = -1 ENOENT (No such file or directory)\n\
                    12 +++ exited with 0 +++\n";
        let oracle = super::StraceOracle::parse(text);
        assert_eq!(oracle.execs.iter().collect::<Vec<_>>(), vec!["/bin/sh"]);
        assert_eq!(oracle.opens.iter().collect::<Vec<_>>(), vec!["/etc/passwd"]);
        assert!(oracle.syscalls.contains("read") && oracle.syscalls.contains("openat"));
    }
}
