//! Opens many WatchQuota streams against a running tollgate and measures
//! update latency: `scripts/watch_load.sh` runs it and reads the server's
//! memory before and after.
//!
//! `cargo run --release --example watchers -- ADDR WATCHERS CONNECTIONS`

use std::io::Write;
use std::time::{Duration, Instant};

use pb::rate_limiter_client::RateLimiterClient;
use tokio_stream::StreamExt;
use tollgate::proto::tollgate::v1 as pb;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: watchers ADDR WATCHERS CONNECTIONS")?;
    let watchers: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let connections: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(RateLimiterClient::connect(format!("http://{addr}")).await?);
    }
    let mut streams = Vec::with_capacity(watchers);
    let opened = Instant::now();
    for i in 0..watchers {
        let client = &mut clients[i % connections];
        let request = pb::WatchRequest {
            subject: format!("watcher_{i}"),
            ..Default::default()
        };
        let mut stream = client.watch_quota(request).await?.into_inner();
        stream.next().await.ok_or("no snapshot")??;
        streams.push(stream);
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "opened {watchers} watch streams on {connections} connections in {:?}",
        opened.elapsed()
    )?;
    writeln!(out, "ready")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Latency: a Consume for one subject until its watcher hears of it.
    let mut latencies = Vec::new();
    for i in (0..watchers).step_by((watchers / 200).max(1)) {
        let client = &mut clients[i % connections];
        let request = pb::LimitRequest {
            subject: format!("watcher_{i}"),
            resource: "/api/v1/fetch/x".into(),
            ..Default::default()
        };
        let started = Instant::now();
        client.consume(request).await?;
        tokio::time::timeout(Duration::from_secs(5), streams[i].next())
            .await?
            .ok_or("stream ended")??;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    writeln!(
        out,
        "update latency over {} samples (includes the coalescing interval): p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    )?;
    writeln!(out, "done")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}
