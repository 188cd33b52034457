//! The Redis store as a limiter counts through it: decisions coalesced
//! ([`super::batch`]), bounded by the store timeout, and the failure policy
//! when Redis does not answer (admit or refuse; counted, logged sparingly).

use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use super::{Counter, RedisStore, StoreError, batch};
use crate::engine::{Algorithm, ItemStatus, Mode, Nanos, Outcome};

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
    last_logged: AtomicU64,
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
            last_logged: AtomicU64::new(0),
        }
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

    /// Runs `counters` on Redis; when it fails, applies the failure policy
    /// (`now` is the local clock, for an admitted request's answer).
    pub async fn run(
        &self,
        mode: Mode,
        counters: SmallVec<[Counter; 4]>,
        notice: Option<(String, String)>,
        now: Nanos,
    ) -> Result<(Nanos, Outcome), StoreError> {
        // Failing open answers from the counters, which the job takes.
        let admitted = (self.failure == Failure::Open).then(|| admitted(&counters, now));
        let job = batch::Job {
            mode,
            counters,
            notice,
        };
        let decided = match tokio::time::timeout(self.store.timeout, self.batcher.decide(job)).await
        {
            Ok(decided) => decided,
            Err(_) => Err(StoreError::Timeout(self.store.timeout)),
        };
        match decided {
            Ok(r) => Ok(r),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let second = now / crate::engine::clock::SECOND;
                // Failing closed, the error reaches the caller and
                // `crate::status` warns of it, as rarely as this would.
                if self.failure == Failure::Open
                    && self.last_logged.swap(second / 10, Ordering::Relaxed) != second / 10
                {
                    tracing::warn!(error = %e, store = %self.store.url(), policy = ?self.failure, failed = self.failures(), "the counter store failed a decision");
                }
                admitted.map(|outcome| (now, outcome)).ok_or(e)
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
