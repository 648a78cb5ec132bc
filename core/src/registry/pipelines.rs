//! Pipeline runs, their step executions, the cache index of step results, and schedule state.
//! A run's header and each of its steps are separate records (key: run id, then the step's
//! position), so a step that moves rewrites only itself, whatever the size of the run; the cache
//! maps a step's cache key (its definition and the digests of its inputs) to the
//! run whose execution of it succeeded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::records::{Millis, decode, encode, now_ms};
use super::{Registry, RegistryError};

/// Where a pipeline run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineRunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl PipelineRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineRunState::Running => "running",
            PipelineRunState::Succeeded => "succeeded",
            PipelineRunState::Failed => "failed",
            PipelineRunState::Cancelled => "cancelled",
        }
    }
}

/// Where one step of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepExecState {
    Pending,
    Running,
    Succeeded,
    /// Not run: an earlier execution with the same cache key is reused.
    Cached,
    /// Not run: its `if` was false, or a step it needs was skipped.
    Skipped,
    Failed,
    TimedOut,
    /// Not run: a step it needs failed.
    UpstreamFailed,
    Cancelled,
}

impl StepExecState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepExecState::Pending => "pending",
            StepExecState::Running => "running",
            StepExecState::Succeeded => "succeeded",
            StepExecState::Cached => "cached",
            StepExecState::Skipped => "skipped",
            StepExecState::Failed => "failed",
            StepExecState::TimedOut => "timed_out",
            StepExecState::UpstreamFailed => "upstream_failed",
            StepExecState::Cancelled => "cancelled",
        }
    }

    /// Whether the step's outputs exist for the steps that need it.
    pub fn produced(self) -> bool {
        matches!(self, StepExecState::Succeeded | StepExecState::Cached)
    }
}

/// One step's execution within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepExecution {
    pub id: String,
    /// The steps this one needs (the DAG's edges).
    #[serde(default)]
    pub needs: Vec<String>,
    pub state: StepExecState,
    #[serde(default)]
    pub attempts: u32,
    pub started_ms: Option<Millis>,
    pub ended_ms: Option<Millis>,
    /// Digest of the step's definition and its inputs' digests.
    #[serde(default)]
    pub cache_key: Option<String>,
    /// The run whose execution a cached step reuses.
    #[serde(default)]
    pub cached_from: Option<u64>,
    /// Why the step was cached, skipped or not run, in words.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The directory holding the step's output files.
    #[serde(default)]
    pub outputs_dir: Option<String>,
    /// Named values the step reported (`blessed`, metrics, a registered version…).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Digest of the step's outputs (files and values): what its dependents' cache keys hold.
    #[serde(default)]
    pub output_digest: Option<String>,
    /// Log files of the attempts, oldest first.
    #[serde(default)]
    pub logs: Vec<String>,
}

impl StepExecution {
    pub fn pending(id: &str, needs: &[String]) -> StepExecution {
        StepExecution {
            id: id.to_string(),
            needs: needs.to_vec(),
            state: StepExecState::Pending,
            attempts: 0,
            started_ms: None,
            ended_ms: None,
            cache_key: None,
            cached_from: None,
            reason: None,
            error: None,
            outputs_dir: None,
            values: BTreeMap::new(),
            output_digest: None,
            logs: Vec::new(),
        }
    }
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PipelineRun {
    pub id: u64,
    pub pipeline: String,
    /// The pipeline file as given, and the digest of its text.
    pub file: String,
    pub file_digest: String,
    pub params: BTreeMap<String, String>,
    /// `manual`, `schedule` or `backfill`.
    pub trigger: String,
    /// The date the run is for (`${date}`), `YYYY-MM-DD`.
    pub logical_date: String,
    pub state: PipelineRunState,
    pub started_ms: Millis,
    pub ended_ms: Option<Millis>,
    /// The run's working directory (step outputs and logs).
    pub dir: String,
    pub steps: Vec<StepExecution>,
}

fn step_key(run: u64, position: usize) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(&(position as u32).to_be_bytes());
    key
}

/// Where a cache key's result lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CacheEntry {
    pub run: u64,
    pub step: String,
}

/// What kiln remembers of a pipeline's schedule between restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleState {
    pub pipeline: String,
    pub file: String,
    pub cron: String,
    pub paused: bool,
    /// The last fire that was handled (run, skipped or caught up), Unix ms.
    pub last_fire_ms: Option<Millis>,
}

/// A part of a step's log: its text (invalid UTF-8 replaced), where it starts, and the whole
/// log's size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPart {
    pub text: String,
    pub start: u64,
    pub size: u64,
}

impl Registry {
    /// Starts recording a pipeline run; its id is the next pipeline run number.
    pub fn create_pipeline_run(&self, mut run: PipelineRun) -> Result<PipelineRun, RegistryError> {
        run.id = self.next_id("next_pipeline_run_id")?;
        run.started_ms = now_ms();
        self.save_pipeline_run(&run)?;
        self.flush()?;
        Ok(run)
    }

    /// Writes a run's header and all its steps; durable when the run has ended.
    pub fn save_pipeline_run(&self, run: &PipelineRun) -> Result<(), RegistryError> {
        let header = PipelineRun {
            steps: Vec::new(),
            ..run.clone()
        };
        self.pipeline_runs
            .insert(run.id.to_be_bytes(), encode(&header))?;
        for (i, step) in run.steps.iter().enumerate() {
            self.save_pipeline_step(run.id, i, step)?;
        }
        if run.state != PipelineRunState::Running {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes one step of a run (at its position in the pipeline).
    pub fn save_pipeline_step(
        &self,
        run: u64,
        position: usize,
        step: &StepExecution,
    ) -> Result<(), RegistryError> {
        self.pipeline_steps
            .insert(step_key(run, position), encode(step))?;
        Ok(())
    }

    fn steps_of(&self, run: u64) -> Result<Vec<StepExecution>, RegistryError> {
        self.pipeline_steps
            .scan_prefix(run.to_be_bytes())
            .values()
            .map(|v| decode("pipeline step", &v?))
            .collect()
    }

    fn whole_run(&self, bytes: &[u8]) -> Result<PipelineRun, RegistryError> {
        let mut run: PipelineRun = decode("pipeline run", bytes)?;
        run.steps = self.steps_of(run.id)?;
        Ok(run)
    }

    pub fn pipeline_run(&self, id: u64) -> Result<PipelineRun, RegistryError> {
        match self.pipeline_runs.get(id.to_be_bytes())? {
            Some(bytes) => self.whole_run(&bytes),
            None => Err(RegistryError::NotFound {
                what: "pipeline run",
                name: id.to_string(),
                hint: "; `kiln pipeline runs` lists them".to_string(),
            }),
        }
    }

    /// Pipeline runs, newest first, of one pipeline or of all.
    pub fn pipeline_runs(
        &self,
        pipeline: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PipelineRun>, RegistryError> {
        let mut out = Vec::new();
        for item in self.pipeline_runs.iter().rev() {
            let (_, bytes) = item?;
            let header: PipelineRun = decode("pipeline run", &bytes)?;
            if pipeline.is_none_or(|p| p == header.pipeline) {
                out.push(self.whole_run(&bytes)?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A part of the log of one attempt (1-based) of a run's step: at most `max` bytes, from
    /// byte `from`, or the last `max` bytes when `from` is `None`. Never reads more than that.
    pub fn step_log(
        &self,
        run: u64,
        step: &str,
        attempt: usize,
        from: Option<u64>,
        max: u64,
    ) -> Result<LogPart, RegistryError> {
        let record = self.pipeline_run(run)?;
        let exec =
            record
                .steps
                .iter()
                .find(|s| s.id == step)
                .ok_or_else(|| RegistryError::NotFound {
                    what: "step",
                    name: step.to_string(),
                    hint: format!(
                        " in run {run}{}",
                        crate::suggest::hint(step, record.steps.iter().map(|s| s.id.as_str()))
                    ),
                })?;
        let path = attempt
            .checked_sub(1)
            .and_then(|i| exec.logs.get(i))
            .ok_or_else(|| RegistryError::NotFound {
                what: "attempt",
                name: attempt.to_string(),
                hint: format!(
                    " of step `{step}` in run {run}; it has {} attempt logs",
                    exec.logs.len()
                ),
            })?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => RegistryError::NotFound {
                what: "log",
                name: path.clone(),
                hint: "; it was deleted (`kiln pipeline prune`)".into(),
            },
            _ => RegistryError::Io(format!("{path}: {e}")),
        };
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let start = from.unwrap_or_else(|| size.saturating_sub(max)).min(size);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(max).read_to_end(&mut bytes).map_err(io)?;
        Ok(LogPart {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            start,
            size,
        })
    }

    /// Runs recorded as running: after a restart, runs that a stopped process left behind.
    pub fn running_pipeline_runs(&self) -> Result<Vec<PipelineRun>, RegistryError> {
        let mut out = Vec::new();
        for item in self.pipeline_runs.iter() {
            let (_, bytes) = item?;
            let header: PipelineRun = decode("pipeline run", &bytes)?;
            if header.state == PipelineRunState::Running {
                out.push(self.whole_run(&bytes)?);
            }
        }
        Ok(out)
    }

    /// The successful execution a cache key names, if any.
    pub fn cached_step(&self, key: &str) -> Result<Option<CacheEntry>, RegistryError> {
        match self.step_cache.get(key.as_bytes())? {
            Some(bytes) => Ok(Some(decode("cache entry", &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn remember_step(&self, key: &str, entry: &CacheEntry) -> Result<(), RegistryError> {
        self.step_cache.insert(key.as_bytes(), encode(entry))?;
        Ok(())
    }

    pub fn forget_step(&self, key: &str) -> Result<(), RegistryError> {
        self.step_cache.remove(key.as_bytes())?;
        Ok(())
    }

    pub fn schedule_state(&self, pipeline: &str) -> Result<Option<ScheduleState>, RegistryError> {
        match self.schedules.get(pipeline.as_bytes())? {
            Some(bytes) => Ok(Some(decode("schedule", &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn schedule_states(&self) -> Result<Vec<ScheduleState>, RegistryError> {
        self.schedules
            .iter()
            .values()
            .map(|v| decode("schedule", &v?))
            .collect()
    }

    /// Stores a schedule's state durably (a fire handled must not fire again after a crash).
    pub fn save_schedule_state(&self, state: &ScheduleState) -> Result<(), RegistryError> {
        self.schedules
            .insert(state.pipeline.as_bytes(), encode(state))?;
        self.flush()
    }
}
