//! The executor: runs a pipeline's steps as soon as what they need has succeeded, several at
//! once (bounded), each with its timeout and its retries with exponential backoff; a step whose
//! needs failed does not run, and one whose needs were skipped is skipped. A run can be
//! cancelled: running steps are stopped (their futures dropped, which kills their processes)
//! and recorded as cancelled. Steps that hold the GPU run one at a time. What a step does is a
//! [`StepRunner`]'s business, so the executor is tested on tokio's paused clock with runners
//! that only pretend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::pipeline::{Pipeline, Step};

/// What one attempt of a step ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Succeeded,
    /// Failed; another attempt may go differently (it is retried while retries are left).
    Failed(String),
    /// Failed in a way no further attempt changes (a wrong argument, a malformed file): not
    /// retried.
    Refused(String),
    /// Not run: its condition is false (the reason says which).
    Skipped(String),
    /// Not run: an earlier execution's result is reused (the reason says which).
    Cached(String),
}

/// Runs one attempt of one step. Implementations run commands, or call the trainer, the
/// serving runtime and the registry through the binary's wiring.
pub trait StepRunner: Send + Sync + 'static {
    fn run(&self, step: &Step, attempt: u32) -> impl std::future::Future<Output = Attempt> + Send;
}

/// How a step's execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Succeeded,
    Failed,
    TimedOut,
    /// Not run because a step it needs did not succeed.
    UpstreamFailed,
    Skipped,
    Cached,
    Cancelled,
}

impl StepState {
    /// Whether the steps that need this one may run.
    pub fn produced(&self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Cached)
    }
}

/// The record of one step's execution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub id: String,
    pub state: StepState,
    /// Attempts made (0 when it never ran).
    pub attempts: u32,
    /// The last failure's message.
    pub error: Option<String>,
    /// Why a step was skipped, cached or not run.
    pub reason: Option<String>,
    /// Since the run started.
    pub started: Option<Duration>,
    pub finished: Option<Duration>,
}

/// Limits of an execution.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Steps running at once.
    pub parallel: usize,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
    /// The GPU, one permit: steps that hold it ([`Step::gpu`]) run one at a time. The runs of
    /// one process share it by cloning one `Limits`.
    pub gpu: Arc<Semaphore>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            parallel: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            gpu: Arc::new(Semaphore::new(1)),
        }
    }
}

/// The wait before retry number `retry` (1-based).
pub fn backoff(limits: &Limits, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    limits
        .backoff
        .saturating_mul(factor)
        .min(limits.max_backoff)
}

/// Something the executor reports while it runs.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    Started { id: &'a str },
    Ended(&'a StepRecord),
}

/// Runs every step of `pipeline` whose needs succeed, and records each. The pipeline must be
/// free of errors (see [`crate::parse`]).
pub async fn execute<R: StepRunner>(
    pipeline: &Pipeline,
    runner: Arc<R>,
    limits: Limits,
) -> Vec<StepRecord> {
    let (_keep, cancel) = watch::channel(false);
    execute_with(pipeline, runner, limits, cancel, &|_| {}).await
}

fn not_run(id: &str, state: StepState, reason: String) -> StepRecord {
    StepRecord {
        id: id.to_string(),
        state,
        attempts: 0,
        error: None,
        reason: Some(reason),
        started: None,
        finished: None,
    }
}

/// [`execute`], reporting each step's start and end to `observe`, until `cancel` turns true:
/// then running steps are stopped and every step not ended is recorded as cancelled.
pub async fn execute_with<R: StepRunner>(
    pipeline: &Pipeline,
    runner: Arc<R>,
    limits: Limits,
    cancel: watch::Receiver<bool>,
    observe: &(dyn Fn(Event<'_>) + Sync),
) -> Vec<StepRecord> {
    execute_after(pipeline, runner, limits, cancel, observe, &BTreeMap::new()).await
}

/// [`execute_with`] for steps that may need steps which ended earlier, outside `pipeline`
/// (`ended`: how each of those ended); a need neither in `pipeline` nor in `ended` is ignored.
pub async fn execute_after<R: StepRunner>(
    pipeline: &Pipeline,
    runner: Arc<R>,
    limits: Limits,
    mut cancel: watch::Receiver<bool>,
    observe: &(dyn Fn(Event<'_>) + Sync),
    ended: &BTreeMap<String, StepState>,
) -> Vec<StepRecord> {
    let start = Instant::now();
    let steps = &pipeline.steps;
    let permits = Arc::new(Semaphore::new(limits.parallel.max(1)));
    // Each step's position, the positions of the steps that need it, and how many of its own
    // needs have not ended: a step is settled once, when the last of its needs ends.
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let mut waiting: Vec<usize> = vec![0; steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for need in &s.needs {
            if let Some(&n) = index.get(need.as_str()) {
                dependents[n].push(i);
                waiting[i] += 1;
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut records: Vec<Option<StepRecord>> = vec![None; steps.len()];
    let mut spawned = vec![false; steps.len()];
    let mut running = JoinSet::new();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut cancelled = *cancel.borrow();
    let mut watching = true;
    let mut end = |i: usize,
                   record: StepRecord,
                   records: &mut Vec<Option<StepRecord>>,
                   ready: &mut std::collections::VecDeque<usize>| {
        observe(Event::Ended(&record));
        records[i] = Some(record);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push_back(d);
            }
        }
    };
    while !cancelled {
        // Settle every step whose needs have all ended: run it, or record why it does not run.
        while let Some(i) = ready.pop_front() {
            let step = &steps[i];
            let unproduced = step
                .needs
                .iter()
                .filter_map(|n| match index.get(n.as_str()) {
                    Some(&j) => records[j].as_ref().map(|r| (n, &r.state)),
                    None => ended.get(n).map(|s| (n, s)),
                })
                .find(|(_, state)| !state.produced());
            if let Some((need, state)) = unproduced {
                let record = if *state == StepState::Skipped {
                    not_run(
                        &step.id,
                        StepState::Skipped,
                        format!("`{need}` was skipped"),
                    )
                } else {
                    not_run(
                        &step.id,
                        StepState::UpstreamFailed,
                        format!("`{need}` did not succeed"),
                    )
                };
                end(i, record, &mut records, &mut ready);
                continue;
            }
            spawned[i] = true;
            let (step, runner, permits) = (step.clone(), runner.clone(), permits.clone());
            let gpu = step.gpu.then(|| limits.gpu.clone());
            let (backoff, started_tx) = (limits.clone(), started_tx.clone());
            running.spawn(async move {
                // A step waiting for the GPU takes no slot from steps that could run meanwhile.
                let _gpu = match gpu {
                    Some(gpu) => Some(gpu.acquire_owned().await),
                    None => None,
                };
                let _permit = permits.acquire_owned().await;
                let _ = started_tx.send(i);
                (i, run_step(&step, runner.as_ref(), &backoff, start).await)
            });
        }
        tokio::select! {
            joined = running.join_next() => match joined {
                Some(Ok((i, record))) => {
                    while let Ok(s) = started_rx.try_recv() {
                        observe(Event::Started { id: &steps[s].id });
                    }
                    end(i, record, &mut records, &mut ready);
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a step task failed");
                }
                None => break,
            },
            Some(s) = started_rx.recv() => observe(Event::Started { id: &steps[s].id }),
            changed = cancel.changed(), if watching => match changed {
                Ok(()) => cancelled = *cancel.borrow(),
                // Nobody can cancel any more: go on without watching.
                Err(_) => watching = false,
            }
        }
    }
    if cancelled {
        running.abort_all();
        while running.join_next().await.is_some() {}
        let now = start.elapsed();
        for (i, step) in steps.iter().enumerate() {
            if records[i].is_none() {
                let mut record = not_run(
                    &step.id,
                    StepState::Cancelled,
                    "the run was cancelled".into(),
                );
                if spawned[i] {
                    record.finished = Some(now);
                }
                observe(Event::Ended(&record));
                records[i] = Some(record);
            }
        }
    }
    records.into_iter().flatten().collect()
}

async fn run_step<R: StepRunner>(
    step: &Step,
    runner: &R,
    limits: &Limits,
    start: Instant,
) -> StepRecord {
    let started = start.elapsed();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match step.timeout {
            Some(t) => match tokio::time::timeout(t, runner.run(step, attempts)).await {
                Ok(a) => Ok(a),
                Err(_) => Err(format!("timed out after {}", humantime::format_duration(t))),
            },
            None => Ok(runner.run(step, attempts).await),
        };
        let refused = matches!(outcome, Ok(Attempt::Refused(_)));
        let (state, error, reason) = match outcome {
            Ok(Attempt::Succeeded) => (StepState::Succeeded, None, None),
            Ok(Attempt::Failed(m)) => (StepState::Failed, Some(m), None),
            Ok(Attempt::Refused(m)) => (
                StepState::Failed,
                Some(m),
                Some("not retried: another attempt would fail the same way".to_string()),
            ),
            Ok(Attempt::Skipped(r)) => (StepState::Skipped, None, Some(r)),
            Ok(Attempt::Cached(r)) => (StepState::Cached, None, Some(r)),
            Err(m) => (StepState::TimedOut, Some(m), None),
        };
        let done = refused || !matches!(state, StepState::Failed | StepState::TimedOut);
        if matches!(state, StepState::Skipped | StepState::Cached) {
            // Nothing ran.
            attempts = 0;
        }
        if done || attempts > step.retries {
            return StepRecord {
                id: step.id.clone(),
                state,
                attempts,
                error,
                reason,
                started: Some(started),
                finished: Some(start.elapsed()),
            };
        }
        tokio::time::sleep(backoff(limits, attempts)).await;
    }
}
