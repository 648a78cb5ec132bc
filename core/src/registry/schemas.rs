//! Pinned schemas of pipelines' `validate` steps: the schema a step checks each run's data
//! against, once the first run has inferred it, until a person accepts another. Each pin keeps
//! the run it came from, who pinned it and why, and the pins before it.

use serde::{Deserialize, Serialize};

use super::records::{Millis, decode, encode, now_ms};
use super::{Registry, RegistryError, check_key};

/// How a schema came to be pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PinnedBy {
    /// Inferred from the data of the pipeline's first run (replaced while that run has not
    /// succeeded).
    Inferred,
    /// Accepted by a person (`kiln pipeline schema accept`).
    Accepted,
}

impl PinnedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            PinnedBy::Inferred => "inferred",
            PinnedBy::Accepted => "accepted",
        }
    }
}

/// One pin of a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SchemaPin {
    /// The schema, as TOML (what `kiln data schema` writes).
    pub schema: String,
    /// The pipeline run whose data the schema was inferred from.
    pub run: u64,
    pub how: PinnedBy,
    pub by: String,
    pub reason: String,
    pub pinned_ms: Millis,
}

/// The pinned schema of one `validate` step, with the pins it replaced (newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PinnedSchema {
    pub pipeline: String,
    pub step: String,
    pub pin: SchemaPin,
    #[serde(default)]
    pub earlier: Vec<SchemaPin>,
}

impl SchemaPin {
    /// How, by whom and why it was pinned: `accepted by ana: new colours launched`.
    pub fn how_and_why(&self) -> String {
        if self.reason.is_empty() {
            format!("{} by {}", self.how.as_str(), self.by)
        } else {
            format!("{} by {}: {}", self.how.as_str(), self.by, self.reason)
        }
    }

    /// A pin made now.
    pub fn new(schema: String, run: u64, how: PinnedBy, by: &str, reason: &str) -> SchemaPin {
        SchemaPin {
            schema,
            run,
            how,
            by: by.to_string(),
            reason: reason.to_string(),
            pinned_ms: now_ms(),
        }
    }
}

fn key(pipeline: &str, step: &str) -> Vec<u8> {
    let mut k = pipeline.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(step.as_bytes());
    k
}

impl Registry {
    /// The schema pinned for a pipeline's step, if any.
    pub fn pinned_schema(
        &self,
        pipeline: &str,
        step: &str,
    ) -> Result<Option<PinnedSchema>, RegistryError> {
        match self.pipeline_schemas.get(key(pipeline, step))? {
            Some(bytes) => Ok(Some(decode("pinned schema", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every pinned schema of a pipeline, by step.
    pub fn pinned_schemas(&self, pipeline: &str) -> Result<Vec<PinnedSchema>, RegistryError> {
        let mut prefix = pipeline.as_bytes().to_vec();
        prefix.push(0);
        self.pipeline_schemas
            .scan_prefix(prefix)
            .values()
            .map(|v| decode("pinned schema", &v?))
            .collect()
    }

    /// Pins a schema for a pipeline's step, keeping the pin it replaces; durable on return.
    pub fn pin_schema(
        &self,
        pipeline: &str,
        step: &str,
        pin: SchemaPin,
    ) -> Result<PinnedSchema, RegistryError> {
        check_key("pipeline", pipeline)?;
        check_key("step", step)?;
        let record = match self.pinned_schema(pipeline, step)? {
            Some(mut old) => {
                let before = std::mem::replace(&mut old.pin, pin);
                old.earlier.insert(0, before);
                old
            }
            None => PinnedSchema {
                pipeline: pipeline.to_string(),
                step: step.to_string(),
                pin,
                earlier: Vec::new(),
            },
        };
        self.pipeline_schemas
            .insert(key(pipeline, step), encode(&record))?;
        self.flush()?;
        Ok(record)
    }
}
