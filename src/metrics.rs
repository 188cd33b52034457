//! Prometheus metrics, served as text at `/metrics` on `--metrics-listen`.
//!
//! Labels stay bounded: rpc, verdict, plan and class come from the code and
//! the configuration, never from a request's subject or account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Family<RpcLabels, Histogram>,
    reloads: Family<ResultLabels, Counter>,
    watchers: Gauge,
    counters: Gauge,
    evictions: Counter<u64, AtomicU64>,
    store_failures: Counter<u64, AtomicU64>,
    state_failures: Counter<u64, AtomicU64>,
}

/// Labels of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DecisionLabels {
    /// check, consume, record.
    pub rpc: &'static str,
    /// allowed, rate_limited, not_in_plan, too_large.
    pub verdict: &'static str,
    /// The plan's name.
    pub plan: Label,
    /// The class's name, or empty.
    pub class: Label,
}

impl DecisionLabels {
    /// The labels of `decision`, made through `rpc`.
    pub fn of(rpc: &'static str, decision: &crate::limiter::Decision) -> Self {
        use crate::limiter::Verdict;
        Self {
            rpc,
            verdict: match decision.verdict {
                Verdict::Allowed => "allowed",
                Verdict::RateLimited => "rate_limited",
                Verdict::NotInPlan => "not_in_plan",
                Verdict::TooLarge => "too_large",
            },
            plan: Label(decision.plan.clone()),
            class: decision.class.clone().map_or_else(Label::empty, Label),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A label value shared with the configuration, cloned without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl Label {
    /// The empty label (no plan, no class), shared: a decision never
    /// allocates for it.
    pub fn empty() -> Self {
        static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        Self(EMPTY.clone())
    }
}

/// Values read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Open watch streams.
    pub watchers: usize,
    /// Counters held.
    pub counters: usize,
    /// Live counters evicted since start.
    pub evictions: u64,
    /// Reloads that succeeded and failed since start.
    pub reloads: (u64, u64),
    /// Decisions the shared counter store failed since start.
    pub store_failures: u64,
    /// Writes of the state file that failed since start.
    pub state_failures: u64,
}

// === impl Metrics ===

impl Metrics {
    /// The metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by rpc, verdict, plan and class",
            decisions.clone(),
        );
        let latency = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            // 1 µs .. ~1 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1e-6, 2.0, 21,
            ))
        });
        registry.register(
            "decision_duration_seconds",
            "Time to decide, in the server",
            latency.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let watchers = Gauge::default();
        registry.register("watchers", "Open WatchQuota streams", watchers.clone());
        let counters = Gauge::default();
        registry.register("counters", "Counters tracked in memory", counters.clone());
        let evictions = Counter::default();
        registry.register(
            "counter_evictions",
            "Live counters evicted to stay within --max-counters",
            evictions.clone(),
        );
        let store_failures = Counter::default();
        registry.register(
            "store_failures",
            "Decisions Redis did not answer in time (then --store-failure applied)",
            store_failures.clone(),
        );
        let state_failures = Counter::default();
        registry.register(
            "state_failures",
            "Writes of the state file that failed (admin changes, counter snapshots)",
            state_failures.clone(),
        );
        Self {
            registry,
            decisions,
            latency,
            reloads,
            watchers,
            counters,
            evictions,
            store_failures,
            state_failures,
        }
    }

    /// Counts one decision.
    pub fn decision(&self, labels: &DecisionLabels, took: Duration) {
        self.decisions.get_or_create(labels).inc();
        self.latency
            .get_or_create(&RpcLabels { rpc: labels.rpc })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with `gauges` read now.
    pub fn render(&self, gauges: Gauges) -> String {
        self.watchers
            .set(i64::try_from(gauges.watchers).unwrap_or(i64::MAX));
        self.counters
            .set(i64::try_from(gauges.counters).unwrap_or(i64::MAX));
        let seen = self.evictions.get();
        self.evictions.inc_by(gauges.evictions.saturating_sub(seen));
        let seen = self.store_failures.get();
        self.store_failures
            .inc_by(gauges.store_failures.saturating_sub(seen));
        let seen = self.state_failures.get();
        self.state_failures
            .inc_by(gauges.state_failures.saturating_sub(seen));
        for (result, n) in [("ok", gauges.reloads.0), ("failed", gauges.reloads.1)] {
            let c = self.reloads.get_or_create(&ResultLabels { result });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Serves `/metrics` on `listener` until `stopping`; `gauges` is read per scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
    stopping: CancellationToken,
) {
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
            () = stopping.cancelled() => return,
        };
        let (metrics, gauges) = (metrics.clone(), gauges.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, gauges) = (metrics.clone(), gauges.clone());
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render(gauges()))))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("a static response builds"))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, client.addr = %peer, "metrics connection ended");
            }
        });
    }
}
