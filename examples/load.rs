//! A gRPC load tool for what h2load cannot do: many distinct keys, latency at
//! one call in flight, and `Decide` streams. `scripts/load.sh` drives it.
//!
//! ```text
//! load ADDR consume  [--keys N] [--conns C] [--inflight M] [--seconds S]
//! load ADDR reserve  [--keys N] [--conns C] [--inflight M] [--seconds S]
//! load ADDR envoy    [--keys N] [--conns C] [--inflight M] [--seconds S] [--warm]
//! load ADDR latency  [--path consume|envoy] [--calls N]
//! load ADDR stream   [--conns C] [--seconds S]
//! ```
//!
//! Throughput modes print `MODE: N calls/s` (`reserve`: a Consume that
//! reserves, then a Settle of its id, counted as one); `--warm` first makes one call
//! per key, so every counter exists before the timed run (and prints the
//! server's counters as seen by the caller's `--pid`, if given). Latency
//! prints percentiles in microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tollgate::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use tollgate::proto::envoy::service::ratelimit::v3 as rls;
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::{Channel, Endpoint};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    addr: String,
    mode: String,
    keys: usize,
    conns: usize,
    inflight: usize,
    seconds: u64,
    calls: usize,
    path: String,
    warm: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = parse()?;
    let channels = connect(&args).await?;
    match args.mode.as_str() {
        "consume" | "envoy" | "reserve" => {
            let keys: Arc<Vec<String>> =
                Arc::new((0..args.keys).map(|i| format!("key_{i}")).collect());
            if args.warm {
                let started = Instant::now();
                run(&args, &channels, keys.clone(), Some(args.keys)).await?;
                eprintln!(
                    "warmed {} keys in {:.1}s",
                    args.keys,
                    started.elapsed().as_secs_f64()
                );
            }
            let (n, took) = run(&args, &channels, keys, None).await?;
            println!("{}: {:.0} calls/s", args.mode, n as f64 / took);
        }
        "latency" => latency(&args, channels[0].clone()).await?,
        "stream" => stream(&args, &channels).await?,
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}

/// Unary calls from `conns × inflight` tasks over `keys`, until `seconds`
/// pass or, when `total` is set, until that many calls were made.
async fn run(
    args: &Args,
    channels: &[Channel],
    keys: Arc<Vec<String>>,
    total: Option<usize>,
) -> Result<(u64, f64), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for channel in channels {
        for _ in 0..args.inflight {
            let (channel, keys, done, next) =
                (channel.clone(), keys.clone(), done.clone(), next.clone());
            let envoy = args.mode == "envoy";
            let reserve = args.mode == "reserve";
            tasks.push(tokio::spawn(async move {
                let mut consume = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
                let mut envoy_client =
                    rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if total.is_some_and(|t| i >= t)
                        || (total.is_none() && Instant::now() >= deadline)
                    {
                        return Ok::<_, tonic::Status>(());
                    }
                    let key = keys[i % keys.len()].clone();
                    if envoy {
                        envoy_client.should_rate_limit(rls_request(key)).await?;
                    } else if reserve {
                        let mut r = limit_request(key);
                        r.cost.insert("requests".into(), 3);
                        r.reserve = Some(pb::Reserve { ttl: None });
                        let d = consume.consume(r).await?.into_inner();
                        let id = d.reservation.map(|r| r.id).unwrap_or_default();
                        consume
                            .settle(pb::SettleRequest {
                                id,
                                actual: [("requests".to_owned(), 1)].into(),
                            })
                            .await?;
                    } else {
                        consume.consume(limit_request(key)).await?;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok((
        done.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// One connection, one call at a time: percentiles of the round trip.
async fn latency(args: &Args, channel: Channel) -> Result<(), Error> {
    let mut consume = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
    let mut envoy = rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
    let mut took = Vec::with_capacity(args.calls);
    for i in 0..args.calls + args.calls / 10 {
        let key = format!("key_{}", i % 1000);
        let started = Instant::now();
        if args.path == "envoy" {
            envoy.should_rate_limit(rls_request(key)).await?;
        } else {
            consume.consume(limit_request(key)).await?;
        }
        // The first tenth warms up connections and caches.
        if i >= args.calls / 10 {
            took.push(started.elapsed());
        }
    }
    took.sort();
    let at =
        |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "latency {}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs ({} calls)",
        args.path,
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        took.len()
    );
    Ok(())
}

/// One `Decide` stream per connection, fed as fast as flow control allows.
async fn stream(args: &Args, channels: &[Channel]) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        let (channel, done) = (channel.clone(), done.clone());
        let keys = args.keys.max(1) as u64;
        tasks.push(tokio::spawn(async move {
            let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
            let requests = tokio_stream::iter(0u64..).map(move |id| pb::DecideRequest {
                id,
                mode: pb::Mode::Consume as i32,
                request: Some(limit_request(format!("key_{}_{}", c, id % keys))),
                ..Default::default()
            });
            let mut answers = client.decide(requests).await?.into_inner();
            while let Some(answer) = answers.next().await {
                answer?;
                done.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline {
                    break;
                }
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "stream: {:.0} decisions/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn limit_request(subject: String) -> pb::LimitRequest {
    pb::LimitRequest {
        subject,
        resource: "/api/v1/fetch/people".into(),
        ..Default::default()
    }
}

fn rls_request(value: String) -> rls::RateLimitRequest {
    rls::RateLimitRequest {
        domain: "load".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "api_key".into(),
                value,
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

async fn connect(args: &Args) -> Result<Vec<Channel>, Error> {
    let mut out = Vec::new();
    for _ in 0..args.conns.max(1) {
        let endpoint = Endpoint::from_shared(format!("http://{}", args.addr))?.tcp_nodelay(true);
        out.push(endpoint.connect().await?);
    }
    Ok(out)
}

fn parse() -> Result<Args, Error> {
    let mut it = std::env::args().skip(1);
    let addr = it.next().ok_or("usage: load ADDR MODE [flags]")?;
    let mode = it.next().ok_or("usage: load ADDR MODE [flags]")?;
    let mut args = Args {
        addr,
        mode,
        keys: 1,
        conns: 8,
        inflight: 16,
        seconds: 5,
        calls: 20_000,
        path: "consume".into(),
        warm: false,
    };
    while let Some(flag) = it.next() {
        if flag == "--warm" {
            args.warm = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--keys" => args.keys = value.parse()?,
            "--conns" => args.conns = value.parse()?,
            "--inflight" => args.inflight = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--calls" => args.calls = value.parse()?,
            "--path" => args.path = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}
