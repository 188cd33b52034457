//! Calendar quotas: `10000/month` (and `week`, `year`) reset when the
//! calendar says, in UTC or the configuration's zone, across months of 28
//! to 31 days and a daylight-saving change, a month starting on an
//! account's anchor day when the admin API sets one; on the manual clock.

mod support;

use support::*;
use tollgate::engine::Nanos;
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
headers: both
plans:
  free:
    limits:
      - { name: monthly, rate: 3/month }
      - { name: weekly, unit: tokens, rate: 100/week }
      - { name: yearly, unit: images, rate: 2/year }
default_plan: free
"#;

/// Nanoseconds since the epoch at `y-m-d h:00` UTC.
fn utc(y: i16, m: i8, d: i8, h: i8) -> Nanos {
    let dt = jiff::civil::date(y, m, d).at(h, 0, 0, 0);
    let t = jiff::tz::TimeZone::UTC.to_timestamp(dt).expect("a time");
    u64::try_from(t.as_nanosecond()).expect("after 1970")
}

fn reset_at(d: &Decision, name: &str) -> i64 {
    d.limits
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| l.reset_at)
        .expect("a reset")
        .seconds
}

fn secs_of(n: Nanos) -> i64 {
    (n / 1_000_000_000) as i64
}

#[tokio::test]
async fn a_monthly_quota_resets_on_the_first_of_the_next_month_whatever_its_length() {
    let s = TestServer::start(CONFIG).await;
    for (now, next) in [
        (utc(2027, 2, 10, 12), utc(2027, 3, 1, 0)),  // 28 days
        (utc(2027, 4, 30, 23), utc(2027, 5, 1, 0)),  // 30 days
        (utc(2027, 12, 31, 23), utc(2028, 1, 1, 0)), // 31 days, a new year
        (utc(2028, 2, 29, 23), utc(2028, 3, 1, 0)),  // 29 days
    ] {
        s.clock.set(now);
        for left in [2, 1, 0] {
            let d = s.consume(req("k", "/x")).await;
            assert_eq!(verdict(&d), Verdict::Allowed);
            assert_eq!(remaining(&d, "monthly"), left);
            assert_eq!(reset_at(&d, "monthly"), secs_of(next));
        }
        let refused = s.consume(req("k", "/x")).await;
        assert_eq!(verdict(&refused), Verdict::RateLimited);
        assert_eq!(
            header(&refused, "X-RateLimit-Reset"),
            Some(secs_of(next).to_string().as_str()),
            "the true calendar reset"
        );
        let wait = secs_of(next) - secs_of(now);
        assert_eq!(
            header(&refused, "Retry-After"),
            Some(wait.to_string().as_str())
        );
        // One second before the boundary: still refused; at it: whole.
        s.clock.set(next - 1_000_000_000);
        assert_eq!(
            verdict(&s.consume(req("k", "/x")).await),
            Verdict::RateLimited
        );
        s.clock.set(next);
        let d = s.consume(req("k", "/x")).await;
        assert_eq!(verdict(&d), Verdict::Allowed);
        assert_eq!(remaining(&d, "monthly"), 2);
        // Used up again, for the next case's month.
        s.consume(req("k", "/x")).await;
        s.consume(req("k", "/x")).await;
    }
}

#[tokio::test]
async fn weeks_start_on_monday_and_years_on_the_first_of_january() {
    let s = TestServer::start(CONFIG).await;
    // Friday the 1st of January 2027.
    s.clock.set(utc(2027, 1, 1, 9));
    let d = s
        .consume(with_cost(req("k", "/x"), &[("tokens", 60), ("images", 1)]))
        .await;
    assert_eq!(reset_at(&d, "weekly"), secs_of(utc(2027, 1, 4, 0)));
    assert_eq!(reset_at(&d, "yearly"), secs_of(utc(2028, 1, 1, 0)));
    let policy = header(&d, "RateLimit-Policy").expect("IETF headers");
    assert!(
        policy.contains(r#""weekly";q=100;w=604800"#),
        "a week's usual length: {policy}"
    );
    s.clock.set(utc(2027, 1, 3, 23));
    let d = s
        .consume(with_cost(req("k", "/x"), &[("tokens", 60)]))
        .await;
    assert_eq!(verdict(&d), Verdict::RateLimited, "the same week");
    s.clock.set(utc(2027, 1, 4, 0));
    let d = s
        .consume(with_cost(req("k", "/x"), &[("tokens", 60)]))
        .await;
    assert_eq!(verdict(&d), Verdict::Allowed, "Monday: a new week");
    assert_eq!(remaining(&d, "yearly"), 1, "the year goes on");
}

#[tokio::test]
async fn a_zone_puts_the_reset_at_local_midnight_across_daylight_saving() {
    let yaml = format!("calendar: {{ zone: America/New_York }}\n{CONFIG}");
    let s = TestServer::start(&yaml).await;
    // March 2027 in New York: EST (-5) until the 14th, EDT (-4) after.
    s.clock.set(utc(2027, 3, 10, 12));
    let d = s.consume(req("k", "/x")).await;
    assert_eq!(
        reset_at(&d, "monthly"),
        secs_of(utc(2027, 4, 1, 4)),
        "midnight of April 1st, EDT"
    );
    // 03:00 UTC on April 1st is still March 31st in New York.
    s.clock.set(utc(2027, 4, 1, 3));
    assert_eq!(remaining(&s.consume(req("k", "/x")).await, "monthly"), 1);
    s.clock.set(utc(2027, 4, 1, 4));
    let d = s.consume(req("k", "/x")).await;
    assert_eq!(remaining(&d, "monthly"), 2, "a new month at local midnight");
    // November: back to EST, December starts at 05:00 UTC.
    s.clock.set(utc(2027, 11, 20, 0));
    let d = s.consume(req("k", "/x")).await;
    assert_eq!(reset_at(&d, "monthly"), secs_of(utc(2027, 12, 1, 5)));
}

#[tokio::test]
async fn an_accounts_billing_anchor_starts_its_months_on_that_day() {
    let s = TestServer::start(CONFIG).await;
    let mut admin = s.admin().await;
    s.clock.set(utc(2027, 3, 20, 0));
    let set = admin
        .set_billing_anchor(authed(pb::SetBillingAnchorRequest {
            account: "acme".into(),
            day: 14,
            clear: false,
        }))
        .await
        .expect("set")
        .into_inner();
    assert_eq!((set.day, set.previous_day), (14, 0));
    let d = s.consume(of_account(req("k", "/x"), "acme")).await;
    assert_eq!(reset_at(&d, "monthly"), secs_of(utc(2027, 4, 14, 0)));
    let other = s.consume(req("k2", "/x")).await;
    assert_eq!(
        reset_at(&other, "monthly"),
        secs_of(utc(2027, 4, 1, 0)),
        "other accounts keep the calendar's months"
    );
    let state = admin
        .get_subject(authed(pb::GetSubjectRequest {
            subject: "k".into(),
            account: "acme".into(),
        }))
        .await
        .expect("subject")
        .into_inner();
    assert_eq!(state.billing_anchor_day, 14);
    // The 31st: February's is its last day.
    admin
        .set_billing_anchor(authed(pb::SetBillingAnchorRequest {
            account: "acme".into(),
            day: 31,
            clear: false,
        }))
        .await
        .expect("set");
    s.clock.set(utc(2027, 2, 28, 1));
    let d = s.consume(of_account(req("k", "/x"), "acme")).await;
    assert_eq!(reset_at(&d, "monthly"), secs_of(utc(2027, 3, 31, 0)));
    let bad = admin
        .set_billing_anchor(authed(pb::SetBillingAnchorRequest {
            account: "acme".into(),
            day: 32,
            clear: false,
        }))
        .await
        .expect_err("no 32nd");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("day:"), "{}", bad.message());
    let cleared = admin
        .set_billing_anchor(authed(pb::SetBillingAnchorRequest {
            account: "acme".into(),
            day: 0,
            clear: true,
        }))
        .await
        .expect("cleared")
        .into_inner();
    assert_eq!((cleared.day, cleared.previous_day), (0, 31));
    let d = s.consume(of_account(req("k", "/x"), "acme")).await;
    assert_eq!(reset_at(&d, "monthly"), secs_of(utc(2027, 3, 1, 0)));
}

#[tokio::test]
async fn calendar_windows_are_refused_where_they_cannot_count() {
    for (yaml, expected) in [
        (
            "plans: { p: { limits: [ { rate: 5/month, algorithm: token_bucket } ] } }",
            "t.yaml:1: plans.p.limits[0].algorithm: a month is a calendar window, counted as a fixed window; give a duration such as 30d for token_bucket",
        ),
        (
            "plans: { p: { limits: [ { rate: 5/year, burst: 2 } ] } }",
            "t.yaml:1: plans.p.limits[0].burst: a year is a calendar window",
        ),
        (
            "calendar: { zone: Mars/Olympus }\nplans: { p: { limits: [ { rate: 5/month } ] } }",
            "t.yaml:1: calendar.zone: \"Mars/Olympus\" is not a time zone",
        ),
    ] {
        let e = tollgate::config::parse("t.yaml", yaml, &Default::default())
            .expect_err("refused")
            .to_string();
        assert!(e.contains(expected), "{expected}\nnot in:\n{e}");
    }
}
