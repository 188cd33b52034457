//! Raw file → [`Catalog`]: every check, every problem collected, none fatal
//! until the end, so one run of `tollgate check` lists them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::burst::Extra;
use super::error::Problem;
use super::rate::{parse_rate, parse_window};
use super::raw::{RawConfig, RawEnvoy, RawLimit, RawPlan};
use crate::engine::{Algorithm, Nanos, Rate};
use crate::plans::{
    Catalog, EnvoyDomain, HeaderStyle, Limit, LimitKind, Matcher, Per, Plan, SlotRegistry,
    counter_identity, default_name,
};

/// Collects problems against one file.
struct Problems<'a> {
    file: &'a str,
    list: Vec<Problem>,
}

/// A plan entry before inheritance is applied.
#[derive(Debug, Clone)]
struct Entry {
    name: Option<String>,
    class: Option<String>,
    unit: String,
    per: Per,
    kind: EntryKind,
    max_cost: Option<u64>,
}

#[derive(Debug, Clone)]
enum EntryKind {
    Deny(String),
    Unlimited {
        window: Option<Nanos>,
    },
    Counted {
        amount: u64,
        window: Nanos,
        algorithm: Algorithm,
        burst: Option<Extra>,
    },
}

pub(super) fn compile(
    file: &str,
    raw: RawConfig,
    slots: &SlotRegistry,
) -> Result<Catalog, Vec<Problem>> {
    let mut p = Problems {
        file,
        list: Vec::new(),
    };

    let envoy_domains = envoy_domains(&mut p, raw.envoy.as_ref());
    let headers = match raw
        .headers
        .as_ref()
        .map(|h| (h.value.as_str(), h.referenced.line()))
    {
        None | Some(("x-ratelimit", _)) => HeaderStyle::XRateLimit,
        Some(("ietf", _)) => HeaderStyle::Ietf,
        Some(("both", _)) => HeaderStyle::Both,
        Some((other, line)) => {
            p.push(
                line,
                "headers",
                format!("expected x-ratelimit, ietf or both, got {other:?}"),
            );
            HeaderStyle::XRateLimit
        }
    };

    let class_names: Vec<Arc<str>> = raw.classes.keys().map(|k| Arc::from(k.as_str())).collect();
    let mut classes = Matcher::default();
    for (index, (name, class)) in raw.classes.iter().enumerate() {
        check_name(&mut p, 0, &format!("classes.{name}"), name);
        if class.patterns.is_empty() {
            p.push(
                0,
                &format!("classes.{name}.match"),
                "needs at least one pattern".into(),
            );
        }
        for (i, pattern) in class.patterns.iter().enumerate() {
            if let Err(e) = classes.add(&pattern.value, index, &class_names) {
                p.push(
                    pattern.referenced.line(),
                    &format!("classes.{name}.match[{i}]"),
                    e.to_string(),
                );
            }
        }
    }

    let plans_line = raw.plans.referenced.line();
    let mut own: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for (name, plan) in &raw.plans.value {
        check_name(
            &mut p,
            plan.referenced.line(),
            &format!("plans.{name}"),
            name,
        );
        own.insert(name, plan_entries(&mut p, name, &plan.value, &raw.classes));
    }
    if raw.plans.value.is_empty() {
        p.push(plans_line, "plans", "needs at least one plan".into());
    }
    let mut resolved: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for name in raw.plans.value.keys() {
        resolve(
            &mut p,
            name,
            &raw.plans.value,
            &own,
            &mut resolved,
            &mut Vec::new(),
        );
    }

    let mut plans = BTreeMap::new();
    for (name, entries) in &resolved {
        let raw_plan = &raw.plans.value[name].value;
        let plan = build_plan(name, raw_plan, entries, &class_names, slots);
        plans.insert(name.clone(), Arc::new(plan));
    }

    let default_plan = match &raw.default_plan {
        Some(d) => plans.get(&d.value).cloned().or_else(|| {
            p.push(
                d.referenced.line(),
                "default_plan",
                format!("no plan named {:?}", d.value),
            );
            None
        }),
        None if plans.len() == 1 => plans.values().next().cloned(),
        None => {
            if !plans.is_empty() {
                p.push(
                    plans_line,
                    "default_plan",
                    "required when there is more than one plan".into(),
                );
            }
            None
        }
    };

    let mut assignments = HashMap::new();
    for (account, plan) in &raw.assignments {
        match plans.get(&plan.value) {
            Some(found) => {
                assignments.insert(account.clone(), found.clone());
            }
            None => p.push(
                plan.referenced.line(),
                &format!("assignments.{account}"),
                format!("no plan named {:?}", plan.value),
            ),
        }
    }

    match default_plan {
        Some(default_plan) if p.list.is_empty() => Ok(Catalog {
            classes,
            class_names,
            plans,
            default_plan,
            assignments,
            headers,
            envoy_domains,
        }),
        _ => {
            p.list.sort_by_key(|problem| problem.line);
            Err(p.list)
        }
    }
}

// === impl Problems ===

impl Problems<'_> {
    fn push(&mut self, line: u64, field: &str, message: String) {
        self.list.push(Problem {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        });
    }
}

/// `envoy.domains`: which descriptor entries carry what.
fn envoy_domains(p: &mut Problems<'_>, raw: Option<&RawEnvoy>) -> HashMap<String, EnvoyDomain> {
    let mut out = HashMap::new();
    for (domain, d) in raw.map(|e| &e.domains).into_iter().flatten() {
        let field = format!("envoy.domains.{domain}");
        let line = d.referenced.line();
        let d = &d.value;
        if domain.trim().is_empty() {
            p.push(line, "envoy.domains", "a domain needs a name".into());
        }
        let Some(subject) = d.subject.as_ref().filter(|s| !s.value.trim().is_empty()) else {
            p.push(
                line,
                &format!("{field}.subject"),
                "names the descriptor entry that carries the subject; required".into(),
            );
            continue;
        };
        let mut keys = vec![("subject", Some(&subject.value))];
        keys.extend([
            ("account", d.account.as_ref()),
            ("plan", d.plan.as_ref()),
            ("resource", d.resource.as_ref()),
            ("method", d.method.as_ref()),
        ]);
        for (i, (what, key)) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            if keys[..i].iter().any(|(_, k)| *k == Some(*key)) || d.cost.contains_key(*key) {
                p.push(
                    line,
                    &format!("{field}.{what}"),
                    format!("entry {key:?} already carries another part"),
                );
            }
        }
        for (key, unit) in &d.cost {
            if unit.trim().is_empty() {
                p.push(
                    line,
                    &format!("{field}.cost.{key}"),
                    "names the unit the entry's value counts".into(),
                );
            }
        }
        out.insert(
            domain.clone(),
            EnvoyDomain {
                subject: subject.value.clone(),
                account: d.account.clone(),
                plan: d.plan.clone(),
                resource: d.resource.clone(),
                method: d.method.clone(),
                cost: d.cost.iter().map(|(k, u)| (k.clone(), u.clone())).collect(),
            },
        );
    }
    out
}

fn check_name(p: &mut Problems<'_>, line: u64, field: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !ok {
        p.push(
            line,
            field,
            format!("names use letters, digits, '_', '-' and '.' (at most 64), got {name:?}"),
        );
    }
}

/// The plan's own entries, each checked on its own.
fn plan_entries(
    p: &mut Problems<'_>,
    plan: &str,
    raw: &RawPlan,
    classes: &BTreeMap<String, super::raw::RawClass>,
) -> Vec<Entry> {
    if let Some(m) = &raw.multiplier {
        if !(m.value.is_finite() && m.value > 0.0) {
            p.push(
                m.referenced.line(),
                &format!("plans.{plan}.multiplier"),
                format!("must be a positive number, got {}", m.value),
            );
        }
        if raw.extends.is_none() {
            p.push(
                m.referenced.line(),
                &format!("plans.{plan}.multiplier"),
                "scales inherited limits, so it needs extends".into(),
            );
        }
    }
    let mut entries: Vec<Entry> = Vec::new();
    for (i, limit) in raw.limits.iter().enumerate() {
        let field = format!("plans.{plan}.limits[{i}]");
        let Some(entry) = entry(p, &field, limit, classes) else {
            continue;
        };
        if let Some(j) = entries.iter().position(|e| same_identity(e, &entry)) {
            p.push(
                limit.referenced.line(),
                &field,
                format!("same class, unit, window and per as limits[{j}]"),
            );
            continue;
        }
        entries.push(entry);
    }
    entries
}

fn entry(
    p: &mut Problems<'_>,
    field: &str,
    limit: &Spanned<RawLimit>,
    classes: &BTreeMap<String, super::raw::RawClass>,
) -> Option<Entry> {
    let line = limit.referenced.line();
    let raw = &limit.value;
    let before = p.list.len();
    let class = raw.class.as_ref().map(|c| {
        if !classes.contains_key(&c.value) {
            p.push(
                c.referenced.line(),
                &format!("{field}.class"),
                format!("no class named {:?}", c.value),
            );
        }
        c.value.clone()
    });
    let unit = raw.unit.as_ref().map_or_else(
        || "requests".to_owned(),
        |u| {
            check_name(p, u.referenced.line(), &format!("{field}.unit"), &u.value);
            u.value.clone()
        },
    );
    let per = match raw
        .per
        .as_ref()
        .map(|s| (s.value.as_str(), s.referenced.line()))
    {
        None | Some(("subject", _)) => Per::Subject,
        Some(("account", _)) => Per::Account,
        Some((other, l)) => {
            p.push(
                l,
                &format!("{field}.per"),
                format!("expected subject or account, got {other:?}"),
            );
            Per::Subject
        }
    };
    let algorithm = raw.algorithm.as_ref().and_then(|a| match a.value.as_str() {
        "fixed_window" => Some(Algorithm::FixedWindow),
        "sliding_window" => Some(Algorithm::SlidingWindow),
        "token_bucket" | "gcra" => Some(Algorithm::TokenBucket),
        other => {
            p.push(
                a.referenced.line(),
                &format!("{field}.algorithm"),
                format!("expected fixed_window, sliding_window or token_bucket, got {other:?}"),
            );
            None
        }
    });
    let unlimited = raw.unlimited.as_ref().is_some_and(|u| u.value);
    let kind = match (&raw.deny, unlimited, &raw.rate) {
        (Some(deny), false, None) => {
            if class.is_none() {
                p.push(
                    deny.referenced.line(),
                    &format!("{field}.deny"),
                    "needs a class: deny takes a class out of the plan".into(),
                );
            }
            let message = if deny.value.trim().is_empty() {
                "not in plan".to_owned()
            } else {
                deny.value.clone()
            };
            EntryKind::Deny(message)
        }
        (None, true, None) => {
            let window = raw
                .window
                .as_ref()
                .and_then(|w| match parse_window(&w.value) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        p.push(w.referenced.line(), &format!("{field}.window"), e);
                        None
                    }
                });
            EntryKind::Unlimited { window }
        }
        (None, false, Some(rate)) => match parse_rate(&rate.value) {
            Ok((amount, window)) => {
                // The one place a burst is checked; it becomes a ceiling when
                // the limit is built.
                let burst = raw.burst.as_ref().and_then(|b| {
                    let extra = Extra::check(&b.value, amount)
                        .map_err(|e| p.push(b.referenced.line(), &format!("{field}.burst"), e))
                        .ok();
                    if algorithm == Some(Algorithm::FixedWindow) {
                        p.push(
                            b.referenced.line(),
                            &format!("{field}.burst"),
                            "needs algorithm token_bucket or sliding_window".into(),
                        );
                    }
                    extra
                });
                // A burst is always a token bucket at the rate under a sliding
                // window at the burst ceiling (README, "Bursts").
                let algorithm = match (algorithm, &raw.burst) {
                    (_, Some(_)) => Algorithm::TokenBucket,
                    (Some(a), None) => a,
                    (None, None) => Algorithm::FixedWindow,
                };
                EntryKind::Counted {
                    amount,
                    window,
                    algorithm,
                    burst,
                }
            }
            Err(e) => {
                p.push(rate.referenced.line(), &format!("{field}.rate"), e);
                return None;
            }
        },
        (None, false, None) => {
            p.push(
                line,
                field,
                "needs one of rate, unlimited: true or deny".into(),
            );
            return None;
        }
        _ => {
            p.push(
                line,
                field,
                "rate, unlimited and deny exclude each other".into(),
            );
            return None;
        }
    };
    if raw.window.is_some() && !matches!(kind, EntryKind::Unlimited { .. }) {
        p.push(
            line,
            &format!("{field}.window"),
            "only for unlimited entries; a limit's window is in its rate".into(),
        );
    }
    if !matches!(kind, EntryKind::Counted { .. })
        && (raw.burst.is_some() || raw.algorithm.is_some())
    {
        p.push(line, field, "algorithm and burst need a rate".into());
    }
    if matches!(kind, EntryKind::Deny(_)) && raw.max_cost.is_some() {
        p.push(
            line,
            field,
            "max_cost needs a rate or unlimited: true".into(),
        );
    }
    let max_cost = raw.max_cost.as_ref().map(|m| {
        if m.value == 0 {
            p.push(
                m.referenced.line(),
                &format!("{field}.max_cost"),
                "must be at least 1".into(),
            );
        }
        m.value
    });
    (p.list.len() == before).then(|| Entry {
        name: raw.name.as_ref().map(|n| n.value.clone()),
        class,
        unit,
        per,
        kind,
        max_cost,
    })
}

fn same_identity(a: &Entry, b: &Entry) -> bool {
    a.class == b.class
        && match (&a.kind, &b.kind) {
            (EntryKind::Deny(_), EntryKind::Deny(_)) => true,
            (EntryKind::Counted { window: wa, .. }, EntryKind::Counted { window: wb, .. }) => {
                a.unit == b.unit && a.per == b.per && wa == wb
            }
            (EntryKind::Unlimited { window: wa }, EntryKind::Unlimited { window: wb }) => {
                a.unit == b.unit && wa == wb
            }
            _ => false,
        }
}

/// Whether `own` replaces the inherited `inherited`.
fn replaces(own: &Entry, inherited: &Entry) -> bool {
    if own.class != inherited.class {
        return false;
    }
    match (&own.kind, &inherited.kind) {
        // A class taken out of the plan takes every inherited entry of it along.
        (EntryKind::Deny(_), _) => true,
        // Anything that puts the class in the plan lifts an inherited deny.
        (_, EntryKind::Deny(_)) => true,
        (EntryKind::Counted { window, .. }, EntryKind::Counted { window: w, .. }) => {
            own.unit == inherited.unit && own.per == inherited.per && window == w
        }
        (EntryKind::Counted { window, .. }, EntryKind::Unlimited { window: w }) => {
            own.unit == inherited.unit && w.is_none_or(|w| w == *window)
        }
        (EntryKind::Unlimited { window }, EntryKind::Counted { window: w, .. }) => {
            own.unit == inherited.unit && window.is_none_or(|window| window == *w)
        }
        (EntryKind::Unlimited { window }, EntryKind::Unlimited { window: w }) => {
            own.unit == inherited.unit && window == w
        }
    }
}

/// Resolves `name`'s inheritance into `done`, depth first.
fn resolve(
    p: &mut Problems<'_>,
    name: &str,
    raw: &BTreeMap<String, Spanned<RawPlan>>,
    own: &BTreeMap<&str, Vec<Entry>>,
    done: &mut BTreeMap<String, Vec<Entry>>,
    stack: &mut Vec<String>,
) -> Option<Vec<Entry>> {
    if let Some(entries) = done.get(name) {
        return Some(entries.clone());
    }
    let plan = &raw[name].value;
    let mut entries = match &plan.extends {
        None => Vec::new(),
        Some(parent) => {
            let field = format!("plans.{name}.extends");
            if !raw.contains_key(&parent.value) {
                p.push(
                    parent.referenced.line(),
                    &field,
                    format!("no plan named {:?}", parent.value),
                );
                return None;
            }
            if stack.iter().any(|s| s == &parent.value) || parent.value == name {
                p.push(
                    parent.referenced.line(),
                    &field,
                    format!(
                        "plans extend each other in a cycle: {} -> {name} -> {}",
                        stack.join(" -> "),
                        parent.value
                    ),
                );
                return None;
            }
            stack.push(name.to_owned());
            let inherited = resolve(p, &parent.value, raw, own, done, stack);
            stack.pop();
            let multiplier = plan.multiplier.as_ref().map_or(1.0, |m| m.value);
            inherited?
                .into_iter()
                .map(|e| scale(e, multiplier))
                .collect()
        }
    };
    for entry in &own[name] {
        entries.retain(|inherited| !replaces(entry, inherited));
        entries.push(entry.clone());
    }
    done.insert(name.to_owned(), entries.clone());
    Some(entries)
}

fn scale(mut entry: Entry, multiplier: f64) -> Entry {
    if let EntryKind::Counted { amount, burst, .. } = &mut entry.kind {
        *amount = ((*amount as f64) * multiplier).round().max(1.0) as u64;
        *burst = burst.map(|b| b.scaled(multiplier));
        // A generated name names the old amount nowhere, so it stays right;
        // a configured one is kept as written.
    }
    entry
}

fn build_plan(
    name: &str,
    raw: &RawPlan,
    entries: &[Entry],
    class_names: &[Arc<str>],
    slots: &SlotRegistry,
) -> Plan {
    let limits: Vec<Arc<Limit>> = entries
        .iter()
        .map(|e| Arc::new(build_limit(e, class_names, slots)))
        .collect();
    Plan::new(
        name,
        raw.description.clone(),
        raw.extends.as_ref().map(|e| e.value.clone()),
        limits,
        class_names,
    )
}

fn build_limit(e: &Entry, class_names: &[Arc<str>], slots: &SlotRegistry) -> Limit {
    let class = e.class.as_ref().map(|c| {
        class_names
            .iter()
            .find(|n| &***n == c)
            .cloned()
            .unwrap_or_else(|| c.as_str().into())
    });
    let class_part = e
        .class
        .as_deref()
        .map(|c| format!("{c}:"))
        .unwrap_or_default();
    let (window, kind) = match &e.kind {
        EntryKind::Deny(m) => (0, LimitKind::Deny(m.as_str().into())),
        EntryKind::Unlimited { window } => (window.unwrap_or(0), LimitKind::Unlimited),
        EntryKind::Counted {
            amount,
            window,
            algorithm,
            burst,
        } => {
            let identity =
                counter_identity(e.per, e.class.as_deref(), &e.unit, *window, *algorithm);
            let rate = Rate::new(*amount, *window).expect("amount and window checked nonzero");
            let burst = burst.map(|b| {
                let cap = Rate::new(b.ceiling(*amount), *window)
                    .expect("a ceiling is at least its amount");
                (cap, slots.intern(&format!("{identity}|burst")))
            });
            let kind = LimitKind::Counted {
                rate,
                algorithm: *algorithm,
                slot: slots.intern(&identity),
                burst,
            };
            (*window, kind)
        }
    };
    let generated = match &e.kind {
        EntryKind::Deny(_) => format!("{class_part}deny"),
        EntryKind::Unlimited { window: None } => {
            default_name(e.class.as_deref(), &e.unit, None, e.per)
        }
        _ => default_name(e.class.as_deref(), &e.unit, Some(window), e.per),
    };
    Limit {
        name: e.name.clone().unwrap_or(generated).into(),
        class,
        unit: e.unit.as_str().into(),
        per: e.per,
        window,
        kind,
        max_cost: e.max_cost,
    }
}
