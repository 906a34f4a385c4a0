//! The Orbit host: loads plugin libraries and runs pipelines.
//!
//! Modules follow the data: [`config`] (pipeline files) → [`plugin`] (search path, loading,
//! registry) → [`pipeline`] (stages, batches, acks) → [`policy`] (what wraps each stage call) →
//! [`offsets`] (where acknowledged positions are kept).

pub mod config;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub mod policy;
