//! The `tollgate.v1` gRPC services: convert, call the limiter, convert back.
//! Errors become statuses in one table ([`crate::status`]).

pub mod admin;
pub mod auth;
pub mod convert;
pub mod stream;
pub mod unary;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Span, field::Empty, instrument};

use crate::engine::Mode;
use crate::error::Error;
use crate::limiter::{Decision, Limiter};
use crate::otel::Parent;
use crate::proto::tollgate::v1 as pb;
use crate::sink::{Decided, Door, Sink, What};
use crate::watch::{Hub, QuotaStream};
use pb::rate_limiter_server::RateLimiter;

/// `tollgate.v1.RateLimiter`.
#[derive(Debug, Clone)]
pub struct RateLimiterService {
    limiter: Arc<Limiter>,
    hub: Arc<Hub>,
    sink: Sink,
    stopping: CancellationToken,
}

/// What a call brings besides its message: when its caller stops waiting
/// (its `grpc-timeout`), and the trace it belongs to (its `traceparent`).
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// A decision not made by then counts nothing.
    pub deadline: Option<tokio::time::Instant>,
    /// The span a decision's span is a child of.
    pub parent: Parent,
}

/// A `WatchQuota` stream: the hub's updates as `tollgate.v1.QuotaUpdate`s.
#[derive(Debug)]
pub struct QuotaUpdates {
    stream: QuotaStream,
    /// With a resource: only the limits of its class (`None`: of no class)
    /// and those of every request.
    class: Option<Option<Arc<str>>>,
}

// === impl RateLimiterService ===

impl RateLimiterService {
    /// The service over `limiter`, handing every decision to `sink` and
    /// watchers to `hub`; its `Decide` streams end when `stopping` is
    /// cancelled.
    pub fn new(
        limiter: Arc<Limiter>,
        hub: Arc<Hub>,
        sink: Sink,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            limiter,
            hub,
            sink,
            stopping,
        }
    }

    /// Settles reservation `id` for `actual` (released when `None`), for
    /// `door`, and hands the settlement to the sink.
    pub async fn close(
        &self,
        door: Door,
        id: &str,
        actual: Option<&std::collections::HashMap<String, u64>>,
    ) -> Result<crate::limiter::reservations::Settlement, Error> {
        let started = Instant::now();
        let finished = match actual {
            Some(actual) => self.limiter.settle(id, actual).await?,
            None => self.limiter.release(id).await?,
        };
        // A retry changed nothing: nothing to bill, watch or announce.
        if finished.again {
            return Ok(finished.settlement);
        }
        let settlement = finished.settlement;
        let request = finished.excess.as_ref().map(|e| crate::limiter::Request {
            subject: &settlement.subject,
            account: &settlement.account,
            resource: "",
            method: None,
            plan: None,
            cost: &e.cost,
            deadline: None,
        });
        let excess = request
            .as_ref()
            .zip(finished.excess.as_ref().map(|e| &e.decision));
        self.settled(door, &settlement, excess, started);
        Ok(settlement)
    }

    /// Settles the reservations that expired unsettled, at their estimate.
    pub async fn expire_reservations(&self) -> usize {
        let started = Instant::now();
        let expired = self.limiter.expire_reservations().await;
        for settlement in &expired {
            self.settled(Door::Expiry, settlement, None, started);
        }
        expired.len()
    }

    fn settled(
        &self,
        door: Door,
        settlement: &crate::limiter::reservations::Settlement,
        excess: Option<(&crate::limiter::Request<'_>, &Decision)>,
        started: Instant,
    ) {
        self.sink.decided(&Decided {
            door,
            mode: Mode::Consume,
            took: started.elapsed(),
            parent: &Parent::NONE,
            what: What::Settled { settlement, excess },
        });
    }

    /// What a gRPC call with `metadata` brings besides its message.
    pub fn call(&self, metadata: &tonic::metadata::MetadataMap) -> Call {
        Call {
            deadline: crate::status::deadline(metadata),
            parent: self.sink.parent(metadata.as_ref()),
        }
    }

    /// What an HTTP request with `headers` brings besides its body (no
    /// deadline: HTTP has none).
    pub fn http_call(&self, headers: &http::HeaderMap) -> Call {
        Call {
            deadline: None,
            parent: self.sink.parent(headers),
        }
    }

    /// Decides `request` for `door`: the one path of every `tollgate.v1`
    /// decision, whichever door it came through, and the one place that
    /// hands it to the sink.
    #[instrument(level = "debug", name = "decide", skip_all, fields(door = door.name(), mode = ?mode, subject = Empty, resource = Empty, plan = Empty, class = Empty, verdict = Empty))]
    pub async fn decide_request(
        &self,
        door: Door,
        mode: Mode,
        request: &pb::LimitRequest,
        call: &Call,
    ) -> Result<Decision, Error> {
        let domain = convert::limit_request(request, call.deadline)?;
        let span = Span::current();
        span.record("subject", domain.subject);
        let started = Instant::now();
        let decision = match &request.reserve {
            None => self.limiter.decide(mode, &domain).await?,
            Some(_) if mode != Mode::Consume => {
                return Err(Error::invalid("reserve", "only a Consume can reserve"));
            }
            Some(reserve) => {
                let ttl = reserve
                    .ttl
                    .as_ref()
                    .map(|t| convert::duration_of("reserve.ttl", t))
                    .transpose()?;
                self.limiter.reserve(&domain, ttl).await?
            }
        };
        self.sink.decided(&Decided {
            door,
            mode,
            took: started.elapsed(),
            parent: &call.parent,
            what: What::Plan {
                request: &domain,
                decision: &decision,
            },
        });
        span.record("plan", &*decision.plan);
        span.record("class", decision.class.as_deref().unwrap_or(""));
        span.record("verdict", tracing::field::debug(decision.verdict));
        tracing::debug!("decided");
        Ok(decision)
    }

    /// [`Self::decide_request`], as the generated `tollgate.v1.Decision`.
    async fn decide_message(
        &self,
        door: Door,
        mode: Mode,
        request: &pb::LimitRequest,
        call: &Call,
    ) -> Result<pb::Decision, Error> {
        self.decide_request(door, mode, request, call)
            .await
            .map(convert::decision)
    }

    /// A unary call through the generated server. gRPC's unary calls are
    /// served by [`unary::Decisions`], which answers straight from the
    /// decision; this is the same decision for a caller of the trait.
    async fn unary_decision(
        &self,
        mode: Mode,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let call = self.call(request.metadata());
        Ok(Response::new(
            self.decide_message(Door::Unary, mode, &request.into_inner(), &call)
                .await?,
        ))
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<QuotaUpdates, Error> {
        let r = request.into_inner();
        Error::required("subject", &r.subject)?;
        for (field, value) in [
            ("subject", &r.subject),
            ("account", &r.account),
            ("resource", &r.resource),
        ] {
            convert::bounded(field, value)?;
        }
        // Only the limits of the resource's class (and the classless ones).
        let class = if r.resource.trim().is_empty() {
            None
        } else {
            Some(self.limiter.class_name(&r.resource)?)
        };
        let stream = self.hub.subscribe(&r.subject, &r.account).await?;
        Ok(QuotaUpdates { stream, class })
    }
}

#[tonic::async_trait]
impl RateLimiter for RateLimiterService {
    async fn check_limit(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.unary_decision(Mode::Check, request).await
    }

    async fn consume(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.unary_decision(Mode::Consume, request).await
    }

    async fn record(
        &self,
        request: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        self.unary_decision(Mode::Record, request).await
    }

    type WatchQuotaStream = QuotaUpdates;

    async fn watch_quota(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchQuotaStream>, Status> {
        Ok(Response::new(self.watch(request).await?))
    }

    type DecideStream = stream::DecideStream;

    async fn decide(
        &self,
        request: Request<Streaming<pb::DecideRequest>>,
    ) -> Result<Response<Self::DecideStream>, Status> {
        let call = self.call(request.metadata());
        Ok(Response::new(
            self.decide_stream(request.into_inner(), call),
        ))
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let r = request.into_inner();
        let settled = self.close(Door::Unary, &r.id, Some(&r.actual)).await?;
        Ok(Response::new(convert::settlement(settled)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let r = request.into_inner();
        let released = self.close(Door::Unary, &r.id, None).await?;
        Ok(Response::new(convert::settlement(released)))
    }

    async fn consume_batch(
        &self,
        request: Request<pb::ConsumeBatchRequest>,
    ) -> Result<Response<pb::ConsumeBatchResponse>, Status> {
        let call = self.call(request.metadata());
        Ok(Response::new(
            self.batch(request.into_inner(), &call).await?,
        ))
    }
}

// === impl QuotaUpdates ===

impl Stream for QuotaUpdates {
    type Item = Result<pb::QuotaUpdate, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.stream).poll_next(cx).map(|u| {
            u.map(|u| {
                let mut update = convert::quota_update(&u);
                if let Some(class) = &this.class {
                    let class = class.as_deref().unwrap_or_default();
                    update
                        .limits
                        .retain(|l| l.class.is_empty() || l.class == class);
                }
                Ok(update)
            })
        })
    }
}
