//! kiln's management API for models under `/api/`: models, versions, aliases, history,
//! deployments and drift to read; versions to register and delete, traffic splits, alias moves,
//! promotion and backups to change (the command line's operations, for a running server that owns
//! its `KILN_HOME`; experiments and runs are in `runs.rs`). Changes take effect, and serving is
//! reconciled, before the answer is sent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use kiln_core::backend;
use kiln_core::registry::{BackupSummary, Deployment, ModelVersion, Stage, parse_run_id};
use kiln_core::wire::experiments::{Delete, Deleted};
use kiln_core::wire::models::{
    AliasChanged, DeleteAlias, DeploymentChanged, DeploymentEntry, DeploymentList, Expected,
    History, LiveRoute, LiveShadow, LoadedVersion, ModelDetail, ModelList, ModelSummary, Promote,
    Promoted, RegisterVersion, SetAlias, SetDeployment,
};

use crate::error::{ApiError, ServeError};
use crate::models::{Live, Models};
use crate::openapi::{Api, answers};
use crate::state::{AppState, blocking, body, optional_json, parse_json};

/// Endpoints that only read.
pub(crate) fn reads() -> Api {
    Api::reads()
        .get(
            "/api/models",
            list_models,
            answers::<ModelList>("List the models, with what serves each"),
        )
        .get(
            "/api/models/{name}",
            show_model,
            answers::<ModelDetail>("Show a model: versions, aliases, deployment, what serves"),
        )
        .get(
            "/api/models/{name}/deployment",
            show_deployment,
            answers::<Deployment>("Show a model's stored deployment"),
        )
        .get(
            "/api/deployments",
            list_deployments,
            answers::<DeploymentList>("List every model's deployment and loaded versions"),
        )
        .get(
            "/api/models/{name}/drift",
            show_drift,
            answers::<crate::drift::DriftAnswer>(
                "Drift of each served version against its training data",
            ),
        )
        .get(
            "/api/models/{name}/history",
            history,
            answers::<History>("A model's alias moves, newest first"),
        )
        .get(
            "/api/models/{name}/versions/{which}",
            show_version,
            answers::<ModelVersion>("Show a version (a number or an alias)"),
        )
        .get(
            "/api/changes",
            changes,
            answers::<kiln_core::wire::models::Changes>(
                "The models changed since a change number, waiting up to `wait` seconds (30 at \
                 most) for one: what serving replicas follow",
            )
            .query::<ChangesQuery>(),
        )
}

/// The query of `GET /api/changes`.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangesQuery {
    /// The server run the caller last heard from.
    epoch: Option<u64>,
    /// The last change number the caller has seen.
    after: Option<u64>,
    /// Seconds to wait for a change when there is none yet.
    wait: Option<u64>,
}

async fn changes(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<kiln_core::wire::models::Changes>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let feed = state.models.feed();
    let mut tick = feed.subscribe();
    let after = q.after.unwrap_or(0);
    let now = feed.since(q.epoch, after);
    let wait = q.wait.unwrap_or(0).min(30);
    if now.resync || !now.models.is_empty() || wait == 0 {
        return Ok(Json(now));
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(wait), tick.changed()).await;
    Ok(Json(state.models.feed().since(q.epoch, after)))
}

async fn show_drift(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<crate::drift::DriftAnswer>, ApiError> {
    blocking(&state, move |models| {
        let reports = models.drift(&name)?;
        let alarms: Vec<String> = reports
            .iter()
            .flat_map(|r| r.alarms().into_iter().map(|f| f.feature.clone()))
            .collect();
        Ok(Json(crate::drift::DriftAnswer {
            model: name,
            sample: models.log_config().sample,
            window: models.log_config().window,
            alarms,
            versions: reports,
        }))
    })
    .await
}

/// Endpoints that change state; they need the token when one is set.
pub(crate) fn writes() -> Api {
    Api::writes()
        .put(
            "/api/models/{name}/deployment",
            set_deployment,
            answers::<DeploymentChanged>("Set a model's traffic split, shadow and batching")
                .takes::<SetDeployment>(),
        )
        .delete(
            "/api/models/{name}/deployment",
            reset_deployment,
            answers::<DeploymentChanged>("Reset a model's deployment to its champion alone"),
        )
        .put(
            "/api/models/{name}/aliases/{alias}",
            set_alias,
            answers::<AliasChanged>("Point an alias at a version").takes::<SetAlias>(),
        )
        .delete(
            "/api/models/{name}/aliases/{alias}",
            delete_alias,
            answers::<AliasChanged>("Remove an alias (a JSON body is optional)")
                .takes::<DeleteAlias>(),
        )
        .post(
            "/api/models/{name}/promote",
            promote,
            answers::<Promoted>("Promote a version: move the alias serving follows")
                .takes::<Promote>(),
        )
        .delete(
            "/api/models/{name}",
            delete_model,
            answers::<Deleted>("Delete a model and its versions (a JSON body is optional)")
                .takes::<Delete>(),
        )
        .post(
            "/api/models/{name}/versions",
            register,
            answers::<ModelVersion>(
                "Register a run's artifact as the next version; or, with Content-Type \
                 application/octet-stream, import the ONNX file in the body (query: labels, \
                 target, scores, output, description)",
            )
            .takes::<RegisterVersion>(),
        )
        .delete(
            "/api/models/{name}/versions/{which}",
            delete_version,
            answers::<Deleted>("Delete a version (a JSON body is optional)").takes::<Delete>(),
        )
        .post(
            "/api/registry/backups",
            backup,
            answers::<BackupSummary>("Back the registry up into the server's backup directory"),
        )
}

/// Takes a backup into the server's backup directory (`--backup-dir`), under a name of its
/// time; the request names no path.
async fn backup(State(state): State<AppState>) -> Result<Json<BackupSummary>, ApiError> {
    let Some(dir) = state.config.backup_dir.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "this server has no backup directory; start it with --backup-dir DIR",
        ));
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    // One at a time: a second request while one is written is refused, not queued. The flag
    // is cleared when the backup's own task ends, even if its request was dropped meanwhile.
    static WRITING: AtomicBool = AtomicBool::new(false);
    struct Written;
    impl Drop for Written {
        fn drop(&mut self) {
            WRITING.store(false, Ordering::Release);
        }
    }
    if WRITING.swap(true, Ordering::AcqRel) {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "a backup is being written; ask again when it is done",
        ));
    }
    let written = Written;
    let keep = state.config.backup_keep;
    blocking(&state, move |models| {
        let _written = written;
        Ok(Json(models.registry()?.backup_into(&dir, keep)?))
    })
    .await
}

/// What serves a model now, as the API shows it.
fn live_of(live: &Live, models: &Models) -> kiln_core::wire::models::Live {
    let metrics = models.metrics();
    let routes = live
        .routes
        .iter()
        .map(|r| LiveRoute {
            target: r.target.clone(),
            percent: r.percent,
            version: r.version.version,
            batching: r.batcher.is_some(),
            load_ms: r.version.load_time.as_secs_f64() * 1000.0,
        })
        .collect();
    let shadow = live.shadow.as_ref().map(|s| {
        let labels = [s.model.as_str(), s.label.as_str()];
        let requests = metrics.shadow_requests.with_label_values(&labels).get();
        let agreements = metrics.shadow_agreements.with_label_values(&labels).get();
        LiveShadow {
            target: live.deployment.shadow.clone(),
            version: s.version,
            requests,
            agreements,
            agreement_rate: (requests > 0).then(|| agreements as f64 / requests as f64),
        }
    });
    kiln_core::wire::models::Live {
        routes,
        shadow,
        batching: live.deployment.batching,
    }
}

fn live_now(models: &Models, name: &str) -> Option<kiln_core::wire::models::Live> {
    models.live(name).map(|l| live_of(&l, models))
}

async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    blocking(&state, |models| {
        let mut out = Vec::new();
        for name in models.names()? {
            out.push(ModelSummary {
                live: live_now(models, &name),
                problem: models.problem(&name),
                ..backend::model_summary(models.registry()?, &name)?
            });
        }
        Ok(Json(ModelList { models: out }))
    })
    .await
}

async fn show_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    blocking(&state, move |models| {
        models.require(&name)?;
        Ok(Json(ModelDetail {
            live: live_now(models, &name),
            problem: models.problem(&name),
            ..backend::model_detail(models.registry()?, &name)?
        }))
    })
    .await
}

async fn show_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    blocking(&state, move |models| {
        models.require(&name)?;
        Ok(Json(models.registry()?.deployment(&name)?))
    })
    .await
}

async fn list_deployments(State(state): State<AppState>) -> Result<Json<DeploymentList>, ApiError> {
    blocking(&state, |models| {
        let mut deployments = Vec::new();
        for name in models.names()? {
            deployments.push(DeploymentEntry {
                deployment: models.registry()?.deployment(&name)?,
                live: live_now(models, &name),
                problem: models.problem(&name),
                model: name,
            });
        }
        let loaded = models
            .loaded()
            .into_iter()
            .map(|(model, version, t)| LoadedVersion {
                model,
                version,
                load_ms: t.as_secs_f64() * 1000.0,
            })
            .collect();
        Ok(Json(DeploymentList {
            deployments,
            loaded,
        }))
    })
    .await
}

async fn set_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<DeploymentChanged>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: SetDeployment = parse_json(&bytes)?;
        models.require(&name)?;
        let d = models.change(&name, |r| {
            r.set_deployment(
                Deployment {
                    model: name.clone(),
                    routes: b.routes,
                    shadow: b.shadow,
                    batching: b.batching,
                    updated_ms: 0,
                    updated_by: String::new(),
                },
                &b.by.unwrap_or(actor),
            )
        })?;
        if let Some(problem) = models.problem(&name) {
            return Err(ServeError::Load(problem));
        }
        Ok(Json(DeploymentChanged {
            deployment: d,
            live: live_now(models, &name),
            problem: None,
        }))
    })
    .await
}

async fn reset_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DeploymentChanged>, ApiError> {
    blocking(&state, move |models| {
        models.require(&name)?;
        models.change(&name, |r| r.reset_deployment(&name))?;
        Ok(Json(DeploymentChanged {
            deployment: models.registry()?.deployment(&name)?,
            live: live_now(models, &name),
            problem: models.problem(&name),
        }))
    })
    .await
}

async fn set_alias(
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<AliasChanged>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: SetAlias = parse_json(&bytes)?;
        models.require(&name)?;
        let e = models.change(&name, |r| {
            r.set_alias(
                &name,
                &alias,
                b.version,
                Expected::expect(b.expect),
                &b.by.unwrap_or(actor),
                &b.reason,
            )
        })?;
        Ok(Json(AliasChanged {
            event: e,
            live: live_now(models, &name),
            problem: models.problem(&name),
        }))
    })
    .await
}

async fn delete_alias(
    State(state): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<AliasChanged>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: DeleteAlias = optional_json(&bytes)?;
        models.require(&name)?;
        let e = models.change(&name, |r| {
            r.delete_alias(
                &name,
                &alias,
                Expected::expect(b.expect),
                &b.by.unwrap_or(actor),
                &b.reason,
            )
        })?;
        Ok(Json(AliasChanged {
            event: e,
            live: live_now(models, &name),
            problem: models.problem(&name),
        }))
    })
    .await
}

async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Promoted>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: Promote = parse_json(&bytes)?;
        let stage = match b.to.as_deref() {
            None | Some("production") => Stage::Production,
            Some("staging") => Stage::Staging,
            Some(other) => {
                return Err(ServeError::BadInput(format!(
                    "`to` must be \"production\" or \"staging\", not {other:?}"
                )));
            }
        };
        models.require(&name)?;
        let alias = stage.alias().unwrap_or("champion");
        let e = models.change(&name, |r| {
            r.set_alias(
                &name,
                alias,
                b.version,
                Expected::expect(b.expect),
                &b.by.unwrap_or(actor),
                &b.reason,
            )
        })?;
        Ok(Json(Promoted {
            event: e,
            stage: stage.to_string(),
        }))
    })
    .await
}

async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<History>, ApiError> {
    blocking(&state, move |models| {
        Ok(Json(History {
            events: models.registry()?.history(&name)?,
        }))
    })
    .await
}

/// A version's record, named by number or alias.
async fn show_version(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
) -> Result<Json<ModelVersion>, ApiError> {
    blocking(&state, move |models| {
        Ok(Json(models.registry()?.resolve(&name, &which)?))
    })
    .await
}

/// Registers a run's artifact as a model's next version (the model is created when new).
async fn register(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    query: axum::extract::RawQuery,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<ModelVersion>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let media = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() == Some("application/octet-stream") {
        let query = query.0.unwrap_or_default();
        return blocking(&state, move |models| {
            crate::import::register_upload(models, &name, &bytes, &query).map(Json)
        })
        .await;
    }
    blocking(&state, move |models| {
        let b: RegisterVersion = parse_json(&bytes)?;
        let run = parse_run_id(&b.run)?;
        Ok(Json(models.change(&name, |r| {
            r.register_version(&name, run, &b.artifact, &b.description, b.signature)
        })?))
    })
    .await
}

async fn delete_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: Delete = optional_json(&bytes)?;
        let by = b.by.unwrap_or(actor);
        let with = models.change(&name, |r| r.delete_model(&name, b.force, &by))?;
        Ok(Json(Deleted {
            deleted: name,
            with,
        }))
    })
    .await
}

async fn delete_version(
    State(state): State<AppState>,
    Path((name, which)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let bytes = body(bytes, state.config.max_body)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        let b: Delete = optional_json(&bytes)?;
        let by = b.by.unwrap_or(actor);
        let version: u32 = which
            .trim_start_matches('v')
            .parse()
            .map_err(|_| ServeError::BadInput(format!("`{which}` is not a version number")))?;
        models.change(&name, |r| r.delete_version(&name, version, b.force, &by))?;
        Ok(Json(Deleted {
            deleted: format!("{name} version {version}"),
            with: 0,
        }))
    })
    .await
}
