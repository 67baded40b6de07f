//! Builds the eBPF programs (`ingest-ebpf/probes`) for the BPF target with the nightly
//! toolchain and bpf-linker (scripts/setup-ebpf.sh installs them); the object is embedded in
//! the agent with `aya::include_bytes_aligned!`.
fn main() {
    // Relative to this package, so a target directory shared by two clones of the repository
    // notices a change in either (aya-build's own rerun path is absolute: the clone that built
    // last would be the only one watched, and cargo hashes both clones' builds alike).
    for watched in ["../ingest-ebpf/probes", "../ingest-ebpf/common"] {
        println!("cargo:rerun-if-changed={watched}");
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
