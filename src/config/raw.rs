//! The YAML file as written: a serde mirror with no meaning attached yet.
//!
//! Unknown keys are errors. Values that later checks refer to are
//! [`Spanned`], so those errors can name their line.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `x-ratelimit` (default), `ietf` or `both`.
    #[serde(default)]
    pub headers: Option<Spanned<String>>,
    /// Endpoint families, by name.
    #[serde(default)]
    pub classes: BTreeMap<String, RawClass>,
    /// Plans, by name.
    pub plans: Spanned<BTreeMap<String, Spanned<RawPlan>>>,
    /// The plan of accounts with no assignment.
    #[serde(default)]
    pub default_plan: Option<Spanned<String>>,
    /// Static account → plan assignments.
    #[serde(default)]
    pub assignments: BTreeMap<String, Spanned<String>>,
    /// Envoy rate limit domains answered from the plans.
    #[serde(default)]
    pub envoy: Option<RawEnvoy>,
    /// The HTTP front door.
    #[serde(default)]
    pub http: Option<RawHttp>,
    /// How resources are normalized before classes are matched.
    #[serde(default)]
    pub paths: Option<RawPaths>,
    /// Threshold events: the default thresholds and the webhooks.
    #[serde(default)]
    pub events: Option<RawEvents>,
    /// How long reservations are held: `{ ttl, max_ttl }`.
    #[serde(default)]
    pub reservations: Option<RawReservations>,
    /// Calendar windows (`week`, `month`, `year`): `{ zone }`.
    #[serde(default)]
    pub calendar: Option<RawCalendar>,
}

/// `calendar:` of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalendar {
    /// The IANA zone whose midnight starts a period; UTC when absent.
    #[serde(default)]
    pub zone: Option<Spanned<String>>,
}

/// `reservations:` of the file, or of a plan (`ttl` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservations {
    /// How long a reservation is held when the request does not say.
    #[serde(default)]
    pub ttl: Option<Spanned<String>>,
    /// The longest a request may ask for (the file's only).
    #[serde(default)]
    pub max_ttl: Option<Spanned<String>>,
}

/// `events:` at the top of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Usage shares announced for every limit that names none.
    #[serde(default)]
    pub thresholds: Option<Spanned<Vec<Spanned<RawPercent>>>>,
    /// Receivers of the events.
    #[serde(default)]
    pub webhooks: Vec<Spanned<RawWebhook>>,
}

/// `events:` of a plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlanEvents {
    /// Usage shares announced for the plan's limits that name none.
    #[serde(default)]
    pub thresholds: Option<Spanned<Vec<Spanned<RawPercent>>>>,
}

/// One of `events.webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://` or `https://`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// `whsec_` and a base64 key.
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    /// Only these thresholds.
    #[serde(default)]
    pub thresholds: Option<Vec<Spanned<RawPercent>>>,
    /// Only events of these plans.
    #[serde(default)]
    pub plans: Option<Vec<Spanned<String>>>,
}

/// A percentage as written: `80%` or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPercent {
    /// `80`.
    Number(f64),
    /// `80%`.
    Text(String),
}

/// `paths:`: what happens to a path that cannot be normalized safely.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// `refuse` (default), `keep` or `decode`.
    #[serde(default, rename = "unsafe")]
    pub unsafe_paths: Option<Spanned<String>>,
}

/// `http:`: the HTTP front door's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Where `/v1/forward-auth` reads a request's parts.
    #[serde(default)]
    pub forward_auth: Option<Spanned<RawForwardAuth>>,
}

/// `http.forward_auth`: the source of each part of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    /// Where the subject comes from. Required.
    #[serde(default)]
    pub subject: Option<Spanned<RawSource>>,
    /// Where the account comes from.
    #[serde(default)]
    pub account: Option<Spanned<RawSource>>,
    /// Unit → where the request's cost in that unit comes from (a header).
    #[serde(default)]
    pub cost: BTreeMap<String, Spanned<RawSource>>,
    /// The proxies (CIDRs) whose `X-Forwarded-For` entries are believed.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// A header only the gateway sends, with its value.
    #[serde(default)]
    pub require_header: Option<Spanned<RawRequiredHeader>>,
}

/// `http.forward_auth.require_header`: a shared secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequiredHeader {
    /// The header's name.
    #[serde(default)]
    pub header: Option<String>,
    /// Its value.
    #[serde(default)]
    pub value: Option<String>,
}

/// One source: exactly one of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// A header, by name.
    #[serde(default)]
    pub header: Option<String>,
    /// `true`: the token of `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer: Option<bool>,
    /// `true`: the client's address (`X-Forwarded-For`, `X-Real-IP`, the peer).
    #[serde(default)]
    pub client_ip: Option<bool>,
}

/// `envoy:`: how Envoy's descriptors map onto plans.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoy {
    /// Envoy domain → which descriptor entries carry what.
    #[serde(default)]
    pub domains: BTreeMap<String, Spanned<RawEnvoyDomain>>,
}

/// One plan-aware Envoy domain: the descriptor entry keys that carry each
/// part of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoyDomain {
    /// The entry whose value is the subject (API key, user). Required.
    #[serde(default)]
    pub subject: Option<Spanned<String>>,
    /// The entry whose value is the account.
    #[serde(default)]
    pub account: Option<String>,
    /// The entry whose value names the plan (e.g. from a JWT claim).
    #[serde(default)]
    pub plan: Option<String>,
    /// The entry whose value is the resource (`/path` or `GET /path`).
    #[serde(default)]
    pub resource: Option<String>,
    /// The entry whose value is the HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Entry → unit: the entry's value is the request's cost in that unit.
    #[serde(default)]
    pub cost: BTreeMap<String, String>,
}

/// A class: the resources it matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    /// Patterns: `[METHOD ]/path`, `*` matching any run of characters.
    #[serde(rename = "match")]
    pub patterns: Vec<Spanned<String>>,
    /// For people.
    #[serde(default)]
    pub description: Option<String>,
}

/// A plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The plan whose limits this one inherits.
    #[serde(default)]
    pub extends: Option<Spanned<String>>,
    /// Scales every inherited ceiling.
    #[serde(default)]
    pub multiplier: Option<Spanned<f64>>,
    /// This plan's own limits; they replace inherited ones of the same identity.
    #[serde(default)]
    pub limits: Vec<Spanned<RawLimit>>,
    /// For people.
    #[serde(default)]
    pub description: Option<String>,
    /// The thresholds of this plan's limits.
    #[serde(default)]
    pub events: Option<RawPlanEvents>,
    /// Every limit of the plan tried, not enforced.
    #[serde(default)]
    pub shadow: Option<Spanned<bool>>,
    /// How long this plan's reservations are held: `{ ttl }`.
    #[serde(default)]
    pub reservations: Option<RawReservations>,
}

/// One limit, deny or unlimited entry of a plan.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Shown in answers and headers; generated when absent.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// The class it applies to; every request of the subject when absent.
    #[serde(default)]
    pub class: Option<Spanned<String>>,
    /// What is counted; `requests` by default.
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// `<amount>/<window>`, e.g. `30/minute`, `5000/hour`, `10/30s`.
    #[serde(default)]
    pub rate: Option<Spanned<String>>,
    /// With `unlimited`, the window it lifts (all of the unit's when absent).
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    /// `fixed_window` (default), `sliding_window` or `token_bucket`.
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
    /// Extra allowance over the rate, `20%` or a number of units.
    #[serde(default)]
    pub burst: Option<Spanned<Burst>>,
    /// No limit for this unit (and window).
    #[serde(default)]
    pub unlimited: Option<Spanned<bool>>,
    /// The class is not in this plan; the message says why.
    #[serde(default)]
    pub deny: Option<Spanned<String>>,
    /// The most one request may cost.
    #[serde(default)]
    pub max_cost: Option<Spanned<u64>>,
    /// `subject` (default) or `account`.
    #[serde(default)]
    pub per: Option<Spanned<String>>,
    /// Usage shares whose crossing is announced, e.g. `[80%, 100%]`.
    #[serde(default)]
    pub thresholds: Option<Spanned<Vec<Spanned<RawPercent>>>>,
    /// Tried, not enforced: counted as if enforced, never refusing.
    #[serde(default)]
    pub shadow: Option<Spanned<bool>>,
    /// How long a reservation counted against it is held, when the request
    /// does not say (the shortest of a request's limits applies).
    #[serde(default)]
    pub reservation_ttl: Option<Spanned<String>>,
    /// With `unit: concurrent`, how many requests may be in flight at once.
    #[serde(default)]
    pub amount: Option<Spanned<u64>>,
}

/// `burst:` as written: a percentage string or a number of units.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Burst {
    /// Units.
    Units(u64),
    /// `20%`.
    Text(String),
}
