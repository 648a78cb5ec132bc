//! Pipelines and their runs (the DAG with step states, durations, cache hits and logs), a
//! step's log, and the run-now and cancel actions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use kiln_core::registry::StepExecState;
use kiln_core::text::num;

use super::auth::{authorized, back};
use super::svg::dag;
use super::{UiResult, blocking, esc, flash, not_found, page, registry_error, url, when};
use crate::state::AppState;

/// The slice tables of a run's `evaluate` steps (those with `slices`), read from the
/// `evaluation.json` each leaves in its outputs: each slice's rows, the candidate's and the
/// baseline's figure, how much worse, and whether the rule judged it.
pub(super) fn slice_tables(run: &kiln_core::registry::PipelineRun) -> String {
    let mut html = String::new();
    for st in &run.steps {
        let Some(dir) = &st.outputs_dir else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(std::path::Path::new(dir).join("evaluation.json"))
        else {
            continue;
        };
        let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(slices) = j["slices"].as_array().filter(|s| !s.is_empty()) else {
            continue;
        };
        let figure = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), num);
        let mut rows = String::new();
        for sl in slices {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(sl["slice"].as_str().unwrap_or("")),
                sl["rows"].as_u64().unwrap_or(0),
                figure(&sl["candidate"]),
                figure(&sl["baseline"]),
                figure(&sl["regression"]),
                if sl["judged"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
            );
        }
        let _ = write!(
            html,
            "<h2>Slices of step {}</h2><p class=\"muted\">{} on each slice of the test rows, worst first; {}</p>\
             <table><thead><tr><th scope=\"col\">slice</th><th scope=\"col\" class=\"num\">rows</th><th scope=\"col\" class=\"num\">candidate</th>\
             <th scope=\"col\" class=\"num\">baseline</th><th scope=\"col\" class=\"num\">worse by</th><th scope=\"col\">judged</th></tr></thead><tbody>{rows}</tbody></table>",
            esc(&st.id),
            esc(j["metric"].as_str().unwrap_or("")),
            if j["blessed"].as_bool().unwrap_or(false) {
                "blessed"
            } else {
                "not blessed"
            },
        );
    }
    html
}

fn state_class(s: StepExecState) -> &'static str {
    match s {
        StepExecState::Succeeded => "ok",
        StepExecState::Cached => "cached",
        StepExecState::Failed | StepExecState::TimedOut => "bad",
        StepExecState::Running => "warn",
        _ => "muted",
    }
}

pub(super) async fn pipelines_page(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let control = state.pipelines.clone();
    let html = blocking(&state, move |s| {
        let reg = s.models.registry()?;
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

pub(super) async fn pipeline_run_page(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let can_cancel = state.pipelines.is_some();
    let html = blocking(&state, move |s| {
        let run = s.models.registry()?.pipeline_run(id).map_err(registry_error)?;
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
                    } else if let Some(x) = v.parse::<f64>().ok().filter(|_| v.contains('.')) {
                        // A measured value, rounded as the command line rounds it; the full
                        // value on hover.
                        format!(
                            "<span class=\"badge\" title=\"{}\">{}={}</span>",
                            esc(v),
                            esc(k),
                            num(x)
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
        let slices = slice_tables(&run);
        Ok(format!(
            "<h1>Pipeline {} run {}</h1>{}<p class=\"muted\">{} · {} · date {} · started {} · file <code>{}</code></p>{cancel}\
             <h2>Steps</h2><div class=\"dag\">{}</div><table><thead><tr><th scope=\"col\">step</th><th scope=\"col\">state</th><th scope=\"col\" class=\"num\">attempts</th>\
             <th scope=\"col\" class=\"num\">took</th><th scope=\"col\">note</th><th scope=\"col\">values</th><th scope=\"col\">logs</th></tr></thead><tbody>{rows}</tbody></table>{slices}",
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

pub(super) async fn step_log_page(
    State(state): State<AppState>,
    Path((id, step, attempt)): Path<(u64, String, usize)>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let part = s
            .models
            .registry()?
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

pub(super) async fn trigger_run(
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

pub(super) async fn cancel_run(
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
