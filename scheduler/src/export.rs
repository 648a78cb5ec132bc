//! A pipeline as a workflow engine's documents: an Argo Workflows `WorkflowTemplate` (and a
//! `CronWorkflow` for its schedule), or a Kubeflow Pipelines v2 pipeline spec (and the
//! Kubernetes platform spec that gives its steps the registry's token). Every step is a
//! container running `kiln pipeline step` ([`crate::hermetic`]) with the kiln image:
//!
//! - the pipeline's parameters are the engine's, passed to every step as `--param`;
//! - `needs` and the steps a step reads become dependencies, and each step's output directory
//!   is the engine's artifact, handed to the steps that read it and to no other;
//! - retries are the engine's, with kiln's backoff (1 s, doubling, at most 5 min); on Argo only
//!   failures worth another attempt are retried (a refused argument exits 1 and is not);
//! - a step's `if` and timeout are kept by `kiln pipeline step` itself, so they mean what they
//!   mean in `kiln pipeline run` (a skipped step's dependants are skipped); Argo also gets a
//!   deadline a little after the timeout, for a pod that hangs;
//! - `gpu = true` (or `device = "gpu"`) requests one `nvidia.com/gpu`;
//! - caching is the engine's: Argo memoizes a step on its definition, the output digests of
//!   the steps it reads and the numeric parameters it names; Kubeflow caches on its inputs. A
//!   step that names a file outside the run (data read in place) or says `cache = false` is
//!   never cached, since the engine cannot see the file change.
//!
//! The file's `for_each` over a list parameter or listed items is expanded here (with the
//! parameter's default); one over an earlier step's value is refused with the reason. On Argo,
//! `on_failure` steps are the workflow's exit handler, run when it did not succeed, with
//! `{{workflow.failures}}` as their `KILN_FAILED_*`; Kubeflow's exit handler cannot tell, so
//! they are refused there.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::pipeline::{
    Action, Catchup, ComponentSpec, ForEach, Overlap, ParamType, Pipeline, Step, value_text,
};

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Argo,
    Kfp,
}

/// How the documents reach kiln.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kiln container image.
    pub image: String,
    /// The pipeline file's path inside the image; the files it names are beside it there.
    pub file: String,
    /// The central kiln that steps record runs and models to (`KILN_SERVER`); none: each
    /// step's own `KILN_HOME`, which ends with its container.
    pub server: Option<String>,
    /// The Secret whose key `token` holds that kiln's token.
    pub token_secret: String,
    /// kiln's version, for the documents' labels.
    pub version: String,
}

/// The documents, in the order to apply them, and what the user should know.
#[derive(Debug, Clone)]
pub struct Exported {
    pub documents: Vec<Value>,
    pub notes: Vec<String>,
}

/// Where a step's outputs are in an Argo container, and where its inputs go.
const ARGO_OUTPUTS: &str = "/kiln/outputs";
const ARGO_INPUTS: &str = "/kiln/inputs";

/// The exit status of `kiln pipeline step` for a failure no attempt changes.
const EXIT_REFUSED: &str = "1";

/// How long Argo keeps a memoized step.
const MEMO_MAX_AGE: &str = "720h";

/// The longest memoization key Argo can keep (a ConfigMap key).
const MEMO_KEY_MAX: usize = 253;

/// One step as the engine runs it.
struct Task {
    step: Step,
    /// The engine's name for it (lower case, digits and `-`).
    name: String,
    /// The steps it reads, each with the engine's name.
    reads: Vec<(String, String)>,
    /// Whether the engine may reuse an earlier execution.
    cacheable: bool,
}

/// `pipeline` (parsed without errors, its parameters not yet filled in) as `engine`'s
/// documents.
pub fn export(
    pipeline: &Pipeline,
    catalogue: &[ComponentSpec],
    engine: Engine,
    options: &Options,
) -> Result<Exported, String> {
    let mut notes = Vec::new();
    if !pipeline.on_failure.is_empty() && engine == Engine::Kfp {
        let ids: Vec<&str> = pipeline.on_failure.iter().map(|s| s.id.as_str()).collect();
        return Err(format!(
            "pipeline `{}` has on_failure steps ({}), which are not exported to Kubeflow: its \
             exit handler runs after every run, failed or not, and cannot tell its step which \
             step failed; export to argo (an `onExit` handler), or remove them from the file",
            pipeline.name,
            ids.join(", ")
        ));
    }
    let handler_ids: BTreeSet<&str> = pipeline.on_failure.iter().map(|s| s.id.as_str()).collect();
    for handler in &pipeline.on_failure {
        let reads = handler.reads();
        if let Some(other) = reads.iter().find(|r| !handler_ids.contains(r.as_str())) {
            return Err(format!(
                "on_failure step `{}` reads step `{other}` of the run; an engine's exit handler \
                 sees only the run's status and failures, and the outputs of other handlers",
                handler.id
            ));
        }
    }
    for step in &pipeline.steps {
        if let Some(ForEach::Step {
            step: source,
            value,
        }) = &step.for_each
        {
            return Err(format!(
                "step `{}` runs once per item of `${{steps.{source}.{value}}}`, known only during \
                 a run; exported pipelines fan out over a list parameter or listed items",
                step.id
            ));
        }
    }
    // Parameters a `for_each` expands over are fixed at their defaults.
    let fixed: BTreeSet<String> = pipeline
        .steps
        .iter()
        .filter_map(|s| match &s.for_each {
            Some(ForEach::Param(p)) => Some(p.clone()),
            _ => None,
        })
        .collect();
    for p in &fixed {
        notes.push(format!(
            "parameter `{p}` is fixed at its default: steps fan out over it when exported"
        ));
    }
    let defaults: BTreeMap<String, String> = pipeline
        .params
        .iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect();
    let (expanded, fanned) = crate::pipeline::expand(pipeline.clone(), &defaults)?;
    let all: Vec<Step> = expanded
        .steps
        .iter()
        .chain(&expanded.on_failure)
        .cloned()
        .collect();
    let names = task_names(&all);
    let task_of = |step: &Step| {
        let reads = step.reads_items(&fanned);
        let external = names_outside_files(step, catalogue);
        let cacheable = step.cache && !external;
        Task {
            step: step.clone(),
            name: names[&step.id].clone(),
            reads: reads
                .into_iter()
                .filter_map(|id| names.get(&id).map(|n| (id, n.clone())))
                .collect(),
            cacheable,
        }
    };
    let tasks: Vec<Task> = expanded.steps.iter().map(task_of).collect();
    // Failure handlers are never cached (as in a local run).
    let handlers: Vec<Task> = expanded
        .on_failure
        .iter()
        .map(|s| Task {
            cacheable: false,
            ..task_of(s)
        })
        .collect();
    let uncached: Vec<&str> = tasks
        .iter()
        .filter(|t| t.step.cache && !t.cacheable)
        .map(|t| t.step.id.as_str())
        .collect();
    if !uncached.is_empty() {
        notes.push(format!(
            "never cached by the engine (they read files in place, which it cannot see change): {}",
            uncached.join(", ")
        ));
    }
    let params: Vec<(&String, &toml::Value, ParamType)> = pipeline
        .params
        .iter()
        .filter(|(k, _)| !fixed.contains(*k))
        .map(|(k, v)| {
            let ty = pipeline
                .param_types
                .get(k)
                .copied()
                .unwrap_or(ParamType::String);
            (k, v, ty)
        })
        .collect();
    let documents = match engine {
        Engine::Argo => argo(pipeline, &tasks, &handlers, &params, options, &mut notes)?,
        Engine::Kfp => kfp(pipeline, &tasks, &params, options, &mut notes)?,
    };
    if options.server.is_none() {
        notes.push(
            "no --registry: each step records to its own container's KILN_HOME, which is lost \
             with it; give --registry URL to keep runs and pushed models in a central kiln"
                .into(),
        );
    }
    Ok(Exported { documents, notes })
}

/// A Kubernetes name for `text`: lower case letters, digits and `-`, at most 63 characters.
pub fn kube_name(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "kiln".into() } else { out }
}

/// Each step's engine name, unique: `train[us]` is `train-us`; a clash gets `-2`, `-3`…
fn task_names(steps: &[Step]) -> BTreeMap<String, String> {
    let mut taken = BTreeSet::new();
    let mut names = BTreeMap::new();
    for step in steps {
        let base: String = kube_name(&step.id).chars().take(56).collect();
        let mut name = base.clone();
        let mut n = 1;
        // `pipeline` and `on-failure` are the entry and exit templates' names.
        while name == "pipeline" || name == "on-failure" || !taken.insert(name.clone()) {
            n += 1;
            name = format!("{base}-{n}");
        }
        names.insert(step.id.clone(), name);
    }
    names
}

/// Whether a component step names a file or directory by a path written out (not one a
/// template fills in from another step): data read in place.
fn names_outside_files(step: &Step, catalogue: &[ComponentSpec]) -> bool {
    let Action::Uses { component, with } = &step.action else {
        return false;
    };
    let Some(spec) = catalogue.iter().find(|c| c.name == component) else {
        return false;
    };
    spec.args.iter().filter(|a| a.path).any(|a| {
        with.get(a.name)
            .and_then(toml::Value::as_str)
            .is_some_and(|p| !p.contains("${steps.") && !p.contains("${outputs}"))
    })
}

/// Whether a step holds the GPU: `gpu = true`, or a `device` that is `gpu` as written or by
/// its parameter's default.
fn uses_gpu(step: &Step, params: &BTreeMap<String, toml::Value>) -> bool {
    let device = step.action.device().map(|d| {
        let name = d
            .trim()
            .strip_prefix("${params.")
            .and_then(|r| r.strip_suffix('}'));
        match name.and_then(|n| params.get(n.trim())) {
            Some(v) => value_text(v),
            None => d.to_string(),
        }
    });
    step.gpu || device.is_some_and(|d| d.eq_ignore_ascii_case("gpu"))
}

/// The digest of a step's definition, for Argo's memoization key.
fn definition_digest(pipeline: &Pipeline, step: &Step) -> String {
    let definition = json!({
        "pipeline": pipeline.name,
        "id": step.id,
        "action": step.action,
        "if": step.condition,
        "needs": step.needs,
    });
    blake3::hash(definition.to_string().as_bytes()).to_hex()[..16].to_string()
}

/// The parameters a step's definition names in `${params.NAME}`.
fn params_named(step: &Step) -> BTreeSet<String> {
    let mut texts: Vec<String> = step.condition.iter().cloned().collect();
    match &step.action {
        Action::Run { command } => texts.push(command.clone()),
        Action::Uses { with, .. } => {
            texts.extend(with.values().flat_map(crate::pipeline::strings_in))
        }
    }
    texts
        .iter()
        .flat_map(|t| {
            t.split("${params.")
                .skip(1)
                .filter_map(|rest| rest.split('}').next())
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The arguments of `kiln pipeline step` that every engine gives the same way.
fn step_args(options: &Options, step: &Step) -> Vec<Value> {
    vec![
        json!("pipeline"),
        json!("step"),
        json!(options.file),
        json!(step.id),
    ]
}

fn retry_seconds(step: &Step) -> Option<u64> {
    step.timeout.map(|t| t.as_secs().max(1) + 120)
}

fn argo(
    pipeline: &Pipeline,
    tasks: &[Task],
    handlers: &[Task],
    params: &[(&String, &toml::Value, ParamType)],
    options: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let name = kube_name(&pipeline.name);
    let mut dag = Vec::new();
    let mut exit_dag = Vec::new();
    let mut templates = Vec::new();
    let numeric: BTreeSet<&str> = params
        .iter()
        .filter(|(_, _, ty)| {
            matches!(
                ty,
                ParamType::Integer | ParamType::Float | ParamType::Boolean
            )
        })
        .map(|(k, _, _)| k.as_str())
        .collect();
    let mut not_memoized = Vec::new();
    let every: Vec<(&Task, bool)> = tasks
        .iter()
        .map(|t| (t, false))
        .chain(handlers.iter().map(|t| (t, true)))
        .collect();
    for &(task, handler) in &every {
        let step = &task.step;
        let mut args = step_args(options, step);
        if handler {
            args.extend([json!("--failures"), json!("{{workflow.failures}}")]);
        }
        args.extend([
            json!("--inputs"),
            json!(ARGO_INPUTS),
            json!("--outputs"),
            json!(ARGO_OUTPUTS),
            json!("--run-name"),
            json!("{{workflow.name}}"),
            json!("--date"),
            json!("{{workflow.creationTimestamp}}"),
        ]);
        for (k, _, _) in params {
            args.push(json!("--param"));
            args.push(json!(format!("{k}={{{{workflow.parameters.{k}}}}}")));
        }
        let mut container = json!({
            "image": options.image,
            "command": ["kiln"],
            "args": args,
            "env": env(options),
        });
        if uses_gpu(step, &pipeline.params) {
            container["resources"] = json!({ "limits": { "nvidia.com/gpu": "1" } });
        }
        let input_artifacts: Vec<Value> = task
            .reads
            .iter()
            .map(|(id, n)| json!({ "name": format!("in-{n}"), "path": format!("{ARGO_INPUTS}/{id}") }))
            .collect();
        let mut template = json!({
            "name": task.name,
            "inputs": { "artifacts": input_artifacts },
            "outputs": {
                "artifacts": [{ "name": "outputs", "path": ARGO_OUTPUTS }],
                "parameters": [
                    { "name": "state", "valueFrom": { "path": format!("{ARGO_OUTPUTS}/.kiln/state") } },
                    { "name": "key", "valueFrom": { "path": format!("{ARGO_OUTPUTS}/.kiln/key"), "default": "" } },
                ],
            },
            "container": container,
        });
        if step.retries > 0 {
            template["retryStrategy"] = json!({
                "limit": step.retries,
                "retryPolicy": "Always",
                "expression": format!("lastRetry.exitCode != \"{EXIT_REFUSED}\""),
                "backoff": { "duration": "1s", "factor": 2, "cap": "5m" },
            });
        }
        if let Some(deadline) = retry_seconds(step) {
            template["activeDeadlineSeconds"] = json!(deadline);
        }
        // Memoized on the definition, what it reads and the numeric parameters it names.
        let named = params_named(step);
        let mut key = format!("kiln-{}", definition_digest(pipeline, step));
        let mut memo_inputs = Vec::new();
        let mut memo_args = Vec::new();
        for (_, n) in &task.reads {
            key.push_str(&format!("-{{{{inputs.parameters.key-{n}}}}}"));
            memo_inputs.push(json!({ "name": format!("key-{n}") }));
            memo_args.push(json!({
                "name": format!("key-{n}"),
                "value": format!("{{{{tasks.{n}.outputs.parameters.key}}}}"),
            }));
        }
        let strings: Vec<&String> = named
            .iter()
            .filter(|p| !numeric.contains(p.as_str()))
            .collect();
        for p in named.iter().filter(|p| numeric.contains(p.as_str())) {
            key.push_str(&format!("-{{{{workflow.parameters.{p}}}}}"));
        }
        // A key part is 17 characters once filled in; parameters, at most 24.
        let longest = key.len() + task.reads.len() * 17 + named.len() * 24;
        if task.cacheable && strings.is_empty() && longest <= MEMO_KEY_MAX {
            template["inputs"]["parameters"] = json!(memo_inputs);
            template["memoize"] = json!({
                "key": key,
                "maxAge": MEMO_MAX_AGE,
                "cache": { "configMap": { "name": format!("{name}-cache") } },
            });
        } else if task.cacheable {
            not_memoized.push(step.id.clone());
        }
        let mut entry = json!({
            "name": task.name,
            "template": task.name,
        });
        let mut deps: BTreeSet<&str> = task.reads.iter().map(|(_, n)| n.as_str()).collect();
        for need in &step.needs {
            if let Some((t, _)) = every.iter().find(|(t, _)| t.step.id == *need) {
                deps.insert(t.name.as_str());
            }
        }
        if !deps.is_empty() {
            entry["dependencies"] = json!(deps);
        }
        if handler {
            // Every handler has it: a skipped task's dependants would run otherwise.
            entry["when"] = json!("{{workflow.status}} != Succeeded");
        }
        let mut arguments = serde_json::Map::new();
        if !task.reads.is_empty() {
            arguments.insert(
                "artifacts".into(),
                json!(
                    task.reads
                        .iter()
                        .map(|(_, n)| json!({
                            "name": format!("in-{n}"),
                            "from": format!("{{{{tasks.{n}.outputs.artifacts.outputs}}}}"),
                        }))
                        .collect::<Vec<_>>()
                ),
            );
        }
        if template.get("memoize").is_some() && !memo_args.is_empty() {
            arguments.insert("parameters".into(), json!(memo_args));
        }
        if !arguments.is_empty() {
            entry["arguments"] = Value::Object(arguments);
        }
        if handler {
            exit_dag.push(entry);
        } else {
            dag.push(entry);
        }
        templates.push(template);
    }
    if !not_memoized.is_empty() {
        notes.push(format!(
            "not memoized on Argo (they name a string parameter, whose value cannot be part of \
             a cache key): {}",
            not_memoized.join(", ")
        ));
    }
    templates.insert(0, json!({ "name": "pipeline", "dag": { "tasks": dag } }));
    if !exit_dag.is_empty() {
        templates.insert(
            1,
            json!({ "name": "on-failure", "dag": { "tasks": exit_dag } }),
        );
    }
    let labels = json!({
        "app.kubernetes.io/managed-by": "kiln",
        "app.kubernetes.io/version": options.version,
        "kiln.dev/pipeline": name,
    });
    let mut spec = json!({
        "entrypoint": "pipeline",
        "templates": templates,
        "securityContext": { "runAsNonRoot": true, "runAsUser": 65532 },
    });
    if let Some(parallel) = pipeline.parallel {
        spec["parallelism"] = json!(parallel);
    }
    if !handlers.is_empty() {
        spec["onExit"] = json!("on-failure");
        notes.push(
            "on_failure steps run in Argo's exit handler when the workflow did not succeed; \
             KILN_FAILED_STEP is the failed task's name there, KILN_FAILED_LOG is empty"
                .into(),
        );
    }
    if !params.is_empty() {
        spec["arguments"] = json!({
            "parameters": params
                .iter()
                .map(|(k, v, _)| json!({ "name": k, "value": value_text(v) }))
                .collect::<Vec<_>>(),
        });
    }
    let mut documents = vec![json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
    })];
    if let Some(schedule) = &pipeline.schedule {
        let cron = five_fields(&schedule.cron)?;
        let mut cron_spec = json!({
            "schedules": [cron],
            "timezone": "UTC",
            "concurrencyPolicy": "Forbid",
            "workflowSpec": { "workflowTemplateRef": { "name": name } },
        });
        match schedule.catchup {
            // Argo runs the latest missed fire only within the deadline.
            Catchup::Skip => cron_spec["startingDeadlineSeconds"] = json!(60),
            Catchup::Latest => {}
            Catchup::All => notes.push(
                "catchup = \"all\": Argo runs only the latest fire missed while its controller \
                 was down"
                    .into(),
            ),
        }
        if schedule.overlap == Overlap::Queue {
            notes.push(
                "overlap = \"queue\": Argo has no queue; a fire while a run goes is skipped \
                 (concurrencyPolicy Forbid)"
                    .into(),
            );
        }
        documents.push(json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "CronWorkflow",
            "metadata": { "name": name, "labels": labels },
            "spec": cron_spec,
        }));
    }
    Ok(documents)
}

/// The environment of every step: where the central kiln is and its token.
fn env(options: &Options) -> Vec<Value> {
    match &options.server {
        Some(url) => vec![
            json!({ "name": "KILN_SERVER", "value": url }),
            json!({
                "name": "KILN_TOKEN",
                "valueFrom": { "secretKeyRef": {
                    "name": options.token_secret, "key": "token", "optional": true,
                } },
            }),
        ],
        None => Vec::new(),
    }
}

/// A cron expression with five fields (Argo's), from kiln's five, or six with seconds `0`.
fn five_fields(cron: &str) -> Result<String, String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    match fields.as_slice() {
        [_, _, _, _, _] => Ok(fields.join(" ")),
        ["0", rest @ ..] if rest.len() == 5 => Ok(rest.join(" ")),
        _ => Err(format!(
            "schedule {cron:?}: the engine takes five cron fields (minute hour day month \
             weekday)"
        )),
    }
}

fn kfp(
    pipeline: &Pipeline,
    tasks: &[Task],
    params: &[(&String, &toml::Value, ParamType)],
    options: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let artifact_type = json!({ "schemaTitle": "system.Artifact", "schemaVersion": "0.0.1" });
    let kfp_type = |ty: ParamType| match ty {
        ParamType::Integer => "NUMBER_INTEGER",
        ParamType::Float => "NUMBER_DOUBLE",
        ParamType::Boolean => "BOOLEAN",
        ParamType::String | ParamType::List => "STRING",
    };
    let kfp_default = |v: &toml::Value| match v {
        toml::Value::Integer(i) => json!(*i as f64),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        other => json!(value_text(other)),
    };
    let param_defs: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, _, ty)| (k.to_string(), json!({ "parameterType": kfp_type(*ty) })))
        .collect();
    let root_params: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v, ty)| {
            (
                k.to_string(),
                json!({
                    "parameterType": kfp_type(*ty),
                    "defaultValue": kfp_default(v),
                    "isOptional": true,
                }),
            )
        })
        .collect();
    let mut components = serde_json::Map::new();
    let mut executors = serde_json::Map::new();
    let mut dag = serde_json::Map::new();
    let mut secrets = serde_json::Map::new();
    let concat =
        |parts: [&str; 2]| Value::String(json!({ "Concat": [parts[0], parts[1]] }).to_string());
    for task in tasks {
        let step = &task.step;
        let (component, executor) = (format!("comp-{}", task.name), format!("exec-{}", task.name));
        let mut args = step_args(options, step);
        for (id, n) in &task.reads {
            args.push(json!("--input"));
            args.push(concat([
                &format!("{id}="),
                &format!("{{{{$.inputs.artifacts['in-{n}'].path}}}}"),
            ]));
        }
        args.extend([
            json!("--outputs"),
            json!("{{$.outputs.artifacts['outputs'].path}}"),
            json!("--run-name"),
            json!("{{$.pipeline_job_name}}"),
            json!("--date"),
            json!("{{$.pipeline_job_create_time_utc}}"),
        ]);
        for (k, _, _) in params {
            args.push(json!("--param"));
            args.push(concat([
                &format!("{k}="),
                &format!("{{{{$.inputs.parameters['{k}']}}}}"),
            ]));
        }
        let mut inputs = serde_json::Map::new();
        if !param_defs.is_empty() {
            inputs.insert("parameters".into(), Value::Object(param_defs.clone()));
        }
        if !task.reads.is_empty() {
            inputs.insert(
                "artifacts".into(),
                Value::Object(
                    task.reads
                        .iter()
                        .map(|(_, n)| (format!("in-{n}"), json!({ "artifactType": artifact_type })))
                        .collect(),
                ),
            );
        }
        let mut comp = json!({
            "executorLabel": executor,
            "outputDefinitions": { "artifacts": { "outputs": { "artifactType": artifact_type } } },
        });
        if !inputs.is_empty() {
            comp["inputDefinitions"] = Value::Object(inputs);
        }
        components.insert(component.clone(), comp);
        let mut container = json!({
            "image": options.image,
            "command": ["kiln"],
            "args": args,
        });
        if let Some(url) = &options.server {
            container["env"] = json!([{ "name": "KILN_SERVER", "value": url }]);
            secrets.insert(
                executor.clone(),
                json!({ "secretAsEnv": [{
                    "secretName": options.token_secret,
                    "secretNameParameter": { "runtimeValue": { "constant": options.token_secret } },
                    "keyToEnv": [{ "secretKey": "token", "envVar": "KILN_TOKEN" }],
                    "optional": true,
                }] }),
            );
        }
        if uses_gpu(step, &pipeline.params) {
            container["resources"] = json!({ "accelerator": {
                "type": "nvidia.com/gpu", "count": "1",
                "resourceType": "nvidia.com/gpu", "resourceCount": "1",
            } });
        }
        executors.insert(executor, json!({ "container": container }));
        let mut entry = json!({
            "taskInfo": { "name": task.name },
            "componentRef": { "name": component },
            "cachingOptions": if task.cacheable { json!({ "enableCache": true }) } else { json!({}) },
        });
        let mut deps: BTreeSet<&str> = task.reads.iter().map(|(_, n)| n.as_str()).collect();
        for need in &step.needs {
            if let Some(t) = tasks.iter().find(|t| t.step.id == *need) {
                deps.insert(t.name.as_str());
            }
        }
        if !deps.is_empty() {
            entry["dependentTasks"] = json!(deps);
        }
        let mut task_inputs = serde_json::Map::new();
        if !params.is_empty() {
            task_inputs.insert(
                "parameters".into(),
                Value::Object(
                    params
                        .iter()
                        .map(|(k, _, _)| (k.to_string(), json!({ "componentInputParameter": k })))
                        .collect(),
                ),
            );
        }
        if !task.reads.is_empty() {
            task_inputs.insert(
                "artifacts".into(),
                Value::Object(
                    task.reads
                        .iter()
                        .map(|(_, n)| {
                            (
                                format!("in-{n}"),
                                json!({ "taskOutputArtifact": {
                                    "producerTask": n, "outputArtifactKey": "outputs",
                                } }),
                            )
                        })
                        .collect(),
                ),
            );
        }
        if !task_inputs.is_empty() {
            entry["inputs"] = Value::Object(task_inputs);
        }
        if step.retries > 0 {
            entry["retryPolicy"] = json!({
                "maxRetryCount": step.retries,
                "backoffDuration": "1s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "300s",
            });
        }
        dag.insert(task.name.clone(), entry);
    }
    let mut root = json!({ "dag": { "tasks": dag } });
    if !root_params.is_empty() {
        root["inputDefinitions"] = json!({ "parameters": root_params });
    }
    let mut documents = vec![json!({
        "pipelineInfo": { "name": kube_name(&pipeline.name) },
        "schemaVersion": "2.1.0",
        "sdkVersion": format!("kiln-{}", options.version),
        "root": root,
        "components": components,
        "deploymentSpec": { "executors": executors },
    })];
    if !secrets.is_empty() {
        documents.push(json!({
            "platforms": { "kubernetes": { "deploymentSpec": { "executors": secrets } } },
        }));
    }
    if let Some(schedule) = &pipeline.schedule {
        let cron = five_fields(&schedule.cron)?;
        notes.push(format!(
            "Kubeflow schedules are recurring runs, not part of the spec: create one with the \
             cron expression \"0 {cron}\" (seconds first), e.g. `kfp recurring-run create \
             --cron-expression \"0 {cron}\" --max-concurrency 1 …`"
        ));
    }
    notes.push(
        "on Kubeflow every failure is retried (an engine retry cannot tell a refused argument \
         from a lost connection)"
            .into(),
    );
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kubernetes_names_and_unique() {
        assert_eq!(kube_name("train[us]"), "train-us");
        assert_eq!(kube_name("Retrain_CTR"), "retrain-ctr");
        assert_eq!(kube_name("__"), "kiln");
        let parsed = crate::pipeline::parse(
            "name = \"p\"\n[[steps]]\nid = \"a_b\"\nrun = \"true\"\n[[steps]]\nid = \"a-b\"\nrun = \"true\"\n[[steps]]\nid = \"pipeline\"\nrun = \"true\"\n",
        );
        let p = parsed.pipeline.unwrap();
        let names = task_names(&p.steps);
        assert_eq!(names["a_b"], "a-b");
        assert_eq!(names["a-b"], "a-b-2");
        assert_eq!(names["pipeline"], "pipeline-2");
    }

    #[test]
    fn cron_has_five_fields() {
        assert_eq!(five_fields("0 3 * * *").unwrap(), "0 3 * * *");
        assert_eq!(five_fields("0 0 3 * * *").unwrap(), "0 3 * * *");
        assert!(five_fields("30 0 3 * * *").is_err());
    }
}
