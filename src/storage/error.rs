//! Why the counter store did not answer: one error for the seam
//! ([`super::Counters`]), whichever store is behind it, saying whether the
//! failure policy applies ([`StoreError::is_transient`]). Only Redis fails
//! today; the in-memory store always answers.

use std::sync::Arc;
use std::time::Duration;

/// Why the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the store timeout, after the call was sent: the
    /// script may still have run before its deadline (and counted).
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The decision's deadline (its caller's `grpc-timeout`, or the most a
    /// decision waits its turn) passed before Redis was asked: nothing was
    /// counted. Not a store failure: the failure policy does not apply.
    #[error("the decision's deadline passed before redis was asked")]
    Expired,
    /// The script ran after the decision's deadline (Redis was slow or
    /// paused): it counted nothing.
    #[error("redis ran the decision after its deadline; nothing was counted")]
    Late,
    /// Redis answered with an error, or the connection failed (in the
    /// message, so not also a `source()` that would print it twice).
    #[error("redis: {0}")]
    Redis(::redis::RedisError),
    /// The URL is not one tollgate can use.
    #[error("{0}")]
    Url(String),
    /// The task that sends decisions to Redis stopped (the runtime is
    /// shutting down).
    #[error("the redis sender stopped")]
    Stopped,
    /// The call that carried this decision with others failed.
    #[error(transparent)]
    Batch(Arc<StoreError>),
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

impl StoreError {
    /// Whether Redis itself failed (unreachable, slow, refusing): the
    /// failure policy applies. A decision that expired in tollgate's own
    /// queue is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Batch(e) => e.is_transient(),
            Self::Expired | Self::Url(_) => false,
            Self::Timeout(_) | Self::Late | Self::Redis(_) | Self::Stopped => true,
        }
    }

    /// Whether Redis refuses writes (out of memory, a read-only replica, a
    /// disk it cannot write, an ACL): every decision that counts fails
    /// until it stops.
    pub fn refuses_writes(&self) -> bool {
        match self {
            Self::Batch(e) => e.refuses_writes(),
            Self::Redis(e) => matches!(
                e.code(),
                Some("OOM" | "READONLY" | "MISCONF" | "NOREPLICAS" | "NOPERM")
            ),
            _ => false,
        }
    }

    /// Whether the script may have run, and counted, though the caller got
    /// this error: its reply was late.
    pub fn maybe_counted(&self) -> bool {
        match self {
            Self::Batch(e) => e.maybe_counted(),
            Self::Timeout(_) => true,
            // The client's own timeout, or a connection lost mid-call.
            Self::Redis(e) => e.is_timeout() || e.is_connection_dropped(),
            _ => false,
        }
    }
}
