//! Generated protobuf and gRPC code, fenced here with the lints it cannot meet.
//!
//! Only `api`, `envoy`, `status`, `http` and `server` name these types; the
//! engine and the plan model never do.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]

/// The `tollgate.v1` API.
pub mod tollgate {
    pub mod v1 {
        tonic::include_proto!("tollgate.v1");
    }
}

/// Envoy's rate limit service (RLS v3) and the messages it uses, with
/// Envoy's own packages (see `proto/README.md`).
pub mod envoy {
    pub mod service {
        pub mod ratelimit {
            pub mod v3 {
                tonic::include_proto!("envoy.service.ratelimit.v3");
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                }
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
}

/// prost's codec with a 1 KiB starting buffer instead of tonic's 8 KiB.
///
/// Every response stream (each `WatchQuota` watcher) and every unary call
/// allocates one; decisions encode in a few hundred bytes, and the buffer
/// still grows for larger messages. Measured with `scripts/watch_load.sh`.
#[derive(Debug)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

fn buffer() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(1024, 32 * 1024)
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(buffer())
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
        for name in [
            "tollgate.v1.RateLimiter",
            "envoy.service.ratelimit.v3.RateLimitService",
        ] {
            assert!(services.contains(&name.to_owned()), "{services:?}");
        }
    }
}
