//! What the decision path answers: the verdict, every limit's state, and the
//! order that puts the most constraining limit first.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Algorithm, Nanos};
use crate::plans::{Limit, Plan};

/// One request, as the decision path sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What is counted. Never empty.
    pub subject: &'a str,
    /// Whose plan applies; empty means the subject.
    pub account: &'a str,
    /// The endpoint, optionally prefixed with its HTTP method.
    pub resource: &'a str,
    /// The HTTP method, when not in `resource`.
    pub method: Option<&'a str>,
    /// The plan, when the gateway already knows it (e.g. from a token
    /// claim): used instead of the file's assignment or default, but an
    /// Admin `SetPlan` still wins, and the account's overrides still apply.
    /// A name the configuration does not know is ignored.
    pub plan: Option<&'a str>,
    /// Cost per unit.
    pub cost: &'a HashMap<String, u64>,
    /// When the caller stops waiting (its `grpc-timeout`): a decision not
    /// made by then counts nothing.
    pub deadline: Option<tokio::time::Instant>,
}

/// What the gateway should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Admitted.
    Allowed,
    /// A limit is exhausted for now.
    RateLimited,
    /// The class is not in the plan.
    NotInPlan,
    /// The cost can never be admitted at once.
    TooLarge,
}

impl Verdict {
    /// Its name in labels and spans.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::RateLimited => "rate_limited",
            Self::NotInPlan => "not_in_plan",
            Self::TooLarge => "too_large",
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What to do.
    pub verdict: Verdict,
    /// Counters changed (an admitted Consume, any Record).
    pub counted: bool,
    /// The plan that applied.
    pub plan: Arc<str>,
    /// The class matched, if any.
    pub class: Option<Arc<str>>,
    /// Every limit that applied, most constraining first, unlimited last.
    pub limits: Vec<LimitStatus>,
    /// When rate limited: the wait until the request would be admitted.
    pub retry_after: Option<Nanos>,
    /// Headers to forward.
    pub headers: Vec<(&'static str, String)>,
    /// Why it was refused.
    pub reason: String,
    /// The time spent in the counter store, when the limiter times it
    /// (traces are on).
    pub store_time: Option<std::time::Duration>,
    /// The reservation an admitted `reserve` made: its id and expiry.
    pub reservation: Option<(Arc<str>, Nanos)>,
}

/// One limit's state in a decision: the limit as configured, and what this
/// decision found.
#[derive(Debug, Clone)]
pub struct LimitStatus {
    /// The limit (name, unit, class, algorithm, size, window).
    pub limit: Arc<Limit>,
    /// Units left.
    pub remaining: u64,
    /// When it is next fully available; when denied, when the request fits.
    pub reset_at: Nanos,
    /// This request does not fit it now.
    pub denied: bool,
    /// When denied, the wait until the request fits.
    pub wait: Nanos,
}

/// A subject's quota: its plan and every limit of it.
#[derive(Debug, Clone)]
pub struct Quota {
    /// The plan in force, overrides applied.
    pub plan: Arc<Plan>,
    /// Every limit, most constraining first.
    pub limits: Vec<LimitStatus>,
    /// Classes the plan does not include, with their message.
    pub denied: Vec<(Arc<str>, Arc<str>)>,
    /// When it was read.
    pub at: Nanos,
}

/// How much one limit constrains a request, ordered most first: refused
/// before admitted, then the longer wait, then the smaller share of the
/// limit left. Shared by the plans' decisions and Envoy's statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    denied: bool,
    wait: Nanos,
    remaining: u64,
    limit: u64,
}

// === impl Decision ===

impl Decision {
    pub(super) fn new(plan: &Plan, class: Option<Arc<str>>) -> Self {
        Self {
            verdict: Verdict::Allowed,
            counted: false,
            plan: plan.name.clone(),
            class,
            limits: Vec::new(),
            retry_after: None,
            headers: Vec::new(),
            reason: String::new(),
            store_time: None,
            reservation: None,
        }
    }
}

// === impl LimitStatus ===

impl LimitStatus {
    /// The published amount (0 when unlimited).
    pub fn amount(&self) -> u64 {
        self.limit.counted().map_or(0, |c| c.rate.amount())
    }

    /// Its window (0 for an unlimited entry without one).
    pub fn window(&self) -> Nanos {
        self.limit.window
    }

    /// How it counts; `None` when unlimited.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.limit.counted().map(|c| c.algorithm)
    }

    /// It does not limit.
    pub fn unlimited(&self) -> bool {
        self.limit.counted().is_none()
    }

    /// Enforced before shadow, denied before admitted, the longest wait first; then the smallest
    /// share of the limit left; unlimited last; then the longer window.
    pub(super) fn most_constraining(&self, other: &Self) -> Ordering {
        self.unlimited()
            .cmp(&other.unlimited())
            .then_with(|| self.limit.shadow.cmp(&other.limit.shadow))
            .then_with(|| self.pressure().cmp(&other.pressure()))
            .then_with(|| other.window().cmp(&self.window()))
    }

    fn pressure(&self) -> Pressure {
        Pressure::of(self.denied, self.wait, self.remaining, self.amount())
    }
}

// === impl Pressure ===

impl Pressure {
    /// A limit with `remaining` of `limit` left, refused (`denied`) for `wait`.
    pub fn of(denied: bool, wait: Nanos, remaining: u64, limit: u64) -> Self {
        Self {
            denied,
            wait,
            remaining,
            limit,
        }
    }
}

impl Ord for Pressure {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .denied
            .cmp(&self.denied)
            .then_with(|| other.wait.cmp(&self.wait))
            .then_with(|| {
                // self.remaining / self.limit vs other's, exactly.
                let left = u128::from(self.remaining) * u128::from(other.limit.max(1));
                let right = u128::from(other.remaining) * u128::from(self.limit.max(1));
                left.cmp(&right)
            })
    }
}

impl PartialOrd for Pressure {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
