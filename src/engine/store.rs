//! The contract every counter backend meets.
//!
//! A store keeps one [`State`] per [`CounterKey`] and runs a decision over
//! several of them as one atomic unit: the closure sees every state of the
//! decision under the store's lock and says whether its new states are kept.
//! That is what makes a decision all-or-nothing and exact under concurrency.

use super::clock::Nanos;

/// What identifies a counter: who is counted (`scope`, a subject or an
/// account) and which limit identity (`slot`: class, unit, window, algorithm,
/// `per`) it counts for. Plans are not part of it, so usage carries over a plan
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey<'a> {
    /// The subject or account counted.
    pub scope: &'a str,
    /// The interned limit identity (see `plans::SlotRegistry`).
    pub slot: u32,
}

/// The stored state of one counter: four words, as stores keep and journal
/// them. Each algorithm reads and writes them only through its own typed
/// view (a fixed window's index and count, a sliding window's two counts,
/// GCRA's arrival time, the ring's seven buckets; see `algorithm`); all
/// zeroes is the state of a counter never used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// The first word.
    pub a: u64,
    /// The second word.
    pub b: u64,
    /// The third word.
    pub c: u64,
    /// The fourth word (only the ring's).
    pub d: u64,
}

/// A counter backend.
pub trait CounterStore: Send + Sync {
    /// Runs `decide` over the current states of `keys` (in order; unused
    /// counters read as `State::default()`), holding every one of them locked.
    /// When `decide` returns `true`, the states it left in the slice are stored
    /// with the expiry given for each key in `expiries`; otherwise nothing changes.
    fn transact(
        &self,
        keys: &[CounterKey<'_>],
        now: Nanos,
        decide: &mut dyn FnMut(&mut [State], &mut [Nanos]) -> bool,
    );

    /// Forgets every counter of `scope`; returns how many there were.
    fn reset(&self, scope: &str) -> usize;

    /// Drops state that has expired by `now`; returns how many counters went.
    fn reclaim(&self, now: Nanos) -> usize;

    /// How many counters are held.
    fn len(&self) -> usize;

    /// Whether no counter is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
