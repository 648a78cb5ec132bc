//! kiln's ONNX runtime: a graph read from an `.onnx` file, checked once (every operator known,
//! every value produced before it is read, constant subgraphs computed), then run node by node
//! for each request.
//!
//! It runs the standard operators that exported MLPs, linear models and small CNNs use
//! ([`ops`]), and the ONNX-ML operators of scikit-learn, XGBoost and LightGBM exports ([`ml`]),
//! whose tree ensembles run on kiln's own tree evaluator. Anything else is refused when the graph
//! is read, naming the operator, never when a request arrives.

mod attrs;
pub mod export;
mod ml;
mod model;
mod ops;
pub mod proto;
pub mod tensor;

use std::collections::HashMap;

use prost::Message;

use attrs::Attrs;
pub use model::Imported;
use ops::Op;
use proto::{ModelProto, TypeProto};
pub use tensor::{Data, Elem, OpResult, Value};

/// A graph input or output as the graph declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub elem: Elem,
    /// Each dimension: its size, or `None` when symbolic (the batch).
    pub dims: Vec<Option<usize>>,
    /// A sequence of maps (scikit-learn's ZipMap probabilities) rather than a tensor.
    pub zipmap: bool,
}

/// One node, its values resolved to slots.
#[derive(Debug, Clone)]
struct Step {
    op: Op,
    op_type: String,
    name: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
}

/// A loaded graph, ready to run.
#[derive(Debug, Clone)]
pub struct Graph {
    steps: Vec<Step>,
    /// Values known without any input (initializers and constant subgraphs), by slot.
    constants: Vec<Option<Value>>,
    inputs: Vec<Port>,
    input_slots: Vec<usize>,
    outputs: Vec<Port>,
    output_slots: Vec<usize>,
    /// The operator that produces each output (`None` for an input or a constant).
    producers: Vec<Option<String>>,
    labels: Option<Vec<String>>,
    pub producer: String,
}

fn port(name: &str, t: Option<&TypeProto>) -> OpResult<Port> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(format!(
            "the graph names an input or output `{}`; kiln takes names of 1 to 256 characters \
             without control characters",
            tensor::shown(name)
        ));
    }
    let t = t.ok_or_else(|| format!("`{name}` has no type"))?;
    if let Some(seq) = &t.sequence_type {
        let map = seq
            .elem_type
            .as_ref()
            .and_then(|e| e.map_type.as_ref())
            .ok_or_else(|| format!("`{name}` is a sequence kiln does not read"))?;
        let value = map
            .value_type
            .as_ref()
            .and_then(|v| v.tensor_type.as_ref())
            .ok_or_else(|| format!("`{name}` is a map kiln does not read"))?;
        return Ok(Port {
            name: name.to_string(),
            elem: Elem::from_code(value.elem_type).unwrap_or(Elem::Float),
            dims: vec![None],
            zipmap: true,
        });
    }
    let tensor = t
        .tensor_type
        .as_ref()
        .ok_or_else(|| format!("`{name}` is not a tensor"))?;
    let elem = Elem::from_code(tensor.elem_type).ok_or_else(|| {
        format!(
            "`{name}` has element type {}, which kiln does not read",
            tensor.elem_type
        )
    })?;
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| {
                    d.dim_value
                        .and_then(|v| usize::try_from(v).ok())
                        .filter(|v| *v > 0)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Port {
        name: name.to_string(),
        elem,
        dims,
        zipmap: false,
    })
}

impl Graph {
    /// Reads and checks a serialized ONNX model.
    pub fn parse(bytes: &[u8]) -> OpResult<Graph> {
        let model = ModelProto::decode(bytes)
            .map_err(|e| format!("not an ONNX model (the file does not decode: {e})"))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or("not an ONNX model (it has no graph)")?;
        if !model.functions.is_empty() {
            return Err(format!(
                "the model defines local functions ({}), which kiln does not run; export it \
                 with functions inlined",
                model
                    .functions
                    .iter()
                    .map(|f| tensor::shown(&f.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut opset = 0;
        for o in &model.opset_import {
            match o.domain.as_str() {
                "" | "ai.onnx" => opset = o.version,
                "ai.onnx.ml" => {}
                other => {
                    return Err(format!(
                        "the model uses operator domain `{}`, which kiln does not run",
                        tensor::shown(other)
                    ));
                }
            }
        }
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut constants: Vec<Option<Value>> = Vec::new();
        for t in &graph.initializer {
            let v = Value::from_proto(t)?;
            slots.insert(t.name.clone(), constants.len());
            constants.push(Some(v));
        }
        let mut inputs = Vec::new();
        let mut input_slots = Vec::new();
        for i in &graph.input {
            if slots.contains_key(&i.name) {
                continue;
            }
            inputs.push(port(&i.name, i.r#type.as_ref())?);
            slots.insert(i.name.clone(), constants.len());
            input_slots.push(constants.len());
            constants.push(None);
        }
        if inputs.is_empty() {
            return Err("the graph has no inputs".into());
        }
        let mut steps = Vec::with_capacity(graph.node.len());
        let mut unsupported: Vec<String> = Vec::new();
        let mut produced_by: HashMap<usize, String> = HashMap::new();
        let mut labels = None;
        let (mut classifier_labels, mut lookup_labels) = (None, None);
        for (n, node) in graph.node.iter().enumerate() {
            let name = if node.name.is_empty() {
                format!("#{n}")
            } else {
                tensor::shown(&node.name)
            };
            let what = format!("node `{name}` ({})", tensor::shown(&node.op_type));
            let a = Attrs(node);
            let op = match Op::parse(&node.domain, &node.op_type, &a, opset) {
                Ok(Some(op)) => Some(op),
                Ok(None) => {
                    let full = if node.domain.is_empty() {
                        tensor::shown(&node.op_type)
                    } else {
                        tensor::shown(&format!("{}.{}", node.domain, node.op_type))
                    };
                    if !unsupported.contains(&full) {
                        unsupported.push(full);
                    }
                    None
                }
                Err(e) => return Err(format!("{what}: {e}")),
            };
            if matches!(
                node.op_type.as_str(),
                "LinearClassifier" | "TreeEnsembleClassifier" | "ZipMap"
            ) && node.domain == "ai.onnx.ml"
            {
                classifier_labels = Some(());
                let names = [
                    "classlabels_strings",
                    "classlabels_int64s",
                    "classlabels_ints",
                ]
                .iter()
                .find(|n| a.has(n))
                .map(|n| {
                    if *n == "classlabels_strings" {
                        a.strings(n)
                    } else {
                        a.ints(n).iter().map(i64::to_string).collect()
                    }
                });
                if names.is_some() {
                    labels = names;
                }
            }
            // A label lookup from class index to name (as kiln's own exports end), when no
            // classifier names its classes.
            if node.op_type == "LabelEncoder"
                && node.domain == "ai.onnx.ml"
                && classifier_labels.is_none()
            {
                let keys = a.ints("keys_int64s");
                let values = a.strings("values_strings");
                if !keys.is_empty()
                    && keys.len() == values.len()
                    && keys.iter().enumerate().all(|(i, k)| *k == i as i64)
                {
                    lookup_labels = Some(values);
                }
            }
            let ins = node
                .input
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        Ok(None)
                    } else {
                        slots.get(i).copied().map(Some).ok_or_else(|| {
                            format!(
                                "{what} reads `{}`, which no input, initializer or earlier node \
                                 produces",
                                tensor::shown(i)
                            )
                        })
                    }
                })
                .collect::<OpResult<Vec<_>>>()?;
            let outs = node
                .output
                .iter()
                .map(|o| {
                    let s = constants.len();
                    constants.push(None);
                    if !o.is_empty() {
                        slots.insert(o.clone(), s);
                        produced_by.insert(s, node.op_type.clone());
                    }
                    s
                })
                .collect();
            if let Some(op) = op {
                steps.push(Step {
                    op,
                    op_type: node.op_type.clone(),
                    name: what,
                    inputs: ins,
                    outputs: outs,
                });
            }
        }
        if classifier_labels.is_none() {
            labels = lookup_labels;
        }
        if !unsupported.is_empty() {
            return Err(format!(
                "the graph uses operators kiln does not run: {}",
                unsupported.join(", ")
            ));
        }
        let mut outputs = Vec::new();
        let mut output_slots = Vec::new();
        let mut producers = Vec::new();
        for o in &graph.output {
            let s = *slots
                .get(&o.name)
                .ok_or_else(|| format!("output `{}` is produced by no node", o.name))?;
            outputs.push(port(&o.name, o.r#type.as_ref())?);
            output_slots.push(s);
            producers.push(produced_by.get(&s).cloned());
        }
        if outputs.is_empty() {
            return Err("the graph has no outputs".into());
        }
        let mut g = Graph {
            steps,
            constants,
            inputs,
            input_slots,
            outputs,
            output_slots,
            producers,
            labels,
            producer: format!("{} {}", model.producer_name, model.producer_version)
                .trim()
                .to_string(),
        };
        g.fold_constants()?;
        Ok(g)
    }

    /// Computes once the nodes whose inputs are all constant, and drops them from the steps.
    fn fold_constants(&mut self) -> OpResult<()> {
        let mut kept = Vec::with_capacity(self.steps.len());
        for step in std::mem::take(&mut self.steps) {
            let constant = step
                .inputs
                .iter()
                .all(|i| i.is_none_or(|s| self.constants[s].is_some()));
            if !constant {
                kept.push(step);
                continue;
            }
            let ins: Vec<Option<&Value>> = step
                .inputs
                .iter()
                .map(|i| i.and_then(|s| self.constants[s].as_ref()))
                .collect();
            let outs = step
                .op
                .eval(&ins)
                .map_err(|e| format!("{}: {e}", step.name))?;
            for (slot, v) in step.outputs.iter().zip(outs) {
                self.constants[*slot] = Some(v);
            }
        }
        self.steps = kept;
        Ok(())
    }

    pub fn inputs(&self) -> &[Port] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Port] {
        &self.outputs
    }

    /// The operator that produces output `i`, if a node does.
    pub fn producer_of(&self, i: usize) -> Option<&str> {
        self.producers.get(i).and_then(|p| p.as_deref())
    }

    /// The class labels a classifier in the graph names (the last one that does).
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Runs the graph on one value per input (in [`Graph::inputs`] order) and returns its
    /// outputs in order.
    pub fn run(&self, feeds: Vec<Value>) -> OpResult<Vec<Value>> {
        if feeds.len() != self.inputs.len() {
            return Err(format!(
                "the graph takes {} inputs, got {}",
                self.inputs.len(),
                feeds.len()
            ));
        }
        let mut values: Vec<Option<Value>> = vec![None; self.constants.len()];
        for ((port, slot), v) in self.inputs.iter().zip(&self.input_slots).zip(feeds) {
            check_feed(port, &v)?;
            values[*slot] = Some(v);
        }
        for step in &self.steps {
            let ins: Vec<Option<&Value>> = step
                .inputs
                .iter()
                .map(|i| i.and_then(|s| self.constants[s].as_ref().or(values[s].as_ref())))
                .collect();
            if let Some(pos) = step
                .inputs
                .iter()
                .zip(&ins)
                .position(|(slot, v)| slot.is_some() && v.is_none())
            {
                return Err(format!("{}: its input {pos} has no value", step.name));
            }
            let outs = step
                .op
                .eval(&ins)
                .map_err(|e| format!("{}: {e}", step.name))?;
            if outs.is_empty() && !step.outputs.is_empty() {
                return Err(format!("{} ({}) produced nothing", step.name, step.op_type));
            }
            for (slot, v) in step.outputs.iter().zip(outs) {
                values[*slot] = Some(v);
            }
        }
        self.output_slots
            .iter()
            .zip(&self.outputs)
            .map(|(s, port)| {
                self.constants[*s]
                    .clone()
                    .or_else(|| values[*s].take())
                    .ok_or_else(|| format!("output `{}` has no value", port.name))
            })
            .collect()
    }
}

/// Refuses a value that does not fit the input's declared type and fixed dimensions.
fn check_feed(port: &Port, v: &Value) -> OpResult<()> {
    let fits = match (&v.data, port.elem) {
        (Data::Str(_), Elem::Str) => true,
        (Data::Str(_), _) | (_, Elem::Str) => false,
        _ => true,
    };
    if !fits {
        return Err(format!(
            "input `{}` takes {}, got {}",
            port.name,
            if port.elem == Elem::Str {
                "strings"
            } else {
                "numbers"
            },
            v.kind()
        ));
    }
    if !port.dims.is_empty() {
        let same = port.dims.len() == v.shape.len()
            && port
                .dims
                .iter()
                .zip(&v.shape)
                .all(|(d, s)| d.is_none_or(|d| d == *s));
        if !same {
            let want: Vec<String> = port
                .dims
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect();
            return Err(format!(
                "input `{}` takes shape [{}], got {:?}",
                port.name,
                want.join(", "),
                v.shape
            ));
        }
    }
    Ok(())
}
