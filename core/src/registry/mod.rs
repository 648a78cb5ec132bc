//! The model registry and experiment tracking, embedded on sled: experiments, runs, metric series,
//! artifacts, registered models, versions, aliases and their append-only history.
//!
//! This is the only module that knows sled. Layout of `KILN_HOME`:
//!
//! ```text
//! KILN_HOME/kiln.lock          held (flock) by the one process that owns the home; holds its pid
//! KILN_HOME/registry/          the sled database
//! KILN_HOME/artifacts/objects  content-addressed files, by BLAKE3 digest
//! ```
//!
//! **Every mutation is flushed (fsync) before the call returns**, except metric logging, which is
//! flushed by [`Registry::flush`] (and by ending the run), so a training loop is not one fsync per
//! point. Multi-record changes (a version and its model's counter; an alias and its history) are
//! single sled transactions: after a crash either all of a change is there or none of it.

pub mod artifacts;
mod backup;
mod deployments;
mod files;
pub mod logged_models;
mod pipelines;
pub mod query;
mod records;
mod schemas;
pub mod uploads;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use self::artifacts::ArtifactStore;
pub use self::artifacts::{Manifest, ManifestEntry};
pub use self::backup::{BackupSummary, Problem, copy_tree, restore};
pub use self::deployments::{MAX_BATCH_DELAY_US, MAX_BATCH_ROWS};
pub use self::files::FileEntry;
pub use self::pipelines::{
    CacheEntry, LogPart, PipelineRun, PipelineRunState, ScheduleState, StepExecState, StepExecution,
};
pub use self::records::floats;
pub use self::records::{
    AliasEvent, ArtifactKind, ArtifactRef, Batching, Deployment, Experiment, Lineage, MetricPoint,
    Millis, Model, ModelVersion, RECORD_FORMAT_VERSION, Route, Run, RunStatus,
};
use self::records::{decode, decode_point, encode, encode_point, now_ms};
pub use self::schemas::{PinnedBy, PinnedSchema, SchemaPin};

/// The layout version of the store (trees and key encodings). Newer stores are refused; older
/// ones are migrated on open.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// The longest name (experiment, run, model, alias, metric, parameter, tag) accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// What went wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "KILN_HOME {home} is in use by {holder}; one process owns a KILN_HOME: stop it, use another \
         KILN_HOME, or, for a registry, training or pipeline command while `kiln up` or `kiln serve` \
         holds it, add --server URL (or set KILN_SERVER) to go through its HTTP API"
    )]
    Locked { home: String, holder: String },
    #[error(
        "the registry was written by a newer kiln (format {found}; this kiln reads up to {supported}); upgrade kiln"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error("no {what} `{name}`{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: String,
    },
    #[error("{what} `{name}` already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "alias `{alias}` of model `{model}` points to {}, not {} as expected; someone else moved it (check `kiln models history {model}`)",
        show_version(*.found),
        show_version(*.expected)
    )]
    Conflict {
        model: String,
        alias: String,
        expected: Option<u32>,
        found: Option<u32>,
    },
    #[error(
        "version {version} of model `{model}` is what alias {} points to; move the alias first or delete with --force",
        .aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
    )]
    Aliased {
        model: String,
        version: u32,
        aliases: Vec<String>,
    },
    #[error("registry data is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    #[error("registry storage: {0}")]
    Storage(String),
    /// A running server's answer to a call that failed: its HTTP status (`404 Not Found`) and
    /// its message.
    #[error("{status_line}: {message}")]
    Remote {
        status: u16,
        status_line: String,
        message: String,
    },
}

impl RegistryError {
    /// What went wrong, as a KILN_HOME says it: a server's message without its HTTP status.
    pub fn message(&self) -> String {
        match self {
            RegistryError::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

fn show_version(v: Option<u32>) -> String {
    v.map_or("no version".to_string(), |v| format!("version {v}"))
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> RegistryError {
        match e {
            sled::Error::Io(io) => RegistryError::Io(format!("registry storage: {io}")),
            sled::Error::Corruption { .. } => RegistryError::Corrupt(e.to_string()),
            other => RegistryError::Storage(other.to_string()),
        }
    }
}

impl From<TransactionError<RegistryError>> for RegistryError {
    fn from(e: TransactionError<RegistryError>) -> RegistryError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

fn abort<T>(e: RegistryError) -> Result<T, ConflictableTransactionError<RegistryError>> {
    Err(ConflictableTransactionError::Abort(e))
}

/// What an alias must point to for a move to go ahead (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Move whatever it points to now.
    Any,
    /// The alias must not exist yet.
    Absent,
    /// The alias must point to this version.
    Version(u32),
}

/// An MLflow-style stage, read from the aliases `champion` (Production: what serving follows by
/// default, so that promoting a version is what makes it serve) and `staging`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum Stage {
    None,
    Staging,
    Production,
    /// Was in staging or production once, and is in neither now.
    Archived,
}

impl Stage {
    /// The alias that carries a stage (`None` for the stages that are not an alias).
    pub fn alias(self) -> Option<&'static str> {
        match self {
            Stage::Production => Some("champion"),
            Stage::Staging => Some("staging"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::None => "None",
            Stage::Staging => "Staging",
            Stage::Production => "Production",
            Stage::Archived => "Archived",
        })
    }
}

/// A change that subscribers (the server, the scheduler) react to.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryEvent {
    AliasMoved(AliasEvent),
    VersionCreated { model: String, version: u32 },
    VersionDeleted { model: String, version: u32 },
    DeploymentChanged { model: String },
}

/// What a new run starts with.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The experiment's name; created when it does not exist.
    pub experiment: String,
    pub name: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub parent: Option<u64>,
    pub lineage: Lineage,
}

/// The registry of one `KILN_HOME`.
pub struct Registry {
    home: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    experiments: sled::Tree,
    experiment_names: sled::Tree,
    runs: sled::Tree,
    runs_by_experiment: sled::Tree,
    metrics: sled::Tree,
    models: sled::Tree,
    versions: sled::Tree,
    aliases: sled::Tree,
    history: sled::Tree,
    artifact_refs: sled::Tree,
    deployments: sled::Tree,
    pipeline_runs: sled::Tree,
    pipeline_steps: sled::Tree,
    step_cache: sled::Tree,
    schedules: sled::Tree,
    pipeline_schemas: sled::Tree,
    logged_models: sled::Tree,
    artifacts: ArtifactStore,
    _lock: File,
}

/// Formats a run id as people see it.
pub fn run_id_text(id: u64) -> String {
    format!("{id:08x}")
}

/// Parses a run id as people type it.
pub fn parse_run_id(s: &str) -> Result<u64, RegistryError> {
    u64::from_str_radix(s.trim(), 16).map_err(|_| {
        RegistryError::Invalid(format!(
            "`{s}` is not a run id (run ids are hexadecimal, like 0000002a)"
        ))
    })
}

fn be8(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn step_key(step: i64) -> [u8; 8] {
    ((step as u64) ^ (1 << 63)).to_be_bytes()
}

fn step_of(key: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(key);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn u32_of(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(b)
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a);
    k.push(0);
    k.extend_from_slice(b);
    k
}

/// Checks a name: non-empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn check_name(what: &str, name: &str) -> Result<(), RegistryError> {
    if name.trim().is_empty() {
        return Err(RegistryError::Invalid(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(RegistryError::Invalid(format!(
            "{what} name is {} bytes; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(RegistryError::Invalid(format!(
            "{what} name {name:?} contains the control character {c:?}"
        )));
    }
    Ok(())
}

/// Model names appear in URLs: letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn check_model_name(name: &str) -> Result<(), RegistryError> {
    check_name("model", name)?;
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(RegistryError::Invalid(format!(
            "model name {name:?} may hold only letters, digits, `-`, `_` and `.`, and must start \
             with a letter or digit"
        )));
    }
    Ok(())
}

/// Aliases start with a letter, so they never read as version numbers.
fn check_alias(alias: &str) -> Result<(), RegistryError> {
    check_name("alias", alias)?;
    let ok = alias.starts_with(|c: char| c.is_ascii_alphabetic())
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        && alias.len() <= 64;
    if !ok {
        return Err(RegistryError::Invalid(format!(
            "alias {alias:?} must start with a letter and hold only letters, digits, `-` and `_` \
             (at most 64)"
        )));
    }
    Ok(())
}

fn check_key(what: &str, key: &str) -> Result<(), RegistryError> {
    check_name(what, key)?;
    if key.contains('\0') {
        return Err(RegistryError::Invalid(format!(
            "{what} {key:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// Opens sled. Holding `kiln.lock` means no other process has the store open, so a lock error
/// from sled can only be this process's previous handle, whose background flusher lets go a
/// moment after it is dropped (one REPL line after another): wait for it, briefly.
fn open_sled(path: &Path) -> Result<sled::Db, RegistryError> {
    let mut wait = std::time::Duration::from_millis(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            // sled reports the lock as an `Other` error whose text names it.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

impl Registry {
    /// Opens (creating if needed) the registry in `home`, taking ownership of it.
    pub fn open(home: &Path) -> Result<Registry, RegistryError> {
        fs::create_dir_all(home)
            .map_err(|e| RegistryError::Io(format!("{}: {e}", home.display())))?;
        let lock = take_lock(home)?;
        let db = open_sled(&home.join("registry"))?;
        let meta = db.open_tree("meta")?;
        match meta.get("store_format")? {
            Some(v) if v.len() == 4 => {
                let found = u32_of(&v);
                if found > STORE_FORMAT_VERSION {
                    return Err(RegistryError::NewerFormat {
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
                if found < STORE_FORMAT_VERSION {
                    migrate(&db, found)?;
                    meta.insert("store_format", &STORE_FORMAT_VERSION.to_be_bytes())?;
                    db.flush()?;
                }
            }
            Some(_) => return Err(RegistryError::Corrupt("store format marker".into())),
            None => {
                meta.insert("store_format", &STORE_FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        Ok(Registry {
            home: home.to_path_buf(),
            meta,
            experiments: db.open_tree("experiments")?,
            experiment_names: db.open_tree("experiment_names")?,
            runs: db.open_tree("runs")?,
            runs_by_experiment: db.open_tree("runs_by_experiment")?,
            metrics: db.open_tree("metrics")?,
            models: db.open_tree("models")?,
            versions: db.open_tree("versions")?,
            aliases: db.open_tree("aliases")?,
            history: db.open_tree("alias_history")?,
            artifact_refs: db.open_tree("artifact_refs")?,
            deployments: db.open_tree("deployments")?,
            pipeline_runs: db.open_tree("pipeline_runs")?,
            pipeline_steps: db.open_tree("pipeline_steps")?,
            step_cache: db.open_tree("step_cache")?,
            schedules: db.open_tree("schedules")?,
            pipeline_schemas: db.open_tree("pipeline_schemas")?,
            logged_models: db.open_tree("logged_models")?,
            artifacts: ArtifactStore::open(home.join("artifacts"))?,
            db,
            _lock: lock,
        })
    }

    /// The `KILN_HOME` this registry lives in.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The next number of a counter: 1, 2, 3… (sled's own ids jump after each restart, and people
    /// type run ids).
    fn next_id(&self, counter: &str) -> Result<u64, RegistryError> {
        let bytes = self.meta.update_and_fetch(counter, |old| {
            let n = old.filter(|o| o.len() == 8).map_or(0, u64_of);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(bytes.map_or(1, |b| u64_of(&b)))
    }

    /// Makes everything written so far durable (fsync).
    pub fn flush(&self) -> Result<(), RegistryError> {
        crate::threads::debug_assert_may_block("flushing the registry");
        self.db.flush()?;
        Ok(())
    }

    // ----- experiments -----

    /// Creates an experiment.
    pub fn create_experiment(&self, name: &str) -> Result<Experiment, RegistryError> {
        check_name("experiment", name)?;
        let id = self.next_id("next_experiment_id")?;
        let exp = Experiment {
            id,
            name: name.to_string(),
            created_ms: now_ms(),
            tags: BTreeMap::new(),
        };
        (&self.experiments, &self.experiment_names).transaction(|(e, n)| {
            if n.get(name.as_bytes())?.is_some() {
                return abort(RegistryError::AlreadyExists {
                    what: "experiment",
                    name: name.to_string(),
                });
            }
            n.insert(name.as_bytes(), &be8(id))?;
            e.insert(&be8(id), encode(&exp))?;
            Ok(())
        })?;
        self.flush()?;
        Ok(exp)
    }

    /// The experiment named `name`.
    pub fn experiment(&self, name: &str) -> Result<Experiment, RegistryError> {
        let id =
            self.experiment_names
                .get(name.as_bytes())?
                .ok_or_else(|| RegistryError::NotFound {
                    what: "experiment",
                    name: name.to_string(),
                    hint: self.hint_among(&self.experiment_names, name),
                })?;
        self.experiment_by_id(u64_of(&id))
    }

    fn experiment_by_id(&self, id: u64) -> Result<Experiment, RegistryError> {
        let bytes = self
            .experiments
            .get(be8(id))?
            .ok_or_else(|| RegistryError::NotFound {
                what: "experiment",
                name: id.to_string(),
                hint: String::new(),
            })?;
        decode("experiment", &bytes)
    }

    fn experiment_or_create(&self, name: &str) -> Result<Experiment, RegistryError> {
        match self.experiment(name) {
            Ok(e) => Ok(e),
            Err(RegistryError::NotFound { .. }) => match self.create_experiment(name) {
                Err(RegistryError::AlreadyExists { .. }) => self.experiment(name),
                other => other,
            },
            Err(e) => Err(e),
        }
    }

    /// Every experiment, oldest first.
    pub fn experiments(&self) -> Result<Vec<Experiment>, RegistryError> {
        self.experiments
            .iter()
            .values()
            .map(|v| decode("experiment", &v?))
            .collect()
    }

    /// Renames an experiment.
    pub fn rename_experiment(&self, old: &str, new: &str) -> Result<Experiment, RegistryError> {
        check_name("experiment", new)?;
        let mut exp = self.experiment(old)?;
        exp.name = new.to_string();
        (&self.experiments, &self.experiment_names).transaction(|(e, n)| {
            if n.get(new.as_bytes())?.is_some() {
                return abort(RegistryError::AlreadyExists {
                    what: "experiment",
                    name: new.to_string(),
                });
            }
            n.remove(old.as_bytes())?;
            n.insert(new.as_bytes(), &be8(exp.id))?;
            e.insert(&be8(exp.id), encode(&exp))?;
            Ok(())
        })?;
        self.flush()?;
        Ok(exp)
    }

    /// Sets tags on an experiment (tags may change).
    pub fn set_experiment_tags(
        &self,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<Experiment, RegistryError> {
        for k in tags.keys() {
            check_key("tag", k)?;
        }
        let id = self.experiment(name)?.id;
        let out = self.experiments.transaction(|e| {
            let Some(bytes) = e.get(be8(id))? else {
                return abort(RegistryError::NotFound {
                    what: "experiment",
                    name: name.to_string(),
                    hint: String::new(),
                });
            };
            let mut exp: Experiment = match decode("experiment", &bytes) {
                Ok(exp) => exp,
                Err(err) => return abort(err),
            };
            exp.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            e.insert(&be8(id), encode(&exp))?;
            Ok(exp)
        })?;
        self.flush()?;
        Ok(out)
    }

    /// Deletes an experiment; with runs in it only when `force` is set, and then the runs too.
    pub fn delete_experiment(&self, name: &str, force: bool) -> Result<usize, RegistryError> {
        let exp = self.experiment(name)?;
        let runs: Vec<u64> = self
            .runs_by_experiment
            .scan_prefix(be8(exp.id))
            .keys()
            .map(|k| k.map(|k| u64_of(&k[8..])))
            .collect::<Result<_, _>>()?;
        if !runs.is_empty() && !force {
            return Err(RegistryError::Invalid(format!(
                "experiment `{name}` has {} runs; delete them first or pass --force",
                runs.len()
            )));
        }
        for run in &runs {
            self.delete_run_unflushed(*run)?;
        }
        self.experiment_names.remove(name.as_bytes())?;
        self.experiments.remove(be8(exp.id))?;
        self.flush()?;
        Ok(runs.len())
    }

    // ----- runs -----

    /// Starts a run (status `running`) in an experiment, creating the experiment when needed.
    pub fn create_run(&self, new: NewRun) -> Result<Run, RegistryError> {
        let experiment = if new.experiment.is_empty() {
            "Default"
        } else {
            &new.experiment
        };
        let exp = self.experiment_or_create(experiment)?;
        for (k, _) in new.params.iter().chain(&new.tags) {
            check_key("parameter or tag", k)?;
        }
        if !new.name.is_empty() {
            check_name("run", &new.name)?;
        }
        if let Some(parent) = new.parent {
            self.run(parent)?;
        }
        let id = self.next_id("next_run_id")?;
        let run = Run {
            id,
            experiment_id: exp.id,
            name: if new.name.is_empty() {
                format!("run-{}", run_id_text(id))
            } else {
                new.name
            },
            status: RunStatus::Running,
            start_ms: now_ms(),
            end_ms: None,
            params: new.params,
            tags: new.tags,
            parent: new.parent,
            lineage: new.lineage,
            artifacts: Vec::new(),
        };
        let mut index = be8(exp.id).to_vec();
        index.extend_from_slice(&be8(id));
        (&self.runs, &self.runs_by_experiment).transaction(|(r, x)| {
            r.insert(&be8(id), encode(&run))?;
            x.insert(index.as_slice(), &[])?;
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// The run with this id.
    pub fn run(&self, id: u64) -> Result<Run, RegistryError> {
        let bytes = self
            .runs
            .get(be8(id))?
            .ok_or_else(|| RegistryError::NotFound {
                what: "run",
                name: run_id_text(id),
                hint: "; list runs with `kiln runs list`".to_string(),
            })?;
        decode("run", &bytes)
    }

    fn update_run(
        &self,
        id: u64,
        f: impl Fn(&mut Run) -> Result<(), RegistryError>,
    ) -> Result<Run, RegistryError> {
        let out = self.runs.transaction(|r| {
            let Some(bytes) = r.get(be8(id))? else {
                return abort(RegistryError::NotFound {
                    what: "run",
                    name: run_id_text(id),
                    hint: String::new(),
                });
            };
            let mut run: Run = match decode("run", &bytes) {
                Ok(run) => run,
                Err(e) => return abort(e),
            };
            if let Err(e) = f(&mut run) {
                return abort(e);
            }
            r.insert(&be8(id), encode(&run))?;
            Ok(run)
        })?;
        Ok(out)
    }

    /// Adds parameters to a run; a parameter once set keeps its value, as in MLflow.
    pub fn log_params(
        &self,
        id: u64,
        params: &BTreeMap<String, String>,
    ) -> Result<Run, RegistryError> {
        for k in params.keys() {
            check_key("parameter", k)?;
        }
        let run = self.update_run(id, |run| {
            for (k, v) in params {
                match run.params.get(k) {
                    Some(old) if old != v => {
                        return Err(RegistryError::Invalid(format!(
                            "parameter `{k}` of run {} is already {old:?}; parameters do not change",
                            run_id_text(run.id)
                        )));
                    }
                    _ => {
                        run.params.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// Sets tags on a run (tags may change).
    pub fn set_tags(&self, id: u64, tags: &BTreeMap<String, String>) -> Result<Run, RegistryError> {
        for k in tags.keys() {
            check_key("tag", k)?;
        }
        let run = self.update_run(id, |run| {
            run.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// Deletes a tag of a run; a tag the run does not have is an error that names the ones it has.
    pub fn delete_tag(&self, id: u64, key: &str) -> Result<Run, RegistryError> {
        let run = self.update_run(id, |run| {
            if run.tags.remove(key).is_none() {
                return Err(RegistryError::NotFound {
                    what: "tag",
                    name: format!("{key}` of run `{}", run_id_text(id)),
                    hint: crate::suggest::hint(key, run.tags.keys().map(String::as_str)),
                });
            }
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// Ends a run with a final status and flushes everything it logged.
    pub fn end_run(&self, id: u64, status: RunStatus) -> Result<Run, RegistryError> {
        if status == RunStatus::Running {
            return Err(RegistryError::Invalid(
                "a run ends as finished, failed or killed".into(),
            ));
        }
        let run = self.update_run(id, |run| {
            run.status = status;
            run.end_ms = Some(now_ms());
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// Sets when a run started and, for an ended run, when it ended, as a client that logs
    /// from elsewhere recorded them (MLflow's `start_time`, `end_time`).
    pub fn set_run_times(
        &self,
        id: u64,
        start_ms: Option<Millis>,
        end_ms: Option<Millis>,
    ) -> Result<Run, RegistryError> {
        let run = self.update_run(id, |run| {
            if let Some(start) = start_ms {
                run.start_ms = start;
            }
            if let Some(end) = end_ms
                && run.status != RunStatus::Running
            {
                run.end_ms = Some(end);
            }
            Ok(())
        })?;
        self.flush()?;
        Ok(run)
    }

    /// Logs metric points `(key, step, value)` to a run, stamped now. Safe from many threads at
    /// once; durable after [`Registry::flush`] or [`Registry::end_run`].
    pub fn log_metrics(&self, id: u64, points: &[(&str, i64, f64)]) -> Result<(), RegistryError> {
        let ts = now_ms();
        let points: Vec<(&str, MetricPoint)> = points
            .iter()
            .map(|(key, step, value)| {
                (
                    *key,
                    MetricPoint {
                        step: *step,
                        timestamp_ms: ts,
                        value: *value,
                    },
                )
            })
            .collect();
        self.log_metric_points(id, &points)
    }

    /// Logs metric points with the times they carry (a client that logs from elsewhere stamps
    /// its own); as [`Registry::log_metrics`] otherwise.
    pub fn log_metric_points(
        &self,
        id: u64,
        points: &[(&str, MetricPoint)],
    ) -> Result<(), RegistryError> {
        crate::threads::debug_assert_may_block("logging metrics");
        if !self.runs.contains_key(be8(id))? {
            return Err(RegistryError::NotFound {
                what: "run",
                name: run_id_text(id),
                hint: String::new(),
            });
        }
        for (key, _) in points {
            check_key("metric", key)?;
        }
        // Plain inserts: sled applies them without a lock, where a batch would take its global
        // write lock; each point is independent, so a batch's atomicity buys nothing here.
        for (key, point) in points {
            let seq = self.db.generate_id()?;
            let mut k = Vec::with_capacity(8 + key.len() + 17);
            k.extend_from_slice(&be8(id));
            k.extend_from_slice(key.as_bytes());
            k.push(0);
            k.extend_from_slice(&step_key(point.step));
            k.extend_from_slice(&be8(seq));
            self.metrics.insert(k, &encode_point(point)[..])?;
        }
        Ok(())
    }

    /// The latest value of each metric of a run (highest step, then latest logged).
    ///
    /// Points sort by run, key, step and logging order, so each key's latest point is the last
    /// of its prefix; the scan skips from key to key without reading the series.
    pub fn latest_metrics(&self, id: u64) -> Result<BTreeMap<String, MetricPoint>, RegistryError> {
        let run = be8(id);
        let mut out = BTreeMap::new();
        let mut from = run.to_vec();
        while let Some(item) = self.metrics.range(from.clone()..).next() {
            let (k, _) = item?;
            if !k.starts_with(&run) {
                break;
            }
            let rest = &k[8..];
            let Some(nul) = rest.iter().position(|b| *b == 0) else {
                return Err(RegistryError::Corrupt(
                    "metric key without a terminator".into(),
                ));
            };
            let key = &rest[..nul];
            let prefix = k[..8 + nul + 1].to_vec();
            if let Some(last) = self.metrics.scan_prefix(&prefix).next_back() {
                let (lk, lv) = last?;
                let step = step_of(&lk[prefix.len()..prefix.len() + 8]);
                out.insert(
                    String::from_utf8_lossy(key).into_owned(),
                    decode_point(step, &lv)?,
                );
            }
            from = run.to_vec();
            from.extend_from_slice(key);
            from.push(1);
        }
        Ok(out)
    }

    /// A metric series in step order (points logged at the same step in logging order). With
    /// `max_points`, long series are downsampled to that many points, evenly spaced, keeping the
    /// first and the last.
    pub fn metric_history(
        &self,
        id: u64,
        key: &str,
        max_points: Option<usize>,
    ) -> Result<Vec<MetricPoint>, RegistryError> {
        let mut prefix = be8(id).to_vec();
        prefix.extend_from_slice(key.as_bytes());
        prefix.push(0);
        let mut points = Vec::new();
        for item in self.metrics.scan_prefix(&prefix) {
            let (k, v) = item?;
            let step = step_of(&k[prefix.len()..prefix.len() + 8]);
            points.push(decode_point(step, &v)?);
        }
        if points.is_empty() && !self.runs.contains_key(be8(id))? {
            return Err(RegistryError::NotFound {
                what: "run",
                name: run_id_text(id),
                hint: String::new(),
            });
        }
        Ok(match max_points {
            Some(m) if m >= 2 && points.len() > m => (0..m)
                .map(|i| points[i * (points.len() - 1) / (m - 1)])
                .collect(),
            _ => points,
        })
    }

    /// Runs, newest first, optionally of one experiment.
    pub fn runs(&self, experiment: Option<&str>) -> Result<Vec<Run>, RegistryError> {
        let mut out: Vec<Run> = match experiment {
            Some(name) => {
                let exp = self.experiment(name)?;
                self.runs_by_experiment
                    .scan_prefix(be8(exp.id))
                    .keys()
                    .map(|k| self.run(u64_of(&k?[8..])))
                    .collect::<Result<_, _>>()?
            }
            None => self
                .runs
                .iter()
                .values()
                .map(|v| decode("run", &v?))
                .collect::<Result<_, _>>()?,
        };
        out.reverse();
        Ok(out)
    }

    /// Attaches a file or directory to a run as an artifact named `name`.
    pub fn log_artifact(
        &self,
        id: u64,
        name: &str,
        path: &Path,
    ) -> Result<ArtifactRef, RegistryError> {
        check_key("artifact", name)?;
        self.no_artifact_named(id, name)?;
        let meta = fs::metadata(path)
            .map_err(|e| RegistryError::Io(format!("{}: {e}", path.display())))?;
        let (digest, size, kind) = if meta.is_dir() {
            let (d, s) = self.artifacts.put_dir(path)?;
            (d, s, ArtifactKind::Directory)
        } else {
            let (d, s) = self.artifacts.put_file(path)?;
            (d, s, ArtifactKind::File)
        };
        self.attach(
            id,
            ArtifactRef {
                name: name.to_string(),
                digest,
                kind,
                size,
            },
        )
    }

    /// Attaches content already in the store (uploaded object by object with [`put_object`])
    /// to a run as an artifact named `name`. Every object is read and checked against its digest
    /// first, so a run never points at content that is missing or damaged.
    ///
    /// [`put_object`]: Registry::put_object
    pub fn attach_artifact(
        &self,
        id: u64,
        name: &str,
        digest: &str,
        kind: ArtifactKind,
    ) -> Result<ArtifactRef, RegistryError> {
        check_key("artifact", name)?;
        self.no_artifact_named(id, name)?;
        let missing = |d: &str| {
            RegistryError::Invalid(format!(
                "object {d} has not been uploaded; upload it (PUT /api/artifacts/{d}) before attaching"
            ))
        };
        if !self.artifacts.has(digest)? {
            return Err(missing(digest));
        }
        let bytes = self.artifacts.read_verified(digest)?;
        let size = match kind {
            ArtifactKind::File => bytes.len() as u64,
            ArtifactKind::Directory => {
                let manifest = artifacts::parse_manifest(digest, &bytes)
                    .map_err(|e| RegistryError::Invalid(e.to_string()))?;
                let mut total = 0u64;
                for entry in &manifest.files {
                    if !self.artifacts.has(&entry.digest)? {
                        return Err(missing(&entry.digest));
                    }
                    let content = self.artifacts.read_verified(&entry.digest)?;
                    if content.len() as u64 != entry.size {
                        return Err(RegistryError::Invalid(format!(
                            "manifest {digest} says {} is {} bytes; it is {}",
                            entry.path,
                            entry.size,
                            content.len()
                        )));
                    }
                    total = total.saturating_add(entry.size);
                }
                total
            }
        };
        self.attach(
            id,
            ArtifactRef {
                name: name.to_string(),
                digest: digest.to_string(),
                kind,
                size,
            },
        )
    }

    /// Stores one object read from `src` when its digest is `digest`; returns its size.
    pub fn put_object(
        &self,
        src: &mut dyn std::io::Read,
        digest: &str,
    ) -> Result<u64, RegistryError> {
        Ok(self.artifacts.put_reader_expecting(src, Some(digest))?.1)
    }

    /// Whether the store holds an object with this digest.
    pub fn has_object(&self, digest: &str) -> Result<bool, RegistryError> {
        self.artifacts.has(digest)
    }

    /// One object's bytes, checked against its digest.
    pub fn read_object(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        if !self.artifacts.has(digest)? {
            return Err(RegistryError::NotFound {
                what: "artifact object",
                name: digest.to_string(),
                hint: String::new(),
            });
        }
        self.artifacts.read_verified(digest)
    }

    fn no_artifact_named(&self, id: u64, name: &str) -> Result<(), RegistryError> {
        if self.run(id)?.artifacts.iter().any(|a| a.name == name) {
            return Err(RegistryError::AlreadyExists {
                what: "artifact",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Records `artifact` (its objects stored) on a run.
    fn attach(&self, id: u64, artifact: ArtifactRef) -> Result<ArtifactRef, RegistryError> {
        let kind = artifact.kind;
        // References first: an object is never collected while a record may point to it.
        let owner = format!("run:{}", run_id_text(id));
        for object in self
            .artifacts
            .objects_of(&artifact.digest, kind == ArtifactKind::Directory)
        {
            self.artifact_refs
                .insert(join(object.as_bytes(), owner.as_bytes()), &[])?;
        }
        self.update_run(id, |run| {
            if run.artifacts.iter().any(|a| a.name == artifact.name) {
                return Err(RegistryError::AlreadyExists {
                    what: "artifact",
                    name: artifact.name.clone(),
                });
            }
            run.artifacts.push(artifact.clone());
            Ok(())
        })?;
        self.flush()?;
        Ok(artifact)
    }

    /// Copies a run's artifact out to `dest`, verifying its content against its digest.
    pub fn export_artifact(
        &self,
        artifact: &ArtifactRef,
        dest: &Path,
    ) -> Result<(), RegistryError> {
        self.artifacts.export(
            &artifact.digest,
            artifact.kind == ArtifactKind::Directory,
            dest,
        )
    }

    /// Checks an artifact's content against its digest.
    pub fn verify_artifact(&self, artifact: &ArtifactRef) -> Result<(), RegistryError> {
        for object in self
            .artifacts
            .objects_of(&artifact.digest, artifact.kind == ArtifactKind::Directory)
        {
            self.artifacts.verify(&object)?;
        }
        Ok(())
    }

    /// Where an artifact object lives on disk (for tests and tools that inspect the store).
    pub fn artifact_path(&self, digest: &str) -> Result<PathBuf, RegistryError> {
        self.artifacts.path_of(digest)
    }

    /// Deletes a run, its metrics, and the artifacts no one else references.
    pub fn delete_run(&self, id: u64) -> Result<(), RegistryError> {
        self.delete_run_unflushed(id)?;
        self.flush()
    }

    fn delete_run_unflushed(&self, id: u64) -> Result<(), RegistryError> {
        let run = self.run(id)?;
        let mut index = be8(run.experiment_id).to_vec();
        index.extend_from_slice(&be8(id));
        (&self.runs, &self.runs_by_experiment).transaction(|(r, x)| {
            r.remove(&be8(id))?;
            x.remove(index.as_slice())?;
            Ok(())
        })?;
        let keys: Vec<sled::IVec> = self
            .metrics
            .scan_prefix(be8(id))
            .keys()
            .collect::<Result<_, _>>()?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.metrics.apply_batch(batch)?;
        self.forget_logged_models_of(id)?;
        self.release_artifacts(&format!("run:{}", run_id_text(id)), &run.artifacts)
    }

    /// Drops `owner`'s references to artifacts and removes objects no one references any more.
    fn release_artifacts(
        &self,
        owner: &str,
        artifacts: &[ArtifactRef],
    ) -> Result<(), RegistryError> {
        let mut objects = BTreeSet::new();
        for a in artifacts {
            objects.extend(
                self.artifacts
                    .objects_of(&a.digest, a.kind == ArtifactKind::Directory),
            );
        }
        for object in &objects {
            self.artifact_refs
                .remove(join(object.as_bytes(), owner.as_bytes()))?;
        }
        self.db.flush()?;
        for object in &objects {
            if self
                .artifact_refs
                .scan_prefix(join(object.as_bytes(), b""))
                .next()
                .is_none()
            {
                self.artifacts.remove(object)?;
            }
        }
        Ok(())
    }

    fn hint_among(&self, tree: &sled::Tree, name: &str) -> String {
        let names: Vec<String> = tree
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        crate::suggest::hint(name, names.iter().map(String::as_str))
    }
}

mod models;

/// Takes the `KILN_HOME` lock, or says which process holds it.
fn take_lock(home: &Path) -> Result<File, RegistryError> {
    let path = home.join("kiln.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| RegistryError::Io(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            let _ = file.sync_all();
            Ok(file)
        }
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_string(),
            };
            Err(RegistryError::Locked {
                home: home.display().to_string(),
                holder,
            })
        }
        Err(fs::TryLockError::Error(e)) => {
            Err(RegistryError::Io(format!("{}: {e}", path.display())))
        }
    }
}

/// Brings a store written in an older layout up to [`STORE_FORMAT_VERSION`].
fn migrate(_db: &sled::Db, from: u32) -> Result<(), RegistryError> {
    // Format 1 is the first layout; each later format adds a step here, from `from` upwards.
    Err(RegistryError::Corrupt(format!(
        "store format {from} predates every format this kiln knows"
    )))
}
