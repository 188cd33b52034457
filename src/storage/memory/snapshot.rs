//! Counters out of and back into the store: the snapshot a graceful stop
//! saves, the changes the crash journal appends, and reading either back.
//!
//! A record is the scope and the counter's identity (each a u16 length and
//! bytes; slot numbers are per process, identities are not), then the
//! state's four words and its expiry, little-endian. A tombstone (identity
//! [`TOMBSTONE`]) says the scope was reset.

use super::{CounterKey, CounterStore, DIRTY, MemoryStore, Nanos, Shard, SlotRegistry, State};

/// Counters exported for a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The encoded counters.
    pub bytes: Vec<u8>,
    /// How many.
    pub counters: usize,
}

/// The start of every snapshot ([`MemoryStore::export`]); a journal's rows,
/// concatenated after it, read as one.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"TGC1";

/// Counters changed since the last journal flush ([`MemoryStore::take_changes`]).
#[derive(Debug, Default)]
pub struct Changes {
    /// (key, value) rows: the key is a snapshot record's scope and identity,
    /// the value its state words and expiry, so key ++ value is the record.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Key prefixes (a scope) whose rows go: reset or expired.
    pub removed: Vec<Vec<u8>>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.removed.is_empty()
    }
}

// === impl MemoryStore ===

impl MemoryStore {
    /// Every live counter at `now`, with its identity spelled out (slot
    /// numbers are per process), for saving across a restart.
    pub fn export(&self, now: Nanos, slots: &SlotRegistry) -> Snapshot {
        let mut bytes = Vec::from(SNAPSHOT_MAGIC.as_slice());
        let mut counters = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for entry in shard.table.iter().filter(|e| e.expires_at > now) {
                for cell in &entry.cells {
                    let Some(identity) = slots.identity(cell.slot) else {
                        continue;
                    };
                    put_str(&mut bytes, entry.scope.as_str());
                    put_str(&mut bytes, &identity);
                    for word in [
                        cell.state.a,
                        cell.state.b,
                        cell.state.c,
                        cell.state.d,
                        entry.expires_at,
                    ] {
                        bytes.extend_from_slice(&word.to_le_bytes());
                    }
                    counters += 1;
                }
            }
        }
        Snapshot { bytes, counters }
    }

    /// Restores counters saved by [`MemoryStore::export`] (or a journal of
    /// such records, tombstones included, applied in order), skipping any
    /// that expired meanwhile; returns how many records were restored. A
    /// damaged snapshot restores what precedes the damage.
    pub fn import(&self, bytes: &[u8], now: Nanos, slots: &SlotRegistry) -> usize {
        let Some(mut rest) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
            return 0;
        };
        let mut restored = 0;
        while !rest.is_empty() {
            let Some((scope, identity, words)) = read_record(&mut rest) else {
                break;
            };
            if identity == TOMBSTONE {
                self.reset(scope);
                continue;
            }
            let [a, b, c, d, expires_at] = words;
            if expires_at <= now {
                continue;
            }
            let key = CounterKey {
                scope,
                slot: slots.intern(identity),
            };
            self.transact(&[key], now, &mut |states, expiries| {
                states[0] = State { a, b, c, d };
                expiries[0] = expires_at;
                true
            });
            restored += 1;
        }
        restored
    }

    /// Lists every change from now on, for [`MemoryStore::take_changes`]
    /// to drain; off by default, so a store without a journal keeps no lists.
    pub fn track_changes(&self) {
        for shard in self.shards.iter() {
            shard.lock().track = true;
        }
    }

    /// The counters changed (and the scopes reset) since the last call, for
    /// the journal that lets a crash lose at most one flush interval. Locks
    /// one shard at a time, briefly; clears the changed marks.
    pub fn take_changes(&self, now: Nanos, slots: &SlotRegistry) -> Changes {
        let mut changes = Changes::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard {
                table,
                dirty,
                removed,
                ..
            } = &mut *shard;
            for scope in removed.drain(..) {
                changes.removed.push(scope_prefix(&scope));
            }
            for hash in dirty.drain(..) {
                for entry in table.iter_hash_mut(hash) {
                    if entry.touched & DIRTY == 0 {
                        continue;
                    }
                    entry.touched &= !DIRTY;
                    if entry.expires_at <= now {
                        changes.removed.push(scope_prefix(&entry.scope));
                        continue;
                    }
                    for cell in &entry.cells {
                        let Some(identity) = slots.identity(cell.slot) else {
                            continue;
                        };
                        let mut key = scope_prefix(&entry.scope);
                        put_str(&mut key, &identity);
                        let mut value = Vec::with_capacity(40);
                        for word in [
                            cell.state.a,
                            cell.state.b,
                            cell.state.c,
                            cell.state.d,
                            entry.expires_at,
                        ] {
                            value.extend_from_slice(&word.to_le_bytes());
                        }
                        changes.rows.push((key, value));
                    }
                }
            }
        }
        changes
    }

    /// Every live counter as journal rows, to compact the journal; leaves
    /// the changed marks alone.
    pub fn live_rows(&self, now: Nanos, slots: &SlotRegistry) -> Changes {
        let snapshot = self.export(now, slots);
        let mut rows = Vec::with_capacity(snapshot.counters);
        let mut rest = &snapshot.bytes[SNAPSHOT_MAGIC.len()..];
        while !rest.is_empty() {
            let before = rest;
            if read_record(&mut rest).is_none() {
                break;
            }
            let record = &before[..before.len() - rest.len()];
            let (key, value) = record.split_at(record.len() - 40);
            rows.push((key.to_vec(), value.to_vec()));
        }
        Changes {
            rows,
            removed: Vec::new(),
        }
    }
}

/// The key prefix of every journal row of `scope`.
pub(super) fn scope_prefix(scope: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(scope.len() + 32);
    put_str(&mut key, scope);
    key
}

/// The identity of a tombstone record: the scope was reset.
const TOMBSTONE: &str = "\u{0}reset";

/// Ends a tombstone record whose scope was just written (a journal says a
/// scope was reset with it; [`MemoryStore::import`] resets the scope).
pub fn put_tombstone(out: &mut Vec<u8>) {
    put_str(out, TOMBSTONE);
    out.extend_from_slice(&[0; 40]);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

pub(super) fn read_record<'a>(rest: &mut &'a [u8]) -> Option<(&'a str, &'a str, [u64; 5])> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
        let len = u16::from_le_bytes(take(rest, 2)?.try_into().ok()?);
        std::str::from_utf8(take(rest, usize::from(len))?).ok()
    }
    let scope = string(rest)?;
    let identity = string(rest)?;
    let mut words = [0u64; 5];
    for w in &mut words {
        *w = u64::from_le_bytes(take(rest, 8)?.try_into().ok()?);
    }
    Some((scope, identity, words))
}
