//! The records the registry stores, and their encoding: a format-version byte, then JSON.
//!
//! Metric points are the exception: they are many, so they are a version byte, a timestamp and a
//! value in fixed-width binary.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::RegistryError;

/// The format of every record this kiln writes. A store holding a newer one is refused.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A group of runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Experiment {
    pub id: u64,
    pub name: String,
    pub created_ms: Millis,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Killed => "killed",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<RunStatus, String> {
        match s.to_ascii_lowercase().as_str() {
            "running" => Ok(RunStatus::Running),
            "finished" => Ok(RunStatus::Finished),
            "failed" => Ok(RunStatus::Failed),
            "killed" => Ok(RunStatus::Killed),
            _ => Err(format!(
                "unknown run status `{s}`; expected running, finished, failed or killed"
            )),
        }
    }
}

/// Where a run's inputs came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
}

/// A file or directory attached to a run, stored by content digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ArtifactRef {
    /// The name the run gave it (unique within the run).
    pub name: String,
    /// `blake3:<hex>` of the file, or of the directory's manifest.
    pub digest: String,
    pub kind: ArtifactKind,
    /// Total bytes of content.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    File,
    Directory,
}

/// One training (or evaluation, or sweep) execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Run {
    pub id: u64,
    pub experiment_id: u64,
    pub name: String,
    pub status: RunStatus,
    pub start_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<Millis>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    #[serde(default)]
    pub lineage: Lineage,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
}

/// One point of a metric series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MetricPoint {
    pub step: i64,
    pub timestamp_ms: Millis,
    #[serde(with = "floats::one")]
    #[schemars(with = "floats::Float")]
    pub value: f64,
}

/// A registered model: a name with numbered versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Model {
    pub name: String,
    pub created_ms: Millis,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The number the next version gets (versions count from 1).
    pub next_version: u32,
}

/// One version of a registered model, made from a run's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelVersion {
    pub model: String,
    pub version: u32,
    pub created_ms: Millis,
    pub run_id: u64,
    /// The run artifact the version was made from.
    pub artifact: ArtifactRef,
    /// The model's input signature (columns and types) as the bundle states it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<serde_json::Value>,
    /// The source run's latest metrics when the version was made.
    #[serde(default, with = "floats::map")]
    #[schemars(with = "BTreeMap<String, floats::Float>")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One move of an alias, kept forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AliasEvent {
    pub model: String,
    pub alias: String,
    /// The version before the move (`None`: the alias was new).
    pub from: Option<u32>,
    /// The version after the move (`None`: the alias was deleted).
    pub to: Option<u32>,
    pub at_ms: Millis,
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    crate::threads::debug_assert_may_block("writing a registry record");
    let mut out = vec![RECORD_FORMAT_VERSION];
    serde_json::to_writer(&mut out, record)
        .unwrap_or_else(|e| unreachable!("registry records serialize: {e}"));
    out
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    crate::threads::debug_assert_may_block("reading a registry record");
    match bytes.split_first() {
        Some((&v, body)) if v <= RECORD_FORMAT_VERSION => {
            serde_json::from_slice(body).map_err(|e| RegistryError::Corrupt(format!("{what}: {e}")))
        }
        Some((&v, _)) => Err(RegistryError::NewerFormat {
            found: u32::from(v),
            supported: u32::from(RECORD_FORMAT_VERSION),
        }),
        None => Err(RegistryError::Corrupt(format!("{what}: empty record"))),
    }
}

pub(crate) fn encode_point(p: &MetricPoint) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = RECORD_FORMAT_VERSION;
    out[1..9].copy_from_slice(&p.timestamp_ms.to_be_bytes());
    out[9..17].copy_from_slice(&p.value.to_bits().to_be_bytes());
    out
}

pub(crate) fn decode_point(step: i64, bytes: &[u8]) -> Result<MetricPoint, RegistryError> {
    if bytes.len() != 17 || bytes[0] > RECORD_FORMAT_VERSION {
        return Err(RegistryError::Corrupt(
            "metric point of the wrong size or version".into(),
        ));
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[1..9]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&bytes[9..17]);
    Ok(MetricPoint {
        step,
        timestamp_ms: i64::from_be_bytes(ts),
        value: f64::from_bits(u64::from_be_bytes(v)),
    })
}

/// How servers route the traffic of one model: weighted targets, an optional shadow, and
/// optional dynamic batching. A model without a record is served as its `champion` alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deployment {
    pub model: String,
    /// Where requests for the bare model name go, by percentage (summing to 100).
    pub routes: Vec<Route>,
    /// An alias or version that receives a copy of the traffic; its answers are only compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// Merge concurrent requests into one forward pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    #[serde(default)]
    pub updated_ms: Millis,
    #[serde(default)]
    pub updated_by: String,
}

/// One weighted target of a deployment: an alias (followed as it moves) or a version number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Route {
    pub target: String,
    pub percent: u32,
}

impl std::str::FromStr for Route {
    type Err = String;

    /// `TARGET=PERCENT`, e.g. `champion=90` or `3=10%`.
    fn from_str(s: &str) -> Result<Route, String> {
        let (target, percent) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: give TARGET=PERCENT, e.g. champion=90"))?;
        let percent = percent
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{s:?}: the percentage must be a whole number"))?;
        Ok(Route {
            target: target.trim().to_string(),
            percent,
        })
    }
}

/// Dynamic batching of one model: a batch runs when it holds `max_batch` rows or when its
/// first request has waited `max_delay_us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Batching {
    pub max_batch: usize,
    pub max_delay_us: u64,
}

impl Deployment {
    /// The deployment a model has when none was set: all traffic to its `champion` alias.
    pub fn default_for(model: &str) -> Deployment {
        Deployment {
            model: model.to_string(),
            routes: vec![Route {
                target: "champion".to_string(),
                percent: 100,
            }],
            shadow: None,
            batching: None,
            updated_ms: 0,
            updated_by: String::new(),
        }
    }

    /// Every alias or version this deployment names, routes first, then the shadow.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .map(|r| r.target.as_str())
            .chain(self.shadow.as_deref())
    }
}

/// Floats as JSON: a number when finite, else the name JavaScript and MLflow give it (`"NaN"`,
/// `"Infinity"`, `"-Infinity"`), which JSON numbers cannot hold. A diverged loss or an undefined
/// metric is kept as what it is rather than written as `null` and misread.
pub mod floats {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// One float in JSON.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Float(pub f64);

    impl schemars::JsonSchema for Float {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "Float".into()
        }

        fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": "A number, or the name of one JSON cannot hold",
                "anyOf": [
                    { "type": "number" },
                    { "enum": ["NaN", "Infinity", "-Infinity"] }
                ]
            })
        }
    }

    impl Serialize for Float {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                v if v.is_finite() => s.serialize_f64(v),
                v if v.is_nan() => s.serialize_str("NaN"),
                v if v > 0.0 => s.serialize_str("Infinity"),
                _ => s.serialize_str("-Infinity"),
            }
        }
    }

    #[derive(Deserialize, schemars::JsonSchema)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Name(String),
    }

    impl<'de> Deserialize<'de> for Float {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Float, D::Error> {
            match Written::deserialize(d)? {
                Written::Number(v) => Ok(Float(v)),
                Written::Name(n) => match n.as_str() {
                    "NaN" => Ok(Float(f64::NAN)),
                    "Infinity" => Ok(Float(f64::INFINITY)),
                    "-Infinity" => Ok(Float(f64::NEG_INFINITY)),
                    other => Err(serde::de::Error::custom(format!(
                        "{other:?} is not a number (nor NaN, Infinity or -Infinity)"
                    ))),
                },
            }
        }
    }

    /// `#[serde(with = "floats::one")]` on an `f64`.
    pub mod one {
        use super::*;

        pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            Float(*v).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            Ok(Float::deserialize(d)?.0)
        }
    }

    /// `#[serde(with = "floats::map")]` on a `BTreeMap<String, f64>`.
    pub mod map {
        use super::*;

        pub fn serialize<S: Serializer>(
            m: &BTreeMap<String, f64>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_map(m.iter().map(|(k, v)| (k, Float(*v))))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BTreeMap<String, f64>, D::Error> {
            let m = BTreeMap::<String, Float>::deserialize(d)?;
            Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
        }
    }

    /// `#[serde(with = "floats::series")]` on a `BTreeMap<String, Vec<f64>>`.
    pub mod series {
        use super::*;

        pub fn serialize<S: Serializer>(
            m: &BTreeMap<String, Vec<f64>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_map(
                m.iter()
                    .map(|(k, v)| (k, v.iter().map(|x| Float(*x)).collect::<Vec<_>>())),
            )
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BTreeMap<String, Vec<f64>>, D::Error> {
            let m = BTreeMap::<String, Vec<Float>>::deserialize(d)?;
            Ok(m.into_iter()
                .map(|(k, v)| (k, v.into_iter().map(|x| x.0).collect()))
                .collect())
        }
    }
}
