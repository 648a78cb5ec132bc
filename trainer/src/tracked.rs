//! Tracked training: a training, or a sweep of trainings, recorded as runs of a registry
//! wherever it lives ([`Backend`]: a local `KILN_HOME` or a running `kiln up`) — parameters,
//! per-epoch metrics, the data's fingerprint as lineage, and the bundle as artifact `model`.
//! `kiln train`, `kiln sweep` and the pipeline components `train` and `tune` all go through here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use kiln_core::backend::Backend;
use kiln_core::bundle::{self, BundleError};
use kiln_core::data::Table;
use kiln_core::progress::Progress;
use kiln_core::registry::{Lineage, NewRun, RegistryError, Run, RunStatus, run_id_text};

use crate::sweep::{SweepConfig, Trial, TrialSink};
use crate::{NoLogger, RunLogger, TrainConfig, TrainError, TrainOutcome};

/// What went wrong in a tracked training.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Training itself failed; the run is recorded as failed. (The cause is a field of the
    /// message, not a `source`, so that error reports do not print it twice.)
    #[error("run {run} failed: {error}")]
    RunFailed { run: String, error: TrainError },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Io(String),
}

/// A finished training run: its id in the registry (with the bundle as its `model` artifact),
/// what training produced, and the bundle's manifest.
pub struct Trained {
    pub run: u64,
    pub outcome: TrainOutcome,
    pub manifest: bundle::Manifest,
}

impl Trained {
    /// Writes the bundle to `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        bundle::write(dir, &self.manifest, &self.outcome.weights)
    }
}

/// Logs each epoch's metrics to a run, and hands them on to `watch` (a progress line).
struct RunMetrics<'a> {
    backend: &'a dyn Backend,
    run: u64,
    watch: &'a dyn RunLogger,
}

impl RunLogger for RunMetrics<'_> {
    fn log(&self, step: i64, metrics: &[(&str, f64)]) {
        let points: Vec<(&str, i64, f64)> = metrics.iter().map(|(k, v)| (*k, step, *v)).collect();
        if let Err(e) = self.backend.log_metrics(self.run, &points) {
            tracing::warn!("logging metrics to run {}: {e}", run_id_text(self.run));
        }
        self.watch.log(step, metrics);
    }
}

/// A new top-level run of `experiment` on `table` (its fingerprint as the run's lineage).
fn top_run(
    backend: &dyn Backend,
    experiment: &str,
    name: &str,
    params: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    table: &Table,
) -> Result<Run, RegistryError> {
    backend.create_run(NewRun {
        experiment: experiment.to_string(),
        name: name.to_string(),
        params,
        tags,
        parent: None,
        lineage: Lineage {
            dataset_fingerprint: Some(table.fingerprint().to_string()),
            ..Default::default()
        },
    })
}

/// Writes a trained model's bundle to a scratch directory and attaches it to `run` as `model`.
fn attach_bundle(
    backend: &dyn Backend,
    run: u64,
    manifest: &bundle::Manifest,
    outcome: &TrainOutcome,
) -> Result<(), TrackError> {
    let scratch = tempfile::tempdir()
        .map_err(|e| TrackError::Io(format!("creating a temporary directory: {e}")))?;
    let dir = scratch.path().join("bundle");
    bundle::write(&dir, manifest, &outcome.weights)?;
    backend.log_artifact(run, "model", &dir)?;
    Ok(())
}

/// Trains on `table` as a new run of `experiment`: parameters, per-epoch metrics, lineage and
/// the bundle (artifact `model`) go into the registry; `watch` also sees each epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_into(
    backend: &dyn Backend,
    table: &Table,
    data: &Path,
    target: &str,
    config: &TrainConfig,
    experiment: &str,
    tags: BTreeMap<String, String>,
    progress: &dyn Progress,
    watch: &dyn RunLogger,
) -> Result<Trained, TrackError> {
    // Options left to a default that depends on the data (the learning rate) are recorded once
    // training has resolved them.
    let given = crate::fit::hyperparameters(config);
    let mut params: BTreeMap<String, String> = given
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), param_text(v)))
        .collect();
    params.insert("target".into(), target.to_string());
    params.insert("data".into(), data.display().to_string());
    let run = top_run(backend, experiment, "", params, tags, table)?;
    let logger = RunMetrics {
        backend,
        run: run.id,
        watch,
    };
    let outcome = match crate::train(table, target, config, progress, &logger) {
        Ok(o) => o,
        Err(e) => {
            backend.end_run(run.id, RunStatus::Failed)?;
            return Err(TrackError::RunFailed {
                run: run_id_text(run.id),
                error: e,
            });
        }
    };
    let resolved: BTreeMap<String, String> = outcome
        .manifest
        .hyperparameters
        .iter()
        .filter(|(k, v)| given.get(*k).is_some_and(|g| g.is_null()) && !v.is_null())
        .map(|(k, v)| (k.clone(), param_text(v)))
        .collect();
    if !resolved.is_empty() {
        backend.log_params(run.id, &resolved)?;
    }
    let mut manifest = outcome.manifest.clone();
    manifest.lineage.run_id = Some(run_id_text(run.id));
    attach_bundle(backend, run.id, &manifest, &outcome)?;
    backend.end_run(run.id, RunStatus::Finished)?;
    Ok(Trained {
        run: run.id,
        outcome,
        manifest,
    })
}

/// A finished sweep: the parent run, the trials best first, each trial's run, the best run.
pub struct Swept {
    pub parent: u64,
    pub trials: Vec<Trial>,
    pub runs: BTreeMap<usize, u64>,
    pub best: Option<u64>,
}

/// How a trial ended, for a progress line.
pub struct TrialEnd<'a> {
    pub trial: usize,
    pub total: usize,
    pub run: u64,
    /// Why it failed, when it did.
    pub error: Option<&'a TrainError>,
}

/// Each trial a child run of the sweep's run.
struct ChildRuns<'a> {
    backend: &'a dyn Backend,
    experiment: String,
    parent: u64,
    runs: Mutex<BTreeMap<usize, u64>>,
    total: usize,
    ended: &'a (dyn Fn(TrialEnd) + Sync),
}

impl TrialSink for ChildRuns<'_> {
    fn start(
        &self,
        trial: usize,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> Box<dyn RunLogger + '_> {
        let params: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.clone(), param_text(v)))
            .collect();
        let run = self.backend.create_run(NewRun {
            experiment: self.experiment.clone(),
            name: format!("trial-{trial}"),
            params,
            tags: BTreeMap::new(),
            parent: Some(self.parent),
            lineage: Lineage::default(),
        });
        match run {
            Ok(run) => {
                if let Ok(mut m) = self.runs.lock() {
                    m.insert(trial, run.id);
                }
                Box::new(RunMetrics {
                    backend: self.backend,
                    run: run.id,
                    watch: &NoLogger,
                })
            }
            Err(e) => {
                tracing::warn!("creating the run of trial {trial}: {e}");
                Box::new(NoLogger)
            }
        }
    }

    fn finish(&self, trial: usize, result: &Result<(TrainOutcome, f64), TrainError>) {
        let Some(run) = self.runs.lock().ok().and_then(|m| m.get(&trial).copied()) else {
            return;
        };
        let done = (|| -> Result<(), TrackError> {
            match result {
                Ok((outcome, _)) => {
                    let mut manifest = outcome.manifest.clone();
                    manifest.lineage.run_id = Some(run_id_text(run));
                    attach_bundle(self.backend, run, &manifest, outcome)?;
                    self.backend.end_run(run, RunStatus::Finished)?;
                }
                Err(_) => {
                    self.backend.end_run(run, RunStatus::Failed)?;
                }
            }
            Ok(())
        })();
        match done {
            Ok(()) => (self.ended)(TrialEnd {
                trial,
                total: self.total,
                run,
                error: result.as_ref().err(),
            }),
            Err(e) => tracing::warn!("recording trial {trial}: {e}"),
        }
    }
}

/// Runs a sweep as a parent run (named `name`) with one child run per trial; `ended` hears of
/// each trial as it ends.
#[allow(clippy::too_many_arguments)]
pub fn sweep_into(
    backend: &dyn Backend,
    table: &Table,
    target: &str,
    config: &SweepConfig,
    experiment: &str,
    name: &str,
    tags: BTreeMap<String, String>,
    ended: &(dyn Fn(TrialEnd) + Sync),
) -> Result<Swept, TrackError> {
    let total = config.trial_params()?.len();
    let mut params = BTreeMap::new();
    params.insert(
        "sweep".to_string(),
        serde_json::to_string(config).unwrap_or_default(),
    );
    params.insert("target".to_string(), target.to_string());
    let parent = top_run(backend, experiment, name, params, tags, table)?;
    let sink = ChildRuns {
        backend,
        experiment: experiment.to_string(),
        parent: parent.id,
        runs: Mutex::new(BTreeMap::new()),
        total,
        ended,
    };
    let trials = match crate::sweep::sweep(table, target, config, &sink) {
        Ok(t) => t,
        Err(e) => {
            backend.end_run(parent.id, RunStatus::Failed)?;
            return Err(e.into());
        }
    };
    let runs = sink.runs.lock().map(|m| m.clone()).unwrap_or_default();
    let minimised = crate::sweep::is_minimised(&config.metric);
    let best = trials.iter().find(|t| t.score.is_some());
    if let Some(score) = best.and_then(|b| b.score) {
        let figure = if minimised { -score } else { score };
        let mut points = vec![(format!("best_validation_{}", config.metric), figure)];
        points.extend(
            crate::sweep::importance(&trials)
                .into_iter()
                .map(|(option, share)| (format!("importance_{option}"), share)),
        );
        let points: Vec<(&str, i64, f64)> =
            points.iter().map(|(k, v)| (k.as_str(), 0, *v)).collect();
        backend.log_metrics(parent.id, &points)?;
    }
    backend.end_run(parent.id, RunStatus::Finished)?;
    let best = best.and_then(|b| runs.get(&b.index)).copied();
    Ok(Swept {
        parent: parent.id,
        trials,
        runs,
        best,
    })
}

/// A run parameter's text: strings as they are, anything else as JSON.
pub fn param_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
