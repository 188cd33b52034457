//! Raw file → [`Catalog`]: every check, every problem collected, none fatal
//! until the end, so one run of `tollgate check` lists them all.
//!
//! Each step adds what it finds to one [`Problems`] list and still returns a
//! stand-in (a default, an empty map, a skipped entry), so the steps after it
//! run and report too. This file holds the top-level sections (headers,
//! classes, plans, the default plan, assignments); a plan's entries are checked
//! in [`entry`], inherited in [`inherit`] and built into limits in [`build`];
//! `envoy.domains` is [`envoy_domains`], `http.forward_auth` [`forward_auth`].

mod build;
mod entry;
mod envoy_domains;
mod events;
mod forward_auth;
mod inherit;
mod problems;
mod reservations;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_saphyr::Spanned;

use self::entry::Entry;
use self::problems::Problems;
use super::error::Problem;
use super::raw::{RawClass, RawConfig, RawPaths};
use crate::plans::events::Thresholds;
use crate::plans::matcher::split_method;
use crate::plans::path::normalize;
use crate::plans::{Catalog, HeaderStyle, Matcher, Plan, SlotRegistry, UnsafePaths};

/// Compiles `raw`, read from `file`, or returns every problem found in it,
/// ordered by line.
pub(super) fn compile(
    file: &str,
    raw: RawConfig,
    slots: &SlotRegistry,
) -> Result<Catalog, Vec<Problem>> {
    let mut p = Problems {
        file,
        list: Vec::new(),
    };
    let envoy_domains = envoy_domains::envoy_domains(&mut p, raw.envoy.as_ref());
    let forward_auth = forward_auth::forward_auth(&mut p, raw.http.as_ref());
    let headers = headers(&mut p, raw.headers.as_ref());
    let unsafe_paths = unsafe_paths(&mut p, raw.paths.as_ref());
    let (classes, class_names) = classes(&mut p, &raw.classes, unsafe_paths);
    let (thresholds, events) = events::events(&mut p, raw.events.as_ref(), &raw.plans.value);
    let reservations = reservations::file(&mut p, raw.reservations.as_ref());
    let plans = plans(&mut p, &raw, &class_names, &thresholds, reservations, slots);
    let default_plan = default_plan(&mut p, &raw, &plans);
    let assignments = assignments(&mut p, &raw.assignments, &plans);
    match default_plan {
        Some(default_plan) if p.list.is_empty() => Ok(Catalog {
            classes,
            class_names,
            plans,
            default_plan,
            assignments,
            headers,
            envoy_domains,
            forward_auth,
            unsafe_paths,
            events,
            reservations,
        }),
        _ => {
            p.list.sort_by_key(|problem| problem.line);
            Err(p.list)
        }
    }
}

/// `headers`: which rate-limit headers decisions carry.
fn headers(p: &mut Problems<'_>, raw: Option<&Spanned<String>>) -> HeaderStyle {
    match raw.map(|h| (h.value.as_str(), h.referenced.line())) {
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
    }
}

/// `paths.unsafe`: what happens to a path that cannot be normalized safely.
fn unsafe_paths(p: &mut Problems<'_>, raw: Option<&RawPaths>) -> UnsafePaths {
    let Some(raw) = raw.and_then(|r| r.unsafe_paths.as_ref()) else {
        return UnsafePaths::default();
    };
    match raw.value.as_str() {
        "refuse" => UnsafePaths::Refuse,
        "keep" => UnsafePaths::Keep,
        "decode" => UnsafePaths::Decode,
        other => {
            p.push(
                raw.referenced.line(),
                "paths.unsafe",
                format!("expected refuse, keep or decode, got {other:?}"),
            );
            UnsafePaths::default()
        }
    }
}

/// `classes`: the matcher over every class's patterns, and the class names
/// in the order the matcher's indexes refer to. A pattern's path is
/// normalized as resources are ([`crate::plans::path`]), so `/a//b` and
/// `/%61/b` name what they match.
fn classes(
    p: &mut Problems<'_>,
    raw: &BTreeMap<String, RawClass>,
    unsafe_paths: UnsafePaths,
) -> (Matcher, Vec<Arc<str>>) {
    let class_names: Vec<Arc<str>> = raw.keys().map(|k| Arc::from(k.as_str())).collect();
    let mut classes = Matcher::default();
    for (index, (name, class)) in raw.iter().enumerate() {
        p.check_name(0, &format!("classes.{name}"), name);
        if class.patterns.is_empty() {
            p.push(
                0,
                &format!("classes.{name}.match"),
                "needs at least one pattern".into(),
            );
        }
        for (i, pattern) in class.patterns.iter().enumerate() {
            let (method, path) = split_method(pattern.value.trim());
            let added = match normalize(path, unsafe_paths) {
                Ok(path) => {
                    let pattern = match method {
                        Some(m) => format!("{m} {path}"),
                        None => path.into_owned(),
                    };
                    classes
                        .add(&pattern, index, &class_names)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("{path:?} is not a path a resource can be: {e}")),
            };
            if let Err(e) = added {
                p.push(
                    pattern.referenced.line(),
                    &format!("classes.{name}.match[{i}]"),
                    e,
                );
            }
        }
    }
    classes.prepare();
    (classes, class_names)
}

/// `calendar.zone`: the number of the zone calendar windows count in (0,
/// UTC, when absent or refused).
fn calendar_zone(p: &mut Problems<'_>, raw: &RawConfig) -> u16 {
    let Some(zone) = raw.calendar.as_ref().and_then(|c| c.zone.as_ref()) else {
        return 0;
    };
    crate::engine::algorithm::calendar::zone(&zone.value).unwrap_or_else(|e| {
        p.push(zone.referenced.line(), "calendar.zone", e);
        0
    })
}

/// `plans`: each plan's own entries checked, inheritance resolved, limits
/// built. A plan caught in a broken `extends` chain is left out.
fn plans(
    p: &mut Problems<'_>,
    raw: &RawConfig,
    class_names: &[Arc<str>],
    global: &Thresholds,
    ttl: crate::plans::ReservationTtl,
    slots: &SlotRegistry,
) -> BTreeMap<String, Arc<Plan>> {
    let plans = &raw.plans.value;
    let zone = calendar_zone(p, raw);
    let mut own: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
    for (name, plan) in plans {
        p.check_name(plan.referenced.line(), &format!("plans.{name}"), name);
        own.insert(
            name,
            entry::plan_entries(p, name, &plan.value, &raw.classes, ttl, zone),
        );
    }
    if plans.is_empty() {
        p.push(
            raw.plans.referenced.line(),
            "plans",
            "needs at least one plan".into(),
        );
    }
    let ttls: BTreeMap<&str, Option<crate::engine::Nanos>> = plans
        .iter()
        .map(|(name, plan)| {
            let own = reservations::plan(p, name, plan.value.reservations.as_ref(), ttl);
            (name.as_str(), own)
        })
        .collect();
    let defaults: BTreeMap<&str, Thresholds> = plans
        .keys()
        .map(|name| (name.as_str(), events::plan_thresholds(p, raw, name, global)))
        .collect();
    inherit::resolve_all(p, plans, &own)
        .iter()
        .map(|(name, entries)| {
            let mut plan = build::plan(
                name,
                &plans[name].value,
                entries,
                class_names,
                defaults[name.as_str()].clone(),
                slots,
            );
            plan.reservation_ttl = ttls[name.as_str()];
            (name.clone(), Arc::new(plan))
        })
        .collect()
}

/// `default_plan`: required to name a plan unless there is only one.
fn default_plan(
    p: &mut Problems<'_>,
    raw: &RawConfig,
    plans: &BTreeMap<String, Arc<Plan>>,
) -> Option<Arc<Plan>> {
    match &raw.default_plan {
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
                    raw.plans.referenced.line(),
                    "default_plan",
                    "required when there is more than one plan".into(),
                );
            }
            None
        }
    }
}

/// `assignments`: account → plan, each plan named in the file.
fn assignments(
    p: &mut Problems<'_>,
    raw: &BTreeMap<String, Spanned<String>>,
    plans: &BTreeMap<String, Arc<Plan>>,
) -> HashMap<String, Arc<Plan>> {
    let mut assignments = HashMap::new();
    for (account, plan) in raw {
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
    assignments
}

#[cfg(test)]
mod tests {
    use crate::plans::SlotRegistry;

    fn problems(yaml: &str) -> String {
        crate::config::parse("t.yaml", yaml, &SlotRegistry::default())
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn names_each_bad_reservation_ttl_by_line_and_field() {
        let yaml = "reservations: { ttl: 2h, max_ttl: 1h }
plans:
  free:
    reservations: { ttl: soon, max_ttl: 5m }
    limits:
      - { rate: 10/minute, reservation_ttl: 90m }
      - { unit: tokens, rate: 10/minute, reservation_ttl: 100ms }
";
        let out = problems(yaml);
        for expected in [
            r#"t.yaml:1: reservations.ttl: at most 1h, the max_ttl, got "2h""#,
            "t.yaml:4: plans.free.reservations.max_ttl: only the file's reservations have a max_ttl",
            r#"t.yaml:4: plans.free.reservations.ttl: expected a duration such as 90s or 5m, got "soon""#,
            r#"t.yaml:6: plans.free.limits[0].reservation_ttl: at most 1h, the max_ttl, got "90m""#,
            r#"t.yaml:7: plans.free.limits[1].reservation_ttl: at least 1s, got "100ms""#,
        ] {
            assert!(out.contains(expected), "{expected}\nnot in:\n{out}");
        }
        let big = problems(
            "reservations: { max_ttl: 30d }\nplans: { free: { limits: [ { rate: 1/minute } ] } }\n",
        );
        assert!(
            big.contains("t.yaml:1: reservations.max_ttl: at most 7days"),
            "{big}"
        );
    }

    #[test]
    fn names_each_bad_concurrency_limit_by_line_and_field() {
        let yaml = "plans:
  free:
    limits:
      - { unit: concurrent, rate: 5/minute }
      - { unit: concurrent, amount: 5, rate: 5/minute }
      - { unit: concurrent, amount: 5, algorithm: token_bucket }
      - { unit: concurrent, amount: 0 }
      - { unit: tokens, amount: 5 }
      - { unit: concurrent, amount: 5, burst: 2 }
      - { unit: concurrent, amount: 5, shadow: true }
";
        let out = problems(yaml);
        for expected in [
            "t.yaml:4: plans.free.limits[0]: unit: concurrent needs amount: the most requests in flight at once",
            "t.yaml:5: plans.free.limits[1].rate: a concurrency limit counts requests in flight, not a window: give amount, not rate",
            "t.yaml:6: plans.free.limits[2].algorithm: a concurrency limit counts requests in flight, not a window: token_bucket does not apply",
            "t.yaml:7: plans.free.limits[3].amount: must be at least 1",
            "t.yaml:8: plans.free.limits[4].amount: only for unit: concurrent; a windowed limit's amount is in its rate",
            "t.yaml:9: plans.free.limits[5].burst: a concurrency limit counts requests in flight, not a window: it has no burst",
            "t.yaml:10: plans.free.limits[6].shadow: not for a concurrency limit",
        ] {
            assert!(out.contains(expected), "{expected}\nnot in:\n{out}");
        }
    }

    #[test]
    fn refuses_amounts_over_the_maximum() {
        let err =
            problems("plans:\n  free:\n    limits:\n      - rate: 18446744073709551615/day\n");
        assert!(
            err.contains("t.yaml:4: plans.free.limits[0].rate: 18446744073709551615 is more than the largest amount, 9007199254740991"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_multiplier_that_scales_past_the_maximum() {
        let err = problems(
            "plans:\n  free:\n    limits:\n      - rate: 1000/day\n  huge:\n    extends: free\n    multiplier: 1e20\n",
        );
        assert!(
            err.contains(
                "t.yaml:7: plans.huge.multiplier: scales an inherited amount of plan \"huge\""
            ),
            "{err}"
        );
        assert!(err.contains("9007199254740991"), "{err}");
    }

    #[test]
    fn refuses_a_multiplier_that_scales_a_burst_past_its_ring() {
        let err = problems(
            "plans:\n  free:\n    limits:\n      - { rate: 3000000000/day, burst: 10% }\n  big:\n    extends: free\n    multiplier: 2\n",
        );
        assert!(
            err.contains("t.yaml:7: plans.big.multiplier: scales an inherited amount of plan \"big\" to 6000000000, whose burst ceiling is more than 4294967295"),
            "{err}"
        );
    }

    #[test]
    fn names_each_bad_threshold_and_webhook_by_line_and_field() {
        let yaml = "events:
  thresholds: [80%, 150%]
  webhooks:
    - url: ftp://example.com/hook
      secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    - url: http://example.com/hook
      secret: not-a-secret
    - url: http://example.com/hook
    - url: http://example.com/hook
      secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
      plans: [gold]
      thresholds: [0%]
plans:
  free:
    events: { thresholds: [eighty] }
    limits:
      - { rate: 10/minute, thresholds: [100.5%] }
";
        let out = problems(yaml);
        for expected in [
            "t.yaml:2: events.thresholds[1]: must be a percentage from 1% to 100%",
            "t.yaml:4: events.webhooks[0].url: invalid webhook url",
            "t.yaml:7: events.webhooks[1].secret: it must start with `whsec_`",
            "t.yaml:8: events.webhooks[2].secret: is required",
            "t.yaml:11: events.webhooks[3].plans[0]: no plan named \"gold\"",
            "t.yaml:12: events.webhooks[3].thresholds[0]: must be a percentage",
            "t.yaml:15: plans.free.events.thresholds[0]: must be a percentage",
            "t.yaml:17: plans.free.limits[0].thresholds[0]: must be a percentage",
        ] {
            assert!(out.contains(expected), "{expected}\nin:\n{out}");
        }
    }

    #[test]
    fn a_limit_inherits_thresholds_from_its_plan_its_parent_or_the_file() {
        let yaml = "events: { thresholds: [100%] }
plans:
  free:
    events: { thresholds: [50%] }
    limits: [ { name: a, rate: 10/minute }, { name: b, rate: 10/hour, thresholds: [] } ]
  pro: { extends: free, limits: [ { name: c, rate: 5/second } ] }
  solo: { limits: [ { name: d, rate: 10/minute } ] }
default_plan: free
";
        let catalog =
            crate::config::parse("t.yaml", yaml, &SlotRegistry::default()).expect("valid");
        let of = |plan: &str, limit: &str| {
            let l = catalog.plans[plan]
                .limits
                .iter()
                .find(|l| &*l.name == limit)
                .expect("limit");
            l.thresholds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("free", "a"), ["50%"]);
        assert!(of("free", "b").is_empty());
        assert_eq!(of("pro", "a"), ["50%"]);
        assert_eq!(of("pro", "c"), ["50%"]);
        assert_eq!(of("solo", "d"), ["100%"]);
    }
}
