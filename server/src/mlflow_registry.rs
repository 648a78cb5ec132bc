//! MLflow's model registry REST API over kiln's: registered models and their versions, aliases
//! (kiln's compare-and-set aliases, each move in the model's history) and stage transitions
//! (kiln's stage view of the `production` and `staging` aliases). A change that moves what a
//! model serves goes through `Models::change`, so the running server hot-swaps before it
//! answers.
//!
//! Under `/api/2.0/mlflow/` (and `/ajax-api/2.0/mlflow/`): `registered-models/create|get|search|
//! update|set-tag|delete-tag|delete|alias|get-latest-versions|rename` (refused: a model's name
//! is in its serving URLs), `model-versions/create|get|search|update|set-tag|delete-tag|delete|
//! transition-stage|get-download-uri`. A version's `source` names a run's artifact
//! (`runs:/RUN/NAME`, or the `mlflow-artifacts:/EXPERIMENT/RUN/artifacts/NAME` the client
//! resolves it to) or a logged model (`models:/m-…`), whose files are one.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_core::registry::{
    Expect, Model, ModelVersion, Registry, RegistryError, Stage, parse_run_id, run_id_text,
};
use serde::{Deserialize, Serialize};

use crate::state::{AppState, blocking};
use crate::tracking::{Answer, KeyValue, MlflowError, invalid, on_registry, pairs, read_body};

/// The endpoints that only read (GET).
pub(crate) fn reads() -> Router<AppState> {
    let mut router = Router::new();
    for p in crate::tracking::PREFIXES {
        router = router
            .route(&format!("{p}/registered-models/get"), get(get_model))
            .route(&format!("{p}/registered-models/search"), get(search_models))
            .route(&format!("{p}/model-versions/get"), get(get_version))
            .route(
                &format!("{p}/model-versions/get-download-uri"),
                get(download_uri),
            )
            .route(&format!("{p}/model-versions/search"), get(search_versions))
            .route(&format!("{p}/registered-models/alias"), get(get_by_alias));
    }
    router
}

/// The endpoints that change state.
pub(crate) fn writes() -> Router<AppState> {
    let mut router = Router::new();
    for p in crate::tracking::PREFIXES {
        router = router
            .route(&format!("{p}/registered-models/create"), post(create_model))
            .route(
                &format!("{p}/registered-models/delete"),
                axum::routing::delete(delete_model),
            )
            .route(
                &format!("{p}/registered-models/alias"),
                post(set_alias).delete(delete_alias),
            )
            .route(
                &format!("{p}/registered-models/get-latest-versions"),
                post(latest_versions),
            )
            .route(&format!("{p}/model-versions/create"), post(create_version))
            .route(
                &format!("{p}/registered-models/update"),
                axum::routing::patch(update_model),
            )
            .route(&format!("{p}/registered-models/rename"), post(rename_model))
            .route(
                &format!("{p}/registered-models/set-tag"),
                post(set_model_tag),
            )
            .route(
                &format!("{p}/registered-models/delete-tag"),
                axum::routing::delete(delete_model_tag),
            )
            .route(
                &format!("{p}/model-versions/update"),
                axum::routing::patch(update_version),
            )
            .route(
                &format!("{p}/model-versions/set-tag"),
                post(set_version_tag),
            )
            .route(
                &format!("{p}/model-versions/delete-tag"),
                axum::routing::delete(delete_version_tag),
            )
            .route(
                &format!("{p}/model-versions/delete"),
                axum::routing::delete(delete_version),
            )
            .route(
                &format!("{p}/model-versions/transition-stage"),
                post(transition_stage),
            );
    }
    router
}

#[derive(Serialize)]
struct MlVersion {
    name: String,
    version: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    current_stage: String,
    description: String,
    source: String,
    run_id: String,
    status: &'static str,
    aliases: Vec<String>,
    tags: Vec<KeyValue>,
}

#[derive(Serialize)]
struct MlAlias {
    alias: String,
    version: String,
}

#[derive(Serialize)]
struct MlModel {
    name: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    description: String,
    latest_versions: Vec<MlVersion>,
    aliases: Vec<MlAlias>,
    tags: Vec<KeyValue>,
}

fn version_of(
    registry: &Registry,
    v: &ModelVersion,
    aliases: &BTreeMap<String, u32>,
) -> Result<MlVersion, RegistryError> {
    let run = run_id_text(v.run_id);
    Ok(MlVersion {
        name: v.model.clone(),
        version: v.version.to_string(),
        creation_timestamp: v.created_ms,
        last_updated_timestamp: v.created_ms,
        current_stage: registry.stage(&v.model, v.version)?.to_string(),
        description: v.description.clone(),
        source: format!("runs:/{run}/{}", v.artifact.name),
        run_id: run,
        status: "READY",
        aliases: aliases
            .iter()
            .filter(|(_, t)| **t == v.version)
            .map(|(a, _)| a.clone())
            .collect(),
        tags: pairs(&v.tags),
    })
}

fn model_of(registry: &Registry, m: &Model) -> Result<MlModel, RegistryError> {
    let aliases = registry.aliases(&m.name)?;
    let versions = registry.versions(&m.name)?;
    let latest = versions
        .last()
        .map(|v| version_of(registry, v, &aliases))
        .transpose()?;
    Ok(MlModel {
        name: m.name.clone(),
        creation_timestamp: m.created_ms,
        last_updated_timestamp: versions.last().map_or(m.created_ms, |v| v.created_ms),
        description: m.description.clone(),
        latest_versions: latest.into_iter().collect(),
        aliases: aliases
            .iter()
            .map(|(a, v)| MlAlias {
                alias: a.clone(),
                version: v.to_string(),
            })
            .collect(),
        tags: pairs(&m.tags),
    })
}

fn version_number(text: &str) -> Result<u32, MlflowError> {
    text.parse()
        .map_err(|_| invalid(format!("version {text:?} is not a version number")))
}

#[derive(Deserialize)]
struct CreateModel {
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_model(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: CreateModel = read_body(bytes, &state)?;
    let model = on_registry(&state, move |r| {
        let m = r.create_model(&b.name, &b.description)?;
        model_of(r, &m)
    })
    .await?;
    Ok(Json(serde_json::json!({ "registered_model": model })))
}

#[derive(Deserialize)]
struct NameQuery {
    name: Option<String>,
    alias: Option<String>,
    version: Option<String>,
    filter: Option<String>,
    max_results: Option<String>,
}

fn required<'a>(v: &'a Option<String>, what: &str) -> Result<&'a str, MlflowError> {
    v.as_deref()
        .ok_or_else(|| invalid(format!("`{what}` is required")))
}

async fn get_model(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let name = required(&q.name, "name")?.to_string();
    let model = on_registry(&state, move |r| model_of(r, &r.model(&name)?)).await?;
    Ok(Json(serde_json::json!({ "registered_model": model })))
}

/// `name = 'X'` or `name LIKE 'X%'`, the filters the client builds for models and versions.
fn name_filter(filter: Option<&str>) -> Result<Option<(String, bool)>, MlflowError> {
    let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let quoted = |s: &str| {
        let s = s.trim();
        s.strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            .map(str::to_string)
    };
    if let Some(rest) = f.strip_prefix("name").map(str::trim_start) {
        if let Some(v) = rest.strip_prefix('=').and_then(quoted) {
            return Ok(Some((v, false)));
        }
        let like = rest
            .strip_prefix("LIKE")
            .or_else(|| rest.strip_prefix("like"))
            .or_else(|| rest.strip_prefix("ILIKE"))
            .or_else(|| rest.strip_prefix("ilike"));
        if let Some(v) = like.and_then(quoted) {
            return Ok(Some((v.trim_end_matches('%').to_string(), true)));
        }
    }
    Err(invalid(format!(
        "filter {f:?}: kiln takes `name = 'MODEL'` or `name LIKE 'PREFIX%'` here"
    )))
}

async fn search_models(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let filter = name_filter(q.filter.as_deref())?;
    let limit: usize = q
        .max_results
        .as_deref()
        .map_or(Ok(1000), str::parse)
        .map_err(|_| invalid("`max_results` is not a number"))?;
    let models = on_registry(&state, move |r| {
        r.models()?
            .iter()
            .filter(|m| match &filter {
                None => true,
                Some((n, false)) => m.name == *n,
                Some((n, true)) => m.name.starts_with(n.as_str()),
            })
            .take(limit)
            .map(|m| model_of(r, m))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(serde_json::json!({ "registered_models": models })))
}

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

async fn delete_model(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: NameOnly = read_body(bytes, &state)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        Ok(models.change(&b.name, |r| r.delete_model(&b.name, true, &actor))?)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

/// The run and the artifact a version's `source` names.
fn source_of(source: &str, run_id: Option<&str>) -> Result<(u64, String), MlflowError> {
    let (run, name) = if let Some(rest) = source.strip_prefix("runs:/") {
        let (run, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid(format!("source {source:?} names no artifact")))?;
        (
            run.to_string(),
            path.split('/').next().unwrap_or("").to_string(),
        )
    } else if let Some(rest) = source.strip_prefix("mlflow-artifacts:/") {
        let mut parts = rest.split('/');
        let (_experiment, run, root, name) =
            (parts.next(), parts.next(), parts.next(), parts.next());
        match (run, root, name) {
            (Some(run), Some("artifacts"), Some(name)) => (run.to_string(), name.to_string()),
            _ => {
                return Err(invalid(format!(
                    "source {source:?} is not mlflow-artifacts:/EXPERIMENT/RUN/artifacts/NAME"
                )));
            }
        }
    } else {
        return Err(invalid(format!(
            "source {source:?}: kiln registers a run's artifact, named runs:/RUN/NAME or \
             mlflow-artifacts:/EXPERIMENT/RUN/artifacts/NAME"
        )));
    };
    if let Some(given) = run_id.filter(|r| !r.is_empty())
        && given != run
    {
        return Err(invalid(format!(
            "run_id {given} is not the run of source {source:?}"
        )));
    }
    if name.is_empty() {
        return Err(invalid(format!("source {source:?} names no artifact")));
    }
    Ok((
        parse_run_id(&run).map_err(|e| MlflowError(crate::error::ApiError::from(e)))?,
        name,
    ))
}

#[derive(Deserialize)]
struct CreateVersion {
    name: String,
    source: String,
    run_id: Option<String>,
    /// The logged model the version is made from (`source` is then `models:/ID`).
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    description: String,
}

/// What a version is made from: a run's artifact, or a logged model (whose files are one).
enum Source {
    Artifact((u64, String)),
    Logged(String),
}

/// The logged model a `models:/ID` source (or `model_id`) names; a registered model's version
/// (`models:/NAME/VERSION`) is refused: kiln makes versions from runs' artifacts.
fn logged_model_of(source: &str, model_id: Option<&str>) -> Result<Option<String>, MlflowError> {
    if let Some(id) = model_id.filter(|m| !m.is_empty()) {
        return Ok(Some(id.to_string()));
    }
    match source.strip_prefix("models:/") {
        Some(id) if id.starts_with("m-") && !id.contains('/') => Ok(Some(id.to_string())),
        Some(_) => Err(invalid(format!(
            "source {source:?}: kiln registers a logged model (models:/m-…) or a run's artifact \
             (runs:/RUN/NAME); to copy a version, register its run's artifact"
        ))),
        None => Ok(None),
    }
}

async fn create_version(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: CreateVersion = read_body(bytes, &state)?;
    let source = match logged_model_of(&b.source, b.model_id.as_deref())? {
        Some(id) => Source::Logged(id),
        None => Source::Artifact(source_of(&b.source, b.run_id.as_deref())?),
    };
    let version = blocking(&state, move |models| {
        let (run, artifact) = match source {
            Source::Artifact(named) => named,
            Source::Logged(id) => {
                let m = models.registry()?.logged_model(&id)?;
                (m.run, m.artifact)
            }
        };
        let v = models.change(&b.name, |r| {
            r.register_version(&b.name, run, &artifact, &b.description, None)
        })?;
        let r = models.registry()?;
        Ok(version_of(r, &v, &r.aliases(&b.name)?)?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_version": version })))
}

async fn get_version(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let name = required(&q.name, "name")?.to_string();
    let number = version_number(required(&q.version, "version")?)?;
    let version = on_registry(&state, move |r| {
        let v = r.version(&name, number)?;
        version_of(r, &v, &r.aliases(&name)?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_version": version })))
}

/// Where a version's files are for the client's artifact repository: its run's artifact
/// through the artifact proxy (`models:/NAME/VERSION` loads from there).
async fn download_uri(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let name = required(&q.name, "name")?.to_string();
    let number = version_number(required(&q.version, "version")?)?;
    let uri = on_registry(&state, move |r| {
        let v = r.version(&name, number)?;
        let run = r.run(v.run_id)?;
        let experiment = crate::tracking::mlflow_ids(r)?
            .get(&run.experiment_id)
            .cloned()
            .unwrap_or_else(|| run.experiment_id.to_string());
        Ok(format!(
            "mlflow-artifacts:/{experiment}/{}/artifacts/{}",
            run_id_text(v.run_id),
            v.artifact.name
        ))
    })
    .await?;
    Ok(Json(serde_json::json!({ "artifact_uri": uri })))
}

async fn search_versions(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let filter = name_filter(q.filter.as_deref())?;
    let versions = on_registry(&state, move |r| {
        let mut out = Vec::new();
        for m in r.models()? {
            let keep = match &filter {
                None => true,
                Some((n, false)) => m.name == *n,
                Some((n, true)) => m.name.starts_with(n.as_str()),
            };
            if keep {
                let aliases = r.aliases(&m.name)?;
                for v in r.versions(&m.name)? {
                    out.push(version_of(r, &v, &aliases)?);
                }
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_versions": versions })))
}

#[derive(Deserialize)]
struct VersionOf {
    name: String,
    version: String,
}

async fn delete_version(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: VersionOf = read_body(bytes, &state)?;
    let number = version_number(&b.version)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        Ok(models.change(&b.name, |r| r.delete_version(&b.name, number, true, &actor))?)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct AliasBody {
    name: String,
    alias: String,
    version: Option<String>,
}

async fn set_alias(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: AliasBody = read_body(bytes, &state)?;
    let number = version_number(required(&b.version, "version")?)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        Ok(models.change(&b.name, |r| {
            r.set_alias(
                &b.name,
                &b.alias,
                number,
                Expect::Any,
                &actor,
                "mlflow client",
            )
        })?)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

async fn delete_alias(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: AliasBody = read_body(bytes, &state)?;
    let actor = state.config.actor.clone();
    blocking(&state, move |models| {
        Ok(models.change(&b.name, |r| {
            r.delete_alias(&b.name, &b.alias, Expect::Any, &actor, "mlflow client")
        })?)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

async fn get_by_alias(
    State(state): State<AppState>,
    Query(q): Query<NameQuery>,
) -> Answer<serde_json::Value> {
    let name = required(&q.name, "name")?.to_string();
    let alias = required(&q.alias, "alias")?.to_string();
    let version = on_registry(&state, move |r| {
        let aliases = r.aliases(&name)?;
        let number = *aliases.get(&alias).ok_or_else(|| RegistryError::NotFound {
            what: "alias",
            name: format!("{alias}` of model `{name}"),
            hint: kiln_core::suggest::hint(&alias, aliases.keys().map(String::as_str)),
        })?;
        version_of(r, &r.version(&name, number)?, &aliases)
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_version": version })))
}

#[derive(Deserialize)]
struct LatestVersions {
    name: String,
    #[serde(default)]
    stages: Vec<String>,
}

async fn latest_versions(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: LatestVersions = read_body(bytes, &state)?;
    let versions = on_registry(&state, move |r| {
        let aliases = r.aliases(&b.name)?;
        let mut latest: BTreeMap<String, ModelVersion> = BTreeMap::new();
        for v in r.versions(&b.name)? {
            latest.insert(r.stage(&b.name, v.version)?.to_string(), v);
        }
        latest
            .into_iter()
            .filter(|(stage, _)| {
                b.stages.is_empty() || b.stages.iter().any(|s| s.eq_ignore_ascii_case(stage))
            })
            .map(|(_, v)| version_of(r, &v, &aliases))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_versions": versions })))
}

#[derive(Deserialize)]
struct Transition {
    name: String,
    version: String,
    stage: String,
}

/// Moves the stage alias (`production`, `staging`) to the version, as `kiln models promote`
/// does; `Archived` and `None` take the version out of the stage it is in.
async fn transition_stage(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Transition = read_body(bytes, &state)?;
    let number = version_number(&b.version)?;
    let stage = match b.stage.to_ascii_lowercase().as_str() {
        "production" => Some(Stage::Production),
        "staging" => Some(Stage::Staging),
        "archived" | "none" => None,
        other => {
            return Err(invalid(format!(
                "stage {other:?} is not Production, Staging, Archived or None"
            )));
        }
    };
    let actor = state.config.actor.clone();
    let version = blocking(&state, move |models| {
        models.change(&b.name, |r| {
            match stage.and_then(Stage::alias) {
                Some(alias) => {
                    r.set_alias(&b.name, alias, number, Expect::Any, &actor, "mlflow client")?;
                }
                None => {
                    for (alias, target) in r.aliases(&b.name)? {
                        if target == number && (alias == "production" || alias == "staging") {
                            r.delete_alias(&b.name, &alias, Expect::Any, &actor, "mlflow client")?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        let r = models.registry()?;
        Ok(version_of(
            r,
            &r.version(&b.name, number)?,
            &r.aliases(&b.name)?,
        )?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "model_version": version })))
}

/// What a request says of a model, or of one of its versions: a new description, a tag to set
/// or one to delete.
#[derive(Deserialize)]
struct Annotation {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

/// How an annotation changes a description and tags.
#[derive(Clone, Copy)]
enum Change {
    Describe,
    SetTag,
    DeleteTag,
}

/// Applies `change` to the model (or, with `version`, to that version) and answers it.
async fn annotate(
    state: AppState,
    bytes: Result<Bytes, BytesRejection>,
    change: Change,
    of_version: bool,
) -> Answer<serde_json::Value> {
    let b: Annotation = read_body(bytes, &state)?;
    let version = match (of_version, &b.version) {
        (false, _) => None,
        (true, Some(v)) => Some(version_number(v)?),
        (true, None) => return Err(invalid("`version` is required")),
    };
    let text = match change {
        Change::Describe => b.description.clone().unwrap_or_default(),
        Change::SetTag => b.value.clone().unwrap_or_default(),
        Change::DeleteTag => String::new(),
    };
    let key = match change {
        Change::Describe => String::new(),
        Change::SetTag | Change::DeleteTag => {
            let key = required(&b.key, "key")?.to_string();
            kiln_core::registry::check_name("tag", &key).map_err(|e| invalid(e.to_string()))?;
            key
        }
    };
    let name = b.name;
    let apply = move |description: &mut String, tags: &mut BTreeMap<String, String>| {
        match change {
            Change::Describe => *description = text.clone(),
            Change::SetTag => {
                tags.insert(key.clone(), text.clone());
            }
            Change::DeleteTag => {
                if tags.remove(&key).is_none() {
                    return Err(RegistryError::NotFound {
                        what: "tag",
                        name: key.clone(),
                        hint: String::new(),
                    });
                }
            }
        }
        Ok(())
    };
    on_registry(&state, move |r| {
        Ok(match version {
            Some(number) => {
                let v = r.annotate_version(&name, number, apply)?;
                serde_json::json!({ "model_version": version_of(r, &v, &r.aliases(&name)?)? })
            }
            None => {
                let m = r.annotate_model(&name, apply)?;
                serde_json::json!({ "registered_model": model_of(r, &m)? })
            }
        })
    })
    .await
    .map(|answer| match change {
        Change::Describe => Json(answer),
        Change::SetTag | Change::DeleteTag => Json(serde_json::json!({})),
    })
}

async fn update_model(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::Describe, false).await
}

async fn set_model_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::SetTag, false).await
}

async fn delete_model_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::DeleteTag, false).await
}

async fn update_version(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::Describe, true).await
}

async fn set_version_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::SetTag, true).await
}

async fn delete_version_tag(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    annotate(state, bytes, Change::DeleteTag, true).await
}

/// A model's name is in its serving URLs, its alias history and its deployment: kiln does not
/// rename one, and says how to get the same.
async fn rename_model(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    #[derive(Deserialize)]
    struct Rename {
        name: String,
        new_name: String,
    }
    let b: Rename = read_body(bytes, &state)?;
    Err(invalid(format!(
        "kiln does not rename registered models: `{}` is in serving URLs, alias history and \
         deployments; register the versions you need under `{}` instead",
        b.name, b.new_name
    )))
}
