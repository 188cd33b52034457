//! The configuration file: any text → `config::parse` → a catalog or
//! problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::plans::SlotRegistry;

fuzz_target!(|text: &str| {
    let _ = tollgate::config::parse("fuzz.yaml", text, &SlotRegistry::default());
});
