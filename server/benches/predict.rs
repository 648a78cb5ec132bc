//! The serving hot path in process, without a network: a V2 `infer` request through the router
//! (decode, transform, forward on a blocking thread, encode) against the router answering a
//! health check (the cost of the HTTP layer alone); and the runtime's rows → outputs step against
//! the fitted transform alone, for a logistic regression and for 100 boosted trees of 31 leaves;
//! and 16 concurrent requests with the prediction log off, logging
//! every request, and logging one in ten (the log's cost at full load).
//!
//! `cargo bench -p kiln-server --bench predict`
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_core::bundle::{
    self, Activation, Architecture, BUNDLE_FORMAT_VERSION, BUNDLE_MAGIC, Manifest, Task, Weight,
};
use kiln_core::data::ReadOptions;
use kiln_core::registry::{Expect, NewRun, Registry};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::TransformSpec;
use kiln_server::{Runtime, Selection, ServerConfig};
use tower::ServiceExt;

fn logistic_bundle(dir: &Path) -> Vec<String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let table = kiln_core::data::read(
        &repo.join("examples/data/breast_cancer.csv"),
        &ReadOptions::default(),
    )
    .unwrap();
    let columns: Vec<String> = table
        .names()
        .filter(|n| *n != "label")
        .map(str::to_string)
        .collect();
    let quoted: Vec<String> = columns.iter().map(|c| format!("{c:?}")).collect();
    let spec = format!(
        "[[features]]\ncolumns = [{}]\nimpute = \"median\"\nencode = \"standardize\"\n",
        quoted.join(", ")
    );
    let fitted = TransformSpec::from_toml(&spec)
        .unwrap()
        .fit(&table)
        .unwrap();
    let d = fitted.dense_width();
    let mut w = BTreeMap::new();
    w.insert(
        "dense.0.weight".into(),
        Weight {
            shape: vec![d, 1],
            data: (0..d).map(|i| (i as f32 - 15.0) / 30.0).collect(),
        },
    );
    w.insert(
        "dense.0.bias".into(),
        Weight {
            shape: vec![1],
            data: vec![0.1],
        },
    );
    let manifest = Manifest {
        magic: BUNDLE_MAGIC.into(),
        format_version: BUNDLE_FORMAT_VERSION,
        task: Task::BinaryClassification,
        target: "label".into(),
        labels: vec!["0".into(), "1".into()],
        signature: fitted.inputs().to_vec(),
        transform: fitted,
        architecture: Architecture::Mlp {
            inputs: d,
            hidden: vec![],
            activation: Activation::Relu,
            outputs: 1,
        },
        hyperparameters: BTreeMap::new(),
        training_statistics: DatasetStatistics::compute(&table),
        metrics: BTreeMap::new(),
        feature_importance: BTreeMap::new(),
        lineage: Default::default(),
    };
    bundle::write(dir, &manifest, &w).unwrap();
    columns
}

/// The logistic bundle's manifest with 100 trees of 31 leaves in place of its network: each
/// tree splits its leaves breadth first on features and thresholds drawn from a fixed sequence.
fn tree_runtime(logistic: &Runtime) -> (Runtime, BTreeMap<String, Weight>) {
    use kiln_core::trees::{Ensemble, Node, Split};
    let mut manifest = logistic.manifest().clone();
    let d = manifest.transform.dense_width();
    let mut e = Ensemble {
        dense: d,
        ids: 0,
        base: vec![0.0],
        ..Default::default()
    };
    let mut state = 7u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 33) as u32
    };
    for _ in 0..100 {
        let root = e.nodes.len() as u32;
        e.roots.push(root);
        e.outputs_of.push(0);
        e.nodes.push(Node {
            split: Split::Leaf(0.0),
            left: 0,
            right: 0,
        });
        let mut leaves = std::collections::VecDeque::from([root as usize]);
        for _ in 0..30 {
            let Some(at) = leaves.pop_front() else { break };
            let (l, r) = (e.nodes.len() as u32, e.nodes.len() as u32 + 1);
            e.nodes[at] = Node {
                split: Split::Numeric {
                    feature: next() % d as u32,
                    threshold: (next() % 200) as f32 / 100.0 - 1.0,
                    default_left: next() % 2 == 0,
                },
                left: l,
                right: r,
            };
            for _ in 0..2 {
                e.nodes.push(Node {
                    split: Split::Leaf((next() % 100) as f32 / 1000.0 - 0.05),
                    left: 0,
                    right: 0,
                });
            }
            leaves.extend([l as usize, r as usize]);
        }
    }
    manifest.architecture = Architecture::Trees {
        inputs: d,
        ids: 0,
        outputs: 1,
        trees: 100,
    };
    let weights = e.to_weights();
    (Runtime::new(manifest, &weights).unwrap(), weights)
}

fn body(rows: usize, width: usize) -> Vec<u8> {
    let data: Vec<f64> = (0..rows * width).map(|i| 1.0 + (i % 7) as f64).collect();
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{ "name": "x", "shape": [rows, width], "datatype": "FP32", "data": data }]
    }))
    .unwrap()
}

/// A server for the bundle in `dir` (registered as `bc`, champion 1) in a registry under `home`.
fn serve_bc(
    rt: &tokio::runtime::Runtime,
    home: &Path,
    dir: &Path,
    config: ServerConfig,
) -> axum::Router {
    let registry = Arc::new(Registry::open(home).unwrap());
    let run = registry.create_run(NewRun::default()).unwrap();
    registry.log_artifact(run.id, "model", dir).unwrap();
    registry
        .register_version("bc", run.id, "model", "", None)
        .unwrap();
    registry
        .set_alias("bc", "champion", 1, Expect::Any, "bench", "")
        .unwrap();
    let state = rt
        .block_on(kiln_server::start(registry, Selection::All, config))
        .unwrap();
    kiln_server::router(state)
}

/// One V2 infer through the router; panics unless it succeeds.
async fn infer(router: axum::Router, body: Vec<u8>) -> axum::response::Response {
    let response = router
        .oneshot(
            Request::post("/v2/models/bc/infer")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.status().is_success());
    response
}

fn bench(c: &mut Criterion) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("bc");
    let columns = logistic_bundle(&dir);
    let width = columns.len();

    let runtime = Runtime::load(&dir).unwrap();
    let signature = runtime.manifest().signature.clone();
    let one: Vec<f64> = (0..width).map(|i| 1.0 + i as f64).collect();
    let mut g = c.benchmark_group("runtime");
    g.bench_function("transform only, 1 row (baseline)", |b| {
        b.iter(|| {
            let rows = kiln_server::decode::from_matrix(&signature, one.clone(), 1).unwrap();
            runtime.features(&rows).unwrap()
        })
    });
    g.bench_function("transform + candle forward, 1 row", |b| {
        b.iter(|| {
            let rows = kiln_server::decode::from_matrix(&signature, one.clone(), 1).unwrap();
            runtime.predict(&rows).unwrap()
        })
    });
    let (trees, tree_weights) = tree_runtime(&runtime);
    g.bench_function("transform + 100 trees of 31 leaves, 1 row", |b| {
        b.iter(|| {
            let rows = kiln_server::decode::from_matrix(&signature, one.clone(), 1).unwrap();
            trees.predict(&rows).unwrap()
        })
    });
    let many: Vec<f64> = (0..32 * width).map(|i| 1.0 + (i % 7) as f64).collect();
    g.bench_function("transform + candle forward, 32 rows", |b| {
        b.iter(|| {
            let rows = kiln_server::decode::from_matrix(&signature, many.clone(), 32).unwrap();
            runtime.predict(&rows).unwrap()
        })
    });
    g.finish();

    // Imported graphs on kiln's ONNX engine: the same 100 trees exported to ONNX and imported
    // back (against the native evaluator above), and scikit-learn's logistic regression as
    // skl2onnx writes it (a scaler, a linear classifier, a normalizer and a ZipMap). The
    // exported trees are left in the temporary directory for onnxruntime to time on the same
    // row (benches/compare/onnx.sh).
    let exported = kiln_server::onnx::export::export(trees.manifest(), &tree_weights).unwrap();
    let file = std::env::temp_dir().join("kiln-bench-trees100.onnx");
    std::fs::write(&file, &exported.bytes).unwrap();
    let imported_dir = scratch.path().join("trees-onnx");
    kiln_server::import::import(&exported.bytes, &Default::default(), &imported_dir).unwrap();
    let imported = Runtime::load(&imported_dir).unwrap();
    let imported_signature = imported.manifest().signature.clone();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let logreg_dir = scratch.path().join("logreg-onnx");
    kiln_server::import::import(
        &std::fs::read(repo.join("tests/fixtures/onnx/logreg.onnx")).unwrap(),
        &Default::default(),
        &logreg_dir,
    )
    .unwrap();
    let logreg = Runtime::load(&logreg_dir).unwrap();
    let logreg_signature = logreg.manifest().signature.clone();
    let mut g = c.benchmark_group("onnx");
    g.bench_function(
        "100 trees on kiln's tree evaluator, 1 row (baseline)",
        |b| {
            b.iter(|| {
                let rows = kiln_server::decode::from_matrix(&signature, one.clone(), 1).unwrap();
                trees.predict(&rows).unwrap()
            })
        },
    );
    g.bench_function(
        "100 trees exported to ONNX, on kiln's ONNX engine, 1 row",
        |b| {
            b.iter(|| {
                let rows =
                    kiln_server::decode::from_matrix(&imported_signature, one.clone(), 1).unwrap();
                imported.predict(&rows).unwrap()
            })
        },
    );
    g.bench_function("skl2onnx logistic regression, 1 row", |b| {
        b.iter(|| {
            let rows = kiln_server::decode::from_matrix(&logreg_signature, one.clone(), 1).unwrap();
            logreg.predict(&rows).unwrap()
        })
    });
    g.finish();
    println!("exported trees for onnxruntime: {}", file.display());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = serve_bc(
        &rt,
        &scratch.path().join("home"),
        &dir,
        ServerConfig::default(),
    );
    let one_row = body(1, width);
    let mut g = c.benchmark_group("router");
    g.bench_function("GET /v2/health/live (baseline)", |b| {
        b.to_async(&rt).iter(|| {
            let r = router.clone();
            async move {
                r.oneshot(Request::get("/v2/health/live").body(Body::empty()).unwrap())
                    .await
                    .unwrap()
            }
        })
    });
    g.bench_function("POST /v2/models/bc/infer, 1 row", |b| {
        b.to_async(&rt)
            .iter(|| infer(router.clone(), one_row.clone()))
    });
    g.finish();

    // The prediction log at full load: 16 requests at once, against the same with logging off.
    let mut g = c.benchmark_group("logging");
    g.throughput(criterion::Throughput::Elements(16));
    for (name, sample) in [
        ("16 concurrent infers, log off (baseline)", 0.0),
        ("16 concurrent infers, log every request", 1.0),
        ("16 concurrent infers, log 1 in 10", 0.1),
    ] {
        let home = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            log: kiln_server::predlog::LogConfig {
                sample,
                ..Default::default()
            },
            ..ServerConfig::default()
        };
        let router = serve_bc(&rt, home.path(), &dir, config);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let router = router.clone();
                let body = one_row.clone();
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..16 {
                        set.spawn(infer(router.clone(), body.clone()));
                    }
                    while set.join_next().await.is_some() {}
                }
            })
        });
        drop(home);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
