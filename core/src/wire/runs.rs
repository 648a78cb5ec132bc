//! The runs API: `GET /api/runs` and `GET /api/runs/{id}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::registry::query::{run_from_json, run_json};
use crate::registry::{MetricPoint, Run};

/// A run as the API writes it: ids as people type them (`0000002a`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunText(pub Run);

impl Serialize for RunText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        run_json(&self.0).serialize(s)
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    pub run: RunText,
    pub metrics: BTreeMap<String, MetricPoint>,
}

/// `GET /api/runs`: the first `limit` runs found, and how many were found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    pub runs: Vec<RunEntry>,
    pub total: usize,
}

/// `GET /api/runs/{id}`: the run, its latest metrics and each metric's curve (at most 40 points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunText,
    pub metrics: BTreeMap<String, MetricPoint>,
    pub series: BTreeMap<String, Vec<f64>>,
}
