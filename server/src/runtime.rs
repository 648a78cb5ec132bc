//! The inference runtime: a kiln model bundle rebuilt as one of its engines (a network on candle,
//! a tree ensemble on kiln's tree evaluator, or an imported ONNX graph on kiln's ONNX runtime),
//! and the raw rows → fitted transform → model → outputs path. Everything here is synchronous;
//! the HTTP layer calls it on blocking threads.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use kiln_core::bundle::{self, Activation, Architecture, Manifest, Task, Weight};
use kiln_core::data::ColumnType;
use kiln_core::transform::Cell;
use kiln_core::trees::Ensemble;

use crate::error::ServeError;
use crate::onnx::{Graph, Imported};

/// What computes a bundle's raw outputs from its features.
enum Engine {
    Network(Network),
    Trees(Ensemble),
    /// An imported graph; it answers probabilities or values directly.
    Graph(Box<Imported>),
}

/// The network of a bundle as candle tensors.
struct Network {
    /// `[ids, width]` tables, one per id column of the transform.
    embeddings: Vec<Tensor>,
    wide: Option<(Tensor, Tensor)>,
    /// `(weight [in, out], bias [out])` per dense layer.
    layers: Vec<(Tensor, Tensor)>,
    activation: Activation,
}

/// One column of decoded request rows, in the model's signature order.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// A numeric or boolean column; `None` is a missing value.
    Numbers(Vec<Option<f64>>),
    /// A categorical column; `None` is a missing value.
    Texts(Vec<Option<String>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Numbers(v) => v.len(),
            Column::Texts(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cell(&self, row: usize) -> Cell<'_> {
        match self {
            Column::Numbers(v) => v[row].map_or(Cell::Missing, Cell::Number),
            Column::Texts(v) => v[row].as_deref().map_or(Cell::Missing, Cell::Text),
        }
    }
}

/// Request rows in a model's signature order: one column per signature column, or (for a
/// numeric tensor, without copying it apart) a row-major matrix of finite numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: usize,
    data: RowData,
}

#[derive(Debug, Clone, PartialEq)]
enum RowData {
    Columns(Vec<Column>),
    Matrix { values: Vec<f64>, width: usize },
}

impl Rows {
    /// Rows from columns of equal length, in signature order.
    pub fn from_columns(rows: usize, columns: Vec<Column>) -> Rows {
        debug_assert!(columns.iter().all(|c| c.len() == rows));
        Rows {
            rows,
            data: RowData::Columns(columns),
        }
    }

    /// Rows from a row-major matrix of `width` values per row, in signature order.
    pub fn from_matrix(rows: usize, width: usize, values: Vec<f64>) -> Rows {
        debug_assert_eq!(values.len(), rows * width);
        Rows {
            rows,
            data: RowData::Matrix { values, width },
        }
    }

    pub(crate) fn cell(&self, row: usize, input: usize) -> Cell<'_> {
        match &self.data {
            RowData::Columns(columns) => columns[input].cell(row),
            RowData::Matrix { values, width } => Cell::Number(values[row * width + input]),
        }
    }
}

/// Model features of some rows, ready for the model.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub rows: usize,
    pub dense: Vec<f32>,
    pub ids: Vec<u32>,
    /// Raw text columns, row-major, for an imported graph that reads strings ("" when missing).
    pub texts: Vec<String>,
}

impl Features {
    /// Appends another block of rows (for dynamic batching).
    pub fn extend(&mut self, other: &Features) {
        self.rows += other.rows;
        self.dense.extend_from_slice(&other.dense);
        self.ids.extend_from_slice(&other.ids);
        self.texts.extend_from_slice(&other.texts);
    }
}

/// Where a raw signature column goes for a graph that reads raw columns: its index among a
/// row's numbers, or among its texts.
#[derive(Debug, Clone, Copy)]
enum RawSlot {
    Number(usize),
    Text(usize),
}

/// A bundle loaded for serving.
pub struct Runtime {
    manifest: Manifest,
    engine: Engine,
    /// For a graph that reads raw columns, where each signature column goes.
    raw: Option<Vec<RawSlot>>,
    /// Numbers per output row: class probabilities, or one value.
    width: usize,
    outputs: usize,
}

impl Runtime {
    /// Loads a bundle directory (manifest and safetensors weights, and an imported model's
    /// graph).
    pub fn load(dir: &Path) -> Result<Runtime, ServeError> {
        let (manifest, weights) = bundle::read(dir).map_err(|e| ServeError::Load(e.to_string()))?;
        if let Architecture::Onnx { digest, .. } = &manifest.architecture {
            let path = dir.join(bundle::GRAPH_FILE);
            let bytes = std::fs::read(&path)
                .map_err(|e| ServeError::Load(format!("{}: {e}", path.display())))?;
            let found = blake3::hash(&bytes).to_hex().to_string();
            if found != *digest {
                return Err(ServeError::Load(format!(
                    "{}: its digest is {found}, the manifest says {digest}; the bundle is damaged",
                    path.display()
                )));
            }
            return Runtime::from_graph(manifest, &bytes);
        }
        Runtime::new(manifest, &weights)
    }

    /// Builds the runtime of an imported model from its manifest and graph file.
    pub fn from_graph(manifest: Manifest, bytes: &[u8]) -> Result<Runtime, ServeError> {
        let Architecture::Onnx {
            inputs,
            output,
            scores,
            outputs,
            ..
        } = &manifest.architecture
        else {
            return Err(ServeError::Load("not an imported graph".into()));
        };
        let graph = Graph::parse(bytes).map_err(|e| ServeError::Load(format!("the graph: {e}")))?;
        let t = &manifest.transform;
        let (numbers, texts, raw) = if t.features().is_empty() {
            let (mut numbers, mut texts, mut raw) = (Vec::new(), Vec::new(), Vec::new());
            for c in &manifest.signature {
                if c.column_type == ColumnType::Categorical {
                    raw.push(RawSlot::Text(texts.len()));
                    texts.push(c.name.clone());
                } else {
                    raw.push(RawSlot::Number(numbers.len()));
                    numbers.push(c.name.clone());
                }
            }
            (numbers, texts, Some(raw))
        } else {
            if t.id_width() > 0 {
                return Err(ServeError::Load(
                    "a graph behind a transform reads its dense features only; the transform \
                     makes id columns"
                        .into(),
                ));
            }
            (t.dense_names().to_vec(), Vec::new(), None)
        };
        let width = match manifest.task {
            Task::BinaryClassification => 2,
            _ => *outputs,
        };
        let imported = Imported::new(graph, inputs, &numbers, &texts, output, *scores, width)
            .map_err(|e| ServeError::Load(format!("the graph: {e}")))?;
        Ok(Runtime {
            engine: Engine::Graph(Box::new(imported)),
            raw,
            width,
            outputs: *outputs,
            manifest,
        })
    }

    /// An imported graph's chosen output on some rows, before kiln reads it as probabilities
    /// or values: its values per row, and the values.
    pub fn raw_answer(&self, rows: &Rows) -> Result<(usize, Vec<f32>), ServeError> {
        let Engine::Graph(g) = &self.engine else {
            return Err(ServeError::Internal("not an imported graph".into()));
        };
        let f = self.features(rows)?;
        g.raw(f.rows, &f.dense, &f.texts)
            .map_err(ServeError::BadInput)
    }

    /// Builds the runtime from a manifest and its tensors.
    pub fn new(
        manifest: Manifest,
        weights: &BTreeMap<String, Weight>,
    ) -> Result<Runtime, ServeError> {
        let t = &manifest.transform;
        let engine = match &manifest.architecture {
            Architecture::Onnx { .. } => {
                return Err(ServeError::Load(
                    "an imported graph loads from its bundle directory".into(),
                ));
            }
            Architecture::Trees {
                inputs,
                ids,
                outputs,
                ..
            } => {
                if *ids != t.id_width() {
                    return Err(ServeError::Load(format!(
                        "the trees read {ids} id columns but the transform makes {}",
                        t.id_width()
                    )));
                }
                Engine::Trees(
                    Ensemble::from_weights(weights, *inputs, *ids, *outputs)
                        .map_err(|m| ServeError::Load(format!("bundle trees: {m}")))?,
                )
            }
            arch => Engine::Network(
                Network::new(arch, weights)
                    .map_err(|m| ServeError::Load(format!("bundle weights: {m}")))?,
            ),
        };
        let outputs = manifest.architecture.outputs();
        let expected = manifest.architecture.inputs();
        if expected != t.dense_width() {
            return Err(ServeError::Load(format!(
                "the model takes {expected} inputs but the transform makes {} features",
                t.dense_width()
            )));
        }
        let width = match manifest.task {
            Task::BinaryClassification => 2,
            _ => outputs,
        };
        Ok(Runtime {
            manifest,
            engine,
            raw: None,
            width,
            outputs,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Numbers per row of [`Runtime::forward`].
    pub fn width(&self) -> usize {
        self.width
    }

    /// Applies the fitted transform to decoded rows (or, for a graph that reads raw columns,
    /// lays them out as numbers and texts).
    pub fn features(&self, rows: &Rows) -> Result<Features, ServeError> {
        if let Some(raw) = &self.raw {
            return Ok(raw_features(raw, rows));
        }
        let t = &self.manifest.transform;
        let (dw, iw) = (t.dense_width(), t.id_width());
        let mut out = Features {
            rows: rows.rows,
            dense: vec![0.0; rows.rows * dw],
            ids: vec![0; rows.rows * iw],
            texts: Vec::new(),
        };
        for r in 0..rows.rows {
            t.apply_cells_into(
                r,
                |i| Ok(rows.cell(r, i)),
                &mut out.dense[r * dw..(r + 1) * dw],
                &mut out.ids[r * iw..(r + 1) * iw],
            )
            .map_err(|e| ServeError::BadInput(e.to_string()))?;
        }
        Ok(out)
    }

    /// Class probabilities (classification) or values (regression), `width()` per row.
    pub fn forward(&self, f: &Features) -> Result<Vec<f32>, ServeError> {
        if f.rows == 0 {
            return Ok(Vec::new());
        }
        let raw =
            match &self.engine {
                Engine::Network(network) => network
                    .forward(f, self.manifest.transform.dense_width())
                    .map_err(|e| ServeError::Internal(format!("forward pass: {e}")))?,
                Engine::Trees(trees) => trees.score(f.rows, &f.dense, &f.ids),
                Engine::Graph(g) => {
                    return g
                        .run(f.rows, &f.dense, &f.texts)
                        .map_err(ServeError::BadInput);
                }
            };
        Ok(finish(self.manifest.task, raw, self.outputs))
    }

    /// Rows → features → outputs.
    pub fn predict(&self, rows: &Rows) -> Result<Vec<f32>, ServeError> {
        self.forward(&self.features(rows)?)
    }

    /// A row of typical values (training medians and most frequent categories), for warm-up
    /// and infrastructure checks.
    pub fn typical_rows(&self, n: usize) -> Rows {
        let stats = &self.manifest.training_statistics;
        let columns = self
            .manifest
            .signature
            .iter()
            .map(|c| {
                let s = stats.columns.iter().find(|s| s.name == c.name);
                match c.column_type {
                    ColumnType::Categorical => {
                        let top = s
                            .and_then(|s| s.categorical.as_ref())
                            .and_then(|c| c.top.first())
                            .map(|t| t.value.clone());
                        Column::Texts(vec![top; n])
                    }
                    _ => {
                        let mid = s
                            .and_then(|s| s.numeric.as_ref())
                            .and_then(|n| n.quantile(0.5))
                            .or(Some(0.0));
                        Column::Numbers(vec![mid; n])
                    }
                }
            })
            .collect();
        Rows::from_columns(n, columns)
    }

    /// Runs the model once on typical rows so that the first request does not pay for
    /// first-use allocations.
    pub fn warm_up(&self) -> Result<(), ServeError> {
        for n in [1, 8] {
            self.predict(&self.typical_rows(n))?;
        }
        Ok(())
    }
}

/// Raw columns as a graph reads them: numbers (NaN when missing) and texts ("" when missing).
fn raw_features(raw: &[RawSlot], rows: &Rows) -> Features {
    let numbers = raw
        .iter()
        .filter(|s| matches!(s, RawSlot::Number(_)))
        .count();
    let texts = raw.len() - numbers;
    let mut f = Features {
        rows: rows.rows,
        dense: vec![f32::NAN; rows.rows * numbers],
        ids: Vec::new(),
        texts: vec![String::new(); rows.rows * texts],
    };
    for r in 0..rows.rows {
        for (i, slot) in raw.iter().enumerate() {
            match (slot, rows.cell(r, i)) {
                (RawSlot::Number(j), Cell::Number(x)) => f.dense[r * numbers + j] = x as f32,
                (RawSlot::Text(j), Cell::Text(t)) => f.texts[r * texts + j] = t.to_string(),
                (RawSlot::Text(j), Cell::Number(x)) => f.texts[r * texts + j] = x.to_string(),
                _ => {}
            }
        }
    }
    f
}

/// Logits → probabilities for classification; values pass through.
fn finish(task: Task, raw: Vec<f32>, outputs: usize) -> Vec<f32> {
    match task {
        Task::BinaryClassification => raw
            .iter()
            .flat_map(|z| {
                let p = 1.0 / (1.0 + (-z).exp());
                [1.0 - p, p]
            })
            .collect(),
        Task::MultiClassification => {
            let mut out = raw;
            for row in out.chunks_mut(outputs) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in row.iter_mut() {
                    *v /= sum;
                }
            }
            out
        }
        Task::Regression => raw,
    }
}

impl Network {
    fn new(arch: &Architecture, weights: &BTreeMap<String, Weight>) -> Result<Network, String> {
        let (inputs, tables, hidden, activation, outputs, wide) = match arch {
            Architecture::Trees { .. } => return Err("a tree ensemble is not a network".into()),
            Architecture::Onnx { .. } => return Err("an imported graph is not a network".into()),
            Architecture::Mlp {
                inputs,
                hidden,
                activation,
                outputs,
            } => (*inputs, vec![], hidden, *activation, *outputs, false),
            Architecture::WideDeep {
                inputs,
                embeddings,
                hidden,
                activation,
                outputs,
            } => (
                *inputs,
                embeddings.iter().map(|e| (e.ids, e.width)).collect(),
                hidden,
                *activation,
                *outputs,
                true,
            ),
        };
        let mut sizes = vec![inputs + tables.iter().map(|(_, w)| w).sum::<usize>()];
        sizes.extend(hidden);
        sizes.push(outputs);
        let embeddings = tables
            .iter()
            .enumerate()
            .map(|(j, (ids, width))| tensor(weights, &format!("embedding.{j}"), &[*ids, *width]))
            .collect::<Result<_, _>>()?;
        let wide = if wide {
            Some(linear(weights, "wide", inputs, outputs)?)
        } else {
            None
        };
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(weights, &format!("dense.{i}"), w[0], w[1]))
            .collect::<Result<_, _>>()?;
        Ok(Network {
            embeddings,
            wide,
            layers,
            activation,
        })
    }

    fn forward(&self, f: &Features, dense_width: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_slice(&f.dense, (f.rows, dense_width), &Device::Cpu)?;
        let wide = match &self.wide {
            Some((w, b)) => Some(x.matmul(w)?.broadcast_add(b)?),
            None => None,
        };
        let mut x = if self.embeddings.is_empty() {
            x
        } else {
            let k = self.embeddings.len();
            let ids = Tensor::from_slice(&f.ids, (f.rows, k), &Device::Cpu)?;
            let mut parts = vec![x];
            for (j, table) in self.embeddings.iter().enumerate() {
                let column = ids.narrow(1, j, 1)?.flatten_all()?;
                parts.push(table.index_select(&column, 0)?);
            }
            Tensor::cat(&parts, 1)?
        };
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            x = x.matmul(w)?.broadcast_add(b)?;
            if i < last {
                x = match self.activation {
                    Activation::Relu => x.relu()?,
                    Activation::Tanh => x.tanh()?,
                    Activation::Gelu => x.gelu_erf()?,
                };
            }
        }
        if let Some(w) = wide {
            x = (x + w)?;
        }
        x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }
}

fn linear(
    weights: &BTreeMap<String, Weight>,
    prefix: &str,
    inputs: usize,
    outputs: usize,
) -> Result<(Tensor, Tensor), String> {
    Ok((
        tensor(weights, &format!("{prefix}.weight"), &[inputs, outputs])?,
        tensor(weights, &format!("{prefix}.bias"), &[outputs])?,
    ))
}

fn tensor(
    weights: &BTreeMap<String, Weight>,
    name: &str,
    shape: &[usize],
) -> Result<Tensor, String> {
    match weights.get(name) {
        Some(w) if w.shape == shape => Tensor::from_slice(&w.data, shape, &Device::Cpu)
            .map_err(|e| format!("tensor `{name}`: {e}")),
        Some(w) => Err(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            w.shape
        )),
        None => Err(format!("tensor `{name}` is missing")),
    }
}
