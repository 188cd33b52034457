//! The default counter store: sharded in-process tables, bounded in size.
//!
//! Counters are grouped by scope (a subject or an account): one entry per
//! scope holds that scope's cells, so the counters of one decision usually sit
//! under a single shard lock, which is held while the decision runs. There is
//! no global lock: a decision locks the one or two shards of its scopes, in
//! shard order.
//!
//! Memory is bounded by `max_counters`. When a shard is over its share, it
//! first drops expired state (windows that ended, buckets that refilled);
//! only if that frees too little does it evict the least recently used live
//! entries (a decision, admitted or not, counts as a use). An evicted live
//! counter is folded into a fixed-size sketch of its limit ([`evicted`]), and
//! a counter created again starts from the sketch's estimate, which never
//! under-counts: eviction never hands back quota, so a flood of junk
//! subjects costs the subjects it evicts nothing. The estimate may count
//! more than a new counter had (bounded; see [`evicted`]), so every eviction
//! is counted ([`MemoryStore::evictions`]) and logged. Scopes in active use
//! are never the ones evicted and new counters are always enforced, so a
//! full store keeps limiting, unlike a cache that stops tracking past its
//! cap. Size the cap above the live working set.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use std::sync::Arc;

use crate::engine::{CounterKey, CounterStore, Nanos, State};
use crate::log_every::LogEvery;
use crate::plans::SlotRegistry;
use evicted::Evicted;

pub mod evicted;
mod rows;

pub use rows::Row;

/// Estimated bytes per counter, all-in, for sizing `--max-memory`. Measured
/// by `scripts/load.sh` (server RSS growth): ~150 bytes with 1,000,000 live
/// Envoy counters, journal on, peak and steady alike; ~185 at the cap while
/// junk keys churn it (freed entries, change lists, the eviction sketch).
/// The server's own footprint (runtime, connections, buffers) is not in it.
pub const BYTES_PER_COUNTER: usize = 192;

/// The fewest counters a store is sized for: a smaller size is rounded up.
pub const MIN_COUNTERS: usize = 1024;

/// The sharded in-memory store.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    shard_cap: usize,
    evictions: AtomicU64,
    full: LogEvery,
    /// What evicted counters had counted.
    evicted: Evicted,
}

#[derive(Default)]
struct Shard {
    /// Entries boxed: the table itself stays small (a pointer a bucket), so
    /// its half-empty buckets after a doubling, and the old and new tables
    /// side by side while it grows, cost pointers rather than whole entries.
    table: HashTable<Box<Entry>>,
    cells: usize,
    /// Counts decisions in this shard; stamps entries for LRU eviction.
    tick: u64,
    /// Hashes of the entries changed since the last journal flush (each
    /// once: an entry's [`DIRTY`] bit says it is listed).
    dirty: Vec<u64>,
    /// Scopes reset since the last journal flush.
    removed: Vec<CompactString>,
    /// Whether changes are listed for a journal ([`MemoryStore::track_changes`]);
    /// without one, nothing drains the lists.
    track: bool,
}

/// The bit of [`Entry::touched`] that marks an entry changed since the last
/// journal flush; the other bits are its last use.
const DIRTY: u64 = 1 << 63;

/// One scope's counters.
struct Entry {
    /// Inline up to 24 bytes, so most keys need no allocation of their own.
    scope: CompactString,
    expires_at: Nanos,
    /// The shard tick of its last use, and [`DIRTY`].
    touched: u64,
    /// One cell inline: most scopes have one counter per entry.
    cells: SmallVec<[Cell; 1]>,
}

struct Cell {
    slot: u32,
    state: State,
}

// === impl MemoryStore ===

impl MemoryStore {
    /// A store holding at most about `max_counters` counters (at least
    /// [`MIN_COUNTERS`]).
    pub fn new(max_counters: usize) -> Self {
        let max_counters = max_counters.max(MIN_COUNTERS);
        let shards = (max_counters / 1024).next_power_of_two().clamp(1, 256);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: DefaultHashBuilder::default(),
            shard_cap: max_counters.div_ceil(shards),
            evictions: AtomicU64::new(0),
            full: LogEvery::new(std::time::Duration::from_secs(10)),
            evicted: Evicted::new(max_counters),
        }
    }

    /// Remembers evicted counters of the limits `slots` describes (see
    /// [`evicted`]); without it, eviction forgets. The limiter calls it.
    pub fn remember_evictions(&self, slots: Arc<SlotRegistry>) {
        self.evicted.remember(slots);
    }

    /// Bytes held by the sketches of evicted counters.
    pub fn sketch_bytes(&self) -> usize {
        self.evicted.bytes()
    }

    /// What a counter absent from the store starts from.
    fn recall(&self, scope: &str, slot: u32, now: Nanos) -> State {
        if !self.evicted.active() {
            return State::default();
        }
        self.evicted
            .recall(self.hasher.hash_one((scope, slot)), slot, now)
    }

    /// A store sized to about `bytes` of memory.
    pub fn with_memory(bytes: usize) -> Self {
        Self::new(bytes / BYTES_PER_COUNTER)
    }

    /// The most counters held at once.
    pub fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// Live counters evicted to stay within capacity, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn shard_of(&self, hash: u64) -> usize {
        // hashbrown uses the low bits and the top 7; pick shards from the middle.
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    fn hash(&self, scope: &str) -> u64 {
        self.hasher.hash_one(scope)
    }

    /// Makes room in `shard` after an insert, sparing the scopes in `keep`.
    fn enforce_cap(&self, shard: &mut Shard, now: Nanos, keep: &[CounterKey<'_>]) {
        if shard.cells <= self.shard_cap {
            return;
        }
        shard.retain(|e| e.expires_at > now);
        let target = self.shard_cap - self.shard_cap / 8;
        if shard.cells <= target {
            return;
        }
        // Evict the least recently used live entries, in one batch.
        let mut stamps: Vec<u64> = shard
            .table
            .iter()
            .filter(|e| !keep.iter().any(|k| k.scope == e.scope.as_str()))
            .map(|e| e.touched & !DIRTY)
            .collect();
        if stamps.is_empty() {
            return;
        }
        let excess = shard.cells - target;
        let n = excess.min(stamps.len()).max(1) - 1;
        let (_, threshold, _) = stamps.select_nth_unstable(n);
        let threshold = *threshold;
        let before = shard.cells;
        let mut budget = excess;
        shard.retain(|e| {
            let evict = budget > 0
                && e.touched & !DIRTY <= threshold
                && !keep.iter().any(|k| k.scope == e.scope.as_str());
            if evict {
                budget = budget.saturating_sub(e.cells.len());
                for c in &e.cells {
                    let hash = self.hasher.hash_one((e.scope.as_str(), c.slot));
                    self.evicted.fold(hash, c.slot, c.state, now);
                }
            }
            !evict
        });
        let evicted = (before - shard.cells) as u64;
        let total = self.evictions.fetch_add(evicted, Ordering::Relaxed) + evicted;
        self.warn_evictions(total);
    }

    /// One decision over one scope: a single lookup, the common case.
    fn transact_scope(
        &self,
        scope: &str,
        keys: &[CounterKey<'_>],
        now: Nanos,
        decide: &mut dyn FnMut(&mut [State], &mut [Nanos]) -> bool,
    ) {
        let hash = self.hash(scope);
        let mut guard = self.shards[self.shard_of(hash)].lock();
        let shard = &mut *guard;
        shard.tick += 1;
        let mut states: SmallVec<[State; 4]> = SmallVec::from_elem(State::default(), keys.len());
        let mut expiries: SmallVec<[Nanos; 4]> = SmallVec::from_elem(0, keys.len());
        let Shard {
            table,
            cells,
            tick,
            dirty,
            track,
            ..
        } = shard;
        match table.find_mut(hash, |e| e.scope.as_str() == scope) {
            Some(entry) => {
                entry.touched = *tick | (entry.touched & DIRTY);
                let live = entry.expires_at > now;
                for (state, key) in states.iter_mut().zip(keys) {
                    *state = match entry.cells.iter().find(|c| c.slot == key.slot) {
                        Some(c) if live => c.state,
                        _ => self.recall(scope, key.slot, now),
                    };
                }
                if !decide(&mut states, &mut expiries) {
                    return;
                }
                if entry.expires_at <= now {
                    *cells -= entry.cells.len();
                    entry.cells.clear();
                }
                if *track {
                    entry.mark_dirty(hash, dirty);
                }
                let mut grew = false;
                for ((key, state), expires_at) in keys.iter().zip(&states).zip(&expiries) {
                    entry.expires_at = entry.expires_at.max(*expires_at);
                    match entry.cells.iter_mut().find(|c| c.slot == key.slot) {
                        Some(cell) => cell.state = *state,
                        None => {
                            entry.cells.push(Cell {
                                slot: key.slot,
                                state: *state,
                            });
                            *cells += 1;
                            grew = true;
                        }
                    }
                }
                if grew {
                    self.enforce_cap(shard, now, keys);
                }
            }
            None => {
                for (state, key) in states.iter_mut().zip(keys) {
                    *state = self.recall(scope, key.slot, now);
                }
                if !decide(&mut states, &mut expiries) {
                    return;
                }
                let mark = if *track {
                    dirty.push(hash);
                    DIRTY
                } else {
                    0
                };
                let entry = Box::new(Entry {
                    scope: scope.into(),
                    expires_at: expiries.iter().copied().max().unwrap_or(0),
                    touched: *tick | mark,
                    cells: keys
                        .iter()
                        .zip(&states)
                        .map(|(k, s)| Cell {
                            slot: k.slot,
                            state: *s,
                        })
                        .collect(),
                });
                *cells += entry.cells.len();
                let hasher = &self.hasher;
                table.insert_unique(hash, entry, |e| hasher.hash_one(e.scope.as_str()));
                self.enforce_cap(shard, now, keys);
            }
        }
    }

    /// One decision over several scopes, locking their shards in order.
    fn transact_shards(
        &self,
        keys: &[CounterKey<'_>],
        now: Nanos,
        decide: &mut dyn FnMut(&mut [State], &mut [Nanos]) -> bool,
    ) {
        let hashes: SmallVec<[u64; 4]> = keys.iter().map(|k| self.hash(k.scope)).collect();
        let mut shard_ids: SmallVec<[usize; 4]> =
            hashes.iter().map(|h| self.shard_of(*h)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // Lock in shard order, so two decisions never wait on each other in a cycle.
        let mut guards: SmallVec<[(usize, MutexGuard<'_, Shard>); 2]> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].lock()))
            .collect();
        let guard_of = |shard: usize| {
            shard_ids
                .iter()
                .position(|&s| s == shard)
                .expect("every key's shard is locked")
        };

        let mut states: SmallVec<[State; 4]> = SmallVec::with_capacity(keys.len());
        for (key, &hash) in keys.iter().zip(&hashes) {
            let shard = &mut *guards[guard_of(self.shard_of(hash))].1;
            shard.tick += 1;
            let tick = shard.tick;
            let state = shard
                .find_mut(hash, key.scope)
                .map(|e| {
                    e.touched = tick | (e.touched & DIRTY);
                    &*e
                })
                .filter(|e| e.expires_at > now)
                .and_then(|e| e.cells.iter().find(|c| c.slot == key.slot))
                .map_or_else(|| self.recall(key.scope, key.slot, now), |c| c.state);
            states.push(state);
        }
        let mut expiries: SmallVec<[Nanos; 4]> = SmallVec::from_elem(0, keys.len());
        if !decide(&mut states, &mut expiries) {
            return;
        }

        let mut grew: SmallVec<[usize; 2]> = SmallVec::new();
        for (i, (key, &hash)) in keys.iter().zip(&hashes).enumerate() {
            let g = guard_of(self.shard_of(hash));
            let shard = &mut *guards[g].1;
            if shard.write(hash, &self.hasher, *key, states[i], expiries[i], now) {
                grew.push(g);
            }
        }
        for g in grew {
            self.enforce_cap(&mut guards[g].1, now, keys);
        }
    }

    fn warn_evictions(&self, total: u64) {
        if self.full.ready().is_some() {
            tracing::warn!(
                evictions = total,
                capacity = self.capacity(),
                "counter store full: evicting live counters; raise --max-counters (logged at most once every {:?})",
                self.full.every()
            );
        }
    }
}

impl CounterStore for MemoryStore {
    fn transact(
        &self,
        keys: &[CounterKey<'_>],
        now: Nanos,
        decide: &mut dyn FnMut(&mut [State], &mut [Nanos]) -> bool,
    ) {
        match keys.first() {
            Some(first) if keys.iter().all(|k| k.scope == first.scope) => {
                self.transact_scope(first.scope, keys, now, decide);
            }
            _ => self.transact_shards(keys, now, decide),
        }
    }

    fn reset(&self, scope: &str) -> usize {
        let hash = self.hash(scope);
        let mut shard = self.shards[self.shard_of(hash)].lock();
        match shard.table.find_entry(hash, |e| e.scope.as_str() == scope) {
            Ok(entry) => {
                let (removed, _) = entry.remove();
                shard.cells -= removed.cells.len();
                if shard.track {
                    shard.removed.push(removed.scope);
                }
                removed.cells.len()
            }
            Err(_) => 0,
        }
    }

    fn reclaim(&self, now: Nanos) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut shard = s.lock();
                let before = shard.cells;
                shard.retain(|e| e.expires_at > now);
                before - shard.cells
            })
            .sum()
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().cells).sum()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("capacity", &self.capacity())
            .field("evictions", &self.evictions())
            .finish()
    }
}

// === impl Entry ===

impl Entry {
    /// Lists the entry (by `hash`) for the next journal flush, once.
    fn mark_dirty(&mut self, hash: u64, dirty: &mut Vec<u64>) {
        if self.touched & DIRTY == 0 {
            self.touched |= DIRTY;
            dirty.push(hash);
        }
    }
}

// === impl Shard ===

impl Shard {
    fn find_mut(&mut self, hash: u64, scope: &str) -> Option<&mut Entry> {
        self.table
            .find_mut(hash, |e| e.scope.as_str() == scope)
            .map(|e| &mut **e)
    }

    /// Stores `state` for `key`; returns whether a new cell was added.
    fn write(
        &mut self,
        hash: u64,
        hasher: &DefaultHashBuilder,
        key: CounterKey<'_>,
        state: State,
        expires_at: Nanos,
        now: Nanos,
    ) -> bool {
        let tick = self.tick;
        let entry = self
            .table
            .entry(
                hash,
                |e| e.scope.as_str() == key.scope,
                |e| hasher.hash_one(e.scope.as_str()),
            )
            .or_insert_with(|| {
                Box::new(Entry {
                    scope: key.scope.into(),
                    expires_at: 0,
                    touched: tick,
                    cells: SmallVec::new(),
                })
            })
            .into_mut();
        if self.track {
            entry.mark_dirty(hash, &mut self.dirty);
        }
        if entry.expires_at <= now {
            // Everything in it is stale: drop it rather than carry it.
            self.cells -= entry.cells.len();
            entry.cells.clear();
        }
        entry.expires_at = entry.expires_at.max(expires_at);
        if let Some(cell) = entry.cells.iter_mut().find(|c| c.slot == key.slot) {
            cell.state = state;
            false
        } else {
            entry.cells.push(Cell {
                slot: key.slot,
                state,
            });
            self.cells += 1;
            true
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let mut removed = 0;
        self.table.retain(|e| {
            let k = keep(e);
            if !k {
                removed += e.cells.len();
            }
            k
        });
        self.cells -= removed;
    }
}
