//! `kiln up`: the registry, the scheduler and the model server in one process, on one port. The
//! server's endpoints (the pipeline API among them, `kiln_server::pipelines`) answer; this module
//! wires the scheduler's runs to them through `PipelineControl`.
//!
//! Ctrl-C (or SIGTERM) stops the schedules, cancels running steps (recorded as cancelled) and
//! lets requests in flight finish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use chrono::{NaiveDate, Utc};
use clap::Args;
use kiln_core::registry::{Registry, RegistryError};
use kiln_core::wire::pipelines::{ForceSteps, PipelineInfo, Prune, Pruned, StartRun};
use kiln_scheduler::pipeline::Pipeline;
use kiln_scheduler::run::Force;
use kiln_scheduler::schedule::{ScheduleLoop, next_fire, wall_clock};
use kiln_scheduler::service::{Scheduled, Service};
use kiln_server::pipelines::{DriftWatch, PipelineControl, StartError};
use tokio::sync::watch;

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::serve::{ServeArgs, announce, pin_compute_threads, shutdown_signal};
use kiln_components::Builtins;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A pipeline file to schedule and to run over the API (repeatable). Pipelines scheduled by
    /// an earlier `kiln up` are scheduled again while their files exist.
    #[arg(long = "pipeline", value_name = "FILE")]
    pipelines: Vec<PathBuf>,
    /// Run a pipeline when a model's features drift: MODEL=PIPELINE (repeatable).
    #[arg(long = "retrain-on-drift", value_name = "MODEL=PIPELINE")]
    retrain_on_drift: Vec<String>,
    /// POST each new drift alarm (the model's drift report as JSON) to this URL.
    #[arg(long, value_name = "URL")]
    drift_webhook: Option<String>,
    /// How often drift is checked for alarms.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drift_check: std::time::Duration,
    #[command(flatten)]
    serve: ServeArgs,
}

/// A pipeline this process knows.
struct Known {
    file: PathBuf,
    pipeline: Pipeline,
}

struct Api {
    service: Arc<Service<Builtins>>,
    pipelines: BTreeMap<String, Known>,
    runs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn load(file: &std::path::Path) -> Result<Pipeline> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = kiln_scheduler::parse_with(&text, kiln_components::CATALOGUE);
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

pub fn up(home: &Home, args: UpArgs) -> Result<Outcome> {
    pin_compute_threads()?;
    let registry = Arc::new(Registry::open(&home.dir)?);
    let mut pipelines: BTreeMap<String, Known> = BTreeMap::new();
    for file in &args.pipelines {
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
    let mut on_drift: BTreeMap<String, String> = BTreeMap::new();
    for pair in &args.retrain_on_drift {
        let (model, pipeline) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--retrain-on-drift {pair:?}: give MODEL=PIPELINE"))?;
        if !pipelines.contains_key(pipeline) {
            bail!(
                "--retrain-on-drift {pair}: no pipeline `{pipeline}`{}; add it with --pipeline FILE",
                kiln_core::suggest::hint(pipeline, pipelines.keys().map(String::as_str))
            );
        }
        on_drift.insert(model.to_string(), pipeline.to_string());
    }
    let (addr, selection, config) = args.serve.parts(home)?;
    let rt = crate::cmd::serve::async_runtime("kiln-up")?;
    rt.block_on(async move {
        let (stop_tx, stop) = watch::channel(false);
        let service = kiln_components::service(registry.clone(), stop.clone());
        let recovered = service.recover()?;
        if !recovered.is_empty() {
            eprintln!(
                "pipeline runs left running by a stopped kiln, recorded as cancelled: {recovered:?}"
            );
        }
        args.serve.start_backups(registry.clone(), home);
        let state = kiln_server::start(registry.clone(), selection, config).await?;
        let mut schedules = Vec::new();
        for known in pipelines.values() {
            if let Some(schedule) = &known.pipeline.schedule {
                let l = ScheduleLoop {
                    pipeline: known.pipeline.name.clone(),
                    file: known.file.display().to_string(),
                    schedule: schedule.clone(),
                    registry: registry.clone(),
                    launcher: Arc::new(Scheduled {
                        service: service.clone(),
                        file: known.file.clone(),
                    }),
                    clock: wall_clock(),
                };
                let stop = stop.clone();
                schedules.push(tokio::spawn(async move {
                    if let Err(e) = l.run(stop).await {
                        tracing::error!("{e}");
                    }
                }));
            }
        }
        let scheduled = schedules.len();
        let count = pipelines.len();
        let api = Arc::new(Api {
            service,
            pipelines,
            runs: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        announce(&state, bound, "kiln up:")?;
        eprintln!(
            "kiln up: {count} pipelines ({scheduled} scheduled) at http://{bound}/api/pipelines"
        );
        if !on_drift.is_empty() || args.drift_webhook.is_some() {
            let watcher = DriftWatch {
                models: state.models.clone(),
                control: api.clone(),
                on_drift: on_drift.clone(),
                notify: args.drift_webhook.clone().map(webhook),
                every: args.drift_check,
            };
            schedules.push(tokio::spawn(watcher.run(stop.clone())));
        }
        let state = state.with_pipelines(api.clone());
        let models = state.models.clone();
        let router = kiln_server::router(state);
        let shutdown = async move {
            shutdown_signal().await;
            eprintln!("cancelling running pipeline steps");
            let _ = stop_tx.send(true);
        };
        kiln_server::serve(listener, router, shutdown).await?;
        tokio::task::spawn_blocking(move || models.flush_log()).await?;
        for s in schedules {
            let _ = s.await;
        }
        let runs: Vec<_> = api
            .runs
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default();
        for r in runs {
            let _ = r.await;
        }
        anyhow::Ok(())
    })?;
    // A component that cannot stop early (a sweep) is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    eprintln!("kiln stopped");
    Ok(Outcome::Ok)
}

/// Posts each drift alarm to `url` (off the async workers; a failure is logged).
fn webhook(url: String) -> Arc<dyn Fn(serde_json::Value) + Send + Sync> {
    Arc::new(move |body| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = kiln_client::post_json(&url, &body, std::time::Duration::from_secs(10))
            {
                tracing::warn!(%url, error = %e, "drift webhook failed");
            }
        });
    })
}

impl Api {
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
        let date = match &request.date {
            None => Utc::now(),
            Some(d) => match d.parse::<NaiveDate>() {
                Ok(day) => day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
                Err(_) => chrono::DateTime::parse_from_rfc3339(d)
                    .map_err(|e| {
                        StartError::Refused(format!(
                            "`date` {d:?}: {e}; give YYYY-MM-DD or an RFC 3339 time"
                        ))
                    })?
                    .with_timezone(&Utc),
            },
        };
        let force = match request.force.clone() {
            None => Force::Nothing,
            Some(ForceSteps::All(_)) => Force::All,
            Some(ForceSteps::Steps(steps)) => Force::Steps(steps.into_iter().collect()),
        };
        let run = self
            .service
            .request(&known.file, request.param_texts(), trigger, date, force)
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

impl PipelineControl for Api {
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
