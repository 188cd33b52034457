//! The Redis store as a limiter counts through it: decisions coalesced
//! ([`super::batch`]), each bounded by its deadline and its round trip by
//! the store timeout, and the failure policy when Redis does not answer
//! (admit or refuse; counted, logged sparingly). Whether Redis refuses
//! writes (out of memory, read-only) is tracked by episode, for health.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::time::Instant;

use smallvec::SmallVec;

use super::{Counter, RedisStore, StoreError, batch};
use crate::engine::{Algorithm, ItemStatus, Mode, Nanos, Outcome};
use crate::log_every::LogEvery;

/// What a replica does when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Admit the request (nothing counted), count it in a metric, log once
    /// per interval.
    Open,
    /// Answer `UNAVAILABLE`: the gateway's own policy decides (Envoy's
    /// `failure_mode_deny`).
    Closed,
}

/// The Redis store as a limiter uses it: the store, the failure policy, and
/// this replica's name in notices.
#[derive(Debug)]
pub struct SharedCounters {
    /// The store.
    pub store: RedisStore,
    batcher: batch::Batcher,
    /// What to do when it fails.
    pub failure: Failure,
    /// This replica, to skip its own notices.
    pub replica: String,
    failures: AtomicU64,
    /// Decisions answered as failed after their script was sent: each may
    /// have counted.
    uncertain: AtomicU64,
    /// Redis refuses writes, since the last decision that failed so; until
    /// one counts again.
    refusing: AtomicBool,
    failed: LogEvery,
}

// === impl SharedCounters ===

impl SharedCounters {
    /// `store` with `failure`; the replica gets a random name.
    pub fn new(store: RedisStore, failure: Failure) -> Self {
        let replica = format!(
            "{:x}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Self {
            batcher: batch::Batcher::new(store.clone()),
            store,
            failure,
            replica,
            failures: AtomicU64::new(0),
            uncertain: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            failed: LogEvery::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Decisions answered as failed (a timeout) after their script was sent,
    /// so far: each may have counted though its caller was answered
    /// otherwise (refused, or admitted by failing open).
    pub fn uncertain(&self) -> u64 {
        self.uncertain.load(Ordering::Relaxed)
    }

    /// The script calls' round trips so far.
    pub fn round_trips(&self) -> batch::RoundTrips {
        self.batcher.round_trips()
    }

    /// Whether Redis refuses writes now (out of memory, read-only).
    pub fn refusing_writes(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Decisions the store failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The watch marker of `account` and the notice of `subject`'s
    /// consumption, for watchers on other replicas.
    pub fn notice(&self, subject: &str, account: &str) -> (String, String) {
        (
            RedisStore::marker(account),
            format!("{}\n{}\n{subject}{account}", self.replica, subject.len()),
        )
    }

    /// Runs `counters` on Redis by `deadline` (its caller's; else within
    /// a second); when Redis fails, applies the failure
    /// policy (`now` is the local clock, for an admitted request's answer).
    /// A decision that expired before Redis was asked is an error whatever
    /// the policy: Redis did not fail, and admitting it would count nothing.
    /// Failing open while Redis refuses writes, the decision is made again
    /// as a check (reads still work): a request that fits is admitted
    /// uncounted, one past its limit is still refused.
    pub async fn run(
        &self,
        mode: Mode,
        counters: SmallVec<[Counter; 4]>,
        notice: Option<(String, String)>,
        now: Nanos,
        deadline: Option<Instant>,
    ) -> Result<(Nanos, Outcome), StoreError> {
        // Failing open answers from the counters, which the job takes.
        let open = (self.failure == Failure::Open).then(|| counters.clone());
        let deadline = deadline.unwrap_or_else(|| Instant::now() + batch::QUEUED_AT_MOST);
        let job = batch::Job {
            mode,
            counters,
            notice,
            deadline,
        };
        match self.batcher.decide(job).await {
            Ok(r) => {
                // Read first: a write per decision would bounce the cache
                // line between every worker.
                if r.1.counted
                    && self.refusing.load(Ordering::Relaxed)
                    && self.refusing.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(store = %self.store.url(), "the counter store accepts writes again");
                }
                Ok(r)
            }
            Err(e) if !e.is_transient() => Err(e),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if e.maybe_counted() {
                    self.uncertain.fetch_add(1, Ordering::Relaxed);
                }
                if e.refuses_writes() && !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, store = %self.store.url(), policy = ?self.failure, "the counter store refuses writes: decisions that count fail, and health says NOT_SERVING, until it accepts them again");
                }
                // Once every interval, whichever the policy: during an
                // outage every decision fails, and a line each would flood.
                if let Some(held) = self.failed.ready() {
                    let answer = match self.failure {
                        Failure::Open => "admitted uncounted",
                        Failure::Closed => "answered UNAVAILABLE",
                    };
                    tracing::warn!(error = %e, store = %self.store.url(), policy = ?self.failure, failed = self.failures(), also_failed = held, "counter store unavailable: the counter store failed a decision, {answer} (logged at most once every {:?})", self.failed.every());
                }
                let Some(counters) = open else {
                    return Err(e);
                };
                if e.refuses_writes() && mode != Mode::Check {
                    let check = batch::Job {
                        mode: Mode::Check,
                        counters: counters.clone(),
                        notice: None,
                        deadline,
                    };
                    // What fits is admitted, uncounted; what does not is refused.
                    if let Ok(checked) = self.batcher.decide(check).await {
                        return Ok(checked);
                    }
                }
                Ok((now, admitted(&counters, now)))
            }
        }
    }
}

/// What failing open answers: every counter admitted, nothing counted.
fn admitted(counters: &[Counter], now: Nanos) -> Outcome {
    Outcome {
        fits: true,
        counted: false,
        items: counters
            .iter()
            .map(|c| ItemStatus {
                fits: true,
                too_large: c.cost > c.amount,
                remaining: c.amount,
                // A fixed window still ends where it ends.
                free_at: match c.algorithm {
                    Algorithm::FixedWindow => (now / c.window + 1) * c.window,
                    _ => now,
                },
                wait: 0,
            })
            .collect(),
    }
}
