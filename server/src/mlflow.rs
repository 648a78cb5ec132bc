//! MLflow's scoring protocol: `POST /invocations` with `dataframe_split`, `dataframe_records`,
//! `instances` or `inputs`, answering `{"predictions": [...]}`; `/ping` and `/health`.
//!
//! An MLflow scoring server serves one model. kiln serves several, so `/invocations` takes the
//! only served model, or the one named by `?model=NAME` (and `&version=ALIAS_OR_NUMBER`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::decode::{from_columns, from_csv, from_records, from_split, json_kind};
use crate::error::{ApiError, ErrorStyle, ServeError};
use crate::infer::predict;
use crate::state::{AppState, body, parse_json};

pub async fn ping() -> &'static str {
    "\n"
}

/// `GET /version`: the version of the server, as an MLflow scoring server answers it.
pub async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub async fn invocations(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let mut model_label = String::new();
    let result = async {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        let csv = content_type.starts_with("text/csv");
        if !csv && !content_type.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type `{content_type}` is not read here; send application/json or \
                     text/csv (a header line of column names, as pandas' to_csv writes)"
                ),
            ));
        }
        let model = match query.get("model") {
            Some(m) => m.clone(),
            None => {
                let models = state.models.clone();
                let names = tokio::task::spawn_blocking(move || models.names())
                    .await
                    .map_err(|e| ServeError::Internal(e.to_string()))??;
                match names.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(ServeError::NotReady("no model is served".into()).into()),
                    many => {
                        return Err(ApiError::bad_request(format!(
                            "this server serves {} models ({}); name one with /invocations?model=NAME",
                            many.len(),
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        model_label = model.clone();
        let bytes = body(bytes, state.config.max_body)?;
        let (p, ()) = predict(&state.models, &model, query.get("version").map(String::as_str), "mlflow", move |rt| {
            if csv {
                return Ok((from_csv(&rt.manifest().signature, &bytes)?, ()));
            }
            let request: Value = parse_json(&bytes)?;
            let Value::Object(mut request) = request else {
                return Err(ServeError::BadInput(
                    "the body must be a JSON object with one of dataframe_split, dataframe_records, instances or inputs".into(),
                ));
            };
            request.remove("params");
            let signature = &rt.manifest().signature;
            let keys: Vec<String> = request.keys().cloned().collect();
            let rows = match keys.as_slice() {
                [k] if k == "dataframe_split" => {
                    let Some(Value::Object(split)) = request.remove("dataframe_split") else {
                        return Err(ServeError::BadInput("`dataframe_split` must be an object with `columns` and `data`".into()));
                    };
                    let columns: Vec<String> = match split.get("columns") {
                        Some(Value::Array(c)) => c
                            .iter()
                            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| {
                                ServeError::BadInput(format!("dataframe_split.columns: expected column names, found {}", json_kind(v)))
                            }))
                            .collect::<Result<_, _>>()?,
                        _ => return Err(ServeError::BadInput("dataframe_split needs `columns`, an array of column names".into())),
                    };
                    let Some(Value::Array(data)) = split.get("data") else {
                        return Err(ServeError::BadInput("dataframe_split needs `data`, an array of rows".into()));
                    };
                    from_split(signature, &columns, data)?
                }
                [k] if k == "dataframe_records" || k == "instances" => match request.remove(k.as_str()) {
                    Some(Value::Array(rows)) => from_records(signature, &rows)?,
                    Some(other) => {
                        return Err(ServeError::BadInput(format!("`{k}` must be an array of rows, found {}", json_kind(&other))));
                    }
                    None => unreachable!("the key was just listed"),
                },
                [k] if k == "inputs" => match request.remove("inputs") {
                    Some(Value::Object(columns)) => from_columns(signature, &columns)?,
                    Some(Value::Array(rows)) => from_records(signature, &rows)?,
                    Some(other) => {
                        return Err(ServeError::BadInput(format!("`inputs` must be an object of columns or an array of rows, found {}", json_kind(&other))));
                    }
                    None => unreachable!("the key was just listed"),
                },
                _ => {
                    return Err(ServeError::BadInput(format!(
                        "expected exactly one of dataframe_split, dataframe_records, instances or inputs, found {}",
                        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
                    )));
                }
            };
            Ok((rows, ()))
        })
        .await?;
        #[derive(Serialize)]
        struct Labels<'a> {
            predictions: Vec<&'a str>,
        }
        #[derive(Serialize)]
        struct Values<'a> {
            predictions: &'a [f32],
        }
        let body = match p.labels() {
            Some(predictions) => serde_json::to_vec(&Labels { predictions }),
            None => serde_json::to_vec(&Values { predictions: &p.values }),
        }
        .map_err(|e| ServeError::Internal(e.to_string()))?;
        let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Ok(v) = HeaderValue::from_str(&p.version.label) {
            r.headers_mut().insert("kiln-model-version", v);
        }
        Ok(r)
    }
    .await;
    result.unwrap_or_else(|e: ApiError| {
        state
            .models
            .count_error(&model_label, "mlflow", e.status.as_str());
        e.styled(ErrorStyle::Mlflow).into_response()
    })
}
