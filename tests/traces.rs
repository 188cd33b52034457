//! OpenTelemetry traces through the real binary: an OTLP/gRPC collector
//! started here receives a span per decision, from gRPC, HTTP and Envoy,
//! each under the W3C `traceparent` the caller sent, with the plan, class,
//! verdict, the limit that decided and the store's time.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::sync::mpsc;
use tollgate::proto::envoy::service::ratelimit::v3 as rls;
use tonic::transport::server::TcpIncoming;

use support::process::{Served, serve_env, temp_dir};
use support::{req, verdict};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const DEADLINE: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
classes:
  search: { match: ["/search"] }
envoy: { domains: { api: { subject: key } } }
plans:
  free:
    limits:
      - { name: per-minute, rate: 100/minute }
      - { name: searches, class: search, rate: 1/minute, algorithm: token_bucket }
default_plan: free
"#;

/// A collector: every span any export carried, with its service name.
struct Receiver(mpsc::UnboundedSender<(String, Span)>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

async fn collector() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let addr = listener.local_addr().expect("its address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, rx)
}

/// A span's attributes, as text (integers written out).
fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|a| {
            let value = match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((a.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next span received, within a generous deadline.
async fn next_span(spans: &mut mpsc::UnboundedReceiver<(String, Span)>) -> (String, Span) {
    tokio::time::timeout(DEADLINE, spans.recv())
        .await
        .expect("a span within a minute")
        .expect("the collector runs")
}

fn traceparent(span_id: &str, sampled: bool) -> String {
    format!("00-{TRACE}-{span_id}-{}", if sampled { "01" } else { "00" })
}

fn start(collector: SocketAddr, env: &[(&str, &str)]) -> Served {
    let dir = temp_dir("traces");
    // Each server its own file: the tests run at once.
    let config = dir.join(format!("{}.yaml", collector.port()));
    std::fs::write(&config, CONFIG).expect("write the config");
    let mut vars = vec![("OTEL_BSP_SCHEDULE_DELAY", "50")];
    vars.extend_from_slice(env);
    let endpoint = format!("http://{collector}");
    serve_env(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--http-listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &endpoint,
        ],
        &vars,
    )
}

fn with_parent<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn each_door_sends_a_span_per_decision_under_the_callers_traceparent() {
    let (at, mut spans) = collector().await;
    let served = start(at, &[]);
    let mut client = served.client().await;

    // gRPC: admitted, then refused by the class's own limit.
    for (span_id, expected) in [("00f067aa0ba902b7", 1), ("00f067aa0ba902b8", 2)] {
        let d = client
            .consume(with_parent(
                req("alice", "/search"),
                &traceparent(span_id, true),
            ))
            .await
            .expect("consume")
            .into_inner();
        assert_eq!(
            verdict(&d) as i32,
            expected,
            "first admitted, second refused"
        );
    }
    let (service, admitted) = next_span(&mut spans).await;
    assert_eq!(service, "tollgate");
    assert_eq!(admitted.name, "decision");
    assert_eq!(admitted.kind, SpanKind::Server as i32);
    assert_eq!(hex(&admitted.trace_id), TRACE);
    assert_eq!(hex(&admitted.parent_span_id), PARENT);
    assert!(admitted.start_time_unix_nano <= admitted.end_time_unix_nano);
    let a = attributes(&admitted);
    assert_eq!(a["tollgate.door"], "unary");
    assert_eq!(a["tollgate.mode"], "consume");
    assert_eq!(a["tollgate.subject"], "alice");
    assert_eq!(a["tollgate.plan"], "free");
    assert_eq!(a["tollgate.class"], "search");
    assert_eq!(a["tollgate.verdict"], "allowed");
    assert_eq!(a["tollgate.limit"], "searches");
    assert_eq!(a["tollgate.remaining"], "0");
    assert!(a["tollgate.store_us"].parse::<u64>().is_ok(), "{a:?}");
    assert_ne!(
        admitted.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    let (_, refused) = next_span(&mut spans).await;
    assert_eq!(hex(&refused.parent_span_id), "00f067aa0ba902b8");
    let r = attributes(&refused);
    assert_eq!(r["tollgate.verdict"], "rate_limited");
    assert_eq!(r["tollgate.limit"], "searches", "the limit that refused");
    assert!(
        r["tollgate.reason"].starts_with("searches exhausted"),
        "{r:?}"
    );
    assert_eq!(
        refused.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // HTTP: the header is the parent.
    let reply = support::http::send(
        served.http_addr(),
        "POST",
        "/v1/check",
        &[
            ("content-type", "application/json"),
            ("traceparent", &traceparent("1111111111111111", true)),
        ],
        r#"{"subject":"bob","resource":"/items"}"#.to_owned(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, http) = next_span(&mut spans).await;
    assert_eq!(hex(&http.parent_span_id), "1111111111111111");
    let h = attributes(&http);
    assert_eq!(
        (h["tollgate.door"].as_str(), h["tollgate.mode"].as_str()),
        ("http", "check")
    );
    assert_eq!(h["tollgate.limit"], "per-minute");

    // Envoy: a descriptor of a plan domain is a decision, under the call's parent.
    let mut envoy = rls::rate_limit_service_client::RateLimitServiceClient::connect(format!(
        "http://{}",
        served.addr
    ))
    .await
    .expect("connect");
    envoy
        .should_rate_limit(with_parent(
            support::envoy::request("api", &[&[("key", "carol")]]),
            &traceparent("2222222222222222", true),
        ))
        .await
        .expect("envoy");
    let (_, from_envoy) = next_span(&mut spans).await;
    assert_eq!(hex(&from_envoy.parent_span_id), "2222222222222222");
    let e = attributes(&from_envoy);
    assert_eq!(e["tollgate.door"], "envoy_plans");
    assert_eq!(e["tollgate.subject"], "carol");

    // Without a parent, a request starts its own trace.
    client
        .check_limit(req("dave", "/items"))
        .await
        .expect("check");
    let (_, root) = next_span(&mut spans).await;
    assert!(root.parent_span_id.is_empty());
    assert_ne!(hex(&root.trace_id), TRACE);
}

#[tokio::test]
async fn the_sampler_follows_the_parent_and_the_ratio_for_the_rest() {
    let (at, mut spans) = collector().await;
    let served = start(at, &[("OTEL_TRACES_SAMPLER_ARG", "0")]);
    let mut client = served.client().await;
    // Ratio 0: a request without a parent, and one whose parent was not
    // sampled, are not traced; a sampled parent is.
    client
        .check_limit(req("erin", "/items"))
        .await
        .expect("check");
    client
        .check_limit(with_parent(
            req("erin", "/items"),
            &traceparent("3333333333333333", false),
        ))
        .await
        .expect("check");
    client
        .check_limit(with_parent(
            req("erin", "/items"),
            &traceparent("4444444444444444", true),
        ))
        .await
        .expect("check");
    let (_, span) = next_span(&mut spans).await;
    assert_eq!(hex(&span.parent_span_id), "4444444444444444");
    // Nothing else arrives: one more sampled call is the next span seen.
    client
        .check_limit(with_parent(
            req("erin", "/items"),
            &traceparent("5555555555555555", true),
        ))
        .await
        .expect("check");
    let (_, span) = next_span(&mut spans).await;
    assert_eq!(hex(&span.parent_span_id), "5555555555555555");
}

#[tokio::test]
async fn a_bad_sampler_ratio_is_refused_at_start_naming_the_variable() {
    let output = std::process::Command::new(support::process::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            "http://127.0.0.1:1",
        ])
        .env("OTEL_TRACES_SAMPLER_ARG", "2")
        .output()
        .expect("run tollgate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_TRACES_SAMPLER_ARG"), "{stderr}");
}

#[tokio::test]
async fn a_decide_stream_without_a_parent_is_sampled_message_by_message() {
    let (at, mut spans) = collector().await;
    let served = start(at, &[("OTEL_TRACES_SAMPLER_ARG", "0.5")]);
    let mut client = served.client().await;
    let messages = (0..200u64).map(|id| tollgate::proto::tollgate::v1::DecideRequest {
        id,
        mode: tollgate::proto::tollgate::v1::Mode::Check as i32,
        request: Some(req("frank", "/items")),
        ..Default::default()
    });
    let mut answers = client
        .decide(tokio_stream::iter(messages))
        .await
        .expect("decide")
        .into_inner();
    let mut answered = 0;
    while let Some(a) = answers.message().await.expect("an answer") {
        assert!(a.decision.is_some(), "{a:?}");
        answered += 1;
        if answered == 200 {
            break;
        }
    }
    // A sampled call after them: its span comes after theirs.
    client
        .check_limit(with_parent(
            req("frank", "/items"),
            &traceparent("6666666666666666", true),
        ))
        .await
        .expect("check");
    let mut streamed = 0;
    loop {
        let (_, span) = next_span(&mut spans).await;
        if hex(&span.parent_span_id) == "6666666666666666" {
            break;
        }
        assert_eq!(attributes(&span)["tollgate.door"], "decide_stream");
        streamed += 1;
    }
    // Half of 200, each on its own: neither none nor all (either is a
    // chance of 2^-200 per message sampled apart).
    assert!((40..=160).contains(&streamed), "{streamed} of 200 sampled");
}
