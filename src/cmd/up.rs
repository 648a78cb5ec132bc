//! `kiln up`: the registry, the scheduler and the model server in one process, on one port.
//! The server's endpoints plus the pipeline API:
//!
//! - `GET /api/pipelines`: the pipelines this process runs, with their schedules;
//! - `POST /api/pipelines/{name}/runs` (`{"params": {…}, "force": ["step"] | "all", "date": "…"}`):
//!   start a run, answered 202 with its id;
//! - `GET /api/pipeline-runs[?pipeline=&limit=]`, `GET /api/pipeline-runs/{id}`,
//!   `GET /api/pipeline-runs/{id}/logs/{step}/{attempt}`;
//! - `POST /api/pipeline-runs/{id}/cancel`, `POST /api/pipelines/{name}/schedule/pause|resume`.
//!
//! Ctrl-C (or SIGTERM) stops the schedules, cancels running steps (recorded as cancelled) and
//! lets requests in flight finish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, Utc};
use clap::Args;
use kiln_core::registry::{PipelineRun, PipelineRunState, Registry};
use kiln_scheduler::pipeline::Pipeline;
use kiln_scheduler::run::Force;
use kiln_scheduler::schedule::{ScheduleLoop, from_ms, next_fire, wall_clock};
use kiln_server::ApiError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::serve::{ServeArgs, announce, pin_compute_threads, shutdown_signal};
use crate::cmd::service::{Scheduled, Service};

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
    service: Arc<Service>,
    pipelines: BTreeMap<String, Known>,
    runs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn load(file: &std::path::Path) -> Result<Pipeline> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = kiln_scheduler::parse(&text);
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-up")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (stop_tx, stop) = watch::channel(false);
        let service = Service::new(registry.clone(), stop.clone());
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
                api: api.clone(),
                models: state.models.clone(),
                on_drift: on_drift.clone(),
                webhook: args.drift_webhook.clone(),
                every: args.drift_check,
            };
            schedules.push(tokio::spawn(watcher.run(stop.clone())));
        }
        let state = state.with_pipelines(api.clone());
        let models = state.models.clone();
        let router = kiln_server::router_with(state, reads(api.clone()), writes(api.clone()));
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

/// Checks served models' drift; on a new alarm (none the check before), starts the model's
/// retraining pipeline and calls the webhook.
struct DriftWatch {
    api: Arc<Api>,
    models: Arc<kiln_server::Models>,
    on_drift: BTreeMap<String, String>,
    webhook: Option<String>,
    every: std::time::Duration,
}

impl DriftWatch {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut alarmed: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
            let names = self.models.names().unwrap_or_default();
            for name in names {
                let Ok(reports) = self.models.drift(&name) else {
                    continue;
                };
                let features: Vec<String> = reports
                    .iter()
                    .flat_map(|r| r.alarms().into_iter().map(|f| f.feature.clone()))
                    .collect();
                let now = !features.is_empty();
                let before = alarmed.insert(name.clone(), now).unwrap_or(false);
                if !now || before {
                    continue;
                }
                tracing::warn!(model = %name, ?features, "drift alarm");
                if let Some(url) = &self.webhook {
                    let body =
                        serde_json::json!({"model": name, "alarms": features, "versions": reports});
                    let url = url.clone();
                    tokio::task::spawn_blocking(move || {
                        let agent: ureq::Agent = ureq::Agent::config_builder()
                            .timeout_global(Some(std::time::Duration::from_secs(10)))
                            .build()
                            .into();
                        if let Err(e) = agent.post(&url).send_json(&body) {
                            tracing::warn!(%url, error = %e, "drift webhook failed");
                        }
                    });
                }
                if let Some(pipeline) = self.on_drift.get(&name)
                    && let Some(known) = self.api.pipelines.get(pipeline)
                {
                    let request = self.api.service.request(
                        &known.file,
                        BTreeMap::new(),
                        "drift",
                        Utc::now(),
                        Force::Nothing,
                    );
                    let service = self.api.service.clone();
                    let pipeline = pipeline.clone();
                    let handle = tokio::spawn(async move {
                        match request {
                            Ok(r) => match service.run(r, &|_| {}).await {
                                Ok(run) => {
                                    tracing::info!(%pipeline, run = run.id, state = run.state.as_str(), "retraining on drift ended")
                                }
                                Err(e) => tracing::error!(%pipeline, "retraining on drift: {e}"),
                            },
                            Err(e) => tracing::error!(%pipeline, "retraining on drift: {e}"),
                        }
                    });
                    if let Ok(mut runs) = self.api.runs.lock() {
                        runs.push(handle);
                    }
                }
            }
        }
    }
}

impl Api {
    /// Starts a run of a known pipeline; its id once recorded.
    async fn start(
        &self,
        name: &str,
        params: BTreeMap<String, String>,
        date: chrono::DateTime<Utc>,
        force: Force,
        trigger: &str,
    ) -> Result<u64, String> {
        let known = self.pipelines.get(name).ok_or_else(|| {
            format!(
                "no pipeline `{name}` in this kiln{}",
                kiln_core::suggest::hint(name, self.pipelines.keys().map(String::as_str))
            )
        })?;
        let request = self
            .service
            .request(&known.file, params, trigger, date, force)
            .map_err(|e| e.to_string())?;
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<Result<u64, String>>();
        let service = self.service.clone();
        let handle = tokio::spawn(async move {
            let id_tx = Mutex::new(Some(id_tx));
            let send = |r: Result<u64, String>| {
                if let Some(tx) = id_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(r);
                }
            };
            match service.run(request, &|run| send(Ok(run.id))).await {
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
            .map_err(|_| "the run stopped before it was recorded".to_string())?
    }
}

impl kiln_server::ui::PipelineControl for Api {
    fn pipelines(&self) -> Vec<(String, String, Option<String>)> {
        self.pipelines
            .iter()
            .map(|(n, k)| {
                (
                    n.clone(),
                    k.file.display().to_string(),
                    k.pipeline.schedule.as_ref().map(|s| s.cron.clone()),
                )
            })
            .collect()
    }

    fn trigger(
        &self,
        pipeline: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + '_>> {
        let pipeline = pipeline.to_string();
        Box::pin(async move {
            self.start(&pipeline, BTreeMap::new(), Utc::now(), Force::Nothing, "ui")
                .await
        })
    }

    fn cancel(&self, run: u64) -> Result<(), String> {
        if self.service.cancel(run) {
            Ok(())
        } else {
            Err(format!("run {run} is not running in this kiln"))
        }
    }
}

fn reads(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/api/pipelines", get(list_pipelines))
        .route("/api/pipeline-runs", get(list_runs))
        .route("/api/pipeline-runs/{id}", get(show_run))
        .route(
            "/api/pipeline-runs/{id}/logs/{step}/{attempt}",
            get(step_log),
        )
        .with_state(api)
}

fn writes(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/api/pipelines/{name}/runs", post(start_run))
        .route("/api/pipeline-runs/{id}/cancel", post(cancel_run))
        .route("/api/pipelines/{name}/schedule/{verb}", post(set_paused))
        .with_state(api)
}

/// Runs registry and file work off the async workers.
async fn off<T: Send + 'static>(
    api: &Arc<Api>,
    f: impl FnOnce(&Api) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || f(&api))
        .await
        .map_err(internal)?
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn registry_error(e: kiln_core::registry::RegistryError) -> ApiError {
    match e {
        kiln_core::registry::RegistryError::NotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        other => internal(other),
    }
}

#[derive(Serialize)]
struct PipelineInfo {
    pipeline: String,
    file: String,
    steps: usize,
    cron: String,
    paused: bool,
    last_fire_ms: Option<i64>,
    next_fire: Option<String>,
}

async fn list_pipelines(State(api): State<Arc<Api>>) -> Result<Json<Vec<PipelineInfo>>, ApiError> {
    off(&api, |api| {
        let now = Utc::now();
        let mut out = Vec::new();
        for (name, known) in &api.pipelines {
            let state = api
                .service
                .registry
                .schedule_state(name)
                .map_err(internal)?;
            let cron = known
                .pipeline
                .schedule
                .as_ref()
                .map_or(String::new(), |s| s.cron.clone());
            let paused = state.as_ref().is_some_and(|s| s.paused);
            out.push(PipelineInfo {
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
            });
        }
        Ok(Json(out))
    })
    .await
}

#[derive(Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(api): State<Arc<Api>>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Vec<PipelineRun>>, ApiError> {
    off(&api, move |api| {
        let runs = api
            .service
            .registry
            .pipeline_runs(q.pipeline.as_deref(), q.limit.unwrap_or(20).min(1000))
            .map_err(internal)?;
        Ok(Json(runs))
    })
    .await
}

async fn show_run(
    State(api): State<Arc<Api>>,
    UrlPath(id): UrlPath<u64>,
) -> Result<Json<PipelineRun>, ApiError> {
    off(&api, move |api| {
        Ok(Json(
            api.service
                .registry
                .pipeline_run(id)
                .map_err(registry_error)?,
        ))
    })
    .await
}

/// The most of a log one request reads (`?bytes=`); the last 64 KiB unless asked.
const LOG_BYTES_DEFAULT: u64 = 64 << 10;
const LOG_BYTES_MOST: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// The first byte to read; the log's end when absent.
    from: Option<u64>,
    bytes: Option<u64>,
}

/// A step's log: the last 64 KiB, or `?from=OFFSET&bytes=N` (at most 16 MiB); `X-Log-Size` is
/// the whole log's size and `X-Log-Start` where this part starts.
async fn step_log(
    State(api): State<Arc<Api>>,
    UrlPath((id, step, attempt)): UrlPath<(u64, String, usize)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let max = q.bytes.unwrap_or(LOG_BYTES_DEFAULT);
    if max > LOG_BYTES_MOST {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bytes={max}: one request reads at most {LOG_BYTES_MOST} bytes of a log; read it in parts with from="
            ),
        ));
    }
    off(&api, move |api| {
        let part = api
            .service
            .registry
            .step_log(id, &step, attempt, q.from, max)
            .map_err(registry_error)?;
        Ok((
            [
                ("content-type", "text/plain; charset=utf-8".to_string()),
                ("x-log-size", part.size.to_string()),
                ("x-log-start", part.start.to_string()),
            ],
            part.text,
        )
            .into_response())
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartRun {
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    force: Option<serde_json::Value>,
    #[serde(default)]
    date: Option<String>,
}

async fn start_run(
    State(api): State<Arc<Api>>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // Unknown pipelines are 404 before the body is looked at.
    api.pipelines.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no pipeline `{name}` in this kiln{}",
                kiln_core::suggest::hint(&name, api.pipelines.keys().map(String::as_str))
            ),
        )
    })?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let start: StartRun = if body.is_empty() {
        StartRun::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed run request: {e}")))?
    };
    let force = match start.force {
        None => Force::Nothing,
        Some(serde_json::Value::String(s)) if s == "all" => Force::All,
        Some(serde_json::Value::Array(a)) => Force::Steps(
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("`force` lists step ids".into()))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(other) => {
            return Err(bad(format!(
                "`force` is \"all\" or a list of step ids, not {other}"
            )));
        }
    };
    let params = start
        .params
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let date = match start.date {
        None => Utc::now(),
        Some(d) => d
            .parse::<NaiveDate>()
            .map_err(|e| bad(format!("`date` {d:?}: {e}; give YYYY-MM-DD")))?
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc(),
    };
    match api.start(&name, params, date, force, "api").await {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"pipeline": name, "run": id, "status": format!("/api/pipeline-runs/{id}")})),
        )
            .into_response()),
        Err(e) => Err(bad(e)),
    }
}

async fn cancel_run(
    State(api): State<Arc<Api>>,
    UrlPath(id): UrlPath<u64>,
) -> Result<Response, ApiError> {
    off(&api, move |api| {
        let run = api
            .service
            .registry
            .pipeline_run(id)
            .map_err(registry_error)?;
        if run.state != PipelineRunState::Running || !api.service.cancel(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("run {id} is not running (it {})", run.state.as_str()),
            ));
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"run": id, "message": format!("cancelling run {id}: its running steps are stopped")})),
        )
            .into_response())
    })
    .await
}

async fn set_paused(
    State(api): State<Arc<Api>>,
    UrlPath((name, verb)): UrlPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let paused = match verb.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no schedule action `{other}`; use pause or resume"),
            ));
        }
    };
    off(&api, move |api| {
        let registry = &api.service.registry;
        let mut state = registry
            .schedule_state(&name)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("pipeline `{name}` has no schedule in this kiln"),
                )
            })?;
        state.paused = paused;
        registry.save_schedule_state(&state).map_err(internal)?;
        Ok(Json(serde_json::json!({
            "pipeline": name,
            "paused": paused,
            "last_fire": state.last_fire_ms.map(|m| from_ms(m).to_rfc3339()),
        })))
    })
    .await
}
