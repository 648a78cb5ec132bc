//! The network: dense layers on burn, and its weights to and from a bundle's named tensors.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{gelu, relu, tanh};
use kiln_core::bundle::{Activation, Architecture, Weight};

/// Dense layers with an activation and dropout between them (no hidden layers is a linear
/// model); for wide and deep, embeddings of the id columns join the dense features at the input
/// of the layers, and a linear "wide" part of the dense features is added to the output.
#[derive(Module, Debug)]
pub struct Net {
    embeddings: Vec<Embedding>,
    wide: Option<Linear>,
    layers: Vec<Linear>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    /// When the first layer reads one-hot inputs as index lookups: the positions among its
    /// inputs of the dense values that `forward` receives; its ids are then the active one-hot
    /// positions of each row.
    #[module(skip)]
    sparse: Option<(Vec<i64>, usize)>,
}

/// The parts of an architecture, as burn layers need them.
struct Shape {
    /// Sizes of the dense stack, input first.
    sizes: Vec<usize>,
    /// `(ids, width)` of each embedding table.
    tables: Vec<(usize, usize)>,
    /// `(inputs, outputs)` of the wide part.
    wide: Option<(usize, usize)>,
    activation: Activation,
}

fn shape(arch: &Architecture) -> Shape {
    match arch {
        // Not a network: `fit_network` and `from_weights` refuse it before building layers.
        arch @ (Architecture::Trees { .. } | Architecture::Onnx { .. }) => Shape {
            sizes: vec![arch.inputs(), arch.outputs()],
            tables: vec![],
            wide: None,
            activation: Activation::Relu,
        },
        Architecture::Mlp {
            inputs,
            hidden,
            activation,
            outputs,
        } => {
            let mut sizes = vec![*inputs];
            sizes.extend(hidden);
            sizes.push(*outputs);
            Shape {
                sizes,
                tables: vec![],
                wide: None,
                activation: *activation,
            }
        }
        Architecture::WideDeep {
            inputs,
            embeddings,
            hidden,
            activation,
            outputs,
        } => {
            let mut sizes = vec![inputs + embeddings.iter().map(|e| e.width).sum::<usize>()];
            sizes.extend(hidden);
            sizes.push(*outputs);
            let tables = embeddings.iter().map(|e| (e.ids, e.width)).collect();
            Shape {
                sizes,
                tables,
                wide: Some((*inputs, *outputs)),
                activation: *activation,
            }
        }
    }
}

impl Net {
    pub fn new(arch: &Architecture, dropout: f64, device: &Device) -> Net {
        let Shape {
            sizes,
            tables,
            wide,
            activation,
        } = shape(arch);
        Net {
            embeddings: tables
                .iter()
                .map(|(ids, width)| EmbeddingConfig::new(*ids, *width).init(device))
                .collect(),
            wide: wide.map(|(i, o)| LinearConfig::new(i, o).init(device)),
            layers: sizes
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            dropout: DropoutConfig::new(dropout).init(),
            activation,
            sparse: None,
        }
    }

    /// The same network with dropout at rate `p` between its hidden layers.
    pub fn with_dropout(mut self, p: f64) -> Net {
        self.dropout = DropoutConfig::new(p).init();
        self
    }

    /// Sets the output layer's bias to `bias` and a wide part's to zero, so that the untrained
    /// network already answers the training split's class shares (their logits) or its mean.
    pub fn starting_at(mut self, bias: &[f32], device: &Device) -> Net {
        let n = bias.len();
        if let Some(last) = self.layers.last_mut() {
            last.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias.to_vec(), [n]),
                device,
            )));
        }
        if let Some(wide) = self.wide.as_mut() {
            wide.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.0f32; n], [n]),
                device,
            )));
        }
        self
    }

    /// The same network reading its one-hot inputs as index lookups (an embedding of the active
    /// columns, summed): `forward` then takes the dense values at `positions` of the first
    /// layer's (and the wide part's) dense inputs, and as ids each row's `hot` active one-hot
    /// positions followed by its embedding ids. Weights are unchanged.
    pub fn with_sparse_inputs(mut self, positions: &[usize], hot: usize) -> Net {
        self.sparse = Some((positions.iter().map(|p| *p as i64).collect(), hot));
        self
    }

    /// A linear map of sparse rows through the first `inputs` rows of `w`: the dense values
    /// times their rows, plus the sum of the active positions' rows.
    fn sparse_linear(
        w: Tensor<2>,
        x: Tensor<2>,
        hot: Tensor<2, Int>,
        positions: &[i64],
    ) -> Tensor<2> {
        let [rows, k] = hot.dims();
        let out = w.dims()[1];
        let device = x.device();
        let mut y = w
            .clone()
            .select(0, hot.reshape([rows * k]))
            .reshape([rows, k, out])
            .sum_dim(1)
            .reshape([rows, out]);
        if !positions.is_empty() {
            let p = Tensor::<1, Int>::from_data(
                TensorData::new(positions.to_vec(), [positions.len()]),
                &device,
            );
            y = y + x.matmul(w.select(0, p));
        }
        y
    }

    /// The forward pass on sparse rows.
    fn forward_sparse(
        &self,
        x: Tensor<2>,
        ids: Tensor<2, Int>,
        positions: &[i64],
        hot: usize,
    ) -> Tensor<2> {
        let [rows, k] = ids.dims();
        let hot_ids = ids.clone().slice([0..rows, 0..hot]);
        let bias = |l: &Linear| l.bias.as_ref().map(|b| b.val().unsqueeze::<2>());
        let wide = self.wide.as_ref().map(|w| {
            let y = Self::sparse_linear(w.weight.val(), x.clone(), hot_ids.clone(), positions);
            match bias(w) {
                Some(b) => y + b,
                None => y,
            }
        });
        let first = &self.layers[0];
        let w = first.weight.val();
        let mut y = Self::sparse_linear(w.clone(), x, hot_ids, positions);
        if !self.embeddings.is_empty() {
            let embedded = Tensor::cat(self.embedded(&ids, hot), 1);
            let [n_in, out] = w.dims();
            let width = embedded.dims()[1];
            y = y + embedded.matmul(w.slice([n_in - width..n_in, 0..out]));
        }
        debug_assert_eq!(k, hot + self.embeddings.len());
        let x = match bias(first) {
            Some(b) => y + b,
            None => y,
        };
        self.layers_from(x, 1, wide)
    }

    /// The embeddings of the id columns from `from` on, one `[rows, width]` tensor each.
    fn embedded(&self, ids: &Tensor<2, Int>, from: usize) -> Vec<Tensor<2>> {
        let rows = ids.dims()[0];
        self.embeddings
            .iter()
            .enumerate()
            .map(|(j, table)| {
                let e = table.forward(ids.clone().slice([0..rows, from + j..from + j + 1]));
                let width = e.dims()[2];
                e.reshape([rows, width])
            })
            .collect()
    }

    /// The dense layers from layer `from` on (`x` is the output of the one before, or the input
    /// when `from` is 0), with the wide part added at the end.
    fn layers_from(&self, mut x: Tensor<2>, from: usize, wide: Option<Tensor<2>>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        if from > 0 && from - 1 < last {
            x = self.activate(x);
        }
        for (i, layer) in self.layers.iter().enumerate().skip(from) {
            x = layer.forward(x);
            if i < last {
                x = self.activate(x);
            }
        }
        match wide {
            Some(w) => x + w,
            None => x,
        }
    }

    /// Logits (classification) or values (regression), `[rows, outputs]`, from dense features
    /// `[rows, inputs]` and, for wide and deep, ids `[rows, id columns]` (or, on sparse inputs,
    /// the dense values and the active one-hot positions followed by the ids).
    pub fn forward(&self, x: Tensor<2>, ids: Option<Tensor<2, Int>>) -> Tensor<2> {
        if let (Some((positions, hot)), Some(ids)) = (&self.sparse, &ids) {
            return self.forward_sparse(x, ids.clone(), positions, *hot);
        }
        let wide = self.wide.as_ref().map(|w| w.forward(x.clone()));
        let x = match ids {
            Some(ids) if !self.embeddings.is_empty() => {
                let mut parts = vec![x];
                parts.extend(self.embedded(&ids, 0));
                Tensor::cat(parts, 1)
            }
            _ => x,
        };
        self.layers_from(x, 0, wide)
    }

    /// The activation and dropout between layers.
    fn activate(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match self.activation {
            Activation::Relu => relu(x),
            Activation::Tanh => tanh(x),
            Activation::Gelu => gelu(x),
        };
        self.dropout.forward(x)
    }

    /// The weights as a bundle names them: `embedding.{j}`, `wide.weight`/`wide.bias`,
    /// `dense.{i}.weight` `[in, out]` and `dense.{i}.bias` `[out]`.
    pub fn weights(&self) -> BTreeMap<String, Weight> {
        let mut out = BTreeMap::new();
        for (j, table) in self.embeddings.iter().enumerate() {
            out.insert(format!("embedding.{j}"), weight(table.weight.val()));
        }
        if let Some(wide) = &self.wide {
            export_linear(&mut out, "wide", wide);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            export_linear(&mut out, &format!("dense.{i}"), layer);
        }
        out
    }

    /// Rebuilds a network from a bundle's tensors; the error names the first missing or misshapen one.
    pub fn from_weights(
        arch: &Architecture,
        weights: &BTreeMap<String, Weight>,
        device: &Device,
    ) -> Result<Net, String> {
        match arch {
            Architecture::Trees { .. } => return Err("a tree ensemble is not a network".into()),
            Architecture::Onnx { .. } => {
                return Err("an imported ONNX graph runs in kiln's serving runtime".into());
            }
            _ => {}
        }
        let mut net = Net::new(arch, 0.0, device);
        let Shape {
            sizes,
            tables,
            wide,
            ..
        } = shape(arch);
        for (j, (table, (ids, width))) in net.embeddings.iter_mut().zip(&tables).enumerate() {
            let w = take(weights, &format!("embedding.{j}"), &[*ids, *width])?;
            table.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(w, [*ids, *width]),
                device,
            ));
        }
        if let (Some(layer), Some((inp, out))) = (net.wide.as_mut(), wide) {
            import_linear(layer, "wide", [inp, out], weights, device)?;
        }
        for (i, layer) in net.layers.iter_mut().enumerate() {
            import_linear(
                layer,
                &format!("dense.{i}"),
                [sizes[i], sizes[i + 1]],
                weights,
                device,
            )?;
        }
        Ok(net)
    }
}

fn weight<const D: usize>(t: Tensor<D>) -> Weight {
    let shape = t.dims().to_vec();
    Weight {
        shape,
        data: to_vec(t.into_data()),
    }
}

/// `{prefix}.weight` and `{prefix}.bias` of a dense layer.
fn export_linear(out: &mut BTreeMap<String, Weight>, prefix: &str, layer: &Linear) {
    out.insert(format!("{prefix}.weight"), weight(layer.weight.val()));
    if let Some(b) = &layer.bias {
        out.insert(format!("{prefix}.bias"), weight(b.val()));
    }
}

fn import_linear(
    layer: &mut Linear,
    prefix: &str,
    [inp, out]: [usize; 2],
    weights: &BTreeMap<String, Weight>,
    device: &Device,
) -> Result<(), String> {
    let w = take(weights, &format!("{prefix}.weight"), &[inp, out])?;
    let b = take(weights, &format!("{prefix}.bias"), &[out])?;
    layer.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [inp, out]), device));
    layer.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [out]),
        device,
    )));
    Ok(())
}

fn take(
    weights: &BTreeMap<String, Weight>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, String> {
    match weights.get(name) {
        Some(w) if w.shape == shape => Ok(w.data.clone()),
        Some(w) => Err(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            w.shape
        )),
        None => Err(format!("tensor `{name}` is missing")),
    }
}

pub(crate) fn to_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}
