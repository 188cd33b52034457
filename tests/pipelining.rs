//! A `Decide` client with 5,000 messages in flight gets every answer: sent
//! one per HTTP/2 DATA frame by a raw h2 client (what tripped h2's
//! `too_many_data_frames` GOAWAY before Decide read ahead), and by tonic; in
//! memory and on a real redis-server. Exactly the limit is admitted.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use support::process::{Served, serve, temp_dir};
use support::redis::RedisServer;
use tollgate::proto::tollgate::v1 as pb;

const MESSAGES: u64 = 5_000;
const LIMIT: u64 = 1_000;
const PATIENCE: Duration = Duration::from_secs(120);

fn start(name: &str, store: Option<&str>) -> Served {
    let dir = temp_dir(&format!("pipelining-{name}"));
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        format!("plans: {{ free: {{ limits: [ {{ rate: {LIMIT}/hour }} ] }} }}\n"),
    )
    .expect("config");
    let config = config.display().to_string();
    let mut args = vec!["--config", &config];
    if let Some(url) = store {
        // Generous: this is about the protocol, not Redis's speed.
        args.extend(["--store", url, "--store-timeout", "5s"]);
    }
    serve(&args)
}

fn request(id: u64, subject: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        id,
        mode: pb::Mode::Consume as i32,
        request: Some(pb::LimitRequest {
            subject: subject.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every id answered once, each with a decision; exactly [`LIMIT`] allowed.
fn check(answers: &[pb::DecideResponse]) {
    assert_eq!(answers.len() as u64, MESSAGES, "every message answered");
    let ids: HashSet<u64> = answers.iter().map(|a| a.id).collect();
    assert_eq!(ids.len() as u64, MESSAGES, "each id once");
    let allowed = answers
        .iter()
        .map(|a| {
            let d = a
                .decision
                .as_ref()
                .unwrap_or_else(|| panic!("id {} failed: {:?}", a.id, a.error));
            d.verdict == pb::Verdict::Allowed as i32
        })
        .filter(|a| *a)
        .count() as u64;
    assert_eq!(allowed, LIMIT, "exactly the limit admitted");
}

/// 5,000 Decide messages, one DATA frame each, all sent before a single
/// answer is read.
async fn raw_h2(addr: &str, subject: &str) -> Vec<pb::DecideResponse> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 24)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let call = http::Request::post(format!("http://{addr}/tollgate.v1.RateLimiter/Decide"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(call, false).expect("stream opens");
    for id in 0..MESSAGES {
        let message = request(id, subject).encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(message.len() as u32);
        frame.put_slice(&message);
        send.send_data(frame.freeze(), false).expect("queued");
    }
    send.send_data(Bytes::new(), true).expect("end of stream");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("headers in time")
        .expect("no GOAWAY");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.data())
        .await
        .expect("answers in time")
    {
        let chunk = chunk.expect("the stream is not reset");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
        buf.extend_from_slice(&chunk);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            buf.advance(5);
            answers.push(pb::DecideResponse::decode(buf.split_to(len)).expect("an answer"));
        }
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("grpc-status");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    drop(client);
    driver.abort();
    answers
}

/// The same through tonic: every message queued at once.
async fn tonic(addr: &str, subject: &str) -> Vec<pb::DecideResponse> {
    let mut client = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let requests: Vec<_> = (0..MESSAGES).map(|id| request(id, subject)).collect();
    let mut answers = client
        .decide(tokio_stream::iter(requests))
        .await
        .expect("stream opens")
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("answers in time")
        .expect("no error")
    {
        got.push(a);
    }
    got
}

#[tokio::test]
async fn five_thousand_in_flight_in_memory() {
    let s = start("memory", None);
    check(&raw_h2(&s.addr, "raw").await);
    check(&tonic(&s.addr, "tonic").await);
}

#[tokio::test]
async fn five_thousand_in_flight_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let s = start("redis", Some(&url));
    check(&raw_h2(&s.addr, "raw").await);
    check(&tonic(&s.addr, "tonic").await);
}
