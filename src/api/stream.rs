//! `Decide` and `ConsumeBatch`: many decisions per call.
//!
//! A `Decide` stream answers in request order and decides up to
//! [`IN_FLIGHT`] requests of one stream at once (with Redis, their round
//! trips overlap; in memory each completes at once). An error answers its
//! id alone and the stream stays open; the stream ends when the client
//! closes it or the server shuts down.
//!
//! Requests are read off the connection as they arrive, into a queue of
//! [`QUEUED`], whatever the answers are doing: h2 closes a connection whose
//! peer has too many small DATA frames buffered and unread (`GOAWAY
//! ENHANCE_YOUR_CALM too_many_data_frames`), and a pipelining client sends
//! thousands of one-message frames before it reads an answer. Past the
//! queue, the client waits on HTTP/2 flow control like any other.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{Call, RateLimiterService, convert};
use crate::engine::Mode;
use crate::error::Error;
use crate::proto::tollgate::v1 as pb;
use crate::sink::Door;

/// Decisions of one stream under way at once.
pub const IN_FLIGHT: usize = 64;

/// Requests of one stream read and not yet decided, at most: 8,192 of about
/// 200 bytes each, 1.6 MB a stream at worst.
pub const QUEUED: usize = 8192;

/// The most requests one `ConsumeBatch` call may carry.
pub const MAX_BATCH: usize = 1_000;

/// The answers of a `Decide` stream.
pub type DecideStream = Pin<Box<dyn Stream<Item = Result<pb::DecideResponse, Status>> + Send>>;

// === impl RateLimiterService ===

impl RateLimiterService {
    /// Answers every message of `inbound`, in order, each by the stream's
    /// own deadline and under its trace (`call`), until it or the server ends.
    pub(super) fn decide_stream(
        &self,
        mut inbound: Streaming<pb::DecideRequest>,
        call: Call,
    ) -> DecideStream {
        let (tx, rx) = mpsc::channel(QUEUED);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.next() => m,
                    () = stopping.cancelled() => None,
                };
                // Ends with the client's half, or once nobody reads the answers.
                match message {
                    Some(m) => {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        let this = self.clone();
        let answers = ReceiverStream::new(rx)
            .map(move |message| {
                // Each message is a decision of its own: sampled on its own
                // when the stream has no parent.
                let call = Call {
                    deadline: call.deadline,
                    parent: this.sink.again(&call.parent),
                };
                let this = this.clone();
                async move {
                    let message = message?;
                    let asked = match (&message.request, &message.settle, &message.release) {
                        (_, None, None) => {
                            Asked::Decide(mode(message.mode), message.request.as_ref())
                        }
                        (None, Some(settle), None) => Asked::Settle(settle),
                        (None, None, Some(release)) => Asked::Release(release),
                        _ => Asked::Invalid(Error::invalid(
                            "request",
                            "request, settle and release exclude each other",
                        )),
                    };
                    Ok(this
                        .answer(Door::DecideStream, message.id, asked, &call)
                        .await)
                }
            })
            .buffered(IN_FLIGHT)
            .take_until(self.stopping.clone().cancelled_owned());
        Box::pin(answers)
    }

    /// Every request of `batch` consumed on its own, in order.
    pub(super) async fn batch(
        &self,
        batch: pb::ConsumeBatchRequest,
        call: &Call,
    ) -> Result<pb::ConsumeBatchResponse, Error> {
        if batch.requests.len() > MAX_BATCH {
            return Err(Error::invalid(
                "requests",
                format!(
                    "at most {MAX_BATCH} in one call, got {}",
                    batch.requests.len()
                ),
            ));
        }
        let mut results = Vec::with_capacity(batch.requests.len());
        for (i, request) in batch.requests.iter().enumerate() {
            results.push(
                self.answer(
                    Door::ConsumeBatch,
                    i as u64,
                    Asked::Decide(Ok(Mode::Consume), Some(request)),
                    call,
                )
                .await,
            );
        }
        Ok(pb::ConsumeBatchResponse { results })
    }

    /// One answer: the decision (or settlement), or the error the unary
    /// call would give.
    async fn answer(
        &self,
        door: Door,
        id: u64,
        asked: Asked<'_>,
        call: &Call,
    ) -> pb::DecideResponse {
        let mut response = pb::DecideResponse {
            id,
            ..Default::default()
        };
        let answered = match asked {
            Asked::Invalid(e) | Asked::Decide(Err(e), _) => Err(e),
            Asked::Decide(Ok(_), None) => Err(Error::invalid("request", "required")),
            Asked::Decide(Ok(mode), Some(request)) => self
                .decide_message(door, mode, request, call)
                .await
                .map(|d| response.decision = Some(d)),
            Asked::Settle(r) => self
                .close(door, &r.id, Some(&r.actual))
                .await
                .map(|s| response.settlement = Some(convert::settlement(s))),
            Asked::Release(r) => self
                .close(door, &r.id, None)
                .await
                .map(|s| response.settlement = Some(convert::settlement(s))),
        };
        if let Err(e) = answered {
            let status = Status::from(e);
            response.error = Some(pb::Error {
                code: status.code() as i32,
                message: status.message().to_owned(),
            });
        }
        response
    }
}

/// What one message of a stream (or one request of a batch) asks for.
enum Asked<'a> {
    /// A decision in a mode.
    Decide(Result<Mode, Error>, Option<&'a pb::LimitRequest>),
    /// A reservation settled.
    Settle(&'a pb::SettleRequest),
    /// A reservation released.
    Release(&'a pb::ReleaseRequest),
    /// A message that asks for several things at once.
    Invalid(Error),
}

/// The mode a stream message asks for.
fn mode(mode: i32) -> Result<Mode, Error> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Check) => Ok(Mode::Check),
        Ok(pb::Mode::Consume) => Ok(Mode::Consume),
        Ok(pb::Mode::Record) => Ok(Mode::Record),
        Ok(pb::Mode::Unspecified) | Err(_) => Err(Error::invalid(
            "mode",
            format!("must be MODE_CHECK, MODE_CONSUME or MODE_RECORD, got {mode}"),
        )),
    }
}
