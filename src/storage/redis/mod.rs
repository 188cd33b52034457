//! The shared counter store: several replicas, one set of exact counters in
//! Redis (or Valkey, or a Redis Cluster).
//!
//! Every decision is one round trip: an `EVALSHA` of `consume.lua` (the
//! script is loaded again on `NOSCRIPT`) runs the same algorithms as the
//! engine over all of the decision's counters, atomically, on Redis's own
//! clock, and sets every key's expiry. Decisions waiting at the same moment
//! share one call per Cluster slot (see `batch.rs`), each still all or nothing.
//! Redis serializes scripts, so replicas counting one limit admit exactly
//! its amount between them. Calls share one multiplexed connection.
//!
//! Keys: `tg:{TAG}:...`, where the hash tag is the counted account (or the
//! Envoy descriptor), so a decision's keys sit in one Cluster slot. Trade-off
//! against the memory store: a network round trip per decision, and time in
//! milliseconds (amount × window in ms must stay below 2^53, e.g. 100 million
//! a day); in exchange, any number of replicas behave as one limiter.

mod batch;
mod conn;
mod counters;
mod millis;
pub mod reservations;
pub mod runtime;
pub mod usage;

pub use batch::{ROUND_TRIP_BUCKETS, RoundTrips};
pub use counters::{Failure, SharedCounters};

use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use conn::{Conn, Connection};
use smallvec::SmallVec;

use super::StoreError;
use crate::engine::{Algorithm, ItemStatus, Mode, Nanos, Outcome};
use millis::Millis;

/// The algorithms, then the decisions over them.
const SCRIPT: &str = concat!(include_str!("steps.lua"), include_str!("consume.lua"));

/// The counters of a Redis deployment.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    script: redis::Script,
    timeout: Duration,
    /// A client for pub/sub (a Cluster broadcasts, so any node will do).
    pubsub: redis::Client,
    url: String,
}

/// One counter of a decision, as the script takes it.
#[derive(Debug, Clone)]
pub struct Counter {
    /// Its key (see [`RedisStore::key`]).
    pub key: String,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Its amount.
    pub amount: u64,
    /// Its window.
    pub window: Nanos,
    /// This decision's cost.
    pub cost: u64,
    /// A calendar window's periods around the replica's now: the start and
    /// end of the current one and the end of the next (the script picks by
    /// Redis's clock).
    pub period: Option<[Nanos; 3]>,
}

// === impl Counter ===

impl Counter {
    /// The periods a calendar `rate` counts around this machine's time
    /// (Redis decides on its own clock, which this one follows; never a
    /// test's manual clock), for [`Counter::period`].
    pub fn periods(rate: crate::engine::Rate) -> Option<[Nanos; 3]> {
        use crate::engine::Clock;
        let calendar = rate.periods()?;
        let (start, end) = calendar.period(crate::engine::SystemClock.now());
        let (_, next) = calendar.period(end);
        Some([start, end, next])
    }

    /// Its window as the script takes it: milliseconds, or a calendar's
    /// three boundaries in milliseconds.
    pub(super) fn window_arg(&self) -> String {
        match self.period {
            Some([a, b, c]) => format!(
                "{} {} {}",
                Millis::floor(a).get(),
                Millis::floor(b).get(),
                Millis::floor(c).get()
            ),
            None => Millis::window(self.window).get().to_string(),
        }
    }
}

// === impl RedisStore ===

impl RedisStore {
    /// Connects to `url`: `redis://[user:password@]host:port[/db]`,
    /// `rediss://…` for TLS, `redis+cluster://host:port[,host:port…]` (or
    /// `rediss+cluster://`) for a Redis Cluster. Connections are made lazily,
    /// so tollgate starts (and applies its failure policy) while Redis is
    /// down; every call waits at most `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let (cluster, tls, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
            (true, false, r)
        } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
            (true, true, r)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            (false, url.starts_with("rediss://"), "")
        } else {
            return Err(StoreError::Url(format!(
                "--store: expected redis://, rediss://, redis+cluster:// or rediss+cluster://, got {}",
                redact(url)
            )));
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let (conn, pubsub) = if cluster {
            // user:password@ applies to every node.
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{auth}{h}"))
                .collect();
            let first = nodes.first().cloned().ok_or_else(|| {
                StoreError::Url("--store: a cluster URL needs at least one host:port".into())
            })?;
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(timeout.max(Duration::from_millis(500)))
                .response_timeout(timeout)
                .build()
                .map_err(|e| bad_url(url, &e))?;
            (
                Conn::Cluster(Arc::new(client), Arc::default()),
                redis::Client::open(first).map_err(|e| bad_url(url, &e))?,
            )
        } else {
            let client = redis::Client::open(url).map_err(|e| bad_url(url, &e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(usize::MAX)
                .set_max_delay(Duration::from_secs(2));
            let conn = client.get_connection_manager_lazy(config)?;
            (Conn::Single(conn), client)
        };
        Ok(Self {
            conn,
            script: redis::Script::new(SCRIPT),
            timeout,
            pubsub,
            url: redact(url),
        })
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of the counter `identity` of `scope` under hash tag `tag`.
    pub fn key(tag: &str, scope: &str, identity: &str) -> String {
        let scope = if scope == tag { "" } else { scope };
        format!("tg:{{{tag}}}:{scope}|{identity}")
    }

    /// The key that says someone watches `tag` (see [`runtime`]).
    pub fn marker(tag: &str) -> String {
        format!("tg:{{{tag}}}:watched")
    }

    /// Runs `jobs` in one script call, in order, each all or nothing (in a
    /// Cluster, every key of every job must share a slot). Returns Redis's
    /// time and one outcome per job.
    ///
    /// The call names each distinct counter and watch marker once; the
    /// decisions refer to them by number (see `consume.lua`).
    async fn decide_all(
        &self,
        jobs: &[batch::Job],
        deadlines: &[Millis],
    ) -> Result<(Nanos, Outcomes), StoreError> {
        let mut call = self.script.prepare_invoke();
        let mut counters: HashMap<(&str, Algorithm, u64, Millis), usize> = HashMap::new();
        let mut specs = Vec::new();
        let mut decisions = Vec::with_capacity(jobs.len() * 8);
        for job in jobs {
            decisions.push(match job.mode {
                Mode::Check => 0,
                Mode::Consume => 1,
                Mode::Record => 2,
            });
            decisions.push(job.counters.len() as u64);
            for c in &job.counters {
                let window = Millis::window(c.window);
                let next = counters.len() + 1;
                let n = *counters
                    .entry((&c.key, c.algorithm, c.amount, window))
                    .or_insert_with(|| {
                        specs.push((c, window));
                        next
                    });
                decisions.push(n as u64);
                decisions.push(c.cost);
            }
        }
        call.arg(runtime::CONSUMED).arg(specs.len());
        for (c, window) in &specs {
            call.key(&c.key).arg(letter(c.algorithm)).arg(c.amount);
            match c.period {
                Some(_) => call.arg(c.window_arg()),
                None => call.arg(*window),
            };
        }
        // Markers follow the counters in KEYS, each once.
        let mut markers: HashMap<&str, usize> = HashMap::new();
        call.arg(jobs.len());
        let mut rest = &decisions[..];
        for (job, deadline) in jobs.iter().zip(deadlines) {
            let n = rest[1] as usize;
            call.arg(rest[0]).arg(*deadline);
            match &job.notice {
                Some((marker, message)) => {
                    let next = specs.len() + markers.len() + 1;
                    let m = *markers.entry(marker).or_insert_with(|| {
                        call.key(marker);
                        next
                    });
                    call.arg(m).arg(message);
                }
                None => {
                    call.arg(0);
                }
            }
            call.arg(&rest[1..2 + 2 * n]);
            rest = &rest[2 + 2 * n..];
        }
        let reply: Vec<i64> = self
            .bounded(async { call.invoke_async(&mut self.connection().await?).await })
            .await?;
        outcomes(&reply, jobs)
    }

    /// Whether this is a Redis Cluster (a call's keys must share a slot).
    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(..))
    }

    /// Deletes `keys` (all under one hash tag); how many there were.
    pub async fn delete(&self, keys: &[String]) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        let n: usize = self.query(cmd).await?;
        Ok(n)
    }

    /// Sets `key` to expire in `ttl` (a watch marker).
    pub async fn mark(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("PX").arg(ttl.as_millis() as u64);
        self.query::<()>(cmd).await
    }

    /// Sets `key` for `ttl` unless it exists; whether this call set it. The
    /// first of several replicas to claim a key wins.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let set: Option<String> = self.query(cmd).await?;
        Ok(set.is_some())
    }

    /// Connects and loads the decision script now, waiting at most
    /// `within`, so the first decisions do not pay for either (they have
    /// only the store timeout). A failure is not fatal: decisions retry.
    pub async fn warm_up(&self, within: Duration) -> Result<(), StoreError> {
        let work = async {
            let mut conn = self.connection().await?;
            match &conn {
                Connection::Single(_) => self.script.load_async(&mut conn).await.map(drop),
                // Each node loads the script on its first NOSCRIPT.
                Connection::Cluster(_) => redis::cmd("PING").query_async::<()>(&mut conn).await,
            }
        };
        match tokio::time::timeout(within, work).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(within)),
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(redis::cmd("PING")).await.map(drop)
    }

    /// Pings within `within` rather than the decision timeout: health
    /// judges reachability, not speed.
    pub async fn ping_within(&self, within: Duration) -> Result<(), StoreError> {
        let ping = async {
            redis::cmd("PING")
                .query_async::<String>(&mut self.connection().await?)
                .await
        };
        match tokio::time::timeout(within, ping).await {
            Ok(r) => r.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(within)),
        }
    }

    /// How long a decision waits for Redis (`--store-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one command, within the timeout.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        self.bounded(async { cmd.query_async(&mut self.connection().await?).await })
            .await
    }

    /// A client for subscriptions.
    pub fn pubsub_client(&self) -> &redis::Client {
        &self.pubsub
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The script's reply as the engine's outcomes (or [`StoreError::Late`]),
/// one per job.
type Outcomes = Vec<Result<Outcome, StoreError>>;

fn outcomes(reply: &[i64], jobs: &[batch::Job]) -> Result<(Nanos, Outcomes), StoreError> {
    let expected = 1 + jobs.iter().map(|j| 3 * j.counters.len()).sum::<usize>();
    if reply.len() != expected {
        return Err(StoreError::Redis(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply from the decision script",
        ))));
    }
    let ms = |v: i64| Millis::from_reply(v).nanos();
    let now = ms(reply[0]);
    let mut rest = &reply[1..];
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (head, tail) = rest.split_at(3 * job.counters.len());
        rest = tail;
        if head.chunks_exact(3).any(|c| c[1] == -2) {
            // Past its deadline in Redis: decided nothing.
            out.push(Err(StoreError::Late));
            continue;
        }
        // Per counter: remaining, wait (0: it fits; -1: it never can), free_at.
        let items: SmallVec<[ItemStatus; 4]> = head
            .chunks_exact(3)
            .map(|c| ItemStatus {
                fits: c[1] == 0,
                too_large: c[1] < 0,
                remaining: u64::try_from(c[0]).unwrap_or(0),
                wait: ms(c[1]),
                free_at: ms(c[2]),
            })
            .collect();
        let fits = items.iter().all(|i| i.fits);
        out.push(Ok(Outcome {
            fits,
            counted: match job.mode {
                Mode::Check => false,
                Mode::Consume => fits,
                Mode::Record => true,
            },
            items,
        }));
    }
    Ok((now, out))
}

/// The scripts' letter for `algorithm` (`steps.lua`).
fn letter(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "s",
        Algorithm::TokenBucket => "t",
        Algorithm::SlidingRing => "r",
        Algorithm::Calendar => "c",
    }
}

/// Limits whose arithmetic in Redis would pass 2^53 (amount × window in
/// milliseconds, where Lua's doubles stop being exact), by name.
pub fn imprecise_limits(catalog: &crate::plans::Catalog) -> Vec<String> {
    let mut out: Vec<String> = catalog
        .plans
        .values()
        .flat_map(|p| p.limits.iter())
        .filter_map(|l| match &l.kind {
            crate::plans::LimitKind::Counted { rate, .. } => {
                let product =
                    u128::from(rate.amount()) * u128::from(Millis::window(rate.window()).get());
                (product >= 1 << 53).then(|| l.name.to_string())
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A URL the client refused, in plain words (the client's own message
/// reads `Redis URL did not parse - InvalidClientConfig`).
fn bad_url(url: &str, e: &redis::RedisError) -> StoreError {
    let why = e.detail().map_or_else(String::new, |d| format!(" ({d})"));
    StoreError::Url(format!(
        "--store: cannot parse {} as redis://[user:password@]host:port[/db]{why}",
        redact(url)
    ))
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let auth = &url[s + 3..at];
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(
            redact("rediss://me:s3cret@h:6379"),
            "rediss://me:***@h:6379"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn keys_share_their_hash_tag() {
        assert_eq!(
            RedisStore::key("acct", "acct", "account|x"),
            "tg:{acct}:|account|x"
        );
        assert_eq!(
            RedisStore::key("acct", "key_1", "subject|x"),
            "tg:{acct}:key_1|subject|x"
        );
    }
}
