//! `kiln pipeline step` and `kiln pipeline export`: a pipeline on a workflow engine (Argo
//! Workflows, Kubeflow Pipelines), each step a container running one step on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use kiln_core::registry::{Registry, StepExecState};
use kiln_scheduler::hermetic::Inputs;
use kiln_scheduler::run::{Force, RunRequest, StepRequest, run_step};

use crate::cmd::pipeline::parse_params;
use crate::cmd::registry::Home;
use crate::cmd::remote::Server;
use crate::{Outcome, ui};

/// `kiln pipeline step FILE STEP --inputs DIR --outputs DIR`.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The pipeline file (TOML); the files it names are found beside it.
    file: PathBuf,
    /// The step to run (an item of a `for_each` step as `ID[ITEM]`).
    step: String,
    /// Where the outputs of the steps it reads are, one directory per step: DIR/ID.
    #[arg(long, value_name = "DIR")]
    inputs: Option<PathBuf>,
    /// Where one step's outputs are (repeatable), over --inputs.
    #[arg(long = "input", value_name = "ID=PATH")]
    input: Vec<String>,
    /// Where the step writes its files and its record (`.kiln/`): absent or empty.
    #[arg(long, value_name = "DIR")]
    outputs: PathBuf,
    /// Set a parameter (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// The run's date (`${date}`): YYYY-MM-DD, or an RFC 3339 time (its UTC date); today by
    /// default.
    #[arg(long)]
    date: Option<String>,
    /// The run's name in records (`${run_id}`, the `kiln.pipeline_run` tag): the engine's name
    /// for the run.
    #[arg(long, default_value = "local")]
    run_name: String,
    /// Print the step's record as JSON.
    #[arg(long)]
    json: bool,
    /// The kiln that tracking runs and pushed models go to (KILN_SERVER); KILN_HOME without it.
    #[command(flatten)]
    server: Server,
}

/// A date as `${date}` takes it: `YYYY-MM-DD`, or the UTC date of an RFC 3339 time.
fn logical_date(given: Option<&str>) -> Result<String> {
    let Some(text) = given else {
        return Ok(chrono::Utc::now().date_naive().to_string());
    };
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.to_string());
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc).date_naive().to_string())
        .map_err(|_| anyhow!("--date {text:?}: give YYYY-MM-DD or an RFC 3339 time"))
}

pub fn step(home: &Home, args: StepArgs) -> Result<Outcome> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut each = BTreeMap::new();
    for given in &args.input {
        let (id, path) = given
            .split_once('=')
            .ok_or_else(|| anyhow!("--input {given:?}: give ID=PATH"))?;
        each.insert(id.to_string(), PathBuf::from(path));
    }
    let backend: Arc<dyn kiln_core::backend::Backend> = Arc::from(args.server.backend(home)?);
    let scratch_dir = tempfile::Builder::new()
        .prefix("kiln-step-")
        .tempdir()
        .context("making the step's scratch directory")?;
    let scratch = Arc::new(Registry::open(scratch_dir.path())?);
    let request = StepRequest {
        run: RunRequest {
            file: args.file.clone(),
            text,
            params: parse_params(&args.params)?,
            trigger: "step".into(),
            logical_date: logical_date(args.date.as_deref())?,
            force: Force::All,
            limits: Default::default(),
            path_prefix: crate::components::binary_dir(),
            notifier: None,
        },
        step: args.step.clone(),
        inputs: Inputs {
            dir: args.inputs.clone(),
            each,
        },
        outputs: args.outputs.clone(),
        run_name: args.run_name.clone(),
        backend,
    };
    let runtime = crate::cmd::serve::async_runtime("kiln-step")?;
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let outcome = runtime.block_on(run_step(
        scratch,
        Arc::new(crate::components::Builtins),
        request,
        cancel,
    ))?;
    // The attempt's log goes to the engine's log of the container.
    if let Some(log) = &outcome.log
        && let Ok(text) = std::fs::read_to_string(log)
    {
        eprint!("{text}");
    }
    let r = &outcome.record;
    if args.json {
        ui::print_json(r)?;
    } else {
        let rows = r
            .values
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        println!("step `{}` {}", r.step, r.state.as_str());
        if let Some(reason) = &r.reason {
            println!("  {reason}");
        }
        if !r.values.is_empty() {
            println!("{}", ui::table(&["value", ""], rows, &[]));
        }
    }
    match r.state {
        StepExecState::Succeeded | StepExecState::Skipped | StepExecState::Cached => {
            Ok(Outcome::Ok)
        }
        _ if r.retry => {
            eprintln!(
                "error: step `{}` {}: {}",
                r.step,
                r.state.as_str(),
                r.error.as_deref().unwrap_or("no error recorded")
            );
            Ok(Outcome::Retry)
        }
        _ => bail!(
            "step `{}` {}: {}",
            r.step,
            r.state.as_str(),
            r.error.as_deref().unwrap_or("no error recorded")
        ),
    }
}

/// Which engine `kiln pipeline export --to` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// An Argo Workflows WorkflowTemplate, and a CronWorkflow for a schedule.
    Argo,
    /// A Kubeflow Pipelines v2 pipeline spec (and its Kubernetes platform spec).
    Kfp,
}

/// `kiln pipeline export FILE --to argo|kfp`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// The engine.
    #[arg(long = "to", value_enum)]
    engine: EngineArg,
    /// The kiln container image every step runs.
    #[arg(long)]
    image: String,
    /// The pipeline file's path inside the image, with the files it names beside it
    /// (default: /pipelines/ and the file's name).
    #[arg(long, value_name = "PATH")]
    file_in_image: Option<String>,
    /// The central kiln steps record runs and models to (their KILN_SERVER).
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// The Secret whose key `token` holds that kiln's token.
    #[arg(long, default_value = "kiln-token", value_name = "NAME")]
    token_secret: String,
    /// Write here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> Result<Outcome> {
    use kiln_scheduler::export::{Engine, Options};
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let catalogue = crate::components::CATALOGUE;
    let parsed = kiln_scheduler::parse_with(&text, catalogue);
    let errors: Vec<String> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == kiln_scheduler::Severity::Error)
        .map(|d| {
            format!(
                "  {}:{}:{}: {}",
                args.file.display(),
                d.line,
                d.column,
                d.message
            )
        })
        .collect();
    let pipeline = match parsed.pipeline {
        Some(p) if errors.is_empty() => p,
        _ => bail!(
            "{} has {} error(s):\n{}\n(`kiln pipeline validate {}` shows them all)",
            args.file.display(),
            errors.len(),
            errors.join("\n"),
            args.file.display()
        ),
    };
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.toml".into());
    if let Some(url) = &args.registry
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--registry {url:?}: give the central kiln's URL, http(s)://HOST:PORT");
    }
    let options = Options {
        image: args.image.clone(),
        file: args
            .file_in_image
            .clone()
            .unwrap_or_else(|| format!("/pipelines/{file_name}")),
        server: args.registry.clone(),
        token_secret: args.token_secret.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let engine = match args.engine {
        EngineArg::Argo => Engine::Argo,
        EngineArg::Kfp => Engine::Kfp,
    };
    let exported = kiln_scheduler::export::export(&pipeline, catalogue, engine, &options)
        .map_err(|e| anyhow!("{}: {e}", args.file.display()))?;
    // One document as JSON; several as a YAML stream of JSON documents (as kubectl, argo and
    // kfp read them).
    let mut out = String::new();
    for (i, doc) in exported.documents.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_json::to_string_pretty(doc)?);
        out.push('\n');
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({} document{}, {} steps)",
                path.display(),
                exported.documents.len(),
                if exported.documents.len() == 1 {
                    ""
                } else {
                    "s"
                },
                pipeline.steps.len()
            );
        }
        None => print!("{out}"),
    }
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    Ok(Outcome::Ok)
}
