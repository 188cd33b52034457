//! The decision path: plan, class, limits, counters, decision, headers.
//!
//! This is where a request meets the plan model: the account's plan is
//! resolved (moka-cached), the resource's class matched, the route's limits
//! turned into engine items ([`route`]), the [`Counters`] run them as one
//! unit, and the outcome becomes a [`Decision`] whose first limit is the most
//! constraining one, with the headers to forward. The limiter never names a
//! counter backend: memory and Redis differ only behind [`Counters`].

pub mod decision;
pub mod headers;
pub mod reservations;
pub mod route;
#[cfg(test)]
pub(crate) mod samples;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::engine::{Clock, Item, Mode, Nanos, Outcome};
use crate::error::Error;
use crate::plans::{
    Catalog, Limit, LimitKind, Plan, Resolver, SlotRegistry, matcher::split_method, path,
};
use crate::state::RuntimeState;
use crate::storage::{Counters, Notify, StoreError};
pub use decision::{Decision, LimitStatus, Pressure, Quota, Request, Verdict};
use route::cost_of;

/// The decision path over one set of counters.
pub struct Limiter {
    counters: Counters,
    catalog: ArcSwap<Installed>,
    generation: AtomicU64,
    resolver: Resolver,
    state: Arc<RuntimeState>,
    slots: Arc<SlotRegistry>,
    clock: Arc<dyn Clock>,
    /// Whether decisions say how long the store took (for traces).
    timed: bool,
    /// Consumes that counted an estimate, until settled.
    reservations: reservations::Reservations,
}

/// Warns, now and then, that shadow limits could not be tried.
static SHADOW_FAILED: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(std::time::Duration::from_secs(10));

/// A catalog and the generation number it was installed under.
#[derive(Debug)]
pub struct Installed {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Increases with every installed catalog.
    pub generation: u64,
}

/// Why `begin` decided without counting.
enum Early {
    /// A class outside the plan.
    Decided(Box<Decision>),
    /// A resource that cannot be judged.
    Refused(Error),
}

/// A decision under way: what `begin` resolved, for `conclude`.
struct Begun<'r> {
    snapshot: Arc<Installed>,
    plan: Arc<Plan>,
    class: Option<usize>,
    account: &'r str,
    now: Nanos,
    mode: Mode,
    run_mode: Mode,
    over_max_cost: Option<String>,
}

/// What a settle or a release did.
#[derive(Debug)]
pub struct Finished {
    /// The answer. A retry's names no subject, account or class: it only
    /// repeats the amounts.
    pub settlement: reservations::Settlement,
    /// A retry: settled before for the same amounts, nothing changed now.
    pub again: bool,
    /// What a settle counted past the estimate, if anything.
    pub excess: Option<Excess>,
}

/// What a settle counted past its reservation's estimate, as a Record
/// would: the excess per unit, and the limits announcing thresholds that
/// counted it, as they stand right after (a [`Decision`] of mode Record).
#[derive(Debug)]
pub struct Excess {
    /// The excess, per unit.
    pub cost: std::collections::HashMap<String, u64>,
    /// Those limits.
    pub decision: Decision,
}

impl Begun<'_> {
    /// The name of the class matched, if any.
    fn class_name(&self) -> Option<Arc<str>> {
        self.class
            .map(|c| self.snapshot.catalog.class_names[c].clone())
    }
}

// === impl Limiter ===

impl Limiter {
    /// A limiter serving `catalog` over `counters`, whose counter identities
    /// come from `slots`; runtime assignments and overrides are kept where
    /// [`RuntimeState::for_counters`] says (Redis when counting there, else
    /// memory).
    pub fn new(
        counters: impl Into<Counters>,
        catalog: Catalog,
        slots: Arc<SlotRegistry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let counters = counters.into();
        let state = Arc::new(RuntimeState::for_counters(&counters));
        Self::with_state(counters, catalog, slots, clock, state)
    }

    /// As [`Limiter::new`], with runtime assignments and overrides kept in `state`.
    pub fn with_state(
        counters: impl Into<Counters>,
        catalog: Catalog,
        slots: Arc<SlotRegistry>,
        clock: Arc<dyn Clock>,
        state: Arc<RuntimeState>,
    ) -> Self {
        let counters = counters.into();
        if let Counters::Memory(engine) = &counters {
            engine.store().remember_evictions(slots.clone());
        }
        Self {
            counters,
            catalog: ArcSwap::from_pointee(Installed {
                catalog: Arc::new(catalog),
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            resolver: Resolver::new(100_000, state.runtime().clone(), slots.clone()),
            state,
            slots,
            clock,
            timed: false,
            reservations: Default::default(),
        }
    }

    /// This limiter, with every decision saying how long its counter store
    /// took ([`Decision::store_time`]); off, the clock is not read for it.
    pub fn timing_the_store(mut self) -> Self {
        self.timed = true;
        self
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The reservations held here, as the journal writes them.
    pub fn ledger(&self) -> &reservations::Reservations {
        &self.reservations
    }

    /// Where admin changes are kept.
    pub fn state(&self) -> &Arc<RuntimeState> {
        &self.state
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
        self.catalog.store(Arc::new(Installed {
            catalog: Arc::new(catalog),
            generation,
        }));
        self.resolver.invalidate_all();
    }

    /// Decides `request` in `mode`. A resource that cannot be normalized
    /// safely ([`path`]) is [`Error::Invalid`] naming it, and counts nothing.
    /// A Consume admitted by a concurrency limit holds its slot as a
    /// reservation ([`Decision::reservation`]), as [`Limiter::reserve`] does.
    pub async fn decide(&self, mode: Mode, request: &Request<'_>) -> Result<Decision, Error> {
        self.decide_holding(mode, request, None).await
    }

    /// A Consume that counts `request`'s cost as an estimate and, when
    /// admitted, holds it as a reservation for `ttl` (the default when
    /// `None`): [`Limiter::settle`] replaces it with the actual cost,
    /// [`Limiter::release`] gives it all back, and unsettled it is settled at
    /// its estimate when it expires.
    pub async fn reserve(
        &self,
        request: &Request<'_>,
        ttl: Option<Nanos>,
    ) -> Result<Decision, Error> {
        let asked = ttl.filter(|&t| t > 0);
        let max = self.catalog().reservations.max;
        if let Some(t) = asked.filter(|&t| t > max) {
            return Err(Error::invalid(
                "reserve.ttl",
                format!(
                    "at most {} (reservations.max_ttl), got {}",
                    humantime::format_duration(std::time::Duration::from_nanos(max)),
                    humantime::format_duration(std::time::Duration::from_nanos(t)),
                ),
            ));
        }
        self.decide_holding(Mode::Consume, request, Some(asked))
            .await
    }

    /// Decides `request` in `mode`; a Consume that reserves (`reserve`,
    /// with the TTL asked for) or meets a concurrency limit holds what it
    /// counted as a reservation when admitted.
    async fn decide_holding(
        &self,
        mode: Mode,
        request: &Request<'_>,
        reserve: Option<Option<Nanos>>,
    ) -> Result<Decision, Error> {
        let begun = match self.begin(mode, request) {
            Ok(begun) => begun,
            Err(Early::Decided(decision)) => return Ok(*decision),
            Err(Early::Refused(e)) => return Err(e),
        };
        let route = begun.plan.route(begun.class);
        let holds = mode == Mode::Consume && (reserve.is_some() || route.holds);
        let shared = self.counters.shared().filter(|_| holds);
        if holds && shared.is_none() {
            self.reservations.room()?;
        }
        // A reservation in memory opens as one step for the journal: its
        // counting and its record, both or neither in a cut.
        let _moving = match holds && shared.is_none() {
            true => Some(self.reservations.moving().await),
            false => None,
        };
        let cost = |l: &Limit| cost_of(request.cost, &l.unit, mode);
        let stored = self.timed.then(std::time::Instant::now);
        if let Some(shared) = shared.filter(|_| begun.run_mode == Mode::Consume) {
            let ttl = self.ttl_of(&begun, reserve.flatten());
            let (now, outcome, held) = self.reserve_shared(shared, &begun, request, ttl).await?;
            let mut decision = self.conclude(&begun, request, now, &outcome);
            decision.store_time = stored.map(|at| at.elapsed());
            decision.reservation = held;
            return Ok(decision);
        }
        // What a reservation holds: every counter with its limit, counted at
        // the estimate (the same items, in the same order).
        let estimated = holds.then(|| self.estimated(&route.limits, request, begun.account));
        let (now, outcome) = if route.shadow {
            self.shadowed(&begun, request, &route.limits, cost).await?
        } else {
            let items = match &estimated {
                Some(estimated) => estimated.iter().map(|(_, item)| *item).collect(),
                None => self.items(&route.limits, request.subject, begun.account, cost),
            };
            self.counters
                .run(
                    begun.run_mode,
                    begun.account,
                    &items,
                    Some(Notify {
                        subject: request.subject,
                        account: begun.account,
                    }),
                    &self.slots,
                    begun.now,
                    request.deadline,
                )
                .await?
        };
        let mut decision = self.conclude(&begun, request, now, &outcome);
        decision.store_time = stored.map(|at| at.elapsed());
        if let Some(estimated) = estimated.filter(|_| decision.counted) {
            let ttl = self.ttl_of(&begun, reserve.flatten());
            decision.reservation = Some(self.hold(&begun, request, &estimated, now, &outcome, ttl));
        }
        Ok(decision)
    }

    /// How long a reservation is held: asked for, else the shortest of the
    /// route's limits', else the plan's, else the file's.
    fn ttl_of(&self, begun: &Begun<'_>, asked: Option<Nanos>) -> Nanos {
        let route = begun.plan.route(begun.class);
        asked
            .or_else(|| route.limits.iter().filter_map(|l| l.reservation_ttl).min())
            .or(begun.plan.reservation_ttl)
            .unwrap_or(begun.snapshot.catalog.reservations.default)
    }

    /// A reservation in Redis, in one script call: the account's expired
    /// reservations settled first (their slots given back), then the
    /// Consume, kept as a reservation when admitted. A shadow limit is
    /// only checked. Returns Redis's time, the outcome and, admitted, the
    /// reservation's id and expiry.
    async fn reserve_shared(
        &self,
        shared: &crate::storage::redis::SharedCounters,
        begun: &Begun<'_>,
        request: &Request<'_>,
        ttl: Nanos,
    ) -> Result<(Nanos, Outcome, Option<(Arc<str>, Nanos)>), Error> {
        use crate::storage::redis::{Counter, RedisStore, reservations::Hold};
        let route = begun.plan.route(begun.class);
        let tag = begun.account;
        let holds: Vec<Hold> = self
            .estimated(&route.limits, request, begun.account)
            .into_iter()
            .map(|(limit, item)| Hold {
                counter: Counter {
                    key: RedisStore::key(
                        tag,
                        item.key.scope,
                        &self.slots.identity(item.key.slot).unwrap_or_default(),
                    ),
                    algorithm: item.algorithm,
                    amount: item.rate.amount(),
                    window: item.rate.window(),
                    // A shadow limit is only checked.
                    cost: if limit.shadow { 0 } else { item.cost },
                    period: Counter::periods(item.rate),
                },
                unit: (!limit.shadow).then(|| limit.unit.to_string()),
            })
            .collect();
        let estimate = reservations::by_unit(
            request.cost,
            route.limits.iter().filter(|l| !l.shadow).map(|l| &*l.unit),
        );
        let id = RedisStore::reservation_id(tag);
        let (now, outcome, expires_at, expired) = shared
            .store
            .reserve(
                tag,
                &id,
                request.subject,
                begun.account,
                begun.class_name().as_deref(),
                &estimate,
                &holds,
                ttl,
                0,
            )
            .await?;
        self.reservations.expired_elsewhere(expired);
        if outcome.counted {
            self.reservations.reserved_in(tag, expires_at);
        }
        let held = outcome.counted.then(|| (Arc::from(id), expires_at));
        Ok((now, outcome, held))
    }

    /// Every counter of `limits` with its limit, counting what `request`
    /// estimates for its unit, in the order the engine's outcome lists them.
    fn estimated<'a>(
        &self,
        limits: &'a [Arc<Limit>],
        request: &'a Request<'_>,
        account: &'a str,
    ) -> Vec<(&'a Arc<Limit>, Item<'a>)> {
        limits
            .iter()
            .filter(|l| l.counted().is_some())
            .flat_map(|limit| {
                let units = cost_of(request.cost, &limit.unit, Mode::Consume);
                self.items(
                    std::slice::from_ref(limit),
                    request.subject,
                    account,
                    |_| units,
                )
                .into_iter()
                .map(move |item| (limit, item))
            })
            .collect()
    }

    /// Holds what an admitted Consume counted as a reservation; its id
    /// and expiry.
    fn hold(
        &self,
        begun: &Begun<'_>,
        request: &Request<'_>,
        estimated: &[(&Arc<Limit>, Item<'_>)],
        now: Nanos,
        outcome: &Outcome,
        ttl: Nanos,
    ) -> (Arc<str>, Nanos) {
        // Every enforced counter the estimate was counted against, with what
        // a refund needs; the outcome lists them in the route's order.
        let mut held = Vec::with_capacity(estimated.len());
        for ((limit, item), status) in estimated.iter().zip(outcome.items.iter()) {
            // Held even at 0: a settle past the estimate counts there.
            if limit.shadow {
                continue;
            }
            held.push(reservations::Held {
                scope: item.key.scope.to_owned(),
                slot: item.key.slot,
                algorithm: item.algorithm,
                rate: item.rate,
                unit: limit.unit.clone(),
                counted: crate::engine::algorithm::Charged {
                    units: item.cost,
                    rate: item.rate,
                    at: now,
                    free_at: status.free_at,
                },
            });
        }
        let expires_at = now.saturating_add(ttl);
        let id = self.reservations.open(reservations::Reservation {
            subject: request.subject.to_owned(),
            account: begun.account.to_owned(),
            class: begun.class_name(),
            estimate: request.cost.clone(),
            held,
            expires_at,
            journaled: false,
        });
        (id, expires_at)
    }

    /// Settles reservation `id` for `actual` per unit (units not named at
    /// their estimate): gives back what the estimate counted beyond the
    /// actual, and counts the actual beyond the estimate; with what that
    /// excess left of the limits announcing thresholds.
    pub async fn settle(
        &self,
        id: &str,
        actual: &std::collections::HashMap<String, u64>,
    ) -> Result<Finished, Error> {
        for (unit, &n) in actual {
            crate::config::check_amount(n)
                .map_err(|e| Error::invalid(format!("actual[{unit}]"), e))?;
        }
        let (settlement, fresh) = self.close(id, Some(actual)).await?;
        let excess = match fresh {
            true => self.excess(&settlement).await,
            false => None,
        };
        Ok(Finished {
            settlement,
            again: !fresh,
            excess,
        })
    }

    /// Gives reservation `id`'s whole estimate back.
    pub async fn release(&self, id: &str) -> Result<Finished, Error> {
        let (settlement, fresh) = self.close(id, None).await?;
        Ok(Finished {
            settlement,
            again: !fresh,
            excess: None,
        })
    }

    /// Settles or releases `id`; whether that changed anything now (not a
    /// retry).
    async fn close(
        &self,
        id: &str,
        actual: Option<&std::collections::HashMap<String, u64>>,
    ) -> Result<(reservations::Settlement, bool), Error> {
        Error::required("id", id)?;
        if let Some(shared) = self.counters.shared() {
            return self
                .reservations
                .settled_in(&shared.store, id, actual)
                .await;
        }
        let _moving = self.reservations.moving().await;
        let now = self.clock.now();
        let (settlement, changes) = self.reservations.settle(id, actual, now)?;
        let Some(changes) = changes else {
            return Ok((settlement, false));
        };
        self.apply(&changes, now).await?;
        Ok((settlement, true))
    }

    /// The limits of `settlement`'s class that count a unit it billed past
    /// its estimate and announce thresholds, read right after the excess
    /// was counted: what the threshold events need. `None` when there is
    /// none, or the read failed (events are announced on a best effort).
    async fn excess(&self, settlement: &reservations::Settlement) -> Option<Excess> {
        let cost = settlement.excess();
        if cost.is_empty() {
            return None;
        }
        let counted_there = |l: &Limit| {
            !l.shadow
                && !l.thresholds.is_empty()
                && l.counted().is_some()
                && cost.contains_key(&*l.unit)
                && l.class
                    .as_ref()
                    .is_none_or(|c| Some(c) == settlement.class.as_ref())
        };
        let read = self
            .read(&settlement.subject, &settlement.account, counted_there)
            .await;
        let (plan, _, limits) = match read {
            Ok(read) if !read.2.is_empty() => read,
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "limits after a settle's excess not read");
                return None;
            }
        };
        let mut decision = Decision::new(&plan, settlement.class.clone());
        decision.limits = limits;
        decision.counted = true;
        Some(Excess { cost, decision })
    }

    /// Makes a reservation's `changes` to the counters at `now`.
    async fn apply(
        &self,
        changes: &[(reservations::Held, reservations::Change)],
        now: Nanos,
    ) -> Result<(), Error> {
        let mut refunds = Vec::new();
        let mut records = Vec::new();
        for (held, change) in changes {
            let item = |cost| Item {
                key: crate::engine::CounterKey {
                    scope: &held.scope,
                    slot: held.slot,
                },
                algorithm: held.algorithm,
                rate: held.rate,
                cost,
            };
            match *change {
                reservations::Change::Refund(counted) => refunds.push((item(0), counted)),
                reservations::Change::Record(units) => records.push(item(units)),
            }
        }
        // A reservation's counters are distinct: one call gives back all.
        if !refunds.is_empty() {
            let tag = refunds[0].0.key.scope;
            self.counters
                .refund(tag, &refunds, &self.slots, now)
                .await?;
        }
        for item in &records {
            self.counters
                .run(
                    Mode::Record,
                    item.key.scope,
                    std::slice::from_ref(item),
                    None,
                    &self.slots,
                    now,
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Forgets the reservations expired by now; those never settled are
    /// settled at their estimate (their slots in flight given back), and
    /// returned.
    pub async fn expire_reservations(&self) -> Vec<reservations::Settlement> {
        if let Some(shared) = self.counters.shared() {
            return self
                .reservations
                .expire_in(&shared.store, self.clock.now())
                .await;
        }
        let _moving = self.reservations.moving().await;
        let now = self.clock.now();
        let expired = self.reservations.expire(now);
        let mut settled = Vec::with_capacity(expired.len());
        for (settlement, changes) in expired {
            if let Err(e) = self.apply(&changes, now).await {
                tracing::warn!(error = %e, id = %settlement.id, "an expired reservation's slots in flight were not given back");
            }
            settled.push(settlement);
        }
        settled
    }

    /// A decision whose limits include shadow ones: the enforced limits
    /// decide, all or nothing, as always; then the shadow limits are tried
    /// in the same mode when the enforced ones counted (all or nothing among
    /// themselves, as if enforced), and only checked when they did not. The
    /// outcome is the enforced one, with every limit's status in order.
    async fn shadowed(
        &self,
        begun: &Begun<'_>,
        request: &Request<'_>,
        limits: &[Arc<Limit>],
        cost: impl Fn(&Limit) -> u64,
    ) -> Result<(Nanos, Outcome), StoreError> {
        let (shadow, enforced): (Vec<Arc<Limit>>, Vec<Arc<Limit>>) =
            limits.iter().cloned().partition(|l| l.shadow);
        let items = self.items(&enforced, request.subject, begun.account, &cost);
        let (now, held) = if items.is_empty() {
            let held = Outcome {
                fits: true,
                counted: begun.run_mode != Mode::Check,
                items: Default::default(),
            };
            (begun.now, held)
        } else {
            let notify = Notify {
                subject: request.subject,
                account: begun.account,
            };
            self.counters
                .run(
                    begun.run_mode,
                    begun.account,
                    &items,
                    Some(notify),
                    &self.slots,
                    begun.now,
                    request.deadline,
                )
                .await?
        };
        let mode = if held.counted {
            begun.run_mode
        } else {
            Mode::Check
        };
        let items = self.items(&shadow, request.subject, begun.account, &cost);
        let tried = match self
            .counters
            .run(
                mode,
                begun.account,
                &items,
                None,
                &self.slots,
                begun.now,
                request.deadline,
            )
            .await
        {
            Ok((_, tried)) => tried,
            // The enforced limits decided (and may have counted): a shadow
            // limit never fails the request. Its status reads as unknown
            // (fits, untouched).
            Err(e) => {
                if let Some(held) = SHADOW_FAILED.ready() {
                    tracing::warn!(error = %e, held, "shadow limits not tried: the counter store failed");
                }
                Outcome {
                    fits: true,
                    counted: false,
                    items: items
                        .iter()
                        .map(|i| crate::engine::ItemStatus {
                            fits: true,
                            too_large: false,
                            remaining: i.rate.amount(),
                            free_at: begun.now,
                            wait: 0,
                        })
                        .collect(),
                }
            }
        };
        // Every limit's statuses, in the order of `limits`.
        let (mut held_items, mut tried_items) = (held.items.iter(), tried.items.iter());
        let mut merged = SmallVec::new();
        for limit in limits {
            let Some(counted) = limit.counted() else {
                continue;
            };
            let from = if limit.shadow {
                &mut tried_items
            } else {
                &mut held_items
            };
            let n = 1 + usize::from(counted.burst.is_some());
            merged.extend(from.take(n).copied());
        }
        Ok((
            now,
            Outcome {
                fits: held.fits,
                counted: held.counted,
                items: merged,
            },
        ))
    }

    /// Runs one decision's items (all of hash tag `tag`) on the counters by
    /// `deadline`; returns the time it was decided at and the outcome.
    /// `notify` is for watchers on other replicas.
    pub async fn run(
        &self,
        mode: Mode,
        tag: &str,
        items: &[Item<'_>],
        notify: Option<Notify<'_>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Nanos, Outcome), StoreError> {
        let now = self.clock.now();
        self.counters
            .run(mode, tag, items, notify, &self.slots, now, deadline)
            .await
    }

    /// Gives back what each item's `Charged` counted, the items all under
    /// hash tag `tag` (Envoy's negative hits).
    pub async fn refund(
        &self,
        tag: &str,
        items: &[(Item<'_>, crate::engine::algorithm::Charged)],
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.counters
            .refund(tag, items, &self.slots, now)
            .await
            .map(drop)
    }

    /// The engine items of `limits` for `subject` of `account`
    /// ([`route::items`]), a monthly limit's periods starting on the
    /// account's anchor day when it has one (`SetBillingAnchor`).
    fn items<'a>(
        &self,
        limits: &'a [Arc<Limit>],
        subject: &'a str,
        account: &'a str,
        cost: impl Fn(&Limit) -> u64,
    ) -> route::Items<'a> {
        let mut items = route::items(limits, subject, account, cost);
        let monthly = |i: &Item<'_>| {
            i.rate
                .periods()
                .is_some_and(|c| c.unit == crate::engine::algorithm::calendar::Unit::Month)
        };
        if items.iter().any(monthly)
            && let Some(anchor) = self.state.runtime().anchor(account)
        {
            for item in items.iter_mut().filter(|i| monthly(i)) {
                if let Some(c) = item.rate.periods() {
                    item.rate =
                        item.rate
                            .with_calendar(crate::engine::algorithm::calendar::Calendar {
                                anchor,
                                ..c
                            });
                }
            }
        }
        items
    }

    /// Resolves the plan and class of `request`; a class outside the plan
    /// is decided at once (`Err`), without counting.
    fn begin<'r>(&self, mode: Mode, request: &Request<'r>) -> Result<Begun<'r>, Early> {
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
        let class = class_of(catalog, request.resource, request.method).map_err(Early::Refused)?;
        let route = plan.route(class);
        if let Some(message) = &route.deny {
            let mut decision = Decision::new(&plan, class.map(|c| catalog.class_names[c].clone()));
            decision.verdict = Verdict::NotInPlan;
            decision.reason = message.to_string();
            return Err(Early::Decided(Box::new(decision)));
        }
        let over_max_cost = (mode != Mode::Record)
            .then(|| {
                route
                    .limits
                    .iter()
                    .filter(|l| !l.shadow)
                    .find_map(|l| over_max_cost(l, request, mode))
            })
            .flatten();
        let run_mode = if over_max_cost.is_some() {
            Mode::Check
        } else {
            mode
        };
        Ok(Begun {
            snapshot,
            plan,
            class,
            account,
            now,
            mode,
            run_mode,
            over_max_cost,
        })
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
        let mut decision = Decision::new(&begun.plan, begun.class_name());
        let (limits, too_large) = route::statuses(&route.limits, outcome, now);
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
                    cost_of(request.cost, &l.unit, mode),
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
                first.limit.name,
                first.remaining,
                first.amount(),
                first.limit.unit
            );
        }
        decision.headers = headers::build(catalog.headers, &decision, now);
        decision
    }

    /// The name of the class `resource` (`[METHOD ]/path`) belongs to, judged
    /// as a decision judges it; `None` when no class matches.
    pub fn class_name(&self, resource: &str) -> Result<Option<Arc<str>>, Error> {
        let catalog = self.catalog();
        Ok(class_of(&catalog, resource, None)?.map(|c| catalog.class_names[c].clone()))
    }

    /// The plan of a subject and the state of every limit of it, counting
    /// nothing: what `WatchQuota` and `Admin.GetSubject` show.
    pub async fn quota(&self, subject: &str, account: &str) -> Result<Quota, StoreError> {
        let account = account_of(subject, account);
        let (plan, now, statuses) = self
            .read(subject, account, |l| !matches!(l.kind, LimitKind::Deny(_)))
            .await?;
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

    /// The plan of `account` and the state of those of its limits that
    /// `keep`, counting nothing (none read when none is kept).
    async fn read(
        &self,
        subject: &str,
        account: &str,
        keep: impl Fn(&Limit) -> bool,
    ) -> Result<(Arc<Plan>, Nanos, Vec<LimitStatus>), StoreError> {
        let snapshot = self.catalog.load_full();
        let now = self.clock.now();
        let plan = self
            .resolver
            .resolve(&snapshot.catalog, snapshot.generation, account, now);
        let limits: Vec<Arc<Limit>> = plan.limits.iter().filter(|l| keep(l)).cloned().collect();
        if limits.is_empty() {
            return Ok((plan, now, Vec::new()));
        }
        let items = self.items(&limits, subject, account, |_| 0);
        let (now, outcome) = self.run(Mode::Check, account, &items, None, None).await?;
        let (statuses, _) = route::statuses(&limits, &outcome, now);
        Ok((plan, now, statuses))
    }

    /// Forgets every counter of `subject` (and, when given, the shared ones
    /// of `account`); how many there were.
    pub async fn reset(&self, subject: &str, account: &str) -> Result<usize, StoreError> {
        let scopes: SmallVec<[&str; 2]> = if account.is_empty() || account == subject {
            smallvec::smallvec![subject]
        } else {
            smallvec::smallvec![subject, account]
        };
        let tag = account_of(subject, account);
        self.counters.reset(tag, &scopes, &self.slots).await
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("catalog", &self.catalog.load())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// The account of a request: the subject when none is given.
pub fn account_of<'a>(subject: &'a str, account: &'a str) -> &'a str {
    if account.is_empty() { subject } else { account }
}

/// The class of `request`'s resource, judged on its normalized path
/// ([`path::normalize`], which the current span records as `resource`); its
/// method from the resource's prefix, else from the request.
fn class_of(
    catalog: &Catalog,
    resource: &str,
    method: Option<&str>,
) -> Result<Option<usize>, Error> {
    let (prefix_method, path) = split_method(resource.trim());
    let path = normal_path(catalog, path)?;
    if path.is_empty() {
        return Ok(None);
    }
    if *path != *resource {
        tracing::Span::current().record("resource", &*path);
    }
    let method = prefix_method.or(method).map(str::to_ascii_uppercase);
    Ok(catalog.class_of(method.as_deref(), &path))
}

/// `path` normalized as `catalog` says, or [`Error::Invalid`] naming the
/// resource.
pub fn normal_path<'p>(catalog: &Catalog, path: &'p str) -> Result<Cow<'p, str>, Error> {
    path::normalize(path, catalog.unsafe_paths).map_err(|e| {
        Error::invalid(
            "resource",
            format!("{path:?} cannot be judged safely: {e} (see paths.unsafe)"),
        )
    })
}

/// Why `request` can never pass `limit`'s `max_cost`, if it cannot.
fn over_max_cost(limit: &Limit, request: &Request<'_>, mode: Mode) -> Option<String> {
    let cost = cost_of(request.cost, &limit.unit, mode);
    limit.max_cost.filter(|max| cost > *max).map(|max| {
        format!(
            "a cost of {cost} {} is above the most one request may cost ({max}, {})",
            limit.unit, limit.name
        )
    })
}
