//! Quality on real data, with the examples' split (the last 20% of rows is the test set).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_core::data::{self, ReadOptions};
use kiln_core::progress::NoProgress;
use kiln_trainer::{ModelKind, NoLogger, TrainConfig, train};

fn dataset(name: &str) -> data::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data")
        .join(name);
    data::read(&path, &ReadOptions::default()).unwrap()
}

#[test]
fn logistic_regression_on_breast_cancer() {
    let table = dataset("breast_cancer.csv");
    let config = TrainConfig {
        model: ModelKind::Logistic,
        epochs: 60,
        lr: 0.01,
        batch_size: 32,
        patience: Some(10),
        seed: 7,
        ..TrainConfig::default()
    };
    let t = std::time::Instant::now();
    let out = train(&table, "label", &config, &NoProgress, &NoLogger).unwrap();
    eprintln!("{:?} {:?} in {:?}", out.test_metrics, out.rows, t.elapsed());
    assert!(
        out.test_metrics["accuracy"] >= 0.95,
        "{:?}",
        out.test_metrics
    );
}

#[test]
fn mlp_on_digits() {
    let table = dataset("digits.csv");
    let config = TrainConfig {
        model: ModelKind::Mlp,
        hidden: vec![64],
        epochs: 40,
        lr: 0.003,
        batch_size: 32,
        patience: Some(8),
        seed: 7,
        ..TrainConfig::default()
    };
    let t = std::time::Instant::now();
    let out = train(&table, "label", &config, &NoProgress, &NoLogger).unwrap();
    eprintln!("{:?} {:?} in {:?}", out.test_metrics, out.rows, t.elapsed());
    assert!(
        out.test_metrics["accuracy"] >= 0.95,
        "{:?}",
        out.test_metrics
    );
}

#[test]
fn same_seed_same_model_and_a_saved_bundle_predicts_the_same() {
    let table = dataset("breast_cancer.csv");
    let config = TrainConfig {
        model: ModelKind::Mlp,
        hidden: vec![16],
        epochs: 5,
        seed: 11,
        ..TrainConfig::default()
    };
    let a = train(&table, "label", &config, &NoProgress, &NoLogger).unwrap();
    let b = train(&table, "label", &config, &NoProgress, &NoLogger).unwrap();
    assert_eq!(a.weights, b.weights, "training is deterministic for a seed");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle");
    kiln_core::bundle::write(&path, &a.manifest, &a.weights).unwrap();
    let (manifest, weights) = kiln_core::bundle::read(&path).unwrap();
    assert_eq!(manifest, a.manifest);
    let predictor =
        kiln_trainer::Predictor::new(&manifest, &weights, kiln_trainer::DeviceChoice::Cpu).unwrap();
    let test = table.slice(table.num_rows() - a.rows.test, table.num_rows());
    let again = predictor.predict(&test).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&again), bits(&a.test_predictions));
}
