//! Milliseconds on Redis's clock: the only unit `consume.lua` speaks.
//!
//! The engine counts [`Nanos`]; a value crosses into milliseconds here and
//! nowhere else, so no bare integer at the Redis boundary leaves its unit to
//! a comment.

use redis::{NumericBehavior, RedisWrite, ToRedisArgs};

use crate::engine::{Nanos, clock::MILLISECOND};

/// Milliseconds since the Unix epoch on Redis's clock, or a span of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Millis(u64);

impl Millis {
    /// `nanos`, its partial millisecond dropped: the millisecond Redis's
    /// `TIME` reads during that instant.
    pub(super) fn floor(nanos: Nanos) -> Self {
        Self(nanos / MILLISECOND)
    }

    /// A window's length, at least one millisecond (a shorter window would
    /// be none at all in the script).
    pub(super) fn window(nanos: Nanos) -> Self {
        Self((nanos / MILLISECOND).max(1))
    }

    /// A value the script returned; a negative one (its markers) reads as 0.
    pub(super) fn from_reply(v: i64) -> Self {
        Self(u64::try_from(v).unwrap_or(0))
    }

    /// A count of milliseconds computed elsewhere (a deadline on Redis's
    /// clock).
    pub(super) fn new(ms: u64) -> Self {
        Self(ms)
    }

    /// The count, for arithmetic that stays in milliseconds.
    pub(super) fn get(self) -> u64 {
        self.0
    }

    /// Back in the engine's unit.
    pub(super) fn nanos(self) -> Nanos {
        self.0.saturating_mul(MILLISECOND)
    }
}

impl ToRedisArgs for Millis {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        self.0.write_redis_args(out);
    }

    fn describe_numeric_behavior(&self) -> NumericBehavior {
        self.0.describe_numeric_behavior()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_keep_their_unit() {
        assert_eq!(Millis::floor(1_999_999).get(), 1);
        assert_eq!(Millis::window(500_000).get(), 1);
        assert_eq!(Millis::window(60_000 * MILLISECOND).get(), 60_000);
        assert_eq!(Millis::from_reply(-2), Millis::default());
        assert_eq!(Millis::from_reply(7).nanos(), 7 * MILLISECOND);
    }
}
