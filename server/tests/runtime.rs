//! The candle runtime against a plain reference implementation of the bundle format's network
//! (dense layers `[in, out]`, embeddings, wide part, activations), for every architecture.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use kiln_core::bundle::{self, Activation, Architecture, Task, Weight};
use kiln_server::Runtime;
use kiln_server::decode::from_records;
use serde_json::Value;

fn erf(x: f64) -> f64 {
    // Abramowitz and Stegun 7.1.26 (error < 1.5e-7).
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

fn dense(x: &[f64], w: &Weight, b: &Weight) -> Vec<f64> {
    let (inp, out) = (w.shape[0], w.shape[1]);
    (0..out)
        .map(|j| {
            f64::from(b.data[j])
                + (0..inp)
                    .map(|i| x[i] * f64::from(w.data[i * out + j]))
                    .sum::<f64>()
        })
        .collect()
}

/// The reference forward pass of one row.
fn reference(
    arch: &Architecture,
    w: &BTreeMap<String, Weight>,
    x: &[f32],
    ids: &[u32],
) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    let (activation, wide) = match arch {
        Architecture::Mlp { activation, .. } => (*activation, None),
        Architecture::WideDeep { activation, .. } => (
            *activation,
            Some(dense(&x, &w["wide.weight"], &w["wide.bias"])),
        ),
        Architecture::Trees { .. } | Architecture::Onnx { .. } => panic!("networks only"),
    };
    let mut h = x.clone();
    for (j, id) in ids.iter().enumerate() {
        let t = &w[&format!("embedding.{j}")];
        let width = t.shape[1];
        h.extend(
            t.data[*id as usize * width..(*id as usize + 1) * width]
                .iter()
                .map(|v| f64::from(*v)),
        );
    }
    let layers = (0..)
        .take_while(|i| w.contains_key(&format!("dense.{i}.weight")))
        .count();
    for i in 0..layers {
        h = dense(
            &h,
            &w[&format!("dense.{i}.weight")],
            &w[&format!("dense.{i}.bias")],
        );
        if i + 1 < layers {
            for v in &mut h {
                *v = match activation {
                    Activation::Relu => v.max(0.0),
                    Activation::Tanh => v.tanh(),
                    Activation::Gelu => 0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2)),
                };
            }
        }
    }
    if let Some(wide) = wide {
        for (v, w) in h.iter_mut().zip(wide) {
            *v += w;
        }
    }
    h
}

fn check(dir: &std::path::Path, records: &[Value]) {
    let (manifest, weights) = bundle::read(dir).unwrap();
    let rt = Runtime::load(dir).unwrap();
    let rows = from_records(&manifest.signature, records).unwrap();
    let out = rt.predict(&rows).unwrap();
    let width = rt.width();
    for (r, record) in records.iter().enumerate() {
        let f = manifest
            .transform
            .apply_json_row(record.as_object().unwrap())
            .unwrap();
        let logits = reference(&manifest.architecture, &weights, &f.dense, &f.ids);
        let expected: Vec<f64> = match manifest.task {
            Task::BinaryClassification => {
                let p = 1.0 / (1.0 + (-logits[0]).exp());
                vec![1.0 - p, p]
            }
            Task::MultiClassification => {
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            }
            Task::Regression => logits,
        };
        let got = &out[r * width..(r + 1) * width];
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (f64::from(*g) - e).abs() < 1e-5,
                "row {r}: {got:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn mlps_with_every_activation_and_task_match_the_reference() {
    let t = breast_cancer();
    let records = bc_records(20);
    let scratch = tempfile::tempdir().unwrap();
    for (i, (activation, task, outputs, labels)) in [
        (
            Activation::Relu,
            Task::BinaryClassification,
            1,
            vec!["0", "1"],
        ),
        (
            Activation::Tanh,
            Task::MultiClassification,
            3,
            vec!["a", "b", "c"],
        ),
        (Activation::Gelu, Task::Regression, 1, vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = scratch.path().join(format!("m{i}"));
        make_bundle(
            &dir,
            &t,
            BC_SPEC,
            "label",
            task,
            &labels,
            Architecture::Mlp {
                inputs: 30,
                hidden: vec![16, 8],
                activation,
                outputs,
            },
            40 + i as u64,
        );
        check(&dir, &records);
    }
}

#[test]
fn wide_and_deep_with_embeddings_matches_the_reference() {
    let t = ctr(1500);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wd");
    ctr_bundle(&dir, 9, &t);
    let records: Vec<Value> = (0..40)
        .map(|r| {
            serde_json::json!({
                "i1": r % 7, "i2": (r as f64) * 1.5, "i5": if r % 5 == 0 { Value::Null } else { serde_json::json!(r * 3) },
                "c1": format!("c1_{}", r % 4), "c3": format!("c3_{}", r % 9), "c4": if r % 3 == 0 { "unseen".to_string() } else { format!("c4_{}", r % 6) },
            })
        })
        .collect();
    check(&dir, &records);
}

#[test]
fn a_bundle_with_misshapen_weights_is_refused_with_the_tensor_named() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("ok");
    bc_bundle(&dir, 1);
    let (manifest, mut weights) = bundle::read(&dir).unwrap();
    weights.insert(
        "dense.0.weight".into(),
        Weight {
            shape: vec![29, 1],
            data: vec![0.0; 29],
        },
    );
    let bad = scratch.path().join("bad");
    bundle::write(&bad, &manifest, &weights).unwrap();
    let e = Runtime::load(&bad).err().unwrap().to_string();
    assert!(
        e.contains("tensor `dense.0.weight` has shape [29, 1], expected [30, 1]"),
        "{e}"
    );
}

#[test]
fn a_bundle_whose_statistics_are_newer_than_kiln_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("newer");
    bc_bundle(&dir, 1);
    let path = dir.join(bundle::MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["training_statistics"]["format_version"] = serde_json::json!(99);
    std::fs::write(&path, manifest.to_string()).unwrap();
    let e = bundle::read(&dir).unwrap_err().to_string();
    assert!(
        e.contains("training statistics are in format 99, newer than this kiln reads (1)"),
        "{e}"
    );
}
