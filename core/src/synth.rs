//! A deterministic synthetic click-through dataset, for examples, tests and benchmarks at any size.
//!
//! Columns, in order:
//! - `click`: the label, 0/1, drawn from a known logistic model of the features below;
//! - `i1`…`i8`: numeric columns on different scales (counts, prices, ratios, ages, durations);
//!   `i1`, `i4` and `i8` have 5–20% missing values and do not enter the label's model;
//! - `c1`…`c5`: categorical columns with 10, 100, 1,000, 5,000 and 10,000 values and Zipf-like
//!   frequencies (`c4` has 10% missing).
//!
//! The same seed and row count always give the same bytes.

use std::io::Write;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::progress::{Progress, Unit};

/// Cardinalities of `c1`…`c5`.
pub const CTR_CARDINALITIES: [usize; 5] = [10, 100, 1_000, 5_000, 10_000];

/// The header of the synthetic CTR dataset.
pub fn ctr_header() -> Vec<String> {
    let mut h = vec!["click".to_string()];
    h.extend((1..=8).map(|i| format!("i{i}")));
    h.extend((1..=5).map(|i| format!("c{i}")));
    h
}

/// The intercept and weights of the logistic model that draws `click`:
/// logit = `CTR_INTERCEPT` + Σ wᵢ·zᵢ + effect(c1) + effect(c2), where zᵢ is the standardized
/// latent value of `iᵢ` and effect(c) = 0.8·sin(index of c).
pub const CTR_INTERCEPT: f64 = -1.2;
pub const CTR_WEIGHTS: [f64; 8] = [0.0, -0.5, 0.3, 0.0, 0.6, -0.4, 0.2, 0.0];

/// Samples a Zipf-like (s = 1.1) index in `0..n` from a precomputed cumulative table.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(1.1);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Generates the synthetic CTR rows one by one: each row's CSV fields and the probability of a
/// click under the generator's true model (what no model of the observed columns can beat).
pub struct CtrRows {
    rng: ChaCha8Rng,
    zipfs: Vec<Zipf>,
}

impl CtrRows {
    pub fn new(seed: u64) -> CtrRows {
        CtrRows {
            rng: ChaCha8Rng::seed_from_u64(seed),
            zipfs: CTR_CARDINALITIES.iter().map(|n| Zipf::new(*n)).collect(),
        }
    }

    /// The next row's fields (in [`ctr_header`] order) and its true click probability.
    pub fn next_row(&mut self) -> (Vec<String>, f64) {
        let rng = &mut self.rng;
        let z: [f64; 8] = std::array::from_fn(|_| normal(rng));
        let cats: Vec<usize> = self.zipfs.iter().map(|zf| zf.sample(rng)).collect();
        let mut logit = CTR_INTERCEPT;
        for (w, zi) in CTR_WEIGHTS.iter().zip(&z) {
            logit += w * zi;
        }
        logit += 0.8 * (cats[0] as f64).sin() + 0.8 * (cats[1] as f64).sin();
        let p = 1.0 / (1.0 + (-logit).exp());
        let click = u8::from(rng.random::<f64>() < p);

        // Observed numeric values: monotone maps of the latent z onto realistic scales.
        let values: [String; 8] = [
            format!("{}", (3.0 * (0.6 * z[0]).exp()).floor()), // counts
            format!("{:.2}", 50.0 * (1.2 * z[1]).exp()),       // prices, heavy tail
            format!("{:.4}", 0.5 + 0.15 * z[2]),               // a ratio
            format!("{:.3}", z[3]),                            // an unrelated score
            format!("{:.1}", 120.0 * (0.8 * z[4]).exp()),      // durations in seconds
            format!("{}", (40.0 + 12.0 * z[5]).clamp(18.0, 90.0).round()), // age
            format!("{:.0}", 1000.0 + 300.0 * z[6]),           // large integers
            format!("{:.5}", 1e-3 * (0.5 * z[7]).exp()),       // small magnitudes
        ];
        // Missing values fall in the columns the label does not depend on, so the true model stays
        // within reach of a model of the observed columns.
        let missing_rate = [0.05, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.15];
        let mut record = Vec::with_capacity(14);
        record.push(click.to_string());
        for (v, rate) in values.into_iter().zip(missing_rate) {
            let m = rate > 0.0 && rng.random::<f64>() < rate;
            record.push(if m { String::new() } else { v });
        }
        for (i, c) in cats.iter().enumerate() {
            let m = i == 3 && rng.random::<f64>() < 0.1;
            record.push(if m {
                String::new()
            } else {
                format!("c{}_{c:x}", i + 1)
            });
        }
        (record, p)
    }
}

/// Writes `rows` rows of the synthetic CTR dataset as CSV.
pub fn write_ctr_csv(
    out: &mut dyn Write,
    rows: u64,
    seed: u64,
    progress: &dyn Progress,
) -> std::io::Result<()> {
    let mut gen_rows = CtrRows::new(seed);
    let mut w = csv::Writer::from_writer(out);
    w.write_record(ctr_header())?;
    progress.start("generating", Some(rows), Unit::Rows);
    for row in 0..rows {
        let (record, _) = gen_rows.next_row();
        w.write_record(&record)?;
        if row % 16_384 == 0 {
            progress.set(row);
        }
    }
    w.flush()?;
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    #[test]
    fn same_seed_same_bytes() {
        let make = |seed| {
            let mut v = Vec::new();
            write_ctr_csv(&mut v, 200, seed, &NoProgress).unwrap();
            v
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }
}
