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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Error;
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
    ok: AtomicU64,
    failed: AtomicU64,
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
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The rules in force (held across the decision's `.await`s).
    pub fn current(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// The directory, if rule files are served.
    pub fn dir(&self) -> Option<&PathBuf> {
        self.dir.as_ref()
    }

    /// Successful and failed reloads so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Re-reads the directory; a valid set replaces the running one (counters
    /// stay: they are keyed by domain, entries and window), an invalid one
    /// is refused and the running rules stay. `None` when no directory is set.
    pub fn reload(&self) -> Option<Result<usize, Error>> {
        let dir = self.dir.as_ref()?;
        Some(match RuleSet::load_dir(dir, self.merge, &self.slots) {
            Ok(set) => {
                let domains = set.domains();
                self.rules.store(Arc::new(set));
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(config.path = %dir.display(), domains, "envoy rules reloaded");
                Ok(domains)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(config.path = %dir.display(), error = %e, "envoy rules reload failed; the running rules stay");
                Err(e)
            }
        })
    }

    /// Reloads whenever a rule file of the directory changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let read = {
            let dir = dir.clone();
            move || fingerprint(&dir)
        };
        crate::config::reload::watch_dir(dir, read, move || drop(self.reload()), shutdown).await;
    }
}

/// Every rule file's name and content, to tell a real change from noise.
fn fingerprint(dir: &std::path::Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for path in rules::rule_files(dir).ok()? {
        out.extend_from_slice(path.as_os_str().as_encoded_bytes());
        out.push(0);
        out.extend(std::fs::read(&path).ok()?);
        out.push(0);
    }
    Some(out)
}
