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
    /// For a failure handler: the run's failed nodes as the engine lists them (Argo's
    /// `{{workflow.failures}}`, JSON); the first is the handler's KILN_FAILED_STEP and
    /// KILN_FAILED_ERROR.
    #[arg(long, value_name = "JSON")]
    failures: Option<String>,
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
        failed: args.failures.as_deref().map(first_failure).transpose()?,
    };
    let runtime = crate::cmd::serve::async_runtime("kiln-step")?;
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    // The attempt's log goes to the container's log (stderr) as it is written.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let log = kiln_scheduler::run::alone_log(scratch_dir.path(), &args.step);
        let done = done.clone();
        std::thread::spawn(move || follow_log(&log, &done))
    };
    let outcome = runtime.block_on(run_step(
        scratch,
        Arc::new(crate::components::Builtins),
        request,
        cancel,
    ));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = follower.join();
    let record = outcome?;
    let r = &record;
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

/// The first failed node of Argo's `{{workflow.failures}}`: its name and message.
fn first_failure(json: &str) -> Result<(String, String)> {
    let nodes: Vec<serde_json::Value> = serde_json::from_str(json).with_context(|| {
        format!("--failures {json:?}: give the engine's list of failed nodes (JSON)")
    })?;
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(nodes
        .first()
        .map(|n| (text(n, "displayName"), text(n, "message")))
        .unwrap_or_default())
}

/// Copies what is appended to `log` to stderr until `done` (and what came before it).
fn follow_log(log: &std::path::Path, done: &std::sync::atomic::AtomicBool) {
    use std::io::{Read, Write};
    let mut offset = 0u64;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut file) = std::fs::File::open(log) {
            use std::io::Seek;
            let mut fresh = Vec::new();
            if file.seek(std::io::SeekFrom::Start(offset)).is_ok()
                && file.read_to_end(&mut fresh).is_ok()
            {
                offset += fresh.len() as u64;
                let _ = std::io::stderr().write_all(&fresh);
            }
        }
        if finished {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
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
    #[command(flatten)]
    on: EngineOptions,
    /// Write here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// How exported steps run: the image, where the pipeline file is in it, the central kiln.
#[derive(Debug, Args, Clone)]
pub struct EngineOptions {
    /// The kiln container image every step runs.
    #[arg(long)]
    pub image: Option<String>,
    /// The pipeline file's path inside the image, with the files it names beside it
    /// (default: /pipelines/ and the file's name).
    #[arg(long, value_name = "PATH")]
    pub file_in_image: Option<String>,
    /// The central kiln steps record runs and models to (their KILN_SERVER).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// The Secret whose key `token` holds that kiln's token.
    #[arg(long, default_value = "kiln-token", value_name = "NAME")]
    pub token_secret: String,
}

pub fn export(args: ExportArgs) -> Result<Outcome> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let exported = export_text(&args.file, &text, args.engine, &args.on)?;
    match &args.output {
        Some(path) => write_exported(path, &exported)?,
        None => print!("{}", exported.text),
    }
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    Ok(Outcome::Ok)
}

/// An export: the documents as one text, what to know, and how many steps.
pub struct Exported {
    pub text: String,
    pub documents: usize,
    pub steps: usize,
    pub notes: Vec<String>,
}

/// Writes an export to `path` and says so.
pub fn write_exported(path: &std::path::Path, exported: &Exported) -> Result<()> {
    std::fs::write(path, &exported.text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} ({} document{}, {} steps)",
        path.display(),
        exported.documents,
        if exported.documents == 1 { "" } else { "s" },
        exported.steps
    );
    Ok(())
}

/// The pipeline file `file` (its text `text`) for `engine`.
pub fn export_text(
    file: &std::path::Path,
    text: &str,
    engine: EngineArg,
    on: &EngineOptions,
) -> Result<Exported> {
    use kiln_scheduler::export::{Engine, Options};
    let catalogue = crate::components::CATALOGUE;
    let (pipeline, _) = kiln_scheduler::run::checked(file, text, catalogue).map_err(|e| {
        anyhow!(
            "{e}\n(`kiln pipeline validate {}` shows them all)",
            file.display()
        )
    })?;
    let image = on.image.clone().ok_or_else(|| {
        anyhow!("an export needs --image IMAGE: the kiln container image its steps run")
    })?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline.toml".into());
    if let Some(url) = &on.registry
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("--registry {url:?}: give the central kiln's URL, http(s)://HOST:PORT");
    }
    let options = Options {
        image,
        file: on
            .file_in_image
            .clone()
            .unwrap_or_else(|| format!("/pipelines/{file_name}")),
        server: on.registry.clone(),
        token_secret: on.token_secret.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let engine = match engine {
        EngineArg::Argo => Engine::Argo,
        EngineArg::Kfp => Engine::Kfp,
    };
    let exported = kiln_scheduler::export::export(&pipeline, catalogue, engine, &options)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
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
    Ok(Exported {
        text: out,
        documents: exported.documents.len(),
        steps: pipeline.steps.len(),
        notes: exported.notes,
    })
}

/// A sweep written for an engine: its pipeline (one `train` step per trial, side by side, and a
/// `leaderboard` step) and that pipeline exported.
pub struct SweepExport<'a> {
    pub config: &'a kiln_trainer::sweep::SweepConfig,
    /// The sweep file, for the pipeline's name.
    pub file: &'a std::path::Path,
    pub data: &'a std::path::Path,
    pub target: &'a str,
    pub experiment: &'a str,
    pub register: Option<&'a str>,
    pub engine: EngineArg,
    pub dir: &'a std::path::Path,
    pub on: &'a EngineOptions,
}

/// Writes `DIR/NAME.toml` (a pipeline that `kiln pipeline run` runs too) and
/// `DIR/NAME.ENGINE.yaml`.
pub fn export_sweep(s: &SweepExport<'_>) -> Result<Outcome> {
    use kiln_trainer::sweep::Method;
    let config = s.config;
    if matches!(config.method, Method::Tpe | Method::Hyperband) || config.rungs > 1 {
        bail!(
            "an exported sweep runs its trials side by side, so each must be known before any \
             runs: use method = \"random\" or \"grid\" with rungs = 1 (TPE picks each trial from \
             the ones before it; successive halving stops trials between rungs)"
        );
    }
    let stem = s
        .file
        .file_stem()
        .map_or("sweep".into(), |n| n.to_string_lossy().into_owned());
    let name = kiln_scheduler::export::kube_name(&format!("sweep-{stem}"));
    let train_args: Vec<&str> = crate::components::CATALOGUE
        .iter()
        .find(|c| c.name == "train")
        .map(|c| c.args.iter().map(|a| a.name).collect())
        .unwrap_or_default();
    let defaults = serde_json::to_value(kiln_trainer::TrainConfig::default())?;
    let trials = config.trial_params()?;
    let width = trials.len().to_string().len();
    let mut steps = Vec::new();
    let (mut models, mut scores, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (i, params) in trials.iter().enumerate() {
        let trial = serde_json::to_value(config.trial_config(params, None)?)?;
        let mut with = toml::Table::new();
        for (k, v) in trial.as_object().into_iter().flatten() {
            if v.is_null() || defaults.get(k) == Some(v) {
                continue;
            }
            if !train_args.contains(&k.as_str()) {
                bail!(
                    "{}: option `{k}` cannot be given to a pipeline's `train` step; an exported \
                     sweep sets only {}",
                    s.file.display(),
                    train_args.join(", ")
                );
            }
            with.insert(k.clone(), toml::Value::try_from(v)?);
        }
        with.insert("data".into(), "${params.data}".into());
        with.insert("target".into(), s.target.into());
        with.insert("experiment".into(), s.experiment.into());
        let id = format!("trial-{:0width$}", i + 1);
        models.push(toml::Value::from(format!("${{steps.{id}.model}}")));
        scores.push(toml::Value::from(format!(
            "${{steps.{id}.validation_{}}}",
            config.metric
        )));
        let mut step = toml::Table::new();
        step.insert("id".into(), id.clone().into());
        step.insert("uses".into(), "train".into());
        step.insert("with".into(), toml::Value::Table(with));
        steps.push(toml::Value::Table(step));
        ids.push(toml::Value::from(id));
    }
    let mut with = toml::Table::new();
    with.insert("models".into(), toml::Value::Array(models));
    with.insert("scores".into(), toml::Value::Array(scores));
    with.insert("metric".into(), config.metric.clone().into());
    if let Some(r) = s.register {
        with.insert("register".into(), r.into());
    }
    let mut board = toml::Table::new();
    board.insert("id".into(), "leaderboard".into());
    board.insert("needs".into(), toml::Value::Array(ids));
    board.insert("uses".into(), "leaderboard".into());
    board.insert("with".into(), toml::Value::Table(with));
    steps.push(toml::Value::Table(board));
    // The data as the pipeline file reaches it: relative to DIR when it can be.
    std::fs::create_dir_all(s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
    let data =
        std::fs::canonicalize(s.data).with_context(|| format!("reading {}", s.data.display()))?;
    let dir = std::fs::canonicalize(s.dir)?;
    let data_text = relative(&dir, &data);
    let mut pipeline = toml::Table::new();
    pipeline.insert("name".into(), name.clone().into());
    pipeline.insert("parallel".into(), (config.parallel.max(1) as i64).into());
    let mut params = toml::Table::new();
    params.insert("data".into(), data_text.into());
    pipeline.insert("params".into(), toml::Value::Table(params));
    pipeline.insert("steps".into(), toml::Value::Array(steps));
    let text = format!(
        "# {} trials of {} ({} search on {}), each a step of its own, and the best registered.\n\
         # Written by `kiln sweep --export`; `kiln pipeline run` runs it here too.\n{}",
        trials.len(),
        s.file.display(),
        format!("{:?}", config.method).to_lowercase(),
        config.metric,
        toml::to_string(&pipeline)?
    );
    let toml_path = s.dir.join(format!("{name}.toml"));
    std::fs::write(&toml_path, &text)
        .with_context(|| format!("writing {}", toml_path.display()))?;
    eprintln!(
        "wrote {} ({} trials and a leaderboard)",
        toml_path.display(),
        trials.len()
    );
    let exported = export_text(&toml_path, &text, s.engine, s.on)?;
    let engine = match s.engine {
        EngineArg::Argo => "argo",
        EngineArg::Kfp => "kfp",
    };
    write_exported(&s.dir.join(format!("{name}.{engine}.yaml")), &exported)?;
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    if config.budget.is_some() {
        eprintln!("note: the sweep's budget is not exported: every trial runs");
    }
    eprintln!(
        "note: the image needs {} at {} (copy {} there), and the data at the `data` parameter's \
         path (`-p data=…` on Argo)",
        toml_path.display(),
        s.on.file_in_image
            .clone()
            .unwrap_or_else(|| format!("/pipelines/{name}.toml")),
        s.dir.display()
    );
    Ok(Outcome::Ok)
}

/// `to` as a path from `from` (both absolute): `../data/x.csv`.
fn relative(from: &std::path::Path, to: &std::path::Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    // Sharing only the root: the absolute path says more.
    if common <= 1 {
        return to.display().to_string();
    }
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to_parts[common..] {
        out.push(part);
    }
    out.display().to_string()
}
