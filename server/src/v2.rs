//! The Open Inference Protocol V2 (KServe, Triton, Seldon MLServer) over REST: health, server
//! and model metadata, readiness and `infer`, with JSON tensors and the binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data_output`) that
//! `tritonclient.http` uses by default.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_core::bundle::Task;
use kiln_core::data::ColumnType;
use kiln_core::transform::InputColumn;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::decode::{
    ColumnBuilder, column_list, from_matrix, json_kind, missing_column, unknown_column,
};
use crate::error::{ApiError, ServeError};
use crate::infer::{Prediction, not_live, predict};
use crate::runtime::{Rows, Runtime};
use crate::state::{AppState, body, parse_json};
use crate::version::Version;

/// The header that says how long the JSON part of a binary request or response is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// Ready when every served model has live versions.
pub async fn ready(State(state): State<AppState>) -> Response {
    let waiting = not_ready(&state).await;
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": waiting.join("; ") })),
        )
            .into_response()
    }
}

/// Each served model that has no live version, with why (`NAME: problem`); empty when ready.
pub(crate) async fn not_ready(state: &AppState) -> Vec<String> {
    let models = state.models.clone();
    let names = tokio::task::spawn_blocking(move || models.names())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    names
        .iter()
        .filter(|n| state.models.live(n).is_none())
        .map(|n| match state.models.problem(n) {
            Some(p) => format!("{n}: {p}"),
            None => format!("{n}: loading"),
        })
        .collect()
}

/// What `GET /v2` and gRPC's `ServerMetadata` say of the server.
pub(crate) const SERVER_NAME: &str = "kiln";
pub(crate) const EXTENSIONS: &[&str] = &["binary_tensor_data"];

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = version_of(&state, &name, None).await?;
    Ok(Json(metadata(&state, &v).await.to_json()))
}

pub async fn version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = version_of(&state, &name, Some(&version)).await?;
    Ok(Json(metadata(&state, &v).await.to_json()))
}

pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    version_of(&state, &name, None).await?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

pub async fn version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = version_of(&state, &name, Some(&version)).await?;
    Ok(Json(
        json!({ "name": name, "version": v.label, "ready": true }),
    ))
}

pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    run(state, name, None, headers, bytes).await
}

pub async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    run(state, name, Some(version), headers, bytes).await
}

/// The live version of a model (`which` = `None`) or the alias or version named.
pub(crate) async fn version_of(
    state: &AppState,
    model: &str,
    which: Option<&str>,
) -> Result<std::sync::Arc<Version>, ApiError> {
    let models = &state.models;
    match which {
        None => match models.live(model) {
            Some(live) => Ok(live.routes[0].version.clone()),
            None => Err(not_live(models, model).await.into()),
        },
        Some(w) => match models.cached(model, w) {
            Some(v) => Ok(v),
            None => {
                let (m, name, w) = (models.clone(), model.to_string(), w.to_string());
                tokio::task::spawn_blocking(move || m.version(&name, &w))
                    .await
                    .map_err(|e| ServeError::Internal(e.to_string()))?
                    .map_err(ApiError::from)
            }
        },
    }
}

/// Datatype of a signature column as V2 clients should send it.
fn datatype(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Integer => "INT64",
        ColumnType::Float => "FP64",
        ColumnType::Boolean => "BOOL",
        ColumnType::Categorical => "BYTES",
    }
}

/// A tensor's name, datatype and shape (`-1`: any number of rows).
pub(crate) struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// What a version says of itself to V2 clients, over REST and gRPC alike.
pub(crate) struct Metadata {
    pub name: String,
    pub versions: Vec<String>,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
    /// kiln's additions (REST only: gRPC's message has no place for them).
    pub parameters: Value,
}

/// The platform V2 metadata names.
pub(crate) const PLATFORM: &str = "kiln";

impl Metadata {
    fn to_json(&self) -> Value {
        let tensors = |ts: &[TensorMeta]| -> Vec<Value> {
            ts.iter()
                .map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape }))
                .collect()
        };
        json!({
            "name": self.name,
            "versions": self.versions,
            "platform": PLATFORM,
            "inputs": tensors(&self.inputs),
            "outputs": tensors(&self.outputs),
            "parameters": self.parameters,
        })
    }
}

pub(crate) async fn metadata(state: &AppState, v: &Version) -> Metadata {
    let m = v.runtime.manifest();
    let versions: Vec<String> = match state.models.registry() {
        Ok(registry) => {
            let (registry, model) = (registry.clone(), v.model.clone());
            tokio::task::spawn_blocking(move || registry.versions(&model))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
                .iter()
                .map(|v| v.version.to_string())
                .collect()
        }
        // A server of one bundle serves its version 1.
        Err(_) => vec![v.version.to_string()],
    };
    let inputs = m
        .signature
        .iter()
        .map(|c| TensorMeta {
            name: c.name.clone(),
            datatype: datatype(c.column_type),
            shape: vec![-1],
        })
        .collect();
    let outputs = output_names(v)
        .into_iter()
        .map(|(name, datatype, width)| TensorMeta {
            name,
            datatype,
            shape: match width {
                Some(w) => vec![-1, w as i64],
                None => vec![-1],
            },
        })
        .collect();
    let numeric = m
        .signature
        .iter()
        .all(|c| c.column_type != ColumnType::Categorical);
    Metadata {
        name: v.model.clone(),
        versions,
        inputs,
        outputs,
        parameters: json!({
            "version": v.label,
            "task": m.task,
            "labels": m.labels,
            "single_tensor_input": numeric,
            "single_tensor_shape": [-1, m.signature.len()],
        }),
    }
}

/// `(name, datatype, width)` of each output a version gives.
fn output_names(v: &Version) -> Vec<(String, &'static str, Option<usize>)> {
    let m = v.runtime.manifest();
    match m.task {
        Task::Regression => vec![(m.target.clone(), "FP32", None)],
        _ => vec![
            ("label".to_string(), "BYTES", None),
            ("probabilities".to_string(), "FP32", Some(v.runtime.width())),
        ],
    }
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// What the response needs from the request.
struct Echo {
    id: Option<String>,
    parameters: Option<Map<String, Value>>,
    /// Requested outputs and whether each goes in the binary part; `None`: all, as JSON.
    outputs: Option<Vec<(String, bool)>>,
    binary_default: bool,
}

async fn run(
    state: AppState,
    model: String,
    which: Option<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let bytes = body(bytes, state.config.max_body)?;
        let header_length = match headers.get(HEADER_LENGTH) {
            Some(h) => Some(
                h.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{HEADER_LENGTH} must be a byte count"))
                    })?,
            ),
            None => None,
        };
        let (p, echo) = predict(&state.models, &model, which.as_deref(), "v2", move |rt| {
            decode(rt, &bytes, header_length)
        })
        .await?;
        encode(&p, echo)
    }
    .await;
    result.unwrap_or_else(|e: ApiError| {
        state.models.count_error(&model, "v2", e.status.as_str());
        e.into_response()
    })
}

fn decode(
    rt: &Runtime,
    bytes: &[u8],
    header_length: Option<usize>,
) -> Result<(Rows, Echo), ServeError> {
    let (json_part, mut binary) = match header_length {
        Some(n) if n <= bytes.len() => (&bytes[..n], &bytes[n..]),
        Some(n) => {
            return Err(ServeError::BadInput(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                bytes.len()
            )));
        }
        None => (bytes, &[][..]),
    };
    let request: InferRequest = parse_json(json_part)?;
    let signature = &rt.manifest().signature;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let size = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    ServeError::BadInput(format!(
                        "input `{}`: binary_data_size must be a byte count",
                        input.name
                    ))
                })
            })
            .transpose()?;
        let elements = match (size, &input.data) {
            (Some(n), _) => {
                let n = n as usize;
                if n > binary.len() {
                    return Err(ServeError::BadInput(format!(
                        "input `{}`: binary_data_size is {n} but only {} bytes of binary data are left",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                binary_elements(&input.name, &input.datatype, mine)?
            }
            (None, Some(data)) => json_elements(&input.name, &input.datatype, data)?,
            (None, None) => {
                return Err(ServeError::BadInput(format!(
                    "input `{}` has neither data nor binary_data_size",
                    input.name
                )));
            }
        };
        let count = shape_count(&input.name, &input.shape)?;
        if count != elements.len() {
            return Err(ServeError::BadInput(format!(
                "input `{}`: shape {:?} holds {count} values but {} were sent",
                input.name,
                input.shape,
                elements.len()
            )));
        }
        tensors.push((input, elements));
    }
    if !binary.is_empty() {
        return Err(ServeError::BadInput(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let rows = to_rows(signature, &tensors)?;
    let binary_default = request
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let outputs = request.outputs.map(|outs| {
        outs.into_iter()
            .map(|o| {
                let binary = o
                    .parameters
                    .as_ref()
                    .and_then(|p| p.get("binary_data"))
                    .and_then(Value::as_bool)
                    .unwrap_or(binary_default);
                (o.name, binary)
            })
            .collect()
    });
    let mut parameters = request.parameters;
    if let Some(p) = parameters.as_mut() {
        p.remove("binary_data_output");
        if p.is_empty() {
            parameters = None;
        }
    }
    Ok((
        rows,
        Echo {
            id: request.id,
            parameters,
            outputs,
            binary_default,
        },
    ))
}

pub(crate) fn shape_count(name: &str, shape: &[i64]) -> Result<usize, ServeError> {
    let mut n: usize = 1;
    for d in shape {
        let d = usize::try_from(*d).map_err(|_| {
            ServeError::BadInput(format!(
                "input `{name}`: shape {shape:?} has a negative dimension"
            ))
        })?;
        n = n.checked_mul(d).ok_or_else(|| {
            ServeError::BadInput(format!("input `{name}`: shape {shape:?} is too large"))
        })?;
    }
    Ok(n)
}

/// The values of one input tensor.
pub(crate) enum Elements {
    /// Numbers of a numeric or BOOL tensor; `None` for a JSON null.
    Numbers(Vec<Option<f64>>),
    Texts(Vec<String>),
}

impl Elements {
    pub(crate) fn len(&self) -> usize {
        match self {
            Elements::Numbers(v) => v.len(),
            Elements::Texts(v) => v.len(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Number,
    Bool,
    Bytes,
}

pub(crate) fn kind(name: &str, datatype: &str) -> Result<(Kind, usize), ServeError> {
    Ok(match datatype {
        "FP32" | "INT32" | "UINT32" => (Kind::Number, 4),
        "FP64" | "INT64" | "UINT64" => (Kind::Number, 8),
        "FP16" | "INT16" | "UINT16" => (Kind::Number, 2),
        "INT8" | "UINT8" => (Kind::Number, 1),
        "BOOL" => (Kind::Bool, 1),
        "BYTES" => (Kind::Bytes, 0),
        other => {
            return Err(ServeError::BadInput(format!(
                "input `{name}`: unknown datatype `{other}` (use FP32, FP64, INT64, BOOL or BYTES)"
            )));
        }
    })
}

fn json_elements(name: &str, datatype: &str, data: &Value) -> Result<Elements, ServeError> {
    let (kind, _) = kind(name, datatype)?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let wrong = |v: &Value| {
        ServeError::BadInput(format!(
            "input `{name}` is {datatype} but its data holds {}",
            match v {
                Value::String(s) => format!("the string {s:?}"),
                other => json_kind(other).to_string(),
            }
        ))
    };
    Ok(match kind {
        Kind::Number => Elements::Numbers(
            flat.iter()
                .map(|v| match v {
                    Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| wrong(v)),
                    Value::Null => Ok(None),
                    other => Err(wrong(other)),
                })
                .collect::<Result<_, _>>()?,
        ),
        Kind::Bool => Elements::Numbers(
            flat.iter()
                .map(|v| match v {
                    Value::Bool(b) => Ok(Some(if *b { 1.0 } else { 0.0 })),
                    Value::Null => Ok(None),
                    other => Err(wrong(other)),
                })
                .collect::<Result<_, _>>()?,
        ),
        Kind::Bytes => Elements::Texts(
            flat.iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong(other)),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

pub(crate) fn binary_elements(
    name: &str,
    datatype: &str,
    bytes: &[u8],
) -> Result<Elements, ServeError> {
    let (kind, size) = kind(name, datatype)?;
    if kind == Kind::Bytes {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(ServeError::BadInput(format!(
                    "input `{name}`: BYTES data ends inside a length prefix"
                )));
            }
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err(ServeError::BadInput(format!(
                    "input `{name}`: a BYTES element of {n} bytes runs past the data"
                )));
            }
            let text = std::str::from_utf8(&rest[..n]).map_err(|_| {
                ServeError::BadInput(format!("input `{name}`: a BYTES element is not UTF-8"))
            })?;
            out.push(text.to_string());
            rest = &rest[n..];
        }
        return Ok(Elements::Texts(out));
    }
    if !bytes.len().is_multiple_of(size) {
        return Err(ServeError::BadInput(format!(
            "input `{name}`: {} bytes is not a whole number of {datatype} values",
            bytes.len()
        )));
    }
    let values = bytes
        .chunks_exact(size)
        .map(|c| {
            let x = match datatype {
                "FP32" => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                "FP64" => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                "INT32" => f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                "UINT32" => f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                "INT64" => {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                }
                "UINT64" => {
                    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                }
                "INT16" => f64::from(i16::from_le_bytes([c[0], c[1]])),
                "UINT16" => f64::from(u16::from_le_bytes([c[0], c[1]])),
                "FP16" => half_to_f64(u16::from_le_bytes([c[0], c[1]])),
                "INT8" => f64::from(c[0] as i8),
                _ => f64::from(c[0]),
            };
            Some(x)
        })
        .collect();
    Ok(Elements::Numbers(values))
}

/// IEEE 754 half precision to double.
fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Input tensors → rows: one `[N, columns]` numeric tensor in signature order, or one `[N]`
/// tensor per signature column.
pub(crate) fn to_rows(
    signature: &[InputColumn],
    tensors: &[(&InputTensor, Elements)],
) -> Result<Rows, ServeError> {
    if tensors.is_empty() {
        return Err(ServeError::BadInput(format!(
            "the request has no inputs; the model takes {}",
            column_list(signature)
        )));
    }
    let single = tensors.len() == 1
        && tensors[0].0.shape.len() == 2
        && !(signature.len() == 1 && signature[0].name == tensors[0].0.name);
    if single {
        let (t, elements) = &tensors[0];
        let width = usize::try_from(t.shape[1]).unwrap_or(0);
        if width != signature.len() {
            return Err(ServeError::BadInput(format!(
                "input `{}` has shape {:?}; a single input tensor must be [rows, {}] with the model's {}",
                t.name,
                t.shape,
                signature.len(),
                column_list(signature)
            )));
        }
        let Elements::Numbers(values) = elements else {
            return Err(ServeError::BadInput(format!(
                "input `{}` is BYTES; a single input tensor must be numeric (FP32, FP64, INT64); \
                 send categorical columns as one BYTES tensor each",
                t.name
            )));
        };
        let rows = usize::try_from(t.shape[0]).unwrap_or(0);
        let mut flat = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(x) => flat.push(*x),
                None => {
                    return Err(ServeError::BadInput(format!(
                        "input `{}`: row {}, column `{}` is null; a numeric tensor needs a value",
                        t.name,
                        i / width,
                        signature[i % width].name
                    )));
                }
            }
        }
        return from_matrix(signature, flat, rows);
    }
    for (t, _) in tensors {
        if !signature.iter().any(|c| c.name == t.name) {
            let hint = if tensors.len() == 1 {
                format!(
                    "; a single input tensor must be 2-D, [rows, {}]",
                    signature.len()
                )
            } else {
                String::new()
            };
            let e = unknown_column(signature, &t.name, None);
            return Err(ServeError::BadInput(format!("input: {e}{hint}")));
        }
    }
    let mut rows = None;
    let mut columns = Vec::with_capacity(signature.len());
    for input in signature {
        let Some((t, elements)) = tensors.iter().find(|(t, _)| t.name == input.name) else {
            return Err(missing_column(&input.name, None));
        };
        let ok_shape = t.shape.len() == 1 || (t.shape.len() == 2 && t.shape[1] == 1);
        if !ok_shape {
            return Err(ServeError::BadInput(format!(
                "input `{}` has shape {:?}; a column tensor must be [rows] or [rows, 1]",
                t.name, t.shape
            )));
        }
        let n = elements.len();
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => {
                return Err(ServeError::BadInput(format!(
                    "input `{}` has {n} rows but the inputs before it have {r}",
                    t.name
                )));
            }
            Some(_) => {}
        }
        let categorical = input.column_type == ColumnType::Categorical;
        let mut b = ColumnBuilder::new(input, n);
        match elements {
            Elements::Texts(texts) if categorical => {
                for (r, s) in texts.iter().enumerate() {
                    b.push_text(r, s)?;
                }
            }
            Elements::Numbers(values) if !categorical => {
                for (r, v) in values.iter().enumerate() {
                    match v {
                        Some(x) => b.push_number(r, *x)?,
                        None => b.push_json(r, &Value::Null)?,
                    }
                }
            }
            _ => {
                return Err(ServeError::BadInput(format!(
                    "input `{}` is {} but column `{}` is {}; send it as {}",
                    t.name,
                    t.datatype,
                    input.name,
                    input.column_type,
                    datatype(input.column_type)
                )));
            }
        }
        columns.push(b.finish());
    }
    let rows = rows.unwrap_or(0);
    if rows == 0 {
        return Err(ServeError::BadInput("the request has no rows".into()));
    }
    Ok(Rows::from_columns(rows, columns))
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Map<String, Value>>,
    outputs: Vec<OutputTensor<'a>>,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: String,
    datatype: &'static str,
    shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Data<'a> {
    Numbers(&'a [f32]),
    Texts(Vec<&'a str>),
}

impl Data<'_> {
    /// The values as raw tensor bytes: little-endian numbers, or each text after its 4-byte
    /// little-endian length (the binary tensor extension's and gRPC's `raw_*_contents` layout).
    pub(crate) fn write_raw(&self, out: &mut Vec<u8>) {
        match self {
            Data::Numbers(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Data::Texts(v) => v.iter().for_each(|s| {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }),
        }
    }
}

/// The outputs a request asked for (each with whether it goes raw), checked against the
/// version's; `None` asks for all of them, `binary_default` raw or not.
pub(crate) fn wanted_outputs(
    p: &Prediction,
    requested: Option<Vec<(String, bool)>>,
    binary_default: bool,
) -> Result<Vec<(String, bool)>, ServeError> {
    let available = output_names(&p.version);
    match requested {
        Some(list) => {
            for (name, _) in &list {
                if !available.iter().any(|(n, _, _)| n == name) {
                    let names: Vec<&str> = available.iter().map(|(n, _, _)| n.as_str()).collect();
                    return Err(ServeError::BadInput(format!(
                        "unknown output `{name}`; the model's outputs are {}",
                        names.join(", ")
                    )));
                }
            }
            Ok(list)
        }
        None => Ok(available
            .into_iter()
            .map(|(n, _, _)| (n, binary_default))
            .collect()),
    }
}

/// The datatype, shape and values of the output `name` of a prediction.
pub(crate) fn output<'a>(
    p: &'a Prediction,
    labels: &Option<Vec<&'a str>>,
    name: &str,
) -> (&'static str, Vec<usize>, Data<'a>) {
    if name == "label" {
        let l = labels.clone().unwrap_or_default();
        ("BYTES", vec![p.rows], Data::Texts(l))
    } else if name == "probabilities" {
        ("FP32", vec![p.rows, p.width], Data::Numbers(&p.values))
    } else {
        ("FP32", vec![p.rows], Data::Numbers(&p.values))
    }
}

fn encode(p: &Prediction, echo: Echo) -> Result<Response, ApiError> {
    let wanted = wanted_outputs(p, echo.outputs, echo.binary_default)?;
    let labels = p.labels();
    let mut binary = Vec::new();
    let mut outputs = Vec::with_capacity(wanted.len());
    for (name, as_binary) in &wanted {
        let (datatype, shape, data) = output(p, &labels, name);
        if *as_binary {
            let start = binary.len();
            data.write_raw(&mut binary);
            outputs.push(OutputTensor {
                name: name.clone(),
                datatype,
                shape,
                parameters: Some(json!({ "binary_data_size": binary.len() - start })),
                data: None,
            });
        } else {
            outputs.push(OutputTensor {
                name: name.clone(),
                datatype,
                shape,
                parameters: None,
                data: Some(data),
            });
        }
    }
    let response = InferResponse {
        model_name: &p.version.model,
        model_version: &p.version.label,
        id: echo.id,
        parameters: echo.parameters,
        outputs,
    };
    let mut json_bytes = serde_json::to_vec(&response)
        .map_err(|e| ApiError::from(ServeError::Internal(format!("encoding the response: {e}"))))?;
    let version = HeaderValue::from_str(&p.version.label).ok();
    let mut response = if binary.is_empty() {
        let mut r = Response::new(Body::from(json_bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        let length = json_bytes.len();
        json_bytes.extend_from_slice(&binary);
        let mut r = Response::new(Body::from(json_bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(length));
        r
    };
    if let Some(v) = version {
        response.headers_mut().insert("kiln-model-version", v);
    }
    Ok(response)
}
