//! Wiring: the limiter, the services, health, reflection, background tasks,
//! and graceful shutdown.

pub mod signal;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::api::RateLimiterService;
use crate::engine::CounterStore;
use crate::limiter::Limiter;
use crate::proto::{self, tollgate::v1::rate_limiter_server::RateLimiterServer};
use crate::storage::memory::MemoryStore;

/// How often expired counters are reclaimed in the background.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);

/// Serves `limiter` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    limiter: Arc<Limiter<MemoryStore>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimiterServer<RateLimiterService<MemoryStore>>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the built-in descriptor sets are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the built-in descriptor sets are valid");

    let reclaimer = tokio::spawn(reclaim(limiter.clone()));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let health_on_stop = health.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        health_on_stop
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_on_stop
            .set_not_serving::<RateLimiterServer<RateLimiterService<MemoryStore>>>()
            .await;
        let _ = stop_tx.send(());
    });

    let result = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RateLimiterServer::new(RateLimiterService::new(limiter)))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        )
        .await;
    reclaimer.abort();
    result
}

/// Drops expired counters now and then, so idle memory returns.
async fn reclaim<S: CounterStore + 'static>(limiter: Arc<Limiter<S>>) {
    let mut every = tokio::time::interval(RECLAIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let limiter = limiter.clone();
        let reclaimed = tokio::task::spawn_blocking(move || limiter.store().reclaim(limiter.now()))
            .await
            .unwrap_or(0);
        if reclaimed > 0 {
            tracing::trace!(reclaimed, "expired counters reclaimed");
        }
    }
}
