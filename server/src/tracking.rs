//! MLflow's tracking REST API over kiln's registry, so that the unmodified `mlflow` client
//! (`mlflow.set_tracking_uri("http://127.0.0.1:8080")`) logs into a running kiln: every
//! experiment, run, parameter, tag and metric it logs is a kiln record, seen by `kiln runs`, the
//! web UI and the pipelines.
//!
//! Under `/api/2.0/mlflow/` and `/ajax-api/2.0/mlflow/`: `experiments/create|get|get-by-name|
//! search|update|delete|restore|set-experiment-tag`, `runs/create|get|update|delete|restore|
//! search|log-metric|log-parameter|set-tag|delete-tag|log-batch|log-inputs`,
//! `metrics/get-history`; and the artifact proxy under `/api/2.0/mlflow-artifacts/artifacts/`
//! (upload, list, download) over kiln's content-addressed store. Bodies are MLflow's JSON
//! shapes; errors are
//! `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": …}` with MLflow's HTTP statuses.
//!
//! How the two models meet: MLflow's experiment `0` is kiln's `Default` experiment, any other
//! experiment id is kiln's number; a run id is kiln's (`0000002a`); a run's status is kiln's in
//! capitals; `start_time` and metric timestamps are the times kiln records.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kiln_core::registry::floats;
use kiln_core::registry::query::{Filter, OrderBy, RunSearch};
use kiln_core::registry::{
    Experiment, MetricPoint, NewRun, Registry, RegistryError, Run, RunStatus, parse_run_id,
    run_id_text,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{ApiError, ServeError};
use crate::models::Models;
use crate::state::{AppState, blocking, body};

/// The prefixes the client may use.
pub(crate) const PREFIXES: [&str; 2] = ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"];

/// The prefixes of MLflow's artifact proxy.
const ARTIFACT_PREFIXES: [&str; 2] = [
    "/api/2.0/mlflow-artifacts/artifacts",
    "/ajax-api/2.0/mlflow-artifacts/artifacts",
];

/// The endpoints that only read (GET).
pub(crate) fn reads() -> Router<AppState> {
    let mut router = Router::new();
    for p in ARTIFACT_PREFIXES {
        router = router
            .route(p, get(list_artifacts))
            .route(&format!("{p}/{{*path}}"), get(download_artifact));
    }
    for p in PREFIXES {
        router = router
            .route(&format!("{p}/experiments/get"), get(get_experiment))
            .route(
                &format!("{p}/experiments/get-by-name"),
                get(get_experiment_by_name),
            )
            .route(&format!("{p}/runs/get"), get(get_run))
            .route(&format!("{p}/metrics/get-history"), get(metric_history));
    }
    router
}

/// The endpoints that change state, and the searches (which MLflow sends as POST).
pub(crate) fn writes() -> Router<AppState> {
    let mut router = Router::new();
    for p in ARTIFACT_PREFIXES {
        router = router.route(
            &format!("{p}/{{*path}}"),
            put(upload_artifact).layer(axum::extract::DefaultBodyLimit::disable()),
        );
    }
    for p in PREFIXES {
        router = router
            .route(&format!("{p}/experiments/create"), post(create_experiment))
            .route(&format!("{p}/experiments/search"), post(search_experiments))
            .route(&format!("{p}/runs/create"), post(create_run))
            .route(&format!("{p}/runs/update"), post(update_run))
            .route(&format!("{p}/runs/delete"), post(delete_run))
            .route(&format!("{p}/runs/search"), post(search_runs))
            .route(&format!("{p}/runs/log-metric"), post(log_metric))
            .route(&format!("{p}/runs/log-parameter"), post(log_parameter))
            .route(&format!("{p}/runs/set-tag"), post(set_tag))
            .route(&format!("{p}/runs/delete-tag"), post(delete_tag))
            .route(&format!("{p}/experiments/update"), post(rename_experiment))
            .route(&format!("{p}/experiments/delete"), post(delete_experiment))
            .route(
                &format!("{p}/experiments/set-experiment-tag"),
                post(set_experiment_tag),
            )
            .route(&format!("{p}/runs/log-batch"), post(log_batch))
            .route(&format!("{p}/runs/log-inputs"), post(log_inputs))
            .route(&format!("{p}/runs/restore"), post(restore_run))
            .route(
                &format!("{p}/experiments/restore"),
                post(restore_experiment),
            );
    }
    router
}

/// An error as MLflow writes it, with MLflow's status for it.
#[derive(Debug)]
pub(crate) struct MlflowError(pub(crate) ApiError);

impl From<ApiError> for MlflowError {
    fn from(e: ApiError) -> MlflowError {
        MlflowError(e)
    }
}

impl From<ServeError> for MlflowError {
    fn from(e: ServeError) -> MlflowError {
        MlflowError(ApiError::from(e))
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, code) = match e.status {
            StatusCode::NOT_FOUND => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            // MLflow answers a name that is taken with 400.
            StatusCode::CONFLICT => (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"),
            StatusCode::BAD_REQUEST => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            StatusCode::UNAUTHORIZED => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            StatusCode::SERVICE_UNAVAILABLE => {
                (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE")
            }
            s => (s, "INTERNAL_ERROR"),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e.message, "mlflow request failed");
            "internal error; the server log has the details".to_string()
        } else {
            e.message
        };
        (
            status,
            Json(serde_json::json!({ "error_code": code, "message": message })),
        )
            .into_response()
    }
}

pub(crate) type Answer<T> = Result<Json<T>, MlflowError>;

pub(crate) fn invalid(message: impl Into<String>) -> MlflowError {
    MlflowError(ApiError::bad_request(message))
}

/// A request body, read as MLflow's client writes it (fields it adds in newer versions are
/// ignored).
pub(crate) fn read_body<T: DeserializeOwned>(
    bytes: Result<Bytes, BytesRejection>,
    state: &AppState,
) -> Result<T, MlflowError> {
    let bytes = body(bytes, state.config.max_body)?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("malformed JSON body: {e}")))
}

/// Registry work on a blocking thread, its errors as MLflow's.
pub(crate) async fn on_registry<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, MlflowError> {
    blocking(state, move |models: &Models| Ok(f(models.registry()?)?))
        .await
        .map_err(MlflowError)
}

/// An integer the client may write as a number or, as protobuf's JSON does, as a string.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Option::<Int>::deserialize(d)? {
        None => Ok(None),
        Some(Int::Number(n)) => Ok(Some(n)),
        Some(Int::Text(t)) => t
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not an integer"))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyValue {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: String,
}

#[derive(Serialize)]
struct MlExperiment {
    experiment_id: String,
    name: String,
    artifact_location: String,
    lifecycle_stage: &'static str,
    creation_time: i64,
    last_update_time: i64,
    tags: Vec<KeyValue>,
}

/// MLflow's id of a kiln experiment: `0` is `Default`.
pub(crate) fn experiment_id(e: &Experiment) -> String {
    if e.name == "Default" {
        "0".to_string()
    } else {
        e.id.to_string()
    }
}

fn experiment_of(e: &Experiment) -> MlExperiment {
    MlExperiment {
        experiment_id: experiment_id(e),
        name: e.name.clone(),
        artifact_location: format!("mlflow-artifacts:/{}", experiment_id(e)),
        lifecycle_stage: "active",
        creation_time: e.created_ms,
        last_update_time: e.created_ms,
        tags: pairs(&e.tags),
    }
}

pub(crate) fn pairs(map: &BTreeMap<String, String>) -> Vec<KeyValue> {
    map.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// The kiln experiment an MLflow id names (`0`: `Default`, made when it does not exist yet).
pub(crate) fn experiment_by_id(registry: &Registry, id: &str) -> Result<Experiment, RegistryError> {
    if id == "0" {
        return match registry.experiment("Default") {
            Err(RegistryError::NotFound { .. }) => registry.create_experiment("Default"),
            other => other,
        };
    }
    let number: u64 = id
        .parse()
        .map_err(|_| RegistryError::Invalid(format!("experiment id {id:?} is not a number")))?;
    registry
        .experiments()?
        .into_iter()
        .find(|e| e.id == number && e.name != "Default")
        .ok_or_else(|| RegistryError::NotFound {
            what: "experiment with id",
            name: id.to_string(),
            hint: String::new(),
        })
}

#[derive(Deserialize)]
struct ExperimentQuery {
    experiment_id: Option<String>,
    experiment_name: Option<String>,
}

async fn get_experiment(
    State(state): State<AppState>,
    Query(q): Query<ExperimentQuery>,
) -> Answer<serde_json::Value> {
    let id = q
        .experiment_id
        .ok_or_else(|| invalid("`experiment_id` is required"))?;
    let e = on_registry(&state, move |r| experiment_by_id(r, &id)).await?;
    Ok(Json(serde_json::json!({ "experiment": experiment_of(&e) })))
}

async fn get_experiment_by_name(
    State(state): State<AppState>,
    Query(q): Query<ExperimentQuery>,
) -> Answer<serde_json::Value> {
    let name = q
        .experiment_name
        .ok_or_else(|| invalid("`experiment_name` is required"))?;
    let e = on_registry(&state, move |r| r.experiment(&name)).await?;
    Ok(Json(serde_json::json!({ "experiment": experiment_of(&e) })))
}

#[derive(Deserialize)]
struct CreateExperiment {
    name: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_experiment(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: CreateExperiment = read_body(bytes, &state)?;
    let e = on_registry(&state, move |r| {
        let e = r.create_experiment(&b.name)?;
        if b.tags.is_empty() {
            return Ok(e);
        }
        r.set_experiment_tags(
            &e.name,
            &b.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        )
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "experiment_id": experiment_id(&e) }),
    ))
}

#[derive(Deserialize)]
struct SearchExperiments {
    #[serde(default, deserialize_with = "int")]
    max_results: Option<i64>,
}

async fn search_experiments(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: SearchExperiments = read_body(bytes, &state)?;
    let limit = b.max_results.unwrap_or(1000).clamp(1, 50_000) as usize;
    let list = on_registry(&state, |r| r.experiments()).await?;
    let experiments: Vec<MlExperiment> = list.iter().take(limit).map(experiment_of).collect();
    Ok(Json(serde_json::json!({ "experiments": experiments })))
}

#[derive(Serialize)]
struct MlMetric {
    key: String,
    #[serde(with = "floats::one")]
    value: f64,
    timestamp: i64,
    step: i64,
}

#[derive(Serialize)]
struct RunInfo {
    run_id: String,
    run_uuid: String,
    run_name: String,
    experiment_id: String,
    user_id: String,
    status: &'static str,
    start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<i64>,
    artifact_uri: String,
    lifecycle_stage: &'static str,
}

#[derive(Serialize)]
struct RunData {
    metrics: Vec<MlMetric>,
    params: Vec<KeyValue>,
    tags: Vec<KeyValue>,
}

#[derive(Serialize)]
struct MlRun {
    info: RunInfo,
    data: RunData,
    inputs: serde_json::Value,
}

fn status_text(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "RUNNING",
        RunStatus::Finished => "FINISHED",
        RunStatus::Failed => "FAILED",
        RunStatus::Killed => "KILLED",
    }
}

fn status_of(text: &str) -> Result<RunStatus, MlflowError> {
    Ok(match text {
        "RUNNING" | "SCHEDULED" => RunStatus::Running,
        "FINISHED" => RunStatus::Finished,
        "FAILED" => RunStatus::Failed,
        "KILLED" => RunStatus::Killed,
        other => {
            return Err(invalid(format!(
                "run status {other:?} is not one of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED"
            )));
        }
    })
}

/// A run as MLflow shows it, with its latest metrics.
fn run_of(registry: &Registry, run: &Run) -> Result<MlRun, RegistryError> {
    let metrics = registry.latest_metrics(run.id)?;
    Ok(run_with(run, metrics, &mlflow_ids(registry)?))
}

/// MLflow's id of each kiln experiment, by kiln's id.
pub(crate) fn mlflow_ids(registry: &Registry) -> Result<BTreeMap<u64, String>, RegistryError> {
    Ok(registry
        .experiments()?
        .iter()
        .map(|e| (e.id, experiment_id(e)))
        .collect())
}

/// A run as MLflow shows it, from what the registry already gave: its latest metrics and the
/// MLflow ids of the experiments.
fn run_with(
    run: &Run,
    metrics: BTreeMap<String, kiln_core::registry::MetricPoint>,
    ids: &BTreeMap<u64, String>,
) -> MlRun {
    let experiment = ids
        .get(&run.experiment_id)
        .cloned()
        .unwrap_or_else(|| run.experiment_id.to_string());
    let metrics = metrics
        .into_iter()
        .map(|(key, p)| MlMetric {
            key,
            value: p.value,
            timestamp: p.timestamp_ms,
            step: p.step,
        })
        .collect();
    let id = run_id_text(run.id);
    MlRun {
        info: RunInfo {
            run_id: id.clone(),
            run_uuid: id.clone(),
            run_name: run.name.clone(),
            artifact_uri: format!("mlflow-artifacts:/{experiment}/{id}/artifacts"),
            experiment_id: experiment,
            user_id: run.tags.get("mlflow.user").cloned().unwrap_or_default(),
            status: status_text(run.status),
            start_time: run.start_ms,
            end_time: run.end_ms,
            lifecycle_stage: "active",
        },
        data: RunData {
            metrics,
            params: pairs(&run.params),
            tags: pairs(&run.tags),
        },
        inputs: inputs_of(&run.tags),
    }
}

/// The run tag that holds a dataset input the client logged (`kiln.input.NAME`).
const INPUT_TAG: &str = "kiln.input.";

/// A run's dataset inputs as MLflow shows them, from the tags `log-inputs` wrote.
fn inputs_of(tags: &BTreeMap<String, String>) -> serde_json::Value {
    let datasets: Vec<serde_json::Value> = tags
        .range(INPUT_TAG.to_string()..)
        .take_while(|(k, _)| k.starts_with(INPUT_TAG))
        .filter_map(|(_, v)| serde_json::from_str(v).ok())
        .collect();
    serde_json::json!({ "dataset_inputs": datasets })
}

/// The run id of a request: `run_id`, or the older `run_uuid`.
pub(crate) fn run_id_of(
    run_id: Option<&String>,
    run_uuid: Option<&String>,
) -> Result<u64, MlflowError> {
    let id = run_id
        .or(run_uuid)
        .ok_or_else(|| invalid("`run_id` is required"))?;
    parse_run_id(id).map_err(|e| MlflowError(ApiError::from(e)))
}

#[derive(Deserialize)]
struct RunQuery {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: Option<String>,
}

async fn get_run(
    State(state): State<AppState>,
    Query(q): Query<RunQuery>,
) -> Answer<serde_json::Value> {
    let id = run_id_of(q.run_id.as_ref(), q.run_uuid.as_ref())?;
    let run = on_registry(&state, move |r| run_of(r, &r.run(id)?)).await?;
    Ok(Json(serde_json::json!({ "run": run })))
}

async fn metric_history(
    State(state): State<AppState>,
    Query(q): Query<RunQuery>,
) -> Answer<serde_json::Value> {
    let id = run_id_of(q.run_id.as_ref(), q.run_uuid.as_ref())?;
    let key = q
        .metric_key
        .ok_or_else(|| invalid("`metric_key` is required"))?;
    let metrics = on_registry(&state, move |r| {
        Ok(r.metric_history(id, &key, None)?
            .into_iter()
            .map(|p| MlMetric {
                key: key.clone(),
                value: p.value,
                timestamp: p.timestamp_ms,
                step: p.step,
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(serde_json::json!({ "metrics": metrics })))
}

#[derive(Deserialize)]
struct CreateRun {
    experiment_id: Option<String>,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    run_name: String,
    #[serde(default)]
    tags: Vec<KeyValue>,
    #[serde(default, deserialize_with = "int")]
    start_time: Option<i64>,
}

async fn create_run(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: CreateRun = read_body(bytes, &state)?;
    let run = on_registry(&state, move |r| {
        let experiment = experiment_by_id(r, b.experiment_id.as_deref().unwrap_or("0"))?;
        let mut tags: BTreeMap<String, String> =
            b.tags.into_iter().map(|t| (t.key, t.value)).collect();
        if !b.user_id.is_empty() {
            tags.entry("mlflow.user".into()).or_insert(b.user_id);
        }
        let name = if b.run_name.is_empty() {
            tags.get("mlflow.runName").cloned().unwrap_or_default()
        } else {
            b.run_name
        };
        let run = r.create_run(NewRun {
            experiment: experiment.name,
            name,
            params: BTreeMap::new(),
            tags,
            parent: None,
            lineage: Default::default(),
        })?;
        let run = match b.start_time {
            Some(start) => r.set_run_times(run.id, Some(start), None)?,
            None => run,
        };
        run_of(r, &run)
    })
    .await?;
    Ok(Json(serde_json::json!({ "run": run })))
}

#[derive(Deserialize)]
struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "int")]
    end_time: Option<i64>,
}

async fn update_run(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: UpdateRun = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    let status = b.status.as_deref().map(status_of).transpose()?;
    let run = on_registry(&state, move |r| {
        let run = match status {
            Some(RunStatus::Running) | None => r.run(id)?,
            Some(s) => r.end_run(id, s)?,
        };
        let run = match b.end_time {
            Some(end) if run.status != RunStatus::Running => {
                r.set_run_times(id, None, Some(end))?
            }
            _ => run,
        };
        run_of(r, &run)
    })
    .await?;
    Ok(Json(serde_json::json!({ "run_info": run.info })))
}

#[derive(Deserialize)]
struct RunOnly {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

async fn delete_run(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: RunOnly = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    on_registry(&state, move |r| r.delete_run(id)).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
    #[serde(with = "floats::one")]
    value: f64,
    #[serde(default, deserialize_with = "int")]
    step: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    timestamp: Option<i64>,
}

async fn log_metric(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: LogMetric = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    let now = chrono::Utc::now().timestamp_millis();
    on_registry(&state, move |r| {
        let point = point(b.step, b.timestamp, b.value, now);
        r.log_metric_points(id, &[(b.key.as_str(), point)])?;
        r.flush()
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct KeyValueOfRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
    #[serde(default)]
    value: String,
}

async fn log_parameter(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: KeyValueOfRun = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    on_registry(&state, move |r| {
        r.log_params(id, &BTreeMap::from([(b.key, b.value)]))
            .map(|_| ())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

async fn set_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: KeyValueOfRun = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    on_registry(&state, move |r| {
        r.set_tags(id, &BTreeMap::from([(b.key, b.value)]))
            .map(|_| ())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct KeyOfRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
}

async fn delete_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: KeyOfRun = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    on_registry(&state, move |r| r.delete_tag(id, &b.key).map(|_| ())).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct UpdateExperiment {
    experiment_id: String,
    new_name: Option<String>,
}

async fn rename_experiment(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: UpdateExperiment = read_body(bytes, &state)?;
    let new = b
        .new_name
        .ok_or_else(|| invalid("`new_name` is required"))?;
    on_registry(&state, move |r| {
        let e = experiment_by_id(r, &b.experiment_id)?;
        r.rename_experiment(&e.name, &new).map(|_| ())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct ExperimentTag {
    experiment_id: String,
    key: String,
    #[serde(default)]
    value: String,
}

async fn set_experiment_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: ExperimentTag = read_body(bytes, &state)?;
    on_registry(&state, move |r| {
        let e = experiment_by_id(r, &b.experiment_id)?;
        r.set_experiment_tags(&e.name, &BTreeMap::from([(b.key, b.value)]))
            .map(|_| ())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

/// Deletes an experiment that holds no runs (kiln deletes for good, so one with runs is refused:
/// delete its runs first).
async fn delete_experiment(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: UpdateExperiment = read_body(bytes, &state)?;
    on_registry(&state, move |r| {
        let e = experiment_by_id(r, &b.experiment_id)?;
        r.delete_experiment(&e.name, false).map(|_| ())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct BatchMetric {
    key: String,
    #[serde(with = "floats::one")]
    value: f64,
    #[serde(default, deserialize_with = "int")]
    step: Option<i64>,
    #[serde(default, deserialize_with = "int")]
    timestamp: Option<i64>,
}

/// A metric point as the client sent it: its step (0 when left out) and its time (now when
/// left out).
fn point(step: Option<i64>, timestamp: Option<i64>, value: f64, now: i64) -> MetricPoint {
    MetricPoint {
        step: step.unwrap_or(0),
        timestamp_ms: timestamp.unwrap_or(now),
        value,
    }
}

#[derive(Deserialize)]
struct LogBatch {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(default)]
    metrics: Vec<BatchMetric>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

/// MLflow's limits on one batch, which its client keeps to.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const BATCH_TAGS: usize = 100;

async fn log_batch(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: LogBatch = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    if b.metrics.len() > BATCH_METRICS || b.params.len() > BATCH_PARAMS || b.tags.len() > BATCH_TAGS
    {
        return Err(invalid(format!(
            "a batch holds at most {BATCH_METRICS} metrics, {BATCH_PARAMS} params and \
             {BATCH_TAGS} tags; this one has {}, {} and {}",
            b.metrics.len(),
            b.params.len(),
            b.tags.len()
        )));
    }
    on_registry(&state, move |r| {
        // Parameters first: a changed parameter refuses the whole batch before anything is kept.
        if !b.params.is_empty() {
            r.log_params(
                id,
                &b.params.into_iter().map(|p| (p.key, p.value)).collect(),
            )?;
        }
        if !b.tags.is_empty() {
            r.set_tags(id, &b.tags.into_iter().map(|t| (t.key, t.value)).collect())?;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let points: Vec<(&str, MetricPoint)> = b
            .metrics
            .iter()
            .map(|m| (m.key.as_str(), point(m.step, m.timestamp, m.value, now)))
            .collect();
        if !points.is_empty() {
            r.log_metric_points(id, &points)?;
        }
        r.flush()
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

/// The most experiments one run search names.
const MOST_EXPERIMENTS: usize = 100;

#[derive(Deserialize)]
struct SearchRuns {
    #[serde(default)]
    experiment_ids: Vec<String>,
    #[serde(default)]
    filter: String,
    #[serde(default, deserialize_with = "int")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    #[serde(default)]
    page_token: String,
}

async fn search_runs(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: SearchRuns = read_body(bytes, &state)?;
    if b.experiment_ids.len() > MOST_EXPERIMENTS {
        return Err(invalid(format!(
            "a search names at most {MOST_EXPERIMENTS} experiments; this one names {}",
            b.experiment_ids.len()
        )));
    }
    let filter = (!b.filter.trim().is_empty())
        .then(|| Filter::parse(&b.filter))
        .transpose()
        .map_err(|e| invalid(format!("`filter`: {e}")))?;
    let order = match b.order_by.as_slice() {
        [] => None,
        [one] => Some(OrderBy::parse(one).map_err(|e| invalid(format!("`order_by`: {e}")))?),
        _ => return Err(invalid("`order_by` takes one field here")),
    };
    let limit = b.max_results.unwrap_or(1000).clamp(1, 50_000) as usize;
    let skip: usize = if b.page_token.is_empty() {
        0
    } else {
        b.page_token
            .parse()
            .map_err(|_| invalid("`page_token` is not one this server gave"))?
    };
    let (runs, more) = on_registry(&state, move |r| {
        let mut views = Vec::new();
        let experiments = if b.experiment_ids.is_empty() {
            vec![None]
        } else {
            b.experiment_ids
                .iter()
                .map(|id| experiment_by_id(r, id).map(|e| Some(e.name)))
                .collect::<Result<_, _>>()?
        };
        for experiment in experiments {
            views.extend(r.search_runs(&RunSearch {
                experiment,
                filter: filter.clone(),
                ..RunSearch::default()
            })?);
        }
        if let Some(o) = &order {
            o.sort(&mut views);
        }
        let more = views.len() > skip + limit;
        let ids = mlflow_ids(r)?;
        let page: Vec<MlRun> = views
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|v| run_with(&v.run, v.metrics, &ids))
            .collect();
        Ok((page, more))
    })
    .await?;
    let mut answer = serde_json::json!({ "runs": runs });
    if more {
        answer["next_page_token"] = serde_json::json!((skip + limit).to_string());
    }
    Ok(Json(answer))
}

/// An artifact path as the client's artifact URI makes it, `EXPERIMENT/RUN/artifacts[/PATH]`:
/// the run, and the path inside its artifacts (empty for their top).
pub(crate) fn artifact_path(path: &str) -> Result<(u64, String), MlflowError> {
    let mut parts = path.trim_matches('/').splitn(4, '/');
    let (_experiment, run, root, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    match (run, root) {
        (Some(run), Some("artifacts")) => Ok((
            parse_run_id(run).map_err(|e| MlflowError(ApiError::from(e)))?,
            rest.unwrap_or("").to_string(),
        )),
        _ => Err(invalid(format!(
            "artifact path {path:?} is not EXPERIMENT/RUN/artifacts/PATH"
        ))),
    }
}

/// Stores one file of a run's artifacts, streamed to disk and named by its digest.
async fn upload_artifact(
    State(state): State<AppState>,
    Path(path): Path<String>,
    request: Request,
) -> Answer<serde_json::Value> {
    let (run, inner) = artifact_path(&path)?;
    if inner.is_empty() {
        return Err(invalid("name the file: EXPERIMENT/RUN/artifacts/PATH"));
    }
    crate::runs::streamed(&state, request, move |registry, body| {
        registry.put_run_file(run, &inner, body)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct ListQuery {
    path: Option<String>,
}

#[derive(Serialize)]
struct ListedFile {
    path: String,
    is_dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_size: Option<u64>,
}

/// The files and directories directly under `?path=EXPERIMENT/RUN/artifacts[/DIR]`.
async fn list_artifacts(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Answer<serde_json::Value> {
    let (run, inner) = artifact_path(q.path.as_deref().unwrap_or(""))?;
    let files = on_registry(&state, move |r| r.list_run_files(run, &inner)).await?;
    let files: Vec<ListedFile> = files
        .into_iter()
        .map(|f| ListedFile {
            path: f.name,
            is_dir: f.is_dir,
            file_size: f.size,
        })
        .collect();
    Ok(Json(serde_json::json!({ "files": files })))
}

/// One file's bytes, checked against its digest before they are sent.
async fn download_artifact(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Result<Response, MlflowError> {
    let (run, inner) = artifact_path(&path)?;
    let bytes = on_registry(&state, move |r| r.read_run_file(run, &inner)).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from(bytes),
    )
        .into_response())
}

#[derive(Deserialize, Serialize)]
struct Dataset {
    name: String,
    digest: String,
    #[serde(default)]
    source_type: String,
    #[serde(default)]
    source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct DatasetInput {
    #[serde(default)]
    tags: Vec<KeyValue>,
    dataset: Dataset,
}

#[derive(Deserialize)]
struct LogInputs {
    run_id: String,
    #[serde(default)]
    datasets: Vec<DatasetInput>,
}

/// The datasets a run read (`mlflow.log_input`): each kept as a run tag, `kiln.input.NAME`,
/// and shown back as the run's `inputs`.
async fn log_inputs(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: LogInputs = read_body(bytes, &state)?;
    let id = run_id_of(Some(&b.run_id), None)?;
    let mut tags = BTreeMap::new();
    for input in b.datasets {
        let key = format!("{INPUT_TAG}{}", input.dataset.name);
        let value =
            serde_json::to_string(&input).map_err(|e| invalid(format!("dataset input: {e}")))?;
        tags.insert(key, value);
    }
    on_registry(&state, move |r| r.set_tags(id, &tags).map(|_| ())).await?;
    Ok(Json(serde_json::json!({})))
}

/// kiln deletes a run at once (its metrics and unshared artifacts go with it), so there is no
/// deleted run to restore: a run that is there is answered as restored, one that is gone is not.
async fn restore_run(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: RunOnly = read_body(bytes, &state)?;
    let id = run_id_of(b.run_id.as_ref(), b.run_uuid.as_ref())?;
    on_registry(&state, move |r| match r.run(id) {
        Err(RegistryError::NotFound { .. }) => Err(RegistryError::NotFound {
            what: "run",
            name: run_id_text(id),
            hint: " to restore: kiln deletes runs at once, with nothing kept to restore".into(),
        }),
        other => other.map(|_| ()),
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

/// As [`restore_run`], for experiments (kiln deletes only empty ones).
async fn restore_experiment(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    #[derive(Deserialize)]
    struct Restore {
        experiment_id: String,
    }
    let b: Restore = read_body(bytes, &state)?;
    on_registry(&state, move |r| {
        match experiment_by_id(r, &b.experiment_id) {
            Err(RegistryError::NotFound { .. }) => Err(RegistryError::NotFound {
                what: "experiment with id",
                name: b.experiment_id.clone(),
                hint: " to restore: kiln deletes experiments at once, with nothing kept to \
                       restore"
                    .into(),
            }),
            other => other.map(|_| ()),
        }
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}
