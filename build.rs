//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no protoc is
//! needed) and generates tonic servers and clients, plus the descriptor set that
//! server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tollgate/v1/tollgate.proto",
    "proto/envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    fs::write(out.join("tollgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::proto::LeanCodec")
        // Three to five headers: a B-tree is one allocation and no hashing,
        // and grpcurl prints them in order.
        .btree_map(".tollgate.v1.Decision.headers")
        // `prost::Name` on every message: its full name, for the JSON
        // mapping's descriptor lookups and the admin HTTP table.
        .compile_fds_with_config(fds, {
            let mut config = prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
