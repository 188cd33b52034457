//! Hot reload: the watched file, ReloadConfig, and invalid files that
//! change nothing.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;
use tokio_stream::StreamExt;
use tollgate::proto::tollgate::v1 as pb;
use tollgate::storage::memory::MemoryStore;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn config(limit: u32) -> String {
    format!("plans:\n  free:\n    limits:\n      - {{ rate: {limit}/minute }}\n")
}

async fn serve(path: &PathBuf, yaml: &str) -> TestServer {
    std::fs::write(path, yaml).expect("write config");
    let options = tollgate::server::Options {
        config_path: Some(path.clone()),
        admin_token: Some(ADMIN_TOKEN.into()),
        watch_interval: Duration::from_millis(50),
        ..Default::default()
    };
    TestServer::start_opts(yaml, MemoryStore::new(10_000), options).await
}

#[tokio::test]
async fn reload_config_swaps_valid_files_and_keeps_counters() {
    let d = dir("reload-rpc");
    let path = d.join("tollgate.yaml");
    let s = serve(&path, &config(5)).await;
    assert_eq!(s.consume_n(&req("k", "/x"), 3).await, 3);
    let mut watch = s
        .client
        .clone()
        .watch_quota(pb::WatchRequest {
            subject: "k".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = watch.next().await;
    std::fs::write(&path, config(10)).expect("write");
    let done = s
        .admin()
        .await
        .reload_config(authed(pb::ReloadConfigRequest {}))
        .await
        .expect("reload")
        .into_inner();
    assert_eq!(done.plans, 1);
    // Same identity (requests per minute): the 3 used carry over.
    let checked = s.check(req("k", "/x")).await;
    assert_eq!(
        (checked.limits[0].limit, checked.limits[0].remaining),
        (10, Some(7))
    );
    // Watchers hear of it.
    let u = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let u = watch.next().await.expect("open").expect("ok");
            if u.cause == pb::quota_update::Cause::ConfigReloaded as i32 {
                break u;
            }
        }
    })
    .await
    .expect("a CONFIG_RELOADED update");
    assert_eq!(u.limits[0].limit, 10);
    s.stop().await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_running_limits_stay() {
    let d = dir("reload-bad");
    let path = d.join("tollgate.yaml");
    let s = serve(&path, &config(5)).await;
    std::fs::write(
        &path,
        "plans:\n  free:\n    limits:\n      - { rate: 30 per min }\n",
    )
    .expect("write");
    let err = s
        .admin()
        .await
        .reload_config(authed(pb::ReloadConfigRequest {}))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("tollgate.yaml:4: plans.free.limits[0].rate"),
        "{}",
        err.message()
    );
    assert_eq!(
        s.consume_n(&req("k", "/x"), 6).await,
        5,
        "the old limit of 5 holds"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_itself_even_through_a_symlink_swap() {
    let d = dir("reload-watch");
    // ConfigMap layout: tollgate.yaml -> ..data/tollgate.yaml, ..data -> a dated dir.
    let v1 = d.join("v1");
    std::fs::create_dir_all(&v1).expect("v1");
    std::fs::write(v1.join("tollgate.yaml"), config(5)).expect("write");
    std::os::unix::fs::symlink("v1", d.join("..data")).expect("link data");
    std::os::unix::fs::symlink("..data/tollgate.yaml", d.join("tollgate.yaml")).expect("link file");
    let path = d.join("tollgate.yaml");
    let s = serve_existing(&path).await;
    assert_eq!(s.check(req("k", "/x")).await.limits[0].limit, 5);
    // Swap ..data to a new directory, atomically, as the kubelet does.
    let v2 = d.join("v2");
    std::fs::create_dir_all(&v2).expect("v2");
    std::fs::write(v2.join("tollgate.yaml"), config(7)).expect("write");
    std::os::unix::fs::symlink("v2", d.join("..data_tmp")).expect("link tmp");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if s.check(req("k", "/x")).await.limits[0].limit == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "the swap was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(d);
}

async fn serve_existing(path: &PathBuf) -> TestServer {
    let yaml = std::fs::read_to_string(path).expect("read");
    let options = tollgate::server::Options {
        config_path: Some(path.clone()),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Default::default()
    };
    TestServer::start_opts(&yaml, MemoryStore::new(10_000), options).await
}

/// Waits until the running limit is `want`; the limit at the deadline.
async fn settles_on(s: &TestServer, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let limit = s.check(req("k", "/x")).await.limits[0].limit;
        if limit == want || Instant::now() > deadline {
            return limit;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_newest_content_wins_over_concurrent_reloads_and_rewrites() {
    let d = dir("reload-race");
    let path = d.join("tollgate.yaml");
    let s = serve(&path, &config(5)).await;
    // Rewrites and ReloadConfig calls at once, faster than the watcher's
    // debounce, ending on the content the server started with: whatever
    // an earlier reload installed, the file's last content must win.
    let mut calls = Vec::new();
    for limit in 10..30 {
        std::fs::write(&path, config(limit)).expect("write");
        let mut admin = s.admin().await;
        calls.push(tokio::spawn(async move {
            admin
                .reload_config(authed(pb::ReloadConfigRequest {}))
                .await
        }));
    }
    // Each reload read whatever the file held at that moment: a complete
    // config (answered with what it loaded), or one caught mid-write,
    // refused naming the file and keeping the running config.
    let mut loaded = 0;
    for call in calls {
        match call.await.expect("reload call") {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(r.path, path.display().to_string());
                assert_eq!(r.plans, 1, "{r:?}");
                loaded += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                assert!(e.message().contains("tollgate.yaml"), "{}", e.message());
            }
        }
    }
    assert!(loaded > 0, "no reload succeeded");
    std::fs::write(&path, config(5)).expect("write");
    assert_eq!(settles_on(&s, 5).await, 5, "the last content written wins");
    // A reload of other content, then the file back as the watcher last saw it.
    std::fs::write(&path, config(8)).expect("write");
    s.admin()
        .await
        .reload_config(authed(pb::ReloadConfigRequest {}))
        .await
        .expect("reload");
    std::fs::write(&path, config(5)).expect("write");
    assert_eq!(
        settles_on(&s, 5).await,
        5,
        "the file's content, not the last reload's"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(d);
}
