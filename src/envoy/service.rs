//! `ShouldRateLimit`: request → rules or plans → engine → statuses, with the
//! reference's overall-code rules on top.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;
use tonic::{Request, Response, Status};

type Deadline = tokio::time::Instant;

use super::answer::{Answer, header, plan_answer, seconds, status, unit_of_override};
use super::metadata::metadata;
use super::options::{MAX_ENTRY_LEN, Options};
use super::rules::{Matched, RuleLimit, RuleSet};
use super::source::RuleSource;
use crate::engine::{Algorithm, CounterKey, Item, Mode, Rate, clock::SECOND};
use crate::error::Error;
use crate::limiter::route::{self, Items};
use crate::limiter::{self, Limiter, Pressure};
use crate::otel::Parent;
use crate::plans::{Counted, EnvoyDomain};
use crate::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
use crate::proto::envoy::service::ratelimit::v3 as pb;
use crate::sink::{Decided, Door, Sink, What};
use pb::rate_limit_response::{Code, DescriptorStatus};

/// `envoy.service.ratelimit.v3.RateLimitService`.
#[derive(Debug)]
pub struct EnvoyService {
    limiter: Arc<Limiter>,
    rules: Arc<RuleSource>,
    options: Options,
    sink: Sink,
}

// === impl EnvoyService ===

impl EnvoyService {
    /// The service over `limiter` and `rules`.
    pub fn new(
        limiter: Arc<Limiter>,
        rules: Arc<RuleSource>,
        options: Options,
        sink: Sink,
    ) -> Self {
        Self {
            limiter,
            rules,
            options,
            sink,
        }
    }

    async fn answer(
        &self,
        r: &pb::RateLimitRequest,
        deadline: Option<Deadline>,
        parent: &Parent,
    ) -> Result<pb::RateLimitResponse, Error> {
        // The reference's errors, word for word (a plain error in Go's gRPC
        // is UNKNOWN).
        if r.domain.is_empty() {
            return Err(Error::Refused("rate limit domain must not be empty"));
        }
        if r.descriptors.is_empty() {
            return Err(Error::Refused(
                "rate limit descriptor list must not be empty",
            ));
        }
        self.check_size(r)?;
        let catalog = self.limiter.catalog();
        if let Some(domain) = catalog.envoy_domains.get(&r.domain) {
            // Each descriptor is a plan decision, counted in the metrics as one.
            let answers = self.plan_domain(domain, r, deadline, parent).await?;
            return Ok(self.overall(r, answers));
        }
        let started = Instant::now();
        let answers = self.rule_domain(&self.rules.current(), r, deadline).await?;
        let response = self.overall(r, answers);
        let counts = r.descriptors.iter().any(|d| hits(r, d) != 0);
        self.sink.decided(&Decided {
            door: Door::EnvoyRules,
            mode: if counts { Mode::Consume } else { Mode::Check },
            took: started.elapsed(),
            parent,
            what: What::Rules {
                domain: &r.domain,
                over_limit: response.overall_code == Code::OverLimit as i32,
            },
        });
        Ok(response)
    }

    /// Refuses a request past the caps before anything is matched or
    /// counted: too many descriptors or entries, an entry too long, or hits
    /// past the largest amount.
    fn check_size(&self, r: &pb::RateLimitRequest) -> Result<(), Error> {
        let (max_d, max_e) = (self.options.max_descriptors, self.options.max_entries);
        if r.descriptors.len() > max_d {
            return Err(Error::invalid(
                "descriptors",
                format!(
                    "{} descriptors, more than the {max_d} a request may carry (--envoy-max-descriptors)",
                    r.descriptors.len()
                ),
            ));
        }
        Error::bounded("domain", &r.domain, MAX_ENTRY_LEN)?;
        for (i, d) in r.descriptors.iter().enumerate() {
            if d.entries.len() > max_e {
                return Err(Error::invalid(
                    format!("descriptors[{i}].entries"),
                    format!(
                        "{} entries, more than the {max_e} a descriptor may carry (--envoy-max-entries)",
                        d.entries.len()
                    ),
                ));
            }
            for (j, e) in d.entries.iter().enumerate() {
                for (part, text) in [("key", &e.key), ("value", &e.value)] {
                    // The field's name is built only for the error: this
                    // runs for every entry of every call.
                    if text.len() > MAX_ENTRY_LEN {
                        let field = format!("descriptors[{i}].entries[{j}].{part}");
                        Error::bounded(&field, text, MAX_ENTRY_LEN)?;
                    }
                }
            }
            if let Some(n) = d.hits_addend {
                crate::config::check_amount(n)
                    .map_err(|e| Error::invalid(format!("descriptors[{i}].hits_addend"), e))?;
            }
        }
        Ok(())
    }

    /// Rule-file domains: match, then count each descriptor on its own, as
    /// the reference does.
    async fn rule_domain(
        &self,
        rules: &RuleSet,
        r: &pb::RateLimitRequest,
        deadline: Option<Deadline>,
    ) -> Result<Vec<Answer>, Error> {
        // Match every descriptor first: `replaces` looks across all of them.
        let matched = matched(rules, r)?;
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
                Some(Limits::Rule(m, _)) if m.rule.unlimited => Answer::unlimited(),
                Some(Limits::Rule(m, _))
                    if m.rule.names.iter().any(|n| replaced.contains(&&**n)) =>
                {
                    Answer::no_limit()
                }
                Some(Limits::Rule(m, entries)) if d.is_negative_hits => {
                    let scope = scope(&r.domain, entries, &m.shared);
                    self.give_back(&m.rule.limits, &scope, hits, deadline)
                        .await?
                }
                Some(Limits::Rule(m, entries)) => {
                    let scope = scope(&r.domain, entries, &m.shared);
                    let mut a = self.count(&m.rule.limits, &scope, hits, deadline).await?;
                    if m.rule.shadow_mode && a.status.code == Code::OverLimit as i32 {
                        a.status.code = Code::Ok as i32;
                    }
                    a.quota = m.rule.quota_mode;
                    a.metadata = m.rule.metadata.clone();
                    a
                }
                Some(Limits::Override(limit, entries)) => {
                    let scope = scope(&r.domain, entries, &[]);
                    self.count(std::slice::from_ref(limit), &scope, hits, deadline)
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
    async fn count(
        &self,
        limits: &[RuleLimit],
        scope: &str,
        hits: u64,
        deadline: Option<Deadline>,
    ) -> Result<Answer, Error> {
        if let Some(zero) = limits.iter().find(|l| l.amount == 0) {
            if let [one] = limits
                && one.algorithm == Algorithm::FixedWindow
                && one.burst.is_none()
            {
                return self.count_zero(one, scope, hits, deadline).await;
            }
            // Among several limits, or another algorithm: refuses everything.
            let now = self.limiter.now();
            let end = (now / zero.window + 1) * zero.window;
            return Ok(Answer::of(status(Code::OverLimit, zero, 0, end - now)));
        }
        let mut items = Items::new();
        for l in limits {
            route::push_items(&mut items, counted(l), scope, hits);
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
            .run(mode, scope, &items, None, deadline)
            .await?;

        // One status per limit (a burst's pair as one), then the most
        // constraining: refused with the longest wait, else the smallest
        // share left.
        let mut from_engine = outcome.items.iter();
        let mut best: Option<(DescriptorStatus, Pressure)> = None;
        for l in limits {
            let s = route::merged_status(counted(l), &mut from_engine);
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
            let wait = if s.fits { 0 } else { until };
            let rank = Pressure::of(!s.fits, wait, remaining, u64::from(l.amount));
            if best.as_ref().is_none_or(|(_, b)| rank < *b) {
                best = Some((status(code, l, remaining, until), rank));
            }
        }
        Ok(Answer::of(best.expect("a rule has one limit at least").0))
    }

    /// Negative hits (`is_negative_hits`): `hits` given back now to each
    /// of `limits` (what the current window, ring bucket or bucket still
    /// counts, at most), then the descriptor's state as a check reads it.
    async fn give_back(
        &self,
        limits: &[RuleLimit],
        scope: &str,
        hits: u64,
        deadline: Option<Deadline>,
    ) -> Result<Answer, Error> {
        let mut items = Items::new();
        for l in limits.iter().filter(|l| l.amount > 0) {
            route::push_items(&mut items, counted(l), scope, 0);
        }
        let now = self.limiter.now();
        let refunds: Vec<_> = items
            .iter()
            .map(|i| {
                let charged = crate::engine::algorithm::Charged {
                    units: hits,
                    rate: i.rate,
                    at: now,
                    free_at: crate::engine::Nanos::MAX,
                };
                (*i, charged)
            })
            .collect();
        if !refunds.is_empty() {
            self.limiter.refund(scope, &refunds).await?;
        }
        self.count(limits, scope, 0, deadline).await
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
        deadline: Option<Deadline>,
    ) -> Result<Answer, Error> {
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
            .run(mode, scope, &[item], None, deadline)
            .await?;
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
        deadline: Option<Deadline>,
        parent: &Parent,
    ) -> Result<Vec<Answer>, Error> {
        let mut answers = Vec::with_capacity(r.descriptors.len());
        for (i, d) in r.descriptors.iter().enumerate() {
            let entry = |key: Option<&str>| {
                key.and_then(|k| d.entries.iter().find(|e| e.key == k))
                    .map(|e| e.value.as_str())
            };
            // Negative hits carry no reservation to settle: a plan's
            // counts are given back by Settle and Release only.
            let subject = entry(Some(&domain.subject)).filter(|s| !s.is_empty());
            let Some(subject) = subject.filter(|_| !d.is_negative_hits) else {
                answers.push(Answer::no_limit());
                continue;
            };
            let hits = hits(r, d);
            let cost = plan_cost(domain, i, d, hits)?;
            let request = limiter::Request {
                subject,
                account: entry(domain.account.as_deref()).unwrap_or_default(),
                resource: entry(domain.resource.as_deref()).unwrap_or_default(),
                method: entry(domain.method.as_deref()).filter(|m| !m.is_empty()),
                plan: entry(domain.plan.as_deref()).filter(|p| !p.is_empty()),
                cost: &cost,
                deadline,
            };
            let mode = if hits == 0 {
                Mode::Check
            } else {
                Mode::Consume
            };
            let started = Instant::now();
            let decision = self.limiter.decide(mode, &request).await?;
            self.sink.decided(&Decided {
                door: Door::EnvoyPlans,
                mode,
                took: started.elapsed(),
                parent,
                what: What::Plan {
                    request: &request,
                    decision: &decision,
                },
            });
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
            // A plan refusal knows its wait: Envoy puts the header on its 429.
            let wait = answers
                .iter()
                .filter(|a| a.status.code == Code::OverLimit as i32)
                .filter_map(|a| a.retry_after)
                .max();
            if let (Some(wait), false) = (wait, self.options.shadow_mode) {
                response
                    .response_headers_to_add
                    .push(header("retry-after", seconds(wait).seconds.to_string()));
            }
        }
        response.statuses = answers.into_iter().map(|a| a.status).collect();
        response
    }
}

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for EnvoyService {
    async fn should_rate_limit(
        &self,
        request: Request<pb::RateLimitRequest>,
    ) -> Result<Response<pb::RateLimitResponse>, Status> {
        let deadline = crate::status::deadline(request.metadata());
        let parent = self.sink.parent(request.metadata().as_ref());
        let r = request.into_inner();
        let response = self.answer(&r, deadline, &parent).await?;
        tracing::debug!(domain = %r.domain, descriptors = r.descriptors.len(), overall = response.overall_code, "should_rate_limit");
        Ok(Response::new(response))
    }
}

/// What limits each descriptor of `r` (none: not limited).
fn matched<'r>(
    rules: &'r RuleSet,
    r: &'r pb::RateLimitRequest,
) -> Result<Vec<Option<Limits<'r>>>, Error> {
    let known = rules.has_domain(&r.domain);
    let mut matched = Vec::with_capacity(r.descriptors.len());
    for (i, d) in r.descriptors.iter().enumerate() {
        let entries: SmallVec<[(&str, &str); 4]> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let limits = if !known {
            None
        } else if let Some(o) = &d.limit {
            Some(Limits::Override(sent_limit(rules, i, o)?, entries))
        } else {
            rules
                .find(&r.domain, &entries)
                .map(|m| Limits::Rule(m, entries))
        };
        matched.push(limits);
    }
    Ok(matched)
}

/// The limit Envoy sent with descriptor `i`: a plain fixed window of its unit.
fn sent_limit(
    rules: &RuleSet,
    i: usize,
    o: &rate_limit_descriptor::RateLimitOverride,
) -> Result<RuleLimit, Error> {
    let unit = unit_of_override(o.unit).ok_or_else(|| {
        Error::invalid(
            format!("descriptors[{i}].limit.unit"),
            format!(
                "must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR, got {}",
                o.unit
            ),
        )
    })?;
    Ok(RuleLimit {
        name: "".into(),
        amount: o.requests_per_unit,
        window: unit.seconds() * SECOND,
        unit: Some(unit),
        algorithm: Algorithm::FixedWindow,
        slot: rules.unit_slot(unit),
        burst: None,
    })
}

/// The costs of descriptor `i` of a plan-aware domain: its hits in
/// requests, and each cost entry in its unit.
fn plan_cost(
    domain: &EnvoyDomain,
    i: usize,
    d: &RateLimitDescriptor,
    hits: u64,
) -> Result<HashMap<String, u64>, Error> {
    let mut cost = HashMap::new();
    if hits > 0 {
        cost.insert("requests".to_owned(), hits);
    }
    for (key, unit) in &domain.cost {
        if let Some((j, e)) = d.entries.iter().enumerate().find(|(_, e)| &e.key == key) {
            let n: u64 = e.value.trim().parse().map_err(|_| {
                Error::invalid(
                    format!("descriptors[{i}].entries[{j}].value"),
                    format!("the {unit} cost must be a whole number, got {:?}", e.value),
                )
            })?;
            crate::config::check_amount(n).map_err(|problem| {
                Error::invalid(format!("descriptors[{i}].entries[{j}].value"), problem)
            })?;
            cost.insert(unit.clone(), n);
        }
    }
    Ok(cost)
}

/// A rule limit as the engine counts it.
fn counted(l: &RuleLimit) -> Counted {
    Counted {
        rate: Rate::new(u64::from(l.amount), l.window).expect("nonzero amount and window"),
        algorithm: l.algorithm,
        slot: l.slot,
        burst: l.burst,
    }
}

/// What a descriptor is limited by.
enum Limits<'a> {
    /// A rule of the files.
    Rule(Matched<'a>, SmallVec<[(&'a str, &'a str); 4]>),
    /// The limit Envoy sent with the descriptor.
    Override(RuleLimit, SmallVec<[(&'a str, &'a str); 4]>),
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
    // `{tag}{len}:{p}`, without the formatting machinery (every call
    // builds one scope per descriptor).
    let part = |s: &mut String, tag: char, p: &str| {
        s.push(tag);
        s.push_str(itoa::Buffer::new().format(p.len()));
        s.push(':');
        s.push_str(p);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_prefix_every_part_with_its_length() {
        assert_eq!(
            scope("api", &[("key", "k1"), ("path", "/a")], &[]),
            "d3:apik3:keyv2:k1k4:pathv2:/a"
        );
        let long = "x".repeat(1234);
        assert_eq!(scope("", &[("k", &long)], &[Some("*")]), "d0:k1:k*1:*");
    }
}
