//! The states of a pipeline, as Kafka Connect names a connector's.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PipelineState {
    /// Creating its instances (connecting).
    Starting,
    /// Every instance created; records move.
    Running,
    /// Not polling; nothing in flight; instances kept.
    Paused,
    /// Failed, waiting out the back-off of `restart: { on_failure: true }`.
    Restarting,
    /// Stopped on an error that was not retried away; see its error.
    Failed,
    /// Stopped by a request or a shutdown; offsets saved.
    Stopped,
    /// Its source ended and everything read was delivered.
    Finished,
}

impl PipelineState {
    pub const ALL: [PipelineState; 7] = [
        PipelineState::Starting,
        PipelineState::Running,
        PipelineState::Paused,
        PipelineState::Restarting,
        PipelineState::Failed,
        PipelineState::Stopped,
        PipelineState::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "STARTING",
            PipelineState::Running => "RUNNING",
            PipelineState::Paused => "PAUSED",
            PipelineState::Restarting => "RESTARTING",
            PipelineState::Failed => "FAILED",
            PipelineState::Stopped => "STOPPED",
            PipelineState::Finished => "FINISHED",
        }
    }

    /// The pipeline is over: the host need not stay up for it.
    pub fn is_done(self) -> bool {
        matches!(self, PipelineState::Failed | PipelineState::Finished)
    }
}
