//! Compiles the .proto files with protox (pure Rust, no system protoc) and generates the
//! prost messages and tonic services, and the client of the Labgrid coordinator's protocol.
//! The encoded descriptor set of labwire's own API is kept for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/labwire/v1/labwire.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("labwire_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Prost's codec, but a message that does not decode is INVALID_ARGUMENT.
        .codec_path("crate::codec::LabwireCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    // The part of the Labgrid coordinator's protocol the agent speaks (a client only).
    let labgrid = "proto/labgrid/coordinator.proto";
    println!("cargo:rerun-if-changed={labgrid}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([labgrid], ["proto"])?)?;
    Ok(())
}
