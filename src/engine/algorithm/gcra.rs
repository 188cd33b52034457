//! Token bucket as GCRA (the generic cell rate algorithm): one theoretical
//! arrival time (TAT) per counter.
//!
//! A bucket holds `amount` units and refills at `amount / window`, so an idle
//! caller may spend a whole window's amount at once and the long-run average
//! is `amount` per window. Each unit moves the TAT forward by
//! `window / amount`; a cost fits while `max(TAT, now) + cost * window / amount`
//! stays within `now + window`.
//!
//! Time is kept in units of `1 / amount` nanosecond, so every step is exact
//! integer arithmetic with no rounding drift (see `Tat`).
//! When the amount changes (a plan change or an override), the debt carries
//! over in units, not in time: an upgrade unblocks at once, and a downgrade
//! never hands out fresh quota.

use super::{Charged, Rate, Step, div, div_ceil, saturate};
use crate::engine::{clock::Nanos, store::State};

/// GCRA's reading of a [`State`]: the theoretical arrival time in units of
/// `1 / amount` nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tat {
    /// Its whole nanoseconds (`a`).
    at: Nanos,
    /// The amount it was computed under, 0 for an unused counter (`b`).
    amount: u64,
    /// The fraction of a nanosecond past `at`, in `1 / amount` (`c`, below
    /// `amount`).
    remainder: u64,
}

impl From<State> for Tat {
    fn from(s: State) -> Self {
        Self {
            at: s.a,
            amount: s.b,
            remainder: s.c,
        }
    }
}

impl From<Tat> for State {
    fn from(t: Tat) -> Self {
        Self {
            a: t.at,
            b: t.amount,
            c: t.remainder,
            d: 0,
        }
    }
}

impl Tat {
    /// The debt at `now`, in units * window (`(TAT - now) * amount`).
    fn debt(self, now: Nanos) -> u128 {
        match self.at.checked_sub(now) {
            // The remainder is below the amount, so a TAT before `now` owes
            // nothing.
            Some(ahead) if self.amount != 0 => {
                u128::from(ahead) * u128::from(self.amount) + u128::from(self.remainder)
            }
            _ => 0,
        }
    }
}

/// Evaluates `cost` against `state` at `now`.
pub fn step(state: State, rate: Rate, now: Nanos, cost: u64) -> Step {
    let amount = u128::from(rate.amount);
    let w = u128::from(rate.window);
    // Debt in units * window: the same quantity under any amount. Everything
    // below is relative to `now`, so it stays small (and mostly 64-bit).
    let debt = Tat::from(state).debt(now);
    let capacity = amount * w;
    let increment = u128::from(cost) * w;
    // Debt and increment are each below 2^128; their sum may not be, and an
    // overflowing sum never fits.
    let sum = debt.checked_add(increment);
    let fits = sum.is_some_and(|d| d <= capacity);
    let wait = if fits {
        Some(0)
    } else if increment > capacity {
        None
    } else {
        Some(saturate(div_ceil(
            debt.saturating_add(increment) - capacity,
            amount,
        )))
    };
    // Saturated, the TAT lands centuries ahead: still a denial, never an admission.
    let debt_after = sum.unwrap_or(u128::MAX);
    let remaining = |debt: u128| saturate(div(capacity.saturating_sub(debt), w));
    let at = |debt: u128| now.saturating_add(saturate(div_ceil(debt, amount)));
    let whole = div(debt_after, amount);
    Step {
        fits,
        counted: Tat {
            at: now.saturating_add(saturate(whole)),
            amount: rate.amount,
            remainder: saturate(debt_after - whole * amount),
        }
        .into(),
        remaining: remaining(debt),
        remaining_after: remaining(debt_after),
        wait,
        free_at: at(debt),
        free_at_after: at(debt_after),
        expires_at: at(debt_after),
    }
}

/// `state` with `counted` given back at `now`: the debt shrinks by the
/// units the bucket still owes for them, `min(units, (TAT_after - now) *
/// amount / window)`, where `TAT_after` is the bucket's TAT right after they
/// were counted; what it has refilled since is not given back twice.
///
/// Why that much and no more: let `D` be the debt with the units counted
/// less the debt had they never been. `D` starts at the units' cost; a
/// later step at `t` leaves it unchanged while the bucket without them still
/// owes, and otherwise makes it the debt with them at `t`, which is at least
/// `(TAT_after - t) * amount` (a TAT never moves back). So `D` never falls
/// below that bound, and giving back no more than it leaves the bucket owing
/// at least what it would owe had the units never been counted: a refund
/// never lets a bucket admit more than its amount (up to the rounding of
/// `TAT_after` to the store's clock tick, below). Given back before the
/// bucket had refilled past its debt from before them, it is exact.
pub fn refund(state: State, rate: Rate, counted: Charged, now: Nanos) -> State {
    let tat = Tat::from(state);
    // In units * window. `free_at` is the TAT rounded up to the nanosecond
    // (the store's clock tick: a millisecond on Redis), so the bound may be
    // passed by less than one tick's refill: a unit comes back at most a
    // tick before it would have refilled.
    let cost = u128::from(counted.units) * u128::from(rate.window);
    let ahead = counted.free_at.saturating_sub(now);
    let owed = (u128::from(ahead) * u128::from(rate.amount)).min(cost);
    let debt = tat.debt(now).saturating_sub(owed);
    if debt == 0 {
        return State::default();
    }
    let amount = u128::from(tat.amount);
    let whole = div(debt, amount);
    Tat {
        at: now.saturating_add(saturate(whole)),
        amount: tat.amount,
        remainder: saturate(debt - whole * amount),
    }
    .into()
}

/// `state` as of `now`: unchanged while it owes anything, else the state of
/// an unused counter.
pub fn at(state: State, now: Nanos) -> State {
    if Tat::from(state).debt(now) > 0 {
        state
    } else {
        State::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;
    const MIN: Nanos = 60 * SEC;
    const T0: Nanos = 1_700_000_000 * SEC;

    fn rate(n: u64) -> Rate {
        Rate::new(n, MIN).expect("nonzero")
    }

    #[test]
    fn an_idle_caller_spends_a_full_window_at_once() {
        let mut s = State::default();
        for i in 0..20 {
            let st = step(s, rate(20), T0, 1);
            assert!(st.fits, "request {i}");
            s = st.counted;
        }
        let st = step(s, rate(20), T0, 1);
        assert!(!st.fits);
        assert_eq!(st.wait, Some(3 * SEC));
        assert!(step(s, rate(20), T0 + 3 * SEC, 1).fits);
    }

    #[test]
    fn amounts_that_do_not_divide_the_window_stay_exact() {
        let r = Rate::new(3, SEC).expect("nonzero");
        let mut s = State::default();
        for _ in 0..3 {
            let st = step(s, r, T0, 1);
            assert!(st.fits);
            s = st.counted;
        }
        assert!(!step(s, r, T0, 1).fits);
        // Three thirds of a second refill exactly one second later.
        let later = step(s, r, T0 + SEC, 3);
        assert!(later.fits);
    }

    #[test]
    fn amounts_and_costs_near_u64_max_never_wrap_into_fitting() {
        let max = Rate::new(u64::MAX, MIN).expect("nonzero");
        let full = step(State::default(), max, T0, u64::MAX);
        assert!(full.fits);
        assert!(!step(full.counted, max, T0, 1).fits);
        assert!(!step(full.counted, max, T0, u64::MAX).fits);
        // A recorded overdraft far past the window stays a denial.
        let deep = step(State::default(), rate(1), T0, u64::MAX).counted;
        let later = step(deep, rate(1), T0 + 3600 * SEC, 1);
        assert!(!later.fits);
    }

    #[test]
    fn debt_carries_over_a_change_of_amount_in_units() {
        let mut s = State::default();
        for _ in 0..20 {
            s = step(s, rate(20), T0, 1).counted;
        }
        // Upgraded to 1000/minute: 980 left at once.
        assert_eq!(step(s, rate(1000), T0, 1).remaining, 980);
        // Downgraded to 10/minute: 20 units owed, nothing left for a minute.
        let down = step(s, rate(10), T0, 1);
        assert!(!down.fits);
        assert_eq!(down.wait, Some(66 * SEC));
    }

    #[test]
    fn a_refund_never_gives_back_what_the_bucket_refilled_by_itself() {
        let r = rate(5);
        // Reserved 5 of an idle bucket, then a full minute passes: refilled.
        let reserving = step(State::default(), r, T0, 5);
        let reserved = reserving.counted;
        let counted = Charged {
            units: 5,
            rate: r,
            at: T0,
            free_at: reserving.free_at_after,
        };
        // 5 consumed after the refill: the bucket is empty again.
        let spent = step(reserved, r, T0 + MIN, 5).counted;
        // Releasing the reservation now gives back nothing: those 5 refilled
        // long ago, and the 5 just spent are owed.
        let released = refund(spent, r, counted, T0 + MIN);
        assert_eq!(step(released, r, T0 + MIN, 1).remaining, 0);
        // Released half way through the refill: half of it is still owed.
        let halfway = refund(reserved, r, counted, T0 + MIN / 2);
        assert_eq!(step(halfway, r, T0 + MIN / 2, 1).remaining, 5);
        // Released at once: all of it.
        let at_once = refund(reserved, r, counted, T0);
        assert_eq!(step(at_once, r, T0, 1).remaining, 5);
    }
}
