//! Models, one model (versions side by side, aliases, history, promote and traffic-split forms),
//! a version, and the deployments page; the alias and split actions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kiln_core::registry::{Deployment, Expect, Route, run_id_text};
use serde::Deserialize;

use super::auth::{authorized, back};
use super::svg::chart;
use super::{UiResult, blocking, esc, flash, internal, num, page, registry_error, url, when};
use crate::state::AppState;

pub(super) async fn models_page(State(state): State<AppState>) -> UiResult {
    let html = blocking(&state, |s| {
        let reg = s.models.registry()?;
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

pub(super) async fn model_page(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let token = state.config.token.is_some();
    let html = blocking(&state, move |s| {
        let reg = s.models.registry()?;
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

pub(super) async fn version_page(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, u32)>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry()?;
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
        // A version a pipeline pushed: the slices its evaluation judged.
        let slices = run
            .as_ref()
            .and_then(|r| r.tags.get("kiln.pipeline_run"))
            .and_then(|id| id.parse::<u64>().ok())
            .and_then(|id| reg.pipeline_run(id).ok())
            .map_or(String::new(), |p| super::pipelines::slice_tables(&p));
        Ok(format!(
            "<h1>{} version {}</h1><p class=\"muted\">created {} · artifact <code>{}</code> · {}</p>\
             <h2>Lineage</h2>{lineage}<h2>Metrics</h2><table><tbody>{metrics}</tbody></table>{slices}\
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

pub(super) async fn deployments_page(State(state): State<AppState>) -> UiResult {
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

#[derive(Deserialize)]
pub(super) struct AliasForm {
    alias: String,
    version: u32,
}

pub(super) async fn move_alias(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<AliasForm>,
) -> UiResult {
    authorized(&state, &headers)?;
    let actor = format!("{} (web UI)", state.config.actor);
    let to = format!("/ui/models/{}", url(&name));
    let done = blocking(&state, move |s| {
        let result = s
            .models
            .change(&name, |r| {
                r.set_alias(
                    &name,
                    &f.alias,
                    f.version,
                    Expect::Any,
                    &actor,
                    "from the web UI",
                )
            })
            .map(|_| format!("{} now points to version {}", f.alias, f.version))
            .map_err(|e| e.to_string());
        Ok(result)
    })
    .await?;
    Ok(back(&to, done))
}

#[derive(Deserialize)]
pub(super) struct SplitForm {
    split: String,
}

pub(super) async fn set_split(
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
        let current = s
            .models
            .registry()?
            .deployment(&name)
            .map_err(registry_error)?;
        let result = s
            .models
            .change(&name, |r| {
                r.set_deployment(
                    Deployment {
                        routes,
                        updated_ms: 0,
                        updated_by: String::new(),
                        ..current
                    },
                    &actor,
                )
            })
            .map(|d| {
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
