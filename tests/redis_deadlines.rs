//! Deadlines that mean the store, and a refused request that costs nothing:
//! the real binary on a real redis-server. Waiting its turn in tollgate's
//! queue is not a store failure; a script that runs after its caller was
//! answered counts nothing; Redis out of memory shows in health and, failing
//! open, still refuses a subject past its limit.

mod support;

use support::process::{Served, serve, until};
use support::redis::RedisServer;
use tokio_stream::StreamExt;
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::Channel;

const CONFIG: &str = "plans: { free: { limits: [ { rate: 500/hour } ] } }\n";

fn start(redis: &RedisServer, policy: &str, timeout: &str) -> Served {
    let dir = support::process::temp_dir(&format!("deadlines-{}-{policy}", redis.port));
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
        timeout,
        "--store-failure",
        policy,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
}

fn req(subject: &str) -> pb::LimitRequest {
    pb::LimitRequest {
        subject: subject.into(),
        ..Default::default()
    }
}

/// What `subject` has left, by a check that counts nothing.
async fn left(c: &mut pb::rate_limiter_client::RateLimiterClient<Channel>, subject: &str) -> u64 {
    let d = c
        .check_limit(req(subject))
        .await
        .expect("check")
        .into_inner();
    d.limits[0].remaining.expect("limited")
}

/// A metric's value from the server's `/metrics`.
async fn metric(s: &Served, name: &str) -> f64 {
    let addr = s
        .seen
        .iter()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .expect("the log says where metrics are")
        .parse()
        .expect("an address");
    let text = support::http::get(addr, "/metrics", &[]).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Four `Decide` streams of 3,000 consumes each on one subject of 500 an
/// hour: exactly 500 admitted, and not one store failure, however long the
/// decisions queue (the round trip is what the store timeout bounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_decisions_are_no_store_failure_and_admit_exactly_the_limit() {
    for policy in ["open", "closed"] {
        let redis = RedisServer::start();
        let s = start(&redis, policy, "100ms");
        let mut c = s.client().await;
        until("a first decision", async || {
            c.check_limit(req("warm")).await.is_ok()
        })
        .await;
        let streams: Vec<_> = (0..4)
            .map(|stream| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    let messages =
                        tokio_stream::iter((0..3000u64).map(move |i| pb::DecideRequest {
                            id: stream * 10_000 + i,
                            mode: pb::Mode::Consume as i32,
                            request: Some(req("k")),
                            ..Default::default()
                        }));
                    let mut answers = c.decide(messages).await.expect("opens").into_inner();
                    let (mut allowed, mut errors) = (0, Vec::new());
                    while let Some(a) = answers.next().await {
                        let a = a.expect("the stream stays up");
                        match (a.decision, a.error) {
                            (Some(d), None) if d.verdict == pb::Verdict::Allowed as i32 => {
                                allowed += 1
                            }
                            (Some(_), None) => {}
                            (_, e) => errors.push(e),
                        }
                    }
                    (allowed, errors)
                })
            })
            .collect();
        let mut allowed = 0;
        for s in streams {
            let (a, errors) = s.await.expect("no panic");
            assert!(
                errors.is_empty(),
                "{policy}: {} errors, first {:?}",
                errors.len(),
                errors.first()
            );
            allowed += a;
        }
        assert_eq!(allowed, 500, "{policy}");
        assert_eq!(left(&mut c, "k").await, 0);
        assert_eq!(
            metric(&s, "tollgate_store_failures_total").await,
            0.0,
            "{policy}"
        );
    }
}

/// Redis stopped (SIGSTOP) with decisions in flight: their callers are
/// answered when the round trip times out; when Redis resumes and runs the
/// scripts it was sent, past their deadlines, they count nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_run_after_its_caller_was_answered_counts_nothing() {
    for policy in ["closed", "open"] {
        let redis = RedisServer::start();
        let s = start(&redis, policy, "200ms");
        let mut c = s.client().await;
        until("a first decision", async || {
            c.check_limit(req("warm")).await.is_ok()
        })
        .await;
        for _ in 0..100 {
            let d = c.consume(req("k")).await.expect("consume").into_inner();
            assert_eq!(d.verdict, pb::Verdict::Allowed as i32);
        }
        redis.pause();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let mut c = c.clone();
                tokio::spawn(async move { c.consume(req("k")).await })
            })
            .collect();
        for call in calls {
            match (policy, call.await.expect("no panic")) {
                ("closed", Err(e)) => assert_eq!(e.code(), tonic::Code::Unavailable),
                ("open", Ok(d)) => assert_eq!(d.into_inner().verdict, pb::Verdict::Allowed as i32),
                (p, r) => panic!("{p}: {r:?}"),
            }
        }
        redis.resume();
        until("redis answers again", async || {
            c.check_limit(req("k")).await.is_ok()
        })
        .await;
        // Whatever Redis ran late counted nothing: 400 left of 500.
        assert_eq!(left(&mut c, "k").await, 400, "{policy}");
        // Those in flight when Redis stopped were sent: each might have counted.
        assert!(metric(&s, "tollgate_store_uncertain_total").await >= 1.0);
    }
}

/// Redis out of memory (`maxmemory` reached, `noeviction`): the store's
/// health turns NOT_SERVING with a metric; failing open, a subject past its
/// limit is still refused (the decision is made again as a read), one
/// within it admitted uncounted; everything comes back with the memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_shows_and_never_admits_past_a_limit() {
    for policy in ["open", "closed"] {
        let redis = RedisServer::start();
        let s = start(&redis, policy, "500ms");
        let mut c = s.client().await;
        until("a first decision", async || {
            c.check_limit(req("warm")).await.is_ok()
        })
        .await;
        for _ in 0..500 {
            c.consume(req("k")).await.expect("consume");
        }
        until("the store reported serving", async || {
            s.health_of("tollgate.store").await == 1
        })
        .await;
        redis
            .cli(&["config", "set", "maxmemory-policy", "noeviction"])
            .expect("config");
        redis
            .cli(&["config", "set", "maxmemory", "1"])
            .expect("config");
        // Past its limit: refused, whatever the policy (a refusal writes
        // nothing, so Redis decides it even out of memory).
        for _ in 0..50 {
            let d = c.consume(req("k")).await.expect("decided").into_inner();
            assert_eq!(d.verdict, pb::Verdict::RateLimited as i32, "{policy}");
        }
        match (policy, c.consume(req("fresh")).await) {
            ("open", Ok(d)) => assert_eq!(d.into_inner().verdict, pb::Verdict::Allowed as i32),
            ("closed", Err(e)) => assert_eq!(e.code(), tonic::Code::Unavailable),
            (p, r) => panic!("{p}: {r:?}"),
        }
        until("the store reported not serving", async || {
            s.health_of("tollgate.store").await == 2
        })
        .await;
        assert_eq!(metric(&s, "tollgate_store_refusing_writes").await, 1.0);

        redis
            .cli(&["config", "set", "maxmemory", "0"])
            .expect("config");
        until("counting resumed", async || {
            c.consume(req("fresh")).await.is_ok()
        })
        .await;
        until("the store reported serving again", async || {
            s.health_of("tollgate.store").await == 1
        })
        .await;
        assert_eq!(metric(&s, "tollgate_store_refusing_writes").await, 0.0);
        // Only the consumes after the memory came back counted for "fresh".
        assert!(left(&mut c, "fresh").await >= 498);
    }
}
