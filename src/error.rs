//! The errors a decision or an admin change can end in, by what the caller
//! should do about them. [`crate::status`] maps each onto a gRPC status, in
//! one table.

use crate::config::reload::ReloadError;
use crate::storage::StoreError;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is wrong; the message names it.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, as the caller spells it (`descriptors[2].limit.unit`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A field names something that does not exist (a plan).
    #[error("{field}: {problem}")]
    NotFound {
        /// The field.
        field: String,
        /// What was not found.
        problem: String,
    },
    /// A server-wide cap is reached (watch streams); the message names the
    /// flag that raises it. Retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A feature this server was started without; the message names the
    /// flag that turns it on.
    #[error("{0}")]
    Off(&'static str),
    /// A request envoyproxy/ratelimit refuses with a plain error, answered
    /// word for word as it does (gRPC `UNKNOWN`).
    #[error("{0}")]
    Refused(&'static str),
    /// The counter store did not answer: transient.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An admin change could not be stored.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A reload did not happen.
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

// === impl Error ===

impl Error {
    /// `field` is wrong: `problem`.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// `field` names nothing known: `problem`.
    pub fn not_found(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::NotFound {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Fails with [`Error::Invalid`] when `value` is longer than `max` bytes.
    pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), Self> {
        if value.len() > max {
            return Err(Self::invalid(field, format!("longer than {max} bytes")));
        }
        Ok(())
    }

    /// Fails with [`Error::Invalid`] when `value` is blank.
    pub fn required(field: &str, value: &str) -> Result<(), Self> {
        if value.trim().is_empty() {
            return Err(Self::invalid(field, "must not be empty"));
        }
        Ok(())
    }
}
