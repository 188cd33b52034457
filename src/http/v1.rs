//! `tollgate.v1.RateLimiter`'s unary calls as JSON: `POST /v1/check`,
//! `/v1/consume`, `/v1/record` take a `LimitRequest` and answer the
//! `Decision`, 200 whatever the verdict (the verdict is in the body), or
//! the error table's status; `/v1/settle` and `/v1/release` take a
//! `SettleRequest` or `ReleaseRequest` and answer the `Settlement`.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use tonic::Status;

use super::{Services, error, json, read_body};
use crate::api::{Call, convert};
use crate::engine::Mode;
use crate::proto::tollgate::v1 as pb;
use crate::sink::Door;

/// `POST /v1/check`: `CheckLimit`.
pub async fn check(s: State<Services>, request: Request) -> Response {
    decide(s, request, Mode::Check).await
}

/// `POST /v1/consume`: `Consume`.
pub async fn consume(s: State<Services>, request: Request) -> Response {
    decide(s, request, Mode::Consume).await
}

/// `POST /v1/record`: `Record`.
pub async fn record(s: State<Services>, request: Request) -> Response {
    decide(s, request, Mode::Record).await
}

async fn decide(State(s): State<Services>, request: Request, mode: Mode) -> Response {
    let (parts, body) = request.into_parts();
    let call = s.rate_limiter.http_call(&parts.headers);
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    match call_service(&s, &body, mode, &call).await {
        Ok(d) => super::json_response(StatusCode::OK, json::decision::encode_decision(&d)),
        Err(e) => error(&e),
    }
}

async fn call_service(
    s: &Services,
    body: &[u8],
    mode: Mode,
    call: &Call,
) -> Result<pb::Decision, Status> {
    let request = match json::decision::decode_limit_request(body) {
        Some(request) => request,
        None => json::decode::<pb::LimitRequest>(body)?,
    };
    let decision = s
        .rate_limiter
        .decide_request(Door::Http, mode, &request, call)
        .await?;
    Ok(convert::decision(decision))
}

/// `POST /v1/settle`: `Settle`.
pub async fn settle(State(s): State<Services>, body: axum::body::Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let settled = async {
        let r: pb::SettleRequest = json::decode(&body)?;
        let settled = s.rate_limiter.close(Door::Http, &r.id, Some(&r.actual));
        Ok::<_, Status>(convert::settlement(settled.await?))
    };
    match settled.await {
        Ok(m) => super::json_response(StatusCode::OK, json::encode(&m)),
        Err(e) => error(&e),
    }
}

/// `POST /v1/release`: `Release`.
pub async fn release(State(s): State<Services>, body: axum::body::Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let released = async {
        let r: pb::ReleaseRequest = json::decode(&body)?;
        let released = s.rate_limiter.close(Door::Http, &r.id, None);
        Ok::<_, Status>(convert::settlement(released.await?))
    };
    match released.await {
        Ok(m) => super::json_response(StatusCode::OK, json::encode(&m)),
        Err(e) => error(&e),
    }
}
