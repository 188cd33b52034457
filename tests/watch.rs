//! WatchQuota end to end: a snapshot, coalesced consumption, causes,
//! stalled and many watchers.

mod support;

use std::time::Duration;

use pb::quota_update::Cause;
use support::*;
use tokio_stream::StreamExt;
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
plans:
  free: { limits: [ { rate: 100/minute } ] }
  pro: { extends: free, multiplier: 10 }
default_plan: free
"#;

fn watch(subject: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        subject: subject.into(),
        ..Default::default()
    }
}

async fn next(stream: &mut tonic::Streaming<pb::QuotaUpdate>) -> pb::QuotaUpdate {
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an update within 60 s")
        .expect("stream open")
        .expect("ok")
}

fn cause(u: &pb::QuotaUpdate) -> Cause {
    Cause::try_from(u.cause).expect("known cause")
}

#[tokio::test]
async fn a_snapshot_then_coalesced_consumption_then_plan_changes() {
    let s = TestServer::start(CONFIG).await;
    let mut stream = s
        .client
        .clone()
        .watch_quota(watch("key_1"))
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await;
    assert_eq!(cause(&first), Cause::Snapshot);
    assert_eq!(first.plan, "free");
    assert_eq!(first.limits[0].remaining, Some(100));
    // Ten decisions in a burst: fewer messages, the last one up to date.
    assert_eq!(s.consume_n(&req("key_1", "/x"), 10).await, 10);
    let mut seen = 0;
    let last = loop {
        let u = next(&mut stream).await;
        assert_eq!(cause(&u), Cause::Consumption);
        seen += 1;
        if u.limits[0].remaining == Some(90) {
            break u;
        }
    };
    assert!(seen < 10, "{seen} messages for 10 decisions");
    assert_eq!(last.plan, "free");
    // A plan change, with its cause.
    s.admin()
        .await
        .set_plan(authed(pb::SetPlanRequest {
            account: "key_1".into(),
            plan: "pro".into(),
            clear: false,
        }))
        .await
        .expect("set plan");
    let u = next(&mut stream).await;
    assert_eq!(cause(&u), Cause::PlanChanged);
    assert_eq!(
        (u.plan.as_str(), u.limits[0].limit, u.limits[0].remaining),
        ("pro", 1000, Some(990))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_watcher_gets_the_latest_state_not_a_backlog() {
    let s = TestServer::start(CONFIG).await;
    let mut stream = s
        .client
        .clone()
        .watch_quota(watch("key_1"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(cause(&next(&mut stream).await), Cause::Snapshot);
    // The watcher reads nothing while 100 decisions land over 2 s.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(s.consume_n(&req("key_1", "/x"), 5).await, 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What reached it is at most one update per coalescing interval (50 ms
    // here) of the time it took, however long a busy machine made that,
    // never one per decision, and it ends on the latest state. The server
    // holds one value per subject; what is in flight is bounded by HTTP/2
    // flow control.
    let mut got = vec![next(&mut stream).await];
    while got.last().expect("one").limits[0].remaining != Some(0) {
        got.push(next(&mut stream).await);
    }
    let intervals = (started.elapsed().as_millis() / 50) as usize + 2;
    assert!(got.len() < 100, "{} updates for 100 decisions", got.len());
    assert!(
        got.len() <= intervals,
        "{} updates in {intervals} coalescing intervals",
        got.len()
    );
    assert_eq!(got.last().expect("one").limits[0].remaining, Some(0));
    s.stop().await;
}

#[tokio::test]
async fn a_thousand_watchers_while_consuming() {
    let s = TestServer::start(CONFIG).await;
    let mut streams = Vec::new();
    // Ten connections of a hundred streams each, on ten subjects.
    for c in 0..10 {
        let mut client = RateLimiterClient::connect(format!("http://{}", s.addr))
            .await
            .expect("connect");
        for w in 0..100 {
            let subject = format!("key_{}", (c * 100 + w) % 10);
            let mut st = client
                .watch_quota(watch(&subject))
                .await
                .expect("watch")
                .into_inner();
            assert_eq!(cause(&next(&mut st).await), Cause::Snapshot);
            streams.push((subject, st));
        }
    }
    for k in 0..10 {
        assert_eq!(s.consume_n(&req(&format!("key_{k}"), "/x"), 3).await, 3);
    }
    for (subject, st) in &mut streams {
        loop {
            let u = next(st).await;
            if u.limits[0].remaining == Some(97) {
                break;
            }
            assert_eq!(cause(&u), Cause::Consumption, "{subject}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn streams_end_cleanly_when_the_server_stops() {
    let s = TestServer::start(CONFIG).await;
    let mut stream = s
        .client
        .clone()
        .watch_quota(watch("key_1"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(cause(&next(&mut stream).await), Cause::Snapshot);
    let stopped = tokio::time::timeout(Duration::from_secs(60), s.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited on an open stream");
    // The stream ends with OK: updates may still come first, but it ends,
    // and not with an error.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(update) = stream.next().await {
            update.expect("ends cleanly, with OK");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream never ended");
}

#[tokio::test]
async fn watching_needs_a_subject() {
    let s = TestServer::start(CONFIG).await;
    let err = s
        .client
        .clone()
        .watch_quota(watch(""))
        .await
        .expect_err("empty subject");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("subject"));
    s.stop().await;
}

#[tokio::test]
async fn an_expiring_override_tells_watchers_when_it_goes() {
    let s = TestServer::start(CONFIG).await;
    let mut stream = s
        .client
        .clone()
        .watch_quota(watch("key_1"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(cause(&next(&mut stream).await), Cause::Snapshot);
    let expires = T0 + 1_000_000_000;
    s.admin()
        .await
        .set_override(authed(pb::Override {
            account: "key_1".into(),
            limit: "requests/minute".into(),
            amount: 500,
            expires_at: Some(prost_types::Timestamp {
                seconds: (expires / 1_000_000_000) as i64,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect("override");
    let raised = next(&mut stream).await;
    assert_eq!(
        (cause(&raised), raised.limits[0].limit),
        (Cause::OverrideChanged, 500)
    );
    s.advance(Duration::from_secs(1));
    let back = next(&mut stream).await;
    assert_eq!(
        (cause(&back), back.limits[0].limit),
        (Cause::OverrideChanged, 100)
    );
    s.stop().await;
}

#[tokio::test]
async fn one_consume_is_one_update() {
    let s = TestServer::start(CONFIG).await;
    for (subject, account) in [("solo", ""), ("member", "team")] {
        let mut stream = s
            .client
            .clone()
            .watch_quota(pb::WatchRequest {
                subject: subject.into(),
                account: account.into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(cause(&next(&mut stream).await), Cause::Snapshot);
        // Two consumes, each seen once: had the first sent two updates, the
        // second one seen would show the first's remaining again.
        s.consume(of_account(req(subject, ""), account)).await;
        let first = next(&mut stream).await;
        assert_eq!(cause(&first), Cause::Consumption);
        s.consume(of_account(req(subject, ""), account)).await;
        let second = next(&mut stream).await;
        assert_eq!(cause(&second), Cause::Consumption);
        let left = |u: &pb::QuotaUpdate| u.limits[0].remaining.expect("limited");
        assert_eq!(
            left(&second) + 1,
            left(&first),
            "{subject}: a second update for one consume"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_reach_every_watcher_while_others_come_and_go() {
    let s = TestServer::start(CONFIG).await;
    let subjects: Vec<String> = (0..16).map(|i| format!("member_{i}")).collect();
    let mut streams = Vec::new();
    for subject in &subjects {
        let mut st = s
            .client
            .clone()
            .watch_quota(pb::WatchRequest {
                subject: subject.clone(),
                account: "team".into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(cause(&next(&mut st).await), Cause::Snapshot);
        streams.push(st);
    }
    // Eight tasks consume for every subject at once, under the team account,
    // while four more subscribe and drop watchers of other subjects.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (mut client, subjects) = (s.client.clone(), subjects.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                for subject in &subjects {
                    let r = of_account(req(subject, ""), "team");
                    let d = client.consume(r).await.expect("consume").into_inner();
                    assert_eq!(verdict(&d), Verdict::Allowed, "task {t} round {round}");
                }
            }
        }));
    }
    for t in 0..4 {
        let client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let mut st = client
                    .clone()
                    .watch_quota(watch(&format!("churn_{t}_{i}")))
                    .await
                    .expect("watch")
                    .into_inner();
                next(&mut st).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    // 40 consumed each: every watcher ends at 60 left, and only
    // consumption brought it there.
    for (subject, st) in subjects.iter().zip(&mut streams) {
        loop {
            let u = next(st).await;
            assert_eq!(cause(&u), Cause::Consumption, "{subject}");
            if u.limits[0].remaining == Some(60) {
                break;
            }
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn watchers_past_the_cap_are_refused_and_their_slots_return() {
    let options = tollgate::server::Options {
        max_watchers: 2,
        watch_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let s = TestServer::start_opts(
        CONFIG,
        tollgate::storage::memory::MemoryStore::new(10_000),
        options,
    )
    .await;
    let mut client = s.client.clone();
    let mut a = client
        .watch_quota(watch("a"))
        .await
        .expect("first")
        .into_inner();
    let b = client
        .watch_quota(watch("b"))
        .await
        .expect("second")
        .into_inner();
    let err = client.watch_quota(watch("c")).await.expect_err("third");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-watchers"),
        "{}",
        err.message()
    );
    let long = client
        .watch_quota(watch(&"x".repeat(1025)))
        .await
        .expect_err("long");
    assert_eq!(long.code(), tonic::Code::InvalidArgument);
    assert_eq!(long.message(), "subject: longer than 1024 bytes");
    // A closed stream frees its slot.
    drop(b);
    let mut c = None;
    for _ in 0..50 {
        match client.watch_quota(watch("c")).await {
            Ok(st) => {
                c = Some(st.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.is_some(), "the dropped watcher's slot came back");
    assert_eq!(cause(&next(&mut a).await), Cause::Snapshot);
    s.stop().await;
}

/// A token bucket refills as it goes: a watcher hears of a refill only when
/// the subject had nothing left, when the next unit is back; partial
/// refills of a bucket in use send nothing.
#[tokio::test]
async fn a_token_bucket_in_use_stays_quiet_until_it_is_exhausted() {
    let s = TestServer::start(
        "plans:\n  free: { limits: [ { rate: 3/3s, algorithm: token_bucket } ] }\n",
    )
    .await;
    let mut stream = s
        .client
        .clone()
        .watch_quota(watch("key_1"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(cause(&next(&mut stream).await), Cause::Snapshot);
    s.consume(req("key_1", "/x")).await;
    let used = next(&mut stream).await;
    assert_eq!(
        (cause(&used), used.limits[0].remaining),
        (Cause::Consumption, Some(2))
    );
    // The bucket is full again in a second: not worth an update.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), stream.next()).await;
    assert!(
        quiet.is_err(),
        "an update about a partial refill: {quiet:?}"
    );
    // Exhausted, then a unit comes back a second later: that is news.
    assert_eq!(s.consume_n(&req("key_1", "/x"), 3).await, 2);
    let empty = loop {
        let u = next(&mut stream).await;
        if u.limits[0].remaining == Some(0) {
            break u;
        }
    };
    assert_eq!(cause(&empty), Cause::Consumption);
    s.advance(Duration::from_secs(1));
    let back = next(&mut stream).await;
    assert_eq!(
        (cause(&back), back.limits[0].remaining),
        (Cause::WindowReset, Some(1))
    );
}
