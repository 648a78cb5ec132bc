//! `kiln serve` (the model server on a socket) and `kiln models deploy` (traffic split, shadow
//! and batching of a model, in the registry or through a running server's API).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_core::registry::{Batching, Deployment, Registry, Route};
use kiln_server::{Listeners, Selection, ServerConfig};

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::remote::Server;
use crate::ui;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Also answer the Open Inference Protocol V2 over gRPC (`inference.GRPCInferenceService`,
    /// as Triton and KServe do) on this address, e.g. 127.0.0.1:8081; off unless given.
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Serve only these models (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    models: Vec<String>,
    /// Serve this one bundle directory (`kiln models export` writes one) with no registry and
    /// no state: the shape of a container given its model as a volume, as KServe's
    /// `storageUri` does. KILN_HOME is not opened; the management API answers 404.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["models", "all", "backup_every"])]
    bundle: Option<std::path::PathBuf>,
    /// The name the bundle answers to (with --bundle); the directory's name by default.
    #[arg(long, requires = "bundle")]
    name: Option<String>,
    /// Serve as a stateless replica of the central kiln at this URL: its models, aliases and
    /// deployments read over its API and followed as they change, bundles fetched once (their
    /// digests checked) into --cache. KILN_HOME is not opened; while the central server is
    /// away the replica serves what it has, and `kiln_registry_staleness_seconds` in /metrics
    /// says for how long.
    #[arg(long, value_name = "URL", conflicts_with_all = ["bundle", "backup_every"])]
    registry: Option<String>,
    /// The central server's token, when it protects reads (with --registry).
    #[arg(
        long,
        env = "KILN_REGISTRY_TOKEN",
        hide_env_values = true,
        requires = "registry"
    )]
    registry_token: Option<String>,
    /// Where a replica keeps the bundles it fetched (with --registry; a temporary directory,
    /// removed at exit, by default).
    #[arg(long, value_name = "DIR", requires = "registry")]
    cache: Option<std::path::PathBuf>,
    /// Serve every registered model, including those registered while running (the default).
    #[arg(long)]
    all: bool,
    /// Require `Authorization: Bearer TOKEN` for management calls that change state (and a
    /// login for the web UI's actions). Needed to listen on an address other than loopback.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Require the token for inference, metadata and metrics too (health stays open).
    #[arg(long)]
    protect_reads: bool,
    /// Listen on a non-loopback address without a token: anyone who reaches the port may move
    /// aliases, change traffic and run pipelines.
    #[arg(long)]
    insecure_no_auth: bool,
    /// A host name browsers and clients may use to reach this kiln, besides IP addresses and
    /// `localhost` (repeatable; `*` allows any name and gives up the DNS-rebinding check).
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// The largest artifact file accepted by `PUT /api/artifacts/{digest}`, in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_upload: u64,
    /// Where backups of the registry go (`POST /api/registry/backups`, `kiln registry backup
    /// --server`, `--backup-every`); KILN_HOME/backups by default.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<std::path::PathBuf>,
    /// Take a backup this often (e.g. 1h), into the backup directory.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    backup_every: Option<Duration>,
    /// How many backups to keep in the backup directory (the oldest go first).
    #[arg(long, default_value_t = 24)]
    backup_keep: usize,
    /// Requests handled at once (health checks aside); more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// How long a request may take before it is answered with 408 (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The share of requests logged to KILN_HOME/predictions and watched for drift (0: off).
    #[arg(long, default_value_t = 0.1)]
    log_sample: f64,
    /// The most rows logged per second (0: no limit), which bounds the log's cost at any load.
    #[arg(long, default_value_t = 5_000)]
    log_max_rows: u64,
    /// Rows in each served version's drift window.
    #[arg(long, default_value_t = 10_000)]
    drift_window: usize,
    /// Drift thresholds (TOML): psi, js, linf, unseen, missing, min_rows at the top, and
    /// `[features.NAME]` tables for single features.
    #[arg(long)]
    drift_thresholds: Option<std::path::PathBuf>,
}

/// Reads a drift thresholds file: defaults at the top (over kiln's), then per feature (over
/// those).
pub fn read_thresholds(
    path: &std::path::Path,
) -> Result<(
    kiln_server::drift::Thresholds,
    std::collections::BTreeMap<String, kiln_server::drift::Thresholds>,
)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| path.display().to_string())?;
    let features = table.remove("features");
    let merge = |base: toml::Table,
                 over: &toml::Table|
     -> Result<(kiln_server::drift::Thresholds, toml::Table)> {
        let mut merged = base;
        for (k, v) in over {
            merged.insert(k.clone(), v.clone());
        }
        let t: kiln_server::drift::Thresholds = toml::Value::Table(merged.clone())
            .try_into()
            .with_context(|| format!("{}: thresholds", path.display()))?;
        Ok((t, merged))
    };
    let base = toml::Table::try_from(kiln_server::drift::Thresholds::default())
        .context("default thresholds")?;
    let (defaults, default_table) = merge(base, &table)?;
    let mut per = std::collections::BTreeMap::new();
    if let Some(f) = features {
        let f = f
            .as_table()
            .ok_or_else(|| anyhow::anyhow!("{}: `features` must be tables", path.display()))?;
        for (name, t) in f {
            let t = t.as_table().ok_or_else(|| {
                anyhow::anyhow!("{}: `features.{name}` must be a table", path.display())
            })?;
            per.insert(name.clone(), merge(default_table.clone(), t)?.0);
        }
    }
    Ok((defaults, per))
}

impl ServeArgs {
    /// Takes a backup every `--backup-every` until the process ends.
    pub fn start_backups(&self, registry: Arc<Registry>, home: &Home) {
        let Some(every) = self.backup_every else {
            return;
        };
        let dir = self.backup_dir(home);
        let keep = self.backup_keep;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (registry, dir) = (registry.clone(), dir.clone());
                match tokio::task::spawn_blocking(move || registry.backup_into(&dir, Some(keep)))
                    .await
                {
                    Ok(Ok(s)) => {
                        tracing::info!(dir = %s.dir.display(), records = s.records, artifacts = s.artifacts, "registry backed up")
                    }
                    Ok(Err(e)) => tracing::error!("registry backup failed: {e}"),
                    Err(e) => tracing::error!("registry backup stopped: {e}"),
                }
            }
        });
    }

    fn backup_dir(&self, home: &Home) -> std::path::PathBuf {
        self.backup_dir
            .clone()
            .unwrap_or_else(|| home.dir.join("backups"))
    }

    /// The models to serve and the server's settings.
    pub fn parts(&self, home: &Home) -> Result<(Selection, ServerConfig)> {
        if !(0.0..=1.0).contains(&self.log_sample) {
            bail!("--log-sample {} must be between 0 and 1", self.log_sample);
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!(
                "the token (--token or KILN_TOKEN) is empty; give a real one (e.g. `openssl rand -hex 32`) or leave both unset"
            );
        }
        if self.protect_reads && self.token.is_none() {
            bail!(
                "--protect-reads needs a token to protect them with: add --token or set KILN_TOKEN"
            );
        }
        // A server of one bundle changes nothing (it has no registry, aliases or pipelines),
        // so, like a model container behind KServe, it may listen beyond loopback untokened.
        if self.token.is_none()
            && !self.addr.ip().is_loopback()
            && self.bundle.is_none()
            && self.registry.is_none()
        {
            if !self.insecure_no_auth {
                bail!(
                    "{} is reachable from other machines and there is no token: anyone who reaches it could move aliases, change traffic and run pipelines; set --token (or KILN_TOKEN), listen on 127.0.0.1, or pass --insecure-no-auth if a proxy in front of kiln authenticates",
                    self.addr
                );
            }
            tracing::warn!(addr = %self.addr, "listening beyond loopback with no token (--insecure-no-auth): every action is open to whoever reaches this port");
        }
        if let Some(grpc) = self.grpc_addr
            && grpc == self.addr
            && grpc.port() != 0
        {
            bail!(
                "--grpc-addr {grpc} is the HTTP address too; give gRPC a port of its own (e.g. {})",
                SocketAddr::new(grpc.ip(), grpc.port().wrapping_add(1))
            );
        }
        let selection = if self.models.is_empty() {
            Selection::All
        } else {
            Selection::Only(self.models.iter().cloned().collect::<BTreeSet<_>>())
        };
        let config = ServerConfig {
            token: self.token.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            max_inflight: self.max_inflight,
            backup_dir: Some(self.backup_dir(home)),
            backup_keep: Some(self.backup_keep),
            protect_reads: self.protect_reads,
            max_body: self.max_body,
            max_upload: self.max_upload,
            timeout: self.timeout,
            actor: std::env::var("USER").unwrap_or_else(|_| "kiln-server".into()),
            log: kiln_server::predlog::LogConfig {
                sample: self.log_sample,
                max_rows_per_s: self.log_max_rows,
                window: self.drift_window,
                ..Default::default()
            },
        };
        let mut config = config;
        if let Some(path) = &self.drift_thresholds {
            let (defaults, per) = read_thresholds(path)?;
            config.log.thresholds = defaults;
            config.log.feature_thresholds = per;
        }
        Ok((selection, config))
    }
}

impl ServeArgs {
    /// Binds the HTTP address and the gRPC one, if any.
    pub async fn bind(&self) -> Result<Listeners> {
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))
        };
        let http = bind(self.addr).await?;
        let grpc = match self.grpc_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { http, grpc })
    }
}

/// Prints where the server answers, which models are live, and why the others are not.
pub fn announce(state: &kiln_server::AppState, listeners: &Listeners, what: &str) -> Result<()> {
    let names = state.models.names()?;
    let live = names
        .iter()
        .filter(|n| state.models.live(n).is_some())
        .count();
    let addr = listeners.http.local_addr()?;
    crate::ui::status(&format!(
        "{what} serving {live} of {} models on http://{addr} (V2 /v2, TF Serving /v1, MLflow /invocations, /api, /metrics)",
        names.len()
    ));
    if let Some(grpc) = &listeners.grpc {
        crate::ui::status(&format!(
            "{what} V2 over gRPC (inference.GRPCInferenceService) on {}",
            grpc.local_addr()?
        ));
    }
    for name in &names {
        if let Some(problem) = state.models.problem(name) {
            crate::ui::status(&format!("  {name}: not live: {problem}"));
        }
    }
    Ok(())
}

/// A multi-threaded async runtime whose worker threads (named `name`) are marked as such, so
/// that blocking work reached on one panics in debug builds (`kiln_core::threads`).
pub fn async_runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .on_thread_park(kiln_core::threads::mark_async_worker)
        .on_thread_unpark(kiln_core::threads::mark_async_worker)
        .build()
        .context("starting the async runtime")
}

pub fn serve(home: &Home, args: ServeArgs) -> Result<Outcome> {
    pin_compute_threads()?;
    if let Some(dir) = args.bundle.clone() {
        return serve_bundle(home, args, dir);
    }
    if let Some(url) = args.registry.clone() {
        return serve_replica(home, args, url);
    }
    let registry = Arc::new(Registry::open(&home.dir)?);
    let (selection, config) = args.parts(home)?;
    let runtime = async_runtime("kiln-http")?;
    runtime.block_on(async move {
        args.start_backups(registry.clone(), home);
        let state = kiln_server::start(registry, selection, config).await?;
        let listeners = args.bind().await?;
        announce(&state, &listeners, "kiln")?;
        let models = state.models.clone();
        let router = kiln_server::router(state.clone());
        kiln_server::serve_all(listeners, router, state, shutdown_signal()).await?;
        tokio::task::spawn_blocking(move || models.flush_log()).await?;
        crate::ui::status("kiln server stopped");
        anyhow::Ok(())
    })?;
    Ok(Outcome::Ok)
}

/// `kiln serve --registry URL`: a stateless replica of a central kiln.
fn serve_replica(home: &Home, args: ServeArgs, url: String) -> Result<Outcome> {
    let (selection, mut config) = args.parts(home)?;
    // A replica has no home to log to; the central server keeps the record.
    config.log.sample = 0.0;
    config.backup_dir = None;
    let scratch = tempfile::tempdir().context("creating the bundle cache")?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let token = args.registry_token.clone();
    let runtime = async_runtime("kiln-http")?;
    runtime.block_on(async move {
        let state = kiln_server::start_remote(&url, token, cache, selection, config)
            .await
            .with_context(|| format!("following the central kiln at {url}"))?;
        let listeners = args.bind().await?;
        announce(&state, &listeners, "kiln replica")?;
        let router = kiln_server::router(state.clone());
        kiln_server::serve_all(listeners, router, state, shutdown_signal()).await?;
        crate::ui::status("kiln replica stopped");
        anyhow::Ok(())
    })?;
    drop(scratch);
    Ok(Outcome::Ok)
}

/// `kiln serve --bundle DIR`: one bundle, no registry, nothing written.
fn serve_bundle(home: &Home, args: ServeArgs, dir: std::path::PathBuf) -> Result<Outcome> {
    if !dir.join(kiln_core::bundle::MANIFEST_FILE).is_file() {
        bail!(
            "{} is not a kiln bundle (no {}); `kiln models export NAME -o DIR` writes one, and \
             `kiln models import` makes one of an ONNX file",
            dir.display(),
            kiln_core::bundle::MANIFEST_FILE
        );
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string()),
    };
    if let Err(e) = kiln_core::registry::check_model_name(&name) {
        match &args.name {
            Some(_) => return Err(e.into()),
            None => bail!("{e}; the bundle's directory names it, so give one with --name NAME"),
        }
    }
    let (_, mut config) = args.parts(home)?;
    // Nothing to write to: no prediction log, no backups.
    config.log.sample = 0.0;
    config.backup_dir = None;
    let runtime = async_runtime("kiln-http")?;
    runtime.block_on(async move {
        let state = kiln_server::start_bundle(&name, dir, config).await?;
        let listeners = args.bind().await?;
        announce(&state, &listeners, "kiln")?;
        let router = kiln_server::router(state.clone());
        kiln_server::serve_all(listeners, router, state, shutdown_signal()).await?;
        crate::ui::status("kiln server stopped");
        anyhow::Ok(())
    })?;
    Ok(Outcome::Ok)
}

/// candle 0.11 asks for its thread count on every matrix product, and unless `RAYON_NUM_THREADS`
/// is set that means reading the CPU topology from `/proc`: 30 µs per call, 14 times the whole
/// forward pass of a one-row request (`cargo bench -p kiln-server --bench predict`). The
/// variable can only be set safely before the process starts, so `kiln serve` starts itself
/// again (same process id, same arguments) with it set to the machine's parallelism, which is
/// rayon's own default.
pub fn pin_compute_threads() -> Result<()> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let exe = std::env::current_exe().context("finding the kiln executable")?;
        let e = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("RAYON_NUM_THREADS", threads.to_string())
            .exec();
        tracing::warn!(error = %e, "could not restart with RAYON_NUM_THREADS set; small requests will be slower");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    crate::ui::status("shutting down: finishing requests in flight");
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The model whose traffic to route.
    name: String,
    /// Traffic split as TARGET=PERCENT pairs, targets being aliases or versions, e.g.
    /// champion=90,challenger=10 or 3=50,4=50. Default: champion=100.
    #[arg(long, value_delimiter = ',')]
    split: Vec<String>,
    /// An alias or version that gets a copy of the traffic; its answers are only compared.
    #[arg(long)]
    shadow: Option<String>,
    /// Merge concurrent requests into batches of up to this many rows.
    #[arg(long)]
    batch: Option<usize>,
    /// How long the first request of a batch waits for more, in microseconds.
    #[arg(long, default_value_t = 500, requires = "batch")]
    batch_delay_us: u64,
    /// Remove the deployment: all traffic to `champion`, no shadow, no batching.
    #[arg(long, conflicts_with_all = ["split", "shadow", "batch"])]
    reset: bool,
    /// Write the model's current deployment as manifests instead of changing it: a KServe
    /// ClusterServingRuntime and InferenceService, or a Kubernetes Deployment, Service,
    /// HorizontalPodAutoscaler and PodDisruptionBudget, each pod a `kiln serve --bundle`; the
    /// bundles go beside them under `bundles/`.
    #[arg(
        long,
        value_enum,
        requires_all = ["output", "image"],
        conflicts_with_all = ["split", "shadow", "batch", "reset"]
    )]
    export: Option<crate::cmd::manifests::Target>,
    /// The new directory for the manifests and bundles (with --export).
    #[arg(short, long, requires = "export")]
    output: Option<std::path::PathBuf>,
    /// The kiln container image the cluster pulls (with --export).
    #[arg(long, requires = "export")]
    image: Option<String>,
    /// Where the cluster reads the bundles written under `bundles/` (with --export kserve),
    /// e.g. s3://models/kiln; each InferenceService reads `URI/NAME/VERSION`.
    #[arg(long, requires = "export")]
    storage_uri: Option<String>,
    /// The PersistentVolumeClaim holding `bundles/` (with --export kubernetes; NAME-models by
    /// default), mounted read-only at /models.
    #[arg(long, requires = "export")]
    volume_claim: Option<String>,
    /// The central kiln the exported pods follow as replicas (`kiln serve --registry URL`;
    /// with --export kubernetes), instead of a bundle on a volume. Its token, if reads need
    /// one, comes from the Secret NAME-registry-token.
    #[arg(
        long = "registry",
        value_name = "URL",
        requires = "export",
        conflicts_with = "volume_claim"
    )]
    follow: Option<String>,
    /// Pods at least (with --export).
    #[arg(long, default_value_t = 2)]
    min_replicas: u32,
    /// Pods at most, as the autoscaler scales (with --export).
    #[arg(long, default_value_t = 8)]
    max_replicas: u32,
    /// Change a running server through its API instead of the registry (which it owns).
    #[command(flatten)]
    server: Server,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_split(split: &[String]) -> Result<Vec<Route>> {
    if split.is_empty() {
        return Ok(vec![Route {
            target: "champion".into(),
            percent: 100,
        }]);
    }
    split
        .iter()
        .map(|s| s.parse().map_err(|e| anyhow::anyhow!("--split {e}")))
        .collect()
}

pub fn deploy(home: &Home, args: DeployArgs) -> Result<Outcome> {
    if let (Some(target), Some(dir), Some(image)) = (args.export, &args.output, &args.image) {
        if args.min_replicas == 0 || args.max_replicas < args.min_replicas {
            bail!(
                "--min-replicas {} and --max-replicas {}: at least one pod, and a maximum no \
                 smaller than the minimum",
                args.min_replicas,
                args.max_replicas
            );
        }
        let options = crate::cmd::manifests::Options {
            target,
            dir: dir.clone(),
            image: image.clone(),
            storage_uri: args.storage_uri.clone(),
            volume_claim: args.volume_claim.clone(),
            registry: args.follow.clone(),
            min_replicas: args.min_replicas,
            max_replicas: args.max_replicas,
        };
        let backend = args.server.backend(home)?;
        let (written, notes) =
            crate::cmd::manifests::export(backend.as_ref(), &args.name, &options)?;
        if args.json {
            ui::print_json(&serde_json::json!({ "written": written, "notes": notes }))?;
        } else {
            for path in &written {
                println!("wrote {}", path.display());
            }
            for note in &notes {
                println!("note: {note}");
            }
        }
        return Ok(Outcome::Ok);
    }
    let deployment = Deployment {
        model: args.name.clone(),
        routes: parse_split(&args.split)?,
        shadow: args.shadow.clone(),
        batching: args.batch.map(|max_batch| Batching {
            max_batch,
            max_delay_us: args.batch_delay_us,
        }),
        updated_ms: 0,
        updated_by: String::new(),
    };
    let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let backend = args.server.backend(home)?;
    let d = if args.reset {
        backend.reset_deployment(&args.name)?
    } else {
        backend.set_deployment(deployment, &by)?
    };
    if args.json {
        ui::print_json(&d)?;
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = d
        .routes
        .iter()
        .map(|r| vec![r.target.clone(), format!("{}%", r.percent)])
        .collect();
    println!("{}", ui::table(&["target", "traffic"], rows, &[1]));
    if let Some(s) = &d.shadow {
        println!("shadow: {s} (gets a copy of every request; its answers are only compared)");
    }
    if let Some(b) = d.batching {
        println!(
            "batching: up to {} rows, waiting at most {} µs",
            b.max_batch, b.max_delay_us
        );
    }
    Ok(Outcome::Ok)
}
