//! Counters survive a crash: the real binary is killed with SIGKILL while
//! under load, started again on the same state file, and the counts it
//! restores miss at most the journal's last interval (1 s by default).

mod support;

use std::time::{Duration, Instant};

use support::process::{serve, temp_dir};
use support::{LimitRequest, RateLimiterClient};
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
plans:
  p:
    limits:
      - { rate: 1000000/day }
      - { rate: 1000000/day, unit: tokens, algorithm: sliding_window }
default_plan: p
"#;

const SUBJECTS: usize = 20;

fn request(i: usize) -> LimitRequest {
    LimitRequest {
        subject: format!("key_{}", i % SUBJECTS),
        resource: "/x".into(),
        cost: [("requests".to_owned(), 1), ("tokens".to_owned(), 3)].into(),
        ..Default::default()
    }
}

async fn client(addr: &str) -> RateLimiterClient<tonic::transport::Channel> {
    RateLimiterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// Requests and tokens used, summed over every subject, as the server says.
async fn used(addr: &str) -> (u64, u64) {
    let mut c = client(addr).await;
    let (mut requests, mut tokens) = (0, 0);
    for i in 0..SUBJECTS {
        let mut r = request(i);
        r.cost.clear();
        r.cost.insert("requests".into(), 0);
        let d = c.check_limit(r).await.expect("check").into_inner();
        for l in &d.limits {
            let used = l.limit - l.remaining.expect("limited");
            match l.unit.as_str() {
                "requests" => requests += used,
                _ => tokens += used,
            }
        }
    }
    (requests, tokens)
}

/// What identifies the journal's current content: a flush appends to it, a
/// rewrite replaces it.
fn journal_version(path: &std::path::Path) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// Waits (generously) until the journal changes from `seen`: a flush wrote.
async fn next_flush(
    path: &std::path::Path,
    seen: Option<(u64, u64, std::time::SystemTime)>,
) -> Option<(u64, u64, std::time::SystemTime)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = journal_version(path);
        if now.is_some() && now != seen {
            return now;
        }
        assert!(Instant::now() < deadline, "the journal was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_under_load_loses_at_most_the_last_journal_interval() {
    let dir = temp_dir("crash");
    let config = dir.join("crash.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let state_path = dir.join("state.redb");
    let journal = dir.join("state.redb.journal");
    let state = state_path.display().to_string();
    let config = config.display().to_string();
    let args = ["--config", config.as_str(), "--state", state.as_str()];

    let mut server = serve(&args);
    let mut c = client(&server.addr).await;
    let mut consume = async |i: usize| {
        let d = c.consume(request(i)).await.expect("consume").into_inner();
        assert_eq!(d.verdict, support::Verdict::Allowed as i32);
    };
    // The durable part: calls made before two flushes that followed them.
    // The second flush drained its changes after the first had written,
    // which was after these calls: whatever the machine's speed, these are
    // in the journal. No clock involved.
    let mut i = 0;
    for _ in 0..1500 {
        consume(i).await;
        i += 1;
    }
    let durable = i as u64;
    let mut seen = journal_version(&journal);
    for _ in 0..2 {
        consume(i).await;
        i += 1;
        seen = next_flush(&journal, seen).await;
    }
    // Then more load, and the kill in the middle of it.
    for _ in 0..1500 {
        consume(i).await;
        i += 1;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    let server = serve(&args);
    let (requests, tokens) = used(&server.addr).await;
    let total = i as u64;
    assert!(
        (durable..=total).contains(&requests),
        "restored {requests} requests; {durable} were durable, {total} admitted"
    );
    assert_eq!(tokens, 3 * requests, "both limits restored together");
    drop(server);
}

const RESERVING: &str = r#"
classes:
  chat: { match: ["/chat"] }
plans:
  p:
    limits:
      - { name: tokens, unit: tokens, rate: 1000000/day }
      - { name: slots, class: chat, unit: concurrent, amount: 2 }
default_plan: p
"#;

fn reserve(tokens: u64) -> LimitRequest {
    LimitRequest {
        subject: "k".into(),
        resource: "/chat".into(),
        cost: [("tokens".to_owned(), tokens)].into(),
        reserve: Some(pb::Reserve { ttl: None }),
        ..Default::default()
    }
}

async fn tokens_left(c: &mut RateLimiterClient<tonic::transport::Channel>) -> u64 {
    let r = LimitRequest {
        subject: "k".into(),
        resource: "/x".into(),
        cost: [("tokens".to_owned(), 0)].into(),
        ..Default::default()
    };
    let d = c.check_limit(r).await.expect("check").into_inner();
    d.limits
        .iter()
        .find(|l| l.name == "tokens")
        .and_then(|l| l.remaining)
        .expect("tokens")
}

async fn settle(
    c: &mut RateLimiterClient<tonic::transport::Channel>,
    id: &str,
    tokens: u64,
) -> Result<pb::Settlement, tonic::Status> {
    c.settle(pb::SettleRequest {
        id: id.to_owned(),
        actual: [("tokens".to_owned(), tokens)].into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Open reservations survive a graceful restart and a kill -9 (once a
/// journal flush has written them): settled after either, they give back
/// exactly what they would have, a settle retried answers the same, and a
/// slot in flight stays held until it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_survive_a_restart_and_a_kill_9() {
    let dir = temp_dir("crash-reservations");
    let config = dir.join("reserving.yaml");
    std::fs::write(&config, RESERVING).expect("config");
    let state = dir.join("state.redb").display().to_string();
    let journal = dir.join("state.redb.journal");
    let config = config.display().to_string();
    let args = [
        "--config",
        config.as_str(),
        "--state",
        state.as_str(),
        "--journal-interval",
        "50ms",
    ];

    let mut server = serve(&args);
    let mut c = client(&server.addr).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = c
            .consume(reserve(1000))
            .await
            .expect("reserve")
            .into_inner();
        ids.push(d.reservation.expect("reserved").id);
    }
    let first = settle(&mut c, &ids[0], 200).await.expect("settled");
    assert_eq!(tokens_left(&mut c).await, 1_000_000 - 1200);

    // A graceful restart: the open one settles, the settled one retries.
    let stop = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stop.success());
    server.child.wait().expect("stopped");
    server = serve(&args);
    let mut c = client(&server.addr).await;
    assert_eq!(tokens_left(&mut c).await, 1_000_000 - 1200);
    assert_eq!(settle(&mut c, &ids[0], 200).await.expect("retried"), first);
    let again = settle(&mut c, &ids[0], 300)
        .await
        .expect_err("settled before");
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
    // One slot of two is still held (the open reservation's).
    let d = c
        .consume(reserve(1000))
        .await
        .expect("reserve")
        .into_inner();
    ids.push(d.reservation.expect("a slot was free").id);
    let full = c
        .consume(reserve(1000))
        .await
        .expect("decided")
        .into_inner();
    assert_eq!(full.verdict, support::Verdict::RateLimited as i32);
    settle(&mut c, &ids[1], 100)
        .await
        .expect("settled after a restart");
    assert_eq!(tokens_left(&mut c).await, 1_000_000 - 200 - 100 - 1000);

    // A kill -9 once two flushes followed: the open reservation survives.
    // (Each flush follows a change: one with nothing to write writes
    // nothing.)
    let mut seen = journal_version(&journal);
    for _ in 0..2 {
        c.consume(request(0)).await.expect("consume");
        seen = next_flush(&journal, seen).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    let server = serve(&args);
    let mut c = client(&server.addr).await;
    assert_eq!(tokens_left(&mut c).await, 1_000_000 - 1300);
    let full = c
        .consume(reserve(1000))
        .await
        .expect("decided")
        .into_inner();
    assert_eq!(
        full.verdict,
        support::Verdict::Allowed as i32,
        "one slot free"
    );
    let full = c
        .consume(reserve(1000))
        .await
        .expect("decided")
        .into_inner();
    assert_eq!(
        full.verdict,
        support::Verdict::RateLimited as i32,
        "one held"
    );
    c.release(pb::ReleaseRequest { id: ids[2].clone() })
        .await
        .expect("released after a crash");
    assert_eq!(tokens_left(&mut c).await, 1_000_000 - 1300);
    drop(server);
}
