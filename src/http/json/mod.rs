//! The protobuf JSON mapping of the served messages, both ways, as grpcurl
//! and Go's protojson speak it: lowerCamelCase names out (either name in),
//! enums as their names, 64-bit integers as strings, defaults left out,
//! unknown fields refused.
//!
//! Messages go through [`prost_reflect::DynamicMessage`] over the
//! descriptor set that build.rs writes for reflection: one description of
//! the API for gRPC, reflection and JSON, at the cost of a protobuf
//! encoding between the generated type and the dynamic one. The decision
//! path has its own writer and reader ([`decision`]), proven equal to these.

pub mod decision;

use std::sync::LazyLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::Status;

use crate::proto::FILE_DESCRIPTOR_SET;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("build.rs writes a complete descriptor set")
});

/// The descriptor of message `M`, by its full name (`prost::Name`).
fn descriptor<M: Name>() -> MessageDescriptor {
    let name = M::full_name();
    POOL.get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is in the descriptor set"))
}

/// Reads `body` as the JSON of message `M`; an empty body is the empty
/// message. A bad body is `INVALID_ARGUMENT` saying where.
pub fn decode<M: Message + Default + Name>(body: &[u8]) -> Result<M, Status> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let message = DynamicMessage::deserialize(
        descriptor::<M>(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
    )
    .and_then(|m| de.end().map(|()| m))
    .map_err(|e| {
        let field = track.path().to_string();
        let field = if field == "." {
            "body".to_owned()
        } else {
            field
        };
        Status::invalid_argument(format!("{field}: {e}"))
    })?;
    message
        .transcode_to()
        .map_err(|e| Status::invalid_argument(format!("body: {e}")))
}

/// `message` as JSON.
pub fn encode<M: Message + Name>(message: &M) -> Vec<u8> {
    let dynamic = DynamicMessage::decode(descriptor::<M>(), message.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    serde_json::to_vec(&dynamic).expect("a message serializes to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tollgate::v1 as pb;

    #[test]
    fn writes_json_names_enum_names_and_64_bit_strings() {
        let d = pb::Decision {
            verdict: pb::Verdict::RateLimited as i32,
            retry_after: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            limits: vec![pb::LimitStatus {
                limit: 10,
                remaining: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&d)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "verdict": "RATE_LIMITED",
                "retryAfter": "3s",
                "limits": [{"limit": "10", "remaining": "0"}],
            })
        );
    }

    #[test]
    fn reads_either_name_and_refuses_unknown_fields() {
        let r: pb::LimitRequest =
            decode(br#"{"subject":"k","cost":{"tokens":"5"},"attributes":{"method":"GET"}}"#)
                .expect("valid");
        assert_eq!(r.cost["tokens"], 5);
        let s: pb::SetPlanRequest = decode(br#"{"account":"a","plan":"pro"}"#).expect("valid");
        assert_eq!(s.plan, "pro");
        let o: pb::Override = decode(br#"{"account":"a","expires_at":"2030-01-01T00:00:00Z"}"#)
            .expect("original field names are accepted");
        assert_eq!(o.expires_at.map(|t| t.seconds), Some(1_893_456_000));
        let err = decode::<pb::LimitRequest>(br#"{"subjct":"k"}"#).expect_err("unknown field");
        assert!(err.message().contains("subjct"), "{}", err.message());
        let empty: pb::ListPlansRequest = decode(b"").expect("empty body");
        assert_eq!(empty, pb::ListPlansRequest::default());
    }
}
