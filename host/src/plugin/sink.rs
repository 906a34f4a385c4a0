//! A sink instance as the host calls it, whichever root module made it: one from a library
//! built against plugin-api 0.1.0 writes a batch at a time; one made through the ext root
//! module may keep several batches in flight.

use abi_stable::std_types::{ROption, RResult, RSlice};
use orbit_plugin_api::ffi::{PipelinedSinkBox, SinkBox, WriteOutcomeFfi};
use orbit_plugin_api::{PluginError, Record};

pub enum HostSink {
    /// From [`orbit_plugin_api::ffi::PluginModule::create_sink`].
    Plain(SinkBox),
    /// From [`orbit_plugin_api::ffi::PluginExt::create_sink`].
    Pipelined(PipelinedSinkBox),
}

impl HostSink {
    pub fn write(&mut self, batch: RSlice<'_, Record>) -> RResult<WriteOutcomeFfi, PluginError> {
        match self {
            HostSink::Plain(s) => s.write(batch),
            HostSink::Pipelined(s) => s.write(batch),
        }
    }

    pub fn close(&mut self) -> RResult<(), PluginError> {
        match self {
            HostSink::Plain(s) => s.close(),
            HostSink::Pipelined(s) => s.close(),
        }
    }

    /// How many batches the sink can hold begun and unconfirmed (1: `write` only).
    pub fn max_in_flight(&self) -> u32 {
        match self {
            HostSink::Plain(_) => 1,
            HostSink::Pipelined(s) => s.max_in_flight(),
        }
    }

    pub fn begin_write(&mut self, batch: RSlice<'_, Record>) -> RResult<(), PluginError> {
        match self {
            HostSink::Plain(_) => RResult::RErr(not_pipelined()),
            HostSink::Pipelined(s) => s.begin_write(batch),
        }
    }

    pub fn finish_write(&mut self, wait_ms: u64) -> RResult<ROption<WriteOutcomeFfi>, PluginError> {
        match self {
            HostSink::Plain(_) => RResult::RErr(not_pipelined()),
            HostSink::Pipelined(s) => s.finish_write(wait_ms),
        }
    }
}

fn not_pipelined() -> PluginError {
    PluginError::fatal("this sink writes one batch at a time (a host bug asked for more)")
}
