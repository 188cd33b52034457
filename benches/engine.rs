//! Engine benchmarks: ns per decision for one limit and for three
//! (minute + hour + day), for one subject and across 1,000,000 subjects; the
//! whole decision path (plan, class, engine, headers); and class lookup at
//! 10 and 10,000 classes, with a crafted 1 KB resource.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group};

use tollgate::engine::{Algorithm, CounterKey, Engine, Item, ManualClock, Mode, Rate};
use tollgate::limiter::{Limiter, Request};
use tollgate::plans::{Matcher, SlotRegistry};
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_799_971_200 * SEC;
const SUBJECTS: usize = 1_000_000;

/// The time of the next decision: 1 µs after the previous one.
fn tick() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLOCK: AtomicU64 = AtomicU64::new(NOW);
    CLOCK.fetch_add(1_000, Ordering::Relaxed)
}

fn items<const N: usize>(scope: &str, algorithm: Algorithm, windows: [u64; N]) -> [Item<'_>; N] {
    std::array::from_fn(|slot| Item {
        key: CounterKey {
            scope,
            slot: slot as u32,
        },
        algorithm,
        // 100M a window while time moves 1 µs a decision: never denied, and
        // every value stays in the range real limits use.
        rate: Rate::new(100_000_000, windows[slot]).unwrap(),
        cost: 1,
    })
}

fn subjects() -> Vec<String> {
    (0..SUBJECTS).map(|i| format!("key_{i:07}")).collect()
}

fn engine(c: &mut Criterion) {
    let one = [60 * SEC];
    let three = [60 * SEC, 3600 * SEC, 86_400 * SEC];
    let mut group = c.benchmark_group("engine");
    for (name, algorithm) in [
        ("fixed_window", Algorithm::FixedWindow),
        ("sliding_window", Algorithm::SlidingWindow),
        ("token_bucket", Algorithm::TokenBucket),
    ] {
        let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
        let it = items("key_1", algorithm, one);
        group.bench_function(format!("{name}/1_limit/1_subject"), |b| {
            b.iter(|| black_box(e.decide(Mode::Consume, tick(), black_box(&it))))
        });
    }
    let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
    let it = items("key_1", Algorithm::FixedWindow, three);
    group.bench_function("fixed_window/3_limits/1_subject", |b| {
        b.iter(|| black_box(e.decide(Mode::Consume, tick(), black_box(&it))))
    });

    let keys = subjects();
    let mut i = 0usize;
    let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
    for k in &keys {
        e.decide(Mode::Consume, NOW, &items(k, Algorithm::FixedWindow, one));
    }
    group.bench_function("fixed_window/1_limit/1M_subjects", |b| {
        b.iter(|| {
            i = (i + 7919) % SUBJECTS;
            let it = items(&keys[i], Algorithm::FixedWindow, one);
            black_box(e.decide(Mode::Consume, tick(), &it))
        })
    });
    drop(e);
    let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
    for k in &keys {
        e.decide(Mode::Consume, NOW, &items(k, Algorithm::FixedWindow, three));
    }
    group.bench_function("fixed_window/3_limits/1M_subjects", |b| {
        b.iter(|| {
            i = (i + 7919) % SUBJECTS;
            let it = items(&keys[i], Algorithm::FixedWindow, three);
            black_box(e.decide(Mode::Consume, tick(), &it))
        })
    });
    group.finish();
}

fn decision_path(c: &mut Criterion) {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = tollgate::config::parse("saas.yaml", tollgate::config::DEFAULT, &slots).unwrap();
    let limiter = Limiter::new(
        MemoryStore::new(SUBJECTS),
        catalog,
        slots,
        Arc::new(ManualClock::new(NOW)),
    );
    let cost = HashMap::new();
    let request = Request {
        subject: "key_1",
        account: "",
        resource: "/api/v1/fetch/people",
        method: Some("GET"),
        plan: None,
        cost: &cost,
        deadline: None,
    };
    // Check: counts nothing, so the limits never run out while measuring.
    c.bench_function("limiter/check/3_limits", |b| {
        b.iter(|| ready(limiter.decide(Mode::Check, black_box(&request))))
    });
    let keys = subjects();
    let mut i = 0usize;
    c.bench_function("limiter/consume/3_limits/1M_subjects", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % SUBJECTS;
                Request {
                    subject: &keys[i],
                    ..request
                }
            },
            |r| ready(limiter.decide(Mode::Consume, &r)),
            BatchSize::SmallInput,
        )
    });
}

/// `n` classes of three patterns each: a prefix wildcard, an exact path
/// with a method, and a wildcard with literal text between its stars.
fn matcher(n: usize) -> Matcher {
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut m = Matcher::default();
    for i in 0..n {
        m.add(&format!("/api/v1/svc{i}/*"), i, &names).unwrap();
        m.add(&format!("GET /api/v2/svc{i}/items"), i, &names)
            .unwrap();
        m.add(&format!("/*/orders{i}/*"), i, &names).unwrap();
    }
    m.prepare();
    m
}

fn class_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("classes");
    // Starts with "/" and holds "/orders…"-like text: what every class's
    // wildcard would have to scan, were they tried one by one.
    let crafted = format!("/{}/orders/x", "orders/".repeat(146));
    assert!(crafted.len() >= 1024);
    for n in [10, 10_000] {
        let m = matcher(n);
        let hit = format!("/api/v1/svc{}/people", n / 2);
        group.bench_function(format!("{n}_classes/prefix"), |b| {
            b.iter(|| black_box(m.find(Some("GET"), black_box(&hit))))
        });
        let middle = format!("/x/orders{}/y", n - 1);
        group.bench_function(format!("{n}_classes/middle"), |b| {
            b.iter(|| black_box(m.find(Some("GET"), black_box(&middle))))
        });
        group.bench_function(format!("{n}_classes/crafted_1KB"), |b| {
            b.iter(|| black_box(m.find(Some("GET"), black_box(&crafted))))
        });
    }
    group.finish();
}

/// The output of a future that completes on its first poll, as a decision
/// over in-memory counters does.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("memory counters never wait"),
    }
}

criterion_group!(benches, engine, decision_path, class_lookup);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
