//! Property tests of the engine's invariants, with time passed by hand.

use proptest::prelude::*;

use tollgate::engine::{Algorithm, CounterKey, CounterStore, Engine, Item, Mode, Rate, State};
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_799_971_200 * SEC;

/// (nanoseconds to advance, cost) steps.
fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..20 * SEC, 1..4u64), 1..300)
}

fn item(slot: u32, algorithm: Algorithm, amount: u64, window: u64, cost: u64) -> Item<'static> {
    Item {
        key: CounterKey { scope: "s", slot },
        algorithm,
        rate: Rate::new(amount, window).expect("nonzero"),
        cost,
    }
}

/// Runs the steps against one limit; returns (time, cost) of each admission.
fn admissions(
    algorithm: Algorithm,
    amount: u64,
    window: u64,
    steps: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let engine = Engine::new(MemoryStore::new(1024));
    let mut now = T0;
    let mut out = Vec::new();
    for &(advance, cost) in steps {
        now += advance;
        if engine
            .decide(
                Mode::Consume,
                now,
                &[item(0, algorithm, amount, window, cost)],
            )
            .counted
        {
            out.push((now, cost));
        }
    }
    out
}

proptest! {
    #[test]
    fn fixed_windows_never_admit_more_than_the_amount(amount in 1..20u64, steps in steps()) {
        let window = 60 * SEC;
        let admitted = admissions(Algorithm::FixedWindow, amount, window, &steps);
        let mut per_window = std::collections::HashMap::new();
        for (t, c) in admitted {
            *per_window.entry(t / window).or_insert(0) += c;
        }
        prop_assert!(per_window.values().all(|&n| n <= amount));
    }

    #[test]
    fn token_buckets_never_exceed_capacity_plus_refill(amount in 1..20u64, steps in steps()) {
        let window = 60 * SEC;
        let admitted = admissions(Algorithm::TokenBucket, amount, window, &steps);
        // In any span [a, b], at most amount + (b - a) * amount / window units.
        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for j in i..admitted.len() {
                sum += u128::from(admitted[j].1);
                let span = u128::from(admitted[j].0 - admitted[i].0);
                let bound = u128::from(amount) + span * u128::from(amount) / u128::from(window);
                prop_assert!(sum <= bound, "{sum} units within {span} ns; bound {bound}");
            }
        }
    }

    #[test]
    fn sliding_rings_never_admit_more_than_the_amount_in_any_window(amount in 1..20u64, steps in steps()) {
        let window = 60 * SEC;
        let admitted = admissions(Algorithm::SlidingRing, amount, window, &steps);
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let in_span: u64 = admitted[i..].iter().take_while(|(t, _)| *t < start + window).map(|(_, c)| c).sum();
            prop_assert!(in_span <= amount, "{in_span} within a window from {start}");
        }
    }

    #[test]
    fn sliding_windows_keep_the_estimate_within_the_amount(amount in 1..20u64, steps in steps()) {
        let window = 60 * SEC;
        let admitted = admissions(Algorithm::SlidingWindow, amount, window, &steps);
        for &(t, _) in &admitted {
            let idx = t / window;
            let count = |w: u64| admitted.iter().filter(|(u, _)| *u / window == w && *u <= t).map(|(_, c)| *c).sum::<u64>();
            let prev = if idx == 0 { 0 } else { count(idx - 1) };
            let elapsed = (t - idx * window) as f64 / window as f64;
            let estimate = prev as f64 * (1.0 - elapsed) + count(idx) as f64;
            prop_assert!(estimate <= amount as f64 + 1e-9, "estimate {estimate} at {t}");
        }
    }

    #[test]
    fn consume_is_all_or_nothing(steps in steps(), small in 1..10u64) {
        // Two limits counting the same costs: they stay equal, so a decision
        // never counted one without the other.
        let engine = Engine::new(MemoryStore::new(1024));
        let window = 60 * SEC;
        let mut now = T0;
        for (advance, cost) in steps {
            now += advance;
            let items = [
                item(0, Algorithm::FixedWindow, small, window, cost),
                item(1, Algorithm::FixedWindow, 1_000, window, cost),
            ];
            let before = engine.decide(Mode::Check, now, &items);
            let out = engine.decide(Mode::Consume, now, &items);
            let after = engine.decide(Mode::Check, now, &items);
            let used = |o: &tollgate::engine::Outcome, i: usize, amount: u64| amount - o.items[i].remaining;
            prop_assert_eq!(used(&after, 0, small), used(&after, 1, 1_000));
            if !out.counted {
                prop_assert_eq!(&before.items, &after.items);
            }
        }
    }

    #[test]
    fn check_never_changes_state(steps in steps()) {
        let engine = Engine::new(MemoryStore::new(1024));
        let mut now = T0;
        for (advance, cost) in steps {
            now += advance;
            let items = [item(0, Algorithm::TokenBucket, 5, 10 * SEC, cost), item(1, Algorithm::SlidingWindow, 7, 10 * SEC, cost)];
            let a = engine.decide(Mode::Check, now, &items);
            let b = engine.decide(Mode::Check, now, &items);
            prop_assert_eq!(a, b);
            engine.decide(Mode::Consume, now, &items);
        }
        prop_assert!(engine.store().len() <= 2);
    }
}

/// Amounts and costs up to `u64::MAX`, to find wrapping or saturating sums.
fn huge() -> impl Strategy<Value = u64> {
    prop_oneof![u64::MAX - 4..=u64::MAX, 1u64 << 62..1u64 << 63, 1..4u64]
}

proptest! {
    #[test]
    fn counts_near_u64_max_never_admit_past_the_amount(
        amount in huge(),
        costs in prop::collection::vec(huge(), 1..6),
        record in any::<bool>(),
    ) {
        let mode = if record { Mode::Record } else { Mode::Consume };
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            let engine = Engine::new(MemoryStore::new(1024));
            // One instant, so nothing refills: a cost fits only while the
            // units counted so far plus it stay within the amount.
            let mut counted: u128 = 0;
            for &cost in &costs {
                let out = engine.decide(mode, T0, &[item(0, algorithm, amount, 60 * SEC, cost)]);
                let within = counted + u128::from(cost) <= u128::from(amount);
                prop_assert_eq!(out.fits, within, "{:?} counted {} of {}, cost {}", algorithm, counted, amount, cost);
                if out.counted {
                    counted += u128::from(cost);
                }
            }
        }
    }
}

/// A state reached by `steps` of Consume from unused, at `T0` onwards, and
/// the time of the last step.
fn reached(algorithm: Algorithm, rate: Rate, steps: &[(u64, u64)]) -> (State, u64) {
    let mut state = State::default();
    let mut now = T0;
    for &(advance, cost) in steps {
        now += advance;
        let s = algorithm.step(state, rate, now, cost);
        if s.fits {
            state = s.counted;
        }
    }
    (state, now)
}

proptest! {
    /// What lets the memory store remember evicted counters in a fixed-size
    /// sketch: `upper` restricts at least as much as either state, and
    /// `lower` of two such bounds still restricts at least as much as the
    /// state they bound, now and at every later time.
    #[test]
    fn upper_and_lower_bound_states_conservatively(
        a in prop::collection::vec((0..20 * SEC, 1..4u64), 1..40),
        b in prop::collection::vec((0..20 * SEC, 1..4u64), 1..40),
        c in prop::collection::vec((0..20 * SEC, 1..4u64), 1..40),
        later in prop::collection::vec(0..90 * SEC, 1..6),
        amount in 1..30u64,
    ) {
        let window = 60 * SEC;
        let rate = Rate::new(amount, window).expect("nonzero");
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::TokenBucket, Algorithm::SlidingRing] {
            let (sa, ta) = reached(algorithm, rate, &a);
            let (sb, tb) = reached(algorithm, rate, &b);
            let (sc, tc) = reached(algorithm, rate, &c);
            let now = ta.max(tb).max(tc);
            let ab = algorithm.upper(sa, sb, window, now);
            let ac = algorithm.upper(sa, sc, window, now);
            let low = algorithm.lower(ab, ac, window, now);
            let mut t = now;
            for dt in &later {
                t += dt;
                let left = |s: State| algorithm.step(s, rate, t, 0).remaining;
                prop_assert!(left(ab) <= left(sa).min(left(sb)), "{:?} upper at +{}", algorithm, t - now);
                prop_assert!(left(low) <= left(sa), "{:?} lower at +{}", algorithm, t - now);
                // Nor does a cost fit the bound that would not fit the state.
                for cost in 1..=amount {
                    if algorithm.step(low, rate, t, cost).fits {
                        prop_assert!(algorithm.step(sa, rate, t, cost).fits, "{:?}", algorithm);
                    }
                }
            }
        }
    }
}

/// Four algorithms, one window each, as reservations meet them.
fn algorithms() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::TokenBucket),
        Just(Algorithm::SlidingRing),
    ]
}

/// (nanoseconds to advance, units) steps counted as they come, fitting or not.
fn events() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..30 * SEC, 0..5u64), 0..12)
}

/// `state` after counting each event (Record: whether it fits or not), from `now`.
fn counted(
    algorithm: Algorithm,
    rate: Rate,
    mut state: State,
    mut now: u64,
    events: &[(u64, u64)],
) -> (State, u64) {
    for &(advance, units) in events {
        now += advance;
        state = algorithm.step(state, rate, now, units).counted;
    }
    (state, now)
}

proptest! {
    // The bucket's over-refund needs a refill, then spending, then the
    // refund: rare among random histories, so many cases.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// A reservation of `estimate` settled for `actual` (a refund of the
    /// difference, whenever it comes) leaves every window counter exactly as
    /// if only `actual` had been counted, and a bucket owing at least that
    /// much: never admitting more than its amount. Before the bucket refills
    /// past what it owed before the reservation, exactly that much.
    #[test]
    fn a_refund_leaves_the_counter_as_if_only_the_actual_had_been_counted(
        algorithm in algorithms(),
        amount in 1..30u64,
        window in prop_oneof![Just(SEC), Just(60 * SEC), Just(7 * SEC + 3)],
        before in events(),
        (estimate, actual) in (0..40u64).prop_flat_map(|e| (Just(e), 0..=e)),
        between in events(),
        gap in 0..30 * SEC,
        after in events(),
        probes in prop::collection::vec((0..40 * SEC, 1..10u64), 1..6),
    ) {
        let rate = Rate::new(amount, window).expect("nonzero");
        let (start, t0) = counted(algorithm, rate, State::default(), T0, &before);
        let reserving = algorithm.step(start, rate, t0, estimate);
        let reserved = reserving.counted;
        let only_actual = algorithm.step(start, rate, t0, actual).counted;
        let (with, t1) = counted(algorithm, rate, reserved, t0, &between);
        let t1 = t1 + gap;
        let (without, _) = counted(algorithm, rate, only_actual, t0, &between);
        let refunded = algorithm.refund(
            with,
            rate,
            tollgate::engine::algorithm::Charged { units: estimate - actual, rate, at: t0, free_at: reserving.free_at_after },
            t1,
        );
        // Later events and probes see the same counter (windows) or one
        // that admits no more (a bucket).
        let (refunded, t2) = counted(algorithm, rate, refunded, t1, &after);
        let (without, _) = counted(algorithm, rate, without, t1, &after);
        let mut now = t2;
        for &(advance, cost) in &probes {
            now += advance;
            let (a, b) = (algorithm.step(refunded, rate, now, cost), algorithm.step(without, rate, now, cost));
            if algorithm == Algorithm::TokenBucket {
                prop_assert!(a.remaining <= b.remaining, "a refund let a bucket admit more: {a:?} vs {b:?}");
                prop_assert!(!a.fits || b.fits);
            } else {
                prop_assert_eq!((a.fits, a.remaining, a.wait), (b.fits, b.remaining, b.wait));
            }
        }
        // The bucket's exact case: given back at once, or with nothing in
        // between while it still owed what it owed before.
        if algorithm == Algorithm::TokenBucket && between.is_empty() {
            let owed_before = algorithm.step(start, rate, t0, 0).free_at;
            if t1 <= owed_before.max(t0) {
                let (a, b) = (algorithm.step(refunded, rate, t2, 0), algorithm.step(without, rate, t2, 0));
                prop_assert_eq!(a.remaining, b.remaining);
            }
        }
    }
}

/// The reviewer's case: a bucket upgraded between the reservation and its
/// release gives nothing back (its bound was computed under the old size),
/// so it never admits more than had the reservation never been made.
#[test]
fn a_refund_under_another_size_gives_nothing_back() {
    let minute = 60 * SEC;
    let (small, large) = (
        Rate::new(5, minute).expect("nonzero"),
        Rate::new(100, minute).expect("nonzero"),
    );
    let bucket = Algorithm::TokenBucket;
    let reserving = bucket.step(State::default(), small, T0, 5);
    let later = T0 + 50 * SEC;
    let spent = bucket.step(reserving.counted, large, later, 99).counted;
    let charged = tollgate::engine::algorithm::Charged {
        units: 5,
        rate: small,
        at: T0,
        free_at: reserving.free_at_after,
    };
    let released = bucket.refund(spent, large, charged, later);
    assert_eq!(released, spent);
    let without = bucket.step(State::default(), large, later, 99).counted;
    assert!(
        bucket.step(released, large, later, 1).remaining
            <= bucket.step(without, large, later, 1).remaining
    );
}
