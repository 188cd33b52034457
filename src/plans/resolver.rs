//! Account → plan, with a moka cache in front of the sources.
//!
//! The sources are, in order: runtime assignments (the admin API's, in
//! [`Runtime`]), the file's static `assignments`, then `default_plan`;
//! the account's active overrides are then applied. A cached answer is tagged
//! with the catalog generation it was resolved under and with the earliest
//! expiry of the overrides in it, so neither a reload nor an expired override
//! is ever served from the cache; `invalidate` drops one account, for changes
//! that must apply on the very next decision. Concurrent misses for one
//! account load once (`get_with`).
//!
//! The cache is moka's synchronous one with a fast hasher: a hit costs tens of
//! nanoseconds on the decision path, where the async cache cost a microsecond
//! (measured with `scripts/load.sh`). Only accounts with an assignment or an
//! override are cached: an account with neither gets the default plan after a
//! lookup of the in-memory sources and is not inserted, because inserting
//! every unassigned subject (per-IP limiting sees millions) churns the cache
//! at about 5 µs a miss (`benches/engine.rs`, `limiter/consume/3_limits/1M_subjects`).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::runtime::Runtime;
use super::{Catalog, Plan, SlotRegistry, overrides};
use crate::engine::Nanos;

type Hasher = hashbrown::DefaultHashBuilder;

/// The cached resolver.
#[derive(Clone)]
pub struct Resolver {
    cache: Cache<String, Cached, Hasher>,
    runtime: Arc<Runtime>,
    slots: Arc<SlotRegistry>,
}

#[derive(Clone)]
struct Cached {
    generation: u64,
    plan: Arc<Plan>,
    valid_until: Nanos,
}

/// Where an account's plan comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The admin API.
    Runtime,
    /// The file's `assignments`.
    Config,
    /// The file's `default_plan`.
    Default,
}

// === impl Resolver ===

impl Resolver {
    /// A resolver caching up to `capacity` accounts, reading runtime
    /// assignments and overrides from `runtime`.
    pub fn new(capacity: u64, runtime: Arc<Runtime>, slots: Arc<SlotRegistry>) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                // A safety net only; invalidation makes changes immediate.
                .time_to_live(Duration::from_secs(300))
                .build_with_hasher(Hasher::default()),
            runtime,
            slots,
        }
    }

    /// The runtime assignments and overrides it reads.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The plan of `account` under `catalog` (generation `generation`) at `now`.
    pub fn resolve(
        &self,
        catalog: &Arc<Catalog>,
        generation: u64,
        account: &str,
        now: Nanos,
    ) -> Arc<Plan> {
        if let Some(c) = self.cache.get(account) {
            if c.generation == generation && now < c.valid_until {
                return c.plan;
            }
            self.cache.invalidate(account);
        }
        let known = self.runtime.knows(account);
        if !known && !catalog.assignments.contains_key(account) {
            return catalog.default_plan.clone();
        }
        let c = self
            .cache
            .get_with_by_ref(account, || self.load(catalog, generation, account, now));
        if c.generation == generation && now < c.valid_until {
            c.plan
        } else {
            // Raced with a reload or an expiry; answer from what is in hand.
            self.load(catalog, generation, account, now).plan
        }
    }

    /// The plan of `account` when the gateway says it is `hinted`: an Admin
    /// assignment still wins (it is newer than any token), and the account's
    /// overrides apply on top. Not cached: without overrides it is the
    /// catalog's plan as it is.
    pub fn resolve_as(
        &self,
        catalog: &Catalog,
        account: &str,
        hinted: &Arc<Plan>,
        now: Nanos,
    ) -> Arc<Plan> {
        let maps = self.runtime.maps();
        if let Some(p) = maps
            .assignments
            .get(account)
            .and_then(|p| catalog.plans.get(p))
        {
            return self.with_overrides(catalog, account, p, now).0;
        }
        if !maps.overrides.contains_key(account) {
            return hinted.clone();
        }
        self.with_overrides(catalog, account, hinted, now).0
    }

    /// Where the plan of `account` comes from, and its name.
    pub fn source(&self, catalog: &Catalog, account: &str) -> (Source, String) {
        if let Some(p) = self
            .runtime
            .assignment(account)
            .filter(|p| catalog.plans.contains_key(p))
        {
            return (Source::Runtime, p);
        }
        match catalog.assignments.get(account) {
            Some(p) => (Source::Config, p.name.to_string()),
            None => (Source::Default, catalog.default_plan.name.to_string()),
        }
    }

    /// Forgets the cached plan of `account`: the next decision resolves anew.
    pub fn invalidate(&self, account: &str) {
        self.cache.invalidate(account);
    }

    /// Forgets every cached plan.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    fn load(&self, catalog: &Catalog, generation: u64, account: &str, now: Nanos) -> Cached {
        let (_, name) = self.source(catalog, account);
        let base = catalog.plans.get(&name).unwrap_or(&catalog.default_plan);
        let (plan, valid_until) = self.with_overrides(catalog, account, base, now);
        Cached {
            generation,
            plan,
            valid_until: valid_until.unwrap_or(Nanos::MAX),
        }
    }

    /// `base` with the active overrides of `account` applied, and when the
    /// first of them expires.
    fn with_overrides(
        &self,
        catalog: &Catalog,
        account: &str,
        base: &Arc<Plan>,
        now: Nanos,
    ) -> (Arc<Plan>, Option<Nanos>) {
        let list = self.runtime.overrides(account);
        let (plan, valid_until) = if list.is_empty() {
            (base.clone(), None)
        } else {
            // Overrides that no longer fit the plan (a reload renamed its
            // limit) are skipped, not fatal.
            let usable: Vec<_> = list
                .into_iter()
                .filter(|o| {
                    let ok = overrides::apply(base, std::slice::from_ref(o), now, &catalog.class_names, &self.slots).is_ok();
                    if !ok {
                        tracing::warn!(account, limit = %o.limit, "override does not fit the plan; skipped");
                    }
                    ok
                })
                .collect();
            match overrides::apply(base, &usable, now, &catalog.class_names, &self.slots) {
                Ok((plan, until)) => (Arc::new(plan), until),
                Err(_) => (base.clone(), None),
            }
        };
        (plan, valid_until)
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("cached", &self.cache.entry_count())
            .field("runtime", &self.runtime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(assign: &str) -> Arc<Catalog> {
        let yaml = format!(
            "plans: {{ free: {{ limits: [ {{ rate: 1/minute }} ] }}, pro: {{ limits: [ {{ rate: 9/minute }} ] }} }}\n\
             default_plan: free\nassignments: {{ {assign} }}\n"
        );
        Arc::new(crate::config::parse("t.yaml", &yaml, &SlotRegistry::default()).expect("valid"))
    }

    fn resolver() -> Resolver {
        Resolver::new(
            100,
            Arc::new(Runtime::default()),
            Arc::new(SlotRegistry::default()),
        )
    }

    #[test]
    fn assigned_accounts_are_cached_per_generation() {
        let r = resolver();
        let one = catalog("a: pro");
        assert_eq!(&*r.resolve(&one, 1, "a", 0).name, "pro");
        assert_eq!(&*r.resolve(&one, 1, "b", 0).name, "free");
        r.cache.run_pending_tasks();
        assert_eq!(
            r.cache.entry_count(),
            1,
            "only assigned accounts are cached"
        );
        // A new catalog generation is never answered from the old one.
        let two = catalog("b: pro");
        assert_eq!(&*r.resolve(&two, 2, "a", 0).name, "free");
        assert_eq!(&*r.resolve(&two, 2, "b", 0).name, "pro");
    }

    #[test]
    fn invalidation_drops_one_account() {
        let r = resolver();
        let c = catalog("a: pro, b: pro");
        r.resolve(&c, 1, "a", 0);
        r.resolve(&c, 1, "b", 0);
        r.invalidate("a");
        assert!(r.cache.get("a").is_none());
        assert!(r.cache.get("b").is_some());
    }
}
