//! Drift and skew: per feature, the live distribution over a sliding window of logged requests
//! against the training statistics every bundle carries.
//!
//! - Numeric features are binned by the training deciles (ties merged; each bin's expected share
//!   is the difference of the quantile levels at its edges): population stability index and
//!   Jensen-Shannon distance (base 2, in `0..=1`).
//! - Categorical features: L-infinity distance between the shares of the training's most
//!   frequent values (plus the rest), and the share of categories never seen in training (known
//!   exactly when the training vocabulary was small enough to be kept whole).
//! - Every feature: the share of missing values, against training's.
//! - Outputs: the predicted classes' shares against the training labels' (binary and categorical
//!   targets), or predicted values binned by the target's deciles (regression).
//!
//! Nothing here blocks a request: the window is fed by the prediction log's thread.

use std::collections::VecDeque;
use std::sync::Mutex;

use kiln_core::bundle::{Manifest, Task};
use kiln_core::data::ColumnType;
use kiln_core::stats::ColumnStatistics;
use kiln_core::transform::Cell;
use serde::{Deserialize, Serialize};

use crate::runtime::Rows;

/// When a feature is in alarm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Thresholds {
    /// Population stability index of a numeric feature (or of the outputs).
    pub psi: f64,
    /// Jensen-Shannon distance of a numeric feature.
    pub js: f64,
    /// L-infinity distance of a categorical feature's shares.
    pub linf: f64,
    /// Share of categories never seen in training.
    pub unseen: f64,
    /// Rise of the missing share over training's.
    pub missing: f64,
    /// Rows in the window before anything is judged.
    pub min_rows: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            psi: 0.2,
            js: 0.1,
            linf: 0.1,
            unseen: 0.05,
            missing: 0.05,
            min_rows: 500,
        }
    }
}

/// Distances under this share floor are computed as if the share were the floor (PSI's log).
const FLOOR: f64 = 1e-4;

#[derive(Debug, Clone)]
enum Reference {
    /// Values in bin `i` when `edges[i-1] < v <= edges[i]`; the last bin is above every edge.
    Numeric { edges: Vec<f64>, expected: Vec<f64> },
    /// Shares of the kept values, then of everything else.
    Categorical {
        values: Vec<String>,
        expected: Vec<f64>,
        complete: bool,
    },
}

impl Reference {
    fn from_stats(stats: &ColumnStatistics) -> Option<Reference> {
        if let Some(n) = &stats.numeric {
            let mut edges: Vec<f64> = Vec::new();
            let mut levels: Vec<f64> = Vec::new();
            for q in n.quantiles.iter().filter(|q| {
                let tenth = q.q * 10.0;
                (tenth - tenth.round()).abs() < 1e-9 && q.q > 0.0 && q.q < 1.0
            }) {
                match edges.last() {
                    Some(&e) if (q.value - e).abs() <= f64::EPSILON * e.abs().max(1.0) => {
                        if let Some(l) = levels.last_mut() {
                            *l = q.q;
                        }
                    }
                    _ => {
                        edges.push(q.value);
                        levels.push(q.q);
                    }
                }
            }
            if edges.is_empty() {
                return None;
            }
            let mut expected = Vec::with_capacity(edges.len() + 1);
            let mut below = 0.0;
            for l in &levels {
                expected.push(l - below);
                below = *l;
            }
            expected.push(1.0 - below);
            return Some(Reference::Numeric { edges, expected });
        }
        let c = stats.categorical.as_ref()?;
        if stats.count == 0 {
            return None;
        }
        let total = stats.count as f64;
        let values: Vec<String> = c.top.iter().map(|v| v.value.clone()).collect();
        let mut expected: Vec<f64> = c.top.iter().map(|v| v.count as f64 / total).collect();
        let kept: f64 = expected.iter().sum();
        expected.push((1.0 - kept).max(0.0));
        Some(Reference::Categorical {
            complete: c.distinct as usize <= c.top.len(),
            values,
            expected,
        })
    }

    fn bins(&self) -> usize {
        match self {
            Reference::Numeric { expected, .. } | Reference::Categorical { expected, .. } => {
                expected.len()
            }
        }
    }

    /// The bin of a value; `None` for a missing value.
    fn bin(&self, cell: Cell<'_>) -> Option<usize> {
        match (self, cell) {
            (_, Cell::Missing) => None,
            (Reference::Numeric { edges, .. }, Cell::Number(v)) => {
                Some(edges.partition_point(|e| *e < v))
            }
            (Reference::Categorical { values, .. }, Cell::Text(t)) => {
                Some(values.iter().position(|v| v == t).unwrap_or(values.len()))
            }
            (Reference::Categorical { values, .. }, Cell::Number(v)) => {
                let forms = [ColumnType::Integer, ColumnType::Float, ColumnType::Boolean]
                    .map(|t| kiln_core::data::category_of_number(t, v));
                Some(
                    values
                        .iter()
                        .position(|x| forms.contains(x))
                        .unwrap_or(values.len()),
                )
            }
            (Reference::Numeric { .. }, Cell::Text(_)) => None,
        }
    }
}

#[derive(Debug)]
struct Tracked {
    name: String,
    /// The signature position of the column (`None` for the outputs).
    input: Option<usize>,
    reference: Reference,
    missing_train: f64,
}

/// The drift of one feature (or of the outputs) over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeatureDrift {
    pub feature: String,
    /// `numeric`, `categorical` or `prediction`.
    pub kind: String,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub linf: Option<f64>,
    /// Share of categories never seen in training (when training's vocabulary is known whole).
    pub unseen: Option<f64>,
    pub missing: f64,
    pub missing_train: f64,
    pub alarm: bool,
    /// Which thresholds are crossed, in words.
    pub reasons: Vec<String>,
}

/// `GET /api/models/{name}/drift`: every live version's report and the features in alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftAnswer {
    pub model: String,
    /// The share of requests the prediction log samples.
    pub sample: f64,
    /// Rows in each version's window.
    pub window: usize,
    pub alarms: Vec<String>,
    pub versions: Vec<DriftReport>,
}

/// A version's drift report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DriftReport {
    pub model: String,
    pub version: u32,
    /// Rows in the window now, and ever observed.
    pub rows: u64,
    pub observed: u64,
    /// Whether the window holds enough rows to judge (`min_rows`).
    pub judged: bool,
    pub thresholds: Thresholds,
    pub features: Vec<FeatureDrift>,
    pub prediction: Option<FeatureDrift>,
}

impl DriftReport {
    /// Features (and the outputs) in alarm.
    pub fn alarms(&self) -> Vec<&FeatureDrift> {
        self.features
            .iter()
            .chain(self.prediction.as_ref())
            .filter(|f| f.alarm)
            .collect()
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Each row's bin per tracked column (`u16::MAX` for missing).
    rows: VecDeque<Vec<u16>>,
    /// Per tracked column: counts per bin, then missing last.
    counts: Vec<Vec<u64>>,
    observed: u64,
}

const MISSING: u16 = u16::MAX;

/// One served version's sliding window and its reference.
#[derive(Debug)]
pub struct Monitor {
    tracked: Vec<Tracked>,
    /// The outputs' reference comes last in `tracked` when there is one.
    has_prediction: bool,
    task: Task,
    labels: Vec<String>,
    capacity: usize,
    window: Mutex<Window>,
}

impl Monitor {
    /// The monitor of a bundle, with a window of `capacity` rows.
    pub fn new(manifest: &Manifest, capacity: usize) -> Monitor {
        let stats = &manifest.training_statistics;
        let find = |name: &str| stats.columns.iter().find(|c| c.name == name);
        let mut tracked: Vec<Tracked> = manifest
            .signature
            .iter()
            .enumerate()
            .filter_map(|(i, col)| {
                let s = find(&col.name)?;
                Some(Tracked {
                    name: col.name.clone(),
                    input: Some(i),
                    reference: Reference::from_stats(s)?,
                    missing_train: s.missing_rate(),
                })
            })
            .collect();
        let prediction = find(&manifest.target).and_then(|s| prediction_reference(manifest, s));
        let has_prediction = prediction.is_some();
        if let Some(reference) = prediction {
            tracked.push(Tracked {
                name: manifest.target.clone(),
                input: None,
                reference,
                missing_train: 0.0,
            });
        }
        let counts = tracked
            .iter()
            .map(|t| vec![0; t.reference.bins() + 1])
            .collect();
        Monitor {
            tracked,
            has_prediction,
            task: manifest.task,
            labels: manifest.labels.clone(),
            capacity: capacity.max(1),
            window: Mutex::new(Window {
                counts,
                ..Window::default()
            }),
        }
    }

    /// Adds answered rows to the window (evicting the oldest beyond its capacity).
    pub fn observe(&self, rows: &Rows, outputs: &[f32], width: usize) {
        let n = rows.rows;
        let mut binned: Vec<Vec<u16>> = Vec::with_capacity(n);
        for r in 0..n {
            let out = outputs.get(r * width..(r + 1) * width).unwrap_or(&[]);
            binned.push(
                self.tracked
                    .iter()
                    .map(|t| {
                        let cell = match t.input {
                            Some(i) => rows.cell(r, i),
                            None => self.output_cell(out),
                        };
                        t.reference.bin(cell).map_or(MISSING, |b| b as u16)
                    })
                    .collect(),
            );
        }
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for row in binned {
            add(&mut w.counts, &row, 1);
            w.rows.push_back(row);
            w.observed += 1;
            if w.rows.len() > self.capacity
                && let Some(old) = w.rows.pop_front()
            {
                add(&mut w.counts, &old, -1);
            }
        }
    }

    fn output_cell<'a>(&'a self, out: &[f32]) -> Cell<'a> {
        match self.task {
            Task::Regression => out
                .first()
                .map_or(Cell::Missing, |v| Cell::Number(f64::from(*v))),
            _ => {
                let best = out
                    .iter()
                    .enumerate()
                    .fold(None, |b: Option<(usize, f32)>, (i, v)| match b {
                        Some((_, bv)) if bv >= *v => b,
                        _ => Some((i, *v)),
                    });
                best.and_then(|(i, _)| self.labels.get(i))
                    .map_or(Cell::Missing, |l| Cell::Text(l))
            }
        }
    }

    /// The drift of every tracked column over the window now, judged by `t` or, for a column
    /// named in `per_feature`, by its own thresholds.
    pub fn report(
        &self,
        model: &str,
        version: u32,
        default: &Thresholds,
        per_feature: &std::collections::BTreeMap<String, Thresholds>,
    ) -> DriftReport {
        let t = default;
        let w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows = w.rows.len() as u64;
        let judged = rows >= t.min_rows && rows > 0;
        let mut features = Vec::new();
        let mut prediction = None;
        for (k, tracked) in self.tracked.iter().enumerate() {
            let counts = &w.counts[k];
            let missing = *counts.last().unwrap_or(&0);
            let present: u64 = counts.iter().take(counts.len() - 1).sum();
            let share = |c: u64| {
                if present == 0 {
                    0.0
                } else {
                    c as f64 / present as f64
                }
            };
            let live: Vec<f64> = counts[..counts.len() - 1]
                .iter()
                .map(|c| share(*c))
                .collect();
            let missing_live = if rows == 0 {
                0.0
            } else {
                missing as f64 / rows as f64
            };
            let is_output = tracked.input.is_none() && self.has_prediction;
            let t = per_feature.get(&tracked.name).unwrap_or(t);
            let d = feature_drift(
                &tracked.name,
                &tracked.reference,
                &live,
                present,
                (missing_live, tracked.missing_train),
                is_output,
                (rows >= t.min_rows && rows > 0).then_some(t),
            );
            if is_output {
                prediction = Some(d);
            } else {
                features.push(d);
            }
        }
        DriftReport {
            model: model.to_string(),
            version,
            rows,
            observed: w.observed,
            judged,
            thresholds: *t,
            features,
            prediction,
        }
    }
}

/// One feature's drift from its bins' shares (`live`, over `present` values) and its missing
/// shares (now, reference), judged against `judge` when there are rows enough.
fn feature_drift(
    name: &str,
    reference: &Reference,
    live: &[f64],
    present: u64,
    (missing, missing_train): (f64, f64),
    is_output: bool,
    judge: Option<&Thresholds>,
) -> FeatureDrift {
    let mut d = FeatureDrift {
        feature: name.to_string(),
        kind: String::new(),
        psi: None,
        js: None,
        linf: None,
        unseen: None,
        missing,
        missing_train,
        alarm: false,
        reasons: Vec::new(),
    };
    match reference {
        Reference::Numeric { expected, .. } => {
            d.kind = "numeric".into();
            if present > 0 {
                d.psi = Some(psi(expected, live));
                d.js = Some(js_distance(expected, live));
            }
        }
        Reference::Categorical {
            expected, complete, ..
        } => {
            d.kind = "categorical".into();
            if present > 0 {
                d.linf = Some(linf(expected, live));
                if *complete {
                    d.unseen = live.last().copied();
                }
                if is_output {
                    d.psi = Some(psi(expected, live));
                }
            }
        }
    }
    if is_output {
        d.kind = "prediction".into();
    }
    if let Some(t) = judge {
        let mut check = |value: Option<f64>, limit: f64, what: &str| {
            if let Some(v) = value
                && v > limit
            {
                d.reasons.push(format!("{what} {v:.3} > {limit}"));
            }
        };
        check(d.psi, t.psi, "psi");
        check(d.js, t.js, "js");
        if !is_output {
            check(d.linf, t.linf, "linf");
        }
        check(d.unseen, t.unseen, "unseen");
        check(
            Some(d.missing - d.missing_train),
            t.missing,
            "missing share rise",
        );
        d.alarm = !d.reasons.is_empty();
    }
    d
}

/// The drift of each column of `table` against the statistics of earlier data (`reference`,
/// e.g. a pipeline's previous successful run): the measures and thresholds of serving drift,
/// numeric columns binned by the reference's deciles. Columns the reference lacks are left out
/// (the schema check names them); with fewer rows than `min_rows` nothing is judged.
pub fn table_drift(
    reference: &kiln_core::stats::DatasetStatistics,
    table: &kiln_core::data::Table,
    t: &Thresholds,
) -> Vec<FeatureDrift> {
    let rows = table.num_rows() as u64;
    let judge = (rows >= t.min_rows && rows > 0).then_some(t);
    let mut out = Vec::new();
    for stats in &reference.columns {
        let (Some(index), Some(r)) = (
            table.column_index(&stats.name),
            Reference::from_stats(stats),
        ) else {
            continue;
        };
        let mut counts = vec![0u64; r.bins()];
        let mut missing = 0u64;
        let mut count = |cell: Cell<'_>| match r.bin(cell) {
            Some(b) => counts[b] += 1,
            None => missing += 1,
        };
        match &r {
            Reference::Numeric { .. } => table
                .numbers(index)
                .into_iter()
                .for_each(|v| count(v.map_or(Cell::Missing, Cell::Number))),
            Reference::Categorical { .. } => table
                .texts(index)
                .iter()
                .for_each(|v| count(v.as_deref().map_or(Cell::Missing, Cell::Text))),
        }
        let present: u64 = counts.iter().sum();
        let live: Vec<f64> = counts
            .iter()
            .map(|c| {
                if present == 0 {
                    0.0
                } else {
                    *c as f64 / present as f64
                }
            })
            .collect();
        let missing_share = if rows == 0 {
            0.0
        } else {
            missing as f64 / rows as f64
        };
        let missing_train = stats.missing_rate();
        out.push(feature_drift(
            &stats.name,
            &r,
            &live,
            present,
            (missing_share, missing_train),
            false,
            judge,
        ));
    }
    out
}

fn add(counts: &mut [Vec<u64>], row: &[u16], sign: i64) {
    for (k, b) in row.iter().enumerate() {
        let slot = if *b == MISSING {
            counts[k].len() - 1
        } else {
            usize::from(*b)
        };
        if let Some(c) = counts[k].get_mut(slot) {
            *c = c.saturating_add_signed(sign);
        }
    }
}

/// The outputs' reference: the training labels' shares (binary 0/1 targets from their mean,
/// categorical ones from their counts) or the target's deciles (regression).
fn prediction_reference(manifest: &Manifest, target: &ColumnStatistics) -> Option<Reference> {
    match manifest.task {
        Task::Regression => Reference::from_stats(target),
        _ => {
            if let Some(c) = &target.categorical {
                let total = target.count as f64;
                let shares: Vec<f64> = manifest
                    .labels
                    .iter()
                    .map(|l| {
                        c.top
                            .iter()
                            .find(|v| v.value == *l)
                            .map_or(0.0, |v| v.count as f64 / total)
                    })
                    .collect();
                let rest = (1.0 - shares.iter().sum::<f64>()).max(0.0);
                let mut expected = shares;
                expected.push(rest);
                return Some(Reference::Categorical {
                    values: manifest.labels.clone(),
                    expected,
                    complete: true,
                });
            }
            let n = target.numeric.as_ref()?;
            let binary01 = manifest.labels.len() == 2
                && manifest.labels.iter().zip(["0", "1"]).all(|(l, e)| l == e);
            binary01.then(|| Reference::Categorical {
                values: manifest.labels.clone(),
                expected: vec![1.0 - n.mean, n.mean, 0.0],
                complete: true,
            })
        }
    }
}

/// Population stability index: Σ (a − e) ln(a / e), shares floored.
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(FLOOR), a.max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Jensen-Shannon distance, base 2: the square root of the divergence, in `0..=1`.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let d: f64 = p
        .iter()
        .zip(q)
        .map(|(a, b)| {
            let m = (a + b) / 2.0;
            if m > 0.0 {
                0.5 * kl(*a, m) + 0.5 * kl(*b, m)
            } else {
                0.0
            }
        })
        .sum();
    d.max(0.0).sqrt()
}

/// The largest difference between two distributions' shares.
pub fn linf(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}
