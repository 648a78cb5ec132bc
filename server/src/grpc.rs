//! The Open Inference Protocol V2 over gRPC: the `inference.GRPCInferenceService` of KServe's
//! `grpc_predict_v2.proto`, which Triton's `grpc_service.proto` extends with the same messages
//! and tags, so `tritonclient.grpc` and KServe's clients both speak to it. Health, server and
//! model metadata and readiness, and `ModelInfer` with typed `contents` or
//! `raw_input_contents`; answers go back in `raw_output_contents`, as Triton sends them.
//!
//! Every call goes through the same path as V2 over REST ([`crate::infer::predict`]: routing,
//! canary, shadow, batching, metrics) with the same token check, in-flight limit and timeout,
//! and an error carries the message REST would give, under the gRPC code that matches its HTTP
//! status. The methods kiln does not serve (streaming, model control, shared memory) answer
//! `UNIMPLEMENTED` naming themselves.

use std::convert::Infallible;
use std::future::Future;
use std::time::Instant;

use axum::http::StatusCode;
use tonic::body::Body;
use tonic::server::Grpc;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tracing::Instrument;

use crate::error::{ApiError, ServeError};
use crate::infer::predict;
use crate::runtime::{Rows, Runtime};
use crate::state::{AppState, authorized};
use crate::v2::{self, Elements, InputTensor, Kind};

/// The messages kiln reads and writes, written with prost's derive from the `.proto` (only the
/// fields kiln uses; prost skips the others when decoding).
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerLiveResponse {
        #[prost(bool, tag = "1")]
        pub live: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerReadyResponse {
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }
    /// Also `ModelMetadataRequest`: a model's name and an optional version (or alias).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelReadyResponse {
        #[prost(bool, tag = "1")]
        pub ready: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServerMetadataResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(string, repeated, tag = "3")]
        pub extensions: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, repeated, tag = "2")]
        pub versions: Vec<String>,
        #[prost(string, tag = "3")]
        pub platform: String,
        #[prost(message, repeated, tag = "4")]
        pub inputs: Vec<TensorMetadata>,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<TensorMetadata>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        #[prost(bool, repeated, tag = "1")]
        pub bool_contents: Vec<bool>,
        #[prost(int32, repeated, tag = "2")]
        pub int_contents: Vec<i32>,
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        #[prost(uint32, repeated, tag = "4")]
        pub uint_contents: Vec<u32>,
        #[prost(uint64, repeated, tag = "5")]
        pub uint64_contents: Vec<u64>,
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub bytes_contents: Vec<Vec<u8>>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferInputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferInputTensor>,
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<InferRequestedOutputTensor>,
        #[prost(bytes = "vec", repeated, tag = "7")]
        pub raw_input_contents: Vec<Vec<u8>>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferOutputTensor>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }
}

/// The service's name in call paths (`/inference.GRPCInferenceService/ModelInfer`).
pub const SERVICE: &str = "inference.GRPCInferenceService";

/// Serves V2 over gRPC on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let timeout = state.config.timeout;
    let service = tower::service_fn(move |request: axum::http::Request<Body>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(dispatch(state, request).await) }
    });
    tonic::transport::Server::builder()
        .timeout(timeout)
        .serve_with_incoming_shutdown(
            service,
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
        .map_err(|e| ServeError::Internal(format!("the gRPC server stopped: {e}")))
}

/// Answers one call: health is open; everything else takes the token (under
/// `--protect-reads`), a place among the requests in flight, and is logged with its outcome.
async fn dispatch(
    state: AppState,
    request: axum::http::Request<Body>,
) -> axum::http::Response<Body> {
    let path = request.uri().path().to_string();
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or("")
        .to_string();
    let max = state.config.max_body;
    match method.as_str() {
        "ServerLive" => {
            return unary(request, max, |_: pb::ServerLiveRequest| async {
                Ok(pb::ServerLiveResponse { live: true })
            })
            .await;
        }
        "ServerReady" => {
            return unary(request, max, move |_: pb::ServerReadyRequest| async move {
                Ok(pb::ServerReadyResponse {
                    ready: v2::not_ready(&state).await.is_empty(),
                })
            })
            .await;
        }
        _ => {}
    }
    let started = Instant::now();
    let span = tracing::info_span!(
        "request",
        method = "POST",
        path = %path,
        model = tracing::field::Empty,
        version = tracing::field::Empty,
    );
    async move {
        let response = if state.config.protect_reads
            && let Err(e) = authorized(&state.config, request.headers())
        {
            status(e).into_http()
        } else {
            match state.inflight.clone().try_acquire_owned() {
                Ok(_permit) => call(state, &method, request, max).await,
                Err(_) => Status::unavailable(format!(
                    "the server is handling {} requests, its limit (--max-inflight); try again shortly",
                    state.config.max_inflight
                ))
                .into_http(),
            }
        };
        // A refusal's status is in the headers; a success's (0) follows the message.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0");
        tracing::info!(
            grpc_status = code,
            latency_us = started.elapsed().as_micros() as u64,
            "finished processing request"
        );
        response
    }
    .instrument(span)
    .await
}

async fn call(
    state: AppState,
    method: &str,
    request: axum::http::Request<Body>,
    max: usize,
) -> axum::http::Response<Body> {
    match method {
        "ServerMetadata" => {
            unary(request, max, |_: pb::ServerMetadataRequest| async {
                Ok(pb::ServerMetadataResponse {
                    name: v2::SERVER_NAME.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    extensions: v2::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
                })
            })
            .await
        }
        "ModelReady" => {
            unary(request, max, move |m: pb::ModelRequest| async move {
                record(&m.name, &m.version);
                let ready = v2::version_of(&state, &m.name, which(&m.version))
                    .await
                    .is_ok();
                Ok(pb::ModelReadyResponse { ready })
            })
            .await
        }
        "ModelMetadata" => {
            unary(request, max, move |m: pb::ModelRequest| async move {
                record(&m.name, &m.version);
                let v = v2::version_of(&state, &m.name, which(&m.version))
                    .await
                    .map_err(status)?;
                let meta = v2::metadata(&state, &v).await;
                let tensors = |ts: Vec<v2::TensorMeta>| -> Vec<pb::TensorMetadata> {
                    ts.into_iter()
                        .map(|t| pb::TensorMetadata {
                            name: t.name,
                            datatype: t.datatype.to_string(),
                            shape: t.shape,
                        })
                        .collect()
                };
                Ok(pb::ModelMetadataResponse {
                    name: meta.name,
                    versions: meta.versions,
                    platform: v2::PLATFORM.to_string(),
                    inputs: tensors(meta.inputs),
                    outputs: tensors(meta.outputs),
                })
            })
            .await
        }
        "ModelInfer" => {
            unary(request, max, move |r: pb::ModelInferRequest| async move {
                record(&r.model_name, &r.model_version);
                let model = r.model_name.clone();
                infer(&state, r).await.map_err(|e| {
                    state.models.count_error(&model, "grpc", e.status.as_str());
                    status(e)
                })
            })
            .await
        }
        "" => Status::unimplemented(format!(
            "kiln serves only {SERVICE} (the Open Inference Protocol V2) over gRPC"
        ))
        .into_http(),
        other => Status::unimplemented(format!(
            "{SERVICE}/{other} is not served by kiln; it answers ServerLive, ServerReady, \
             ServerMetadata, ModelReady, ModelMetadata and ModelInfer"
        ))
        .into_http(),
    }
}

/// Decodes one unary call's message, runs `handle` on it and encodes its answer (or status).
async fn unary<Req, Res, F, Fut>(
    request: axum::http::Request<Body>,
    max_message: usize,
    handle: F,
) -> axum::http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Res, Status>> + Send + 'static,
{
    let mut handle = Some(handle);
    let service = tower::service_fn(move |r: tonic::Request<Req>| {
        let handle = handle.take();
        async move {
            match handle {
                Some(h) => h(r.into_inner()).await.map(tonic::Response::new),
                None => Err(Status::internal("a unary call was answered twice")),
            }
        }
    });
    Grpc::new(ProstCodec::<Res, Req>::default())
        .max_decoding_message_size(max_message)
        .unary(service, request)
        .await
}

/// Names the model and version a call asks for in its request's log span (at most 128
/// characters of each: they come from the message, which may be as large as `--max-body`).
fn record(model: &str, version: &str) {
    let cut = |s: &str| -> String { s.chars().take(128).collect() };
    let span = tracing::Span::current();
    span.record("model", cut(model).as_str());
    span.record("version", cut(version).as_str());
}

/// A request's version field: empty asks for what serves.
fn which(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

/// An error's gRPC form: the code that matches its HTTP status, and the same message (a 500's
/// detail goes to the log, as over REST).
fn status(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT => Code::AlreadyExists,
        StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::UNPROCESSABLE_ENTITY => Code::FailedPrecondition,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        _ => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(status = %e.status, error = %e.message, "request failed");
        return Status::internal("internal error; the server log has the details");
    }
    // The message travels in a header (`grpc-message`), where clients refuse more than a few
    // KiB; one that quotes a huge name from the request is cut.
    let mut message = e.message;
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    Status::new(code, message)
}

/// The longest error message sent, in bytes.
const MAX_MESSAGE: usize = 1024;

async fn infer(
    state: &AppState,
    r: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, ApiError> {
    let model = r.model_name.clone();
    let version = which(&r.model_version).map(str::to_string);
    let (p, (id, requested)) = predict(
        &state.models,
        &model,
        version.as_deref(),
        "grpc",
        move |rt| decode(rt, r),
    )
    .await?;
    let wanted = v2::wanted_outputs(&p, requested, true)?;
    let labels = p.labels();
    let mut outputs = Vec::with_capacity(wanted.len());
    let mut raw = Vec::with_capacity(wanted.len());
    for (name, _) in wanted {
        let (datatype, shape, data) = v2::output(&p, &labels, &name);
        let mut bytes = Vec::new();
        data.write_raw(&mut bytes);
        raw.push(bytes);
        outputs.push(pb::InferOutputTensor {
            name,
            datatype: datatype.to_string(),
            shape: shape.iter().map(|d| *d as i64).collect(),
        });
    }
    Ok(pb::ModelInferResponse {
        model_name: p.version.model.clone(),
        model_version: p.version.label.clone(),
        id,
        outputs,
        raw_output_contents: raw,
    })
}

/// What the answer needs from the request: its id and the outputs it asked for.
type Echo = (String, Option<Vec<(String, bool)>>);

/// A request's tensors → rows for `rt`, by the same rules as V2 over REST.
fn decode(rt: &Runtime, r: pb::ModelInferRequest) -> Result<(Rows, Echo), ServeError> {
    let raw = &r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(ServeError::BadInput(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in order, or none",
            raw.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    let mut elements = Vec::with_capacity(r.inputs.len());
    for (i, input) in r.inputs.into_iter().enumerate() {
        let values = match (raw.get(i), &input.contents) {
            (Some(bytes), _) => v2::binary_elements(&input.name, &input.datatype, bytes)?,
            (None, Some(contents)) => typed_elements(&input.name, &input.datatype, contents)?,
            (None, None) => {
                return Err(ServeError::BadInput(format!(
                    "input `{}` has neither contents nor raw_input_contents",
                    input.name
                )));
            }
        };
        let count = v2::shape_count(&input.name, &input.shape)?;
        if count != values.len() {
            return Err(ServeError::BadInput(format!(
                "input `{}`: shape {:?} holds {count} values but {} were sent",
                input.name,
                input.shape,
                values.len()
            )));
        }
        inputs.push(InputTensor {
            name: input.name,
            shape: input.shape,
            datatype: input.datatype,
            parameters: None,
            data: None,
        });
        elements.push(values);
    }
    let tensors: Vec<(&InputTensor, Elements)> = inputs.iter().zip(elements).collect();
    let rows = v2::to_rows(&rt.manifest().signature, &tensors)?;
    let outputs =
        (!r.outputs.is_empty()).then(|| r.outputs.into_iter().map(|o| (o.name, true)).collect());
    Ok((rows, (r.id, outputs)))
}

/// The values of a tensor sent in the typed field its datatype uses.
fn typed_elements(
    name: &str,
    datatype: &str,
    c: &pb::InferTensorContents,
) -> Result<Elements, ServeError> {
    fn numbers<T: Copy>(v: &[T], f: impl Fn(T) -> f64) -> Elements {
        Elements::Numbers(v.iter().map(|x| Some(f(*x))).collect())
    }
    let (kind, _) = v2::kind(name, datatype)?;
    Ok(match (kind, datatype) {
        (Kind::Bytes, _) => Elements::Texts(
            c.bytes_contents
                .iter()
                .map(|b| {
                    String::from_utf8(b.clone()).map_err(|_| {
                        ServeError::BadInput(format!(
                            "input `{name}`: a BYTES element is not UTF-8"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        (Kind::Bool, _) => numbers(&c.bool_contents, |b| if b { 1.0 } else { 0.0 }),
        (_, "FP32") => numbers(&c.fp32_contents, f64::from),
        (_, "FP64") => numbers(&c.fp64_contents, |x| x),
        (_, "INT8" | "INT16" | "INT32") => numbers(&c.int_contents, f64::from),
        (_, "INT64") => numbers(&c.int64_contents, |x| x as f64),
        (_, "UINT8" | "UINT16" | "UINT32") => numbers(&c.uint_contents, f64::from),
        (_, "UINT64") => numbers(&c.uint64_contents, |x| x as f64),
        _ => {
            return Err(ServeError::BadInput(format!(
                "input `{name}`: {datatype} has no typed contents field; send it in raw_input_contents"
            )));
        }
    })
}
