//! `kiln up`: the registry, the scheduler and the model server in one process, on one port. The
//! server's endpoints (the pipeline API among them, `kiln_server::pipelines`) answer; the
//! scheduler's runs reach them through `crate::components::control::PipelineApi`; this module starts
//! the schedules and the drift watcher and wires them together.
//!
//! Ctrl-C (or SIGTERM) stops the schedules, cancels running steps (recorded as cancelled) and
//! lets requests in flight finish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use kiln_core::registry::Registry;
use kiln_scheduler::schedule::{ScheduleLoop, wall_clock};
use kiln_scheduler::service::Scheduled;
use kiln_server::pipelines::DriftWatch;
use tokio::sync::watch;

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::serve::{ServeArgs, announce, pin_compute_threads, shutdown_signal};
use crate::components::control::{PipelineApi, known_pipelines};

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

pub fn up(home: &Home, args: UpArgs) -> Result<Outcome> {
    pin_compute_threads()?;
    let registry = Arc::new(Registry::open(&home.dir)?);
    let pipelines = known_pipelines(&args.pipelines, &registry)?;
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
    let (selection, config) = args.serve.parts(home)?;
    let rt = crate::cmd::serve::async_runtime("kiln-up")?;
    rt.block_on(async move {
        let (stop_tx, stop) = watch::channel(false);
        let service = crate::components::service(registry.clone(), stop.clone());
        let recovered = service.recover()?;
        if !recovered.is_empty() {
            crate::ui::status(&format!(
                "pipeline runs left running by a stopped kiln, recorded as cancelled: {recovered:?}"
            ));
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
        let api = Arc::new(PipelineApi::new(service, pipelines));
        let listeners = args.serve.bind().await?;
        let bound = listeners.http.local_addr()?;
        announce(&state, &listeners, "kiln up:")?;
        crate::ui::status(&format!(
            "kiln up: {count} pipelines ({scheduled} scheduled) at http://{bound}/api/pipelines"
        ));
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
        let router = kiln_server::router(state.clone());
        let shutdown = async move {
            shutdown_signal().await;
            crate::ui::status("cancelling running pipeline steps");
            let _ = stop_tx.send(true);
        };
        kiln_server::serve_all(listeners, router, state, shutdown).await?;
        tokio::task::spawn_blocking(move || models.flush_log()).await?;
        for s in schedules {
            let _ = s.await;
        }
        api.finish_runs().await;
        anyhow::Ok(())
    })?;
    // A component that cannot stop early (a sweep) is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    crate::ui::status("kiln stopped");
    Ok(Outcome::Ok)
}

/// Posts each drift alarm to `url` (off the async workers; a failure is logged).
fn webhook(url: String) -> Arc<dyn Fn(serde_json::Value) + Send + Sync> {
    Arc::new(move |body| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) =
                kiln_server::client::post_json(&url, &body, std::time::Duration::from_secs(10))
            {
                tracing::warn!(%url, error = %e, "drift webhook failed");
            }
        });
    })
}
