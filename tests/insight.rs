//! Quota insight, through the real server: threshold events once per
//! threshold per window on `Admin.WatchEvents`, the SSE route and a signed
//! webhook (whose receiver fails, then recovers); the top limited subjects
//! over gRPC and HTTP; refusals in Prometheus by plan, class and limit.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::storage::memory::MemoryStore;

use support::http::{Events, get};
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(hook: SocketAddr) -> String {
    format!(
        r#"
classes:
  search: {{ match: ["/search"] }}
events:
  thresholds: [50%, 100%]
  webhooks:
    - url: http://{hook}/hooks
      secret: {SECRET}
plans:
  free:
    limits:
      - {{ name: per-minute, rate: 10/minute }}
  pro:
    events: {{ thresholds: [90%] }}
    limits:
      - {{ name: pro-minute, rate: 10/minute }}
      - {{ name: pro-search, class: search, rate: 3/minute, thresholds: [] }}
default_plan: free
assignments: {{ acme: pro }}
"#
    )
}

/// One delivery the receiver accepted: its headers and body, verified.
struct Delivery {
    id: String,
    body: serde_json::Value,
}

/// A webhook receiver on a real socket: answers 500 to its first request,
/// then 200, and passes on every request it accepts after checking its
/// signature as a receiver would (`tollgate::webhooks::verify`).
async fn receiver() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Delivery>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                let service = service_fn(move |r: hyper::Request<Incoming>| {
                    let (tx, seen) = (tx.clone(), seen.clone());
                    async move {
                        let (parts, body) = r.into_parts();
                        let body = body.collect().await.expect("body").to_bytes();
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .expect("clock")
                            .as_secs();
                        tollgate::webhooks::verify(SECRET, &parts.headers, &body, now, 300)
                            .expect("a valid Standard Webhooks signature");
                        let status = if n == 0 { 500 } else { 200 };
                        if status == 200 {
                            let id = parts.headers["webhook-id"].to_str().expect("id").to_owned();
                            let body = serde_json::from_slice(&body).expect("JSON");
                            let _ = tx.send(Delivery { id, body });
                        }
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx, attempts)
}

async fn start(hook: SocketAddr, metrics: Option<TcpListener>) -> TestServer {
    let options = tollgate::server::Options {
        admin_token: Some(ADMIN_TOKEN.into()),
        http: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        metrics,
        ..Default::default()
    };
    TestServer::start_opts(&config(hook), MemoryStore::new(10_000), options).await
}

async fn delivery(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a delivery in time")
        .expect("receiver running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_fires_once_per_window_to_watchers_and_a_signed_webhook() {
    let (hook, mut deliveries, attempts) = receiver().await;
    let s = start(hook, None).await;
    let http = s.http.expect("http");
    let mut admin = s.admin().await;
    let mut events = admin
        .watch_events(authed(pb::WatchEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let mut sse = Events::open_with(
        http,
        "/v1/admin/events?plan=free",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(sse.status, 200);

    // Twelve calls against 10/minute: 50% at the 5th, 100% at the 10th, and
    // the two refused add nothing.
    assert_eq!(s.consume_n(&req("alice", "/a"), 12).await, 10);
    let half = next_event(&mut events).await;
    assert_eq!(
        (
            half.subject.as_str(),
            half.plan.as_str(),
            half.limit.as_str()
        ),
        ("alice", "free", "per-minute")
    );
    assert_eq!(
        (half.threshold.as_str(), half.used, half.amount),
        ("50%", 5, 10)
    );
    assert_eq!(half.unit, "requests");
    assert_eq!(
        half.window_reset.expect("reset").seconds as u64,
        T0 / 1_000_000_000 + 60
    );
    let full = next_event(&mut events).await;
    assert_eq!((full.threshold.as_str(), full.used), ("100%", 10));
    assert_ne!(half.id, full.id);
    assert!(
        half.id.starts_with("evt_") && half.id.len() == 36,
        "{}",
        half.id
    );

    // The same two on SSE, with the event's id.
    let first = sse.next_event().await;
    assert_eq!(
        (first.name.as_str(), first.id.as_str()),
        ("threshold", half.id.as_str())
    );
    let data: serde_json::Value = serde_json::from_str(&first.data).expect("JSON");
    assert_eq!(data["threshold"], "50%");
    assert_eq!(data["used"], "5", "uint64 as protobuf JSON writes it");
    assert_eq!(sse.next_event().await.id, full.id);

    // A plan's own thresholds; a limit with `thresholds: []` announces none.
    for _ in 0..9 {
        s.consume(of_account(req("acme-key", "/a"), "acme")).await;
    }
    for _ in 0..3 {
        s.consume(of_account(req("acme-key", "/search"), "acme"))
            .await;
    }
    let pro = next_event(&mut events).await;
    assert_eq!(
        (
            pro.account.as_str(),
            pro.limit.as_str(),
            pro.threshold.as_str(),
            pro.used
        ),
        ("acme", "pro-minute", "90%", 9)
    );

    // A new window: the thresholds fire again, with new ids.
    s.advance(secs(60));
    assert_eq!(s.consume_n(&req("alice", "/a"), 5).await, 5);
    let again = next_event(&mut events).await;
    assert_eq!(
        (again.threshold.as_str(), again.subject.as_str()),
        ("50%", "alice")
    );
    assert_ne!(again.id, half.id);

    // The webhook: the first attempt failed (500), then every event came,
    // in order, signed, with the event's id as webhook-id.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(delivery(&mut deliveries).await);
    }
    let ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            half.id.as_str(),
            full.id.as_str(),
            pro.id.as_str(),
            again.id.as_str()
        ]
    );
    assert_eq!(got[0].body["type"], "quota.threshold_crossed");
    assert_eq!(got[0].body["data"]["subject"], "alice");
    assert_eq!(got[0].body["data"]["threshold"], "50%");
    assert_eq!(got[2].body["data"]["account"], "acme");
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "one failed, four delivered"
    );
    // Nothing more: no event for the refusals or the search limit.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.message())
            .await
            .is_err(),
        "no further event"
    );
    s.stop().await;
}

async fn scrape(addr: SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_limited_subjects_are_listed_without_a_metric_per_subject() {
    let (hook, _deliveries, _) = receiver().await;
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let s = start(hook, Some(metrics)).await;
    let http = s.http.expect("http");
    // Refused: heavy 5 times, light twice; acme's search 1 time.
    assert_eq!(s.consume_n(&req("heavy", "/a"), 15).await, 10);
    assert_eq!(s.consume_n(&req("light", "/a"), 12).await, 10);
    assert_eq!(s.consume_n(&req("calm", "/a"), 3).await, 3);
    for _ in 0..4 {
        s.consume(of_account(req("acme-key", "/search"), "acme"))
            .await;
    }
    let mut admin = s.admin().await;
    let top = admin
        .top_subjects(authed(pb::TopSubjectsRequest {
            window: pb::TopWindow::Minute as i32,
            ..Default::default()
        }))
        .await
        .expect("top")
        .into_inner();
    let rows: Vec<(&str, u64, &str)> = top
        .subjects
        .iter()
        .map(|r| (r.subject.as_str(), r.refused, r.top_limit.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("heavy", 5, "per-minute"),
            ("light", 2, "per-minute"),
            ("acme-key", 1, "pro-search")
        ]
    );
    assert_eq!(
        top.error_bound, 0,
        "fewer subjects than the sketch holds: exact"
    );
    assert_eq!(top.subjects[0].admitted, 10);
    assert_eq!(top.subjects[2].account, "acme");

    // By consumption, filtered by plan.
    let pro = admin
        .top_subjects(authed(pb::TopSubjectsRequest {
            by: pb::TopBy::Consumption as i32,
            plan: "free".into(),
            count: 2,
            ..Default::default()
        }))
        .await
        .expect("top")
        .into_inner();
    let names: Vec<&str> = pro.subjects.iter().map(|r| r.subject.as_str()).collect();
    assert_eq!(names, ["heavy", "light"]);
    assert_eq!(pro.window, pb::TopWindow::Hour as i32, "an hour by default");

    // Over HTTP, with the token; a limit filter.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let reply = get(
        http,
        "/v1/admin/top?window=minute&by=refusals&limit=pro-search",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["subjects"][0]["subject"], "acme-key", "{json}");
    assert_eq!(json["subjects"].as_array().map(Vec::len), Some(1), "{json}");
    // The admin table's POST spelling answers the same.
    let posted = support::http::send(
        http,
        "POST",
        "/v1/admin/top-subjects",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        r#"{"window":"MINUTE","limit":"pro-search"}"#.to_owned(),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(posted.json()["subjects"], json["subjects"]);
    // Without it, refused; a bad window named.
    assert_eq!(get(http, "/v1/admin/top", &[]).await.status, 401);
    let bad = get(
        http,
        "/v1/admin/top?window=week",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.message().starts_with("window:"), "{}", bad.body);
    let unknown = get(
        http,
        "/v1/admin/top?subject=x",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(
        unknown.message().starts_with("subject: unknown parameter"),
        "{}",
        unknown.body
    );
    let too_many = admin
        .top_subjects(authed(pb::TopSubjectsRequest {
            count: 5000,
            ..Default::default()
        }))
        .await
        .expect_err("too many rows");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    assert!(
        too_many.message().starts_with("count:"),
        "{}",
        too_many.message()
    );

    // Prometheus: refusals by plan, class and limit, never by subject.
    let text = scrape(metrics_addr).await;
    assert!(
        text.contains(
            r#"tollgate_refusals_total{plan="free",class="",limit="per-minute",shadow="false"} 7"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_refusals_total{plan="pro",class="search",limit="pro-search",shadow="false"} 1"#),
        "{text}"
    );
    assert!(!text.contains("heavy"), "a subject leaked into a label");
    s.stop().await;
}

const SHADOW: &str = r#"
events:
  thresholds: [100%]
plans:
  free:
    limits:
      - { name: per-minute, rate: 10/minute }
      - { name: tighter, rate: 3/minute, shadow: true }
  trial:
    shadow: true
    limits:
      - { name: trial-minute, rate: 2/minute, max_cost: 1 }
  pro:
    limits:
      - { name: pro-minute, rate: 5/minute }
  pro-next:
    shadow: true
    extends: pro
default_plan: free
assignments: { trying: trial, mover: pro-next }
"#;

fn shadow_status(d: &pb::Decision, name: &str) -> (bool, bool, Option<u64>) {
    let l = d.limits.iter().find(|l| l.name == name).expect("the limit");
    (l.shadow, l.would_deny, l.remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_limit_is_counted_and_reported_but_never_refuses() {
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let options = tollgate::server::Options {
        admin_token: Some(ADMIN_TOKEN.into()),
        metrics: Some(metrics),
        ..Default::default()
    };
    let s = TestServer::start_opts(SHADOW, MemoryStore::new(10_000), options).await;
    let mut admin = s.admin().await;
    let mut events = admin
        .watch_events(authed(pb::WatchEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let mut decisions = Vec::new();
    for _ in 0..5 {
        decisions.push(s.consume(req("alice", "/a")).await);
    }
    // All five admitted; the shadow limit counted the first three, as
    // enforced it would have, and would have refused the last two.
    assert!(decisions.iter().all(|d| verdict(d) == pb::Verdict::Allowed));
    assert_eq!(
        shadow_status(&decisions[2], "tighter"),
        (true, false, Some(0))
    );
    assert_eq!(
        shadow_status(&decisions[3], "tighter"),
        (true, true, Some(0))
    );
    assert_eq!(
        shadow_status(&decisions[4], "tighter"),
        (true, true, Some(0))
    );
    assert_eq!(
        shadow_status(&decisions[4], "per-minute"),
        (false, false, Some(5))
    );
    // The caller is held to the enforced limit only.
    assert_eq!(header(&decisions[4], "X-RateLimit-Limit"), Some("10"));
    assert_eq!(header(&decisions[4], "X-RateLimit-Remaining"), Some("5"));

    // Its crossing of 100% is an event, marked.
    let e = next_event(&mut events).await;
    assert_eq!(
        (e.limit.as_str(), e.threshold.as_str(), e.used, e.shadow),
        ("tighter", "100%", 3, true)
    );

    // A shadow plan refuses nothing, not even a cost over its max_cost.
    for _ in 0..3 {
        let d = s.consume(req("trying", "/a")).await;
        assert_eq!(verdict(&d), pb::Verdict::Allowed, "{d:?}");
    }
    let big = s
        .consume(with_cost(req("trying", "/a"), &[("requests", 5)]))
        .await;
    assert_eq!(verdict(&big), pb::Verdict::Allowed, "{big:?}");
    assert_eq!(shadow_status(&big, "trial-minute"), (true, true, Some(0)));

    // A shadow plan's limits count apart from the enforced plan's same
    // limits: trying pro-next three times leaves pro's count alone.
    for _ in 0..3 {
        let d = s.consume(req("mover", "/a")).await;
        assert!(shadow_status(&d, "pro-minute").0, "{d:?}");
    }
    admin
        .set_plan(authed(pb::SetPlanRequest {
            account: "mover".into(),
            plan: "pro".into(),
            clear: false,
        }))
        .await
        .expect("set plan");
    let d = s.consume(req("mover", "/a")).await;
    assert_eq!(
        shadow_status(&d, "pro-minute"),
        (false, false, Some(4)),
        "{d:?}"
    );

    // In the top list and the metrics, as refusals of the shadow limit.
    let top = admin
        .top_subjects(authed(pb::TopSubjectsRequest {
            window: pb::TopWindow::Minute as i32,
            ..Default::default()
        }))
        .await
        .expect("top")
        .into_inner();
    let rows: Vec<(&str, u64, &str)> = top
        .subjects
        .iter()
        .map(|r| (r.subject.as_str(), r.refused, r.top_limit.as_str()))
        .collect();
    assert_eq!(
        rows,
        [("alice", 2, "tighter"), ("trying", 2, "trial-minute")]
    );
    let text = scrape(metrics_addr).await;
    assert!(
        text.contains(
            r#"tollgate_refusals_total{plan="free",class="",limit="tighter",shadow="true"} 2"#
        ),
        "{text}"
    );
    assert!(
        !text.contains(r#"verdict="rate_limited""#),
        "nothing was refused: {text}"
    );
    s.stop().await;
}

/// Envoy is held to the enforced limits only: a plan of shadow limits
/// answers OK with no limit shown, however far past them it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_never_sees_a_shadow_limit() {
    use tollgate::proto::envoy::service::ratelimit::v3 as rls;
    let yaml = "envoy: { domains: { api: { subject: key } } }\nplans:\n  trial: { shadow: true, limits: [ { rate: 2/minute } ] }\n";
    let s = TestServer::start(yaml).await;
    let mut envoy = rls::rate_limit_service_client::RateLimitServiceClient::connect(format!(
        "http://{}",
        s.addr
    ))
    .await
    .expect("connect");
    for _ in 0..3 {
        let r = envoy
            .should_rate_limit(support::envoy::request("api", &[&[("key", "k")]]))
            .await
            .expect("envoy")
            .into_inner();
        assert_eq!(
            r.overall_code,
            rls::rate_limit_response::Code::Ok as i32,
            "{r:?}"
        );
        let status = &r.statuses[0];
        assert_eq!(status.current_limit, None, "{r:?}");
        assert_eq!(status.limit_remaining, u32::MAX, "{r:?}");
    }
    s.stop().await;
}
