//! The one table of what every error answers, on both protocols: each
//! domain error maps once to a gRPC code ([`code_of`]), and each code to the
//! HTTP status that carries it ([`http_status`], grpc-gateway's mapping), side
//! by side here, as linkerd2-proxy keeps both in `errors/respond.rs`. gRPC,
//! HTTP `/v1`, forward auth and the Envoy service all read it.
//!
//! Bad input is `INVALID_ARGUMENT` naming the field, an unknown plan
//! `NOT_FOUND`, a server-wide cap reached (watch streams)
//! `RESOURCE_EXHAUSTED`, a reload without a file `FAILED_PRECONDITION`. A counter
//! store that did not answer is `UNAVAILABLE`, so the gateway's own failure
//! policy decides (Envoy's `failure_mode_deny`). A state file failure is
//! `INTERNAL` with a generic message: the details go to the log (where the
//! failure is met, never here: converting logs nothing), never to the client.

use http::StatusCode;
use tonic::{Code, Status};

use crate::config::reload::ReloadError;
use crate::error::Error;
use crate::state;
use crate::storage::StoreError;

/// The gRPC code of `e`.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::Invalid { .. } => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Off(_) => Code::FailedPrecondition,
        Error::Refused(_) => Code::Unknown,
        Error::Store(e) | Error::State(state::StateError::Shared(e)) => store_code(e),
        Error::State(_) => Code::Internal,
        Error::Reload(ReloadError::NoFile) => Code::FailedPrecondition,
        Error::Reload(ReloadError::Invalid(_)) => Code::InvalidArgument,
    }
}

/// The gRPC code of a counter store that did not answer.
fn store_code(e: &StoreError) -> Code {
    if matches!(e, StoreError::Expired) {
        Code::DeadlineExceeded
    } else {
        Code::Unavailable
    }
}

/// The HTTP status a gRPC code answers as: grpc-gateway's mapping, so HTTP
/// clients see what gRPC clients see.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as error bodies
/// that name codes by name spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The HTTP status a refusing verdict answers as, where a verdict is an
/// HTTP answer (forward auth, `/json`): 429, 403, 413; `None` for allowed.
pub fn verdict_status(verdict: crate::limiter::Verdict) -> Option<StatusCode> {
    use crate::limiter::Verdict;
    match verdict {
        Verdict::Allowed => None,
        Verdict::RateLimited => Some(StatusCode::TOO_MANY_REQUESTS),
        Verdict::NotInPlan => Some(StatusCode::FORBIDDEN),
        Verdict::TooLarge => Some(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

/// What the client is told of `e`: the error itself, except where its
/// details belong in the log only.
fn message_of(e: &Error) -> String {
    match e {
        Error::Store(e) | Error::State(state::StateError::Shared(e)) => store_message(e),
        Error::State(_) => "the change could not be stored; see the server log".to_owned(),
        e => e.to_string(),
    }
}

fn store_message(e: &StoreError) -> String {
    if matches!(e, StoreError::Expired) {
        e.to_string()
    } else {
        "the counter store is unavailable; see the server log".to_owned()
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Self::new(code_of(&e), message_of(&e))
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        Self::new(store_code(&e), store_message(&e))
    }
}

/// When the caller stops waiting: its `grpc-timeout` (gRPC over HTTP/2:
/// an integer of at most 8 digits and a unit, `H`, `M`, `S`, `m`, `u` or
/// `n`), from now. Envoy sends one with every rate limit call.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(n.checked_mul(3600)?),
        "M" => std::time::Duration::from_secs(n.checked_mul(60)?),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    tokio::time::Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_timeout_as_grpc_writes_it() {
        let within = |text: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", text.parse().expect("ascii"));
            deadline(&m).map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
        };
        let close = |got: Option<std::time::Duration>, want: u64| {
            got.is_some_and(|d| {
                d.as_millis() <= u128::from(want) && d.as_millis() + 1000 >= u128::from(want)
            })
        };
        assert!(close(within("250m"), 250));
        assert!(close(within("2S"), 2000));
        assert!(close(within("1M"), 60_000));
        assert!(within("5000u").is_some());
        for bad in ["", "m", "250", "123456789m", "10x", "-1S"] {
            assert_eq!(within(bad), None, "{bad:?}");
        }
    }
}
