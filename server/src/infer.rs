//! The one inference path every protocol shares: route the request to a version, decode and
//! transform its rows and run the network on a blocking thread (or through the version's batch
//! queue), copy it to the shadow version, and count it.

use std::sync::Arc;
use std::time::Instant;

use crate::error::ServeError;
use crate::models::Models;
use crate::runtime::{Features, Rows, Runtime};
use crate::version::Version;

/// Outputs of one request.
pub struct Prediction {
    pub version: Arc<Version>,
    pub rows: usize,
    /// Numbers per row: class probabilities, or one value.
    pub width: usize,
    pub values: Vec<f32>,
}

impl Prediction {
    /// The most probable class of each row (classification only).
    pub fn labels(&self) -> Option<Vec<&str>> {
        let labels = &self.version.runtime.manifest().labels;
        if labels.is_empty() {
            return None;
        }
        Some(
            self.values
                .chunks(self.width)
                .map(|row| labels.get(argmax(row)).map_or("", String::as_str))
                .collect(),
        )
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

/// Runs one request for `model`: the live routes when `which` is `None`, else the alias or
/// version it names. `decode` turns the request body into rows for the chosen version (it runs on
/// a blocking thread, so parsing happens there too) and returns whatever the response needs.
pub async fn predict<T: Send + 'static>(
    models: &Arc<Models>,
    model: &str,
    which: Option<&str>,
    protocol: &'static str,
    decode: impl FnOnce(&Runtime) -> Result<(Rows, T), ServeError> + Send + 'static,
) -> Result<(Prediction, T), ServeError> {
    let started = Instant::now();
    let (version, batcher, shadow) = route(models, model, which).await?;
    let v = version.clone();
    let log = models.log().filter(|l| l.sampled());
    let keep_rows = shadow.is_some() || log.is_some();
    let step = crate::compute::run(move || -> Result<_, ServeError> {
        let (rows, extra) = decode(&v.runtime)?;
        let features = v.runtime.features(&rows)?;
        let n = rows.rows;
        let rows = keep_rows.then_some(rows);
        match batcher {
            Some(b) => Ok((n, Step::Queue(features, b), rows, extra)),
            None => Ok((n, Step::Done(v.runtime.forward(&features)?), rows, extra)),
        }
    })
    .await??;
    let (n, step, rows, extra) = step;
    let values = match step {
        Step::Done(values) => values,
        Step::Queue(features, b) => b.submit(features).await?,
    };
    version.metrics.answered(protocol);
    version.metrics.rows.inc_by(n as u64);
    version
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    match (shadow, log, rows) {
        (Some(shadow), Some(log), Some(rows)) => {
            log.offer(version.clone(), rows.clone(), values.clone());
            copy_to_shadow(models.clone(), shadow, rows, values.clone());
        }
        (Some(shadow), None, Some(rows)) => {
            copy_to_shadow(models.clone(), shadow, rows, values.clone());
        }
        (None, Some(log), Some(rows)) => log.offer(version.clone(), rows, values.clone()),
        _ => {}
    }
    Ok((
        Prediction {
            width: version.runtime.width(),
            version,
            rows: n,
            values,
        },
        extra,
    ))
}

enum Step {
    Done(Vec<f32>),
    Queue(Features, crate::batch::Batcher),
}

type Routed = (
    Arc<Version>,
    Option<crate::batch::Batcher>,
    Option<Arc<Version>>,
);

async fn route(
    models: &Arc<Models>,
    model: &str,
    which: Option<&str>,
) -> Result<Routed, ServeError> {
    match which {
        None => match models.live(model) {
            Some(live) => {
                let r = live.pick(crate::roll::percent());
                Ok((r.version.clone(), r.batcher.clone(), live.shadow.clone()))
            }
            None => Err(not_live(models, model).await),
        },
        Some(which) => {
            let version = match models.cached(model, which) {
                Some(v) => v,
                None => load_once(models, model, which).await?,
            };
            let batcher = models.live(model).and_then(|live| {
                live.routes
                    .iter()
                    .find(|r| r.version.version == version.version)
                    .and_then(|r| r.batcher.clone())
            });
            Ok((version, batcher, None))
        }
    }
}

/// Versions loaded at once for requests that name them; more wait their turn.
const LOADS_AT_ONCE: usize = 2;

/// Loads an explicitly named version for a request: concurrent requests for the same one wait
/// for a single load, and at most [`LOADS_AT_ONCE`] loads run at a time.
async fn load_once(
    models: &Arc<Models>,
    model: &str,
    which: &str,
) -> Result<Arc<Version>, ServeError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, Weak};
    type Loads = Mutex<HashMap<(String, String), Weak<tokio::sync::Mutex<()>>>>;
    static LOADS: OnceLock<Loads> = OnceLock::new();
    static AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOADS_AT_ONCE);
    let key = (model.to_string(), which.to_string());
    let gate = {
        let mut loads = LOADS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loads.retain(|_, w| w.strong_count() > 0);
        match loads.get(&key).and_then(Weak::upgrade) {
            Some(g) => g,
            None => {
                let g = Arc::new(tokio::sync::Mutex::new(()));
                loads.insert(key, Arc::downgrade(&g));
                g
            }
        }
    };
    let _turn = gate.lock().await;
    if let Some(v) = models.cached(model, which) {
        return Ok(v);
    }
    let _permit = AT_ONCE
        .acquire()
        .await
        .map_err(|e| ServeError::Internal(format!("loading: {e}")))?;
    let (m, w, name) = (models.clone(), which.to_string(), model.to_string());
    tokio::task::spawn_blocking(move || m.version(&name, &w))
        .await
        .map_err(|e| ServeError::Internal(format!("loading task: {e}")))?
}

/// Why a bare model name has no live version: unknown, or known but not ready.
pub async fn not_live(models: &Arc<Models>, model: &str) -> ServeError {
    let (m, name) = (models.clone(), model.to_string());
    tokio::task::spawn_blocking(move || {
        if !m.serves(&name) {
            m.unknown(&name)
        } else if let Some(problem) = m.problem(&name) {
            ServeError::NotReady(problem)
        } else {
            ServeError::NotReady(format!("model `{name}` is loading; try again shortly"))
        }
    })
    .await
    .unwrap_or_else(|e| ServeError::Internal(format!("registry task: {e}")))
}

/// Runs the shadow version on the same rows off the response path and records whether it
/// agreed with the live answer on every row.
fn copy_to_shadow(models: Arc<Models>, shadow: Arc<Version>, rows: Rows, live: Vec<f32>) {
    let (model, label) = (shadow.model.clone(), shadow.label.clone());
    let all = models.clone();
    let queued = crate::compute::run_detached(move || {
        let metrics = models.metrics();
        let labels = [shadow.model.as_str(), shadow.label.as_str()];
        metrics.shadow_requests.with_label_values(&labels).inc();
        match shadow.runtime.predict(&rows) {
            Ok(out) => {
                let width = shadow.runtime.width();
                let classify = !shadow.runtime.manifest().labels.is_empty();
                let agree = out.len() == live.len()
                    && out.chunks(width).zip(live.chunks(width)).all(|(a, b)| {
                        if classify {
                            argmax(a) == argmax(b)
                        } else {
                            (a[0] - b[0]).abs() <= 1e-3 * a[0].abs().max(1.0)
                        }
                    });
                if agree {
                    metrics.shadow_agreements.with_label_values(&labels).inc();
                }
            }
            Err(e) => {
                tracing::warn!(model = %shadow.model, version = shadow.version, error = %e, "shadow request failed")
            }
        }
    });
    if !queued {
        all.metrics()
            .shadow_skipped
            .with_label_values(&[model.as_str(), label.as_str()])
            .inc();
    }
}
