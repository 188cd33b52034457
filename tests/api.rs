//! tollgate.v1.RateLimiter end to end: a real server, a tonic client.

mod support;

use support::*;

const CONFIG: &str = r#"
classes:
  fetch:  { match: ["/api/v1/fetch/*"] }
  search: { match: ["/api/v1/fetch/search"] }
  emails: { match: ["POST /api/v1/batch/emails"] }
  chat:   { match: ["POST /v1/chat"] }
plans:
  free:
    limits:
      - { rate: 5/minute }
      - { rate: 8/hour }
      - { class: search, deny: "Enterprise plan required" }
      - { class: emails, unit: emails, rate: 60/minute, max_cost: 60 }
      - { class: chat, unit: tokens, rate: 1000/minute }
      - { class: fetch, rate: 3/minute, per: account, name: fetch-per-org }
  pro: { extends: free, multiplier: 10 }
default_plan: free
assignments: { acct_pro: pro }
"#;

#[tokio::test]
async fn consume_counts_and_the_limit_denies_with_headers() {
    let s = TestServer::start(CONFIG).await;
    let r = req("key_1", "/other");
    for left in (0..5).rev() {
        let d = s.consume(r.clone()).await;
        assert_eq!(verdict(&d), Verdict::Allowed);
        assert_eq!(d.plan, "free");
        assert_eq!(header(&d, "X-RateLimit-Limit"), Some("5"));
        assert_eq!(
            header(&d, "X-RateLimit-Remaining"),
            Some(left.to_string().as_str())
        );
        assert_eq!(header(&d, "Retry-After"), None);
    }
    s.advance(secs(20));
    let d = s.consume(r.clone()).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(header(&d, "X-RateLimit-Remaining"), Some("0"));
    assert_eq!(header(&d, "Retry-After"), Some("40"));
    let reset = (T0 / 1_000_000_000 + 60).to_string();
    assert_eq!(header(&d, "X-RateLimit-Reset"), Some(reset.as_str()));
    assert_eq!(d.retry_after.expect("set when limited").seconds, 40);
    assert_eq!(
        d.limits[0].name, "requests/minute",
        "the denying limit comes first"
    );
    assert!(d.reason.contains("requests/minute"), "{}", d.reason);
    s.advance(secs(40));
    assert_eq!(verdict(&s.consume(r).await), Verdict::Allowed);
    s.stop().await;
}

#[tokio::test]
async fn check_counts_nothing() {
    let s = TestServer::start(CONFIG).await;
    let r = req("key_1", "/other");
    for _ in 0..10 {
        let d = s.check(r.clone()).await;
        assert_eq!(verdict(&d), Verdict::Allowed);
        assert_eq!(remaining(&d, "requests/minute"), 5);
    }
    assert_eq!(s.consume_n(&r, 6).await, 5);
    assert_eq!(verdict(&s.check(r).await), Verdict::RateLimited);
    s.stop().await;
}

#[tokio::test]
async fn consume_is_all_or_nothing_across_windows() {
    let s = TestServer::start(CONFIG).await;
    let r = req("key_1", "/other");
    // 5 in the first minute, 3 in the second: the hour (8) is spent.
    assert_eq!(s.consume_n(&r, 5).await, 5);
    s.advance(secs(60));
    assert_eq!(s.consume_n(&r, 3).await, 3);
    let d = s.consume(r.clone()).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(d.limits[0].name, "requests/hour");
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("8"));
    assert_eq!(header(&d, "Retry-After"), Some("3540"));
    // The refused request counted against the minute neither.
    let c = s.check(r).await;
    assert_eq!(remaining(&c, "requests/minute"), 2);
    s.stop().await;
}

#[tokio::test]
async fn multi_unit_costs_are_checked_together() {
    let s = TestServer::start(CONFIG).await;
    let chat = req("key_1", "POST /v1/chat");
    let d = s
        .consume(with_cost(chat.clone(), &[("requests", 1), ("tokens", 900)]))
        .await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(remaining(&d, "chat:tokens/minute"), 100);
    assert_eq!(remaining(&d, "requests/minute"), 4);
    // Too many tokens: the request is not counted either.
    let d = s
        .consume(with_cost(chat.clone(), &[("requests", 1), ("tokens", 200)]))
        .await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(d.limits[0].name, "chat:tokens/minute");
    assert_eq!(remaining(&d, "requests/minute"), 4);
    s.stop().await;
}

#[tokio::test]
async fn record_counts_past_the_limit_and_later_requests_wait() {
    let s = TestServer::start(CONFIG).await;
    let chat = req("key_1", "POST /v1/chat");
    let d = s.record(with_cost(chat.clone(), &[("tokens", 1500)])).await;
    assert_eq!(verdict(&d), Verdict::RateLimited, "recorded past the limit");
    assert_eq!(remaining(&d, "chat:tokens/minute"), 0);
    assert_eq!(
        remaining(&d, "requests/minute"),
        5,
        "a record with a cost counts no request"
    );
    let d = s.consume(with_cost(chat.clone(), &[("tokens", 1)])).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    s.advance(secs(60));
    assert_eq!(
        verdict(&s.consume(with_cost(chat, &[("tokens", 1)])).await),
        Verdict::Allowed
    );
    s.stop().await;
}

#[tokio::test]
async fn costs_that_can_never_fit_are_too_large() {
    let s = TestServer::start(CONFIG).await;
    let emails = req("key_1", "POST /api/v1/batch/emails");
    let d = s
        .consume(with_cost(emails.clone(), &[("emails", 61)]))
        .await;
    assert_eq!(verdict(&d), Verdict::TooLarge);
    assert_eq!(header(&d, "Retry-After"), None);
    assert!(d.reason.contains("61 emails"), "{}", d.reason);
    let d = s
        .consume(with_cost(
            req("key_1", "POST /v1/chat"),
            &[("tokens", 1001)],
        ))
        .await;
    assert_eq!(verdict(&d), Verdict::TooLarge);
    // Nothing was counted by either.
    let d = s.consume(with_cost(emails, &[("emails", 60)])).await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(remaining(&d, "requests/minute"), 4);
    s.stop().await;
}

#[tokio::test]
async fn a_class_outside_the_plan_is_not_in_plan() {
    let s = TestServer::start(CONFIG).await;
    let d = s.consume(req("key_1", "/api/v1/fetch/search?q=x")).await;
    assert_eq!(verdict(&d), Verdict::NotInPlan);
    assert_eq!(d.class, "search");
    assert_eq!(d.reason, "Enterprise plan required");
    assert!(d.headers.is_empty());
    // The method may also come as an attribute.
    let mut r = req("key_1", "/api/v1/batch/emails");
    r.attributes.insert("method".into(), "post".into());
    assert_eq!(s.consume(r).await.class, "emails");
    s.stop().await;
}

#[tokio::test]
async fn plans_follow_the_account_and_per_account_limits_share_counters() {
    let s = TestServer::start(CONFIG).await;
    let d = s.consume(of_account(req("key_a", "/x"), "acct_pro")).await;
    assert_eq!(d.plan, "pro");
    assert_eq!(remaining(&d, "requests/minute"), 49);
    assert_eq!(s.consume(req("key_free", "/x")).await.plan, "free");
    // fetch-per-org counts the account: two keys share 3 a minute.
    let a = of_account(req("key_a", "/api/v1/fetch/people"), "acct_x");
    let b = of_account(req("key_b", "/api/v1/fetch/people"), "acct_x");
    assert_eq!(s.consume_n(&a, 2).await, 2);
    assert_eq!(s.consume_n(&b, 2).await, 1);
    // ...while requests/minute is per key.
    assert_eq!(remaining(&s.check(b).await, "requests/minute"), 4);
    s.stop().await;
}

#[tokio::test]
async fn usage_carries_over_a_plan_change() {
    let s = TestServer::start(CONFIG).await;
    let r = of_account(req("key_1", "/x"), "acct_1");
    assert_eq!(s.consume_n(&r, 6).await, 5);
    let upgraded = CONFIG.replace("acct_pro: pro", "acct_pro: pro, acct_1: pro");
    let catalog = tollgate::config::parse("t.yaml", &upgraded, s.limiter.slots()).expect("valid");
    s.limiter.replace_catalog(catalog);
    let d = s.consume(r.clone()).await;
    assert_eq!(verdict(&d), Verdict::Allowed, "an upgrade unblocks at once");
    assert_eq!(
        remaining(&d, "requests/minute"),
        44,
        "and usage carried over"
    );
    // A downgrade hands out no fresh quota.
    let catalog = tollgate::config::parse("t.yaml", CONFIG, s.limiter.slots()).expect("valid");
    s.limiter.replace_catalog(catalog);
    assert_eq!(verdict(&s.consume(r).await), Verdict::RateLimited);
    s.stop().await;
}

#[tokio::test]
async fn ietf_headers_name_every_policy() {
    let yaml = format!("headers: both\n{CONFIG}");
    let s = TestServer::start(&yaml).await;
    let d = s.consume(req("key_1", "/x")).await;
    assert_eq!(
        header(&d, "RateLimit-Policy"),
        Some(r#""requests/minute";q=5;w=60, "requests/hour";q=8;w=3600"#)
    );
    assert_eq!(
        header(&d, "RateLimit"),
        Some(r#""requests/minute";r=4;t=60, "requests/hour";r=7;t=3600"#)
    );
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("5"));
    let ietf = TestServer::start(&format!("headers: ietf\n{CONFIG}")).await;
    let d = ietf.consume(req("key_1", "/x")).await;
    assert_eq!(header(&d, "X-RateLimit-Limit"), None);
    assert!(header(&d, "RateLimit").is_some());
    s.stop().await;
    ietf.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let s = TestServer::start(CONFIG).await;
    let mut client = s.client.clone();
    let err = client
        .consume(req("", "/x"))
        .await
        .expect_err("empty subject");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("subject"), "{}", err.message());
    let err = client
        .consume(with_cost(req("k", "/x"), &[("", 1)]))
        .await
        .expect_err("empty unit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("cost"), "{}", err.message());
    let err = client
        .consume(req(&"k".repeat(2000), "/x"))
        .await
        .expect_err("long subject");
    assert!(err.message().starts_with("subject"), "{}", err.message());
    // Nothing was counted by the refused calls.
    assert_eq!(
        remaining(&s.check(req("k", "/x")).await, "requests/minute"),
        5
    );
    s.stop().await;
}

#[tokio::test]
async fn health_answers_serving() {
    let s = TestServer::start(CONFIG).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    s.stop().await;
}

#[tokio::test]
async fn costs_past_the_largest_amount_are_refused_in_every_mode() {
    let s = TestServer::start(CONFIG).await;
    let mut client = s.client.clone();
    let huge = with_cost(req("k", "/v1/chat"), &[("tokens", u64::MAX)]);
    for err in [
        client.consume(huge.clone()).await.expect_err("consume"),
        client.record(huge.clone()).await.expect_err("record"),
        client.check_limit(huge).await.expect_err("check"),
    ] {
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with("cost[tokens]: 18446744073709551615 is more than the largest amount, 9007199254740991"),
            "{}",
            err.message()
        );
    }
    // The largest cost is taken, and does not fit 1000/minute.
    let mut largest = with_cost(req("k", "/v1/chat"), &[("tokens", (1 << 53) - 1)]);
    largest.attributes.insert("method".into(), "POST".into());
    let d = s.record(largest).await;
    assert_ne!(verdict(&d), Verdict::Allowed, "{d:?}");
    s.stop().await;
}

// === paths: one normalization, whatever the spelling ===

/// The spellings of `/api/v1/fetch/search` a client might send, and that an
/// app normalizing its path (as web frameworks do) routes to it.
const SEARCH_SPELLINGS: &[&str] = &[
    "/api/v1/fetch/search",
    "/api/v1/fetch/%73earch",
    "/%61pi/v1/fetch/search",
    "//api/v1/fetch/search",
    "/api//v1/fetch///search",
    "/./api/v1/fetch/search",
    "/api/v1/x/../fetch/search",
    "/api/v1/fetch/%2e/search",
    "/api/v1/fetch/search;x=1",
    "/api/v1/fetch;v=2/search",
    "/api/v1/fetch/search?q=1#top",
    "http://h/api/v1/fetch/search",
    "GET /api/v1/fetch/%73earch",
];

#[tokio::test]
async fn every_spelling_of_a_gated_path_is_judged_as_that_path() {
    let s = TestServer::start(CONFIG).await;
    for spelling in SEARCH_SPELLINGS {
        let d = s.consume(req("key_1", spelling)).await;
        assert_eq!(
            (verdict(&d), d.class.as_str()),
            (Verdict::NotInPlan, "search"),
            "{spelling}"
        );
    }
    // Two spellings of one request count against the same counters.
    let a = s.consume(req("key_2", "/api/v1/fetch/people")).await;
    let b = s.consume(req("key_2", "/api//v1/fetch/%70eople")).await;
    assert_eq!((a.class.as_str(), b.class.as_str()), ("fetch", "fetch"));
    assert_eq!(
        remaining(&b, "fetch-per-org"),
        remaining(&a, "fetch-per-org") - 1
    );
    s.stop().await;
}

#[tokio::test]
async fn a_path_that_cannot_be_normalized_safely_is_refused_naming_the_resource() {
    let s = TestServer::start(CONFIG).await;
    let mut client = s.client.clone();
    for spelling in [
        "/api/v1/fetch%2Fsearch",
        "/api/v1/fetch%5csearch",
        "/api/v1/fetch\\search",
        "/api/v1/fetch/search%00",
        "/api/v1/fetch/%zzsearch",
        "/../api/v1/fetch/search",
        "/api/x//../v1/fetch/search",
    ] {
        let err = client
            .consume(req("key_1", spelling))
            .await
            .expect_err(spelling);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{spelling}");
        assert!(
            err.message().starts_with("resource: ") && err.message().contains("paths.unsafe"),
            "{spelling}: {}",
            err.message()
        );
    }
    // Nothing was counted by the refused calls.
    assert_eq!(
        remaining(&s.check(req("key_1", "/x")).await, "requests/minute"),
        5
    );
    s.stop().await;
}

#[tokio::test]
async fn paths_unsafe_keeps_or_decodes_what_it_is_told_to() {
    let keep = TestServer::start(&format!("{CONFIG}paths: {{ unsafe: keep }}\n")).await;
    // One segment, `fetch%2Fsearch`: not the gated class.
    let d = keep.consume(req("k", "/api/v1/fetch%2fsearch")).await;
    assert_eq!((verdict(&d), d.class.as_str()), (Verdict::Allowed, ""));
    let decode = TestServer::start(&format!("{CONFIG}paths: {{ unsafe: decode }}\n")).await;
    let d = decode.consume(req("k", "/api/v1/fetch%2fsearch")).await;
    assert_eq!(
        (verdict(&d), d.class.as_str()),
        (Verdict::NotInPlan, "search")
    );
    keep.stop().await;
    decode.stop().await;
}

#[tokio::test]
async fn watch_quota_shows_the_limits_of_the_resources_class() {
    let s = TestServer::start(CONFIG).await;
    let mut client = s.client.clone();
    let request = |resource: &str| tollgate::proto::tollgate::v1::WatchRequest {
        subject: "key_1".into(),
        account: String::new(),
        resource: resource.into(),
    };
    let mut fetch = client
        .watch_quota(request("/api//v1/fetch/%70eople"))
        .await
        .expect("watch")
        .into_inner();
    let names: Vec<String> = next_update(&mut fetch)
        .await
        .limits
        .into_iter()
        .map(|l| l.name)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["fetch-per-org", "requests/hour", "requests/minute"],
        "{names:?}"
    );
    let err = client
        .watch_quota(request("/api%2Fv1"))
        .await
        .expect_err("unsafe");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    drop(fetch);
    s.stop().await;
}
