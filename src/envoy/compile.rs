//! Rule files → rule trees: every check, every problem collected with its
//! file, line and field, none fatal until the whole directory is read.

use std::sync::Arc;

use serde_saphyr::Spanned;

use super::raw::{RateLimits, RawDescriptor, RawRateLimit};
use super::rules::{Level, Node, Rule, RuleLimit, Unit, identity};
use crate::config::{self, Problem};
use crate::engine::{Algorithm, Rate, clock::SECOND};
use crate::plans::SlotRegistry;
use crate::plans::glob::Glob;

/// Compiles one file's descriptors, collecting problems.
pub(super) struct Compiler<'a> {
    pub(super) file: &'a str,
    pub(super) slots: &'a SlotRegistry,
    pub(super) problems: &'a mut Vec<Problem>,
}

impl Compiler<'_> {
    pub(super) fn push(&mut self, line: u64, field: &str, message: String) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        });
    }

    pub(super) fn level(
        &mut self,
        level: &mut Level,
        descriptors: &[Spanned<RawDescriptor>],
        field: &str,
    ) {
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
                    if rules.wildcards.iter().any(|(w, _)| w.as_str() == v) {
                        true
                    } else {
                        rules.wildcards.push((Glob::new(v), node));
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
