//! The runs API: `/api/runs…` to list, show, create, log to, attach artifacts to and end runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::registry::query::{Filter, OrderBy, RunSearch, run_from_json, run_json};
use crate::registry::{
    ArtifactKind, Lineage, MetricPoint, NewRun, RegistryError, Run, RunStatus, parse_run_id,
    run_id_text,
};

/// A run as the API writes it: ids as people type them (`0000002a`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunText(pub Run);

impl Serialize for RunText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        run_json(&self.0).serialize(s)
    }
}

/// A run's id (and parent's) as people type them: eight or more hex digits.
impl schemars::JsonSchema for RunText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Run".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = Run::json_schema(generator);
        let id = schemars::json_schema!({ "type": "string", "pattern": "^[0-9a-f]{8,}$" });
        if let Some(properties) = schema
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            properties.insert("id".into(), id.clone().into());
            properties.insert(
                "parent".into(),
                schemars::json_schema!({ "anyOf": [id, { "type": "null" }] }).into(),
            );
        }
        schema
    }
}

impl<'de> Deserialize<'de> for RunText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RunText, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        run_from_json(value)
            .map(RunText)
            .map_err(serde::de::Error::custom)
    }
}

/// One run of a list, with its latest metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunEntry {
    pub run: RunText,
    pub metrics: BTreeMap<String, MetricPoint>,
}

/// `GET /api/runs`: the first `limit` runs found, and how many were found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunPage {
    pub runs: Vec<RunEntry>,
    pub total: usize,
}

/// `GET /api/runs/{id}`: the run, its latest metrics and each metric's curve (at most 40 points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunDetail {
    pub run: RunText,
    pub metrics: BTreeMap<String, MetricPoint>,
    #[serde(with = "crate::registry::floats::series")]
    #[schemars(with = "BTreeMap<String, Vec<crate::registry::floats::Float>>")]
    pub series: BTreeMap<String, Vec<f64>>,
}

/// `GET /api/runs?…`: which runs, as `kiln runs list` takes them; every field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only the child runs of this run (a sweep's trials), as run ids are written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A filter such as `metrics.auc > 0.8 and params.lr = 0.01`.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// How many runs to list (50 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl RunQuery {
    /// The search the registry runs; a malformed filter or ordering names its field.
    pub fn search(&self) -> Result<RunSearch, RegistryError> {
        let bad = |what: &str, e: String| RegistryError::Invalid(format!("`{what}`: {e}"));
        Ok(RunSearch {
            experiment: self.experiment.clone(),
            status: self.status,
            parent: self.parent.as_deref().map(parse_run_id).transpose()?,
            filter: self
                .filter
                .as_deref()
                .map(Filter::parse)
                .transpose()
                .map_err(|e| bad("where", e))?,
            order: self
                .order_by
                .as_deref()
                .map(OrderBy::parse)
                .transpose()
                .map_err(|e| bad("order_by", e))?,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(50)
    }

    /// The query as a URL's query string (without the `?`).
    pub fn to_query_string(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

/// `POST /api/runs`: start a run (status `running`); the answer is the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub experiment: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub lineage: Lineage,
}

impl CreateRun {
    pub fn of(new: &NewRun) -> CreateRun {
        CreateRun {
            experiment: new.experiment.clone(),
            name: new.name.clone(),
            params: new.params.clone(),
            tags: new.tags.clone(),
            parent: new.parent.map(run_id_text),
            lineage: new.lineage.clone(),
        }
    }

    pub fn into_new_run(self) -> Result<NewRun, RegistryError> {
        Ok(NewRun {
            experiment: self.experiment,
            name: self.name,
            params: self.params,
            tags: self.tags,
            parent: self.parent.as_deref().map(parse_run_id).transpose()?,
            lineage: self.lineage,
        })
    }
}

/// One metric value at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricValue {
    pub key: String,
    /// A number, or `"NaN"`, `"Infinity"`, `"-Infinity"` (which JSON numbers cannot be).
    #[serde(with = "crate::registry::floats::one")]
    #[schemars(with = "crate::registry::floats::Float")]
    pub value: f64,
    #[serde(default)]
    pub step: i64,
}

/// `POST /api/runs/{id}/log`: metrics, parameters and tags, any of them left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogToRun {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricValue>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// The answer to a log: how many metric values were recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Logged {
    pub metrics: usize,
}

/// `POST /api/runs/{id}/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndRun {
    pub status: RunStatus,
}

/// `POST /api/runs/{id}/artifacts`: attach content already uploaded to
/// `PUT /api/artifacts/{digest}` (for a directory: its manifest and every file it lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachArtifact {
    pub name: String,
    pub digest: String,
    pub kind: ArtifactKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_that_json_numbers_cannot_hold_travel_by_name() {
        for v in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            let m = MetricValue {
                key: "loss".into(),
                value: v,
                step: 2,
            };
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<MetricValue>(&text).unwrap(), m);
        }
        let nan = MetricValue {
            key: "loss".into(),
            value: f64::NAN,
            step: 0,
        };
        let text = serde_json::to_string(&nan).unwrap();
        assert!(text.contains("\"NaN\""), "{text}");
        assert!(
            serde_json::from_str::<MetricValue>(&text)
                .unwrap()
                .value
                .is_nan()
        );
        assert!(serde_json::from_str::<MetricValue>(r#"{"key":"a","value":"lots"}"#).is_err());
        assert!(serde_json::from_str::<MetricValue>(r#"{"key":"a","value":null}"#).is_err());
    }
}
