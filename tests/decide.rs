//! `Decide` (a bidirectional stream of decisions) and `ConsumeBatch`, end to
//! end: a real server, a tonic client.

mod support;

use std::time::Duration;

use support::*;
use tokio_stream::StreamExt;
use tollgate::proto::tollgate::v1 as pb;

const CONFIG: &str = r#"
classes:
  search: { match: ["/search"] }
plans:
  free:
    limits:
      - { rate: 3/minute }
      - { class: search, deny: "Enterprise plan required" }
default_plan: free
"#;

fn message(id: u64, mode: pb::Mode, request: Option<LimitRequest>) -> pb::DecideRequest {
    pb::DecideRequest {
        id,
        mode: mode as i32,
        request,
        ..Default::default()
    }
}

/// A Decide stream: the sender of its requests and its answers.
async fn open(
    s: &TestServer,
) -> (
    tokio::sync::mpsc::Sender<pb::DecideRequest>,
    tonic::Streaming<pb::DecideResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let answers = s
        .client
        .clone()
        .decide(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    (tx, answers)
}

fn verdict_of(r: &pb::DecideResponse) -> Verdict {
    verdict(r.decision.as_ref().expect("a decision"))
}

#[tokio::test]
async fn a_stream_answers_every_id_in_order_and_counts_like_consume() {
    let s = TestServer::start(CONFIG).await;
    let (tx, mut answers) = open(&s).await;
    let r = req("key_1", "/x");
    for id in 10..15 {
        tx.send(message(id, pb::Mode::Consume, Some(r.clone())))
            .await
            .expect("send");
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let a = answers.next().await.expect("an answer").expect("ok");
        got.push((a.id, verdict_of(&a)));
    }
    assert_eq!(
        got,
        [
            (10, Verdict::Allowed),
            (11, Verdict::Allowed),
            (12, Verdict::Allowed),
            (13, Verdict::RateLimited),
            (14, Verdict::RateLimited),
        ]
    );
    // The same counters as the unary calls, and CHECK counts nothing.
    assert_eq!(verdict(&s.check(r.clone()).await), Verdict::RateLimited);
    tx.send(message(20, pb::Mode::Check, Some(req("key_2", "/x"))))
        .await
        .expect("send");
    let a = answers.next().await.expect("an answer").expect("ok");
    assert_eq!((a.id, verdict_of(&a)), (20, Verdict::Allowed));
    assert_eq!(
        header(
            a.decision.as_ref().expect("decision"),
            "X-RateLimit-Remaining"
        ),
        Some("3")
    );
    drop(tx);
    assert!(
        answers.next().await.is_none(),
        "ends when the client closes"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bad_message_is_an_error_for_its_id_and_the_stream_stays_open() {
    let s = TestServer::start(CONFIG).await;
    let (tx, mut answers) = open(&s).await;
    tx.send(message(1, pb::Mode::Consume, Some(req("", "/x"))))
        .await
        .expect("send");
    tx.send(message(2, pb::Mode::Unspecified, Some(req("k", "/x"))))
        .await
        .expect("send");
    tx.send(message(3, pb::Mode::Consume, None))
        .await
        .expect("send");
    tx.send(message(4, pb::Mode::Record, Some(req("k", "/search"))))
        .await
        .expect("send");
    let mut errors = Vec::new();
    for _ in 0..3 {
        let a = answers.next().await.expect("an answer").expect("ok");
        assert!(a.decision.is_none());
        let e = a.error.expect("an error");
        errors.push((a.id, e.code, e.message));
    }
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(errors[0], (1, invalid, "subject: must not be empty".into()));
    assert_eq!((errors[1].0, errors[1].1), (2, invalid));
    assert!(errors[1].2.starts_with("mode: "), "{}", errors[1].2);
    assert_eq!(errors[2], (3, invalid, "request: required".into()));
    let a = answers.next().await.expect("an answer").expect("ok");
    assert_eq!((a.id, verdict_of(&a)), (4, Verdict::NotInPlan));
    s.stop().await;
}

#[tokio::test]
async fn an_open_stream_ends_when_the_server_shuts_down() {
    let s = TestServer::start(CONFIG).await;
    let (tx, mut answers) = open(&s).await;
    tx.send(message(1, pb::Mode::Consume, Some(req("k", "/x"))))
        .await
        .expect("send");
    answers.next().await.expect("an answer").expect("ok");
    // The server stops while the client keeps its side open.
    tokio::time::timeout(Duration::from_secs(60), s.stop())
        .await
        .expect("shutdown does not wait on the open stream");
    // The answers end, though the client never closed its side.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(_)) = answers.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the answer stream never ended");
    drop(tx);
}

#[tokio::test]
async fn a_batch_decides_each_request_on_its_own_in_order() {
    let s = TestServer::start(CONFIG).await;
    let mut requests: Vec<LimitRequest> = (0..4).map(|_| req("key_1", "/x")).collect();
    requests.insert(1, req("", "/x"));
    requests.push(req("key_1", "/search"));
    let results = s
        .client
        .clone()
        .consume_batch(pb::ConsumeBatchRequest { requests })
        .await
        .expect("batch")
        .into_inner()
        .results;
    let got: Vec<(u64, Option<Verdict>)> = results
        .iter()
        .map(|r| (r.id, r.decision.as_ref().map(verdict)))
        .collect();
    assert_eq!(
        got,
        [
            (0, Some(Verdict::Allowed)),
            (1, None),
            (2, Some(Verdict::Allowed)),
            (3, Some(Verdict::Allowed)),
            (4, Some(Verdict::RateLimited)),
            (5, Some(Verdict::NotInPlan)),
        ]
    );
    assert_eq!(
        results[1].error.as_ref().map(|e| e.code),
        Some(tonic::Code::InvalidArgument as i32)
    );
    let too_many = (0..1001).map(|_| req("k", "/x")).collect();
    let err = s
        .client
        .clone()
        .consume_batch(pb::ConsumeBatchRequest { requests: too_many })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("requests: at most 1000"),
        "{}",
        err.message()
    );
    s.stop().await;
}
