//! Coalescing: the decisions waiting at the same moment go to Redis in one
//! script call per Cluster slot, so the fixed cost of a call (parsing,
//! script lookup, the reply) is paid once for all of them.
//!
//! A decision is queued and answered through a oneshot; a task takes what is
//! queued whenever one of [`IN_FLIGHT`] call slots is free. At low load every
//! call carries one decision and nothing waits; under load the queue fills
//! while calls are in flight and the next call carries it all. Each decision
//! is still atomic and exact: the script runs them one after another, all or
//! nothing each, on one clock.
//!
//! Deadlines: every decision has one (its caller's `grpc-timeout`, else
//! [`QUEUED_AT_MOST`] after it was queued). One that passes while queued, or
//! whose caller went away, is answered [`StoreError::Expired`] and never
//! sent. One sent carries its deadline to the script, in Redis's clock (the
//! smaller of its own and the call's round-trip timeout), and the script
//! counts nothing past it: a decision its caller was already answered for
//! (refused, or admitted by a failure policy) never counts later. Redis's
//! clock is read off every reply, against the monotonic clock here, so the
//! two hosts' clocks need not agree.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::millis::Millis;
use super::{Counter, RedisStore, StoreError};
use crate::engine::{Mode, Nanos, Outcome};

/// Script calls in flight at once: two keep the connection busy while the
/// next call fills; more would split the queue into smaller calls, and a
/// call's fixed cost in Redis (and a response flush per connection here) is
/// paid per call. Measured on one subject: 4 in flight, 14 decisions a call,
/// 7.3 µs of Redis CPU a decision; 2 in flight, 26 a call, 5.4 µs.
const IN_FLIGHT: usize = 2;
/// The most decisions one call carries.
const MAX_BATCH: usize = 64;

/// The longest a decision without a deadline of its own waits for its turn
/// and its round trip: past it, it is answered [`StoreError::Expired`].
pub(super) const QUEUED_AT_MOST: Duration = Duration::from_secs(1);

/// One decision for the script.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) mode: Mode,
    pub(super) counters: SmallVec<[Counter; 4]>,
    /// (watch marker key, message) for watchers on other replicas.
    pub(super) notice: Option<(String, String)>,
    /// When its caller stops waiting.
    pub(super) deadline: Instant,
}

/// Redis's clock against this host's monotonic one: Redis's milliseconds at
/// an instant here, from the last reply.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    redis: Millis,
}

type Reply = Result<(Nanos, Outcome), Arc<StoreError>>;

/// The queue of decisions and the task that sends them.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<(Job, oneshot::Sender<Reply>)>,
    round_trips: Arc<Mutex<RoundTrips>>,
}

/// Script calls' round trips (answered ones): a count per bucket, bucket
/// `i` holding those of at most 2^i µs (the last: any longer), their sum
/// in seconds, their count. Locked once per call, not per decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundTrips {
    /// Counts per bucket, not cumulative.
    pub buckets: [u64; ROUND_TRIP_BUCKETS],
    /// Sum, in seconds.
    pub sum: f64,
    /// How many.
    pub count: u64,
}

/// Buckets of [`RoundTrips`]: 1 µs doubling to ~1 s, then the rest.
pub const ROUND_TRIP_BUCKETS: usize = 22;

// === impl Batcher ===

impl Batcher {
    /// A batcher sending through `store`; its task ends when the last
    /// handle goes.
    pub(super) fn new(store: RedisStore) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let round_trips = Arc::default();
        tokio::spawn(send(store, rx, Arc::clone(&round_trips)));
        Self { tx, round_trips }
    }

    /// The round trips so far.
    pub(super) fn round_trips(&self) -> RoundTrips {
        *self.round_trips.lock()
    }

    /// Queues `job` and waits for its outcome (the caller bounds the wait).
    pub(super) async fn decide(&self, job: Job) -> Result<(Nanos, Outcome), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .map_err(|_| StoreError::Stopped)?;
        match answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => StoreError::Batch(shared),
            }),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// Takes what is queued whenever a call slot is free, one call per slot;
/// what expired meanwhile is answered without being sent.
async fn send(
    store: RedisStore,
    mut rx: mpsc::UnboundedReceiver<(Job, oneshot::Sender<Reply>)>,
    round_trips: Arc<Mutex<RoundTrips>>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let anchor: Arc<Mutex<Option<Anchor>>> = Arc::default();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut queued = Vec::with_capacity(MAX_BATCH);
        let now = Instant::now();
        let mut next = Some(first);
        while let Some((job, reply)) = next.take() {
            if reply.is_closed() {
                // Its caller went away (a cancelled call): nothing to answer.
            } else if job.deadline <= now {
                let _ = reply.send(Err(Arc::new(StoreError::Expired)));
            } else {
                queued.push((job, reply));
            }
            if queued.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if queued.is_empty() {
            continue;
        }
        let permit = Arc::new(permit);
        for group in by_slot(queued, store.is_cluster()) {
            let (store, permit, anchor, round_trips) = (
                store.clone(),
                permit.clone(),
                anchor.clone(),
                round_trips.clone(),
            );
            tokio::spawn(async move {
                let (jobs, replies): (Vec<Job>, Vec<_>) = group.into_iter().unzip();
                let sent = Instant::now();
                let known = *anchor.lock();
                let deadlines: Vec<Millis> = jobs
                    .iter()
                    .map(|j| redis_ms(known, j.deadline.min(sent + store.timeout)))
                    .collect();
                match store.decide_all(&jobs, &deadlines).await {
                    Ok((now, outcomes)) => {
                        // Redis read its clock somewhere in the round trip:
                        // its middle is the best guess.
                        let back = Instant::now();
                        *anchor.lock() = Some(Anchor {
                            at: sent + (back - sent) / 2,
                            redis: Millis::floor(now),
                        });
                        round_trips.lock().observe(back - sent);
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(outcome.map(|o| (now, o)).map_err(Arc::new));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

// === impl RoundTrips ===

impl RoundTrips {
    fn observe(&mut self, took: Duration) {
        let micros = took.as_micros();
        let i = (0..ROUND_TRIP_BUCKETS - 1)
            .find(|&i| micros <= 1 << i)
            .unwrap_or(ROUND_TRIP_BUCKETS - 1);
        self.buckets[i] += 1;
        self.sum += took.as_secs_f64();
        self.count += 1;
    }
}

/// `deadline` in Redis's milliseconds, by `anchor`; 0 (no deadline) before
/// the first reply has told Redis's clock.
fn redis_ms(anchor: Option<Anchor>, deadline: Instant) -> Millis {
    anchor.map_or(Millis::default(), |a| {
        let ahead = deadline.saturating_duration_since(a.at).as_millis();
        let behind = a.at.saturating_duration_since(deadline).as_millis();
        Millis::new(
            (u128::from(a.redis.get()) + ahead)
                .saturating_sub(behind)
                .try_into()
                .unwrap_or(u64::MAX),
        )
    })
}

/// Decisions grouped by the Cluster slot of their keys (one group when not
/// a Cluster), in queue order within each group.
fn by_slot<T>(queued: Vec<(Job, T)>, cluster: bool) -> Vec<Vec<(Job, T)>> {
    if !cluster {
        return vec![queued];
    }
    let mut groups: Vec<Vec<(Job, T)>> = Vec::new();
    let mut index: HashMap<u16, usize> = HashMap::new();
    for (job, reply) in queued {
        let slot = job.counters.first().map_or(0, |c| slot(&c.key));
        let i = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push((job, reply));
    }
    groups
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, mod 16384.
fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        })
        .unwrap_or(bytes);
    slot_of_bytes(tagged)
}

fn slot_of_bytes(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag_as_redis_cluster_does() {
        // Values from the Redis Cluster specification's examples.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag hashes the whole key.
        assert_eq!(slot("foo{}{bar}"), slot_of_bytes(b"foo{}{bar}"));
        assert_eq!(slot("tg:{acct}:k|x"), slot("acct"));
    }
}
