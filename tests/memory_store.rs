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

/// The adversarial run of issue 15: a victim spends its 500 an hour; then
/// 200,000 junk subjects (more than the 100,000 counters held) make one
/// request each, evicting the victim's counter. The victim must not get its
/// 500 back, and a subject that arrives after the flood pays at most what a
/// junk neighbour counted (one request) for the sketch's error.
#[tokio::test]
async fn a_junk_subject_flood_hands_no_quota_back() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use tollgate::engine::ManualClock;
    use tollgate::limiter::{Limiter, Request, Verdict};
    use tollgate::plans::SlotRegistry;

    const PLANS: &str = "plans: { free: { limits: [ { rate: 500/hour } ] } }\n";
    let slots = Arc::new(SlotRegistry::default());
    let catalog = tollgate::config::parse("t.yaml", PLANS, &slots).expect("valid");
    let clock = Arc::new(ManualClock::new(T0));
    let limiter = Limiter::new(MemoryStore::new(100_000), catalog, slots, clock.clone());
    async fn consume(limiter: &Limiter, subject: &str) -> tollgate::limiter::Decision {
        let cost = HashMap::new();
        let request = Request {
            subject,
            account: "",
            resource: "/api",
            method: None,
            plan: None,
            cost: &cost,
            deadline: None,
        };
        limiter
            .decide(Mode::Consume, &request)
            .await
            .expect("decided")
    }
    for _ in 0..500 {
        assert_eq!(consume(&limiter, "victim").await.verdict, Verdict::Allowed);
    }
    assert_eq!(
        consume(&limiter, "victim").await.verdict,
        Verdict::RateLimited
    );
    for i in 0..200_000 {
        clock.advance(std::time::Duration::from_micros(1)); // The victim ages in the LRU.
        assert_eq!(
            consume(&limiter, &format!("junk{i}")).await.verdict,
            Verdict::Allowed
        );
    }
    let tollgate::storage::Counters::Memory(engine) = limiter.counters() else {
        unreachable!("a memory store")
    };
    assert!(engine.store().evictions() >= 100_000, "the flood evicted");
    let victim = consume(&limiter, "victim").await;
    assert_eq!(victim.verdict, Verdict::RateLimited, "{victim:?}");
    assert_eq!(victim.limits[0].remaining, 0);
    // Newcomers pay at most what junk neighbours counted (`evicted`'s
    // bound); here that is a couple of requests.
    let mut charged = Vec::new();
    for i in 0..1_000 {
        let d = consume(&limiter, &format!("newcomer{i}")).await;
        assert_eq!(d.verdict, Verdict::Allowed);
        charged.push(499 - d.limits[0].remaining);
    }
    let worst = charged.iter().max().copied().unwrap_or(0);
    let total: u64 = charged.iter().sum();
    eprintln!(
        "sketch: {} bytes; newcomers charged {total} requests in all, at most {worst}",
        engine.store().sketch_bytes()
    );
    assert!(worst <= 4, "a newcomer paid {worst} requests for the flood");
    // An hour later the window has ended, for the sketch too.
    clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(consume(&limiter, "victim").await.limits[0].remaining, 499);
}
