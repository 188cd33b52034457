//! When Redis fails: every decision waits at most --store-timeout, the
//! configured policy holds (closed: UNAVAILABLE; open: admitted), health
//! reports the store, nothing panics, and counting resumes when Redis is
//! back, without a restart.

mod support;

use std::time::Duration;

use support::process::{Served, serve, until};
use support::redis::RedisServer;
use tollgate::proto::tollgate::v1 as pb;

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

fn req() -> pb::LimitRequest {
    pb::LimitRequest {
        subject: "k".into(),
        ..Default::default()
    }
}

fn remaining(d: &pb::Decision) -> Option<u64> {
    d.limits.first().and_then(|l| l.remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_answers_unavailable_fast_then_resumes() {
    let mut redis = RedisServer::start();
    let s = start(&redis, "closed");
    let mut c = s.client().await;
    // The first call also connects; on a busy machine it may need a retry.
    until("a first decision", async || c.consume(req()).await.is_ok()).await;
    until("the store reported serving", async || {
        s.health_of("tollgate.store").await == 1
    })
    .await;

    redis.kill();
    // Each call is answered by the server's own --store-timeout, well
    // before the caller's generous deadline (which would make it
    // DEADLINE_EXCEEDED): no call waits on a store that is gone.
    for _ in 0..20 {
        let mut call = tonic::Request::new(req());
        call.set_timeout(Duration::from_secs(30));
        let err = c.consume(call).await.expect_err("no store, no decision");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    until("the store reported down", async || {
        s.health_of("tollgate.store").await == 2
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
        s.health_of("tollgate.store").await == 1
    })
    .await;
    let r = support::http::get(s.http_addr(), "/healthcheck", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_admits_through_an_outage_under_load() {
    let mut redis = RedisServer::start();
    let s = start(&redis, "open");
    let c = s.client().await;
    // Every answer's remaining, in order, while the load runs.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (c, seen, stop) = (c.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let d = c
                    .clone()
                    .consume(req())
                    .await
                    .expect("always an answer")
                    .into_inner();
                assert_eq!(d.verdict, pb::Verdict::Allowed as i32);
                let left = remaining(&d).expect("limited");
                seen.lock().expect("lock").push(left);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let answers = || seen.lock().expect("lock").clone();
    // Counted before the outage: each answer one less.
    until("counting under load", async || {
        answers().iter().filter(|&&r| r < 1000).count() >= 10
    })
    .await;
    redis.kill();
    // During the outage the load is admitted uncounted: every limit shows
    // untouched (1000 left), after answers that had counted.
    let before = answers().len();
    until("admitted through the outage", async || {
        answers()[before..].iter().filter(|&&r| r == 1000).count() >= 5
    })
    .await;
    redis.restart();
    // And counting resumes under the same load, without a restart.
    let outage = answers().len();
    until("counting resumed under load", async || {
        let after = &answers()[outage..];
        after.windows(2).any(|w| w[0] < 1000 && w[1] + 1 == w[0])
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("every answer admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_counts_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let s = start(&redis, "closed");
    let mut c = s.client().await;
    let err = c.consume(req()).await.expect_err("no store yet");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    redis.restart();
    until("counting started", async || c.consume(req()).await.is_ok()).await;
    let d = c.consume(req()).await.expect("consume").into_inner();
    assert!(remaining(&d).is_some_and(|r| r < 1000));
}

/// A flush that fails (Redis paused past the timeout) loses nothing: its
/// batch is retried, and the shared rollups sum exactly what was added. A
/// batch is added once however often it is sent: the same id twice (an
/// answer lost after Redis ran it) adds nothing the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_batch_is_retried_after_a_failed_flush_and_added_once() {
    use tollgate::insight::rollups::Rollups;
    use tollgate::insight::usage::{Granularity, Retention, Used};
    use tollgate::storage::redis::RedisStore;

    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), Duration::from_millis(300))
        .await
        .expect("connect");
    let rollups = Rollups::shared(Retention::default(), store, "replica-a".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let add = |subject: &str, admitted: u64| {
        rollups.add(
            now,
            &Used {
                account: "acme",
                subject,
                unit: "tokens",
                admitted,
                recorded: 0,
                refused: 0,
            },
        )
    };
    // A first batch loads the script, so the one sent while Redis is
    // paused runs late rather than failing with NOSCRIPT.
    add("k0", 1);
    rollups.flush().await.expect("a first flush");
    add("k1", 5);
    redis.pause();
    assert!(rollups.flush().await.is_err(), "Redis paused: a timeout");
    redis.resume();
    // Redis ran the late script meanwhile; this retry adds nothing twice,
    // and what came since goes in a batch of its own.
    add("k2", 7);
    until("a flush after Redis is back", async || {
        rollups.flush().await.is_ok()
    })
    .await;
    add("k1", 1);
    let day = now / 86_400_000_000_000 * 86_400_000_000_000;
    let rows = rollups
        .export(day, now + 1, Granularity::Day, Some("acme"), now)
        .await
        .expect("export");
    let of = |subject: &str| {
        rows.iter()
            .filter(|r| r.subject == subject)
            .map(|r| r.admitted)
            .sum::<u64>()
    };
    assert_eq!((of("k0"), of("k1"), of("k2")), (1, 6, 7), "{rows:?}");
    // Hours agree with days.
    let hours = rollups
        .export(
            now / 3_600_000_000_000 * 3_600_000_000_000,
            now + 1,
            Granularity::Hour,
            None,
            now,
        )
        .await
        .expect("export");
    assert_eq!(hours.iter().map(|r| r.admitted).sum::<u64>(), 14);

    use tollgate::storage::redis::usage::{Counts, Table};
    let store = RedisStore::connect(&redis.url(), Duration::from_secs(5))
        .await
        .expect("connect");
    let batch = [Counts {
        table: Table::Day,
        period: now / 86_400_000_000_000,
        account: "acme".into(),
        subject: "k3".into(),
        unit: "tokens".into(),
        counts: [4, 0, 0],
    }];
    let far = |_, _| 4_000_000_000;
    assert!(
        store
            .add_usage("replica-b:1", &batch, far)
            .await
            .expect("added")
    );
    assert!(
        !store
            .add_usage("replica-b:1", &batch, far)
            .await
            .expect("sent again")
    );
    let rows = rollups
        .export(day, now + 1, Granularity::Day, Some("acme"), now)
        .await
        .expect("export");
    let k3: u64 = rows
        .iter()
        .filter(|r| r.subject == "k3")
        .map(|r| r.admitted)
        .sum();
    assert_eq!(k3, 4, "{rows:?}");
}
