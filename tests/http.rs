//! The HTTP front door end to end: a real server with `--http-listen`, a
//! plain HTTP/1.1 client, exact statuses, headers and JSON.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tollgate::storage::memory::MemoryStore;

use support::http::{Events, get, post, send};
use support::*;

const PLANS: &str = r#"
classes:
  search: { match: ["/api/search"] }
  chat:   { match: ["POST /v1/chat"] }
plans:
  free:
    limits:
      - { rate: 3/minute }
      - { class: search, deny: "Enterprise plan required" }
      - { class: chat, unit: tokens, rate: 1000/minute, max_cost: 500 }
  pro: { extends: free, multiplier: 10 }
default_plan: free
envoy:
  domains:
    api: { subject: key }
"#;

const FORWARD_AUTH: &str = r#"
http:
  forward_auth:
    subject: { header: X-Api-Key }
    account: { header: X-Account-Id }
    cost: { tokens: { header: X-Token-Cost } }
"#;

/// A server of `yaml` with the HTTP front door; its HTTP address.
async fn start_with(yaml: &str, admin_token: Option<&str>) -> (TestServer, SocketAddr) {
    let options = tollgate::server::Options {
        admin_token: admin_token.map(Into::into),
        watch_interval: Duration::from_millis(20),
        http: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        ..Default::default()
    };
    let s = TestServer::start_opts(yaml, MemoryStore::new(100_000), options).await;
    let http = s.http.expect("http listener");
    (s, http)
}

async fn start() -> (TestServer, SocketAddr) {
    start_with(&format!("{PLANS}{FORWARD_AUTH}"), Some(ADMIN_TOKEN)).await
}

fn remaining(j: &serde_json::Value) -> &str {
    j["limits"][0]["remaining"].as_str().unwrap_or("none")
}

// === envoyproxy/ratelimit's endpoints ===

#[tokio::test]
async fn json_answers_200_while_ok_and_429_over_limit() {
    let (s, http) = start().await;
    let body = r#"{"domain":"api","descriptors":[{"entries":[{"key":"key","value":"k1"}]}]}"#;
    for left in ["2", "1", "0"] {
        let r = post(http, "/json", body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = r.json();
        assert_eq!(j["overallCode"], "OK");
        assert_eq!(j["statuses"][0]["code"], "OK");
        // protojson leaves out zeros, as the reference's does.
        let expected = Some(left)
            .filter(|l| *l != "0")
            .map(|l| json!(l.parse::<u64>().expect("n")));
        assert_eq!(j["statuses"][0].get("limitRemaining"), expected.as_ref());
    }
    let r = post(http, "/json", body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["overallCode"], "OVER_LIMIT");
    assert_eq!(r.json()["statuses"][0]["code"], "OVER_LIMIT");
    s.stop().await;
}

#[tokio::test]
async fn json_refuses_what_is_not_a_request_with_a_plain_400() {
    let (s, http) = start().await;
    for body in [
        "{not json",
        r#"{"domain":"api","unknownField":1}"#,
        r#"{"domain":"api","descriptors":"no"}"#,
        // Valid JSON, but the service refuses it (no domain): 400 as well.
        r#"{"descriptors":[{"entries":[{"key":"key","value":"k"}]}]}"#,
    ] {
        let r = post(http, "/json", body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.body, "Bad Request\n", "{body}");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    s.stop().await;
}

#[tokio::test]
async fn healthcheck_answers_ok_while_serving() {
    let (s, http) = start().await;
    let r = get(http, "/healthcheck", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    s.stop().await;
}

// === tollgate.v1 as JSON ===

#[tokio::test]
async fn consume_counts_down_then_rate_limits_with_200_and_the_verdict() {
    let (s, http) = start().await;
    let body = r#"{"subject":"key_1","resource":"/api/items"}"#;
    for left in ["2", "1", "0"] {
        let r = post(http, "/v1/consume", body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        assert_eq!(j["verdict"], "ALLOWED");
        assert_eq!(remaining(&j), left);
        assert_eq!(j["headers"]["X-RateLimit-Remaining"], left);
    }
    let r = post(http, "/v1/consume", body).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["verdict"], "RATE_LIMITED");
    assert_eq!(j["retryAfter"], "60s");
    assert_eq!(j["headers"]["Retry-After"], "60");
    // check and record take the same request.
    let r = post(http, "/v1/check", body).await;
    assert_eq!(r.json()["verdict"], "RATE_LIMITED");
    let r = post(http, "/v1/record", r#"{"subject":"key_2"}"#).await;
    assert_eq!((r.status, remaining(&r.json())), (200, "2"));
    s.stop().await;
}

#[tokio::test]
async fn json_fields_are_the_grpc_ones() {
    let (s, http) = start().await;
    let over_grpc = s.check(req("key_1", "/v1/chat")).await;
    let j = post(http, "/v1/check", r#"{"subject":"key_1","resource":"/v1/chat","attributes":{"method":"POST"},"cost":{"tokens":"10"}}"#)
        .await
        .json();
    assert_eq!(j["plan"], over_grpc.plan);
    assert_eq!(j["class"], "chat");
    let limits = j["limits"].as_array().expect("limits");
    let limit = limits
        .iter()
        .find(|l| l["unit"] == "tokens")
        .expect("tokens limit");
    let keys: Vec<&str> = limit
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "name",
        "unit",
        "limit",
        "remaining",
        "window",
        "resetAt",
        "class",
        "algorithm",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert_eq!(limit["unit"], "tokens");
    assert_eq!(limit["limit"], "1000");
    assert_eq!(limit["remaining"], "1000");
    assert_eq!(limit["window"], "60s");
    assert_eq!(limit["algorithm"], "FIXED_WINDOW");
    assert_eq!(limit["resetAt"], "2027-01-15T00:01:00Z");
    // The original field names are read too.
    let r = post(
        http,
        "/v1/check",
        r#"{"subject":"key_1","attributes":{},"cost":{}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let (s, http) = start().await;
    for (body, field) in [
        (r#"{"resource":"/x"}"#, "subject"),
        (r#"{"subjct":"k"}"#, "subjct"),
        (r#"{"subject":"k","cost":{"tokens":"-1"}}"#, "cost.tokens"),
        (r#"{"subject":7}"#, "subject"),
        (r#"{"subject":"k","cost":{"":"1"}}"#, "cost"),
        ("[1,2]", "body"),
    ] {
        let r = post(http, "/v1/consume", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let j = r.json();
        assert_eq!(j["code"], 3, "{body}");
        assert!(
            j["message"].as_str().expect("message").contains(field),
            "{body}: {j}"
        );
        assert_eq!(j["details"], json!([]));
    }
    let long = "k".repeat(2000);
    let r = post(http, "/v1/consume", &format!(r#"{{"subject":"{long}"}}"#)).await;
    assert_eq!(r.status, 400);
    assert!(r.message().starts_with("subject:"));
    s.stop().await;
}

#[tokio::test]
async fn admin_needs_the_bearer_token_and_answers_as_grpc() {
    let (s, http) = start().await;
    let r = get(http, "/v1/admin/list-plans", &[]).await;
    assert_eq!((r.status, r.json()["code"].clone()), (401, json!(16)));
    let r = get(
        http,
        "/v1/admin/list-plans",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "invalid admin token");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = get(http, "/v1/admin/list-plans", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["defaultPlan"], "free");
    let set = |body: &'static str| {
        let auth = auth.clone();
        async move {
            send(
                http,
                "POST",
                "/v1/admin/set-plan",
                &[("authorization", &auth)],
                body,
            )
            .await
        }
    };
    let r = set(r#"{"account":"acct_1","plan":"pro"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["plan"], "pro");
    let r = set(r#"{"account":"acct_1","plan":"gold"}"#).await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("gold"));
    let d = post(http, "/v1/check", r#"{"subject":"acct_1"}"#)
        .await
        .json();
    assert_eq!(d["plan"], "pro");
    // The gRPC method's name in any spelling names the same call.
    for path in [
        "/v1/admin/SetPlan",
        "/v1/admin/set_plan",
        "/v1/admin/setPlan",
    ] {
        let r = send(
            http,
            "POST",
            path,
            &[("authorization", &auth)],
            r#"{"account":"acct_2","plan":"pro"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = send(
        http,
        "POST",
        "/v1/admin/drop-tables",
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("set-plan"));
    let r = get(http, "/v1/admin/set-plan", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(
        http,
        "DELETE",
        "/v1/admin/list-plans",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let shouted = auth.replacen("Bearer", "BEARER", 1);
    let r = get(http, "/v1/admin/list-plans", &[("authorization", &shouted)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await;

    let (s, http) = start_with(PLANS, None).await;
    let r = get(
        http,
        "/v1/admin/list-plans",
        &[("authorization", "Bearer x")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], 7);
    s.stop().await;
}

// === Server-Sent Events ===

#[tokio::test]
async fn watch_streams_a_snapshot_then_each_change() {
    let (s, http) = start().await;
    let mut events = Events::open(http, "/v1/watch?subject=key_1").await;
    assert_eq!(events.status, 200);
    assert_eq!(
        events
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let first = events.next_event().await;
    assert_eq!(first.name, "snapshot");
    let j: serde_json::Value = serde_json::from_str(&first.data).expect("json");
    assert_eq!(j["cause"], "SNAPSHOT");
    assert_eq!(j["plan"], "free");
    assert_eq!(remaining(&j), "3");
    post(http, "/v1/consume", r#"{"subject":"key_1"}"#).await;
    let next = events.next_event().await;
    assert_eq!(next.name, "consumption");
    let j: serde_json::Value = serde_json::from_str(&next.data).expect("json");
    assert_eq!(remaining(&j), "2");
    // The stream ends with the server.
    s.stop().await;
    assert!(events.next_block(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn watch_refuses_a_missing_subject_and_unknown_parameters() {
    let (s, http) = start().await;
    let r = get(http, "/v1/watch", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("subject"));
    let r = get(http, "/v1/watch?subject=k&acount=a", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("acount"));
    s.stop().await;
}

// === forward auth ===

async fn auth(http: SocketAddr, headers: &[(&str, &str)]) -> support::http::Reply {
    send(http, "GET", "/v1/forward-auth", headers, "").await
}

#[tokio::test]
async fn forward_auth_admits_with_headers_then_answers_429_with_retry_after() {
    let (s, http) = start().await;
    let h = [
        ("x-api-key", "key_1"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items?page=2"),
    ];
    for left in ["2", "1", "0"] {
        let r = auth(http, &h).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
        assert!(r.header("x-ratelimit-reset").is_some());
    }
    let r = auth(http, &h).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let j = r.json();
    assert_eq!(j["code"], "RATE_LIMITED");
    assert_eq!(j["retry_after"], 60);
    // nginx's names work the same, for another subject.
    let r = auth(
        http,
        &[
            ("x-api-key", "key_2"),
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/items"),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_answers_403_for_a_gated_class_and_413_for_too_large() {
    let (s, http) = start().await;
    let r = auth(
        http,
        &[
            ("x-api-key", "key_1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/search?q=x"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"code": "NOT_IN_PLAN", "message": "Enterprise plan required"})
    );
    let chat = |cost: &'static str| async move {
        auth(
            http,
            &[
                ("x-api-key", "key_1"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/v1/chat"),
                ("x-token-cost", cost),
            ],
        )
        .await
    };
    let r = chat("600").await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "TOO_LARGE");
    // Without a forwarded method, the call's own method is the request's.
    let r = send(
        http,
        "POST",
        "/v1/forward-auth",
        &[
            ("x-api-key", "key_1"),
            ("x-original-uri", "/v1/chat"),
            ("x-token-cost", "600"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = chat("abc").await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("x-token-cost"));
    let r = chat("400").await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_refuses_what_it_cannot_judge() {
    let (s, http) = start().await;
    let r = auth(
        http,
        &[("x-forwarded-method", "GET"), ("x-forwarded-uri", "/")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "UNAUTHENTICATED");
    assert!(r.message().contains("x-api-key"));
    let r = auth(http, &[("x-api-key", "k")]).await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("x-forwarded-uri"));
    s.stop().await;

    let (s, http) = start_with(PLANS, None).await;
    let r = auth(
        http,
        &[
            ("x-api-key", "k"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/"),
        ],
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("http.forward_auth"));
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_folds_denials_into_403_when_the_gateway_asks() {
    let (s, http) = start().await;
    let h = |uri: &'static str, cost: &'static str| {
        [
            ("x-api-key", "key_1"),
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", uri),
            ("x-token-cost", cost),
            ("x-tollgate-deny-status", "403"),
        ]
    };
    // Allowed: the answer is the default one, without the extra headers.
    let r = auth(http, &h("/v1/chat", "1")).await;
    assert_eq!((r.status, r.header("x-tollgate-status")), (200, None));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    for _ in 0..2 {
        assert_eq!(auth(http, &h("/api/items", "0")).await.status, 200);
    }
    let r = auth(http, &h("/api/items", "0")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-status"), Some("429"));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let folded: serde_json::Value =
        serde_json::from_str(r.header("x-tollgate-body").expect("body header")).expect("JSON");
    assert_eq!(folded, r.json());
    assert_eq!(
        (folded["code"].clone(), folded["retry_after"].clone()),
        (json!("RATE_LIMITED"), json!(60))
    );

    // Another subject, the same server.
    let key2 = |uri: &'static str, cost: &'static str| {
        let mut v = h(uri, cost).to_vec();
        v[0] = ("x-api-key", "key_2");
        v
    };
    let r = auth(http, &key2("/v1/chat", "600")).await;
    assert_eq!(
        (r.status, r.header("x-tollgate-status")),
        (403, Some("413"))
    );
    assert_eq!(r.json()["code"], "TOO_LARGE");
    let r = auth(http, &key2("/api/search", "0")).await;
    assert_eq!(
        (r.status, r.header("x-tollgate-status")),
        (403, Some("403"))
    );
    assert_eq!(
        r.header("x-tollgate-body"),
        Some(r#"{"code":"NOT_IN_PLAN","message":"Enterprise plan required"}"#)
    );
    // 401 passes auth_request as it is.
    let r = auth(http, &key2("/api/items", "0")[1..]).await;
    assert_eq!(
        (r.status, r.header("x-tollgate-status")),
        (401, Some("401"))
    );
    assert_eq!(r.json()["code"], "UNAUTHENTICATED");
    // Only 403 is on offer; without the header, the default answers.
    let mut odd = key2("/api/items", "0");
    odd[4] = ("x-tollgate-deny-status", "200");
    let r = auth(http, &odd).await;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("x-tollgate-deny-status"));
    let r = auth(http, &key2("/api/search", "0")[..4]).await;
    assert_eq!((r.status, r.header("x-tollgate-status")), (403, None));
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_reads_the_bearer_token() {
    let yaml = format!("{PLANS}http:\n  forward_auth:\n    subject: {{ bearer: true }}\n");
    let (s, http) = start_with(&yaml, None).await;
    let at = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items"),
    ];
    let r = auth(http, &[at[0], at[1], ("authorization", "Bearer tok_1")]).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    let d = s.check(req("tok_1", "/api/items")).await;
    assert_eq!(d.limits[0].remaining, Some(2));
    for bad in [None, Some("Basic dXNlcjpw"), Some("Bearer ")] {
        let mut h = at.to_vec();
        if let Some(v) = bad {
            h.push(("authorization", v));
        }
        let r = auth(http, &h).await;
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_reads_the_client_address() {
    // The gateway (this host) and the proxy before it (10.0.0.1) are trusted.
    let yaml = format!(
        "{PLANS}http:\n  forward_auth:\n    subject: {{ client_ip: true }}\n    trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n"
    );
    let (s, http) = start_with(&yaml, None).await;
    let at = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items"),
    ];
    let xff = ("x-forwarded-for", "203.0.113.7, 10.0.0.1");
    for _ in 0..3 {
        assert_eq!(auth(http, &[at[0], at[1], xff]).await.status, 200);
    }
    assert_eq!(auth(http, &[at[0], at[1], xff]).await.status, 429);
    let d = s.check(req("203.0.113.7", "/api/items")).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    let r = auth(http, &[at[0], at[1], ("x-real-ip", "198.51.100.1")]).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    let r = auth(http, &at).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    let d = s.check(req("127.0.0.1", "/api/items")).await;
    assert_eq!(d.limits[0].remaining, Some(2));
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_believes_an_address_only_from_a_trusted_proxy() {
    // The default: only this host (the gateway) is trusted.
    let yaml = format!("{PLANS}http:\n  forward_auth:\n    subject: {{ client_ip: true }}\n");
    let (s, http) = start_with(&yaml, None).await;
    let at = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items"),
    ];
    let with = |xff: &'static str| [at[0], at[1], ("x-forwarded-for", xff)];
    // What the client wrote before the gateway's entry is not believed: the
    // right-most entry that is not a trusted proxy is the client.
    for xff in [
        "203.0.113.7",
        "198.51.100.1, 203.0.113.7",
        "1.1.1.1, 2.2.2.2, 203.0.113.7",
    ] {
        let r = auth(http, &with(xff)).await;
        assert_eq!(r.status, 200, "{xff}: {r:?}");
    }
    assert_eq!(auth(http, &with("9.9.9.9, 203.0.113.7")).await.status, 429);
    assert_eq!(
        verdict(&s.check(req("203.0.113.7", "/api/items")).await),
        Verdict::RateLimited
    );
    // An address must be an address.
    for xff in ["garbage-1-not-an-ip", "1.2.3.4, garbage", "203.0.113.300"] {
        let r = auth(http, &with(xff)).await;
        assert_eq!(r.status, 400, "{xff}: {r:?}");
        assert!(r.message().contains("x-forwarded-for"), "{}", r.message());
    }
    // With a port, or bracketed, is still the address.
    let r = auth(http, &with("[2001:db8::1]:443")).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    s.stop().await;

    // Trusting no proxy: the peer, whatever the headers say.
    let yaml = format!(
        "{PLANS}http:\n  forward_auth:\n    subject: {{ client_ip: true }}\n    trusted_proxies: []\n"
    );
    let (s, http) = start_with(&yaml, None).await;
    for xff in ["1.1.1.1", "2.2.2.2", "garbage"] {
        assert_eq!(auth(http, &with(xff)).await.status, 200, "{xff}");
    }
    assert_eq!(auth(http, &with("3.3.3.3")).await.status, 429);
    assert_eq!(
        verdict(&s.check(req("127.0.0.1", "/api/items")).await),
        Verdict::RateLimited
    );
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_refuses_a_repeated_header_it_reads() {
    let (s, http) = start().await;
    let at = [
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/v1/chat"),
        ("x-api-key", "k1"),
        ("x-token-cost", "10"),
    ];
    assert_eq!(auth(http, &at).await.status, 200);
    for repeated in [
        ("x-api-key", "k2"),
        ("x-token-cost", "1"),
        ("x-forwarded-uri", "/api/items"),
        ("x-forwarded-method", "GET"),
        ("x-account-id", "a"),
    ] {
        let mut h = at.to_vec();
        h.push(repeated);
        if repeated.0 == "x-account-id" {
            h.push(repeated);
        }
        let r = auth(http, &h).await;
        assert_eq!(r.status, 400, "{repeated:?}: {r:?}");
        assert!(r.message().contains(repeated.0), "{}", r.message());
    }
    // Only the first call counted.
    let d = s
        .check(with_cost(req("k1", "POST /v1/chat"), &[("tokens", 0)]))
        .await;
    assert_eq!(support::remaining(&d, "chat:tokens/minute"), 990);
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_judges_every_spelling_of_a_gated_path() {
    let (s, http) = start().await;
    let call = |uri: &'static str| {
        [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", uri),
            ("x-api-key", "k1"),
        ]
    };
    for uri in [
        "/api/%73earch",
        "//api/search",
        "/./api/search",
        "/x/../api/search",
        "/api//search",
        "/api/search;x=1",
        "/api/search?q=1",
        "http://h/api/search",
        "/api/%2e/search",
    ] {
        let r = auth(http, &call(uri)).await;
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (403, json!("NOT_IN_PLAN")),
            "{uri}: {r:?}"
        );
    }
    for uri in [
        "/api/search%00",
        "/api%2Fsearch",
        "/api%5Csearch",
        "/../api/search",
        "/api/%zz",
    ] {
        let r = auth(http, &call(uri)).await;
        assert_eq!(r.status, 400, "{uri}: {r:?}");
        assert!(
            r.message().starts_with("x-forwarded-uri: "),
            "{}",
            r.message()
        );
    }
    assert_eq!(
        support::remaining(&s.check(req("k1", "/api/items")).await, "requests/minute"),
        3,
        "no spelling counted"
    );
    s.stop().await;
}

#[tokio::test]
async fn forward_auth_with_a_shared_secret_refuses_calls_without_it() {
    let yaml = format!(
        "{PLANS}http:\n  forward_auth:\n    subject: {{ header: X-Api-Key }}\n    require_header: {{ header: X-Tollgate-Secret, value: s3cret }}\n"
    );
    let (s, http) = start_with(&yaml, None).await;
    let at = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/items"),
        ("x-api-key", "k1"),
    ];
    for secret in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let mut h = at.to_vec();
        if let Some(v) = secret {
            h.push(("x-tollgate-secret", v));
        }
        let r = auth(http, &h).await;
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (403, json!("PERMISSION_DENIED")),
            "{secret:?}"
        );
    }
    let mut h = at.to_vec();
    h.push(("x-tollgate-secret", "s3cret"));
    let r = auth(http, &h).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    s.stop().await;
}

// === limits, and the rest ===

#[tokio::test]
async fn oversized_input_is_refused_with_413_and_431() {
    let (s, http) = start().await;
    let big = format!(
        r#"{{"subject":"k","resource":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let r = post(http, "/v1/consume", &big).await;
    assert_eq!(r.status, 413);
    assert!(r.message().contains("65536"));
    let huge = "h".repeat(100 * 1024);
    let r = get(http, "/healthcheck", &[("x-big", &huge)]).await;
    assert_eq!(r.status, 431);
    let names: Vec<String> = (0..120).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = get(http, "/healthcheck", &many).await;
    assert_eq!(r.status, 431);
    s.stop().await;
}

#[tokio::test]
async fn the_binary_serves_http_on_host_and_port_from_the_environment() {
    let served = support::process::serve_env(&[], &[("HOST", "127.0.0.1"), ("PORT", "0")]);
    let http = served.http_addr();
    // Which variable opened which listener, in words.
    assert!(
        served.seen.iter().any(|l| l.contains("WARN")
            && l.contains("the HTTP listener (admin routes included) is open on 127.0.0.1:0 because the environment sets HOST=127.0.0.1 and PORT=0")),
        "{:#?}",
        served.seen
    );
    let r = get(http, "/healthcheck", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    let r = post(http, "/v1/check", r#"{"subject":"k"}"#).await;
    assert_eq!(r.json()["verdict"], "ALLOWED");
    // Without --metrics-listen, /metrics is on the HTTP server.
    assert_eq!(get(http, "/metrics", &[]).await.status, 200);
    drop(served);
}

#[tokio::test]
async fn metrics_and_unknown_paths() {
    let (s, http) = start().await;
    post(http, "/v1/consume", r#"{"subject":"k"}"#).await;
    let r = get(http, "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("tollgate_"), "{}", r.body);
    let r = get(http, "/v2/nothing", &[]).await;
    assert_eq!((r.status, r.json()["code"].clone()), (404, json!(5)));
    s.stop().await;
}
