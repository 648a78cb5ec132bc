//! Writing transformed features: CSV for people and tools, Parquet for pyarrow, Polars and DuckDB.

use std::fs::File;
use std::io::{BufWriter, Write};

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema};

use super::{DataError, Format};
use crate::transform::Features;

type FillError = Box<dyn std::error::Error + Send + Sync>;

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

/// Writes features with their names to `.csv` or `.parquet` (by extension), atomically.
pub fn write_features(
    path: &Path,
    dense_names: &[String],
    id_names: &[String],
    features: &Features,
) -> Result<(), DataError> {
    match Format::from_path(path) {
        Some(Format::Parquet) => write_atomically(path, |out| {
            write_parquet(out, dense_names, id_names, features).map_err(FillError::from)
        }),
        Some(Format::Csv) | None => {
            let header: Vec<String> = dense_names.iter().chain(id_names).cloned().collect();
            let rows = (0..features.rows).map(|row| {
                let mut cells: Vec<String> = features
                    .dense_row(row)
                    .iter()
                    .map(|v| v.to_string())
                    .collect();
                cells.extend(features.id_row(row).iter().map(|v| v.to_string()));
                cells
            });
            write_csv_rows(path, &header, rows)
        }
        Some(Format::JsonLines) => Err(DataError::file(
            &path.display().to_string(),
            "features are written as .csv or .parquet",
        )),
    }
}

fn write_parquet(
    file: &mut BufWriter<File>,
    dense_names: &[String],
    id_names: &[String],
    f: &Features,
) -> Result<(), String> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, name) in dense_names.iter().enumerate() {
        fields.push(Field::new(name, DataType::Float32, false));
        let col: Float32Array = (0..f.rows)
            .map(|r| f.dense[r * f.dense_width + i])
            .collect::<Vec<_>>()
            .into();
        arrays.push(Arc::new(col));
    }
    for (i, name) in id_names.iter().enumerate() {
        fields.push(Field::new(name, DataType::UInt32, false));
        let col: UInt32Array = (0..f.rows)
            .map(|r| f.ids[r * f.id_width + i])
            .collect::<Vec<_>>()
            .into();
        arrays.push(Arc::new(col));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?;
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}
