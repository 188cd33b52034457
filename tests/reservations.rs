//! Reserve, then settle: a Consume that counts an estimate, settled for the
//! actual cost (the difference given back, or the excess counted), released,
//! or expired; through the real server, on the manual clock.

mod support;

use std::collections::HashMap;

use support::*;
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
plans:
  free:
    limits:
      - { name: tokens-minute, unit: tokens, rate: 5000/minute }
      - { name: tokens-day, unit: tokens, rate: 100000/day, algorithm: token_bucket }
      - { name: requests, rate: 100/minute }
default_plan: free
"#;

fn reserve(subject: &str, tokens: u64, ttl_secs: Option<i64>) -> LimitRequest {
    let mut r = with_cost(req(subject, "/v1/chat"), &[("tokens", tokens)]);
    r.reserve = Some(pb::Reserve {
        ttl: ttl_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    });
    r
}

fn actual(tokens: u64) -> HashMap<String, u64> {
    HashMap::from([("tokens".to_owned(), tokens)])
}

async fn left(s: &TestServer, subject: &str, limit: &str) -> u64 {
    let d = s
        .check(with_cost(req(subject, "/v1/chat"), &[("tokens", 0)]))
        .await;
    remaining(&d, limit)
}

#[tokio::test]
async fn a_settlement_replaces_the_estimate_with_the_actual_cost() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let d = s.consume(reserve("k", 1000, None)).await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    let reservation = d.reservation.clone().expect("a reservation");
    assert!(reservation.id.starts_with("rsv_"), "{reservation:?}");
    let expires = reservation.expires_at.expect("an expiry");
    assert_eq!(
        expires.seconds as u64,
        T0 / 1_000_000_000 + 300,
        "the default: five minutes"
    );
    assert_eq!(
        left(&s, "k", "tokens-minute").await,
        4000,
        "the estimate counts at once"
    );

    // Settled for less: the difference comes back to every limit.
    let settled = c
        .settle(pb::SettleRequest {
            id: reservation.id.clone(),
            actual: actual(300),
        })
        .await
        .expect("settle")
        .into_inner();
    assert_eq!(settled.estimate["tokens"], 1000);
    assert_eq!(settled.actual["tokens"], 300);
    assert_eq!(
        settled.actual["requests"], 1,
        "units not named keep their estimate"
    );
    assert_eq!(left(&s, "k", "tokens-minute").await, 4700);
    assert_eq!(left(&s, "k", "tokens-day").await, 99_700);
    assert_eq!(left(&s, "k", "requests").await, 99);

    // A retry with the same amounts answers the same and changes nothing;
    // other amounts are refused naming the id.
    let again = c
        .settle(pb::SettleRequest {
            id: reservation.id.clone(),
            actual: actual(300),
        })
        .await
        .expect("a retry")
        .into_inner();
    assert_eq!(again, settled);
    assert_eq!(left(&s, "k", "tokens-minute").await, 4700);
    let other = c
        .settle(pb::SettleRequest {
            id: reservation.id.clone(),
            actual: actual(400),
        })
        .await
        .expect_err("settled already");
    assert_eq!(other.code(), tonic::Code::InvalidArgument);
    assert!(
        other.message().contains(&reservation.id),
        "{}",
        other.message()
    );
    let released = c
        .release(pb::ReleaseRequest {
            id: reservation.id.clone(),
        })
        .await
        .expect_err("settled already");
    assert_eq!(released.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_larger_actual_counts_the_excess_and_a_release_gives_all_back() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let id = |d: &Decision| d.reservation.clone().expect("reserved").id;
    let first = id(&s.consume(reserve("k", 1000, None)).await);
    c.settle(pb::SettleRequest {
        id: first,
        actual: actual(4500),
    })
    .await
    .expect("settle");
    assert_eq!(
        left(&s, "k", "tokens-minute").await,
        500,
        "the excess counts"
    );
    // 600 no longer fits: refused, and nothing is reserved.
    let refused = s.consume(reserve("k", 600, None)).await;
    assert_eq!(verdict(&refused), Verdict::RateLimited);
    assert!(refused.reservation.is_none());
    assert_eq!(left(&s, "k", "tokens-minute").await, 500);
    // Reserved, then released: everything comes back.
    let second = id(&s.consume(reserve("k", 500, None)).await);
    assert_eq!(left(&s, "k", "tokens-minute").await, 0);
    let released = c
        .release(pb::ReleaseRequest { id: second.clone() })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(released.actual["tokens"], 0);
    assert_eq!(left(&s, "k", "tokens-minute").await, 500);
    assert_eq!(
        left(&s, "k", "requests").await,
        99,
        "the released request too"
    );
    // A release retried answers the same.
    let again = c
        .release(pb::ReleaseRequest { id: second })
        .await
        .expect("retried");
    assert_eq!(again.into_inner(), released);
}

#[tokio::test]
async fn an_unsettled_reservation_expires_at_its_estimate() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let d = s.consume(reserve("k", 1000, Some(30))).await;
    let id = d.reservation.expect("reserved").id;
    s.advance(secs(31));
    let gone = c
        .settle(pb::SettleRequest {
            id: id.clone(),
            actual: actual(10),
        })
        .await
        .expect_err("expired");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(gone.message().contains(&id), "{}", gone.message());
    assert_eq!(
        left(&s, "k", "tokens-minute").await,
        4000,
        "settled at its estimate"
    );
}

#[tokio::test]
async fn bad_reservations_are_refused_naming_the_field() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let long = c
        .consume(reserve("k", 10, Some(2 * 3600)))
        .await
        .expect_err("too long");
    assert_eq!(long.code(), tonic::Code::InvalidArgument);
    assert!(
        long.message().starts_with("reserve.ttl:"),
        "{}",
        long.message()
    );
    let check = c
        .check_limit(reserve("k", 10, None))
        .await
        .expect_err("only a Consume reserves");
    assert!(
        check.message().starts_with("reserve:"),
        "{}",
        check.message()
    );
    let unknown = c
        .settle(pb::SettleRequest {
            id: "rsv_nope".into(),
            actual: actual(1),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(unknown.message().contains("rsv_nope"));
    let empty = c
        .release(pb::ReleaseRequest { id: String::new() })
        .await
        .expect_err("no id");
    assert!(empty.message().starts_with("id:"), "{}", empty.message());
    assert_eq!(
        left(&s, "k", "tokens-minute").await,
        5000,
        "nothing counted"
    );
}

#[tokio::test]
async fn over_http_a_consume_reserves_and_settle_and_release_answer() {
    let options = tollgate::server::Options {
        http: Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        ),
        ..Default::default()
    };
    let s = TestServer::start_opts(
        CONFIG,
        tollgate::storage::memory::MemoryStore::new(10_000),
        options,
    )
    .await;
    let http = s.http.expect("http");
    let reply = support::http::post(
        http,
        "/v1/consume",
        r#"{"subject":"h","resource":"/v1/chat","cost":{"tokens":"2000"},"reserve":{"ttl":"60s"}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    let id = body["reservation"]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert!(body["reservation"]["expiresAt"].is_string(), "{body}");
    let settled = support::http::post(
        http,
        "/v1/settle",
        &format!(r#"{{"id":"{id}","actual":{{"tokens":"500"}}}}"#),
    )
    .await;
    assert_eq!(settled.status, 200, "{}", settled.body);
    assert_eq!(settled.json()["actual"]["tokens"], "500");
    assert_eq!(left(&s, "h", "tokens-minute").await, 4500);
    let again = support::http::post(http, "/v1/release", &format!(r#"{{"id":"{id}"}}"#)).await;
    assert_eq!(again.status, 400, "settled already: {}", again.body);
    assert!(again.message().contains(&id));
    let unknown = support::http::post(http, "/v1/release", r#"{"id":"rsv_x"}"#).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
}

/// The README's flow with the seed-001 example, through grpcurl: reserve
/// 4,000 tokens, then settle for 1,830; the other 2,170 are back.
#[test]
fn grpcurl_reserves_then_settles_with_the_bentoo_example() {
    use support::process::{example, grpcurl, serve};
    let config = example("bentoo-ai.yaml");
    let s = serve(&["--config", &config]);
    let addr = s.addr.as_str();
    let reserved = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"subject":"key_1","resource":"/v1/chat","cost":{"tokens":"4000"},"reserve":{"ttl":"120s"}}"#,
        addr,
        "tollgate.v1.RateLimiter/Consume",
    ]);
    let reserved: serde_json::Value = serde_json::from_str(&reserved).expect("JSON");
    assert_eq!(reserved["verdict"], "ALLOWED", "{reserved}");
    let id = reserved["reservation"]["id"].as_str().expect("an id");
    let settled = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"id":"{id}","actual":{{"tokens":"1830"}}}}"#),
        addr,
        "tollgate.v1.RateLimiter/Settle",
    ]);
    let settled: serde_json::Value = serde_json::from_str(&settled).expect("JSON");
    assert_eq!(settled["estimate"]["tokens"], "4000", "{settled}");
    assert_eq!(settled["actual"]["tokens"], "1830");
    let check = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"subject":"key_1","resource":"/v1/chat","cost":{"tokens":"0"}}"#,
        addr,
        "tollgate.v1.RateLimiter/CheckLimit",
    ]);
    let check: serde_json::Value = serde_json::from_str(&check).expect("JSON");
    let day = check["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["unit"] == "tokens" && l["limit"] == "200000")
        .expect("the daily tokens limit");
    assert_eq!(day["remaining"], "198170", "{check}");
}

/// The usage export bills what a reservation cost in the end: a settled
/// one its actual, a released one nothing, an expired one its estimate.
#[tokio::test]
async fn the_usage_export_bills_the_settled_actuals() {
    let options = tollgate::server::Options {
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Default::default()
    };
    let s = TestServer::start_opts(
        CONFIG,
        tollgate::storage::memory::MemoryStore::new(10_000),
        options,
    )
    .await;
    let mut c = s.client.clone();
    let id = |d: &Decision| d.reservation.clone().expect("reserved").id;
    let settled = id(&s.consume(reserve("settled", 1000, None)).await);
    // Settled, then retried: billed once.
    for _ in 0..2 {
        c.settle(pb::SettleRequest {
            id: settled.clone(),
            actual: actual(300),
        })
        .await
        .expect("settle");
    }
    let released = id(&s.consume(reserve("released", 1000, None)).await);
    c.release(pb::ReleaseRequest { id: released })
        .await
        .expect("release");
    s.consume(reserve("expired", 700, Some(10))).await;
    s.consume(reserve("open", 50, None)).await;
    s.advance(secs(11));
    // The server drops expired reservations every 10 s (wall clock): ask
    // until the expired one is billed.
    let billed = |rows: &[pb::UsageRow], subject: &str, unit: &str| -> u64 {
        rows.iter()
            .filter(|r| r.subject == subject && r.unit == unit)
            .map(|r| r.admitted)
            .sum()
    };
    let mut admin = s.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut stream = admin
            .export_usage(authed(pb::ExportUsageRequest {
                from: Some(tollgate::api::convert::timestamp(
                    T0 - 86_400 * 1_000_000_000,
                )),
                granularity: pb::Granularity::Day as i32,
                ..Default::default()
            }))
            .await
            .expect("export")
            .into_inner();
        let mut rows = Vec::new();
        while let Some(r) = stream.message().await.expect("row") {
            rows.push(r);
        }
        if billed(&rows, "expired", "tokens") > 0 {
            assert_eq!(billed(&rows, "settled", "tokens"), 300, "{rows:?}");
            assert_eq!(billed(&rows, "settled", "requests"), 1);
            assert_eq!(billed(&rows, "released", "tokens"), 0);
            assert_eq!(billed(&rows, "released", "requests"), 0);
            assert_eq!(billed(&rows, "expired", "tokens"), 700);
            assert_eq!(
                billed(&rows, "open", "tokens"),
                0,
                "not billed until settled"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expiry was never billed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A watcher sees a settlement: what it gave back is in the next update.
#[tokio::test]
async fn a_watcher_sees_what_a_settlement_gives_back() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let mut stream = c
        .watch_quota(pb::WatchRequest {
            subject: "w".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = next_update(&mut stream).await;
    assert_eq!(update_remaining(&snapshot, "tokens-minute"), Some(5000));
    let id = s
        .consume(reserve("w", 1000, None))
        .await
        .reservation
        .expect("reserved")
        .id;
    let mut u = next_update(&mut stream).await;
    while update_remaining(&u, "tokens-minute") != Some(4000) {
        u = next_update(&mut stream).await;
    }
    c.settle(pb::SettleRequest {
        id,
        actual: actual(250),
    })
    .await
    .expect("settle");
    let mut u = next_update(&mut stream).await;
    while update_remaining(&u, "tokens-minute") != Some(4750) {
        u = next_update(&mut stream).await;
    }
}

/// On a `Decide` stream: a reserve, its settle and an unknown release, each
/// answered by id, in order.
#[tokio::test]
async fn a_decide_stream_reserves_settles_and_releases() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = c
        .decide(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("decide")
        .into_inner();
    tx.send(pb::DecideRequest {
        id: 1,
        mode: pb::Mode::Consume as i32,
        request: Some(reserve("d", 1000, None)),
        ..Default::default()
    })
    .await
    .expect("send");
    let reserved = answers.message().await.expect("answer").expect("open");
    assert_eq!(reserved.id, 1);
    let id = reserved
        .decision
        .and_then(|d| d.reservation)
        .expect("reserved")
        .id;
    tx.send(pb::DecideRequest {
        id: 2,
        settle: Some(pb::SettleRequest {
            id: id.clone(),
            actual: actual(100),
        }),
        ..Default::default()
    })
    .await
    .expect("send");
    tx.send(pb::DecideRequest {
        id: 3,
        release: Some(pb::ReleaseRequest {
            id: "rsv_unknown".into(),
        }),
        ..Default::default()
    })
    .await
    .expect("send");
    let settled = answers.message().await.expect("answer").expect("open");
    assert_eq!(settled.id, 2);
    assert_eq!(settled.settlement.expect("settled").actual["tokens"], 100);
    let unknown = answers.message().await.expect("answer").expect("open");
    assert_eq!(unknown.id, 3);
    assert_eq!(
        unknown.error.expect("an error").code,
        tonic::Code::NotFound as i32
    );
    assert_eq!(left(&s, "d", "tokens-minute").await, 4900);
}

/// How long a reservation is held: asked for, else the shortest of its
/// limits' `reservation_ttl`, else its plan's, else the file's; never past
/// the file's `max_ttl`.
#[tokio::test]
async fn a_reservation_is_held_as_the_request_limit_plan_or_file_says() {
    let yaml = r#"
reservations: { ttl: 2m, max_ttl: 10m }
classes:
  quick: { match: ["/quick"] }
plans:
  free:
    limits:
      - { unit: tokens, rate: 5000/minute }
      - { unit: tokens, class: quick, rate: 1000/minute, reservation_ttl: 30s }
  pro:
    reservations: { ttl: 3m }
    limits:
      - { unit: tokens, rate: 50000/minute }
default_plan: free
assignments: { acme: pro }
"#;
    let s = TestServer::start(yaml).await;
    let t0 = (T0 / 1_000_000_000) as i64;
    let expires = |d: Decision| {
        d.reservation
            .expect("reserved")
            .expires_at
            .expect("expiry")
            .seconds
            - t0
    };
    assert_eq!(
        expires(s.consume(reserve("k", 10, None)).await),
        120,
        "the file's"
    );
    let quick = with_cost(req("k", "/quick"), &[("tokens", 10)]);
    let mut quick = quick;
    quick.reserve = Some(pb::Reserve { ttl: None });
    assert_eq!(expires(s.consume(quick).await), 30, "the limit's");
    let pro = of_account(reserve("k2", 10, None), "acme");
    assert_eq!(expires(s.consume(pro).await), 180, "the plan's");
    assert_eq!(
        expires(s.consume(reserve("k", 10, Some(540))).await),
        540,
        "asked for"
    );
    let mut c = s.client.clone();
    let too_long = c
        .consume(reserve("k", 10, Some(660)))
        .await
        .expect_err("past max_ttl");
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    assert!(
        too_long.message().starts_with("reserve.ttl: at most 10m"),
        "{}",
        too_long.message()
    );
}

/// A unit the estimate did not count is counted at settle: 0 tokens
/// reserved, 500 used.
#[tokio::test]
async fn a_settle_counts_a_unit_the_estimate_left_at_zero() {
    let s = TestServer::start(CONFIG).await;
    let mut c = s.client.clone();
    let mut r = req("z", "/v1/chat");
    r.reserve = Some(pb::Reserve { ttl: None });
    let id = s.consume(r).await.reservation.expect("reserved").id;
    assert_eq!(left(&s, "z", "tokens-minute").await, 5000);
    c.settle(pb::SettleRequest {
        id,
        actual: actual(500),
    })
    .await
    .expect("settle");
    assert_eq!(left(&s, "z", "tokens-minute").await, 4500);
    assert_eq!(left(&s, "z", "tokens-day").await, 99_500);
}

const IN_FLIGHT: &str = r#"
headers: both
classes:
  chat: { match: ["/v1/chat"] }
plans:
  free:
    limits:
      - { unit: concurrent, amount: 2 }
      - { class: chat, unit: concurrent, amount: 1, per: account }
      - { name: requests, rate: 100/minute }
default_plan: free
"#;

/// A concurrency limit: a Consume holds a slot as a reservation until it is
/// settled, released or expires; at most `amount` are held at once.
#[tokio::test]
async fn at_most_amount_requests_are_in_flight_until_settled_released_or_expired() {
    let s = TestServer::start(IN_FLIGHT).await;
    let mut c = s.client.clone();
    let first = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&first), Verdict::Allowed);
    assert_eq!(remaining(&first, "concurrent"), 1);
    let first = first.reservation.expect("a slot is held as a reservation");
    let second = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&second), Verdict::Allowed);
    let second = second.reservation.expect("held");

    let full = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&full), Verdict::RateLimited);
    assert_eq!(full.reason, "concurrent exhausted: 0 of 2 concurrent left");
    assert!(full.reservation.is_none(), "nothing held when refused");
    assert_eq!(header(&full, "Retry-After"), Some("1"), "a hint: a second");
    assert_eq!(
        remaining(&full, "requests"),
        98,
        "the refusal counted nothing"
    );
    let policy = header(&full, "RateLimit-Policy").expect("IETF headers");
    assert!(
        policy.contains(r#""concurrent";q=2;qu="concurrent""#) && !policy.contains("w=0"),
        "no window for requests in flight: {policy}"
    );
    // A check counts nothing and says whether a slot is free.
    let check = s.check(req("k", "/v1/items")).await;
    assert_eq!(verdict(&check), Verdict::RateLimited);
    assert_eq!(s.limiter.expire_reservations().await.len(), 0);

    // Released: the slot is free again; settled: too, whatever the actual.
    c.release(pb::ReleaseRequest {
        id: first.id.clone(),
    })
    .await
    .expect("released");
    let third = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&third), Verdict::Allowed);
    assert_eq!(
        verdict(&s.consume(req("k", "/v1/items")).await),
        Verdict::RateLimited
    );
    let settled = c
        .settle(pb::SettleRequest {
            id: second.id.clone(),
            actual: HashMap::from([("requests".to_owned(), 1)]),
        })
        .await
        .expect("settled")
        .into_inner();
    assert!(
        !settled.estimate.contains_key("concurrent"),
        "slots are held, not billed: {settled:?}"
    );
    let fourth = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&fourth), Verdict::Allowed);
    // Retried, a settle gives nothing back twice.
    c.release(pb::ReleaseRequest { id: first.id })
        .await
        .expect("retried");
    assert_eq!(
        verdict(&s.consume(req("k", "/v1/items")).await),
        Verdict::RateLimited
    );

    // Unsettled, the slots expire with their reservations (five minutes).
    s.advance(secs(301));
    assert_eq!(s.limiter.expire_reservations().await.len(), 2);
    let after = s.consume(req("k", "/v1/items")).await;
    assert_eq!(verdict(&after), Verdict::Allowed);
    assert_eq!(remaining(&after, "concurrent"), 1);
}

/// Per class and per account: the chat class holds one slot of the whole
/// account, beside each subject's two.
#[tokio::test]
async fn a_class_concurrency_limit_per_account_holds_across_its_subjects() {
    let s = TestServer::start(IN_FLIGHT).await;
    let mut c = s.client.clone();
    let chat = |subject: &str| of_account(req(subject, "/v1/chat"), "acme");
    let held = s.consume(chat("k1")).await;
    assert_eq!(verdict(&held), Verdict::Allowed);
    let other = s.consume(chat("k2")).await;
    assert_eq!(verdict(&other), Verdict::RateLimited);
    assert_eq!(
        other.reason,
        "chat:concurrent@account exhausted: 0 of 1 concurrent left"
    );
    assert_eq!(
        verdict(&s.consume(of_account(req("k2", "/v1/items"), "acme")).await),
        Verdict::Allowed,
        "other classes hold their own slots"
    );
    c.release(pb::ReleaseRequest {
        id: held.reservation.expect("held").id,
    })
    .await
    .expect("released");
    assert_eq!(verdict(&s.consume(chat("k2")).await), Verdict::Allowed);
}

/// Many callers at once: exactly `amount` are admitted, however the calls
/// interleave; once they are released, exactly `amount` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_never_hold_more_than_amount() {
    let yaml =
        "plans: { free: { limits: [ { unit: concurrent, amount: 5 } ] } }\ndefault_plan: free\n";
    let s = TestServer::start(yaml).await;
    for round in 0..3 {
        let calls = (0..40).map(|_| {
            let mut c = s.client.clone();
            tokio::spawn(async move {
                c.consume(req("k", "/v1/x"))
                    .await
                    .expect("decided")
                    .into_inner()
            })
        });
        let mut held = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            let d = call.await.expect("joined");
            if let Some(r) = d.reservation {
                held.push(r.id);
            }
        }
        assert_eq!(held.len(), 5, "round {round}: exactly the amount admitted");
        for id in held {
            s.client
                .clone()
                .release(pb::ReleaseRequest { id })
                .await
                .expect("released");
        }
    }
}

/// A settle past the estimate counts the excess as a Record does: a
/// threshold it crosses is announced, on the limits of the reservation's
/// class only, and a retried settle announces nothing again.
#[tokio::test]
async fn a_settles_excess_announces_the_thresholds_it_crosses() {
    let s = TestServer::start(
        r#"
classes:
  chat: { match: ["/v1/chat"] }
  embed: { match: ["/v1/embed"] }
plans:
  free:
    limits:
      - { name: chat-tokens, class: chat, unit: tokens, rate: 1000/minute, thresholds: [80%] }
      - { name: embed-tokens, class: embed, unit: tokens, rate: 1000/minute, thresholds: [50%] }
default_plan: free
"#,
    )
    .await;
    let mut c = s.client.clone();
    let mut admin = s.admin().await;
    let mut events = admin
        .watch_events(authed(pb::WatchEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let d = s.consume(reserve("k", 100, None)).await;
    let id = d.reservation.expect("reserved").id;
    let settle = pb::SettleRequest {
        id,
        actual: actual(900),
    };
    c.settle(settle.clone()).await.expect("settle");
    let event = next_event(&mut events).await;
    assert_eq!(
        (
            event.subject.as_str(),
            event.limit.as_str(),
            event.threshold.as_str(),
            event.used,
            event.amount,
            event.unit.as_str()
        ),
        ("k", "chat-tokens", "80%", 900, 1000, "tokens")
    );
    // A retry changes nothing, and announces nothing.
    c.settle(settle).await.expect("retried");
    // The next event is the embed class's own crossing: the chat excess
    // announced nothing there.
    let embed = with_cost(req("k", "/v1/embed"), &[("tokens", 600)]);
    assert_eq!(verdict(&s.consume(embed).await), Verdict::Allowed);
    let event = next_event(&mut events).await;
    assert_eq!(
        (event.limit.as_str(), event.threshold.as_str(), event.used),
        ("embed-tokens", "50%", 600)
    );
}
