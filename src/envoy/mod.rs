//! Envoy's external rate limit service (`envoy.service.ratelimit.v3`), a
//! drop-in for envoyproxy/ratelimit.
//!
//! Two kinds of domains answer `ShouldRateLimit`:
//! - **rule files** in envoyproxy/ratelimit's format ([`rules`]), loaded from
//!   `--envoy-config DIR`, matched and counted as the reference does, with
//!   opt-in sliding windows, token buckets, bursts, any window and several
//!   limits on one descriptor;
//! - **plan-aware domains** (`envoy.domains` in tollgate's configuration),
//!   whose descriptor entries name the subject, account, plan, resource and
//!   costs, so Envoy's requests go through the plans like `Consume`.
//!
//! This module adapts; the counting is the engine's and the plans' own.

mod answer;
mod compile;
mod files;
mod load;
mod metadata;
mod options;
pub mod raw;
pub mod rules;
mod service;
mod source;

pub use options::{
    DEFAULT_MAX_DESCRIPTORS, DEFAULT_MAX_ENTRIES, HeaderNames, MAX_ENTRY_LEN, Options,
};
pub use rules::RuleSet;
pub use service::EnvoyService;
pub use source::RuleSource;
