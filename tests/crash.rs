//! Counters survive a crash: the real binary is killed with SIGKILL while
//! under load, started again on the same state file, and the counts it
//! restores miss at most the journal's last interval (1 s by default).

mod support;

use std::time::{Duration, Instant};

use support::process::{serve, temp_dir};
use support::{LimitRequest, RateLimiterClient};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_under_load_loses_at_most_the_last_journal_interval() {
    let dir = temp_dir("crash");
    let config = dir.join("crash.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let state = dir.join("state.redb").display().to_string();
    let config = config.display().to_string();
    let args = ["--config", config.as_str(), "--state", state.as_str()];

    let mut server = serve(&args);
    let mut c = client(&server.addr).await;
    // Admitted calls, with the time each answer arrived.
    let mut admitted: Vec<Instant> = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let d = c.consume(request(i)).await.expect("consume").into_inner();
        assert_eq!(d.verdict, support::Verdict::Allowed as i32);
        admitted.push(Instant::now());
        i += 1;
    }
    server.child.kill().expect("SIGKILL");
    let killed = Instant::now();
    server.child.wait().expect("reaped");

    let server = serve(&args);
    let (requests, tokens) = used(&server.addr).await;
    let total = admitted.len() as u64;
    // Everything admitted more than the interval (and a margin for a slow
    // machine) before the kill was written; nothing is counted twice.
    let durable = admitted
        .iter()
        .filter(|t| killed.duration_since(**t) > Duration::from_millis(1800))
        .count() as u64;
    assert!(durable > 0, "the load ran long enough: {total} calls");
    assert!(
        (durable..=total).contains(&requests),
        "restored {requests} requests; {durable} were durable, {total} admitted"
    );
    assert_eq!(tokens, 3 * requests, "both limits restored together");
    drop(server);
}
