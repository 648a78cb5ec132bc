//! The evaluation gate: whether a candidate model is good enough to replace the one in service.
//! It is judged on its test rows against absolute thresholds and, when there is a baseline,
//! against the baseline's figure on the same rows; the judgement says why, in words.

use std::collections::BTreeMap;

use kiln_core::bundle::{Manifest, Task, Weight};
use kiln_core::data::Table;
use serde::Serialize;

use crate::sweep::is_minimised;
use crate::{DeviceChoice, TrainError, evaluate};

/// What a candidate must reach.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// The metric compared with the baseline (the task's primary metric when none).
    pub metric: Option<String>,
    /// Absolute bounds: at least this for figures where higher is better, at most for losses.
    pub thresholds: BTreeMap<String, f64>,
    /// How much better than the baseline the candidate must be on `metric`.
    pub min_improvement: f64,
}

/// The version a candidate is compared with.
pub struct Baseline<'a> {
    /// How the baseline is named in the reasons (`ctr version 3 (champion)`).
    pub label: String,
    pub version: u32,
    pub manifest: &'a Manifest,
    pub weights: &'a BTreeMap<String, Weight>,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub blessed: bool,
    pub metric: String,
    pub rows: usize,
    pub candidate: BTreeMap<String, f64>,
    /// The baseline's figure on `metric`.
    pub baseline: Option<f64>,
    pub baseline_version: Option<u32>,
    pub reasons: Vec<String>,
}

impl Judgement {
    /// The candidate's figure on the gate's metric.
    pub fn candidate_value(&self) -> Option<f64> {
        self.candidate.get(&self.metric).copied()
    }
}

/// The metric a model is judged by when none is named.
pub fn primary_metric(task: Task) -> &'static str {
    match task {
        Task::BinaryClassification => "roc_auc",
        Task::MultiClassification => "accuracy",
        Task::Regression => "rmse",
    }
}

/// A metric's figure, or an error that names the ones there are.
fn value(m: &BTreeMap<String, f64>, k: &str) -> Result<f64, TrainError> {
    m.get(k).copied().ok_or_else(|| {
        TrainError::Config(format!(
            "no metric `{k}` for this model{}",
            kiln_core::suggest::hint(k, m.keys().map(String::as_str))
        ))
    })
}

/// Judges the candidate (`manifest`, `weights`) on its test split of `table` against `gate`
/// and, when given, `baseline` scored on the same rows.
pub fn judge(
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    table: &Table,
    gate: &Gate,
    baseline: Option<Baseline>,
) -> Result<Judgement, TrainError> {
    let rows = crate::test_split(table, crate::test_fraction_of(manifest));
    let candidate = evaluate(manifest, weights, &rows, DeviceChoice::Cpu)?;
    let metric = gate
        .metric
        .clone()
        .unwrap_or_else(|| primary_metric(manifest.task).to_string());
    let mut reasons = Vec::new();
    let mut blessed = true;
    for (k, bound) in &gate.thresholds {
        let v = value(&candidate, k)?;
        let (ok, cmp) = if is_minimised(k) {
            (v <= *bound, "≤")
        } else {
            (v >= *bound, "≥")
        };
        reasons.push(format!(
            "{k} {v:.4} {} {cmp} {bound}",
            if ok { "is" } else { "is not" }
        ));
        blessed &= ok;
    }
    let mut baseline_value = None;
    let mut baseline_version = None;
    if let Some(base) = baseline {
        let scores = evaluate(base.manifest, base.weights, &rows, DeviceChoice::Cpu)?;
        let (c, b) = (value(&candidate, &metric)?, value(&scores, &metric)?);
        let minimised = is_minimised(&metric);
        let gain = if minimised { b - c } else { c - b };
        let ok = gain >= gate.min_improvement;
        reasons.push(format!(
            "{metric} {c:.4} against {b:.4} of {}: {} {gain:+.4} {} the minimum {}",
            base.label,
            if minimised { "lower by" } else { "higher by" },
            if ok { "meets" } else { "misses" },
            gate.min_improvement
        ));
        blessed &= ok;
        baseline_value = Some(b);
        baseline_version = Some(base.version);
    }
    value(&candidate, &metric)?;
    Ok(Judgement {
        blessed,
        metric,
        rows: rows.num_rows(),
        candidate,
        baseline: baseline_value,
        baseline_version,
        reasons,
    })
}
