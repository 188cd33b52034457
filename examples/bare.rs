//! A bare tonic server for `tollgate.v1.RateLimiter` that answers every call
//! ALLOWED without limiting anything: the baseline `scripts/load.sh` compares
//! tollgate's decision path against.
//!
//! `cargo run --release --example bare -- 127.0.0.1:0`

use std::io::Write;

use tokio::net::TcpListener;
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
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
