//! What a server may do with the pipelines of its process: [`PipelineControl`], which `kiln up`
//! implements with the scheduler (the server never depends on it).

use std::future::Future;
use std::pin::Pin;

use kiln_core::registry::RegistryError;
use kiln_core::wire::pipelines::{PipelineInfo, Prune, Pruned, StartRun};

/// Why a run did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// No pipeline of that name in this process (404).
    UnknownPipeline(String),
    /// The request or the pipeline file was refused: a parameter of the wrong type, a bad date,
    /// a file with errors (400).
    Refused(String),
}

/// What a server may do with the pipelines of its process.
pub trait PipelineControl: Send + Sync {
    /// The pipelines this process runs, with their schedules (reads the registry: call it on a
    /// blocking thread).
    fn pipelines(&self) -> Vec<PipelineInfo>;
    /// Starts a run; its id once it is recorded. `trigger` says who asked (`api`, `ui`, `drift`).
    fn start<'a>(
        &'a self,
        pipeline: &'a str,
        request: StartRun,
        trigger: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StartError>> + Send + 'a>>;
    /// Cancels a run of this process; false when it does not run here.
    fn cancel(&self, run: u64) -> bool;
    /// Deletes the files of old finished runs as `request` says (deletes files: call it on a
    /// blocking thread).
    fn prune(&self, request: &Prune) -> Result<Vec<Pruned>, RegistryError>;
}
