//! The values an ONNX graph computes with: n-dimensional tensors of numbers (kept as `f32`),
//! integers (`i64`, also for booleans) or strings, and reading them from a `TensorProto`.

use super::proto::{TensorProto, data_type};

/// The most elements one tensor may have (1 GiB of `f32`), so that a graph cannot ask for an
/// allocation the machine does not have.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// The most multiply-adds one operator may do for one call (a convolution, a matrix product),
/// so that a graph cannot tie a thread up for minutes.
pub const MAX_WORK: u64 = 1 << 32;

/// Refuses an operation of `work` multiply-adds above [`MAX_WORK`].
pub fn check_work(what: &str, work: u128) -> OpResult<()> {
    if work > u128::from(MAX_WORK) {
        return Err(format!(
            "{what} would take {work} multiply-adds, more than kiln runs in one operator ({MAX_WORK})"
        ));
    }
    Ok(())
}

/// A name from a graph as kiln shows it in a message: control characters escaped, at most 80
/// characters.
pub fn shown(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &escaped[..i]),
        None => escaped,
    }
}

/// An error while loading or running a graph, as a sentence.
pub type OpResult<T> = Result<T, String>;

/// What a tensor holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Floating point numbers (`float` and `double` in ONNX; kiln computes in `f32`).
    F32(Vec<f32>),
    /// Integers and booleans.
    I64(Vec<i64>),
    Str(Vec<String>),
}

/// An n-dimensional tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// The element types ONNX declares, as kiln reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Float,
    Double,
    Int64,
    Int32,
    Bool,
    Str,
}

impl Elem {
    /// The ONNX `DataType` code, if kiln reads it.
    pub fn from_code(code: i32) -> Option<Elem> {
        Some(match code {
            data_type::FLOAT => Elem::Float,
            data_type::DOUBLE => Elem::Double,
            data_type::INT64 => Elem::Int64,
            data_type::INT32 | data_type::INT8 | data_type::UINT8 => Elem::Int32,
            data_type::BOOL => Elem::Bool,
            data_type::STRING => Elem::Str,
            _ => return None,
        })
    }

    pub fn is_number(self) -> bool {
        !matches!(self, Elem::Str)
    }
}

/// The number of elements of a shape, refused above [`MAX_ELEMENTS`].
pub fn elements(shape: &[usize]) -> OpResult<usize> {
    let mut n: usize = 1;
    for d in shape {
        n = n
            .checked_mul(*d)
            .filter(|n| *n <= MAX_ELEMENTS)
            .ok_or_else(|| format!("a tensor of shape {shape:?} is too large"))?;
    }
    Ok(n)
}

impl Value {
    pub fn floats(shape: Vec<usize>, data: Vec<f32>) -> Value {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Value {
            shape,
            data: Data::F32(data),
        }
    }

    pub fn ints(shape: Vec<usize>, data: Vec<i64>) -> Value {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Value {
            shape,
            data: Data::I64(data),
        }
    }

    pub fn strings(shape: Vec<usize>, data: Vec<String>) -> Value {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Value {
            shape,
            data: Data::Str(data),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> &'static str {
        match self.data {
            Data::F32(_) => "numbers",
            Data::I64(_) => "integers",
            Data::Str(_) => "strings",
        }
    }

    /// The same data under another shape with as many elements.
    pub fn reshaped(mut self, shape: Vec<usize>) -> OpResult<Value> {
        if elements(&shape)? != self.len() {
            return Err(format!(
                "cannot reshape {:?} ({} values) to {shape:?}",
                self.shape,
                self.len()
            ));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The floats of a float tensor.
    pub fn as_f32(&self) -> OpResult<&[f32]> {
        match &self.data {
            Data::F32(v) => Ok(v),
            _ => Err(format!("expects numbers, got {}", self.kind())),
        }
    }

    /// The values as floats (integers converted; strings refused).
    pub fn to_f32(&self) -> OpResult<Vec<f32>> {
        match &self.data {
            Data::F32(v) => Ok(v.clone()),
            Data::I64(v) => Ok(v.iter().map(|x| *x as f32).collect()),
            Data::Str(_) => Err("expects numbers, got strings".into()),
        }
    }

    /// The values as integers (floats truncated; strings refused).
    pub fn to_i64(&self) -> OpResult<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::F32(v) => Ok(v.iter().map(|x| *x as i64).collect()),
            Data::Str(_) => Err("expects integers, got strings".into()),
        }
    }

    /// The tensor as a float tensor.
    pub fn into_f32(self) -> OpResult<Value> {
        match self.data {
            Data::F32(_) => Ok(self),
            _ => {
                let data = self.to_f32()?;
                Ok(Value::floats(self.shape, data))
            }
        }
    }

    /// `[rows, columns]` of a tensor read as a matrix: a vector is one row.
    pub fn matrix(&self) -> OpResult<(usize, usize)> {
        match self.shape.as_slice() {
            [c] => Ok((1, *c)),
            [r, c] => Ok((*r, *c)),
            s => Err(format!("expects a matrix, got shape {s:?}")),
        }
    }

    /// Reads an initializer or a `value` attribute.
    pub fn from_proto(t: &TensorProto) -> OpResult<Value> {
        if t.data_location == 1 {
            return Err(format!(
                "tensor `{}` keeps its data in an external file; save the model with all \
                 tensors inside it (onnx.save_model(..., save_as_external_data=False))",
                t.name
            ));
        }
        let shape = t
            .dims
            .iter()
            .map(|d| {
                usize::try_from(*d).map_err(|_| format!("tensor `{}` has dimension {d}", t.name))
            })
            .collect::<OpResult<Vec<usize>>>()?;
        let n = elements(&shape)?;
        let raw = &t.raw_data;
        let fixed = |width: usize| -> OpResult<()> {
            if raw.len() != n * width {
                return Err(format!(
                    "tensor `{}` of shape {shape:?} has {} bytes of data, expected {}",
                    t.name,
                    raw.len(),
                    n * width
                ));
            }
            Ok(())
        };
        let elem = Elem::from_code(t.data_type).ok_or_else(|| {
            format!(
                "tensor `{}` has data type {}, which kiln does not read",
                t.name, t.data_type
            )
        })?;
        let data = if !raw.is_empty() {
            match (elem, t.data_type) {
                (Elem::Float, _) => {
                    fixed(4)?;
                    Data::F32(
                        raw.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    )
                }
                (Elem::Double, _) => {
                    fixed(8)?;
                    Data::F32(
                        raw.chunks_exact(8)
                            .map(|c| {
                                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                    as f32
                            })
                            .collect(),
                    )
                }
                (Elem::Int64, _) => {
                    fixed(8)?;
                    Data::I64(
                        raw.chunks_exact(8)
                            .map(|c| {
                                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            })
                            .collect(),
                    )
                }
                (Elem::Int32, data_type::INT32) => {
                    fixed(4)?;
                    Data::I64(
                        raw.chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                            .collect(),
                    )
                }
                (Elem::Int32, data_type::INT8) => {
                    fixed(1)?;
                    Data::I64(raw.iter().map(|b| *b as i8 as i64).collect())
                }
                (Elem::Int32 | Elem::Bool, _) => {
                    fixed(1)?;
                    Data::I64(raw.iter().map(|b| *b as i64).collect())
                }
                (Elem::Str, _) => return Err(format!("string tensor `{}` has raw data", t.name)),
            }
        } else {
            let data = match elem {
                Elem::Float => Data::F32(t.float_data.clone()),
                Elem::Double => Data::F32(t.double_data.iter().map(|x| *x as f32).collect()),
                Elem::Int64 => Data::I64(t.int64_data.clone()),
                Elem::Int32 | Elem::Bool => {
                    Data::I64(t.int32_data.iter().map(|x| *x as i64).collect())
                }
                Elem::Str => Data::Str(
                    t.string_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                ),
            };
            let v = Value {
                shape: Vec::new(),
                data,
            };
            if v.len() != n {
                return Err(format!(
                    "tensor `{}` of shape {shape:?} holds {} values, expected {n}",
                    t.name,
                    v.len()
                ));
            }
            v.data
        };
        Ok(Value { shape, data })
    }
}

/// The shape two shapes broadcast to (numpy's rules), or why they do not.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    elements(&out)?;
    Ok(out)
}

/// Strides of `shape` read under the broadcast shape `out` (0 along broadcast dimensions).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let o = i + out.len() - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

/// Applies `f` elementwise to two tensors broadcast together.
pub fn broadcast_map<T: Copy, U>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    f: impl Fn(T, T) -> U,
) -> OpResult<(Vec<usize>, Vec<U>)> {
    let shape = broadcast_shape(a_shape, b_shape)?;
    if a_shape == b_shape {
        return Ok((shape, a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()));
    }
    if b.len() == 1 && shape == a_shape {
        return Ok((shape, a.iter().map(|x| f(*x, b[0])).collect()));
    }
    let n = elements(&shape)?;
    let (sa, sb) = (
        broadcast_strides(a_shape, &shape),
        broadcast_strides(b_shape, &shape),
    );
    let mut index = vec![0usize; shape.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f(a[ia], b[ib]));
        // Advance the multi-index like an odometer, moving both offsets with it.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if index[d] < shape[d] {
                break;
            }
            ia -= sa[d] * shape[d];
            ib -= sb[d] * shape[d];
            index[d] = 0;
        }
    }
    Ok((shape, out))
}

/// An axis given as ONNX does (negative from the end) as an index below `rank`.
pub fn axis(axis: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let (shape, v) = broadcast_map(
            &[1.0f32, 2.0, 3.0],
            &[3, 1],
            &[10.0, 20.0],
            &[1, 2],
            |a, b| a + b,
        )
        .unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(v, vec![11.0, 21.0, 12.0, 22.0, 13.0, 23.0]);
        let (shape, v) = broadcast_map(
            &[1.0f32, 2.0, 3.0, 4.0],
            &[2, 2],
            &[1.0, 2.0],
            &[2],
            |a, b| a * b,
        )
        .unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(v, vec![1.0, 4.0, 3.0, 8.0]);
        assert!(broadcast_shape(&[2, 3], &[4]).is_err());
        assert!(broadcast_shape(&[1 << 20, 1], &[1, 1 << 20]).is_err());
    }
}
