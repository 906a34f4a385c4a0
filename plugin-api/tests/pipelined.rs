//! The SDK's pipelined sinks as the host sees them through the FFI object: the window the sink
//! announces, begin/finish in FIFO order, a panic turned into an error, and a plain sink that
//! announces 1.

use std::collections::VecDeque;
use std::time::Duration;

use orbit_plugin_api::abi_stable::std_types::{RResult, RString, RVec};
use orbit_plugin_api::ffi::{PipelinedSinkBox, StageContextFfi};
use orbit_plugin_api::{
    write_by_parts, ErrorKind, PipelinedSink, PluginBuilder, PluginError, Record, Sink,
    SinkContext, WriteOutcome,
};

/// Fails the record whose value is `fail`, panics on a batch whose first value is `panic`.
struct Fifo {
    begun: VecDeque<Vec<String>>,
}

impl Sink for Fifo {
    type Config = serde_json::Value;
    fn open(_: Self::Config, _: SinkContext) -> Result<Self, PluginError> {
        Ok(Fifo {
            begun: VecDeque::new(),
        })
    }
    fn write(&mut self, batch: &[Record]) -> Result<WriteOutcome, PluginError> {
        write_by_parts(self, batch)
    }
}

impl PipelinedSink for Fifo {
    const MAX_IN_FLIGHT: usize = 3;
    fn begin_write(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        let values: Vec<String> = batch
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        if values.first().map(String::as_str) == Some("panic") {
            panic!("asked to");
        }
        self.begun.push_back(values);
        Ok(())
    }
    fn finish_write(&mut self, _wait: Duration) -> Result<Option<WriteOutcome>, PluginError> {
        let Some(values) = self.begun.pop_front() else {
            return Ok(None);
        };
        let mut out = WriteOutcome::ok();
        for (i, v) in values.iter().enumerate() {
            if v == "fail" {
                out.fail(
                    i,
                    PluginError::rejected(format!("batch starting {}", values[0])),
                );
            }
        }
        Ok(Some(out))
    }
}

struct Plain;

impl Sink for Plain {
    type Config = serde_json::Value;
    fn open(_: Self::Config, _: SinkContext) -> Result<Self, PluginError> {
        Ok(Plain)
    }
    fn write(&mut self, _: &[Record]) -> Result<WriteOutcome, PluginError> {
        Ok(WriteOutcome::ok())
    }
}

fn builder() -> PluginBuilder {
    PluginBuilder::new("test", "0")
        .pipelined_sink::<Fifo>("fifo", "")
        .sink::<Plain>("plain", "")
}

fn ctx() -> StageContextFfi {
    StageContextFfi {
        pipeline: RString::from("p"),
        stage: RString::from("sink"),
        config: RString::from("{}"),
    }
}

/// The sink as a host that knows the ext root module creates it.
fn sink(name: &str) -> PipelinedSinkBox {
    let ext = orbit_plugin_api::__ext_module(builder);
    match (ext.create_sink())(name.into(), ctx()) {
        RResult::ROk(s) => s,
        RResult::RErr(e) => panic!("{e}"),
    }
}

fn batch(values: &[&str]) -> RVec<Record> {
    values
        .iter()
        .map(|v| Record {
            key: None.into(),
            value: v.as_bytes().to_vec().into(),
            headers: RVec::new(),
            timestamp_ms: None.into(),
            stream: "s".into(),
            partition: 0,
            offset: RVec::new(),
        })
        .collect()
}

#[test]
fn a_pipelined_sink_finishes_its_batches_in_the_order_they_began() {
    let mut s = sink("fifo");
    assert_eq!(s.max_in_flight(), 3);
    s.begin_write(batch(&["a", "fail"]).as_rslice()).unwrap();
    s.begin_write(batch(&["fail", "b", "c"]).as_rslice())
        .unwrap();
    let first = s.finish_write(10).unwrap().into_option().unwrap();
    assert_eq!(first.failures.len(), 1);
    assert_eq!(first.failures[0].index, 1);
    assert!(first.failures[0]
        .error
        .message()
        .contains("batch starting a"));
    let second = s.finish_write(10).unwrap().into_option().unwrap();
    assert_eq!(second.failures[0].index, 0);
    assert!(second.failures[0]
        .error
        .message()
        .contains("batch starting fail"));
    assert!(
        s.finish_write(10).unwrap().is_none(),
        "nothing left in flight"
    );
    // `write` is begin + finish.
    assert!(s
        .write(batch(&["x"]).as_rslice())
        .unwrap()
        .failures
        .is_empty());
}

#[test]
fn a_panic_in_begin_write_comes_back_as_an_error() {
    let mut s = sink("fifo");
    let e = s.begin_write(batch(&["panic"]).as_rslice()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    assert!(e.message().contains("asked to"), "{e}");
}

#[test]
fn a_plain_sink_writes_one_batch_at_a_time() {
    let mut s = sink("plain");
    assert_eq!(s.max_in_flight(), 1);
    let e = s.begin_write(batch(&["a"]).as_rslice()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fatal);
}

#[test]
fn a_host_that_knows_only_the_first_root_module_writes_to_a_pipelined_sink() {
    let module = orbit_plugin_api::__root_module(builder);
    let mut s = match (module.create_sink())("fifo".into(), ctx()) {
        RResult::ROk(s) => s,
        RResult::RErr(e) => panic!("{e}"),
    };
    let out = s.write(batch(&["a", "fail"]).as_rslice()).unwrap();
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].index, 1);
}
