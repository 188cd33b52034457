//! envoyproxy/ratelimit rule files as written: a serde mirror, strict per
//! level (a key valid in `rate_limit` is refused on a descriptor, unlike the
//! reference, which checks every key against one flat list).

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::config::raw::Burst;

/// One file: a domain and its descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// The domain, as Envoy sends it.
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    /// The top-level descriptors.
    #[serde(default)]
    pub descriptors: Option<Vec<Spanned<RawDescriptor>>>,
}

/// One descriptor rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDescriptor {
    /// The entry key to match. Required.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// The entry value to match; `*` matches any run of characters. Absent:
    /// any value, each counted on its own.
    #[serde(default)]
    pub value: Option<Spanned<String>>,
    /// The limit; a list of limits counts them together (tollgate), e.g.
    /// 10/second and 1000/day.
    #[serde(default)]
    pub rate_limit: Option<Spanned<RateLimits>>,
    /// The same as a list in `rate_limit`.
    #[serde(default)]
    pub rate_limits: Option<Spanned<Vec<Spanned<RawRateLimit>>>>,
    /// Nested descriptors: the next entry of the request.
    #[serde(default)]
    pub descriptors: Option<Vec<Spanned<RawDescriptor>>>,
    /// Count and report, but never answer OVER_LIMIT.
    #[serde(default)]
    pub shadow_mode: bool,
    /// Over the limit only when every quota-mode descriptor of the request is.
    #[serde(default)]
    pub quota_mode: bool,
    /// The reference's statistics option; accepted (see README).
    #[serde(default)]
    pub detailed_metric: bool,
    /// The reference's statistics option; accepted (see README).
    #[serde(default)]
    pub value_to_metric: bool,
    /// Every value matching this wildcard shares one counter.
    #[serde(default)]
    pub share_threshold: bool,
    /// Returned in the dynamic metadata when the descriptor passes.
    #[serde(default)]
    pub metadata: Option<Spanned<serde_json::Value>>,
}

/// `rate_limit:` as the reference writes it, or a list of limits.
#[derive(Debug)]
pub enum RateLimits {
    /// One limit (the reference's form).
    One(Box<RawRateLimit>),
    /// Several, counted together.
    Many(Vec<Spanned<RawRateLimit>>),
}

impl<'de> Deserialize<'de> for RateLimits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = RateLimits;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate limit, or a list of rate limits")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RateLimits, A::Error> {
                RawRateLimit::deserialize(MapAccessDeserializer::new(map))
                    .map(|r| RateLimits::One(Box::new(r)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RateLimits, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(RateLimits::Many)
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// One limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `second`, `minute`, `hour`, `day`, `week`, `month` or `year`.
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Requests per unit; 0 refuses every request.
    #[serde(default)]
    pub requests_per_unit: Option<Spanned<u32>>,
    /// No limit: answered OK without counting.
    #[serde(default)]
    pub unlimited: bool,
    /// Named in answers; other rules can replace it by this name.
    #[serde(default)]
    pub name: Option<String>,
    /// Limits (by name) this one replaces when both match.
    #[serde(default)]
    pub replaces: Option<Vec<Spanned<RawReplace>>>,
    /// tollgate: `fixed_window` (default), `sliding_window` or `token_bucket`.
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
    /// tollgate: extra allowance over the rate, `20%` or a number of requests.
    #[serde(default)]
    pub burst: Option<Spanned<Burst>>,
    /// tollgate: any window, `30s`, `5m`, instead of `unit`.
    #[serde(default)]
    pub window: Option<Spanned<String>>,
}

/// One entry of `replaces`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplace {
    /// The name of the limit replaced.
    #[serde(default)]
    pub name: Option<String>,
}
