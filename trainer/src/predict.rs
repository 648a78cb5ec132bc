//! Scoring: a bundle's network over rows in chunks (or its trees, on kiln-core's evaluator), its
//! outputs turned into probabilities or values, and `Predictor`, which a reloaded bundle and
//! training's test metrics share.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{sigmoid, softmax};
use kiln_core::bundle::{Architecture, Manifest, Task, Weight};
use kiln_core::data::Table;
use kiln_core::transform::{FittedTransform, SparseId};
use kiln_core::trees::Ensemble;

use crate::config::{DeviceChoice, TrainError};
use crate::device::device;
use crate::model::{self, Net};

/// Rows of dense features, id columns and targets (class ids or values), row-major.
pub struct Dense<'a> {
    pub x: &'a [f32],
    /// `rows × k` ids (empty when `k` is 0).
    pub ids: &'a [u32],
    pub y: &'a [f32],
    pub d: usize,
    pub k: usize,
}

/// Runs the network over row-major features in chunks; returns its raw outputs.
pub(crate) fn forward_rows(net: &Net, data: &Dense<'_>, device: &Device) -> Vec<f32> {
    let (d, k) = (data.d, data.k);
    let rows = match (d, k) {
        (0, 0) => 0,
        (0, k) => data.ids.len() / k,
        (d, _) => data.x.len() / d,
    };
    let mut out = Vec::new();
    let chunk = 4096;
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        let x = Tensor::<2>::from_data(
            TensorData::new(data.x[start * d..end * d].to_vec(), [end - start, d]),
            device,
        );
        let ids = (k > 0).then(|| {
            let v: Vec<i64> = data.ids[start * k..end * k]
                .iter()
                .map(|v| i64::from(*v))
                .collect();
            Tensor::<2, Int>::from_data(TensorData::new(v, [end - start, k]), device)
        });
        out.extend(model::to_vec(net.forward(x, ids).into_data()));
        start = end;
    }
    out
}

/// Turns raw network outputs into what the task reports: class probabilities or values.
pub(crate) fn finish_outputs(
    task: Task,
    raw: Vec<f32>,
    outputs: usize,
    device: &Device,
) -> Vec<f32> {
    if raw.is_empty() {
        return raw;
    }
    let rows = raw.len() / outputs;
    let t = Tensor::<2>::from_data(TensorData::new(raw, [rows, outputs]), device);
    match task {
        Task::BinaryClassification => {
            let p = model::to_vec(sigmoid(t).into_data());
            p.iter().flat_map(|p| [1.0 - p, *p]).collect()
        }
        Task::MultiClassification => model::to_vec(softmax(t, 1).into_data()),
        Task::Regression => model::to_vec(t.into_data()),
    }
}

/// Probabilities from either raw logits (width 1 or k) or already-finished probabilities (2 or k).
pub(crate) fn probabilities(task: Task, out: &[f32], width: usize) -> (Vec<f32>, usize) {
    match (task, width) {
        (Task::BinaryClassification, 1) => (
            out.iter()
                .flat_map(|z| {
                    let p = 1.0 / (1.0 + (-z).exp());
                    [1.0 - p, p]
                })
                .collect(),
            2,
        ),
        (Task::BinaryClassification, _) => (out.to_vec(), 2),
        (_, k) if is_probability_rows(out, k) => (out.to_vec(), k),
        (_, k) => {
            let mut p = Vec::with_capacity(out.len());
            for row in out.chunks(k) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                p.extend(e.iter().map(|v| v / s));
            }
            (p, k)
        }
    }
}

pub(crate) fn is_probability_rows(out: &[f32], k: usize) -> bool {
    out.chunks(k).all(|r| {
        r.iter().all(|v| (0.0..=1.0).contains(v)) && (r.iter().sum::<f32>() - 1.0).abs() < 1e-3
    })
}

/// A network reading the rows of a sparse view.
pub(crate) fn sparse_net(net: Net, (_, positions, kinds): &SparseView) -> Net {
    let hot = kinds
        .iter()
        .filter(|s| matches!(s, SparseId::OneHot(_)))
        .count();
    net.with_sparse_inputs(positions, hot)
}

/// A transform's sparse view: the view, the positions of its dense values among the original
/// dense features, and what each of its id columns is.
pub(crate) type SparseView = (FittedTransform, Vec<usize>, Vec<SparseId>);

/// Rows through a sparse view of a transform: its dense values; per row, the active one-hot
/// positions (where each output's one-hot columns start, plus its id) and then the transform's
/// own ids in their order; and the widths of both.
pub(crate) fn sparse_features(
    (view, _, kinds): &SparseView,
    table: &Table,
) -> Result<(Vec<f32>, Vec<u32>, usize, usize), TrainError> {
    let f = view.apply_table(table)?;
    let k = f.id_width;
    let mut ids = vec![0u32; f.ids.len()];
    let hot = kinds
        .iter()
        .filter(|s| matches!(s, SparseId::OneHot(_)))
        .count();
    for (row, out) in f.ids.chunks(k.max(1)).zip(ids.chunks_mut(k.max(1))) {
        let mut h = 0;
        for (id, kind) in row.iter().zip(kinds) {
            match kind {
                SparseId::OneHot(start) => {
                    out[h] = id + *start as u32;
                    h += 1;
                }
                SparseId::Id(original) => out[hot + original] = *id,
            }
        }
    }
    Ok((f.dense, ids, f.dense_width, k))
}

/// A tree ensemble's raw scores of `rows` rows, in blocks across threads.
fn score_trees(trees: &Ensemble, rows: usize, dense: &[f32], ids: &[u32]) -> Vec<f32> {
    use rayon::prelude::*;
    const BLOCK: usize = 4096;
    let (d, k, outputs) = (trees.dense, trees.ids, trees.outputs());
    let mut out = vec![0.0f32; rows * outputs];
    out.par_chunks_mut(BLOCK * outputs)
        .enumerate()
        .for_each(|(b, block)| {
            let first = b * BLOCK;
            let n = block.len() / outputs.max(1);
            block.copy_from_slice(&trees.score(
                n,
                &dense[first * d..(first + n) * d],
                &ids[first * k..(first + n) * k],
            ));
        });
    out
}

/// A loaded bundle that scores tables: the fitted transform, then the network or the trees.
pub struct Predictor {
    task: Task,
    transform: FittedTransform,
    /// The transform's sparse view, when the network reads one-hot inputs as index lookups.
    sparse: Option<SparseView>,
    model: Scorer,
    outputs: usize,
    device: Device,
}

enum Scorer {
    Net(Net),
    Trees(Ensemble),
}

impl Predictor {
    /// Builds the network of a bundle on a device (no autodiff).
    pub fn new(
        manifest: &Manifest,
        weights: &BTreeMap<String, Weight>,
        choice: DeviceChoice,
    ) -> Result<Predictor, TrainError> {
        let device = device(choice)?;
        let outputs = manifest.architecture.outputs();
        let sparse = matches!(
            manifest.architecture,
            Architecture::Mlp { .. } | Architecture::WideDeep { .. }
        )
        .then(|| manifest.transform.sparse_view())
        .flatten();
        let model = match &manifest.architecture {
            Architecture::Trees { inputs, ids, .. } => Scorer::Trees(
                Ensemble::from_weights(weights, *inputs, *ids, outputs)
                    .map_err(|m| TrainError::Data(format!("bundle trees: {m}")))?,
            ),
            arch => {
                let net = Net::from_weights(arch, weights, &device)
                    .map_err(|m| TrainError::Data(format!("bundle weights: {m}")))?;
                Scorer::Net(match &sparse {
                    Some(view) => sparse_net(net, view),
                    None => net,
                })
            }
        };
        Ok(Predictor {
            task: manifest.task,
            transform: manifest.transform.clone(),
            sparse,
            model,
            outputs,
            device,
        })
    }

    /// Numbers per row of [`Predictor::predict`]: 2 for binary (P(class 0), P(class 1)), k classes, or 1 value.
    pub fn width(&self) -> usize {
        match self.task {
            Task::BinaryClassification => 2,
            _ => self.outputs,
        }
    }

    /// Class probabilities (classification) or values (regression) per row, row-major.
    pub fn predict(&self, table: &Table) -> Result<Vec<f32>, TrainError> {
        let (x, ids, d, k) = match &self.sparse {
            Some(view) => sparse_features(view, table)?,
            None => {
                let f = self.transform.apply_table(table)?;
                (f.dense, f.ids, f.dense_width, f.id_width)
            }
        };
        let data = Dense {
            x: &x,
            ids: &ids,
            y: &[],
            d,
            k,
        };
        let raw = match &self.model {
            Scorer::Net(net) => forward_rows(net, &data, &self.device),
            Scorer::Trees(trees) => score_trees(trees, table.num_rows(), &x, &ids),
        };
        Ok(finish_outputs(self.task, raw, self.outputs, &self.device))
    }
}
