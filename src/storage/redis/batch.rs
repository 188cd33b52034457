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

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// One decision for the script.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) mode: Mode,
    pub(super) counters: SmallVec<[Counter; 4]>,
    /// (watch marker key, message) for watchers on other replicas.
    pub(super) notice: Option<(String, String)>,
}

type Reply = Result<(Nanos, Outcome), Arc<StoreError>>;

/// The queue of decisions and the task that sends them.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<(Job, oneshot::Sender<Reply>)>,
}

// === impl Batcher ===

impl Batcher {
    /// A batcher sending through `store`; its task ends when the last
    /// handle goes.
    pub(super) fn new(store: RedisStore) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send(store, rx));
        Self { tx }
    }

    /// Queues `job` and waits for its outcome (the caller bounds the wait).
    pub(super) async fn decide(&self, job: Job) -> Result<(Nanos, Outcome), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .map_err(|_| StoreError::Url("the redis sender stopped".into()))?;
        match answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(StoreError::Url("the redis sender stopped".into())),
        }
    }
}

/// Takes what is queued whenever a call slot is free, one call per slot.
async fn send(store: RedisStore, mut rx: mpsc::UnboundedReceiver<(Job, oneshot::Sender<Reply>)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut queued = vec![first];
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => queued.push(next),
                Err(_) => break,
            }
        }
        let permit = Arc::new(permit);
        for group in by_slot(queued, store.is_cluster()) {
            let (store, permit) = (store.clone(), permit.clone());
            tokio::spawn(async move {
                let (jobs, replies): (Vec<Job>, Vec<_>) = group.into_iter().unzip();
                match store.decide_all(&jobs).await {
                    Ok((now, outcomes)) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok((now, outcome)));
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
