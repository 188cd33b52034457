//! Overrides in Redis are stored one limit at a time: edits of different
//! limits of one account, made at once on several replicas, all survive,
//! and accounts written in the old layout (a JSON list per account) are
//! still read and move to the new one on their next edit.

mod support;

use std::time::Duration;

use support::redis::RedisServer;
use tollgate::plans::overrides::{Change, Override};
use tollgate::state::RuntimeState;
use tollgate::storage::redis::RedisStore;

fn amount(limit: &str, n: u64) -> Override {
    Override {
        limit: limit.into(),
        change: Change::Amount(n),
        expires_at: None,
        reason: String::new(),
    }
}

async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&redis.url(), Duration::from_secs(2))
        .await
        .expect("connects")
}

/// A replica's admin state; it does not follow the others' notices, so it
/// never learns of their edits before making its own.
async fn replica(redis: &RedisServer, name: &str) -> RuntimeState {
    RuntimeState::shared(store(redis).await, name.into())
}

fn limits(list: &[Override]) -> Vec<&str> {
    let mut names: Vec<&str> = list.iter().map(|o| o.limit.as_str()).collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn edits_of_one_account_on_two_replicas_both_survive() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis, "a").await, replica(&redis, "b").await);
    a.set_override("acct", amount("x", 5)).await.expect("set");
    // b has not heard of x: it used to write back its own list, [y].
    b.set_override("acct", amount("y", 7)).await.expect("set");

    let s = store(&redis).await;
    let (_, stored) = s.load_account("acct").await.expect("read");
    assert_eq!(limits(&stored), ["x", "y"]);
    assert_eq!(limits(&b.runtime().overrides("acct")), ["x", "y"]);
    let all = s.load_runtime().await.expect("read");
    assert_eq!(limits(&all.overrides["acct"]), ["x", "y"]);

    // a removes what only b set.
    assert!(a.remove_override("acct", "y").await.expect("remove"));
    assert!(!a.remove_override("acct", "y").await.expect("remove"));
    let (_, stored) = s.load_account("acct").await.expect("read");
    assert_eq!(limits(&stored), ["x"]);
    assert!(a.remove_override("acct", "x").await.expect("remove"));
    assert!(s.load_runtime().await.expect("read").overrides.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_on_two_replicas_all_survive() {
    let redis = RedisServer::start();
    let a = std::sync::Arc::new(replica(&redis, "a").await);
    let b = std::sync::Arc::new(replica(&redis, "b").await);
    let names: Vec<String> = (0..20).map(|i| format!("limit-{i:02}")).collect();
    let mut edits = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let on = if i % 2 == 0 { a.clone() } else { b.clone() };
        let name = name.clone();
        edits.spawn(async move { on.set_override("acct", amount(&name, 10)).await });
    }
    while let Some(r) = edits.join_next().await {
        r.expect("joins").expect("set");
    }
    let (_, stored) = store(&redis)
        .await
        .load_account("acct")
        .await
        .expect("read");
    assert_eq!(
        limits(&stored),
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_old_layout_is_read_and_moves_on_the_next_edit() {
    let redis = RedisServer::start();
    let old = serde_json::to_string(&vec![amount("x", 5), amount("y", 6)]).expect("json");
    redis
        .cli(&["HSET", "tg:overrides", "acct", &old])
        .expect("written");
    let s = store(&redis).await;
    let all = s.load_runtime().await.expect("read");
    assert_eq!(limits(&all.overrides["acct"]), ["x", "y"]);
    let (_, stored) = s.load_account("acct").await.expect("read");
    assert_eq!(limits(&stored), ["x", "y"]);

    let b = replica(&redis, "b").await;
    b.set_override("acct", amount("z", 7)).await.expect("set");
    assert_eq!(
        redis.cli(&["HEXISTS", "tg:overrides", "acct"]).as_deref(),
        Some("0")
    );
    assert!(b.remove_override("acct", "x").await.expect("remove"));
    let (_, stored) = s.load_account("acct").await.expect("read");
    assert_eq!(limits(&stored), ["y", "z"]);
    assert_eq!(stored[0], amount("y", 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_every_key_of_an_edit_in_one_slot() {
    let cluster = support::redis::RedisCluster::start();
    let connect = || async {
        let s = RedisStore::connect(&cluster.url(), Duration::from_secs(2))
            .await
            .expect("connects");
        s.warm_up(Duration::from_secs(5)).await.expect("reachable");
        s
    };
    let a = RuntimeState::shared(connect().await, "a".into());
    let b = RuntimeState::shared(connect().await, "b".into());
    a.set_override("acct", amount("x", 5)).await.expect("set");
    b.set_override("acct", amount("y", 7)).await.expect("set");
    let s = connect().await;
    let (_, stored) = s.load_account("acct").await.expect("read");
    assert_eq!(limits(&stored), ["x", "y"]);
    let all = s.load_runtime().await.expect("read");
    assert_eq!(limits(&all.overrides["acct"]), ["x", "y"]);
    assert!(b.remove_override("acct", "x").await.expect("remove"));
}
