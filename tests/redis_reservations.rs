//! Reservations shared by replicas through a real redis-server: reserved on
//! one replica, settled or released on another, expired by any; exact at
//! every step (what is counted equals the settled actuals plus the open
//! estimates), and concurrency limits exact across replicas.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::process::{Served, serve_env};
use support::redis::RedisServer;
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::Channel;

const CONFIG: &str = r#"
classes:
  chat: { match: ["/v1/chat"] }
plans:
  free:
    limits:
      - { name: tokens, unit: tokens, rate: 1000000/day }
      - { name: tokens-sliding, unit: tokens, rate: 1000000/23h, algorithm: sliding_window }
      - { name: in-flight, class: chat, unit: concurrent, amount: 5 }
default_plan: free
"#;

type Client = pb::rate_limiter_client::RateLimiterClient<Channel>;

struct Replicas {
    _redis: RedisServer,
    served: Vec<Served>,
    clients: Vec<Client>,
}

async fn replicas(n: usize) -> Replicas {
    replicas_with(n, CONFIG).await
}

async fn replicas_with(n: usize, config_text: &str) -> Replicas {
    let redis = RedisServer::start();
    let dir = support::process::temp_dir(&format!("rsv-{}", redis.port));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, config_text).expect("config");
    let config = config.display().to_string();
    let url = redis.url();
    let served: Vec<Served> = (0..n)
        .map(|_| {
            serve_env(
                &[
                    "--config",
                    &config,
                    "--store",
                    &url,
                    "--store-timeout",
                    "2s",
                ],
                &[("TOLLGATE_ADMIN_TOKEN", support::ADMIN_TOKEN)],
            )
        })
        .collect();
    let mut clients = Vec::new();
    for s in &served {
        clients.push(
            Client::connect(format!("http://{}", s.addr))
                .await
                .expect("connect"),
        );
    }
    Replicas {
        _redis: redis,
        served,
        clients,
    }
}

fn req(subject: &str, resource: &str, tokens: u64) -> pb::LimitRequest {
    pb::LimitRequest {
        subject: subject.into(),
        resource: resource.into(),
        cost: HashMap::from([("tokens".to_owned(), tokens)]),
        ..Default::default()
    }
}

fn reserve(subject: &str, tokens: u64, ttl_secs: Option<i64>) -> pb::LimitRequest {
    let mut r = req(subject, "/v1/complete", tokens);
    r.reserve = Some(pb::Reserve {
        ttl: ttl_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    });
    r
}

async fn left(c: &mut Client, subject: &str, limit: &str) -> u64 {
    let d = c
        .check_limit(req(subject, "/v1/complete", 0))
        .await
        .expect("check")
        .into_inner();
    d.limits
        .iter()
        .find(|l| l.name == limit)
        .expect("the limit")
        .remaining
        .unwrap_or(0)
}

/// Reserved on one replica, settled, released and retried on others: the
/// counters hold the settled actuals plus the open estimates after every
/// step, on a fixed and a sliding window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_reservations_and_count_exactly() {
    let mut r = replicas(3).await;
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut settled = 0u64;
    let mut rng = fastrand::Rng::with_seed(19);
    for step in 0..60 {
        let at = step % 3;
        let c = &mut r.clients[at];
        match rng.u8(..4) {
            0 | 1 => {
                let estimate = rng.u64(1..5_000);
                let d = c
                    .consume(reserve("k", estimate, None))
                    .await
                    .expect("reserve")
                    .into_inner();
                assert_eq!(d.verdict, pb::Verdict::Allowed as i32, "{d:?}");
                let id = d.reservation.expect("a reservation").id;
                open.push((id, estimate));
            }
            2 if !open.is_empty() => {
                let (id, estimate) = open.swap_remove(rng.usize(..open.len()));
                let actual = rng.u64(0..2 * estimate);
                let answer = pb::SettleRequest {
                    id: id.clone(),
                    actual: HashMap::from([("tokens".to_owned(), actual)]),
                };
                let first = c.settle(answer.clone()).await.expect("settle").into_inner();
                assert_eq!(first.actual["tokens"], actual);
                assert_eq!(first.estimate["tokens"], estimate);
                // A retry on another replica answers the same, counts nothing.
                let other = &mut r.clients[(at + 1) % 3];
                let again = other.settle(answer).await.expect("retried").into_inner();
                assert_eq!(again, first);
                settled += actual;
            }
            _ if !open.is_empty() => {
                let (id, _) = open.swap_remove(rng.usize(..open.len()));
                c.release(pb::ReleaseRequest { id: id.clone() })
                    .await
                    .expect("release");
                let twice = r.clients[(at + 2) % 3]
                    .settle(pb::SettleRequest {
                        id,
                        actual: HashMap::from([("tokens".to_owned(), 1)]),
                    })
                    .await
                    .expect_err("released: settled for 0");
                assert_eq!(twice.code(), tonic::Code::InvalidArgument);
            }
            _ => {}
        }
        let counted = settled + open.iter().map(|(_, e)| e).sum::<u64>();
        for limit in ["tokens", "tokens-sliding"] {
            assert_eq!(
                left(&mut r.clients[(at + 1) % 3], "k", limit).await,
                1_000_000 - counted,
                "{limit} after step {step}"
            );
        }
    }
    let unknown = r.clients[0]
        .settle(pb::SettleRequest {
            id: "rsv_00.6b".into(),
            actual: HashMap::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("rsv_00.6b"), "{unknown}");
    drop(r.served);
}

/// Many callers over three replicas: exactly the amount in flight, however
/// the calls interleave; slots released on any replica free them for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_is_exact_across_replicas() {
    let r = replicas(3).await;
    for round in 0..3 {
        let mut calls = Vec::new();
        for i in 0..30 {
            let mut c = r.clients[i % 3].clone();
            calls.push(tokio::spawn(async move {
                c.consume(req("k", "/v1/chat", 10))
                    .await
                    .expect("decided")
                    .into_inner()
            }));
        }
        let mut held = Vec::new();
        for call in calls {
            let d = call.await.expect("joined");
            if let Some(r) = d.reservation {
                held.push(r.id);
            }
        }
        assert_eq!(held.len(), 5, "round {round}: exactly the amount");
        for (i, id) in held.into_iter().enumerate() {
            let mut c = r.clients[(i + round) % 3].clone();
            c.release(pb::ReleaseRequest { id })
                .await
                .expect("released");
        }
    }
}

/// An unsettled reservation expires at its estimate on Redis's clock: the
/// next reservation of the account, on any replica, gives its slot back,
/// and the estimate stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_frees_its_slot_on_every_replica() {
    let mut r = replicas(2).await;
    let mut chat = req("k", "/v1/chat", 100);
    chat.reserve = Some(pb::Reserve {
        ttl: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    });
    for _ in 0..5 {
        let d = r.clients[0]
            .consume(chat.clone())
            .await
            .expect("reserved")
            .into_inner();
        assert!(d.reservation.is_some(), "{d:?}");
    }
    let full = r.clients[1]
        .consume(req("k", "/v1/chat", 100))
        .await
        .expect("decided")
        .into_inner();
    assert_eq!(full.verdict, pb::Verdict::RateLimited as i32);
    // Once a second has passed on Redis's clock, a slot is free again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let admitted = loop {
        let d = r.clients[1]
            .consume(req("k", "/v1/chat", 100))
            .await
            .expect("decided")
            .into_inner();
        if d.verdict == pb::Verdict::Allowed as i32 {
            break d;
        }
        assert!(Instant::now() < deadline, "never freed: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(admitted.reservation.is_some());
    assert_eq!(
        left(&mut r.clients[0], "k", "tokens").await,
        1_000_000 - 6 * 100,
        "expired at their estimate"
    );
    let gone = r.clients[0]
        .release(pb::ReleaseRequest {
            id: admitted.reservation.expect("held").id,
        })
        .await;
    assert!(gone.is_ok(), "{gone:?}");
}

/// Reserved on one replica, settled past the estimate on another: the
/// excess crosses a threshold of the reservation's class, and the replica
/// that settled announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settles_excess_on_another_replica_announces_its_crossing() {
    let config = CONFIG.replace(
        "      - { name: in-flight,",
        "      - { name: chat-tokens, class: chat, unit: tokens, rate: 1000/hour, thresholds: [80%] }\n      - { name: in-flight,",
    );
    let mut r = replicas_with(2, &config).await;
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", r.served[1].addr))
        .await
        .expect("connect");
    let mut events = admin
        .watch_events(support::with_token(
            pb::WatchEventsRequest::default(),
            support::ADMIN_TOKEN,
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut chat = req("k", "/v1/chat", 100);
    chat.reserve = Some(pb::Reserve { ttl: None });
    let d = r.clients[0]
        .consume(chat)
        .await
        .expect("reserve")
        .into_inner();
    let id = d.reservation.expect("a reservation").id;
    r.clients[1]
        .settle(pb::SettleRequest {
            id,
            actual: HashMap::from([("tokens".to_owned(), 850)]),
        })
        .await
        .expect("settle");
    let event = support::next_event(&mut events).await;
    assert_eq!(
        (
            event.limit.as_str(),
            event.threshold.as_str(),
            event.used,
            event.amount
        ),
        ("chat-tokens", "80%", 850, 1000)
    );
}
