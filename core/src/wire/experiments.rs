//! The experiments API: `/api/experiments…`.

use serde::{Deserialize, Serialize};

use crate::registry::Experiment;

/// One experiment in `GET /api/experiments`, with how many runs it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExperimentEntry {
    #[serde(flatten)]
    pub experiment: Experiment,
    pub runs: usize,
}

/// `GET /api/experiments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExperimentList {
    pub experiments: Vec<ExperimentEntry>,
}

/// `POST /api/experiments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExperiment {
    pub name: String,
}

/// `POST /api/experiments/{name}/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameExperiment {
    pub name: String,
}

/// `DELETE /api/experiments/{name}`, `DELETE /api/models/{name}` and
/// `DELETE /api/models/{name}/versions/{version}` (the body may be left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// Delete even what is in use: an experiment's runs, versions aliases point to.
    #[serde(default)]
    pub force: bool,
    /// Who, for the alias history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to a deletion: what went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deleted {
    pub deleted: String,
    /// Records deleted with it (an experiment's runs, a model's versions).
    pub with: usize,
}
