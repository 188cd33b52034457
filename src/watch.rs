//! The quota hub behind `WatchQuota`: a snapshot first, then the latest
//! state on every change.
//!
//! Quota is state, not an event log: each watched subject has one
//! `tokio::sync::watch` channel holding its latest update, shared
//! by all of its watchers, so a slow or stalled watcher never makes the
//! server buffer anything (it just sees the newest state when it reads) and
//! the publisher never waits on a watcher. A task per watched subject
//! publishes: consumption is coalesced to at most one update per interval
//! (the first at once, later ones an interval after the previous); window
//! resets and override expiries are timers; plan changes, overrides and
//! reloads come as events. The task and the channel go when the last watcher
//! does. Every stream ends when the server shuts down.
//!
//! The decision path takes no lock. It pays one atomic load when nobody
//! watches; when someone does, a hash lookup in an immutable snapshot of one
//! shard of the watched names (an `ArcSwap` load, lock-free), then per topic
//! found an atomic `fetch_max` of its pending cause and a `Notify`. Only
//! subscribing and a topic's removal write: they serialize on one mutex
//! (never taken by decisions), copy the one shard they change and swap it in.
//! There are at most `max_watchers` streams (`--max-watchers`); more are
//! refused with [`Error::ResourceExhausted`].
//!
//! The hub publishes the domain's [`Quota`]; transports convert it (the gRPC
//! API into `tollgate.v1.QuotaUpdate`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use crate::engine::{Algorithm, Nanos};
use crate::error::Error;
use crate::limiter::{Limiter, Quota, account_of};

/// The default coalescing interval for consumption updates.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// The default most open watch streams (`--max-watchers`).
pub const DEFAULT_MAX_WATCHERS: usize = 100_000;

/// Shards of the watched names: a subscription copies one shard, so this
/// keeps that copy small with many watched subjects.
const SHARDS: usize = 256;

/// Why an update was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The first update of a stream: the state as it is.
    Snapshot,
    /// Usage was counted.
    Consumption,
    /// A used window turned (or a bucket refilled).
    WindowReset,
    /// The account's plan changed.
    PlanChanged,
    /// An override was set, removed, or expired.
    OverrideChanged,
    /// The configuration was reloaded.
    ConfigReloaded,
}

/// One update of a watched subject: why, and its quota now.
#[derive(Debug, Clone)]
pub struct Update {
    /// Why it was sent.
    pub cause: Cause,
    /// The subject's plan and limits.
    pub quota: Quota,
}

/// Watched subjects and their publishers.
pub struct Hub {
    limiter: Arc<Limiter>,
    /// Topics by subject and by account, so a decision touches only its own
    /// watchers: read lock-free, written under `topics`.
    names: Names,
    /// Topics by key. Subscribing and removal take it; decisions never do.
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    watchers: Arc<AtomicUsize>,
    max_watchers: usize,
    interval: Duration,
    shutdown: CancellationToken,
}

/// Watched names (subjects and accounts) to their topics, in shards; each
/// shard an immutable map replaced whole on change.
struct Names {
    shards: Box<[ArcSwap<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

type Shard = HashMap<Arc<str>, Arc<[Arc<Topic>]>>;

/// One watched subject.
struct Topic {
    subject: String,
    account: String,
    tx: watch::Sender<Arc<Update>>,
    wake: Notify,
    /// The most significant cause since the last update: 0 for none, else
    /// [`Cause::rank`] + 1, so a signal is one `fetch_max`.
    pending: AtomicU8,
}

/// A `WatchQuota` stream: a snapshot, then the watch channel's changes,
/// until shutdown.
pub struct QuotaStream {
    first: Option<Arc<Update>>,
    inner: WatchStream<Arc<Update>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    _guard: WatcherGuard,
}

/// Counts a watcher for as long as its stream lives.
struct WatcherGuard(Arc<AtomicUsize>);

// === impl Hub ===

impl Hub {
    /// A hub over `limiter`, coalescing consumption to one update per
    /// `interval`, ending every stream when `shutdown` is cancelled.
    /// At most `max_watchers` streams are open at once.
    pub fn new(
        limiter: Arc<Limiter>,
        interval: Duration,
        max_watchers: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter,
            names: Names::new(),
            topics: Mutex::new(HashMap::new()),
            watchers: Arc::new(AtomicUsize::new(0)),
            max_watchers,
            interval,
            shutdown,
        })
    }

    /// Open watch streams.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// A stream of `subject`'s quota: a snapshot now, then every change.
    /// Refused with [`Error::ResourceExhausted`] when `max_watchers` streams
    /// are open.
    pub async fn subscribe(
        self: &Arc<Self>,
        subject: &str,
        account: &str,
    ) -> Result<QuotaStream, Error> {
        // Reserved before any work, released by the guard if this fails.
        let guard = self.reserve()?;
        let account = account_of(subject, account).to_owned();
        let snapshot = self.update(subject, &account, Cause::Snapshot).await?;
        self.mark(&account).await;
        let key = topic_key(subject, &account);
        let rx = {
            let mut topics = self.topics.lock();
            match topics.get(&key) {
                Some(t) => t.tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(snapshot.clone());
                    let topic = Arc::new(Topic {
                        subject: subject.to_owned(),
                        account,
                        tx,
                        wake: Notify::new(),
                        pending: AtomicU8::new(0),
                    });
                    topics.insert(key.clone(), topic.clone());
                    self.names.insert(&topic);
                    let span = tracing::debug_span!("watch", subject = %topic.subject);
                    tokio::spawn(self.clone().publish(key, topic).instrument(span));
                    rx
                }
            }
        };
        Ok(QuotaStream {
            first: Some(snapshot),
            inner: WatchStream::from_changes(rx),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            _guard: guard,
        })
    }

    /// Counts one more watcher, unless `max_watchers` are open.
    fn reserve(&self) -> Result<WatcherGuard, Error> {
        let max = self.max_watchers;
        self.watchers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "watchers: {max} WatchQuota streams are open, the most this server takes (--max-watchers)"
                ))
            })?;
        Ok(WatcherGuard(self.watchers.clone()))
    }

    /// Tells other replicas' decisions that `account` is watched here.
    async fn mark(&self, account: &str) {
        self.limiter.counters().mark_watched(account).await;
    }

    /// Consumption by `subject` of `account`: watchers of either hear of it
    /// within the coalescing interval.
    pub fn consumed(&self, subject: &str, account: &str) {
        if self.watchers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let account = account_of(subject, account);
        let by_subject = self.names.named(subject);
        let by_account = (account != subject).then(|| self.names.named(account));
        let by_account = by_account.as_ref().and_then(Option::as_ref);
        // A topic can be found under both names; signalling it twice would
        // send a second, identical update.
        let mut signalled: smallvec::SmallVec<[&Arc<Topic>; 4]> = smallvec::SmallVec::new();
        for topic in by_subject
            .iter()
            .chain(by_account)
            .flat_map(|list| list.iter())
        {
            if !signalled.iter().any(|t| Arc::ptr_eq(t, topic)) {
                topic.signal(Cause::Consumption);
                signalled.push(topic);
            }
        }
    }

    /// A change to `account` (plan, override): its watchers get an update now.
    pub fn account_changed(&self, account: &str, cause: Cause) {
        for topic in self.names.named(account).iter().flat_map(|l| l.iter()) {
            topic.signal(cause);
        }
    }

    /// Every watcher gets an update now (a reload, a usage reset).
    pub fn all_changed(&self, cause: Cause) {
        for topic in self.topics.lock().values() {
            topic.signal(cause);
        }
    }

    async fn update(
        &self,
        subject: &str,
        account: &str,
        cause: Cause,
    ) -> Result<Arc<Update>, crate::storage::StoreError> {
        let quota = self.limiter.quota(subject, account).await?;
        Ok(Arc::new(Update { cause, quota }))
    }

    /// The publisher of one topic, until its last watcher or the server goes.
    async fn publish(self: Arc<Self>, key: String, topic: Arc<Topic>) {
        // Consumption goes out at once when the subject was quiet for an
        // interval, otherwise an interval after the last update: at most one
        // update per interval, always carrying the latest state.
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut marked = tokio::time::Instant::now();
        let mark_every = self.limiter.counters().mark_every();
        loop {
            if mark_every.is_some_and(|every| marked.elapsed() > every) {
                self.mark(&topic.account).await;
                marked = tokio::time::Instant::now();
            }
            let now = self.limiter.now();
            let (next, timer_cause) = self.next_timer(&topic, now);
            // A millisecond late, so the window has turned when we look.
            let sleep = tokio::time::sleep(
                Duration::from_nanos(next.saturating_sub(now)) + Duration::from_millis(1),
            );
            let cause = tokio::select! {
                () = topic.wake.notified() => {
                    // A wake-up whose change an earlier update already carried.
                    let Some(cause) = topic.take_pending() else { continue };
                    if cause == Cause::Consumption {
                        if let Some(at) = last_sent {
                            tokio::time::sleep_until(at + self.interval).await;
                        }
                        topic.take_pending().map_or(cause, |c| c.max_by_rank(cause))
                    } else {
                        cause
                    }
                }
                () = sleep => timer_cause,
                // Keep the watch marker of a shared store alive.
                () = tokio::time::sleep(mark_every.unwrap_or_default()), if mark_every.is_some() => continue,
                () = topic.tx.closed() => {
                    // Subscribing takes this lock too, so no watcher can
                    // arrive between the check and the removal.
                    let mut topics = self.topics.lock();
                    if topic.tx.receiver_count() == 0 {
                        topics.remove(&key);
                        self.names.remove(&topic);
                        return;
                    }
                    continue;
                }
                () = self.shutdown.cancelled() => return,
            };
            match self.update(&topic.subject, &topic.account, cause).await {
                Ok(update) => {
                    topic.tx.send_replace(update);
                }
                // The store is down: the next change or timer tries again.
                Err(e) => tracing::debug!(error = %e, "quota update skipped"),
            }
            last_sent = Some(tokio::time::Instant::now());
        }
    }

    /// When the topic next changes by itself: the earliest reset of a used
    /// limit, or the earliest expiry of an override. Far away when neither.
    fn next_timer(&self, topic: &Topic, now: Nanos) -> (Nanos, Cause) {
        let current = topic.tx.borrow().clone();
        let resets = current.quota.limits.iter().filter_map(|l| {
            let (amount, window) = (l.amount(), l.window());
            if l.unlimited() || l.remaining >= amount {
                return None;
            }
            let at = match l.algorithm() {
                // A window's end gives everything back at once.
                Some(Algorithm::FixedWindow) => l.reset_at,
                // The others refill as they go: a refill is news only to a
                // subject that has nothing left, when it can go again (a
                // bucket's next unit; the others' window).
                _ if l.remaining > 0 => return None,
                Some(Algorithm::TokenBucket) => {
                    let rest = u128::from(amount - 1) * u128::from(window) / u128::from(amount);
                    l.reset_at
                        .saturating_sub(u64::try_from(rest).unwrap_or(u64::MAX))
                }
                _ => l.reset_at,
            };
            (at > now).then_some(at)
        });
        let expiries = self
            .limiter
            .resolver()
            .runtime()
            .overrides(&topic.account)
            .into_iter()
            .filter_map(|o| o.expires_at)
            .filter(|t| *t > now);
        let resets = resets.map(|t| (t, Cause::WindowReset));
        let expiries = expiries.map(|t| (t, Cause::OverrideChanged));
        resets.chain(expiries).min_by_key(|(t, _)| *t).unwrap_or((
            now + 3_600 * crate::engine::clock::SECOND,
            Cause::WindowReset,
        ))
    }
}

// === impl Names ===

impl Names {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| ArcSwap::default()).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, name: &str) -> &ArcSwap<Shard> {
        let i = self.hasher.hash_one(name) as usize % SHARDS;
        &self.shards[i]
    }

    /// Topics whose subject or account is `name`: a lock-free load.
    fn named(&self, name: &str) -> Option<Arc<[Arc<Topic>]>> {
        self.shard(name).load().get(name).cloned()
    }

    /// Files `topic` under its subject and account. Writers serialize on
    /// the hub's `topics` lock, so a load-copy-store loses no change.
    fn insert(&self, topic: &Arc<Topic>) {
        self.update(&topic.subject, |list| list.push(topic.clone()));
        if topic.account != topic.subject {
            self.update(&topic.account, |list| list.push(topic.clone()));
        }
    }

    /// Takes `topic` out from under its names; as [`Names::insert`].
    fn remove(&self, topic: &Arc<Topic>) {
        for name in [&topic.subject, &topic.account] {
            self.update(name, |list| list.retain(|t| !Arc::ptr_eq(t, topic)));
        }
    }

    /// Replaces `name`'s shard with a copy where `change` has edited its list.
    fn update(&self, name: &str, change: impl FnOnce(&mut Vec<Arc<Topic>>)) {
        let shard = self.shard(name);
        let mut copy = Shard::clone(&shard.load());
        let mut list: Vec<Arc<Topic>> = copy.get(name).map(|l| l.to_vec()).unwrap_or_default();
        change(&mut list);
        if list.is_empty() {
            copy.remove(name);
        } else {
            copy.insert(name.into(), list.into());
        }
        shard.store(Arc::new(copy));
    }
}

// === impl Topic ===

impl Topic {
    fn signal(&self, cause: Cause) {
        self.pending.fetch_max(cause.rank() + 1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// The pending cause, now cleared.
    fn take_pending(&self) -> Option<Cause> {
        match self.pending.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(Cause::of_rank(n - 1)),
        }
    }
}

// === impl Cause ===

impl Cause {
    /// The more significant of two causes, for an update that covers both.
    fn max_by_rank(self, other: Cause) -> Cause {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// Significance: a larger rank covers a smaller one.
    fn rank(self) -> u8 {
        match self {
            Cause::Snapshot => 0,
            Cause::Consumption => 1,
            Cause::WindowReset => 2,
            Cause::OverrideChanged => 3,
            Cause::PlanChanged => 4,
            Cause::ConfigReloaded => 5,
        }
    }

    fn of_rank(rank: u8) -> Cause {
        match rank {
            0 => Cause::Snapshot,
            1 => Cause::Consumption,
            2 => Cause::WindowReset,
            3 => Cause::OverrideChanged,
            4 => Cause::PlanChanged,
            _ => Cause::ConfigReloaded,
        }
    }
}

// === impl QuotaStream ===

impl Stream for QuotaStream {
    type Item = Arc<Update>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn topic_key(subject: &str, account: &str) -> String {
    format!("{subject}\u{0}{account}")
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("watchers", &self.watchers())
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for QuotaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaStream").finish_non_exhaustive()
    }
}
