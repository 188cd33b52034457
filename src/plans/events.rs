//! `events:` as the decision path reads it: the usage thresholds each limit
//! announces, and where threshold events are delivered.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A share of a limit's amount, in hundredths of a percent (1%–100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u16);

/// A webhook receiving threshold events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The Standard Webhooks secret, `whsec_` and the base64 key.
    pub secret: String,
    /// Only these thresholds, when set.
    pub thresholds: Option<Vec<Threshold>>,
    /// Only events of these plans, when set.
    pub plans: Option<Vec<String>>,
}

/// The configuration's `events:` section, as installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// Receivers of threshold events.
    pub webhooks: Vec<Webhook>,
}

/// Thresholds of one limit, shared by every decision that reads them.
pub type Thresholds = Arc<[Threshold]>;

// === impl Threshold ===

impl Threshold {
    /// The whole amount.
    pub const FULL: Self = Self(10_000);

    /// `basis_points` hundredths of a percent; `None` outside 1%–100%.
    pub fn from_basis_points(basis_points: u16) -> Option<Self> {
        (100..=10_000)
            .contains(&basis_points)
            .then_some(Self(basis_points))
    }

    /// In hundredths of a percent.
    pub fn basis_points(self) -> u16 {
        self.0
    }

    /// The usage at which `amount` crosses it: the least whole number of
    /// units at or above this share of `amount` (at least 1).
    ///
    /// ```
    /// use tollgate::plans::events::Threshold;
    /// let eighty: Threshold = "80%".parse().unwrap();
    /// assert_eq!(eighty.level(100), 80);
    /// assert_eq!(eighty.level(7), 6); // 5.6 rounds up
    /// assert_eq!(Threshold::FULL.level(7), 7);
    /// ```
    pub fn level(self, amount: u64) -> u64 {
        let level = (u128::from(amount) * u128::from(self.0)).div_ceil(10_000);
        u64::try_from(level).unwrap_or(u64::MAX).max(1)
    }

    /// Whether usage going from `before` to `after` units of `amount`
    /// crosses it.
    pub fn crossed(self, amount: u64, before: u64, after: u64) -> bool {
        let level = self.level(amount);
        before < level && level <= after
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.0 / 100, self.0 % 100);
        match part {
            0 => write!(f, "{whole}%"),
            p if p % 10 == 0 => write!(f, "{whole}.{}%", p / 10),
            p => write!(f, "{whole}.{p:02}%"),
        }
    }
}

/// Why a threshold did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadThreshold(pub String);

impl fmt::Display for BadThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "must be a percentage from 1% to 100% (at most two decimals), got {:?}",
            self.0
        )
    }
}

impl FromStr for Threshold {
    type Err = BadThreshold;

    /// `80%`, `99.5%` or `80` (a percentage either way).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadThreshold(s.to_owned());
        let digits = s.trim().strip_suffix('%').unwrap_or(s.trim()).trim();
        let (whole, part) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 3
            || part.len() > 2
            || !all_digits(whole)
            || !all_digits(part)
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let part: u32 = format!("{part:0<2}").parse().map_err(|_| bad())?;
        u16::try_from(whole * 100 + part)
            .ok()
            .and_then(Self::from_basis_points)
            .ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_shows_percentages() {
        for (text, shown) in [
            ("80%", "80%"),
            ("100", "100%"),
            ("99.5%", "99.5%"),
            ("1.25%", "1.25%"),
        ] {
            let t: Threshold = text.parse().expect(text);
            assert_eq!(t.to_string(), shown);
        }
        for bad in [
            "0%", "0.5%", "101%", "700%", "999.99%", "-5%", "80.123%", "%", "eighty", "1e2",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn crossing_is_the_step_that_reaches_the_level() {
        let t: Threshold = "80%".parse().expect("valid");
        assert!(t.crossed(100, 79, 80));
        assert!(t.crossed(100, 0, 100));
        assert!(!t.crossed(100, 80, 81));
        assert!(!t.crossed(100, 10, 79));
        assert!(Threshold::FULL.crossed(3, 2, 3));
    }
}
