//! The GPU path (burn's wgpu backend): the same training as on the CPU reaches the same quality,
//! and a bundle scores the same rows to within float rounding on both devices.
//! Runs only when kiln is built with the `gpu` feature; CI runs it on Mesa's software Vulkan.
#![cfg(feature = "gpu")]
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_core::data::{self, ReadOptions};
use kiln_core::progress::NoProgress;
use kiln_trainer::{DeviceChoice, ModelKind, NoLogger, Predictor, TrainConfig, train};

#[test]
fn gpu_training_matches_the_cpu() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/breast_cancer.csv");
    let table = data::read(&path, &ReadOptions::default()).unwrap();
    let config = |device| TrainConfig {
        model: ModelKind::Mlp,
        hidden: vec![16],
        epochs: 15,
        batch_size: 64,
        seed: 7,
        device,
        ..TrainConfig::default()
    };
    let cpu = train(
        &table,
        "label",
        &config(DeviceChoice::Cpu),
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    let gpu = train(
        &table,
        "label",
        &config(DeviceChoice::Gpu),
        &NoProgress,
        &NoLogger,
    )
    .unwrap();
    let (a, b) = (cpu.test_metrics["accuracy"], gpu.test_metrics["accuracy"]);
    eprintln!("test accuracy: cpu {a:.4}, gpu {b:.4}");
    assert!(b >= 0.95 && (a - b).abs() <= 0.03, "cpu {a}, gpu {b}");

    // One bundle, both devices: the same probabilities to within float rounding.
    let on_cpu = Predictor::new(&cpu.manifest, &cpu.weights, DeviceChoice::Cpu).unwrap();
    let on_gpu = Predictor::new(&cpu.manifest, &cpu.weights, DeviceChoice::Gpu).unwrap();
    let (p, q) = (
        on_cpu.predict(&table).unwrap(),
        on_gpu.predict(&table).unwrap(),
    );
    let worst = p
        .iter()
        .zip(&q)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
}
