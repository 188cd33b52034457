//! Counters out of and back into the store, one row at a time, for what
//! persists them across a restart (`crate::persist`): every live counter of
//! a shard, the counters of a shard changed since it was last drained, and a
//! row put back. Rows borrow from the store; nothing here allocates per
//! counter, so a million counters cost no more than one shard's worth of
//! whatever the caller encodes them into.

use super::{CounterKey, CounterStore, DIRTY, MemoryStore, Nanos, Shard, SlotRegistry, State};

/// One counter's state, or a scope reset, as persisted. The identity is
/// spelled out: slot numbers are per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row<'a> {
    /// A counter of `scope` for the limit identity `identity`.
    Counter {
        /// The subject or account counted.
        scope: &'a str,
        /// The limit identity (`plans::SlotRegistry`).
        identity: &'a str,
        /// Its state.
        state: State,
        /// When its entry expires.
        expires_at: Nanos,
    },
    /// Every counter of `scope` was forgotten (`ResetUsage`).
    Reset {
        /// The scope.
        scope: &'a str,
    },
}

// === impl MemoryStore ===

impl MemoryStore {
    /// How many shards the rows come in.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every live counter of shard `shard` at `now`, to `emit`, under the
    /// shard's lock. With `clear`, its change marks are cleared too: what
    /// the caller writes holds every change so far.
    pub fn live_rows(
        &self,
        shard: usize,
        now: Nanos,
        slots: &SlotRegistry,
        clear: bool,
        emit: &mut dyn FnMut(Row<'_>),
    ) {
        let mut guard = self.shards[shard].lock();
        let Shard {
            table,
            dirty,
            removed,
            ..
        } = &mut *guard;
        if clear {
            dirty.clear();
            removed.clear();
        }
        for entry in table.iter_mut() {
            if clear {
                entry.touched &= !DIRTY;
            }
            if entry.expires_at <= now {
                continue;
            }
            for cell in &entry.cells {
                if let Some(identity) = slots.identity(cell.slot) {
                    emit(Row::Counter {
                        scope: entry.scope.as_str(),
                        identity: &identity,
                        state: cell.state,
                        expires_at: entry.expires_at,
                    });
                }
            }
        }
    }

    /// The rows of shard `shard` changed since it was last drained (resets
    /// first, so a scope reset and counted again keeps its new counts), to
    /// `emit`, under the shard's lock; clears the marks. An entry changed
    /// and then expired is emitted as a reset.
    pub fn drain_changes(
        &self,
        shard: usize,
        now: Nanos,
        slots: &SlotRegistry,
        emit: &mut dyn FnMut(Row<'_>),
    ) {
        let mut guard = self.shards[shard].lock();
        let Shard {
            table,
            dirty,
            removed,
            ..
        } = &mut *guard;
        for scope in removed.drain(..) {
            emit(Row::Reset {
                scope: scope.as_str(),
            });
        }
        for hash in dirty.drain(..) {
            for entry in table.iter_hash_mut(hash) {
                if entry.touched & DIRTY == 0 {
                    continue;
                }
                entry.touched &= !DIRTY;
                if entry.expires_at <= now {
                    emit(Row::Reset {
                        scope: entry.scope.as_str(),
                    });
                    continue;
                }
                for cell in &entry.cells {
                    if let Some(identity) = slots.identity(cell.slot) {
                        emit(Row::Counter {
                            scope: entry.scope.as_str(),
                            identity: &identity,
                            state: cell.state,
                            expires_at: entry.expires_at,
                        });
                    }
                }
            }
        }
        // The lists' capacity follows the busiest interval; give back what
        // a burst left behind.
        if dirty.capacity() > 4096 {
            dirty.shrink_to(dirty.capacity() / 4);
        }
    }

    /// Puts `row` back (a counter that has not expired by `now`, or a
    /// reset); returns whether a counter was restored.
    pub fn restore(&self, row: Row<'_>, now: Nanos, slots: &SlotRegistry) -> bool {
        match row {
            Row::Reset { scope } => {
                self.reset(scope);
                false
            }
            Row::Counter { expires_at, .. } if expires_at <= now => false,
            Row::Counter {
                scope,
                identity,
                state,
                expires_at,
            } => {
                let key = CounterKey {
                    scope,
                    slot: slots.intern(identity),
                };
                self.transact(&[key], now, &mut |states, expiries| {
                    states[0] = state;
                    expiries[0] = expires_at;
                    true
                });
                true
            }
        }
    }

    /// Lists every change from now on, for [`MemoryStore::drain_changes`];
    /// off by default, so a store nothing persists keeps no lists. Call it
    /// once, after restoring (restored counters are not changes).
    pub fn track_changes(&self) {
        for shard in self.shards.iter() {
            shard.lock().track = true;
        }
    }
}
