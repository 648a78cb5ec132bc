//! TF Serving's REST API: `/v1/models/{name}[/versions/{v}|/labels/{label}]` status,
//! `…/metadata`, and `…:predict` with the row (`instances`) and columnar (`inputs`) formats.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::bundle::Task;
use kiln_core::data::ColumnType;
use serde::Serialize;
use serde_json::{Value, json};

use crate::decode::{from_columns, from_records, json_kind};
use crate::error::{ApiError, ServeError};
use crate::infer::{Prediction, predict};
use crate::state::{AppState, body, parse_json};
use crate::v2::version_of;

/// What the path after `/v1/models/` asks for.
struct Target {
    model: String,
    /// An alias or version; `None` is the live routes.
    which: Option<String>,
    /// What follows: `""`, `"metadata"`, or a verb after `:`.
    rest: String,
    verb: Option<String>,
}

fn parse_path(path: &str) -> Result<Target, ApiError> {
    let (path, verb) = match path.rsplit_once(':') {
        Some((p, v)) if !v.contains('/') => (p, Some(v.to_string())),
        _ => (path, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let bad = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no TF Serving endpoint /v1/models/{path}; use /v1/models/NAME[/versions/N|/labels/LABEL][/metadata|:predict]"
            ),
        )
    };
    let (model, which, rest) = match parts.as_slice() {
        [m] => (*m, None, ""),
        [m, "metadata"] => (*m, None, "metadata"),
        [m, "versions" | "labels", w] => (*m, Some(*w), ""),
        [m, "versions" | "labels", w, "metadata"] => (*m, Some(*w), "metadata"),
        _ => return Err(bad()),
    };
    Ok(Target {
        model: model.to_string(),
        which: which.map(str::to_string),
        rest: rest.to_string(),
        verb,
    })
}

pub async fn get(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    let result = async {
        let t = parse_path(&path)?;
        if t.verb.is_some() {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("`:{}` takes POST", t.verb.unwrap_or_default()),
            ));
        }
        let v = version_of(&state, &t.model, t.which.as_deref()).await?;
        if t.rest == "metadata" {
            return Ok(Json(metadata(&v)).into_response());
        }
        let versions: Vec<Value> = match (&t.which, state.models.live(&t.model)) {
            (None, Some(live)) => {
                let mut seen = Vec::new();
                for r in &live.routes {
                    if !seen.contains(&r.version.version) {
                        seen.push(r.version.version);
                    }
                }
                seen.iter().map(|v| available(*v)).collect()
            }
            _ => vec![available(v.version)],
        };
        Ok(Json(json!({ "model_version_status": versions })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn available(version: u32) -> Value {
    json!({
        "version": version.to_string(),
        "state": "AVAILABLE",
        "status": { "error_code": "OK", "error_message": "" }
    })
}

fn dtype(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Integer => "DT_INT64",
        ColumnType::Float => "DT_DOUBLE",
        ColumnType::Boolean => "DT_BOOL",
        ColumnType::Categorical => "DT_STRING",
    }
}

fn metadata(v: &crate::version::Version) -> Value {
    let m = v.runtime.manifest();
    let tensor = |name: &str, dt: &str, dims: &[i64]| {
        let dim: Vec<Value> = dims
            .iter()
            .map(|d| json!({ "size": d.to_string() }))
            .collect();
        json!({ "dtype": dt, "tensor_shape": { "dim": dim }, "name": name })
    };
    let inputs: serde_json::Map<String, Value> = m
        .signature
        .iter()
        .map(|c| (c.name.clone(), tensor(&c.name, dtype(c.column_type), &[-1])))
        .collect();
    let mut outputs = serde_json::Map::new();
    match m.task {
        Task::Regression => {
            outputs.insert(m.target.clone(), tensor(&m.target, "DT_FLOAT", &[-1]));
        }
        _ => {
            outputs.insert("label".into(), tensor("label", "DT_STRING", &[-1]));
            outputs.insert(
                "probabilities".into(),
                tensor("probabilities", "DT_FLOAT", &[-1, v.runtime.width() as i64]),
            );
        }
    }
    json!({
        "model_spec": { "name": v.model, "signature_name": "", "version": v.label },
        "metadata": { "signature_def": { "signature_def": { "serving_default": {
            "inputs": inputs,
            "outputs": outputs,
            "method_name": "tensorflow/serving/predict",
        }}}}
    })
}

pub async fn post(
    State(state): State<AppState>,
    Path(path): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let t = parse_path(&path)?;
        match t.verb.as_deref() {
            Some("predict") if t.rest.is_empty() => {}
            Some(verb @ ("classify" | "regress")) if t.rest.is_empty() => {
                let classify = verb == "classify";
                let bytes = body(bytes, state.config.max_body)?;
                let (p, ()) = predict(&state.models, &t.model, t.which.as_deref(), "tfserving", move |rt| {
                    let manifest = rt.manifest();
                    match (classify, manifest.labels.is_empty()) {
                        (true, true) => {
                            return Err(ServeError::BadInput(format!(
                                "model `{}` predicts a number; ask it with :regress (or :predict)",
                                manifest.target
                            )));
                        }
                        (false, false) => {
                            return Err(ServeError::BadInput(
                                "this model classifies; ask it with :classify (or :predict)".into(),
                            ));
                        }
                        _ => {}
                    }
                    Ok((from_records(&manifest.signature, &examples(&bytes)?)?, ()))
                })
                .await?;
                return Ok(encode_results(&p));
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no TF Serving endpoint POST /v1/models/{path}; use …:predict"),
                ));
            }
        }
        let bytes = body(bytes, state.config.max_body)?;
        let (p, columnar) = predict(&state.models, &t.model, t.which.as_deref(), "tfserving", move |rt| {
            let request: Value = parse_json(&bytes)?;
            let Value::Object(mut request) = request else {
                return Err(ServeError::BadInput(
                    "the body must be a JSON object with `instances` or `inputs`".into(),
                ));
            };
            let signature = &rt.manifest().signature;
            match (request.remove("instances"), request.remove("inputs")) {
                (Some(Value::Array(rows)), None) => Ok((from_records(signature, &rows)?, false)),
                (None, Some(Value::Object(columns))) => Ok((from_columns(signature, &columns)?, true)),
                (None, Some(Value::Array(rows))) => Ok((from_records(signature, &rows)?, true)),
                (Some(_), Some(_)) => Err(ServeError::BadInput(
                    "give either `instances` (rows) or `inputs` (columns), not both".into(),
                )),
                (Some(other), None) | (None, Some(other)) => Err(ServeError::BadInput(format!(
                    "`instances` must be an array of rows and `inputs` an object of columns, found {}",
                    json_kind(&other)
                ))),
                (None, None) => Err(ServeError::BadInput(
                    "the body has neither `instances` (rows) nor `inputs` (columns)".into(),
                )),
            }
        })
        .await?;
        Ok(encode(&p, columnar))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| {
        state.models.count_error(
            path.split(['/', ':']).next().unwrap_or(""),
            "tfserving",
            e.status.as_str(),
        );
        e.into_response()
    })
}

/// The rows of a `:classify` or `:regress` request: `examples` (objects of feature values, a
/// value or a one-element list each), each over the features of `context`.
fn examples(bytes: &[u8]) -> Result<Vec<Value>, ServeError> {
    let request: Value = parse_json(bytes)?;
    let Value::Object(mut request) = request else {
        return Err(ServeError::BadInput(
            "the body must be a JSON object with `examples`".into(),
        ));
    };
    let context = match request.remove("context") {
        None => serde_json::Map::new(),
        Some(Value::Object(c)) => c,
        Some(other) => {
            return Err(ServeError::BadInput(format!(
                "`context` must be an object of features, found {}",
                json_kind(&other)
            )));
        }
    };
    let Some(Value::Array(examples)) = request.remove("examples") else {
        return Err(ServeError::BadInput(
            "the body needs `examples`, an array of objects of features".into(),
        ));
    };
    examples
        .into_iter()
        .enumerate()
        .map(|(i, example)| {
            let Value::Object(features) = example else {
                return Err(ServeError::BadInput(format!(
                    "example {i}: expected an object of features, found {}",
                    json_kind(&example)
                )));
            };
            let mut row = context.clone();
            for (name, value) in features {
                let value = match value {
                    Value::Array(mut one) if one.len() == 1 => one.remove(0),
                    Value::Array(many) => {
                        return Err(ServeError::BadInput(format!(
                            "example {i}, feature `{name}`: {} values; kiln's features hold one",
                            many.len()
                        )));
                    }
                    other => other,
                };
                row.insert(name, value);
            }
            Ok(Value::Object(row))
        })
        .collect()
}

/// `{"results": …}`: per example, each class with its score (`:classify`), or the value
/// (`:regress`).
fn encode_results(p: &Prediction) -> Response {
    let results = match p.labels() {
        Some(_) => {
            let classes = &p.version.runtime.manifest().labels;
            let rows: Vec<Vec<(&str, f32)>> = p
                .values
                .chunks(p.width)
                .map(|scores| {
                    classes
                        .iter()
                        .map(String::as_str)
                        .zip(scores.iter().copied())
                        .collect()
                })
                .collect();
            json!({ "results": rows })
        }
        None => json!({ "results": p.values }),
    };
    let mut r = Json(results).into_response();
    if let Ok(v) = HeaderValue::from_str(&p.version.label) {
        r.headers_mut().insert("kiln-model-version", v);
    }
    r
}

#[derive(Serialize)]
struct Classified<'a> {
    label: &'a str,
    probabilities: &'a [f32],
}

fn encode(p: &Prediction, columnar: bool) -> Response {
    let body = match (p.labels(), columnar) {
        (Some(labels), false) => {
            let rows: Vec<Classified> = labels
                .iter()
                .zip(p.values.chunks(p.width))
                .map(|(label, probabilities)| Classified {
                    label,
                    probabilities,
                })
                .collect();
            serde_json::to_vec(&json!({ "predictions": rows }))
        }
        (Some(labels), true) => {
            let probabilities: Vec<&[f32]> = p.values.chunks(p.width).collect();
            serde_json::to_vec(
                &json!({ "outputs": { "label": labels, "probabilities": probabilities } }),
            )
        }
        (None, false) => serde_json::to_vec(&json!({ "predictions": p.values })),
        (None, true) => serde_json::to_vec(&json!({ "outputs": p.values })),
    };
    let mut r = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.unwrap_or_default(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&p.version.label) {
        r.headers_mut().insert("kiln-model-version", v);
    }
    r
}
