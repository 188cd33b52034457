//! `extends` and `multiplier`: a plan's entries are its parent's, scaled,
//! with its own entries replacing the inherited ones they overlap.
//!
//! Resolution is depth first and memoized, so a chain is resolved once
//! however many plans extend it. A plan whose chain names a missing plan or
//! loops is reported once, at its `extends`, and left out.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::entry::{Entry, EntryKind};
use super::problems::Problems;
use crate::config::raw::RawPlan;
use crate::engine::MAX_AMOUNT;

/// Every plan's entries with inheritance applied, by plan name; plans with a
/// broken chain are missing.
pub(super) fn resolve_all(
    p: &mut Problems<'_>,
    raw: &BTreeMap<String, Spanned<RawPlan>>,
    own: &BTreeMap<&str, Vec<Entry>>,
) -> BTreeMap<String, Vec<Entry>> {
    let mut done = BTreeMap::new();
    for name in raw.keys() {
        resolve(p, name, raw, own, &mut done, &mut Vec::new());
    }
    done
}

/// Resolves `name`'s inheritance into `done`, depth first; `stack` holds the
/// plans being resolved, to find cycles.
fn resolve(
    p: &mut Problems<'_>,
    name: &str,
    raw: &BTreeMap<String, Spanned<RawPlan>>,
    own: &BTreeMap<&str, Vec<Entry>>,
    done: &mut BTreeMap<String, Vec<Entry>>,
    stack: &mut Vec<String>,
) -> Option<Vec<Entry>> {
    if let Some(entries) = done.get(name) {
        return Some(entries.clone());
    }
    let plan = &raw[name].value;
    let mut entries = match &plan.extends {
        None => Vec::new(),
        Some(parent) => {
            let field = format!("plans.{name}.extends");
            if !raw.contains_key(&parent.value) {
                p.push(
                    parent.referenced.line(),
                    &field,
                    format!("no plan named {:?}", parent.value),
                );
                return None;
            }
            let start = stack.iter().position(|s| s == &parent.value);
            if start.is_some() || parent.value == name {
                // The cycle only, from the plan it returns to: `a -> a`,
                // `a -> b -> a`.
                let cycle: Vec<&str> = stack[start.unwrap_or(stack.len())..]
                    .iter()
                    .map(String::as_str)
                    .chain([name, parent.value.as_str()])
                    .collect();
                let message = if parent.value == name {
                    format!("a plan cannot extend itself: {}", cycle.join(" -> "))
                } else {
                    format!("plans extend each other in a cycle: {}", cycle.join(" -> "))
                };
                p.push(parent.referenced.line(), &field, message);
                return None;
            }
            stack.push(name.to_owned());
            let inherited = resolve(p, &parent.value, raw, own, done, stack);
            stack.pop();
            let multiplier = plan.multiplier.as_ref().map_or(1.0, |m| m.value);
            let scaled: Vec<Entry> = inherited?
                .into_iter()
                .map(|e| scale(e, multiplier))
                .collect();
            if let Some(m) = &plan.multiplier
                && let Some(problem) = scaled.iter().find_map(|e| over_ceiling(name, e))
            {
                p.push(
                    m.referenced.line(),
                    &format!("plans.{name}.multiplier"),
                    problem,
                );
                return None;
            }
            scaled
        }
    };
    for entry in &own[name] {
        entries.retain(|inherited| !replaces(entry, inherited));
        entries.push(entry.clone());
    }
    done.insert(name.to_owned(), entries.clone());
    Some(entries)
}

/// Whether `own` replaces the inherited `inherited`.
fn replaces(own: &Entry, inherited: &Entry) -> bool {
    // A shadow limit is tried beside the enforced one, never instead.
    if own.class != inherited.class || own.shadow != inherited.shadow {
        return false;
    }
    match (&own.kind, &inherited.kind) {
        // A class taken out of the plan takes every inherited entry of it along.
        (EntryKind::Deny(_), _) => true,
        // Anything that puts the class in the plan lifts an inherited deny.
        (_, EntryKind::Deny(_)) => true,
        (EntryKind::Counted { window, .. }, EntryKind::Counted { window: w, .. }) => {
            own.unit == inherited.unit && own.per == inherited.per && window == w
        }
        (EntryKind::Counted { window, .. }, EntryKind::Unlimited { window: w }) => {
            own.unit == inherited.unit && w.is_none_or(|w| w == *window)
        }
        (EntryKind::Unlimited { window }, EntryKind::Counted { window: w, .. }) => {
            own.unit == inherited.unit && window.is_none_or(|window| window == *w)
        }
        (EntryKind::Unlimited { window }, EntryKind::Unlimited { window: w }) => {
            own.unit == inherited.unit && window == w
        }
    }
}

/// Why a scaled entry of plan `name` is more than can be counted, if it is:
/// an amount past [`MAX_AMOUNT`], or a burst ceiling past what its ring counts.
fn over_ceiling(name: &str, entry: &Entry) -> Option<String> {
    let EntryKind::Counted { amount, burst, .. } = entry.kind else {
        return None;
    };
    if amount > MAX_AMOUNT {
        return Some(format!(
            "scales an inherited amount of plan {name:?} to {amount}, more than the largest amount, {MAX_AMOUNT} (2^53 - 1)"
        ));
    }
    if burst.is_some_and(|b| !b.fits(amount)) {
        return Some(format!(
            "scales an inherited amount of plan {name:?} to {amount}, whose burst ceiling is more than {} units a window",
            u32::MAX
        ));
    }
    None
}

/// An inherited entry under the child's `multiplier`: the amount scales (and
/// stays at least 1), and so does a burst given in units.
fn scale(mut entry: Entry, multiplier: f64) -> Entry {
    if let EntryKind::Counted { amount, burst, .. } = &mut entry.kind {
        // `as` saturates: a product past u64::MAX reads as u64::MAX, which
        // the caller refuses as over the maximum.
        *amount = ((*amount as f64) * multiplier).round().max(1.0) as u64;
        *burst = burst.map(|b| b.scaled(multiplier));
        // A generated name names the old amount nowhere, so it stays right;
        // a configured one is kept as written.
    }
    entry
}
