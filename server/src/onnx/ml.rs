//! The ONNX-ML operators that scikit-learn, XGBoost and LightGBM exports use, with the
//! semantics onnxruntime gives them. Tree ensembles become a [`kiln_core::trees::Ensemble`], the
//! evaluator kiln's own trees run on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kiln_core::trees::{Ensemble, Node, Split};

use super::attrs::Attrs;
use super::tensor::{Data, OpResult, Value, check_work, elements};

/// What a classifier or regressor applies to its raw scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl Post {
    fn parse(a: &Attrs) -> OpResult<Post> {
        match a.string("post_transform", "NONE").as_str() {
            "NONE" => Ok(Post::None),
            "LOGISTIC" => Ok(Post::Logistic),
            "SOFTMAX" => Ok(Post::Softmax),
            "SOFTMAX_ZERO" => Ok(Post::SoftmaxZero),
            other => Err(format!("post_transform {other} is not supported")),
        }
    }

    /// Applies the transform to one row of scores.
    pub(super) fn apply(self, row: &mut [f32]) {
        match self {
            Post::None => {}
            Post::Logistic => row.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Post::Softmax | Post::SoftmaxZero => {
                let zero = self == Post::SoftmaxZero;
                let max = row
                    .iter()
                    .filter(|v| !zero || **v != 0.0)
                    .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let mut sum = 0.0;
                for v in row.iter_mut() {
                    if !(zero && *v == 0.0) {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                }
                if sum > 0.0 {
                    row.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Class labels of a classifier: integers or strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    fn parse(a: &Attrs) -> OpResult<Labels> {
        let (ints, strings) = (a.ints("classlabels_ints"), a.strings("classlabels_strings"));
        let ints = if ints.is_empty() {
            a.ints("classlabels_int64s")
        } else {
            ints
        };
        match (ints.is_empty(), strings.is_empty()) {
            (false, true) => Ok(Labels::Ints(ints)),
            (true, false) => Ok(Labels::Strings(strings)),
            (true, true) => Err("it names no class labels".into()),
            (false, false) => Err("it names both integer and string class labels".into()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    /// The label tensor for chosen class indices.
    fn pick(&self, classes: &[usize]) -> Value {
        let shape = vec![classes.len()];
        match self {
            Labels::Ints(v) => Value::ints(shape, classes.iter().map(|c| v[*c]).collect()),
            Labels::Strings(v) => {
                Value::strings(shape, classes.iter().map(|c| v[*c].clone()).collect())
            }
        }
    }
}

/// How a classifier with one score per row (two labels) turns it into two probabilities, as
/// onnxruntime does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `[1 - s, s]`, positive above 0.5 (averaged probabilities, as random forests export).
    Complement,
    /// `[-s, s]` before the post transform, positive above 0.
    Negate,
}

/// Scores of a classifier → (labels, probabilities) as onnxruntime writes them.
fn classify(
    labels: &Labels,
    rows: usize,
    mut scores: Vec<f32>,
    width: usize,
    post: Post,
    binary: Binary,
) -> (Value, Value) {
    if width == 1 && labels.len() == 2 {
        let mut out = Vec::with_capacity(rows * 2);
        let mut classes = Vec::with_capacity(rows);
        for s in scores {
            let (mut pair, positive) = match binary {
                Binary::Complement => ([1.0 - s, s], s > 0.5),
                Binary::Negate => ([-s, s], s > 0.0),
            };
            if binary == Binary::Negate {
                post.apply(&mut pair);
            }
            classes.push(usize::from(positive));
            out.extend_from_slice(&pair);
        }
        return (labels.pick(&classes), Value::floats(vec![rows, 2], out));
    }
    let mut classes = Vec::with_capacity(rows);
    for row in scores.chunks_mut(width.max(1)) {
        classes.push(kiln_core::metrics::argmax(row));
        post.apply(row);
    }
    (
        labels.pick(&classes),
        Value::floats(vec![rows, width], scores),
    )
}

/// An ONNX-ML operator, its attributes read once.
#[derive(Debug, Clone)]
pub enum MlOp {
    LinearClassifier {
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        /// Score rows: one per label, or one for two labels.
        classes: usize,
        labels: Labels,
        post: Post,
    },
    LinearRegressor {
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        targets: usize,
        post: Post,
    },
    TreeClassifier {
        trees: Box<Ensemble>,
        labels: Labels,
        post: Post,
        binary: Binary,
        /// Input columns the trees read (one more than the highest feature id).
        reads: usize,
    },
    TreeRegressor {
        trees: Box<Ensemble>,
        post: Post,
        reads: usize,
    },
    Normalizer(Norm),
    Scaler {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    Imputer {
        floats: Vec<f32>,
        replaced_float: f32,
        ints: Vec<i64>,
        replaced_int: i64,
    },
    OneHotEncoder {
        ints: HashMap<i64, usize>,
        strings: HashMap<String, usize>,
        width: usize,
        zeros: bool,
    },
    CategoryMapper {
        to_int: HashMap<String, i64>,
        to_string: HashMap<i64, String>,
        default_int: i64,
        default_string: String,
    },
    LabelEncoder(Box<LabelEncoder>),
    ArrayFeatureExtractor,
    /// Probabilities into a sequence of maps; kiln keeps them as the tensor they are.
    ZipMap,
    Binarizer {
        threshold: f32,
    },
    FeatureVectorizer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Max,
    L1,
    L2,
}

/// A lookup from one key type to one value type.
#[derive(Debug, Clone)]
pub struct LabelEncoder {
    keys: Data,
    values: Data,
    default: Data,
}

impl MlOp {
    /// Reads an `ai.onnx.ml` node.
    pub fn parse(op: &str, a: &Attrs) -> OpResult<Option<MlOp>> {
        Ok(Some(match op {
            "LinearClassifier" => {
                let labels = Labels::parse(a)?;
                let coefficients = a.floats("coefficients");
                let intercepts = a.floats("intercepts");
                let classes = if intercepts.is_empty() {
                    labels.len()
                } else {
                    intercepts.len()
                };
                if classes == 0
                    || coefficients.is_empty()
                    || !coefficients.len().is_multiple_of(classes)
                {
                    return Err(format!(
                        "{} coefficients do not divide into {classes} classes",
                        coefficients.len()
                    ));
                }
                if classes != labels.len() && !(classes == 1 && labels.len() == 2) {
                    return Err(format!(
                        "{classes} score rows for {} class labels",
                        labels.len()
                    ));
                }
                MlOp::LinearClassifier {
                    coefficients,
                    intercepts,
                    classes,
                    labels,
                    post: Post::parse(a)?,
                }
            }
            "LinearRegressor" => {
                let targets = usize::try_from(a.int("targets", 1))
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or("targets must be positive")?;
                let coefficients = a.floats("coefficients");
                if coefficients.is_empty() || !coefficients.len().is_multiple_of(targets) {
                    return Err(format!(
                        "{} coefficients do not divide into {targets} targets",
                        coefficients.len()
                    ));
                }
                let intercepts = a.floats("intercepts");
                if !intercepts.is_empty() && intercepts.len() != targets {
                    return Err(format!(
                        "{} intercepts for {targets} targets",
                        intercepts.len()
                    ));
                }
                MlOp::LinearRegressor {
                    coefficients,
                    intercepts,
                    targets,
                    post: Post::parse(a)?,
                }
            }
            "TreeEnsembleClassifier" => {
                let labels = Labels::parse(a)?;
                let leaves = Leaves::parse(a, "class")?;
                let (trees, reads) = ensemble(a, &leaves, labels.len(), true)?;
                let single = leaves.targets().len() == 1 && labels.len() == 2;
                let all_positive = leaves.weights.iter().all(|w| *w >= 0.0);
                let post = Post::parse(a)?;
                let binary = if post == Post::None && all_positive {
                    Binary::Complement
                } else {
                    Binary::Negate
                };
                let trees = if single {
                    // One score per row: every leaf adds to output 0 (whichever class id the
                    // export named), plus the positive class's base value.
                    collapse_to_one_output(trees, a.floats_or_tensor("base_values")?)
                } else {
                    trees
                };
                MlOp::TreeClassifier {
                    trees: Box::new(trees),
                    labels,
                    post,
                    binary,
                    reads,
                }
            }
            "TreeEnsembleRegressor" => {
                let targets = usize::try_from(a.int("n_targets", 1))
                    .ok()
                    .filter(|t| *t > 0 && *t <= 1 << 16)
                    .ok_or("n_targets must be between 1 and 65536")?;
                let leaves = Leaves::parse(a, "target")?;
                let (trees, reads) = ensemble(a, &leaves, targets, false)?;
                MlOp::TreeRegressor {
                    trees: Box::new(trees),
                    post: Post::parse(a)?,
                    reads,
                }
            }
            "Normalizer" => MlOp::Normalizer(match a.string("norm", "MAX").as_str() {
                "MAX" => Norm::Max,
                "L1" => Norm::L1,
                "L2" => Norm::L2,
                other => return Err(format!("norm {other} is not one of MAX, L1, L2")),
            }),
            "Scaler" => MlOp::Scaler {
                offset: a.floats("offset"),
                scale: a.floats("scale"),
            },
            "Imputer" => MlOp::Imputer {
                floats: a.floats("imputed_value_floats"),
                replaced_float: a.float("replaced_value_float", 0.0),
                ints: a.ints("imputed_value_int64s"),
                replaced_int: a.int("replaced_value_int64", 0),
            },
            "OneHotEncoder" => {
                let (ints, strings) = (a.ints("cats_int64s"), a.strings("cats_strings"));
                let width = ints.len().max(strings.len());
                if width == 0 {
                    return Err("it names no categories".into());
                }
                MlOp::OneHotEncoder {
                    ints: ints.into_iter().enumerate().map(|(i, c)| (c, i)).collect(),
                    strings: strings
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| (c, i))
                        .collect(),
                    width,
                    zeros: a.int("zeros", 1) != 0,
                }
            }
            "CategoryMapper" => {
                let (ints, strings) = (a.ints("cats_int64s"), a.strings("cats_strings"));
                if ints.len() != strings.len() {
                    return Err(format!(
                        "{} integer and {} string categories",
                        ints.len(),
                        strings.len()
                    ));
                }
                MlOp::CategoryMapper {
                    to_int: strings.iter().cloned().zip(ints.iter().copied()).collect(),
                    to_string: ints.into_iter().zip(strings).collect(),
                    default_int: a.int("default_int64", -1),
                    default_string: a.string("default_string", "_Unused"),
                }
            }
            "LabelEncoder" => MlOp::LabelEncoder(Box::new(LabelEncoder::parse(a)?)),
            "ArrayFeatureExtractor" => MlOp::ArrayFeatureExtractor,
            "ZipMap" => MlOp::ZipMap,
            "Binarizer" => MlOp::Binarizer {
                threshold: a.float("threshold", 0.0),
            },
            "FeatureVectorizer" => MlOp::FeatureVectorizer,
            _ => return Ok(None),
        }))
    }

    /// Runs the operator on its inputs.
    pub fn eval(&self, inputs: &[&Value]) -> OpResult<Vec<Value>> {
        let x = inputs.first().ok_or("it has no input")?;
        match self {
            MlOp::LinearClassifier {
                coefficients,
                intercepts,
                classes,
                labels,
                post,
            } => {
                let (rows, scores) = linear(x, coefficients, intercepts, *classes)?;
                let (y, z) = classify(labels, rows, scores, *classes, *post, Binary::Negate);
                Ok(vec![y, z])
            }
            MlOp::LinearRegressor {
                coefficients,
                intercepts,
                targets,
                post,
            } => {
                let (rows, mut scores) = linear(x, coefficients, intercepts, *targets)?;
                for row in scores.chunks_mut(*targets) {
                    post.apply(row);
                }
                Ok(vec![Value::floats(vec![rows, *targets], scores)])
            }
            MlOp::TreeClassifier {
                trees,
                labels,
                post,
                binary,
                reads,
            } => {
                let (rows, scores) = score_trees(x, trees, *reads)?;
                let (y, z) = classify(labels, rows, scores, trees.outputs(), *post, *binary);
                Ok(vec![y, z])
            }
            MlOp::TreeRegressor { trees, post, reads } => {
                let (rows, mut scores) = score_trees(x, trees, *reads)?;
                let k = trees.outputs();
                for row in scores.chunks_mut(k) {
                    post.apply(row);
                }
                Ok(vec![Value::floats(vec![rows, k], scores)])
            }
            MlOp::Normalizer(norm) => {
                let (rows, cols) = x.matrix()?;
                let mut v = x.to_f32()?;
                for row in v.chunks_mut(cols.max(1)) {
                    let n = match norm {
                        Norm::Max => row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)),
                        Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                        Norm::L2 => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
                    };
                    if n != 0.0 && n.is_finite() {
                        row.iter_mut().for_each(|v| *v /= n);
                    }
                }
                Ok(vec![Value::floats(vec![rows, cols], v)])
            }
            MlOp::Scaler { offset, scale } => {
                let cols = x.shape.last().copied().unwrap_or(1).max(1);
                let pick = |v: &[f32], j: usize, default: f32| -> OpResult<f32> {
                    match v.len() {
                        0 => Ok(default),
                        1 => Ok(v[0]),
                        n if n == cols => Ok(v[j]),
                        n => Err(format!("{n} scaler values for {cols} columns")),
                    }
                };
                let mut v = x.to_f32()?;
                for (i, value) in v.iter_mut().enumerate() {
                    let j = i % cols;
                    *value = (*value - pick(offset, j, 0.0)?) * pick(scale, j, 1.0)?;
                }
                Ok(vec![Value::floats(x.shape.clone(), v)])
            }
            MlOp::Imputer {
                floats,
                replaced_float,
                ints,
                replaced_int,
            } => {
                let cols = x.shape.last().copied().unwrap_or(1).max(1);
                match &x.data {
                    Data::I64(v) if !ints.is_empty() => {
                        let out = v
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                if x == replaced_int {
                                    per_column(ints, i % cols)
                                } else {
                                    Ok(*x)
                                }
                            })
                            .collect::<OpResult<_>>()?;
                        Ok(vec![Value::ints(x.shape.clone(), out)])
                    }
                    _ => {
                        let out = x
                            .to_f32()?
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                let missing = if replaced_float.is_nan() {
                                    x.is_nan()
                                } else {
                                    x == replaced_float
                                };
                                if missing {
                                    per_column(floats, i % cols)
                                } else {
                                    Ok(*x)
                                }
                            })
                            .collect::<OpResult<_>>()?;
                        Ok(vec![Value::floats(x.shape.clone(), out)])
                    }
                }
            }
            MlOp::OneHotEncoder {
                ints,
                strings,
                width,
                zeros,
            } => {
                let mut shape = x.shape.clone();
                shape.push(*width);
                let mut out = vec![0.0; elements(&shape)?];
                let mut set = |i: usize, hit: Option<&usize>, what: &dyn Fn() -> String| match hit {
                    Some(c) => {
                        out[i * width + c] = 1.0;
                        Ok(())
                    }
                    None if *zeros => Ok(()),
                    None => Err(format!("category {} is unknown", what())),
                };
                match &x.data {
                    Data::Str(v) => {
                        for (i, s) in v.iter().enumerate() {
                            set(i, strings.get(s), &|| format!("{s:?}"))?;
                        }
                    }
                    _ => {
                        for (i, c) in x.to_i64()?.iter().enumerate() {
                            set(i, ints.get(c), &|| c.to_string())?;
                        }
                    }
                }
                Ok(vec![Value::floats(shape, out)])
            }
            MlOp::CategoryMapper {
                to_int,
                to_string,
                default_int,
                default_string,
            } => Ok(vec![match &x.data {
                Data::Str(v) => Value::ints(
                    x.shape.clone(),
                    v.iter()
                        .map(|s| to_int.get(s).copied().unwrap_or(*default_int))
                        .collect(),
                ),
                _ => Value::strings(
                    x.shape.clone(),
                    x.to_i64()?
                        .iter()
                        .map(|i| to_string.get(i).unwrap_or(default_string).clone())
                        .collect(),
                ),
            }]),
            MlOp::LabelEncoder(e) => Ok(vec![e.eval(x)?]),
            MlOp::ArrayFeatureExtractor => {
                let indices = inputs
                    .get(1)
                    .ok_or("it needs the indices input")?
                    .to_i64()?;
                let cols = *x.shape.last().ok_or("it needs at least one dimension")?;
                let picks = indices
                    .iter()
                    .map(|i| {
                        usize::try_from(*i)
                            .ok()
                            .filter(|i| *i < cols)
                            .ok_or_else(|| format!("index {i} is out of range for {cols} columns"))
                    })
                    .collect::<OpResult<Vec<usize>>>()?;
                let rows = x.len() / cols.max(1);
                let mut shape = if x.shape.len() == 1 {
                    vec![1]
                } else {
                    x.shape[..x.shape.len() - 1].to_vec()
                };
                shape.push(picks.len());
                let gather = |r: usize| picks.iter().map(move |p| r * cols + p);
                let data = match &x.data {
                    Data::F32(v) => Data::F32((0..rows).flat_map(gather).map(|i| v[i]).collect()),
                    Data::I64(v) => Data::I64((0..rows).flat_map(gather).map(|i| v[i]).collect()),
                    Data::Str(v) => {
                        Data::Str((0..rows).flat_map(gather).map(|i| v[i].clone()).collect())
                    }
                };
                Ok(vec![Value { shape, data }])
            }
            MlOp::ZipMap => Ok(vec![(*x).clone().into_f32()?]),
            MlOp::Binarizer { threshold } => {
                let v = x.to_f32()?;
                Ok(vec![Value::floats(
                    x.shape.clone(),
                    v.iter()
                        .map(|x| if x > threshold { 1.0 } else { 0.0 })
                        .collect(),
                )])
            }
            MlOp::FeatureVectorizer => {
                let rows = x.shape.first().copied().unwrap_or(1);
                let parts = inputs
                    .iter()
                    .map(|v| {
                        let width = v.len().checked_div(rows).unwrap_or(0);
                        if width * rows != v.len() {
                            return Err(format!(
                                "an input of shape {:?} is not {rows} rows",
                                v.shape
                            ));
                        }
                        Ok((width, v.to_f32()?))
                    })
                    .collect::<OpResult<Vec<_>>>()?;
                let total: usize = parts.iter().map(|(w, _)| w).sum();
                let mut out = Vec::with_capacity(rows * total);
                for r in 0..rows {
                    for (w, v) in &parts {
                        out.extend_from_slice(&v[r * w..(r + 1) * w]);
                    }
                }
                Ok(vec![Value::floats(vec![rows, total], out)])
            }
        }
    }
}

fn per_column<T: Copy>(values: &[T], column: usize) -> OpResult<T> {
    match values {
        [one] => Ok(*one),
        v => v
            .get(column)
            .copied()
            .ok_or_else(|| format!("no imputed value for column {column}")),
    }
}

/// `x · coefficientsᵀ + intercepts` for `outputs` rows of coefficients.
fn linear(
    x: &Value,
    coefficients: &[f32],
    intercepts: &[f32],
    outputs: usize,
) -> OpResult<(usize, Vec<f32>)> {
    let (rows, cols) = x.matrix()?;
    let width = coefficients.len() / outputs.max(1);
    if cols != width {
        return Err(format!(
            "the input has {cols} columns but the model has {width} coefficients per output"
        ));
    }
    elements(&[rows, outputs])?;
    check_work(
        "this linear model",
        rows as u128 * coefficients.len() as u128,
    )?;
    let v = x.to_f32()?;
    let mut out = Vec::with_capacity(rows * outputs);
    for row in v.chunks_exact(cols.max(1)).take(rows) {
        for (k, w) in coefficients.chunks_exact(width.max(1)).enumerate() {
            let dot: f32 = row.iter().zip(w).map(|(a, b)| a * b).sum();
            out.push(dot + intercepts.get(k).copied().unwrap_or(0.0));
        }
    }
    Ok((rows, out))
}

fn score_trees(x: &Value, trees: &Ensemble, reads: usize) -> OpResult<(usize, Vec<f32>)> {
    let (rows, cols) = x.matrix()?;
    if cols < reads {
        return Err(format!(
            "the trees read {reads} columns but the input has {cols}"
        ));
    }
    let k = trees.outputs();
    let mut out = vec![0.0; elements(&[rows, k])?];
    check_work("these trees", rows as u128 * trees.roots.len() as u128 * 64)?;
    let v = x.to_f32()?;
    for r in 0..rows {
        trees.score_into(
            &v[r * cols..(r + 1) * cols],
            &[],
            &mut out[r * k..(r + 1) * k],
        );
    }
    Ok((rows, out))
}

impl LabelEncoder {
    fn parse(a: &Attrs) -> OpResult<LabelEncoder> {
        let keys = if a.has("keys_strings") {
            Data::Str(a.strings("keys_strings"))
        } else if a.has("keys_int64s") {
            Data::I64(a.ints("keys_int64s"))
        } else if a.has("keys_floats") {
            Data::F32(a.floats("keys_floats"))
        } else if let Some(t) = a.tensor("keys_tensor")? {
            t.data
        } else {
            return Err("it names no keys".into());
        };
        let (values, default) = if a.has("values_strings") {
            (
                Data::Str(a.strings("values_strings")),
                Data::Str(vec![a.string("default_string", "_Unused")]),
            )
        } else if a.has("values_int64s") {
            (
                Data::I64(a.ints("values_int64s")),
                Data::I64(vec![a.int("default_int64", -1)]),
            )
        } else if a.has("values_floats") {
            (
                Data::F32(a.floats("values_floats")),
                Data::F32(vec![a.float("default_float", -0.0)]),
            )
        } else if let Some(t) = a.tensor("values_tensor")? {
            let default = match a.tensor("default_tensor")? {
                Some(d) => d.data,
                None => match &t.data {
                    Data::Str(_) => Data::Str(vec!["_Unused".into()]),
                    Data::I64(_) => Data::I64(vec![-1]),
                    Data::F32(_) => Data::F32(vec![-0.0]),
                },
            };
            (t.data, default)
        } else {
            return Err("it names no values".into());
        };
        let e = LabelEncoder {
            keys,
            values,
            default,
        };
        let (k, v) = (data_len(&e.keys), data_len(&e.values));
        if k != v || data_len(&e.default) != 1 {
            return Err(format!("{k} keys for {v} values"));
        }
        Ok(e)
    }

    fn eval(&self, x: &Value) -> OpResult<Value> {
        // Position of each input in the keys (first match), then the value there.
        let positions: Vec<Option<usize>> = match (&self.keys, &x.data) {
            (Data::Str(keys), Data::Str(v)) => {
                let index: HashMap<&str, usize> = first_index(keys.iter().map(String::as_str));
                v.iter().map(|s| index.get(s.as_str()).copied()).collect()
            }
            (Data::I64(keys), _) => {
                let index: HashMap<i64, usize> = first_index(keys.iter().copied());
                x.to_i64()?.iter().map(|k| index.get(k).copied()).collect()
            }
            (Data::F32(keys), _) => {
                let index: HashMap<u32, usize> = first_index(keys.iter().map(|f| f.to_bits()));
                x.to_f32()?
                    .iter()
                    .map(|k| index.get(&k.to_bits()).copied())
                    .collect()
            }
            (Data::Str(_), _) => return Err(format!("expects strings, got {}", x.kind())),
        };
        let shape = x.shape.clone();
        Ok(match (&self.values, &self.default) {
            (Data::Str(v), Data::Str(d)) => Value::strings(
                shape,
                positions
                    .iter()
                    .map(|p| p.map_or(&d[0], |p| &v[p]).clone())
                    .collect(),
            ),
            (Data::I64(v), Data::I64(d)) => Value::ints(
                shape,
                positions.iter().map(|p| p.map_or(d[0], |p| v[p])).collect(),
            ),
            (Data::F32(v), Data::F32(d)) => Value::floats(
                shape,
                positions.iter().map(|p| p.map_or(d[0], |p| v[p])).collect(),
            ),
            _ => return Err("its default is not of its values' type".into()),
        })
    }
}

fn data_len(d: &Data) -> usize {
    match d {
        Data::F32(v) => v.len(),
        Data::I64(v) => v.len(),
        Data::Str(v) => v.len(),
    }
}

fn first_index<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, usize> {
    let mut index = HashMap::new();
    for (i, k) in keys.enumerate() {
        index.entry(k).or_insert(i);
    }
    index
}

/// The leaf weights of a tree ensemble: `(tree, node) → [(target, weight)]`.
struct Leaves {
    weights: Vec<f32>,
    of: BTreeMap<(i64, i64), Vec<(usize, f32)>>,
}

impl Leaves {
    fn parse(a: &Attrs, prefix: &str) -> OpResult<Leaves> {
        let trees = a.ints(&format!("{prefix}_treeids"));
        let nodes = a.ints(&format!("{prefix}_nodeids"));
        let ids = a.ints(&format!("{prefix}_ids"));
        let weights = a.floats_or_tensor(&format!("{prefix}_weights"))?;
        let n = trees.len();
        if nodes.len() != n || ids.len() != n || weights.len() != n {
            return Err(format!(
                "{prefix}_treeids, _nodeids, _ids and _weights have different lengths"
            ));
        }
        let mut of: BTreeMap<(i64, i64), Vec<(usize, f32)>> = BTreeMap::new();
        for i in 0..n {
            let target =
                usize::try_from(ids[i]).map_err(|_| format!("{prefix}_ids holds {}", ids[i]))?;
            of.entry((trees[i], nodes[i]))
                .or_default()
                .push((target, weights[i]));
        }
        Ok(Leaves { weights, of })
    }

    fn targets(&self) -> BTreeSet<usize> {
        self.of.values().flatten().map(|(t, _)| *t).collect()
    }
}

/// The most nodes a converted ensemble may have (trees are copied per output they add to).
const MAX_NODES: usize = 1 << 25;

/// The largest `f32` at most `t` (below `t` when `strict`), so that `x <= it` is `x <= t` (or
/// `x < t`) for every `f32` `x`.
fn at_most(t: f64, strict: bool) -> f32 {
    let mut v = t as f32;
    while (v as f64) > t || (strict && (v as f64) >= t) {
        v = f32::from_bits(if v > 0.0 {
            v.to_bits() - 1
        } else if v == 0.0 {
            0x8000_0001
        } else {
            v.to_bits() + 1
        });
    }
    v
}

/// Converts an ONNX tree ensemble's node table into kiln's evaluator: one kiln tree per ONNX
/// tree and output it adds to, nodes in depth-first order (so children follow parents), every
/// comparison rewritten as `x <= threshold` (sides swapped for `>` and `>=`), and an average's
/// `1 / trees` folded into the leaves. Returns the ensemble and how many input columns it reads.
fn ensemble(
    a: &Attrs,
    leaves: &Leaves,
    outputs: usize,
    classifier: bool,
) -> OpResult<(Ensemble, usize)> {
    if a.has("nodes_featureids") && a.get("nodes_modes").is_none() {
        return Err("it has no nodes_modes".into());
    }
    let tree_ids = a.ints("nodes_treeids");
    let node_ids = a.ints("nodes_nodeids");
    let feature_ids = a.ints("nodes_featureids");
    let modes = a.strings("nodes_modes");
    let values = a.doubles_or_floats("nodes_values")?;
    let trues = a.ints("nodes_truenodeids");
    let falses = a.ints("nodes_falsenodeids");
    let missing = a.ints("nodes_missing_value_tracks_true");
    let n = tree_ids.len();
    for (name, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", feature_ids.len()),
        ("nodes_modes", modes.len()),
        ("nodes_values", values.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_falsenodeids", falses.len()),
    ] {
        if len != n {
            return Err(format!("{name} has {len} entries for {n} nodes"));
        }
    }
    if !missing.is_empty() && missing.len() != n {
        return Err(format!(
            "nodes_missing_value_tracks_true has {} entries for {n} nodes",
            missing.len()
        ));
    }
    let targets = leaves.targets();
    if let Some(t) = targets.iter().find(|t| **t >= outputs) {
        let what = if classifier { "class" } else { "target" };
        return Err(format!("a leaf adds to {what} {t} of {outputs}"));
    }
    let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
    for i in 0..n {
        if index.insert((tree_ids[i], node_ids[i]), i).is_some() {
            return Err(format!(
                "tree {} has two nodes with id {}",
                tree_ids[i], node_ids[i]
            ));
        }
    }
    let aggregate = a.string("aggregate_function", "SUM");
    let by_trees: BTreeSet<i64> = tree_ids.iter().copied().collect();
    let scale = match aggregate.as_str() {
        "SUM" => 1.0,
        "AVERAGE" => 1.0 / by_trees.len().max(1) as f32,
        other => return Err(format!("aggregate_function {other} is not supported")),
    };
    let base = a.floats_or_tensor("base_values")?;
    let mut e = Ensemble {
        base: if base.is_empty() {
            vec![0.0; outputs]
        } else if base.len() == outputs {
            base
        } else if classifier && outputs == 2 && base.len() == 1 {
            vec![base[0], base[0]]
        } else {
            return Err(format!("{} base values for {outputs} outputs", base.len()));
        },
        ..Ensemble::default()
    };
    let mut reads = 0usize;
    for tree in &by_trees {
        // The root: the node of this tree that no other node names as a child.
        let mut children = HashSet::new();
        let members: Vec<usize> = (0..n).filter(|i| tree_ids[*i] == *tree).collect();
        for &i in &members {
            if modes[i] != "LEAF" {
                children.insert(trues[i]);
                children.insert(falses[i]);
            }
        }
        let roots: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !children.contains(&node_ids[*i]))
            .collect();
        let [root] = roots.as_slice() else {
            return Err(format!("tree {tree} has {} roots", roots.len()));
        };
        let tree_targets: BTreeSet<usize> = members
            .iter()
            .filter_map(|i| leaves.of.get(&(*tree, node_ids[*i])))
            .flatten()
            .map(|(t, _)| *t)
            .collect();
        for target in tree_targets {
            if e.nodes.len() + members.len() > MAX_NODES {
                return Err(format!(
                    "the ensemble makes more than {MAX_NODES} nodes (one tree per tree and \
                     output), more than kiln loads"
                ));
            }
            e.roots.push(e.nodes.len() as u32);
            e.outputs_of.push(target as u32);
            // Depth-first; each node is written, then its children are pushed right first so
            // that the left one is written next. Indices are patched as children are placed.
            let mut stack: Vec<(usize, Option<(usize, bool)>)> = vec![(*root, None)];
            let mut placed = 0usize;
            while let Some((i, parent)) = stack.pop() {
                placed += 1;
                if placed > members.len() {
                    return Err(format!(
                        "tree {tree} is not a tree (a node is reached twice)"
                    ));
                }
                let at = e.nodes.len();
                if let Some((p, left)) = parent {
                    if left {
                        e.nodes[p].left = at as u32;
                    } else {
                        e.nodes[p].right = at as u32;
                    }
                }
                let key = (*tree, node_ids[i]);
                if modes[i] == "LEAF" {
                    let value: f32 = leaves
                        .of
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter(|(t, _)| *t == target)
                        .map(|(_, w)| w)
                        .sum();
                    e.nodes.push(Node {
                        split: Split::Leaf(value * scale),
                        left: 0,
                        right: 0,
                    });
                    continue;
                }
                let feature = usize::try_from(feature_ids[i])
                    .ok()
                    .filter(|f| *f < 1 << 24)
                    .ok_or_else(|| format!("node {key:?} reads feature {}", feature_ids[i]))?;
                reads = reads.max(feature + 1);
                let tracks_true = missing.get(i).is_some_and(|m| *m != 0);
                let (threshold, true_left) = match modes[i].as_str() {
                    "BRANCH_LEQ" => (at_most(values[i], false), true),
                    "BRANCH_LT" => (at_most(values[i], true), true),
                    "BRANCH_GT" => (at_most(values[i], false), false),
                    "BRANCH_GTE" => (at_most(values[i], true), false),
                    other => {
                        return Err(format!("node mode {other} is not supported"));
                    }
                };
                let child = |id: i64| {
                    index
                        .get(&(*tree, id))
                        .copied()
                        .ok_or_else(|| format!("tree {tree} names a missing node {id}"))
                };
                let (t, f) = (child(trues[i])?, child(falses[i])?);
                let (left, right) = if true_left { (t, f) } else { (f, t) };
                e.nodes.push(Node {
                    split: Split::Numeric {
                        feature: feature as u32,
                        threshold,
                        default_left: tracks_true == true_left,
                    },
                    left: 0,
                    right: 0,
                });
                stack.push((right, Some((at, false))));
                stack.push((left, Some((at, true))));
            }
        }
    }
    e.dense = reads;
    Ok((e, reads))
}

/// A classifier's trees all adding to one score: output 0, base of the positive class.
fn collapse_to_one_output(mut e: Ensemble, base: Vec<f32>) -> Ensemble {
    e.outputs_of.iter_mut().for_each(|o| *o = 0);
    let b = match base.as_slice() {
        [] => 0.0,
        [b] => *b,
        [_, b, ..] => *b,
    };
    e.base = vec![b];
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_keep_their_comparison_in_f32() {
        let t = 0.1f64;
        let v = at_most(t, false);
        assert!((v as f64) <= t && (f32::from_bits(v.to_bits() + 1) as f64) > t);
        let s = at_most(1.0, true);
        assert!(s < 1.0 && f32::from_bits(s.to_bits() + 1) == 1.0);
        assert_eq!(at_most(1.0, false), 1.0);
        assert!(at_most(0.0, true) < 0.0);
        assert!(at_most(-2.0, true) < -2.0);
    }
}
