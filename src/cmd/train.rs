//! `kiln train` and `kiln predict`: the trainer wired to data, the registry and bundles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use kiln_core::bundle;
use kiln_core::registry::{Lineage, NewRun, Registry, RunStatus, run_id_text};
use kiln_core::transform::TransformSpec;
use kiln_trainer::{DeviceChoice, ModelKind, OptimizerKind, Predictor, RunLogger, TrainConfig};

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::ui::{self, Bar, num};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Logistic,
    Mlp,
    WideDeep,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Gpu,
}

/// `kiln train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training data (CSV, JSON Lines or Parquet); the last rows are the test set.
    #[arg(long)]
    pub data: PathBuf,
    /// The column to predict.
    #[arg(long)]
    target: String,
    /// A TOML file with any of the options below (flags given here win).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// Hidden layer sizes of an MLP, e.g. 64,32.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    dropout: Option<f64>,
    /// Epochs without a better validation loss before stopping (0: never stop early).
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// A transform spec (TOML) instead of the default (standardize numbers, one-hot categories).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// The experiment the run belongs to.
    #[arg(long, default_value = "Default")]
    experiment: String,
    /// Register the trained model as the next version of this model.
    #[arg(long)]
    register: Option<String>,
    /// Also write the bundle here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `kiln predict`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["bundle", "model"])))]
pub struct PredictArgs {
    /// A bundle directory.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// A registered model: NAME, NAME@ALIAS or NAME:VERSION (default alias: champion).
    #[arg(long)]
    model: Option<String>,
    /// The rows to score.
    #[arg(long)]
    data: PathBuf,
    /// Write predictions here (CSV); otherwise the first rows are printed.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<TrainConfig>(&text).with_context(|| path.display().to_string())?
            }
            None => TrainConfig::default(),
        };
        if let Some(m) = self.model {
            c.model = match m {
                ModelArg::Logistic => ModelKind::Logistic,
                ModelArg::Mlp => ModelKind::Mlp,
                ModelArg::WideDeep => ModelKind::WideDeep,
            };
        }
        if let Some(h) = &self.hidden {
            c.hidden = h.clone();
            if self.model.is_none() && self.config.is_none() {
                c.model = ModelKind::Mlp;
            }
        }
        if let Some(o) = self.optimizer {
            c.optimizer = match o {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::Adamw,
            };
        }
        if let Some(d) = self.device {
            c.device = match d {
                DeviceArg::Cpu => DeviceChoice::Cpu,
                DeviceArg::Gpu => DeviceChoice::Gpu,
            };
        }
        c.epochs = self.epochs.unwrap_or(c.epochs);
        c.lr = self.lr.unwrap_or(c.lr);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.weight_decay = self.weight_decay.unwrap_or(c.weight_decay);
        c.dropout = self.dropout.unwrap_or(c.dropout);
        c.seed = self.seed.unwrap_or(c.seed);
        if let Some(p) = self.patience {
            c.patience = (p > 0).then_some(p);
        }
        if let Some(path) = &self.spec {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            c.transform =
                Some(TransformSpec::from_toml(&text).with_context(|| path.display().to_string())?);
        }
        Ok(c)
    }
}

/// Logs each epoch to the run and prints a line for people.
struct EpochLog<'a> {
    reg: &'a Registry,
    run: u64,
    epochs: usize,
    quiet: bool,
}

impl RunLogger for EpochLog<'_> {
    fn log(&self, step: i64, metrics: &[(&str, f64)]) {
        if let Err(e) = self.reg.log_metrics(
            self.run,
            metrics
                .iter()
                .map(|(k, v)| (*k, step, *v))
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            tracing::warn!("logging metrics to run {}: {e}", run_id_text(self.run));
        }
        if !self.quiet && metrics.iter().any(|(k, _)| *k == "train_loss") {
            let shown = [
                "train_loss",
                "validation_loss",
                "validation_accuracy",
                "validation_roc_auc",
                "validation_rmse",
            ];
            let parts: Vec<String> = metrics
                .iter()
                .filter(|(k, _)| shown.contains(k))
                .map(|(k, v)| format!("{k} {}", num(*v)))
                .collect();
            eprintln!("epoch {step}/{}  {}", self.epochs, parts.join("  "));
        }
    }
}

/// A new top-level run of `experiment` on `table` (its fingerprint as the run's lineage).
fn top_run(
    reg: &Registry,
    experiment: &str,
    name: &str,
    params: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    table: &kiln_core::data::Table,
) -> Result<kiln_core::registry::Run> {
    Ok(reg.create_run(NewRun {
        experiment: experiment.to_string(),
        name: name.to_string(),
        params,
        tags,
        parent: None,
        lineage: Lineage {
            dataset_fingerprint: Some(table.fingerprint().to_string()),
            ..Default::default()
        },
    })?)
}

/// A finished training run: its id in the registry (with the bundle as its `model` artifact),
/// what training produced, and the bundle's manifest.
pub struct Trained {
    pub run: u64,
    pub outcome: kiln_trainer::TrainOutcome,
    pub manifest: kiln_core::bundle::Manifest,
}

impl Trained {
    /// Writes the bundle to `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        bundle::write(dir, &self.manifest, &self.outcome.weights)?;
        Ok(())
    }
}

/// Trains on `table` as a new run of `experiment`: parameters, per-epoch metrics, lineage and the
/// bundle (artifact `model`) go into the registry.
#[allow(clippy::too_many_arguments)]
pub fn train_into(
    reg: &Registry,
    table: &kiln_core::data::Table,
    data: &Path,
    target: &str,
    config: &TrainConfig,
    experiment: &str,
    tags: BTreeMap<String, String>,
    progress: &dyn kiln_core::progress::Progress,
    quiet: bool,
) -> Result<Trained> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(TrainConfig {
        transform: None,
        ..config.clone()
    }) {
        params.extend(m.iter().map(|(k, v)| (k.clone(), param_text(v))));
    }
    params.insert("target".into(), target.to_string());
    params.insert("data".into(), data.display().to_string());
    let run = top_run(reg, experiment, "", params, tags, table)?;
    let logger = EpochLog {
        reg,
        run: run.id,
        epochs: config.epochs,
        quiet,
    };
    let outcome = match kiln_trainer::train(table, target, config, progress, &logger) {
        Ok(o) => o,
        Err(e) => {
            reg.end_run(run.id, RunStatus::Failed)?;
            return Err(
                anyhow::Error::new(e).context(format!("run {} failed", run_id_text(run.id)))
            );
        }
    };
    let mut manifest = outcome.manifest.clone();
    manifest.lineage.run_id = Some(run_id_text(run.id));
    let trained = Trained {
        run: run.id,
        outcome,
        manifest,
    };
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let bundle_dir = scratch.path().join("bundle");
    trained.write(&bundle_dir)?;
    reg.log_artifact(run.id, "model", &bundle_dir)?;
    reg.end_run(run.id, RunStatus::Finished)?;
    Ok(trained)
}

pub fn train(home: &Home, args: TrainArgs) -> Result<Outcome> {
    train_on(home, args, None)
}

/// `kiln train` on a table already in memory (the REPL's loaded datasets), or on `--data`.
pub fn train_on(
    home: &Home,
    args: TrainArgs,
    loaded: Option<&kiln_core::data::Table>,
) -> Result<Outcome> {
    let config = args.config()?;
    let read;
    let table = match loaded {
        Some(t) => {
            if t.column_index(&args.target).is_none() {
                bail!(
                    "target column `{}` is not in the data{}",
                    args.target,
                    kiln_core::suggest::hint(&args.target, t.names())
                );
            }
            t
        }
        None => {
            read = read_with_target(&args.data, &args.target)?;
            &read
        }
    };
    let reg = Registry::open(&home.dir)?;
    let Trained {
        run,
        outcome,
        manifest,
    } = train_into(
        &reg,
        table,
        &args.data,
        &args.target,
        &config,
        &args.experiment,
        BTreeMap::new(),
        &Bar::new(),
        args.json,
    )?;
    if let Some(out) = &args.out {
        bundle::write(out, &manifest, &outcome.weights)?;
    }
    let version = match &args.register {
        Some(name) => Some(reg.register_version(
            name,
            run,
            "model",
            "",
            Some(serde_json::json!(manifest.signature)),
        )?),
        None => None,
    };
    if args.json {
        ui::print_json(&serde_json::json!({
            "run": run_id_text(run),
            "rows": outcome.rows,
            "epochs": outcome.history.len(),
            "test_metrics": outcome.test_metrics,
            "registered": version.as_ref().map(|v| serde_json::json!({"model": v.model, "version": v.version})),
        }))?;
        return Ok(Outcome::Ok);
    }
    let rows = outcome
        .test_metrics
        .iter()
        .map(|(k, v)| vec![k.clone(), num(*v)])
        .collect();
    println!("{}", ui::table(&["test metric", "value"], rows, &[1]));
    println!(
        "\nrun {} ({} train / {} validation / {} test rows, {} epochs){}",
        run_id_text(run),
        outcome.rows.train,
        outcome.rows.validation,
        outcome.rows.test,
        outcome.history.len(),
        version.map_or(String::new(), |v| format!(
            "; registered {} version {}",
            v.model, v.version
        ))
    );
    Ok(Outcome::Ok)
}

pub fn predict(home: &Home, args: PredictArgs) -> Result<Outcome> {
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let dir: PathBuf = match (&args.bundle, &args.model) {
        (Some(b), _) => b.clone(),
        (None, Some(spec)) => {
            let (name, which) = match (spec.split_once('@'), spec.split_once(':')) {
                (Some((n, a)), _) => (n, a.to_string()),
                (None, Some((n, v))) => (n, v.to_string()),
                (None, None) => (spec.as_str(), "champion".to_string()),
            };
            let reg = Registry::open(&home.dir)?;
            let version = reg.resolve(name, &which)?;
            let dir = scratch.path().join("bundle");
            reg.export_artifact(&version.artifact, &dir)?;
            dir
        }
        (None, None) => bail!("give --bundle DIR or --model NAME"),
    };
    let (manifest, weights) = bundle::read(&dir)?;
    let device = match args.device {
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Gpu => DeviceChoice::Gpu,
    };
    let predictor = Predictor::new(&manifest, &weights, device)?;
    let table = kiln_core::data::read_with_progress(&args.data, &Default::default(), &Bar::new())?;
    let out = predictor.predict(&table)?;
    let width = predictor.width();
    let mut header: Vec<String> = Vec::new();
    let classify = !manifest.labels.is_empty();
    if classify {
        header.push(format!("predicted_{}", manifest.target));
        header.extend(manifest.labels.iter().map(|l| format!("p_{l}")));
    } else {
        header.push(format!("predicted_{}", manifest.target));
    }
    let rows: Vec<Vec<String>> = out
        .chunks(width)
        .map(|r| {
            if classify {
                let best = r
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, v)| if *v > r[b] { i } else { b });
                let mut row = vec![manifest.labels[best].clone()];
                row.extend(r.iter().map(|p| p.to_string()));
                row
            } else {
                vec![r[0].to_string()]
            }
        })
        .collect();
    match &args.output {
        Some(path) => {
            kiln_core::data::write_csv_rows(path, &header, rows.iter().cloned())?;
            eprintln!("wrote {} predictions to {}", rows.len(), path.display());
        }
        None => {
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let shown: Vec<Vec<String>> = rows.iter().take(20).cloned().collect();
            println!("{}", ui::table(&header, shown, &[]));
            if rows.len() > 20 {
                println!(
                    "({} more rows; write them all with -o FILE)",
                    rows.len() - 20
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Reads training data, checking that the target column is there before any run is created.
fn read_with_target(data: &Path, target: &str) -> Result<kiln_core::data::Table> {
    let table = kiln_core::data::read_with_progress(data, &Default::default(), &Bar::new())?;
    if table.column_index(target).is_none() {
        bail!(
            "{}: target column `{target}` is not in the data{}",
            data.display(),
            kiln_core::suggest::hint(target, table.names())
        );
    }
    Ok(table)
}

/// `kiln sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep (TOML): method, trials, parallel, metric, rungs, [base] options, [space].
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    target: String,
    /// Override the number of random trials.
    #[arg(long)]
    trials: Option<usize>,
    /// Override how many trials train at once.
    #[arg(long)]
    parallel: Option<usize>,
    #[arg(long, default_value = "Default")]
    experiment: String,
    /// Register the best trial as the next version of this model.
    #[arg(long)]
    register: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Each trial a child run of the sweep's run.
struct ChildRuns<'a> {
    reg: &'a Registry,
    experiment: String,
    parent: u64,
    runs: std::sync::Mutex<BTreeMap<usize, u64>>,
    total: usize,
}

impl kiln_trainer::sweep::TrialSink for ChildRuns<'_> {
    fn start(
        &self,
        trial: usize,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> Box<dyn RunLogger + '_> {
        let params: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.clone(), param_text(v)))
            .collect();
        let run = self.reg.create_run(NewRun {
            experiment: self.experiment.clone(),
            name: format!("trial-{trial}"),
            params,
            tags: BTreeMap::new(),
            parent: Some(self.parent),
            lineage: Lineage::default(),
        });
        match run {
            Ok(run) => {
                if let Ok(mut m) = self.runs.lock() {
                    m.insert(trial, run.id);
                }
                Box::new(EpochLog {
                    reg: self.reg,
                    run: run.id,
                    epochs: 0,
                    quiet: true,
                })
            }
            Err(e) => {
                tracing::warn!("creating the run of trial {trial}: {e}");
                Box::new(kiln_trainer::NoLogger)
            }
        }
    }

    fn finish(
        &self,
        trial: usize,
        result: &Result<(kiln_trainer::TrainOutcome, f64), kiln_trainer::TrainError>,
    ) {
        let Some(run) = self.runs.lock().ok().and_then(|m| m.get(&trial).copied()) else {
            return;
        };
        let done = (|| -> Result<()> {
            match result {
                Ok((outcome, _)) => {
                    let mut manifest = outcome.manifest.clone();
                    manifest.lineage.run_id = Some(run_id_text(run));
                    let scratch = tempfile::tempdir()?;
                    let dir = scratch.path().join("bundle");
                    bundle::write(&dir, &manifest, &outcome.weights)?;
                    self.reg.log_artifact(run, "model", &dir)?;
                    self.reg.end_run(run, RunStatus::Finished)?;
                    eprintln!(
                        "trial {} of {}: run {} finished",
                        trial + 1,
                        self.total,
                        run_id_text(run)
                    );
                }
                Err(e) => {
                    self.reg.end_run(run, RunStatus::Failed)?;
                    eprintln!(
                        "trial {} of {}: run {} failed: {e}",
                        trial + 1,
                        self.total,
                        run_id_text(run)
                    );
                }
            }
            Ok(())
        })();
        if let Err(e) = done {
            tracing::warn!("recording trial {trial}: {e:#}");
        }
    }
}

pub fn sweep(home: &Home, args: SweepArgs) -> Result<Outcome> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let mut config: kiln_trainer::sweep::SweepConfig =
        toml::from_str(&text).with_context(|| args.config.display().to_string())?;
    if let Some(t) = args.trials {
        config.trials = t;
    }
    if let Some(p) = args.parallel {
        config.parallel = p;
    }
    let table = read_with_target(&args.data, &args.target)?;
    let reg = Registry::open(&home.dir)?;
    let name = format!(
        "sweep-{}",
        args.config
            .file_stem()
            .map_or("".into(), |s| s.to_string_lossy())
    );
    let Swept {
        parent,
        trials,
        runs,
        best,
    } = sweep_into(
        &reg,
        &table,
        &args.target,
        &config,
        &args.experiment,
        &name,
        BTreeMap::new(),
    )?;
    let minimised = kiln_trainer::sweep::is_minimised(&config.metric);
    let figure = |s: f64| if minimised { -s } else { s };
    let registered = match (&args.register, best) {
        (Some(name), Some(run)) => {
            Some(reg.register_version(name, run, "model", "best sweep trial", None)?)
        }
        _ => None,
    };
    if args.json {
        let rows: Vec<serde_json::Value> = trials
            .iter()
            .map(|t| {
                serde_json::json!({
                    "trial": t.index,
                    "run": runs.get(&t.index).map(|r| run_id_text(*r)),
                    "params": t.params,
                    "validation": t.score.map(figure),
                    "epochs": t.epochs,
                    "error": t.error,
                })
            })
            .collect();
        ui::print_json(&serde_json::json!({
            "parent": run_id_text(parent),
            "metric": config.metric,
            "trials": rows,
            "registered": registered.as_ref().map(|v| serde_json::json!({"model": v.model, "version": v.version})),
        }))?;
        return Ok(Outcome::Ok);
    }
    let rows = trials
        .iter()
        .take(20)
        .enumerate()
        .map(|(rank, t)| {
            vec![
                (rank + 1).to_string(),
                runs.get(&t.index).map_or("-".into(), |r| run_id_text(*r)),
                t.score
                    .map_or_else(|| "failed".to_string(), |s| num(figure(s))),
                t.epochs.to_string(),
                t.params
                    .iter()
                    .map(|(k, v)| format!("{k}={}", compact(v)))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    let metric = format!("validation {}", config.metric);
    println!(
        "{}",
        ui::table(
            &["rank", "run", &metric, "epochs", "params"],
            rows,
            &[0, 2, 3]
        )
    );
    println!(
        "\nsweep run {}: {} trials{}",
        run_id_text(parent),
        trials.len(),
        registered.map_or(String::new(), |v| format!(
            "; registered {} version {} from the best trial",
            v.model, v.version
        ))
    );
    Ok(Outcome::Ok)
}

/// A finished sweep: the parent run, the trials best first, each trial's run, the best run.
pub struct Swept {
    pub parent: u64,
    pub trials: Vec<kiln_trainer::sweep::Trial>,
    pub runs: BTreeMap<usize, u64>,
    pub best: Option<u64>,
}

/// Runs a sweep as a parent run with one child run per trial.
pub fn sweep_into(
    reg: &Registry,
    table: &kiln_core::data::Table,
    target: &str,
    config: &kiln_trainer::sweep::SweepConfig,
    experiment: &str,
    name: &str,
    tags: BTreeMap<String, String>,
) -> Result<Swept> {
    let total = config.trial_params()?.len();
    let mut params = BTreeMap::new();
    params.insert(
        "sweep".to_string(),
        serde_json::to_string(config).unwrap_or_default(),
    );
    params.insert("target".to_string(), target.to_string());
    let parent = top_run(reg, experiment, name, params, tags, table)?;
    let sink = ChildRuns {
        reg,
        experiment: experiment.to_string(),
        parent: parent.id,
        runs: std::sync::Mutex::new(BTreeMap::new()),
        total,
    };
    eprintln!(
        "sweep run {}: {} trials, {} at a time",
        run_id_text(parent.id),
        total,
        config.parallel
    );
    let trials = match kiln_trainer::sweep::sweep(table, target, config, &sink) {
        Ok(t) => t,
        Err(e) => {
            reg.end_run(parent.id, RunStatus::Failed)?;
            return Err(e.into());
        }
    };
    let runs = sink.runs.lock().map(|m| m.clone()).unwrap_or_default();
    let minimised = kiln_trainer::sweep::is_minimised(&config.metric);
    let figure = |s: f64| if minimised { -s } else { s };
    let best = trials.iter().find(|t| t.score.is_some());
    if let Some(b) = best {
        reg.log_metrics(
            parent.id,
            &[(
                &format!("best_validation_{}", config.metric),
                0,
                figure(b.score.unwrap_or(0.0)),
            )],
        )?;
    }
    reg.end_run(parent.id, RunStatus::Finished)?;
    let best = best.and_then(|b| runs.get(&b.index)).copied();
    Ok(Swept {
        parent: parent.id,
        trials,
        runs,
        best,
    })
}

/// A run parameter's text: strings as they are, anything else as JSON.
fn param_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map_or(n.to_string(), num),
        other => other.to_string(),
    }
}
