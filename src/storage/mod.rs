//! Counter backends implementing [`crate::engine::CounterStore`].
//!
//! `memory` is the embedded default: exact, in-process, bounded. `redis` is
//! shared by several replicas: exact across them, one round trip a decision.

pub mod memory;
pub mod redis;
