//! Calendar windows: a week, a month or a year as a calendar counts them,
//! in UTC or in a named time zone, a month optionally starting on a day of
//! its own (a billing cycle from the 14th). Counted as a fixed window whose
//! boundaries are the calendar's: a quota of 10,000 a month resets at the
//! start of the next month, however long this one is (28 to 31 days), and
//! at local midnight across a daylight-saving change.
//!
//! State: `a` the end of the period it was counted in (nanoseconds since
//! the epoch), `b` the count. A state whose end has passed reads as empty,
//! so the state needs no calendar to be read ([`at`]).

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

use super::{Charged, Rate, Step};
use crate::engine::{clock::Nanos, store::State};

/// A calendar's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Monday to Sunday (ISO 8601).
    Week,
    /// The first (or the anchor day) to the day before the next's.
    Month,
    /// The first of January to the last of December.
    Year,
}

/// A calendar period's shape: its unit, its zone and, for a month, the day
/// it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calendar {
    /// Week, month or year.
    pub unit: Unit,
    /// The zone's number (see [`zone`]); 0 is UTC.
    pub zone: u16,
    /// For a month: the day of the month it starts on, 1 to 31 (past a
    /// month's end, its last day); 0 or 1: the first.
    pub anchor: u8,
}

/// The zones calendars name, by number: UTC first. Numbers are handed out
/// once and never reused, so a `Calendar` stays small and `Copy`.
static ZONES: LazyLock<ArcSwap<Vec<(String, TimeZone)>>> =
    LazyLock::new(|| ArcSwap::from_pointee(vec![("UTC".to_owned(), TimeZone::UTC)]));

/// The number of the IANA zone `name` (`Europe/Berlin`, `UTC`), or why it
/// is not one.
pub fn zone(name: &str) -> Result<u16, String> {
    let zones = ZONES.load();
    if let Some(i) = zones.iter().position(|(n, _)| n == name) {
        return Ok(i as u16);
    }
    let tz = TimeZone::get(name)
        .map_err(|_| format!("{name:?} is not a time zone (an IANA name such as Europe/Berlin)"))?;
    let mut next = (**zones).clone();
    next.push((name.to_owned(), tz));
    let i = u16::try_from(next.len() - 1).map_err(|_| "too many time zones".to_owned())?;
    ZONES.store(Arc::new(next));
    Ok(i)
}

/// The IANA name of zone number `zone` (UTC when unknown).
pub fn zone_name(zone: u16) -> String {
    ZONES
        .load()
        .get(usize::from(zone))
        .map_or_else(|| "UTC".to_owned(), |(name, _)| name.clone())
}

// === impl Unit ===

impl Unit {
    /// A window's name in configuration: `week`, `month`, `year`.
    pub fn of_name(name: &str) -> Option<Self> {
        match name {
            "week" | "w" => Some(Self::Week),
            "month" | "mo" => Some(Self::Month),
            "year" | "y" => Some(Self::Year),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// Its usual length, for what needs one number (answers' `window`,
    /// Envoy's units): 7, 30 and 365 days.
    pub fn nominal(self) -> Nanos {
        const DAY: Nanos = 86_400 * crate::engine::clock::SECOND;
        match self {
            Self::Week => 7 * DAY,
            Self::Month => 30 * DAY,
            Self::Year => 365 * DAY,
        }
    }
}

// === impl Calendar ===

impl Calendar {
    /// The period holding `now`: its start and its end.
    pub fn period(self, now: Nanos) -> (Nanos, Nanos) {
        let tz = ZONES
            .load()
            .get(usize::from(self.zone))
            .map_or(TimeZone::UTC, |(_, tz)| tz.clone());
        let at = Timestamp::from_nanosecond(i128::from(now)).unwrap_or(Timestamp::UNIX_EPOCH);
        let today = tz.to_datetime(at).date();
        let start = self.start_on_or_before(today);
        let end = self.next(start);
        (midnight(start, &tz), midnight(end, &tz))
    }

    /// The first day of the period holding `day`.
    fn start_on_or_before(self, day: Date) -> Date {
        match self.unit {
            Unit::Week => {
                let back = i64::from(day.weekday().to_monday_zero_offset());
                day.checked_sub(jiff::Span::new().days(back)).unwrap_or(day)
            }
            Unit::Year => Date::new(day.year(), 1, 1).unwrap_or(day),
            Unit::Month => {
                let this = self.month_start(day.year(), day.month());
                if day >= this {
                    this
                } else {
                    let (y, m) = if day.month() == 1 {
                        (day.year() - 1, 12)
                    } else {
                        (day.year(), day.month() - 1)
                    };
                    self.month_start(y, m)
                }
            }
        }
    }

    /// The first day of the period after the one starting on `start`.
    fn next(self, start: Date) -> Date {
        match self.unit {
            Unit::Week => start
                .checked_add(jiff::Span::new().days(7))
                .unwrap_or(start),
            Unit::Year => Date::new(start.year() + 1, 1, 1).unwrap_or(start),
            Unit::Month => {
                // The month the period is named for is the one whose
                // anchor day starts it (clamped: the 31st of April is the
                // 30th), so step from that month, not from the clamped day.
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                let next = self.month_start(y, m);
                if next > start {
                    next
                } else {
                    self.month_start(
                        if m == 12 { y + 1 } else { y },
                        if m == 12 { 1 } else { m + 1 },
                    )
                }
            }
        }
    }

    /// The day a month period starting in month `m` of `y` starts on.
    fn month_start(self, y: i16, m: i8) -> Date {
        let first = Date::new(y, m, 1).unwrap_or_default();
        let day = i8::try_from(self.anchor.max(1)).unwrap_or(1);
        Date::new(y, m, day.min(first.days_in_month())).unwrap_or(first)
    }
}

/// Local midnight of `day` in `tz` (the first instant of the day where a
/// daylight-saving change skips midnight), in nanoseconds.
fn midnight(day: Date, tz: &TimeZone) -> Nanos {
    tz.to_timestamp(day.to_datetime(Time::midnight()))
        .ok()
        .and_then(|t| u64::try_from(t.as_nanosecond()).ok())
        .unwrap_or(0)
}

/// The calendar of `rate`; a calendar rate always has one.
fn calendar(rate: Rate) -> Calendar {
    rate.calendar.unwrap_or(Calendar {
        unit: Unit::Month,
        zone: 0,
        anchor: 0,
    })
}

/// Evaluates `cost` against `state` at `now`, as a fixed window over the
/// calendar period holding `now`.
pub fn step(state: State, rate: Rate, now: Nanos, cost: u64) -> Step {
    let (_, end) = calendar(rate).period(now);
    let count = if state.a > now { state.b } else { 0 };
    super::fixed_window::counting(count, rate, now, cost, end, |b| State {
        a: end,
        b,
        ..State::default()
    })
}

/// `state` as of `now`: a period that ended reads as empty.
pub fn at(state: State, now: Nanos) -> State {
    if state.a > now {
        State {
            a: state.a,
            b: state.b,
            ..State::default()
        }
    } else {
        State::default()
    }
}

/// `state` with `counted` given back at `now`: taken off the count while
/// the period they were counted in (the one ending at their `free_at`) has
/// not ended.
pub fn refund(state: State, _rate: Rate, counted: Charged, now: Nanos) -> State {
    if state.a <= now || state.a != counted.free_at {
        return state;
    }
    State {
        b: state.b.saturating_sub(counted.units),
        ..state
    }
}

/// Nanoseconds since the epoch of a UTC date and time (tests).
#[cfg(test)]
fn utc(y: i16, m: i8, d: i8, h: i8) -> Nanos {
    let dt = jiff::civil::date(y, m, d).at(h, 0, 0, 0);
    let t = TimeZone::UTC.to_timestamp(dt).expect("a time");
    u64::try_from(t.as_nanosecond()).expect("after the epoch")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month(anchor: u8, zone: u16) -> Calendar {
        Calendar {
            unit: Unit::Month,
            zone,
            anchor,
        }
    }

    #[test]
    fn months_of_every_length_end_at_the_next_first() {
        let m = month(0, 0);
        assert_eq!(
            m.period(utc(2027, 2, 14, 12)),
            (utc(2027, 2, 1, 0), utc(2027, 3, 1, 0)),
            "28 days"
        );
        assert_eq!(
            m.period(utc(2028, 2, 29, 23)),
            (utc(2028, 2, 1, 0), utc(2028, 3, 1, 0)),
            "29 days"
        );
        assert_eq!(
            m.period(utc(2027, 4, 30, 0)),
            (utc(2027, 4, 1, 0), utc(2027, 5, 1, 0)),
            "30 days"
        );
        assert_eq!(
            m.period(utc(2027, 12, 31, 23)),
            (utc(2027, 12, 1, 0), utc(2028, 1, 1, 0)),
            "31 days, into the next year"
        );
    }

    #[test]
    fn an_anchor_day_starts_each_month_on_it_or_the_months_last() {
        let m = month(14, 0);
        assert_eq!(
            m.period(utc(2027, 3, 13, 12)),
            (utc(2027, 2, 14, 0), utc(2027, 3, 14, 0))
        );
        assert_eq!(
            m.period(utc(2027, 3, 14, 0)),
            (utc(2027, 3, 14, 0), utc(2027, 4, 14, 0))
        );
        let last = month(31, 0);
        assert_eq!(
            last.period(utc(2027, 2, 28, 1)),
            (utc(2027, 2, 28, 0), utc(2027, 3, 31, 0)),
            "the 31st of February is its last day"
        );
        assert_eq!(
            last.period(utc(2027, 4, 1, 0)),
            (utc(2027, 3, 31, 0), utc(2027, 4, 30, 0))
        );
    }

    #[test]
    fn weeks_start_on_monday_and_years_on_the_first_of_january() {
        let week = Calendar {
            unit: Unit::Week,
            zone: 0,
            anchor: 0,
        };
        // 2027-01-01 is a Friday.
        assert_eq!(
            week.period(utc(2027, 1, 1, 9)),
            (utc(2026, 12, 28, 0), utc(2027, 1, 4, 0))
        );
        let year = Calendar {
            unit: Unit::Year,
            zone: 0,
            anchor: 0,
        };
        assert_eq!(
            year.period(utc(2028, 7, 1, 0)),
            (utc(2028, 1, 1, 0), utc(2029, 1, 1, 0))
        );
    }

    #[test]
    fn a_zone_moves_the_boundary_to_local_midnight_across_daylight_saving() {
        let berlin = zone("Europe/Berlin").expect("a zone");
        let m = month(0, berlin);
        // March 2027: CET (+1) until the 28th, CEST (+2) after; April
        // starts at 22:00 UTC on the 31st of March.
        assert_eq!(
            m.period(utc(2027, 3, 15, 0)),
            (utc(2027, 2, 28, 23), utc(2027, 3, 31, 22))
        );
        assert_eq!(
            m.period(utc(2027, 3, 31, 22)),
            (utc(2027, 3, 31, 22), utc(2027, 4, 30, 22))
        );
        assert!(zone("Mars/Olympus").is_err());
        assert_eq!(zone("Europe/Berlin"), Ok(berlin), "numbered once");
    }

    #[test]
    fn a_period_counts_until_its_end_then_starts_empty() {
        let rate = Rate::calendar(3, month(0, 0)).expect("nonzero");
        let now = utc(2027, 2, 27, 0);
        let mut s = State::default();
        for _ in 0..3 {
            let st = step(s, rate, now, 1);
            assert!(st.fits);
            s = st.counted;
        }
        let full = step(s, rate, now, 1);
        assert!(!full.fits);
        assert_eq!(full.wait, Some(utc(2027, 3, 1, 0) - now));
        assert_eq!(full.free_at, utc(2027, 3, 1, 0));
        let next = step(s, rate, utc(2027, 3, 1, 0), 1);
        assert!(next.fits);
        assert_eq!(next.remaining, 3);
        assert_eq!(at(s, utc(2027, 3, 1, 0)), State::default());
    }
}
