//! envoyproxy/ratelimit conformance: rule files in the reference's format,
//! driven over gRPC with Envoy's own messages, each scenario with its
//! configuration, its request sequence and the exact statuses expected. The
//! clock is manual and starts on a day boundary ([`support::T0`]), so every
//! `duration_until_reset` is exact.

mod support;

use support::envoy::*;
use support::{T0, secs};
use tollgate::engine::clock::SECOND;

const BASIC: &str = "
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: { unit: second, requests_per_unit: 5 }
      - key: subkey1
        value: subvalue1
        rate_limit: { unit: second, requests_per_unit: 10 }
  - key: key2
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: key2
    value: value2
    rate_limit: { unit: minute, requests_per_unit: 30 }
  - key: key2
    value: value3
  - key: key3
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: key4
    rate_limit: { name: key4_rate_limit, unit: day, requests_per_unit: 1 }
  - key: key6
    rate_limit: { unlimited: true }
";

#[tokio::test]
async fn a_key_only_rule_counts_each_value_on_its_own() {
    let e = Envoy::start(&[BASIC]).await;
    let a = request("test-domain", &[&[("key2", "a")]]);
    let b = request("test-domain", &[&[("key2", "b")]]);
    assert_eq!(
        e.hit(a.clone()).await.statuses,
        [ok(20, Unit::Minute, 19, 60)]
    );
    assert_eq!(
        e.hit(a.clone()).await.statuses,
        [ok(20, Unit::Minute, 18, 60)]
    );
    assert_eq!(e.hit(b).await.statuses, [ok(20, Unit::Minute, 19, 60)]);
    let last = e.hit_n(&a, 18).await;
    assert_eq!(last.statuses, [ok(20, Unit::Minute, 0, 60)]);
    assert_eq!(code(&last), Code::Ok);
    let refused = e.hit(a).await;
    assert_eq!(refused.statuses, [over(20, Unit::Minute, 60)]);
    assert_eq!(code(&refused), Code::OverLimit);
}

#[tokio::test]
async fn key_and_value_is_more_specific_than_key_alone() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e
        .hit(request("test-domain", &[&[("key2", "value2")]]))
        .await;
    assert_eq!(r.statuses, [ok(30, Unit::Minute, 29, 60)]);
    let r = e
        .hit(request(
            "test-domain",
            &[&[("key1", "value1"), ("subkey1", "subvalue1")]],
        ))
        .await;
    assert_eq!(r.statuses, [ok(10, Unit::Second, 9, 1)]);
    let r = e
        .hit(request(
            "test-domain",
            &[&[("key1", "value1"), ("subkey1", "other")]],
        ))
        .await;
    assert_eq!(r.statuses, [ok(5, Unit::Second, 4, 1)]);
}

#[tokio::test]
async fn a_value_without_a_limit_is_not_limited() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e
        .hit_n(&request("test-domain", &[&[("key2", "value3")]]), 50)
        .await;
    assert_eq!(r.statuses, [no_limit()]);
    assert_eq!(code(&r), Code::Ok);
}

#[tokio::test]
async fn the_limit_applies_only_at_the_request_depth() {
    let e = Envoy::start(&[BASIC]).await;
    // Too shallow: key1=value1 holds no limit itself.
    let r = e
        .hit(request("test-domain", &[&[("key1", "value1")]]))
        .await;
    assert_eq!(r.statuses, [no_limit()]);
    // Too deep: key2 has no nested descriptors.
    let r = e
        .hit(request("test-domain", &[&[("key2", "x"), ("sub", "y")]]))
        .await;
    assert_eq!(r.statuses, [no_limit()]);
    // An unknown key.
    let r = e.hit(request("test-domain", &[&[("nope", "x")]])).await;
    assert_eq!(r.statuses, [no_limit()]);
}

#[tokio::test]
async fn an_unknown_domain_limits_nothing() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e
        .hit(request(
            "other-domain",
            &[&[("key2", "a")], &[("key3", "b")]],
        ))
        .await;
    assert_eq!(r.statuses, [no_limit(), no_limit()]);
    assert_eq!(code(&r), Code::Ok);
}

#[tokio::test]
async fn an_empty_domain_or_descriptor_list_is_the_references_error() {
    let e = Envoy::start(&[BASIC]).await;
    let err = e
        .call(request("", &[&[("key2", "a")]]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(err.message(), "rate limit domain must not be empty");
    let err = e
        .call(request("test-domain", &[]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(
        err.message(),
        "rate limit descriptor list must not be empty"
    );
}

#[tokio::test]
async fn statuses_come_in_request_order_and_any_over_makes_the_request_over() {
    let e = Envoy::start(&[BASIC]).await;
    let r = request(
        "test-domain",
        &[&[("key3", "x")], &[("key2", "y")], &[("nope", "z")]],
    );
    let first = e.hit(r.clone()).await;
    assert_eq!(
        first.statuses,
        [
            ok(1, Unit::Hour, 0, 3600),
            ok(20, Unit::Minute, 19, 60),
            no_limit()
        ]
    );
    assert_eq!(code(&first), Code::Ok);
    let second = e.hit(r).await;
    assert_eq!(
        second.statuses,
        [
            over(1, Unit::Hour, 3600),
            ok(20, Unit::Minute, 18, 60),
            no_limit()
        ]
    );
    assert_eq!(code(&second), Code::OverLimit);
}

#[tokio::test]
async fn every_matched_descriptor_counts_even_when_the_request_is_refused() {
    // The reference increments every descriptor's counter on every call.
    let e = Envoy::start(&[BASIC]).await;
    let r = request("test-domain", &[&[("key3", "x")], &[("key2", "y")]]);
    e.hit_n(&r, 3).await;
    let alone = e.hit(request("test-domain", &[&[("key2", "y")]])).await;
    assert_eq!(alone.statuses, [ok(20, Unit::Minute, 16, 60)]);
}

#[tokio::test]
async fn the_limit_name_is_reported() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e.hit(request("test-domain", &[&[("key4", "k")]])).await;
    assert_eq!(
        r.statuses,
        [named(ok(1, Unit::Day, 0, 86_400), "key4_rate_limit")]
    );
}

#[tokio::test]
async fn unlimited_answers_ok_with_the_largest_remaining() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e
        .hit_n(&request("test-domain", &[&[("key6", "x")]]), 100)
        .await;
    assert_eq!(r.statuses, [unlimited()]);
    assert_eq!(code(&r), Code::Ok);
}

#[tokio::test]
async fn a_zero_limit_refuses_everything() {
    let rules = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: remote_address
    value: 50.0.0.5
    rate_limit: { unit: second, requests_per_unit: 0 }
";
    let e = Envoy::start(&[rules]).await;
    let r = e
        .hit(request("edge", &[&[("remote_address", "50.0.0.5")]]))
        .await;
    assert_eq!(r.statuses, [over(0, Unit::Second, 1)]);
    assert_eq!(code(&r), Code::OverLimit);
    let r = e
        .hit(request("edge", &[&[("remote_address", "50.0.0.1")]]))
        .await;
    assert_eq!(r.statuses, [ok(10, Unit::Second, 9, 1)]);
    // As the reference: a check of a fresh window is not over (nothing was
    // counted yet); after one hit, it is.
    let mut zero = request("edge", &[&[("remote_address", "50.0.0.5")]]);
    zero.descriptors[0].hits_addend = Some(0);
    e.server.advance(secs(1));
    let fresh = e.hit(zero.clone()).await;
    assert_eq!(
        fresh.statuses,
        [DescriptorStatus {
            code: Code::Ok as i32,
            ..over(0, Unit::Second, 1)
        }]
    );
    e.hit(request("edge", &[&[("remote_address", "50.0.0.5")]]))
        .await;
    assert_eq!(e.hit(zero).await.statuses, [over(0, Unit::Second, 1)]);
}

#[tokio::test]
async fn duration_until_reset_is_the_rest_of_the_aligned_window() {
    let e = Envoy::start(&[BASIC]).await;
    e.server.advance(secs(15));
    let r = e.hit(request("test-domain", &[&[("key2", "a")]])).await;
    assert_eq!(r.statuses, [ok(20, Unit::Minute, 19, 45)]);
    let r = e.hit(request("test-domain", &[&[("key3", "a")]])).await;
    assert_eq!(r.statuses, [ok(1, Unit::Hour, 0, 3585)]);
    let r = e.hit(request("test-domain", &[&[("key3", "a")]])).await;
    assert_eq!(r.statuses, [over(1, Unit::Hour, 3585)]);
}

#[tokio::test]
async fn a_new_window_starts_afresh() {
    let e = Envoy::start(&[BASIC]).await;
    let r = request("test-domain", &[&[("key3", "a")]]);
    e.hit_n(&r, 5).await;
    assert_eq!(e.hit(r.clone()).await.statuses, [over(1, Unit::Hour, 3600)]);
    e.server.advance(secs(3600));
    assert_eq!(e.hit(r).await.statuses, [ok(1, Unit::Hour, 0, 3600)]);
}

#[tokio::test]
async fn week_month_and_year_windows_are_aligned_to_the_epoch() {
    let rules = "
domain: long
descriptors:
  - key: w
    rate_limit: { unit: week, requests_per_unit: 7 }
  - key: m
    rate_limit: { unit: MONTH, requests_per_unit: 30 }
  - key: y
    rate_limit: { unit: Year, requests_per_unit: 365 }
";
    let e = Envoy::start(&[rules]).await;
    let now = (T0 / SECOND) as i64;
    let rest = |unit: i64| unit - now % unit;
    let r = e
        .hit(request(
            "long",
            &[&[("w", "1")], &[("m", "1")], &[("y", "1")]],
        ))
        .await;
    assert_eq!(
        r.statuses,
        [
            ok(7, Unit::Week, 6, rest(604_800)),
            ok(30, Unit::Month, 29, rest(30 * 86_400)),
            ok(365, Unit::Year, 364, rest(365 * 86_400)),
        ]
    );
}

#[tokio::test]
async fn request_hits_addend_counts_that_many() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")]]);
    r.hits_addend = 15;
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(20, Unit::Minute, 5, 60)]
    );
    // 30 > 20: over, and (as in the reference) counted.
    assert_eq!(e.hit(r).await.statuses, [over(20, Unit::Minute, 60)]);
}

#[tokio::test]
async fn request_hits_addend_zero_means_one() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")]]);
    r.hits_addend = 0;
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(20, Unit::Minute, 19, 60)]
    );
    assert_eq!(e.hit(r).await.statuses, [ok(20, Unit::Minute, 18, 60)]);
}

/// Envoy 1.40's `is_negative_hits` (a stream-done call giving hits back):
/// taken off the window's count, never below nothing, and never counted.
#[tokio::test]
async fn negative_hits_are_given_back() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")]]);
    r.descriptors[0].hits_addend = Some(15);
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(20, Unit::Minute, 5, 60)]
    );
    let mut back = r.clone();
    back.descriptors[0].hits_addend = Some(10);
    back.descriptors[0].is_negative_hits = true;
    assert_eq!(
        e.hit(back.clone()).await.statuses,
        [ok(20, Unit::Minute, 15, 60)]
    );
    back.descriptors[0].hits_addend = Some(50);
    assert_eq!(e.hit(back).await.statuses, [ok(20, Unit::Minute, 20, 60)]);
    assert_eq!(e.hit(r).await.statuses, [ok(20, Unit::Minute, 5, 60)]);
}

#[tokio::test]
async fn descriptor_hits_addend_wins_over_the_requests() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")], &[("key2", "b")]]);
    r.hits_addend = 2;
    r.descriptors[0].hits_addend = Some(5);
    assert_eq!(
        e.hit(r).await.statuses,
        [ok(20, Unit::Minute, 15, 60), ok(20, Unit::Minute, 18, 60)]
    );
}

#[tokio::test]
async fn descriptor_hits_addend_zero_only_checks() {
    let e = Envoy::start(&[BASIC]).await;
    let mut check = request("test-domain", &[&[("key3", "a")]]);
    check.descriptors[0].hits_addend = Some(0);
    assert_eq!(
        e.hit(check.clone()).await.statuses,
        [ok(1, Unit::Hour, 1, 3600)]
    );
    assert_eq!(
        e.hit(check.clone()).await.statuses,
        [ok(1, Unit::Hour, 1, 3600)]
    );
    // Exactly at the limit is not over; past it is.
    e.hit(request("test-domain", &[&[("key3", "a")]])).await;
    assert_eq!(
        e.hit(check.clone()).await.statuses,
        [ok(1, Unit::Hour, 0, 3600)]
    );
    e.hit(request("test-domain", &[&[("key3", "a")]])).await;
    assert_eq!(e.hit(check).await.statuses, [over(1, Unit::Hour, 3600)]);
}

#[tokio::test]
async fn a_descriptor_limit_from_envoy_replaces_the_configured_one() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")], &[("anything", "b")]]);
    for d in &mut r.descriptors {
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 2,
            unit: RateLimitUnit::Hour as i32,
        });
    }
    assert_eq!(
        e.hit(r.clone()).await.statuses,
        [ok(2, Unit::Hour, 1, 3600), ok(2, Unit::Hour, 1, 3600)]
    );
    e.hit(r.clone()).await;
    let third = e.hit(r).await;
    assert_eq!(
        third.statuses,
        [over(2, Unit::Hour, 3600), over(2, Unit::Hour, 3600)]
    );
    // The configured minute limit of key2=a was not touched.
    let plain = e.hit(request("test-domain", &[&[("key2", "a")]])).await;
    assert_eq!(plain.statuses, [ok(20, Unit::Minute, 19, 60)]);
}

#[tokio::test]
async fn a_descriptor_limit_needs_a_known_domain() {
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("unknown", &[&[("key2", "a")]]);
    r.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 0,
        unit: RateLimitUnit::Second as i32,
    });
    assert_eq!(e.hit(r).await.statuses, [no_limit()]);
}

#[tokio::test]
async fn a_descriptor_limit_with_no_unit_is_refused_not_a_crash() {
    // The reference panics on this; tollgate names the field.
    let e = Envoy::start(&[BASIC]).await;
    let mut r = request("test-domain", &[&[("key2", "a")]]);
    r.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 3,
        unit: RateLimitUnit::Unknown as i32,
    });
    let err = e.call(r.clone()).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("descriptors[0].limit.unit"),
        "{}",
        err.message()
    );
    r.descriptors[0].limit.as_mut().expect("set").unit = 42;
    assert_eq!(
        e.call(r).await.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );
    // The server still answers.
    let fine = e.hit(request("test-domain", &[&[("key2", "a")]])).await;
    assert_eq!(fine.statuses, [ok(20, Unit::Minute, 19, 60)]);
}

const SHADOW: &str = "
domain: shadow
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: { requests_per_unit: 1, unit: second }
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit: { requests_per_unit: 1, unit: second }
";

#[tokio::test]
async fn shadow_mode_counts_and_reports_but_never_refuses() {
    let e = Envoy::start(&[SHADOW]).await;
    let a = request("shadow", &[&[("service", "auth"), ("user", "user-a")]]);
    e.hit(a.clone()).await;
    let r = e.hit(a).await;
    assert_eq!(
        r.statuses,
        [DescriptorStatus {
            code: Code::Ok as i32,
            ..over(1, Unit::Second, 1)
        }]
    );
    assert_eq!(code(&r), Code::Ok);
    let b = request("shadow", &[&[("service", "auth"), ("user", "user-b")]]);
    e.hit(b.clone()).await;
    assert_eq!(code(&e.hit(b).await), Code::OverLimit);
}

#[tokio::test]
async fn global_shadow_mode_keeps_statuses_but_answers_ok() {
    let options = Options {
        shadow_mode: true,
        ..Options::default()
    };
    let e = Envoy::with(&[SHADOW], options, NO_PLANS).await;
    let b = request("shadow", &[&[("service", "auth"), ("user", "user-b")]]);
    e.hit(b.clone()).await;
    let r = e.hit(b).await;
    assert_eq!(r.statuses, [over(1, Unit::Second, 1)]);
    assert_eq!(code(&r), Code::Ok);
}

const REPLACES: &str = "
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: { name: specific_limit, requests_per_unit: 5, unit: second }
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
";

#[tokio::test]
async fn replaces_drops_the_replaced_limit_without_counting_it() {
    let e = Envoy::start(&[REPLACES]).await;
    let both = request(
        "example7",
        &[
            &[("key_1", "value_1"), ("user", "bkthomps")],
            &[("key_2", "value_2"), ("user", "bkthomps")],
        ],
    );
    let r = e.hit_n(&both, 7).await;
    assert_eq!(r.statuses, [no_limit(), ok(10, Unit::Second, 3, 1)]);
    assert_eq!(code(&r), Code::Ok);
    // The replaced limit kept all of its quota.
    let alone = e
        .hit(request(
            "example7",
            &[&[("key_1", "value_1"), ("user", "bkthomps")]],
        ))
        .await;
    assert_eq!(
        alone.statuses,
        [named(ok(5, Unit::Second, 4, 1), "specific_limit")]
    );
}

const QUOTA: &str = "
domain: quota
descriptors:
  - key: regular
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: q1
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: q2
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 5 }
";

#[tokio::test]
async fn quota_mode_refuses_only_when_every_quota_descriptor_is_over() {
    let e = Envoy::start(&[QUOTA]).await;
    let r = request(
        "quota",
        &[&[("q1", "a")], &[("q2", "a")], &[("regular", "a")]],
    );
    e.hit(r.clone()).await;
    // q1 is over, q2 is not: still OK overall.
    let second = e.hit(r).await;
    assert_eq!(
        second.statuses,
        [
            over(1, Unit::Minute, 60),
            ok(5, Unit::Minute, 3, 60),
            ok(10, Unit::Minute, 8, 60)
        ]
    );
    assert_eq!(code(&second), Code::Ok);
    // The only quota descriptor over: over.
    let only = e
        .hit(request("quota", &[&[("q1", "a")], &[("regular", "b")]]))
        .await;
    assert_eq!(code(&only), Code::OverLimit);
}

#[tokio::test]
async fn global_quota_mode_puts_every_descriptor_in_quota_mode() {
    let options = Options {
        quota_mode: true,
        ..Options::default()
    };
    let e = Envoy::with(&[QUOTA], options, NO_PLANS).await;
    let r = request("quota", &[&[("q1", "a")], &[("regular", "a")]]);
    e.hit(r.clone()).await;
    let second = e.hit(r).await;
    assert_eq!(second.statuses[0], over(1, Unit::Minute, 60));
    assert_eq!(
        code(&second),
        Code::Ok,
        "regular still passes, so not every quota descriptor is over"
    );
}

const WILDCARDS: &str = "
domain: wild
descriptors:
  - key: key1
    value: value*
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: key1
    value: value7
    rate_limit: { unit: minute, requests_per_unit: 7 }
  - key: key1
    rate_limit: { unit: minute, requests_per_unit: 99 }
  - key: path
    value: /api/*/action
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: route
    value: /api/*/resource/*/action
    rate_limit: { unit: minute, requests_per_unit: 4 }
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: own
    value: own/*
    rate_limit: { unit: hour, requests_per_unit: 10 }
";

#[tokio::test]
async fn exact_wins_over_wildcard_which_wins_over_key_only() {
    let e = Envoy::start(&[WILDCARDS]).await;
    let amount = |r: RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
    };
    assert_eq!(
        amount(e.hit(request("wild", &[&[("key1", "value7")]])).await),
        Some(7)
    );
    assert_eq!(
        amount(e.hit(request("wild", &[&[("key1", "valueXYZ")]])).await),
        Some(20)
    );
    assert_eq!(
        amount(e.hit(request("wild", &[&[("key1", "value")]])).await),
        Some(20)
    );
    assert_eq!(
        amount(e.hit(request("wild", &[&[("key1", "other")]])).await),
        Some(99)
    );
}

#[tokio::test]
async fn a_wildcard_anywhere_in_the_value_matches_segments_in_order() {
    let e = Envoy::start(&[WILDCARDS]).await;
    let hit = |k: &'static str, v: &'static str| request("wild", &[&[(k, v)]]);
    assert_eq!(
        e.hit(hit("path", "/api/123/action")).await.statuses,
        [ok(3, Unit::Minute, 2, 60)]
    );
    assert_eq!(
        e.hit(hit("path", "/api/123/other")).await.statuses,
        [no_limit()]
    );
    assert_eq!(
        e.hit(hit("route", "/api/v1/resource/9/action"))
            .await
            .statuses,
        [ok(4, Unit::Minute, 3, 60)]
    );
    assert_eq!(
        e.hit(hit("route", "/api/v1/other/9/action")).await.statuses,
        [no_limit()]
    );
}

#[tokio::test]
async fn wildcard_values_count_apart_unless_they_share_the_threshold() {
    let e = Envoy::start(&[WILDCARDS]).await;
    for f in ["files/a.pdf", "files/b.csv"] {
        e.hit_n(&request("wild", &[&[("files", f)]]), 5).await;
    }
    let shared = e.hit(request("wild", &[&[("files", "files/c.txt")]])).await;
    assert_eq!(shared.statuses, [over(10, Unit::Hour, 3600)]);
    e.hit_n(&request("wild", &[&[("own", "own/a.pdf")]]), 10)
        .await;
    let apart = e.hit(request("wild", &[&[("own", "own/b.csv")]])).await;
    assert_eq!(apart.statuses, [ok(10, Unit::Hour, 9, 3600)]);
}

#[tokio::test]
async fn keys_and_values_are_matched_apart_no_string_collisions() {
    // The reference matches "key_value" strings: key "a_b" value "c" would
    // hit the rule for key "a" value "b_c", and share its counter.
    let rules = "
domain: d
descriptors:
  - key: a
    value: b_c
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: a_b
    rate_limit: { unit: minute, requests_per_unit: 5 }
";
    let e = Envoy::start(&[rules]).await;
    assert_eq!(
        e.hit(request("d", &[&[("a", "b_c")]])).await.statuses,
        [ok(1, Unit::Minute, 0, 60)]
    );
    assert_eq!(
        e.hit(request("d", &[&[("a_b", "c")]])).await.statuses,
        [ok(5, Unit::Minute, 4, 60)]
    );
}

#[tokio::test]
async fn response_headers_describe_the_most_constraining_descriptor() {
    let options = Options {
        response_headers: Some(HeaderNames::default()),
        ..Options::default()
    };
    let e = Envoy::with(&[BASIC], options, NO_PLANS).await;
    e.server.advance(secs(2));
    let r = e
        .hit(request(
            "test-domain",
            &[&[("key2", "a")], &[("nope", "x")], &[("key2", "value2")]],
        ))
        .await;
    assert_eq!(
        headers(&r),
        [
            ("RateLimit-Limit".to_owned(), "20".to_owned()),
            ("RateLimit-Remaining".to_owned(), "19".to_owned()),
            ("RateLimit-Reset".to_owned(), "58".to_owned()),
        ]
    );
    // An over-limit descriptor is always the one described.
    e.hit(request("test-domain", &[&[("key3", "a")]])).await;
    let r = e
        .hit(request(
            "test-domain",
            &[&[("key2", "b")], &[("key3", "a")]],
        ))
        .await;
    assert_eq!(
        headers(&r),
        [
            ("RateLimit-Limit".to_owned(), "1".to_owned()),
            ("RateLimit-Remaining".to_owned(), "0".to_owned()),
            ("RateLimit-Reset".to_owned(), "3598".to_owned()),
        ]
    );
}

#[tokio::test]
async fn response_headers_are_off_by_default_and_can_be_renamed() {
    let e = Envoy::start(&[BASIC]).await;
    let r = e.hit(request("test-domain", &[&[("key2", "a")]])).await;
    assert!(r.response_headers_to_add.is_empty());
    let options = Options {
        response_headers: Some(HeaderNames {
            limit: "A-Ratelimit-Limit".into(),
            remaining: "A-Ratelimit-Remaining".into(),
            reset: "A-Ratelimit-Reset".into(),
        }),
        ..Options::default()
    };
    let e = Envoy::with(&[BASIC], options, NO_PLANS).await;
    let r = e.hit(request("test-domain", &[&[("key2", "a")]])).await;
    let names: Vec<String> = headers(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "A-Ratelimit-Limit",
            "A-Ratelimit-Remaining",
            "A-Ratelimit-Reset"
        ]
    );
    // No limit anywhere: no headers.
    let r = e.hit(request("test-domain", &[&[("nope", "a")]])).await;
    assert!(r.response_headers_to_add.is_empty());
}

const METADATA: &str = "
domain: meta
descriptors:
  - key: regular
    rate_limit: { unit: minute, requests_per_unit: 10 }
    metadata:
      name: service_1
      nested: { a: 1 }
  - key: quota
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
    metadata:
      name: service_2
      nested: { b: 2 }
";

#[tokio::test]
async fn dynamic_metadata_carries_the_request_and_the_passed_descriptors_metadata() {
    use prost_types::value::Kind;
    let options = Options {
        dynamic_metadata: true,
        ..Options::default()
    };
    let e = Envoy::with(&[METADATA], options, NO_PLANS).await;
    let mut r = request("meta", &[&[("regular", "a")], &[("quota", "a")]]);
    r.hits_addend = 1;
    r.descriptors[1].hits_addend = Some(1);
    let first = e.hit(r.clone()).await;
    let get = |s: &prost_types::Struct, k: &str| s.fields.get(k).and_then(|v| v.kind.clone());
    let md = first.dynamic_metadata.expect("metadata");
    assert_eq!(get(&md, "domain"), Some(Kind::StringValue("meta".into())));
    assert_eq!(get(&md, "hitsAddend"), Some(Kind::NumberValue(1.0)));
    let Some(Kind::ListValue(ds)) = get(&md, "descriptors") else {
        panic!("descriptors")
    };
    let Some(Kind::StructValue(d1)) = ds.values[1].kind.clone() else {
        panic!("a struct")
    };
    let Some(Kind::ListValue(entries)) = get(&d1, "entries") else {
        panic!("entries")
    };
    assert_eq!(
        entries.values[0].kind,
        Some(Kind::StringValue("quota=a".into()))
    );
    assert_eq!(get(&d1, "hitsAddend"), Some(Kind::NumberValue(1.0)));
    // Both passed: both metadata merged, the first one winning a key.
    let Some(Kind::StructValue(passed)) = get(&md, "metadata") else {
        panic!("metadata")
    };
    assert_eq!(
        get(&passed, "name"),
        Some(Kind::StringValue("service_1".into()))
    );
    let Some(Kind::StructValue(nested)) = get(&passed, "nested") else {
        panic!("nested")
    };
    assert_eq!(nested.fields.len(), 2, "nested structs merge");
    // The quota descriptor now fails: only the first one's metadata.
    let second = e.hit(r).await;
    assert_eq!(
        code(&second),
        Code::OverLimit,
        "the only quota descriptor is over"
    );
    let md = second.dynamic_metadata.expect("metadata");
    let Some(Kind::StructValue(passed)) = get(&md, "metadata") else {
        panic!("metadata")
    };
    let Some(Kind::StructValue(nested)) = get(&passed, "nested") else {
        panic!("nested")
    };
    assert_eq!(nested.fields.len(), 1);
}

#[tokio::test]
async fn several_files_make_several_domains() {
    let e = Envoy::start(&[BASIC, SHADOW, "domain: third\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 2 }\n"]).await;
    let r = e.hit(request("third", &[&[("k", "v")]])).await;
    assert_eq!(r.statuses, [ok(2, Unit::Second, 1, 1)]);
    let r = e.hit(request("test-domain", &[&[("key2", "v")]])).await;
    assert_eq!(r.statuses, [ok(20, Unit::Minute, 19, 60)]);
}
