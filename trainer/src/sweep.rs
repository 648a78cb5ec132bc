//! Hyperparameter sweeps: grid, random or model-based (TPE) search over any training option,
//! trials in parallel within an optional time budget, optional successive halving, each trial
//! reported to a [`TrialSink`] (the binary makes each a child run of one parent run), and each
//! option's importance to the score.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kiln_core::data::Table;
use kiln_core::progress::NoProgress;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{RunLogger, TrainConfig, TrainError, TrainOutcome, train_from};

pub use crate::tpe::Domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Grid,
    Random,
    /// Tree-structured Parzen estimators: random trials first, then each trial where the best
    /// finished trials' values are densest against the rest's.
    Tpe,
    /// Hyperband: random trials in brackets of successive halving, from many trials started on a
    /// small budget (`rungs` rungs) to a few trained on the full budget at once.
    Hyperband,
}

/// A sweep: the base training options, the space to search, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    #[serde(default = "random")]
    pub method: Method,
    /// Trials of a random or TPE search (a grid has as many as its points, Hyperband as many as
    /// its brackets need).
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// Trials trained at the same time.
    #[serde(default = "one")]
    pub parallel: usize,
    #[serde(default)]
    pub seed: u64,
    /// The validation figure to optimise: `loss` (minimised) or a metric such as `accuracy`,
    /// `roc_auc`, `f1`, `r2` (maximised) or `rmse`, `mae`, `log_loss` (minimised).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Successive halving: train every trial for `epochs / eta^(rungs-1)` epochs (boosting rounds
    /// for gbdt), keep the best `1/eta`, and so on for `rungs` rungs; 1 rung means no halving. A
    /// survivor goes on from its model at the end of its last rung. For Hyperband, the rungs of
    /// its most aggressive bracket (and the number of brackets).
    #[serde(default = "one")]
    pub rungs: usize,
    #[serde(default = "default_eta")]
    pub eta: usize,
    /// No trial starts after this much time (`"30m"`, `"2h"`); those running finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    #[serde(default)]
    pub base: TrainConfig,
    pub space: BTreeMap<String, Domain>,
}

/// Bounds that keep a sweep's size and budgets finite.
const MAX_RUNGS: usize = 8;
const MAX_ETA: usize = 10;
const MAX_TRIALS: usize = 10_000;

fn random() -> Method {
    Method::Random
}
fn default_trials() -> usize {
    10
}
fn one() -> usize {
    1
}
fn default_eta() -> usize {
    3
}
fn default_metric() -> String {
    "loss".to_string()
}

/// Receives trials as they start and end.
pub trait TrialSink: Sync {
    /// A trial starts with these options; returns the logger for its epochs.
    fn start(&self, trial: usize, params: &BTreeMap<String, Value>) -> Box<dyn RunLogger + '_>;
    /// A trial ended, with its score (higher is better) or its error.
    fn finish(&self, trial: usize, result: &Result<(TrainOutcome, f64), TrainError>);
}

/// One finished trial.
#[derive(Debug, Clone)]
pub struct Trial {
    pub index: usize,
    pub params: BTreeMap<String, Value>,
    /// Higher is better (minimised figures are negated).
    pub score: Option<f64>,
    pub error: Option<String>,
    pub epochs: usize,
}

/// Whether a metric is minimised (its scores are the negated figures).
pub fn is_minimised(metric: &str) -> bool {
    matches!(metric, "loss" | "log_loss" | "rmse" | "mae")
}

/// The best epoch's validation figure of `metric` (`loss` or a metric's name), as written
/// (lowest for a minimised one).
pub fn best_figure(outcome: &TrainOutcome, metric: &str) -> Option<f64> {
    score(outcome, metric).map(|s| if is_minimised(metric) { -s } else { s })
}

/// The trial's score: the best epoch's validation figure, higher is better.
fn score(outcome: &TrainOutcome, metric: &str) -> Option<f64> {
    let values = outcome.history.iter().filter_map(|e| {
        if metric == "loss" {
            Some(e.validation_loss)
        } else {
            e.validation_metrics.get(metric).copied()
        }
    });
    if is_minimised(metric) {
        values
            .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))))
            .map(|v| -v)
    } else {
        values.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))))
    }
}

impl SweepConfig {
    /// The options of every trial, in order.
    pub fn trial_params(&self) -> Result<Vec<BTreeMap<String, Value>>, TrainError> {
        if self.rungs > MAX_RUNGS || self.eta > MAX_ETA {
            return Err(TrainError::Config(format!(
                "rungs = {} and eta = {}: a sweep takes at most {MAX_RUNGS} rungs and eta {MAX_ETA}",
                self.rungs, self.eta
            )));
        }
        let count = match self.method {
            Method::Hyperband => hyperband_brackets(self.rungs.max(1), self.eta.max(2))
                .iter()
                .sum(),
            Method::Grid => self.space.values().fold(1usize, |n, d| match d {
                Domain::Choice(v) => n.saturating_mul(v.len()),
                _ => n,
            }),
            Method::Random | Method::Tpe => self.trials,
        };
        if count > MAX_TRIALS {
            return Err(TrainError::Config(format!(
                "the sweep has {count} trials; at most {MAX_TRIALS}"
            )));
        }
        for (name, domain) in &self.space {
            let bad = match domain {
                Domain::Choice(v) => v.is_empty(),
                Domain::Uniform([lo, hi]) => lo > hi || lo.is_nan() || hi.is_nan(),
                Domain::LogUniform([lo, hi]) => !(*lo > 0.0 && lo <= hi),
                Domain::IntUniform([lo, hi]) => lo > hi,
            };
            if bad {
                return Err(TrainError::Config(format!(
                    "sweep space `{name}`: an empty or inverted range"
                )));
            }
        }
        match self.method {
            Method::Grid => {
                let mut points = vec![BTreeMap::new()];
                for (name, domain) in &self.space {
                    let Domain::Choice(values) = domain else {
                        return Err(TrainError::Config(format!(
                            "grid search takes `choice` lists; `{name}` is a range (use method = \"random\")"
                        )));
                    };
                    points = points
                        .into_iter()
                        .flat_map(|p| {
                            values.iter().map(move |v| {
                                let mut q = p.clone();
                                q.insert(name.clone(), v.clone());
                                q
                            })
                        })
                        .collect();
                }
                Ok(points)
            }
            // A model-based search draws its first trials at random, and checks its space by them.
            Method::Random | Method::Tpe | Method::Hyperband => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
                let trials = if self.method == Method::Hyperband {
                    hyperband_brackets(self.rungs.max(1), self.eta.max(2))
                        .iter()
                        .sum()
                } else {
                    self.trials
                };
                Ok((0..trials)
                    .map(|_| {
                        self.space
                            .iter()
                            .map(|(name, d)| {
                                let v = crate::tpe::random_value(d, &mut rng);
                                (name.clone(), v)
                            })
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// The training options of one trial: the base with the trial's values set, and its budget
    /// (epochs, or boosting rounds for trees) when a rung of successive halving sets it.
    pub fn trial_config(
        &self,
        params: &BTreeMap<String, Value>,
        epochs: Option<usize>,
    ) -> Result<TrainConfig, TrainError> {
        let mut base =
            serde_json::to_value(&self.base).map_err(|e| TrainError::Config(e.to_string()))?;
        if let Value::Object(m) = &mut base {
            for (k, v) in params {
                m.insert(k.clone(), v.clone());
            }
            if let Some(e) = epochs {
                let budget = if m.get("model").and_then(Value::as_str) == Some("gbdt") {
                    "trees"
                } else {
                    "epochs"
                };
                m.insert(budget.into(), Value::from(e));
            }
        }
        serde_json::from_value(base).map_err(|e| TrainError::Config(format!("sweep space: {e}")))
    }
}

/// Runs a sweep; trials that fail are reported and skipped. Returns every trial, best first.
pub fn sweep(
    table: &Table,
    target: &str,
    config: &SweepConfig,
    sink: &dyn TrialSink,
) -> Result<Vec<Trial>, TrainError> {
    let all = config.trial_params()?;
    if all.is_empty() {
        return Err(TrainError::Config("the sweep has no trials".to_string()));
    }
    for p in &all {
        config.trial_config(p, None)?;
    }
    let deadline = match &config.budget {
        Some(text) => Some(
            Instant::now()
                + humantime::parse_duration(text).map_err(|e| {
                    TrainError::Config(format!("budget = {text:?}: {e} (e.g. \"30m\")"))
                })?,
        ),
        None => None,
    };
    if config.method == Method::Tpe {
        if config.rungs > 1 {
            return Err(TrainError::Config(
                "successive halving (rungs) needs method = \"random\" or \"grid\"; a TPE search \
                 learns from whole trials"
                    .to_string(),
            ));
        }
        return Ok(ranked(run_tpe(table, target, config, deadline, sink)));
    }
    let eta = config.eta.max(2);
    let mut results: BTreeMap<usize, Trial> = BTreeMap::new();
    if config.method == Method::Hyperband {
        // Brackets from the most aggressive (many trials, `rungs` rungs) to plain trials at the
        // full budget, each a successive halving over its own trials.
        let mut first = 0;
        for (s, n) in hyperband_brackets(config.rungs.max(1), eta)
            .into_iter()
            .enumerate()
        {
            let rungs = config.rungs.max(1) - s;
            let trials: Vec<usize> = (first..first + n).collect();
            first += n;
            results.extend(halve(
                table, target, config, &all, trials, rungs, deadline, sink,
            ));
        }
    } else {
        let trials = (0..all.len()).collect();
        results = halve(
            table,
            target,
            config,
            &all,
            trials,
            config.rungs.max(1),
            deadline,
            sink,
        );
    }
    Ok(ranked(results.into_values().collect()))
}

/// Successive halving over `trials` in `rungs` rungs: every trial trains for the budget (epochs,
/// or boosting rounds) divided by `eta^(rungs-1)`, the best `1/eta` go on from their checkpoint
/// to `eta` times that, and so on up to the full budget.
#[allow(clippy::too_many_arguments)]
fn halve(
    table: &Table,
    target: &str,
    config: &SweepConfig,
    all: &[BTreeMap<String, Value>],
    trials: Vec<usize>,
    rungs: usize,
    deadline: Option<Instant>,
    sink: &dyn TrialSink,
) -> BTreeMap<usize, Trial> {
    let eta = config.eta.max(2);
    let mut alive = trials;
    let mut results: BTreeMap<usize, Trial> = BTreeMap::new();
    // Each trial's model after its last rung, from which a survivor goes on.
    let mut checkpoints: BTreeMap<usize, TrainOutcome> = BTreeMap::new();
    for rung in 0..rungs {
        let factor = eta.pow((rungs - 1 - rung) as u32);
        let budget = if config.base.model == crate::ModelKind::Gbdt {
            config.base.trees
        } else {
            config.base.epochs
        };
        let epochs = (budget / factor).max(1);
        let done = run_rung(
            table,
            target,
            config,
            all,
            &alive,
            epochs,
            &checkpoints,
            deadline,
            sink,
        );
        for (t, outcome) in done {
            if let Some(o) = outcome
                && rung + 1 < rungs
            {
                checkpoints.insert(t.index, o);
            }
            results.insert(t.index, t);
        }
        if rung + 1 < rungs {
            let mut ranked: Vec<usize> = alive
                .iter()
                .copied()
                .filter(|i| results.get(i).is_some_and(|t| t.score.is_some()))
                .collect();
            ranked.sort_by(|a, b| {
                results[b]
                    .score
                    .unwrap_or(f64::MIN)
                    .total_cmp(&results[a].score.unwrap_or(f64::MIN))
            });
            ranked.truncate((ranked.len() / eta).max(1));
            checkpoints.retain(|i, _| ranked.contains(i));
            alive = ranked;
        }
    }
    results
}

/// The trials of each Hyperband bracket, most aggressive first: bracket `s` (of `rungs - s`
/// rungs) has `ceil(rungs / (rungs - s) · eta^(rungs - 1 - s))` trials.
pub fn hyperband_brackets(rungs: usize, eta: usize) -> Vec<usize> {
    (0..rungs)
        .map(|s| {
            let depth = rungs - 1 - s;
            (rungs as f64 / (depth + 1) as f64 * (eta as f64).powi(depth as i32)).ceil() as usize
        })
        .collect()
}

/// Trials best first.
fn ranked(mut trials: Vec<Trial>) -> Vec<Trial> {
    trials.sort_by(|a, b| {
        b.score
            .unwrap_or(f64::MIN)
            .total_cmp(&a.score.unwrap_or(f64::MIN))
    });
    trials
}

/// Trains one trial of the sweep (from its checkpoint, when it has one) and reports it to the
/// sink; returns the trial and its model.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    table: &Table,
    target: &str,
    config: &SweepConfig,
    index: usize,
    params: &BTreeMap<String, Value>,
    epochs: Option<usize>,
    from: Option<&TrainOutcome>,
    sink: &dyn TrialSink,
) -> (Trial, Option<TrainOutcome>) {
    let logger = sink.start(index, params);
    let result = config
        .trial_config(params, epochs)
        .and_then(|c| train_from(table, target, &c, from, &NoProgress, logger.as_ref()))
        .map(|o| {
            let s = score(&o, &config.metric).unwrap_or(f64::MIN);
            (o, s)
        });
    drop(logger);
    sink.finish(index, &result);
    match result {
        Ok((o, s)) => (
            Trial {
                index,
                params: params.clone(),
                score: Some(s),
                error: None,
                epochs: o.history.len(),
            },
            Some(o),
        ),
        Err(e) => (
            Trial {
                index,
                params: params.clone(),
                score: None,
                error: Some(e.to_string()),
                epochs: 0,
            },
            None,
        ),
    }
}

/// A TPE search: each free worker proposes its next trial from every trial finished so far.
fn run_tpe(
    table: &Table,
    target: &str,
    config: &SweepConfig,
    deadline: Option<Instant>,
    sink: &dyn TrialSink,
) -> Vec<Trial> {
    struct State {
        started: usize,
        finished: Vec<(BTreeMap<String, Value>, f64)>,
        trials: Vec<Trial>,
        rng: rand_chacha::ChaCha8Rng,
    }
    let state = Mutex::new(State {
        started: 0,
        finished: Vec::new(),
        trials: Vec::new(),
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(config.seed),
    });
    let startup = crate::tpe::startup(config.trials);
    let workers = config.parallel.clamp(1, config.trials.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let (index, params) = {
                        let Ok(mut st) = state.lock() else { return };
                        if st.started >= config.trials || past(deadline) {
                            return;
                        }
                        let st = &mut *st;
                        let params =
                            crate::tpe::propose(&config.space, &st.finished, startup, &mut st.rng);
                        st.started += 1;
                        (st.started - 1, params)
                    };
                    let (trial, _) =
                        run_trial(table, target, config, index, &params, None, None, sink);
                    if let Ok(mut st) = state.lock() {
                        if let Some(s) = trial.score {
                            st.finished.push((params, s));
                        }
                        st.trials.push(trial);
                    }
                }
            });
        }
    });
    state.into_inner().map(|s| s.trials).unwrap_or_default()
}

fn distinct(xs: &[f64]) -> usize {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    sorted.len()
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Each option's importance to the score: the share of the finished trials' score variance
/// explained by grouping them by that option's value (choices as they are, ranges in up to four
/// groups of equal size), normalised to sum to 1 over the options. Empty with fewer than four
/// finished trials.
pub fn importance(trials: &[Trial]) -> Vec<(String, f64)> {
    let finished: Vec<&Trial> = trials.iter().filter(|t| t.score.is_some()).collect();
    if finished.len() < 4 {
        return Vec::new();
    }
    let scores: Vec<f64> = finished.iter().map(|t| t.score.unwrap_or(0.0)).collect();
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let total: f64 = scores.iter().map(|s| (s - mean).powi(2)).sum();
    let names: std::collections::BTreeSet<&String> =
        finished.iter().flat_map(|t| t.params.keys()).collect();
    let mut out: Vec<(String, f64)> = names
        .into_iter()
        .map(|name| {
            let values: Vec<Option<&Value>> = finished.iter().map(|t| t.params.get(name)).collect();
            let numeric: Option<Vec<f64>> =
                values.iter().map(|v| v.and_then(Value::as_f64)).collect();
            let group: Vec<String> = match numeric {
                Some(mut xs) if distinct(&xs) > 4 => {
                    let original = xs.clone();
                    xs.sort_by(f64::total_cmp);
                    let cuts: Vec<f64> = (1..4).map(|q| xs[q * xs.len() / 4]).collect();
                    original
                        .iter()
                        .map(|x| cuts.iter().filter(|c| x >= c).count().to_string())
                        .collect()
                }
                _ => values
                    .iter()
                    .map(|v| v.map_or_else(String::new, Value::to_string))
                    .collect(),
            };
            let mut groups: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
            for (g, s) in group.iter().zip(&scores) {
                let e = groups.entry(g.as_str()).or_default();
                e.0 += s;
                e.1 += 1;
            }
            let between: f64 = groups
                .values()
                .map(|(sum, n)| *n as f64 * (sum / *n as f64 - mean).powi(2))
                .sum();
            (
                name.clone(),
                if total > 0.0 { between / total } else { 0.0 },
            )
        })
        .collect();
    let sum: f64 = out.iter().map(|(_, v)| v).sum();
    if sum > 0.0 {
        out.iter_mut().for_each(|(_, v)| *v /= sum);
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[allow(clippy::too_many_arguments)]
fn run_rung(
    table: &Table,
    target: &str,
    config: &SweepConfig,
    all: &[BTreeMap<String, Value>],
    alive: &[usize],
    epochs: usize,
    checkpoints: &BTreeMap<usize, TrainOutcome>,
    deadline: Option<Instant>,
    sink: &dyn TrialSink,
) -> Vec<(Trial, Option<TrainOutcome>)> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    let workers = config.parallel.clamp(1, alive.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if past(deadline) {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&index) = alive.get(k) else { break };
                    let ended = run_trial(
                        table,
                        target,
                        config,
                        index,
                        &all[index],
                        Some(epochs),
                        checkpoints.get(&index),
                        sink,
                    );
                    if let Ok(mut d) = done.lock() {
                        d.push(ended);
                    }
                }
            });
        }
    });
    done.into_inner().unwrap_or_default()
}
