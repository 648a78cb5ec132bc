//! Tabular data: reading CSV, JSON Lines and Parquet into Arrow, with inferred column types.
//!
//! A [`Table`] is a list of Arrow record batches with kiln's four column types, each mapped to one
//! Arrow type: integers are `Int64`, floats `Float64`, booleans `Boolean` and categorical strings
//! `Dictionary(Int32, Utf8)`. Numeric columns are contiguous and categoricals dictionary-encoded, so
//! the table moves to pyarrow, Polars or DuckDB without conversion.

mod builder;
mod csv;
mod jsonl;
mod parquet;
pub(crate) mod write;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::progress::{NoProgress, Progress};

pub use self::csv::read_csv_str;
pub use self::write::{write_atomically, write_csv_rows};

/// Rows per record batch when kiln builds batches itself.
pub const BATCH_ROWS: usize = 65_536;

/// The type of a raw column, as kiln sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    Float,
    Boolean,
    Categorical,
}

impl ColumnType {
    /// The Arrow type that holds a column of this type.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Integer => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Categorical => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
        }
    }

    /// The kiln type of an Arrow type that kiln produced.
    pub fn of_arrow(data_type: &DataType) -> Option<ColumnType> {
        match data_type {
            DataType::Int64 => Some(ColumnType::Integer),
            DataType::Float64 => Some(ColumnType::Float),
            DataType::Boolean => Some(ColumnType::Boolean),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                Some(ColumnType::Categorical)
            }
            _ => None,
        }
    }

    /// Whether the column is numeric (integer or float).
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Integer | ColumnType::Float)
    }

    /// The lowercase name used in schemas and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Integer => "integer",
            ColumnType::Float => "float",
            ColumnType::Boolean => "boolean",
            ColumnType::Categorical => "categorical",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "integer" | "int" => Ok(ColumnType::Integer),
            "float" | "double" => Ok(ColumnType::Float),
            "boolean" | "bool" => Ok(ColumnType::Boolean),
            "categorical" | "string" | "category" => Ok(ColumnType::Categorical),
            other => Err(format!(
                "unknown column type `{other}`; expected integer, float, boolean or categorical"
            )),
        }
    }
}

/// The file formats kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
    Parquet,
}

impl Format {
    /// The format a path's extension names (`.csv`, `.tsv`, `.jsonl`, `.ndjson`, `.parquet`).
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "tsv" | "txt" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Cells that mean "missing" unless the reader is told otherwise.
pub const DEFAULT_MISSING: &[&str] = &["", "NA", "N/A", "null", "NULL", "NaN", "nan"];

/// How to read a file.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The field delimiter of CSV files; `None` means comma, or tab for `.tsv` files.
    pub delimiter: Option<u8>,
    /// Cells that mean "missing" (compared after trimming surrounding whitespace).
    pub missing_values: Vec<String>,
    /// Column types that override inference.
    pub types: HashMap<String, ColumnType>,
    /// The largest field accepted, in bytes; a larger one is almost always an unclosed quote.
    pub max_field_bytes: usize,
    /// Read the file as this format whatever its extension says.
    pub format: Option<Format>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            delimiter: None,
            missing_values: DEFAULT_MISSING.iter().map(|s| s.to_string()).collect(),
            types: HashMap::new(),
            max_field_bytes: 1 << 20,
            format: None,
        }
    }
}

impl ReadOptions {
    pub(crate) fn missing_matcher(&self) -> MissingMatcher {
        let mut by_len: Vec<Vec<String>> = Vec::new();
        for token in &self.missing_values {
            let token = token.trim();
            if by_len.len() <= token.len() {
                by_len.resize(token.len() + 1, Vec::new());
            }
            by_len[token.len()].push(token.to_string());
        }
        MissingMatcher { by_len }
    }
}

/// Tells missing-value cells apart quickly: most cells have a length no token has.
pub(crate) struct MissingMatcher {
    by_len: Vec<Vec<String>>,
}

impl MissingMatcher {
    /// Whether a (trimmed) cell is a missing value.
    #[inline]
    pub(crate) fn is_missing(&self, cell: &str) -> bool {
        self.by_len
            .get(cell.len())
            .is_some_and(|tokens| tokens.iter().any(|t| t == cell))
    }
}

/// What went wrong reading data. Messages name the file and, where there is one, the line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file is empty; expected a header row with column names")]
    Empty { path: String },
    #[error("{path}: the file has a header but no data rows")]
    NoRows { path: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: unknown column `{name}` in a type override{hint}")]
    UnknownOverride {
        path: String,
        name: String,
        hint: String,
    },
}

impl DataError {
    pub(crate) fn line(path: &str, line: u64, message: impl Into<String>) -> DataError {
        DataError::Line {
            path: path.to_string(),
            line,
            message: message.into(),
        }
    }
    pub(crate) fn file(path: &str, message: impl Into<String>) -> DataError {
        DataError::File {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A dataset in memory: Arrow record batches with kiln column types, and the digest of its content.
#[derive(Debug, Clone)]
pub struct Table {
    source: String,
    schema: SchemaRef,
    types: Vec<ColumnType>,
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Computed on first use: reading for scoring, or slicing into splits, never needs it.
    fingerprint: std::sync::OnceLock<String>,
}

impl Table {
    /// Builds a table from record batches whose columns already have kiln's Arrow types.
    pub fn from_batches(
        source: impl Into<String>,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Table, DataError> {
        let source = source.into();
        let mut types = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let ty = ColumnType::of_arrow(field.data_type()).ok_or_else(|| {
                DataError::file(
                    &source,
                    format!(
                        "column `{}` has Arrow type {}, which is not one of kiln's column types",
                        field.name(),
                        field.data_type()
                    ),
                )
            })?;
            types.push(ty);
        }
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        Ok(Table {
            source,
            schema,
            types,
            batches,
            rows,
            fingerprint: std::sync::OnceLock::new(),
        })
    }

    /// Where the table came from (a path, or a name for tables built in memory).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Rows in all batches.
    pub fn num_rows(&self) -> usize {
        self.rows
    }
    /// Columns, the same in every batch.
    pub fn num_columns(&self) -> usize {
        self.types.len()
    }
    /// The Arrow schema, with kiln's Arrow type for each column.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// The record batches, in row order.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }
    /// Column names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.schema.fields().iter().map(|f| f.name().as_str())
    }
    /// The name of column `index` (panics when out of range, like slice indexing).
    pub fn column_name(&self, index: usize) -> &str {
        self.schema.field(index).name()
    }
    /// The kiln type of column `index` (panics when out of range, like slice indexing).
    pub fn column_type(&self, index: usize) -> ColumnType {
        self.types[index]
    }
    /// The index of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.index_of(name).ok()
    }
    /// The Arrow arrays that hold one column, batch by batch.
    pub fn chunks(&self, index: usize) -> impl Iterator<Item = &ArrayRef> {
        self.batches.iter().map(move |b| b.column(index))
    }

    /// The content digest of the table: BLAKE3 over column names, types and every value in order.
    ///
    /// It depends on the data, not on the file format or batch boundaries, so the same rows read
    /// from CSV and from Parquet have the same fingerprint.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| self.compute_fingerprint())
    }

    /// Every value of a column as a number (integer, float, boolean); `None` where missing.
    pub fn numbers(&self, index: usize) -> Vec<Option<f64>> {
        let mut out = Vec::with_capacity(self.rows);
        for chunk in self.chunks(index) {
            out.extend((0..chunk.len()).map(|row| numeric_value(chunk.as_ref(), row)));
        }
        out
    }

    /// Every value of a column as text (a category as it is, a number as its category text);
    /// `None` where missing.
    pub fn texts(&self, index: usize) -> Vec<Option<String>> {
        let ty = self.types[index];
        let mut out = Vec::with_capacity(self.rows);
        for chunk in self.chunks(index) {
            if let DataType::Dictionary(..) = chunk.data_type() {
                let dict = chunk.as_dictionary::<Int32Type>();
                let values = dict.values().as_string::<i32>();
                out.extend(
                    dict.keys()
                        .iter()
                        .map(|k| k.map(|k| values.value(k as usize).to_string())),
                );
            } else {
                out.extend((0..chunk.len()).map(|row| {
                    numeric_value(chunk.as_ref(), row).map(|v| category_of_number(ty, v))
                }));
            }
        }
        out
    }

    /// Rows `start..end` as a new table (batches are sliced, not copied).
    pub fn slice(&self, start: usize, end: usize) -> Table {
        let end = end.min(self.rows);
        let mut batches = Vec::new();
        let mut offset = 0;
        for b in &self.batches {
            let (lo, hi) = (offset, offset + b.num_rows());
            offset = hi;
            let s = start.max(lo);
            let e = end.min(hi);
            if s < e {
                batches.push(b.slice(s - lo, e - s));
            }
        }
        Table::from_batches(self.source.clone(), self.schema.clone(), batches)
            .unwrap_or_else(|_| unreachable!("slices keep kiln's column types"))
    }

    fn compute_fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"kiln-table-v1\0");
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        for (index, field) in self.schema.fields().iter().enumerate() {
            hasher.update(field.name().as_bytes());
            hasher.update(&[0, self.types[index] as u8]);
            for chunk in self.chunks(index) {
                hash_array(chunk.as_ref(), &mut buf, &mut hasher);
            }
            hasher.update(&buf);
            buf.clear();
        }
        format!("blake3:{}", hasher.finalize().to_hex())
    }
}

fn hash_array(array: &dyn Array, buf: &mut Vec<u8>, hasher: &mut blake3::Hasher) {
    const FLUSH: usize = 1 << 16;
    for row in 0..array.len() {
        if buf.len() >= FLUSH {
            hasher.update(buf);
            buf.clear();
        }
        if array.is_null(row) {
            buf.push(0);
            continue;
        }
        buf.push(1);
        match array.data_type() {
            DataType::Int64 => {
                buf.extend_from_slice(&array.as_primitive::<Int64Type>().value(row).to_le_bytes())
            }
            DataType::Float64 => {
                buf.extend_from_slice(&array.as_primitive::<Float64Type>().value(row).to_le_bytes())
            }
            DataType::Boolean => buf.push(array.as_boolean().value(row) as u8),
            _ => {
                let dict = array.as_dictionary::<Int32Type>();
                let values = dict.values().as_string::<i32>();
                let s = values.value(dict.keys().value(row) as usize);
                buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// Builds the Arrow schema of a table with these column names and types.
pub fn arrow_schema(columns: &[(String, ColumnType)]) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        columns
            .iter()
            .map(|(name, ty)| Field::new(name, ty.arrow_type(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Reads a CSV, JSON Lines or Parquet file, chosen by extension (or `options.format`).
pub fn read(path: &Path, options: &ReadOptions) -> Result<Table, DataError> {
    read_with_progress(path, options, &NoProgress)
}

/// [`read`], reporting progress.
pub fn read_with_progress(
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Table, DataError> {
    crate::threads::debug_assert_may_block("reading a data file");
    let shown = path.display().to_string();
    let format = match options.format.or_else(|| Format::from_path(path)) {
        Some(f) => f,
        None => {
            return Err(DataError::file(
                &shown,
                "unknown file extension; kiln reads .csv, .tsv, .jsonl, .ndjson and .parquet \
                 (name the format with --format)",
            ));
        }
    };
    let table = match format {
        Format::Csv => csv::read_csv(path, options, progress)?,
        Format::JsonLines => jsonl::read_jsonl(path, options, progress)?,
        Format::Parquet => parquet::read_parquet(path, options, progress)?,
    };
    Ok(table)
}

/// Checks that every type override names a column of the file.
pub(crate) fn check_overrides(
    path: &str,
    names: &[String],
    options: &ReadOptions,
) -> Result<(), DataError> {
    let mut unknown: Vec<&String> = options
        .types
        .keys()
        .filter(|k| !names.contains(k))
        .collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(DataError::UnknownOverride {
            path: path.to_string(),
            name: (*name).clone(),
            hint: crate::suggest::hint(name, names.iter().map(String::as_str)),
        });
    }
    Ok(())
}

/// The value of one cell as a number, for integer, float and boolean columns; `None` when missing.
/// NaN counts as missing.
#[inline]
pub fn numeric_value(array: &dyn Array, row: usize) -> Option<f64> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Int64 => Some(array.as_primitive::<Int64Type>().value(row) as f64),
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            (!v.is_nan()).then_some(v)
        }
        DataType::Boolean => Some(if array.as_boolean().value(row) {
            1.0
        } else {
            0.0
        }),
        _ => None,
    }
}

/// The text form of an integer, float or boolean value, as it is used as a category.
pub fn category_of_number(ty: ColumnType, value: f64) -> String {
    match ty {
        ColumnType::Boolean => (value != 0.0).to_string(),
        ColumnType::Integer => (value as i64).to_string(),
        _ => value.to_string(),
    }
}
