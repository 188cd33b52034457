//! The counter store contract: the same scenarios against the memory store
//! and against a real redis-server started by the test, through the limiter's
//! decision path, with real time (windows of a day, so none turns mid-test).

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use support::redis::RedisServer;
use tollgate::engine::{Mode, SystemClock};
use tollgate::limiter::{Decision, Limiter, Request, Verdict};
use tollgate::plans::SlotRegistry;
use tollgate::storage::Counters;
use tollgate::storage::memory::MemoryStore;
use tollgate::storage::redis::{Failure, RedisStore, SharedCounters};

const CONFIG: &str = r#"
classes:
  fixed: { match: ["/fixed"] }
  sliding: { match: ["/sliding"] }
  bucket: { match: ["/bucket"] }
  burst: { match: ["/burst"] }
  pair: { match: ["/pair"] }
plans:
  p:
    limits:
      - { name: fixed, class: fixed, rate: 5/day }
      - { name: sliding, class: sliding, rate: 5/day, algorithm: sliding_window }
      - { name: bucket, class: bucket, rate: 5/day, algorithm: token_bucket }
      - { name: burst, class: burst, rate: 5/day, burst: 2 }
      - { name: pair_requests, class: pair, rate: 3/day }
      - { name: pair_tokens, class: pair, unit: tokens, rate: 10/day }
default_plan: p
"#;

fn limiter(counters: impl Into<Counters>) -> Limiter {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = tollgate::config::parse("contract.yaml", CONFIG, &slots).expect("valid");
    Limiter::new(counters, catalog, slots, Arc::new(SystemClock))
}

async fn stores(redis: &RedisServer) -> [(&'static str, Limiter); 2] {
    let store = RedisStore::connect(&redis.url(), std::time::Duration::from_secs(2))
        .await
        .expect("redis");
    [
        ("memory", limiter(MemoryStore::new(10_000))),
        (
            "redis",
            limiter(SharedCounters::new(store, Failure::Closed)),
        ),
    ]
}

async fn go(l: &Limiter, mode: Mode, subject: &str, path: &str, cost: &[(&str, u64)]) -> Decision {
    let cost: HashMap<String, u64> = cost.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    let r = Request {
        subject,
        account: "",
        resource: path,
        method: None,
        plan: None,
        cost: &cost,
        deadline: None,
    };
    l.decide(mode, &r).await.expect("the store answers")
}

fn remaining(d: &Decision, name: &str) -> u64 {
    d.limits
        .iter()
        .find(|l| &*l.limit.name == name)
        .map_or(u64::MAX, |l| l.remaining)
}

#[tokio::test]
async fn every_algorithm_admits_exactly_its_amount() {
    let redis = RedisServer::start();
    for (store, l) in stores(&redis).await {
        for class in ["fixed", "sliding", "bucket", "burst"] {
            let path = format!("/{class}");
            let mut admitted = 0;
            let mut last = None;
            for _ in 0..8 {
                let d = go(&l, Mode::Consume, "k", &path, &[]).await;
                if d.verdict == Verdict::Allowed {
                    admitted += 1;
                }
                last = Some(d);
            }
            assert_eq!(admitted, 5, "{store} {class}");
            let last = last.expect("decided");
            assert_eq!(last.verdict, Verdict::RateLimited, "{store} {class}");
            assert!(
                last.retry_after.is_some_and(|w| w > 0),
                "{store} {class}: {last:?}"
            );
            assert_eq!(remaining(&last, class), 0, "{store} {class}");
        }
    }
}

/// Decisions in flight together share one script call in Redis: each still
/// sees what the ones before it counted, so exactly the amount passes, and
/// the answers' remaining counts down without a repeat.
#[tokio::test]
async fn decisions_in_flight_together_admit_exactly_the_amount() {
    let redis = RedisServer::start();
    for (store, l) in stores(&redis).await {
        for class in ["fixed", "sliding", "bucket", "burst", "pair"] {
            let path = format!("/{class}");
            let calls = (0..24).map(|_| go(&l, Mode::Consume, "k", &path, &[("tokens", 2)]));
            let decisions = futures_util::future::join_all(calls).await;
            let name = if class == "pair" {
                "pair_requests"
            } else {
                class
            };
            let mut left: Vec<u64> = decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Allowed)
                .map(|d| remaining(d, name))
                .collect();
            left.sort_unstable();
            let expected: Vec<u64> = if class == "pair" {
                vec![0, 1, 2]
            } else {
                (0..5).collect()
            };
            assert_eq!(left, expected, "{store} {class}");
        }
    }
}

#[tokio::test]
async fn a_refused_decision_counts_nowhere() {
    let redis = RedisServer::start();
    for (store, l) in stores(&redis).await {
        let d = go(&l, Mode::Consume, "k", "/pair", &[("tokens", 8)]).await;
        assert_eq!(d.verdict, Verdict::Allowed, "{store}");
        assert_eq!(
            (remaining(&d, "pair_requests"), remaining(&d, "pair_tokens")),
            (2, 2),
            "{store}"
        );
        let d = go(&l, Mode::Consume, "k", "/pair", &[("tokens", 5)]).await;
        assert_eq!(d.verdict, Verdict::RateLimited, "{store}");
        let d = go(&l, Mode::Check, "k", "/pair", &[("tokens", 1)]).await;
        assert_eq!(
            (remaining(&d, "pair_requests"), remaining(&d, "pair_tokens")),
            (2, 2),
            "{store}: nothing counted"
        );
        assert!(!d.counted, "{store}");
    }
}

#[tokio::test]
async fn check_counts_nothing_and_record_counts_past_the_limit() {
    let redis = RedisServer::start();
    for (store, l) in stores(&redis).await {
        for _ in 0..3 {
            let d = go(&l, Mode::Check, "k", "/fixed", &[]).await;
            assert_eq!(remaining(&d, "fixed"), 5, "{store}");
        }
        let d = go(&l, Mode::Record, "k", "/fixed", &[("requests", 7)]).await;
        assert!(d.counted, "{store}");
        assert_eq!(d.verdict, Verdict::RateLimited, "{store}: it did not fit");
        let d = go(&l, Mode::Consume, "k", "/fixed", &[]).await;
        assert_eq!(d.verdict, Verdict::RateLimited, "{store}");
    }
}

#[tokio::test]
async fn reset_forgets_and_quota_reads_without_counting() {
    let redis = RedisServer::start();
    for (store, l) in stores(&redis).await {
        for _ in 0..5 {
            go(&l, Mode::Consume, "k", "/bucket", &[]).await;
        }
        let q = l.quota("k", "").await.expect("quota");
        let bucket = q
            .limits
            .iter()
            .find(|s| &*s.limit.name == "bucket")
            .expect("bucket");
        assert_eq!(bucket.remaining, 0, "{store}");
        assert!(l.reset("k", "").await.expect("reset") >= 1, "{store}");
        let d = go(&l, Mode::Consume, "k", "/bucket", &[]).await;
        assert_eq!(d.verdict, Verdict::Allowed, "{store}");
        assert_eq!(remaining(&d, "bucket"), 4, "{store}");
    }
}

#[tokio::test]
async fn redis_keeps_no_key_without_an_expiry() {
    let redis = RedisServer::start();
    let [_, (_, l)] = stores(&redis).await;
    for class in ["fixed", "sliding", "bucket", "burst", "pair"] {
        go(
            &l,
            Mode::Consume,
            "k",
            &format!("/{class}"),
            &[("tokens", 1)],
        )
        .await;
    }
    let keys = redis.cli(&["--scan"]).unwrap_or_default();
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 6, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis
            .cli(&["pttl", key])
            .unwrap_or_default()
            .parse()
            .expect("a number");
        assert!(ttl > 0 && ttl <= 2 * 86_400_000, "{key}: {ttl}");
        assert!(
            key.starts_with("tg:{k}:"),
            "one hash tag per counted account: {key}"
        );
    }
}
