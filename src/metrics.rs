//! Prometheus metrics, served as text at `/metrics` on `--metrics-listen`.
//!
//! Labels stay bounded: rpc, verdict, plan and class come from the code and
//! the configuration, never from a request's subject or account.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::listen::Listener;

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    decisions: Arc<DecisionStats>,
    reloads: Family<ResultLabels, Counter>,
    watchers: Gauge,
    counters: Gauge,
    evictions: Counter<u64, AtomicU64>,
    store_failures: Counter<u64, AtomicU64>,
    store_round_trips: Arc<StoreRoundTrips>,
    store_uncertain: Counter<u64, AtomicU64>,
    store_refusing: Gauge,
    state_failures: Counter<u64, AtomicU64>,
    refusals: Family<RefusalLabels, Counter>,
    webhooks: Family<WebhookLabels, Counter>,
}

/// Labels of a refusal: the plan, class and limit that refused, all from
/// the configuration (never the subject).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The plan's name.
    pub plan: Label,
    /// The class's name, or empty.
    pub class: Label,
    /// The limit that refused (the most constraining denied one).
    pub limit: Label,
    /// `true` for a shadow limit, which would have refused (the request
    /// went through).
    pub shadow: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    result: &'static str,
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
        Self {
            rpc,
            verdict: decision.verdict.name(),
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
    /// Of those, the ones answered after their script was sent: each may
    /// have counted.
    pub store_uncertain: u64,
    /// Whether Redis refuses writes now.
    pub store_refusing: bool,
    /// Redis script calls' round trips, when counting in Redis.
    pub store_round_trips: Option<crate::storage::redis::RoundTrips>,
    /// Writes of the state file that failed since start.
    pub state_failures: u64,
    /// Webhook events delivered, attempts failed, events dropped (queue
    /// full) and abandoned (out of attempts) since start.
    pub webhooks: [u64; 4],
}

// === impl Metrics ===

impl Metrics {
    /// The metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Arc::new(DecisionStats::new());
        registry.register_collector(Box::new(decisions.clone()));
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
            "Decisions Redis failed: no answer within --store-timeout, an error, or refusing writes (then --store-failure applied)",
            store_failures.clone(),
        );
        let store_round_trips = Arc::new(StoreRoundTrips::default());
        registry.register_collector(Box::new(store_round_trips.clone()));
        let store_uncertain = Counter::default();
        registry.register(
            "store_uncertain",
            "Decisions answered as failed after their script was sent (a late reply): each may have counted in Redis though its caller was refused, or admitted by --store-failure open",
            store_uncertain.clone(),
        );
        let store_refusing = Gauge::default();
        registry.register(
            "store_refusing_writes",
            "1 while Redis refuses writes (out of memory, a read-only replica): decisions that count fail",
            store_refusing.clone(),
        );
        let state_failures = Counter::default();
        registry.register(
            "state_failures",
            "Writes of the state file that failed (admin changes, counter snapshots)",
            state_failures.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused (Consume, Envoy, forward auth) by plan, class and the limit that refused",
            refusals.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Threshold events sent to webhooks, by result: delivered, failed_attempt, dropped (queue full), abandoned (out of attempts)",
            webhooks.clone(),
        );
        Self {
            registry,
            refusals,
            webhooks,
            decisions,
            reloads,
            watchers,
            counters,
            evictions,
            store_failures,
            store_round_trips,
            store_uncertain,
            store_refusing,
            state_failures,
        }
    }

    /// Counts one decision.
    pub fn decision(&self, labels: &DecisionLabels, took: Duration) {
        self.decisions.count(labels, took.as_secs_f64());
    }

    /// Counts one refusal.
    pub fn refusal(&self, labels: &RefusalLabels) {
        self.refusals.get_or_create(labels).inc();
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
        let seen = self.store_uncertain.get();
        self.store_uncertain
            .inc_by(gauges.store_uncertain.saturating_sub(seen));
        self.store_refusing.set(i64::from(gauges.store_refusing));
        *self.store_round_trips.0.lock() = gauges.store_round_trips;
        let seen = self.state_failures.get();
        self.state_failures
            .inc_by(gauges.state_failures.saturating_sub(seen));
        let results = ["delivered", "failed_attempt", "dropped", "abandoned"];
        for (result, n) in results.into_iter().zip(gauges.webhooks) {
            let c = self.webhooks.get_or_create(&WebhookLabels { result });
            c.inc_by(n.saturating_sub(c.get()));
        }
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

/// Decisions and their latency, counted in shards (one per worker thread,
/// as far as there are shards) and summed at scrape time. A decision takes
/// no lock another core holds and writes no cache line another core writes:
/// `prometheus_client`'s `Family` takes a shared read lock per lookup, and its
/// `Histogram` a write lock per observation.
#[derive(Debug)]
struct DecisionStats {
    shards: Box<[Shard]>,
}

/// One shard, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(parking_lot::Mutex<Tally>);

#[derive(Debug, Default)]
struct Tally {
    decisions: hashbrown::HashMap<DecisionLabels, u64>,
    /// Per rpc (a handful), in the order first seen.
    latency: Vec<(&'static str, Latency)>,
}

/// A histogram's state: a count per bucket (not cumulative), sum, count.
#[derive(Debug, Clone, Copy)]
struct Latency {
    buckets: [u64; BUCKETS],
    sum: f64,
    count: u64,
}

/// Buckets of the latency histogram: 1 µs doubling to ~1 s, then +Inf.
const BUCKETS: usize = 22;

/// The largest request head the metrics endpoint reads; a scrape sends a
/// few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;

fn upper_bound(i: usize) -> f64 {
    if i + 1 == BUCKETS {
        f64::INFINITY
    } else {
        1e-6 * f64::from(1u32 << i)
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Latency {
    fn observe(&mut self, seconds: f64) {
        let i = (0..BUCKETS)
            .find(|&i| seconds <= upper_bound(i))
            .unwrap_or(BUCKETS - 1);
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

impl DecisionStats {
    fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(4, usize::from);
        let shards = (0..(2 * threads).max(4))
            .map(|_| Shard::default())
            .collect();
        Self { shards }
    }

    fn count(&self, labels: &DecisionLabels, seconds: f64) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        let i = INDEX.with(|i| *i) % self.shards.len();
        let mut tally = self.shards[i].0.lock();
        match tally.decisions.get_mut(labels) {
            Some(n) => *n += 1,
            None => {
                tally.decisions.insert(labels.clone(), 1);
            }
        }
        match tally.latency.iter_mut().find(|(rpc, _)| *rpc == labels.rpc) {
            Some((_, l)) => l.observe(seconds),
            None => {
                let mut l = Latency::default();
                l.observe(seconds);
                tally.latency.push((labels.rpc, l));
            }
        }
    }
}

impl Collector for DecisionStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut decisions: hashbrown::HashMap<DecisionLabels, u64> = hashbrown::HashMap::new();
        let mut latency: Vec<(&'static str, Latency)> = Vec::new();
        for shard in &self.shards {
            let tally = shard.0.lock();
            for (labels, n) in &tally.decisions {
                *decisions.entry(labels.clone()).or_insert(0) += n;
            }
            for (rpc, l) in &tally.latency {
                match latency.iter_mut().find(|(r, _)| r == rpc) {
                    Some((_, sum)) => sum.add(l),
                    None => latency.push((rpc, *l)),
                }
            }
        }
        let mut decisions: Vec<_> = decisions.into_iter().collect();
        decisions.sort_by(|(a, _), (b, _)| {
            (a.rpc, a.verdict, &*a.plan.0, &*a.class.0).cmp(&(
                b.rpc,
                b.verdict,
                &*b.plan.0,
                &*b.class.0,
            ))
        });
        latency.sort_by_key(|(rpc, _)| *rpc);
        {
            let mut family = encoder.encode_descriptor(
                "decisions",
                "Decisions by rpc, verdict, plan and class",
                None,
                MetricType::Counter,
            )?;
            for (labels, n) in &decisions {
                family
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, u64, f64>(n, None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "decision_duration_seconds",
            "Time to decide, in the server",
            None,
            MetricType::Histogram,
        )?;
        for (rpc, l) in &latency {
            let buckets: Vec<(f64, u64)> = (0..BUCKETS)
                .map(|i| (upper_bound(i), l.buckets[i]))
                .collect();
            family
                .encode_family(&RpcLabels { rpc })?
                .encode_histogram::<NoLabelSet>(l.sum, l.count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Redis script calls' round trips, as of the scrape (the histogram lives
/// with the store; this only renders it).
#[derive(Debug, Default)]
struct StoreRoundTrips(parking_lot::Mutex<Option<crate::storage::redis::RoundTrips>>);

impl Collector for StoreRoundTrips {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = *self.0.lock() else {
            return Ok(());
        };
        let buckets: Vec<(f64, u64)> = (0..crate::storage::redis::ROUND_TRIP_BUCKETS)
            .map(|i| {
                let bound = if i + 1 == crate::storage::redis::ROUND_TRIP_BUCKETS {
                    f64::INFINITY
                } else {
                    1e-6 * f64::from(1u32 << i)
                };
                (bound, r.buckets[i])
            })
            .collect();
        encoder
            .encode_descriptor(
                "store_round_trip_seconds",
                "Redis script calls, from sent to answered (what --store-timeout bounds); each carries the decisions waiting at the time",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(r.sum, r.count, &buckets, None)
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

/// Serves `/metrics` on `listener` until `stopping`; `gauges` is read per
/// scrape. A request head must arrive within `head_timeout`.
pub async fn serve(
    listener: Listener,
    head_timeout: Duration,
    metrics: Arc<Metrics>,
    gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
    stopping: CancellationToken,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .max_buf_size(MAX_HEAD)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => return,
        };
        let (stream, peer, slot) = (accepted.stream, accepted.peer, accepted.slot);
        let (metrics, gauges, http1) = (metrics.clone(), gauges.clone(), http1.clone());
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
            if let Err(e) = http1.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, client.addr = %peer, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(rpc: &'static str, verdict: &'static str) -> DecisionLabels {
        DecisionLabels {
            rpc,
            verdict,
            plan: Label(Arc::from("free")),
            class: Label::empty(),
        }
    }

    #[test]
    fn decisions_from_every_thread_are_summed_at_scrape() {
        let metrics = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.decision(&labels("consume", "allowed"), Duration::from_micros(3));
                    }
                    m.decision(&labels("check", "rate_limited"), Duration::from_secs(5));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        let text = metrics.render(Gauges::default());
        for line in [
            r#"tollgate_decisions_total{rpc="consume",verdict="allowed",plan="free",class=""} 800"#,
            r#"tollgate_decisions_total{rpc="check",verdict="rate_limited",plan="free",class=""} 8"#,
            r#"tollgate_decision_duration_seconds_count{rpc="consume"} 800"#,
            r#"tollgate_decision_duration_seconds_bucket{le="0.000002",rpc="consume"} 0"#,
            r#"tollgate_decision_duration_seconds_bucket{le="0.000004",rpc="consume"} 800"#,
            r#"tollgate_decision_duration_seconds_bucket{le="+Inf",rpc="check"} 8"#,
            r#"tollgate_decision_duration_seconds_bucket{le="1.048576",rpc="check"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
