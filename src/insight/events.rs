//! Threshold events: when a decision moves a subject's usage of a limit
//! across one of the limit's thresholds (`events:` in the configuration),
//! one event, once per threshold per window.
//!
//! The crossing is read from the decision itself: a counted decision's
//! remaining units are what the counter store left (on Redis, the script's
//! own answer, atomic with the count), so usage after is `amount -
//! remaining` and usage before is that minus the cost. Within a fixed window
//! usage only grows, so exactly one decision crosses each threshold, on one
//! replica. Where usage can fall and rise again within a window (a token
//! bucket refilling, a sliding window's weight), a second crossing in the
//! same window is suppressed by the event's id: it is derived from the
//! subject, limit, threshold and window, so every replica names the same
//! crossing alike. Each replica remembers the ids it announced until their
//! window ends; with Redis, a crossing is announced by the replica that
//! claims its id there first (`SET NX`, one round trip per crossing, never
//! on the decision's own task), so three replicas send one event.
//!
//! Events go to `Admin.WatchEvents` streams and the SSE route (a broadcast
//! channel: a reader that falls behind skips what it missed, and is told so)
//! and to the configured webhooks (bounded queues; the decision never
//! waits).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::engine::{Mode, Nanos};
use crate::limiter::route::cost_of;
use crate::limiter::{Decision, Request, account_of};
use crate::log_every::LogEvery;
use crate::plans::events::{Threshold, Webhook};
use crate::storage::redis::RedisStore;
use crate::webhooks::{Endpoint, Policy, Webhooks};

/// One threshold crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The same for every replica that sees the same crossing:
    /// `evt_` and 32 hex digits.
    pub id: String,
    /// Whose usage crossed.
    pub subject: String,
    /// Its account.
    pub account: String,
    /// Its plan.
    pub plan: String,
    /// The limit's name.
    pub limit: String,
    /// What the limit counts.
    pub unit: String,
    /// The threshold crossed.
    pub threshold: Threshold,
    /// Units used after the decision.
    pub used: u64,
    /// The limit's amount.
    pub amount: u64,
    /// When the limit is next fully available.
    pub window_reset: Nanos,
    /// When it crossed.
    pub time: Nanos,
    /// The limit is tried, not enforced.
    pub shadow: bool,
}

/// Where events go: watchers and webhooks.
pub struct Events {
    watchers: broadcast::Sender<Arc<Event>>,
    /// Crossings already announced, by id, until their window ends.
    seen: Cache<u128, Duration>,
    webhooks: Arc<ArcSwap<Option<Delivery>>>,
    /// Shared by replicas: where a crossing is claimed before it is
    /// announced.
    shared: Option<RedisStore>,
}

/// The webhooks of the installed configuration and their delivery.
struct Delivery {
    config: Vec<Webhook>,
    webhooks: Webhooks,
}

/// How many events a watcher may fall behind before it skips.
const BACKLOG: usize = 4096;

/// Crossings remembered for suppression.
const REMEMBERED: u64 = 1 << 20;

// === impl Events ===

impl Events {
    /// No webhooks yet (see [`Events::configure`]); crossings claimed in
    /// `shared`, when replicas share one.
    pub fn new(shared: Option<RedisStore>) -> Self {
        Self {
            watchers: broadcast::channel(BACKLOG).0,
            seen: Cache::builder()
                .max_capacity(REMEMBERED)
                .expire_after(UntilWindowEnds)
                .build(),
            webhooks: Arc::new(ArcSwap::from_pointee(None)),
            shared,
        }
    }

    /// Delivers to `webhooks` from now on (a configuration installed). The
    /// previous receivers' queues finish on their own tasks. Must run inside
    /// a tokio runtime when the list is not empty.
    pub fn configure(&self, webhooks: &[Webhook]) {
        let current = self.webhooks.load();
        if current
            .as_ref()
            .as_ref()
            .is_some_and(|d| d.config == webhooks)
            || (current.is_none() && webhooks.is_empty())
        {
            return;
        }
        let endpoints = webhooks
            .iter()
            .map(|w| Endpoint {
                url: w.url.clone(),
                secret: w.secret.clone(),
            })
            .collect();
        let delivery = match webhooks.is_empty() {
            true => None,
            false => match Webhooks::start(endpoints, Policy::default()) {
                Ok(started) => Some(Delivery {
                    config: webhooks.to_vec(),
                    webhooks: started,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "webhooks not started");
                    None
                }
            },
        };
        self.webhooks.store(Arc::new(delivery));
    }

    /// A stream of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.watchers.subscribe()
    }

    /// Counters of webhook delivery: delivered, failed attempts, dropped,
    /// abandoned.
    pub fn webhook_stats(&self) -> [u64; 4] {
        use std::sync::atomic::Ordering::Relaxed;
        match self.webhooks.load().as_ref() {
            Some(d) => {
                let s = d.webhooks.stats();
                [
                    s.delivered.load(Relaxed),
                    s.failed_attempts.load(Relaxed),
                    s.dropped.load(Relaxed),
                    s.abandoned.load(Relaxed),
                ]
            }
            None => [0; 4],
        }
    }

    /// Looks for crossings in one decision made at `now`.
    pub fn decided(&self, mode: Mode, request: &Request<'_>, decision: &Decision, now: Nanos) {
        if !decision.counted || mode == Mode::Check {
            return;
        }
        for status in &decision.limits {
            let limit = &status.limit;
            if limit.thresholds.is_empty() {
                continue;
            }
            let Some(counted) = limit.counted() else {
                continue;
            };
            // A shadow limit that would have refused counted nothing.
            if status.denied && mode == Mode::Consume {
                continue;
            }
            let amount = counted.rate.amount();
            let cost = cost_of(request.cost, &limit.unit, mode);
            if cost == 0 {
                continue;
            }
            let after = amount.saturating_sub(status.remaining);
            let before = after.saturating_sub(cost);
            for &threshold in limit.thresholds.iter() {
                if threshold.crossed(amount, before, after) {
                    let account = account_of(request.subject, request.account);
                    let window = now / limit.window.max(1);
                    let key = id(request.subject, &limit.name, threshold, window);
                    let ends = (window + 1)
                        .saturating_mul(limit.window)
                        .saturating_sub(now);
                    // Remembered until the window ends; only the first
                    // crossing of the window is fresh.
                    let entry = self
                        .seen
                        .entry(key)
                        .or_insert_with(|| Duration::from_nanos(ends));
                    if !entry.is_fresh() {
                        continue;
                    }
                    let event = Event {
                        id: format!("evt_{key:032x}"),
                        subject: request.subject.to_owned(),
                        account: account.to_owned(),
                        plan: decision.plan.to_string(),
                        limit: limit.name.to_string(),
                        unit: limit.unit.to_string(),
                        threshold,
                        used: after,
                        amount,
                        window_reset: status.reset_at,
                        time: now,
                        shadow: limit.shadow,
                    };
                    self.announce(event, Duration::from_nanos(ends));
                }
            }
        }
    }

    /// Announces `event`, once its id is claimed when replicas share Redis
    /// (for `ttl`, the rest of its window).
    fn announce(&self, event: Event, ttl: Duration) {
        let Some(shared) = self.shared.clone() else {
            emit(&self.watchers, &self.webhooks, event);
            return;
        };
        let (watchers, webhooks) = (self.watchers.clone(), self.webhooks.clone());
        tokio::spawn(async move {
            match shared
                .claim(&format!("tollgate:event:{}", event.id), ttl)
                .await
            {
                Ok(true) => emit(&watchers, &webhooks, event),
                Ok(false) => {}
                Err(e) => {
                    // Better twice than never: a receiver drops a repeat by id.
                    if let Some(held) = CLAIM_FAILED.ready() {
                        tracing::warn!(error = %e, held, "threshold event not claimed in Redis; announced anyway");
                    }
                    emit(&watchers, &webhooks, event);
                }
            }
        });
    }
}

static CLAIM_FAILED: LogEvery = LogEvery::new(Duration::from_secs(10));

/// Hands `event` to the webhooks that want it and to the watchers.
fn emit(
    watchers: &broadcast::Sender<Arc<Event>>,
    webhooks: &ArcSwap<Option<Delivery>>,
    event: Event,
) {
    let event = Arc::new(event);
    if let Some(d) = webhooks.load().as_ref() {
        let to: Vec<usize> = d
            .config
            .iter()
            .enumerate()
            .filter(|(_, w)| wanted(w, &event))
            .map(|(i, _)| i)
            .collect();
        if !to.is_empty() {
            d.webhooks.send(&event.id, body(&event).into(), Some(&to));
        }
    }
    // No watcher is not an error.
    let _ = watchers.send(event);
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("watchers", &self.watchers.receiver_count())
            .finish_non_exhaustive()
    }
}

/// Whether webhook `w` wants `event`.
fn wanted(w: &Webhook, event: &Event) -> bool {
    w.thresholds
        .as_ref()
        .is_none_or(|t| t.contains(&event.threshold))
        && w.plans.as_ref().is_none_or(|p| p.contains(&event.plan))
}

/// The crossing's identity: the first 128 bits of SHA-256 over subject,
/// limit, threshold and window index.
fn id(subject: &str, limit: &str, threshold: Threshold, window: u64) -> u128 {
    let mut h = Sha256::new();
    for part in [subject.as_bytes(), b"\0", limit.as_bytes(), b"\0"] {
        h.update(part);
    }
    h.update(threshold.basis_points().to_be_bytes());
    h.update(window.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// An event as a webhook's JSON body, as the Standard Webhooks
/// specification suggests: `type`, `timestamp`, `data`.
pub fn body(e: &Event) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "quota.threshold_crossed",
        "timestamp": rfc3339(e.time),
        "data": {
            "id": e.id,
            "subject": e.subject,
            "account": e.account,
            "plan": e.plan,
            "limit": e.limit,
            "unit": e.unit,
            "threshold": e.threshold.to_string(),
            "used": e.used,
            "amount": e.amount,
            "window_reset": rfc3339(e.window_reset),
            "time": rfc3339(e.time),
            "shadow": e.shadow,
        }
    }))
    .expect("JSON of strings and numbers")
}

/// `at` as RFC 3339 with milliseconds.
pub fn rfc3339(at: Nanos) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at / 1_000_000);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Remembers a crossing until its window ends.
struct UntilWindowEnds;

impl moka::Expiry<u128, Duration> for UntilWindowEnds {
    fn expire_after_create(
        &self,
        _: &u128,
        left: &Duration,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(*left)
    }
}
