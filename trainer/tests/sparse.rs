//! One-hot features read as index lookups: a network trained on sparse rows predicts what its
//! weights give on the dense one-hot rows the server reads, and rows cost their non-zeros.
#![allow(clippy::unwrap_used)]

use kiln_core::data::{self, ReadOptions, Table};
use kiln_core::progress::NoProgress;
use kiln_core::transform::TransformSpec;
use kiln_trainer::{DeviceChoice, ModelKind, NoLogger, Predictor, TrainConfig, train};

fn ctr(rows: usize) -> (tempfile::TempDir, Table) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctr.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    kiln_core::synth::write_ctr_csv(&mut file, rows as u64, 3, &NoProgress).unwrap();
    let table = data::read(&path, &ReadOptions::default()).unwrap();
    (dir, table)
}

/// The outputs of a bundle's network on dense rows, computed here from its weights: the path
/// the server takes.
fn dense_logits(out: &kiln_trainer::TrainOutcome, table: &Table) -> Vec<f64> {
    let f = out.manifest.transform.apply_table(table).unwrap();
    let d = f.dense_width;
    let mut x: Vec<Vec<f64>> = f
        .dense
        .chunks(d)
        .map(|r| r.iter().map(|v| f64::from(*v)).collect())
        .collect();
    let layers = (0..)
        .take_while(|i| out.weights.contains_key(&format!("dense.{i}.weight")))
        .count();
    for i in 0..layers {
        let w = &out.weights[&format!("dense.{i}.weight")];
        let b = &out.weights[&format!("dense.{i}.bias")];
        let (n_in, n_out) = (w.shape[0], w.shape[1]);
        x = x
            .iter()
            .map(|row| {
                (0..n_out)
                    .map(|o| {
                        let z = f64::from(b.data[o])
                            + (0..n_in)
                                .map(|j| row[j] * f64::from(w.data[j * n_out + o]))
                                .sum::<f64>();
                        if i + 1 < layers { z.max(0.0) } else { z }
                    })
                    .collect()
            })
            .collect();
    }
    x.into_iter().map(|r| r[0]).collect()
}

#[test]
fn sparse_training_predicts_what_dense_rows_give() {
    let (_dir, table) = ctr(3000);
    let spec = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"i1\", \"i2\", \"i5\"]\nimpute = \"median\"\nencode = \"standardize\"\n\n\
         [[features]]\ncolumns = [\"c1\", \"c2\", \"c3\", \"c4\"]\nencode = \"vocabulary\"\nmin_frequency = 2\n\n\
         [[features]]\ncolumns = [\"c5\"]\nencode = \"hash\"\nbuckets = 64\noutput = \"one_hot\"\n",
    )
    .unwrap();
    for (model, hidden) in [(ModelKind::Logistic, vec![]), (ModelKind::Mlp, vec![8])] {
        let config = TrainConfig {
            model,
            hidden,
            epochs: 3,
            transform: Some(spec.clone()),
            ..TrainConfig::default()
        };
        let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
        let width = out.manifest.transform.dense_width();
        assert!(width > 100, "{width} one-hot columns");
        let test = kiln_trainer::test_split(&table, 0.2);
        let logits = dense_logits(&out, &test);
        assert_eq!(logits.len(), out.test_predictions.len() / 2);
        for (z, p) in logits.iter().zip(out.test_predictions.chunks(2)) {
            let dense = 1.0 / (1.0 + (-z).exp());
            assert!(
                (dense - f64::from(p[1])).abs() < 1e-5,
                "{dense} vs {}",
                p[1]
            );
        }
        // A reloaded bundle scores the same way.
        let p = Predictor::new(&out.manifest, &out.weights, DeviceChoice::Cpu).unwrap();
        assert_eq!(p.predict(&test).unwrap(), out.test_predictions);
    }
}

#[test]
fn only_categories_train_too() {
    let (_dir, table) = ctr(2000);
    let spec = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"c1\", \"c2\"]\nencode = \"vocabulary\"\n",
    )
    .unwrap();
    let config = TrainConfig {
        epochs: 2,
        transform: Some(spec),
        ..TrainConfig::default()
    };
    let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
    assert!(out.test_metrics["roc_auc"] > 0.5, "{:?}", out.test_metrics);
}

#[test]
fn wide_and_deep_reads_one_hot_sparse_beside_its_embeddings() {
    use burn::prelude::*;
    use burn::tensor::TensorData;
    let (_dir, table) = ctr(3000);
    let spec = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"i1\", \"i2\"]\nimpute = \"median\"\nencode = \"standardize\"\n\n\
         [[features]]\ncolumns = [\"c1\", \"c2\"]\nencode = \"vocabulary\"\n\n\
         [[features]]\ncolumns = [\"c3\", \"c4\"]\nencode = \"vocabulary\"\nmin_frequency = 5\noutput = \"id\"\n",
    )
    .unwrap();
    let config = TrainConfig {
        model: ModelKind::WideDeep,
        hidden: vec![8],
        epochs: 2,
        transform: Some(spec),
        ..TrainConfig::default()
    };
    let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
    // The same weights on dense one-hot rows, as the server reads them.
    let device = kiln_trainer::device(DeviceChoice::Cpu).unwrap();
    let net =
        kiln_trainer::Net::from_weights(&out.manifest.architecture, &out.weights, &device).unwrap();
    let test = kiln_trainer::test_split(&table, 0.2);
    let f = out.manifest.transform.apply_table(&test).unwrap();
    let x = Tensor::<2>::from_data(
        TensorData::new(f.dense.clone(), [f.rows, f.dense_width]),
        &device,
    );
    let ids: Vec<i64> = f.ids.iter().map(|v| i64::from(*v)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [f.rows, f.id_width]), &device);
    let logits: Vec<f32> = net
        .forward(x, Some(ids))
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    for (z, p) in logits.iter().zip(out.test_predictions.chunks(2)) {
        let dense = 1.0 / (1.0 + (-z).exp());
        assert!((dense - p[1]).abs() < 1e-5, "{dense} vs {}", p[1]);
    }
}

#[test]
fn wide_one_hot_inputs_default_to_a_lower_learning_rate() {
    let (_dir, table) = ctr(3000);
    let narrow = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"c1\", \"c2\"]\nencode = \"vocabulary\"\n",
    )
    .unwrap();
    let wide = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"c5\"]\nencode = \"hash\"\nbuckets = 2048\noutput = \"one_hot\"\n",
    )
    .unwrap();
    let lr = |spec: TransformSpec, given: Option<f64>| {
        let config = TrainConfig {
            epochs: 1,
            lr: given,
            transform: Some(spec),
            ..TrainConfig::default()
        };
        let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
        out.manifest.hyperparameters["lr"].as_f64().unwrap()
    };
    assert_eq!(lr(narrow, None), kiln_trainer::DEFAULT_LR);
    assert_eq!(lr(wide.clone(), None), kiln_trainer::SPARSE_LR);
    assert_eq!(lr(wide, Some(0.05)), 0.05, "a given rate is kept");
}
