//! Per-column statistics of a table: counts, moments, exact quantiles, histograms, top values.
//!
//! Statistics serialize to JSON: a model bundle keeps the statistics of its training data, and the
//! server compares live traffic against them.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

use crate::data::{ColumnType, Table, category_of_number, numeric_value};

/// The version of the statistics format; readers refuse newer ones.
pub const STATISTICS_FORMAT_VERSION: u32 = 1;

/// The quantiles kept for every numeric column.
pub const QUANTILES: [f64; 15] = [
    0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99,
];

/// Equal-width bins in a numeric histogram.
pub const HISTOGRAM_BINS: usize = 10;

/// How many of the most frequent values of a categorical column are kept.
pub const TOP_K: usize = 20;

/// Statistics of every column of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatistics {
    pub format_version: u32,
    pub source: String,
    pub fingerprint: String,
    pub rows: u64,
    pub columns: Vec<ColumnStatistics>,
}

/// Statistics of one column. Numeric columns (integer, float) have `numeric`; categorical and
/// boolean columns have `categorical`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStatistics {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Non-missing values.
    pub count: u64,
    pub missing: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericStatistics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categorical: Option<CategoricalStatistics>,
}

impl ColumnStatistics {
    /// The share of rows where the column is missing.
    pub fn missing_rate(&self) -> f64 {
        let total = self.count + self.missing;
        if total == 0 {
            0.0
        } else {
            self.missing as f64 / total as f64
        }
    }
}

/// Moments, extremes, exact quantiles and a histogram of a numeric column's non-missing values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStatistics {
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator, as pandas reports it).
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
    pub zeros: u64,
    /// Exact quantiles at [`QUANTILES`], by linear interpolation between order statistics
    /// (NumPy's default method).
    pub quantiles: Vec<Quantile>,
    pub histogram: Histogram,
}

impl NumericStatistics {
    /// The quantile at `q` if it is one of those kept.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles
            .iter()
            .find(|x| (x.q - q).abs() < 1e-9)
            .map(|x| x.value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub q: f64,
    pub value: f64,
}

/// Counts in equal-width bins; `edges` has one more entry than `counts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// Distinct count and the most frequent values of a categorical (or boolean) column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalStatistics {
    pub distinct: u64,
    /// Up to [`TOP_K`] values, most frequent first (ties by value).
    pub top: Vec<ValueCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCount {
    pub value: String,
    pub count: u64,
}

impl DatasetStatistics {
    /// Computes the statistics of every column of a table.
    pub fn compute(table: &Table) -> DatasetStatistics {
        let columns = (0..table.num_columns())
            .map(|i| column_statistics(table, i))
            .collect();
        DatasetStatistics {
            format_version: STATISTICS_FORMAT_VERSION,
            source: table.source().to_string(),
            fingerprint: table.fingerprint().to_string(),
            rows: table.num_rows() as u64,
            columns,
        }
    }

    pub fn column(&self, name: &str) -> Option<&ColumnStatistics> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Statistics of one column of a table.
pub fn column_statistics(table: &Table, index: usize) -> ColumnStatistics {
    let ty = table.column_type(index);
    let name = table.column_name(index).to_string();
    let total = table.num_rows() as u64;
    if ty.is_numeric() {
        let mut values = numeric_values(table.chunks(index));
        let count = values.len() as u64;
        let numeric = (!values.is_empty()).then(|| numeric_statistics(&mut values));
        ColumnStatistics {
            name,
            column_type: ty,
            count,
            missing: total - count,
            numeric,
            categorical: None,
        }
    } else {
        let counts = value_counts(table, index);
        let count: u64 = counts.iter().map(|v| v.count).sum();
        ColumnStatistics {
            name,
            column_type: ty,
            count,
            missing: total - count,
            numeric: None,
            categorical: Some(CategoricalStatistics {
                distinct: counts.len() as u64,
                top: counts.into_iter().take(TOP_K).collect(),
            }),
        }
    }
}

/// The non-missing values of a numeric (or boolean) column, as `f64`.
pub fn numeric_values<'a>(chunks: impl Iterator<Item = &'a ArrayRef>) -> Vec<f64> {
    let mut values = Vec::new();
    for chunk in chunks {
        values.reserve(chunk.len() - chunk.null_count());
        for row in 0..chunk.len() {
            if let Some(v) = numeric_value(chunk.as_ref(), row) {
                values.push(v);
            }
        }
    }
    values
}

/// Computes numeric statistics; sorts `values` in place.
fn numeric_statistics(values: &mut [f64]) -> NumericStatistics {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let zeros = values.iter().filter(|v| **v == 0.0).count() as u64;
    values.sort_unstable_by(f64::total_cmp);
    let min = values[0];
    let max = values[values.len() - 1];
    let quantiles = QUANTILES
        .iter()
        .map(|&q| Quantile {
            q,
            value: quantile_sorted(values, q),
        })
        .collect();
    NumericStatistics {
        mean,
        std_dev: var.sqrt(),
        min,
        max,
        zeros,
        quantiles,
        histogram: histogram(values, min, max),
    }
}

/// The `q` quantile of sorted values, interpolating linearly between order statistics;
/// NaN when there are none.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    if lo == hi {
        sorted[lo]
    } else {
        sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    }
}

fn histogram(sorted: &[f64], min: f64, max: f64) -> Histogram {
    if max <= min || !min.is_finite() || !max.is_finite() {
        return Histogram {
            edges: vec![min, max],
            counts: vec![sorted.len() as u64],
        };
    }
    let width = (max - min) / HISTOGRAM_BINS as f64;
    let edges: Vec<f64> = (0..=HISTOGRAM_BINS)
        .map(|i| {
            if i == HISTOGRAM_BINS {
                max
            } else {
                min + width * i as f64
            }
        })
        .collect();
    let mut counts = vec![0u64; HISTOGRAM_BINS];
    for v in sorted {
        let bin = (((v - min) / width) as usize).min(HISTOGRAM_BINS - 1);
        counts[bin] += 1;
    }
    Histogram { edges, counts }
}

/// Every distinct value of a column with its count, most frequent first (ties by value).
/// Numbers and booleans count by their text form.
pub fn value_counts(table: &Table, index: usize) -> Vec<ValueCount> {
    let ty = table.column_type(index);
    let mut counts: HashMap<String, u64> = HashMap::new();
    for chunk in table.chunks(index) {
        count_chunk(chunk.as_ref(), ty, &mut counts);
    }
    let mut out: Vec<ValueCount> = counts
        .into_iter()
        .map(|(value, count)| ValueCount { value, count })
        .collect();
    out.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    out
}

fn count_chunk(chunk: &dyn Array, ty: ColumnType, counts: &mut HashMap<String, u64>) {
    if let DataType::Dictionary(..) = chunk.data_type() {
        // Count dictionary keys first, then look each distinct string up once.
        let dict = chunk.as_dictionary::<Int32Type>();
        let values = dict.values().as_string::<i32>();
        let mut per_key = vec![0u64; values.len()];
        for key in dict.keys().iter().flatten() {
            per_key[key as usize] += 1;
        }
        for (key, n) in per_key.into_iter().enumerate() {
            if n > 0 {
                *counts.entry(values.value(key).to_string()).or_default() += n;
            }
        }
        return;
    }
    for row in 0..chunk.len() {
        if let Some(v) = numeric_value(chunk, row) {
            *counts.entry(category_of_number(ty, v)).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ReadOptions, read_csv_str};

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([1, 2, 3, 4, 10], [0.25, 0.5, 0.99]) == [2.0, 3.0, 9.76]
        let s = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile_sorted(&s, 0.25), 2.0);
        assert_eq!(quantile_sorted(&s, 0.5), 3.0);
        assert!((quantile_sorted(&s, 0.99) - 9.76).abs() < 1e-12);
    }

    #[test]
    fn numeric_and_categorical_columns() {
        let t = read_csv_str("x,c\n1,a\n2,b\nNA,a\n4,\n", &ReadOptions::default()).unwrap();
        let s = DatasetStatistics::compute(&t);
        let x = s.column("x").unwrap();
        assert_eq!((x.count, x.missing), (3, 1));
        let n = x.numeric.as_ref().unwrap();
        assert!((n.mean - 7.0 / 3.0).abs() < 1e-12);
        // pandas: Series([1, 2, 4]).std() == 1.5275252316519468
        assert!((n.std_dev - 1.527_525_231_651_946_8).abs() < 1e-12);
        assert_eq!(n.histogram.counts.iter().sum::<u64>(), 3);
        let c = s.column("c").unwrap();
        assert_eq!((c.count, c.missing), (3, 1));
        let cat = c.categorical.as_ref().unwrap();
        assert_eq!(cat.distinct, 2);
        assert_eq!(
            cat.top[0],
            ValueCount {
                value: "a".into(),
                count: 2
            }
        );
    }
}
