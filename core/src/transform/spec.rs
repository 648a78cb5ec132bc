//! The transform spec: what a user writes (TOML or JSON) to say how raw columns become features.
//!
//! ```toml
//! [[features]]
//! columns = ["age", "income"]
//! impute = "median"          # mean (numeric default) | median | most_frequent | constant | keep | none
//! clip = [0, 1e6]
//! log1p = true
//! encode = "standardize"     # pass_through (default) | standardize | min_max | bucketize | vocabulary | hash
//!
//! [[features]]
//! columns = ["country"]
//! encode = "vocabulary"
//! top_k = 100                # most frequent values kept (default: all)
//! min_frequency = 5          # values seen fewer times go to the out-of-vocabulary buckets
//! oov_buckets = 1            # default 1; 0 makes an unseen value an error
//! output = "one_hot"         # one_hot (default for vocabulary and bucketize) | id (default for hash)
//! ```

use serde::{Deserialize, Serialize};

use super::TransformError;

/// How raw columns become features: a list of entries, each applying to one or more columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
}

/// One entry of a spec: the same steps for each listed column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impute: Option<Impute>,
    /// The value used by `impute = "constant"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<Fill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
    #[serde(default)]
    pub log1p: bool,
    #[serde(default)]
    pub encode: Encode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundaries: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_frequency: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oov_buckets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
}

/// How a missing value is filled before the other steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impute {
    Mean,
    Median,
    MostFrequent,
    Constant,
    /// A missing number stays missing (NaN in the feature), for gradient-boosted trees, which
    /// send it down the side each split learned; networks cannot read it.
    Keep,
    /// Missing values are an error for numeric encodes, and go to the first out-of-vocabulary
    /// bucket (vocabulary) or hash the empty string (hash).
    None,
}

/// The constant of `impute = "constant"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fill {
    Number(f64),
    Text(String),
}

/// The last step: how the value becomes features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encode {
    #[default]
    PassThrough,
    Standardize,
    MinMax,
    Bucketize,
    Vocabulary,
    Hash,
}

impl Encode {
    pub fn as_str(self) -> &'static str {
        match self {
            Encode::PassThrough => "pass_through",
            Encode::Standardize => "standardize",
            Encode::MinMax => "min_max",
            Encode::Bucketize => "bucketize",
            Encode::Vocabulary => "vocabulary",
            Encode::Hash => "hash",
        }
    }

    /// Whether the encode reads the column as numbers (the others read it as categories).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Encode::Vocabulary | Encode::Hash)
    }
}

/// How a discrete value (bucket, vocabulary entry, hash bucket) appears in the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// One dense `f32` feature per possible value, 1.0 for the value present.
    OneHot,
    /// One integer id column, for embedding tables.
    Id,
}

impl TransformSpec {
    /// Parses a TOML spec and checks that its options fit together.
    pub fn from_toml(text: &str) -> Result<TransformSpec, TransformError> {
        let spec: TransformSpec =
            toml::from_str(text).map_err(|e| TransformError::Spec(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// Parses a JSON spec and checks that its options fit together.
    pub fn from_json(text: &str) -> Result<TransformSpec, TransformError> {
        let spec: TransformSpec =
            serde_json::from_str(text).map_err(|e| TransformError::Spec(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// Checks that each entry's options fit its encode; the first problem is the error.
    pub fn check(&self) -> Result<(), TransformError> {
        if self.features.is_empty() {
            return Err(TransformError::Spec(
                "the spec has no [[features]] entries".to_string(),
            ));
        }
        for (i, f) in self.features.iter().enumerate() {
            f.check()
                .map_err(|m| TransformError::Spec(format!("features[{i}]: {m}")))?;
        }
        Ok(())
    }
}

impl FeatureSpec {
    fn check(&self) -> Result<(), String> {
        let encode = self.encode;
        let only = |set: bool, option: &str, allowed: &[Encode]| -> Result<(), String> {
            if set && !allowed.contains(&encode) {
                let names: Vec<String> = allowed
                    .iter()
                    .map(|e| format!("\"{}\"", e.as_str()))
                    .collect();
                return Err(format!(
                    "`{option}` applies only to encode = {}, not \"{}\"",
                    names.join(" or "),
                    encode.as_str()
                ));
            }
            Ok(())
        };
        if self.columns.is_empty() {
            return Err("`columns` is empty".to_string());
        }
        let numeric = [
            Encode::PassThrough,
            Encode::Standardize,
            Encode::MinMax,
            Encode::Bucketize,
        ];
        only(self.clip.is_some(), "clip", &numeric)?;
        only(self.log1p, "log1p", &numeric)?;
        only(
            self.boundaries.is_some(),
            "boundaries",
            &[Encode::Bucketize],
        )?;
        only(self.quantiles.is_some(), "quantiles", &[Encode::Bucketize])?;
        only(self.top_k.is_some(), "top_k", &[Encode::Vocabulary])?;
        only(
            self.min_frequency.is_some(),
            "min_frequency",
            &[Encode::Vocabulary],
        )?;
        only(
            self.oov_buckets.is_some(),
            "oov_buckets",
            &[Encode::Vocabulary],
        )?;
        only(self.buckets.is_some(), "buckets", &[Encode::Hash])?;
        only(
            self.output.is_some(),
            "output",
            &[Encode::Bucketize, Encode::Vocabulary, Encode::Hash],
        )?;
        match (self.impute, &self.fill) {
            (Some(Impute::Constant), None) => {
                return Err("impute = \"constant\" needs `fill`".to_string());
            }
            (Some(Impute::Constant), Some(Fill::Text(_))) if encode.is_numeric() => {
                return Err(format!(
                    "`fill` must be a number for encode = \"{}\"",
                    encode.as_str()
                ));
            }
            (Some(Impute::Constant), _) => {}
            (_, Some(_)) => return Err("`fill` applies only to impute = \"constant\"".to_string()),
            (Some(Impute::Keep), _) if !encode.is_numeric() || encode == Encode::Bucketize => {
                return Err(format!(
                    "impute = \"keep\" keeps a missing number as NaN, but encode = \"{}\" makes \
                     ids; use it with pass_through, standardize or min_max",
                    encode.as_str()
                ));
            }
            (Some(Impute::Mean | Impute::Median), _) if !encode.is_numeric() => {
                return Err(format!(
                    "impute = mean or median needs numbers, but encode = \"{}\" reads categories; \
                     use \"most_frequent\" or \"constant\"",
                    encode.as_str()
                ));
            }
            _ => {}
        }
        if let Some([lo, hi]) = self.clip
            && (lo > hi || lo.is_nan() || hi.is_nan())
        {
            return Err(format!("clip = [{lo}, {hi}] is not a range"));
        }
        if encode == Encode::Bucketize {
            match (&self.boundaries, self.quantiles) {
                (Some(_), Some(_)) => {
                    return Err("give `boundaries` or `quantiles`, not both".to_string());
                }
                (None, None) => {
                    return Err(
                        "encode = \"bucketize\" needs `boundaries = [...]` or `quantiles = K`"
                            .to_string(),
                    );
                }
                (Some(b), None)
                    if b.is_empty()
                        || b.windows(2).any(|w| w[0] >= w[1])
                        || b.iter().any(|x| !x.is_finite()) =>
                {
                    return Err("`boundaries` must be finite and strictly increasing".to_string());
                }
                (None, Some(k)) if k < 2 => {
                    return Err("`quantiles` must be at least 2".to_string());
                }
                _ => {}
            }
        }
        if encode == Encode::Hash && self.buckets.is_none_or(|b| b == 0) {
            return Err("encode = \"hash\" needs `buckets` (at least 1)".to_string());
        }
        if self.top_k == Some(0) {
            return Err("`top_k` must be at least 1".to_string());
        }
        Ok(())
    }

    /// The output this entry produces (its default when the spec does not say).
    pub fn output_or_default(&self) -> Output {
        self.output.unwrap_or(match self.encode {
            Encode::Hash => Output::Id,
            _ => Output::OneHot,
        })
    }
}
