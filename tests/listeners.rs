//! Every listener bounded: the real binary, real sockets. Past
//! `--max-connections` a connection is closed at once; a peer that sends
//! nothing (no HTTP/2 preface, half a head, a head and no body) is closed by
//! its timeout; a body announced too large is refused before it is sent; a
//! gRPC connection gets at most `--max-concurrent-streams` calls at once; and
//! out of file descriptors, the accept loops back off instead of spinning.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::process::{BIN, Served, serve, temp_dir};
use tollgate::proto::tollgate::v1 as pb;

/// Long enough for any busy machine; every wait below ends on an event.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until the peer closes, within [`PATIENCE`]: what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        // A reset also ends it.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

async fn health(addr: &str) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| e.to_string())
}

async fn eventually_healthy(addr: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match health(addr).await {
            Ok(1) => return,
            other => assert!(Instant::now() < deadline, "never served again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_past_the_cap_is_closed_at_once_and_a_freed_slot_serves_again() {
    let s = serve(&["--max-connections", "3", "--http2-preface-timeout", "1h"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&s.addr).expect("connect"))
        .collect();
    // The three are accepted (each holds a slot) before the fourth comes:
    // the server answers each with its SETTINGS frame.
    for mut c in &held {
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .expect("preface");
        let mut settings = [0u8; 9];
        c.set_read_timeout(Some(PATIENCE)).expect("timeout");
        c.read_exact(&mut settings).expect("the server's SETTINGS");
        assert_eq!(settings[3], 4, "a SETTINGS frame");
    }
    let mut fourth = TcpStream::connect(&s.addr).expect("the kernel accepts it");
    assert!(
        read_to_close(&mut fourth).is_empty(),
        "closed without a byte"
    );
    assert!(health(&s.addr).await.is_err(), "still full");
    drop(held);
    eventually_healthy(&s.addr).await;
}

#[tokio::test]
async fn a_grpc_peer_that_never_sends_the_preface_is_closed() {
    let s = serve(&["--http2-preface-timeout", "1s"]);
    let mut silent = TcpStream::connect(&s.addr).expect("connect");
    let mut partial = TcpStream::connect(&s.addr).expect("connect");
    partial
        .write_all(b"PRI * HTTP/2.0\r\n")
        .expect("half a preface");
    let started = Instant::now();
    // The server speaks first (its SETTINGS), then closes.
    read_to_close(&mut silent);
    read_to_close(&mut partial);
    // Not before the timeout: the close is the timeout's doing.
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that speaks is served as before, past the timeout.
    let mut c = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{}", s.addr))
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.check_limit(pb::LimitRequest {
        subject: "k".into(),
        ..Default::default()
    })
    .await
    .expect("a connection that sent its preface stays open");
}

fn http_served(extra: &[&str]) -> (Served, std::net::SocketAddr) {
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = serve(&args);
    let http = s.http_addr();
    (s, http)
}

fn status_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn an_http_head_or_body_not_sent_in_time_is_closed() {
    let (_s, http) = http_served(&["--header-read-timeout", "1s", "--body-read-timeout", "1s"]);
    let mut half_head = TcpStream::connect(http).expect("connect");
    half_head
        .write_all(b"POST /v1/consume HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");
    let mut no_body = TcpStream::connect(http).expect("connect");
    no_body
        .write_all(b"POST /v1/consume HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"subj")
        .expect("a head, a few bytes of body");
    let answer = read_to_close(&mut no_body);
    assert_eq!(status_line(&answer), "HTTP/1.1 408 Request Timeout");
    assert!(
        String::from_utf8_lossy(&answer).contains("--body-read-timeout"),
        "says which timeout: {}",
        String::from_utf8_lossy(&answer)
    );
    let answer = read_to_close(&mut half_head);
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 408"),
        "closed: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_body_announced_too_large_is_refused_before_it_is_sent() {
    // A body timeout far beyond the test's patience: the answer cannot be
    // the timeout's.
    let (_s, http) = http_served(&["--body-read-timeout", "1h"]);
    let mut c = TcpStream::connect(http).expect("connect");
    c.write_all(b"POST /v1/consume HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
        .expect("head");
    let answer = read_to_close(&mut c);
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_line(&answer), "HTTP/1.1 413 Payload Too Large");
    assert!(text.contains("body: larger than 65536 bytes"), "{text}");
}

#[tokio::test]
async fn the_metrics_port_closes_a_partial_head() {
    let s = serve(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--header-read-timeout",
        "1s",
    ]);
    let metrics: std::net::SocketAddr = s
        .seen
        .iter()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.split(['/', ' ']).next())
        .expect("the log says where metrics listen")
        .parse()
        .expect("address");
    let mut c = TcpStream::connect(metrics).expect("connect");
    c.write_all(b"GET /metr").expect("partial head");
    read_to_close(&mut c);
    // And it still serves a scrape.
    let mut scrape = TcpStream::connect(metrics).expect("connect");
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("scrape");
    let answer = read_to_close(&mut scrape);
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_connection_gets_at_most_max_concurrent_streams_calls_at_once() {
    let s = serve(&["--max-concurrent-streams", "4"]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
    // Four Decide streams held open: the connection's every slot.
    let mut open = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::DecideRequest>(1);
        let answers = client
            .decide(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("a stream within the cap")
            .into_inner();
        open.push((tx, answers));
    }
    // A fifth call on the same connection waits for a slot...
    let mut fifth = client.clone();
    let call = tokio::spawn(async move {
        fifth
            .check_limit(pb::LimitRequest {
                subject: "k".into(),
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished(), "a fifth stream was let in");
    // ...and gets one when a stream ends.
    drop(open.pop());
    tokio::time::timeout(PATIENCE, call)
        .await
        .expect("answered once a slot is free")
        .expect("no panic")
        .expect("answered");
}

/// Out of file descriptors, no accept loop spins: the server uses almost no
/// CPU while clients wait in its backlog, logs the failure at most once per
/// interval per listener, and serves again once descriptors are free.
#[tokio::test]
async fn out_of_file_descriptors_the_accept_loops_back_off() {
    let dir = temp_dir("emfile");
    let state = dir.join("state.redb").display().to_string();
    // A low open-file limit, inherited from the shell.
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 64 && exec {BIN} serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --state {state}"
            ),
        ])
        .env_remove("HOST")
        .env_remove("PORT")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tollgate starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().expect("piped");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let log = log.clone();
        move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                log.lock().expect("lock").push(line);
            }
        }
    });
    let addr = addr_rx.recv_timeout(PATIENCE).expect("listening");
    let pid = child.id();
    // More connections than descriptors: the rest wait in the backlog.
    let crowd: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(crowd.len() > 64, "the backlog holds the crowd");
    let deadline = Instant::now() + PATIENCE;
    while !log
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l.contains("accept failed"))
    {
        assert!(
            Instant::now() < deadline,
            "the server never ran out of descriptors"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .expect("fields")
            .split_whitespace()
            .collect();
        // utime and stime, in clock ticks (fields 14 and 15 of the line).
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let (before, lines_before) = (cpu(), log.lock().expect("lock").len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (spent, lines) = (
        cpu() - before,
        log.lock().expect("lock").len() - lines_before,
    );
    // A spinning loop burns most of a core: ~200 ticks in 3 s. Backing off
    // (at most one retry a second) costs a few.
    assert!(
        spent < 60,
        "{spent} ticks of CPU in 3 s while out of descriptors"
    );
    assert!(
        lines <= 3,
        "{lines} log lines in 3 s while out of descriptors"
    );
    drop(crowd);
    eventually_healthy(&addr).await;
    let _ = child.kill();
    let _ = child.wait();
}
