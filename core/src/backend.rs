//! One path for every registry command: a [`Backend`] is either a `KILN_HOME` this process
//! opens ([`Registry`]) or a running `kiln up` that owns one (`kiln_server::client::Client`). The
//! command line, the REPL and tracked training speak only to this trait, so each works the same
//! against both; the answers are the types of [`crate::wire`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::registry::{
    AliasEvent, ArtifactRef, Deployment, Expect, Experiment, ModelVersion, NewRun, PipelineRun,
    Registry, RegistryError, Run, RunStatus, ScheduleState, query::RunView,
};
use crate::wire::experiments::{ExperimentEntry, ExperimentList};
use crate::wire::models::{ModelDetail, ModelList, ModelSummary, VersionEntry};
use crate::wire::pipelines::{Prune, Pruned, SchemaDiff, StartRun};
use crate::wire::runs::{RunDetail, RunEntry, RunPage, RunQuery, RunText};

/// An alias's move as the caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasMove {
    pub expect: Expect,
    pub by: String,
    pub reason: String,
}

/// The registry, wherever it lives.
pub trait Backend: Send + Sync {
    /// Where it lives, for messages (`registry .kiln`, `server http://127.0.0.1:8080`).
    fn describe(&self) -> String;

    fn experiments(&self) -> Result<ExperimentList, RegistryError>;
    fn create_experiment(&self, name: &str) -> Result<Experiment, RegistryError>;
    fn rename_experiment(&self, old: &str, new: &str) -> Result<Experiment, RegistryError>;
    /// Deletes an experiment (with its runs when `force`); returns how many runs went.
    fn delete_experiment(&self, name: &str, force: bool) -> Result<usize, RegistryError>;

    fn runs(&self, query: &RunQuery) -> Result<RunPage, RegistryError>;
    /// A run, its latest metrics and each metric's curve (at most 40 points).
    fn run(&self, id: u64) -> Result<RunDetail, RegistryError>;
    fn create_run(&self, new: NewRun) -> Result<Run, RegistryError>;
    fn log_params(&self, id: u64, params: &BTreeMap<String, String>) -> Result<(), RegistryError>;
    fn set_tags(&self, id: u64, tags: &BTreeMap<String, String>) -> Result<(), RegistryError>;
    /// Records metric points; they are durable after [`Backend::flush`] (a server's answer
    /// means they are).
    fn log_metrics(&self, id: u64, points: &[(&str, i64, f64)]) -> Result<(), RegistryError>;
    /// Makes what was logged durable.
    fn flush(&self) -> Result<(), RegistryError> {
        Ok(())
    }
    /// Attaches a file or directory to a run, its content checked against its digest.
    fn log_artifact(&self, id: u64, name: &str, path: &Path) -> Result<ArtifactRef, RegistryError>;
    fn end_run(&self, id: u64, status: RunStatus) -> Result<Run, RegistryError>;
    fn delete_run(&self, id: u64) -> Result<(), RegistryError>;

    fn models(&self) -> Result<ModelList, RegistryError>;
    fn model(&self, name: &str) -> Result<ModelDetail, RegistryError>;
    fn register_version(
        &self,
        model: &str,
        run: u64,
        artifact: &str,
        description: &str,
        signature: Option<serde_json::Value>,
    ) -> Result<ModelVersion, RegistryError>;
    /// The version an alias (or a version number, as text) names.
    fn resolve(&self, model: &str, which: &str) -> Result<ModelVersion, RegistryError>;
    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError>;
    fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError>;
    /// Every alias move of a model, oldest first.
    fn history(&self, model: &str) -> Result<Vec<AliasEvent>, RegistryError>;
    /// Deletes a model and its versions; returns how many versions went.
    fn delete_model(&self, model: &str, force: bool, by: &str) -> Result<usize, RegistryError>;
    fn delete_version(
        &self,
        model: &str,
        version: u32,
        force: bool,
        by: &str,
    ) -> Result<(), RegistryError>;
    /// Copies an artifact (a run's, a version's) out to `dest`, every object checked against
    /// its digest.
    fn export_artifact(&self, artifact: &ArtifactRef, dest: &Path) -> Result<(), RegistryError>;
    /// Copies a version's artifact out to `dest`.
    fn export_version(&self, version: &ModelVersion, dest: &Path) -> Result<(), RegistryError> {
        self.export_artifact(&version.artifact, dest)
    }

    /// Routes a model's traffic as `deployment` says; what is stored.
    fn set_deployment(&self, deployment: Deployment, by: &str)
    -> Result<Deployment, RegistryError>;
    /// Back to all traffic on the model's default version; what is stored then.
    fn reset_deployment(&self, model: &str) -> Result<Deployment, RegistryError>;
}

/// The pipelines, wherever they run: in this process over a `KILN_HOME` it opens (the
/// scheduler's `Local`), or in a running `kiln up` (`kiln_server::client::Client`). Every
/// `kiln pipeline` command speaks only to this trait.
pub trait Pipelines {
    /// Where the runs happen, for messages.
    fn describe(&self) -> String;
    /// The newest runs first, of one pipeline or all.
    fn pipeline_runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PipelineRun>, RegistryError>;
    fn pipeline_run(&self, id: u64) -> Result<PipelineRun, RegistryError>;
    /// The text of a step's log, attempt `attempt` (from 1); a log deleted by a prune says so.
    fn step_log(
        &self,
        run: &PipelineRun,
        step: &str,
        attempt: usize,
    ) -> Result<String, RegistryError>;
    /// Cancels a running run; what happened, in words.
    fn cancel(&self, id: u64) -> Result<String, RegistryError>;
    /// The schedules and their state.
    fn schedules(&self) -> Result<Vec<ScheduleState>, RegistryError>;
    fn pause_schedule(&self, pipeline: &str, paused: bool) -> Result<(), RegistryError>;
    /// Deletes the files of old finished runs (or says which, on a dry run).
    fn prune(&self, request: &Prune) -> Result<Vec<Pruned>, RegistryError>;
    /// The cron of pipeline `name` (defined by `file` here) as the one who runs it knows it.
    fn cron(&self, name: &str, file: &Path) -> Result<Option<String>, RegistryError>;
    /// Runs pipeline `name` (defined by `file` here) to its end. `on_change` sees the record
    /// whenever a step moves; once `cancelled` says true the run is cancelled.
    fn run_pipeline(
        &self,
        name: &str,
        file: &Path,
        request: &StartRun,
        trigger: &str,
        on_change: &(dyn Fn(&PipelineRun) + Sync),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<PipelineRun, RegistryError>;
    /// The schemas pinned for a pipeline's `validate` steps.
    fn pinned_schemas(
        &self,
        pipeline: &str,
    ) -> Result<Vec<crate::registry::PinnedSchema>, RegistryError>;
    /// What run `run`'s data would change in the pinned schema ([`schema_diff`]).
    fn schema_diff(
        &self,
        pipeline: &str,
        run: u64,
        step: Option<&str>,
    ) -> Result<SchemaDiff, RegistryError>;
    /// Pins the schema inferred from run `run`'s data ([`accept_schema`]).
    fn accept_schema(
        &self,
        pipeline: &str,
        request: &crate::wire::pipelines::AcceptSchema,
    ) -> Result<crate::registry::PinnedSchema, RegistryError>;
}

/// The file a `validate` step writes with the schema inferred from its run's data.
pub const INFERRED_SCHEMA: &str = "inferred.toml";
/// The file a `validate` step writes with its data's anomalies.
pub const ANOMALIES: &str = "anomalies.json";

/// The `validate` step of run `run` of `pipeline` (the one named, or the only one) and the
/// directory of its outputs.
fn validate_step(
    registry: &Registry,
    pipeline: &str,
    run: u64,
    step: Option<&str>,
) -> Result<(String, std::path::PathBuf), RegistryError> {
    let record = registry.pipeline_run(run)?;
    if record.pipeline != pipeline {
        return Err(RegistryError::Invalid(format!(
            "run {run} is a run of pipeline `{}`, not `{pipeline}`",
            record.pipeline
        )));
    }
    // A step with a pin is a `validate` step (only the component pins); a command step that
    // left a file of that name in its outputs is not one.
    let pinned: Vec<String> = registry
        .pinned_schemas(pipeline)?
        .into_iter()
        .map(|p| p.step)
        .collect();
    let with_schema: Vec<(&str, std::path::PathBuf)> = record
        .steps
        .iter()
        .filter(|s| pinned.contains(&s.id))
        .filter_map(|s| {
            let dir = std::path::PathBuf::from(s.outputs_dir.as_deref()?);
            dir.join(INFERRED_SCHEMA)
                .is_file()
                .then_some((s.id.as_str(), dir))
        })
        .collect();
    let ids = || -> String {
        let ids: Vec<&str> = with_schema.iter().map(|(id, _)| *id).collect();
        ids.join(", ")
    };
    match step {
        Some(id) => with_schema
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(s, d)| (s.to_string(), d.clone()))
            .ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "step `{id}` of run {run} inferred no schema{}",
                    if with_schema.is_empty() {
                        " (no `validate` step of that run did; a pruned run keeps no files)"
                            .to_string()
                    } else {
                        format!("; these did: {}", ids())
                    }
                ))
            }),
        None => match with_schema.as_slice() {
            [(id, dir)] => Ok((id.to_string(), dir.clone())),
            [] => Err(RegistryError::Invalid(format!(
                "no `validate` step of run {run} inferred a schema (one with no `schema` argument does; a pruned run keeps no files)"
            ))),
            _ => Err(RegistryError::Invalid(format!(
                "run {run} has several `validate` steps ({}); name one with --step",
                ids()
            ))),
        },
    }
}

/// What a run's data would change in the schema pinned for its `validate` step.
pub fn schema_diff(
    registry: &Registry,
    pipeline: &str,
    run: u64,
    step: Option<&str>,
) -> Result<SchemaDiff, RegistryError> {
    let (step, dir) = validate_step(registry, pipeline, run, step)?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| RegistryError::Io(format!("{}: {e}", dir.join(name).display())))
    };
    let anomalies = match read(ANOMALIES) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| RegistryError::Corrupt(format!("{ANOMALIES} of run {run}: {e}")))?,
        Err(_) => Vec::new(),
    };
    Ok(SchemaDiff {
        pinned: registry.pinned_schema(pipeline, &step)?,
        pipeline: pipeline.to_string(),
        proposed: read(INFERRED_SCHEMA)?,
        run,
        step,
        anomalies,
    })
}

/// Pins the schema inferred from a run's data for its `validate` step, as `by` accepts it.
pub fn accept_schema(
    registry: &Registry,
    pipeline: &str,
    run: u64,
    step: Option<&str>,
    by: &str,
    reason: &str,
) -> Result<crate::registry::PinnedSchema, RegistryError> {
    if reason.trim().is_empty() {
        return Err(RegistryError::Invalid(
            "say why the new schema is right (--reason): it is kept with the pin".into(),
        ));
    }
    let (step, dir) = validate_step(registry, pipeline, run, step)?;
    let text = std::fs::read_to_string(dir.join(INFERRED_SCHEMA))
        .map_err(|e| RegistryError::Io(format!("{}: {e}", dir.join(INFERRED_SCHEMA).display())))?;
    registry.pin_schema(
        pipeline,
        &step,
        crate::registry::SchemaPin::new(text, run, crate::registry::PinnedBy::Accepted, by, reason),
    )
}

/// The version `alias` pointed to at `at_ms`, read from a model's alias history.
pub fn alias_at(history: &[AliasEvent], alias: &str, at_ms: i64) -> Option<u32> {
    history
        .iter()
        .rev()
        .find(|e| e.alias == alias && e.at_ms <= at_ms)
        .and_then(|e| e.to)
}

/// A run's detail as the API shows it.
pub fn run_detail(registry: &Registry, id: u64) -> Result<RunDetail, RegistryError> {
    let run = registry.run(id)?;
    let metrics = registry.latest_metrics(run.id)?;
    let mut series = BTreeMap::new();
    for k in metrics.keys() {
        let points = registry.metric_history(run.id, k, Some(40))?;
        series.insert(k.clone(), points.iter().map(|p| p.value).collect());
    }
    Ok(RunDetail {
        run: RunText(run),
        metrics,
        series,
    })
}

/// A page of runs as the API shows it.
pub fn run_page(registry: &Registry, query: &RunQuery) -> Result<RunPage, RegistryError> {
    let views = registry.search_runs(&query.search()?)?;
    let total = views.len();
    let runs = views
        .into_iter()
        .take(query.limit())
        .map(|RunView { run, metrics }| RunEntry {
            run: RunText(run),
            metrics,
        })
        .collect();
    Ok(RunPage { runs, total })
}

/// A model and its versions as the API shows it, without what only a server knows (what
/// serves it).
pub fn model_detail(registry: &Registry, name: &str) -> Result<ModelDetail, RegistryError> {
    let model = registry.model(name)?;
    let versions = registry
        .versions(name)?
        .into_iter()
        .map(|v| {
            Ok(VersionEntry {
                stage: registry.stage(name, v.version)?,
                version: v,
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    Ok(ModelDetail {
        model,
        versions,
        aliases: registry.aliases(name)?,
        deployment: registry.deployment(name)?,
        live: None,
        problem: None,
    })
}

/// One model of the list as the API shows it, without what only a server knows.
pub fn model_summary(registry: &Registry, name: &str) -> Result<ModelSummary, RegistryError> {
    let model = registry.model(name)?;
    let versions = registry.versions(name)?;
    Ok(ModelSummary {
        name: model.name,
        description: model.description,
        created_ms: model.created_ms,
        versions: versions.len(),
        latest_version: versions.last().map(|v| v.version),
        aliases: registry.aliases(name)?,
        live: None,
        problem: None,
    })
}

/// The experiments with their run counts.
pub fn experiment_list(registry: &Registry) -> Result<ExperimentList, RegistryError> {
    let experiments = registry
        .experiments()?
        .into_iter()
        .map(|e| {
            Ok(ExperimentEntry {
                runs: registry.runs(Some(&e.name))?.len(),
                experiment: e,
            })
        })
        .collect::<Result<_, RegistryError>>()?;
    Ok(ExperimentList { experiments })
}

impl Backend for Registry {
    fn describe(&self) -> String {
        format!("registry {}", self.home().display())
    }

    fn experiments(&self) -> Result<ExperimentList, RegistryError> {
        experiment_list(self)
    }

    fn create_experiment(&self, name: &str) -> Result<Experiment, RegistryError> {
        Registry::create_experiment(self, name)
    }

    fn rename_experiment(&self, old: &str, new: &str) -> Result<Experiment, RegistryError> {
        Registry::rename_experiment(self, old, new)
    }

    fn delete_experiment(&self, name: &str, force: bool) -> Result<usize, RegistryError> {
        Registry::delete_experiment(self, name, force)
    }

    fn runs(&self, query: &RunQuery) -> Result<RunPage, RegistryError> {
        run_page(self, query)
    }

    fn run(&self, id: u64) -> Result<RunDetail, RegistryError> {
        run_detail(self, id)
    }

    fn create_run(&self, new: NewRun) -> Result<Run, RegistryError> {
        Registry::create_run(self, new)
    }

    fn log_params(&self, id: u64, params: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        Registry::log_params(self, id, params).map(|_| ())
    }

    fn set_tags(&self, id: u64, tags: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        Registry::set_tags(self, id, tags).map(|_| ())
    }

    fn log_metrics(&self, id: u64, points: &[(&str, i64, f64)]) -> Result<(), RegistryError> {
        Registry::log_metrics(self, id, points)
    }

    fn flush(&self) -> Result<(), RegistryError> {
        Registry::flush(self)
    }

    fn log_artifact(&self, id: u64, name: &str, path: &Path) -> Result<ArtifactRef, RegistryError> {
        Registry::log_artifact(self, id, name, path)
    }

    fn end_run(&self, id: u64, status: RunStatus) -> Result<Run, RegistryError> {
        Registry::end_run(self, id, status)
    }

    fn delete_run(&self, id: u64) -> Result<(), RegistryError> {
        Registry::delete_run(self, id)
    }

    fn models(&self) -> Result<ModelList, RegistryError> {
        let models = Registry::models(self)?
            .into_iter()
            .map(|m| model_summary(self, &m.name))
            .collect::<Result<_, _>>()?;
        Ok(ModelList { models })
    }

    fn model(&self, name: &str) -> Result<ModelDetail, RegistryError> {
        model_detail(self, name)
    }

    fn register_version(
        &self,
        model: &str,
        run: u64,
        artifact: &str,
        description: &str,
        signature: Option<serde_json::Value>,
    ) -> Result<ModelVersion, RegistryError> {
        Registry::register_version(self, model, run, artifact, description, signature)
    }

    fn resolve(&self, model: &str, which: &str) -> Result<ModelVersion, RegistryError> {
        Registry::resolve(self, model, which)
    }

    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError> {
        Registry::set_alias(
            self,
            model,
            alias,
            version,
            change.expect,
            &change.by,
            &change.reason,
        )
    }

    fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError> {
        Registry::delete_alias(
            self,
            model,
            alias,
            change.expect,
            &change.by,
            &change.reason,
        )
    }

    fn history(&self, model: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        Registry::history(self, model)
    }

    fn delete_model(&self, model: &str, force: bool, by: &str) -> Result<usize, RegistryError> {
        Registry::delete_model(self, model, force, by)
    }

    fn delete_version(
        &self,
        model: &str,
        version: u32,
        force: bool,
        by: &str,
    ) -> Result<(), RegistryError> {
        Registry::delete_version(self, model, version, force, by).map(|_| ())
    }

    fn export_artifact(&self, artifact: &ArtifactRef, dest: &Path) -> Result<(), RegistryError> {
        Registry::export_artifact(self, artifact, dest)
    }

    fn set_deployment(
        &self,
        deployment: Deployment,
        by: &str,
    ) -> Result<Deployment, RegistryError> {
        Registry::set_deployment(self, deployment, by)
    }

    fn reset_deployment(&self, model: &str) -> Result<Deployment, RegistryError> {
        Registry::reset_deployment(self, model)?;
        self.deployment(model)
    }
}
