//! Engine benchmarks: ns per decision for one limit and for three
//! (minute + hour + day), for one subject and across 1,000,000 subjects; the
//! whole decision path (plan, class, engine, headers); and bytes per tracked
//! counter with 1,000,000 live subjects, printed before the timings.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group};

use tollgate::engine::{
    Algorithm, CounterKey, CounterStore, Engine, Item, ManualClock, Mode, Rate,
};
use tollgate::limiter::{Limiter, Request};
use tollgate::plans::SlotRegistry;
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_799_971_200 * SEC;
const SUBJECTS: usize = 1_000_000;

fn items<'a>(scope: &'a str, algorithm: Algorithm, windows: &[u64]) -> Vec<Item<'a>> {
    windows
        .iter()
        .enumerate()
        .map(|(slot, w)| Item {
            key: CounterKey {
                scope,
                slot: slot as u32,
            },
            algorithm,
            // Large enough never to deny: the benchmark measures admitting.
            rate: Rate::new(u64::MAX / 4, *w).unwrap(),
            cost: 1,
        })
        .collect()
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
        let it = items("key_1", algorithm, &one);
        group.bench_function(format!("{name}/1_limit/1_subject"), |b| {
            b.iter(|| black_box(e.decide(Mode::Consume, NOW, black_box(&it))))
        });
    }
    let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
    let it = items("key_1", Algorithm::FixedWindow, &three);
    group.bench_function("fixed_window/3_limits/1_subject", |b| {
        b.iter(|| black_box(e.decide(Mode::Consume, NOW, black_box(&it))))
    });

    let keys = subjects();
    for (label, windows) in [("1_limit", &one[..]), ("3_limits", &three[..])] {
        let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
        for k in &keys {
            e.decide(
                Mode::Consume,
                NOW,
                &items(k, Algorithm::FixedWindow, windows),
            );
        }
        let mut i = 0usize;
        group.bench_function(format!("fixed_window/{label}/1M_subjects"), |b| {
            b.iter(|| {
                i = (i + 7919) % SUBJECTS;
                let it = items(&keys[i], Algorithm::FixedWindow, windows);
                black_box(e.decide(Mode::Consume, NOW, &it))
            })
        });
    }
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cost = HashMap::new();
    let request = Request {
        subject: "key_1",
        account: "",
        resource: "/api/v1/fetch/people",
        method: Some("GET"),
        cost: &cost,
    };
    // Check: counts nothing, so the limits never run out while measuring.
    c.bench_function("limiter/check/3_limits", |b| {
        b.iter(|| runtime.block_on(limiter.decide(Mode::Check, black_box(&request))))
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
            |r| runtime.block_on(limiter.decide(Mode::Consume, &r)),
            BatchSize::SmallInput,
        )
    });
}

/// Resident memory per counter with a million live subjects, one counter each.
fn memory_per_counter() {
    let keys = subjects();
    let before = resident_bytes();
    let e = Engine::new(MemoryStore::new(4 * SUBJECTS));
    for k in &keys {
        e.decide(
            Mode::Consume,
            NOW,
            &items(k, Algorithm::TokenBucket, &[60 * SEC]),
        );
    }
    let after = resident_bytes();
    let counters = e.store().len();
    let per = (after.saturating_sub(before)) as f64 / counters as f64;
    eprintln!(
        "memory: {counters} counters for {SUBJECTS} subjects: {per:.0} bytes per counter all-in \
         (subject key, table slot, cell; resident set growth)"
    );
    let e3 = Engine::new(MemoryStore::new(4 * SUBJECTS));
    let before = resident_bytes();
    for k in &keys {
        e3.decide(
            Mode::Consume,
            NOW,
            &items(
                k,
                Algorithm::FixedWindow,
                &[60 * SEC, 3600 * SEC, 86_400 * SEC],
            ),
        );
    }
    let after = resident_bytes();
    let counters = e3.store().len();
    let per = (after.saturating_sub(before)) as f64 / counters as f64;
    eprintln!("memory: {counters} counters (3 per subject): {per:.0} bytes per counter all-in");
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

criterion_group!(benches, engine, decision_path);

fn main() {
    memory_per_counter();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
