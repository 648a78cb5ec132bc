//! MLflow 3's logged models over kiln's registry: what `<flavor>.log_model` calls
//! (`logged-models` create, get, finalize, search, tags, params, delete; `runs/outputs`), so that
//! a model logged from a notebook is a directory artifact of its run, uploaded through the
//! artifact proxy and registered as a kiln version with `registered_model_name=`.
//!
//! A logged model's `artifact_uri` is `mlflow-artifacts:/EXPERIMENT/RUN/artifacts/NAME`: the
//! client uploads and downloads its files through the run artifact paths kiln already serves.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use kiln_core::registry::logged_models::{LoggedModel, LoggedModelStatus, NewLoggedModel};
use kiln_core::registry::{Registry, RegistryError, run_id_text};
use serde::{Deserialize, Serialize};

use crate::state::AppState;
use crate::tracking::{
    Answer, KeyValue, MlflowError, PREFIXES, experiment_by_id, experiment_id, invalid, on_registry,
    pairs, read_body, run_id_of,
};

/// How many logged models one search answers at most.
const MAX_RESULTS: usize = 1000;

/// The endpoints that only read.
pub(crate) fn reads() -> Router<AppState> {
    let mut router = Router::new();
    for p in PREFIXES {
        router = router.route(&format!("{p}/logged-models/{{id}}"), get(get_model));
    }
    router
}

/// The endpoints that change state, and the search (which MLflow sends as POST).
pub(crate) fn writes() -> Router<AppState> {
    let mut router = Router::new();
    for p in PREFIXES {
        router = router
            .route(&format!("{p}/logged-models"), post(create_model))
            .route(&format!("{p}/logged-models/search"), post(search_models))
            .route(
                &format!("{p}/logged-models/{{id}}"),
                patch(finalize_model).delete(delete_model),
            )
            .route(&format!("{p}/logged-models/{{id}}/tags"), patch(set_tags))
            .route(
                &format!("{p}/logged-models/{{id}}/tags/{{key}}"),
                axum::routing::delete(delete_tag),
            )
            .route(
                &format!("{p}/logged-models/{{id}}/params"),
                post(log_params),
            )
            .route(&format!("{p}/runs/outputs"), post(log_outputs));
    }
    router
}

#[derive(Serialize)]
struct Info {
    model_id: String,
    experiment_id: String,
    name: String,
    creation_timestamp_ms: i64,
    last_updated_timestamp_ms: i64,
    artifact_uri: String,
    status: &'static str,
    status_message: String,
    model_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_run_id: Option<String>,
    tags: Vec<KeyValue>,
}

#[derive(Serialize)]
struct Data {
    params: Vec<KeyValue>,
    metrics: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct MlLoggedModel {
    info: Info,
    data: Data,
}

fn status_text(s: LoggedModelStatus) -> &'static str {
    match s {
        LoggedModelStatus::Pending => "LOGGED_MODEL_PENDING",
        LoggedModelStatus::Ready => "LOGGED_MODEL_READY",
        LoggedModelStatus::Failed => "LOGGED_MODEL_UPLOAD_FAILED",
    }
}

fn status_of(text: &str) -> Result<LoggedModelStatus, MlflowError> {
    Ok(match text {
        "LOGGED_MODEL_PENDING" | "PENDING" => LoggedModelStatus::Pending,
        "LOGGED_MODEL_READY" | "READY" => LoggedModelStatus::Ready,
        "LOGGED_MODEL_UPLOAD_FAILED" | "FAILED" => LoggedModelStatus::Failed,
        other => {
            return Err(invalid(format!(
                "logged model status {other:?} is not one of LOGGED_MODEL_PENDING, \
                 LOGGED_MODEL_READY, LOGGED_MODEL_UPLOAD_FAILED"
            )));
        }
    })
}

/// A logged model as MLflow shows it; `experiments` maps kiln's experiment names to MLflow ids.
fn model_of(m: &LoggedModel, experiments: &BTreeMap<String, String>) -> MlLoggedModel {
    let experiment = experiments
        .get(&m.experiment)
        .cloned()
        .unwrap_or_else(|| m.experiment.clone());
    MlLoggedModel {
        info: Info {
            model_id: m.id.clone(),
            artifact_uri: format!(
                "mlflow-artifacts:/{experiment}/{}/artifacts/{}",
                run_id_text(m.run),
                m.artifact
            ),
            experiment_id: experiment,
            name: m.name.clone(),
            creation_timestamp_ms: m.created_ms,
            last_updated_timestamp_ms: m.updated_ms,
            status: status_text(m.status),
            status_message: m.status_message.clone(),
            model_type: m.model_type.clone(),
            source_run_id: m.source_run.map(run_id_text),
            tags: pairs(&m.tags),
        },
        data: Data {
            params: pairs(&m.params),
            metrics: Vec::new(),
        },
    }
}

/// MLflow's id of each experiment, by kiln's name.
fn experiment_ids(registry: &Registry) -> Result<BTreeMap<String, String>, RegistryError> {
    Ok(registry
        .experiments()?
        .iter()
        .map(|e| (e.name.clone(), experiment_id(e)))
        .collect())
}

fn answer(registry: &Registry, m: &LoggedModel) -> Result<serde_json::Value, RegistryError> {
    Ok(serde_json::json!({ "model": model_of(m, &experiment_ids(registry)?) }))
}

/// Pairs as a map; a key given twice with two values is refused.
fn map_of(pairs: Vec<KeyValue>, what: &str) -> Result<BTreeMap<String, String>, MlflowError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        if let Some(old) = out.insert(p.key.clone(), p.value.clone())
            && old != p.value
        {
            return Err(invalid(format!(
                "{what} `{}` given twice with different values",
                p.key
            )));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Create {
    experiment_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    source_run_id: Option<String>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn create_model(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Create = read_body(bytes, &state)?;
    let source_run = b
        .source_run_id
        .as_ref()
        .filter(|r| !r.is_empty())
        .map(|r| run_id_of(Some(r), None))
        .transpose()?;
    let new = NewLoggedModel {
        experiment: String::new(),
        name: b.name.unwrap_or_default(),
        source_run,
        model_type: b.model_type.unwrap_or_default(),
        tags: map_of(b.tags, "tag")?,
        params: map_of(b.params, "parameter")?,
    };
    let experiment = b.experiment_id;
    Ok(Json(
        on_registry(&state, move |r| {
            let e = experiment_by_id(r, &experiment)?;
            let m = r.create_logged_model(NewLoggedModel {
                experiment: e.name,
                ..new
            })?;
            answer(r, &m)
        })
        .await?,
    ))
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Answer<serde_json::Value> {
    Ok(Json(
        on_registry(&state, move |r| answer(r, &r.logged_model(&id)?)).await?,
    ))
}

#[derive(Deserialize)]
struct Finalize {
    status: String,
}

async fn finalize_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Finalize = read_body(bytes, &state)?;
    let status = status_of(&b.status)?;
    Ok(Json(
        on_registry(&state, move |r| {
            let m = r.update_logged_model(&id, |m| {
                m.status = status;
                Ok(())
            })?;
            answer(r, &m)
        })
        .await?,
    ))
}

async fn delete_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Answer<serde_json::Value> {
    on_registry(&state, move |r| r.delete_logged_model(&id)).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    tags: Vec<KeyValue>,
}

async fn set_tags(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Tags = read_body(bytes, &state)?;
    let tags = map_of(b.tags, "tag")?;
    on_registry(&state, move |r| {
        for key in tags.keys() {
            kiln_core::registry::check_name("tag", key)?;
        }
        r.update_logged_model(&id, |m| {
            m.tags.extend(tags.clone());
            Ok(())
        })
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

async fn delete_tag(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Answer<serde_json::Value> {
    on_registry(&state, move |r| {
        r.update_logged_model(&id, |m| match m.tags.remove(&key) {
            Some(_) => Ok(()),
            None => Err(RegistryError::NotFound {
                what: "tag",
                name: key.clone(),
                hint: format!(" on logged model {id}"),
            }),
        })
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    params: Vec<KeyValue>,
}

async fn log_params(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Params = read_body(bytes, &state)?;
    let params = map_of(b.params, "parameter")?;
    on_registry(&state, move |r| {
        for key in params.keys() {
            kiln_core::registry::check_name("parameter", key)?;
        }
        r.update_logged_model(&id, |m| {
            for (k, v) in &params {
                if let Some(old) = m.params.get(k)
                    && old != v
                {
                    return Err(RegistryError::Invalid(format!(
                        "parameter `{k}` of logged model {} is {old:?} already; parameters \
                         do not change",
                        m.id
                    )));
                }
            }
            m.params.extend(params.clone());
            Ok(())
        })
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct Search {
    #[serde(default)]
    experiment_ids: Vec<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    max_results: Option<usize>,
    #[serde(default)]
    page_token: Option<String>,
}

/// What a search's filter asks for: `name = '…'`, `source_run_id = '…'`, `status = '…'` or
/// `model_type = '…'`, joined with AND. Anything else is refused, not guessed.
fn conditions(filter: &str) -> Result<Vec<(String, String)>, MlflowError> {
    let mut out = Vec::new();
    if filter.trim().is_empty() {
        return Ok(out);
    }
    for part in split_and(filter) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            invalid(format!(
                "logged model filter {part:?}: kiln understands KEY = 'VALUE' joined with AND"
            ))
        })?;
        let key = key.trim().trim_matches('`').to_string();
        if !["name", "source_run_id", "status", "model_type"].contains(&key.as_str()) {
            return Err(invalid(format!(
                "logged model filter on `{key}`: kiln filters on name, source_run_id, status \
                 and model_type"
            )));
        }
        let value = value.trim();
        let quoted = value.len() >= 2
            && ((value.starts_with('\'') && value.ends_with('\''))
                || (value.starts_with('"') && value.ends_with('"')));
        if !quoted {
            return Err(invalid(format!(
                "logged model filter {part:?}: quote the value"
            )));
        }
        out.push((key, value[1..value.len() - 1].to_string()));
    }
    Ok(out)
}

/// `a AND b and c` as its parts (AND in any case, outside quotes).
fn split_and(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quote) = (0, None);
    let bytes = filter.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if i + 5 <= bytes.len()
                && bytes[i] == b' '
                && bytes[i + 1..i + 4].eq_ignore_ascii_case(b"and")
                && bytes[i + 4] == b' ' =>
            {
                parts.push(&filter[start..i]);
                start = i + 5;
                i += 5;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    parts.push(&filter[start..]);
    parts
}

fn matches(m: &LoggedModel, conditions: &[(String, String)]) -> bool {
    conditions.iter().all(|(key, value)| match key.as_str() {
        "name" => m.name == *value,
        "source_run_id" => m.source_run.map(run_id_text).as_deref() == Some(value.as_str()),
        "status" => status_text(m.status) == value || status_text(m.status).ends_with(value),
        _ => m.model_type == *value,
    })
}

async fn search_models(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Search = read_body(bytes, &state)?;
    let conditions = conditions(b.filter.as_deref().unwrap_or(""))?;
    let limit = b.max_results.unwrap_or(100).clamp(1, MAX_RESULTS);
    let skip: usize = match b.page_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => t
            .parse()
            .map_err(|_| invalid(format!("page_token {t:?} is not one kiln gave")))?,
        None => 0,
    };
    let (models, more) = on_registry(&state, move |r| {
        let ids = experiment_ids(r)?;
        let wanted: Vec<String> = ids
            .iter()
            .filter(|(_, id)| b.experiment_ids.is_empty() || b.experiment_ids.contains(id))
            .map(|(name, _)| name.clone())
            .collect();
        let found =
            r.logged_models_where(|m| wanted.contains(&m.experiment) && matches(m, &conditions))?;
        let more = found.len() > skip + limit;
        let page: Vec<MlLoggedModel> = found
            .iter()
            .skip(skip)
            .take(limit)
            .map(|m| model_of(m, &ids))
            .collect();
        Ok((page, more))
    })
    .await?;
    let mut out = serde_json::json!({ "models": models });
    if more {
        out["next_page_token"] = serde_json::json!((skip + limit).to_string());
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct Output {
    model_id: String,
}

#[derive(Deserialize)]
struct Outputs {
    run_id: String,
    #[serde(default)]
    models: Vec<Output>,
}

/// A run's models: each must exist and come from the run (kiln keeps the link on the model).
async fn log_outputs(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Outputs = read_body(bytes, &state)?;
    let run = run_id_of(Some(&b.run_id), None)?;
    on_registry(&state, move |r| {
        r.run(run)?;
        for o in &b.models {
            let m = r.logged_model(&o.model_id)?;
            if m.run != run {
                return Err(RegistryError::Invalid(format!(
                    "logged model {} is not an output of run {}",
                    m.id,
                    run_id_text(run)
                )));
            }
        }
        Ok(())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_are_understood_or_refused() {
        assert_eq!(
            conditions("name = 'model' AND source_run_id = \"0000002a\"").unwrap(),
            vec![
                ("name".to_string(), "model".to_string()),
                ("source_run_id".to_string(), "0000002a".to_string())
            ]
        );
        assert_eq!(
            conditions("name = 'a and b'").unwrap(),
            vec![("name".to_string(), "a and b".to_string())]
        );
        assert!(conditions("").unwrap().is_empty());
        for bad in [
            "name LIKE 'm%'",
            "metrics.auc > 0.5",
            "name = model",
            "name = '",
        ] {
            assert!(conditions(bad).is_err(), "{bad}");
        }
    }
}
