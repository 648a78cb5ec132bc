//! One pipeline run: its record in the registry, its steps' outputs and values passed on through
//! templates, caching, and the built-in components reached through [`Components`].
//!
//! **Artifacts between steps.** Each step gets an empty output directory
//! (`KILN_HOME/pipelines/NAME/RUN/steps/ID/outputs`) and may report named values (a component's
//! return, or `NAME=VALUE` lines a command writes to `$KILN_VALUES`). `${steps.ID.NAME}` is the
//! value `NAME` of step `ID` when it reported one, else the path of the file `NAME` in its output
//! directory.
//!
//! **Inputs of commands.** A command finds what its needs produced in `$KILN_INPUTS` (JSON:
//! each need's output directory and values) and each need's output directory in
//! `$KILN_INPUT_<ID>`, besides the `${steps.…}` templates.
//!
//! **Metrics of commands.** `NAME=NUMBER` lines a command appends to `$KILN_METRICS` become a
//! tracking run (experiment: the pipeline's name; tagged with the pipeline run and step), a
//! name given several times a series in the order written (a loss per epoch); the step's values
//! get `run` and each metric's last value.
//!
//! **Caching.** A step's cache key is the digest of its definition (parameters, `${date}` and
//! `${run_id}` filled in; references to other steps left as written), the output digests of
//! the steps it needs or names, and the content of every file or directory a component argument
//! names outside the run. When an earlier execution with that key succeeded, the step is
//! *cached*: its outputs and values are that execution's, and the record says which run they
//! came from. `cache = false` on a step, or forcing it, makes it run.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_core::backend::Backend;
use kiln_core::registry::{
    CacheEntry, Lineage, NewRun, PipelineRun, PipelineRunState, Registry, RunStatus, StepExecState,
    StepExecution, run_id_text,
};
use tokio::sync::watch;

use crate::command::run_command;
use crate::executor::{
    Attempt, Event, Limits, StepRecord, StepRunner, StepState, execute_after, execute_with,
};
use crate::hermetic::{Inputs, StepFile};
use crate::pipeline::{
    Action, ComponentSpec, ForEach, Pipeline, Step, parse_with, step_refs, strings_in,
};

/// One call of a built-in component.
#[derive(Clone)]
pub struct ComponentCall {
    /// The registry holding the pipeline's own state (its runs, pinned schemas).
    pub registry: Arc<Registry>,
    /// Where tracking runs and models go: the same registry, or, for a step run on its own
    /// (`kiln pipeline step`), the central kiln it was given.
    pub backend: Arc<dyn Backend>,
    pub pipeline: String,
    pub run: u64,
    /// The run as records name it: its number, or the engine's name for the run of a step run
    /// on its own.
    pub run_name: String,
    pub step: String,
    pub component: String,
    /// The step's `with`, templates filled in. Relative paths are relative to `workdir`.
    pub args: BTreeMap<String, toml::Value>,
    /// The pipeline file's directory.
    pub workdir: PathBuf,
    /// The step's (empty) output directory.
    pub outputs: PathBuf,
    /// The attempt's log file, for lines people will want to read.
    pub log: PathBuf,
    /// Turns true when the step is cancelled or over its timeout: stop early (the result is
    /// not used).
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
}

impl ComponentCall {
    /// A path argument, resolved against the pipeline file's directory.
    pub fn path(&self, arg: &str) -> Option<PathBuf> {
        self.args.get(arg).and_then(toml::Value::as_str).map(|p| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.workdir.join(p)
            }
        })
    }

    /// Appends a line to the attempt's log.
    pub fn log_line(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The built-in components (`uses = "…"`). The binary implements them with the trainer, the
/// serving runtime and the registry; the scheduler knows them only through this trait.
pub trait Components: Send + Sync + 'static {
    /// Every component: its name, arguments and the values it reports. Pipeline files are
    /// checked against it.
    fn catalogue(&self) -> &'static [ComponentSpec];

    /// Runs one component step to its end (on a blocking thread) and returns the values it
    /// reports, or why it failed.
    fn run(&self, call: &ComponentCall) -> Result<BTreeMap<String, String>, ComponentError>;

    /// What else a component step's result depends on, beyond its arguments and inputs (state
    /// kept in the registry, such as a pinned schema): it goes into the step's cache key, so a
    /// change to it runs the step again. Nothing by default.
    fn cache_input(
        &self,
        _registry: &Registry,
        _pipeline: &str,
        _step: &str,
        _component: &str,
        _with: &BTreeMap<String, toml::Value>,
    ) -> String {
        String::new()
    }
}

/// Why a component failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentError {
    pub message: String,
    /// Whether another attempt could go differently: false for a wrong argument, a malformed
    /// file, a model the trainer refuses; the step then fails without using its retries.
    pub retry: bool,
}

impl From<String> for ComponentError {
    /// A failure worth another attempt.
    fn from(message: String) -> ComponentError {
        ComponentError {
            message,
            retry: true,
        }
    }
}

/// Components for pipelines made only of `run` steps.
pub struct NoComponents;

impl Components for NoComponents {
    fn catalogue(&self) -> &'static [ComponentSpec] {
        &[]
    }

    fn run(&self, call: &ComponentCall) -> Result<BTreeMap<String, String>, ComponentError> {
        Err(ComponentError {
            message: format!(
                "component `{}` is not available in this program",
                call.component
            ),
            retry: false,
        })
    }
}

/// Which steps run even when the cache holds their result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    #[default]
    Nothing,
    All,
    Steps(BTreeSet<String>),
}

impl Force {
    fn covers(&self, id: &str) -> bool {
        match self {
            Force::Nothing => false,
            Force::All => true,
            Force::Steps(s) => s.contains(id),
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The pipeline file (its directory is where commands run and relative paths start).
    pub file: PathBuf,
    pub text: String,
    /// Parameters given for this run, over the file's defaults.
    pub params: BTreeMap<String, String>,
    /// `manual`, `schedule` or `backfill`.
    pub trigger: String,
    /// `${date}`, `YYYY-MM-DD`.
    pub logical_date: String,
    pub force: Force,
    pub limits: Limits,
    /// Directories put before `PATH` for commands (where the `kiln` binary is).
    pub path_prefix: Vec<PathBuf>,
    /// What posts the run's summary when the pipeline has `notify = URL`; none: not posted.
    pub notifier: Option<Arc<dyn Notify>>,
}

/// Posts a finished run's summary to a pipeline's `notify` URL (the binary's posts it over
/// HTTP; the scheduler knows no network).
pub trait Notify: Send + Sync {
    fn post(&self, url: &str, summary: &serde_json::Value) -> Result<(), String>;
}

impl std::fmt::Debug for dyn Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notify")
    }
}

/// How often a summary is posted before giving up, and the wait before each retry.
const NOTIFY_BACKOFF: [Duration; 3] = [
    Duration::from_secs(0),
    Duration::from_secs(2),
    Duration::from_secs(8),
];

/// A pipeline file that cannot run, or a run that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{file} has {count} error(s):\n{list}")]
    Invalid {
        file: String,
        count: usize,
        list: String,
    },
    #[error("{0}")]
    Params(String),
    #[error("{0}")]
    Store(#[from] kiln_core::registry::RegistryError),
    #[error("{0}")]
    Io(String),
}

/// The parameters of a run: the file's defaults as text, overridden by `given`, each given value
/// checked against its parameter's type (and written as that type writes it).
pub fn run_params(
    pipeline: &Pipeline,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RunError> {
    let mut params: BTreeMap<String, String> = pipeline
        .params
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect();
    for (k, v) in given {
        let Some(ty) = pipeline.param_types.get(k) else {
            let known: Vec<&str> = params.keys().map(String::as_str).collect();
            return Err(RunError::Params(format!(
                "pipeline `{}` has no parameter `{k}`{}",
                pipeline.name,
                if known.is_empty() {
                    "; it takes none".to_string()
                } else {
                    format!("; it has {}", known.join(", "))
                }
            )));
        };
        let value = ty.parse(v).map_err(|e| {
            RunError::Params(format!(
                "parameter `{k}` of pipeline `{}` is {} {}: {e}",
                pipeline.name,
                if *ty == crate::pipeline::ParamType::Integer {
                    "an"
                } else {
                    "a"
                },
                ty.as_str()
            ))
        })?;
        params.insert(k.clone(), value_text(&value));
    }
    Ok(params)
}

pub use crate::pipeline::value_text;

/// Parses the request's file, records a run and executes it, reporting the record to `on_change`
/// whenever a step starts or ends. Returns the finished record.
pub async fn run_pipeline<C: Components>(
    registry: Arc<Registry>,
    components: Arc<C>,
    request: RunRequest,
    cancel: watch::Receiver<bool>,
    on_change: &(dyn Fn(&PipelineRun) + Sync),
) -> Result<PipelineRun, RunError> {
    let (pipeline, file, workdir) = load(&request, components.catalogue())?;
    let params = run_params(&pipeline, &request.params)?;
    let (pipeline, fanned) =
        crate::pipeline::expand(pipeline, &params).map_err(RunError::Params)?;
    // Durable writes (fsync) run on a blocking thread, not on the async workers.
    let reg = registry.clone();
    let new = PipelineRun {
        id: 0,
        pipeline: pipeline.name.clone(),
        file: file.clone(),
        file_digest: blake3::hash(request.text.as_bytes()).to_hex().to_string(),
        params: params.clone(),
        trigger: request.trigger.clone(),
        logical_date: request.logical_date.clone(),
        state: PipelineRunState::Running,
        started_ms: 0,
        ended_ms: None,
        dir: String::new(),
        steps: pipeline
            .steps
            .iter()
            .chain(&pipeline.on_failure)
            .map(|s| StepExecution::pending(&s.id, &s.needs))
            .collect(),
    };
    let name = pipeline.name.clone();
    let (record, dir) = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
        let mut record = reg.create_pipeline_run(new)?;
        let dir = run_dir(reg.home(), &name, record.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RunError::Io(format!("{}: {e}", dir.display())))?;
        // Commands run in the pipeline file's directory: every path handed to them is absolute.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        record.dir = dir.display().to_string();
        reg.save_pipeline_run(&record)?;
        Ok((record, dir))
    })
    .await
    .map_err(|e| RunError::Io(format!("recording the run: {e}")))??;
    let workdir = std::fs::canonicalize(&workdir).unwrap_or(workdir);
    // Step records are written, in order, by a thread of the run's own, never by the async
    // workers that observe the steps; it flushes after each burst.
    let (steps_tx, steps_rx) = std::sync::mpsc::channel::<(u64, usize, StepExecution)>();
    let recorder = {
        let registry = registry.clone();
        std::thread::Builder::new()
            .name("kiln-run-recorder".into())
            .spawn(move || {
                while let Ok(first) = steps_rx.recv() {
                    for (run, index, step) in std::iter::once(first).chain(steps_rx.try_iter()) {
                        if let Err(e) = registry.save_pipeline_step(run, index, &step) {
                            tracing::warn!("recording pipeline run {run}: {e}");
                        }
                    }
                    if let Err(e) = registry.flush() {
                        tracing::warn!("recording pipeline steps: {e}");
                    }
                }
            })
            .map_err(|e| RunError::Io(format!("starting the run's recorder: {e}")))?
    };
    let runner = Arc::new(Runner {
        steps: Mutex::new(Some(steps_tx)),
        registry: registry.clone(),
        backend: registry.clone(),
        run_name: None,
        alone: None,
        components,
        record: Mutex::new(record),
        pipeline: pipeline.clone(),
        params,
        date: request.logical_date.clone(),
        dir,
        workdir,
        force: request.force.clone(),
        path: search_path(&request.path_prefix),
        failure: Mutex::new(None),
        fanned: Mutex::new(fanned),
    });
    let observe = |event: Event<'_>| runner.note(event, on_change);
    // A device given by a parameter (`device = "${params.device}"`) is known only now.
    let mut pipeline = pipeline;
    for step in &mut pipeline.steps {
        if let Some(device) = step.action.device() {
            step.gpu |= runner
                .fill(&step.id, device, false)
                .is_ok_and(|d| d.eq_ignore_ascii_case("gpu"));
        }
    }
    let mut limits = request.limits;
    if let Some(parallel) = pipeline.parallel {
        limits.parallel = parallel;
    }
    execute_main(&pipeline, &runner, &limits, &cancel, &observe).await;
    let handler_ids: BTreeSet<&str> = pipeline.on_failure.iter().map(|s| s.id.as_str()).collect();
    let main_steps = |steps: &[StepExecution]| -> Vec<StepExecution> {
        steps
            .iter()
            .filter(|s| !handler_ids.contains(s.id.as_str()))
            .cloned()
            .collect()
    };
    let state = run_state(&main_steps(&runner.lock().steps));
    if !pipeline.on_failure.is_empty() {
        if state == PipelineRunState::Failed {
            *runner
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Failure::of(&main_steps(&runner.lock().steps));
            let handlers = Pipeline {
                steps: pipeline.on_failure.clone(),
                on_failure: Vec::new(),
                ..pipeline.clone()
            };
            execute_with(
                &handlers,
                Arc::new(Shared(runner.clone())),
                limits,
                cancel,
                &observe,
            )
            .await;
        } else {
            let mut record = runner.lock();
            for index in 0..record.steps.len() {
                if !handler_ids.contains(record.steps[index].id.as_str()) {
                    continue;
                }
                let s = &mut record.steps[index];
                s.state = StepExecState::Skipped;
                s.reason = Some(format!("on_failure: the run {}", state.as_str()));
                runner.save_step(&record, index);
            }
        }
    }
    let mut record = runner.lock().clone();
    // A failure handler that fails leaves the run failed, as it was; one that succeeds does
    // not make it succeed.
    record.state = state;
    record.ended_ms = Some(now_ms());
    // Every step write is in before the run's final record.
    runner.close_steps();
    let (reg, done) = (registry.clone(), record.clone());
    tokio::task::spawn_blocking(move || {
        if recorder.join().is_err() {
            tracing::warn!("the recorder of pipeline run {} stopped early", done.id);
        }
        reg.save_pipeline_run(&done)
    })
    .await
    .map_err(|e| RunError::Io(format!("recording the run: {e}")))??;
    on_change(&record);
    if let (Some(url), Some(notifier)) = (&pipeline.notify, &request.notifier) {
        notify(notifier.clone(), url.clone(), summary(&record)).await;
    }
    Ok(record)
}

/// A step run on its own, as a workflow engine runs it (see [`crate::hermetic`]).
#[derive(Clone)]
pub struct StepRequest {
    /// The pipeline file, its parameters, `${date}` and the `PATH` prefix (its trigger, force
    /// and notifier are not used).
    pub run: RunRequest,
    pub step: String,
    pub inputs: Inputs,
    /// Where the step's files and record go: absent or empty.
    pub outputs: PathBuf,
    /// The run as records name it (the engine's name for it).
    pub run_name: String,
    /// Where tracking runs and models go.
    pub backend: Arc<dyn Backend>,
    /// For a failure handler (`[[on_failure]]`): the step that failed the run and its error, as
    /// the engine reports them (`KILN_FAILED_STEP`, `KILN_FAILED_ERROR`).
    pub failed: Option<(String, String)>,
}

/// Runs one step of a pipeline on its own: it reads only the output directories of the steps it
/// reads (`inputs`), writes its files and its record to `outputs` (and returns the record), and
/// keeps its scratch state in `scratch` (a registry of its own, thrown away after; the step's log
/// is at [`alone_log`]). Retries and caching are the
/// engine's; the step's `if` and timeout are kept here, and a step whose needs were skipped is
/// skipped, as in a whole run.
pub async fn run_step<C: Components>(
    scratch: Arc<Registry>,
    components: Arc<C>,
    request: StepRequest,
    cancel: watch::Receiver<bool>,
) -> Result<StepFile, RunError> {
    let (pipeline, file, workdir) = load(&request.run, components.catalogue())?;
    let params = run_params(&pipeline, &request.run.params)?;
    let (pipeline, fanned) =
        crate::pipeline::expand(pipeline, &params).map_err(RunError::Params)?;
    let Some(step) = pipeline
        .steps
        .iter()
        .chain(&pipeline.on_failure)
        .find(|s| s.id == request.step)
        .cloned()
    else {
        let ids: Vec<&str> = pipeline.steps.iter().map(|s| s.id.as_str()).collect();
        return Err(RunError::Params(format!(
            "pipeline `{}` has no step `{}`; its steps are {}",
            pipeline.name,
            request.step,
            ids.join(", ")
        )));
    };
    if let Some(ForEach::Step {
        step: source,
        value,
    }) = &step.for_each
    {
        return Err(RunError::Params(format!(
            "step `{}` runs once per item of `${{steps.{source}.{value}}}`, known only during a \
             run: run one of its items, `{}[ITEM]`",
            step.id, step.id
        )));
    }
    let outputs = &request.outputs;
    let empty = match std::fs::read_dir(outputs) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(RunError::Io(format!("{}: {e}", outputs.display()))),
    };
    if !empty {
        return Err(RunError::Io(format!(
            "{}: the outputs directory must be empty or absent (a step writes only its own files)",
            outputs.display()
        )));
    }
    std::fs::create_dir_all(outputs)
        .map_err(|e| RunError::Io(format!("{}: {e}", outputs.display())))?;
    let outputs = std::fs::canonicalize(outputs).unwrap_or_else(|_| outputs.clone());
    let reads = step.reads_items(&fanned);
    let mut executions = Vec::new();
    let mut ended = BTreeMap::new();
    for id in &reads {
        let dir = request.inputs.of(id).ok_or_else(|| {
            RunError::Params(format!(
                "step `{}` reads step `{id}`: give its outputs with --inputs DIR (as DIR/{id}) \
                 or --input {id}=PATH",
                step.id
            ))
        })?;
        let record = StepFile::read(&dir)
            .map_err(|e| RunError::Io(format!("the outputs of step `{id}`: {e}")))?;
        if record.step != *id || record.pipeline != pipeline.name {
            return Err(RunError::Params(format!(
                "{} holds the outputs of step `{}` of pipeline `{}`, not of step `{id}` of `{}`",
                dir.display(),
                record.step,
                record.pipeline,
                pipeline.name
            )));
        }
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        ended.insert(id.clone(), ended_state(record.state));
        executions.push(record.execution(&dir));
    }
    let mut pending = StepExecution::pending(&step.id, &step.needs);
    pending.needs.retain(|n| reads.contains(n));
    executions.push(pending);
    let record = PipelineRun {
        id: 0,
        pipeline: pipeline.name.clone(),
        file: file.clone(),
        file_digest: blake3::hash(request.run.text.as_bytes())
            .to_hex()
            .to_string(),
        params: params.clone(),
        trigger: "step".into(),
        logical_date: request.run.logical_date.clone(),
        state: PipelineRunState::Running,
        started_ms: now_ms(),
        ended_ms: None,
        dir: String::new(),
        steps: executions,
    };
    let dir = scratch.home().join(ALONE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Io(format!("{}: {e}", dir.display())))?;
    let workdir = std::fs::canonicalize(&workdir).unwrap_or(workdir);
    let runner = Arc::new(Runner {
        steps: Mutex::new(None),
        registry: scratch.clone(),
        backend: request.backend.clone(),
        run_name: Some(request.run_name.clone()),
        alone: Some((step.id.clone(), outputs.clone())),
        components,
        record: Mutex::new(record),
        pipeline: pipeline.clone(),
        params,
        date: request.run.logical_date.clone(),
        dir,
        workdir,
        force: Force::All,
        path: search_path(&request.run.path_prefix),
        failure: Mutex::new(request.failed.clone().map(|(step, error)| Failure {
            step,
            error,
            log: None,
        })),
        fanned: Mutex::new(fanned),
    });
    let mut one = step.clone();
    one.needs.retain(|n| reads.contains(n));
    one.retries = 0;
    one.cache = false;
    if let Some(device) = one.action.device() {
        one.gpu |= runner
            .fill(&one.id, device, false)
            .is_ok_and(|d| d.eq_ignore_ascii_case("gpu"));
    }
    let alone = Pipeline {
        steps: vec![one],
        on_failure: Vec::new(),
        ..pipeline.clone()
    };
    execute_after(
        &alone,
        Arc::new(Shared(runner.clone())),
        request.run.limits.clone(),
        cancel,
        &|event| runner.note(event, &|_| {}),
        &ended,
    )
    .await;
    let execution = runner
        .execution(&step.id)
        .ok_or_else(|| RunError::Io(format!("step `{}` left no record", step.id)))?;
    let record = StepFile::of(&pipeline.name, &execution, &outputs);
    record.write(&outputs).map_err(RunError::Io)?;
    Ok(record)
}

/// Where a step run on its own keeps its scratch files, in its scratch registry's home.
const ALONE_DIR: &str = "step";

/// The log a step run on its own (with scratch registry home `scratch`) writes as it goes, for
/// its process to follow.
pub fn alone_log(scratch: &Path, step: &str) -> PathBuf {
    scratch
        .join(ALONE_DIR)
        .join("steps")
        .join(step)
        .join("attempt-1.log")
}

/// How the executor sees a step that ended as `state` in another process.
fn ended_state(state: StepExecState) -> StepState {
    match state {
        StepExecState::Succeeded => StepState::Succeeded,
        StepExecState::Cached => StepState::Cached,
        StepExecState::Skipped => StepState::Skipped,
        StepExecState::TimedOut => StepState::TimedOut,
        StepExecState::Cancelled => StepState::Cancelled,
        StepExecState::UpstreamFailed => StepState::UpstreamFailed,
        StepExecState::Failed | StepExecState::Pending | StepExecState::Running => {
            StepState::Failed
        }
    }
}

/// The request's pipeline, free of errors, with the file's name and directory (where commands
/// run and relative paths start).
fn load(
    request: &RunRequest,
    catalogue: &[ComponentSpec],
) -> Result<(Pipeline, String, PathBuf), RunError> {
    let (pipeline, workdir) = checked(&request.file, &request.text, catalogue)?;
    Ok((pipeline, request.file.display().to_string(), workdir))
}

/// The pipeline in `text` (the file `file`) when it has no errors, the files its components
/// name checked beside it; with its directory. Otherwise every error, each with its line.
pub fn checked(
    file: &Path,
    text: &str,
    catalogue: &[ComponentSpec],
) -> Result<(Pipeline, PathBuf), RunError> {
    let mut parsed = parse_with(text, catalogue);
    let name = file.display().to_string();
    let workdir = file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(p) = &parsed.pipeline {
        parsed
            .diagnostics
            .extend(crate::pipeline::missing_files(p, catalogue, &workdir));
    }
    let errors: Vec<String> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == crate::Severity::Error)
        .map(|d| format!("  {name}:{}:{}: {}", d.line, d.column, d.message))
        .collect();
    match parsed.pipeline {
        Some(p) if errors.is_empty() => Ok((p, workdir)),
        _ => Err(RunError::Invalid {
            count: errors.len(),
            list: errors.join("\n"),
            file: name,
        }),
    }
}

/// Runs a pipeline's main steps. A step that fans out over an earlier step's value
/// (`for_each = "${steps.ID.NAME}"`) waits, with everything that needs it, until that value is
/// known: the steps that can run go first, then each such step becomes its item steps (added to
/// the record, its dependants made to need them all), and the rest goes on; a value that lists
/// no usable items fails the step.
async fn execute_main<C: Components>(
    pipeline: &Pipeline,
    runner: &Arc<Runner<C>>,
    limits: &Limits,
    cancel: &watch::Receiver<bool>,
    observe: &(dyn Fn(Event<'_>) + Sync),
) {
    let mut remaining = pipeline.steps.clone();
    let mut ended: BTreeMap<String, StepState> = BTreeMap::new();
    while !remaining.is_empty() && !*cancel.borrow() {
        // Fan out the steps whose source has run.
        let mut expanded = false;
        for i in 0..remaining.len() {
            let Some(ForEach::Step {
                step: source,
                value,
            }) = remaining[i].for_each.clone()
            else {
                continue;
            };
            if !remaining[i].needs.iter().all(|n| ended.contains_key(n)) {
                continue;
            }
            expanded = true;
            if !ended.get(&source).is_some_and(StepState::produced) {
                // Its source did not produce: the executor records why it does not run.
                remaining[i].for_each = None;
                continue;
            }
            let id = remaining[i].id.clone();
            let text = runner
                .execution(&source)
                .and_then(|e| e.values.get(&value).cloned())
                .unwrap_or_default();
            let items = crate::pipeline::items_of(&text);
            let what = format!("`${{steps.{source}.{value}}}` ({text:?})");
            if let Err(e) = crate::pipeline::check_items(&id, &items, &what) {
                let record = StepRecord {
                    id: id.clone(),
                    state: StepState::Failed,
                    attempts: 0,
                    error: Some(e),
                    reason: None,
                    started: None,
                    finished: None,
                };
                observe(Event::Ended(&record));
                ended.insert(id, StepState::Failed);
                remaining.remove(i);
                break;
            }
            let ids: Vec<String> = items.iter().map(|item| format!("{id}[{item}]")).collect();
            let steps = crate::pipeline::item_steps(&remaining[i], &ids);
            runner.fan_out(&id, &steps);
            for other in remaining.iter_mut() {
                if other.needs.contains(&id) {
                    other.needs.retain(|n| *n != id);
                    other.needs.extend(ids.iter().cloned());
                }
            }
            remaining.splice(i..=i, steps);
            break;
        }
        if expanded {
            continue;
        }
        // Run what does not wait for a fan-out.
        let waiting = waiting_for_fan_out(&remaining);
        let now: Vec<Step> = remaining
            .iter()
            .filter(|s| !waiting.contains(&s.id))
            .cloned()
            .collect();
        if now.is_empty() {
            break;
        }
        remaining.retain(|s| waiting.contains(&s.id));
        let records = execute_after(
            &Pipeline {
                steps: now,
                on_failure: Vec::new(),
                ..pipeline.clone()
            },
            Arc::new(Shared(runner.clone())),
            limits.clone(),
            cancel.clone(),
            observe,
            &ended,
        )
        .await;
        ended.extend(records.into_iter().map(|r| (r.id, r.state)));
    }
    // Steps left: the run was cancelled before they could run.
    for step in remaining {
        let record = StepRecord {
            id: step.id.clone(),
            state: StepState::Cancelled,
            attempts: 0,
            error: None,
            reason: Some("the run was cancelled".into()),
            started: None,
            finished: None,
        };
        observe(Event::Ended(&record));
    }
}

/// The steps that fan out over an earlier step's value, and every step that needs one of them.
fn waiting_for_fan_out(steps: &[Step]) -> BTreeSet<String> {
    let mut waiting: BTreeSet<String> = steps
        .iter()
        .filter(|s| matches!(s.for_each, Some(ForEach::Step { .. })))
        .map(|s| s.id.clone())
        .collect();
    loop {
        let more: Vec<String> = steps
            .iter()
            .filter(|s| !waiting.contains(&s.id) && s.needs.iter().any(|n| waiting.contains(n)))
            .map(|s| s.id.clone())
            .collect();
        if more.is_empty() {
            return waiting;
        }
        waiting.extend(more);
    }
}

/// A run's state from its steps' (the main steps', not the failure handlers').
fn run_state(steps: &[StepExecution]) -> PipelineRunState {
    if steps.iter().any(|s| s.state == StepExecState::Cancelled) {
        PipelineRunState::Cancelled
    } else if steps.iter().any(|s| {
        matches!(
            s.state,
            StepExecState::Failed | StepExecState::TimedOut | StepExecState::UpstreamFailed
        )
    }) {
        PipelineRunState::Failed
    } else {
        PipelineRunState::Succeeded
    }
}

/// The step that failed a run, as its failure handlers see it.
struct Failure {
    step: String,
    error: String,
    /// The last attempt's log.
    log: Option<String>,
}

/// The log's end a failure handler gets in `KILN_FAILED_LOG_TAIL`.
const LOG_TAIL_BYTES: u64 = 4096;

impl Failure {
    /// The first step (in file order) that failed or timed out.
    fn of(steps: &[StepExecution]) -> Option<Failure> {
        let s = steps
            .iter()
            .find(|s| matches!(s.state, StepExecState::Failed | StepExecState::TimedOut))?;
        Some(Failure {
            step: s.id.clone(),
            error: s.error.clone().unwrap_or_default(),
            log: s.logs.last().cloned(),
        })
    }

    /// The last few KiB of the failed attempt's log.
    fn log_tail(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Some(path) = &self.log else {
            return String::new();
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            return String::new();
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(size.saturating_sub(LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The JSON a pipeline's `notify` URL receives when a run ends; `text` is one line for chat
/// webhooks (Slack, Mattermost, Teams' incoming webhooks read it).
fn summary(run: &PipelineRun) -> serde_json::Value {
    let failed: Vec<&StepExecution> = run
        .steps
        .iter()
        .filter(|s| matches!(s.state, StepExecState::Failed | StepExecState::TimedOut))
        .collect();
    let text = match failed.first() {
        Some(s) => format!(
            "kiln: pipeline {} run {} ({}) {} at step {}: {}",
            run.pipeline,
            run.id,
            run.logical_date,
            run.state.as_str(),
            s.id,
            s.error.as_deref().unwrap_or("no error recorded")
        ),
        None => format!(
            "kiln: pipeline {} run {} ({}) {}",
            run.pipeline,
            run.id,
            run.logical_date,
            run.state.as_str()
        ),
    };
    serde_json::json!({
        "text": text,
        "pipeline": run.pipeline,
        "run": run.id,
        "state": run.state.as_str(),
        "trigger": run.trigger,
        "logical_date": run.logical_date,
        "params": run.params,
        "started_ms": run.started_ms,
        "ended_ms": run.ended_ms,
        "failed_steps": failed
            .iter()
            .map(|s| serde_json::json!({
                "id": s.id,
                "state": s.state.as_str(),
                "attempts": s.attempts,
                "error": s.error,
            }))
            .collect::<Vec<_>>(),
        "steps": run
            .steps
            .iter()
            .map(|s| serde_json::json!({ "id": s.id, "state": s.state.as_str() }))
            .collect::<Vec<_>>(),
    })
}

/// The host (and port) of a URL, all a log or a listing shows of a `notify` URL.
pub fn url_host(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .unwrap_or("")
}

/// Posts `summary` to `url`, retrying with backoff; a summary that cannot be delivered is
/// logged (with the URL's host only: such URLs often hold a secret), and the run stands.
async fn notify(notifier: Arc<dyn Notify>, url: String, summary: serde_json::Value) {
    let host = url_host(&url).to_string();
    let mut last = String::new();
    for (attempt, wait) in NOTIFY_BACKOFF.iter().enumerate() {
        tokio::time::sleep(*wait).await;
        let (n, u, s) = (notifier.clone(), url.clone(), summary.clone());
        match tokio::task::spawn_blocking(move || n.post(&u, &s)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => last = e,
            Err(e) => last = e.to_string(),
        }
        tracing::debug!(host = %host, attempt = attempt + 1, error = %last, "posting the run's summary failed");
    }
    tracing::warn!(
        host = %host,
        run = summary["run"].as_u64().unwrap_or(0),
        error = %last,
        "the run's summary could not be posted to its notify URL"
    );
}

/// Where a run keeps its steps' outputs and logs.
pub fn run_dir(home: &Path, pipeline: &str, run: u64) -> PathBuf {
    home.join("pipelines").join(pipeline).join(run.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn search_path(prefix: &[PathBuf]) -> OsString {
    let mut dirs: Vec<PathBuf> = prefix.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

struct Runner<C> {
    /// Where step records go to be written (closed when the run ends).
    steps: Mutex<Option<std::sync::mpsc::Sender<(u64, usize, StepExecution)>>>,
    registry: Arc<Registry>,
    /// Where tracking runs and models go (see [`ComponentCall::backend`]).
    backend: Arc<dyn Backend>,
    /// The run's name in records, when it is not its number (a step run on its own).
    run_name: Option<String>,
    /// A step run on its own, and the output directory it was given.
    alone: Option<(String, PathBuf)>,
    components: Arc<C>,
    record: Mutex<PipelineRun>,
    pipeline: Pipeline,
    params: BTreeMap<String, String>,
    date: String,
    dir: PathBuf,
    workdir: PathBuf,
    force: Force,
    path: OsString,
    /// Set when the main steps have failed, for the failure handlers.
    failure: Mutex<Option<Failure>>,
    /// The item steps of each `for_each` step.
    fanned: Mutex<BTreeMap<String, Vec<String>>>,
}

impl<C: Components> Runner<C> {
    fn lock(&self) -> MutexGuard<'_, PipelineRun> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a step's start or end, and shows the record to `on_change`.
    fn note(&self, event: Event<'_>, on_change: &(dyn Fn(&PipelineRun) + Sync)) {
        let mut record = self.lock();
        let now = now_ms();
        let id = match &event {
            Event::Started { id } => *id,
            Event::Ended(r) => r.id.as_str(),
        };
        let Some(index) = record.steps.iter().position(|s| s.id == id) else {
            return;
        };
        let s = &mut record.steps[index];
        match event {
            Event::Started { .. } => {
                s.state = StepExecState::Running;
                s.started_ms = Some(now);
            }
            Event::Ended(r) => {
                s.state = match r.state {
                    StepState::Succeeded => StepExecState::Succeeded,
                    StepState::Failed => StepExecState::Failed,
                    StepState::TimedOut => StepExecState::TimedOut,
                    StepState::UpstreamFailed => StepExecState::UpstreamFailed,
                    StepState::Skipped => StepExecState::Skipped,
                    StepState::Cached => StepExecState::Cached,
                    StepState::Cancelled => StepExecState::Cancelled,
                };
                s.attempts = r.attempts;
                s.error.clone_from(&r.error);
                s.reason.clone_from(&r.reason);
                if r.finished.is_some() || s.started_ms.is_some() {
                    s.ended_ms = Some(now);
                }
            }
        }
        self.save_step(&record, index);
        on_change(&record);
    }

    fn step_dir(&self, id: &str) -> PathBuf {
        self.dir.join("steps").join(id)
    }

    /// Where step `id` writes its files.
    fn outputs_of(&self, id: &str) -> PathBuf {
        match &self.alone {
            Some((step, dir)) if step == id => dir.clone(),
            _ => self.step_dir(id).join("outputs"),
        }
    }

    /// The run as records name it.
    fn run_name(&self) -> String {
        self.run_name
            .clone()
            .unwrap_or_else(|| self.lock().id.to_string())
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut StepExecution)) {
        let mut record = self.lock();
        if let Some(index) = record.steps.iter().position(|s| s.id == id) {
            change(&mut record.steps[index]);
            self.save_step(&record, index);
        }
    }

    /// Records one step of the run (not the whole run: a step's change costs the same in a
    /// run of any size), through the run's recorder thread.
    fn save_step(&self, record: &PipelineRun, index: usize) {
        let steps = self
            .steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = steps.as_ref() {
            let _ = tx.send((record.id, index, record.steps[index].clone()));
        }
    }

    /// No more step records: the recorder writes what it has and ends.
    fn close_steps(&self) {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn fanned(&self) -> MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.fanned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that step `id` fanned out into `steps`: it is done (its items do its work), the
    /// items join the record, and the steps that needed it need them.
    fn fan_out(&self, id: &str, steps: &[Step]) {
        let ids: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
        self.fanned().insert(id.to_string(), ids.clone());
        let mut record = self.lock();
        let now = now_ms();
        for index in 0..record.steps.len() {
            let s = &record.steps[index];
            if s.id == id {
                let e = &mut record.steps[index];
                e.state = StepExecState::Succeeded;
                e.started_ms = Some(now);
                e.ended_ms = Some(now);
                e.reason = Some(format!("fanned out into {}", ids.join(", ")));
                self.save_step(&record, index);
            } else if s.needs.iter().any(|n| n == id) {
                let e = &mut record.steps[index];
                e.needs.retain(|n| n != id);
                e.needs.extend(ids.iter().cloned());
                self.save_step(&record, index);
            }
        }
        for step in steps {
            record
                .steps
                .push(StepExecution::pending(&step.id, &step.needs));
            let index = record.steps.len() - 1;
            self.save_step(&record, index);
        }
    }

    fn execution(&self, id: &str) -> Option<StepExecution> {
        self.lock().steps.iter().find(|s| s.id == id).cloned()
    }

    /// `text` with templates filled in; with `steps_too` false, `${steps.…}` and `${outputs}`
    /// stay as written (the form that goes into cache keys).
    fn fill(&self, step: &str, text: &str, steps_too: bool) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        for piece in templates(text) {
            match piece? {
                Piece::Text(t) => out.push_str(t),
                Piece::Reference { whole, reference } => {
                    match self.resolve(step, reference, steps_too)? {
                        Some(value) => out.push_str(&value),
                        None => out.push_str(whole),
                    }
                }
            }
        }
        Ok(out)
    }

    /// A `run` line with templates filled in for `sh -c`: plain values as written, any other
    /// value as a quoted reference to an environment variable returned beside the line (see
    /// [`crate::shell`]).
    fn fill_command(
        &self,
        step: &str,
        text: &str,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let mut out = String::with_capacity(text.len());
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut scanner = crate::shell::Scanner::default();
        for piece in templates(text) {
            match piece? {
                Piece::Text(t) => {
                    scanner.feed(t);
                    out.push_str(t);
                }
                Piece::Reference { reference, .. } => {
                    let value = self.resolve(step, reference, true)?.unwrap_or_default();
                    if crate::shell::is_plain(&value) {
                        out.push_str(&value);
                    } else {
                        let base = crate::shell::variable(reference);
                        let mut var = base.clone();
                        let mut n = 1;
                        while vars.get(&var).is_some_and(|v| *v != value) {
                            n += 1;
                            var = format!("{base}_{n}");
                        }
                        out.push_str(&crate::shell::reference(&var, scanner.context()));
                        vars.insert(var, value);
                    }
                    scanner.inserted();
                }
            }
        }
        Ok((out, vars))
    }

    /// The value of one template reference (`params.rows`, `steps.train.model`, `date`); `None`
    /// for a step's value or output when `steps_too` is false.
    fn resolve(
        &self,
        step: &str,
        reference: &str,
        steps_too: bool,
    ) -> Result<Option<String>, String> {
        let parts: Vec<&str> = reference.splitn(3, '.').collect();
        let value = match parts.as_slice() {
            ["params", name] => self
                .params
                .get(*name)
                .cloned()
                .ok_or_else(|| format!("no parameter `{name}`"))?,
            ["date"] => self.date.clone(),
            ["pipeline"] => self.pipeline.name.clone(),
            ["run_id"] => self.run_name(),
            _ if !steps_too => return Ok(None),
            ["outputs"] => self.outputs_of(step).display().to_string(),
            ["steps", id, name] if self.fanned().contains_key(*id) => {
                // A `for_each` step's value: the list of its items' values, as JSON.
                let items = self.fanned().get(*id).cloned().unwrap_or_default();
                let mut values = Vec::new();
                for item in &items {
                    let one = format!("steps.{item}.{name}");
                    values.push(self.resolve(step, &one, steps_too)?.unwrap_or_default());
                }
                serde_json::to_string(&values).map_err(|e| e.to_string())?
            }
            ["steps", id, name] => {
                let exec = self
                    .execution(id)
                    .ok_or_else(|| format!("no step `{id}`"))?;
                match exec.values.get(*name) {
                    Some(v) => v.clone(),
                    None => {
                        let dir = exec.outputs_dir.ok_or_else(|| {
                            format!("step `{id}` has no outputs (it did not run)")
                        })?;
                        Path::new(&dir).join(name).display().to_string()
                    }
                }
            }
            _ => return Err(format!("unknown reference `${{{reference}}}`")),
        };
        Ok(Some(value))
    }

    /// A `with` value with templates filled in; a string that is one template whose value reads
    /// as a number or boolean becomes that number or boolean.
    fn fill_value(&self, step: &str, v: &toml::Value) -> Result<toml::Value, String> {
        Ok(match v {
            toml::Value::String(s) => {
                let filled = self.fill(step, s, true)?;
                let single =
                    s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
                if single {
                    if let Ok(i) = filled.parse::<i64>() {
                        toml::Value::Integer(i)
                    } else if let Ok(f) = filled.parse::<f64>() {
                        toml::Value::Float(f)
                    } else if let Ok(b) = filled.parse::<bool>() {
                        toml::Value::Boolean(b)
                    } else {
                        toml::Value::String(filled)
                    }
                } else {
                    toml::Value::String(filled)
                }
            }
            toml::Value::Array(a) => toml::Value::Array(
                a.iter()
                    .map(|x| self.fill_value(step, x))
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, x)| Ok((k.clone(), self.fill_value(step, x)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    fn cache_key(&self, step: &Step) -> Result<String, String> {
        let mut h = blake3::Hasher::new();
        h.update(b"kiln step 1\0");
        let mut referenced: BTreeSet<String> = step.needs.iter().cloned().collect();
        let mut externals: Vec<PathBuf> = Vec::new();
        match &step.action {
            Action::Run { command } => {
                h.update(b"run\0");
                h.update(self.fill(&step.id, command, false)?.as_bytes());
                referenced.extend(step_refs(command));
            }
            Action::Uses { component, with } => {
                h.update(b"uses\0");
                h.update(component.as_bytes());
                for (k, v) in with {
                    h.update(b"\0");
                    h.update(k.as_bytes());
                    h.update(b"=");
                    for text in strings_in(v) {
                        let partial = self.fill(&step.id, &text, false)?;
                        h.update(partial.as_bytes());
                        h.update(b"\x1f");
                        referenced.extend(step_refs(&text));
                        if !text.contains("${steps.") && !text.contains("${outputs}") {
                            let p = self.workdir.join(&partial);
                            if p.exists() && !p.starts_with(self.registry.home()) {
                                externals.push(p);
                            }
                        }
                    }
                    if !matches!(v, toml::Value::String(_)) {
                        h.update(v.to_string().as_bytes());
                    }
                }
                let extra = self.components.cache_input(
                    &self.registry,
                    &self.pipeline.name,
                    &step.id,
                    component,
                    with,
                );
                if !extra.is_empty() {
                    h.update(b"\0state\0");
                    h.update(extra.as_bytes());
                }
            }
        }
        for id in &referenced {
            let digest = self
                .execution(id)
                .and_then(|e| e.output_digest)
                .unwrap_or_default();
            h.update(b"\0need\0");
            h.update(id.as_bytes());
            h.update(digest.as_bytes());
        }
        for p in externals {
            h.update(b"\0file\0");
            h.update(digest_path(&p)?.as_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// The earlier execution a key names, when its outputs are still there.
    fn lookup(&self, key: &str) -> Result<Option<(u64, StepExecution)>, String> {
        let Some(entry) = self.registry.cached_step(key).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let found = self.registry.pipeline_run(entry.run).ok().and_then(|run| {
            run.steps.into_iter().find(|s| {
                s.id == entry.step
                    && s.output_digest.is_some()
                    && s.outputs_dir
                        .as_deref()
                        .is_some_and(|d| Path::new(d).is_dir())
            })
        });
        match found {
            Some(exec) => Ok(Some((exec.cached_from.unwrap_or(entry.run), exec))),
            None => {
                let _ = self.registry.forget_step(key);
                Ok(None)
            }
        }
    }

    /// Runs `f` on a blocking thread: everything that touches the registry, hashes files or
    /// writes them stays off the async workers.
    async fn blocking<T: Send + 'static>(
        me: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let me = me.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| format!("step task: {e}"))?
    }

    async fn attempt(me: Arc<Self>, step: &Step, attempt: u32) -> Result<Attempt, String> {
        let prepared = {
            let step = step.clone();
            Self::blocking(&me, move |r| r.prepare(&step, attempt)).await?
        };
        let Prepared::Ready {
            key,
            step_dir,
            outputs,
            log,
            work,
        } = prepared
        else {
            let Prepared::Done(done) = prepared else {
                unreachable!("prepare returns Ready or Done")
            };
            return Ok(done);
        };
        let values = match work {
            Work::Command {
                command,
                vars,
                inputs,
            } => {
                let values_file = step_dir.join(format!("values-{attempt}"));
                let metrics_file = step_dir.join(format!("metrics-{attempt}"));
                let inputs_file = step_dir.join(format!("inputs-{attempt}.json"));
                let run_id = me.run_name();
                let attempt_text = attempt.to_string();
                let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![
                    ("KILN_OUTPUTS", outputs.as_os_str()),
                    ("KILN_VALUES", values_file.as_os_str()),
                    ("KILN_METRICS", metrics_file.as_os_str()),
                    ("KILN_INPUTS", inputs_file.as_os_str()),
                    ("KILN_STEP", step.id.as_ref()),
                    ("KILN_RUN_ID", run_id.as_ref()),
                    ("KILN_ATTEMPT", attempt_text.as_ref()),
                    ("KILN_PIPELINE", me.pipeline.name.as_ref()),
                    ("PATH", me.path.as_os_str()),
                ];
                env.extend(inputs.iter().map(|(k, v)| (k.as_str(), v.as_os_str())));
                let params: Vec<(String, &str)> = me
                    .params
                    .iter()
                    .map(|(k, v)| (crate::shell::variable(&format!("params.{k}")), v.as_str()))
                    .collect();
                env.extend(
                    params
                        .iter()
                        .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(*v))),
                );
                env.push(("KILN_DATE", std::ffi::OsStr::new(&me.date)));
                let failed: Vec<(&str, String)> = me
                    .failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                    .map(|f| {
                        vec![
                            ("KILN_FAILED_STEP", f.step.clone()),
                            ("KILN_FAILED_ERROR", f.error.clone()),
                            ("KILN_FAILED_LOG", f.log.clone().unwrap_or_default()),
                            ("KILN_FAILED_LOG_TAIL", f.log_tail()),
                        ]
                    })
                    .unwrap_or_default();
                env.extend(
                    failed
                        .iter()
                        .map(|(k, v)| (*k, std::ffi::OsStr::new(v.as_str()))),
                );
                env.extend(
                    vars.iter()
                        .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v))),
                );
                match run_command(&command, &me.workdir, &env, &log).await {
                    Attempt::Succeeded => {
                        let (mut values, metrics) = Self::blocking(&me, move |_| {
                            Ok((read_values(&values_file)?, read_metrics(&metrics_file)?))
                        })
                        .await?;
                        if !metrics.is_empty() {
                            let run = me.track(step, &command, &metrics).await?;
                            values.entry("run".into()).or_insert(run_id_text(run));
                            for (name, series) in metrics {
                                if let Some(last) = series.last() {
                                    values.entry(name).or_insert(last.to_string());
                                }
                            }
                        }
                        values
                    }
                    other => return Ok(other),
                }
            }
            Work::Component { component, args } => {
                // (Each lock is released before the next is taken.)
                let run = me.lock().id;
                let run_name = me.run_name();
                let call = ComponentCall {
                    registry: me.registry.clone(),
                    backend: me.backend.clone(),
                    pipeline: me.pipeline.name.clone(),
                    run,
                    run_name,
                    step: step.id.clone(),
                    component: component.clone(),
                    args,
                    workdir: me.workdir.clone(),
                    outputs: outputs.clone(),
                    log: log.clone(),
                    cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                };
                // Dropped when the attempt is given up on (cancel, timeout): tells the component.
                let _flag = CancelOnDrop(call.cancelled.clone());
                let components = me.components.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let result = components.run(&call);
                    if let Err(e) = &result {
                        call.log_line(&format!("error: {}", e.message));
                    }
                    result
                })
                .await;
                match result {
                    Ok(Ok(values)) => values,
                    Ok(Err(e)) if e.retry => return Ok(Attempt::Failed(e.message)),
                    Ok(Err(e)) => return Ok(Attempt::Refused(e.message)),
                    Err(e) => {
                        return Ok(Attempt::Failed(format!(
                            "component `{component}` stopped: {e}"
                        )));
                    }
                }
            }
        };
        let step = step.clone();
        Self::blocking(&me, move |r| r.finish(&step, &key, &outputs, values)).await
    }

    /// The part of an attempt before its work: the `if`, the cache key and a cache hit, a fresh
    /// output directory, and the command line or the component's arguments with templates
    /// filled in.
    fn prepare(&self, step: &Step, attempt: u32) -> Result<Prepared, String> {
        if attempt == 1
            && let Some(condition) = &step.condition
        {
            let value = self.fill(&step.id, condition, true)?;
            match value.trim() {
                "true" | "1" | "yes" => {}
                "false" | "0" | "no" | "" => {
                    return Ok(Prepared::Done(Attempt::Skipped(format!(
                        "`if = \"{condition}\"` is {}",
                        value.trim()
                    ))));
                }
                other => {
                    return Err(format!(
                        "`if = \"{condition}\"` is {other:?}, neither true nor false"
                    ));
                }
            }
        }
        let key = self.cache_key(step)?;
        {
            let key = key.clone();
            self.update(&step.id, |e| e.cache_key = Some(key));
        }
        if attempt == 1
            && step.cache
            && !self.force.covers(&step.id)
            && let Some((from, exec)) = self.lookup(&key)?
        {
            let reason = format!(
                "cached: same definition and inputs as in run {from} (rerun with --force {})",
                step.id
            );
            self.update(&step.id, |e| {
                e.cached_from = Some(from);
                e.values = exec.values;
                e.outputs_dir = exec.outputs_dir;
                e.output_digest = exec.output_digest;
                e.logs = exec.logs;
            });
            return Ok(Prepared::Done(Attempt::Cached(reason)));
        }
        let step_dir = self.step_dir(&step.id);
        let outputs = self.outputs_of(&step.id);
        std::fs::create_dir_all(&step_dir).map_err(|e| format!("{}: {e}", step_dir.display()))?;
        if outputs.exists() {
            std::fs::remove_dir_all(&outputs).map_err(|e| format!("{}: {e}", outputs.display()))?;
        }
        std::fs::create_dir_all(&outputs).map_err(|e| format!("{}: {e}", outputs.display()))?;
        let log = step_dir.join(format!("attempt-{attempt}.log"));
        {
            let (log, outputs) = (log.display().to_string(), outputs.display().to_string());
            self.update(&step.id, |e| {
                e.logs.push(log);
                e.outputs_dir = Some(outputs);
                e.values.clear();
                e.output_digest = None;
                e.cached_from = None;
            });
        }
        let work = match &step.action {
            Action::Run { command } => {
                let (command, vars) = self.fill_command(&step.id, command)?;
                let inputs =
                    self.write_inputs(step, &step_dir.join(format!("inputs-{attempt}.json")))?;
                Work::Command {
                    command,
                    vars,
                    inputs,
                }
            }
            Action::Uses { component, with } => Work::Component {
                component: component.clone(),
                args: with
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.fill_value(&step.id, v)?)))
                    .collect::<Result<BTreeMap<_, _>, String>>()?,
            },
        };
        Ok(Prepared::Ready {
            key,
            step_dir,
            outputs,
            log,
            work,
        })
    }

    /// The part of an attempt after its work succeeded: the outputs' digest, the values, and
    /// the cache entry.
    fn finish(
        &self,
        step: &Step,
        key: &str,
        outputs: &Path,
        values: BTreeMap<String, String>,
    ) -> Result<Attempt, String> {
        let digest = output_digest(outputs, &values)?;
        self.update(&step.id, |e| {
            e.values = values;
            e.output_digest = Some(digest);
        });
        if step.cache {
            let entry = CacheEntry {
                run: self.lock().id,
                step: step.id.clone(),
            };
            self.registry
                .remember_step(key, &entry)
                .map_err(|e| e.to_string())?;
        }
        Ok(Attempt::Succeeded)
    }

    /// Writes what a command's needs produced to `file` as JSON (`{"ID": {"outputs": DIR,
    /// "values": {...}}}`) and returns `KILN_INPUT_<ID>` variables with each one's output
    /// directory (the id upper-cased, `-` as `_`).
    fn write_inputs(&self, step: &Step, file: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        let mut json = serde_json::Map::new();
        let mut vars = Vec::new();
        for need in &step.needs {
            let Some(e) = self.execution(need) else {
                continue;
            };
            json.insert(
                need.clone(),
                serde_json::json!({ "outputs": e.outputs_dir, "values": e.values }),
            );
            if let Some(dir) = e.outputs_dir {
                let name = need.to_ascii_uppercase().replace('-', "_");
                vars.push((format!("KILN_INPUT_{name}"), PathBuf::from(dir)));
            }
        }
        let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(vars)
    }

    /// Records a command's metrics as a finished tracking run; returns its id.
    async fn track(
        &self,
        step: &Step,
        command: &str,
        metrics: &BTreeMap<String, Vec<f64>>,
    ) -> Result<u64, String> {
        let new = NewRun {
            experiment: self.pipeline.name.clone(),
            name: step.id.clone(),
            params: BTreeMap::from([("command".to_string(), command.to_string())]),
            tags: BTreeMap::from([
                ("kiln.pipeline".to_string(), self.pipeline.name.clone()),
                ("kiln.pipeline_run".to_string(), self.run_name()),
                ("kiln.pipeline_step".to_string(), step.id.clone()),
            ]),
            parent: None,
            lineage: Lineage::default(),
        };
        let points: Vec<(String, i64, f64)> = metrics
            .iter()
            .flat_map(|(name, series)| {
                series
                    .iter()
                    .enumerate()
                    .map(move |(i, v)| (name.clone(), i as i64, *v))
            })
            .collect();
        let registry = self.backend.clone();
        tokio::task::spawn_blocking(move || {
            let run = registry.create_run(new)?;
            let points: Vec<(&str, i64, f64)> = points
                .iter()
                .map(|(n, i, v)| (n.as_str(), *i, *v))
                .collect();
            registry.log_metrics(run.id, &points)?;
            registry.end_run(run.id, RunStatus::Finished)?;
            Ok::<u64, kiln_core::registry::RegistryError>(run.id)
        })
        .await
        .map_err(|e| format!("recording metrics: {e}"))?
        .map_err(|e| format!("recording metrics: {e}"))
    }
}

/// An attempt's state once it is prepared.
enum Prepared {
    /// Skipped by its `if`, or cached: nothing to run.
    Done(Attempt),
    Ready {
        key: String,
        step_dir: PathBuf,
        outputs: PathBuf,
        log: PathBuf,
        work: Work,
    },
}

/// What an attempt runs.
enum Work {
    Command {
        command: String,
        /// Variables holding the values templated into the command.
        vars: BTreeMap<String, String>,
        /// `KILN_INPUT_<ID>` variables.
        inputs: Vec<(String, PathBuf)>,
    },
    Component {
        component: String,
        args: BTreeMap<String, toml::Value>,
    },
}

/// The runner as the executor holds it: each attempt takes its own handle, so that its blocking
/// parts can move to blocking threads.
struct Shared<C>(Arc<Runner<C>>);

impl<C: Components> StepRunner for Shared<C> {
    async fn run(&self, step: &Step, attempt: u32) -> Attempt {
        match Runner::attempt(self.0.clone(), step, attempt).await {
            Ok(a) => a,
            Err(e) => Attempt::Failed(format!("step `{}`: {e}", step.id)),
        }
    }
}

/// Sets a flag when dropped.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A piece of a templated text.
enum Piece<'a> {
    Text(&'a str),
    /// `${reference}`, as written and trimmed.
    Reference {
        whole: &'a str,
        reference: &'a str,
    },
}

/// A templated text cut into literal text and `${…}` references.
fn templates(text: &str) -> impl Iterator<Item = Result<Piece<'_>, String>> {
    let mut rest = text;
    let mut pending: Option<Piece<'_>> = None;
    std::iter::from_fn(move || {
        if let Some(p) = pending.take() {
            return Some(Ok(p));
        }
        if rest.is_empty() {
            return None;
        }
        let Some(start) = rest.find("${") else {
            let t = rest;
            rest = "";
            return Some(Ok(Piece::Text(t)));
        };
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            rest = "";
            return Some(Err(format!("`${{` without `}}` in {text:?}")));
        };
        let before = &rest[..start];
        let reference = Piece::Reference {
            whole: &rest[start..start + 2 + end + 1],
            reference: after[..end].trim(),
        };
        rest = &after[end + 1..];
        if before.is_empty() {
            Some(Ok(reference))
        } else {
            pending = Some(reference);
            Some(Ok(Piece::Text(before)))
        }
    })
}

/// `NAME=VALUE` lines a command wrote to `$KILN_VALUES` (none when it wrote nothing).
fn read_values(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("$KILN_VALUES line {}: {line:?} is not NAME=VALUE", n + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `NAME=NUMBER` lines: each name's values in the order written.
fn read_metrics(path: &Path) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("$KILN_METRICS line {}: {line:?} is not NAME=NUMBER", n + 1);
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let v: f64 = v.trim().parse().map_err(|_| bad())?;
        out.entry(k.trim().to_string()).or_default().push(v);
    }
    Ok(out)
}

/// The digest of a step's outputs: every file under its directory (path and content) and its
/// values.
fn output_digest(dir: &Path, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut h = blake3::Hasher::new();
    h.update(digest_path(dir)?.as_bytes());
    for (k, v) in values {
        // Values that are paths inside the run differ per run; their files are digested above.
        if v.starts_with(&*dir.to_string_lossy()) {
            h.update(format!("\0{k}=<output>").as_bytes());
        } else {
            h.update(format!("\0{k}={v}").as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The digest of a file's content, or of a directory's files (relative paths and contents, in
/// order).
pub fn digest_path(path: &Path) -> Result<String, String> {
    let mut h = blake3::Hasher::new();
    let mut stack = vec![path.to_path_buf()];
    let mut files = Vec::new();
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))? {
                stack.push(entry.map_err(|e| format!("{}: {e}", p.display()))?.path());
            }
        } else {
            files.push(p);
        }
    }
    files.sort();
    for f in files {
        let rel = f.strip_prefix(path).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update(b"\0");
        let mut file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        h.update_reader(&mut file)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        h.update(b"\0");
    }
    Ok(h.finalize().to_hex().to_string())
}
