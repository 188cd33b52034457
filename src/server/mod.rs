//! Wiring: the limiter, the services, health, reflection, background tasks,
//! and an ordered graceful shutdown.
//!
//! Start: the counters restored ([`crate::persist`]) before anything is
//! served. Shutdown: the signal → health NOT_SERVING → stop accepting → end
//! every watch stream → drain in-flight calls, at most `drain` long → save
//! the counters → return.
//!
//! Of the modules above `state`, this is the only one that names the counter
//! backends: what only memory has (eviction, snapshots) and what only Redis
//! has (notices, health).

pub mod file_health;
pub mod replicas;
pub mod signal;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::{HealthReporter, HealthService};

use crate::api::RateLimiterService;
use crate::api::admin::AdminService;
use crate::api::auth::AdminAuth;
use crate::config::reload::{Reloaded, Reloader, file_bytes};
use crate::envoy::{self, EnvoyService, RuleSource};
use crate::http;
use crate::insight::Insight;
use crate::insight::top::DEFAULT_CAPACITY;
use crate::limiter::Limiter;
use crate::listen::{Limits, Listener};
use crate::metrics::{self, Gauges, Metrics};
use crate::persist::Persistence;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::proto::tollgate::v1::admin_server::AdminServer;
use crate::proto::{self, tollgate::v1::rate_limiter_server::RateLimiterServer};
use crate::sink::{Consumer, Sink};
use crate::storage::memory::MemoryStore;
use crate::watch::{Cause, Hub};

/// How often expired counters and reservations are dropped in the background.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);

/// How many bytes a gRPC client may send on one connection before tollgate
/// has read them. h2 closes a connection (`ENHANCE_YOUR_CALM`,
/// `too_many_data_frames`) whose unread small DATA frames cost more than
/// half this window in framing overhead (256 bytes a frame, less its
/// payload): at hyper's 1 MiB, ~2,300 Decide messages of one frame each.
/// At 4 MiB a pipelining client has ~9,000 in flight before tollgate reads
/// them; Decide reads ahead, so it rarely gets near.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// How often an idle HTTP/2 connection is pinged, and how long its answer
/// may take before the connection is closed: a peer that vanished (a
/// dropped NAT entry, a killed host) frees its slot.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the server runs, beyond its listener and limiter.
#[derive(Debug)]
pub struct Options {
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<TcpListener>,
    /// Where to serve the HTTP front door ([`crate::http`]), if anywhere;
    /// it serves `/metrics` too when `metrics` is `None`.
    pub http: Option<TcpListener>,
    /// The configuration file, for reloads; `None` when serving the built-in one.
    pub config_path: Option<PathBuf>,
    /// The admin bearer token; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// Coalescing interval of consumption updates to watchers.
    pub watch_interval: Duration,
    /// The most `WatchQuota` streams open at once; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_watchers: usize,
    /// Counters per slice of the top limited subjects; 0: no list.
    pub top_subjects: usize,
    /// The longest graceful shutdown waits for in-flight calls.
    pub drain: Duration,
    /// Serve gRPC over TLS (and require client certificates when it says so).
    pub tls: Option<Tls>,
    /// envoyproxy/ratelimit rule files for Envoy's rate limit service
    /// (`--envoy-config`); none: only plan-aware domains answer.
    pub envoy_rules: Option<Arc<RuleSource>>,
    /// How Envoy's rate limit service answers beyond the rules.
    pub envoy: envoy::Options,
    /// Where in-memory counters persist across restarts, and how often the
    /// changed ones are journaled (what a crash can lose); `None`: they
    /// start afresh every time.
    pub persist: Option<Persistence>,
    /// The caps and timeouts of every listener.
    pub limits: Limits,
    /// More consumers of every decision, after the metrics and the hub
    /// ([`crate::sink`]).
    pub consumers: Vec<Arc<dyn crate::sink::Consumer>>,
    /// With counters in Redis: how often this replica adds its usage to the
    /// rollups shared there (what a crash can lose); zero: only at a
    /// graceful stop and before an export.
    pub usage_flush: Duration,
    /// How long usage rollups are kept; `None`: none are.
    pub usage_retention: Option<crate::insight::usage::Retention>,
}

/// Why the server did not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The counters could not be restored (a damaged file).
    #[error(transparent)]
    Counters(#[from] crate::persist::PersistError),
    /// gRPC serving failed.
    #[error(transparent)]
    Serve(#[from] tonic::transport::Error),
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

/// What the services share, built once.
struct App {
    limiter: Arc<Limiter>,
    insight: Arc<Insight>,
    hub: Arc<Hub>,
    config: Arc<Reloader>,
    rules: Arc<Reloader>,
    metrics: Arc<Metrics>,
    rate_limiter: Arc<RateLimiterService>,
    admin: Arc<AdminService>,
    admin_auth: AdminAuth,
    envoy: Arc<EnvoyService>,
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
            http: None,
            config_path: None,
            admin_token: None,
            watch_interval: crate::watch::DEFAULT_INTERVAL,
            max_watchers: crate::watch::DEFAULT_MAX_WATCHERS,
            top_subjects: DEFAULT_CAPACITY,
            drain: Duration::from_secs(10),
            tls: None,
            envoy_rules: None,
            envoy: envoy::Options::default(),
            persist: None,
            limits: Limits::default(),
            consumers: Vec::new(),
            usage_flush: Duration::from_secs(1),
            usage_retention: Some(Default::default()),
        }
    }
}

/// Serves `limiter` on `listener` until `shutdown` completes: first the
/// counters are restored (`options.persist`), then the log says where it
/// listens.
pub async fn run(
    listener: TcpListener,
    limiter: Arc<Limiter>,
    mut options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let persist = match options.persist.take() {
        Some(p) => Some(restore(&limiter, p).await?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let catalog = limiter.catalog();
    tracing::info!(
        listen = %addr,
        config = %options.config_path.as_ref().map_or(crate::config::DEFAULT_NAME.into(), |p| p.display().to_string()),
        plans = catalog.plans.len(),
        counters.capacity = limiter.counters().memory().map_or(0, MemoryStore::capacity),
        envoy.config = %options.envoy_rules.as_ref().and_then(|r| r.dir()).map_or("none".into(), |p| p.display().to_string()),
        "tollgate listening on {addr}"
    );
    let stopping = CancellationToken::new();
    let app = App::new(limiter.clone(), &options, stopping.clone());
    if let Some(persist) = &persist {
        restore_usage(&app.insight, persist);
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    set_serving(&health, true).await;

    // Background tasks.
    if let Some(shared) = limiter.counters().shared() {
        if let Err(e) = shared.store.warm_up(Duration::from_secs(2)).await {
            tracing::warn!(error = %e, store = %shared.store.url(), "counter store not reachable at start; decisions will retry");
        }
        replicas::resync(&limiter, &app.hub).await;
        tokio::spawn(replicas::follow(
            limiter.clone(),
            app.hub.clone(),
            stopping.clone(),
        ));
        tokio::spawn(replicas::watch_health(
            limiter.clone(),
            health.clone(),
            replicas::HealthCheck::for_timeout(shared.store.timeout()),
            stopping.clone(),
        ));
    }
    tokio::spawn(file_health::watch_health(
        limiter.clone(),
        health.clone(),
        stopping.clone(),
    ));
    let background = [
        tokio::spawn(journal(limiter.clone(), persist.clone(), stopping.clone())),
        tokio::spawn(reclaim(
            limiter.clone(),
            app.rate_limiter.clone(),
            stopping.clone(),
        )),
        tokio::spawn(rollups(
            app.insight.clone(),
            persist.clone(),
            options.usage_flush,
            stopping.clone(),
        )),
        tokio::spawn(app.config.clone().watch(stopping.clone())),
        tokio::spawn(app.rules.clone().watch(stopping.clone())),
    ];
    let metrics_apart = options.metrics.is_some();
    if let Some(listener) = options.metrics.take() {
        tokio::spawn(metrics::serve(
            Listener::new(listener, "metrics", &options.limits),
            options.limits.header_read_timeout,
            app.metrics.clone(),
            app.gauges(),
            stopping.clone(),
        ));
    }
    let http_server = options.http.take().map(|listener| {
        let router = http::router(app.http(&health, !metrics_apart));
        tokio::spawn(http::serve(
            Listener::new(listener, "http", &options.limits),
            options.limits,
            router,
            stopping.clone(),
        ))
    });

    // The signal: NOT_SERVING first, then stop accepting and end the streams.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn({
        let (health, stopping) = (health.clone(), stopping.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down");
            set_serving(&health, false).await;
            let _ = stop_tx.send(());
            stopping.cancel();
        }
    });

    let listener = Listener::new(listener, "grpc", &options.limits);
    let preface = options.limits.http2_preface_timeout;
    let incoming = if options.tls.is_some() {
        listener.incoming_tls(preface).left_stream()
    } else {
        listener.incoming(preface).right_stream()
    };
    let serve = app
        .router(health_service, &options)?
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    // gRPC and HTTP drain together, within one deadline.
    let mut http_server = http_server;
    let serve_all = async {
        let r = serve.await;
        if let (Ok(()), Some(task)) = (&r, http_server.as_mut()) {
            let _ = task.await;
        }
        r
    };
    let drain = options.drain;
    let result = tokio::select! {
        r = serve_all => r,
        () = async { stopping.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(drain = ?drain, "calls still in flight at the drain deadline; stopping anyway");
            Ok(())
        }
    };
    stopping.cancel();
    for task in background.into_iter().chain(http_server) {
        task.abort();
    }
    if let Some(persist) = persist {
        save_usage(app.insight.clone(), persist.clone()).await;
        save(&limiter, persist).await;
    }
    flush_usage(&app.insight).await;
    result.map_err(ServeError::from)
}

/// Loads the usage rollups saved beside the state file, before serving. A
/// damaged file is logged and left for a person; the rollups start empty.
fn restore_usage(insight: &Insight, persist: &Persistence) {
    if !insight.usage.is_on() {
        return;
    }
    match persist.load_usage() {
        Ok(None) => {}
        Ok(Some(bytes)) => match insight.usage.table().restore(&bytes) {
            Ok(rows) => {
                tracing::info!(rows, file = %persist.usage_path().display(), "usage restored")
            }
            Err(e) => {
                tracing::error!(error = %e, file = %persist.usage_path().display(), "usage not restored: the file is damaged; it is left as it is and overwritten at the next save")
            }
        },
        Err(e) => tracing::error!(error = %e, "usage not restored"),
    }
}

/// Writes the usage rollups if they changed since `last`; the changes
/// written.
async fn save_usage(insight: Arc<Insight>, persist: Arc<Persistence>) -> Option<u64> {
    if !insight.usage.is_on() {
        // Off: a file saved when it was on is kept as it is.
        return None;
    }
    let changes = insight.usage_changes();
    let saved = tokio::task::spawn_blocking(move || {
        persist.save_usage(|| insight.usage.table().snapshot())
    })
    .await;
    match saved {
        Ok(Ok(bytes)) => {
            tracing::trace!(bytes, "usage saved");
            Some(changes)
        }
        Ok(Err(e)) => {
            if let Some(held) = USAGE_NOT_SAVED.ready() {
                tracing::warn!(error = %e, held, "usage not saved; a crash would lose usage since the last good write");
            }
            None
        }
        Err(_) => None,
    }
}

static USAGE_NOT_SAVED: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(60));

/// Keeps the usage rollups: drops what is past their retention every
/// minute; in memory, saves them beside the state file every journal
/// interval when they changed (at a graceful stop too), so a crash loses at
/// most an interval of usage, as of counters; shared through Redis, adds
/// this replica's usage there every `flush` (and at a graceful stop).
async fn rollups(
    insight: Arc<Insight>,
    persist: Option<Arc<Persistence>>,
    flush: Duration,
    stopping: CancellationToken,
) {
    let shared = insight.usage.is_shared() && !flush.is_zero();
    let every = match (&persist, shared) {
        (_, true) => Some(flush),
        (Some(p), false) => p.every(),
        (None, false) => None,
    }
    .unwrap_or(PRUNE_EVERY)
    .min(PRUNE_EVERY);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut saved, mut pruned) = (0, tokio::time::Instant::now());
    insight.usage.prune(insight.now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.cancelled() => return,
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            insight.usage.prune(insight.now());
            pruned = tokio::time::Instant::now();
        }
        if shared {
            flush_usage(&insight).await;
        }
        if let Some(persist) = persist.as_ref().filter(|p| p.every().is_some())
            && insight.usage_changes() != saved
            && let Some(changes) = save_usage(insight.clone(), persist.clone()).await
        {
            saved = changes;
        }
    }
}

/// Adds this replica's usage to the rollups shared through Redis (nothing
/// when they are not); a failure keeps it for the next try.
async fn flush_usage(insight: &Insight) {
    if let Err(e) = insight.usage.flush().await
        && let Some(held) = USAGE_NOT_FLUSHED.ready()
    {
        tracing::warn!(error = %e, held, "usage not added to Redis yet; kept for the next try");
    }
}

static USAGE_NOT_FLUSHED: crate::log_every::LogEvery =
    crate::log_every::LogEvery::new(Duration::from_secs(60));

/// How often usage past its retention is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

// === impl App ===

impl App {
    fn new(limiter: Arc<Limiter>, options: &Options, stopping: CancellationToken) -> Self {
        let insight = Arc::new(Insight::new(
            limiter.clone(),
            options.top_subjects,
            options.usage_retention,
        ));
        insight.events.configure(&limiter.catalog().events.webhooks);
        let hub = Hub::new(
            limiter.clone(),
            options.watch_interval,
            options.max_watchers,
            stopping.clone(),
        );
        let config = Arc::new(Reloader::new(
            ("configuration", "the running configuration stays"),
            options.config_path.clone(),
            file_bytes,
            {
                let (limiter, hub, insight) = (limiter.clone(), hub.clone(), insight.clone());
                move |path| {
                    let catalog = crate::config::load(path, limiter.slots())?;
                    insight.events.configure(&catalog.events.webhooks);
                    let done = Reloaded {
                        path: path.to_owned(),
                        plans: catalog.plans.len(),
                        classes: catalog.class_names.len(),
                        domains: 0,
                    };
                    limiter.replace_catalog(catalog);
                    hub.all_changed(Cause::ConfigReloaded);
                    Ok(done)
                }
            },
        ));
        let rule_source = match options.envoy_rules.clone() {
            Some(rules) => rules,
            None => Arc::new(
                RuleSource::load(None, false, limiter.slots().clone())
                    .expect("no directory: nothing to read"),
            ),
        };
        let rules = Arc::new(rule_source.reloader());
        let metrics = Arc::new(Metrics::new());
        let mut consumers: Vec<Arc<dyn Consumer>> = vec![insight.clone()];
        consumers.extend(options.consumers.iter().cloned());
        // Every decision, whichever door it came through, goes here.
        let sink = Sink::serving(metrics.clone(), hub.clone(), &consumers);
        Self {
            rate_limiter: Arc::new(RateLimiterService::new(
                limiter.clone(),
                hub.clone(),
                sink.clone(),
                stopping.clone(),
            )),
            admin: Arc::new(AdminService::new(
                limiter.clone(),
                hub.clone(),
                config.clone(),
                rules.clone(),
                insight.clone(),
                stopping,
            )),
            admin_auth: AdminAuth::new(options.admin_token.clone()),
            envoy: Arc::new(EnvoyService::new(
                limiter.clone(),
                rule_source,
                options.envoy.clone(),
                sink,
            )),
            rules,
            config,
            hub,
            limiter,
            metrics,
            insight,
        }
    }

    /// Every service, with health and reflection, on one router.
    fn router(
        &self,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
        options: &Options,
    ) -> Result<Router, tonic::transport::Error> {
        let auth = self.admin_auth.clone();
        let admin =
            InterceptedService::new(AdminServer::from_arc(self.admin.clone()), move |request| {
                auth.check(request)
            });
        let rate_limiter = crate::api::unary::Decisions::new(self.rate_limiter.clone());
        let envoy = RateLimitServiceServer::from_arc(self.envoy.clone());
        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .expect("the built-in descriptor sets are valid");
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .expect("the built-in descriptor sets are valid");
        Ok(builder(options)?
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(rate_limiter)
            .add_service(admin)
            .add_service(envoy))
    }

    /// The HTTP front door's view of the same services.
    fn http(&self, health: &HealthReporter, metrics: bool) -> http::Services {
        http::Services {
            rate_limiter: self.rate_limiter.clone(),
            admin: self.admin.clone(),
            admin_auth: self.admin_auth.clone(),
            envoy: self.envoy.clone(),
            health: Arc::new(HealthService::from_health_reporter(health.clone())),
            limiter: self.limiter.clone(),
            metrics: metrics.then(|| http::MetricsEndpoint {
                metrics: self.metrics.clone(),
                gauges: self.gauges(),
            }),
        }
    }

    /// What the metrics endpoint reads at scrape time.
    fn gauges(&self) -> Arc<dyn Fn() -> Gauges + Send + Sync> {
        let (limiter, hub, config, rules, insight) = (
            self.limiter.clone(),
            self.hub.clone(),
            self.config.clone(),
            self.rules.clone(),
            self.insight.clone(),
        );
        Arc::new(move || {
            let memory = limiter.counters().memory();
            let ((ok, failed), (rok, rfailed)) = (config.counts(), rules.counts());
            Gauges {
                watchers: hub.watchers(),
                counters: memory.map_or(0, |m| {
                    use crate::engine::CounterStore;
                    m.len()
                }),
                evictions: memory.map_or(0, |m| m.evictions()),
                reloads: (ok + rok, failed + rfailed),
                webhooks: insight.events.webhook_stats(),
                store_failures: limiter.counters().shared().map_or(0, |s| s.failures()),
                store_uncertain: limiter.counters().shared().map_or(0, |s| s.uncertain()),
                store_refusing: limiter
                    .counters()
                    .shared()
                    .is_some_and(|s| s.refusing_writes()),
                store_round_trips: limiter.counters().shared().map(|s| s.round_trips()),
                state_failures: limiter.state().failures(),
            }
        })
    }
}

/// A server builder, with TLS when `tls` says so.
/// The gRPC server: streams per connection capped, dead peers found by
/// HTTP/2 pings, TLS when configured.
fn builder(options: &Options) -> Result<Server, tonic::transport::Error> {
    let mut builder = Server::builder()
        .max_concurrent_streams(Some(options.limits.max_concurrent_streams))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_keepalive_interval(Some(KEEPALIVE_EVERY))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = &options.tls {
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    Ok(builder)
}

/// Reports the decision services (and the server as a whole) in health.
async fn set_serving(health: &HealthReporter, serving: bool) {
    if serving {
        health
            .set_serving::<RateLimiterServer<RateLimiterService>>()
            .await;
        health
            .set_serving::<RateLimitServiceServer<EnvoyService>>()
            .await;
    } else {
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<RateLimiterServer<RateLimiterService>>()
            .await;
        health
            .set_not_serving::<RateLimitServiceServer<EnvoyService>>()
            .await;
    }
}

/// Restores the counters into the memory store from the files `persist`
/// names, on the blocking pool; a damaged file stops the start.
async fn restore(
    limiter: &Arc<Limiter>,
    persist: Persistence,
) -> Result<Arc<Persistence>, ServeError> {
    let persist = Arc::new(persist);
    if limiter.counters().memory().is_none() {
        return Ok(persist);
    }
    let (l, p) = (limiter.clone(), persist.clone());
    let restored = tokio::task::spawn_blocking(move || {
        let memory = l.counters().memory().expect("checked: counting in memory");
        if p.every().is_some() {
            l.ledger().journal();
        }
        p.restore(memory, Some(l.state()), l.now(), l.slots(), l.ledger())
    })
    .await
    .expect("restoring never panics")?;
    if let Some(at) = restored.torn_at {
        tracing::warn!(
            file = %restored.from.as_ref().map_or_else(String::new, |p| p.display().to_string()),
            offset = at,
            "the counter journal ends in a torn record (a crash mid-write): cut at byte {at}; every record before it was restored"
        );
    }
    match &restored.from {
        Some(from) => {
            tracing::info!(restored = restored.counters, file = %from.display(), "counters restored")
        }
        None => tracing::info!("no counters to restore"),
    }
    Ok(persist)
}

/// Saves the in-memory counters at a graceful stop, and says truly what a
/// restart will find.
async fn save(limiter: &Arc<Limiter>, persist: Arc<Persistence>) {
    let l = limiter.clone();
    let saved = tokio::task::spawn_blocking(move || {
        let memory = l.counters().memory()?;
        Some(
            persist
                .save(memory, l.now(), l.slots(), l.ledger())
                .map_err(|e| (e, persist)),
        )
    })
    .await;
    match saved {
        Ok(Some(Ok(saved))) => {
            tracing::info!(counters = saved.counters, file = %saved.path.display(), "counters saved");
        }
        Ok(Some(Err((e, persist)))) => {
            let after = match persist.every() {
                Some(every) => format!(
                    "a restart restores them from {} as of its last good write (every {every:?})",
                    persist.journal_path().display()
                ),
                None => format!(
                    "a restart restores those of the previous graceful stop from {}, if any",
                    persist.snapshot_path().display()
                ),
            };
            tracing::error!(error = %e, "counters not saved: {after}");
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "counters not saved: the save did not finish"),
    }
}

/// Journals the in-memory counters that changed every interval, so a crash
/// (`kill -9`, OOM) loses at most that much counting.
async fn journal(
    limiter: Arc<Limiter>,
    persist: Option<Arc<Persistence>>,
    stopping: CancellationToken,
) {
    let Some((persist, every)) = persist.and_then(|p| p.every().map(|e| (p, e))) else {
        return;
    };
    if limiter.counters().memory().is_none() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopping.cancelled() => return,
        }
        let (l, p) = (limiter.clone(), persist.clone());
        let flushed = tokio::task::spawn_blocking(move || {
            let memory = l.counters().memory().expect("checked: counting in memory");
            let started = std::time::Instant::now();
            p.flush(memory, l.now(), l.slots(), l.ledger())
                .map(|len| (len, started.elapsed()))
        })
        .await;
        let Ok(result) = flushed else {
            return;
        };
        match result {
            Ok((len, took)) => {
                tracing::trace!(bytes = len, took = ?took, "counter journal written");
                if failing {
                    failing = false;
                    tracing::info!("counter journal written again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "counter journal not written; a crash would lose counting since the last good write");
            }
            Err(_) => {}
        }
    }
}

/// Drops expired counters and reservations now and then, so idle memory
/// returns.
async fn reclaim(
    limiter: Arc<Limiter>,
    service: Arc<RateLimiterService>,
    stopping: CancellationToken,
) {
    let mut every = tokio::time::interval(RECLAIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stopping.cancelled() => return,
        }
        let limiter = limiter.clone();
        let service = service.clone();
        let expired = service.expire_reservations().await;
        let reclaimed = tokio::task::spawn_blocking(move || {
            use crate::engine::CounterStore;
            limiter
                .counters()
                .memory()
                .map_or(0, |m| m.reclaim(limiter.now()))
        })
        .await
        .unwrap_or(0);
        if reclaimed > 0 || expired > 0 {
            tracing::trace!(
                reclaimed,
                expired,
                "expired counters and reservations forgotten"
            );
        }
    }
}
