//! Reservations: a Consume that counts an estimate now and learns the
//! actual cost later (an LLM call's tokens), settled, released or expired.
//!
//! A reservation remembers, for every counter its estimate was counted
//! against, what a refund needs ([`Charged`]): the units, when, and when
//! the counter was next free right after. Settling replaces the estimate
//! with the actual cost: a smaller actual gives the difference back
//! ([`crate::engine::Algorithm::refund`]: what is still counted in a live
//! window, what a bucket still owes), a larger one counts the excess as a
//! Record. A settled reservation's amounts are kept apart for
//! [`SETTLED_KEPT`] so a retry with the same amounts gets the same answer;
//! one never settled is settled at its estimate when it expires (nothing
//! given back).

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

/// The most reservations open at once: about 300 MB of them.
pub const MAX_HELD: usize = 1_000_000;

/// The most settled reservations kept in one generation to answer retries
/// (at most twice as many kept, some 100 bytes each): past it, the older
/// generation is forgotten before [`SETTLED_KEPT`].
pub const MAX_KEPT: usize = 1_000_000;

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
    /// The open ones.
    held: Mutex<Fast<Arc<str>, Reservation>>,
    /// The most open at once.
    cap: usize,
    /// The settled ones, to answer retries. Locked after `held` when both
    /// are.
    kept: Mutex<Kept>,
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

/// The maps of reservations by id: ids are random, made here, so a fast
/// hash (foldhash) serves.
type Fast<K, V> = hashbrown::HashMap<K, V>;

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
    /// Whether the journal has written it open: until it has, its settle
    /// or expiry need no record of their own (settled, it is written
    /// settled; expired, not at all).
    pub journaled: bool,
}

/// Settled reservations, kept to answer a retried settle the same for
/// [`SETTLED_KEPT`] (at most until they would have expired): only their
/// amounts, compactly, in two generations that take turns every
/// [`SETTLED_KEPT`] (or [`MAX_KEPT`]), so forgetting is dropping the older.
#[derive(Debug, Default)]
struct Kept {
    young: Fast<u128, Answer>,
    old: Fast<u128, Answer>,
    /// When `young` began.
    since: Nanos,
}

/// A settled reservation's amounts, and until when they answer.
#[derive(Debug)]
struct Answer {
    until: Nanos,
    /// Per unit: its name's length (u32) and bytes, a flag byte (1: in the
    /// estimate, 2: in the actual), the estimate and the actual (u64 each,
    /// little-endian).
    amounts: Box<[u8]>,
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

/// What settling does to a reservation's counters.
pub type Changes = Vec<(Held, Change)>;

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

/// `estimate` with each unit at its `actual` (`None`: released, all 0;
/// units `actual` does not name at their estimate).
fn billed(
    estimate: &BTreeMap<String, u64>,
    actual: Option<&HashMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut billed = estimate.clone();
    match actual {
        None => billed.values_mut().for_each(|n| *n = 0),
        Some(actual) => billed.extend(actual.iter().map(|(u, &n)| (u.clone(), n))),
    }
    billed
}

// === impl Kept ===

impl Kept {
    /// An id as the memory store makes them (`rsv_` and 32 hex digits), as
    /// a number.
    fn key(id: &str) -> Option<u128> {
        let hex = id.strip_prefix("rsv_")?;
        if hex.len() != 32 {
            return None;
        }
        hex.bytes().try_fold(0u128, |n, b| {
            let digit = (b as char).to_digit(16)?;
            Some(n << 4 | u128::from(digit))
        })
    }

    /// Keeps `id`'s amounts until `until`; returns the generation it
    /// forgot to make room, if any, to drop outside the lock.
    fn keep(
        &mut self,
        id: &str,
        estimate: &BTreeMap<String, u64>,
        actual: &BTreeMap<String, u64>,
        until: Nanos,
        now: Nanos,
    ) -> Option<Fast<u128, Answer>> {
        let amounts = Answer::encode(estimate, actual);
        self.insert(id, Answer { until, amounts }, now)
    }

    /// Keeps `answer` for `id`; returns the generation it forgot to make
    /// room, if any.
    fn insert(&mut self, id: &str, answer: Answer, now: Nanos) -> Option<Fast<u128, Answer>> {
        let forgotten = self.turn(now);
        if let Some(key) = Self::key(id) {
            self.young.insert(key, answer);
        }
        forgotten
    }

    /// Starts a new generation when the young one is [`SETTLED_KEPT`] old
    /// or [`MAX_KEPT`] large, forgetting the older one (returned).
    fn turn(&mut self, now: Nanos) -> Option<Fast<u128, Answer>> {
        if now < self.since.saturating_add(SETTLED_KEPT) && self.young.len() < MAX_KEPT {
            return None;
        }
        self.since = now;
        let young = Fast::with_capacity(self.young.len());
        let old = std::mem::replace(&mut self.old, std::mem::replace(&mut self.young, young));
        Some(old)
    }

    /// What `id` was settled for, if it still answers at `now`: its
    /// estimate and actual.
    fn answer(&self, id: &str, now: Nanos) -> Option<(Amounts, Amounts)> {
        let key = Self::key(id)?;
        let a = self.young.get(&key).or_else(|| self.old.get(&key))?;
        (a.until > now).then(|| a.decode())
    }

    fn iter(&self) -> impl Iterator<Item = (u128, &Answer)> {
        self.young.iter().chain(&self.old).map(|(&k, a)| (k, a))
    }
}

// === impl Answer ===

/// The first byte of a settled reservation's journal record (an open one's
/// is JSON: `{`).
const SETTLED_RECORD: u8 = 1;

impl Answer {
    /// As the journal writes it: [`SETTLED_RECORD`], `until` (u64,
    /// little-endian), the amounts as kept.
    fn record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.amounts.len());
        out.push(SETTLED_RECORD);
        out.extend_from_slice(&self.until.to_le_bytes());
        out.extend_from_slice(&self.amounts);
        out
    }

    /// Read back from [`Answer::record`]; `None` for another record.
    fn from_record(body: &[u8]) -> Option<Self> {
        let (&SETTLED_RECORD, rest) = body.split_first()? else {
            return None;
        };
        let (until, amounts) = rest.split_first_chunk::<8>()?;
        Some(Self {
            until: Nanos::from_le_bytes(*until),
            amounts: amounts.into(),
        })
    }

    fn encode(estimate: &Amounts, actual: &Amounts) -> Box<[u8]> {
        let mut out = Vec::with_capacity(actual.len() * 28);
        let units = actual
            .keys()
            .chain(estimate.keys().filter(|u| !actual.contains_key(*u)));
        for unit in units {
            let (e, a) = (estimate.get(unit), actual.get(unit));
            out.extend_from_slice(&(unit.len() as u32).to_le_bytes());
            out.extend_from_slice(unit.as_bytes());
            out.push(u8::from(e.is_some()) | (u8::from(a.is_some()) << 1));
            out.extend_from_slice(&e.copied().unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&a.copied().unwrap_or(0).to_le_bytes());
        }
        out.into_boxed_slice()
    }

    /// The estimate and the actual, as encoded.
    fn decode(&self) -> (Amounts, Amounts) {
        let (mut estimate, mut actual) = (Amounts::new(), Amounts::new());
        let mut rest = &self.amounts[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some((unit, tail)) = tail.split_at_checked(len) else {
                break;
            };
            let Some((&flags, tail)) = tail.split_first() else {
                break;
            };
            let Some((e, tail)) = tail.split_first_chunk::<8>() else {
                break;
            };
            let Some((a, tail)) = tail.split_first_chunk::<8>() else {
                break;
            };
            let unit = String::from_utf8_lossy(unit).into_owned();
            if flags & 1 != 0 {
                estimate.insert(unit.clone(), u64::from_le_bytes(*e));
            }
            if flags & 2 != 0 {
                actual.insert(unit, u64::from_le_bytes(*a));
            }
            rest = tail;
        }
        (estimate, actual)
    }
}

// === impl Reservations ===

impl Reservations {
    /// Room for `cap` reservations at most.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            held: Mutex::default(),
            cap,
            kept: Mutex::default(),
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
    /// changes to make to the counters; `None` for a retry: settled before,
    /// for the same amounts, nothing changes.
    pub fn settle(
        &self,
        id: &str,
        actual: Option<&HashMap<String, u64>>,
        now: Nanos,
    ) -> Result<(Settlement, Option<Changes>), Error> {
        let gone = || {
            Error::not_found(
                "id",
                format!("no reservation {id}: it is unknown, or expired"),
            )
        };
        let mut held = self.held.lock();
        let Some((key, r)) = held.get_key_value(id) else {
            // Settled before, or gone.
            let (estimate, before) = self.kept.lock().answer(id, now).ok_or_else(gone)?;
            let billed = billed(&estimate, actual);
            if billed != before {
                return Err(Error::invalid(
                    "id",
                    format!("{id} was settled already, for {before:?}"),
                ));
            }
            let again = Settlement {
                id: id.into(),
                subject: String::new(),
                account: String::new(),
                class: None,
                estimate,
                actual: billed,
            };
            return Ok((again, None));
        };
        // Expired, not yet swept: `expire` settles it (and gives back its
        // slots in flight).
        if r.expires_at <= now {
            return Err(gone());
        }
        let key = key.clone();
        let Some(r) = held.remove(&key) else {
            return Err(gone());
        };
        // Every unit the estimate named or counted; then each at its actual
        // (released: all 0; settled: as named, else at its estimate).
        let estimate = r.by_unit();
        let billed = billed(&estimate, actual);
        let changes = r
            .held
            .into_iter()
            .filter_map(|h| {
                // A slot in flight is given back whatever the actual.
                let actual = match &*h.unit {
                    CONCURRENT => 0,
                    unit => billed.get(unit).copied().unwrap_or(0),
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
                Some((h, change))
            })
            .collect();
        // Kept only to answer retries, briefly, and without its counters.
        let until = r.expires_at.min(now.saturating_add(SETTLED_KEPT));
        let forgotten = self.kept.lock().keep(&key, &estimate, &billed, until, now);
        drop(held);
        drop(forgotten);
        // Queued before the counters change: a journal's cut that holds
        // the refund holds the settle.
        if r.journaled {
            self.closing(&key, Some(&billed));
        }
        let settlement = Settlement {
            id: key,
            subject: r.subject,
            account: r.account,
            class: r.class,
            estimate,
            actual: billed,
        };
        Ok((settlement, Some(changes)))
    }

    /// Forgets what expired by `now`: those open are settled at their
    /// estimate, returned with the changes that gives (their slots in
    /// flight back; nothing else); the settled ones kept past their time no
    /// longer answer retries.
    pub fn expire(&self, now: Nanos) -> Vec<(Settlement, Changes)> {
        let forgotten = self.kept.lock().turn(now);
        drop(forgotten);
        let mut held = self.held.lock();
        let mut expired = Vec::new();
        held.retain(|id, r| {
            if r.expires_at > now {
                return true;
            }
            if r.journaled {
                self.closing(id, None);
            }
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

    /// How many are open.
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
            settled: None,
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
        let mut held = self.held.lock();
        for (id, r) in held.iter_mut() {
            r.journaled = true;
            let body = self.saved(r, slots);
            emit(Entry {
                opened: true,
                id,
                body: &body,
            });
        }
        // Settled ones, to answer a retry after a restart.
        for (key, answer) in self.kept.lock().iter() {
            let body = answer.record();
            emit(Entry {
                opened: true,
                id: &format!("rsv_{key:032x}"),
                body: &body,
            });
        }
    }

    fn take_opened(&self, slots: &crate::plans::SlotRegistry, emit: &mut dyn FnMut(Entry<'_>)) {
        let ids = std::mem::take(&mut *self.opened.lock());
        let mut held = self.held.lock();
        let kept = self.kept.lock();
        for id in ids {
            // One expired and forgotten meanwhile is not written. One
            // settled already is written settled (without its counters), to
            // answer a retry after a restart.
            let body = match held.get_mut(&id) {
                Some(r) => {
                    r.journaled = true;
                    self.saved(r, slots)
                }
                None => match Kept::key(&id).and_then(|k| kept.young.get(&k)) {
                    Some(answer) => answer.record(),
                    None => continue,
                },
            };
            emit(Entry {
                opened: true,
                id: &id,
                body: &body,
            });
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
            match (held.remove(&id), settled) {
                (Some(r), Some(s)) => {
                    let until = r.expires_at.min(now.saturating_add(SETTLED_KEPT));
                    self.kept.lock().keep(&id, &r.by_unit(), &s, until, now);
                }
                (Some(_), None) => {}
                (None, settled) => {
                    self.early.lock().insert(id, settled);
                }
            }
            return;
        }
        if let Some(answer) = Answer::from_record(entry.body) {
            // Settled before it was journaled open (a closed entry for it,
            // read first, says the same).
            self.early.lock().remove(&id);
            if answer.until > now {
                let forgotten = self.kept.lock().insert(&id, answer, now);
                drop(forgotten);
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
        let r = Reservation {
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
            journaled: true,
        };
        let settled = match self.early.lock().remove(&id) {
            Some(None) => return,
            Some(Some(settled)) => Some((r.by_unit(), settled)),
            None => saved
                .settled
                .map(|s| (r.estimate.iter().map(|(u, &n)| (u.clone(), n)).collect(), s)),
        };
        match settled {
            Some((estimate, actual)) => {
                let until = r.expires_at.min(now.saturating_add(SETTLED_KEPT));
                self.kept.lock().keep(&id, &estimate, &actual, until, now);
            }
            None => {
                self.held.lock().insert(id, r);
            }
        }
    }

    fn in_flight(&self, emit: &mut dyn FnMut(&str, u32, u64)) {
        self.early.lock().clear();
        for r in self.held.lock().values() {
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
            journaled: false,
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
        assert_eq!(
            changes.map(|c| c.len()),
            Some(0),
            "nothing held: nothing to change"
        );
        let (again, changes) = r.settle(&id, None, 2).expect("retried");
        assert!(changes.is_none(), "a retry changes nothing");
        assert_eq!(
            (&again.id, &again.estimate, &again.actual),
            (&first.id, &first.estimate, &first.actual)
        );
        let other = HashMap::from([("tokens".to_owned(), 3)]);
        assert!(r.settle(&id, Some(&other), 3).is_err());
        assert!(r.settle(&id, None, 100).is_err(), "expired");
    }

    /// The compact amounts a settled reservation is kept with read back
    /// as the maps they were made from, whatever the units' names.
    #[test]
    fn kept_amounts_read_back_as_written() {
        let mut rng = fastrand::Rng::with_seed(7);
        let names = [
            "requests",
            "tokens",
            "",
            "ünïcode",
            "a\u{1f}b",
            "input_tokens",
        ];
        for _ in 0..500 {
            let pick = |rng: &mut fastrand::Rng| {
                let mut m = Amounts::new();
                for name in names {
                    if rng.bool() {
                        m.insert(name.to_owned(), rng.u64(..));
                    }
                }
                m
            };
            let (estimate, actual) = (pick(&mut rng), pick(&mut rng));
            let answer = Answer {
                until: 0,
                amounts: Answer::encode(&estimate, &actual),
            };
            assert_eq!(answer.decode(), (estimate, actual));
        }
    }

    /// A settled reservation answers retries for SETTLED_KEPT (not past its
    /// expiry), then is forgotten: NOT_FOUND.
    #[test]
    fn a_settled_reservation_answers_retries_for_a_while_then_is_forgotten() {
        let r = Reservations::with_cap(10);
        let long = SETTLED_KEPT * 10;
        let id = r.open(reservation(long));
        let actual = HashMap::from([("tokens".to_owned(), 4)]);
        r.settle(&id, Some(&actual), 1).expect("settled");
        assert_eq!(r.len(), 0, "no longer open");
        let (again, changes) = r.settle(&id, Some(&actual), SETTLED_KEPT).expect("retried");
        assert!(changes.is_none());
        assert_eq!(again.actual["tokens"], 4);
        // Sweeps meanwhile turn the generations; it is kept its time.
        r.expire(SETTLED_KEPT / 2);
        r.expire(SETTLED_KEPT);
        assert!(r.settle(&id, Some(&actual), SETTLED_KEPT).is_ok());
        let gone = r.settle(&id, Some(&actual), SETTLED_KEPT + 1);
        assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
        r.expire(3 * SETTLED_KEPT);
        assert!(r.kept.lock().iter().next().is_none(), "forgotten");
    }

    /// Opened and settled within one journal interval: the cut writes its
    /// settle, then it as settled; read back in that order, a retry
    /// answers the same, and a reservation still open stays open.
    #[test]
    fn a_settled_reservation_read_back_from_the_journal_answers_retries() {
        use crate::persist::Ledger;
        let slots = crate::plans::SlotRegistry::default();
        let before = Reservations::with_cap(10);
        before.journal();
        let settled = before.open(reservation(SETTLED_KEPT * 10));
        let open = before.open(reservation(SETTLED_KEPT * 10));
        let actual = HashMap::from([("tokens".to_owned(), 4)]);
        let (first, _) = before.settle(&settled, Some(&actual), 1).expect("settled");
        let mut entries: Vec<(bool, String, Vec<u8>)> = Vec::new();
        let mut keep = |e: Entry<'_>| entries.push((e.opened, e.id.to_owned(), e.body.to_vec()));
        before.take_closed(&mut keep);
        before.take_opened(&slots, &mut keep);
        assert_eq!(
            entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            [true, true],
            "both opens, one written settled: the settle needs no record of its own"
        );

        let after = Reservations::with_cap(10);
        for (opened, id, body) in &entries {
            let entry = Entry {
                opened: *opened,
                id,
                body,
            };
            after.restore(entry, &slots, 2);
        }
        assert_eq!(after.len(), 1, "the open one");
        let (again, changes) = after.settle(&settled, Some(&actual), 3).expect("retried");
        assert!(changes.is_none(), "a retry changes nothing");
        assert_eq!(
            (&again.estimate, &again.actual),
            (&first.estimate, &first.actual)
        );
        let other = HashMap::from([("tokens".to_owned(), 5)]);
        assert!(
            after.settle(&settled, Some(&other), 3).is_err(),
            "other amounts"
        );
        assert!(after.settle(&open, None, 3).expect("open").1.is_some());

        // Once its open is written, a settle is written too.
        before.settle(&open, None, 4).expect("released");
        let mut closed = Vec::new();
        before.take_closed(&mut |e| closed.push((e.opened, e.id.to_owned())));
        assert_eq!(closed, [(false, open.to_string())]);
    }

    /// The id parsed by hand reads as the obvious parse does, and refuses
    /// what it refuses.
    #[test]
    fn an_id_parses_as_from_str_radix_does() {
        let obvious = |id: &str| {
            let hex = id.strip_prefix("rsv_")?;
            (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u128::from_str_radix(hex, 16).ok())
                .flatten()
        };
        let mut rng = fastrand::Rng::with_seed(11);
        let mut ids = vec![
            String::new(),
            "rsv_".into(),
            format!("rsv_+{}", "0".repeat(31)),
            format!("rsv_{}", "F".repeat(32)),
            format!("rsv_{}", "f".repeat(33)),
            format!("rsx_{}", "0".repeat(32)),
            format!("rsv_{}g", "0".repeat(31)),
            format!("rsv_{}é", "0".repeat(30)),
        ];
        ids.extend((0..1000).map(|_| format!("rsv_{:032x}", rng.u128(..))));
        for id in &ids {
            assert_eq!(Kept::key(id), obvious(id), "{id}");
        }
    }
}
