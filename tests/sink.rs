//! The decision sink: every door hands each finished decision to it once,
//! and a consumer added through the server's options sees them all, with
//! the door and the mode they came with: unary gRPC, the `Decide` stream,
//! `ConsumeBatch`, HTTP `/v1`, forward auth, and Envoy's plan and rule
//! domains.

mod support;

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tollgate::engine::Mode;
use tollgate::proto::envoy::service::ratelimit::v3 as rls;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::sink::{Consumer, Decided, Door, What};

use support::http::{get, post};
use support::*;

const CONFIG: &str = r#"
plans:
  free:
    limits:
      - { rate: 100/minute }
default_plan: free
envoy:
  domains:
    api: { subject: key }
http:
  forward_auth:
    subject: { header: X-Api-Key }
"#;

const RULES: &str = "domain: rules\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 5 }\n";

/// Every decision it sees: the door, the mode, and the subject (or the
/// Envoy rule domain).
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(Door, Mode, String)>>);

impl Consumer for Recorder {
    fn decided(&self, d: &Decided<'_>) {
        let who = match d.what {
            What::Plan { request, .. } => request.subject.to_owned(),
            What::Rules { domain, .. } => domain.to_owned(),
            What::Settled { settlement, .. } => settlement.subject.clone(),
        };
        self.0.lock().expect("lock").push((d.door, d.mode, who));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_hands_each_decision_to_every_consumer_once() {
    let recorder = Arc::new(Recorder::default());
    let dir = std::env::temp_dir().join(format!("tollgate-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("rules.yaml"), RULES).expect("rules");
    let options = tollgate::server::Options {
        http: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        consumers: vec![recorder.clone()],
        ..Default::default()
    };
    let s = TestServer::start_envoy_opts(CONFIG, &dir, options).await;
    let http = s.http.expect("http listener");
    let mut c = s.client.clone();

    c.consume(req("unary", "/a")).await.expect("consume");
    c.check_limit(req("unary-check", "/a"))
        .await
        .expect("check");
    let messages = tokio_stream::iter(vec![pb::DecideRequest {
        id: 1,
        mode: pb::Mode::Record as i32,
        request: Some(req("stream", "/a")),
        ..Default::default()
    }]);
    let mut answers = c.decide(messages).await.expect("decide").into_inner();
    while let Some(a) = answers.message().await.expect("answer") {
        assert!(a.decision.is_some(), "{a:?}");
    }
    c.consume_batch(pb::ConsumeBatchRequest {
        requests: vec![req("batch-1", "/a"), req("batch-2", "/a")],
    })
    .await
    .expect("batch");
    let r = post(http, "/v1/consume", r#"{"subject":"http","resource":"/a"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(
        http,
        "/v1/forward-auth",
        &[("x-api-key", "gateway"), ("x-forwarded-uri", "/a")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut envoy = rls::rate_limit_service_client::RateLimitServiceClient::connect(format!(
        "http://{}",
        s.addr
    ))
    .await
    .expect("connect");
    for (domain, key, value) in [("api", "key", "envoy"), ("rules", "k", "v")] {
        envoy
            .should_rate_limit(support::envoy::request(domain, &[&[(key, value)]]))
            .await
            .expect("envoy");
    }

    let mut seen = recorder.0.lock().expect("lock").clone();
    seen.sort_by_key(|(_, _, who)| who.clone());
    let want = |door, mode, who: &str| (door, mode, who.to_owned());
    let mut expected = vec![
        want(Door::Unary, Mode::Consume, "unary"),
        want(Door::Unary, Mode::Check, "unary-check"),
        want(Door::DecideStream, Mode::Record, "stream"),
        want(Door::ConsumeBatch, Mode::Consume, "batch-1"),
        want(Door::ConsumeBatch, Mode::Consume, "batch-2"),
        want(Door::Http, Mode::Consume, "http"),
        want(Door::ForwardAuth, Mode::Consume, "gateway"),
        want(Door::EnvoyPlans, Mode::Consume, "envoy"),
        want(Door::EnvoyRules, Mode::Consume, "rules"),
    ];
    expected.sort_by_key(|(_, _, who)| who.clone());
    assert_eq!(seen, expected);
    s.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
