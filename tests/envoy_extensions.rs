//! What tollgate adds behind Envoy's protocol: opt-in algorithms, several
//! limits on one descriptor, any window, bursts, plan-aware domains (plans,
//! gated classes, costs, instant upgrades, WatchQuota on the same counters)
//! and reloads of the rule files.

mod support;

use std::time::Duration;

use support::envoy::*;
use support::{authed, next_update, secs, update_remaining};
use tollgate::proto::tollgate::v1 as tg;

#[tokio::test]
async fn several_limits_on_one_descriptor_count_together() {
    let rules = "
domain: api
descriptors:
  - key: api_key
    rate_limits:
      - { name: per_second, unit: second, requests_per_unit: 2 }
      - { name: per_minute, unit: minute, requests_per_unit: 5 }
";
    let e = Envoy::start(&[rules]).await;
    let r = request("api", &[&[("api_key", "k")]]);
    let s = |a, u, rem, reset, n| named(ok(a, u, rem, reset), n);
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [s(2, Unit::Second, 1, 1, "per_second")]
    );
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [s(2, Unit::Second, 0, 1, "per_second")]
    );
    // Refused by the second limit: counted against neither.
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [named(over(2, Unit::Second, 1), "per_second")]
    );
    e.server.advance(secs(1));
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [s(5, Unit::Minute, 2, 59, "per_minute")]
    );
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [s(2, Unit::Second, 0, 1, "per_second")]
    );
    e.server.advance(secs(1));
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [s(5, Unit::Minute, 0, 58, "per_minute")]
    );
    // The minute binds now: the wait is the rest of the minute.
    assert_eq!(
        e.hit(r).await.statuses,
        [named(over(5, Unit::Minute, 58), "per_minute")]
    );
}

#[tokio::test]
async fn a_token_bucket_lets_an_idle_caller_burst_then_refills_steadily() {
    let rules = "
domain: api
descriptors:
  - key: api_key
    rate_limit: { unit: minute, requests_per_unit: 60, algorithm: token_bucket }
";
    let e = Envoy::start(&[rules]).await;
    let r = request("api", &[&[("api_key", "k")]]);
    // Reset: until the bucket is full again.
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(60, Unit::Minute, 59, 1)]
    );
    assert_eq!(
        e.hit_n(&r, 59).await.statuses,
        [ok(60, Unit::Minute, 0, 60)]
    );
    // Over: the wait for one token.
    assert_eq!(e.hit(r.clone()).await.statuses, [over(60, Unit::Minute, 1)]);
    e.server.advance(secs(1));
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(60, Unit::Minute, 0, 60)]
    );
    assert_eq!(code(&e.hit(r).await), Code::OverLimit);
}

#[tokio::test]
async fn a_sliding_window_weighs_the_previous_window() {
    let rules = "
domain: api
descriptors:
  - key: api_key
    rate_limit: { unit: minute, requests_per_unit: 10, algorithm: sliding_window }
";
    let e = Envoy::start(&[rules]).await;
    let r = request("api", &[&[("api_key", "k")]]);
    e.hit_n(&r, 10).await;
    assert_eq!(code(&e.hit(r.clone()).await), Code::OverLimit);
    // A new window opens, but the previous one still weighs fully.
    e.server.advance(secs(60));
    assert_eq!(code(&e.hit(r.clone()).await), Code::OverLimit);
    // Half way through, half of it: five more.
    e.server.advance(secs(30));
    let mut admitted = 0;
    for _ in 0..10 {
        if code(&e.hit(r.clone()).await) == Code::Ok {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

#[tokio::test]
async fn any_window_length_with_the_unit_unknown_to_envoy() {
    let rules = "
domain: api
descriptors:
  - key: api_key
    rate_limit: { window: 30s, requests_per_unit: 3 }
";
    let e = Envoy::start(&[rules]).await;
    let r = request("api", &[&[("api_key", "k")]]);
    e.server.advance(secs(10));
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(3, Unit::Unknown, 2, 20)]
    );
    e.hit_n(&r, 2).await;
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [over(3, Unit::Unknown, 20)]
    );
    e.server.advance(secs(20));
    assert_eq!(e.hit(r).await.statuses, [ok(3, Unit::Unknown, 2, 30)]);
}

#[tokio::test]
async fn a_burst_never_lets_a_window_exceed_its_ceiling() {
    let rules = "
domain: api
descriptors:
  - key: api_key
    rate_limit: { unit: minute, requests_per_unit: 60, burst: 20% }
";
    let e = Envoy::start(&[rules]).await;
    let r = request("api", &[&[("api_key", "k")]]);
    let mut admitted = 0;
    for _ in 0..100 {
        if code(&e.hit(r.clone()).await) == Code::Ok {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 60, "an idle caller sends a full minute at once");
    // Half a minute later the bucket holds 30 more, but the minute's
    // ceiling is 72: only 12 of them.
    e.server.advance(secs(30));
    let mut admitted = 0;
    for _ in 0..100 {
        if code(&e.hit(r.clone()).await) == Code::Ok {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 12);
}

const PLANS: &str = r#"
classes:
  search: { match: ["/search*"] }
plans:
  free:
    limits:
      - { rate: 3/minute }
      - { unit: tokens, rate: 100/minute }
      - { class: search, deny: "search is in the pro plan" }
  pro:
    limits:
      - { rate: 10/minute }
      - { unit: tokens, rate: 1000/minute }
default_plan: free
envoy:
  domains:
    saas:
      subject: api_key
      account: org
      plan: plan
      resource: path
      method: method
      cost:
        tokens: tokens
"#;

async fn plans() -> Envoy {
    Envoy::with(&[], Options::default(), PLANS).await
}

#[tokio::test]
async fn a_plan_domain_limits_by_the_subjects_plan() {
    let e = plans().await;
    let r = request("saas", &[&[("api_key", "k1"), ("path", "/items")]]);
    let first = e.hit(r.clone()).await;
    assert_eq!(
        first.statuses,
        [named(ok(3, Unit::Minute, 2, 60), "requests/minute")]
    );
    e.hit_n(&r, 2).await;
    let refused = e.hit(r).await;
    assert_eq!(
        refused.statuses,
        [named(over(3, Unit::Minute, 60), "requests/minute")]
    );
    assert_eq!(code(&refused), Code::OverLimit);
    // Without the subject's entry, nothing limits the descriptor.
    let anonymous = e.hit(request("saas", &[&[("path", "/items")]])).await;
    assert_eq!(anonymous.statuses, [no_limit()]);
}

#[tokio::test]
async fn a_class_outside_the_plan_is_refused_with_its_message() {
    let e = plans().await;
    let r = e
        .hit(request(
            "saas",
            &[&[
                ("api_key", "k1"),
                ("method", "GET"),
                ("path", "/search?q=x"),
            ]],
        ))
        .await;
    assert_eq!(code(&r), Code::OverLimit);
    assert_eq!(r.raw_body, b"search is in the pro plan");
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
}

#[tokio::test]
async fn a_plan_domain_judges_the_normalized_path() {
    let e = plans().await;
    for path in [
        "/%73earch",
        "//search",
        "/x/../search",
        "/./search;v=1",
        "http://h/search",
    ] {
        let r = e
            .hit(request("saas", &[&[("api_key", "k1"), ("path", path)]]))
            .await;
        assert_eq!(code(&r), Code::OverLimit, "{path}");
        assert_eq!(r.raw_body, b"search is in the pro plan", "{path}");
    }
    // What cannot be judged safely is an error: Envoy's failure mode decides.
    let err = e
        .client
        .clone()
        .should_rate_limit(request(
            "saas",
            &[&[("api_key", "k1"), ("path", "/x%2Fsearch")]],
        ))
        .await
        .expect_err("unsafe");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("resource: "), "{}", err.message());
}

#[tokio::test]
async fn costs_come_from_descriptor_entries() {
    let e = plans().await;
    let r = request(
        "saas",
        &[&[("api_key", "k1"), ("path", "/chat"), ("tokens", "80")]],
    );
    let first = e.hit(r.clone()).await;
    assert_eq!(
        first.statuses,
        [named(ok(100, Unit::Minute, 20, 60), "tokens/minute")]
    );
    // 160 tokens do not fit: refused, and the requests limit is not charged.
    assert_eq!(code(&e.hit(r).await), Code::OverLimit);
    let small = e
        .hit(request(
            "saas",
            &[&[("api_key", "k1"), ("path", "/chat"), ("tokens", "1")]],
        ))
        .await;
    assert_eq!(
        small.statuses,
        [named(ok(100, Unit::Minute, 19, 60), "tokens/minute")]
    );
    let bad = e
        .call(request("saas", &[&[("api_key", "k1"), ("tokens", "lots")]]))
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("descriptors[0].entries[1].value"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn the_gateway_may_name_the_plan_and_admin_upgrades_still_win() {
    let e = plans().await;
    let r = request("saas", &[&[("api_key", "k2"), ("plan", "pro")]]);
    assert_eq!(
        e.hit(r).await.statuses,
        [named(ok(10, Unit::Minute, 9, 60), "requests/minute")]
    );
    // An unknown plan name falls back to the account's own plan.
    let r = request("saas", &[&[("api_key", "k3"), ("plan", "platinum")]]);
    assert_eq!(
        e.hit(r).await.statuses,
        [named(ok(3, Unit::Minute, 2, 60), "requests/minute")]
    );
    // An upgrade through the admin API applies on the very next call, over
    // what the gateway says; usage carries over.
    let mut admin = e.server.admin().await;
    admin
        .set_plan(authed(tg::SetPlanRequest {
            account: "k3".into(),
            plan: "pro".into(),
            clear: false,
        }))
        .await
        .expect("set plan");
    let r = request("saas", &[&[("api_key", "k3"), ("plan", "free")]]);
    assert_eq!(
        e.hit(r).await.statuses,
        [named(ok(10, Unit::Minute, 8, 60), "requests/minute")]
    );
}

#[tokio::test]
async fn watch_quota_sees_what_envoy_consumes() {
    let e = plans().await;
    let mut stream = e
        .server
        .client
        .clone()
        .watch_quota(tg::WatchRequest {
            subject: "k9".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = next_update(&mut stream).await;
    assert_eq!(update_remaining(&snapshot, "requests/minute"), Some(3));
    e.hit(request("saas", &[&[("api_key", "k9")]])).await;
    let update = next_update(&mut stream).await;
    assert_eq!(update_remaining(&update, "requests/minute"), Some(2));
}

#[tokio::test]
async fn rule_files_reload_keeping_counters_and_refusing_invalid_ones() {
    let e = Envoy::start(&["domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 5 }\n"]).await;
    let r = request("d", &[&[("k", "v")]]);
    e.hit_n(&r, 2).await;
    let file = e.dir.join("rules-0.yaml");
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 10 }\n").expect("write");
    let mut admin = e.server.admin().await;
    let done = admin
        .reload_config(authed(tg::ReloadConfigRequest {}))
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(done.envoy_domains, 1);
    // The new limit, and the two hits already counted.
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(10, Unit::Minute, 7, 60)]
    );
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n").expect("write");
    let err = admin
        .reload_config(authed(tg::ReloadConfigRequest {}))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains(
            "rules-0.yaml:4: descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight'"
        ),
        "{}",
        err.message()
    );
    assert_eq!(
        e.hit(r).await.statuses,
        [ok(10, Unit::Minute, 6, 60)],
        "the running rules stay"
    );
}

#[tokio::test]
async fn a_changed_rule_file_is_picked_up_by_itself() {
    let e = Envoy::start(&["domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 5 }\n"]).await;
    let r = request("d", &[&[("k", "v")]]);
    std::fs::write(e.dir.join("more.yaml"), "domain: e\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 1 }\n").expect("write");
    let other = request("e", &[&[("k", "v")]]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let check = {
            let mut c = other.clone();
            c.descriptors[0].hits_addend = Some(0);
            c
        };
        if e.hit(check).await.statuses[0].current_limit.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(e.hit(other).await.statuses, [ok(1, Unit::Hour, 0, 3600)]);
    assert_eq!(e.hit(r).await.statuses, [ok(5, Unit::Minute, 4, 60)]);
}

#[tokio::test]
async fn oversized_requests_are_refused_before_anything_counts() {
    let e = plans().await;
    let refused = |r| async { e.call(r).await.expect_err("refused") };
    let entry = [("api_key", "k1"), ("path", "/chat")];
    let many: Vec<&[(&str, &str)]> = vec![&entry[..]; 65];
    let err = refused(request("saas", &many)).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("descriptors: 65 descriptors, more than the 64"),
        "{}",
        err.message()
    );
    let wide: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = refused(request("saas", &[&wide])).await;
    assert!(
        err.message()
            .starts_with("descriptors[0].entries: 17 entries, more than the 16"),
        "{}",
        err.message()
    );
    let long = "x".repeat(1025);
    let err = refused(request("saas", &[&[("api_key", &long)]])).await;
    assert!(
        err.message()
            .starts_with("descriptors[0].entries[0].value: longer than 1024 bytes"),
        "{}",
        err.message()
    );
    let huge = u64::MAX.to_string();
    let err = refused(request(
        "saas",
        &[&[("api_key", "k1"), ("path", "/chat"), ("tokens", &huge)]],
    ))
    .await;
    assert!(
        err.message().starts_with(
            "descriptors[0].entries[2].value: 18446744073709551615 is more than the largest amount"
        ),
        "{}",
        err.message()
    );
    let mut r = request("saas", &[&entry]);
    r.descriptors[0].hits_addend = Some(u64::MAX);
    let err = refused(r).await;
    assert!(
        err.message().starts_with("descriptors[0].hits_addend:"),
        "{}",
        err.message()
    );
    // At the caps, it answers; nothing refused was counted.
    let at_cap: Vec<&[(&str, &str)]> = vec![&entry[..]; 64];
    let ok = e.hit(request("saas", &at_cap)).await;
    assert_eq!(ok.statuses.len(), 64);
}

#[tokio::test]
async fn the_caps_follow_their_flags() {
    let options = Options {
        max_descriptors: 100,
        max_entries: 20,
        ..Options::default()
    };
    let e = Envoy::with(&[], options, PLANS).await;
    let entry = [("api_key", "k1"), ("path", "/chat")];
    let many: Vec<&[(&str, &str)]> = vec![&entry[..]; 100];
    assert_eq!(e.hit(request("saas", &many)).await.statuses.len(), 100);
    let wide: Vec<(String, String)> = (0..20).map(|i| (format!("k{i}"), "v".into())).collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(e.hit(request("saas", &[&wide])).await.statuses.len(), 1);
    let err = e
        .call(request("saas", &vec![&entry[..]; 101]))
        .await
        .expect_err("past the raised cap");
    assert!(
        err.message().contains("more than the 100"),
        "{}",
        err.message()
    );
}
