//! OpenTelemetry traces over OTLP/gRPC: the exporter, the W3C parent of a
//! request, and one span per decision.
//!
//! Off unless an endpoint is given (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`).
//! When off there is no [`Traces`] at all: the doors do not even read a
//! `traceparent` ([`crate::sink::Sink::parent`]) and the limiter does not
//! time its store, so the decision path costs what it cost before.
//!
//! Sampling is parent-based: a request whose `traceparent` is sampled is
//! always traced, one whose parent is not sampled never is, and a request
//! without a parent is traced with the probability `OTEL_TRACES_SAMPLER_ARG`
//! (default 1). Spans are batched and exported off the decision path (the
//! SDK's batch processor, tuned by the standard `OTEL_BSP_*` variables); a
//! full queue drops spans rather than waiting.

use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// The `service.name` of every span.
pub const SERVICE_NAME: &str = "tollgate";

/// How long the last export may take at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Where spans go and how many are kept, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/gRPC endpoint, with its scheme.
    pub endpoint: String,
    /// The probability a request without a parent is traced, 0 to 1.
    pub ratio: f64,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// `OTEL_TRACES_SAMPLER_ARG` (or the ratio given) is not a number in 0–1.
    #[error("{ENV_SAMPLER_ARG}: {0}")]
    Ratio(String),
    /// The exporter could not be built (an endpoint that is not a URL).
    #[error("--otlp-endpoint {endpoint}: {message}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What was wrong with it.
        message: String,
    },
}

/// The trace a request belongs to, from its W3C `traceparent` (and
/// `tracestate`) when it sent a valid one, and whether its decision's span
/// is sampled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parent {
    context: Option<SpanContext>,
    sampled: bool,
}

/// A running exporter and the tracer decisions record their spans with.
/// Call [`Traces::shutdown`] (off the async threads: it blocks) to export
/// what is still queued; dropping the last handle shuts it down too, and
/// blocks likewise.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    settings: Settings,
}

/// One decision's span, as recorded.
pub struct DecisionSpan<'a> {
    /// When the decision began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Whether it was refused (the span's status is then an error).
    pub refused: bool,
    /// Its attributes, built only when the span is sampled.
    pub attributes: &'a dyn Fn() -> Vec<KeyValue>,
}

// === impl Settings ===

impl Settings {
    /// The settings from `endpoint` (the flag) and the environment; `None`
    /// when no endpoint is set anywhere (tracing off).
    pub fn from_env(endpoint: Option<&str>) -> Result<Option<Self>, OtelError> {
        Self::resolve(endpoint, |k| std::env::var(k).ok())
    }

    fn resolve(
        endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtelError> {
        let set = |s: String| {
            let s = s.trim().to_owned();
            (!s.is_empty()).then_some(s)
        };
        let Some(endpoint) = endpoint
            .map(str::to_owned)
            .and_then(set)
            .or_else(|| env(ENV_TRACES_ENDPOINT).and_then(set))
            .or_else(|| env(ENV_ENDPOINT).and_then(set))
        else {
            return Ok(None);
        };
        // A bare `host:port`, as collectors' docs often write it.
        let endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("http://{endpoint}")
        };
        let ratio = match env(ENV_SAMPLER_ARG).and_then(set) {
            None => 1.0,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| OtelError::Ratio(format!("{s:?} is not a ratio from 0 to 1")))?,
        };
        Ok(Some(Self { endpoint, ratio }))
    }
}

// === impl Parent ===

impl Parent {
    /// No parent, and no span.
    pub const NONE: Self = Self {
        context: None,
        sampled: false,
    };

    /// The W3C trace context in `headers` (gRPC metadata are headers too),
    /// sampled as its flags say; none when absent or malformed.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        if !headers.contains_key("traceparent") {
            return Self::NONE;
        }
        let context = TraceContextPropagator::new().extract(&Headers(headers));
        let span = context.span().span_context().clone();
        if !span.is_valid() {
            return Self::NONE;
        }
        Self {
            sampled: span.is_sampled(),
            context: Some(span),
        }
    }

    /// Its span context, when there is one.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.context.as_ref()
    }

    /// Whether the decision's span is recorded.
    pub fn is_sampled(&self) -> bool {
        self.sampled
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

// === impl Traces ===

impl Traces {
    /// Starts exporting to `settings.endpoint`. Must run inside the Tokio
    /// runtime the exporter's connection will live on.
    pub fn start(settings: Settings) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .build()
            .map_err(|e| OtelError::Exporter {
                endpoint: settings.endpoint.clone(),
                message: e.to_string(),
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // Sampled already ([`Traces::parent`]): only sampled spans are
            // started.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        Ok(Self {
            provider,
            tracer,
            settings,
        })
    }

    /// Where it exports, and its ratio.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The trace of a request with `headers`, sampled as its parent is;
    /// one without a parent is sampled with the configured probability.
    /// Sampling here, before the decision, leaves an unsampled decision
    /// nothing more to pay for its span.
    pub fn parent(&self, headers: &http::HeaderMap) -> Parent {
        self.again(&Parent::from_headers(headers))
    }

    /// The trace of one more decision of a call whose trace is `call`'s (a
    /// message of a `Decide` stream): the call's parent's when it has one,
    /// else sampled anew, so a long stream is sampled decision by decision.
    pub fn again(&self, call: &Parent) -> Parent {
        match call.context {
            Some(_) => call.clone(),
            None => Parent {
                context: None,
                sampled: fastrand::f64() < self.settings.ratio,
            },
        }
    }

    /// Records one span named `decision` (kind server) under `parent`, if
    /// it is sampled.
    pub fn record(&self, parent: &Parent, span: &DecisionSpan<'_>) {
        if !parent.sampled {
            return;
        }
        let context = match &parent.context {
            Some(remote) => Context::new().with_remote_span_context(remote.clone()),
            None => Context::new(),
        };
        let mut recorded = self
            .tracer
            .span_builder("decision")
            .with_kind(SpanKind::Server)
            .with_start_time(span.start)
            .start_with_context(&self.tracer, &context);
        if !recorded.is_recording() {
            return;
        }
        recorded.set_attributes((span.attributes)());
        if span.refused {
            recorded.set_status(opentelemetry::trace::Status::error("refused"));
        }
        recorded.end_with_timestamp(span.end);
    }

    /// Exports what is queued, waiting at most five seconds, and stops.
    /// Blocks its thread: from async code, run it on the blocking pool.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "the last spans were not exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_endpoint_anywhere_is_off() {
        assert_eq!(Settings::resolve(None, env(&[])).expect("valid"), None);
        assert_eq!(Settings::resolve(Some(" "), env(&[])).expect("valid"), None);
    }

    #[test]
    fn the_flag_beats_the_environment_and_a_bare_address_gets_http() {
        let s = Settings::resolve(Some("collector:4317"), env(&[(ENV_ENDPOINT, "http://x:1")]))
            .expect("valid")
            .expect("valid");
        assert_eq!(s.endpoint, "http://collector:4317");
        assert_eq!(s.ratio, 1.0);
    }

    #[test]
    fn the_traces_endpoint_beats_the_general_one_and_the_ratio_is_read() {
        let s = Settings::resolve(
            None,
            env(&[
                (ENV_ENDPOINT, "http://a:4317"),
                (ENV_TRACES_ENDPOINT, "https://t:4317"),
                (ENV_SAMPLER_ARG, "0.25"),
            ]),
        )
        .expect("valid")
        .expect("valid");
        assert_eq!(
            s,
            Settings {
                endpoint: "https://t:4317".into(),
                ratio: 0.25
            }
        );
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused_naming_the_variable() {
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            let e = Settings::resolve(Some("a:1"), env(&[(ENV_SAMPLER_ARG, bad)]))
                .expect_err("refused");
            assert!(e.to_string().starts_with(ENV_SAMPLER_ARG), "{e}");
        }
    }

    #[test]
    fn a_parent_is_read_from_traceparent_and_a_malformed_one_is_none() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(Parent::from_headers(&headers), Parent::NONE);
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("valid"),
        );
        let parent = Parent::from_headers(&headers);
        let span = parent.span_context().expect("valid");
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled() && span.is_remote() && parent.is_sampled());
        headers.insert(
            "traceparent",
            "00-zz-00f067aa0ba902b7-01".parse().expect("valid"),
        );
        assert_eq!(Parent::from_headers(&headers), Parent::NONE);
    }
}
