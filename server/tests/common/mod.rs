//! Fixtures for the server's tests: bundles with known weights on the bundled breast cancer data
//! and on synthetic click-through data, registered in a fresh registry, and a router over them.
#![allow(dead_code, clippy::unwrap_used, clippy::too_many_arguments)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kiln_core::bundle::{
    self, Activation, Architecture, BUNDLE_FORMAT_VERSION, BUNDLE_MAGIC, EmbeddingShape, Manifest,
    Task, Weight,
};
use kiln_core::data::{ReadOptions, Table};
use kiln_core::registry::{Expect, NewRun, Registry};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::TransformSpec;
use serde_json::Value;
use tower::ServiceExt;

use kiln_server::{AppState, Selection, ServerConfig};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn breast_cancer() -> Table {
    kiln_core::data::read(
        &repo().join("examples/data/breast_cancer.csv"),
        &ReadOptions::default(),
    )
    .unwrap()
}

pub fn ctr(rows: u64) -> Table {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctr.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    kiln_core::synth::write_ctr_csv(&mut f, rows, 11, &kiln_core::progress::NoProgress).unwrap();
    drop(f);
    kiln_core::data::read(&path, &ReadOptions::default()).unwrap()
}

/// Deterministic weights in [-0.5, 0.5) from a seed.
pub fn weights(seed: u64, shape: &[usize]) -> Weight {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let data = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Weight {
        shape: shape.to_vec(),
        data,
    }
}

/// A bundle for `table` with the transform `spec`, the architecture from `arch(inputs)` and
/// weights from `seed`.
pub fn make_bundle(
    dir: &Path,
    table: &Table,
    spec: &str,
    target: &str,
    task: Task,
    labels: &[&str],
    arch: Architecture,
    seed: u64,
) {
    let spec = TransformSpec::from_toml(spec).unwrap();
    let fitted = spec.fit(table).unwrap();
    let mut w = BTreeMap::new();
    let (inputs, tables, hidden, outputs, wide) = match &arch {
        Architecture::Mlp {
            inputs,
            hidden,
            outputs,
            ..
        } => (*inputs, vec![], hidden.clone(), *outputs, false),
        Architecture::WideDeep {
            inputs,
            embeddings,
            hidden,
            outputs,
            ..
        } => (*inputs, embeddings.clone(), hidden.clone(), *outputs, true),
        Architecture::Trees { .. } | Architecture::Onnx { .. } => {
            panic!("networks only; trees come from training, graphs from import")
        }
    };
    assert_eq!(inputs, fitted.dense_width());
    let mut sizes = vec![inputs + tables.iter().map(|e| e.width).sum::<usize>()];
    sizes.extend(hidden);
    sizes.push(outputs);
    let mut s = seed;
    let mut next = || {
        s += 1;
        s
    };
    for (j, e) in tables.iter().enumerate() {
        w.insert(format!("embedding.{j}"), weights(next(), &[e.ids, e.width]));
    }
    if wide {
        w.insert("wide.weight".into(), weights(next(), &[inputs, outputs]));
        w.insert("wide.bias".into(), weights(next(), &[outputs]));
    }
    for (i, pair) in sizes.windows(2).enumerate() {
        w.insert(
            format!("dense.{i}.weight"),
            weights(next(), &[pair[0], pair[1]]),
        );
        w.insert(format!("dense.{i}.bias"), weights(next(), &[pair[1]]));
    }
    let manifest = Manifest {
        magic: BUNDLE_MAGIC.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        task,
        target: target.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        signature: fitted.inputs().to_vec(),
        transform: fitted,
        architecture: arch,
        hyperparameters: BTreeMap::new(),
        training_statistics: DatasetStatistics::compute(table),
        metrics: BTreeMap::new(),
        feature_importance: BTreeMap::new(),
        lineage: Default::default(),
    };
    bundle::write(dir, &manifest, &w).unwrap();
}

pub const BC_SPEC: &str = r#"
[[features]]
columns = ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
  "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
  "mean fractal dimension", "radius error", "texture error", "perimeter error", "area error",
  "smoothness error", "compactness error", "concavity error", "concave points error",
  "symmetry error", "fractal dimension error", "worst radius", "worst texture",
  "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
  "worst concave points", "worst symmetry", "worst fractal dimension"]
impute = "median"
encode = "standardize"
"#;

pub const CTR_SPEC: &str = r#"
[[features]]
columns = ["i1", "i2", "i5"]
impute = "median"
log1p = true
clip = [0, 1e9]
encode = "standardize"

[[features]]
columns = ["c1"]
encode = "vocabulary"

[[features]]
columns = ["c3", "c4"]
encode = "vocabulary"
min_frequency = 5
oov_buckets = 2
output = "id"
"#;

/// A logistic model on breast cancer: 30 columns, one output.
pub fn bc_bundle(dir: &Path, seed: u64) {
    make_bundle(
        dir,
        &breast_cancer(),
        BC_SPEC,
        "label",
        Task::BinaryClassification,
        &["0", "1"],
        Architecture::Mlp {
            inputs: 30,
            hidden: vec![],
            activation: Activation::Relu,
            outputs: 1,
        },
        seed,
    );
}

/// A wide-and-deep model on click-through data, with categorical inputs.
pub fn ctr_bundle(dir: &Path, seed: u64, table: &Table) {
    let fitted = TransformSpec::from_toml(CTR_SPEC)
        .unwrap()
        .fit(table)
        .unwrap();
    let embeddings = fitted
        .id_names()
        .iter()
        .zip(fitted.id_cardinalities())
        .map(|(c, n)| EmbeddingShape {
            column: c.clone(),
            ids: *n as usize,
            width: 4,
        })
        .collect();
    make_bundle(
        dir,
        table,
        CTR_SPEC,
        "label",
        Task::BinaryClassification,
        &["0", "1"],
        Architecture::WideDeep {
            inputs: fitted.dense_width(),
            embeddings,
            hidden: vec![8],
            activation: Activation::Gelu,
            outputs: 1,
        },
        seed,
    );
}

/// Registers a bundle directory as the next version of `model`.
pub fn register(reg: &Registry, model: &str, bundle: &Path) -> u32 {
    let run = reg.create_run(NewRun::default()).unwrap();
    reg.log_artifact(run.id, "model", bundle).unwrap();
    reg.register_version(model, run.id, "model", "", None)
        .unwrap()
        .version
}

/// A registry with `bc` versions 1 and 2 (different weights; champion → 1) and `ctr` version 1
/// (champion → 1).
pub struct Fixture {
    pub home: tempfile::TempDir,
    pub registry: Arc<Registry>,
}

pub fn fixture() -> Fixture {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(&home.path().join("home")).unwrap();
    let scratch = home.path().join("bundles");
    bc_bundle(&scratch.join("bc1"), 1);
    bc_bundle(&scratch.join("bc2"), 2);
    ctr_bundle(&scratch.join("ctr1"), 3, &ctr(2000));
    register(&reg, "bc", &scratch.join("bc1"));
    register(&reg, "bc", &scratch.join("bc2"));
    register(&reg, "ctr", &scratch.join("ctr1"));
    reg.set_alias("bc", "champion", 1, Expect::Any, "test", "")
        .unwrap();
    reg.set_alias("ctr", "champion", 1, Expect::Any, "test", "")
        .unwrap();
    Fixture {
        home,
        registry: Arc::new(reg),
    }
}

pub async fn state(f: &Fixture, config: ServerConfig) -> AppState {
    kiln_server::start(f.registry.clone(), Selection::All, config)
        .await
        .unwrap()
}

/// One request through the router: status, headers and body.
pub async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = kiln_server::router(state.clone())
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

/// A JSON request; the answer's status and JSON body.
pub async fn json(state: &AppState, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, bytes) = call(
        state,
        method,
        uri,
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

pub async fn get(state: &AppState, uri: &str) -> (StatusCode, Value) {
    let (status, _, bytes) = call(state, "GET", uri, &[], Body::empty()).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// The first `n` breast cancer rows as JSON objects (without the label).
pub fn bc_records(n: usize) -> Vec<Value> {
    let t = breast_cancer();
    let columns: Vec<(String, Vec<Option<f64>>)> = (0..t.num_columns())
        .filter(|i| t.column_name(*i) != "label")
        .map(|i| (t.column_name(i).to_string(), t.numbers(i)))
        .collect();
    (0..n)
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (name, values) in &columns {
                m.insert(name.clone(), serde_json::json!(values[r]));
            }
            Value::Object(m)
        })
        .collect()
}

/// Column names of breast cancer in signature order.
pub fn bc_columns() -> Vec<String> {
    bc_records(1)[0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// The CSRF token a UI page put into its forms.
pub fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))
        .to_string()
}

/// The `probabilities` output of a V2 JSON answer, flat.
pub fn probabilities(v: &Value) -> Vec<f64> {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
