//! The prediction log: a sample of requests and their answers per served version, written to
//! bounded files in `KILN_HOME/predictions/MODEL/VERSION/` and fed to the version's drift
//! window. The request path only samples and offers (a bounded queue; when full the sample is
//! dropped and counted, never waited for); a thread of its own does the rest.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use kiln_core::transform::Cell;

use crate::drift::Thresholds;
use crate::metrics::Metrics;
use crate::models::Version;
use crate::runtime::Rows;

/// How requests are logged and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// The share of requests logged, `0.0..=1.0` (0 turns logging and drift off).
    pub sample: f64,
    /// Samples waiting for the log's thread; beyond it they are dropped.
    pub queue: usize,
    /// Bytes of log files kept per version (two files of half this, the older replaced).
    pub max_bytes: u64,
    /// Rows in each version's drift window.
    pub window: usize,
    pub thresholds: Thresholds,
    /// Thresholds of single features (by column name; the target's name for the prediction).
    pub feature_thresholds: std::collections::BTreeMap<String, Thresholds>,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            sample: 1.0,
            queue: 4096,
            max_bytes: 64 << 20,
            window: 10_000,
            thresholds: Thresholds::default(),
            feature_thresholds: std::collections::BTreeMap::new(),
        }
    }
}

struct Sample {
    version: Arc<Version>,
    rows: Rows,
    outputs: Vec<f32>,
    at_ms: i64,
}

/// The request path's side of the log.
pub struct PredictionLog {
    tx: SyncSender<Sample>,
    sample: f64,
    metrics: Arc<Metrics>,
}

impl PredictionLog {
    /// Starts the log's thread, writing under `dir`.
    pub fn start(dir: PathBuf, config: &LogConfig, metrics: Arc<Metrics>) -> PredictionLog {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let max_bytes = config.max_bytes;
        let m = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-predlog".into())
            .spawn(move || write_loop(&rx, &dir, max_bytes, &m));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the prediction log");
        }
        PredictionLog {
            tx,
            sample: config.sample.clamp(0.0, 1.0),
            metrics,
        }
    }

    /// Whether this request is sampled.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0
            || (self.sample > 0.0
                && f64::from(crate::infer::roll_permille()) < self.sample * 1000.0)
    }

    /// Offers a sampled request; drops it (counted) when the queue is full.
    pub fn offer(&self, version: Arc<Version>, rows: Rows, outputs: Vec<f32>) {
        let model = version.model.clone();
        let sample = Sample {
            version,
            rows,
            outputs,
            at_ms: now_ms(),
        };
        match self.tx.try_send(sample) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.log_dropped.with_label_values(&[&model]).inc();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct File {
    out: std::io::BufWriter<std::fs::File>,
    bytes: u64,
    dir: PathBuf,
}

fn open(dir: &std::path::Path) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("current.jsonl");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let bytes = f.metadata().map_or(0, |m| m.len());
    Ok(File {
        out: std::io::BufWriter::new(f),
        bytes,
        dir: dir.to_path_buf(),
    })
}

fn write_loop(rx: &Receiver<Sample>, root: &std::path::Path, max_bytes: u64, metrics: &Metrics) {
    let mut files: HashMap<(String, u32), File> = HashMap::new();
    let mut broken: HashMap<(String, u32), String> = HashMap::new();
    loop {
        let sample = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(s) => s,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for f in files.values_mut() {
                    let _ = f.out.flush();
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let v = &sample.version;
        let width = v.runtime.width();
        v.monitor.observe(&sample.rows, &sample.outputs, width);
        metrics
            .logged
            .with_label_values(&[&v.model, &v.label])
            .inc();
        let key = (v.model.clone(), v.version);
        if broken.contains_key(&key) {
            continue;
        }
        if !files.contains_key(&key) {
            match open(&root.join(&v.model).join(&v.label)) {
                Ok(f) => {
                    files.insert(key.clone(), f);
                }
                Err(e) => {
                    tracing::warn!(model = %v.model, version = v.version, error = %e, "prediction log not written");
                    broken.insert(key, e.to_string());
                    continue;
                }
            }
        }
        let Some(file) = files.get_mut(&key) else {
            continue;
        };
        let names: Vec<&str> = v
            .runtime
            .manifest()
            .signature
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let mut text = String::new();
        for r in 0..sample.rows.rows {
            let inputs: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let value = match sample.rows.cell(r, i) {
                        Cell::Missing => serde_json::Value::Null,
                        Cell::Number(x) => serde_json::json!(x),
                        Cell::Text(t) => serde_json::Value::String(t.to_string()),
                    };
                    ((*n).to_string(), value)
                })
                .collect();
            let outputs = sample
                .outputs
                .get(r * width..(r + 1) * width)
                .unwrap_or(&[]);
            let line =
                serde_json::json!({"at_ms": sample.at_ms, "inputs": inputs, "outputs": outputs});
            text.push_str(&line.to_string());
            text.push('\n');
        }
        if file.bytes + text.len() as u64 > max_bytes / 2 {
            // Keep two halves: the current file becomes the previous one, replacing it.
            let _ = file.out.flush();
            let _ = std::fs::rename(
                file.dir.join("current.jsonl"),
                file.dir.join("previous.jsonl"),
            );
            match open(&file.dir.clone()) {
                Ok(f) => *file = f,
                Err(e) => {
                    broken.insert(key.clone(), e.to_string());
                    files.remove(&key);
                    continue;
                }
            }
        }
        if let Err(e) = file.out.write_all(text.as_bytes()) {
            tracing::warn!(model = %v.model, version = v.version, error = %e, "writing the prediction log");
        }
        file.bytes += text.len() as u64;
    }
    for f in files.values_mut() {
        let _ = f.out.flush();
    }
}
