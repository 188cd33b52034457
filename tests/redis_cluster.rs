//! tollgate on a real three-node Redis Cluster: every key of a decision sits
//! in one slot (the account's hash tag), decisions spread over the nodes, and
//! two replicas still admit exactly the limit.

mod support;

use support::process::serve;
use support::redis::RedisCluster;
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
plans:
  free:
    limits:
      - { rate: 10/day }
      - { rate: 8/day, algorithm: token_bucket, per: account }
      - { rate: 9/hour, algorithm: sliding_window }
default_plan: free
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start();
    let dir = support::process::temp_dir(&format!("cluster-{}", cluster.nodes[0].port));
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let (config, url) = (config.display().to_string(), cluster.url());
    let args = [
        "--config",
        config.as_str(),
        "--store",
        url.as_str(),
        "--store-timeout",
        "2s",
    ];
    let servers = [serve(&args), serve(&args)];
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(
            pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", s.addr))
                .await
                .expect("connect"),
        );
    }
    // Twenty accounts, so the keys spread over every node; each with a key
    // of its own and a shared per-account limit.
    let mut tasks = Vec::new();
    for a in 0..20 {
        for i in 0..20 {
            let mut c = clients[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                let r = pb::LimitRequest {
                    subject: format!("key_{a}"),
                    account: format!("acct_{a}"),
                    ..Default::default()
                };
                let d = c.consume(r).await.expect("consume").into_inner();
                (a, d.verdict == pb::Verdict::Allowed as i32)
            }));
        }
    }
    let mut allowed = [0; 20];
    for t in tasks {
        let (a, ok) = t.await.expect("task");
        allowed[a] += usize::from(ok);
    }
    assert_eq!(allowed, [8; 20], "the per-account token bucket binds at 8");
    let keys: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            n.cli(&["dbsize"])
                .unwrap_or_default()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        keys,
        20 * 3,
        "three counters per account, all with their tag"
    );
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["dbsize"]).as_deref() != Some("0")),
        "keys on every node"
    );
}
