//! Analyze: one pass over training data per feature, producing the fitted state.

use std::collections::HashMap;

use super::apply::{category_text, numeric_steps};
use super::spec::{Encode, FeatureSpec, Fill, Impute, TransformSpec};
use super::{
    FittedFeature, FittedOn, FittedOp, FittedTransform, InputColumn, Scale, TransformError,
};
use crate::data::{ColumnType, Table};
use crate::stats::quantile_sorted;

impl TransformSpec {
    /// Fits the spec on a (training) table.
    pub fn fit(&self, table: &Table) -> Result<FittedTransform, TransformError> {
        self.check()?;
        let mut inputs: Vec<InputColumn> = Vec::new();
        let mut features = Vec::new();
        for (entry, spec) in self.features.iter().enumerate() {
            for column in &spec.columns {
                let index =
                    table
                        .column_index(column)
                        .ok_or_else(|| TransformError::UnknownColumn {
                            entry,
                            name: column.clone(),
                            hint: crate::suggest::hint(column, table.names()),
                        })?;
                let ty = table.column_type(index);
                if !inputs.iter().any(|i| &i.name == column) {
                    inputs.push(InputColumn {
                        name: column.clone(),
                        column_type: ty,
                    });
                }
                let op = if spec.encode.is_numeric() {
                    if ty == ColumnType::Categorical {
                        return Err(TransformError::NotNumeric {
                            entry,
                            column: column.clone(),
                            found: ty,
                            encode: spec.encode.as_str(),
                        });
                    }
                    fit_numeric(spec, table, index)
                } else {
                    fit_categorical(spec, table, index)
                }
                .map_err(|message| TransformError::Fit {
                    entry,
                    column: column.clone(),
                    message,
                })?;
                features.push(FittedFeature {
                    column: column.clone(),
                    op,
                });
            }
        }
        let fitted_on = FittedOn {
            source: table.source().to_string(),
            fingerprint: table.fingerprint().to_string(),
            rows: table.num_rows() as u64,
        };
        FittedTransform::new(fitted_on, inputs, features)
    }
}

fn fit_numeric(spec: &FeatureSpec, table: &Table, index: usize) -> Result<FittedOp, String> {
    let raw = table.numbers(index);
    let mut present: Vec<f64> = raw.iter().flatten().copied().collect();
    let missing = raw.len() - present.len();
    let keep_missing = spec.impute == Some(Impute::Keep);
    let impute = match spec.impute.unwrap_or(Impute::Mean) {
        Impute::None | Impute::Keep => None,
        Impute::Constant => match &spec.fill {
            Some(Fill::Number(v)) => Some(*v),
            _ => return Err("impute = \"constant\" needs a numeric `fill`".to_string()),
        },
        _ if present.is_empty() => {
            return Err("has no values to fit the imputation on".to_string());
        }
        Impute::Mean => Some(present.iter().sum::<f64>() / present.len() as f64),
        Impute::Median => {
            present.sort_unstable_by(f64::total_cmp);
            Some(quantile_sorted(&present, 0.5))
        }
        Impute::MostFrequent => {
            let mut counts: HashMap<u64, u64> = HashMap::new();
            for v in &present {
                *counts.entry(v.to_bits()).or_default() += 1;
            }
            counts
                .into_iter()
                .max_by(|a, b| {
                    a.1.cmp(&b.1)
                        .then(f64::from_bits(b.0).total_cmp(&f64::from_bits(a.0)))
                })
                .map(|(bits, _)| f64::from_bits(bits))
        }
    };
    if impute.is_none() && missing > 0 && !keep_missing {
        return Err(format!(
            "has {missing} missing values in the training data but impute = \"none\"; \
             choose an imputation"
        ));
    }
    let clip = spec.clip;
    let log1p = spec.log1p;
    let mut values = Vec::with_capacity(raw.len());
    for (row, v) in raw.iter().enumerate() {
        if v.is_none() && keep_missing {
            continue;
        }
        let x = numeric_steps(*v, impute, clip, log1p).map_err(|m| format!("row {row}: {m}"))?;
        values.push(x);
    }
    Ok(match spec.encode {
        Encode::Bucketize => {
            let boundaries = match (&spec.boundaries, spec.quantiles) {
                (Some(b), _) => b.clone(),
                (None, Some(k)) => {
                    if values.is_empty() {
                        return Err("has no values to fit bucket boundaries on".to_string());
                    }
                    values.sort_unstable_by(f64::total_cmp);
                    let mut b: Vec<f64> = (1..k)
                        .map(|i| quantile_sorted(&values, i as f64 / k as f64))
                        .collect();
                    b.dedup();
                    b
                }
                (None, None) => unreachable!("checked by the spec"),
            };
            FittedOp::Bucketize {
                impute,
                clip,
                log1p,
                boundaries,
                output: spec.output_or_default(),
            }
        }
        encode => {
            let scale = match encode {
                Encode::Standardize => {
                    let n = values.len().max(1) as f64;
                    let mean = values.iter().sum::<f64>() / n;
                    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                    let std = var.sqrt();
                    Scale::Standardize {
                        mean,
                        std: if std > 0.0 && std.is_finite() {
                            std
                        } else {
                            1.0
                        },
                    }
                }
                Encode::MinMax => {
                    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    if values.is_empty() {
                        Scale::MinMax { min: 0.0, max: 0.0 }
                    } else {
                        Scale::MinMax { min, max }
                    }
                }
                _ => Scale::None,
            };
            FittedOp::Numeric {
                impute,
                clip,
                log1p,
                scale,
                keep_missing,
            }
        }
    })
}

fn fit_categorical(spec: &FeatureSpec, table: &Table, index: usize) -> Result<FittedOp, String> {
    let ty = table.column_type(index);
    let counts = crate::stats::value_counts(table, index);
    let present: u64 = counts.iter().map(|v| v.count).sum();
    let missing = table.num_rows() as u64 - present;
    let impute = match spec.impute.unwrap_or(Impute::None) {
        Impute::None => None,
        Impute::Constant => Some(match &spec.fill {
            Some(Fill::Text(s)) => s.clone(),
            Some(Fill::Number(v)) => category_text(ty, *v),
            None => return Err("impute = \"constant\" needs `fill`".to_string()),
        }),
        Impute::MostFrequent => match counts.first() {
            Some(v) => Some(v.value.clone()),
            None => return Err("has no values to fit the imputation on".to_string()),
        },
        Impute::Mean | Impute::Median | Impute::Keep => unreachable!("checked by the spec"),
    };
    Ok(match spec.encode {
        Encode::Vocabulary => {
            let mut counts = counts;
            if let (Some(fill), true) = (&impute, missing > 0) {
                match counts.iter_mut().find(|v| &v.value == fill) {
                    Some(v) => v.count += missing,
                    None => counts.push(crate::stats::ValueCount {
                        value: fill.clone(),
                        count: missing,
                    }),
                }
                counts.sort_unstable_by(|a, b| {
                    b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value))
                });
            }
            let min_frequency = spec.min_frequency.unwrap_or(1);
            let vocabulary: Vec<String> = counts
                .into_iter()
                .filter(|v| v.count >= min_frequency)
                .take(spec.top_k.unwrap_or(usize::MAX))
                .map(|v| v.value)
                .collect();
            FittedOp::Vocabulary {
                impute,
                vocabulary,
                oov_buckets: spec.oov_buckets.unwrap_or(1),
                output: spec.output_or_default(),
            }
        }
        Encode::Hash => FittedOp::Hash {
            impute,
            buckets: spec.buckets.unwrap_or(1),
            output: spec.output_or_default(),
        },
        _ => unreachable!("numeric encodes are fitted by fit_numeric"),
    })
}
