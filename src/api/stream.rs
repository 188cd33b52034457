//! `Decide` and `ConsumeBatch`: many decisions per call.
//!
//! A `Decide` stream answers in request order and decides up to
//! [`IN_FLIGHT`] requests of one stream at once (with Redis, their round
//! trips overlap; in memory each completes at once). An error answers its
//! id alone and the stream stays open; the stream ends when the client
//! closes it or the server shuts down.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::RateLimiterService;
use crate::engine::Mode;
use crate::error::Error;
use crate::proto::tollgate::v1 as pb;

/// Decisions of one stream under way at once.
pub const IN_FLIGHT: usize = 64;

/// The most requests one `ConsumeBatch` call may carry.
pub const MAX_BATCH: usize = 1_000;

/// The answers of a `Decide` stream.
pub type DecideStream = Pin<Box<dyn Stream<Item = Result<pb::DecideResponse, Status>> + Send>>;

// === impl RateLimiterService ===

impl RateLimiterService {
    /// Answers every message of `inbound`, in order, until it or the server ends.
    pub(super) fn decide_stream(&self, inbound: Streaming<pb::DecideRequest>) -> DecideStream {
        let this = self.clone();
        let answers = inbound
            .map(move |message| {
                let this = this.clone();
                async move {
                    let message = message?;
                    Ok(this
                        .answer(message.id, mode(message.mode), message.request.as_ref())
                        .await)
                }
            })
            .buffered(IN_FLIGHT)
            .take_until(self.stopping.clone().cancelled_owned());
        Box::pin(answers)
    }

    /// Every request of `batch` consumed on its own, in order.
    pub(super) async fn consume_batch(
        &self,
        batch: pb::ConsumeBatchRequest,
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
                self.answer(i as u64, Ok(Mode::Consume), Some(request))
                    .await,
            );
        }
        Ok(pb::ConsumeBatchResponse { results })
    }

    /// One answer: the decision, or the error the unary call would give.
    async fn answer(
        &self,
        id: u64,
        mode: Result<Mode, Error>,
        request: Option<&pb::LimitRequest>,
    ) -> pb::DecideResponse {
        let decided = match (mode, request) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(Error::invalid("request", "required")),
            (Ok(mode), Some(request)) => self.decide_one(mode, request).await,
        };
        match decided {
            Ok(decision) => pb::DecideResponse {
                id,
                decision: Some(decision),
                error: None,
            },
            Err(e) => {
                let status = Status::from(e);
                pb::DecideResponse {
                    id,
                    decision: None,
                    error: Some(pb::Error {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                }
            }
        }
    }
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
