//! Bearer-token authentication for the admin API: one interceptor.
//!
//! The token is compared in constant time. Without a configured token the
//! admin API refuses everything, with a message saying how to enable it.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The admin token check.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Arc<[u8]>>,
}

// === impl AdminAuth ===

impl AdminAuth {
    /// Accepts `authorization: Bearer <token>`; `None` refuses every call.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.into_bytes())),
        }
    }

    /// The interceptor.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Err(Status::permission_denied(
                "the admin API is disabled: start tollgate with TOLLGATE_ADMIN_TOKEN set or --admin-token-file FILE",
            ));
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(p) if bool::from(p.as_bytes().ct_eq(token)) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid admin token")),
            None => Err(Status::unauthenticated(
                "authorization: Bearer <token> required",
            )),
        }
    }
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("AdminAuth")
            .field("enabled", &self.token.is_some())
            .finish()
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1). `None` for another scheme or no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
