//! What every handler shares: the server's settings ([`ServerConfig`]) and state
//! ([`AppState`]), the bearer-token check, reading request bodies, and running registry work off
//! the async workers. Handlers and the router both depend on this module; it depends on none of
//! them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};

use crate::error::{ApiError, ServeError};
use crate::models::Models;

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
    pub traffic: Arc<crate::traffic::Traffic>,
    /// Pipelines, when the process runs them (`kiln up`).
    pub pipelines: Option<Arc<dyn crate::control::PipelineControl>>,
    /// The web UI's logins and the key of its forms' CSRF tokens.
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Places for requests in flight (`max_inflight`).
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// Places for replicas' long polls of `/api/changes` (`max_inflight` more): a poll waits
    /// for minutes, so it must not hold a place the requests need.
    pub watchers: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Lets the pipeline API and the UI list, start and cancel the process's pipelines.
    pub fn with_pipelines(mut self, control: Arc<dyn crate::control::PipelineControl>) -> AppState {
        self.pipelines = Some(control);
        self
    }
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
        Some(g) if crate::sessions::same(g, token) => Ok(()),
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

/// Runs registry work on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Models) -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    let models = state.models.clone();
    tokio::task::spawn_blocking(move || f(&models))
        .await
        .map_err(|e| ServeError::Internal(format!("management task: {e}")))?
        .map_err(ApiError::from)
}

/// A body that may be left out, read as its type's default.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<T, ServeError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse_json(bytes)
    }
}
