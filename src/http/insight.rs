//! Quota insight over HTTP, admin-authenticated as every `/v1/admin/` call:
//!
//! - `GET /v1/admin/top?window=minute|hour|day&by=refusals|consumption&count=N&plan=&class=&limit=`:
//!   `Admin.TopSubjects`, its response in protobuf JSON.
//! - `GET /v1/admin/events[?account=…][&plan=…]`: `Admin.WatchEvents` as
//!   Server-Sent Events, one `threshold` event per crossing, its `id` the
//!   event's, its data the `QuotaEvent` in protobuf JSON on one line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;
use tonic::Status;

use super::admin::authorize;
use super::watch::HEARTBEAT;
use super::{Services, error, json};
use crate::proto::tollgate::v1 as pb;

type QueryResult = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

/// `GET /v1/admin/top`.
pub(super) async fn top(
    State(s): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    let answer = (|| {
        authorize(&s, peer, &headers)?;
        let mut query = parameters(query, &["window", "by", "count", "plan", "class", "limit"])?;
        let mut take = |k: &str| query.remove(k).unwrap_or_default();
        let window = match take("window").to_ascii_lowercase().as_str() {
            "" | "hour" => pb::TopWindow::Hour,
            "minute" => pb::TopWindow::Minute,
            "day" => pb::TopWindow::Day,
            other => {
                return Err(Status::invalid_argument(format!(
                    "window: expected minute, hour or day, got {other:?}"
                )));
            }
        };
        let by = match take("by").to_ascii_lowercase().as_str() {
            "" | "refusals" => pb::TopBy::Refusals,
            "consumption" => pb::TopBy::Consumption,
            other => {
                return Err(Status::invalid_argument(format!(
                    "by: expected refusals or consumption, got {other:?}"
                )));
            }
        };
        let count = match take("count") {
            c if c.is_empty() => 0,
            c => c.parse().map_err(|_| {
                Status::invalid_argument(format!("count: expected a whole number, got {c:?}"))
            })?,
        };
        let request = pb::TopSubjectsRequest {
            window: window as i32,
            by: by as i32,
            count,
            plan: take("plan"),
            class: take("class"),
            limit: take("limit"),
        };
        s.admin.top(&request).map_err(Status::from)
    })();
    match answer {
        Ok(r) => super::json_response(StatusCode::OK, json::encode(&r)),
        Err(e) => error(&e),
    }
}

/// `GET /v1/admin/events`.
pub(super) async fn events(
    State(s): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    let request = (|| {
        authorize(&s, peer, &headers)?;
        let mut query = parameters(query, &["account", "plan"])?;
        let mut take = |k: &str| query.remove(k).unwrap_or_default();
        Ok::<_, Status>(pb::WatchEventsRequest {
            account: take("account"),
            plan: take("plan"),
        })
    })();
    let request = match request {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let events = s.admin.events(request).map(|e| {
        Ok::<_, Infallible>(match e {
            Ok(e) => Event::default()
                .event("threshold")
                .id(e.id.clone())
                .data(String::from_utf8(json::encode(&e)).expect("JSON is UTF-8")),
            Err(e) => Event::default().event("error").data(e.message()),
        })
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The query's parameters, refusing any not in `known`.
fn parameters(query: QueryResult, known: &[&str]) -> Result<HashMap<String, String>, Status> {
    let Ok(Query(query)) = query else {
        return Err(Status::invalid_argument("query: not a valid query string"));
    };
    if let Some(unknown) = query.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Status::invalid_argument(format!(
            "{unknown}: unknown parameter; expected {}",
            known.join(", ")
        )));
    }
    Ok(query)
}
