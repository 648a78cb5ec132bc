//! A pipeline exported for a workflow engine (Argo, Kubeflow) runs as the engine runs it and ends as
//! `kiln pipeline run` ends: each step a separate `kiln pipeline step` process in an empty
//! working directory of its own, with a clean environment, given only the artifacts the export
//! declares, its records going to a central kiln over HTTP.
#![allow(clippy::unwrap_used)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every kind of step: a command with values, metrics and a file; components reading it;
/// the gate's `if`; a condition that is false and a step that needs it (both skipped); a
/// `for_each` over a list parameter, and a step reading all its items' values.
const PIPELINE: &str = r#"
name = "engines"

[params]
rows = 3000
epochs = 2
model = "ctr"
min_auc = 0.55
regions = ["us", "eu"]

[[steps]]
id = "generate"
run = "kiln data synth ctr --rows ${params.rows} --seed 7 -o ${outputs}/ctr.csv && echo lines=$(wc -l < ${outputs}/ctr.csv) >> $KILN_VALUES && echo quality=0.5 >> $KILN_METRICS && echo quality=0.75 >> $KILN_METRICS"

[[steps]]
id = "ingest"
needs = ["generate"]
uses = "ingest"
with = { path = "${steps.generate.ctr.csv}" }

[[steps]]
id = "train"
needs = ["ingest"]
uses = "train"
with = { data = "${steps.ingest.data}", target = "click", model = "logistic", epochs = "${params.epochs}", seed = 3 }
retries = 1
timeout = "5m"

[[steps]]
id = "evaluate"
needs = ["train", "ingest"]
uses = "evaluate"
with = { model = "${steps.train.model}", data = "${steps.ingest.data}", baseline = "${params.model}@champion", thresholds = { roc_auc = "${params.min_auc}" } }

[[steps]]
id = "push"
needs = ["evaluate", "train"]
uses = "push"
with = { model = "${steps.train.model}", name = "${params.model}", blessing = "${steps.evaluate.blessed}" }
if = "${steps.evaluate.blessed}"

[[steps]]
id = "decide"
needs = ["push"]
run = "echo go=false >> $KILN_VALUES"

[[steps]]
id = "gated"
needs = ["decide"]
run = "echo should-not-run > ${outputs}/ran"
if = "${steps.decide.go}"

[[steps]]
id = "after-gated"
needs = ["gated"]
run = "echo should-not-run > ${outputs}/ran"

[[steps]]
id = "report"
needs = ["evaluate"]
for_each = "${params.regions}"
run = "echo ${item}: ${steps.evaluate.metric} > ${outputs}/report.txt && echo region=${item} >> $KILN_VALUES"

[[steps]]
id = "summary"
needs = ["report"]
run = "echo 'regions=${steps.report.region}' >> $KILN_VALUES"
"#;

const TOKEN: &str = "engine-token-0123456789";

/// Copies a directory tree (as an engine hands an artifact over).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A container path (`/kiln/...`) inside a step's own directory.
fn in_container(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Fills in what Argo fills in (`workflow.*`, given in `known`); anything else left in `{{…}}`
/// is a placeholder Argo would not know at this point, and fails the test.
fn argo_fill(text: &str, known: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in known {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!out.contains("{{"), "a placeholder Argo would leave: {out}");
    out
}

/// What an Argo run of a WorkflowTemplate left: each task's output directory by task name, and
/// the tasks that failed, with their messages.
struct ArgoRun {
    outputs: BTreeMap<String, PathBuf>,
    failed: Vec<(String, String)>,
}

/// Runs an exported Argo WorkflowTemplate the way Argo's controller runs it: the entry DAG one
/// task at a time in dependency order (a task whose dependency failed or did not run is not
/// run), retried as its retry strategy says; then the exit handler's DAG, each task under its
/// `when`, with `workflow.status` and `workflow.failures`.
fn run_argo(k: &util::Kiln, template: &Value, central: &str, workflow: &str) -> ArgoRun {
    let spec = &template["spec"];
    let mut known: BTreeMap<String, String> = spec["arguments"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                format!("workflow.parameters.{}", p["name"].as_str().unwrap()),
                p["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    known.insert("workflow.name".into(), workflow.into());
    known.insert(
        "workflow.creationTimestamp".into(),
        "2026-11-30T09:30:00Z".into(),
    );
    let templates: BTreeMap<&str, &Value> = spec["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    let mut run = ArgoRun {
        outputs: BTreeMap::new(),
        failed: Vec::new(),
    };
    let entry = templates[spec["entrypoint"].as_str().unwrap()];
    run_dag(k, &templates, entry, &known, central, &mut run);
    if let Some(exit) = spec["onExit"].as_str() {
        let status = if run.failed.is_empty() {
            "Succeeded"
        } else {
            "Failed"
        };
        known.insert("workflow.status".into(), status.into());
        let failures: Vec<Value> = run
            .failed
            .iter()
            .map(|(name, message)| {
                serde_json::json!({
                    "displayName": name, "message": message, "templateName": name,
                    "phase": "Failed", "podName": format!("{workflow}-{name}"),
                    "finishedAt": "2026-11-30T09:31:00Z",
                })
            })
            .collect();
        known.insert(
            "workflow.failures".into(),
            Value::Array(failures).to_string(),
        );
        run_dag(k, &templates, templates[exit], &known, central, &mut run);
    }
    run
}

fn run_dag(
    k: &util::Kiln,
    templates: &BTreeMap<&str, &Value>,
    dag_template: &Value,
    known: &BTreeMap<String, String>,
    central: &str,
    run: &mut ArgoRun,
) {
    let mut left: Vec<&Value> = dag_template["dag"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let mut ended: BTreeSet<String> = BTreeSet::new();
    while !left.is_empty() {
        let i = left
            .iter()
            .position(|t| {
                t["dependencies"]
                    .as_array()
                    .is_none_or(|d| d.iter().all(|d| ended.contains(d.as_str().unwrap())))
            })
            .expect("a task whose dependencies all ended");
        let task = left.remove(i);
        let name = task["name"].as_str().unwrap();
        ended.insert(name.to_string());
        // Not run: a dependency did not produce, or its `when` is false.
        let blocked = task["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| !run.outputs.contains_key(d.as_str().unwrap()));
        if blocked {
            continue;
        }
        if let Some(when) = task["when"].as_str() {
            assert_eq!(
                when, "{{workflow.status}} != Succeeded",
                "a condition this test reads"
            );
            if known["workflow.status"] == "Succeeded" {
                continue;
            }
        }
        let t = templates[task["template"].as_str().unwrap()];
        let root = k.path(&format!("engine/{name}"));
        std::fs::create_dir_all(&root).unwrap();
        // Input artifacts: only those the task is given, where the template puts them.
        for input in t["inputs"]["artifacts"].as_array().unwrap() {
            let arg = task["arguments"]["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == input["name"])
                .unwrap();
            let from = arg["from"].as_str().unwrap();
            let producer = from
                .strip_prefix("{{tasks.")
                .and_then(|r| r.strip_suffix(".outputs.artifacts.outputs}}"))
                .unwrap();
            copy_tree(
                &run.outputs[producer],
                &in_container(&root, input["path"].as_str().unwrap()),
            );
        }
        let container = &t["container"];
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = argo_fill(a.as_str().unwrap(), known);
                if a.starts_with("/kiln/") {
                    in_container(&root, &a).display().to_string()
                } else {
                    a
                }
            })
            .collect();
        assert_eq!(container["command"], serde_json::json!(["kiln"]));
        let limit = t["retryStrategy"]["limit"].as_u64().unwrap_or(0);
        if limit > 0 {
            assert_eq!(
                t["retryStrategy"]["expression"],
                "lastRetry.exitCode != \"1\""
            );
        }
        let mut attempt = 0;
        let succeeded = loop {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            c.args(&args)
                .current_dir(&root)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("HOME", &root);
            for e in container["env"].as_array().unwrap() {
                let value = match e["value"].as_str() {
                    Some(v) => v.to_string(),
                    None => {
                        let secret = &e["valueFrom"]["secretKeyRef"];
                        assert_eq!(secret["name"], "kiln-token");
                        assert_eq!(secret["key"], "token");
                        TOKEN.to_string()
                    }
                };
                let value = if e["name"] == "KILN_SERVER" {
                    central.to_string()
                } else {
                    value
                };
                c.env(e["name"].as_str().unwrap(), value);
            }
            let out = c.output().unwrap();
            let code = out.status.code().unwrap_or(-1);
            if code == 0 {
                break true;
            }
            attempt += 1;
            if code == 1 || attempt > limit {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let message = stderr.lines().last().unwrap_or_default().to_string();
                run.failed.push((name.to_string(), message));
                break false;
            }
        };
        if !succeeded {
            continue;
        }
        let outputs = in_container(
            &root,
            t["outputs"]["artifacts"][0]["path"].as_str().unwrap(),
        );
        // The output parameters Argo reads are there.
        for p in t["outputs"]["parameters"].as_array().unwrap() {
            let path = in_container(&root, p["valueFrom"]["path"].as_str().unwrap());
            assert!(
                path.exists() || p["valueFrom"].get("default").is_some(),
                "{}",
                path.display()
            );
        }
        run.outputs.insert(name.to_string(), outputs);
    }
}

/// Each step's record from an engine's run, checked against `kiln pipeline run`'s: the same
/// steps (a `for_each` step as its items), states and values.
fn same_as_local(
    outputs: &BTreeMap<String, PathBuf>,
    local_steps: &BTreeMap<String, &Value>,
) -> BTreeMap<String, Value> {
    let engine: BTreeMap<String, Value> = outputs
        .values()
        .map(|d| {
            let r = record(d);
            (r["step"].as_str().unwrap().to_string(), r)
        })
        .collect();
    let expected: BTreeSet<&str> = local_steps
        .iter()
        .filter(|(_, s)| !s["reason"].as_str().unwrap_or("").starts_with("fanned out"))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        engine.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
    for (id, r) in &engine {
        let l = local_steps[id];
        assert_eq!(r["state"], l["state"], "{id}: {r} against {l}");
        assert_eq!(comparable(&r["values"]), comparable(&l["values"]), "{id}");
    }
    engine
}

/// Runs `kiln pipeline run` on `file` in the test's home; the run's record.
fn run_locally(k: &util::Kiln, file: &str) -> Value {
    let local = k.run_home(&["pipeline", "run", file, "--json"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    serde_json::from_str(&local.stdout).unwrap()
}

fn steps_of(run: &Value) -> BTreeMap<String, &Value> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect()
}

/// Fills in one argument as Kubeflow's driver does: a `{"Concat": [...]}` string joined, and the
/// placeholders of the task's inputs and outputs.
fn kfp_fill(arg: &str, fill: &dyn Fn(&str) -> String) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(arg)
        && let Some(parts) = v["Concat"].as_array()
    {
        return parts.iter().map(|p| fill(p.as_str().unwrap())).collect();
    }
    fill(arg)
}

/// Runs an exported Kubeflow pipeline spec (and its platform spec) the way Kubeflow's driver
/// and launcher run it: each task once its dependent tasks are done, its input artifacts
/// downloaded to paths of their own, its placeholders filled in; returns each task's output
/// directory, by task name.
fn run_kfp(k: &util::Kiln, docs: &[Value], central: &str, job: &str) -> BTreeMap<String, PathBuf> {
    let spec = &docs[0];
    let secrets = docs
        .get(1)
        .map(|d| d["platforms"]["kubernetes"]["deploymentSpec"]["executors"].clone())
        .unwrap_or(Value::Null);
    let root_params: BTreeMap<String, String> = spec["root"]["inputDefinitions"]["parameters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, p)| {
            let v = &p["defaultValue"];
            let text = match p["parameterType"].as_str().unwrap() {
                "NUMBER_INTEGER" => (v.as_f64().unwrap() as i64).to_string(),
                "NUMBER_DOUBLE" => v.as_f64().unwrap().to_string(),
                "BOOLEAN" => v.as_bool().unwrap().to_string(),
                _ => v.as_str().unwrap().to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    let tasks = spec["root"]["dag"]["tasks"].as_object().unwrap();
    let mut done: BTreeMap<String, PathBuf> = BTreeMap::new();
    while done.len() < tasks.len() {
        let (name, task) = tasks
            .iter()
            .find(|(n, t)| {
                !done.contains_key(*n)
                    && t["dependentTasks"]
                        .as_array()
                        .is_none_or(|d| d.iter().all(|d| done.contains_key(d.as_str().unwrap())))
            })
            .expect("a task whose dependent tasks all ran");
        let component = &spec["components"][task["componentRef"]["name"].as_str().unwrap()];
        let executor = component["executorLabel"].as_str().unwrap();
        let container = &spec["deploymentSpec"]["executors"][executor]["container"];
        let root = k.path(&format!("kfp/{name}"));
        std::fs::create_dir_all(&root).unwrap();
        let mut artifacts = BTreeMap::new();
        if let Some(inputs) = task["inputs"]["artifacts"].as_object() {
            for (input, from) in inputs {
                let producer = from["taskOutputArtifact"]["producerTask"].as_str().unwrap();
                assert_eq!(from["taskOutputArtifact"]["outputArtifactKey"], "outputs");
                let path = root.join("inputs").join(input);
                copy_tree(&done[producer], &path);
                artifacts.insert(input.clone(), path);
            }
        }
        let mut params = BTreeMap::new();
        if let Some(inputs) = task["inputs"]["parameters"].as_object() {
            for (p, from) in inputs {
                let source = from["componentInputParameter"].as_str().unwrap();
                params.insert(p.clone(), root_params[source].clone());
            }
        }
        let outputs = root.join("outputs/outputs");
        let fill = |text: &str| -> String {
            let mut out = text
                .replace("{{$.pipeline_job_name}}", job)
                .replace("{{$.pipeline_job_create_time_utc}}", "2026-11-30T09:30:00Z")
                .replace(
                    "{{$.outputs.artifacts['outputs'].path}}",
                    &outputs.display().to_string(),
                );
            for (p, v) in &params {
                out = out.replace(&format!("{{{{$.inputs.parameters['{p}']}}}}"), v);
            }
            for (a, path) in &artifacts {
                out = out.replace(
                    &format!("{{{{$.inputs.artifacts['{a}'].path}}}}"),
                    &path.display().to_string(),
                );
            }
            assert!(
                !out.contains("{{$"),
                "a placeholder Kubeflow would leave: {out}"
            );
            out
        };
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| kfp_fill(a.as_str().unwrap(), &fill))
            .collect();
        let limit = task["retryPolicy"]["maxRetryCount"].as_u64().unwrap_or(0);
        let mut attempt = 0;
        loop {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            c.args(&args)
                .current_dir(&root)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("HOME", &root);
            for e in container["env"].as_array().into_iter().flatten() {
                assert_eq!(e["name"], "KILN_SERVER");
                c.env("KILN_SERVER", central);
            }
            for secret in secrets[executor]["secretAsEnv"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(secret["secretName"], "kiln-token");
                for key in secret["keyToEnv"].as_array().unwrap() {
                    assert_eq!(key["secretKey"], "token");
                    c.env(key["envVar"].as_str().unwrap(), TOKEN);
                }
            }
            let out = c.output().unwrap();
            if out.status.success() {
                break;
            }
            attempt += 1;
            assert!(
                attempt <= limit,
                "task {name} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        done.insert(name.clone(), outputs);
    }
    done
}

/// `kiln pipeline export FILE --to ENGINE` as a step of the test runs it (the file where the
/// image would have it, a central kiln), split into its documents.
fn exported(k: &util::Kiln, file: &str, engine: &str) -> Vec<Value> {
    let out = k
        .command()
        .args([
            "pipeline",
            "export",
            file,
            "--to",
            engine,
            "--image",
            "kiln:test",
            "--file-in-image",
            file,
            "--registry",
            "http://kiln.kiln.svc:8080",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn record(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(".kiln/step.json")).unwrap()).unwrap()
}

/// What must come out the same in both runs: the value, unless it names a file (the
/// directories differ), a run id or a time.
fn comparable(values: &Value) -> BTreeMap<String, String> {
    values
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| {
            !v.as_str().unwrap().starts_with('/') && !matches!(k.as_str(), "run" | "latency_us")
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn an_exported_argo_workflow_ends_as_kiln_pipeline_run_ends() {
    let k = util::Kiln::new();
    let file = k.file("engines.toml", PIPELINE);
    let file_text = file.display().to_string();

    // Locally.
    let local = run_locally(&k, &file_text);
    let local_steps = steps_of(&local);

    // On the engine: a central kiln of its own, with a token.
    let elsewhere = util::Kiln::new();
    let central = util::Served::start(
        &elsewhere,
        &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN],
    );
    let docs = exported(&k, &file_text, "argo");
    assert_eq!(docs.len(), 1, "no schedule, no CronWorkflow");
    assert_eq!(docs[0]["kind"], "WorkflowTemplate");
    let run = run_argo(&k, &docs[0], &central.url, "engines-x7k2p");
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    let outputs = run.outputs;

    // The same steps, in the same states, with the same values.
    let engine = same_as_local(&outputs, &local_steps);
    assert_eq!(engine["gated"]["state"], "skipped");
    assert_eq!(engine["after-gated"]["state"], "skipped");
    assert!(!outputs["gated"].join("ran").exists());
    assert_eq!(engine["push"]["values"]["version"], "1");
    assert_eq!(engine["summary"]["values"]["regions"], r#"["us","eu"]"#);
    assert!(outputs["report-eu"].join("report.txt").exists());
    assert_eq!(engine["generate"]["values"]["quality"], "0.75");

    // The central kiln holds what the run pushed, tagged with the engine's run.
    let show = k
        .command()
        .args(["models", "show", "ctr", "--json", "--server", &central.url])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let model: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(model["aliases"]["champion"], 1, "{model}");
    let run = engine["push"]["values"]["run"].as_str().unwrap();
    let run_out = k
        .command()
        .args(["runs", "show", run, "--json", "--server", &central.url])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&run_out.stdout).unwrap();
    assert_eq!(run["tags"]["kiln.pipeline_run"], "engines-x7k2p", "{run}");
    assert_eq!(run["tags"]["kiln.pipeline_step"], "train", "{run}");
    // The command's metrics are a run of their own there.
    let runs = k
        .command()
        .args([
            "runs",
            "list",
            "--experiment",
            "engines",
            "--json",
            "--server",
            &central.url,
        ])
        .output()
        .unwrap();
    let runs = String::from_utf8_lossy(&runs.stdout);
    assert!(runs.contains("generate"), "{runs}");
    drop(central);
}

#[test]
fn a_step_alone_refuses_what_is_ambiguous_and_says_what_to_retry() {
    let k = util::Kiln::new();
    let file = k.file(
        "p.toml",
        "name = \"alone\"\n\
         [[steps]]\nid = \"a\"\nrun = \"echo x=1 >> $KILN_VALUES\"\n\
         [[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"exit 3\"\n\
         [[steps]]\nid = \"c\"\nneeds = [\"a\"]\nuses = \"ingest\"\nwith = { path = \"${steps.a.missing.csv}\" }\n",
    );
    let f = file.display().to_string();
    let out = k.path("out");
    let a = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "a",
        "--outputs",
        &out.join("a").display().to_string(),
    ]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    // The outputs directory must be empty: a step writes only its own files.
    let again = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "a",
        "--outputs",
        &out.join("a").display().to_string(),
    ]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("must be empty"), "{}", again.stderr);
    // An input not given is named, with how to give it.
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--outputs",
        &out.join("b").display().to_string(),
    ]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr
            .contains("--inputs DIR (as DIR/a) or --input a=PATH"),
        "{}",
        b.stderr
    );
    // A command that fails may go otherwise next time: 75, which the export retries.
    let inputs = out.display().to_string();
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--inputs",
        &inputs,
        "--outputs",
        &k.path("b").display().to_string(),
    ]);
    assert_eq!(b.code, 75, "{}", b.stderr);
    assert_eq!(record(&k.path("b"))["state"], "failed");
    // A component refusing its argument would refuse again: 1, not retried.
    let c = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "c",
        "--input",
        &format!("a={}", out.join("a").display()),
        "--outputs",
        &k.path("c").display().to_string(),
    ]);
    assert!(c.code == 1 || c.code == 75, "{}", c.stderr);
    // Unknown step: the file's steps are listed.
    let d = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "d",
        "--outputs",
        &k.path("d").display().to_string(),
    ]);
    assert_eq!(d.code, 1);
    assert!(d.stderr.contains("its steps are a, b, c"), "{}", d.stderr);
    // Someone else's outputs are not taken for a's.
    std::fs::create_dir_all(k.path("fake/a")).unwrap();
    copy_tree(&k.path("b"), &k.path("fake/a"));
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--inputs",
        &k.path("fake").display().to_string(),
        "--outputs",
        &k.path("b2").display().to_string(),
    ]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr.contains("holds the outputs of step `b`"),
        "{}",
        b.stderr
    );
}

#[test]
fn an_exported_sweep_runs_its_trials_as_steps_and_registers_the_best() {
    let k = util::Kiln::new();
    let sweep = k.file(
        "small.sweep.toml",
        "method = \"random\"\ntrials = 3\nseed = 1\nmetric = \"loss\"\n\
         [base]\nmodel = \"mlp\"\nepochs = 3\nseed = 5\n\
         [space]\nlr = { log_uniform = [0.001, 0.05] }\nhidden = { choice = [[8], [16, 8]] }\n",
    );
    let dir = k.path("exported");
    let data = util::repo_root().join("examples/data/breast_cancer.csv");
    let out = k
        .command()
        .args([
            "sweep",
            "--config",
            &sweep.display().to_string(),
            "--data",
            &data.display().to_string(),
            "--target",
            "label",
            "--register",
            "bc",
            "--export",
            "argo",
            "-o",
            &dir.display().to_string(),
            "--image",
            "kiln:test",
            "--registry",
            "http://kiln.kiln.svc:8080",
            "--file-in-image",
            &dir.join("sweep-small-sweep.toml").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join("sweep-small-sweep.toml");
    // The same pipeline, here.
    let local = k.run_home(&["pipeline", "run", &file.display().to_string(), "--json"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let local: Value = serde_json::from_str(&local.stdout).unwrap();
    let board = local["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "leaderboard")
        .unwrap();
    assert_eq!(board["values"]["version"], "1");

    // On the engine.
    let elsewhere = util::Kiln::new();
    let central = util::Served::start(
        &elsewhere,
        &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN],
    );
    let text = std::fs::read_to_string(dir.join("sweep-small-sweep.argo.yaml")).unwrap();
    let template: Value = serde_json::from_str(&text).unwrap();
    let dag = &template["spec"]["templates"][0]["dag"]["tasks"];
    assert_eq!(dag.as_array().unwrap().len(), 4);
    // The trials run side by side: none depends on another.
    for t in dag
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] != "leaderboard")
    {
        assert!(t.get("dependencies").is_none(), "{t}");
    }
    let run = run_argo(&k, &template, &central.url, "sweep-q9z");
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    let outputs = run.outputs;
    let engine = record(&outputs["leaderboard"]);
    assert_eq!(comparable(&engine["values"]), comparable(&board["values"]));
    for trial in ["trial-1", "trial-2", "trial-3"] {
        let l = local["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == trial)
            .unwrap();
        assert_eq!(
            comparable(&record(&outputs[trial])["values"]),
            comparable(&l["values"]),
            "{trial}"
        );
    }
    let show = k
        .command()
        .args(["models", "show", "bc", "--json", "--server", &central.url])
        .output()
        .unwrap();
    let model: Value = serde_json::from_slice(&show.stdout).unwrap();
    let version = &model["versions"][0]["version"];
    assert_eq!(version["version"], 1, "{model}");
    assert!(
        version["description"]
            .as_str()
            .unwrap()
            .starts_with("best of 3 trials"),
        "{model}"
    );
    // Methods that choose trials from earlier ones are refused.
    let tpe = k.file(
        "tpe.toml",
        "method = \"tpe\"\ntrials = 4\n[space]\nlr = { uniform = [0.01, 0.1] }\n",
    );
    let r = k.run(&[
        "sweep",
        "--config",
        &tpe.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--target",
        "label",
        "--export",
        "kfp",
        "-o",
        &dir.display().to_string(),
        "--image",
        "kiln:test",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("use method = \"random\" or \"grid\""),
        "{}",
        r.stderr
    );
}

#[test]
fn an_exported_kubeflow_pipeline_ends_as_kiln_pipeline_run_ends() {
    let k = util::Kiln::new();
    let file = k.file("engines.toml", PIPELINE);
    let file_text = file.display().to_string();
    let local = run_locally(&k, &file_text);
    let local_steps = steps_of(&local);
    let elsewhere = util::Kiln::new();
    let central = util::Served::start(
        &elsewhere,
        &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN],
    );
    let docs = exported(&k, &file_text, "kfp");
    assert_eq!(docs.len(), 2, "the pipeline spec and its platform spec");
    let outputs = run_kfp(&k, &docs, &central.url, "engines-kfp-7f3");
    let engine = same_as_local(&outputs, &local_steps);
    assert_eq!(engine["gated"]["state"], "skipped");
    assert_eq!(engine["push"]["values"]["version"], "1");
    assert_eq!(engine["summary"]["values"]["regions"], r#"["us","eu"]"#);
    let show = k
        .command()
        .args(["models", "show", "ctr", "--json", "--server", &central.url])
        .output()
        .unwrap();
    let model: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(model["aliases"]["champion"], 1, "{model}");
}

#[test]
fn a_failed_argo_workflow_runs_its_failure_steps_as_its_exit_handler() {
    let k = util::Kiln::new();
    let file = k.file(
        "failing.toml",
        "name = \"failing\"\n\
         [[steps]]\nid = \"prepare\"\nrun = \"echo ok > ${outputs}/ok\"\n\
         [[steps]]\nid = \"fails\"\nneeds = [\"prepare\"]\nrun = \"echo broken >&2; exit 3\"\nretries = 1\n\
         [[steps]]\nid = \"never\"\nneeds = [\"fails\"]\nrun = \"echo should-not-run > ${outputs}/ran\"\n\
         [[on_failure]]\nid = \"page\"\nrun = \"echo \\\"$KILN_FAILED_STEP: $KILN_FAILED_ERROR\\\" > ${outputs}/page.txt\"\n\
         [[on_failure]]\nid = \"after-page\"\nneeds = [\"page\"]\nrun = \"cat ${steps.page.page.txt} > ${outputs}/copy.txt\"\n",
    );
    let file_text = file.display().to_string();
    let local = k.run_home(&["pipeline", "run", &file_text, "--json"]);
    assert_eq!(local.code, 1, "{}", local.stderr);
    let out = k
        .command()
        .args([
            "pipeline",
            "export",
            &file_text,
            "--to",
            "argo",
            "--image",
            "kiln:test",
            "--file-in-image",
            &file_text,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let template: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(template["spec"]["onExit"], "on-failure");
    let run = run_argo(&k, &template, "http://unused", "failing-abc");
    assert_eq!(run.failed.len(), 1, "{:?}", run.failed);
    assert_eq!(run.failed[0].0, "fails");
    assert!(!run.outputs.contains_key("never"));
    let page = std::fs::read_to_string(run.outputs["page"].join("page.txt")).unwrap();
    assert!(page.starts_with("fails: "), "{page}");
    let copy = std::fs::read_to_string(run.outputs["after-page"].join("copy.txt")).unwrap();
    assert_eq!(copy, page);
    // Kubeflow's exit handler cannot tell a failed run from one that succeeded: refused.
    let r = k.run(&[
        "pipeline",
        "export",
        &file_text,
        "--to",
        "kfp",
        "--image",
        "kiln:test",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("export to argo"), "{}", r.stderr);
}
