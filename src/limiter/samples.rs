//! Every kind of decision, for the tests that prove a hand-written encoder
//! equal to the generated or reflective one (`api/wire.rs`,
//! `http/json/decision.rs`): each verdict, a retry-after, bursts, token
//! costs, unlimited limits, a sliding window, and both header styles.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Decision, Limiter, Request, Verdict};
use crate::engine::{Mode, SystemClock};
use crate::plans::SlotRegistry;
use crate::storage::memory::MemoryStore;

const CONFIG: &str = r#"
headers: both
classes:
  search: { match: ["/search"] }
  chat: { match: ["POST /chat"] }
  gated: { match: ["/gated"] }
plans:
  free:
    limits:
      - { rate: 2/minute }
      - { rate: 1000/day, algorithm: sliding_window }
      - { class: search, rate: 5/second, burst: 3 }
      - { class: chat, unit: tokens, rate: 100/minute, algorithm: token_bucket, max_cost: 50 }
      - { class: chat, unit: tokens, unlimited: true, window: day }
      - { class: gated, deny: "Enterprise plan required" }
default_plan: free
"#;

/// Decisions of every kind, checked and consumed; every verdict is among them.
pub(crate) async fn every_kind() -> Vec<Decision> {
    let slots = Arc::new(SlotRegistry::default());
    let catalog = crate::config::parse("samples.yaml", CONFIG, &slots).expect("valid");
    let limiter = Limiter::new(
        MemoryStore::new(1_000),
        catalog,
        slots,
        Arc::new(SystemClock),
    );
    let none = HashMap::new();
    let tokens = |n: u64| HashMap::from([("tokens".to_owned(), n)]);
    let (t10, t80) = (tokens(10), tokens(80));
    let requests = [
        ("/a", None, &none),
        ("/a", None, &none),
        ("/a", None, &none), // rate limited, with retry_after
        ("/search", None, &none),
        ("/chat", Some("POST"), &t10),
        ("/chat", Some("POST"), &t80), // too large
        ("/gated", None, &none),       // not in plan
    ];
    let mut decisions = Vec::new();
    for (resource, method, cost) in requests {
        let r = Request {
            subject: "k",
            account: "",
            resource,
            method,
            plan: None,
            cost,
            deadline: None,
        };
        for mode in [Mode::Check, Mode::Consume] {
            decisions.push(limiter.decide(mode, &r).await.expect("decided"));
        }
    }
    // A reservation, admitted and refused.
    let r = Request {
        subject: "r",
        account: "",
        resource: "/chat",
        method: Some("POST"),
        plan: None,
        cost: &t10,
        deadline: None,
    };
    for _ in 0..2 {
        decisions.push(limiter.reserve(&r, None).await.expect("decided"));
    }
    assert!(decisions.iter().any(|d| d.reservation.is_some()));
    for v in [
        Verdict::Allowed,
        Verdict::RateLimited,
        Verdict::NotInPlan,
        Verdict::TooLarge,
    ] {
        assert!(
            decisions.iter().any(|d| d.verdict == v),
            "{v:?} not covered"
        );
    }
    decisions
}
