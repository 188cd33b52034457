//! Reservations: a Consume that counts an estimate now and learns the
//! actual cost later (an LLM call's tokens), settled, released or expired.
//!
//! A reservation remembers, for every counter its estimate was counted
//! against, what a refund needs ([`Charged`]): the units, when, and when
//! the counter was next free right after. Settling replaces the estimate
//! with the actual cost: a smaller actual gives the difference back
//! ([`crate::engine::Algorithm::refund`]: what is still counted in a live
//! window, what a bucket still owes), a larger one counts the excess as a
//! Record. A settled reservation is kept until its expiry so a retry with
//! the same amounts gets the same answer; one never settled is settled at
//! its estimate when it expires (nothing given back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::engine::algorithm::{Charged, calendar};
use crate::engine::{Algorithm, Mode, Nanos, Rate};
use crate::error::Error;

use super::route::cost_of;
use crate::persist::Entry;
use crate::plans::CONCURRENT;
use crate::storage::redis::reservations as redis_store;

/// The most reservations held at once (open, or settled and kept for
/// retries until they expire): about 300 MB of them.
pub const MAX_HELD: usize = 1_000_000;

/// How long a settled reservation still answers a retried settle (the
/// same answer) before it is forgotten (`NOT_FOUND`), at most until it would
/// have expired: a retry follows a timeout within seconds, and a gateway
/// settling thousands a second would otherwise hold each for its whole TTL.
pub const SETTLED_KEPT: Nanos = 30 * crate::engine::clock::SECOND;

/// The open (and recently settled) reservations of one limiter; with
/// Redis, they are kept there, and this remembers only the accounts it
/// reserved for (to expire theirs) and the expiries it met on the way.
#[derive(Debug)]
pub struct Reservations {
    held: Mutex<HashMap<Arc<str>, Reservation>>,
    /// The most held at once.
    cap: usize,
    /// With Redis: accounts this replica reserved for, by latest expiry.
    tags: Mutex<HashMap<String, Nanos>>,
    /// With Redis: reservations expired by a reserve, until reported.
    expired: Mutex<Vec<Settlement>>,
    /// Held for reading while a reservation opens or settles (counting
    /// included), for writing while a journal takes its cut.
    still: tokio::sync::RwLock<()>,
    /// Whether opens and settles are queued for the journal.
    journaled: AtomicBool,
    /// Opened since the journal last took them.
    opened: Mutex<Vec<Arc<str>>>,
    /// Settled (with what) or expired (`None`) since it last took them.
    closed: Mutex<Vec<(Arc<str>, Option<Amounts>)>>,
    /// While restoring: settles read before their reservation.
    early: Mutex<HashMap<Arc<str>, Option<Amounts>>>,
}

/// Amounts per unit.
type Amounts = BTreeMap<String, u64>;

/// A reservation as the journal writes it (counter identities by name).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    subject: String,
    account: String,
    #[serde(default)]
    class: Option<String>,
    estimate: HashMap<String, u64>,
    held: Vec<SavedHeld>,
    expires_at: Nanos,
    settled: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedHeld {
    scope: String,
    identity: String,
    algorithm: Algorithm,
    amount: u64,
    window: Nanos,
    unit: String,
    units: u64,
    at: Nanos,
    free_at: Nanos,
    /// A calendar window's: its unit, zone and anchor day.
    #[serde(default)]
    calendar: Option<(String, String, u8)>,
}

impl Default for Reservations {
    fn default() -> Self {
        Self::with_cap(MAX_HELD)
    }
}

/// One reservation.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Who made it.
    pub subject: String,
    /// Whose plan it counted under (the subject when it names none).
    pub account: String,
    /// The class of the request it was made for, if any.
    pub class: Option<Arc<str>>,
    /// What was reserved, per unit, as the request named it.
    pub estimate: HashMap<String, u64>,
    /// Every counter the estimate was counted against.
    pub held: Vec<Held>,
    /// When it is settled at its estimate unless settled first.
    pub expires_at: Nanos,
    /// What it was settled for, once it was.
    pub settled: Option<BTreeMap<String, u64>>,
}

impl Reservation {
    /// Its estimate for every unit it named or counted.
    fn by_unit(&self) -> BTreeMap<String, u64> {
        by_unit(&self.estimate, self.held.iter().map(|h| &*h.unit))
    }
}

/// A reservation's estimate for every unit its request named (`cost`) or
/// its limits count (`units`): a request counts one `requests` unless it
/// says otherwise. Slots in flight are held, not billed.
pub fn by_unit<'u>(
    cost: &HashMap<String, u64>,
    units: impl Iterator<Item = &'u str>,
) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = cost.iter().map(|(u, &n)| (u.clone(), n)).collect();
    out.remove(CONCURRENT);
    for unit in units.filter(|u| *u != CONCURRENT) {
        out.entry(unit.to_owned())
            .or_insert_with(|| cost_of(cost, unit, Mode::Consume));
    }
    out
}

/// One counter a reservation counted against.
#[derive(Debug, Clone)]
pub struct Held {
    /// The counter's scope (the subject or the account).
    pub scope: String,
    /// Its identity.
    pub slot: u32,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Its size.
    pub rate: Rate,
    /// The unit it counts.
    pub unit: Arc<str>,
    /// What the estimate counted there.
    pub counted: Charged,
}

/// What settling does to one held counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Gives back units counted earlier.
    Refund(Charged),
    /// Counts units past the estimate, as a Record.
    Record(u64),
}

/// A settled reservation, as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Its id.
    pub id: Arc<str>,
    /// Who made it.
    pub subject: String,
    /// Whose plan it counted under.
    pub account: String,
    /// The class of the request it was made for, if any.
    pub class: Option<Arc<str>>,
    /// What was reserved, per unit.
    pub estimate: BTreeMap<String, u64>,
    /// What was billed, per unit.
    pub actual: BTreeMap<String, u64>,
}

impl Settlement {
    /// What it billed past its estimate, per unit (none past: empty).
    pub fn excess(&self) -> HashMap<String, u64> {
        self.actual
            .iter()
            .filter(|(unit, _)| *unit != CONCURRENT)
            .filter_map(|(unit, &n)| {
                let over = n.saturating_sub(self.estimate.get(unit).copied().unwrap_or(0));
                (over > 0).then(|| (unit.clone(), over))
            })
            .collect()
    }
}

impl From<redis_store::Closed> for Settlement {
    fn from(c: redis_store::Closed) -> Self {
        Self {
            id: c.id.into(),
            subject: c.subject,
            account: c.account,
            class: c.class.map(Into::into),
            estimate: c.estimate,
            actual: c.actual,
        }
    }
}

// === impl Reservations ===

impl Reservations {
    /// Room for `cap` reservations at most.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            held: Mutex::default(),
            cap,
            tags: Mutex::default(),
            expired: Mutex::default(),
            still: tokio::sync::RwLock::new(()),
            journaled: AtomicBool::new(false),
            opened: Mutex::default(),
            closed: Mutex::default(),
            early: Mutex::default(),
        }
    }

    /// Whether one more may be held; refused with `RESOURCE_EXHAUSTED`
    /// when the cap ([`MAX_HELD`]) is.
    pub fn room(&self) -> Result<(), Error> {
        if self.len() >= self.cap {
            return Err(Error::ResourceExhausted(format!(
                "{} reservations are held already: settle or release some, or wait for them to expire",
                self.cap
            )));
        }
        Ok(())
    }

    /// Holds `reservation` under a new id, returned.
    pub fn open(&self, reservation: Reservation) -> Arc<str> {
        let id: Arc<str> = format!("rsv_{:032x}", fastrand::u128(..)).into();
        self.held.lock().insert(id.clone(), reservation);
        if self.journaled.load(Ordering::Relaxed) {
            self.opened.lock().push(id.clone());
        }
        id
    }

    /// Queues what opens and settles from now on for the journal (which
    /// must then take them every interval).
    pub fn journal(&self) {
        self.journaled.store(true, Ordering::Relaxed);
    }

    /// Held while a reservation opens or settles, counters included, so a
    /// journal's cut sees both or neither.
    pub async fn moving(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.still.read().await
    }

    fn closing(&self, id: &Arc<str>, settled: Option<&BTreeMap<String, u64>>) {
        if self.journaled.load(Ordering::Relaxed) {
            self.closed.lock().push((id.clone(), settled.cloned()));
        }
    }

    /// Settles `id` at `now` for `actual` (units it does not name at their
    /// estimate; all zero: released). Returns the settlement and the
    /// changes to make to the counters, none when it was settled before for
    /// the same amounts.
    pub fn settle(
        &self,
        id: &str,
        actual: Option<&HashMap<String, u64>>,
        now: Nanos,
    ) -> Result<(Settlement, Vec<(Held, Change)>), Error> {
        let gone = || {
            Error::not_found(
                "id",
                format!("no reservation {id}: it is unknown, or expired"),
            )
        };
        let mut held = self.held.lock();
        let (key, r) = match held.get_key_value(id) {
            Some((key, r)) if r.expires_at > now => (key.clone(), r),
            // Expired, not yet swept: `expire` settles it (and gives back
            // its slots in flight).
            Some((_, r)) if r.settled.is_none() => return Err(gone()),
            Some(_) => {
                held.remove(id);
                return Err(gone());
            }
            None => return Err(gone()),
        };
        // Every unit the estimate named or counted; then each at its actual
        // (released: all 0; settled: as named, else at its estimate).
        let estimate = r.by_unit();
        let mut billed = estimate.clone();
        match actual {
            None => billed.values_mut().for_each(|n| *n = 0),
            Some(actual) => billed.extend(actual.iter().map(|(u, &n)| (u.clone(), n))),
        }
        let settlement = Settlement {
            id: key.clone(),
            subject: r.subject.clone(),
            account: r.account.clone(),
            class: r.class.clone(),
            estimate,
            actual: billed,
        };
        match &r.settled {
            Some(before) if *before == settlement.actual => return Ok((settlement, Vec::new())),
            Some(before) => {
                return Err(Error::invalid(
                    "id",
                    format!("{id} was settled already, for {before:?}"),
                ));
            }
            None => {}
        }
        let changes = r
            .held
            .iter()
            .filter_map(|h| {
                // A slot in flight is given back whatever the actual.
                let actual = match &*h.unit {
                    CONCURRENT => 0,
                    unit => settlement.actual.get(unit).copied().unwrap_or(0),
                };
                let counted = h.counted.units;
                let change = match actual.cmp(&counted) {
                    std::cmp::Ordering::Less => Change::Refund(Charged {
                        units: counted - actual,
                        ..h.counted
                    }),
                    std::cmp::Ordering::Greater => Change::Record(actual - counted),
                    std::cmp::Ordering::Equal => return None,
                };
                Some((h.clone(), change))
            })
            .collect();
        if let Some(r) = held.get_mut(&key) {
            // Kept only to answer retries, briefly, and without its counters.
            r.settled = Some(settlement.actual.clone());
            // Its estimate per unit as settled, so a retry's reads the same
            // without the counters.
            r.estimate = settlement
                .estimate
                .iter()
                .map(|(u, &n)| (u.clone(), n))
                .collect();
            r.held = Vec::new();
            r.expires_at = r.expires_at.min(now.saturating_add(SETTLED_KEPT));
        }
        // Queued before the counters change: a journal's cut that holds
        // the refund holds the settle.
        self.closing(&key, Some(&settlement.actual));
        Ok((settlement, changes))
    }

    /// Forgets what expired by `now`: those never settled are settled at
    /// their estimate, returned with the changes that gives (their slots in
    /// flight back; nothing else); the settled ones no longer answer
    /// retries.
    pub fn expire(&self, now: Nanos) -> Vec<(Settlement, Vec<(Held, Change)>)> {
        let mut held = self.held.lock();
        let mut expired = Vec::new();
        held.retain(|id, r| {
            if r.expires_at > now {
                return true;
            }
            if r.settled.is_none() {
                self.closing(id, None);
                let estimate = r.by_unit();
                let slots = r
                    .held
                    .iter()
                    .filter(|h| &*h.unit == CONCURRENT && h.counted.units > 0)
                    .map(|h| (h.clone(), Change::Refund(h.counted)))
                    .collect();
                expired.push((
                    Settlement {
                        id: id.clone(),
                        subject: std::mem::take(&mut r.subject),
                        account: std::mem::take(&mut r.account),
                        class: r.class.take(),
                        actual: estimate.clone(),
                        estimate,
                    },
                    slots,
                ));
            }
            false
        });
        expired
    }

    /// With Redis: remembers that `tag` has a reservation until `expires_at`.
    pub fn reserved_in(&self, tag: &str, expires_at: Nanos) {
        let mut tags = self.tags.lock();
        let at = tags.entry(tag.to_owned()).or_default();
        *at = (*at).max(expires_at);
    }

    /// With Redis: reservations a reserve expired on the way, reported at
    /// the next [`Reservations::expire_in`].
    pub fn expired_elsewhere(&self, closed: Vec<redis_store::Closed>) {
        if !closed.is_empty() {
            self.expired
                .lock()
                .extend(closed.into_iter().map(Settlement::from));
        }
    }

    /// Settles `id` in Redis for `actual` (`None`: released); whether that
    /// changed anything now (not a retry).
    pub async fn settled_in(
        &self,
        store: &crate::storage::redis::RedisStore,
        id: &str,
        actual: Option<&HashMap<String, u64>>,
    ) -> Result<(Settlement, bool), Error> {
        let actual: Option<BTreeMap<String, u64>> =
            actual.map(|a| a.iter().map(|(u, &n)| (u.clone(), n)).collect());
        match store.settle(id, actual.as_ref()).await? {
            redis_store::Settled::Done(closed) => Ok((closed.into(), true)),
            redis_store::Settled::Again(closed) => Ok((closed.into(), false)),
            redis_store::Settled::Gone => Err(Error::not_found(
                "id",
                format!("no reservation {id}: it is unknown, or expired"),
            )),
            redis_store::Settled::Conflict(before) => Err(Error::invalid(
                "id",
                format!("{id} was settled already, for {before:?}"),
            )),
        }
    }

    /// With Redis: expires what is due among the accounts this replica
    /// reserved for, and (outside a Cluster) every account's; returns those
    /// settled at their estimate, with those a reserve expired since.
    pub async fn expire_in(
        &self,
        store: &crate::storage::redis::RedisStore,
        now: Nanos,
    ) -> Vec<Settlement> {
        let mut tags: Vec<String> = self.tags.lock().keys().cloned().collect();
        match store.due_reservations().await {
            Ok(due) => tags.extend(due),
            Err(e) => tracing::debug!(error = %e, "accounts with reservations due not read"),
        }
        tags.sort();
        tags.dedup();
        let mut out = std::mem::take(&mut *self.expired.lock());
        for tag in tags {
            match store.expire_reservations(&tag).await {
                Ok(closed) => out.extend(closed.into_iter().map(Settlement::from)),
                Err(e) => {
                    tracing::debug!(error = %e, "reservations not expired; tried again later");
                    continue;
                }
            }
            // Forgotten here once its last reservation from here is past.
            let mut mine = self.tags.lock();
            if let Some(&last) = mine.get(&tag)
                && last <= now
            {
                mine.remove(&tag);
            }
        }
        out
    }

    /// How many are held, open or settled.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl Ledger for Reservations ===

impl Reservations {
    fn saved(&self, r: &Reservation, slots: &crate::plans::SlotRegistry) -> Vec<u8> {
        let saved = Saved {
            subject: r.subject.clone(),
            account: r.account.clone(),
            class: r.class.as_deref().map(str::to_owned),
            estimate: r.estimate.clone(),
            held: r
                .held
                .iter()
                .map(|h| SavedHeld {
                    scope: h.scope.clone(),
                    identity: slots.identity(h.slot).unwrap_or_default().to_string(),
                    algorithm: h.algorithm,
                    amount: h.rate.amount(),
                    window: h.rate.window(),
                    unit: h.unit.to_string(),
                    units: h.counted.units,
                    at: h.counted.at,
                    free_at: h.counted.free_at,
                    calendar: h.rate.periods().map(|c| {
                        (
                            c.unit.as_str().to_owned(),
                            calendar::zone_name(c.zone),
                            c.anchor,
                        )
                    }),
                })
                .collect(),
            expires_at: r.expires_at,
            settled: r.settled.clone(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }
}

impl crate::persist::Ledger for Reservations {
    fn still(
        &self,
        f: &mut dyn FnMut() -> Result<(), crate::persist::PersistError>,
    ) -> Result<(), crate::persist::PersistError> {
        let _still = self.still.blocking_write();
        f()
    }

    fn held(&self, slots: &crate::plans::SlotRegistry, emit: &mut dyn FnMut(Entry<'_>)) {
        self.opened.lock().clear();
        self.closed.lock().clear();
        for (id, r) in self.held.lock().iter() {
            let body = self.saved(r, slots);
            emit(Entry {
                opened: true,
                id,
                body: &body,
            });
        }
    }

    fn take_opened(&self, slots: &crate::plans::SlotRegistry, emit: &mut dyn FnMut(Entry<'_>)) {
        let ids = std::mem::take(&mut *self.opened.lock());
        let held = self.held.lock();
        for id in ids {
            // One expired and forgotten meanwhile has its expiry queued. One
            // settled already is written settled (without its counters), to
            // answer a retry after a restart.
            if let Some(r) = held.get(&id) {
                let body = self.saved(r, slots);
                emit(Entry {
                    opened: true,
                    id: &id,
                    body: &body,
                });
            }
        }
    }

    fn take_closed(&self, emit: &mut dyn FnMut(Entry<'_>)) {
        for (id, settled) in std::mem::take(&mut *self.closed.lock()) {
            let body = settled
                .map(|s| serde_json::to_vec(&s).unwrap_or_default())
                .unwrap_or_default();
            emit(Entry {
                opened: false,
                id: &id,
                body: &body,
            });
        }
    }

    fn restore(&self, entry: Entry<'_>, slots: &crate::plans::SlotRegistry, now: Nanos) {
        let id: Arc<str> = entry.id.into();
        if !entry.opened {
            // Empty: expired. Else what it was settled for.
            let settled = (!entry.body.is_empty())
                .then(|| serde_json::from_slice(entry.body).ok())
                .flatten();
            let mut held = self.held.lock();
            match (held.get_mut(&id), settled) {
                (Some(r), Some(s)) => r.settled = Some(s),
                (Some(_), None) => {
                    held.remove(&id);
                }
                (None, settled) => {
                    self.early.lock().insert(id, settled);
                }
            }
            return;
        }
        let Ok(saved) = serde_json::from_slice::<Saved>(entry.body) else {
            tracing::warn!(id = %id, "a journaled reservation does not read: left out");
            return;
        };
        if saved.expires_at <= now {
            return;
        }
        let mut r = Reservation {
            subject: saved.subject,
            account: saved.account,
            class: saved.class.map(Into::into),
            estimate: saved.estimate,
            held: saved
                .held
                .into_iter()
                .filter_map(|h| {
                    let rate = match &h.calendar {
                        Some((unit, zone, anchor)) => Rate::calendar(
                            h.amount,
                            calendar::Calendar {
                                unit: calendar::Unit::of_name(unit)?,
                                zone: calendar::zone(zone).ok()?,
                                anchor: *anchor,
                            },
                        )?,
                        None => Rate::new(h.amount, h.window)?,
                    };
                    Some(Held {
                        slot: slots.intern_counter(&h.identity, h.algorithm, h.window),
                        scope: h.scope,
                        algorithm: h.algorithm,
                        rate,
                        unit: h.unit.into(),
                        counted: Charged {
                            units: h.units,
                            rate,
                            at: h.at,
                            free_at: h.free_at,
                        },
                    })
                })
                .collect(),
            expires_at: saved.expires_at,
            settled: saved.settled,
        };
        match self.early.lock().remove(&id) {
            Some(None) => return,
            Some(Some(settled)) => r.settled = Some(settled),
            None => {}
        }
        self.held.lock().insert(id, r);
    }

    fn in_flight(&self, emit: &mut dyn FnMut(&str, u32, u64)) {
        self.early.lock().clear();
        for r in self.held.lock().values().filter(|r| r.settled.is_none()) {
            for h in r.held.iter().filter(|h| &*h.unit == CONCURRENT) {
                emit(&h.scope, h.slot, h.counted.units);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(expires_at: Nanos) -> Reservation {
        Reservation {
            subject: "k".into(),
            account: "k".into(),
            class: None,
            estimate: HashMap::from([("tokens".to_owned(), 10)]),
            held: Vec::new(),
            expires_at,
            settled: None,
        }
    }

    #[test]
    fn past_the_cap_one_more_is_refused_until_one_expires() {
        let r = Reservations::with_cap(2);
        r.open(reservation(10));
        r.room().expect("room for a second");
        r.open(reservation(20));
        let full = r.room().expect_err("full");
        assert!(matches!(full, Error::ResourceExhausted(_)), "{full}");
        let expired = r.expire(10);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0.actual["tokens"], 10, "settled at its estimate");
        r.room().expect("room again");
    }

    /// A settle that comes after the expiry, before the sweep, is refused
    /// and leaves the reservation to the sweep, which gives its slot back.
    #[test]
    fn a_late_settle_leaves_an_expired_slot_to_the_sweep() {
        let r = Reservations::with_cap(2);
        let rate = Rate::new(5, crate::plans::IN_FLIGHT).expect("nonzero");
        let mut slot = reservation(10);
        slot.held.push(Held {
            scope: "k".into(),
            slot: 1,
            algorithm: Algorithm::FixedWindow,
            rate,
            unit: CONCURRENT.into(),
            counted: Charged {
                units: 1,
                rate,
                at: 0,
                free_at: crate::plans::IN_FLIGHT,
            },
        });
        let id = r.open(slot);
        assert!(r.settle(&id, None, 11).is_err(), "expired");
        let expired = r.expire(11);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].1.len(), 1, "its slot is given back");
    }

    #[test]
    fn a_release_retried_answers_the_same_and_changes_nothing_twice() {
        let r = Reservations::with_cap(2);
        let id = r.open(reservation(100));
        let (first, changes) = r.settle(&id, None, 1).expect("released");
        assert_eq!(first.actual["tokens"], 0);
        assert!(changes.is_empty(), "nothing held: nothing to change");
        let (again, changes) = r.settle(&id, None, 2).expect("retried");
        assert_eq!((again, changes.len()), (first, 0));
        let other = HashMap::from([("tokens".to_owned(), 3)]);
        assert!(r.settle(&id, Some(&other), 3).is_err());
        assert!(r.settle(&id, None, 100).is_err(), "expired");
    }
}
