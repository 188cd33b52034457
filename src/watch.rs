//! The quota hub behind `WatchQuota`: a snapshot first, then the latest
//! state on every change.
//!
//! Quota is state, not an event log: each watched subject has one
//! `tokio::sync::watch` channel holding its latest [`pb::QuotaUpdate`], shared
//! by all of its watchers, so a slow or stalled watcher never makes the
//! server buffer anything (it just sees the newest state when it reads) and
//! the publisher never waits on a watcher. A task per watched subject
//! publishes: consumption is coalesced to at most one update per interval
//! (the first at once, later ones an interval after the previous); window
//! resets and override expiries are timers; plan changes, overrides and
//! reloads come as events. The task and the channel go when the last watcher
//! does. Every stream ends when the server shuts down.
//!
//! The decision path pays one atomic load when nobody watches, and a map
//! lookup under a short lock when someone does.
//!
//! The hub publishes the domain's [`Quota`]; transports convert it (the gRPC
//! API into `tollgate.v1.QuotaUpdate`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use crate::engine::Nanos;
use crate::limiter::{Limiter, Quota, account_of};
use crate::storage::StoreError;

/// The default coalescing interval for consumption updates.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

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
    topics: Mutex<Topics>,
    watchers: Arc<AtomicUsize>,
    interval: Duration,
    shutdown: CancellationToken,
}

/// Watched topics, found by key, by subject and by account, so a decision
/// touches only its own watchers.
#[derive(Default)]
struct Topics {
    by_key: HashMap<String, Arc<Topic>>,
    by_name: HashMap<String, Vec<Arc<Topic>>>,
}

/// One watched subject.
struct Topic {
    subject: String,
    account: String,
    tx: watch::Sender<Arc<Update>>,
    wake: Notify,
    /// The most significant cause since the last update.
    pending: Mutex<Option<Cause>>,
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
    pub fn new(
        limiter: Arc<Limiter>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            limiter,
            topics: Mutex::new(Topics::default()),
            watchers: Arc::new(AtomicUsize::new(0)),
            interval,
            shutdown,
        })
    }

    /// Open watch streams.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// A stream of `subject`'s quota: a snapshot now, then every change.
    pub async fn subscribe(
        self: &Arc<Self>,
        subject: &str,
        account: &str,
    ) -> Result<QuotaStream, StoreError> {
        let account = account_of(subject, account).to_owned();
        let snapshot = self.update(subject, &account, Cause::Snapshot).await?;
        self.mark(&account).await;
        let key = topic_key(subject, &account);
        let rx = {
            let mut topics = self.topics.lock();
            match topics.by_key.get(&key) {
                Some(t) => t.tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(snapshot.clone());
                    let topic = Arc::new(Topic {
                        subject: subject.to_owned(),
                        account,
                        tx,
                        wake: Notify::new(),
                        pending: Mutex::new(None),
                    });
                    topics.insert(key.clone(), topic.clone());
                    let span = tracing::debug_span!("watch", subject = %topic.subject);
                    tokio::spawn(self.clone().publish(key, topic).instrument(span));
                    rx
                }
            }
        };
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Ok(QuotaStream {
            first: Some(snapshot),
            inner: WatchStream::from_changes(rx),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            _guard: WatcherGuard(self.watchers.clone()),
        })
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
        let topics = self.topics.lock();
        // A topic can be found under both names; signalling it twice would
        // send a second, identical update.
        let mut signalled: smallvec::SmallVec<[&Arc<Topic>; 4]> = smallvec::SmallVec::new();
        for topic in topics.named(subject).chain(topics.named(account)) {
            if !signalled.iter().any(|t| Arc::ptr_eq(t, topic)) {
                topic.signal(Cause::Consumption);
                signalled.push(topic);
            }
        }
    }

    /// A change to `account` (plan, override): its watchers get an update now.
    pub fn account_changed(&self, account: &str, cause: Cause) {
        let topics = self.topics.lock();
        for topic in topics.named(account) {
            topic.signal(cause);
        }
    }

    /// Every watcher gets an update now (a reload, a usage reset).
    pub fn all_changed(&self, cause: Cause) {
        for topic in self.topics.lock().by_key.values() {
            topic.signal(cause);
        }
    }

    async fn update(
        &self,
        subject: &str,
        account: &str,
        cause: Cause,
    ) -> Result<Arc<Update>, StoreError> {
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
                    let Some(cause) = topic.pending.lock().take() else { continue };
                    if cause == Cause::Consumption {
                        if let Some(at) = last_sent {
                            tokio::time::sleep_until(at + self.interval).await;
                        }
                        topic.pending.lock().take().map_or(cause, |c| c.max_by_rank(cause))
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
                        topics.remove(&key, &topic);
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
            let used = !l.unlimited() && l.remaining < l.amount();
            (used && l.reset_at > now).then_some(l.reset_at)
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

// === impl Topics ===

impl Topics {
    fn insert(&mut self, key: String, topic: Arc<Topic>) {
        self.by_name
            .entry(topic.subject.clone())
            .or_default()
            .push(topic.clone());
        if topic.account != topic.subject {
            self.by_name
                .entry(topic.account.clone())
                .or_default()
                .push(topic.clone());
        }
        self.by_key.insert(key, topic);
    }

    fn remove(&mut self, key: &str, topic: &Arc<Topic>) {
        self.by_key.remove(key);
        for name in [&topic.subject, &topic.account] {
            if let Some(list) = self.by_name.get_mut(name) {
                list.retain(|t| !Arc::ptr_eq(t, topic));
                if list.is_empty() {
                    self.by_name.remove(name);
                }
            }
        }
    }

    /// Topics whose subject or account is `name`.
    fn named(&self, name: &str) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_name.get(name).into_iter().flatten()
    }
}

// === impl Topic ===

impl Topic {
    fn signal(&self, cause: Cause) {
        let mut pending = self.pending.lock();
        *pending = Some(pending.map_or(cause, |p| p.max_by_rank(cause)));
        drop(pending);
        self.wake.notify_one();
    }
}

// === impl Cause ===

impl Cause {
    /// The more significant of two causes, for an update that covers both.
    fn max_by_rank(self, other: Cause) -> Cause {
        fn rank(c: Cause) -> u8 {
            match c {
                Cause::Snapshot => 0,
                Cause::Consumption => 1,
                Cause::WindowReset => 2,
                Cause::OverrideChanged => 3,
                Cause::PlanChanged => 4,
                Cause::ConfigReloaded => 5,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
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
