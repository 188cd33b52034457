//! The one table from domain errors to gRPC statuses, for every service.
//!
//! Bad input is `INVALID_ARGUMENT` naming the field, an unknown plan
//! `NOT_FOUND`, a server-wide cap reached (watch streams)
//! `RESOURCE_EXHAUSTED`, a reload without a file `FAILED_PRECONDITION`. A counter
//! store that did not answer is `UNAVAILABLE`, so the gateway's own failure
//! policy decides (Envoy's `failure_mode_deny`). A state file failure is
//! `INTERNAL` with a generic message: the details go to the log, never to the
//! client.

use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;

use crate::config::reload::ReloadError;
use crate::error::Error;
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
        log_unavailable(&e);
        Self::unavailable("the counter store is unavailable; see the server log")
    }
}

/// Seconds between two warnings of an unavailable store: during an outage
/// every call fails, and one line per call would flood the log.
const LOG_EVERY: u64 = 10;

/// Warns of `e` at most once every [`LOG_EVERY`] seconds, with the number of
/// calls answered `UNAVAILABLE` since the last warning; the others go to
/// the debug log.
fn log_unavailable(e: &StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    static SINCE: AtomicU64 = AtomicU64::new(0);
    let slot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / LOG_EVERY);
    let failed = SINCE.fetch_add(1, Ordering::Relaxed) + 1;
    if LAST.swap(slot, Ordering::Relaxed) == slot {
        tracing::debug!(error = %e, "counter store unavailable");
    } else {
        SINCE.store(0, Ordering::Relaxed);
        tracing::warn!(error = %e, failed, "counter store unavailable; calls answer UNAVAILABLE (logged at most once every {LOG_EVERY} s)");
    }
}
