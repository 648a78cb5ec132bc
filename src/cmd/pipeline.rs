//! `kiln pipeline …`: validate, run, inspect, cancel and backfill pipelines, and their
//! schedules. Against a running `kiln up` (which owns `KILN_HOME`), `--server URL` does the same
//! through its API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use kiln_core::backend::Pipelines;
use kiln_core::registry::{PipelineRun, PipelineRunState, StepExecState};
use kiln_core::wire::pipelines::{AllSteps, ForceSteps, Prune, Pruned, StartRun};
use kiln_scheduler::pipeline::{Action, Severity};
use kiln_scheduler::schedule::{fires_between, from_ms, next_fire};

use crate::cmd::registry::{Home, when};
use crate::cmd::remote::Server;
use crate::{Outcome, ui};

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Check a pipeline file: every problem at once, each with its line; the plan of its steps.
    Validate {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline now; its steps' states show as they change.
    Run(RunArgs),
    /// Run one step on its own, as a workflow engine runs it: only the outputs of the steps it
    /// reads, its files and record to one directory, its runs and models to KILN_SERVER.
    Step(crate::cmd::engines::StepArgs),
    /// Write the pipeline as an Argo Workflows WorkflowTemplate (and CronWorkflow) or a
    /// Kubeflow Pipelines v2 spec, each step a container running `kiln pipeline step`.
    Export(crate::cmd::engines::ExportArgs),
    /// Recent pipeline runs, newest first.
    Runs {
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// One run: each step's state, attempts, timing, cache hits and values.
    Show {
        /// The pipeline run's number.
        run: u64,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// The logs of a run's steps (every attempt), or of one step.
    Logs {
        /// The pipeline run's number.
        run: u64,
        /// Only this step's log.
        step: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Cancel a run: running steps are stopped and recorded as cancelled.
    Cancel {
        /// The pipeline run's number.
        run: u64,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Run a pipeline once per schedule fire (daily without a schedule) between two dates.
    Backfill {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// First date, YYYY-MM-DD (UTC).
        #[arg(long)]
        from: NaiveDate,
        /// Last date, YYYY-MM-DD, included.
        #[arg(long)]
        to: NaiveDate,
        /// Set a parameter for every run (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Run the backfill in this `kiln up` (its copy of the pipeline and its schedule).
        #[command(flatten)]
        server: Server,
    },
    /// Pipeline schedules: list them, pause or resume one.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// The schemas `validate` steps check each run's data against: pinned by the first run,
    /// changed only when accepted.
    #[command(subcommand)]
    Schema(SchemaCommand),
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
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// The schema pinned for each `validate` step of a pipeline: from which run, how, by whom
    /// and why, and the pins before it.
    Show {
        /// The pipeline's name.
        pipeline: String,
        /// Only this `validate` step.
        #[arg(long)]
        step: Option<String>,
        /// Print the result as JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// What a run's data would change in the pinned schema: its anomalies against it, and the
    /// schema inferred from that data.
    Diff {
        /// The pipeline's name.
        pipeline: String,
        /// The run whose data to compare.
        #[arg(long)]
        run: u64,
        /// The `validate` step, when the pipeline has several.
        #[arg(long)]
        step: Option<String>,
        /// Print the result as JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Pin the schema inferred from a run's data (after reviewing `diff`), recorded with who
    /// and why; later runs are checked against it.
    Accept {
        /// The pipeline's name.
        pipeline: String,
        /// The run whose data's schema to pin.
        #[arg(long)]
        run: u64,
        /// The `validate` step, when the pipeline has several.
        #[arg(long)]
        step: Option<String>,
        /// Why the new schema is right (kept with the pin).
        #[arg(long)]
        reason: String,
        /// Print what changed as JSON.
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
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Stop a pipeline's schedule from firing (missed fires are not caught up later).
    Pause {
        /// The pipeline's name.
        pipeline: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    Resume {
        /// The pipeline's name.
        pipeline: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML); with --server, it names which of the server's pipelines runs.
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
    /// Print the result as JSON instead of a table.
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
        PipelineCommand::Step(args) => crate::cmd::engines::step(home, args),
        PipelineCommand::Export(args) => crate::cmd::engines::export(args),
        PipelineCommand::Runs {
            pipeline,
            limit,
            json,
            server,
        } => print_runs(
            &server
                .pipelines(home)?
                .pipeline_runs(pipeline.as_deref(), limit)?,
            json,
        ),
        PipelineCommand::Show { run, json, server } => {
            let record = server.pipelines(home)?.pipeline_run(run)?;
            if json {
                ui::print_json(&record)?;
            } else {
                print_run(&record);
            }
            Ok(Outcome::Ok)
        }
        PipelineCommand::Logs { run, step, server } => {
            logs(&*server.pipelines(home)?, run, step.as_deref())
        }
        PipelineCommand::Cancel { run, json, server } => {
            let message = server.pipelines(home)?.cancel(run)?;
            let what = serde_json::json!({ "run": run, "message": message });
            ui::changed(json, &what, || message.clone())?;
            Ok(Outcome::Ok)
        }
        PipelineCommand::Backfill {
            file,
            from,
            to,
            params,
            json,
            server,
        } => backfill(&*server.pipelines(home)?, &file, from, to, &params, json),
        PipelineCommand::Schedule(c) => schedule(home, c),
        PipelineCommand::Schema(c) => schema(home, c),
        PipelineCommand::Prune {
            pipeline,
            keep,
            dry_run,
            json,
            server,
        } => {
            let request = Prune {
                pipeline,
                keep,
                dry_run,
            };
            prune(&server.pipelines(home)?.prune(&request)?, dry_run, json)
        }
    }
}

fn prune(pruned: &[Pruned], dry_run: bool, json: bool) -> Result<Outcome> {
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
            let what = match &step.for_each {
                Some(kiln_scheduler::pipeline::ForEach::Param(p)) => {
                    format!("{what}, for each of params.{p}")
                }
                Some(kiln_scheduler::pipeline::ForEach::Items(items)) => {
                    format!("{what}, for each of {}", items.join(", "))
                }
                Some(kiln_scheduler::pipeline::ForEach::Step { step, value }) => {
                    format!("{what}, for each of steps.{step}.{value}")
                }
                None => what,
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
    if !p.on_failure.is_empty() {
        let ids: Vec<&str> = p.on_failure.iter().map(|s| s.id.as_str()).collect();
        println!("when a run fails: {}", ids.join(", "));
    }
    if let Some(url) = &p.notify {
        println!(
            "every finished run is announced to {} (notify)",
            kiln_scheduler::run::url_host(url)
        );
    }
    Ok(outcome)
}

pub fn parse_params(given: &[String]) -> Result<BTreeMap<String, String>> {
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
    let name = pipeline_name(&args.file)?;
    let request = StartRun {
        params: parse_params(&args.params)?
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        force: if args.force_all {
            Some(ForceSteps::All(AllSteps::All))
        } else {
            Some(ForceSteps::Steps(args.force.clone())).filter(|_| !args.force.is_empty())
        },
        date: args.date.map(|d| d.to_string()),
    };
    let pipelines = args.server.pipelines(home)?;
    let run = follow(
        &*pipelines,
        &name,
        &args.file,
        &request,
        "manual",
        args.json,
    )?;
    finish(&run, args.json)
}

/// Runs a pipeline to its end wherever `pipelines` runs it, drawing its steps as they change;
/// Ctrl-C cancels it.
fn follow(
    pipelines: &dyn Pipelines,
    name: &str,
    file: &Path,
    request: &StartRun,
    trigger: &str,
    json: bool,
) -> Result<PipelineRun> {
    ui::watch_ctrl_c();
    let live = Live {
        seen: Mutex::new(BTreeMap::new()),
        quiet: json,
    };
    let announced = AtomicBool::new(json);
    let place = pipelines.describe();
    let on_change = |run: &PipelineRun| {
        if !announced.swap(true, Ordering::Relaxed) {
            eprintln!(
                "pipeline `{}` run {} started in {} ({})",
                run.pipeline, run.id, place, run.dir
            );
        }
        live.show(run);
    };
    Ok(
        pipelines.run_pipeline(name, file, request, trigger, &on_change, &|| {
            ui::INTERRUPTED.load(Ordering::Relaxed)
        })?,
    )
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

fn logs(pipelines: &dyn Pipelines, id: u64, step: Option<&str>) -> Result<Outcome> {
    let run = pipelines.pipeline_run(id)?;
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
            let text = pipelines.step_log(&run, &s.id, n + 1)?;
            print!("{text}");
            if !text.ends_with('\n') && !text.is_empty() {
                println!();
            }
        }
    }
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

/// Runs a pipeline at the times its schedule fires from `from` to `to`, one run after
/// another; in a `kiln up`, its copy of the pipeline and its schedule.
fn backfill(
    pipelines: &dyn Pipelines,
    file: &Path,
    from: NaiveDate,
    to: NaiveDate,
    params: &[String],
    json: bool,
) -> Result<Outcome> {
    let name = pipeline_name(file)?;
    let cron = pipelines.cron(&name, file)?;
    let fires = backfill_fires(&name, cron.as_deref(), from, to)?;
    let params: BTreeMap<String, serde_json::Value> = parse_params(params)?
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let mut runs = Vec::new();
    for (n, fire) in fires.iter().enumerate() {
        if ui::INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        if !json {
            backfill_line(n, fires.len(), fire);
        }
        let request = StartRun {
            params: params.clone(),
            force: None,
            date: Some(fire.to_rfc3339()),
        };
        runs.push(follow(pipelines, &name, file, &request, "backfill", json)?);
    }
    backfilled(&runs, json)
}

fn schema(home: &Home, command: SchemaCommand) -> Result<Outcome> {
    match command {
        SchemaCommand::Show {
            pipeline,
            step,
            json,
            server,
        } => {
            let pins: Vec<_> = server
                .pipelines(home)?
                .pinned_schemas(&pipeline)?
                .into_iter()
                .filter(|p| step.as_ref().is_none_or(|s| *s == p.step))
                .collect();
            if json {
                ui::print_json(&pins)?;
                return Ok(Outcome::Ok);
            }
            if pins.is_empty() {
                bail!(
                    "pipeline `{pipeline}` has no pinned schema{}: its first run that reaches a `validate` step without a `schema` argument pins one",
                    step.map_or(String::new(), |s| format!(" for step `{s}`"))
                );
            }
            for p in &pins {
                println!(
                    "step `{}`: pinned from run {} ({}), {}",
                    p.step,
                    p.pin.run,
                    from_ms(p.pin.pinned_ms).format("%Y-%m-%d %H:%M UTC"),
                    p.pin.how_and_why()
                );
                for e in &p.earlier {
                    println!(
                        "  before: run {} ({}), {}",
                        e.run,
                        from_ms(e.pinned_ms).format("%Y-%m-%d %H:%M UTC"),
                        e.how_and_why()
                    );
                }
                println!("{}", p.pin.schema.trim_end());
            }
            Ok(Outcome::Ok)
        }
        SchemaCommand::Diff {
            pipeline,
            run,
            step,
            json,
            server,
        } => {
            let diff = server
                .pipelines(home)?
                .schema_diff(&pipeline, run, step.as_deref())?;
            if json {
                ui::print_json(&diff)?;
                return Ok(Outcome::Ok);
            }
            match &diff.pinned {
                Some(p) => println!(
                    "step `{}`: run {run}'s data against the schema pinned from run {}:",
                    diff.step, p.pin.run
                ),
                None => println!("step `{}`: no schema is pinned yet", diff.step),
            }
            if diff.anomalies.is_empty() {
                println!("  no anomalies");
            } else {
                println!("{}", ui::anomalies(&diff.anomalies));
            }
            println!(
                "the schema inferred from run {run}'s data, which `kiln pipeline schema accept {pipeline} --run {run} --reason \"…\"` would pin:"
            );
            println!("{}", diff.proposed.trim_end());
            Ok(Outcome::Ok)
        }
        SchemaCommand::Accept {
            pipeline,
            run,
            step,
            reason,
            json,
            server,
        } => {
            let request = kiln_core::wire::pipelines::AcceptSchema {
                run,
                step,
                reason,
                by: None,
            };
            let pinned = server.pipelines(home)?.accept_schema(&pipeline, &request)?;
            ui::changed(json, &pinned, || {
                format!(
                    "pinned the schema of run {run}'s data for step `{}` of pipeline `{pipeline}` ({} earlier pins kept)",
                    pinned.step,
                    pinned.earlier.len()
                )
            })?;
            Ok(Outcome::Ok)
        }
    }
}

fn schedule(home: &Home, command: ScheduleCommand) -> Result<Outcome> {
    let (pipeline, paused, json, server) = match command {
        ScheduleCommand::List { json, server } => {
            let states = server.pipelines(home)?.schedules()?;
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
        ScheduleCommand::Pause {
            pipeline,
            json,
            server,
        } => (pipeline, true, json, server),
        ScheduleCommand::Resume {
            pipeline,
            json,
            server,
        } => (pipeline, false, json, server),
    };
    server.pipelines(home)?.pause_schedule(&pipeline, paused)?;
    let what = serde_json::json!({ "pipeline": pipeline, "paused": paused });
    ui::changed(json, &what, || {
        format!(
            "schedule of `{pipeline}` {}",
            if paused { "paused" } else { "resumed" }
        )
    })?;
    Ok(Outcome::Ok)
}
