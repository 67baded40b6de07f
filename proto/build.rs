//! Compiles the .proto files with protox (a protobuf compiler in Rust), so a fresh
//! machine builds with cargo alone: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/imprint/ingest/v1/ingest.proto",
        "proto/imprint/admin/v1/admin.proto",
        "proto/imprint/alerts/v1/alerts.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
