//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler, so the build
//! needs no `protoc` on the machine.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/market/ratings/v1/ratings.proto",
    "proto/market/registry/v1/registry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Server reflection serves this set, so it is written out in full.
    fs::write(
        out_dir.join("market_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
