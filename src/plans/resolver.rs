//! Account → plan, with a moka cache in front of the sources.
//!
//! The sources are, in order: runtime assignments (added by the admin API),
//! the file's static `assignments`, then `default_plan`. A cached answer is
//! tagged with the catalog generation it was resolved under, so a reload never
//! serves a plan from the previous file; `invalidate` drops one account, for
//! plan changes that must apply on the very next decision. Concurrent misses
//! for one account load once (`get_with`).
//!
//! The cache is moka's synchronous one with a fast hasher: a hit costs tens of
//! nanoseconds on the decision path, where the async cache cost a microsecond
//! (measured with `scripts/load.sh`). Only accounts with an assignment are
//! cached: an account without one gets the default plan after a source lookup
//! and is not inserted, because inserting every unassigned subject (per-IP
//! limiting sees millions) churns the cache at about 5 µs a miss (measured by
//! `benches/engine.rs`, `limiter/consume/3_limits/1M_subjects`).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::{Catalog, Plan};

type Hasher = hashbrown::DefaultHashBuilder;

/// The cached resolver.
#[derive(Debug, Clone)]
pub struct Resolver {
    cache: Cache<String, (u64, Arc<Plan>), Hasher>,
}

// === impl Resolver ===

impl Resolver {
    /// A resolver caching up to `capacity` accounts.
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                // A safety net only; invalidation makes changes immediate.
                .time_to_live(Duration::from_secs(300))
                .build_with_hasher(Hasher::default()),
        }
    }

    /// The plan of `account` under `catalog` (generation `generation`).
    pub fn resolve(&self, catalog: &Arc<Catalog>, generation: u64, account: &str) -> Arc<Plan> {
        if let Some((g, plan)) = self.cache.get(account) {
            if g == generation {
                return plan;
            }
            self.cache.invalidate(account);
        }
        let Some(assigned) = Self::assigned(catalog, account) else {
            return catalog.default_plan.clone();
        };
        let (g, plan) = self
            .cache
            .get_with_by_ref(account, || (generation, assigned.clone()));
        if g == generation {
            plan
        } else {
            // Raced with a reload; answer from the catalog in hand.
            assigned
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

    /// The plan assigned to `account`, if any: the source behind the cache.
    fn assigned(catalog: &Catalog, account: &str) -> Option<Arc<Plan>> {
        catalog.assignments.get(account).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::SlotRegistry;

    fn catalog(assign: &str) -> Arc<Catalog> {
        let yaml = format!(
            "plans: {{ free: {{ limits: [ {{ rate: 1/minute }} ] }}, pro: {{ limits: [ {{ rate: 9/minute }} ] }} }}\n\
             default_plan: free\nassignments: {{ {assign} }}\n"
        );
        Arc::new(crate::config::parse("t.yaml", &yaml, &SlotRegistry::default()).expect("valid"))
    }

    #[test]
    fn assigned_accounts_are_cached_per_generation() {
        let r = Resolver::new(100);
        let one = catalog("a: pro");
        assert_eq!(&*r.resolve(&one, 1, "a").name, "pro");
        assert_eq!(&*r.resolve(&one, 1, "b").name, "free");
        r.cache.run_pending_tasks();
        assert_eq!(
            r.cache.entry_count(),
            1,
            "only assigned accounts are cached"
        );
        // A new catalog generation is never answered from the old one.
        let two = catalog("b: pro");
        assert_eq!(&*r.resolve(&two, 2, "a").name, "free");
        assert_eq!(&*r.resolve(&two, 2, "b").name, "pro");
    }

    #[test]
    fn invalidation_drops_one_account() {
        let r = Resolver::new(100);
        let c = catalog("a: pro, b: pro");
        r.resolve(&c, 1, "a");
        r.resolve(&c, 1, "b");
        r.invalidate("a");
        assert!(r.cache.get("a").is_none());
        assert!(r.cache.get("b").is_some());
    }
}
