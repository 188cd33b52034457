//! proto ⇄ domain. Bad input becomes [`Error::Invalid`] naming the field.

use std::time::{Duration, UNIX_EPOCH};

use crate::engine::{Algorithm, Nanos};
use crate::error::Error;
use crate::limiter::{Decision, LimitStatus, Request, Verdict};
use crate::plans::overrides::{Change, Custom, Override};
use crate::plans::resolver::Source;
use crate::plans::{LimitKind, ParsePerError, Per};
use crate::proto::tollgate::v1 as pb;
use crate::watch::{Cause, Update};

/// The longest string accepted in a request, in bytes: a subject, account
/// or resource, a cost's unit, and every string of an admin call (account,
/// plan, limit, reason, class, unit).
pub const MAX_ID_LEN: usize = 1024;

/// Fails with [`Error::Invalid`] when `value` is longer than [`MAX_ID_LEN`].
pub fn bounded(field: &str, value: &str) -> Result<(), Error> {
    Error::bounded(field, value, MAX_ID_LEN)
}

/// Checks a `LimitRequest` and borrows it as a limiter request, decided by
/// `deadline` if its caller has one.
pub fn limit_request(
    r: &pb::LimitRequest,
    deadline: Option<tokio::time::Instant>,
) -> Result<Request<'_>, Error> {
    Error::required("subject", &r.subject)?;
    for (field, value) in [
        ("subject", &r.subject),
        ("account", &r.account),
        ("resource", &r.resource),
    ] {
        bounded(field, value)?;
    }
    if let Some(unit) = r.cost.keys().find(|u| u.trim().is_empty()) {
        return Err(Error::invalid(
            "cost",
            format!("unit name {unit:?} must not be empty"),
        ));
    }
    for (unit, &n) in &r.cost {
        bounded("cost", unit)?;
        crate::config::check_amount(n).map_err(|e| Error::invalid(format!("cost[{unit}]"), e))?;
    }
    let method = ["method", ":method"]
        .iter()
        .find_map(|k| r.attributes.get(*k))
        .map(String::as_str)
        .filter(|m| !m.is_empty());
    Ok(Request {
        subject: &r.subject,
        account: &r.account,
        resource: &r.resource,
        method,
        plan: None,
        cost: &r.cost,
        deadline,
    })
}

/// A decision as sent.
pub fn decision(d: Decision) -> pb::Decision {
    pb::Decision {
        verdict: verdict(d.verdict) as i32,
        plan: d.plan.to_string(),
        class: d.class.as_deref().unwrap_or_default().to_owned(),
        limits: d.limits.iter().map(limit_status).collect(),
        retry_after: d.retry_after.map(duration),
        headers: d
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        reason: d.reason,
        reservation: d.reservation.map(|(id, expires_at)| pb::Reservation {
            id: id.to_string(),
            expires_at: Some(timestamp(expires_at)),
        }),
    }
}

/// A settlement as sent.
pub fn settlement(s: crate::limiter::reservations::Settlement) -> pb::Settlement {
    pb::Settlement {
        id: s.id.to_string(),
        estimate: s.estimate.into_iter().collect(),
        actual: s.actual.into_iter().collect(),
    }
}

/// A limit's state as sent.
pub fn limit_status(l: &LimitStatus) -> pb::LimitStatus {
    let unlimited = l.unlimited();
    pb::LimitStatus {
        name: l.limit.name.to_string(),
        unit: l.limit.unit.to_string(),
        limit: l.amount(),
        remaining: (!unlimited).then_some(l.remaining),
        window: (l.window() > 0).then(|| duration(l.window())),
        reset_at: (!unlimited).then(|| timestamp(l.reset_at)),
        unlimited,
        class: l.limit.class.as_deref().unwrap_or_default().to_owned(),
        algorithm: l.algorithm().map_or(pb::Algorithm::Unspecified, algorithm) as i32,
        shadow: l.limit.shadow,
        would_deny: l.limit.shadow && l.denied,
    }
}

/// A quota update as sent.
pub fn quota_update(u: &Update) -> pb::QuotaUpdate {
    pb::QuotaUpdate {
        cause: cause(u.cause) as i32,
        plan: u.quota.plan.name.to_string(),
        limits: u.quota.limits.iter().map(limit_status).collect(),
        at: Some(timestamp(u.quota.at)),
    }
}

fn cause(c: Cause) -> pb::quota_update::Cause {
    use pb::quota_update::Cause as C;
    match c {
        Cause::Snapshot => C::Snapshot,
        Cause::Consumption => C::Consumption,
        Cause::WindowReset => C::WindowReset,
        Cause::PlanChanged => C::PlanChanged,
        Cause::OverrideChanged => C::OverrideChanged,
        Cause::ConfigReloaded => C::ConfigReloaded,
    }
}

/// An algorithm as sent.
pub fn algorithm(a: Algorithm) -> pb::Algorithm {
    match a {
        Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
        Algorithm::SlidingWindow | Algorithm::SlidingRing => pb::Algorithm::SlidingWindow,
        Algorithm::Calendar => pb::Algorithm::FixedWindow,
        Algorithm::TokenBucket => pb::Algorithm::TokenBucket,
    }
}

/// A verdict as sent.
pub fn verdict(v: Verdict) -> pb::Verdict {
    match v {
        Verdict::Allowed => pb::Verdict::Allowed,
        Verdict::RateLimited => pb::Verdict::RateLimited,
        Verdict::NotInPlan => pb::Verdict::NotInPlan,
        Verdict::TooLarge => pb::Verdict::TooLarge,
    }
}

/// A duration as sent.
pub fn duration(n: Nanos) -> prost_types::Duration {
    prost_types::Duration::try_from(Duration::from_nanos(n)).unwrap_or_default()
}

/// A time as a protobuf timestamp.
pub fn timestamp(n: Nanos) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_nanos(n))
}

/// A timestamp as received; before the epoch or unreadable is invalid.
pub fn nanos_of(t: &prost_types::Timestamp) -> Result<Nanos, Error> {
    time_of("expires_at", t)
}

/// The timestamp of `field` as received; before the epoch or unreadable is
/// invalid, naming the field.
pub fn time_of(field: &'static str, t: &prost_types::Timestamp) -> Result<Nanos, Error> {
    let bad = || Error::invalid(field, "not a valid time after 1970");
    let secs = u64::try_from(t.seconds).map_err(|_| bad())?;
    let nanos = u64::try_from(t.nanos).map_err(|_| bad())?;
    secs.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)
}

/// A duration as nanoseconds; a negative or out-of-range one is refused
/// naming `field`.
pub fn duration_of(field: &'static str, d: &prost_types::Duration) -> Result<Nanos, Error> {
    let bad = || Error::invalid(field, "not a valid non-negative duration");
    let secs = u64::try_from(d.seconds).map_err(|_| bad())?;
    let nanos = u64::try_from(d.nanos).map_err(|_| bad())?;
    secs.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)
}

/// The custom limit an override with a `rate` defines.
pub fn custom(o: &pb::Override) -> Result<Custom, Error> {
    let (amount, window) = crate::config::parse_fixed_rate(&o.rate)
        .map_err(|e| Error::invalid("rate", e.to_string()))?;
    let per = match o.per.as_str() {
        "" => Per::Subject,
        per => per
            .parse()
            .map_err(|e: ParsePerError| Error::invalid("per", e.to_string()))?,
    };
    Ok(Custom {
        amount,
        window,
        class: (!o.class.is_empty()).then(|| o.class.clone()),
        unit: match o.unit.as_str() {
            "" => "requests".into(),
            crate::plans::CONCURRENT => {
                return Err(Error::invalid(
                    "unit",
                    "a concurrency limit is set in the configuration (unit: concurrent, amount: N), not by an override's rate",
                ));
            }
            unit => unit.to_owned(),
        },
        algorithm: match pb::Algorithm::try_from(o.algorithm).unwrap_or(pb::Algorithm::Unspecified)
        {
            pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow => Algorithm::FixedWindow,
            pb::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
            pb::Algorithm::TokenBucket => Algorithm::TokenBucket,
        },
        per,
    })
}

/// An override as sent.
pub fn override_to_pb(account: &str, o: &Override) -> pb::Override {
    let mut out = pb::Override {
        account: account.to_owned(),
        limit: o.limit.clone(),
        expires_at: o.expires_at.map(timestamp),
        reason: o.reason.clone(),
        ..Default::default()
    };
    match &o.change {
        Change::Amount(n) => out.amount = *n,
        Change::Unlimited => out.unlimited = true,
        Change::Custom(c) => {
            out.amount = c.amount;
            out.rate = format!("{}/{}", c.amount, crate::plans::window_name(c.window));
            out.class = c.class.clone().unwrap_or_default();
            out.unit = c.unit.clone();
            out.algorithm = algorithm(c.algorithm) as i32;
            out.per = c.per.as_str().to_owned();
        }
    }
    out
}

/// A plan's limit as `ListPlans` describes it.
pub fn limit_info(l: &crate::plans::Limit) -> pb::LimitInfo {
    let mut info = pb::LimitInfo {
        name: l.name.to_string(),
        class: l.class.as_deref().unwrap_or_default().to_owned(),
        unit: l.unit.to_string(),
        window: (l.window > 0).then(|| duration(l.window)),
        max_cost: l.max_cost.unwrap_or(0),
        per: l.per.as_str().to_owned(),
        ..Default::default()
    };
    match &l.kind {
        LimitKind::Counted {
            rate,
            algorithm: a,
            burst,
            ..
        } => {
            info.amount = rate.amount();
            info.algorithm = algorithm(*a) as i32;
            info.burst = burst.map_or(0, |(cap, _)| cap.amount());
        }
        LimitKind::Unlimited => info.unlimited = true,
        LimitKind::Deny(m) => info.deny = m.to_string(),
    }
    info
}

/// Where a plan comes from, as sent.
pub fn plan_source(source: Source) -> pb::PlanSource {
    match source {
        Source::Runtime => pb::PlanSource::Runtime,
        Source::Config => pb::PlanSource::Config,
        Source::Default => pb::PlanSource::Default,
    }
}
