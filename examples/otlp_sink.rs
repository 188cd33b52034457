//! An OTLP/gRPC trace collector that only counts: the receiving end of
//! `scripts/load-insight.sh`, so tollgate's traces are exported for real
//! while it is measured. Prints `listening on ADDR`, and on stdin's end (or
//! SIGTERM) the spans received.
//!
//! `cargo run --release --example otlp_sink -- 127.0.0.1:0`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic::{Request, Response, Status};

struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    let spans = Arc::new(AtomicU64::new(0));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Server::builder()
        .add_service(TraceServiceServer::new(Sink(spans.clone())))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            term.recv().await;
        })
        .await?;
    println!("{}", spans.load(Ordering::Relaxed));
    Ok(())
}
