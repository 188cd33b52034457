//! The rate-limit headers a gateway forwards, built from a decision.
//!
//! `X-RateLimit-*` describe the most constraining limit (the decision's
//! first): its published size, what is left, and when it resets, in Unix
//! seconds. The IETF fields (draft-ietf-httpapi-ratelimit-headers-11) list
//! every limit as a named policy: `RateLimit-Policy: "name";q=<quota>;w=<window
//! seconds>` and `RateLimit: "name";r=<remaining>;t=<seconds to reset>`.
//! `Retry-After` (seconds, rounded up) is present only when rate limited.

use std::fmt::Write;

use super::decision::{Decision, Verdict};
use crate::engine::{Nanos, clock::SECOND};
use crate::plans::HeaderStyle;

/// The headers for `decision` made at `now`.
pub fn build(style: HeaderStyle, decision: &Decision, now: Nanos) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    // What the caller is held to: never a shadow limit.
    let counted: Vec<_> = decision
        .limits
        .iter()
        .filter(|l| !l.unlimited() && !l.limit.shadow)
        .collect();
    let Some(first) = counted.first() else {
        return headers;
    };
    if matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both) {
        headers.push(("X-RateLimit-Limit", first.amount().to_string()));
        headers.push(("X-RateLimit-Remaining", first.remaining.to_string()));
        headers.push((
            "X-RateLimit-Reset",
            first.reset_at.div_ceil(SECOND).to_string(),
        ));
    }
    if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
        let mut policy = String::new();
        let mut state = String::new();
        for (i, l) in counted.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let name = sf_string(&l.limit.name);
            let _ = write!(policy, "{sep}{name};q={}", l.amount());
            // A concurrency limit has no window.
            if l.window() > 0 {
                let _ = write!(policy, ";w={}", l.window().div_ceil(SECOND));
            }
            if &*l.limit.unit != "requests" {
                let _ = write!(policy, ";qu={}", sf_string(&l.limit.unit));
            }
            let reset = l.reset_at.saturating_sub(now).div_ceil(SECOND);
            let _ = write!(state, "{sep}{name};r={};t={reset}", l.remaining);
        }
        headers.push(("RateLimit-Policy", policy));
        headers.push(("RateLimit", state));
    }
    if decision.verdict == Verdict::RateLimited {
        let wait = decision.retry_after.unwrap_or(0).div_ceil(SECOND).max(1);
        headers.push(("Retry-After", wait.to_string()));
    }
    headers
}

/// A structured-field string: quoted, with `\` and `"` escaped, printable ASCII only.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}
