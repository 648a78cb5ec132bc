//! The JSON Lines reader: one JSON object per line; columns are the union of keys in order of
//! first appearance, and a key absent from a line is a missing value.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use super::builder::{BatchBuilder, Candidates, Cell, resolve_columns};
use super::{DataError, MissingMatcher, ReadOptions, Table, check_overrides};
use crate::progress::{Progress, Unit};

pub(crate) fn read_jsonl(
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Table, DataError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path).map(|m| m.len()).ok();
    let missing = options.missing_matcher();

    // Pass 1: columns and types.
    progress.start("inferring types", size, Unit::Bytes);
    let mut names: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let mut candidates: Vec<Candidates> = Vec::new();
    let mut rows = 0u64;
    for_each_object(&shown, path, options, progress, |line, object| {
        for (key, value) in object {
            let column = *index.entry(key.clone()).or_insert_with(|| {
                names.push(key.clone());
                candidates.push(Candidates::default());
                names.len() - 1
            });
            let cell = cell_of(value, options, &missing)
                .map_err(|m| DataError::line(&shown, line, format!("key `{key}`: {m}")))?;
            if let Some(cell) = cell {
                candidates[column].observe(&cell);
            }
        }
        rows += 1;
        Ok(())
    })?;
    progress.finish();
    if rows == 0 {
        return Err(DataError::file(
            &shown,
            "the file has no rows; expected one JSON object per line",
        ));
    }
    check_overrides(&shown, &names, options)?;
    let (schema, types) = resolve_columns(&names, &candidates, options);

    // Pass 2: values.
    progress.start("reading", size, Unit::Bytes);
    let mut batches = BatchBuilder::new(schema.clone(), &types);
    for_each_object(&shown, path, options, progress, |line, object| {
        for (column, builder) in batches.columns.iter_mut().enumerate() {
            let name = &names[column];
            match object.get(name) {
                None => builder.push_missing(),
                Some(value) => match cell_of(value, options, &missing)
                    .map_err(|m| DataError::line(&shown, line, format!("key `{name}`: {m}")))?
                {
                    None => builder.push_missing(),
                    Some(cell) => builder
                        .push(cell)
                        .map_err(|m| format!("key `{name}`: {m}"))
                        .map_err(|m| DataError::line(&shown, line, m))?,
                },
            }
        }
        batches.end_row();
        Ok(())
    })?;
    progress.finish();
    Table::from_batches(shown, schema, batches.finish())
}

/// Calls `f` with the line number and object of every non-blank line.
fn for_each_object(
    shown: &str,
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
    mut f: impl FnMut(u64, &Map<String, Value>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: shown.to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf: Vec<u8> = Vec::new();
    let mut line = 0u64;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        offset += n as u64;
        if line.is_multiple_of(16_384) {
            progress.set(offset);
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if buf.len() > options.max_field_bytes.saturating_mul(64) {
            return Err(DataError::line(
                shown,
                line,
                format!(
                    "line is {}; an unterminated string often causes this",
                    super::csv::human_bytes(buf.len())
                ),
            ));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| {
            DataError::line(
                shown,
                line,
                format!(
                    "not valid UTF-8 (bad byte after {} valid bytes); re-encode the file as UTF-8",
                    e.valid_up_to()
                ),
            )
        })?;
        let object: Map<String, Value> = serde_json::from_str(text.trim_end()).map_err(|e| {
            let full = e.to_string();
            let what = full
                .rfind(" at line ")
                .map_or(full.as_str(), |i| &full[..i]);
            DataError::line(
                shown,
                line,
                format!(
                    "invalid JSON at column {}: {what}; expected one JSON object per line",
                    e.column()
                ),
            )
        })?;
        f(line, &object)?;
    }
}

fn cell_of<'a>(
    value: &'a Value,
    options: &ReadOptions,
    missing: &MissingMatcher,
) -> Result<Option<Cell<'a>>, String> {
    Ok(match value {
        Value::Null => None,
        Value::Bool(b) => Some(Cell::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Cell::Int(i)),
            None => n.as_f64().map(Cell::Float),
        },
        Value::String(s) if missing.is_missing(s.trim()) => None,
        Value::String(s) if s.len() > options.max_field_bytes => {
            return Err(format!(
                "a string of {} is over the {} limit (raise it with --max-field-bytes)",
                super::csv::human_bytes(s.len()),
                super::csv::human_bytes(options.max_field_bytes)
            ));
        }
        Value::String(s) => Some(Cell::Text(s)),
        Value::Array(_) | Value::Object(_) => {
            return Err(
                "nested arrays and objects are not supported; flatten them into columns"
                    .to_string(),
            );
        }
    })
}
