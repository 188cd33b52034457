//! Counters across restarts and crashes (`tollgate::persist`), in process:
//! the process is "killed" at every step of a start, a flush, a rewrite and
//! a graceful stop by an injected fault that stops the operation where it
//! is, leaving its files as a crash would; then a new process restores from
//! them. Nothing a completed flush or save made durable is ever lost, a
//! damaged file is reported, never silently used, and a failed write is cut
//! back to the last good length.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tollgate::engine::{Algorithm, CounterKey, CounterStore, Engine, Item, Mode, Rate};
use tollgate::persist::{Fault, PersistError, Persistence, STEPS, Step};
use tollgate::plans::SlotRegistry;
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_799_971_200 * SEC;
const DAY: u64 = 86_400 * SEC;
const IDENTITY: &str = "subject||requests|86400000000000|fixed_window";
const SCOPES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// One process's counters: a store, its slots, its persistence.
struct Process {
    engine: Engine<MemoryStore>,
    slots: Arc<SlotRegistry>,
    persist: Persistence,
}

impl Process {
    /// A process on the state file `state`, with the journal on or off,
    /// failing where `faults` says; not yet restored.
    fn new(state: &Path, journal: bool, faults: Option<(Step, Fault)>) -> Self {
        let slots = Arc::new(SlotRegistry::default());
        slots.intern_counter(IDENTITY, Algorithm::FixedWindow, DAY);
        let mut persist = Persistence::beside(state, journal.then_some(Duration::from_secs(1)));
        if let Some((at, fault)) = faults {
            persist = persist.with_faults(Arc::new(move |s| (s == at).then_some(fault)));
        }
        Self {
            engine: Engine::new(MemoryStore::new(10_000)),
            slots,
            persist,
        }
    }

    fn restore(&self) -> Result<tollgate::persist::Restored, PersistError> {
        self.persist
            .restore(self.engine.store(), None, T0, &self.slots, &())
    }

    fn flush(&self) -> Result<u64, PersistError> {
        self.persist
            .flush(self.engine.store(), T0, &self.slots, &())
    }

    fn save(&self) -> Result<(), PersistError> {
        self.persist
            .save(self.engine.store(), T0, &self.slots, &())
            .map(drop)
    }

    /// Counts `n` requests of every scope.
    fn consume(&self, n: u64) {
        let slot = self.slots.intern(IDENTITY);
        for scope in SCOPES {
            let item = Item {
                key: CounterKey { scope, slot },
                algorithm: Algorithm::FixedWindow,
                rate: Rate::new(1_000_000, DAY).expect("nonzero"),
                cost: n,
            };
            assert!(self.engine.decide(Mode::Consume, T0, &[item]).counted);
        }
    }

    /// What every scope has counted (the same for all, or a panic).
    fn counted(&self) -> u64 {
        let each = self.each();
        assert!(each.iter().all(|c| *c == each[0]), "{each:?}");
        each[0]
    }

    /// What each scope has counted.
    fn each(&self) -> Vec<u64> {
        let slot = self.slots.intern(IDENTITY);
        SCOPES
            .iter()
            .map(|scope| {
                let mut count = 0;
                self.engine.store().transact(
                    &[CounterKey { scope, slot }],
                    T0,
                    &mut |states, _| {
                        count = states[0].b;
                        false
                    },
                );
                count
            })
            .collect()
    }
}

fn fresh(name: &str) -> PathBuf {
    let dir = support::process::temp_dir(&format!("persist-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("state.redb")
}

/// A copy of every file of `from`'s directory in a fresh one.
fn copy(from: &Path, name: &str) -> PathBuf {
    let to = fresh(name);
    for entry in std::fs::read_dir(from.parent().expect("dir")).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.with_file_name(entry.file_name())).expect("copy");
    }
    to
}

/// Restarts on `state` with no fault: what it restores.
fn restart(state: &Path, journal: bool) -> u64 {
    let p = Process::new(state, journal, None);
    p.restore().expect("restores");
    p.counted()
}

#[test]
fn a_crash_at_any_step_of_a_start_loses_nothing() {
    for journal in [true, false] {
        let state = fresh(&format!("start-{journal}"));
        let p = Process::new(&state, journal, None);
        p.restore().expect("restores");
        p.consume(5);
        p.flush().expect("flushes");
        p.consume(3);
        p.save().expect("saves");
        drop(p);
        for step in STEPS {
            let copy = copy(&state, &format!("start-{journal}-{step:?}"));
            let crashed = Process::new(&copy, journal, Some((step, Fault::Crash)));
            let _ = crashed.restore();
            drop(crashed);
            assert_eq!(
                restart(&copy, journal),
                8,
                "journal {journal}, crash at {step:?}"
            );
            // And a second start after the crash, of the other mode.
            assert_eq!(restart(&copy, !journal), 8, "then journal {}", !journal);
        }
    }
}

#[test]
fn a_crash_at_any_step_of_a_flush_loses_at_most_that_flush() {
    for step in STEPS {
        let state = fresh(&format!("flush-{step:?}"));
        let armed = Arc::new(AtomicBool::new(false));
        let a = armed.clone();
        let p = Process::new(&state, true, None);
        let p = Process {
            persist: p.persist.with_faults(Arc::new(move |s| {
                (s == step && a.load(Ordering::SeqCst)).then_some(Fault::Crash)
            })),
            ..p
        };
        p.restore().expect("restores");
        p.consume(5);
        p.flush().expect("flushes");
        p.consume(3);
        armed.store(true, Ordering::SeqCst);
        let flushed = p.flush();
        drop(p);
        let got = restart(&state, true);
        match flushed {
            Ok(_) => assert_eq!(got, 8, "{step:?}: no fault on this path"),
            Err(_) => assert!((5..=8).contains(&got), "{step:?}: {got}"),
        }
    }
}

#[test]
fn a_rewrite_crashed_at_any_step_loses_nothing_flushed_before() {
    for step in [Step::Written, Step::Synced, Step::Renamed, Step::Removed] {
        let state = fresh(&format!("rewrite-{step:?}"));
        // A failed append forces the next flush to rewrite the journal.
        let fail_once = Arc::new(AtomicBool::new(false));
        let crash_now = Arc::new(AtomicBool::new(false));
        let (f, c) = (fail_once.clone(), crash_now.clone());
        let p = Process::new(&state, true, None);
        let p = Process {
            persist: p.persist.with_faults(Arc::new(move |s| {
                if s == Step::Appended && f.swap(false, Ordering::SeqCst) {
                    Some(Fault::Fail)
                } else if s == step && c.load(Ordering::SeqCst) {
                    Some(Fault::Crash)
                } else {
                    None
                }
            })),
            ..p
        };
        p.restore().expect("restores");
        p.consume(5);
        p.flush().expect("flushes");
        let len = std::fs::metadata(p.persist.journal_path())
            .expect("journal")
            .len();
        p.consume(3);
        fail_once.store(true, Ordering::SeqCst);
        assert!(p.flush().is_err(), "the append fails");
        // Cut back to the last good length: no torn record stays behind.
        assert_eq!(
            std::fs::metadata(p.persist.journal_path())
                .expect("journal")
                .len(),
            len
        );
        crash_now.store(true, Ordering::SeqCst);
        let rewrote = p.flush();
        assert!(
            matches!(rewrote, Err(PersistError::Crashed(s)) if s == step),
            "{rewrote:?}"
        );
        drop(p);
        let got = restart(&state, true);
        assert!((5..=8).contains(&got), "{step:?}: {got}");
        if step == Step::Removed || step == Step::Renamed {
            assert_eq!(got, 8, "{step:?}: the rewrite was in place");
        }
    }
}

#[test]
fn a_crash_at_any_step_of_a_graceful_stop_keeps_the_last_save() {
    for step in STEPS {
        let state = fresh(&format!("save-{step:?}"));
        let p = Process::new(&state, false, None);
        p.restore().expect("restores");
        p.consume(5);
        p.save().expect("saves");
        drop(p);
        let p = Process::new(&state, false, Some((step, Fault::Crash)));
        if step == Step::Restored {
            // Killed while starting: the start test's business.
            assert!(p.restore().is_err());
            assert_eq!(restart(&state, false), 5);
            continue;
        }
        p.restore().expect("restores");
        assert_eq!(p.counted(), 5);
        p.consume(3);
        let saved = p.save();
        drop(p);
        let got = restart(&state, false);
        match saved {
            Ok(()) => assert_eq!(got, 8, "{step:?}"),
            Err(_) => assert!(got == 5 || got == 8, "{step:?}: {got}"),
        }
    }
}

#[test]
fn a_torn_tail_is_cut_and_named_and_damage_stops_the_start() {
    let state = fresh("damage");
    let p = Process::new(&state, true, None);
    p.restore().expect("restores");
    p.consume(5);
    p.flush().expect("flushes");
    p.consume(3);
    p.flush().expect("flushes");
    let journal = p.persist.journal_path().to_owned();
    drop(p);
    let whole = std::fs::read(&journal).expect("journal");

    // Two bytes short: the last record is torn, cut, and the rest restored.
    std::fs::write(&journal, &whole[..whole.len() - 2]).expect("write");
    let p = Process::new(&state, true, None);
    let restored = p.restore().expect("a torn tail restores");
    let at = restored.torn_at.expect("the torn record is named");
    assert!(at < whole.len() as u64 - 2, "{at}");
    // The last record of the last flush is gone: one scope as of the flush
    // before, every other as of the last.
    let mut each = p.each();
    each.sort_unstable();
    assert_eq!(each, [5, 8, 8, 8, 8]);
    drop(p);

    // A changed count in the first records: damage, reported with its offset.
    std::fs::write(&journal, &whole).expect("write");
    let mut changed = whole.clone();
    changed[40] ^= 0x01;
    std::fs::write(&journal, &changed).expect("write");
    let e = Process::new(&state, true, None)
        .restore()
        .expect_err("damaged");
    let text = e.to_string();
    assert!(
        text.contains("is damaged at byte") && text.contains(&journal.display().to_string()),
        "{text}"
    );
    // The magic: damage, not an empty start.
    let mut changed = whole.clone();
    changed[0] = b'X';
    std::fs::write(&journal, &changed).expect("write");
    assert!(matches!(
        Process::new(&state, true, None).restore(),
        Err(PersistError::Damaged { offset: 0, .. })
    ));
}

#[test]
fn a_damaged_snapshot_stops_the_start() {
    let state = fresh("snapshot");
    let p = Process::new(&state, false, None);
    p.restore().expect("restores");
    p.consume(5);
    p.save().expect("saves");
    let snapshot = p.persist.snapshot_path().to_owned();
    drop(p);
    let whole = std::fs::read(&snapshot).expect("snapshot");
    for bad in [&whole[..whole.len() - 1], &whole[..whole.len() - 20]] {
        std::fs::write(&snapshot, bad).expect("write");
        assert!(matches!(
            Process::new(&state, false, None).restore(),
            Err(PersistError::Damaged { .. })
        ));
    }
    std::fs::write(&snapshot, &whole).expect("write");
    assert_eq!(restart(&state, false), 5);
}

#[test]
fn the_previous_versions_counters_carry_over_once() {
    // What 0.1 left: a snapshot in the state file's "counters" table, then
    // a TGC1 journal of later changes beside it.
    let state = fresh("legacy");
    let row = |count: u64| {
        let mut out = Vec::new();
        for s in ["a", IDENTITY] {
            out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        for w in [T0 / DAY, count, 0, 0, T0 + DAY] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    };
    {
        let db = redb::Database::create(&state).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let table = redb::TableDefinition::<u64, &[u8]>::new("counters");
            let mut t = tx.open_table(table).expect("table");
            let mut snapshot = b"TGC1".to_vec();
            snapshot.extend(row(4));
            t.insert(0, snapshot.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let mut journal = b"TGC1".to_vec();
    journal.extend(row(6));
    std::fs::write(state.with_file_name("state.redb.journal"), journal).expect("journal");

    let runtime = tollgate::state::RuntimeState::open(&state).expect("opens");
    let p = Process::new(&state, true, None);
    p.persist
        .restore(p.engine.store(), Some(&runtime), T0, &p.slots, &())
        .expect("restores");
    let slot = p.slots.intern(IDENTITY);
    let mut count = 0;
    p.engine
        .store()
        .transact(&[CounterKey { scope: "a", slot }], T0, &mut |s, _| {
            count = s[0].b;
            false
        });
    assert_eq!(count, 6, "the journal's later state wins");
    assert_eq!(runtime.legacy_counters().expect("read"), None, "read once");
    drop(p);
    drop(runtime);
    let p = Process::new(&state, true, None);
    p.restore().expect("restores the new journal");
    let mut count = 0;
    let slot = p.slots.intern(IDENTITY);
    p.engine
        .store()
        .transact(&[CounterKey { scope: "a", slot }], T0, &mut |s, _| {
            count = s[0].b;
            false
        });
    assert_eq!(count, 6);
}

const IN_FLIGHT_IDENTITY: &str = "subject||concurrent|4611686018427387904|fixed_window";

/// A slot in flight (`unit: concurrent`) counted by `process`, held by a
/// reservation of `ledger` when given.
fn hold_slot(
    p: &Process,
    ledger: Option<&tollgate::limiter::reservations::Reservations>,
) -> Option<std::sync::Arc<str>> {
    use tollgate::engine::algorithm::Charged;
    use tollgate::limiter::reservations::{Held, Reservation};
    let slot = p.slots.intern_counter(
        IN_FLIGHT_IDENTITY,
        Algorithm::FixedWindow,
        tollgate::plans::IN_FLIGHT,
    );
    let rate = Rate::new(5, tollgate::plans::IN_FLIGHT).expect("nonzero");
    let item = Item {
        key: CounterKey { scope: "a", slot },
        algorithm: Algorithm::FixedWindow,
        rate,
        cost: 1,
    };
    assert!(p.engine.decide(Mode::Consume, T0, &[item]).counted);
    let ledger = ledger?;
    Some(ledger.open(Reservation {
        subject: "a".into(),
        account: "a".into(),
        class: None,
        estimate: Default::default(),
        held: vec![Held {
            scope: "a".into(),
            slot,
            algorithm: Algorithm::FixedWindow,
            rate,
            unit: "concurrent".into(),
            counted: Charged {
                units: 1,
                rate,
                at: T0,
                free_at: tollgate::plans::IN_FLIGHT,
            },
        }],
        expires_at: T0 + DAY,
        journaled: false,
    }))
}

fn in_flight(p: &Process) -> u64 {
    let slot = p.slots.intern_counter(
        IN_FLIGHT_IDENTITY,
        Algorithm::FixedWindow,
        tollgate::plans::IN_FLIGHT,
    );
    let mut count = 0;
    p.engine
        .store()
        .transact(&[CounterKey { scope: "a", slot }], T0, &mut |s, _| {
            count = s[0].b;
            false
        });
    count
}

/// Reservations are journaled with the counters: after a crash, the ones
/// a flush wrote are back (with their slots in flight), and a slot whose
/// reservation was not written is free again, never held for good.
#[test]
fn journaled_reservations_come_back_and_lost_ones_free_their_slots() {
    use tollgate::limiter::reservations::Reservations;
    let state = fresh("reservations");
    let before = Process::new(&state, true, None);
    let ledger = Reservations::default();
    ledger.journal();
    before
        .persist
        .restore(before.engine.store(), None, T0, &before.slots, &ledger)
        .expect("restores");
    let kept = hold_slot(&before, Some(&ledger)).expect("a reservation");
    hold_slot(&before, None); // Counted, its reservation never written.
    assert_eq!(in_flight(&before), 2);
    before
        .persist
        .flush(before.engine.store(), T0, &before.slots, &ledger)
        .expect("flushed");
    drop(before); // A crash: no save.

    let after = Process::new(&state, true, None);
    let restored = Reservations::default();
    after
        .persist
        .restore(after.engine.store(), None, T0, &after.slots, &restored)
        .expect("restores");
    assert_eq!(restored.len(), 1, "the journaled reservation is back");
    assert_eq!(in_flight(&after), 1, "the lost one's slot is free");
    let (settlement, changes) = restored.settle(&kept, None, T0 + SEC).expect("settles");
    assert_eq!(&*settlement.id, &*kept);
    assert_eq!(changes.map(|c| c.len()), Some(1), "its slot is given back");
}
