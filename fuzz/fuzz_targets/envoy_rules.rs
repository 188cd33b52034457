//! envoyproxy/ratelimit rule files: any text → `RuleSet::parse`; a valid
//! file is also merged with a copy of itself (the same domain twice).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::envoy::RuleSet;
use tollgate::plans::SlotRegistry;

fuzz_target!(|text: &str| {
    let slots = SlotRegistry::default();
    let one = [("a.yaml".to_owned(), text.to_owned())];
    if RuleSet::parse(&one, false, &slots).is_ok() {
        let two = [one[0].clone(), ("b.yaml".to_owned(), text.to_owned())];
        let _ = RuleSet::parse(&two, true, &slots);
    }
});
