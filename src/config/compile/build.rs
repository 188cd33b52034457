//! Resolved entries → the immutable [`Plan`]s and [`Limit`]s the hot path
//! reads. Nothing here can fail: every entry was checked before, so this is
//! where counter slots are interned and a burst becomes its ceiling.

use std::sync::Arc;

use super::entry::{Entry, EntryKind};
use crate::config::burst::Extra;
use crate::config::raw::RawPlan;
use crate::engine::algorithm::calendar::Calendar;
use crate::engine::{Algorithm, Nanos, Rate};
use crate::plans::events::Thresholds;
use crate::plans::{
    IN_FLIGHT, Limit, LimitKind, Plan, SlotRegistry, counter_identity, default_name,
};

/// The plan `name` with its resolved `entries`.
pub(super) fn plan(
    name: &str,
    raw: &RawPlan,
    entries: &[Entry],
    class_names: &[Arc<str>],
    thresholds: Thresholds,
    slots: &SlotRegistry,
) -> Plan {
    let limits: Vec<Arc<Limit>> = entries
        .iter()
        .map(|e| {
            // A shadow plan's limits count apart from the same limits of
            // enforced plans, as a shadow limit does.
            let mut e = e.clone();
            e.shadow |= raw.shadow.as_ref().is_some_and(|s| s.value);
            Arc::new(limit(&e, class_names, &thresholds, slots))
        })
        .collect();
    Plan::new(
        name,
        raw.description.clone(),
        raw.extends.as_ref().map(|e| e.value.clone()),
        limits,
        class_names,
        thresholds,
    )
}

fn limit(
    e: &Entry,
    class_names: &[Arc<str>],
    thresholds: &Thresholds,
    slots: &SlotRegistry,
) -> Limit {
    // Share the catalog's class name rather than allocate one per limit.
    let class = e.class.as_ref().map(|c| {
        class_names
            .iter()
            .find(|n| &***n == c)
            .cloned()
            .unwrap_or_else(|| c.as_str().into())
    });
    let (window, kind) = match &e.kind {
        EntryKind::Deny(m) => (0, LimitKind::Deny(m.as_str().into())),
        EntryKind::Unlimited { window } => (window.unwrap_or(0), LimitKind::Unlimited),
        EntryKind::Counted {
            amount,
            window,
            algorithm,
            burst,
            calendar,
        } => (
            // In flight has no window to show (its counter's never ends).
            if *window == IN_FLIGHT { 0 } else { *window },
            counted(e, *amount, (*window, *calendar), *algorithm, *burst, slots),
        ),
    };
    Limit {
        name: e
            .name
            .clone()
            .unwrap_or_else(|| generated_name(e, window))
            .into(),
        class,
        unit: e.unit.as_str().into(),
        per: e.per,
        window,
        kind,
        max_cost: e.max_cost,
        thresholds: e.thresholds.clone().unwrap_or_else(|| thresholds.clone()),
        reservation_ttl: e.reservation_ttl,
        shadow: e.shadow,
    }
}

/// A counted limit's rate and counter slot, and its burst ceiling's.
fn counted(
    e: &Entry,
    amount: u64,
    (window, calendar): (Nanos, Option<Calendar>),
    algorithm: Algorithm,
    burst: Option<Extra>,
    slots: &SlotRegistry,
) -> LimitKind {
    let mut identity = counter_identity(e.per, e.class.as_deref(), &e.unit, window, algorithm);
    if e.shadow {
        // Tried beside the enforced limit of the same window: its own count.
        identity.push_str("|shadow");
    }
    let rate = match calendar {
        Some(c) => Rate::calendar(amount, c),
        None => Rate::new(amount, window),
    }
    .expect("amount and window checked nonzero");
    let burst = burst.map(|b| {
        let cap = Rate::new(b.ceiling(amount), window).expect("a ceiling is at least its amount");
        let slot =
            slots.intern_counter(&format!("{identity}|burst"), Algorithm::SlidingRing, window);
        (cap, slot)
    });
    LimitKind::Counted {
        rate,
        algorithm,
        slot: slots.intern_counter(&identity, algorithm, window),
        burst,
    }
}

/// The name of a limit configured without one: from its class, unit, window
/// and per, so it reads the same in every answer and header.
fn generated_name(e: &Entry, window: Nanos) -> String {
    let name = generated(e, window);
    if e.shadow {
        format!("shadow:{name}")
    } else {
        name
    }
}

fn generated(e: &Entry, window: Nanos) -> String {
    match &e.kind {
        EntryKind::Deny(_) => {
            let class_part = e
                .class
                .as_deref()
                .map(|c| format!("{c}:"))
                .unwrap_or_default();
            format!("{class_part}deny")
        }
        EntryKind::Unlimited { window: None } => {
            default_name(e.class.as_deref(), &e.unit, None, e.per)
        }
        EntryKind::Counted { window, .. } if *window == IN_FLIGHT => {
            default_name(e.class.as_deref(), &e.unit, None, e.per)
        }
        _ => default_name(e.class.as_deref(), &e.unit, Some(window), e.per),
    }
}
