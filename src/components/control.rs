//! What `kiln up` lends its server: the process's pipelines ([`known_pipelines`]), started,
//! listed, cancelled and pruned through the scheduler's [`Service`] behind the server's
//! [`PipelineControl`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use kiln_core::registry::{Registry, RegistryError};
use kiln_core::wire::pipelines::{PipelineInfo, Prune, Pruned, StartRun};
use kiln_scheduler::pipeline::Pipeline;
use kiln_scheduler::schedule::next_fire;
use kiln_scheduler::service::Service;
use kiln_server::control::{PipelineControl, StartError};

use super::{Builtins, CATALOGUE};

/// A pipeline this process knows.
pub struct Known {
    pub file: PathBuf,
    pub pipeline: Pipeline,
}

/// The process's pipelines, run by its scheduler, as the server asks for them.
pub struct PipelineApi {
    service: Arc<Service<Builtins>>,
    pipelines: BTreeMap<String, Known>,
    runs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A pipeline file, parsed and checked against the built-in components.
pub fn load(file: &Path) -> Result<Pipeline> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = kiln_scheduler::parse_with(&text, CATALOGUE);
    if parsed.has_errors() {
        bail!(
            "{} has errors; `kiln pipeline validate {}` lists them",
            file.display(),
            file.display()
        );
    }
    parsed
        .pipeline
        .ok_or_else(|| anyhow::anyhow!("{} is not a pipeline", file.display()))
}

/// The pipelines of `files`, and those an earlier process scheduled whose files are still
/// there and unchanged in name; two files defining one pipeline are refused.
pub fn known_pipelines(files: &[PathBuf], registry: &Registry) -> Result<BTreeMap<String, Known>> {
    let mut pipelines: BTreeMap<String, Known> = BTreeMap::new();
    for file in files {
        let file = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
        let pipeline = load(&file)?;
        if let Some(other) = pipelines.get(&pipeline.name) {
            bail!(
                "{} and {} both define pipeline `{}`",
                other.file.display(),
                file.display(),
                pipeline.name
            );
        }
        pipelines.insert(pipeline.name.clone(), Known { file, pipeline });
    }
    for state in registry.schedule_states()? {
        if pipelines.contains_key(&state.pipeline) {
            continue;
        }
        let file = PathBuf::from(&state.file);
        match load(&file) {
            Ok(p) if p.name == state.pipeline && p.schedule.is_some() => {
                pipelines.insert(p.name.clone(), Known { file, pipeline: p });
            }
            _ => tracing::warn!(
                pipeline = %state.pipeline, file = %state.file,
                "a schedule's pipeline file is gone or changed; not scheduling it"
            ),
        }
    }
    Ok(pipelines)
}

impl PipelineApi {
    pub fn new(service: Arc<Service<Builtins>>, pipelines: BTreeMap<String, Known>) -> PipelineApi {
        PipelineApi {
            service,
            pipelines,
            runs: Mutex::new(Vec::new()),
        }
    }

    /// Waits for the runs it started (cancelled at shutdown) to be recorded as ended.
    pub async fn finish_runs(&self) {
        let runs: Vec<_> = self
            .runs
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default();
        for r in runs {
            let _ = r.await;
        }
    }

    /// Starts a run of a known pipeline; its id once recorded.
    async fn start_known(
        &self,
        name: &str,
        request: StartRun,
        trigger: &str,
    ) -> Result<u64, StartError> {
        let known = self.pipelines.get(name).ok_or_else(|| {
            StartError::UnknownPipeline(format!(
                "no pipeline `{name}` in this kiln{}",
                kiln_core::suggest::hint(name, self.pipelines.keys().map(String::as_str))
            ))
        })?;
        let run = self
            .service
            .request_from(&known.file, &request, trigger)
            .map_err(|e| StartError::Refused(e.to_string()))?;
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<Result<u64, String>>();
        let service = self.service.clone();
        let handle = tokio::spawn(async move {
            let id_tx = Mutex::new(Some(id_tx));
            let send = |r: Result<u64, String>| {
                if let Some(tx) = id_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(r);
                }
            };
            match service.run(run, &|run| send(Ok(run.id))).await {
                Ok(run) => {
                    tracing::info!(pipeline = %run.pipeline, run = run.id, state = run.state.as_str(), "run ended")
                }
                Err(e) => send(Err(e.to_string())),
            }
        });
        if let Ok(mut runs) = self.runs.lock() {
            runs.retain(|h| !h.is_finished());
            runs.push(handle);
        }
        id_rx
            .await
            .map_err(|_| StartError::Refused("the run stopped before it was recorded".into()))?
            .map_err(StartError::Refused)
    }
}

impl PipelineControl for PipelineApi {
    fn pipelines(&self) -> Vec<PipelineInfo> {
        let now = Utc::now();
        self.pipelines
            .iter()
            .map(|(name, known)| {
                let state = self.service.registry.schedule_state(name).ok().flatten();
                let cron = known
                    .pipeline
                    .schedule
                    .as_ref()
                    .map_or(String::new(), |s| s.cron.clone());
                let paused = state.as_ref().is_some_and(|s| s.paused);
                PipelineInfo {
                    pipeline: name.clone(),
                    file: known.file.display().to_string(),
                    steps: known.pipeline.steps.len(),
                    next_fire: (!paused)
                        .then(|| next_fire(&cron, now))
                        .flatten()
                        .map(|t| t.to_rfc3339()),
                    cron,
                    paused,
                    last_fire_ms: state.and_then(|s| s.last_fire_ms),
                }
            })
            .collect()
    }

    fn start<'a>(
        &'a self,
        pipeline: &'a str,
        request: StartRun,
        trigger: &'static str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, StartError>> + Send + 'a>>
    {
        Box::pin(self.start_known(pipeline, request, trigger))
    }

    fn cancel(&self, run: u64) -> bool {
        self.service.cancel(run)
    }

    fn prune(&self, request: &Prune) -> Result<Vec<Pruned>, RegistryError> {
        kiln_scheduler::prune::prune(
            &self.service.registry,
            request.pipeline.as_deref(),
            request.keep,
            request.dry_run,
        )
    }
}
