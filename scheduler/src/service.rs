//! Pipeline runs inside one process: started from the command line, by a schedule or over the
//! API; each cancellable by id, all cancelled when the process shuts down, and the runs a
//! stopped process left running recorded as cancelled when the next one starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};
use kiln_core::registry::{PipelineRun, PipelineRunState, Registry, RegistryError, StepExecState};
use kiln_core::wire::pipelines::{ForceSteps, StartRun};
use tokio::sync::watch;

use crate::executor::Limits;
use crate::run::{Components, Force, RunError, RunRequest, run_pipeline};
use crate::schedule::Launcher;

/// The runs of one process, with the components they use.
pub struct Service<C> {
    pub registry: Arc<Registry>,
    components: Arc<C>,
    /// Turns true when the process shuts down: every run is cancelled.
    stop: watch::Receiver<bool>,
    active: Mutex<BTreeMap<u64, Arc<watch::Sender<bool>>>>,
    path_prefix: Vec<PathBuf>,
    /// Every run's limits: one GPU permit for the whole process.
    limits: Limits,
    /// What posts run summaries to pipelines' `notify` URLs.
    notifier: Option<Arc<dyn crate::run::Notify>>,
}

impl<C: Components> Service<C> {
    /// A service whose runs stop when `stop` turns true; `path_prefix` goes before `PATH` for
    /// commands (where the `kiln` binary is); `notifier` posts run summaries to pipelines'
    /// `notify` URLs.
    pub fn new(
        registry: Arc<Registry>,
        components: Arc<C>,
        stop: watch::Receiver<bool>,
        path_prefix: Vec<PathBuf>,
        notifier: Option<Arc<dyn crate::run::Notify>>,
    ) -> Arc<Service<C>> {
        Arc::new(Service {
            registry,
            components,
            stop,
            active: Mutex::new(BTreeMap::new()),
            path_prefix,
            limits: Limits::default(),
            notifier,
        })
    }

    /// Records runs that a stopped process left as running: their steps did not finish.
    pub fn recover(&self) -> Result<Vec<u64>, RegistryError> {
        let mut ids = Vec::new();
        for mut run in self.registry.running_pipeline_runs()? {
            for s in &mut run.steps {
                if matches!(s.state, StepExecState::Running | StepExecState::Pending) {
                    s.state = StepExecState::Cancelled;
                    s.reason = Some("kiln stopped while the run went on".into());
                }
            }
            run.state = PipelineRunState::Cancelled;
            run.ended_ms = run.ended_ms.or(Some(run.started_ms));
            self.registry.save_pipeline_run(&run)?;
            ids.push(run.id);
        }
        Ok(ids)
    }

    /// A request for `file` with the process's defaults.
    pub fn request(
        &self,
        file: &Path,
        params: BTreeMap<String, String>,
        trigger: &str,
        date: DateTime<Utc>,
        force: Force,
    ) -> Result<RunRequest, RunError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| RunError::Io(format!("reading {}: {e}", file.display())))?;
        Ok(RunRequest {
            file: file.to_path_buf(),
            text,
            params,
            trigger: trigger.to_string(),
            logical_date: date.format("%Y-%m-%d").to_string(),
            force,
            limits: self.limits.clone(),
            path_prefix: self.path_prefix.clone(),
            notifier: self.notifier.clone(),
        })
    }

    /// A request for `file` as a client asks for it (the API's body, `kiln pipeline run`):
    /// parameters as text, the steps to force, and the logical date as `YYYY-MM-DD` or an
    /// RFC 3339 time (now when left out).
    pub fn request_from(
        &self,
        file: &Path,
        start: &StartRun,
        trigger: &str,
    ) -> Result<RunRequest, RunError> {
        let date = match &start.date {
            None => Utc::now(),
            Some(d) => match d.parse::<NaiveDate>() {
                Ok(day) => day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
                Err(_) => DateTime::parse_from_rfc3339(d)
                    .map_err(|e| {
                        RunError::Params(format!(
                            "`date` {d:?}: {e}; give YYYY-MM-DD or an RFC 3339 time"
                        ))
                    })?
                    .with_timezone(&Utc),
            },
        };
        let force = match &start.force {
            None => Force::Nothing,
            Some(ForceSteps::All(_)) => Force::All,
            Some(ForceSteps::Steps(steps)) => Force::Steps(steps.iter().cloned().collect()),
        };
        self.request(file, start.param_texts(), trigger, date, force)
    }

    /// Runs a pipeline to its end; `on_change` sees the record whenever a step moves.
    pub async fn run(
        &self,
        request: RunRequest,
        on_change: &(dyn Fn(&PipelineRun) + Sync),
    ) -> Result<PipelineRun, RunError> {
        let (tx, cancel) = watch::channel(*self.stop.borrow());
        let tx = Arc::new(tx);
        let mut stop = self.stop.clone();
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while stop.changed().await.is_ok() {
                    if *stop.borrow() {
                        let _ = tx.send(true);
                        break;
                    }
                }
            })
        };
        let registered = std::sync::atomic::AtomicU64::new(0);
        let observe = |run: &PipelineRun| {
            if registered.swap(run.id, std::sync::atomic::Ordering::Relaxed) != run.id {
                self.lock().insert(run.id, tx.clone());
            }
            on_change(run);
        };
        let result = run_pipeline(
            self.registry.clone(),
            self.components.clone(),
            request,
            cancel,
            &observe,
        )
        .await;
        forward.abort();
        let id = registered.load(std::sync::atomic::Ordering::Relaxed);
        self.lock().remove(&id);
        result
    }

    /// Cancels a run of this process; false when it is not running here.
    pub fn cancel(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(tx) => tx.send(true).is_ok(),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<watch::Sender<bool>>>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A schedule's runs of one pipeline file.
pub struct Scheduled<C> {
    pub service: Arc<Service<C>>,
    pub file: PathBuf,
}

impl<C: Components> Launcher for Scheduled<C> {
    async fn launch(&self, fire: DateTime<Utc>) {
        let request = match self.service.request(
            &self.file,
            BTreeMap::new(),
            "schedule",
            fire,
            Force::Nothing,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(file = %self.file.display(), "scheduled run: {e}");
                return;
            }
        };
        match self.service.run(request, &|_| {}).await {
            Ok(run) => tracing::info!(
                pipeline = %run.pipeline, run = run.id, state = run.state.as_str(),
                "scheduled run ended"
            ),
            Err(e) => tracing::error!(file = %self.file.display(), "scheduled run: {e}"),
        }
    }
}
