//! Label sets of the host's metrics (Vector's component naming).

use prometheus_client::encoding::EncodeLabelSet;

/// A stage of a pipeline.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub pipeline: String,
    /// The stage's name in the pipeline (`source`, `sink`, a transform's name).
    pub component_id: String,
    /// `source`, `transform`, `sink` or `dead_letter`.
    pub component_kind: String,
    /// The plugin's component name.
    pub component_type: String,
}

impl StageLabels {
    pub(super) fn discarded(&self, intentional: bool) -> DiscardLabels {
        DiscardLabels {
            stage: self.clone(),
            intentional: if intentional { "true" } else { "false" }.to_string(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    #[prometheus(flatten)]
    pub stage: StageLabels,
    pub error_type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscardLabels {
    #[prometheus(flatten)]
    pub stage: StageLabels,
    pub intentional: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
    pub state: String,
}
