//! Runs (server-side paging, sorting and `where` filters), one run with its metric curves, and
//! runs side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kiln_core::registry::query::{Filter, OrderBy, RunSearch, RunView};
use kiln_core::registry::run_id_text;

use super::svg::chart;
use super::{
    Problem, UiResult, blocking, error_page, esc, not_found, num, page, registry_error, url, when,
};
use crate::state::AppState;

const PER_PAGE: usize = 50;

pub(super) async fn runs_page(
    State(state): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry()?;
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

pub(super) async fn run_page(State(state): State<AppState>, Path(id): Path<String>) -> UiResult {
    let html = blocking(&state, move |s| {
        let reg = s.models.registry()?;
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

pub(super) async fn compare_page(
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
        let reg = s.models.registry()?;
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
