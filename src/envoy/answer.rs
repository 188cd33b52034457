//! One descriptor's answer: the status Envoy gets, built from a rule's
//! counters or from a plan decision, and the helpers that shape it.

use super::rules::{RuleLimit, Unit};
use crate::engine::{Nanos, clock::SECOND};
use crate::limiter::{self, Verdict};
use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as PbUnit,
};

/// One descriptor's answer before the overall rules.
pub(super) struct Answer {
    pub(super) status: DescriptorStatus,
    /// Unlimited: OK with `u32::MAX` remaining, outside the overall rules.
    pub(super) unlimited: bool,
    /// In quota mode.
    pub(super) quota: bool,
    /// Metadata to return when it passes.
    pub(super) metadata: Option<prost_types::Struct>,
    /// Why it is over (plan domains), for the response body.
    pub(super) reason: Option<String>,
    /// When rate limited (plan domains): the wait, for `Retry-After`.
    pub(super) retry_after: Option<Nanos>,
}

// === impl Answer ===

impl Answer {
    /// No limit applies: OK, nothing counted.
    pub(super) fn no_limit() -> Self {
        Self::of(DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        })
    }

    /// An unlimited rule: OK with the most there is left, outside the
    /// overall rules.
    pub(super) fn unlimited() -> Self {
        Self {
            unlimited: true,
            ..Self::of(DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..Default::default()
            })
        }
    }

    pub(super) fn of(status: DescriptorStatus) -> Self {
        Self {
            status,
            unlimited: false,
            quota: false,
            metadata: None,
            reason: None,
            retry_after: None,
        }
    }
}
/// A status under `limit`.
pub(super) fn status(
    code: Code,
    limit: &RuleLimit,
    remaining: u64,
    until: Nanos,
) -> DescriptorStatus {
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
pub(super) fn plan_answer(d: &limiter::Decision, now: Nanos) -> Answer {
    let code = if d.verdict == Verdict::Allowed {
        Code::Ok
    } else {
        Code::OverLimit
    };
    // What the caller is held to: never a shadow limit.
    let shown = d.limits.iter().find(|l| !l.unlimited() && !l.limit.shadow);
    let mut answer = match shown {
        Some(l) => {
            let until = match d.retry_after {
                Some(wait) if l.denied => wait,
                _ => l.reset_at.saturating_sub(now),
            };
            Answer::of(DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: l.limit.name.to_string(),
                    requests_per_unit: u32::try_from(l.amount()).unwrap_or(u32::MAX),
                    unit: pb_unit(Unit::of_window(l.window())) as i32,
                }),
                limit_remaining: u32::try_from(l.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(seconds(until)),
                quota: None,
            })
        }
        None if code == Code::Ok && !d.limits.is_empty() => Answer::unlimited(),
        None if code == Code::Ok => Answer::no_limit(),
        None => Answer::of(DescriptorStatus {
            code: code as i32,
            ..Default::default()
        }),
    };
    if code != Code::Ok {
        answer.reason = Some(d.reason.clone());
        answer.retry_after = d.retry_after;
    }
    answer
}

/// Whole seconds, rounded up, so Envoy's headers never say 0 while waiting.
pub(super) fn seconds(n: Nanos) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(n.div_ceil(SECOND)).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Envoy's unit for ours (`UNKNOWN` for a window that is no whole unit).
pub(super) fn pb_unit(unit: Option<Unit>) -> PbUnit {
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
pub(super) fn unit_of_override(unit: i32) -> Option<Unit> {
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

/// A response header.
pub(super) fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    }
}
