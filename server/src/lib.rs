//! kiln's model server: bundles loaded on candle with their fitted transforms, answering the
//! Open Inference Protocol V2, TF Serving's REST API and MLflow's scoring protocol, with traffic
//! splits, shadow traffic, hot swap on alias moves, dynamic batching, a management API and
//! Prometheus metrics.
//!
//! The HTTP layer is async (axum on tokio); everything that computes or touches the registry
//! runs on blocking threads.

mod api;
pub mod app;
pub mod batch;
pub mod client;
mod compute;
pub mod control;
pub mod decode;
pub mod drift;
pub mod error;
pub mod grpc;
pub mod guard;
pub mod import;
pub mod infer;
mod logged_models;
mod metrics;
mod mlflow;
mod mlflow_registry;
mod mlflow_uploads;
pub mod models;
pub mod onnx;
pub mod openapi;
pub mod pipelines;
pub mod predlog;
mod roll;
pub mod runs;
pub mod runtime;
pub mod sessions;
pub mod state;
mod tfserving;
pub mod tracking;
pub mod traffic;
pub mod ui;
pub mod v2;
pub mod version;

use std::sync::Arc;

use kiln_core::registry::Registry;

pub use crate::app::{Listeners, router, serve, serve_all};
pub use crate::error::{ApiError, ServeError};
pub use crate::metrics::Metrics;
pub use crate::models::{Models, Selection};
pub use crate::runtime::Runtime;
pub use crate::state::{AppState, ServerConfig};

/// Loads the selected models (on a blocking thread), starts following the registry for hot
/// swaps, and returns the state the router serves. Must run inside a tokio runtime.
pub async fn start(
    registry: Arc<Registry>,
    selection: Selection,
    config: ServerConfig,
) -> Result<AppState, ServeError> {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        tracing::warn!(
            "RAYON_NUM_THREADS is not set: candle looks up the CPU topology on every matrix \
             product (about 30 µs); set it to the number of cores for fast small requests"
        );
    }
    let models = Models::new(registry, selection, Arc::new(Metrics::new()));
    start_with(models, config).await
}

/// Serves one bundle directory with no registry (`kiln serve --bundle`): the model `name`, its
/// version 1 and `champion` the bundle, read in place. Nothing is written anywhere: no
/// prediction log, no state. Routes of the management API answer 404. Must run inside a tokio
/// runtime.
pub async fn start_bundle(
    name: &str,
    dir: std::path::PathBuf,
    config: ServerConfig,
) -> Result<AppState, ServeError> {
    kiln_core::registry::check_model_name(name)?;
    start_with(
        Models::for_bundle(name, dir, Arc::new(Metrics::new())),
        config,
    )
    .await
}

/// A serving replica of the central kiln at `url` (`kiln serve --registry`): no registry of its
/// own; models, aliases and deployments read over the central API, bundles fetched once into
/// `cache`, changes followed (and everything re-read after the central server was away). Must
/// run inside a tokio runtime.
pub async fn start_remote(
    url: &str,
    token: Option<String>,
    cache: std::path::PathBuf,
    selection: Selection,
    config: ServerConfig,
) -> Result<AppState, ServeError> {
    std::fs::create_dir_all(&cache)
        .map_err(|e| ServeError::Load(format!("{}: {e}", cache.display())))?;
    let client = client::Client::new(url, token);
    start_with(
        Models::for_remote(client, cache, selection, Arc::new(Metrics::new())),
        config,
    )
    .await
}

async fn start_with(models: Models, config: ServerConfig) -> Result<AppState, ServeError> {
    compute::start();
    let models = Arc::new(models.with_log(config.log.clone()));
    let m = models.clone();
    tokio::task::spawn_blocking(move || m.load_all())
        .await
        .map_err(|e| ServeError::Internal(format!("loading models: {e}")))??;
    models.follow();
    let inflight = Arc::new(tokio::sync::Semaphore::new(config.max_inflight.max(1)));
    let watchers = Arc::new(tokio::sync::Semaphore::new(config.max_inflight.max(1)));
    let state = AppState {
        models,
        config: Arc::new(config),
        traffic: Arc::new(traffic::Traffic::default()),
        pipelines: None,
        sessions: Arc::new(sessions::Sessions::new()),
        inflight,
        watchers,
    };
    traffic::start_sampling(state.traffic.clone(), state.models.clone());
    Ok(state)
}
