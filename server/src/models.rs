//! The models a server answers for: which versions are loaded, where a bare model name routes
//! (traffic split, shadow, batching), and hot swap when an alias or a deployment changes.
//!
//! **Requests never wait for a load of a live version.** A change is reconciled on another
//! thread: the new version is loaded and warmed up, then the model's routes are replaced in one
//! pointer swap; requests in flight keep the old version (an `Arc`) until they finish.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kiln_core::backend::Backend;
use kiln_core::registry::{Deployment, Registry, RegistryError, RegistryEvent};

use crate::batch::{Batcher, Forward, OnBatch};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::version::{Version, VersionMetrics};

/// A live target of a model's bare name.
pub struct Route {
    /// The alias or version text the deployment gave.
    pub target: String,
    pub percent: u32,
    pub version: Arc<Version>,
    pub batcher: Option<Batcher>,
}

/// Where a model's bare name goes now.
pub struct Live {
    pub deployment: Deployment,
    pub routes: Vec<Route>,
    pub shadow: Option<Arc<Version>>,
    /// The model's aliases when this was built.
    pub aliases: BTreeMap<String, u32>,
}

impl Live {
    /// Picks a route by percentage with `roll` in `0..100`.
    pub fn pick(&self, roll: u32) -> &Route {
        let mut acc = 0;
        for r in &self.routes {
            acc += r.percent;
            if roll < acc {
                return r;
            }
        }
        &self.routes[self.routes.len() - 1]
    }
}

/// Which models a server answers for.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every registered model, including those registered while serving.
    All,
    Only(BTreeSet<String>),
}

/// How many explicitly requested versions stay loaded besides the live ones.
const EXTRA_LOADED: usize = 4;

/// The changes of this server's registry, numbered, for replicas to follow
/// (`GET /api/changes`): the last [`FEED_KEPT`] changed model names, and a run id (`epoch`) so
/// that a replica that asks a restarted server re-reads everything.
pub struct ChangeFeed {
    epoch: u64,
    log: Mutex<(u64, VecDeque<(u64, String)>)>,
    tick: tokio::sync::watch::Sender<u64>,
}

/// Changes a feed keeps; a replica further behind re-reads every model.
const FEED_KEPT: usize = 4096;

impl ChangeFeed {
    fn new() -> ChangeFeed {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        ChangeFeed {
            epoch: u64::from_le_bytes(bytes) >> 12,
            log: Mutex::new((0, VecDeque::new())),
            tick: tokio::sync::watch::Sender::new(0),
        }
    }

    fn push(&self, model: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.0 += 1;
        let seq = log.0;
        log.1.push_back((seq, model.to_string()));
        if log.1.len() > FEED_KEPT {
            log.1.pop_front();
        }
        drop(log);
        self.tick.send_replace(seq);
    }

    /// What changed after change `after` of run `epoch`.
    pub fn since(&self, epoch: Option<u64>, after: u64) -> kiln_core::wire::models::Changes {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = log.1.front().map_or(log.0 + 1, |(s, _)| *s);
        let resync = epoch != Some(self.epoch) || after > log.0 || after + 1 < oldest;
        let models: BTreeSet<String> = if resync {
            BTreeSet::new()
        } else {
            log.1
                .iter()
                .filter(|(s, _)| *s > after)
                .map(|(_, m)| m.clone())
                .collect()
        };
        kiln_core::wire::models::Changes {
            epoch: self.epoch,
            seq: log.0,
            resync,
            models: models.into_iter().collect(),
        }
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

/// A central kiln this server follows (`kiln serve --registry URL`): versions, aliases and
/// deployments read over its API, bundles fetched once (digest-checked) into `cache`.
struct Remote {
    client: crate::client::Client,
    cache: PathBuf,
    /// The central server's models, as last read.
    known: RwLock<BTreeSet<String>>,
    /// When the central server last answered.
    contact: Mutex<Instant>,
    /// The cache directory each loaded version was read from.
    dirs: Mutex<HashMap<(String, u32), PathBuf>>,
}

/// How long a cached bundle no loaded version uses stays on disk: a version being fetched and
/// loaded right now is younger.
const CACHE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

impl Remote {
    /// Deletes the cached bundles that no loaded version uses (older than [`CACHE_GRACE`]), so a
    /// replica's disk holds what it serves, not every version it ever served.
    fn prune(&self, loaded: &BTreeSet<(String, u32)>) {
        let in_use: BTreeSet<PathBuf> = {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            dirs.retain(|k, _| loaded.contains(k));
            dirs.values().cloned().collect()
        };
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Only what this server put here: 64 hex digits, not a bundle being fetched.
            let ours = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > CACHE_GRACE);
            if ours && old && !in_use.contains(&path) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(bundle = %name, "removed a cached bundle no version uses")
                    }
                    Err(e) => {
                        tracing::warn!(bundle = %name, error = %e, "removing a cached bundle")
                    }
                }
            }
        }
    }
}

/// One bundle served with no registry (`kiln serve --bundle`): version 1 of `name`, its
/// `champion`, read from `dir` in place.
#[derive(Debug, Clone)]
struct Bundle {
    name: String,
    dir: PathBuf,
}

/// The serving state of every model.
pub struct Models {
    registry: Option<Arc<Registry>>,
    bundle: Option<Bundle>,
    remote: Option<Remote>,
    feed: ChangeFeed,
    selection: Selection,
    metrics: Arc<Metrics>,
    live: RwLock<HashMap<String, Arc<Live>>>,
    /// Why a selected model is not live (no champion yet, a load failed).
    problems: RwLock<HashMap<String, String>>,
    loaded: Mutex<HashMap<(String, u32), Arc<Version>>>,
    extra: Mutex<VecDeque<(String, u32)>>,
    reconciling: Mutex<()>,
    log: Option<Arc<crate::predlog::PredictionLog>>,
    log_config: crate::predlog::LogConfig,
}

impl Models {
    pub fn new(registry: Arc<Registry>, selection: Selection, metrics: Arc<Metrics>) -> Models {
        Models::with_source(Some(registry), None, selection, metrics)
    }

    /// A server of one bundle directory and no registry: the model `name`, whose version 1 (and
    /// `champion`) is the bundle, read in place.
    pub fn for_bundle(name: &str, dir: PathBuf, metrics: Arc<Metrics>) -> Models {
        let bundle = Bundle {
            name: name.to_string(),
            dir,
        };
        let only = Selection::Only(BTreeSet::from([name.to_string()]));
        Models::with_source(None, Some(bundle), only, metrics)
    }

    /// A replica of the central kiln `client` reaches: it keeps no registry, reads models over
    /// the API and caches their bundles under `cache`.
    pub fn for_remote(
        client: crate::client::Client,
        cache: PathBuf,
        selection: Selection,
        metrics: Arc<Metrics>,
    ) -> Models {
        let mut m = Models::with_source(None, None, selection, metrics);
        m.remote = Some(Remote {
            client,
            cache,
            known: RwLock::new(BTreeSet::new()),
            contact: Mutex::new(Instant::now()),
            dirs: Mutex::new(HashMap::new()),
        });
        m
    }

    /// The numbered changes of this server's registry.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// Seconds since the central server last answered, for a replica.
    pub fn staleness(&self) -> Option<f64> {
        self.remote.as_ref().map(|r| {
            r.contact
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                .as_secs_f64()
        })
    }

    /// Re-reads the central server's model names (a replica).
    fn refresh_names(&self) -> Result<(), ServeError> {
        if let Some(r) = &self.remote {
            let list = r.client.models()?;
            *r.known.write().unwrap_or_else(|e| e.into_inner()) =
                list.models.into_iter().map(|m| m.name).collect();
            *r.contact.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        Ok(())
    }

    fn with_source(
        registry: Option<Arc<Registry>>,
        bundle: Option<Bundle>,
        selection: Selection,
        metrics: Arc<Metrics>,
    ) -> Models {
        Models {
            registry,
            bundle,
            remote: None,
            feed: ChangeFeed::new(),
            selection,
            metrics,
            live: RwLock::new(HashMap::new()),
            problems: RwLock::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            extra: Mutex::new(VecDeque::new()),
            reconciling: Mutex::new(()),
            log: None,
            log_config: crate::predlog::LogConfig::default(),
        }
    }

    /// Logs a sample of requests under `KILN_HOME/predictions` and keeps drift windows.
    /// A server of one bundle keeps no log: it has no home to write it to.
    pub fn with_log(mut self, config: crate::predlog::LogConfig) -> Models {
        if config.sample > 0.0
            && let Some(registry) = &self.registry
        {
            self.log = Some(Arc::new(crate::predlog::PredictionLog::start(
                registry.home().join("predictions"),
                &config,
                self.metrics.clone(),
            )));
        }
        self.log_config = config;
        self
    }

    pub fn log(&self) -> Option<&Arc<crate::predlog::PredictionLog>> {
        self.log.as_ref()
    }

    /// Writes out the prediction log (when the server stops).
    pub fn flush_log(&self) {
        if let Some(log) = &self.log {
            log.flush(std::time::Duration::from_secs(5));
        }
    }

    pub fn log_config(&self) -> &crate::predlog::LogConfig {
        &self.log_config
    }

    /// Drift reports of a model's live versions (routes, then the shadow).
    pub fn drift(&self, model: &str) -> Result<Vec<crate::drift::DriftReport>, ServeError> {
        self.require(model)?;
        let Some(live) = self.live(model) else {
            return Ok(Vec::new());
        };
        let mut seen = std::collections::BTreeSet::new();
        let c = &self.log_config;
        Ok(live
            .routes
            .iter()
            .map(|r| &r.version)
            .chain(live.shadow.as_ref())
            .filter(|v| seen.insert(v.version))
            .map(|v| {
                v.monitor
                    .report(model, v.version, &c.thresholds, &c.feature_thresholds)
            })
            .collect())
    }

    /// Sets the drift gauges of every loaded version (before `/metrics` is rendered).
    pub fn refresh_drift_metrics(&self) {
        if self.log.is_none() {
            return;
        }
        let loaded: Vec<Arc<Version>> = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let c = &self.log_config;
        for v in loaded {
            let report =
                v.monitor
                    .report(&v.model, v.version, &c.thresholds, &c.feature_thresholds);
            for f in report.features.iter().chain(report.prediction.as_ref()) {
                let d = &self.metrics.drift;
                for (family, value) in [
                    (&d.psi, f.psi),
                    (&d.js, f.js),
                    (&d.linf, f.linf),
                    (&d.unseen, f.unseen),
                    (&d.missing, Some(f.missing)),
                ] {
                    if let Some(x) = value {
                        family
                            .with_label_values(&[&v.model, &v.label, &f.feature])
                            .set(x);
                    }
                }
                self.metrics
                    .drift_alarm
                    .with_label_values(&[&v.model, &v.label, &f.feature])
                    .set(i64::from(f.alarm));
            }
        }
    }

    /// The registry this server owns; a server of one bundle has none.
    pub fn registry(&self) -> Result<&Arc<Registry>, ServeError> {
        self.registry.as_ref().ok_or_else(|| {
            ServeError::NotFound(
                "this server serves one bundle (`kiln serve --bundle`) and has no registry"
                    .to_string(),
            )
        })
    }

    /// Resolves an alias or version number of a served model to its version.
    fn resolve(&self, model: &str, which: &str) -> Result<u32, ServeError> {
        if let Some(r) = &self.remote {
            return Ok(r.client.resolve(model, which)?.version);
        }
        if let Some(b) = &self.bundle {
            return match which {
                "1" | "champion" if model == b.name => Ok(1),
                _ => Err(ServeError::NotFound(format!(
                    "model `{model}` has no version `{which}`; this server serves `{}` version 1 \
                     (`champion`) from its bundle",
                    b.name
                ))),
            };
        }
        Ok(self.registry()?.resolve(model, which)?.version)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The names this server answers for now.
    pub fn names(&self) -> Result<Vec<String>, ServeError> {
        if let (Some(r), Selection::All) = (&self.remote, &self.selection) {
            return Ok(r
                .known
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect());
        }
        Ok(match &self.selection {
            Selection::All => self
                .registry()?
                .models()?
                .into_iter()
                .map(|m| m.name)
                .collect(),
            Selection::Only(names) => names.iter().cloned().collect(),
        })
    }

    pub fn serves(&self, model: &str) -> bool {
        match &self.selection {
            Selection::All => match &self.remote {
                Some(r) => r
                    .known
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(model),
                None => self
                    .registry
                    .as_ref()
                    .is_some_and(|r| r.model(model).is_ok()),
            },
            Selection::Only(names) => names.contains(model),
        }
    }

    /// Loads every selected model (blocking). A model that cannot go live is recorded as a problem,
    /// not an error: the server starts and reports it as not ready.
    pub fn load_all(&self) -> Result<(), ServeError> {
        self.refresh_names()?;
        if let (Selection::Only(names), Some(registry)) = (&self.selection, &self.registry) {
            for name in names {
                registry.model(name)?;
            }
        }
        for name in self.names()? {
            self.reconcile(&name);
        }
        Ok(())
    }

    /// Where a bare model name routes now, if it is live.
    pub fn live(&self, model: &str) -> Option<Arc<Live>> {
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    pub fn problem(&self, model: &str) -> Option<String> {
        self.problems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Loaded versions, as `(model, version, load time)`.
    pub fn loaded(&self) -> Vec<(String, u32, Duration)> {
        let mut out: Vec<_> = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| (v.model.clone(), v.version, v.load_time))
            .collect();
        out.sort();
        out
    }

    /// Counts a refused or failed request. Names that are not live models are counted together
    /// as `(unknown)`, so requests for made-up names cannot grow the metrics without bound.
    pub fn count_error(&self, model: &str, protocol: &str, status: &str) {
        let known = self.live(model).is_some() || self.problem(model).is_some();
        let model = if known { model } else { "(unknown)" };
        self.metrics
            .errors
            .with_label_values(&[model, protocol, status])
            .inc();
    }

    /// `Ok` when this server answers for `model`, else the error that says so (blocking).
    pub fn require(&self, model: &str) -> Result<(), ServeError> {
        if self.serves(model) {
            Ok(())
        } else {
            Err(self.unknown(model))
        }
    }

    /// The error for a model this server does not answer for.
    pub fn unknown(&self, model: &str) -> ServeError {
        let names = self.names().unwrap_or_default();
        let hint = kiln_core::suggest::hint(model, names.iter().map(String::as_str));
        ServeError::NotFound(format!("no model `{model}` is served here{hint}"))
    }

    /// A version already in memory, without touching the registry: a live route's target
    /// (`"champion"`, `"3"`), or a loaded version number.
    pub fn cached(&self, model: &str, which: &str) -> Option<Arc<Version>> {
        let number = which.strip_prefix('v').unwrap_or(which).parse::<u32>().ok();
        if let Some(live) = self.live(model) {
            for r in &live.routes {
                if r.target == which || Some(r.version.version) == number {
                    return Some(r.version.clone());
                }
            }
            if number.is_none()
                && let Some(v) = live.aliases.get(which)
            {
                return self.get_loaded(model, *v);
            }
        }
        number.and_then(|n| self.get_loaded(model, n))
    }

    fn get_loaded(&self, model: &str, version: u32) -> Option<Arc<Version>> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(model.to_string(), version))
            .cloned()
    }

    /// A version by alias or number, loading it when needed (blocking).
    pub fn version(&self, model: &str, which: &str) -> Result<Arc<Version>, ServeError> {
        self.require(model)?;
        if let Some(v) = self.cached(model, which) {
            return Ok(v);
        }
        let version = self.resolve(model, which)?;
        let v = self.load(model, version)?;
        let mut extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        let key = (model.to_string(), version);
        if !extra.contains(&key) {
            extra.push_back(key);
            if extra.len() > EXTRA_LOADED {
                extra.pop_front();
            }
        }
        drop(extra);
        self.evict();
        Ok(v)
    }

    /// Loads (or finds loaded) one version: exported from the artifact store, read, warmed up.
    fn load(&self, model: &str, version: u32) -> Result<Arc<Version>, ServeError> {
        if let Some(v) = self.get_loaded(model, version) {
            return Ok(v);
        }
        let started = Instant::now();
        let runtime = match (&self.bundle, &self.remote) {
            (Some(b), _) => Runtime::load(&b.dir)?,
            (None, Some(r)) => {
                let mv = r.client.resolve(model, &version.to_string())?;
                // The digest names a directory here: only a BLAKE3 digest is taken.
                let digest = &mv.artifact.digest;
                let hex = digest
                    .strip_prefix("blake3:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| {
                        ServeError::Load(format!(
                            "the central registry names a bundle digest {:?}, which is not a \
                             BLAKE3 digest",
                            digest.chars().take(80).collect::<String>()
                        ))
                    })?;
                let dir = r.cache.join(hex);
                if !dir.join(kiln_core::bundle::MANIFEST_FILE).is_file() {
                    // Fetched (each file checked against its digest) beside, renamed into place.
                    let tmp = r.cache.join(format!(".{hex}.tmp-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&tmp);
                    r.client.export_version(&mv, &tmp)?;
                    if let Err(e) = std::fs::rename(&tmp, &dir) {
                        let _ = std::fs::remove_dir_all(&tmp);
                        if !dir.is_dir() {
                            return Err(ServeError::Load(format!("{}: {e}", dir.display())));
                        }
                    }
                }
                let runtime = Runtime::load(&dir)?;
                r.dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((model.to_string(), version), dir);
                runtime
            }
            (None, None) => {
                let registry = self.registry()?;
                let mv = registry.version(model, version)?;
                let scratch = tempfile::tempdir().map_err(|e| {
                    ServeError::Internal(format!("creating a temporary directory: {e}"))
                })?;
                let dir = scratch.path().join("bundle");
                registry.export_artifact(&mv.artifact, &dir)?;
                Runtime::load(&dir)?
            }
        };
        runtime.warm_up()?;
        let label = version.to_string();
        let monitor = crate::drift::Monitor::new(runtime.manifest(), self.log_config.window);
        let v = Arc::new(Version {
            model: model.to_string(),
            version,
            monitor,
            runtime: Arc::new(runtime),
            load_time: started.elapsed(),
            metrics: VersionMetrics::new(&self.metrics, model, &label),
            label,
        });
        tracing::info!(
            model,
            version,
            ms = v.load_time.as_millis() as u64,
            "loaded model version"
        );
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let v = loaded
            .entry((model.to_string(), version))
            .or_insert(v)
            .clone();
        self.metrics.loaded.set(loaded.len() as i64);
        Ok(v)
    }

    /// Drops loaded versions that are neither live nor among the recent explicit ones. Requests
    /// holding them finish first (they hold an `Arc`).
    fn evict(&self) {
        let mut keep: BTreeSet<(String, u32)> = self
            .extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for (name, live) in self.live.read().unwrap_or_else(|e| e.into_inner()).iter() {
            for r in &live.routes {
                keep.insert((name.clone(), r.version.version));
            }
            if let Some(s) = &live.shadow {
                keep.insert((name.clone(), s.version));
            }
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|k, _| keep.contains(k));
        self.metrics.loaded.set(loaded.len() as i64);
        let still: BTreeSet<(String, u32)> = loaded.keys().cloned().collect();
        drop(loaded);
        if let Some(r) = &self.remote {
            r.prune(&still);
        }
    }

    /// Brings one model's live routes in line with the registry (blocking): resolves its
    /// deployment's targets, loads and warms up what is new, then swaps. Errors are kept as the
    /// model's problem; the old routes stay unless the deployment's targets are gone.
    /// Changes the registry for `model` with `f`, then brings what serves it up to date before
    /// returning: every change that can move routes (aliases, deployments) goes through here, so
    /// an answer to it already reflects it.
    pub fn change<T>(
        &self,
        model: &str,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let done = f(self
            .registry()
            .map_err(|e| RegistryError::Invalid(e.to_string()))?)?;
        self.reconcile(model);
        Ok(done)
    }

    pub fn reconcile(&self, model: &str) {
        let _one_at_a_time = self.reconciling.lock().unwrap_or_else(|e| e.into_inner());
        match self.build_live(model) {
            Ok(Some(live)) => {
                let before = self.live(model);
                let changed = before.as_ref().is_none_or(|b| {
                    versions_of(b) != versions_of(&live) || b.deployment != live.deployment
                });
                self.live
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(model.to_string(), Arc::new(live));
                self.problems
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(model);
                if changed && before.is_some() {
                    self.metrics.swaps.with_label_values(&[model]).inc();
                    tracing::info!(model, "swapped live versions");
                }
            }
            Ok(None) => {
                self.live
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(model);
                self.problems
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(model);
            }
            Err(e) => {
                // Nothing to route to (the alias is gone): stop answering. A version that
                // fails to load leaves the routes that work in place.
                if matches!(
                    e,
                    ServeError::NotReady(_) | ServeError::Registry(RegistryError::NotFound { .. })
                ) {
                    self.live
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(model);
                }
                tracing::warn!(model, error = %e, "model is not live");
                self.problems
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(model.to_string(), e.to_string());
            }
        }
        self.evict();
    }

    fn build_live(&self, model: &str) -> Result<Option<Live>, ServeError> {
        if !self.serves(model) {
            return Ok(None);
        }
        let (deployment, aliases) = match (&self.registry, &self.remote) {
            (Some(registry), _) => (registry.deployment(model)?, registry.aliases(model)?),
            (None, Some(r)) => {
                let detail = r.client.model(model)?;
                (detail.deployment, detail.aliases)
            }
            (None, None) => (
                Deployment::default_for(model),
                BTreeMap::from([("champion".to_string(), 1)]),
            ),
        };
        let mut routes = Vec::new();
        for r in &deployment.routes {
            let version = self.resolve(model, &r.target).map_err(|e| match e {
                ServeError::Registry(RegistryError::NotFound { .. }) if r.target == "champion" => {
                    ServeError::NotReady(format!(
                        "model `{model}` has no `champion` yet; promote a version to make \
                         it serve (`kiln models promote {model} VERSION`, with --server URL \
                         while this server runs) or route it with `kiln deploy`"
                    ))
                }
                e => e,
            })?;
            let version = self.load(model, version)?;
            let batcher = match deployment.batching {
                Some(b) => {
                    let runtime = version.runtime.clone();
                    let forward: Forward = Arc::new(move |f| runtime.forward(f));
                    let histogram = self
                        .metrics
                        .batch_rows
                        .with_label_values(&[model, &version.label]);
                    let on_batch: OnBatch = Arc::new(move |n| histogram.observe(n as f64));
                    Some(Batcher::start(
                        forward,
                        version.runtime.width(),
                        b.max_batch,
                        Duration::from_micros(b.max_delay_us),
                        on_batch,
                    )?)
                }
                None => None,
            };
            routes.push(Route {
                target: r.target.clone(),
                percent: r.percent,
                version,
                batcher,
            });
        }
        let shadow = match &deployment.shadow {
            Some(t) => Some(self.load(model, self.resolve(model, t)?)?),
            None => None,
        };
        Ok(Some(Live {
            deployment,
            routes,
            shadow,
            aliases,
        }))
    }

    /// Follows the registry's change feed on this thread until the registry stops sending:
    /// an alias move, a deployment change or a new or deleted version of a served model
    /// reconciles that model.
    pub fn follow(self: &Arc<Self>) {
        if self.remote.is_some() {
            return self.follow_remote();
        }
        let Some(registry) = &self.registry else {
            return;
        };
        let events = registry.watch();
        let models = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kiln-hot-swap".into())
            .spawn(move || {
                for event in events {
                    let Some(models) = models.upgrade() else {
                        return;
                    };
                    let model = match &event {
                        RegistryEvent::AliasMoved(e) => &e.model,
                        RegistryEvent::VersionCreated { model, .. }
                        | RegistryEvent::VersionDeleted { model, .. }
                        | RegistryEvent::DeploymentChanged { model } => model,
                    };
                    if let RegistryEvent::VersionDeleted { model, version } = &event {
                        models
                            .extra
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .retain(|(m, v)| !(m == model && v == version));
                    }
                    models.feed.push(model);
                    if models.serves(model) || models.live(model).is_some() {
                        models.reconcile(model);
                    }
                }
            })
            .unwrap_or_else(|e| panic!("starting the hot-swap thread: {e}"));
    }
}

impl Models {
    /// A replica follows the central server's change feed: each changed model is reconciled;
    /// when the server was unreachable, restarted or is too far ahead, every model is re-read.
    /// While it is unreachable the replica keeps serving what it has and retries.
    fn follow_remote(self: &Arc<Self>) {
        let models = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kiln-replica".into())
            .spawn(move || {
                let mut cursor: Option<(u64, u64)> = None;
                let mut pause = Duration::from_millis(100);
                loop {
                    let Some(m) = models.upgrade() else {
                        return;
                    };
                    let Some(remote) = &m.remote else {
                        return;
                    };
                    if cursor.is_some() {
                        // Connected at the last answer: a long poll that is open counts as
                        // contact until it fails.
                        *remote.contact.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    }
                    match remote.client.changes(cursor, 20) {
                        Ok(changes) => {
                            *remote.contact.lock().unwrap_or_else(|e| e.into_inner()) =
                                Instant::now();
                            pause = Duration::from_millis(100);
                            let everything = changes.resync;
                            cursor = Some((changes.epoch, changes.seq));
                            if everything {
                                if let Err(e) = m.refresh_names() {
                                    tracing::warn!(error = %e, "re-reading the central registry");
                                    cursor = None;
                                    continue;
                                }
                                for name in m.names().unwrap_or_default() {
                                    m.reconcile(&name);
                                }
                            } else {
                                for name in &changes.models {
                                    let new = !m.serves(name);
                                    if new && matches!(m.selection, Selection::All) {
                                        let _ = m.refresh_names();
                                    }
                                    if m.serves(name) || m.live(name).is_some() {
                                        m.reconcile(name);
                                    }
                                    // A model that no longer routes may be gone: re-read the
                                    // names, so that readiness does not wait for it.
                                    if m.live(name).is_none() {
                                        let _ = m.refresh_names();
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the central registry does not answer; serving what is loaded");
                            cursor = None;
                            drop(m);
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            })
            .unwrap_or_else(|e| panic!("starting the replica thread: {e}"));
    }
}

fn versions_of(live: &Live) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = live
        .routes
        .iter()
        .map(|r| (r.version.version, r.percent))
        .collect();
    v.extend(live.shadow.as_ref().map(|s| (s.version, 0)));
    v
}
