//! Quota insight: who is being limited, who is about to be, and what each
//! account used.
//!
//! [`Insight`] consumes every decision from the sink: it feeds the top
//! subjects sketch ([`top`], behind `Admin.TopSubjects`), looks for
//! threshold crossings ([`events`], behind `Admin.WatchEvents` and the
//! webhooks) and adds to the usage rollups ([`usage`], behind
//! `Admin.ExportUsage`). Each costs a few hundred nanoseconds a decision and
//! never waits.

pub mod events;
pub mod rollups;
pub mod top;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Mode, Nanos};
use crate::limiter::route::cost_of;
use crate::limiter::{Decision, Limiter, Request, Verdict, account_of};
use crate::sink::{Consumer, Decided, What};

/// The top subjects and the threshold events of one server.
#[derive(Debug)]
pub struct Insight {
    /// The heavy hitters, by refusals and by consumption; `None` when off.
    pub top: Option<top::TopSubjects>,
    /// Threshold events and their delivery.
    pub events: events::Events,
    /// What each account and subject used, per hour and day.
    pub usage: rollups::Rollups,
    /// Decisions added to the usage since start, to save only what changed.
    added: AtomicU64,
    limiter: Arc<Limiter>,
}

impl Insight {
    /// Insight over `limiter`'s decisions (its clock), with a top-subjects
    /// sketch of `capacity` counters per slice (none when 0), and usage
    /// rollups kept for `retention` (none when `None`).
    pub fn new(
        limiter: Arc<Limiter>,
        capacity: usize,
        retention: Option<usage::Retention>,
    ) -> Self {
        let shared = limiter.counters().shared();
        let usage = match (retention, shared) {
            (None, _) => rollups::Rollups::off(),
            (Some(r), Some(s)) => rollups::Rollups::shared(r, s.store.clone(), s.replica.clone()),
            (Some(r), None) => rollups::Rollups::local(r),
        };
        Self {
            top: (capacity > 0).then(|| top::TopSubjects::new(capacity)),
            events: events::Events::new(shared.map(|s| s.store.clone())),
            usage,
            added: AtomicU64::new(0),
            limiter,
        }
    }

    /// How many decisions the usage has taken since start: unchanged means
    /// nothing to save.
    pub fn usage_changes(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    /// The time decisions are made at.
    pub fn now(&self) -> crate::engine::Nanos {
        self.limiter.now()
    }
}

impl Consumer for Insight {
    fn decided(&self, d: &Decided<'_>) {
        let (request, decision) = match d.what {
            What::Plan { request, decision } => (request, decision),
            // A reservation's cost in the end: what its usage bills.
            What::Settled { settlement, excess } => {
                self.bill(settlement);
                // The excess counts as a Record would: it may cross a
                // threshold.
                if let Some((request, decision)) = excess {
                    let now = self.limiter.now();
                    self.events.decided(Mode::Record, request, decision, now);
                }
                return;
            }
            What::Rules { .. } => return,
        };
        // A check neither consumes nor refuses anything.
        if d.mode == Mode::Check {
            return;
        }
        let now = self.limiter.now();
        if let Some(top) = &self.top {
            observe(top, now, request, decision);
        }
        self.events.decided(d.mode, request, decision, now);
        // A reservation is billed when it is settled, at what it cost.
        if self.usage.is_on() && decision.reservation.is_none() {
            self.add_usage(d.mode, request, decision, now);
        }
    }
}

impl Insight {
    /// Bills a settled reservation: what it cost, per unit, as admitted.
    fn bill(&self, settlement: &crate::limiter::reservations::Settlement) {
        if !self.usage.is_on() {
            return;
        }
        let now = self.limiter.now();
        for (unit, &n) in settlement.actual.iter().filter(|(_, n)| **n > 0) {
            self.usage.add(
                now,
                &usage::Used {
                    account: &settlement.account,
                    subject: &settlement.subject,
                    unit,
                    admitted: n,
                    recorded: 0,
                    refused: 0,
                },
            );
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a decision to the usage: an admitted Consume's units, a Record's
    /// units, or a refused Consume (one, in the unit of the limit that
    /// refused).
    fn add_usage(&self, mode: Mode, request: &Request<'_>, decision: &Decision, now: Nanos) {
        let account = account_of(request.subject, request.account);
        let add = |unit: &str, n: u64, refused: u64| {
            let (admitted, recorded) = match mode {
                Mode::Record => (0, n),
                _ => (n, 0),
            };
            self.usage.add(
                now,
                &usage::Used {
                    account,
                    subject: request.subject,
                    unit,
                    admitted,
                    recorded,
                    refused,
                },
            );
        };
        // Admitted, counted or not (a store failing open admits without
        // counting): billed as admitted.
        if admitted(decision) {
            for (unit, &n) in request.cost {
                if n > 0 {
                    add(unit, n, 0);
                }
            }
            if !request.cost.contains_key(REQUESTS) {
                let n = cost_of(request.cost, REQUESTS, mode);
                if n > 0 {
                    add(REQUESTS, n, 0);
                }
            }
        } else {
            let unit = decision
                .limits
                .iter()
                .find(|l| l.denied)
                .map_or(REQUESTS, |l| &l.limit.unit);
            add(unit, 0, 1);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the request went through: counted, or admitted by a store that
/// failed open.
fn admitted(decision: &Decision) -> bool {
    decision.counted || decision.verdict == Verdict::Allowed
}

/// The unit counted when a request names no cost.
const REQUESTS: &str = "requests";

/// Feeds the sketch one decision: an admission or a refusal, and a shadow
/// limit's refusal of a request that went through as a refusal too (in the
/// refusals ranking only).
fn observe(top: &top::TopSubjects, now: Nanos, request: &Request<'_>, decision: &Decision) {
    let admitted = admitted(decision);
    let cost = match request.cost.values().sum::<u64>() {
        0 => 1,
        n => n,
    };
    let seen = top::Seen {
        subject: request.subject,
        account: account_of(request.subject, request.account),
        plan: &decision.plan,
        class: decision.class.as_deref(),
        admitted,
        cost: if admitted { cost } else { 0 },
        refused_by: decision
            .limits
            .iter()
            .find(|l| l.denied)
            .map(|l| &*l.limit.name),
    };
    top.observe(now, &seen);
    if let Some(shadow) = decision.limits.iter().find(|l| l.limit.shadow && l.denied)
        && admitted
    {
        let refused = top::Seen {
            admitted: false,
            cost: 0,
            refused_by: Some(&shadow.limit.name),
            ..seen
        };
        top.observe(now, &refused);
    }
}
