//! Wiring: the limiter, the services, health, reflection, background tasks,
//! and an ordered graceful shutdown.
//!
//! Shutdown: the signal → health NOT_SERVING → stop accepting → end every
//! watch stream → drain in-flight calls, at most `drain` long → save the
//! counters to the state file → return.

pub mod metrics;
pub mod shared;
pub mod signal;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::RateLimiterService;
use crate::api::admin::AdminService;
use crate::api::auth::AdminAuth;
use crate::config::reload::Reloader;
use crate::engine::CounterStore;
use crate::envoy::{self, EnvoyService, RuleSource};
use crate::limiter::Limiter;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::proto::tollgate::v1::admin_server::AdminServer;
use crate::proto::{self, tollgate::v1::rate_limiter_server::RateLimiterServer};
use crate::storage::memory::MemoryStore;
use crate::watch::{Cause, Hub};
use metrics::{Gauges, Metrics};

/// How often expired counters are reclaimed in the background.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);

/// How the server runs, beyond its listener and limiter.
#[derive(Debug)]
pub struct Options {
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<TcpListener>,
    /// The configuration file, for reloads; `None` when serving the built-in one.
    pub config_path: Option<PathBuf>,
    /// The admin bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// Coalescing interval of consumption updates to watchers.
    pub watch_interval: Duration,
    /// The longest graceful shutdown waits for in-flight calls.
    pub drain: Duration,
    /// Serve gRPC over TLS (and require client certificates when it says so).
    pub tls: Option<Tls>,
    /// envoyproxy/ratelimit rule files for Envoy's rate limit service
    /// (`--envoy-config`); none: only plan-aware domains answer.
    pub envoy_rules: Option<Arc<RuleSource>>,
    /// How Envoy's rate limit service answers beyond the rules.
    pub envoy: envoy::Options,
}

/// TLS material, PEM-encoded.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            metrics: None,
            config_path: None,
            admin_token: None,
            watch_interval: crate::watch::DEFAULT_INTERVAL,
            drain: Duration::from_secs(10),
            tls: None,
            envoy_rules: None,
            envoy: envoy::Options::default(),
        }
    }
}

/// Serves `limiter` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    limiter: Arc<Limiter<MemoryStore>>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let stopping = CancellationToken::new();

    // State, then services.
    let hub = Hub::new(limiter.clone(), options.watch_interval, stopping.clone());
    let reloader = Arc::new(Reloader::new(
        options.config_path.clone(),
        limiter.clone(),
        {
            let hub = hub.clone();
            move || hub.all_changed(Cause::ConfigReloaded)
        },
    ));
    let rules = match options.envoy_rules.clone() {
        Some(rules) => rules,
        None => Arc::new(
            RuleSource::load(None, false, limiter.slots().clone())
                .expect("no directory: nothing to read"),
        ),
    };
    let auth = AdminAuth::new(options.admin_token.clone());
    let admin = AdminServer::with_interceptor(
        AdminService::new(
            limiter.clone(),
            hub.clone(),
            reloader.clone(),
            rules.clone(),
        ),
        move |request| auth.check(request),
    );
    let decisions = Arc::new(Metrics::new());
    let rate_limiter = RateLimiterServer::new(RateLimiterService::new(
        limiter.clone(),
        hub.clone(),
        decisions.clone(),
    ));
    let envoy = RateLimitServiceServer::new(EnvoyService::new(
        limiter.clone(),
        rules.clone(),
        options.envoy.clone(),
        hub.clone(),
        decisions.clone(),
    ));

    // Health, then reflection.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimiterServer<RateLimiterService<MemoryStore>>>()
        .await;
    health
        .set_serving::<RateLimitServiceServer<EnvoyService<MemoryStore>>>()
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

    // Background tasks.
    if let Some(s) = limiter.shared() {
        if let Err(e) = s.store.warm_up(Duration::from_secs(2)).await {
            tracing::warn!(error = %e, store = %s.store.url(), "counter store not reachable at start; decisions will retry");
        }
        shared::resync(&limiter, &hub).await;
        tokio::spawn(shared::follow(
            limiter.clone(),
            hub.clone(),
            stopping.clone(),
        ));
        tokio::spawn({
            let (limiter, health, stopping) = (limiter.clone(), health.clone(), stopping.clone());
            async move {
                if let Some(s) = limiter.shared() {
                    shared::watch_health(s, health, stopping).await;
                }
            }
        });
    }
    let reclaimer = tokio::spawn(reclaim(limiter.clone(), stopping.clone()));
    let watcher = tokio::spawn(reloader.clone().watch(stopping.clone()));
    let rules_watcher = tokio::spawn(rules.clone().watch(stopping.clone()));
    if let Some(listener) = options.metrics {
        let gauges = {
            let (limiter, hub, reloader, rules) = (
                limiter.clone(),
                hub.clone(),
                reloader.clone(),
                rules.clone(),
            );
            Arc::new(move || Gauges {
                watchers: hub.watchers(),
                counters: limiter.store().len(),
                evictions: limiter.store().evictions(),
                reloads: {
                    let ((ok, failed), (rok, rfailed)) = (reloader.counts(), rules.counts());
                    (ok + rok, failed + rfailed)
                },
                store_failures: limiter.shared().map_or(0, |s| s.failures()),
            })
        };
        tokio::spawn(metrics::serve(
            listener,
            decisions.clone(),
            gauges,
            stopping.clone(),
        ));
    }

    // The signal: NOT_SERVING first, then stop accepting and end the streams.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn({
        let (health, stopping) = (health.clone(), stopping.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<RateLimiterServer<RateLimiterService<MemoryStore>>>()
                .await;
            health
                .set_not_serving::<RateLimitServiceServer<EnvoyService<MemoryStore>>>()
                .await;
            let _ = stop_tx.send(());
            stopping.cancel();
        }
    });

    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    let serve = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(rate_limiter)
        .add_service(admin)
        .add_service(envoy)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    tokio::pin!(serve);
    let drain = options.drain;
    let result = tokio::select! {
        r = &mut serve => r,
        () = async { stopping.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(drain = ?drain, "calls still in flight at the drain deadline; stopping anyway");
            Ok(())
        }
    };
    stopping.cancel();
    reclaimer.abort();
    watcher.abort();
    rules_watcher.abort();
    save_counters(&limiter);
    result
}

/// Saves the counters to the state file, so day-long quotas survive a
/// graceful restart.
fn save_counters(limiter: &Limiter<MemoryStore>) {
    let state = limiter.resolver().state();
    let snapshot = limiter.store().export(limiter.now(), limiter.slots());
    let counters = snapshot.counters;
    match state.save_counters(&snapshot.bytes) {
        Ok(()) => tracing::info!(counters, state.path = %state.path().display(), "counters saved"),
        Err(e) => {
            tracing::error!(error = %e, "counters could not be saved; they start afresh next time")
        }
    }
}

/// Drops expired counters now and then, so idle memory returns.
async fn reclaim<S: CounterStore + 'static>(limiter: Arc<Limiter<S>>, stopping: CancellationToken) {
    let mut every = tokio::time::interval(RECLAIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stopping.cancelled() => return,
        }
        let limiter = limiter.clone();
        let reclaimed = tokio::task::spawn_blocking(move || limiter.store().reclaim(limiter.now()))
            .await
            .unwrap_or(0);
        if reclaimed > 0 {
            tracing::trace!(reclaimed, "expired counters reclaimed");
        }
    }
}
