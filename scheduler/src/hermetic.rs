//! One step run on its own, the way a workflow engine (Argo Workflows, Kubeflow Pipelines) runs
//! it: `kiln pipeline step FILE STEP --inputs DIR --outputs DIR`, in a container of its own, with
//! nothing but the pipeline file, its parameters and the output directories of the steps it
//! reads, which the engine carries between containers as artifacts.
//!
//! **The hand-over.** A step's output directory holds its files and a `.kiln/` folder:
//! `.kiln/step.json` (its [`StepFile`]: state, values, the path its values were written under),
//! and one small file per value for the engine to read as an output parameter:
//! `.kiln/state`, `.kiln/digest` (and its first 16 digits, `.kiln/key`), `.kiln/values/NAME`. A step that reads step `ID` finds its
//! directory at `INPUTS/ID` (or where `--input ID=PATH` says); values that named files under
//! the producer's output directory are read as the same files under that directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::registry::{StepExecState, StepExecution};
use serde::{Deserialize, Serialize};

/// The folder inside a step's output directory that holds its record.
pub const RECORD_DIR: &str = ".kiln";

/// The largest `step.json` read back: a record is a few KiB; more is not one.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// What a step run on its own leaves beside its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub pipeline: String,
    pub step: String,
    pub state: StepExecState,
    pub attempts: u32,
    pub error: Option<String>,
    pub reason: Option<String>,
    /// The output directory as the step saw it: values that start with it name its files.
    pub outputs: String,
    pub values: BTreeMap<String, String>,
    pub output_digest: Option<String>,
    /// Whether it failed in a way another attempt may not repeat (a refused argument or a
    /// malformed file is not retried).
    #[serde(default)]
    pub retry: bool,
}

impl StepFile {
    /// The record of `execution`, a step of `pipeline` that wrote to `outputs`.
    pub fn of(pipeline: &str, execution: &StepExecution, outputs: &Path) -> StepFile {
        StepFile {
            pipeline: pipeline.to_string(),
            step: execution.id.clone(),
            state: execution.state,
            attempts: execution.attempts,
            error: execution.error.clone(),
            reason: execution.reason.clone(),
            outputs: outputs.display().to_string(),
            values: execution.values.clone(),
            output_digest: execution.output_digest.clone(),
            // A refusal carries the executor's reason; a failure worth retrying carries none.
            retry: matches!(
                execution.state,
                StepExecState::Failed | StepExecState::TimedOut
            ) && execution.reason.is_none(),
        }
    }

    /// Writes the record into `outputs/.kiln/`.
    pub fn write(&self, outputs: &Path) -> Result<(), String> {
        let dir = outputs.join(RECORD_DIR);
        let values = dir.join("values");
        std::fs::create_dir_all(&values).map_err(|e| format!("{}: {e}", values.display()))?;
        let put = |path: PathBuf, text: &str| {
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        put(dir.join("step.json"), &json)?;
        put(dir.join("state"), self.state.as_str())?;
        let digest = self.output_digest.as_deref().unwrap_or("");
        put(dir.join("digest"), digest)?;
        // What an engine's cache key holds of it (Argo's keys are short).
        put(dir.join("key"), digest.get(..16).unwrap_or(digest))?;
        // Only names that are safe as file names (and as an engine's parameter names).
        for (name, value) in &self.values {
            if crate::pipeline::is_name(name) {
                put(values.join(name), value)?;
            }
        }
        Ok(())
    }

    /// The record a step left in `dir` (its output directory as this step received it).
    pub fn read(dir: &Path) -> Result<StepFile, String> {
        let path = dir.join(RECORD_DIR).join("step.json");
        let size = std::fs::metadata(&path)
            .map_err(|e| {
                format!(
                    "{}: {e}; a step's inputs are the output directories `kiln pipeline step` wrote",
                    path.display()
                )
            })?
            .len();
        if size > MAX_RECORD_BYTES {
            return Err(format!(
                "{}: {size} bytes is not a step record",
                path.display()
            ));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The execution this record stands for, its directory now `dir`: values that named files
    /// under the producer's output directory name the same files under `dir`.
    pub fn execution(&self, dir: &Path) -> StepExecution {
        let values = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), rebase(v, &self.outputs, dir)))
            .collect();
        StepExecution {
            state: self.state,
            attempts: self.attempts,
            error: self.error.clone(),
            reason: self.reason.clone(),
            outputs_dir: Some(dir.display().to_string()),
            values,
            output_digest: self.output_digest.clone(),
            ..StepExecution::pending(&self.step, &[])
        }
    }
}

/// `value` with a leading `from` (a directory, whole path components only) replaced by `to`.
fn rebase(value: &str, from: &str, to: &Path) -> String {
    if from.is_empty() {
        return value.to_string();
    }
    match value.strip_prefix(from) {
        Some("") => to.display().to_string(),
        Some(rest) if rest.starts_with('/') => to.join(&rest[1..]).display().to_string(),
        _ => value.to_string(),
    }
}

/// Where a step finds the output directories of the steps it reads.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `--inputs DIR`: step `ID`'s directory is `DIR/ID`.
    pub dir: Option<PathBuf>,
    /// `--input ID=PATH`, over `dir`.
    pub each: BTreeMap<String, PathBuf>,
}

impl Inputs {
    /// Where step `id`'s outputs were handed over, if anywhere.
    pub fn of(&self, id: &str) -> Option<PathBuf> {
        self.each
            .get(id)
            .cloned()
            .or_else(|| self.dir.as_ref().map(|d| d.join(id)))
    }
}

/// Exit status of `kiln pipeline step` when the step failed in a way another attempt may not
/// repeat (a lost connection, a timeout): `EX_TEMPFAIL`, which exported retry policies retry.
pub const EXIT_RETRY: u8 = 75;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_under_the_producers_outputs_follow_the_directory() {
        let to = Path::new("/in/train");
        assert_eq!(rebase("/out/model", "/out", to), "/in/train/model");
        assert_eq!(rebase("/out", "/out", to), "/in/train");
        assert_eq!(rebase("/outside/model", "/out", to), "/outside/model");
        assert_eq!(rebase("0.93", "/out", to), "0.93");
        assert_eq!(rebase("/out/x", "", to), "/out/x");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let record = StepFile {
            pipeline: "p".into(),
            step: "train".into(),
            state: StepExecState::Succeeded,
            attempts: 1,
            error: None,
            reason: None,
            outputs: "/kiln/outputs".into(),
            values: BTreeMap::from([
                ("model".into(), "/kiln/outputs/model".into()),
                ("bad/name".into(), "x".into()),
            ]),
            output_digest: Some("abc".into()),
            retry: false,
        };
        record.write(dir.path()).unwrap();
        assert_eq!(StepFile::read(dir.path()).unwrap(), record);
        let values = dir.path().join(".kiln/values");
        assert_eq!(
            std::fs::read_to_string(values.join("model")).unwrap(),
            "/kiln/outputs/model"
        );
        assert!(!values.join("bad").exists());
        let e = record.execution(Path::new("/in/train"));
        assert_eq!(e.values["model"], "/in/train/model");
        assert!(StepFile::read(&dir.path().join("nothing")).is_err());
    }
}
