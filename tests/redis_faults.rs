//! When Redis fails: every decision waits at most --store-timeout, the
//! configured policy holds (closed: UNAVAILABLE; open: admitted), health
//! reports the store, nothing panics, and counting resumes when Redis is
//! back, without a restart.

mod support;

use std::time::{Duration, Instant};

use support::process::{Served, serve};
use support::redis::RedisServer;
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::Channel;

const CONFIG: &str = "plans: { free: { limits: [ { rate: 1000/day } ] } }\n";

fn start(redis: &RedisServer, policy: &str) -> Served {
    let dir = support::process::temp_dir(&format!("faults-{}-{policy}", redis.port));
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let config = config.display().to_string();
    let url = redis.url();
    serve(&[
        "--config",
        &config,
        "--store",
        &url,
        "--store-timeout",
        "300ms",
        "--store-failure",
        policy,
        "--http-listen",
        "127.0.0.1:0",
    ])
}

async fn client(s: &Served) -> pb::rate_limiter_client::RateLimiterClient<Channel> {
    pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect")
}

fn req() -> pb::LimitRequest {
    pb::LimitRequest {
        subject: "k".into(),
        ..Default::default()
    }
}

fn remaining(d: &pb::Decision) -> Option<u64> {
    d.limits.first().and_then(|l| l.remaining)
}

async fn store_health(s: &Served) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: "tollgate.store".into(),
    })
    .await
    .map_or(-1, |r| r.into_inner().status)
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_answers_unavailable_fast_then_resumes() {
    let mut redis = RedisServer::start();
    let s = start(&redis, "closed");
    let mut c = client(&s).await;
    // The first call also connects; on a busy machine it may need a retry.
    until("a first decision", async || c.consume(req()).await.is_ok()).await;
    until("the store reported serving", async || {
        store_health(&s).await == 1
    })
    .await;

    redis.kill();
    for _ in 0..20 {
        let started = Instant::now();
        let err = c.consume(req()).await.expect_err("no store, no decision");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
    }
    until("the store reported down", async || {
        store_health(&s).await == 2
    })
    .await;
    // Over HTTP: 503 with the error body, and the health check fails.
    let http = s.http_addr();
    let r = support::http::post(http, "/v1/consume", r#"{"subject":"k"}"#).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["code"], 14);
    let r = support::http::get(http, "/healthcheck", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (500, ""));

    redis.restart();
    until("counting resumed", async || c.consume(req()).await.is_ok()).await;
    // A fresh Redis: counting starts over, and goes on.
    let a = remaining(&c.consume(req()).await.expect("consume").into_inner());
    let b = remaining(&c.consume(req()).await.expect("consume").into_inner());
    assert_eq!(a.map(|a| a - 1), b);
    until("the store reported serving again", async || {
        store_health(&s).await == 1
    })
    .await;
    let r = support::http::get(s.http_addr(), "/healthcheck", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_admits_through_an_outage_under_load() {
    let mut redis = RedisServer::start();
    let s = start(&redis, "open");
    let c = client(&s).await;
    let load = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..400 {
                let d = c
                    .clone()
                    .consume(req())
                    .await
                    .expect("always an answer")
                    .into_inner();
                assert_eq!(d.verdict, pb::Verdict::Allowed as i32);
                answered += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    assert_eq!(load.await.expect("no panic"), 400);
    let mut c = c;
    until("counting resumed", async || {
        let a = remaining(&c.consume(req()).await.expect("consume").into_inner());
        let b = remaining(&c.consume(req()).await.expect("consume").into_inner());
        a.is_some_and(|a| a < 1000) && a.map(|a| a - 1) == b
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_counts_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let s = start(&redis, "closed");
    let mut c = client(&s).await;
    let err = c.consume(req()).await.expect_err("no store yet");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    redis.restart();
    until("counting started", async || c.consume(req()).await.is_ok()).await;
    let d = c.consume(req()).await.expect("consume").into_inner();
    assert!(remaining(&d).is_some_and(|r| r < 1000));
}
