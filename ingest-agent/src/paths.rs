//! Path normalisation: what turns the path a process passed to the kernel into the `key` of a
//! file or directory item. The rules (docs/agent.md#normalisation):
//!
//! 1. Relative paths are made absolute against the directory they were relative to (the
//!    process's working directory, or the directory fd of an `openat`), read from `/proc`.
//! 2. The path is cleaned lexically: repeated `/` and `.` components are removed and `..` goes up
//!    one component (never above `/`). Symlinks are not resolved: the key is the name used.
//! 3. Per-process names are folded: `/proc/<digits>/…` and `/proc/self/…` and
//!    `/proc/thread-self/…` become `/proc/<pid>/…`, and a numeric component after `/fd/` or
//!    `/task/` in them becomes `<n>`: a process reading its own status is one item, whatever its
//!    pid.
//! 4. Random names under the temporary directories (`/tmp`, `/var/tmp`, `/dev/shm`, `/run/user`)
//!    are folded: in each component below them, a run of 6 or more ASCII letters and digits
//!    becomes `*` when it looks generated: it switches 3 or more times between lower case, upper
//!    case and digits (`a8f3kz9q`, `Ab3xYz`), or it is 8 or more long with 2 or more digits and 2
//!    or more letters (`build2023x`), or it is 8 or more hex digits with a digit (`deadbeef01`).
//!    So `/tmp/tmpa8f3kz9q/out.txt` → `/tmp/*/out.txt`, while `/tmp/build.log`,
//!    `/tmp/podman3.txt` and `/tmp/log2023` stay as they are.

/// Cleans an absolute path lexically (rule 2).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    let mut out = String::with_capacity(path.len());
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Joins a relative path onto the absolute directory it is relative to, then cleans it.
pub fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean(path)
    } else {
        clean(&format!("{base}/{path}"))
    }
}

const TEMP_ROOTS: [&str; 4] = ["/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/"];

/// Applies rules 3 and 4 to a clean absolute path.
pub fn fold(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("/proc/") {
        return fold_proc(rest);
    }
    for root in TEMP_ROOTS {
        if let Some(rest) = path.strip_prefix(root) {
            let folded: Vec<String> = rest.split('/').map(fold_random_runs).collect();
            return format!("{root}{}", folded.join("/"));
        }
    }
    path.to_string()
}

/// The item key of a path a process used: absolute (against `base` when relative), clean, folded.
pub fn normalise(base: &str, path: &str) -> String {
    fold(&absolute(base, path))
}

/// The parent directory of a clean absolute path (`/` for `/` itself).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(at) => &path[..at],
    }
}

fn fold_proc(rest: &str) -> String {
    let mut parts: Vec<&str> = rest.split('/').collect();
    let is_process = match parts.first() {
        Some(first) => {
            *first == "self"
                || *first == "thread-self"
                || (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()))
        }
        None => false,
    };
    if !is_process {
        return format!("/proc/{rest}");
    }
    parts[0] = "<pid>";
    let mut out = String::from("/proc");
    let mut previous = "";
    for part in parts {
        out.push('/');
        if (previous == "fd" || previous == "task" || previous == "fdinfo")
            && !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
        {
            out.push_str("<n>");
        } else {
            out.push_str(part);
        }
        previous = part;
    }
    out
}

fn fold_random_runs(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = String::with_capacity(component.len());
    let mut at = 0;
    while at < bytes.len() {
        if !bytes[at].is_ascii_alphanumeric() {
            out.push(bytes[at] as char);
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && bytes[at].is_ascii_alphanumeric() {
            at += 1;
        }
        let run = &component[start..at];
        if looks_random(run) {
            out.push('*');
        } else {
            out.push_str(run);
        }
    }
    out
}

fn looks_random(run: &str) -> bool {
    if run.len() < 6 {
        return false;
    }
    let class = |b: u8| {
        if b.is_ascii_digit() {
            0
        } else if b.is_ascii_uppercase() {
            1
        } else {
            2
        }
    };
    let bytes = run.as_bytes();
    let switches = bytes
        .windows(2)
        .filter(|w| class(w[0]) != class(w[1]))
        .count();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = run.len() - digits;
    switches >= 3
        || (run.len() >= 8 && digits >= 2 && letters >= 2)
        || (run.len() >= 8 && digits >= 1 && bytes.iter().all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_dots_and_repeated_slashes() {
        assert_eq!(clean("/usr//lib/./x/../libc.so"), "/usr/lib/libc.so");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(clean("/"), "/");
    }

    #[test]
    fn relative_paths_join_their_base() {
        assert_eq!(
            absolute("/srv/app", "conf/../data.json"),
            "/srv/app/data.json"
        );
        assert_eq!(absolute("/srv/app", "/etc/hosts"), "/etc/hosts");
        assert_eq!(absolute("/", "x"), "/x");
    }

    #[test]
    fn proc_paths_fold_pids_and_fds() {
        assert_eq!(fold("/proc/4242/status"), "/proc/<pid>/status");
        assert_eq!(fold("/proc/self/fd/17"), "/proc/<pid>/fd/<n>");
        assert_eq!(
            fold("/proc/thread-self/attr/current"),
            "/proc/<pid>/attr/current"
        );
        assert_eq!(fold("/proc/12/task/13/stat"), "/proc/<pid>/task/<n>/stat");
        assert_eq!(fold("/proc/meminfo"), "/proc/meminfo");
        assert_eq!(
            fold("/proc/sys/kernel/hostname"),
            "/proc/sys/kernel/hostname"
        );
    }

    #[test]
    fn random_temp_names_fold_but_plain_ones_stay() {
        assert_eq!(fold("/tmp/tmpa8f3kz9q/out.txt"), "/tmp/*/out.txt");
        assert_eq!(fold("/tmp/build.log"), "/tmp/build.log");
        assert_eq!(fold("/tmp/podman3.txt"), "/tmp/podman3.txt");
        assert_eq!(fold("/tmp/log2023"), "/tmp/log2023");
        assert_eq!(fold("/tmp/tmp.Ab3xYz"), "/tmp/tmp.*");
        assert_eq!(fold("/tmp/build2023x/out"), "/tmp/*/out");
        assert_eq!(
            fold("/tmp/pip-build-x7k2m9/setup.py"),
            "/tmp/pip-build-*/setup.py"
        );
        assert_eq!(fold("/dev/shm/sem.deadbeef01"), "/dev/shm/sem.*");
        assert_eq!(fold("/var/tmp/cache"), "/var/tmp/cache");
        // Outside the temporary directories nothing is folded.
        assert_eq!(
            fold("/usr/lib/x86_64-linux-gnu/libz.so.1"),
            "/usr/lib/x86_64-linux-gnu/libz.so.1"
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent("/etc/passwd"), "/etc");
        assert_eq!(parent("/etc"), "/");
        assert_eq!(parent("/"), "/");
    }
}
