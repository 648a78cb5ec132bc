//! `kiln train` and `kiln predict`: the trainer wired to data, the registry and bundles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use kiln_core::bundle;
use kiln_core::registry::run_id_text;
use kiln_core::transform::TransformSpec;
use kiln_trainer::tracked::{Swept, Trained, TrialEnd, sweep_into, train_into};
use kiln_trainer::{
    DeviceChoice, ModelKind, NoLogger, OptimizerKind, Predictor, RunLogger, TrainConfig,
};

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::remote::Server;
use crate::ui::{self, Bar, num};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Logistic,
    Mlp,
    WideDeep,
    Gbdt,
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
    /// The model: logistic (default), mlp, wide-deep (dense layers plus embeddings of
    /// categories) or gbdt (gradient-boosted trees; categories and missing values handled natively).
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// gbdt: boosting rounds (default 100; early stopping may end sooner).
    #[arg(long)]
    trees: Option<usize>,
    /// gbdt: the most leaves per tree (default 31).
    #[arg(long)]
    leaves: Option<usize>,
    /// gbdt: the deepest a leaf may be (default: no limit beyond --leaves).
    #[arg(long)]
    max_depth: Option<usize>,
    /// Hidden layer sizes of an MLP, e.g. 64,32.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Passes over the training rows (default 30; early stopping may end sooner).
    #[arg(long)]
    epochs: Option<usize>,
    /// The learning rate (default 0.01, or 0.001 when more than 1,000 one-hot columns feed
    /// the network; for gbdt its shrinkage, default 0.1).
    #[arg(long)]
    lr: Option<f64>,
    /// Rows per gradient step (default 64).
    #[arg(long)]
    batch_size: Option<usize>,
    /// sgd (with momentum 0.9), adam (default) or adamw.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// L2 penalty on the weights (default 0).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Dropout rate of an MLP's hidden layers (default 0).
    #[arg(long)]
    dropout: Option<f64>,
    /// Epochs without a better validation loss before stopping (0: never stop early).
    #[arg(long)]
    patience: Option<usize>,
    /// The random seed of the split, the initial weights and the shuffling (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// cpu (default), or gpu with a kiln built with `--features gpu`.
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
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Train here, and record the run, its metrics, its bundle and any version in this server's
    /// registry.
    #[command(flatten)]
    server: Server,
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
    /// cpu, or gpu with a kiln built with `--features gpu`.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[command(flatten)]
    server: Server,
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
                ModelArg::Gbdt => ModelKind::Gbdt,
            };
        }
        c.trees = self.trees.unwrap_or(c.trees);
        c.leaves = self.leaves.unwrap_or(c.leaves);
        c.max_depth = self.max_depth.or(c.max_depth);
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
        match (c.model, self.lr) {
            (ModelKind::Gbdt, Some(lr)) => c.shrinkage = lr,
            (_, Some(lr)) => c.lr = Some(lr),
            _ => {}
        }
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

/// Prints a line for people at each epoch.
struct EpochLine {
    epochs: usize,
    /// What a step is: an epoch, or a boosting round.
    word: &'static str,
}

impl RunLogger for EpochLine {
    fn log(&self, step: i64, metrics: &[(&str, f64)]) {
        if metrics.iter().any(|(k, _)| *k == "train_loss") {
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
            eprintln!("{} {step}/{}  {}", self.word, self.epochs, parts.join("  "));
        }
    }
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
    let backend = args.server.backend(home)?;
    let line = EpochLine {
        epochs: if config.model == ModelKind::Gbdt {
            config.trees
        } else {
            config.epochs
        },
        word: if config.model == ModelKind::Gbdt {
            "round"
        } else {
            "epoch"
        },
    };
    let Trained {
        run,
        outcome,
        manifest,
    } = train_into(
        backend.as_ref(),
        table,
        &args.data,
        &args.target,
        &config,
        &args.experiment,
        BTreeMap::new(),
        &Bar::new(),
        if args.json { &NoLogger } else { &line },
    )?;
    if let Some(out) = &args.out {
        bundle::write(out, &manifest, &outcome.weights)?;
    }
    let version = match &args.register {
        Some(name) => Some(backend.register_version(
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
            "feature_importance": outcome
                .feature_importance
                .iter()
                .map(|(column, share)| serde_json::json!({"column": column, "share": share}))
                .collect::<Vec<_>>(),
            "baseline_metrics": outcome.baseline_metrics,
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
    if let Some(line) = against_baseline(&outcome.test_metrics, &outcome.baseline_metrics) {
        println!("{line}");
    }
    if !outcome.feature_importance.is_empty() {
        let shown = 10;
        let rows = outcome
            .feature_importance
            .iter()
            .take(shown)
            .map(|(c, s)| vec![c.clone(), format!("{:.1}%", s * 100.0)])
            .collect();
        println!(
            "\n{}",
            ui::table(&["column", "share of split gain"], rows, &[1])
        );
        if outcome.feature_importance.len() > shown {
            println!(
                "({} more columns; all of them with --json)",
                outcome.feature_importance.len() - shown
            );
        }
    }
    let (steps, word) = (
        outcome.history.len(),
        if config.model == ModelKind::Gbdt {
            "rounds"
        } else {
            "epochs"
        },
    );
    println!(
        "\nrun {} ({} train / {} validation / {} test rows, {steps} {word}){}",
        run_id_text(run),
        outcome.rows.train,
        outcome.rows.validation,
        outcome.rows.test,
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
            let backend = args.server.backend(home)?;
            let version = backend.resolve(name, &which)?;
            let dir = scratch.path().join("bundle");
            backend.export_version(&version, &dir)?;
            dir
        }
        (None, None) => bail!("give --bundle DIR or --model NAME"),
    };
    let (manifest, weights) = bundle::read(&dir)?;
    let device = match args.device {
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Gpu => DeviceChoice::Gpu,
    };
    let table = kiln_core::data::read_with_progress(&args.data, &Default::default(), &Bar::new())?;
    let (out, width) = match crate::imported::scorer(&dir, &manifest)? {
        Some(score) => {
            score(&table).map_err(|e| anyhow::anyhow!("{}: {e}", args.data.display()))?
        }
        None => {
            let predictor = Predictor::new(&manifest, &weights, device)?;
            (predictor.predict(&table)?, predictor.width())
        }
    };
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

/// One line comparing the model with one that learned nothing (the commonest class, or the mean,
/// for every row), with a hint when it is no better.
fn against_baseline(
    test: &BTreeMap<String, f64>,
    baseline: &BTreeMap<String, f64>,
) -> Option<String> {
    let (metric, what, higher_is_better) = if baseline.contains_key("accuracy") {
        ("accuracy", "the commonest class for every row", true)
    } else {
        ("rmse", "the training mean for every row", false)
    };
    let (model, base) = (*test.get(metric)?, *baseline.get(metric)?);
    let better = if higher_is_better {
        model > base
    } else {
        model < base
    };
    let hint = if better {
        ""
    } else {
        " — no better: the model learned nothing useful; try more --epochs, another --lr or --model"
    };
    Some(format!(
        "baseline ({what}): {metric} {}; this model: {}{hint}",
        num(base),
        num(model)
    ))
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
    /// The sweep (TOML): method (grid, random or tpe), trials, parallel, budget, metric, rungs,
    /// [base] options, [space].
    #[arg(long)]
    config: PathBuf,
    /// The training data (CSV, JSON Lines or Parquet).
    #[arg(long)]
    data: PathBuf,
    /// The column to predict.
    #[arg(long)]
    target: String,
    /// Override the number of random trials.
    #[arg(long)]
    trials: Option<usize>,
    /// Override how many trials train at once.
    #[arg(long)]
    parallel: Option<usize>,
    /// The experiment the sweep and its trials belong to.
    #[arg(long, default_value = "Default")]
    experiment: String,
    /// Register the best trial as the next version of this model.
    #[arg(long)]
    register: Option<String>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Server,
    /// Write the search for a workflow engine instead of running it: a pipeline in -o DIR whose
    /// trials are steps side by side and whose `leaderboard` step registers the best
    /// (--register), and that pipeline exported (as `kiln pipeline export` does).
    #[arg(long, value_enum, requires = "output")]
    export: Option<crate::cmd::engines::EngineArg>,
    /// Where --export writes (a directory).
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    #[command(flatten)]
    on: crate::cmd::engines::EngineOptions,
}

/// A line for people as each trial ends.
pub fn trial_line(end: TrialEnd) {
    match end.error {
        None => eprintln!(
            "trial {} of {}: run {} finished",
            end.trial + 1,
            end.total,
            run_id_text(end.run)
        ),
        Some(e) => eprintln!(
            "trial {} of {}: run {} failed: {e}",
            end.trial + 1,
            end.total,
            run_id_text(end.run)
        ),
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
    if let (Some(engine), Some(dir)) = (args.export, &args.output) {
        return crate::cmd::engines::export_sweep(&crate::cmd::engines::SweepExport {
            config: &config,
            file: &args.config,
            data: &args.data,
            target: &args.target,
            experiment: &args.experiment,
            register: args.register.as_deref(),
            engine,
            dir,
            on: &args.on,
        });
    }
    let table = read_with_target(&args.data, &args.target)?;
    let backend = args.server.backend(home)?;
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
        backend.as_ref(),
        &table,
        &args.target,
        &config,
        &args.experiment,
        &name,
        BTreeMap::new(),
        &trial_line,
    )?;
    let minimised = kiln_trainer::sweep::is_minimised(&config.metric);
    let figure = |s: f64| if minimised { -s } else { s };
    let importance = kiln_trainer::sweep::importance(&trials);
    let registered = match (&args.register, best) {
        (Some(name), Some(run)) => {
            Some(backend.register_version(name, run, "model", "best sweep trial", None)?)
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
            "importance": importance
                .iter()
                .map(|(option, share)| serde_json::json!({"option": option, "share": share}))
                .collect::<Vec<_>>(),
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
    if !importance.is_empty() {
        let rows = importance
            .iter()
            .map(|(option, share)| vec![option.clone(), format!("{:.0}%", share * 100.0)])
            .collect();
        println!(
            "\n{}",
            ui::table(&["option", "share of the score's variance"], rows, &[1])
        );
    }
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

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map_or(n.to_string(), num),
        other => other.to_string(),
    }
}
