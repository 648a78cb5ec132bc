//! Writing transformed features: CSV for people and tools, Parquet for pyarrow, Polars and DuckDB.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema};

use super::{DataError, Format};
use crate::transform::Features;

/// Writes features with their names to `.csv` or `.parquet` (by extension), through a temporary
/// file renamed into place, so a failed write never leaves half a file under the final name.
pub fn write_features(
    path: &Path,
    dense_names: &[String],
    id_names: &[String],
    features: &Features,
) -> Result<(), DataError> {
    let shown = path.display().to_string();
    let io = |source| DataError::Io {
        path: shown.clone(),
        source,
    };
    let format = Format::from_path(path);
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("out")
    ));
    let file = File::create(&tmp).map_err(io)?;
    let result = match format {
        Some(Format::Parquet) => write_parquet(file, dense_names, id_names, features)
            .map_err(|e| DataError::file(&shown, e)),
        Some(Format::Csv) | None => {
            write_csv(BufWriter::new(file), dense_names, id_names, features).map_err(io)
        }
        Some(Format::JsonLines) => Err(DataError::file(
            &shown,
            "features are written as .csv or .parquet",
        )),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn write_csv(
    out: impl Write,
    dense_names: &[String],
    id_names: &[String],
    f: &Features,
) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(dense_names.iter().chain(id_names))?;
    let mut cells = Vec::with_capacity(f.dense_width + f.id_width);
    for row in 0..f.rows {
        cells.clear();
        cells.extend(f.dense_row(row).iter().map(|v| v.to_string()));
        cells.extend(f.id_row(row).iter().map(|v| v.to_string()));
        w.write_record(&cells)?;
    }
    w.flush()?;
    Ok(())
}

fn write_parquet(
    file: File,
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
