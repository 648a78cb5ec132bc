//! Type inference and Arrow column builders shared by the text readers (CSV and JSON Lines).

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;

use super::ColumnType;

/// What the non-missing cells of a column seen so far could all be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidates {
    integer: bool,
    float: bool,
    boolean: bool,
    seen: bool,
}

impl Default for Candidates {
    fn default() -> Self {
        Candidates {
            integer: true,
            float: true,
            boolean: true,
            seen: false,
        }
    }
}

impl Candidates {
    /// Narrows the candidates by one non-missing text cell.
    #[inline]
    pub(crate) fn observe_text(&mut self, cell: &str) {
        self.seen = true;
        if self.integer && cell.parse::<i64>().is_err() {
            self.integer = false;
        }
        if self.float && !self.integer && parse_float(cell).is_none() {
            self.float = false;
        }
        if self.boolean && parse_bool(cell).is_none() {
            self.boolean = false;
        }
    }

    /// Narrows the candidates by one non-missing typed cell.
    pub(crate) fn observe(&mut self, cell: &Cell<'_>) {
        match cell {
            // A JSON string stays a string, even "12" or "true".
            Cell::Text(_) => {
                self.seen = true;
                self.integer = false;
                self.float = false;
                self.boolean = false;
            }
            Cell::Int(_) => {
                self.seen = true;
                self.boolean = false;
            }
            Cell::Float(_) => {
                self.seen = true;
                self.integer = false;
                self.boolean = false;
            }
            Cell::Bool(_) => {
                self.seen = true;
                self.integer = false;
                self.float = false;
            }
        }
    }

    /// The narrowest type that holds every cell seen. A column with no values is a float column.
    pub(crate) fn resolve(self) -> ColumnType {
        if !self.seen {
            ColumnType::Float
        } else if self.integer {
            ColumnType::Integer
        } else if self.float {
            ColumnType::Float
        } else if self.boolean {
            ColumnType::Boolean
        } else {
            ColumnType::Categorical
        }
    }
}

/// The Arrow schema and kiln types of the columns: the user's override where there is one, else
/// the narrowest type the cells allow.
pub(crate) fn resolve_columns(
    names: &[String],
    candidates: &[Candidates],
    options: &super::ReadOptions,
) -> (SchemaRef, Vec<ColumnType>) {
    let columns: Vec<(String, ColumnType)> = names
        .iter()
        .zip(candidates)
        .map(|(n, c)| {
            (
                n.clone(),
                options.types.get(n).copied().unwrap_or(c.resolve()),
            )
        })
        .collect();
    let types = columns.iter().map(|c| c.1).collect();
    (super::arrow_schema(&columns), types)
}

/// One non-missing cell of a typed source (JSON).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[inline]
pub(crate) fn parse_float(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|v| !v.is_nan())
}

#[inline]
pub(crate) fn parse_bool(cell: &str) -> Option<bool> {
    if cell.eq_ignore_ascii_case("true") {
        Some(true)
    } else if cell.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Builds one Arrow column of a kiln type.
pub(crate) enum ColumnBuilder {
    Integer(Int64Builder),
    Float(Float64Builder),
    Boolean(BooleanBuilder),
    Categorical(StringDictionaryBuilder<Int32Type>),
}

impl ColumnBuilder {
    pub(crate) fn new(ty: ColumnType, capacity: usize) -> ColumnBuilder {
        match ty {
            ColumnType::Integer => ColumnBuilder::Integer(Int64Builder::with_capacity(capacity)),
            ColumnType::Float => ColumnBuilder::Float(Float64Builder::with_capacity(capacity)),
            ColumnType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Categorical => ColumnBuilder::Categorical(StringDictionaryBuilder::new()),
        }
    }

    pub(crate) fn column_type(&self) -> ColumnType {
        match self {
            ColumnBuilder::Integer(_) => ColumnType::Integer,
            ColumnBuilder::Float(_) => ColumnType::Float,
            ColumnBuilder::Boolean(_) => ColumnType::Boolean,
            ColumnBuilder::Categorical(_) => ColumnType::Categorical,
        }
    }

    #[inline]
    pub(crate) fn push_missing(&mut self) {
        match self {
            ColumnBuilder::Integer(b) => b.append_null(),
            ColumnBuilder::Float(b) => b.append_null(),
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::Categorical(b) => b.append_null(),
        }
    }

    /// Appends a non-missing text cell; on failure, says why the text does not fit the type.
    #[inline]
    pub(crate) fn push_text(&mut self, cell: &str) -> Result<(), String> {
        match self {
            ColumnBuilder::Integer(b) => match cell.parse::<i64>() {
                Ok(v) => b.append_value(v),
                Err(_) => return Err(cannot_read(cell, ColumnType::Integer)),
            },
            ColumnBuilder::Float(b) => match parse_float(cell) {
                Some(v) => b.append_value(v),
                None => return Err(cannot_read(cell, ColumnType::Float)),
            },
            ColumnBuilder::Boolean(b) => match parse_bool(cell) {
                Some(v) => b.append_value(v),
                None => return Err(cannot_read(cell, ColumnType::Boolean)),
            },
            ColumnBuilder::Categorical(b) => {
                b.append_value(cell);
            }
        }
        Ok(())
    }

    /// Appends a non-missing typed cell, converting where the column type allows.
    pub(crate) fn push(&mut self, cell: Cell<'_>) -> Result<(), String> {
        match (self, cell) {
            (b, Cell::Text(s)) => b.push_text(s),
            (ColumnBuilder::Integer(b), Cell::Int(v)) => {
                b.append_value(v);
                Ok(())
            }
            (ColumnBuilder::Integer(b), Cell::Float(v)) if v.fract() == 0.0 && v.abs() < 9e15 => {
                b.append_value(v as i64);
                Ok(())
            }
            (ColumnBuilder::Float(b), Cell::Int(v)) => {
                b.append_value(v as f64);
                Ok(())
            }
            (ColumnBuilder::Float(b), Cell::Float(v)) => {
                b.append_value(v);
                Ok(())
            }
            (ColumnBuilder::Boolean(b), Cell::Bool(v)) => {
                b.append_value(v);
                Ok(())
            }
            (ColumnBuilder::Categorical(b), Cell::Int(v)) => {
                b.append_value(v.to_string());
                Ok(())
            }
            (ColumnBuilder::Categorical(b), Cell::Float(v)) => {
                b.append_value(v.to_string());
                Ok(())
            }
            (ColumnBuilder::Categorical(b), Cell::Bool(v)) => {
                b.append_value(if v { "true" } else { "false" });
                Ok(())
            }
            (b, cell) => Err(format!(
                "cannot read {} as {}",
                match cell {
                    Cell::Int(v) => v.to_string(),
                    Cell::Float(v) => v.to_string(),
                    Cell::Bool(v) => v.to_string(),
                    Cell::Text(s) => format!("{s:?}"),
                },
                b.column_type()
            )),
        }
    }

    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Integer(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Categorical(b) => Arc::new(b.finish()),
        }
    }
}

fn cannot_read(cell: &str, ty: ColumnType) -> String {
    let shown: String = cell.chars().take(40).collect();
    let more = if shown.len() < cell.len() { "…" } else { "" };
    format!("cannot read {shown:?}{more} as {ty}")
}

/// Collects rows into record batches of [`super::BATCH_ROWS`] rows.
pub(crate) struct BatchBuilder {
    schema: SchemaRef,
    pub(crate) columns: Vec<ColumnBuilder>,
    rows_in_batch: usize,
    pub(crate) batches: Vec<RecordBatch>,
}

impl BatchBuilder {
    pub(crate) fn new(schema: SchemaRef, types: &[ColumnType]) -> BatchBuilder {
        BatchBuilder {
            schema,
            columns: types
                .iter()
                .map(|t| ColumnBuilder::new(*t, super::BATCH_ROWS))
                .collect(),
            rows_in_batch: 0,
            batches: Vec::new(),
        }
    }

    /// Marks the end of one row; starts a new batch when this one is full.
    #[inline]
    pub(crate) fn end_row(&mut self) {
        self.rows_in_batch += 1;
        if self.rows_in_batch == super::BATCH_ROWS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.rows_in_batch == 0 {
            return;
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .unwrap_or_else(|e| unreachable!("builders match the schema: {e}"));
        self.batches.push(batch);
        self.rows_in_batch = 0;
    }

    pub(crate) fn finish(mut self) -> Vec<RecordBatch> {
        self.flush();
        self.batches
    }
}
