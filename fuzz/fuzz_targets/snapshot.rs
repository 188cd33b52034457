//! The counter files (`tollgate::persist`): any bytes as the journal, or as
//! the snapshot → `Persistence::restore`, never a panic: the counters, a
//! torn tail cut, or damage reported. What was restored saves and restores
//! again to the same counters.
#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use tollgate::engine::CounterStore;
use tollgate::engine::clock::SECOND;
use tollgate::persist::Persistence;
use tollgate::plans::SlotRegistry;
use tollgate::storage::memory::MemoryStore;

/// A day boundary (2027-01-15T00:00:00Z), as the tests use.
const T0: u64 = 1_799_971_200 * SECOND;

fn state() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(format!("{}.redb", N.fetch_add(1, Ordering::Relaxed)))
}

fuzz_target!(|input: (bool, &[u8])| {
    let (journal, bytes) = input;
    let state = state();
    let persist = Persistence::beside(&state, journal.then(|| std::time::Duration::from_secs(1)));
    let file = if journal {
        persist.journal_path().to_owned()
    } else {
        persist.snapshot_path().to_owned()
    };
    std::fs::write(&file, bytes).expect("write");
    let slots = SlotRegistry::default();
    let store = MemoryStore::new(0);
    if persist.restore(&store, None, T0, &slots).is_ok() {
        persist.save(&store, T0, &slots).expect("saves");
        let again = MemoryStore::new(0);
        let restored = Persistence::beside(&state, journal.then(|| std::time::Duration::from_secs(1)))
            .restore(&again, None, T0, &slots)
            .expect("what was saved restores");
        assert_eq!(restored.counters, store.len());
        assert_eq!(again.len(), store.len());
    }
    for suffix in [".journal", ".counters", ".journal.tmp", ".counters.tmp"] {
        let mut name = state.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
});
