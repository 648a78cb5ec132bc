//! Filtering and ordering runs: `metrics.auc > 0.8 and params.lr = "0.01"`, `metrics.auc desc`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{MetricPoint, Registry, RegistryError, Run, RunStatus};

/// A run with what filters and ordering look at.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: Run,
    pub metrics: BTreeMap<String, MetricPoint>,
}

/// Which runs to list, and in what order (newest first without one).
#[derive(Debug, Clone, Default)]
pub struct RunSearch {
    pub experiment: Option<String>,
    pub status: Option<RunStatus>,
    /// Only the child runs of this run (a sweep's trials).
    pub parent: Option<u64>,
    pub filter: Option<Filter>,
    pub order: Option<OrderBy>,
}

impl Registry {
    /// Every run `search` selects, each with its latest metrics, in its order.
    pub fn search_runs(&self, search: &RunSearch) -> Result<Vec<RunView>, RegistryError> {
        let mut views = Vec::new();
        for run in self.runs(search.experiment.as_deref())? {
            if search.status.is_some_and(|s| s != run.status)
                || search.parent.is_some_and(|p| run.parent != Some(p))
            {
                continue;
            }
            let view = RunView {
                metrics: self.latest_metrics(run.id)?,
                run,
            };
            if search.filter.as_ref().is_none_or(|f| f.matches(&view)) {
                views.push(view);
            }
        }
        if let Some(o) = &search.order {
            o.sort(&mut views);
        }
        Ok(views)
    }
}

/// A run as JSON, with its id (and its parent's) as people type them.
pub fn run_json(run: &Run) -> serde_json::Value {
    let mut j = serde_json::json!(run);
    j["id"] = serde_json::json!(super::run_id_text(run.id));
    if let Some(p) = run.parent {
        j["parent"] = serde_json::json!(super::run_id_text(p));
    }
    j
}

/// The run [`run_json`] wrote.
pub fn run_from_json(mut j: serde_json::Value) -> Result<Run, RegistryError> {
    for key in ["id", "parent"] {
        if let Some(text) = j[key].as_str() {
            j[key] = serde_json::json!(super::parse_run_id(text)?);
        }
    }
    serde_json::from_value(j).map_err(|e| RegistryError::Invalid(format!("a run's JSON: {e}")))
}

/// Which part of a run a term reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Metric(String),
    Param(String),
    Tag(String),
    /// `status`, `name`, `start_ms`, `end_ms`, `id`.
    Attribute(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// SQL's `LIKE`: `%` any text, `_` one character.
    Like,
    /// `LIKE` without regard to case.
    ILike,
    /// `IN ('a', 'b')`.
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    List(Vec<Literal>),
}

/// `clause and clause and …`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub clauses: Vec<(Field, Op, Literal)>,
}

fn parse_field(s: &str) -> Result<Field, String> {
    let (kind, name) = s.split_once('.').ok_or_else(|| {
        format!("`{s}`: expected metrics.NAME, params.NAME, tags.NAME or attributes.NAME")
    })?;
    let name = name
        .trim_matches('`')
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name.trim_matches('`'))
        .to_string();
    match kind {
        "metrics" | "metric" => Ok(Field::Metric(name)),
        "params" | "param" | "parameters" => Ok(Field::Param(name)),
        "tags" | "tag" => Ok(Field::Tag(name)),
        "attributes" | "attribute" | "attr" | "run" => {
            // MLflow's names for them, beside kiln's.
            let known = match name.as_str() {
                "status" => "status",
                "name" | "run_name" => "name",
                "start_ms" | "start_time" => "start_ms",
                "end_ms" | "end_time" => "end_ms",
                "id" | "run_id" => "id",
                _ => {
                    return Err(format!(
                        "unknown attribute `{name}`; expected status, run_name, start_time, \
                         end_time or run_id"
                    ));
                }
            };
            Ok(Field::Attribute(known.to_string()))
        }
        _ => Err(format!(
            "`{kind}` is not metrics, params, tags or attributes"
        )),
    }
}

/// `%` any text, `_` one character; everything else itself.
fn like(text: &[char], pattern: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|i| like(&text[i..], rest)),
        Some(('_', rest)) => !text.is_empty() && like(&text[1..], rest),
        Some((c, rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

fn literal(v: &str) -> Literal {
    if (v.starts_with('\'') || v.starts_with('"')) && v.len() >= 2 {
        Literal::Text(v[1..v.len() - 1].to_string())
    } else if let Ok(n) = v.parse::<f64>() {
        Literal::Number(n)
    } else {
        Literal::Text(v.to_string())
    }
}

/// Splits a filter into tokens: words, quoted strings, operators; backticks quote names.
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("unclosed quote in `{s}`"))?;
            out.push(chars[i..i + end + 2].iter().collect());
            i += end + 2;
        } else if "(),".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else if "<>=!".contains(c) {
            let two = chars.get(i + 1) == Some(&'=');
            out.push(chars[i..i + if two { 2 } else { 1 }].iter().collect());
            i += if two { 2 } else { 1 };
        } else {
            let start = i;
            let mut in_tick = false;
            while i < chars.len() {
                let d = chars[i];
                if d == '`' || d == '"' {
                    in_tick = !in_tick;
                } else if !in_tick && (d.is_whitespace() || "<>=!(),".contains(d)) {
                    break;
                }
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        }
    }
    Ok(out)
}

impl Filter {
    /// Parses `FIELD OP VALUE [and FIELD OP VALUE]…`.
    pub fn parse(s: &str) -> Result<Filter, String> {
        let t = tokens(s)?;
        let mut clauses = Vec::new();
        let mut i = 0;
        while i < t.len() {
            if i > 0 {
                if !t[i].eq_ignore_ascii_case("and") {
                    return Err(format!(
                        "expected `and` before `{}` (only `and` joins clauses)",
                        t[i]
                    ));
                }
                i += 1;
            }
            let (Some(f), Some(op)) = (t.get(i), t.get(i + 1)) else {
                return Err(format!(
                    "incomplete clause in `{s}`; expected FIELD OP VALUE"
                ));
            };
            let field = parse_field(f)?;
            i += 2;
            let op = match op.to_ascii_uppercase().as_str() {
                "=" | "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                "LIKE" => Op::Like,
                "ILIKE" => Op::ILike,
                "IN" => Op::In,
                "NOT" if t.get(i).is_some_and(|w| w.eq_ignore_ascii_case("in")) => {
                    i += 1;
                    Op::NotIn
                }
                other => return Err(format!("unknown operator `{other}`")),
            };
            let mut value = if matches!(op, Op::In | Op::NotIn) {
                if t.get(i).map(String::as_str) != Some("(") {
                    return Err(format!("`IN` takes a list: IN ('a', 'b') in `{s}`"));
                }
                i += 1;
                let mut items = Vec::new();
                loop {
                    match t.get(i).map(String::as_str) {
                        Some(")") => break,
                        Some(",") => {}
                        Some(v) => items.push(literal(v)),
                        None => return Err(format!("unclosed `(` in `{s}`")),
                    }
                    i += 1;
                }
                i += 1;
                Literal::List(items)
            } else {
                let v = t.get(i).ok_or_else(|| {
                    format!("incomplete clause in `{s}`; expected FIELD OP VALUE")
                })?;
                i += 1;
                literal(v)
            };
            // MLflow writes statuses in capitals; kiln's are lower case.
            if field == Field::Attribute("status".into()) {
                value = match value {
                    Literal::Text(t) => Literal::Text(t.to_ascii_lowercase()),
                    Literal::List(l) => Literal::List(
                        l.into_iter()
                            .map(|v| match v {
                                Literal::Text(t) => Literal::Text(t.to_ascii_lowercase()),
                                other => other,
                            })
                            .collect(),
                    ),
                    other => other,
                };
            }
            clauses.push((field, op, value));
        }
        Ok(Filter { clauses })
    }

    /// Whether a run satisfies every clause (a missing field satisfies none).
    pub fn matches(&self, view: &RunView) -> bool {
        self.clauses
            .iter()
            .all(|(field, op, lit)| match value_of(view, field) {
                Some(v) => holds(&v, *op, lit),
                None => false,
            })
    }
}

/// `FIELD [asc|desc]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub field: Field,
    pub descending: bool,
}

impl OrderBy {
    pub fn parse(s: &str) -> Result<OrderBy, String> {
        let mut parts = s.split_whitespace();
        let field = parse_field(parts.next().ok_or("empty --order-by")?)?;
        // Ascending unless asked, as MLflow's `order_by` is.
        let descending = match parts.next().map(str::to_ascii_lowercase).as_deref() {
            Some("desc") => true,
            None | Some("asc") => false,
            Some(other) => return Err(format!("expected asc or desc, found `{other}`")),
        };
        Ok(OrderBy { field, descending })
    }

    /// Sorts runs; those without the field go last.
    pub fn sort(&self, runs: &mut [RunView]) {
        runs.sort_by(|a, b| {
            let (va, vb) = (value_of(a, &self.field), value_of(b, &self.field));
            match (va, vb) {
                (Some(x), Some(y)) => {
                    let o = compare(&x, &y).unwrap_or(Ordering::Equal);
                    if self.descending { o.reverse() } else { o }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        });
    }
}

fn value_of(view: &RunView, field: &Field) -> Option<Literal> {
    let text_or_number = |s: &String| match s.parse::<f64>() {
        Ok(n) => Literal::Number(n),
        Err(_) => Literal::Text(s.clone()),
    };
    match field {
        Field::Metric(k) => view.metrics.get(k).map(|p| Literal::Number(p.value)),
        Field::Param(k) => view.run.params.get(k).map(text_or_number),
        Field::Tag(k) => view.run.tags.get(k).map(text_or_number),
        Field::Attribute(a) => match a.as_str() {
            "status" => Some(Literal::Text(view.run.status.as_str().to_string())),
            "name" => Some(Literal::Text(view.run.name.clone())),
            "start_ms" => Some(Literal::Number(view.run.start_ms as f64)),
            "end_ms" => view.run.end_ms.map(|t| Literal::Number(t as f64)),
            "id" => Some(Literal::Text(super::run_id_text(view.run.id))),
            _ => None,
        },
    }
}

/// Whether `value OP literal` holds.
fn holds(value: &Literal, op: Op, lit: &Literal) -> bool {
    let text = |l: &Literal| match l {
        Literal::Number(n) => n.to_string(),
        Literal::Text(t) => t.clone(),
        Literal::List(_) => String::new(),
    };
    match (op, lit) {
        (Op::In | Op::NotIn, Literal::List(items)) => {
            let found = items
                .iter()
                .any(|i| compare(value, i) == Some(Ordering::Equal));
            found == (op == Op::In)
        }
        (Op::Like, _) => like(
            &text(value).chars().collect::<Vec<_>>(),
            &text(lit).chars().collect::<Vec<_>>(),
        ),
        (Op::ILike, _) => like(
            &text(value).to_lowercase().chars().collect::<Vec<_>>(),
            &text(lit).to_lowercase().chars().collect::<Vec<_>>(),
        ),
        (_, Literal::List(_)) | (Op::In | Op::NotIn, _) => false,
        _ => compare(value, lit).is_some_and(|o| match op {
            Op::Eq => o == Ordering::Equal,
            Op::Ne => o != Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
            _ => false,
        }),
    }
}

fn compare(a: &Literal, b: &Literal) -> Option<Ordering> {
    match (a, b) {
        (Literal::Number(x), Literal::Number(y)) => x.partial_cmp(y),
        (Literal::Text(x), Literal::Text(y)) => Some(x.cmp(y)),
        (Literal::Number(x), Literal::Text(y)) => Some(x.to_string().cmp(y)),
        (Literal::Text(x), Literal::Number(y)) => Some(x.cmp(&y.to_string())),
        (Literal::List(_), _) | (_, Literal::List(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RunStatus;

    fn view(auc: f64, lr: &str) -> RunView {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "auc".to_string(),
            MetricPoint {
                step: 1,
                timestamp_ms: 0,
                value: auc,
            },
        );
        let mut params = BTreeMap::new();
        params.insert("lr".to_string(), lr.to_string());
        RunView {
            run: Run {
                id: 1,
                experiment_id: 1,
                name: "r".into(),
                status: RunStatus::Finished,
                start_ms: 0,
                end_ms: None,
                params,
                tags: BTreeMap::new(),
                parent: None,
                lineage: Default::default(),
                artifacts: vec![],
            },
            metrics,
        }
    }

    #[test]
    fn filters() {
        let f = Filter::parse(
            "metrics.auc > 0.8 and params.lr = '0.01' and attributes.status = finished",
        )
        .unwrap();
        assert!(f.matches(&view(0.9, "0.01")));
        assert!(!f.matches(&view(0.7, "0.01")));
        assert!(!f.matches(&view(0.9, "0.1")));
        assert!(Filter::parse("metrics.auc >").is_err());
        assert!(Filter::parse("metrics.auc > 1 or metrics.auc < 0").is_err());
        let f = Filter::parse("metrics.`val auc`>=0.5").unwrap();
        assert_eq!(f.clauses[0].0, Field::Metric("val auc".into()));
    }

    #[test]
    fn filters_as_mlflow_writes_them() {
        let run = view(0.9, "0.01");
        let holds = |f: &str| Filter::parse(f).unwrap().matches(&run);
        assert!(holds("attributes.status = 'FINISHED'"));
        assert!(holds(
            "attributes.run_name = 'r' and params.\"lr\" = '0.01'"
        ));
        assert!(holds("params.lr LIKE '0.0%'") && !holds("params.lr LIKE '0.1%'"));
        assert!(holds("attributes.run_name ILIKE 'R'"));
        assert!(holds("params.lr IN ('0.1', '0.01')") && !holds("params.lr NOT IN ('0.01')"));
        assert!(holds("attributes.status IN ('FINISHED', 'FAILED')"));
        assert!(holds(
            "attributes.start_time >= 0 and attributes.run_id = '00000001'"
        ));
        assert!(holds("metrics.auc > 0.5 AND params.lr != '1'"));
        assert!(Filter::parse("params.lr IN '0.1'").is_err());
        assert!(Filter::parse("params.lr IN ('0.1'").is_err());
        assert!(Filter::parse("attributes.user = 'x'").is_err());
    }

    #[test]
    fn order() {
        let mut v = vec![view(0.7, "a"), view(0.9, "b"), view(0.8, "c")];
        OrderBy::parse("metrics.auc DESC").unwrap().sort(&mut v);
        let order: Vec<f64> = v.iter().map(|x| x.metrics["auc"].value).collect();
        assert_eq!(order, [0.9, 0.8, 0.7]);
        OrderBy::parse("metrics.auc").unwrap().sort(&mut v);
        let order: Vec<f64> = v.iter().map(|x| x.metrics["auc"].value).collect();
        assert_eq!(order, [0.7, 0.8, 0.9]);
    }
}
