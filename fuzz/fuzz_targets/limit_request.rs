//! `tollgate.v1` decisions: any bytes → a `LimitRequest` (prost) → the
//! handler's conversion → Check, Consume, Record and Consume again on fresh
//! in-memory counters under the built-in plans → the `Decision` sent back.
//!
//! Every input gets its own store and clock, so a crash replays from its
//! input alone.
#![no_main]

use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::api::convert;
use tollgate::engine::{ManualClock, Mode, clock::SECOND};
use tollgate::limiter::Limiter;
use tollgate::plans::{Catalog, SlotRegistry};
use tollgate::proto::tollgate::v1::LimitRequest;
use tollgate::storage::memory::MemoryStore;

/// A day boundary (2027-01-15T00:00:00Z), as the tests use.
const T0: u64 = 1_799_971_200 * SECOND;

/// The built-in configuration, compiled once (cloning it shares the plans).
static CATALOG: LazyLock<(Arc<SlotRegistry>, Catalog)> = LazyLock::new(|| {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = tollgate::config::parse(
        tollgate::config::DEFAULT_NAME,
        tollgate::config::DEFAULT,
        &slots,
    )
    .expect("the built-in configuration is valid");
    (slots, catalog)
});

/// Polls `f` once: in memory a decision never waits.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory decision completes on its first poll"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = LimitRequest::decode(bytes) else {
        return;
    };
    let Ok(request) = convert::limit_request(&message) else {
        return;
    };
    let (slots, catalog) = &*CATALOG;
    let clock = Arc::new(ManualClock::new(T0));
    let limiter = Limiter::new(
        MemoryStore::new(0),
        catalog.clone(),
        slots.clone(),
        clock.clone(),
    );
    for mode in [Mode::Check, Mode::Consume, Mode::Record, Mode::Consume] {
        let decision = ready(limiter.decide(mode, &request)).expect("the memory store never fails");
        let _ = convert::decision(decision);
        clock.advance(Duration::from_millis(700));
    }
});
