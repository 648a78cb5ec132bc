//! The HTTP application: shared state, the router of every protocol, bearer-token checks,
//! body limits, timeouts, request tracing, and serving on a socket with graceful shutdown.
//! What keeps other sites out (`Host`, `Origin`, JSON bodies, CSRF) is in [`crate::guard`].

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::LatencyUnit;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::state::{AppState, authorized};
use crate::{api, mlflow, tfserving, v2};

/// The whole HTTP surface of a server.
pub fn router(state: AppState) -> Router {
    let ui_forms = middleware::from_fn_with_state(state.clone(), crate::ui::ui_forms);
    let open = Router::new()
        .merge(
            crate::ui::open()
                .merge(crate::ui::writes())
                .route_layer(ui_forms.clone()),
        )
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/ping", get(mlflow::ping))
        .route("/health", get(mlflow::ping))
        .route("/version", get(mlflow::version));
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
        .merge(crate::tracking::reads())
        .merge(crate::logged_models::reads())
        .merge(crate::mlflow_registry::reads())
        .merge(crate::ui::reads().route_layer(ui_forms))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_read));
    let writes = Router::new()
        .merge(crate::tracking::writes())
        .merge(crate::logged_models::writes())
        .merge(crate::mlflow_uploads::writes())
        .merge(crate::mlflow_registry::writes())
        .route_layer(middleware::from_fn_with_state(state.clone(), check_write));
    // kiln's own API, described as it is routed (`/api/openapi.json`).
    let (own_reads, mut described) = api::reads()
        .merge(crate::runs::reads())
        .merge(crate::pipelines::reads())
        .split();
    let (own_writes, described_writes) = api::writes()
        .merge(crate::runs::writes())
        .merge(crate::pipelines::writes())
        .split();
    described.extend(described_writes);
    let reads = reads.merge(
        own_reads
            .merge(described.serve())
            .route_layer(middleware::from_fn_with_state(state.clone(), check_read)),
    );
    let writes = writes
        .merge(own_writes.route_layer(middleware::from_fn_with_state(state.clone(), check_write)));
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
                .make_span_with(request_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
}

/// The span of one request in the logs: method, path (no query: it may carry what should not be
/// logged), and the model and version it asks for when its path names them.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (model, version) = model_in(path);
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %path,
        model = model.unwrap_or_default(),
        version = version.unwrap_or_default(),
    )
}

/// The model (and version) a serving path names: `/v2/models/NAME[/versions/V]/…`,
/// `/v1/models/NAME[/versions/V][:verb]`, `/api/models/NAME/…`.
fn model_in(path: &str) -> (Option<&str>, Option<&str>) {
    let rest = ["/v2/models/", "/v1/models/", "/api/models/"]
        .iter()
        .find_map(|p| path.strip_prefix(p));
    let Some(rest) = rest else {
        return (None, None);
    };
    let mut parts = rest.split('/');
    let model = parts
        .next()
        .map(|m| m.split(':').next().unwrap_or(m))
        .filter(|m| !m.is_empty());
    let version = match (parts.next(), parts.next()) {
        (Some("versions" | "labels"), Some(v)) => Some(v.split(':').next().unwrap_or(v)),
        _ => None,
    };
    (model, version)
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
    let mut text = state.models.metrics().render();
    // A replica says how long ago the central registry last answered.
    if let Some(stale) = state.models.staleness() {
        text.push_str(&format!(
            "# HELP kiln_registry_staleness_seconds Seconds since the central registry last answered this replica.\n\
             # TYPE kiln_registry_staleness_seconds gauge\nkiln_registry_staleness_seconds {stale:.3}\n"
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Answers 503 at once when `max_inflight` requests are being handled, so overload costs no
/// memory; health checks are not counted and keep answering. Replicas' long polls of
/// `/api/changes` have places of their own, as many, so that waiting replicas never turn
/// requests away.
async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let places = if request.uri().path() == "/api/changes" {
        &state.watchers
    } else {
        &state.inflight
    };
    match places.clone().try_acquire_owned() {
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

/// The sockets a server answers on: HTTP, and V2 over gRPC when asked for.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    pub grpc: Option<tokio::net::TcpListener>,
}

/// Serves `router` over HTTP, and `state`'s models over gRPC when there is a gRPC listener,
/// until `shutdown` completes; then both finish the requests in flight.
pub async fn serve_all(
    listeners: Listeners,
    router: Router,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::ServeError> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let grpc = listeners.grpc.map(|listener| {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let served = crate::grpc::serve(listener, state, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = &served {
                tracing::error!("{e}");
            }
            served
        })
    });
    serve(listeners.http, router, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await
    .map_err(|e| crate::ServeError::Internal(format!("the HTTP server stopped: {e}")))?;
    if let Some(grpc) = grpc {
        grpc.await
            .map_err(|e| crate::ServeError::Internal(format!("the gRPC server stopped: {e}")))??;
    }
    Ok(())
}
