//! Builds the eBPF programs (`ingest-ebpf/probes`) for the BPF target with the nightly
//! toolchain and bpf-linker (scripts/setup-ebpf.sh installs them); the object is embedded in
//! the agent with `aya::include_bytes_aligned!`.
//!
//! Without bpf-linker on PATH the agent is built without its programs (a loud cargo warning;
//! the agent then refuses to start and says why, and the agent tests skip), so that the rest
//! of the workspace builds and tests on a machine where the eBPF toolchain cannot be installed
//! (no root for apt). `IMPRINT_REQUIRE_EBPF=1` (set by ./test.sh as root, as in CI) makes that
//! a build failure instead.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Relative to this package, so a target directory shared by two clones of the repository
    // notices a change in either (aya-build's own rerun path is absolute: the clone that built
    // last would be the only one watched, and cargo hashes both clones' builds alike).
    for watched in ["../ingest-ebpf/probes", "../ingest-ebpf/common"] {
        println!("cargo:rerun-if-changed={watched}");
    }
    println!("cargo:rerun-if-env-changed=IMPRINT_REQUIRE_EBPF");
    let required = std::env::var("IMPRINT_REQUIRE_EBPF").as_deref() == Ok("1");
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|out| out.status.success()) {
        let reason =
            "bpf-linker is not on PATH (scripts/setup-ebpf.sh installs the eBPF toolchain)";
        if required {
            panic!("IMPRINT_REQUIRE_EBPF=1 but {reason}");
        }
        // Installing bpf-linker (cargo install) changes this directory: build again then.
        if let Some(bin) = cargo_bin_dir() {
            println!("cargo:rerun-if-changed={}", bin.display());
        }
        println!("cargo:warning=imprint-agent is built WITHOUT its eBPF programs: {reason}");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        std::fs::write(out.join("imprint-probes"), b"").expect("write the empty object");
        println!("cargo:rustc-env=IMPRINT_EBPF_NOT_BUILT={reason}");
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest-ebpf/probes");
    let probes = aya_build::Package {
        name: "imprint-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(error) = aya_build::build_ebpf([probes], aya_build::Toolchain::Nightly) {
        panic!(
            "building the eBPF programs failed: {error:#}\n\
             (needs the nightly toolchain with rust-src and bpf-linker: run scripts/setup-ebpf.sh)"
        );
    }
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`), where `cargo install` puts bpf-linker.
fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let bin = home.join("bin");
    bin.is_dir().then_some(bin)
}
