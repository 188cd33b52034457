//! Keeping a replica in step with the others through Redis: assignments and
//! overrides (read at start, on every change notice, and in full every
//! [`RESYNC_EVERY`]), consumption notices for this replica's watchers, and
//! the store's health (judged over several pings, see [`HealthCheck`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::limiter::Limiter;
use crate::storage::redis::runtime::{self, CHANGED, CONSUMED, Change, Notice, RESYNC_EVERY};
use crate::storage::redis::{Failure, SharedCounters};
use crate::watch::{Cause, Hub};

/// The health service name that reports the counter store.
pub const STORE_HEALTH: &str = "tollgate.store";

/// Re-reads everything from Redis; tells caches and watchers what changed.
pub async fn resync(limiter: &Limiter, hub: &Hub) {
    let Some(shared) = limiter.counters().shared() else {
        return;
    };
    match shared.store.load_runtime().await {
        Ok(maps) => {
            for account in limiter.resolver().runtime().replace_all(maps) {
                limiter.resolver().invalidate(&account);
                hub.account_changed(&account, Cause::PlanChanged);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read plans and overrides from redis; retrying")
        }
    }
}

/// Follows the notices of the other replicas until `stopping`.
pub async fn follow(limiter: Arc<Limiter>, hub: Arc<Hub>, stopping: CancellationToken) {
    let Some(shared) = limiter.counters().shared() else {
        return;
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = async {
            let mut p = shared.store.pubsub_client().get_async_pubsub().await?;
            p.subscribe(&[CONSUMED, CHANGED]).await?;
            Ok::<_, redis::RedisError>(p)
        };
        let pubsub = tokio::select! {
            p = pubsub => p,
            () = stopping.cancelled() => return,
        };
        let mut pubsub = match pubsub {
            Ok(p) => {
                backoff = Duration::from_millis(100);
                p
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot subscribe to redis notices");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopping.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Anything missed while not subscribed.
        resync(&limiter, &hub).await;
        let mut messages = pubsub.on_message();
        let mut every = tokio::time::interval(RESYNC_EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => {
                        let payload: String = m.get_payload().unwrap_or_default();
                        handle(&limiter, &hub, shared, m.get_channel_name(), &payload).await;
                    }
                    None => break,
                },
                _ = every.tick() => resync(&limiter, &hub).await,
                () = stopping.cancelled() => return,
            }
        }
        tracing::warn!("redis notices interrupted; subscribing again");
    }
}

async fn handle(
    limiter: &Limiter,
    hub: &Hub,
    shared: &SharedCounters,
    channel: &str,
    payload: &str,
) {
    match runtime::parse(channel, payload) {
        Some(Notice::Consumed {
            replica,
            subject,
            account,
        }) if replica != shared.replica => {
            hub.consumed(&subject, &account);
        }
        Some(Notice::Changed {
            replica,
            account,
            change,
        }) if replica != shared.replica => match shared.store.load_account(&account).await {
            Ok((plan, overrides)) => {
                limiter
                    .resolver()
                    .runtime()
                    .replace_account(&account, plan, overrides);
                limiter.resolver().invalidate(&account);
                hub.account_changed(
                    &account,
                    match change {
                        Change::Plan => Cause::PlanChanged,
                        Change::Override => Cause::OverrideChanged,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, account, "cannot read a changed account; the next resync will")
            }
        },
        _ => {}
    }
}

/// How the store's health is judged: by pings, each allowed its own
/// timeout, over several in a row, so one slow answer on a busy machine
/// does not flip it.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// Time between pings.
    pub every: Duration,
    /// How long a ping may take.
    pub timeout: Duration,
    /// Failed pings in a row before the store is NOT_SERVING; one success
    /// brings it back.
    pub failures: u32,
}

/// The store's health from its pings so far.
#[derive(Debug)]
struct Judge {
    up: Option<bool>,
    failed_in_a_row: u32,
    failures: u32,
}

/// Pings the store and reports it in health: `tollgate.store` always, the
/// whole server too when failing closed (decisions fail then).
pub async fn watch_health(
    limiter: Arc<Limiter>,
    health: tonic_health::server::HealthReporter,
    check: HealthCheck,
    stopping: CancellationToken,
) {
    let Some(shared) = limiter.counters().shared() else {
        return;
    };
    let mut judge = Judge::new(check.failures);
    let mut every = tokio::time::interval(check.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (reachable, refusing writes) as last reported.
    let (mut reachable, mut refusing) = (None, false);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stopping.cancelled() => return,
        }
        let ping = tokio::select! {
            p = shared.store.ping_within(check.timeout) => p,
            () = stopping.cancelled() => return,
        };
        let now_refusing = shared.refusing_writes();
        let changed = judge.observe(ping.is_ok());
        if let Some(now_up) = changed {
            match &ping {
                Ok(()) => tracing::info!(store = %shared.store.url(), "counter store reachable"),
                Err(e) => {
                    tracing::warn!(error = %e, store = %shared.store.url(), failed_pings = check.failures, policy = ?shared.failure, "counter store unreachable")
                }
            }
            reachable = Some(now_up);
        } else if now_refusing == refusing {
            continue;
        }
        // Refusing writes is logged where a decision first meets it.
        refusing = now_refusing;
        let Some(up) = reachable else {
            continue;
        };
        let status = if up && !refusing {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(STORE_HEALTH, status).await;
        if shared.failure == Failure::Closed {
            health.set_service_status("", status).await;
        }
    }
}

// === impl HealthCheck ===

impl HealthCheck {
    /// A ping a second, each allowed max(`store_timeout`, 1 s), down after
    /// three failures in a row.
    pub fn for_timeout(store_timeout: Duration) -> Self {
        Self {
            every: Duration::from_secs(1),
            timeout: store_timeout.max(Duration::from_secs(1)),
            failures: 3,
        }
    }
}

// === impl Judge ===

impl Judge {
    fn new(failures: u32) -> Self {
        Self {
            up: None,
            failed_in_a_row: 0,
            failures: failures.max(1),
        }
    }

    /// Takes one ping's outcome; the new health when it changes.
    fn observe(&mut self, ok: bool) -> Option<bool> {
        self.failed_in_a_row = if ok { 0 } else { self.failed_in_a_row + 1 };
        let now_up = match self.up {
            _ if ok => true,
            _ if self.failed_in_a_row >= self.failures => false,
            // Too few failures to judge: unchanged.
            Some(up) => up,
            None => return None,
        };
        (self.up != Some(now_up)).then(|| {
            self.up = Some(now_up);
            now_up
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_ping_does_not_flip_health() {
        let mut judge = Judge::new(3);
        assert_eq!(judge.observe(true), Some(true));
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(true), None);
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(true), None);
    }

    #[test]
    fn failures_in_a_row_flip_health_and_one_success_restores_it() {
        let mut judge = Judge::new(3);
        assert_eq!(judge.observe(true), Some(true));
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(false), Some(false));
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(true), Some(true));
    }

    #[test]
    fn a_store_down_at_start_is_judged_after_the_same_failures() {
        let mut judge = Judge::new(2);
        assert_eq!(judge.observe(false), None);
        assert_eq!(judge.observe(false), Some(false));
    }

    #[test]
    fn a_ping_gets_at_least_a_second() {
        let check = HealthCheck::for_timeout(Duration::from_millis(10));
        assert_eq!(check.timeout, Duration::from_secs(1));
        assert_eq!(
            HealthCheck::for_timeout(Duration::from_secs(3)).timeout,
            Duration::from_secs(3)
        );
    }
}
