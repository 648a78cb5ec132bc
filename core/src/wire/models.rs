//! The management API: `/api/models…`, `/api/deployments`, aliases and promotion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registry::{
    AliasEvent, Batching, Deployment, Expect, Model, ModelVersion, Route, Stage,
};

/// What serves a model's bare name now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Live {
    pub routes: Vec<LiveRoute>,
    pub shadow: Option<LiveShadow>,
    pub batching: Option<Batching>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LiveRoute {
    /// The alias or version the deployment names.
    pub target: String,
    pub percent: u32,
    pub version: u32,
    pub batching: bool,
    pub load_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LiveShadow {
    pub target: Option<String>,
    pub version: u32,
    pub requests: u64,
    pub agreements: u64,
    /// Agreements over requests; none before the first request.
    pub agreement_rate: Option<f64>,
}

/// One model in `GET /api/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelSummary {
    pub name: String,
    pub description: String,
    pub created_ms: i64,
    pub versions: usize,
    pub latest_version: Option<u32>,
    pub aliases: BTreeMap<String, u32>,
    pub live: Option<Live>,
    /// Why the model does not serve, when it does not.
    pub problem: Option<String>,
}

/// `GET /api/changes?epoch=E&after=S&wait=SECONDS`: which models changed (an alias moved, a
/// version came or went, the deployment changed) since change `S` of this server's run `E`,
/// waiting up to `wait` seconds for one. `resync` says the caller must re-read every model: it
/// asked about another run of the server, or about changes older than the server keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Changes {
    pub epoch: u64,
    pub seq: u64,
    pub resync: bool,
    pub models: Vec<String>,
}

/// `GET /api/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// One version in `GET /api/models/{name}`: its record and its stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionEntry {
    pub version: ModelVersion,
    pub stage: Stage,
}

/// `GET /api/models/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelDetail {
    pub model: Model,
    pub versions: Vec<VersionEntry>,
    pub aliases: BTreeMap<String, u32>,
    pub deployment: Deployment,
    /// What serves it now; none from a registry no server holds.
    pub live: Option<Live>,
    pub problem: Option<String>,
}

/// `POST /api/models/{name}/versions`: register a run's artifact as the next version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterVersion {
    /// The run, as run ids are written (`0000002a`).
    pub run: String,
    /// The run's artifact (`model` by default).
    #[serde(default = "model_artifact")]
    pub artifact: String,
    #[serde(default)]
    pub description: String,
    /// The model's input signature, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<serde_json::Value>,
}

fn model_artifact() -> String {
    "model".to_string()
}

/// `GET /api/models/{name}/history`: every alias move, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct History {
    pub events: Vec<AliasEvent>,
}

/// One model in `GET /api/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentEntry {
    pub model: String,
    pub deployment: Deployment,
    pub live: Option<Live>,
    pub problem: Option<String>,
}

/// A version the server holds in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoadedVersion {
    pub model: String,
    pub version: u32,
    pub load_ms: f64,
}

/// `GET /api/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentEntry>,
    pub loaded: Vec<LoadedVersion>,
}

/// `PUT /api/models/{name}/deployment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDeployment {
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Who the change is recorded as (the server's user by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to a deployment's change or reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeploymentChanged {
    pub deployment: Deployment,
    pub live: Option<Live>,
    pub problem: Option<String>,
}

/// The version an alias must point to for a change to apply: a number, or `"none"` (the alias
/// must not exist yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Expected {
    Version(u32),
    Word(NoVersion),
}

/// The word `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoVersion {
    None,
}

impl Expected {
    pub fn expect(expected: Option<Expected>) -> Expect {
        match expected {
            None => Expect::Any,
            Some(Expected::Word(NoVersion::None)) => Expect::Absent,
            Some(Expected::Version(v)) => Expect::Version(v),
        }
    }

    pub fn of(expect: Expect) -> Option<Expected> {
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Expected::Word(NoVersion::None)),
            Expect::Version(v) => Some(Expected::Version(v)),
        }
    }
}

/// `PUT /api/models/{name}/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expected>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// `DELETE /api/models/{name}/aliases/{alias}` (the body may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAlias {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expected>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to an alias's move or deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AliasChanged {
    pub event: AliasEvent,
    pub live: Option<Live>,
    pub problem: Option<String>,
}

/// `POST /api/models/{name}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    pub version: u32,
    /// `production` (the default) or `staging`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expected>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to a promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Promoted {
    pub event: AliasEvent,
    pub stage: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_read_as_numbers_or_none_and_nothing_else() {
        let a: SetAlias = serde_json::from_str(r#"{"version": 2, "expect": 1}"#).unwrap();
        assert_eq!(Expected::expect(a.expect), Expect::Version(1));
        let a: SetAlias = serde_json::from_str(r#"{"version": 2, "expect": "none"}"#).unwrap();
        assert_eq!(Expected::expect(a.expect), Expect::Absent);
        assert!(serde_json::from_str::<SetAlias>(r#"{"version": 2, "expect": "some"}"#).is_err());
        assert!(serde_json::from_str::<SetAlias>(r#"{"version": 2, "expect": -1}"#).is_err());
        assert!(serde_json::from_str::<SetAlias>(r#"{"version": 4294967296}"#).is_err());
        assert!(serde_json::from_str::<SetAlias>(r#"{"verison": 2}"#).is_err());
    }
}
