//! Which runs' files go when a pipeline's history is pruned: each pipeline keeps its newest runs
//! and every run whose outputs those reuse from the cache; running runs stay; only directories
//! under `KILN_HOME/pipelines` are ever deleted, whatever a run record says. The records stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kiln_core::registry::{PipelineRun, PipelineRunState, Registry, RegistryError};

pub use kiln_core::wire::pipelines::Pruned;

/// Deletes the files of old finished runs (of `pipeline`, or of every pipeline), keeping each
/// pipeline's newest `keep` runs and the runs their cache hits came from; with `dry_run`, only
/// says what it would delete.
pub fn prune(
    registry: &Registry,
    pipeline: Option<&str>,
    keep: usize,
    dry_run: bool,
) -> Result<Vec<Pruned>, RegistryError> {
    let mut by_pipeline: BTreeMap<String, Vec<PipelineRun>> = BTreeMap::new();
    // Newest first.
    for run in registry.pipeline_runs(pipeline, usize::MAX)? {
        by_pipeline
            .entry(run.pipeline.clone())
            .or_default()
            .push(run);
    }
    let root = std::fs::canonicalize(registry.home().join("pipelines")).ok();
    let mut pruned = Vec::new();
    for (name, runs) in &by_pipeline {
        let kept = &runs[..keep.min(runs.len())];
        let reused: BTreeSet<u64> = kept
            .iter()
            .flat_map(|r| r.steps.iter().filter_map(|s| s.cached_from))
            .collect();
        for run in &runs[kept.len()..] {
            let dir = Path::new(&run.dir);
            let inside = root.as_ref().is_some_and(|root| {
                std::fs::canonicalize(dir).is_ok_and(|d| d.starts_with(root) && d != *root)
            });
            if run.state == PipelineRunState::Running || reused.contains(&run.id) || !inside {
                continue;
            }
            let bytes = size_of(dir);
            if !dry_run {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| RegistryError::Io(format!("removing {}: {e}", dir.display())))?;
            }
            pruned.push(Pruned {
                pipeline: name.clone(),
                run: run.id,
                dir: run.dir.clone(),
                bytes,
            });
        }
    }
    Ok(pruned)
}

/// The bytes of the files under `path` (links not followed).
fn size_of(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
