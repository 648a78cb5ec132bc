//! The management web UI, served by the server itself at `/ui` (and `/`): HTML rendered here,
//! one stylesheet compiled into the binary, charts as inline SVG; no JavaScript, so every page
//! and every action (plain HTML forms) works in any browser, offline.
//!
//! Pages: models (versions side by side, aliases, history; promote, roll back, traffic split),
//! a version (signature, lineage to its run, data fingerprint and pipeline run), deployments
//! (live versions, split, shadow agreement, request rate, latency and error charts), runs
//! (server-side paging, sorting and filtering; metric curves; compare), pipelines (runs, the
//! DAG with step states, durations, cache hits and logs; schedules; trigger and cancel when the
//! process runs pipelines) and drift. Actions change the registry as the management API does and
//! need the server's token when one is set (a login session, `auth.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::state::AppState;

mod auth;
mod drift;
mod models;
mod pipelines;
mod runs;
mod svg;

pub(crate) use self::auth::ui_forms;
use self::auth::{login, login_page, logout};
use self::drift::drift_page;
use self::models::{
    deployments_page, model_page, models_page, move_alias, set_split, version_page,
};
use self::pipelines::{cancel_run, pipeline_run_page, pipelines_page, step_log_page, trigger_run};
use self::runs::{compare_page, run_page, runs_page};
use kiln_core::text::num;

pub fn reads() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/models") }))
        .route("/ui", get(|| async { Redirect::to("/ui/models") }))
        .route("/ui/kiln.css", get(stylesheet))
        .route("/ui/models", get(models_page))
        .route("/ui/models/{name}", get(model_page))
        .route("/ui/models/{name}/versions/{version}", get(version_page))
        .route("/ui/deployments", get(deployments_page))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/compare", get(compare_page))
        .route("/ui/pipelines", get(pipelines_page))
        .route("/ui/pipeline-runs/{id}", get(pipeline_run_page))
        .route(
            "/ui/pipeline-runs/{id}/logs/{step}/{attempt}",
            get(step_log_page),
        )
        .route("/ui/drift", get(drift_page))
}

/// Pages anyone may open (to log in).
pub fn open() -> Router<AppState> {
    Router::new()
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
}

/// Actions; each checks the token itself, to answer a browser with a page.
pub fn writes() -> Router<AppState> {
    Router::new()
        .route("/ui/models/{name}/alias", post(move_alias))
        .route("/ui/models/{name}/split", post(set_split))
        .route("/ui/pipelines/{name}/run", post(trigger_run))
        .route("/ui/pipeline-runs/{id}/cancel", post(cancel_run))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../assets/kiln.css"),
    )
        .into_response()
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment or query value.
fn url(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn page(title: &str, active: &str, body: &str) -> Html<String> {
    let nav: String = [
        ("models", "/ui/models", "Models"),
        ("deployments", "/ui/deployments", "Deployments"),
        ("runs", "/ui/runs", "Experiments and runs"),
        ("pipelines", "/ui/pipelines", "Pipelines"),
        ("drift", "/ui/drift", "Drift"),
    ]
    .iter()
    .map(|(key, href, label)| {
        let current = if *key == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{label}</a>")
    })
    .collect();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · kiln</title><link rel=\"stylesheet\" href=\"/ui/kiln.css\"></head><body>\
         <header><a class=\"brand\" href=\"/ui/models\">kiln</a><nav aria-label=\"Sections\">{nav}</nav></header>\
         <main id=\"main\">{body}</main></body></html>",
        esc(title)
    ))
}

/// A page that could not be shown, and why: answered as an error page.
#[derive(Debug)]
pub(crate) struct Problem {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = format!(
            "<h1>{}</h1><p class=\"flash error\" role=\"alert\">{}</p><p><a href=\"/ui/models\">Models</a></p>",
            self.status.canonical_reason().unwrap_or("Error"),
            esc(&self.message)
        );
        (self.status, page("Error", "", &body)).into_response()
    }
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Problem {
    Problem {
        status,
        message: message.to_string(),
    }
}

type UiResult = Result<Response, Problem>;

impl From<crate::error::ServeError> for Problem {
    fn from(e: crate::error::ServeError) -> Problem {
        match e {
            crate::error::ServeError::Registry(r) => registry_error(r),
            other => not_found(other),
        }
    }
}

fn not_found(e: impl std::fmt::Display) -> Problem {
    error_page(StatusCode::NOT_FOUND, &e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Problem {
    error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

fn registry_error(e: kiln_core::registry::RegistryError) -> Problem {
    use kiln_core::registry::RegistryError as E;
    match e {
        E::NotFound { .. } => not_found(e),
        E::Invalid(_) | E::Conflict { .. } | E::Aliased { .. } | E::AlreadyExists { .. } => {
            error_page(StatusCode::BAD_REQUEST, &e.to_string())
        }
        other => internal(other),
    }
}

/// Runs registry work off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(internal)?
}

fn flash(q: &BTreeMap<String, String>) -> String {
    match (q.get("done"), q.get("error")) {
        (Some(m), _) => format!("<p class=\"flash\" role=\"status\">{}</p>", esc(m)),
        (_, Some(m)) => format!("<p class=\"flash error\" role=\"alert\">{}</p>", esc(m)),
        _ => String::new(),
    }
}
