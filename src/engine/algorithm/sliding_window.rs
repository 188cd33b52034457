//! Cloudflare's sliding window: the previous window's count, weighted by how
//! much of it still overlaps the trailing window, plus the current count.
//!
//! `estimate = prev * (window - elapsed) / window + cur`, compared exactly in
//! integers (multiplied through by `window`, in u128), so no rounding admits
//! an extra unit. It assumes the previous window's traffic was spread evenly;
//! bursty traffic at the end of a window can see up to twice the amount in a
//! trailing span, as with every two-counter approximation.
//!
//! State: see `Windows`.

use super::{Charged, Rate, Step, div, saturate};
use crate::engine::{clock::Nanos, store::State};

/// The sliding window's reading of a [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Windows {
    /// The current window's index, `now / window` (`a`).
    index: u64,
    /// Units counted in it (`b`).
    current: u64,
    /// Units counted in the window before it (`c`).
    previous: u64,
}

impl From<State> for Windows {
    fn from(s: State) -> Self {
        Self {
            index: s.a,
            current: s.b,
            previous: s.c,
        }
    }
}

impl From<Windows> for State {
    fn from(w: Windows) -> Self {
        Self {
            a: w.index,
            b: w.current,
            c: w.previous,
            d: 0,
        }
    }
}

impl Windows {
    /// As of window `index`: the current window becomes the previous one
    /// when `index` is the next, and older windows read as empty.
    fn as_of(self, index: u64) -> Self {
        let (previous, current) = if self.index == index {
            (self.previous, self.current)
        } else if self.index.checked_add(1) == Some(index) {
            (self.current, 0)
        } else {
            (0, 0)
        };
        Self {
            index,
            current,
            previous,
        }
    }
}

/// Evaluates `cost` against `state` at `now`.
pub fn step(state: State, rate: Rate, now: Nanos, cost: u64) -> Step {
    let w = rate.window;
    let index = now / w;
    let start = index * w;
    let elapsed = now - start;
    let Windows {
        current: cur,
        previous: prev,
        ..
    } = Windows::from(state).as_of(index);
    let cap = u128::from(rate.amount) * u128::from(w);
    let weighted_prev = u128::from(prev) * u128::from(w - elapsed);
    let used = |cur: u64| weighted_prev + u128::from(cur) * u128::from(w);
    // An overflowing sum never fits; the state keeps the saturated count.
    let sum = cur.checked_add(cost);
    let after = sum.unwrap_or(u64::MAX);
    let fits = sum.is_some_and(|n| used(n) <= cap);
    let remaining = |cur: u64| saturate(div(cap.saturating_sub(used(cur)), u128::from(w)));
    let wait = if fits {
        Some(0)
    } else if cost > rate.amount {
        None
    } else {
        Some(wait_until_fits(rate, elapsed, prev, cur, cost))
    };
    let free = |cur: u64| {
        if cur > 0 {
            start.saturating_add(2 * w)
        } else if prev > 0 {
            start.saturating_add(w)
        } else {
            now
        }
    };
    Step {
        fits,
        counted: Windows {
            index,
            current: after,
            previous: prev,
        }
        .into(),
        remaining: remaining(cur),
        remaining_after: remaining(after),
        wait,
        free_at: free(cur),
        free_at_after: free(after),
        expires_at: start.saturating_add(2 * w),
    }
}

/// `state` with `counted` given back at `now`: taken off the current
/// window's count when they were counted in it, off the previous one's when
/// they were counted in that (it still weighs on the estimate); counted
/// earlier, they weigh nothing any more and the refund changes nothing.
pub fn refund(state: State, rate: Rate, counted: Charged, now: Nanos) -> State {
    let index = now / rate.window;
    let mut windows = Windows::from(state).as_of(index);
    match index.checked_sub(counted.at / rate.window) {
        Some(0) => windows.current = windows.current.saturating_sub(counted.units),
        Some(1) => windows.previous = windows.previous.saturating_sub(counted.units),
        _ => return state,
    }
    windows.into()
}

/// `state` as of `now`: the current window index, its count and the count
/// of the window before it (older windows read as empty).
pub fn at(state: State, window: Nanos, now: Nanos) -> State {
    Windows::from(state).as_of(now / window).into()
}

/// The wait until `cost` fits, given that it does not fit now and is not
/// larger than the amount.
fn wait_until_fits(rate: Rate, elapsed: Nanos, prev: u64, cur: u64, cost: u64) -> Nanos {
    let w = u128::from(rate.window);
    let amount = u128::from(rate.amount);
    let (prev, cur, cost, elapsed) = (
        u128::from(prev),
        u128::from(cur),
        u128::from(cost),
        u128::from(elapsed),
    );
    let wait = if cur + cost <= amount && prev > 0 {
        // Later in this window: prev * (w - e) <= (amount - cur - cost) * w.
        let overlap = (amount - cur - cost) * w / prev;
        let e = w.saturating_sub(overlap).max(elapsed + 1);
        saturate(e - elapsed)
    } else {
        // In the next window the current count becomes the weighted one:
        // cur * (w - e) <= (amount - cost) * w.
        let overlap = ((amount - cost) * w).checked_div(cur).unwrap_or(w);
        let e = w.saturating_sub(overlap);
        saturate(w - elapsed + e)
    };
    wait.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Nanos = 60_000_000_000;
    const SEC: Nanos = 1_000_000_000;

    fn rate(n: u64) -> Rate {
        Rate::new(n, MIN).expect("nonzero")
    }

    #[test]
    fn weighs_the_previous_window_by_its_overlap() {
        // 10 counted in the previous window; a quarter into this one, 7.5 of
        // them still count, so 2 more fit under 10 and a third does not.
        let s = State {
            a: 99,
            b: 10,
            ..State::default()
        };
        let now = 100 * MIN + 15 * SEC;
        let one = step(s, rate(10), now, 1);
        assert!(one.fits);
        assert_eq!(one.remaining, 2);
        let three = step(s, rate(10), now, 3);
        assert!(!three.fits);
        // 3 fit once prev * (w - e) <= 7 * w / 10... i.e. at e = 18 s.
        assert_eq!(three.wait, Some(3 * SEC));
    }

    #[test]
    fn counts_near_u64_max_never_wrap_into_fitting() {
        let max = Rate::new(u64::MAX, MIN).expect("nonzero");
        let now = 100 * MIN;
        let full = step(State::default(), max, now, u64::MAX);
        assert!(full.fits);
        let over = step(full.counted, max, now, 1);
        assert!(!over.fits, "a saturated count must not admit more");
    }

    #[test]
    fn waits_into_the_next_window_when_this_one_is_full() {
        let s = State {
            a: 100,
            b: 10,
            ..State::default()
        };
        let now = 100 * MIN + 30 * SEC;
        let st = step(s, rate(10), now, 1);
        assert!(!st.fits);
        // Next window: 10 * (60 - e) / 60 + 1 <= 10  =>  e >= 6 s.
        assert_eq!(st.wait, Some(30 * SEC + 6 * SEC));
        let later = step(s, rate(10), now + 36 * SEC, 1);
        assert!(later.fits);
        let earlier = step(s, rate(10), now + 36 * SEC - 1, 1);
        assert!(!earlier.fits);
    }
}
