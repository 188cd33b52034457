//! Quota insight: who is being limited, and who is about to be.
//!
//! [`Insight`] consumes every decision from the sink: it feeds the top
//! subjects sketch ([`top`], behind `Admin.TopSubjects`) and looks for
//! threshold crossings ([`events`], behind `Admin.WatchEvents` and the
//! webhooks). Both cost a few hundred nanoseconds a decision and never wait.

pub mod events;
pub mod top;

use std::sync::Arc;

use crate::engine::{Mode, Nanos};
use crate::limiter::{Decision, Limiter, Request, account_of};
use crate::sink::{Consumer, Decided, What};

/// The top subjects and the threshold events of one server.
#[derive(Debug)]
pub struct Insight {
    /// The heavy hitters, by refusals and by consumption; `None` when off.
    pub top: Option<top::TopSubjects>,
    /// Threshold events and their delivery.
    pub events: events::Events,
    limiter: Arc<Limiter>,
}

impl Insight {
    /// Insight over `limiter`'s decisions (its clock), with a top-subjects
    /// sketch of `capacity` counters per slice (none when 0).
    pub fn new(limiter: Arc<Limiter>, capacity: usize) -> Self {
        let shared = limiter.counters().shared().map(|s| s.store.clone());
        Self {
            top: (capacity > 0).then(|| top::TopSubjects::new(capacity)),
            events: events::Events::new(shared),
            limiter,
        }
    }

    /// The time decisions are made at.
    pub fn now(&self) -> crate::engine::Nanos {
        self.limiter.now()
    }
}

impl Consumer for Insight {
    fn decided(&self, d: &Decided<'_>) {
        // A check neither consumes nor refuses anything.
        let What::Plan { request, decision } = d.what else {
            return;
        };
        if d.mode == Mode::Check {
            return;
        }
        let now = self.limiter.now();
        if let Some(top) = &self.top {
            observe(top, now, request, decision);
        }
        self.events.decided(d.mode, request, decision, now);
    }
}

/// Feeds the sketch one decision: an admission or a refusal, and a shadow
/// limit's refusal of a request that went through as a refusal too (in the
/// refusals ranking only).
fn observe(top: &top::TopSubjects, now: Nanos, request: &Request<'_>, decision: &Decision) {
    let cost = match request.cost.values().sum::<u64>() {
        0 => 1,
        n => n,
    };
    top.observe(
        now,
        &top::Seen {
            subject: request.subject,
            account: account_of(request.subject, request.account),
            plan: &decision.plan,
            class: decision.class.as_deref(),
            admitted: decision.counted,
            cost: if decision.counted { cost } else { 0 },
            refused_by: decision
                .limits
                .iter()
                .find(|l| l.denied)
                .map(|l| &*l.limit.name),
        },
    );
    if let Some(shadow) = decision.limits.iter().find(|l| l.limit.shadow && l.denied)
        && decision.counted
    {
        top.observe(
            now,
            &top::Seen {
                subject: request.subject,
                account: account_of(request.subject, request.account),
                plan: &decision.plan,
                class: decision.class.as_deref(),
                admitted: false,
                cost: 0,
                refused_by: Some(&shadow.limit.name),
            },
        );
    }
}
