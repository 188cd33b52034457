//! envoyproxy/ratelimit rule files, compiled, and matched as the reference
//! matches them.
//!
//! This module owns the compiled model and the matching, read on every
//! `ShouldRateLimit`; building it from files is `load.rs` and `compile.rs`,
//! which point down here and which this module does not know.
//!
//! A [`RuleSet`] holds every domain of a directory of rule files. Matching
//! follows the reference: a request descriptor's entries walk the domain's
//! tree level by level; at each level a `key`+`value` rule wins over a
//! wildcard value (the first that matches, in file order), which wins over a
//! `key`-only rule; a limit applies only when the rule holding it is reached
//! by the descriptor's last entry. Unlike the reference, keys and values are
//! matched separately (it matches `key + "_" + value` strings, so `a_b`=`c`
//! and `a`=`b_c` collide), and every level only accepts its own keys.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Algorithm, Nanos, Rate, clock::SECOND};
use crate::plans::SlotRegistry;
use crate::plans::glob::Glob;

// Listing the directory lives with reading it, in files.rs; re-exported for
// the reload watcher's fingerprint, which must see the files loading reads.
pub use super::files::rule_files;

/// Every domain of a rule directory.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Domain → its tree; filled by loading ([`super::load`]).
    pub(super) domains: HashMap<String, Level>,
    /// Counter slots of a plain fixed window per [`Unit`], for limits Envoy
    /// sends in the request.
    unit_slots: [u32; Unit::ALL.len()],
}

/// A time unit of Envoy's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3,600 s.
    Hour,
    /// 86,400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days, as the reference counts a month.
    Month,
    /// 365 days.
    Year,
}

/// The rule a descriptor matched.
#[derive(Debug)]
pub struct Rule {
    /// Its limits, counted together; empty when unlimited.
    pub limits: Vec<RuleLimit>,
    /// Answered OK without counting.
    pub unlimited: bool,
    /// Names other rules may replace it by.
    pub names: Vec<Arc<str>>,
    /// Names of the limits it replaces.
    pub replaces: Vec<Arc<str>>,
    /// Never answers OVER_LIMIT.
    pub shadow_mode: bool,
    /// Over the limit only when every quota-mode descriptor is.
    pub quota_mode: bool,
    /// Returned in the dynamic metadata when it passes.
    pub metadata: Option<prost_types::Struct>,
}

/// One limit of a rule.
#[derive(Debug, Clone)]
pub struct RuleLimit {
    /// Shown as `current_limit.name`.
    pub name: Arc<str>,
    /// Requests per window; 0 refuses everything.
    pub amount: u32,
    /// The window.
    pub window: Nanos,
    /// The unit Envoy is told (`None` for a window that is no whole unit).
    pub unit: Option<Unit>,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Counter identity.
    pub slot: u32,
    /// A burst ceiling and its counter, for token buckets with `burst`.
    pub burst: Option<(Rate, u32)>,
}

/// A match: the rule, and per entry the wildcard a shared counter uses
/// instead of the value (`share_threshold`).
#[derive(Debug)]
pub struct Matched<'a> {
    /// The rule.
    pub rule: &'a Arc<Rule>,
    /// Per entry index, the pattern that replaces its value in the counter key.
    pub shared: Vec<Option<&'a str>>,
}

/// One level of a domain's tree.
#[derive(Debug, Default)]
pub(super) struct Level {
    pub(super) keys: HashMap<String, KeyRules>,
}

/// The rules of one key at one level.
#[derive(Debug, Default)]
pub(super) struct KeyRules {
    pub(super) exact: HashMap<String, Node>,
    pub(super) wildcards: Vec<(Glob, Node)>,
    pub(super) any: Option<Box<Node>>,
}

/// A rule of the tree: its limit, and the level below.
#[derive(Debug, Default)]
pub(super) struct Node {
    pub(super) rule: Option<Arc<Rule>>,
    pub(super) share: bool,
    pub(super) children: Level,
}

// === impl Unit ===

impl Unit {
    /// Every unit, in the order of `unit_slots`.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Its length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 604_800,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        }
    }

    /// Its name in rule files (any case).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// `second`, `minute`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// The unit a window is exactly, if any.
    pub fn of_window(window: Nanos) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|u| u.seconds() * SECOND == window)
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|u| *u == self)
            .expect("every unit is in ALL")
    }
}

// === impl RuleSet ===

impl RuleSet {
    /// An empty rule set (every domain unknown).
    pub fn empty(slots: &SlotRegistry) -> Self {
        Self {
            domains: HashMap::new(),
            unit_slots: unit_slots(slots),
        }
    }

    /// The number of domains.
    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// Whether `domain` has rules.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The counter slot of a plain fixed window of `unit`.
    pub fn unit_slot(&self, unit: Unit) -> u32 {
        self.unit_slots[unit.index()]
    }

    /// The rule a descriptor's entries reach in `domain`, if any.
    pub fn find<'a>(&'a self, domain: &str, entries: &[(&str, &str)]) -> Option<Matched<'a>> {
        let mut level = self.domains.get(domain)?;
        let mut shared = Vec::new();
        let mut found = None;
        for (i, (key, value)) in entries.iter().enumerate() {
            let Some((node, via)) = level.find(key, value) else {
                break;
            };
            if node.share {
                shared.resize(i + 1, None);
                shared[i] = via;
            }
            if i + 1 == entries.len() {
                found = node.rule.as_ref();
            }
            if node.children.keys.is_empty() {
                break;
            }
            level = &node.children;
        }
        found.map(|rule| Matched { rule, shared })
    }
}

fn unit_slots(slots: &SlotRegistry) -> [u32; Unit::ALL.len()] {
    Unit::ALL.map(|u| {
        let window = u.seconds() * SECOND;
        slots.intern_counter(
            &identity(window, Algorithm::FixedWindow),
            Algorithm::FixedWindow,
            window,
        )
    })
}

/// The counter identity of an Envoy limit: its window and algorithm. The
/// descriptor's entries are the counter's scope, so, as in the reference, a
/// counter is the domain, the entries and the window.
pub(super) fn identity(window: Nanos, algorithm: Algorithm) -> String {
    format!("envoy|{window}|{}", algorithm.as_str())
}

// === impl Level ===

impl Level {
    /// The node an entry selects, and the wildcard it matched through.
    fn find(&self, key: &str, value: &str) -> Option<(&Node, Option<&str>)> {
        let rules = self.keys.get(key)?;
        if let Some(node) = rules.exact.get(value) {
            return Some((node, None));
        }
        if let Some((w, node)) = rules.wildcards.iter().find(|(w, _)| w.matches(value)) {
            return Some((node, Some(w.as_str())));
        }
        rules.any.as_deref().map(|node| (node, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> RuleSet {
        RuleSet::parse(
            &[("t.yaml".into(), yaml.into())],
            false,
            &SlotRegistry::default(),
        )
        .expect("valid rules")
    }

    #[test]
    fn most_specific_rule_at_the_request_depth() {
        let s = set(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 10}\n  - key: k\n    value: v\n    rate_limit: {unit: second, requests_per_unit: 0}\n  - key: a\n    value: b\n    descriptors:\n      - key: c\n        rate_limit: {unit: minute, requests_per_unit: 5}\n",
        );
        let amount = |e: &[(&str, &str)]| s.find("d", e).map(|m| m.rule.limits[0].amount);
        assert_eq!(amount(&[("k", "x")]), Some(10));
        assert_eq!(amount(&[("k", "v")]), Some(0));
        assert_eq!(amount(&[("a", "b")]), None, "the limit is one level deeper");
        assert_eq!(amount(&[("a", "b"), ("c", "1")]), Some(5));
        assert_eq!(amount(&[("a", "b"), ("c", "1"), ("e", "f")]), None);
        assert!(s.find("other", &[("k", "x")]).is_none());
    }

    #[test]
    fn keys_and_values_never_collide() {
        let s = set(
            "domain: d\ndescriptors:\n  - key: a\n    value: b_c\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        );
        assert!(s.find("d", &[("a_b", "c")]).is_none());
        assert!(s.find("d", &[("a", "b_c")]).is_some());
    }
}
