//! A bare tonic server for `tollgate.v1.RateLimiter` and Envoy's
//! `RateLimitService` that answers every call ALLOWED (OK) without limiting
//! anything: the baseline `scripts/load.sh` compares tollgate's decision
//! paths against.
//!
//! `cargo run --release --example bare -- 127.0.0.1:0`

use std::io::Write;

use tokio::net::TcpListener;
use tollgate::proto::envoy::service::ratelimit::v3 as rls;
use tollgate::proto::tollgate::v1 as pb;
use tonic::transport::{Server, server::TcpIncoming};
use tonic::{Request, Response, Status};

struct Bare;

#[tonic::async_trait]
impl pb::rate_limiter_server::RateLimiter for Bare {
    async fn check_limit(
        &self,
        _: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        Ok(Response::new(allowed()))
    }
    async fn consume(
        &self,
        _: Request<pb::LimitRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        Ok(Response::new(allowed()))
    }
    async fn record(&self, _: Request<pb::LimitRequest>) -> Result<Response<pb::Decision>, Status> {
        Ok(Response::new(allowed()))
    }
    type WatchQuotaStream = tokio_stream::Empty<Result<pb::QuotaUpdate, Status>>;
    async fn watch_quota(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchQuotaStream>, Status> {
        Err(Status::unimplemented("bare"))
    }
    type DecideStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DecideResponse, Status>> + Send>,
    >;
    async fn decide(
        &self,
        request: Request<tonic::Streaming<pb::DecideRequest>>,
    ) -> Result<Response<Self::DecideStream>, Status> {
        use tokio_stream::StreamExt;
        let answers = request.into_inner().map(|m| {
            m.map(|m| pb::DecideResponse {
                id: m.id,
                decision: Some(allowed()),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::Settlement {
            id: r.id,
            actual: r.actual,
            ..Default::default()
        }))
    }
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Settlement>, Status> {
        Ok(Response::new(pb::Settlement {
            id: request.into_inner().id,
            ..Default::default()
        }))
    }
    async fn consume_batch(
        &self,
        request: Request<pb::ConsumeBatchRequest>,
    ) -> Result<Response<pb::ConsumeBatchResponse>, Status> {
        let results = (0..request.into_inner().requests.len() as u64)
            .map(|id| pb::DecideResponse {
                id,
                decision: Some(allowed()),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ConsumeBatchResponse { results }))
    }
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for Bare {
    async fn should_rate_limit(
        &self,
        _: Request<rls::RateLimitRequest>,
    ) -> Result<Response<rls::RateLimitResponse>, Status> {
        Ok(Response::new(rls::RateLimitResponse {
            overall_code: rls::rate_limit_response::Code::Ok as i32,
            ..Default::default()
        }))
    }
}

fn allowed() -> pb::Decision {
    pb::Decision {
        verdict: pb::Verdict::Allowed as i32,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(addr).await?;
    writeln!(
        std::io::stderr(),
        "bare server listening on {}",
        listener.local_addr()?
    )?;
    Server::builder()
        .add_service(pb::rate_limiter_server::RateLimiterServer::new(Bare))
        .add_service(rls::rate_limit_service_server::RateLimitServiceServer::new(
            Bare,
        ))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
