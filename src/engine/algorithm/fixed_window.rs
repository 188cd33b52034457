//! Fixed windows aligned to the Unix epoch, as envoyproxy/ratelimit counts:
//! a per-minute window runs from :00 to :59 of each minute, for everyone.
//!
//! State: see `Window`. A stored index other than the current one means
//! an empty window.

use super::{Charged, Rate, Step};
use crate::engine::{clock::Nanos, store::State};

/// The fixed window's reading of a [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// `now / window` when it was counted (`a`).
    index: u64,
    /// Units counted in it (`b`).
    count: u64,
}

impl From<State> for Window {
    fn from(s: State) -> Self {
        Self {
            index: s.a,
            count: s.b,
        }
    }
}

impl From<Window> for State {
    fn from(w: Window) -> Self {
        Self {
            a: w.index,
            b: w.count,
            ..Self::default()
        }
    }
}

impl Window {
    /// The window `index`, empty unless this is it.
    fn as_of(self, index: u64) -> Self {
        let count = if self.index == index { self.count } else { 0 };
        Self { index, count }
    }
}

/// Evaluates `cost` against `state` at `now`.
pub fn step(state: State, rate: Rate, now: Nanos, cost: u64) -> Step {
    let index = now / rate.window;
    let end = (index * rate.window).saturating_add(rate.window);
    let count = Window::from(state).as_of(index).count;
    counting(count, rate, now, cost, end, |count| {
        Window { index, count }.into()
    })
}

/// A window ending at `end` holding `count` (this one's, or a calendar
/// period's), evaluating `cost` at `now`; `counted` is the state holding a
/// count.
pub(super) fn counting(
    count: u64,
    rate: Rate,
    now: Nanos,
    cost: u64,
    end: Nanos,
    counted: impl FnOnce(u64) -> State,
) -> Step {
    // An overflowing sum never fits; the state keeps the saturated count,
    // which is still past any amount.
    let sum = count.checked_add(cost);
    let after = sum.unwrap_or(u64::MAX);
    let fits = sum.is_some_and(|n| n <= rate.amount);
    let wait = if fits {
        Some(0)
    } else if cost > rate.amount {
        None
    } else {
        Some(end.saturating_sub(now))
    };
    Step {
        fits,
        counted: counted(after),
        remaining: rate.amount.saturating_sub(count),
        remaining_after: rate.amount.saturating_sub(after),
        wait,
        // The window resets at its end, used or not, as the seeds publish it.
        free_at: end,
        free_at_after: end,
        expires_at: end,
    }
}

/// `state` as of `now`, a window that ended read as empty: the current
/// window index and its count.
pub fn at(state: State, window: Nanos, now: Nanos) -> State {
    Window::from(state).as_of(now / window).into()
}

/// `state` with `counted` given back at `now`: taken off the count while
/// the window they were counted in is the current one; once it has ended,
/// its count is gone anyway and the refund changes nothing.
pub fn refund(state: State, rate: Rate, counted: Charged, now: Nanos) -> State {
    let index = now / rate.window;
    if counted.at / rate.window != index {
        return state;
    }
    let window = Window::from(state).as_of(index);
    Window {
        index,
        count: window.count.saturating_sub(counted.units),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Nanos = 60_000_000_000;

    fn rate(n: u64) -> Rate {
        Rate::new(n, MIN).expect("nonzero")
    }

    #[test]
    fn admits_up_to_the_amount_then_waits_for_the_boundary() {
        let now = 100 * MIN + 15_000_000_000;
        let mut s = State::default();
        for _ in 0..3 {
            let st = step(s, rate(3), now, 1);
            assert!(st.fits);
            s = st.counted;
        }
        let st = step(s, rate(3), now, 1);
        assert!(!st.fits);
        assert_eq!(st.wait, Some(45_000_000_000));
        assert_eq!(st.remaining, 0);
        let next = step(s, rate(3), 101 * MIN, 1);
        assert!(next.fits);
        assert_eq!(next.remaining, 3);
    }

    #[test]
    fn counts_near_u64_max_never_wrap_into_fitting() {
        let max = Rate::new(u64::MAX, MIN).expect("nonzero");
        let st = step(State::default(), max, 5 * MIN, u64::MAX);
        assert!(st.fits);
        let over = step(st.counted, max, 5 * MIN, 1);
        assert!(!over.fits, "a saturated count must not admit more");
        assert_eq!(over.remaining, 0);
        let once = step(State::default(), rate(60), 5 * MIN, u64::MAX);
        assert!(!once.fits);
    }

    #[test]
    fn a_cost_above_the_amount_never_fits() {
        let st = step(State::default(), rate(60), 5 * MIN, 61);
        assert!(!st.fits);
        assert_eq!(st.wait, None);
    }
}
