//! The evaluation gate: whether a candidate model is good enough to replace the one in service.
//! It is judged on its test rows against absolute thresholds and, when there is a baseline,
//! against the baseline's figure on the same rows; the judgement says why, in words.

use std::collections::BTreeMap;

use kiln_core::bundle::{Manifest, Task, Weight};
use kiln_core::data::Table;
use serde::Serialize;

use crate::evaluate::{Foreign, Scored, scored};
use crate::sweep::is_minimised;
use crate::{DeviceChoice, TrainError};

/// What a candidate must reach.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The metric compared with the baseline (the task's primary metric when none).
    pub metric: Option<String>,
    /// Absolute bounds: at least this for figures where higher is better, at most for losses.
    pub thresholds: BTreeMap<String, f64>,
    /// How much better than the baseline the candidate must be on `metric`.
    pub min_improvement: f64,
    /// Slices to judge separately: each a column, or columns crossed (`["country", "device"]`).
    pub slices: Vec<Vec<String>>,
    /// Slices with fewer test rows are shown, not judged.
    pub min_slice_rows: usize,
    /// How much worse than the baseline on `metric` any judged slice may be.
    pub max_slice_regression: f64,
}

/// Defaults of the slice rule: slices of at least 100 test rows, worse by at most 0.05 (a
/// metric on a hundred rows moves by a few hundredths from one sample to the next).
pub const MIN_SLICE_ROWS: usize = 100;
pub const MAX_SLICE_REGRESSION: f64 = 0.05;

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            metric: None,
            thresholds: BTreeMap::new(),
            min_improvement: 0.0,
            slices: Vec::new(),
            min_slice_rows: MIN_SLICE_ROWS,
            max_slice_regression: MAX_SLICE_REGRESSION,
        }
    }
}

/// The candidate and the baseline on one slice of the test rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceFigure {
    /// `country=FR`, `country=FR, device=ios`.
    pub slice: String,
    pub rows: usize,
    pub candidate: f64,
    pub baseline: Option<f64>,
    /// How much worse the candidate is (negative: better).
    pub regression: Option<f64>,
    /// Whether the slice rule judged it (enough rows, both figures defined).
    pub judged: bool,
}

/// The version a candidate is compared with.
pub struct Baseline<'a> {
    /// How the baseline is named in the reasons (`ctr version 3 (champion)`).
    pub label: String,
    pub version: u32,
    pub manifest: &'a Manifest,
    pub weights: &'a BTreeMap<String, Weight>,
    /// What runs it, when the trainer does not (an imported graph).
    pub foreign: Option<Foreign<'a>>,
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
    /// Each slice's figures on `metric`, the worst regression first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceFigure>,
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

/// Judges the candidate (`manifest`, `weights`, or `foreign` for a model the trainer does not
/// run) on its test split of `table` against `gate` and, when given, `baseline` scored on the
/// same rows.
pub fn judge(
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    foreign: Option<Foreign>,
    table: &Table,
    gate: &Gate,
    baseline: Option<Baseline>,
) -> Result<Judgement, TrainError> {
    let rows = crate::test_split(table, crate::test_fraction_of(manifest));
    let candidate_scores = scored(manifest, weights, foreign, &rows, DeviceChoice::Cpu)?;
    let candidate = candidate_scores.metrics();
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
    let mut baseline_scores = None;
    if let Some(base) = baseline {
        let scored_base = scored(
            base.manifest,
            base.weights,
            base.foreign,
            &rows,
            DeviceChoice::Cpu,
        )?;
        let scores = scored_base.metrics();
        baseline_scores = Some((scored_base, base.label.clone()));
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
    let slices = judge_slices(
        &rows,
        gate,
        &metric,
        &candidate_scores,
        baseline_scores.as_ref(),
        &mut reasons,
    )?;
    blessed &= slice_rule_holds(&slices, gate);
    Ok(Judgement {
        blessed,
        metric,
        rows: rows.num_rows(),
        candidate,
        baseline: baseline_value,
        baseline_version,
        reasons,
        slices,
    })
}

/// Whether no judged slice is worse than the baseline by more than the gate allows.
fn slice_rule_holds(figures: &[SliceFigure], gate: &Gate) -> bool {
    !figures
        .iter()
        .any(|f| f.judged && f.regression.is_some_and(|r| r > gate.max_slice_regression))
}

/// The figures of each slice of the test rows, and a reason for each slice that regresses past
/// the gate's rule (or one saying that none does).
fn judge_slices(
    rows: &Table,
    gate: &Gate,
    metric: &str,
    candidate: &Scored,
    baseline: Option<&(Scored, String)>,
    reasons: &mut Vec<String>,
) -> Result<Vec<SliceFigure>, TrainError> {
    let minimised = is_minimised(metric);
    let mut figures = Vec::new();
    for columns in &gate.slices {
        let mut texts = Vec::with_capacity(columns.len());
        for c in columns {
            let index = rows.column_index(c).ok_or_else(|| {
                TrainError::Config(format!(
                    "slice column `{c}` is not in the data{}",
                    kiln_core::suggest::hint(c, rows.names())
                ))
            })?;
            texts.push(rows.texts(index));
        }
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for row in 0..rows.num_rows() {
            let key = columns
                .iter()
                .zip(&texts)
                .map(|(c, t)| format!("{c}={}", t[row].as_deref().unwrap_or("(missing)")))
                .collect::<Vec<_>>()
                .join(", ");
            groups.entry(key).or_default().push(row);
        }
        for (slice, members) in groups {
            let c = candidate
                .metrics_of_rows(&members)
                .get(metric)
                .copied()
                .unwrap_or(f64::NAN);
            let b = baseline.map(|(s, _)| {
                s.metrics_of_rows(&members)
                    .get(metric)
                    .copied()
                    .unwrap_or(f64::NAN)
            });
            let regression = b
                .filter(|b| b.is_finite() && c.is_finite())
                .map(|b| if minimised { c - b } else { b - c });
            figures.push(SliceFigure {
                judged: regression.is_some() && members.len() >= gate.min_slice_rows,
                slice,
                rows: members.len(),
                candidate: c,
                baseline: b,
                regression,
            });
        }
    }
    figures.sort_by(|a, b| {
        let r = |f: &SliceFigure| f.regression.unwrap_or(f64::NEG_INFINITY);
        r(b).total_cmp(&r(a))
    });
    if let Some((_, label)) = baseline
        && !figures.is_empty()
    {
        let failing: Vec<&SliceFigure> = figures
            .iter()
            .filter(|f| !slice_rule_holds(std::slice::from_ref(*f), gate))
            .collect();
        for f in &failing {
            reasons.push(format!(
                "slice {} ({} rows): {metric} {:.4} against {:.4} of {label}, worse by {:.4}, more than max_slice_regression {}",
                f.slice,
                f.rows,
                f.candidate,
                f.baseline.unwrap_or(f64::NAN),
                f.regression.unwrap_or(f64::NAN),
                gate.max_slice_regression
            ));
        }
        if failing.is_empty() {
            let judged = figures.iter().filter(|f| f.judged).count();
            reasons.push(format!(
                "no slice of {} rows or more is worse than {label} by more than {} ({judged} of {} slices judged)",
                gate.min_slice_rows,
                gate.max_slice_regression,
                figures.len()
            ));
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::data::{ReadOptions, read_csv_str};

    /// Two-class scores: `good` ranks every positive above every negative; otherwise the
    /// scores say nothing.
    fn scores(labels: &[f32], good: impl Fn(usize) -> bool) -> Vec<f32> {
        labels
            .iter()
            .enumerate()
            .flat_map(|(i, y)| {
                let p = if good(i) {
                    if *y > 0.5 { 0.9 } else { 0.1 }
                } else if i % 4 < 2 {
                    0.7
                } else {
                    0.3
                };
                [1.0 - p, p]
            })
            .collect()
    }

    #[test]
    fn a_candidate_better_overall_but_worse_on_one_slice_is_not_blessed() {
        // 300 rows in country A, 100 in B; labels alternate in each.
        let mut csv = String::from("country,device,label\n");
        let mut y = Vec::new();
        for i in 0..400 {
            let country = if i < 300 { "A" } else { "B" };
            let device = if i % 3 == 0 { "ios" } else { "android" };
            csv.push_str(&format!("{country},{device},{}\n", i % 2));
            y.push((i % 2) as f32);
        }
        let rows = read_csv_str(&csv, &ReadOptions::default()).unwrap();
        let task = Task::BinaryClassification;
        // The candidate is perfect in A and no better than chance in B; the baseline the reverse,
        // and also right in a third of A.
        let candidate = Scored {
            task,
            out: scores(&y, |i| i < 300),
            y: y.clone(),
            width: 2,
        };
        let baseline = Scored {
            task,
            out: scores(&y, |i| i >= 300 || i % 3 == 0),
            y: y.clone(),
            width: 2,
        };
        let overall = |s: &Scored| s.metrics()["roc_auc"];
        assert!(overall(&candidate) > overall(&baseline));
        let gate = Gate {
            slices: vec![
                vec!["country".into()],
                vec!["country".into(), "device".into()],
            ],
            ..Gate::default()
        };
        let mut reasons = Vec::new();
        let base = (baseline, "ctr version 1 (champion)".to_string());
        let figures = judge_slices(
            &rows,
            &gate,
            "roc_auc",
            &candidate,
            Some(&base),
            &mut reasons,
        )
        .unwrap();
        assert!(!slice_rule_holds(&figures, &gate));
        // The worst first: B (and B crossed with a device), each named with its figures.
        assert!(figures[0].slice.starts_with("country=B"), "{figures:?}");
        assert!(
            reasons.iter().any(|r| r.starts_with("slice country=B (100 rows): roc_auc 0.5000 against 1.0000 of ctr version 1 (champion), worse by 0.5000, more than max_slice_regression 0.05")),
            "{reasons:?}"
        );
        // Crossed slices under 50 rows are shown but not judged.
        let small = figures
            .iter()
            .find(|f| f.slice == "country=B, device=ios")
            .unwrap();
        assert_eq!((small.rows, small.judged), (34, false));
        // Slice A is better: never a reason to refuse.
        let a = figures.iter().find(|f| f.slice == "country=A").unwrap();
        assert!(a.regression.unwrap() < 0.0 && a.judged);
        // With B's regression under the allowance, the rule holds.
        let lenient = Gate {
            max_slice_regression: 0.6,
            ..gate.clone()
        };
        assert!(slice_rule_holds(&figures, &lenient));
        // An unknown slice column is named.
        let bad = Gate {
            slices: vec![vec!["contry".into()]],
            ..Gate::default()
        };
        let e =
            judge_slices(&rows, &bad, "roc_auc", &candidate, None, &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("slice column `contry` is not in the data"),
            "{e}"
        );
    }
}
