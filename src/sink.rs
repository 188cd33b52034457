//! The decision sink: every door hands each finished decision here, once,
//! as one domain value ([`Decided`]), and every consumer sees it.
//!
//! The doors are unary gRPC, the `Decide` stream, `ConsumeBatch`, HTTP
//! `/v1`, forward auth, and Envoy's rule and plan domains ([`Door`]). The
//! consumers are the metrics ([`Metrics`]), the quota hub behind
//! `WatchQuota` ([`Hub`]) and, when on, the OpenTelemetry traces
//! ([`Traces`]: a span per decision, under the request's `traceparent`,
//! which the doors read only when a consumer wants it: [`Sink::parent`]); a
//! new one implements [`Consumer`] and is added in
//! one place, [`Sink::serving`] (or, from outside, the server's
//! `Options::consumers`, as the server adds its quota insight: the top
//! limited subjects and threshold events). A consumer that has nothing to do
//! returns at once: the hub with no watchers is one atomic load.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;

use crate::engine::Mode;
use crate::limiter::{Decision, Request, Verdict};
use crate::metrics::{DecisionLabels, Label, Metrics, RefusalLabels};
use crate::otel::{DecisionSpan, Parent, Traces};
use crate::watch::Hub;

/// Where a decision came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// `CheckLimit`, `Consume` or `Record` over gRPC.
    Unary,
    /// A message of a `Decide` stream.
    DecideStream,
    /// One request of a `ConsumeBatch` call.
    ConsumeBatch,
    /// `POST /v1/check`, `/v1/consume` or `/v1/record`.
    Http,
    /// `/v1/forward-auth`, for a gateway.
    ForwardAuth,
    /// Envoy's `ShouldRateLimit` in a domain of envoyproxy/ratelimit rules.
    EnvoyRules,
    /// One descriptor of Envoy's `ShouldRateLimit` in a plan domain.
    EnvoyPlans,
    /// A reservation that expired unsettled, settled at its estimate.
    Expiry,
}

/// One finished decision, as every consumer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// Where it came in.
    pub door: Door,
    /// What it did with the counters.
    pub mode: Mode,
    /// How long it took, from the request converted to the decision made.
    pub took: Duration,
    /// The trace the request belongs to ([`Parent::NONE`] unless a consumer
    /// wants it and the request sent one).
    pub parent: &'a Parent,
    /// What was asked and what was decided.
    pub what: What<'a>,
}

/// What was asked and what was decided.
#[derive(Debug, Clone, Copy)]
pub enum What<'a> {
    /// A decision under a plan.
    Plan {
        /// The request.
        request: &'a Request<'a>,
        /// The decision.
        decision: &'a Decision,
    },
    /// A reservation settled, released or expired: what it cost in the
    /// end (its estimate was counted when it was made).
    Settled {
        /// The settlement.
        settlement: &'a crate::limiter::reservations::Settlement,
        /// What a settle counted past the estimate, as a Record of the
        /// excess and the limits it was counted against (only those
        /// announcing thresholds); `None` when nothing was.
        excess: Option<(&'a Request<'a>, &'a Decision)>,
    },
    /// A call in a domain of envoyproxy/ratelimit rules (no plan, no
    /// subject: descriptors).
    Rules {
        /// The Envoy domain.
        domain: &'a str,
        /// Whether the call's overall answer was OVER_LIMIT.
        over_limit: bool,
    },
}

/// What sees every decision.
pub trait Consumer: Send + Sync + fmt::Debug {
    /// Called once per finished decision, on the decision's own task: return
    /// quickly, and hand anything slow to a task of its own.
    fn decided(&self, decided: &Decided<'_>);

    /// Itself, if it is the traces: they read [`Decided::parent`], which
    /// the doors look for only when there are traces.
    fn traces(&self) -> Option<&Traces> {
        None
    }
}

/// Hands each decision to every consumer.
#[derive(Clone)]
pub struct Sink {
    consumers: Arc<[Arc<dyn Consumer>]>,
    /// The consumer that is the traces, if one is.
    traces: Option<Arc<dyn Consumer>>,
}

// === impl Door ===

impl Door {
    /// Its name in logs and labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::DecideStream => "decide_stream",
            Self::ConsumeBatch => "consume_batch",
            Self::Http => "http",
            Self::ForwardAuth => "forward_auth",
            Self::EnvoyRules => "envoy_rules",
            Self::EnvoyPlans => "envoy_plans",
            Self::Expiry => "expiry",
        }
    }

    /// Whether it is Envoy's rate limit service.
    pub fn is_envoy(self) -> bool {
        matches!(self, Self::EnvoyRules | Self::EnvoyPlans)
    }
}

// === impl Sink ===

impl Sink {
    /// A sink handing every decision to `consumers`, in order.
    pub fn new(consumers: Vec<Arc<dyn Consumer>>) -> Self {
        let traces = consumers.iter().find(|c| c.traces().is_some()).cloned();
        Self {
            consumers: consumers.into(),
            traces,
        }
    }

    /// The trace a request with `headers` (HTTP headers, or gRPC metadata as
    /// headers) belongs to, sampled or not, when there are traces; else
    /// [`Parent::NONE`], without reading them.
    pub fn parent(&self, headers: &http::HeaderMap) -> Parent {
        match self.traces.as_ref().and_then(|c| c.traces()) {
            Some(traces) => traces.parent(headers),
            None => Parent::NONE,
        }
    }

    /// The trace of one more decision of a call traced as `call` (a message
    /// of a stream): see [`Traces::again`].
    pub fn again(&self, call: &Parent) -> Parent {
        match self.traces.as_ref().and_then(|c| c.traces()) {
            Some(traces) => traces.again(call),
            None => Parent::NONE,
        }
    }

    /// The sink of a server: metrics, the quota hub, then `more`.
    pub fn serving(metrics: Arc<Metrics>, hub: Arc<Hub>, more: &[Arc<dyn Consumer>]) -> Self {
        let mut consumers: Vec<Arc<dyn Consumer>> = vec![metrics, hub];
        consumers.extend(more.iter().cloned());
        Self::new(consumers)
    }

    /// Hands `decided` to every consumer.
    pub fn decided(&self, decided: &Decided<'_>) {
        for consumer in self.consumers.iter() {
            consumer.decided(decided);
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

// === impl Consumer for the metrics and the hub ===

/// `tollgate_decisions_total` and its latency histogram.
impl Consumer for Metrics {
    fn decided(&self, d: &Decided<'_>) {
        // The `rpc` label: the method a client called.
        let rpc = if d.door.is_envoy() {
            "should_rate_limit"
        } else {
            d.mode.name()
        };
        let labels = match d.what {
            // Not a decision: its Consume was counted when it reserved.
            What::Settled { .. } => return,
            What::Plan { decision, .. } => {
                if d.mode != Mode::Check {
                    let enforced = (decision.verdict == Verdict::RateLimited)
                        .then(|| decision.limits.iter().find(|l| l.denied))
                        .flatten();
                    let shadow = decision
                        .limits
                        .iter()
                        .filter(|l| l.limit.shadow && l.denied);
                    for refused in enforced.into_iter().chain(shadow) {
                        self.refusal(&RefusalLabels {
                            plan: Label(decision.plan.clone()),
                            class: decision.class.clone().map_or_else(Label::empty, Label),
                            limit: Label(refused.limit.name.clone()),
                            shadow: if refused.limit.shadow {
                                "true"
                            } else {
                                "false"
                            },
                        });
                    }
                }
                DecisionLabels::of(rpc, decision)
            }
            What::Rules { over_limit, .. } => DecisionLabels {
                rpc,
                verdict: if over_limit {
                    Verdict::RateLimited
                } else {
                    Verdict::Allowed
                }
                .name(),
                plan: Label::empty(),
                class: Label::empty(),
            },
        };
        self.decision(&labels, d.took);
    }
}

/// Wakes the watchers of whatever a decision counted.
impl Consumer for Hub {
    fn decided(&self, d: &Decided<'_>) {
        match d.what {
            What::Plan { request, decision } if d.mode != Mode::Check && decision.counted => {
                self.consumed(request.subject, request.account);
            }
            // Given back or counted past the estimate.
            What::Settled { settlement, .. } => {
                self.consumed(&settlement.subject, &settlement.account);
            }
            _ => {}
        }
    }
}

/// A span per decision: where it came in, the plan, class and verdict, the
/// limit that decided (the most constraining one), and the store's time.
impl Consumer for Traces {
    fn decided(&self, d: &Decided<'_>) {
        if !d.parent.is_sampled() {
            return;
        }
        let end = SystemTime::now();
        let refused = match d.what {
            What::Plan { decision, .. } => decision.verdict != Verdict::Allowed,
            What::Rules { over_limit, .. } => over_limit,
            What::Settled { .. } => return,
        };
        let attributes = || {
            let mut attributes = vec![
                KeyValue::new("tollgate.door", d.door.name()),
                KeyValue::new("tollgate.mode", d.mode.name()),
            ];
            match d.what {
                What::Plan { request, decision } => {
                    attributes.extend([
                        KeyValue::new("tollgate.subject", request.subject.to_owned()),
                        KeyValue::new("tollgate.plan", decision.plan.clone()),
                        KeyValue::new("tollgate.verdict", decision.verdict.name()),
                    ]);
                    if let Some(class) = &decision.class {
                        attributes.push(KeyValue::new("tollgate.class", class.clone()));
                    }
                    if !request.account.is_empty() {
                        attributes.push(KeyValue::new(
                            "tollgate.account",
                            request.account.to_owned(),
                        ));
                    }
                    if let Some(first) = decision.limits.first() {
                        attributes.extend([
                            KeyValue::new("tollgate.limit", first.limit.name.clone()),
                            KeyValue::new("tollgate.remaining", saturating_i64(first.remaining)),
                        ]);
                    }
                    if !decision.reason.is_empty() {
                        attributes.push(KeyValue::new("tollgate.reason", decision.reason.clone()));
                    }
                    if let Some(store) = decision.store_time {
                        attributes.push(KeyValue::new(
                            "tollgate.store_us",
                            saturating_i64(store.as_micros().try_into().unwrap_or(u64::MAX)),
                        ));
                    }
                }
                What::Settled { .. } => {}
                What::Rules { domain, over_limit } => attributes.extend([
                    KeyValue::new("tollgate.domain", domain.to_owned()),
                    KeyValue::new(
                        "tollgate.verdict",
                        if over_limit { "over_limit" } else { "ok" },
                    ),
                ]),
            }
            attributes
        };
        self.record(
            d.parent,
            &DecisionSpan {
                start: end.checked_sub(d.took).unwrap_or(end),
                end,
                refused,
                attributes: &attributes,
            },
        );
    }

    fn traces(&self) -> Option<&Traces> {
        Some(self)
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
