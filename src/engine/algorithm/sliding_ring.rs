//! A strict sliding window: the window split into six buckets, the counts of
//! the last seven (the current one and six before it) summed.
//!
//! Seven buckets cover every trailing span of one window, so no span of one
//! window ever sees more than the amount: the guarantee Cloudflare's
//! two-counter estimate gives only for evenly spread traffic. Traffic steady
//! at `amount * 6 / 7` per window or less is never limited by it; this is what
//! a burst ceiling needs (see `limiter`): a token bucket at the published rate
//! decides the long-run average, the ring caps any window at the burst amount.
//!
//! State: seven 32-bit bucket counts packed in `a`, `b`, `c` and the low half
//! of `d`; the high half of `d` holds the newest bucket's index (mod 2^32),
//! which is compared with wrapping arithmetic. Amounts are at most `u32::MAX`
//! (the configuration checks this).

use super::{Charged, Rate, Step};
use crate::engine::clock::{MILLISECOND, Nanos};
use crate::engine::store::State;

/// Buckets per window.
pub const BUCKETS_PER_WINDOW: u64 = 6;
const RING: usize = BUCKETS_PER_WINDOW as usize + 1;

/// A bucket's width: a sixth of the window in whole milliseconds, rounded
/// up (at least one). `consume.lua` computes the same on Redis's
/// millisecond clock, so both stores put every instant in the same bucket:
/// a one-second ring has buckets of 167 ms in either.
pub fn width(window: Nanos) -> Nanos {
    (window / MILLISECOND).max(1).div_ceil(BUCKETS_PER_WINDOW) * MILLISECOND
}

/// Evaluates `cost` against `state` at `now`.
pub fn step(state: State, rate: Rate, now: Nanos, cost: u64) -> Step {
    let width = width(rate.window);
    let index = now / width;
    let mut ring = unpack(state, index);
    let used: u64 = ring.iter().map(|&c| u64::from(c)).sum();
    let fits = used.checked_add(cost).is_some_and(|n| n <= rate.amount);
    let wait = if fits {
        Some(0)
    } else if cost > rate.amount {
        None
    } else {
        // The oldest buckets leave the span one by one.
        let mut left = used;
        (1..=RING as u64)
            .find(|&j| {
                left -= u64::from(ring[slot(index + j)]);
                left.checked_add(cost).is_some_and(|n| n <= rate.amount)
            })
            .map(|j| (index + j) * width - now)
    };
    let free = |ring: &[u32; RING]| {
        (0..RING as u64)
            .find(|&age| ring[slot(index - age.min(index))] > 0)
            .map_or(now, |age| (index - age + RING as u64) * width)
    };
    let free_at = free(&ring);
    let current = &mut ring[slot(index)];
    *current = u32::try_from(u64::from(*current).saturating_add(cost)).unwrap_or(u32::MAX);
    let after = used.saturating_add(cost);
    Step {
        fits,
        counted: pack(&ring, index),
        remaining: rate.amount.saturating_sub(used),
        remaining_after: rate.amount.saturating_sub(after),
        wait,
        free_at,
        free_at_after: free(&ring),
        expires_at: (index + RING as u64) * width,
    }
}

/// `state` with `counted` given back at `now`: taken off the bucket they
/// were counted in while it is one of the ring's seven; once it has left
/// the ring, it weighs nothing and the refund changes nothing.
pub fn refund(state: State, rate: Rate, counted: Charged, now: Nanos) -> State {
    let width = width(rate.window);
    let index = now / width;
    let at = counted.at / width;
    if index.checked_sub(at).is_none_or(|age| age >= RING as u64) {
        return state;
    }
    let mut ring = unpack(state, index);
    let bucket = &mut ring[slot(at)];
    *bucket = bucket.saturating_sub(u32::try_from(counted.units).unwrap_or(u32::MAX));
    pack(&ring, index)
}

/// `state` as of `now`: the ring as of the current bucket, older buckets
/// zeroed.
pub fn at(state: State, window: Nanos, now: Nanos) -> State {
    let index = now / width(window);
    pack(&unpack(state, index), index)
}

/// Bucket by bucket, `pick` of two rings as of the same bucket (see [`at`]).
pub fn lanes(a: State, b: State, pick: impl Fn(u32, u32) -> u32) -> State {
    let index = a.d >> 32;
    let (x, y) = (unpack(a, index), unpack(b, index));
    let ring: [u32; RING] = std::array::from_fn(|i| pick(x[i], y[i]));
    pack(&ring, index)
}

fn slot(index: u64) -> usize {
    (index % RING as u64) as usize
}

/// The ring as of bucket `index`: buckets older than seven are zeroed.
fn unpack(state: State, index: u64) -> [u32; RING] {
    let words = [state.a, state.b, state.c, state.d];
    let mut ring: [u32; RING] = std::array::from_fn(|i| (words[i / 2] >> (32 * (i % 2))) as u32);
    let stored = (state.d >> 32) as u32;
    let age = (index as u32).wrapping_sub(stored);
    if age as usize >= RING {
        return [0; RING];
    }
    for step in 1..=age {
        ring[slot(index - u64::from(age) + u64::from(step))] = 0;
    }
    ring
}

fn pack(ring: &[u32; RING], index: u64) -> State {
    let word = |i: usize| u64::from(ring[i]) | (ring.get(i + 1).map_or(0, |&c| u64::from(c)) << 32);
    State {
        a: word(0),
        b: word(2),
        c: word(4),
        d: u64::from(ring[6]) | (u64::from(index as u32) << 32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;
    const T0: Nanos = 1_799_971_200 * SEC;

    fn rate(n: u64) -> Rate {
        Rate::new(n, 60 * SEC).expect("nonzero")
    }

    #[test]
    fn no_span_of_one_window_exceeds_the_amount() {
        // 24 at 50 s; nothing more fits until their bucket leaves the span.
        let mut s = State::default();
        let t = T0 + 50 * SEC;
        for _ in 0..24 {
            let st = step(s, rate(24), t, 1);
            assert!(st.fits);
            s = st.counted;
        }
        let st = step(s, rate(24), t + 59 * SEC, 1);
        assert!(!st.fits);
        // The bucket [50 s, 60 s) leaves at 120 s.
        assert_eq!(st.wait, Some(11 * SEC));
        assert!(step(s, rate(24), T0 + 120 * SEC, 24).fits);
    }

    #[test]
    fn steady_traffic_at_six_sevenths_is_never_limited() {
        let mut s = State::default();
        // 6 a window, one every 10 s, against 7: always fits.
        for i in 0..100 {
            let st = step(s, rate(7), T0 + i * 10 * SEC, 1);
            assert!(st.fits, "request {i}");
            s = st.counted;
        }
    }

    #[test]
    fn buckets_are_whole_milliseconds_as_in_the_script() {
        assert_eq!(width(60 * SEC), 10 * SEC);
        assert_eq!(width(SEC), 167 * MILLISECOND);
        assert_eq!(width(MILLISECOND / 2), MILLISECOND);
        // An instant's bucket is its millisecond's: what Redis reads.
        let now = T0 + 123_456_789;
        assert_eq!(now / width(SEC), (now / MILLISECOND) / 167);
    }

    #[test]
    fn stale_rings_read_as_empty() {
        let mut s = State::default();
        for _ in 0..5 {
            s = step(s, rate(5), T0, 1).counted;
        }
        assert!(!step(s, rate(5), T0, 1).fits);
        assert_eq!(step(s, rate(5), T0 + 3600 * SEC, 1).remaining, 5);
    }
}
