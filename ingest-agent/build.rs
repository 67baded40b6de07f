//! Builds the eBPF programs (`ingest-ebpf/probes`) for the BPF target with the nightly
//! toolchain and bpf-linker (scripts/setup-ebpf.sh installs them); the object is embedded in
//! the agent with `aya::include_bytes_aligned!`.
fn main() {
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
