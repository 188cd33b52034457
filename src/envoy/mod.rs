//! Envoy's external rate limit service (`envoy.service.ratelimit.v3`), a
//! drop-in for envoyproxy/ratelimit.
//!
//! Two kinds of domains answer `ShouldRateLimit`:
//! - **rule files** in envoyproxy/ratelimit's format ([`rules`]), loaded from
//!   `--envoy-config DIR`, matched and counted as the reference does, with
//!   opt-in sliding windows, token buckets, bursts, any window and several
//!   limits on one descriptor;
//! - **plan-aware domains** (`envoy.domains` in tollgate's configuration),
//!   whose descriptor entries name the subject, account, plan, resource and
//!   costs, so Envoy's requests go through the plans like `Consume`.
//!
//! This module adapts; the counting is the engine's and the plans' own.

mod answer;
mod compile;
mod files;
mod load;
mod metadata;
pub mod raw;
pub mod rules;
mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Error;
use crate::config::reload::{Reloaded, Reloader};
use crate::plans::SlotRegistry;
pub use rules::RuleSet;
pub use service::EnvoyService;

/// How `ShouldRateLimit` answers beyond the rules; the reference's
/// environment settings, as flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add `RateLimit-Limit`, `-Remaining` and `-Reset` (these names, or
    /// others) to the response, from the most constraining descriptor.
    pub response_headers: Option<HeaderNames>,
    /// Never answer OVER_LIMIT overall (statuses still tell).
    pub shadow_mode: bool,
    /// Every descriptor is in quota mode.
    pub quota_mode: bool,
    /// Return the request and the passed descriptors' metadata as dynamic metadata.
    pub dynamic_metadata: bool,
}

/// The names of the optional response headers.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// The limit.
    pub limit: String,
    /// What is left.
    pub remaining: String,
    /// Seconds until it resets.
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// The rule files in force, and where they come from.
#[derive(Debug)]
pub struct RuleSource {
    dir: Option<PathBuf>,
    merge: bool,
    slots: Arc<SlotRegistry>,
    rules: ArcSwap<RuleSet>,
}

// === impl RuleSource ===

impl RuleSource {
    /// Loads the rule files of `dir` (none: no rule domains).
    pub fn load(
        dir: Option<PathBuf>,
        merge: bool,
        slots: Arc<SlotRegistry>,
    ) -> Result<Self, Error> {
        let rules = match &dir {
            Some(d) => RuleSet::load_dir(d, merge, &slots)?,
            None => RuleSet::empty(&slots),
        };
        Ok(Self {
            dir,
            merge,
            slots,
            rules: ArcSwap::from_pointee(rules),
        })
    }

    /// The rules in force (held across the decision's `.await`s).
    pub fn current(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// What re-reads the directory: a valid set replaces the running one
    /// (counters stay: they are keyed by domain, entries and window), an
    /// invalid one is refused and the running rules stay.
    pub fn reloader(self: &Arc<Self>) -> Reloader {
        let this = self.clone();
        Reloader::new("envoy rules", self.dir.clone(), fingerprint, move |dir| {
            let set = RuleSet::load_dir(dir, this.merge, &this.slots)?;
            let domains = set.domains();
            this.rules.store(Arc::new(set));
            Ok(Reloaded {
                path: dir.to_owned(),
                domains,
                ..Reloaded::default()
            })
        })
    }
}

/// Every rule file's name and content, to tell a real change from noise.
fn fingerprint(dir: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for path in rules::rule_files(dir).ok()? {
        out.extend_from_slice(path.as_os_str().as_encoded_bytes());
        out.push(0);
        out.extend(std::fs::read(&path).ok()?);
        out.push(0);
    }
    Some(out)
}
