//! kiln's management API under `/api/`: models, versions, aliases, deployments and runs to read;
//! traffic splits, alias moves and promotion to change (the command line's operations, for a
//! running server that owns its `KILN_HOME`). Changes take effect before the answer is sent.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kiln_core::registry::query::{Filter, OrderBy, RunSearch};
use kiln_core::registry::{BackupSummary, Deployment, Stage, parse_run_id};
use kiln_core::wire::models::{
    AliasChanged, DeleteAlias, DeploymentChanged, DeploymentEntry, DeploymentList, Expected,
    LiveRoute, LiveShadow, LoadedVersion, ModelDetail, ModelList, ModelSummary, Promote, Promoted,
    SetAlias, SetDeployment, VersionSummary,
};
use kiln_core::wire::runs::{RunDetail, RunEntry, RunPage, RunText};

use crate::app::{AppState, body, parse_json};
use crate::error::{ApiError, ServeError};
use crate::models::{Live, Models};

/// Endpoints that only read.
pub fn reads() -> Router<AppState> {
    Router::new()
        .route("/api/models", get(list_models))
        .route("/api/models/{name}", get(show_model))
        .route("/api/models/{name}/deployment", get(show_deployment))
        .route("/api/deployments", get(list_deployments))
        .route("/api/models/{name}/drift", get(show_drift))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
}

/// `?experiment=&status=&parent=&where=&order_by=&limit=` as `kiln runs list` takes them.
async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Result<Json<RunPage>, ApiError> {
    blocking(&state, move |models| {
        let bad = |what: &str, e: String| ServeError::BadInput(format!("`{what}`: {e}"));
        const KEYS: [&str; 6] = [
            "experiment",
            "status",
            "parent",
            "where",
            "order_by",
            "limit",
        ];
        if let Some(k) = q.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(ServeError::BadInput(format!(
                "no query parameter `{k}` (it takes {}){}",
                KEYS.join(", "),
                kiln_core::suggest::hint(k, KEYS)
            )));
        }
        let search = RunSearch {
            experiment: q.get("experiment").cloned(),
            status: q
                .get("status")
                .map(|s| s.parse())
                .transpose()
                .map_err(|e| bad("status", e))?,
            parent: q
                .get("parent")
                .map(|p| parse_run_id(p))
                .transpose()
                .map_err(|e| bad("parent", e.to_string()))?,
            filter: q
                .get("where")
                .map(|f| Filter::parse(f))
                .transpose()
                .map_err(|e| bad("where", e))?,
            order: q
                .get("order_by")
                .map(|o| OrderBy::parse(o))
                .transpose()
                .map_err(|e| bad("order_by", e))?,
        };
        let limit: usize = match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| bad("limit", format!("{l:?} is not a count")))?,
            None => 50,
        };
        let views = models.registry().search_runs(&search)?;
        let total = views.len();
        let runs = views
            .into_iter()
            .take(limit)
            .map(|v| RunEntry {
                run: RunText(v.run),
                metrics: v.metrics,
            })
            .collect();
        Ok(Json(RunPage { runs, total }))
    })
    .await
}

/// One run with its latest metrics and each metric's curve (at most 40 points).
async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    blocking(&state, move |models| {
        let registry = models.registry();
        let run = registry.run(parse_run_id(&id)?)?;
        let metrics = registry.latest_metrics(run.id)?;
        let mut series = std::collections::BTreeMap::new();
        for k in metrics.keys() {
            let points = registry.metric_history(run.id, k, Some(40))?;
            series.insert(k.clone(), points.iter().map(|p| p.value).collect());
        }
        Ok(Json(RunDetail {
            run: RunText(run),
            metrics,
            series,
        }))
    })
    .await
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
pub fn writes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/models/{name}/deployment",
            put(set_deployment).delete(reset_deployment),
        )
        .route(
            "/api/models/{name}/aliases/{alias}",
            put(set_alias).delete(delete_alias),
        )
        .route("/api/models/{name}/promote", post(promote))
        .route("/api/registry/backups", post(backup))
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
        Ok(Json(models.registry().backup_into(&dir, keep)?))
    })
    .await
}

/// Runs registry work on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Models) -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    let models = state.models.clone();
    tokio::task::spawn_blocking(move || f(&models))
        .await
        .map_err(|e| ServeError::Internal(format!("management task: {e}")))?
        .map_err(ApiError::from)
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
            let registry = models.registry();
            let model = registry.model(&name)?;
            let versions = registry.versions(&name)?;
            out.push(ModelSummary {
                description: model.description,
                created_ms: model.created_ms,
                versions: versions.len(),
                latest_version: versions.last().map(|v| v.version),
                aliases: registry.aliases(&name)?,
                live: live_now(models, &name),
                problem: models.problem(&name),
                name,
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
        let registry = models.registry();
        let model = registry.model(&name)?;
        let versions = registry
            .versions(&name)?
            .into_iter()
            .map(|v| {
                Ok(VersionSummary {
                    version: v.version,
                    created_ms: v.created_ms,
                    run_id: kiln_core::registry::run_id_text(v.run_id),
                    stage: registry.stage(&name, v.version)?.to_string(),
                    metrics: v.metrics,
                    description: v.description,
                })
            })
            .collect::<Result<_, ServeError>>()?;
        Ok(Json(ModelDetail {
            description: model.description,
            versions,
            aliases: registry.aliases(&name)?,
            deployment: registry.deployment(&name)?,
            live: live_now(models, &name),
            problem: models.problem(&name),
            name,
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
        Ok(Json(models.registry().deployment(&name)?))
    })
    .await
}

async fn list_deployments(State(state): State<AppState>) -> Result<Json<DeploymentList>, ApiError> {
    blocking(&state, |models| {
        let mut deployments = Vec::new();
        for name in models.names()? {
            deployments.push(DeploymentEntry {
                deployment: models.registry().deployment(&name)?,
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
            deployment: models.registry().deployment(&name)?,
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
        let b: DeleteAlias = if bytes.is_empty() {
            DeleteAlias::default()
        } else {
            parse_json(&bytes)?
        };
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
        let alias = stage.alias().unwrap_or("production");
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
