//! Top limited subjects at bounded cost: the subjects refused most, or consuming most, over the
//! last minute, hour or day, in memory fixed by a capacity whatever the number of subjects.
//!
//! # Model
//!
//! Two rankings: [`By::Refusals`] weighs each refused decision 1, [`By::Consumption`] each
//! admitted one 1 (its `cost` is summed beside, not ranked). `admitted == false` is a refusal
//! whether or not `refused_by` names a limit; `cost` is ignored on refusals and `refused_by` on
//! admissions. Each horizon is a ring of slices aligned to the Unix epoch: minute = 6 × 10 s,
//! hour = 12 × 5 min, day = 24 × 1 h. An observation at `t` lands in slice `t / len`; a query at
//! `now` counts slices `now / len - (n - 1) ..= now / len`, the current partial slice and the
//! `n - 1` before it: between `(n - 1) · len` and `n · len` of history (minute: 50–60 s). A ring
//! slot is cleared lazily when an observation of a newer slice lands on it (no background task);
//! an observation whose ring slot already holds a newer slice (a clock a whole horizon behind the
//! newest) is dropped from that horizon. Each slice holds per ranking a Space-Saving summary
//! (Metwally, Agrawal, El Abbadi, 2005) of `k = capacity` counters: a tracked subject's counter
//! goes up by 1; an untracked one takes over the smallest counter `m` (0 while one is free), with
//! count `m + 1` and error `m`.
//!
//! # Error bound
//!
//! In a slice, let `f_i` be the count of the last counter taken over (0 if none: the slice is then
//! exact). Counters only grow, so `f_i ≤` the smallest counter `≤ ⌊W_i / k⌋`, `W_i` the slice's
//! weight. A tracked subject's count `c_i` and error `e_i ≤ f_i` satisfy `c_i - e_i ≤ true_i ≤
//! c_i`; an untracked subject has `true_i ≤ f_i`. A query merges the live slices: for a subject
//! tracked in at least one, `count = Σ c_i` where tracked `+ Σ f_i` where not, and
//! `error = Σ e_i + Σ f_i` likewise. So **`count - error ≤ true ≤ count`** and
//! **`error ≤ M = Σ f_i ≤ ⌊W / k⌋`**, `W` the ranking's weight in the horizon;
//! [`TopSubjects::error_bound`] returns `M`. A subject tracked in no live slice has `true ≤ M`:
//! every subject whose true count exceeds `M` is a candidate, and subjects whose true counts
//! differ by more than `M` come in their true order.
//!
//! A row's other columns (a refusal row's `admitted` and `cost`, a consumption row's `refused`)
//! are summed over the slices where the subject is tracked in the other ranking, and `cost` counts
//! from when the subject (re)entered a consumption summary: exact while that ranking has taken
//! over no counter in the horizon, best effort after. Per entry and slice, the first 4 distinct
//! classes and the first 4 distinct refusing limits (with their refusal counts) are kept, more are
//! not recorded. `top_limit` is the recorded limit with the most refusals (ties: smallest name);
//! `account` and `plan` are the latest seen. Plan, class and limit names are interned, at most 4096
//! per instance; later ones are not recorded (such a plan shows as `""`). Filters pick among the
//! merged, tracked subjects before the `n` are taken: `plan` matches the latest plan, `class` any
//! recorded class, `limit` any recorded refusal by it; a name never observed matches nobody. A
//! filtered row keeps the subject's whole counts, with the same bound `M`; classes and limits are
//! recorded only while a subject is tracked, so those two filters can miss a subject above `M`.
//!
//! # Cost
//!
//! `observe` hashes the subject outside the lock, takes one `parking_lot::Mutex` (observers
//! serialise on it: ~0.2–0.3 µs held, a few million observations/s in all), interns the names
//! (the last plan, class and limit are cached), and makes one Space-Saving update per horizon: a
//! hash-table probe, then a bump among the counters kept sorted ascending in an array, where the
//! counter swaps to the end of its run of equal counts and goes up by 1 (the Stream-Summary bucket
//! list, laid out in an array). The run's end is the next position for a distinct count, cached
//! for the smallest counts (every takeover), and binary-searched otherwise: O(1) amortised for
//! those, O(log k) at worst. A tracked subject costs no allocation (nor does a new one whose
//! subject and account fit in 24 bytes). A query merges the live slices under the lock, O(S · k)
//! with S ≤ 24 (~0.3–2 ms at `k = 1024`, observers waiting meanwhile), then selects the `n`.
//! Memory is fixed at construction: 42 slices × 2 rankings × `k` slots of ~148 bytes (slot,
//! counter, index), 12.7 MB for `k = 1024`, plus subject or account strings over 24 bytes
//! ([`TopSubjects::memory_bytes`]).

use std::hash::BuildHasher;
use std::mem::size_of;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use parking_lot::Mutex;

use crate::engine::Nanos;

/// One rate-limit decision, as observed.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// The subject the decision was about (the ranked key).
    pub subject: &'a str,
    /// The subject's account.
    pub account: &'a str,
    /// The subject's plan.
    pub plan: &'a str,
    /// The request class, when there is one.
    pub class: Option<&'a str>,
    /// Whether the decision counted (admitted a Consume, or a Record).
    pub admitted: bool,
    /// Units the decision counted (its cost; 0 when refused).
    pub cost: u64,
    /// The limit that refused it, when it was refused.
    pub refused_by: Option<&'a str>,
}

/// How far back a query looks (the exact, slice-aligned window is in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Horizon {
    /// 6 slices of 10 s.
    Minute,
    /// 12 slices of 5 min.
    Hour,
    /// 24 slices of 1 h.
    Day,
}

impl Horizon {
    /// Length of one slice of this horizon, in nanoseconds.
    pub const fn slice_nanos(self) -> Nanos {
        LAYOUT[self as usize].0
    }

    /// Number of slices this horizon counts, the current one included.
    pub const fn slices(self) -> usize {
        LAYOUT[self as usize].1
    }
}

/// What subjects are ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Refused decisions, 1 each.
    Refusals,
    /// Admitted decisions, 1 each (their cost is reported, not ranked).
    Consumption,
}

/// Which subjects a query may return; `None` matches all.
#[derive(Default, Clone, Debug)]
pub struct Filter {
    /// Only subjects whose latest plan is this one.
    pub plan: Option<String>,
    /// Only subjects seen with this class in the horizon.
    pub class: Option<String>,
    /// Only subjects refused by this limit in the horizon.
    pub limit: Option<String>,
}

/// One ranked subject.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The subject.
    pub subject: String,
    /// Its latest account.
    pub account: String,
    /// Its latest plan.
    pub plan: String,
    /// Refusals in the horizon (an estimate, see `error`).
    pub refused: u64,
    /// Admitted decisions in the horizon.
    pub admitted: u64,
    /// Units counted in the horizon.
    pub cost: u64,
    /// The Space-Saving overestimate bound for the ranked count: true count in [count - error, count].
    pub error: u64,
    /// The limit that refused it most.
    pub top_limit: Option<String>,
    /// Its latest observation in the horizon.
    pub last_seen: Nanos,
}

/// The recommended capacity: 1024 counters per summary, 12.7 MB in all.
pub const DEFAULT_CAPACITY: usize = 1024;

const SECOND: Nanos = 1_000_000_000;
/// (slice length, slice count) of the minute, the hour and the day.
const LAYOUT: [(Nanos, usize); 3] = [(10 * SECOND, 6), (300 * SECOND, 12), (3600 * SECOND, 24)];
const NONE: u16 = u16::MAX;
const MAX_NAMES: usize = 4096;
const TALLY: usize = 4;

/// One observation, its names interned.
struct Obs<'a> {
    key: &'a str,
    hash: u64,
    account: &'a str,
    now: Nanos,
    cost: u64,
    plan: u16,
    class: u16,
    limit: u16,
}

/// A counter's subject and what is kept beside its count.
#[derive(Default)]
struct Slot {
    key: CompactString,
    account: CompactString,
    error: u64,
    cost: u64,
    last_seen: Nanos,
    plan: u16,
    classes: [u16; TALLY],
    limits: [u16; TALLY],
    refusals: [u32; TALLY],
}

/// The place of `id` in `ids`, taking the first free one if it is new; `None` when full.
fn tally(ids: &mut [u16; TALLY], id: u16) -> Option<usize> {
    let i = ids.iter().position(|&x| x == id || x == NONE)?;
    ids[i] = id;
    Some(i)
}

impl Slot {
    fn take(&mut self, key: &str, error: u64) {
        self.key.clear();
        self.key.push_str(key);
        (self.error, self.cost, self.last_seen) = (error, 0, 0);
        (self.classes, self.limits, self.refusals) = ([NONE; TALLY], [NONE; TALLY], [0; TALLY]);
    }

    fn record(&mut self, o: &Obs<'_>) {
        if o.now >= self.last_seen {
            (self.last_seen, self.plan) = (o.now, o.plan);
            if self.account != o.account {
                self.account.clear();
                self.account.push_str(o.account);
            }
        }
        self.cost = self.cost.saturating_add(o.cost);
        if o.class != NONE {
            tally(&mut self.classes, o.class);
        }
        if o.limit != NONE
            && let Some(i) = tally(&mut self.limits, o.limit)
        {
            self.refusals[i] = self.refusals[i].saturating_add(1);
        }
    }
}

/// A Space-Saving summary: `count` sorted ascending by position, `at[position]` its slot,
/// `pos[slot]` its position; free slots have count 0 and sort first.
struct Sketch {
    slots: Vec<Slot>,
    count: Vec<u64>,
    at: Vec<u32>,
    pos: Vec<u32>,
    index: HashTable<u32>,
    /// The count of the last counter taken over (0 before any): bounds untracked subjects.
    floor: u64,
    /// The last position of the run of smallest counts, `count[0]`.
    min_end: usize,
}

impl Sketch {
    fn new(k: usize) -> Self {
        let ids = 0..u32::try_from(k).expect("capacity is clamped to 2^24");
        Sketch {
            slots: (0..k).map(|_| Slot::default()).collect(),
            count: vec![0; k],
            at: ids.clone().collect(),
            pos: ids.collect(),
            // Room for k keys and the tombstones of takeovers: it never grows.
            index: HashTable::with_capacity(2 * k),
            floor: 0,
            min_end: k - 1,
        }
    }

    fn clear(&mut self) {
        self.count.fill(0);
        self.index.clear();
        (self.floor, self.min_end) = (0, self.count.len() - 1);
    }

    /// Tracked slots with their counts.
    fn tracked(&self) -> impl Iterator<Item = (&Slot, u64)> {
        let all = self.count.iter().zip(&self.at).rev();
        all.take_while(|(c, _)| **c > 0)
            .map(|(&c, &s)| (&self.slots[s as usize], c))
    }

    fn find(&self, hash: u64, key: &str) -> Option<usize> {
        let found = self
            .index
            .find(hash, |&i| self.slots[i as usize].key == key);
        found.map(|&i| i as usize)
    }

    fn get(&self, hash: u64, key: &str) -> Option<&Slot> {
        self.find(hash, key).map(|s| &self.slots[s])
    }

    fn update(&mut self, hasher: &DefaultHashBuilder, o: &Obs<'_>) {
        let s = match self.find(o.hash, o.key) {
            Some(s) => s,
            None => {
                let (s, min) = (self.at[0] as usize, self.count[0]);
                if min > 0 {
                    self.floor = min;
                    let old = hasher.hash_one(self.slots[s].key.as_str());
                    if let Ok(e) = self.index.find_entry(old, |&i| i as usize == s) {
                        e.remove();
                    }
                }
                self.slots[s].take(o.key, min);
                let slots = &self.slots;
                let rehash = |&i: &u32| hasher.hash_one(slots[i as usize].key.as_str());
                self.index.insert_unique(o.hash, self.at[0], rehash);
                s
            }
        };
        self.slots[s].record(o);
        self.bump(self.pos[s] as usize);
    }

    /// Adds 1 to the counter at position `p`, keeping `count` sorted.
    fn bump(&mut self, p: usize) {
        let c = self.count[p];
        let run_end = |from: usize| from + self.count[from..].partition_point(|&x| x == c) - 1;
        let q = match self.count.get(p + 1) {
            _ if c == self.count[0] => self.min_end,
            Some(&next) if next == c => run_end(p),
            _ => p,
        };
        let (a, b) = (self.at[p], self.at[q]);
        self.at.swap(p, q);
        (self.pos[a as usize], self.pos[b as usize]) = (q as u32, p as u32);
        self.count[q] = c + 1;
        if c == self.count[0] {
            self.min_end = q - 1; // the run of smallest counts lost its last position
        } else if q == 0 {
            let c = c + 1; // that run is gone: the next one is the smallest
            self.min_end = self.count.partition_point(|&x| x == c) - 1;
        }
    }

    fn bytes(&self) -> usize {
        let strings = self.slots.iter().map(|s| heap(&s.key) + heap(&s.account));
        self.slots.capacity() * size_of::<Slot>()
            + self.count.capacity() * size_of::<u64>()
            + (self.at.capacity() + self.pos.capacity()) * size_of::<u32>()
            + self.index.allocation_size()
            + strings.sum::<usize>()
    }
}

fn heap(s: &CompactString) -> usize {
    if s.is_heap_allocated() {
        s.capacity()
    } else {
        0
    }
}

/// One slice of a horizon: its number (`t / len`) and a summary per ranking.
struct Slice {
    epoch: u64,
    by: [Sketch; 2],
}

/// Interned plan, class and limit names.
#[derive(Default)]
struct Names {
    index: HashTable<u16>,
    list: Vec<CompactString>,
    /// The last plan, class and limit interned: the next is most often the same.
    last: [u16; 3],
}

impl Names {
    fn get(&self, hasher: &DefaultHashBuilder, name: &str) -> Option<u16> {
        let found = self.index.find(hasher.hash_one(name), |&i| {
            self.list[usize::from(i)] == name
        });
        found.copied()
    }

    fn intern(&mut self, hasher: &DefaultHashBuilder, kind: usize, name: &str) -> u16 {
        let last = self.last[kind];
        if usize::from(last) < self.list.len() && self.list[usize::from(last)] == name {
            return last;
        }
        let id = self.intern_new(hasher, name);
        self.last[kind] = id;
        id
    }

    fn intern_new(&mut self, hasher: &DefaultHashBuilder, name: &str) -> u16 {
        let id = self.get(hasher, name);
        if id.is_some() || self.list.len() >= MAX_NAMES {
            return id.unwrap_or(NONE);
        }
        let id = u16::try_from(self.list.len()).expect("at most MAX_NAMES names");
        self.list.push(CompactString::from(name));
        let list = &self.list;
        let rehash = |&i: &u16| hasher.hash_one(list[usize::from(i)].as_str());
        self.index.insert_unique(hasher.hash_one(name), id, rehash);
        id
    }

    /// The limit with the most refusals recorded for `key` in `live` (ties: smallest name).
    fn top_limit(&self, live: &[&Slice], hash: u64, key: &str) -> Option<String> {
        let mut limits: Vec<(u16, u64)> = Vec::new();
        for slot in live.iter().filter_map(|s| s.by[0].get(hash, key)) {
            let named = slot.limits.iter().zip(&slot.refusals);
            for (&l, &m) in named.filter(|(l, _)| **l != NONE) {
                match limits.iter_mut().find(|(x, _)| *x == l) {
                    Some(e) => e.1 += u64::from(m),
                    None => limits.push((l, u64::from(m))),
                }
            }
        }
        let most = |x: &&(u16, u64), y: &&(u16, u64)| {
            x.1.cmp(&y.1)
                .then_with(|| self.name(y.0).cmp(self.name(x.0)))
        };
        limits
            .iter()
            .max_by(most)
            .map(|&(l, _)| self.name(l).to_owned())
    }

    fn name(&self, id: u16) -> &str {
        self.list.get(usize::from(id)).map_or("", |s| s.as_str())
    }
}

struct Inner {
    names: Names,
    rings: [Vec<Slice>; 3],
}

impl Inner {
    /// The slices a query at `now` counts.
    fn live(&self, now: Nanos, h: Horizon) -> impl Iterator<Item = &Slice> {
        let (len, n) = LAYOUT[h as usize];
        let cur = now / len;
        let live = move |s: &&Slice| s.epoch <= cur && s.epoch + n as u64 > cur;
        self.rings[h as usize].iter().filter(live)
    }
}

/// A subject's counts merged over the live slices of a horizon.
#[derive(Default)]
struct Agg<'a> {
    count: [u64; 2],
    error: u64,
    floors: u64,
    cost: u64,
    last_seen: Nanos,
    account: &'a str,
    plan: u16,
    class: bool,
    limit: bool,
}

/// The subjects refused or consuming most over the last minute, hour and day, in fixed memory
/// (the model, the error bound and the cost are in the module doc).
pub struct TopSubjects {
    capacity: usize,
    hasher: DefaultHashBuilder,
    inner: Mutex<Inner>,
}

impl TopSubjects {
    /// `capacity` counters per sketch (the memory bound), clamped to `1..=2^24`.
    pub fn new(capacity: usize) -> Self {
        let k = capacity.clamp(1, 1 << 24);
        let slice = |_| Slice {
            epoch: 0,
            by: [Sketch::new(k), Sketch::new(k)],
        };
        let rings = LAYOUT.map(|(_, n)| (0..n).map(slice).collect());
        let inner = Mutex::new(Inner {
            names: Names::default(),
            rings,
        });
        TopSubjects {
            capacity: k,
            hasher: DefaultHashBuilder::default(),
            inner,
        }
    }

    /// Counters per summary, as clamped by [`TopSubjects::new`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one decision at `now` in the current slice of each horizon.
    pub fn observe(&self, now: Nanos, seen: &Seen<'_>) {
        let hash = self.hasher.hash_one(seen.subject);
        let (h, mut inner) = (&self.hasher, self.inner.lock());
        let Inner { names, rings } = &mut *inner;
        let limit = seen.refused_by.filter(|_| !seen.admitted);
        let o = Obs {
            key: seen.subject,
            hash,
            account: seen.account,
            now,
            cost: if seen.admitted { seen.cost } else { 0 },
            plan: names.intern(h, 0, seen.plan),
            class: seen.class.map_or(NONE, |c| names.intern(h, 1, c)),
            limit: limit.map_or(NONE, |l| names.intern(h, 2, l)),
        };
        for (ring, &(len, n)) in rings.iter_mut().zip(&LAYOUT) {
            let epoch = now / len;
            let slice = &mut ring[(epoch % n as u64) as usize];
            if slice.epoch < epoch {
                slice.epoch = epoch;
                slice.by.iter_mut().for_each(Sketch::clear);
            } else if slice.epoch > epoch {
                continue; // its slice was overwritten by a newer one: older than the horizon
            }
            slice.by[usize::from(seen.admitted)].update(h, &o);
        }
    }

    /// The `n` subjects with the largest `by` count in `horizon` as of `now` that match
    /// `filter`: larger count first, then smaller subject name.
    pub fn top(&self, now: Nanos, horizon: Horizon, by: By, filter: &Filter, n: usize) -> Vec<Row> {
        let inner = self.inner.lock();
        let names = &inner.names;
        let want = |f: &Option<String>| f.as_deref().map(|s| names.get(&self.hasher, s));
        let (plan, class, limit) = (want(&filter.plan), want(&filter.class), want(&filter.limit));
        if [plan, class, limit].contains(&Some(None)) {
            return Vec::new();
        }
        let (plan, class, limit) = (plan.flatten(), class.flatten(), limit.flatten());
        let (r, live) = (by as usize, inner.live(now, horizon).collect::<Vec<_>>());
        let bound: u64 = live.iter().map(|s| s.by[r].floor).sum();
        let mut merged =
            HashMap::<&str, Agg<'_>>::with_capacity(live.iter().map(|s| s.by[r].index.len()).sum());
        // The ranked summaries make the candidates; the other ranking only adds to them.
        for k in [r, 1 - r] {
            for (sketch, (slot, c)) in live
                .iter()
                .flat_map(|s| s.by[k].tracked().map(move |t| (&s.by[k], t)))
            {
                let a = match merged.get_mut(slot.key.as_str()) {
                    Some(a) => a,
                    None if k == r => merged.entry(slot.key.as_str()).or_default(),
                    None => continue,
                };
                a.count[k] += c;
                if k == r {
                    (a.error, a.floors) = (a.error + slot.error, a.floors + sketch.floor);
                }
                a.cost += slot.cost;
                if slot.last_seen >= a.last_seen {
                    (a.last_seen, a.account, a.plan) = (slot.last_seen, &slot.account, slot.plan);
                }
                a.class |= class.is_some_and(|c| slot.classes.contains(&c));
                a.limit |= limit.is_some_and(|l| slot.limits.contains(&l));
            }
        }
        let mut rows: Vec<(u64, u64, &str, Agg<'_>)> = merged
            .into_iter()
            .filter(|(_, a)| plan.is_none_or(|p| a.plan == p))
            .filter(|(_, a)| (a.class || class.is_none()) && (a.limit || limit.is_none()))
            .map(|(key, a)| {
                (
                    a.count[r] + bound - a.floors,
                    a.error + bound - a.floors,
                    key,
                    a,
                )
            })
            .collect();
        let order = |x: &(u64, u64, &str, Agg<'_>), y: &(u64, u64, &str, Agg<'_>)| {
            y.0.cmp(&x.0).then_with(|| x.2.cmp(y.2))
        };
        if n < rows.len() {
            rows.select_nth_unstable_by(n, order);
            rows.truncate(n);
        }
        rows.sort_unstable_by(order);
        let row = |(count, error, key, a): (u64, u64, &str, Agg<'_>)| {
            let mut counts = a.count;
            counts[r] = count;
            Row {
                subject: key.to_owned(),
                account: a.account.to_owned(),
                plan: names.name(a.plan).to_owned(),
                refused: counts[0],
                admitted: counts[1],
                cost: a.cost,
                error,
                top_limit: names.top_limit(&live, self.hasher.hash_one(key), key),
                last_seen: a.last_seen,
            }
        };
        rows.into_iter().map(row).collect()
    }

    /// The bound on any row's overestimate for this horizon/by as of now: `M`, the sum over the
    /// horizon's live slices of the count of each summary's last counter taken over (0 where none
    /// was). Every row has `error ≤ M ≤ ⌊W / capacity⌋`, `W` the number of refused (or admitted)
    /// decisions in the horizon, and every subject whose true count exceeds `M` is tracked.
    pub fn error_bound(&self, now: Nanos, horizon: Horizon, by: By) -> u64 {
        self.bound(&self.inner.lock(), now, horizon, by)
    }

    fn bound(&self, inner: &Inner, now: Nanos, horizon: Horizon, by: By) -> u64 {
        inner
            .live(now, horizon)
            .map(|s| s.by[by as usize].floor)
            .sum()
    }

    /// Approximate bytes held (for docs/metrics).
    pub fn memory_bytes(&self) -> usize {
        let inner = self.inner.lock();
        let names = &inner.names;
        let rings = inner
            .rings
            .iter()
            .map(|r| r.capacity() * size_of::<Slice>());
        let sketches = inner
            .rings
            .iter()
            .flatten()
            .flat_map(|s| &s.by)
            .map(Sketch::bytes);
        size_of::<Self>()
            + names.index.allocation_size()
            + names.list.capacity() * size_of::<CompactString>()
            + names.list.iter().map(heap).sum::<usize>()
            + rings.sum::<usize>()
            + sketches.sum::<usize>()
    }
}

impl std::fmt::Debug for TopSubjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopSubjects")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;

    const SUBJECTS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
    const PLANS: [&str; 2] = ["free", "pro"];
    const CLASSES: [&str; 3] = ["api", "batch", "web"];
    const LIMITS: [&str; 3] = ["burst", "daily", "monthly"];
    const HORIZONS: [Horizon; 3] = [Horizon::Minute, Horizon::Hour, Horizon::Day];
    const BYS: [By; 2] = [By::Refusals, By::Consumption];
    /// Clock steps in seconds: mostly within a slice, some across slices and horizons.
    const STEPS: [u64; 10] = [0, 0, 1, 3, 9, 47, 301, 1_500, 3_599, 25_000];
    const START: Nanos = 1_700_000_007 * SECOND;

    type Names<'a> = (Option<&'a str>, Option<&'a str>);

    /// A decision of account "acct", with its (class, refusing limit).
    fn seen<'a>(s: &'a str, plan: &'a str, ok: bool, cost: u64, n: Names<'a>) -> Seen<'a> {
        let (account, class, refused_by) = ("acct", n.0, n.1);
        Seen {
            subject: s,
            account,
            plan,
            class,
            admitted: ok,
            cost,
            refused_by,
        }
    }

    fn subjects(rows: Vec<Row>) -> Vec<String> {
        rows.into_iter().map(|r| r.subject).collect()
    }

    /// (time, subject, class, admitted, cost, limit), as the oracle counts it.
    type Ev = (Nanos, usize, Option<usize>, bool, u64, Option<usize>);
    /// A filter's (plan, class, limit) indices.
    type Pick = (Option<usize>, Option<usize>, Option<usize>);

    /// The exact answer, over the same slice-aligned window.
    fn oracle(evs: &[Ev], now: Nanos, h: Horizon, by: By, f: Pick, n: usize) -> Vec<Row> {
        let (len, slices) = LAYOUT[h as usize];
        let live = |t: Nanos| t / len <= now / len && t / len + slices as u64 > now / len;
        let mut rows = Vec::new();
        for s in 0..SUBJECTS.len() {
            let mine: Vec<&Ev> = evs.iter().filter(|e| e.1 == s && live(e.0)).collect();
            let admitted = mine.iter().filter(|e| e.3).count() as u64;
            let refused = mine.len() as u64 - admitted;
            let mut tally = [0u64; 3];
            mine.iter().filter_map(|e| e.5).for_each(|l| tally[l] += 1);
            let ok = f.0.is_none_or(|p| p == s % 2)
                && f.1.is_none_or(|c| mine.iter().any(|e| e.2 == Some(c)))
                && f.2.is_none_or(|l| tally[l] > 0);
            if [refused, admitted][by as usize] == 0 || !ok {
                continue;
            }
            let best = (0..3).filter(|&l| tally[l] > 0);
            let best = best.max_by_key(|&l| (tally[l], std::cmp::Reverse(l)));
            rows.push(Row {
                subject: SUBJECTS[s].to_owned(),
                account: "acct".to_owned(),
                plan: PLANS[s % 2].to_owned(),
                refused,
                admitted,
                cost: mine.iter().map(|e| e.4).sum(),
                error: 0,
                top_limit: best.map(|l| LIMITS[l].to_owned()),
                last_seen: mine.iter().map(|e| e.0).max().unwrap_or(0),
            });
        }
        let key = |r: &Row| [r.refused, r.admitted][by as usize];
        rows.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.subject.cmp(&b.subject)));
        rows.truncate(n);
        rows
    }

    /// Below capacity: rows equal the oracle's, error 0. Above: the bounds of the module doc.
    fn check(top: &TopSubjects, evs: &[Ev], now: Nanos, p: Pick) -> Result<(), TestCaseError> {
        let name = |i: Option<usize>, names: &[&str]| i.map(|i| names[i].to_owned());
        let (plan, class, limit) = (name(p.0, &PLANS), name(p.1, &CLASSES), name(p.2, &LIMITS));
        let f = &Filter { plan, class, limit };
        for (h, by) in HORIZONS.into_iter().flat_map(|h| BYS.map(|by| (h, by))) {
            let rows = top.top(now, h, by, f, usize::MAX);
            let (bound, truth) = (
                top.error_bound(now, h, by),
                oracle(evs, now, h, by, p, usize::MAX),
            );
            if top.capacity() >= SUBJECTS.len() {
                prop_assert_eq!(bound, 0);
                prop_assert_eq!(rows, truth);
                prop_assert_eq!(top.top(now, h, by, f, 3), oracle(evs, now, h, by, p, 3));
                continue;
            }
            let key = |r: &Row| [r.refused, r.admitted][by as usize];
            let known = |r: &Row| truth.iter().any(|t| t.subject == r.subject);
            prop_assert!(rows.iter().all(known));
            for t in &truth {
                match rows.iter().find(|r| r.subject == t.subject) {
                    Some(r) => prop_assert!(key(t) <= key(r) && key(r) - r.error <= key(t)),
                    None => prop_assert!(key(t) <= bound, "{:?} missing, bound {}", t, bound),
                }
                prop_assert!(rows.iter().all(|r| r.error <= bound));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random observations and clock steps through slice rotation and horizon expiry, with
        /// 6 subjects and capacity 6 (exact) or 2 to 5 (bounded).
        #[test]
        fn matches_the_oracle(
            cap in prop_oneof![Just(6usize), 2..6usize],
            ops in prop::collection::vec((0..STEPS.len(), 0..6usize, prop::option::of(0..3usize),
                any::<bool>(), 0..5u64, prop::option::of(0..3usize)), 1..100),
            probe in 0..STEPS.len(),
            f in (prop::option::of(0..2usize), prop::option::of(0..3usize),
                  prop::option::of(0..3usize)),
        ) {
            let (top, mut t, mut evs) = (TopSubjects::new(cap), START, Vec::new());
            for (step, s, class, ok, cost, limit) in ops {
                t += STEPS[step] * SECOND + 1;
                let names = (class.map(|c| CLASSES[c]), limit.map(|l| LIMITS[l]));
                top.observe(t, &seen(SUBJECTS[s], PLANS[s % 2], ok, cost, names));
                // Refusals carry no cost, admissions no limit.
                evs.push((t, s, class, ok, if ok { cost } else { 0 }, limit.filter(|_| !ok)));
                check(&top, &evs, t, (None, None, None))?;
            }
            let later = t + STEPS[probe] * SECOND;
            check(&top, &evs, later, (None, None, None))?;
            if cap >= SUBJECTS.len() {
                check(&top, &evs, later, f)?; // a bounded filter may miss (module doc)
            }
        }
    }

    /// Zipf over ranks `0..n`: inverse CDF over cumulative weights `(i + 1)^-s`, splitmix64.
    struct Zipf(Vec<f64>, u64);

    impl Zipf {
        fn new(n: usize, s: f64, seed: u64) -> Self {
            let mut cdf = Vec::with_capacity(n);
            for i in 1..=n {
                cdf.push(cdf.last().unwrap_or(&0.0) + (i as f64).powf(-s));
            }
            Zipf(cdf, seed)
        }

        fn bits(&mut self) -> u64 {
            self.1 = self.1.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (self.1 ^ (self.1 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn sample(&mut self) -> usize {
            let u = (self.bits() >> 11) as f64 / (1u64 << 53) as f64 * self.0[self.0.len() - 1];
            self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
        }
    }

    /// A subject name that does not sort like its rank.
    fn name(buf: &mut String, rank: usize) -> &str {
        buf.clear();
        let scrambled = (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        write!(buf, "subject-{scrambled:016x}").expect("writes to a String");
        buf
    }

    /// THE acceptance test: 1,000,000 subjects, 5,000,000 Zipf(1.1) observations spread over one
    /// minute (6 slices), 3/4 admitted, capacity 1024: the true top 10 come back, within bounds.
    #[test]
    fn zipf_top_ten_within_bound() {
        let mut zipf = Zipf::new(1_000_000, 1.1, 0x5EED);
        let top = TopSubjects::new(DEFAULT_CAPACITY);
        let (mut truth, mut buf) = (vec![[0u64; 2]; 1_000_000], String::new());
        let t0 = 472_222 * 3600 * SECOND; // aligned to the hour
        for i in 0..5_000_000u64 {
            let rank = zipf.sample();
            let ok = zipf.bits() & 3 != 0;
            truth[rank][usize::from(ok)] += 1;
            let subject = name(&mut buf, rank);
            top.observe(
                t0 + i * 12_000,
                &seen(subject, "free", ok, 2, (None, Some("burst"))),
            );
        }
        let now = t0 + 60 * SECOND - 1;
        let ranks: HashMap<String, usize> =
            (0..64).map(|r| (name(&mut buf, r).into(), r)).collect();
        for (h, by) in HORIZONS.into_iter().flat_map(|h| BYS.map(|by| (h, by))) {
            let (r, bound) = (by as usize, top.error_bound(now, h, by));
            assert!(bound <= truth.iter().map(|t| t[r]).sum::<u64>() / DEFAULT_CAPACITY as u64);
            let rows = top.top(now, h, by, &Filter::default(), 10);
            let mut got: Vec<usize> = rows.iter().map(|row| ranks[&row.subject]).collect();
            for (row, &rank) in rows.iter().zip(&got) {
                let (c, t) = ([row.refused, row.admitted][r], truth[rank][r]);
                let within = t <= c && c <= t + row.error && row.error <= bound;
                assert!(within, "{h:?} {by:?} {row:?} true {t}");
            }
            for (i, a) in got.iter().enumerate() {
                let later = got[i + 1..].iter().map(|b| truth[*b][r]);
                assert!(
                    later.max() <= Some(truth[*a][r] + bound),
                    "{h:?} {by:?} out of order"
                );
            }
            let mut want: Vec<usize> = (0..64).collect();
            want.sort_by_key(|&k| std::cmp::Reverse(truth[k][r]));
            want.truncate(10);
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "{h:?} {by:?}");
        }
    }

    #[test]
    fn filters_select_and_top_limit_is_the_most_refusing() {
        let top = TopSubjects::new(16);
        for (s, plan, class, limit, times) in [
            ("a", "free", "api", Some("burst"), 3),
            ("a", "free", "api", Some("daily"), 1),
            ("b", "pro", "web", Some("daily"), 2),
            ("c", "free", "web", None, 7),
            ("a", "free", "batch", None, 1),
        ] {
            let seen = seen(s, plan, limit.is_none(), 5, (Some(class), limit));
            (0..times).for_each(|_| top.observe(START, &seen));
        }
        let ask = |by, f: [Option<&str>; 3]| {
            let [plan, class, limit] = f.map(|x| x.map(String::from));
            subjects(top.top(
                START,
                Horizon::Minute,
                by,
                &Filter { plan, class, limit },
                9,
            ))
        };
        assert_eq!(ask(By::Refusals, [None, None, None]), ["a", "b"]);
        assert_eq!(ask(By::Refusals, [Some("free"), None, None]), ["a"]);
        assert_eq!(ask(By::Consumption, [Some("free"), None, None]), ["c", "a"]);
        assert_eq!(ask(By::Refusals, [None, Some("web"), None]), ["b"]);
        assert_eq!(ask(By::Consumption, [None, Some("batch"), None]), ["a"]);
        assert_eq!(ask(By::Refusals, [None, None, Some("daily")]), ["a", "b"]);
        assert_eq!(ask(By::Consumption, [None, None, Some("burst")]), ["a"]);
        assert_eq!(
            ask(By::Refusals, [Some("pro"), Some("web"), Some("daily")]),
            ["b"]
        );
        assert!(ask(By::Refusals, [Some("pro"), Some("api"), None]).is_empty());
        assert!(ask(By::Refusals, [None, None, Some("unknown")]).is_empty());
        let rows = top.top(START, Horizon::Day, By::Refusals, &Filter::default(), 10);
        let got = rows
            .iter()
            .map(|r| (r.refused, r.admitted, r.cost, r.top_limit.as_deref()));
        assert_eq!(
            got.collect::<Vec<_>>(),
            [(4, 1, 5, Some("burst")), (2, 0, 0, Some("daily"))]
        );
    }

    #[test]
    fn late_observations_count_only_where_their_slice_is_live() {
        let top = TopSubjects::new(4);
        let now = START + 60 * SECOND;
        top.observe(now, &seen("new", "free", false, 0, (None, None)));
        top.observe(START, &seen("late", "free", false, 0, (None, None))); // minute slot reused
        let subjects = |h| subjects(top.top(now, h, By::Refusals, &Filter::default(), 9));
        assert_eq!(subjects(Horizon::Minute), ["new"]);
        assert_eq!(subjects(Horizon::Hour), ["late", "new"]);
    }

    #[test]
    fn concurrent_observers_lose_nothing() {
        let top = TopSubjects::new(64);
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let top = &top;
                scope.spawn(move || {
                    let mut buf = String::new();
                    for i in 0..20_000u64 {
                        let (s, ok) = (name(&mut buf, (i % 50) as usize), (i + thread) % 3 != 0);
                        top.observe(START + i * 1000, &seen(s, "free", ok, 1, (None, None)));
                    }
                });
            }
        });
        for by in BYS {
            let rows = top.top(START + SECOND, Horizon::Minute, by, &Filter::default(), 99);
            assert_eq!(rows.len(), 50);
            assert!(rows.iter().all(|r| r.error == 0 && r.cost == r.admitted));
            let total: u64 = rows.iter().map(|r| r.refused + r.admitted).sum();
            assert_eq!(total, 80_000);
        }
    }
}
