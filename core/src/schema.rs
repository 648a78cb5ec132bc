//! The schema of a dataset, inferred from data and edited by hand, and validation against it.
//!
//! Validation returns anomalies as values, all at once; it is not an error for data to be wrong.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::data::{ColumnType, Table};
use crate::stats::{DatasetStatistics, value_counts};

/// The version of the schema format; readers refuse newer ones.
pub const SCHEMA_FORMAT_VERSION: u32 = 1;

/// Categorical columns with at most this many distinct values get a domain when inferred.
pub const MAX_INFERRED_DOMAIN: usize = 1000;

/// Share of unseen categories an inferred schema allows.
pub const DEFAULT_MAX_UNSEEN_RATE: f64 = 0.01;

/// What a dataset should look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub format_version: u32,
    /// Whether columns the schema does not list are an anomaly (a warning) or ignored.
    #[serde(default = "yes")]
    pub flag_extra_columns: bool,
    pub columns: Vec<ColumnSchema>,
}

fn yes() -> bool {
    true
}

/// What one column should look like. Absent constraints are not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether the column must be present.
    #[serde(default = "yes")]
    pub required: bool,
    /// The largest share of missing values allowed (0 means the column must always have a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missing_rate: Option<f64>,
    /// The smallest value expected, for numeric columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest value expected, for numeric columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The values expected, for categorical and boolean columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Vec<String>>,
    /// The largest share of non-missing values outside `domain` allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unseen_rate: Option<f64>,
    /// The largest share of rows outside `[min, max]` allowed (none: not one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_range_rate: Option<f64>,
}

/// How serious an anomaly is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One way the data differs from the schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Anomaly {
    pub column: String,
    pub severity: Severity,
    #[serde(flatten)]
    pub kind: AnomalyKind,
    /// A sentence for people: what is wrong, with the numbers.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnomalyKind {
    MissingColumn,
    ExtraColumn,
    WrongType {
        expected: ColumnType,
        found: ColumnType,
    },
    MissingRate {
        rate: f64,
        max: f64,
    },
    OutOfRange {
        count: u64,
        seen_min: f64,
        seen_max: f64,
    },
    UnseenCategories {
        rate: f64,
        max: f64,
        examples: Vec<String>,
    },
    /// The column's distribution moved from earlier data's (a pipeline's previous successful
    /// run): which drift thresholds it crosses.
    Drift {
        from_run: u64,
        reasons: Vec<String>,
    },
}

/// What went wrong reading a schema file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error(
        "{path}: schema format version {found} is newer than this kiln reads ({supported}); upgrade kiln"
    )]
    Version {
        path: String,
        found: u32,
        supported: u32,
    },
}

/// The share of rows a schema pinned for later runs lets fall outside its widened ranges.
pub const PINNED_OUT_OF_RANGE_RATE: f64 = 0.001;

/// The most categories a schema pinned for later runs keeps as a closed domain (TFX's default);
/// a column with more is an open set (ids, free text) whose new values are expected.
pub const MAX_PINNED_DOMAIN: usize = 100;

impl Schema {
    /// This inferred schema, made fit to judge later samples of the same source rather than
    /// describe this one: each numeric range widened by half its span on either side, with
    /// [`PINNED_OUT_OF_RANGE_RATE`] of rows allowed beyond it (a sample's extremes move from one
    /// sample to the next, the more so in a long tail; a range that moved is still caught), no
    /// closed domain over [`MAX_PINNED_DOMAIN`] categories, and at least 1% missing values
    /// allowed. Pipelines pin schemas made so.
    pub fn for_later_runs(mut self) -> Schema {
        for c in &mut self.columns {
            if let (Some(min), Some(max)) = (c.min, c.max) {
                let slack = if max > min {
                    (max - min) / 2.0
                } else {
                    min.abs().max(1.0)
                };
                c.min = Some(round_down_to(min - slack));
                c.max = Some(round_up_to(max + slack));
                c.max_out_of_range_rate = Some(PINNED_OUT_OF_RANGE_RATE);
            }
            if c.domain
                .as_ref()
                .is_some_and(|d| d.len() > MAX_PINNED_DOMAIN)
            {
                c.domain = None;
                c.max_unseen_rate = None;
            }
            if let Some(rate) = c.max_missing_rate {
                c.max_missing_rate = Some(rate.max(0.01));
            }
        }
        self
    }

    /// Infers a schema from a table and its statistics.
    ///
    /// Types are the table's; a column with missing values may miss twice as often as observed
    /// (at least 1% more); numeric ranges are the observed extremes; categorical columns with at
    /// most [`MAX_INFERRED_DOMAIN`] values get that domain with 1% unseen values allowed.
    /// Every constraint is meant to be edited.
    pub fn infer(table: &Table, stats: &DatasetStatistics) -> Schema {
        let mut columns = Vec::with_capacity(table.num_columns());
        for (index, cs) in stats.columns.iter().enumerate() {
            let rate = cs.missing_rate();
            let max_missing_rate = if rate == 0.0 {
                0.0
            } else {
                round_up((rate * 2.0).max(rate + 0.01).min(1.0))
            };
            let (min, max) = match &cs.numeric {
                Some(n) => (Some(n.min), Some(n.max)),
                None => (None, None),
            };
            let (domain, max_unseen_rate) = match cs.categorical.as_ref() {
                Some(c) if c.distinct as usize <= MAX_INFERRED_DOMAIN => {
                    let mut values: Vec<String> = value_counts(table, index)
                        .into_iter()
                        .map(|v| v.value)
                        .collect();
                    values.sort();
                    (Some(values), Some(DEFAULT_MAX_UNSEEN_RATE))
                }
                _ => (None, None),
            };
            columns.push(ColumnSchema {
                name: cs.name.clone(),
                column_type: cs.column_type,
                required: true,
                max_missing_rate: Some(max_missing_rate),
                min,
                max,
                domain,
                max_unseen_rate,
                max_out_of_range_rate: None,
            });
        }
        Schema {
            format_version: SCHEMA_FORMAT_VERSION,
            flag_extra_columns: true,
            columns,
        }
    }

    /// Reads a schema from JSON, or from TOML when `toml` is set.
    pub fn parse(path: &str, text: &str, toml: bool) -> Result<Schema, SchemaError> {
        let parse_error = |message: String| SchemaError::Parse {
            path: path.to_string(),
            message,
        };
        let schema: Schema = if toml {
            ::toml::from_str(text).map_err(|e| parse_error(e.to_string()))?
        } else {
            serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?
        };
        if schema.format_version > SCHEMA_FORMAT_VERSION {
            return Err(SchemaError::Version {
                path: path.to_string(),
                found: schema.format_version,
                supported: SCHEMA_FORMAT_VERSION,
            });
        }
        let mut seen = HashSet::new();
        for c in &schema.columns {
            if !seen.insert(c.name.as_str()) {
                return Err(parse_error(format!("column `{}` is listed twice", c.name)));
            }
        }
        Ok(schema)
    }

    /// Writes the schema as pretty JSON, or as TOML when `toml` is set.
    pub fn to_text(&self, toml: bool) -> String {
        if toml {
            ::toml::to_string_pretty(self).unwrap_or_else(|e| unreachable!("schema is TOML: {e}"))
        } else {
            serde_json::to_string_pretty(self)
                .unwrap_or_else(|e| unreachable!("schema is JSON: {e}"))
        }
    }

    /// Checks a table against the schema and returns every anomaly found, in column order.
    pub fn validate(&self, table: &Table, stats: &DatasetStatistics) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for col in &self.columns {
            let Some(index) = table.column_index(&col.name) else {
                if col.required {
                    out.push(Anomaly {
                        column: col.name.clone(),
                        severity: Severity::Error,
                        kind: AnomalyKind::MissingColumn,
                        message: format!("column `{}` is missing from the data", col.name),
                    });
                }
                continue;
            };
            let found = table.column_type(index);
            if !compatible(col.column_type, found) {
                out.push(Anomaly {
                    column: col.name.clone(),
                    severity: Severity::Error,
                    kind: AnomalyKind::WrongType {
                        expected: col.column_type,
                        found,
                    },
                    message: format!(
                        "column `{}` should be {} but holds {} values",
                        col.name, col.column_type, found
                    ),
                });
                continue;
            }
            let cs = &stats.columns[index];
            check_missing(col, cs, &mut out);
            if col.column_type.is_numeric() {
                check_range(col, table, index, &mut out);
            }
            if let Some(domain) = &col.domain {
                check_domain(col, domain, table, index, &mut out);
            }
        }
        if self.flag_extra_columns {
            for name in table.names() {
                if !self.columns.iter().any(|c| c.name == name) {
                    out.push(Anomaly {
                        column: name.to_string(),
                        severity: Severity::Warning,
                        kind: AnomalyKind::ExtraColumn,
                        message: format!("column `{name}` is not in the schema"),
                    });
                }
            }
        }
        out
    }
}

/// Whether data of type `found` satisfies a schema type `expected`: integers are valid floats, and
/// any value can be read as a category.
fn compatible(expected: ColumnType, found: ColumnType) -> bool {
    expected == found
        || (expected == ColumnType::Float && found == ColumnType::Integer)
        || expected == ColumnType::Categorical
}

fn check_missing(col: &ColumnSchema, cs: &crate::stats::ColumnStatistics, out: &mut Vec<Anomaly>) {
    let Some(max) = col.max_missing_rate else {
        return;
    };
    let rate = cs.missing_rate();
    if rate > max {
        out.push(Anomaly {
            column: col.name.clone(),
            severity: Severity::Error,
            kind: AnomalyKind::MissingRate { rate, max },
            message: format!(
                "column `{}` is missing in {} of {} rows ({}), more than the {} allowed",
                col.name,
                cs.missing,
                cs.count + cs.missing,
                percent(rate),
                percent(max)
            ),
        });
    }
}

fn check_range(col: &ColumnSchema, table: &Table, index: usize, out: &mut Vec<Anomaly>) {
    if col.min.is_none() && col.max.is_none() {
        return;
    }
    let lo = col.min.unwrap_or(f64::NEG_INFINITY);
    let hi = col.max.unwrap_or(f64::INFINITY);
    let mut count = 0u64;
    let (mut seen_min, mut seen_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for chunk in table.chunks(index) {
        for row in 0..chunk.len() {
            if let Some(v) = crate::data::numeric_value(chunk.as_ref(), row)
                && (v < lo || v > hi)
            {
                count += 1;
                seen_min = seen_min.min(v);
                seen_max = seen_max.max(v);
            }
        }
    }
    let allowed = col
        .max_out_of_range_rate
        .map_or(0, |rate| (rate * table.num_rows() as f64).floor() as u64);
    if count > allowed {
        out.push(Anomaly {
            column: col.name.clone(),
            severity: Severity::Error,
            kind: AnomalyKind::OutOfRange {
                count,
                seen_min,
                seen_max,
            },
            message: format!(
                "column `{}` has {count} values outside [{}, {}] (from {seen_min} to {seen_max}){}",
                col.name,
                col.min.map_or("-inf".to_string(), |v| v.to_string()),
                col.max.map_or("inf".to_string(), |v| v.to_string()),
                if allowed > 0 {
                    format!(", more than the {allowed} allowed")
                } else {
                    String::new()
                }
            ),
        });
    }
}

fn check_domain(
    col: &ColumnSchema,
    domain: &[String],
    table: &Table,
    index: usize,
    out: &mut Vec<Anomaly>,
) {
    let known: HashSet<&str> = domain.iter().map(String::as_str).collect();
    let counts = value_counts(table, index);
    let total: u64 = counts.iter().map(|v| v.count).sum();
    let unseen: Vec<&crate::stats::ValueCount> = counts
        .iter()
        .filter(|v| !known.contains(v.value.as_str()))
        .collect();
    let unseen_count: u64 = unseen.iter().map(|v| v.count).sum();
    if total == 0 || unseen_count == 0 {
        return;
    }
    let rate = unseen_count as f64 / total as f64;
    let max = col.max_unseen_rate.unwrap_or(0.0);
    if rate > max {
        let examples: Vec<String> = unseen.iter().take(5).map(|v| v.value.clone()).collect();
        out.push(Anomaly {
            column: col.name.clone(),
            severity: Severity::Error,
            kind: AnomalyKind::UnseenCategories {
                rate,
                max,
                examples: examples.clone(),
            },
            message: format!(
                "column `{}` has {} values outside its domain ({} of rows, more than the {} allowed), e.g. {}",
                col.name,
                unseen_count,
                percent(rate),
                percent(max),
                examples
                    .iter()
                    .map(|e| format!("{e:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
}

/// `x` rounded down (up) to three significant digits, so widened bounds read cleanly.
fn round_down_to(x: f64) -> f64 {
    round_to(x, f64::floor)
}

fn round_up_to(x: f64) -> f64 {
    round_to(x, f64::ceil)
}

fn round_to(x: f64, f: fn(f64) -> f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    f(x * scale) / scale
}

fn round_up(x: f64) -> f64 {
    (x * 10_000.0).ceil() / 10_000.0
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ReadOptions, read_csv_str};

    fn check(train: &str, new: &str) -> Vec<String> {
        let o = ReadOptions::default();
        let t = read_csv_str(train, &o).unwrap();
        let schema = Schema::infer(&t, &DatasetStatistics::compute(&t));
        let n = read_csv_str(new, &o).unwrap();
        schema
            .validate(&n, &DatasetStatistics::compute(&n))
            .into_iter()
            .map(|a| format!("{}: {}", a.severity, a.message))
            .collect()
    }

    #[test]
    fn same_data_has_no_anomalies() {
        let d = "x,c\n1,a\n2,b\n3,a\n";
        assert!(check(d, d).is_empty());
    }

    #[test]
    fn finds_every_kind_at_once() {
        let got = check("x,c,y\n1,a,1\n2,b,2\n", "x,c,z\nNA,zz,1\n9,a,1\n");
        assert_eq!(
            got,
            [
                "error: column `x` is missing in 1 of 2 rows (50.00%), more than the 0.00% allowed",
                "error: column `x` has 1 values outside [1, 2] (from 9 to 9)",
                "error: column `c` has 1 values outside its domain (50.00% of rows, more than the 1.00% allowed), e.g. \"zz\"",
                "error: column `y` is missing from the data",
                "warning: column `z` is not in the schema",
            ]
        );
    }

    #[test]
    fn a_schema_for_later_runs_lets_a_new_sample_through_and_catches_a_moved_range() {
        let o = ReadOptions::default();
        let first = read_csv_str("x,c,id\n10,a,u1\n20,b,u2\n30,a,u3\n", &o).unwrap();
        let mut schema = Schema::infer(&first, &DatasetStatistics::compute(&first));
        // Pretend `id` took more values than a closed domain may hold.
        schema.columns[2].domain = Some((0..=MAX_PINNED_DOMAIN).map(|i| format!("u{i}")).collect());
        let pinned = schema.for_later_runs();
        assert_eq!(
            (pinned.columns[0].min, pinned.columns[0].max),
            (Some(0.0), Some(40.0))
        );
        assert_eq!(pinned.columns[1].domain, Some(vec!["a".into(), "b".into()]));
        assert_eq!(pinned.columns[2].domain, None, "an open set");
        assert_eq!(pinned.columns[0].max_missing_rate, Some(0.01));
        let validate = |csv: &str| -> Vec<String> {
            let t = read_csv_str(csv, &o).unwrap();
            pinned
                .validate(&t, &DatasetStatistics::compute(&t))
                .into_iter()
                .map(|a| a.message)
                .collect()
        };
        assert!(validate("x,c,id\n5,b,u9\n35,a,u10\n").is_empty());
        let moved = validate("x,c,id\n5000,a,u1\n30,b,u2\n");
        assert_eq!(
            moved,
            ["column `x` has 1 values outside [0, 40] (from 5000 to 5000)"]
        );
    }

    #[test]
    fn toml_and_json_round_trip() {
        let t = read_csv_str("x,c\n1,a\n2,NA\n", &ReadOptions::default()).unwrap();
        let s = Schema::infer(&t, &DatasetStatistics::compute(&t));
        for toml in [false, true] {
            assert_eq!(Schema::parse("s", &s.to_text(toml), toml).unwrap(), s);
        }
    }
}
