//! Gradient-boosted trees on data with what trees are for: interactions, missing values that
//! carry signal, categories, many classes; and their bundle read back by the evaluator.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::Path;

use kiln_core::bundle::{self, Architecture};
use kiln_core::data::{self, ReadOptions, Table};
use kiln_core::progress::NoProgress;
use kiln_trainer::{DeviceChoice, ModelKind, NoLogger, Predictor, TrainConfig, train};
use rand::{RngExt, SeedableRng};

fn gbdt() -> TrainConfig {
    TrainConfig {
        model: ModelKind::Gbdt,
        ..TrainConfig::default()
    }
}

fn table(csv: &str) -> Table {
    data::read_csv_str(csv, &ReadOptions::default()).unwrap()
}

/// `rows` rows of: a feature `m` whose absence means the label is "yes"; otherwise, in half of a
/// 30-value category's values the signs of `a` and `b` differ (an XOR), and in the other half
/// the label is "no"; and noise.
fn mixed(rows: usize, seed: u64) -> String {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut csv = String::from("a,b,m,city,noise,label\n");
    for _ in 0..rows {
        let a: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let b: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let city = rng.random_range(0..30usize);
        let missing = rng.random_range(0..3u32) == 0;
        let label = missing || (city % 2 == 0 && (a > 0.0) != (b > 0.0));
        let m = if missing {
            String::new()
        } else {
            format!("{:.3}", rng.random::<f64>())
        };
        writeln!(
            csv,
            "{a:.4},{b:.4},{m},c{city},{:.3},{}",
            rng.random::<f64>(),
            if label { "yes" } else { "no" }
        )
        .unwrap();
    }
    csv
}

#[test]
fn trees_learn_interactions_missing_values_and_categories_that_a_linear_model_cannot() {
    let t = table(&mixed(6000, 1));
    let trees = train(&t, "label", &gbdt(), &NoProgress, &NoLogger).unwrap();
    let linear = train(&t, "label", &TrainConfig::default(), &NoProgress, &NoLogger).unwrap();
    let (acc, lin) = (
        trees.test_metrics["accuracy"],
        linear.test_metrics["accuracy"],
    );
    eprintln!("gbdt {acc}, logistic {lin}");
    assert!(acc > 0.95, "{:?}", trees.test_metrics);
    assert!(acc > lin + 0.1, "gbdt {acc} vs logistic {lin}");
    // The default transform keeps `m` missing and reads `city` as ids.
    let Architecture::Trees { ids, outputs, .. } = trees.manifest.architecture else {
        panic!("{:?}", trees.manifest.architecture)
    };
    assert_eq!((ids, outputs), (1, 1));
    assert!(trees.manifest.transform.keeps_missing());
    // The columns that decide labels carry the gain; noise carries little.
    let share = |c: &str| {
        trees
            .feature_importance
            .iter()
            .find(|(n, _)| n == c)
            .map_or(0.0, |(_, s)| *s)
    };
    assert!(share("noise") < 0.05, "{:?}", trees.feature_importance);
    for c in ["a", "b", "m", "city"] {
        assert!(share(c) > 0.05, "{c}: {:?}", trees.feature_importance);
    }
    let total: f64 = trees.feature_importance.iter().map(|(_, s)| s).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(trees.manifest.hyperparameters.contains_key("leaves"));
    assert!(!trees.manifest.hyperparameters.contains_key("epochs"));
}

#[test]
fn the_bundle_reloads_and_predicts_what_training_measured() {
    let t = table(&mixed(2000, 2));
    let out = train(&t, "label", &gbdt(), &NoProgress, &NoLogger).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle");
    bundle::write(&path, &out.manifest, &out.weights).unwrap();
    let (manifest, weights) = bundle::read(&path).unwrap();
    let p = Predictor::new(&manifest, &weights, DeviceChoice::Cpu).unwrap();
    let test = kiln_trainer::test_split(&t, 0.2);
    assert_eq!(p.predict(&test).unwrap(), out.test_predictions);
}

#[test]
fn regression_and_many_classes() {
    // y = 10·sin(3x)·z + 5·[k = "b"] + noise: a curve, an interaction and a category.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut csv = String::from("x,z,k,y\n");
    for _ in 0..5000 {
        let x: f64 = rng.random::<f64>() * 2.0;
        let z: f64 = rng.random::<f64>();
        let k = ["a", "b", "c"][rng.random_range(0..3usize)];
        let y = 10.0 * (3.0 * x).sin() * z
            + if k == "b" { 5.0 } else { 0.0 }
            + rng.random::<f64>() * 0.5;
        writeln!(csv, "{x:.4},{z:.4},{k},{y:.4}").unwrap();
    }
    let out = train(&table(&csv), "y", &gbdt(), &NoProgress, &NoLogger).unwrap();
    assert!(out.test_metrics["r2"] > 0.95, "{:?}", out.test_metrics);

    let digits = data::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/digits.csv"),
        &ReadOptions::default(),
    )
    .unwrap();
    let config = TrainConfig {
        trees: 60,
        ..gbdt()
    };
    let out = train(&digits, "label", &config, &NoProgress, &NoLogger).unwrap();
    let Architecture::Trees { outputs, trees, .. } = out.manifest.architecture else {
        panic!()
    };
    assert_eq!(outputs, 10);
    assert_eq!(trees % 10, 0, "one tree per class and round");
    assert!(out.test_metrics["accuracy"] > 0.9, "{:?}", out.test_metrics);
}

#[test]
fn early_stopping_keeps_the_best_round_and_options_are_checked() {
    let t = table(&mixed(1500, 4));
    let config = TrainConfig {
        trees: 400,
        shrinkage: 0.5,
        patience: Some(5),
        ..gbdt()
    };
    let out = train(&t, "label", &config, &NoProgress, &NoLogger).unwrap();
    let rounds = out.history.len();
    let Architecture::Trees { trees, .. } = out.manifest.architecture else {
        panic!()
    };
    assert!(rounds < 400, "never stopped");
    assert_eq!(trees, rounds - 5, "the best round's trees are kept");
    let best = out
        .history
        .iter()
        .map(|e| e.validation_loss)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(out.history[trees - 1].validation_loss, best);

    for (config, needle) in [
        (
            TrainConfig {
                subsample: 0.0,
                ..gbdt()
            },
            "subsample = 0 must be in (0, 1]",
        ),
        (
            TrainConfig {
                leaves: 1,
                ..gbdt()
            },
            "--leaves of at least 2",
        ),
        (
            TrainConfig {
                max_bins: 300,
                ..gbdt()
            },
            "max_bins = 300",
        ),
    ] {
        let e = train(&t, "label", &config, &NoProgress, &NoLogger)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
    // A network cannot read a kept missing value; a tree cannot split 300 hashed ids.
    let keep = kiln_core::transform::TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"m\"]\nimpute = \"keep\"\n",
    )
    .unwrap();
    let e = train(
        &t,
        "label",
        &TrainConfig {
            transform: Some(keep),
            ..TrainConfig::default()
        },
        &NoProgress,
        &NoLogger,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("only --model gbdt"), "{e}");
    let hashed = kiln_core::transform::TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"city\"]\nencode = \"hash\"\nbuckets = 300\n",
    )
    .unwrap();
    let e = train(
        &t,
        "label",
        &TrainConfig {
            transform: Some(hashed),
            ..gbdt()
        },
        &NoProgress,
        &NoLogger,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("300 ids") && e.contains("at most 256"), "{e}");
}

#[test]
fn subsampling_is_seeded() {
    let t = table(&mixed(1500, 5));
    let config = TrainConfig {
        trees: 20,
        subsample: 0.7,
        colsample: 0.6,
        ..gbdt()
    };
    let a = train(&t, "label", &config, &NoProgress, &NoLogger).unwrap();
    let b = train(&t, "label", &config, &NoProgress, &NoLogger).unwrap();
    assert_eq!(a.weights, b.weights);
    let c = train(
        &t,
        "label",
        &TrainConfig { seed: 9, ..config },
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    assert_ne!(a.weights, c.weights);
}

#[test]
fn a_round_that_samples_no_rows_adds_nothing() {
    // 30 training rows sampled at 1%: most rounds sample none.
    let t = table(&mixed(40, 6));
    let config = TrainConfig {
        trees: 10,
        subsample: 0.01,
        test_fraction: 0.1,
        validation_fraction: 0.1,
        ..gbdt()
    };
    let out = train(&t, "label", &config, &NoProgress, &NoLogger).unwrap();
    assert!(out.test_predictions.iter().all(|p| p.is_finite()));
}
