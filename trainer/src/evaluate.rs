//! Figures of a model on rows whose targets are known: losses, metrics, the test split.

use std::collections::BTreeMap;

use kiln_core::bundle::{Manifest, Task, Weight};
use kiln_core::data::Table;
use kiln_core::metrics::{ClassificationMetrics, RegressionMetrics};

use crate::config::{DeviceChoice, TrainConfig, TrainError};
use crate::predict::{Predictor, probabilities};
use crate::targets::{label_text, target_hint, targets};

pub(crate) fn loss_value(task: Task, raw: &[f32], y: &[f32], outputs: usize) -> f64 {
    let n = y.len().max(1) as f64;
    match task {
        Task::BinaryClassification => {
            raw.iter()
                .zip(y)
                .map(|(z, y)| {
                    let z = f64::from(*z);
                    z.max(0.0) + (-z.abs()).exp().ln_1p() - z * f64::from(*y)
                })
                .sum::<f64>()
                / n
        }
        Task::MultiClassification => {
            y.iter()
                .enumerate()
                .map(|(i, c)| {
                    let row = &raw[i * outputs..(i + 1) * outputs];
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let lse = m + row
                        .iter()
                        .map(|v| (f64::from(*v) - m).exp())
                        .sum::<f64>()
                        .ln();
                    lse - f64::from(row[*c as usize])
                })
                .sum::<f64>()
                / n
        }
        Task::Regression => {
            raw.iter()
                .zip(y)
                .map(|(p, y)| f64::from(p - y).powi(2))
                .sum::<f64>()
                / n
        }
    }
}

/// Metrics from raw outputs (logits or values) for validation, or from probabilities for test.
pub(crate) fn metrics_of(
    task: Task,
    out: &[f32],
    y: &[f32],
    width: usize,
) -> BTreeMap<String, f64> {
    let scalars = match task {
        Task::Regression => {
            let t: Vec<f64> = y.iter().map(|v| f64::from(*v)).collect();
            let p: Vec<f64> = out.iter().map(|v| f64::from(*v)).collect();
            RegressionMetrics::compute(&t, &p).scalars()
        }
        _ => {
            let labels: Vec<u32> = y.iter().map(|v| *v as u32).collect();
            let (probs, classes) = probabilities(task, out, width);
            ClassificationMetrics::compute(&labels, &probs, classes).scalars()
        }
    };
    scalars
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The test split of `table` under `test_fraction`: its last rows, as training holds them out.
pub fn test_split(table: &Table, test_fraction: f64) -> Table {
    let n = table.num_rows();
    let n_test = ((n as f64 * test_fraction).round() as usize).min(n);
    table.slice(n - n_test, n)
}

/// The test fraction a bundle was trained with (training's default when it does not say).
pub fn test_fraction_of(manifest: &Manifest) -> f64 {
    manifest
        .hyperparameters
        .get("test_fraction")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| TrainConfig::default().test_fraction)
}

/// The metrics of a bundle on rows whose targets are known: the figures training reports for
/// its test split, for any rows (an evaluation set, or the rows another model is judged on).
pub fn evaluate(
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    table: &Table,
    choice: DeviceChoice,
) -> Result<BTreeMap<String, f64>, TrainError> {
    Ok(scored(manifest, weights, None, table, choice)?.metrics())
}

/// A bundle's outputs on rows whose targets are known, for metrics of all of them or of some.
pub(crate) struct Scored {
    pub(crate) task: Task,
    /// Probabilities (rows × width) or values.
    pub(crate) out: Vec<f32>,
    pub(crate) y: Vec<f32>,
    pub(crate) width: usize,
}

impl Scored {
    pub(crate) fn metrics(&self) -> BTreeMap<String, f64> {
        metrics_of(self.task, &self.out, &self.y, self.width)
    }

    /// The metrics of the rows at `rows`.
    pub(crate) fn metrics_of_rows(&self, rows: &[usize]) -> BTreeMap<String, f64> {
        let out: Vec<f32> = rows
            .iter()
            .flat_map(|r| &self.out[r * self.width..(r + 1) * self.width])
            .copied()
            .collect();
        let y: Vec<f32> = rows.iter().map(|r| self.y[*r]).collect();
        metrics_of(self.task, &out, &y, self.width)
    }
}

/// What scores rows for a bundle the trainer does not run itself (an imported ONNX graph, which
/// the serving runtime runs): probabilities (rows × width) or values, and the width. The binary
/// hands one in.
pub type Foreign<'a> = &'a (dyn Fn(&Table) -> Result<(Vec<f32>, usize), String> + Sync);

/// Scores a bundle on rows whose targets are known.
pub(crate) fn scored(
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    foreign: Option<Foreign>,
    table: &Table,
    choice: DeviceChoice,
) -> Result<Scored, TrainError> {
    let target = &manifest.target;
    let index = table
        .column_index(target)
        .ok_or_else(|| TrainError::TargetMissing {
            name: target.clone(),
            hint: target_hint(target, table),
        })?;
    if table.num_rows() == 0 {
        return Err(TrainError::Data("no rows to evaluate on".to_string()));
    }
    let target_type = table.column_type(index);
    let y = targets(table, index, 0)?
        .iter()
        .map(|v| match (manifest.task, v) {
            (Task::Regression, Err(x)) => Ok(*x as f32),
            (Task::Regression, Ok(s)) => Err(TrainError::Data(format!(
                "regression needs a numeric target, found {s:?}"
            ))),
            _ => {
                let text = label_text(v, target_type);
                manifest
                    .labels
                    .iter()
                    .position(|l| *l == text)
                    .map(|i| i as f32)
                    .ok_or_else(|| {
                        TrainError::Data(format!(
                            "class {text:?} of `{target}` is not one the model knows ({})",
                            manifest.labels.join(", ")
                        ))
                    })
            }
        })
        .collect::<Result<Vec<f32>, TrainError>>()?;
    let (out, width) = match foreign {
        Some(score) => score(table).map_err(TrainError::Data)?,
        None => {
            let predictor = Predictor::new(manifest, weights, choice)?;
            (predictor.predict(table)?, predictor.width())
        }
    };
    Ok(Scored {
        task: manifest.task,
        out,
        y,
        width,
    })
}
