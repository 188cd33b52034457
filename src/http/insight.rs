//! Quota insight over HTTP, admin-authenticated as every `/v1/admin/` call:
//!
//! - `GET /v1/admin/top?window=minute|hour|day&by=refusals|consumption&count=N&plan=&class=&limit=`:
//!   `Admin.TopSubjects`, its response in protobuf JSON.
//! - `GET /v1/admin/events[?account=…][&plan=…]`: `Admin.WatchEvents` as
//!   Server-Sent Events, one `threshold` event per crossing, its `id` the
//!   event's, its data the `QuotaEvent` in protobuf JSON on one line.
//! - `GET /v1/admin/usage?from=…[&to=…][&granularity=hour|day|month][&account=…][&format=csv|json|ndjson]`:
//!   `Admin.ExportUsage`; `from` and `to` are RFC 3339 times or dates
//!   (`2027-01-01`, midnight UTC). CSV has a header row; JSON is an array of
//!   `UsageRow`s in protobuf JSON, NDJSON one per line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::response::sse::Event;
use tokio_stream::StreamExt;
use tonic::Status;

use super::admin::authorize;
use super::watch::sse;
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
    sse(s.admin.events(request).map(|e| {
        Ok::<_, Infallible>(match e {
            Ok(e) => Event::default()
                .event("threshold")
                .id(e.id.clone())
                .data(String::from_utf8(json::encode(&e)).expect("JSON is UTF-8")),
            Err(e) => Event::default().event("error").data(e.message()),
        })
    }))
}

/// `GET /v1/admin/usage`.
pub(super) async fn usage(
    State(s): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    let answer = (|| {
        authorize(&s, peer, &headers)?;
        let mut query = parameters(query, &["from", "to", "granularity", "account", "format"])?;
        let mut take = |k: &str| query.remove(k).unwrap_or_default();
        let granularity = match take("granularity").to_ascii_lowercase().as_str() {
            "hour" => pb::Granularity::Hour,
            "" | "day" => pb::Granularity::Day,
            "month" => pb::Granularity::Month,
            other => {
                return Err(Status::invalid_argument(format!(
                    "granularity: expected hour, day or month, got {other:?}"
                )));
            }
        };
        let format = match take("format").to_ascii_lowercase().as_str() {
            "" | "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            other => {
                return Err(Status::invalid_argument(format!(
                    "format: expected csv, json or ndjson, got {other:?}"
                )));
            }
        };
        let from = match take("from") {
            f if f.is_empty() => {
                return Err(Status::invalid_argument(
                    "from: required: the start of the first period (e.g. 2027-01-01)",
                ));
            }
            f => Some(time("from", &f)?),
        };
        let to = match take("to") {
            t if t.is_empty() => None,
            t => Some(time("to", &t)?),
        };
        let request = pb::ExportUsageRequest {
            from,
            to,
            granularity: granularity as i32,
            account: take("account"),
        };
        Ok((format, request))
    })();
    let answer = match answer {
        Ok((format, request)) => s
            .admin
            .usage(&request)
            .await
            .map(|rows| (format, rows))
            .map_err(Status::from),
        Err(e) => Err(e),
    };
    let (format, rows) = match answer {
        Ok(a) => a,
        Err(e) => return error(&e),
    };
    let (content_type, body) = match format {
        Format::Json => {
            let mut out = b"[".to_vec();
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(json::encode(r));
            }
            out.push(b']');
            ("application/json", out)
        }
        Format::Ndjson => {
            let mut out = Vec::new();
            for r in &rows {
                out.extend(json::encode(r));
                out.push(b'\n');
            }
            ("application/x-ndjson", out)
        }
        Format::Csv => ("text/csv; charset=utf-8", csv(&rows).into_bytes()),
    };
    axum::response::Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .unwrap_or_else(|_| error(&Status::internal("response")))
}

/// How `/v1/admin/usage` writes its rows.
#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Json,
    Ndjson,
}

/// A time given as RFC 3339 or as a date (midnight UTC), for `field`.
fn time(field: &str, text: &str) -> Result<prost_types::Timestamp, Status> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(&full)
        .map(prost_types::Timestamp::from)
        .map_err(|e| {
            Status::invalid_argument(format!(
                "{field}: expected an RFC 3339 time or a date (2027-01-01), got {text:?} ({e})"
            ))
        })
}

/// The rows as CSV (RFC 4180), a header first.
fn csv(rows: &[pb::UsageRow]) -> String {
    let mut out =
        String::from("period_start,granularity,account,subject,unit,admitted,recorded,refused\r\n");
    for r in rows {
        let start = r.period_start.unwrap_or_default().to_string();
        let granularity = pb::Granularity::try_from(r.granularity)
            .map_or("", |g| g.as_str_name())
            .trim_start_matches("GRANULARITY_")
            .to_ascii_lowercase();
        let fields = [&start, &granularity, &r.account, &r.subject, &r.unit];
        for f in fields {
            out.push_str(&quoted(f));
            out.push(',');
        }
        out.push_str(&format!("{},{},{}\r\n", r.admitted, r.recorded, r.refused));
    }
    out
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn quoted(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\"")).into()
    } else {
        field.into()
    }
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
