//! A real tollgate server on 127.0.0.1:0 with a manual clock, and its clients.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use tollgate::engine::{ManualClock, Nanos, clock::SECOND};
use tollgate::limiter::Limiter;
use tollgate::plans::SlotRegistry;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::storage::memory::MemoryStore;

pub use pb::admin_client::AdminClient;
pub use pb::rate_limiter_client::RateLimiterClient;
pub use pb::{Decision, LimitRequest, Verdict};

pub mod envoy;
pub mod gateway;
pub mod http;
pub mod process;
pub mod redis;

/// The admin token test servers accept.
pub const ADMIN_TOKEN: &str = "test-token";

/// A day boundary (2027-01-15T00:00:00Z), so every window starts aligned.
pub const T0: Nanos = 1_799_971_200 * SECOND;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The HTTP front door's address, when `options.http` was given.
    pub http: Option<std::net::SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub limiter: Arc<Limiter>,
    pub client: RateLimiterClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves the configuration `yaml` with a clock at [`T0`].
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, MemoryStore::new(100_000)).await
    }

    /// Serves the example file `examples/<name>`.
    pub async fn example(name: &str) -> Self {
        let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(&path).expect("example exists");
        Self::start(&yaml).await
    }

    pub async fn start_with(yaml: &str, store: MemoryStore) -> Self {
        let options = tollgate::server::Options {
            admin_token: Some(ADMIN_TOKEN.into()),
            watch_interval: std::time::Duration::from_millis(50),
            ..Default::default()
        };
        Self::start_opts(yaml, store, options).await
    }

    /// Serves `yaml` with TLS `options`; `client` is a plaintext client that
    /// will not work: tests make their own.
    pub async fn start_opts_tls(
        yaml: &str,
        store: MemoryStore,
        options: tollgate::server::Options,
    ) -> Self {
        Self::start_inner(yaml, store, options, false).await
    }

    /// Serves `yaml` with `options`.
    pub async fn start_opts(
        yaml: &str,
        store: MemoryStore,
        options: tollgate::server::Options,
    ) -> Self {
        Self::start_inner(yaml, store, options, true).await
    }

    async fn start_inner(
        yaml: &str,
        store: MemoryStore,
        options: tollgate::server::Options,
        plaintext: bool,
    ) -> Self {
        Self::start_full(yaml, store, options, plaintext, None).await
    }

    /// Serves `yaml` and the Envoy rule files of `envoy_dir` with `options`.
    pub async fn start_envoy(
        yaml: &str,
        envoy_dir: &std::path::Path,
        envoy: tollgate::envoy::Options,
    ) -> Self {
        let options = tollgate::server::Options {
            admin_token: Some(ADMIN_TOKEN.into()),
            watch_interval: std::time::Duration::from_millis(50),
            envoy,
            ..Default::default()
        };
        Self::start_envoy_opts(yaml, envoy_dir, options).await
    }

    /// Serves `yaml` and the Envoy rule files of `envoy_dir` with `options`.
    pub async fn start_envoy_opts(
        yaml: &str,
        envoy_dir: &std::path::Path,
        options: tollgate::server::Options,
    ) -> Self {
        Self::start_full(
            yaml,
            MemoryStore::new(100_000),
            options,
            true,
            Some(envoy_dir),
        )
        .await
    }

    async fn start_full(
        yaml: &str,
        store: MemoryStore,
        mut options: tollgate::server::Options,
        plaintext: bool,
        envoy_dir: Option<&std::path::Path>,
    ) -> Self {
        let slots = Arc::new(SlotRegistry::default());
        if let Some(dir) = envoy_dir {
            let rules =
                tollgate::envoy::RuleSource::load(Some(dir.to_owned()), false, slots.clone())
                    .expect("valid envoy rules");
            options.envoy_rules = Some(Arc::new(rules));
        }
        let catalog = tollgate::config::parse("test.yaml", yaml, &slots).expect("valid config");
        let clock = Arc::new(ManualClock::new(T0));
        let limiter = Arc::new(Limiter::new(store, catalog, slots, clock.clone()));
        // Bound before spawning, so the client can connect at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http = options.http.as_ref().map(|l| l.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                tollgate::server::run(listener, limiter, options, async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
            }
        });
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri");
        let channel = if plaintext {
            endpoint.connect().await.expect("connect")
        } else {
            endpoint.connect_lazy()
        };
        let client = RateLimiterClient::new(channel);
        Self {
            addr,
            http,
            clock,
            limiter,
            client,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// An admin client (requests need [`authed`]).
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn consume(&self, r: LimitRequest) -> Decision {
        self.client
            .clone()
            .consume(r)
            .await
            .expect("consume")
            .into_inner()
    }

    pub async fn check(&self, r: LimitRequest) -> Decision {
        self.client
            .clone()
            .check_limit(r)
            .await
            .expect("check")
            .into_inner()
    }

    pub async fn record(&self, r: LimitRequest) -> Decision {
        self.client
            .clone()
            .record(r)
            .await
            .expect("record")
            .into_inner()
    }

    /// Consumes `r` `n` times and returns how many were allowed.
    pub async fn consume_n(&self, r: &LimitRequest, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            if self.consume(r.clone()).await.verdict == Verdict::Allowed as i32 {
                allowed += 1;
            }
        }
        allowed
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task ends cleanly");
        }
    }
}

/// A request of `subject` for `resource`, costing one request.
pub fn req(subject: &str, resource: &str) -> LimitRequest {
    LimitRequest {
        subject: subject.into(),
        resource: resource.into(),
        ..Default::default()
    }
}

/// `r` with `cost`.
pub fn with_cost(mut r: LimitRequest, cost: &[(&str, u64)]) -> LimitRequest {
    r.cost = cost
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect::<HashMap<_, _>>();
    r
}

/// `r` for `account`.
pub fn of_account(mut r: LimitRequest, account: &str) -> LimitRequest {
    r.account = account.into();
    r
}

pub fn verdict(d: &Decision) -> Verdict {
    Verdict::try_from(d.verdict).expect("known verdict")
}

pub fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.headers.get(name).map(String::as_str)
}

/// The remaining of the limit named `name`.
pub fn remaining(d: &Decision, name: &str) -> u64 {
    d.limits
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no limit {name} in {d:?}"))
        .remaining
        .expect("counted limit")
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `msg` with the test admin token.
pub fn authed<T>(msg: T) -> tonic::Request<T> {
    with_token(msg, ADMIN_TOKEN)
}

/// `msg` with `authorization: Bearer <token>`.
pub fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

/// The next update of a WatchQuota stream, within 5 s.
pub async fn next_update(stream: &mut tonic::Streaming<pb::QuotaUpdate>) -> pb::QuotaUpdate {
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an update within 60 s")
        .expect("stream open")
        .expect("ok")
}

/// The remaining of the limit `name` in a quota update.
pub fn update_remaining(u: &pb::QuotaUpdate, name: &str) -> Option<u64> {
    u.limits
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| l.remaining)
}

/// The next threshold event on a `WatchEvents` stream, within 10 s.
pub async fn next_event(stream: &mut tonic::Streaming<pb::QuotaEvent>) -> pb::QuotaEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
}
