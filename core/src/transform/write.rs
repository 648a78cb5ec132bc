//! Writing transformed features: CSV for people and tools, Parquet for pyarrow, Polars and DuckDB.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema};

use super::Features;
use crate::data::write::FillError;
use crate::data::{DataError, Format, write_atomically, write_csv_rows};

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
