//! tollgate: a gRPC rate-limit decision service that enforces SaaS API plans.
//!
//! # Architecture
//!
//! - [`engine`]: the algorithms and the all-or-nothing decision over a
//!   [`engine::CounterStore`]; pure and synchronous, time passed in.
//! - [`storage`]: counter stores; [`storage::memory`] is the embedded default,
//!   [`storage::redis`] is shared by several replicas (one script call a decision).
//! - [`plans`]: the plan model compiled from configuration (classes, plans,
//!   limits) and the moka-cached account → plan resolver.
//! - [`config`]: the YAML file, validated in full, errors with file, line and field.
//! - [`limiter`]: the decision path: resolve the plan, match the class, run
//!   the engine, build the decision and its headers.
//! - [`api`]: the `tollgate.v1` gRPC services over the limiter.
//! - [`envoy`]: Envoy's rate limit service (RLS v3): envoyproxy/ratelimit rule
//!   files, and Envoy domains answered from the plans.
//! - [`server`]: wiring: listener, health, reflection, background tasks,
//!   following other replicas through Redis, shutdown.
//! - [`proto`]: generated code, fenced.

pub mod api;
pub mod config;
pub mod engine;
pub mod envoy;
pub mod limiter;
pub mod plans;
pub mod proto;
pub mod server;
pub mod state;
pub mod storage;
pub mod watch;
