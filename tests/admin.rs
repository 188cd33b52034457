//! tollgate.v1.Admin end to end: auth, instant upgrades, overrides that
//! expire by themselves, usage, plans, reloads.

mod support;

use std::time::Duration;

use support::*;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::storage::memory::MemoryStore;

const CONFIG: &str = r#"
classes:
  search: { match: ["/search"] }
plans:
  free:
    limits:
      - { rate: 5/minute }
      - { class: search, deny: "Enterprise only" }
  pro:
    extends: free
    multiplier: 10
default_plan: free
"#;

fn set_plan(account: &str, plan: &str) -> pb::SetPlanRequest {
    pb::SetPlanRequest {
        account: account.into(),
        plan: plan.into(),
        clear: false,
    }
}

/// Calls every admin RPC with `token` (None: no header) and returns the codes.
async fn codes(s: &TestServer, token: Option<&str>) -> Vec<tonic::Code> {
    let mut admin = s.admin().await;
    let req = |m| match token {
        Some(t) => with_token(m, t),
        None => tonic::Request::new(m),
    };
    let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |e| e.code());
    vec![
        code(admin.set_plan(req(set_plan("acct", "pro"))).await.map(drop)),
        code(admin.get_subject(req_get(token)).await.map(drop)),
        code(
            admin
                .set_override(override_req(token, 50, None))
                .await
                .map(drop),
        ),
        code(
            admin
                .remove_override(req2(
                    token,
                    pb::RemoveOverrideRequest {
                        account: "acct".into(),
                        limit: "requests/minute".into(),
                    },
                ))
                .await
                .map(drop),
        ),
        code(
            admin
                .reset_usage(req2(
                    token,
                    pb::ResetUsageRequest {
                        subject: "acct".into(),
                        account: String::new(),
                    },
                ))
                .await
                .map(drop),
        ),
        code(
            admin
                .list_plans(req2(token, pb::ListPlansRequest {}))
                .await
                .map(drop),
        ),
        code(
            admin
                .reload_config(req2(token, pb::ReloadConfigRequest {}))
                .await
                .map(drop),
        ),
    ]
}

fn req2<T>(token: Option<&str>, m: T) -> tonic::Request<T> {
    match token {
        Some(t) => with_token(m, t),
        None => tonic::Request::new(m),
    }
}

fn req_get(token: Option<&str>) -> tonic::Request<pb::GetSubjectRequest> {
    req2(
        token,
        pb::GetSubjectRequest {
            subject: "acct".into(),
            account: String::new(),
        },
    )
}

fn override_req(
    token: Option<&str>,
    amount: u64,
    expires_at: Option<prost_types::Timestamp>,
) -> tonic::Request<pb::Override> {
    req2(
        token,
        pb::Override {
            account: "acct".into(),
            limit: "requests/minute".into(),
            amount,
            expires_at,
            reason: "backfill".into(),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn every_admin_call_needs_the_token() {
    let s = TestServer::start(CONFIG).await;
    let none = codes(&s, None).await;
    assert!(
        none.iter().all(|c| *c == tonic::Code::Unauthenticated),
        "{none:?}"
    );
    let wrong = codes(&s, Some("nope")).await;
    assert!(
        wrong.iter().all(|c| *c == tonic::Code::Unauthenticated),
        "{wrong:?}"
    );
    // Nothing changed: acct is still on free.
    assert_eq!(s.consume(req("acct", "/x")).await.plan, "free");
    let right = codes(&s, Some(ADMIN_TOKEN)).await;
    // Reload has no file to read here: FAILED_PRECONDITION, past auth.
    assert_eq!(right[..6], [tonic::Code::Ok; 6], "{right:?}");
    assert_eq!(right[6], tonic::Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test]
async fn without_a_configured_token_the_admin_api_refuses_everything() {
    let options = tollgate::server::Options::default();
    let s = TestServer::start_opts(CONFIG, MemoryStore::new(10_000), options).await;
    for token in [None, Some("anything")] {
        let got = codes(&s, token).await;
        assert!(
            got.iter().all(|c| *c == tonic::Code::PermissionDenied),
            "{got:?}"
        );
    }
    let err = s
        .admin()
        .await
        .list_plans(tonic::Request::new(pb::ListPlansRequest {}))
        .await
        .expect_err("refused");
    assert!(
        err.message().contains("TOLLGATE_ADMIN_TOKEN"),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn an_upgrade_applies_on_the_next_request_with_usage_carried_over() {
    let s = TestServer::start(CONFIG).await;
    let r = req("acct", "/x");
    assert_eq!(s.consume_n(&r, 6).await, 5);
    let mut admin = s.admin().await;
    let done = admin
        .set_plan(authed(set_plan("acct", "pro")))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(
        (done.plan.as_str(), done.previous_plan.as_str()),
        ("pro", "free")
    );
    let d = s.consume(r.clone()).await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(d.plan, "pro");
    assert_eq!(remaining(&d, "requests/minute"), 44);
    // Unknown plans are NOT_FOUND, naming the field and the plans there are.
    let err = admin
        .set_plan(authed(set_plan("acct", "gold")))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().starts_with("plan:") && err.message().contains("free"),
        "{}",
        err.message()
    );
    let err = admin
        .set_plan(authed(set_plan("", "pro")))
        .await
        .expect_err("no account");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Back to the file's plan.
    admin
        .set_plan(authed(pb::SetPlanRequest {
            account: "acct".into(),
            plan: String::new(),
            clear: true,
        }))
        .await
        .expect("clear");
    assert_eq!(verdict(&s.consume(r).await), Verdict::RateLimited);
    s.stop().await;
}

#[tokio::test]
async fn an_override_raises_the_ceiling_then_expires_by_itself() {
    let s = TestServer::start(CONFIG).await;
    let r = req("acct", "/x");
    assert_eq!(s.consume_n(&r, 6).await, 5);
    let expires = T0 + 30 * 1_000_000_000;
    let at = prost_types::Timestamp {
        seconds: (expires / 1_000_000_000) as i64,
        nanos: 0,
    };
    let mut admin = s.admin().await;
    admin
        .set_override(override_req(Some(ADMIN_TOKEN), 8, Some(at)))
        .await
        .expect("override");
    assert_eq!(s.consume_n(&r, 5).await, 3, "raised to 8, 5 used");
    let got = admin
        .get_subject(authed(pb::GetSubjectRequest {
            subject: "acct".into(),
            account: String::new(),
        }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.overrides.len(), 1);
    assert_eq!(got.plan_source, pb::PlanSource::Default as i32);
    assert_eq!(got.limits[0].limit, 8);
    assert_eq!(got.limits[0].remaining, Some(0));
    assert_eq!(
        got.denied_classes.get("search").map(String::as_str),
        Some("Enterprise only")
    );
    // At the expiry the plan's 5 is back, with no call made.
    s.advance(Duration::from_secs(30));
    let d = s.check(r.clone()).await;
    assert_eq!(d.limits[0].limit, 5);
    let got = admin
        .get_subject(authed(pb::GetSubjectRequest {
            subject: "acct".into(),
            account: String::new(),
        }))
        .await
        .expect("get")
        .into_inner();
    assert!(got.overrides.is_empty());
    // Bad overrides name the field.
    let err = admin
        .set_override(authed(pb::Override {
            account: "acct".into(),
            limit: "requests/hour".into(),
            amount: 3,
            ..Default::default()
        }))
        .await
        .expect_err("unknown limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("limit:") && err.message().contains("requests/minute"),
        "{}",
        err.message()
    );
    let err = admin
        .set_override(override_req(Some(ADMIN_TOKEN), 0, None))
        .await
        .expect_err("zero");
    assert!(err.message().starts_with("amount:"), "{}", err.message());
    s.stop().await;
}

#[tokio::test]
async fn a_custom_override_opens_a_gated_class_for_one_account() {
    let s = TestServer::start(CONFIG).await;
    assert_eq!(
        verdict(&s.consume(req("acct", "/search")).await),
        Verdict::NotInPlan
    );
    let mut admin = s.admin().await;
    admin
        .set_override(authed(pb::Override {
            account: "acct".into(),
            limit: "search:deny".into(),
            rate: "2/minute".into(),
            class: "search".into(),
            ..Default::default()
        }))
        .await
        .expect("custom");
    assert_eq!(s.consume_n(&req("acct", "/search"), 3).await, 2);
    assert_eq!(
        verdict(&s.consume(req("other", "/search")).await),
        Verdict::NotInPlan
    );
    let removed = admin
        .remove_override(authed(pb::RemoveOverrideRequest {
            account: "acct".into(),
            limit: "search:deny".into(),
        }))
        .await
        .expect("remove")
        .into_inner();
    assert!(removed.removed);
    assert_eq!(
        verdict(&s.consume(req("acct", "/search")).await),
        Verdict::NotInPlan
    );
    s.stop().await;
}

#[tokio::test]
async fn reset_usage_and_list_plans() {
    let s = TestServer::start(CONFIG).await;
    let r = req("acct", "/x");
    assert_eq!(s.consume_n(&r, 6).await, 5);
    let mut admin = s.admin().await;
    let reset = admin
        .reset_usage(authed(pb::ResetUsageRequest {
            subject: "acct".into(),
            account: String::new(),
        }))
        .await
        .expect("reset")
        .into_inner();
    assert_eq!(reset.counters, 1);
    assert_eq!(verdict(&s.consume(r).await), Verdict::Allowed);
    let plans = admin
        .list_plans(authed(pb::ListPlansRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(plans.default_plan, "free");
    let pro = plans.plans.iter().find(|p| p.name == "pro").expect("pro");
    assert_eq!(pro.extends, "free");
    let minute = pro
        .limits
        .iter()
        .find(|l| l.name == "requests/minute")
        .expect("inherited");
    assert_eq!(minute.amount, 50, "multiplier resolved");
    assert!(pro.limits.iter().any(|l| l.deny == "Enterprise only"));
    s.stop().await;
}

#[tokio::test]
async fn oversized_admin_input_is_refused_naming_the_field() {
    let yaml = "plans: { free: { limits: [ { rate: 30/minute, burst: 10 } ] } }\n";
    let s = TestServer::start(yaml).await;
    let mut admin = s.admin().await;
    let setter = admin.clone();
    let set = |o: pb::Override| {
        let mut admin = setter.clone();
        async move { admin.set_override(authed(o)).await }
    };
    let base = pb::Override {
        account: "acct".into(),
        limit: "requests/minute".into(),
        amount: 40,
        ..Default::default()
    };
    let message = |r: Result<tonic::Response<pb::Override>, tonic::Status>| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        e.message().to_owned()
    };
    // Past what a burst's ring counts: refused, where it used to panic.
    let m = message(
        set(pb::Override {
            amount: 5_000_000_000,
            ..base.clone()
        })
        .await,
    );
    assert!(
        m.starts_with("amount: amount 5000000000 is more than"),
        "{m}"
    );
    let m = message(
        set(pb::Override {
            amount: u64::MAX,
            ..base.clone()
        })
        .await,
    );
    assert!(
        m.starts_with("amount: 18446744073709551615 is more than the largest amount"),
        "{m}"
    );
    let m = message(
        set(pb::Override {
            rate: "18446744073709551615/day".into(),
            limit: "custom".into(),
            ..base.clone()
        })
        .await,
    );
    assert!(
        m.starts_with("rate: 18446744073709551615 is more than"),
        "{m}"
    );
    let big = "x".repeat(1 << 20);
    for (field, o) in [
        (
            "account",
            pb::Override {
                account: big.clone(),
                ..base.clone()
            },
        ),
        (
            "reason",
            pb::Override {
                reason: big.clone(),
                ..base.clone()
            },
        ),
        (
            "limit",
            pb::Override {
                limit: big.clone(),
                ..base.clone()
            },
        ),
    ] {
        let m = message(set(o).await);
        assert_eq!(m, format!("{field}: longer than 1024 bytes"));
    }
    let e = admin
        .set_plan(authed(set_plan(&big, "free")))
        .await
        .expect_err("long account");
    assert_eq!(e.message(), "account: longer than 1024 bytes");
    let e = admin
        .set_plan(authed(set_plan("acct", &big)))
        .await
        .expect_err("long plan");
    assert_eq!(e.message(), "plan: longer than 1024 bytes");
    // Nothing was stored; a sane amount still applies.
    set(base).await.expect("set");
    s.stop().await;
}
