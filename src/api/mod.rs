//! The `tollgate.v1` gRPC services: convert, call the limiter, convert back.

pub mod convert;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Span, field::Empty, instrument};

use crate::engine::{CounterStore, Mode};
use crate::limiter::Limiter;
use crate::proto::tollgate::v1 as pb;
use pb::rate_limiter_server::RateLimiter;

/// `tollgate.v1.RateLimiter`.
#[derive(Debug)]
pub struct RateLimiterService<S> {
    limiter: Arc<Limiter<S>>,
}

// === impl RateLimiterService ===

impl<S> RateLimiterService<S> {
    /// The service over `limiter`.
    pub fn new(limiter: Arc<Limiter<S>>) -> Self {
        Self { limiter }
    }
}

impl<S: CounterStore + 'static> RateLimiterService<S> {
    #[instrument(level = "debug", name = "decide", skip_all, fields(rpc = ?mode, subject = Empty, plan = Empty, class = Empty, verdict = Empty))]
    async fn decide(
        &self,
        mode: Mode,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let request = request.into_inner();
        let domain = convert::limit_request(&request)?;
        let span = Span::current();
        span.record("subject", domain.subject);
        let decision = self.limiter.decide(mode, &domain);
        span.record("plan", &*decision.plan);
        span.record("class", decision.class.as_deref().unwrap_or(""));
        span.record("verdict", tracing::field::debug(decision.verdict));
        tracing::debug!("decided");
        Ok(Response::new(convert::decision(decision)))
    }
}

#[tonic::async_trait]
impl<S: CounterStore + 'static> RateLimiter for RateLimiterService<S> {
    async fn check_limit(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.decide(Mode::Check, request).await
    }

    async fn consume(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.decide(Mode::Consume, request).await
    }

    async fn record(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.decide(Mode::Record, request).await
    }

    type WatchQuotaStream = tokio_stream::Empty<Result<pb::QuotaUpdate, Status>>;

    async fn watch_quota(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchQuotaStream>, Status> {
        Err(Status::unimplemented(
            "WatchQuota is not available in this version of tollgate",
        ))
    }
}
