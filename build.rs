//! Compiles `proto/` with protox (pure Rust, no system protoc) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/virfed/client/v1/client.proto",
        "proto/virfed/admin/v1/admin.proto",
        "proto/virfed/federation/v1/federation.proto",
    ];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
