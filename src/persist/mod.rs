//! Counters across a restart and a crash, in one place: [`Persistence`]
//! restores them before the server serves, flushes what changed every
//! interval, and saves them at a graceful stop.
//!
//! Two files beside the state file, in [`file`]'s checked format:
//!
//! - the **journal** (`STATE.journal`), with `--journal-interval` on: its
//!   first records are every live counter when it was written, then every
//!   flush appends the counters changed since (and the scopes reset). It is
//!   complete on its own; a crash loses at most the flushes it did not get.
//! - the **snapshot** (`STATE.counters`), with the journal off: every live
//!   counter at the last graceful stop.
//!
//! Each file carries an epoch, and the newer file wins: a journal is read
//! only when its epoch is above the snapshot's, else the snapshot is. A file
//! is only ever replaced by writing a new one aside, syncing it, renaming it
//! over the old one and syncing the directory, and the file it supersedes
//! is removed only after that. So every crash point leaves a complete file
//! whose epoch says it is the one to read: a crash mid-start, mid-flush,
//! mid-rewrite or mid-save loses at most the journal interval (restoring
//! the same counters twice counts them once: rows are states, not deltas).
//!
//! Every record is checksummed. A torn tail (a crash mid-append) is cut with
//! a warning naming its offset; damage anywhere else stops the start with
//! one line, as a damaged state file does: nothing is silently dropped or
//! restored wrong. A failed append is cut back to the last good length, and
//! the next flush rewrites the journal whole (the changes it took are in
//! the store, not in a list).
//!
//! Memory: rows are encoded a shard at a time into one buffer and written
//! before the next shard is read, so a flush or a rewrite of a million
//! counters holds one shard's worth of bytes, never the whole set.

mod file;
mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::engine::{CounterStore, Nanos};
use crate::plans::SlotRegistry;
use crate::state::RuntimeState;
use crate::storage::memory::MemoryStore;
use file::{Kind, Next, Reader, Writer};
pub use record::Entry;

/// Bytes buffered before they are written, within a shard's rows.
const WRITE_AT: usize = 1 << 20;

/// Reservations, written in the counters' files (`limiter::reservations`)
/// so that a restore never pairs a reservation with counters that do not
/// hold its estimate, nor forgets a settle whose refund they hold.
///
/// Each flush appends, as one cut taken while no reservation opens or
/// settles ([`Ledger::still`]): the settles since the last flush, then the
/// changed counters, then the reservations opened since. Any prefix of
/// that (a crash mid-append) is safe: a settle whose refund is missing
/// gives back too little, never twice; a reservation whose record is
/// missing is lost (its estimate stays counted, it returns nothing).
pub trait Ledger: Send + Sync {
    /// Runs `f` while no reservation is opened or settled.
    fn still(&self, f: &mut dyn FnMut() -> Result<(), PersistError>) -> Result<(), PersistError>;
    /// Every reservation held (a settled one's settle too), and forgets
    /// what was queued: a whole file holds them all.
    fn held(&self, slots: &SlotRegistry, emit: &mut dyn FnMut(Entry<'_>));
    /// The reservations opened since last taken.
    fn take_opened(&self, slots: &SlotRegistry, emit: &mut dyn FnMut(Entry<'_>));
    /// The settles and expiries since last taken.
    fn take_closed(&self, emit: &mut dyn FnMut(Entry<'_>));
    /// A record read back, in file order.
    fn restore(&self, entry: Entry<'_>, slots: &SlotRegistry, now: Nanos);
    /// Once read back: the units in flight (`unit: concurrent`) each
    /// restored reservation holds, by scope and slot.
    fn in_flight(&self, emit: &mut dyn FnMut(&str, u32, u64));
}

/// No reservations (tests, and servers that keep none here).
impl Ledger for () {
    fn still(&self, f: &mut dyn FnMut() -> Result<(), PersistError>) -> Result<(), PersistError> {
        f()
    }
    fn held(&self, _: &SlotRegistry, _: &mut dyn FnMut(Entry<'_>)) {}
    fn take_opened(&self, _: &SlotRegistry, _: &mut dyn FnMut(Entry<'_>)) {}
    fn take_closed(&self, _: &mut dyn FnMut(Entry<'_>)) {}
    fn restore(&self, _: Entry<'_>, _: &SlotRegistry, _: Nanos) {}
    fn in_flight(&self, _: &mut dyn FnMut(&str, u32, u64)) {}
}

/// Counters across restarts: the journal or the snapshot beside a state
/// file.
pub struct Persistence {
    journal_path: PathBuf,
    snapshot_path: PathBuf,
    usage_path: PathBuf,
    /// One usage save at a time: the last one started is the last written.
    usage_lock: Mutex<()>,
    /// Flush every this long; `None`: only at a graceful stop, as a
    /// snapshot.
    every: Option<Duration>,
    /// The journal, once started, and its epoch.
    journal: Mutex<Option<Open>>,
    /// The epoch of the files this run writes.
    epoch: Mutex<u64>,
    /// A write failed: the next flush rewrites the journal whole.
    rewrite: AtomicBool,
    faults: Option<Faults>,
}

/// The journal open for appending.
struct Open {
    writer: Writer,
    /// Its size when it was last rewritten, to know when to rewrite again.
    base: u64,
}

/// A point where a test crashes the process, in process ([`Faults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Restore: the files read, nothing written yet.
    Restored,
    /// A new file's rows written, not synced.
    Written,
    /// A new file synced, not renamed into place.
    Synced,
    /// A new file renamed into place, the directory not synced.
    Renamed,
    /// The superseded files removed.
    Removed,
    /// A flush's rows appended, not synced.
    Appended,
}

/// Every [`Step`], in no particular order.
pub const STEPS: [Step; 6] = [
    Step::Restored,
    Step::Written,
    Step::Synced,
    Step::Renamed,
    Step::Removed,
    Step::Appended,
];

/// What a test does at a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Crash: the operation stops at once, leaving its files as a killed
    /// process would (no clean-up).
    Crash,
    /// Fail as a full disk would: the operation handles it as any I/O error.
    Fail,
}

/// Says, at each step, what goes wrong there, if anything.
pub type Faults = Arc<dyn Fn(Step) -> Option<Fault> + Send + Sync>;

/// A counter file problem.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file is not what was written: starting needs the operator.
    #[error(
        "counter file {} is damaged at byte {offset}: {reason}; move it aside to start without the counters it holds",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("counter file {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed: in the message, not also a `source()`.
        error: std::io::Error,
    },
    /// The counters saved by the previous version (in the state file)
    /// could not be read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A test crashed the operation here ([`Faults`]).
    #[error("crashed at {0:?} (a test's fault)")]
    Crashed(Step),
}

/// What a restore found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Counters held once restored: a counter the journal wrote many times
    /// counts once.
    pub counters: usize,
    /// The file they came from.
    pub from: Option<PathBuf>,
    /// Where a torn tail was cut, if one was.
    pub torn_at: Option<u64>,
}

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Counters written.
    pub counters: u64,
    /// Where.
    pub path: PathBuf,
}

// === impl Persistence ===

impl Persistence {
    /// The counter files beside the state file `state`, journaled every
    /// `every` (`None` or zero: snapshot at a graceful stop only).
    pub fn beside(state: &Path, every: Option<Duration>) -> Self {
        let with = |suffix: &str| {
            let mut name = state.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Self {
            journal_path: with(".journal"),
            snapshot_path: with(".counters"),
            usage_path: with(".usage"),
            usage_lock: Mutex::new(()),
            every: every.filter(|e| !e.is_zero()),
            journal: Mutex::new(None),
            epoch: Mutex::new(0),
            rewrite: AtomicBool::new(false),
            faults: None,
        }
    }

    /// As it is, crashing where `faults` says (tests).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// How often the journal is flushed; `None`: it is off.
    pub fn every(&self) -> Option<Duration> {
        self.every
    }

    /// The journal's path.
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// The snapshot's path.
    pub fn snapshot_path(&self) -> &Path {
        &self.snapshot_path
    }

    /// The usage rollups' path (`Admin.ExportUsage`).
    pub fn usage_path(&self) -> &Path {
        &self.usage_path
    }

    /// Writes the usage rollups' bytes (their own format, checksummed, from
    /// `snapshot`, taken while no other save runs, so the newest snapshot is
    /// the last written) in place of the last ones: to a temporary file,
    /// synced, renamed over, the directory synced. A crash leaves the old
    /// file or the new one. The size written.
    pub fn save_usage(&self, snapshot: impl FnOnce() -> Vec<u8>) -> Result<usize, PersistError> {
        use std::io::Write;
        let _one = self.usage_lock.lock();
        let bytes = snapshot();
        let tmp = with_suffix(&self.usage_path, ".tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| PersistError::io(&tmp, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| PersistError::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.usage_path)
            .map_err(|e| PersistError::io(&self.usage_path, e))?;
        file::sync_dir(&self.usage_path)?;
        Ok(bytes.len())
    }

    /// The usage rollups' bytes as last saved; `None` when there are none.
    pub fn load_usage(&self) -> Result<Option<Vec<u8>>, PersistError> {
        match std::fs::read(&self.usage_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PersistError::io(&self.usage_path, e)),
        }
    }

    /// Restores the counters into `store` (empty, not yet tracking changes)
    /// from the newer of the journal and the snapshot (or, once, from what
    /// the previous version saved in `legacy`, the state file). With the
    /// journal on, then writes a new one holding every restored counter and
    /// removes what it supersedes, and starts tracking changes. Blocks:
    /// call it before serving.
    pub fn restore(
        &self,
        store: &MemoryStore,
        legacy: Option<&RuntimeState>,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<Restored, PersistError> {
        let journal = Reader::open(&self.journal_path, Kind::Journal)?;
        let snapshot = Reader::open(&self.snapshot_path, Kind::Snapshot)?;
        let journal_epoch = journal.as_ref().map(|(_, e)| *e);
        let snapshot_epoch = snapshot.as_ref().map(|(_, e)| *e);
        let mut restored = Restored::default();
        let mut legacy_rows = false;
        let newer_journal = match (&journal, &snapshot) {
            (Some((_, j)), Some((_, s))) => j > s,
            (journal, _) => journal.is_some(),
        };
        match (journal, snapshot) {
            (Some((reader, _)), _) if newer_journal => {
                if reader.legacy() {
                    legacy_rows = true;
                    // The previous version's snapshot came first, then its journal.
                    if let Some(saved) = legacy
                        .map(RuntimeState::legacy_counters)
                        .transpose()?
                        .flatten()
                    {
                        restore_legacy_snapshot(store, &saved, now, slots);
                    }
                }
                self.read_into(
                    store,
                    reader,
                    Kind::Journal,
                    (now, slots, ledger),
                    &mut restored,
                )?;
            }
            (_, Some((reader, _))) => {
                self.read_into(
                    store,
                    reader,
                    Kind::Snapshot,
                    (now, slots, ledger),
                    &mut restored,
                )?;
            }
            (_, None) => {
                if let Some(saved) = legacy
                    .map(RuntimeState::legacy_counters)
                    .transpose()?
                    .flatten()
                {
                    legacy_rows = true;
                    restore_legacy_snapshot(store, &saved, now, slots);
                    restored.from = legacy.map(|l| l.path().to_owned());
                }
            }
        }
        recount_in_flight(store, now, slots, ledger);
        restored.counters = store.len();
        self.step(Step::Restored)?;
        let epoch = journal_epoch.max(snapshot_epoch).unwrap_or(0) + 1;
        *self.epoch.lock() = epoch;
        if self.every.is_some() {
            // A new journal holds everything restored; what it supersedes
            // goes only once it is in place.
            self.rewrite(store, now, slots, ledger)?;
            store.track_changes();
        } else if legacy_rows {
            // The previous version's files are replaced now, by a snapshot.
            self.write_snapshot(store, now, slots, ledger)?;
        }
        if legacy_rows && let Some(state) = legacy {
            state.drop_legacy_counters()?;
        }
        Ok(restored)
    }

    /// Reads every row of `reader` into `store`; a torn journal tail is
    /// noted in `restored`, a torn snapshot is damage.
    fn read_into(
        &self,
        store: &MemoryStore,
        mut reader: Reader,
        kind: Kind,
        (now, slots, ledger): (Nanos, &SlotRegistry, &dyn Ledger),
        restored: &mut Restored,
    ) -> Result<(), PersistError> {
        let path = reader.path().to_owned();
        let legacy = reader.legacy();
        restored.from = Some(path.clone());
        let (mut ended, mut rows) = (false, 0);
        loop {
            match reader.next()? {
                Next::Row(row) => {
                    if ended {
                        return Err(PersistError::damaged(&path, 0, "rows after its end"));
                    }
                    rows += 1;
                    store.restore(row, now, slots);
                }
                Next::Entry(entry) => {
                    if ended {
                        return Err(PersistError::damaged(&path, 0, "records after its end"));
                    }
                    ledger.restore(entry, slots, now);
                }
                Next::End(n) if n == rows => ended = true,
                Next::End(n) => {
                    let reason = format!("its end counts {n} rows, it holds {rows}");
                    return Err(PersistError::damaged(&path, 0, &reason));
                }
                Next::Eof => break,
                Next::Torn(at) if kind == Kind::Journal || legacy => {
                    restored.torn_at = Some(at);
                    break;
                }
                Next::Torn(at) => return Err(PersistError::damaged(&path, at, "cut short")),
            }
        }
        if kind == Kind::Snapshot && !ended && !legacy {
            return Err(PersistError::damaged(&path, 0, "it has no end record"));
        }
        Ok(())
    }

    /// Appends the counters changed since the last flush to the journal and
    /// syncs it; after a failed write, or once it holds far more than the
    /// live counters, rewrites it whole instead. Blocks: call it from the
    /// blocking pool. Returns the journal's size.
    pub fn flush(
        &self,
        store: &MemoryStore,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<u64, PersistError> {
        if self.every.is_none() {
            return Ok(0);
        }
        let oversized = self.journal.lock().as_ref().is_some_and(|open| {
            // About 70 bytes a row: rewritten past twice the live set, and 64 MiB.
            let live = store.len() as u64 * 70;
            open.writer.len() > open.base.max(2 * live) + (64 << 20)
        });
        if oversized || self.rewrite.load(Ordering::Acquire) {
            self.rewrite(store, now, slots, ledger)?;
            return Ok(self.journal.lock().as_ref().map_or(0, |o| o.writer.len()));
        }
        let mut guard = self.journal.lock();
        let Some(open) = guard.as_mut() else {
            drop(guard);
            self.rewrite(store, now, slots, ledger)?;
            return Ok(0);
        };
        let good = open.writer.len();
        let appended = self.append(store, &mut open.writer, now, slots, ledger);
        match appended {
            Ok(()) => Ok(open.writer.len()),
            Err(e @ PersistError::Crashed(_)) => Err(e),
            Err(e) => {
                // The changes taken are still in the store: a rewrite finds
                // them. Cut back to the last good length now, so nothing
                // ever follows a torn record.
                self.rewrite.store(true, Ordering::Release);
                let _ = open.writer.cut_to(good);
                Err(e)
            }
        }
    }

    fn append(
        &self,
        store: &MemoryStore,
        writer: &mut Writer,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<(), PersistError> {
        let mut failed = None;
        // One cut, in the order that keeps every prefix safe (see Ledger).
        ledger.still(&mut || {
            ledger.take_closed(&mut |entry| writer.push_entry(&entry));
            for shard in 0..store.shard_count() {
                store.drain_changes(shard, now, slots, &mut |row| writer.push(&row));
                if writer.buffered() >= WRITE_AT
                    && let Err(e) = writer.write()
                {
                    // Drain every shard anyway: the rewrite that follows holds it all.
                    failed.get_or_insert(e);
                }
            }
            ledger.take_opened(slots, &mut |entry| writer.push_entry(&entry));
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        writer.write()?;
        self.step(Step::Appended)?;
        writer.sync()
    }

    /// Writes a new journal of every live counter beside the old one,
    /// syncs it and renames it into place, then removes the snapshot it
    /// supersedes. Clears the store's change marks shard by shard as it
    /// writes them.
    fn rewrite(
        &self,
        store: &MemoryStore,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<(), PersistError> {
        let epoch = *self.epoch.lock();
        let tmp = with_suffix(&self.journal_path, ".tmp");
        let written = self.write_new(
            &tmp,
            Kind::Journal,
            epoch,
            store,
            (now, slots, ledger),
            true,
        );
        let writer = match written {
            Ok(w) => w,
            Err(e) => {
                self.rewrite.store(true, Ordering::Release);
                if !matches!(e, PersistError::Crashed(_)) {
                    let _ = std::fs::remove_file(&tmp);
                }
                return Err(e);
            }
        };
        self.replace(&tmp, &self.journal_path, &[&self.snapshot_path])
            .inspect_err(|_| self.rewrite.store(true, Ordering::Release))?;
        let len = writer.len();
        drop(writer);
        let writer = Writer::append(&self.journal_path, len)?;
        *self.journal.lock() = Some(Open { writer, base: len });
        self.rewrite.store(false, Ordering::Release);
        Ok(())
    }

    /// At a graceful stop: with the journal on, a last flush; otherwise a
    /// snapshot of every live counter (replacing the previous one), after
    /// which any journal it supersedes is removed.
    pub fn save(
        &self,
        store: &MemoryStore,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<Saved, PersistError> {
        if self.every.is_some() {
            self.flush(store, now, slots, ledger)?;
            return Ok(Saved {
                counters: store.len() as u64,
                path: self.journal_path.clone(),
            });
        }
        self.write_snapshot(store, now, slots, ledger)
    }

    fn write_snapshot(
        &self,
        store: &MemoryStore,
        now: Nanos,
        slots: &SlotRegistry,
        ledger: &dyn Ledger,
    ) -> Result<Saved, PersistError> {
        let epoch = {
            let mut epoch = self.epoch.lock();
            *epoch += 1;
            *epoch
        };
        let tmp = with_suffix(&self.snapshot_path, ".tmp");
        let written = self.write_new(
            &tmp,
            Kind::Snapshot,
            epoch,
            store,
            (now, slots, ledger),
            false,
        );
        let writer = match written {
            Ok(w) => w,
            Err(e) => {
                if !matches!(e, PersistError::Crashed(_)) {
                    let _ = std::fs::remove_file(&tmp);
                }
                return Err(e);
            }
        };
        self.replace(&tmp, &self.snapshot_path, &[&self.journal_path])?;
        Ok(Saved {
            counters: writer.rows(),
            path: self.snapshot_path.clone(),
        })
    }

    /// A new file at `path` of every live counter, written and synced.
    #[allow(clippy::too_many_arguments)]
    fn write_new(
        &self,
        path: &Path,
        kind: Kind,
        epoch: u64,
        store: &MemoryStore,
        (now, slots, ledger): (Nanos, &SlotRegistry, &dyn Ledger),
        clear: bool,
    ) -> Result<Writer, PersistError> {
        let mut writer = Writer::create(path, kind, epoch)?;
        // One cut: every reservation, then every counter.
        ledger.still(&mut || {
            ledger.held(slots, &mut |entry| writer.push_entry(&entry));
            for shard in 0..store.shard_count() {
                store.live_rows(shard, now, slots, clear, &mut |row| {
                    writer.push(&row);
                });
                if writer.buffered() >= WRITE_AT {
                    writer.write()?;
                }
            }
            Ok(())
        })?;
        if kind == Kind::Snapshot {
            writer.end();
        }
        writer.write()?;
        self.step(Step::Written)?;
        writer.sync()?;
        Ok(writer)
    }

    /// Renames the synced file `tmp` over `path`, makes that durable, then
    /// removes `superseded`.
    fn replace(&self, tmp: &Path, path: &Path, superseded: &[&Path]) -> Result<(), PersistError> {
        self.step(Step::Synced)?;
        std::fs::rename(tmp, path).map_err(|e| PersistError::io(path, e))?;
        self.step(Step::Renamed)?;
        file::sync_dir(path)?;
        for old in superseded {
            match std::fs::remove_file(old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PersistError::io(old, e)),
            }
        }
        file::sync_dir(path)?;
        self.step(Step::Removed)
    }

    fn step(&self, step: Step) -> Result<(), PersistError> {
        match self.faults.as_ref().and_then(|f| f(step)) {
            Some(Fault::Crash) => Err(PersistError::Crashed(step)),
            Some(Fault::Fail) => Err(PersistError::io(
                &self.journal_path,
                std::io::Error::other(format!("failed at {step:?} (a test's fault)")),
            )),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("journal", &self.journal_path)
            .field("snapshot", &self.snapshot_path)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

// === impl PersistError ===

impl PersistError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }

    fn damaged(path: &Path, offset: u64, reason: &str) -> Self {
        Self::Damaged {
            path: path.to_owned(),
            offset,
            reason: reason.to_owned(),
        }
    }
}

/// Sets every counter of requests in flight (`unit: concurrent`) to what
/// the restored reservations hold: a slot whose reservation was lost in a
/// crash is free again, never held for good.
fn recount_in_flight(store: &MemoryStore, now: Nanos, slots: &SlotRegistry, ledger: &dyn Ledger) {
    use std::collections::HashMap;
    let in_flight = |slot: u32| {
        slots
            .family(slot)
            .is_some_and(|(_, window)| window == crate::plans::IN_FLIGHT)
    };
    let mut held: HashMap<(String, u32), u64> = HashMap::new();
    ledger.in_flight(&mut |scope, slot, units| {
        *held.entry((scope.to_owned(), slot)).or_default() += units;
    });
    let mut counted: Vec<(String, u32)> = Vec::new();
    for shard in 0..store.shard_count() {
        store.live_rows(shard, now, slots, false, &mut |row| {
            if let crate::storage::memory::Row::Counter {
                scope, identity, ..
            } = row
            {
                let slot = slots.intern(identity);
                if in_flight(slot) {
                    counted.push((scope.to_owned(), slot));
                }
            }
        });
    }
    let keys: std::collections::HashSet<(String, u32)> =
        counted.into_iter().chain(held.keys().cloned()).collect();
    for (scope, slot) in keys {
        let units = held.get(&(scope.clone(), slot)).copied().unwrap_or(0);
        let Some(identity) = slots.identity(slot) else {
            continue;
        };
        // The window that never ends: index 0, this many in it.
        store.restore(
            crate::storage::memory::Row::Counter {
                scope: &scope,
                identity: &identity,
                state: crate::engine::State {
                    a: now / crate::plans::IN_FLIGHT,
                    b: units,
                    ..Default::default()
                },
                expires_at: (now / crate::plans::IN_FLIGHT + 1) * crate::plans::IN_FLIGHT,
            },
            now,
            slots,
        );
    }
}

/// The previous version's snapshot (kept in the state file): its rows,
/// unchecked, as far as they read.
fn restore_legacy_snapshot(store: &MemoryStore, saved: &[u8], now: Nanos, slots: &SlotRegistry) {
    let Some(mut rest) = saved.strip_prefix(file::LEGACY_MAGIC.as_slice()) else {
        return;
    };
    while let Some(row) = record::take(&mut rest) {
        store.restore(row, now, slots);
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
