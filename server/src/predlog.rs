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
use crate::runtime::Rows;
use crate::version::Version;

/// How requests are logged and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// The share of requests logged, `0.0..=1.0` (0 turns logging and drift off).
    pub sample: f64,
    /// The most rows logged per second (0: no limit); beyond it sampled requests are skipped,
    /// so the log's cost stays bounded whatever the load and the request sizes.
    pub max_rows_per_s: u64,
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
            sample: 0.1,
            max_rows_per_s: 5_000,
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

enum Message {
    Sample(Sample),
    /// Write out everything offered before this, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The request path's side of the log.
pub struct PredictionLog {
    tx: SyncSender<Message>,
    sample: f64,
    metrics: Arc<Metrics>,
    max_rows_per_s: u64,
    /// The current second (high 32 bits) and the rows logged in it (low 32 bits).
    budget: std::sync::atomic::AtomicU64,
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
            max_rows_per_s: config.max_rows_per_s,
            budget: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether this request is sampled.
    pub fn sampled(&self) -> bool {
        let drawn = self.sample >= 1.0
            || (self.sample > 0.0 && f64::from(crate::roll::permille()) < self.sample * 1000.0);
        drawn && self.budget_left()
    }

    /// Whether this second's row budget is not yet spent (checked before a request keeps its
    /// rows; `offer` takes the rows from it).
    fn budget_left(&self) -> bool {
        if self.max_rows_per_s == 0 {
            return true;
        }
        let current = self.budget.load(std::sync::atomic::Ordering::Relaxed);
        let second = (now_ms() / 1000) as u64 & 0xFFFF_FFFF;
        current >> 32 != second || (current & 0xFFFF_FFFF) < self.max_rows_per_s
    }

    /// Takes `rows` from this second's budget; false when it is spent.
    fn within_budget(&self, rows: usize) -> bool {
        use std::sync::atomic::Ordering;
        if self.max_rows_per_s == 0 {
            return true;
        }
        let second = (now_ms() / 1000) as u64 & 0xFFFF_FFFF;
        let rows = rows as u64;
        let mut current = self.budget.load(Ordering::Relaxed);
        loop {
            let used = if current >> 32 == second {
                current & 0xFFFF_FFFF
            } else {
                0
            };
            if used + rows > self.max_rows_per_s {
                return false;
            }
            let next = (second << 32) | (used + rows);
            match self.budget.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Offers a sampled request; skips it when this second's row budget is spent, and drops it
    /// (counted) when the queue is full.
    pub fn offer(&self, version: Arc<Version>, rows: Rows, outputs: Vec<f32>) {
        if !self.within_budget(rows.rows) {
            return;
        }
        let sample = Sample {
            version,
            rows,
            outputs,
            at_ms: now_ms(),
        };
        match self.tx.try_send(Message::Sample(sample)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Sample(s))) => {
                self.metrics
                    .log_dropped
                    .with_label_values(&[&s.version.model])
                    .inc();
            }
            Err(_) => {}
        }
    }

    /// Writes out everything offered so far (a server that stops calls it, so no logged
    /// request is lost); waits at most `limit`.
    pub fn flush(&self, limit: Duration) {
        let (ack, done) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + limit;
        let mut message = Message::Flush(ack);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
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
    /// `"NAME":` of each signature column, JSON-escaped once.
    keys: Vec<String>,
}

fn open(dir: &std::path::Path, keys: Vec<String>) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("current.jsonl");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let bytes = f.metadata().map_or(0, |m| m.len());
    Ok(File {
        out: std::io::BufWriter::with_capacity(256 << 10, f),
        bytes,
        dir: dir.to_path_buf(),
        keys,
    })
}

/// How often the log's thread wakes to take what the requests left. Waking per request would
/// cost every request a wake-up of this thread; a tick costs none of them anything.
const TICK: Duration = Duration::from_millis(20);

fn write_loop(rx: &Receiver<Message>, root: &std::path::Path, max_bytes: u64, metrics: &Metrics) {
    let mut files: HashMap<(String, u32), File> = HashMap::new();
    let mut broken: HashMap<(String, u32), String> = HashMap::new();
    let mut line = String::new();
    // Written since the last flush, and for how long.
    let mut dirty = false;
    let mut since_flush = Duration::ZERO;
    loop {
        std::thread::sleep(TICK);
        let mut took = 0;
        loop {
            let sample = match rx.try_recv() {
                Ok(Message::Sample(s)) => s,
                Ok(Message::Flush(ack)) => {
                    for f in files.values_mut() {
                        let _ = f.out.flush();
                    }
                    dirty = false;
                    let _ = ack.send(());
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    for f in files.values_mut() {
                        let _ = f.out.flush();
                    }
                    return;
                }
            };
            took += 1;
            write_sample(
                &sample,
                root,
                max_bytes,
                metrics,
                &mut files,
                &mut broken,
                &mut line,
            );
        }
        dirty |= took > 0;
        since_flush += TICK;
        // Flush when the requests pause, and at least every half second while they go on.
        if dirty && (took == 0 || since_flush >= Duration::from_millis(500)) {
            for f in files.values_mut() {
                let _ = f.out.flush();
            }
            dirty = false;
            since_flush = Duration::ZERO;
        }
    }
}

/// JSON text of a number (`null` for what JSON cannot hold).
fn push_number(line: &mut String, x: f64) {
    use std::fmt::Write as _;
    if x.is_finite() {
        let _ = write!(line, "{x}");
    } else {
        line.push_str("null");
    }
}

fn write_sample(
    sample: &Sample,
    root: &std::path::Path,
    max_bytes: u64,
    metrics: &Metrics,
    files: &mut HashMap<(String, u32), File>,
    broken: &mut HashMap<(String, u32), String>,
    line: &mut String,
) {
    use std::fmt::Write as _;
    let v = &sample.version;
    let width = v.runtime.width();
    v.monitor.observe(&sample.rows, &sample.outputs, width);
    metrics
        .logged
        .with_label_values(&[&v.model, &v.label])
        .inc();
    let key = (v.model.clone(), v.version);
    if broken.contains_key(&key) {
        return;
    }
    if !files.contains_key(&key) {
        let keys = v
            .runtime
            .manifest()
            .signature
            .iter()
            .map(|c| format!("{}:", serde_json::Value::String(c.name.clone())))
            .collect();
        match open(&root.join(&v.model).join(&v.label), keys) {
            Ok(f) => {
                files.insert(key.clone(), f);
            }
            Err(e) => {
                tracing::warn!(model = %v.model, version = v.version, error = %e, "prediction log not written");
                broken.insert(key, e.to_string());
                return;
            }
        }
    }
    let Some(file) = files.get_mut(&key) else {
        return;
    };
    line.clear();
    for r in 0..sample.rows.rows {
        let _ = write!(line, "{{\"at_ms\":{},\"inputs\":{{", sample.at_ms);
        for (i, k) in file.keys.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(k);
            match sample.rows.cell(r, i) {
                Cell::Missing => line.push_str("null"),
                Cell::Number(x) => push_number(line, x),
                Cell::Text(t) => {
                    let _ = write!(line, "{}", serde_json::Value::String(t.to_string()));
                }
            }
        }
        line.push_str("},\"outputs\":[");
        for (j, o) in sample
            .outputs
            .get(r * width..(r + 1) * width)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if j > 0 {
                line.push(',');
            }
            push_number(line, f64::from(*o));
        }
        line.push_str("]}\n");
    }
    if file.bytes + line.len() as u64 > max_bytes / 2 {
        // Keep two halves: the current file becomes the previous one, replacing it.
        let _ = file.out.flush();
        let _ = std::fs::rename(
            file.dir.join("current.jsonl"),
            file.dir.join("previous.jsonl"),
        );
        let keys = std::mem::take(&mut file.keys);
        match open(&file.dir.clone(), keys) {
            Ok(f) => *file = f,
            Err(e) => {
                broken.insert(key.clone(), e.to_string());
                files.remove(&key);
                return;
            }
        }
    }
    if let Err(e) = file.out.write_all(line.as_bytes()) {
        tracing::warn!(model = %v.model, version = v.version, error = %e, "writing the prediction log");
    }
    file.bytes += line.len() as u64;
}

/// What a version's log holds now, read back: the newest rows, oldest first.
pub struct Logged {
    /// The rows in the columns of the version's signature.
    pub rows: Rows,
    pub outputs: Vec<f32>,
    /// Outputs per row.
    pub width: usize,
    /// The directory the log is in.
    pub dir: PathBuf,
}

/// Reads back the newest `window` rows the log holds for `model` version `version` under
/// `predictions` (`KILN_HOME/predictions`), in the columns of `manifest`'s signature; no rows
/// when nothing was logged. The reader of the files this module's thread writes.
pub fn read_recent(
    predictions: &std::path::Path,
    manifest: &kiln_core::bundle::Manifest,
    model: &str,
    version: u32,
    window: usize,
) -> Result<Logged, String> {
    use crate::runtime::Column;
    let dir = predictions.join(model).join(version.to_string());
    let mut lines: Vec<String> = Vec::new();
    for name in ["current.jsonl", "previous.jsonl"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        lines.extend(text.lines().rev().map(str::to_string));
        if lines.len() >= window {
            break;
        }
    }
    lines.truncate(window);
    lines.reverse();
    let mut columns: Vec<Column> = manifest
        .signature
        .iter()
        .map(|c| {
            if c.column_type == kiln_core::data::ColumnType::Categorical {
                Column::Texts(Vec::with_capacity(lines.len()))
            } else {
                Column::Numbers(Vec::with_capacity(lines.len()))
            }
        })
        .collect();
    let mut outputs = Vec::new();
    let mut width = 0;
    for (n, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}: line {}: {e}", dir.display(), n + 1))?;
        for (c, col) in manifest.signature.iter().zip(columns.iter_mut()) {
            let x = &v["inputs"][&c.name];
            match col {
                Column::Numbers(values) => values.push(x.as_f64()),
                Column::Texts(values) => values.push(x.as_str().map(str::to_string)),
            }
        }
        let out: Vec<f32> = v["outputs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64().map(|f| f as f32))
                    .collect()
            })
            .unwrap_or_default();
        width = out.len();
        outputs.extend(out);
    }
    Ok(Logged {
        rows: Rows::from_columns(lines.len(), columns),
        outputs,
        width,
        dir,
    })
}
