//! Exactness under concurrency: N threads hammering one subject with a limit
//! of L admit exactly L, never L + 1, for every algorithm; and the same over
//! gRPC with concurrent clients.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate::engine::{Algorithm, CounterKey, Engine, Item, Mode, Rate};
use tollgate::storage::memory::MemoryStore;

use support::*;

const MIN: u64 = 60_000_000_000;

fn hammer(
    threads: usize,
    attempts: usize,
    items: impl Fn(usize) -> Vec<Item<'static>> + Sync,
) -> usize {
    let engine = Engine::new(MemoryStore::new(10_000));
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (engine, admitted, items) = (&engine, &admitted, &items);
            s.spawn(move || {
                let it = items(t);
                for _ in 0..attempts {
                    if engine.decide(Mode::Consume, T0 + 1, &it).counted {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

#[test]
fn threads_on_one_subject_admit_exactly_the_limit() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        let admitted = hammer(8, 2_000, |_| {
            vec![Item {
                key: CounterKey {
                    scope: "key_1",
                    slot: 0,
                },
                algorithm,
                rate: Rate::new(1_000, MIN).expect("nonzero"),
                cost: 1,
            }]
        });
        assert_eq!(admitted, 1_000, "{algorithm:?}");
    }
}

#[test]
fn keys_of_one_account_admit_exactly_its_limit_across_shards() {
    const KEYS: [&str; 8] = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    // Each key has its own large limit; the account's 500 binds them all.
    let admitted = hammer(8, 1_000, |t| {
        vec![
            Item {
                key: CounterKey {
                    scope: KEYS[t],
                    slot: 0,
                },
                algorithm: Algorithm::FixedWindow,
                rate: Rate::new(10_000, MIN).expect("nonzero"),
                cost: 1,
            },
            Item {
                key: CounterKey {
                    scope: "acct",
                    slot: 1,
                },
                algorithm: Algorithm::TokenBucket,
                rate: Rate::new(500, MIN).expect("nonzero"),
                cost: 1,
            },
        ]
    });
    assert_eq!(admitted, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grpc_clients_admit_exactly_the_limit() {
    let s =
        Arc::new(TestServer::start("plans: { free: { limits: [ { rate: 100/minute } ] } }").await);
    let mut tasks = Vec::new();
    for c in 0..8 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            // A connection per task: requests really race on the server.
            let mut client = RateLimiterClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            let mut allowed = 0;
            for _ in 0..40 {
                let d = client
                    .consume(req("key_1", &format!("/c{c}")))
                    .await
                    .expect("consume")
                    .into_inner();
                if d.verdict == Verdict::Allowed as i32 {
                    allowed += 1;
                }
            }
            allowed
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 100);
    Arc::into_inner(s).expect("sole owner").stop().await;
}
