//! Per-account overrides: one limit of a plan raised, lowered, lifted or
//! replaced, or a custom limit added, optionally until a given time.
//!
//! An override names the plan limit it changes. Changing the amount keeps the
//! limit's counter identity (class, unit, window, algorithm), so usage carries
//! over both ways, exactly as for a plan change. Expired overrides are simply
//! skipped: the plan's limit returns by itself.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Limit, LimitKind, Per, Plan, SlotRegistry, counter_identity, default_name};
use crate::engine::{Algorithm, MAX_AMOUNT, Nanos, Rate};

/// One override of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The name of the plan limit it changes, or of the custom limit it adds.
    pub limit: String,
    /// What it changes.
    pub change: Change,
    /// When it stops applying; `None`: until removed.
    pub expires_at: Option<Nanos>,
    /// For people.
    #[serde(default)]
    pub reason: String,
}

/// What an override does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new amount per the limit's own window.
    Amount(u64),
    /// No limit.
    Unlimited,
    /// A whole limit of its own (a custom enterprise limit, or a gated class
    /// opened for one account).
    Custom(Custom),
}

/// A custom limit's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custom {
    /// Units per window.
    pub amount: u64,
    /// The window.
    pub window: Nanos,
    /// Its class, or every request.
    pub class: Option<String>,
    /// What it counts.
    pub unit: String,
    /// How.
    pub algorithm: Algorithm,
    /// Who.
    pub per: Per,
}

/// Why an override cannot apply to a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// The plan has no limit of that name and the override defines none.
    #[error(
        "plan {plan:?} has no limit named {limit:?} (it has: {known}); give rate to add a custom one"
    )]
    UnknownLimit {
        /// The plan.
        plan: String,
        /// The name asked for.
        limit: String,
        /// The names it has.
        known: String,
    },
    /// An amount for an entry that has no rate (a deny or unlimited entry).
    #[error("{limit:?} has no rate to change; give rate to replace it")]
    NoRate {
        /// The entry.
        limit: String,
    },
    /// A class the configuration does not have.
    #[error("no class named {0:?}")]
    UnknownClass(String),
    /// Zero.
    #[error("amount must be at least 1 (use unlimited, or deny in the plan)")]
    ZeroAmount,
    /// More than the engine counts ([`MAX_AMOUNT`]), or, on a limit with a
    /// burst, more than its ceiling's ring counts.
    #[error("amount {amount} is more than {limit:?} can count, {max}")]
    TooLarge {
        /// The entry.
        limit: String,
        /// The amount asked for.
        amount: u64,
        /// The most it takes.
        max: u64,
    },
}

// === impl Override ===

impl Override {
    /// Whether it applies at `now`.
    pub fn active(&self, now: Nanos) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// `plan` with the overrides active at `now` applied, and when the result
/// stops being right (the earliest expiry), if ever.
pub fn apply(
    plan: &Plan,
    overrides: &[Override],
    now: Nanos,
    class_names: &[Arc<str>],
    slots: &SlotRegistry,
) -> Result<(Plan, Option<Nanos>), OverrideError> {
    let mut limits = plan.limits.clone();
    let mut valid_until: Option<Nanos> = None;
    for o in overrides.iter().filter(|o| o.active(now)) {
        if let Some(t) = o.expires_at {
            valid_until = Some(valid_until.map_or(t, |v| v.min(t)));
        }
        let found = limits.iter().position(|l| *l.name == *o.limit);
        let changed = match (&o.change, found) {
            (Change::Custom(c), _) => custom(&o.limit, c, class_names, slots, &plan.thresholds)?,
            (Change::Amount(0), _) => return Err(OverrideError::ZeroAmount),
            (Change::Amount(n), Some(i)) => with_amount(&limits[i], *n)?,
            (Change::Unlimited, Some(i)) => Limit {
                kind: LimitKind::Unlimited,
                ..(*limits[i]).clone()
            },
            (_, None) => {
                return Err(OverrideError::UnknownLimit {
                    plan: plan.name.to_string(),
                    limit: o.limit.clone(),
                    known: limits
                        .iter()
                        .map(|l| l.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        match found {
            Some(i) => limits[i] = Arc::new(changed),
            None => limits.push(Arc::new(changed)),
        }
    }
    let mut overridden = Plan::new(
        &plan.name,
        plan.description.clone(),
        plan.extends.clone(),
        limits,
        class_names,
        plan.thresholds.clone(),
    );
    overridden.reservation_ttl = plan.reservation_ttl;
    Ok((overridden, valid_until))
}

fn with_amount(limit: &Limit, amount: u64) -> Result<Limit, OverrideError> {
    let too_large = |max: u64| OverrideError::TooLarge {
        limit: limit.name.to_string(),
        amount,
        max,
    };
    if amount > MAX_AMOUNT {
        return Err(too_large(MAX_AMOUNT));
    }
    let LimitKind::Counted {
        rate,
        algorithm,
        slot,
        burst,
    } = &limit.kind
    else {
        return Err(OverrideError::NoRate {
            limit: limit.name.to_string(),
        });
    };
    // The same size (a calendar's too), another amount.
    let scaled = |n: u64| rate.with_amount(n).expect("a nonzero amount");
    // A burst ceiling keeps its share of the rate; its ring counts in 32
    // bits, so an amount past that cannot keep a burst.
    let ring_max = u64::from(u32::MAX);
    if burst.is_some() && amount > ring_max {
        return Err(too_large(ring_max));
    }
    let burst = burst.map(|(cap, s)| {
        let ratio = u128::from(cap.amount()) * u128::from(amount) / u128::from(rate.amount());
        let cap = u64::try_from(ratio)
            .unwrap_or(u64::MAX)
            .clamp(amount, ring_max);
        (scaled(cap), s)
    });
    Ok(Limit {
        kind: LimitKind::Counted {
            rate: scaled(amount),
            algorithm: *algorithm,
            slot: *slot,
            burst,
        },
        ..limit.clone()
    })
}

fn custom(
    name: &str,
    c: &Custom,
    class_names: &[Arc<str>],
    slots: &SlotRegistry,
    thresholds: &super::events::Thresholds,
) -> Result<Limit, OverrideError> {
    let class = match &c.class {
        None => None,
        Some(name) => Some(
            class_names
                .iter()
                .find(|n| ***n == **name)
                .cloned()
                .ok_or_else(|| OverrideError::UnknownClass(name.clone()))?,
        ),
    };
    if c.amount > MAX_AMOUNT {
        return Err(OverrideError::TooLarge {
            limit: name.to_owned(),
            amount: c.amount,
            max: MAX_AMOUNT,
        });
    }
    let rate = Rate::new(c.amount, c.window).ok_or(OverrideError::ZeroAmount)?;
    let identity = counter_identity(c.per, c.class.as_deref(), &c.unit, c.window, c.algorithm);
    let name = if name.is_empty() {
        default_name(c.class.as_deref(), &c.unit, Some(c.window), c.per)
    } else {
        name.to_owned()
    };
    Ok(Limit {
        name: name.into(),
        class,
        unit: c.unit.as_str().into(),
        per: c.per,
        window: c.window,
        kind: LimitKind::Counted {
            rate,
            algorithm: c.algorithm,
            slot: slots.intern_counter(&identity, c.algorithm, c.window),
            burst: None,
        },
        max_cost: None,
        thresholds: thresholds.clone(),
        reservation_ttl: None,
        shadow: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn catalog() -> crate::plans::Catalog {
        let yaml = "classes: { search: { match: [\"/search\"] } }\n\
                    plans: { free: { limits: [ { rate: 30/minute }, { class: search, deny: no } ] } }\n";
        crate::config::parse("t.yaml", yaml, &SlotRegistry::default()).expect("valid")
    }

    fn amount(plan: &Plan, name: &str) -> Option<u64> {
        plan.limits
            .iter()
            .find(|l| &*l.name == name)
            .and_then(|l| match &l.kind {
                LimitKind::Counted { rate, .. } => Some(rate.amount()),
                _ => None,
            })
    }

    #[test]
    fn raises_until_expiry() {
        let c = catalog();
        let raise = Override {
            limit: "requests/minute".into(),
            change: Change::Amount(300),
            expires_at: Some(100 * SEC),
            reason: "backfill".into(),
        };
        let slots = SlotRegistry::default();
        let (p, until) = apply(
            &c.default_plan,
            std::slice::from_ref(&raise),
            10 * SEC,
            &c.class_names,
            &slots,
        )
        .expect("applies");
        assert_eq!(amount(&p, "requests/minute"), Some(300));
        assert_eq!(until, Some(100 * SEC));
        let (p, until) =
            apply(&c.default_plan, &[raise], 100 * SEC, &c.class_names, &slots).expect("applies");
        assert_eq!(amount(&p, "requests/minute"), Some(30));
        assert_eq!(until, None);
    }

    #[test]
    fn opens_a_gated_class_with_a_custom_limit() {
        let c = catalog();
        let open = Override {
            limit: "search:deny".into(),
            change: Change::Custom(Custom {
                amount: 10,
                window: 60 * SEC,
                class: Some("search".into()),
                unit: "requests".into(),
                algorithm: Algorithm::FixedWindow,
                per: Per::Subject,
            }),
            expires_at: None,
            reason: String::new(),
        };
        let (p, _) = apply(
            &c.default_plan,
            &[open],
            0,
            &c.class_names,
            &SlotRegistry::default(),
        )
        .expect("applies");
        let route = p.route(Some(0));
        assert!(route.deny.is_none());
        assert_eq!(route.limits.len(), 2);
    }

    #[test]
    fn refuses_amounts_past_what_the_limit_counts() {
        let yaml = "plans: { free: { limits: [ { rate: 30/minute, burst: 10 } ] } }\n";
        let slots = SlotRegistry::default();
        let c = crate::config::parse("t.yaml", yaml, &slots).expect("valid");
        let set = |n: u64| Override {
            limit: "requests/minute".into(),
            change: Change::Amount(n),
            expires_at: None,
            reason: String::new(),
        };
        let apply = |n| apply(&c.default_plan, &[set(n)], 0, &c.class_names, &slots);
        // Past the burst ring's 32 bits: refused, not a panic in clamp.
        assert!(matches!(
            apply(5_000_000_000),
            Err(OverrideError::TooLarge { max, .. }) if max == u64::from(u32::MAX)
        ));
        assert!(matches!(
            apply(u64::MAX),
            Err(OverrideError::TooLarge {
                max: MAX_AMOUNT,
                ..
            })
        ));
        assert!(apply(4_000_000_000).is_ok());
    }

    #[test]
    fn names_the_limits_a_plan_has() {
        let c = catalog();
        let bad = Override {
            limit: "requests/hour".into(),
            change: Change::Amount(5),
            expires_at: None,
            reason: String::new(),
        };
        let err = apply(
            &c.default_plan,
            &[bad],
            0,
            &c.class_names,
            &SlotRegistry::default(),
        )
        .expect_err("unknown");
        assert!(err.to_string().contains("requests/minute"), "{err}");
    }
}
