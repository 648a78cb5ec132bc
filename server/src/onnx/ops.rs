//! The standard ONNX operators that exported MLPs, linear models and small CNNs use, with the
//! semantics of the ONNX specification (numpy broadcasting, `NCHW` images).

use super::attrs::Attrs;
use super::ml::MlOp;
use super::tensor::{Data, OpResult, Value, axis, broadcast_map, check_work, elements};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    Abs,
    Neg,
    Sqrt,
    Floor,
    Ceil,
    Reciprocal,
    Softplus,
    Erf,
}

/// Convolution and pooling geometry for 1-D and 2-D inputs (`[N, C, W]` or `[N, C, H, W]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// Begin pads then end pads, per spatial axis.
    pads: Vec<usize>,
    auto_pad: String,
    ceil: bool,
    group: usize,
    count_include_pad: bool,
}

/// One operator of a graph, its attributes read once.
#[derive(Debug, Clone)]
pub enum Op {
    Identity,
    Cast {
        to: super::tensor::Elem,
    },
    Binary(Binary),
    Unary(Unary),
    LeakyRelu {
        alpha: f32,
    },
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Softmax {
        axis: i64,
        flatten: bool,
        log: bool,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        ta: bool,
        tb: bool,
    },
    MatMul,
    Flatten {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Concat {
        axis: i64,
    },
    Constant(Value),
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    ArgMax {
        axis: i64,
        keepdims: bool,
    },
    Transpose {
        perm: Option<Vec<usize>>,
    },
    Gather {
        axis: i64,
    },
    Shape,
    Conv(Window),
    MaxPool(Window),
    AveragePool(Window),
    GlobalAveragePool,
    BatchNormalization {
        epsilon: f32,
    },
    Ml(MlOp),
}

impl Op {
    /// Reads a node of the default domain (`opset` its version) or of `ai.onnx.ml`; `None` for
    /// an operator kiln does not run.
    pub fn parse(domain: &str, op: &str, a: &Attrs, opset: i64) -> OpResult<Option<Op>> {
        if domain == "ai.onnx.ml" {
            return Ok(MlOp::parse(op, a)?.map(Op::Ml));
        }
        if !(domain.is_empty() || domain == "ai.onnx") {
            return Ok(None);
        }
        Ok(Some(match op {
            "Identity" | "Dropout" => Op::Identity,
            "Cast" => {
                let code = a.int("to", 0) as i32;
                Op::Cast {
                    to: super::tensor::Elem::from_code(code)
                        .ok_or_else(|| format!("Cast to data type {code} is not supported"))?,
                }
            }
            "Add" => Op::Binary(Binary::Add),
            "Sub" => Op::Binary(Binary::Sub),
            "Mul" => Op::Binary(Binary::Mul),
            "Div" => Op::Binary(Binary::Div),
            "Pow" => Op::Binary(Binary::Pow),
            "Relu" => Op::Unary(Unary::Relu),
            "Sigmoid" => Op::Unary(Unary::Sigmoid),
            "Tanh" => Op::Unary(Unary::Tanh),
            "Exp" => Op::Unary(Unary::Exp),
            "Log" => Op::Unary(Unary::Log),
            "Abs" => Op::Unary(Unary::Abs),
            "Neg" => Op::Unary(Unary::Neg),
            "Sqrt" => Op::Unary(Unary::Sqrt),
            "Floor" => Op::Unary(Unary::Floor),
            "Ceil" => Op::Unary(Unary::Ceil),
            "Reciprocal" => Op::Unary(Unary::Reciprocal),
            "Softplus" => Op::Unary(Unary::Softplus),
            "Erf" => Op::Unary(Unary::Erf),
            "LeakyRelu" => Op::LeakyRelu {
                alpha: a.float("alpha", 0.01),
            },
            "Clip" => Op::Clip {
                min: a.get("min").map(|m| m.f),
                max: a.get("max").map(|m| m.f),
            },
            "Softmax" | "LogSoftmax" => Op::Softmax {
                axis: a.int("axis", if opset >= 13 { -1 } else { 1 }),
                flatten: opset < 13,
                log: op == "LogSoftmax",
            },
            "Gemm" => Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                ta: a.int("transA", 0) != 0,
                tb: a.int("transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Flatten" => Op::Flatten {
                axis: a.int("axis", 1),
            },
            "Reshape" => Op::Reshape {
                allowzero: a.int("allowzero", 0) != 0,
            },
            "Concat" => Op::Concat {
                axis: a.int("axis", 0),
            },
            "Constant" => Op::Constant(
                a.tensor("value")?
                    .or_else(|| {
                        a.get("value_float")
                            .map(|v| Value::floats(vec![], vec![v.f]))
                    })
                    .or_else(|| {
                        a.get("value_floats")
                            .map(|v| Value::floats(vec![v.floats.len()], v.floats.clone()))
                    })
                    .or_else(|| a.get("value_int").map(|v| Value::ints(vec![], vec![v.i])))
                    .or_else(|| {
                        a.get("value_ints")
                            .map(|v| Value::ints(vec![v.ints.len()], v.ints.clone()))
                    })
                    .ok_or("Constant has no value kiln reads")?,
            ),
            "Squeeze" => Op::Squeeze {
                axes: a.has("axes").then(|| a.ints("axes")),
            },
            "Unsqueeze" => Op::Unsqueeze {
                axes: a.has("axes").then(|| a.ints("axes")),
            },
            "ArgMax" => {
                if a.int("select_last_index", 0) != 0 {
                    return Err("ArgMax with select_last_index is not supported".into());
                }
                Op::ArgMax {
                    axis: a.int("axis", 0),
                    keepdims: a.int("keepdims", 1) != 0,
                }
            }
            "Transpose" => Op::Transpose {
                perm: a
                    .has("perm")
                    .then(|| {
                        a.ints("perm")
                            .into_iter()
                            .map(|p| usize::try_from(p).map_err(|_| format!("perm holds {p}")))
                            .collect::<OpResult<Vec<_>>>()
                    })
                    .transpose()?,
            },
            "Gather" => Op::Gather {
                axis: a.int("axis", 0),
            },
            "Shape" => {
                if a.has("start") || a.has("end") {
                    return Err("Shape with start or end is not supported".into());
                }
                Op::Shape
            }
            "Conv" => Op::Conv(Window::parse(a, true)?),
            "MaxPool" => {
                if a.int("storage_order", 0) != 0 {
                    return Err("MaxPool with storage_order 1 is not supported".into());
                }
                Op::MaxPool(Window::parse(a, false)?)
            }
            "AveragePool" => Op::AveragePool(Window::parse(a, false)?),
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "BatchNormalization" => Op::BatchNormalization {
                epsilon: a.float("epsilon", 1e-5),
            },
            _ => return Ok(None),
        }))
    }

    /// Runs the operator; a missing optional input is `None`.
    pub fn eval(&self, inputs: &[Option<&Value>]) -> OpResult<Vec<Value>> {
        let input = |i: usize| -> OpResult<&Value> {
            inputs
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| format!("input {i} is missing"))
        };
        let one = |v: Value| Ok(vec![v]);
        match self {
            Op::Identity => one(input(0)?.clone()),
            Op::Cast { to } => one(cast(input(0)?, *to)?),
            Op::Binary(op) => one(binary(*op, input(0)?, input(1)?)?),
            Op::Unary(op) => {
                let x = input(0)?;
                let f: fn(f32) -> f32 = match op {
                    Unary::Relu => |x| x.max(0.0),
                    Unary::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
                    Unary::Tanh => f32::tanh,
                    Unary::Exp => f32::exp,
                    Unary::Log => f32::ln,
                    Unary::Abs => f32::abs,
                    Unary::Neg => |x| -x,
                    Unary::Sqrt => f32::sqrt,
                    Unary::Floor => f32::floor,
                    Unary::Ceil => f32::ceil,
                    Unary::Reciprocal => |x| 1.0 / x,
                    Unary::Softplus => |x| x.exp().ln_1p(),
                    Unary::Erf => erf,
                };
                one(map(x, f)?)
            }
            Op::LeakyRelu { alpha } => {
                let a = *alpha;
                one(map(input(0)?, move |x| if x < 0.0 { a * x } else { x })?)
            }
            Op::Clip { min, max } => {
                let scalar = |i: usize, attr: Option<f32>| -> OpResult<Option<f32>> {
                    match inputs.get(i).copied().flatten() {
                        Some(v) => Ok(v.to_f32()?.first().copied()),
                        None => Ok(attr),
                    }
                };
                let lo = scalar(1, *min)?.unwrap_or(f32::NEG_INFINITY);
                let hi = scalar(2, *max)?.unwrap_or(f32::INFINITY);
                one(map(input(0)?, move |x| x.max(lo).min(hi))?)
            }
            Op::Softmax { axis, flatten, log } => one(softmax(input(0)?, *axis, *flatten, *log)?),
            Op::Gemm {
                alpha,
                beta,
                ta,
                tb,
            } => one(gemm(
                input(0)?,
                input(1)?,
                inputs.get(2).copied().flatten(),
                *alpha,
                *beta,
                *ta,
                *tb,
            )?),
            Op::MatMul => one(matmul(input(0)?, input(1)?)?),
            Op::Flatten { axis: ax } => {
                let x = input(0)?;
                let a = if *ax == x.shape.len() as i64 {
                    x.shape.len()
                } else {
                    axis(*ax, x.shape.len())?
                };
                let outer = x.shape[..a].iter().product();
                let inner = x.shape[a..].iter().product();
                one(x.clone().reshaped(vec![outer, inner])?)
            }
            Op::Reshape { allowzero } => {
                let x = input(0)?;
                let spec = input(1)?.to_i64()?;
                one(x
                    .clone()
                    .reshaped(reshape(&x.shape, &spec, *allowzero, x.len())?)?)
            }
            Op::Concat { axis } => {
                let parts: Vec<&Value> = inputs.iter().flatten().copied().collect();
                one(concat(&parts, *axis)?)
            }
            Op::Constant(v) => one(v.clone()),
            Op::Squeeze { axes } => {
                let x = input(0)?;
                let axes = match axes {
                    Some(a) => Some(a.clone()),
                    None => inputs
                        .get(1)
                        .copied()
                        .flatten()
                        .map(Value::to_i64)
                        .transpose()?,
                };
                let rank = x.shape.len();
                let drop: Vec<usize> = match axes {
                    Some(a) => a.iter().map(|a| axis(*a, rank)).collect::<OpResult<_>>()?,
                    None => (0..rank).filter(|i| x.shape[*i] == 1).collect(),
                };
                if let Some(d) = drop.iter().find(|d| x.shape[**d] != 1) {
                    return Err(format!("cannot squeeze axis {d} of shape {:?}", x.shape));
                }
                let shape = (0..rank)
                    .filter(|i| !drop.contains(i))
                    .map(|i| x.shape[i])
                    .collect();
                one(x.clone().reshaped(shape)?)
            }
            Op::Unsqueeze { axes } => {
                let x = input(0)?;
                let axes = match axes {
                    Some(a) => a.clone(),
                    None => input(1)?.to_i64()?,
                };
                let rank = x.shape.len() + axes.len();
                let mut add: Vec<usize> = axes
                    .iter()
                    .map(|a| axis(*a, rank))
                    .collect::<OpResult<_>>()?;
                add.sort_unstable();
                let mut shape = x.shape.clone();
                for a in add {
                    shape.insert(a.min(shape.len()), 1);
                }
                one(x.clone().reshaped(shape)?)
            }
            Op::ArgMax { axis: ax, keepdims } => {
                let x = input(0)?;
                let a = axis(*ax, x.shape.len())?;
                let v = x.to_f32()?;
                let (outer, n, inner) = split3(&x.shape, a);
                let mut out = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    for i in 0..inner {
                        let mut best = 0;
                        for k in 0..n {
                            if v[(o * n + k) * inner + i] > v[(o * n + best) * inner + i] {
                                best = k;
                            }
                        }
                        out.push(best as i64);
                    }
                }
                let mut shape = x.shape.clone();
                if *keepdims {
                    shape[a] = 1;
                } else {
                    shape.remove(a);
                }
                one(Value::ints(shape, out))
            }
            Op::Transpose { perm } => one(transpose(input(0)?, perm.as_deref())?),
            Op::Gather { axis } => one(gather(input(0)?, input(1)?, *axis)?),
            Op::Shape => {
                let x = input(0)?;
                one(Value::ints(
                    vec![x.shape.len()],
                    x.shape.iter().map(|d| *d as i64).collect(),
                ))
            }
            Op::Conv(w) => one(conv(
                input(0)?,
                input(1)?,
                inputs.get(2).copied().flatten(),
                w,
            )?),
            Op::MaxPool(w) => one(pool(input(0)?, w, true)?),
            Op::AveragePool(w) => one(pool(input(0)?, w, false)?),
            Op::GlobalAveragePool => {
                let x = input(0)?;
                if x.shape.len() < 3 {
                    return Err(format!("expects [N, C, …], got {:?}", x.shape));
                }
                let (n, c) = (x.shape[0], x.shape[1]);
                let area: usize = x.shape[2..].iter().product();
                let v = x.as_f32()?;
                let out = v
                    .chunks(area.max(1))
                    .take(n * c)
                    .map(|s| s.iter().sum::<f32>() / area.max(1) as f32)
                    .collect();
                let mut shape = vec![n, c];
                shape.extend(std::iter::repeat_n(1, x.shape.len() - 2));
                one(Value::floats(shape, out))
            }
            Op::BatchNormalization { epsilon } => {
                let x = input(0)?;
                let [scale, bias, mean, var] =
                    [1, 2, 3, 4].map(|i| input(i).and_then(Value::to_f32));
                let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
                if x.shape.len() < 2 {
                    return Err(format!("expects [N, C, …], got {:?}", x.shape));
                }
                let c = x.shape[1];
                if [scale.len(), bias.len(), mean.len(), var.len()]
                    .iter()
                    .any(|l| *l != c)
                {
                    return Err(format!("its parameters are not {c} long"));
                }
                let area: usize = x.shape[2..].iter().product();
                let mut v = x.to_f32()?;
                for (i, value) in v.iter_mut().enumerate() {
                    let ch = (i / area.max(1)) % c;
                    *value =
                        scale[ch] * (*value - mean[ch]) / (var[ch] + epsilon).sqrt() + bias[ch];
                }
                one(Value::floats(x.shape.clone(), v))
            }
            Op::Ml(op) => {
                let present: Vec<&Value> = inputs.iter().flatten().copied().collect();
                op.eval(&present)
            }
        }
    }
}

/// The error function, to within 1.5e-7 (Abramowitz and Stegun, 7.1.26).
fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    (if x < 0.0 { -y } else { y }) as f32
}

/// `[outer, n, inner]` around axis `a`.
fn split3(shape: &[usize], a: usize) -> (usize, usize, usize) {
    (
        shape[..a].iter().product(),
        shape[a],
        shape[a + 1..].iter().product(),
    )
}

fn map(x: &Value, f: impl Fn(f32) -> f32) -> OpResult<Value> {
    Ok(Value::floats(
        x.shape.clone(),
        x.to_f32()?.into_iter().map(f).collect(),
    ))
}

fn cast(x: &Value, to: super::tensor::Elem) -> OpResult<Value> {
    use super::tensor::Elem;
    let shape = x.shape.clone();
    Ok(match (to, &x.data) {
        (Elem::Float | Elem::Double, Data::Str(v)) => Value::floats(
            shape,
            v.iter()
                .map(|s| {
                    s.trim()
                        .parse::<f32>()
                        .map_err(|_| format!("cannot cast {s:?} to a number"))
                })
                .collect::<OpResult<_>>()?,
        ),
        (Elem::Float | Elem::Double, _) => x.clone().into_f32()?,
        (Elem::Bool, Data::F32(v)) => {
            Value::ints(shape, v.iter().map(|x| i64::from(*x != 0.0)).collect())
        }
        (Elem::Bool, Data::I64(v)) => {
            Value::ints(shape, v.iter().map(|x| i64::from(*x != 0)).collect())
        }
        (Elem::Int64 | Elem::Int32 | Elem::Bool, Data::Str(v)) => Value::ints(
            shape,
            v.iter()
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("cannot cast {s:?} to an integer"))
                })
                .collect::<OpResult<_>>()?,
        ),
        (Elem::Int64 | Elem::Int32, _) => Value::ints(shape, x.to_i64()?),
        (Elem::Str, Data::Str(_)) => x.clone(),
        (Elem::Str, Data::I64(v)) => Value::strings(shape, v.iter().map(i64::to_string).collect()),
        (Elem::Str, Data::F32(v)) => Value::strings(shape, v.iter().map(f32::to_string).collect()),
    })
}

fn binary(op: Binary, a: &Value, b: &Value) -> OpResult<Value> {
    if let (Data::I64(x), Data::I64(y)) = (&a.data, &b.data) {
        let f = |p: i64, q: i64| -> i64 {
            match op {
                Binary::Add => p.wrapping_add(q),
                Binary::Sub => p.wrapping_sub(q),
                Binary::Mul => p.wrapping_mul(q),
                Binary::Div => p.checked_div(q).unwrap_or(0),
                Binary::Pow => p.wrapping_pow(q.clamp(0, 63) as u32),
            }
        };
        let (shape, v) = broadcast_map(x, &a.shape, y, &b.shape, f)?;
        return Ok(Value::ints(shape, v));
    }
    let (x, y) = (a.to_f32()?, b.to_f32()?);
    let f = |p: f32, q: f32| match op {
        Binary::Add => p + q,
        Binary::Sub => p - q,
        Binary::Mul => p * q,
        Binary::Div => p / q,
        Binary::Pow => p.powf(q),
    };
    let (shape, v) = broadcast_map(&x, &a.shape, &y, &b.shape, f)?;
    Ok(Value::floats(shape, v))
}

fn softmax(x: &Value, ax: i64, flatten: bool, log: bool) -> OpResult<Value> {
    let a = axis(ax, x.shape.len())?;
    let mut v = x.to_f32()?;
    // Before opset 13 the input is read as a matrix split at the axis.
    let (outer, n, inner) = if flatten {
        (
            x.shape[..a].iter().product(),
            x.shape[a..].iter().product(),
            1,
        )
    } else {
        split3(&x.shape, a)
    };
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * n + k) * inner + i;
            let max = (0..n).map(|k| v[at(k)]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..n).map(|k| (v[at(k)] - max).exp()).sum();
            for k in 0..n {
                let z = v[at(k)] - max;
                v[at(k)] = if log { z - sum.ln() } else { z.exp() / sum };
            }
        }
    }
    Ok(Value::floats(x.shape.clone(), v))
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    a: &Value,
    b: &Value,
    c: Option<&Value>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
) -> OpResult<Value> {
    let (ar, ac) = a.matrix()?;
    let (br, bc) = b.matrix()?;
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(format!(
            "cannot multiply {:?} by {:?} (transA {ta}, transB {tb})",
            a.shape, b.shape
        ));
    }
    check_work("this matrix product", m as u128 * n as u128 * k as u128)?;
    let (x, w) = (a.to_f32()?, b.to_f32()?);
    let mut out = vec![0.0f32; elements(&[m, n])?];
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let av = if ta { x[p * ac + i] } else { x[i * ac + p] };
            if av == 0.0 {
                continue;
            }
            if tb {
                for (j, o) in row.iter_mut().enumerate() {
                    *o += av * w[j * bc + p];
                }
            } else {
                for (o, wv) in row.iter_mut().zip(&w[p * bc..(p + 1) * bc]) {
                    *o += av * wv;
                }
            }
        }
    }
    if alpha != 1.0 {
        out.iter_mut().for_each(|v| *v *= alpha);
    }
    let mut y = Value::floats(vec![m, n], out);
    if let Some(c) = c
        && beta != 0.0
    {
        let c = if beta == 1.0 {
            c.clone()
        } else {
            map(c, |v| v * beta)?
        };
        y = binary(Binary::Add, &y, &c)?;
        if y.shape != [m, n] {
            return Err(format!(
                "Gemm's C of shape {:?} does not broadcast to [{m}, {n}]",
                c.shape
            ));
        }
    }
    Ok(y)
}

/// numpy's `matmul` where the right side is a matrix or a vector (the shapes exported
/// networks use); both sides batched is refused.
fn matmul(a: &Value, b: &Value) -> OpResult<Value> {
    let (k, n, b_vector) = match b.shape.as_slice() {
        [k] => (*k, 1, true),
        [k, n] => (*k, *n, false),
        s => {
            return Err(format!(
                "MatMul by a tensor of shape {s:?} is not supported"
            ));
        }
    };
    let (lead, ka) = match a.shape.split_last() {
        Some((ka, lead)) => (lead.to_vec(), *ka),
        None => return Err("MatMul of a scalar".into()),
    };
    if ka != k {
        return Err(format!("cannot multiply {:?} by {:?}", a.shape, b.shape));
    }
    let rows: usize = lead.iter().product();
    let flat = Value::floats(vec![rows, k], a.to_f32()?);
    let w = Value::floats(vec![k, n], b.to_f32()?);
    let y = gemm(&flat, &w, None, 1.0, 0.0, false, false)?;
    let mut shape = lead;
    if !b_vector {
        shape.push(n);
    }
    y.reshaped(shape)
}

fn reshape(shape: &[usize], spec: &[i64], allowzero: bool, len: usize) -> OpResult<Vec<usize>> {
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, d) in spec.iter().enumerate() {
        out.push(match *d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 if !allowzero => *shape
                .get(i)
                .ok_or_else(|| format!("Reshape copies dimension {i} of shape {shape:?}"))?,
            d if d >= 0 => d as usize,
            _ => return Err(format!("Reshape to {spec:?} is not valid")),
        });
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !len.is_multiple_of(known) {
            return Err(format!("cannot reshape {shape:?} to {spec:?}"));
        }
        out[i] = len / known;
    }
    Ok(out)
}

fn concat(parts: &[&Value], ax: i64) -> OpResult<Value> {
    let first = parts.first().ok_or("Concat of nothing")?;
    let a = axis(ax, first.shape.len())?;
    let mut shape = first.shape.clone();
    shape[a] = 0;
    for p in parts {
        let same = p.shape.len() == first.shape.len()
            && p.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (x, y))| i == a || x == y);
        if !same {
            return Err(format!(
                "cannot concatenate {:?} and {:?} along axis {a}",
                first.shape, p.shape
            ));
        }
        shape[a] += p.shape[a];
    }
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    elements(&shape)?;
    macro_rules! join {
        ($variant:ident, $ty:ty) => {{
            let mut out: Vec<$ty> = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for p in parts {
                    let Data::$variant(v) = &p.data else {
                        return Err(format!("Concat of {} and {}", first.kind(), p.kind()));
                    };
                    let block = p.shape[a] * inner;
                    out.extend_from_slice(&v[o * block..(o + 1) * block]);
                }
            }
            Data::$variant(out)
        }};
    }
    let data = match &first.data {
        Data::F32(_) => join!(F32, f32),
        Data::I64(_) => join!(I64, i64),
        Data::Str(_) => join!(Str, String),
    };
    Ok(Value { shape, data })
}

fn transpose(x: &Value, perm: Option<&[usize]>) -> OpResult<Value> {
    let rank = x.shape.len();
    let perm: Vec<usize> = match perm {
        Some(p) => p.to_vec(),
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|p| *p >= rank || std::mem::replace(&mut seen[*p], true))
    {
        return Err(format!("perm {perm:?} does not permute rank {rank}"));
    }
    let shape: Vec<usize> = perm.iter().map(|p| x.shape[*p]).collect();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * x.shape[i + 1];
    }
    let n = x.len();
    let mut index = vec![0usize; rank];
    let mut from = Vec::with_capacity(n);
    for _ in 0..n {
        from.push(
            index
                .iter()
                .zip(&perm)
                .map(|(i, p)| i * strides[*p])
                .sum::<usize>(),
        );
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    let data = match &x.data {
        Data::F32(v) => Data::F32(from.iter().map(|i| v[*i]).collect()),
        Data::I64(v) => Data::I64(from.iter().map(|i| v[*i]).collect()),
        Data::Str(v) => Data::Str(from.iter().map(|i| v[*i].clone()).collect()),
    };
    Ok(Value { shape, data })
}

fn gather(x: &Value, indices: &Value, ax: i64) -> OpResult<Value> {
    let a = axis(ax, x.shape.len())?;
    let (outer, n, inner) = split3(&x.shape, a);
    let picks = indices
        .to_i64()?
        .iter()
        .map(|i| {
            let j = if *i < 0 { *i + n as i64 } else { *i };
            usize::try_from(j)
                .ok()
                .filter(|j| *j < n)
                .ok_or_else(|| format!("index {i} is out of range for {n}"))
        })
        .collect::<OpResult<Vec<usize>>>()?;
    let mut shape = x.shape[..a].to_vec();
    shape.extend(&indices.shape);
    shape.extend(&x.shape[a + 1..]);
    elements(&shape)?;
    let order = (0..outer).flat_map(|o| {
        picks
            .iter()
            .flat_map(move |p| (0..inner).map(move |i| (o * n + p) * inner + i))
    });
    let data = match &x.data {
        Data::F32(v) => Data::F32(order.map(|i| v[i]).collect()),
        Data::I64(v) => Data::I64(order.map(|i| v[i]).collect()),
        Data::Str(v) => Data::Str(order.map(|i| v[i].clone()).collect()),
    };
    Ok(Value { shape, data })
}

impl Window {
    fn parse(a: &Attrs, conv: bool) -> OpResult<Window> {
        let positive = |name: &str, v: Vec<i64>| -> OpResult<Vec<usize>> {
            v.into_iter()
                .map(|x| {
                    usize::try_from(x)
                        .ok()
                        .filter(|x| *x <= 1 << 16)
                        .ok_or_else(|| format!("{name} holds {x}"))
                })
                .collect()
        };
        let kernel = positive("kernel_shape", a.ints("kernel_shape"))?;
        if !conv && kernel.is_empty() {
            return Err("pooling needs kernel_shape".into());
        }
        let group = usize::try_from(a.int("group", 1))
            .ok()
            .filter(|g| *g >= 1)
            .ok_or("group must be positive")?;
        let auto_pad = a.string("auto_pad", "NOTSET");
        if !["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"].contains(&auto_pad.as_str()) {
            return Err(format!("auto_pad {auto_pad} is not valid"));
        }
        Ok(Window {
            kernel,
            strides: positive("strides", a.ints("strides"))?,
            dilations: positive("dilations", a.ints("dilations"))?,
            pads: positive("pads", a.ints("pads"))?,
            auto_pad,
            ceil: a.int("ceil_mode", 0) != 0,
            group,
            count_include_pad: a.int("count_include_pad", 0) != 0,
        })
    }

    /// Output size, begin pad and the per-axis geometry for input sizes `input`.
    fn geometry(&self, input: &[usize], kernel: &[usize]) -> OpResult<Vec<Axis>> {
        let d = input.len();
        let at = |v: &[usize], i: usize, default: usize| v.get(i).copied().unwrap_or(default);
        (0..d)
            .map(|i| {
                let (size, k) = (input[i], kernel[i]);
                let (stride, dilation) = (
                    at(&self.strides, i, 1).max(1),
                    at(&self.dilations, i, 1).max(1),
                );
                let span = dilation * (k.max(1) - 1) + 1;
                let (begin, end) = match self.auto_pad.as_str() {
                    "VALID" => (0, 0),
                    "SAME_UPPER" | "SAME_LOWER" => {
                        let out = size.div_ceil(stride);
                        let total = ((out - 1) * stride + span).saturating_sub(size);
                        if self.auto_pad == "SAME_UPPER" {
                            (total / 2, total - total / 2)
                        } else {
                            (total - total / 2, total / 2)
                        }
                    }
                    _ => (at(&self.pads, i, 0), at(&self.pads, i + d, 0)),
                };
                let padded = size + begin + end;
                if padded < span {
                    return Err(format!("a kernel of {k} does not fit an input of {size}"));
                }
                let out = if self.ceil {
                    (padded - span).div_ceil(stride) + 1
                } else {
                    (padded - span) / stride + 1
                };
                Ok(Axis {
                    size,
                    kernel: k,
                    stride,
                    dilation,
                    begin,
                    out,
                })
            })
            .collect()
    }
}

struct Axis {
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    begin: usize,
    out: usize,
}

impl Axis {
    /// The input position of output `o`'s kernel tap `k`, if inside the input.
    fn at(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(self.begin)
            .filter(|p| *p < self.size)
    }
}

/// Reads `[N, C, W]` or `[N, C, H, W]` as `(n, c, h, w)`.
fn image(shape: &[usize]) -> OpResult<(usize, usize, usize, usize)> {
    match shape {
        [n, c, w] => Ok((*n, *c, 1, *w)),
        [n, c, h, w] => Ok((*n, *c, *h, *w)),
        s => Err(format!("expects [N, C, W] or [N, C, H, W], got {s:?}")),
    }
}

fn out_shape(x: &[usize], c: usize, h: &Axis, w: &Axis) -> Vec<usize> {
    if x.len() == 3 {
        vec![x[0], c, w.out]
    } else {
        vec![x[0], c, h.out, w.out]
    }
}

/// The 2-D view of a 1-D or 2-D window's kernel and geometry.
fn axes(win: &Window, x: &[usize], kernel: &[usize]) -> OpResult<(Axis, Axis)> {
    let spatial = &x[2..];
    if kernel.len() != spatial.len() {
        return Err(format!(
            "a {}-D kernel for a {}-D input",
            kernel.len(),
            spatial.len()
        ));
    }
    let g = win.geometry(spatial, kernel)?;
    let mut g = g.into_iter();
    Ok(if spatial.len() == 1 {
        let w = g.next().ok_or("no axis")?;
        (
            Axis {
                size: 1,
                kernel: 1,
                stride: 1,
                dilation: 1,
                begin: 0,
                out: 1,
            },
            w,
        )
    } else {
        let h = g.next().ok_or("no axis")?;
        (h, g.next().ok_or("no axis")?)
    })
}

fn conv(x: &Value, weight: &Value, bias: Option<&Value>, win: &Window) -> OpResult<Value> {
    let (n, c, _, _) = image(&x.shape)?;
    if weight.shape.len() != x.shape.len() {
        return Err(format!(
            "weights of shape {:?} for an input of shape {:?}",
            weight.shape, x.shape
        ));
    }
    let (m, cg) = (weight.shape[0], weight.shape[1]);
    let g = win.group;
    if cg * g != c || m % g != 0 {
        return Err(format!(
            "{m} filters of {cg} channels in {g} groups for {c} channels"
        ));
    }
    let kernel = if win.kernel.is_empty() {
        weight.shape[2..].to_vec()
    } else {
        win.kernel.clone()
    };
    if kernel != weight.shape[2..] {
        return Err(format!(
            "kernel_shape {kernel:?} differs from the weights' {:?}",
            &weight.shape[2..]
        ));
    }
    let (h, w) = axes(win, &x.shape, &kernel)?;
    let (xs, ws) = (x.as_f32()?, weight.to_f32()?);
    let b = bias.map(Value::to_f32).transpose()?;
    if b.as_ref().is_some_and(|b| b.len() != m) {
        return Err(format!("a bias that is not {m} long"));
    }
    let shape = out_shape(&x.shape, m, &h, &w);
    let mut out = vec![0.0f32; elements(&shape)?];
    let (kh, kw) = (h.kernel, w.kernel);
    check_work(
        "this convolution",
        out.len() as u128 * cg as u128 * kh as u128 * kw as u128,
    )?;
    let per_group = m / g;
    for b0 in 0..n {
        for f in 0..m {
            let group = f / per_group;
            for oy in 0..h.out {
                for ox in 0..w.out {
                    let mut sum = b.as_ref().map_or(0.0, |b| b[f]);
                    for ci in 0..cg {
                        let ch = group * cg + ci;
                        for ky in 0..kh {
                            let Some(iy) = h.at(oy, ky) else { continue };
                            for kx in 0..kw {
                                let Some(ix) = w.at(ox, kx) else { continue };
                                sum += xs[((b0 * c + ch) * h.size + iy) * w.size + ix]
                                    * ws[((f * cg + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    out[((b0 * m + f) * h.out + oy) * w.out + ox] = sum;
                }
            }
        }
    }
    Ok(Value::floats(shape, out))
}

fn pool(x: &Value, win: &Window, max: bool) -> OpResult<Value> {
    let (n, c, _, _) = image(&x.shape)?;
    let (h, w) = axes(win, &x.shape, &win.kernel)?;
    let xs = x.as_f32()?;
    let shape = out_shape(&x.shape, c, &h, &w);
    let mut out = vec![0.0f32; elements(&shape)?];
    check_work(
        "this pooling",
        out.len() as u128 * h.kernel as u128 * w.kernel as u128,
    )?;
    for plane in 0..n * c {
        for oy in 0..h.out {
            for ox in 0..w.out {
                let (mut acc, mut count) = (if max { f32::NEG_INFINITY } else { 0.0 }, 0usize);
                for ky in 0..h.kernel {
                    for kx in 0..w.kernel {
                        match (h.at(oy, ky), w.at(ox, kx)) {
                            (Some(iy), Some(ix)) => {
                                let v = xs[(plane * h.size + iy) * w.size + ix];
                                acc = if max { acc.max(v) } else { acc + v };
                                count += 1;
                            }
                            _ if win.count_include_pad => count += 1,
                            _ => {}
                        }
                    }
                }
                out[(plane * h.out + oy) * w.out + ox] =
                    if max { acc } else { acc / count.max(1) as f32 };
            }
        }
    }
    Ok(Value::floats(shape, out))
}
