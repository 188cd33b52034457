//! Keeping a replica in step with the others through Redis: assignments and
//! overrides (read at start, on every change notice, and in full every
//! [`RESYNC_EVERY`]), consumption notices for this replica's watchers, and
//! the store's health.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::limiter::Limiter;
use crate::storage::redis::shared::{self, CHANGED, CONSUMED, Change, Notice, RESYNC_EVERY};
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
    match shared::parse(channel, payload) {
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

/// Pings the store every second and reports it in health: `tollgate.store`
/// always, the whole server too when failing closed (decisions fail then).
pub async fn watch_health(
    limiter: Arc<Limiter>,
    health: tonic_health::server::HealthReporter,
    stopping: CancellationToken,
) {
    let Some(shared) = limiter.counters().shared() else {
        return;
    };
    let mut up = None;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stopping.cancelled() => return,
        }
        let now_up = shared.store.ping().await.is_ok();
        if up == Some(now_up) {
            continue;
        }
        up = Some(now_up);
        let status = if now_up {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if now_up {
            tracing::info!(store = %shared.store.url(), "counter store reachable");
        } else {
            tracing::warn!(store = %shared.store.url(), policy = ?shared.failure, "counter store unreachable");
        }
        health.set_service_status(STORE_HEALTH, status).await;
        if shared.failure == Failure::Closed {
            health.set_service_status("", status).await;
        }
    }
}
