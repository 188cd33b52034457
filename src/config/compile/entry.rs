//! One plan's own entries (`plans.<plan>.limits[i]`), each checked on its own
//! before inheritance: a counted limit, an `unlimited: true` entry or a deny.
//!
//! Every field of an entry is checked even after one fails, so all of its
//! problems are reported; an entry with any problem is left out of its plan,
//! so inheritance and building see only sound entries.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use serde_saphyr::Spanned;

use super::problems::Problems;
use crate::config::burst::Extra;
use crate::config::rate::{Span, parse_rate, parse_window};
use crate::config::raw::{Burst, RawClass, RawLimit, RawPlan};
use crate::engine::algorithm::calendar::Calendar;
use crate::engine::{Algorithm, Nanos};
use crate::plans::events::Thresholds;
use crate::plans::{CONCURRENT, IN_FLIGHT, Per};

/// A plan entry before inheritance is applied.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// `name:` as written; generated when the limit is built otherwise.
    pub(super) name: Option<String>,
    pub(super) class: Option<String>,
    pub(super) unit: String,
    pub(super) per: Per,
    pub(super) kind: EntryKind,
    pub(super) max_cost: Option<u64>,
    /// `thresholds:` of its own, if any.
    pub(super) thresholds: Option<Thresholds>,
    /// `shadow: true`.
    pub(super) shadow: bool,
    /// `reservation_ttl:`.
    pub(super) reservation_ttl: Option<Nanos>,
}

/// What an entry does to its class and unit.
#[derive(Debug, Clone)]
pub(super) enum EntryKind {
    /// Takes the class out of the plan; the message says why.
    Deny(String),
    /// Lifts the unit's limit of one window, or of every window when `None`.
    Unlimited { window: Option<Nanos> },
    /// Counts the unit.
    Counted {
        amount: u64,
        /// The window (a calendar's: its usual length).
        window: Nanos,
        algorithm: Algorithm,
        burst: Option<Extra>,
        /// The calendar's periods, for a `week`, `month` or `year`.
        calendar: Option<Calendar>,
    },
}

/// The plan's own entries, each checked on its own; two with the same
/// identity would count one counter twice, so the second is refused.
pub(super) fn plan_entries(
    p: &mut Problems<'_>,
    plan: &str,
    raw: &RawPlan,
    classes: &BTreeMap<String, RawClass>,
    ttl: crate::plans::ReservationTtl,
    zone: u16,
) -> Vec<Entry> {
    check_multiplier(p, plan, raw);
    let mut entries: Vec<Entry> = Vec::new();
    for (i, limit) in raw.limits.iter().enumerate() {
        let field = format!("plans.{plan}.limits[{i}]");
        let Some(entry) = entry(p, &field, limit, classes, (ttl, zone)) else {
            continue;
        };
        if let Some(j) = entries.iter().position(|e| e.same_identity(&entry)) {
            p.push(
                limit.referenced.line(),
                &field,
                format!("same class, unit, window and per as limits[{j}]"),
            );
            continue;
        }
        entries.push(entry);
    }
    entries
}

/// `multiplier:` scales what `extends` brings, so it needs both a sensible
/// value and a parent.
fn check_multiplier(p: &mut Problems<'_>, plan: &str, raw: &RawPlan) {
    let Some(m) = &raw.multiplier else { return };
    let field = format!("plans.{plan}.multiplier");
    if !(m.value.is_finite() && m.value > 0.0) {
        p.push(
            m.referenced.line(),
            &field,
            format!("must be a positive number, got {}", m.value),
        );
    }
    if raw.extends.is_none() {
        p.push(
            m.referenced.line(),
            &field,
            "scales inherited limits, so it needs extends".into(),
        );
    }
}

/// One entry at `field`; `None` when it has any problem.
fn entry(
    p: &mut Problems<'_>,
    field: &str,
    limit: &Spanned<RawLimit>,
    classes: &BTreeMap<String, RawClass>,
    (ttl, zone): (crate::plans::ReservationTtl, u16),
) -> Option<Entry> {
    let line = limit.referenced.line();
    let raw = &limit.value;
    let before = p.list.len();
    let class = class(p, field, raw, classes);
    let unit = unit(p, field, raw);
    let per = parsed(p, field, "per", raw.per.as_ref()).unwrap_or(Per::Subject);
    let algorithm = parsed(p, field, "algorithm", raw.algorithm.as_ref());
    let kind = kind(p, field, line, raw, class.is_some(), (algorithm, zone))?;
    check_fields_fit(p, field, line, raw, &kind);
    let max_cost = max_cost(p, field, raw);
    let thresholds = raw
        .thresholds
        .as_ref()
        .and_then(|t| super::events::thresholds(p, &format!("{field}.thresholds"), t));
    let reservation_ttl = super::reservations::limit(p, field, raw.reservation_ttl.as_ref(), ttl);
    (p.list.len() == before).then(|| Entry {
        name: raw.name.as_ref().map(|n| n.value.clone()),
        class,
        unit,
        per,
        kind,
        max_cost,
        thresholds,
        shadow: raw.shadow.as_ref().is_some_and(|s| s.value),
        reservation_ttl,
    })
}

/// `class:`, which must name a class of the file.
fn class(
    p: &mut Problems<'_>,
    field: &str,
    raw: &RawLimit,
    classes: &BTreeMap<String, RawClass>,
) -> Option<String> {
    let c = raw.class.as_ref()?;
    if !classes.contains_key(&c.value) {
        p.push(
            c.referenced.line(),
            &format!("{field}.class"),
            format!("no class named {:?}", c.value),
        );
    }
    Some(c.value.clone())
}

/// `unit:`, `requests` when absent.
fn unit(p: &mut Problems<'_>, field: &str, raw: &RawLimit) -> String {
    match &raw.unit {
        None => "requests".to_owned(),
        Some(u) => {
            p.check_name(u.referenced.line(), &format!("{field}.unit"), &u.value);
            u.value.clone()
        }
    }
}

/// A field read by its type's own parser (`Per`, `Algorithm`), so the file
/// and requests accept the same names; `None` when absent or refused.
fn parsed<T>(
    p: &mut Problems<'_>,
    field: &str,
    key: &str,
    raw: Option<&Spanned<String>>,
) -> Option<T>
where
    T: FromStr,
    T::Err: Display,
{
    let raw = raw?;
    match raw.value.parse() {
        Ok(value) => Some(value),
        Err(e) => {
            p.push(
                raw.referenced.line(),
                &format!("{field}.{key}"),
                e.to_string(),
            );
            None
        }
    }
}

/// Which one of `rate`, `unlimited: true` and `deny` the entry is; `None`
/// when it is none or several, or its rate cannot be read.
fn kind(
    p: &mut Problems<'_>,
    field: &str,
    line: u64,
    raw: &RawLimit,
    has_class: bool,
    (algorithm, zone): (Option<Algorithm>, u16),
) -> Option<EntryKind> {
    let unlimited = raw.unlimited.as_ref().is_some_and(|u| u.value);
    let concurrent = raw.unit.as_ref().is_some_and(|u| u.value == CONCURRENT);
    if concurrent || raw.amount.is_some() {
        return concurrent_kind(p, field, line, raw, concurrent, algorithm);
    }
    match (&raw.deny, unlimited, &raw.rate) {
        (Some(deny), false, None) => Some(deny_kind(p, field, deny, has_class)),
        (None, true, None) => Some(EntryKind::Unlimited {
            window: unlimited_window(p, field, raw),
        }),
        (None, false, Some(rate)) => {
            counted_kind(p, field, rate, raw.burst.as_ref(), (algorithm, zone))
        }
        (None, false, None) => {
            p.push(
                line,
                field,
                "needs one of rate, unlimited: true or deny".into(),
            );
            None
        }
        _ => {
            p.push(
                line,
                field,
                "rate, unlimited and deny exclude each other".into(),
            );
            None
        }
    }
}

/// `unit: concurrent` with its `amount:`: requests in flight, counted on
/// a counter that never resets ([`IN_FLIGHT`]) and given back when each
/// settles, is released or expires. It has no window, so no rate, no
/// algorithm and no burst.
fn concurrent_kind(
    p: &mut Problems<'_>,
    field: &str,
    line: u64,
    raw: &RawLimit,
    concurrent: bool,
    algorithm: Option<Algorithm>,
) -> Option<EntryKind> {
    let before = p.list.len();
    let Some(amount) = &raw.amount else {
        p.push(
            line,
            field,
            "unit: concurrent needs amount: the most requests in flight at once".into(),
        );
        return None;
    };
    let amount_field = format!("{field}.amount");
    if !concurrent {
        p.push(
            amount.referenced.line(),
            &amount_field,
            "only for unit: concurrent; a windowed limit's amount is in its rate".into(),
        );
    }
    if amount.value == 0 {
        p.push(
            amount.referenced.line(),
            &amount_field,
            "must be at least 1 (use deny to refuse a class)".into(),
        );
    }
    if let Err(e) = crate::config::rate::check_amount(amount.value) {
        p.push(amount.referenced.line(), &amount_field, e);
    }
    let windowless = "a concurrency limit counts requests in flight, not a window";
    if let Some(rate) = &raw.rate {
        p.push(
            rate.referenced.line(),
            &format!("{field}.rate"),
            format!("{windowless}: give amount, not rate"),
        );
    }
    if let (Some(a), Some(raw_a)) = (algorithm, &raw.algorithm) {
        p.push(
            raw_a.referenced.line(),
            &format!("{field}.algorithm"),
            format!("{windowless}: {} does not apply", a.as_str()),
        );
    }
    if let Some(b) = &raw.burst {
        p.push(
            b.referenced.line(),
            &format!("{field}.burst"),
            format!("{windowless}: it has no burst"),
        );
    }
    for (key, set) in [
        (
            "unlimited",
            raw.unlimited.as_ref().map(|u| u.referenced.line()),
        ),
        ("deny", raw.deny.as_ref().map(|d| d.referenced.line())),
        ("window", raw.window.as_ref().map(|w| w.referenced.line())),
        // Tried slots would be held with nothing to give them back.
        ("shadow", raw.shadow.as_ref().map(|s| s.referenced.line())),
    ] {
        if let Some(at) = set {
            p.push(
                at,
                &format!("{field}.{key}"),
                "not for a concurrency limit".into(),
            );
        }
    }
    (p.list.len() == before).then_some(EntryKind::Counted {
        amount: amount.value,
        window: IN_FLIGHT,
        algorithm: Algorithm::FixedWindow,
        burst: None,
        calendar: None,
    })
}

/// `deny:`; an empty message becomes `not in plan`.
fn deny_kind(
    p: &mut Problems<'_>,
    field: &str,
    deny: &Spanned<String>,
    has_class: bool,
) -> EntryKind {
    if !has_class {
        p.push(
            deny.referenced.line(),
            &format!("{field}.deny"),
            "needs a class: deny takes a class out of the plan".into(),
        );
    }
    let message = if deny.value.trim().is_empty() {
        "not in plan".to_owned()
    } else {
        deny.value.clone()
    };
    EntryKind::Deny(message)
}

/// The `window:` an unlimited entry lifts; every window when absent.
fn unlimited_window(p: &mut Problems<'_>, field: &str, raw: &RawLimit) -> Option<Nanos> {
    let w = raw.window.as_ref()?;
    match parse_window(&w.value) {
        Ok(n) => Some(n),
        Err(e) => {
            p.push(w.referenced.line(), &format!("{field}.window"), e);
            None
        }
    }
}

/// `rate:` with its `algorithm:` and `burst:`. This is where a burst is
/// checked, once; it becomes a ceiling when the limit is built.
fn counted_kind(
    p: &mut Problems<'_>,
    field: &str,
    rate: &Spanned<String>,
    burst: Option<&Spanned<Burst>>,
    (algorithm, zone): (Option<Algorithm>, u16),
) -> Option<EntryKind> {
    let (amount, span) = match parse_rate(&rate.value) {
        Ok(parsed) => parsed,
        Err(e) => {
            p.push(rate.referenced.line(), &format!("{field}.rate"), e);
            return None;
        }
    };
    let extra = burst.and_then(|b| {
        let field = format!("{field}.burst");
        let extra = Extra::check(&b.value, amount)
            .map_err(|e| p.push(b.referenced.line(), &field, e))
            .ok();
        if algorithm == Some(Algorithm::FixedWindow) {
            p.push(
                b.referenced.line(),
                &field,
                "needs algorithm token_bucket or sliding_window".into(),
            );
        }
        extra
    });
    if let Span::Calendar(unit) = span {
        // A calendar's periods are fixed windows: a bucket or a sliding
        // window needs a duration.
        let why = format!(
            "a {} is a calendar window, counted as a fixed window; give a duration such as 30d",
            unit.as_str()
        );
        if let Some(a) = algorithm.filter(|a| *a != Algorithm::FixedWindow) {
            p.push(
                rate.referenced.line(),
                &format!("{field}.algorithm"),
                format!("{why} for {}", a.as_str()),
            );
            return None;
        }
        if let Some(b) = burst {
            p.push(
                b.referenced.line(),
                &format!("{field}.burst"),
                format!("{why} for a burst"),
            );
            return None;
        }
        return Some(EntryKind::Counted {
            amount,
            window: unit.nominal(),
            algorithm: Algorithm::Calendar,
            burst: None,
            calendar: Some(Calendar {
                unit,
                zone,
                anchor: 0,
            }),
        });
    }
    let Span::Every(window) = span else {
        return None;
    };
    // A burst is always a token bucket at the rate under a sliding window at
    // the burst ceiling (README, "Bursts").
    let algorithm = match (algorithm, burst) {
        (_, Some(_)) => Algorithm::TokenBucket,
        (Some(a), None) => a,
        (None, None) => Algorithm::FixedWindow,
    };
    Some(EntryKind::Counted {
        amount,
        window,
        algorithm,
        burst: extra,
        calendar: None,
    })
}

/// Fields that only some kinds of entry take.
fn check_fields_fit(
    p: &mut Problems<'_>,
    field: &str,
    line: u64,
    raw: &RawLimit,
    kind: &EntryKind,
) {
    if raw.window.is_some() && !matches!(kind, EntryKind::Unlimited { .. }) {
        p.push(
            line,
            &format!("{field}.window"),
            "only for unlimited entries; a limit's window is in its rate".into(),
        );
    }
    if !matches!(kind, EntryKind::Counted { .. })
        && (raw.burst.is_some() || raw.algorithm.is_some())
    {
        p.push(line, field, "algorithm and burst need a rate".into());
    }
    if matches!(kind, EntryKind::Deny(_)) && raw.max_cost.is_some() {
        p.push(
            line,
            field,
            "max_cost needs a rate or unlimited: true".into(),
        );
    }
}

/// `max_cost:`, the most one request may cost. 0 is refused: answers use it
/// for "no maximum".
fn max_cost(p: &mut Problems<'_>, field: &str, raw: &RawLimit) -> Option<u64> {
    let m = raw.max_cost.as_ref()?;
    if m.value == 0 {
        p.push(
            m.referenced.line(),
            &format!("{field}.max_cost"),
            "must be at least 1".into(),
        );
    }
    Some(m.value)
}

// === impl Entry ===

impl Entry {
    /// Whether `self` and `other` would count the same counter (or deny the
    /// same class) within one plan.
    fn same_identity(&self, other: &Self) -> bool {
        self.class == other.class
            && self.shadow == other.shadow
            && match (&self.kind, &other.kind) {
                (EntryKind::Deny(_), EntryKind::Deny(_)) => true,
                (EntryKind::Counted { window: wa, .. }, EntryKind::Counted { window: wb, .. }) => {
                    self.unit == other.unit && self.per == other.per && wa == wb
                }
                (EntryKind::Unlimited { window: wa }, EntryKind::Unlimited { window: wb }) => {
                    self.unit == other.unit && wa == wb
                }
                _ => false,
            }
    }
}
