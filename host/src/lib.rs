//! The Orbit host: loads plugin libraries and runs pipelines.
//!
//! Modules follow the data: [`config`] (pipeline files) → [`plugin`] (search path, loading,
//! registry, instances and how they are called) → [`policy`] (what wraps each stage call) →
//! [`pipeline`] (the run: stages, batches, acks) → [`offsets`] (where acknowledged positions are
//! kept) → [`supervisor`] (the pipelines of a host: states, restarts, commands) → [`admin`]
//! (the HTTP server over the supervisor). [`telemetry`] (counters and states) sits below
//! `policy` and is imported by whatever counts. Each imports only those before it (and
//! `offsets`, `telemetry`), so there is no module cycle.

// Diagnostics carry file, position, key, message and hint; they are built on the cold path of
// loading a file, so their size does not matter and boxing them would only add noise.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod config;
pub mod logging;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod supervisor;
pub mod telemetry;
