//! The `tollgate.v1` gRPC services: convert, call the limiter, convert back.

pub mod admin;
pub mod auth;
pub mod convert;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Span, field::Empty, instrument};

use crate::engine::{CounterStore, Mode};
use crate::limiter::Limiter;
use crate::proto::tollgate::v1 as pb;
use crate::server::metrics::{DecisionLabels, Metrics};
use crate::watch::{Hub, QuotaStream};
use pb::rate_limiter_server::RateLimiter;
use std::time::Instant;

/// `tollgate.v1.RateLimiter`.
pub struct RateLimiterService<S> {
    limiter: Arc<Limiter<S>>,
    hub: Arc<Hub<S>>,
    metrics: Arc<Metrics>,
}

// === impl RateLimiterService ===

impl<S> RateLimiterService<S> {
    /// The service over `limiter`, telling `hub` of consumption and
    /// counting decisions in `metrics`.
    pub fn new(limiter: Arc<Limiter<S>>, hub: Arc<Hub<S>>, metrics: Arc<Metrics>) -> Self {
        Self {
            limiter,
            hub,
            metrics,
        }
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
        let started = Instant::now();
        let decision = self
            .limiter
            .decide_async(mode, &domain)
            .await
            .map_err(convert::store_error)?;
        let rpc = match mode {
            Mode::Check => "check",
            Mode::Consume => "consume",
            Mode::Record => "record",
        };
        self.metrics
            .decision(&DecisionLabels::of(rpc, &decision), started.elapsed());
        if mode != Mode::Check && decision.counted {
            self.hub.consumed(domain.subject, domain.account);
        }
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

    type WatchQuotaStream = QuotaStream;

    async fn watch_quota(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchQuotaStream>, Status> {
        let r = request.into_inner();
        if r.subject.trim().is_empty() {
            return Err(Status::invalid_argument("subject: must not be empty"));
        }
        let stream = self
            .hub
            .subscribe(&r.subject, &r.account)
            .await
            .map_err(convert::store_error)?;
        Ok(Response::new(stream))
    }
}
