//! kiln's ONNX runtime against onnxruntime: every fixture under `tests/fixtures/onnx` (made by
//! skl2onnx, onnxmltools and the onnx helper API, see its `make.py`) run on its rows must give
//! onnxruntime's outputs: labels exactly, numbers within 1e-5 (relative for large values).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kiln_server::onnx::{Data, Elem, Graph, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx")
}

/// The graph's inputs built from fixture rows: one `[N, …]` tensor from all columns, or one
/// `[N, 1]` tensor per column, by the inputs' names.
fn feeds(graph: &Graph, columns: &[String], rows: &[Vec<serde_json::Value>]) -> Vec<Value> {
    let n = rows.len();
    let number = |v: &serde_json::Value| v.as_f64().map_or(f32::NAN, |x| x as f32);
    if graph.inputs().len() == 1 {
        let port = &graph.inputs()[0];
        let mut shape = vec![n];
        shape.extend(port.dims[1..].iter().map(|d| d.unwrap()));
        let data = rows.iter().flatten().map(number).collect();
        return vec![Value::floats(shape, data)];
    }
    graph
        .inputs()
        .iter()
        .map(|port| {
            let c = columns.iter().position(|c| *c == port.name).unwrap();
            match port.elem {
                Elem::Str => Value::strings(
                    vec![n, 1],
                    rows.iter()
                        .map(|r| r[c].as_str().unwrap_or("").to_string())
                        .collect(),
                ),
                _ => Value::floats(vec![n, 1], rows.iter().map(|r| number(&r[c])).collect()),
            }
        })
        .collect()
}

fn check(name: &str) {
    let dir = fixtures();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.expected.json"))).unwrap(),
    )
    .unwrap();
    let graph = Graph::parse(&std::fs::read(dir.join(format!("{name}.onnx"))).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let columns: Vec<String> = serde_json::from_value(expected["columns"].clone()).unwrap();
    let rows: Vec<Vec<serde_json::Value>> =
        serde_json::from_value(expected["rows"].clone()).unwrap();
    let outputs = graph
        .run(feeds(&graph, &columns, &rows))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = expected["outputs"].as_object().unwrap();
    for (port, got) in graph.outputs().iter().zip(outputs) {
        let want = &want[&port.name];
        let items = want.as_array().unwrap();
        match (&got.data, items.first()) {
            (Data::Str(v), _) => {
                let w: Vec<String> = serde_json::from_value(want.clone()).unwrap();
                assert_eq!(v, &w, "{name}: output {}", port.name);
            }
            (Data::I64(v), _) => {
                let w: Vec<String> = items.iter().map(|x| x.to_string()).collect();
                let g: Vec<String> = v.iter().map(i64::to_string).collect();
                assert_eq!(g, w, "{name}: output {}", port.name);
            }
            (Data::F32(v), _) => {
                let w: Vec<f64> = items
                    .iter()
                    .flat_map(|r| match r.as_array() {
                        Some(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
                        None => vec![r.as_f64().unwrap()],
                    })
                    .collect();
                assert_eq!(v.len(), w.len(), "{name}: output {} length", port.name);
                for (i, (g, w)) in v.iter().zip(&w).enumerate() {
                    let tol = 1e-5 * w.abs().max(1.0);
                    assert!(
                        (*g as f64 - w).abs() <= tol,
                        "{name}: output {} value {i}: kiln {g}, onnxruntime {w}",
                        port.name
                    );
                }
            }
        }
    }
}

#[test]
fn scikit_learn_logistic_regression_with_zipmap() {
    check("logreg");
}

#[test]
fn scikit_learn_column_transformer_with_mixed_inputs() {
    check("pipeline");
}

#[test]
fn scikit_learn_random_forest() {
    check("forest");
}

#[test]
fn scikit_learn_hist_gradient_boosting_regressor() {
    check("hgb_regressor");
}

#[test]
fn xgboost_through_onnxmltools() {
    check("xgboost");
}

#[test]
fn lightgbm_classifier_and_regressor_through_onnxmltools() {
    check("lightgbm");
    check("lightgbm_regressor");
}

#[test]
fn a_torch_style_mlp_and_a_small_cnn() {
    check("mlp");
    check("cnn");
}
