//! `/v1/forward-auth`: a `Consume` decided from the headers a gateway
//! forwards (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth`). Any method is accepted.
//!
//! The running configuration's `http.forward_auth` says where the subject,
//! the account and each cost come from. The method and path come from
//! `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik, Caddy) or
//! `X-Original-Method`/`X-Original-URI` (nginx); the path is normalized
//! as every resource is ([`crate::plans::path`]; 400 when it cannot be
//! safely). Without a forwarded method, the call's own method is the
//! request's (nginx's `auth_request` and Traefik keep it); without a
//! forwarded path the call is refused, never let through: its class is
//! unknown.
//!
//! Only what the gateway says is believed. With `require_header`, a call
//! without the gateway's shared secret is refused (403) before anything else
//! is read, so a client that reaches tollgate directly cannot name its own
//! path, address or subject. A header read for the subject, the account, a
//! cost, the path or the method may appear once: a repeated one is refused
//! (400), never "first wins". A client address must be an IP address, and
//! `X-Forwarded-For` is believed only as far as `trusted_proxies` go: the
//! client is the right-most address that is not a trusted proxy.
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
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use super::Services;
use crate::api::convert;
use crate::engine::Mode;
use crate::engine::clock::SECOND;
use crate::limiter::{Decision, Verdict};
use crate::plans::{Catalog, ForwardAuth, HeaderSource};
use crate::proto::tollgate::v1 as pb;
use crate::sink::Door;
use crate::status;

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
        Err(message) => {
            return code_body(Code::InvalidArgument, &message, Denials::AsIs);
        }
    };
    let Some(config) = &catalog.forward_auth else {
        return failed(
            &Status::not_found(
                "forward auth is not configured: add http.forward_auth to the configuration file",
            ),
            denials,
        );
    };
    if let Some((name, secret)) = &config.require_header
        && !holds_secret(&headers, name, secret)
    {
        return code_body(
            Code::PermissionDenied,
            &format!("{name}: the gateway's shared secret is missing or wrong"),
            denials,
        );
    }
    let request = match limit_request(&catalog, config, &method, &headers, peer) {
        Ok(r) => r,
        Err(Refused::NoSubject) => return missing_subject(&config.subject, denials),
        Err(Refused::Invalid(message)) => {
            return failed(&Status::invalid_argument(message), denials);
        }
    };
    let decided = s
        .rate_limiter
        .decide_request(
            Door::ForwardAuth,
            Mode::Consume,
            &request,
            &s.rate_limiter.http_call(&headers),
        )
        .await;
    match decided {
        Ok(d) => answer(&d, denials),
        Err(e) => failed(&Status::from(e), denials),
    }
}

/// A failed call's answer: its code's name and message, with the status
/// the table gives it, folded into 403 when the gateway asks for denials so
/// (nginx turns any other status into its own 500). Every forward auth body
/// names its code by name: a verdict's or a gRPC code's.
fn failed(status: &Status, denials: Denials) -> Response {
    code_body(status.code(), status.message(), denials)
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

/// Whether the request carries `name: secret`, once; compared in constant
/// time.
fn holds_secret(headers: &HeaderMap, name: &str, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => bool::from(v.as_bytes().ct_eq(secret.as_bytes())),
        _ => false,
    }
}

/// The `LimitRequest` the headers describe.
fn limit_request(
    catalog: &Catalog,
    config: &ForwardAuth,
    own_method: &Method,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<pb::LimitRequest, Refused> {
    let subject = source(config, &config.subject, headers, peer)?.ok_or(Refused::NoSubject)?;
    let account = match &config.account {
        Some(from) => source(config, from, headers, peer)?.unwrap_or_default(),
        None => String::new(),
    };
    let method = first_of(headers, &["x-forwarded-method", "x-original-method"])?
        .map(|(_, m)| m)
        .unwrap_or_else(|| own_method.as_str().to_owned());
    let Some((from, uri)) = first_of(headers, &["x-forwarded-uri", "x-original-uri"])? else {
        return Err(Refused::Invalid(
            "x-forwarded-uri (or x-original-uri) is required: the gateway must say which request to judge".to_owned(),
        ));
    };
    let path = match crate::plans::path::normalize(&uri, catalog.unsafe_paths) {
        Ok(path) => path.into_owned(),
        Err(e) => {
            return Err(Refused::Invalid(format!(
                "{from}: {uri:?} cannot be judged safely: {e} (see paths.unsafe)"
            )));
        }
    };
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
        reserve: None,
    })
}

/// The value `from` names, if the request has it.
fn source(
    config: &ForwardAuth,
    from: &HeaderSource,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<String>, Refused> {
    Ok(match from {
        HeaderSource::Header(name) => text(headers, name)?.filter(|v| !v.trim().is_empty()),
        HeaderSource::Bearer => text(headers, "authorization")?
            .and_then(|v| crate::api::auth::bearer_token(&v).map(str::to_owned)),
        HeaderSource::ClientIp => Some(client_ip(config, headers, peer)?.to_string()),
    })
}

/// The client's address. The peer, unless it is a trusted proxy: then the
/// right-most `X-Forwarded-For` entry (every such header, in order) that is
/// not a trusted proxy; when every entry is one, the left-most, else
/// `X-Real-IP`, else the peer. An entry read that is not an IP address
/// (with or without a port) is refused.
fn client_ip(
    config: &ForwardAuth,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<IpAddr, Refused> {
    let trusted = |ip: &IpAddr| config.trusted_proxies.iter().any(|n| n.contains(ip));
    let peer = peer.ip().to_canonical();
    if !trusted(&peer) {
        return Ok(peer);
    }
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value
            .to_str()
            .map_err(|_| Refused::Invalid("x-forwarded-for: not a valid header value".into()))?;
        chain.extend(value.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    for entry in chain.iter().rev() {
        let ip = ip_of("x-forwarded-for", entry)?;
        if !trusted(&ip) {
            return Ok(ip);
        }
    }
    if let Some(first) = chain.first() {
        return ip_of("x-forwarded-for", first);
    }
    match text(headers, "x-real-ip")?.filter(|v| !v.trim().is_empty()) {
        Some(real) => ip_of("x-real-ip", real.trim()),
        None => Ok(peer),
    }
}

/// An address as proxies write it: `1.2.3.4`, `::1`, `[::1]`, with or
/// without a port.
fn ip_of(header: &str, s: &str) -> Result<IpAddr, Refused> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or(())
                .and_then(|s| s.parse::<IpAddr>().map_err(|_| ()))
        })
        .map(|ip| ip.to_canonical())
        .map_err(|_| Refused::Invalid(format!("{header}: {s:?} is not an IP address")))
}

/// The first of `names` the request carries, with its name.
fn first_of(
    headers: &HeaderMap,
    names: &[&'static str],
) -> Result<Option<(&'static str, String)>, Refused> {
    for name in names {
        if let Some(v) = text(headers, name)?.filter(|v| !v.is_empty()) {
            return Ok(Some((name, v)));
        }
    }
    Ok(None)
}

/// A header's one value as text; one that is not visible ASCII, or a
/// header given twice, is 400.
fn text(headers: &HeaderMap, name: &str) -> Result<Option<String>, Refused> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refused::Invalid(format!(
            "{name}: given more than once; tollgate reads one value"
        )));
    }
    v.to_str()
        .map(|v| Some(v.to_owned()))
        .map_err(|_| Refused::Invalid(format!("{name}: not a valid header value")))
}

fn missing_subject(from: &HeaderSource, denials: Denials) -> Response {
    let (message, challenge) = match from {
        HeaderSource::Header(name) => (format!("{name}: header required"), false),
        HeaderSource::Bearer => ("authorization: Bearer <token> required".to_owned(), true),
        HeaderSource::ClientIp => ("the client address is unknown".to_owned(), false),
    };
    let mut response = code_body(Code::Unauthenticated, &message, denials);
    if challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The decision as the gateway needs it, denials as it asked.
fn answer(d: &Decision, denials: Denials) -> Response {
    let mut response = match status::verdict_status(d.verdict) {
        None => StatusCode::OK.into_response(),
        Some(http) => {
            // Whole seconds, rounded up, at least one.
            let wait = (d.verdict == Verdict::RateLimited)
                .then(|| d.retry_after.map_or(1, |n| n.div_ceil(SECOND).max(1)));
            let name = convert::verdict(d.verdict).as_str_name();
            verdict_body(http, name, &d.reason, wait, denials)
        }
    };
    let out = response.headers_mut();
    for (name, value) in &d.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(*name),
            HeaderValue::try_from(value.as_str()),
        ) {
            out.insert(name, value);
        }
    }
    if d.verdict == Verdict::RateLimited && !out.contains_key(header::RETRY_AFTER) {
        let wait = d.retry_after.map_or(1, |n| (n / SECOND).max(1));
        out.insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

/// A refusal that is a gRPC code: its name, and the status the table gives.
fn code_body(code: Code, message: &str, denials: Denials) -> Response {
    verdict_body(
        status::http_status(code),
        status::code_name(code),
        message,
        None,
        denials,
    )
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
    folded(status, body)
}

/// `body` answered as 403 (401 stays), with `status` and the body, escaped
/// to ASCII, in headers for the gateway to answer with.
fn folded(status: StatusCode, body: String) -> Response {
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
