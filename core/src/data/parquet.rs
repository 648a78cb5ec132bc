//! The Parquet reader: the `parquet` crate's Arrow reader, with columns normalised to kiln's types.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ColumnType, DataError, ReadOptions, Table, arrow_schema, check_overrides};
use crate::progress::{Progress, Unit};

pub(crate) fn read_parquet(
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Table, DataError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| DataError::Io {
        path: shown.clone(),
        source,
    })?;
    let bad = |e: parquet::errors::ParquetError| {
        DataError::file(&shown, format!("not a readable Parquet file: {e}"))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let source_schema = builder.schema().clone();
    let reader = builder
        .with_batch_size(super::BATCH_ROWS)
        .build()
        .map_err(bad)?;

    let names: Vec<String> = source_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    check_overrides(&shown, &names, options)?;
    let mut columns = Vec::with_capacity(names.len());
    for field in source_schema.fields() {
        let ty = match options.types.get(field.name()) {
            Some(t) => *t,
            None => kiln_type(field.data_type()).ok_or_else(|| {
                DataError::file(
                    &shown,
                    format!(
                        "column `{}` has Parquet/Arrow type {}, which kiln cannot use as a feature \
                         yet (integer, float, boolean and string columns are supported)",
                        field.name(),
                        field.data_type()
                    ),
                )
            })?,
        };
        columns.push((field.name().clone(), ty));
    }
    let schema = arrow_schema(&columns);

    progress.start("reading", Some(total), Unit::Rows);
    let mut batches = Vec::new();
    let mut done = 0u64;
    for batch in reader {
        let batch = batch
            .map_err(|e| DataError::file(&shown, format!("not a readable Parquet file: {e}")))?;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
        for (index, (name, ty)) in columns.iter().enumerate() {
            arrays.push(normalise(batch.column(index), *ty).map_err(|e| {
                DataError::file(&shown, format!("column `{name}`: cannot read as {ty}: {e}"))
            })?);
        }
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| DataError::file(&shown, e.to_string()))?;
        done += batch.num_rows() as u64;
        progress.set(done);
        batches.push(batch);
    }
    progress.finish();
    if done == 0 {
        return Err(DataError::NoRows { path: shown });
    }
    Table::from_batches(shown, schema, batches)
}

/// The kiln type that holds an Arrow type, for the types kiln can read.
fn kiln_type(data_type: &DataType) -> Option<ColumnType> {
    use DataType::*;
    match data_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
            Some(ColumnType::Integer)
        }
        Float16 | Float32 | Float64 | Decimal32(..) | Decimal64(..) | Decimal128(..)
        | Decimal256(..) => Some(ColumnType::Float),
        Boolean => Some(ColumnType::Boolean),
        Utf8 | LargeUtf8 | Utf8View | Date32 | Date64 | Timestamp(..) => {
            Some(ColumnType::Categorical)
        }
        Dictionary(_, value) => kiln_type(value)
            .filter(|t| *t == ColumnType::Categorical)
            .or(Some(ColumnType::Categorical)),
        Null => Some(ColumnType::Float),
        _ => None,
    }
}

/// Casts an array to the Arrow type of a kiln column type; NaN in floats stays as it is and reads
/// as missing.
fn normalise(array: &ArrayRef, ty: ColumnType) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let target = ty.arrow_type();
    if array.data_type() == &target {
        return Ok(Arc::clone(array));
    }
    if ty == ColumnType::Categorical && !matches!(array.data_type(), DataType::Utf8) {
        let text = arrow_cast::cast(array, &DataType::Utf8)?;
        return arrow_cast::cast(&text, &target);
    }
    let options = arrow_cast::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow_cast::cast_with_options(array, &target, &options)
}
