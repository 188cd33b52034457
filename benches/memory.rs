//! Bytes per tracked counter, all-in, with 1,000,000 live subjects: the
//! growth of the resident set while the store fills, divided by the counters
//! held. `cargo bench --bench memory`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write;

use tollgate::engine::{Algorithm, CounterKey, CounterStore, Engine, Item, Mode, Rate};
use tollgate::storage::memory::MemoryStore;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 1_799_971_200 * SEC;
const SUBJECTS: usize = 1_000_000;

fn items<const N: usize>(scope: &str, algorithm: Algorithm, windows: [u64; N]) -> [Item<'_>; N] {
    std::array::from_fn(|slot| Item {
        key: CounterKey {
            scope,
            slot: slot as u32,
        },
        algorithm,
        rate: Rate::new(u64::MAX / 4, windows[slot]).unwrap(),
        cost: 1,
    })
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn measure<const N: usize>(label: &str, keys: &[String], algorithm: Algorithm, windows: [u64; N]) {
    let before = resident_bytes();
    let engine = Engine::new(MemoryStore::new(4 * SUBJECTS));
    for k in keys {
        engine.decide(Mode::Consume, NOW, &items(k, algorithm, windows));
    }
    let grown = resident_bytes().saturating_sub(before);
    let counters = engine.store().len();
    let _ = writeln!(
        std::io::stdout(),
        "{label}: {counters} counters for {} subjects: {:.0} bytes per counter all-in",
        keys.len(),
        grown as f64 / counters as f64
    );
}

fn main() {
    // Keys like real API keys: 24 characters.
    let keys: Vec<String> = (0..SUBJECTS).map(|i| format!("key_live_{i:015}")).collect();
    measure(
        "1 limit (token bucket)",
        &keys,
        Algorithm::TokenBucket,
        [60 * SEC],
    );
    measure(
        "3 limits (minute + hour + day)",
        &keys,
        Algorithm::FixedWindow,
        [60 * SEC, 3600 * SEC, 86_400 * SEC],
    );
}
