//! envoyproxy/ratelimit's HTTP endpoints, answered as it answers them.
//!
//! `/json` (any method, as the reference routes it): the body is a
//! `RateLimitRequest` in protobuf JSON. The answer is the
//! `RateLimitResponse` as JSON with `Content-Type: application/json`: 200
//! when OK, 429 when OVER_LIMIT, 500 when UNKNOWN. A body that is not a
//! request, and a call that fails (any error status), are 400 with Go's
//! `http.Error` body: `Bad Request` and a newline, as text.
//!
//! `/healthcheck` (any method): 200 `OK` while the gRPC health service
//! reports the server SERVING, else 500 with an empty body.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;

use super::{Services, json, read_body};
use crate::proto::envoy::service::ratelimit::v3 as pb;
use pb::rate_limit_response::Code;
use pb::rate_limit_service_server::RateLimitService;

/// `/json`.
pub async fn json(State(s): State<Services>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let request: pb::RateLimitRequest = match json::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e.message(), "/json: not a RateLimitRequest");
            return bad_request();
        }
    };
    // The headers as the call's metadata: a `traceparent` among them is
    // the span's parent, as over gRPC.
    let request = Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers),
        tonic::Extensions::default(),
        request,
    );
    let response = match s.envoy.should_rate_limit(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::debug!(code = ?e.code(), error = %e.message(), "/json: call failed");
            return bad_request();
        }
    };
    let status = match Code::try_from(response.overall_code).unwrap_or(Code::Unknown) {
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
        Code::Ok => StatusCode::OK,
    };
    super::json_response(status, json::encode(&response))
}

/// `/healthcheck`.
pub async fn healthcheck(State(s): State<Services>) -> Response {
    let serving = s
        .health
        .check(Request::new(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
    if serving {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK").into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// Go's `http.Error(w, "Bad Request", 400)`.
fn bad_request() -> Response {
    let mut response = (StatusCode::BAD_REQUEST, "Bad Request\n").into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
