//! Usage export for billing: what 64 concurrent clients were admitted,
//! recorded and refused sums exactly in `Admin.ExportUsage` and in
//! `GET /v1/admin/usage` (CSV, JSON, NDJSON); the rollups survive a
//! graceful restart and a `kill -9` (after their next save).

mod support;

use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::storage::memory::MemoryStore;

use support::http::get;
use support::process::{Served, serve_env, stop, temp_dir};
use support::*;

const CONFIG: &str = r#"
plans:
  free:
    limits:
      - { name: per-minute, rate: 50/minute }
      - { name: tokens, unit: tokens, rate: 1000000/day }
default_plan: free
"#;

fn total(rows: &[pb::UsageRow], f: impl Fn(&pb::UsageRow) -> u64) -> u64 {
    rows.iter().map(f).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_sum_exactly_in_the_export() {
    let options = tollgate::server::Options {
        admin_token: Some(ADMIN_TOKEN.into()),
        http: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
        ..Default::default()
    };
    let s = TestServer::start_opts(CONFIG, MemoryStore::new(10_000), options).await;
    let http = s.http.expect("http");
    // 64 clients, each 3 Consumes of its account's shared key and one
    // Record of tokens; "hot" is over its 100 a minute.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let mut c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let account = if i % 2 == 0 { "hot" } else { "cold" };
            let mut allowed = 0;
            for _ in 0..3 {
                let r = of_account(req(&format!("{account}-key-{}", i % 4), "/a"), account);
                let d = c.consume(r).await.expect("consume").into_inner();
                allowed += u64::from(d.verdict == pb::Verdict::Allowed as i32);
            }
            let r = with_cost(
                of_account(req(&format!("{account}-key-{}", i % 4), "/a"), account),
                &[("tokens", i + 1)],
            );
            c.record(r).await.expect("record");
            (allowed, i + 1)
        }));
    }
    let (mut admitted, mut tokens) = (0, 0);
    for t in tasks {
        let (a, k) = t.await.expect("task");
        admitted += a;
        tokens += k;
    }
    let mut hot = 0;
    for _ in 0..20 {
        hot += u64::from(
            verdict(&s.consume(of_account(req("hot-key-0", "/a"), "hot")).await)
                == pb::Verdict::Allowed,
        );
    }
    admitted += hot;
    let consumes = 64 * 3 + 20;

    let mut admin = s.admin().await;
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
    let requests: Vec<pb::UsageRow> = rows
        .iter()
        .filter(|r| r.unit == "requests")
        .cloned()
        .collect();
    assert_eq!(total(&requests, |r| r.admitted), admitted, "{rows:?}");
    assert_eq!(total(&requests, |r| r.refused), consumes - admitted);
    assert_eq!(
        total(&requests, |r| r.recorded),
        0,
        "a Record with a cost counts no request"
    );
    let recorded: Vec<&pb::UsageRow> = rows.iter().filter(|r| r.unit == "tokens").collect();
    assert_eq!(recorded.iter().map(|r| r.recorded).sum::<u64>(), tokens);
    assert_eq!(
        total(&rows, |r| r.admitted),
        admitted,
        "admitted tokens none: Consumes named no cost"
    );
    // Per account and subject.
    assert!(
        rows.iter()
            .all(|r| r.period_start.as_ref().map(|t| t.seconds as u64) == Some(T0 / 1_000_000_000))
    );
    assert!(
        rows.iter()
            .any(|r| r.account == "hot" && r.subject == "hot-key-0" && r.refused > 0)
    );

    // The same over HTTP, for one account, in each format.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let csv = get(
        http,
        "/v1/admin/usage?from=2027-01-14&account=cold&format=csv",
        &auth,
    )
    .await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut lines = csv.body.lines();
    assert_eq!(
        lines.next(),
        Some("period_start,granularity,account,subject,unit,admitted,recorded,refused")
    );
    let cold_admitted: u64 = lines
        .filter(|l| l.contains(",requests,"))
        .map(|l| {
            l.split(',')
                .nth(5)
                .expect("admitted")
                .parse::<u64>()
                .expect("number")
        })
        .sum();
    assert_eq!(cold_admitted, 32 * 3, "cold is never refused");
    let json = get(
        http,
        "/v1/admin/usage?from=2027-01-14&account=cold&format=json",
        &auth,
    )
    .await;
    let array = json.json();
    let ndjson = get(
        http,
        "/v1/admin/usage?from=2027-01-14&account=cold&format=ndjson",
        &auth,
    )
    .await;
    let lines: Vec<serde_json::Value> = ndjson
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(array.as_array().expect("an array"), &lines);
    assert_eq!(lines[0]["granularity"], "GRANULARITY_DAY");
    let months = get(
        http,
        "/v1/admin/usage?from=2027-01-01&granularity=month&format=json",
        &auth,
    )
    .await
    .json();
    assert_eq!(months[0]["periodStart"], "2027-01-01T00:00:00Z", "{months}");

    // Bad input, named.
    for (query, field) in [
        ("from=2027-02-01&to=2027-01-01", "from:"),
        ("from=2027-01-01&granularity=week", "granularity:"),
        ("to=2027-01-01", "from:"),
        ("from=yesterday", "from:"),
        ("from=2027-01-01&format=xml", "format:"),
        ("from=2027-01-01&accounts=x", "accounts: unknown parameter"),
    ] {
        let r = get(http, &format!("/v1/admin/usage?{query}"), &auth).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.message().starts_with(field), "{query}: {}", r.body);
    }
    assert_eq!(
        get(http, "/v1/admin/usage?from=2027-01-01", &[])
            .await
            .status,
        401
    );
    let late = admin
        .export_usage(authed(pb::ExportUsageRequest {
            from: Some(tollgate::api::convert::timestamp(T0 + 1)),
            to: Some(tollgate::api::convert::timestamp(T0)),
            ..Default::default()
        }))
        .await
        .expect_err("from after to");
    assert_eq!(late.code(), tonic::Code::InvalidArgument);
    assert!(late.message().starts_with("from:"), "{}", late.message());
    s.stop().await;
}

fn start(dir: &std::path::Path) -> Served {
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let state = dir.join("state.redb");
    serve_env(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--state",
            state.to_str().expect("utf-8"),
            "--journal-interval",
            "100ms",
        ],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

async fn admitted_by(served: &Served) -> u64 {
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let mut stream = admin
        .export_usage(authed(pb::ExportUsageRequest {
            // Daily rows are kept 400 days: a month ago is well within.
            from: Some(prost_types::Timestamp::from(
                SystemTime::now() - Duration::from_secs(31 * 86_400),
            )),
            granularity: pb::Granularity::Month as i32,
            ..Default::default()
        }))
        .await
        .expect("export")
        .into_inner();
    let mut sum = 0;
    while let Some(r) = stream.message().await.expect("row") {
        sum += r.admitted;
    }
    sum
}

async fn consume(served: &Served, n: usize) {
    let mut c =
        pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", served.addr))
            .await
            .expect("connect");
    for _ in 0..n {
        c.consume(req("key_1", "/a")).await.expect("consume");
    }
}

/// What the usage file at `path` holds as admitted, read as a restart reads it.
fn saved_admitted(path: &std::path::Path) -> u64 {
    use tollgate::insight::usage::{Granularity, Retention, Usage};
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let usage = Usage::new(Retention::default());
    if usage.restore(&bytes).is_err() {
        return 0;
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    usage
        .export(
            now - 31 * 86_400 * 1_000_000_000,
            now,
            Granularity::Day,
            None,
        )
        .expect("export")
        .iter()
        .map(|r| r.admitted)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_survive_a_graceful_restart_and_a_kill_after_their_save() {
    let dir = temp_dir("usage-durable");
    std::fs::create_dir_all(&dir).expect("dir");
    let served = start(&dir);
    consume(&served, 7).await;
    stop(served, Duration::from_secs(20));
    let served = start(&dir);
    assert_eq!(admitted_by(&served).await, 7, "after a graceful stop");

    // Five more, then a kill -9 once the save after them is on disk.
    consume(&served, 5).await;
    // Read the saved file as a restart would, until it holds all twelve.
    let usage = dir.join("state.redb.usage");
    let deadline = Instant::now() + Duration::from_secs(20);
    while saved_admitted(&usage) != 12 {
        assert!(
            Instant::now() < deadline,
            "the usage file was not saved with all twelve"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut served = served;
    served.child.kill().expect("SIGKILL");
    served.child.wait().expect("reaped");
    let served = start(&dir);
    assert_eq!(admitted_by(&served).await, 12, "after a kill -9");
    stop(served, Duration::from_secs(20));
}

/// `--usage-hourly-retention` bounds what an hourly export reaches; both
/// retentions 0 turn the rollups off, and an export says which flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_set_by_flags_and_zero_turns_usage_off() {
    let dir = support::process::temp_dir("usage-retention");
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let config = config.to_str().expect("utf-8");
    let hours_ago = |h: u64| {
        Some(prost_types::Timestamp::from(
            SystemTime::now() - Duration::from_secs(h * 3600),
        ))
    };
    let export = async |served: &Served, from, granularity: pb::Granularity| {
        let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", served.addr))
            .await
            .expect("connect");
        admin
            .export_usage(authed(pb::ExportUsageRequest {
                from,
                granularity: granularity as i32,
                ..Default::default()
            }))
            .await
            .map(drop)
    };

    let two_hours = serve_env(
        &["--config", config, "--usage-hourly-retention", "2h"],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    support::process::until("hours older than 2 h are refused", async || {
        export(&two_hours, hours_ago(5), pb::Granularity::Hour)
            .await
            .is_err_and(|e| {
                e.code() == tonic::Code::InvalidArgument
                    && e.message()
                        .starts_with("from: hourly usage is kept for 2 hours")
            })
    })
    .await;
    export(&two_hours, hours_ago(1), pb::Granularity::Hour)
        .await
        .expect("within the retention");
    export(&two_hours, hours_ago(5), pb::Granularity::Day)
        .await
        .expect("days are kept 400 days");

    let off = serve_env(
        &[
            "--config",
            config,
            "--usage-hourly-retention",
            "0",
            "--usage-daily-retention",
            "0",
        ],
        &[("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let e = export(&off, hours_ago(1), pb::Granularity::Day)
        .await
        .expect_err("off");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("--usage-daily-retention"),
        "{}",
        e.message()
    );
}
