//! The pipeline API of a server whose process runs pipelines (`kiln up`), and the drift watcher
//! that starts a model's retraining pipeline on an alarm. The server knows pipelines only
//! through [`PipelineControl`]; the binary implements it with the scheduler. Bodies are the
//! types of [`kiln_core::wire::pipelines`].
//!
//! - `GET /api/pipelines`: the pipelines with their schedules;
//! - `POST /api/pipelines/{name}/runs` ([`StartRun`]): start a run, 202 with its id;
//! - `GET /api/pipeline-runs[?pipeline=&limit=]`, `GET /api/pipeline-runs/{id}`;
//! - `GET /api/pipeline-runs/{id}/logs/{step}/{attempt}[?from=&bytes=]`;
//! - `POST /api/pipeline-runs/{id}/cancel`, `POST /api/pipelines/{name}/schedule/pause|resume`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::registry::{PinnedSchema, PipelineRun, PipelineRunState};
use kiln_core::wire::pipelines::{
    AcceptSchema, Cancelling, PipelineInfo, Prune, PruneAnswer, ScheduleChanged, SchemaDiff,
    StartRun, Started,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::openapi::{Api, answers, answers_raw};
use crate::state::AppState;

pub use crate::control::{PipelineControl, StartError};

/// The pipeline API's reads.
pub(crate) fn reads() -> Api {
    Api::reads()
        .get(
            "/api/pipelines",
            list_pipelines,
            answers::<Vec<PipelineInfo>>("List the pipelines with their schedules"),
        )
        .get(
            "/api/pipeline-runs",
            list_runs,
            answers::<Vec<PipelineRun>>("List pipeline runs, newest first").query::<RunsQuery>(),
        )
        .get(
            "/api/pipeline-runs/{id}",
            show_run,
            answers::<PipelineRun>("Show a pipeline run and its steps"),
        )
        .get(
            "/api/pipeline-runs/{id}/logs/{step}/{attempt}",
            step_log,
            answers_raw(
                "A step's log: the last 64 KiB, or from= and bytes=",
                "text/plain",
            )
            .query::<LogQuery>(),
        )
        .get(
            "/api/pipelines/{name}/schemas",
            pinned_schemas,
            answers::<Vec<PinnedSchema>>(
                "The schemas pinned for a pipeline's validate steps, with the pins they replaced",
            ),
        )
        .get(
            "/api/pipelines/{name}/schemas/diff",
            schema_diff,
            answers::<SchemaDiff>("What a run's data would change in the pinned schema")
                .query::<DiffQuery>(),
        )
}

/// The pipeline API's changes.
pub(crate) fn writes() -> Api {
    Api::writes()
        .post(
            "/api/pipelines/{name}/runs",
            start_run,
            answers::<Started>("Start a run (202; the body is optional)")
                .takes::<StartRun>()
                .status(202),
        )
        .post(
            "/api/pipeline-runs/{id}/cancel",
            cancel_run,
            answers::<Cancelling>("Cancel a running run (202)").status(202),
        )
        .post(
            "/api/pipeline-runs/prune",
            prune,
            answers::<PruneAnswer>("Delete old finished runs and their logs").takes::<Prune>(),
        )
        .post(
            "/api/pipelines/{name}/schedule/{verb}",
            set_paused,
            answers::<ScheduleChanged>(
                "Pause or resume a pipeline's schedule (verb: pause or resume)",
            ),
        )
        .post(
            "/api/pipelines/{name}/schemas/accept",
            accept_schema,
            answers::<PinnedSchema>("Pin the schema inferred from a run's data, with who and why")
                .takes::<AcceptSchema>(),
        )
}

/// `?run=RUN[&step=ID]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    run: u64,
    step: Option<String>,
}

async fn pinned_schemas(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<PinnedSchema>>, ApiError> {
    off(&state, move |s| {
        Ok(Json(s.models.registry()?.pinned_schemas(&name)?))
    })
    .await
}

async fn schema_diff(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Json<SchemaDiff>, ApiError> {
    off(&state, move |s| {
        Ok(Json(kiln_core::backend::schema_diff(
            s.models.registry()?,
            &name,
            q.run,
            q.step.as_deref(),
        )?))
    })
    .await
}

async fn accept_schema(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<PinnedSchema>, ApiError> {
    let request: AcceptSchema = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    off(&state, move |s| {
        let by = request.by.clone().unwrap_or_else(|| s.config.actor.clone());
        Ok(Json(kiln_core::backend::accept_schema(
            s.models.registry()?,
            &name,
            request.run,
            request.step.as_deref(),
            &by,
            &request.reason,
        )?))
    })
    .await
}

fn control(state: &AppState) -> Result<Arc<dyn PipelineControl>, ApiError> {
    state.pipelines.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server runs no pipelines; `kiln up --pipeline FILE` does",
        )
    })
}

/// Runs registry and file work off the async workers.
async fn off<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn prune(State(state): State<AppState>, body: Bytes) -> Result<Json<PruneAnswer>, ApiError> {
    let control = control(&state)?;
    let request: Prune = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    off(&state, move |_| {
        Ok(Json(PruneAnswer {
            pruned: control.prune(&request)?,
        }))
    })
    .await
}

async fn list_pipelines(
    State(state): State<AppState>,
) -> Result<Json<Vec<PipelineInfo>>, ApiError> {
    let control = control(&state)?;
    off(&state, move |_| Ok(Json(control.pipelines()))).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    pipeline: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Vec<PipelineRun>>, ApiError> {
    off(&state, move |s| {
        let runs = s
            .models
            .registry()?
            .pipeline_runs(q.pipeline.as_deref(), q.limit.unwrap_or(20).min(1000))
            .map_err(ApiError::from)?;
        Ok(Json(runs))
    })
    .await
}

async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<PipelineRun>, ApiError> {
    off(&state, move |s| {
        Ok(Json(
            s.models
                .registry()?
                .pipeline_run(id)
                .map_err(ApiError::from)?,
        ))
    })
    .await
}

/// The most of a log one request reads (`?bytes=`); the last 64 KiB unless asked.
const LOG_BYTES_DEFAULT: u64 = 64 << 10;
const LOG_BYTES_MOST: u64 = 16 << 20;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// The first byte to read; the log's end when absent.
    from: Option<u64>,
    bytes: Option<u64>,
}

/// A step's log: the last 64 KiB, or `?from=OFFSET&bytes=N` (at most 16 MiB); `X-Log-Size` is
/// the whole log's size and `X-Log-Start` where this part starts.
async fn step_log(
    State(state): State<AppState>,
    Path((id, step, attempt)): Path<(u64, String, usize)>,
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
    off(&state, move |s| {
        let part = s
            .models
            .registry()?
            .step_log(id, &step, attempt, q.from, max)
            .map_err(ApiError::from)?;
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

async fn start_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let control = control(&state)?;
    let start: StartRun = if body.is_empty() {
        StartRun::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "malformed run request: {e} (it takes `params`, `force` (\"all\" or step ids) and `date`)"
            ))
        })?
    };
    match control.start(&name, start, "api").await {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            Json(Started {
                pipeline: name,
                run,
                status: format!("/api/pipeline-runs/{run}"),
            }),
        )
            .into_response()),
        Err(StartError::UnknownPipeline(m)) => Err(ApiError::new(StatusCode::NOT_FOUND, m)),
        Err(StartError::Refused(m)) => Err(ApiError::bad_request(m)),
    }
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let control = control(&state)?;
    off(&state, move |s| {
        let run = s
            .models
            .registry()?
            .pipeline_run(id)
            .map_err(ApiError::from)?;
        if run.state != PipelineRunState::Running || !control.cancel(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("run {id} is not running (it {})", run.state.as_str()),
            ));
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(Cancelling {
                run: id,
                message: format!("cancelling run {id}: its running steps are stopped"),
            }),
        )
            .into_response())
    })
    .await
}

async fn set_paused(
    State(state): State<AppState>,
    Path((name, verb)): Path<(String, String)>,
) -> Result<Json<ScheduleChanged>, ApiError> {
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
    off(&state, move |s| {
        let registry = s.models.registry()?;
        let mut schedule = registry
            .schedule_state(&name)
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("pipeline `{name}` has no schedule in this kiln"),
                )
            })?;
        schedule.paused = paused;
        registry
            .save_schedule_state(&schedule)
            .map_err(ApiError::from)?;
        Ok(Json(ScheduleChanged {
            pipeline: name,
            paused,
            last_fire: schedule
                .last_fire_ms
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())),
        }))
    })
    .await
}

/// Watches served models' drift: on a new alarm (none at the check before) it starts the model's
/// retraining pipeline and tells `notify` (the binary posts it to a webhook).
pub struct DriftWatch {
    pub models: Arc<crate::Models>,
    pub control: Arc<dyn PipelineControl>,
    /// Model → the pipeline that retrains it.
    pub on_drift: BTreeMap<String, String>,
    /// Gets `{"model", "alarms", "versions"}` for each new alarm.
    pub notify: Option<Arc<dyn Fn(serde_json::Value) + Send + Sync>>,
    pub every: Duration,
}

impl DriftWatch {
    /// Checks every `every` until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
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
            let models = self.models.clone();
            let Ok(Ok(names)) = tokio::task::spawn_blocking(move || models.names()).await else {
                continue;
            };
            for name in names {
                let (models, model) = (self.models.clone(), name.clone());
                let Ok(Ok(reports)) =
                    tokio::task::spawn_blocking(move || models.drift(&model)).await
                else {
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
                if let Some(notify) = &self.notify {
                    notify(
                        serde_json::json!({"model": name, "alarms": features, "versions": reports}),
                    );
                }
                if let Some(pipeline) = self.on_drift.get(&name) {
                    match self
                        .control
                        .start(pipeline, StartRun::default(), "drift")
                        .await
                    {
                        Ok(run) => {
                            tracing::info!(%pipeline, run, model = %name, "retraining on drift")
                        }
                        Err(e) => tracing::error!(%pipeline, "retraining on drift: {e:?}"),
                    }
                }
            }
        }
    }
}
