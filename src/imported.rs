//! Imported (ONNX) bundles where the trainer's paths meet them: the trainer runs kiln's own
//! networks and trees, the serving runtime runs imported graphs, so scoring a table with an
//! imported model (`kiln predict`, the evaluation gate) goes through the runtime.

use std::path::Path;

use anyhow::{Result, anyhow};
use kiln_core::bundle::{Architecture, Manifest};
use kiln_core::data::Table;
use kiln_server::Runtime;

/// Rows scored at a time, so that a large file does not become one request's worth of memory.
const CHUNK: usize = 8192;

/// A scorer of tables, for a bundle the trainer does not run.
pub type TableScorer = Box<dyn Fn(&Table) -> Result<(Vec<f32>, usize), String> + Sync>;

/// Whether a manifest is an imported graph's.
fn is_imported(manifest: &Manifest) -> bool {
    matches!(manifest.architecture, Architecture::Onnx { .. })
}

/// For an imported bundle in `dir`: what scores a table with it (probabilities or values, and
/// their width per row); `None` for kiln's own models.
pub fn scorer(dir: &Path, manifest: &Manifest) -> Result<Option<TableScorer>> {
    if !is_imported(manifest) {
        return Ok(None);
    }
    let runtime = Runtime::load(dir).map_err(|e| anyhow!("loading {}: {e}", dir.display()))?;
    let signature = manifest.signature.clone();
    Ok(Some(Box::new(move |table: &Table| {
        let mut out = Vec::with_capacity(table.num_rows() * runtime.width());
        let mut start = 0;
        while start < table.num_rows() {
            let part = table.slice(start, start + CHUNK);
            let rows = kiln_server::import::table_rows(&part, &signature)?;
            out.extend(
                runtime
                    .predict(&rows)
                    .map_err(|e| format!("rows {}…: {e}", start + 1))?,
            );
            start += CHUNK;
        }
        Ok((out, runtime.width()))
    })))
}
