//! The runtime side of plans: assignments and overrides made through the
//! admin API (or by another replica), as the resolver reads them.
//!
//! Reads come from an in-memory copy swapped whole on every change
//! (copy-on-write behind an `ArcSwap`), so the decision path never takes a
//! lock here. Whoever makes a change durable (`crate::state`) applies it here
//! only after it is stored. Admin changes are rare, so copying the maps is
//! cheap next to storing them.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::overrides::Override;

/// Runtime assignments and overrides.
#[derive(Debug, Default)]
pub struct Runtime {
    maps: ArcSwap<Maps>,
    /// Serializes writers, so no change is lost between copy and swap.
    write: Mutex<()>,
}

/// One copy of every assignment and override.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Maps {
    /// Account → plan name.
    pub assignments: HashMap<String, String>,
    /// Account → its overrides.
    pub overrides: HashMap<String, Vec<Override>>,
}

/// Where an account's billing anchor day is kept: among the assignments
/// (stored, replicated and restored with them), under a key no account can
/// have (it starts with a NUL, which no account name holds).
pub fn anchor_key(account: &str) -> String {
    format!("\u{0}anchor\u{0}{account}")
}

// === impl Runtime ===

impl Runtime {
    /// Starts from `maps`.
    pub fn new(maps: Maps) -> Self {
        Self {
            maps: ArcSwap::from_pointee(maps),
            write: Mutex::new(()),
        }
    }

    /// The current maps.
    pub fn maps(&self) -> Arc<Maps> {
        self.maps.load_full()
    }

    /// The runtime plan of `account`, if one was set.
    pub fn assignment(&self, account: &str) -> Option<String> {
        self.maps.load().assignments.get(account).cloned()
    }

    /// Whether `account` has anything here (an assignment or overrides).
    pub fn knows(&self, account: &str) -> bool {
        let maps = self.maps.load();
        maps.assignments.contains_key(account) || maps.overrides.contains_key(account)
    }

    /// The day `account`'s months start on (`SetBillingAnchor`), if set.
    pub fn anchor(&self, account: &str) -> Option<u8> {
        self.maps
            .load()
            .assignments
            .get(&anchor_key(account))
            .and_then(|d| d.parse().ok())
    }

    /// The overrides of `account`.
    pub fn overrides(&self, account: &str) -> Vec<Override> {
        self.maps
            .load()
            .overrides
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets (`Some`) or clears (`None`) the plan of `account`; the previous one.
    pub fn set_assignment(&self, account: &str, plan: Option<&str>) -> Option<String> {
        self.change(|maps| match plan {
            Some(p) => maps.assignments.insert(account.to_owned(), p.to_owned()),
            None => maps.assignments.remove(account),
        })
    }

    /// Replaces the overrides of `account` (none: removes them).
    pub fn set_overrides(&self, account: &str, list: Vec<Override>) {
        self.change(|maps| {
            if list.is_empty() {
                maps.overrides.remove(account);
            } else {
                maps.overrides.insert(account.to_owned(), list);
            }
        });
    }

    /// Replaces what is known of `account` with what another replica wrote;
    /// whether it changed.
    pub fn replace_account(
        &self,
        account: &str,
        plan: Option<String>,
        overrides: Vec<Override>,
    ) -> bool {
        self.change(|maps| {
            let same = maps.assignments.get(account) == plan.as_ref()
                && maps.overrides.get(account).map_or(&[][..], Vec::as_slice)
                    == overrides.as_slice();
            if same {
                return false;
            }
            match plan {
                Some(p) => maps.assignments.insert(account.to_owned(), p),
                None => maps.assignments.remove(account),
            };
            if overrides.is_empty() {
                maps.overrides.remove(account);
            } else {
                maps.overrides.insert(account.to_owned(), overrides);
            }
            true
        })
    }

    /// Replaces everything with `maps` (a full read of the shared store);
    /// returns the accounts that changed.
    pub fn replace_all(&self, maps: Maps) -> Vec<String> {
        let _guard = self.write.lock();
        let old = self.maps.load_full();
        let mut changed: Vec<String> = old
            .assignments
            .keys()
            .chain(old.overrides.keys())
            .chain(maps.assignments.keys())
            .chain(maps.overrides.keys())
            .filter(|a| {
                old.assignments.get(*a) != maps.assignments.get(*a)
                    || old.overrides.get(*a) != maps.overrides.get(*a)
            })
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        self.maps.store(Arc::new(maps));
        changed
    }

    fn change<T>(&self, f: impl FnOnce(&mut Maps) -> T) -> T {
        let _guard = self.write.lock();
        let mut maps = (**self.maps.load()).clone();
        let out = f(&mut maps);
        self.maps.store(Arc::new(maps));
        out
    }
}
