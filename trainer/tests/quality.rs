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
        lr: Some(0.01),
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
    // A model that learned nothing: the commonest class everywhere, chance-level AUC.
    let base = &out.baseline_metrics;
    assert!(base["accuracy"] > 0.5 && base["accuracy"] < 0.8, "{base:?}");
    assert!((base["roc_auc"] - 0.5).abs() < 1e-9, "{base:?}");
}

#[test]
fn mlp_on_digits() {
    let table = dataset("digits.csv");
    let config = TrainConfig {
        model: ModelKind::Mlp,
        hidden: vec![64],
        epochs: 40,
        lr: Some(0.003),
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

/// Synthetic click-through rows in a CSV file, and each row's click probability under the
/// generator's true model.
fn ctr(rows: usize, seed: u64) -> (tempfile::NamedTempFile, Vec<f64>) {
    let file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    let mut w = csv::Writer::from_path(file.path()).unwrap();
    w.write_record(kiln_core::synth::ctr_header()).unwrap();
    let mut gen_rows = kiln_core::synth::CtrRows::new(seed);
    let mut truth = Vec::with_capacity(rows);
    for _ in 0..rows {
        let (record, p) = gen_rows.next_row();
        w.write_record(&record).unwrap();
        truth.push(p);
    }
    w.flush().unwrap();
    (file, truth)
}

#[test]
fn click_through_auc_close_to_the_true_model() {
    let (file, truth) = ctr(40_000, 5);
    let table = data::read(file.path(), &ReadOptions::default()).unwrap();
    // The generator's numbers are monotone maps of its latent normals: log-scale the
    // exponential ones, standardize all; its two informative vocabularies one-hot.
    let spec = kiln_core::transform::TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"i1\", \"i2\", \"i5\", \"i8\"]\nimpute = \"median\"\nlog1p = true\nencode = \"standardize\"\n\n\
         [[features]]\ncolumns = [\"i3\", \"i4\", \"i6\", \"i7\"]\nimpute = \"median\"\nencode = \"standardize\"\n\n\
         [[features]]\ncolumns = [\"c1\", \"c2\"]\nencode = \"vocabulary\"\n",
    )
    .unwrap();
    let config = TrainConfig {
        model: ModelKind::Logistic,
        epochs: 10,
        batch_size: 256,
        lr: Some(0.01),
        seed: 3,
        transform: Some(spec),
        ..TrainConfig::default()
    };
    let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
    let test_rows = out.rows.test;
    let clicks: Vec<bool> = table.numbers(0)[table.num_rows() - test_rows..]
        .iter()
        .map(|v| *v == Some(1.0))
        .collect();
    let p: Vec<f32> = truth[truth.len() - test_rows..]
        .iter()
        .map(|p| *p as f32)
        .collect();
    let best = kiln_core::metrics::roc_auc(&p, &clicks).unwrap();
    let got = out.test_metrics["roc_auc"];
    eprintln!("test AUC {got:.4}, true model {best:.4}");
    assert!(
        got >= best - 0.005,
        "test AUC {got:.4} vs the true model's {best:.4}"
    );
}

#[test]
fn wide_and_deep_with_embeddings_trains_and_reloads_exactly() {
    let (file, truth) = ctr(20_000, 9);
    let table = data::read(file.path(), &ReadOptions::default()).unwrap();
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ctr.spec.toml"),
    )
    .unwrap();
    let config = TrainConfig {
        model: ModelKind::WideDeep,
        hidden: vec![32],
        epochs: 4,
        batch_size: 256,
        lr: Some(0.005),
        seed: 1,
        transform: Some(kiln_core::transform::TransformSpec::from_toml(&spec).unwrap()),
        ..TrainConfig::default()
    };
    let out = train(&table, "click", &config, &NoProgress, &NoLogger).unwrap();
    let kiln_core::bundle::Architecture::WideDeep { embeddings, .. } = &out.manifest.architecture
    else {
        panic!("not wide and deep: {:?}", out.manifest.architecture);
    };
    let columns: Vec<&str> = embeddings.iter().map(|e| e.column.as_str()).collect();
    assert_eq!(columns, ["c3", "c4", "c5"]);
    assert_eq!(
        out.weights["embedding.2"].shape,
        [1024, embeddings[2].width]
    );

    let test_rows = out.rows.test;
    let clicks: Vec<bool> = table.numbers(0)[table.num_rows() - test_rows..]
        .iter()
        .map(|v| *v == Some(1.0))
        .collect();
    let p: Vec<f32> = truth[truth.len() - test_rows..]
        .iter()
        .map(|p| *p as f32)
        .collect();
    let best = kiln_core::metrics::roc_auc(&p, &clicks).unwrap();
    let got = out.test_metrics["roc_auc"];
    assert!(
        got >= best - 0.03,
        "wide and deep test AUC {got:.4} vs the true model's {best:.4}"
    );

    let dir = tempfile::tempdir().unwrap();
    kiln_core::bundle::write(&dir.path().join("b"), &out.manifest, &out.weights).unwrap();
    let (manifest, weights) = kiln_core::bundle::read(&dir.path().join("b")).unwrap();
    let predictor =
        kiln_trainer::Predictor::new(&manifest, &weights, kiln_trainer::DeviceChoice::Cpu).unwrap();
    let again = predictor
        .predict(&table.slice(table.num_rows() - test_rows, table.num_rows()))
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&again), bits(&out.test_predictions));
}

/// The solution of `k` linear equations given as `k` rows of `[coefficients…, right side]`, by
/// Gauss–Jordan elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let k = a.len();
    for c in 0..k {
        let pivot = (c..k)
            .max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs()))
            .unwrap();
        a.swap(c, pivot);
        let pivot_row = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot_row[c];
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(c) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..k).map(|i| a[i][k] / a[i][i]).collect()
}

/// Uniform draws from a fixed xorshift sequence.
fn xorshift(mut state: u64) -> impl FnMut() -> f64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Uniform draws, and standard normal draws from a second sequence.
fn draws(seed: u64) -> (impl FnMut() -> f64, impl FnMut() -> f64) {
    let mut second = xorshift(seed ^ 0x5851_f42d_4c95_7f2d);
    let normal = move || {
        let (u, v) = (second().max(1e-12), second());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    (xorshift(seed), normal)
}

/// A table of `x0…x{p-1}` and `label` as CSV, read back.
fn table_of(rows: &[(Vec<f64>, String)]) -> (tempfile::NamedTempFile, data::Table) {
    let p = rows[0].0.len();
    let mut csv = (0..p)
        .map(|j| format!("x{j}"))
        .collect::<Vec<_>>()
        .join(",")
        + ",label\n";
    for (x, y) in rows {
        let fields: Vec<String> = x.iter().map(|v| format!("{v:.6}")).collect();
        csv.push_str(&format!("{},{y}\n", fields.join(",")));
    }
    let file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    std::fs::write(file.path(), csv).unwrap();
    let table = data::read(file.path(), &ReadOptions::default()).unwrap();
    (file, table)
}

/// A classification table drawn from a logistic model with known coefficients, features on
/// scales from 0.3 to 1000 around offsets, and one class four times as common as the other:
/// default settings reach at least 99% of the accuracy of the maximum-likelihood logistic
/// regression (Newton's method) on the same split, and at least its ROC AUC less 0.01.
#[test]
fn classification_with_default_settings_is_as_good_as_logistic_regression() {
    let (n, p) = (3000usize, 8usize);
    let (mut uniform, mut normal) = draws(0x2545_f491_4f6c_dd1d);
    let beta = [1.5, -2.0, 0.8, 0.0, 1.2, -0.6, 2.5, -1.0];
    let scales = [1.0, 0.3, 20.0, 5.0, 1000.0, 2.0, 0.5, 50.0];
    let offsets = [0.0, 10.0, -40.0, 3.0, 5000.0, 0.0, 1.0, 200.0];
    let mut raw: Vec<(Vec<f64>, bool)> = Vec::with_capacity(n);
    for _ in 0..n {
        let z: Vec<f64> = (0..p).map(|_| normal()).collect();
        let logit = -2.0 + z.iter().zip(&beta).map(|(z, b)| z * b).sum::<f64>();
        let y = uniform() < 1.0 / (1.0 + (-logit).exp());
        let x = z
            .iter()
            .enumerate()
            .map(|(j, z)| offsets[j] + scales[j] * z)
            .collect();
        raw.push((x, y));
    }
    let rows: Vec<(Vec<f64>, String)> = raw
        .iter()
        .map(|(x, y)| (x.clone(), if *y { "churned" } else { "stayed" }.to_string()))
        .collect();
    let (_file, table) = table_of(&rows);
    let out = train(
        &table,
        "label",
        &TrainConfig::default(),
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    let n_test = out.rows.test;
    let fit_rows = &raw[..n - n_test];
    let test_rows = &raw[n - n_test..];
    // Maximum likelihood by Newton's method, on features standardized over the fitting rows.
    let mean: Vec<f64> = (0..p)
        .map(|j| fit_rows.iter().map(|(x, _)| x[j]).sum::<f64>() / fit_rows.len() as f64)
        .collect();
    let sd: Vec<f64> = (0..p)
        .map(|j| {
            (fit_rows
                .iter()
                .map(|(x, _)| (x[j] - mean[j]).powi(2))
                .sum::<f64>()
                / fit_rows.len() as f64)
                .sqrt()
        })
        .collect();
    let row = |x: &[f64]| -> Vec<f64> {
        std::iter::once(1.0)
            .chain((0..p).map(|j| (x[j] - mean[j]) / sd[j]))
            .collect()
    };
    let k = p + 1;
    let mut w = vec![0.0f64; k];
    for _ in 0..30 {
        let mut a = vec![vec![0.0f64; k + 1]; k];
        for (x, y) in fit_rows {
            let z = row(x);
            let m = 1.0 / (1.0 + (-z.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()).exp());
            let t = if *y { 1.0 } else { 0.0 };
            for i in 0..k {
                for j in 0..k {
                    a[i][j] += m * (1.0 - m) * z[i] * z[j];
                }
                a[i][k] += (t - m) * z[i];
            }
        }
        let step = solve(a);
        w.iter_mut().zip(&step).for_each(|(w, s)| *w += s);
    }
    let scores: Vec<f64> = test_rows
        .iter()
        .map(|(x, _)| row(x).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>())
        .collect();
    let reference_accuracy = test_rows
        .iter()
        .zip(&scores)
        .filter(|((_, y), s)| (**s > 0.0) == *y)
        .count() as f64
        / n_test as f64;
    let labels: Vec<u32> = test_rows.iter().map(|(_, y)| u32::from(*y)).collect();
    let probabilities: Vec<f32> = scores
        .iter()
        .flat_map(|s| {
            let p = 1.0 / (1.0 + (-s).exp());
            [(1.0 - p) as f32, p as f32]
        })
        .collect();
    let reference_auc =
        kiln_core::metrics::ClassificationMetrics::compute(&labels, &probabilities, 2)
            .roc_auc
            .unwrap();
    // kiln's classes are sorted by name: "churned" is class 0; its AUC is symmetric.
    let (accuracy, auc) = (out.test_metrics["accuracy"], out.test_metrics["roc_auc"]);
    eprintln!(
        "kiln accuracy {accuracy:.4} AUC {auc:.4}; reference {reference_accuracy:.4} {reference_auc:.4}"
    );
    assert!(reference_accuracy > 0.8, "{reference_accuracy}");
    assert!(
        accuracy >= 0.99 * reference_accuracy,
        "{accuracy} vs {reference_accuracy}"
    );
    assert!(auc >= reference_auc - 0.01, "{auc} vs {reference_auc}");
}

/// A regression table with known coefficients, a target far from zero (about 150 ± 77) and
/// noise: default settings reach at least 95% of the least-squares fit's test R² on the same
/// split, and predictions are in the target's units.
#[test]
fn regression_with_default_settings_is_as_good_as_least_squares() {
    let (n, p) = (1500usize, 10usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (uniform().max(1e-12), uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let beta: Vec<f64> = (0..p)
        .map(|j| [25.0, -18.0, 12.0, 0.0, 7.5, -30.0, 4.0, 16.0, -9.0, 2.0][j])
        .collect();
    let scales: Vec<f64> = (0..p)
        .map(|j| [1.0, 0.5, 2.0, 1.0, 3.0, 0.8, 5.0, 1.2, 0.3, 10.0][j])
        .collect();
    let mut rows: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let x: Vec<f64> = scales.iter().map(|s| normal() * s).collect();
        let y = 150.0
            + x.iter()
                .zip(&beta)
                .zip(&scales)
                .map(|((x, b), s)| b * x / s)
                .sum::<f64>()
            + 30.0 * normal();
        rows.push((x, y));
    }
    let labelled: Vec<(Vec<f64>, String)> = rows
        .iter()
        .map(|(x, y)| (x.clone(), format!("{y:.6}")))
        .collect();
    let (_file, table) = table_of(&labelled);
    let out = train(
        &table,
        "label",
        &TrainConfig::default(),
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    let n_test = out.rows.test;
    let fit_rows = &rows[..n - n_test];
    let test_rows = &rows[n - n_test..];
    // Least squares with an intercept, by the normal equations.
    let k = p + 1;
    let mut a = vec![vec![0.0f64; k + 1]; k];
    for (x, y) in fit_rows {
        let z: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
        for i in 0..k {
            for j in 0..k {
                a[i][j] += z[i] * z[j];
            }
            a[i][k] += z[i] * y;
        }
    }
    let w = solve(a);
    let mean = test_rows.iter().map(|(_, y)| y).sum::<f64>() / n_test as f64;
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for (x, y) in test_rows {
        let pred = w[0] + x.iter().zip(&w[1..]).map(|(x, w)| x * w).sum::<f64>();
        ss_res += (y - pred).powi(2);
        ss_tot += (y - mean).powi(2);
    }
    let least_squares = 1.0 - ss_res / ss_tot;
    let kiln = out.test_metrics["r2"];
    eprintln!(
        "test R²: kiln {kiln:.4}, least squares {least_squares:.4}; {:?}",
        out.test_metrics
    );
    assert!(least_squares > 0.5, "{least_squares}");
    // The training mean for every row: about zero R², an RMSE near the target's spread.
    let base = &out.baseline_metrics;
    assert!(
        base["r2"] < 0.05 && base["rmse"] > out.test_metrics["rmse"],
        "{base:?}"
    );
    assert!(
        kiln >= 0.95 * least_squares,
        "kiln {kiln} vs least squares {least_squares}"
    );
    // In the target's units: the predictions' mean is near the target's.
    let predicted = out
        .test_predictions
        .iter()
        .map(|v| f64::from(*v))
        .sum::<f64>()
        / n_test as f64;
    assert!((predicted - mean).abs() < 15.0, "{predicted} vs {mean}");
}
