//! /metrics after traffic: decisions by verdict, bounded labels.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;
use tollgate::storage::memory::MemoryStore;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

#[tokio::test]
async fn decisions_are_counted_by_verdict_plan_and_class() {
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = metrics.local_addr().expect("addr");
    let options = tollgate::server::Options {
        metrics: Some(metrics),
        ..Default::default()
    };
    let yaml = "classes: { fetch: { match: [\"/fetch/*\"] } }\nplans: { free: { limits: [ { class: fetch, rate: 3/minute } ] } }\n";
    let s = TestServer::start_opts(yaml, MemoryStore::new(10_000), options).await;
    assert_eq!(s.consume_n(&req("key_secret_1", "/fetch/a"), 5).await, 3);
    s.check(req("key_secret_2", "/other")).await;
    let text = scrape(addr).await;
    assert!(text.contains(r#"tollgate_decisions_total{rpc="consume",verdict="allowed",plan="free",class="fetch"} 3"#), "{text}");
    assert!(text.contains(r#"tollgate_decisions_total{rpc="consume",verdict="rate_limited",plan="free",class="fetch"} 2"#), "{text}");
    assert!(
        text.contains(
            r#"tollgate_decisions_total{rpc="check",verdict="allowed",plan="free",class=""} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("tollgate_decision_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("tollgate_counters 1"), "{text}");
    assert!(text.contains("tollgate_watchers 0"), "{text}");
    assert!(
        text.contains("tollgate_counter_evictions_total 0"),
        "{text}"
    );
    assert!(
        !text.contains("key_secret"),
        "a subject leaked into a label"
    );
    s.stop().await;
}
