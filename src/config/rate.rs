//! Rates and windows as written: `30/minute`, `100_000/day`, `10/30s`.
//!
//! One reading for the configuration file, Envoy rule files and admin
//! overrides, so all three accept and refuse the same text with the same words.

use crate::engine::algorithm::calendar::Unit;
use crate::engine::{MAX_AMOUNT, Nanos, clock::SECOND};

/// A rate's window as written: a duration, aligned to the epoch, or a
/// calendar's periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// `minute`, `day`, `30s`: that long, from the epoch.
    Every(Nanos),
    /// `week`, `month`, `year`: as the calendar counts them.
    Calendar(Unit),
}

/// `<amount>/<window>` with a duration only (an override's rate), as
/// [`parse_rate`] reads it, a calendar window refused.
pub(crate) fn parse_fixed_rate(s: &str) -> Result<(u64, Nanos), String> {
    match parse_rate(s)? {
        (amount, Span::Every(window)) => Ok((amount, window)),
        (_, Span::Calendar(unit)) => Err(format!(
            "a {} is a calendar window, set in the configuration file; give a duration such as 30d",
            unit.as_str()
        )),
    }
}

/// `<amount>/<window>`: `30/minute`, `100_000/day`, `10/30s`, or a
/// calendar's `10000/month` (also `week`, `year`).
pub(crate) fn parse_rate(s: &str) -> Result<(u64, Span), String> {
    let bad =
        || format!("expected \"<amount>/<window>\" such as \"30/minute\" or \"10/30s\", got {s:?}");
    let (amount, window) = s.split_once('/').ok_or_else(bad)?;
    let digits: String = amount
        .trim()
        .chars()
        .filter(|c| !matches!(c, '_' | ','))
        .collect();
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    if amount == 0 {
        return Err(format!(
            "amount must be at least 1 in {s:?} (use deny to refuse a class)"
        ));
    }
    check_amount(amount)?;
    if let Some(unit) = Unit::of_name(window.trim()) {
        return Ok((amount, Span::Calendar(unit)));
    }
    Ok((amount, Span::Every(parse_window(window)?)))
}

/// Refuses an amount or a cost over [`MAX_AMOUNT`], in the words every
/// caller uses.
pub(crate) fn check_amount(n: u64) -> Result<u64, String> {
    if n > MAX_AMOUNT {
        return Err(format!(
            "{n} is more than the largest amount, {MAX_AMOUNT} (2^53 - 1)"
        ));
    }
    Ok(n)
}

/// `second`, `minute`, `hour`, `day`, `week` (or `s`, `m`, `h`, `d`, `w`), or
/// a duration such as `30s`, `5m`, `1h30m`.
pub(crate) fn parse_window(s: &str) -> Result<Nanos, String> {
    let s = s.trim();
    let named = match s {
        "second" | "sec" | "s" => Some(1),
        "minute" | "min" | "m" => Some(60),
        "hour" | "h" => Some(3_600),
        "day" | "d" => Some(86_400),
        "week" | "w" => Some(604_800),
        _ => None,
    };
    let nanos = match named {
        Some(secs) => secs * SECOND,
        None => {
            let d = humantime::parse_duration(s)
                .map_err(|_| format!("expected a window (second, minute, hour, day, week or a duration like 30s), got {s:?}"))?;
            u64::try_from(d.as_nanos()).map_err(|_| format!("window {s:?} is too long"))?
        }
    };
    if nanos < 1_000_000 {
        return Err(format!("window {s:?} is shorter than a millisecond"));
    }
    if nanos > 366 * 86_400 * SECOND {
        return Err(format!("window {s:?} is longer than a year"));
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_windows() {
        let every = |n| Span::Every(n * SECOND);
        assert_eq!(parse_rate("30/minute"), Ok((30, every(60))));
        assert_eq!(parse_rate("100_000/day"), Ok((100_000, every(86_400))));
        assert_eq!(parse_rate("10/30s"), Ok((10, every(30))));
        assert_eq!(parse_rate("5/1h30m"), Ok((5, every(5_400))));
        assert_eq!(
            parse_rate("10000/month"),
            Ok((10_000, Span::Calendar(Unit::Month)))
        );
        assert_eq!(parse_rate("7/week"), Ok((7, Span::Calendar(Unit::Week))));
        assert_eq!(parse_rate("1/year"), Ok((1, Span::Calendar(Unit::Year))));
        assert_eq!(parse_rate("30/30d"), Ok((30, every(30 * 86_400))));
        assert!(parse_fixed_rate("1/month").is_err());
        assert!(parse_rate("30 per min").is_err());
        assert!(parse_rate("0/minute").is_err());
        assert!(parse_rate("3/fortnight").is_err());
        assert_eq!(
            parse_rate("9007199254740991/day"),
            Ok((9_007_199_254_740_991, every(86_400)))
        );
        assert_eq!(
            parse_rate("18446744073709551615/day"),
            Err(
                "18446744073709551615 is more than the largest amount, 9007199254740991 (2^53 - 1)"
                    .into()
            )
        );
    }
}
