//! Compiles `proto/` with protox (pure Rust, no system protoc) and tonic-prost-build, and
//! writes two more things to OUT_DIR for the health module: the encoded file descriptor
//! set (served by gRPC reflection) and the list of every RPC path (so request metrics are
//! labelled by a known method, never by whatever path a caller sends).

use std::fmt::Write as _;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/virfed/client/v1/client.proto",
        "proto/virfed/admin/v1/admin.proto",
        "proto/virfed/admin/v1/status.proto",
        "proto/virfed/federation/v1/federation.proto",
    ];
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("virfed_descriptor.bin"), fds.encode_to_vec())?;
    let mut methods = String::from(
        "/// Every RPC path of virfed's own services, from the protos.\npub const RPC_METHODS: &[&str] = &[\n",
    );
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                writeln!(methods, "    \"/{}.{}/{}\",", file.package(), service.name(), method.name())?;
            }
        }
    }
    methods.push_str("];\n");
    std::fs::write(out.join("rpc_methods.rs"), methods)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
