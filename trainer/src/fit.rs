//! Training: the default transform, the target's values and task, the splits, and the
//! epoch loop (`fit_network`) with early stopping and the loss of each task.

use std::collections::BTreeMap;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use kiln_core::bundle::{
    Architecture, BUNDLE_FORMAT_VERSION, BUNDLE_MAGIC, BundleLineage, EmbeddingShape, Manifest,
    Task, Weight,
};
use kiln_core::data::{ColumnType, Table};
use kiln_core::progress::{Progress, Unit};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::{Encode, FeatureSpec, FittedTransform, Impute, Output, TransformSpec};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::config::{
    EpochReport, ModelKind, OptimizerKind, RunLogger, Schedule, Splits, TrainConfig, TrainError,
    TrainOutcome,
};
use crate::device::device;
use crate::evaluate::{loss_value, metrics_of};
use crate::model::{self, Net};
use crate::predict::{Dense, Predictor, SparseView, forward_rows, sparse_features, sparse_net};
use crate::targets::{infer_task, label_text, target_hint, targets};

/// The default transform: numbers (and booleans) imputed with the median and standardized,
/// categories one-hot encoded over their 100 most frequent values.
pub fn default_spec(table: &Table, target: &str) -> TransformSpec {
    let mut numeric = Vec::new();
    let mut categorical = Vec::new();
    for i in 0..table.num_columns() {
        let name = table.column_name(i).to_string();
        if name == target {
            continue;
        }
        match table.column_type(i) {
            ColumnType::Categorical => categorical.push(name),
            _ => numeric.push(name),
        }
    }
    let entry = |columns: Vec<String>, encode: Encode| FeatureSpec {
        columns,
        impute: if encode == Encode::Standardize {
            Some(Impute::Median)
        } else {
            None
        },
        fill: None,
        clip: None,
        log1p: false,
        encode,
        boundaries: None,
        quantiles: None,
        top_k: if encode == Encode::Vocabulary {
            Some(100)
        } else {
            None
        },
        min_frequency: None,
        oov_buckets: None,
        buckets: None,
        output: None,
    };
    let mut features = Vec::new();
    if !numeric.is_empty() {
        features.push(entry(numeric, Encode::Standardize));
    }
    if !categorical.is_empty() {
        features.push(entry(categorical, Encode::Vocabulary));
    }
    TransformSpec { features }
}

/// The default transform of gradient-boosted trees: numbers (and booleans) as they are, a missing
/// one kept for the trees to route; categories as ids of their 255 most frequent values (and
/// one id for the rest), which the trees split natively.
pub fn default_tree_spec(table: &Table, target: &str) -> TransformSpec {
    let mut spec = default_spec(table, target);
    for f in &mut spec.features {
        if f.encode == Encode::Standardize {
            f.encode = Encode::PassThrough;
            f.impute = Some(Impute::Keep);
        } else {
            f.top_k = Some(crate::gbdt::MAX_CATEGORIES - 1);
            f.output = Some(Output::Id);
        }
    }
    spec
}

/// The networks' learning rate when none is given, and when the first layer reads more than
/// `WIDE_ONE_HOT` one-hot columns.
pub const DEFAULT_LR: f64 = 0.01;
pub const SPARSE_LR: f64 = 0.001;
const WIDE_ONE_HOT: usize = 1000;

/// Hyperparameters that only networks read, and those that only trees read.
const NETWORK_ONLY: &[&str] = &[
    "hidden",
    "activation",
    "dropout",
    "optimizer",
    "momentum",
    "lr",
    "schedule",
    "weight_decay",
    "batch_size",
    "epochs",
];
const TREES_ONLY: &[&str] = &[
    "trees",
    "leaves",
    "max_depth",
    "shrinkage",
    "min_child_weight",
    "min_child_rows",
    "l2",
    "subsample",
    "colsample",
    "max_bins",
];

/// The options a configuration trains with, by name: those its kind of model reads (a network's
/// or the trees'), without the transform.
pub fn hyperparameters(config: &TrainConfig) -> BTreeMap<String, serde_json::Value> {
    let other = if config.model == ModelKind::Gbdt {
        NETWORK_ONLY
    } else {
        TREES_ONLY
    };
    match serde_json::to_value(TrainConfig {
        transform: None,
        ..config.clone()
    }) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter(|(k, _)| !other.contains(&k.as_str()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Trains a model on `table` to predict `target`.
pub fn train(
    table: &Table,
    target: &str,
    config: &TrainConfig,
    progress: &dyn Progress,
    logger: &dyn RunLogger,
) -> Result<TrainOutcome, TrainError> {
    train_from(table, target, config, None, progress, logger)
}

/// [`train`], going on from an earlier training of the same model on the same data (`from`, a
/// checkpoint: its best weights or kept trees) up to `config.epochs` epochs or `config.trees`
/// rounds in all; only the new epochs or rounds are logged.
pub fn train_from(
    table: &Table,
    target: &str,
    config: &TrainConfig,
    from: Option<&TrainOutcome>,
    progress: &dyn Progress,
    logger: &dyn RunLogger,
) -> Result<TrainOutcome, TrainError> {
    kiln_core::threads::debug_assert_may_block("training");
    let target_index = table
        .column_index(target)
        .ok_or_else(|| TrainError::TargetMissing {
            name: target.to_string(),
            hint: target_hint(target, table),
        })?;
    let trees = config.model == ModelKind::Gbdt;
    if !trees && (config.batch_size == 0 || config.epochs == 0) {
        return Err(TrainError::Config(
            "--batch-size and --epochs must be at least 1".to_string(),
        ));
    }
    if let Some(lr) = config.lr
        && !(lr > 0.0 && lr.is_finite())
    {
        return Err(TrainError::Config(format!(
            "--lr {lr} must be a positive number"
        )));
    }
    let n = table.num_rows();
    let n_test = (n as f64 * config.test_fraction).round() as usize;
    let n_trainval = n - n_test.min(n);
    let n_val = (n_trainval as f64 * config.validation_fraction).round() as usize;
    let n_train = n_trainval - n_val.min(n_trainval);
    if n_train == 0 {
        return Err(TrainError::Data(format!(
            "the training split is empty ({n} rows, {n_test} for test, {n_val} for validation); \
             use more rows or smaller --test-fraction"
        )));
    }
    let splits = Splits {
        train: n_train,
        validation: n_val,
        test: n_test,
    };
    let train_t = table.slice(0, n_train);
    let val_t = table.slice(n_train, n_trainval);
    let test_t = table.slice(n_trainval, n);

    // Labels and task.
    let raw_train = targets(&train_t, target_index, 0)?;
    let target_type = table.column_type(target_index);
    let task = match config.task {
        Some(t) => t,
        None => infer_task(target_type, &raw_train),
    };
    let mut labels: Vec<String> = Vec::new();
    if task != Task::Regression {
        let mut set: Vec<String> = raw_train
            .iter()
            .map(|v| label_text(v, target_type))
            .collect();
        set.sort();
        set.dedup();
        if set.len() < 2 {
            return Err(TrainError::Data(format!(
                "the target `{target}` has one class only ({}) in the training split; a classifier needs two or more",
                set.first().map_or("none".to_string(), |s| format!("{s:?}"))
            )));
        }
        labels = set;
        if task == Task::BinaryClassification && labels.len() > 2 {
            return Err(TrainError::Config(format!(
                "binary classification, but `{target}` has {} classes",
                labels.len()
            )));
        }
    }
    let task = if task == Task::MultiClassification && labels.len() == 2 {
        Task::BinaryClassification
    } else {
        task
    };
    let encode_targets = |raw: &[Result<String, f64>]| -> Result<Vec<f32>, TrainError> {
        raw.iter()
            .map(|v| {
                if task == Task::Regression {
                    match v {
                        Err(x) => Ok(*x as f32),
                        Ok(s) => Err(TrainError::Data(format!(
                            "regression needs a numeric target, found {s:?}"
                        ))),
                    }
                } else {
                    let text = label_text(v, target_type);
                    labels
                        .binary_search(&text)
                        .map(|i| i as f32)
                        .map_err(|_| {
                            TrainError::Data(format!(
                                "class {text:?} of `{target}` appears after the training split but not in it"
                            ))
                        })
                }
            })
            .collect()
    };
    let y_train = encode_targets(&raw_train)?;
    let y_val = encode_targets(&targets(&val_t, target_index, n_train)?)?;
    let y_test = encode_targets(&targets(&test_t, target_index, n_trainval)?)?;

    // Features: fitted on the training split only.
    let spec = match &config.transform {
        Some(s) => s.clone(),
        None if trees => default_tree_spec(table, target),
        None => default_spec(table, target),
    };
    if spec
        .features
        .iter()
        .any(|f| f.columns.iter().any(|c| c == target))
    {
        return Err(TrainError::Config(format!(
            "the transform reads the target `{target}`; remove it from the spec"
        )));
    }
    let fitted = spec.fit(&train_t)?;
    if let Some(from) = from
        && (from.manifest.transform.digest() != fitted.digest()
            || from.manifest.task != task
            || matches!(from.manifest.architecture, Architecture::Trees { .. }) != trees)
    {
        return Err(TrainError::Config(
            "the checkpoint was trained on other data, features or model; train afresh".to_string(),
        ));
    }
    if fitted.id_width() > 0 && !matches!(config.model, ModelKind::WideDeep | ModelKind::Gbdt) {
        return Err(TrainError::Config(format!(
            "the transform has id outputs ({}) that feed embeddings or tree splits; train with \
             --model wide-deep or gbdt, or use output = \"one_hot\"",
            fitted.id_names().join(", ")
        )));
    }
    if fitted.keeps_missing() && !trees {
        return Err(TrainError::Config(
            "the transform keeps missing numbers (impute = \"keep\"), which only --model gbdt \
             reads; choose an imputation for a network"
                .to_string(),
        ));
    }
    // Logistic regression and MLPs read one-hot features as index lookups: rows cost their
    // non-zeros, and the weights are the same as on dense rows.
    let sparse = (!trees).then(|| fitted.sparse_view()).flatten();
    // The learning rate, when not given: lower for wide one-hot inputs.
    let one_hot = sparse
        .as_ref()
        .map_or(0, |(view, _, _)| fitted.dense_width() - view.dense_width());
    let config = &TrainConfig {
        lr: Some(config.lr.unwrap_or(if one_hot > WIDE_ONE_HOT {
            SPARSE_LR
        } else {
            DEFAULT_LR
        })),
        ..config.clone()
    };
    let (f_train, f_val) = match &sparse {
        Some(view) => (
            sparse_features(view, &train_t)?,
            sparse_features(view, &val_t)?,
        ),
        None => {
            let (t, v) = (fitted.apply_table(&train_t)?, fitted.apply_table(&val_t)?);
            (
                (t.dense, t.ids, t.dense_width, t.id_width),
                (v.dense, v.ids, v.dense_width, v.id_width),
            )
        }
    };
    let d = fitted.dense_width();
    if d == 0 && !(trees && fitted.id_width() > 0) {
        return Err(TrainError::Config(
            "the transform produces no features".to_string(),
        ));
    }
    let outputs = match task {
        Task::MultiClassification => labels.len(),
        _ => 1,
    };
    let hidden: Vec<usize> = if config.model == ModelKind::Logistic {
        vec![]
    } else {
        config.hidden.clone()
    };
    let train_rows = Dense {
        x: &f_train.0,
        ids: &f_train.1,
        y: &y_train,
        d: f_train.2,
        k: f_train.3,
    };
    let val_rows = Dense {
        x: &f_val.0,
        ids: &f_val.1,
        y: &y_val,
        d: f_val.2,
        k: f_val.3,
    };
    let mut feature_importance = Vec::new();
    let mut feature_gain = Vec::new();
    let (architecture, weights, history) = if trees {
        let start_ensemble = match from {
            Some(f) => Some(
                kiln_core::trees::Ensemble::from_weights(&f.weights, d, fitted.id_width(), outputs)
                    .map_err(|m| TrainError::Config(format!("resuming from a checkpoint: {m}")))?,
            ),
            None => None,
        };
        let start = match (from, &start_ensemble) {
            (Some(f), Some(ensemble)) => Some(crate::gbdt::Start {
                ensemble,
                history: &f.history,
                gain: &f.feature_gain,
            }),
            _ => None,
        };
        let boosted = crate::gbdt::boost(
            &train_rows,
            &val_rows,
            task,
            outputs,
            fitted.id_cardinalities(),
            config,
            start,
            progress,
            logger,
        )?;
        feature_importance = importance(&fitted, &boosted.gain);
        feature_gain = boosted.gain.clone();
        (
            Architecture::Trees {
                inputs: d,
                ids: fitted.id_width(),
                outputs,
                trees: boosted.ensemble.roots.len(),
            },
            boosted.ensemble.to_weights(),
            boosted.history,
        )
    } else {
        let architecture = network_architecture(config, &fitted, hidden, outputs);
        if from.is_some_and(|f| f.manifest.architecture != architecture) {
            return Err(TrainError::Config(
                "the checkpoint is another network; train afresh".to_string(),
            ));
        }
        let (weights, history) = fit_network_from(
            &train_rows,
            &val_rows,
            &architecture,
            task,
            config,
            sparse.as_ref(),
            from.map(|f| (&f.weights, f.history.as_slice())),
            progress,
            logger,
        )?;
        (architecture, weights, history)
    };

    let hyperparameters = hyperparameters(config);
    let mut manifest = Manifest {
        magic: BUNDLE_MAGIC.to_string(),
        format_version: BUNDLE_FORMAT_VERSION,
        task,
        target: target.to_string(),
        labels,
        signature: fitted.inputs().to_vec(),
        transform: fitted.clone(),
        architecture,
        hyperparameters,
        training_statistics: DatasetStatistics::compute(&train_t),
        metrics: BTreeMap::new(),
        feature_importance: feature_importance.iter().cloned().collect(),
        lineage: BundleLineage {
            dataset_fingerprint: Some(table.fingerprint().to_string()),
            transform_digest: Some(fitted.digest()),
            ..Default::default()
        },
    };

    // Test metrics from the saved weights, through the same path a reloaded bundle takes.
    let predictor = Predictor::new(&manifest, &weights, config.device)?;
    let test_predictions = predictor.predict(&test_t)?;
    let test_metrics = if n_test > 0 {
        metrics_of(task, &test_predictions, &y_test, predictor.width())
    } else {
        BTreeMap::new()
    };
    // What a model that learned nothing scores on the same rows: the training split's class
    // shares (or its mean) for every row.
    let baseline_metrics = if n_test > 0 {
        let (constant, width) = constant_predictions(task, &y_train, manifest.labels.len(), n_test);
        metrics_of(task, &constant, &y_test, width)
    } else {
        BTreeMap::new()
    };
    let refs: Vec<(String, f64)> = test_metrics
        .iter()
        .map(|(k, v)| (format!("test_{k}"), *v))
        .collect();
    let refs: Vec<(&str, f64)> = refs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    logger.log(history.len() as i64, &refs);
    manifest.metrics = test_metrics
        .iter()
        .map(|(k, v)| (format!("test_{k}"), *v))
        .collect();
    Ok(TrainOutcome {
        manifest,
        weights,
        test_metrics,
        baseline_metrics,
        history,
        feature_importance,
        feature_gain,
        test_predictions,
        rows: splits,
    })
}

/// The network a configuration asks for, over the transform's features.
fn network_architecture(
    config: &TrainConfig,
    fitted: &FittedTransform,
    hidden: Vec<usize>,
    outputs: usize,
) -> Architecture {
    let inputs = fitted.dense_width();
    match config.model {
        ModelKind::WideDeep => Architecture::WideDeep {
            inputs,
            embeddings: fitted
                .id_names()
                .iter()
                .zip(fitted.id_cardinalities())
                .map(|(column, ids)| EmbeddingShape {
                    column: column.clone(),
                    ids: *ids as usize,
                    // A common rule of thumb: about six times the fourth root of the vocabulary.
                    width: ((6.0 * f64::from(*ids).powf(0.25)).ceil() as usize).clamp(2, 16),
                })
                .collect(),
            hidden,
            activation: config.activation,
            outputs,
        },
        _ => Architecture::Mlp {
            inputs,
            hidden,
            activation: config.activation,
            outputs,
        },
    }
}

/// Each raw input column's share of the trees' total gain (its dense features and id column
/// together), largest first.
fn importance(fitted: &FittedTransform, gain: &[f64]) -> Vec<(String, f64)> {
    let mut by_column: BTreeMap<&str, f64> = BTreeMap::new();
    let sources = fitted
        .dense_columns()
        .into_iter()
        .chain(fitted.id_names().iter().map(String::as_str));
    for (column, g) in sources.zip(gain) {
        *by_column.entry(column).or_default() += g;
    }
    let total: f64 = by_column.values().sum();
    let mut shares: Vec<(String, f64)> = by_column
        .into_iter()
        .map(|(c, g)| (c.to_string(), if total > 0.0 { g / total } else { 0.0 }))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    shares
}

/// The training loop alone: trains a network of `architecture` on features and returns the weights
/// of the epoch with the best validation loss, and every epoch's figures.
pub fn fit_network(
    train: &Dense<'_>,
    validation: &Dense<'_>,
    architecture: &Architecture,
    task: Task,
    config: &TrainConfig,
    progress: &dyn Progress,
    logger: &dyn RunLogger,
) -> Result<(BTreeMap<String, Weight>, Vec<EpochReport>), TrainError> {
    fit_network_from(
        train,
        validation,
        architecture,
        task,
        config,
        None,
        None,
        progress,
        logger,
    )
}

/// [`fit_network`], optionally on sparse rows (`sparse`: the positions of the rows' dense values
/// among the first layer's inputs, their ids being the active one-hot positions) and going on
/// from a checkpoint: the weights an earlier fit returned (the best epoch's, in the target's
/// units) and its epochs, which count toward `config.epochs`. The optimizer starts afresh.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_network_from(
    train: &Dense<'_>,
    validation: &Dense<'_>,
    architecture: &Architecture,
    task: Task,
    config: &TrainConfig,
    sparse: Option<&SparseView>,
    start: Option<(&BTreeMap<String, Weight>, &[EpochReport])>,
    progress: &dyn Progress,
    logger: &dyn RunLogger,
) -> Result<(BTreeMap<String, Weight>, Vec<EpochReport>), TrainError> {
    let (x_train, d, k) = (train.x, train.d, train.k);
    let y_val = validation.y;
    // Regression learns the standardized target, so that default settings reach a target of
    // any scale and offset (the output starts at its mean); losses, metrics and the returned
    // weights are in the target's own units.
    let scale = (task == Task::Regression).then(|| standardizing(train.y));
    let standardized: Vec<f32>;
    let y_train: &[f32] = match scale {
        Some((mean, sd)) => {
            standardized = train.y.iter().map(|y| (y - mean) / sd).collect();
            &standardized
        }
        None => train.y,
    };
    let n_train = y_train.len();
    let n_val = y_val.len();
    if matches!(architecture, Architecture::Trees { .. }) {
        return Err(TrainError::Config(
            "a tree ensemble is boosted, not fitted by epochs".to_string(),
        ));
    }
    let outputs = architecture.outputs();
    let base_lr = config.lr.unwrap_or(DEFAULT_LR);
    let plain = device(config.device)?;
    plain.seed(config.seed);
    let ad = plain.clone().autodiff();
    let mut net = match start {
        Some((weights, _)) => Net::from_weights(
            architecture,
            &in_standard_units(weights.clone(), architecture, scale),
            &ad,
        )
        .map_err(|m| TrainError::Config(format!("resuming from a checkpoint: {m}")))?
        .with_dropout(config.dropout),
        None => Net::new(architecture, config.dropout, &ad)
            .starting_at(&starting_bias(task, y_train, outputs), &ad),
    };
    if let Some(view) = sparse {
        net = sparse_net(net, view);
    }
    let mut optim = match config.optimizer {
        OptimizerKind::Adam => {
            let mut c = AdamConfig::new();
            if config.weight_decay > 0.0 {
                c = c.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
                    config.weight_decay as f32,
                )));
            }
            c.init()
        }
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init(),
        OptimizerKind::Sgd => {
            let mut c = SgdConfig::new().with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(config.momentum)
                    .with_dampening(0.0),
            ));
            if config.weight_decay > 0.0 {
                c = c.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(
                    config.weight_decay as f32,
                )));
            }
            c.init()
        }
    };

    let mut history: Vec<EpochReport> = start.map_or_else(Vec::new, |(_, h)| h.to_vec());
    let first = history.len();
    // A resumed fit shuffles as the epochs it goes on with would have.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(first as u64));
    let mut order: Vec<usize> = (0..n_train).collect();
    // The checkpoint's weights are its best epoch's.
    let mut best: Option<(f64, BTreeMap<String, Weight>)> = start.and_then(|(w, h)| {
        h.iter()
            .map(|e| e.validation_loss)
            .min_by(f64::total_cmp)
            .map(|l| (l, w.clone()))
    });
    let mut since_best = history
        .iter()
        .rev()
        .position(|e| best.as_ref().is_some_and(|(b, _)| e.validation_loss == *b))
        .unwrap_or(0);
    let mut xb: Vec<f32> = Vec::with_capacity(config.batch_size * d);
    let mut yb: Vec<f32> = Vec::with_capacity(config.batch_size);
    let mut ib: Vec<i64> = Vec::with_capacity(config.batch_size * k);
    let mut last_loss: Option<f64> = history.last().map(|e| e.validation_loss);
    for epoch in first..config.epochs {
        // One bar per epoch: its number, the previous epoch's validation loss, rows and rows/s.
        let phase = match last_loss {
            Some(l) => format!("epoch {}/{} (loss {l:.4})", epoch + 1, config.epochs),
            None => format!("epoch {}/{}", epoch + 1, config.epochs),
        };
        progress.start(&phase, Some(n_train as u64), Unit::Rows);
        let lr = match config.schedule {
            Schedule::Constant => base_lr,
            Schedule::Cosine => {
                base_lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * epoch as f64 / config.epochs as f64).cos())
            }
        };
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        for (b, chunk) in order.chunks(config.batch_size).enumerate() {
            xb.clear();
            yb.clear();
            ib.clear();
            for &r in chunk {
                xb.extend_from_slice(&x_train[r * d..(r + 1) * d]);
                ib.extend(train.ids[r * k..(r + 1) * k].iter().map(|v| i64::from(*v)));
                yb.push(y_train[r]);
            }
            let rows = chunk.len();
            let x = Tensor::<2>::from_data(TensorData::new(xb.clone(), [rows, d]), &ad);
            let ids = (k > 0)
                .then(|| Tensor::<2, Int>::from_data(TensorData::new(ib.clone(), [rows, k]), &ad));
            let y = Tensor::<1>::from_data(TensorData::new(yb.clone(), [rows]), &ad);
            let loss = loss_of(task, net.forward(x, ids), y, outputs);
            let value = model::to_vec(loss.clone().into_data())
                .first()
                .copied()
                .unwrap_or(f32::NAN);
            if !value.is_finite() {
                return Err(TrainError::Diverged {
                    epoch: epoch + 1,
                    batch: b + 1,
                    loss: value,
                    lr,
                });
            }
            loss_sum += f64::from(value) * rows as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            progress.set(((b + 1) * config.batch_size).min(n_train) as u64);
            if progress.cancelled() {
                return Err(TrainError::Cancelled);
            }
        }
        progress.finish();
        let train_loss =
            loss_sum / n_train as f64 * scale.map_or(1.0, |(_, sd)| f64::from(sd).powi(2));

        // Validation on the weights as they are now.
        let eval = net.valid();
        let (validation_loss, validation_metrics) = if n_val > 0 {
            let mut out = forward_rows(&eval, validation, &plain);
            if let Some((mean, sd)) = scale {
                out.iter_mut().for_each(|o| *o = *o * sd + mean);
            }
            let loss = loss_value(task, &out, y_val, outputs);
            (loss, metrics_of(task, &out, y_val, outputs))
        } else {
            (train_loss, BTreeMap::new())
        };
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss,
            validation_loss,
            validation_metrics,
        };
        report.log(logger);
        history.push(report);
        last_loss = Some(validation_loss);

        if best.as_ref().is_none_or(|(b, _)| validation_loss < *b) {
            best = Some((
                validation_loss,
                in_target_units(eval.weights(), architecture, scale),
            ));
            since_best = 0;
        } else {
            since_best += 1;
            if config.patience.is_some_and(|p| p > 0 && since_best >= p) {
                break;
            }
        }
    }
    let weights = match best {
        Some((_, w)) => w,
        None => in_target_units(net.valid().weights(), architecture, scale),
    };
    Ok((weights, history))
}

/// The same prediction for each of `rows` rows, from the training targets alone: each class's
/// share as its probability, or the mean; with its width.
fn constant_predictions(task: Task, y: &[f32], classes: usize, rows: usize) -> (Vec<f32>, usize) {
    let n = y.len().max(1) as f32;
    match task {
        Task::Regression => (vec![y.iter().sum::<f32>() / n; rows], 1),
        _ => {
            let k = classes.max(2);
            let mut shares = vec![0.0f32; k];
            for v in y {
                if let Some(s) = shares.get_mut(*v as usize) {
                    *s += 1.0 / n;
                }
            }
            (shares.repeat(rows), k)
        }
    }
}

/// The output bias an untrained network starts with: the log prior of each class, the
/// log-odds of class 1, or 0 (the mean of a standardized target).
fn starting_bias(task: Task, y: &[f32], outputs: usize) -> Vec<f32> {
    let n = y.len().max(1) as f64;
    let share = |c: usize| {
        (y.iter().filter(|v| **v as usize == c).count() as f64 / n).clamp(1e-6, 1.0 - 1e-6)
    };
    match task {
        Task::Regression => vec![0.0; outputs],
        Task::BinaryClassification => {
            let p = share(1);
            vec![(p / (1.0 - p)).ln() as f32]
        }
        Task::MultiClassification => (0..outputs).map(|c| share(c).ln() as f32).collect(),
    }
}

/// The mean and standard deviation (1 when the target does not vary) of a regression target.
fn standardizing(y: &[f32]) -> (f32, f32) {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let var = y
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt();
    (mean as f32, if sd > 1e-12 { sd as f32 } else { 1.0 })
}

/// Weights that answer in the target's units: the output layers (the last dense layer, and the
/// wide part, which add up) scaled by the standard deviation, the mean added to the last bias.
fn in_target_units(
    weights: BTreeMap<String, Weight>,
    architecture: &Architecture,
    scale: Option<(f32, f32)>,
) -> BTreeMap<String, Weight> {
    rescale_outputs(
        weights,
        architecture,
        scale,
        |v, sd| v * sd,
        |b, mean, sd| b * sd + mean,
    )
}

/// The inverse of [`in_target_units`]: a checkpoint's weights back on the standardized target.
fn in_standard_units(
    weights: BTreeMap<String, Weight>,
    architecture: &Architecture,
    scale: Option<(f32, f32)>,
) -> BTreeMap<String, Weight> {
    rescale_outputs(
        weights,
        architecture,
        scale,
        |v, sd| v / sd,
        |b, mean, sd| (b - mean) / sd,
    )
}

/// Maps the output layers' weights (`weight`) and the last bias (`bias`) by a regression
/// target's mean and standard deviation.
fn rescale_outputs(
    mut weights: BTreeMap<String, Weight>,
    architecture: &Architecture,
    scale: Option<(f32, f32)>,
    weight: impl Fn(f32, f32) -> f32,
    bias: impl Fn(f32, f32, f32) -> f32,
) -> BTreeMap<String, Weight> {
    let Some((mean, sd)) = scale else {
        return weights;
    };
    let hidden = match architecture {
        Architecture::Mlp { hidden, .. } | Architecture::WideDeep { hidden, .. } => hidden.len(),
        Architecture::Trees { .. } | Architecture::Onnx { .. } => return weights,
    };
    let last = format!("dense.{hidden}");
    for name in [
        format!("{last}.weight"),
        "wide.weight".into(),
        "wide.bias".into(),
    ] {
        if let Some(w) = weights.get_mut(&name) {
            w.data.iter_mut().for_each(|v| *v = weight(*v, sd));
        }
    }
    if let Some(b) = weights.get_mut(&format!("{last}.bias")) {
        b.data.iter_mut().for_each(|v| *v = bias(*v, mean, sd));
    }
    weights
}

/// The training loss of a batch: binary cross-entropy on logits, cross-entropy, or squared error.
pub(crate) fn loss_of(task: Task, out: Tensor<2>, y: Tensor<1>, outputs: usize) -> Tensor<1> {
    let rows = out.dims()[0];
    match task {
        Task::BinaryClassification => {
            let z = out.reshape([rows]);
            // softplus(z) − z·y, written to stay finite for large |z|.
            let softplus = z.clone().clamp_min(0.0) + z.clone().abs().neg().exp().log1p();
            (softplus - z * y).mean()
        }
        Task::MultiClassification => {
            let logp = log_softmax(out, 1);
            let onehot = y.int().one_hot(outputs).float();
            (logp * onehot).sum_dim(1).mean().neg()
        }
        Task::Regression => {
            let diff = out.reshape([rows]) - y;
            (diff.clone() * diff).mean()
        }
    }
}
