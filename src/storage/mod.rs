//! Where counters live, behind one seam: [`Counters`].
//!
//! `memory` is the embedded default: exact, in-process, bounded, decided by
//! the engine under the store's locks. `redis` is shared by several replicas:
//! exact across them, the same algorithms run by one script call a decision.
//! Everything above this module (the limiter, the watch hub, the services)
//! counts through [`Counters`] and never names a backend; only the server's
//! wiring does, for what one backend has and the other has not (snapshots
//! and eviction for memory, notices and health for Redis).

mod error;
pub mod memory;
pub mod redis;

use smallvec::SmallVec;

use crate::engine::{Engine, Item, Mode, Nanos, Outcome};
use crate::plans::SlotRegistry;
use memory::MemoryStore;
use redis::{Counter, RedisStore, SharedCounters};

pub use error::StoreError;

/// The counters of a limiter: in this process, or shared through Redis.
#[derive(Debug)]
pub enum Counters {
    /// The engine over the in-memory store.
    Memory(Engine<MemoryStore>),
    /// Redis, shared by every replica started with the same URL.
    Redis(Box<SharedCounters>),
}

/// Whom to notify of a consumption, so watchers elsewhere hear of it (Redis only: the script
/// publishes when some replica watches the account).
#[derive(Debug, Clone, Copy)]
pub struct Notify<'a> {
    /// The subject counted.
    pub subject: &'a str,
    /// Its account (never empty).
    pub account: &'a str,
}

// === impl Counters ===

impl Counters {
    /// Runs one decision's `items` (all under hash tag `tag`, the account or
    /// an Envoy descriptor) as one unit, by `deadline` (its caller's, if it
    /// has one). Returns the time it was decided at (Redis's own clock when
    /// shared, else `now`) and the outcome. A store failure either errs or,
    /// when Redis fails open, admits without counting.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        mode: Mode,
        tag: &str,
        items: &[Item<'_>],
        notify: Option<Notify<'_>>,
        slots: &SlotRegistry,
        now: Nanos,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Nanos, Outcome), StoreError> {
        match self {
            Self::Memory(engine) => Ok((now, engine.decide(mode, now, items))),
            // Boxed: the Redis future is kilobytes, and every decision's
            // future would otherwise carry (and move) it, in memory too.
            Self::Redis(shared) => {
                Box::pin(async move {
                    let counters: SmallVec<[Counter; 4]> = items
                        .iter()
                        .map(|i| Counter {
                            key: RedisStore::key(
                                tag,
                                i.key.scope,
                                &slots.identity(i.key.slot).unwrap_or_default(),
                            ),
                            algorithm: i.algorithm,
                            amount: i.rate.amount(),
                            window: i.rate.window(),
                            cost: i.cost,
                            period: Counter::periods(i.rate),
                        })
                        .collect();
                    let notice = notify.map(|c| shared.notice(c.subject, c.account));
                    shared.run(mode, counters, notice, now, deadline).await
                })
                .await
            }
        }
    }

    /// Gives back what each item's `Charged` counted (a reservation
    /// settled for less, or released), at `now` (in Redis: at Redis's time,
    /// returned), the items all under hash tag `tag`. (A reservation kept
    /// in Redis is settled there by its own script; this is the same
    /// refund, one call.)
    pub async fn refund(
        &self,
        tag: &str,
        items: &[(Item<'_>, crate::engine::algorithm::Charged)],
        slots: &SlotRegistry,
        now: Nanos,
    ) -> Result<Nanos, StoreError> {
        match self {
            Self::Memory(engine) => {
                engine.refund(now, items);
                Ok(now)
            }
            Self::Redis(shared) => {
                let counters: Vec<(Counter, crate::engine::algorithm::Charged)> = items
                    .iter()
                    .map(|(i, charged)| {
                        let key = RedisStore::key(
                            tag,
                            i.key.scope,
                            &slots.identity(i.key.slot).unwrap_or_default(),
                        );
                        let counter = Counter {
                            key,
                            algorithm: i.algorithm,
                            amount: i.rate.amount(),
                            window: i.rate.window(),
                            cost: 0,
                            period: None,
                        };
                        (counter, *charged)
                    })
                    .collect();
                shared.store.refund(&counters).await
            }
        }
    }

    /// Forgets every counter of `scopes` (kept under hash tag `tag`); how
    /// many there were.
    pub async fn reset(
        &self,
        tag: &str,
        scopes: &[&str],
        slots: &SlotRegistry,
    ) -> Result<usize, StoreError> {
        use crate::engine::CounterStore;
        match self {
            Self::Memory(engine) => Ok(scopes.iter().map(|s| engine.store().reset(s)).sum()),
            Self::Redis(shared) => {
                let keys: Vec<String> = slots
                    .identities()
                    .iter()
                    .flat_map(|id| scopes.iter().map(move |s| RedisStore::key(tag, s, id)))
                    .collect();
                shared.store.delete(&keys).await
            }
        }
    }

    /// Tells the other replicas that `account` is watched here, for a while
    /// (see [`redis::runtime::MARKER_TTL`]); nothing to do in memory. A
    /// failure only costs updates from other replicas, so it is logged, not
    /// returned.
    pub async fn mark_watched(&self, account: &str) {
        let Self::Redis(shared) = self else {
            return;
        };
        let marker = RedisStore::marker(account);
        if let Err(e) = shared.store.mark(&marker, redis::runtime::MARKER_TTL).await {
            tracing::debug!(error = %e, "watch marker not set; updates from other replicas may be missed");
        }
    }

    /// How often a watched account's marker must be refreshed so other
    /// replicas keep announcing its consumption; `None` in memory.
    pub fn mark_every(&self) -> Option<std::time::Duration> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(_) => Some(redis::runtime::MARKER_TTL / 3),
        }
    }

    /// The in-memory store, when counting here.
    pub fn memory(&self) -> Option<&MemoryStore> {
        match self {
            Self::Memory(engine) => Some(engine.store()),
            Self::Redis(_) => None,
        }
    }

    /// The Redis counters, when shared.
    pub fn shared(&self) -> Option<&SharedCounters> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(shared) => Some(shared),
        }
    }
}

impl From<MemoryStore> for Counters {
    fn from(store: MemoryStore) -> Self {
        Self::Memory(Engine::new(store))
    }
}

impl From<SharedCounters> for Counters {
    fn from(shared: SharedCounters) -> Self {
        Self::Redis(Box::new(shared))
    }
}
