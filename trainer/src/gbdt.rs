//! Gradient-boosted trees, kiln's own: histogram-based and grown leaf-wise (best gain first, as
//! LightGBM grows them), for binary, multi-class (one tree per class and round) and regression.
//!
//! Features are the fitted transform's: each dense value is cut into at most `max_bins` bins at
//! quantiles of the training split, with one more bin for missing values (NaN, from
//! `impute = "keep"`), whose side each split learns; each id column is a category, split natively
//! by ordering a leaf's categories (those with enough rows) by gradient over hessian and sending
//! the best set of up to 32 from either end of that order left. The result is a
//! [`kiln_core::trees::Ensemble`]: thresholds are the bins' upper bounds, so the evaluator on raw
//! features takes the same path the binned trainer took.

use std::collections::BTreeMap;

use kiln_core::bundle::Task;
use kiln_core::progress::{Progress, Unit};
use kiln_core::trees::{Ensemble, Node, Split};
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::config::{EpochReport, RunLogger, TrainConfig, TrainError};
use crate::evaluate::{loss_value, metrics_of};
use crate::predict::Dense;

/// The most ids an id column may have to be split as categories (its ids are its bins).
pub const MAX_CATEGORIES: usize = 256;
/// Extra L2 on categorical splits, which fit noise more easily than thresholds (also the
/// smoothing of each category's gradient ratio when they are ordered).
const CATEGORY_L2: f64 = 10.0;
/// The fewest rows a category needs in a leaf to be placed by a split.
const MIN_CATEGORY_ROWS: u32 = 100;
/// The most categories one split sends left.
const MAX_SET: usize = 32;

/// What boosting produced: the ensemble, every round's figures, and each feature's total gain.
pub struct Boosted {
    pub ensemble: Ensemble,
    pub history: Vec<EpochReport>,
    /// Total split gain per feature (dense features, then id columns) of the kept trees.
    pub gain: Vec<f64>,
}

/// An earlier boosting to go on from: its kept trees, its rounds' figures and its gains.
pub struct Start<'a> {
    pub ensemble: &'a Ensemble,
    pub history: &'a [EpochReport],
    pub gain: &'a [f64],
}

/// How one feature's values become bins.
enum Binning {
    /// Upper bounds of the bins, strictly increasing, the last +∞; then one bin for missing.
    Numeric(Vec<f32>),
    /// Ids are bins.
    Categorical(usize),
}

impl Binning {
    fn bins(&self) -> usize {
        match self {
            Binning::Numeric(upper) => upper.len() + 1,
            Binning::Categorical(n) => *n,
        }
    }

    #[inline]
    fn of_value(upper: &[f32], x: f32) -> u8 {
        if x.is_nan() {
            upper.len() as u8
        } else {
            upper.partition_point(|u| *u < x) as u8
        }
    }
}

/// The bin upper bounds of one dense feature from a sample of its values.
fn numeric_bounds(mut values: Vec<f32>, max_bins: usize) -> Vec<f32> {
    values.retain(|v| !v.is_nan());
    values.sort_unstable_by(f32::total_cmp);
    let mut distinct = values.clone();
    distinct.dedup();
    let mut upper: Vec<f32> = if distinct.len() <= max_bins {
        distinct
            .windows(2)
            .map(|w| (f64::from(w[0]) + (f64::from(w[1]) - f64::from(w[0])) / 2.0) as f32)
            .collect()
    } else {
        (1..max_bins)
            .map(|i| values[i * values.len() / max_bins])
            .collect()
    };
    upper.retain(|u| u.is_finite());
    upper.dedup();
    upper.push(f32::INFINITY);
    upper
}

/// Binned features, one column of `n` bins per feature: a histogram fills each feature's part
/// from its column, which keeps that part in the nearest cache.
struct Binned {
    columns: Vec<Vec<u8>>,
}

impl Binned {
    fn new(data: &Dense<'_>, binning: &[Binning]) -> Binned {
        let n = data.y.len();
        let columns = binning
            .par_iter()
            .enumerate()
            .map(|(f, b)| match b {
                Binning::Numeric(upper) => (0..n)
                    .map(|r| Binning::of_value(upper, data.x[r * data.d + f]))
                    .collect(),
                Binning::Categorical(_) => (0..n)
                    .map(|r| data.ids[r * data.k + (f - data.d)] as u8)
                    .collect(),
            })
            .collect();
        Binned { columns }
    }

    #[inline]
    fn at(&self, row: usize, feature: usize) -> u8 {
        self.columns[feature][row]
    }
}

/// A split found in a leaf's histogram.
#[derive(Debug, Clone)]
struct Candidate {
    gain: f64,
    feature: usize,
    rule: Rule,
    /// The gradient, hessian and rows the split sends left.
    left: (f64, f64, u32),
}

#[derive(Debug, Clone)]
enum Rule {
    /// Bins up to `bin` (values up to `threshold`, its upper bound) go left; the missing bin
    /// goes left when `missing_left`.
    Threshold {
        bin: u8,
        threshold: f32,
        missing_left: bool,
    },
    /// Bins in the set go left.
    Categories([u64; 4]),
}

impl Rule {
    #[inline]
    fn left(&self, bin: u8, missing: u8) -> bool {
        match self {
            Rule::Threshold {
                bin: b,
                missing_left,
                ..
            } => {
                if bin == missing {
                    *missing_left
                } else {
                    bin <= *b
                }
            }
            Rule::Categories(set) => set[(bin >> 6) as usize] & (1u64 << (bin & 63)) != 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    g: f64,
    h: f64,
    n: u32,
}

/// A leaf while a tree grows.
struct Growing {
    node: usize,
    rows: Vec<u32>,
    hist: Vec<Bin>,
    g: f64,
    h: f64,
    depth: usize,
    best: Option<Candidate>,
}

/// A tree while it grows, in the binned form.
enum TreeNode {
    Leaf(f64),
    Split {
        feature: usize,
        rule: Rule,
        left: usize,
        right: usize,
    },
}

struct Grower<'a> {
    binning: &'a [Binning],
    binned: &'a Binned,
    offsets: &'a [usize],
    total_bins: usize,
    config: &'a TrainConfig,
    /// Features this tree may split on.
    features: Vec<usize>,
}

impl Grower<'_> {
    fn histogram(&self, rows: &[u32], g: &[f32], h: &[f32]) -> Vec<Bin> {
        let mut hist = vec![Bin::default(); self.total_bins];
        // Split the histogram into each feature's part, and fill the parts in parallel.
        let mut parts: Vec<(usize, &mut [Bin])> = Vec::with_capacity(self.binning.len());
        let mut rest: &mut [Bin] = &mut hist;
        for (f, b) in self.binning.iter().enumerate() {
            let (part, tail) = rest.split_at_mut(b.bins());
            parts.push((f, part));
            rest = tail;
        }
        // The rows' gradients gathered once, in the leaf's order, for every feature to read.
        let gh: Vec<[f32; 2]> = rows
            .iter()
            .map(|r| [g[*r as usize], h[*r as usize]])
            .collect();
        let wanted = |f: &usize| self.features.binary_search(f).is_ok();
        parts
            .into_par_iter()
            .filter(|(f, _)| wanted(f))
            .for_each(|(f, part)| {
                let column = &self.binned.columns[f];
                // Two histograms filled alternately and added at the end: consecutive rows in
                // one bin would otherwise wait on each other's additions.
                let mut odd = vec![Bin::default(); part.len()];
                for (r, gh) in rows.chunks_exact(2).zip(gh.chunks_exact(2)) {
                    let a = &mut part[column[r[0] as usize] as usize];
                    a.g += f64::from(gh[0][0]);
                    a.h += f64::from(gh[0][1]);
                    a.n += 1;
                    let b = &mut odd[column[r[1] as usize] as usize];
                    b.g += f64::from(gh[1][0]);
                    b.h += f64::from(gh[1][1]);
                    b.n += 1;
                }
                if rows.len() % 2 == 1
                    && let (Some(r), Some([g, h])) = (rows.last(), gh.last())
                {
                    let a = &mut part[column[*r as usize] as usize];
                    a.g += f64::from(*g);
                    a.h += f64::from(*h);
                    a.n += 1;
                }
                for (a, b) in part.iter_mut().zip(&odd) {
                    a.g += b.g;
                    a.h += b.h;
                    a.n += b.n;
                }
            });
        hist
    }

    fn score(&self, g: f64, h: f64, l2: f64) -> f64 {
        g * g / (h + l2)
    }

    /// The best split of a leaf, if any gains.
    fn best(&self, leaf: &Growing) -> Option<Candidate> {
        if self.config.max_depth.is_some_and(|d| leaf.depth >= d)
            || leaf.rows.len() < 2 * self.config.min_child_rows.max(1)
        {
            return None;
        }
        let l2 = self.config.l2;
        let (min_rows, min_h) = (
            self.config.min_child_rows.max(1) as u32,
            self.config.min_child_weight,
        );
        let n = leaf.rows.len() as u32;
        let fits = |hl: f64, nl: u32| {
            nl >= min_rows && n - nl >= min_rows && hl >= min_h && leaf.h - hl >= min_h
        };
        let mut best: Option<Candidate> = None;
        let mut consider = |gain: f64, feature: usize, rule: Rule, left: (f64, f64, u32)| {
            if gain > 1e-12 && best.as_ref().is_none_or(|b| gain > b.gain) {
                best = Some(Candidate {
                    gain,
                    feature,
                    rule,
                    left,
                });
            }
        };
        for &f in &self.features {
            let part = &leaf.hist[self.offsets[f]..self.offsets[f] + self.binning[f].bins()];
            match &self.binning[f] {
                Binning::Numeric(upper) => {
                    let missing = part[upper.len()];
                    let parent = self.score(leaf.g, leaf.h, l2);
                    for missing_left in [false, true] {
                        let (mut gl, mut hl, mut nl) = if missing_left {
                            (missing.g, missing.h, missing.n)
                        } else {
                            (0.0, 0.0, 0)
                        };
                        // The last real bin holds +∞: a split there sends everything left.
                        for (b, bin) in part[..upper.len() - 1].iter().enumerate() {
                            gl += bin.g;
                            hl += bin.h;
                            nl += bin.n;
                            if bin.n == 0 || !fits(hl, nl) {
                                continue;
                            }
                            let gain = self.score(gl, hl, l2)
                                + self.score(leaf.g - gl, leaf.h - hl, l2)
                                - parent;
                            consider(
                                gain,
                                f,
                                Rule::Threshold {
                                    bin: b as u8,
                                    threshold: upper[b],
                                    missing_left,
                                },
                                (gl, hl, nl),
                            );
                        }
                        if missing.n == 0 {
                            break;
                        }
                    }
                }
                Binning::Categorical(_) => {
                    let l2 = l2 + CATEGORY_L2;
                    let parent = self.score(leaf.g, leaf.h, l2);
                    // Categories too rare to judge stay on the right with the unseen ones.
                    let mut order: Vec<usize> = (0..part.len())
                        .filter(|b| part[*b].n >= MIN_CATEGORY_ROWS)
                        .collect();
                    if order.len() < 2 {
                        continue;
                    }
                    order.sort_by(|a, b| {
                        let ra = part[*a].g / (part[*a].h + CATEGORY_L2);
                        let rb = part[*b].g / (part[*b].h + CATEGORY_L2);
                        ra.total_cmp(&rb)
                    });
                    // The best set of up to MAX_SET categories from either end of the order.
                    let most = MAX_SET.min(order.len() - 1);
                    for from_top in [false, true] {
                        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0);
                        let mut set = [0u64; 4];
                        for i in 0..most {
                            let b = if from_top {
                                order[order.len() - 1 - i]
                            } else {
                                order[i]
                            };
                            gl += part[b].g;
                            hl += part[b].h;
                            nl += part[b].n;
                            set[b >> 6] |= 1u64 << (b & 63);
                            if !fits(hl, nl) {
                                continue;
                            }
                            let gain = self.score(gl, hl, l2)
                                + self.score(leaf.g - gl, leaf.h - hl, l2)
                                - parent;
                            consider(gain, f, Rule::Categories(set), (gl, hl, nl));
                        }
                    }
                }
            }
        }
        best
    }

    /// Grows one tree on the gradients of the sampled `rows`; leaf values are shrunk already.
    /// Returns the tree and each leaf's value with its rows.
    fn grow(
        &self,
        rows: Vec<u32>,
        g: &[f32],
        h: &[f32],
        gain: &mut [f64],
    ) -> (Vec<TreeNode>, Vec<(f64, Vec<u32>)>) {
        let (sg, sh) = rows.iter().fold((0.0, 0.0), |(a, b), r| {
            (a + f64::from(g[*r as usize]), b + f64::from(h[*r as usize]))
        });
        let mut nodes = vec![TreeNode::Leaf(0.0)];
        let hist = self.histogram(&rows, g, h);
        let mut root = Growing {
            node: 0,
            rows,
            hist,
            g: sg,
            h: sh,
            depth: 0,
            best: None,
        };
        root.best = self.best(&root);
        let mut leaves = vec![root];
        while leaves.len() < self.config.leaves.max(2) {
            let Some(at) = leaves
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.best.as_ref().map(|b| (i, b.gain)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
            else {
                break;
            };
            let leaf = leaves.swap_remove(at);
            let Some(split) = leaf.best.clone() else {
                break;
            };
            gain[split.feature] += split.gain;
            let column = &self.binned.columns[split.feature];
            let missing = match &self.binning[split.feature] {
                Binning::Numeric(upper) => upper.len() as u8,
                Binning::Categorical(_) => u8::MAX,
            };
            let (lg, lh, _) = split.left;
            let (left_rows, right_rows) =
                split_rows(&leaf.rows, |r| split.rule.left(column[r as usize], missing));
            let (rg, rh) = (leaf.g - lg, leaf.h - lh);
            // The smaller child's histogram is built; the larger one's is the parent's minus it.
            let left_small = left_rows.len() <= right_rows.len();
            let small = self.histogram(if left_small { &left_rows } else { &right_rows }, g, h);
            let mut large = leaf.hist;
            for (l, s) in large.iter_mut().zip(&small) {
                l.g -= s.g;
                l.h -= s.h;
                l.n -= s.n;
            }
            let (left_hist, right_hist) = if left_small {
                (small, large)
            } else {
                (large, small)
            };
            let (li, ri) = (nodes.len(), nodes.len() + 1);
            nodes.push(TreeNode::Leaf(0.0));
            nodes.push(TreeNode::Leaf(0.0));
            nodes[leaf.node] = TreeNode::Split {
                feature: split.feature,
                rule: split.rule,
                left: li,
                right: ri,
            };
            for (node, rows, hist, g, h) in [
                (li, left_rows, left_hist, lg, lh),
                (ri, right_rows, right_hist, rg, rh),
            ] {
                let mut child = Growing {
                    node,
                    rows,
                    hist,
                    g,
                    h,
                    depth: leaf.depth + 1,
                    best: None,
                };
                child.best = self.best(&child);
                leaves.push(child);
            }
        }
        let mut values = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            // A leaf without rows (a round that sampled none) adds nothing.
            let denominator = leaf.h + self.config.l2;
            let v = if denominator > 0.0 {
                -leaf.g / denominator * self.config.shrinkage
            } else {
                0.0
            };
            nodes[leaf.node] = TreeNode::Leaf(v);
            values.push((v, leaf.rows));
        }
        (nodes, values)
    }
}

/// A leaf's rows split in two, each side in its original order; large leaves in blocks across
/// threads.
fn split_rows(rows: &[u32], left: impl Fn(u32) -> bool + Sync) -> (Vec<u32>, Vec<u32>) {
    // Without branches: each row is written to both sides and kept on one.
    let block = |rows: &[u32]| {
        let (mut l, mut r) = (vec![0u32; rows.len()], vec![0u32; rows.len()]);
        let (mut nl, mut nr) = (0, 0);
        for &row in rows {
            let goes_left = left(row);
            l[nl] = row;
            r[nr] = row;
            nl += usize::from(goes_left);
            nr += usize::from(!goes_left);
        }
        l.truncate(nl);
        r.truncate(nr);
        (l, r)
    };
    const PARALLEL: usize = 1 << 16;
    if rows.len() < PARALLEL {
        return block(rows);
    }
    let size = rows.len().div_ceil(rayon::current_num_threads().max(1));
    let parts: Vec<(Vec<u32>, Vec<u32>)> = rows.par_chunks(size).map(block).collect();
    let (mut l, mut r) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for (a, b) in parts {
        l.extend_from_slice(&a);
        r.extend_from_slice(&b);
    }
    (l, r)
}

/// The leaf value a binned row reaches.
fn binned_value(nodes: &[TreeNode], binning: &[Binning], bins: impl Fn(usize) -> u8) -> f64 {
    let mut at = 0;
    loop {
        match &nodes[at] {
            TreeNode::Leaf(v) => return *v,
            TreeNode::Split {
                feature,
                rule,
                left,
                right,
            } => {
                let missing = match &binning[*feature] {
                    Binning::Numeric(upper) => upper.len() as u8,
                    Binning::Categorical(_) => u8::MAX,
                };
                at = if rule.left(bins(*feature), missing) {
                    *left
                } else {
                    *right
                };
            }
        }
    }
}

/// The gradient and hessian of each row (and class) at raw scores `f`.
fn gradients(task: Task, f: &[f64], y: &[f32], k: usize, g: &mut [f32], h: &mut [f32]) {
    match task {
        Task::Regression => {
            g.par_iter_mut()
                .zip(h.par_iter_mut())
                .zip(f.par_iter().zip(y))
                .for_each(|((g, h), (f, y))| {
                    *g = (f - f64::from(*y)) as f32;
                    *h = 1.0;
                });
        }
        Task::BinaryClassification => {
            g.par_iter_mut()
                .zip(h.par_iter_mut())
                .zip(f.par_iter().zip(y))
                .for_each(|((g, h), (f, y))| {
                    let p = 1.0 / (1.0 + (-f).exp());
                    *g = (p - f64::from(*y)) as f32;
                    *h = (p * (1.0 - p)).max(1e-16) as f32;
                });
        }
        Task::MultiClassification => {
            let n = y.len();
            for r in 0..n {
                let row = &f[r * k..(r + 1) * k];
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for c in 0..k {
                    let p = (row[c] - m).exp() / s;
                    let t = if y[r] as usize == c { 1.0 } else { 0.0 };
                    // Class-major, so that each class's tree reads one slice.
                    g[c * n + r] = (p - t) as f32;
                    h[c * n + r] = (p * (1.0 - p)).max(1e-16) as f32;
                }
            }
        }
    }
}

/// The starting score of each output: the mean, the log-odds or the log prior of the classes.
fn base_scores(task: Task, y: &[f32], k: usize) -> Vec<f64> {
    let n = y.len().max(1) as f64;
    match task {
        Task::Regression => vec![y.iter().map(|v| f64::from(*v)).sum::<f64>() / n],
        Task::BinaryClassification => {
            let p = (y.iter().map(|v| f64::from(*v)).sum::<f64>() / n).clamp(1e-6, 1.0 - 1e-6);
            vec![(p / (1.0 - p)).ln()]
        }
        Task::MultiClassification => {
            let mut counts = vec![0.0; k];
            for v in y {
                if let Some(c) = counts.get_mut(*v as usize) {
                    *c += 1.0;
                }
            }
            counts
                .iter()
                .map(|c| (c / n).clamp(1e-6, 1.0).ln())
                .collect()
        }
    }
}

/// Boosts an ensemble on `train`, stopping early on `validation` (when it has rows) after
/// `patience` rounds without a better loss and keeping the best round's trees; from `start`, its
/// trees are kept and boosting goes on for the rounds of `config.trees` beyond its history.
#[allow(clippy::too_many_arguments)]
pub fn boost(
    train: &Dense<'_>,
    validation: &Dense<'_>,
    task: Task,
    outputs: usize,
    id_cardinalities: &[u32],
    config: &TrainConfig,
    start: Option<Start<'_>>,
    progress: &dyn Progress,
    logger: &dyn RunLogger,
) -> Result<Boosted, TrainError> {
    if config.trees == 0 || config.leaves < 2 || config.max_depth == Some(0) {
        return Err(TrainError::Config(
            "gbdt needs --trees of at least 1, --leaves of at least 2 and --max-depth (when \
             given) of at least 1"
                .to_string(),
        ));
    }
    if !(2..=255).contains(&config.max_bins) {
        return Err(TrainError::Config(format!(
            "max_bins = {} must be between 2 and 255",
            config.max_bins
        )));
    }
    for (name, v) in [
        ("subsample", config.subsample),
        ("colsample", config.colsample),
    ] {
        if !(v > 0.0 && v <= 1.0) {
            return Err(TrainError::Config(format!(
                "{name} = {v} must be in (0, 1]"
            )));
        }
    }
    if !(config.shrinkage > 0.0 && config.shrinkage.is_finite()) || config.l2 < 0.0 {
        return Err(TrainError::Config(format!(
            "gbdt needs shrinkage > 0 (now {}) and l2 ≥ 0 (now {})",
            config.shrinkage, config.l2
        )));
    }
    if let Some((c, ids)) = id_cardinalities
        .iter()
        .enumerate()
        .find(|(_, n)| **n as usize > MAX_CATEGORIES)
    {
        return Err(TrainError::Config(format!(
            "id column {c} has {ids} ids; gbdt splits at most {MAX_CATEGORIES} categories per \
             column natively: lower top_k or buckets, or use output = \"one_hot\""
        )));
    }
    let (d, n) = (train.d, train.y.len());
    let k_out = outputs;
    let sample_rows: Vec<usize> = (0..n).step_by((n / 200_000).max(1)).collect();
    let mut binning: Vec<Binning> = (0..d)
        .into_par_iter()
        .map(|f| {
            let values = sample_rows.iter().map(|r| train.x[r * d + f]).collect();
            Binning::Numeric(numeric_bounds(values, config.max_bins))
        })
        .collect();
    binning.extend(
        id_cardinalities
            .iter()
            .map(|c| Binning::Categorical((*c as usize).max(1))),
    );
    let binned = Binned::new(train, &binning);
    let val_binned = Binned::new(validation, &binning);
    let mut offsets = Vec::with_capacity(binning.len());
    let mut total_bins = 0;
    for b in &binning {
        offsets.push(total_bins);
        total_bins += b.bins();
    }
    let m = binning.len();

    let base = base_scores(task, train.y, k_out);
    let n_val = validation.y.len();
    // Scores so far: the base, or the starting ensemble's (which the binned trees reproduce).
    let scores = |data: &Dense<'_>, rows: usize| -> Vec<f64> {
        match &start {
            Some(s) => s
                .ensemble
                .score(rows, data.x, data.ids)
                .into_iter()
                .map(f64::from)
                .collect(),
            None => base.repeat(rows),
        }
    };
    let mut f_train = scores(train, n);
    let mut f_val = scores(validation, n_val);
    let first = start.as_ref().map_or(0, |s| s.history.len());
    let mut g = vec![0.0f32; n * k_out];
    let mut h = vec![0.0f32; n * k_out];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let mut trees: Vec<(usize, Vec<TreeNode>)> = Vec::new();
    // Each new round's gain per feature.
    let mut gains: Vec<Vec<f64>> = Vec::new();
    let mut history: Vec<EpochReport> =
        start.as_ref().map_or_else(Vec::new, |s| s.history.to_vec());
    let mut best: Option<(f64, usize)> = history
        .iter()
        .enumerate()
        .map(|(i, e)| (e.validation_loss, i))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    progress.start("boosting", Some(config.trees as u64), Unit::Trees);
    progress.set(first as u64);
    for round in first..config.trees {
        let mut gain = vec![0.0; m];
        // Multi-class scores are row-major; gradients are class-major.
        gradients(task, &f_train, train.y, k_out, &mut g, &mut h);
        let (rows, sampled): (Vec<u32>, Option<Vec<bool>>) = if config.subsample < 1.0 {
            let sampled: Vec<bool> = (0..n)
                .map(|_| rng.random::<f64>() < config.subsample)
                .collect();
            let rows = (0..n as u32).filter(|r| sampled[*r as usize]).collect();
            (rows, Some(sampled))
        } else {
            ((0..n as u32).collect(), None)
        };
        let mut features: Vec<usize> = (0..m).collect();
        if config.colsample < 1.0 {
            let keep = ((m as f64 * config.colsample).ceil() as usize).clamp(1, m);
            features = rand::seq::index::sample(&mut rng, m, keep).into_vec();
            features.sort_unstable();
        }
        let grower = Grower {
            binning: &binning,
            binned: &binned,
            offsets: &offsets,
            total_bins,
            config,
            features,
        };
        for c in 0..k_out {
            let (gc, hc) = if task == Task::MultiClassification {
                (&g[c * n..(c + 1) * n], &h[c * n..(c + 1) * n])
            } else {
                (&g[..n], &h[..n])
            };
            let (nodes, leaves) = grower.grow(rows.clone(), gc, hc, &mut gain);
            // Sampled rows take their leaf's value; the others, and validation rows, go down
            // the tree.
            for (v, rows) in &leaves {
                for r in rows {
                    f_train[*r as usize * k_out + c] += v;
                }
            }
            let walk = |data: &Binned, scores: &mut [f64], sampled: Option<&[bool]>| {
                scores
                    .par_chunks_mut(k_out)
                    .enumerate()
                    .filter(|(r, _)| sampled.is_none_or(|s| !s[*r]))
                    .for_each(|(r, s)| {
                        s[c] += binned_value(&nodes, &binning, |f| data.at(r, f));
                    });
            };
            if let Some(sampled) = &sampled {
                walk(&binned, &mut f_train, Some(sampled));
            }
            walk(&val_binned, &mut f_val, None);
            trees.push((c, nodes));
        }
        gains.push(gain);
        // The training loss in blocks across threads; the validation figures beside it.
        let (train_loss, (validation_loss, validation_metrics)) = rayon::join(
            || {
                const BLOCK: usize = 1 << 16;
                f_train
                    .par_chunks(BLOCK * k_out)
                    .zip(train.y.par_chunks(BLOCK))
                    .map(|(f, y)| {
                        let raw: Vec<f32> = f.iter().map(|v| *v as f32).collect();
                        loss_value(task, &raw, y, k_out) * y.len() as f64
                    })
                    .sum::<f64>()
                    / n.max(1) as f64
            },
            || {
                if n_val > 0 {
                    let raw: Vec<f32> = f_val.iter().map(|v| *v as f32).collect();
                    (
                        loss_value(task, &raw, validation.y, k_out),
                        metrics_of(task, &raw, validation.y, k_out),
                    )
                } else {
                    (f64::NAN, BTreeMap::new())
                }
            },
        );
        let validation_loss = if n_val > 0 {
            validation_loss
        } else {
            train_loss
        };
        if !validation_loss.is_finite() {
            return Err(TrainError::Config(format!(
                "boosting diverged: the loss became {validation_loss} at round {}; lower the shrinkage (now {})",
                round + 1,
                config.shrinkage
            )));
        }
        let report = EpochReport {
            epoch: round + 1,
            train_loss,
            validation_loss,
            validation_metrics,
        };
        report.log(logger);
        history.push(report);
        progress.set(round as u64 + 1);
        if progress.cancelled() {
            return Err(TrainError::Cancelled);
        }
        if best.is_none_or(|(b, _)| validation_loss < b) {
            best = Some((validation_loss, round));
        } else if n_val > 0
            && config
                .patience
                .is_some_and(|p| p > 0 && round - best.map_or(0, |b| b.1) >= p)
        {
            break;
        }
    }
    progress.finish();
    // Keep the trees of the best round (all of them without a validation split).
    if n_val > 0
        && let Some((_, round)) = best
    {
        let kept = (round + 1).saturating_sub(first);
        trees.truncate(kept * k_out);
        gains.truncate(kept);
    }
    let mut gain = start
        .as_ref()
        .map_or_else(|| vec![0.0; m], |s| s.gain.to_vec());
    gain.resize(m, 0.0);
    for round in &gains {
        gain.iter_mut().zip(round).for_each(|(g, r)| *g += r);
    }
    let mut ensemble = match &start {
        Some(s) => s.ensemble.clone(),
        None => Ensemble {
            dense: d,
            ids: id_cardinalities.len(),
            base: base.iter().map(|b| *b as f32).collect(),
            ..Default::default()
        },
    };
    append_trees(&mut ensemble, &trees);
    Ok(Boosted {
        ensemble,
        history,
        gain,
    })
}

/// Appends binned trees to an ensemble in the evaluator's form.
fn append_trees(e: &mut Ensemble, trees: &[(usize, Vec<TreeNode>)]) {
    for (output, nodes) in trees {
        let offset = e.nodes.len() as u32;
        e.roots.push(offset);
        e.outputs_of.push(*output as u32);
        for node in nodes {
            let (split, left, right) = match node {
                TreeNode::Leaf(v) => (Split::Leaf(*v as f32), 0, 0),
                TreeNode::Split {
                    feature,
                    rule,
                    left,
                    right,
                } => {
                    let split = match rule {
                        Rule::Threshold {
                            threshold,
                            missing_left,
                            ..
                        } => Split::Numeric {
                            feature: *feature as u32,
                            threshold: *threshold,
                            default_left: *missing_left,
                        },
                        Rule::Categories(set) => {
                            let start = e.categories.len() as u32;
                            e.categories.extend(
                                (0..MAX_CATEGORIES as u32)
                                    .filter(|b| set[(b >> 6) as usize] & (1u64 << (b & 63)) != 0),
                            );
                            Split::Categorical {
                                feature: *feature as u32,
                                start,
                                count: e.categories.len() as u32 - start,
                            }
                        }
                    };
                    (split, offset + *left as u32, offset + *right as u32)
                }
            };
            e.nodes.push(Node { split, left, right });
        }
    }
}
