//! `kiln experiments …`, `kiln runs …` and `kiln models …`: the registry from the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiln_core::registry::query::{Filter, OrderBy, RunSearch, RunView, run_json};
use kiln_core::registry::{
    Expect, Lineage, MetricPoint, NewRun, Registry, RunStatus, Stage, parse_run_id, run_id_text,
};
use kiln_core::wire::models::{
    AliasChanged, Expected, ModelDetail, ModelList, Promote, Promoted, SetAlias,
};
use kiln_core::wire::runs::{RunDetail, RunPage};
use serde::Serialize;

use crate::Outcome;
use crate::cmd::remote::{self, Server};
use crate::ui::{self, num};

/// Where the registry lives, for every registry command.
#[derive(Debug, Args)]
pub struct Home {
    /// kiln's state directory (registry, artifacts, logs).
    #[arg(
        long = "home",
        env = "KILN_HOME",
        default_value = ".kiln",
        global = true
    )]
    pub dir: PathBuf,
}

impl Home {
    fn open(&self) -> Result<Registry> {
        Ok(Registry::open(&self.dir)?)
    }

    pub fn open_registry(&self) -> Result<Registry> {
        self.open()
    }
}

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// List experiments with their run counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create an experiment.
    Create { name: String },
    /// Rename an experiment.
    Rename { old: String, new: String },
    /// Delete an experiment (with its runs when --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// Only the child runs of this run (a sweep's trials).
        #[arg(long)]
        parent: Option<String>,
        /// A filter such as `metrics.auc > 0.8 and params.lr = 0.01`.
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
        /// Sort by a field, e.g. `metrics.auc` (descending) or `params.lr asc`.
        #[arg(long)]
        order_by: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show one run: parameters, tags, lineage, artifacts, metrics (with a chart of each series).
    Show {
        run: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Parameters and latest metrics of several runs side by side; differing rows are marked.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Delete runs, their metrics and the artifacts nothing else references.
    Delete {
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Start a run; prints its id (for scripts and pipeline steps).
    Create {
        #[arg(long, default_value = "Default")]
        experiment: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        #[arg(long)]
        parent: Option<String>,
        /// Record this dataset's fingerprint in the run's lineage.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Record this fitted transform's digest in the run's lineage.
        #[arg(long)]
        transform: Option<PathBuf>,
    },
    /// Log metrics, parameters or tags to a run.
    Log {
        run: String,
        #[arg(long = "metric", value_name = "KEY=VALUE", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
        #[arg(long, default_value_t = 0)]
        step: i64,
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
    },
    /// Attach a file or directory to a run as an artifact.
    Artifact {
        run: String,
        path: PathBuf,
        /// The artifact's name in the run (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// End a run.
    End {
        run: String,
        #[arg(long, value_parser = parse_status, default_value = "finished")]
        status: RunStatus,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models with their aliases.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show a model: versions with stage, aliases and metrics side by side.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List a model's versions.
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Register a run's artifact as the model's next version.
    Register {
        name: String,
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "model")]
        artifact: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Set or delete an alias.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Move a stage alias (`production` by default) to a version.
    Promote {
        name: String,
        version: u32,
        #[arg(long, value_enum, default_value_t = StageArg::Production)]
        to: StageArg,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Every alias move of a model; with --at, what an alias pointed to at that time.
    History {
        name: String,
        #[arg(long)]
        alias: Option<String>,
        /// A date or time (UTC), e.g. 2026-11-01 or 2026-11-01T12:00:00Z.
        #[arg(long, requires = "alias")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a version's artifact out of the store (verified), e.g. to serve elsewhere.
    Export {
        name: String,
        /// An alias or a version number.
        #[arg(long, default_value = "champion")]
        version: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Delete a model, or one version with --version.
    Delete {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// Delete even when aliases point to it (the aliases are deleted, and recorded).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point an alias at a version.
    Set {
        name: String,
        alias: String,
        version: u32,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Delete an alias.
    Delete {
        name: String,
        alias: String,
        #[command(flatten)]
        change: Change,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    Production,
    Staging,
}

/// Who moves an alias, why, and what it must point to now (compare-and-set).
#[derive(Debug, Args)]
pub struct Change {
    /// Only move the alias if it now points to this version (`none`: only if it does not exist).
    #[arg(long, value_name = "VERSION|none")]
    expect: Option<String>,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    reason: String,
    /// Who, for the history (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

impl Change {
    fn expect(&self) -> Result<Expect> {
        Ok(match self.expect.as_deref() {
            None => Expect::Any,
            Some("none") => Expect::Absent,
            Some(v) => Expect::Version(
                v.trim_start_matches('v')
                    .parse()
                    .with_context(|| format!("--expect {v}: expected a version number or none"))?,
            ),
        })
    }
    /// `--expect` as the API takes it.
    fn expected(&self) -> Result<Option<Expected>> {
        Ok(Expected::of(self.expect()?))
    }
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_string())
    }
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    s.parse()
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, found {s:?}"))
}

fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = parse_pair(s)?;
    let v: f64 = v
        .parse()
        .map_err(|_| format!("metric `{k}`: {v:?} is not a number"))?;
    Ok((k, v))
}

pub(crate) fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_when(s: &str) -> Result<i64> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .with_context(|| format!("`{s}` is not a date like 2026-11-01 or 2026-11-01T12:00:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

fn run_id(s: &str) -> Result<u64> {
    Ok(parse_run_id(s)?)
}

pub fn experiments(home: &Home, command: ExperimentsCommand) -> Result<Outcome> {
    let reg = home.open()?;
    match command {
        ExperimentsCommand::List { json } => {
            let exps = reg.experiments()?;
            let counts: Vec<usize> = exps
                .iter()
                .map(|e| reg.runs(Some(&e.name)).map(|r| r.len()))
                .collect::<Result<_, _>>()?;
            if json {
                #[derive(Serialize)]
                struct Row<'a> {
                    #[serde(flatten)]
                    experiment: &'a kiln_core::registry::Experiment,
                    runs: usize,
                }
                let rows: Vec<Row> = exps
                    .iter()
                    .zip(&counts)
                    .map(|(e, c)| Row {
                        experiment: e,
                        runs: *c,
                    })
                    .collect();
                ui::print_json(&rows)?;
            } else {
                let rows = exps
                    .iter()
                    .zip(&counts)
                    .map(|(e, c)| vec![e.name.clone(), c.to_string(), when(e.created_ms)])
                    .collect();
                println!(
                    "{}",
                    ui::table(&["experiment", "runs", "created"], rows, &[1])
                );
            }
        }
        ExperimentsCommand::Create { name } => {
            reg.create_experiment(&name)?;
            println!("created experiment {name}");
        }
        ExperimentsCommand::Rename { old, new } => {
            reg.rename_experiment(&old, &new)?;
            println!("renamed experiment {old} to {new}");
        }
        ExperimentsCommand::Delete { name, force } => {
            let n = reg.delete_experiment(&name, force)?;
            println!("deleted experiment {name} and {n} runs");
        }
    }
    Ok(Outcome::Ok)
}

fn view(reg: &Registry, run: kiln_core::registry::Run) -> Result<RunView> {
    let metrics = reg.latest_metrics(run.id)?;
    Ok(RunView { run, metrics })
}

fn short(map: &BTreeMap<String, String>, max: usize) -> String {
    let mut parts: Vec<String> = map
        .iter()
        .take(max)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if map.len() > max {
        parts.push(format!("+{}", map.len() - max));
    }
    parts.join(" ")
}

/// Prints `runs list`: `views` are the first of `total` runs found.
fn print_run_list(views: &[RunView], total: usize, json: bool) -> Result<()> {
    if json {
        let rows: Vec<serde_json::Value> = views
            .iter()
            .map(|v| {
                let mut j = run_json(&v.run);
                j["metrics"] = serde_json::json!(
                    v.metrics
                        .iter()
                        .map(|(k, p)| (k.as_str(), p.value))
                        .collect::<BTreeMap<_, _>>()
                );
                j
            })
            .collect();
        return ui::print_json(&rows);
    }
    let rows = views
        .iter()
        .map(|v| {
            let metrics: BTreeMap<String, String> = v
                .metrics
                .iter()
                .map(|(k, p)| (k.clone(), num(p.value)))
                .collect();
            vec![
                run_id_text(v.run.id),
                v.run.name.clone(),
                v.run.status.to_string(),
                when(v.run.start_ms),
                short(&metrics, 4),
                short(&v.run.params, 4),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(
            &["run", "name", "status", "started", "metrics", "params"],
            rows,
            &[]
        )
    );
    if total > views.len() {
        println!(
            "({} more; raise --limit or narrow with --where)",
            total - views.len()
        );
    }
    Ok(())
}

/// Prints `runs show`: `series` holds each metric's curve (downsampled).
fn print_run(
    run: &kiln_core::registry::Run,
    metrics: &BTreeMap<String, MetricPoint>,
    series: &BTreeMap<String, Vec<f64>>,
    json: bool,
) -> Result<()> {
    if json {
        let mut j = run_json(run);
        j["metrics"] = serde_json::json!(metrics);
        return ui::print_json(&j);
    }
    println!("run {} ({}), {}", run_id_text(run.id), run.name, run.status);
    println!(
        "started {}{}",
        when(run.start_ms),
        run.end_ms
            .map_or(String::new(), |e| format!(", ended {}", when(e)))
    );
    if let Some(p) = run.parent {
        println!("parent run {}", run_id_text(p));
    }
    let l = &run.lineage;
    for (k, v) in [
        ("dataset", &l.dataset_fingerprint),
        ("transform", &l.transform_digest),
        ("source commit", &l.source_commit),
    ] {
        if let Some(v) = v {
            println!("{k}: {v}");
        }
    }
    for (what, pairs) in [("parameter", &run.params), ("tag", &run.tags)] {
        if !pairs.is_empty() {
            let rows = pairs
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect();
            println!("\n{}", ui::table(&[what, "value"], rows, &[]));
        }
    }
    if !metrics.is_empty() {
        let mut rows = Vec::new();
        for (k, p) in metrics {
            let values = series.get(k).map_or(&[][..], Vec::as_slice);
            rows.push(vec![
                k.clone(),
                num(p.value),
                p.step.to_string(),
                ui::sparkline(values),
            ]);
        }
        println!(
            "\n{}",
            ui::table(&["metric", "latest", "step", "series"], rows, &[1, 2])
        );
    }
    if !run.artifacts.is_empty() {
        let rows = run
            .artifacts
            .iter()
            .map(|a| {
                vec![
                    a.name.clone(),
                    format!("{:?}", a.kind).to_lowercase(),
                    a.size.to_string(),
                    a.digest.clone(),
                ]
            })
            .collect();
        println!(
            "\n{}",
            ui::table(&["artifact", "kind", "bytes", "digest"], rows, &[2])
        );
    }
    Ok(())
}

/// Prints `runs compare`: parameters and latest metrics side by side, differing rows marked.
fn print_compare(views: &[RunView], runs: &[String], json: bool) -> Result<()> {
    let mut fields: BTreeSet<String> = BTreeSet::new();
    for v in views {
        fields.extend(v.run.params.keys().map(|k| format!("params.{k}")));
        fields.extend(v.metrics.keys().map(|k| format!("metrics.{k}")));
    }
    let value = |v: &RunView, f: &str| -> String {
        if let Some(k) = f.strip_prefix("params.") {
            v.run.params.get(k).cloned().unwrap_or_else(|| "-".into())
        } else if let Some(k) = f.strip_prefix("metrics.") {
            v.metrics.get(k).map_or("-".into(), |p| num(p.value))
        } else {
            String::new()
        }
    };
    let mut table: Vec<(String, Vec<String>)> = vec![(
        "status".into(),
        views.iter().map(|v| v.run.status.to_string()).collect(),
    )];
    for f in &fields {
        table.push((f.clone(), views.iter().map(|v| value(v, f)).collect()));
    }
    if json {
        let map: BTreeMap<&str, &Vec<String>> =
            table.iter().map(|(k, v)| (k.as_str(), v)).collect();
        return ui::print_json(&serde_json::json!({"runs": runs, "fields": map}));
    }
    let mut header: Vec<String> = vec!["".into(), "field".into()];
    header.extend(views.iter().map(|v| run_id_text(v.run.id)));
    let rows = table
        .into_iter()
        .map(|(f, vals)| {
            let differs = vals.iter().any(|v| v != &vals[0]);
            let mut row = vec![
                if differs {
                    "≠".to_string()
                } else {
                    String::new()
                },
                f,
            ];
            row.extend(vals);
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    println!("{}", ui::table(&header, rows, &[]));
    Ok(())
}

/// `runs list|show|compare` through a running server's API, when `--server` is given.
fn runs_over_http(command: &RunsCommand) -> Result<Option<Outcome>> {
    match command {
        RunsCommand::List {
            experiment,
            status,
            parent,
            filter,
            order_by,
            limit,
            json,
            server,
        } if server.server.is_some() => {
            let mut query = vec![format!("limit={limit}")];
            let status = status.map(|s| s.to_string());
            for (key, value) in [
                ("experiment", experiment.as_ref()),
                ("status", status.as_ref()),
                ("parent", parent.as_ref()),
                ("where", filter.as_ref()),
                ("order_by", order_by.as_ref()),
            ] {
                if let Some(v) = value {
                    query.push(format!("{key}={}", remote::url_part(v)));
                }
            }
            let page: RunPage =
                remote::call(server, "GET", &format!("/api/runs?{}", query.join("&")))?;
            let views: Vec<RunView> = page
                .runs
                .into_iter()
                .map(|e| RunView {
                    run: e.run.0,
                    metrics: e.metrics,
                })
                .collect();
            print_run_list(&views, page.total, *json)?;
            Ok(Some(Outcome::Ok))
        }
        RunsCommand::Compare { runs, json, server } if server.server.is_some() => {
            let mut views = Vec::new();
            for r in runs {
                let detail: RunDetail =
                    remote::call(server, "GET", &format!("/api/runs/{}", remote::url_part(r)))?;
                views.push(RunView {
                    run: detail.run.0,
                    metrics: detail.metrics,
                });
            }
            print_compare(&views, runs, *json)?;
            Ok(Some(Outcome::Ok))
        }
        RunsCommand::Show { run, json, server } if server.server.is_some() => {
            let detail: RunDetail = remote::call(
                server,
                "GET",
                &format!("/api/runs/{}", remote::url_part(run)),
            )?;
            print_run(&detail.run.0, &detail.metrics, &detail.series, *json)?;
            Ok(Some(Outcome::Ok))
        }
        _ => Ok(None),
    }
}

pub fn runs(home: &Home, command: RunsCommand) -> Result<Outcome> {
    if let Some(outcome) = runs_over_http(&command)? {
        return Ok(outcome);
    }
    let reg = home.open()?;
    match command {
        RunsCommand::List {
            experiment,
            status,
            parent,
            filter,
            order_by,
            limit,
            json,
            ..
        } => {
            let search = RunSearch {
                experiment,
                status,
                parent: parent.map(|p| run_id(&p)).transpose()?,
                filter: filter
                    .map(|f| Filter::parse(&f))
                    .transpose()
                    .map_err(anyhow::Error::msg)
                    .context("--where")?,
                order: order_by
                    .map(|o| OrderBy::parse(&o))
                    .transpose()
                    .map_err(anyhow::Error::msg)
                    .context("--order-by")?,
            };
            let mut views = reg.search_runs(&search)?;
            let total = views.len();
            views.truncate(limit);
            print_run_list(&views, total, json)?;
        }
        RunsCommand::Show { run, json, .. } => {
            let run = reg.run(run_id(&run)?)?;
            let metrics = reg.latest_metrics(run.id)?;
            let mut series = BTreeMap::new();
            for k in metrics.keys() {
                let points = reg.metric_history(run.id, k, Some(40))?;
                series.insert(k.clone(), points.iter().map(|p| p.value).collect());
            }
            print_run(&run, &metrics, &series, json)?;
        }
        RunsCommand::Compare { runs, json, .. } => {
            let mut views = Vec::new();
            for r in &runs {
                views.push(view(&reg, reg.run(run_id(r)?)?)?);
            }
            print_compare(&views, &runs, json)?;
        }
        RunsCommand::Delete { runs } => {
            for r in runs {
                let id = run_id(&r)?;
                reg.delete_run(id)?;
                println!("deleted run {}", run_id_text(id));
            }
        }
        RunsCommand::Create {
            experiment,
            name,
            params,
            tags,
            parent,
            dataset,
            transform,
        } => {
            let transform_digest = match transform {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let fitted = kiln_core::transform::FittedTransform::from_json(&text)
                        .with_context(|| path.display().to_string())?;
                    Some(fitted.digest())
                }
                None => None,
            };
            let dataset_fingerprint = match dataset {
                Some(path) => Some(
                    kiln_core::data::read(&path, &Default::default())?
                        .fingerprint()
                        .to_string(),
                ),
                None => None,
            };
            let run = reg.create_run(NewRun {
                experiment,
                name,
                params: params.into_iter().collect(),
                tags: tags.into_iter().collect(),
                parent: parent.map(|p| run_id(&p)).transpose()?,
                lineage: Lineage {
                    dataset_fingerprint,
                    transform_digest,
                    source_commit: source_commit(Path::new(".")),
                },
            })?;
            println!("{}", run_id_text(run.id));
        }
        RunsCommand::Log {
            run,
            metrics,
            step,
            params,
            tags,
        } => {
            let id = run_id(&run)?;
            if !params.is_empty() {
                reg.log_params(id, &params.into_iter().collect())?;
            }
            if !tags.is_empty() {
                reg.set_tags(id, &tags.into_iter().collect())?;
            }
            let points: Vec<(&str, i64, f64)> = metrics
                .iter()
                .map(|(k, v)| (k.as_str(), step, *v))
                .collect();
            reg.log_metrics(id, &points)?;
            reg.flush()?;
        }
        RunsCommand::Artifact { run, path, name } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("give the artifact a --name")?,
            };
            let a = reg.log_artifact(run_id(&run)?, &name, &path)?;
            println!("{} {} ({} bytes)", a.name, a.digest, a.size);
        }
        RunsCommand::End { run, status } => {
            let r = reg.end_run(run_id(&run)?, status)?;
            println!("run {} {}", run_id_text(r.id), r.status);
        }
    }
    Ok(Outcome::Ok)
}

/// One line of `models list`.
struct ModelLine {
    name: String,
    versions: usize,
    aliases: BTreeMap<String, u32>,
    created_ms: i64,
}

fn print_models(models: &[ModelLine]) {
    let rows = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.versions.to_string(),
                m.aliases
                    .iter()
                    .map(|(a, v)| format!("{a}→{v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                when(m.created_ms),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(&["model", "versions", "aliases", "created"], rows, &[1])
    );
}

/// One line of `models show`.
struct VersionLine {
    version: u32,
    /// Empty when the version is in no stage.
    stage: String,
    run: String,
    created_ms: i64,
    metrics: BTreeMap<String, f64>,
}

fn print_versions(versions: &[VersionLine], aliases: &BTreeMap<String, u32>) {
    let keys: BTreeSet<&String> = versions.iter().flat_map(|v| v.metrics.keys()).collect();
    let mut header: Vec<String> = ["version", "stage", "aliases", "run", "created"]
        .map(String::from)
        .to_vec();
    header.extend(keys.iter().map(|k| k.to_string()));
    let rows = versions
        .iter()
        .map(|v| {
            let mut row = vec![
                v.version.to_string(),
                v.stage.clone(),
                aliases
                    .iter()
                    .filter(|(_, t)| **t == v.version)
                    .map(|(a, _)| a.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
                v.run.clone(),
                when(v.created_ms),
            ];
            row.extend(
                keys.iter()
                    .map(|k| v.metrics.get(*k).map_or("-".into(), |m| num(*m))),
            );
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let right: Vec<usize> = (5..header.len()).collect();
    println!("{}", ui::table(&header, rows, &right));
}

/// The `models` commands that a running server answers, when `--server` is given.
fn models_over_http(command: &ModelsCommand) -> Result<Option<Outcome>> {
    match command {
        ModelsCommand::List { json, server } if server.server.is_some() => {
            let answer: ModelList = remote::call(server, "GET", "/api/models")?;
            if *json {
                ui::print_json(&answer)?;
                return Ok(Some(Outcome::Ok));
            }
            let lines: Vec<ModelLine> = answer
                .models
                .into_iter()
                .map(|m| ModelLine {
                    name: m.name,
                    versions: m.versions,
                    aliases: m.aliases,
                    created_ms: m.created_ms,
                })
                .collect();
            print_models(&lines);
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Show { name, json, server }
        | ModelsCommand::Versions { name, json, server }
            if server.server.is_some() =>
        {
            let answer: ModelDetail = remote::call(
                server,
                "GET",
                &format!("/api/models/{}", remote::url_part(name)),
            )?;
            if *json {
                ui::print_json(&answer)?;
                return Ok(Some(Outcome::Ok));
            }
            let versions: Vec<VersionLine> = answer
                .versions
                .into_iter()
                .map(|v| VersionLine {
                    version: v.version,
                    stage: if v.stage == Stage::None.to_string() {
                        String::new()
                    } else {
                        v.stage
                    },
                    run: v.run_id,
                    created_ms: v.created_ms,
                    metrics: v.metrics,
                })
                .collect();
            print_versions(&versions, &answer.aliases);
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Promote {
            name,
            version,
            to,
            change,
            server,
        } if server.server.is_some() => {
            let stage = match to {
                StageArg::Production => "production",
                StageArg::Staging => "staging",
            };
            let body = Promote {
                version: *version,
                to: Some(stage.to_string()),
                expect: change.expected()?,
                reason: change.reason.clone(),
                by: Some(change.by()),
            };
            let answer: Promoted = remote::call_with(
                server,
                "POST",
                &format!("/api/models/{}/promote", remote::url_part(name)),
                Some(&serde_json::to_value(&body)?),
            )?;
            let from = answer
                .event
                .from
                .map_or("none".to_string(), |v| format!("version {v}"));
            println!(
                "{name} version {version} is now in {} (was {from})",
                answer.stage
            );
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
            change,
            server,
        }) if server.server.is_some() => {
            let body = SetAlias {
                version: *version,
                expect: change.expected()?,
                reason: change.reason.clone(),
                by: Some(change.by()),
            };
            let answer: AliasChanged = remote::call_with(
                server,
                "PUT",
                &format!(
                    "/api/models/{}/aliases/{}",
                    remote::url_part(name),
                    remote::url_part(alias)
                ),
                Some(&serde_json::to_value(&body)?),
            )?;
            println!(
                "{name}@{alias}: {} → {version}",
                answer.event.from.map_or("none".into(), |v| v.to_string())
            );
            Ok(Some(Outcome::Ok))
        }
        _ => Ok(None),
    }
}

pub fn models(home: &Home, command: ModelsCommand) -> Result<Outcome> {
    if let Some(outcome) = models_over_http(&command)? {
        return Ok(outcome);
    }
    let reg = home.open()?;
    match command {
        ModelsCommand::List { json, .. } => {
            let models = reg.models()?;
            let mut lines = Vec::new();
            let mut out = Vec::new();
            for m in &models {
                let aliases = reg.aliases(&m.name)?;
                let versions = reg.versions(&m.name)?.len();
                out.push(serde_json::json!({"model": m, "versions": versions, "aliases": aliases}));
                lines.push(ModelLine {
                    name: m.name.clone(),
                    versions,
                    aliases,
                    created_ms: m.created_ms,
                });
            }
            if json {
                ui::print_json(&out)?;
            } else {
                print_models(&lines);
            }
        }
        ModelsCommand::Show { name, json, .. } | ModelsCommand::Versions { name, json, .. } => {
            let versions = reg.versions(&name)?;
            let aliases = reg.aliases(&name)?;
            let mut stages = Vec::new();
            for v in &versions {
                stages.push(reg.stage(&name, v.version)?);
            }
            if json {
                let rows: Vec<serde_json::Value> = versions
                    .iter()
                    .zip(&stages)
                    .map(|(v, s)| serde_json::json!({"version": v, "stage": s}))
                    .collect();
                return ui::print_json(&serde_json::json!({"model": reg.model(&name)?, "aliases": aliases, "versions": rows}))
                    .map(|_| Outcome::Ok);
            }
            let lines: Vec<VersionLine> = versions
                .iter()
                .zip(&stages)
                .map(|(v, s)| VersionLine {
                    version: v.version,
                    stage: if *s == Stage::None {
                        String::new()
                    } else {
                        s.to_string()
                    },
                    run: run_id_text(v.run_id),
                    created_ms: v.created_ms,
                    metrics: v.metrics.clone(),
                })
                .collect();
            print_versions(&lines, &aliases);
        }
        ModelsCommand::Register {
            name,
            run,
            artifact,
            description,
        } => {
            let v = reg.register_version(&name, run_id(&run)?, &artifact, &description, None)?;
            println!(
                "registered {name} version {} from run {}",
                v.version,
                run_id_text(v.run_id)
            );
        }
        ModelsCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
            change,
            ..
        }) => {
            let e = reg.set_alias(
                &name,
                &alias,
                version,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!(
                "{name}@{alias}: {} → {version}",
                e.from.map_or("none".into(), |v| v.to_string())
            );
        }
        ModelsCommand::Alias(AliasCommand::Delete {
            name,
            alias,
            change,
        }) => {
            reg.delete_alias(
                &name,
                &alias,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!("deleted alias {alias} of {name}");
        }
        ModelsCommand::Promote {
            name,
            version,
            to,
            change,
            ..
        } => {
            let stage = match to {
                StageArg::Production => Stage::Production,
                StageArg::Staging => Stage::Staging,
            };
            let alias = stage.alias().unwrap_or("production");
            let e = reg.set_alias(
                &name,
                alias,
                version,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!(
                "{name} version {version} is now in {stage} (was {})",
                e.from.map_or("none".into(), |v| format!("version {v}"))
            );
        }
        ModelsCommand::History {
            name,
            alias,
            at,
            json,
        } => {
            if let (Some(alias), Some(at)) = (&alias, &at) {
                let ms = parse_when(at)?;
                let v = reg.alias_at(&name, alias, ms)?;
                if json {
                    return ui::print_json(&serde_json::json!({"model": name, "alias": alias, "at": when(ms), "version": v})).map(|_| Outcome::Ok);
                }
                match v {
                    Some(v) => println!("{name}@{alias} at {}: version {v}", when(ms)),
                    None => println!("{name}@{alias} at {}: no version", when(ms)),
                }
                return Ok(Outcome::Ok);
            }
            let events: Vec<_> = reg
                .history(&name)?
                .into_iter()
                .filter(|e| alias.as_ref().is_none_or(|a| &e.alias == a))
                .collect();
            if json {
                return ui::print_json(&events).map(|_| Outcome::Ok);
            }
            let v = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
            let rows = events
                .iter()
                .map(|e| {
                    vec![
                        when(e.at_ms),
                        e.alias.clone(),
                        v(e.from),
                        v(e.to),
                        e.by.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                ui::table(
                    &["when", "alias", "from", "to", "by", "reason"],
                    rows,
                    &[2, 3]
                )
            );
        }
        ModelsCommand::Export {
            name,
            version,
            output,
        } => {
            let v = reg.resolve(&name, &version)?;
            if output.exists() {
                bail!("{} exists; choose a new path", output.display());
            }
            reg.export_artifact(&v.artifact, &output)?;
            println!(
                "exported {name} version {} to {}",
                v.version,
                output.display()
            );
        }
        ModelsCommand::Delete {
            name,
            version,
            force,
        } => {
            let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            match version {
                Some(v) => {
                    reg.delete_version(&name, v, force, &by)?;
                    println!("deleted {name} version {v}");
                }
                None => {
                    let n = reg.delete_model(&name, force, &by)?;
                    println!("deleted model {name} and {n} versions");
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The commit checked out in `dir`'s git repository, read from `.git` without running git.
fn source_commit(dir: &Path) -> Option<String> {
    let mut d = std::fs::canonicalize(dir).ok()?;
    let git = loop {
        let g = d.join(".git");
        if g.is_dir() {
            break g;
        }
        d = d.parent()?.to_path_buf();
    };
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(id) = std::fs::read_to_string(git.join(reference)) {
        return Some(id.trim().to_string());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .find_map(|l| l.strip_suffix(reference).map(|id| id.trim().to_string()))
}
