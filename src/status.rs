//! The one table from domain errors to gRPC statuses, for every service.
//!
//! Bad input is `INVALID_ARGUMENT` naming the field, an unknown plan
//! `NOT_FOUND`, a server-wide cap reached (watch streams)
//! `RESOURCE_EXHAUSTED`, a reload without a file `FAILED_PRECONDITION`. A counter
//! store that did not answer is `UNAVAILABLE`, so the gateway's own failure
//! policy decides (Envoy's `failure_mode_deny`). A state file failure is
//! `INTERNAL` with a generic message: the details go to the log, never to the
//! client.

use std::time::Duration;

use tonic::Status;

use crate::config::reload::ReloadError;
use crate::error::Error;
use crate::log_every::LogEvery;
use crate::state;
use crate::storage::StoreError;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid { .. } => Self::invalid_argument(e.to_string()),
            Error::NotFound { .. } => Self::not_found(e.to_string()),
            Error::ResourceExhausted(message) => Self::resource_exhausted(message),
            Error::Refused(message) => Self::unknown(message),
            Error::Store(e) => e.into(),
            Error::State(state::Error::Shared(e)) => e.into(),
            Error::State(
                e @ (state::Error::File { .. }
                | state::Error::Locked { .. }
                | state::Error::Damaged { .. }),
            ) => {
                tracing::error!(error = %e, "admin call failed");
                Self::internal("the change could not be stored; see the server log")
            }
            Error::Reload(e @ ReloadError::NoFile) => Self::failed_precondition(e.to_string()),
            Error::Reload(ReloadError::Invalid(e)) => Self::invalid_argument(e.to_string()),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        if matches!(e, StoreError::Expired) {
            return Self::deadline_exceeded(e.to_string());
        }
        log_unavailable(&e);
        Self::unavailable("the counter store is unavailable; see the server log")
    }
}

/// Warns of `e` at most once every 10 s, with the number of calls answered
/// `UNAVAILABLE` the last warning did not show; the others go to the debug
/// log. During an outage every call fails, and one line per call would flood
/// the log.
fn log_unavailable(e: &StoreError) {
    static THROTTLE: LogEvery = LogEvery::new(Duration::from_secs(10));
    match THROTTLE.ready() {
        Some(held) => {
            tracing::warn!(error = %e, also_failed = held, "counter store unavailable; calls answer UNAVAILABLE (logged at most once every {:?})", THROTTLE.every())
        }
        None => tracing::debug!(error = %e, "counter store unavailable"),
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
