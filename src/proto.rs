//! Generated protobuf and gRPC code, fenced here with the lints it cannot meet.
//!
//! Only `api`, `envoy`, `watch` and `server` name these types; the engine and
//! the plan model never do.

#![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]

/// The `tollgate.v1` API.
pub mod tollgate {
    pub mod v1 {
        tonic::include_proto!("tollgate.v1");
    }
}

/// The encoded `FileDescriptorSet` of every served proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_service() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a valid descriptor set");
        let services: Vec<_> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        assert!(
            services.contains(&"tollgate.v1.RateLimiter".to_owned()),
            "{services:?}"
        );
    }
}
