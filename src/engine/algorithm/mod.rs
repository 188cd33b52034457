//! The four algorithms, as pure steps over a [`State`]:
//! fixed window, sliding window, GCRA (the token bucket) and the sliding ring
//! that holds a burst's ceiling.
//!
//! Each `step` takes the stored state, the limit, the time and a cost, and
//! says everything a decision needs: whether the cost fits, the state with the
//! cost counted, what remains, how long to wait and when the counter is free
//! again. Nothing is read from a clock or written anywhere; the engine decides
//! what to keep.

pub mod calendar;
pub mod fixed_window;
pub mod gcra;
pub mod sliding_ring;
pub mod sliding_window;

use super::clock::Nanos;
use super::store::State;

/// The largest amount a limit may have and the largest cost a request may
/// count: 2^53 - 1. Below it every count stays exact in the engine's
/// arithmetic and in Redis's Lua (whose numbers are doubles), and a count
/// plus a cost never comes near `u64::MAX`. Configuration, admin calls and
/// requests refuse anything larger.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// A limit's size: `amount` units per `window` nanoseconds. Both are nonzero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    amount: u64,
    window: Nanos,
    /// A calendar's periods (week, month, year) rather than `window`
    /// (then its usual length).
    calendar: Option<calendar::Calendar>,
}

/// What one algorithm says about one cost against one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Whether the cost fits now.
    pub fits: bool,
    /// The state with the cost counted, whether or not it fits.
    pub counted: State,
    /// Units left before counting.
    pub remaining: u64,
    /// Units left after counting (0 when overdrawn).
    pub remaining_after: u64,
    /// When the cost does not fit: the wait until it would; `None` when it
    /// never can (it is larger than the limit).
    pub wait: Option<Nanos>,
    /// When the counter is fully free again, before and after counting.
    pub free_at: Nanos,
    /// As `free_at`, with the cost counted.
    pub free_at_after: Nanos,
    /// When the counted state becomes equivalent to an unused counter.
    pub expires_at: Nanos,
}

/// Units a counter was charged, as a refund needs them: how many, under
/// what size, when, and when the counter was next fully free right after
/// (`Step::free_at_after`, what both stores report as a counted item's
/// `free_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// The units.
    pub units: u64,
    /// The counter's size when they were charged: a refund under another
    /// size (the plan changed meanwhile) gives nothing back, since the
    /// bound it relies on no longer holds.
    pub rate: Rate,
    /// When they were counted.
    pub at: Nanos,
    /// When the counter was next fully free right after they were: a
    /// bucket's TAT, rounded up to the nanosecond.
    pub free_at: Nanos,
}

// === impl Rate ===

impl Rate {
    /// `amount` units per `window` nanoseconds; `None` when either is zero.
    ///
    /// ```
    /// use tollgate::engine::algorithm::Rate;
    /// let per_minute = Rate::new(30, 60_000_000_000).unwrap();
    /// assert_eq!(per_minute.amount(), 30);
    /// assert!(Rate::new(0, 1).is_none());
    /// ```
    pub fn new(amount: u64, window: Nanos) -> Option<Self> {
        (amount > 0 && window > 0).then_some(Self {
            amount,
            window,
            calendar: None,
        })
    }

    /// `amount` units per period of `calendar` (counted by
    /// `Algorithm::Calendar`); `None` when `amount` is zero.
    pub fn calendar(amount: u64, calendar: calendar::Calendar) -> Option<Self> {
        (amount > 0).then_some(Self {
            amount,
            window: calendar.unit.nominal(),
            calendar: Some(calendar),
        })
    }

    /// Its calendar, when it counts calendar periods.
    pub fn periods(self) -> Option<calendar::Calendar> {
        self.calendar
    }

    /// The same rate with `calendar` (an account's anchor day).
    pub fn with_calendar(self, calendar: calendar::Calendar) -> Self {
        Self {
            calendar: Some(calendar),
            ..self
        }
    }

    /// The same size, `amount` units.
    pub fn with_amount(self, amount: u64) -> Option<Self> {
        (amount > 0).then_some(Self { amount, ..self })
    }

    /// Units per window.
    pub fn amount(self) -> u64 {
        self.amount
    }

    /// The window, in nanoseconds.
    pub fn window(self) -> Nanos {
        self.window
    }
}

/// `n / d`, through a 64-bit division when `n` fits in 64 bits (a 128-bit
/// division is a slow library call on most targets).
fn div(n: u128, d: u128) -> u128 {
    match (u64::try_from(n), u64::try_from(d)) {
        (Ok(n), Ok(d)) => u128::from(n / d),
        _ => n / d,
    }
}

/// `n / d` rounded up; see [`div`].
fn div_ceil(n: u128, d: u128) -> u128 {
    match (u64::try_from(n), u64::try_from(d)) {
        (Ok(n), Ok(d)) => u128::from(n.div_ceil(d)),
        _ => n.div_ceil(d),
    }
}

// === the order of states ===

/// States of one algorithm and window, ordered by how much they have
/// counted: `upper` is at least as restrictive as both of two states, and
/// `lower` of two states that each restrict at least as much as some third
/// still restricts at least as much as it. Both read the states as of `now`
/// (windows that ended are empty, a refilled bucket is unused), where every
/// step is monotone in every count: this is what lets a fixed-size sketch
/// remember evicted counters without ever under-counting
/// (`storage::memory`).
impl super::Algorithm {
    /// `state` as of `now` (see each algorithm's `at`).
    pub fn at(self, state: State, window: Nanos, now: Nanos) -> State {
        match self {
            Self::FixedWindow => fixed_window::at(state, window, now),
            Self::SlidingWindow => sliding_window::at(state, window, now),
            Self::TokenBucket => gcra::at(state, now),
            Self::SlidingRing => sliding_ring::at(state, window, now),
            Self::Calendar => calendar::at(state, now),
        }
    }

    /// A state that restricts at least as much as `a` and as `b`, as of `now`.
    pub fn upper(self, a: State, b: State, window: Nanos, now: Nanos) -> State {
        self.combine(a, b, window, now, u64::max, u32::max)
    }

    /// The most a state known to restrict no less than `a` or than `b`
    /// can be trusted to restrict, as of `now`.
    pub fn lower(self, a: State, b: State, window: Nanos, now: Nanos) -> State {
        self.combine(a, b, window, now, u64::min, u32::min)
    }

    fn combine(
        self,
        a: State,
        b: State,
        window: Nanos,
        now: Nanos,
        word: fn(u64, u64) -> u64,
        lane: fn(u32, u32) -> u32,
    ) -> State {
        let (a, b) = (self.at(a, window, now), self.at(b, window, now));
        match self {
            // Seven 32-bit buckets packed: combined bucket by bucket.
            Self::SlidingRing => sliding_ring::lanes(a, b, lane),
            // Window index (equal as of `now`) or TAT, counts, remainder:
            // every step is monotone in each word.
            _ => State {
                a: word(a.a, b.a),
                b: word(a.b, b.b),
                c: word(a.c, b.c),
                d: word(a.d, b.d),
            },
        }
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}
