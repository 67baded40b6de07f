//! The node agent on the real kernel: real eBPF programs, real cgroups and podman containers,
//! strace as the oracle, the real server. Needs root; records a skip with its reason
//! (`imprint_e2e::skip`) where it cannot run, and fails instead when `IMPRINT_REQUIRE_EBPF=1`
//! (the test command sets it as root).
//!
//! The tests run one at a time (a lock): each agent sees every process on the machine, and the
//! workloads use fixed ports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imprint_e2e::agent::{
    Agent, ContainerdService, PodmanService, StraceOracle, TestCgroup, agent_token_file, podman,
    recall, require_ebpf, test_digest, workload_image,
};
use imprint_e2e::{Imprintd, rows_as_text, workspace_root};
use imprint_proto::admin_v1::{SetSettingRequest, admin_client::AdminClient};

/// Async-aware: each test holds it across awaits on its own runtime.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Items of an image (or container) by kind, from the server.
async fn items(server: &Imprintd, filter: &str) -> BTreeMap<String, BTreeSet<String>> {
    let rows = rows_as_text(
        &server
            .sql(&format!(
                "SELECT kind || '|' || key FROM fingerprints WHERE {filter}"
            ))
            .await,
    );
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        if let Some((kind, key)) = row.split_once('|') {
            out.entry(kind.to_string())
                .or_default()
                .insert(key.to_string());
        }
    }
    out
}

fn has(items: &BTreeMap<String, BTreeSet<String>>, kind: &str, key: &str) -> bool {
    items.get(kind).is_some_and(|keys| keys.contains(key))
}

/// The items the workload (tests/containers/workload.sh) must produce, whatever runs it.
fn assert_workload_items(items: &BTreeMap<String, BTreeSet<String>>, marker: &str, context: &str) {
    let expected = [
        ("process", "/usr/bin/cat"),
        ("process", "/usr/bin/ls"),
        ("process", "/usr/bin/python3"),
        ("file_read", "/etc/os-release"),
        ("file_read", "/usr/bin/cat"),
        ("dir_read", "/usr/share"),
        ("file_write", &format!("/tmp/{marker}.txt")),
        ("dir_write", "/tmp"),
        ("tcp_in", "18080"),
        ("tcp_out", "18080"),
        ("udp_in", "15353"),
        ("udp_out", "15353"),
        ("syscall", "openat"),
        ("syscall", "execve"),
        ("syscall", "bind"),
    ];
    let missing: Vec<String> = expected
        .iter()
        .filter(|(kind, key)| !has(items, kind, key))
        .map(|(kind, key)| format!("{kind} {key}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: missing {missing:?}; got {items:#?}"
    );
}

/// The workload scripts, copied to `dir` (host runs use them from there).
fn workload_in(dir: &Path) -> String {
    for file in ["workload.sh", "net.py"] {
        std::fs::copy(
            workspace_root().join("tests/containers").join(file),
            dir.join(file),
        )
        .expect("copy workload");
    }
    dir.join("workload.sh").display().to_string()
}

/// One test's world: a server, an agent token, a cgroup of its own mapped to a fresh digest.
struct Scenario {
    dir: tempfile::TempDir,
    server: Imprintd,
    token: std::path::PathBuf,
    cgroup: TestCgroup,
    digest: String,
}

impl Scenario {
    async fn new(name: &str) -> Scenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Imprintd::start(&dir.path().join("data"), &[]);
        let token = agent_token_file(&server, dir.path()).await;
        Scenario {
            token,
            server,
            cgroup: TestCgroup::create(name),
            digest: test_digest(name),
            dir,
        }
    }

    /// An agent with 1 s windows that maps this scenario's cgroup to its image and asks no
    /// container runtime.
    fn agent(&self, node: &str, extra: &[&str]) -> Agent {
        let mapping = format!("{}={},{node}:1", self.cgroup.path, self.digest);
        let mut args = vec![
            "--window",
            "1s",
            "--cgroup-image",
            &mapping,
            "--runtime-socket",
            "/nonexistent",
        ];
        args.extend_from_slice(extra);
        Agent::start(
            &self.server.grpc_url(),
            &self.token,
            self.dir.path(),
            node,
            &args,
        )
    }
}

const HOST_PATH: &str = "export PATH=/usr/sbin:/usr/bin:/sbin:/bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_cgroup_workload_is_captured_and_strace_finds_nothing_missing() {
    let Some(()) = require_ebpf("agent: plain cgroup vs strace") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("strace").await;
    let agent = s.agent("node-s", &[]);
    strace_finds_nothing_missing(&s, agent).await;
}

/// The kernel keeps a cgroup's syscall bits in a per-CPU cache slot and spills them into a hash
/// map when another cgroup takes the slot. With one slot per CPU and a second cgroup making
/// syscalls all along, the traced workload's bits are spilled over and over: still nothing
/// strace saw may be missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syscalls_survive_cgroups_sharing_a_cache_slot() {
    let Some(()) = require_ebpf("agent: syscall cache spills vs strace") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("spill").await;
    let agent = s.agent("node-c", &["--syscall-cache-slots", "1"]);
    let rival = TestCgroup::create("spill-rival");
    let mut busy = rival.spawn("while :; do cat /proc/self/stat > /dev/null; done");
    let spilled = strace_finds_nothing_missing(&s, agent).await;
    let _ = busy.kill();
    let _ = busy.wait();
    println!("syscall bitmaps spilled: {spilled}");
    assert!(
        spilled > 0.0,
        "no bitmap was spilled: the path under test did not run"
    );
}

/// Runs the workload under `strace -f` in the scenario's cgroup with `agent` watching, then
/// checks the workload's items, that they are one container's, and strace's recall (100 %).
/// Returns the agent's count of spilled syscall bitmaps.
async fn strace_finds_nothing_missing(s: &Scenario, mut agent: Agent) -> f64 {
    let (server, cgroup, digest) = (&s.server, &s.cgroup, &s.digest);
    let workload = workload_in(s.dir.path());
    let trace = s.dir.path().join("strace.out");
    let run = cgroup.run(&format!(
        "{HOST_PATH}; cd {} && strace -f -qq -o {} /bin/sh {workload} straced",
        s.dir.path().display(),
        trace.display()
    ));
    assert!(
        run.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let spilled = agent.metric("syscall_bitmaps_spilled_total");
    agent.stop();

    let got = items(server, &format!("image = '{digest}'")).await;
    assert_workload_items(&got, "straced", "plain cgroup");
    let containers = rows_as_text(
        &server
            .sql(&format!(
                "SELECT DISTINCT container_id, image_name FROM windows WHERE image = '{digest}'"
            ))
            .await,
    );
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    assert!(
        containers[0].contains(cgroup.path.trim_start_matches('/')),
        "{containers:?}"
    );

    // strace as the oracle: everything it saw, the agent saw.
    let oracle = StraceOracle::parse(&std::fs::read_to_string(&trace).expect("strace output"));
    let empty = BTreeSet::new();
    let syscalls = got.get("syscall").unwrap_or(&empty);
    let processes = got.get("process").unwrap_or(&empty);
    let files: BTreeSet<String> = ["file_read", "file_write", "dir_read"]
        .iter()
        .flat_map(|k| got.get(*k).cloned().unwrap_or_default())
        .collect();
    let base = s.dir.path().display().to_string();
    let opens: Vec<String> = oracle
        .opens
        .iter()
        .map(|p| imprint_agent::paths::normalise(&base, p))
        .collect();
    let execs: Vec<String> = oracle
        .execs
        .iter()
        .map(|p| imprint_agent::paths::normalise(&base, p))
        .collect();
    let (syscall_recall, syscalls_missing) = recall(&oracle.syscalls, syscalls);
    let (exec_recall, execs_missing) = recall(&execs, processes);
    let (file_recall, files_missing) = recall(&opens, &files);
    println!(
        "strace recall: syscalls {:.1}% of {}, execs {:.1}% of {}, files {:.1}% of {}",
        syscall_recall * 100.0,
        oracle.syscalls.len(),
        exec_recall * 100.0,
        execs.len(),
        file_recall * 100.0,
        opens.len()
    );
    assert!(
        oracle.syscalls.len() > 20 && execs.len() >= 4 && opens.len() > 10,
        "strace saw too little: {oracle:?}"
    );
    assert!(
        syscalls_missing.is_empty(),
        "syscalls strace saw but the agent did not: {syscalls_missing:?}"
    );
    assert!(
        execs_missing.is_empty(),
        "execs strace saw but the agent did not: {execs_missing:?}"
    );
    assert!(
        files_missing.is_empty(),
        "opens strace saw but the agent did not: {files_missing:?}"
    );
    spilled
}

/// A podman service, a server and an agent (1 s windows) watching that podman, as `node`.
async fn podman_node(dir: &Path, node: &str) -> (PodmanService, Imprintd, Agent) {
    let service = PodmanService::start(dir);
    let server = Imprintd::start(&dir.join("data"), &[]);
    let token = agent_token_file(&server, dir).await;
    let socket = service.socket.display().to_string();
    let agent = Agent::start(
        &server.grpc_url(),
        &token,
        dir,
        node,
        &["--window", "1s", "--runtime-socket", &socket],
    );
    (service, server, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_are_attributed_to_their_image_and_nothing_else() {
    let Some(()) = require_ebpf("agent: podman attribution") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = workload_image();
    let (_service, server, mut agent) = podman_node(dir.path(), "node-p").await;

    let pid = std::process::id();
    // Markers with separators: a run of letters and digits would be folded as a generated name.
    let (marker_a, marker_b, host_marker) = (
        format!("cont-a-{pid}"),
        format!("cont-b-{pid}"),
        format!("host-marker-{pid}"),
    );
    let run = |name: &str, args: &[&str]| {
        let output = podman()
            .args([
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                "localhost/imprint-workload:1",
            ])
            .args(args)
            .output()
            .expect("podman run");
        assert!(
            output.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let waited = podman().args(["wait", &id]).output().expect("podman wait");
        assert_eq!(
            String::from_utf8_lossy(&waited.stdout).trim(),
            "0",
            "container {name} failed"
        );
        id
    };
    let name_a = format!("imprint-test-a-{pid}");
    let name_b = format!("imprint-test-b-{pid}");
    let id_a = run(&name_a, &["/workload.sh", &marker_a]);
    let id_b = run(
        &name_b,
        &["/bin/sh", "-c", &format!("echo b > /tmp/{marker_b}.txt")],
    );
    // The host does something too; none of it may end up in a container.
    let host = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo h > /tmp/{host_marker}.txt && cat /etc/hostname > /dev/null"
        ))
        .status()
        .expect("host work");
    assert!(host.success());
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    let _ = podman().args(["rm", "-f", &name_a, &name_b]).output();

    let a = items(&server, &format!("container_id = '{id_a}'")).await;
    assert_workload_items(&a, &marker_a, "container a");
    let b = items(&server, &format!("container_id = '{id_b}'")).await;
    assert!(
        has(&b, "file_write", &format!("/tmp/{marker_b}.txt")),
        "container b: {b:#?}"
    );
    let leaks = |items: &BTreeMap<String, BTreeSet<String>>, marker: &str| {
        items
            .values()
            .flatten()
            .filter(|k| k.contains(marker))
            .count()
    };
    assert_eq!(leaks(&a, &marker_b), 0, "b's file in a");
    assert_eq!(leaks(&b, &marker_a), 0, "a's file in b");
    assert!(!has(&b, "tcp_in", "18080"), "a's port in b");
    let anywhere = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM fingerprints WHERE key LIKE '%{host_marker}%'"
        ))
        .await;
    assert_eq!(anywhere, 0, "the host's file was attributed to a container");
    let images = rows_as_text(&server.sql(&format!("SELECT DISTINCT image, image_name FROM windows WHERE container_id IN ('{id_a}', '{id_b}')")).await);
    assert_eq!(
        images,
        vec![format!("{image}|localhost/imprint-workload:1")],
        "both containers, one image"
    );
}

/// A container `ctr` runs (containerd without Docker or podman: cgroup `/<namespace>/<id>`, no
/// container id a runtime prefix names) is attributed through containerd's own gRPC API, to the
/// same image id podman gives the same image: one image, one profile, whichever runtime ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_containers_are_attributed_through_its_api() {
    let Some(()) = require_ebpf("agent: containerd attribution") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = workload_image();
    let name = "localhost/imprint-workload:1";
    let containerd = ContainerdService::start(dir.path());
    // The podman-built image, moved into containerd as an OCI archive.
    let archive = dir.path().join("workload.tar");
    let saved = podman()
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(name)
        .output()
        .expect("podman save");
    assert!(
        saved.status.success(),
        "podman save: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let archive_arg = archive.display().to_string();
    // Named by the archive's `org.opencontainers.image.ref.name` annotation.
    containerd.ctr_ok("imprint", &["images", "import", &archive_arg]);
    let listed = containerd.ctr_ok("imprint", &["images", "ls", "-q"]);
    assert!(
        listed.lines().any(|l| l.trim() == name),
        "containerd has the image: {listed}"
    );

    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let token = agent_token_file(&server, dir.path()).await;
    let socket = containerd.socket.display().to_string();
    let mut agent = Agent::start(
        &server.grpc_url(),
        &token,
        dir.path(),
        "node-c",
        &[
            "--window",
            "1s",
            "--runtime-socket",
            "/nonexistent",
            "--containerd-socket",
            &socket,
            "--log",
            "info,imprint_agent::attribution=debug",
        ],
    );
    let pid = std::process::id();
    let marker = format!("ctrd-{pid}");
    let id = format!("imprint-ctr-{pid}");
    // Foreground: ctr returns when the workload has ended (its loopback-only network
    // namespace is like podman's `--network none`). Removed only after the agent is done.
    containerd.ctr_ok("imprint", &["run", name, &id, "/workload.sh", &marker]);
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    containerd.ctr_ok("imprint", &["containers", "rm", &id]);
    let log = std::fs::read_to_string(dir.path().join("agent-node-c.log")).unwrap_or_default();

    let got = items(&server, &format!("container_id = '{id}'")).await;
    assert_workload_items(
        &got,
        &marker,
        &format!("containerd container; agent log:\n{log}"),
    );
    let images = rows_as_text(
        &server
            .sql(&format!(
                "SELECT DISTINCT image, image_name FROM windows WHERE container_id = '{id}'"
            ))
            .await,
    );
    assert_eq!(
        images,
        vec![format!("{image}|{name}")],
        "containerd's config digest is podman's image id"
    );
    assert!(
        log.contains("source=\"containerd\"") || log.contains("source=containerd"),
        "resolved through containerd: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_of_one_image_on_two_nodes_merge_into_one_profile() {
    let Some(()) = require_ebpf("agent: two nodes") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let token = agent_token_file(&server, dir.path()).await;
    let digest = test_digest("two-nodes");
    for node in ["node-1", "node-2"] {
        let cgroup = TestCgroup::create(node);
        let mapping = format!("{}={digest},merge:1", cgroup.path);
        let mut agent = Agent::start(
            &server.grpc_url(),
            &token,
            dir.path(),
            node,
            &[
                "--window",
                "1s",
                "--cgroup-image",
                &mapping,
                "--runtime-socket",
                "/nonexistent",
            ],
        );
        let run = cgroup.run(&format!(
            "{HOST_PATH}; cat /etc/hostname > /dev/null; echo x > /tmp/{node}-{}.txt",
            std::process::id()
        ));
        assert!(run.status.success());
        std::thread::sleep(Duration::from_millis(1200));
        agent.stop();
    }
    let status = rows_as_text(
        &server
            .sql(&format!(
                "SELECT nodes, containers FROM profile_status WHERE image = '{digest}'"
            ))
            .await,
    );
    assert_eq!(
        status,
        vec!["2|2".to_string()],
        "one profile with both nodes and containers"
    );
    let shared = server
        .scalar_i64(&format!("SELECT count(*) FROM profiles WHERE image = '{digest}' AND kind = 'file_read' AND key = '/etc/hostname' AND nodes = 2"))
        .await;
    assert_eq!(
        shared, 1,
        "the file both read is one profile item seen on both nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_away_every_fingerprint_arrives_later_and_none_twice() {
    let Some(()) = require_ebpf("agent: server away") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::new("away").await;
    let (cgroup, digest) = (&s.cgroup, s.digest.clone());
    let agent = s.agent("node-a", &[]);

    assert!(s.server.terminate().success());
    for i in 0..4 {
        let run = cgroup.run(&format!(
            "{HOST_PATH}; echo {i} > /tmp/away-{i}-{}.txt",
            std::process::id()
        ));
        assert!(run.status.success());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let spooled = agent.wait_metric("spool_batches", Duration::from_secs(10), |n| n >= 3.0);
    println!("spooled while the server was away: {spooled} batches");
    s.server.restart_on_same_ports();
    agent.wait_metric("spool_batches", Duration::from_secs(60), |n| n == 0.0);
    // Nothing runs in the cgroup any more: what was built is what must have arrived.
    let built = agent.metric("fingerprints_built_total");
    let sent = agent.metric("fingerprints_sent_total");
    assert_eq!(built, sent, "every fingerprint built was acknowledged");
    let stored = s
        .server
        .scalar_i64(&format!(
            "SELECT count(*) FROM windows WHERE image = '{digest}'"
        ))
        .await;
    assert_eq!(stored as f64, built, "the server has each fingerprint once");
    let twice = s.server
        .scalar_i64(&format!("SELECT count(*) FROM (SELECT time, container_id FROM windows WHERE image = '{digest}' GROUP BY 1, 2 HAVING count(*) > 1)"))
        .await;
    assert_eq!(twice, 0, "no window stored twice");
    for i in 0..4 {
        let n = s.server
            .scalar_i64(&format!("SELECT count(*) FROM fingerprints WHERE image = '{digest}' AND key = '/tmp/away-{i}-{}.txt'", std::process::id()))
            .await;
        assert_eq!(n, 1, "the file written in phase {i} arrived once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_guard_pauses_capture_marks_it_and_resumes() {
    let Some(()) = require_ebpf("agent: resource guard") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("guard").await;
    let (server, cgroup, digest) = (&s.server, &s.cgroup, &s.digest);
    // 1 MiB of RSS: always over, so the guard trips, resumes after the cooldown, trips again.
    // A 3 s cooldown leaves the workload below well inside the first pause.
    let mut agent = s.agent("node-g", &["--max-rss-mib", "1", "--guard-cooldown", "3s"]);
    agent.wait_metric("guard_paused", Duration::from_secs(10), |v| v == 1.0);
    let run = cgroup.run(&format!("{HOST_PATH}; cat /etc/hostname > /dev/null"));
    assert!(run.status.success());
    agent.wait_metric("guard_trips_total", Duration::from_secs(20), |v| v >= 2.0);
    std::thread::sleep(Duration::from_millis(1200));
    agent.stop();
    let log = agent.log_text();
    assert!(
        log.contains("capture resumes"),
        "the guard resumed capture by itself:\n{log}"
    );
    let paused = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM windows WHERE image = '{digest}' AND capture_paused"
        ))
        .await;
    assert!(
        paused >= 1,
        "fingerprints of paused windows say capture_paused"
    );
    // Exec is never paused: the program run during the pause is in the profile.
    let got = items(server, &format!("image = '{digest}'")).await;
    assert!(has(&got, "process", "/usr/bin/cat"), "{got:#?}");
    let status = rows_as_text(
        &server
            .sql(&format!(
                "SELECT completeness FROM profile_status WHERE image = '{digest}'"
            ))
            .await,
    );
    assert_eq!(status, vec!["partial".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiling_off_detaches_the_programs_and_on_attaches_them_again() {
    let Some(()) = require_ebpf("agent: profiling switch") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("switch").await;
    let (server, cgroup, digest) = (&s.server, &s.cgroup, &s.digest);
    let mut agent = s.agent("node-w", &[]);
    agent.wait_metric("capturing", Duration::from_secs(10), |v| v == 1.0);
    let set = |value: &'static str| {
        let server = &server;
        async move {
            AdminClient::new(server.authed().await)
                .set_setting(SetSettingRequest {
                    key: "profiling.enabled".into(),
                    value: value.into(),
                })
                .await
                .expect("set profiling.enabled");
        }
    };
    let pid = std::process::id();
    set("false").await;
    agent.wait_metric("capturing", Duration::from_secs(10), |v| v == 0.0);
    assert!(
        cgroup
            .run(&format!("{HOST_PATH}; echo off > /tmp/off-{pid}.txt"))
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(1200));
    set("true").await;
    agent.wait_metric("capturing", Duration::from_secs(10), |v| v == 1.0);
    assert!(
        cgroup
            .run(&format!("{HOST_PATH}; echo on > /tmp/on-{pid}.txt"))
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(1200));
    agent.stop();
    let got = items(server, &format!("image = '{digest}'")).await;
    assert!(
        has(&got, "file_write", &format!("/tmp/on-{pid}.txt")),
        "captured while on: {got:#?}"
    );
    assert!(
        !has(&got, "file_write", &format!("/tmp/off-{pid}.txt")),
        "nothing captured while off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_running_before_the_agent_is_marked_started_after_container() {
    let Some(()) = require_ebpf("agent: started_after_container") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("before").await;
    let (server, cgroup, digest) = (&s.server, &s.cgroup, &s.digest);
    // Already running (in its cgroup) when the agent starts; it acts afterwards.
    let mut worker = cgroup.spawn(&format!(
        "{HOST_PATH}; sleep 3; cat /etc/hostname > /dev/null"
    ));
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = s.agent("node-b", &[]);
    assert!(worker.wait().expect("worker").success());
    std::thread::sleep(Duration::from_millis(1200));
    agent.stop();
    let flagged = rows_as_text(
        &server
            .sql(&format!(
                "SELECT DISTINCT started_after_container FROM windows WHERE image = '{digest}'"
            ))
            .await,
    );
    assert_eq!(
        flagged,
        vec!["true".to_string()],
        "every window of that container says so"
    );
    let status = rows_as_text(
        &server
            .sql(&format!(
                "SELECT completeness FROM profile_status WHERE image = '{digest}'"
            ))
            .await,
    );
    assert_eq!(status, vec!["partial".to_string()]);
}

/// For the runtime scanner tests: a server with `runtime_scanner.eve_enabled` on,
/// podman's API, an agent asking it, and one detached container of `image` running
/// `script` — started, inventoried (the agent sent its image's inventory) and
/// attributed (`digest` is the image the agent gave its windows).
struct ScannerRun {
    _service: PodmanService,
    server: Imprintd,
    agent: Agent,
    container: String,
    digest: String,
}

impl ScannerRun {
    async fn start(dir: &Path, node: &str, image: &str, script: &str) -> ScannerRun {
        let service = PodmanService::start(dir);
        let server = Imprintd::start(&dir.join("data"), &[]);
        let (ok, _, err) = server.cli(&["settings", "set", "runtime_scanner.eve_enabled", "true"]);
        assert!(ok, "{err}");
        let token = agent_token_file(&server, dir).await;
        let socket = service.socket.display().to_string();
        let agent = Agent::start(
            &server.grpc_url(),
            &token,
            dir,
            node,
            &["--window", "1s", "--runtime-socket", &socket],
        );
        let container = format!("imprint-test-{node}-{}", std::process::id());
        let out = podman()
            .args([
                "run",
                "-d",
                "--name",
                &container,
                "--network",
                "none",
                image,
            ])
            .args(["/bin/sh", "-c", script])
            .output()
            .expect("podman run");
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        agent.wait_metric("inventories_sent_total", Duration::from_secs(30), |v| {
            v >= 1.0
        });
        let digest = rows_as_text(
            &server
                .sql(&format!(
                    "SELECT DISTINCT image FROM windows WHERE container_id = '{id}'"
                ))
                .await,
        )
        .first()
        .expect("the container's windows")
        .clone();
        ScannerRun {
            _service: service,
            server,
            agent,
            container,
            digest,
        }
    }

    /// `query`'s rows as text, polled until `done` holds or 20 s have passed (an
    /// exec or open reaches the server within a window or two).
    async fn poll(&self, query: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let rows = rows_as_text(&self.server.sql(query).await);
            if done(&rows) || std::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the agent and removes the container.
    fn stop(&mut self) {
        self.agent.stop();
        let _ = podman().args(["rm", "-f", &self.container]).output();
    }
}

/// The runtime scanner: with `runtime_scanner.eve_enabled` on, the agent reads the
/// dpkg database of a real podman container (Debian, `tests/containers/`) through
/// `/proc/<pid>/root` and sends it; a program the container ran makes its package
/// in use, a package never touched is not.
///
/// The advisories are written here for the installed versions of sed and grep (no
/// Debian advisory data is available offline, and real advisories name versions a
/// current image has already fixed); everything else is real: the container, its
/// dpkg database, the kernel's exec events, the server's matching by dpkg order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_scanner_inventories_a_debian_container_and_in_use_follows_its_execs() {
    let Some(()) = require_ebpf("agent: runtime scanner") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _image = workload_image();
    let mut run = ScannerRun::start(
        dir.path(),
        "node-s",
        "localhost/imprint-workload:1",
        "sed --version > /dev/null; sleep 15",
    )
    .await;
    let (server, image) = (&run.server, run.digest.clone());
    let packages = |sql: String| async move { rows_as_text(&server.sql(&sql).await) };
    let sed = packages(format!(
        "SELECT version, files FROM packages WHERE image = '{image}' AND source = 'agent' AND package = 'sed'"
    ))
    .await;
    assert_eq!(sed.len(), 1, "sed not in the agent's inventory: {sed:?}");
    let sed_version = sed[0].split('|').next().unwrap().to_string();
    let grep_version = packages(format!(
        "SELECT version FROM packages WHERE image = '{image}' AND package = 'grep'"
    ))
    .await
    .first()
    .cloned()
    .expect("grep in the inventory");
    let count = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM packages WHERE image = '{image}' AND source = 'agent' AND type = 'deb'"
        ))
        .await;
    assert!(count > 50, "only {count} dpkg packages");

    // Advisories for the installed versions (see the test's comment).
    let osv = dir.path().join("osv");
    std::fs::create_dir_all(&osv).unwrap();
    for (id, package, version) in [
        ("TEST-SED-1", "sed", &sed_version),
        ("TEST-GREP-1", "grep", &grep_version),
    ] {
        let doc = serde_json::json!({
            "id": id,
            "affected": [{"package": {"ecosystem": "Debian:12", "name": package},
                          "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"last_affected": version}]}]}]
        });
        std::fs::write(osv.join(format!("{id}.json")), doc.to_string()).unwrap();
    }
    let (ok, _, err) = server.cli(&["import", "osv", osv.to_str().unwrap()]);
    assert!(ok, "{err}");
    let query = format!(
        "SELECT package, in_use, evidence_path FROM runtime_vulnerabilities WHERE image = '{image}' ORDER BY package"
    );
    let rows = run
        .poll(&query, |rows| {
            rows.iter().any(|r| r.starts_with("sed|true|"))
        })
        .await;
    run.stop();
    println!("runtime_vulnerabilities: {rows:?}");
    let sed = rows
        .iter()
        .find(|r| r.starts_with("sed|"))
        .expect("sed row");
    assert!(
        sed.starts_with("sed|true|/"),
        "sed not in use: {rows:?}\nagent log:\n{}",
        run.agent.log_text()
    );
    assert!(
        sed.ends_with("/sed"),
        "evidence is not sed's executable: {sed}"
    );
    let grep = rows
        .iter()
        .find(|r| r.starts_with("grep|"))
        .expect("grep row");
    assert_eq!(grep, "grep|false|", "grep was never run: {rows:?}");
}

/// Builds `localhost/imprint-python:1` (`tests/containers/build-python-image.sh`) with the
/// test venv's Python (it fetches the wheels).
fn build_python_image(python: &Path) {
    let built = Command::new(workspace_root().join("tests/containers/build-python-image.sh"))
        .arg(python)
        .output()
        .expect("build-python-image.sh");
    assert!(
        built.status.success(),
        "building the Python test image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// In Use end to end with the real agent: a podman container of an image holding
/// known-vulnerable PyPI releases under /opt/venv (`tests/containers/build-python-image.sh`:
/// requests 2.19.0 with urllib3 1.23, jinja2 2.10) imports requests; the runtime scanner
/// inventories the image (RECORD file lists), safety-db's real advisories come in as OSV,
/// and `in_use` is true exactly for what Python imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_containers_imports_make_exactly_those_packages_in_use() {
    let Some(()) = require_ebpf("agent: In Use in a Python container") else {
        return;
    };
    let Some(python) = imprint_e2e::test_python() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    build_python_image(&python);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = ScannerRun::start(
        dir.path(),
        "node-py",
        "localhost/imprint-python:1",
        "PYTHONPATH=$(echo /opt/venv/lib/python3*/site-packages) python3 -c 'import requests'; sleep 15",
    )
    .await;
    let (server, image) = (&run.server, run.digest.clone());
    let osv_dir = dir.path().join("osv");
    let n = imprint_e2e::osv::write_osv(
        &imprint_e2e::osv::safety_db_file(&python),
        &["requests", "urllib3", "jinja2"],
        &osv_dir,
    );
    assert!(n > 10, "only {n} advisories");
    let (ok, _, err) = server.cli(&["import", "osv", osv_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let query = format!(
        "SELECT lower(package) AS p, bool_or(in_use), min(evidence_path) FROM runtime_vulnerabilities \
         WHERE image = '{image}' GROUP BY p ORDER BY p"
    );
    let used = |rows: &[String], p: &str| rows.iter().any(|r| r.starts_with(&format!("{p}|true|")));
    let rows = run
        .poll(&query, |rows| {
            used(rows, "requests") && used(rows, "urllib3")
        })
        .await;
    run.stop();
    println!("runtime_vulnerabilities by package: {rows:?}");
    let of = |p: &str| {
        rows.iter()
            .find(|r| r.starts_with(&format!("{p}|")))
            .unwrap_or_else(|| panic!("no {p} row: {rows:?}"))
            .clone()
    };
    let requests = of("requests");
    assert!(
        requests.starts_with("requests|true|/opt/venv/lib/python3"),
        "requests not in use, or evidence outside it: {requests}\nagent log:\n{}",
        run.agent.log_text()
    );
    assert!(requests.contains("/site-packages/requests/"), "{requests}");
    assert!(of("urllib3").starts_with("urllib3|true|"), "{rows:?}");
    assert_eq!(of("jinja2"), "jinja2|false|", "jinja2 was never imported");
}

/// Profile policies on the real kernel: a cgroup workload's steady loop is learned
/// (12 one-second windows); then, in the same cgroup, a new process reads a file
/// the loop never read and bash connects to a port never used. The policy reports
/// exactly items outside the baseline — those among them — each once, however often
/// they happen within the throttle, and none before the profile was done learning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_workload_that_steps_outside_its_profile_raises_anomalies() {
    let Some(()) = require_ebpf("agent: profile policies") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::new("policy").await;
    let (server, digest) = (&s.server, &s.digest);
    for args in [
        vec!["settings", "set", "profiling.learning_period", "12s"],
        vec![
            "policy",
            "create",
            "drift",
            "--scope",
            digest,
            "--min-confidence",
            "low",
        ],
    ] {
        let (ok, out, err) = server.cli(&args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let mut agent = s.agent("node-p", &[]);
    let stop = s.dir.path().join("stop-loop");
    let mut steady = s.cgroup.spawn(&format!(
        "{HOST_PATH}; while [ ! -e {} ]; do cat /etc/hostname > /dev/null; sleep 0.3; done",
        stop.display()
    ));
    let status = format!("SELECT state FROM profile_status WHERE image = '{digest}'");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rows_as_text(&server.sql(&status).await) != ["done_learning"] {
        assert!(std::time::Instant::now() < deadline, "never done learning");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = server.scalar_i64("SELECT count(*) FROM anomalies").await;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for _ in 0..2 {
        let run = s.cgroup.run(&format!(
            "{HOST_PATH}; id > /dev/null; cat /etc/passwd > /dev/null; \
             bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"
        ));
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let wanted = [
        "process|/usr/bin/id".to_string(),
        "process|/usr/bin/bash".to_string(),
        "file_read|/etc/passwd".to_string(),
        format!("tcp_out|{port}"),
    ];
    let query =
        format!("SELECT kind, key FROM anomalies WHERE image = '{digest}' ORDER BY kind, key");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        let rows = rows_as_text(&server.sql(&query).await);
        if wanted.iter().all(|w| rows.contains(w)) || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    std::fs::write(&stop, "").unwrap();
    let _ = steady.wait();
    agent.stop();

    assert_eq!(before, 0, "no anomalies while learning");
    for w in &wanted {
        assert!(found.contains(w), "{w} not among the anomalies {found:?}");
    }
    // Once each, though it all ran twice; and nothing that is in the baseline.
    let distinct: BTreeSet<&String> = found.iter().collect();
    assert_eq!(
        distinct.len(),
        found.len(),
        "an item reported twice: {found:?}"
    );
    let baseline_hits = rows_as_text(
        &server
            .sql(&format!(
                "SELECT a.kind, a.key FROM anomalies a JOIN profiles p \
                 ON a.image = p.image AND a.kind = p.kind AND a.key = p.key \
                 WHERE a.image = '{digest}' AND p.in_baseline"
            ))
            .await,
    );
    assert!(
        baseline_hits.is_empty(),
        "baseline items reported: {baseline_hits:?}"
    );
    let early = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM anomalies a JOIN profile_status s ON a.image = s.image \
             WHERE a.image = '{digest}' AND a.time < s.learned_at"
        ))
        .await;
    assert_eq!(early, 0, "an anomaly from before learned_at");
    for steady_item in [
        "process|/usr/bin/cat",
        "process|/usr/bin/sleep",
        "file_read|/etc/hostname",
    ] {
        assert!(
            !found.iter().any(|f| f == steady_item),
            "{steady_item} is the learned loop"
        );
    }
}

/// The runtime scanner reads a hostile container's files without leaving it (issue 16, H2):
/// the container plants a `RECORD` that is an absolute symlink to a file that exists only on
/// the host, one linked to `/dev/zero`, and one that is a FIFO. The scan finishes (the
/// inventory arrives: nothing hung), no line of the host file reaches the server, the device
/// and the FIFO are refused and counted, the agent's memory stays bounded, and the real
/// packages are still inventoried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_scanner_cannot_be_turned_against_the_host() {
    let Some(()) = require_ebpf("agent: runtime scanner traps") else {
        return;
    };
    let Some(python) = imprint_e2e::test_python() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    build_python_image(&python);
    let dir = tempfile::tempdir().expect("tempdir");
    // A file only the host has; the container links to its absolute path.
    let host_secret = dir.path().join("host-only-secret");
    std::fs::write(&host_secret, "HOSTSECRET/line,sha256=x,1\n").unwrap();
    let secret = host_secret.display();
    let script = format!(
        "sp=$(echo /opt/venv/lib/python3*/site-packages); \
         for p in evil zero fifo; do mkdir -p $sp/$p-1.0.dist-info; \
           printf 'Metadata-Version: 2.1\\nName: %s\\nVersion: 1.0\\n\\n' $p > $sp/$p-1.0.dist-info/METADATA; done; \
         ln -s {secret} $sp/evil-1.0.dist-info/RECORD; \
         ln -s /dev/zero $sp/zero-1.0.dist-info/RECORD; \
         mkfifo $sp/fifo-1.0.dist-info/RECORD; \
         sleep 30"
    );
    let mut run = ScannerRun::start(
        dir.path(),
        "node-trap",
        "localhost/imprint-python:1",
        &script,
    )
    .await;
    let (server, image) = (&run.server, run.digest.clone());
    let files = rows_as_text(
        &server
            .sql(&format!(
                "SELECT package, count(path) FROM package_files WHERE image = '{image}' GROUP BY package ORDER BY package"
            ))
            .await,
    );
    let leaked = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM package_files WHERE image = '{image}' AND path LIKE '%HOSTSECRET%'"
        ))
        .await;
    let packages = rows_as_text(
        &server
            .sql(&format!(
                "SELECT package FROM packages WHERE image = '{image}' AND source = 'agent' AND package IN ('evil', 'zero', 'fifo', 'requests') ORDER BY package"
            ))
            .await,
    );
    let refused = run.agent.metric("inventory_refused_files_total");
    let rss = run.agent.metric("rss_bytes");
    run.stop();
    println!("package files: {files:?}; refused: {refused}; rss: {rss}");
    assert_eq!(leaked, 0, "a line of the host's file reached the server");
    assert_eq!(packages, ["evil", "fifo", "requests", "zero"], "{files:?}");
    assert!(
        files.iter().any(|r| r.starts_with("requests|")),
        "the real packages' files are still read: {files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|r| r.starts_with("evil|") || r.starts_with("zero|") || r.starts_with("fifo|")),
        "a trap's RECORD was read: {files:?}"
    );
    assert!(
        refused >= 2.0,
        "the device and the FIFO were not counted as refused: {refused}"
    );
    assert!(
        rss < (512 << 20) as f64,
        "the agent's memory grew to {rss} bytes"
    );
}

/// A container cannot pass its behaviour off as another container's: container B, privileged
/// so it can mount cgroup v2 (its own subtree, in a private cgroup namespace), creates a child
/// cgroup named exactly like container A's (`libpod-<A's id>.scope`), moves itself into it and
/// runs a process named like A's workload.
/// Identity comes from the outermost container cgroup (the runtime made it, the container
/// cannot rename it), so everything B does still goes to B and nothing to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_take_another_containers_identity() {
    let Some(()) = require_ebpf("agent: attribution spoofing") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _image = workload_image();
    let (_service, server, mut agent) = podman_node(dir.path(), "node-s").await;
    let pid = std::process::id();
    let (name_a, name_b) = (
        format!("imprint-victim-{pid}"),
        format!("imprint-spoofer-{pid}"),
    );
    let start = |name: &str, extra: &[&str], command: &str| {
        let output = podman()
            .args(["run", "-d", "--name", name, "--network", "none"])
            .args(extra)
            .args(["localhost/imprint-workload:1", "/bin/sh", "-c", command])
            .output()
            .expect("podman run");
        assert!(
            output.status.success(),
            "podman run {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let id_a = start(
        &name_a,
        &[],
        &format!("echo a > /tmp/victim-{pid}.txt; sleep 3"),
    );
    let marker = format!("spoofed-{pid}");
    let spoof = format!(
        "set -e; mkdir -p /mnt/cg; mount -t cgroup2 none /mnt/cg; \
         cg=/mnt/cg/libpod-{id_a}.scope; mkdir -p $cg; echo $$ > $cg/cgroup.procs; \
         cat /proc/self/cgroup; \
         cp /bin/sh /tmp/workload.sh; /tmp/workload.sh -c 'echo b > /tmp/{marker}.txt'; sleep 1"
    );
    let id_b = start(&name_b, &["--privileged", "--cgroupns", "private"], &spoof);
    for id in [&id_a, &id_b] {
        let waited = podman().args(["wait", id]).output().expect("podman wait");
        assert_eq!(
            String::from_utf8_lossy(&waited.stdout).trim(),
            "0",
            "container {id} failed: {}",
            String::from_utf8_lossy(&podman().args(["logs", id]).output().expect("logs").stderr)
        );
    }
    // The spoof took: inside its namespace, B's processes ran in a cgroup named like A's.
    let logs = podman()
        .args(["logs", &id_b])
        .output()
        .expect("podman logs");
    let cgroup = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(
        cgroup.contains(&format!("libpod-{id_a}.scope")),
        "B's cgroup: {cgroup}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    let _ = podman().args(["rm", "-f", &name_a, &name_b]).output();

    let a = items(&server, &format!("container_id = '{id_a}'")).await;
    let b = items(&server, &format!("container_id = '{id_b}'")).await;
    assert!(
        has(&a, "file_write", &format!("/tmp/victim-{pid}.txt")),
        "a: {a:#?}"
    );
    assert!(
        has(&b, "file_write", &format!("/tmp/{marker}.txt")),
        "what B did from inside the cgroup named like A's is B's: {b:#?}"
    );
    let in_a = a.values().flatten().filter(|k| k.contains(&marker)).count();
    assert_eq!(in_a, 0, "B's file was attributed to A: {a:#?}");
    let anywhere_else = server
        .scalar_i64(&format!(
            "SELECT count(*) FROM fingerprints WHERE key LIKE '%{marker}%' AND container_id <> '{id_b}'"
        ))
        .await;
    assert_eq!(anywhere_else, 0, "B's file went to another container");
}
