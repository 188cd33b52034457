//! Each seed page's published policy, through the real gRPC API, from its
//! example file in examples/.

mod support;

use support::*;

async fn assigned(example: &str, assignments: &str) -> TestServer {
    let path = format!("{}/examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(path).expect("example exists");
    TestServer::start(&format!("{yaml}\nassignments: {{ {assignments} }}\n")).await
}

fn retry_after(d: &Decision) -> u64 {
    header(d, "Retry-After")
        .expect("Retry-After when limited")
        .parse()
        .expect("seconds")
}

// --- 000 Bento ---

#[tokio::test]
async fn bento_endpoint_families_have_their_own_budgets() {
    let s = TestServer::example("bento.yaml").await;
    let fetch = req("key_1", "/api/v1/fetch/people");
    assert_eq!(s.consume_n(&fetch, 100).await, 100);
    let d = s.consume(fetch).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("100"));
    assert!(retry_after(&d) <= 60);
    // Batch and experimental still have their 100 each.
    assert_eq!(
        s.consume_n(&req("key_1", "/api/v1/batch/events"), 101)
            .await,
        100
    );
    assert_eq!(
        s.consume_n(&req("key_1", "/api/v1/experimental/x"), 101)
            .await,
        100
    );
    // Stats: 60 an hour.
    let stats = req("key_1", "/api/v1/stats/site");
    assert_eq!(s.consume_n(&stats, 61).await, 60);
    s.advance(secs(60));
    let d = s.consume(stats).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(retry_after(&d), 3540);
    s.stop().await;
}

#[tokio::test]
async fn bento_search_needs_enterprise() {
    let s = assigned("bento.yaml", "acct_ent: enterprise").await;
    let d = s.consume(req("key_1", "/api/v1/fetch/search")).await;
    assert_eq!(verdict(&d), Verdict::NotInPlan);
    assert_eq!(d.plan, "standard");
    assert!(d.reason.contains("Enterprise"), "{}", d.reason);
    let d = s
        .consume(of_account(req("key_2", "/api/v1/fetch/search"), "acct_ent"))
        .await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(d.plan, "enterprise");
    s.stop().await;
}

#[tokio::test]
async fn bento_emails_take_at_most_60_a_request_and_60_a_minute() {
    let s = TestServer::example("bento.yaml").await;
    let emails = req("key_1", "POST /api/v1/batch/emails");
    let d = s
        .consume(with_cost(emails.clone(), &[("emails", 61)]))
        .await;
    assert_eq!(verdict(&d), Verdict::TooLarge);
    let d = s
        .consume(with_cost(emails.clone(), &[("emails", 40)]))
        .await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(remaining(&d, "emails:emails/minute"), 20);
    let d = s
        .consume(with_cost(emails.clone(), &[("emails", 21)]))
        .await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    s.advance(secs(60));
    assert_eq!(
        verdict(&s.consume(with_cost(emails, &[("emails", 60)])).await),
        Verdict::Allowed
    );
    s.stop().await;
}

// --- 001 Bentoo AI ---

#[tokio::test]
async fn bentoo_free_admits_a_full_minute_at_once_and_publishes_the_plan_number() {
    let s = TestServer::example("bentoo-ai.yaml").await;
    let r = req("key_1", "/v1/models/x/generate");
    for _ in 0..20 {
        let d = s.consume(r.clone()).await;
        assert_eq!(verdict(&d), Verdict::Allowed);
        assert_eq!(
            header(&d, "X-RateLimit-Limit"),
            Some("20"),
            "never the burst capacity"
        );
    }
    let d = s.consume(r).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(header(&d, "X-RateLimit-Remaining"), Some("0"));
    assert_eq!(retry_after(&d), 3, "one request refills every 3 s");
    s.stop().await;
}

#[tokio::test]
async fn bentoo_bursts_stay_within_20_percent_and_average_out() {
    // Whatever the phase against the minute, an idle caller that spends its
    // whole minute at once and then sends whenever it may never gets more
    // than 24 in any 60 s, and averages 20 a minute.
    for phase in [0, 17, 50, 59] {
        let s = TestServer::example("bentoo-ai.yaml").await;
        s.advance(secs(phase));
        let r = req("key_1", "/v1/generate");
        let mut admitted_at = Vec::new();
        for tick in 0..1200u64 {
            while verdict(&s.consume(r.clone()).await) == Verdict::Allowed {
                admitted_at.push(tick * 500);
            }
            s.advance(std::time::Duration::from_millis(500));
        }
        assert_eq!(
            admitted_at.iter().filter(|t| **t == 0).count(),
            20,
            "a full minute at once"
        );
        for &start in &admitted_at {
            let in_span = admitted_at
                .iter()
                .filter(|t| (start..start + 60_000).contains(*t))
                .count();
            assert!(
                in_span <= 24,
                "phase {phase}: {in_span} in the minute from {start} ms"
            );
        }
        // Ten minutes: at most the idle burst more than 20 a minute.
        assert!(
            (200..=220).contains(&admitted_at.len()),
            "phase {phase}: {}",
            admitted_at.len()
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn bentoo_free_tokens_per_minute_and_per_day_both_bind() {
    let s = TestServer::example("bentoo-ai.yaml").await;
    let generate = |tokens| {
        with_cost(
            req("key_1", "/v1/generate"),
            &[("requests", 1), ("tokens", tokens)],
        )
    };
    let d = s.consume(generate(100_000)).await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    let d = s.consume(generate(1)).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(d.limits[0].name, "tokens/minute");
    // Two minutes later the minute is free again; the day takes the rest.
    s.advance(secs(120));
    assert_eq!(
        verdict(&s.consume(generate(100_000)).await),
        Verdict::Allowed
    );
    s.advance(secs(120));
    let d = s.consume(generate(1)).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(d.limits[0].name, "tokens/day");
    assert_eq!(retry_after(&d), 86_400 - 240);
    s.stop().await;
}

#[tokio::test]
async fn bentoo_pro_has_no_daily_token_cap() {
    let s = assigned("bentoo-ai.yaml", "acct_pro: pro").await;
    let generate = of_account(
        with_cost(req("key_1", "/v1/generate"), &[("tokens", 5_000_000)]),
        "acct_pro",
    );
    let d = s.consume(generate.clone()).await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert!(d.limits.iter().any(|l| l.unit == "tokens" && l.unlimited));
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("10000000"));
    for _ in 0..10 {
        s.advance(secs(120));
        assert_eq!(
            verdict(&s.consume(generate.clone()).await),
            Verdict::Allowed
        );
    }
    s.stop().await;
}

// --- 002 Dotdigital ---

#[tokio::test]
async fn dotdigital_tiers_follow_the_package() {
    let s = assigned(
        "dotdigital-tiered.yaml",
        "acct_basic: basic, acct_enh: enhanced",
    )
    .await;
    let low = |acct: &str| of_account(req("user_1", "POST /v2/contacts/import"), acct);
    assert_eq!(s.consume_n(&low("acct_basic"), 40).await, 35);
    assert_eq!(
        s.consume_n(
            &of_account(req("user_2", "POST /v2/contacts/import"), "acct_std"),
            80
        )
        .await,
        75
    );
    assert_eq!(
        s.consume_n(
            &of_account(req("user_3", "POST /v2/contacts/import"), "acct_enh"),
            160
        )
        .await,
        150
    );
    let medium = of_account(req("user_1", "PUT /v2/contacts/1"), "acct_basic");
    assert_eq!(s.consume_n(&medium, 80).await, 75);
    let high = req("user_4", "GET /v2/contacts/1");
    let d = s.consume(high).await;
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("3000"));
    // The unlimited tier is never limited.
    let unlimited = req("user_5", "POST /v2/contacts/unsubscribe");
    assert_eq!(s.consume_n(&unlimited, 500).await, 500);
    assert!(s.consume(unlimited).await.limits[0].unlimited);
    s.stop().await;
}

#[tokio::test]
async fn dotdigital_flat_rate_is_hourly_for_every_call() {
    let s = assigned("dotdigital-flat.yaml", "acct_basic: basic").await;
    let r = of_account(req("user_1", "GET /v2/anything"), "acct_basic");
    assert_eq!(s.consume_n(&r, 2001).await, 2000);
    let d = s
        .consume(of_account(req("user_1", "POST /v2/other"), "acct_basic"))
        .await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(retry_after(&d), 3600);
    assert_eq!(s.consume(req("user_2", "/x")).await.limits[0].limit, 7500);
    s.stop().await;
}

// --- 003 Instasent ---

#[tokio::test]
async fn instasent_limits_are_per_organization_and_class_and_scale_with_the_plan() {
    let s = assigned("instasent.yaml", "org_m: M, org_xl: XL").await;
    let scroll = |token: &str, org: &str| of_account(req(token, "GET /audience/scroll"), org);
    // Two tokens of one organization share its 120 a minute.
    assert_eq!(s.consume_n(&scroll("dashboard", "org_s"), 100).await, 100);
    assert_eq!(s.consume_n(&scroll("backfill", "org_s"), 50).await, 20);
    // The hot class has its own budget: the general one is untouched.
    let d = s
        .consume(of_account(
            req("dashboard", "GET /projects/1/contacts"),
            "org_s",
        ))
        .await;
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("600"));
    assert_eq!(header(&d, "X-RateLimit-Remaining"), Some("599"));
    // Upgrading multiplies every ceiling.
    assert_eq!(s.consume_n(&scroll("t", "org_m"), 300).await, 240);
    let d = s
        .consume(of_account(req("t", "GET /projects/1/contacts"), "org_xl"))
        .await;
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("6000"));
    s.stop().await;
}

#[tokio::test]
async fn instasent_batched_writes_count_one_hit_with_at_most_100_items() {
    let s = TestServer::example("instasent.yaml").await;
    let ingest = of_account(req("t", "POST /projects/1/event/batch"), "org");
    let d = s
        .consume(with_cost(ingest.clone(), &[("items", 100)]))
        .await;
    assert_eq!(verdict(&d), Verdict::Allowed);
    assert_eq!(header(&d, "X-RateLimit-Remaining"), Some("599"));
    let d = s.consume(with_cost(ingest, &[("items", 101)])).await;
    assert_eq!(verdict(&d), Verdict::TooLarge);
    s.stop().await;
}

// --- 004 HelpKit ---

#[tokio::test]
async fn helpkit_free_allows_30_a_minute() {
    let s = TestServer::example("helpkit.yaml").await;
    s.advance(secs(15));
    let r = req("key_1", "/api/contacts");
    assert_eq!(s.consume_n(&r, 30).await, 30);
    let d = s.consume(r).await;
    assert_eq!(verdict(&d), Verdict::RateLimited);
    assert_eq!(header(&d, "X-RateLimit-Remaining"), Some("0"));
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("30"));
    let wait = retry_after(&d);
    assert!(wait > 0 && wait <= 60, "{wait}");
    assert_eq!(wait, 45);
    s.stop().await;
}

#[tokio::test]
async fn helpkit_hour_and_day_bind_too() {
    let s = assigned("helpkit.yaml", "acct_agency: agency").await;
    let r = req("key_1", "/api/contacts");
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += s.consume_n(&r, 30).await;
        s.advance(secs(60));
    }
    assert_eq!(admitted, 500, "the hour caps it");
    let d = s.consume(r).await;
    assert_eq!(d.limits[0].name, "requests/hour");
    // Agency: no daily cap, shown as unlimited.
    let d = s
        .consume(of_account(req("key_2", "/api/contacts"), "acct_agency"))
        .await;
    assert_eq!(header(&d, "X-RateLimit-Limit"), Some("2000"));
    assert!(
        d.limits
            .iter()
            .any(|l| l.unlimited && l.name == "requests/day")
    );
    s.stop().await;
}
