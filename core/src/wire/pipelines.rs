//! The pipeline API of `kiln up`: `/api/pipelines…` and `/api/pipeline-runs…`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One pipeline a process runs (`GET /api/pipelines`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineInfo {
    pub pipeline: String,
    pub file: String,
    pub steps: usize,
    /// The schedule's cron expression; empty when the pipeline has none.
    pub cron: String,
    pub paused: bool,
    pub last_fire_ms: Option<i64>,
    /// RFC 3339; none when unscheduled or paused.
    pub next_fire: Option<String>,
}

/// Which steps run even when the cache holds their result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ForceSteps {
    /// `"all"`.
    All(AllSteps),
    /// `["train", "evaluate"]`.
    Steps(Vec<String>),
}

/// The word `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllSteps {
    All,
}

/// `POST /api/pipelines/{name}/runs`: every field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// Values over the file's defaults: strings, numbers or booleans, checked against each
    /// parameter's type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<ForceSteps>,
    /// The run's logical date: `YYYY-MM-DD`, or a time in RFC 3339 (a backfill's fire time);
    /// now by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

impl StartRun {
    /// The parameters as text, the form a pipeline's parameters are checked in.
    pub fn param_texts(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

/// The answer to a started run (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Started {
    pub pipeline: String,
    pub run: u64,
    /// Where the run's record is: `/api/pipeline-runs/{run}`.
    pub status: String,
}

/// The answer to a cancel (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancelling {
    pub run: u64,
    pub message: String,
}

/// The answer to `POST /api/pipelines/{name}/schedule/pause|resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChanged {
    pub pipeline: String,
    pub paused: bool,
    /// RFC 3339.
    pub last_fire: Option<String>,
}

/// `POST /api/pipeline-runs/prune`: delete the files of old finished runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Only this pipeline's runs (every pipeline's when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// How many of each pipeline's newest runs keep their files.
    pub keep: usize,
    /// Say what would go, and delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a prune removed (or would) of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pruned {
    pub pipeline: String,
    pub run: u64,
    pub dir: String,
    pub bytes: u64,
}

/// The answer to a prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PruneAnswer {
    pub pruned: Vec<Pruned>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_run_reads_what_clients_send_and_refuses_the_rest() {
        let s: StartRun =
            serde_json::from_str(r#"{"params": {"rows": 5, "who": "x"}, "force": "all"}"#).unwrap();
        assert_eq!(s.force, Some(ForceSteps::All(AllSteps::All)));
        assert_eq!(s.param_texts()["rows"], "5");
        let s: StartRun = serde_json::from_str(r#"{"force": ["train"]}"#).unwrap();
        assert_eq!(s.force, Some(ForceSteps::Steps(vec!["train".into()])));
        assert!(serde_json::from_str::<StartRun>(r#"{"force": "some"}"#).is_err());
        assert!(serde_json::from_str::<StartRun>(r#"{"parms": {}}"#).is_err());
        assert_eq!(
            serde_json::from_str::<StartRun>("{}").unwrap(),
            StartRun::default()
        );
    }
}

/// `GET /api/pipelines/{name}/schemas/diff?run=RUN[&step=ID]`: what a run's data would change
/// in the schema its `validate` step checks against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SchemaDiff {
    pub pipeline: String,
    pub step: String,
    pub run: u64,
    /// What is pinned now; none before the first run.
    pub pinned: Option<crate::registry::PinnedSchema>,
    /// The schema inferred from the run's data (TOML): what `accept` would pin.
    pub proposed: String,
    /// The run's data against the schema it was checked with.
    pub anomalies: Vec<crate::schema::Anomaly>,
}

/// `POST /api/pipelines/{name}/schemas/accept`: pin the schema inferred from a run's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptSchema {
    pub run: u64,
    /// The `validate` step; needed only when the pipeline has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why the new schema is right (recorded with the pin).
    pub reason: String,
    /// Who accepts it (the server's user by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}
