//! The HTTP application: shared state, the router of every protocol, bearer-token checks,
//! body limits, timeouts, request tracing, and serving on a socket with graceful shutdown.
//! What keeps other sites out (`Host`, `Origin`, JSON bodies, CSRF) is in [`crate::guard`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::LatencyUnit;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::models::Models;
use crate::{api, mlflow, tfserving, v2};

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Mutating management calls need `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Also require the token for inference, metadata and metrics (health stays open).
    pub protect_reads: bool,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request may take before it is answered with 408.
    pub timeout: Duration,
    /// Who management calls are recorded as (alias history), besides the caller's own note.
    pub actor: String,
    /// The prediction log and drift windows.
    pub log: crate::predlog::LogConfig,
    /// Host names answered besides IP literals and loopback names (`--allowed-host`; `*`: any).
    pub allowed_hosts: Vec<String>,
    /// Requests handled at once (health checks aside); more are answered 503 at once.
    pub max_inflight: usize,
    /// Where `POST /api/registry/backups` writes backups, and how many it keeps there.
    pub backup_dir: Option<std::path::PathBuf>,
    pub backup_keep: Option<usize>,
    /// The largest artifact object (one file, or a directory's manifest) accepted, in bytes.
    pub max_upload: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            token: None,
            protect_reads: false,
            max_body: 16 << 20,
            timeout: Duration::from_secs(30),
            actor: "kiln-server".into(),
            log: crate::predlog::LogConfig::default(),
            allowed_hosts: Vec::new(),
            max_inflight: 1024,
            backup_dir: None,
            backup_keep: None,
            max_upload: 8 << 30,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<Models>,
    pub config: Arc<ServerConfig>,
    /// Request totals sampled for the UI's charts.
    pub traffic: Arc<crate::ui::Traffic>,
    /// Pipelines, when the process runs them (`kiln up`).
    pub pipelines: Option<Arc<dyn crate::pipelines::PipelineControl>>,
    /// The web UI's logins and the key of its forms' CSRF tokens.
    pub sessions: Arc<crate::guard::Sessions>,
    /// Places for requests in flight (`max_inflight`).
    pub inflight: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Lets the pipeline API and the UI list, start and cancel the process's pipelines.
    pub fn with_pipelines(
        mut self,
        control: Arc<dyn crate::pipelines::PipelineControl>,
    ) -> AppState {
        self.pipelines = Some(control);
        self
    }
}

/// The whole HTTP surface of a server.
pub fn router(state: AppState) -> Router {
    let ui_forms = middleware::from_fn_with_state(state.clone(), crate::guard::ui_forms);
    let open = Router::new()
        .merge(
            crate::ui::open()
                .merge(crate::ui::writes())
                .route_layer(ui_forms.clone()),
        )
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/ping", get(mlflow::ping))
        .route("/health", get(mlflow::ping));
    let reads = Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::version_infer),
        )
        .route(
            "/v1/models/{*rest}",
            get(tfserving::get).post(tfserving::post),
        )
        .route("/invocations", post(mlflow::invocations))
        .route("/metrics", get(metrics))
        .merge(api::reads())
        .merge(crate::runs::reads())
        .merge(crate::pipelines::reads())
        .merge(crate::ui::reads().route_layer(ui_forms))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_read));
    let writes = api::writes()
        .merge(crate::runs::writes())
        .merge(crate::pipelines::writes())
        .route_layer(middleware::from_fn_with_state(state.clone(), check_write));
    let config = state.config.clone();
    let limited = Router::new()
        .merge(reads)
        .merge(writes)
        .route_layer(middleware::from_fn_with_state(state.clone(), limit));
    Router::new()
        .merge(open)
        .merge(limited)
        .with_state(state)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.timeout,
        ))
        .layer(middleware::from_fn_with_state(
            config.clone(),
            crate::guard::outer,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; kiln speaks /v2 (Open Inference Protocol), /v1/models (TF Serving), \
             /invocations (MLflow), /api, /metrics and /ui (the web UI)",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.models.refresh_drift_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.models.metrics().render(),
    )
        .into_response()
}

/// Answers 503 at once when `max_inflight` requests are being handled, so overload costs no
/// memory; health checks are not counted and keep answering.
async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.inflight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is handling {} requests, its limit (--max-inflight); try again shortly",
                state.config.max_inflight
            ),
        )
        .into_response(),
    }
}

async fn check_read(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.protect_reads {
        // The web UI's pages also open to its login session.
        let ui_session =
            request.uri().path().starts_with("/ui") && state.sessions.logged_in(request.headers());
        if !ui_session && let Err(e) = authorized(&state.config, request.headers()) {
            return e.into_response();
        }
    }
    next.run(request).await
}

async fn check_write(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(e) = authorized(&state.config, request.headers())
        .and_then(|()| crate::guard::json_body(&request))
    {
        return e.into_response();
    }
    next.run(request).await
}

/// Whether the request carries the server's bearer token, when it has one.
pub(crate) fn authorized(config: &ServerConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &config.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // The web UI's login cookie opens /ui only, never the API.
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not the server's token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>` (the server's --token or KILN_TOKEN)",
        )),
    }
}

/// Compares a given token with the server's in constant time.
pub(crate) fn same(given: &str, token: &str) -> bool {
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request body, or an error that says why it could not be read (over the limit, cut short).
pub fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "the request body is over the server's limit of {limit} bytes (--max-body)"
                ),
            )
        } else {
            ApiError::new(
                status,
                format!("reading the request body: {}", r.body_text()),
            )
        }
    })
}

/// Parses a JSON body into `T` with a message that says where it went wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, crate::error::ServeError> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::error::ServeError::BadInput(format!("malformed JSON body: {e}")))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
