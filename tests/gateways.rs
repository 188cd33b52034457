//! The forward-auth contract through the real gateways: nginx and Caddy
//! (Debian's packages; `scripts/test.sh` installs them) run the files of
//! `examples/nginx/` and `examples/caddy/`, addresses swapped for free
//! ports, in front of tollgate (the examples' own configuration) and a tiny
//! app. Traefik is not packaged here: its example is untested.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tollgate::storage::memory::MemoryStore;

use support::gateway::{App, Gateway, example_path};
use support::http::{Reply, get, send};
use support::*;

/// tollgate with the examples' configuration and the HTTP front door.
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

/// What a client of the gateway must never see: tollgate's words to nginx.
fn no_internals(r: &Reply) {
    for name in ["x-tollgate-status", "x-tollgate-body"] {
        assert_eq!(r.header(name), None, "{name} leaked: {r:?}");
    }
}

/// The contract, through `gateway` in front of `app`.
async fn the_contract_holds(gateway: &Gateway, app: &App) {
    let at = gateway.addr;
    let key_1 = [("x-api-key", "key_1")];
    // An extension: nginx would type its own answers by it.
    for left in ["2", "1", "0"] {
        let r = get(at, "/hello.html?page=1", &key_1).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello"),
            "{r:?}\n{}",
            gateway.log()
        );
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"), "{r:?}");
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left), "{r:?}");
        let reset = r.header("x-ratelimit-reset").expect("x-ratelimit-reset");
        assert!(reset.parse::<u64>().is_ok(), "{reset}");
        assert_eq!(r.header("retry-after"), None);
        no_internals(&r);
    }
    assert_eq!(app.seen(), vec!["GET /hello.html?page=1 "; 3]);

    let r = get(at, "/hello.html?page=1", &key_1).await;
    assert_eq!(r.status, 429, "{r:?}\n{}", gateway.log());
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
    let r = get(at, "/admin/users", &key_2).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"code": "NOT_IN_PLAN", "message": "Admin endpoints need the enterprise plan"})
    );
    no_internals(&r);
    // The gateway, not the client, says which request tollgate judges.
    let spoofed = [
        ("x-api-key", "key_2"),
        ("x-forwarded-uri", "/hello"),
        ("x-forwarded-method", "GET"),
        ("x-original-uri", "/hello"),
    ];
    let r = get(at, "/admin/users", &spoofed).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("NOT_IN_PLAN")),
        "{r:?}"
    );

    let r = get(at, "/hello", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"code": "UNAUTHENTICATED", "message": "x-api-key: header required"})
    );
    no_internals(&r);
    assert_eq!(app.seen().len(), 3, "nor does a gated or anonymous one");

    // The gated call cost key_2 nothing; a POST reaches the app whole, its
    // body kept from tollgate.
    let r = send(at, "POST", "/items", &key_2, "name=x").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{r:?}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(
        app.seen().last().map(String::as_str),
        Some("POST /items name=x")
    );
}

#[tokio::test]
async fn nginx_gives_clients_the_contract() {
    let (s, http) = tollgate().await;
    let app = App::start().await;
    let nginx = Gateway::nginx(http, app.addr);
    the_contract_holds(&nginx, &app).await;
    drop(nginx);
    s.stop().await;
}

#[tokio::test]
async fn caddy_gives_clients_the_contract() {
    let (s, http) = tollgate().await;
    let app = App::start().await;
    let caddy = Gateway::caddy(http, app.addr);
    the_contract_holds(&caddy, &app).await;
    drop(caddy);
    s.stop().await;
}

#[test]
fn every_gateway_example_expects_the_same_tollgate_configuration() {
    let read = |name: &str| std::fs::read_to_string(example_path(name)).expect("example");
    let nginx = read("nginx/tollgate.yaml");
    assert_eq!(read("caddy/tollgate.yaml"), nginx);
    assert_eq!(read("traefik/tollgate.yaml"), nginx);
}
