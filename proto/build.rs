//! Compiles `proto/gonest/session/v1/session.proto` with protox (no `protoc` needed) and writes
//! its file descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gonest/session/v1/session.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("gonest_session_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .compile_well_known_types(false)
        // `bytes` fields (session values, error details) as `bytes::Bytes`: decoded as slices
        // of the received message, and handed to and from the session stores without a copy.
        .bytes(".")
        // The largest variants of the Pipeline enums, boxed: the operation and the answer move
        // between a caller, its lane and the answer router several times each.
        .boxed(".gonest.session.v1.PipelineRequest.op.save")
        .boxed(".gonest.session.v1.PipelineResponse.result.get")
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
