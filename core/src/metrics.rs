//! Evaluation metrics shared by training, evaluation gates and monitoring: accuracy, precision,
//! recall, F1, ROC AUC, log loss and the confusion matrix for classification; RMSE, MAE and R² for
//! regression.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metrics of a classifier on a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    /// Binary: of the positive class (1). Multi-class: the macro average over classes.
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Binary: the usual AUC. Multi-class: the macro average of one-vs-rest AUCs.
    /// `None` when a class needed for it is absent from the labels.
    pub roc_auc: Option<f64>,
    /// Mean negative log-likelihood, probabilities clipped to [1e-15, 1 − 1e-15].
    pub log_loss: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Metrics of a regressor on a set of rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub rmse: f64,
    pub mae: f64,
    pub r2: f64,
}

impl ClassificationMetrics {
    /// Computes the metrics from true class ids and predicted class probabilities
    /// (`probs` is row-major, `labels.len() × classes`; for two classes, column 1 is the positive).
    ///
    /// ```
    /// use kiln_core::metrics::ClassificationMetrics;
    /// let m = ClassificationMetrics::compute(&[0, 1, 1, 0], &[0.9, 0.1, 0.2, 0.8, 0.4, 0.6, 0.3, 0.7], 2);
    /// assert_eq!(m.accuracy, 0.75);
    /// assert_eq!(m.roc_auc, Some(0.75));
    /// ```
    pub fn compute(labels: &[u32], probs: &[f32], classes: usize) -> ClassificationMetrics {
        assert_eq!(
            probs.len(),
            labels.len() * classes,
            "probabilities are rows × classes"
        );
        let n = labels.len();
        let mut confusion = vec![vec![0u64; classes]; classes];
        let mut nll = 0.0;
        for (row, &y) in labels.iter().enumerate() {
            let p = &probs[row * classes..(row + 1) * classes];
            let predicted = argmax(p);
            confusion[y as usize][predicted] += 1;
            let py = f64::from(p[y as usize]).clamp(1e-15, 1.0 - 1e-15);
            nll -= py.ln();
        }
        let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
        let prf = |c: usize| {
            let tp = confusion[c][c] as f64;
            let predicted: u64 = (0..classes).map(|t| confusion[t][c]).sum();
            let actual: u64 = confusion[c].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if actual > 0 { tp / actual as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            (precision, recall, f1)
        };
        let (precision, recall, f1, roc_auc) = if classes == 2 {
            let (p, r, f) = prf(1);
            let scores: Vec<f32> = (0..n).map(|i| probs[i * 2 + 1]).collect();
            let positive: Vec<bool> = labels.iter().map(|&y| y == 1).collect();
            (p, r, f, roc_auc(&scores, &positive))
        } else {
            let per: Vec<(f64, f64, f64)> = (0..classes).map(prf).collect();
            let k = classes.max(1) as f64;
            let aucs: Option<Vec<f64>> = (0..classes)
                .map(|c| {
                    let scores: Vec<f32> = (0..n).map(|i| probs[i * classes + c]).collect();
                    let positive: Vec<bool> = labels.iter().map(|&y| y as usize == c).collect();
                    roc_auc(&scores, &positive)
                })
                .collect();
            (
                per.iter().map(|x| x.0).sum::<f64>() / k,
                per.iter().map(|x| x.1).sum::<f64>() / k,
                per.iter().map(|x| x.2).sum::<f64>() / k,
                aucs.map(|a| a.iter().sum::<f64>() / k),
            )
        };
        ClassificationMetrics {
            accuracy: if n > 0 {
                correct as f64 / n as f64
            } else {
                0.0
            },
            precision,
            recall,
            f1,
            roc_auc,
            log_loss: if n > 0 { nll / n as f64 } else { 0.0 },
            confusion,
        }
    }

    /// The scalar metrics by name (`accuracy`, `precision`, …), for logging to a run.
    pub fn scalars(&self) -> BTreeMap<&'static str, f64> {
        let mut m = BTreeMap::new();
        m.insert("accuracy", self.accuracy);
        m.insert("precision", self.precision);
        m.insert("recall", self.recall);
        m.insert("f1", self.f1);
        m.insert("log_loss", self.log_loss);
        if let Some(auc) = self.roc_auc {
            m.insert("roc_auc", auc);
        }
        m
    }
}

impl RegressionMetrics {
    /// Computes RMSE, MAE and R² (1 − SSE/SST; 0 when the targets are constant).
    pub fn compute(targets: &[f64], predictions: &[f64]) -> RegressionMetrics {
        assert_eq!(
            targets.len(),
            predictions.len(),
            "one prediction per target"
        );
        let n = targets.len().max(1) as f64;
        let mean = targets.iter().sum::<f64>() / n;
        let mut sse = 0.0;
        let mut sae = 0.0;
        let mut sst = 0.0;
        for (y, p) in targets.iter().zip(predictions) {
            sse += (y - p) * (y - p);
            sae += (y - p).abs();
            sst += (y - mean) * (y - mean);
        }
        RegressionMetrics {
            rmse: (sse / n).sqrt(),
            mae: sae / n,
            r2: if sst > 0.0 { 1.0 - sse / sst } else { 0.0 },
        }
    }

    /// The metrics by name, for logging to a run.
    pub fn scalars(&self) -> BTreeMap<&'static str, f64> {
        BTreeMap::from([("rmse", self.rmse), ("mae", self.mae), ("r2", self.r2)])
    }
}

/// The index of the largest value (the first of equal ones): the predicted class of a row of
/// scores.
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// The area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (the Mann–Whitney U statistic). `None` without both classes.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|p| **p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            if positive[order[k]] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_pairwise_counting() {
        // scikit-learn: roc_auc_score([0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.4]) == 0.75
        let auc = roc_auc(
            &[0.1, 0.4, 0.35, 0.8, 0.4],
            &[false, false, true, true, true],
        )
        .unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn multiclass_macro_and_confusion() {
        let probs = [0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.2, 0.7, 0.6, 0.3, 0.1];
        let m = ClassificationMetrics::compute(&[0, 1, 2, 2], &probs, 3);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![0, 1, 0], vec![1, 0, 1]]
        );
        assert_eq!(m.accuracy, 0.75);
        // precision: c0 1/2, c1 1, c2 1 → 0.8333; recall: 1, 1, 0.5 → 0.8333
        assert!((m.precision - 2.5 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.5 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn regression() {
        let m = RegressionMetrics::compute(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
        assert!((m.rmse - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.mae - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.r2 - 0.5).abs() < 1e-12);
    }
}
