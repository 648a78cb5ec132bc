//! Fitted feature transforms: fitted once on training data, then applied identically to a batch of
//! rows (training, batch scoring) and to one raw JSON row (serving).
//!
//! A [`TransformSpec`] says what to do; [`TransformSpec::fit`] makes one full pass over the
//! training table and produces a [`FittedTransform`] (means, vocabularies, bucket boundaries).
//! **Serving never fits; it only applies.** Batch and single-row apply share the per-value
//! functions in `apply.rs`, so both give bit-identical features.

mod apply;
mod fit;
mod spec;
mod write;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::data::ColumnType;

pub use self::apply::{Cell, Features};
pub use self::spec::{Encode, FeatureSpec, Fill, Impute, Output, TransformSpec};
pub use self::write::{Compression, write_features};

/// The version of the fitted-transform format; readers refuse newer ones.
pub const TRANSFORM_FORMAT_VERSION: u32 = 1;

/// What went wrong writing, fitting, loading or applying a transform.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("{0}")]
    Spec(String),
    #[error("features[{entry}]: unknown column `{name}`{hint}")]
    UnknownColumn {
        entry: usize,
        name: String,
        hint: String,
    },
    #[error(
        "features[{entry}]: column `{column}` is {found}; encode = \"{encode}\" needs a numeric column \
         (use encode = \"vocabulary\" or \"hash\" for categories)"
    )]
    NotNumeric {
        entry: usize,
        column: String,
        found: ColumnType,
        encode: &'static str,
    },
    #[error("features[{entry}]: column `{column}`: {message}")]
    Fit {
        entry: usize,
        column: String,
        message: String,
    },
    #[error("input has no column `{column}`{hint}")]
    MissingColumn { column: String, hint: String },
    #[error("row {row}, column `{column}`: {message}")]
    Value {
        row: usize,
        column: String,
        message: String,
    },
    #[error("fitted transform: {0}")]
    Format(String),
}

/// A raw input column the transform reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// The fitted state of one spec entry for one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedFeature {
    pub column: String,
    #[serde(flatten)]
    pub op: FittedOp,
}

/// What a fitted feature does to its column's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encode", rename_all = "snake_case")]
pub enum FittedOp {
    /// impute → clip → log1p → scale; one dense feature.
    Numeric {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip: Option<[f64; 2]>,
        #[serde(default)]
        log1p: bool,
        scale: Scale,
        /// A missing value (with no imputation) becomes NaN instead of an error.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_missing: bool,
    },
    /// impute → clip → log1p → bucket index (the number of boundaries ≤ the value).
    Bucketize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip: Option<[f64; 2]>,
        #[serde(default)]
        log1p: bool,
        boundaries: Vec<f64>,
        output: Output,
    },
    /// Index in the vocabulary; unseen values hash into `oov_buckets` ids after it.
    Vocabulary {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<String>,
        vocabulary: Vec<String>,
        oov_buckets: u32,
        output: Output,
    },
    /// FNV-1a hash of the value's text, modulo `buckets`.
    Hash {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        impute: Option<String>,
        buckets: u32,
        output: Output,
    },
}

/// The last step of a numeric feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scale {
    None,
    /// (x − mean) / std, with the population standard deviation (1 when it is 0).
    Standardize {
        mean: f64,
        std: f64,
    },
    /// (x − min) / (max − min), 0 when max = min.
    MinMax {
        min: f64,
        max: f64,
    },
}

/// Refuses fitted state that could not have come from fitting (a hand-edited file, say) and
/// would make apply fail in ways the messages cannot explain.
fn check_fitted(f: &FittedFeature) -> Result<(), TransformError> {
    let bad = |what: &str| {
        Err(TransformError::Format(format!(
            "feature of column `{}`: {what}",
            f.column
        )))
    };
    match &f.op {
        FittedOp::Hash { buckets: 0, .. } => bad("a hash needs at least 1 bucket"),
        FittedOp::Bucketize { boundaries, .. }
            if boundaries.windows(2).any(|w| w[0] >= w[1])
                || boundaries.iter().any(|b| !b.is_finite()) =>
        {
            bad("bucket boundaries must be finite and strictly increasing")
        }
        FittedOp::Numeric {
            scale: Scale::Standardize { std, .. },
            ..
        } if !(std.is_finite() && *std > 0.0) => bad("standardize needs a positive std"),
        _ => Ok(()),
    }
}

/// What an id column of a transform's sparse view ([`FittedTransform::sparse_view`]) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseId {
    /// A one-hot output, as the index of its active column: its one-hot columns start at this
    /// dense position of the transform.
    OneHot(usize),
    /// One of the transform's own id columns (this index among them).
    Id(usize),
}

/// Which rows a transform was fitted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FittedOn {
    pub source: String,
    pub fingerprint: String,
    pub rows: u64,
}

/// The serialized form of a fitted transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FittedTransformFile {
    format_version: u32,
    fitted_on: FittedOn,
    inputs: Vec<InputColumn>,
    features: Vec<FittedFeature>,
}

/// A transform fitted on training data, ready to apply. Serializes to JSON with a format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FittedTransformFile", into = "FittedTransformFile")]
pub struct FittedTransform {
    fitted_on: FittedOn,
    inputs: Vec<InputColumn>,
    features: Vec<FittedFeature>,
    layout: Layout,
}

/// Where each feature writes, and lookup tables; derived from the features, never serialized.
#[derive(Debug, Clone, PartialEq, Default)]
struct Layout {
    /// Per feature: index of its column in `inputs`.
    input: Vec<usize>,
    /// Per feature: first dense index (one-hot and numeric) or id index.
    offset: Vec<usize>,
    /// Per feature: vocabulary index, for vocabulary features.
    vocab: Vec<Option<HashMap<String, u32>>>,
    dense_names: Vec<String>,
    id_names: Vec<String>,
    id_cardinalities: Vec<u32>,
}

impl TryFrom<FittedTransformFile> for FittedTransform {
    type Error = TransformError;
    fn try_from(f: FittedTransformFile) -> Result<FittedTransform, TransformError> {
        if f.format_version > TRANSFORM_FORMAT_VERSION {
            return Err(TransformError::Format(format!(
                "format version {} is newer than this kiln reads ({TRANSFORM_FORMAT_VERSION}); upgrade kiln",
                f.format_version
            )));
        }
        FittedTransform::new(f.fitted_on, f.inputs, f.features)
    }
}

impl From<FittedTransform> for FittedTransformFile {
    fn from(t: FittedTransform) -> FittedTransformFile {
        FittedTransformFile {
            format_version: TRANSFORM_FORMAT_VERSION,
            fitted_on: t.fitted_on,
            inputs: t.inputs,
            features: t.features,
        }
    }
}

impl FittedTransform {
    fn new(
        fitted_on: FittedOn,
        inputs: Vec<InputColumn>,
        features: Vec<FittedFeature>,
    ) -> Result<FittedTransform, TransformError> {
        let mut layout = Layout::default();
        let mut dense = 0usize;
        for f in &features {
            let input = inputs
                .iter()
                .position(|i| i.name == f.column)
                .ok_or_else(|| {
                    TransformError::Format(format!("feature column `{}` is not an input", f.column))
                })?;
            layout.input.push(input);
            check_fitted(f)?;
            let c = &f.column;
            let (names, cardinality, output): (Vec<String>, u32, Output) = match &f.op {
                FittedOp::Numeric { .. } => (vec![c.clone()], 0, Output::OneHot),
                FittedOp::Bucketize {
                    boundaries, output, ..
                } => {
                    let n = boundaries.len() + 1;
                    (
                        (0..n).map(|b| format!("{c}=bucket{b}")).collect(),
                        n as u32,
                        *output,
                    )
                }
                FittedOp::Vocabulary {
                    vocabulary,
                    oov_buckets,
                    output,
                    ..
                } => {
                    let mut names: Vec<String> =
                        vocabulary.iter().map(|v| format!("{c}={v}")).collect();
                    for b in 0..*oov_buckets {
                        names.push(if *oov_buckets == 1 {
                            format!("{c}=<oov>")
                        } else {
                            format!("{c}=<oov{b}>")
                        });
                    }
                    let card = names.len() as u32;
                    (names, card, *output)
                }
                FittedOp::Hash {
                    buckets, output, ..
                } => (
                    (0..*buckets).map(|b| format!("{c}#{b}")).collect(),
                    *buckets,
                    *output,
                ),
            };
            if matches!(f.op, FittedOp::Numeric { .. }) || output == Output::OneHot {
                layout.offset.push(dense);
                dense += names.len();
                layout.dense_names.extend(names);
            } else {
                layout.offset.push(layout.id_names.len());
                layout.id_names.push(c.clone());
                layout.id_cardinalities.push(cardinality);
            }
            layout.vocab.push(match &f.op {
                FittedOp::Vocabulary { vocabulary, .. } => Some(
                    vocabulary
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i as u32))
                        .collect(),
                ),
                _ => None,
            });
        }
        for names in [&layout.dense_names, &layout.id_names] {
            let mut seen = std::collections::HashSet::new();
            for n in names {
                if !seen.insert(n.as_str()) {
                    return Err(TransformError::Spec(format!(
                        "two features are named `{n}`; one column has the same encode twice"
                    )));
                }
            }
        }
        Ok(FittedTransform {
            fitted_on,
            inputs,
            features,
            layout,
        })
    }

    /// Reads a fitted transform from its JSON form.
    /// A transform that makes no features: the model reads the raw `inputs` itself (an imported
    /// ONNX graph with its own preprocessing).
    pub fn raw(fitted_on: FittedOn, inputs: Vec<InputColumn>) -> FittedTransform {
        FittedTransform {
            fitted_on,
            inputs,
            features: Vec::new(),
            layout: Layout::default(),
        }
    }

    pub fn from_json(text: &str) -> Result<FittedTransform, TransformError> {
        serde_json::from_str(text).map_err(|e| TransformError::Format(e.to_string()))
    }

    /// The JSON form (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| unreachable!("transform is JSON: {e}"))
    }

    /// The raw columns the transform reads, with their types at fit time.
    pub fn inputs(&self) -> &[InputColumn] {
        &self.inputs
    }
    pub fn features(&self) -> &[FittedFeature] {
        &self.features
    }
    pub fn fitted_on(&self) -> &FittedOn {
        &self.fitted_on
    }
    /// Names of the dense `f32` features, in output order.
    pub fn dense_names(&self) -> &[String] {
        &self.layout.dense_names
    }
    /// Names of the integer id columns, in output order.
    pub fn id_names(&self) -> &[String] {
        &self.layout.id_names
    }
    /// How many distinct ids each id column can hold (the embedding table size).
    pub fn id_cardinalities(&self) -> &[u32] {
        &self.layout.id_cardinalities
    }
    pub fn dense_width(&self) -> usize {
        self.layout.dense_names.len()
    }
    /// The raw column each dense feature comes from, in output order.
    pub fn dense_columns(&self) -> Vec<&str> {
        let mut columns = Vec::with_capacity(self.dense_width());
        for f in &self.features {
            let width = match &f.op {
                FittedOp::Numeric { .. } => 1,
                FittedOp::Bucketize {
                    boundaries,
                    output: Output::OneHot,
                    ..
                } => boundaries.len() + 1,
                FittedOp::Vocabulary {
                    vocabulary,
                    oov_buckets,
                    output: Output::OneHot,
                    ..
                } => vocabulary.len() + *oov_buckets as usize,
                FittedOp::Hash {
                    buckets,
                    output: Output::OneHot,
                    ..
                } => *buckets as usize,
                _ => 0,
            };
            columns.extend(std::iter::repeat_n(f.column.as_str(), width));
        }
        columns
    }
    /// The transform that reads one-hot outputs as index lookups: the same features with every
    /// one-hot output (vocabulary, hash, bucketize) made one id column, so that a row costs its
    /// non-zeros instead of its width. Returns it with the position in this transform's dense
    /// features of each of its dense features, and what each of its id columns is. `None` when
    /// there is no one-hot output.
    pub fn sparse_view(&self) -> Option<(FittedTransform, Vec<usize>, Vec<SparseId>)> {
        let one_hot = |op: &FittedOp| match op {
            FittedOp::Bucketize { output, .. }
            | FittedOp::Vocabulary { output, .. }
            | FittedOp::Hash { output, .. } => *output == Output::OneHot,
            FittedOp::Numeric { .. } => false,
        };
        if !self.features.iter().any(|f| one_hot(&f.op)) {
            return None;
        }
        let features: Vec<FittedFeature> = self
            .features
            .iter()
            .map(|f| {
                let mut f = f.clone();
                match &mut f.op {
                    FittedOp::Bucketize { output, .. }
                    | FittedOp::Vocabulary { output, .. }
                    | FittedOp::Hash { output, .. } => *output = Output::Id,
                    FittedOp::Numeric { .. } => {}
                }
                f
            })
            .collect();
        let view =
            FittedTransform::new(self.fitted_on.clone(), self.inputs.clone(), features).ok()?;
        let mut dense = vec![0; view.dense_width()];
        let mut ids = vec![SparseId::Id(0); view.id_width()];
        for (fi, f) in self.features.iter().enumerate() {
            let at = self.layout.offset[fi];
            let view_at = view.layout.offset[fi];
            match &f.op {
                op if one_hot(op) => ids[view_at] = SparseId::OneHot(at),
                FittedOp::Numeric { .. } => dense[view_at] = at,
                _ => ids[view_at] = SparseId::Id(at),
            }
        }
        Some((view, dense, ids))
    }

    /// Whether some dense feature keeps missing numbers as NaN (`impute = "keep"`), which only
    /// tree models read.
    pub fn keeps_missing(&self) -> bool {
        self.features.iter().any(|f| {
            matches!(
                f.op,
                FittedOp::Numeric {
                    keep_missing: true,
                    impute: None,
                    ..
                }
            )
        })
    }
    pub fn id_width(&self) -> usize {
        self.layout.id_names.len()
    }

    /// A digest of the fitted state (BLAKE3 of its JSON form), for lineage.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("blake3:{}", blake3::hash(&json).to_hex())
    }
}
