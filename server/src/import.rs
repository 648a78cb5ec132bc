//! An ONNX model made into a kiln bundle: its signature from the graph's inputs (several named
//! inputs map to raw columns by name; one `[N, k]` input to the reference's columns in order),
//! its task and labels from the graph's classifier or the options, training statistics and
//! metrics from reference rows, and a check that the bundle loads and answers finite values on
//! those rows (or on typical rows) before anything is registered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kiln_core::bundle::{
    self, Architecture, BUNDLE_FORMAT_VERSION, BUNDLE_MAGIC, BundleLineage, GraphInput, GraphType,
    Manifest, Scores, Task,
};
use kiln_core::data::{ColumnType, Table};
use kiln_core::metrics::{ClassificationMetrics, RegressionMetrics};
use kiln_core::stats::{DatasetStatistics, STATISTICS_FORMAT_VERSION};
use kiln_core::transform::{FittedOn, FittedTransform, InputColumn};

use crate::error::ServeError;
use crate::models::Models;
use crate::onnx::{Elem, Graph, Port};
use crate::runtime::{Column, Rows, Runtime};

/// The most reference rows an import runs the graph on.
pub const CHECK_ROWS: usize = 2000;

/// What the user says about the model beside its file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The label column of the reference data (default `label`); never an input.
    pub target: Option<String>,
    /// Class names, in the order of the graph's score columns.
    pub labels: Option<Vec<String>>,
    /// How to read the chosen output, when the graph does not say.
    pub scores: Option<Scores>,
    /// Which graph output answers (default: the classifier's probabilities, or the only output).
    pub output: Option<String>,
    /// A kiln transform in front of the graph: the graph reads its dense features.
    pub transform: Option<FittedTransform>,
    /// Rows like the training data: names the columns, gives drift its reference and checks
    /// the graph.
    pub reference: Option<Table>,
    /// Where the graph came from, for the record.
    pub source: String,
}

/// A bundle written by [`import`].
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: Manifest,
    /// Rows the bundle was checked on, and where they came from.
    pub checked_rows: usize,
    pub checked_on: String,
    /// What the import decided that the user did not say.
    pub notes: Vec<String>,
}

fn graph_type(e: Elem) -> GraphType {
    match e {
        Elem::Float => GraphType::Float,
        Elem::Double => GraphType::Double,
        Elem::Int64 => GraphType::Int64,
        Elem::Int32 => GraphType::Int32,
        Elem::Bool => GraphType::Bool,
        Elem::Str => GraphType::String,
    }
}

fn column_type(e: Elem) -> ColumnType {
    match e {
        Elem::Float | Elem::Double => ColumnType::Float,
        Elem::Int64 | Elem::Int32 => ColumnType::Integer,
        Elem::Bool => ColumnType::Boolean,
        Elem::Str => ColumnType::Categorical,
    }
}

/// One row's shape of a graph input: the fixed dimensions after the batch.
fn row_shape(port: &Port) -> Result<Vec<usize>, String> {
    if port.dims.is_empty() {
        return Err(format!(
            "graph input `{}` declares no shape; kiln needs [batch, …] with fixed sizes after \
             the batch",
            port.name
        ));
    }
    port.dims[1..]
        .iter()
        .map(|d| {
            d.ok_or_else(|| {
                format!(
                    "graph input `{}` has a dimension of unknown size after the batch ({}); \
                     export it with fixed feature dimensions",
                    port.name,
                    shape_text(&port.dims)
                )
            })
        })
        .collect()
}

fn shape_text(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |d| d.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

/// The graph's inputs as bundle inputs and the raw signature.
fn signature(
    graph: &Graph,
    options: &ImportOptions,
    target: &str,
    notes: &mut Vec<String>,
) -> Result<(Vec<GraphInput>, Vec<InputColumn>), String> {
    if let Some(t) = &options.transform {
        let [port] = graph.inputs() else {
            return Err(format!(
                "a transform in front of the graph feeds one input; the graph has {}",
                graph.inputs().len()
            ));
        };
        let shape = row_shape(port)?;
        let width: usize = shape.iter().product();
        if port.elem == Elem::Str || width != t.dense_width() || t.id_width() > 0 {
            return Err(format!(
                "graph input `{}` takes {width} {} per row; the transform makes {} numbers{}",
                port.name,
                if port.elem == Elem::Str {
                    "strings"
                } else {
                    "numbers"
                },
                t.dense_width(),
                if t.id_width() > 0 {
                    " and id columns"
                } else {
                    ""
                }
            ));
        }
        return Ok((
            vec![GraphInput {
                name: port.name.clone(),
                elem: graph_type(port.elem),
                shape,
                columns: t.dense_names().to_vec(),
            }],
            t.inputs().to_vec(),
        ));
    }
    let named: BTreeSet<&str> = graph.inputs().iter().map(|p| p.name.as_str()).collect();
    let mut inputs = Vec::new();
    let mut columns: Vec<InputColumn> = Vec::new();
    for port in graph.inputs() {
        let shape = row_shape(port)?;
        let width: usize = shape.iter().product();
        if width == 0 {
            return Err(format!("graph input `{}` takes no values", port.name));
        }
        let names: Vec<String> = if width == 1 {
            vec![port.name.clone()]
        } else if port.elem == Elem::Str {
            return Err(format!(
                "graph input `{}` takes {width} strings per row; kiln maps one string column to \
                 each string input",
                port.name
            ));
        } else if let Some(reference) = &options.reference {
            let rest: Vec<String> = reference
                .names()
                .filter(|n| *n != target && !named.contains(n))
                .filter(|n| !columns.iter().any(|c| c.name == *n))
                .map(str::to_string)
                .collect();
            if rest.len() < width || (graph.inputs().len() == 1 && rest.len() != width) {
                return Err(format!(
                    "graph input `{}` takes {width} numbers per row, but the reference has {} \
                     columns besides `{target}`: {}; give the label column with --target, or a \
                     reference with just the model's columns",
                    port.name,
                    rest.len(),
                    preview(&rest)
                ));
            }
            rest[..width].to_vec()
        } else {
            let names: Vec<String> = (0..width).map(|j| format!("{}_{j}", port.name)).collect();
            notes.push(format!(
                "the {width} values of input `{}` are columns {}…{}; give --reference data.csv \
                 to name them after its columns",
                port.name,
                names[0],
                names[width - 1]
            ));
            names
        };
        for n in &names {
            let ty = match options
                .reference
                .as_ref()
                .and_then(|r| r.column_index(n).map(|i| r.column_type(i)))
            {
                Some(t)
                    if port.elem != Elem::Str && !t.is_numeric() && t != ColumnType::Boolean =>
                {
                    return Err(format!(
                        "graph input `{}` takes numbers, but the reference's column `{n}` is \
                         {}",
                        port.name,
                        t.as_str()
                    ));
                }
                Some(t) if port.elem != Elem::Str => t,
                _ => column_type(port.elem),
            };
            columns.push(InputColumn {
                name: n.clone(),
                column_type: ty,
            });
        }
        inputs.push(GraphInput {
            name: port.name.clone(),
            elem: graph_type(port.elem),
            shape,
            columns: names,
        });
    }
    if let Some(r) = &options.reference {
        let missing: Vec<&str> = columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| r.column_index(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the graph reads {}, which the reference does not have (it has {})",
                missing.join(", "),
                preview(&r.names().map(str::to_string).collect::<Vec<_>>())
            ));
        }
    }
    Ok((inputs, columns))
}

fn preview(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, … ({} in all)", names[..8].join(", "), names.len())
    }
}

/// Which output answers: the one asked for, a ZipMap's or a classifier's probabilities, one
/// whose name says probabilities, or the only numeric output.
fn choose_output(graph: &Graph, asked: Option<&str>) -> Result<String, String> {
    let outs = graph.outputs();
    if let Some(name) = asked {
        return outs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                format!(
                    "the graph has no output `{name}`; it has {}",
                    outs.iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
    }
    let numeric: Vec<(usize, &Port)> = outs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.elem.is_number())
        .collect();
    let pick = numeric
        .iter()
        .find(|(_, o)| o.zipmap)
        .or_else(|| {
            numeric.iter().find(|(i, o)| {
                o.elem == Elem::Float
                    && matches!(
                        graph.producer_of(*i),
                        Some("TreeEnsembleClassifier" | "LinearClassifier" | "Normalizer")
                    )
            })
        })
        .or_else(|| {
            numeric
                .iter()
                .find(|(_, o)| o.name.to_lowercase().contains("prob"))
        })
        .or_else(|| {
            let floats: Vec<&(usize, &Port)> = numeric
                .iter()
                .filter(|(_, o)| matches!(o.elem, Elem::Float | Elem::Double))
                .collect();
            (floats.len() == 1).then(|| floats[0])
        });
    pick.map(|(_, o)| o.name.clone()).ok_or_else(|| {
        format!(
            "kiln cannot tell which output answers (the graph has {}); name it with --output",
            outs.iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The rows of a table in signature order, as requests carry them (for scoring a file with an
/// imported model); the error names a signature column the table lacks.
pub fn table_rows(table: &Table, signature: &[InputColumn]) -> Result<Rows, String> {
    let columns = signature
        .iter()
        .map(|c| {
            let i = table
                .column_index(&c.name)
                .ok_or_else(|| format!("the data has no column `{}`", c.name))?;
            Ok(if c.column_type == ColumnType::Categorical {
                Column::Texts(table.texts(i))
            } else {
                Column::Numbers(table.numbers(i))
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Rows::from_columns(table.num_rows(), columns))
}

/// Sorted distinct values of the reference's target (numbers in numeric order), as scikit-learn,
/// XGBoost and LightGBM order classes.
fn target_classes(table: &Table, target: &str) -> Option<Vec<String>> {
    let i = table.column_index(target)?;
    let texts: BTreeSet<String> = table.texts(i).into_iter().flatten().collect();
    let mut values: Vec<String> = texts.into_iter().collect();
    if values.iter().all(|v| v.parse::<f64>().is_ok()) {
        values.sort_by(|a, b| {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            x.total_cmp(&y)
        });
    }
    Some(values)
}

/// Writes the bundle of an ONNX model (the file's bytes) to `dir`, which must not exist.
pub fn import(bytes: &[u8], options: &ImportOptions, dir: &Path) -> Result<Imported, String> {
    let graph = Graph::parse(bytes)?;
    let target = options
        .target
        .clone()
        .unwrap_or_else(|| "label".to_string());
    if let Some(r) = &options.reference
        && options.target.is_some()
        && r.column_index(&target).is_none()
    {
        return Err(format!("the reference has no column `{target}` (--target)"));
    }
    let mut notes = Vec::new();
    let (inputs, signature) = signature(&graph, options, &target, &mut notes)?;
    let output = choose_output(&graph, options.output.as_deref())?;
    let digest = blake3::hash(bytes).to_hex().to_string();
    let source = if options.source.is_empty() {
        "model.onnx".to_string()
    } else {
        options.source.clone()
    };
    let transform = match &options.transform {
        Some(t) => t.clone(),
        None => FittedTransform::raw(
            FittedOn {
                source: source.clone(),
                fingerprint: digest.clone(),
                rows: 0,
            },
            signature.clone(),
        ),
    };
    let statistics = match &options.reference {
        Some(r) => DatasetStatistics::compute(r),
        None => DatasetStatistics {
            format_version: STATISTICS_FORMAT_VERSION,
            source: String::new(),
            fingerprint: String::new(),
            rows: 0,
            columns: Vec::new(),
        },
    };
    let mut manifest = Manifest {
        magic: BUNDLE_MAGIC.to_string(),
        format_version: BUNDLE_FORMAT_VERSION,
        task: Task::Regression,
        target: target.clone(),
        labels: Vec::new(),
        signature,
        transform,
        architecture: Architecture::Onnx {
            inputs,
            output: output.clone(),
            scores: Scores::Values,
            outputs: 0,
            digest,
            producer: graph.producer.clone(),
        },
        hyperparameters: BTreeMap::from([
            ("imported_from".to_string(), serde_json::json!(source)),
            ("format".to_string(), serde_json::json!("onnx")),
        ]),
        training_statistics: statistics,
        metrics: BTreeMap::new(),
        feature_importance: BTreeMap::new(),
        lineage: BundleLineage::default(),
    };
    if !graph.producer.is_empty() {
        manifest
            .hyperparameters
            .insert("producer".into(), serde_json::json!(graph.producer));
    }

    // The answer's width, read off a first run of the graph on the check rows.
    let probe = Runtime::from_graph(manifest.clone(), bytes).map_err(|e| e.to_string())?;
    let (rows, checked_on) = match &options.reference {
        Some(r) => (
            table_rows(&r.slice(0, CHECK_ROWS), &manifest.signature)?,
            format!("{} reference rows", r.num_rows().min(CHECK_ROWS)),
        ),
        None => (probe.typical_rows(8), "8 typical rows".to_string()),
    };
    let (k, raw) = probe
        .raw_answer(&rows)
        .map_err(|e| format!("running the graph on {checked_on}: {e}"))?;

    let graph_labels = graph.labels().map(<[String]>::to_vec);
    let labels = match (&options.labels, &graph_labels) {
        (Some(given), Some(found)) if given.len() != found.len() => {
            return Err(format!(
                "--labels names {} classes; the graph's classifier has {} ({})",
                given.len(),
                found.len(),
                found.join(", ")
            ));
        }
        (Some(given), _) => Some(given.clone()),
        (None, Some(found)) => Some(found.clone()),
        (None, None) if k > 1 || options.scores.is_some_and(|s| s != Scores::Values) => {
            let classes = if k == 1 { 2 } else { k };
            match options
                .reference
                .as_ref()
                .and_then(|r| target_classes(r, &target))
            {
                Some(values) if values.len() == classes => {
                    notes.push(format!(
                        "class labels {} are the reference's `{target}` values, sorted; give \
                         --labels if the graph orders them otherwise",
                        preview(&values)
                    ));
                    Some(values)
                }
                _ => {
                    return Err(format!(
                        "output `{output}` has {k} values per row: name the {classes} classes \
                         in its order with --labels a,b,… (or give --reference with the label \
                         column as --target); for a regressor with several targets, kiln \
                         serves one"
                    ));
                }
            }
        }
        (None, None) => None,
    };
    let (task, scores, outputs) = match &labels {
        None => {
            if k != 1 {
                return Err(format!(
                    "output `{output}` has {k} values per row; kiln serves one value per row"
                ));
            }
            (Task::Regression, Scores::Values, 1)
        }
        Some(l) => {
            if l.len() < 2 || (k != l.len() && !(k == 1 && l.len() == 2)) {
                return Err(format!(
                    "output `{output}` has {k} values per row for {} classes ({})",
                    l.len(),
                    preview(l)
                ));
            }
            let task = if l.len() == 2 {
                Task::BinaryClassification
            } else {
                Task::MultiClassification
            };
            let scores = match options.scores {
                Some(s) => s,
                None if graph_labels.is_some() => Scores::Probabilities,
                None => {
                    if let Some((row, why)) = not_probabilities(&raw, k) {
                        return Err(format!(
                            "output `{output}` does not hold probabilities (row {}: {why}); \
                             pass --scores logits if it holds logits",
                            row + 1
                        ));
                    }
                    Scores::Probabilities
                }
            };
            if scores == Scores::Values {
                return Err("--scores values is for regressors, which have no labels".into());
            }
            (task, scores, l.len())
        }
    };
    manifest.task = task;
    manifest.labels = labels.unwrap_or_default();
    if let Architecture::Onnx {
        scores: s,
        outputs: o,
        ..
    } = &mut manifest.architecture
    {
        *s = scores;
        *o = outputs;
    }

    // The final bundle, loaded as a server would and run on the check rows.
    let runtime = Runtime::from_graph(manifest.clone(), bytes).map_err(|e| e.to_string())?;
    let answers = runtime
        .predict(&rows)
        .map_err(|e| format!("running the graph on {checked_on}: {e}"))?;
    let width = runtime.width();
    if let Some(i) = answers.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "the graph answers {} for row {} of the {checked_on}; kiln does not register a \
             model whose outputs are not finite",
            answers[i],
            i / width.max(1) + 1
        ));
    }
    if let Some(r) = &options.reference {
        manifest.metrics = reference_metrics(r, &manifest, &answers, width, rows.rows);
    }
    bundle::write_with(
        dir,
        &manifest,
        &BTreeMap::new(),
        &[(bundle::GRAPH_FILE, bytes)],
    )
    .map_err(|e| e.to_string())?;
    Ok(Imported {
        manifest,
        checked_rows: rows.rows,
        checked_on,
        notes,
    })
}

/// Why a row of `k` scores is not a probability distribution, if one is not.
fn not_probabilities(raw: &[f32], k: usize) -> Option<(usize, String)> {
    for (r, row) in raw.chunks(k.max(1)).enumerate() {
        if let Some(v) = row.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Some((r, format!("it holds {v}")));
        }
        let sum: f32 = row.iter().sum();
        if k > 1 && (sum - 1.0).abs() > 1e-3 {
            return Some((r, format!("it sums to {sum}")));
        }
    }
    None
}

/// The model's metrics on the reference rows it was checked on, when they carry the target.
fn reference_metrics(
    table: &Table,
    manifest: &Manifest,
    answers: &[f32],
    width: usize,
    rows: usize,
) -> BTreeMap<String, f64> {
    let Some(i) = table.column_index(&manifest.target) else {
        return BTreeMap::new();
    };
    let part = table.slice(0, rows);
    let scalars: BTreeMap<&str, f64> = if manifest.task == Task::Regression {
        let (mut y, mut p) = (Vec::new(), Vec::new());
        for (t, v) in part.numbers(i).into_iter().zip(answers) {
            if let Some(t) = t {
                y.push(t);
                p.push(f64::from(*v));
            }
        }
        if y.is_empty() {
            return BTreeMap::new();
        }
        RegressionMetrics::compute(&y, &p).scalars()
    } else {
        let (mut y, mut p) = (Vec::new(), Vec::new());
        for (r, t) in part.texts(i).into_iter().enumerate() {
            let Some(c) = t.and_then(|t| manifest.labels.iter().position(|l| *l == t)) else {
                continue;
            };
            y.push(c as u32);
            p.extend_from_slice(&answers[r * width..(r + 1) * width]);
        }
        if y.is_empty() {
            return BTreeMap::new();
        }
        ClassificationMetrics::compute(&y, &p, width).scalars()
    };
    scalars
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (format!("reference_{k}"), v))
        .collect()
}

/// The options of an upload (`POST /api/models/{name}/versions` with an ONNX body), from its
/// query string. Reference rows cannot come over this door (a path would be the server's);
/// `kiln models import --server` reads them on the client and sends the finished bundle.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    target: Option<String>,
    labels: Option<String>,
    scores: Option<String>,
    output: Option<String>,
    description: Option<String>,
}

/// Imports an uploaded ONNX file as the next version of `name`: checked like a command-line
/// import, logged as a run of the `imports` experiment, then registered.
pub fn register_upload(
    models: &Models,
    name: &str,
    bytes: &[u8],
    query: &str,
) -> Result<kiln_core::registry::ModelVersion, ServeError> {
    use kiln_core::registry::{Lineage, NewRun, RunStatus};
    let q: UploadQuery = serde_urlencoded::from_str(query)
        .map_err(|e| ServeError::BadInput(format!("the query: {e}")))?;
    let scores = match q.scores.as_deref() {
        None => None,
        Some("probabilities") => Some(Scores::Probabilities),
        Some("logits") => Some(Scores::Logits),
        Some(other) => {
            return Err(ServeError::BadInput(format!(
                "scores is probabilities or logits, not {other:?}"
            )));
        }
    };
    kiln_core::registry::check_model_name(name)?;
    let options = ImportOptions {
        target: q.target,
        labels: q
            .labels
            .map(|l| l.split(',').map(|x| x.trim().to_string()).collect()),
        scores,
        output: q.output,
        transform: None,
        reference: None,
        source: "upload.onnx".into(),
    };
    let scratch = tempfile::tempdir().map_err(|e| ServeError::Internal(e.to_string()))?;
    let dir = scratch.path().join("bundle");
    let imported = import(bytes, &options, &dir).map_err(ServeError::BadInput)?;
    let registry = models.registry()?;
    let run = registry.create_run(NewRun {
        experiment: "imports".into(),
        name: format!("import-{name}"),
        params: BTreeMap::from([
            ("source".to_string(), options.source.clone()),
            ("format".to_string(), "onnx".to_string()),
        ]),
        tags: BTreeMap::new(),
        parent: None,
        lineage: Lineage::default(),
    })?;
    let logged = registry
        .log_artifact(run.id, "model", &dir)
        .and_then(|_| registry.end_run(run.id, RunStatus::Finished));
    if let Err(e) = logged {
        let _ = registry.end_run(run.id, RunStatus::Failed);
        return Err(e.into());
    }
    let description = q
        .description
        .unwrap_or_else(|| "imported from an upload".to_string());
    Ok(models.change(name, |r| {
        r.register_version(
            name,
            run.id,
            "model",
            &description,
            Some(serde_json::json!(imported.manifest.signature)),
        )
    })?)
}
