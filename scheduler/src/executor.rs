//! The executor: runs a pipeline's steps as soon as what they need has succeeded, several at
//! once (bounded), each with its timeout and its retries with exponential backoff; a step whose
//! needs failed does not run. What a step does is a [`StepRunner`]'s business, so the executor
//! is tested on tokio's paused clock with runners that only pretend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::pipeline::{Pipeline, Step};

/// What one attempt of a step ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Succeeded,
    Failed(String),
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
    /// Since the run started.
    pub started: Option<Duration>,
    pub finished: Option<Duration>,
}

/// Limits of an execution.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Steps running at once.
    pub parallel: usize,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            parallel: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
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

/// Runs every step of `pipeline` whose needs succeed, and records each. The pipeline must be
/// free of errors (see [`crate::parse`]).
pub async fn execute<R: StepRunner>(
    pipeline: &Pipeline,
    runner: Arc<R>,
    limits: Limits,
) -> Vec<StepRecord> {
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(limits.parallel.max(1)));
    let mut records: BTreeMap<String, StepRecord> = BTreeMap::new();
    let mut running = JoinSet::new();
    let mut started: Vec<String> = Vec::new();
    loop {
        // Start every step whose needs have all ended; mark those whose needs failed.
        let mut progress = true;
        while progress {
            progress = false;
            for step in &pipeline.steps {
                if started.contains(&step.id) {
                    continue;
                }
                let needs: Vec<Option<&StepRecord>> =
                    step.needs.iter().map(|n| records.get(n)).collect();
                if needs.iter().any(Option::is_none) {
                    continue;
                }
                started.push(step.id.clone());
                progress = true;
                if needs
                    .iter()
                    .flatten()
                    .any(|r| r.state != StepState::Succeeded)
                {
                    records.insert(
                        step.id.clone(),
                        StepRecord {
                            id: step.id.clone(),
                            state: StepState::UpstreamFailed,
                            attempts: 0,
                            error: None,
                            started: None,
                            finished: None,
                        },
                    );
                    continue;
                }
                let (step, runner, permits) = (step.clone(), runner.clone(), permits.clone());
                running.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    run_step(&step, runner.as_ref(), limits, start).await
                });
            }
        }
        match running.join_next().await {
            Some(Ok(record)) => {
                records.insert(record.id.clone(), record);
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "a step task failed");
            }
            None => break,
        }
    }
    pipeline
        .steps
        .iter()
        .filter_map(|s| records.remove(&s.id))
        .collect()
}

async fn run_step<R: StepRunner>(
    step: &Step,
    runner: &R,
    limits: Limits,
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
        let (state, error) = match outcome {
            Ok(Attempt::Succeeded) => (StepState::Succeeded, None),
            Ok(Attempt::Failed(m)) => (StepState::Failed, Some(m)),
            Err(m) => (StepState::TimedOut, Some(m)),
        };
        if state == StepState::Succeeded || attempts > step.retries {
            return StepRecord {
                id: step.id.clone(),
                state,
                attempts,
                error,
                started: Some(started),
                finished: Some(start.elapsed()),
            };
        }
        tokio::time::sleep(backoff(&limits, attempts)).await;
    }
}
