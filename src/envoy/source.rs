//! The rule files in force, swapped whole on reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::rules::RuleSet;
use crate::config::ConfigError;
use crate::config::reload::{Reloaded, Reloader};
use crate::plans::SlotRegistry;

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
    ) -> Result<Self, ConfigError> {
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

    /// Serves `rules`, read from no directory, so never reloaded (fuzzing
    /// and tests that build rules from text).
    pub fn fixed(rules: RuleSet, slots: Arc<SlotRegistry>) -> Self {
        Self {
            dir: None,
            merge: false,
            slots,
            rules: ArcSwap::from_pointee(rules),
        }
    }

    /// The directory the rules come from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
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
        Reloader::new(
            ("envoy rules", "the running rules stay"),
            self.dir.clone(),
            fingerprint,
            move |dir| {
                let set = RuleSet::load_dir(dir, this.merge, &this.slots)?;
                let domains = set.domains();
                this.rules.store(Arc::new(set));
                Ok(Reloaded {
                    path: dir.to_owned(),
                    domains,
                    ..Reloaded::default()
                })
            },
        )
    }
}

/// Every rule file's name and content, to tell a real change from noise.
fn fingerprint(dir: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for path in super::files::rule_files(dir).ok()? {
        out.extend_from_slice(path.as_os_str().as_encoded_bytes());
        out.push(0);
        out.extend(std::fs::read(&path).ok()?);
        out.push(0);
    }
    Some(out)
}
