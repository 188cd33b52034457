//! What evicted counters had counted, kept in fixed memory so that eviction
//! never hands back quota.
//!
//! When the store must evict a live counter to stay within its cap, the
//! counter's state is folded into a count-min sketch of its limit identity
//! (its slot): [`ROWS`] rows of cells, the counter hashed to one cell per
//! row, each cell holding the [`Algorithm::upper`] of every state folded into
//! it. A counter created again (its scope or its cell not in the store)
//! starts from the [`Algorithm::lower`] of its cells, read as of now. Every
//! cell it maps to holds at least its own state, so the estimate never
//! under-counts: a flood of junk subjects costs the subjects it evicts
//! nothing.
//!
//! The error is only ever against the client, and bounded. A counter starts
//! from more than it had only when, in every row, another evicted counter of
//! the same limit whose window has not ended shares its cell. Each fold
//! raises a cell by at most what the folded counter itself counted since it
//! was last recalled, so a cell never holds more than the sum of what its
//! counters counted: a counter starts from at most its own count plus, in
//! its least crowded row, what its neighbours there counted (count-min's
//! bound: with `N` units counted by evicted counters of one limit still in
//! their window, and `w` cells a row, at most `N / w` on average in a row,
//! and more than `e · N / w` with a chance below `e^-ROWS` ≈ 2%). With `n`
//! such counters, the chance of any neighbour in every row is
//! `(1 - (1 - 1/w)^n)^ROWS`: below 1 in 10,000 while `n < w / 10`. In
//! `tests/memory_store.rs`, 200,000 junk subjects of one request each
//! through a store of 100,000 counters (`w` = 8,192) cost a newcomer at most
//! 2 requests of its 500. Cells empty themselves as windows end and buckets
//! refill.
//!
//! Memory: one sketch per limit identity that evicted something, allocated
//! on its first eviction, [`ROWS`] × `w` cells of 32 bytes, where `w` is the
//! store's capacity / 16 (a power of two, 1,024 to 65,536): 8 bytes per
//! counter of capacity, at most 8 MiB a limit identity.
//!
//! What is not remembered: a counter whose limit identity has no algorithm on
//! record (one restored from a snapshot whose limit has left the
//! configuration: nothing counts on it), a reset (`ResetUsage` forgets the
//! store's counters, not the sketch's cells) and the sketch itself across a
//! restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use crate::engine::{Algorithm, Nanos, State};
use crate::plans::SlotRegistry;

/// Rows of each sketch.
pub const ROWS: usize = 4;

/// Cells per lock.
const GROUP: usize = 16;

/// Every sketch of one store.
#[derive(Default)]
pub(super) struct Evicted {
    /// How each slot counts; none until the limiter hands it over.
    slots: OnceLock<Arc<SlotRegistry>>,
    /// Sketches by slot.
    sketches: RwLock<HashMap<u32, Arc<Sketch>>>,
    /// Whether anything was ever folded in: until then a lookup costs one
    /// load.
    any: AtomicBool,
    /// Cells per row of every sketch.
    width: usize,
}

/// One limit identity's sketch.
struct Sketch {
    algorithm: Algorithm,
    window: Nanos,
    /// `ROWS` rows of `width` cells, in groups of [`GROUP`] under one lock.
    cells: Box<[Mutex<[State; GROUP]>]>,
    width: usize,
}

// === impl Evicted ===

impl Evicted {
    /// Sketches for a store of `capacity` counters.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            width: (capacity / 16).next_power_of_two().clamp(1024, 65_536),
            ..Self::default()
        }
    }

    /// From now on, evicted counters of the slots `slots` describes are
    /// remembered. The first registry given stays.
    pub(super) fn remember(&self, slots: Arc<SlotRegistry>) {
        let _ = self.slots.set(slots);
    }

    /// Folds the state of the evicted counter (`hash` of its scope, `slot`).
    pub(super) fn fold(&self, hash: u64, slot: u32, state: State, now: Nanos) {
        let Some((algorithm, window)) = self.slots.get().and_then(|s| s.family(slot)) else {
            return;
        };
        if algorithm.at(state, window, now) == algorithm.at(State::default(), window, now) {
            return;
        }
        let sketch = self.sketches.read().get(&slot).cloned();
        let sketch = sketch.unwrap_or_else(|| {
            self.sketches
                .write()
                .entry(slot)
                .or_insert_with(|| Arc::new(Sketch::new(algorithm, window, self.width)))
                .clone()
        });
        sketch.fold(hash, state, now);
        self.any.store(true, Ordering::Release);
    }

    /// Whether anything was ever folded in.
    pub(super) fn active(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// What a counter (`hash` of its scope, `slot`) absent from the store
    /// starts from: never less than it had when evicted.
    pub(super) fn recall(&self, hash: u64, slot: u32, now: Nanos) -> State {
        match self.sketches.read().get(&slot) {
            Some(sketch) => sketch.recall(hash, now),
            None => State::default(),
        }
    }

    /// Bytes held by the sketches.
    pub(super) fn bytes(&self) -> usize {
        self.sketches.read().len() * ROWS * self.width * std::mem::size_of::<State>()
    }
}

// === impl Sketch ===

impl Sketch {
    fn new(algorithm: Algorithm, window: Nanos, width: usize) -> Self {
        Self {
            algorithm,
            window,
            cells: (0..ROWS * width / GROUP)
                .map(|_| Mutex::new([State::default(); GROUP]))
                .collect(),
            width,
        }
    }

    /// The cell of `hash` in each row (Kirsch–Mitzenmacher: two hashes make
    /// `ROWS`), as (group, index in group).
    fn cells(&self, hash: u64) -> impl Iterator<Item = (usize, usize)> + '_ {
        let h1 = hash as u32 as usize;
        let h2 = ((hash >> 32) as usize) | 1;
        (0..ROWS).map(move |row| {
            let at = row * self.width + (h1.wrapping_add(row.wrapping_mul(h2)) & (self.width - 1));
            (at / GROUP, at % GROUP)
        })
    }

    fn fold(&self, hash: u64, state: State, now: Nanos) {
        for (group, i) in self.cells(hash) {
            let mut cells = self.cells[group].lock();
            cells[i] = self.algorithm.upper(cells[i], state, self.window, now);
        }
    }

    fn recall(&self, hash: u64, now: Nanos) -> State {
        let mut estimate: Option<State> = None;
        for (group, i) in self.cells(hash) {
            let cell = self.cells[group].lock()[i];
            estimate = Some(match estimate {
                None => self.algorithm.at(cell, self.window, now),
                Some(e) => self.algorithm.lower(e, cell, self.window, now),
            });
        }
        estimate.unwrap_or_default()
    }
}

impl std::fmt::Debug for Evicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evicted")
            .field("sketches", &self.sketches.read().len())
            .field("width", &self.width)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Rate, algorithm::fixed_window};

    const MIN: Nanos = 60_000_000_000;
    const T0: Nanos = 1_800_000_000 * 1_000_000_000;

    #[test]
    fn a_recalled_counter_never_counts_less_than_it_had() {
        let slots = Arc::new(SlotRegistry::default());
        let slot = slots.intern_counter("x", Algorithm::FixedWindow, MIN);
        let evicted = Evicted::new(1024);
        evicted.remember(slots);
        let rate = Rate::new(500, MIN).expect("nonzero");
        // 5,000 counters, each with its own count, in 1,024 cells a row.
        for i in 0..5_000u64 {
            let state = fixed_window::step(State::default(), rate, T0, i % 500).counted;
            evicted.fold(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), slot, state, T0);
        }
        for i in 0..5_000u64 {
            let got = evicted.recall(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), slot, T0 + 1);
            assert!(got.b >= i % 500, "counter {i}: {got:?}");
        }
        // The window ends: nothing is remembered.
        assert_eq!(evicted.recall(7, slot, T0 + MIN).b, 0);
    }
}
