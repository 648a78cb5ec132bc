//! Apply: raw rows to features. The per-value functions here are the only place where a value is
//! transformed; the batch path and the single-row path both call them, so they agree bit for bit.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value};

use super::spec::Output;
use super::{FittedOp, FittedTransform, Scale, TransformError};
use crate::data::{ColumnType, DEFAULT_MISSING, Table};

/// Features of a set of rows: a row-major dense `f32` matrix and a row-major integer id matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub rows: usize,
    pub dense_width: usize,
    pub id_width: usize,
    /// `rows × dense_width` values, row after row.
    pub dense: Vec<f32>,
    /// `rows × id_width` ids, row after row.
    pub ids: Vec<u32>,
}

impl Features {
    fn zeros(rows: usize, dense_width: usize, id_width: usize) -> Features {
        Features {
            rows,
            dense_width,
            id_width,
            dense: vec![0.0; rows * dense_width],
            ids: vec![0; rows * id_width],
        }
    }
    pub fn dense_row(&self, row: usize) -> &[f32] {
        &self.dense[row * self.dense_width..(row + 1) * self.dense_width]
    }
    pub fn id_row(&self, row: usize) -> &[u32] {
        &self.ids[row * self.id_width..(row + 1) * self.id_width]
    }
}

/// One raw value of one column of one row, however a caller holds its rows (see
/// [`FittedTransform::apply_cells_into`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Missing,
    Number(f64),
    Text(&'a str),
}

/// What one feature contributes for one row.
#[derive(Debug, Clone, Copy)]
enum Emit {
    Value(f32),
    OneHot(u32),
    Id(u32),
}

/// impute → clip → log1p, the shared numeric steps of numeric and bucketize features.
#[inline]
pub(super) fn numeric_steps(
    raw: Option<f64>,
    impute: Option<f64>,
    clip: Option<[f64; 2]>,
    log1p: bool,
) -> Result<f64, String> {
    let mut x = match raw.or(impute) {
        Some(x) => x,
        None => return Err("missing value and no imputation (set `impute`)".to_string()),
    };
    if let Some([lo, hi]) = clip {
        x = x.clamp(lo, hi);
    }
    if log1p {
        if x <= -1.0 {
            return Err(format!(
                "log1p of {x} is undefined; clip the column to [0, ...] first"
            ));
        }
        x = x.ln_1p();
    }
    Ok(x)
}

#[inline]
fn scale(x: f64, scale: Scale) -> f32 {
    match scale {
        Scale::None => x as f32,
        Scale::Standardize { mean, std } => ((x - mean) / std) as f32,
        Scale::MinMax { min, max } => {
            if max > min {
                ((x - min) / (max - min)) as f32
            } else {
                0.0
            }
        }
    }
}

/// The text a number has as a category of a column of type `ty`.
pub(super) fn category_text(ty: ColumnType, v: f64) -> String {
    crate::data::category_of_number(ty, v)
}

/// 64-bit FNV-1a: small, fast on short strings, and fixed forever (ids depend on it).
#[inline]
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn is_missing_text(s: &str) -> bool {
    DEFAULT_MISSING.contains(&s.trim())
}

impl FittedTransform {
    /// The one function that turns a raw value of feature `fi` into what it emits.
    #[inline]
    fn emit(&self, fi: usize, raw: Cell<'_>) -> Result<Emit, String> {
        let input_type = || self.inputs[self.layout.input[fi]].column_type;
        match &self.features[fi].op {
            FittedOp::Numeric {
                impute,
                clip,
                log1p,
                scale: s,
                keep_missing,
            } => {
                let v = as_number(raw)?;
                if *keep_missing && v.is_none() && impute.is_none() {
                    return Ok(Emit::Value(f32::NAN));
                }
                let x = numeric_steps(v, *impute, *clip, *log1p)?;
                Ok(Emit::Value(scale(x, *s)))
            }
            FittedOp::Bucketize {
                impute,
                clip,
                log1p,
                boundaries,
                output,
            } => {
                let x = numeric_steps(as_number(raw)?, *impute, *clip, *log1p)?;
                let b = boundaries.partition_point(|edge| *edge <= x) as u32;
                Ok(discrete(b, *output))
            }
            FittedOp::Vocabulary {
                impute,
                vocabulary,
                oov_buckets,
                output,
            } => {
                let key = as_key(raw, input_type(), impute.as_deref());
                let index = self.layout.vocab[fi]
                    .as_ref()
                    .unwrap_or_else(|| unreachable!("vocabulary features have an index"));
                let id = match key.as_deref() {
                    Some(k) => match index.get(k) {
                        Some(id) => *id,
                        None if *oov_buckets > 0 => {
                            vocabulary.len() as u32 + (fnv1a(k) % u64::from(*oov_buckets)) as u32
                        }
                        None => {
                            return Err(format!(
                                "{k:?} was not seen in training and the transform has no \
                                 out-of-vocabulary buckets (oov_buckets = 0)"
                            ));
                        }
                    },
                    None if *oov_buckets > 0 => vocabulary.len() as u32,
                    None => {
                        return Err(
                            "missing value, no imputation and no out-of-vocabulary bucket"
                                .to_string(),
                        );
                    }
                };
                Ok(discrete(id, *output))
            }
            FittedOp::Hash {
                impute,
                buckets,
                output,
            } => {
                let key = as_key(raw, input_type(), impute.as_deref());
                let id = (fnv1a(key.as_deref().unwrap_or("")) % u64::from(*buckets)) as u32;
                Ok(discrete(id, *output))
            }
        }
    }

    #[inline]
    fn write(&self, fi: usize, emit: Emit, dense: &mut [f32], ids: &mut [u32]) {
        let offset = self.layout.offset[fi];
        match emit {
            Emit::Value(v) => dense[offset] = v,
            Emit::OneHot(i) => dense[offset + i as usize] = 1.0,
            Emit::Id(i) => ids[offset] = i,
        }
    }

    /// Applies the transform to one raw row given as a JSON object, as it arrives at a server.
    ///
    /// A key that is absent or `null` is a missing value; numbers may also come as numeric strings.
    pub fn apply_json_row(&self, row: &Map<String, Value>) -> Result<Features, TransformError> {
        let mut out = Features::zeros(1, self.dense_width(), self.id_width());
        self.apply_json_row_into(row, &mut out.dense, &mut out.ids)?;
        Ok(out)
    }

    /// [`Self::apply_json_row`] into caller-owned buffers of `dense_width` and `id_width`.
    pub fn apply_json_row_into(
        &self,
        row: &Map<String, Value>,
        dense: &mut [f32],
        ids: &mut [u32],
    ) -> Result<(), TransformError> {
        self.apply_cells_into(
            0,
            |i| match row.get(&self.inputs[i].name) {
                None | Some(Value::Null) => Ok(Cell::Missing),
                Some(Value::Number(n)) => Ok(n.as_f64().map_or(Cell::Missing, Cell::Number)),
                Some(Value::Bool(b)) => Ok(Cell::Number(if *b { 1.0 } else { 0.0 })),
                Some(Value::String(s)) if is_missing_text(s) => Ok(Cell::Missing),
                Some(Value::String(s)) => Ok(Cell::Text(s)),
                Some(other) => Err(format!(
                    "expected a number, string, boolean or null, found {}",
                    json_kind(other)
                )),
            },
            dense,
            ids,
        )
    }

    /// Applies the transform to one row whose values `cell` gives by input index (the position
    /// of the column in [`FittedTransform::inputs`]), or says why a value cannot be read, into
    /// caller-owned buffers of `dense_width` and `id_width`. `row` only labels errors. For
    /// callers that hold rows in their own form: JSON objects, a server's decoded tensors.
    pub fn apply_cells_into<'a>(
        &self,
        row: usize,
        cell: impl Fn(usize) -> Result<Cell<'a>, String>,
        dense: &mut [f32],
        ids: &mut [u32],
    ) -> Result<(), TransformError> {
        assert_eq!(dense.len(), self.dense_width(), "dense buffer width");
        assert_eq!(ids.len(), self.id_width(), "id buffer width");
        dense.fill(0.0);
        for fi in 0..self.features.len() {
            let emit = cell(self.layout.input[fi])
                .and_then(|raw| self.emit(fi, raw))
                .map_err(|m| value_error(row, &self.features[fi].column, m))?;
            self.write(fi, emit, dense, ids);
        }
        Ok(())
    }

    /// Applies the transform to every row of a record batch.
    pub fn apply_batch(&self, batch: &RecordBatch) -> Result<Features, TransformError> {
        let mut out = Features::zeros(batch.num_rows(), self.dense_width(), self.id_width());
        self.apply_batch_into(batch, 0, &mut out.dense, &mut out.ids)?;
        Ok(out)
    }

    /// Applies the transform to every row of a table.
    pub fn apply_table(&self, table: &Table) -> Result<Features, TransformError> {
        let (dw, iw) = (self.dense_width(), self.id_width());
        let mut out = Features::zeros(table.num_rows(), dw, iw);
        let mut start = 0;
        for batch in table.batches() {
            let n = batch.num_rows();
            self.apply_batch_into(
                batch,
                start,
                &mut out.dense[start * dw..(start + n) * dw],
                &mut out.ids[start * iw..(start + n) * iw],
            )?;
            start += n;
        }
        Ok(out)
    }

    /// Applies the transform to a batch, writing into zeroed row-major buffers of
    /// `rows × dense_width` and `rows × id_width`. Errors count rows from `first_row`.
    pub fn apply_batch_into(
        &self,
        batch: &RecordBatch,
        first_row: usize,
        dense: &mut [f32],
        ids: &mut [u32],
    ) -> Result<(), TransformError> {
        let rows = batch.num_rows();
        let (dw, iw) = (self.dense_width(), self.id_width());
        assert_eq!(dense.len(), rows * dw, "dense buffer size");
        assert_eq!(ids.len(), rows * iw, "id buffer size");
        let schema = batch.schema();
        let mut columns = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let index =
                schema
                    .index_of(&input.name)
                    .map_err(|_| TransformError::MissingColumn {
                        column: input.name.clone(),
                        hint: crate::suggest::hint(
                            &input.name,
                            schema.fields().iter().map(|f| f.name().as_str()),
                        ),
                    })?;
            columns.push(batch.column(index).as_ref());
        }
        for fi in 0..self.features.len() {
            let input = &self.inputs[self.layout.input[fi]];
            let array = columns[self.layout.input[fi]];
            let fail = |row: usize, m: String| value_error(first_row + row, &input.name, m);
            let numeric_op = matches!(
                self.features[fi].op,
                FittedOp::Numeric { .. } | FittedOp::Bucketize { .. }
            );
            match array.data_type() {
                DataType::Dictionary(..) if numeric_op => {
                    return Err(fail(
                        0,
                        format!(
                            "the column holds categories, but the transform was fitted on {} values",
                            input.column_type
                        ),
                    ));
                }
                DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                    let dict = array.as_dictionary::<Int32Type>();
                    let values = dict.values().as_string::<i32>();
                    // Each distinct key is transformed once. A slice of a large batch can carry a
                    // dictionary far bigger than itself; then a map beats a table of every entry.
                    let mut cache = KeyCache::new(values.len(), rows);
                    let mut missing: Option<Emit> = None;
                    for (row, key) in dict.keys().iter().enumerate() {
                        let emit = match key {
                            None => match missing {
                                Some(e) => e,
                                None => {
                                    let e =
                                        self.emit(fi, Cell::Missing).map_err(|m| fail(row, m))?;
                                    missing = Some(e);
                                    e
                                }
                            },
                            Some(k) => match cache.get(k) {
                                Some(e) => e,
                                None => {
                                    let text = values.value(k as usize);
                                    let raw = if is_missing_text(text) {
                                        Cell::Missing
                                    } else {
                                        Cell::Text(text)
                                    };
                                    let e = self.emit(fi, raw).map_err(|m| fail(row, m))?;
                                    cache.put(k, e);
                                    e
                                }
                            },
                        };
                        self.write(fi, emit, &mut dense[row * dw..], &mut ids[row * iw..]);
                    }
                }
                DataType::Int64 => {
                    let values = array.as_primitive::<Int64Type>().iter();
                    self.apply_numbers(fi, values.map(|v| v.map(|v| v as f64)), dense, ids)
                        .map_err(|(row, m)| fail(row, m))?;
                }
                DataType::Float64 => {
                    let values = array.as_primitive::<Float64Type>().iter();
                    self.apply_numbers(fi, values, dense, ids)
                        .map_err(|(row, m)| fail(row, m))?;
                }
                DataType::Boolean => {
                    let values = array.as_boolean().iter();
                    let numbers = values.map(|v| v.map(|b| if b { 1.0 } else { 0.0 }));
                    self.apply_numbers(fi, numbers, dense, ids)
                        .map_err(|(row, m)| fail(row, m))?;
                }
                other => {
                    return Err(fail(0, format!("unsupported Arrow type {other}")));
                }
            }
        }
        Ok(())
    }
}

impl FittedTransform {
    /// Applies numeric-input feature `fi` to a column of values (`None` or NaN is missing).
    fn apply_numbers(
        &self,
        fi: usize,
        values: impl Iterator<Item = Option<f64>>,
        dense: &mut [f32],
        ids: &mut [u32],
    ) -> Result<(), (usize, String)> {
        let (dw, iw) = (self.dense_width(), self.id_width());
        if let FittedOp::Numeric {
            impute,
            clip,
            log1p,
            scale: s,
            keep_missing,
        } = &self.features[fi].op
        {
            // The commonest feature, with its match hoisted out of the row loop; the same
            // `numeric_steps` and `scale` as `emit`, so still bit-identical to one-row apply.
            let offset = self.layout.offset[fi];
            let keep = *keep_missing && impute.is_none();
            for (row, v) in values.enumerate() {
                let v = v.filter(|v| !v.is_nan());
                dense[row * dw + offset] = if keep && v.is_none() {
                    f32::NAN
                } else {
                    scale(
                        numeric_steps(v, *impute, *clip, *log1p).map_err(|m| (row, m))?,
                        *s,
                    )
                };
            }
            return Ok(());
        }
        for (row, v) in values.enumerate() {
            let raw = match v {
                Some(v) if !v.is_nan() => Cell::Number(v),
                _ => Cell::Missing,
            };
            let emit = self.emit(fi, raw).map_err(|m| (row, m))?;
            self.write(fi, emit, &mut dense[row * dw..], &mut ids[row * iw..]);
        }
        Ok(())
    }
}

/// What each dictionary key of a batch column emits, filled as keys are met.
enum KeyCache {
    Table(Vec<Option<Emit>>),
    Map(HashMap<i32, Emit>),
}

impl KeyCache {
    fn new(dictionary_len: usize, rows: usize) -> KeyCache {
        // Zeroing a table entry costs far less than hashing a key, so the table wins up to
        // dictionaries many times the batch.
        if dictionary_len <= (16 * rows).max(1 << 14) {
            KeyCache::Table(vec![None; dictionary_len])
        } else {
            KeyCache::Map(HashMap::with_capacity(rows.min(1024)))
        }
    }

    #[inline]
    fn get(&self, key: i32) -> Option<Emit> {
        match self {
            KeyCache::Table(t) => t.get(key as usize).copied().flatten(),
            KeyCache::Map(m) => m.get(&key).copied(),
        }
    }

    #[inline]
    fn put(&mut self, key: i32, emit: Emit) {
        match self {
            KeyCache::Table(t) => {
                if let Some(slot) = t.get_mut(key as usize) {
                    *slot = Some(emit);
                }
            }
            KeyCache::Map(m) => {
                m.insert(key, emit);
            }
        }
    }
}

#[inline]
fn discrete(i: u32, output: Output) -> Emit {
    match output {
        Output::OneHot => Emit::OneHot(i),
        Output::Id => Emit::Id(i),
    }
}

#[inline]
fn as_number(raw: Cell<'_>) -> Result<Option<f64>, String> {
    match raw {
        Cell::Missing => Ok(None),
        Cell::Number(v) => Ok((!v.is_nan()).then_some(v)),
        Cell::Text(s) => match s.trim().parse::<f64>() {
            Ok(v) if !v.is_nan() => Ok(Some(v)),
            _ => Err(format!("expected a number, found {s:?}")),
        },
    }
}

/// The category key of a raw value; `None` when missing and not imputed.
#[inline]
fn as_key<'a>(
    raw: Cell<'a>,
    ty: ColumnType,
    impute: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    match raw {
        Cell::Missing => impute.map(std::borrow::Cow::Borrowed),
        Cell::Number(v) if v.is_nan() => impute.map(std::borrow::Cow::Borrowed),
        Cell::Number(v) => Some(std::borrow::Cow::Owned(category_text(ty, v))),
        Cell::Text(s) => Some(std::borrow::Cow::Borrowed(s)),
    }
}

fn value_error(row: usize, column: &str, message: String) -> TransformError {
    TransformError::Value {
        row,
        column: column.to_string(),
        message,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
