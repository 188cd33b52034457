//! The counters' snapshot saved across a restart (kept in the redb state
//! file): any bytes → `MemoryStore::import`, never a panic. What was
//! restored exports and imports again to the same count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::engine::clock::SECOND;
use tollgate::plans::SlotRegistry;
use tollgate::storage::memory::MemoryStore;

/// A day boundary (2027-01-15T00:00:00Z), as the tests use.
const T0: u64 = 1_799_971_200 * SECOND;

fuzz_target!(|bytes: &[u8]| {
    let slots = SlotRegistry::default();
    let store = MemoryStore::new(0);
    let restored = store.import(bytes, T0, &slots);
    let snapshot = store.export(T0, &slots);
    assert!(snapshot.counters <= restored);
    let again = MemoryStore::new(0);
    assert_eq!(again.import(&snapshot.bytes, T0, &slots), snapshot.counters);
    assert_eq!(again.export(T0, &slots).counters, snapshot.counters);
});
