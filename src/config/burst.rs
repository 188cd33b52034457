//! Bursts: what `burst:` allows over a limit's rate, and the ceiling that
//! follows from it.
//!
//! A burst is read and checked once, when its entry is compiled ([`Extra::check`]),
//! and becomes a ceiling once, when the limit is built ([`Extra::ceiling`]). In
//! between it may be scaled by a plan multiplier, which is why the ceiling is
//! not computed up front: a share follows the scaled amount, units are scaled.
//! The engine runs a ceiling as a six-bucket ring (`engine::algorithm::sliding_ring`).

use super::raw::Burst;

/// The largest ceiling the ring can count: it keeps 32-bit bucket counts.
const MAX_CEILING: u64 = u32::MAX as u64;

/// A checked `burst:`: the extra it allows over whatever amount it ends up on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Extra {
    /// A fixed number of units.
    Units(u64),
    /// A share of the amount, in percent.
    Percent(f64),
}

// === impl Extra ===

impl Extra {
    /// Reads `burst` and refuses it when its ceiling over `amount` is more than
    /// the ring can count.
    pub(super) fn check(burst: &Burst, amount: u64) -> Result<Self, String> {
        let extra = Self::read(burst)?;
        if burst_ceiling(amount, extra.over(amount)) > MAX_CEILING {
            return Err(format!(
                "a burst ceiling is at most {} units a window",
                u32::MAX
            ));
        }
        Ok(extra)
    }

    /// The same burst for an amount scaled by a plan's `multiplier`: units
    /// scale with it, a share follows the scaled amount by itself.
    pub(super) fn scaled(self, multiplier: f64) -> Self {
        match self {
            Self::Units(n) => Self::Units(((n as f64) * multiplier).round() as u64),
            Self::Percent(_) => self,
        }
    }

    /// Whether the ceiling over `amount` is one the ring can count: what
    /// [`Extra::check`] asks of the written amount, asked again of an amount
    /// a multiplier scaled.
    pub(super) fn fits(self, amount: u64) -> bool {
        burst_ceiling(amount, self.over(amount)) <= MAX_CEILING
    }

    /// The ceiling over `amount`, held to what the ring can count
    /// ([`Extra::fits`] has refused larger ones).
    pub(super) fn ceiling(self, amount: u64) -> u64 {
        burst_ceiling(amount, self.over(amount)).min(MAX_CEILING)
    }

    /// `burst:` as written: units, or a percentage such as `20%`.
    fn read(burst: &Burst) -> Result<Self, String> {
        match burst {
            Burst::Units(n) => Ok(Self::Units(*n)),
            Burst::Text(t) => t
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse().ok())
                .filter(|p: &f64| p.is_finite() && *p >= 0.0)
                .map(Self::Percent)
                .ok_or_else(|| {
                    format!("expected a percentage such as \"20%\" or a number of units, got {t:?}")
                }),
        }
    }

    /// The extra units over `amount`.
    fn over(self, amount: u64) -> u64 {
        match self {
            Self::Units(n) => n,
            Self::Percent(pct) => (amount as f64 * pct / 100.0).round() as u64,
        }
    }
}

/// The most a burst may admit in one window: `amount + extra`, and at least
/// `amount * 7 / 6`, below which the six-bucket ring would hold steady traffic
/// at `amount` under its rate (see `engine::algorithm::sliding_ring`).
pub(crate) fn burst_ceiling(amount: u64, extra: u64) -> u64 {
    amount.saturating_add(extra).max(
        (u128::from(amount) * 7)
            .div_ceil(6)
            .try_into()
            .unwrap_or(u64::MAX),
    )
}

/// The extra units `burst` allows over `amount`; for callers outside the plan
/// compiler (Envoy rule files), which hold their own ceilings.
pub(crate) fn burst_extra(burst: &Burst, amount: u64) -> Result<u64, String> {
    Extra::read(burst).map(|extra| extra.over(amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_a_share_or_units() {
        assert_eq!(burst_extra(&Burst::Text("20%".into()), 1000), Ok(200));
        assert_eq!(burst_extra(&Burst::Units(7), 1000), Ok(7));
        assert!(burst_extra(&Burst::Text("lots".into()), 1000).is_err());
    }
}
