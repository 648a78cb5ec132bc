//! What a training is configured by, what it reports, and what goes wrong.

use std::collections::BTreeMap;

use kiln_core::bundle::{Activation, Manifest, Task, Weight};
use kiln_core::transform::TransformSpec;
use serde::{Deserialize, Serialize};

/// Which model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Logistic regression (classification) or linear regression: no hidden layers.
    Logistic,
    Mlp,
    /// Wide and deep: a linear part plus an MLP over the features and embeddings of the
    /// transform's id columns (vocabulary or hashed ids).
    WideDeep,
    /// Gradient-boosted trees over the transform's features, with categories split natively.
    Gbdt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

/// How the learning rate changes over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Cosine decay from `lr` to 0 over the epochs.
    Cosine,
}

/// Where training runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Gpu,
}

/// Everything a training run is configured by (the keys of `--config train.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelKind,
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub dropout: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    /// The networks' learning rate; by default 0.01, or 0.001 when the first layer reads more
    /// than 1,000 one-hot columns (each of them is rare, and Adam's full-size steps on rare
    /// weights fit their noise).
    pub lr: Option<f64>,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: Option<usize>,
    pub seed: u64,
    /// The share of rows, at the end, held out as the test set.
    pub test_fraction: f64,
    /// The share of the remaining rows, at their end, used for validation.
    pub validation_fraction: f64,
    /// The task; inferred from the target column when absent.
    pub task: Option<Task>,
    /// The feature transform; by default numbers are imputed with the median and standardized,
    /// categories one-hot encoded (top 100 values).
    pub transform: Option<TransformSpec>,
    pub device: DeviceChoice,
    /// Gradient-boosted trees: boosting rounds (one tree per class in multi-class).
    pub trees: usize,
    /// Gradient-boosted trees: the most leaves a tree grows (best gain first).
    pub leaves: usize,
    /// Gradient-boosted trees: the deepest a leaf may be (none: only `leaves` bounds a tree).
    pub max_depth: Option<usize>,
    /// Gradient-boosted trees: each leaf's value is scaled by this (the trees' learning rate;
    /// `lr` is the networks').
    pub shrinkage: f64,
    /// Gradient-boosted trees: the least hessian (for squared error, rows) a leaf may hold.
    pub min_child_weight: f64,
    /// Gradient-boosted trees: the fewest training rows a leaf may hold.
    pub min_child_rows: usize,
    /// Gradient-boosted trees: L2 penalty on leaf values.
    pub l2: f64,
    /// Gradient-boosted trees: the share of rows each round samples.
    pub subsample: f64,
    /// Gradient-boosted trees: the share of features each round may split on.
    pub colsample: f64,
    /// Gradient-boosted trees: bins per numeric feature (2 to 255; one more holds missing values).
    pub max_bins: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelKind::Logistic,
            hidden: vec![64, 32],
            activation: Activation::Relu,
            dropout: 0.0,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            lr: None,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            batch_size: 64,
            epochs: 30,
            patience: Some(5),
            seed: 42,
            test_fraction: 0.2,
            validation_fraction: 0.1,
            task: None,
            transform: None,
            device: DeviceChoice::Cpu,
            trees: 100,
            leaves: 31,
            max_depth: None,
            shrinkage: 0.1,
            min_child_weight: 1e-3,
            min_child_rows: 20,
            l2: 0.0,
            subsample: 1.0,
            colsample: 1.0,
            max_bins: 255,
        }
    }
}

/// What went wrong training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("target column `{name}` is not in the data{hint}")]
    TargetMissing { name: String, hint: String },
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; lower the learning rate (now {lr})"
    )]
    Diverged {
        epoch: usize,
        batch: usize,
        loss: f32,
        lr: f64,
    },
    #[error("{0}")]
    Device(String),
    #[error("training was cancelled")]
    Cancelled,
    #[error(transparent)]
    Transform(#[from] kiln_core::transform::TransformError),
}

/// Receives per-epoch metrics (the binary logs them to the run).
pub trait RunLogger {
    fn log(&self, step: i64, metrics: &[(&str, f64)]);
}

/// A logger that drops everything.
pub struct NoLogger;

impl RunLogger for NoLogger {
    fn log(&self, _step: i64, _metrics: &[(&str, f64)]) {}
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_metrics: BTreeMap<String, f64>,
}

impl EpochReport {
    /// Logs the figures at the report's step: the losses and each validation metric.
    pub(crate) fn log(&self, logger: &dyn RunLogger) {
        let mut logged: Vec<(String, f64)> = vec![
            ("train_loss".into(), self.train_loss),
            ("validation_loss".into(), self.validation_loss),
        ];
        logged.extend(
            self.validation_metrics
                .iter()
                .map(|(k, v)| (format!("validation_{k}"), *v)),
        );
        let refs: Vec<(&str, f64)> = logged.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        logger.log(self.epoch as i64, &refs);
    }
}

/// A trained model: its bundle, and how it got there.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub manifest: Manifest,
    pub weights: BTreeMap<String, Weight>,
    /// Metrics on the test split, computed from the saved weights.
    pub test_metrics: BTreeMap<String, f64>,
    /// The same metrics of a model that learned nothing (the training split's class shares, or
    /// its mean, for every row), to compare with.
    pub baseline_metrics: BTreeMap<String, f64>,
    pub history: Vec<EpochReport>,
    /// Each raw input column's share of the total split gain (gradient-boosted trees only),
    /// largest first.
    pub feature_importance: Vec<(String, f64)>,
    /// The trees' total split gain per feature (dense features, then id columns), from which a
    /// resumed boosting goes on counting.
    pub feature_gain: Vec<f64>,
    /// The trainer's own predictions on the test split (probabilities or values, row-major).
    pub test_predictions: Vec<f32>,
    pub rows: Splits,
}

/// How many rows each split has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Splits {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}
