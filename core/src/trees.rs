//! Tree ensembles: the neutral form a bundle stores them in, and the one evaluator that runs them,
//! for the trainer's own evaluation and for serving alike.
//!
//! A tree reads the transform's features of a row: feature `f` below the dense width is the
//! dense value `f` (a number, NaN when missing), and from there on the id column
//! `f - dense width` (a category id). A numeric split sends a row left when its value is at most
//! the threshold, and a missing value the way the split learned; a categorical split sends it left
//! when its id is in the split's set. A leaf's value is added to the output its tree belongs to,
//! after the ensemble's base score.
//!
//! In a bundle the ensemble is plain `f32` tensors, one entry per node, so any framework can write
//! one: `trees.feature`, `trees.threshold`, `trees.left`, `trees.right` (−1 at a leaf),
//! `trees.default_left` (1 or 0), `trees.value` (a leaf's value), `trees.category_start` and
//! `trees.category_count` (a categorical split's ids in `trees.categories`, sorted; count 0 for a
//! numeric split); per tree `trees.root` and `trees.output`; and `trees.base`, one per output.
//! Children come after their parent, so every path ends.

use std::collections::BTreeMap;

use crate::bundle::Weight;

/// How a node routes a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// The tree ends here; the value is added to the tree's output.
    Leaf(f32),
    /// `value <= threshold` goes left; a missing value goes left when `default_left`.
    Numeric {
        feature: u32,
        threshold: f32,
        default_left: bool,
    },
    /// An id in `categories[start..start + count]` goes left.
    Categorical {
        feature: u32,
        start: u32,
        count: u32,
    },
}

/// One node; `left` and `right` index the ensemble's nodes (unused at a leaf).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub split: Split,
    pub left: u32,
    pub right: u32,
}

/// A boosted ensemble: base scores plus the leaves each row reaches, summed per output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ensemble {
    /// Dense features the trees read (the transform's dense width).
    pub dense: usize,
    /// Id columns the trees read after the dense ones.
    pub ids: usize,
    /// The starting score of each output.
    pub base: Vec<f32>,
    /// Each tree's root node.
    pub roots: Vec<u32>,
    /// The output each tree adds to.
    pub outputs_of: Vec<u32>,
    pub nodes: Vec<Node>,
    /// The id sets of categorical splits, each sorted.
    pub categories: Vec<u32>,
}

impl Ensemble {
    pub fn outputs(&self) -> usize {
        self.base.len()
    }

    /// The raw scores (logits or values) of one row, added into `out` (`outputs()` long).
    #[inline]
    pub fn score_into(&self, dense: &[f32], ids: &[u32], out: &mut [f32]) {
        out.copy_from_slice(&self.base);
        for (root, output) in self.roots.iter().zip(&self.outputs_of) {
            out[*output as usize] += self.leaf(*root, dense, ids);
        }
    }

    /// The value of the leaf a row reaches from `root`.
    #[inline]
    pub fn leaf(&self, root: u32, dense: &[f32], ids: &[u32]) -> f32 {
        let mut at = root as usize;
        loop {
            let node = &self.nodes[at];
            let left = match node.split {
                Split::Leaf(v) => return v,
                Split::Numeric {
                    feature,
                    threshold,
                    default_left,
                } => {
                    let x = dense[feature as usize];
                    if x.is_nan() {
                        default_left
                    } else {
                        x <= threshold
                    }
                }
                Split::Categorical {
                    feature,
                    start,
                    count,
                } => {
                    let id = ids[feature as usize - self.dense];
                    let set = &self.categories[start as usize..(start + count) as usize];
                    set.binary_search(&id).is_ok()
                }
            };
            at = if left { node.left } else { node.right } as usize;
        }
    }

    /// Raw scores of `rows` rows of features, `outputs()` per row.
    pub fn score(&self, rows: usize, dense: &[f32], ids: &[u32]) -> Vec<f32> {
        let k = self.outputs();
        let mut out = vec![0.0; rows * k];
        for r in 0..rows {
            self.score_into(
                &dense[r * self.dense..(r + 1) * self.dense],
                &ids[r * self.ids..(r + 1) * self.ids],
                &mut out[r * k..(r + 1) * k],
            );
        }
        out
    }

    /// The ensemble as bundle tensors.
    pub fn to_weights(&self) -> BTreeMap<String, Weight> {
        let n = self.nodes.len();
        let mut columns: [Vec<f32>; 8] = Default::default();
        for node in &self.nodes {
            let (feature, threshold, default_left, value, start, count) = match node.split {
                Split::Leaf(v) => (0, 0.0, false, v, 0, 0),
                Split::Numeric {
                    feature,
                    threshold,
                    default_left,
                } => (feature, threshold, default_left, 0.0, 0, 0),
                Split::Categorical {
                    feature,
                    start,
                    count,
                } => (feature, 0.0, false, 0.0, start, count),
            };
            let leaf = matches!(node.split, Split::Leaf(_));
            let child = |c: u32| if leaf { -1.0 } else { c as f32 };
            for (column, v) in columns.iter_mut().zip([
                feature as f32,
                threshold,
                child(node.left),
                child(node.right),
                f32::from(u8::from(default_left)),
                value,
                start as f32,
                count as f32,
            ]) {
                column.push(v);
            }
        }
        let mut weights = BTreeMap::new();
        let mut put = |name: &str, data: Vec<f32>| {
            weights.insert(
                format!("trees.{name}"),
                Weight {
                    shape: vec![data.len()],
                    data,
                },
            );
        };
        for (name, column) in NODE_TENSORS.iter().zip(columns) {
            debug_assert_eq!(column.len(), n);
            put(name, column);
        }
        put(
            "categories",
            self.categories.iter().map(|c| *c as f32).collect(),
        );
        put("root", self.roots.iter().map(|c| *c as f32).collect());
        put(
            "output",
            self.outputs_of.iter().map(|c| *c as f32).collect(),
        );
        put("base", self.base.clone());
        weights
    }

    /// Reads an ensemble from bundle tensors and checks that every index is in range and every
    /// path ends, so that evaluation cannot fail.
    pub fn from_weights(
        weights: &BTreeMap<String, Weight>,
        dense: usize,
        ids: usize,
        outputs: usize,
    ) -> Result<Ensemble, String> {
        let get = |name: &str| -> Result<&[f32], String> {
            let w = weights
                .get(&format!("trees.{name}"))
                .ok_or_else(|| format!("tensor `trees.{name}` is missing"))?;
            if w.shape.len() != 1 || w.shape[0] != w.data.len() {
                return Err(format!(
                    "tensor `trees.{name}` has shape {:?}, expected one dimension",
                    w.shape
                ));
            }
            Ok(&w.data)
        };
        // An index stored as f32: a whole number in range.
        let index = |name: &str, v: f32, below: usize| -> Result<u32, String> {
            if v >= 0.0 && v.fract() == 0.0 && (v as usize) < below {
                Ok(v as u32)
            } else {
                Err(format!(
                    "`trees.{name}` holds {v}, not an index below {below}"
                ))
            }
        };
        let columns: Vec<&[f32]> = NODE_TENSORS
            .iter()
            .map(|name| get(name))
            .collect::<Result<_, _>>()?;
        let n = columns[0].len();
        if let Some((name, c)) = NODE_TENSORS
            .iter()
            .zip(&columns)
            .find(|(_, c)| c.len() != n)
        {
            return Err(format!(
                "tensor `trees.{name}` has {} entries, `trees.feature` {n}",
                c.len()
            ));
        }
        let categories: Vec<u32> = get("categories")?
            .iter()
            .map(|v| index("categories", *v, u32::MAX as usize))
            .collect::<Result<_, _>>()?;
        let rows: Vec<[f32; 8]> = (0..n)
            .map(|i| std::array::from_fn(|c| columns[c][i]))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, row) in rows.iter().enumerate() {
            let at = |c: usize| row[c];
            let node = if at(2) < 0.0 {
                if !at(5).is_finite() {
                    return Err(format!("leaf {i} has the value {}", at(5)));
                }
                Node {
                    split: Split::Leaf(at(5)),
                    left: 0,
                    right: 0,
                }
            } else {
                let feature = index("feature", at(0), dense + ids)?;
                let left = index("left", at(2), n)?;
                let right = index("right", at(3), n)?;
                if left as usize <= i || right as usize <= i {
                    return Err(format!("node {i}'s children do not come after it"));
                }
                let count = index("category_count", at(7), categories.len() + 1)?;
                let split = if count > 0 {
                    let start = index("category_start", at(6), categories.len())?;
                    let end = start as usize + count as usize;
                    if (feature as usize) < dense || end > categories.len() {
                        return Err(format!(
                            "node {i} splits on categories of a dense feature or past the id sets"
                        ));
                    }
                    if !categories[start as usize..end].is_sorted() {
                        return Err(format!("node {i}'s categories are not sorted"));
                    }
                    Split::Categorical {
                        feature,
                        start,
                        count,
                    }
                } else {
                    if feature as usize >= dense || at(1).is_nan() {
                        return Err(format!("node {i} is a numeric split of an id column"));
                    }
                    Split::Numeric {
                        feature,
                        threshold: at(1),
                        default_left: at(4) != 0.0,
                    }
                };
                Node { split, left, right }
            };
            nodes.push(node);
        }
        let roots: Vec<u32> = get("root")?
            .iter()
            .map(|v| index("root", *v, n))
            .collect::<Result<_, _>>()?;
        let outputs_of: Vec<u32> = get("output")?
            .iter()
            .map(|v| index("output", *v, outputs))
            .collect::<Result<_, _>>()?;
        if roots.len() != outputs_of.len() {
            return Err(format!(
                "{} roots but {} tree outputs",
                roots.len(),
                outputs_of.len()
            ));
        }
        let base = get("base")?.to_vec();
        if base.len() != outputs || base.iter().any(|b| !b.is_finite()) {
            return Err(format!(
                "`trees.base` must hold {outputs} finite values, holds {:?}",
                base
            ));
        }
        Ok(Ensemble {
            dense,
            ids,
            base,
            roots,
            outputs_of,
            nodes,
            categories,
        })
    }
}

/// The per-node tensors, in the order `to_weights` fills them.
const NODE_TENSORS: [&str; 8] = [
    "feature",
    "threshold",
    "left",
    "right",
    "default_left",
    "value",
    "category_start",
    "category_count",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two trees on one output: a numeric split on feature 0 (missing goes right) and a
    /// categorical split on the first id column.
    fn small() -> Ensemble {
        let leaf = |v| Node {
            split: Split::Leaf(v),
            left: 0,
            right: 0,
        };
        Ensemble {
            dense: 1,
            ids: 1,
            base: vec![0.5],
            roots: vec![0, 3],
            outputs_of: vec![0, 0],
            nodes: vec![
                Node {
                    split: Split::Numeric {
                        feature: 0,
                        threshold: 2.0,
                        default_left: false,
                    },
                    left: 1,
                    right: 2,
                },
                leaf(-1.0),
                leaf(1.0),
                Node {
                    split: Split::Categorical {
                        feature: 1,
                        start: 0,
                        count: 2,
                    },
                    left: 4,
                    right: 5,
                },
                leaf(10.0),
                leaf(20.0),
            ],
            categories: vec![3, 7],
        }
    }

    #[test]
    fn rows_follow_thresholds_missing_values_and_category_sets() {
        let e = small();
        let mut out = [0.0];
        for (x, id, want) in [
            (2.0, 3, 0.5 - 1.0 + 10.0),
            (2.5, 7, 0.5 + 1.0 + 10.0),
            (f32::NAN, 4, 0.5 + 1.0 + 20.0),
            (-9.0, 0, 0.5 - 1.0 + 20.0),
        ] {
            e.score_into(&[x], &[id], &mut out);
            assert_eq!(out[0], want, "x={x} id={id}");
        }
        assert_eq!(e.score(2, &[0.0, 5.0], &[7, 8]), vec![9.5, 21.5]);
    }

    #[test]
    fn tensors_round_trip_and_damaged_ones_are_refused() {
        let e = small();
        let w = e.to_weights();
        assert_eq!(Ensemble::from_weights(&w, 1, 1, 1).unwrap(), e);

        let damaged = |name: &str, at: usize, v: f32| {
            let mut w = w.clone();
            w.get_mut(&format!("trees.{name}")).unwrap().data[at] = v;
            Ensemble::from_weights(&w, 1, 1, 1).unwrap_err()
        };
        assert!(damaged("left", 0, 0.0).contains("do not come after"));
        assert!(damaged("right", 3, 99.0).contains("not an index below 6"));
        assert!(damaged("feature", 0, 5.0).contains("not an index below 2"));
        assert!(damaged("feature", 3, 0.0).contains("categories of a dense feature"));
        assert!(damaged("root", 1, 2.5).contains("not an index"));
        assert!(damaged("value", 4, f32::INFINITY).contains("leaf 4"));
        assert!(damaged("categories", 0, 9.0).contains("not sorted"));
        assert!(
            Ensemble::from_weights(&w, 1, 1, 2)
                .unwrap_err()
                .contains("`trees.base` must hold 2")
        );
        let mut short = w.clone();
        short.get_mut("trees.value").unwrap().data.pop();
        short.get_mut("trees.value").unwrap().shape = vec![5];
        assert!(
            Ensemble::from_weights(&short, 1, 1, 1)
                .unwrap_err()
                .contains("has 5 entries")
        );
    }
}
