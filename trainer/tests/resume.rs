//! Training that goes on from a checkpoint, and successive halving that resumes its survivors
//! instead of training them again.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use kiln_core::data::{self, ReadOptions, Table};
use kiln_core::progress::NoProgress;
use kiln_trainer::sweep::{Domain, Method, SweepConfig, TrialSink, sweep};
use kiln_trainer::{
    ModelKind, NoLogger, RunLogger, TrainConfig, TrainError, TrainOutcome, train, train_from,
};
use serde_json::Value;

fn breast_cancer() -> Table {
    data::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/breast_cancer.csv"),
        &ReadOptions::default(),
    )
    .unwrap()
}

/// Records the steps each trial (or a training) logs.
#[derive(Default)]
struct Steps(Mutex<Vec<(usize, i64)>>);

struct StepLogger<'a>(&'a Steps, usize);

impl RunLogger for StepLogger<'_> {
    fn log(&self, step: i64, metrics: &[(&str, f64)]) {
        if metrics.iter().any(|(k, _)| *k == "train_loss") {
            self.0.0.lock().unwrap().push((self.1, step));
        }
    }
}

impl TrialSink for Steps {
    fn start(&self, trial: usize, _: &BTreeMap<String, Value>) -> Box<dyn RunLogger + '_> {
        Box::new(StepLogger(self, trial))
    }
    fn finish(&self, _: usize, _: &Result<(TrainOutcome, f64), TrainError>) {}
}

#[test]
fn boosting_goes_on_from_its_trees() {
    let t = breast_cancer();
    let config = |trees| TrainConfig {
        model: ModelKind::Gbdt,
        trees,
        patience: None,
        ..TrainConfig::default()
    };
    let ten = train(&t, "label", &config(10), &NoProgress, &NoLogger).unwrap();
    let steps = Steps::default();
    let twenty = train_from(
        &t,
        "label",
        &config(20),
        Some(&ten),
        &NoProgress,
        &StepLogger(&steps, 0),
    )
    .unwrap();
    let logged: Vec<i64> = steps.0.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(
        logged,
        (11..=20).collect::<Vec<_>>(),
        "only new rounds are logged"
    );
    assert_eq!(twenty.history.len(), 20);
    assert_eq!(twenty.history[..10], ten.history[..]);
    // The same as boosting 20 rounds at once, but for float rounding in the scores carried over.
    let fresh = train(&t, "label", &config(20), &NoProgress, &NoLogger).unwrap();
    for (a, b) in twenty.test_predictions.iter().zip(&fresh.test_predictions) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    assert_eq!(
        twenty.feature_importance.len(),
        fresh.feature_importance.len()
    );
    // A checkpoint of another kind of model is refused.
    let net = train(
        &t,
        "label",
        &TrainConfig {
            epochs: 2,
            ..TrainConfig::default()
        },
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    let e = train_from(&t, "label", &config(20), Some(&net), &NoProgress, &NoLogger)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train afresh"), "{e}");
}

#[test]
fn a_network_goes_on_from_its_best_weights() {
    let t = breast_cancer();
    let config = |epochs| TrainConfig {
        epochs,
        patience: None,
        ..TrainConfig::default()
    };
    let four = train(&t, "label", &config(4), &NoProgress, &NoLogger).unwrap();
    let steps = Steps::default();
    let eight = train_from(
        &t,
        "label",
        &config(8),
        Some(&four),
        &NoProgress,
        &StepLogger(&steps, 0),
    )
    .unwrap();
    let logged: Vec<i64> = steps.0.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(logged, vec![5, 6, 7, 8]);
    assert_eq!(eight.history[..4], four.history[..]);
    // Epoch 5 starts where epoch 4 ended, not where epoch 1 did.
    assert!(
        eight.history[4].validation_loss < four.history[0].validation_loss,
        "{:?}",
        eight.history
    );
}

#[test]
fn successive_halving_resumes_its_survivors() {
    let t = breast_cancer();
    let mut space = BTreeMap::new();
    space.insert(
        "leaves".to_string(),
        Domain::Choice(vec![2.into(), 4.into(), 8.into(), 16.into()]),
    );
    let config = SweepConfig {
        method: Method::Grid,
        trials: 4,
        parallel: 2,
        seed: 0,
        metric: "loss".into(),
        rungs: 2,
        eta: 2,
        budget: None,
        base: TrainConfig {
            model: ModelKind::Gbdt,
            trees: 12,
            patience: None,
            ..TrainConfig::default()
        },
        space,
    };
    let steps = Steps::default();
    let trials = sweep(&t, "label", &config, &steps).unwrap();
    let steps = steps.0.into_inner().unwrap();
    let survivors: Vec<usize> = trials
        .iter()
        .filter(|t| t.epochs == 12)
        .map(|t| t.index)
        .collect();
    assert_eq!(survivors.len(), 2, "{trials:?}");
    for s in survivors {
        let mut rounds: Vec<i64> = steps.iter().filter(|(t, _)| *t == s).map(|x| x.1).collect();
        rounds.sort_unstable();
        // Rounds 1–6 in the first rung, 7–12 in the second: none trained twice.
        assert_eq!(rounds, (1..=12).collect::<Vec<_>>(), "trial {s}");
    }
}

#[test]
fn hyperband_runs_brackets_of_successive_halving() {
    assert_eq!(kiln_trainer::sweep::hyperband_brackets(3, 3), vec![9, 5, 3]);
    let t = breast_cancer();
    let mut space = BTreeMap::new();
    space.insert("leaves".to_string(), Domain::IntUniform([2, 31]));
    space.insert("shrinkage".to_string(), Domain::LogUniform([0.01, 0.5]));
    let config = SweepConfig {
        method: Method::Hyperband,
        trials: 0,
        parallel: 2,
        seed: 4,
        metric: "loss".into(),
        rungs: 3,
        eta: 3,
        budget: None,
        base: TrainConfig {
            model: ModelKind::Gbdt,
            trees: 9,
            patience: None,
            ..TrainConfig::default()
        },
        space,
    };
    let steps = Steps::default();
    let trials = sweep(&t, "label", &config, &steps).unwrap();
    assert_eq!(trials.len(), 17);
    let at = |rounds| trials.iter().filter(|t| t.epochs == rounds).count();
    // Bracket 1: 9 trials at 1 round, 3 go on to 3, 1 to 9; bracket 2: 5 at 3, 1 to 9;
    // bracket 3: 3 at 9.
    assert_eq!((at(1), at(3), at(9)), (6, 6, 5), "{trials:?}");
    // Every round of every trial was boosted once.
    let steps = steps.0.into_inner().unwrap();
    assert_eq!(steps.len(), 6 + 6 * 3 + 5 * 9);
}

#[test]
fn oversized_sweeps_are_refused_before_any_trial() {
    let t = breast_cancer();
    let mut space = BTreeMap::new();
    space.insert("leaves".to_string(), Domain::IntUniform([2, 31]));
    let base = SweepConfig {
        method: Method::Hyperband,
        trials: 10,
        parallel: 1,
        seed: 0,
        metric: "loss".into(),
        rungs: 3,
        eta: 3,
        budget: None,
        base: TrainConfig::default(),
        space,
    };
    for (config, needle) in [
        (
            SweepConfig {
                rungs: 1000,
                ..base.clone()
            },
            "at most 8 rungs",
        ),
        (
            SweepConfig {
                rungs: 8,
                eta: 10,
                ..base.clone()
            },
            "at most 10000",
        ),
        (
            SweepConfig {
                method: Method::Random,
                trials: 1_000_000,
                ..base.clone()
            },
            "1000000 trials",
        ),
    ] {
        let e = sweep(&t, "label", &config, &Steps::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}
