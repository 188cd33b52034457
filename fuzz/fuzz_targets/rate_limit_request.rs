//! Envoy's `ShouldRateLimit`: a flags byte, then any bytes → a
//! `RateLimitRequest` (prost) → `EnvoyService::should_rate_limit`, as tonic
//! calls it: matching against fixed rule files (the reference's forms in
//! `examples/envoy/ratelimit`, tollgate's extensions in `rules/`), or the
//! built-in configuration's plan-aware `saas` domain, then counting in memory.
//!
//! The flags pick the service options (headers, shadow mode, quota mode,
//! dynamic metadata). Every input gets its own store and clock, so a crash
//! replays from its input alone.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tollgate::engine::{ManualClock, clock::SECOND};
use tollgate::envoy::{EnvoyService, HeaderNames, Options, RuleSet, RuleSource};
use tollgate::limiter::Limiter;
use tollgate::metrics::Metrics;
use tollgate::plans::{Catalog, SlotRegistry};
use tollgate::proto::envoy::service::ratelimit::v3::RateLimitRequest;
use tollgate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use tollgate::storage::memory::MemoryStore;
use tollgate::watch::Hub;
use tonic::Request;

/// A day boundary (2027-01-15T00:00:00Z), as the tests use.
const T0: u64 = 1_799_971_200 * SECOND;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
});

/// What every input's service shares: the slots, the built-in
/// configuration compiled once (cloning it shares the plans), the rules.
static FIXED: LazyLock<(Arc<SlotRegistry>, Catalog, Arc<RuleSource>)> = LazyLock::new(|| {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = tollgate::config::parse(
        tollgate::config::DEFAULT_NAME,
        tollgate::config::DEFAULT,
        &slots,
    )
    .expect("the built-in configuration is valid");
    let file = |name: &str, text: &str| (name.to_owned(), text.to_owned());
    let files = [
        file(
            "per-api-key.yaml",
            include_str!("../../examples/envoy/ratelimit/per-api-key.yaml"),
        ),
        file(
            "per-ip.yaml",
            include_str!("../../examples/envoy/ratelimit/per-ip.yaml"),
        ),
        file(
            "per-path.yaml",
            include_str!("../../examples/envoy/ratelimit/per-path.yaml"),
        ),
        file("extensions.yaml", include_str!("../rules/extensions.yaml")),
    ];
    let rules = RuleSet::parse(&files, false, &slots).expect("the fixed rules are valid");
    let source = Arc::new(RuleSource::fixed(rules, slots.clone()));
    (slots, catalog, source)
});

fn options(flags: u8) -> Options {
    Options {
        response_headers: (flags & 1 != 0).then(HeaderNames::default),
        shadow_mode: flags & 2 != 0,
        quota_mode: flags & 4 != 0,
        dynamic_metadata: flags & 8 != 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let Ok(request) = RateLimitRequest::decode(bytes) else {
        return;
    };
    let (slots, catalog, rules) = &*FIXED;
    let clock = Arc::new(ManualClock::new(T0));
    let limiter = Arc::new(Limiter::new(
        MemoryStore::new(0),
        catalog.clone(),
        slots.clone(),
        clock.clone(),
    ));
    let hub = Hub::new(
        limiter.clone(),
        Duration::from_millis(100),
        CancellationToken::new(),
    );
    let service = EnvoyService::new(
        limiter,
        rules.clone(),
        options(flags),
        hub,
        Arc::new(Metrics::new()),
    );
    RUNTIME.block_on(async {
        // Twice, a little later: the second call meets counted hits.
        for _ in 0..2 {
            let _ = service
                .should_rate_limit(Request::new(request.clone()))
                .await;
            clock.advance(Duration::from_millis(700));
        }
    });
});
