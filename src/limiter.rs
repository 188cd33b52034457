//! The decision path: plan, class, limits, engine, decision, headers.
//!
//! This is where a request meets the plan model: the account's plan is
//! resolved (moka-cached), the resource's class matched, the route's limits
//! turned into engine items (a burst limit is two: a token bucket at the
//! published rate and a sliding window at the burst ceiling), the engine runs
//! them as one unit, and the outcome becomes a [`Decision`] whose first limit
//! is the most constraining one, with the headers to forward.

pub mod headers;

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::engine::{
    Algorithm, Clock, CounterKey, CounterStore, Engine, Item, Mode, Nanos, Outcome,
};
use crate::plans::{
    Catalog, Limit, LimitKind, Per, Plan, Resolver, SlotRegistry, matcher::split_method,
};
use crate::state::RuntimeState;
use crate::storage::redis::{Counter, RedisStore, SharedCounters, StoreError};

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
}

/// One limit's state in a decision.
#[derive(Debug, Clone)]
pub struct LimitStatus {
    /// The limit's name.
    pub name: Arc<str>,
    /// What it counts.
    pub unit: Arc<str>,
    /// Its class, if any.
    pub class: Option<Arc<str>>,
    /// How it counts; `None` when unlimited.
    pub algorithm: Option<Algorithm>,
    /// The published amount (0 when unlimited).
    pub limit: u64,
    /// Units left.
    pub remaining: u64,
    /// Its window (0 for an unlimited entry without one).
    pub window: Nanos,
    /// When it is next fully available; when denied, when the request fits.
    pub reset_at: Nanos,
    /// It does not limit.
    pub unlimited: bool,
    /// This request does not fit it now.
    pub denied: bool,
    /// When denied, the wait until the request fits.
    pub wait: Nanos,
}

/// The decision path over one counter store.
pub struct Limiter<S> {
    engine: Engine<S>,
    shared: Option<SharedCounters>,
    catalog: ArcSwap<Snapshot>,
    generation: AtomicU64,
    resolver: Resolver,
    slots: Arc<SlotRegistry>,
    clock: Arc<dyn Clock>,
}

/// A catalog and the generation number it was installed under.
#[derive(Debug)]
pub struct Snapshot {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Increases with every installed catalog.
    pub generation: u64,
}

// === impl Limiter ===

impl<S: CounterStore> Limiter<S> {
    /// A limiter serving `catalog`, whose counter identities come from `slots`.
    pub fn new(
        store: S,
        catalog: Catalog,
        slots: Arc<SlotRegistry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::with_state(
            store,
            catalog,
            slots,
            clock,
            Arc::new(RuntimeState::in_memory()),
        )
    }

    /// As [`Limiter::new`], with runtime assignments and overrides kept in `state`
    /// (`new` keeps them in memory).
    pub fn with_state(
        store: S,
        catalog: Catalog,
        slots: Arc<SlotRegistry>,
        clock: Arc<dyn Clock>,
        state: Arc<RuntimeState>,
    ) -> Self {
        Self {
            engine: Engine::new(store),
            catalog: ArcSwap::from_pointee(Snapshot {
                catalog: Arc::new(catalog),
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            resolver: Resolver::new(100_000, state, slots.clone()),
            slots,
            clock,
            shared: None,
        }
    }

    /// Counts in Redis (`shared`) instead of the local store.
    pub fn with_shared(mut self, shared: SharedCounters) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The shared counters, when counting in Redis.
    pub fn shared(&self) -> Option<&SharedCounters> {
        self.shared.as_ref()
    }

    /// The counter store.
    pub fn store(&self) -> &S {
        self.engine.store()
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load().catalog.clone()
    }

    /// The slot registry catalogs for this limiter must be compiled with.
    pub fn slots(&self) -> &Arc<SlotRegistry> {
        &self.slots
    }

    /// The plan resolver, for invalidation.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The clock decisions read.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Installs a new catalog; the next decision uses it.
    pub fn replace_catalog(&self, catalog: Catalog) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.catalog.store(Arc::new(Snapshot {
            catalog: Arc::new(catalog),
            generation,
        }));
        self.resolver.invalidate_all();
    }

    /// Decides `request` in `mode` on the local engine (the memory store).
    /// With a shared store, use [`Limiter::decide_async`].
    pub fn decide(&self, mode: Mode, request: &Request<'_>) -> Decision {
        let begun = self.begin(mode, request);
        if let Some(early) = begun.early {
            return early;
        }
        let items = begun.items(request);
        let outcome = self.engine.decide(begun.run_mode, begun.now, &items);
        self.conclude(&begun, request, begun.now, &outcome)
    }

    /// Decides `request` in `mode` on the counter store in force: Redis when
    /// the limiter is shared, the local engine otherwise.
    pub async fn decide_async(
        &self,
        mode: Mode,
        request: &Request<'_>,
    ) -> Result<Decision, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(self.decide(mode, request));
        };
        let begun = self.begin(mode, request);
        if let Some(early) = begun.early {
            return Ok(early);
        }
        let items = begun.items(request);
        let (marker, message) = shared.notice(request.subject, begun.account);
        let (now, outcome) = self
            .run(
                begun.run_mode,
                begun.account,
                &items,
                Some((&marker, &message)),
            )
            .await?;
        Ok(self.conclude(&begun, request, now, &outcome))
    }

    /// Runs one decision's items (all of hash tag `tag`) on the store in
    /// force; returns the time it was decided at (Redis's, when shared) and
    /// the outcome. `notice` is for watchers on other replicas (see
    /// [`shared`](crate::storage::redis::shared)).
    pub async fn run(
        &self,
        mode: Mode,
        tag: &str,
        items: &[Item<'_>],
        notice: Option<(&str, &str)>,
    ) -> Result<(Nanos, Outcome), StoreError> {
        match &self.shared {
            None => {
                let now = self.clock.now();
                Ok((now, self.engine.decide(mode, now, items)))
            }
            Some(shared) => {
                let counters: Vec<Counter> = items
                    .iter()
                    .map(|i| Counter {
                        key: RedisStore::key(
                            tag,
                            i.key.scope,
                            &self.slots.identity(i.key.slot).unwrap_or_default(),
                        ),
                        algorithm: i.algorithm,
                        amount: i.rate.amount(),
                        window: i.rate.window(),
                        cost: i.cost,
                    })
                    .collect();
                shared.run(mode, &counters, notice, self.clock.now()).await
            }
        }
    }

    fn begin<'r>(&self, mode: Mode, request: &Request<'r>) -> Begun<'r> {
        let snapshot = self.catalog.load_full();
        let catalog = &snapshot.catalog;
        let account = account_of(request.subject, request.account);
        let now = self.clock.now();
        let plan = match request.plan.and_then(|p| catalog.plans.get(p)) {
            Some(hinted) => self.resolver.resolve_as(catalog, account, hinted, now),
            None => self
                .resolver
                .resolve(catalog, snapshot.generation, account, now),
        };

        let (prefix_method, path) = split_method(request.resource.trim());
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let method = prefix_method
            .or(request.method)
            .map(str::to_ascii_uppercase);
        let class = if path.is_empty() {
            None
        } else {
            catalog.class_of(method.as_deref(), path)
        };
        let route = plan.route(class);
        let mut early = None;
        if let Some(message) = &route.deny {
            let mut decision = Decision::new(&plan, class.map(|c| catalog.class_names[c].clone()));
            decision.verdict = Verdict::NotInPlan;
            decision.reason = message.to_string();
            early = Some(decision);
        }
        let cost = |limit: &Limit| cost_of(request.cost, &limit.unit, mode);
        let over_max_cost = (mode != Mode::Record)
            .then(|| {
                route.limits.iter().find_map(|l| {
                    let c = cost(l);
                    l.max_cost.filter(|max| c > *max).map(|max| {
                        format!(
                            "a cost of {c} {} is above the most one request may cost ({max}, {})",
                            l.unit, l.name
                        )
                    })
                })
            })
            .flatten();
        let run_mode = if over_max_cost.is_some() {
            Mode::Check
        } else {
            mode
        };
        Begun {
            snapshot,
            plan,
            class,
            account,
            now,
            mode,
            run_mode,
            over_max_cost,
            early,
        }
    }

    fn conclude(
        &self,
        begun: &Begun<'_>,
        request: &Request<'_>,
        now: Nanos,
        outcome: &Outcome,
    ) -> Decision {
        let catalog = &begun.snapshot.catalog;
        let mode = begun.mode;
        let route = begun.plan.route(begun.class);
        let cost = |limit: &Limit| cost_of(request.cost, &limit.unit, mode);
        let mut decision = Decision::new(
            &begun.plan,
            begun.class.map(|c| catalog.class_names[c].clone()),
        );
        let (limits, too_large) = statuses(&route.limits, outcome, now);
        decision.limits = limits;
        decision.counted = outcome.counted;

        if mode == Mode::Record {
            decision.verdict = if outcome.fits {
                Verdict::Allowed
            } else {
                Verdict::RateLimited
            };
        } else if let Some(reason) = begun.over_max_cost.clone().or_else(|| {
            too_large.map(|l| {
                format!(
                    "a cost of {} {} is more than {} ever admits at once",
                    cost(l),
                    l.unit,
                    l.name
                )
            })
        }) {
            decision.verdict = Verdict::TooLarge;
            decision.reason = reason;
        } else if !outcome.fits {
            decision.verdict = Verdict::RateLimited;
            let first = &decision.limits[0];
            decision.retry_after = Some(first.wait);
            decision.reason = format!(
                "{} exhausted: {} of {} {} left",
                first.name, first.remaining, first.limit, first.unit
            );
        }
        decision.headers = headers::build(catalog.headers, &decision, now);
        decision
    }

    /// The plan of a subject and the state of every limit of it, counting
    /// nothing: what `WatchQuota` and `Admin.GetSubject` show. Reads the
    /// store in force (Redis when shared).
    pub async fn quota(&self, subject: &str, account: &str) -> Result<Quota, StoreError> {
        let snapshot = self.catalog.load_full();
        let account = account_of(subject, account);
        let now = self.clock.now();
        let plan = self
            .resolver
            .resolve(&snapshot.catalog, snapshot.generation, account, now);
        let limits: Vec<Arc<Limit>> = plan
            .limits
            .iter()
            .filter(|l| !matches!(l.kind, LimitKind::Deny(_)))
            .cloned()
            .collect();
        let items = items(&limits, subject, account, |_| 0);
        let (now, outcome) = self.run(Mode::Check, account, &items, None).await?;
        let (statuses, _) = statuses(&limits, &outcome, now);
        let denied = plan
            .limits
            .iter()
            .filter_map(|l| match (&l.kind, &l.class) {
                (LimitKind::Deny(m), Some(c)) => Some((c.clone(), m.clone())),
                _ => None,
            })
            .collect();
        Ok(Quota {
            plan,
            limits: statuses,
            denied,
            at: now,
        })
    }

    /// Forgets every counter of `subject` (and, when given, the shared ones
    /// of `account`); how many there were.
    pub async fn reset(&self, subject: &str, account: &str) -> Result<usize, StoreError> {
        let scopes: SmallVec<[&str; 2]> = if account.is_empty() || account == subject {
            smallvec::smallvec![subject]
        } else {
            smallvec::smallvec![subject, account]
        };
        match &self.shared {
            None => Ok(scopes.iter().map(|s| self.engine.store().reset(s)).sum()),
            Some(shared) => {
                let tag = account_of(subject, account);
                let keys: Vec<String> = self
                    .slots
                    .identities()
                    .iter()
                    .flat_map(|id| scopes.iter().map(move |s| RedisStore::key(tag, s, id)))
                    .collect();
                shared.store.delete(&keys).await
            }
        }
    }
}

/// A decision under way: what `begin` resolved, for `conclude`.
struct Begun<'r> {
    snapshot: Arc<Snapshot>,
    plan: Arc<Plan>,
    class: Option<usize>,
    account: &'r str,
    now: Nanos,
    mode: Mode,
    run_mode: Mode,
    over_max_cost: Option<String>,
    /// Decided without counting (a class outside the plan).
    early: Option<Decision>,
}

impl Begun<'_> {
    fn items<'a>(&'a self, request: &'a Request<'_>) -> SmallVec<[Item<'a>; 4]> {
        let mode = self.mode;
        items(
            &self.plan.route(self.class).limits,
            request.subject,
            self.account,
            |l| cost_of(request.cost, &l.unit, mode),
        )
    }
}

impl Decision {
    fn new(plan: &Plan, class: Option<Arc<str>>) -> Self {
        Self {
            verdict: Verdict::Allowed,
            counted: false,
            plan: plan.name.clone(),
            class,
            limits: Vec::new(),
            retry_after: None,
            headers: Vec::new(),
            reason: String::new(),
        }
    }
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

/// The account of a request: the subject when none is given.
pub fn account_of<'a>(subject: &'a str, account: &'a str) -> &'a str {
    if account.is_empty() { subject } else { account }
}

/// The engine items of `limits` (a burst limit gives two), in order.
fn items<'a>(
    limits: &'a [Arc<Limit>],
    subject: &'a str,
    account: &'a str,
    cost: impl Fn(&Limit) -> u64,
) -> SmallVec<[Item<'a>; 4]> {
    let mut items = SmallVec::new();
    for limit in limits {
        let LimitKind::Counted {
            rate,
            algorithm,
            slot,
            burst,
        } = &limit.kind
        else {
            continue;
        };
        let scope = match limit.per {
            Per::Subject => subject,
            Per::Account => account,
        };
        let cost = cost(limit);
        items.push(Item {
            key: CounterKey { scope, slot: *slot },
            algorithm: *algorithm,
            rate: *rate,
            cost,
        });
        if let Some((cap, burst_slot)) = burst {
            items.push(Item {
                key: CounterKey {
                    scope,
                    slot: *burst_slot,
                },
                algorithm: Algorithm::SlidingRing,
                rate: *cap,
                cost,
            });
        }
    }
    items
}

/// One status per limit from the engine's outcome over [`items`], most
/// constraining first, and the first limit the cost can never fit, if any.
fn statuses<'l>(
    limits: &'l [Arc<Limit>],
    outcome: &Outcome,
    now: Nanos,
) -> (Vec<LimitStatus>, Option<&'l Limit>) {
    let mut from_engine = outcome.items.iter();
    let mut too_large = None;
    let mut out = Vec::with_capacity(limits.len());
    for limit in limits {
        let status = match &limit.kind {
            LimitKind::Counted {
                rate,
                algorithm,
                burst,
                ..
            } => {
                let mut s = *from_engine.next().expect("one status per item");
                if burst.is_some() {
                    s = s.under(*from_engine.next().expect("one status per burst item"));
                }
                if s.too_large && too_large.is_none() {
                    too_large = Some(&**limit);
                }
                let denied = !s.fits;
                LimitStatus {
                    name: limit.name.clone(),
                    unit: limit.unit.clone(),
                    class: limit.class.clone(),
                    algorithm: Some(*algorithm),
                    limit: rate.amount(),
                    remaining: s.remaining,
                    window: rate.window(),
                    reset_at: if denied && !s.too_large {
                        now + s.wait
                    } else {
                        s.free_at
                    },
                    unlimited: false,
                    denied,
                    wait: if denied { s.wait } else { 0 },
                }
            }
            _ => LimitStatus {
                name: limit.name.clone(),
                unit: limit.unit.clone(),
                class: limit.class.clone(),
                algorithm: None,
                limit: 0,
                remaining: 0,
                window: limit.window,
                reset_at: 0,
                unlimited: true,
                denied: false,
                wait: 0,
            },
        };
        out.push(status);
    }
    out.sort_by(most_constraining);
    (out, too_large)
}

impl<S> std::fmt::Debug for Limiter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("catalog", &self.catalog.load())
            .finish_non_exhaustive()
    }
}

/// The cost of a request in `unit`: as given; otherwise one request for
/// checks and consumption, and for a record with no cost at all.
fn cost_of(cost: &HashMap<String, u64>, unit: &str, mode: Mode) -> u64 {
    match cost.get(unit) {
        Some(&c) => c,
        None if unit == "requests" && (mode != Mode::Record || cost.is_empty()) => 1,
        None => 0,
    }
}

/// Denied before admitted, the longest wait first; then the smallest share
/// of the limit left; unlimited last.
fn most_constraining(a: &LimitStatus, b: &LimitStatus) -> CmpOrdering {
    a.unlimited
        .cmp(&b.unlimited)
        .then_with(|| {
            Pressure::of(a.denied, a.wait, a.remaining, a.limit).cmp(&Pressure::of(
                b.denied,
                b.wait,
                b.remaining,
                b.limit,
            ))
        })
        .then_with(|| b.window.cmp(&a.window))
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
    fn cmp(&self, other: &Self) -> CmpOrdering {
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
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
