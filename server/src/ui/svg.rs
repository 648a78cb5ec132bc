//! Charts and DAGs drawn as inline SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kiln_core::registry::{PipelineRun, StepExecState};

use super::{esc, num};

/// A line chart of `values` as inline SVG, with its last value and maximum in text.
pub(super) fn chart(values: &[f64], title: &str, unit: &str) -> String {
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

/// The DAG as SVG: steps in columns by depth, edges from needs, colored by state.
pub(super) fn dag(run: &PipelineRun) -> String {
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
