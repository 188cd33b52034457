//! Several real tollgate processes on one real redis-server behave as one
//! limiter: exact totals for every algorithm (a calendar month too) with clients spread across the
//! replicas, upgrades and watchers across replicas, Envoy's rule files on the
//! same store, and a replica restart that loses nothing.

mod support;

use std::time::{Duration, Instant};

use support::process::{Served, serve_env, stop};
use support::redis::RedisServer;
use support::{ADMIN_TOKEN, next_update, update_remaining, with_token};
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::Channel;

const CONFIG: &str = r#"
classes:
  fixed: { match: ["/fixed"] }
  sliding: { match: ["/sliding"] }
  bucket: { match: ["/bucket"] }
  burst: { match: ["/burst"] }
  monthly: { match: ["/monthly"] }
plans:
  free:
    limits:
      - { name: fixed, class: fixed, rate: 30/day }
      - { name: sliding, class: sliding, rate: 30/day, algorithm: sliding_window }
      - { name: bucket, class: bucket, rate: 30/day, algorithm: token_bucket }
      - { name: burst, class: burst, rate: 30/day, burst: 5 }
      - { name: monthly, class: monthly, rate: 30/month }
  pro:
    extends: free
    multiplier: 10
default_plan: free
"#;

const RULES: &str = "domain: edge\ndescriptors:\n  - key: ip\n    rate_limit: { unit: day, requests_per_unit: 20 }\n";

struct Replicas {
    redis: RedisServer,
    dir: std::path::PathBuf,
    served: Vec<Served>,
}

fn args(redis: &RedisServer, dir: &std::path::Path) -> Vec<String> {
    vec![
        "--config".into(),
        dir.join("tollgate.yaml").display().to_string(),
        "--envoy-config".into(),
        dir.join("rules").display().to_string(),
        "--store".into(),
        redis.url(),
        "--store-timeout".into(),
        "2s".into(),
        "--watch-interval".into(),
        "20ms".into(),
    ]
}

fn start_one(redis: &RedisServer, dir: &std::path::Path) -> Served {
    let args = args(redis, dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve_env(&args, &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)])
}

fn replicas(n: usize) -> Replicas {
    replicas_with(n, CONFIG)
}

fn replicas_with(n: usize, config: &str) -> Replicas {
    let redis = RedisServer::start();
    let dir = support::process::temp_dir(&format!("replicas-{}", redis.port));
    std::fs::create_dir_all(dir.join("rules")).expect("dir");
    std::fs::write(dir.join("tollgate.yaml"), config).expect("config");
    std::fs::write(dir.join("rules/edge.yaml"), RULES).expect("rules");
    let served = (0..n).map(|_| start_one(&redis, &dir)).collect();
    Replicas { redis, dir, served }
}

async fn client(s: &Served) -> pb::rate_limiter_client::RateLimiterClient<Channel> {
    pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect")
}

async fn admin(s: &Served) -> pb::admin_client::AdminClient<Channel> {
    pb::admin_client::AdminClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect")
}

fn req(subject: &str, resource: &str) -> pb::LimitRequest {
    pb::LimitRequest {
        subject: subject.into(),
        resource: resource.into(),
        ..Default::default()
    }
}

fn limit<'a>(d: &'a pb::Decision, name: &str) -> &'a pb::LimitStatus {
    d.limits.iter().find(|l| l.name == name).expect("the limit")
}

/// Sends `total` Consumes of `r` at once, spread evenly across `clients`;
/// how many were allowed.
async fn spread(
    clients: &[pb::rate_limiter_client::RateLimiterClient<Channel>],
    r: &pb::LimitRequest,
    total: usize,
) -> usize {
    let mut tasks = Vec::new();
    for i in 0..total {
        let mut c = clients[i % clients.len()].clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let d = c.consume(r).await.expect("consume").into_inner();
            d.verdict == pb::Verdict::Allowed as i32
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        if t.await.expect("task") {
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_exactly_the_limit_for_every_algorithm() {
    let r = replicas(3);
    let mut clients = Vec::new();
    for s in &r.served {
        clients.push(client(s).await);
    }
    for class in ["fixed", "sliding", "bucket", "burst", "monthly"] {
        let allowed = spread(&clients, &req("key_1", &format!("/{class}")), 90).await;
        assert_eq!(
            allowed, 30,
            "{class}: 90 calls over 3 replicas against 30 a day (a month)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_announce_each_threshold_crossing_once() {
    let config = CONFIG.replace("plans:\n", "events: { thresholds: [50%, 100%] }\nplans:\n");
    let r = replicas_with(3, &config);
    let mut streams = Vec::new();
    let mut clients = Vec::new();
    for s in &r.served {
        clients.push(client(s).await);
        let mut a = admin(s).await;
        streams.push(
            a.watch_events(with_token(pb::WatchEventsRequest::default(), ADMIN_TOKEN))
                .await
                .expect("watch")
                .into_inner(),
        );
    }
    // A fixed window and a token bucket (30/day: nothing refills meanwhile),
    // each driven past 100% from all three replicas at once.
    for class in ["fixed", "bucket"] {
        assert_eq!(
            spread(&clients, &req("key_1", &format!("/{class}")), 45).await,
            30
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (replica, mut stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                let _ = tx.send((replica, e));
            }
        });
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let (_, e) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("four events in time")
            .expect("streams open");
        seen.push((e.limit, e.threshold, e.used));
    }
    // Nothing more comes from any replica.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .is_err(),
        "a crossing announced twice: {seen:?}"
    );
    seen.sort();
    assert_eq!(
        seen,
        [
            ("bucket".to_owned(), "100%".to_owned(), 30),
            ("bucket".to_owned(), "50%".to_owned(), 15),
            ("fixed".to_owned(), "100%".to_owned(), 30),
            ("fixed".to_owned(), "50%".to_owned(), 15),
        ]
    );
}

/// Every row of today's and yesterday's usage (UTC days), exported by `s`.
async fn usage_today(s: &Served) -> Vec<pb::UsageRow> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let mut stream = admin(s)
        .await
        .export_usage(with_token(
            pb::ExportUsageRequest {
                from: Some(prost_types::Timestamp {
                    // Yesterday too: a test running over midnight UTC.
                    seconds: (now.as_secs() / 86_400 * 86_400 - 86_400) as i64,
                    nanos: 0,
                }),
                granularity: pb::Granularity::Day as i32,
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await
        .expect("export")
        .into_inner();
    let mut rows = Vec::new();
    while let Some(r) = stream.message().await.expect("row") {
        rows.push(r);
    }
    rows
}

/// `(admitted requests, refused requests, recorded tokens)` of `rows`.
fn sums(rows: &[pb::UsageRow]) -> (u64, u64, u64) {
    let of = |unit: &str, f: fn(&pb::UsageRow) -> u64| {
        rows.iter().filter(|r| r.unit == unit).map(f).sum::<u64>()
    };
    (
        of("requests", |r| r.admitted),
        of("requests", |r| r.refused),
        of("tokens", |r| r.recorded),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_usage_and_the_export_sums_exactly() {
    let mut r = replicas(3);
    let mut clients = Vec::new();
    for s in &r.served {
        clients.push(client(s).await);
    }
    // 64 clients at once, spread over the replicas: each 3 Consumes of one
    // of 4 keys (48 asked of each, 30 a day admitted) and one Record of
    // tokens.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let mut c = clients[i as usize % 3].clone();
        tasks.push(tokio::spawn(async move {
            let (mut allowed, mut refused) = (0, 0);
            for _ in 0..3 {
                let d = c
                    .consume(req(&format!("key_{}", i % 4), "/fixed"))
                    .await
                    .expect("consume")
                    .into_inner();
                if d.verdict == pb::Verdict::Allowed as i32 {
                    allowed += 1;
                } else {
                    refused += 1;
                }
            }
            let mut record = req(&format!("key_{}", i % 4), "/fixed");
            record.cost.insert("tokens".into(), i + 1);
            c.record(record).await.expect("record");
            (allowed, refused, i + 1)
        }));
    }
    let mut expected = (0, 0, 0);
    for t in tasks {
        let (a, x, k) = t.await.expect("task");
        expected = (expected.0 + a, expected.1 + x, expected.2 + k);
    }
    assert_eq!(expected.0 + expected.1, 192);
    assert!(expected.1 > 0, "the keys went past 30");

    // The other replicas add theirs within a flush interval (1 s): an
    // export from the first soon sums all three, exactly.
    let first = r.served.remove(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = sums(&usage_today(&first).await);
    while seen != expected {
        assert!(
            seen.0 <= expected.0 && seen.1 <= expected.1 && seen.2 <= expected.2,
            "more than was admitted: {seen:?} > {expected:?}"
        );
        assert!(Instant::now() < deadline, "{seen:?} != {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = sums(&usage_today(&first).await);
    }
    // Stopping the others adds nothing twice, and every replica answers
    // the same sums.
    for s in r.served.drain(..) {
        assert!(stop(s, Duration::from_secs(30)).success());
    }
    assert_eq!(sums(&usage_today(&first).await), expected);
    let late = start_one(&r.redis, &r.dir);
    assert_eq!(sums(&usage_today(&late).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rule_files_count_in_the_same_store() {
    use support::envoy::{Code, RateLimitServiceClient, request};
    let r = replicas(3);
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = r.served[i % 3].addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RateLimitServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            let resp = c
                .should_rate_limit(request("edge", &[&[("ip", "192.0.2.1")]]))
                .await
                .expect("answer");
            resp.into_inner().overall_code == Code::Ok as i32
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task") {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_on_one_replica_applies_on_the_others() {
    let r = replicas(3);
    let mut b = client(&r.served[1]).await;
    for _ in 0..2 {
        b.consume(req("acct_9", "/fixed")).await.expect("consume");
    }
    admin(&r.served[0])
        .await
        .set_plan(with_token(
            pb::SetPlanRequest {
                account: "acct_9".into(),
                plan: "pro".into(),
                clear: false,
            },
            ADMIN_TOKEN,
        ))
        .await
        .expect("set plan");
    for s in &r.served[1..] {
        let mut c = client(s).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let d = c
                .check_limit(req("acct_9", "/fixed"))
                .await
                .expect("check")
                .into_inner();
            if d.plan == "pro" {
                let l = limit(&d, "fixed");
                assert_eq!(
                    (l.limit, l.remaining),
                    (300, Some(298)),
                    "usage carries over"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the upgrade did not reach {}",
                s.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_quota_on_one_replica_sees_consumption_on_another() {
    let r = replicas(2);
    let mut watcher = client(&r.served[1]).await;
    let mut stream = watcher
        .watch_quota(pb::WatchRequest {
            subject: "key_w".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = next_update(&mut stream).await;
    assert_eq!(update_remaining(&snapshot, "fixed"), Some(30));
    client(&r.served[0])
        .await
        .consume(req("key_w", "/fixed"))
        .await
        .expect("consume");
    let update = next_update(&mut stream).await;
    assert_eq!(update.cause, pb::quota_update::Cause::Consumption as i32);
    assert_eq!(update_remaining(&update, "fixed"), Some(29));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_loses_nothing() {
    let mut r = replicas(1);
    let mut c = client(&r.served[0]).await;
    for _ in 0..5 {
        c.consume(req("key_r", "/bucket")).await.expect("consume");
    }
    admin(&r.served[0])
        .await
        .set_plan(with_token(
            pb::SetPlanRequest {
                account: "acct_r".into(),
                plan: "pro".into(),
                clear: false,
            },
            ADMIN_TOKEN,
        ))
        .await
        .expect("set plan");
    let old = r.served.pop().expect("one");
    assert!(stop(old, Duration::from_secs(10)).success());
    r.served.push(start_one(&r.redis, &r.dir));
    let mut c = client(&r.served[0]).await;
    let d = c
        .check_limit(req("key_r", "/bucket"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(limit(&d, "bucket").remaining, Some(25));
    let d = c
        .check_limit(req("acct_r", "/fixed"))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(d.plan, "pro");
}
