//! The model bundle: the one thing the trainer and the server share.
//!
//! A directory with `kiln-model.json` (the manifest: magic, format version, task, raw input
//! signature, fitted transform, architecture, label names, training statistics, metrics, lineage)
//! and `weights.safetensors` (named `f32` tensors). It is written to a temporary directory and
//! renamed into place, so a bundle is complete or absent.
//!
//! Tensor naming, so any framework can produce or read a bundle: dense layer `i` of the network
//! has `dense.{i}.weight` with shape `[inputs, outputs]` and `dense.{i}.bias` with `[outputs]`;
//! a wide-and-deep model adds `embedding.{j}` with shape `[ids, width]` for the `j`-th id column
//! of the transform, and its wide part `wide.weight` `[inputs, outputs]` and `wide.bias`.
//! Gradient-boosted trees are `trees.*` tensors, one entry per node (see the `trees` module).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::stats::DatasetStatistics;
use crate::transform::{FittedTransform, InputColumn};

/// The first field of every manifest.
pub const BUNDLE_MAGIC: &str = "kiln-model";
/// The version of the bundle format; readers refuse newer ones.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "kiln-model.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The graph of an imported ONNX model, beside the manifest.
pub const GRAPH_FILE: &str = "model.onnx";

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    BinaryClassification,
    MultiClassification,
    Regression,
}

/// Activation between dense layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
    Gelu,
}

/// The network, as a reader must rebuild it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// Dense layers: `inputs → hidden… → outputs`, `activation` between them; no hidden layers
    /// is linear (or logistic) regression. Outputs are logits (classification) or values.
    Mlp {
        inputs: usize,
        hidden: Vec<usize>,
        activation: Activation,
        outputs: usize,
    },
    /// Wide and deep: outputs = wide(dense features) + deep(dense features ‖ embeddings of the
    /// id columns), the deep part being dense layers as in `Mlp` whose first layer takes
    /// `inputs + Σ width` values.
    WideDeep {
        inputs: usize,
        embeddings: Vec<EmbeddingShape>,
        hidden: Vec<usize>,
        activation: Activation,
        outputs: usize,
    },
    /// Gradient-boosted trees over the transform's features: its `inputs` dense values (a
    /// missing number is NaN) and then its `ids` id columns, read as categories. Outputs are
    /// logits (classification) or values, as for a network.
    Trees {
        inputs: usize,
        ids: usize,
        outputs: usize,
        trees: usize,
    },
    /// An imported ONNX graph, kept beside the manifest as [`GRAPH_FILE`] and run by the server's
    /// ONNX runtime. Its inputs are filled from the raw signature columns (or, with a kiln
    /// transform in front, from its dense features); `output` is read as `scores`.
    Onnx {
        inputs: Vec<GraphInput>,
        /// The graph output kiln answers with.
        output: String,
        scores: Scores,
        /// Numbers per row kiln reports: classes, or 1 for a regressor.
        outputs: usize,
        /// BLAKE3 of the graph file, checked when it is loaded.
        digest: String,
        /// The tool that wrote the graph (`skl2onnx 1.20.0`, `pytorch 2.15`…), as it says.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        producer: String,
    },
}

/// How an imported graph's answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scores {
    /// Class probabilities (rows sum to 1; one column is the positive class's).
    Probabilities,
    /// Class logits, turned into probabilities as kiln's own networks are.
    Logits,
    /// Regression values.
    Values,
}

/// The element type of an imported graph's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphType {
    Float,
    Double,
    Int64,
    Int32,
    Bool,
    String,
}

/// One input of an imported graph and the columns that fill it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphInput {
    pub name: String,
    #[serde(rename = "type")]
    pub elem: GraphType,
    /// One row's shape: the dimensions after the batch (`[30]`, `[1]`, `[1, 8, 8]`).
    pub shape: Vec<usize>,
    /// The signature columns (or transform features) that fill a row, in row-major order.
    pub columns: Vec<String>,
}

impl Architecture {
    /// Dense features the model reads.
    pub fn inputs(&self) -> usize {
        match self {
            Architecture::Mlp { inputs, .. }
            | Architecture::WideDeep { inputs, .. }
            | Architecture::Trees { inputs, .. } => *inputs,
            Architecture::Onnx { inputs, .. } => inputs.iter().map(|i| i.columns.len()).sum(),
        }
    }

    /// Raw numbers the model produces per row (one logit for a binary classifier).
    pub fn outputs(&self) -> usize {
        match self {
            Architecture::Mlp { outputs, .. }
            | Architecture::WideDeep { outputs, .. }
            | Architecture::Trees { outputs, .. }
            | Architecture::Onnx { outputs, .. } => *outputs,
        }
    }
}

/// One embedding table of a wide-and-deep model, for one id column of the transform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingShape {
    pub column: String,
    pub ids: usize,
    pub width: usize,
}

/// Where a bundle came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleLineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
}

/// `kiln-model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub magic: String,
    pub format_version: u32,
    pub task: Task,
    /// The label column of the training data.
    pub target: String,
    /// Class names, indexed by class id (empty for regression).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The raw columns a request carries, with their types.
    pub signature: Vec<InputColumn>,
    pub transform: FittedTransform,
    pub architecture: Architecture,
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Statistics of the training split's raw columns (the reference for drift).
    pub training_statistics: DatasetStatistics,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Each raw input column's share of a tree model's total split gain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_importance: BTreeMap<String, f64>,
    #[serde(default)]
    pub lineage: BundleLineage,
}

/// A named `f32` tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What went wrong writing or reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: not a kiln model bundle: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{path}: bundle format {found} is newer than this kiln reads ({supported}); upgrade kiln"
    )]
    Newer {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "an MLflow model (flavors: {flavors}), not a kiln bundle: kiln serves the models it trains; \
         log a kiln bundle's directory as the model's files to serve it"
    )]
    MlflowModel { flavors: String },
}

/// The flavors an MLflow model's `MLmodel` file lists (the keys under `flavors:`).
fn mlflow_flavors(text: &str) -> String {
    let mut flavors = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("flavors:") {
            inside = true;
        } else if inside && !line.starts_with(' ') && !line.trim().is_empty() {
            break;
        } else if inside
            && let Some(key) = line.strip_prefix("  ")
            && !key.starts_with(' ')
            && let Some((name, _)) = key.split_once(':')
        {
            flavors.push(name.trim().to_string());
        }
    }
    if flavors.is_empty() {
        "none listed".to_string()
    } else {
        flavors.join(", ")
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> BundleError {
    BundleError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes a bundle to `dir` (which must not exist) through a temporary directory beside it.
pub fn write(
    dir: &Path,
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
) -> Result<(), BundleError> {
    write_with(dir, manifest, weights, &[])
}

/// [`write`], with more files (an imported model's graph) beside the manifest.
pub fn write_with(
    dir: &Path,
    manifest: &Manifest,
    weights: &BTreeMap<String, Weight>,
    files: &[(&str, &[u8])],
) -> Result<(), BundleError> {
    if dir.exists() {
        return Err(io(dir, "already exists; choose a new path"));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name()
            .map_or("bundle".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let result = (|| {
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| io(dir, e))?;
        write_synced(&tmp.join(MANIFEST_FILE), &json)?;
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = weights
            .iter()
            .map(|(name, w)| {
                let mut b = Vec::with_capacity(w.data.len() * 4);
                for v in &w.data {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                (name.clone(), b, w.shape.clone())
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(name, b, shape)| {
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| invalid(dir, format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let serialized = safetensors::serialize(views, None).map_err(|e| io(dir, e))?;
        write_synced(&tmp.join(WEIGHTS_FILE), &serialized)?;
        for (name, bytes) in files {
            write_synced(&tmp.join(name), bytes)?;
        }
        fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(parent, e))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// Reads a bundle's manifest and weights.
pub fn read(dir: &Path) -> Result<(Manifest, BTreeMap<String, Weight>), BundleError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match fs::read(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(match fs::read_to_string(dir.join("MLmodel")) {
                Ok(mlmodel) => BundleError::MlflowModel {
                    flavors: mlflow_flavors(&mlmodel),
                },
                Err(_) => io(&manifest_path, e),
            });
        }
        Err(e) => return Err(io(&manifest_path, e)),
    };
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| invalid(&manifest_path, e.to_string()))?;
    if value.get("magic").and_then(|m| m.as_str()) != Some(BUNDLE_MAGIC) {
        return Err(invalid(
            &manifest_path,
            format!("the manifest's magic is not \"{BUNDLE_MAGIC}\""),
        ));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if version > BUNDLE_FORMAT_VERSION {
        return Err(BundleError::Newer {
            path: manifest_path.display().to_string(),
            found: version,
            supported: BUNDLE_FORMAT_VERSION,
        });
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| invalid(&manifest_path, e.to_string()))?;
    let stats = manifest.training_statistics.format_version;
    if stats > crate::stats::STATISTICS_FORMAT_VERSION {
        return Err(invalid(
            &manifest_path,
            format!(
                "its training statistics are in format {stats}, newer than this kiln reads ({}); upgrade kiln",
                crate::stats::STATISTICS_FORMAT_VERSION
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&weights_path).map_err(|e| io(&weights_path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| invalid(&weights_path, e.to_string()))?;
    let mut weights = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(invalid(
                &weights_path,
                format!("tensor `{name}` is {:?}; kiln reads F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        weights.insert(
            name,
            Weight {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((manifest, weights))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_mlflow_model_is_named_with_its_flavors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("MLmodel"),
            "artifact_path: model\nflavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n    python_version: 3.11\n  sklearn:\n    pickled_model: model.pkl\nmlflow_version: 3.17.2\n",
        )
        .unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "an MLflow model (flavors: python_function, sklearn), not a kiln bundle"
            ),
            "{e}"
        );
    }
}
