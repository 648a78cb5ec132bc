//! An imported graph as a kiln model: which request columns fill each graph input, and how the
//! chosen output becomes kiln's answer (class probabilities, or one value per row).

use kiln_core::bundle::{GraphInput, GraphType, Scores};

use super::ml::Post;
use super::tensor::{Data, OpResult, Value};
use super::{Elem, Graph};

/// How one graph input is filled from a row's numbers or texts.
#[derive(Debug, Clone)]
struct Feed {
    elem: GraphType,
    /// One row's shape.
    shape: Vec<usize>,
    /// Per element of a row: its index among the row's numbers (or texts, for strings).
    sources: Vec<usize>,
}

/// An imported graph ready to answer rows.
#[derive(Debug, Clone)]
pub struct Imported {
    graph: Graph,
    feeds: Vec<Feed>,
    /// Numbers and texts per row in the features handed to [`Imported::run`].
    numbers: usize,
    texts: usize,
    output: usize,
    scores: Scores,
    /// Numbers per row of the answer: classes (2 for binary), or 1.
    width: usize,
    /// The graph takes one row at a time (its batch dimension is fixed at 1).
    one_row: bool,
}

impl Imported {
    /// Binds a graph to the bundle's description of it. `numbers` and `texts` name, in order,
    /// the columns a row's numbers and texts come in.
    pub fn new(
        graph: Graph,
        inputs: &[GraphInput],
        numbers: &[String],
        texts: &[String],
        output: &str,
        scores: Scores,
        width: usize,
    ) -> OpResult<Imported> {
        if inputs.len() != graph.inputs().len() {
            return Err(format!(
                "the bundle describes {} graph inputs; the graph has {}",
                inputs.len(),
                graph.inputs().len()
            ));
        }
        let mut feeds = Vec::with_capacity(inputs.len());
        let mut one_row = false;
        for (port, input) in graph.inputs().iter().zip(inputs) {
            if port.name != input.name {
                return Err(format!(
                    "the bundle names graph input `{}` where the graph has `{}`",
                    input.name, port.name
                ));
            }
            let string = input.elem == GraphType::String;
            if string != (port.elem == Elem::Str) {
                return Err(format!("graph input `{}` changed its type", port.name));
            }
            let pool = if string { texts } else { numbers };
            let sources = input
                .columns
                .iter()
                .map(|c| {
                    pool.iter().position(|n| n == c).ok_or_else(|| {
                        format!(
                            "graph input `{}` reads `{c}`, which no request column gives",
                            port.name
                        )
                    })
                })
                .collect::<OpResult<Vec<_>>>()?;
            if sources.len() != input.shape.iter().product::<usize>() {
                return Err(format!(
                    "graph input `{}` has shape {:?} per row but {} columns",
                    port.name,
                    input.shape,
                    sources.len()
                ));
            }
            one_row |=
                port.dims.first() == Some(&Some(1)) && port.dims.len() == input.shape.len() + 1;
            feeds.push(Feed {
                elem: input.elem,
                shape: input.shape.clone(),
                sources,
            });
        }
        let output = graph
            .outputs()
            .iter()
            .position(|o| o.name == output)
            .ok_or_else(|| format!("the graph has no output `{output}`"))?;
        Ok(Imported {
            graph,
            feeds,
            numbers: numbers.len(),
            texts: texts.len(),
            output,
            scores,
            width,
            one_row,
        })
    }

    /// Answers `rows` rows given as row-major numbers (NaN when missing) and texts: `width`
    /// numbers per row.
    pub fn run(&self, rows: usize, numbers: &[f32], texts: &[String]) -> OpResult<Vec<f32>> {
        let (k, values) = self.raw(rows, numbers, texts)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let name = &self.graph.outputs()[self.output].name;
        finish(values, k, self.width, self.scores).map_err(|e| format!("output `{name}`: {e}"))
    }

    /// The chosen output as the graph gives it: its values per row and the values.
    pub fn raw(
        &self,
        rows: usize,
        numbers: &[f32],
        texts: &[String],
    ) -> OpResult<(usize, Vec<f32>)> {
        if numbers.len() != rows * self.numbers || texts.len() != rows * self.texts {
            return Err(format!(
                "{rows} rows need {} numbers and {} texts, got {} and {}",
                rows * self.numbers,
                rows * self.texts,
                numbers.len(),
                texts.len()
            ));
        }
        if self.one_row && rows > 1 {
            let (mut k, mut out) = (0, Vec::new());
            for r in 0..rows {
                let (width, values) = self.raw(
                    1,
                    &numbers[r * self.numbers..(r + 1) * self.numbers],
                    &texts[r * self.texts..(r + 1) * self.texts],
                )?;
                k = width;
                out.extend(values);
            }
            return Ok((k, out));
        }
        let feeds = self
            .feeds
            .iter()
            .map(|f| self.feed(f, rows, numbers, texts))
            .collect::<OpResult<Vec<_>>>()?;
        let mut outputs = self.graph.run(feeds)?;
        let answer = outputs.swap_remove(self.output);
        let name = &self.graph.outputs()[self.output].name;
        let values = match answer.data {
            Data::F32(v) => v,
            Data::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            Data::Str(_) => return Err(format!("output `{name}` holds strings, not numbers")),
        };
        let k = values.len().checked_div(rows).unwrap_or(0);
        if k * rows != values.len() {
            return Err(format!(
                "output `{name}` has {} values for {rows} rows",
                values.len()
            ));
        }
        Ok((k, values))
    }

    fn feed(&self, f: &Feed, rows: usize, numbers: &[f32], texts: &[String]) -> OpResult<Value> {
        let mut shape = vec![rows];
        shape.extend(&f.shape);
        if f.elem == GraphType::String {
            let t = self.texts;
            let data = (0..rows)
                .flat_map(|r| f.sources.iter().map(move |s| texts[r * t + s].clone()))
                .collect();
            return Ok(Value::strings(shape, data));
        }
        let n = self.numbers;
        let data: Vec<f32> = (0..rows)
            .flat_map(|r| f.sources.iter().map(move |s| numbers[r * n + s]))
            .collect();
        match f.elem {
            GraphType::Float | GraphType::Double => Ok(Value::floats(shape, data)),
            _ => {
                if data.iter().any(|v| v.is_nan()) {
                    return Err("a missing value for an integer input of the graph".into());
                }
                Ok(Value::ints(
                    shape,
                    data.into_iter().map(|v| v as i64).collect(),
                ))
            }
        }
    }
}

/// `k` numbers per row of the chosen output → `width` numbers per row of kiln's answer.
fn finish(values: Vec<f32>, k: usize, width: usize, scores: Scores) -> OpResult<Vec<f32>> {
    match scores {
        Scores::Values => {
            if k != width {
                return Err(format!("{k} values per row, expected {width}"));
            }
            Ok(values)
        }
        Scores::Probabilities | Scores::Logits if k == 1 && width == 2 => Ok(values
            .into_iter()
            .flat_map(|z| {
                let p = if scores == Scores::Logits {
                    1.0 / (1.0 + (-z).exp())
                } else {
                    z
                };
                [1.0 - p, p]
            })
            .collect()),
        Scores::Probabilities | Scores::Logits => {
            if k != width {
                return Err(format!("{k} scores per row for {width} classes"));
            }
            let mut out = values;
            if scores == Scores::Logits {
                out.chunks_mut(k.max(1))
                    .for_each(|row| Post::Softmax.apply(row));
            }
            Ok(out)
        }
    }
}
