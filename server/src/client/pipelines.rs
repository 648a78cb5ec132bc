//! [`Client`] as a [`Pipelines`] backend: the pipelines of a running `kiln up`, started there
//! and followed from here.

use std::path::Path;
use std::time::Duration;

use kiln_core::backend::Pipelines;
use kiln_core::registry::{
    PinnedSchema, PipelineRun, PipelineRunState, RegistryError, ScheduleState,
};
use kiln_core::wire::pipelines::{
    AcceptSchema, Cancelling, PipelineInfo, Prune, PruneAnswer, Pruned, ScheduleChanged,
    SchemaDiff, StartRun, Started,
};

use super::{Client, url_part};

/// How often a followed run is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The most of one log an answer carries.
const LOG_BYTES: u64 = 16 << 20;

impl Client {
    fn known_pipelines(&self) -> Result<Vec<PipelineInfo>, RegistryError> {
        self.get("/api/pipelines")
    }

    fn cancel_run(&self, id: u64) -> Result<Cancelling, RegistryError> {
        self.send::<Cancelling>(
            "POST",
            &format!("/api/pipeline-runs/{id}/cancel"),
            None::<&()>,
        )
    }
}

impl Pipelines for Client {
    fn describe(&self) -> String {
        format!("the kiln up at {}", self.base())
    }

    fn pipeline_runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PipelineRun>, RegistryError> {
        let mut path = format!("/api/pipeline-runs?limit={limit}");
        if let Some(p) = pipeline {
            path.push_str(&format!("&pipeline={}", url_part(p)));
        }
        self.get(&path)
    }

    fn pipeline_run(&self, id: u64) -> Result<PipelineRun, RegistryError> {
        self.get(&format!("/api/pipeline-runs/{id}"))
    }

    fn step_log(
        &self,
        run: &PipelineRun,
        step: &str,
        attempt: usize,
    ) -> Result<String, RegistryError> {
        let path = format!(
            "/api/pipeline-runs/{}/logs/{}/{attempt}?from=0&bytes={LOG_BYTES}",
            run.id,
            url_part(step)
        );
        Ok(self.text(&path)?.0)
    }

    fn cancel(&self, id: u64) -> Result<String, RegistryError> {
        Ok(self.cancel_run(id)?.message)
    }

    fn schedules(&self) -> Result<Vec<ScheduleState>, RegistryError> {
        Ok(self
            .known_pipelines()?
            .into_iter()
            .filter(|p| !p.cron.is_empty())
            .map(|p| ScheduleState {
                pipeline: p.pipeline,
                file: p.file,
                cron: p.cron,
                paused: p.paused,
                last_fire_ms: p.last_fire_ms,
            })
            .collect())
    }

    fn pause_schedule(&self, pipeline: &str, paused: bool) -> Result<(), RegistryError> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/api/pipelines/{}/schedule/{verb}", url_part(pipeline));
        self.send::<ScheduleChanged>("POST", &path, None::<&()>)
            .map(|_| ())
    }

    fn prune(&self, request: &Prune) -> Result<Vec<Pruned>, RegistryError> {
        let answer: PruneAnswer = self.send("POST", "/api/pipeline-runs/prune", Some(request))?;
        Ok(answer.pruned)
    }

    fn pinned_schemas(&self, pipeline: &str) -> Result<Vec<PinnedSchema>, RegistryError> {
        self.get(&format!("/api/pipelines/{}/schemas", url_part(pipeline)))
    }

    fn schema_diff(
        &self,
        pipeline: &str,
        run: u64,
        step: Option<&str>,
    ) -> Result<SchemaDiff, RegistryError> {
        let step = step.map_or(String::new(), |s| format!("&step={}", url_part(s)));
        self.get(&format!(
            "/api/pipelines/{}/schemas/diff?run={run}{step}",
            url_part(pipeline)
        ))
    }

    fn accept_schema(
        &self,
        pipeline: &str,
        request: &AcceptSchema,
    ) -> Result<PinnedSchema, RegistryError> {
        self.send(
            "POST",
            &format!("/api/pipelines/{}/schemas/accept", url_part(pipeline)),
            Some(request),
        )
    }

    /// The server's copy of the pipeline decides: the local file only names it.
    fn cron(&self, name: &str, _file: &Path) -> Result<Option<String>, RegistryError> {
        let known = self.known_pipelines()?;
        let info =
            known
                .iter()
                .find(|p| p.pipeline == name)
                .ok_or_else(|| RegistryError::NotFound {
                    what: "pipeline",
                    name: name.to_string(),
                    hint: format!(
                        " in the kiln up at {}{}",
                        self.base(),
                        kiln_core::suggest::hint(name, known.iter().map(|p| p.pipeline.as_str()))
                    ),
                })?;
        Ok(Some(info.cron.clone()).filter(|c| !c.is_empty()))
    }

    /// Starts the run in the server (which records it with trigger `api`) and looks at it
    /// until it ends.
    fn run_pipeline(
        &self,
        name: &str,
        _file: &Path,
        request: &StartRun,
        _trigger: &str,
        on_change: &(dyn Fn(&PipelineRun) + Sync),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<PipelineRun, RegistryError> {
        let path = format!("/api/pipelines/{}/runs", url_part(name));
        let started: Started = self.send("POST", &path, Some(request))?;
        let mut cancelling = false;
        loop {
            let run = self.pipeline_run(started.run)?;
            on_change(&run);
            if run.state != PipelineRunState::Running {
                return Ok(run);
            }
            if !cancelling && cancelled() {
                // The run may have ended meanwhile (409): the next look says how.
                let _ = self.cancel_run(started.run);
                cancelling = true;
            }
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}
