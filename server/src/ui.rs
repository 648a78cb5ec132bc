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
//! need the server's token when one is set (a cookie set by `/ui/login`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kiln_core::registry::query::{Filter, OrderBy, RunSearch, RunView};
use kiln_core::registry::{
    Deployment, Expect, PipelineRun, Registry, Route, StepExecState, run_id_text,
};
use serde::Deserialize;

use crate::app::AppState;
use crate::metrics::Totals;

/// Request totals per model, sampled every few seconds for the deployment charts.
#[derive(Default)]
pub struct Traffic {
    samples: Mutex<BTreeMap<String, VecDeque<(f64, Totals)>>>,
}

/// Samples kept per model (15 minutes at one every 5 s).
const KEPT: usize = 180;
const EVERY: Duration = Duration::from_secs(5);

impl Traffic {
    pub fn record(&self, at_s: f64, totals: BTreeMap<String, Totals>) {
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (model, t) in totals {
            let q = s.entry(model).or_default();
            q.push_back((at_s, t));
            while q.len() > KEPT {
                q.pop_front();
            }
        }
    }

    /// Per interval: requests per second, errors per second, mean latency in ms.
    fn series(&self, model: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(q) = s.get(model) else {
            return Default::default();
        };
        let pairs: Vec<_> = q.iter().zip(q.iter().skip(1)).collect();
        let rate = |f: &dyn Fn(&Totals) -> f64| -> Vec<f64> {
            pairs
                .iter()
                .map(|((t0, a), (t1, b))| ((f(b) - f(a)) / (t1 - t0).max(1e-9)).max(0.0))
                .collect()
        };
        let latency = pairs
            .iter()
            .map(|((_, a), (_, b))| {
                let n = b.latency_count - a.latency_count;
                if n > 0.0 {
                    (b.latency_sum - a.latency_sum) / n * 1000.0
                } else {
                    0.0
                }
            })
            .collect();
        (rate(&|t| t.requests), rate(&|t| t.errors), latency)
    }
}

/// Samples the server's totals until the process ends.
pub fn start_sampling(state: &AppState) {
    let (traffic, models) = (state.traffic.clone(), state.models.clone());
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        loop {
            traffic.record(start.elapsed().as_secs_f64(), models.metrics().totals());
            tokio::time::sleep(EVERY).await;
        }
    });
}

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
        include_str!("../assets/kiln.css"),
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

fn num(x: f64) -> String {
    if x == 0.0 || (x.abs() >= 0.001 && x.abs() < 1e6) {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{x:.3e}")
    }
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

/// A line chart of `values` as inline SVG, with its last value and maximum in text.
fn chart(values: &[f64], title: &str, unit: &str) -> String {
    let (w, h) = (280.0, 70.0);
    let max = values.iter().copied().fold(0.0, f64::max);
    let last = values.last().copied().unwrap_or(0.0);
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = if values.len() > 1 {
                i as f64 * w / (values.len() - 1) as f64
            } else {
                0.0
            };
            let y = h - if max > 0.0 { v / max * (h - 4.0) } else { 0.0 } - 2.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<figure><figcaption>{} <span class=\"muted\">now {} {unit}, max {} {unit}</span></figcaption>\
         <svg role=\"img\" aria-label=\"{} over time\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#d8dde3\"/>\
         <polyline fill=\"none\" stroke=\"#b4440f\" stroke-width=\"1.5\" points=\"{}\"/></svg></figure>",
        esc(title),
        num(last),
        num(max),
        esc(title),
        points.join(" ")
    )
}

// ----- models -----

async fn models_page(State(state): State<AppState>) -> UiResult {
    let html = blocking(&state, |s| {
        let reg = s.models.registry();
        let mut rows = String::new();
        for name in s.models.names().map_err(internal)? {
            let versions = reg.versions(&name).map_err(registry_error)?;
            let aliases = reg.aliases(&name).map_err(registry_error)?;
            let alias_text: String = aliases
                .iter()
                .map(|(a, v)| format!("<span class=\"badge\">{}: v{v}</span>", esc(a)))
                .collect();
            let live = match s.models.live(&name) {
                Some(l) => l
                    .routes
                    .iter()
                    .map(|r| format!("v{} {}%", r.version.version, r.percent))
                    .collect::<Vec<_>>()
                    .join(", "),
                None => format!(
                    "<span class=\"warn\">not live: {}</span>",
                    esc(&s.models.problem(&name).unwrap_or_default())
                ),
            };
            let alarms = s
                .models
                .drift(&name)
                .map(|r| r.iter().map(|r| r.alarms().len()).sum::<usize>())
                .unwrap_or(0);
            let drift = if alarms > 0 {
                format!("<a class=\"bad\" href=\"/ui/drift#{0}\">{alarms} in alarm</a>", url(&name))
            } else {
                "<span class=\"ok\">none</span>".to_string()
            };
            let _ = write!(
                rows,
                "<tr><td><a href=\"/ui/models/{}\">{}</a></td><td class=\"num\">{}</td><td>{alias_text}</td><td>{live}</td><td>{drift}</td></tr>",
                url(&name),
                esc(&name),
                versions.len()
            );
        }
        if rows.is_empty() {
            rows = "<tr><td colspan=\"5\" class=\"muted\">No models yet: `kiln train --register NAME` or a pipeline's push registers one.</td></tr>".into();
        }
        Ok(format!(
            "<h1>Models</h1><table><caption class=\"muted\">Registered models and what is served</caption>\
             <thead><tr><th scope=\"col\">model</th><th scope=\"col\" class=\"num\">versions</th><th scope=\"col\">aliases</th>\
             <th scope=\"col\">live</th><th scope=\"col\">drift</th></tr></thead><tbody>{rows}</tbody></table>"
        ))
    })
    .await?;
    Ok(page("Models", "models", &html).into_response())
}

async fn model_page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let token = state.config.token.is_some();
    let html = blocking(&state, move |s| {
        let reg = s.models.registry();
        let versions = reg.versions(&name).map_err(registry_error)?;
        let aliases = reg.aliases(&name).map_err(registry_error)?;
        let history = reg.history(&name).map_err(registry_error)?;
        let champion = aliases.get("champion").copied();
        // Test metrics side by side (all metrics when a version has none).
        let all: BTreeSet<&String> = versions.iter().flat_map(|v| v.metrics.keys()).collect();
        let tests: BTreeSet<&String> = all.iter().copied().filter(|k| k.starts_with("test_")).collect();
        let keys = if tests.is_empty() { all } else { tests };
        let mut head = String::from(
            "<th scope=\"col\">version</th><th scope=\"col\">created</th><th scope=\"col\">aliases</th>",
        );
        for k in &keys {
            let _ = write!(head, "<th scope=\"col\" class=\"num\">{}</th>", esc(k));
        }
        head.push_str("<th scope=\"col\">actions</th>");
        let mut rows = String::new();
        for v in versions.iter().rev() {
            let tags: String = aliases
                .iter()
                .filter(|(_, n)| **n == v.version)
                .map(|(a, _)| format!("<span class=\"badge\">{}</span>", esc(a)))
                .collect();
            let mut cells = String::new();
            for k in &keys {
                let _ = write!(
                    cells,
                    "<td class=\"num\">{}</td>",
                    v.metrics.get(*k).map_or("-".into(), |x| num(*x))
                );
            }
            let action = if champion == Some(v.version) {
                "<span class=\"muted\">champion</span>".to_string()
            } else {
                let verb = if champion.is_some_and(|c| v.version < c) {
                    "Roll back to"
                } else {
                    "Promote"
                };
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/ui/models/{0}/alias\">\
                     <input type=\"hidden\" name=\"alias\" value=\"champion\">\
                     <input type=\"hidden\" name=\"version\" value=\"{1}\">\
                     <button type=\"submit\" id=\"promote-{1}\">{verb} v{1}{2}</button></form>",
                    url(&name),
                    v.version,
                    if verb == "Promote" { " to champion" } else { "" }
                )
            };
            let _ = write!(
                rows,
                "<tr><td><a href=\"/ui/models/{}/versions/{}\">v{}</a></td><td>{}</td><td>{tags}</td>{cells}<td>{action}</td></tr>",
                url(&name),
                v.version,
                v.version,
                when(v.created_ms)
            );
        }
        let mut events = String::new();
        for e in history.iter().rev().take(50) {
            let show = |v: Option<u32>| v.map_or("-".to_string(), |v| format!("v{v}"));
            let _ = write!(
                events,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(e.at_ms),
                esc(&e.alias),
                show(e.from),
                show(e.to),
                esc(&e.by),
                esc(&e.reason)
            );
        }
        let deployment = reg.deployment(&name).map_err(registry_error)?;
        let split: String = deployment
            .routes
            .iter()
            .map(|r| format!("{}={}", r.target, r.percent))
            .collect::<Vec<_>>()
            .join(",");
        let live = match s.models.live(&name) {
            Some(l) => l
                .routes
                .iter()
                .map(|r| {
                    format!(
                        "<span class=\"badge\">{} → v{}: {}%</span>",
                        esc(&r.target),
                        r.version.version,
                        r.percent
                    )
                })
                .collect::<String>(),
            None => format!(
                "<span class=\"warn\">not live: {}</span>",
                esc(&s.models.problem(&name).unwrap_or_default())
            ),
        };
        let login = if token {
            "<p class=\"muted\">Actions need the server's token: <a href=\"/ui/login\">log in</a>.</p>"
        } else {
            ""
        };
        Ok(format!(
            "<h1>Model {0}</h1>{flash}{login}<p>Serving: {live}</p>\
             <h2>Versions</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\
             <h2>Traffic split</h2><form method=\"post\" action=\"/ui/models/{1}/split\">\
             <label for=\"split\">Targets and percentages</label> \
             <input id=\"split\" name=\"split\" value=\"{2}\" size=\"40\" aria-describedby=\"split-help\"> \
             <button type=\"submit\">Set split</button>\
             <p id=\"split-help\" class=\"muted\">Aliases or versions with percentages adding up to 100, e.g. champion=90,challenger=10.</p></form>\
             <h2>Alias history</h2><table><thead><tr><th scope=\"col\">when</th><th scope=\"col\">alias</th><th scope=\"col\">from</th>\
             <th scope=\"col\">to</th><th scope=\"col\">by</th><th scope=\"col\">reason</th></tr></thead><tbody>{events}</tbody></table>",
            esc(&name),
            url(&name),
            esc(&split),
            flash = flash(&q),
        ))
    })
    .await?;
    Ok(page("Model", "models", &html).into_response())
}

async fn version_page(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, u32)>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry();
        let v = reg.version(&name, version).map_err(registry_error)?;
        let run = reg.run(v.run_id).ok();
        let mut signature = String::new();
        if let Some(serde_json::Value::Array(cols)) = &v.signature {
            for c in cols {
                let _ = write!(
                    signature,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(c["name"].as_str().unwrap_or("")),
                    esc(c["type"].as_str().unwrap_or(""))
                );
            }
        }
        let mut metrics = String::new();
        for (k, x) in &v.metrics {
            let _ = write!(metrics, "<tr><td>{}</td><td class=\"num\">{}</td></tr>", esc(k), num(*x));
        }
        let lineage = match &run {
            Some(r) => {
                let pipeline = match (r.tags.get("kiln.pipeline"), r.tags.get("kiln.pipeline_run")) {
                    (Some(p), Some(id)) => format!(
                        "<li>pipeline <strong>{}</strong>, run <a href=\"/ui/pipeline-runs/{}\">{}</a> (step {})</li>",
                        esc(p),
                        url(id),
                        esc(id),
                        esc(r.tags.get("kiln.pipeline_step").map_or("", String::as_str))
                    ),
                    _ => String::new(),
                };
                format!(
                    "<ul><li>run <a href=\"/ui/runs/{0}\">{0}</a> ({1})</li><li>data fingerprint <code>{2}</code></li>\
                     <li>transform digest <code>{3}</code></li><li>source commit <code>{4}</code></li>{pipeline}</ul>",
                    run_id_text(r.id),
                    esc(r.status.as_str()),
                    esc(r.lineage.dataset_fingerprint.as_deref().unwrap_or("-")),
                    esc(r.lineage.transform_digest.as_deref().unwrap_or("-")),
                    esc(r.lineage.source_commit.as_deref().unwrap_or("-")),
                )
            }
            None => "<p class=\"muted\">The run that made it is gone.</p>".into(),
        };
        Ok(format!(
            "<h1>{} version {}</h1><p class=\"muted\">created {} · artifact <code>{}</code> · {}</p>\
             <h2>Lineage</h2>{lineage}<h2>Metrics</h2><table><tbody>{metrics}</tbody></table>\
             <h2>Signature</h2><table><thead><tr><th scope=\"col\">column</th><th scope=\"col\">type</th></tr></thead><tbody>{signature}</tbody></table>",
            esc(&name),
            version,
            when(v.created_ms),
            esc(&v.artifact.digest),
            esc(&v.description),
        ))
    })
    .await?;
    Ok(page("Version", "models", &html).into_response())
}

// ----- deployments -----

async fn deployments_page(State(state): State<AppState>) -> UiResult {
    let traffic = state.traffic.clone();
    let html = blocking(&state, move |s| {
        let mut cards = String::new();
        let totals = s.models.metrics().totals();
        let shadow = s.models.metrics().shadow_totals();
        for name in s.models.names().map_err(internal)? {
            let live = s.models.live(&name);
            let routes = live.as_ref().map_or(String::new(), |l| {
                l.routes
                    .iter()
                    .map(|r| {
                        format!(
                            "<tr><td>{}</td><td>v{}</td><td class=\"num\">{}%</td><td>{}</td></tr>",
                            esc(&r.target),
                            r.version.version,
                            r.percent,
                            r.batcher.as_ref().map_or("no", |_| "yes")
                        )
                    })
                    .collect()
            });
            let shadow_text = live
                .as_ref()
                .and_then(|l| l.shadow.as_ref())
                .map_or("none".to_string(), |v| {
                    let (sent, agreed) = shadow.get(&name).copied().unwrap_or((0.0, 0.0));
                    let share = if sent > 0.0 { agreed / sent * 100.0 } else { 0.0 };
                    format!("v{}: {} requests, {share:.1}% agreement", v.version, sent as u64)
                });
            let (rate, errors, latency) = traffic.series(&name);
            let t = totals.get(&name).copied().unwrap_or_default();
            let _ = write!(
                cards,
                "<section class=\"card\" aria-labelledby=\"dep-{0}\"><h2 id=\"dep-{0}\"><a href=\"/ui/models/{0}\">{1}</a></h2>\
                 <table><thead><tr><th scope=\"col\">target</th><th scope=\"col\">version</th><th scope=\"col\" class=\"num\">traffic</th><th scope=\"col\">batching</th></tr></thead><tbody>{routes}</tbody></table>\
                 <p>Shadow: {2}</p><p class=\"muted\">{3} requests, {4} errors since start</p>{5}{6}{7}</section>",
                url(&name),
                esc(&name),
                esc(&shadow_text),
                t.requests as u64,
                t.errors as u64,
                chart(&rate, "requests", "/s"),
                chart(&latency, "mean latency", "ms"),
                chart(&errors, "errors", "/s"),
            );
        }
        Ok(format!(
            "<h1>Deployments</h1><p class=\"muted\">Charts cover the last 15 minutes, sampled every 5 s.</p><div class=\"cards\">{cards}</div>"
        ))
    })
    .await?;
    Ok(page("Deployments", "deployments", &html).into_response())
}

// ----- runs -----

const PER_PAGE: usize = 50;

async fn runs_page(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry();
        let experiment = q.get("experiment").filter(|e| !e.is_empty()).cloned();
        let filter_text = q.get("where").cloned().unwrap_or_default();
        let order_text = q
            .get("order")
            .cloned()
            .unwrap_or_else(|| "attributes.start_ms desc".into());
        let page_no: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).clamp(1, 1 << 32);
        let filter = if filter_text.is_empty() {
            None
        } else {
            Some(Filter::parse(&filter_text).map_err(|e| error_page(StatusCode::BAD_REQUEST, &e))?)
        };
        let order = OrderBy::parse(&order_text).map_err(|e| error_page(StatusCode::BAD_REQUEST, &e))?;
        let search = RunSearch {
            experiment: experiment.clone(),
            filter,
            order: Some(order),
            ..RunSearch::default()
        };
        let views = reg.search_runs(&search).map_err(registry_error)?;
        let total = views.len();
        let pages = total.div_ceil(PER_PAGE).max(1);
        let shown: Vec<&RunView> = views.iter().skip((page_no - 1).saturating_mul(PER_PAGE)).take(PER_PAGE).collect();
        let keys: BTreeSet<&String> = shown.iter().flat_map(|v| v.metrics.keys()).take(8).collect();
        let mut head = String::from(
            "<th scope=\"col\">compare</th><th scope=\"col\">run</th><th scope=\"col\">experiment</th><th scope=\"col\">status</th><th scope=\"col\">started</th>",
        );
        for k in &keys {
            let _ = write!(
                head,
                "<th scope=\"col\" class=\"num\"><a href=\"?order={}&amp;where={}\">{}</a></th>",
                url(&format!("metrics.{k} desc")),
                url(&filter_text),
                esc(k)
            );
        }
        let names: BTreeMap<u64, String> = reg
            .experiments()
            .map_err(registry_error)?
            .into_iter()
            .map(|e| (e.id, e.name))
            .collect();
        let mut rows = String::new();
        for v in &shown {
            let id = run_id_text(v.run.id);
            let mut cells = String::new();
            for k in &keys {
                let _ = write!(
                    cells,
                    "<td class=\"num\">{}</td>",
                    v.metrics.get(*k).map_or("-".into(), |p| num(p.value))
                );
            }
            let _ = write!(
                rows,
                "<tr><td><input type=\"checkbox\" name=\"runs\" value=\"{id}\" aria-label=\"compare run {id}\"></td>\
                 <td><a href=\"/ui/runs/{id}\">{id}</a> {}</td><td>{}</td><td>{}</td><td>{}</td>{cells}</tr>",
                esc(&v.run.name),
                esc(names.get(&v.run.experiment_id).map_or("", String::as_str)),
                esc(v.run.status.as_str()),
                when(v.run.start_ms)
            );
        }
        let link = |p: usize, label: &str| {
            format!(
                "<a href=\"?page={p}&amp;order={}&amp;where={}&amp;experiment={}\">{label}</a>",
                url(&order_text),
                url(&filter_text),
                url(experiment.as_deref().unwrap_or(""))
            )
        };
        let mut pager = format!("<nav class=\"pager\" aria-label=\"Pages\">page {page_no} of {pages} ({total} runs) ");
        if page_no > 1 {
            pager.push_str(&link(page_no - 1, "previous"));
        }
        if page_no < pages {
            pager.push_str(&link(page_no + 1, "next"));
        }
        pager.push_str("</nav>");
        let options: String = names
            .values()
            .map(|n| {
                let selected = if experiment.as_deref() == Some(n.as_str()) { " selected" } else { "" };
                format!("<option{selected}>{}</option>", esc(n))
            })
            .collect();
        Ok(format!(
            "<h1>Experiments and runs</h1>\
             <form method=\"get\" action=\"/ui/runs\"><label for=\"experiment\">experiment</label> \
             <select id=\"experiment\" name=\"experiment\"><option value=\"\">all</option>{options}</select> \
             <label for=\"where\">where</label> <input id=\"where\" name=\"where\" value=\"{}\" size=\"32\" placeholder=\"metrics.test_roc_auc &gt; 0.9\"> \
             <label for=\"order\">order by</label> <input id=\"order\" name=\"order\" value=\"{}\" size=\"22\"> \
             <button type=\"submit\">Show</button></form>{pager}\
             <form method=\"get\" action=\"/ui/compare\"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\
             <p><button type=\"submit\">Compare the chosen runs</button></p></form>",
            esc(&filter_text),
            esc(&order_text),
        ))
    })
    .await?;
    Ok(page("Runs", "runs", &html).into_response())
}

fn parse_run(id: &str) -> Result<u64, Problem> {
    kiln_core::registry::parse_run_id(id).map_err(not_found)
}

async fn run_page(State(state): State<AppState>, Path(id): Path<String>) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry();
        let run = reg.run(parse_run(&id)?).map_err(registry_error)?;
        let mut params = String::new();
        for (k, v) in &run.params {
            let _ = write!(params, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
        }
        let mut tags = String::new();
        for (k, v) in &run.tags {
            let _ = write!(tags, "<span class=\"badge\">{}={}</span>", esc(k), esc(v));
        }
        let mut curves = String::new();
        for (k, p) in reg.latest_metrics(run.id).map_err(registry_error)? {
            let series: Vec<f64> = reg
                .metric_history(run.id, &k, Some(200))
                .map_err(registry_error)?
                .iter()
                .map(|p| p.value)
                .collect();
            if series.len() > 1 {
                curves.push_str(&chart(&series, &k, ""));
            } else {
                let _ = write!(curves, "<p>{}: {}</p>", esc(&k), num(p.value));
            }
        }
        Ok(format!(
            "<h1>Run {} {}</h1><p class=\"muted\">{} · started {}</p><p>{tags}</p>\
             <h2>Metrics</h2><div class=\"cards\">{curves}</div><h2>Parameters</h2><table><tbody>{params}</tbody></table>",
            run_id_text(run.id),
            esc(&run.name),
            esc(run.status.as_str()),
            when(run.start_ms),
        ))
    })
    .await?;
    Ok(page("Run", "runs", &html).into_response())
}

async fn compare_page(
    State(state): State<AppState>,
    Query(q): Query<Vec<(String, String)>>,
) -> UiResult {
    let ids: Vec<String> = q
        .into_iter()
        .filter(|(k, _)| k == "runs")
        .map(|(_, v)| v)
        .collect();
    let html = blocking(&state, move |s| {
        if ids.len() < 2 {
            return Err(error_page(StatusCode::BAD_REQUEST, "choose two or more runs to compare"));
        }
        let reg = s.models.registry();
        let mut runs = Vec::new();
        for id in &ids {
            let run = reg.run(parse_run(id)?).map_err(registry_error)?;
            let metrics = reg.latest_metrics(run.id).map_err(registry_error)?;
            runs.push((run, metrics));
        }
        let mut head = "<th scope=\"col\"></th>".to_string();
        for (r, _) in &runs {
            let _ = write!(head, "<th scope=\"col\">{}</th>", run_id_text(r.id));
        }
        let keys: BTreeSet<String> = runs
            .iter()
            .flat_map(|(r, m)| {
                m.keys()
                    .map(|k| format!("metrics.{k}"))
                    .chain(r.params.keys().map(|k| format!("params.{k}")))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut rows = String::new();
        for key in &keys {
            let values: Vec<String> = runs
                .iter()
                .map(|(r, m)| match key.split_once('.') {
                    Some(("metrics", k)) => m.get(k).map_or("-".into(), |p| num(p.value)),
                    Some((_, k)) => r.params.get(k).cloned().unwrap_or_else(|| "-".into()),
                    None => "-".into(),
                })
                .collect();
            let differs = values.iter().collect::<BTreeSet<_>>().len() > 1;
            let mark = if differs { "<strong>≠</strong> " } else { "" };
            let cells: String = values.iter().map(|v| format!("<td>{}</td>", esc(v))).collect();
            let _ = write!(rows, "<tr><th scope=\"row\">{mark}{}</th>{cells}</tr>", esc(key));
        }
        Ok(format!(
            "<h1>Compare runs</h1><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        ))
    })
    .await?;
    Ok(page("Compare", "runs", &html).into_response())
}

// ----- pipelines -----

fn state_class(s: StepExecState) -> &'static str {
    match s {
        StepExecState::Succeeded => "ok",
        StepExecState::Cached => "cached",
        StepExecState::Failed | StepExecState::TimedOut => "bad",
        StepExecState::Running => "warn",
        _ => "muted",
    }
}

async fn pipelines_page(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let control = state.pipelines.clone();
    let html = blocking(&state, move |s| {
        let reg = s.models.registry();
        let schedules = reg.schedule_states().map_err(registry_error)?;
        let mut known = String::new();
        if let Some(c) = &control {
            for p in c.pipelines() {
                let (name, file) = (p.pipeline, p.file);
                let cron = Some(p.cron).filter(|c| !c.is_empty());
                let paused = schedules.iter().any(|st| st.pipeline == name && st.paused);
                let _ = write!(
                    known,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td><form class=\"inline\" method=\"post\" action=\"/ui/pipelines/{}/run\">\
                     <button type=\"submit\" id=\"trigger-{}\">Run now</button></form></td></tr>",
                    esc(&name),
                    esc(&file),
                    cron.map_or("no schedule".into(), |c| format!("{}{}", esc(&c), if paused { " (paused)" } else { "" })),
                    url(&name),
                    esc(&name)
                );
            }
        }
        let known = if control.is_some() {
            format!(
                "<h2>Pipelines</h2><table><thead><tr><th scope=\"col\">pipeline</th><th scope=\"col\">file</th><th scope=\"col\">schedule</th><th scope=\"col\">actions</th></tr></thead><tbody>{known}</tbody></table>"
            )
        } else {
            "<p class=\"muted\">This server runs no pipelines (start them with <code>kiln up --pipeline FILE</code>); their runs are listed from the registry.</p>".into()
        };
        let runs = reg.pipeline_runs(None, 100).map_err(registry_error)?;
        let mut rows = String::new();
        for r in &runs {
            let count = |f: &dyn Fn(StepExecState) -> bool| r.steps.iter().filter(|x| f(x.state)).count();
            let took = r.ended_ms.map_or("running".into(), |e| format!("{:.1} s", (e - r.started_ms) as f64 / 1000.0));
            let _ = write!(
                rows,
                "<tr><td><a href=\"/ui/pipeline-runs/{0}\">{0}</a></td><td>{1}</td><td class=\"{2}\">{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{took}</td>\
                 <td>{7} ran, {8} cached, {9} failed</td></tr>",
                r.id,
                esc(&r.pipeline),
                match r.state {
                    kiln_core::registry::PipelineRunState::Succeeded => "ok",
                    kiln_core::registry::PipelineRunState::Failed => "bad",
                    _ => "muted",
                },
                r.state.as_str(),
                esc(&r.trigger),
                esc(&r.logical_date),
                when(r.started_ms),
                count(&|x| x == StepExecState::Succeeded),
                count(&|x| x == StepExecState::Cached),
                count(&|x| matches!(x, StepExecState::Failed | StepExecState::TimedOut)),
            );
        }
        Ok(format!(
            "<h1>Pipelines</h1>{}{known}<h2>Recent runs</h2><table><thead><tr><th scope=\"col\">run</th><th scope=\"col\">pipeline</th>\
             <th scope=\"col\">state</th><th scope=\"col\">trigger</th><th scope=\"col\">date</th><th scope=\"col\">started</th><th scope=\"col\">took</th>\
             <th scope=\"col\">steps</th></tr></thead><tbody>{rows}</tbody></table>",
            flash(&q)
        ))
    })
    .await?;
    Ok(page("Pipelines", "pipelines", &html).into_response())
}

/// The DAG as SVG: steps in columns by depth, edges from needs, colored by state.
fn dag(run: &PipelineRun) -> String {
    let index: BTreeMap<&str, usize> = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut depth = vec![0usize; run.steps.len()];
    for _ in 0..run.steps.len() {
        let mut changed = false;
        for (i, s) in run.steps.iter().enumerate() {
            for n in &s.needs {
                if let Some(&j) = index.get(n.as_str())
                    && depth[i] < depth[j] + 1
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut row_in_column: BTreeMap<usize, usize> = BTreeMap::new();
    let mut at = vec![(0.0, 0.0); run.steps.len()];
    let (bw, bh, gx, gy) = (150.0, 46.0, 40.0, 16.0);
    for (i, d) in depth.iter().enumerate() {
        let r = row_in_column.entry(*d).or_insert(0);
        at[i] = (10.0 + *d as f64 * (bw + gx), 10.0 + *r as f64 * (bh + gy));
        *r += 1;
    }
    let width = 20.0 + (depth.iter().max().copied().unwrap_or(0) + 1) as f64 * (bw + gx);
    let height = 20.0 + row_in_column.values().max().copied().unwrap_or(1) as f64 * (bh + gy);
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"The steps of run {} and what each needs\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
        run.id
    );
    for (i, s) in run.steps.iter().enumerate() {
        for n in &s.needs {
            if let Some(&j) = index.get(n.as_str()) {
                let (x1, y1) = (at[j].0 + bw, at[j].1 + bh / 2.0);
                let (x2, y2) = (at[i].0, at[i].1 + bh / 2.0);
                let _ = write!(
                    svg,
                    "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#9aa4ae\" stroke-width=\"1.2\"/>"
                );
            }
        }
    }
    for (i, s) in run.steps.iter().enumerate() {
        let color = match s.state {
            StepExecState::Succeeded => "#1f7a3d",
            StepExecState::Cached => "#3b5bdb",
            StepExecState::Failed | StepExecState::TimedOut => "#b3261e",
            StepExecState::Running => "#9a6700",
            _ => "#8a939c",
        };
        let took = match (s.started_ms, s.ended_ms) {
            (Some(a), Some(b)) if b - a < 1000 => format!(" · {} ms", b - a),
            (Some(a), Some(b)) => format!(" · {:.1} s", (b - a) as f64 / 1000.0),
            _ => String::new(),
        };
        let (x, y) = at[i];
        let _ = write!(
            svg,
            "<g class=\"step\" data-step=\"{0}\" data-state=\"{1}\"><rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\" fill=\"#fff\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{2}\" y=\"{3}\" font-size=\"13\" font-weight=\"600\">{0}</text><text x=\"{2}\" y=\"{4}\" font-size=\"11\" fill=\"{color}\">{1}{took}</text></g>",
            esc(&s.id),
            s.state.as_str(),
            x + 8.0,
            y + 19.0,
            y + 36.0
        );
    }
    svg.push_str("</svg>");
    svg
}

async fn pipeline_run_page(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let can_cancel = state.pipelines.is_some();
    let html = blocking(&state, move |s| {
        let run = s.models.registry().pipeline_run(id).map_err(registry_error)?;
        let mut rows = String::new();
        for st in &run.steps {
            let took = match (st.started_ms, st.ended_ms) {
                (Some(a), Some(b)) => format!("{:.2} s", (b - a) as f64 / 1000.0),
                _ => "-".into(),
            };
            let logs: String = (1..=st.logs.len())
                .map(|n| format!("<a href=\"/ui/pipeline-runs/{id}/logs/{}/{n}\">attempt {n}</a> ", url(&st.id)))
                .collect();
            let note = st
                .error
                .as_deref()
                .or(st.reason.as_deref())
                .unwrap_or("");
            let values: String = st
                .values
                .iter()
                .filter(|(_, v)| !v.starts_with('/') && v.len() <= 40)
                .map(|(k, v)| {
                    // A step's tracking run (train, a command's metrics) links to its page.
                    if k == "run" && kiln_core::registry::parse_run_id(v).is_ok() {
                        format!(
                            "<span class=\"badge\">run=<a href=\"/ui/runs/{0}\">{0}</a></span>",
                            esc(v)
                        )
                    } else {
                        format!("<span class=\"badge\">{}={}</span>", esc(k), esc(v))
                    }
                })
                .collect();
            let _ = write!(
                rows,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{took}</td><td>{}</td><td>{values}</td><td>{logs}</td></tr>",
                esc(&st.id),
                state_class(st.state),
                st.state.as_str(),
                st.attempts,
                esc(note),
            );
        }
        let cancel = if can_cancel && run.state == kiln_core::registry::PipelineRunState::Running {
            format!("<form method=\"post\" action=\"/ui/pipeline-runs/{id}/cancel\"><button type=\"submit\">Cancel this run</button></form>")
        } else {
            String::new()
        };
        Ok(format!(
            "<h1>Pipeline {} run {}</h1>{}<p class=\"muted\">{} · {} · date {} · started {} · file <code>{}</code></p>{cancel}\
             <h2>Steps</h2>{}<table><thead><tr><th scope=\"col\">step</th><th scope=\"col\">state</th><th scope=\"col\" class=\"num\">attempts</th>\
             <th scope=\"col\" class=\"num\">took</th><th scope=\"col\">note</th><th scope=\"col\">values</th><th scope=\"col\">logs</th></tr></thead><tbody>{rows}</tbody></table>",
            esc(&run.pipeline),
            run.id,
            flash(&q),
            run.state.as_str(),
            esc(&run.trigger),
            esc(&run.logical_date),
            when(run.started_ms),
            esc(&run.file),
            dag(&run),
        ))
    })
    .await?;
    Ok(page("Pipeline run", "pipelines", &html).into_response())
}

async fn step_log_page(
    State(state): State<AppState>,
    Path((id, step, attempt)): Path<(u64, String, usize)>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let part = s
            .models
            .registry()
            .step_log(id, &step, attempt, None, 256 << 10)
            .map_err(registry_error)?;
        let cut = if part.start > 0 {
            format!(
                "<p class=\"muted\">The last 256 KiB of {} KiB; the API serves the rest (<code>/api/pipeline-runs/{id}/logs/{}/{attempt}?from=0</code>).</p>",
                part.size >> 10,
                esc(&step)
            )
        } else {
            String::new()
        };
        Ok(format!(
            "<h1>Run {id} · {} · attempt {attempt}</h1><p><a href=\"/ui/pipeline-runs/{id}\">back to the run</a></p>{cut}<pre>{}</pre>",
            esc(&step),
            esc(&part.text)
        ))
    })
    .await?;
    Ok(page("Step log", "pipelines", &html).into_response())
}

// ----- drift -----

async fn drift_page(State(state): State<AppState>) -> UiResult {
    let html = blocking(&state, |s| {
        let mut out = String::new();
        for name in s.models.names().map_err(internal)? {
            let reports = match s.models.drift(&name) {
                Ok(r) => r,
                Err(_) => continue,
            };
            for r in reports {
                let mut rows = String::new();
                for f in r.features.iter().chain(r.prediction.as_ref()) {
                    let fmt = |x: Option<f64>| x.map_or("-".into(), num);
                    let _ = write!(
                        rows,
                        "<tr><td>{}{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} ({})</td><td class=\"bad\">{}</td></tr>",
                        if f.alarm { "⚠ " } else { "" },
                        esc(&f.feature),
                        esc(&f.kind),
                        fmt(f.psi),
                        fmt(f.js),
                        fmt(f.linf),
                        fmt(f.unseen),
                        num(f.missing),
                        num(f.missing_train),
                        esc(&f.reasons.join("; "))
                    );
                }
                let status = if !r.judged {
                    format!("{} rows in the window; judged from {}", r.rows, r.thresholds.min_rows)
                } else {
                    format!("{} rows in the window; {} in alarm", r.rows, r.alarms().len())
                };
                let _ = write!(
                    out,
                    "<h2 id=\"{}\">{} version {}</h2><p class=\"muted\">{status}</p><table><thead><tr><th scope=\"col\">feature</th><th scope=\"col\">kind</th>\
                     <th scope=\"col\" class=\"num\">psi</th><th scope=\"col\" class=\"num\">js</th><th scope=\"col\" class=\"num\">linf</th><th scope=\"col\" class=\"num\">unseen</th>\
                     <th scope=\"col\" class=\"num\">missing (train)</th><th scope=\"col\">alarm</th></tr></thead><tbody>{rows}</tbody></table>",
                    url(&name),
                    esc(&name),
                    r.version
                );
            }
        }
        if out.is_empty() {
            out = "<p class=\"muted\">No live model has a drift window (is the prediction log on? <code>--log-sample</code>).</p>".into();
        }
        Ok(format!("<h1>Drift</h1><p class=\"muted\">Live traffic against each version's training statistics.</p>{out}"))
    })
    .await?;
    Ok(page("Drift", "drift", &html).into_response())
}

// ----- actions -----

/// Whether a browser request carries the token (cookie or header), when one is set.
fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(token) = &state.config.token else {
        return Ok(());
    };
    let from_cookie =
        crate::guard::session_cookie(headers).is_some_and(|id| state.sessions.valid(&id));
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| crate::app::same(t, token));
    if from_cookie || from_header {
        Ok(())
    } else {
        Err(error_page(
            StatusCode::UNAUTHORIZED,
            "this action needs the server's token; log in at /ui/login",
        ))
    }
}

fn back(to: &str, done: Result<String, String>) -> Response {
    let (key, text) = match done {
        Ok(t) => ("done", t),
        Err(t) => ("error", t),
    };
    Redirect::to(&format!("{to}?{key}={}", url(&text))).into_response()
}

#[derive(Deserialize)]
struct AliasForm {
    alias: String,
    version: u32,
}

async fn move_alias(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<AliasForm>,
) -> UiResult {
    authorized(&state, &headers)?;
    let actor = format!("{} (web UI)", state.config.actor);
    let to = format!("/ui/models/{}", url(&name));
    let done = blocking(&state, move |s| {
        let reg: &Registry = s.models.registry();
        let result = reg
            .set_alias(
                &name,
                &f.alias,
                f.version,
                Expect::Any,
                &actor,
                "from the web UI",
            )
            .map(|_| {
                s.models.reconcile(&name);
                format!("{} now points to version {}", f.alias, f.version)
            })
            .map_err(|e| e.to_string());
        Ok(result)
    })
    .await?;
    Ok(back(&to, done))
}

#[derive(Deserialize)]
struct SplitForm {
    split: String,
}

async fn set_split(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<SplitForm>,
) -> UiResult {
    authorized(&state, &headers)?;
    let actor = format!("{} (web UI)", state.config.actor);
    let to = format!("/ui/models/{}", url(&name));
    let done = blocking(&state, move |s| {
        let mut routes = Vec::new();
        for part in f.split.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<Route>() {
                Ok(route) => routes.push(route),
                Err(e) => return Ok(Err(e)),
            }
        }
        let reg = s.models.registry();
        let current = reg.deployment(&name).map_err(registry_error)?;
        let result = reg
            .set_deployment(
                Deployment {
                    routes,
                    updated_ms: 0,
                    updated_by: String::new(),
                    ..current
                },
                &actor,
            )
            .map(|d| {
                s.models.reconcile(&name);
                format!(
                    "traffic: {}",
                    d.routes
                        .iter()
                        .map(|r| format!("{} {}%", r.target, r.percent))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .map_err(|e| e.to_string());
        Ok(result)
    })
    .await?;
    Ok(back(&to, done))
}

async fn trigger_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> UiResult {
    authorized(&state, &headers)?;
    let control = state
        .pipelines
        .clone()
        .ok_or_else(|| not_found("this server runs no pipelines"))?;
    match control
        .start(&name, kiln_core::wire::pipelines::StartRun::default(), "ui")
        .await
    {
        Ok(id) => Ok(Redirect::to(&format!("/ui/pipeline-runs/{id}")).into_response()),
        Err(
            crate::pipelines::StartError::UnknownPipeline(e)
            | crate::pipelines::StartError::Refused(e),
        ) => Ok(back("/ui/pipelines", Err(e))),
    }
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> UiResult {
    authorized(&state, &headers)?;
    let control = state
        .pipelines
        .clone()
        .ok_or_else(|| not_found("this server runs no pipelines"))?;
    let to = format!("/ui/pipeline-runs/{id}");
    let cancelled = if control.cancel(id) {
        Ok(format!("cancelling run {id}"))
    } else {
        Err(format!("run {id} is not running in this kiln"))
    };
    Ok(back(&to, cancelled))
}

async fn login_page(State(state): State<AppState>) -> Html<String> {
    let note = if state.config.token.is_some() {
        "Actions (promote, split, pipeline runs) need the server's token. A login lasts 12 hours and opens this web UI only; scripts send the token as `Authorization: Bearer`."
    } else {
        "This server has no token: every action is open."
    };
    page(
        "Log in",
        "",
        &format!(
            "<h1>Log in</h1><p>{note}</p><form method=\"post\" action=\"/ui/login\"><label for=\"token\">token</label> \
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\"> <button type=\"submit\">Log in</button></form>\
             <form method=\"post\" action=\"/ui/logout\"><button type=\"submit\">Log out</button></form>"
        ),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = &state.config.token else {
        return Redirect::to("/ui/models").into_response();
    };
    if let Some(wait) = state.sessions.login_wait() {
        let mut r = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many wrong tokens; try again in {} s",
                wait.as_secs().max(1)
            ),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !crate::app::same(&f.token, token) {
        state.sessions.login_failed();
        return error_page(StatusCode::UNAUTHORIZED, "that is not the server's token")
            .into_response();
    }
    let id = state.sessions.open();
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                crate::guard::SESSION_COOKIE,
                crate::guard::SESSION_LIFETIME.as_secs()
            ),
        )],
        Redirect::to("/ui/models"),
    )
        .into_response()
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = crate::guard::session_cookie(&headers) {
        state.sessions.close(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                crate::guard::SESSION_COOKIE
            ),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}
