//! Envoy's rate limit service under test: rule files in a temporary
//! directory, a server with a manual clock, a generated RLS client, and
//! builders for requests and the exact statuses expected.
#![allow(unused_imports)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::transport::Channel;

pub use tollgate::envoy::{HeaderNames, Options};
pub use tollgate::proto::envoy::config::core::v3::HeaderValue;
pub use tollgate::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry, rate_limit_descriptor::RateLimitOverride,
};
pub use tollgate::proto::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse,
    rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit},
    rate_limit_service_client::RateLimitServiceClient,
};
pub use tollgate::proto::envoy::r#type::v3::RateLimitUnit;

use super::TestServer;

/// A plans file for servers that only need the rules.
pub const NO_PLANS: &str = "plans: { free: { limits: [ { rate: 1000/minute } ] } }\n";

pub struct Envoy {
    pub server: TestServer,
    pub client: RateLimitServiceClient<Channel>,
    pub dir: PathBuf,
}

impl Envoy {
    /// Serves the rule files `rules` (one file each) with default options.
    pub async fn start(rules: &[&str]) -> Self {
        Self::with(rules, Options::default(), NO_PLANS).await
    }

    /// Serves `rules` with `options` and the plans of `plans`.
    pub async fn with(rules: &[&str], options: Options, plans: &str) -> Self {
        let dir = temp_dir();
        for (i, text) in rules.iter().enumerate() {
            std::fs::write(dir.join(format!("rules-{i}.yaml")), text).expect("write rules");
        }
        let server = TestServer::start_envoy(plans, &dir, options).await;
        let client = RateLimitServiceClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        Self {
            server,
            client,
            dir,
        }
    }

    /// One call; panics on an error status.
    pub async fn hit(&self, r: RateLimitRequest) -> RateLimitResponse {
        self.call(r).await.expect("ShouldRateLimit answers")
    }

    pub async fn call(&self, r: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        self.client
            .clone()
            .should_rate_limit(r)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The statuses of `n` calls of `r`, the last one's.
    pub async fn hit_n(&self, r: &RateLimitRequest, n: usize) -> RateLimitResponse {
        let mut last = None;
        for _ in 0..n {
            last = Some(self.hit(r.clone()).await);
        }
        last.expect("n > 0")
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-envoy-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A descriptor of `entries`.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A request of `domain` with one descriptor per entry list.
pub fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors.iter().map(|e| descriptor(e)).collect(),
        hits_addend: 0,
    }
}

fn duration(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

fn limit(name: &str, amount: u32, unit: Unit) -> Option<RateLimit> {
    Some(RateLimit {
        name: name.into(),
        requests_per_unit: amount,
        unit: unit as i32,
    })
}

/// Under the limit `amount`/`unit` with `remaining` left, resetting in `reset` s.
pub fn ok(amount: u32, unit: Unit, remaining: u32, reset: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: limit("", amount, unit),
        limit_remaining: remaining,
        duration_until_reset: Some(duration(reset)),
        quota: None,
    }
}

/// Over the limit `amount`/`unit`, resetting in `reset` s.
pub fn over(amount: u32, unit: Unit, reset: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: Code::OverLimit as i32,
        current_limit: limit("", amount, unit),
        limit_remaining: 0,
        duration_until_reset: Some(duration(reset)),
        quota: None,
    }
}

/// `s` with its limit named `name`.
pub fn named(mut s: DescriptorStatus, name: &str) -> DescriptorStatus {
    if let Some(l) = &mut s.current_limit {
        l.name = name.into();
    }
    s
}

/// No limit applies: OK, nothing else.
pub fn no_limit() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

/// An unlimited descriptor's status.
pub fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        limit_remaining: u32::MAX,
        ..Default::default()
    }
}

pub fn code(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).expect("known code")
}

pub fn headers(r: &RateLimitResponse) -> Vec<(String, String)> {
    r.response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}
