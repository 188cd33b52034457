//! The one table from domain errors to gRPC statuses, for every service.
//!
//! Bad input is `INVALID_ARGUMENT` naming the field, an unknown plan
//! `NOT_FOUND`, a server-wide cap reached (watch streams)
//! `RESOURCE_EXHAUSTED`, a reload without a file `FAILED_PRECONDITION`. A counter
//! store that did not answer is `UNAVAILABLE`, so the gateway's own failure
//! policy decides (Envoy's `failure_mode_deny`). A state file failure is
//! `INTERNAL` with a generic message: the details go to the log, never to the
//! client.

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
            Error::State(e @ state::Error::File { .. }) => {
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
        tracing::warn!(error = %e, "counter store unavailable");
        Self::unavailable("the counter store is unavailable; see the server log")
    }
}
