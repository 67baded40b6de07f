//! The binaries the end-to-end tests run, built from this source tree by the test run itself.
//!
//! `cargo test` only builds a package's binaries for that package's own integration tests, so
//! a test here cannot rely on `target/debug/imprintd` being there, or being new: an earlier
//! build of another commit may have left it. Instead, the first [`bin`] call of a test process
//! runs `cargo test --workspace --no-run --message-format=json` from the workspace root, with
//! the profile this test executable was built with, and takes each binary's path from the
//! `compiler-artifact` messages cargo prints. Cargo builds whatever is out of date first; after
//! a `cargo test --workspace` (what `./test.sh` runs) everything is fresh and the call takes a
//! fraction of a second. The server and agent packages have integration tests of their own
//! (`server/tests`, `ingest-agent/tests`), which is what makes `cargo test` build their
//! binaries at all.
//!
//! Every path [`bin`] hands out is also checked against the sources it was built from (the
//! dep-info file cargo writes next to it, `<binary>.d`): a binary older than any of them is a
//! test failure naming the newer source.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::workspace_root;

/// Binary name → executable, as the one build of this process reported them.
static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();

/// The path of the workspace binary `name` (`imprintd`, `imprint`, `imprint-agent`), built from
/// this source tree in this test run; panics with cargo's message when the build fails, and
/// when the binary is older than a source it was built from.
pub fn bin(name: &str) -> PathBuf {
    let built = BUILT.get_or_init(build_workspace_binaries);
    let map = built
        .as_ref()
        .unwrap_or_else(|e| panic!("building the workspace binaries failed: {e}"));
    let path = map.get(name).unwrap_or_else(|| {
        let mut names: Vec<_> = map.keys().collect();
        names.sort();
        panic!("cargo built no binary named {name:?} (it built {names:?})")
    });
    if let Err(stale) = check_fresh(path).and_then(|()| check_built_here(path)) {
        panic!("{stale}");
    }
    path.clone()
}

/// The `cargo test` flags that select the profile this test executable was built with, from
/// its place in the target directory (`<target>/<profile dir>/deps/<test>`): none for
/// `debug` (cargo test's default), `--release`, or `--profile <dir>`.
fn profile_flags_of_this_test() -> Vec<String> {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|d| d.to_str())
        .unwrap_or("debug")
        .to_string();
    match dir.as_str() {
        "debug" => Vec::new(),
        "release" => vec!["--release".to_string()],
        _ => vec!["--profile".to_string(), dir],
    }
}

/// Variables cargo sets for a test process about the test's own package (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …). They must not reach the nested cargo: crates whose build
/// scripts or `env!` read such a variable (ring, parquet, DataFusion) would see it changed
/// and be rebuilt, which takes many minutes and makes the outer build stale in turn.
fn is_set_by_cargo_for_this_test(var: &str) -> bool {
    var.starts_with("CARGO_PKG_")
        || var.starts_with("CARGO_BIN_EXE_")
        || matches!(
            var,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

fn build_workspace_binaries() -> Result<HashMap<String, PathBuf>, String> {
    // The cargo that runs this test (it sets CARGO for the processes it starts).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let profile = profile_flags_of_this_test();
    let command = format!("cargo test --workspace --no-run {}", profile.join(" "));
    let started = std::time::Instant::now();
    let mut cargo_command = Command::new(&cargo);
    for (var, _) in std::env::vars_os() {
        if is_set_by_cargo_for_this_test(&var.to_string_lossy()) {
            cargo_command.env_remove(&var);
        }
    }
    let mut child = cargo_command
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run"])
        .args(&profile)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    // Cargo's own progress and diagnostics: kept for the error message.
    let diagnostics = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut binaries = HashMap::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some((name, path)) = built_binary(&line) {
            binaries.insert(name, path);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    let diagnostics = diagnostics.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("`{command}` failed ({status}):\n{diagnostics}"));
    }
    eprintln!(
        "imprint-e2e: `{command}` done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(binaries)
}

/// `(name, executable)` when `line` is cargo's message for a built binary target (not a test
/// harness).
fn built_binary(line: &str) -> Option<(String, PathBuf)> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != false {
        return None;
    }
    let target = &msg["target"];
    let is_bin = target["kind"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
    let exe = msg["executable"].as_str()?;
    let name = target["name"].as_str()?;
    is_bin.then(|| (name.to_string(), PathBuf::from(exe)))
}

/// `Err` naming the newest source when `binary` is older than a file it was built from, as
/// listed in the dep-info file cargo writes beside it (`<binary>.d`; a directory listed there,
/// such as the eBPF sources the agent's build script watches, counts with every file in it).
pub fn check_fresh(binary: &Path) -> Result<(), String> {
    let built = modified(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let (dep_info, sources) = dep_info_of(binary)?;
    if sources.is_empty() {
        return Err(format!("{} lists no sources", dep_info.display()));
    }
    for source in &sources {
        if let Some((newest, when)) = newest_file(source)
            && when > built
        {
            return Err(format!(
                "{} is older than {}, a source it was built from: it was not built from this tree \
                 (run the tests through cargo; the harness builds what it runs)",
                binary.display(),
                newest.display()
            ));
        }
    }
    Ok(())
}

/// `Err` when the sources `binary` was built from (its dep-info) are not this workspace's: a
/// target directory shared by two clones holds whichever clone built last. Paths under the
/// target directory (generated code) and under cargo's home (installed tools) do not count.
pub fn check_built_here(binary: &Path) -> Result<(), String> {
    let root = workspace_root();
    let (dep_info, sources) = dep_info_of(binary)?;
    // <target>/<profile>/<binary>
    let target = binary.parent().and_then(Path::parent);
    let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from);
    let elsewhere: Vec<_> = sources
        .iter()
        .filter(|p| !p.starts_with(&root))
        .filter(|p| target.is_none_or(|t| !p.starts_with(t)))
        .filter(|p| cargo_home.as_ref().is_none_or(|h| !p.starts_with(h)))
        .filter(|p| !p.ends_with(".cargo/bin"))
        .collect();
    if sources.iter().any(|p| p.starts_with(&root)) && elsewhere.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} was not built from this workspace ({}): its dep-info {} names {elsewhere:?}",
        binary.display(),
        root.display(),
        dep_info.display()
    ))
}

/// The prerequisites of a make-style dep-info file (`target: a b\ c …`; `\ ` is a space in a
/// name).
/// The dep-info file of `binary` and the sources it lists (relative ones resolved against the
/// workspace root). Cargo writes `<binary>.d` beside the binary when it builds it; a build cut
/// short (a full disk, Ctrl-C) can leave the binary without it, so the rustc dep-info of the
/// same file in `deps/` (cargo hard-links `deps/<name>-<hash>` to `<binary>`) serves too.
fn dep_info_of(binary: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    use std::os::unix::fs::MetadataExt;
    let beside = PathBuf::from(format!("{}.d", binary.display()));
    let mut candidates = vec![beside.clone()];
    let inode = std::fs::metadata(binary).map(|m| m.ino()).ok();
    if let (Some(dir), Some(name), Some(inode)) = (
        binary.parent(),
        binary.file_name().and_then(|n| n.to_str()),
        inode,
    ) && let Ok(entries) = std::fs::read_dir(dir.join("deps"))
    {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            // rustc names it after the crate: `imprint-agent` is `deps/imprint_agent-<hash>`.
            if file.starts_with(&format!("{}-", name.replace('-', "_")))
                && !file.ends_with(".d")
                && e.metadata().is_ok_and(|m| m.ino() == inode)
            {
                candidates.push(e.path().with_extension("d"));
            }
        }
    }
    let root = workspace_root();
    for dep_info in candidates {
        if let Ok(text) = std::fs::read_to_string(&dep_info) {
            let sources = dep_info_sources(&text)
                .into_iter()
                .map(|p| if p.is_relative() { root.join(p) } else { p })
                .collect();
            return Ok((dep_info, sources));
        }
    }
    Err(format!(
        "{}: no dep-info file (cargo writes it beside every binary it builds, and rustc one in deps/)",
        beside.display()
    ))
}

fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some((_, deps)) = text.split_once(": ") else {
        return Vec::new();
    };
    let deps = deps.lines().next().unwrap_or_default();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(PathBuf::from(current));
    }
    out
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}

/// The most recently modified file at or under `path` (`None` when it does not exist).
fn newest_file(path: &Path) -> Option<(PathBuf, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    let mut newest = (path.to_path_buf(), meta.modified().ok()?);
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            if let Some(found) = newest_file(&entry.path())
                && found.1 > newest.1
            {
                newest = found;
            }
        }
    }
    Some(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_names_with_spaces_and_several_lines() {
        let text = "/t/debug/imprintd: /w/a.rs /w/my\\ dir/b.rs /w/c.proto\n\n/w/a.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            vec![
                PathBuf::from("/w/a.rs"),
                PathBuf::from("/w/my dir/b.rs"),
                PathBuf::from("/w/c.proto")
            ]
        );
    }

    #[test]
    fn a_source_newer_than_the_binary_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = dir.path().join("tool");
        let source = dir.path().join("src").join("main.rs");
        std::fs::create_dir_all(source.parent().expect("parent")).expect("mkdir");
        std::fs::write(&source, "fn main() {}").expect("source");
        std::fs::write(&binary, "binary").expect("binary");
        std::fs::write(
            dir.path().join("tool.d"),
            format!(
                "{}: {}\n",
                binary.display(),
                source.parent().expect("dir").display()
            ),
        )
        .expect("dep-info");
        let past = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&source)
            .and_then(|f| f.set_modified(past))
            .expect("age the source");
        assert_eq!(check_fresh(&binary), Ok(()));
        // An edit after the build: the binary is stale, and the message says which file.
        std::fs::write(&source, "fn main() { changed() }").expect("edit");
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&source)
            .and_then(|f| f.set_modified(future))
            .expect("touch the source");
        let err = check_fresh(&binary).expect_err("stale");
        assert!(err.contains("main.rs"), "{err}");
    }
}
