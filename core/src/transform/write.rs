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

/// How a Parquet file's pages are compressed. zstd by default: about as fast as snappy to read,
/// and smaller; every codec here is one pandas, Polars, Spark and DuckDB read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    None,
    Snappy,
    #[default]
    Zstd,
    Gzip,
    Lz4,
}

impl Compression {
    fn parquet(self) -> parquet::basic::Compression {
        use parquet::basic::{Compression as C, GzipLevel, ZstdLevel};
        match self {
            Compression::None => C::UNCOMPRESSED,
            Compression::Snappy => C::SNAPPY,
            Compression::Zstd => C::ZSTD(ZstdLevel::default()),
            Compression::Gzip => C::GZIP(GzipLevel::default()),
            Compression::Lz4 => C::LZ4_RAW,
        }
    }
}

/// Writes features with their names to `.csv` or `.parquet` (by extension), atomically;
/// `compression` applies to Parquet.
pub fn write_features(
    path: &Path,
    dense_names: &[String],
    id_names: &[String],
    features: &Features,
    compression: Compression,
) -> Result<(), DataError> {
    match Format::from_path(path) {
        Some(Format::Parquet) => write_atomically(path, |out| {
            write_parquet(out, dense_names, id_names, features, compression)
                .map_err(FillError::from)
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
    compression: Compression,
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
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(compression.parquet())
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(properties))
        .map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}
