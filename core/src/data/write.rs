//! Writing files atomically, and rows of text as CSV.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::DataError;

pub(crate) type FillError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a file through a temporary file beside it, renamed into place once `fill` has written
/// everything, so a failed write never leaves half a file under the final name.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), FillError>,
) -> Result<(), DataError> {
    let shown = path.display().to_string();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("kiln");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(|source| DataError::Io {
        path: tmp.display().to_string(),
        source,
    })?;
    let mut out = BufWriter::new(file);
    let result = fill(&mut out)
        .and_then(|()| out.flush().map_err(FillError::from))
        .map_err(|e| DataError::file(&shown, e.to_string()))
        .and_then(|()| {
            // On disk before the rename makes it visible: a crash leaves the old file or the new.
            out.get_ref().sync_all().map_err(|source| DataError::Io {
                path: tmp.display().to_string(),
                source,
            })
        });
    drop(out);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| DataError::Io {
        path: shown.clone(),
        source,
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|source| DataError::Io {
            path: parent.display().to_string(),
            source,
        })
}

/// Writes rows of text cells as CSV (quoted where a cell needs it), atomically.
pub fn write_csv_rows(
    path: &Path,
    header: &[String],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> Result<(), DataError> {
    write_atomically(path, |out| {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(header)?;
        for row in rows {
            w.write_record(&row)?;
        }
        w.flush()?;
        Ok(())
    })
}
