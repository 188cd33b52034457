//! tollgate: a gRPC rate-limit decision service that enforces SaaS API plans.
//!
//! # Architecture
//!
//! The modules in layer order, lowest first. A module uses only modules
//! listed above it, never one below, and no two modules import each other.
//!
//! - [`log_every`]: the one throttle for warnings that could repeat per call.
//! - [`webhooks`]: signed webhook delivery (Standard Webhooks), bounded
//!   queues and retries; knows nothing of the rest.
//! - [`otel`]: OpenTelemetry traces over OTLP: the exporter, a request's
//!   W3C parent, one span per decision; knows nothing of the rest.
//! - [`listen`]: one accept loop for every listener, with its caps and timeouts.
//! - [`proto`]: generated code (`tollgate.v1`, Envoy's RLS v3), fenced.
//! - [`engine`]: the algorithms and the all-or-nothing decision over a
//!   [`engine::CounterStore`]; pure and synchronous, time passed in.
//! - [`plans`]: the plan model (classes, plans, limits, overrides), the
//!   runtime assignments it reads, and the moka-cached account → plan resolver.
//! - [`config`]: the YAML file compiled into plans, errors with file, line and
//!   field; reloading files into a running server.
//! - [`storage`]: where counters live, behind one seam ([`storage::Counters`]):
//!   [`storage::memory`] (the embedded default) or [`storage::redis`] (shared
//!   by several replicas, decisions waiting together share a script call).
//! - [`state`]: admin changes made durable (a redb file, or Redis) before
//!   they apply.
//! - [`persist`]: counters across a restart: a snapshot and a checksummed
//!   journal, every crash point safe.
//! - [`error`]: what a call can end in, by what the caller should do.
//! - [`limiter`]: the decision path: resolve the plan, match the class, count,
//!   build the decision and its headers.
//! - [`metrics`]: Prometheus counters and gauges, and their endpoint.
//! - [`watch`]: the quota hub behind `WatchQuota`: a snapshot, then changes.
//! - [`sink`]: where every door hands each finished decision, once; the
//!   metrics and the hub consume it.
//! - [`insight`]: a consumer of the sink: the top limited subjects (a
//!   fixed-size sketch) and threshold events, to watchers and webhooks.
//! - [`status`]: the one error table: each [`error::Error`] to its gRPC
//!   code, each code to its HTTP status.
//! - [`api`] and [`envoy`]: the services, side by side and independent:
//!   `tollgate.v1` and Envoy's rate limit service (RLS v3).
//! - [`http`]: the same services as JSON over HTTP (`--http-listen`):
//!   envoyproxy/ratelimit's `/json` and `/healthcheck`, `/v1/…`, Server-Sent
//!   Events, forward auth for gateways; it only converts and calls them.
//! - [`server`]: wiring: listener, health, reflection, background tasks,
//!   following other replicas through Redis, shutdown.

pub mod log_every;

pub mod webhooks;

pub mod otel;

pub mod listen;

pub mod proto;

pub mod engine;

pub mod plans;

pub mod config;

pub mod storage;

pub mod state;

pub mod persist;

pub mod error;

pub mod limiter;

pub mod metrics;

pub mod watch;

pub mod sink;

pub mod insight;

pub mod status;

pub mod api;
pub mod envoy;

pub mod http;

pub mod server;
