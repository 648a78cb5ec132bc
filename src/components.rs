//! kiln's built-in pipeline components, mirroring TFX's: the scheduler calls them through
//! [`kiln_scheduler::run::Components`]; here, in the binary that wires the crates together, they
//! are handed the data layer, the trainer (tracked training, sweeps, the evaluation gate), the
//! serving runtime and the registry. The scheduler knows none of them.
//!
//! Each writes its files to the step's output directory and reports values:
//! `ingest` → `data`, `fingerprint`, `rows`; `statistics` → `statistics`; `validate` →
//! `anomalies`, `schema`; `transform` → `transform`, `digest`; `train` and `tune` → `model`
//! (a bundle directory), `run`, `test_*`; `evaluate` → `blessed`, `metric`, `candidate`,
//! `baseline`, `reason`; `infra-validate` → `requests`, `latency_us`; `push` → `pushed`,
//! `version`; `leaderboard` → `model`, `best`, `score`, `run`, `version`.

pub mod control;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use kiln_core::backend::AliasMove;
use kiln_core::bundle;
use kiln_core::data::{self, Format, ReadOptions, Table};
use kiln_core::progress::{Progress, Unit};
use kiln_core::registry::{
    Expect, Lineage, NewRun, PinnedBy, PipelineRunState, RunStatus, SchemaPin, parse_run_id,
    run_id_text,
};
use kiln_core::schema::{Schema, Severity};
use kiln_core::stats::DatasetStatistics;
use kiln_core::transform::TransformSpec;
use kiln_scheduler::ComponentSpec;
use kiln_scheduler::pipeline::Arg;
use kiln_scheduler::run::{ComponentCall, ComponentError, Components};
use kiln_trainer::gate::{Baseline, Gate, judge};
use kiln_trainer::{TrainConfig, TrainError};

use kiln_trainer::tracked::{TrialEnd, sweep_into, train_into};

/// kiln's components. (A `train` step on the GPU holds the executor's GPU permit, so at most
/// one trains there at a time.)
pub struct Builtins;

const fn req(name: &'static str) -> Arg {
    Arg::required(name)
}

const fn opt(name: &'static str) -> Arg {
    Arg::optional(name)
}

/// Every built-in component: what it takes (required, optional, which name files) and the values
/// it reports. Pipeline files are checked against this; a component is added here and in
/// [`Components::run`] below.
pub const CATALOGUE: &[ComponentSpec] = &[
    ComponentSpec {
        name: "ingest",
        args: &[req("path").path(), opt("format"), opt("delimiter")],
        outputs: &["data", "fingerprint", "rows", "columns"],
    },
    ComponentSpec {
        name: "statistics",
        args: &[req("data").path()],
        outputs: &["statistics", "rows"],
    },
    ComponentSpec {
        name: "validate",
        args: &[req("data").path(), opt("schema").path(), opt("fail_on")],
        outputs: &["anomalies", "schema", "pinned_by_run"],
    },
    ComponentSpec {
        name: "transform",
        args: &[req("data").path(), req("spec").path()],
        outputs: &["transform", "digest"],
    },
    ComponentSpec {
        name: "train",
        args: &[
            req("data").path(),
            req("target"),
            opt("model"),
            opt("hidden"),
            opt("epochs"),
            opt("lr"),
            opt("batch_size"),
            opt("optimizer"),
            opt("weight_decay"),
            opt("dropout"),
            opt("patience"),
            opt("seed"),
            opt("device"),
            opt("spec").path(),
            opt("experiment"),
            opt("activation"),
            opt("momentum"),
            opt("schedule"),
            opt("test_fraction"),
            opt("validation_fraction"),
            opt("task"),
            opt("trees"),
            opt("leaves"),
            opt("max_depth"),
            opt("shrinkage"),
            opt("min_child_weight"),
            opt("min_child_rows"),
            opt("l2"),
            opt("subsample"),
            opt("colsample"),
            opt("max_bins"),
        ],
        outputs: &["model", "run", "test_*", "validation_*"],
    },
    ComponentSpec {
        name: "tune",
        args: &[
            req("data").path(),
            req("target"),
            req("sweep").path(),
            opt("experiment"),
        ],
        outputs: &["model", "run", "sweep_run"],
    },
    ComponentSpec {
        name: "evaluate",
        args: &[
            req("model").path(),
            req("data").path(),
            opt("baseline"),
            opt("metric"),
            opt("thresholds"),
            opt("min_improvement"),
            opt("slices"),
            opt("min_slice_rows"),
            opt("max_slice_regression"),
        ],
        outputs: &[
            "blessed",
            "metric",
            "candidate",
            "baseline",
            "reason",
            "slices",
            "worst_slice",
            "worst_slice_regression",
        ],
    },
    ComponentSpec {
        name: "import",
        args: &[
            req("file").path(),
            opt("reference").path(),
            opt("target"),
            opt("labels"),
            opt("scores"),
            opt("output"),
        ],
        outputs: &["model", "task", "checked_rows", "reference_*"],
    },
    ComponentSpec {
        name: "leaderboard",
        args: &[req("models"), req("scores"), req("metric"), opt("register")],
        outputs: &["model", "best", "score", "run", "version"],
    },
    ComponentSpec {
        name: "infra-validate",
        args: &[req("model").path(), opt("requests")],
        outputs: &["requests", "latency_us"],
    },
    ComponentSpec {
        name: "push",
        args: &[
            req("model").path(),
            req("name"),
            opt("alias"),
            opt("blessing"),
        ],
        outputs: &["pushed", "version", "run"],
    },
];

/// The process's pipeline runs, with kiln's built-in components and the directory of the `kiln`
/// binary first on commands' `PATH`.
pub fn service(
    registry: std::sync::Arc<kiln_core::registry::Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::sync::Arc<kiln_scheduler::service::Service<Builtins>> {
    kiln_scheduler::service::Service::new(
        registry,
        std::sync::Arc::new(Builtins),
        stop,
        binary_dir(),
        Some(std::sync::Arc::new(Webhook)),
    )
}

/// Posts pipeline run summaries (`notify = URL`) over HTTP(S) with kiln's client.
struct Webhook;

impl kiln_scheduler::run::Notify for Webhook {
    fn post(&self, url: &str, summary: &serde_json::Value) -> Result<(), String> {
        kiln_server::client::post_json(url, summary, std::time::Duration::from_secs(10))
    }
}

/// The pipelines of a `KILN_HOME` this process opened, run here on `runtime`.
pub fn local(
    registry: kiln_core::registry::Registry,
    runtime: tokio::runtime::Runtime,
) -> kiln_scheduler::local::Local<Builtins> {
    kiln_scheduler::local::Local::new(
        std::sync::Arc::new(registry),
        Builtins,
        binary_dir(),
        runtime,
        Some(std::sync::Arc::new(Webhook)),
    )
}

/// Where the `kiln` binary is, to go first on commands' `PATH`.
pub fn binary_dir() -> Vec<std::path::PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
}

type Values = BTreeMap<String, String>;

/// Progress that only carries the step's cancellation to the trainer.
struct Watch<'a>(&'a std::sync::atomic::AtomicBool);

impl Progress for Watch<'_> {
    fn start(&self, _phase: &str, _total: Option<u64>, _unit: Unit) {}
    fn set(&self, _done: u64) {}
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Components for Builtins {
    fn catalogue(&self) -> &'static [ComponentSpec] {
        CATALOGUE
    }

    fn run(&self, call: &ComponentCall) -> Result<Values, ComponentError> {
        let result = match call.component.as_str() {
            "ingest" => ingest(call),
            "statistics" => statistics(call),
            "validate" => validate(call),
            "transform" => transform(call),
            "train" => self.train(call),
            "tune" => tune(call),
            "evaluate" => evaluate(call),
            "import" => import_onnx(call),
            "infra-validate" => infra_validate(call),
            "leaderboard" => leaderboard(call),
            "push" => push(call),
            other => Err(invalid(format!("no component `{other}`"))),
        };
        result.map_err(|e| ComponentError {
            retry: !settled(&e),
            message: format!("{e:#}"),
        })
    }

    /// A `validate` step without a `schema` argument depends on the schema pinned for it once a
    /// person has accepted one: data judged under an earlier pin is judged again. (An inferred
    /// pin comes from data the key already covers.)
    fn cache_input(
        &self,
        registry: &kiln_core::registry::Registry,
        pipeline: &str,
        step: &str,
        component: &str,
        with: &BTreeMap<String, toml::Value>,
    ) -> String {
        if component != "validate" || with.contains_key("schema") {
            return String::new();
        }
        match registry.pinned_schema(pipeline, step) {
            Ok(Some(p)) if p.pin.how == PinnedBy::Accepted => p.pin.schema,
            _ => String::new(),
        }
    }
}

/// A failure no further attempt changes: a wrong argument, data that breaks its schema.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Invalid(String);

fn invalid(message: String) -> anyhow::Error {
    anyhow::Error::new(Invalid(message))
}

/// Whether a failure would repeat on every further attempt: a wrong argument, a malformed
/// data file, training options that do not parse, anything the trainer refused (a missing
/// target, a diverging loss with a fixed seed, no GPU); not I/O, the registry, or cancellation.
fn settled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Invalid>()
            || c.is::<kiln_core::data::DataError>()
            || c.is::<toml::de::Error>()
            || c.downcast_ref::<TrainError>()
                .is_some_and(|t| !matches!(t, TrainError::Cancelled))
    })
}

fn text<'a>(call: &'a ComponentCall, arg: &str) -> Option<&'a str> {
    call.args.get(arg).and_then(toml::Value::as_str)
}

fn required_path(call: &ComponentCall, arg: &str) -> Result<PathBuf> {
    let p = call
        .path(arg)
        .ok_or_else(|| invalid(format!("`with.{arg}` must be a path (a string)")))?;
    if !p.exists() {
        bail!("`with.{arg}`: {} does not exist", p.display());
    }
    Ok(p)
}

fn read_data(call: &ComponentCall, arg: &str) -> Result<(PathBuf, Table)> {
    let path = required_path(call, arg)?;
    let table = data::read(&path, &ReadOptions::default())
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((path, table))
}

fn values<const N: usize>(pairs: [(&str, String); N]) -> Values {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The tags that tie a registry run to the pipeline run that made it.
fn lineage_tags(call: &ComponentCall) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kiln.pipeline".to_string(), call.pipeline.clone()),
        ("kiln.pipeline_run".to_string(), call.run_name.clone()),
        ("kiln.pipeline_step".to_string(), call.step.clone()),
    ])
}

/// Reads a dataset (checking every row), fingerprints it and keeps a copy as the run's input.
fn ingest(call: &ComponentCall) -> Result<Values> {
    let path = required_path(call, "path")?;
    let mut options = ReadOptions::default();
    if let Some(f) = text(call, "format") {
        options.format = Some(match f {
            "csv" => Format::Csv,
            "jsonl" | "json-lines" => Format::JsonLines,
            "parquet" => Format::Parquet,
            other => {
                return Err(invalid(format!(
                    "`with.format` {other:?}: use csv, jsonl or parquet"
                )));
            }
        });
    }
    if let Some(d) = text(call, "delimiter") {
        match d.as_bytes() {
            [b] => options.delimiter = Some(*b),
            _ => {
                return Err(invalid(format!(
                    "`with.delimiter` {d:?} must be one character"
                )));
            }
        }
    }
    let table =
        data::read(&path, &options).with_context(|| format!("reading {}", path.display()))?;
    let extension = match options.format.or_else(|| Format::from_path(&path)) {
        Some(Format::JsonLines) => "jsonl",
        Some(Format::Parquet) => "parquet",
        _ if path.extension().is_some_and(|e| e == "tsv") => "tsv",
        _ => "csv",
    };
    let copy = call.outputs.join(format!("data.{extension}"));
    std::fs::copy(&path, &copy)
        .with_context(|| format!("copying {} to {}", path.display(), copy.display()))?;
    call.log_line(&format!(
        "{}: {} rows, {} columns, fingerprint {}",
        path.display(),
        table.num_rows(),
        table.num_columns(),
        table.fingerprint()
    ));
    Ok(values([
        ("data", copy.display().to_string()),
        ("fingerprint", table.fingerprint().to_string()),
        ("rows", table.num_rows().to_string()),
        ("columns", table.num_columns().to_string()),
    ]))
}

fn statistics(call: &ComponentCall) -> Result<Values> {
    let (_, table) = read_data(call, "data")?;
    let stats = DatasetStatistics::compute(&table);
    let out = call.outputs.join("statistics.json");
    write_json(&out, &stats)?;
    call.log_line(&format!(
        "{} rows, {} columns",
        stats.rows,
        table.num_columns()
    ));
    Ok(values([
        ("statistics", out.display().to_string()),
        ("rows", stats.rows.to_string()),
    ]))
}

/// Checks the data against a schema; anomalies at or above `fail_on` stop the run. Without a
/// schema, one is inferred from the data and written out (to pin in the pipeline afterwards).
fn validate(call: &ComponentCall) -> Result<Values> {
    let (path, table) = read_data(call, "data")?;
    let stats = DatasetStatistics::compute(&table);
    let fail_on = text(call, "fail_on").unwrap_or("error");
    let failing = |s: Severity| match fail_on {
        "error" => Ok(s == Severity::Error),
        "warning" => Ok(true),
        "never" => Ok(false),
        other => Err(invalid(format!(
            "`with.fail_on` {other:?}: use error, warning or never"
        ))),
    };
    failing(Severity::Error)?;
    let mut pinned_by_run = None;
    let (schema, schema_path) = match call.path("schema") {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("reading the schema {}", p.display()))?;
            let toml = p.extension().is_some_and(|e| e == "toml");
            (Schema::parse(&p.display().to_string(), &text, toml)?, p)
        }
        None => {
            let (schema, path, run) = pinned_schema(call, &table, &stats)?;
            pinned_by_run = Some(run);
            (schema, path)
        }
    };
    let mut anomalies = schema.validate(&table, &stats);
    anomalies.extend(drift_since_last_success(call, &table)?);
    write_json(&call.outputs.join("statistics.json"), &stats)?;
    write_json(&call.outputs.join("anomalies.json"), &anomalies)?;
    let mut stop = Vec::new();
    for a in &anomalies {
        call.log_line(&format!("{}: {}: {}", a.severity, a.column, a.message));
        if failing(a.severity)? {
            stop.push(format!("{}: {}", a.column, a.message));
        }
    }
    if !stop.is_empty() {
        return Err(invalid(format!(
            "{}: {} anomalies against {} (fail_on = {fail_on}): {}",
            path.display(),
            stop.len(),
            schema_path.display(),
            stop.join("; ")
        )));
    }
    let mut out = values([
        ("anomalies", anomalies.len().to_string()),
        ("schema", schema_path.display().to_string()),
    ]);
    if let Some(run) = pinned_by_run {
        out.insert("pinned_by_run".into(), run.to_string());
    }
    Ok(out)
}

/// Warnings for the columns whose distribution moved since the data this step validated in the
/// pipeline's last successful run (serving drift's measures and thresholds); none on the first
/// run, or when that run's files were pruned.
fn drift_since_last_success(
    call: &ComponentCall,
    table: &Table,
) -> Result<Vec<kiln_core::schema::Anomaly>> {
    let runs = call.registry.pipeline_runs(Some(&call.pipeline), 50)?;
    let earlier = runs.iter().find_map(|r| {
        if r.id == call.run || r.state != PipelineRunState::Succeeded {
            return None;
        }
        let step = r.steps.iter().find(|s| s.id == call.step)?;
        let dir = std::path::Path::new(step.outputs_dir.as_deref()?);
        let from = step.cached_from.unwrap_or(r.id);
        let text = std::fs::read_to_string(dir.join("statistics.json")).ok()?;
        let stats: DatasetStatistics = serde_json::from_str(&text).ok()?;
        Some((from, stats))
    });
    let Some((from_run, reference)) = earlier else {
        return Ok(Vec::new());
    };
    let thresholds = kiln_server::drift::Thresholds::default();
    let drift = kiln_server::drift::table_drift(&reference, table, &thresholds);
    write_json(&call.outputs.join("drift.json"), &drift)?;
    call.log_line(&format!(
        "drift against the data of run {from_run} (its last success): {} of {} columns moved",
        drift.iter().filter(|d| d.alarm).count(),
        drift.len()
    ));
    Ok(drift
        .into_iter()
        .filter(|d| d.alarm)
        .map(|d| kiln_core::schema::Anomaly {
            message: format!(
                "column `{}` drifted from run {from_run}'s data: {}",
                d.feature,
                d.reasons.join(", ")
            ),
            column: d.feature,
            severity: Severity::Warning,
            kind: kiln_core::schema::AnomalyKind::Drift {
                from_run,
                reasons: d.reasons,
            },
        })
        .collect())
}

/// The schema a `validate` step without a `schema` argument checks against: the one pinned for
/// the step, or, on the pipeline's first run (or while the run that pinned one has not
/// succeeded), the one inferred from this run's data, which it pins. Either way the schema
/// inferred from this run's data is kept beside it (`inferred.toml`), for `kiln pipeline
/// schema diff|accept`.
fn pinned_schema(
    call: &ComponentCall,
    table: &Table,
    stats: &DatasetStatistics,
) -> Result<(Schema, PathBuf, u64)> {
    let inferred = Schema::infer(table, stats).for_later_runs().to_text(true);
    std::fs::write(
        call.outputs.join(kiln_core::backend::INFERRED_SCHEMA),
        &inferred,
    )?;
    let path = call.outputs.join("schema.toml");
    let registry = &call.registry;
    let pinned = registry.pinned_schema(&call.pipeline, &call.step)?;
    // An inferred pin stands once its run has succeeded (or while it runs); one whose run
    // failed or was cancelled gives way to the next run's data.
    let stale = pinned.as_ref().and_then(|p| {
        let inferred_elsewhere = p.pin.how == PinnedBy::Inferred && p.pin.run != call.run;
        let state = registry.pipeline_run(p.pin.run).map(|r| r.state).ok();
        (inferred_elsewhere
            && !matches!(
                state,
                Some(PipelineRunState::Succeeded | PipelineRunState::Running)
            ))
        .then_some(p.pin.run)
    });
    match pinned {
        Some(p) if stale.is_none() => {
            std::fs::write(&path, &p.pin.schema)?;
            let schema = Schema::parse(
                &format!("the schema pinned for step `{}`", call.step),
                &p.pin.schema,
                true,
            )?;
            call.log_line(&format!(
                "checking against the schema pinned from run {} ({}); \
                 `kiln pipeline schema diff {} --run {}` shows what this data would change",
                p.pin.run,
                p.pin.how_and_why(),
                call.pipeline,
                call.run,
            ));
            Ok((schema, path, p.pin.run))
        }
        _ => {
            let reason = match stale {
                Some(run) => format!(
                    "inferred from this run's data; run {run}, which pinned the last one, did not succeed"
                ),
                None => "inferred from the data of the pipeline's first run".to_string(),
            };
            registry.pin_schema(
                &call.pipeline,
                &call.step,
                SchemaPin::new(
                    inferred.clone(),
                    call.run,
                    PinnedBy::Inferred,
                    "kiln",
                    &reason,
                ),
            )?;
            std::fs::write(&path, &inferred)?;
            call.log_line(&format!(
                "no schema pinned yet: pinned the one {reason}; later runs are checked against it \
                 (`kiln pipeline schema show {}` to review it)",
                call.pipeline
            ));
            let schema = Schema::parse("the inferred schema", &inferred, true)?;
            Ok((schema, path, call.run))
        }
    }
}

fn transform(call: &ComponentCall) -> Result<Values> {
    let (_, table) = read_data(call, "data")?;
    let spec_path = required_path(call, "spec")?;
    let spec = TransformSpec::from_toml(&std::fs::read_to_string(&spec_path)?)
        .with_context(|| spec_path.display().to_string())?;
    let fitted = spec.fit(&table)?;
    let out = call.outputs.join("transform.json");
    write_json(&out, &fitted)?;
    call.log_line(&format!(
        "fitted {} on {} rows",
        spec_path.display(),
        table.num_rows()
    ));
    Ok(values([
        ("transform", out.display().to_string()),
        ("digest", fitted.digest()),
    ]))
}

/// The `with` keys that are the trainer's options.
fn train_config(call: &ComponentCall, skip: &[&str]) -> Result<TrainConfig> {
    let mut table = toml::Table::new();
    for (k, v) in &call.args {
        if !skip.contains(&k.as_str()) {
            table.insert(k.clone(), v.clone());
        }
    }
    let mut config: TrainConfig = toml::Value::Table(table)
        .try_into()
        .context("training options in `with`")?;
    if let Some(spec) = call.path("spec") {
        let text = std::fs::read_to_string(&spec)
            .with_context(|| format!("reading {}", spec.display()))?;
        config.transform =
            Some(TransformSpec::from_toml(&text).with_context(|| spec.display().to_string())?);
    }
    Ok(config)
}

impl Builtins {
    fn train(&self, call: &ComponentCall) -> Result<Values> {
        let (path, table) = read_data(call, "data")?;
        let target = text(call, "target")
            .ok_or_else(|| invalid("`with.target` must be a column name".into()))?;
        if table.column_index(target).is_none() {
            return Err(invalid(format!(
                "{}: target column `{target}` is not in the data{}",
                path.display(),
                kiln_core::suggest::hint(target, table.names())
            )));
        }
        let config = train_config(call, &["data", "target", "spec", "experiment"])?;
        let experiment = text(call, "experiment").unwrap_or(&call.pipeline);
        let trained = train_into(
            call.backend.as_ref(),
            &table,
            &path,
            target,
            &config,
            experiment,
            lineage_tags(call),
            &Watch(&call.cancelled),
            &kiln_trainer::NoLogger,
        )?;
        for e in &trained.outcome.history {
            call.log_line(&format!(
                "epoch {}: train_loss {:.5} validation_loss {:.5}",
                e.epoch, e.train_loss, e.validation_loss
            ));
        }
        let model = call.outputs.join("model");
        trained.write(&model)?;
        let mut out = values([
            ("model", model.display().to_string()),
            ("run", run_id_text(trained.run)),
        ]);
        for (k, v) in &trained.outcome.test_metrics {
            call.log_line(&format!("test {k}: {v}"));
            out.insert(format!("test_{k}"), v.to_string());
        }
        // The best epoch's validation figures: what a sweep's leaderboard ranks trials by.
        let mut names: Vec<String> = vec!["loss".into()];
        if let Some(last) = trained.outcome.history.last() {
            names.extend(last.validation_metrics.keys().cloned());
        }
        for name in names {
            if let Some(v) = kiln_trainer::sweep::best_figure(&trained.outcome, &name)
                && v.is_finite()
            {
                out.insert(format!("validation_{name}"), v.to_string());
            }
        }
        Ok(out)
    }
}

/// A sweep; the best trial's bundle is the step's `model`.
fn tune(call: &ComponentCall) -> Result<Values> {
    let (_, table) = read_data(call, "data")?;
    let target = text(call, "target")
        .ok_or_else(|| invalid("`with.target` must be a column name".into()))?;
    let sweep_path = required_path(call, "sweep")?;
    let config: kiln_trainer::sweep::SweepConfig =
        toml::from_str(&std::fs::read_to_string(&sweep_path)?)
            .with_context(|| sweep_path.display().to_string())?;
    let experiment = text(call, "experiment").unwrap_or(&call.pipeline);
    let swept = sweep_into(
        call.backend.as_ref(),
        &table,
        target,
        &config,
        experiment,
        &format!("{}-{}", call.pipeline, call.step),
        lineage_tags(call),
        &|end: TrialEnd| {
            call.log_line(&format!(
                "trial {} of {}: run {} {}",
                end.trial + 1,
                end.total,
                run_id_text(end.run),
                end.error
                    .map_or_else(|| "finished".to_string(), |e| format!("failed: {e}"))
            ))
        },
    )?;
    let best = swept.best.ok_or_else(|| {
        anyhow!(
            "every trial of the sweep failed; see run {}",
            run_id_text(swept.parent)
        )
    })?;
    let run = call.backend.run(best)?.run.0;
    let artifact = run
        .artifacts
        .iter()
        .find(|a| a.name == "model")
        .ok_or_else(|| anyhow!("the best trial's run {} has no model", run_id_text(best)))?;
    let model = call.outputs.join("model");
    call.backend.export_artifact(artifact, &model)?;
    call.log_line(&format!(
        "{} trials; best run {}",
        swept.trials.len(),
        run_id_text(best)
    ));
    Ok(values([
        ("model", model.display().to_string()),
        ("run", run_id_text(best)),
        ("sweep_run", run_id_text(swept.parent)),
    ]))
}

/// `NAME`, `NAME@ALIAS` or `NAME:VERSION`.
fn model_ref(spec: &str) -> (&str, String) {
    match (spec.split_once('@'), spec.split_once(':')) {
        (Some((n, a)), _) => (n, a.to_string()),
        (None, Some((n, v))) => (n, v.to_string()),
        (None, None) => (spec, "champion".to_string()),
    }
}

/// A number from a pipeline file: a float, an integer, or a string holding one.
fn number(v: &toml::Value) -> Option<f64> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The evaluation gate (`kiln_trainer::gate`) on the step's arguments: the candidate's test rows
/// against `thresholds` and against the version `baseline` names now.
fn evaluate(call: &ComponentCall) -> Result<Values> {
    let model = required_path(call, "model")?;
    let (manifest, weights) = bundle::read(&model)?;
    let (_, table) = read_data(call, "data")?;
    let mut gate = Gate {
        metric: text(call, "metric").map(str::to_string),
        min_improvement: call
            .args
            .get("min_improvement")
            .and_then(number)
            .unwrap_or(0.0),
        ..Gate::default()
    };
    if let Some(slices) = call.args.get("slices") {
        gate.slices = slice_specs(slices)?;
    }
    if let Some(n) = call.args.get("min_slice_rows") {
        gate.min_slice_rows = n
            .as_integer()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| invalid(format!("`with.min_slice_rows` must be a count, not {n}")))?;
    }
    if let Some(r) = call.args.get("max_slice_regression") {
        gate.max_slice_regression = number(r).filter(|r| *r >= 0.0).ok_or_else(|| {
            invalid(format!(
                "`with.max_slice_regression` must be a number ≥ 0, not {r}"
            ))
        })?;
    }
    if let Some(t) = call.args.get("thresholds") {
        let t = t
            .as_table()
            .ok_or_else(|| invalid("`with.thresholds` must be a table of metric = bound".into()))?;
        for (k, bound) in t {
            let bound = number(bound)
                .ok_or_else(|| invalid(format!("threshold `{k}` must be a number, not {bound}")))?;
            gate.thresholds.insert(k.clone(), bound);
        }
    }
    let mut no_baseline = None;
    let scratch = tempfile::tempdir()?;
    let baseline = match text(call, "baseline") {
        Some(spec) => {
            let (name, which) = model_ref(spec);
            match call.backend.resolve(name, &which) {
                Ok(version) => {
                    let dir = scratch.path().join("bundle");
                    call.backend.export_version(&version, &dir)?;
                    let (m, w) = bundle::read(&dir)?;
                    let foreign = crate::imported::scorer(&dir, &m)?;
                    Some((
                        format!("{name} version {} ({which})", version.version),
                        version.version,
                        (m, w),
                        foreign,
                    ))
                }
                Err(e) => {
                    no_baseline = Some(format!(
                        "no baseline ({}); judged on thresholds alone",
                        e.message()
                    ));
                    None
                }
            }
        }
        None => None,
    };
    let candidate = crate::imported::scorer(&model, &manifest)?;
    let mut judgement = judge(
        &manifest,
        &weights,
        candidate.as_deref(),
        &table,
        &gate,
        baseline
            .as_ref()
            .map(|(label, version, (m, w), foreign)| Baseline {
                label: label.clone(),
                version: *version,
                manifest: m,
                weights: w,
                foreign: foreign.as_deref(),
            }),
    )?;
    judgement.reasons.extend(no_baseline);
    let reason = judgement.reasons.join("; ");
    call.log_line(&format!(
        "{}: {reason}",
        if judgement.blessed {
            "blessed"
        } else {
            "not blessed"
        }
    ));
    write_json(&call.outputs.join("evaluation.json"), &judgement)?;
    let mut out = values([
        ("blessed", judgement.blessed.to_string()),
        ("metric", judgement.metric.clone()),
        (
            "candidate",
            judgement.candidate_value().unwrap_or(f64::NAN).to_string(),
        ),
        ("reason", reason),
    ]);
    if let Some(b) = judgement.baseline {
        out.insert("baseline".into(), b.to_string());
    }
    if !judgement.slices.is_empty() {
        let table = slice_table(&judgement);
        call.log_line(&table);
        std::fs::write(call.outputs.join("slices.txt"), &table)?;
        out.insert("slices".into(), judgement.slices.len().to_string());
        if let Some(worst) = judgement.slices.iter().find(|s| s.judged) {
            out.insert("worst_slice".into(), worst.slice.clone());
            out.insert(
                "worst_slice_regression".into(),
                worst.regression.unwrap_or(f64::NAN).to_string(),
            );
        }
    }
    Ok(out)
}

/// `slices = ["country", ["country", "device"]]`: a column, or columns crossed.
fn slice_specs(v: &toml::Value) -> Result<Vec<Vec<String>>> {
    let bad = || {
        invalid(format!(
            "`with.slices` must list columns or crossings, e.g. [\"country\", [\"country\", \"device\"]], not {v}"
        ))
    };
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|item| match item {
            toml::Value::String(c) => Ok(vec![c.clone()]),
            toml::Value::Array(cs) if !cs.is_empty() => cs
                .iter()
                .map(|c| c.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            _ => Err(bad()),
        })
        .collect()
}

/// The slice figures as an aligned table, the worst regression first.
fn slice_table(j: &kiln_trainer::gate::Judgement) -> String {
    let figure = |v: Option<f64>| v.map_or("-".to_string(), kiln_core::text::num);
    let rows = j
        .slices
        .iter()
        .map(|s| {
            vec![
                s.slice.clone(),
                s.rows.to_string(),
                figure(Some(s.candidate)),
                figure(s.baseline),
                figure(s.regression),
                if s.judged { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    crate::ui::table(
        &[
            "slice",
            "rows",
            &format!("{} candidate", j.metric),
            "baseline",
            "worse by",
            "judged",
        ],
        rows,
        &[1, 2, 3, 4],
    )
}

/// An ONNX model from any framework as a bundle (what `kiln models import` does, for pipelines):
/// a `run` step that trains with another library and writes `model.onnx` is then evaluated,
/// validated and pushed like a kiln model.
fn import_onnx(call: &ComponentCall) -> Result<Values> {
    let file = required_path(call, "file")?;
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let reference = match call.args.get("reference") {
        Some(_) => Some(read_data(call, "reference")?.1),
        None => None,
    };
    let labels = match call.args.get("labels") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.split(',').map(|l| l.trim().to_string()).collect()),
        Some(toml::Value::Array(a)) => Some(
            a.iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Some(other) => {
            return Err(invalid(format!(
                "`with.labels` must list the class names, not {other}"
            )));
        }
    };
    let scores = match text(call, "scores") {
        None => None,
        Some("probabilities") => Some(kiln_core::bundle::Scores::Probabilities),
        Some("logits") => Some(kiln_core::bundle::Scores::Logits),
        Some(other) => {
            return Err(invalid(format!(
                "`with.scores` is probabilities or logits, not {other:?}"
            )));
        }
    };
    let options = kiln_server::import::ImportOptions {
        target: text(call, "target").map(str::to_string),
        labels,
        scores,
        output: text(call, "output").map(str::to_string),
        transform: None,
        reference,
        source: file
            .file_name()
            .map_or("model.onnx".into(), |n| n.to_string_lossy().into_owned()),
    };
    let dir = call.outputs.join("model");
    let imported = kiln_server::import::import(&bytes, &options, &dir)
        .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let m = &imported.manifest;
    call.log_line(&format!(
        "imported {} ({} columns{}); checked on {}",
        options.source,
        m.signature.len(),
        if m.labels.is_empty() {
            String::new()
        } else {
            format!(", classes {}", m.labels.join(", "))
        },
        imported.checked_on
    ));
    for note in &imported.notes {
        call.log_line(&format!("note: {note}"));
    }
    let mut out = values([
        ("model", dir.display().to_string()),
        (
            "task",
            serde_json::to_value(m.task)?
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        ("checked_rows", imported.checked_rows.to_string()),
    ]);
    for (k, v) in &m.metrics {
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

/// Loads the bundle in the serving runtime, warms it up and answers requests built from its
/// training statistics, as a server would before taking traffic.
fn infra_validate(call: &ComponentCall) -> Result<Values> {
    let model = required_path(call, "model")?;
    let requests = call
        .args
        .get("requests")
        .and_then(toml::Value::as_integer)
        .unwrap_or(16)
        .clamp(1, 100_000) as usize;
    let runtime = kiln_server::runtime::Runtime::load(&model)
        .map_err(|e| anyhow!("loading {} for serving: {e}", model.display()))?;
    runtime.warm_up().map_err(|e| anyhow!("warm-up: {e}"))?;
    let start = std::time::Instant::now();
    for i in 0..requests {
        let rows = runtime.typical_rows(1 + i % 8);
        let out = runtime
            .predict(&rows)
            .map_err(|e| anyhow!("request {}: {e}", i + 1))?;
        if out.iter().any(|v| !v.is_finite()) {
            bail!("request {} answered a value that is not finite", i + 1);
        }
    }
    let per = start.elapsed().as_micros() as f64 / requests as f64;
    call.log_line(&format!("{requests} requests answered, {per:.1} µs each"));
    Ok(values([
        ("requests", requests.to_string()),
        ("latency_us", format!("{per:.1}")),
    ]))
}

/// The best of a sweep's trials, each trained by a step of its own (`kiln sweep --export`): the
/// model whose best validation figure of `metric` is best (`scores[i]` is trial i's, `models[i]`
/// its bundle), copied to the outputs and, with `register = NAME`, registered as the next
/// version of NAME from the trial's own run.
fn leaderboard(call: &ComponentCall) -> Result<Values> {
    let metric = text(call, "metric")
        .ok_or_else(|| invalid("`with.metric` must be a metric's name".into()))?;
    let list = |arg: &str| -> Result<&Vec<toml::Value>> {
        call.args
            .get(arg)
            .and_then(toml::Value::as_array)
            .ok_or_else(|| invalid(format!("`with.{arg}` must be a list, one item per trial")))
    };
    let (models, scores) = (list("models")?, list("scores")?);
    if models.len() != scores.len() || models.is_empty() {
        return Err(invalid(format!(
            "`with.models` lists {} trials and `with.scores` {}: give one of each per trial",
            models.len(),
            scores.len()
        )));
    }
    let minimised = kiln_trainer::sweep::is_minimised(metric);
    let mut ranked: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| number(s).filter(|v| v.is_finite()).map(|v| (i, v)))
        .collect();
    ranked.sort_by(|a, b| {
        if minimised {
            a.1.total_cmp(&b.1)
        } else {
            b.1.total_cmp(&a.1)
        }
    });
    for (rank, (i, v)) in ranked.iter().enumerate() {
        call.log_line(&format!(
            "{}. trial {}: validation {metric} {v}",
            rank + 1,
            i + 1
        ));
    }
    let &(best, score) = ranked.first().ok_or_else(|| {
        invalid(format!(
            "no trial reported a validation {metric}; the sweep's metric must be one the model reports"
        ))
    })?;
    let from = models[best]
        .as_str()
        .map(|p| call.workdir.join(p))
        .ok_or_else(|| invalid(format!("`with.models` item {} must be a path", best + 1)))?;
    let model = call.outputs.join("model");
    kiln_core::registry::copy_tree(&from, &model)?;
    let (manifest, _) = bundle::read(&model)?;
    let run = manifest
        .lineage
        .run_id
        .as_deref()
        .and_then(|id| parse_run_id(id).ok())
        .ok_or_else(|| anyhow!("the best trial's bundle names no training run"))?;
    let mut out = values([
        ("model", model.display().to_string()),
        ("best", (best + 1).to_string()),
        ("score", score.to_string()),
        ("run", run_id_text(run)),
    ]);
    if let Some(name) = text(call, "register") {
        let version = call.backend.register_version(
            name,
            run,
            "model",
            &format!("best of {} trials ({metric} {score})", models.len()),
            Some(serde_json::json!(manifest.signature)),
        )?;
        call.log_line(&format!("registered {name} version {}", version.version));
        out.insert("version".into(), version.version.to_string());
    }
    Ok(out)
}

/// Registers the bundle as the next version of a model and moves the alias to it, when blessed.
fn push(call: &ComponentCall) -> Result<Values> {
    let model = required_path(call, "model")?;
    let name =
        text(call, "name").ok_or_else(|| invalid("`with.name` must be a model name".into()))?;
    let alias = text(call, "alias").unwrap_or("champion");
    match call.args.get("blessing") {
        None | Some(toml::Value::Boolean(true)) => {}
        Some(toml::Value::Boolean(false)) => {
            call.log_line("not blessed: nothing pushed");
            return Ok(values([("pushed", "false".into())]));
        }
        Some(other) => {
            return Err(invalid(format!(
                "`with.blessing` must be true or false, not {other}"
            )));
        }
    }
    let reg = &call.backend;
    let (manifest, _) = bundle::read(&model)?;
    // The training run that logged this bundle, or a new run holding it.
    let logged = manifest
        .lineage
        .run_id
        .as_deref()
        .and_then(|id| parse_run_id(id).ok())
        .and_then(|id| reg.run(id).ok())
        .map(|detail| detail.run.0)
        .filter(|r| r.artifacts.iter().any(|a| a.name == "model"));
    let run = match logged {
        Some(r) => r.id,
        None => {
            let r = reg.create_run(NewRun {
                experiment: call.pipeline.clone(),
                name: format!("{}-{}", call.pipeline, call.step),
                params: BTreeMap::new(),
                tags: lineage_tags(call),
                parent: None,
                lineage: Lineage {
                    dataset_fingerprint: manifest.lineage.dataset_fingerprint.clone(),
                    ..Default::default()
                },
            })?;
            reg.log_artifact(r.id, "model", &model)?;
            reg.end_run(r.id, RunStatus::Finished)?;
            r.id
        }
    };
    let description = format!("pipeline {} run {}", call.pipeline, call.run_name);
    let version = reg.register_version(
        name,
        run,
        "model",
        &description,
        Some(serde_json::json!(manifest.signature)),
    )?;
    reg.set_alias(
        name,
        alias,
        version.version,
        &AliasMove {
            expect: Expect::Any,
            by: format!("pipeline {}", call.pipeline),
            reason: format!("pushed by run {} step {}", call.run_name, call.step),
        },
    )?;
    call.log_line(&format!(
        "registered {name} version {} and moved `{alias}` to it",
        version.version
    ));
    Ok(values([
        ("pushed", "true".into()),
        ("version", version.version.to_string()),
        ("run", run_id_text(run)),
    ]))
}
