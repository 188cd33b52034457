//! `WatchQuota` as Server-Sent Events: `GET /v1/watch?subject=…[&account=…]
//! [&resource=…]`.
//!
//! The stream is the one gRPC serves (the same hub, coalescing and
//! `--max-watchers` cap; a slow reader only ever misses intermediate
//! states): a `snapshot` event first, then one per change. Each event's
//! name is the update's cause in lowercase (`snapshot`, `consumption`,
//! `window_reset`, `plan_changed`, `override_changed`, `config_reloaded`)
//! and its data the `QuotaUpdate` in protobuf JSON, on one line. A comment
//! line every [`HEARTBEAT`] keeps proxies from closing an idle stream. The
//! stream ends when the server shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};

use super::{Services, error, error_with, json};
use crate::proto::tollgate::v1 as pb;
use pb::rate_limiter_server::RateLimiter;

/// How often an idle stream carries a keep-alive comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// `GET /v1/watch`.
pub async fn watch(
    State(s): State<Services>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(mut query)) = query else {
        return error_with(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "query: not a valid query string",
        );
    };
    let mut take = |k: &str| query.remove(k).unwrap_or_default();
    let request = pb::WatchRequest {
        subject: take("subject"),
        account: take("account"),
        resource: take("resource"),
    };
    if let Some(unknown) = query.keys().next() {
        return error(&Status::invalid_argument(format!(
            "{unknown}: unknown parameter; expected subject, account or resource"
        )));
    }
    let updates = match s.rate_limiter.watch_quota(Request::new(request)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return error(&e),
    };
    sse(updates.map(|u| Ok::<_, Infallible>(event(u))))
}

/// `events` as a Server-Sent Events response: a keep-alive comment every
/// [`HEARTBEAT`], and no buffering by a proxy in front.
pub(super) fn sse(
    events: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response();
    // nginx buffers proxied responses unless told otherwise.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One update as an event; a failed one as an `error` event with the error
/// body.
fn event(update: Result<pb::QuotaUpdate, Status>) -> Event {
    match update {
        Ok(u) => {
            let cause = pb::quota_update::Cause::try_from(u.cause)
                .unwrap_or(pb::quota_update::Cause::Unspecified)
                .as_str_name()
                .to_ascii_lowercase();
            let data = String::from_utf8(json::encode(&u)).expect("JSON is UTF-8");
            Event::default().event(cause).data(data)
        }
        Err(e) => Event::default().event("error").data(
            serde_json::json!({"code": e.code() as i32, "message": e.message(), "details": []})
                .to_string(),
        ),
    }
}
