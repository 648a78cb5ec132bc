//! The CSV reader: two passes over the file, one to infer column types, one to build Arrow arrays.
//!
//! Tokenizing (quotes, delimiters, line endings) is the `csv` crate's; kiln adds the checks that give
//! each bad input a message with its line: ragged rows, invalid UTF-8, oversized fields, values that
//! do not fit an overridden type. Whitespace around a cell is not part of its value.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::builder::{BatchBuilder, Candidates, resolve_columns};
use super::{DataError, ReadOptions, Table, check_overrides};
use crate::progress::{Progress, Unit};

const PROGRESS_EVERY: u64 = 16_384;

/// Reads CSV text that is already in memory (tests, examples, small inline data).
pub fn read_csv_str(text: &str, options: &ReadOptions) -> Result<Table, DataError> {
    let open = || Ok::<_, DataError>(text.as_bytes());
    read_csv_from(
        "<inline>",
        open,
        None,
        options,
        &crate::progress::NoProgress,
    )
}

pub(crate) fn read_csv(
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Table, DataError> {
    let shown = path.display().to_string();
    let open = || {
        File::open(path)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .map_err(|source| DataError::Io {
                path: shown.clone(),
                source,
            })
    };
    let size = std::fs::metadata(path).map(|m| m.len()).ok();
    let mut options = options.clone();
    if options.delimiter.is_none()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
    {
        options.delimiter = Some(b'\t');
    }
    read_csv_from(&shown, open, size, &options, progress)
}

fn read_csv_from<R: Read>(
    path: &str,
    open: impl Fn() -> Result<R, DataError>,
    size: Option<u64>,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Table, DataError> {
    let reader = |input: R| {
        ::csv::ReaderBuilder::new()
            .delimiter(options.delimiter.unwrap_or(b','))
            .has_headers(false)
            .flexible(true)
            .from_reader(input)
    };
    let missing = options.missing_matcher();

    // Pass 1: header and types.
    progress.start("inferring types", size, Unit::Bytes);
    let mut rdr = reader(open()?);
    let mut record = ::csv::StringRecord::new();
    if !next_record(path, &mut rdr, &mut record, options)? {
        return Err(DataError::Empty {
            path: path.to_string(),
        });
    }
    let names = header(path, &record)?;
    check_overrides(path, &names, options)?;
    let width = names.len();
    let mut candidates = vec![Candidates::default(); width];
    let mut rows: u64 = 0;
    while next_record(path, &mut rdr, &mut record, options)? {
        check_width(path, &record, width)?;
        for (cell, cand) in record.iter().zip(candidates.iter_mut()) {
            let cell = cell.trim();
            if !missing.is_missing(cell) {
                cand.observe_text(cell);
            }
        }
        rows += 1;
        if rows.is_multiple_of(PROGRESS_EVERY) {
            progress.set(rdr.position().byte());
        }
    }
    progress.finish();
    if rows == 0 {
        return Err(DataError::NoRows {
            path: path.to_string(),
        });
    }
    let (schema, types) = resolve_columns(&names, &candidates, options);

    // Pass 2: values.
    progress.start("reading", size, Unit::Bytes);
    let mut rdr = reader(open()?);
    next_record(path, &mut rdr, &mut record, options)?;
    let mut batches = BatchBuilder::new(schema.clone(), &types);
    let mut done: u64 = 0;
    while next_record(path, &mut rdr, &mut record, options)? {
        check_width(path, &record, width)?;
        for (index, (cell, builder)) in record.iter().zip(batches.columns.iter_mut()).enumerate() {
            let cell = cell.trim();
            if missing.is_missing(cell) {
                builder.push_missing();
            } else if let Err(message) = builder.push_text(cell) {
                return Err(DataError::line(
                    path,
                    line_of(&record),
                    format!("column `{}`: {message}", names[index]),
                ));
            }
        }
        batches.end_row();
        done += 1;
        if done.is_multiple_of(PROGRESS_EVERY) {
            progress.set(rdr.position().byte());
        }
    }
    progress.finish();
    Table::from_batches(path, schema, batches.finish())
}

fn line_of(record: &::csv::StringRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

/// Reads the next record, turning the csv crate's errors and oversized fields into kiln's messages.
fn next_record<R: Read>(
    path: &str,
    rdr: &mut ::csv::Reader<R>,
    record: &mut ::csv::StringRecord,
    options: &ReadOptions,
) -> Result<bool, DataError> {
    let more = rdr.read_record(record).map_err(|e| csv_error(path, e))?;
    if more {
        for (index, field) in record.iter().enumerate() {
            if field.len() > options.max_field_bytes {
                return Err(DataError::line(
                    path,
                    line_of(record),
                    format!(
                        "field {} is {}, over the {} limit; an unclosed quote often causes this \
                         (raise the limit with --max-field-bytes)",
                        index + 1,
                        human_bytes(field.len()),
                        human_bytes(options.max_field_bytes)
                    ),
                ));
            }
        }
    }
    Ok(more)
}

fn csv_error(path: &str, e: ::csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        ::csv::ErrorKind::Io(source) => DataError::Io {
            path: path.to_string(),
            source,
        },
        ::csv::ErrorKind::Utf8 { pos, err } => DataError::line(
            path,
            pos.map_or(line, |p| p.line()),
            format!(
                "field {} is not valid UTF-8 (bad byte after {} valid bytes); \
                 re-encode the file as UTF-8",
                err.field() + 1,
                err.valid_up_to()
            ),
        ),
        other => DataError::line(path, line, format!("{other:?}")),
    }
}

fn header(path: &str, record: &::csv::StringRecord) -> Result<Vec<String>, DataError> {
    let mut names: Vec<String> = Vec::with_capacity(record.len());
    for (index, raw) in record.iter().enumerate() {
        let name = raw.trim_start_matches('\u{feff}').trim().to_string();
        if name.is_empty() {
            return Err(DataError::line(
                path,
                1,
                format!("column {} of the header has no name", index + 1),
            ));
        }
        if names.contains(&name) {
            return Err(DataError::line(
                path,
                1,
                format!("column `{name}` appears twice in the header"),
            ));
        }
        names.push(name);
    }
    Ok(names)
}

fn check_width(path: &str, record: &::csv::StringRecord, width: usize) -> Result<(), DataError> {
    if record.len() != width {
        let hint = if record.len() > width {
            "; a field with an unquoted delimiter, or a wrong --delimiter, causes this"
        } else {
            ""
        };
        return Err(DataError::line(
            path,
            line_of(record),
            format!("expected {width} fields, found {}{hint}", record.len()),
        ));
    }
    Ok(())
}

/// `1.5 MiB`, `512 B`.
pub(crate) fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ColumnType;

    fn read(text: &str) -> Result<Table, DataError> {
        read_csv_str(text, &ReadOptions::default())
    }

    #[test]
    fn infers_types_and_missing() {
        let t = read("a,b,c,d\n1,1.5,true,x\n2,NA,False,\"y, z\"\n,3,,x\n").unwrap();
        let types: Vec<_> = (0..4).map(|i| t.column_type(i)).collect();
        assert_eq!(
            types,
            [
                ColumnType::Integer,
                ColumnType::Float,
                ColumnType::Boolean,
                ColumnType::Categorical
            ]
        );
        assert_eq!(t.num_rows(), 3);
        assert_eq!(t.batches()[0].column(0).null_count(), 1);
        assert_eq!(t.batches()[0].column(1).null_count(), 1);
    }

    #[test]
    fn ragged_row_names_its_line() {
        let e = read("a,b\n1,2\n3\n").unwrap_err().to_string();
        assert_eq!(e, "<inline>:3: expected 2 fields, found 1");
    }

    #[test]
    fn override_that_does_not_fit_names_line_and_column() {
        let mut o = ReadOptions::default();
        o.types.insert("a".into(), ColumnType::Integer);
        let e = read_csv_str("a\n1\nx\n", &o).unwrap_err().to_string();
        assert_eq!(e, "<inline>:3: column `a`: cannot read \"x\" as integer");
    }

    #[test]
    fn fingerprint_ignores_batch_boundaries() {
        let t = read("a,b\n1,x\n2,y\n3,x\n").unwrap();
        let parts = Table::from_batches(
            "other",
            t.arrow_schema().clone(),
            vec![t.batches()[0].slice(0, 1), t.batches()[0].slice(1, 2)],
        )
        .unwrap();
        assert_eq!(t.fingerprint(), parts.fingerprint());
        let changed = read("a,b\n1,x\n2,y\n3,z\n").unwrap();
        assert_ne!(t.fingerprint(), changed.fingerprint());
    }
}
