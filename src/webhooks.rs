//! Delivery of signed webhooks, following Standard Webhooks
//! (<https://www.standardwebhooks.com>): every request carries `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}`). One task per endpoint delivers its bounded queue
//! in order, retrying with capped exponential backoff and full jitter.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use http::header::{CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};

use crate::log_every::LogEvery;

type HmacSha256 = Hmac<Sha256>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";
/// Minimum key length, in bytes, that Standard Webhooks asks of a secret.
const MIN_KEY: usize = 24;
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Most of a response body read (then discarded) so the connection can be reused.
const MAX_RESPONSE: usize = 64 << 10;

/// One receiver, as configured: `events.webhooks: [{ url, secret, thresholds?, plans? }]`
/// (the filtering by thresholds/plans happens in the caller; this module only delivers).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://host[:port][/path]` or `https://…`.
    pub url: String,
    /// `whsec_` followed by the base64 of a key of at least 24 bytes.
    pub secret: String,
}

/// Queueing and retry policy, shared by every endpoint.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Bounded queue capacity per endpoint (default 10 000).
    pub queue: usize,
    /// Attempts per event, the first included (default 8).
    pub attempts: u32,
    /// Backoff ceiling after the first failure (default 500 ms), doubled after each.
    pub first_backoff: Duration,
    /// Largest wait between attempts, `Retry-After` included (default 60 s).
    pub max_backoff: Duration,
    /// Time allowed for one attempt: connect, send, response head (default 5 s).
    pub timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            queue: 10_000,
            attempts: 8,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What can go wrong configuring endpoints or verifying a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookError {
    /// The secret is not `whsec_` + base64 of at least 24 bytes; says which part is wrong.
    BadSecret(String),
    /// The url is not `http(s)://host[:port][/path]`; says why.
    BadUrl(String),
    /// The TLS client could not be set up.
    Tls(String),
    /// [`Webhooks::start`] was called outside a tokio runtime.
    NoRuntime,
    /// A Standard Webhooks header is missing (its name).
    MissingHeader(&'static str),
    /// A Standard Webhooks header is malformed (its name).
    BadHeader(&'static str),
    /// `webhook-timestamp` is further from now than the tolerance.
    StaleTimestamp,
    /// No `v1` signature in `webhook-signature` matches.
    BadSignature,
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSecret(why) => write!(f, "invalid webhook secret: {why}"),
            Self::BadUrl(why) => write!(f, "invalid webhook url: {why}"),
            Self::Tls(why) => write!(f, "webhook TLS setup failed: {why}"),
            Self::NoRuntime => f.write_str("webhooks must be started inside a tokio runtime"),
            Self::MissingHeader(name) => write!(f, "missing header {name}"),
            Self::BadHeader(name) => write!(f, "malformed header {name}"),
            Self::StaleTimestamp => f.write_str("webhook timestamp outside the tolerance"),
            Self::BadSignature => f.write_str("no matching webhook signature"),
        }
    }
}

impl std::error::Error for WebhookError {}

/// A parsed endpoint.
struct Target {
    index: usize,
    /// `host[:port]`, for the `Host` header and logs (the path may hold tokens).
    authority: String,
    host: String,
    port: u16,
    path: String,
    tls: Option<ServerName<'static>>,
    key: Vec<u8>,
}

impl Endpoint {
    /// Parses the secret (`whsec_` + base64, or reject with a message naming what is wrong)
    /// and the url (`http://host:port/path`, or `https://`).
    pub fn check(&self) -> Result<(), WebhookError> {
        self.parse(0).map(drop)
    }

    fn parse(&self, index: usize) -> Result<Target, WebhookError> {
        let key = parse_secret(&self.secret)?;
        let bad = |why: &str| WebhookError::BadUrl(format!("{:?}: {why}", self.url));
        let uri: Uri = self.url.parse().map_err(|e| bad(&format!("{e}")))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user info is not supported; put credentials in the path",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if authority.port_u16().is_none() && authority.as_str() != authority.host() {
            return Err(bad("invalid port"));
        }
        let tls = match tls {
            true => Some(ServerName::try_from(host.to_owned()).map_err(|e| bad(&e.to_string()))?),
            false => None,
        };
        Ok(Target {
            index,
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            tls,
            key,
        })
    }
}

fn parse_secret(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let bad = |why: String| Err(WebhookError::BadSecret(why));
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return bad("it must start with `whsec_`".into());
    };
    match STANDARD.decode(encoded) {
        Err(e) => bad(format!("the part after `whsec_` is not base64 ({e})")),
        Ok(key) if key.len() < MIN_KEY => bad(format!(
            "the key is {} bytes, at least {MIN_KEY} are required",
            key.len()
        )),
        Ok(key) => Ok(key),
    }
}

fn mac(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: the fallback is unreachable, but panic-free.
    let mut mac =
        HmacSha256::new_from_slice(key).unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// Signs one attempt: returns `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`,
/// `secret_key` being the decoded key (the base64 after `whsec_`).
pub fn sign(secret_key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret_key, id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Verifies a received webhook (the receiver side): `secret` is `whsec_…`; the timestamp
/// must be within `tolerance_secs` of `now_secs`; any `v1` signature of the space-separated
/// list may match (compared in constant time).
pub fn verify(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), WebhookError> {
    let key = parse_secret(secret)?;
    let get = |name: &'static str| {
        let value = headers.get(name).ok_or(WebhookError::MissingHeader(name))?;
        value.to_str().map_err(|_| WebhookError::BadHeader(name))
    };
    let id = get(ID)?;
    let timestamp: u64 = get(TIMESTAMP)?
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadHeader(TIMESTAMP))?;
    let signatures = get(SIGNATURE)?;
    if now_secs.abs_diff(timestamp) > tolerance_secs {
        return Err(WebhookError::StaleTimestamp);
    }
    let expected = mac(&key, id, timestamp, body);
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, tag)| STANDARD.decode(tag).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    matched.then_some(()).ok_or(WebhookError::BadSignature)
}

/// Counters the service exports as Prometheus metrics.
#[derive(Default, Debug)]
pub struct Stats {
    /// Events acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (non-2xx, connection error or timeout).
    pub failed_attempts: AtomicU64,
    /// Events not queued because the endpoint's queue was full (or the id was not a valid header).
    pub dropped: AtomicU64,
    /// Events given up after `Policy::attempts` failures.
    pub abandoned: AtomicU64,
}

struct Job {
    id: Arc<str>,
    body: Bytes,
}

/// The delivery side: one queue and one task per endpoint.
pub struct Webhooks {
    queues: Vec<mpsc::Sender<Job>>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
    drop_log: LogEvery,
}

impl Webhooks {
    /// Starts one delivery task per endpoint on the current tokio runtime; `https://`
    /// endpoints are checked against the webpki (Mozilla) roots.
    pub fn start(endpoints: Vec<Endpoint>, policy: Policy) -> Result<Self, WebhookError> {
        let targets = parse_all(&endpoints)?;
        let tls = match targets.iter().any(|t| t.tls.is_some()) {
            true => Some(tls_config(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect(),
            )?),
            false => None,
        };
        Self::spawn(targets, policy, tls)
    }

    /// Like [`Webhooks::start`], with the TLS client configuration given (private CAs, tests).
    pub fn start_with_tls(
        endpoints: Vec<Endpoint>,
        policy: Policy,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, WebhookError> {
        Self::spawn(parse_all(&endpoints)?, policy, Some(tls))
    }

    fn spawn(
        targets: Vec<Target>,
        policy: Policy,
        tls: Option<Arc<ClientConfig>>,
    ) -> Result<Self, WebhookError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let stats = Arc::new(Stats::default());
        let (mut queues, mut tasks) = (Vec::new(), Vec::new());
        for target in targets {
            let (tx, rx) = mpsc::channel(policy.queue.max(1));
            let connector = tls.clone().map(TlsConnector::from);
            tasks.push(runtime.spawn(run(target, policy.clone(), rx, stats.clone(), connector)));
            queues.push(tx);
        }
        Ok(Webhooks {
            queues,
            tasks,
            stats,
            drop_log: LogEvery::new(WARN_EVERY),
        })
    }

    /// Enqueues `body` (a JSON event) with its event `id` for the endpoints whose index is in
    /// `to` (or all when `to` is None); unknown indexes are ignored. Never blocks, never
    /// awaits: when a queue is full the message is dropped for that endpoint, counted in
    /// `stats.dropped`, and a warning is logged at most once per 10 seconds.
    pub fn send(&self, id: &str, body: Bytes, to: Option<&[usize]>) {
        let valid = id.bytes().all(|b| (0x20..0x7f).contains(&b));
        let id: Arc<str> = Arc::from(id);
        let push = |i: usize| {
            let Some(queue) = self.queues.get(i) else {
                return;
            };
            let job = Job {
                id: id.clone(),
                body: body.clone(),
            };
            if valid && queue.try_send(job).is_ok() {
                return;
            }
            let dropped = self.stats.dropped.fetch_add(1, Relaxed) + 1;
            if let Some(held) = self.drop_log.ready() {
                let why = if valid {
                    "queue full"
                } else {
                    "event id is not a valid header value"
                };
                tracing::warn!(endpoint = i, dropped, held, "webhook event dropped: {why}");
            }
        };
        match to {
            Some(indexes) => indexes.iter().copied().for_each(push),
            None => (0..self.queues.len()).for_each(push),
        }
    }

    /// The delivery counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The delivery counters, shared (e.g. with a metrics exporter that outlives `self`).
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stops taking messages and waits (up to `grace`) for queued ones to be delivered;
    /// deliveries still pending then are cancelled.
    pub async fn shutdown(self, grace: Duration) {
        let Webhooks {
            queues, mut tasks, ..
        } = self;
        drop(queues);
        let all = async {
            for task in &mut tasks {
                let _ = task.await;
            }
        };
        if timeout(grace, all).await.is_err() {
            let unfinished = tasks.iter().filter(|t| !t.is_finished()).count();
            tasks.iter().for_each(JoinHandle::abort);
            tracing::warn!(
                unfinished,
                "webhook deliveries still pending at shutdown were cancelled"
            );
        }
    }
}

fn parse_all(endpoints: &[Endpoint]) -> Result<Vec<Target>, WebhookError> {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| e.parse(i))
        .collect()
}

fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, WebhookError> {
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The wait after the `failures`-th failure (0-based): uniform in
/// `[0, min(first_backoff × 2^failures, max_backoff)]` (full jitter).
fn backoff(policy: &Policy, failures: u32) -> Duration {
    let cap = policy
        .first_backoff
        .saturating_mul(2u32.saturating_pow(failures))
        .min(policy.max_backoff);
    Duration::from_nanos(fastrand::u64(
        0..=u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX),
    ))
}

/// A kept-alive HTTP/1 connection; its driver task ends with it.
struct Conn {
    tx: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why an attempt failed, and the receiver's `Retry-After` if any.
struct Failure(String, Option<Duration>);

/// Delivers one endpoint's queue, in order, one event at a time.
async fn run(
    target: Target,
    policy: Policy,
    mut rx: mpsc::Receiver<Job>,
    stats: Arc<Stats>,
    tls: Option<TlsConnector>,
) {
    let (mut conn, warn) = (None, LogEvery::new(WARN_EVERY));
    let attempts = policy.attempts.max(1);
    while let Some(job) = rx.recv().await {
        for failures in 0.. {
            let Err(Failure(reason, retry_after)) =
                attempt(&target, &policy, &job, &mut conn, tls.as_ref()).await
            else {
                stats.delivered.fetch_add(1, Relaxed);
                break;
            };
            stats.failed_attempts.fetch_add(1, Relaxed);
            let (endpoint, id) = (target.index, &*job.id);
            if failures + 1 >= attempts {
                stats.abandoned.fetch_add(1, Relaxed);
                if let Some(held) = warn.ready() {
                    let host = &target.authority;
                    tracing::warn!(
                        endpoint,
                        host,
                        id,
                        reason,
                        attempts,
                        held,
                        "webhook abandoned"
                    );
                }
                break;
            }
            tracing::debug!(endpoint, id, reason, "webhook attempt failed");
            let retry_after = retry_after.map(|d| d.min(policy.max_backoff));
            sleep(retry_after.unwrap_or_else(|| backoff(&policy, failures))).await;
        }
    }
}

async fn attempt(
    target: &Target,
    policy: &Policy,
    job: &Job,
    conn: &mut Option<Conn>,
    tls: Option<&TlsConnector>,
) -> Result<(), Failure> {
    let fail = |reason: String| Failure(reason, None);
    let now = unix_now();
    let request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, "tollgate")
        .header(ID, &*job.id)
        .header(TIMESTAMP, now)
        .header(SIGNATURE, sign(&target.key, &job.id, now, &job.body))
        .body(Full::new(job.body.clone()))
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        if conn.as_ref().is_none_or(|c| c.tx.is_closed()) {
            *conn = Some(connect(target, tls).await?);
        }
        let Some(Conn { tx, .. }) = conn.as_mut() else {
            return Err("no connection".into());
        };
        tx.ready().await?;
        Ok::<_, BoxError>(tx.send_request(request).await?)
    };
    let response = match timeout(policy.timeout, exchange).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no response within {:?}", policy.timeout)),
    }
    .map_err(|reason| {
        *conn = None;
        fail(reason)
    })?;
    let status = response.status();
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .map(Duration::from_secs),
        _ => None,
    };
    // Read the body (bounded) so the connection can carry the next request.
    let body = Limited::new(response.into_body(), MAX_RESPONSE).collect();
    if !matches!(timeout(policy.timeout, body).await, Ok(Ok(_))) {
        *conn = None;
    }
    match status.is_success() {
        true => Ok(()),
        false => Err(Failure(format!("status {status}"), retry_after)),
    }
}

async fn connect(target: &Target, tls: Option<&TlsConnector>) -> Result<Conn, BoxError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    match (&target.tls, tls) {
        (None, _) => start_conn(tcp).await,
        (Some(name), Some(connector)) => {
            start_conn(connector.connect(name.clone(), tcp).await?).await
        }
        (Some(_), None) => Err("https endpoint without a TLS configuration".into()),
    }
}

async fn start_conn<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
) -> Result<Conn, BoxError> {
    let (tx, connection) = handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("webhook connection closed: {e}");
        }
    });
    Ok(Conn { tx, driver })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use hyper::{Response, body::Incoming, server::conn::http1::Builder, service::service_fn};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc::{UnboundedReceiver as Rx, UnboundedSender, unbounded_channel};
    use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const WAIT: Duration = Duration::from_secs(10);

    /// How the test receiver answers: its first `fail_first` requests get `status`.
    #[derive(Clone, Default)]
    struct Plan {
        fail_first: usize,
        status: u16,
        retry_after: Option<&'static str>,
        delay: Duration,
    }

    /// One request as the receiver saw it; `ok`: verified by `verify` and by an
    /// independent recomputation, with the expected method, path and headers.
    struct Seen {
        id: String,
        body: Bytes,
        at: Instant,
        ok: bool,
    }

    /// A real HTTP/1 receiver on 127.0.0.1 (over TLS with `tls`); returns its url.
    async fn receiver(plan: Plan, tls: Option<TlsAcceptor>) -> (String, Rx<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (plan, tx, count, tls) = (plan.clone(), tx.clone(), count.clone(), tls.clone());
                let svc =
                    service_fn(move |req| handle(req, plan.clone(), tx.clone(), count.clone()));
                tokio::spawn(async move {
                    match tls {
                        None => {
                            Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .await
                        }
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(io) => Builder::new().serve_connection(TokioIo::new(io), svc).await,
                            Err(_) => Ok(()),
                        },
                    }
                });
            }
        });
        (format!("{scheme}://127.0.0.1:{port}/hooks?x=1"), rx)
    }

    async fn handle(
        req: Request<Incoming>,
        plan: Plan,
        tx: UnboundedSender<Seen>,
        count: Arc<AtomicUsize>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let h = &parts.headers;
        let text = |name: &str| {
            h.get(name)
                .map_or("", |v| v.to_str().unwrap_or("?"))
                .to_owned()
        };
        // Independent recomputation, the reference libraries' recipe (not `sign`).
        let mut mac =
            HmacSha256::new_from_slice(&STANDARD.decode(&SECRET[6..]).expect("key")).expect("mac");
        mac.update(format!("{}.{}.", text(ID), text(TIMESTAMP)).as_bytes());
        mac.update(&body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let ok = verify(SECRET, h, &body, unix_now(), 60).is_ok()
            && text(SIGNATURE) == expected
            && (parts.method.as_str(), parts.uri.to_string()) == ("POST", "/hooks?x=1".into())
            && (text("user-agent"), text("content-type"))
                == ("tollgate".into(), "application/json".into());
        let _ = tx.send(Seen {
            id: text(ID),
            body,
            at: Instant::now(),
            ok,
        });
        let n = count.fetch_add(1, SeqCst);
        sleep(plan.delay).await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        if n < plan.fail_first {
            *response.status_mut() = StatusCode::from_u16(plan.status).expect("status");
            if let Some(seconds) = plan.retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(seconds));
            }
        }
        Ok(response)
    }

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            url: url.to_owned(),
            secret: SECRET.to_owned(),
        }
    }

    fn fast() -> Policy {
        let ms = Duration::from_millis;
        Policy {
            queue: 100,
            first_backoff: ms(5),
            max_backoff: ms(20),
            ..Policy::default()
        }
    }

    async fn next(rx: &mut Rx<Seen>) -> Seen {
        timeout(WAIT, rx.recv())
            .await
            .expect("no request within 10 s")
            .expect("setup")
    }

    async fn eventually(counter: &AtomicU64, value: u64) {
        let deadline = Instant::now() + WAIT;
        while counter.load(Relaxed) != value {
            assert!(
                Instant::now() < deadline,
                "counter stuck at {counter:?}, want {value}"
            );
            sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn signs_like_the_reference_libraries() {
        // standard-webhooks/standard-webhooks libraries/rust/src/lib.rs, `test_sign`.
        let key = STANDARD
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .expect("key");
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = sign(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        // libraries/python/tests/test_webhooks.py, `test_sign_function`.
        let key = STANDARD.decode(&SECRET[6..]).expect("key");
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_checks_signature_list_timestamp_and_headers() {
        let (body, ts) = (br#"{"test": 2432232314}"#, 1614265330);
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let other = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        let headers = |sig: &str| {
            let mut h = HeaderMap::new();
            h.insert(ID, HeaderValue::from_static("msg_p5jXN8AQM9LWM0D4loKWxJek"));
            h.insert(TIMESTAMP, HeaderValue::from(ts));
            h.insert(SIGNATURE, sig.parse().expect("header"));
            h
        };
        let rotated = headers(&format!("{other} v1a,{} {good} v2,xx", &good[3..]));
        assert_eq!(verify(SECRET, &rotated, body, ts + 299, 300), Ok(()));
        let check = |h: &HeaderMap, body: &[u8], now| verify(SECRET, h, body, now, 300);
        assert_eq!(
            check(&headers(other), body, ts),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check(&headers(good), b"{}", ts),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            check(&headers(good), body, ts + 301),
            Err(WebhookError::StaleTimestamp)
        );
        assert_eq!(
            check(&headers(good), body, ts - 301),
            Err(WebhookError::StaleTimestamp)
        );
        for name in [ID, TIMESTAMP, SIGNATURE] {
            let mut h = headers(good);
            h.remove(name);
            assert_eq!(check(&h, body, ts), Err(WebhookError::MissingHeader(name)));
        }
    }

    #[test]
    fn check_names_what_is_wrong() {
        let check = |url: &str, secret: &str| {
            Endpoint {
                url: url.into(),
                secret: secret.into(),
            }
            .check()
        };
        assert_eq!(check("http://127.0.0.1:8080/hook", SECRET), Ok(()));
        assert_eq!(check("https://example.com", SECRET), Ok(()));
        assert_eq!(check("http://[::1]/", SECRET), Ok(()));
        for (url, secret, message) in [
            ("http://h/", &SECRET[6..], "must start with `whsec_`"),
            ("http://h/", "whsec_not*base64", "is not base64"),
            (
                "http://h/",
                "whsec_c2hvcnQ=",
                "the key is 5 bytes, at least 24",
            ),
            ("ftp://h/", SECRET, "scheme must be http:// or https://"),
            ("/just/a/path", SECRET, "scheme must be"),
            ("http://user:pw@h/", SECRET, "user info is not supported"),
            ("http://h:99999/", SECRET, "invalid port"),
        ] {
            let error = check(url, secret).expect_err(url).to_string();
            assert!(error.contains(message), "{url} {secret}: {error}");
        }
    }

    #[test]
    fn backoff_is_jittered_below_the_capped_exponential() {
        let policy = Policy::default();
        for failures in 0..40 {
            let cap = Duration::from_millis(500 << failures.min(20)).min(policy.max_backoff);
            assert!(backoff(&policy, failures) <= cap);
        }
        let draws: Vec<_> = (0..20).map(|_| backoff(&policy, 3)).collect();
        assert!(draws.iter().any(|d| *d != draws[0]), "no jitter");
    }

    /// 503 + `Retry-After: 3600` three times (waits capped at 100 ms), then 200s.
    #[tokio::test]
    async fn retries_until_recovery_then_delivers_all_in_order() {
        let plan = Plan {
            fail_first: 3,
            status: 503,
            retry_after: Some("3600"),
            ..Plan::default()
        };
        let (url, mut seen) = receiver(plan, None).await;
        let policy = Policy {
            max_backoff: Duration::from_millis(100),
            ..fast()
        };
        let hooks = Webhooks::start(vec![endpoint(&url)], policy).expect("setup");
        for i in 0..5 {
            hooks.send(
                &format!("evt_{i}"),
                Bytes::from(format!(r#"{{"n":{i}}}"#)),
                None,
            );
        }
        let mut requests = Vec::new();
        for _ in 0..8 {
            let s = next(&mut seen).await;
            assert!(s.ok, "request {} not signed or formed as expected", s.id);
            assert_eq!(s.body, format!(r#"{{"n":{}}}"#, &s.id[4..]));
            requests.push(s);
        }
        let ids: Vec<_> = requests.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "evt_0", "evt_0", "evt_0", "evt_0", "evt_1", "evt_2", "evt_3", "evt_4"
            ]
        );
        for pair in requests[..4].windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_millis(100),
                "Retry-After ignored: {gap:?}"
            );
        }
        eventually(&hooks.stats().delivered, 5).await;
        assert_eq!(hooks.stats().failed_attempts.load(Relaxed), 3);
        assert_eq!(hooks.stats().abandoned.load(Relaxed), 0);
        assert!(seen.try_recv().is_err(), "an event was delivered twice");
    }

    #[tokio::test]
    async fn silent_receiver_times_out_retries_then_abandons() {
        let silent = Plan {
            delay: Duration::from_secs(3600),
            ..Plan::default()
        };
        let (url, mut seen) = receiver(silent, None).await;
        let policy = Policy {
            attempts: 3,
            timeout: Duration::from_millis(200),
            ..fast()
        };
        let hooks = Webhooks::start(vec![endpoint(&url)], policy).expect("setup");
        hooks.send("evt_slow", Bytes::from_static(b"{}"), None);
        for _ in 0..3 {
            let s = next(&mut seen).await;
            assert!(s.ok && s.id == "evt_slow");
        }
        eventually(&hooks.stats().abandoned, 1).await;
        assert_eq!(hooks.stats().failed_attempts.load(Relaxed), 3);
        assert_eq!(hooks.stats().delivered.load(Relaxed), 0);
        assert!(seen.try_recv().is_err(), "more than `attempts` attempts");
    }

    #[tokio::test]
    async fn full_queue_drops_without_blocking() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("setup")
            .local_addr()
            .expect("setup");
        let minute = Duration::from_secs(60);
        let policy = Policy {
            queue: 100,
            first_backoff: minute,
            max_backoff: minute,
            ..fast()
        };
        let hooks =
            Webhooks::start(vec![endpoint(&format!("http://{dead}/"))], policy).expect("setup");
        let body = Bytes::from_static(br#"{"event":"threshold"}"#);
        let started = Instant::now();
        for _ in 0..10_000 {
            hooks.send("evt_x", body.clone(), None);
        }
        println!(
            "10000 sends to a dead endpoint, queue 100: {:?}",
            started.elapsed()
        );
        // The current-thread runtime has not run the delivery task yet: exactly 100 queued.
        assert_eq!(hooks.stats().dropped.load(Relaxed), 9_900);
        timeout(WAIT, hooks.shutdown(Duration::from_millis(100)))
            .await
            .expect("setup");
    }

    #[tokio::test]
    async fn shutdown_waits_for_pending_deliveries_and_to_selects_endpoints() {
        let slow = Plan {
            delay: Duration::from_millis(150),
            ..Plan::default()
        };
        let (a, mut seen_a) = receiver(slow.clone(), None).await;
        let (b, mut seen_b) = receiver(slow, None).await;
        let hooks = Webhooks::start(vec![endpoint(&a), endpoint(&b)], fast()).expect("setup");
        let stats = hooks.stats_handle();
        for i in 0..3 {
            hooks.send(&format!("evt_{i}"), Bytes::from_static(b"{}"), None);
        }
        hooks.send("evt_b", Bytes::from_static(b"{}"), Some(&[1, 7]));
        hooks.shutdown(WAIT).await;
        assert_eq!(stats.delivered.load(Relaxed), 7);
        fn ids(rx: &mut Rx<Seen>) -> Vec<String> {
            std::iter::from_fn(|| rx.try_recv().ok().map(|s| s.id)).collect()
        }
        assert_eq!(ids(&mut seen_a), ["evt_0", "evt_1", "evt_2"]);
        assert_eq!(ids(&mut seen_b), ["evt_0", "evt_1", "evt_2", "evt_b"]);
    }

    #[tokio::test]
    async fn delivers_over_https() {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("setup");
        let key = cert.signing_key.serialize_der().try_into().expect("setup");
        let server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("setup")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("setup");
        let (url, mut seen) = receiver(Plan::default(), Some(Arc::new(server).into())).await;
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("setup");
        let tls = tls_config(roots).expect("setup");
        let hooks = Webhooks::start_with_tls(vec![endpoint(&url)], fast(), tls).expect("setup");
        hooks.send("evt_tls", Bytes::from_static(b"{}"), None);
        assert!(next(&mut seen).await.ok);
        eventually(&hooks.stats().delivered, 1).await;
        // The default (webpki) roots do not trust this certificate: every attempt fails.
        let hooks = Webhooks::start(
            vec![endpoint(&url)],
            Policy {
                attempts: 2,
                ..fast()
            },
        )
        .expect("setup");
        hooks.send("evt_untrusted", Bytes::from_static(b"{}"), None);
        eventually(&hooks.stats().abandoned, 1).await;
    }
}
