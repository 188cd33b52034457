//! The HTTP front door: the same services as gRPC, spoken as JSON over
//! HTTP/1.1, on one listener (`--http-listen`).
//!
//! - [`reference`](mod@reference): envoyproxy/ratelimit's `/json` and `/healthcheck`.
//! - [`v1`]: `tollgate.v1.RateLimiter` as `POST /v1/check|consume|record`.
//! - [`admin`]: `tollgate.v1.Admin` under `/v1/admin/…`, same bearer token.
//! - [`watch`]: `WatchQuota` as Server-Sent Events (`GET /v1/watch`).
//! - [`forward_auth`]: `/v1/forward-auth` for nginx `auth_request`, Caddy
//!   `forward_auth` and Traefik `ForwardAuth`.
//!
//! Like `api/` for gRPC, this layer only converts: a handler decodes the
//! protobuf JSON ([`json`]) into the generated message, calls the very
//! service gRPC calls (in process, through its tonic trait), and maps the
//! `tonic::Status` it may end in to an HTTP status in one table
//! ([`crate::status::http_status`]). So the limiter, the validation and the error table are
//! the ones gRPC uses; only the last step differs.
//!
//! Input is bounded before any of it runs: a body of at most [`MAX_BODY`]
//! bytes (else 413), a request head of at most [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers (else hyper answers 431).

pub mod admin;
mod deadline;
pub mod forward_auth;
mod insight;
pub mod json;
pub mod reference;
pub mod v1;
pub mod watch;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_health::server::HealthService;

use crate::api::RateLimiterService;
use crate::api::admin::AdminService;
use crate::api::auth::AdminAuth;
use crate::envoy::EnvoyService;
use crate::limiter::Limiter;
use crate::listen::{Limits, Listener};
use crate::metrics::{Gauges, Metrics};

/// The largest request body accepted, in bytes; more is 413. A
/// `LimitRequest` or an admin call takes a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The largest request head (request line and headers) accepted, in bytes;
/// more is 431. Forward-auth requests carry the client's own headers
/// (cookies, tokens), hence room beyond what tollgate reads.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most headers a request may carry; more is 431.
pub const MAX_HEADERS: usize = 100;

/// What the HTTP handlers call: the services gRPC serves, shared.
#[derive(Clone)]
pub struct Services {
    /// `tollgate.v1.RateLimiter`.
    pub rate_limiter: Arc<RateLimiterService>,
    /// `tollgate.v1.Admin`, without its interceptor.
    pub admin: Arc<AdminService>,
    /// The admin interceptor, run before every admin call.
    pub admin_auth: AdminAuth,
    /// Envoy's rate limit service, for `/json`.
    pub envoy: Arc<EnvoyService>,
    /// The gRPC health service, for `/healthcheck`.
    pub health: Arc<HealthService>,
    /// The limiter, for the running configuration's `http.forward_auth`.
    pub limiter: Arc<Limiter>,
    /// `/metrics` on this server, when it has no listener of its own.
    pub metrics: Option<MetricsEndpoint>,
}

/// What `/metrics` renders.
#[derive(Clone)]
pub struct MetricsEndpoint {
    /// The counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The gauges, read per scrape.
    pub gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
}

// === impl Services ===

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint").finish_non_exhaustive()
    }
}

/// Every endpoint, over `services`.
pub fn router(services: Services) -> Router {
    let metrics = services.metrics.clone();
    let mut router = Router::new()
        .route("/json", any(reference::json))
        .route("/healthcheck", any(reference::healthcheck))
        .route("/v1/check", post(v1::check))
        .route("/v1/consume", post(v1::consume))
        .route("/v1/record", post(v1::record))
        .route("/v1/settle", post(v1::settle))
        .route("/v1/release", post(v1::release))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/forward-auth", any(forward_auth::forward_auth))
        .nest("/v1/admin", admin::routes())
        .fallback(not_found);
    if let Some(m) = metrics {
        router = router.route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.metrics.render((m.gauges)()),
                )
            }),
        );
    }
    router.with_state(services)
}

/// Serves `router` on `listener` until `stopping` is cancelled, then lets
/// the open connections finish (watch streams end with the hub). A head
/// must arrive within `limits.header_read_timeout`, a body within
/// `limits.body_read_timeout` of its head (else 408), and a body announced
/// larger than [`MAX_BODY`] is refused (413) before any of it is read.
pub async fn serve(
    listener: Listener,
    limits: Limits,
    router: Router,
    stopping: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let body_timeout = limits.body_read_timeout;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping.cancelled() => break,
        };
        let (peer, slot) = (accepted.peer, accepted.slot);
        let router = TowerToHyperService::new(router.clone());
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    if head_len(&request) > MAX_HEAD {
                        return Ok(error_with(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            Code::InvalidArgument,
                            &format!("headers: larger than {MAX_HEAD} bytes"),
                        ));
                    }
                    if announced_len(&request).is_some_and(|n| n > MAX_BODY as u64) {
                        return Ok(error_with(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            Code::InvalidArgument,
                            &format!("body: larger than {MAX_BODY} bytes"),
                        ));
                    }
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(ConnectInfo(peer));
                    let body = Body::new(deadline::Deadline::new(body, body_timeout));
                    hyper::service::Service::call(&router, hyper::Request::from_parts(parts, body))
                        .await
                }
            });
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(accepted.stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, client.addr = %peer, "http connection ended");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
}

/// The body's length as its `Content-Length` announces it.
fn announced_len<B>(request: &hyper::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The size of a request's head as sent: its target and headers. hyper's
/// buffer limit catches a head that arrives in pieces; this, one that
/// arrived whole.
fn head_len<B>(request: &hyper::Request<B>) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target
}

/// A failed call's answer: the HTTP status of its code (the error table), and a body
/// `{"code": <gRPC code>, "message": "…", "details": []}` (grpc-gateway's).
pub fn error(status: &Status) -> Response {
    error_with(
        crate::status::http_status(status.code()),
        status.code(),
        status.message(),
    )
}

/// An error body with an explicit HTTP status, for what gRPC has no code
/// for (a body too large).
pub fn error_with(http: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({
        "code": code as i32,
        "message": message,
        "details": [],
    });
    json_response(http, body.to_string().into_bytes())
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The body, at most [`MAX_BODY`] bytes; a larger one is answered 413, one
/// not sent in time 408, an interrupted one 400.
pub async fn read_body(body: Body) -> Result<Bytes, Response> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            &format!("body: larger than {MAX_BODY} bytes"),
        )),
        Err(e) if deadline::passed(&*e) => Err(error_with(
            StatusCode::REQUEST_TIMEOUT,
            Code::DeadlineExceeded,
            "body: not sent within --body-read-timeout",
        )),
        Err(e) => Err(error_with(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            &format!("body: could not be read: {e}"),
        )),
    }
}

async fn not_found() -> Response {
    error_with(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "no such endpoint; see the README's HTTP front door section",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_the_http_statuses_clients_expect() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
            (Code::Unknown, 500),
        ] {
            assert_eq!(crate::status::http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[tokio::test]
    async fn an_error_body_carries_the_grpc_code_and_message() {
        let response = error(&Status::invalid_argument("subject: required"));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"code": 3, "message": "subject: required", "details": []})
        );
    }
}
