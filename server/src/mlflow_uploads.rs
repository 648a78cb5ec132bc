//! MLflow's multipart upload through the artifact proxy (`MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD`):
//! `mpu/create` begins an upload of one file of a run's artifacts and answers a URL per part on
//! this server, the client `PUT`s the parts (in parallel, in any order), and `mpu/complete`
//! joins them into the file, digested and stored as any other (`mpu/abort` drops them). The
//! parts wait in the registry's upload area ([`kiln_core::registry::uploads`]); each is bounded
//! by `--max-upload` as a whole upload is.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::state::AppState;
use crate::tracking::{Answer, MlflowError, artifact_path, invalid, on_registry, read_body};

const PREFIXES: [&str; 2] = [
    "/api/2.0/mlflow-artifacts/mpu",
    "/ajax-api/2.0/mlflow-artifacts/mpu",
];

/// Every endpoint changes state.
pub(crate) fn writes() -> Router<AppState> {
    let mut router = Router::new();
    for p in PREFIXES {
        router = router
            .route(&format!("{p}/create/{{*path}}"), post(create))
            .route(&format!("{p}/complete/{{*path}}"), post(complete))
            .route(&format!("{p}/abort/{{*path}}"), post(abort))
            .route(
                &format!("{p}/parts/{{id}}/{{part}}"),
                put(put_part).layer(axum::extract::DefaultBodyLimit::disable()),
            );
    }
    router
}

#[derive(Deserialize)]
struct Create {
    /// The client's local file: its name is the uploaded file's name.
    path: String,
    num_parts: u32,
}

#[derive(Serialize)]
struct Credential {
    url: String,
    part_number: u32,
    headers: std::collections::BTreeMap<String, String>,
}

/// The file name at the end of a client's local path (`/tmp/x/weights.bin`: `weights.bin`).
fn file_name(local: &str) -> Result<&str, MlflowError> {
    match local.rsplit(['/', '\\']).next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => Ok(name),
        _ => Err(invalid(format!("`path` {local:?} names no file"))),
    }
}

/// `http://HOST` as the client reached this server, so that part URLs reach it too; a Host
/// header that is not a host name or address (with a port) is refused.
fn base_url(headers: &HeaderMap) -> Result<String, MlflowError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .ok_or_else(|| invalid("a multipart upload needs the Host header the client used"))?;
    Ok(format!("http://{host}"))
}

/// A fresh upload id: 128 random bits, as hex. Knowing it is what lets a part in.
fn upload_id() -> Result<String, MlflowError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        MlflowError(crate::error::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the operating system gave no random bytes: {e}"),
        ))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn create(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    let b: Create = read_body(bytes, &state)?;
    let (run, dir) = artifact_path(&path)?;
    let name = file_name(&b.path)?;
    let target = if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    };
    let base = base_url(&headers)?;
    let id = upload_id()?;
    let parts = b.num_parts;
    let begun = id.clone();
    on_registry(&state, move |r| r.begin_upload(&begun, run, &target, parts)).await?;
    // The client sends a part with these headers only: the token it called with goes along.
    let mut part_headers = std::collections::BTreeMap::new();
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        part_headers.insert("Authorization".to_string(), auth.to_string());
    }
    let credentials: Vec<Credential> = (1..=parts)
        .map(|n| Credential {
            url: format!("{base}{}/parts/{id}/{n}", PREFIXES[0]),
            part_number: n,
            headers: part_headers.clone(),
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "upload_id": id, "credentials": credentials }),
    ))
}

async fn put_part(
    State(state): State<AppState>,
    Path((id, part)): Path<(String, u32)>,
    request: Request,
) -> Result<Response, MlflowError> {
    let tag = format!("{id}-{part}");
    let limit = state.config.max_upload;
    let size = crate::runs::streamed(&state, request, move |registry, body| {
        registry.put_upload_part(&id, part, body, limit)
    })
    .await?;
    let etag =
        HeaderValue::from_str(&format!("\"{tag}-{size}\"")).map_err(|e| invalid(e.to_string()))?;
    Ok(([(header::ETAG, etag)], Json(serde_json::json!({}))).into_response())
}

#[derive(Deserialize)]
struct Finish {
    upload_id: String,
}

async fn complete(
    State(state): State<AppState>,
    Path(path): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    finish(state, &path, bytes, |r, id| {
        r.complete_upload(id).map(|_| ())
    })
    .await
}

async fn abort(
    State(state): State<AppState>,
    Path(path): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Answer<serde_json::Value> {
    finish(state, &path, bytes, |r, id| r.abort_upload(id)).await
}

/// Ends the upload a body names (`upload_id`) as `end` says: joined, or dropped.
async fn finish(
    state: AppState,
    path: &str,
    bytes: Result<Bytes, BytesRejection>,
    end: fn(&kiln_core::registry::Registry, &str) -> Result<(), kiln_core::registry::RegistryError>,
) -> Answer<serde_json::Value> {
    let b: Finish = read_body(bytes, &state)?;
    artifact_path(path)?;
    on_registry(&state, move |r| end(r, &b.upload_id)).await?;
    Ok(Json(serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_part_url_is_built_only_from_a_plain_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(base_url(&h).unwrap(), "http://127.0.0.1:8080");
        for bad in ["evil.com/x?", "a b", "host@other", ""] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(bad).unwrap());
            assert!(base_url(&h).is_err(), "{bad}");
        }
        assert_eq!(file_name("/tmp/x/w.bin").unwrap(), "w.bin");
        assert_eq!(file_name("C:\\data\\w.bin").unwrap(), "w.bin");
        for bad in ["/tmp/", "..", ""] {
            assert!(file_name(bad).is_err(), "{bad}");
        }
        assert_eq!(upload_id().unwrap().len(), 32);
    }
}
