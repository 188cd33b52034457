//! `tollgate.v1.RateLimiter`'s unary calls as JSON: `POST /v1/check`,
//! `/v1/consume`, `/v1/record` take a `LimitRequest` and answer the
//! `Decision`, 200 whatever the verdict (the verdict is in the body), or
//! the error table's status.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use tonic::Status;

use super::{Services, error, json, read_body};
use crate::api::convert;
use crate::engine::Mode;
use crate::proto::tollgate::v1 as pb;
use crate::sink::Door;

/// `POST /v1/check`: `CheckLimit`.
pub async fn check(s: State<Services>, body: Body) -> Response {
    decide(s, body, Mode::Check).await
}

/// `POST /v1/consume`: `Consume`.
pub async fn consume(s: State<Services>, body: Body) -> Response {
    decide(s, body, Mode::Consume).await
}

/// `POST /v1/record`: `Record`.
pub async fn record(s: State<Services>, body: Body) -> Response {
    decide(s, body, Mode::Record).await
}

async fn decide(State(s): State<Services>, body: Body, mode: Mode) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    match call_service(&s, &body, mode).await {
        Ok(d) => super::json_response(StatusCode::OK, json::decision::encode_decision(&d)),
        Err(e) => error(&e),
    }
}

async fn call_service(s: &Services, body: &[u8], mode: Mode) -> Result<pb::Decision, Status> {
    let request = match json::decision::decode_limit_request(body) {
        Some(request) => request,
        None => json::decode::<pb::LimitRequest>(body)?,
    };
    let decision = s
        .rate_limiter
        .decide_request(Door::Http, mode, &request, None)
        .await?;
    Ok(convert::decision(decision))
}
