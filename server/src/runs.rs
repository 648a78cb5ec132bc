//! The tracking API: experiments, runs (create, log, end, delete), and artifacts (objects
//! uploaded by digest, then attached to a run) — what `kiln runs …`, `kiln experiments …` and
//! `kiln train --server` do against a server that owns its `KILN_HOME`.

use std::io::Read;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use kiln_core::backend;
use kiln_core::registry::{
    ArtifactRef, Experiment, Registry, RegistryError, parse_run_id, run_id_text,
};
use kiln_core::wire::experiments::{
    CreateExperiment, Delete, Deleted, ExperimentList, RenameExperiment,
};
use kiln_core::wire::runs::{
    AttachArtifact, CreateRun, EndRun, LogToRun, Logged, RunDetail, RunPage, RunQuery, RunText,
};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::openapi::{Api, answers, answers_nothing, answers_raw};
use crate::state::{AppState, blocking, body, optional_json, parse_json};

/// Endpoints that only read.
pub(crate) fn reads() -> Api {
    Api::reads()
        .get(
            "/api/experiments",
            list_experiments,
            answers::<ExperimentList>("List the experiments with their run counts"),
        )
        .get(
            "/api/runs",
            list_runs,
            answers::<RunPage>("Find runs: by experiment, status, parent, a filter, an order")
                .query::<RunQuery>(),
        )
        .get(
            "/api/runs/{id}",
            show_run,
            answers::<RunDetail>("Show a run with its latest metrics and their curves"),
        )
        .get(
            "/api/artifacts/{digest}",
            download,
            answers_raw(
                "Download an artifact object by its BLAKE3 digest",
                "application/octet-stream",
            ),
        )
        .head(
            "/api/artifacts/{digest}",
            exists,
            answers_nothing("Whether an artifact object is stored (200, else 404)"),
        )
}

/// Endpoints that change state; they need the token when one is set.
pub(crate) fn writes() -> Api {
    Api::writes()
        .post(
            "/api/experiments",
            create_experiment,
            answers::<Experiment>("Create an experiment").takes::<CreateExperiment>(),
        )
        .delete(
            "/api/experiments/{name}",
            delete_experiment,
            answers::<Deleted>("Delete an experiment and its runs (a JSON body is optional)")
                .takes::<Delete>(),
        )
        .post(
            "/api/experiments/{name}/rename",
            rename_experiment,
            answers::<Experiment>("Rename an experiment").takes::<RenameExperiment>(),
        )
        .post(
            "/api/runs",
            create_run,
            answers::<RunText>("Start a run").takes::<CreateRun>(),
        )
        .delete(
            "/api/runs/{id}",
            delete_run,
            answers::<Deleted>("Delete a run"),
        )
        .post(
            "/api/runs/{id}/log",
            log,
            answers::<Logged>("Log params, metrics and tags to a run").takes::<LogToRun>(),
        )
        .post(
            "/api/runs/{id}/end",
            end,
            answers::<RunText>("End a run with its status").takes::<EndRun>(),
        )
        .post(
            "/api/runs/{id}/artifacts",
            attach,
            answers::<ArtifactRef>("Attach uploaded objects to a run as a named artifact")
                .takes::<AttachArtifact>(),
        )
        .put_unlimited(
            "/api/artifacts/{digest}",
            upload,
            answers::<Uploaded>(
                "Upload an artifact object (the raw bytes; checked against the digest)",
            ),
        )
}

async fn list_experiments(State(state): State<AppState>) -> Result<Json<ExperimentList>, ApiError> {
    blocking(&state, |models| {
        Ok(Json(backend::experiment_list(models.registry()?)?))
    })
    .await
}

async fn create_experiment(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Experiment>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: CreateExperiment = parse_json(&bytes)?;
        Ok(Json(models.registry()?.create_experiment(&b.name)?))
    })
    .await
}

async fn rename_experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Experiment>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: RenameExperiment = parse_json(&bytes)?;
        Ok(Json(models.registry()?.rename_experiment(&name, &b.name)?))
    })
    .await
}

async fn delete_experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: Delete = optional_json(&bytes)?;
        let with = models.registry()?.delete_experiment(&name, b.force)?;
        Ok(Json(Deleted {
            deleted: name,
            with,
        }))
    })
    .await
}

/// `?experiment=&status=&parent=&where=&order_by=&limit=` as `kiln runs list` takes them.
async fn list_runs(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RunPage>, ApiError> {
    let raw = raw.unwrap_or_default();
    const KEYS: [&str; 6] = [
        "experiment",
        "status",
        "parent",
        "where",
        "order_by",
        "limit",
    ];
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("the query string: {e}")))?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "no query parameter `{k}` (it takes {}){}",
            KEYS.join(", "),
            kiln_core::suggest::hint(k, KEYS)
        )));
    }
    let query: RunQuery = serde_urlencoded::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("the query string: {e}")))?;
    blocking(&state, move |models| {
        Ok(Json(backend::run_page(models.registry()?, &query)?))
    })
    .await
}

/// One run with its latest metrics and each metric's curve (at most 40 points).
async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    blocking(&state, move |models| {
        Ok(Json(backend::run_detail(
            models.registry()?,
            parse_run_id(&id)?,
        )?))
    })
    .await
}

async fn create_run(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<RunText>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: CreateRun = parse_json(&bytes)?;
        Ok(Json(RunText(
            models.registry()?.create_run(b.into_new_run()?)?,
        )))
    })
    .await
}

async fn log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Logged>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: LogToRun = parse_json(&bytes)?;
        let id = parse_run_id(&id)?;
        let registry = models.registry()?;
        if !b.params.is_empty() {
            registry.log_params(id, &b.params)?;
        }
        if !b.tags.is_empty() {
            registry.set_tags(id, &b.tags)?;
        }
        let points: Vec<(&str, i64, f64)> = b
            .metrics
            .iter()
            .map(|m| (m.key.as_str(), m.step, m.value))
            .collect();
        registry.log_metrics(id, &points)?;
        registry.flush()?;
        Ok(Json(Logged {
            metrics: points.len(),
        }))
    })
    .await
}

async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<RunText>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: EndRun = parse_json(&bytes)?;
        Ok(Json(RunText(
            models.registry()?.end_run(parse_run_id(&id)?, b.status)?,
        )))
    })
    .await
}

async fn delete_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    blocking(&state, move |models| {
        let id = parse_run_id(&id)?;
        models.registry()?.delete_run(id)?;
        Ok(Json(Deleted {
            deleted: run_id_text(id),
            with: 0,
        }))
    })
    .await
}

async fn attach(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<ArtifactRef>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    blocking(&state, move |models| {
        let b: AttachArtifact = parse_json(&bytes)?;
        Ok(Json(models.registry()?.attach_artifact(
            parse_run_id(&id)?,
            &b.name,
            &b.digest,
            b.kind,
        )?))
    })
    .await
}

/// The answer to an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Uploaded {
    pub digest: String,
    pub size: u64,
}

/// Stores one object, streamed to a blocking thread that writes and hashes it; the object is
/// kept only when its content's digest is the one in the path, and a body over the server's
/// upload limit is refused part way (413).
async fn upload(
    State(state): State<AppState>,
    Path(digest): Path<String>,
    request: Request,
) -> Result<Json<Uploaded>, ApiError> {
    let stored = streamed(&state, request, move |registry, body| {
        let size = registry.put_object(body, &digest)?;
        Ok(Uploaded { digest, size })
    })
    .await?;
    Ok(Json(stored))
}

/// Hands a request's body, as it arrives, to `store` on a blocking thread, which reads it as a
/// file; a body over the server's upload limit (`--max-upload`) is cut off with 413.
pub(crate) async fn streamed<T: Send + 'static>(
    state: &AppState,
    request: Request,
    store: impl FnOnce(&Registry, &mut dyn Read) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let limit = state.config.max_upload;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let stored = blocking(state, move |models| {
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        Ok(store(models.registry()?, &mut reader)?)
    });
    let feed = async move {
        let mut body = request.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return Ok(());
                }
            };
            total += data.len() as u64;
            if total > limit {
                let _ = tx
                    .send(Err(std::io::Error::other("over the upload limit")))
                    .await;
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the upload is over the server's limit of {limit} bytes (--max-upload)"
                    ),
                ));
            }
            if tx.send(Ok(data)).await.is_err() {
                break;
            }
        }
        Ok(())
    };
    let (stored, fed) = tokio::join!(stored, feed);
    fed?;
    stored
}

/// The bytes of a request body, handed over from the async side, read as a file is.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

async fn exists(
    State(state): State<AppState>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |models| {
        Ok(if models.registry()?.has_object(&digest)? {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        })
    })
    .await
}

/// One object's bytes, checked against its digest before they are sent.
async fn download(
    State(state): State<AppState>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = blocking(&state, move |models| {
        Ok(models.registry()?.read_object(&digest)?)
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}
