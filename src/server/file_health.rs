//! The state file's health: `tollgate.state` is NOT_SERVING from a failed
//! write (a full disk) until a write succeeds, so admin changes that cannot
//! be stored show before anyone calls.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::limiter::Limiter;

/// The health service name that reports the state file.
pub const STATE_HEALTH: &str = "tollgate.state";

/// Follows the state's health into `health` until `stopping`.
pub async fn watch_health(
    limiter: Arc<Limiter>,
    health: HealthReporter,
    stopping: CancellationToken,
) {
    let mut writable = limiter.state().health();
    loop {
        let status = if *writable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(STATE_HEALTH, status).await;
        tokio::select! {
            changed = writable.changed() => if changed.is_err() { return },
            () = stopping.cancelled() => return,
        }
    }
}
