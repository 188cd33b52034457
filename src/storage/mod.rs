//! Counter backends implementing [`crate::engine::CounterStore`].
//!
//! `memory` is the embedded default: exact, in-process, bounded.

pub mod memory;
