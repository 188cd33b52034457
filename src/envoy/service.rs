//! `ShouldRateLimit`: request → rules or plans → engine → statuses, with the
//! reference's overall-code rules on top.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;
use tonic::{Request, Response, Status};

use super::rules::{Matched, RuleLimit, RuleSet, Unit};
use super::{Options, RuleSource};
use crate::api::convert;
use crate::engine::{Algorithm, CounterKey, CounterStore, Item, Mode, Nanos, Rate, clock::SECOND};
use crate::limiter::{self, Limiter, Verdict};
use crate::plans::EnvoyDomain;
use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use crate::proto::envoy::service::ratelimit::v3 as pb;
use crate::server::metrics::{DecisionLabels, Label, Metrics};
use crate::watch::Hub;
use pb::rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit as PbUnit};

/// `envoy.service.ratelimit.v3.RateLimitService`.
pub struct EnvoyService<S> {
    limiter: Arc<Limiter<S>>,
    rules: Arc<RuleSource>,
    options: Options,
    hub: Arc<Hub<S>>,
    metrics: Arc<Metrics>,
}

/// One descriptor's answer before the overall rules.
struct Answer {
    status: DescriptorStatus,
    /// Unlimited: OK with `u32::MAX` remaining, outside the overall rules.
    unlimited: bool,
    /// In quota mode.
    quota: bool,
    /// Metadata to return when it passes.
    metadata: Option<prost_types::Struct>,
    /// Why it is over (plan domains), for the response body.
    reason: Option<String>,
}

// === impl EnvoyService ===

impl<S> EnvoyService<S> {
    /// The service over `limiter` and `rules`.
    pub fn new(
        limiter: Arc<Limiter<S>>,
        rules: Arc<RuleSource>,
        options: Options,
        hub: Arc<Hub<S>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limiter,
            rules,
            options,
            hub,
            metrics,
        }
    }
}

impl<S: CounterStore + 'static> EnvoyService<S> {
    async fn answer(&self, r: &pb::RateLimitRequest) -> Result<pb::RateLimitResponse, Status> {
        // The reference's errors, word for word (a plain error in Go's gRPC
        // is UNKNOWN).
        if r.domain.is_empty() {
            return Err(Status::unknown("rate limit domain must not be empty"));
        }
        if r.descriptors.is_empty() {
            return Err(Status::unknown(
                "rate limit descriptor list must not be empty",
            ));
        }
        let catalog = self.limiter.catalog();
        let answers = match catalog.envoy_domains.get(&r.domain) {
            Some(domain) => self.plan_domain(domain, r).await?,
            None => {
                let rules = self.rules.current_arc();
                self.rule_domain(&rules, r).await?
            }
        };
        Ok(self.overall(r, answers))
    }

    /// Rule-file domains: match, then count each descriptor on its own, as
    /// the reference does.
    async fn rule_domain(
        &self,
        rules: &RuleSet,
        r: &pb::RateLimitRequest,
    ) -> Result<Vec<Answer>, Status> {
        let known = rules.has_domain(&r.domain);
        // Match every descriptor first: `replaces` looks across all of them.
        let mut matched: Vec<Option<Limits<'_>>> = Vec::with_capacity(r.descriptors.len());
        for (i, d) in r.descriptors.iter().enumerate() {
            let entries: SmallVec<[(&str, &str); 4]> = d
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let limits = if !known {
                None
            } else if let Some(o) = &d.limit {
                let unit = unit_of_override(o.unit).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "descriptors[{i}].limit.unit: must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR, got {}",
                        o.unit
                    ))
                })?;
                Some(Limits::Override(
                    RuleLimit {
                        name: "".into(),
                        amount: o.requests_per_unit,
                        window: unit.seconds() * SECOND,
                        unit: Some(unit),
                        algorithm: Algorithm::FixedWindow,
                        slot: rules.unit_slot(unit),
                        burst: None,
                    },
                    entries,
                ))
            } else {
                rules
                    .find(&r.domain, &entries)
                    .map(|m| Limits::Rule(m, entries))
            };
            matched.push(limits);
        }
        let replaced: Vec<&str> = matched
            .iter()
            .flatten()
            .flat_map(|l| match l {
                Limits::Rule(m, _) => m.rule.replaces.iter().map(|n| &**n).collect(),
                Limits::Override(..) => Vec::new(),
            })
            .collect();

        let mut answers = Vec::with_capacity(matched.len());
        for (d, limits) in r.descriptors.iter().zip(&matched) {
            let hits = hits(r, d);
            let answer = match limits {
                None => Answer::no_limit(),
                Some(Limits::Rule(m, _)) if m.rule.unlimited => Answer {
                    unlimited: true,
                    ..Answer::no_limit()
                },
                Some(Limits::Rule(m, _))
                    if m.rule.names.iter().any(|n| replaced.contains(&&**n)) =>
                {
                    Answer::no_limit()
                }
                Some(Limits::Rule(m, entries)) => {
                    let scope = scope(&r.domain, entries, &m.shared);
                    let mut a = self.count(&m.rule.limits, &scope, hits).await?;
                    if m.rule.shadow_mode && a.status.code == Code::OverLimit as i32 {
                        a.status.code = Code::Ok as i32;
                    }
                    a.quota = m.rule.quota_mode;
                    a.metadata = m.rule.metadata.clone();
                    a
                }
                Some(Limits::Override(limit, entries)) => {
                    let scope = scope(&r.domain, entries, &[]);
                    self.count(std::slice::from_ref(limit), &scope, hits)
                        .await?
                }
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    /// Counts one descriptor against its limits: like the reference for one
    /// fixed window (every hit counts, even over the limit); all or nothing
    /// across several limits or another algorithm (a refused hit counts
    /// nowhere). `hits` 0 only checks.
    async fn count(&self, limits: &[RuleLimit], scope: &str, hits: u64) -> Result<Answer, Status> {
        if let Some(zero) = limits.iter().find(|l| l.amount == 0) {
            if let [one] = limits
                && one.algorithm == Algorithm::FixedWindow
                && one.burst.is_none()
            {
                return self.count_zero(one, scope, hits).await;
            }
            // Among several limits, or another algorithm: refuses everything.
            let now = self.limiter.now();
            let end = (now / zero.window + 1) * zero.window;
            return Ok(Answer::of(status(Code::OverLimit, zero, 0, end - now)));
        }
        let mut items: SmallVec<[Item<'_>; 4]> = SmallVec::new();
        for l in limits {
            let rate = Rate::new(u64::from(l.amount), l.window).expect("nonzero amount and window");
            items.push(Item {
                key: CounterKey {
                    scope,
                    slot: l.slot,
                },
                algorithm: l.algorithm,
                rate,
                cost: hits,
            });
            if let Some((cap, slot)) = l.burst {
                items.push(Item {
                    key: CounterKey { scope, slot },
                    algorithm: Algorithm::SlidingRing,
                    rate: cap,
                    cost: hits,
                });
            }
        }
        let reference = limits.len() == 1
            && limits[0].algorithm == Algorithm::FixedWindow
            && limits[0].burst.is_none();
        let mode = match (hits, reference) {
            (0, _) => Mode::Check,
            (_, true) => Mode::Record,
            (_, false) => Mode::Consume,
        };
        // The descriptor is its own hash tag: its counters share a slot.
        let (now, outcome) = self
            .limiter
            .run(mode, scope, &items, None)
            .await
            .map_err(convert::store_error)?;

        // One status per limit (a burst's pair as one), then the most
        // constraining: refused with the longest wait, else the smallest
        // share left.
        let mut from_engine = outcome.items.iter();
        let mut best: Option<(DescriptorStatus, (bool, Nanos, u64, u64))> = None;
        for l in limits {
            let mut s = *from_engine.next().expect("one status per item");
            if l.burst.is_some() {
                let cap = from_engine.next().expect("one status per burst item");
                s.fits &= cap.fits;
                s.wait = s.wait.max(cap.wait);
                if cap.remaining < s.remaining {
                    s.remaining = cap.remaining;
                    s.free_at = cap.free_at;
                }
            }
            let (code, remaining, until) = if s.fits {
                (Code::Ok, s.remaining, s.free_at.saturating_sub(now))
            } else {
                let until = if s.wait > 0 {
                    s.wait
                } else {
                    s.free_at.saturating_sub(now)
                };
                (Code::OverLimit, 0, until)
            };
            let rank = (s.fits, Nanos::MAX - until, remaining, u64::from(l.amount));
            let better = best.as_ref().is_none_or(|(_, b)| constrains_more(rank, *b));
            if better {
                best = Some((status(code, l, remaining, until), rank));
            }
        }
        Ok(Answer::of(best.expect("a rule has one limit at least").0))
    }

    /// A reference zero limit: counted like any fixed window, and over as
    /// soon as the window holds anything (so a check of a fresh window, with
    /// `hits_addend` 0, is OK with nothing remaining), as the reference
    /// answers `after > 0`.
    async fn count_zero(
        &self,
        limit: &RuleLimit,
        scope: &str,
        hits: u64,
    ) -> Result<Answer, Status> {
        // Large enough never to bind, small enough for Redis's exact integers.
        const UNBOUNDED: u64 = 1 << 52;
        let item = Item {
            key: CounterKey {
                scope,
                slot: limit.slot,
            },
            algorithm: Algorithm::FixedWindow,
            rate: Rate::new(UNBOUNDED, limit.window).expect("nonzero"),
            cost: hits,
        };
        let mode = if hits == 0 { Mode::Check } else { Mode::Record };
        let (now, outcome) = self
            .limiter
            .run(mode, scope, &[item], None)
            .await
            .map_err(convert::store_error)?;
        let s = outcome.items[0];
        let counted = UNBOUNDED.saturating_sub(s.remaining);
        let code = if counted > 0 {
            Code::OverLimit
        } else {
            Code::Ok
        };
        Ok(Answer::of(status(
            code,
            limit,
            0,
            s.free_at.saturating_sub(now),
        )))
    }

    /// Plan-aware domains: each descriptor is a `Consume` (or, with
    /// `hits_addend` 0, a `CheckLimit`) of its subject.
    async fn plan_domain(
        &self,
        domain: &EnvoyDomain,
        r: &pb::RateLimitRequest,
    ) -> Result<Vec<Answer>, Status> {
        let mut answers = Vec::with_capacity(r.descriptors.len());
        for (i, d) in r.descriptors.iter().enumerate() {
            let entry = |key: &Option<String>| {
                key.as_deref()
                    .and_then(|k| d.entries.iter().find(|e| e.key == k))
                    .map(|e| e.value.as_str())
            };
            let Some(subject) = entry(&Some(domain.subject.clone())).filter(|s| !s.is_empty())
            else {
                answers.push(Answer::no_limit());
                continue;
            };
            let hits = hits(r, d);
            let mut cost = HashMap::new();
            if hits > 0 {
                cost.insert("requests".to_owned(), hits);
            }
            for (key, unit) in &domain.cost {
                if let Some((j, e)) = d.entries.iter().enumerate().find(|(_, e)| &e.key == key) {
                    let n: u64 = e.value.trim().parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "descriptors[{i}].entries[{j}].value: the {unit} cost must be a whole number, got {:?}",
                            e.value
                        ))
                    })?;
                    cost.insert(unit.clone(), n);
                }
            }
            let request = limiter::Request {
                subject,
                account: entry(&domain.account).unwrap_or_default(),
                resource: entry(&domain.resource).unwrap_or_default(),
                method: entry(&domain.method).filter(|m| !m.is_empty()),
                plan: entry(&domain.plan).filter(|p| !p.is_empty()),
                cost: &cost,
            };
            let mode = if hits == 0 {
                Mode::Check
            } else {
                Mode::Consume
            };
            let started = Instant::now();
            let decision = self
                .limiter
                .decide_async(mode, &request)
                .await
                .map_err(convert::store_error)?;
            self.metrics.decision(
                &DecisionLabels {
                    rpc: "should_rate_limit",
                    verdict: verdict_label(decision.verdict),
                    plan: Label(decision.plan.clone()),
                    class: Label(decision.class.clone().unwrap_or_else(|| Arc::from(""))),
                },
                started.elapsed(),
            );
            if decision.counted {
                self.hub.consumed(request.subject, request.account);
            }
            answers.push(plan_answer(&decision, self.limiter.now()));
        }
        Ok(answers)
    }

    /// The reference's overall rules: OVER_LIMIT when a descriptor not in
    /// quota mode is over, or when every quota-mode descriptor is; headers
    /// from the most constraining descriptor; global shadow mode last.
    fn overall(&self, r: &pb::RateLimitRequest, answers: Vec<Answer>) -> pb::RateLimitResponse {
        let mut min_remaining = u32::MAX;
        let mut minimum: Option<usize> = None;
        let (mut failed, mut failed_quota, mut quota) = (0, 0, 0);
        let mut passed = Vec::new();
        let mut reason = None;
        for (i, a) in answers.iter().enumerate() {
            if a.unlimited {
                continue;
            }
            let s = &a.status;
            if s.current_limit.is_some() && s.limit_remaining < min_remaining {
                minimum = Some(i);
                min_remaining = s.limit_remaining;
            }
            let in_quota = self.options.quota_mode || a.quota;
            if s.code == Code::OverLimit as i32 {
                if in_quota {
                    failed_quota += 1;
                } else {
                    failed += 1;
                    minimum = Some(i);
                    min_remaining = 0;
                    reason = reason.or(a.reason.clone());
                }
            } else {
                passed.push(i);
            }
            if in_quota {
                quota += 1;
            }
        }
        let over = failed > 0 || (quota > 0 && quota == failed_quota);
        let mut response = pb::RateLimitResponse {
            overall_code: if over && !self.options.shadow_mode {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            ..Default::default()
        };
        if let (Some(names), Some(i)) = (&self.options.response_headers, minimum) {
            let s = &answers[i].status;
            let limit = s.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
            let reset = s.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
            response.response_headers_to_add = vec![
                header(&names.limit, limit.to_string()),
                header(&names.remaining, s.limit_remaining.to_string()),
                header(&names.reset, reset.to_string()),
            ];
        }
        if self.options.dynamic_metadata {
            response.dynamic_metadata = Some(metadata(r, &passed, &answers));
        }
        if over {
            response.raw_body = reason.unwrap_or_default().into_bytes();
        }
        response.statuses = answers
            .into_iter()
            .map(|a| {
                if a.unlimited {
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        limit_remaining: u32::MAX,
                        ..Default::default()
                    }
                } else {
                    a.status
                }
            })
            .collect();
        response
    }
}

#[tonic::async_trait]
impl<S: CounterStore + 'static> pb::rate_limit_service_server::RateLimitService
    for EnvoyService<S>
{
    async fn should_rate_limit(
        &self,
        request: Request<pb::RateLimitRequest>,
    ) -> Result<Response<pb::RateLimitResponse>, Status> {
        let r = request.into_inner();
        let started = Instant::now();
        let response = self.answer(&r).await?;
        if !self.limiter.catalog().envoy_domains.contains_key(&r.domain) {
            self.metrics.decision(
                &DecisionLabels {
                    rpc: "should_rate_limit",
                    verdict: if response.overall_code == Code::OverLimit as i32 {
                        "rate_limited"
                    } else {
                        "allowed"
                    },
                    plan: Label(Arc::from("")),
                    class: Label(Arc::from("")),
                },
                started.elapsed(),
            );
        }
        tracing::debug!(domain = %r.domain, descriptors = r.descriptors.len(), overall = response.overall_code, "should_rate_limit");
        Ok(Response::new(response))
    }
}

/// What a descriptor is limited by.
enum Limits<'a> {
    /// A rule of the files.
    Rule(Matched<'a>, SmallVec<[(&'a str, &'a str); 4]>),
    /// The limit Envoy sent with the descriptor.
    Override(RuleLimit, SmallVec<[(&'a str, &'a str); 4]>),
}

// === impl Answer ===

impl Answer {
    /// No limit applies: OK, nothing counted.
    fn no_limit() -> Self {
        Self::of(DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        })
    }

    fn of(status: DescriptorStatus) -> Self {
        Self {
            status,
            unlimited: false,
            quota: false,
            metadata: None,
            reason: None,
        }
    }
}

/// Whether `a` (fits, MAX - wait, remaining, amount) constrains more than `b`:
/// refused before admitted, then the longer wait, then the smaller share left.
fn constrains_more(a: (bool, Nanos, u64, u64), b: (bool, Nanos, u64, u64)) -> bool {
    if a.0 != b.0 {
        return !a.0;
    }
    if !a.0 {
        return a.1 < b.1;
    }
    u128::from(a.2) * u128::from(b.3.max(1)) < u128::from(b.2) * u128::from(a.3.max(1))
}

/// The hits a descriptor adds: its own `hits_addend` when set (0: check
/// only), else the request's, where 0 means 1.
fn hits(r: &pb::RateLimitRequest, d: &RateLimitDescriptor) -> u64 {
    d.hits_addend.unwrap_or(u64::from(r.hits_addend.max(1)))
}

/// A counter scope for a descriptor: the domain and every entry, each part
/// length-prefixed so no two descriptors share one; a shared wildcard stands
/// for its values.
fn scope(domain: &str, entries: &[(&str, &str)], shared: &[Option<&str>]) -> String {
    let mut s = String::with_capacity(
        domain.len()
            + entries
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>(),
    );
    let part = |s: &mut String, tag: char, p: &str| {
        let _ = write!(s, "{tag}{}:{p}", p.len());
    };
    part(&mut s, 'd', domain);
    for (i, (k, v)) in entries.iter().enumerate() {
        part(&mut s, 'k', k);
        match shared.get(i).copied().flatten() {
            Some(pattern) => part(&mut s, '*', pattern),
            None => part(&mut s, 'v', v),
        }
    }
    s
}

fn status(code: Code, limit: &RuleLimit, remaining: u64, until: Nanos) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: limit.name.to_string(),
            requests_per_unit: limit.amount,
            unit: pb_unit(limit.unit) as i32,
        }),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(seconds(until)),
        quota: None,
    }
}

/// A plan decision as a descriptor status: its most constraining limit.
fn plan_answer(d: &limiter::Decision, now: Nanos) -> Answer {
    let code = if d.verdict == Verdict::Allowed {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let shown = d.limits.iter().find(|l| !l.unlimited);
    let mut answer = match shown {
        Some(l) => {
            let until = match d.retry_after {
                Some(wait) if l.denied => wait,
                _ => l.reset_at.saturating_sub(now),
            };
            Answer::of(DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: l.name.to_string(),
                    requests_per_unit: u32::try_from(l.limit).unwrap_or(u32::MAX),
                    unit: pb_unit(Unit::of_window(l.window)) as i32,
                }),
                limit_remaining: u32::try_from(l.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(seconds(until)),
                quota: None,
            })
        }
        None if code == Code::Ok => Answer {
            unlimited: !d.limits.is_empty(),
            ..Answer::no_limit()
        },
        None => Answer::of(DescriptorStatus {
            code: code as i32,
            ..Default::default()
        }),
    };
    if code != Code::Ok {
        answer.reason = Some(d.reason.clone());
    }
    answer
}

/// Whole seconds, rounded up, so Envoy's headers never say 0 while waiting.
fn seconds(n: Nanos) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(n.div_ceil(SECOND)).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn pb_unit(unit: Option<Unit>) -> PbUnit {
    match unit {
        None => PbUnit::Unknown,
        Some(Unit::Second) => PbUnit::Second,
        Some(Unit::Minute) => PbUnit::Minute,
        Some(Unit::Hour) => PbUnit::Hour,
        Some(Unit::Day) => PbUnit::Day,
        Some(Unit::Week) => PbUnit::Week,
        Some(Unit::Month) => PbUnit::Month,
        Some(Unit::Year) => PbUnit::Year,
    }
}

/// The unit of a limit Envoy sends (`envoy.type.v3.RateLimitUnit`).
fn unit_of_override(unit: i32) -> Option<Unit> {
    use crate::proto::envoy::r#type::v3::RateLimitUnit as U;
    match U::try_from(unit).ok()? {
        U::Unknown => None,
        U::Second => Some(Unit::Second),
        U::Minute => Some(Unit::Minute),
        U::Hour => Some(Unit::Hour),
        U::Day => Some(Unit::Day),
        U::Week => Some(Unit::Week),
        U::Month => Some(Unit::Month),
        U::Year => Some(Unit::Year),
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::RateLimited => "rate_limited",
        Verdict::NotInPlan => "not_in_plan",
        Verdict::TooLarge => "too_large",
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    }
}

/// The reference's dynamic metadata: the domain, each descriptor's entries
/// (`key=value`), limit and hits, the request's hits, and the metadata of
/// the descriptors that passed (the first one wins a key).
fn metadata(r: &pb::RateLimitRequest, passed: &[usize], answers: &[Answer]) -> prost_types::Struct {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    let string = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let number = |n: f64| Value {
        kind: Some(Kind::NumberValue(n)),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("domain".to_owned(), string(r.domain.clone()));
    let descriptors = r
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::BTreeMap::new();
            let entries = d
                .entries
                .iter()
                .map(|e| string(format!("{}={}", e.key, e.value)))
                .collect();
            f.insert(
                "entries".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: entries })),
                },
            );
            if let Some(l) = &d.limit {
                let unit = crate::proto::envoy::r#type::v3::RateLimitUnit::try_from(l.unit)
                    .map_or_else(|_| l.unit.to_string(), |u| u.as_str_name().to_owned());
                f.insert(
                    "limit".to_owned(),
                    string(format!(
                        "requests_per_unit:{} unit:{unit}",
                        l.requests_per_unit
                    )),
                );
            }
            if let Some(h) = d.hits_addend {
                f.insert("hitsAddend".to_owned(), number(h as f64));
            }
            Value {
                kind: Some(Kind::StructValue(Struct { fields: f })),
            }
        })
        .collect();
    fields.insert(
        "descriptors".to_owned(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: descriptors,
            })),
        },
    );
    if r.hits_addend != 0 {
        fields.insert("hitsAddend".to_owned(), number(f64::from(r.hits_addend)));
    }
    let mut merged = Struct::default();
    for &i in passed {
        if let Some(m) = &answers[i].metadata {
            merge(&mut merged, m);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert(
            "metadata".to_owned(),
            Value {
                kind: Some(Kind::StructValue(merged)),
            },
        );
    }
    Struct { fields }
}

/// Adds `src`'s keys to `dest`; where both hold a struct, merges them; else
/// `dest` keeps its value.
fn merge(dest: &mut prost_types::Struct, src: &prost_types::Struct) {
    use prost_types::value::Kind;
    for (k, v) in &src.fields {
        match dest.fields.get_mut(k) {
            Some(prost_types::Value {
                kind: Some(Kind::StructValue(d)),
            }) => {
                if let Some(Kind::StructValue(s)) = &v.kind {
                    merge(d, s);
                }
            }
            Some(_) => {}
            None => {
                dest.fields.insert(k.clone(), v.clone());
            }
        }
    }
}
