//! The plan model, compiled from configuration: classes, plans and limits.
//!
//! A [`Catalog`] is immutable once built: inheritance and multipliers are
//! resolved, every plan has its limits pre-grouped per class ([`Route`]) and
//! the class matcher is precompiled, so the decision path only looks up.
//! Catalogs are swapped whole on reload; counters outlive them because a
//! limit's counter identity ([`SlotRegistry`]) does not name the plan.

pub mod events;
pub mod glob;
pub mod matcher;
pub mod overrides;
pub mod path;
pub mod resolver;
pub mod runtime;
mod trie;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::engine::{Algorithm, Nanos, Rate};

pub use matcher::Matcher;
pub use path::UnsafePaths;
pub use resolver::Resolver;

/// Everything the decision path needs from the configuration. A clone
/// shares the plans and copies only the class patterns and maps.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Resource → class.
    pub classes: Matcher,
    /// Class names, by class index.
    pub class_names: Vec<Arc<str>>,
    /// Plans by name.
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// The plan of accounts with no assignment.
    pub default_plan: Arc<Plan>,
    /// Static account → plan assignments from the file.
    pub assignments: HashMap<String, Arc<Plan>>,
    /// Which rate-limit headers decisions carry.
    pub headers: HeaderStyle,
    /// Envoy domains answered from the plans, by domain.
    pub envoy_domains: HashMap<String, EnvoyDomain>,
    /// Where the HTTP forward-auth endpoint reads a request's parts;
    /// `None`: the endpoint is not configured.
    pub forward_auth: Option<ForwardAuth>,
    /// What happens to a resource that cannot be normalized safely.
    pub unsafe_paths: UnsafePaths,
    /// Where threshold events go.
    pub events: events::Events,
    /// How long reservations are held.
    pub reservations: ReservationTtl,
}

/// `http.forward_auth`: which incoming header carries each part of a
/// request that a gateway asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuth {
    /// Where the subject comes from; a request without it is refused.
    pub subject: HeaderSource,
    /// Where the account comes from, if anywhere.
    pub account: Option<HeaderSource>,
    /// Unit → header whose value is the request's cost in that unit.
    pub cost: Vec<(String, String)>,
    /// The proxies whose `X-Forwarded-For` entries are believed; the client
    /// is the right-most address that is not one of them.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A header (lowercase name, value) only the gateway sends: a call
    /// without it is refused.
    pub require_header: Option<(String, String)>,
}

/// Where a forward-auth value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// A header's value, by name.
    Header(String),
    /// The token of `Authorization: Bearer <token>`.
    Bearer,
    /// The client's address: the connection's peer, unless it is a trusted
    /// proxy; then the right-most `X-Forwarded-For` entry that is not one
    /// (else `X-Real-IP`). It must be an IP address.
    ClientIp,
}

/// How an Envoy domain's descriptor entries map onto a request: each field
/// names the entry key that carries that part.
#[derive(Debug, Clone, Default)]
pub struct EnvoyDomain {
    /// The subject's entry. Descriptors without it are not limited.
    pub subject: String,
    /// The account's entry.
    pub account: Option<String>,
    /// The entry naming the plan, when the gateway knows it.
    pub plan: Option<String>,
    /// The resource's entry.
    pub resource: Option<String>,
    /// The HTTP method's entry.
    pub method: Option<String>,
    /// Entry key → unit it gives the cost of.
    pub cost: Vec<(String, String)>,
}

/// A plan with inheritance resolved.
#[derive(Debug)]
pub struct Plan {
    /// Its name.
    pub name: Arc<str>,
    /// For people.
    pub description: Option<String>,
    /// The plan it extends, if any.
    pub extends: Option<String>,
    /// Every entry of the plan (limits, denies, unlimited), in order.
    pub limits: Vec<Arc<Limit>>,
    /// Per class index + 1 (0 = no class): what applies to such a request.
    pub routes: Vec<Route>,
    /// The thresholds of a limit that names none (the plan's or the file's),
    /// for limits an override adds.
    pub thresholds: events::Thresholds,
    /// How long its reservations are held, when its limits and the request
    /// do not say.
    pub reservation_ttl: Option<Nanos>,
}

/// How long reservations are held: `reservations:` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationTtl {
    /// When nothing else says.
    pub default: Nanos,
    /// The longest a request may ask for.
    pub max: Nanos,
}

impl Default for ReservationTtl {
    fn default() -> Self {
        Self {
            default: 5 * 60 * crate::engine::clock::SECOND,
            max: 60 * 60 * crate::engine::clock::SECOND,
        }
    }
}

/// What applies to a request of one class under one plan.
#[derive(Debug, Default)]
pub struct Route {
    /// When set, the class is not in the plan: NOT_IN_PLAN with this message.
    pub deny: Option<Arc<str>>,
    /// Limits that apply, class-wide ones and the class's own.
    pub limits: Vec<Arc<Limit>>,
    /// Whether any of them is a shadow limit (decided apart).
    pub shadow: bool,
    /// Whether any enforced one is a concurrency limit: a Consume then
    /// holds its slot as a reservation.
    pub holds: bool,
}

/// The unit of a concurrency limit (`unit: concurrent`, `amount: N`):
/// requests in flight, each holding a slot from admission until it is
/// settled, released or expires.
pub const CONCURRENT: &str = "concurrent";

/// The window of a concurrency limit's counter: one that never ends (2^62
/// ns from the epoch, in the year 2116), so its count goes down only when
/// a slot is given back. Answers show no window for it.
pub const IN_FLIGHT: Nanos = 1 << 62;

/// One limit of a plan.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Shown in answers and headers.
    pub name: Arc<str>,
    /// The class it is for; `None` for every request of the subject.
    pub class: Option<Arc<str>>,
    /// What it counts.
    pub unit: Arc<str>,
    /// Who it counts: the subject or its account.
    pub per: Per,
    /// The window; 0 for an unlimited entry without one.
    pub window: Nanos,
    /// How it counts, or that it does not.
    pub kind: LimitKind,
    /// The most one request may cost, if limited.
    pub max_cost: Option<u64>,
    /// The usage shares whose crossing is announced (`events`); empty for
    /// none.
    pub thresholds: events::Thresholds,
    /// How long a reservation counted against it is held, when the request
    /// does not say.
    pub reservation_ttl: Option<Nanos>,
    /// Tried, not enforced: counted as if enforced, never refusing.
    pub shadow: bool,
}

/// How a limit counts.
#[derive(Debug, Clone)]
pub enum LimitKind {
    /// It does not: shown as unlimited.
    Unlimited,
    /// The class is not in the plan.
    Deny(Arc<str>),
    /// It counts with `algorithm` at `rate` on counter `slot`.
    Counted {
        /// The published rate.
        rate: Rate,
        /// How.
        algorithm: Algorithm,
        /// Counter identity.
        slot: u32,
        /// A burst allowance: a sliding window of the larger rate, counted
        /// together with a token bucket at `rate` (see README, "Bursts").
        burst: Option<(Rate, u32)>,
    },
}

/// A limit as the engine counts it: one counter at the published rate,
/// and with a burst a second one at the ceiling, counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The published rate.
    pub rate: Rate,
    /// How.
    pub algorithm: Algorithm,
    /// Counter identity.
    pub slot: u32,
    /// The burst ceiling and its counter identity.
    pub burst: Option<(Rate, u32)>,
}

/// Who a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Each subject (API key) on its own.
    Subject,
    /// All subjects of one account together.
    Account,
}

/// Which rate-limit headers a decision carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`, `Retry-After`.
    #[default]
    XRateLimit,
    /// The IETF `RateLimit` and `RateLimit-Policy` fields (draft 11), and `Retry-After`.
    Ietf,
    /// Both sets.
    Both,
}

/// Interns counter identities (per, class, unit, window, algorithm) as small
/// numbers. Shared by every catalog of a running server, so an identity keeps
/// its number, and its counters, across reloads.
#[derive(Debug, Default)]
pub struct SlotRegistry {
    /// Identity → number; interning is rare (config loads) and locks.
    ids: Mutex<HashMap<String, u32>>,
    /// Number → identity, read on every Redis decision without a lock.
    names: ArcSwap<Vec<Arc<str>>>,
    /// Number → how its counters count, when a limit said so: what the
    /// memory store needs to remember an evicted counter.
    families: ArcSwap<Vec<Option<Family>>>,
}

/// How the counters of one identity count: their algorithm and window.
pub type Family = (Algorithm, Nanos);

/// A name that is not a [`Per`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected subject or account, got {0:?}")]
pub struct ParsePerError(pub String);

// === impl Catalog ===

impl Catalog {
    /// The class a resource belongs to, as an index into `class_names`.
    pub fn class_of(&self, method: Option<&str>, path: &str) -> Option<usize> {
        self.classes.find(method, path)
    }
}

// === impl Plan ===

impl Plan {
    /// A plan of `limits`, grouped per class of `class_names` into routes.
    pub fn new(
        name: &str,
        description: Option<String>,
        extends: Option<String>,
        limits: Vec<Arc<Limit>>,
        class_names: &[Arc<str>],
        thresholds: events::Thresholds,
    ) -> Self {
        let routes = (0..=class_names.len())
            .map(|route| {
                let class = route.checked_sub(1).map(|c| &class_names[c]);
                let mut r = Route::default();
                for limit in &limits {
                    match (&limit.class, class) {
                        (None, _) => {}
                        (Some(c), Some(rc)) if c == rc => {}
                        _ => continue,
                    }
                    match &limit.kind {
                        // A shadow plan refuses nothing, its denies neither.
                        LimitKind::Deny(_) if limit.shadow => {}
                        LimitKind::Deny(message) => r.deny = Some(message.clone()),
                        _ => {
                            r.shadow |= limit.shadow && limit.counted().is_some();
                            r.holds |= !limit.shadow && limit.concurrent();
                            r.limits.push(limit.clone());
                        }
                    }
                }
                r
            })
            .collect();
        Self {
            name: name.into(),
            description,
            extends,
            limits,
            routes,
            thresholds,
            reservation_ttl: None,
        }
    }

    /// What applies to a request of class `class`.
    pub fn route(&self, class: Option<usize>) -> &Route {
        &self.routes[class.map_or(0, |c| c + 1)]
    }
}

// === impl Limit ===

impl Limit {
    /// Whether it limits requests in flight ([`CONCURRENT`]).
    pub fn concurrent(&self) -> bool {
        &*self.unit == CONCURRENT
    }

    /// How the engine counts it; `None` when it does not count.
    pub fn counted(&self) -> Option<Counted> {
        match &self.kind {
            LimitKind::Counted {
                rate,
                algorithm,
                slot,
                burst,
            } => Some(Counted {
                rate: *rate,
                algorithm: *algorithm,
                slot: *slot,
                burst: *burst,
            }),
            LimitKind::Unlimited | LimitKind::Deny(_) => None,
        }
    }
}

// === impl Per ===

impl Per {
    /// `subject` or `account`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Account => "account",
        }
    }
}

/// The one reading of `per:`, for configuration files and requests alike.
impl std::str::FromStr for Per {
    type Err = ParsePerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "subject" => Ok(Self::Subject),
            "account" => Ok(Self::Account),
            other => Err(ParsePerError(other.to_owned())),
        }
    }
}

// === impl SlotRegistry ===

impl SlotRegistry {
    /// The number of `identity`, assigning the next one if it is new.
    pub fn intern(&self, identity: &str) -> u32 {
        self.intern_with(identity, None)
    }

    /// As [`SlotRegistry::intern`], for a limit whose counters count with
    /// `algorithm` over `window`.
    pub fn intern_counter(&self, identity: &str, algorithm: Algorithm, window: Nanos) -> u32 {
        self.intern_with(identity, Some((algorithm, window)))
    }

    fn intern_with(&self, identity: &str, family: Option<Family>) -> u32 {
        let mut ids = self.ids.lock();
        if let Some(&id) = ids.get(identity) {
            if family.is_some() && self.family(id).is_none() {
                let mut families = (**self.families.load()).clone();
                families[id as usize] = family;
                self.families.store(Arc::new(families));
            }
            return id;
        }
        let mut names = (**self.names.load()).clone();
        let id = u32::try_from(names.len()).expect("fewer than 2^32 limit identities");
        names.push(identity.into());
        let mut families = (**self.families.load()).clone();
        families.push(family);
        // Published before the number is handed out, so readers find it.
        self.families.store(Arc::new(families));
        self.names.store(Arc::new(names));
        ids.insert(identity.to_owned(), id);
        id
    }

    /// How the counters numbered `slot` count, if a limit said so.
    pub fn family(&self, slot: u32) -> Option<Family> {
        self.families.load().get(slot as usize).copied().flatten()
    }

    /// Every identity interned so far.
    pub fn identities(&self) -> Vec<Arc<str>> {
        (**self.names.load()).clone()
    }

    /// The identity numbered `slot`.
    pub fn identity(&self, slot: u32) -> Option<Arc<str>> {
        self.names.load().get(slot as usize).cloned()
    }
}

/// The counter identity of a limit: what its counters are keyed by, never
/// the plan, so usage carries over plan changes.
pub fn counter_identity(
    per: Per,
    class: Option<&str>,
    unit: &str,
    window: Nanos,
    algorithm: Algorithm,
) -> String {
    format!(
        "{}|{}|{unit}|{window}|{}",
        per.as_str(),
        class.unwrap_or(""),
        algorithm.as_str()
    )
}

/// The name a limit gets when the configuration gives none:
/// `[class:]unit/window[@account]`.
pub fn default_name(class: Option<&str>, unit: &str, window: Option<Nanos>, per: Per) -> String {
    let class = class.map(|c| format!("{c}:")).unwrap_or_default();
    let per = if per == Per::Account { "@account" } else { "" };
    match window {
        Some(w) => format!("{class}{unit}/{}{per}", window_name(w)),
        None => format!("{class}{unit}{per}"),
    }
}

/// A window as people say it: `second`, `minute`, `hour`, `day`, `week`, or a
/// duration such as `30s`.
pub fn window_name(window: Nanos) -> String {
    const S: Nanos = crate::engine::clock::SECOND;
    match window {
        S => "second".into(),
        w if w == 60 * S => "minute".into(),
        w if w == 3600 * S => "hour".into(),
        w if w == 86_400 * S => "day".into(),
        w if w == 604_800 * S => "week".into(),
        w => humantime::format_duration(std::time::Duration::from_nanos(w))
            .to_string()
            .replace(' ', ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_per_names() {
        assert_eq!("subject".parse(), Ok(Per::Subject));
        assert_eq!("account".parse(), Ok(Per::Account));
        assert_eq!(
            "team".parse::<Per>().map_err(|e| e.to_string()),
            Err(r#"expected subject or account, got "team""#.to_owned())
        );
    }
}
