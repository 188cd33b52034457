//! envoyproxy/ratelimit rule files, compiled and matched as the reference
//! matches them.
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
use std::path::Path;
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::raw::{RateLimits, RawDescriptor, RawFile, RawRateLimit};
use crate::config::{self, Error, Problem};
use crate::engine::{Algorithm, Nanos, Rate, clock::SECOND};
use crate::plans::SlotRegistry;

/// Every domain of a rule directory.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<String, Level>,
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
struct Level {
    keys: HashMap<String, KeyRules>,
}

/// The rules of one key at one level.
#[derive(Debug, Default)]
struct KeyRules {
    exact: HashMap<String, Node>,
    wildcards: Vec<(Wildcard, Node)>,
    any: Option<Box<Node>>,
}

#[derive(Debug, Default)]
struct Node {
    rule: Option<Arc<Rule>>,
    share: bool,
    children: Level,
}

/// A value pattern: literal parts between `*`s.
#[derive(Debug)]
struct Wildcard {
    pattern: String,
    parts: Vec<String>,
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

    /// Loads every file of `dir` not starting with a dot (as the reference
    /// loads its runtime directory), in name order. With `merge`, files may add to one domain;
    /// otherwise a domain in two files is an error, as in the reference.
    pub fn load_dir(dir: &Path, merge: bool, slots: &SlotRegistry) -> Result<Self, Error> {
        let files = rule_files(dir)?;
        let mut texts = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            texts.push((path.display().to_string(), text));
        }
        Self::parse(&texts, merge, slots)
    }

    /// Compiles rule files given as (name, text).
    pub fn parse(
        files: &[(String, String)],
        merge: bool,
        slots: &SlotRegistry,
    ) -> Result<Self, Error> {
        let mut set = Self::empty(slots);
        let mut problems = Vec::new();
        for (file, text) in files {
            let raw: RawFile = match config::deserialize(file, text) {
                Ok(raw) => raw,
                Err(Error::Invalid(mut list)) => {
                    problems.append(&mut list);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut c = Compiler {
                file,
                slots,
                problems: &mut problems,
            };
            let domain = match &raw.domain {
                Some(d) if !d.value.trim().is_empty() => d,
                d => {
                    let line = d.as_ref().map_or(1, |d| d.referenced.line());
                    c.push(
                        line,
                        "domain",
                        "config file cannot have empty domain".into(),
                    );
                    continue;
                }
            };
            if set.domains.contains_key(&domain.value) && !merge {
                c.push(
                    domain.referenced.line(),
                    "domain",
                    format!(
                        "duplicate domain '{}' in config file (set --envoy-merge-domains to merge files of one domain)",
                        domain.value
                    ),
                );
                continue;
            }
            let level = set.domains.entry(domain.value.clone()).or_default();
            c.level(
                level,
                raw.descriptors.as_deref().unwrap_or_default(),
                "descriptors",
            );
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(Error::Invalid(problems))
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
    Unit::ALL.map(|u| slots.intern(&identity(u.seconds() * SECOND, Algorithm::FixedWindow)))
}

/// The counter identity of an Envoy limit: its window and algorithm. The
/// descriptor's entries are the counter's scope, so, as in the reference, a
/// counter is the domain, the entries and the window.
fn identity(window: Nanos, algorithm: Algorithm) -> String {
    format!("envoy|{window}|{}", algorithm.as_str())
}

/// The rule files of `dir`, in name order.
pub fn rule_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, Error> {
    let read = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<_> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
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
            return Some((node, Some(w.pattern.as_str())));
        }
        rules.any.as_deref().map(|node| (node, None))
    }
}

// === impl Wildcard ===

impl Wildcard {
    fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_owned(),
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// Each `*` matches any run of characters, the empty one included.
    fn matches(&self, value: &str) -> bool {
        let (first, rest) = self
            .parts
            .split_first()
            .expect("split gives one part at least");
        let Some((last, middle)) = rest.split_last() else {
            return value == first;
        };
        let fixed: usize = self.parts.iter().map(String::len).sum();
        if value.len() < fixed
            || !value.starts_with(first.as_str())
            || !value.ends_with(last.as_str())
        {
            return false;
        }
        let mut inner = &value[first.len()..value.len() - last.len()];
        for part in middle {
            match inner.find(part.as_str()) {
                Some(i) => inner = &inner[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Compiles one file's descriptors, collecting problems.
struct Compiler<'a> {
    file: &'a str,
    slots: &'a SlotRegistry,
    problems: &'a mut Vec<Problem>,
}

impl Compiler<'_> {
    fn push(&mut self, line: u64, field: &str, message: String) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        });
    }

    fn level(&mut self, level: &mut Level, descriptors: &[Spanned<RawDescriptor>], field: &str) {
        for (i, d) in descriptors.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let line = d.referenced.line();
            let d = &d.value;
            let Some(key) = d.key.as_ref().filter(|k| !k.value.is_empty()) else {
                self.push(line, &field, "descriptor has empty key".into());
                continue;
            };
            let value = d
                .value
                .as_ref()
                .map(|v| v.value.as_str())
                .filter(|v| !v.is_empty());
            let is_wildcard = value.is_some_and(|v| v.contains('*'));
            if d.share_threshold && !is_wildcard {
                self.push(
                    line,
                    &format!("{field}.share_threshold"),
                    "share_threshold can only be used with wildcard values (containing '*')".into(),
                );
            }
            let mut node = Node {
                rule: self.rule(d, &field, line),
                share: d.share_threshold && is_wildcard,
                children: Level::default(),
            };
            if let Some(children) = &d.descriptors {
                self.level(
                    &mut node.children,
                    children,
                    &format!("{field}.descriptors"),
                );
            }
            let rules = level.keys.entry(key.value.clone()).or_default();
            let duplicate = match value {
                None if rules.any.is_some() => true,
                None => {
                    rules.any = Some(Box::new(node));
                    false
                }
                Some(v) if is_wildcard => {
                    if rules.wildcards.iter().any(|(w, _)| w.pattern == v) {
                        true
                    } else {
                        rules.wildcards.push((Wildcard::new(v), node));
                        false
                    }
                }
                Some(v) => rules.exact.insert(v.to_owned(), node).is_some(),
            };
            if duplicate {
                let composite =
                    value.map_or_else(|| key.value.clone(), |v| format!("{}={v}", key.value));
                self.push(
                    line,
                    &field,
                    format!("duplicate descriptor composite key '{composite}'"),
                );
            }
        }
    }

    fn rule<'r>(&mut self, d: &'r RawDescriptor, field: &str, line: u64) -> Option<Arc<Rule>> {
        let many = |list: &'r [Spanned<RawRateLimit>],
                    name: &str|
         -> Vec<(u64, &'r RawRateLimit, String)> {
            list.iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        r.referenced.line(),
                        &r.value,
                        format!("{field}.{name}[{i}]"),
                    )
                })
                .collect()
        };
        let raws = match (&d.rate_limit, &d.rate_limits) {
            (None, None) => return None,
            (Some(one), None) => match &one.value {
                RateLimits::One(r) => {
                    vec![(one.referenced.line(), &**r, format!("{field}.rate_limit"))]
                }
                RateLimits::Many(list) => many(list, "rate_limit"),
            },
            (None, Some(list)) => many(&list.value, "rate_limits"),
            (Some(_), Some(_)) => {
                self.push(
                    line,
                    field,
                    "rate_limit and rate_limits exclude each other".into(),
                );
                return None;
            }
        };
        if raws.is_empty() {
            self.push(
                line,
                &format!("{field}.rate_limit"),
                "needs at least one limit".into(),
            );
            return None;
        }
        let before = self.problems.len();
        let unlimited = raws.iter().any(|(_, r, _)| r.unlimited);
        if unlimited && raws.len() > 1 {
            self.push(
                line,
                &format!("{field}.rate_limits"),
                "unlimited: true stands alone".into(),
            );
        }
        let mut rule = Rule {
            limits: Vec::new(),
            unlimited,
            names: Vec::new(),
            replaces: Vec::new(),
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            metadata: None,
        };
        for (line, r, field) in &raws {
            let line = *line;
            let own_name = r.name.as_deref().filter(|n| !n.is_empty());
            if let Some(n) = own_name {
                rule.names.push(n.into());
            }
            for (j, rep) in r.replaces.as_deref().unwrap_or_default().iter().enumerate() {
                let f = format!("{field}.replaces[{j}].name");
                match rep.value.name.as_deref() {
                    None | Some("") => self.push(
                        rep.referenced.line(),
                        &f,
                        "should not have an empty replaces entry".into(),
                    ),
                    Some(n) if Some(n) == own_name => self.push(
                        rep.referenced.line(),
                        &f,
                        "replaces should not contain name of same descriptor".into(),
                    ),
                    Some(n) => rule.replaces.push(n.into()),
                }
            }
            if r.unlimited {
                if let Some(u) = &r.unit {
                    self.push(
                        u.referenced.line(),
                        &format!("{field}.unit"),
                        "should not specify rate limit unit when unlimited".into(),
                    );
                }
                if r.algorithm.is_some() || r.burst.is_some() || r.window.is_some() {
                    self.push(
                        line,
                        field,
                        "algorithm, burst and window need a limit, not unlimited: true".into(),
                    );
                }
                continue;
            }
            if let Some(limit) = self.limit(r, field, line, own_name) {
                if rule.limits.iter().any(|l| l.slot == limit.slot) {
                    self.push(
                        line,
                        field,
                        "two limits of one descriptor need different windows or algorithms".into(),
                    );
                }
                rule.limits.push(limit);
            }
        }
        if let Some(m) = &d.metadata {
            match json_to_struct(&m.value) {
                Some(s) => rule.metadata = Some(s),
                None => self.push(
                    m.referenced.line(),
                    &format!("{field}.metadata"),
                    "error parsing metadata: expected a mapping".into(),
                ),
            }
        }
        (self.problems.len() == before).then(|| Arc::new(rule))
    }

    fn limit(
        &mut self,
        r: &RawRateLimit,
        field: &str,
        line: u64,
        name: Option<&str>,
    ) -> Option<RuleLimit> {
        let unit = match &r.unit {
            Some(u) => match Unit::parse(&u.value) {
                Some(unit) => Some(unit),
                None => {
                    self.push(
                        u.referenced.line(),
                        &format!("{field}.unit"),
                        format!("invalid rate limit unit '{}'", u.value),
                    );
                    return None;
                }
            },
            None => None,
        };
        let window = match (unit, &r.window) {
            (Some(u), None) => u.seconds() * SECOND,
            (None, Some(w)) => match config::parse_window(&w.value) {
                Ok(n) => n,
                Err(e) => {
                    self.push(w.referenced.line(), &format!("{field}.window"), e);
                    return None;
                }
            },
            (Some(_), Some(w)) => {
                self.push(
                    w.referenced.line(),
                    &format!("{field}.window"),
                    "unit and window exclude each other".into(),
                );
                return None;
            }
            (None, None) => {
                self.push(
                    line,
                    &format!("{field}.unit"),
                    "invalid rate limit unit ''".into(),
                );
                return None;
            }
        };
        let amount = r.requests_per_unit.as_ref().map_or(0, |n| n.value);
        let algorithm = match r
            .algorithm
            .as_ref()
            .map(|a| (a.value.as_str(), a.referenced.line()))
        {
            None | Some(("fixed_window", _)) => Algorithm::FixedWindow,
            Some(("sliding_window", _)) => Algorithm::SlidingWindow,
            Some(("token_bucket", _)) => Algorithm::TokenBucket,
            Some((other, line)) => {
                self.push(
                    line,
                    &format!("{field}.algorithm"),
                    format!("expected fixed_window, sliding_window or token_bucket, got {other:?}"),
                );
                return None;
            }
        };
        let mut limit = RuleLimit {
            name: name.unwrap_or_default().into(),
            amount,
            window,
            unit: Unit::of_window(window),
            algorithm,
            slot: 0,
            burst: None,
        };
        if let Some(b) = &r.burst {
            let f = format!("{field}.burst");
            if r.algorithm.is_some() && algorithm == Algorithm::FixedWindow {
                self.push(
                    b.referenced.line(),
                    &f,
                    "needs algorithm token_bucket or sliding_window".into(),
                );
                return None;
            }
            let extra = match config::burst_extra(&b.value, u64::from(amount)) {
                Ok(e) => e,
                Err(e) => {
                    self.push(b.referenced.line(), &f, e);
                    return None;
                }
            };
            // As in plans: a token bucket at the rate under a sliding window
            // at the burst ceiling (README, "Bursts").
            limit.algorithm = Algorithm::TokenBucket;
            let cap = config::burst_ceiling(u64::from(amount), extra).min(u64::from(u32::MAX));
            let slot = self
                .slots
                .intern(&format!("{}|burst", identity(window, limit.algorithm)));
            limit.burst = Rate::new(cap, window).map(|rate| (rate, slot));
        }
        limit.slot = self.slots.intern(&identity(window, limit.algorithm));
        Some(limit)
    }
}

/// A YAML mapping as a protobuf `Struct`; `None` when it is not a mapping.
fn json_to_struct(value: &serde_json::Value) -> Option<prost_types::Struct> {
    let serde_json::Value::Object(map) = value else {
        return None;
    };
    Some(prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    })
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(_) => Kind::StructValue(json_to_struct(value).unwrap_or_default()),
    };
    prost_types::Value { kind: Some(kind) }
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

    fn err(yaml: &str) -> String {
        RuleSet::parse(
            &[("t.yaml".into(), yaml.into())],
            false,
            &SlotRegistry::default(),
        )
        .expect_err("invalid rules")
        .to_string()
    }

    #[test]
    fn wildcards_match_anywhere() {
        let w = Wildcard::new("/api/*/resource/*/action");
        assert!(w.matches("/api/v1/resource/123/action"));
        assert!(!w.matches("/api/v1/resource/123/other"));
        assert!(Wildcard::new("value*").matches("value"));
        assert!(Wildcard::new("*").matches(""));
        assert!(!Wildcard::new("ab*ba").matches("aba"));
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

    #[test]
    fn several_limits_as_a_list_in_rate_limit_or_rate_limits() {
        for key in ["rate_limit", "rate_limits"] {
            let s = set(&format!(
                "domain: d\ndescriptors:\n  - key: k\n    {key}:\n      - {{ unit: second, requests_per_unit: 10 }}\n      - {{ unit: day, requests_per_unit: 1000, algorithm: sliding_window }}\n"
            ));
            let m = s.find("d", &[("k", "v")]).expect("matched");
            let amounts: Vec<u32> = m.rule.limits.iter().map(|l| l.amount).collect();
            assert_eq!(amounts, [10, 1000], "{key}");
        }
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      - { unit: second, requests_per_unit: 10 }\n      - { unit: eon, requests_per_unit: 1 }\n",
        );
        assert_eq!(
            e,
            "t.yaml:6: descriptors[0].rate_limit[1].unit: invalid rate limit unit 'eon'"
        );
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      - { unit: second, requests_per_unit: 10, colour: red }\n",
        );
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn problems_name_file_line_and_field() {
        let e = err(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
        );
        assert_eq!(
            e,
            "t.yaml:5: descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight'"
        );
        assert!(err("descriptors: []\n").contains("empty domain"));
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    unit: second\n")
                .contains("unknown field"),
            "keys at the wrong level are refused"
        );
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n")
                .contains("duplicate descriptor composite key 'k=v'")
        );
        assert!(err("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second}\n").contains("should not specify rate limit unit when unlimited"));
        assert!(err("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, replaces: [{name: a}], unit: second, requests_per_unit: 1}\n").contains("same descriptor"));
        assert!(
            err("domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n")
                .contains("wildcard")
        );
    }
}
