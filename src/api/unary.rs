//! `tollgate.v1.RateLimiter` as served: `CheckLimit`, `Consume` and
//! `Record` answer with [`WireDecision`], the decision encoded straight from the
//! domain type; every other method goes to the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::RateLimiterService;
use super::wire::WireDecision;
use crate::engine::Mode;
use crate::proto::LeanCodec;
use crate::proto::tollgate::v1 as pb;
use crate::sink::Door;
use pb::rate_limiter_server::RateLimiterServer;

/// The `tollgate.v1.RateLimiter` service.
#[derive(Debug, Clone)]
pub struct Decisions {
    service: Arc<RateLimiterService>,
    generated: RateLimiterServer<RateLimiterService>,
}

/// One decision RPC.
struct Decide {
    service: Arc<RateLimiterService>,
    mode: Mode,
}

// === impl Decisions ===

impl Decisions {
    /// Serves `service`.
    pub fn new(service: Arc<RateLimiterService>) -> Self {
        Self {
            generated: RateLimiterServer::from_arc(service.clone()),
            service,
        }
    }
}

impl NamedService for Decisions {
    const NAME: &'static str = <RateLimiterServer<RateLimiterService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for Decisions
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mode = match request.uri().path() {
            "/tollgate.v1.RateLimiter/CheckLimit" => Mode::Check,
            "/tollgate.v1.RateLimiter/Consume" => Mode::Consume,
            "/tollgate.v1.RateLimiter/Record" => Mode::Record,
            _ => return self.generated.call(request),
        };
        let method = Decide {
            service: self.service.clone(),
            mode,
        };
        Box::pin(async move {
            let mut grpc = Grpc::new(LeanCodec::<WireDecision, pb::LimitRequest>::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}

// === impl Decide ===

impl UnaryService<pb::LimitRequest> for Decide {
    type Response = WireDecision;
    type Future = BoxFuture<Response<WireDecision>, Status>;

    fn call(&mut self, request: Request<pb::LimitRequest>) -> Self::Future {
        let (service, mode) = (self.service.clone(), self.mode);
        Box::pin(async move {
            let call = service.call(request.metadata());
            let decision = service
                .decide_request(Door::Unary, mode, request.get_ref(), &call)
                .await?;
            Ok(Response::new(WireDecision::new(decision)))
        })
    }
}
