//! How `ShouldRateLimit` answers beyond the rules: the reference's
//! environment settings, as flags.

/// How `ShouldRateLimit` answers beyond the rules; the reference's
/// environment settings, as flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Add `RateLimit-Limit`, `-Remaining` and `-Reset` (these names, or
    /// others) to the response, from the most constraining descriptor.
    pub response_headers: Option<HeaderNames>,
    /// Never answer OVER_LIMIT overall (statuses still tell).
    pub shadow_mode: bool,
    /// Every descriptor is in quota mode.
    pub quota_mode: bool,
    /// Return the request and the passed descriptors' metadata as dynamic metadata.
    pub dynamic_metadata: bool,
}

/// The names of the optional response headers.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// The limit.
    pub limit: String,
    /// What is left.
    pub remaining: String,
    /// Seconds until it resets.
    pub reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}
