//! One descriptor's `rate_limit`s as written ([`super::raw`]) → its
//! [`Rule`]: names and replacements, windows, amounts, algorithms, bursts,
//! counter slots and metadata.
//!
//! Every check records a problem with its file, line and field, and
//! compiling goes on, so one load reports every mistake; a rule with a
//! problem is left out (the set is refused anyway). Where a rule sits in its
//! domain's tree, and which files are read, is [`super::load`]'s.

use std::sync::Arc;

use serde_saphyr::Spanned;

use super::raw::{RateLimits, RawDescriptor, RawRateLimit};
use super::rules::{Rule, RuleLimit, Unit, identity};
use crate::config::raw::Burst;
use crate::config::{self, Problem};
use crate::engine::{Algorithm, Nanos, Rate, clock::SECOND};
use crate::plans::SlotRegistry;

/// Compiles one file's rules, collecting problems.
pub(super) struct Compiler<'a> {
    /// The file's name, for problems.
    pub(super) file: &'a str,
    /// Where counter identities get their numbers, shared across reloads.
    pub(super) slots: &'a SlotRegistry,
    /// Every problem so far, this file's and earlier files'.
    pub(super) problems: &'a mut Vec<Problem>,
}

/// One limit as written, with the line and field path problems name.
struct Written<'r> {
    line: u64,
    raw: &'r RawRateLimit,
    field: String,
}

// === impl Compiler ===

impl Compiler<'_> {
    /// Records a problem; compiling goes on.
    pub(super) fn push(&mut self, line: u64, field: &str, message: String) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        });
    }

    /// A descriptor's rule: its limits, counted together, or `unlimited`.
    /// `None` when it has none, or after a problem.
    pub(super) fn rule(&mut self, d: &RawDescriptor, field: &str, line: u64) -> Option<Arc<Rule>> {
        let written = self.written(d, field, line)?;
        let before = self.problems.len();
        let unlimited = written.iter().any(|w| w.raw.unlimited);
        if unlimited && written.len() > 1 {
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
        for w in &written {
            self.add_limit(&mut rule, w);
        }
        if let Some(m) = &d.metadata {
            rule.metadata = self.metadata(m, field);
        }
        (self.problems.len() == before).then(|| Arc::new(rule))
    }

    /// The limits of `rate_limit` (one, or a list) or of `rate_limits`.
    /// `None` when there are none, or after a problem.
    fn written<'r>(
        &mut self,
        d: &'r RawDescriptor,
        field: &str,
        line: u64,
    ) -> Option<Vec<Written<'r>>> {
        let list = |list: &'r [Spanned<RawRateLimit>], name: &str| -> Vec<Written<'r>> {
            list.iter()
                .enumerate()
                .map(|(i, r)| Written {
                    line: r.referenced.line(),
                    raw: &r.value,
                    field: format!("{field}.{name}[{i}]"),
                })
                .collect()
        };
        let written = match (&d.rate_limit, &d.rate_limits) {
            (None, None) => return None,
            (Some(one), None) => match &one.value {
                RateLimits::One(r) => vec![Written {
                    line: one.referenced.line(),
                    raw: r,
                    field: format!("{field}.rate_limit"),
                }],
                RateLimits::Many(many) => list(many, "rate_limit"),
            },
            (None, Some(many)) => list(&many.value, "rate_limits"),
            (Some(_), Some(_)) => {
                self.push(
                    line,
                    field,
                    "rate_limit and rate_limits exclude each other".into(),
                );
                return None;
            }
        };
        if written.is_empty() {
            self.push(
                line,
                &format!("{field}.rate_limit"),
                "needs at least one limit".into(),
            );
            return None;
        }
        Some(written)
    }

    /// Adds one written limit to `rule`: its name, the names it replaces,
    /// and, unless it is `unlimited`, how it counts.
    fn add_limit(&mut self, rule: &mut Rule, w: &Written<'_>) {
        let own_name = w.raw.name.as_deref().filter(|n| !n.is_empty());
        if let Some(n) = own_name {
            rule.names.push(n.into());
        }
        self.replaces(rule, w, own_name);
        if w.raw.unlimited {
            self.unlimited(w);
            return;
        }
        if let Some(limit) = self.limit(w, own_name) {
            // Equal slots would share one counter and count each request twice.
            if rule.limits.iter().any(|l| l.slot == limit.slot) {
                self.push(
                    w.line,
                    &w.field,
                    "two limits of one descriptor need different windows or algorithms".into(),
                );
            }
            rule.limits.push(limit);
        }
    }

    /// The names of `replaces`, into `rule.replaces`; a limit cannot
    /// replace itself.
    fn replaces(&mut self, rule: &mut Rule, w: &Written<'_>, own_name: Option<&str>) {
        let replaces = w.raw.replaces.as_deref().unwrap_or_default();
        for (j, rep) in replaces.iter().enumerate() {
            let f = format!("{}.replaces[{j}].name", w.field);
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
    }

    /// `unlimited: true` refuses what only a counted limit uses, rather than
    /// ignoring it silently.
    fn unlimited(&mut self, w: &Written<'_>) {
        let r = w.raw;
        if let Some(u) = &r.unit {
            self.push(
                u.referenced.line(),
                &format!("{}.unit", w.field),
                "should not specify rate limit unit when unlimited".into(),
            );
        }
        if r.algorithm.is_some() || r.burst.is_some() || r.window.is_some() {
            self.push(
                w.line,
                &w.field,
                "algorithm, burst and window need a limit, not unlimited: true".into(),
            );
        }
    }

    /// One counted limit: its window, amount, algorithm, burst and counter
    /// slot.
    fn limit(&mut self, w: &Written<'_>, name: Option<&str>) -> Option<RuleLimit> {
        let (r, field) = (w.raw, w.field.as_str());
        let window = self.window(w)?;
        let amount = r.requests_per_unit.as_ref().map_or(0, |n| n.value);
        // `gcra` is the configuration's alias; rule files never took it.
        let parsed = |a: &str| match a {
            "gcra" => Err(crate::engine::ParseAlgorithmError(a.to_owned())),
            a => a.parse(),
        };
        let algorithm = match r.algorithm.as_ref().map(|a| (parsed(&a.value), a)) {
            None => Algorithm::FixedWindow,
            Some((Ok(algorithm), _)) => algorithm,
            Some((Err(e), a)) => {
                let e: crate::engine::ParseAlgorithmError = e;
                self.push(
                    a.referenced.line(),
                    &format!("{field}.algorithm"),
                    e.to_string(),
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
            limit = self.burst(limit, b, r.algorithm.is_some(), field)?;
        }
        limit.slot =
            self.slots
                .intern_counter(&identity(window, limit.algorithm), limit.algorithm, window);
        Some(limit)
    }

    /// The window: the reference's `unit`, or tollgate's `window` of any
    /// length; exactly one of the two.
    fn window(&mut self, w: &Written<'_>) -> Option<Nanos> {
        let (r, field) = (w.raw, &w.field);
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
        match (unit, &r.window) {
            (Some(u), None) => Some(u.seconds() * SECOND),
            (None, Some(win)) => match config::parse_window(&win.value) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.push(win.referenced.line(), &format!("{field}.window"), e);
                    None
                }
            },
            (Some(_), Some(win)) => {
                self.push(
                    win.referenced.line(),
                    &format!("{field}.window"),
                    "unit and window exclude each other".into(),
                );
                None
            }
            (None, None) => {
                self.push(
                    w.line,
                    &format!("{field}.unit"),
                    "invalid rate limit unit ''".into(),
                );
                None
            }
        }
    }

    /// Adds a burst as plans do: a token bucket at the rate, counted
    /// together with a sliding window at the burst ceiling (README,
    /// "Bursts"). A fixed window asked for by name has no room for one.
    fn burst(
        &mut self,
        mut limit: RuleLimit,
        b: &Spanned<Burst>,
        algorithm_given: bool,
        field: &str,
    ) -> Option<RuleLimit> {
        let f = format!("{field}.burst");
        if algorithm_given && limit.algorithm == Algorithm::FixedWindow {
            self.push(
                b.referenced.line(),
                &f,
                "needs algorithm token_bucket or sliding_window".into(),
            );
            return None;
        }
        let amount = u64::from(limit.amount);
        let extra = match config::burst_extra(&b.value, amount) {
            Ok(e) => e,
            Err(e) => {
                self.push(b.referenced.line(), &f, e);
                return None;
            }
        };
        limit.algorithm = Algorithm::TokenBucket;
        let cap = config::burst_ceiling(amount, extra).min(u64::from(u32::MAX));
        let slot = self.slots.intern_counter(
            &format!("{}|burst", identity(limit.window, limit.algorithm)),
            Algorithm::SlidingRing,
            limit.window,
        );
        limit.burst = Rate::new(cap, limit.window).map(|rate| (rate, slot));
        Some(limit)
    }

    /// The metadata returned when the descriptor passes; it must be a
    /// mapping, as dynamic metadata is a `Struct`.
    fn metadata(
        &mut self,
        m: &Spanned<serde_json::Value>,
        field: &str,
    ) -> Option<prost_types::Struct> {
        let s = json_to_struct(&m.value);
        if s.is_none() {
            self.push(
                m.referenced.line(),
                &format!("{field}.metadata"),
                "error parsing metadata: expected a mapping".into(),
            );
        }
        s
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
