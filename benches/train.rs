//! Training throughput on synthetic click-through rows (one epoch, batch 256, on the CPU):
//! logistic regression and the 64-32 MLP. The baseline is the same training in scikit-learn,
//! run in the same session with `benches/sklearn_baseline.py` on the same generated rows.
//!
//! `KILN_BENCH_TRAIN_ROWS` sets the rows (default 200,000).
#![allow(clippy::unwrap_used)]

use std::io::BufWriter;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::bundle::{Activation, Architecture, Task};
use kiln_core::data::{self, ReadOptions};
use kiln_core::progress::NoProgress;
use kiln_core::transform::TransformSpec;
use kiln_trainer::{Dense, ModelKind, NoLogger, TrainConfig, fit_network};

fn training(c: &mut Criterion) {
    let rows: u64 = std::env::var("KILN_BENCH_TRAIN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    let mut w = BufWriter::new(file.reopen().unwrap());
    kiln_core::synth::write_ctr_csv(&mut w, rows, 7, &NoProgress).unwrap();
    drop(w);
    let table = data::read(file.path(), &ReadOptions::default()).unwrap();
    // Numbers standardized, the two small vocabularies one-hot: 8 + 11 + 101 = 120 features.
    let spec = TransformSpec::from_toml(
        "[[features]]\ncolumns = [\"i1\",\"i2\",\"i3\",\"i4\",\"i5\",\"i6\",\"i7\",\"i8\"]\nimpute = \"median\"\nencode = \"standardize\"\n\n[[features]]\ncolumns = [\"c1\", \"c2\"]\nencode = \"vocabulary\"\n",
    )
    .unwrap();
    let fitted = spec.fit(&table).unwrap();
    let x = fitted.apply_table(&table).unwrap().dense;
    let y: Vec<f32> = table
        .numbers(0)
        .iter()
        .map(|v| v.unwrap_or(0.0) as f32)
        .collect();
    let d = fitted.dense_width();
    let data = Dense {
        x: &x,
        ids: &[],
        y: &y,
        d,
        k: 0,
    };
    let none = Dense {
        x: &[],
        ids: &[],
        y: &[],
        d,
        k: 0,
    };

    let mut g = c.benchmark_group("train_one_epoch");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows));
    for (name, model, hidden) in [
        ("logistic", ModelKind::Logistic, vec![]),
        ("mlp_64_32", ModelKind::Mlp, vec![64, 32]),
    ] {
        let config = TrainConfig {
            model,
            hidden: hidden.clone(),
            epochs: 1,
            batch_size: 256,
            patience: None,
            ..TrainConfig::default()
        };
        let architecture = Architecture::Mlp {
            inputs: d,
            hidden: hidden.clone(),
            activation: Activation::Relu,
            outputs: 1,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                fit_network(
                    &data,
                    &none,
                    &architecture,
                    Task::BinaryClassification,
                    &config,
                    &NoProgress,
                    &NoLogger,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, training);
criterion_main!(benches);
