//! Pipeline files: TOML with a name, parameters, an optional cron schedule and steps.
//!
//! **Parsing never fails**: [`parse`] returns the pipeline (when the file has its shape) and
//! every diagnostic at once, each with its line: a step that needs an unknown step, a cycle with
//! its path, an unknown component or argument, a template naming an unknown parameter or step,
//! a bad cron expression or duration.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// How bad a diagnostic is: errors stop a run, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a pipeline file, at a line (1-based) and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

/// What runs when a schedule's fires were missed while kiln was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Nothing; wait for the next fire.
    #[default]
    Skip,
    /// One run for the most recent missed fire.
    Latest,
    /// One run per missed fire.
    All,
}

/// What happens when a fire comes while the previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub cron: String,
    pub catchup: Catchup,
    pub overlap: Overlap,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A built-in component with its arguments.
    Uses {
        component: String,
        with: BTreeMap<String, toml::Value>,
    },
    /// Any command, run by the shell.
    Run { command: String },
}

impl Action {
    /// The `device` argument of a component, as written.
    pub fn device(&self) -> Option<&str> {
        match self {
            Action::Uses { with, .. } => with.get("device").and_then(toml::Value::as_str),
            Action::Run { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub id: String,
    pub needs: Vec<String>,
    pub action: Action,
    pub retries: u32,
    #[serde(with = "humantime_serde_opt")]
    pub timeout: Option<Duration>,
    /// A condition on earlier steps' outputs; the step is skipped when it is false.
    pub condition: Option<String>,
    /// Whether an earlier execution with the same definition and inputs may stand in for this
    /// one (`cache = false` for steps that read what kiln cannot see, such as the network).
    pub cache: bool,
    /// Whether the step holds the GPU while it runs, so that no other such step runs beside
    /// it: `gpu = true` (a command that trains on the GPU, a sweep whose trials do), or a
    /// component whose `device` argument is `gpu` (as written, or once parameters are filled in).
    pub gpu: bool,
    /// The line of the step's `id`.
    pub line: usize,
    /// Run once per item (`for_each`), each item a step of its own, `ID[ITEM]`.
    pub for_each: Option<ForEach>,
}

impl Step {
    /// The steps whose outputs or values this one reads: its needs, and every step its command,
    /// arguments or condition name in `${steps.ID.…}`.
    pub fn reads(&self) -> BTreeSet<String> {
        let mut texts: Vec<String> = self.condition.iter().cloned().collect();
        match &self.action {
            Action::Run { command } => texts.push(command.clone()),
            Action::Uses { with, .. } => {
                texts.extend(with.values().flat_map(strings_in));
            }
        }
        self.needs
            .iter()
            .cloned()
            .chain(texts.iter().flat_map(|t| step_refs(t)))
            .collect()
    }

    /// [`Step::reads`], each `for_each` step there as its items (`fanned`, from [`expand`]).
    pub fn reads_items(&self, fanned: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
        let mut reads = BTreeSet::new();
        for id in self.reads() {
            match fanned.get(&id) {
                Some(items) => reads.extend(items.iter().cloned()),
                None => {
                    reads.insert(id);
                }
            }
        }
        reads
    }
}

/// The step ids a text names in `${steps.ID.…}`.
pub fn step_refs(text: &str) -> Vec<String> {
    text.split("${steps.")
        .skip(1)
        .filter_map(|rest| rest.split(['.', '}']).next())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Every string in a `with` value: strings, the strings in lists, a table's keys and strings.
pub fn strings_in(v: &toml::Value) -> Vec<String> {
    match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(a) => a.iter().flat_map(strings_in).collect(),
        toml::Value::Table(t) => t
            .iter()
            .flat_map(|(k, x)| {
                let mut out = vec![k.clone()];
                out.extend(strings_in(x));
                out
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What a step is run for each of.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForEach {
    /// The items of a list parameter (`for_each = "${params.markets}"`).
    Param(String),
    /// Items written out (`for_each = ["us", "eu"]`).
    Items(Vec<String>),
    /// The items of an earlier step's list value (`for_each = "${steps.discover.markets}"`:
    /// a JSON list, or items separated by commas), known once that step has run.
    Step { step: String, value: String },
}

/// Whether `item` may be a `for_each` item: it becomes part of a step id and goes into commands
/// as written, so only letters, digits, `.`, `-` and `_`, at most 64 of them.
pub fn is_item(item: &str) -> bool {
    !item.is_empty()
        && item.len() <= 64
        && item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

mod humantime_serde_opt {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub name: String,
    /// Each parameter's default.
    pub params: BTreeMap<String, toml::Value>,
    /// Each parameter's type: declared (`rows = { type = "integer", default = 100 }`) or its
    /// default's. A run's values are checked against it before the run is recorded.
    pub param_types: BTreeMap<String, ParamType>,
    pub schedule: Option<Schedule>,
    /// Steps of one run running at once (`parallel = N`; the executor's default otherwise).
    pub parallel: Option<usize>,
    /// Where a JSON summary of every finished run is posted (`notify = "https://…"`).
    pub notify: Option<String>,
    pub steps: Vec<Step>,
    /// Steps that run only when a run fails (`[[on_failure]]`), after the others have ended,
    /// with the failed step's id, error and log in their environment. Never cached.
    pub on_failure: Vec<Step>,
}

/// A parsed file: the pipeline when the file has a pipeline's shape, and every diagnostic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    pub pipeline: Option<Pipeline>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// One argument a component takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Arg {
    pub name: &'static str,
    pub required: bool,
    /// It names a file or directory (relative to the pipeline file's directory), which must
    /// exist unless a template fills it in.
    pub path: bool,
}

impl Arg {
    pub const fn required(name: &'static str) -> Arg {
        Arg {
            name,
            required: true,
            path: false,
        }
    }

    pub const fn optional(name: &'static str) -> Arg {
        Arg {
            name,
            required: false,
            path: false,
        }
    }

    /// The same argument, naming a file or directory.
    pub const fn path(self) -> Arg {
        Arg { path: true, ..self }
    }
}

/// What a component is, as its implementation declares it: its name, the arguments it takes
/// and the values it reports. The parser checks `uses` steps against these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ComponentSpec {
    pub name: &'static str,
    pub args: &'static [Arg],
    /// The values it reports; a name ending in `*` stands for every name with that prefix.
    pub outputs: &'static [&'static str],
}

impl ComponentSpec {
    /// Whether the component reports a value `name`.
    pub fn reports(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| match o.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => *o == name,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Spanned<String>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    schedule: Option<Spanned<RawSchedule>>,
    #[serde(default)]
    parallel: Option<Spanned<i64>>,
    #[serde(default)]
    notify: Option<Spanned<String>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
    #[serde(default)]
    on_failure: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Spanned<String>,
    #[serde(default)]
    catchup: Catchup,
    #[serde(default)]
    overlap: Overlap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    #[serde(default)]
    needs: Vec<Spanned<String>>,
    #[serde(default)]
    uses: Option<Spanned<String>>,
    #[serde(default)]
    with: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    run: Option<Spanned<String>>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default, rename = "if")]
    condition: Option<Spanned<String>>,
    #[serde(default = "yes")]
    cache: bool,
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    for_each: Option<Spanned<toml::Value>>,
}

fn yes() -> bool {
    true
}

/// Where a byte offset is, as (line, column), both 1-based.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (line, column)
}

struct Findings<'a> {
    text: &'a str,
    out: Vec<Diagnostic>,
}

impl Findings<'_> {
    fn error(&mut self, offset: usize, message: String) {
        self.push(offset, Severity::Error, message);
    }
    fn warning(&mut self, offset: usize, message: String) {
        self.push(offset, Severity::Warning, message);
    }
    fn push(&mut self, offset: usize, severity: Severity, message: String) {
        let (line, column) = position(self.text, offset);
        self.out.push(Diagnostic {
            line,
            column,
            severity,
            message,
        });
    }
}

/// Parses a pipeline file's text whose `run` steps are all it has (no component is known).
pub fn parse(text: &str) -> Parsed {
    parse_with(text, &[])
}

/// Parses a pipeline file's text, checking `uses` steps against `catalogue`.
pub fn parse_with(text: &str, catalogue: &[ComponentSpec]) -> Parsed {
    let mut f = Findings {
        text,
        out: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().to_string();
            f.error(offset, message);
            return Parsed {
                pipeline: None,
                diagnostics: f.out,
            };
        }
    };
    let name = raw.name.get_ref().clone();
    if !is_name(&name) {
        f.error(
            raw.name.span().start,
            format!("the pipeline's name {name:?} must be letters, digits, `-` and `_` (it names directories)"),
        );
    }
    let (params, param_types) = typed_params(&mut f, &raw.params);
    let schedule = raw.schedule.map(|s| {
        let s = s.into_inner();
        if let Err(e) = s.cron.get_ref().parse::<croner::Cron>() {
            f.error(
                s.cron.span().start,
                format!(
                    "cron expression {:?}: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\")",
                    s.cron.get_ref()
                ),
            );
        }
        Schedule {
            cron: s.cron.into_inner(),
            catchup: s.catchup,
            overlap: s.overlap,
        }
    });
    let parallel = raw
        .parallel
        .and_then(|n| match usize::try_from(*n.get_ref()) {
            Ok(p @ 1..=256) => Some(p),
            _ => {
                f.error(
                    n.span().start,
                    format!(
                        "parallel = {}: give how many steps may run at once, 1 to 256",
                        n.get_ref()
                    ),
                );
                None
            }
        });
    if raw.steps.is_empty() {
        f.error(0, "the pipeline has no steps; add [[steps]] tables".into());
    }
    let mut seen = BTreeSet::new();
    let steps = parse_steps(&mut f, &raw.steps, catalogue, &params, &mut seen, "");
    let mut on_failure = parse_steps(
        &mut f,
        &raw.on_failure,
        catalogue,
        &params,
        &mut seen,
        " (an on_failure step: it may need other on_failure steps only)",
    );
    for step in &mut on_failure {
        step.cache = false;
    }
    let notify = raw.notify.and_then(|url| {
        let text = url.get_ref().trim();
        if text.starts_with("http://") || text.starts_with("https://") {
            Some(text.to_string())
        } else {
            f.error(
                url.span().start,
                format!("notify = {text:?}: give an http:// or https:// URL to post each finished run's summary to"),
            );
            None
        }
    });
    f.out.sort_by_key(|d| (d.line, d.column));
    Parsed {
        pipeline: Some(Pipeline {
            name,
            params,
            param_types,
            schedule,
            parallel,
            notify,
            steps,
            on_failure,
        }),
        diagnostics: f.out,
    }
}

/// The steps of one list (`[[steps]]` or `[[on_failure]]`), each checked; `seen` holds the ids
/// of every list, which share one namespace, and `what` follows a message about unknown needs.
fn parse_steps(
    f: &mut Findings<'_>,
    raw: &[Spanned<RawStep>],
    catalogue: &[ComponentSpec],
    params: &BTreeMap<String, toml::Value>,
    seen: &mut BTreeSet<String>,
    what: &str,
) -> Vec<Step> {
    let ids: Vec<String> = raw
        .iter()
        .map(|s| s.get_ref().id.get_ref().clone())
        .collect();
    let needs_of: BTreeMap<&str, Vec<&str>> = raw
        .iter()
        .map(|s| {
            let s = s.get_ref();
            (
                s.id.get_ref().as_str(),
                s.needs.iter().map(|n| n.get_ref().as_str()).collect(),
            )
        })
        .collect();
    // Which component each `uses` step runs, for the values it reports.
    let component_of: BTreeMap<&str, &ComponentSpec> = raw
        .iter()
        .filter_map(|s| {
            let s = s.get_ref();
            let uses = s.uses.as_ref()?;
            let spec = catalogue.iter().find(|c| c.name == uses.get_ref())?;
            Some((s.id.get_ref().as_str(), spec))
        })
        .collect();
    let mut steps = Vec::new();
    for spanned in raw {
        let s = spanned.get_ref();
        let id = s.id.get_ref().clone();
        if !seen.insert(id.clone()) {
            f.error(s.id.span().start, format!("step id `{id}` is used twice"));
        }
        if !is_name(&id) {
            f.error(
                s.id.span().start,
                format!("step id {id:?} must be letters, digits, `-` and `_`"),
            );
        }
        for need in &s.needs {
            if !ids.contains(need.get_ref()) {
                let hint = kiln_core::suggest::hint(need.get_ref(), ids.iter().map(String::as_str));
                f.error(
                    need.span().start,
                    format!(
                        "step `{id}` needs unknown step `{}`{hint}{what}",
                        need.get_ref()
                    ),
                );
            } else if need.get_ref() == &id {
                f.error(need.span().start, format!("step `{id}` needs itself"));
            }
        }
        let action = match (&s.uses, &s.run) {
            (Some(uses), None) => {
                check_component(f, catalogue, &id, uses, &s.with);
                Action::Uses {
                    component: uses.get_ref().clone(),
                    with: s
                        .with
                        .iter()
                        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                        .collect(),
                }
            }
            (None, Some(run)) => {
                if let Some((k, v)) = s.with.iter().next() {
                    f.error(
                        v.span().start,
                        format!("step `{id}` runs a command; `with.{k}` is for `uses` steps (pass values through the command line or ${{params.…}})"),
                    );
                }
                if run.get_ref().trim().is_empty() {
                    f.error(run.span().start, format!("step `{id}` has an empty `run`"));
                }
                Action::Run {
                    command: run.get_ref().clone(),
                }
            }
            (Some(uses), Some(_)) => {
                f.error(
                    uses.span().start,
                    format!("step `{id}` has both `uses` and `run`; give one"),
                );
                Action::Run {
                    command: String::new(),
                }
            }
            (None, None) => {
                f.error(
                    s.id.span().start,
                    format!("step `{id}` has neither `uses` (a component) nor `run` (a command)"),
                );
                Action::Run {
                    command: String::new(),
                }
            }
        };
        let timeout = s.timeout.as_ref().and_then(|t| {
            humantime::parse_duration(t.get_ref())
                .map_err(|e| {
                    f.error(
                        t.span().start,
                        format!(
                            "step `{id}`: timeout {:?}: {e} (e.g. \"10m\", \"90s\")",
                            t.get_ref()
                        ),
                    );
                })
                .ok()
        });
        if s.retries > 20 {
            f.warning(
                spanned.span().start,
                format!(
                    "step `{id}` retries {} times; with exponential backoff that can take days",
                    s.retries
                ),
            );
        }
        // Templates in arguments, commands and conditions.
        let mut texts: Vec<(usize, String)> = s
            .with
            .values()
            .flat_map(|v| {
                strings(v.get_ref())
                    .into_iter()
                    .map(move |t| (v.span().start, t))
            })
            .collect();
        if let Some(run) = &s.run {
            texts.push((run.span().start, run.get_ref().clone()));
        }
        if let Some(c) = &s.condition {
            texts.push((c.span().start, c.get_ref().clone()));
        }
        let for_each = s.for_each.as_ref().and_then(|v| {
            let at = v.span().start;
            match v.get_ref() {
                toml::Value::String(t)
                    if t.trim().starts_with("${steps.") && t.trim().ends_with('}') =>
                {
                    let inner = &t.trim()["${steps.".len()..t.trim().len() - 1];
                    match inner.split_once('.') {
                        Some((source, value))
                            if !value.is_empty()
                                && s.needs.iter().any(|n| n.get_ref() == source) =>
                        {
                            Some(ForEach::Step {
                                step: source.to_string(),
                                value: value.to_string(),
                            })
                        }
                        _ => {
                            f.error(at, format!("step `{id}`: for_each = {t:?}: an earlier step's value must be `${{steps.ID.NAME}}` of a step it needs"));
                            None
                        }
                    }
                }
                toml::Value::String(t) => {
                    let name = t
                        .trim()
                        .strip_prefix("${params.")
                        .and_then(|r| r.strip_suffix('}'));
                    match name {
                        Some(n) if params.get(n).is_some_and(toml::Value::is_array) => {
                            Some(ForEach::Param(n.to_string()))
                        }
                        Some(n) if params.contains_key(n) => {
                            f.error(at, format!("step `{id}`: for_each names parameter `{n}`, which is not a list (give it a default such as [\"us\", \"eu\"])"));
                            None
                        }
                        _ => {
                            f.error(at, format!("step `{id}`: for_each = {t:?}: give a list parameter, \"${{params.NAME}}\", or the items, [\"us\", \"eu\"]"));
                            None
                        }
                    }
                }
                toml::Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(value_text).collect();
                    match items.iter().find(|i| !is_item(i)) {
                        Some(bad) => {
                            f.error(at, format!("step `{id}`: for_each item {bad:?} must be letters, digits, `.`, `-` and `_` (it names a step)"));
                            None
                        }
                        None if items.is_empty() => {
                            f.error(at, format!("step `{id}`: for_each lists no items"));
                            None
                        }
                        None => Some(ForEach::Items(items)),
                    }
                }
                other => {
                    f.error(at, format!("step `{id}`: for_each = {other}: give a list parameter or the items"));
                    None
                }
            }
        });
        let is_ancestor = |step: &str| reaches(&needs_of, &id, step);
        let refs = Refs {
            params,
            ids: &ids,
            is_ancestor: &is_ancestor,
            component_of: &component_of,
            item: s.for_each.is_some(),
        };
        for (offset, t) in texts {
            check_templates(f, offset, &id, &t, &refs);
        }
        let gpu = s.gpu
            || action
                .device()
                .is_some_and(|d| d.eq_ignore_ascii_case("gpu"));
        steps.push(Step {
            id,
            needs: s.needs.iter().map(|n| n.get_ref().clone()).collect(),
            action,
            retries: s.retries,
            timeout,
            condition: s.condition.as_ref().map(|c| c.get_ref().clone()),
            cache: s.cache,
            gpu,
            line: position(f.text, s.id.span().start).0,
            for_each,
        });
    }
    for cycle in cycles(&steps) {
        let line = steps
            .iter()
            .find(|s| s.id == cycle[0])
            .map_or(1, |s| s.line);
        f.out.push(Diagnostic {
            line,
            column: 1,
            severity: Severity::Error,
            message: format!("the steps form a cycle: {}", cycle.join(" → ")),
        });
    }
    steps
}

/// The pipeline as one run executes it: each `for_each` step replaced by one step per item,
/// `ID[ITEM]` with `${item}` filled in, and each step that needed it needing every item. Also
/// returns the items' step ids of each expanded step, for `${steps.ID.NAME}` in its dependants
/// (which reads as the list of the items' values). `params` are the run's, as text.
pub fn expand(
    mut pipeline: Pipeline,
    params: &BTreeMap<String, String>,
) -> Result<(Pipeline, BTreeMap<String, Vec<String>>), String> {
    let mut fanned = BTreeMap::new();
    pipeline.steps = expand_steps(std::mem::take(&mut pipeline.steps), params, &mut fanned)?;
    pipeline.on_failure = expand_steps(
        std::mem::take(&mut pipeline.on_failure),
        params,
        &mut fanned,
    )?;
    Ok((pipeline, fanned))
}

fn expand_steps(
    steps: Vec<Step>,
    params: &BTreeMap<String, String>,
    fanned: &mut BTreeMap<String, Vec<String>>,
) -> Result<Vec<Step>, String> {
    for step in &steps {
        let Some(for_each) = &step.for_each else {
            continue;
        };
        let items = match for_each {
            // Known once its source has run: expanded then ([`expand_step`]).
            ForEach::Step { .. } => continue,
            ForEach::Items(items) => items.clone(),
            ForEach::Param(name) => {
                let text = params.get(name).map(String::as_str).unwrap_or("");
                match ParamType::List.parse(text)? {
                    toml::Value::Array(a) => a.iter().map(value_text).collect(),
                    _ => Vec::new(),
                }
            }
        };
        let what = match for_each {
            ForEach::Param(n) => format!("parameter `{n}`"),
            _ => "its list".to_string(),
        };
        check_items(&step.id, &items, &what)?;
        fanned.insert(
            step.id.clone(),
            items.iter().map(|i| format!("{}[{i}]", step.id)).collect(),
        );
    }
    let needs = |needs: &[String]| -> Vec<String> {
        needs
            .iter()
            .flat_map(|n| fanned.get(n).cloned().unwrap_or_else(|| vec![n.clone()]))
            .collect()
    };
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let needs = needs(&step.needs);
        match fanned.get(&step.id) {
            None => out.push(Step { needs, ..step }),
            Some(ids) => out.extend(item_steps(&Step { needs, ..step }, ids)),
        }
    }
    Ok(out)
}

/// Refuses a list of items that cannot name steps: empty, repeated, or with characters beyond
/// letters, digits, `.`, `-` and `_`.
pub fn check_items(step: &str, items: &[String], what: &str) -> Result<(), String> {
    if items.is_empty() {
        return Err(format!(
            "step `{step}` runs for each item of {what}, which has none"
        ));
    }
    let mut seen = BTreeSet::new();
    for item in items {
        if !is_item(item) {
            return Err(format!(
                "step `{step}`: item {item:?} must be letters, digits, `.`, `-` and `_`, at most 64 (it names a step and goes into commands as written)"
            ));
        }
        if !seen.insert(item) {
            return Err(format!("step `{step}`: item {item:?} is listed twice"));
        }
    }
    Ok(())
}

/// The item steps `ids` (`ID[ITEM]`) of a `for_each` step, `${item}` filled in.
pub fn item_steps(step: &Step, ids: &[String]) -> Vec<Step> {
    ids.iter()
        .map(|id| {
            let item = &id[step.id.len() + 1..id.len() - 1];
            let fill = |t: &str| t.replace("${item}", item);
            let action = match &step.action {
                Action::Run { command } => Action::Run {
                    command: fill(command),
                },
                Action::Uses { component, with } => Action::Uses {
                    component: component.clone(),
                    with: with
                        .iter()
                        .map(|(k, v)| (k.clone(), fill_strings(v, &fill)))
                        .collect(),
                },
            };
            Step {
                id: id.clone(),
                action,
                condition: step.condition.as_deref().map(fill),
                for_each: None,
                ..step.clone()
            }
        })
        .collect()
}

/// The items a step's value lists: a JSON list (what `${steps.ID.NAME}` of a `for_each` step
/// gives), or items separated by commas.
pub fn items_of(value: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<serde_json::Value>>(value.trim()) {
        Ok(list) => list
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Err(_) => value
            .split(',')
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty())
            .collect(),
    }
}

/// A `with` value with every string in it passed through `fill`.
fn fill_strings(v: &toml::Value, fill: &dyn Fn(&str) -> String) -> toml::Value {
    match v {
        toml::Value::String(s) => toml::Value::String(fill(s)),
        toml::Value::Array(a) => {
            toml::Value::Array(a.iter().map(|x| fill_strings(x, fill)).collect())
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, x)| (k.clone(), fill_strings(x, fill)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A TOML value as it reads in a template: strings bare, everything else as TOML writes it.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `name` may name a pipeline, a step or a parameter: letters, digits, `-` and `_`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The type of a pipeline parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Float,
    Boolean,
    /// A list of strings (`markets = ["us", "eu"]`), for `for_each`.
    List,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Float => "float",
            ParamType::Boolean => "boolean",
            ParamType::List => "list",
        }
    }

    fn of(value: &toml::Value) -> Option<ParamType> {
        match value {
            toml::Value::String(_) => Some(ParamType::String),
            toml::Value::Integer(_) => Some(ParamType::Integer),
            toml::Value::Float(_) => Some(ParamType::Float),
            toml::Value::Boolean(_) => Some(ParamType::Boolean),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
                Some(ParamType::List)
            }
            _ => None,
        }
    }

    /// A value given as text (the command line, JSON over HTTP), as this type; why not
    /// otherwise.
    pub fn parse(self, text: &str) -> Result<toml::Value, String> {
        let shown: String = text.chars().take(60).collect();
        let ellipsis = if shown.len() < text.len() { "…" } else { "" };
        let wrong = |hint: &str| format!("{shown:?}{ellipsis} is not {hint}");
        match self {
            ParamType::String if text.contains('\0') => {
                Err("a string parameter cannot hold a NUL character".into())
            }
            ParamType::String => Ok(toml::Value::String(text.to_string())),
            ParamType::Integer => text
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| wrong("an integer")),
            ParamType::Float => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(toml::Value::Float(v)),
                _ => Err(wrong("a finite number")),
            },
            ParamType::Boolean => match text {
                "true" => Ok(toml::Value::Boolean(true)),
                "false" => Ok(toml::Value::Boolean(false)),
                _ => Err(wrong("true or false")),
            },
            // `["us", "eu"]` (TOML or JSON), or `us,eu`.
            ParamType::List => {
                let trimmed = text.trim();
                let items: Vec<String> = if trimmed.starts_with('[') {
                    let parsed: toml::Table = toml::from_str(&format!("v = {trimmed}"))
                        .map_err(|_| wrong("a list such as [\"us\", \"eu\"] or us,eu"))?;
                    parsed
                        .get("v")
                        .and_then(toml::Value::as_array)
                        .map(|a| a.iter().map(value_text).collect())
                        .unwrap_or_default()
                } else if trimmed.is_empty() {
                    Vec::new()
                } else {
                    trimmed.split(',').map(|i| i.trim().to_string()).collect()
                };
                Ok(toml::Value::Array(
                    items.into_iter().map(toml::Value::String).collect(),
                ))
            }
        }
    }
}

/// The `[params]` table: each default, and each type (declared, or the default's).
fn typed_params(
    f: &mut Findings<'_>,
    raw: &BTreeMap<String, Spanned<toml::Value>>,
) -> (BTreeMap<String, toml::Value>, BTreeMap<String, ParamType>) {
    let mut defaults = BTreeMap::new();
    let mut types = BTreeMap::new();
    for (name, value) in raw {
        let at = value.span().start;
        if !is_name(name) {
            f.error(
                at,
                format!("parameter name {name:?} must be letters, digits, `-` and `_`"),
            );
        }
        let (default, declared) = match value.get_ref() {
            toml::Value::Table(t) if t.contains_key("type") => {
                for key in t.keys() {
                    if !["type", "default", "description"].contains(&key.as_str()) {
                        f.error(
                            at,
                            format!("parameter `{name}`: unknown key `{key}`; a declared parameter has `type`, `default` and `description`"),
                        );
                    }
                }
                let declared = match t.get("type").and_then(toml::Value::as_str) {
                    Some("string") => Some(ParamType::String),
                    Some("integer") => Some(ParamType::Integer),
                    Some("float") => Some(ParamType::Float),
                    Some("boolean") => Some(ParamType::Boolean),
                    Some("list") => Some(ParamType::List),
                    other => {
                        f.error(
                            at,
                            format!("parameter `{name}`: type {} is not one of string, integer, float, boolean, list", other.map_or_else(|| "(not a string)".to_string(), |o| format!("{o:?}"))),
                        );
                        None
                    }
                };
                let Some(default) = t.get("default") else {
                    f.error(
                        at,
                        format!("parameter `{name}` has no `default` (scheduled runs need one)"),
                    );
                    continue;
                };
                (default.clone(), declared)
            }
            other => (other.clone(), None),
        };
        let Some(of_default) = ParamType::of(&default) else {
            f.error(
                at,
                format!(
                    "parameter `{name}`: the default must be a string, integer, float, boolean or list of strings"
                ),
            );
            continue;
        };
        let ty = declared.unwrap_or(of_default);
        let default = match (ty, &default) {
            (ParamType::Float, toml::Value::Integer(i)) => toml::Value::Float(*i as f64),
            _ if ty == of_default => default,
            _ => {
                f.error(
                    at,
                    format!(
                        "parameter `{name}` is declared {} but its default is {}",
                        ty.as_str(),
                        of_default.as_str()
                    ),
                );
                continue;
            }
        };
        defaults.insert(name.clone(), default);
        types.insert(name.clone(), ty);
    }
    (defaults, types)
}

fn check_component(
    f: &mut Findings<'_>,
    catalogue: &[ComponentSpec],
    id: &str,
    uses: &Spanned<String>,
    with: &BTreeMap<String, Spanned<toml::Value>>,
) {
    let Some(spec) = catalogue.iter().find(|c| c.name == uses.get_ref()) else {
        let hint = kiln_core::suggest::hint(uses.get_ref(), catalogue.iter().map(|c| c.name));
        let names: Vec<&str> = catalogue.iter().map(|c| c.name).collect();
        let known = if names.is_empty() {
            "this program has no components; use `run` steps".to_string()
        } else {
            format!("the components are {}", names.join(", "))
        };
        f.error(
            uses.span().start,
            format!(
                "step `{id}` uses unknown component `{}`{hint}; {known}",
                uses.get_ref(),
            ),
        );
        return;
    };
    let names: Vec<&str> = spec.args.iter().map(|a| a.name).collect();
    for (k, v) in with {
        if !names.contains(&k.as_str()) {
            let hint = kiln_core::suggest::hint(k, names.iter().copied());
            f.error(
                v.span().start,
                format!(
                    "step `{id}`: component `{}` takes no argument `{k}`{hint}; it takes {}",
                    uses.get_ref(),
                    names.join(", ")
                ),
            );
        }
    }
    for a in spec.args.iter().filter(|a| a.required).map(|a| a.name) {
        if !with.contains_key(a) {
            f.error(
                uses.span().start,
                format!(
                    "step `{id}`: component `{}` needs `with.{a}`",
                    uses.get_ref()
                ),
            );
        }
    }
}

/// Every string inside a TOML value.
fn strings(v: &toml::Value) -> Vec<String> {
    match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(a) => a.iter().flat_map(strings).collect(),
        toml::Value::Table(t) => t.values().flat_map(strings).collect(),
        _ => vec![],
    }
}

/// Checks `${params.NAME}`, `${steps.ID.OUTPUT}` and `${date}`-style references.
/// What a template may refer to.
struct Refs<'a> {
    params: &'a BTreeMap<String, toml::Value>,
    ids: &'a [String],
    is_ancestor: &'a dyn Fn(&str) -> bool,
    component_of: &'a BTreeMap<&'a str, &'a ComponentSpec>,
    /// Whether `${item}` may be used (a `for_each` step).
    item: bool,
}

fn check_templates(f: &mut Findings<'_>, offset: usize, id: &str, text: &str, refs: &Refs<'_>) {
    let Refs {
        params,
        ids,
        is_ancestor,
        component_of,
        item,
    } = refs;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            f.error(
                offset,
                format!("step `{id}`: `${{` without a closing `}}` in {text:?}"),
            );
            return;
        };
        let reference = after[..end].trim();
        let parts: Vec<&str> = reference.split('.').collect();
        match parts.as_slice() {
            ["params", name] => {
                if !params.contains_key(*name) {
                    let hint = kiln_core::suggest::hint(name, params.keys().map(String::as_str));
                    f.error(offset, format!("step `{id}`: unknown parameter `{name}`{hint}"));
                }
            }
            ["steps", step, output @ ..] if !output.is_empty() => {
                // `${steps.ID[ITEM].NAME}`: one item of a `for_each` step.
                let step = &step.split('[').next().unwrap_or(step);
                if !ids.iter().any(|i| i == step) {
                    let hint = kiln_core::suggest::hint(step, ids.iter().map(String::as_str));
                    f.error(offset, format!("step `{id}`: `${{{reference}}}` names unknown step `{step}`{hint}"));
                } else if !is_ancestor(step) {
                    f.error(
                        offset,
                        format!("step `{id}` uses `${{{reference}}}` but does not need `{step}` (add it to `needs`)"),
                    );
                } else if let Some(spec) = component_of.get(step) {
                    // A name the component does not report is a file of its outputs; without an
                    // extension it is more likely a misspelt value.
                    let name = output.join(".");
                    if !spec.outputs.is_empty() && !spec.reports(&name) && !name.contains('.') {
                        let hint = kiln_core::suggest::hint(&name, spec.outputs.iter().copied());
                        f.warning(
                            offset,
                            format!(
                                "step `{id}`: `{}` (step `{step}`) reports {}, not `{name}`, so `${{{reference}}}` is the path of a file `{name}` in its outputs{hint}",
                                spec.name,
                                spec.outputs.join(", ")
                            ),
                        );
                    }
                }
            }
            ["date"] | ["run_id"] | ["pipeline"] | ["outputs"] => {}
            ["item"] if *item => {}
            ["item"] => f.error(
                offset,
                format!("step `{id}`: `${{item}}` is for steps with `for_each`"),
            ),
            _ => f.error(
                offset,
                format!(
                    "step `{id}`: unknown reference `${{{reference}}}`; use ${{params.NAME}}, ${{steps.ID.OUTPUT}}, ${{date}}, ${{run_id}}"
                ),
            ),
        }
        rest = &after[end + 1..];
    }
}

/// The steps that `id` needs, directly or through others.
/// Whether `target` is among the steps `from` needs, directly or through others.
fn reaches(needs_of: &BTreeMap<&str, Vec<&str>>, from: &str, target: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from];
    while let Some(current) = todo.pop() {
        for &n in needs_of.get(current).map_or(&[][..], Vec::as_slice) {
            if n == target {
                return true;
            }
            if seen.insert(n) {
                todo.push(n);
            }
        }
    }
    false
}

fn cycles(steps: &[Step]) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut mark = vec![Mark::New; steps.len()];
    let mut out = Vec::new();
    fn visit(
        i: usize,
        steps: &[Step],
        index: &BTreeMap<&str, usize>,
        mark: &mut [Mark],
        path: &mut Vec<usize>,
        out: &mut Vec<Vec<String>>,
    ) {
        mark[i] = Mark::Open;
        path.push(i);
        for need in &steps[i].needs {
            let Some(&j) = index.get(need.as_str()) else {
                continue;
            };
            match mark[j] {
                Mark::New => visit(j, steps, index, mark, path, out),
                Mark::Open if j != i => {
                    let start = path.iter().position(|p| *p == j).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|p| steps[*p].id.clone()).collect();
                    cycle.push(steps[j].id.clone());
                    out.push(cycle);
                }
                _ => {}
            }
        }
        path.pop();
        mark[i] = Mark::Done;
    }
    for i in 0..steps.len() {
        if mark[i] == Mark::New {
            visit(i, steps, &index, &mut mark, &mut Vec::new(), &mut out);
        }
    }
    out
}

/// The steps in levels: each level's steps need only steps of earlier levels, so a level's
/// steps can run in parallel. `None` when the steps have a cycle or an unknown need.
pub fn levels(pipeline: &Pipeline) -> Option<Vec<Vec<String>>> {
    let ids: BTreeSet<&str> = pipeline.steps.iter().map(|s| s.id.as_str()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < pipeline.steps.len() {
        let level: Vec<String> = pipeline
            .steps
            .iter()
            .filter(|s| !done.contains(&s.id))
            .filter(|s| {
                s.needs
                    .iter()
                    .all(|n| done.contains(n) && ids.contains(n.as_str()))
            })
            .map(|s| s.id.clone())
            .collect();
        if level.is_empty() {
            return None;
        }
        done.extend(level.iter().cloned());
        out.push(level);
    }
    Some(out)
}

/// Every component argument that names a file (without templates) which does not exist,
/// relative to `dir` (the pipeline file's directory), as an error at the step's line.
pub fn missing_files(
    pipeline: &Pipeline,
    catalogue: &[ComponentSpec],
    dir: &std::path::Path,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for step in &pipeline.steps {
        let Action::Uses { component, with } = &step.action else {
            continue;
        };
        let Some(spec) = catalogue.iter().find(|c| c.name == component) else {
            continue;
        };
        for arg in spec.args.iter().filter(|a| a.path).map(|a| a.name) {
            let Some(toml::Value::String(p)) = with.get(arg) else {
                continue;
            };
            if p.contains("${") {
                continue;
            }
            let path = dir.join(p);
            if !path.exists() {
                out.push(Diagnostic {
                    line: step.line,
                    column: 1,
                    severity: Severity::Error,
                    message: format!(
                        "step `{}`: `with.{arg}` names {p}, which does not exist ({})",
                        step.id,
                        path.display()
                    ),
                });
            }
        }
    }
    out
}
