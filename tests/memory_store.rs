//! The in-memory store stays within its cap, reclaims expired state first,
//! counts live evictions, and never stops limiting when full.

use tollgate::engine::{Algorithm, CounterKey, CounterStore, Engine, Item, Mode, Rate};
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_799_971_200 * SEC;

fn one(scope: &str, window: u64, amount: u64) -> [Item<'_>; 1] {
    [Item {
        key: CounterKey { scope, slot: 0 },
        algorithm: Algorithm::FixedWindow,
        rate: Rate::new(amount, window).expect("nonzero"),
        cost: 1,
    }]
}

#[test]
fn stays_within_its_cap_and_counts_live_evictions() {
    let engine = Engine::new(MemoryStore::new(2_048));
    let cap = engine.store().capacity();
    for i in 0..10_000 {
        engine.decide(Mode::Consume, T0, &one(&format!("k{i}"), 3600 * SEC, 10));
        assert!(
            engine.store().len() <= cap,
            "{} > {cap}",
            engine.store().len()
        );
    }
    assert!(engine.store().evictions() > 0);
}

#[test]
fn reclaims_expired_state_before_evicting_live_counters() {
    let engine = Engine::new(MemoryStore::new(2_048));
    for i in 0..1_500 {
        engine.decide(Mode::Consume, T0, &one(&format!("old{i}"), SEC, 10));
    }
    // A second later every one of those windows has ended.
    for i in 0..1_500 {
        engine.decide(
            Mode::Consume,
            T0 + 2 * SEC,
            &one(&format!("new{i}"), 3600 * SEC, 10),
        );
    }
    assert_eq!(engine.store().evictions(), 0);
    assert_eq!(engine.store().reclaim(T0 + 3600 * SEC), 1_500);
    assert_eq!(engine.store().len(), 0);
}

#[test]
fn a_full_store_never_fails_open() {
    // Limitador's bounded cache admitted everything past its cap; here a
    // subject keeps its 1-a-minute limit while new subjects flood the store.
    let engine = Engine::new(MemoryStore::new(1_024));
    let mut admitted = 0;
    for i in 0..20_000 {
        engine.decide(Mode::Consume, T0, &one(&format!("flood{i}"), 3600 * SEC, 5));
        if engine
            .decide(Mode::Consume, T0, &one("victim", 60 * SEC, 1))
            .counted
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 1);
    assert!(engine.store().evictions() > 0);
}

#[test]
fn reset_forgets_one_scope() {
    let engine = Engine::new(MemoryStore::new(1_024));
    assert!(
        engine
            .decide(Mode::Consume, T0, &one("a", 60 * SEC, 1))
            .counted
    );
    assert!(
        engine
            .decide(Mode::Consume, T0, &one("b", 60 * SEC, 1))
            .counted
    );
    engine.store().reset("a");
    assert!(
        engine
            .decide(Mode::Consume, T0, &one("a", 60 * SEC, 1))
            .counted
    );
    assert!(
        !engine
            .decide(Mode::Consume, T0, &one("b", 60 * SEC, 1))
            .counted
    );
}
