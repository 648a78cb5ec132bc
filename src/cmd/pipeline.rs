//! `kiln pipeline …`: validate, run, inspect, cancel and backfill pipelines, and their
//! schedules. Against a running `kiln up` (which owns `KILN_HOME`), `--server URL` does the same
//! through its API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use kiln_core::registry::{PipelineRun, PipelineRunState, StepExecState};
use kiln_core::wire::pipelines::{
    AllSteps, Cancelling, ForceSteps, PipelineInfo, Prune, PruneAnswer, ScheduleChanged, StartRun,
    Started,
};
use kiln_scheduler::pipeline::{Action, Severity};
use kiln_scheduler::run::Force;
use kiln_scheduler::schedule::{fires_between, from_ms, next_fire};
use tokio::sync::watch;

use crate::cmd::registry::{Home, when};
use crate::cmd::remote::{Server, call, call_text, call_with, url_part};
use crate::{Outcome, ui};

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Check a pipeline file: every problem at once, each with its line; the plan of its steps.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline now; its steps' states show as they change.
    Run(RunArgs),
    /// Recent pipeline runs, newest first.
    Runs {
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// One run: each step's state, attempts, timing, cache hits and values.
    Show {
        run: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// The logs of a run's steps (every attempt), or of one step.
    Logs {
        run: u64,
        step: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Cancel a run: running steps are stopped and recorded as cancelled.
    Cancel {
        run: u64,
        #[command(flatten)]
        server: Server,
    },
    /// Run a pipeline once per schedule fire (daily without a schedule) between two dates.
    Backfill {
        file: PathBuf,
        /// First date, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: NaiveDate,
        /// Last date, YYYY-MM-DD, included.
        #[arg(long)]
        to: NaiveDate,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Run the backfill in this `kiln up` (its copy of the pipeline and its schedule).
        #[command(flatten)]
        server: Server,
    },
    /// Pipeline schedules: list them, pause or resume one.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Delete the files (outputs and logs) of old finished runs: each pipeline keeps its newest
    /// runs and the runs whose outputs those reuse from the cache. The run records stay.
    Prune {
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// How many of each pipeline's newest runs keep their files.
        #[arg(long, default_value_t = 20)]
        keep: usize,
        /// Say what would go, and delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Every schedule kiln knows: cron, paused, last and next fire.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Stop a pipeline's schedule from firing (missed fires are not caught up later).
    Pause {
        pipeline: String,
        #[command(flatten)]
        server: Server,
    },
    Resume {
        pipeline: String,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    file: PathBuf,
    /// Set a parameter for this run (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Run this step even if the cache holds its result (repeatable).
    #[arg(long = "force", value_name = "STEP")]
    force: Vec<String>,
    /// Run every step, ignoring the cache.
    #[arg(long, conflicts_with = "force")]
    force_all: bool,
    /// The run's date (`${date}`), YYYY-MM-DD; today (UTC) by default.
    #[arg(long)]
    date: Option<NaiveDate>,
    #[arg(long)]
    json: bool,
    /// With --server, the run starts in that `kiln up` and runs its copy of the pipeline (the
    /// file it was given with --pipeline; FILE names which); its steps show here as they change.
    #[command(flatten)]
    server: Server,
}

pub fn run(home: &Home, command: PipelineCommand) -> Result<Outcome> {
    match command {
        PipelineCommand::Validate { file, json } => validate(&file, json),
        PipelineCommand::Run(args) => run_now(home, args),
        PipelineCommand::Runs {
            pipeline,
            limit,
            json,
            server,
        } => {
            let runs: Vec<PipelineRun> = match &server.server {
                Some(_) => {
                    let mut path = format!("/api/pipeline-runs?limit={limit}");
                    if let Some(p) = &pipeline {
                        path.push_str(&format!("&pipeline={p}"));
                    }
                    call(&server, "GET", &path)?
                }
                None => home
                    .open_registry()?
                    .pipeline_runs(pipeline.as_deref(), limit)?,
            };
            print_runs(&runs, json)
        }
        PipelineCommand::Show { run, json, server } => {
            let record = fetch_run(home, &server, run)?;
            if json {
                ui::print_json(&record)?;
            } else {
                print_run(&record);
            }
            Ok(Outcome::Ok)
        }
        PipelineCommand::Logs { run, step, server } => logs(home, &server, run, step.as_deref()),
        PipelineCommand::Cancel { run, server } => cancel(home, &server, run),
        PipelineCommand::Backfill {
            file,
            from,
            to,
            params,
            json,
            server,
        } => match server.client() {
            Some(_) => backfill_on_server(&server, &file, from, to, &params, json),
            None => backfill(home, &file, from, to, &params, json),
        },
        PipelineCommand::Schedule(c) => schedule(home, c),
        PipelineCommand::Prune {
            pipeline,
            keep,
            dry_run,
            json,
            server,
        } => prune(
            home,
            &server,
            Prune {
                pipeline,
                keep,
                dry_run,
            },
            json,
        ),
    }
}

fn prune(home: &Home, server: &Server, request: Prune, json: bool) -> Result<Outcome> {
    let pruned = match server.client() {
        Some(client) => {
            client
                .send::<PruneAnswer>("POST", "/api/pipeline-runs/prune", Some(&request))?
                .pruned
        }
        None => kiln_scheduler::prune::prune(
            &home.open_registry()?,
            request.pipeline.as_deref(),
            request.keep,
            request.dry_run,
        )?,
    };
    let dry_run = request.dry_run;
    if json {
        ui::print_json(&pruned)?;
        return Ok(Outcome::Ok);
    }
    let total: u64 = pruned.iter().map(|p| p.bytes).sum();
    let rows = pruned
        .iter()
        .map(|p| {
            vec![
                p.pipeline.clone(),
                p.run.to_string(),
                ui::num(p.bytes as f64 / 1e6),
                p.dir.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(&["pipeline", "run", "MB", "directory"], rows, &[1, 2])
    );
    println!(
        "{} the files of {} runs ({:.1} MB); their records stay",
        if dry_run { "would delete" } else { "deleted" },
        pruned.len(),
        total as f64 / 1e6
    );
    Ok(Outcome::Ok)
}

/// The bytes of the files under `path`.
fn validate(file: &Path, json: bool) -> Result<Outcome> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut parsed = kiln_scheduler::parse_with(&text, crate::components::CATALOGUE);
    if let Some(p) = &parsed.pipeline {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parsed
            .diagnostics
            .extend(kiln_scheduler::pipeline::missing_files(
                p,
                crate::components::CATALOGUE,
                dir,
            ));
        parsed.diagnostics.sort_by_key(|d| (d.line, d.column));
    }
    let outcome = if parsed.has_errors() {
        Outcome::Anomalies
    } else {
        Outcome::Ok
    };
    if json {
        ui::print_json(&parsed)?;
        return Ok(outcome);
    }
    for d in &parsed.diagnostics {
        let severity = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        eprintln!(
            "{}:{}:{}: {severity}: {}",
            file.display(),
            d.line,
            d.column,
            d.message
        );
    }
    let Some(p) = &parsed.pipeline else {
        return Ok(outcome);
    };
    if parsed.has_errors() {
        let errors = parsed
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        eprintln!("pipeline `{}`: {errors} errors", p.name);
        return Ok(outcome);
    }
    let levels = kiln_scheduler::levels(p).unwrap_or_default();
    let mut rows = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        for id in level {
            let Some(step) = p.steps.iter().find(|s| &s.id == id) else {
                continue;
            };
            let what = match &step.action {
                Action::Uses { component, .. } => format!("uses {component}"),
                Action::Run { command } => {
                    let short: String = command.chars().take(48).collect();
                    if short.len() < command.len() {
                        format!("run {short}…")
                    } else {
                        format!("run {short}")
                    }
                }
            };
            let what = if step.gpu {
                format!("{what} (holds the GPU)")
            } else {
                what
            };
            rows.push(vec![
                (i + 1).to_string(),
                id.clone(),
                what,
                step.needs.join(", "),
            ]);
        }
    }
    println!(
        "{}",
        ui::table(&["level", "step", "does", "needs"], rows, &[0])
    );
    let schedule = p.schedule.as_ref().map_or("no schedule".to_string(), |s| {
        format!(
            "schedule `{}` (catch-up {}, overlap {})",
            s.cron,
            format!("{:?}", s.catchup).to_lowercase(),
            format!("{:?}", s.overlap).to_lowercase()
        )
    });
    println!(
        "pipeline `{}` is valid: {} steps in {} levels; {schedule}",
        p.name,
        p.steps.len(),
        levels.len()
    );
    Ok(outcome)
}

fn parse_params(given: &[String]) -> Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--param {p:?}: give NAME=VALUE"))
        })
        .collect()
}

fn date_time(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// An async runtime for the pipeline commands, with Ctrl-C turning `stop` true.
fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::cmd::serve::async_runtime("kiln-pipeline")
}

fn on_ctrl_c(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: stopping running steps");
            let _ = tx.send(true);
        }
    });
}

/// Prints each step's state when it changes.
struct Live {
    seen: Mutex<BTreeMap<String, StepExecState>>,
    quiet: bool,
}

impl Live {
    fn show(&self, run: &PipelineRun) {
        if self.quiet {
            return;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in &run.steps {
            if seen.get(&s.id) == Some(&s.state) || s.state == StepExecState::Pending {
                continue;
            }
            seen.insert(s.id.clone(), s.state);
            let took = match (s.started_ms, s.ended_ms) {
                (Some(a), Some(b)) => format!(" in {}", seconds(b - a)),
                _ => String::new(),
            };
            let note = match s.state {
                StepExecState::Running => String::new(),
                StepExecState::Failed | StepExecState::TimedOut => {
                    format!(": {}", s.error.as_deref().unwrap_or(""))
                }
                _ => s
                    .reason
                    .as_deref()
                    .map_or(String::new(), |r| format!(": {r}")),
            };
            eprintln!(
                "  {} {:<16} {}{took}{note}",
                mark(s.state),
                s.id,
                s.state.as_str()
            );
        }
    }
}

fn mark(state: StepExecState) -> &'static str {
    match state {
        StepExecState::Pending => "·",
        StepExecState::Running => "▶",
        StepExecState::Succeeded => "✓",
        StepExecState::Cached => "≡",
        StepExecState::Skipped => "–",
        StepExecState::Failed | StepExecState::TimedOut => "✗",
        StepExecState::UpstreamFailed | StepExecState::Cancelled => "○",
    }
}

fn seconds(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn run_now(home: &Home, args: RunArgs) -> Result<Outcome> {
    if args.server.server.is_some() {
        return run_on_server(&args);
    }
    let params = parse_params(&args.params)?;
    let force = if args.force_all {
        Force::All
    } else if args.force.is_empty() {
        Force::Nothing
    } else {
        Force::Steps(args.force.iter().cloned().collect())
    };
    let date = args.date.map_or_else(Utc::now, date_time);
    let registry = Arc::new(home.open_registry()?);
    let rt = runtime()?;
    let record = rt.block_on(async {
        let (tx, stop) = watch::channel(false);
        on_ctrl_c(tx);
        let service = crate::components::service(registry, stop);
        service.recover()?;
        let request = service.request(&args.file, params, "manual", date, force)?;
        let live = Live {
            seen: Mutex::new(BTreeMap::new()),
            quiet: args.json,
        };
        let mut announced = false;
        let announce = Mutex::new(&mut announced);
        let record = service
            .run(request, &|run| {
                let mut a = announce
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !**a && !args.json {
                    eprintln!("pipeline `{}` run {} ({})", run.pipeline, run.id, run.dir);
                    **a = true;
                }
                live.show(run);
            })
            .await?;
        anyhow::Ok(record)
    })?;
    finish(&record, args.json)
}

/// Starts a run in a running `kiln up` and follows it to its end; Ctrl-C in the REPL cancels it.
fn run_on_server(args: &RunArgs) -> Result<Outcome> {
    let name = pipeline_name(&args.file)?;
    let force = if args.force_all {
        Some(ForceSteps::All(AllSteps::All))
    } else if args.force.is_empty() {
        None
    } else {
        Some(ForceSteps::Steps(args.force.clone()))
    };
    let body = StartRun {
        params: parse_params(&args.params)?
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        force,
        date: args.date.map(|d| d.to_string()),
    };
    let run = start_and_follow(&args.server, &name, &body, args.json)?;
    finish(&run, args.json)
}

/// Starts a run of `name` in a running `kiln up` and follows it to its end, drawing its steps
/// as they change; Ctrl-C in the REPL cancels it.
fn start_and_follow(
    server: &Server,
    name: &str,
    body: &StartRun,
    json: bool,
) -> Result<PipelineRun> {
    let started: Started = call_with(
        server,
        "POST",
        &format!("/api/pipelines/{}/runs", url_part(name)),
        Some(&serde_json::to_value(body)?),
    )?;
    let id = started.run;
    if !json {
        eprintln!(
            "pipeline `{name}` run {id} started in the kiln up at {}",
            server.server.as_deref().unwrap_or_default()
        );
    }
    let live = Live {
        seen: Mutex::new(BTreeMap::new()),
        quiet: json,
    };
    let mut cancelled = false;
    loop {
        let run: PipelineRun = call(server, "GET", &format!("/api/pipeline-runs/{id}"))?;
        live.show(&run);
        if run.state != PipelineRunState::Running {
            return Ok(run);
        }
        if !cancelled && ui::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("cancelling run {id}");
            // The run may have ended meanwhile (409): the next look says how.
            let answer: Result<Cancelling> =
                call(server, "POST", &format!("/api/pipeline-runs/{id}/cancel"));
            if let Err(e) = answer {
                eprintln!("{e:#}");
            }
            cancelled = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints a finished run's summary; a run that did not succeed is an error.
fn finish(record: &PipelineRun, json: bool) -> Result<Outcome> {
    if json {
        ui::print_json(record)?;
    } else {
        print_run(record);
    }
    match record.state {
        PipelineRunState::Succeeded => Ok(Outcome::Ok),
        PipelineRunState::Cancelled => bail!("pipeline run {} was cancelled", record.id),
        _ => {
            let failed: Vec<String> = record
                .steps
                .iter()
                .filter(|s| matches!(s.state, StepExecState::Failed | StepExecState::TimedOut))
                .map(|s| format!("`{}`", s.id))
                .collect();
            bail!(
                "pipeline run {} failed at step {}; see `kiln pipeline logs {} STEP`",
                record.id,
                failed.join(", "),
                record.id
            )
        }
    }
}

fn duration_of(run: &PipelineRun) -> String {
    run.ended_ms
        .map_or("running".to_string(), |e| seconds(e - run.started_ms))
}

fn print_run(run: &PipelineRun) {
    let rows = run
        .steps
        .iter()
        .map(|s| {
            let took = match (s.started_ms, s.ended_ms) {
                (Some(a), Some(b)) => seconds(b - a),
                _ => "-".to_string(),
            };
            let note = match s.state {
                StepExecState::Failed | StepExecState::TimedOut => {
                    s.error.clone().unwrap_or_default()
                }
                _ => {
                    let mut parts: Vec<String> = s.reason.iter().cloned().collect();
                    let shown: Vec<String> = s
                        .values
                        .iter()
                        .filter(|(_, v)| !v.starts_with('/') && v.len() <= 40)
                        .map(|(k, v)| format!("{k}={v}"))
                        .take(4)
                        .collect();
                    if !shown.is_empty() {
                        parts.push(shown.join(" "));
                    }
                    parts.join("; ")
                }
            };
            let note: String = if note.chars().count() > 100 {
                format!("{}…", note.chars().take(99).collect::<String>())
            } else {
                note
            };
            vec![
                format!("{} {}", mark(s.state), s.id),
                s.state.as_str().to_string(),
                s.attempts.to_string(),
                took,
                note,
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(
            &["step", "state", "attempts", "took", "note"],
            rows,
            &[2, 3]
        )
    );
    let cached = run
        .steps
        .iter()
        .filter(|s| s.state == StepExecState::Cached)
        .count();
    println!(
        "\npipeline `{}` run {} {} in {} ({} of {} steps cached; {}, date {}, started {})",
        run.pipeline,
        run.id,
        run.state.as_str(),
        duration_of(run),
        cached,
        run.steps.len(),
        run.trigger,
        run.logical_date,
        when(run.started_ms)
    );
}

fn print_runs(runs: &[PipelineRun], json: bool) -> Result<Outcome> {
    if json {
        ui::print_json(&runs)?;
        return Ok(Outcome::Ok);
    }
    let rows = runs
        .iter()
        .map(|r| {
            let count =
                |f: &dyn Fn(StepExecState) -> bool| r.steps.iter().filter(|s| f(s.state)).count();
            vec![
                r.id.to_string(),
                r.pipeline.clone(),
                r.state.as_str().to_string(),
                r.trigger.clone(),
                r.logical_date.clone(),
                when(r.started_ms),
                duration_of(r),
                format!(
                    "{} ran, {} cached, {} failed",
                    count(&|s| s == StepExecState::Succeeded),
                    count(&|s| s == StepExecState::Cached),
                    count(&|s| matches!(s, StepExecState::Failed | StepExecState::TimedOut))
                ),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(
            &[
                "run", "pipeline", "state", "trigger", "date", "started", "took", "steps"
            ],
            rows,
            &[0]
        )
    );
    Ok(Outcome::Ok)
}

fn fetch_run(home: &Home, server: &Server, id: u64) -> Result<PipelineRun> {
    match &server.server {
        Some(_) => call(server, "GET", &format!("/api/pipeline-runs/{id}")),
        None => Ok(home.open_registry()?.pipeline_run(id)?),
    }
}

fn logs(home: &Home, server: &Server, id: u64, step: Option<&str>) -> Result<Outcome> {
    let run = fetch_run(home, server, id)?;
    if let Some(s) = step
        && !run.steps.iter().any(|x| x.id == s)
    {
        bail!(
            "run {id} has no step `{s}`{}",
            kiln_core::suggest::hint(s, run.steps.iter().map(|x| x.id.as_str()))
        );
    }
    for s in run.steps.iter().filter(|x| step.is_none_or(|w| w == x.id)) {
        if s.logs.is_empty() {
            if step.is_some() {
                println!("== {} ({}): no log; it did not run", s.id, s.state.as_str());
            }
            continue;
        }
        for (n, path) in s.logs.iter().enumerate() {
            let from = s
                .cached_from
                .map_or(String::new(), |r| format!(", cached from run {r}"));
            println!("== {} attempt {}{from} ({path})", s.id, n + 1);
            let text = match &server.server {
                Some(_) => call_text(
                    server,
                    &format!(
                        "/api/pipeline-runs/{id}/logs/{}/{}?from=0&bytes={}",
                        s.id,
                        n + 1,
                        16 << 20
                    ),
                )?,
                None => match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        "(deleted by `kiln pipeline prune`, or by hand)\n".to_string()
                    }
                    Err(e) => format!("(unreadable: {e})\n"),
                },
            };
            print!("{text}");
            if !text.ends_with('\n') && !text.is_empty() {
                println!();
            }
        }
    }
    Ok(Outcome::Ok)
}

fn cancel(home: &Home, server: &Server, id: u64) -> Result<Outcome> {
    if server.server.is_some() {
        let answer: Cancelling = call(server, "POST", &format!("/api/pipeline-runs/{id}/cancel"))?;
        println!("{}", answer.message);
        return Ok(Outcome::Ok);
    }
    // Opening the registry means no other process runs this run: it was left behind.
    let registry = home.open_registry()?;
    let run = registry.pipeline_run(id)?;
    if run.state != PipelineRunState::Running {
        bail!("run {id} is not running: it {}", run.state.as_str());
    }
    let (_tx, stop) = watch::channel(false);
    let recovered = crate::components::service(Arc::new(registry), stop).recover()?;
    println!(
        "run {id} was left running by a stopped kiln; recorded as cancelled ({} runs)",
        recovered.len()
    );
    Ok(Outcome::Ok)
}

/// When a backfill runs a pipeline: each time its schedule (`cron`) fires from `from` to `to`,
/// or each day at midnight UTC when it has none.
fn backfill_fires(
    name: &str,
    cron: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<DateTime<Utc>>> {
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let start = date_time(from) - chrono::Duration::milliseconds(1);
    let end = date_time(to) + chrono::Duration::days(1) - chrono::Duration::milliseconds(1);
    let fires: Vec<DateTime<Utc>> = match cron {
        Some(c) => {
            let cron = c.parse().map_err(|e| anyhow!("cron: {e}"))?;
            fires_between(&cron, start, end, 10_000)
        }
        None => from
            .iter_days()
            .take_while(|d| *d <= to)
            .map(date_time)
            .collect(),
    };
    if fires.is_empty() {
        bail!("the schedule of `{name}` does not fire between {from} and {to}");
    }
    Ok(fires)
}

/// A backfill in a running `kiln up`: its copy of the pipeline, at the times its schedule fires,
/// one run after another, each followed to its end.
fn backfill_on_server(
    server: &Server,
    file: &Path,
    from: NaiveDate,
    to: NaiveDate,
    params: &[String],
    json: bool,
) -> Result<Outcome> {
    let name = pipeline_name(file)?;
    let known: Vec<PipelineInfo> = call(server, "GET", "/api/pipelines")?;
    let info = known.iter().find(|p| p.pipeline == name).ok_or_else(|| {
        anyhow!(
            "the kiln up at {} runs no pipeline `{name}`{}",
            server.server.as_deref().unwrap_or_default(),
            kiln_core::suggest::hint(&name, known.iter().map(|p| p.pipeline.as_str()))
        )
    })?;
    let cron = Some(info.cron.as_str()).filter(|c| !c.is_empty());
    let fires = backfill_fires(&name, cron, from, to)?;
    let params: BTreeMap<String, serde_json::Value> = parse_params(params)?
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let mut runs = Vec::new();
    for (n, fire) in fires.iter().enumerate() {
        if ui::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if !json {
            backfill_line(n, fires.len(), fire);
        }
        let body = StartRun {
            params: params.clone(),
            force: None,
            date: Some(fire.to_rfc3339()),
        };
        runs.push(start_and_follow(server, &name, &body, json)?);
    }
    backfilled(&runs, json)
}

/// The progress line of the `n`th of `total` backfill runs.
fn backfill_line(n: usize, total: usize, fire: &DateTime<Utc>) {
    eprintln!(
        "backfill {}/{total}: {}",
        n + 1,
        fire.format("%Y-%m-%d %H:%M")
    );
}

/// Prints a backfill's runs; any that did not succeed make it an error.
fn backfilled(runs: &[PipelineRun], json: bool) -> Result<Outcome> {
    let failed = runs
        .iter()
        .filter(|r| r.state != PipelineRunState::Succeeded)
        .count();
    print_runs(runs, json)?;
    if failed > 0 {
        bail!("{failed} of {} backfill runs did not succeed", runs.len());
    }
    Ok(Outcome::Ok)
}

/// The name a pipeline file gives its pipeline.
fn pipeline_name(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    kiln_scheduler::parse_with(&text, crate::components::CATALOGUE)
        .pipeline
        .map(|p| p.name)
        .ok_or_else(|| {
            anyhow!(
                "{}: not a pipeline file; `kiln pipeline validate {0}` says why",
                file.display()
            )
        })
}

fn backfill(
    home: &Home,
    file: &Path,
    from: NaiveDate,
    to: NaiveDate,
    params: &[String],
    json: bool,
) -> Result<Outcome> {
    let params = parse_params(params)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = kiln_scheduler::parse_with(&text, crate::components::CATALOGUE);
    let has_errors = parsed.has_errors();
    let pipeline = parsed.pipeline.filter(|_| !has_errors).ok_or_else(|| {
        anyhow!(
            "{} has errors; `kiln pipeline validate {}` lists them",
            file.display(),
            file.display()
        )
    })?;
    let cron = pipeline.schedule.as_ref().map(|s| s.cron.as_str());
    let fires = backfill_fires(&pipeline.name, cron, from, to)?;
    let registry = Arc::new(home.open_registry()?);
    let rt = runtime()?;
    let runs = rt.block_on(async {
        let (tx, stop) = watch::channel(false);
        on_ctrl_c(tx);
        let service = crate::components::service(registry, stop.clone());
        service.recover()?;
        let mut runs = Vec::new();
        for (n, fire) in fires.iter().enumerate() {
            if *stop.borrow() {
                break;
            }
            if !json {
                backfill_line(n, fires.len(), fire);
            }
            let request =
                service.request(file, params.clone(), "backfill", *fire, Force::Nothing)?;
            let live = Live {
                seen: Mutex::new(BTreeMap::new()),
                quiet: json,
            };
            runs.push(service.run(request, &|r| live.show(r)).await?);
        }
        anyhow::Ok(runs)
    })?;
    backfilled(&runs, json)
}

fn schedule(home: &Home, command: ScheduleCommand) -> Result<Outcome> {
    let (pipeline, paused, server) = match command {
        ScheduleCommand::List { json, server } => {
            let states: Vec<kiln_core::registry::ScheduleState> = match &server.server {
                Some(_) => call::<Vec<PipelineInfo>>(&server, "GET", "/api/pipelines")?
                    .into_iter()
                    .filter(|p| !p.cron.is_empty())
                    .map(|p| kiln_core::registry::ScheduleState {
                        pipeline: p.pipeline,
                        file: p.file,
                        cron: p.cron,
                        paused: p.paused,
                        last_fire_ms: p.last_fire_ms,
                    })
                    .collect(),
                None => home.open_registry()?.schedule_states()?,
            };
            if json {
                ui::print_json(&states)?;
                return Ok(Outcome::Ok);
            }
            let now = Utc::now();
            let rows = states
                .iter()
                .map(|s| {
                    let next = next_fire(&s.cron, now).map_or("-".to_string(), |t| {
                        t.format("%Y-%m-%d %H:%M UTC").to_string()
                    });
                    vec![
                        s.pipeline.clone(),
                        s.cron.clone(),
                        if s.paused { "paused" } else { "active" }.to_string(),
                        s.last_fire_ms.map_or("-".to_string(), |m| {
                            from_ms(m).format("%Y-%m-%d %H:%M UTC").to_string()
                        }),
                        if s.paused { "-".to_string() } else { next },
                        s.file.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                ui::table(
                    &[
                        "pipeline",
                        "cron",
                        "state",
                        "last fire",
                        "next fire",
                        "file"
                    ],
                    rows,
                    &[]
                )
            );
            return Ok(Outcome::Ok);
        }
        ScheduleCommand::Pause { pipeline, server } => (pipeline, true, server),
        ScheduleCommand::Resume { pipeline, server } => (pipeline, false, server),
    };
    let verb = if paused { "pause" } else { "resume" };
    if server.server.is_some() {
        let _: ScheduleChanged = call(
            &server,
            "POST",
            &format!("/api/pipelines/{}/schedule/{verb}", url_part(&pipeline)),
        )?;
    } else {
        let registry = home.open_registry()?;
        let mut state = registry.schedule_state(&pipeline)?.ok_or_else(|| {
            let known: BTreeSet<String> = registry
                .schedule_states()
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.pipeline)
                .collect();
            anyhow!(
                "no schedule for pipeline `{pipeline}`{}; schedules start with `kiln up --pipeline FILE`",
                kiln_core::suggest::hint(&pipeline, known.iter().map(String::as_str))
            )
        })?;
        state.paused = paused;
        registry.save_schedule_state(&state)?;
    }
    println!("schedule of `{pipeline}` {verb}d");
    Ok(Outcome::Ok)
}
