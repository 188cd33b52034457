//! The limiter engine: pure and synchronous, no I/O, no async, no clock of
//! its own.
//!
//! A decision is a list of [`Item`]s (one counter, its algorithm, its rate and
//! the cost to count) run as one unit over a [`CounterStore`]: `Consume`
//! counts every item only if every item fits, `Check` counts nothing, and
//! `Record` counts every item even past its limit. The store holds all of a
//! decision's counters locked while the algorithms run, so concurrent
//! decisions never overshoot.

pub mod algorithm;
pub mod clock;
pub mod store;

use smallvec::SmallVec;

pub use algorithm::{MAX_AMOUNT, Rate};
pub use clock::{Clock, ManualClock, Nanos, SystemClock};
pub use store::{CounterKey, CounterStore, State};

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Windows aligned to the Unix epoch.
    FixedWindow,
    /// Cloudflare's weighted previous + current window.
    SlidingWindow,
    /// GCRA: a bucket of one window's amount refilled continuously.
    TokenBucket,
    /// A strict sliding window over six buckets: a burst's ceiling.
    SlidingRing,
    /// A fixed window over a calendar's periods (week, month, year).
    Calendar,
}

/// What a decision does with the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Would it fit? Counts nothing.
    Check,
    /// Counts every item if every item fits; otherwise nothing.
    Consume,
    /// Counts every item, even past its limit.
    Record,
}

impl Mode {
    /// Its name in logs, labels and spans.
    pub fn name(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Consume => "consume",
            Self::Record => "record",
        }
    }
}

/// One counter of a decision.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The counter.
    pub key: CounterKey<'a>,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Its size.
    pub rate: Rate,
    /// The units this request counts against it.
    pub cost: u64,
}

/// The outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemStatus {
    /// The cost fits now.
    pub fits: bool,
    /// The cost can never fit: it is larger than the limit.
    pub too_large: bool,
    /// Units left after this decision.
    pub remaining: u64,
    /// When the counter is fully free again after this decision.
    pub free_at: Nanos,
    /// When it does not fit: how long until it would.
    pub wait: Nanos,
}

impl ItemStatus {
    /// This status together with its burst ceiling's (the ring counted with
    /// it): both must fit, the longer wait holds, and the one with less left
    /// tells when it frees.
    pub fn under(mut self, ceiling: ItemStatus) -> ItemStatus {
        self.fits &= ceiling.fits;
        self.too_large |= ceiling.too_large;
        self.wait = self.wait.max(ceiling.wait);
        if ceiling.remaining < self.remaining {
            self.remaining = ceiling.remaining;
            self.free_at = ceiling.free_at;
        }
        self
    }
}

/// The outcome of a decision: one status per item, in item order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every item fits (for `Record`: fitted before counting).
    pub fits: bool,
    /// The items' states were written.
    pub counted: bool,
    /// Per item, in order.
    pub items: SmallVec<[ItemStatus; 4]>,
}

/// Runs decisions over a store.
#[derive(Debug, Default)]
pub struct Engine<S> {
    store: S,
}

/// A name that is not an [`Algorithm`] a configuration or a request may ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected fixed_window, sliding_window or token_bucket, got {0:?}")]
pub struct ParseAlgorithmError(pub String);

// === impl Algorithm ===

impl Algorithm {
    /// The name used in configuration and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindow => "sliding_window",
            Self::TokenBucket => "token_bucket",
            Self::SlidingRing => "sliding_ring",
            Self::Calendar => "calendar",
        }
    }

    /// One algorithm step (see [`algorithm`]).
    pub fn step(self, state: State, rate: Rate, now: Nanos, cost: u64) -> algorithm::Step {
        match self {
            Self::FixedWindow => algorithm::fixed_window::step(state, rate, now, cost),
            Self::SlidingWindow => algorithm::sliding_window::step(state, rate, now, cost),
            Self::TokenBucket => algorithm::gcra::step(state, rate, now, cost),
            Self::SlidingRing => algorithm::sliding_ring::step(state, rate, now, cost),
            Self::Calendar => algorithm::calendar::step(state, rate, now, cost),
        }
    }

    /// `state` with `counted` given back at `now` (a reservation settled
    /// for less, or released): as if those units had never been counted,
    /// except for what the counter has already forgotten or refilled by
    /// itself; nothing when `rate` is not the one they were charged under.
    /// See each algorithm's `refund`.
    pub fn refund(
        self,
        state: State,
        rate: Rate,
        counted: algorithm::Charged,
        now: Nanos,
    ) -> State {
        if counted.rate != rate {
            return state;
        }
        match self {
            Self::FixedWindow => algorithm::fixed_window::refund(state, rate, counted, now),
            Self::SlidingWindow => algorithm::sliding_window::refund(state, rate, counted, now),
            Self::TokenBucket => algorithm::gcra::refund(state, rate, counted, now),
            Self::SlidingRing => algorithm::sliding_ring::refund(state, rate, counted, now),
            Self::Calendar => algorithm::calendar::refund(state, rate, counted, now),
        }
    }
}

/// The one reading of an algorithm's name, for configuration files and
/// requests alike. `gcra` names the token bucket's model; `sliding_ring` is
/// refused: it only ever backs a burst ceiling, which the limit chooses.
impl std::str::FromStr for Algorithm {
    type Err = ParseAlgorithmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed_window" => Ok(Self::FixedWindow),
            "sliding_window" => Ok(Self::SlidingWindow),
            "token_bucket" | "gcra" => Ok(Self::TokenBucket),
            other => Err(ParseAlgorithmError(other.to_owned())),
        }
    }
}

// === impl Engine ===

impl<S: CounterStore> Engine<S> {
    /// An engine over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs one decision at `now`. The items' keys must be distinct.
    ///
    /// ```
    /// use tollgate::engine::{Algorithm, CounterKey, Engine, Item, Mode, Rate};
    /// use tollgate::storage::memory::MemoryStore;
    ///
    /// let engine = Engine::new(MemoryStore::new(1_000));
    /// let item = Item {
    ///     key: CounterKey { scope: "key_1", slot: 0 },
    ///     algorithm: Algorithm::FixedWindow,
    ///     rate: Rate::new(1, 60_000_000_000).unwrap(),
    ///     cost: 1,
    /// };
    /// let now = 1_700_000_000_000_000_000;
    /// assert!(engine.decide(Mode::Consume, now, &[item]).counted);
    /// assert!(!engine.decide(Mode::Consume, now, &[item]).fits);
    /// ```
    pub fn decide(&self, mode: Mode, now: Nanos, items: &[Item<'_>]) -> Outcome {
        let keys: SmallVec<[CounterKey<'_>; 4]> = items.iter().map(|i| i.key).collect();
        let mut outcome = Outcome {
            fits: false,
            counted: false,
            items: SmallVec::new(),
        };
        self.store.transact(&keys, now, &mut |states, expiries| {
            outcome.items.clear();
            // What each item's counter becomes if the decision counts.
            let mut counted: SmallVec<[(State, Nanos, u64, Nanos); 4]> = SmallVec::new();
            let mut fits = true;
            for (item, state) in items.iter().zip(states.iter()) {
                let s = item.algorithm.step(*state, item.rate, now, item.cost);
                fits &= s.fits;
                counted.push((s.counted, s.expires_at, s.remaining_after, s.free_at_after));
                outcome.items.push(ItemStatus {
                    fits: s.fits,
                    too_large: s.wait.is_none(),
                    remaining: s.remaining,
                    free_at: s.free_at,
                    wait: s.wait.unwrap_or(0),
                });
            }
            let count = match mode {
                Mode::Check => false,
                Mode::Consume => fits,
                Mode::Record => true,
            };
            if count {
                for (i, (state, expires_at, remaining, free_at)) in counted.into_iter().enumerate()
                {
                    states[i] = state;
                    expiries[i] = expires_at;
                    outcome.items[i].remaining = remaining;
                    outcome.items[i].free_at = free_at;
                }
            }
            outcome.fits = fits;
            outcome.counted = count;
            count
        });
        outcome
    }

    /// Gives back at `now` what each item's `Charged` counted (see
    /// [`Algorithm::refund`]); the items' costs are not read. The items'
    /// keys must be distinct.
    pub fn refund(&self, now: Nanos, items: &[(Item<'_>, algorithm::Charged)]) {
        let keys: SmallVec<[CounterKey<'_>; 4]> = items.iter().map(|(i, _)| i.key).collect();
        self.store.transact(&keys, now, &mut |states, _| {
            for ((item, counted), state) in items.iter().zip(states.iter_mut()) {
                *state = item.algorithm.refund(*state, item.rate, *counted, now);
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_configurable_algorithm_names() {
        assert_eq!("fixed_window".parse(), Ok(Algorithm::FixedWindow));
        assert_eq!("sliding_window".parse(), Ok(Algorithm::SlidingWindow));
        assert_eq!("token_bucket".parse(), Ok(Algorithm::TokenBucket));
        assert_eq!("gcra".parse(), Ok(Algorithm::TokenBucket));
        assert_eq!(
            "sliding_ring"
                .parse::<Algorithm>()
                .map_err(|e| e.to_string()),
            Err(
                r#"expected fixed_window, sliding_window or token_bucket, got "sliding_ring""#
                    .to_owned()
            )
        );
    }
}
