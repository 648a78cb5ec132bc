//! `kiln runs …`: tracking runs (create, log, artifacts, end), listing, showing and comparing
//! them, locally or through a running server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use kiln_core::registry::floats::Float;
use kiln_core::registry::query::{RunView, run_json};
use kiln_core::registry::{Lineage, MetricPoint, NewRun, RunStatus, run_id_text};
use kiln_core::wire::runs::{RunEntry, RunQuery, RunText};

use super::{Home, parse_metric, parse_pair, parse_status, run_id, when};
use crate::cmd::remote::Server;
use crate::ui::num;
use crate::{Outcome, ui};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only this experiment's runs.
        #[arg(long)]
        experiment: Option<String>,
        /// Only runs in this state: running, finished, failed or killed.
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// Only the child runs of this run (a sweep's trials).
        #[arg(long)]
        parent: Option<String>,
        /// A filter such as `metrics.auc > 0.8 and params.lr = 0.01`.
        #[arg(long = "where", value_name = "FILTER")]
        filter: Option<String>,
        /// Sort by a field, ascending unless `desc` follows (as MLflow's `order_by`), e.g.
        /// `metrics.auc desc` or `params.lr`.
        #[arg(long)]
        order_by: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show one run: parameters, tags, lineage, artifacts, metrics (with a chart of each series).
    Show {
        /// The run's id (e.g. 0000002a).
        run: String,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Parameters and latest metrics of several runs side by side; differing rows are marked.
    Compare {
        /// Two or more run ids.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Delete runs, their metrics and the artifacts nothing else references.
    Delete {
        /// The run ids to delete.
        #[arg(required = true)]
        runs: Vec<String>,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Start a run; prints its id (for scripts and pipeline steps).
    Create {
        /// The experiment (created when it does not exist).
        #[arg(long, default_value = "Default")]
        experiment: String,
        /// A name for people; runs are found by id.
        #[arg(long, default_value = "")]
        name: String,
        /// A parameter of the run (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        /// A tag of the run (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// The parent run (a sweep's), by id.
        #[arg(long)]
        parent: Option<String>,
        /// Record this dataset's fingerprint in the run's lineage.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Record this fitted transform's digest in the run's lineage.
        #[arg(long)]
        transform: Option<PathBuf>,
        /// Print the run as JSON instead of its id.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Log metrics, parameters or tags to a run.
    Log {
        /// The run's id.
        run: String,
        /// A metric value (repeatable), logged at --step.
        #[arg(long = "metric", value_name = "KEY=VALUE", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
        /// The step the metrics belong to (an epoch, an iteration).
        #[arg(long, default_value_t = 0)]
        step: i64,
        /// A parameter (repeatable); a parameter does not change once logged.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        /// A tag (repeatable); a tag may change.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Attach a file or directory to a run as an artifact.
    Artifact {
        /// The run's id.
        run: String,
        /// The file or directory to attach (stored by its BLAKE3 digest).
        path: PathBuf,
        /// The artifact's name in the run (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// End a run.
    End {
        /// The run's id.
        run: String,
        /// How it ended: finished, failed or killed.
        #[arg(long, value_parser = parse_status, default_value = "finished")]
        status: RunStatus,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
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
                // NaN and infinities by name, as everywhere in kiln's JSON.
                j["metrics"] = serde_json::json!(
                    v.metrics
                        .iter()
                        .map(|(k, p)| (k.as_str(), Float(p.value)))
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

impl RunsCommand {
    fn server(&self) -> &Server {
        match self {
            RunsCommand::List { server, .. }
            | RunsCommand::Show { server, .. }
            | RunsCommand::Compare { server, .. }
            | RunsCommand::Delete { server, .. }
            | RunsCommand::Create { server, .. }
            | RunsCommand::Log { server, .. }
            | RunsCommand::Artifact { server, .. }
            | RunsCommand::End { server, .. } => server,
        }
    }
}

fn view_of(entry: RunEntry) -> RunView {
    RunView {
        run: entry.run.0,
        metrics: entry.metrics,
    }
}

pub fn runs(home: &Home, command: RunsCommand) -> Result<Outcome> {
    let backend = command.server().backend(home)?;
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
            let query = RunQuery {
                experiment,
                status,
                parent,
                filter,
                order_by,
                limit: Some(limit),
            };
            let page = backend.runs(&query)?;
            let views: Vec<RunView> = page.runs.into_iter().map(view_of).collect();
            print_run_list(&views, page.total, json)?;
        }
        RunsCommand::Show { run, json, .. } => {
            let detail = backend.run(run_id(&run)?)?;
            print_run(&detail.run.0, &detail.metrics, &detail.series, json)?;
        }
        RunsCommand::Compare { runs, json, .. } => {
            let mut views = Vec::new();
            for r in &runs {
                let detail = backend.run(run_id(r)?)?;
                views.push(RunView {
                    run: detail.run.0,
                    metrics: detail.metrics,
                });
            }
            print_compare(&views, &runs, json)?;
        }
        RunsCommand::Delete { runs, json, .. } => {
            let mut deleted = Vec::new();
            for r in runs {
                let id = run_id(&r)?;
                backend.delete_run(id)?;
                deleted.push(run_id_text(id));
                if !json {
                    println!("deleted run {}", run_id_text(id));
                }
            }
            if json {
                ui::print_json(&serde_json::json!({ "deleted": deleted }))?;
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
            json,
            ..
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
            let run = backend.create_run(NewRun {
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
            let id = run_id_text(run.id);
            ui::changed(json, &RunText(run), || id)?;
        }
        RunsCommand::Log {
            run,
            metrics,
            step,
            params,
            tags,
            json,
            ..
        } => {
            let id = run_id(&run)?;
            let logged = serde_json::json!({
                "run": run_id_text(id),
                "metrics": metrics.len(),
                "params": params.len(),
                "tags": tags.len(),
                "step": step,
            });
            if !params.is_empty() {
                backend.log_params(id, &params.into_iter().collect())?;
            }
            if !tags.is_empty() {
                backend.set_tags(id, &tags.into_iter().collect())?;
            }
            let points: Vec<(&str, i64, f64)> = metrics
                .iter()
                .map(|(k, v)| (k.as_str(), step, *v))
                .collect();
            if !points.is_empty() {
                backend.log_metrics(id, &points)?;
            }
            backend.flush()?;
            if json {
                ui::print_json(&logged)?;
            }
        }
        RunsCommand::Artifact {
            run,
            path,
            name,
            json,
            ..
        } => {
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("give the artifact a --name")?,
            };
            let a = backend.log_artifact(run_id(&run)?, &name, &path)?;
            ui::changed(json, &a, || {
                format!("{} {} ({} bytes)", a.name, a.digest, a.size)
            })?;
        }
        RunsCommand::End {
            run, status, json, ..
        } => {
            let r = backend.end_run(run_id(&run)?, status)?;
            let line = format!("run {} {}", run_id_text(r.id), r.status);
            ui::changed(json, &RunText(r), || line)?;
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
