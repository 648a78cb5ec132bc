//! Request values → [`Rows`] in a model's signature order, with strict checks: every signature
//! column present, no unknown column, numbers where numbers belong. Errors name the row and column.
//! The protocols (row objects, columns, positional rows, tensors) all end up here.

use serde_json::{Map, Value};

use kiln_core::data::{ColumnType, DEFAULT_MISSING};
use kiln_core::transform::InputColumn;

use crate::error::ServeError;
use crate::runtime::{Column, Rows};

/// The largest number of rows one request may carry.
pub const MAX_ROWS: usize = 1 << 20;

/// Builds one column of values, checking each against the column's type.
pub struct ColumnBuilder<'a> {
    input: &'a InputColumn,
    column: Column,
}

impl<'a> ColumnBuilder<'a> {
    pub fn new(input: &'a InputColumn, capacity: usize) -> ColumnBuilder<'a> {
        let column = match input.column_type {
            ColumnType::Categorical => Column::Texts(Vec::with_capacity(capacity)),
            _ => Column::Numbers(Vec::with_capacity(capacity)),
        };
        ColumnBuilder { input, column }
    }

    /// Adds a JSON value; `null` is a missing value.
    pub fn push_json(&mut self, row: usize, v: &Value) -> Result<(), ServeError> {
        match (&mut self.column, v) {
            (Column::Numbers(out), Value::Null) => out.push(None),
            (Column::Texts(out), Value::Null) => out.push(None),
            (Column::Numbers(out), Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => out.push(Some(x)),
                _ => return Err(self.wrong(row, "a number that is not finite")),
            },
            (Column::Numbers(out), Value::Bool(b)) => out.push(Some(if *b { 1.0 } else { 0.0 })),
            (Column::Texts(out), Value::String(s)) => out.push(text(s)),
            (Column::Texts(out), Value::Number(n)) => out.push(Some(n.to_string())),
            (Column::Texts(out), Value::Bool(b)) => out.push(Some(b.to_string())),
            (Column::Numbers(_), Value::String(s)) => {
                return Err(self.wrong(row, &format!("the string {s:?}")));
            }
            (_, other) => return Err(self.wrong(row, json_kind(other))),
        }
        Ok(())
    }

    /// Adds a field of a CSV row: a number for a numeric column (booleans as `true`/`false`
    /// too), text for a categorical one; an empty or missing-value field is missing.
    pub fn push_field(&mut self, row: usize, s: &str) -> Result<(), ServeError> {
        let Some(s) = text(s) else {
            return self.push_json(row, &Value::Null);
        };
        match &mut self.column {
            Column::Texts(out) => out.push(Some(s)),
            Column::Numbers(out) => match s.trim() {
                "true" | "True" => out.push(Some(1.0)),
                "false" | "False" => out.push(Some(0.0)),
                t => match t.parse::<f64>() {
                    Ok(x) if x.is_finite() => out.push(Some(x)),
                    _ => return Err(self.wrong(row, &format!("the field {s:?}"))),
                },
            },
        }
        Ok(())
    }

    /// Adds a number from a numeric tensor; NaN and infinities are refused.
    pub fn push_number(&mut self, row: usize, x: f64) -> Result<(), ServeError> {
        if !x.is_finite() {
            return Err(ServeError::BadInput(format!(
                "row {row}, column `{}`: {x} is not a value; send null in JSON rows for a missing value",
                self.input.name
            )));
        }
        match &mut self.column {
            Column::Numbers(out) => out.push(Some(x)),
            Column::Texts(out) => out.push(Some(number_text(x))),
        }
        Ok(())
    }

    /// Adds text from a `BYTES` tensor.
    pub fn push_text(&mut self, row: usize, s: &str) -> Result<(), ServeError> {
        match &mut self.column {
            Column::Texts(out) => out.push(text(s)),
            Column::Numbers(_) => return Err(self.wrong(row, &format!("the string {s:?}"))),
        }
        Ok(())
    }

    fn wrong(&self, row: usize, found: &str) -> ServeError {
        let expected = match self.input.column_type {
            ColumnType::Categorical => "a string",
            ColumnType::Boolean => "a boolean or a number",
            _ => "a number",
        };
        ServeError::BadInput(format!(
            "row {row}, column `{}` ({}): expected {expected} or null, found {found}",
            self.input.name, self.input.column_type
        ))
    }

    pub fn finish(self) -> Column {
        self.column
    }
}

/// A categorical value, or a missing one for the tokens that mean missing in kiln's files
/// (`""`, `NA`, `null`, …), so that a served row is read as its training file was.
fn text(s: &str) -> Option<String> {
    (!DEFAULT_MISSING.contains(&s.trim())).then(|| s.to_string())
}

fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_rows(n: usize) -> Result<(), ServeError> {
    if n == 0 {
        return Err(ServeError::BadInput("the request has no rows".into()));
    }
    if n > MAX_ROWS {
        return Err(ServeError::BadInput(format!(
            "the request has {n} rows; at most {MAX_ROWS} are accepted per request"
        )));
    }
    Ok(())
}

/// The error for a column the model does not take.
pub fn unknown_column(signature: &[InputColumn], name: &str, row: Option<usize>) -> ServeError {
    let hint = kiln_core::suggest::hint(name, signature.iter().map(|c| c.name.as_str()));
    let at = row.map_or(String::new(), |r| format!("row {r}: "));
    if hint.is_empty() {
        ServeError::BadInput(format!(
            "{at}unknown column `{name}`; the model takes {}",
            column_list(signature)
        ))
    } else {
        ServeError::BadInput(format!("{at}unknown column `{name}`{hint}"))
    }
}

/// The error for a column that the request lacks.
pub fn missing_column(name: &str, row: Option<usize>) -> ServeError {
    let at = row.map_or(String::new(), |r| format!("row {r}: "));
    ServeError::BadInput(format!(
        "{at}missing column `{name}`; send null for a missing value"
    ))
}

pub fn column_list(signature: &[InputColumn]) -> String {
    let names: Vec<String> = signature.iter().map(|c| c.name.clone()).collect();
    if names.len() > 12 {
        format!("{} columns: {}, …", names.len(), names[..12].join(", "))
    } else {
        format!("{} columns: {}", names.len(), names.join(", "))
    }
}

/// Rows given as JSON objects (column → value), or as arrays of values in signature order.
pub fn from_records(signature: &[InputColumn], records: &[Value]) -> Result<Rows, ServeError> {
    check_rows(records.len())?;
    let mut builders: Vec<ColumnBuilder> = signature
        .iter()
        .map(|c| ColumnBuilder::new(c, records.len()))
        .collect();
    for (r, record) in records.iter().enumerate() {
        match record {
            Value::Object(map) => {
                for key in map.keys() {
                    if !signature.iter().any(|c| &c.name == key) {
                        return Err(unknown_column(signature, key, Some(r)));
                    }
                }
                for b in &mut builders {
                    let v = map
                        .get(&b.input.name)
                        .ok_or_else(|| missing_column(&b.input.name, Some(r)))?;
                    b.push_json(r, v)?;
                }
            }
            Value::Array(values) => {
                if values.len() != signature.len() {
                    return Err(ServeError::BadInput(format!(
                        "row {r} has {} values; the model takes {}",
                        values.len(),
                        column_list(signature)
                    )));
                }
                for (b, v) in builders.iter_mut().zip(values) {
                    b.push_json(r, v)?;
                }
            }
            other => {
                return Err(ServeError::BadInput(format!(
                    "row {r}: expected an object of column values or an array of them, found {}",
                    json_kind(other)
                )));
            }
        }
    }
    Ok(Rows::from_columns(
        records.len(),
        builders.into_iter().map(ColumnBuilder::finish).collect(),
    ))
}

/// Rows given column by column: each column name → an array of values, all of one length.
pub fn from_columns(
    signature: &[InputColumn],
    columns: &Map<String, Value>,
) -> Result<Rows, ServeError> {
    for key in columns.keys() {
        if !signature.iter().any(|c| &c.name == key) {
            return Err(unknown_column(signature, key, None));
        }
    }
    let mut rows = None;
    let mut out = Vec::with_capacity(signature.len());
    for input in signature {
        let values = match columns.get(&input.name) {
            Some(Value::Array(values)) => values,
            Some(other) => {
                return Err(ServeError::BadInput(format!(
                    "column `{}`: expected an array of values, found {}",
                    input.name,
                    json_kind(other)
                )));
            }
            None => return Err(missing_column(&input.name, None)),
        };
        match rows {
            None => {
                check_rows(values.len())?;
                rows = Some(values.len());
            }
            Some(n) if n != values.len() => {
                return Err(ServeError::BadInput(format!(
                    "column `{}` has {} values but the columns before it have {n}",
                    input.name,
                    values.len()
                )));
            }
            Some(_) => {}
        }
        let mut b = ColumnBuilder::new(input, values.len());
        for (r, v) in values.iter().enumerate() {
            b.push_json(r, v)?;
        }
        out.push(b.finish());
    }
    Ok(Rows::from_columns(rows.unwrap_or(0), out))
}

/// Rows as a header of column names and rows of values in that order (pandas' `split` orient).
pub fn from_split(
    signature: &[InputColumn],
    names: &[String],
    data: &[Value],
) -> Result<Rows, ServeError> {
    check_rows(data.len())?;
    let position = positions(signature, names)?;
    let mut builders: Vec<ColumnBuilder> = signature
        .iter()
        .map(|c| ColumnBuilder::new(c, data.len()))
        .collect();
    for (r, row) in data.iter().enumerate() {
        let Value::Array(values) = row else {
            return Err(ServeError::BadInput(format!(
                "data row {r}: expected an array of values, found {}",
                json_kind(row)
            )));
        };
        if values.len() != names.len() {
            return Err(ServeError::BadInput(format!(
                "data row {r} has {} values but there are {} columns",
                values.len(),
                names.len()
            )));
        }
        for (b, p) in builders.iter_mut().zip(&position) {
            b.push_json(r, &values[*p])?;
        }
    }
    Ok(Rows::from_columns(
        data.len(),
        builders.into_iter().map(ColumnBuilder::finish).collect(),
    ))
}

/// Rows from CSV as pandas writes it (`df.to_csv(index=False)`): a header line of column
/// names, then one line per row.
pub fn from_csv(signature: &[InputColumn], body: &[u8]) -> Result<Rows, ServeError> {
    let bad = |e: csv::Error| ServeError::BadInput(format!("the CSV body: {e}"));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);
    let names: Vec<String> = reader
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    let position = positions(signature, &names)?;
    let mut builders: Vec<ColumnBuilder> =
        signature.iter().map(|c| ColumnBuilder::new(c, 0)).collect();
    let mut rows = 0;
    for (r, record) in reader.records().enumerate() {
        let record = record.map_err(bad)?;
        check_rows(r + 1)?;
        for (b, p) in builders.iter_mut().zip(&position) {
            b.push_field(r, record.get(*p).unwrap_or_default())?;
        }
        rows = r + 1;
    }
    check_rows(rows)?;
    Ok(Rows::from_columns(
        rows,
        builders.into_iter().map(ColumnBuilder::finish).collect(),
    ))
}

/// Where each input of the signature is among `names`; a name the signature lacks, or an input
/// the names lack, is refused.
fn positions(signature: &[InputColumn], names: &[String]) -> Result<Vec<usize>, ServeError> {
    for name in names {
        if !signature.iter().any(|c| &c.name == name) {
            return Err(unknown_column(signature, name, None));
        }
    }
    signature
        .iter()
        .map(|input| {
            names
                .iter()
                .position(|n| *n == input.name)
                .ok_or_else(|| missing_column(&input.name, None))
        })
        .collect()
}

/// Rows of a numeric matrix `[rows, columns]` in signature order (one input tensor).
pub fn from_matrix(
    signature: &[InputColumn],
    values: Vec<f64>,
    rows: usize,
) -> Result<Rows, ServeError> {
    check_rows(rows)?;
    let width = signature.len();
    let categorical: Vec<&str> = signature
        .iter()
        .filter(|c| c.column_type == ColumnType::Categorical)
        .map(|c| c.name.as_str())
        .collect();
    if !categorical.is_empty() {
        return Err(ServeError::BadInput(format!(
            "the model has categorical columns ({}); send one tensor per column, with BYTES for those",
            categorical.join(", ")
        )));
    }
    if values.len() != rows * width {
        return Err(ServeError::BadInput(format!(
            "expected {rows} × {width} values, found {}",
            values.len()
        )));
    }
    for (i, x) in values.iter().enumerate() {
        if !x.is_finite() {
            return Err(ServeError::BadInput(format!(
                "row {}, column `{}`: {x} is not a value; send null in JSON rows for a missing value",
                i / width,
                signature[i % width].name
            )));
        }
    }
    Ok(Rows::from_matrix(rows, width, values))
}
