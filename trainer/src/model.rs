//! The network: dense layers on burn, and its weights to and from a bundle's named tensors.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{gelu, relu, tanh};
use kiln_core::bundle::{Activation, Weight};

/// Dense layers with an activation and dropout between them; no hidden layers is a linear model.
#[derive(Module, Debug)]
pub struct Net {
    layers: Vec<Linear>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl Net {
    pub fn new(sizes: &[usize], activation: Activation, dropout: f64, device: &Device) -> Net {
        Net {
            layers: sizes
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            dropout: DropoutConfig::new(dropout).init(),
            activation,
        }
    }

    /// Logits (classification) or values (regression), `[rows, outputs]`.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = match self.activation {
                    Activation::Relu => relu(x),
                    Activation::Tanh => tanh(x),
                    Activation::Gelu => gelu(x),
                };
                x = self.dropout.forward(x);
            }
        }
        x
    }

    /// The weights as a bundle names them: `dense.{i}.weight` `[in, out]`, `dense.{i}.bias` `[out]`.
    pub fn weights(&self) -> BTreeMap<String, Weight> {
        let mut out = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let w = layer.weight.val();
            let shape = w.dims().to_vec();
            out.insert(
                format!("dense.{i}.weight"),
                Weight {
                    shape,
                    data: to_vec(w.into_data()),
                },
            );
            if let Some(b) = &layer.bias {
                let b = b.val();
                let shape = b.dims().to_vec();
                out.insert(
                    format!("dense.{i}.bias"),
                    Weight {
                        shape,
                        data: to_vec(b.into_data()),
                    },
                );
            }
        }
        out
    }

    /// Rebuilds a network from a bundle's tensors; `None` names the first missing or misshapen one.
    pub fn from_weights(
        sizes: &[usize],
        activation: Activation,
        weights: &BTreeMap<String, Weight>,
        device: &Device,
    ) -> Result<Net, String> {
        let mut net = Net::new(sizes, activation, 0.0, device);
        for (i, layer) in net.layers.iter_mut().enumerate() {
            let (inp, out) = (sizes[i], sizes[i + 1]);
            let w = take(weights, &format!("dense.{i}.weight"), &[inp, out])?;
            let b = take(weights, &format!("dense.{i}.bias"), &[out])?;
            layer.weight =
                Param::from_tensor(Tensor::from_data(TensorData::new(w, [inp, out]), device));
            layer.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [out]),
                device,
            )));
        }
        Ok(net)
    }
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
