//! Schedules: a pipeline with a cron expression fires on time while kiln runs (UTC). Fires
//! missed while kiln was down follow the pipeline's catch-up policy (skip, latest, all); a fire
//! that comes while the previous run still goes follows its overlap policy (skip, queue). The
//! last handled fire and the paused flag live in the registry, so they survive restarts.
//!
//! Time comes from a clock function, so the loop is tested on tokio's paused clock.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use kiln_core::registry::{Registry, ScheduleState};
use tokio::sync::watch;

use crate::pipeline::{Catchup, Overlap, Schedule};

/// The most missed fires one start catches up on.
pub const MAX_CATCH_UP: usize = 1000;

/// Now, for the schedule loop.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock.
pub fn wall_clock() -> Clock {
    Arc::new(Utc::now)
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Fires after `after` and no later than `now`, oldest first (at most `limit`).
pub fn fires_between(
    cron: &Cron,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut at = after;
    while out.len() < limit {
        match cron.find_next_occurrence(&at, false) {
            Ok(next) if next <= now => {
                out.push(next);
                at = next;
            }
            _ => break,
        }
    }
    out
}

/// Which missed fires run, under a catch-up policy.
pub fn catch_up(policy: Catchup, missed: &[DateTime<Utc>]) -> Vec<DateTime<Utc>> {
    match policy {
        Catchup::Skip => Vec::new(),
        Catchup::Latest => missed.last().copied().into_iter().collect(),
        Catchup::All => missed.to_vec(),
    }
}

/// Starts a pipeline run for a fire; the future ends when the run has ended.
pub trait Launcher: Send + Sync + 'static {
    fn launch(&self, fire: DateTime<Utc>) -> impl std::future::Future<Output = ()> + Send;
}

/// One pipeline's schedule.
pub struct ScheduleLoop<L> {
    pub pipeline: String,
    pub file: String,
    pub schedule: Schedule,
    pub registry: Arc<Registry>,
    pub launcher: Arc<L>,
    pub clock: Clock,
}

impl<L: Launcher> ScheduleLoop<L> {
    /// Fires runs until `stop` turns true; then waits for the run in progress (which the
    /// launcher's own cancellation ends).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let cron: Cron = self
            .schedule
            .cron
            .parse()
            .map_err(|e| format!("pipeline `{}`: cron: {e}", self.pipeline))?;
        let now = (self.clock)();
        let stored = self
            .registry
            .schedule_state(&self.pipeline)
            .map_err(|e| e.to_string())?;
        let mut state = stored.clone().unwrap_or(ScheduleState {
            pipeline: self.pipeline.clone(),
            file: self.file.clone(),
            cron: self.schedule.cron.clone(),
            paused: false,
            last_fire_ms: None,
        });
        state.file.clone_from(&self.file);
        let mut queue: VecDeque<DateTime<Utc>> = VecDeque::new();
        match state
            .last_fire_ms
            .filter(|_| state.cron == self.schedule.cron)
        {
            Some(last) => {
                let missed = fires_between(&cron, from_ms(last), now, MAX_CATCH_UP);
                let chosen = catch_up(self.schedule.catchup, &missed);
                if !missed.is_empty() {
                    tracing::info!(
                        pipeline = %self.pipeline,
                        missed = missed.len(),
                        running = chosen.len(),
                        "catching up on fires missed while kiln was down"
                    );
                }
                if let Some(latest) = missed.last() {
                    state.last_fire_ms = Some(latest.timestamp_millis());
                }
                if !state.paused {
                    queue.extend(chosen);
                }
            }
            // A new (or changed) schedule starts from now.
            None => state.last_fire_ms = Some(now.timestamp_millis()),
        }
        state.cron.clone_from(&self.schedule.cron);
        self.save(&state).await;
        let mut active: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            if active.is_none()
                && let Some(fire) = queue.pop_front()
            {
                active = Some(self.start(fire));
            }
            let last = from_ms(state.last_fire_ms.unwrap_or_default());
            let next = match cron.find_next_occurrence(&last, false) {
                Ok(n) => n,
                Err(e) => return Err(format!("pipeline `{}`: no next fire: {e}", self.pipeline)),
            };
            let wait = (next - (self.clock)()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    state.last_fire_ms = Some(next.timestamp_millis());
                    state.paused = self
                        .registry
                        .schedule_state(&self.pipeline)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.paused);
                    self.save(&state).await;
                    if state.paused {
                        tracing::info!(pipeline = %self.pipeline, %next, "schedule paused; fire skipped");
                    } else if active.is_some() {
                        match self.schedule.overlap {
                            Overlap::Skip => tracing::info!(
                                pipeline = %self.pipeline, %next,
                                "the previous run still goes; fire skipped (overlap = \"skip\")"
                            ),
                            Overlap::Queue => queue.push_back(next),
                        }
                    } else {
                        active = Some(self.start(next));
                    }
                }
                done = async {
                    match active.as_mut() {
                        Some(a) => a.await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = done {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "a scheduled run stopped");
                    }
                    active = None;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        if let Some(a) = active {
            let _ = a.await;
        }
        Ok(())
    }

    fn start(&self, fire: DateTime<Utc>) -> tokio::task::JoinHandle<()> {
        tracing::info!(pipeline = %self.pipeline, %fire, "scheduled run");
        let launcher = self.launcher.clone();
        tokio::spawn(async move { launcher.launch(fire).await })
    }

    /// Stores the state durably, on a blocking thread (it flushes to disk).
    async fn save(&self, state: &ScheduleState) {
        let (registry, state) = (self.registry.clone(), state.clone());
        let saved = tokio::task::spawn_blocking(move || registry.save_schedule_state(&state)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pipeline = %self.pipeline, "saving the schedule's state: {e}")
            }
            Err(e) => tracing::warn!(pipeline = %self.pipeline, "saving the schedule's state: {e}"),
        }
    }
}

/// The first fire of `cron` after `now`, if the expression parses and fires again.
pub fn next_fire(cron: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.parse::<Cron>()
        .ok()?
        .find_next_occurrence(&now, false)
        .ok()
}
