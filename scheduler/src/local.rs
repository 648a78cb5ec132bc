//! The pipelines of a `KILN_HOME` this process opens, run here: [`Local`] is the
//! [`Pipelines`] backend of every `kiln pipeline` command without `--server`. Opening the
//! registry means no other kiln runs its pipelines, so runs a stopped kiln left behind are
//! recorded as cancelled before a new one starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::backend::Pipelines;
use kiln_core::registry::{PipelineRun, PipelineRunState, Registry, RegistryError, ScheduleState};
use kiln_core::wire::pipelines::{Prune, Pruned, StartRun};
use tokio::sync::watch;

use crate::run::{Components, RunError};
use crate::service::Service;

impl From<RunError> for RegistryError {
    fn from(e: RunError) -> RegistryError {
        match e {
            RunError::Store(e) => e,
            RunError::Io(message) => RegistryError::Io(message),
            other => RegistryError::Invalid(other.to_string()),
        }
    }
}

/// Pipelines run by this process over a registry it opened.
pub struct Local<C> {
    service: Arc<Service<C>>,
    components: Arc<C>,
    runtime: tokio::runtime::Runtime,
    /// Turns true to cancel the runs of this process.
    stop: watch::Sender<bool>,
}

impl<C: Components> Local<C> {
    /// Runs go on `runtime`; `path_prefix` goes before `PATH` for commands; `notifier` posts
    /// run summaries to pipelines' `notify` URLs.
    pub fn new(
        registry: Arc<Registry>,
        components: C,
        path_prefix: Vec<PathBuf>,
        runtime: tokio::runtime::Runtime,
        notifier: Option<Arc<dyn crate::run::Notify>>,
    ) -> Local<C> {
        let (stop, stopped) = watch::channel(false);
        let components = Arc::new(components);
        Local {
            service: Service::new(registry, components.clone(), stopped, path_prefix, notifier),
            components,
            runtime,
            stop,
        }
    }

    fn registry(&self) -> &Registry {
        &self.service.registry
    }
}

impl<C: Components> Pipelines for Local<C> {
    fn describe(&self) -> String {
        format!("KILN_HOME {}", self.registry().home().display())
    }

    fn pipeline_runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PipelineRun>, RegistryError> {
        self.registry().pipeline_runs(pipeline, limit)
    }

    fn pipeline_run(&self, id: u64) -> Result<PipelineRun, RegistryError> {
        self.registry().pipeline_run(id)
    }

    fn step_log(
        &self,
        run: &PipelineRun,
        step: &str,
        attempt: usize,
    ) -> Result<String, RegistryError> {
        let path = run
            .steps
            .iter()
            .find(|s| s.id == step)
            .and_then(|s| s.logs.get(attempt.wrapping_sub(1)))
            .ok_or_else(|| RegistryError::NotFound {
                what: "log",
                name: format!("{step} attempt {attempt} of run {}", run.id),
                hint: String::new(),
            })?;
        Ok(match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "(deleted by `kiln pipeline prune`, or by hand)\n".to_string()
            }
            Err(e) => format!("(unreadable: {e})\n"),
        })
    }

    fn cancel(&self, id: u64) -> Result<String, RegistryError> {
        let run = self.registry().pipeline_run(id)?;
        if run.state != PipelineRunState::Running {
            return Err(RegistryError::Invalid(format!(
                "run {id} is not running: it {}",
                run.state.as_str()
            )));
        }
        // It runs in no process: this one holds the registry and runs nothing.
        let recovered = self.service.recover()?;
        Ok(format!(
            "run {id} was left running by a stopped kiln; recorded as cancelled ({} runs)",
            recovered.len()
        ))
    }

    fn schedules(&self) -> Result<Vec<ScheduleState>, RegistryError> {
        self.registry().schedule_states()
    }

    fn pause_schedule(&self, pipeline: &str, paused: bool) -> Result<(), RegistryError> {
        let registry = self.registry();
        let Some(mut state) = registry.schedule_state(pipeline)? else {
            let known = registry.schedule_states()?;
            return Err(RegistryError::Invalid(format!(
                "no schedule for pipeline `{pipeline}`{}; schedules start with `kiln up --pipeline FILE`",
                kiln_core::suggest::hint(pipeline, known.iter().map(|s| s.pipeline.as_str()))
            )));
        };
        state.paused = paused;
        registry.save_schedule_state(&state)
    }

    fn pinned_schemas(
        &self,
        pipeline: &str,
    ) -> Result<Vec<kiln_core::registry::PinnedSchema>, RegistryError> {
        self.registry().pinned_schemas(pipeline)
    }

    fn schema_diff(
        &self,
        pipeline: &str,
        run: u64,
        step: Option<&str>,
    ) -> Result<kiln_core::wire::pipelines::SchemaDiff, RegistryError> {
        kiln_core::backend::schema_diff(self.registry(), pipeline, run, step)
    }

    fn accept_schema(
        &self,
        pipeline: &str,
        request: &kiln_core::wire::pipelines::AcceptSchema,
    ) -> Result<kiln_core::registry::PinnedSchema, RegistryError> {
        let user = std::env::var("USER").unwrap_or_else(|_| "kiln".into());
        kiln_core::backend::accept_schema(
            self.registry(),
            pipeline,
            request.run,
            request.step.as_deref(),
            request.by.as_deref().unwrap_or(&user),
            &request.reason,
        )
    }

    fn prune(&self, request: &Prune) -> Result<Vec<Pruned>, RegistryError> {
        crate::prune::prune(
            self.registry(),
            request.pipeline.as_deref(),
            request.keep,
            request.dry_run,
        )
    }

    fn cron(&self, _name: &str, file: &Path) -> Result<Option<String>, RegistryError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| RegistryError::Io(format!("reading {}: {e}", file.display())))?;
        let parsed = crate::parse_with(&text, self.components.catalogue());
        let has_errors = parsed.has_errors();
        match parsed.pipeline {
            Some(p) if !has_errors => Ok(p.schedule.map(|s| s.cron)),
            _ => Err(RegistryError::Invalid(format!(
                "{} has errors; `kiln pipeline validate {0}` lists them",
                file.display()
            ))),
        }
    }

    fn run_pipeline(
        &self,
        _name: &str,
        file: &Path,
        request: &StartRun,
        trigger: &str,
        on_change: &(dyn Fn(&PipelineRun) + Sync),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<PipelineRun, RegistryError> {
        self.service.recover()?;
        let request = self.service.request_from(file, request, trigger)?;
        self.runtime.block_on(async {
            let run = self.service.run(request, on_change);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    ended = &mut run => return Ok(ended?),
                    _ = tick.tick() => if cancelled() {
                        let _ = self.stop.send(true);
                    },
                }
            }
        })
    }
}
