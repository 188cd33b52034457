//! From limits to engine items and back: a burst limit is two items (the
//! published rate and its ceiling) whose statuses merge into one, and a
//! request's cost is read per unit. Shared by the plans' decisions and by
//! Envoy's rule files.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::decision::LimitStatus;
use crate::engine::{Algorithm, CounterKey, Item, ItemStatus, Mode, Nanos, Outcome, clock::SECOND};
use crate::plans::{CONCURRENT, Counted, Limit, Per};

/// Items of one decision; four inline covers nearly every plan.
pub type Items<'a> = SmallVec<[Item<'a>; 4]>;

/// Adds the engine items of `counted` on `scope` at `cost`: one, or two
/// with a burst ceiling (a strict sliding window at the larger rate).
pub fn push_items<'a>(items: &mut Items<'a>, counted: Counted, scope: &'a str, cost: u64) {
    items.push(Item {
        key: CounterKey {
            scope,
            slot: counted.slot,
        },
        algorithm: counted.algorithm,
        rate: counted.rate,
        cost,
    });
    if let Some((cap, slot)) = counted.burst {
        items.push(Item {
            key: CounterKey { scope, slot },
            algorithm: Algorithm::SlidingRing,
            rate: cap,
            cost,
        });
    }
}

/// The status of `counted` from the engine's statuses in item order (as
/// [`push_items`] laid them out): its own, merged with its ceiling's.
pub fn merged_status<'o>(
    counted: Counted,
    statuses: &mut impl Iterator<Item = &'o ItemStatus>,
) -> ItemStatus {
    let own = *statuses.next().expect("one status per item");
    match counted.burst {
        Some(_) => own.under(*statuses.next().expect("one status per burst item")),
        None => own,
    }
}

/// The engine items of a plan's `limits` for `subject` of `account`, in order.
pub fn items<'a>(
    limits: &'a [Arc<Limit>],
    subject: &'a str,
    account: &'a str,
    cost: impl Fn(&Limit) -> u64,
) -> Items<'a> {
    let mut items = Items::new();
    for limit in limits {
        if let Some(counted) = limit.counted() {
            let scope = match limit.per {
                Per::Subject => subject,
                Per::Account => account,
            };
            push_items(&mut items, counted, scope, cost(limit));
        }
    }
    items
}

/// One status per limit from the engine's outcome over [`items`], most
/// constraining first, and the first limit the cost can never fit, if any.
pub fn statuses<'l>(
    limits: &'l [Arc<Limit>],
    outcome: &Outcome,
    now: Nanos,
) -> (Vec<LimitStatus>, Option<&'l Limit>) {
    let mut from_engine = outcome.items.iter();
    let mut too_large = None;
    let mut out = Vec::with_capacity(limits.len());
    for limit in limits {
        let status = match limit.counted() {
            Some(counted) => {
                let s = merged_status(counted, &mut from_engine);
                // A shadow limit never refuses, not even a cost too large.
                if s.too_large && too_large.is_none() && !limit.shadow {
                    too_large = Some(&**limit);
                }
                let denied = !s.fits;
                let (reset_at, wait) = if limit.concurrent() {
                    // A slot frees when a request in flight settles, which
                    // no counter knows: a second is the hint.
                    let wait = if denied && !s.too_large { SECOND } else { 0 };
                    (now + wait, wait)
                } else if denied && !s.too_large {
                    (now + s.wait, s.wait)
                } else {
                    (s.free_at, if denied { s.wait } else { 0 })
                };
                LimitStatus {
                    limit: limit.clone(),
                    remaining: s.remaining,
                    reset_at,
                    denied,
                    wait,
                }
            }
            None => LimitStatus {
                limit: limit.clone(),
                remaining: 0,
                reset_at: 0,
                denied: false,
                wait: 0,
            },
        };
        out.push(status);
    }
    out.sort_by(LimitStatus::most_constraining);
    (out, too_large)
}

/// The cost of a request in `unit`: as given; otherwise one request for
/// checks and consumption, and for a record with no cost at all; one slot
/// in flight ([`CONCURRENT`]) for checks and consumption (a record holds
/// none: nothing would give it back).
pub fn cost_of(cost: &HashMap<String, u64>, unit: &str, mode: Mode) -> u64 {
    match cost.get(unit) {
        Some(&c) => c,
        None if unit == "requests" && (mode != Mode::Record || cost.is_empty()) => 1,
        None if unit == CONCURRENT && mode != Mode::Record => 1,
        None => 0,
    }
}
