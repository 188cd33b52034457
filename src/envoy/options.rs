//! How `ShouldRateLimit` answers beyond the rules: the reference's
//! environment settings, as flags.

/// The default most descriptors in one request (`--envoy-max-descriptors`).
/// envoyproxy/ratelimit has no cap; Envoy's own route configurations send a
/// handful.
pub const DEFAULT_MAX_DESCRIPTORS: usize = 64;

/// The default most entries in one descriptor (`--envoy-max-entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 16;

/// The longest descriptor key or value, in bytes.
pub const MAX_ENTRY_LEN: usize = 1024;

/// How `ShouldRateLimit` answers beyond the rules; the reference's
/// environment settings, as flags.
#[derive(Debug, Clone)]
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
    /// The most descriptors one request may carry; more is `INVALID_ARGUMENT`.
    pub max_descriptors: usize,
    /// The most entries one descriptor may carry; more is `INVALID_ARGUMENT`.
    pub max_entries: usize,
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

impl Default for Options {
    fn default() -> Self {
        Self {
            response_headers: None,
            shadow_mode: false,
            quota_mode: false,
            dynamic_metadata: false,
            max_descriptors: DEFAULT_MAX_DESCRIPTORS,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
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
