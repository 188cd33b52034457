//! `/v1/forward-auth`: a `Consume` decided from the headers a gateway
//! forwards (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth`). Any method is accepted.
//!
//! The running configuration's `http.forward_auth` says where the subject,
//! the account and each cost come from. The method and path come from
//! `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik, Caddy) or
//! `X-Original-Method`/`X-Original-URI` (nginx); the query string is not
//! part of the resource. Without a forwarded method, the call's own method
//! is the request's (nginx's `auth_request` and Traefik keep it); without a
//! forwarded path the call is refused, never let through: its class is
//! unknown.
//!
//! The answer, for the gateway:
//! - 200, empty, with the decision's rate-limit headers to copy onto the
//!   response;
//! - 429 with `Retry-After`, those headers and
//!   `{"code":"RATE_LIMITED","message":…,"retry_after":<seconds>}`;
//! - 403 `{"code":"NOT_IN_PLAN","message":<the plan's message>}`;
//! - 413 `{"code":"TOO_LARGE",…}`: the cost can never fit;
//! - 401 when the subject is missing (with `WWW-Authenticate: Bearer` when
//!   it is the bearer token);
//! - 400 for a missing path or a bad cost header, 404 when the
//!   configuration has no `http.forward_auth`, and the error table's status
//!   when the call fails (503 when the counter store is down).
//!
//! nginx's `auth_request` passes on only 2xx, 401 and 403 (anything else
//! becomes its own 500), and cannot read the subrequest's body. A gateway
//! that sends `X-Tollgate-Deny-Status: 403` therefore gets every denial
//! other than 401 as 403, with the status it stands for in
//! `X-Tollgate-Status` and the JSON body, escaped to ASCII, in
//! `X-Tollgate-Body` (401 keeps its status and gains both headers). Only the
//! status moves; the verdict, the counters and the other headers are those
//! of the default answer.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Request, Status};

use super::{Services, error, error_with};
use crate::plans::{ForwardAuth, HeaderSource};
use crate::proto::tollgate::v1 as pb;
use pb::rate_limiter_server::RateLimiter;

/// The request header asking for denials as 403, for gateways that pass on
/// only 2xx, 401 and 403 (nginx's `auth_request`).
const DENY_STATUS: &str = "x-tollgate-deny-status";

/// The status a denial answered as 403 stands for.
const DENIED_STATUS: &str = "x-tollgate-status";

/// The JSON body of a denial answered as 403, escaped to ASCII.
const DENIED_BODY: &str = "x-tollgate-body";

/// `/v1/forward-auth`.
pub async fn forward_auth(
    State(s): State<Services>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let catalog = s.limiter.catalog();
    let denials = match denials_of(&headers) {
        Ok(d) => d,
        Err(message) => return error(&Status::invalid_argument(message)),
    };
    let Some(config) = &catalog.forward_auth else {
        return error_with(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "forward auth is not configured: add http.forward_auth to the configuration file",
        );
    };
    let request = match limit_request(config, &method, &headers, peer) {
        Ok(r) => r,
        Err(Refused::NoSubject) => return missing_subject(&config.subject, denials),
        Err(Refused::Invalid(message)) => return error(&Status::invalid_argument(message)),
    };
    match RateLimiter::consume(&*s.rate_limiter, Request::new(request)).await {
        Ok(d) => answer(&d.into_inner(), denials),
        Err(e) => error(&e),
    }
}

/// How the gateway wants denials answered (`X-Tollgate-Deny-Status`).
fn denials_of(headers: &HeaderMap) -> Result<Denials, String> {
    match headers.get(DENY_STATUS) {
        None => Ok(Denials::AsIs),
        Some(v) if v.as_bytes().trim_ascii() == b"403" => Ok(Denials::As403),
        Some(v) => Err(format!(
            "{DENY_STATUS}: only 403 is supported, got {:?}",
            String::from_utf8_lossy(v.as_bytes())
        )),
    }
}

/// How denials are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Denials {
    /// With their own status: 429, 403, 413, 401.
    AsIs,
    /// As 403 (401 stays), the status and body also in headers.
    As403,
}

/// Why the headers do not describe a request.
#[derive(Debug)]
enum Refused {
    /// The subject's source is missing or malformed.
    NoSubject,
    /// A header is wrong; the message names it.
    Invalid(String),
}

/// The `LimitRequest` the headers describe.
fn limit_request(
    config: &ForwardAuth,
    own_method: &Method,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<pb::LimitRequest, Refused> {
    let subject = source(&config.subject, headers, peer)?.ok_or(Refused::NoSubject)?;
    let account = match &config.account {
        Some(from) => source(from, headers, peer)?.unwrap_or_default(),
        None => String::new(),
    };
    let method = first_of(headers, &["x-forwarded-method", "x-original-method"])?
        .unwrap_or_else(|| own_method.as_str().to_owned());
    let Some(uri) = first_of(headers, &["x-forwarded-uri", "x-original-uri"])? else {
        return Err(Refused::Invalid(
            "x-forwarded-uri (or x-original-uri) is required: the gateway must say which request to judge".to_owned(),
        ));
    };
    let path = uri.split(['?', '#']).next().unwrap_or_default().to_owned();
    let mut cost = HashMap::new();
    for (unit, name) in &config.cost {
        if let Some(v) = text(headers, name)? {
            let n = v.trim().parse::<u64>().map_err(|_| {
                Refused::Invalid(format!(
                    "{name}: expected a non-negative integer cost in {unit}, got {v:?}"
                ))
            })?;
            cost.insert(unit.clone(), n);
        }
    }
    Ok(pb::LimitRequest {
        subject,
        account,
        resource: path,
        cost,
        attributes: HashMap::from([("method".to_owned(), method.to_ascii_uppercase())]),
    })
}

/// The value `from` names, if the request has it.
fn source(
    from: &HeaderSource,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<String>, Refused> {
    Ok(match from {
        HeaderSource::Header(name) => text(headers, name)?.filter(|v| !v.trim().is_empty()),
        HeaderSource::Bearer => text(headers, "authorization")?.and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        }),
        HeaderSource::ClientIp => Some(client_ip(headers, peer)?),
    })
}

/// The first `X-Forwarded-For` entry, else `X-Real-IP`, else the peer.
fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> Result<String, Refused> {
    let forwarded = text(headers, "x-forwarded-for")?
        .and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty());
    let real = || text(headers, "x-real-ip").map(|v| v.map(|s| s.trim().to_owned()));
    Ok(match forwarded {
        Some(ip) => ip,
        None => real()?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| peer.ip().to_string()),
    })
}

/// The first of `names` the request carries.
fn first_of(headers: &HeaderMap, names: &[&str]) -> Result<Option<String>, Refused> {
    for name in names {
        if let Some(v) = text(headers, name)?.filter(|v| !v.is_empty()) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// A header's value as text; one that is not visible ASCII is 400.
fn text(headers: &HeaderMap, name: &str) -> Result<Option<String>, Refused> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Refused::Invalid(format!("{name}: not a valid header value")))
        })
        .transpose()
}

fn missing_subject(from: &HeaderSource, denials: Denials) -> Response {
    let (message, challenge) = match from {
        HeaderSource::Header(name) => (format!("{name}: header required"), false),
        HeaderSource::Bearer => ("authorization: Bearer <token> required".to_owned(), true),
        HeaderSource::ClientIp => ("the client address is unknown".to_owned(), false),
    };
    let mut response = verdict_body(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        &message,
        None,
        denials,
    );
    if challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The decision as the gateway needs it, denials as it asked.
fn answer(d: &pb::Decision, denials: Denials) -> Response {
    let verdict = pb::Verdict::try_from(d.verdict).unwrap_or(pb::Verdict::Unspecified);
    let mut response = match verdict {
        pb::Verdict::Allowed => StatusCode::OK.into_response(),
        pb::Verdict::RateLimited => {
            let wait = d.retry_after.as_ref().map_or(1, |r| {
                let secs = u64::try_from(r.seconds).unwrap_or(0);
                (secs + u64::from(r.nanos > 0)).max(1)
            });
            verdict_body(
                StatusCode::TOO_MANY_REQUESTS,
                verdict.as_str_name(),
                &d.reason,
                Some(wait),
                denials,
            )
        }
        pb::Verdict::NotInPlan => verdict_body(
            StatusCode::FORBIDDEN,
            verdict.as_str_name(),
            &d.reason,
            None,
            denials,
        ),
        pb::Verdict::TooLarge => verdict_body(
            StatusCode::PAYLOAD_TOO_LARGE,
            verdict.as_str_name(),
            &d.reason,
            None,
            denials,
        ),
        pb::Verdict::Unspecified => {
            return error(&Status::internal("the decision has no verdict"));
        }
    };
    let out = response.headers_mut();
    for (name, value) in &d.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            out.insert(name, value);
        }
    }
    if verdict == pb::Verdict::RateLimited && !out.contains_key(header::RETRY_AFTER) {
        let wait = d.retry_after.as_ref().map_or(1, |r| r.seconds.max(1));
        out.insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

/// `{"code": <what>, "message": …[, "retry_after": N]}`, with `status` or
/// as `denials` says.
fn verdict_body(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
    denials: Denials,
) -> Response {
    let mut body = serde_json::json!({ "code": code, "message": message });
    if let Some(wait) = retry_after {
        body["retry_after"] = wait.into();
    }
    let body = body.to_string();
    if denials == Denials::AsIs {
        return super::json_response(status, body.into_bytes());
    }
    let sent = if status == StatusCode::UNAUTHORIZED {
        status
    } else {
        StatusCode::FORBIDDEN
    };
    let ascii = ascii_json(&body);
    let mut response = super::json_response(sent, body.into_bytes());
    let headers = response.headers_mut();
    headers.insert(DENIED_STATUS, HeaderValue::from(status.as_u16()));
    if let Ok(v) = HeaderValue::try_from(ascii) {
        headers.insert(DENIED_BODY, v);
    }
    response
}

/// `json` with every character a header cannot carry as `\uXXXX`. JSON
/// text escapes control characters and quotes already, so what is left
/// stands inside strings, where the escape means the same.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_json_escapes_what_a_header_cannot_carry() {
        let json = serde_json::json!({ "message": "Plan «pro» requis 🚀\u{7f}" }).to_string();
        let ascii = ascii_json(&json);
        assert!(HeaderValue::try_from(ascii.as_str()).is_ok(), "{ascii}");
        let back: serde_json::Value = serde_json::from_str(&ascii).expect("still JSON");
        assert_eq!(back["message"], "Plan «pro» requis 🚀\u{7f}");
    }
}
