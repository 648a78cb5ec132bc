//! A target column's values: class texts or numbers, the task they imply, and the hint that
//! names the columns there are when the target is missing.

use kiln_core::bundle::Task;
use kiln_core::data::{ColumnType, Table, category_of_number};

use crate::config::TrainError;

/// The raw target values of a split: class texts or numbers; a missing target is an error.
pub(crate) fn targets(
    table: &Table,
    index: usize,
    first_row: usize,
) -> Result<Vec<Result<String, f64>>, TrainError> {
    let values: Vec<Option<Result<String, f64>>> =
        if table.column_type(index) == ColumnType::Categorical {
            table.texts(index).into_iter().map(|v| v.map(Ok)).collect()
        } else {
            table
                .numbers(index)
                .into_iter()
                .map(|v| v.map(Err))
                .collect()
        };
    values
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            v.ok_or_else(|| {
                TrainError::Data(format!(
                    "the target `{}` is missing at row {}; drop or fill those rows",
                    table.column_name(index),
                    first_row + row
                ))
            })
        })
        .collect()
}

pub(crate) fn target_hint(target: &str, table: &Table) -> String {
    let hint = kiln_core::suggest::hint(target, table.names());
    if !hint.is_empty() {
        return hint;
    }
    let names: Vec<String> = table.names().take(8).map(|n| format!("`{n}`")).collect();
    format!(
        "; columns are {}{}",
        names.join(", "),
        if table.num_columns() > 8 { ", …" } else { "" }
    )
}

pub(crate) fn label_text(v: &Result<String, f64>, ty: ColumnType) -> String {
    match v {
        Ok(s) => s.clone(),
        Err(x) => category_of_number(ty, *x),
    }
}

pub(crate) fn infer_task(ty: ColumnType, raw: &[Result<String, f64>]) -> Task {
    match ty {
        ColumnType::Categorical | ColumnType::Boolean => Task::MultiClassification,
        ColumnType::Integer => {
            let mut distinct: Vec<i64> = raw
                .iter()
                .filter_map(|v| v.as_ref().err().map(|x| *x as i64))
                .collect();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() <= 20 {
                Task::MultiClassification
            } else {
                Task::Regression
            }
        }
        ColumnType::Float => Task::Regression,
    }
}
