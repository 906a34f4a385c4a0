//! Factories: how a loaded component becomes a new instance, each time a stage needs one.

use std::sync::Arc;

use abi_stable::std_types::RString;
use orbit_plugin_api::ffi::{SourceBox, SourceContextFfi, StageContextFfi, TransformBox};

use super::{Component, Factory, HostSink};
use crate::offsets::LedgerReader;

/// What every instance of one stage is made with.
#[derive(Clone)]
pub struct StageConfig {
    pub pipeline: String,
    /// The stage's name in the pipeline (`source`, `transforms[0]`, or its `name:`).
    pub stage: String,
    pub component: Component,
    /// The `config:` block as JSON text.
    pub config_json: String,
}

impl StageConfig {
    fn ctx(&self) -> StageContextFfi {
        StageContextFfi {
            pipeline: RString::from(self.pipeline.as_str()),
            stage: RString::from(self.stage.as_str()),
            config: RString::from(self.config_json.as_str()),
        }
    }
}

pub fn transform_factory(s: &StageConfig) -> Factory<TransformBox> {
    let module = s.component.library.module;
    let name = s.component.name.clone();
    let ctx = s.ctx();
    Arc::new(move || (module.create_transform())(name.as_str().into(), ctx.clone()).into_result())
}

/// Through the ext root module when the library has it (the sink may then keep several
/// batches in flight), else through the first one.
pub fn sink_factory(s: &StageConfig) -> Factory<HostSink> {
    let module = s.component.library.module;
    let ext = s.component.library.ext;
    let name = s.component.name.clone();
    let ctx = s.ctx();
    Arc::new(move || {
        let name = name.as_str().into();
        match ext {
            Some(ext) => (ext.create_sink())(name, ctx.clone())
                .into_result()
                .map(HostSink::Pipelined),
            None => (module.create_sink())(name, ctx.clone())
                .into_result()
                .map(HostSink::Plain),
        }
    })
}

/// A source is reopened from the offsets acknowledged so far, read when it is (re)created.
pub fn source_factory(s: &StageConfig, offsets: LedgerReader) -> Factory<SourceBox> {
    let module = s.component.library.module;
    let name = s.component.name.clone();
    let ctx = s.ctx();
    Arc::new(move || {
        let ctx = SourceContextFfi {
            pipeline: ctx.pipeline.clone(),
            stage: ctx.stage.clone(),
            config: ctx.config.clone(),
            offsets: offsets.positions().into(),
        };
        (module.create_source())(name.as_str().into(), ctx).into_result()
    })
}
