//! A kiln bundle written as an ONNX model, for onnxruntime, Triton or KServe: the network (dense
//! layers, or wide and deep without embeddings) or the tree ensemble, the head kiln serves
//! (`label` and `probabilities` for a classifier, one value for a regressor), and the fitted
//! transform in front when ONNX can express every feature of it (numbers imputed, clipped,
//! log-scaled and scaled; categories one-hot from a vocabulary with at most one
//! out-of-vocabulary bucket). Otherwise the graph takes kiln's transformed features, and says so.

use std::collections::BTreeMap;

use kiln_core::bundle::{Activation, Architecture, Manifest, Task, Weight};
use kiln_core::data::ColumnType;
use kiln_core::transform::{FittedOp, Output, Scale};
use kiln_core::trees::{Ensemble, Split};
use prost::Message;

use super::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attribute_type, data_type,
};

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The serialized ONNX model.
    pub bytes: Vec<u8>,
    /// Whether the graph takes raw columns (the transform is inside it).
    pub transform_included: bool,
    /// The graph's inputs, in order.
    pub inputs: Vec<String>,
    /// Why the transform is not inside, when it is not.
    pub note: Option<String>,
}

/// Builds a graph node by node.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: usize,
}

fn attr(name: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        ..AttributeProto::default()
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::INT,
        i,
        ..attr(name)
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::FLOAT,
        f,
        ..attr(name)
    }
}

fn text(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::STRING,
        s: s.as_bytes().to_vec(),
        ..attr(name)
    }
}

fn ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::INTS,
        ints,
        ..attr(name)
    }
}

fn floats(name: &str, floats: Vec<f32>) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::FLOATS,
        floats,
        ..attr(name)
    }
}

fn texts(name: &str, values: &[String]) -> AttributeProto {
    AttributeProto {
        r#type: attribute_type::STRINGS,
        strings: values.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name)
    }
}

fn value_info(name: &str, elem: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Some(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: String::new(),
                            },
                            None => Dimension {
                                dim_value: None,
                                dim_param: "batch".into(),
                            },
                        })
                        .collect(),
                }),
            }),
            sequence_type: None,
            map_type: None,
        }),
    }
}

impl Builder {
    fn fresh(&mut self, hint: &str) -> String {
        self.names += 1;
        format!("{hint}_{}", self.names)
    }

    /// A float initializer.
    fn constant(&mut self, hint: &str, dims: &[usize], data: Vec<f32>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: data_type::FLOAT,
            float_data: data,
            name: name.clone(),
            ..TensorProto::default()
        });
        name
    }

    fn int_constant(&mut self, hint: &str, data: Vec<i64>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: data_type::INT64,
            int64_data: data,
            name: name.clone(),
            ..TensorProto::default()
        });
        name
    }

    /// Adds a node with one output and returns the output's name.
    fn node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.named(op, domain, inputs, attributes, &out);
        out
    }

    /// Adds a node whose output has a chosen name.
    fn named(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        output: &str,
    ) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute: attributes,
        });
    }

    fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.constant(hint, &[], vec![v])
    }
}

const ML: &str = "ai.onnx.ml";

/// Why the transform cannot go inside the graph, if it cannot.
fn transform_blocker(manifest: &Manifest) -> Option<String> {
    let t = &manifest.transform;
    if t.features().is_empty() {
        return Some("the model has no kiln transform".into());
    }
    for f in t.features() {
        let ty = t
            .inputs()
            .iter()
            .find(|c| c.name == f.column)
            .map(|c| c.column_type);
        match &f.op {
            FittedOp::Numeric { .. } if ty.is_some_and(ColumnType::is_numeric) => {}
            FittedOp::Vocabulary {
                oov_buckets,
                output: Output::OneHot,
                ..
            } if *oov_buckets <= 1 && ty == Some(ColumnType::Categorical) => {}
            FittedOp::Numeric { .. } => {
                return Some(format!("`{}` is not a numeric column", f.column));
            }
            FittedOp::Vocabulary { .. } => {
                return Some(format!(
                    "`{}` uses several hashed out-of-vocabulary buckets, ids or a \
                     non-categorical column",
                    f.column
                ));
            }
            FittedOp::Bucketize { .. } => {
                return Some(format!("`{}` is bucketized", f.column));
            }
            FittedOp::Hash { .. } => return Some(format!("`{}` is hashed", f.column)),
        }
    }
    None
}

/// The transform as ONNX nodes from raw column inputs; returns the inputs and the features'
/// value `[N, dense width]`.
fn transform_nodes(b: &mut Builder, manifest: &Manifest) -> (Vec<ValueInfoProto>, String) {
    let t = &manifest.transform;
    let mut inputs: Vec<ValueInfoProto> = Vec::new();
    let mut parts = Vec::new();
    for f in t.features() {
        if !inputs.iter().any(|i| i.name == f.column) {
            let ty = t
                .inputs()
                .iter()
                .find(|c| c.name == f.column)
                .map_or(ColumnType::Float, |c| c.column_type);
            let elem = if ty == ColumnType::Categorical {
                data_type::STRING
            } else {
                data_type::FLOAT
            };
            inputs.push(value_info(&f.column, elem, &[None, Some(1)]));
        }
        let x = f.column.as_str();
        match &f.op {
            FittedOp::Numeric {
                impute,
                clip,
                log1p,
                scale,
                ..
            } => {
                let mut v = x.to_string();
                if let Some(i) = impute {
                    v = b.node(
                        "Imputer",
                        ML,
                        &[&v],
                        vec![
                            floats("imputed_value_floats", vec![*i as f32]),
                            float("replaced_value_float", f32::NAN),
                        ],
                    );
                }
                if let Some([lo, hi]) = clip {
                    let (lo, hi) = (b.scalar("lo", *lo as f32), b.scalar("hi", *hi as f32));
                    v = b.node("Clip", "", &[&v, &lo, &hi], vec![]);
                }
                if *log1p {
                    let one = b.scalar("one", 1.0);
                    let plus = b.node("Add", "", &[&v, &one], vec![]);
                    v = b.node("Log", "", &[&plus], vec![]);
                }
                match scale {
                    Scale::None => {}
                    Scale::Standardize { mean, std } => {
                        let (m, s) = (b.scalar("mean", *mean as f32), b.scalar("std", *std as f32));
                        let centred = b.node("Sub", "", &[&v, &m], vec![]);
                        v = b.node("Div", "", &[&centred, &s], vec![]);
                    }
                    Scale::MinMax { min, max } => {
                        let lo = b.scalar("min", *min as f32);
                        let width = if max > min {
                            (1.0 / (max - min)) as f32
                        } else {
                            0.0
                        };
                        let w = b.scalar("inverse_range", width);
                        let shifted = b.node("Sub", "", &[&v, &lo], vec![]);
                        v = b.node("Mul", "", &[&shifted, &w], vec![]);
                    }
                }
                parts.push(v);
            }
            FittedOp::Vocabulary {
                impute,
                vocabulary,
                oov_buckets,
                ..
            } => {
                let n = vocabulary.len() as i64;
                let oov = if *oov_buckets == 1 { n } else { -1 };
                let id_of = |k: &str| {
                    vocabulary
                        .iter()
                        .position(|v| v == k)
                        .map_or(oov, |i| i as i64)
                };
                // A missing category arrives as "": it takes the imputed value's id.
                let missing = impute.as_deref().map_or(oov, id_of);
                let mut keys = vocabulary.clone();
                let mut values: Vec<i64> = (0..n).collect();
                if !vocabulary.iter().any(|v| v.is_empty()) {
                    keys.push(String::new());
                    values.push(missing);
                }
                let ids = b.node(
                    "LabelEncoder",
                    ML,
                    &[x],
                    vec![
                        texts("keys_strings", &keys),
                        ints("values_int64s", values),
                        int("default_int64", oov),
                    ],
                );
                let width = n + i64::from(*oov_buckets == 1);
                let hot = b.node(
                    "OneHotEncoder",
                    ML,
                    &[&ids],
                    vec![ints("cats_int64s", (0..width).collect()), int("zeros", 1)],
                );
                let shape = b.int_constant("shape", vec![-1, width]);
                parts.push(b.node("Reshape", "", &[&hot, &shape], vec![]));
            }
            _ => {}
        }
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let features = b.node("Concat", "", &refs, vec![int("axis", 1)]);
    (inputs, features)
}

/// `x @ W + b` for a bundle's dense layer `prefix`.
fn dense(
    b: &mut Builder,
    weights: &BTreeMap<String, Weight>,
    prefix: &str,
    x: &str,
) -> Result<String, String> {
    let w = weights
        .get(&format!("{prefix}.weight"))
        .ok_or_else(|| format!("tensor `{prefix}.weight` is missing"))?;
    let bias = weights
        .get(&format!("{prefix}.bias"))
        .ok_or_else(|| format!("tensor `{prefix}.bias` is missing"))?;
    let wn = b.constant(&format!("{prefix}.weight"), &w.shape, w.data.clone());
    let bn = b.constant(&format!("{prefix}.bias"), &bias.shape, bias.data.clone());
    Ok(b.node("Gemm", "", &[x, &wn, &bn], vec![]))
}

fn activate(b: &mut Builder, a: Activation, x: &str) -> String {
    match a {
        Activation::Relu => b.node("Relu", "", &[x], vec![]),
        Activation::Tanh => b.node("Tanh", "", &[x], vec![]),
        Activation::Gelu => {
            // x · ½ · (1 + erf(x / √2)), as kiln's networks compute it.
            let root2 = b.scalar("sqrt2", std::f32::consts::SQRT_2);
            let (half, one) = (b.scalar("half", 0.5), b.scalar("one", 1.0));
            let scaled = b.node("Div", "", &[x, &root2], vec![]);
            let e = b.node("Erf", "", &[&scaled], vec![]);
            let plus = b.node("Add", "", &[&e, &one], vec![]);
            let halved = b.node("Mul", "", &[&plus, &half], vec![]);
            b.node("Mul", "", &[x, &halved], vec![])
        }
    }
}

/// The model's raw outputs (logits or values) from the features.
fn model_nodes(
    b: &mut Builder,
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    x: &str,
) -> Result<String, String> {
    match &manifest.architecture {
        Architecture::Mlp {
            hidden, activation, ..
        } => layers(b, weights, x, hidden.len(), *activation),
        Architecture::WideDeep {
            embeddings,
            hidden,
            activation,
            ..
        } => {
            if !embeddings.is_empty() {
                return Err(
                    "wide and deep with embeddings is not exported yet (its id features have no \
                     ONNX form here)"
                        .into(),
                );
            }
            let deep = layers(b, weights, x, hidden.len(), *activation)?;
            let wide = dense(b, weights, "wide", x)?;
            Ok(b.node("Add", "", &[&deep, &wide], vec![]))
        }
        Architecture::Trees {
            inputs,
            ids,
            outputs,
            ..
        } => {
            if *ids > 0 {
                return Err("trees that split on category ids are not exported yet".into());
            }
            let e = Ensemble::from_weights(weights, *inputs, *ids, *outputs)?;
            trees(b, &e, x)
        }
        Architecture::Onnx { .. } => Err("the model is an imported graph already".into()),
    }
}

fn layers(
    b: &mut Builder,
    weights: &BTreeMap<String, Weight>,
    x: &str,
    hidden: usize,
    activation: Activation,
) -> Result<String, String> {
    let mut v = x.to_string();
    for i in 0..=hidden {
        v = dense(b, weights, &format!("dense.{i}"), &v)?;
        if i < hidden {
            v = activate(b, activation, &v);
        }
    }
    Ok(v)
}

/// An ensemble as `TreeEnsembleRegressor` (raw scores, one target per output): each split's
/// true branch is its left (`x <= threshold`, or a missing value when it goes left).
fn trees(b: &mut Builder, e: &Ensemble, x: &str) -> Result<String, String> {
    let mut a: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let (mut modes, mut values) = (Vec::new(), Vec::new());
    let (mut t_tree, mut t_node, mut t_id, mut t_weight) = (vec![], vec![], vec![], vec![]);
    for (tree, (root, output)) in e.roots.iter().zip(&e.outputs_of).enumerate() {
        // The nodes of this tree, depth first from its root, renumbered from 0.
        let mut order = vec![*root as usize];
        let mut i = 0;
        while i < order.len() {
            let node = &e.nodes[order[i]];
            if !matches!(node.split, Split::Leaf(_)) {
                order.push(node.left as usize);
                order.push(node.right as usize);
            }
            i += 1;
        }
        let position: std::collections::HashMap<usize, i64> = order
            .iter()
            .enumerate()
            .map(|(i, at)| (*at, i as i64))
            .collect();
        let id = |n: u32| position.get(&(n as usize)).copied().unwrap_or(0);
        for (local, at) in order.iter().enumerate() {
            let node = &e.nodes[*at];
            a.entry("nodes_treeids").or_default().push(tree as i64);
            a.entry("nodes_nodeids").or_default().push(local as i64);
            match node.split {
                Split::Leaf(v) => {
                    for k in [
                        "nodes_featureids",
                        "nodes_truenodeids",
                        "nodes_falsenodeids",
                    ] {
                        a.entry(k).or_default().push(0);
                    }
                    a.entry("nodes_missing_value_tracks_true")
                        .or_default()
                        .push(0);
                    modes.push("LEAF".to_string());
                    values.push(0.0);
                    t_tree.push(tree as i64);
                    t_node.push(local as i64);
                    t_id.push(i64::from(*output));
                    t_weight.push(v);
                }
                Split::Numeric {
                    feature,
                    threshold,
                    default_left,
                } => {
                    a.entry("nodes_featureids")
                        .or_default()
                        .push(i64::from(feature));
                    a.entry("nodes_truenodeids")
                        .or_default()
                        .push(id(node.left));
                    a.entry("nodes_falsenodeids")
                        .or_default()
                        .push(id(node.right));
                    a.entry("nodes_missing_value_tracks_true")
                        .or_default()
                        .push(i64::from(default_left));
                    modes.push("BRANCH_LEQ".to_string());
                    values.push(threshold);
                }
                Split::Categorical { .. } => {
                    return Err("trees with categorical splits are not exported yet".into());
                }
            }
        }
    }
    let mut attributes: Vec<AttributeProto> = a.into_iter().map(|(k, v)| ints(k, v)).collect();
    attributes.extend([
        texts("nodes_modes", &modes),
        floats("nodes_values", values),
        ints("target_treeids", t_tree),
        ints("target_nodeids", t_node),
        ints("target_ids", t_id),
        floats("target_weights", t_weight),
        int("n_targets", e.outputs() as i64),
        floats("base_values", e.base.clone()),
        text("aggregate_function", "SUM"),
        text("post_transform", "NONE"),
    ]);
    Ok(b.node("TreeEnsembleRegressor", ML, &[x], attributes))
}

/// Writes a kiln bundle's model (and its transform, where ONNX can express it) as ONNX.
pub fn export(manifest: &Manifest, weights: &BTreeMap<String, Weight>) -> Result<Exported, String> {
    let mut b = Builder::default();
    let blocker = transform_blocker(manifest);
    let (inputs, features) = match &blocker {
        None => transform_nodes(&mut b, manifest),
        Some(_) => {
            let width = manifest
                .transform
                .dense_width()
                .max(manifest.architecture.inputs());
            if manifest.transform.id_width() > 0 {
                return Err(
                    "the model reads category ids (embeddings or tree splits on ids), which the \
                     exported graph cannot take yet"
                        .into(),
                );
            }
            (
                vec![value_info(
                    "features",
                    data_type::FLOAT,
                    &[None, Some(width as i64)],
                )],
                "features".to_string(),
            )
        }
    };
    let raw = model_nodes(&mut b, manifest, weights, &features)?;
    let outputs = match manifest.task {
        Task::Regression => {
            b.named("Identity", "", &[&raw], vec![], &manifest.target);
            vec![value_info(
                &manifest.target,
                data_type::FLOAT,
                &[None, Some(1)],
            )]
        }
        task => {
            let probabilities = if task == Task::BinaryClassification {
                let p = b.node("Sigmoid", "", &[&raw], vec![]);
                let one = b.scalar("one", 1.0);
                let q = b.node("Sub", "", &[&one, &p], vec![]);
                b.node("Concat", "", &[&q, &p], vec![int("axis", 1)])
            } else {
                b.node("Softmax", "", &[&raw], vec![int("axis", 1)])
            };
            b.named("Identity", "", &[&probabilities], vec![], "probabilities");
            let best = b.node(
                "ArgMax",
                "",
                &["probabilities"],
                vec![int("axis", 1), int("keepdims", 0)],
            );
            let n = manifest.labels.len() as i64;
            b.named(
                "LabelEncoder",
                ML,
                &[&best],
                vec![
                    ints("keys_int64s", (0..n).collect()),
                    texts("values_strings", &manifest.labels),
                    text("default_string", ""),
                ],
                "label",
            );
            vec![
                value_info("label", data_type::STRING, &[None]),
                value_info("probabilities", data_type::FLOAT, &[None, Some(n)]),
            ]
        }
    };
    let input_names = inputs.iter().map(|i| i.name.clone()).collect();
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: ML.into(),
                version: 3,
            },
        ],
        producer_name: "kiln".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} model of `{}`{}",
            match manifest.task {
                Task::BinaryClassification => "binary classification",
                Task::MultiClassification => "multi-class classification",
                Task::Regression => "regression",
            },
            manifest.target,
            match &blocker {
                None => String::new(),
                Some(why) => format!("; it takes kiln's transformed features ({why})"),
            }
        ),
        graph: Some(GraphProto {
            node: b.nodes,
            name: "kiln".into(),
            initializer: b.initializers,
            input: inputs,
            output: outputs,
        }),
        functions: Vec::new(),
    };
    Ok(Exported {
        bytes: model.encode_to_vec(),
        transform_included: blocker.is_none(),
        inputs: input_names,
        note: blocker,
    })
}
