//! `kiln models import`: an ONNX model from any framework registered as a version, with its
//! signature, labels, reference statistics and a check run, locally or through a server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use kiln_core::backend::Backend;
use kiln_core::bundle::{Architecture, Scores, Task};
use kiln_core::registry::{Lineage, NewRun, RunStatus, run_id_text};
use kiln_core::transform::{FittedTransform, TransformSpec};
use kiln_server::import::{ImportOptions, import};

use crate::cmd::remote::Server;
use crate::ui;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScoresArg {
    Probabilities,
    Logits,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The model (created when it does not exist).
    name: String,
    /// The ONNX file (from skl2onnx, onnxmltools, torch.onnx, tf2onnx…).
    file: PathBuf,
    /// Rows like the training data (CSV or Parquet): they name the columns of a `[N, k]`
    /// input, become drift's reference, give the version metrics, and check the graph.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The label column of the reference (default `label`).
    #[arg(long)]
    target: Option<String>,
    /// The class names, in the order of the graph's scores (when the graph does not name them).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// How the graph's answer reads when it does not say: class probabilities or logits.
    #[arg(long, value_enum)]
    scores: Option<ScoresArg>,
    /// The graph output that answers (default: the classifier's probabilities, or the only
    /// number output).
    #[arg(long)]
    output: Option<String>,
    /// A kiln fitted transform in front of the graph (`kiln data transform` writes one); the
    /// graph reads its dense features.
    #[arg(long, conflicts_with = "spec")]
    transform: Option<PathBuf>,
    /// A transform spec, fitted on the reference rows, in front of the graph.
    #[arg(long, requires = "reference")]
    spec: Option<PathBuf>,
    /// What the version is, for people.
    #[arg(long, default_value = "")]
    description: String,
    /// Print what was registered as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub server: Server,
}

pub fn import_model(backend: &dyn Backend, args: ImportArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let reference = match &args.reference {
        Some(path) => Some(kiln_core::data::read(path, &Default::default())?),
        None => None,
    };
    let transform = match (&args.transform, &args.spec, &reference) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(FittedTransform::from_json(&text).with_context(|| path.display().to_string())?)
        }
        (None, Some(path), Some(table)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let spec =
                TransformSpec::from_toml(&text).with_context(|| path.display().to_string())?;
            Some(
                spec.fit(table)
                    .with_context(|| format!("fitting {}", path.display()))?,
            )
        }
        _ => None,
    };
    let source = args
        .file
        .file_name()
        .map_or("model.onnx".into(), |n| n.to_string_lossy().into_owned());
    let options = ImportOptions {
        target: args.target.clone(),
        labels: args.labels.clone(),
        scores: args.scores.map(|s| match s {
            ScoresArg::Probabilities => Scores::Probabilities,
            ScoresArg::Logits => Scores::Logits,
        }),
        output: args.output.clone(),
        transform,
        reference,
        source: source.clone(),
    };
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = scratch.path().join("bundle");
    let imported =
        import(&bytes, &options, &dir).map_err(|e| anyhow!("{}: {e}", args.file.display()))?;
    let m = &imported.manifest;
    let Architecture::Onnx {
        inputs,
        output,
        producer,
        ..
    } = &m.architecture
    else {
        bail!("the import wrote no graph");
    };
    let mut params = BTreeMap::from([
        ("source".to_string(), source.clone()),
        ("format".to_string(), "onnx".to_string()),
        ("output".to_string(), output.clone()),
    ]);
    if !producer.is_empty() {
        params.insert("producer".into(), producer.clone());
    }
    let run = backend.create_run(NewRun {
        experiment: "imports".to_string(),
        name: format!("import-{}", args.name),
        params,
        tags: BTreeMap::new(),
        parent: None,
        lineage: Lineage {
            dataset_fingerprint: options
                .reference
                .as_ref()
                .map(|r| r.fingerprint().to_string()),
            transform_digest: options.transform.as_ref().map(FittedTransform::digest),
            source_commit: None,
        },
    })?;
    let logged = (|| -> Result<()> {
        let points: Vec<(&str, i64, f64)> =
            m.metrics.iter().map(|(k, v)| (k.as_str(), 0, *v)).collect();
        if !points.is_empty() {
            backend.log_metrics(run.id, &points)?;
        }
        backend.log_artifact(run.id, "model", &dir)?;
        backend.end_run(run.id, RunStatus::Finished)?;
        Ok(())
    })();
    if let Err(e) = logged {
        let _ = backend.end_run(run.id, RunStatus::Failed);
        return Err(e);
    }
    let description = if args.description.is_empty() {
        format!("imported from {source}")
    } else {
        args.description.clone()
    };
    let v = backend.register_version(
        &args.name,
        run.id,
        "model",
        &description,
        Some(serde_json::json!(m.signature)),
    )?;
    let task = match m.task {
        Task::BinaryClassification => "binary classification",
        Task::MultiClassification => "multi-class classification",
        Task::Regression => "regression",
    };
    let what = serde_json::json!({
        "model": args.name,
        "version": v.version,
        "run": run_id_text(run.id),
        "task": m.task,
        "labels": m.labels,
        "signature": m.signature,
        "graph_inputs": inputs,
        "output": output,
        "producer": producer,
        "checked_rows": imported.checked_rows,
        "metrics": m.metrics,
        "notes": imported.notes,
    });
    ui::changed(args.json, &what, || {
        let mut lines = vec![format!(
            "registered {} version {} from {source}{}: {task}, {} input columns{}",
            args.name,
            v.version,
            if producer.is_empty() {
                String::new()
            } else {
                format!(" ({producer})")
            },
            m.signature.len(),
            if m.labels.is_empty() {
                String::new()
            } else {
                format!(", classes {}", m.labels.join(", "))
            }
        )];
        lines.push(format!(
            "checked on {}: every answer finite",
            imported.checked_on
        ));
        if !m.metrics.is_empty() {
            let shown: Vec<String> = m
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {}", ui::num(*v)))
                .collect();
            lines.push(format!("on the reference: {}", shown.join(", ")));
        }
        lines.extend(imported.notes.iter().map(|n| format!("note: {n}")));
        lines.push(format!(
            "serve it: kiln models promote {} {} && kiln serve --models {}",
            args.name, v.version, args.name
        ));
        lines.join("\n")
    })?;
    Ok(())
}
