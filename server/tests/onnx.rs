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
    check("mlp_logits");
    check("cnn");
}

mod hostile {
    //! Graphs built to break a runtime: each is refused with a reason, never a panic, a hang or
    //! an allocation the machine does not have.
    use kiln_server::onnx::proto::*;
    use kiln_server::onnx::{Graph, Value};
    use prost::Message;

    fn info(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: elem,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                dim_value: (*d > 0).then_some(*d),
                                dim_param: if *d > 0 { String::new() } else { "n".into() },
                            })
                            .collect(),
                    }),
                }),
                sequence_type: None,
                map_type: None,
            }),
        }
    }

    fn node(op: &str, domain: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: String::new(),
            op_type: op.into(),
            domain: domain.into(),
            attribute: vec![],
        }
    }

    fn model(nodes: Vec<NodeProto>, init: Vec<TensorProto>, input: ValueInfoProto) -> Vec<u8> {
        ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetIdProto {
                    domain: String::new(),
                    version: 17,
                },
                OperatorSetIdProto {
                    domain: "ai.onnx.ml".into(),
                    version: 3,
                },
            ],
            graph: Some(GraphProto {
                node: nodes,
                name: "g".into(),
                initializer: init,
                input: vec![input],
                output: vec![info("y", data_type::FLOAT, &[0, 1])],
            }),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }

    fn ints(name: &str, v: Vec<i64>) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::INTS,
            ints: v,
            ..Default::default()
        }
    }

    fn refused(bytes: &[u8], reason: &str) {
        let e = Graph::parse(bytes)
            .err()
            .unwrap_or_else(|| panic!("accepted; wanted {reason}"));
        assert!(e.contains(reason), "{e}");
    }

    #[test]
    fn cycles_lies_and_control_characters_are_refused_when_read() {
        let x = info("x", data_type::FLOAT, &[0, 1]);
        // A node that reads its own output.
        refused(
            &model(vec![node("Relu", "", &["y"], &["y"])], vec![], x.clone()),
            "which no input",
        );
        // An initializer that claims more values than it holds.
        let lie = TensorProto {
            dims: vec![1 << 40, 1 << 40],
            data_type: data_type::FLOAT,
            float_data: vec![1.0],
            name: "w".into(),
            ..Default::default()
        };
        refused(
            &model(
                vec![node("Add", "", &["x", "w"], &["y"])],
                vec![lie],
                x.clone(),
            ),
            "too large",
        );
        // A name that would write to a terminal.
        refused(
            &model(
                vec![node("Relu", "", &["x\u{1b}[2J"], &["y"])],
                vec![],
                info("x\u{1b}[2J", 1, &[0, 1]),
            ),
            "control characters",
        );
        // A tree whose node is its own child.
        let mut trees = node("TreeEnsembleRegressor", "ai.onnx.ml", &["x"], &["y"]);
        let strings = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        trees.attribute = vec![
            ints("nodes_treeids", vec![0, 0, 0]),
            ints("nodes_nodeids", vec![0, 1, 2]),
            ints("nodes_featureids", vec![0, 0, 0]),
            AttributeProto {
                name: "nodes_modes".into(),
                r#type: attribute_type::STRINGS,
                strings: strings(&["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"]),
                ..Default::default()
            },
            AttributeProto {
                name: "nodes_values".into(),
                r#type: attribute_type::FLOATS,
                floats: vec![0.0; 3],
                ..Default::default()
            },
            ints("nodes_truenodeids", vec![1, 1, 0]),
            ints("nodes_falsenodeids", vec![2, 2, 0]),
            ints("target_treeids", vec![0]),
            ints("target_nodeids", vec![2]),
            ints("target_ids", vec![0]),
            AttributeProto {
                name: "target_weights".into(),
                r#type: attribute_type::FLOATS,
                floats: vec![1.0],
                ..Default::default()
            },
        ];
        refused(&model(vec![trees], vec![], x.clone()), "is not a tree");
        // Garbage and nesting.
        refused(&[0xff; 64], "not an ONNX model");
        let mut deep = vec![];
        for _ in 0..10_000 {
            deep.extend_from_slice(&[0x3a, 0x80, 0x80, 0x80, 0x01]);
        }
        refused(&deep, "not an ONNX model");
    }

    #[test]
    fn work_beyond_the_bounds_is_refused_when_run() {
        // A 1×1 input convolved with a 60000×60000 kernel padded to fit: billions of steps.
        let x = info("x", data_type::FLOAT, &[0, 1, 1, 1]);
        let w = TensorProto {
            dims: vec![1, 1, 1, 1],
            data_type: data_type::FLOAT,
            float_data: vec![1.0],
            name: "w".into(),
            ..Default::default()
        };
        let mut conv = node("Conv", "", &["x", "w"], &["y"]);
        conv.attribute = vec![ints("pads", vec![60_000, 60_000, 60_000, 60_000])];
        let g = Graph::parse(&model(vec![conv], vec![w], x)).unwrap();
        let e = g
            .run(vec![Value::floats(vec![1, 1, 1, 1], vec![1.0])])
            .unwrap_err();
        assert!(
            e.contains("too large") || e.contains("multiply-adds"),
            "{e}"
        );
    }
}

mod mutated {
    //! Real exports with bytes changed at random: reading and running them may fail, never
    //! panic.
    use kiln_server::onnx::{Elem, Graph, Value};
    use proptest::prelude::*;

    fn run_once(bytes: &[u8]) {
        let Ok(graph) = Graph::parse(bytes) else {
            return;
        };
        let feeds: Vec<Value> = graph
            .inputs()
            .iter()
            .map(|p| {
                let mut shape = vec![2];
                shape.extend(p.dims.iter().skip(1).map(|d| d.unwrap_or(1).min(64)));
                let n: usize = shape.iter().product();
                if p.elem == Elem::Str {
                    Value::strings(shape, vec!["a".into(); n])
                } else {
                    Value::floats(shape, (0..n).map(|i| i as f32 * 0.5 - 3.0).collect())
                }
            })
            .collect();
        let _ = graph.run(feeds);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn mutated_exports_never_panic(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let names = ["logreg", "pipeline", "forest", "xgboost", "mlp", "cnn"];
            let path = super::fixtures().join(format!("{}.onnx", names[which]));
            let mut bytes = std::fs::read(path).unwrap();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            run_once(&bytes);
        }

        /// The same with the meaning changed rather than the bytes: attribute values, shapes
        /// and wiring set to what a careless or hostile exporter might write.
        #[test]
        fn mutated_attributes_shapes_and_wiring_never_panic(
            which in 0usize..6,
            edits in proptest::collection::vec((0u8..5, any::<prop::sample::Index>(), any::<prop::sample::Index>(), -3i64..70, -5.0f32..5.0), 1..6),
        ) {
            use kiln_server::onnx::proto::ModelProto;
            use prost::Message;
            let names = ["logreg", "pipeline", "forest", "xgboost", "mlp", "cnn"];
            let path = super::fixtures().join(format!("{}.onnx", names[which]));
            let mut model = ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
            let graph = model.graph.as_mut().unwrap();
            for (kind, a, b, int, float) in edits {
                match kind {
                    0 => {
                        let at = a.index(graph.node.len());
                        let node = &mut graph.node[at];
                        if !node.attribute.is_empty() {
                            let i = b.index(node.attribute.len());
                            let attr = &mut node.attribute[i];
                            attr.i = int;
                            if !attr.ints.is_empty() {
                                let j = b.index(attr.ints.len());
                                attr.ints[j] = int;
                            }
                            if !attr.floats.is_empty() {
                                let j = b.index(attr.floats.len());
                                attr.floats[j] = float;
                            }
                        }
                    }
                    1 => {
                        let at = a.index(graph.node.len());
                        let node = &mut graph.node[at];
                        if !node.attribute.is_empty() {
                            let i = b.index(node.attribute.len());
                            let attr = &mut node.attribute[i];
                            let keep = usize::try_from(int.max(0)).unwrap_or(0);
                            attr.ints.truncate(keep);
                            attr.floats.truncate(keep);
                            attr.strings.truncate(keep);
                        }
                    }
                    2 if !graph.initializer.is_empty() => {
                        let at = a.index(graph.initializer.len());
                        let t = &mut graph.initializer[at];
                        if !t.dims.is_empty() {
                            let j = b.index(t.dims.len());
                            t.dims[j] = int;
                        }
                    }
                    3 => {
                        let n = graph.node.len();
                        let (from, to) = (a.index(n), b.index(n));
                        if let Some(out) = graph.node[from].output.first().cloned()
                            && !graph.node[to].input.is_empty()
                        {
                            let k = usize::try_from(int.max(0)).unwrap_or(0) % graph.node[to].input.len();
                            graph.node[to].input[k] = out;
                        }
                    }
                    _ => {
                        for input in &mut graph.input {
                            if let Some(t) = input.r#type.as_mut().and_then(|t| t.tensor_type.as_mut())
                                && let Some(shape) = t.shape.as_mut()
                                && shape.dim.len() > 1
                            {
                                shape.dim[1].dim_value = Some(int.max(1));
                            }
                        }
                    }
                }
            }
            run_once(&model.encode_to_vec());
        }
    }
}
